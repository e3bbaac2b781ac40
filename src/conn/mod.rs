//! The life of one client connection, as ordered phases sharing one
//! task-owned context:
//!
//! `admit` (handshake, caps, Origin, auth, client ID) -> `pick` (ring order)
//! -> `dial` (with retries along the ring) -> `respond_101` -> `relay` (its
//! own task, [`task::Connection`]) -> `finish` (metrics, access log).
//!
//! A request that fails admission never dials; a dial that fails never
//! sends a 101. Usually the backend is dialed before the 101, so its choices
//! (subprotocol, extensions) reach the client. With `reject_with = "close"`
//! or a token in the first message the gateway answers the 101 itself, and
//! the same phases run on the upgraded socket (`after_own_101`). Before the
//! 101 every refusal is a [`Reject`]; after it, an [`Ending`].
//!
//! Rooms: `serve` (the TCP connection up to its requests), `handshake`
//! (RFC 6455 request checks), `headers` (the upgrade's headers both ways),
//! `extensions` (permessage-deflate negotiation), `resumable` (the phases
//! of a resumable session), `http` (plain HTTP), `reject` (refusal ->
//! status), `task` (the upgraded connection).

pub mod extensions;
pub mod handshake;
pub mod headers;
pub mod http;
pub mod reject;
pub mod resumable;
pub mod serve;
pub mod task;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::auth::Admitted;
use crate::auth::first_message::{self, FirstMessageError};
use crate::backend::Backend;
use crate::backend::dial::{self, Dialed, Upgraded};
use crate::cluster::registry;
use crate::config::Serve;
use crate::metrics::{ConnResult, Metrics};
use crate::relay::ending::{Ending, Refusal, Toward};
use crate::relay::{Relay, Session};
use crate::request;
use crate::resume::registry::Owner;
use crate::resume::session::Attach;
use crate::resume::wire::HelloState;
use crate::resume::{self, SessionStart};
use crate::side::Side;
use crate::state::caps::Place;
use crate::state::{Shared, Snapshot};
use crate::tls::Stream;
use crate::ws::frame::ControlFrame;
pub use reject::Reject;
use task::Connection;

/// How long the gateway tries to deliver its own close frame to a client it
/// refuses after the 101 (the client may be gone).
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the connection task knows before the request arrives.
pub struct ConnCtx {
    pub shared: Arc<Shared>,
    pub peer: SocketAddr,
    /// The client connected over TLS (X-Forwarded-Proto: https).
    pub tls: bool,
    /// A cap was already exceeded at accept: answer with this.
    pub precheck: Option<Reject>,
    /// Holds the connection's place under the caps while it lives.
    pub place: Arc<Place>,
    /// Set once the connection carries a plain HTTP request.
    pub http_conn: OnceLock<http::HttpConnMark>,
}

/// hyper's service function: every request on a client connection. A
/// WebSocket upgrade goes through the phases below; anything else is
/// proxied as plain HTTP ([`http`]).
pub async fn handle(
    mut req: Request<Incoming>,
    ctx: Arc<ConnCtx>,
) -> Result<Response<http::Body>, Infallible> {
    let started = Instant::now();
    let snap = ctx.shared.snapshot.load_full();
    if !handshake::wants_upgrade(&req) {
        return Ok(http::proxy(req, &ctx, &snap, started).await);
    }
    let mut resp = match upgrade(&mut req, &ctx, &snap, started).await {
        Ok(resp) => resp,
        Err(reject) => {
            ctx.shared.metrics.connection(reject.result());
            tracing::debug!(peer = %ctx.peer, status = reject.status().as_u16(), reason = %reject, "upgrade refused");
            reject.response()
        }
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        refusal_closes(&mut resp);
    }
    Ok(resp.map(http_body_util::Either::Left))
}

/// Every answer but a 101 is a refusal (the gateway's own or a backend's
/// status passed through): it says `Connection: close`, which also makes
/// hyper close the connection once it is written. A refused client has no
/// business on this connection, and its place under the caps is given back
/// only when the connection ends (SPEC, Hardening rules). (Plain HTTP
/// answers are not refusals: `http` marks only its own.)
fn refusal_closes(resp: &mut Response<Full<Bytes>>) {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

/// The phases before the 101, and the 101 itself.
async fn upgrade(
    req: &mut Request<Incoming>,
    ctx: &ConnCtx,
    snap: &Arc<Snapshot>,
    started: Instant,
) -> Result<Response<Full<Bytes>>, Reject> {
    let admitted = admit(req, ctx, snap).await?;
    let offer = resumable::offer(req, snap);
    if admitted.refuse_with_close.is_some() || admitted.token_in_first_message {
        // The gateway answers the upgrade itself; no subprotocol or
        // extension is agreed, since no backend has answered.
        let mut head = Request::new(());
        *head.uri_mut() = req.uri().clone();
        *head.headers_mut() = req.headers().clone();
        head.headers_mut().remove(header::SEC_WEBSOCKET_EXTENSIONS);
        head.headers_mut().remove(header::SEC_WEBSOCKET_PROTOCOL);
        let next = Next::OwnUpgrade { admitted, head };
        return Ok(respond_101(req, ctx, snap, None, None, next, started));
    }
    if let Some(offer) = offer
        && resumable::granted(snap, req, &admitted)
    {
        return resumable::start(req, ctx, snap, admitted, offer, started).await;
    }
    let (backend, up) = match connect_before_101(req, ctx, snap, &admitted, started).await? {
        Ok(upgraded) => upgraded,
        Err(backend_answer) => return Ok(backend_answer),
    };
    let (protocol, extensions) = (up.protocol.clone(), up.extensions.clone());
    let next = Next::Relay {
        admitted,
        backend,
        up,
    };
    Ok(respond_101(
        req, ctx, snap, protocol, extensions, next, started,
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
    fill_client_id(&mut admitted, req, ctx, snap);
    Ok(admitted)
}

/// A client ID from a token claim wins; else the `[routing]` sources, else
/// the peer's address.
fn fill_client_id<B>(admitted: &mut Admitted, req: &Request<B>, ctx: &ConnCtx, snap: &Snapshot) {
    if admitted.client_id.is_empty() {
        // The sources of the pool the request is routed to.
        let pool = http::route(snap, req).map_or(0, |r| r.pool);
        match request::find_value(req, &snap.pool(pool).settings.routing.client_id) {
            Some((_, id)) => admitted.client_id = id,
            None => {
                admitted.client_id = ctx.peer.ip().to_string();
                admitted.id_from_peer = true;
            }
        }
    }
}

/// Phases 2 and 3: pick, then dial in ring order until one answers.
async fn connect<B>(
    req: &Request<B>,
    ctx: &ConnCtx,
    snap: &Snapshot,
    admitted: &Admitted,
) -> Result<Connected, Reject> {
    let route = http::route(snap, req)
        .filter(|r| r.serve != Serve::Http)
        .ok_or(Reject::NoRoute)?;
    let mut candidates = pick(snap, route.pool, &admitted.client_id)?;
    if admitted.id_from_peer {
        // No client ID: the affinity cookie (from the client's HTTP
        // requests) keeps the upgrade on the same backend.
        http::prefer_cookie(snap, route.pool, req.headers(), &mut candidates);
    }
    let mut connected = dial(req, ctx, snap, admitted, &candidates).await?;
    if let Connected::Upgraded(_, up) = &mut connected {
        let mode = snap.pool(route.pool).settings.limits.permessage_deflate;
        up.extensions = extensions::answer_deflate(up.extensions.take(), mode);
    }
    Ok(connected)
}

/// What dialing came to.
enum Connected {
    Upgraded(Arc<Backend>, Upgraded),
    /// The backend answered the upgrade with a status: passed to the client.
    Refused(Response<Full<Bytes>>),
}

/// Phase 2: the backends of `pool` to try, in ring order.
fn pick(snap: &Snapshot, pool: usize, client_id: &str) -> Result<Vec<Arc<Backend>>, Reject> {
    let panic = snap.panic_mode(pool);
    let pool = snap.pool(pool);
    let routing = &pool.settings.routing;
    let backend = |i: usize| &snap.backends[pool.members[i]];
    let order = pool.ring.pick(
        client_id,
        1 + routing.connect_retries as usize,
        |i| backend(i).routable_in(&pool.settings.health, panic),
        |i| backend(i).active(),
        routing.load_factor,
    );
    if order.is_empty() {
        return Err(Reject::NoBackend);
    }
    Ok(order.into_iter().map(|i| backend(i).clone()).collect())
}

/// Phase 3: dial the candidates in order until one answers.
async fn dial<B>(
    req: &Request<B>,
    ctx: &ConnCtx,
    snap: &Snapshot,
    admitted: &Admitted,
    candidates: &[Arc<Backend>],
) -> Result<Connected, Reject> {
    let path = headers::upstream_path(req, admitted);
    let mut last_error = String::new();
    for backend in candidates {
        let settings = &snap.pool_of(backend).settings;
        let authority = backend.url.authority();
        let host = headers::upstream_host(req, &authority, settings.routing.host_header);
        let h = headers::upstream_headers(req, ctx.peer.ip(), ctx.tls, host, admitted);
        let mut h = h;
        extensions::offer_deflate(&mut h, settings.limits.permessage_deflate);
        let timeout = settings.routing.connect_timeout.get();
        match dial::dial(backend, &path, h, timeout).await {
            Ok(Dialed::Upgraded(u)) => return Ok(Connected::Upgraded(backend.clone(), u)),
            Ok(Dialed::Refused(resp)) => return Ok(Connected::Refused(resp)),
            Err(e) => {
                tracing::warn!(backend = %backend.name, error = %e, "backend dial failed");
                backend.passive_failure(&settings.health, &ctx.shared.metrics);
                last_error = format!("{}: {e}", backend.name);
            }
        }
    }
    Err(Reject::BackendUnreachable(last_error))
}

/// Phases 2 and 3 on the usual path, before the 101: the upgraded backend,
/// or the answer the client gets instead (a backend's own status, counted
/// as `backend_error`).
async fn connect_before_101(
    req: &Request<Incoming>,
    ctx: &ConnCtx,
    snap: &Snapshot,
    admitted: &Admitted,
    started: Instant,
) -> Result<Result<(Arc<Backend>, Upgraded), Response<Full<Bytes>>>, Reject> {
    match connect(req, ctx, snap, admitted).await? {
        Connected::Upgraded(backend, up) => {
            upgraded(&ctx.shared.metrics, started);
            Ok(Ok((backend, up)))
        }
        Connected::Refused(resp) => {
            ctx.shared.metrics.connection(ConnResult::BackendError);
            Ok(Err(resp))
        }
    }
}

/// Counts an upgrade that reached its backend.
fn upgraded(metrics: &Metrics, started: Instant) {
    metrics.connection(ConnResult::Upgraded);
    metrics
        .handshake_duration
        .observe(started.elapsed().as_secs_f64());
}

/// What happens on the socket once hyper hands it over after the 101.
enum Next {
    /// The backend is upgraded already: relay.
    Relay {
        admitted: Admitted,
        backend: Arc<Backend>,
        up: Upgraded,
    },
    /// The gateway answered the 101 itself: refuse, or read the token,
    /// then pick, dial and relay.
    OwnUpgrade {
        admitted: Admitted,
        head: Request<()>,
    },
    /// A new resumable session over the upgraded backend.
    Session {
        admitted: Admitted,
        backend: Arc<Backend>,
        up: Upgraded,
        owner: Owner,
        state: HelloState,
        /// What the 101 named (a reconnect's 101 repeats it).
        protocol: Option<HeaderValue>,
    },
    /// A reconnect to a live session.
    Resume {
        credential: String,
        received: u64,
        owner: Owner,
    },
}

/// Phase 4: the 101 to the client, and the task that takes the socket once
/// hyper hands it over.
fn respond_101(
    req: &mut Request<Incoming>,
    ctx: &ConnCtx,
    snap: &Arc<Snapshot>,
    protocol: Option<HeaderValue>,
    extensions: Option<HeaderValue>,
    next: Next,
    started: Instant,
) -> Response<Full<Bytes>> {
    let resp = headers::switching_protocols(req, protocol, extensions);
    let on_upgrade = hyper::upgrade::on(req);
    let ctx = ConnCtx {
        shared: ctx.shared.clone(),
        peer: ctx.peer,
        tls: ctx.tls,
        precheck: None,
        place: ctx.place.clone(),
        http_conn: OnceLock::new(),
    };
    let snap = snap.clone();
    ctx.shared.clone().tracker.spawn(async move {
        let Ok(Ok(parts)) = on_upgrade.await.map(|u| u.downcast::<TokioIo<Stream>>()) else {
            tracing::warn!(peer = %ctx.peer, "client upgrade hand-off failed");
            return;
        };
        let client = parts.io.into_inner();
        match next {
            Next::Relay {
                admitted,
                backend,
                up,
            } => start_relay(
                &ctx,
                &snap,
                admitted,
                backend,
                up,
                client,
                parts.read_buf,
                started,
            ),
            Next::OwnUpgrade { admitted, head } => {
                after_own_101(&ctx, &snap, admitted, head, client, parts.read_buf, started).await
            }
            Next::Session {
                admitted,
                backend,
                up,
                owner,
                state,
                protocol,
            } => {
                let attach = Attach {
                    client,
                    pre: parts.read_buf,
                    received: 0,
                    state,
                    peer: ctx.peer,
                    place: ctx.place.clone(),
                };
                let start = SessionStart {
                    registry: ctx.shared.resume.clone(),
                    metrics: ctx.shared.metrics.clone(),
                    policy: snap.pool_of(&backend).policy.clone(),
                    config: snap.config.resume.clone(),
                    owner,
                    protocol,
                    active: backend.enter(&ctx.shared.metrics),
                    cancel: backend.cancel.clone(),
                    shutdown: ctx.shared.shutdown.clone(),
                    token_expires: admitted.expires_at,
                    started,
                };
                // A task of its own: nothing of this upgrade task stays
                // behind for the session's life.
                ctx.shared
                    .tracker
                    .spawn(resume::start(start, up.io, up.pre, attach));
            }
            Next::Resume {
                credential,
                received,
                owner,
            } => {
                resumable::reattach(&ctx, credential, received, owner, client, parts.read_buf)
                    .await;
            }
        }
    });
    resp
}

/// After a 101 the gateway sent itself: the refusal, or the first-message
/// token, then phases 2-5 as on the usual path.
#[allow(clippy::too_many_arguments)]
async fn after_own_101(
    ctx: &ConnCtx,
    snap: &Snapshot,
    admitted: Admitted,
    head: Request<()>,
    mut client: Stream,
    pre: Bytes,
    started: Instant,
) {
    let connected = async {
        if let Some(why) = &admitted.refuse_with_close {
            tracing::debug!(peer = %ctx.peer, reason = %why, "authentication failed; closing with 4001");
            return Err(Refusal::AuthFailed);
        }
        let timeout = snap.auth.first_message_timeout;
        let (text, rest) = first_message::read(&mut client, pre, timeout)
            .await
            .map_err(|e| match e {
                FirstMessageError::Timeout => Refusal::AuthTimeout,
                FirstMessageError::Invalid => Refusal::AuthFailed,
            })?;
        let mut admitted = snap
            .auth
            .verify(&first_message::token(&text))
            .map_err(|why| {
                tracing::debug!(peer = %ctx.peer, reason = %why, "first-message token refused");
                Refusal::AuthFailed
            })?;
        fill_client_id(&mut admitted, &head, ctx, snap);
        match connect(&head, ctx, snap, &admitted).await {
            Ok(Connected::Upgraded(backend, up)) => Ok((admitted, backend, up, rest)),
            Ok(Connected::Refused(_)) | Err(_) => Err(Refusal::NoBackend),
        }
    }
    .await;
    let metrics = &ctx.shared.metrics;
    match connected {
        Ok((admitted, backend, up, rest)) => {
            upgraded(metrics, started);
            start_relay(ctx, snap, admitted, backend, up, client, rest, started);
        }
        Err(refusal) => {
            metrics.connection(match refusal {
                Refusal::AuthFailed | Refusal::AuthTimeout => ConnResult::AuthRejected,
                Refusal::NoBackend => ConnResult::BackendError,
            });
            let ending = Ending::Refused(refusal);
            metrics.close(ending.initiator(), ending.code());
            if let Toward::Close(code, reason) = ending.toward(Side::Client) {
                let f = ControlFrame::close(code, reason, None);
                let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
                    client.write_all(f.as_bytes()).await?;
                    client.shutdown().await
                })
                .await;
            }
        }
    }
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
    up: Upgraded,
    client: Stream,
    client_pre: Bytes,
    started: Instant,
) {
    let metrics = ctx.shared.metrics.clone();
    let pool = snap.pool_of(&backend);
    let (deflate, inspect) = extensions::deflate_session(
        up.extensions.as_ref(),
        pool.settings.limits.permessage_deflate,
    );
    let session = Session {
        deflate,
        inspect,
        token_expires: admitted.expires_at,
        cancel: backend.cancel.clone(),
        shutdown: ctx.shared.shutdown.clone(),
    };
    let active = backend.enter(&metrics);
    let mut relay = Relay::new(
        client,
        client_pre,
        up.io,
        up.pre,
        pool.policy.clone(),
        metrics,
        session,
    );
    if let Some(cluster) = ctx.shared.cluster.get() {
        // In memory only; the cluster task mirrors it into Redis.
        let topics = up
            .topics
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map(|v| registry::parse_topics(v.split(',')))
            .unwrap_or_default();
        let link = cluster
            .registry
            .register(&admitted.client_id, &backend.name, topics);
        relay = relay.with_link(link);
    }
    ctx.shared.tracker.spawn(Connection {
        relay,
        active: Some(active),
        peer: ctx.peer,
        // Empty when it is the peer's address: the log line formats that
        // at the end, and an idle connection holds one block less.
        client_id: if admitted.id_from_peer {
            Box::default()
        } else {
            admitted.client_id.into_boxed_str()
        },
        started,
        place: ctx.place.clone(),
    });
}
