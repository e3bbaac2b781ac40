//! Test fixtures: killable echo backends and a real wsgate gateway process.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpSocket};
use tokio::process::{Child, Command};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use wsgate_client::{Client, ClientBuilder, State};

/// Every wait in the tests is bounded by this unless said otherwise.
pub const WAIT: Duration = Duration::from_secs(10);

/// What a backend saw.
#[derive(Default)]
pub struct BackendLog {
    /// Upgrades accepted or refused.
    pub handshakes: AtomicUsize,
    /// The `token` query parameter of every upgrade ("" if none).
    pub tokens: Mutex<Vec<String>>,
    /// Every text message received.
    pub received: Mutex<Vec<String>>,
    /// Accept upgrades, then never read or write.
    pub silent: AtomicBool,
}

/// An echo backend that can be killed and revived on the same port.
///
/// Text `close:CODE:REASON` makes it close with that code. Tokens in the `token`
/// query parameter: `bad*` = HTTP 401; `expired*` = accept, then close 4001 "token
/// expired"; `denied*` = accept, then close 4001 "authentication failed".
pub struct Backend {
    pub port: u16,
    pub log: Arc<BackendLog>,
    task: Option<JoinHandle<()>>,
}

impl Backend {
    pub async fn start() -> Backend {
        Self::start_on(0).await
    }

    pub async fn start_on(port: u16) -> Backend {
        let log = Arc::new(BackendLog::default());
        let mut b = Backend {
            port,
            log,
            task: None,
        };
        b.revive().await;
        b
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// Stops listening and drops every connection (no close frame).
    pub fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn revive(&mut self) {
        self.kill();
        let listener = bind(self.port).await;
        self.port = listener.local_addr().unwrap().port();
        let log = self.log.clone();
        self.task = Some(tokio::spawn(serve(listener, log)));
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn bind(port: u16) -> TcpListener {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let sock = TcpSocket::new_v4().unwrap();
        sock.set_reuseaddr(true).unwrap();
        match sock.bind(([127, 0, 0, 1], port).into()) {
            Ok(()) => return sock.listen(128).unwrap(),
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("rebinding port {port}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot bind port {port}: {e}"),
        }
    }
}

/// A free port (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn serve(listener: TcpListener, log: Arc<BackendLog>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => {
                let Ok((tcp, _)) = r else { continue };
                conns.spawn(conn(tcp, log.clone()));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

fn query_param(uri: &str, name: &str) -> Option<String> {
    let q = uri.split_once('?')?.1;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| v.to_owned())
    })
}

#[allow(clippy::result_large_err)] // tungstenite's callback signature
async fn conn(tcp: tokio::net::TcpStream, log: Arc<BackendLog>) {
    let mut token = String::new();
    let cb = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        log.handshakes.fetch_add(1, Ordering::SeqCst);
        token = query_param(&req.uri().to_string(), "token").unwrap_or_default();
        log.tokens.lock().unwrap().push(token.clone());
        if token.starts_with("bad") {
            let mut r = ErrorResponse::new(Some("bad token".into()));
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            return Err(r);
        }
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, cb).await else {
        return;
    };
    if log.silent.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    let close = |code: u16, reason: &str| {
        Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: Utf8Bytes::from(reason.to_owned()),
        }))
    };
    if token.starts_with("expired") {
        let _ = ws.send(close(4001, "token expired")).await;
    } else if token.starts_with("denied") {
        let _ = ws.send(close(4001, "authentication failed")).await;
    }
    while let Some(Ok(msg)) = ws.next().await {
        match msg {
            Message::Text(t) => {
                log.received.lock().unwrap().push(t.to_string());
                if let Some(rest) = t.strip_prefix("close:") {
                    let (code, reason) = rest.split_once(':').unwrap_or((rest, ""));
                    let _ = ws.send(close(code.parse().unwrap(), reason)).await;
                } else if ws.send(Message::Text(t)).await.is_err() {
                    return;
                }
            }
            Message::Binary(b) if ws.send(Message::Binary(b.clone())).await.is_err() => return,
            _ => {}
        }
    }
}

/// A real wsgate process.
pub struct Gateway {
    /// `None` in direct mode (`WSGATE_CLIENT_DIRECT=1`, a development aid: the "gateway"
    /// URL is the first backend's, and gateway-only behaviour is absent).
    pub child: Option<Child>,
    pub ws: String,
    pub admin: String,
    dir: PathBuf,
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The gateway binary: `$WSGATE_BIN`, else `<workspace>/target/debug/wsgate`.
pub fn gateway_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WSGATE_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("debug/wsgate")
}

impl Gateway {
    /// Starts wsgate in front of `backends` (name, port). `extra` is appended to the
    /// config (e.g. more `[heartbeat]` keys are not possible twice, so heartbeat is
    /// fixed here).
    pub async fn start(backends: &[(&str, u16)], extra: &str) -> Gateway {
        Self::start_on(0, backends, extra).await
    }

    /// [`Gateway::start`] with the client listener on `port` (0 = any), so a new
    /// process can take over the address of one that was stopped.
    pub async fn start_on(port: u16, backends: &[(&str, u16)], extra: &str) -> Gateway {
        if std::env::var_os("WSGATE_CLIENT_DIRECT").is_some() {
            let a = format!("ws://127.0.0.1:{}", backends[0].1);
            return Gateway {
                child: None,
                ws: a.clone(),
                admin: a,
                dir: std::env::temp_dir(),
            };
        }
        let bin = gateway_bin();
        assert!(
            bin.exists(),
            "wsgate binary not found at {} - build it first with `cargo build -p wsgate` (or set WSGATE_BIN)",
            bin.display()
        );
        let dir = std::env::temp_dir().join(format!(
            "wsgate-client-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cfg = format!(
            r#"[server]
listen = "127.0.0.1:{port}"

[admin]
listen = "127.0.0.1:0"

[health]
http_path = ""
ws_path = ""

[heartbeat]
app_ping = '{{"type":"ping"}}'
app_pong = '{{"type":"pong"}}'
"#
        );
        cfg.push_str(extra);
        for (name, port) in backends {
            cfg.push_str(&format!(
                "\n[[backends]]\nname = \"{name}\"\nurl = \"ws://127.0.0.1:{port}\"\n"
            ));
        }
        let path = dir.join("wsgate.toml");
        std::fs::write(&path, cfg).unwrap();
        let mut cmd = Command::new(&bin);
        cmd.arg("run").arg("-c").arg(&path);
        cmd.stdout(Stdio::piped())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if std::env::var_os("WSGATE_TEST_LOG").is_some() {
            cmd.stderr(Stdio::inherit());
        } else {
            cmd.stderr(Stdio::null());
        }
        let mut child = cmd.spawn().expect("spawn wsgate");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let (mut ws, mut admin) = (None, None);
        timeout(WAIT, async {
            while ws.is_none() || admin.is_none() {
                let Some(line) = lines.next_line().await.unwrap() else {
                    panic!("wsgate exited before printing its addresses");
                };
                if let Some(a) = line.split("wsgate listening on ").nth(1) {
                    ws = Some(a.trim().to_owned());
                }
                if let Some(a) = line.split("wsgate admin on ").nth(1) {
                    admin = Some(a.trim().to_owned());
                }
            }
        })
        .await
        .expect("wsgate did not print its addresses in time");
        // Keep draining stdout so the gateway never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Gateway {
            child: Some(child),
            ws: ws.unwrap(),
            admin: admin.unwrap(),
            dir,
        }
    }

    /// The client URL (`ws://ADDR/path`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.ws.trim_end_matches('/'), path)
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(|c| c.id())
            .expect("gateway running")
    }

    fn signal(&self, sig: &str) {
        let st = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Stops the gateway gracefully (SIGTERM: clients get 1001) and waits, bounded,
    /// for the process to exit.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let child = self.child.as_mut().expect("gateway running");
        timeout(WAIT, child.wait())
            .await
            .expect("wsgate did not exit in time after SIGTERM")
            .unwrap()
    }

    /// Freezes the gateway (SIGSTOP).
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Thaws it (SIGCONT).
    pub fn thaw(&self) {
        self.signal("CONT");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-CONT")
                .arg(pid.to_string())
                .status();
        }
        let _ = child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Fast backoff (50 ms base, 400 ms cap) and no jitter (random fixed at 0.5, so the
/// delay is exactly `min(cap, base * 2^n)`), heartbeat off unless a test turns it on.
pub fn fast(url: &str) -> ClientBuilder {
    Client::builder(url)
        .backoff(Duration::from_millis(50), Duration::from_millis(400))
        .random(Arc::new(|| 0.5))
        .connect_timeout(Duration::from_secs(2))
        .heartbeat(None)
}

/// Waits for a state matching `pred` on a state-change receiver, returning every state
/// seen up to and including it.
pub async fn wait_state(
    rx: &mut tokio::sync::broadcast::Receiver<State>,
    what: &str,
    pred: impl Fn(&State) -> bool,
) -> Vec<State> {
    wait_state_for(rx, what, WAIT, pred).await
}

/// [`wait_state`] with an explicit limit.
pub async fn wait_state_for(
    rx: &mut tokio::sync::broadcast::Receiver<State>,
    what: &str,
    limit: Duration,
    pred: impl Fn(&State) -> bool,
) -> Vec<State> {
    let mut seen = Vec::new();
    let r = timeout(limit, async {
        loop {
            match rx.recv().await {
                Ok(s) => {
                    let done = pred(&s);
                    seen.push(s);
                    if done {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(e) => panic!("state stream ended: {e}"),
            }
        }
    })
    .await;
    assert!(
        r.is_ok(),
        "timed out waiting for {what}; states seen: {seen:?}"
    );
    seen
}

pub async fn wait_open(rx: &mut tokio::sync::broadcast::Receiver<State>) -> Vec<State> {
    wait_state(rx, "Open", |s| matches!(s, State::Open)).await
}

pub async fn wait_closed(rx: &mut tokio::sync::broadcast::Receiver<State>) -> Vec<State> {
    wait_state(rx, "Closed", |s| matches!(s, State::Closed { .. })).await
}

/// Receives the next text message, bounded.
pub async fn next_text(incoming: &mut wsgate_client::Incoming) -> String {
    match timeout(WAIT, incoming.recv()).await {
        Ok(Some(wsgate_client::Message::Text(t))) => t.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Polls `f` until true, bounded.
pub async fn eventually(what: &str, f: impl Fn() -> bool) {
    let r = timeout(WAIT, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(r.is_ok(), "timed out waiting for {what}");
}
