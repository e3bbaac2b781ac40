//! The listening side: `SO_REUSEPORT` sockets, one current-thread runtime
//! per shard with its own listener per address (the kernel spreads new
//! connections over them, and a connection then lives on one thread for
//! good, as in nginx's worker model), the accept loop, and the admin
//! listeners.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

use crate::conn;
use crate::gateway::StartError;
use crate::state::Shared;

/// Backlog of every listener: a reconnect storm arrives all at once.
const LISTEN_BACKLOG: u32 = 4096;
/// Pause after a failed `accept` (e.g. out of descriptors), so the loop does
/// not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

fn socket(addr: SocketAddr) -> Result<TcpSocket, StartError> {
    let bind_err = |source| StartError::Bind { addr, source };
    let sock = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(bind_err)?;
    // A restarted gateway must not wait out TIME_WAIT on its own port.
    sock.set_reuseaddr(true).map_err(bind_err)?;
    Ok(sock)
}

/// A bound (not yet listening) socket that other shards can bind too.
pub fn reuseport_socket(addr: SocketAddr) -> Result<TcpSocket, StartError> {
    let bind_err = |source| StartError::Bind { addr, source };
    let sock = socket(addr)?;
    sock.set_reuseport(true).map_err(bind_err)?;
    sock.bind(addr).map_err(bind_err)?;
    Ok(sock)
}

/// A listener on the caller's runtime (admin).
pub fn listen(addr: SocketAddr) -> Result<TcpListener, StartError> {
    let bind_err = |source| StartError::Bind { addr, source };
    let sock = socket(addr)?;
    sock.bind(addr).map_err(bind_err)?;
    sock.listen(LISTEN_BACKLOG).map_err(bind_err)
}

/// One shard: its listeners' accept loops and every connection they accept,
/// driven by a current-thread runtime until the gateway has drained. Says on
/// `ready` when it listens (or why it cannot).
pub fn run_shard(
    shared: Arc<Shared>,
    sockets: Vec<TcpSocket>,
    exit: CancellationToken,
    ready: tokio::sync::oneshot::Sender<std::io::Result<()>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    rt.block_on(async move {
        let mut listeners = Vec::with_capacity(sockets.len());
        for s in sockets {
            // Listening registers the socket with this shard's reactor.
            match s.listen(LISTEN_BACKLOG) {
                Ok(l) => listeners.push(l),
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            }
        }
        for l in listeners {
            shared.listening.spawn(accept_loop(shared.clone(), l));
        }
        let _ = ready.send(Ok(()));
        exit.cancelled().await;
    });
}

/// Accepts until shutdown; each connection gets its task and its place
/// under the caps (or the refusal that says which cap is full).
async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = shared.stop_listening.cancelled() => return,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        let snap = shared.snapshot.load_full();
        let (place, over) = shared.caps.take(peer.ip(), &snap.config.server);
        tokio::spawn(conn::serve::serve(
            shared.clone(),
            snap,
            tcp,
            peer,
            place,
            over,
        ));
    }
}
