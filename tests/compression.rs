//! permessage-deflate through the real gateway, with frames written by
//! hand on both sides: the negotiation the gateway rewrites, and every
//! promise judged on the inflated message (size 1009, UTF-8 1007, app_ping,
//! invalid compressed data), in both directions, with fragments and control
//! frames between them.
mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::*;
use flate2::{Compress, Compression, FlushCompress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const MASK: Option<[u8; 4]> = Some([0x11, 0x22, 0x33, 0x44]);
const RSV1: u8 = 0b100;
const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

/// RFC 7692 compression of one message: deflate, sync flush, the
/// `00 00 ff ff` tail removed.
fn deflate(c: &mut Compress, msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() / 2 + 1024);
    let mut input = msg;
    loop {
        let before = c.total_in();
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity());
        }
        c.compress_vec(input, &mut out, FlushCompress::Sync)
            .unwrap();
        input = &input[(c.total_in() - before) as usize..];
        if input.is_empty() && out.capacity() - out.len() >= 64 {
            break;
        }
    }
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// One message compressed without context takeover.
fn z(msg: &[u8]) -> Vec<u8> {
    deflate(&mut Compress::new(Compression::default(), false), msg)
}

/// A frame as the backend saw it: (fin, rsv, opcode, unmasked payload).
type Frame = (bool, u8, u8, Vec<u8>);

/// A hand-written backend: answers the upgrade with `answer` as its
/// `Sec-WebSocket-Extensions` (if the client offered any), records the
/// request head, and hands each connection to the test as a [`Raw`].
struct RawBackend {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    conns: mpsc::Receiver<Raw>,
}

async fn raw_backend(answer: &'static str) -> RawBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads: Arc<Mutex<Vec<String>>> = Arc::default();
    let (tx, conns) = mpsc::channel(16);
    let h2 = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let Some((head, rest)) = read_head(&mut tcp).await else {
                continue;
            };
            let key = header(&head, "sec-websocket-key").unwrap_or_default();
            let ext = match header(&head, "sec-websocket-extensions") {
                Some(_) if !answer.is_empty() => format!("Sec-WebSocket-Extensions: {answer}\r\n"),
                _ => String::new(),
            };
            h2.lock().unwrap().push(head);
            let accept = wsgate::conn::headers::accept_key(key.as_bytes());
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {}\r\n{ext}\r\n",
                accept.to_str().unwrap()
            );
            if tcp.write_all(resp.as_bytes()).await.is_err() {
                continue;
            }
            let _ = tx.send(Raw { tcp, buf: rest }).await;
        }
    });
    RawBackend { addr, heads, conns }
}

async fn read_head(tcp: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i + 4]).to_string();
            return Some((head, buf[i + 4..].to_vec()));
        }
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// A raw client upgrade through the gateway: (101 head, connection).
async fn client(addr: SocketAddr, extra: &str) -> (String, Raw) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let (head, rest) = read_head(&mut tcp).await.expect("no 101");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (head, Raw { tcp, buf: rest })
}

async fn send(raw: &mut Raw, fin: bool, rsv: u8, op: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    raw.tcp
        .write_all(&encode_frame(fin, rsv, op, payload, mask))
        .await
        .unwrap();
}

/// Reads one frame with its RSV bits.
async fn frame(raw: &mut Raw) -> Option<Frame> {
    loop {
        if let Ok(Some(h)) = wsgate::ws::frame::parse_header(&raw.buf) {
            let total = h.header_len + h.payload_len as usize;
            if raw.buf.len() >= total {
                let mut p = raw.buf[h.header_len..total].to_vec();
                if let Some(m) = h.mask {
                    wsgate::ws::frame::apply_mask(&mut p, m, 0);
                }
                raw.buf.drain(..total);
                return Some((h.fin, h.rsv, h.opcode, p));
            }
        }
        let mut chunk = [0u8; 65536];
        let n = tokio::time::timeout(WAIT, raw.tcp.read(&mut chunk))
            .await
            .expect("frame timed out")
            .ok()?;
        if n == 0 {
            return None;
        }
        raw.buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until a close frame: its code and reason (None: EOF first).
async fn close_of(raw: &mut Raw) -> Option<(u16, String)> {
    while let Some((_, _, op, p)) = frame(raw).await {
        if op == 0x8 {
            let code = u16::from_be_bytes([p[0], p[1]]);
            return Some((code, String::from_utf8_lossy(&p[2..]).to_string()));
        }
    }
    None
}

/// A gateway in front of one raw backend answering `answer`, with `extra`
/// config; returns (gateway, backend, client 101 head, client, backend side).
async fn link(answer: &'static str, extra: &str) -> (TestGateway, RawBackend, String, Raw, Raw) {
    let mut b = raw_backend(answer).await;
    let gw = gateway(&config_for(&[b.addr], extra)).await;
    let (head, c) = client(gw.addr, OFFER).await;
    let s = tokio::time::timeout(WAIT, b.conns.recv())
        .await
        .unwrap()
        .unwrap();
    (gw, b, head, c, s)
}

const BOTH: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

#[tokio::test]
async fn inspect_asks_both_sides_to_compress_without_context_takeover() {
    let (_gw, b, head, _c, _s) = link("permessage-deflate; client_max_window_bits=15", "").await;
    let sent = b.heads.lock().unwrap()[0].clone();
    assert_eq!(
        header(&sent, "sec-websocket-extensions").as_deref(),
        Some("permessage-deflate; client_max_window_bits; server_no_context_takeover"),
        "{sent}"
    );
    assert_eq!(
        header(&head, "sec-websocket-extensions").as_deref(),
        Some("permessage-deflate; client_max_window_bits=15; client_no_context_takeover"),
        "{head}"
    );
}

#[tokio::test]
async fn off_removes_the_extension_and_passthrough_keeps_the_offer() {
    let (_gw, b, head, mut c, _s) = link(BOTH, "[limits]\npermessage_deflate = \"off\"").await;
    assert_eq!(
        header(&b.heads.lock().unwrap()[0], "sec-websocket-extensions"),
        None
    );
    assert_eq!(header(&head, "sec-websocket-extensions"), None);
    // Nothing was negotiated, so a compressed frame is a protocol error.
    send(&mut c, true, RSV1, 0x1, &z(b"hi"), MASK).await;
    assert_eq!(close_of(&mut c).await.unwrap().0, 1002);

    let (_gw, b, head, _c, _s) = link(
        "permessage-deflate",
        "[limits]\npermessage_deflate = \"passthrough\"",
    )
    .await;
    assert_eq!(
        header(&b.heads.lock().unwrap()[0], "sec-websocket-extensions").as_deref(),
        Some("permessage-deflate; client_max_window_bits")
    );
    assert_eq!(
        header(&head, "sec-websocket-extensions").as_deref(),
        Some("permessage-deflate")
    );
}

#[tokio::test]
async fn compressed_app_ping_is_answered_and_not_forwarded() {
    let (_gw, _b, _h, mut c, mut s) = link(
        BOTH,
        "[heartbeat]\napp_ping = '{\"type\":\"ping\"}'\napp_pong = '{\"type\":\"pong\"}'",
    )
    .await;
    send(&mut c, true, RSV1, 0x1, &z(br#"{"type":"ping"}"#), MASK).await;
    let (fin, _, op, p) = frame(&mut c).await.unwrap();
    assert!(fin);
    assert_eq!((op, p.as_slice()), (0x1, &br#"{"type":"pong"}"#[..]));
    // The next message reaches the backend exactly as sent: the ping did not.
    let next = z(br#"{"type":"chat","text":"hello"}"#);
    send(&mut c, true, RSV1, 0x1, &next, MASK).await;
    assert_eq!(frame(&mut s).await.unwrap(), (true, RSV1, 0x1, next));
}

#[tokio::test]
async fn fragmented_compressed_messages_with_control_frames_between_pass_unchanged() {
    let (_gw, _b, _h, mut c, mut s) = link(BOTH, "[limits]\nvalidate_json = true").await;
    let msg = format!("{{\"items\":[{}]}}", vec!["\"abcdefgh\""; 2000].join(","));
    let zz = z(msg.as_bytes());
    let (a, rest) = zz.split_at(zz.len() / 3);
    let (b2, d) = rest.split_at(rest.len() / 2);
    send(&mut c, false, RSV1, 0x1, a, MASK).await;
    send(&mut c, true, 0, 0x9, b"between", MASK).await;
    send(&mut c, false, 0, 0x0, b2, MASK).await;
    send(&mut c, false, 0, 0x0, d, MASK).await;
    send(&mut c, true, 0, 0x0, b"", MASK).await;
    // JSON validation holds the message until it ends: the ping comes first.
    let mut got = Vec::new();
    while got.len() < 5 {
        got.push(frame(&mut s).await.unwrap());
    }
    assert_eq!(got[0], (true, 0, 0x9, b"between".to_vec()));
    assert_eq!(got[1], (false, RSV1, 0x1, a.to_vec()));
    assert_eq!(got[2], (false, 0, 0x0, b2.to_vec()));
    assert_eq!(got[3], (false, 0, 0x0, d.to_vec()));
    assert_eq!(got[4], (true, 0, 0x0, vec![]));
    // And back: the backend's fragmented compressed message to the client.
    send(&mut s, false, RSV1, 0x2, a, None).await;
    send(&mut s, true, 0, 0xA, b"pong", None).await;
    send(&mut s, true, 0, 0x0, rest, None).await;
    assert_eq!(frame(&mut c).await.unwrap(), (false, RSV1, 0x2, a.to_vec()));
    assert_eq!(
        frame(&mut c).await.unwrap(),
        (true, 0, 0xA, b"pong".to_vec())
    );
    assert_eq!(frame(&mut c).await.unwrap(), (true, 0, 0x0, rest.to_vec()));
}

#[tokio::test]
async fn invalid_utf8_inside_compressed_text_closes_1007_both_ways() {
    let (_gw, _b, _h, mut c, _s) = link(BOTH, "").await;
    send(&mut c, true, RSV1, 0x1, &z(b"bad \xff\xfe text"), MASK).await;
    let (code, reason) = close_of(&mut c).await.unwrap();
    assert_eq!(code, 1007, "{reason}");
    assert!(reason.contains("UTF-8"), "{reason}");

    let (_gw, _b, _h, _c, mut s) = link(BOTH, "").await;
    // Split inside a character, across fragments: still judged whole.
    let zz = z("caf\u{e9} ok".as_bytes());
    send(&mut s, false, RSV1, 0x1, &zz[..2], None).await;
    send(&mut s, true, 0, 0x0, &zz[2..], None).await;
    send(&mut s, true, RSV1, 0x1, &z(b"\xc3"), None).await;
    assert_eq!(close_of(&mut s).await.unwrap().0, 1007);
}

#[tokio::test]
async fn invalid_compressed_data_closes_with_a_reason_either_side() {
    let (_gw, _b, _h, mut c, _s) = link(BOTH, "").await;
    // BTYPE 11 (reserved): not deflate.
    send(&mut c, true, RSV1, 0x2, &[0xff, 0xff, 0xff, 0xff], MASK).await;
    assert_eq!(
        close_of(&mut c).await.unwrap(),
        (1007, "invalid compressed data".into())
    );
    let (_gw, _b, _h, _c, mut s) = link(BOTH, "").await;
    send(&mut s, true, RSV1, 0x2, &[0xff, 0xff, 0xff, 0xff], None).await;
    assert_eq!(
        close_of(&mut s).await.unwrap(),
        (1007, "invalid compressed data".into())
    );
    // RFC 7692 section 6.1: RSV1 on a continuation frame is a protocol error.
    let (_gw, _b, _h, mut c, _s) = link(BOTH, "").await;
    send(&mut c, false, RSV1, 0x1, &z(b"a"), MASK).await;
    send(&mut c, true, RSV1, 0x0, b"x", MASK).await;
    assert_eq!(
        close_of(&mut c).await.unwrap(),
        (1002, "RSV1 set on a continuation frame".into())
    );
}

/// A deflate stream of `mib` MiB of zeros, built from one repeated block so
/// the test itself stays cheap: about 1 KiB on the wire per MiB inflated.
fn bomb(mib: usize) -> Vec<u8> {
    let mut c = Compress::new(Compression::best(), false);
    let zeros = vec![0u8; 1 << 20];
    let first = deflate(&mut c, &zeros);
    let again = deflate(&mut c, &zeros);
    let third = deflate(&mut c, &zeros);
    // Same state in, same bytes out: the block repeats.
    assert_eq!(again, third);
    // Each flushed block ends with the empty stored block RFC 7692 strips
    // from a message's end only: keep it between the repeats.
    let tail = [0, 0, 0xff, 0xff];
    let mut out = first;
    for _ in 1..mib {
        out.extend_from_slice(&tail);
        out.extend_from_slice(&again);
    }
    out
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_compression_bomb_closes_1009_with_bounded_memory() {
    // 1 MiB limit; the bomb inflates to 1,000 MiB from under 1 MiB on the wire
    // (deflate's best ratio), sent as several fragments.
    let wire = bomb(1000);
    assert!(wire.len() < 1 << 20, "{}", wire.len());
    let (_gw, _b, _h, mut c, mut s) = link(BOTH, "").await;
    let before = rss_kib();
    let parts: Vec<&[u8]> = wire.chunks(wire.len() / 4 + 1).collect();
    for (i, p) in parts.iter().enumerate() {
        let (rsv, op) = if i == 0 { (RSV1, 0x2) } else { (0, 0x0) };
        // The gateway may close before all of it is sent.
        let _ = c
            .tcp
            .write_all(&encode_frame(i + 1 == parts.len(), rsv, op, p, MASK))
            .await;
    }
    let (code, reason) = close_of(&mut c).await.unwrap();
    assert_eq!((code, reason.as_str()), (1009, "message too big"));
    let grown = rss_kib().saturating_sub(before);
    // Inflating it whole would take 1 GiB; the gateway holds at most a
    // window, a scratch chunk and the read buffers.
    assert!(grown < 32 * 1024, "RSS grew by {grown} KiB");
    // The backend got at most the part before the limit, never the end.
    drop(c);
    while let Some((fin, _, op, _)) = frame(&mut s).await {
        assert!(!(fin && op != 0x8), "a whole message was forwarded");
    }

    // The backend side, with a window kept (the backend refused
    // server_no_context_takeover): the same bound.
    let (_gw, _b, _h, _c, mut s) = link("permessage-deflate; client_no_context_takeover", "").await;
    let _ = s
        .tcp
        .write_all(&encode_frame(true, RSV1, 0x2, &wire, None))
        .await;
    assert_eq!(close_of(&mut s).await.unwrap().0, 1009);
}

#[tokio::test]
async fn limits_count_inflated_bytes_and_context_takeover_works_from_the_backend() {
    // The backend kept its context (it answered without
    // server_no_context_takeover): later messages refer to earlier ones.
    let (_gw, _b, _h, mut c, mut s) =
        link("permessage-deflate", "[limits]\nmax_message_bytes = 1000").await;
    let mut backend_z = Compress::new(Compression::default(), false);
    let m = vec![b'x'; 900];
    for _ in 0..3 {
        let zz = deflate(&mut backend_z, &m);
        send(&mut s, true, RSV1, 0x1, &zz, None).await;
        assert_eq!(frame(&mut c).await.unwrap(), (true, RSV1, 0x1, zz));
    }
    // 1,100 bytes inflated from a few on the wire: over the limit.
    let zz = deflate(&mut backend_z, &[b'x'; 1100]);
    assert!(zz.len() < 100);
    send(&mut s, true, RSV1, 0x1, &zz, None).await;
    assert_eq!(close_of(&mut s).await.unwrap().0, 1009);
    // Client side: a 1,100-byte message compressed small is refused too.
    let (_gw, _b, _h, mut c, _s) = link(BOTH, "[limits]\nmax_message_bytes = 1000").await;
    send(&mut c, true, RSV1, 0x1, &z(&[b'y'; 1100]), MASK).await;
    assert_eq!(close_of(&mut c).await.unwrap().0, 1009);
}

#[tokio::test]
async fn passthrough_forwards_compressed_messages_unjudged() {
    let (_gw, _b, _h, mut c, mut s) = link(
        BOTH,
        "[limits]\npermessage_deflate = \"passthrough\"\n[heartbeat]\napp_ping = 'ping'\napp_pong = 'pong'",
    )
    .await;
    for m in [&b"ping"[..], b"bad \xff utf8"] {
        let zz = z(m);
        send(&mut c, true, RSV1, 0x1, &zz, MASK).await;
        assert_eq!(frame(&mut s).await.unwrap(), (true, RSV1, 0x1, zz));
    }
}

/// Python `websockets` (installed by this test if missing), client and
/// backend at their defaults, which negotiate permessage-deflate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websockets_client_and_backend_with_compression() {
    use std::process::Stdio;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::process::Command;

    let have = Command::new("python3")
        .args(["-c", "import websockets.asyncio.server"])
        .status()
        .await
        .is_ok_and(|s| s.success());
    if !have {
        let st = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--break-system-packages",
                "websockets>=14",
            ])
            .status()
            .await
            .expect("python3");
        assert!(st.success(), "pip install websockets failed");
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/deflate_peers.py");
    let mut server = Command::new("python3")
        .args([script, "server"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let port: u16 = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("python backend did not start")
        .unwrap()
        .and_then(|l| l.strip_prefix("port ").map(|p| p.parse().unwrap()))
        .expect("a port line");
    let events = Arc::new(Mutex::new(Vec::<String>::new()));
    let ev2 = events.clone();
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            ev2.lock().unwrap().push(l);
        }
    });
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let gw = gateway(&config_for(
        &[addr],
        "[limits]\nmax_message_bytes = 65536\n\
         [heartbeat]\napp_ping = '{\"type\":\"ping\"}'\napp_pong = '{\"type\":\"pong\"}'",
    ))
    .await;
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(90),
        Command::new("python3")
            .args([script, "client", &format!("ws://{}", gw.addr)])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("python client timed out")
    .unwrap();
    assert!(
        out.status.success(),
        "python client: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let events = events.lock().unwrap().clone();
    let conn = events
        .iter()
        .find(|l| l.contains("\"conn\"") && l.contains("/py-ping"))
        .expect("backend saw the connection");
    assert!(conn.contains("server_no_context_takeover"), "{conn}");
    // The app ping never reached the backend; neither did the big message.
    assert!(
        !events.iter().any(|l| l.contains("\\\"ping\\\"")),
        "{events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|l| l.contains("/py-big") && l.contains("\"msg\""))
    );
    let utf8_close = events
        .iter()
        .find(|l| l.contains("/py-utf8-backend") && l.contains("\"close\""));
    assert!(utf8_close.is_some_and(|l| l.contains("1007")), "{events:?}");
}

#[test]
fn check_warns_when_passthrough_turns_promises_off() {
    let dir = std::env::temp_dir().join(format!("wsgate-deflate-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |mode: &str| {
        let file = dir.join(format!("{mode}.toml"));
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[limits]\npermessage_deflate = \"{mode}\"\n\
             [[backends]]\nname = \"b\"\nurl = \"ws://127.0.0.1:1\"\n"
        );
        std::fs::write(&file, text).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .args(["check", "-c"])
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = run("passthrough");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning")
            && stderr.contains("permessage_deflate")
            && stderr.contains("validate_utf8"),
        "{stderr}"
    );
    for mode in ["inspect", "off"] {
        let out = run(mode);
        assert!(out.status.success());
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
