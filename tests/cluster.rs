//! Many gateways, one system: three real `wsgate` processes (the binary)
//! and one real `redis-server` (no persistence, a loopback port) in front
//! of an in-process echo backend, driven by real WebSocket clients and the
//! admin HTTP API.
//!
//! `redis-server` is Debian's package: installed here with apt-get when
//! missing (./test.sh installs it too). If it still cannot be found the
//! tests skip, unless `WSGATE_REQUIRE_REDIS` is set (./test.sh sets it),
//! which makes that a failure.
//!
//! Every process is owned by a guard that kills and reaps it on drop; every
//! wait is bounded.
#![allow(clippy::result_large_err)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::tungstenite::Message;

use common::{Client, WAIT, backend_with, next_msg};

const TOKEN: &str = "cluster-test-token-0123456789";
/// Short, so a killed gateway's presence goes within the test's patience.
const PRESENCE_TTL: &str = "2s";
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Redis killed and back, presence expiry: a few TTLs on a busy machine.
const SLOW_WAIT: Duration = Duration::from_secs(20);

// ---- processes -----------------------------------------------------------

struct Process {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Process {
    fn spawn(mut cmd: Command) -> (Process, tokio::sync::mpsc::UnboundedReceiver<String>) {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut s = sink.lock().unwrap();
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
                if s.len() > 256 * 1024 {
                    let cut = s.len() - 128 * 1024;
                    let cut = (cut..s.len()).find(|&i| s.is_char_boundary(i)).unwrap();
                    s.drain(..cut);
                }
            }
        });
        (Process { child, stderr }, rx)
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGKILL and reap.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn find_on_path(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(bin))
            .find(|f| f.is_file())
    })
}

/// `redis-server`, installing Debian's package if missing (bounded by
/// apt's own timeouts). `None` only if it cannot be had and the test may
/// skip.
fn redis_server() -> Option<PathBuf> {
    static INSTALL: Mutex<()> = Mutex::new(());
    let _one_at_a_time = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = find_on_path("redis-server") {
        return Some(p);
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !apt(&["install", "-y", "-q", "redis-server"]) {
        apt(&["update", "-q"]);
        apt(&["install", "-y", "-q", "redis-server"]);
    }
    if let Some(p) = find_on_path("redis-server") {
        return Some(p);
    }
    if std::env::var_os("WSGATE_REQUIRE_REDIS").is_some() {
        panic!(
            "WSGATE_REQUIRE_REDIS is set but redis-server is not on PATH and `apt-get install redis-server` failed"
        );
    }
    eprintln!(
        "SKIPPED: no redis-server (apt-get install redis-server; set WSGATE_REQUIRE_REDIS=1 to make this a failure)"
    );
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Redis {
    bin: PathBuf,
    port: u16,
    process: Option<Process>,
}

impl Redis {
    async fn start() -> Option<Redis> {
        let bin = redis_server()?;
        let mut r = Redis {
            bin,
            port: free_port(),
            process: None,
        };
        r.restart().await;
        Some(r)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port, with no data (no persistence).
    async fn restart(&mut self) {
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ]);
        let (p, mut out) = Process::spawn(cmd);
        tokio::spawn(async move { while out.recv().await.is_some() {} });
        self.process = Some(p);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if self.command("PING").await.as_deref() == Some("+PONG") {
                return;
            }
            sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "redis-server did not answer PING on port {}; stderr: {}",
            self.port,
            self.process.as_ref().unwrap().stderr()
        );
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// One inline command; the first line of the reply.
    async fn command(&self, cmd: &str) -> Option<String> {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let mut tcp = timeout(Duration::from_secs(2), TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
        tcp.write_all(format!("{cmd}\r\n").as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        timeout(Duration::from_secs(2), async {
            while !buf.windows(2).any(|w| w == b"\r\n") {
                let n = tcp.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Some(())
        })
        .await
        .ok()??;
        let text = String::from_utf8_lossy(&buf).to_string();
        text.split("\r\n").next().map(str::to_string)
    }
}

struct Gw {
    name: String,
    ws: SocketAddr,
    admin: SocketAddr,
    process: Process,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "wsgate-cluster-{tag}-{}-{}",
            std::process::id(),
            fastrand_suffix()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fastrand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// One gateway process in the cluster `prefix`, named `name`.
async fn gateway(name: &str, redis: &Redis, backend: SocketAddr, cluster_extra: &str) -> Gw {
    let dir = TempDir::new(name);
    let config = dir.0.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"
token = "{TOKEN}"

[health]
http_path = ""
ws_path = ""

[[backends]]
name = "b1"
url = "ws://{backend}"

[cluster]
redis_url = "{url}"
node = "{name}"
key_prefix = "test:"
presence_ttl = "{PRESENCE_TTL}"
command_timeout = "1s"
{cluster_extra}
"#,
            url = redis.url()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsgate"));
    cmd.arg("run").arg("-c").arg(&config);
    cmd.env("WSGATE_WORKERS", "2");
    let (process, mut lines) = Process::spawn(cmd);
    let (mut ws, mut admin) = (None, None);
    let deadline = Instant::now() + START_TIMEOUT;
    while ws.is_none() || admin.is_none() {
        let line = match timeout(
            deadline.saturating_duration_since(Instant::now()),
            lines.recv(),
        )
        .await
        {
            Ok(Some(l)) => l,
            _ => panic!(
                "gateway {name} did not start; stderr:\n{}",
                process.stderr()
            ),
        };
        if let Some(a) = line.trim().strip_prefix("wsgate listening on ws://") {
            ws = a.parse().ok();
        } else if let Some(a) = line.trim().strip_prefix("wsgate admin on http://") {
            admin = a.parse().ok();
        }
    }
    tokio::spawn(async move { while lines.recv().await.is_some() {} });
    let gw = Gw {
        name: name.to_string(),
        ws: ws.unwrap(),
        admin: admin.unwrap(),
        process,
        _dir: dir,
    };
    let admin = gw.admin;
    eventually(
        &format!("{name} connected to Redis"),
        SLOW_WAIT,
        || async move { common::metric(admin, "wsgate_cluster_up").await == 1.0 },
    )
    .await;
    gw
}

async fn eventually<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond().await {
            return;
        }
        sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {limit:?} waiting for: {what}");
}

/// An admin request with the token (or without, `token = false`):
/// (status, JSON body or Null).
async fn admin(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    token: bool,
) -> (u16, serde_json::Value) {
    let mut tcp = timeout(WAIT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let auth = if token {
        format!("Authorization: Bearer {TOKEN}\r\n")
    } else {
        String::new()
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    timeout(WAIT, tcp.read_to_end(&mut out))
        .await
        .expect("admin answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

async fn post(addr: SocketAddr, path: &str, body: &str) -> (u16, serde_json::Value) {
    admin(addr, "POST", path, body, true).await
}

async fn lookup(addr: SocketAddr, id: &str) -> (u16, serde_json::Value) {
    admin(addr, "GET", &format!("/clients/{id}"), "", false).await
}

/// Waits until `GET /clients/{id}` (asked of `via`) shows `connections`.
async fn wait_connections(via: &Gw, id: &str, connections: u64) -> serde_json::Value {
    let deadline = Instant::now() + SLOW_WAIT;
    loop {
        let (status, body) = lookup(via.admin, id).await;
        let n = if status == 404 {
            0
        } else {
            body["connections"].as_u64().unwrap_or(u64::MAX)
        };
        if n == connections {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{id}: expected {connections} connections via {}, last answer {status} {body}",
            via.name
        );
        sleep(Duration::from_millis(50)).await;
    }
}

/// A client through `gw` with client ID `id`, and the 101's headers.
async fn client(gw: &Gw, id: &str, query: &str) -> (Client, Vec<String>) {
    let url = format!("ws://{}/?client_id={id}{query}", gw.ws);
    let (ws, resp) = timeout(WAIT, tokio_tungstenite::connect_async(url.as_str()))
        .await
        .expect("connect in time")
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    let headers = resp
        .headers()
        .keys()
        .map(|k| k.as_str().to_ascii_lowercase())
        .collect();
    (ws, headers)
}

async fn echo(ws: &mut Client, text: &str) {
    timeout(WAIT, ws.send(Message::text(text)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        next_msg(ws).await,
        Some(Message::text(text)),
        "echo of {text}"
    );
}

/// A backend that echoes and, when the upgrade's query has `topics=a|b`,
/// answers its 101 with `Wsgate-Topics: a, b`.
async fn topic_backend() -> (SocketAddr, common::SeenRef) {
    backend_with(|req, mut resp| {
        let q = req.uri().query().unwrap_or("");
        if let Some(t) = q.split('&').find_map(|kv| kv.strip_prefix("topics=")) {
            let v = t.replace('|', ", ");
            resp.headers_mut()
                .insert("Wsgate-Topics", v.parse().unwrap());
        }
        Ok(resp)
    })
    .await
}

async fn three(redis: &Redis, backend: SocketAddr, extra: &str) -> [Gw; 3] {
    [
        gateway("gw-a", redis, backend, extra).await,
        gateway("gw-b", redis, backend, extra).await,
        gateway("gw-c", redis, backend, extra).await,
    ]
}

// ---- tests ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_and_send_by_id_reach_a_client_on_another_gateway() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let (backend, seen) = topic_backend().await;
    let [a, b, c] = three(&redis, backend, "").await;

    let (mut alice, _) = client(&b, "alice", "").await;
    echo(&mut alice, "before").await;
    let found = wait_connections(&a, "alice", 1).await;
    assert_eq!(found["gateways"][0]["gateway"], "gw-b", "{found}");
    assert_eq!(found["gateways"][0]["backend"], "b1", "{found}");
    assert!(
        found["gateways"][0]["since_ms"].as_u64().unwrap() > 0,
        "{found}"
    );

    // POSTs need the admin token.
    let (status, _) = admin(
        a.admin,
        "POST",
        "/clients/alice/send",
        r#"{"text":"x"}"#,
        false,
    )
    .await;
    assert_eq!(status, 401);
    // Bad bodies are 400, whatever Redis says.
    let (status, _) = post(
        a.admin,
        "/clients/alice/send",
        r#"{"text":"x","binary":"eA=="}"#,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = post(a.admin, "/clients/alice/disconnect", r#"{"code":1006}"#).await;
    assert_eq!(status, 400);
    let (status, _) = post(a.admin, "/clients/nobody/send", r#"{"text":"x"}"#).await;
    assert_eq!(status, 404);

    // Send by ID, asked of gateway A, reaches alice on B as if her backend
    // had sent it; the relay goes on as before.
    let (status, body) = post(a.admin, "/clients/alice/send", r#"{"text":"pushed"}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["gateways"], 1, "{body}");
    assert_eq!(next_msg(&mut alice).await, Some(Message::text("pushed")));
    let (status, _) = post(c.admin, "/clients/alice/send", r#"{"binary":"AAEC/w=="}"#).await;
    assert_eq!(status, 200);
    assert_eq!(
        next_msg(&mut alice).await,
        Some(Message::binary(vec![0u8, 1, 2, 255]))
    );
    echo(&mut alice, "after").await;
    let pushed = seen
        .lock()
        .unwrap()
        .messages
        .iter()
        .any(|m| m == &Message::text("pushed"));
    assert!(!pushed, "a pushed message must not reach the backend");

    // Disconnect by ID, asked of gateway C: alice gets the code and reason,
    // her backend link 1001.
    let (status, body) = post(
        c.admin,
        "/clients/alice/disconnect",
        r#"{"code":4001,"reason":"token revoked"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    match next_msg(&mut alice).await {
        Some(Message::Close(Some(f))) => {
            assert_eq!(u16::from(f.code), 4001);
            assert_eq!(f.reason.as_str(), "token revoked");
        }
        other => panic!("expected close 4001, got {other:?}"),
    }
    eventually("the backend got 1001", WAIT, || {
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
    wait_connections(&a, "alice", 0).await;
    assert!(
        common::metric(
            c.admin,
            "wsgate_cluster_commands_total{command=\"disconnect\",result=\"ok\"}"
        )
        .await
            >= 1.0
    );
    assert!(
        common::metric(
            b.admin,
            "wsgate_cluster_deliveries_total{result=\"delivered\"}"
        )
        .await
            >= 3.0
    );
    assert!(common::metric(b.admin, "wsgate_cluster_delivery_seconds_count").await >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_publish_reaches_subscribers_on_all_three_in_order() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let (backend, _) = topic_backend().await;
    let gws = three(&redis, backend, "").await;

    // Two subscribers per gateway by the backend's 101 header, one more
    // through the admin API, and one that is not subscribed.
    let mut subs = Vec::new();
    for (i, gw) in gws.iter().enumerate() {
        for j in 0..2 {
            let (ws, headers) = client(gw, &format!("sub-{i}-{j}"), "&topics=room:1|room:2").await;
            assert!(
                !headers.iter().any(|h| h == "wsgate-topics"),
                "Wsgate-Topics must not reach the client: {headers:?}"
            );
            subs.push(ws);
        }
    }
    let (mut late, _) = client(&gws[2], "late", "").await;
    let (mut other, _) = client(&gws[1], "other", "&topics=room:9").await;
    for i in 0..3 {
        for j in 0..2 {
            wait_connections(&gws[0], &format!("sub-{i}-{j}"), 1).await;
        }
    }
    wait_connections(&gws[0], "late", 1).await;
    let (status, body) = post(
        gws[0].admin,
        "/clients/late/topics",
        r#"{"subscribe":["room:1"]}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The subscription travels by pub/sub too (another channel than the
    // topic's): probe until it is in place.
    let mut subscribed = false;
    for _ in 0..40 {
        let (status, _) = post(
            gws[1].admin,
            "/topics/room:1/publish",
            r#"{"text":"probe"}"#,
        )
        .await;
        assert_eq!(status, 200);
        if let Ok(m) = timeout(Duration::from_millis(500), next_msg(&mut late)).await {
            assert_eq!(m, Some(Message::text("probe")));
            subscribed = true;
            break;
        }
    }
    assert!(
        subscribed,
        "late never got a probe after subscribing through the admin API"
    );
    subs.push(late);

    const N: usize = 50;
    for n in 0..N {
        let (status, body) = post(
            gws[n % 3].admin,
            "/topics/room%3A1/publish",
            &format!(r#"{{"text":"m{n}"}}"#),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["gateways"], 3, "{body}");
    }
    for (k, ws) in subs.iter_mut().enumerate() {
        let mut got = Vec::new();
        while got.len() < N {
            match next_msg(ws).await {
                Some(Message::Text(t)) if t.as_str() == "probe" => continue,
                Some(Message::Text(t)) => got.push(t.to_string()),
                other => panic!("subscriber {k}: unexpected {other:?}"),
            }
        }
        let want: Vec<String> = (0..N).map(|n| format!("m{n}")).collect();
        assert_eq!(got, want, "subscriber {k} in publish order");
    }
    // Not subscribed: nothing arrives; its echo is the next message.
    echo(&mut other, "quiet").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_cap_holds_across_gateways() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let (backend, _) = topic_backend().await;
    let gws = three(&redis, backend, "max_connections_per_client = 2").await;

    let (mut first, _) = client(&gws[0], "carol", "").await;
    wait_connections(&gws[2], "carol", 1).await;
    let (mut second, _) = client(&gws[1], "carol", "").await;
    wait_connections(&gws[2], "carol", 2).await;
    let (mut third, _) = client(&gws[2], "carol", "").await;
    // The oldest (on gateway A) is closed with 4009.
    match next_msg(&mut first).await {
        Some(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 4009, "{f:?}"),
        other => panic!("expected close 4009, got {other:?}"),
    }
    wait_connections(&gws[0], "carol", 2).await;
    echo(&mut second, "still here").await;
    echo(&mut third, "still here").await;
    // Another client ID is not affected.
    let (mut dan, _) = client(&gws[0], "dan", "").await;
    echo(&mut dan, "hi").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_traffic_answers_503_and_recovers() {
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    let (backend, _) = topic_backend().await;
    let gws = three(&redis, backend, "").await;
    let (mut erin, _) = client(&gws[0], "erin", "&topics=news").await;
    wait_connections(&gws[1], "erin", 1).await;

    redis.kill();
    for gw in &gws {
        let admin = gw.admin;
        eventually("cluster_up 0", SLOW_WAIT, || async move {
            common::metric(admin, "wsgate_cluster_up").await == 0.0
        })
        .await;
    }
    // WebSocket traffic is untouched, old and new connections alike.
    for n in 0..20 {
        echo(&mut erin, &format!("during {n}")).await;
    }
    let (mut frank, _) = client(&gws[1], "frank", "&topics=news").await;
    echo(&mut frank, "new during outage").await;
    // Cluster commands answer 503 with a reason.
    let (status, body) = lookup(gws[2].admin, "erin").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("cluster unavailable"),
        "{body}"
    );
    let (status, _) = post(gws[2].admin, "/topics/news/publish", r#"{"text":"x"}"#).await;
    assert_eq!(status, 503);
    let (status, _) = post(gws[2].admin, "/clients/erin/send", r#"{"text":"x"}"#).await;
    assert_eq!(status, 503);
    assert!(
        common::metric(
            gws[2].admin,
            "wsgate_cluster_commands_total{command=\"publish\",result=\"unavailable\"}"
        )
        .await
            >= 1.0
    );

    // Redis back, empty: presence is published again (frank's, made during
    // the outage, too) and commands work.
    redis.restart().await;
    for gw in &gws {
        let deadline = Instant::now() + SLOW_WAIT;
        while common::metric(gw.admin, "wsgate_cluster_up").await != 1.0 {
            assert!(
                Instant::now() < deadline,
                "{} did not reconnect to Redis; stderr:\n{}",
                gw.name,
                gw.process.stderr()
            );
            sleep(Duration::from_millis(50)).await;
        }
    }
    wait_connections(&gws[2], "erin", 1).await;
    wait_connections(&gws[2], "frank", 1).await;
    let (status, body) = post(gws[2].admin, "/topics/news/publish", r#"{"text":"back"}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(next_msg(&mut erin).await, Some(Message::text("back")));
    assert_eq!(next_msg(&mut frank).await, Some(Message::text("back")));
    echo(&mut erin, "after").await;
    assert!(
        common::metric(
            gws[0].admin,
            "wsgate_cluster_redis_connects_total{result=\"ok\"}"
        )
        .await
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_gateways_presence_expires() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let (backend, _) = topic_backend().await;
    let [a, b, mut c] = three(&redis, backend, "").await;
    let (_gina_c, _) = client(&c, "gina", "").await;
    let (_gina_a, _) = client(&a, "gina", "").await;
    let found = wait_connections(&b, "gina", 2).await;
    assert_eq!(found["gateways"].as_array().unwrap().len(), 2, "{found}");
    assert_eq!(
        redis.command("EXISTS test:node:gw-c").await.as_deref(),
        Some(":1")
    );

    c.process.kill();
    // Only A's entry remains, and C's key expires (presence_ttl = 2s).
    let found = wait_connections(&b, "gina", 1).await;
    assert_eq!(found["gateways"][0]["gateway"], "gw-a", "{found}");
    eventually("gw-c's presence key expired", SLOW_WAIT, || {
        let r = &redis;
        async move { r.command("EXISTS test:node:gw-c").await.as_deref() == Some(":0") }
    })
    .await;
    assert_eq!(
        redis.command("EXISTS test:node:gw-a").await.as_deref(),
        Some(":1")
    );
}

/// A push waits for the message the backend is in the middle of: the
/// client sees the backend's fragmented message whole (its second frame
/// split mid-payload too), then the pushed one. Injecting at once would
/// put a data frame inside another message, which the client would reject
/// as a protocol error. In-process gateway (the test harness), real Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_waits_for_the_message_in_progress() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut raw = common::backend_accept(tcp).await.unwrap();
        raw.send_frame(false, 0x1, b"part1-", None).await;
        // The start of the final frame: header and half its payload.
        let last = common::encode_frame(true, 0, 0x0, b"part2-end", None);
        raw.tcp.write_all(&last[..6]).await.unwrap();
        let _ = started_tx.send(());
        let _ = release_rx.await;
        raw.tcp.write_all(&last[6..]).await.unwrap();
        // Keep the link open until the client goes.
        while raw.read_frame().await.is_some() {}
    });
    let g = common::gateway(&format!(
        "{}[cluster]\nredis_url = \"{}\"\nnode = \"solo\"\nkey_prefix = \"frag:\"\n",
        common::config_for(&[backend], ""),
        redis.url()
    ))
    .await;
    let admin_addr = g.admin;
    eventually("connected to Redis", SLOW_WAIT, || async move {
        common::metric(admin_addr, "wsgate_cluster_up").await == 1.0
    })
    .await;
    let mut ws = common::connect(&g.url("/?client_id=hank")).await;
    timeout(WAIT, started_rx).await.unwrap().unwrap();
    let deadline = Instant::now() + SLOW_WAIT;
    loop {
        let (status, body) = post(g.admin, "/clients/hank/send", r#"{"text":"pushed"}"#).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 404, "{body}");
        assert!(Instant::now() < deadline, "hank's presence never appeared");
        sleep(Duration::from_millis(50)).await;
    }
    eventually(
        "the push reached the connection's queue",
        WAIT,
        || async move {
            common::metric(
                admin_addr,
                "wsgate_cluster_deliveries_total{result=\"delivered\"}",
            )
            .await
                == 1.0
        },
    )
    .await;
    // Give the relay every chance to (wrongly) write it now.
    sleep(Duration::from_millis(200)).await;
    release_tx.send(()).unwrap();
    assert_eq!(
        next_msg(&mut ws).await,
        Some(Message::text("part1-part2-end"))
    );
    assert_eq!(next_msg(&mut ws).await, Some(Message::text("pushed")));
}

/// `rediss://` with an ACL user and password, and `redis_ca` for a private
/// CA: the gateway connects and serves commands; with a wrong password it
/// stays down (503) and keeps retrying, and traffic still flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_acl_user() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let Some(bin) = redis_server() else {
        return;
    };
    let dir = TempDir::new("tls");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let path = |f: &str| dir.0.join(f).display().to_string();
    std::fs::write(path("cert.pem"), cert.pem()).unwrap();
    std::fs::write(path("key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(path("ca.pem"), ca.pem()).unwrap();
    let port = free_port();
    let mut cmd = Command::new(bin);
    cmd.args([
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
    ]);
    cmd.args([
        "--tls-cert-file",
        &path("cert.pem"),
        "--tls-key-file",
        &path("key.pem"),
    ]);
    cmd.args([
        "--tls-ca-cert-file",
        &path("ca.pem"),
        "--tls-auth-clients",
        "no",
    ]);
    cmd.args(["--save", "", "--appendonly", "no"]);
    cmd.args([
        "--user", "default", "off", "--user", "alice", "on", ">s3cret", "~*", "&*", "+@all",
    ]);
    let (redis, mut out) = Process::spawn(cmd);
    tokio::spawn(async move { while out.recv().await.is_some() {} });

    let (backend, _) = topic_backend().await;
    let config = |password: &str| {
        format!(
            "{}[cluster]\nredis_url = \"rediss://alice:{password}@127.0.0.1:{port}\"\nredis_ca = \"{}\"\nnode = \"tls-{password}\"\nkey_prefix = \"tls:\"\n",
            common::config_for(&[backend], ""),
            path("ca.pem")
        )
    };
    let good = common::gateway(&config("s3cret")).await;
    let bad = common::gateway(&config("wrong")).await;
    let deadline = Instant::now() + SLOW_WAIT;
    while common::metric(good.admin, "wsgate_cluster_up").await != 1.0 {
        assert!(
            Instant::now() < deadline,
            "no TLS connection to Redis; redis stderr: {}",
            redis.stderr()
        );
        sleep(Duration::from_millis(50)).await;
    }
    let mut ws = common::connect(&good.url("/?client_id=ivy")).await;
    let deadline = Instant::now() + SLOW_WAIT;
    while post(good.admin, "/clients/ivy/send", r#"{"text":"over tls"}"#)
        .await
        .0
        != 200
    {
        assert!(Instant::now() < deadline, "ivy's presence never appeared");
        sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(next_msg(&mut ws).await, Some(Message::text("over tls")));

    let bad_admin = bad.admin;
    eventually(
        "failed attempts with the wrong password",
        SLOW_WAIT,
        || async move {
            common::metric(
                bad_admin,
                "wsgate_cluster_redis_connects_total{result=\"error\"}",
            )
            .await
                >= 2.0
        },
    )
    .await;
    assert_eq!(common::metric(bad.admin, "wsgate_cluster_up").await, 0.0);
    let (status, body) = lookup(bad.admin, "ivy").await;
    assert_eq!(status, 503, "{body}");
    let mut other = common::connect(&bad.url("/?client_id=jo")).await;
    echo(&mut other, "fine without Redis").await;
}

/// `wsgate check` reads `redis_ca` as the start does (no Redis needed).
#[test]
fn check_reads_redis_ca() {
    let dir = TempDir::new("check");
    let missing = dir.0.join("missing.pem").display().to_string();
    let empty = dir.0.join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    for (ca, want) in [
        (missing.as_str(), "cannot read"),
        (&*empty.display().to_string(), "no PEM certificate"),
    ] {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[backends]]\nname = \"a\"\nurl = \"ws://127.0.0.1:1\"\n[cluster]\nredis_url = \"rediss://127.0.0.1:6380\"\nredis_ca = \"{ca}\"\n"
        );
        let config = wsgate::Config::parse(&text).unwrap();
        let e = wsgate::gateway::check::check_files(config, &text)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cluster.redis_ca") && e.contains(want) && e.contains("line 8"),
            "{e}"
        );
    }
}

/// Connections made while Redis was down are counted once it is back: the
/// cap closes the oldest then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_is_enforced_after_an_outage() {
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    let (backend, _) = topic_backend().await;
    let a = gateway("cap-a", &redis, backend, "max_connections_per_client = 1").await;
    let b = gateway("cap-b", &redis, backend, "max_connections_per_client = 1").await;
    redis.kill();
    for gw in [&a, &b] {
        let admin = gw.admin;
        eventually("cluster_up 0", SLOW_WAIT, || async move {
            common::metric(admin, "wsgate_cluster_up").await == 0.0
        })
        .await;
    }
    let (mut older, _) = client(&a, "kim", "").await;
    echo(&mut older, "one").await;
    // Milliseconds apart, so "oldest" is well defined.
    sleep(Duration::from_millis(20)).await;
    let (mut newer, _) = client(&b, "kim", "").await;
    echo(&mut newer, "two").await;
    // Two more failed attempts each: the registrations were seen (and let
    // go) while Redis was down, so only the re-check on reconnect counts them.
    for gw in [&a, &b] {
        let series = "wsgate_cluster_redis_connects_total{result=\"error\"}";
        let before = common::metric(gw.admin, series).await;
        let admin = gw.admin;
        eventually("two more failed attempts", SLOW_WAIT, || async move {
            common::metric(admin, series).await >= before + 2.0
        })
        .await;
    }
    redis.restart().await;
    match next_msg(&mut older).await {
        Some(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 4009, "{f:?}"),
        other => panic!("expected close 4009 after Redis came back, got {other:?}"),
    }
    wait_connections(&a, "kim", 1).await;
    echo(&mut newer, "still here").await;
}

/// A disconnect does not wait behind a push that waits for the backend's
/// unfinished message: the client gets its close (a control frame may go
/// between the fragments of a message) even though the message never ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_does_not_wait_for_a_stalled_message() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut raw = common::backend_accept(tcp).await.unwrap();
        // The first fragment of a message that is never finished.
        raw.send_frame(false, 0x1, b"never-ending-", None).await;
        while raw.read_frame().await.is_some() {}
    });
    let g = common::gateway(&format!(
        "{}[cluster]\nredis_url = \"{}\"\nnode = \"stall\"\nkey_prefix = \"stall:\"\n",
        common::config_for(&[backend], ""),
        redis.url()
    ))
    .await;
    let mut raw = common::raw_upgrade(g.addr, "/?client_id=lou", "").await;
    assert_eq!(
        raw.read_frame().await,
        Some((false, 0x1, b"never-ending-".to_vec()))
    );
    let deadline = Instant::now() + SLOW_WAIT;
    while post(g.admin, "/clients/lou/send", r#"{"text":"held"}"#)
        .await
        .0
        != 200
    {
        assert!(Instant::now() < deadline, "lou's presence never appeared");
        sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = post(
        g.admin,
        "/clients/lou/disconnect",
        r#"{"code":4001,"reason":"token revoked"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The held push is never sent; the close is the next frame.
    let (_, opcode, payload) = raw.read_frame().await.expect("a close frame");
    assert_eq!(opcode, 0x8, "expected the close, got {payload:?}");
    assert_eq!(&payload[..2], &4001u16.to_be_bytes());
    assert_eq!(&payload[2..], b"token revoked");
}
