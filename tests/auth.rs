//! Authentication through the real gateway: JWT in the query (stripped),
//! 401 at the handshake or 4001 after it (`reject_with = "close"`), tokens
//! in the first message (4001 / 4008), expiry while connected, forward auth.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use futures_util::SinkExt;
use jsonwebtoken::{EncodingKey, Header, encode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const MASK: Option<[u8; 4]> = Some([5, 6, 7, 8]);

fn token(sub: &str, ttl_secs: u64) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + ttl_secs;
    encode(
        &Header::default(),
        &serde_json::json!({"sub": sub, "exp": exp}),
        &EncodingKey::from_secret(b"s3cret"),
    )
    .unwrap()
}

const JWT: &str = "[auth]\nmode = \"jwt\"\njwt_secret = \"s3cret\"\n";

#[tokio::test]
async fn jwt_in_query_is_verified_stripped_and_its_claim_routes() {
    let (b, seen) = echo_backend().await;
    let g = gateway(&config_for(&[b], JWT)).await;
    let mut c = connect(&g.url(&format!("/chat?room=1&token={}", token("alice", 60)))).await;
    c.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_msg(&mut c).await, Some(Message::text("hi")));
    let s = seen.lock().unwrap();
    let (uri, headers) = &s.requests[0];
    assert_eq!(
        uri, "/chat?room=1",
        "the token is stripped before forwarding"
    );
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "x-client-id" && v == "alice")
    );
}

#[tokio::test]
async fn missing_or_bad_token_is_401() {
    let (b, seen) = echo_backend().await;
    let g = gateway(&config_for(&[b], JWT)).await;
    assert_eq!(raw_request(g.addr, "/", "").await.0, 401);
    assert_eq!(raw_request(g.addr, "/?token=not.a.jwt", "").await.0, 401);
    let wrong = encode(
        &Header::default(),
        &serde_json::json!({"sub": "x", "exp": 4102444800u64}),
        &EncodingKey::from_secret(b"other"),
    )
    .unwrap();
    assert_eq!(
        raw_request(g.addr, "/", &format!("Authorization: Bearer {wrong}\r\n"))
            .await
            .0,
        401
    );
    assert_eq!(
        raw_request(
            g.addr,
            "/",
            &format!("Authorization: Bearer {}\r\n", token("bob", 60))
        )
        .await
        .0,
        101
    );
    assert_eq!(
        seen.lock().unwrap().requests.len(),
        1,
        "refused clients never reach the backend"
    );
    assert_eq!(
        metric(
            g.admin,
            "wsgate_connections_total{result=\"auth_rejected\"}"
        )
        .await,
        3.0
    );
}

#[tokio::test]
async fn reject_with_close_accepts_then_closes_4001() {
    let (b, seen) = echo_backend().await;
    let g = gateway(&config_for(
        &[b],
        &format!("{JWT}reject_with = \"close\"\n"),
    ))
    .await;
    let mut raw = raw_upgrade(g.addr, "/", "").await;
    assert_eq!(
        raw.read_close().await,
        Some((4001, "authentication failed".to_string()))
    );
    assert!(
        seen.lock().unwrap().requests.is_empty(),
        "no backend is dialed"
    );
}

#[tokio::test]
async fn first_message_token_is_checked_and_not_forwarded() {
    let (b, seen) = echo_backend().await;
    let extra = format!("{JWT}token_from = [\"first_message\"]\nfirst_message_timeout = \"1s\"\n");
    let g = gateway(&config_for(&[b], &extra)).await;
    // A good token as JSON: the link then works, and the backend never saw it.
    let mut raw = raw_upgrade(g.addr, "/", "").await;
    let msg = format!("{{\"token\":\"{}\"}}", token("carol", 60));
    raw.send_frame(true, 0x1, msg.as_bytes(), MASK).await;
    raw.send_frame(true, 0x1, b"after auth", MASK).await;
    assert_eq!(
        raw.read_frame().await.map(|f| f.2),
        Some(b"after auth".to_vec())
    );
    {
        let s = seen.lock().unwrap();
        assert!(
            s.messages
                .iter()
                .all(|m| !matches!(m, Message::Text(t) if t.as_str().contains("token")))
        );
        assert!(
            s.requests[0]
                .1
                .iter()
                .any(|(k, v)| k == "x-client-id" && v == "carol")
        );
    }
    // A bad token: 4001.
    let mut raw = raw_upgrade(g.addr, "/", "").await;
    raw.send_frame(true, 0x1, b"garbage", MASK).await;
    assert_eq!(raw.read_close().await.map(|c| c.0), Some(4001));
    // Silence: 4008 after first_message_timeout.
    let mut raw = raw_upgrade(g.addr, "/", "").await;
    assert_eq!(raw.read_close().await.map(|c| c.0), Some(4008));
}

#[tokio::test]
async fn token_expiring_while_connected_closes_4001() {
    let (b, _) = echo_backend().await;
    let g = gateway(&config_for(&[b], JWT)).await;
    let mut raw = raw_upgrade(g.addr, &format!("/?token={}", token("dave", 2)), "").await;
    let t0 = tokio::time::Instant::now();
    assert_eq!(
        raw.read_close().await,
        Some((4001, "token expired".to_string()))
    );
    assert!(t0.elapsed() < Duration::from_secs(4));
}

/// A forward-auth endpoint: 200 with X-User for "Bearer good", else 403.
async fn forward_auth_server() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut c = [0u8; 2048];
                    let Ok(n) = tcp.read(&mut c).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&c[..n]);
                }
                let head = String::from_utf8_lossy(&buf).to_lowercase();
                let resp = if head.contains("authorization: bearer good") {
                    "HTTP/1.1 200 OK\r\nX-User: user-42\r\nContent-Length: 0\r\n\r\n"
                } else {
                    "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"
                };
                let _ = tcp.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn forward_auth_allows_copies_headers_and_refuses() {
    let (b, seen) = echo_backend().await;
    let fa = forward_auth_server().await;
    let extra = format!(
        "[auth]\nmode = \"forward\"\nforward_url = \"http://{fa}/auth\"\nforward_headers = [\"X-User\"]\n"
    );
    let g = gateway(&config_for(&[b], &extra)).await;
    assert_eq!(
        raw_request(g.addr, "/", "Authorization: Bearer bad\r\n")
            .await
            .0,
        401
    );
    assert_eq!(
        raw_request(
            g.addr,
            "/",
            "Authorization: Bearer good\r\nX-User: spoofed\r\n"
        )
        .await
        .0,
        101
    );
    let s = seen.lock().unwrap();
    assert_eq!(s.requests.len(), 1);
    let users: Vec<_> = s.requests[0]
        .1
        .iter()
        .filter(|(k, _)| k == "x-user")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(
        users,
        ["user-42"],
        "the forward answer replaces the client's header"
    );
}
