//! Reload against real backends: in-process through `Gateway::reload` (what
//! SIGHUP does), and through the real binary with SIGHUP for a config file
//! that fails to parse. Added backends take new clients, removed ones close
//! theirs with 1012 within `shutdown_grace`, weights apply, and a bad config
//! changes nothing. Every wait is bounded.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use wsgate::Config;

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

async fn start_backends(names: &[&str]) -> Vec<TestBackend> {
    let mut v = Vec::new();
    for n in names {
        v.push(TestBackend::start(n).await);
    }
    v
}

fn list(bs: &[TestBackend]) -> Vec<(&str, SocketAddr, u32)> {
    bs.iter().map(|b| (b.st.name.as_str(), b.addr, 1)).collect()
}

fn reload(g: &TestGateway, text: &str) {
    let c = Config::parse(text).unwrap_or_else(|e| panic!("reload config: {e}\n{text}"));
    g.gw.reload(c)
        .unwrap_or_else(|e| panic!("reload refused: {e}"));
}

/// Waits for the close frame the gateway sends; returns its code and when
/// it came.
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

#[tokio::test]
async fn reload_adds_a_backend_for_new_connections() {
    let bs = start_backends(&["b1", "b2", "b3"]).await;
    let g = gateway(&cfg(&list(&bs[..2]), "", "")).await;
    let mut before = HashMap::new();
    for i in 0..60 {
        let id = format!("add-{i}");
        let (_c, b) = open(&g, &id).await;
        before.insert(id, b);
    }
    let mut open_clients = Vec::new();
    for i in 0..6 {
        let (c, b) = open(&g, &format!("add-{i}")).await;
        open_clients.push((c, b));
    }

    reload(&g, &cfg(&list(&bs), "", ""));
    assert_eq!(
        metric(g.admin, "wsgate_config_reloads_total{result=\"ok\"}").await,
        1.0
    );
    let v = backends(g.admin).await;
    assert_eq!(v["backends"].as_array().unwrap().len(), 3, "{v}");

    let mut to_b3 = 0;
    for (id, old) in &before {
        let (mut c, b) = open(&g, id).await;
        if b == "b3" {
            to_b3 += 1;
        } else {
            assert_eq!(&b, old, "{id} moved between backends that were kept");
        }
        echo_ok(&mut c, &b, "new").await;
    }
    assert!(
        (8..=35).contains(&to_b3),
        "{to_b3} of 60 IDs moved to the added b3 (expect about 1/3)"
    );
    // Connections opened before the reload are untouched.
    for (c, b) in &mut open_clients {
        echo_ok(c, b, "old").await;
    }
}

#[tokio::test]
async fn reload_removing_a_backend_closes_its_connections_with_1012() {
    let bs = start_backends(&["b1", "b2", "b3"]).await;
    let server = "shutdown_grace = \"1s\"";
    let g = gateway(&cfg(&list(&bs), server, "")).await;
    let mut clients = Vec::new();
    for i in 0..30 {
        let id = format!("rm-{i}");
        let (c, b) = open(&g, &id).await;
        clients.push((id, c, b));
    }
    let (removed, mut kept): (Vec<_>, Vec<_>) =
        clients.into_iter().partition(|(_, _, b)| b == "b3");
    assert!(
        !removed.is_empty() && !kept.is_empty(),
        "{} of 30 on b3",
        removed.len()
    );

    let t0 = Instant::now();
    let waits: Vec<_> = removed
        .into_iter()
        .map(|(id, mut c, _)| tokio::spawn(async move { (id, close_code(&mut c).await) }))
        .collect();
    reload(&g, &cfg(&list(&bs[..2]), server, ""));
    for w in waits {
        let (id, (code, at)) = w.await.unwrap();
        assert_eq!(code, Some(1012), "{id} on the removed b3");
        let after = at - t0;
        assert!(
            after <= Duration::from_millis(2000),
            "{id} closed {after:?} after the reload (grace 1s)"
        );
    }
    // The kept backends' connections stay open past the grace and still echo.
    let left = Duration::from_millis(1300).saturating_sub(t0.elapsed());
    tokio::time::sleep(left).await;
    for (id, c, b) in &mut kept {
        echo_ok(c, b, &format!("kept-{id}")).await;
    }
    let v = backends(g.admin).await;
    assert!(
        v["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["name"] != "b3"),
        "{v}"
    );
    // b3's clients come back on b1/b2.
    for i in 0..30 {
        let (_c, b) = open(&g, &format!("rm-{i}")).await;
        assert_ne!(b, "b3");
    }
}

#[tokio::test]
async fn reload_weight_change_applies_to_new_connections() {
    let bs = start_backends(&["b1", "b2"]).await;
    let g = gateway(&cfg(&list(&bs), "", "")).await;
    let (mut old, old_b) = open(&g, "w-old").await;

    reload(
        &g,
        &cfg(&[("b1", bs[0].addr, 3), ("b2", bs[1].addr, 1)], "", ""),
    );
    assert_eq!(backend_entry(g.admin, "b1").await["weight"], 3);
    let g = &g;
    let names: Vec<String> = futures_util::stream::iter(0..200)
        .map(|i| async move { open(g, &format!("w-{i}")).await.1 })
        .buffer_unordered(8)
        .collect()
        .await;
    let b1 = names.iter().filter(|n| *n == "b1").count();
    assert!(
        (130..=176).contains(&b1),
        "weight 3 vs 1: b1 got {b1} of 200 (expect about 150)"
    );
    echo_ok(&mut old, &old_b, "still here").await;
}

// ---- the real binary and SIGHUP ----

struct Proc(tokio::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Says whether the gateway had exited (and by which signal).
            eprintln!("wsgate process state: {:?}", self.0.try_wait());
        }
        let _ = self.0.start_kill();
    }
}

struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The gateway's stderr, shown only when the test fails.
struct StderrLog(std::path::PathBuf);

impl Drop for StderrLog {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.0).unwrap_or_default();
            eprintln!("---- wsgate stderr ----\n{log}---- end of wsgate stderr ----");
        }
        let _ = std::fs::remove_file(&self.0);
    }
}

fn binary_config(backends: &[(&str, SocketAddr)], server_extra: &str) -> String {
    let mut s = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server_extra}\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [health]\nhttp_path = \"\"\nws_path = \"\"\n"
    );
    for (n, a) in backends {
        s.push_str(&format!(
            "[[backends]]\nname = \"{n}\"\nurl = \"ws://{a}\"\n"
        ));
    }
    s
}

fn sighup(pid: u32) {
    let st = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -HUP {pid}");
}

#[tokio::test]
async fn sighup_with_invalid_config_keeps_the_old_one_then_valid_applies() {
    let b1 = TestBackend::start("b1").await;
    let b2 = TestBackend::start("b2").await;
    let path = std::env::temp_dir().join(format!("wsgate-reload-test-{}.toml", std::process::id()));
    let _tmp = TempFile(path.clone());
    let log_path = path.with_extension("log");
    let log = std::fs::File::create(&log_path).unwrap();
    let _log = StderrLog(log_path);
    std::fs::write(&path, binary_config(&[("b1", b1.addr)], "")).unwrap();

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["run", "-c"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn wsgate");
    let pid = child.id().expect("pid");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let _proc = Proc(child);
    let (mut listen, mut admin) = (None::<SocketAddr>, None::<SocketAddr>);
    tokio::time::timeout(Duration::from_secs(20), async {
        while listen.is_none() || admin.is_none() {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("wsgate exited before announcing");
            if let Some(a) = line.strip_prefix("wsgate listening on ws://") {
                listen = Some(a.trim().parse().unwrap());
            } else if let Some(a) = line.strip_prefix("wsgate admin on http://") {
                admin = Some(a.trim().parse().unwrap());
            }
        }
    })
    .await
    .expect("wsgate did not announce its addresses");
    let (listen, admin) = (listen.unwrap(), admin.unwrap());
    let url = |id: &str| format!("ws://{listen}/?client_id={id}");

    let mut existing = connect(&url("keep")).await;
    let name = greeting(&mut existing).await;
    assert_eq!(name, "b1");
    echo_ok(&mut existing, "b1", "before").await;

    // An unknown key: refused, counted, the old config keeps serving.
    std::fs::write(
        &path,
        binary_config(&[("b1", b1.addr), ("b2", b2.addr)], "bogus_key = true"),
    )
    .unwrap();
    sighup(pid);
    eventually("reload error counted", || async {
        metric(admin, "wsgate_config_reloads_total{result=\"error\"}").await == 1.0
    })
    .await;
    assert_eq!(
        metric(admin, "wsgate_config_reloads_total{result=\"ok\"}").await,
        0.0
    );
    echo_ok(&mut existing, "b1", "after bad reload").await;
    let mut fresh = connect(&url("fresh")).await;
    assert_eq!(greeting(&mut fresh).await, "b1");
    echo_ok(&mut fresh, "b1", "new after bad reload").await;
    let v = backends(admin).await;
    assert_eq!(
        v["backends"].as_array().unwrap().len(),
        1,
        "bad config applied: {v}"
    );

    // A valid change applies.
    std::fs::write(
        &path,
        binary_config(&[("b1", b1.addr), ("b2", b2.addr)], ""),
    )
    .unwrap();
    sighup(pid);
    eventually("reload ok counted", || async {
        metric(admin, "wsgate_config_reloads_total{result=\"ok\"}").await == 1.0
    })
    .await;
    assert_eq!(
        metric(admin, "wsgate_config_reloads_total{result=\"error\"}").await,
        1.0
    );
    let v = backends(admin).await;
    assert_eq!(
        v["backends"].as_array().unwrap().len(),
        2,
        "valid config not applied: {v}"
    );
    echo_ok(&mut existing, "b1", "after good reload").await;
    let mut on_b2 = 0;
    for i in 0..20 {
        let mut c = connect(&url(&format!("hup-{i}"))).await;
        let b = greeting(&mut c).await;
        on_b2 += usize::from(b == "b2");
        echo_ok(&mut c, &b, "x").await;
    }
    assert!(on_b2 > 0, "no new client reached the added b2");
}
