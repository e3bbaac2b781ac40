//! Active health checks: one task per backend and config snapshot, running
//! the HTTP check (`GET http_path`, 2xx passes) and the WebSocket check (a
//! real upgrade on `ws_path`, a ping answered by a pong, optionally
//! `ws_send`/`ws_expect`, then close 1000) every `interval`, each under
//! `timeout`. Results go to the backend's rise/fall state (`health`).
//!
//! A WebSocket check answered with an HTTP status other than 101 means the
//! backend is alive but `ws_path` is not its WebSocket endpoint (Socket.IO,
//! SockJS, FastAPI ... do not serve `/`): the check is misconfigured, which
//! `/backends` shows and the log warns about, and it does not take the
//! backend out by itself. The upgrade is the gateway's own (`dial`), not
//! tungstenite's client handshake, so a 101 that selects no subprotocol
//! passes, as it does in browsers.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Empty;
use hyper::Request;
use hyper::header::{self, HeaderMap, HeaderValue};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::backend::dial::{Dialed, connect, dial};
use crate::backend::http1;
use crate::config::HealthConfig;
use crate::metrics::{Check, Metrics};

const PING_PAYLOAD: &[u8] = b"wsgate-health";

/// Starts the checks of each backend, with the health settings of its
/// pool, under `token` (cancelled on reload and shutdown), and sets the
/// gauges for the checks those settings turn on or off.
pub fn spawn<'a>(
    backends: impl IntoIterator<Item = (&'a Arc<Backend>, &'a HealthConfig)>,
    metrics: &Arc<Metrics>,
    token: &CancellationToken,
) {
    for (b, cfg) in backends {
        for c in [Check::Http, Check::Ws] {
            metrics
                .backend_up(&b.name, c)
                .set(b.check_up(cfg, c) as i64);
        }
        if cfg.http_path.is_empty() && cfg.ws_path.is_empty() {
            continue;
        }
        let (b, cfg, metrics, token) = (b.clone(), cfg.clone(), metrics.clone(), token.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = run(b, cfg, metrics) => {}
            }
        });
    }
}

async fn run(b: Arc<Backend>, cfg: HealthConfig, metrics: Arc<Metrics>) {
    // Spread the first checks so many backends are not probed in lockstep.
    tokio::time::sleep(cfg.interval.get().mul_f64(fastrand::f64() * 0.2)).await;
    let mut tick = tokio::time::interval(cfg.interval.get());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let timeout = cfg.timeout.get();
        let http = async {
            if cfg.http_path.is_empty() {
                return;
            }
            let t0 = Instant::now();
            let ok = tokio::time::timeout(timeout, http_check(&b, &cfg.http_path))
                .await
                .unwrap_or(false);
            metrics
                .health_duration(&b.name, Check::Http)
                .observe(t0.elapsed().as_secs_f64());
            b.record(Check::Http, ok, cfg.rise, cfg.fall, &metrics);
        };
        let ws = async {
            if cfg.ws_path.is_empty() {
                return;
            }
            let t0 = Instant::now();
            let outcome = tokio::time::timeout(timeout, ws_check(&b, &cfg, timeout))
                .await
                .unwrap_or(WsOutcome::Fail);
            metrics
                .health_duration(&b.name, Check::Ws)
                .observe(t0.elapsed().as_secs_f64());
            let (ok, misconfigured) = match outcome {
                WsOutcome::Pass => (true, None),
                WsOutcome::Fail => (false, None),
                // The backend answered HTTP: it is alive; the check is wrong.
                WsOutcome::Status(s) => (true, Some(s)),
            };
            b.record(Check::Ws, ok, cfg.rise, cfg.fall, &metrics);
            b.set_ws_misconfigured(misconfigured, &cfg.ws_path);
        };
        tokio::join!(http, ws);
    }
}

/// `GET http_path`; 2xx passes.
async fn http_check(b: &Backend, path: &str) -> bool {
    let Ok(io) = connect(&b.url, b.tls()).await else {
        return false;
    };
    let Ok(req) = Request::get(format!("{}{}", b.url.prefix, path))
        .header(hyper::header::HOST, b.url.authority())
        .header(hyper::header::USER_AGENT, "wsgate-health")
        .body(Empty::<Bytes>::new())
    else {
        return false;
    };
    http1::send::<crate::tls::Stream>(io, req)
        .await
        .is_ok_and(|x| x.response().status().is_success())
}

/// What one WebSocket check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsOutcome {
    Pass,
    /// No connection, a bad 101, no pong, a wrong reply, a subprotocol
    /// that was not offered.
    Fail,
    /// An HTTP answer other than 101: the backend is up, `ws_path` is wrong.
    Status(u16),
}

/// Whether a 101's `Sec-WebSocket-Protocol` is acceptable for `offered`
/// (comma-separated, as written in `ws_subprotocol`): none selected is
/// fine (browsers accept it); one selected must be one of those offered.
pub fn subprotocol_ok(offered: &str, selected: Option<&HeaderValue>) -> bool {
    let Some(sel) = selected else { return true };
    let Ok(sel) = sel.to_str() else { return false };
    offered
        .split(',')
        .map(str::trim)
        .any(|o| !o.is_empty() && o == sel.trim())
}

/// A real WebSocket exchange: upgrade, ping -> pong, optional message, close.
async fn ws_check(b: &Backend, cfg: &HealthConfig, timeout: Duration) -> WsOutcome {
    let mut h = HeaderMap::new();
    h.insert(
        header::USER_AGENT,
        HeaderValue::from_static("wsgate-health"),
    );
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    );
    let (Ok(key), Ok(host)) = (
        HeaderValue::from_str(&generate_key()),
        HeaderValue::from_str(&b.url.authority()),
    ) else {
        return WsOutcome::Fail;
    };
    h.insert(header::SEC_WEBSOCKET_KEY, key);
    h.insert(header::HOST, host);
    if !cfg.ws_subprotocol.is_empty() {
        // Validated at load: a valid header value.
        let Ok(v) = HeaderValue::from_str(&cfg.ws_subprotocol) else {
            return WsOutcome::Fail;
        };
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    let up = match dial(b, &cfg.ws_path, h, timeout).await {
        Ok(Dialed::Upgraded(u)) => u,
        Ok(Dialed::Refused(resp)) => return WsOutcome::Status(resp.status().as_u16()),
        Err(_) => return WsOutcome::Fail,
    };
    if !subprotocol_ok(&cfg.ws_subprotocol, up.protocol.as_ref()) {
        return WsOutcome::Fail;
    }
    let mut ws =
        WebSocketStream::from_partially_read(up.io, up.pre.to_vec(), Role::Client, None).await;
    if exchange(&mut ws, cfg).await {
        WsOutcome::Pass
    } else {
        WsOutcome::Fail
    }
}

/// Ping -> pong, the optional `ws_send`/`ws_expect`, then close 1000.
async fn exchange(ws: &mut WebSocketStream<crate::tls::Stream>, cfg: &HealthConfig) -> bool {
    if ws
        .send(Message::Ping(Bytes::from_static(PING_PAYLOAD)))
        .await
        .is_err()
    {
        return false;
    }
    let mut got_pong = false;
    let mut got_reply = cfg.ws_send.is_empty();
    if !cfg.ws_send.is_empty() && ws.send(Message::text(cfg.ws_send.clone())).await.is_err() {
        return false;
    }
    while !(got_pong && got_reply) {
        match ws.next().await {
            Some(Ok(Message::Pong(p))) if p.as_ref() == PING_PAYLOAD => got_pong = true,
            Some(Ok(Message::Text(t))) if !got_reply => {
                got_reply = t.as_str().contains(cfg.ws_expect.as_str());
                if !got_reply {
                    return false;
                }
            }
            Some(Ok(Message::Binary(_))) if !got_reply => return false,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return false,
            Some(Ok(_)) => {}
        }
    }
    let _ = ws
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "health check".into(),
        }))
        .await;
    // Let the close handshake finish, briefly; the result is known already.
    let _ = tokio::time::timeout(Duration::from_millis(200), async {
        while ws.next().await.is_some() {}
    })
    .await;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_101_may_select_no_subprotocol_or_one_offered() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert!(subprotocol_ok("chat", None));
        assert!(subprotocol_ok("", None));
        assert!(subprotocol_ok("chat", Some(&v("chat"))));
        assert!(subprotocol_ok("chat, superchat", Some(&v("superchat"))));
        assert!(!subprotocol_ok("chat", Some(&v("other"))));
        assert!(!subprotocol_ok("", Some(&v("chat"))), "none offered");
        assert!(!subprotocol_ok("chat", Some(&v(""))));
    }
}
