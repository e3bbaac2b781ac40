//! What wsgate exports is what a real Prometheus scrapes, with the shipped config.
//!
//! One test, end to end and with no mocks: an in-process WebSocket echo backend, the
//! real `wsgate` binary in front of it, a known amount of traffic through the
//! gateway, then a real `prometheus` process started from
//! `deploy/prometheus/prometheus.yml` (and the `alerts.yml` beside it) scraping the
//! gateway's admin `/metrics`. The test then asks Prometheus's HTTP API, not the
//! exposition text, for the counts the traffic must have produced, so it checks the
//! metric names and labels of SPEC.md, the exposition format, the shipped scrape
//! config and that every shipped alert rule evaluates cleanly (and stays silent) on
//! a healthy gateway.
//!
//! Skips, passing, only when no `prometheus` binary is on PATH *and*
//! `WSGATE_REQUIRE_PROMETHEUS` is unset; CI installs Debian's `prometheus` package
//! and sets the variable, so there a missing binary is a failure.
//!
//! Every process it starts is owned by a guard that kills and reaps it on drop,
//! including on panic; every wait is bounded.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The traffic the assertions are computed from.
const CONNECTIONS: usize = 3;
const MESSAGES_PER_CONNECTION: usize = 10;
const PAYLOAD: &str = "hello"; // 5 bytes
const EXPECTED_MESSAGES: f64 = (CONNECTIONS * MESSAGES_PER_CONNECTION) as f64;
const EXPECTED_BYTES: f64 = (CONNECTIONS * MESSAGES_PER_CONNECTION * PAYLOAD.len()) as f64;

/// The gateway prints its bound addresses on stdout once listening (SPEC contract
/// for tests); a debug build starts in well under a second, 20 s is for a loaded CI.
const GATEWAY_START_TIMEOUT: Duration = Duration::from_secs(20);
/// One WebSocket step (connect, one echo, the close handshake) on loopback.
const WS_STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// Prometheus opens its TSDB and web listener in about a second.
const PROMETHEUS_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// With 1 s scrape and evaluation intervals the values appear within ~2 s; the
/// margin is for a busy 2-core CI machine.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_EVERY: Duration = Duration::from_millis(250);
/// One HTTP request to Prometheus's API on loopback.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bind attempts for Prometheus's listen port (see `start_prometheus`).
const PROMETHEUS_PORT_ATTEMPTS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_gateway_metrics_with_shipped_config() {
    let Some(prometheus_bin) = find_on_path("prometheus") else {
        if std::env::var_os("WSGATE_REQUIRE_PROMETHEUS").is_some() {
            panic!(
                "WSGATE_REQUIRE_PROMETHEUS is set but no `prometheus` binary is on PATH (apt-get install prometheus)"
            );
        }
        eprintln!(
            "SKIPPED prometheus_scrapes_gateway_metrics_with_shipped_config: no `prometheus` binary on PATH \
             (apt-get install prometheus; set WSGATE_REQUIRE_PROMETHEUS=1 to make this a failure)"
        );
        return;
    };

    let dir = TempDir::new("wsgate-prometheus-scrape");
    let backend_addr = start_echo_backend().await;
    let gateway = start_gateway(&dir, backend_addr).await;

    for i in 0..CONNECTIONS {
        drive_one_connection(gateway.ws_addr, i).await;
    }

    let mut prometheus = start_prometheus(&prometheus_bin, &dir, gateway.admin_addr).await;
    let api = prometheus.api_addr;

    // Each query is a single-element vector once the scrape has happened. Sums make
    // the checks independent of target labels (job, instance, service).
    let expectations: Vec<(&str, f64)> = vec![
        (r#"up{job="wsgate"}"#, 1.0),
        (
            r#"sum(wsgate_messages_total{direction="client_to_backend"})"#,
            EXPECTED_MESSAGES,
        ),
        (
            r#"sum(wsgate_messages_total{direction="backend_to_client"})"#,
            EXPECTED_MESSAGES,
        ),
        // Payload bytes of data messages; control frames (close, ping) are not data.
        (
            r#"sum(wsgate_bytes_total{direction="client_to_backend"})"#,
            EXPECTED_BYTES,
        ),
        (
            r#"sum(wsgate_bytes_total{direction="backend_to_client"})"#,
            EXPECTED_BYTES,
        ),
        (
            r#"sum(wsgate_connections_total{result="upgraded"})"#,
            CONNECTIONS as f64,
        ),
        (
            r#"sum(wsgate_closes_total{initiator="client",code="1000"})"#,
            CONNECTIONS as f64,
        ),
        // Every connection is closed: the per-backend gauge must read 0, not vanish.
        ("sum(wsgate_connections_active)", 0.0),
        // The histograms are exposed and scraped: one observation per connection.
        (
            "sum(wsgate_handshake_duration_seconds_count)",
            CONNECTIONS as f64,
        ),
        (
            "sum(wsgate_connection_duration_seconds_count)",
            CONNECTIONS as f64,
        ),
        // The WebSocket health check passed against the echo backend.
        (r#"wsgate_backend_up{backend="b1",check="ws"}"#, 1.0),
    ];

    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        prometheus.assert_running();
        let mut mismatches = Vec::new();
        for (query, want) in &expectations {
            let got = query_scalar(api, query).await;
            if got != Some(*want) {
                mismatches.push(format!("  {query}: want {want}, got {got:?}"));
            }
        }
        if mismatches.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            panic!(
                "Prometheus did not converge on the expected values within {CONVERGE_TIMEOUT:?}:\n{}",
                mismatches.join("\n")
            );
        }
        sleep(POLL_EVERY).await;
    }

    // The shipped alert rules: all loaded, all evaluated without error against the
    // real series, and none pending or firing for a healthy gateway.
    let evaluated_before = wait_rules_healthy(api, None).await;
    // One more evaluation that certainly saw the data queried above.
    wait_rules_healthy(api, Some(&evaluated_before)).await;
    let alerts = api_get_json(api, "/api/v1/alerts").await;
    let active = alerts["data"]["alerts"].as_array().expect("alerts array");
    assert!(
        active.is_empty(),
        "alerts are active for a healthy gateway: {}",
        serde_json::to_string_pretty(active).unwrap()
    );
}

// ---------------------------------------------------------------------------
// The echo backend

/// A WebSocket server on 127.0.0.1:0 that echoes text and binary messages.
/// tungstenite answers pings (the gateway's health check and heartbeats) and the
/// client's close handshake by itself.
async fn start_echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind echo backend");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                // Reading on past the peer's Close lets tungstenite send its close
                // reply; the stream then ends with None.
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

// ---------------------------------------------------------------------------
// The gateway

struct Gateway {
    ws_addr: SocketAddr,
    admin_addr: SocketAddr,
    _process: Process,
}

async fn start_gateway(dir: &TempDir, backend: SocketAddr) -> Gateway {
    let config = dir.path().join("gateway.toml");
    // Port 0 everywhere: the gateway reports what it bound. The backend serves no
    // plain-HTTP health endpoint, so only the WebSocket check runs.
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[[backends]]
name = "b1"
url = "ws://{backend}"

[health]
http_path = ""
"#
        ),
    )
    .expect("write gateway config");

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsgate"));
    cmd.arg("run").arg("-c").arg(&config);
    let (process, mut stdout_lines) = Process::spawn("wsgate", cmd);

    let mut ws_addr = None;
    let mut admin_addr = None;
    let deadline = Instant::now() + GATEWAY_START_TIMEOUT;
    while ws_addr.is_none() || admin_addr.is_none() {
        let line = match timeout(
            deadline.saturating_duration_since(Instant::now()),
            stdout_lines.recv(),
        )
        .await
        {
            Ok(Some(line)) => line,
            Ok(None) => panic!(
                "wsgate exited before printing its addresses; stderr:\n{}",
                process.stderr()
            ),
            Err(_) => panic!(
                "wsgate printed no `wsgate listening on` / `wsgate admin on` lines within {GATEWAY_START_TIMEOUT:?}; stderr:\n{}",
                process.stderr()
            ),
        };
        if let Some(addr) = line.trim().strip_prefix("wsgate listening on ws://") {
            ws_addr = Some(
                addr.parse()
                    .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}")),
            );
        } else if let Some(addr) = line.trim().strip_prefix("wsgate admin on http://") {
            admin_addr = Some(
                addr.parse()
                    .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}")),
            );
        }
    }
    // Keep draining stdout so the gateway never blocks on a full pipe.
    tokio::spawn(async move { while stdout_lines.recv().await.is_some() {} });

    Gateway {
        ws_addr: ws_addr.unwrap(),
        admin_addr: admin_addr.unwrap(),
        _process: process,
    }
}

/// One client: MESSAGES_PER_CONNECTION text messages, each echoed back before the
/// next is sent, then a close handshake with 1000 started by the client.
async fn drive_one_connection(gateway: SocketAddr, index: usize) {
    let url = format!("ws://{gateway}/?client_id=scrape-test-{index}");
    let (mut ws, _) = timeout(
        WS_STEP_TIMEOUT,
        tokio_tungstenite::connect_async(url.as_str()),
    )
    .await
    .unwrap_or_else(|_| panic!("connect to {url} timed out"))
    .unwrap_or_else(|e| panic!("connect to {url}: {e}"));

    for n in 0..MESSAGES_PER_CONNECTION {
        timeout(WS_STEP_TIMEOUT, ws.send(Message::text(PAYLOAD)))
            .await
            .expect("send timed out")
            .expect("send");
        let echoed = timeout(WS_STEP_TIMEOUT, ws.next())
            .await
            .unwrap_or_else(|_| panic!("connection {index}: no echo of message {n}"))
            .expect("stream ended before the echo")
            .expect("read echo");
        assert_eq!(
            echoed,
            Message::text(PAYLOAD),
            "connection {index}, message {n}"
        );
    }

    let close = CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    };
    timeout(WS_STEP_TIMEOUT, ws.close(Some(close)))
        .await
        .expect("close timed out")
        .expect("send close");
    // Complete the close handshake: the backend's reply comes back through the
    // gateway, then the stream ends.
    let reply = timeout(WS_STEP_TIMEOUT, async {
        let mut reply = None;
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Close(frame)) => reply = frame,
                Ok(other) => panic!("connection {index}: unexpected {other:?} after close"),
                Err(_) => break,
            }
        }
        reply
    })
    .await
    .unwrap_or_else(|_| panic!("connection {index}: close handshake not completed"));
    assert_eq!(
        reply.map(|f| f.code),
        Some(CloseCode::Normal),
        "connection {index}: close reply"
    );
}

// ---------------------------------------------------------------------------
// Prometheus

struct Prometheus {
    api_addr: SocketAddr,
    process: Process,
}

impl Prometheus {
    fn assert_running(&mut self) {
        if let Some(status) = self.process.exited() {
            panic!(
                "prometheus exited ({status}); stderr:\n{}",
                self.process.stderr()
            );
        }
    }
}

/// A copy of deploy/prometheus/prometheus.yml (and alerts.yml beside it, which it
/// loads by relative path) with the scrape target set to the gateway's admin
/// address and both intervals at 1 s.
fn write_prometheus_config(dir: &TempDir, admin: SocketAddr) -> PathBuf {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    let original = std::fs::read_to_string(shipped.join("prometheus.yml"))
        .expect("read deploy/prometheus/prometheus.yml");
    let (mut scrape, mut evaluation, mut targets) = (0, 0, 0);
    let mut out = String::new();
    for line in original.lines() {
        let body = line.trim_start();
        let indent = &line[..line.len() - body.len()];
        if body.starts_with("scrape_interval:") {
            scrape += 1;
            out.push_str(&format!("{indent}scrape_interval: 1s\n"));
        } else if body.starts_with("evaluation_interval:") {
            evaluation += 1;
            out.push_str(&format!("{indent}evaluation_interval: 1s\n"));
        } else if body.starts_with("- targets:") {
            targets += 1;
            out.push_str(&format!("{indent}- targets: [\"{admin}\"]\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    // The rewrite relies on the file's layout; fail loudly if it changed.
    assert!(
        scrape >= 1,
        "no `scrape_interval:` line in deploy/prometheus/prometheus.yml"
    );
    assert_eq!(
        evaluation, 1,
        "expected one `evaluation_interval:` line in deploy/prometheus/prometheus.yml"
    );
    assert_eq!(
        targets, 1,
        "expected exactly one `- targets:` line in deploy/prometheus/prometheus.yml"
    );

    let path = dir.path().join("prometheus.yml");
    std::fs::write(&path, out).expect("write prometheus.yml");
    std::fs::copy(shipped.join("alerts.yml"), dir.path().join("alerts.yml"))
        .expect("copy alerts.yml");
    path
}

async fn start_prometheus(bin: &Path, dir: &TempDir, admin: SocketAddr) -> Prometheus {
    let config = write_prometheus_config(dir, admin);
    // Prometheus takes its listen address as a flag and does not report a port it
    // chose, so the test picks a free port and hands it over; another process can
    // take it in between, hence a few attempts.
    for attempt in 1..=PROMETHEUS_PORT_ATTEMPTS {
        let port = free_port();
        let api_addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let tsdb = dir.path().join(format!("tsdb-{attempt}"));
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", tsdb.display()))
            .arg(format!("--web.listen-address={api_addr}"))
            .arg("--log.level=warn");
        let (process, stdout_lines) = Process::spawn("prometheus", cmd);
        drop(stdout_lines); // Prometheus logs to stderr only.
        let mut prometheus = Prometheus { api_addr, process };

        let deadline = Instant::now() + PROMETHEUS_READY_TIMEOUT;
        loop {
            if let Some(status) = prometheus.process.exited() {
                let stderr = prometheus.process.stderr();
                if stderr.contains("address already in use") && attempt < PROMETHEUS_PORT_ATTEMPTS {
                    break; // lost the port race: next attempt
                }
                panic!("prometheus exited ({status}) during startup; stderr:\n{stderr}");
            }
            if let Some((200, _)) = http_get(api_addr, "/-/ready").await {
                return prometheus;
            }
            if Instant::now() >= deadline {
                panic!(
                    "prometheus not ready on {api_addr} within {PROMETHEUS_READY_TIMEOUT:?}; stderr:\n{}",
                    prometheus.process.stderr()
                );
            }
            sleep(POLL_EVERY).await;
        }
    }
    unreachable!("every attempt either returns or panics")
}

/// The value of an instant query that must yield at most one sample; None while it
/// yields none (not scraped yet).
async fn query_scalar(api: SocketAddr, query: &str) -> Option<f64> {
    let body = api_get_json(
        api,
        &format!("/api/v1/query?query={}", percent_encode(query)),
    )
    .await;
    assert_eq!(body["status"], "success", "query {query}: {body}");
    let result = body["data"]["result"].as_array().expect("result array");
    assert!(
        result.len() <= 1,
        "query {query} returned {} series: {body}",
        result.len()
    );
    let value = result.first()?["value"][1].as_str().expect("sample value");
    Some(
        value
            .parse()
            .unwrap_or_else(|e| panic!("query {query}: value {value:?}: {e}")),
    )
}

/// Waits until every rule group has been evaluated (after `after`, a previous
/// answer of this function, when given) and every rule's health is "ok"; returns
/// the groups' lastEvaluation stamps. A rule in error fails at once.
async fn wait_rules_healthy(api: SocketAddr, after: Option<&[String]>) -> Vec<String> {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let body = api_get_json(api, "/api/v1/rules").await;
        let groups = body["data"]["groups"].as_array().expect("rule groups");
        assert!(
            !groups.is_empty(),
            "Prometheus loaded no rule groups from alerts.yml: {body}"
        );
        let mut stamps = Vec::new();
        let mut pending = Vec::new();
        for group in groups {
            stamps.push(
                group["lastEvaluation"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
            for rule in group["rules"].as_array().expect("rules") {
                match rule["health"].as_str() {
                    Some("ok") => {}
                    Some("err") => panic!(
                        "rule {} fails to evaluate: {}",
                        rule["name"], rule["lastError"]
                    ),
                    other => pending.push(format!("{} ({other:?})", rule["name"])),
                }
            }
        }
        let newer = match after {
            None => true,
            Some(before) => stamps.iter().zip(before).all(|(now, then)| now != then),
        };
        if pending.is_empty() && newer {
            return stamps;
        }
        if Instant::now() >= deadline {
            panic!(
                "rules not all evaluated within {CONVERGE_TIMEOUT:?}: {}",
                pending.join(", ")
            );
        }
        sleep(POLL_EVERY).await;
    }
}

async fn api_get_json(api: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = http_get(api, path)
        .await
        .unwrap_or_else(|| panic!("GET http://{api}{path} failed"));
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
}

/// A plain HTTP GET over a TcpStream: (status, body), or None if the server is not
/// answering (yet). HTTP/1.0 on purpose: the server must then send the body as is
/// (no chunked encoding) and close the connection, so reading to EOF is the body.
async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        Some(raw)
    };
    let raw = timeout(HTTP_TIMEOUT, exchange).await.ok()??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    // "HTTP/1.1 200 OK"
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// RFC 3986 percent-encoding of everything but unreserved characters, for a query
/// parameter value.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Processes, ports and temp files

/// A child process killed and reaped on drop (also when the test panics, in which
/// case its stderr is printed to help the diagnosis).
struct Process {
    name: &'static str,
    child: Child,
    stderr: Arc<Mutex<String>>,
}

/// Caps the stderr kept per process, so a chatty process cannot grow the test's
/// memory without bound; the tail is what explains a failure.
const STDERR_KEEP_BYTES: usize = 256 * 1024;

impl Process {
    /// Spawns `cmd` with stdout delivered line by line on the returned channel and
    /// stderr collected in the background. Reader threads (not tasks): the pipes are
    /// blocking std handles, and the threads end when the process does.
    fn spawn(
        name: &'static str,
        mut cmd: Command,
    ) -> (Process, tokio::sync::mpsc::UnboundedReceiver<String>) {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));

        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Nobody listens any more; keep draining so the child never blocks.
                    continue;
                }
            }
        });

        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let mut pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut kept = sink.lock().unwrap();
                kept.push_str(&String::from_utf8_lossy(&buf[..n]));
                if kept.len() > STDERR_KEEP_BYTES {
                    let mut cut = kept.len() - STDERR_KEEP_BYTES;
                    while !kept.is_char_boundary(cut) {
                        cut += 1;
                    }
                    kept.drain(..cut);
                }
            }
        });

        (
            Process {
                name,
                child,
                stderr,
            },
            rx,
        )
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The exit status if the process has ended.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- {} stderr (tail) ----\n{}", self.name, self.stderr());
        }
    }
}

/// A free TCP port on 127.0.0.1 at the time of the call.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `which`: the first executable `name` on PATH.
fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
