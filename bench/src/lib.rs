//! Shared pieces of the wsgate benchmark harness: frame encoding (parsing and masking
//! are wsgate's own `frame` module),
//! the opening handshake for both sides, `ws://` URL parsing, loopback source-address
//! spreading and `/proc` sampling.
//!
//! This code exists to generate and absorb load as cheaply as possible. It is not a
//! general WebSocket implementation: no extensions (beyond the `--deflate` offer), no
//! UTF-8 validation; TLS only as a client, TLS 1.3 only, for the `wss://` benchmarks.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// RFC 6455 section 5.2 opcodes: wsgate's own.
pub use wsgate::ws::frame::opcode;

/// Largest request/response head we accept during the opening handshake.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Largest frame payload either binary accepts: far above anything the benchmark sends.
pub const MAX_FRAME_PAYLOAD: u64 = 64 * 1024 * 1024;

/// A parsed frame header (RFC 6455 section 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    /// RSV1: a compressed message's first frame (permessage-deflate, which the
    /// harness negotiates only with `--deflate`).
    pub rsv1: bool,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub header_len: usize,
    pub payload_len: usize,
}

impl Header {
    pub fn frame_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// Parses a frame header from the start of `buf`. `Ok(None)` means "need more bytes".
/// The parsing is wsgate's own (`wsgate::ws::frame`); the harness only refuses what it
/// never negotiates (RSV2, RSV3) and frames beyond its own size cap.
pub fn parse_header(buf: &[u8]) -> io::Result<Option<Header>> {
    let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let Some(h) = wsgate::ws::frame::parse_header(buf).map_err(|e| invalid(e.to_string()))? else {
        return Ok(None);
    };
    if h.rsv & 0b011 != 0 {
        return Err(invalid("RSV2/RSV3 set".into()));
    }
    if h.payload_len > MAX_FRAME_PAYLOAD {
        return Err(invalid("frame too large".into()));
    }
    Ok(Some(Header {
        fin: h.fin,
        rsv1: h.rsv & 0b100 != 0,
        opcode: h.opcode,
        mask: h.mask,
        header_len: h.header_len,
        payload_len: h.payload_len as usize,
    }))
}

/// Appends a frame header to `out`.
pub fn put_header(out: &mut Vec<u8>, fin: bool, opcode: u8, len: usize, mask: Option<[u8; 4]>) {
    out.push(if fin { 0x80 } else { 0 } | (opcode & 0x0F));
    let mbit = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(mbit | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(mbit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mbit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if let Some(m) = mask {
        out.extend_from_slice(&m);
    }
}

/// XORs `data` with the 4-byte mask (RFC 6455 section 5.3), starting at mask offset 0.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    wsgate::ws::frame::apply_mask(data, mask, 0);
}

/// A fresh client masking key. RFC 6455 asks for an unpredictable key per frame.
pub fn mask_key() -> [u8; 4] {
    fastrand::u32(..).to_ne_bytes()
}

/// Appends a complete masked client frame carrying `payload` to `out`.
pub fn put_masked_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    let key = mask_key();
    put_header(out, true, opcode, payload.len(), Some(key));
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], key);
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 section 4.2.2).
pub fn accept_key(key: &str) -> String {
    let v = wsgate::conn::headers::accept_key(key.trim().as_bytes());
    v.to_str().expect("base64 is ASCII").to_string()
}

/// Position just past the `\r\n\r\n` ending an HTTP head, if present.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Value of an HTTP header in a raw head, matched case-insensitively.
pub fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A parsed `ws://host:port/path?query` or `wss://...` URL.
#[derive(Debug, Clone)]
pub struct WsUrl {
    pub addr: SocketAddr,
    pub host: String,
    pub path_and_query: String,
    /// `wss://`: TLS over the TCP connection.
    pub tls: bool,
}

impl WsUrl {
    pub fn parse(url: &str) -> Result<WsUrl, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("ws://") {
            (false, r)
        } else {
            return Err(format!("{url}: only ws:// and wss:// URLs are supported"));
        };
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => match rest.find('?') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            },
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        let addr: SocketAddr = host
            .parse()
            .map_err(|_| format!("{url}: host must be an IP:port (loopback benchmark)"))?;
        Ok(WsUrl {
            addr,
            host: host.to_string(),
            path_and_query: path,
            tls,
        })
    }

    /// The request target with `client_id=<id>` appended to the query.
    pub fn target_with_client_id(&self, id: &str) -> String {
        let sep = if self.path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        format!("{}{sep}client_id={id}", self.path_and_query)
    }
}

/// Hands out loopback source addresses 127.1.0.1, 127.1.0.2, ... (skipping .0 and .255
/// last octets), so client sockets never compete for one address's ephemeral ports.
pub struct SourceAddrs {
    next: AtomicU32,
    count: u32,
}

impl SourceAddrs {
    /// `count` distinct addresses, cycled.
    pub fn new(count: u32) -> SourceAddrs {
        SourceAddrs {
            next: AtomicU32::new(0),
            count: count.max(1),
        }
    }

    pub fn next(&self) -> Ipv4Addr {
        let k = self.next.fetch_add(1, Ordering::Relaxed) % self.count;
        // 254 usable last octets (1..=254) per /24, starting at 127.1.0.0/24.
        let third = k / 254;
        let fourth = k % 254 + 1;
        let second = 1 + third / 256;
        Ipv4Addr::new(127, second as u8, (third % 256) as u8, fourth as u8)
    }
}

/// Connects to `addr`, optionally from the given source address (port chosen by the kernel).
pub async fn connect_from(addr: SocketAddr, src: Option<Ipv4Addr>) -> io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    if let Some(ip) = src {
        sock.set_reuseaddr(true)?;
        sock.bind(SocketAddr::V4(SocketAddrV4::new(ip, 0)))?;
    }
    let s = sock.connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Opens a TCP connection and performs the client opening handshake (RFC 6455 section
/// 4.1). Returns the stream and any bytes read past the 101 response head.
pub async fn ws_connect(
    url: &WsUrl,
    target: &str,
    src: Option<Ipv4Addr>,
    timeout: Duration,
) -> io::Result<(TcpStream, Vec<u8>)> {
    ws_connect_with(url, target, src, timeout, "").await
}

/// The permessage-deflate offer of `--deflate` runs: no context takeover
/// either way, so every message is a self-contained deflate stream.
pub const DEFLATE_OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; \
     client_no_context_takeover; server_no_context_takeover\r\n";

/// [`ws_connect`] with extra request header lines (each ending in CRLF).
pub async fn ws_connect_with(
    url: &WsUrl,
    target: &str,
    src: Option<Ipv4Addr>,
    timeout: Duration,
    extra_headers: &str,
) -> io::Result<(TcpStream, Vec<u8>)> {
    let fut = async {
        let mut s = connect_from(url.addr, src).await?;
        let rest = upgrade(&mut s, url, target, extra_headers).await?;
        Ok((s, rest))
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "connect/upgrade timed out",
        )),
    }
}

/// The client opening handshake over an open stream (RFC 6455 section 4.1): sends the
/// request, reads the 101 and checks its accept key. Returns the bytes read past the
/// response head.
pub async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    url: &WsUrl,
    target: &str,
    extra_headers: &str,
) -> io::Result<Vec<u8>> {
    let key_bytes: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    let key = base64::engine::general_purpose::STANDARD.encode(key_bytes);
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n",
        url.host
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        if let Some(e) = head_end(&buf) {
            break e;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response head too large",
            ));
        }
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during handshake",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "101" {
        let first = head.lines().next().unwrap_or("").to_string();
        return Err(io::Error::other(format!("upgrade refused: {first}")));
    }
    let want = accept_key(&key);
    if header_value(&head, "sec-websocket-accept") != Some(want.as_str()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad Sec-WebSocket-Accept",
        ));
    }
    Ok(buf[end..].to_vec())
}

/// A client connection: plain TCP, or TLS over TCP for `wss://`.
pub enum Stream {
    Plain(TcpStream),
    // Boxed: the rustls client state is large, and most connections are plain.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// Waits for bytes on a quiet connection and reads them into `chunk` (0 = EOF).
    /// Plain connections wait for readability first, so an idle connection holds no
    /// read buffer; TLS keeps its own record buffer in rustls anyway.
    pub async fn read_idle(&mut self, chunk: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => loop {
                s.readable().await?;
                match s.try_read(chunk) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    r => return r,
                }
            },
            Stream::Tls(s) => s.read(chunk).await,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The step of [`ws_open`] that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// TCP connect (refused, reset, timed out).
    Connect = 0,
    /// TLS handshake.
    Tls = 1,
    /// HTTP upgrade: anything but a good 101 (a 502 or 503 included).
    Upgrade = 2,
}

/// A failed [`ws_open`]: which step, and why.
#[derive(Debug)]
pub struct OpenError {
    pub phase: Phase,
    pub error: io::Error,
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.phase, self.error)
    }
}

impl From<OpenError> for io::Error {
    fn from(e: OpenError) -> io::Error {
        io::Error::new(e.error.kind(), e.to_string())
    }
}

/// Opens a `ws://` or `wss://` connection (TCP, TLS when the URL says so, upgrade),
/// all within `timeout`. `tls` must be given for `wss://` URLs.
pub async fn ws_open(
    url: &WsUrl,
    target: &str,
    src: Option<Ipv4Addr>,
    timeout: Duration,
    extra_headers: &str,
    tls: Option<&TlsConnector>,
) -> Result<(Stream, Vec<u8>), OpenError> {
    // Where the attempt is, so a timeout can be charged to the right step.
    let phase = AtomicU8::new(Phase::Connect as u8);
    let at = |p: Phase| phase.store(p as u8, Ordering::Relaxed);
    let fail = |p: Phase| move |error| OpenError { phase: p, error };
    let fut = async {
        let tcp = connect_from(url.addr, src)
            .await
            .map_err(fail(Phase::Connect))?;
        let mut s = if url.tls {
            at(Phase::Tls);
            let connector = tls.ok_or_else(|| OpenError {
                phase: Phase::Tls,
                error: io::Error::other("wss:// URL without a TLS client (--ca)"),
            })?;
            let name = ServerName::IpAddress(url.addr.ip().into());
            let t = connector
                .connect(name, tcp)
                .await
                .map_err(fail(Phase::Tls))?;
            Stream::Tls(Box::new(t))
        } else {
            Stream::Plain(tcp)
        };
        at(Phase::Upgrade);
        let rest = upgrade(&mut s, url, target, extra_headers)
            .await
            .map_err(fail(Phase::Upgrade))?;
        Ok((s, rest))
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => {
            let p = match phase.load(Ordering::Relaxed) {
                0 => Phase::Connect,
                1 => Phase::Tls,
                _ => Phase::Upgrade,
            };
            Err(OpenError {
                phase: p,
                error: io::Error::new(io::ErrorKind::TimedOut, "timed out"),
            })
        }
    }
}

/// A TLS 1.3 client (ring) that trusts only the PEM certificates in `ca_path` and
/// never resumes: every connection is a full handshake, as the benchmark measures.
pub fn tls_connector(ca_path: &str) -> Result<TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_path)
        .map_err(|e| format!("{ca_path}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{ca_path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{ca_path}: no certificate"));
    }
    for c in certs {
        roots.add(c).map_err(|e| format!("{ca_path}: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    // What browsers offer for a WebSocket.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(cfg)))
}

/// USER_HZ: the unit of utime/stime in /proc/PID/stat (100 on every Linux userland).
pub const CLOCK_TICKS_PER_SEC: u64 = 100;

/// utime + stime of a process (all its threads), in clock ticks.
pub fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Summed CPU ticks of several processes (missing ones count as zero).
pub fn total_cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| proc_cpu_ticks(*p)).sum()
}

/// CPU ticks of this process.
pub fn self_cpu_ticks() -> u64 {
    proc_cpu_ticks(std::process::id()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_example() {
        // RFC 6455 section 1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn header_roundtrip_all_length_forms() {
        for len in [0usize, 125, 126, 65535, 65536, 1 << 20] {
            let mut out = Vec::new();
            put_header(&mut out, true, opcode::BINARY, len, Some([1, 2, 3, 4]));
            let h = parse_header(&out).unwrap().unwrap();
            assert_eq!(h.payload_len, len);
            assert_eq!(h.header_len, out.len());
            assert_eq!(h.mask, Some([1, 2, 3, 4]));
            assert!(h.fin);
            assert_eq!(h.opcode, opcode::BINARY);
            assert!(parse_header(&out[..out.len() - 1]).unwrap().is_none());
        }
    }

    #[test]
    fn mask_is_an_involution() {
        let orig: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut d = orig.clone();
        apply_mask(&mut d, [9, 8, 7, 6]);
        assert_ne!(d, orig);
        for (i, b) in d.iter().enumerate() {
            assert_eq!(*b, orig[i] ^ [9, 8, 7, 6][i % 4]);
        }
        apply_mask(&mut d, [9, 8, 7, 6]);
        assert_eq!(d, orig);
    }

    #[test]
    fn url_parsing() {
        let u = WsUrl::parse("ws://127.0.0.1:8080").unwrap();
        assert_eq!(u.path_and_query, "/");
        assert_eq!(u.target_with_client_id("c1"), "/?client_id=c1");
        let u = WsUrl::parse("ws://127.0.0.1:8080/x?a=b").unwrap();
        assert_eq!(u.target_with_client_id("c1"), "/x?a=b&client_id=c1");
        assert!(!u.tls);
        let u = WsUrl::parse("wss://127.0.0.1:8443/").unwrap();
        assert!(u.tls);
        assert_eq!(u.addr.port(), 8443);
        assert!(WsUrl::parse("http://127.0.0.1:80/").is_err());
    }

    #[test]
    fn source_addrs_skip_zero_and_broadcast_octets() {
        let s = SourceAddrs::new(600);
        let v: Vec<Ipv4Addr> = (0..600).map(|_| s.next()).collect();
        assert_eq!(v[0], Ipv4Addr::new(127, 1, 0, 1));
        assert_eq!(v[253], Ipv4Addr::new(127, 1, 0, 254));
        assert_eq!(v[254], Ipv4Addr::new(127, 1, 1, 1));
        assert_eq!(s.next(), Ipv4Addr::new(127, 1, 0, 1));
    }
}
