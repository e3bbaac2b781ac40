//! The hidden cost of `[resume]` (issue 16), measured on a real gateway process:
//! - memory per waiting session (RSS growth over N sessions whose clients vanished,
//!   next to the same for N plain connections);
//! - gateway CPU per message, resume on and off (one link, echo round trips).
//!
//! `wsgate-bench-resume [--gateway target/release/wsgate] [--sessions 2000] [--messages 50000]`
//! Starts its own echo backend (in this process) and gateway (a child, stopped by PID).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use wsgate_bench::{CLOCK_TICKS_PER_SEC, proc_cpu_ticks};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "target/release/wsgate")]
    gateway: String,
    #[arg(long, default_value_t = 2000)]
    sessions: usize,
    #[arg(long, default_value_t = 50000)]
    messages: u64,
}

struct Gw {
    child: Child,
    url: String,
    admin: String,
}

impl Drop for Gw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn echo_backend() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

async fn gateway(bin: &str, backend: u16, resume: bool) -> Gw {
    let dir = std::env::temp_dir().join(format!("wsgate-bench-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [health]\nhttp_path = \"\"\nws_path = \"\"\n[resume]\nenabled = {resume}\nwindow = \"10m\"\n\
             [[backends]]\nname = \"b1\"\nurl = \"ws://127.0.0.1:{backend}\"\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(bin)
        .args(["run", "-c", cfg.to_str().unwrap()])
        .env("WSGATE_WORKERS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the gateway");
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(tokio::process::ChildStdout::from_std(out).unwrap()).lines();
    let (mut url, mut admin) = (None, None);
    while url.is_none() || admin.is_none() {
        let l = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("gateway addresses in time")
            .unwrap()
            .expect("gateway output");
        if let Some(a) = l.split("wsgate listening on ").nth(1) {
            url = Some(a.trim().to_string());
        }
        if let Some(a) = l.split("wsgate admin on ").nth(1) {
            admin = Some(a.trim().to_string());
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Gw {
        child,
        url: url.unwrap(),
        admin: admin.unwrap(),
    }
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(url: &str, resume: bool) -> Ws {
    let mut req = url.into_client_request().unwrap();
    if resume {
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("wsgate.resume.v1"),
        );
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    if resume {
        // The hello.
        ws.next().await.unwrap().unwrap();
    }
    ws
}

async fn metric(admin: &str, name: &str) -> f64 {
    let addr = admin.trim_start_matches("http://").trim_end_matches('/');
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// RSS growth per link for `n` links (plain, or resumable whose clients then vanish).
async fn memory(bin: &str, backend: u16, n: usize, resume: bool) -> f64 {
    let gw = gateway(bin, backend, resume).await;
    let pid = gw.child.id();
    let url = format!("{}/", gw.url.trim_end_matches('/'));
    // Warm up allocator and runtime with a few links first.
    let warm: Vec<Ws> = futures_util::future::join_all((0..50).map(|_| open(&url, resume))).await;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(pid);
    let mut links = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(100) {
        let k = 100.min(n - chunk * 100);
        links.extend(futures_util::future::join_all((0..k).map(|_| open(&url, resume))).await);
    }
    if resume {
        drop(links);
        links = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while metric(&gw.admin, "wsgate_resume_sessions_waiting").await < n as f64 + 50.0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid);
    drop(links);
    (after.saturating_sub(before) * 1024) as f64 / n as f64
}

/// Gateway CPU time per message (one way), for `m` echo round trips on one link.
async fn cpu(bin: &str, backend: u16, m: u64, resume: bool) -> f64 {
    let gw = gateway(bin, backend, resume).await;
    let pid = gw.child.id();
    let url = format!("{}/", gw.url.trim_end_matches('/'));
    let ws = open(&url, resume).await;
    let (mut tx, mut rx) = ws.split();
    let payload = "x".repeat(64);
    let before = proc_cpu_ticks(pid).unwrap();
    let t0 = std::time::Instant::now();
    let reader = tokio::spawn(async move {
        let mut got = 0u64;
        while got < m {
            match rx.next().await {
                Some(Ok(Message::Text(t))) if t.starts_with('\0') => {}
                Some(Ok(Message::Text(_))) => got += 1,
                Some(Ok(_)) => {}
                _ => break,
            }
        }
        got
    });
    // Pipelined, with acks interleaved as the libraries send them (every 32;
    // counting sent ones is enough: the echo returns them in order).
    for i in 1..=m {
        tx.send(Message::text(payload.clone())).await.unwrap();
        if resume && i.is_multiple_of(32) {
            tx.send(Message::text(format!("\0ack {i}"))).await.unwrap();
        }
    }
    let got = reader.await.unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let ticks = proc_cpu_ticks(pid).unwrap() - before;
    assert_eq!(got, m);
    eprintln!(
        "  resume={resume}: {m} round trips in {secs:.2} s, gateway CPU {:.2} s",
        ticks as f64 / CLOCK_TICKS_PER_SEC as f64
    );
    // Each round trip is two messages through the gateway.
    ticks as f64 / CLOCK_TICKS_PER_SEC as f64 / (2 * m) as f64 * 1e6
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    let backend = echo_backend().await;
    let plain = memory(&a.gateway, backend, a.sessions, false).await;
    let waiting = memory(&a.gateway, backend, a.sessions, true).await;
    println!(
        "memory: {plain:.0} B per plain connection, {waiting:.0} B per waiting resumable session ({} links each)",
        a.sessions
    );
    let off = cpu(&a.gateway, backend, a.messages, false).await;
    let on = cpu(&a.gateway, backend, a.messages, true).await;
    println!(
        "cpu: {off:.2} us per message with resume off, {on:.2} us with resume on ({} round trips of 64 B)",
        a.messages
    );
}
