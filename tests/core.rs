#![allow(clippy::result_large_err)] // tungstenite's handshake callback type
//! The gateway core against real backends and clients: echo, big and many
//! messages, fragmentation, subprotocols, extensions, headers, refusals,
//! close codes both ways, and graceful shutdown.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

const MASK: Option<[u8; 4]> = Some([0x11, 0x22, 0x33, 0x44]);

#[tokio::test]
async fn text_and_binary_echo() {
    let (b, _) = echo_backend().await;
    let g = gateway(&config_for(&[b], "")).await;
    let mut c = connect(&g.url("/")).await;
    c.send(Message::text("héllo")).await.unwrap();
    assert_eq!(next_msg(&mut c).await, Some(Message::text("héllo")));
    c.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
    assert_eq!(
        next_msg(&mut c).await,
        Some(Message::binary(vec![0u8, 1, 2, 255]))
    );
}

#[tokio::test]
async fn one_mib_message_round_trips() {
    let (b, _) = echo_backend().await;
    let g = gateway(&config_for(&[b], "")).await;
    let mut c = connect(&g.url("/")).await;
    let big: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
    c.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(next_msg(&mut c).await, Some(Message::binary(big)));
}

#[tokio::test]
async fn ten_thousand_messages_in_order() {
    let (b, _) = echo_backend().await;
    let g = gateway(&config_for(&[b], "")).await;
    let c = connect(&g.url("/")).await;
    let (mut tx, mut rx) = c.split();
    let sender = tokio::spawn(async move {
        for i in 0..10_000u32 {
            tx.send(Message::text(i.to_string())).await.unwrap();
        }
        tx
    });
    for i in 0..10_000u32 {
        let m = tokio::time::timeout(WAIT, rx.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(m, Message::text(i.to_string()), "message {i} out of order");
    }
    let _tx = sender.await.unwrap();
    assert_eq!(
        metric(
            g.admin,
            "wsgate_messages_total{direction=\"client_to_backend\"}"
        )
        .await,
        10_000.0
    );
}

#[tokio::test]
async fn fragmented_message_with_interleaved_ping() {
    let (b, seen) = echo_backend().await;
    let g = gateway(&config_for(&[b], "")).await;
    let mut raw = raw_upgrade(g.addr, "/", "").await;
    raw.send_frame(false, 0x1, b"frag", MASK).await;
    raw.send_frame(true, 0x9, b"mid-ping", MASK).await;
    raw.send_frame(true, 0x0, b"mented", MASK).await;
    let mut got_pong = false;
    let mut got_text = false;
    while !(got_pong && got_text) {
        let (_, op, p) = raw.read_frame().await.expect("frame");
        match op {
            0xA => {
                assert_eq!(p, b"mid-ping");
                got_pong = true;
            }
            0x1 => {
                assert_eq!(p, b"fragmented");
                got_text = true;
            }
            _ => {}
        }
    }
    let s = seen.lock().unwrap();
    assert!(
        s.messages
            .contains(&Message::Ping(b"mid-ping".to_vec().into()))
    );
    assert!(s.messages.contains(&Message::text("fragmented")));
}

#[tokio::test]
async fn subprotocol_negotiated_end_to_end() {
    let (b, _) = backend_with(|req, mut resp| {
        let offered = req
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap().to_string());
        if offered.is_some_and(|o| o.contains("chat.v2")) {
            resp.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_static("chat.v2"),
            );
        }
        Ok(resp)
    })
    .await;
    let g = gateway(&config_for(&[b], "")).await;
    let mut req = g.url("/").into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("chat.v1, chat.v2"),
    );
    let (_, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(
        resp.headers().get("sec-websocket-protocol").unwrap(),
        "chat.v2"
    );
}

/// A backend that speaks raw frames: accepts the upgrade with
/// permessage-deflate, records the offer, sends one compressed (RSV1) frame
/// and echoes the first frame it receives.
#[tokio::test]
async fn permessage_deflate_negotiated_end_to_end() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let baddr = listener.local_addr().unwrap();
    let backend = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut c = [0u8; 1024];
            let n = tcp.read(&mut c).await.unwrap();
            buf.extend_from_slice(&c[..n]);
        }
        let head = String::from_utf8_lossy(&buf).to_lowercase();
        assert!(
            head.contains("sec-websocket-extensions: permessage-deflate"),
            "offer not forwarded:\n{head}"
        );
        let key = head
            .lines()
            .find_map(|l| l.strip_prefix("sec-websocket-key: "))
            .unwrap()
            .trim()
            .to_string();
        // The key is case-sensitive: take it from the original bytes.
        let orig = String::from_utf8_lossy(&buf).to_string();
        let key = orig
            .lines()
            .find(|l| l.to_lowercase().starts_with("sec-websocket-key:"))
            .map(|l| l[18..].trim().to_string())
            .unwrap_or(key);
        let accept = wsgate::conn::headers::accept_key(key.as_bytes());
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
            accept.to_str().unwrap()
        );
        tcp.write_all(resp.as_bytes()).await.unwrap();
        // "Hello" compressed, as in RFC 7692 section 7.2.3.1, with RSV1.
        tcp.write_all(&[0xC1, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00])
            .await
            .unwrap();
        let mut frame = [0u8; 64];
        let n = tcp.read(&mut frame).await.unwrap();
        frame[..n].to_vec()
    });
    let g = gateway(&config_for(&[baddr], "")).await;
    let (status, mut raw) = raw_request(
        g.addr,
        "/",
        "Sec-WebSocket-Extensions: permessage-deflate\r\n",
    )
    .await;
    assert_eq!(status, 101);
    let (fin, op, payload) = raw.read_frame().await.unwrap();
    assert!(fin && op == 0x1);
    assert_eq!(payload, [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
    // A compressed client frame (RSV1) passes to the backend unchanged.
    let f = encode_frame(
        true,
        0b100,
        0x1,
        &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
        MASK,
    );
    raw.tcp.write_all(&f).await.unwrap();
    let got = tokio::time::timeout(WAIT, backend).await.unwrap().unwrap();
    assert_eq!(
        got, f,
        "backend must receive the client's frame byte for byte"
    );
}

#[tokio::test]
async fn path_query_and_headers_reach_backend() {
    let (b, seen) = echo_backend().await;
    let g = gateway(&config_for(&[b], "")).await;
    let mut req = g
        .url("/chat/room?client_id=alice&x=1")
        .into_client_request()
        .unwrap();
    let h = req.headers_mut();
    h.insert("x-custom", HeaderValue::from_static("kept"));
    h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
    h.insert("x-client-id", HeaderValue::from_static("spoofed"));
    h.insert(
        "origin",
        HeaderValue::from_static("https://app.example.com"),
    );
    let (mut c, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    c.send(Message::text("x")).await.unwrap();
    next_msg(&mut c).await;
    let s = seen.lock().unwrap();
    let (uri, headers) = &s.requests[0];
    assert_eq!(uri, "/chat/room?client_id=alice&x=1");
    let get = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("x-custom").as_deref(), Some("kept"));
    assert_eq!(
        get("x-forwarded-for").as_deref(),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(
        get("x-client-id").as_deref(),
        Some("alice"),
        "client cannot spoof X-Client-Id"
    );
    assert_eq!(get("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        get("x-forwarded-host").as_deref(),
        Some(g.addr.to_string().as_str())
    );
    assert_eq!(get("origin").as_deref(), Some("https://app.example.com"));
    assert_eq!(get("host").as_deref(), Some(b.to_string().as_str()));
}

#[tokio::test]
async fn backend_401_reaches_client() {
    let (b, _) = backend_with(|_req, _resp| {
        let mut r =
            tokio_tungstenite::tungstenite::http::Response::new(Some("no ticket".to_string()));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        Err(r)
    })
    .await;
    let g = gateway(&config_for(&[b], "")).await;
    match try_connect(&g.url("/")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 401);
        }
        other => panic!("expected HTTP 401, got {other:?}"),
    }
    assert_eq!(
        metric(
            g.admin,
            "wsgate_connections_total{result=\"backend_error\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn close_code_and_reason_pass_both_ways() {
    let (b, seen) = echo_backend().await;
    let g = gateway(&config_for(&[b], "")).await;
    // Client-initiated.
    let mut c = connect(&g.url("/")).await;
    c.close(Some(CloseFrame {
        code: 4000.into(),
        reason: "client bye".into(),
    }))
    .await
    .unwrap();
    while next_msg(&mut c).await.is_some() {}
    eventually("backend saw the client's close", || {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().messages.iter().any(|m| matches!(m, Message::Close(Some(f)) if u16::from(f.code) == 4000 && f.reason == "client bye"))
        }
    })
    .await;
    // Backend-initiated.
    let mut c = connect(&g.url("/")).await;
    c.send(Message::text("close:4002:server bye"))
        .await
        .unwrap();
    match next_msg(&mut c).await {
        Some(Message::Close(Some(f))) => {
            assert_eq!(u16::from(f.code), 4002);
            assert_eq!(f.reason, "server bye");
        }
        other => panic!("expected close 4002, got {other:?}"),
    }
    // Application codes 4000 and 4002 are counted in the `4xxx` bucket
    // (labels never carry a code a peer picked; SPEC, Hardening rules).
    eventually("closes counted", || async {
        metric(
            g.admin,
            "wsgate_closes_total{code=\"4xxx\",initiator=\"client\"}",
        )
        .await
            == 1.0
            && metric(
                g.admin,
                "wsgate_closes_total{code=\"4xxx\",initiator=\"backend\"}",
            )
            .await
                == 1.0
            && metric(g.admin, "wsgate_connections_active{backend=\"b1\"}").await == 0.0
    })
    .await;
}

#[tokio::test]
async fn bad_origin_is_403() {
    let (b, _) = echo_backend().await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nallowed_origins = [\"https://app.example.com\", \"https://*.example.org\"]\n\
         [health]\nhttp_path = \"\"\nws_path = \"\"\n[[backends]]\nname = \"b1\"\nurl = \"ws://{b}\"\n"
    );
    let g = gateway(&text).await;
    let (status, _) = raw_request(g.addr, "/", "Origin: https://evil.example.com\r\n").await;
    assert_eq!(status, 403);
    let (status, _) = raw_request(g.addr, "/", "Origin: https://a.b.example.org\r\n").await;
    assert_eq!(status, 101);
    assert_eq!(
        metric(
            g.admin,
            "wsgate_connections_total{result=\"origin_rejected\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn malformed_upgrade_is_400() {
    // Plain HTTP is proxied (tests/http_proxy.rs); a broken upgrade is not.
    let (b, _) = echo_backend().await;
    let g = gateway(&config_for(&[b], "")).await;
    let (status, _) = raw_request_with(g.addr, "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n").await;
    assert_eq!(status, 400, "missing key");
    let (status, _) = raw_request_with(g.addr, "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n").await;
    assert_eq!(status, 400, "short key");
}

async fn raw_request_with(addr: std::net::SocketAddr, req: &str) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    (
        head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        head,
    )
}

#[tokio::test]
async fn unreachable_backend_is_502() {
    // A port that was just free: nothing listens there.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let g = gateway(&config_for(
        &[dead],
        "[routing]\nconnect_timeout = \"1s\"\n",
    ))
    .await;
    let (status, _) = raw_request(g.addr, "/", "").await;
    assert_eq!(status, 502);
    assert_eq!(
        metric(
            g.admin,
            "wsgate_connections_total{result=\"backend_error\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn message_over_limit_gets_1009() {
    let (b, seen) = echo_backend().await;
    let g = gateway(&config_for(&[b], "[limits]\nmax_message_bytes = 1000\n")).await;
    let mut raw = raw_upgrade(g.addr, "/", "").await;
    raw.send_frame(true, 0x2, &[7u8; 1001], MASK).await;
    assert_eq!(raw.read_close().await.map(|c| c.0), Some(1009));
    assert!(
        seen.lock()
            .unwrap()
            .messages
            .iter()
            .all(|m| !matches!(m, Message::Binary(_)))
    );
}

#[tokio::test]
async fn invalid_utf8_text_gets_1007() {
    let (b, _) = echo_backend().await;
    let g = gateway(&config_for(&[b], "")).await;
    let mut raw = raw_upgrade(g.addr, "/", "").await;
    raw.send_frame(true, 0x1, &[b'o', b'k', 0xC3, 0x28], MASK)
        .await;
    assert_eq!(raw.read_close().await.map(|c| c.0), Some(1007));
    // Split across fragments, a valid character passes.
    let mut raw = raw_upgrade(g.addr, "/", "").await;
    raw.send_frame(false, 0x1, &[0xE2, 0x82], MASK).await;
    raw.send_frame(true, 0x0, &[0xAC], MASK).await;
    assert_eq!(
        raw.read_frame().await.map(|f| f.2),
        Some("€".as_bytes().to_vec())
    );
}

#[tokio::test]
async fn unmasked_client_frame_gets_1002_and_backend_1001() {
    let (b, seen) = echo_backend().await;
    let g = gateway(&config_for(&[b], "")).await;
    let mut raw = raw_upgrade(g.addr, "/", "").await;
    raw.send_frame(true, 0x1, b"naked", None).await;
    assert_eq!(raw.read_close().await.map(|c| c.0), Some(1002));
    eventually("backend got 1001", || {
        let seen = seen.clone();
        async move {
            seen.lock()
                .unwrap()
                .messages
                .iter()
                .any(|m| matches!(m, Message::Close(Some(f)) if u16::from(f.code) == 1001))
        }
    })
    .await;
}

#[tokio::test]
async fn backend_death_sends_client_1014() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let baddr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(ws); // no close frame: the link just dies
    });
    let g = gateway(&config_for(&[baddr], "")).await;
    let mut raw = raw_upgrade(g.addr, "/", "").await;
    let (code, reason) = raw.read_close().await.expect("close frame");
    assert_eq!(code, 1014);
    assert!(!reason.is_empty());
    eventually("close counted", || async {
        metric(
            g.admin,
            "wsgate_closes_total{code=\"1006\",initiator=\"backend\"}",
        )
        .await
            == 1.0
    })
    .await;
}

#[tokio::test]
async fn graceful_shutdown_sends_1001_to_fifty_clients() {
    let (b, seen) = echo_backend().await;
    let text = config_for(&[b], "[server]\nshutdown_grace = \"5s\"\n").replacen(
        "[server]\nlisten = \"127.0.0.1:0\"\n",
        "",
        1,
    );
    let text = text.replacen("[server]\n", "[server]\nlisten = \"127.0.0.1:0\"\n", 1);
    let g = gateway(&text).await;
    let mut clients = Vec::new();
    for i in 0..50 {
        let mut c = connect(&g.url(&format!("/?client_id=c{i}"))).await;
        c.send(Message::text("up")).await.unwrap();
        next_msg(&mut c).await;
        clients.push(c);
    }
    let (admin, addr) = (g.admin, g.addr);
    let shutdown = tokio::spawn(g.gw.shutdown());
    // Readiness turns 503 while closing (or the listener is already gone).
    let (status, _, _) = http(admin, "GET", "/readyz").await;
    assert!(status == 503 || status == 0, "readyz {status}");
    for (i, mut c) in clients.into_iter().enumerate() {
        match next_msg(&mut c).await {
            Some(Message::Close(Some(f))) => {
                assert_eq!(u16::from(f.code), 1001);
                assert_eq!(f.reason, "gateway shutting down");
            }
            other => panic!("expected close 1001, got {other:?}"),
        }
        if i == 0 {
            // The listening sockets were closed before any 1001 went out:
            // a client that reconnects at once is refused (and retries, or
            // reaches the next process), not queued in a backlog that is
            // about to be reset.
            let e = tokio::net::TcpStream::connect(addr)
                .await
                .expect_err("still listening after the first 1001");
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
        }
    }
    tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown finished")
        .unwrap();
    let backend_closes = seen
        .lock()
        .unwrap()
        .messages
        .iter()
        .filter(|m| matches!(m, Message::Close(Some(f)) if u16::from(f.code) == 1001))
        .count();
    assert_eq!(backend_closes, 50, "every backend link got 1001 too");
}
