//! A named test backend shared by the routing, health, reload and drain
//! suites: greets with its name, echoes `NAME:TEXT`, answers plain
//! `GET /healthz`, can refuse upgrades, and can be killed and revived on the
//! same port; plus the config and `/backends` helpers those suites share.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

use super::*;

// ---- test backends: named, killable, revivable, with plain-HTTP /healthz ----

/// A WebSocket backend that says its name first (when `greet`), echoes every
/// text message as `NAME:TEXT`, answers `GET /healthz` with 200 (while
/// `http_ok`), refuses upgrades with 404 (while `!ws_ok`), and can be killed
/// (listener and every connection dropped) and revived on the same port.
pub struct TestBackend {
    pub addr: SocketAddr,
    pub st: Arc<BackendState>,
    pub tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

pub struct BackendState {
    pub name: String,
    pub greet: bool,
    pub ws_ok: AtomicBool,
    /// While set, an upgrade request gets its connection dropped with no
    /// answer at all (a crashed WebSocket handler): a failed check, where
    /// `!ws_ok`'s 404 is a misconfigured one.
    pub ws_hangup: AtomicBool,
    pub http_ok: AtomicBool,
    /// Client IDs (the X-Client-Id header) of the upgrades it accepted.
    pub client_ids: Mutex<Vec<String>>,
}

#[allow(dead_code)] // each test file uses a different subset
impl TestBackend {
    pub async fn start(name: &str) -> TestBackend {
        TestBackend::start_with(name, true).await
    }

    pub async fn start_with(name: &str, greet: bool) -> TestBackend {
        let st = Arc::new(BackendState {
            name: name.to_string(),
            greet,
            ws_ok: AtomicBool::new(true),
            ws_hangup: AtomicBool::new(false),
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

    pub fn serve(&self, l: TcpListener) {
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
    pub async fn kill(&self) {
        let hs: Vec<_> = std::mem::take(&mut *self.tasks.lock().unwrap());
        for h in &hs {
            h.abort();
        }
        for h in hs {
            let _ = h.await;
        }
    }

    /// Listens again on the same port.
    pub fn revive(&self) {
        self.serve(listen(self.addr));
    }

    pub fn seen_ids(&self) -> Vec<String> {
        self.st.client_ids.lock().unwrap().clone()
    }
}

pub fn listen(addr: SocketAddr) -> TcpListener {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.set_reuseaddr(true).unwrap();
    s.bind(addr).unwrap();
    s.listen(1024).unwrap()
}

#[allow(clippy::result_large_err)] // tungstenite's ErrorResponse is what it is
pub async fn backend_conn(mut tcp: TcpStream, st: Arc<BackendState>) {
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
    if upgrade && st.ws_hangup.load(Ordering::SeqCst) {
        return;
    }
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
pub fn cfg(backends: &[(&str, SocketAddr, u32)], server: &str, extra: &str) -> String {
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
pub async fn open(g: &TestGateway, id: &str) -> (Client, String) {
    let mut c = connect(&g.url(&format!("/?client_id={id}"))).await;
    let name = greeting(&mut c).await;
    (c, name)
}

pub async fn greeting(c: &mut Client) -> String {
    match next_msg(c).await {
        Some(Message::Text(t)) => t.as_str().to_string(),
        other => panic!("expected a greeting, got {other:?}"),
    }
}

/// Sends a text and expects the backend's `NAME:TEXT` echo.
pub async fn echo_ok(c: &mut Client, name: &str, text: &str) {
    c.send(Message::text(text))
        .await
        .unwrap_or_else(|e| panic!("send to {name}: {e}"));
    match next_msg(c).await {
        Some(Message::Text(t)) => assert_eq!(t.as_str(), format!("{name}:{text}")),
        other => panic!("expected an echo from {name}, got {other:?}"),
    }
}

/// GET /backends, parsed.
pub async fn backends(admin: SocketAddr) -> serde_json::Value {
    let (status, _, body) = http(admin, "GET", "/backends").await;
    assert_eq!(status, 200, "/backends: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/backends JSON: {e}: {body}"))
}

/// One backend's entry in `/backends`.
pub async fn backend_entry(admin: SocketAddr, name: &str) -> serde_json::Value {
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
pub async fn close_code(c: &mut Client) -> (Option<u16>, Instant) {
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
