//! Issue 13 (hardening, part 1): what trying wsgate as a hostile client
//! found, each with its regression test.
//!
//! - Refused upgrades say `Connection: close`, are closed right after the
//!   answer, and give their place under the caps back.
//! - Graceful shutdown (in-process and the real binary on SIGTERM) ends as
//!   soon as every client has answered the 1001, without waiting for FINs.
//! - `wsgate_closes_total{code}` cannot be grown by clients picking codes.
//!
//! The relay's own parts (1009 both ways, a failed write as a vanished
//! peer) are in `relay_offline.rs`, on a paused clock.

// tungstenite's callback returns its own (large) error response.
#![allow(clippy::result_large_err)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use futures_util::SinkExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::ErrorResponse;
use tokio_tungstenite::tungstenite::http;

const MASK: Option<[u8; 4]> = Some([0x0f, 0x1e, 0x2d, 0x3c]);

/// `[server]` keys go first in `config_for`'s extra text.
fn server_keys(keys: &str) -> String {
    format!("{keys}\n[health]\nhttp_path = \"\"\nws_path = \"\"\n")
}

/// What a refused request got: its status, its head, and whether the
/// gateway then closed the connection (EOF or reset) within `WAIT`.
#[derive(Debug)]
struct Refused {
    status: u16,
    head: String,
    closed: bool,
}

/// Sends `request` and reads the answer's head, then waits (bounded) for
/// the gateway to close the connection. The request is sent whole before
/// reading, as a client would.
async fn refused(addr: SocketAddr, request: &[u8]) -> Refused {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let _ = tcp.write_all(request).await;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("no answer in time")
            .unwrap_or(0);
        assert!(
            n > 0,
            "closed before a whole head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    // Read past the body to the end of the connection; keep-alive would
    // hold it open until WAIT passes.
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok();
    Refused {
        status,
        head,
        closed,
    }
}

fn upgrade_request(addr: SocketAddr, extra: &str) -> Vec<u8> {
    format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

fn assert_refused_and_closed(r: &Refused, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {r:?}");
    assert!(
        r.head.lines().any(|l| l.trim() == "connection: close"),
        "{what}: no Connection: close in\n{}",
        r.head
    );
    assert!(
        r.closed,
        "{what}: the connection stayed open after the refusal"
    );
}

/// Opens a tungstenite client and checks that it echoes.
async fn open_echo(g: &TestGateway) -> Client {
    let mut c = connect(&g.url("/")).await;
    c.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_msg(&mut c).await, Some(Message::text("hi")));
    c
}

/// Closes a client and waits for the gateway's answer and EOF.
async fn leave(mut c: Client) {
    c.close(None).await.unwrap();
    while next_msg(&mut c).await.is_some() {}
}

/// The cap test of the issue: two clients fill the gateway, a third is
/// refused and its connection closed; once one of the two leaves, the next
/// upgrade succeeds (the refused connection holds no place).
async fn cap_frees_its_place(keys: &str, status: u16) {
    let (b, _) = echo_backend().await;
    let g = gateway(&config_for(&[b], &server_keys(keys))).await;
    let first = open_echo(&g).await;
    let _second = open_echo(&g).await;
    let r = refused(g.addr, &upgrade_request(g.addr, "")).await;
    assert_refused_and_closed(&r, status, keys);
    assert!(r.head.contains("retry-after:"), "{}", r.head);
    leave(first).await;
    // The first client's relay ends a moment after its close handshake.
    let mut next = None;
    let deadline = tokio::time::Instant::now() + WAIT;
    while next.is_none() && tokio::time::Instant::now() < deadline {
        match try_connect(&g.url("/")).await {
            Ok(c) => next = Some(c),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let mut next = next.expect("a place was freed but upgrades are still refused");
    next.send(Message::text("in")).await.unwrap();
    assert_eq!(next_msg(&mut next).await, Some(Message::text("in")));
    // Full again: refused and closed, and the gateway still counts exactly
    // the two clients (another refusal, not a leak of places).
    let r = refused(g.addr, &upgrade_request(g.addr, "")).await;
    assert_refused_and_closed(&r, status, keys);
}

#[tokio::test]
async fn over_max_connections_503_closes_and_holds_no_place() {
    cap_frees_its_place("max_connections = 2", 503).await;
}

#[tokio::test]
async fn over_max_connections_per_ip_429_closes_and_holds_no_place() {
    cap_frees_its_place("max_connections_per_ip = 2", 429).await;
}

#[tokio::test]
async fn every_refusal_says_connection_close_and_closes() {
    // One gateway with an Origin allow-list and JWT auth for the gateway's
    // own refusals, and a WebSocket-only route (plain HTTP there: 426).
    let (b, _) = echo_backend().await;
    let extra = format!(
        "{}[auth]\nmode = \"jwt\"\njwt_secret = \"s3cret\"\n[[routes]]\npath = \"/\"\nserve = \"ws\"\n",
        server_keys("allowed_origins = [\"https://ok.example\"]")
    );
    let g = gateway(&config_for(&[b], &extra)).await;
    let a = g.addr;
    let ok_origin = "Origin: https://ok.example\r\n";
    let big = format!("Cookie: c={}\r\n", "x".repeat(20_000));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "bad key",
            format!(
                "GET / HTTP/1.1\r\nHost: {a}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n{ok_origin}\r\n"
            )
            .into_bytes(),
            400,
        ),
        (
            "plain GET on a WebSocket-only route",
            format!("GET / HTTP/1.1\r\nHost: {a}\r\n\r\n").into_bytes(),
            426,
        ),
        (
            "foreign Origin",
            upgrade_request(a, "Origin: https://evil.example\r\n"),
            403,
        ),
        ("no token", upgrade_request(a, ok_origin), 401),
        // hyper's own answer, before the service sees a request.
        ("head over the cap", upgrade_request(a, &big), 431),
    ];
    for (what, req, status) in cases {
        let r = refused(a, &req).await;
        assert_refused_and_closed(&r, status, what);
    }

    // A backend's own refusal, passed through: it too closes.
    for status in [404u16, 503] {
        let (b, _) = backend_with(move |_req, _resp| {
            let mut e = ErrorResponse::new(Some("no such room".into()));
            *e.status_mut() = http::StatusCode::from_u16(status).unwrap();
            // A backend that would keep the connection alive.
            e.headers_mut()
                .insert("connection", http::HeaderValue::from_static("keep-alive"));
            Err(e)
        })
        .await;
        let g = gateway(&config_for(&[b], "")).await;
        let r = refused(g.addr, &upgrade_request(g.addr, "")).await;
        assert_refused_and_closed(&r, status, "backend refusal");
        assert!(!r.head.contains("keep-alive"), "{}", r.head);
    }

    // No backend reachable: 502.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let g = gateway(&config_for(&[dead], "[routing]\nconnect_retries = 0\n")).await;
    let r = refused(g.addr, &upgrade_request(g.addr, "")).await;
    assert_refused_and_closed(&r, 502, "backend unreachable");
}

/// A raw client that answers the gateway's close frame at once but never
/// closes its socket: returns the code it got, and the socket (still open
/// on this side) once the gateway has sent FIN.
async fn answer_close_keep_socket(mut raw: Raw) -> (u16, Raw) {
    let (code, _) = raw.read_close().await.expect("no close frame");
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(b"bye");
    raw.send_frame(true, 0x8, &p, MASK).await;
    let mut chunk = [0u8; 256];
    tokio::time::timeout(WAIT, async {
        loop {
            match raw.tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the gateway never sent FIN");
    (code, raw)
}

/// The gateway closed its socket, not only its sending side: writes to it
/// are answered with a reset, so one of them fails.
async fn fully_closed(raw: &mut Raw) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if raw.tcp.write_all(b"x").await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Waits for the clients (each holding its socket open) and checks that the
/// gateway closed every one itself.
async fn all_answered_and_closed(clients: Vec<tokio::task::JoinHandle<(u16, Raw)>>) {
    let mut raws = Vec::new();
    for c in clients {
        let (code, raw) = c.await.unwrap();
        assert_eq!(code, 1001);
        raws.push(raw);
    }
    for raw in &mut raws {
        assert!(fully_closed(raw).await, "the gateway left a socket open");
    }
}

/// Five clients answer the shutdown's 1001 and keep their sockets open.
/// Both close frames have passed on each link, so the gateway closes them
/// itself and `shutdown` returns at once (it used to wait 5 s, the close
/// deadline, for the clients' FIN).
#[tokio::test]
async fn shutdown_does_not_wait_for_clients_fin() {
    let (b, _) = echo_backend().await;
    let g = gateway(&config_for(&[b], "")).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut raw = raw_upgrade(g.addr, "/", "").await;
        raw.send_frame(true, 0x1, b"ping", MASK).await;
        assert_eq!(raw.read_frame().await.unwrap().2, b"ping");
        clients.push(tokio::spawn(answer_close_keep_socket(raw)));
    }
    let t0 = Instant::now();
    tokio::time::timeout(WAIT, g.gw.shutdown())
        .await
        .expect("shutdown hung");
    let took = t0.elapsed();
    all_answered_and_closed(clients).await;
    println!("in-process shutdown with 5 answering clients: {took:?}");
    assert!(took < Duration::from_millis(1000), "shutdown took {took:?}");
}

/// Kills the child when the test ends, whatever happened.
struct Proc(tokio::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The same against the real binary: SIGTERM, five clients that answer
/// the close frame but never close their sockets, and the process must
/// exit (status 0) well under a second later.
#[tokio::test]
async fn sigterm_exits_once_clients_answer() {
    let (b, _) = echo_backend().await;
    let path = std::env::temp_dir().join(format!("wsgate-hardening-{}.toml", std::process::id()));
    let _tmp = TempFile(path.clone());
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [health]\nhttp_path = \"\"\nws_path = \"\"\n\
             [[backends]]\nname = \"b1\"\nurl = \"ws://{b}\"\n"
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["run", "-c"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn wsgate");
    let pid = child.id().expect("pid");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut proc = Proc(child);
    let listen: SocketAddr = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("wsgate exited before announcing");
            if let Some(a) = line.strip_prefix("wsgate listening on ws://") {
                return a.trim().parse().unwrap();
            }
        }
    })
    .await
    .expect("wsgate did not announce its address");
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut raw = raw_upgrade(listen, "/", "").await;
        raw.send_frame(true, 0x1, b"ping", MASK).await;
        assert_eq!(raw.read_frame().await.unwrap().2, b"ping");
        clients.push(tokio::spawn(answer_close_keep_socket(raw)));
    }
    let t0 = Instant::now();
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(st.success());
    let status = tokio::time::timeout(WAIT, proc.0.wait())
        .await
        .expect("wsgate did not exit after SIGTERM")
        .unwrap();
    let took = t0.elapsed();
    assert!(status.success(), "{status:?}");
    all_answered_and_closed(clients).await;
    println!("wsgate exit after SIGTERM with 5 answering clients: {took:?}");
    assert!(took < Duration::from_millis(1000), "exit took {took:?}");
}

/// 500 clients close with 500 distinct codes in 3000-4999; the series of
/// `wsgate_closes_total` stay a handful (the labels are a closed set).
#[tokio::test]
async fn close_codes_from_peers_do_not_grow_label_sets() {
    let (b, _) = echo_backend().await;
    let g = gateway(&config_for(&[b], "")).await;
    let codes: Vec<u16> = (3000..3250).chain(4100..4350).collect();
    assert_eq!(codes.len(), 500);
    // Ten at a time, each over its own connection.
    for batch in codes.chunks(10) {
        let tasks: Vec<_> = batch
            .iter()
            .map(|&code| {
                let addr = g.addr;
                tokio::spawn(async move {
                    let mut raw = raw_upgrade(addr, "/", "").await;
                    raw.send_frame(true, 0x8, &code.to_be_bytes(), MASK).await;
                    let (echoed, _) = raw.read_close().await.expect("no close answer");
                    assert_eq!(echoed, code);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    }
    eventually("all 500 closes counted", || async {
        metric(
            g.admin,
            "wsgate_closes_total{code=\"3xxx\",initiator=\"client\"}",
        )
        .await
            == 250.0
            && metric(
                g.admin,
                "wsgate_closes_total{code=\"4xxx\",initiator=\"client\"}",
            )
            .await
                == 250.0
    })
    .await;
    let (_, _, body) = common::http(g.admin, "GET", "/metrics").await;
    let series: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("wsgate_closes_total{"))
        .collect();
    assert!(series.len() <= 30, "{} series:\n{series:#?}", series.len());
    // No label anywhere carries a code a client picked.
    for code in &codes {
        let label = format!("code=\"{code}\"");
        assert!(!body.contains(&label), "{label} in /metrics");
    }
}
