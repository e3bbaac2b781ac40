//! Test harness: a gateway in-process on port 0 in front of real WebSocket
//! backends (tokio-tungstenite servers on port 0), real clients, raw-socket
//! helpers for frames no well-behaved client sends, and a tiny HTTP GET for
//! the admin endpoints. Every wait is bounded.
// The callback type and its error are tungstenite's; the echo loop reads best unfolded.
#![allow(dead_code, clippy::result_large_err, clippy::collapsible_match)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wsgate::config::Listen;
use wsgate::{Config, Gateway};

pub mod binary;
pub mod named;

/// Bound for any single wait in tests.
pub const WAIT: Duration = Duration::from_secs(10);

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A gateway started in-process on ephemeral ports.
pub struct TestGateway {
    pub gw: Gateway,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl TestGateway {
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }
}

/// Starts a gateway from config text; `listen` addresses in it are ignored
/// (the gateway gets port-0 listeners).
pub async fn gateway(config: &str) -> TestGateway {
    let mut config = Config::parse(config).unwrap_or_else(|e| panic!("test config: {e}\n{config}"));
    config.server.listen = loopback_port_0();
    config.admin.listen = loopback_port_0();
    // As in production: sharded listeners, one runtime per shard.
    let gw = Gateway::bind(config, SHARDS).await.unwrap();
    let (addr, admin) = (gw.addrs()[0], gw.admin_addrs()[0]);
    TestGateway { gw, addr, admin }
}

/// Shards per test gateway: two, like production on this two-core machine.
pub const SHARDS: usize = 2;

/// `127.0.0.1:0`: the kernel picks a free port.
pub fn loopback_port_0() -> Listen {
    Listen(vec!["127.0.0.1:0".parse().unwrap()])
}

/// Config text for one or more backends, plus extra sections. Health checks
/// are off unless `extra` turns them on.
pub fn config_for(backends: &[SocketAddr], extra: &str) -> String {
    let mut s = String::from("[server]\nlisten = \"127.0.0.1:0\"\n");
    if !extra.contains("[health]") {
        s.push_str("[health]\nhttp_path = \"\"\nws_path = \"\"\n");
    }
    s.push_str(extra);
    s.push('\n');
    for (i, b) in backends.iter().enumerate() {
        s.push_str(&format!(
            "[[backends]]\nname = \"b{}\"\nurl = \"ws://{b}\"\n",
            i + 1
        ));
    }
    s
}

/// What a backend saw: upgrade request heads and messages.
#[derive(Default)]
pub struct Seen {
    pub requests: Vec<(String, Vec<(String, String)>)>,
    pub messages: Vec<Message>,
}

pub type SeenRef = Arc<Mutex<Seen>>;

/// An echo backend that records what it sees. Pings are answered by
/// tungstenite and recorded too.
pub async fn echo_backend() -> (SocketAddr, SeenRef) {
    backend_with(|_req, resp| Ok(resp)).await
}

/// An echo backend with a custom upgrade callback (choose a subprotocol,
/// refuse with a status, ...).
pub async fn backend_with<F>(callback: F) -> (SocketAddr, SeenRef)
where
    F: Fn(
            &Request,
            Response,
        )
            -> Result<Response, tokio_tungstenite::tungstenite::handshake::server::ErrorResponse>
        + Clone
        + Send
        + Sync
        + Unpin
        + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: SeenRef = Arc::default();
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let seen = s2.clone();
            let cb = callback.clone();
            tokio::spawn(async move {
                let seen_req = seen.clone();
                let cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                    .max_message_size(Some(64 << 20))
                    .max_frame_size(Some(64 << 20));
                let ws = tokio_tungstenite::accept_hdr_async_with_config(
                    tcp,
                    move |req: &Request, resp: Response| {
                        let headers = req
                            .headers()
                            .iter()
                            .map(|(k, v)| {
                                (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())
                            })
                            .collect();
                        seen_req
                            .lock()
                            .unwrap()
                            .requests
                            .push((req.uri().to_string(), headers));
                        cb(req, resp)
                    },
                    Some(cfg),
                )
                .await;
                let Ok(mut ws) = ws else { return };
                while let Some(Ok(msg)) = ws.next().await {
                    seen.lock().unwrap().messages.push(msg.clone());
                    match msg {
                        Message::Text(ref t) if t.as_str().starts_with("close:") => {
                            // close:CODE:REASON asks the backend to close.
                            let mut parts = t.as_str().splitn(3, ':').skip(1);
                            let code: u16 = parts.next().unwrap().parse().unwrap();
                            let reason = parts.next().unwrap_or("").to_string();
                            let _ = ws
                                .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                                    code: code.into(),
                                    reason: reason.into(),
                                }))
                                .await;
                        }
                        Message::Text(_) | Message::Binary(_) => {
                            if ws.send(msg).await.is_err() {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Connects a tungstenite client (big messages allowed).
pub async fn connect(url: &str) -> Client {
    try_connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

pub async fn try_connect(url: &str) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
    let cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async_with_config(url, Some(cfg), false),
    )
    .await
    .expect("connect timed out")
    .map(|(ws, _)| ws)
}

/// Next data or close message, skipping pings/pongs, bounded.
pub async fn next_msg(ws: &mut Client) -> Option<Message> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no message in time")
        {
            Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_))) => continue,
            Some(Ok(m)) => return Some(m),
            Some(Err(_)) | None => return None,
        }
    }
}

/// A raw TCP connection that has completed a WebSocket upgrade through the
/// gateway, for sending frames by hand.
pub struct Raw {
    pub tcp: TcpStream,
    pub buf: Vec<u8>,
}

/// Opens a raw upgraded connection; panics unless the answer is 101.
pub async fn raw_upgrade(addr: SocketAddr, path: &str, extra_headers: &str) -> Raw {
    let (status, raw) = raw_request(addr, path, extra_headers).await;
    assert_eq!(status, 101, "upgrade refused");
    raw
}

/// Sends an upgrade request by hand; returns the status and the stream.
pub async fn raw_request(addr: SocketAddr, path: &str, extra_headers: &str) -> (u16, Raw) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("response timed out")
            .unwrap();
        assert!(n > 0, "connection closed before a response");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let rest = buf[head_end..].to_vec();
    (status, Raw { tcp, buf: rest })
}

impl Raw {
    /// Sends one frame; `mask` = Some for client frames.
    pub async fn send_frame(
        &mut self,
        fin: bool,
        opcode: u8,
        payload: &[u8],
        mask: Option<[u8; 4]>,
    ) {
        let f = encode_frame(fin, 0, opcode, payload, mask);
        self.tcp.write_all(&f).await.unwrap();
    }

    /// Reads the next frame: (fin, opcode, unmasked payload); None on EOF.
    pub async fn read_frame(&mut self) -> Option<(bool, u8, Vec<u8>)> {
        loop {
            if let Ok(Some(h)) = wsgate::ws::frame::parse_header(&self.buf) {
                let total = h.header_len + h.payload_len as usize;
                if self.buf.len() >= total {
                    let mut payload = self.buf[h.header_len..total].to_vec();
                    if let Some(m) = h.mask {
                        wsgate::ws::frame::apply_mask(&mut payload, m, 0);
                    }
                    self.buf.drain(..total);
                    return Some((h.fin, h.opcode, payload));
                }
            }
            let mut chunk = [0u8; 65536];
            let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
                .await
                .expect("frame timed out")
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads frames until a close frame; returns its code and reason.
    pub async fn read_close(&mut self) -> Option<(u16, String)> {
        while let Some((_, op, p)) = self.read_frame().await {
            if op == 0x8 {
                let code = if p.len() >= 2 {
                    u16::from_be_bytes([p[0], p[1]])
                } else {
                    1005
                };
                let reason = String::from_utf8_lossy(p.get(2..).unwrap_or(&[])).to_string();
                return Some((code, reason));
            }
        }
        None
    }
}

/// Encodes a frame by hand (any bits, any mask), for hostile-input tests.
pub fn encode_frame(
    fin: bool,
    rsv: u8,
    opcode: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) -> Vec<u8> {
    let mut f = vec![(if fin { 0x80 } else { 0 }) | (rsv << 4) | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n < 65536 => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mut p = payload.to_vec();
    if let Some(k) = mask {
        f.extend_from_slice(&k);
        wsgate::ws::frame::apply_mask(&mut p, k, 0);
    }
    f.extend_from_slice(&p);
    f
}

/// Plain HTTP/1.1 request; returns (status, headers, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut tcp = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// The value of one metric line (exact name with labels) in `/metrics`.
pub async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let (_, _, body) = http(admin, "GET", "/metrics").await;
    body.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|v| v.strip_prefix(' '))
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0.0)
}

/// Polls `cond` every 20 ms until true or `WAIT` passes.
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Server side of the upgrade, by hand: read the head, answer 101.
pub async fn backend_accept(mut tcp: TcpStream) -> Option<Raw> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let key = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| v.trim().to_string())
    })?;
    let accept = wsgate::conn::headers::accept_key(key.as_bytes());
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept.to_str().unwrap()
    );
    tcp.write_all(resp.as_bytes()).await.ok()?;
    Some(Raw {
        tcp,
        buf: buf[end..].to_vec(),
    })
}

/// A TLS client (ring; TLS 1.2 and 1.3) trusting `roots`, offering
/// `http/1.1` as browsers do for WebSocket.
pub fn tls_connector(roots: rustls::RootCertStore) -> tokio_rustls::TlsConnector {
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}
