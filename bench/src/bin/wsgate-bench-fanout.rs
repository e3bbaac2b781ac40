//! Topic fan-out through a wsgate cluster (`bench/fanout.sh` starts Redis,
//! the echo backend with `--topics`, and the gateways).
//!
//! 1. Opens `--subscribers` WebSocket clients spread round-robin over the
//!    gateways (each subscribed to `--topic` by the backend's 101), and
//!    probes until one publish reaches all of them.
//! 2. Latency: `--rounds` single publishes (one at a time, through the
//!    gateways' admin APIs in turn); for each, the time from sending the
//!    POST to the moment the last subscriber has the message.
//! 3. Throughput: the first `--rate-subscribers` clients are subscribed to a
//!    second topic through the admin API; `--rate-messages` publishes go out
//!    from 4 concurrent publishers, at most 32 in flight (published, not yet
//!    at every subscriber); the time until every one of those subscribers
//!    has every message gives messages/s and deliveries/s.
//!
//! Gateway CPU (from /proc, `--pids`) over each phase gives the CPU per
//! delivery. Prints one JSON object.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wsgate_bench::{CLOCK_TICKS_PER_SEC, WsUrl, parse_header, total_cpu_ticks, ws_connect};

#[derive(Parser)]
struct Args {
    /// WebSocket URL of each gateway (repeat).
    #[arg(long, required = true)]
    gateway: Vec<String>,
    /// Admin address of each gateway, in the same order (repeat).
    #[arg(long, required = true)]
    admin: Vec<SocketAddr>,
    #[arg(long, default_value = "")]
    token: String,
    #[arg(long, default_value_t = 9000)]
    subscribers: usize,
    /// The topic the backend subscribes every connection to.
    #[arg(long, default_value = "bench")]
    topic: String,
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    #[arg(long, default_value_t = 1000)]
    rate_subscribers: usize,
    #[arg(long, default_value_t = 2000)]
    rate_messages: usize,
    /// Gateway process IDs (for their CPU time).
    #[arg(long)]
    pids: Vec<u32>,
}

/// Counts messages received, and when the count reached `target`.
struct Counter {
    n: AtomicU64,
    target: AtomicU64,
    reached: Mutex<Option<Instant>>,
}

impl Counter {
    fn new() -> Arc<Counter> {
        Arc::new(Counter {
            n: AtomicU64::new(0),
            target: AtomicU64::new(u64::MAX),
            reached: Mutex::new(None),
        })
    }

    fn hit(&self) {
        let n = self.n.fetch_add(1, Ordering::AcqRel) + 1;
        if n == self.target.load(Ordering::Acquire) {
            *self.reached.lock().unwrap() = Some(Instant::now());
        }
    }

    /// Arms for `more` messages beyond the count so far.
    fn arm(&self, more: u64) -> u64 {
        *self.reached.lock().unwrap() = None;
        let t = self.n.load(Ordering::Acquire) + more;
        self.target.store(t, Ordering::Release);
        t
    }

    async fn wait(&self, target: u64, limit: Duration) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(t) = *self.reached.lock().unwrap() {
                return Some(t);
            }
            if self.n.load(Ordering::Acquire) >= target {
                // Overshoot (a late probe): take now.
                return Some(Instant::now());
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
}

/// Reads server frames; each data frame whose payload starts with `m` counts
/// on `main`, with `r` on `rate`.
async fn subscriber(mut s: TcpStream, mut buf: Vec<u8>, main: Arc<Counter>, rate: Arc<Counter>) {
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        while let Ok(Some(h)) = parse_header(&buf) {
            let len = h.frame_len();
            if buf.len() < len {
                break;
            }
            let first = buf.get(h.header_len).copied();
            if h.opcode == 0x1 || h.opcode == 0x2 {
                match first {
                    Some(b'm') => main.hit(),
                    Some(b'r') => rate.hit(),
                    _ => {}
                }
            }
            if h.opcode == 0x9 {
                // Answer heartbeats so the gateway keeps the link.
                let mut pong = Vec::new();
                wsgate_bench::put_masked_frame(&mut pong, 0xA, &buf[h.header_len..len]);
                if s.write_all(&pong).await.is_err() {
                    return;
                }
            }
            buf.drain(..len);
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn post(addr: SocketAddr, token: &str, path: &str, body: &str) -> Result<u16, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
    let head = String::from_utf8_lossy(&out);
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad answer: {head}"))
}

/// Messages in flight in the throughput phase.
const WINDOW: usize = 32;

fn cpu_secs(pids: &[u32]) -> f64 {
    total_cpu_ticks(pids) as f64 / CLOCK_TICKS_PER_SEC as f64
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = Args::parse();
    let urls: Vec<WsUrl> = a
        .gateway
        .iter()
        .map(|u| WsUrl::parse(u).unwrap_or_else(|e| panic!("{u}: {e}")))
        .collect();
    let main_c = Counter::new();
    let rate_c = Counter::new();

    // 1. Subscribers.
    let t = Instant::now();
    for i in 0..a.subscribers {
        let url = &urls[i % urls.len()];
        let target = format!("/?client_id=fan-{i}");
        let (s, rest) = ws_connect(url, &target, None, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("subscriber {i}: {e}"));
        tokio::spawn(subscriber(s, rest, main_c.clone(), rate_c.clone()));
    }
    let connect_secs = t.elapsed().as_secs_f64();
    let n = a.subscribers as u64;
    let topic_path = format!("/topics/{}/publish", a.topic);
    let mut ready = false;
    for _ in 0..100 {
        let target = main_c.arm(n);
        let _ = post(a.admin[0], &a.token, &topic_path, r#"{"text":"m-probe"}"#).await;
        if main_c
            .wait(target, Duration::from_millis(500))
            .await
            .is_some()
        {
            ready = true;
            break;
        }
        // Not everyone yet (presence is mirrored asynchronously): the
        // count stays, arm again from it.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ready, "the probe never reached every subscriber");

    // 2. Latency to the last subscriber.
    let cpu0 = cpu_secs(&a.pids);
    let mut lat = Vec::new();
    for r in 0..a.rounds {
        let target = main_c.arm(n);
        let admin = a.admin[r % a.admin.len()];
        let t0 = Instant::now();
        let status = post(
            admin,
            &a.token,
            &topic_path,
            &format!(r#"{{"text":"m{r}"}}"#),
        )
        .await
        .unwrap();
        assert_eq!(status, 200);
        let done = main_c
            .wait(target, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("round {r}: not every subscriber got it"));
        lat.push((done - t0).as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu_latency_phase = cpu_secs(&a.pids) - cpu0;
    let mut sorted = lat.clone();
    sorted.sort_by(f64::total_cmp);

    // 3. Throughput to rate_subscribers.
    let rate_topic = format!("{}-rate", a.topic);
    let k = a.rate_subscribers.min(a.subscribers);
    for i in 0..k {
        let status = post(
            a.admin[i % a.admin.len()],
            &a.token,
            &format!("/clients/fan-{i}/topics"),
            &format!(r#"{{"subscribe":["{rate_topic}"]}}"#),
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "subscribe fan-{i}");
    }
    // Subscriptions travel by pub/sub: probe until all are in place.
    let rate_path = format!("/topics/{rate_topic}/publish");
    let mut ready = false;
    for _ in 0..100 {
        let target = rate_c.arm(k as u64);
        let _ = post(a.admin[0], &a.token, &rate_path, r#"{"text":"r-probe"}"#).await;
        if rate_c
            .wait(target, Duration::from_millis(500))
            .await
            .is_some()
        {
            ready = true;
            break;
        }
    }
    assert!(ready, "the rate probe never reached every subscriber");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = a.rate_messages;
    let target = rate_c.arm((m * k) as u64);
    let cpu1 = cpu_secs(&a.pids);
    let t0 = Instant::now();
    // At most WINDOW messages published and not yet everywhere: the
    // sustained rate the cluster delivers, not how fast a queue overflows
    // (each connection drops pushes beyond 256 waiting).
    let base = target - (m * k) as u64;
    let next = Arc::new(AtomicU64::new(0));
    let publishers = 4;
    let mut tasks = Vec::new();
    for _ in 0..publishers {
        let admins = a.admin.clone();
        let token = a.token.clone();
        let path = rate_path.clone();
        let next = next.clone();
        let rate_c = rate_c.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let j = next.fetch_add(1, Ordering::AcqRel) as usize;
                if j >= m {
                    break;
                }
                let must = (j.saturating_sub(WINDOW) * k) as u64;
                let deadline = Instant::now() + Duration::from_secs(30);
                while rate_c.n.load(Ordering::Acquire) - base < must {
                    assert!(
                        Instant::now() < deadline,
                        "deliveries stalled at message {j}"
                    );
                    tokio::time::sleep(Duration::from_micros(100)).await;
                }
                let status = post(admins[j % admins.len()], &token, &path, r#"{"text":"r"}"#)
                    .await
                    .unwrap();
                assert_eq!(status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let published = t0.elapsed().as_secs_f64();
    let done = rate_c.wait(target, Duration::from_secs(120)).await;
    let got = rate_c.n.load(Ordering::Acquire);
    let total = done.map(|d| (d - t0).as_secs_f64());
    let cpu_rate_phase = cpu_secs(&a.pids) - cpu1;
    let deliveries = (m * k) as f64;
    println!(
        "{}",
        serde_json::json!({
            "gateways": urls.len(),
            "subscribers": a.subscribers,
            "connect_seconds": connect_secs,
            "latency_rounds": a.rounds,
            "last_subscriber_ms": {"p50": percentile(&sorted, 0.5), "p90": percentile(&sorted, 0.9),
                                    "max": percentile(&sorted, 1.0), "all": lat},
            "latency_phase_gateway_cpu_seconds": cpu_latency_phase,
            "latency_phase_cpu_us_per_delivery": cpu_latency_phase * 1e6 / (n as f64 * a.rounds as f64),
            "rate_subscribers": k,
            "rate_messages": m,
            "rate_publish_seconds": published,
            "rate_all_delivered_seconds": total,
            "rate_missing": target.saturating_sub(got),
            "rate_messages_per_second": total.map(|t| m as f64 / t),
            "rate_deliveries_per_second": total.map(|t| deliveries / t),
            "rate_phase_gateway_cpu_seconds": cpu_rate_phase,
            "rate_phase_cpu_us_per_delivery": cpu_rate_phase * 1e6 / deliveries,
        })
    );
}
