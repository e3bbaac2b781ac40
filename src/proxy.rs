//! The life of one proxied connection, as ordered phases sharing one
//! task-owned context:
//!
//! `admit` (handshake, caps, Origin, auth, client ID) -> `pick_backends`
//! -> `dial` (with retries along the ring) -> `respond_101` -> `relay` (its
//! own task) -> `finish` (metrics, access log).
//!
//! A request that fails admission never dials; a dial that fails never
//! sends a 101. Every refusal goes through `reject_response`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use crate::auth::{self, Admitted};
use crate::error::close_code;
use crate::error::{RETRY_AFTER_SECS, Reject};
use crate::handshake::{self, accept_key};
use crate::metrics::ConnResult;
use crate::relay::{Relay, Report, Session};
use crate::server::{ConnGuard, Shared, Snapshot};
use crate::tls::Stream;
use crate::upstream::{self, Backend, Dialed};

/// What the connection task knows before the request arrives.
pub struct ConnCtx {
    pub shared: Arc<Shared>,
    pub peer: SocketAddr,
    /// The client connected over TLS (X-Forwarded-Proto: https).
    pub tls: bool,
    /// A cap was already exceeded at accept: answer with this.
    pub precheck: Option<Reject>,
    /// Holds the connection's place under the caps while it lives.
    pub guard: Arc<ConnGuard>,
}

/// hyper's service function: every request on the WebSocket listener.
pub async fn handle(
    mut req: Request<Incoming>,
    ctx: Arc<ConnCtx>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let started = Instant::now();
    let snap = ctx.shared.snapshot.load_full();
    let metrics = &ctx.shared.metrics;
    match proxy(&mut req, &ctx, &snap, started).await {
        Ok(resp) => Ok(resp),
        Err(reject) => {
            metrics.connection(reject.result());
            tracing::debug!(peer = %ctx.peer, status = reject.status().as_u16(), reason = %reject, "upgrade refused");
            Ok(reject_response(&reject))
        }
    }
}

async fn proxy(
    req: &mut Request<Incoming>,
    ctx: &ConnCtx,
    snap: &Arc<Snapshot>,
    started: Instant,
) -> Result<Response<Full<Bytes>>, Reject> {
    let admitted = admit(req, ctx, snap).await?;
    if admitted.refuse_with_close.is_some() || admitted.token_in_first_message {
        // The gateway answers the upgrade itself; the rest happens on the
        // upgraded socket (see `after_gateway_101`).
        return Ok(gateway_101(req, ctx, snap, admitted, started));
    }
    let candidates = pick_backends(snap, &admitted.client_id)?;
    let (backend, upgraded) = match dial(req, ctx, snap, &admitted, &candidates).await? {
        DialOutcome::Upgraded(b, u) => (b, u),
        DialOutcome::Refused(resp) => {
            ctx.shared.metrics.connection(ConnResult::BackendError);
            return Ok(resp);
        }
    };
    Ok(respond_101(
        req, ctx, snap, admitted, backend, upgraded, started,
    ))
}

/// Phase 1: the request is a valid upgrade, under the caps, from an allowed
/// Origin, with valid credentials. Yields the client ID.
async fn admit<B>(req: &Request<B>, ctx: &ConnCtx, snap: &Snapshot) -> Result<Admitted, Reject> {
    handshake::check_upgrade(req)?;
    if let Some(r) = &ctx.precheck {
        return Err(r.clone());
    }
    snap.origins.check(req.headers().get(header::ORIGIN))?;
    let mut admitted = snap.auth.admit(req).await?;
    if admitted.client_id.is_empty() {
        admitted.client_id =
            handshake::client_id(req, &snap.config.routing.client_id, ctx.peer.ip());
    }
    Ok(admitted)
}

/// Phase 2: the backends to try, in ring order.
fn pick_backends(snap: &Snapshot, client_id: &str) -> Result<Vec<Arc<Backend>>, Reject> {
    let routing = &snap.config.routing;
    let order = snap.ring.pick(
        client_id,
        1 + routing.connect_retries as usize,
        |i| snap.backends[i].routable(&snap.config.health),
        |i| snap.backends[i].active.load(Ordering::Relaxed),
        routing.load_factor,
    );
    if order.is_empty() {
        return Err(Reject::NoBackend);
    }
    Ok(order
        .into_iter()
        .map(|i| snap.backends[i].clone())
        .collect())
}

enum DialOutcome {
    Upgraded(Arc<Backend>, upstream::Upgraded),
    Refused(Response<Full<Bytes>>),
}

/// Phase 3: dial the candidates in order until one answers.
async fn dial<B>(
    req: &Request<B>,
    ctx: &ConnCtx,
    snap: &Snapshot,
    admitted: &Admitted,
    candidates: &[Arc<Backend>],
) -> Result<DialOutcome, Reject> {
    let path = upstream_path(req, admitted);
    let mut last_error = String::new();
    for backend in candidates {
        let headers = upstream_headers(req, ctx, &backend.url.authority(), admitted);
        match upstream::dial(
            backend,
            &path,
            headers,
            snap.config.routing.connect_timeout.get(),
        )
        .await
        {
            Ok(Dialed::Upgraded(u)) => return Ok(DialOutcome::Upgraded(backend.clone(), u)),
            Ok(Dialed::Refused(resp)) => return Ok(DialOutcome::Refused(resp)),
            Err(e) => {
                tracing::warn!(backend = %backend.name, error = %e, "backend dial failed");
                backend.passive_failure(&snap.config.health, &ctx.shared.metrics);
                last_error = format!("{}: {e}", backend.name);
            }
        }
    }
    Err(Reject::BackendUnreachable(last_error))
}

/// The client's path and query, minus a stripped token.
fn upstream_path<B>(req: &Request<B>, admitted: &Admitted) -> String {
    let path = req.uri().path();
    match (req.uri().query(), &admitted.strip_query) {
        (Some(q), Some(name)) => {
            let q = handshake::strip_query_param(q, name);
            if q.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{q}")
            }
        }
        (Some(q), None) => format!("{path}?{q}"),
        (None, _) => path.to_string(),
    }
}

/// Hop-by-hop headers (RFC 9110 section 7.6.1) and the ones the gateway
/// sets itself: never copied from the client.
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "x-client-id",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// The upgrade request's headers for the backend: end-to-end headers as
/// sent (including every Sec-WebSocket-* so subprotocols and extensions are
/// negotiated end to end), plus X-Forwarded-* and X-Client-Id.
fn upstream_headers<B>(
    req: &Request<B>,
    ctx: &ConnCtx,
    authority: &str,
    admitted: &Admitted,
) -> HeaderMap {
    let src = req.headers();
    // Headers the client named in Connection are hop-by-hop too.
    let named: Vec<String> = src
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .collect();
    let mut h = HeaderMap::with_capacity(src.len() + 6);
    for (name, value) in src {
        let n = name.as_str();
        if NOT_FORWARDED.contains(&n) || named.iter().any(|t| t == n) {
            continue;
        }
        if n == "x-forwarded-for" {
            continue;
        }
        h.append(name.clone(), value.clone());
    }
    h.insert(
        header::HOST,
        HeaderValue::from_str(authority).unwrap_or(HeaderValue::from_static("backend")),
    );
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    let peer_ip = ctx.peer.ip().to_string();
    let xff = match src.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {peer_ip}"),
        _ => peer_ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    h.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(if ctx.tls { "https" } else { "http" }),
    );
    if let Some(host) = src.get(header::HOST) {
        h.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
    }
    if let Ok(v) = HeaderValue::from_str(&admitted.client_id) {
        h.insert(HeaderName::from_static("x-client-id"), v);
    }
    for (name, value) in &admitted.extra_headers {
        h.insert(name.clone(), value.clone());
    }
    h
}

/// The 101 headers for the client: accept key, and what the backend chose.
fn switching_protocols<B>(
    req: &Request<B>,
    protocol: Option<HeaderValue>,
    extensions: Option<HeaderValue>,
) -> Response<Full<Bytes>> {
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .cloned()
        .unwrap_or(HeaderValue::from_static(""));
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept_key(key.as_bytes()));
    if let Some(p) = protocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    if let Some(e) = extensions {
        h.insert(header::SEC_WEBSOCKET_EXTENSIONS, e);
    }
    resp
}

/// Upgrades the client without a backend yet: for `reject_with = "close"`
/// (close 4001 at once) and for a token in the first message (read it,
/// verify it, then pick and dial). No subprotocol or extension is agreed,
/// since no backend has answered.
fn gateway_101(
    req: &mut Request<Incoming>,
    ctx: &ConnCtx,
    snap: &Arc<Snapshot>,
    admitted: Admitted,
    started: Instant,
) -> Response<Full<Bytes>> {
    let resp = switching_protocols(req, None, None);
    let on_upgrade = hyper::upgrade::on(&mut *req);
    // The upstream request is built now, from the client's request head.
    let mut head = Request::new(());
    *head.uri_mut() = req.uri().clone();
    *head.headers_mut() = req.headers().clone();
    head.headers_mut().remove(header::SEC_WEBSOCKET_EXTENSIONS);
    head.headers_mut().remove(header::SEC_WEBSOCKET_PROTOCOL);
    let shared = ctx.shared.clone();
    let (snap, guard, peer, tls) = (snap.clone(), ctx.guard.clone(), ctx.peer, ctx.tls);
    shared.clone().tracker.spawn(async move {
        let Ok(Ok(parts)) = on_upgrade.await.map(|u| u.downcast::<TokioIo<Stream>>()) else {
            return;
        };
        let mut client = parts.io.into_inner();
        let ctx = ConnCtx {
            shared,
            peer,
            tls,
            precheck: None,
            guard,
        };
        let metrics = ctx.shared.metrics.clone();
        if let Some(why) = &admitted.refuse_with_close {
            tracing::debug!(%peer, reason = %why, "authentication failed; closing with 4001");
            refuse_after_101(
                &metrics,
                &mut client,
                ConnResult::AuthRejected,
                close_code::AUTH_FAILED,
            )
            .await;
            return;
        }
        let timeout = snap.auth.first_message_timeout;
        let (token, rest) =
            match auth::read_first_message(&mut client, parts.read_buf, timeout).await {
                Ok(x) => x,
                Err(code) => {
                    refuse_after_101(&metrics, &mut client, ConnResult::AuthRejected, code).await;
                    return;
                }
            };
        let mut admitted = match snap.auth.verify(auth::first_message_token(&token).as_str()) {
            Ok(a) => a,
            Err(why) => {
                tracing::debug!(%peer, reason = %why, "first-message token refused");
                refuse_after_101(
                    &metrics,
                    &mut client,
                    ConnResult::AuthRejected,
                    close_code::AUTH_FAILED,
                )
                .await;
                return;
            }
        };
        if admitted.client_id.is_empty() {
            admitted.client_id =
                handshake::client_id(&head, &snap.config.routing.client_id, peer.ip());
        }
        let dialed = match pick_backends(&snap, &admitted.client_id) {
            Ok(c) => dial(&head, &ctx, &snap, &admitted, &c).await,
            Err(r) => Err(r),
        };
        let (backend, up) = match dialed {
            Ok(DialOutcome::Upgraded(b, u)) => (b, u),
            Ok(DialOutcome::Refused(_)) | Err(_) => {
                refuse_after_101(
                    &metrics,
                    &mut client,
                    ConnResult::BackendError,
                    close_code::BAD_GATEWAY,
                )
                .await;
                return;
            }
        };
        metrics.connection(ConnResult::Upgraded);
        metrics
            .handshake_duration
            .observe(started.elapsed().as_secs_f64());
        start_relay(
            &ctx, &snap, admitted, backend, up, client, rest, false, started,
        );
    });
    resp
}

/// Ends a connection the gateway upgraded itself: counts the outcome and
/// the close, and sends the close frame with the reason that goes with it.
async fn refuse_after_101(
    metrics: &crate::metrics::Metrics,
    client: &mut Stream,
    result: ConnResult,
    code: u16,
) {
    let reason = match code {
        close_code::AUTH_TIMEOUT => "no token in time",
        close_code::BAD_GATEWAY => "no backend available",
        _ => "authentication failed",
    };
    metrics.connection(result);
    metrics.close(crate::error::Side::Gateway, code);
    auth::close_now(client, code, reason).await;
}

/// Phase 4: the 101 to the client, and the relay task that starts once
/// hyper hands over the socket.
fn respond_101(
    req: &mut Request<Incoming>,
    ctx: &ConnCtx,
    snap: &Arc<Snapshot>,
    admitted: Admitted,
    backend: Arc<Backend>,
    up: upstream::Upgraded,
    started: Instant,
) -> Response<Full<Bytes>> {
    let resp = switching_protocols(req, up.protocol.clone(), up.extensions.clone());
    let deflate = up
        .extensions
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("permessage-deflate"));
    let metrics = &ctx.shared.metrics;
    metrics.connection(ConnResult::Upgraded);
    metrics
        .handshake_duration
        .observe(started.elapsed().as_secs_f64());
    let on_upgrade = hyper::upgrade::on(req);
    let ctx = ConnCtx {
        shared: ctx.shared.clone(),
        peer: ctx.peer,
        tls: ctx.tls,
        precheck: None,
        guard: ctx.guard.clone(),
    };
    let snap = snap.clone();
    ctx.shared.clone().tracker.spawn(async move {
        match on_upgrade.await.map(|u| u.downcast::<TokioIo<Stream>>()) {
            Ok(Ok(parts)) => {
                let client = parts.io.into_inner();
                start_relay(&ctx, &snap, admitted, backend, up, client, parts.read_buf, deflate, started);
            }
            _ => tracing::warn!(peer = %ctx.peer, backend = %backend.name, "client upgrade hand-off failed"),
        }
    });
    resp
}

/// Phase 5: the relay, in a task of its own whose future is exactly a
/// [`Connection`] (the task that waited for the upgrade ends here, so none
/// of its state stays behind for the connection's lifetime).
#[allow(clippy::too_many_arguments)]
fn start_relay(
    ctx: &ConnCtx,
    snap: &Snapshot,
    admitted: Admitted,
    backend: Arc<Backend>,
    up: upstream::Upgraded,
    client: Stream,
    client_pre: Bytes,
    deflate: bool,
    started: Instant,
) {
    let metrics = ctx.shared.metrics.clone();
    backend.active.fetch_add(1, Ordering::Relaxed);
    let gauge = metrics.active(&backend.name);
    gauge.inc();
    let session = Session {
        deflate,
        token_expires: admitted.expires_at,
        cancel: backend.cancel.clone(),
        shutdown: ctx.shared.shutdown.clone(),
    };
    let relay = Relay::new(
        client,
        client_pre,
        up.io,
        up.pre,
        snap.policy.clone(),
        metrics,
        session,
    );
    ctx.shared.tracker.spawn(Connection {
        relay,
        backend,
        gauge,
        peer: ctx.peer,
        client_id: admitted.client_id.into_boxed_str(),
        started,
        _guard: ctx.guard.clone(),
    });
}

/// One upgraded connection for the rest of its life: the relay plus what
/// `finish` needs. Kept small on purpose: it is the per-connection memory
/// of an idle link.
struct Connection {
    relay: Relay<Stream, Stream>,
    backend: Arc<Backend>,
    gauge: prometheus::IntGauge,
    peer: SocketAddr,
    client_id: Box<str>,
    started: Instant,
    /// Holds the connection's place under the caps.
    _guard: Arc<ConnGuard>,
}

impl Future for Connection {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.relay.poll_relay(cx).is_pending() {
            return Poll::Pending;
        }
        let report = this.relay.report();
        this.backend.active.fetch_sub(1, Ordering::Relaxed);
        this.gauge.dec();
        finish(
            this.relay.metrics(),
            this.peer,
            &this.client_id,
            &this.backend.name,
            this.started,
            report,
        );
        Poll::Ready(())
    }
}

/// Phase 6: duration metric and the access-log line.
fn finish(
    metrics: &crate::metrics::Metrics,
    peer: SocketAddr,
    client_id: &str,
    backend: &str,
    started: Instant,
    r: Report,
) {
    let secs = started.elapsed().as_secs_f64();
    metrics.connection_duration.observe(secs);
    tracing::info!(
        target: "wsgate::access",
        peer = %peer,
        client_id,
        backend,
        duration_ms = (secs * 1000.0) as u64,
        c2b_messages = r.client_to_backend.messages,
        c2b_bytes = r.client_to_backend.bytes,
        b2c_messages = r.backend_to_client.messages,
        b2c_bytes = r.backend_to_client.bytes,
        close_code = r.closed.code,
        initiator = r.closed.initiator.label(),
        reason = %r.closed.reason,
        "connection closed"
    );
}

/// The HTTP answer for a refused upgrade.
pub fn reject_response(r: &Reject) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(format!("{r}\n"))));
    *resp.status_mut() = r.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if r.retry_after() {
        h.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    if matches!(r, Reject::UnsupportedVersion | Reject::UpgradeRequired) {
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    if matches!(r, Reject::Unauthorized(_)) {
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

#[cfg(test)]
mod tests {
    /// The per-connection task is the relay state and a few handles; keep it
    /// under 1 KiB (idle memory target: 2 KiB per proxied connection).
    #[test]
    fn connection_task_is_small() {
        let size = std::mem::size_of::<super::Connection>();
        println!("Connection: {size} bytes");
        assert!(size <= 1024, "Connection is {size} bytes");
    }
}
