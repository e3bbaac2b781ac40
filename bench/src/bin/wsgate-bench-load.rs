//! `wsgate-bench-load`: a lean raw-frame WebSocket load generator.
//!
//! Subcommands: `throughput` (pipelined echo), `latency` (fixed aggregate rate,
//! timestamps in the payload), `idle` (hold many quiet connections, answer pings,
//! verify at the end), `handshakes` (connect, echo once, close, repeat) and `http`
//! (plain HTTP/1.1 GETs on keep-alive connections, one request at a time each).
//! Every result is one JSON object on stdout; progress goes to stderr. Client frames
//! are always masked (RFC 6455 section 5.3); pings from the server are answered.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use wsgate_bench::{
    CLOCK_TICKS_PER_SEC, DEFLATE_OFFER, MAX_HEAD_BYTES, OpenError, SourceAddrs, Stream, WsUrl,
    apply_mask, connect_from, head_end, header_value, mask_key, opcode, parse_header, put_header,
    put_masked_frame, self_cpu_ticks, tls_connector, total_cpu_ticks, ws_connect_with, ws_open,
};

/// How long one connect + upgrade may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a close handshake may take at the end of a run.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Distinct loopback source addresses handed out (127.1.0.1 ...).
const SOURCE_ADDRS: u32 = 60_000;
/// Status code in the close frames we send: 1000 normal closure.
const CLOSE_NORMAL: [u8; 2] = 1000u16.to_be_bytes();
/// 1001 going away: the answer to a draining server's close.
const GOING_AWAY: [u8; 2] = 1001u16.to_be_bytes();

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Raw-frame WebSocket load generator for wsgate benchmarks"
)]
struct Cli {
    /// Tokio worker threads.
    #[arg(long, global = true, default_value_t = 2)]
    workers: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(ClapArgs, Debug, Clone)]
struct Common {
    /// Target ws:// or wss:// URL (IP:port). Repeat to spread connections
    /// round-robin. wss:// (handshakes, idle, storm) needs --ca.
    #[arg(long, required = true)]
    url: Vec<String>,
    /// PEM certificate(s) to trust for wss:// URLs. The client speaks TLS 1.3 only and
    /// never resumes a session: every TLS handshake is a full one.
    #[arg(long)]
    ca: Option<String>,
    /// Processes whose CPU (utime+stime from /proc/PID/stat) is measured over the
    /// measurement window, e.g. the proxy's processes. Comma-separated.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    /// Do not bind client sockets to spread 127.1.x.y source addresses.
    #[arg(long)]
    no_spread: bool,
    /// Offer permessage-deflate (no context takeover); `throughput` then sends
    /// JSON-like text of --size bytes, compressed (RSV1), instead of binary.
    #[arg(long)]
    deflate: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Pipelined echo: each connection keeps --inflight binary messages in flight.
    Throughput {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 64)]
        conns: usize,
        #[arg(long, default_value_t = 16)]
        inflight: usize,
        /// Payload bytes per message.
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Leading part of --duration that is not counted.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        warmup: Duration,
    },
    /// Fixed aggregate message rate spread over the connections; reports latency.
    Latency {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 64)]
        conns: usize,
        /// Messages per second, all connections together.
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        warmup: Duration,
    },
    /// Open many idle connections, print `READY <n>`, hold, then verify with pings.
    Idle {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 9000)]
        conns: usize,
        /// How long to hold the connections after `READY`.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        hold: Duration,
        /// Connects in progress at once while opening.
        #[arg(long, default_value_t = 200)]
        connect_concurrency: usize,
        /// How long each connection waits for the pong to its verification ping.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        verify_timeout: Duration,
    },
    /// Plain HTTP GETs of --path over --conns keep-alive connections, each
    /// sending its next request when the previous response has fully arrived.
    Http {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 64)]
        conns: usize,
        /// Request path (the bench echo backend answers /64k with 65536 bytes).
        #[arg(long, default_value = "/")]
        path: String,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        warmup: Duration,
    },
    /// Reconnect storm: open --conns connections (one echo each), print `READY <n>`,
    /// then hold them; every connection that is lost (the proxy or its backends are
    /// restarted meanwhile) reconnects at once, with no backoff, and echoes again.
    /// Ends when every connection has been lost and is back, or after --timeout.
    Storm {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        opts: StormOpts,
    },
    /// Connect, one echo, close handshake, repeat, from --concurrency clients.
    Handshakes {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 16)]
        size: usize,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m, h)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Targets, source addresses and the connection counter shared by all tasks.
struct Ctx {
    urls: Vec<WsUrl>,
    spread: bool,
    src: SourceAddrs,
    next_id: AtomicU64,
    pids: Vec<u32>,
    deflate: bool,
    tls: Option<TlsConnector>,
}

impl Ctx {
    fn new(c: &Common) -> Result<Arc<Ctx>, String> {
        let urls = c
            .url
            .iter()
            .map(|u| WsUrl::parse(u))
            .collect::<Result<Vec<_>, _>>()?;
        let tls = match &c.ca {
            Some(path) => Some(tls_connector(path)?),
            None if urls.iter().any(|u| u.tls) => {
                return Err("wss:// URLs need --ca (the certificate to trust)".into());
            }
            None => None,
        };
        Ok(Arc::new(Ctx {
            urls,
            spread: !c.no_spread,
            src: SourceAddrs::new(SOURCE_ADDRS),
            next_id: AtomicU64::new(0),
            pids: c.pids.clone(),
            deflate: c.deflate,
            tls,
        }))
    }

    /// Fails for the modes that speak plain TCP only (throughput, latency, http).
    fn plain_only(self: Arc<Self>, mode: &str) -> Result<Arc<Self>, String> {
        if self.urls.iter().any(|u| u.tls) {
            return Err(format!(
                "{mode}: only ws:// URLs (wss:// is for handshakes, idle, storm)"
            ));
        }
        Ok(self)
    }

    /// Connects connection number `n` (client_id `c<n>`) to its (ws://) target.
    async fn connect(&self, n: u64) -> io::Result<(TcpStream, Vec<u8>)> {
        let url = &self.urls[n as usize % self.urls.len()];
        let target = url.target_with_client_id(&format!("c{n}"));
        let src = self.spread.then(|| self.src.next());
        let extra = if self.deflate { DEFLATE_OFFER } else { "" };
        ws_connect_with(url, &target, src, CONNECT_TIMEOUT, extra).await
    }

    /// Opens connection number `n` to its ws:// or wss:// target, within `timeout`.
    async fn open(&self, n: u64, timeout: Duration) -> Result<(Stream, Vec<u8>), OpenError> {
        let url = &self.urls[n as usize % self.urls.len()];
        let target = url.target_with_client_id(&format!("c{n}"));
        let src = self.spread.then(|| self.src.next());
        let extra = if self.deflate { DEFLATE_OFFER } else { "" };
        ws_open(url, &target, src, timeout, extra, self.tls.as_ref()).await
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// CPU of the watched processes and of this process, sampled at the window edges.
struct CpuWindow {
    pids: Vec<u32>,
    start_pids: u64,
    start_self: u64,
}

impl CpuWindow {
    fn start(pids: &[u32]) -> CpuWindow {
        CpuWindow {
            pids: pids.to_vec(),
            start_pids: total_cpu_ticks(pids),
            start_self: self_cpu_ticks(),
        }
    }

    /// (watched CPU seconds, own CPU seconds) since `start`.
    fn stop(&self) -> (f64, f64) {
        let p = total_cpu_ticks(&self.pids).saturating_sub(self.start_pids);
        let s = self_cpu_ticks().saturating_sub(self.start_self);
        let t = CLOCK_TICKS_PER_SEC as f64;
        (p as f64 / t, s as f64 / t)
    }
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.workers.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async move {
        match cli.cmd {
            Cmd::Throughput {
                common,
                conns,
                inflight,
                size,
                duration,
                warmup,
            } => {
                let ctx = Ctx::new(&common)?.plain_only("throughput")?;
                throughput(ctx, conns, inflight, size, duration, warmup).await
            }
            Cmd::Latency {
                common,
                conns,
                rate,
                size,
                duration,
                warmup,
            } => {
                let ctx = Ctx::new(&common)?.plain_only("latency")?;
                latency(ctx, conns, rate, size, duration, warmup).await
            }
            Cmd::Idle {
                common,
                conns,
                hold,
                connect_concurrency,
                verify_timeout,
            } => {
                idle(
                    Ctx::new(&common)?,
                    conns,
                    hold,
                    connect_concurrency,
                    verify_timeout,
                )
                .await
            }
            Cmd::Storm { common, opts } => storm(Ctx::new(&common)?, opts).await,
            Cmd::Handshakes {
                common,
                concurrency,
                duration,
                size,
            } => handshakes(Ctx::new(&common)?, concurrency, duration, size).await,
            Cmd::Http {
                common,
                conns,
                path,
                duration,
                warmup,
            } => {
                http(
                    Ctx::new(&common)?.plain_only("http")?,
                    conns,
                    path,
                    duration,
                    warmup,
                )
                .await
            }
        }
    });
    match result {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("wsgate-bench-load: {e}");
            println!("{}", json!({ "error": e }));
            std::process::exit(1);
        }
    }
    // Do not wait for lingering tasks (e.g. close handshakes that timed out).
    rt.shutdown_timeout(Duration::from_millis(100));
}

/// What the reader half of a connection hands to its writer half.
#[derive(Default)]
struct Shared {
    /// Echoes received and not yet replaced by a new message.
    credits: AtomicUsize,
    /// Control frames (pongs) the writer must send.
    control: Mutex<Vec<u8>>,
    wake: Notify,
}

/// Parses all complete frames at the front of `buf`, calling `on_frame(opcode, fin,
/// payload)` for each, queues pongs for pings into `control`, and drops consumed bytes.
/// Returns `Err` on a protocol error; `Ok(true)` if a close frame arrived.
fn drain_frames(
    buf: &mut Vec<u8>,
    control: &mut Vec<u8>,
    mut on_frame: impl FnMut(u8, bool, &[u8]),
) -> io::Result<bool> {
    let mut pos = 0;
    let mut closed = false;
    while let Some(h) = parse_header(&buf[pos..])? {
        if buf.len() - pos < h.frame_len() {
            buf.reserve(h.frame_len());
            break;
        }
        let payload = &buf[pos + h.header_len..pos + h.frame_len()];
        match h.opcode {
            opcode::PING => put_masked_frame(control, opcode::PONG, payload),
            opcode::CLOSE => {
                closed = true;
                on_frame(h.opcode, h.fin, payload);
                pos += h.frame_len();
                break;
            }
            op => on_frame(op, h.fin, payload),
        }
        pos += h.frame_len();
    }
    buf.drain(..pos);
    Ok(closed)
}

/// Reads more bytes into `buf` (growing it when nearly full). 0 = EOF.
async fn read_some<R: AsyncReadExt + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(64 * 1024);
    }
    r.read_buf(buf).await
}

/// Sends a close frame and waits (bounded) for the peer's close and EOF.
async fn close_handshake<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, mut buf: Vec<u8>) -> bool {
    let fut = async {
        let mut out = Vec::new();
        put_masked_frame(&mut out, opcode::CLOSE, &CLOSE_NORMAL);
        s.write_all(&out).await?;
        let mut got_close = false;
        let mut control = Vec::new();
        loop {
            if !got_close {
                got_close = drain_frames(&mut buf, &mut control, |_, _, _| {})?;
            }
            if got_close {
                buf.clear();
            }
            let n = match read_some(s, &mut buf).await {
                Ok(n) => n,
                // A TLS peer that closes TCP without close_notify after its close
                // frame: the WebSocket close handshake is complete all the same.
                Err(e) if got_close && e.kind() == io::ErrorKind::UnexpectedEof => 0,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Ok::<bool, io::Error>(got_close);
            }
        }
    };
    matches!(tokio::time::timeout(CLOSE_TIMEOUT, fut).await, Ok(Ok(true)))
}

// ---------------------------------------------------------------- throughput

async fn throughput(
    ctx: Arc<Ctx>,
    conns: usize,
    inflight: usize,
    size: usize,
    duration: Duration,
    warmup: Duration,
) -> Result<serde_json::Value, String> {
    let warmup = warmup.min(duration / 2);
    // Connect everyone first so the window measures steady-state relaying only.
    let mut streams = Vec::with_capacity(conns);
    let mut connect_errors = 0u64;
    let mut first_error = None;
    for _ in 0..conns {
        match ctx.connect(ctx.next_id()).await {
            Ok(s) => streams.push(s),
            Err(e) => {
                connect_errors += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    if streams.is_empty() {
        return Err(format!("no connection opened: {first_error:?}"));
    }
    let start = Instant::now();
    let warm_at = start + warmup;
    let deadline = start + duration;
    let window_msgs = Arc::new(AtomicU64::new(0));
    let total_msgs = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let clean_closes = Arc::new(AtomicU64::new(0));
    // A prebuilt masked frame: valid framing, and no per-message masking cost.
    let mut frame = Vec::new();
    if ctx.deflate {
        // JSON-like text, compressed as one self-contained message (no
        // context takeover), first frame bit RSV1.
        let text = json_like(size);
        let z = deflate_message(text.as_bytes());
        put_masked_frame(&mut frame, opcode::TEXT, &z);
        frame[0] |= 0x40;
    } else {
        let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        put_masked_frame(&mut frame, opcode::BINARY, &payload);
    }
    let frame = Arc::new(frame);
    let opened = streams.len();
    let mut tasks = Vec::new();
    for (s, rest) in streams {
        let frame = frame.clone();
        let (w, t, e, c) = (
            window_msgs.clone(),
            total_msgs.clone(),
            errors.clone(),
            clean_closes.clone(),
        );
        tasks.push(tokio::spawn(async move {
            match pump(s, rest, &frame, inflight, warm_at, deadline, &w, &t).await {
                Ok(true) => {
                    c.fetch_add(1, Ordering::Relaxed);
                }
                Ok(false) => {}
                Err(_) => {
                    e.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep_until(warm_at).await;
    let cpu = CpuWindow::start(&ctx.pids);
    tokio::time::sleep_until(deadline).await;
    let (proxy_cpu, self_cpu) = cpu.stop();
    let measured = (deadline - warm_at).as_secs_f64();
    for t in tasks {
        let _ = t.await;
    }
    let msgs = window_msgs.load(Ordering::Relaxed);
    let rate = msgs as f64 / measured;
    let mut v = json!({
        "mode": "throughput",
        "conns": conns,
        "opened": opened,
        "connect_errors": connect_errors,
        "inflight": inflight,
        "size": size,
        "seconds": measured,
        "messages": msgs,
        "msgs_per_s": rate,
        "mb_per_s": rate * size as f64 / 1e6,
        "deflate": ctx.deflate,
        "wire_bytes_per_msg": frame.len(),
        "total_messages": total_msgs.load(Ordering::Relaxed),
        "errors": errors.load(Ordering::Relaxed),
        "clean_closes": clean_closes.load(Ordering::Relaxed),
        "loadgen_cpu_s": self_cpu,
    });
    if !ctx.pids.is_empty() && msgs > 0 {
        v["proxy_cpu_s"] = json!(proxy_cpu);
        v["proxy_cpu_us_per_msg"] = json!(proxy_cpu * 1e6 / msgs as f64);
        v["proxy_cpu_s_per_million_relayed"] = json!(proxy_cpu * 1e6 / (2.0 * msgs as f64));
    }
    if let Some(e) = first_error {
        v["first_error"] = json!(e);
    }
    Ok(v)
}

/// One pipelined echo connection. Returns whether it ended with a clean close.
#[allow(clippy::too_many_arguments)]
async fn pump(
    mut s: TcpStream,
    rest: Vec<u8>,
    frame: &[u8],
    inflight: usize,
    warm_at: Instant,
    deadline: Instant,
    window: &AtomicU64,
    total: &AtomicU64,
) -> io::Result<bool> {
    let shared = Shared {
        credits: AtomicUsize::new(inflight),
        ..Default::default()
    };
    // Set by the writer once it has stopped sending (at the deadline).
    let writer_done = AtomicBool::new(false);
    let done_wake = Notify::new();
    let batch_small = frame.len() < 16 * 1024;
    let mut buf = rest;
    buf.reserve(64 * 1024);
    let (mut rd, mut wr) = s.split();
    let writer = async {
        let mut out = Vec::with_capacity(if batch_small {
            frame.len() * inflight + 256
        } else {
            256
        });
        let r = async {
            loop {
                {
                    let mut c = shared.control.lock().unwrap();
                    out.extend_from_slice(&c);
                    c.clear();
                }
                if Instant::now() >= deadline {
                    if !out.is_empty() {
                        wr.write_all(&out).await?;
                    }
                    return Ok::<(), io::Error>(());
                }
                let n = shared.credits.swap(0, Ordering::AcqRel);
                if n == 0 && out.is_empty() {
                    tokio::select! {
                        _ = shared.wake.notified() => {}
                        _ = tokio::time::sleep_until(deadline) => {}
                    }
                    continue;
                }
                if batch_small {
                    for _ in 0..n {
                        out.extend_from_slice(frame);
                    }
                    wr.write_all(&out).await?;
                } else {
                    if !out.is_empty() {
                        wr.write_all(&out).await?;
                    }
                    for _ in 0..n {
                        wr.write_all(frame).await?;
                    }
                }
                out.clear();
            }
        }
        .await;
        writer_done.store(true, Ordering::Release);
        done_wake.notify_one();
        r
    };
    // The reader keeps reading until the writer has stopped, so a writer blocked on a
    // full socket always drains; echoes still in flight are then absorbed by the close
    // handshake.
    let reader = async {
        let mut control = Vec::new();
        loop {
            if writer_done.load(Ordering::Acquire) {
                break;
            }
            let n = tokio::select! {
                r = read_some(&mut rd, &mut buf) => r?,
                _ = done_wake.notified() => continue,
            };
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed",
                ));
            }
            let mut got = 0usize;
            let closed = drain_frames(&mut buf, &mut control, |op, fin, _| {
                if fin && (op == opcode::BINARY || op == opcode::TEXT || op == opcode::CONTINUATION)
                {
                    got += 1;
                }
            })?;
            if got > 0 {
                total.fetch_add(got as u64, Ordering::Relaxed);
                let now = Instant::now();
                if now >= warm_at && now < deadline {
                    window.fetch_add(got as u64, Ordering::Relaxed);
                }
                shared.credits.fetch_add(got, Ordering::AcqRel);
            }
            if !control.is_empty() {
                shared.control.lock().unwrap().append(&mut control);
            }
            if got > 0 || !shared.control.lock().unwrap().is_empty() {
                shared.wake.notify_one();
            }
            if closed {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "server sent close",
                ));
            }
        }
        Ok(())
    };
    let (w, r) = tokio::join!(writer, reader);
    r?;
    w?;
    // Echoes still in flight are drained by the close handshake.
    Ok(close_handshake(&mut s, buf).await)
}

// ---------------------------------------------------------------- latency

async fn latency(
    ctx: Arc<Ctx>,
    conns: usize,
    rate: u64,
    size: usize,
    duration: Duration,
    warmup: Duration,
) -> Result<serde_json::Value, String> {
    let size = size.max(8);
    let warmup = warmup.min(duration / 2);
    let mut streams = Vec::with_capacity(conns);
    for _ in 0..conns {
        let s = ctx
            .connect(ctx.next_id())
            .await
            .map_err(|e| format!("connect: {e}"))?;
        streams.push(s);
    }
    let base = Instant::now();
    let start = base + Duration::from_millis(50);
    let warm_at = start + warmup;
    let deadline = start + duration;
    // Each connection sends every `period`; their phases are staggered evenly.
    let period = Duration::from_secs_f64(conns as f64 / rate.max(1) as f64);
    let mut tasks = Vec::new();
    for (i, (s, rest)) in streams.into_iter().enumerate() {
        let first = start + period.mul_f64(i as f64 / conns as f64);
        tasks.push(tokio::spawn(latency_conn(
            s, rest, size, base, first, period, warm_at, deadline,
        )));
    }
    tokio::time::sleep_until(warm_at).await;
    let cpu = CpuWindow::start(&ctx.pids);
    tokio::time::sleep_until(deadline).await;
    let (proxy_cpu, self_cpu) = cpu.stop();
    let mut hist = new_hist();
    let (mut sent, mut errors) = (0u64, 0u64);
    for t in tasks {
        match t.await {
            Ok(Ok((h, n))) => {
                hist.add(&h).map_err(|e| e.to_string())?;
                sent += n;
            }
            _ => errors += 1,
        }
    }
    let measured = (deadline - warm_at).as_secs_f64();
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let mut v = json!({
        "mode": "latency",
        "conns": conns,
        "rate": rate,
        "size": size,
        "seconds": measured,
        "sent_in_window": sent,
        "received_in_window": hist.len(),
        "achieved_rate": hist.len() as f64 / measured,
        "p50_us": us(0.5),
        "p90_us": us(0.9),
        "p99_us": us(0.99),
        "p999_us": us(0.999),
        "max_us": hist.max() as f64 / 1000.0,
        "mean_us": hist.mean() / 1000.0,
        "errors": errors,
        "loadgen_cpu_s": self_cpu,
    });
    if !ctx.pids.is_empty() {
        v["proxy_cpu_s"] = json!(proxy_cpu);
    }
    Ok(v)
}

fn new_hist() -> Histogram<u64> {
    // Nanoseconds, 1 us .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("histogram bounds")
}

/// One fixed-rate connection. Returns its histogram (ns) and messages sent in the window.
#[allow(clippy::too_many_arguments)]
async fn latency_conn(
    mut s: TcpStream,
    rest: Vec<u8>,
    size: usize,
    base: Instant,
    first: Instant,
    period: Duration,
    warm_at: Instant,
    deadline: Instant,
) -> io::Result<(Histogram<u64>, u64)> {
    let shared = Shared::default();
    let mut hist = new_hist();
    let mut buf = rest;
    buf.reserve(16 * 1024);
    let (mut rd, mut wr) = s.split();
    let writer = async {
        let mut interval = tokio::time::interval_at(first, period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut payload = vec![0u8; size];
        let mut out = Vec::with_capacity(size + 64);
        let mut sent = 0u64;
        loop {
            let tick = tokio::select! {
                _ = interval.tick() => true,
                _ = shared.wake.notified() => false,
            };
            {
                let mut c = shared.control.lock().unwrap();
                out.extend_from_slice(&c);
                c.clear();
            }
            let now = Instant::now();
            if now >= deadline {
                if !out.is_empty() {
                    wr.write_all(&out).await?;
                }
                return Ok::<u64, io::Error>(sent);
            }
            if tick {
                let ts = (now - base).as_nanos() as u64;
                payload[..8].copy_from_slice(&ts.to_le_bytes());
                let key = mask_key();
                put_header(&mut out, true, opcode::BINARY, size, Some(key));
                let p0 = out.len();
                out.extend_from_slice(&payload);
                apply_mask(&mut out[p0..], key);
                if now >= warm_at {
                    sent += 1;
                }
            }
            if !out.is_empty() {
                wr.write_all(&out).await?;
                out.clear();
            }
        }
    };
    let reader = async {
        let mut control = Vec::new();
        loop {
            let n = tokio::select! {
                r = read_some(&mut rd, &mut buf) => r?,
                _ = tokio::time::sleep_until(deadline + Duration::from_millis(200)) => break,
            };
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed",
                ));
            }
            let now = Instant::now();
            let since_base = (now - base).as_nanos() as u64;
            let closed = drain_frames(&mut buf, &mut control, |op, _, p| {
                if op == opcode::BINARY && p.len() >= 8 {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&p[..8]);
                    let ts = u64::from_le_bytes(b);
                    if base + Duration::from_nanos(ts) >= warm_at {
                        let _ = hist.record(since_base.saturating_sub(ts).max(1_000));
                    }
                }
            })?;
            if !control.is_empty() {
                shared.control.lock().unwrap().append(&mut control);
                shared.wake.notify_one();
            }
            if closed {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "server sent close",
                ));
            }
        }
        Ok(())
    };
    let (w, r) = tokio::join!(writer, reader);
    r?;
    let sent = w?;
    close_handshake(&mut s, buf).await;
    Ok((hist, sent))
}

// ---------------------------------------------------------------- idle

/// Counters of the idle run, shared by all connection tasks.
#[derive(Default)]
struct IdleStats {
    opened: AtomicU64,
    failed: AtomicU64,
    lost: AtomicU64,
    pings_answered: AtomicU64,
    verified: AtomicU64,
}

async fn idle(
    ctx: Arc<Ctx>,
    conns: usize,
    hold: Duration,
    connect_concurrency: usize,
    verify_timeout: Duration,
) -> Result<serde_json::Value, String> {
    let stats = Arc::new(IdleStats::default());
    let (verify_tx, verify_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(connect_concurrency.max(1)));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(conns);
    for _ in 0..conns {
        let permit = gate.clone().acquire_owned().await.expect("semaphore");
        let (ctx, stats, rx, fe) = (
            ctx.clone(),
            stats.clone(),
            verify_rx.clone(),
            first_error.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let r = ctx.open(ctx.next_id(), CONNECT_TIMEOUT).await;
            if r.is_ok() {
                stats.opened.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
            match r {
                Ok((s, rest)) => {
                    idle_conn(s, rest, rx, &stats, verify_timeout).await;
                }
                Err(e) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    fe.lock().unwrap().get_or_insert(e.to_string());
                }
            }
        }));
    }
    // Wait for the last connects to finish.
    let _ = gate
        .acquire_many(connect_concurrency.max(1) as u32)
        .await
        .expect("semaphore");
    let open_secs = t0.elapsed().as_secs_f64();
    let opened = stats.opened.load(Ordering::Relaxed);
    println!("READY {opened}");
    eprintln!(
        "idle: {opened} open, {} failed in {open_secs:.1}s; holding {hold:?}",
        stats.failed.load(Ordering::Relaxed)
    );
    let cpu = CpuWindow::start(&ctx.pids);
    tokio::time::sleep(hold).await;
    let (proxy_cpu, self_cpu) = cpu.stop();
    let lost_during_hold = stats.lost.load(Ordering::Relaxed);
    let _ = verify_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let mut v = json!({
        "mode": "idle",
        "tls": ctx.tls.is_some(),
        "conns": conns,
        "opened": opened,
        "failed": stats.failed.load(Ordering::Relaxed),
        "open_seconds": open_secs,
        "hold_seconds": hold.as_secs_f64(),
        "lost_during_hold": lost_during_hold,
        "pings_answered": stats.pings_answered.load(Ordering::Relaxed),
        "alive_at_end": stats.verified.load(Ordering::Relaxed),
        "loadgen_cpu_s": self_cpu,
    });
    if !ctx.pids.is_empty() {
        v["proxy_cpu_s_during_hold"] = json!(proxy_cpu);
        v["proxy_cpu_pct_during_hold"] = json!(proxy_cpu * 100.0 / hold.as_secs_f64());
    }
    if let Some(e) = first_error.lock().unwrap().take() {
        v["first_error"] = json!(e);
    }
    Ok(v)
}

/// Holds one quiet connection: no read buffer while nothing arrives, pings answered.
/// On the verify signal: ping, wait for the matching pong, close.
async fn idle_conn(
    mut s: Stream,
    rest: Vec<u8>,
    mut verify: watch::Receiver<bool>,
    stats: &IdleStats,
    verify_timeout: Duration,
) {
    const PROBE: &[u8] = b"wsgate-bench-verify";
    let mut buf = rest;
    let mut control = Vec::new();
    let mut probe_deadline: Option<Instant> = None;
    let mut chunk = [0u8; 2048];
    let result: io::Result<bool> = async {
        loop {
            // Frames may already be buffered (e.g. bytes that followed the 101).
            let mut got_probe = false;
            let closed = drain_frames(&mut buf, &mut control, |op, _, p| {
                if op == opcode::PONG && p == PROBE {
                    got_probe = true;
                }
            })?;
            if !control.is_empty() {
                stats.pings_answered.fetch_add(1, Ordering::Relaxed);
                s.write_all(&control).await?;
                control.clear();
            }
            if closed {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "server sent close",
                ));
            }
            if got_probe {
                return Ok(true);
            }
            if buf.is_empty() {
                // Release the buffer while idle.
                buf = Vec::new();
            }
            let verify_wait = async {
                match probe_deadline {
                    Some(d) => {
                        tokio::time::sleep_until(d).await;
                        true
                    }
                    None => {
                        let _ = verify.wait_for(|v| *v).await;
                        false
                    }
                }
            };
            tokio::select! {
                r = s.read_idle(&mut chunk) => {
                    match r? {
                        0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed")),
                        n => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                timed_out = verify_wait => {
                    if timed_out {
                        return Ok(false);
                    }
                    let mut out = Vec::new();
                    put_masked_frame(&mut out, opcode::PING, PROBE);
                    s.write_all(&out).await?;
                    probe_deadline = Some(Instant::now() + verify_timeout);
                }
            }
        }
    }
    .await;
    match result {
        Ok(true) => {
            stats.verified.fetch_add(1, Ordering::Relaxed);
            close_handshake(&mut s, buf).await;
        }
        Ok(false) => {}
        Err(_) => {
            if probe_deadline.is_none() {
                stats.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

// ---------------------------------------------------------------- storm

/// Options of the `storm` subcommand.
#[derive(ClapArgs, Debug)]
struct StormOpts {
    #[arg(long, default_value_t = 9000)]
    conns: usize,
    /// Connects in progress at once while opening (not while reconnecting: then
    /// every lost connection retries at once).
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Time limit of one reconnect attempt (connect, TLS, upgrade, echo).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    attempt_timeout: Duration,
    /// Reconnect attempts one connection may make per loss before it gives up.
    #[arg(long, default_value_t = 2000)]
    max_attempts: u64,
    /// How long after `READY` the run may take in all.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    timeout: Duration,
    /// Payload bytes of the echo each connection makes after (re)connecting.
    #[arg(long, default_value_t = 16)]
    size: usize,
}

/// The ways a reconnect attempt fails: the three steps of [`ws_open`], then the echo.
const STORM_FAILURES: [&str; 4] = ["connect", "tls", "upgrade", "echo"];
/// Where the first failure of the initial connects is kept (after STORM_FAILURES).
const INITIAL: usize = 4;

/// Counters of the storm run, shared by all connection tasks. Times are nanoseconds
/// since the run's start (`base`).
struct StormStats {
    opened: AtomicU64,
    initial_failed: AtomicU64,
    /// Connections lost at least once.
    lost_once: AtomicU64,
    /// Losses in all (a connection may be lost again after it came back).
    losses: AtomicU64,
    /// Connections lost and not back (yet).
    down: AtomicU64,
    gave_up: AtomicU64,
    recoveries: AtomicU64,
    attempts: AtomicU64,
    /// Failed reconnect attempts by [`STORM_FAILURES`] kind.
    failed: [AtomicU64; 4],
    /// The first error of each kind, then ([`INITIAL`]) of the initial connects.
    first_errors: Mutex<[Option<String>; 5]>,
    first_loss_ns: AtomicU64,
    last_recovery_ns: AtomicU64,
    /// Close codes of the close frames that announced a loss (0 = none given).
    close_codes: Mutex<std::collections::BTreeMap<u16, u64>>,
    /// Losses that came without a close frame (TCP EOF or reset).
    abrupt: AtomicU64,
    /// Per loss: time until that connection echoed again.
    outage: Mutex<Histogram<u64>>,
}

impl StormStats {
    fn new() -> StormStats {
        StormStats {
            opened: AtomicU64::new(0),
            initial_failed: AtomicU64::new(0),
            lost_once: AtomicU64::new(0),
            losses: AtomicU64::new(0),
            down: AtomicU64::new(0),
            gave_up: AtomicU64::new(0),
            recoveries: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            failed: Default::default(),
            first_errors: Mutex::default(),
            first_loss_ns: AtomicU64::new(u64::MAX),
            last_recovery_ns: AtomicU64::new(0),
            close_codes: Mutex::default(),
            abrupt: AtomicU64::new(0),
            outage: Mutex::new(new_hist()),
        }
    }

    fn fail(&self, kind: usize, e: &dyn std::fmt::Display) {
        self.failed[kind].fetch_add(1, Ordering::Relaxed);
        self.first_errors.lock().unwrap()[kind].get_or_insert_with(|| e.to_string());
    }
}

async fn storm(ctx: Arc<Ctx>, o: StormOpts) -> Result<serde_json::Value, String> {
    let o = Arc::new(o);
    let st = Arc::new(StormStats::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(o.connect_concurrency.max(1)));
    let base = Instant::now();
    let base_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs_f64();
    let mut tasks = Vec::with_capacity(o.conns);
    for _ in 0..o.conns {
        let permit = gate.clone().acquire_owned().await.expect("semaphore");
        let (ctx, st, o, stop) = (ctx.clone(), st.clone(), o.clone(), stop_rx.clone());
        let id = ctx.next_id();
        tasks.push(tokio::spawn(async move {
            storm_conn(&ctx, id, &st, &o, permit, stop, base).await;
        }));
    }
    let _ = gate
        .acquire_many(o.connect_concurrency.max(1) as u32)
        .await
        .expect("semaphore");
    let opened = st.opened.load(Ordering::Relaxed);
    let ready_s = base.elapsed().as_secs_f64();
    println!("READY {opened}");
    eprintln!(
        "storm: {opened} open, {} failed in {ready_s:.1}s; waiting for the restart",
        st.initial_failed.load(Ordering::Relaxed)
    );
    // Done when every connection has been lost once and is back (or has given up).
    let deadline = Instant::now() + o.timeout;
    loop {
        let lost_once = st.lost_once.load(Ordering::Relaxed);
        let settled = st.down.load(Ordering::Relaxed) == st.gave_up.load(Ordering::Relaxed);
        if opened > 0 && lost_once == opened && settled {
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = stop_tx.send(true);
    // Counters first, then drop the connections without close handshakes.
    let lost_once = st.lost_once.load(Ordering::Relaxed);
    let down = st.down.load(Ordering::Relaxed);
    let first_loss = st.first_loss_ns.load(Ordering::Relaxed);
    let last_recovery = st.last_recovery_ns.load(Ordering::Relaxed);
    let failed: Vec<u64> = st
        .failed
        .iter()
        .map(|f| f.load(Ordering::Relaxed))
        .collect();
    for t in &tasks {
        t.abort();
    }
    let hist = st.outage.lock().unwrap().clone();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1e6;
    let recovered_all = opened > 0 && lost_once == opened && down == 0;
    let mut v = json!({
        "mode": "storm",
        "tls": ctx.tls.is_some(),
        "conns": o.conns,
        "opened": opened,
        "initial_failed": st.initial_failed.load(Ordering::Relaxed),
        "open_seconds": ready_s,
        "ready_unix": base_unix + ready_s,
        "lost": lost_once,
        "losses": st.losses.load(Ordering::Relaxed),
        "lost_abruptly": st.abrupt.load(Ordering::Relaxed),
        "close_codes": *st.close_codes.lock().unwrap(),
        "recoveries": st.recoveries.load(Ordering::Relaxed),
        "still_down": down,
        "gave_up": st.gave_up.load(Ordering::Relaxed),
        "recovered_all": recovered_all,
        "attempts": st.attempts.load(Ordering::Relaxed),
        "failed_attempts": failed.iter().sum::<u64>(),
        "max_attempts_per_loss": o.max_attempts,
        "loadgen_cpu_s": self_cpu_ticks() as f64 / CLOCK_TICKS_PER_SEC as f64,
    });
    for (i, kind) in STORM_FAILURES.iter().enumerate() {
        v[format!("failed_{kind}")] = json!(failed[i]);
        if let Some(e) = &st.first_errors.lock().unwrap()[i] {
            v[format!("first_error_{kind}")] = json!(e);
        }
    }
    if let Some(e) = &st.first_errors.lock().unwrap()[INITIAL] {
        v["first_error_initial"] = json!(e);
    }
    if first_loss != u64::MAX {
        v["first_loss_unix"] = json!(base_unix + first_loss as f64 / 1e9);
    }
    if last_recovery > 0 {
        v["last_recovery_unix"] = json!(base_unix + last_recovery as f64 / 1e9);
        if first_loss != u64::MAX && last_recovery > first_loss {
            v["recovery_after_first_loss_s"] = json!((last_recovery - first_loss) as f64 / 1e9);
        }
    }
    if !hist.is_empty() {
        v["outage_p50_ms"] = json!(ms(0.5));
        v["outage_p99_ms"] = json!(ms(0.99));
        v["outage_max_ms"] = json!(hist.max() as f64 / 1e6);
    }
    Ok(v)
}

/// One storm connection: open (gated), echo, hold; after each loss reconnect with
/// no pause until it echoes again, at most `max_attempts` times per loss.
async fn storm_conn(
    ctx: &Ctx,
    id: u64,
    st: &StormStats,
    o: &StormOpts,
    permit: tokio::sync::OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
    base: Instant,
) {
    let opened = async {
        let (mut s, mut buf) = ctx.open(id, CONNECT_TIMEOUT).await?;
        echo_once(&mut s, &mut buf, o.size, CONNECT_TIMEOUT).await?;
        io::Result::Ok((s, buf))
    }
    .await;
    // Counted before the permit goes back: `READY` waits for every permit.
    let (mut s, mut buf) = match opened {
        Ok(x) => x,
        Err(e) => {
            st.initial_failed.fetch_add(1, Ordering::Relaxed);
            st.first_errors.lock().unwrap()[INITIAL].get_or_insert_with(|| e.to_string());
            return;
        }
    };
    st.opened.fetch_add(1, Ordering::Relaxed);
    drop(permit);
    let now_ns = || base.elapsed().as_nanos() as u64;
    let mut lost_before = false;
    loop {
        if !storm_hold(&mut s, &mut buf, &mut stop, st).await {
            return;
        }
        let lost_at = now_ns();
        st.first_loss_ns.fetch_min(lost_at, Ordering::Relaxed);
        st.losses.fetch_add(1, Ordering::Relaxed);
        st.down.fetch_add(1, Ordering::Relaxed);
        if !lost_before {
            lost_before = true;
            st.lost_once.fetch_add(1, Ordering::Relaxed);
        }
        let mut attempts = 0;
        loop {
            if *stop.borrow() {
                return;
            }
            if attempts == o.max_attempts {
                st.gave_up.fetch_add(1, Ordering::Relaxed);
                return;
            }
            attempts += 1;
            st.attempts.fetch_add(1, Ordering::Relaxed);
            match ctx.open(id, o.attempt_timeout).await {
                Ok((s2, b2)) => (s, buf) = (s2, b2),
                Err(e) => {
                    st.fail(e.phase as usize, &e);
                    continue;
                }
            }
            match echo_once(&mut s, &mut buf, o.size, o.attempt_timeout).await {
                Ok(()) => break,
                Err(e) => st.fail(3, &e),
            }
        }
        let back = now_ns();
        st.last_recovery_ns.fetch_max(back, Ordering::Relaxed);
        st.down.fetch_sub(1, Ordering::Relaxed);
        st.recoveries.fetch_add(1, Ordering::Relaxed);
        let _ = st
            .outage
            .lock()
            .unwrap()
            .record((back - lost_at).max(1_000));
    }
}

/// Holds a storm connection, answering pings. Returns `true` when the connection is
/// lost (a close frame, which is answered, or EOF, or an error), `false` on `stop`.
async fn storm_hold(
    s: &mut Stream,
    buf: &mut Vec<u8>,
    stop: &mut watch::Receiver<bool>,
    st: &StormStats,
) -> bool {
    let mut control = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        let mut close_code = None;
        let closed = drain_frames(buf, &mut control, |op, _, p| {
            if op == opcode::CLOSE {
                close_code = Some(if p.len() >= 2 {
                    u16::from_be_bytes([p[0], p[1]])
                } else {
                    0
                });
            }
        });
        let Ok(closed) = closed else {
            st.abrupt.fetch_add(1, Ordering::Relaxed);
            return true;
        };
        if closed {
            let code = close_code.unwrap_or(0);
            *st.close_codes.lock().unwrap().entry(code).or_default() += 1;
            // Answer the close at once (the draining server waits for it), then go.
            let mut out = Vec::new();
            let answer: &[u8] = if code == 0 { &[] } else { &CLOSE_NORMAL };
            put_masked_frame(&mut out, opcode::CLOSE, answer);
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, s.write_all(&out)).await;
            return true;
        }
        if !control.is_empty() {
            if s.write_all(&control).await.is_err() {
                st.abrupt.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            control.clear();
        }
        if buf.is_empty() {
            *buf = Vec::new();
        }
        tokio::select! {
            r = s.read_idle(&mut chunk) => match r {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => {
                    st.abrupt.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
            },
            _ = stop.wait_for(|v| *v) => return false,
        }
    }
}

// ---------------------------------------------------------------- handshakes

async fn handshakes(
    ctx: Arc<Ctx>,
    concurrency: usize,
    duration: Duration,
    size: usize,
) -> Result<serde_json::Value, String> {
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let start = Instant::now();
    let deadline = start + duration;
    let cpu = CpuWindow::start(&ctx.pids);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (ctx, ok, errors, fe) = (ctx.clone(), ok.clone(), errors.clone(), first_error.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = new_hist();
            while Instant::now() < deadline {
                let t = Instant::now();
                match one_handshake(&ctx, size).await {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        let _ = hist.record(t.elapsed().as_nanos() as u64);
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        fe.lock().unwrap().get_or_insert(e.to_string());
                        // Do not spin on a refusing target.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            hist
        }));
    }
    let mut hist = new_hist();
    for t in tasks {
        if let Ok(h) = t.await {
            hist.add(&h).map_err(|e| e.to_string())?;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (proxy_cpu, self_cpu) = cpu.stop();
    let n = ok.load(Ordering::Relaxed);
    let mut v = json!({
        "mode": "handshakes",
        "tls": ctx.tls.is_some(),
        "concurrency": concurrency,
        "seconds": elapsed,
        "completed": n,
        "errors": errors.load(Ordering::Relaxed),
        "handshakes_per_s": n as f64 / elapsed,
        "p50_ms": hist.value_at_quantile(0.5) as f64 / 1e6,
        "p99_ms": hist.value_at_quantile(0.99) as f64 / 1e6,
        "loadgen_cpu_s": self_cpu,
    });
    if !ctx.pids.is_empty() && n > 0 {
        v["proxy_cpu_s"] = json!(proxy_cpu);
        v["proxy_cpu_us_per_handshake"] = json!(proxy_cpu * 1e6 / n as f64);
    }
    if let Some(e) = first_error.lock().unwrap().take() {
        v["first_error"] = json!(e);
    }
    Ok(v)
}

/// Connect, upgrade, one echo, close handshake, wait for the server's TCP close.
async fn one_handshake(ctx: &Ctx, size: usize) -> io::Result<()> {
    let (mut s, mut buf) = ctx.open(ctx.next_id(), CONNECT_TIMEOUT).await?;
    echo_once(&mut s, &mut buf, size, CONNECT_TIMEOUT).await?;
    if close_handshake(&mut s, buf).await {
        Ok(())
    } else {
        Err(io::Error::other("close handshake incomplete"))
    }
}

/// Sends one binary message of `size` bytes and waits (up to `timeout`) for its echo,
/// answering pings meanwhile. `buf` holds bytes already read (and keeps any surplus).
async fn echo_once<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    size: usize,
    timeout: Duration,
) -> io::Result<()> {
    let payload = vec![0x5Au8; size];
    let mut out = Vec::new();
    put_masked_frame(&mut out, opcode::BINARY, &payload);
    s.write_all(&out).await?;
    let echo = async {
        let mut control = Vec::new();
        loop {
            let mut got = false;
            // The close frame's status code, echoed in our answer (none if it had none).
            let mut close_code: &[u8] = &[];
            let closed = drain_frames(buf, &mut control, |op, _, p| {
                if op == opcode::BINARY && p.len() == size {
                    got = true;
                }
                if op == opcode::CLOSE && p.len() >= 2 {
                    close_code = match u16::from_be_bytes([p[0], p[1]]) {
                        1001 => &GOING_AWAY,
                        _ => &CLOSE_NORMAL,
                    };
                }
            })?;
            if !control.is_empty() {
                s.write_all(&control).await?;
                control.clear();
            }
            if got {
                return Ok(());
            }
            if closed {
                // Answer it, as a client must (a draining server waits for that).
                put_masked_frame(&mut control, opcode::CLOSE, close_code);
                let _ = s.write_all(&control).await;
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "server sent close",
                ));
            }
            if read_some(s, buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before echo",
                ));
            }
        }
    };
    match tokio::time::timeout(timeout, echo).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "echo timed out")),
    }
}

/// Keep-alive HTTP: `conns` connections, one GET in flight each.
async fn http(
    ctx: Arc<Ctx>,
    conns: usize,
    path: String,
    duration: Duration,
    warmup: Duration,
) -> Result<serde_json::Value, String> {
    let warmup = warmup.min(duration / 2);
    let start = Instant::now();
    let warm_at = start + warmup;
    let deadline = start + duration;
    let window = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let reconnects = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let n = ctx.next_id();
        let url = ctx.urls[n as usize % ctx.urls.len()].clone();
        let src = ctx.spread.then(|| ctx.src.next());
        let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", url.host).into_bytes();
        let (w, b, e, fe, r2) = (
            window.clone(),
            bytes.clone(),
            errors.clone(),
            first_error.clone(),
            reconnects.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut hist = new_hist();
            let r = async {
                let open = || async {
                    tokio::time::timeout(CONNECT_TIMEOUT, connect_from(url.addr, src))
                        .await
                        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect"))?
                };
                let mut s = open().await?;
                let mut buf = Vec::with_capacity(80 * 1024);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    s.write_all(&req).await?;
                    let (n, close) = read_response(&mut s, &mut buf).await?;
                    if t >= warm_at {
                        w.fetch_add(1, Ordering::Relaxed);
                        b.fetch_add(n as u64, Ordering::Relaxed);
                        let _ = hist.record(t.elapsed().as_nanos() as u64);
                    }
                    if close {
                        // The server ends keep-alive (nginx: keepalive_requests 1000).
                        r2.fetch_add(1, Ordering::Relaxed);
                        buf.clear();
                        s = open().await?;
                    }
                }
                io::Result::Ok(())
            }
            .await;
            if let Err(err) = r {
                e.fetch_add(1, Ordering::Relaxed);
                fe.lock().unwrap().get_or_insert(err.to_string());
            }
            hist
        }));
    }
    tokio::time::sleep_until(warm_at).await;
    let cpu = CpuWindow::start(&ctx.pids);
    tokio::time::sleep_until(deadline).await;
    let (proxy_cpu, self_cpu) = cpu.stop();
    let measured = (deadline - warm_at).as_secs_f64();
    let mut hist = new_hist();
    for t in tasks {
        if let Ok(h) = t.await {
            hist.add(&h).map_err(|e| e.to_string())?;
        }
    }
    let n = window.load(Ordering::Relaxed);
    let mut v = json!({
        "mode": "http",
        "conns": conns,
        "path": path,
        "seconds": measured,
        "requests": n,
        "requests_per_s": n as f64 / measured,
        "body_mb_per_s": bytes.load(Ordering::Relaxed) as f64 / measured / 1e6,
        "p50_us": hist.value_at_quantile(0.5) as f64 / 1e3,
        "p99_us": hist.value_at_quantile(0.99) as f64 / 1e3,
        "errors": errors.load(Ordering::Relaxed),
        "reconnects": reconnects.load(Ordering::Relaxed),
        "loadgen_cpu_s": self_cpu,
    });
    if !ctx.pids.is_empty() && n > 0 {
        v["proxy_cpu_s"] = json!(proxy_cpu);
        v["proxy_cpu_us_per_request"] = json!(proxy_cpu * 1e6 / n as f64);
    }
    if let Some(e) = first_error.lock().unwrap().take() {
        v["first_error"] = json!(e);
    }
    if n == 0 {
        return Err(format!("no request completed: {v}"));
    }
    Ok(v)
}

/// Reads one response (head, then a Content-Length or chunked body) from `s`,
/// keeping bytes past it in `buf`. Returns the body length, and whether the
/// server closes the connection after it.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<(usize, bool)> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let end = loop {
        if let Some(e) = head_end(buf) {
            break e;
        }
        if buf.len() > MAX_HEAD_BYTES || read_some(s, buf).await? == 0 {
            return Err(bad("connection closed before a response head"));
        }
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad("head not UTF-8"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(bad(head.lines().next().unwrap_or("")));
    }
    let close = header_value(head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    if let Some(len) = header_value(head, "content-length") {
        let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
        while buf.len() < end + len {
            if read_some(s, buf).await? == 0 {
                return Err(bad("connection closed in a body"));
            }
        }
        buf.drain(..end + len);
        return Ok((len, close));
    }
    // Chunked: sizes in hex, each chunk followed by CRLF, ending with 0 CRLF CRLF.
    let mut pos = end;
    let mut total = 0;
    loop {
        let line_end = loop {
            if let Some(i) = buf[pos..].windows(2).position(|w| w == b"\r\n") {
                break pos + i;
            }
            if read_some(s, buf).await? == 0 {
                return Err(bad("connection closed in a chunk size"));
            }
        };
        let size_text = std::str::from_utf8(&buf[pos..line_end]).map_err(|_| bad("chunk size"))?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad("chunk size"))?;
        let need = line_end + 2 + size + 2;
        while buf.len() < need {
            if read_some(s, buf).await? == 0 {
                return Err(bad("connection closed in a chunk"));
            }
        }
        total += size;
        pos = need;
        if size == 0 {
            buf.drain(..pos);
            return Ok((total, close));
        }
    }
}

/// `size` bytes of JSON-like text: an array of small records with repeated
/// keys and varying values, as chat or market-data messages look.
fn json_like(size: usize) -> String {
    let mut s = String::from("{\"type\":\"batch\",\"items\":[");
    let mut i = 0u32;
    while s.len() < size {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"id\":{},\"user\":\"user-{}\",\"price\":{}.{:02},\"qty\":{},\"side\":\"{}\"}}",
            1000 + i * 7,
            i % 13,
            90 + (i * 37) % 20,
            (i * 53) % 100,
            (i * 11) % 500,
            if i.is_multiple_of(2) { "buy" } else { "sell" }
        ));
        i += 1;
    }
    s.truncate(size.saturating_sub(2).max(1));
    while !s.is_char_boundary(s.len()) {
        s.pop();
    }
    s.push_str("]}");
    s
}

/// RFC 7692 compression of one message: raw deflate, sync flush, the
/// `00 00 ff ff` tail removed.
fn deflate_message(msg: &[u8]) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::default(), false);
    let mut out = Vec::with_capacity(msg.len() + 64);
    c.compress_vec(msg, &mut out, flate2::FlushCompress::Sync)
        .expect("deflate into a big enough buffer");
    out.truncate(out.len().saturating_sub(4));
    out
}
