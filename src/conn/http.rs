//! Plain HTTP requests (everything that is not a WebSocket upgrade),
//! proxied to the pool of their route (`[[routes]]`, else the default
//! pool; a WebSocket-only route answers 426, no route 404): the backend is
//! picked like an upgrade's
//! (client ID on the ring, else the affinity cookie, else the peer
//! address), the request goes over that backend's keep-alive pool, and
//! both bodies stream frame by frame (nothing is buffered whole, so long
//! polling and server-sent events flow as the backend writes them).
//!
//! Answers of the gateway itself: 413 (body over `max_request_body_bytes`),
//! 502 (no backend reachable), 504 (no response head within
//! `response_timeout`), and the caps' 503/429; each with
//! `Connection: close`. A connect failure (no byte of the request sent)
//! moves on to the next backend on the ring, up to `connect_retries`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use tokio::time::Instant;

use crate::backend::Backend;
use crate::backend::pool::{self, BodySlot, Lease, UpstreamBody};
use crate::config::{HostHeader, Serve};
use crate::conn::headers;
use crate::conn::reject::Reject;
use crate::conn::{ConnCtx, pick};
use crate::metrics::Metrics;
use crate::request;
use crate::state::Snapshot;
use crate::state::routes::Route;

/// What the service answers: the gateway's own short bodies, or a
/// backend's body streamed through.
pub type Body = Either<Full<Bytes>, Downstream>;

/// Why a plain HTTP request got the gateway's own answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Refused(#[from] Reject),
    #[error("request body over max_request_body_bytes")]
    TooLarge,
    #[error("method not proxied")]
    Method,
    #[error("backend unreachable: {0}")]
    Unreachable(String),
    #[error("no response head from {0} within response_timeout")]
    Timeout(String),
}

impl HttpError {
    fn status(&self) -> StatusCode {
        match self {
            HttpError::Refused(Reject::BackendUnreachable(_)) | HttpError::Unreachable(_) => {
                StatusCode::BAD_GATEWAY
            }
            // A plain request is not an upgrade: only the caps, "no
            // backend", "no route" and "WebSocket only" refusals reach here.
            HttpError::Refused(r) => r.status(),
            HttpError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::Method => StatusCode::METHOD_NOT_ALLOWED,
            HttpError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The gateway's answer: closes the connection (the request body may
    /// be unread, and a client that was refused should reconnect).
    fn response(&self) -> Response<Full<Bytes>> {
        let mut resp = match self {
            HttpError::Refused(r) => r.response(),
            _ => {
                let mut r = Response::new(Full::new(Bytes::from(format!("{self}\n"))));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                r
            }
        };
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        resp
    }
}

/// Marks a client connection as carrying plain HTTP, in
/// `wsgate_http_connections_active`, until the connection ends.
pub struct HttpConnMark(prometheus::IntGauge);

impl Drop for HttpConnMark {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Proxies one plain HTTP request.
pub async fn proxy(
    req: Request<Incoming>,
    ctx: &ConnCtx,
    snap: &Arc<Snapshot>,
    started: Instant,
) -> Response<Body> {
    let metrics = &ctx.shared.metrics;
    ctx.http_conn.get_or_init(|| {
        metrics.http.connections_active.inc();
        HttpConnMark(metrics.http.connections_active.clone())
    });
    let method = req.method().clone();
    let route = route(snap, &req);
    let label = route
        .as_ref()
        .map_or_else(|| Arc::from(NO_ROUTE), |r| r.label.clone());
    match forward(req, ctx, snap, route).await {
        Ok((resp, backend, lease)) => {
            let (mut parts, body) = resp.into_parts();
            headers::remove_hop_by_hop(&mut parts.headers);
            let log = Finish {
                metrics: ctx.shared.metrics.clone(),
                peer: ctx.peer,
                method,
                route: label,
                status: parts.status.as_u16(),
                backend: Some(backend),
                started,
            };
            Response::from_parts(
                parts,
                Either::Right(Downstream {
                    body,
                    bytes: 0,
                    log: Some(log),
                    lease: Some(lease),
                }),
            )
        }
        Err(e) => {
            tracing::debug!(peer = %ctx.peer, reason = %e, "plain HTTP request answered by the gateway");
            let resp = e.response();
            Finish {
                metrics: ctx.shared.metrics.clone(),
                peer: ctx.peer,
                method,
                route: label,
                status: resp.status().as_u16(),
                backend: None,
                started,
            }
            .log(resp.body().size_hint().exact().unwrap_or(0));
            resp.map(Either::Left)
        }
    }
}

/// The `route` label of requests no route matches (404).
const NO_ROUTE: &str = "none";

/// The route of a request (by `Host` and path); `None`: 404.
pub(super) fn route<B>(snap: &Snapshot, req: &Request<B>) -> Option<Route> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().host());
    snap.routes.find(host, req.uri().path())
}

/// Picks, sends, retries on connect failures; the backend's response head.
async fn forward(
    req: Request<Incoming>,
    ctx: &ConnCtx,
    snap: &Snapshot,
    route: Option<Route>,
) -> Result<(Response<Incoming>, Arc<Backend>, Lease), HttpError> {
    if let Some(r) = &ctx.precheck {
        return Err(r.clone().into());
    }
    let route = route.ok_or(Reject::NoRoute)?;
    if route.serve == Serve::Ws {
        // SPEC: plain HTTP on a WebSocket-only route.
        return Err(Reject::UpgradeRequired.into());
    }
    if req.method() == Method::CONNECT {
        // A reverse proxy is not a forward proxy.
        return Err(HttpError::Method);
    }
    let pool = snap.pool(route.pool);
    let limit = pool.settings.max_request_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if limit > 0 && declared.is_some_and(|n| n > limit) {
        return Err(HttpError::TooLarge);
    }
    let routing = &pool.settings.routing;
    let explicit = request::find_value(&req, &routing.client_id).map(|(_, v)| v);
    let id_from_peer = explicit.is_none();
    let client_id = explicit.unwrap_or_else(|| ctx.peer.ip().to_string());
    let mut candidates = pick(snap, route.pool, &client_id)?;
    let cookie = if id_from_peer {
        prefer_cookie(snap, route.pool, req.headers(), &mut candidates)
    } else {
        None
    };

    let (parts, body) = req.into_parts();
    let slot = BodySlot::new(body);
    let mut head = headers::proxy_request_headers(&parts.headers, ctx.peer.ip(), ctx.tls);
    let timeout = routing.response_timeout.get();
    let connect_timeout = routing.connect_timeout.get();
    let mut last_error = String::new();
    for (attempt, backend) in candidates.iter().enumerate() {
        let uri = upstream_uri(backend, &parts.uri)
            .ok_or_else(|| HttpError::Unreachable(format!("{}: invalid target", backend.name)))?;
        let mut up = Request::new(UpstreamBody::new(slot.clone(), limit));
        *up.method_mut() = parts.method.clone();
        *up.uri_mut() = uri;
        *up.version_mut() = Version::HTTP_11;
        if routing.host_header == HostHeader::Backend || !head.contains_key(header::HOST) {
            // `host_header = "backend"`; or an HTTP/1.0 client sent none
            // (HTTP/1.1 backends need one).
            if let Ok(v) = HeaderValue::from_str(&backend.url.authority()) {
                head.insert(header::HOST, v);
            }
        }
        // The last candidate takes the headers; earlier ones copy them.
        *up.headers_mut() = if attempt + 1 == candidates.len() {
            std::mem::take(&mut head)
        } else {
            head.clone()
        };
        match tokio::time::timeout(timeout, pool::send(backend, up, connect_timeout)).await {
            Ok(Ok((mut resp, lease))) => {
                if id_from_peer {
                    set_affinity(snap, backend, cookie, ctx.tls, resp.headers_mut());
                }
                return Ok((resp, backend.clone(), lease));
            }
            Ok(Err(_)) if slot.over_limit() => return Err(HttpError::TooLarge),
            Ok(Err(e)) if e.is_connect() && slot.untouched() => {
                tracing::warn!(backend = %backend.name, error = %e, "backend connect failed");
                backend.passive_failure(&pool.settings.health, &ctx.shared.metrics);
                last_error = format!("{}: {e}", backend.name);
            }
            Ok(Err(e)) => {
                tracing::debug!(backend = %backend.name, error = %e, "backend request failed");
                return Err(HttpError::Unreachable(format!("{}: {e}", backend.name)));
            }
            Err(_) => return Err(HttpError::Timeout(backend.name.clone())),
        }
    }
    Err(HttpError::Unreachable(last_error))
}

/// The origin-form target for `backend`: its URL's path prefix, then the
/// client's path and query.
fn upstream_uri(backend: &Backend, client: &Uri) -> Option<Uri> {
    let pq = client.path_and_query().map_or("/", |p| p.as_str());
    if backend.url.prefix.is_empty() {
        return Uri::try_from(pq).ok();
    }
    Uri::try_from(format!("{}{pq}", backend.url.prefix)).ok()
}

/// Puts the backend a valid affinity cookie names first, while it is in
/// the route's pool and routable (its ring order follows as the failover).
/// Returns the cookie's backend index, whether or not it could be honoured.
pub(super) fn prefer_cookie(
    snap: &Snapshot,
    pool: usize,
    h: &HeaderMap,
    candidates: &mut Vec<Arc<Backend>>,
) -> Option<usize> {
    let i = snap.affinity.backend_of(h)?;
    let b = snap.backends.get(i)?;
    let pool = snap.pool(pool);
    if pool.members.contains(&i) && b.routable(&pool.settings.health) {
        let max = candidates.len();
        candidates.retain(|c| !Arc::ptr_eq(c, b));
        candidates.insert(0, b.clone());
        candidates.truncate(max);
    }
    Some(i)
}

/// Issues the affinity cookie when the client has none for the backend
/// that served it (first request, or its backend went away).
fn set_affinity(
    snap: &Snapshot,
    served: &Arc<Backend>,
    had: Option<usize>,
    tls: bool,
    h: &mut HeaderMap,
) {
    let Some(i) = snap.backends.iter().position(|b| Arc::ptr_eq(b, served)) else {
        return;
    };
    if !snap.affinity.enabled() || had == Some(i) {
        return;
    }
    if let Some(v) = snap.affinity.set_cookie(i, tls) {
        h.append(header::SET_COOKIE, v);
    }
}

/// What the access-log line and the metrics of one request need.
struct Finish {
    metrics: Arc<Metrics>,
    peer: SocketAddr,
    method: Method,
    route: Arc<str>,
    status: u16,
    backend: Option<Arc<Backend>>,
    started: Instant,
}

impl Finish {
    /// One access-log line (never the path or query: tokens travel there)
    /// and the request metrics.
    fn log(&self, bytes: u64) {
        let secs = self.started.elapsed().as_secs_f64();
        self.metrics.http.request(&self.route, self.status, secs);
        tracing::info!(
            target: "wsgate::access",
            peer = %self.peer,
            method = %self.method,
            route = &*self.route,
            status = self.status,
            bytes,
            duration_ms = (secs * 1000.0) as u64,
            backend = self.backend.as_ref().map_or("-", |b| b.name.as_str()),
            "http request"
        );
    }
}

/// A backend's response body on its way to the client, frame by frame
/// (data and trailers), counting bytes; logs the request when it ends or
/// when the client goes away. Its backend connection goes back to the pool
/// once the body has ended, and closes if the client left before.
pub struct Downstream {
    body: Incoming,
    bytes: u64,
    log: Option<Finish>,
    lease: Option<Lease>,
}

impl Downstream {
    /// `ended`: the body said it ended. A length-framed body also ends with
    /// its last byte, and hyper may not poll it again after that.
    fn finish(&mut self, ended: bool) {
        if let Some(log) = self.log.take() {
            log.log(self.bytes);
        }
        if (ended || self.body.is_end_stream())
            && let Some(lease) = self.lease.take()
        {
            lease.give_back();
        }
    }
}

impl HttpBody for Downstream {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.body).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.bytes += d.len() as u64;
                }
            }
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Downstream {
    fn drop(&mut self) {
        self.finish(false);
    }
}
