//! Active health checks: one task per backend and config snapshot, running
//! the HTTP check (`GET http_path`, 2xx passes) and the WebSocket check (a
//! real upgrade on `ws_path`, a ping answered by a pong, optionally
//! `ws_send`/`ws_expect`, then close 1000) every `interval`, each under
//! `timeout`. Results go to the backend's rise/fall state (`health`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Empty;
use hyper::Request;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::backend::dial::connect;
use crate::backend::http1;
use crate::config::HealthConfig;
use crate::metrics::{Check, Metrics};

const PING_PAYLOAD: &[u8] = b"wsgate-health";

/// Starts the checks of `backends` under `token` (cancelled on reload and
/// shutdown), and sets the gauges for the checks `cfg` turns on or off.
pub fn spawn(
    backends: &[Arc<Backend>],
    cfg: &HealthConfig,
    metrics: &Arc<Metrics>,
    token: &CancellationToken,
) {
    for b in backends {
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
            let ok = tokio::time::timeout(timeout, ws_check(&b, &cfg))
                .await
                .unwrap_or(false);
            metrics
                .health_duration(&b.name, Check::Ws)
                .observe(t0.elapsed().as_secs_f64());
            b.record(Check::Ws, ok, cfg.rise, cfg.fall, &metrics);
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

/// A real WebSocket exchange: upgrade, ping -> pong, optional message, close.
async fn ws_check(b: &Backend, cfg: &HealthConfig) -> bool {
    let Ok(io) = connect(&b.url, b.tls()).await else {
        return false;
    };
    let scheme = if b.url.tls { "wss" } else { "ws" };
    let url = format!(
        "{scheme}://{}{}{}",
        b.url.authority(),
        b.url.prefix,
        cfg.ws_path
    );
    let Ok(mut req) = url.into_client_request() else {
        return false;
    };
    if !cfg.ws_subprotocol.is_empty()
        && let Ok(v) = cfg.ws_subprotocol.parse()
    {
        req.headers_mut()
            .insert(hyper::header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    let Ok((mut ws, _)) = tokio_tungstenite::client_async(req, io).await else {
        return false;
    };
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
