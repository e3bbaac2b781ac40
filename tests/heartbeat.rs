//! Heartbeats both ways: idle links kept alive past an upstream idle
//! timeout, dead clients and frozen backends found, the gateway's pongs and
//! app pings never reaching the backend, RTTs and timeouts counted.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// A backend that drops any link on which it received nothing (pings
/// included) for `idle`, like a proxy with an idle timeout.
async fn idle_dropping_backend(idle: Duration) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                loop {
                    match tokio::time::timeout(idle, ws.next()).await {
                        Err(_) => return, // idle too long: drop the TCP link
                        Ok(Some(Ok(m @ (Message::Text(_) | Message::Binary(_))))) => {
                            let _ = ws.send(m).await;
                        }
                        Ok(Some(Ok(_))) => {}
                        Ok(_) => return,
                    }
                }
            });
        }
    });
    addr
}

async fn idle_for_ten_seconds(backend_interval: &str) -> bool {
    let b = idle_dropping_backend(Duration::from_secs(3)).await;
    let g = gateway(&config_for(
        &[b],
        &format!("[heartbeat]\nbackend_interval = \"{backend_interval}\"\n"),
    ))
    .await;
    let mut raw = raw_upgrade(g.addr, "/", "").await;
    // Idle for 10 s: nothing sent, nothing expected.
    let mut byte = [0u8; 1];
    let quiet = tokio::time::timeout(Duration::from_secs(10), raw.tcp.read(&mut byte)).await;
    if quiet.is_ok() {
        // Something arrived: the link was cut (a close frame or EOF).
        return false;
    }
    raw.send_frame(true, 0x1, b"still there?", Some([1, 2, 3, 4]))
        .await;
    matches!(raw.read_frame().await, Some((_, 0x1, p)) if p == b"still there?")
}

#[tokio::test]
async fn idle_link_outlives_upstream_idle_timeout() {
    let (with, without) = tokio::join!(idle_for_ten_seconds("1s"), idle_for_ten_seconds("0s"));
    assert!(
        with,
        "with backend_interval = 1s the idle link must survive"
    );
    assert!(
        !without,
        "control: without heartbeats the 3 s idle timeout cuts the link"
    );
}

#[tokio::test]
async fn client_that_never_answers_is_dropped_and_backend_gets_1001() {
    let (b, seen) = echo_backend().await;
    let g = gateway(&config_for(
        &[b],
        "[heartbeat]\nclient_interval = \"1s\"\nclient_timeout = \"1s\"\n",
    ))
    .await;
    let mut raw = raw_upgrade(g.addr, "/", "").await;
    let t0 = Instant::now();
    // The raw client reads the gateway's ping but never answers it.
    let (_, op, payload) = raw.read_frame().await.expect("a heartbeat ping");
    assert_eq!(op, 0x9);
    assert!(
        !payload.is_empty(),
        "the gateway's ping carries a payload it recognises"
    );
    eventually("backend got 1001 \"client heartbeat timeout\"", || {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().messages.iter().any(|m| {
                matches!(m, Message::Close(Some(f)) if u16::from(f.code) == 1001 && f.reason == "client heartbeat timeout")
            })
        }
    })
    .await;
    let elapsed = t0.elapsed();
    assert!(
        elapsed < Duration::from_millis(3500),
        "dropped after {elapsed:?}, interval + timeout is 2 s"
    );
    assert_eq!(
        metric(g.admin, "wsgate_heartbeat_timeouts_total{peer=\"client\"}").await,
        1.0
    );
}

#[tokio::test]
async fn frozen_backend_makes_client_receive_1014() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let baddr = listener.local_addr().unwrap();
    let (hold_tx, hold_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        // Frozen: holds the socket open, never reads, never answers.
        let _ = hold_rx.await;
        drop(ws);
    });
    let g = gateway(&config_for(
        &[baddr],
        "[heartbeat]\nbackend_interval = \"1s\"\nbackend_timeout = \"1s\"\n",
    ))
    .await;
    let mut raw = raw_upgrade(g.addr, "/", "").await;
    let t0 = Instant::now();
    let (code, reason) = loop {
        match raw.read_frame().await.expect("a close frame") {
            (_, 0x8, p) => {
                break (
                    u16::from_be_bytes([p[0], p[1]]),
                    String::from_utf8_lossy(&p[2..]).to_string(),
                );
            }
            (_, 0x9, p) => raw.send_frame(true, 0xA, &p, Some([9, 9, 9, 9])).await, // the client is alive
            _ => {}
        }
    };
    assert_eq!(code, 1014);
    assert_eq!(reason, "backend heartbeat timeout");
    assert!(
        t0.elapsed() < Duration::from_millis(3500),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(
        metric(g.admin, "wsgate_heartbeat_timeouts_total{peer=\"backend\"}").await,
        1.0
    );
    let _ = hold_tx.send(());
}

#[tokio::test]
async fn backend_never_sees_gateway_pongs_or_app_pings_and_rtts_are_counted() {
    let (b, seen) = echo_backend().await;
    let extra = "[heartbeat]\nclient_interval = \"200ms\"\nbackend_interval = \"200ms\"\n\
                 app_ping = '{\"type\":\"ping\"}'\napp_pong = '{\"type\":\"pong\"}'\n";
    let g = gateway(&config_for(&[b], extra)).await;
    let mut c = connect(&g.url("/")).await;
    c.send(Message::text("{\"type\":\"ping\"}")).await.unwrap();
    assert_eq!(
        next_msg(&mut c).await,
        Some(Message::text("{\"type\":\"pong\"}"))
    );
    // Let several heartbeat rounds pass; tungstenite answers pings while read.
    let until = Instant::now() + Duration::from_millis(1200);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(until, c.next()).await {
        assert!(
            matches!(m, Message::Ping(_)),
            "only heartbeat pings expected, got {m:?}"
        );
    }
    // A client ping is the client's own: it passes end to end.
    c.send(Message::Ping(b"mine".to_vec().into()))
        .await
        .unwrap();
    let pong = loop {
        match tokio::time::timeout(WAIT, c.next()).await.unwrap() {
            Some(Ok(Message::Pong(p))) => break p,
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(&pong[..], b"mine");
    c.send(Message::text("real")).await.unwrap();
    assert_eq!(next_msg(&mut c).await, Some(Message::text("real")));
    let messages = seen.lock().unwrap().messages.clone();
    for m in &messages {
        match m {
            Message::Pong(p) => panic!("backend saw a pong {p:?}"),
            Message::Text(t) => assert_ne!(t.as_str(), "{\"type\":\"ping\"}", "app ping forwarded"),
            _ => {}
        }
    }
    assert!(messages.contains(&Message::Ping(b"mine".to_vec().into())));
    assert!(
        messages
            .iter()
            .any(|m| matches!(m, Message::Ping(p) if &p[..] != b"mine")),
        "backend got heartbeat pings"
    );
    assert!(
        metric(
            g.admin,
            "wsgate_heartbeat_rtt_seconds_count{peer=\"client\"}"
        )
        .await
            >= 2.0
    );
    assert!(
        metric(
            g.admin,
            "wsgate_heartbeat_rtt_seconds_count{peer=\"backend\"}"
        )
        .await
            >= 2.0
    );
    assert_eq!(
        metric(
            g.admin,
            "wsgate_messages_total{direction=\"client_to_backend\"}"
        )
        .await,
        1.0
    );
}
