//! Limits under abuse (issue 5, part 4): rate limits, connection caps,
//! JSON validation, and a slow consumer that must cost the gateway neither
//! unbounded memory nor its other clients.
//!
//! The tests of this file run one at a time (`SERIAL`): the slow-consumer
//! test measures the process's resident memory, which the others would blur.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, mpsc};
use tokio_tungstenite::tungstenite::Message;

static SERIAL: Mutex<()> = Mutex::const_new(());

const MASK: Option<[u8; 4]> = Some([0x0f, 0x1e, 0x2d, 0x3c]);

/// Extra config that sets `[server]` keys (see `config_for`) plus more
/// sections after them.
fn server_keys(keys: &str, more: &str) -> String {
    format!("{keys}\n[health]\nhttp_path = \"\"\nws_path = \"\"\n{more}\n")
}

async fn setup(extra: &str) -> (TestGateway, SeenRef) {
    let (b, seen) = echo_backend().await;
    (gateway(&config_for(&[b], extra)).await, seen)
}

/// One message echoes through a fresh tungstenite client (a JSON one, for
/// `validate_json`).
async fn still_serves(g: &TestGateway) {
    let mut c = connect(&g.url("/")).await;
    let alive = r#"{"still":"alive"}"#;
    c.send(Message::text(alive)).await.unwrap();
    assert_eq!(next_msg(&mut c).await, Some(Message::text(alive)));
    let _ = c.close(None).await;
}

/// Sends a WebSocket upgrade by hand and returns the whole response head.
async fn upgrade_head(addr: SocketAddr) -> (u16, String, TcpStream) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("no answer in time")
            .unwrap();
        assert!(n > 0, "closed without an answer");
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head, tcp)
}

fn data_messages(seen: &SeenRef) -> Vec<Message> {
    seen.lock()
        .unwrap()
        .messages
        .iter()
        .filter(|m| m.is_text() || m.is_binary())
        .cloned()
        .collect()
}

#[tokio::test]
async fn messages_per_sec_over_burst_is_4029() {
    let _serial = SERIAL.lock().await;
    let (g, seen) = setup("[limits]\nmessages_per_sec = 5\nburst = 5\n").await;
    let before = metric(g.admin, "wsgate_rate_limited_total").await;
    let mut raw = raw_upgrade(g.addr, "/", "").await;
    // Twenty messages at once: the burst of 5 passes, then the limit.
    let mut burst = Vec::new();
    for i in 0..20 {
        burst.extend(encode_frame(true, 0, 0x1, format!("m{i}").as_bytes(), MASK));
    }
    raw.tcp.write_all(&burst).await.unwrap();
    // Echoes of the messages that passed may be cut off by the close: the
    // close code is what the client must see.
    assert_eq!(raw.read_close().await.map(|c| c.0), Some(4029));
    // The burst reached the backend, nothing after it did.
    eventually("the burst reaches the backend", || async {
        data_messages(&seen).len() >= 5
    })
    .await;
    let forwarded = data_messages(&seen);
    assert!(
        forwarded.len() <= 6,
        "backend got {} messages: {forwarded:?}",
        forwarded.len()
    );
    assert_eq!(
        forwarded[..5],
        (0..5)
            .map(|i| Message::text(format!("m{i}")))
            .collect::<Vec<_>>()[..]
    );
    eventually("wsgate_rate_limited_total counts it", || async {
        metric(g.admin, "wsgate_rate_limited_total").await >= before + 1.0
    })
    .await;
    still_serves(&g).await;
}

#[tokio::test]
async fn messages_under_the_rate_pass() {
    let _serial = SERIAL.lock().await;
    let (g, _) = setup("[limits]\nmessages_per_sec = 10\nburst = 3\n").await;
    let mut c = connect(&g.url("/")).await;
    // 3 per second against 10 per second: never limited.
    for i in 0..6 {
        c.send(Message::text(format!("m{i}"))).await.unwrap();
        assert_eq!(next_msg(&mut c).await, Some(Message::text(format!("m{i}"))));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(metric(g.admin, "wsgate_rate_limited_total").await, 0.0);
}

#[tokio::test]
async fn bytes_per_sec_is_4029() {
    let _serial = SERIAL.lock().await;
    let (g, seen) = setup("[limits]\nbytes_per_sec = 1000\n").await;
    let mut raw = raw_upgrade(g.addr, "/", "").await;
    let mut b = Vec::new();
    for _ in 0..3 {
        b.extend(encode_frame(true, 0, 0x2, &[9; 600], MASK));
    }
    raw.tcp.write_all(&b).await.unwrap();
    assert_eq!(raw.read_close().await.map(|c| c.0), Some(4029));
    // The first message (within the 1000 bytes) reached the backend.
    eventually("the first message reaches the backend", || async {
        !data_messages(&seen).is_empty()
    })
    .await;
    assert_eq!(data_messages(&seen), vec![Message::binary(vec![9u8; 600])]);
    eventually("wsgate_rate_limited_total counts it", || async {
        metric(g.admin, "wsgate_rate_limited_total").await >= 1.0
    })
    .await;
    still_serves(&g).await;
}

#[tokio::test]
async fn max_connections_per_ip_is_429() {
    let _serial = SERIAL.lock().await;
    let (b, _) = echo_backend().await;
    let g = gateway(&config_for(
        &[b],
        &server_keys("max_connections_per_ip = 2", ""),
    ))
    .await;
    let one = raw_upgrade(g.addr, "/", "").await;
    let two = raw_upgrade(g.addr, "/", "").await;
    let (status, head, _) = upgrade_head(g.addr).await;
    assert_eq!(status, 429, "{head}");
    drop(one);
    drop(two);
    eventually("a place is free again", || async {
        try_connect(&g.url("/")).await.is_ok()
    })
    .await;
    still_serves(&g).await;
}

#[tokio::test]
async fn max_connections_is_503_with_retry_after() {
    let _serial = SERIAL.lock().await;
    let (b, _) = echo_backend().await;
    let g = gateway(&config_for(&[b], &server_keys("max_connections = 2", ""))).await;
    let one = raw_upgrade(g.addr, "/", "").await;
    let two = raw_upgrade(g.addr, "/", "").await;
    let (status, head, _) = upgrade_head(g.addr).await;
    assert_eq!(status, 503, "{head}");
    let retry = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("retry-after")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no Retry-After in {head}"));
    assert!(
        retry.parse::<u32>().is_ok_and(|s| s > 0),
        "Retry-After: {retry}"
    );
    drop(one);
    drop(two);
    eventually("a place is free again", || async {
        try_connect(&g.url("/")).await.is_ok()
    })
    .await;
    still_serves(&g).await;
}

#[tokio::test]
async fn validate_json_refuses_non_json_and_does_not_forward_it() {
    let _serial = SERIAL.lock().await;
    let (g, seen) = setup("[limits]\nvalidate_json = true\n").await;
    let mut raw = raw_upgrade(g.addr, "/", "").await;
    raw.send_frame(true, 0x1, br#"{"a":1}"#, MASK).await;
    assert_eq!(
        raw.read_frame().await,
        Some((true, 0x1, br#"{"a":1}"#.to_vec()))
    );
    // Fragmented JSON is validated whole.
    raw.send_frame(false, 0x1, b"[1,", MASK).await;
    raw.send_frame(true, 0x0, b"2]", MASK).await;
    // (The echo backend answers with one frame.)
    assert_eq!(raw.read_frame().await, Some((true, 0x1, b"[1,2]".to_vec())));
    // Binary messages are not JSON-checked.
    raw.send_frame(true, 0x2, b"\x00not json", MASK).await;
    assert_eq!(
        raw.read_frame().await,
        Some((true, 0x2, b"\x00not json".to_vec()))
    );
    raw.send_frame(true, 0x1, b"not json", MASK).await;
    assert_eq!(raw.read_close().await.map(|c| c.0), Some(1007));
    eventually("backend gets a close", || async {
        seen.lock()
            .unwrap()
            .messages
            .iter()
            .any(|m| matches!(m, Message::Close(_)))
    })
    .await;
    let data = data_messages(&seen);
    assert_eq!(
        data,
        vec![
            Message::text(r#"{"a":1}"#),
            Message::text("[1,2]"),
            Message::binary(&b"\x00not json"[..]),
        ],
        "what the backend saw"
    );
    // A fragmented non-JSON message is not forwarded either, not even its
    // first fragment.
    let mut raw = raw_upgrade(g.addr, "/", "").await;
    raw.send_frame(false, 0x1, b"{\"zz\":", MASK).await;
    raw.send_frame(true, 0x0, b"oops", MASK).await;
    assert_eq!(raw.read_close().await.map(|c| c.0), Some(1007));
    assert!(
        !data_messages(&seen).iter().any(|m| m
            .to_text()
            .is_ok_and(|t| t.contains("oops") || t.contains("zz"))),
        "fragment of an invalid message was forwarded"
    );
    still_serves(&g).await;
}

// ---------------------------------------------------------------------------
// Slow consumer
// ---------------------------------------------------------------------------

/// Resident set size of this process (the gateway runs in it), in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

/// How a flood ended, seen from the flooding backend.
#[derive(Debug)]
struct Flood {
    /// Bytes the backend managed to write.
    pushed: u64,
    /// The close frame the gateway sent it, and when (after the trigger).
    close: Option<(u16, String)>,
    close_after: Duration,
}

/// A backend that, on a connection whose first message is "flood", writes
/// 1 MiB binary messages until `limit` bytes or a write error, and keeps
/// writing even after the gateway's close frame (a worst case: the gateway
/// must discard, not buffer). Other connections echo.
async fn flood_backend(limit: u64) -> (SocketAddr, mpsc::Receiver<Flood>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Some(mut raw) = backend_accept(tcp).await else {
                    return;
                };
                let mut first = true;
                while let Some((fin, op, p)) = raw.read_frame().await {
                    if std::mem::take(&mut first) && p == b"flood" {
                        let _ = tx.send(flood(raw, limit).await).await;
                        return;
                    }
                    let reply = encode_frame(fin, 0, op, &p, None);
                    if raw.tcp.write_all(&reply).await.is_err() || op == 0x8 {
                        break;
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn flood(raw: Raw, limit: u64) -> Flood {
    let started = Instant::now();
    let Raw { tcp, mut buf } = raw;
    let (mut rd, mut wr) = tcp.into_split();
    let pushed = Arc::new(AtomicU64::new(0));
    let p2 = pushed.clone();
    let writer = tokio::spawn(async move {
        let msg = encode_frame(true, 0, 0x2, &vec![0xab; 1 << 20], None);
        while p2.load(Ordering::Relaxed) < limit {
            if wr.write_all(&msg).await.is_err() {
                break;
            }
            p2.fetch_add(msg.len() as u64, Ordering::Relaxed);
        }
    });
    // Read what the gateway sends until its close frame.
    let mut chunk = vec![0u8; 65536];
    let mut close = None;
    'read: loop {
        while let Ok(Some(h)) = wsgate::ws::frame::parse_header(&buf) {
            let total = h.header_len + h.payload_len as usize;
            if buf.len() < total {
                break;
            }
            let mut p = buf[h.header_len..total].to_vec();
            if let Some(m) = h.mask {
                wsgate::ws::frame::apply_mask(&mut p, m, 0);
            }
            buf.drain(..total);
            if h.opcode == 0x8 && p.len() >= 2 {
                let code = u16::from_be_bytes([p[0], p[1]]);
                close = Some((code, String::from_utf8_lossy(&p[2..]).to_string()));
                break 'read;
            }
        }
        match tokio::time::timeout(WAIT, rd.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    let close_after = started.elapsed();
    // Keep reading (and dropping) until the gateway ends the link, while
    // the writer goes on.
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(n) = rd.read(&mut chunk).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(20), writer).await;
    Flood {
        pushed: pushed.load(Ordering::Relaxed),
        close,
        close_after,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_and_memory_stays_bounded() {
    let _serial = SERIAL.lock().await;
    const LIMIT: u64 = 256 << 20;
    const MIB: u64 = 1 << 20;
    let (b, mut floods) = flood_backend(LIMIT).await;
    let g = gateway(&config_for(
        &[b],
        "[limits]\nmax_buffered_bytes = 65536\nslow_consumer_timeout = \"1s\"\n",
    ))
    .await;
    // Warm up: one normal connection, so one-time allocations are done.
    still_serves(&g).await;
    let baseline = rss();
    let peak = Arc::new(AtomicU64::new(baseline));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // A client that asks for the flood and then never reads.
    let mut slow = raw_upgrade(g.addr, "/", "").await;
    slow.send_frame(true, 0x1, b"flood", MASK).await;
    let started = Instant::now();
    // Meanwhile another client is served normally.
    still_serves(&g).await;
    let flood = tokio::time::timeout(Duration::from_secs(45), floods.recv())
        .await
        .expect("the flood did not end in time")
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let growth = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    eprintln!(
        "slow consumer: backend pushed {} MiB, close {:?} after {:?}, RSS growth {} KiB",
        flood.pushed / MIB,
        flood.close,
        flood.close_after,
        growth / 1024
    );
    // The backend is told, soon after slow_consumer_timeout.
    let (code, _) = flood.close.clone().expect("backend got no close frame");
    assert_eq!(code, 1001, "backend close: {flood:?}");
    assert!(
        flood.close_after < Duration::from_secs(5),
        "backend closed after {:?}",
        flood.close_after
    );
    // The slow client's TCP ends: it gets what was in flight, then EOF
    // (its close frame 1008 only if it was not cut off mid-frame).
    let mut received = slow.buf.len() as u64;
    let mut chunk = vec![0u8; 1 << 16];
    let mut last = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match slow.tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    received += n as u64;
                    last = chunk[..n].to_vec();
                }
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the slow client's connection was not ended");
    eprintln!(
        "slow client: received {} KiB, connection ended {:?} after the flood began",
        received / 1024,
        started.elapsed()
    );
    assert!(received < 64 * MIB, "slow client got {received} bytes");
    let _ = last;
    // The gateway read and dropped the flood after the close (discarding
    // until the close timeout), so the backend really pushed it all...
    assert!(
        flood.pushed >= 200 * MIB,
        "backend pushed only {} MiB",
        flood.pushed / MIB
    );
    // ...and none of it was buffered.
    assert!(
        growth < 32 * MIB,
        "RSS grew by {} MiB while the backend pushed {} MiB",
        growth / MIB,
        flood.pushed / MIB
    );
    still_serves(&g).await;
}
