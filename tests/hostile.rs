//! Hostile peers (issue 5, part 3): garbage and oversized or malformed
//! handshakes, slowloris, and every RFC 6455 framing violation from either
//! side. Each test ends by proving the gateway still serves a well-behaved
//! client (one message echoed through it).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const MASK: Option<[u8; 4]> = Some([0x37, 0xfa, 0x21, 0x3d]);
const UPGRADE_HEADERS: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\n\
     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

/// A gateway in front of one echo backend, with extra config sections.
async fn setup(extra: &str) -> (TestGateway, SeenRef) {
    let (b, seen) = echo_backend().await;
    (gateway(&config_for(&[b], extra)).await, seen)
}

/// Extra config that sets `[server]` keys: `config_for` opens `[server]`
/// itself, and its `[health]` section is only left out when `extra` has one.
fn server_keys(keys: &str) -> String {
    format!("{keys}\n[health]\nhttp_path = \"\"\nws_path = \"\"\n")
}

/// The gateway still serves a normal client: one message echoes through.
async fn still_serves(g: &TestGateway) {
    let mut c = connect(&g.url("/")).await;
    c.send(Message::text("still alive")).await.unwrap();
    assert_eq!(next_msg(&mut c).await, Some(Message::text("still alive")));
    let _ = c.close(None).await;
}

/// What the gateway answered to some bytes sent before any upgrade.
#[derive(Debug)]
struct Reply {
    /// The HTTP status, or None if it closed without a (complete) answer.
    status: Option<u16>,
    head: String,
}

/// Writes `bytes` on a fresh connection (a write error is fine: the gateway
/// may refuse before reading it all), then reads until a whole response
/// head arrived or the connection ends. Bounded by `WAIT`.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Reply {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let _ = tcp.write_all(bytes).await;
    read_head(&mut tcp).await
}

async fn read_head(tcp: &mut TcpStream) -> Reply {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_string();
            let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok());
            return Reply { status, head };
        }
        match tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("gateway neither answered nor closed in time")
        {
            Ok(0) | Err(_) => {
                let head = String::from_utf8_lossy(&buf).to_string();
                // A status line without a complete head still says something.
                let status = head
                    .strip_prefix("HTTP/1.1 ")
                    .and_then(|s| s.get(..3))
                    .and_then(|s| s.parse().ok());
                return Reply { status, head };
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn upgrade_request(addr: SocketAddr, path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{UPGRADE_HEADERS}{extra}\r\n")
}

/// Hand-made header lines of about `total` bytes.
fn padding_headers(total: usize) -> String {
    let mut s = String::new();
    let mut i = 0;
    while s.len() < total {
        s.push_str(&format!("X-Pad-{i}: {}\r\n", "p".repeat(200)));
        i += 1;
    }
    s
}

// ---------------------------------------------------------------------------
// Before the handshake
// ---------------------------------------------------------------------------

#[tokio::test]
async fn garbage_before_handshake_is_refused_not_fatal() {
    let (g, _) = setup("").await;
    // Binary junk (a TLS ClientHello start and random bytes) ending in a
    // blank line, then a valid upgrade on the same connection.
    let mut junk: Vec<u8> = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03];
    let mut rng = fastrand::Rng::with_seed(5);
    junk.extend((0..2000).map(|_| rng.u8(..)));
    junk.extend_from_slice(b"\r\n\r\n");
    junk.extend_from_slice(upgrade_request(g.addr, "/", "").as_bytes());
    let r = exchange(g.addr, &junk).await;
    assert!(
        matches!(r.status, None | Some(400)),
        "junk answered with {r:?}"
    );
    // Junk with no line end at all, then the client half-closes.
    let mut tcp = TcpStream::connect(g.addr).await.unwrap();
    let _ = tcp.write_all(&[0xff; 3000]).await;
    let _ = tcp.shutdown().await;
    let r = read_head(&mut tcp).await;
    assert!(
        matches!(r.status, None | Some(400)),
        "junk answered with {r:?}"
    );
    // Many connections of pure junk at once.
    let mut tasks = Vec::new();
    for seed in 0..20u64 {
        let addr = g.addr;
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed);
            let junk: Vec<u8> = (0..rng.usize(1..5000)).map(|_| rng.u8(..)).collect();
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            let _ = tcp.write_all(&junk).await;
            let _ = tcp.write_all(b"\r\n\r\n").await;
            let r = read_head(&mut tcp).await;
            assert!(
                matches!(r.status, None | Some(400)),
                "junk answered with {r:?}"
            );
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    still_serves(&g).await;
}

#[tokio::test]
async fn oversized_request_line_is_431() {
    let (g, _) = setup("").await;
    let path = format!("/{}", "a".repeat(20_000));
    let r = exchange(g.addr, upgrade_request(g.addr, &path, "").as_bytes()).await;
    assert_eq!(r.status, Some(431), "{r:?}");
    still_serves(&g).await;
}

#[tokio::test]
async fn oversized_headers_are_431() {
    let (g, _) = setup("").await;
    let pad = padding_headers(20_000);
    let r = exchange(g.addr, upgrade_request(g.addr, "/", &pad).as_bytes()).await;
    assert_eq!(r.status, Some(431), "{r:?}");
    // One single huge header value, too.
    let pad = format!("Cookie: c={}\r\n", "x".repeat(17_000));
    let r = exchange(g.addr, upgrade_request(g.addr, "/", &pad).as_bytes()).await;
    assert_eq!(r.status, Some(431), "{r:?}");
    still_serves(&g).await;
}

#[tokio::test]
async fn large_head_under_the_default_cap_is_accepted() {
    let (g, _) = setup("").await;
    // About 12 KiB of headers: big cookies must not be refused under 16 KiB.
    let pad = padding_headers(12_000);
    let r = exchange(g.addr, upgrade_request(g.addr, "/", &pad).as_bytes()).await;
    assert_eq!(r.status, Some(101), "{r:?}");
    still_serves(&g).await;
}

#[tokio::test]
async fn configured_head_cap_is_enforced() {
    let (g, _) = setup(&server_keys("max_request_head_bytes = 8192")).await;
    // 12 KiB of headers: over the configured 8 KiB cap (under the default).
    let pad = padding_headers(12_000);
    let r = exchange(g.addr, upgrade_request(g.addr, "/", &pad).as_bytes()).await;
    assert_eq!(r.status, Some(431), "{r:?}");
    // Under the cap is fine.
    let pad = padding_headers(4_000);
    let r = exchange(g.addr, upgrade_request(g.addr, "/", &pad).as_bytes()).await;
    assert_eq!(r.status, Some(101), "{r:?}");
    still_serves(&g).await;
    // A cap under hyper's smallest buffer (8192) cannot be honoured exactly,
    // so the config refuses it, naming the key.
    let (b, _) = echo_backend().await;
    let text = config_for(&[b], &server_keys("max_request_head_bytes = 4096"));
    let err = wsgate::Config::parse(&text).expect_err("a 4096-byte cap must be refused");
    assert!(err.to_string().contains("max_request_head_bytes"), "{err}");
}

#[tokio::test]
async fn malformed_request_lines_and_headers_are_400() {
    let (g, _) = setup("").await;
    let a = g.addr;
    let cases: Vec<(&str, String)> = vec![
        ("HTTP/0.9 request line", "GET /\r\n\r\n".to_string()),
        (
            "bad version",
            format!("GET / HTTP/9.Z\r\nHost: {a}\r\n\r\n"),
        ),
        ("not HTTP", format!("GET / FOO/1.1\r\nHost: {a}\r\n\r\n")),
        (
            "bad method",
            format!("G(E)T / HTTP/1.1\r\nHost: {a}\r\n{UPGRADE_HEADERS}\r\n"),
        ),
        (
            "control char in path",
            format!("GET /\x01 HTTP/1.1\r\nHost: {a}\r\n{UPGRADE_HEADERS}\r\n"),
        ),
        (
            "space in header name",
            format!("GET / HTTP/1.1\r\nHost: {a}\r\nBad Header: x\r\n{UPGRADE_HEADERS}\r\n"),
        ),
        (
            "header without colon",
            format!("GET / HTTP/1.1\r\nHost {a}\r\n{UPGRADE_HEADERS}\r\n"),
        ),
        (
            "NUL in header value",
            format!("GET / HTTP/1.1\r\nHost: {a}\r\nX-A: a\0b\r\n{UPGRADE_HEADERS}\r\n"),
        ),
        (
            "obs-fold",
            format!("GET / HTTP/1.1\r\nHost: {a}\r\n folded\r\n{UPGRADE_HEADERS}\r\n"),
        ),
        (
            "bad content-length",
            format!("GET / HTTP/1.1\r\nHost: {a}\r\nContent-Length: abc\r\n{UPGRADE_HEADERS}\r\n"),
        ),
        (
            "two content-lengths",
            format!(
                "GET / HTTP/1.1\r\nHost: {a}\r\nContent-Length: 1\r\nContent-Length: 2\r\n{UPGRADE_HEADERS}\r\n"
            ),
        ),
        // Well-formed HTTP, broken WebSocket upgrades (handshake.rs).
        (
            "POST upgrade",
            format!("POST / HTTP/1.1\r\nHost: {a}\r\nContent-Length: 0\r\n{UPGRADE_HEADERS}\r\n"),
        ),
        (
            "HTTP/1.0 upgrade",
            format!("GET / HTTP/1.0\r\nHost: {a}\r\n{UPGRADE_HEADERS}\r\n"),
        ),
        (
            "no key",
            format!(
                "GET / HTTP/1.1\r\nHost: {a}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ),
        ),
        (
            "short key",
            format!(
                "GET / HTTP/1.1\r\nHost: {a}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ),
        ),
        (
            "key not base64",
            format!(
                "GET / HTTP/1.1\r\nHost: {a}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!!=\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ),
        ),
        (
            "no version",
            format!(
                "GET / HTTP/1.1\r\nHost: {a}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            ),
        ),
        (
            "no Connection: Upgrade",
            format!(
                "GET / HTTP/1.1\r\nHost: {a}\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ),
        ),
        (
            "no Host",
            format!("GET / HTTP/1.1\r\n{UPGRADE_HEADERS}\r\n"),
        ),
    ];
    let mut wrong = Vec::new();
    for (what, req) in &cases {
        let r = exchange(g.addr, req.as_bytes()).await;
        if r.status != Some(400) {
            wrong.push(format!("{what}: {:?}", r.status));
        }
    }
    assert!(wrong.is_empty(), "not answered 400: {wrong:#?}");
    // Sec-WebSocket-Version other than 13: 426 with the version we speak.
    let r = exchange(
        g.addr,
        format!(
            "GET / HTTP/1.1\r\nHost: {a}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status, Some(426), "{r:?}");
    assert!(
        r.head
            .to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{r:?}"
    );
    still_serves(&g).await;
}

#[tokio::test]
async fn slowloris_is_dropped_after_handshake_timeout() {
    let (g, _) = setup(&server_keys("handshake_timeout = \"2s\"")).await;
    let req = upgrade_request(g.addr, "/", "");
    let started = Instant::now();
    // One byte per second of a valid upgrade request.
    let slow = async {
        let mut tcp = TcpStream::connect(g.addr).await.unwrap();
        let mut chunk = [0u8; 1024];
        for b in req.bytes() {
            if tcp.write_all(&[b]).await.is_err() {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut chunk)).await {
                Err(_) => continue,
                // Closed, reset, or an answer (408) followed by a close.
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => {
                    let text = String::from_utf8_lossy(&chunk[..n]).to_string();
                    assert!(text.starts_with("HTTP/1.1 408"), "answered {text:?}");
                    break;
                }
            }
        }
        started.elapsed()
    };
    // And one that connects and sends nothing at all.
    let idle = async {
        let mut tcp = TcpStream::connect(g.addr).await.unwrap();
        let mut chunk = [0u8; 1024];
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let text = String::from_utf8_lossy(&chunk[..n]).to_string();
                    assert!(text.starts_with("HTTP/1.1 408"), "answered {text:?}");
                }
            }
        }
        started.elapsed()
    };
    let (slow, idle) =
        tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(slow, idle) })
            .await
            .expect("slow clients were not dropped within 5 s");
    for (what, t) in [("slowloris", slow), ("idle", idle)] {
        assert!(
            t >= Duration::from_millis(1500) && t <= Duration::from_millis(3500),
            "{what} dropped after {t:?}, want about 2 s"
        );
    }
    still_serves(&g).await;
}

#[tokio::test]
async fn a_thousand_malformed_handshakes() {
    let (g, _) = setup("").await;
    let a = g.addr;
    let variants: Arc<Vec<String>> = Arc::new(vec![
        // Refused by check_upgrade (counted as bad_request).
        format!(
            "GET / HTTP/1.1\r\nHost: {a}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ),
        format!(
            "GET / HTTP/1.1\r\nHost: {a}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: x\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ),
        format!("PUT / HTTP/1.1\r\nHost: {a}\r\nContent-Length: 0\r\n{UPGRADE_HEADERS}\r\n"),
        format!(
            "GET / HTTP/1.1\r\nHost: {a}\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ),
        // Refused by the HTTP parser.
        "GET / HTTP/1.1\r\nHost x\r\n\r\n".to_string(),
        "\x00\x01\x02\x03 garbage\r\n\r\n".to_string(),
    ]);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..10 {
        let variants = variants.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..100 {
                let req = &variants[(worker + i) % variants.len()];
                let r = exchange(a, req.as_bytes()).await;
                assert!(
                    matches!(r.status, Some(400) | None),
                    "malformed handshake {i} of worker {worker} answered {r:?}"
                );
            }
        }));
    }
    tokio::time::timeout(Duration::from_secs(60), async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .expect("1000 malformed handshakes took over 60 s");
    eprintln!("1000 malformed handshakes in {:?}", started.elapsed());
    let bad = metric(g.admin, "wsgate_connections_total{result=\"bad_request\"}").await;
    assert!(
        bad >= 600.0,
        "bad_request counted {bad}, want >= 600 (4 of 6 variants)"
    );
    still_serves(&g).await;
}

// ---------------------------------------------------------------------------
// Framing violations by the client
// ---------------------------------------------------------------------------

/// Upgrades a raw client, sends `bytes`, and checks that the gateway closes
/// it with `code`, that the backend got a close and none of the bad data,
/// and that the gateway still serves others.
async fn client_violation(extra: &str, bytes: &[u8], code: u16) {
    let (g, seen) = setup(extra).await;
    let mut raw = raw_upgrade(g.addr, "/", "").await;
    raw.tcp.write_all(bytes).await.unwrap();
    let first = raw.read_frame().await;
    let Some((_, 0x8, p)) = first else {
        panic!("expected a close frame first, got {first:?}");
    };
    let got = u16::from_be_bytes([p[0], p[1]]);
    assert_eq!(
        got,
        code,
        "close code for {bytes:02x?} (reason {:?})",
        String::from_utf8_lossy(&p[2..])
    );
    assert!(p.len() > 2, "a gateway close must carry a reason");
    // The gateway then ends the TCP connection.
    raw.tcp
        .write_all(&encode_frame(true, 0, 0x8, &p[..2], MASK))
        .await
        .ok();
    assert_eq!(raw.read_frame().await, None, "connection not ended");
    // The backend was told, and saw no data from the bad frame.
    eventually("backend gets a close", || {
        let seen = seen.clone();
        async move {
            seen.lock()
                .unwrap()
                .messages
                .iter()
                .any(|m| matches!(m, Message::Close(_)))
        }
    })
    .await;
    let data: Vec<_> = seen
        .lock()
        .unwrap()
        .messages
        .iter()
        .filter(|m| m.is_text() || m.is_binary())
        .cloned()
        .collect();
    assert!(data.is_empty(), "backend received {data:?}");
    still_serves(&g).await;
}

fn frame(fin: bool, rsv: u8, op: u8, payload: &[u8]) -> Vec<u8> {
    encode_frame(fin, rsv, op, payload, MASK)
}

fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    frame(true, 0, 0x8, &p)
}

#[tokio::test]
async fn unmasked_client_frame_is_1002() {
    client_violation("", &encode_frame(true, 0, 0x1, b"hello", None), 1002).await;
}

#[tokio::test]
async fn reserved_opcodes_are_1002() {
    for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        client_violation("", &frame(true, 0, op, b"x"), 1002).await;
    }
}

#[tokio::test]
async fn rsv_bits_without_extension_are_1002() {
    for rsv in [0b100u8, 0b010, 0b001, 0b111] {
        client_violation("", &frame(true, rsv, 0x1, b"hi"), 1002).await;
        // On a control frame too.
        client_violation("", &frame(true, rsv, 0x9, b"hi"), 1002).await;
    }
}

#[tokio::test]
async fn control_frame_over_125_bytes_is_1002() {
    client_violation("", &frame(true, 0, 0x9, &[b'p'; 126]), 1002).await;
    client_violation("", &frame(true, 0, 0xA, &[b'p'; 300]), 1002).await;
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(&[b'r'; 124]);
    client_violation("", &frame(true, 0, 0x8, &close), 1002).await;
}

#[tokio::test]
async fn fragmented_control_frame_is_1002() {
    client_violation("", &frame(false, 0, 0x9, b"ping"), 1002).await;
    client_violation("", &frame(false, 0, 0x8, &1000u16.to_be_bytes()), 1002).await;
}

#[tokio::test]
async fn invalid_close_codes_are_1002() {
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
        client_violation("", &close_frame(code, b"bye"), 1002).await;
    }
    // A close payload of one byte.
    client_violation("", &frame(true, 0, 0x8, &[0x03]), 1002).await;
}

#[tokio::test]
async fn close_reason_not_utf8_is_1007() {
    client_violation("", &close_frame(1000, &[b'o', 0xff, 0xfe]), 1007).await;
    client_violation("", &close_frame(4000, &[0xed, 0xa0, 0x80]), 1007).await;
}

#[tokio::test]
async fn payload_length_with_msb_set_is_1002() {
    let mut b = vec![0x82, 0x80 | 127];
    b.extend_from_slice(&(1u64 << 63).to_be_bytes());
    b.extend_from_slice(&MASK.unwrap());
    client_violation("", &b, 1002).await;
    let mut b = vec![0x82, 0x80 | 127];
    b.extend_from_slice(&u64::MAX.to_be_bytes());
    b.extend_from_slice(&MASK.unwrap());
    client_violation("", &b, 1002).await;
}

#[tokio::test]
async fn continuation_without_a_message_is_1002() {
    client_violation("", &frame(true, 0, 0x0, b"orphan"), 1002).await;
    client_violation("", &frame(false, 0, 0x0, b"orphan"), 1002).await;
}

#[tokio::test]
async fn new_message_inside_a_fragmented_one_is_1002() {
    let mut b = frame(false, 0, 0x1, b"part");
    b.extend(frame(true, 0, 0x2, b"other"));
    // The first fragment may have been forwarded already; the close code is
    // what matters, so only that is checked here.
    let (g, _) = setup("").await;
    let mut raw = raw_upgrade(g.addr, "/", "").await;
    raw.tcp.write_all(&b).await.unwrap();
    assert_eq!(raw.read_close().await.map(|c| c.0), Some(1002));
    still_serves(&g).await;
}

#[tokio::test]
async fn invalid_utf8_text_is_1007() {
    // A bad sequence, a surrogate, an overlong encoding, a code point over
    // U+10FFFF.
    for bad in [
        &[0xc3, 0x28][..],
        &[0xed, 0xa0, 0x80],
        &[0xc0, 0xaf],
        &[0xf4, 0x90, 0x80, 0x80],
    ] {
        client_violation("", &frame(true, 0, 0x1, bad), 1007).await;
    }
    // A message that ends inside a character.
    client_violation("", &frame(true, 0, 0x1, &[b'a', 0xe2, 0x82]), 1007).await;
}

#[tokio::test]
async fn invalid_utf8_across_fragments_is_1007() {
    let (g, _) = setup("").await;
    let mut raw = raw_upgrade(g.addr, "/", "").await;
    // "€" split across two frames is fine...
    let mut b = frame(false, 0, 0x1, &[b'a', 0xe2, 0x82]);
    b.extend(frame(true, 0, 0x0, &[0xac, b'z']));
    raw.tcp.write_all(&b).await.unwrap();
    assert_eq!(
        raw.read_frame().await,
        Some((true, 0x1, "a€z".as_bytes().to_vec()))
    );
    // ...a character broken across two frames is not.
    let mut b = frame(false, 0, 0x1, &[b'a', 0xe2, 0x82]);
    b.extend(frame(true, 0, 0x0, &[0x28]));
    raw.tcp.write_all(&b).await.unwrap();
    assert_eq!(raw.read_close().await.map(|c| c.0), Some(1007));
    still_serves(&g).await;
}

#[tokio::test]
async fn message_over_max_message_bytes_is_1009() {
    let extra = "[limits]\nmax_message_bytes = 1024\n";
    client_violation(extra, &frame(true, 0, 0x2, &[7; 1025]), 1009).await;
    // Over the limit only in total, across fragments.
    let mut b = frame(false, 0, 0x2, &[7; 600]);
    b.extend(frame(true, 0, 0x0, &[7; 600]));
    client_violation(extra, &b, 1009).await;
    // A header that claims 1 TiB, with no payload behind it: refused at
    // once, nothing allocated for it.
    let mut b = vec![0x82, 0x80 | 127];
    b.extend_from_slice(&(1u64 << 40).to_be_bytes());
    b.extend_from_slice(&MASK.unwrap());
    client_violation(extra, &b, 1009).await;
}

#[tokio::test]
async fn message_at_max_message_bytes_passes() {
    let (g, _) = setup("[limits]\nmax_message_bytes = 1024\n").await;
    let mut raw = raw_upgrade(g.addr, "/", "").await;
    let mut b = frame(false, 0, 0x2, &[7; 1000]);
    b.extend(frame(true, 0, 0x0, &[7; 24]));
    raw.tcp.write_all(&b).await.unwrap();
    assert_eq!(raw.read_frame().await, Some((true, 0x2, vec![7; 1024])));
    still_serves(&g).await;
}

// ---------------------------------------------------------------------------
// Framing violations by the backend
// ---------------------------------------------------------------------------

/// What the raw backend saw on its hostile connection: the close frame the
/// gateway sent it (code, reason), or None if the link just ended.
type BackendClose = Option<(u16, String)>;

/// A hand-made backend. Its first connection answers the upgrade, waits for
/// one frame from the client, sends `evil` and reports the close it gets.
/// Later connections are a plain echo (for `still_serves`).
async fn raw_backend(evil: Vec<u8>) -> (SocketAddr, mpsc::Receiver<BackendClose>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(1);
    let first = Arc::new(AtomicBool::new(true));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let evil = first.swap(false, Ordering::SeqCst).then(|| evil.clone());
            let tx = tx.clone();
            tokio::spawn(async move {
                let Some(mut raw) = backend_accept(tcp).await else {
                    return;
                };
                match evil {
                    Some(evil) => {
                        let _trigger = raw.read_frame().await;
                        raw.tcp.write_all(&evil).await.unwrap();
                        let _ = tx.send(raw.read_close().await).await;
                    }
                    None => {
                        while let Some((fin, op, p)) = raw.read_frame().await {
                            let reply = encode_frame(fin, 0, op, &p, None);
                            if raw.tcp.write_all(&reply).await.is_err() || op == 0x8 {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// The backend sends `evil` after the client's first message: the backend
/// must get `code`, the client 1014, and nothing of `evil` reaches the client.
async fn backend_violation(extra: &str, evil: Vec<u8>, code: u16) {
    backend_violation_to(extra, evil, code, 1014).await;
}

/// As [`backend_violation`], with the code the client gets.
async fn backend_violation_to(extra: &str, evil: Vec<u8>, code: u16, client_code: u16) {
    let (b, mut closes) = raw_backend(evil.clone()).await;
    let g = gateway(&config_for(&[b], extra)).await;
    let mut client = raw_upgrade(g.addr, "/", "").await;
    client.send_frame(true, 0x1, b"go", MASK).await;
    let first = client.read_frame().await;
    let Some((_, 0x8, p)) = first else {
        panic!("client: expected a close frame first, got {first:?}");
    };
    assert_eq!(
        u16::from_be_bytes([p[0], p[1]]),
        client_code,
        "client close for backend {evil:02x?}"
    );
    let backend = tokio::time::timeout(WAIT, closes.recv())
        .await
        .expect("backend saw no end in time")
        .unwrap();
    assert_eq!(
        backend.as_ref().map(|c| c.0),
        Some(code),
        "backend close for {evil:02x?}: {backend:?}"
    );
    still_serves(&g).await;
}

#[tokio::test]
async fn masked_backend_frame_is_1002_and_client_gets_1014() {
    backend_violation("", encode_frame(true, 0, 0x1, b"hello", MASK), 1002).await;
}

#[tokio::test]
async fn backend_reserved_opcode_and_rsv_are_1002() {
    backend_violation("", encode_frame(true, 0, 0x5, b"x", None), 1002).await;
    backend_violation("", encode_frame(true, 0b100, 0x1, b"x", None), 1002).await;
    backend_violation("", encode_frame(false, 0, 0x9, b"x", None), 1002).await;
}

#[tokio::test]
async fn backend_invalid_utf8_is_1007() {
    backend_violation("", encode_frame(true, 0, 0x1, &[0xc3, 0x28], None), 1007).await;
}

#[tokio::test]
async fn backend_message_over_max_message_bytes_is_1009() {
    // 1009 both ways (SPEC, Hardening rules): a 1014 would make the client
    // reconnect into the same oversized message.
    let extra = "[limits]\nmax_message_bytes = 1024\n";
    backend_violation_to(
        extra,
        encode_frame(true, 0, 0x2, &[1; 2000], None),
        1009,
        1009,
    )
    .await;
}

#[tokio::test]
async fn well_behaved_close_still_passes_through() {
    // Control: a valid close with a valid code is passed on unchanged.
    let (g, _) = setup("").await;
    let mut raw = raw_upgrade(g.addr, "/", "").await;
    raw.tcp
        .write_all(&close_frame(4321, b"app says bye"))
        .await
        .unwrap();
    assert_eq!(raw.read_close().await, Some((4321, "app says bye".into())));
    let mut c = connect(&g.url("/")).await;
    c.send(Message::text("close:3001:done")).await.unwrap();
    match next_msg(&mut c).await {
        Some(Message::Close(Some(f))) => {
            assert_eq!(f.code, CloseCode::from(3001));
            assert_eq!(f.reason.as_str(), "done");
        }
        other => panic!("expected close 3001, got {other:?}"),
    }
    still_serves(&g).await;
}
