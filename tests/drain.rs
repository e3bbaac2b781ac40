//! `POST /backends/{name}/drain` against real backends: the backend leaves
//! the ring at once, and its open connections get close 1012 spread over
//! `shutdown_grace`, while other backends' connections stay. Every wait is
//! bounded.

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
use tokio::time::Instant;
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

/// Waits for the gateway's close frame; returns its code and when it came.
async fn close_code(c: &mut Client) -> (Option<u16>, Instant) {
    let r = tokio::time::timeout(WAIT, async {
        loop {
            match c.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("connection failed instead of a close frame: {e}"),
                None => return None,
            }
        }
    })
    .await
    .expect("no close within WAIT");
    (r, Instant::now())
}

/// `wsgate_closes_total` for one initiator and code, whatever the label order.
async fn closes(admin: SocketAddr, initiator: &str, code: &str) -> f64 {
    let (_, _, body) = http(admin, "GET", "/metrics").await;
    let (i, c) = (
        format!("initiator=\"{initiator}\""),
        format!("code=\"{code}\""),
    );
    body.lines()
        .filter(|l| l.starts_with("wsgate_closes_total{") && l.contains(&i) && l.contains(&c))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn three(server: &str) -> (Vec<TestBackend>, TestGateway) {
    let mut bs = Vec::new();
    for n in ["b1", "b2", "b3"] {
        bs.push(TestBackend::start(n).await);
    }
    let list: Vec<_> = bs.iter().map(|b| (b.st.name.as_str(), b.addr, 1)).collect();
    let g = gateway(&cfg(&list, server, "")).await;
    (bs, g)
}

#[tokio::test]
async fn drain_leaves_the_ring_at_once_and_spreads_1012_over_grace() {
    let (_bs, g) = three("shutdown_grace = \"2s\"").await;
    // 20 connections on b1, and a few on the others.
    let (mut on_b1, mut others) = (Vec::new(), Vec::new());
    for i in 0..400 {
        if on_b1.len() == 20 && others.len() >= 6 {
            break;
        }
        let id = format!("drain-{i}");
        let (c, b) = open(&g, &id).await;
        if b == "b1" && on_b1.len() < 20 {
            on_b1.push((id, c));
        } else if b != "b1" && others.len() < 6 {
            others.push((id, c, b));
        }
    }
    assert_eq!(on_b1.len(), 20, "not 20 IDs of 400 on b1");
    assert_eq!(backend_entry(g.admin, "b1").await["active_connections"], 20);
    let ids: Vec<String> = on_b1.iter().map(|(id, _)| id.clone()).collect();

    let t0 = Instant::now();
    let waits: Vec<_> = on_b1
        .into_iter()
        .map(|(id, mut c)| tokio::spawn(async move { (id, close_code(&mut c).await) }))
        .collect();
    let (status, _, body) = http(g.admin, "POST", "/backends/b1/drain").await;
    assert_eq!(status, 200, "drain: {body}");

    // Out of the ring at once.
    let e1 = backend_entry(g.admin, "b1").await;
    assert_eq!(e1["draining"], true, "{e1}");
    assert_eq!(e1["up"], false, "{e1}");
    for id in ids.iter().take(5) {
        let (mut c, b) = open(&g, id).await;
        assert_ne!(b, "b1", "{id} routed to the draining b1");
        echo_ok(&mut c, &b, "moved").await;
    }
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "test too slow to check 'at once'"
    );

    let mut times = Vec::new();
    for w in waits {
        let (id, (code, at)) = w.await.unwrap();
        assert_eq!(code, Some(1012), "{id} on the drained b1");
        times.push(at - t0);
    }
    times.sort();
    let (first, last) = (times[0], times[times.len() - 1]);
    assert!(
        last <= Duration::from_millis(3000),
        "last close {last:?} after the drain (grace 2s)"
    );
    assert!(
        last - first >= Duration::from_millis(500),
        "closes not spread over the grace: first {first:?}, last {last:?}"
    );
    eventually("b1 has no connections left", || async {
        backend_entry(g.admin, "b1").await["active_connections"] == 0
    })
    .await;

    assert_eq!(
        closes(g.admin, "gateway", "1012").await,
        20.0,
        "1012 closes counted"
    );

    // Other backends' clients were never touched.
    for (id, c, b) in &mut others {
        echo_ok(c, b, &format!("after-drain-{id}")).await;
    }
    assert_eq!(backend_entry(g.admin, "b1").await["draining"], true);
}

#[tokio::test]
async fn drain_of_an_unknown_backend_is_404_and_changes_nothing() {
    let (_bs, g) = three("").await;
    let (status, _, _) = http(g.admin, "POST", "/backends/nope/drain").await;
    assert_eq!(status, 404);
    let v = backends(g.admin).await;
    for b in v["backends"].as_array().unwrap() {
        assert_eq!(b["draining"], false, "{v}");
        assert_eq!(b["up"], true, "{v}");
    }
    let (status, _, _) = http(g.admin, "GET", "/backends/b1/drain").await;
    assert_ne!(status, 200, "drain needs POST");
    assert_eq!(backend_entry(g.admin, "b1").await["draining"], false);
}

#[tokio::test]
async fn draining_every_backend_leaves_no_route_503_and_readyz_503() {
    let (_bs, g) = three("shutdown_grace = \"1s\"").await;
    let (mut c, b) = open(&g, "last").await;
    echo_ok(&mut c, &b, "x").await;
    for n in ["b1", "b2", "b3"] {
        let (status, _, body) = http(g.admin, "POST", &format!("/backends/{n}/drain")).await;
        assert_eq!(status, 200, "{body}");
    }
    let (s, _, _) = http(g.admin, "GET", "/readyz").await;
    assert_eq!(s, 503, "/readyz with every backend draining");
    match try_connect(&g.url("/?client_id=any")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status().as_u16(), 503);
            assert!(r.headers().contains_key("retry-after"), "{:?}", r.headers());
        }
        Err(e) => panic!("expected HTTP 503, got {e}"),
        Ok(_) => panic!("upgrade routed to a draining backend"),
    }
    let (code, _) = close_code(&mut c).await;
    assert_eq!(code, Some(1012));
}
