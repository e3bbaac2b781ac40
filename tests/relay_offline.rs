//! The relay on its own, offline: two `tokio::io::duplex` pipes stand in for
//! the client and backend sockets, and the clock is paused, so heartbeats,
//! close handshakes, slow consumers, token expiry and drain spreading are
//! checked to the millisecond without waiting real seconds.
//!
//! Each test plays both peers with raw frames: the client side writes masked
//! frames and reads unmasked ones, the backend side the other way round.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wsgate::config::Config;
use wsgate::metrics::Metrics;
use wsgate::relay::inflate::Inspect;
use wsgate::relay::{Policy, Relay, Report, Session};
use wsgate::ws::frame::{self, opcode};

/// Pipe capacity: small, so a peer that stops reading blocks the relay soon.
const PIPE: usize = 16 * 1024;
const MASK: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

fn config(extra: &str) -> Config {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{extra}\n[[backends]]\nname = \"b\"\nurl = \"ws://127.0.0.1:1\"\n"
    );
    Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// One relayed connection: the test holds the far ends of both pipes.
struct Link {
    client: DuplexStream,
    backend: DuplexStream,
    done: tokio::task::JoinHandle<(Report, Instant)>,
    metrics: Arc<Metrics>,
}

struct Tokens {
    shutdown: CancellationToken,
}

fn start(extra: &str, token_expires: Option<Instant>) -> (Link, Tokens) {
    let cfg = config(extra);
    let policy = Arc::new(Policy::from_config(&cfg));
    let shutdown = CancellationToken::new();
    let cancel = shutdown.child_token();
    start_with(policy, token_expires, cancel, shutdown)
}

fn start_with(
    policy: Arc<Policy>,
    token_expires: Option<Instant>,
    cancel: CancellationToken,
    shutdown: CancellationToken,
) -> (Link, Tokens) {
    let session = Session {
        deflate: false,
        inspect: [None, None],
        token_expires,
        cancel: cancel.clone(),
        shutdown: shutdown.clone(),
    };
    (start_session(policy, session), Tokens { shutdown })
}

fn start_session(policy: Arc<Policy>, session: Session) -> Link {
    let (client_far, client_near) = tokio::io::duplex(PIPE);
    let (backend_far, backend_near) = tokio::io::duplex(PIPE);
    let metrics = Arc::new(Metrics::new());
    let mut relay = Relay::new(
        client_near,
        Bytes::new(),
        backend_near,
        Bytes::new(),
        policy,
        metrics.clone(),
        session,
    );
    let done = tokio::spawn(async move {
        std::future::poll_fn(|cx| relay.poll_relay(cx)).await;
        (relay.report(), Instant::now())
    });
    Link {
        client: client_far,
        backend: backend_far,
        done,
        metrics,
    }
}

/// A whole single-frame message or control frame, as a peer writes it.
fn encode(op: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    common::encode_frame(true, 0, op, payload, mask)
}

fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// Reads one whole frame: (opcode, unmasked payload). `None` at EOF.
async fn read_frame<R: AsyncRead + Unpin>(io: &mut R) -> Option<(u8, Vec<u8>)> {
    let mut buf = Vec::new();
    loop {
        if let Ok(Some(h)) = frame::parse_header(&buf) {
            let total = h.header_len + h.payload_len as usize;
            if buf.len() >= total {
                let mut payload = buf[h.header_len..total].to_vec();
                if let Some(m) = h.mask {
                    frame::apply_mask(&mut payload, m, 0);
                }
                return Some((h.opcode, payload));
            }
        }
        let mut chunk = [0u8; 4096];
        // Byte by byte past the header would be slow; frames here are small.
        let need = match frame::parse_header(&buf) {
            Ok(Some(h)) => h.header_len + h.payload_len as usize - buf.len(),
            _ => 1,
        };
        let n = io.read(&mut chunk[..need.min(4096)]).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads frames until a close frame: its (code, reason) and when it came.
async fn read_close<R: AsyncRead + Unpin>(io: &mut R) -> (u16, String, Instant) {
    loop {
        let (op, p) = read_frame(io).await.expect("a close frame before EOF");
        if op == opcode::CLOSE {
            let code = u16::from_be_bytes([p[0], p[1]]);
            return (
                code,
                String::from_utf8_lossy(&p[2..]).into_owned(),
                Instant::now(),
            );
        }
    }
}

const HB: &str =
    "[heartbeat]\nclient_interval = \"30s\"\nclient_timeout = \"10s\"\nbackend_interval = \"0s\"\n";

#[tokio::test(start_paused = true)]
async fn quiet_client_is_pinged_after_interval_and_dropped_after_timeout() {
    let t0 = Instant::now();
    let (mut link, _t) = start(HB, None);
    let (op, payload) = read_frame(&mut link.client).await.unwrap();
    assert_eq!(op, opcode::PING);
    assert_eq!(payload, b"wsgate-heartbeat");
    assert_eq!(Instant::now() - t0, Duration::from_secs(30));
    // No answer: the backend is told at interval + timeout.
    let (code, reason, at) = read_close(&mut link.backend).await;
    assert_eq!((code, reason.as_str()), (1001, "client heartbeat timeout"));
    assert_eq!(at - t0, Duration::from_secs(40));
    // The backend answers its close; the relay ends.
    link.backend
        .write_all(&encode(opcode::CLOSE, &close_payload(1001, ""), None))
        .await
        .unwrap();
    let (report, _) = link.done.await.unwrap();
    assert_eq!(report.ending.code(), 1001);
    assert_eq!(report.ending.initiator().label(), "gateway");
    assert_eq!(
        link.metrics
            .render()
            .lines()
            .find(|l| l.starts_with("wsgate_heartbeat_timeouts_total{peer=\"client\"}")),
        Some("wsgate_heartbeat_timeouts_total{peer=\"client\"} 1")
    );
}

#[tokio::test(start_paused = true)]
async fn answered_heartbeats_keep_a_quiet_link_open() {
    let t0 = Instant::now();
    let (mut link, _t) = start(HB, None);
    for round in 1..=5u64 {
        let (op, payload) = read_frame(&mut link.client).await.unwrap();
        assert_eq!(op, opcode::PING);
        assert_eq!(Instant::now() - t0, Duration::from_secs(30 * round));
        link.client
            .write_all(&encode(opcode::PONG, &payload, Some(MASK)))
            .await
            .unwrap();
    }
    assert!(!link.done.is_finished(), "the link was dropped");
    // The gateway's pongs never reach the backend: the first thing it sees
    // is the client's message.
    link.client
        .write_all(&encode(opcode::TEXT, b"still here", Some(MASK)))
        .await
        .unwrap();
    let (op, p) = read_frame(&mut link.backend).await.unwrap();
    assert_eq!((op, p.as_slice()), (opcode::TEXT, &b"still here"[..]));
    let rtt = link
        .metrics
        .render()
        .lines()
        .find(|l| l.starts_with("wsgate_heartbeat_rtt_seconds_count{peer=\"client\"}"))
        .map(str::to_string);
    assert_eq!(
        rtt.as_deref(),
        Some("wsgate_heartbeat_rtt_seconds_count{peer=\"client\"} 5")
    );
}

#[tokio::test(start_paused = true)]
async fn close_handshake_passes_through_with_code_and_reason() {
    let (mut link, _t) = start("", None);
    link.client
        .write_all(&encode(
            opcode::CLOSE,
            &close_payload(4000, "bye now"),
            Some(MASK),
        ))
        .await
        .unwrap();
    let (code, reason, _) = read_close(&mut link.backend).await;
    assert_eq!((code, reason.as_str()), (4000, "bye now"));
    link.backend
        .write_all(&encode(opcode::CLOSE, &close_payload(4000, "ok"), None))
        .await
        .unwrap();
    let (code, reason, _) = read_close(&mut link.client).await;
    assert_eq!((code, reason.as_str()), (4000, "ok"));
    let (report, _) = link.done.await.unwrap();
    assert_eq!(report.ending.code(), 4000);
    assert_eq!(report.ending.initiator().label(), "client");
}

#[tokio::test(start_paused = true)]
async fn messages_flow_both_ways_in_order() {
    let (mut link, _t) = start("", None);
    for i in 0..100 {
        let m = format!("c{i}");
        link.client
            .write_all(&encode(opcode::TEXT, m.as_bytes(), Some(MASK)))
            .await
            .unwrap();
        let (op, p) = read_frame(&mut link.backend).await.unwrap();
        assert_eq!((op, p), (opcode::TEXT, m.into_bytes()));
        let m = format!("b{i}");
        link.backend
            .write_all(&encode(opcode::BINARY, m.as_bytes(), None))
            .await
            .unwrap();
        let (op, p) = read_frame(&mut link.client).await.unwrap();
        assert_eq!((op, p), (opcode::BINARY, m.into_bytes()));
    }
}

#[tokio::test(start_paused = true)]
async fn client_that_stops_reading_is_closed_as_slow_consumer() {
    let extra = "[heartbeat]\nclient_interval = \"0s\"\nbackend_interval = \"0s\"\n\
                 [limits]\nmax_buffered_bytes = 4096\nslow_consumer_timeout = \"30s\"\n";
    let (link, _t) = start(extra, None);
    // The backend sends far more than the client pipe and the relay's
    // buffer hold; the client reads nothing.
    let big = encode(opcode::BINARY, &vec![7u8; 8192], None);
    let t0 = Instant::now();
    let mut backend = link.backend;
    let writer = tokio::spawn(async move {
        for _ in 0..64 {
            if backend.write_all(&big).await.is_err() {
                break;
            }
        }
        backend
    });
    // Writes stall once everything is full; the relay then waits
    // slow_consumer_timeout and gives up on the client.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let mut backend = writer.await.unwrap();
    let (code, reason, _) = read_close(&mut backend).await;
    assert_eq!((code, reason.as_str()), (1001, "slow consumer"));
    let (report, ended) = link.done.await.unwrap();
    assert_eq!(report.ending.code(), 1008);
    assert_eq!(report.ending.initiator().label(), "gateway");
    // 30 s of blocking plus at most the 5 s close deadline, from the moment
    // the pipes filled (within the first second).
    let took = ended - t0;
    assert!(
        took >= Duration::from_secs(30) && took <= Duration::from_secs(36),
        "{took:?}"
    );
    drop(link.client);
}

#[tokio::test(start_paused = true)]
async fn expired_token_closes_4001_and_tells_the_backend() {
    let t0 = Instant::now();
    let (mut link, _t) = start("", Some(t0 + Duration::from_secs(5)));
    let (code, reason, at) = read_close(&mut link.client).await;
    assert_eq!((code, reason.as_str()), (4001, "token expired"));
    assert_eq!(at - t0, Duration::from_secs(5));
    let (code, _, _) = read_close(&mut link.backend).await;
    assert_eq!(code, 1001);
}

#[tokio::test(start_paused = true)]
async fn shutdown_sends_1001_to_both_sides_at_once() {
    let t0 = Instant::now();
    let (mut link, t) = start("", None);
    tokio::time::sleep(Duration::from_secs(3)).await;
    t.shutdown.cancel();
    let (code, reason, at) = read_close(&mut link.client).await;
    assert_eq!((code, reason.as_str()), (1001, "gateway shutting down"));
    assert_eq!(at - t0, Duration::from_secs(3));
    let (code, reason, _) = read_close(&mut link.backend).await;
    assert_eq!((code, reason.as_str()), (1001, "gateway shutting down"));
}

#[tokio::test(start_paused = true)]
async fn drain_spreads_1012_closes_over_shutdown_grace() {
    let mut cfg = config("");
    cfg.server.shutdown_grace = wsgate::config::Dur(Duration::from_secs(20));
    let policy = Arc::new(Policy::from_config(&cfg));
    let shutdown = CancellationToken::new();
    let backend_token = shutdown.child_token();
    let mut links = Vec::new();
    for _ in 0..20 {
        let (link, _) = start_with(
            policy.clone(),
            None,
            backend_token.child_token(),
            shutdown.clone(),
        );
        links.push(link);
    }
    let t0 = Instant::now();
    backend_token.cancel();
    // Each link is read by its own task, so each close is timed when it
    // arrives, not when the test gets round to it.
    let readers: Vec<_> = links
        .into_iter()
        .map(|mut link| {
            tokio::spawn(async move {
                let (code, reason, at) = read_close(&mut link.client).await;
                assert_eq!(
                    (code, reason.as_str()),
                    (1012, "backend removed from service")
                );
                let (code, _, _) = read_close(&mut link.backend).await;
                assert_eq!(code, 1001);
                at
            })
        })
        .collect();
    let mut times = Vec::new();
    for r in readers {
        times.push(r.await.unwrap() - t0);
    }
    assert!(
        times.iter().all(|t| *t <= Duration::from_secs(20)),
        "{times:?}"
    );
    times.sort();
    times.dedup();
    assert!(times.len() >= 10, "closes were not spread: {times:?}");
    assert!(
        *times.last().unwrap() - times[0] >= Duration::from_secs(5),
        "{times:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn backend_that_vanishes_gets_its_client_a_1014() {
    let (mut link, _t) = start("", None);
    drop(link.backend);
    let (code, reason, _) = read_close(&mut link.client).await;
    assert_eq!((code, reason.as_str()), (1014, "backend went away"));
    let (report, _) = link.done.await.unwrap();
    assert_eq!(report.ending.code(), 1006);
    assert_eq!(report.ending.initiator().label(), "backend");
}

// --- issue 13: hardening ---

/// Heartbeats off, so nothing but the behaviour under test can end a link.
const NO_HB: &str = "[heartbeat]\nclient_interval = \"0s\"\nbackend_interval = \"0s\"\n";

#[tokio::test(start_paused = true)]
async fn oversized_message_from_backend_closes_both_sides_1009() {
    let (mut link, _t) = start("[limits]\nmax_message_bytes = 1024\n", None);
    link.backend
        .write_all(&encode(opcode::BINARY, &[1u8; 1025], None))
        .await
        .unwrap();
    let (code, reason, _) = read_close(&mut link.client).await;
    assert_eq!((code, reason.as_str()), (1009, "message too big"));
    let (code, reason, _) = read_close(&mut link.backend).await;
    assert_eq!((code, reason.as_str()), (1009, "message too big"));
    let (report, _) = link.done.await.unwrap();
    assert_eq!(report.ending.code(), 1009);
}

#[tokio::test(start_paused = true)]
async fn oversized_message_from_client_closes_both_sides_1009() {
    let (mut link, _t) = start("[limits]\nmax_message_bytes = 1024\n", None);
    link.client
        .write_all(&encode(opcode::TEXT, &[b'a'; 1025], Some(MASK)))
        .await
        .unwrap();
    let (code, _, _) = read_close(&mut link.client).await;
    assert_eq!(code, 1009);
    let (code, _, _) = read_close(&mut link.backend).await;
    assert_eq!(code, 1009);
}

/// A client that stops reading fills its pipe and the relay's spill toward
/// it; then it dies. The relay's next write toward it fails. Nothing reads
/// from a gone peer, so only the failed write can tell the relay: the
/// backend must hear "client went away" at once, not at a heartbeat
/// timeout (off here) or never.
#[tokio::test(start_paused = true)]
async fn failed_write_to_a_dead_client_tells_the_backend_at_once() {
    let extra = format!("{NO_HB}[limits]\nslow_consumer_timeout = \"1h\"\n");
    let (link, _t) = start(&extra, None);
    let Link {
        client,
        backend,
        done,
        metrics,
    } = link;
    let (mut backend_rx, mut backend_tx) = tokio::io::split(backend);
    let big = encode(opcode::BINARY, &vec![7u8; 8192], None);
    let writer = tokio::spawn(async move {
        // Far more than the client pipe and the relay's spill hold; the
        // writes stall once both are full (until the relay discards).
        for _ in 0..64 {
            if backend_tx.write_all(&big).await.is_err() {
                break;
            }
        }
        backend_tx
    });
    // Let the pipes fill: the relay now waits to write toward the client.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!done.is_finished());
    let t0 = Instant::now();
    drop(client);
    let (code, reason, at) =
        tokio::time::timeout(Duration::from_secs(60), read_close(&mut backend_rx))
            .await
            .expect("the backend was never told its client is gone");
    assert_eq!((code, reason.as_str()), (1001, "client went away"));
    assert_eq!(at - t0, Duration::ZERO, "told late");
    let backend_tx = writer.await.unwrap();
    // The backend answers its close: the relay ends, the client counted as
    // the one that vanished.
    let mut backend = backend_rx.unsplit(backend_tx);
    backend
        .write_all(&encode(opcode::CLOSE, &close_payload(1001, ""), None))
        .await
        .unwrap();
    let (report, _) = tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .expect("relay did not end")
        .unwrap();
    assert_eq!(report.ending.code(), 1006);
    assert_eq!(report.ending.initiator().label(), "client");
    assert!(
        metrics
            .render()
            .contains("wsgate_closes_total{code=\"1006\",initiator=\"client\"} 1"),
        "{}",
        metrics.render()
    );
}

/// On shutdown both peers answer the gateway's 1001 at once but keep their
/// sockets open (no EOF ever). Both close frames have passed each way, so
/// the relay ends then, not at the 5 s close deadline.
#[tokio::test(start_paused = true)]
async fn shutdown_ends_once_both_peers_answer_without_waiting_for_eof() {
    let (mut link, t) = start(NO_HB, None);
    // Mid-stream traffic first, so the parser has state when discarding starts.
    link.client
        .write_all(&encode(opcode::TEXT, b"hello", Some(MASK)))
        .await
        .unwrap();
    assert_eq!(read_frame(&mut link.backend).await.unwrap().1, b"hello");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t0 = Instant::now();
    t.shutdown.cancel();
    let (code, _, _) = read_close(&mut link.client).await;
    assert_eq!(code, 1001);
    let (code, _, _) = read_close(&mut link.backend).await;
    assert_eq!(code, 1001);
    // Data the peers sent before they saw the close is dropped unread; the
    // close frames behind it (split over writes) still count.
    link.client
        .write_all(&encode(opcode::BINARY, &[9u8; 300], Some(MASK)))
        .await
        .unwrap();
    let answer = encode(opcode::CLOSE, &close_payload(1001, ""), Some(MASK));
    link.client.write_all(&answer[..3]).await.unwrap();
    tokio::task::yield_now().await;
    link.client.write_all(&answer[3..]).await.unwrap();
    link.backend
        .write_all(&encode(opcode::CLOSE, &close_payload(1001, ""), None))
        .await
        .unwrap();
    let (report, ended) = tokio::time::timeout(Duration::from_secs(60), link.done)
        .await
        .expect("relay did not end")
        .unwrap();
    assert_eq!(ended - t0, Duration::ZERO, "waited for EOF");
    assert_eq!(report.ending.code(), 1001);
    // The relay dropped both sockets: the peers see EOF.
    let mut rest = Vec::new();
    link.client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "{rest:?}");
}

// ---------------------------------------------------------------------------
// permessage-deflate: compressed messages judged on their inflated text
// ---------------------------------------------------------------------------

/// A relay with permessage-deflate negotiated and inspected: the client
/// compresses without context takeover, the backend as `backend_window`.
fn start_deflate(extra: &str, backend_window: bool) -> Link {
    let policy = Arc::new(Policy::from_config(&config(extra)));
    let shutdown = CancellationToken::new();
    start_session(
        policy,
        Session {
            deflate: true,
            inspect: [
                Some(Inspect { keep_window: false }),
                Some(Inspect {
                    keep_window: backend_window,
                }),
            ],
            token_expires: None,
            cancel: shutdown.child_token(),
            shutdown,
        },
    )
}

/// RFC 7692: deflate with a sync flush, the 4-byte tail removed.
fn deflate(c: &mut Compress, msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 1024);
    c.compress_vec(msg, &mut out, FlushCompress::Sync).unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

fn fresh() -> Compress {
    Compress::new(Compression::default(), false)
}

/// `encode` with RSV1 set (a compressed message's first frame).
fn compressed(op: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = encode(op, payload, mask);
    f[0] |= 0x40;
    f
}

/// Reads exactly `n` bytes.
async fn read_n(io: &mut DuplexStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    io.read_exact(&mut buf).await.unwrap();
    buf
}

const APP_PING: &str = "[heartbeat]\napp_ping = 'ping!'\napp_pong = 'pong!'\n";

#[tokio::test(start_paused = true)]
async fn compressed_app_ping_split_across_reads_is_answered_and_dropped() {
    let mut link = start_deflate(APP_PING, false);
    let ping = compressed(opcode::TEXT, &deflate(&mut fresh(), b"ping!"), Some(MASK));
    // Byte by byte: the relay must wait for the whole small frame.
    for b in &ping {
        link.client.write_all(&[*b]).await.unwrap();
        tokio::task::yield_now().await;
    }
    assert_eq!(
        read_frame(&mut link.client).await.unwrap(),
        (opcode::TEXT, b"pong!".to_vec())
    );
    // A compressed text that is not app_ping, of the same size class, is
    // forwarded byte for byte; nothing of the ping came before it.
    let other = compressed(opcode::TEXT, &deflate(&mut fresh(), b"ping?"), Some(MASK));
    link.client.write_all(&other).await.unwrap();
    assert_eq!(read_n(&mut link.backend, other.len()).await, other);
    link.client
        .write_all(&encode(opcode::CLOSE, &close_payload(1000, ""), Some(MASK)))
        .await
        .unwrap();
    let (code, _, _) = read_close(&mut link.backend).await;
    assert_eq!(code, 1000);
    link.backend
        .write_all(&encode(opcode::CLOSE, &close_payload(1000, ""), None))
        .await
        .unwrap();
    let (report, _) = link.done.await.unwrap();
    assert_eq!(report.client_to_backend.messages, 1);
}

#[tokio::test(start_paused = true)]
async fn many_compressed_messages_pass_unchanged_and_a_window_is_kept_for_the_backend() {
    let mut link = start_deflate("[limits]\nmax_message_bytes = 4096\n", true);
    // The backend compresses with context takeover: message n refers to
    // message n-1; the relay must keep the window between them.
    let mut backend = fresh();
    let mut client = Vec::new();
    for i in 0..200u32 {
        let text = format!("{{\"seq\":{i},\"body\":\"{}\"}}", "lorem ipsum ".repeat(40));
        let f = compressed(opcode::TEXT, &deflate(&mut backend, text.as_bytes()), None);
        link.backend.write_all(&f).await.unwrap();
        assert_eq!(read_n(&mut link.client, f.len()).await, f);
        // Uncompressed messages between the compressed ones.
        if i % 10 == 0 {
            let plain = encode(opcode::BINARY, &[i as u8; 100], Some(MASK));
            link.client.write_all(&plain).await.unwrap();
            client.extend_from_slice(&plain);
        }
    }
    assert_eq!(read_n(&mut link.backend, client.len()).await, client);
    // Over the limit once inflated, though tiny on the wire: 1009.
    let f = compressed(opcode::TEXT, &deflate(&mut backend, &[b'a'; 5000]), None);
    assert!(f.len() < 100);
    link.backend.write_all(&f).await.unwrap();
    let (code, reason, _) = read_close(&mut link.backend).await;
    assert_eq!((code, reason.as_str()), (1009, "message too big"));
}

#[tokio::test(start_paused = true)]
async fn compressed_json_is_held_until_its_inflated_text_is_judged() {
    let mut link = start_deflate("[limits]\nvalidate_json = true\n", false);
    let good = compressed(
        opcode::TEXT,
        &deflate(&mut fresh(), br#"{"ok":true}"#),
        Some(MASK),
    );
    link.client.write_all(&good).await.unwrap();
    assert_eq!(read_n(&mut link.backend, good.len()).await, good);
    let bad = compressed(
        opcode::TEXT,
        &deflate(&mut fresh(), b"{not json"),
        Some(MASK),
    );
    link.client.write_all(&bad).await.unwrap();
    let (code, reason, _) = read_close(&mut link.client).await;
    assert_eq!(
        (code, reason.as_str()),
        (1007, "text message is not valid JSON")
    );
    // The backend never saw the bad message: its next frame is a close.
    let (op, _) = read_frame(&mut link.backend).await.unwrap();
    assert_eq!(op, opcode::CLOSE);
}

#[tokio::test(start_paused = true)]
async fn compressed_app_pings_are_not_rate_limited_but_other_messages_are() {
    let mut link = start_deflate(
        &format!("[limits]\nmessages_per_sec = 1\nburst = 1\n{APP_PING}"),
        false,
    );
    let ping = compressed(opcode::TEXT, &deflate(&mut fresh(), b"ping!"), Some(MASK));
    for _ in 0..5 {
        link.client.write_all(&ping).await.unwrap();
        assert_eq!(
            read_frame(&mut link.client).await.unwrap(),
            (opcode::TEXT, b"pong!".to_vec())
        );
    }
    // Two small compressed messages at once: the second is over the rate.
    let other = compressed(opcode::TEXT, &deflate(&mut fresh(), b"pong?"), Some(MASK));
    link.client.write_all(&other).await.unwrap();
    link.client.write_all(&other).await.unwrap();
    let (code, _, _) = read_close(&mut link.client).await;
    assert_eq!(code, 4029);
}
