//! The running gateway: listeners and accept loops, the connection caps,
//! the live configuration snapshot and its reload, and graceful shutdown.
//!
//! State has one owner each: the snapshot (`ArcSwap`, swapped whole on
//! reload; a connection keeps the one it started with), the connection
//! counters (atomics and a short mutex), and the cancellation tree
//! (root -> backend) that shutdown and drain travel down. Upgraded
//! connections run in `tracker`, so shutdown can wait for them after hyper
//! has forgotten them at the 101.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Auth, AuthSetupError};
use crate::config::{Config, ConfigError};
use crate::error::Reject;
use crate::handshake::OriginPolicy;
use crate::metrics::Metrics;
use crate::proxy::{self, ConnCtx};
use crate::relay::Policy;
use crate::routing::Ring;
use crate::tls::{self, Stream, TlsError};
use crate::upstream::Backend;
use crate::{admin, health};

/// Pause after a failed `accept` (e.g. out of descriptors), so the loop does
/// not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Why the gateway could not start or a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] Box<ConfigError>),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server.tls: {0}")]
    Tls(Box<TlsError>),
    #[error("backend {name}: {source}")]
    BackendTls { name: String, source: Box<TlsError> },
    #[error("{0}")]
    Auth(#[from] AuthSetupError),
}

/// Everything built from one config, immutable once published.
pub struct Snapshot {
    pub config: Arc<Config>,
    pub backends: Vec<Arc<Backend>>,
    pub ring: Ring,
    pub origins: OriginPolicy,
    pub policy: Arc<Policy>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub auth: Auth,
}

impl Snapshot {
    /// Parse-validate-build: a snapshot that fails to build is never seen.
    /// Backends with the same name and endpoint as in `prev` are kept, with
    /// their health and connections.
    fn build(
        config: Config,
        prev: Option<&Snapshot>,
        root: &CancellationToken,
    ) -> Result<Snapshot, StartError> {
        let mut backends = Vec::with_capacity(config.backends.len());
        for bc in &config.backends {
            // A drained backend that is still (or again) configured comes back
            // fresh: its old token is cancelled for good.
            let kept = prev.and_then(|p| {
                p.backends.iter().find(|b| {
                    b.name == bc.name && b.same_endpoint(bc) && !b.draining.load(Ordering::Relaxed)
                })
            });
            let b =
                match kept {
                    Some(b) => {
                        b.weight.store(bc.weight, Ordering::Relaxed);
                        b.clone()
                    }
                    None => Arc::new(Backend::new(bc, root).map_err(|source| {
                        StartError::BackendTls {
                            name: bc.name.clone(),
                            source: Box::new(source),
                        }
                    })?),
                };
            backends.push(b);
        }
        let ring = Ring::new(
            config.backends.iter().map(|b| (b.name.as_str(), b.weight)),
            config.routing.vnodes,
        );
        let tls = match &config.server.tls {
            Some(t) => Some(tokio_rustls::TlsAcceptor::from(
                tls::server_config(t).map_err(|e| StartError::Tls(Box::new(e)))?,
            )),
            None => None,
        };
        Ok(Snapshot {
            origins: OriginPolicy::new(
                &config.server.allowed_origins,
                config.server.require_origin,
            ),
            policy: Arc::new(Policy::from_config(&config)),
            auth: Auth::new(&config.auth)?,
            ring,
            tls,
            backends,
            config: Arc::new(config),
        })
    }
}

/// State shared by every task of one gateway.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Arc<Metrics>,
    /// Root of the cancellation tree: shutdown.
    pub shutdown: CancellationToken,
    /// Upgraded connections, awaited by shutdown.
    pub tracker: TaskTracker,
    /// False once shutdown starts: `/readyz` answers 503.
    pub accepting: AtomicBool,
    conns: AtomicUsize,
    /// TCP connections accepted since start (activity, for housekeeping).
    pub accepted: std::sync::atomic::AtomicU64,
    /// Connections per client IP, for `max_connections_per_ip`. A short std
    /// mutex, never held across `.await`; entries leave at zero.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Cancels the current snapshot's health-check tasks on reload.
    health: Mutex<CancellationToken>,
    /// Serialises reloads (SIGHUP and tests) so two never interleave.
    reload_lock: Mutex<()>,
}

impl Shared {
    /// Whether `/readyz` is 200: accepting and at least one backend routable.
    pub fn ready(&self) -> bool {
        let snap = self.snapshot.load();
        self.accepting.load(Ordering::Relaxed)
            && snap
                .backends
                .iter()
                .any(|b| b.routable(&snap.config.health))
    }
}

/// A connection's place under `max_connections` and
/// `max_connections_per_ip`, released on drop.
pub struct ConnGuard {
    shared: Arc<Shared>,
    /// Counted in `per_ip` (only while a per-IP limit is configured).
    ip: Option<IpAddr>,
}

impl ConnGuard {
    /// Takes a place, or says which cap is full (the guard is still returned
    /// so the refusal itself is counted until it is sent).
    fn take(shared: &Arc<Shared>, ip: IpAddr, config: &Config) -> (ConnGuard, Option<Reject>) {
        let total = shared.conns.fetch_add(1, Ordering::Relaxed) + 1;
        let limit_ip = config.server.max_connections_per_ip;
        // Without a per-IP limit, no entry per client IP is kept at all.
        let per_ip = if limit_ip > 0 {
            let mut m = shared.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = m.entry(ip).or_insert(0);
            *n += 1;
            *n
        } else {
            0
        };
        let guard = ConnGuard {
            shared: shared.clone(),
            ip: (limit_ip > 0).then_some(ip),
        };
        let reject = if total > config.server.max_connections {
            Some(Reject::Overloaded)
        } else if limit_ip > 0 && per_ip > limit_ip {
            Some(Reject::PerIpLimit)
        } else {
            None
        };
        (guard, reject)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shared.conns.fetch_sub(1, Ordering::Relaxed);
        let Some(ip) = self.ip else { return };
        let mut m = self.shared.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

/// A running gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    admin_addrs: Vec<SocketAddr>,
    accept_tasks: Vec<JoinHandle<()>>,
    admin_tasks: Vec<JoinHandle<()>>,
    /// Ends the shard threads of [`Gateway::bind_sharded`] once drained.
    shards_exit: CancellationToken,
}

impl Gateway {
    /// Starts on listeners the caller bound (tests bind port 0).
    pub fn start(
        config: Config,
        listeners: Vec<TcpListener>,
        admin: Vec<TcpListener>,
    ) -> Result<Gateway, StartError> {
        let metrics = Arc::new(Metrics::new());
        let root = CancellationToken::new();
        let snapshot = Snapshot::build(config, None, &root)?;
        let health_token = root.child_token();
        health::spawn(
            &snapshot.backends,
            &snapshot.config.health,
            &metrics,
            &health_token,
        );
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            shutdown: root,
            tracker: TaskTracker::new(),
            accepting: AtomicBool::new(true),
            conns: AtomicUsize::new(0),
            accepted: std::sync::atomic::AtomicU64::new(0),
            per_ip: Mutex::new(HashMap::new()),
            health: Mutex::new(health_token),
            reload_lock: Mutex::new(()),
        });
        let addrs = listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect();
        let admin_addrs = admin.iter().filter_map(|l| l.local_addr().ok()).collect();
        let accept_tasks = listeners
            .into_iter()
            .map(|l| tokio::spawn(accept_loop(shared.clone(), l)))
            .collect();
        let admin_tasks = admin
            .into_iter()
            .map(|l| tokio::spawn(admin::serve(shared.clone(), l)))
            .collect();
        Ok(Gateway {
            shared,
            addrs,
            admin_addrs,
            accept_tasks,
            admin_tasks,
            shards_exit: CancellationToken::new(),
        })
    }

    /// Binds and starts with `shards` accept loops, each on a single-threaded
    /// runtime on its own thread with its own `SO_REUSEPORT` listener per
    /// address. The kernel spreads new connections over the shards and a
    /// connection then lives on one thread for good, as in nginx's worker
    /// model: no work stealing and no cross-thread wake-ups on the relay's
    /// hot path. Admin and health checks stay on the caller's runtime.
    pub async fn bind_sharded(config: Config, shards: usize) -> Result<Gateway, StartError> {
        let shards = shards.max(1);
        let mut per_shard: Vec<Vec<tokio::net::TcpSocket>> =
            (0..shards).map(|_| Vec::new()).collect();
        let mut addrs = Vec::new();
        for &addr in &config.server.listen.0 {
            let first = reuseport_socket(addr)?;
            // With port 0 the first bind picks the port; the others share it.
            let actual = first
                .local_addr()
                .map_err(|source| StartError::Bind { addr, source })?;
            addrs.push(actual);
            per_shard[0].push(first);
            for shard in per_shard.iter_mut().skip(1) {
                shard.push(reuseport_socket(actual)?);
            }
        }
        let mut admin = Vec::new();
        for &addr in &config.admin.listen.0 {
            admin.push(bind(addr)?);
        }
        let mut gw = Gateway::start(config, Vec::new(), admin)?;
        gw.addrs = addrs;
        let mut listening = Vec::with_capacity(shards);
        for (i, sockets) in per_shard.into_iter().enumerate() {
            let shared = gw.shared.clone();
            let exit = gw.shards_exit.clone();
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            let spawned = std::thread::Builder::new()
                .name(format!("wsgate-shard-{i}"))
                .spawn(move || run_shard(shared, sockets, exit, ready_tx));
            if let Err(source) = spawned {
                return Err(StartError::Bind {
                    addr: gw.addrs[0],
                    source,
                });
            }
            listening.push(ready_rx);
        }
        // Return (and let the caller announce the address) only once every
        // shard listens, so the first client is never refused.
        for ready in listening {
            match ready.await {
                Ok(Ok(())) => {}
                Ok(Err(source)) => {
                    gw.shards_exit.cancel();
                    return Err(StartError::Bind {
                        addr: gw.addrs[0],
                        source,
                    });
                }
                Err(_) => {
                    gw.shards_exit.cancel();
                    return Err(StartError::Bind {
                        addr: gw.addrs[0],
                        source: std::io::Error::other("a shard thread failed to start"),
                    });
                }
            }
        }
        Ok(gw)
    }

    /// Addresses of the WebSocket listeners.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Addresses of the admin listeners.
    pub fn admin_addrs(&self) -> &[SocketAddr] {
        &self.admin_addrs
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Applies a new config to new connections. Existing connections keep
    /// theirs, except those to a backend that is gone (closed with 1012).
    /// On error the old config keeps serving. Counts
    /// `wsgate_config_reloads_total` either way.
    pub fn reload(&self, config: Config) -> Result<(), StartError> {
        let result = reload(&self.shared, config);
        self.shared.metrics.reload(result.is_ok());
        result
    }

    /// Graceful shutdown (SPEC): readiness 503, listeners closed, close 1001
    /// to every connection, then wait for them up to `shutdown_grace`.
    pub async fn shutdown(self) {
        let grace = self
            .shared
            .snapshot
            .load()
            .config
            .server
            .shutdown_grace
            .get();
        self.shared.accepting.store(false, Ordering::Relaxed);
        for t in &self.accept_tasks {
            t.abort();
        }
        self.shared.shutdown.cancel();
        self.shared.tracker.close();
        let drained = tokio::time::timeout(grace, self.shared.tracker.wait())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                remaining = self.shared.tracker.len(),
                "shutdown_grace passed; dropping the rest"
            );
        }
        for t in &self.admin_tasks {
            t.abort();
        }
        self.shards_exit.cancel();
    }
}

/// Backlog of every listener: a reconnect storm arrives all at once.
const LISTEN_BACKLOG: u32 = 4096;

/// A bound (not yet listening) socket that other shards can bind too.
fn reuseport_socket(addr: SocketAddr) -> Result<tokio::net::TcpSocket, StartError> {
    let bind_err = |source| StartError::Bind { addr, source };
    let sock = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(bind_err)?;
    sock.set_reuseaddr(true).map_err(bind_err)?;
    sock.set_reuseport(true).map_err(bind_err)?;
    sock.bind(addr).map_err(bind_err)?;
    Ok(sock)
}

/// One shard: its listeners' accept loops and every connection they accept,
/// driven by a current-thread runtime until the gateway has drained. Says on
/// `ready` when it listens (or why it cannot).
fn run_shard(
    shared: Arc<Shared>,
    sockets: Vec<tokio::net::TcpSocket>,
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
            tokio::spawn(accept_loop(shared.clone(), l));
        }
        let _ = ready.send(Ok(()));
        exit.cancelled().await;
    });
}

fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    let bind_err = |source| StartError::Bind { addr, source };
    let sock = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(bind_err)?;
    // A restarted gateway must not wait out TIME_WAIT on its own port.
    sock.set_reuseaddr(true).map_err(bind_err)?;
    sock.bind(addr).map_err(bind_err)?;
    sock.listen(LISTEN_BACKLOG).map_err(bind_err)
}

fn reload(shared: &Arc<Shared>, config: Config) -> Result<(), StartError> {
    let _serial = shared.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
    let old = shared.snapshot.load_full();
    if old.config.server.listen != config.server.listen
        || old.config.admin.listen.0 != config.admin.listen.0
    {
        tracing::warn!("listen addresses changed: they apply after a restart, not a reload");
    }
    let next = Snapshot::build(config, Some(&old), &shared.shutdown)?;
    let removed: Vec<Arc<Backend>> = old
        .backends
        .iter()
        .filter(|b| !next.backends.iter().any(|n| Arc::ptr_eq(n, b)))
        .cloned()
        .collect();
    let health_token = shared.shutdown.child_token();
    health::spawn(
        &next.backends,
        &next.config.health,
        &shared.metrics,
        &health_token,
    );
    let old_health = std::mem::replace(
        &mut *shared.health.lock().unwrap_or_else(|p| p.into_inner()),
        health_token,
    );
    old_health.cancel();
    shared.snapshot.store(Arc::new(next));
    for b in removed {
        tracing::info!(backend = %b.name, "backend removed by reload; closing its connections with 1012");
        b.draining.store(true, Ordering::Relaxed);
        b.cancel.cancel();
        // Only drop the series if no backend of the new snapshot reuses the name.
        if !shared
            .snapshot
            .load()
            .backends
            .iter()
            .any(|n| n.name == b.name)
        {
            shared.metrics.forget_backend(&b.name);
        }
    }
    tracing::info!("config reloaded");
    Ok(())
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
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
        let (guard, precheck) = ConnGuard::take(&shared, peer.ip(), &snap.config);
        let shared = shared.clone();
        tokio::spawn(serve_connection(
            shared,
            snap,
            tcp,
            peer,
            Arc::new(guard),
            precheck,
        ));
    }
}

/// Serves one client TCP connection up to its upgrade (or its end).
async fn serve_connection(
    shared: Arc<Shared>,
    snap: Arc<Snapshot>,
    tcp: TcpStream,
    peer: SocketAddr,
    guard: Arc<ConnGuard>,
    precheck: Option<Reject>,
) {
    let handshake_timeout = snap.config.server.handshake_timeout.get();
    let (stream, tls): (Stream, bool) = match &snap.tls {
        None => (Either::Left(tcp), false),
        Some(acceptor) => match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await
        {
            Ok(Ok(s)) => (
                Either::Right(Box::new(tokio_rustls::TlsStream::Server(s))),
                true,
            ),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
    };
    let ctx = Arc::new(ConnCtx {
        shared: shared.clone(),
        peer,
        tls,
        precheck,
        guard,
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout)
        // hyper answers 431 when the head does not fit (config keeps it >= 8 KiB).
        .max_buf_size(snap.config.server.max_request_head_bytes)
        .keep_alive(true);
    let conn = builder
        .serve_connection(
            TokioIo::new(stream),
            service_fn(move |req| proxy::handle(req, ctx.clone())),
        )
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "HTTP connection error");
            }
        }
        _ = shared.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(handshake_timeout, conn).await;
        }
    }
}
