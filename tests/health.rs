//! Active health checks against real backends: a WebSocket check that sees
//! what an HTTP check cannot, all backends down (503 + Retry-After and
//! /readyz 503), `ws_send`/`ws_expect`, and the check-duration histogram.
//! Every wait is bounded.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

// ---- test backends: named, killable, revivable, with plain-HTTP /healthz ----

/// A WebSocket backend that says its name first (when `greet`), echoes every
/// text message as `NAME:TEXT`, answers `GET /healthz` with 200 (while
/// `http_ok`), refuses upgrades with 404 (while `!ws_ok`), and can be killed
/// (listener and every connection dropped) and revived on the same port.
struct TestBackend {
    addr: SocketAddr,
    st: Arc<BackendState>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

struct BackendState {
    name: String,
    greet: bool,
    ws_ok: AtomicBool,
    http_ok: AtomicBool,
    /// Client IDs (the X-Client-Id header) of the upgrades it accepted.
    client_ids: Mutex<Vec<String>>,
}

#[allow(dead_code)] // each test file uses a different subset
impl TestBackend {
    async fn start(name: &str) -> TestBackend {
        TestBackend::start_with(name, true).await
    }

    async fn start_with(name: &str, greet: bool) -> TestBackend {
        let st = Arc::new(BackendState {
            name: name.to_string(),
            greet,
            ws_ok: AtomicBool::new(true),
            http_ok: AtomicBool::new(true),
            client_ids: Mutex::new(Vec::new()),
        });
        let l = listen("127.0.0.1:0".parse().unwrap());
        let addr = l.local_addr().unwrap();
        let b = TestBackend {
            addr,
            st,
            tasks: Arc::default(),
        };
        b.serve(l);
        b
    }

    fn serve(&self, l: TcpListener) {
        let (st, tasks) = (self.st.clone(), self.tasks.clone());
        let t2 = tasks.clone();
        let h = tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let h = tokio::spawn(backend_conn(tcp, st.clone()));
                t2.lock().unwrap().push(h);
            }
        });
        tasks.lock().unwrap().push(h);
    }

    /// Drops the listener and every open connection (sockets closed).
    async fn kill(&self) {
        let hs: Vec<_> = std::mem::take(&mut *self.tasks.lock().unwrap());
        for h in &hs {
            h.abort();
        }
        for h in hs {
            let _ = h.await;
        }
    }

    /// Listens again on the same port.
    fn revive(&self) {
        self.serve(listen(self.addr));
    }

    fn seen_ids(&self) -> Vec<String> {
        self.st.client_ids.lock().unwrap().clone()
    }
}

fn listen(addr: SocketAddr) -> TcpListener {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.set_reuseaddr(true).unwrap();
    s.bind(addr).unwrap();
    s.listen(1024).unwrap()
}

#[allow(clippy::result_large_err)] // tungstenite's ErrorResponse is what it is
async fn backend_conn(mut tcp: TcpStream, st: Arc<BackendState>) {
    // Peek the request head to tell a plain HTTP GET from an upgrade.
    let mut buf = vec![0u8; 8192];
    let mut head = None;
    for _ in 0..1000 {
        let Ok(n) = tcp.peek(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        if let Some(i) = buf[..n].windows(4).position(|w| w == b"\r\n\r\n") {
            head = Some((
                String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase(),
                i + 4,
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let Some((head, len)) = head else { return };
    let upgrade = head
        .lines()
        .any(|l| l.starts_with("upgrade:") && l.contains("websocket"));
    if !upgrade || !st.ws_ok.load(Ordering::SeqCst) {
        let mut consumed = vec![0u8; len];
        if tcp.read_exact(&mut consumed).await.is_err() {
            return;
        }
        let healthz = head.starts_with("get /healthz ");
        let status = if upgrade {
            "404 Not Found"
        } else if healthz && st.http_ok.load(Ordering::SeqCst) {
            "200 OK"
        } else if healthz {
            "503 Service Unavailable"
        } else {
            "404 Not Found"
        };
        let resp =
            format!("HTTP/1.1 {status}\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n");
        let _ = tcp.write_all(resp.as_bytes()).await;
        let _ = tcp.shutdown().await;
        return;
    }
    let st2 = st.clone();
    let ws = tokio_tungstenite::accept_hdr_async(tcp, move |req: &Request, resp: Response| {
        if let Some(id) = req.headers().get("x-client-id") {
            st2.client_ids
                .lock()
                .unwrap()
                .push(id.to_str().unwrap_or("").to_string());
        }
        Ok(resp)
    })
    .await;
    let Ok(mut ws) = ws else { return };
    if st.greet && ws.send(Message::text(st.name.clone())).await.is_err() {
        return;
    }
    while let Some(Ok(msg)) = ws.next().await {
        if let Message::Text(t) = msg
            && ws
                .send(Message::text(format!("{}:{}", st.name, t.as_str())))
                .await
                .is_err()
        {
            break;
        }
    }
}

// ---- config and client helpers ----

/// Config text with named backends `(name, addr, weight)`. `server` lines go
/// under `[server]`; health checks are off unless `extra` has `[health]`.
fn cfg(backends: &[(&str, SocketAddr, u32)], server: &str, extra: &str) -> String {
    let mut s = format!("[server]\nlisten = \"127.0.0.1:0\"\n{server}\n");
    if !extra.contains("[health]") {
        s.push_str("[health]\nhttp_path = \"\"\nws_path = \"\"\n");
    }
    s.push_str(extra);
    s.push('\n');
    for (name, addr, weight) in backends {
        s.push_str(&format!(
            "[[backends]]\nname = \"{name}\"\nurl = \"ws://{addr}\"\nweight = {weight}\n"
        ));
    }
    s
}

/// Connects with `?client_id=ID`; returns the client and the name of the
/// backend that greeted it.
async fn open(g: &TestGateway, id: &str) -> (Client, String) {
    let mut c = connect(&g.url(&format!("/?client_id={id}"))).await;
    let name = greeting(&mut c).await;
    (c, name)
}

async fn greeting(c: &mut Client) -> String {
    match next_msg(c).await {
        Some(Message::Text(t)) => t.as_str().to_string(),
        other => panic!("expected a greeting, got {other:?}"),
    }
}

/// Sends a text and expects the backend's `NAME:TEXT` echo.
async fn echo_ok(c: &mut Client, name: &str, text: &str) {
    c.send(Message::text(text))
        .await
        .unwrap_or_else(|e| panic!("send to {name}: {e}"));
    match next_msg(c).await {
        Some(Message::Text(t)) => assert_eq!(t.as_str(), format!("{name}:{text}")),
        other => panic!("expected an echo from {name}, got {other:?}"),
    }
}

/// GET /backends, parsed.
async fn backends(admin: SocketAddr) -> serde_json::Value {
    let (status, _, body) = http(admin, "GET", "/backends").await;
    assert_eq!(status, 200, "/backends: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/backends JSON: {e}: {body}"))
}

/// One backend's entry in `/backends`.
async fn backend_entry(admin: SocketAddr, name: &str) -> serde_json::Value {
    let v = backends(admin).await;
    v["backends"]
        .as_array()
        .expect("backends array")
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {v}"))
        .clone()
}

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
