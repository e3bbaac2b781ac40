//! Active health checks against real backends: a WebSocket check that sees
//! what an HTTP check cannot, all backends down (503 + Retry-After and
//! /readyz 503), `ws_send`/`ws_expect`, and the check-duration histogram;
//! a misconfigured `ws_path` (non-101 answer) that must not cause an
//! outage, panic mode, and `ws_subprotocol` answers. Every wait is bounded.
// The upgrade callbacks' error type is tungstenite's.
#![allow(clippy::result_large_err)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};

use common::named::*;

/// Fast checks: every 200 ms, down after one failure, up after two passes.
fn health(extra: &str) -> String {
    format!("[health]\ninterval = \"200ms\"\ntimeout = \"500ms\"\nfall = 1\nrise = 2\n{extra}")
}

fn up_series(backend: &str, check: &str) -> String {
    format!("wsgate_backend_up{{backend=\"{backend}\",check=\"{check}\"}}")
}

fn duration_count(backend: &str, check: &str) -> String {
    format!("wsgate_health_check_duration_seconds_count{{backend=\"{backend}\",check=\"{check}\"}}")
}

/// Waits until `backend`'s `check` has run at least `n` times.
async fn checks_ran(admin: SocketAddr, backend: &str, check: &str, n: f64) {
    let s = duration_count(backend, check);
    eventually(&format!("{n} {check} checks of {backend}"), || async {
        metric(admin, &s).await >= n
    })
    .await;
}

#[tokio::test]
async fn ws_check_takes_out_a_backend_whose_upgrades_fail_while_http_passes() {
    let b1 = TestBackend::start("b1").await;
    let b2 = TestBackend::start("b2").await;
    b1.st.ws_hangup.store(true, Ordering::SeqCst);
    let extra = health("http_path = \"/healthz\"\nws_path = \"/\"\nroute_on = \"ws\"");
    let g = gateway(&cfg(&[("b1", b1.addr, 1), ("b2", b2.addr, 1)], "", &extra)).await;

    let ws1 = up_series("b1", "ws");
    eventually("b1 ws check down", || async {
        metric(g.admin, &ws1).await == 0.0
    })
    .await;
    checks_ran(g.admin, "b1", "http", 2.0).await;
    assert_eq!(
        metric(g.admin, &up_series("b1", "http")).await,
        1.0,
        "b1's /healthz answers 200"
    );
    assert_eq!(metric(g.admin, &up_series("b2", "ws")).await, 1.0);
    assert_eq!(metric(g.admin, &up_series("b2", "http")).await, 1.0);

    let e1 = backend_entry(g.admin, "b1").await;
    assert_eq!(e1["checks"]["ws"], "down", "{e1}");
    assert_eq!(e1["checks"]["http"], "up", "{e1}");
    assert_eq!(e1["up"], false, "{e1}");
    let e2 = backend_entry(g.admin, "b2").await;
    assert_eq!(e2["up"], true, "{e2}");
    assert_eq!(e2["checks"]["ws"], "up", "{e2}");

    // Every client ID now lands on b2, including b1's.
    for i in 0..20 {
        let (mut c, b) = open(&g, &format!("hc-{i}")).await;
        assert_eq!(b, "b2");
        echo_ok(&mut c, &b, "x").await;
    }
    let (s, _, _) = http(g.admin, "GET", "/readyz").await;
    assert_eq!(s, 200, "one backend is up");
}

#[tokio::test]
async fn route_on_http_keeps_a_backend_whose_ws_check_fails() {
    let b1 = TestBackend::start("b1").await;
    b1.st.ws_hangup.store(true, Ordering::SeqCst);
    let extra = health("http_path = \"/healthz\"\nws_path = \"/\"\nroute_on = \"http\"");
    let g = gateway(&cfg(&[("b1", b1.addr, 1)], "", &extra)).await;
    let ws1 = up_series("b1", "ws");
    eventually("b1 ws check down", || async {
        metric(g.admin, &ws1).await == 0.0
    })
    .await;
    let e1 = backend_entry(g.admin, "b1").await;
    assert_eq!(e1["checks"]["ws"], "down", "{e1}");
    assert_eq!(e1["checks"]["http"], "up", "{e1}");
    assert_eq!(e1["up"], true, "route_on = \"http\": {e1}");
    let (s, _, _) = http(g.admin, "GET", "/readyz").await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn all_backends_down_gives_503_with_retry_after_and_readyz_503() {
    let b1 = TestBackend::start("b1").await;
    let b2 = TestBackend::start("b2").await;
    // Panic mode off: with every backend down, routing has nothing.
    let extra = health(
        "http_path = \"/healthz\"\nws_path = \"/\"\nroute_on = \"ws\"\npanic_threshold = 0.0",
    );
    let g = gateway(&cfg(&[("b1", b1.addr, 1), ("b2", b2.addr, 1)], "", &extra)).await;
    let (s, _, _) = http(g.admin, "GET", "/readyz").await;
    assert_eq!(s, 200, "/readyz while both backends are up");

    b1.kill().await;
    b2.st.ws_hangup.store(true, Ordering::SeqCst);
    eventually("/readyz 503 with every backend down", || async {
        http(g.admin, "GET", "/readyz").await.0 == 503
    })
    .await;
    for b in ["b1", "b2"] {
        assert_eq!(backend_entry(g.admin, b).await["up"], false);
    }

    for i in 0..3 {
        match try_connect(&g.url(&format!("/?client_id=down-{i}"))).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 503);
                let ra = resp
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_string());
                let secs: u64 = ra
                    .as_deref()
                    .unwrap_or_else(|| panic!("503 without Retry-After: {:?}", resp.headers()))
                    .parse()
                    .expect("Retry-After in seconds");
                assert!(secs >= 1, "Retry-After {secs}");
            }
            Err(e) => panic!("expected HTTP 503, got {e}"),
            Ok(_) => panic!("upgrade succeeded with every backend down"),
        }
    }
    assert!(metric(g.admin, "wsgate_connections_total{result=\"no_backend\"}").await >= 3.0);

    // One comes back: ready again, and clients land there.
    b2.st.ws_hangup.store(false, Ordering::SeqCst);
    eventually("/readyz 200 once b2 passes rise checks", || async {
        http(g.admin, "GET", "/readyz").await.0 == 200
    })
    .await;
    let (mut c, b) = open(&g, "down-0").await;
    assert_eq!(b, "b2");
    echo_ok(&mut c, &b, "back").await;
}

#[tokio::test]
async fn ws_send_expect_mismatch_marks_down_and_durations_are_counted() {
    // No greeting: the first text a check gets is the reply to ws_send.
    let b1 = TestBackend::start_with("b1", false).await;
    let b2 = TestBackend::start_with("b2", false).await;
    let extra = health(
        "http_path = \"\"\nws_path = \"/\"\nws_send = \"status\"\nws_expect = \"b1:status\"",
    );
    let g = gateway(&cfg(&[("b1", b1.addr, 1), ("b2", b2.addr, 1)], "", &extra)).await;

    let ws2 = up_series("b2", "ws");
    eventually("b2 down: its reply lacks ws_expect", || async {
        metric(g.admin, &ws2).await == 0.0
    })
    .await;
    checks_ran(g.admin, "b1", "ws", 3.0).await;
    assert_eq!(
        metric(g.admin, &up_series("b1", "ws")).await,
        1.0,
        "b1's reply contains ws_expect"
    );
    let e2 = backend_entry(g.admin, "b2").await;
    assert_eq!(e2["up"], false, "{e2}");
    assert_eq!(e2["checks"]["ws"], "down", "{e2}");
    assert_eq!(e2["checks"]["http"], "off", "{e2}");
    assert_eq!(backend_entry(g.admin, "b1").await["up"], true);

    // The histogram's count grows with every check, for each backend.
    for b in ["b1", "b2"] {
        let s = duration_count(b, "ws");
        let before = metric(g.admin, &s).await;
        assert!(before >= 1.0, "{s} = {before}");
        eventually(&format!("{s} grows past {before}"), || async {
            metric(g.admin, &s).await > before
        })
        .await;
    }
    assert_eq!(
        metric(g.admin, &duration_count("b1", "http")).await,
        0.0,
        "HTTP check is off"
    );

    // Routing avoids b2: every client is answered by b1.
    for i in 0..10 {
        let mut c = connect(&g.url(&format!("/?client_id=exp-{i}"))).await;
        echo_ok(&mut c, "b1", "who").await;
    }
}

#[tokio::test]
async fn http_check_failure_gates_routing_with_route_on_both() {
    let b1 = TestBackend::start("b1").await;
    let b2 = TestBackend::start("b2").await;
    b1.st.http_ok.store(false, Ordering::SeqCst);
    let extra = health("http_path = \"/healthz\"\nws_path = \"/\"\nroute_on = \"both\"");
    let g = gateway(&cfg(&[("b1", b1.addr, 1), ("b2", b2.addr, 1)], "", &extra)).await;
    let h1 = up_series("b1", "http");
    eventually("b1 http check down", || async {
        metric(g.admin, &h1).await == 0.0
    })
    .await;
    checks_ran(g.admin, "b1", "ws", 2.0).await;
    assert_eq!(metric(g.admin, &up_series("b1", "ws")).await, 1.0);
    let e1 = backend_entry(g.admin, "b1").await;
    assert_eq!(
        (e1["checks"]["http"].as_str(), e1["checks"]["ws"].as_str()),
        (Some("down"), Some("up"))
    );
    assert_eq!(e1["up"], false, "route_on = \"both\": {e1}");
    for i in 0..10 {
        let (_c, b) = open(&g, &format!("both-{i}")).await;
        assert_eq!(b, "b2");
    }
    assert!(metric(g.admin, &duration_count("b1", "http")).await >= 2.0);
}

#[tokio::test]
async fn a_backend_that_never_answers_fails_by_timeout() {
    // Accepts TCP, reads, never writes: both checks must give up after `timeout`.
    let hole = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = hole.accept().await {
            held.push(tcp);
        }
    });
    let b2 = TestBackend::start("b2").await;
    let extra = "[health]\ninterval = \"200ms\"\ntimeout = \"300ms\"\nfall = 1\nrise = 2\n\
                 http_path = \"/healthz\"\nws_path = \"/\"\nroute_on = \"both\"";
    let g = gateway(&cfg(&[("b1", hole_addr, 1), ("b2", b2.addr, 1)], "", extra)).await;
    for check in ["ws", "http"] {
        let s = up_series("b1", check);
        eventually(&format!("b1 {check} down by timeout"), || async {
            metric(g.admin, &s).await == 0.0
        })
        .await;
    }
    checks_ran(g.admin, "b1", "ws", 2.0).await;
    for check in ["ws", "http"] {
        let count = metric(g.admin, &duration_count("b1", check)).await;
        let sum = metric(
            g.admin,
            &format!(
                "wsgate_health_check_duration_seconds_sum{{backend=\"b1\",check=\"{check}\"}}"
            ),
        )
        .await;
        let mean = sum / count;
        assert!(
            (0.25..1.0).contains(&mean),
            "b1 {check} checks took {mean} s on average (timeout 0.3 s)"
        );
    }
    assert_eq!(backend_entry(g.admin, "b1").await["up"], false);
    assert_eq!(metric(g.admin, &up_series("b2", "ws")).await, 1.0);
    for i in 0..5 {
        assert_eq!(open(&g, &format!("hole-{i}")).await.1, "b2");
    }
    holder.abort();
}

#[tokio::test]
async fn with_both_checks_off_backends_are_always_up() {
    let b1 = TestBackend::start("b1").await;
    let g = gateway(&cfg(&[("b1", b1.addr, 1)], "", "")).await;
    b1.kill().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let e1 = backend_entry(g.admin, "b1").await;
    assert_eq!(e1["checks"]["ws"], "off", "{e1}");
    assert_eq!(e1["checks"]["http"], "off", "{e1}");
    assert_eq!(e1["up"], true, "{e1}");
    let (s, _, _) = http(g.admin, "GET", "/readyz").await;
    assert_eq!(s, 200);
}

// ---- issue 13 items 8 and 9 ----

/// An echo backend whose WebSocket endpoint is `/ws` only: any other path
/// gets 404, as Socket.IO, SockJS, FastAPI ... answer a check on `/`.
async fn ws_only_at(path: &'static str) -> SocketAddr {
    backend_with(move |req: &Request, resp: Response| {
        if req.uri().path() == path {
            Ok(resp)
        } else {
            let mut r = ErrorResponse::new(Some("not here".into()));
            *r.status_mut() = StatusCode::NOT_FOUND;
            Err(r)
        }
    })
    .await
    .0
}

#[tokio::test]
async fn a_ws_check_on_the_wrong_path_is_misconfigured_and_upgrades_still_succeed() {
    let b = ws_only_at("/ws").await;
    // ws_path "/" is the default; panic mode off, so it cannot be what
    // keeps the backend in routing.
    let extra = health("http_path = \"\"\nws_path = \"/\"\npanic_threshold = 0.0");
    let g = gateway(&cfg(&[("b1", b, 1)], "", &extra)).await;
    // fall = 1 at 200 ms: well past fall x interval after three checks.
    checks_ran(g.admin, "b1", "ws", 3.0).await;
    let e = backend_entry(g.admin, "b1").await;
    assert_eq!(e["checks"]["ws"], "misconfigured", "{e}");
    assert_eq!(e["up"], true, "{e}");
    assert_eq!(metric(g.admin, &up_series("b1", "ws")).await, 1.0);
    assert_eq!(http(g.admin, "GET", "/readyz").await.0, 200);
    for i in 0..5 {
        let mut c = connect(&g.url(&format!("/ws?client_id=m-{i}"))).await;
        c.send(Message::text("hello")).await.unwrap();
        match next_msg(&mut c).await {
            Some(Message::Text(t)) => assert_eq!(t.as_str(), "hello"),
            other => panic!("expected the echo, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_ws_check_on_the_right_path_is_up() {
    let b = ws_only_at("/socket.io/").await;
    let extra = health(
        "http_path = \"\"\nws_path = \"/socket.io/?EIO=4&transport=websocket\"\npanic_threshold = 0.0",
    );
    let g = gateway(&cfg(&[("b1", b, 1)], "", &extra)).await;
    checks_ran(g.admin, "b1", "ws", 2.0).await;
    let e = backend_entry(g.admin, "b1").await;
    assert_eq!(e["checks"]["ws"], "up", "{e}");
}

#[tokio::test]
async fn panic_mode_routes_to_all_backends_when_too_few_pass() {
    // Both backends' replies lack ws_expect: every check fails, yet both
    // serve clients fine (a check mistake, not an outage).
    let b1 = TestBackend::start_with("b1", false).await;
    let b2 = TestBackend::start_with("b2", false).await;
    let extra = health("http_path = \"\"\nws_path = \"/\"\nws_send = \"x\"\nws_expect = \"never\"");
    let g = gateway(&cfg(&[("b1", b1.addr, 1), ("b2", b2.addr, 1)], "", &extra)).await;
    for b in ["b1", "b2"] {
        let s = up_series(b, "ws");
        eventually(&format!("{b} ws check down"), || async {
            metric(g.admin, &s).await == 0.0
        })
        .await;
    }
    assert_eq!(
        http(g.admin, "GET", "/readyz").await.0,
        200,
        "panic mode: routable"
    );
    let mut seen = std::collections::HashSet::new();
    for i in 0..20 {
        let mut c = connect(&g.url(&format!("/?client_id=panic-{i}"))).await;
        c.send(Message::text("who")).await.unwrap();
        match next_msg(&mut c).await {
            Some(Message::Text(t)) => {
                seen.insert(t.as_str().split(':').next().unwrap().to_string());
            }
            other => panic!("expected an echo, got {other:?}"),
        }
    }
    assert_eq!(seen.len(), 2, "panic mode routes to all backends: {seen:?}");

    // Dial failures still fail over: with b1 dead, everyone lands on b2 ...
    b1.kill().await;
    for i in 0..10 {
        let mut c = connect(&g.url(&format!("/?client_id=panic-{i}"))).await;
        echo_ok(&mut c, "b2", "still").await;
    }
    // ... and with both dead the answer is 502, not a hang or 503.
    b2.kill().await;
    match try_connect(&g.url("/?client_id=panic-0")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status().as_u16(), 502)
        }
        Err(e) => panic!("expected HTTP 502, got {e}"),
        Ok(_) => panic!("upgrade with every backend dead"),
    }
}

#[tokio::test]
async fn ws_subprotocol_a_101_without_one_passes_one_not_offered_fails() {
    // b1: 101 selecting no subprotocol; b2: selects "chat" (offered);
    // b3: selects "other" (not offered).
    let none = backend_with(|_req: &Request, resp: Response| Ok(resp))
        .await
        .0;
    let select = |p: &'static str| {
        move |_req: &Request, mut resp: Response| {
            resp.headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static(p));
            Ok(resp)
        }
    };
    let chat = backend_with(select("chat")).await.0;
    let other = backend_with(select("other")).await.0;
    let extra = health(
        "http_path = \"\"\nws_path = \"/\"\nws_subprotocol = \"chat, superchat\"\npanic_threshold = 0.0",
    );
    let g = gateway(&cfg(
        &[("b1", none, 1), ("b2", chat, 1), ("b3", other, 1)],
        "",
        &extra,
    ))
    .await;
    let s3 = up_series("b3", "ws");
    eventually("b3 down: it selected a protocol not offered", || async {
        metric(g.admin, &s3).await == 0.0
    })
    .await;
    checks_ran(g.admin, "b1", "ws", 3.0).await;
    checks_ran(g.admin, "b2", "ws", 3.0).await;
    for b in ["b1", "b2"] {
        let e = backend_entry(g.admin, b).await;
        assert_eq!(e["checks"]["ws"], "up", "{e}");
        assert_eq!(e["up"], true, "{e}");
    }
    assert_eq!(backend_entry(g.admin, "b3").await["checks"]["ws"], "down");
}

/// The misconfigured check's warning, through the real binary's log: it
/// names the path and the status, and is logged when the state starts, not
/// on every check.
#[tokio::test]
async fn the_misconfigured_warning_names_path_and_status_once() {
    use tokio::io::AsyncBufReadExt;
    let b = ws_only_at("/ws").await;
    let dir = std::env::temp_dir().join(format!("wsgate-health-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [log]\nformat = \"json\"\n{}\n[[backends]]\nname = \"b1\"\nurl = \"ws://{b}\"\n",
            health("http_path = \"\"\nws_path = \"/\"")
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .arg("run")
        .arg("-c")
        .arg(&file)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn wsgate");
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut err = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let admin: SocketAddr = tokio::time::timeout(WAIT, async {
        loop {
            let line = out.next_line().await.unwrap().expect("wsgate exited");
            if let Some(a) = line.strip_prefix("wsgate admin on http://") {
                return a.trim().parse().unwrap();
            }
        }
    })
    .await
    .expect("admin address announced");
    // Five checks at 200 ms: one warning, not five.
    checks_ran(admin, "b1", "ws", 5.0).await;
    let _ = child.start_kill();
    let mut warnings = Vec::new();
    let _ = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = err.next_line().await {
            if line.contains("misconfigured") {
                warnings.push(line);
            }
        }
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    let w: serde_json::Value = serde_json::from_str(&warnings[0]).unwrap();
    assert_eq!(w["level"], "WARN", "{w}");
    let f = &w["fields"];
    assert_eq!(
        (&f["backend"], &f["ws_path"], &f["status"]),
        (
            &serde_json::json!("b1"),
            &serde_json::json!("/"),
            &serde_json::json!(404)
        ),
        "{w}"
    );
}
