//! Active health checks against real backends: a WebSocket check that sees
//! what an HTTP check cannot, all backends down (503 + Retry-After and
//! /readyz 503), `ws_send`/`ws_expect`, and the check-duration histogram.
//! Every wait is bounded.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use tokio::net::TcpListener;

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
    b1.st.ws_ok.store(false, Ordering::SeqCst);
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
    b1.st.ws_ok.store(false, Ordering::SeqCst);
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
    let extra = health("http_path = \"/healthz\"\nws_path = \"/\"\nroute_on = \"ws\"");
    let g = gateway(&cfg(&[("b1", b1.addr, 1), ("b2", b2.addr, 1)], "", &extra)).await;
    let (s, _, _) = http(g.admin, "GET", "/readyz").await;
    assert_eq!(s, 200, "/readyz while both backends are up");

    b1.kill().await;
    b2.st.ws_ok.store(false, Ordering::SeqCst);
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
    b2.st.ws_ok.store(true, Ordering::SeqCst);
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
