//! One client TCP connection up to its upgrade (or its end): TLS when
//! configured, then hyper's HTTP/1.1 server with the handshake timeout and
//! the head limit, each request going to [`crate::conn::handle`].

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_util::either::Either;

use crate::conn::{self, ConnCtx};
use crate::state::caps::{CapExceeded, Place};
use crate::state::{Shared, Snapshot};
use crate::tls::Stream;

/// Serves one accepted connection. `over`: a cap was already exceeded at
/// accept; the request is answered with that refusal.
pub async fn serve(
    shared: Arc<Shared>,
    snap: Arc<Snapshot>,
    tcp: TcpStream,
    peer: SocketAddr,
    place: Place,
    over: Option<CapExceeded>,
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
        precheck: over.map(Into::into),
        place: Arc::new(place),
        http_conn: std::sync::OnceLock::new(),
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout)
        // hyper answers 431 when the head does not fit (config keeps it >= 8 KiB).
        .max_buf_size(snap.config.server.max_request_head_bytes)
        // Not turned off here: hyper would then add `close` to the 101's
        // `Connection: Upgrade`. Every other answer is a refusal and says
        // `Connection: close` itself (`conn::handle`), so no connection
        // lives on after one, and its place under the caps is given back.
        .keep_alive(true);
    let http = builder
        .serve_connection(
            TokioIo::new(stream),
            service_fn(move |req| conn::handle(req, ctx.clone())),
        )
        .with_upgrades();
    tokio::pin!(http);
    tokio::select! {
        r = http.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "HTTP connection error");
            }
        }
        _ = shared.shutdown.cancelled() => {
            http.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(handshake_timeout, http).await;
        }
    }
}
