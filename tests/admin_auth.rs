//! The admin listener under hostile or careless use (issue 13 items 5 and
//! 7, SPEC "Hardening rules"): odd paths never panic and 404 bodies are
//! JSON; `[admin] token` / `token_file` guard every POST (and `/metrics`
//! with `protect_metrics`), compared as a Bearer token; without a token,
//! POSTs are refused unless the listener is on loopback; `/healthz` and
//! `/readyz` stay open. A property test sends arbitrary requests and
//! always gets an HTTP answer. Real sockets, real gateway; every wait is
//! bounded.

mod common;

use std::net::SocketAddr;

use common::*;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wsgate::config::Listen;
use wsgate::{Config, Gateway};

const TOKEN: &str = "s3cret-admin-token-0123456789";

/// Sends raw request bytes to `addr`; returns (status, head, body). Status
/// 0 means no HTTP answer at all (the connection died).
async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut tcp = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let _ = tcp.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut out))
        .await
        .expect("admin answer in time");
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

async fn req(addr: SocketAddr, method: &str, path: &str, auth: Option<&str>) -> (u16, String) {
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let r = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\nContent-Length: 0\r\n\r\n"
    );
    let (s, _, body) = raw(addr, r.as_bytes()).await;
    (s, body)
}

/// A gateway with one echo backend `b1`; `admin_listen` as given, so a
/// test can bind it on 0.0.0.0 (not loopback) and still reach it.
async fn gateway_with_admin(admin_extra: &str, admin_listen: &str) -> (Gateway, SocketAddr) {
    let (b, _) = echo_backend().await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\n{admin_extra}\n[health]\nhttp_path = \"\"\nws_path = \"\"\n\
         [[backends]]\nname = \"b1\"\nurl = \"ws://{b}\"\n"
    );
    let mut c = Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    c.server.listen = loopback_port_0();
    c.admin.listen = Listen(vec![admin_listen.parse().unwrap()]);
    let gw = Gateway::bind(c, SHARDS).await.unwrap();
    let port = gw.admin_addrs()[0].port();
    (gw, SocketAddr::from(([127, 0, 0, 1], port)))
}

#[tokio::test]
async fn odd_admin_paths_do_not_panic_and_404_bodies_are_json() {
    let g = gateway(&config_for(&[echo_backend().await.0], "")).await;
    // "/backends/drain": prefix and suffix overlap (sliced out of range before).
    for path in [
        "/backends/drain",
        "/backends//drain",
        "/backends/",
        "/drain",
        "/backends/drain/",
    ] {
        let (s, _) = req(g.admin, "POST", path, None).await;
        assert_eq!(s, 404, "POST {path}");
    }
    let (s, body) = req(g.admin, "POST", "/backends/no%22such/drain", None).await;
    assert_eq!(s, 404);
    let v: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("404 body is not JSON ({e}): {body}"));
    assert!(v["error"].as_str().unwrap().contains("no%22such"), "{v}");
    // Still serving after all that.
    let (s, _) = req(g.admin, "GET", "/healthz", None).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn no_token_on_a_non_loopback_listener_refuses_posts_with_403() {
    let (_gw, admin) = gateway_with_admin("", "0.0.0.0:0").await;
    let (s, body) = req(admin, "POST", "/backends/b1/drain", None).await;
    assert_eq!(s, 403, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["error"].as_str().unwrap().contains("token"), "{v}");
    assert_eq!(
        backend_state(admin).await["draining"],
        false,
        "the refused drain did nothing"
    );
    for p in ["/metrics", "/healthz", "/readyz", "/backends"] {
        assert_eq!(req(admin, "GET", p, None).await.0, 200, "GET {p}");
    }
}

async fn backend_state(admin: SocketAddr) -> serde_json::Value {
    let (s, body) = req(admin, "GET", "/backends", None).await;
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["backends"][0].clone()
}

#[tokio::test]
async fn no_token_on_loopback_allows_posts() {
    let (_gw, admin) = gateway_with_admin("", "127.0.0.1:0").await;
    let (s, body) = req(admin, "POST", "/backends/b1/drain", None).await;
    assert_eq!(s, 200, "{body}");
}

#[tokio::test]
async fn a_token_guards_every_post_and_probes_stay_open() {
    let (_gw, admin) = gateway_with_admin(&format!("token = \"{TOKEN}\""), "0.0.0.0:0").await;
    let wrong = format!("Bearer {TOKEN}x");
    let short = format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]);
    for auth in [
        None,
        Some("Bearer"),
        Some(wrong.as_str()),
        Some(short.as_str()),
        Some(TOKEN),
    ] {
        let (s, body) = req(admin, "POST", "/backends/b1/drain", auth).await;
        assert_eq!(s, 401, "POST with {auth:?}: {body}");
        // Any POST, even one that names nothing.
        assert_eq!(req(admin, "POST", "/anything", auth).await.0, 401);
    }
    assert_eq!(backend_state(admin).await["draining"], false);
    for p in ["/metrics", "/healthz", "/readyz", "/backends"] {
        assert_eq!(req(admin, "GET", p, None).await.0, 200, "GET {p}");
    }
    let good = format!("Bearer {TOKEN}");
    let (s, body) = req(admin, "POST", "/backends/b1/drain", Some(&good)).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(backend_state(admin).await["draining"], true);
}

#[tokio::test]
async fn protect_metrics_and_token_file() {
    let dir = std::env::temp_dir().join(format!("wsgate-admin-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let (_gw, admin) = gateway_with_admin(
        &format!(
            "token_file = \"{}\"\nprotect_metrics = true",
            file.display()
        ),
        "127.0.0.1:0",
    )
    .await;
    let good = format!("Bearer {TOKEN}");
    assert_eq!(req(admin, "GET", "/metrics", None).await.0, 401);
    let (s, body) = req(admin, "GET", "/metrics", Some(&good)).await;
    assert_eq!(s, 200);
    assert!(body.contains("wsgate_"), "{body}");
    assert_eq!(req(admin, "GET", "/healthz", None).await.0, 200);
    assert_eq!(req(admin, "GET", "/readyz", None).await.0, 200);
    // Loopback does not waive a configured token.
    assert_eq!(req(admin, "POST", "/backends/b1/drain", None).await.0, 401);
    assert_eq!(
        req(admin, "POST", "/backends/b1/drain", Some(&good))
            .await
            .0,
        200
    );
    let _ = std::fs::remove_dir_all(dir);
}

// ---- property test: arbitrary requests always get an HTTP answer ----

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("GET".to_string()),
        Just("POST".to_string()),
        Just("PUT".to_string()),
        Just("DELETE".to_string()),
        "[A-Z]{1,10}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    let seg = prop_oneof![
        Just("backends".to_string()),
        Just("drain".to_string()),
        Just("metrics".to_string()),
        Just(String::new()),
        "[a-zA-Z0-9%._~!$&'()*+,;=:@-]{1,12}",
    ];
    (prop::collection::vec(seg, 0..6), "(\\?[a-z=&%0-9]{0,10})?")
        .prop_map(|(segs, q)| format!("/{}{q}", segs.join("/")))
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(
        (
            prop_oneof![
                Just("Authorization".to_string()),
                "[A-Za-z][A-Za-z0-9-]{0,15}"
            ],
            "[ -~]{0,40}",
        ),
        0..5,
    )
}

#[test]
fn admin_router_always_answers_http() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (gw, admin) = rt.block_on(async {
        let b = echo_backend().await.0;
        let g = gateway(&format!(
            "{}[admin]\ntoken = \"{TOKEN}\"\nprotect_metrics = true\n",
            config_for(&[b], "")
        ))
        .await;
        (g.gw, g.admin)
    });
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 128,
        ..ProptestConfig::default()
    });
    runner
        .run(&(method(), path(), headers()), |(m, p, hs)| {
            let mut r = format!("{m} {p} HTTP/1.1\r\nHost: x\r\n");
            for (k, v) in &hs {
                r.push_str(&format!("{k}: {v}\r\n"));
            }
            r.push_str("Connection: close\r\nContent-Length: 0\r\n\r\n");
            let (s, head, _) = rt.block_on(raw(admin, r.as_bytes()));
            prop_assert!((200..600).contains(&s), "no HTTP answer to {r:?}: {head:?}");
            Ok(())
        })
        .unwrap();
    drop(gw);
}
