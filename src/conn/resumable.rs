//! The phases of a resumable session (`[resume]`, see `crate::resume`): the
//! client's offer taken out of the upgrade, whether it is granted, a new
//! session dialed as usual, or a reconnect reattached to its live session
//! without a dial. Everything else is the usual path in `conn`.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::{ConnCtx, Next, REFUSAL_WRITE_TIMEOUT, Reject, connect_before_101, respond_101};
use crate::auth::Admitted;
use crate::metrics::ResumeResult;
use crate::resume::registry::Owner;
use crate::resume::session::Attach;
use crate::resume::wire::HelloState;
use crate::resume::{self, Lookup};
use crate::state::Snapshot;
use crate::tls::Stream;
use crate::ws::close::code;
use crate::ws::frame::ControlFrame;

/// With `[resume] enabled`, a client's resume offer is taken out of the
/// request (it never reaches a backend, and may hold a credential) and
/// returned if there was one.
pub(super) fn offer<B>(req: &mut Request<B>, snap: &Snapshot) -> Option<resume::Offer> {
    if !snap.config.resume.enabled {
        return None;
    }
    let offer = resume::Offer::parse(
        req.headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    if !offer.wanted && offer.resume.is_none() {
        return None;
    }
    let h = req.headers_mut();
    h.remove(header::SEC_WEBSOCKET_PROTOCOL);
    if !offer.rest.is_empty()
        && let Ok(v) = HeaderValue::from_str(&offer.rest.join(", "))
    {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    Some(offer)
}

/// Resume is granted unless a feature only the relay enforces is on (the
/// client then gets a plain link: no hello). `app_ping` does not stand in
/// the way: wsgate clients use the `\0ping` control message on a
/// resumable link instead.
pub(super) fn granted<B>(snap: &Snapshot, req: &Request<B>, admitted: &Admitted) -> bool {
    // The policy of the pool the upgrade is routed to.
    let p = &snap
        .pool(super::http::route(snap, req).map_or(0, |r| r.pool))
        .policy;
    let r = &p.rate;
    admitted.refuse_with_close.is_none()
        && !admitted.token_in_first_message
        && !p.validate_json
        && r.messages_per_sec == 0
        && r.bytes_per_sec == 0
}

/// Who a session belongs to: a resume must come from the same.
fn owner(admitted: &Admitted) -> Owner {
    let mut identity = String::new();
    for (name, value) in &admitted.extra_headers {
        identity.push_str(name.as_str());
        identity.push('=');
        identity.push_str(&String::from_utf8_lossy(value.as_bytes()));
        identity.push('\n');
    }
    Owner {
        client_id: admitted.client_id.as_str().into(),
        identity: identity.into(),
    }
}

/// A client that asked for a resumable session: reattach it to its live
/// session (no dial), or start a new session (dial as usual), telling it
/// in the hello whether the state it asked for was lost.
pub(super) async fn start(
    req: &mut Request<Incoming>,
    ctx: &ConnCtx,
    snap: &Arc<Snapshot>,
    admitted: Admitted,
    offer: resume::Offer,
    started: Instant,
) -> Result<Response<Full<Bytes>>, Reject> {
    let owner = owner(&admitted);
    let mut state = HelloState::New;
    if let Some((credential, received)) = offer.resume {
        match ctx.shared.resume.peek(&credential, &owner) {
            Lookup::Live(live) => {
                let next = Next::Resume {
                    credential,
                    received,
                    owner,
                };
                return Ok(respond_101(
                    req,
                    ctx,
                    snap,
                    live.protocol,
                    None,
                    next,
                    started,
                ));
            }
            Lookup::Lost(why) => {
                // Expired and overflowed sessions were counted when they
                // ended; a bad credential is counted now.
                if matches!(why, ResumeResult::Unknown | ResumeResult::Refused) {
                    ctx.shared.metrics.resume(why);
                }
                state = HelloState::Lost(why.label());
            }
        }
    }
    // Messages are counted one by one on a resumable link: no compression.
    req.headers_mut().remove(header::SEC_WEBSOCKET_EXTENSIONS);
    let (backend, up) = match connect_before_101(req, ctx, snap, &admitted, started).await? {
        Ok(upgraded) => upgraded,
        Err(backend_answer) => return Ok(backend_answer),
    };
    // The client offered `wsgate.resume.v1`: if the backend chose no
    // subprotocol, that one is the answer (a client that offers
    // subprotocols may fail a 101 that names none, as tungstenite does).
    let protocol = up
        .protocol
        .clone()
        .or(Some(HeaderValue::from_static(resume::SUBPROTOCOL)));
    let next = Next::Session {
        admitted,
        backend,
        up,
        owner,
        state,
        protocol: protocol.clone(),
    };
    Ok(respond_101(req, ctx, snap, protocol, None, next, started))
}

/// Hands a reconnect's socket to its session. The credential is spent
/// here, under the registry's lock: of two reconnects with one credential
/// only one gets the session. The other (a replay, or a race with the
/// session's end) gets 1012, and its next attempt learns the session is
/// lost.
pub(super) async fn reattach(
    ctx: &ConnCtx,
    credential: String,
    received: u64,
    owner: Owner,
    mut client: Stream,
    pre: Bytes,
) {
    let attach = Attach {
        client,
        pre,
        received,
        state: HelloState::Resumed,
        peer: ctx.peer,
        place: ctx.place.clone(),
    };
    let refused = match ctx.shared.resume.take(&credential, &owner) {
        Some(live) => match live.attach.send(attach) {
            Ok(()) => return,
            Err(e) => e.0,
        },
        None => attach,
    };
    ctx.shared.metrics.resume(ResumeResult::Unknown);
    client = refused.client;
    let f = ControlFrame::close(code::SERVICE_RESTART, "session lost; reconnect", None);
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        client.write_all(f.as_bytes()).await?;
        client.shutdown().await
    })
    .await;
}
