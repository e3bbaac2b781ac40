//! Memory of idle proxied connections, counted by the allocator: what the
//! gateway's shard threads hold on the heap per connection once a link is
//! up and quiet (issue 18: at most 2 KiB of RSS per plain idle connection).
//!
//! A counting global allocator tags every allocation with the thread that
//! made it; only allocations by the gateway's shard threads
//! (`wsgate-shard-*`) are counted, wherever they are freed. The test's own
//! clients and backends run on the test's threads and do not count. No
//! timing is involved: the figures are bytes live on the heap after every
//! connection has echoed once.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, Ordering};

mod common;
use common::*;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes and blocks live that shard threads allocated.
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
static LIVE_BLOCKS: AtomicI64 = AtomicI64::new(0);
/// Live shard blocks by size (the last slot: this size or more), for the
/// breakdown the test prints.
const SIZES: usize = 4097;
static BY_SIZE: [AtomicI64; SIZES] = [const { AtomicI64::new(0) }; SIZES];

/// Each block carries a prefix saying whether a shard thread made it, so a
/// free on any thread knows whether to count it.
const PREFIX: usize = 16;

struct Counting;

thread_local! {
    /// None: not known yet; Some(true): a gateway shard thread.
    static SHARD: Cell<Option<bool>> = const { Cell::new(None) };
    /// Set while the thread's name is looked up (which may allocate).
    static LOOKING: Cell<bool> = const { Cell::new(false) };
}

fn on_shard() -> bool {
    SHARD
        .try_with(|s| {
            if let Some(v) = s.get() {
                return v;
            }
            if LOOKING.with(|l| l.replace(true)) {
                return false;
            }
            let v = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("wsgate-shard"));
            LOOKING.with(|l| l.set(false));
            s.set(Some(v));
            v
        })
        .unwrap_or(false)
}

fn outer(layout: Layout) -> (Layout, usize) {
    let off = PREFIX.max(layout.align());
    let l =
        Layout::from_size_align(layout.size() + off, layout.align().max(PREFIX)).expect("layout");
    (l, off)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let (l, off) = outer(layout);
        // SAFETY: `l` has a non-zero size (the prefix).
        let p = unsafe { System.alloc(l) };
        if p.is_null() {
            return p;
        }
        let shard = on_shard();
        if shard {
            LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
            LIVE_BLOCKS.fetch_add(1, Ordering::Relaxed);
            BY_SIZE[layout.size().min(SIZES - 1)].fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the block is at least `off` >= PREFIX bytes and aligned to
        // at least PREFIX, so the tag byte just before the user part is ours.
        unsafe {
            *p.add(off - 1) = shard as u8;
            p.add(off)
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let (l, off) = outer(layout);
        // SAFETY: `ptr` came from `alloc` with the same layout, so the block
        // starts `off` bytes before it and the tag is the byte before `ptr`.
        unsafe {
            if *ptr.sub(1) == 1 {
                LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
                LIVE_BLOCKS.fetch_sub(1, Ordering::Relaxed);
                BY_SIZE[layout.size().min(SIZES - 1)].fetch_sub(1, Ordering::Relaxed);
            }
            System.dealloc(ptr.sub(off), l)
        }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn by_size() -> Vec<i64> {
    BY_SIZE.iter().map(|c| c.load(Ordering::Relaxed)).collect()
}

fn live() -> (i64, i64) {
    (
        LIVE_BYTES.load(Ordering::Relaxed),
        LIVE_BLOCKS.load(Ordering::Relaxed),
    )
}

/// A backend that answers every upgrade with a 101 and then echoes raw
/// bytes (frames from the gateway are masked; echoing them unmasked is not
/// needed: the test only checks that bytes come back).
async fn raw_echo_backend() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Some(mut raw) = backend_accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                loop {
                    match raw.tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            // Unmask and answer with one unmasked frame of
                            // the same payload (small frames only).
                            let Ok(Some(h)) = wsgate::ws::frame::parse_header(&buf[..n]) else {
                                return;
                            };
                            let mut p = buf[h.header_len..n].to_vec();
                            if let Some(m) = h.mask {
                                wsgate::ws::frame::apply_mask(&mut p, m, 0);
                            }
                            let f = encode_frame(true, 0, h.opcode, &p, None);
                            if raw.tcp.write_all(&f).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Opens `n` links through the gateway; each echoes one small message, so
/// its relay is up and has run.
async fn open(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut raw = raw_upgrade(addr, "/", "").await;
        raw.send_frame(true, 0x2, b"hello", Some([1, 2, 3, 4]))
            .await;
        let (_, op, p) = raw.read_frame().await.expect("echo");
        assert_eq!((op, &p[..]), (0x2, &b"hello"[..]));
        out.push(raw.tcp);
    }
    out
}

/// A TLS client trusting `cert`, offering `http/1.1`.
fn tls_client(cert: &rustls::pki_types::CertificateDer<'static>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    tls_connector(roots)
}

/// Opens `n` wss:// links; each echoes one small message.
async fn open_tls(
    addr: std::net::SocketAddr,
    n: usize,
    tls: &tokio_rustls::TlsConnector,
) -> Vec<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut s = tokio::time::timeout(WAIT, tls.connect(name, tcp))
            .await
            .expect("TLS handshake timed out")
            .unwrap();
        let req = "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
                   Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                   Sec-WebSocket-Version: 13\r\n\r\n";
        s.write_all(req.as_bytes()).await.unwrap();
        s.write_all(&encode_frame(true, 0, 0x2, b"hello", Some([1, 2, 3, 4])))
            .await
            .unwrap();
        // The 101's head, then the echoed frame (7 bytes).
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        while !(got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"hello")) {
            let k = tokio::time::timeout(WAIT, s.read(&mut chunk))
                .await
                .expect("echo timed out")
                .unwrap();
            assert!(k > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..k]);
        }
        assert!(got.starts_with(b"HTTP/1.1 101"));
        out.push(s);
    }
    out
}

/// Heap bytes (and blocks) the gateway holds per idle plain connection.
async fn per_idle_connection(extra: &str) -> (i64, i64) {
    per_idle(extra, None).await
}

/// The same over TLS (a self-signed ECDSA P-256 `localhost` certificate).
async fn per_idle_tls_connection() -> (i64, i64) {
    let dir = std::env::temp_dir().join(format!("wsgate-idle-mem-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let extra = format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert_path.display(),
        key_path.display()
    );
    let r = per_idle(&extra, Some(tls_client(cert.der()))).await;
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// A block this big or bigger is a buffer, not connection state.
const BUFFER_SIZED: usize = 2048;

/// The counters are process-wide: one measurement at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn per_idle(extra: &str, tls: Option<tokio_rustls::TlsConnector>) -> (i64, i64) {
    let _one_at_a_time = SERIAL.lock().await;
    let backend = raw_echo_backend().await;
    let gw = gateway(&config_for(&[backend], extra)).await;
    // Warm up: thread-local buffers, pools, lazily built metric series.
    let (warm, warm_tls) = match &tls {
        None => (open(gw.addr, 8).await, Vec::new()),
        Some(t) => (Vec::new(), open_tls(gw.addr, 8, t).await),
    };
    let (b0, n0) = live();
    let s0 = by_size();
    const N: usize = 200;
    let (conns, conns_tls) = match &tls {
        None => (open(gw.addr, N).await, Vec::new()),
        Some(t) => (Vec::new(), open_tls(gw.addr, N, t).await),
    };
    let (b1, n1) = live();
    let s1 = by_size();
    let per = ((b1 - b0) / N as i64, (n1 - n0) / N as i64);
    println!("per idle connection: {} bytes in {} blocks", per.0, per.1);
    // No buffer-sized block stays per connection (a read or pending buffer,
    // rustls' deframer buffer, hyper's buffers).
    let buffers: i64 = (BUFFER_SIZED..SIZES).map(|i| s1[i] - s0[i]).sum();
    assert!(
        buffers < N as i64 / 10,
        "{buffers} blocks of {BUFFER_SIZED} bytes or more stay for {N} idle connections"
    );
    for (size, (a, b)) in s0.iter().zip(&s1).enumerate() {
        if b - a != 0 {
            println!(
                "  {size:>5} bytes: {:+.2} blocks per connection",
                (b - a) as f64 / N as f64
            );
        }
    }
    drop((conns, conns_tls, warm, warm_tls));
    per
}

/// An idle plain link holds, on the heap (tokio 1.54, x86_64):
/// - its task: tokio's cell (header, scheduler handle, trailer) around
///   `conn::task::Connection`, 128-aligned: 768 bytes;
/// - the two sockets' registrations with the reactor (`ScheduledIo`,
///   128-aligned, in an `Arc`): 2 x 256 bytes;
/// - the one timer (`Sleep`, 112) and the wait for its backend's
///   cancellation (72), in one box: 184; its place under the caps (`Arc`): 48.
///
/// No read buffer, no pending buffer, nothing of hyper's, and no copy of a
/// client ID that is only the peer's address. 1,512 bytes in 5 blocks when
/// this was written (1,777 in 7 before issue 18).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_plain_connection_holds_little_heap() {
    let (bytes, blocks) = per_idle_connection("").await;
    assert!(bytes <= 1536, "{bytes} bytes per idle connection");
    assert!(blocks <= 5, "{blocks} heap blocks per idle connection");
}

/// An idle wss:// link: the plain link's share plus the TLS session:
/// the boxed `TlsStream` with rustls' `ServerConnection` (1,224), the two
/// directions' record keys and rustls' small state (queues, SNI, ALPN).
/// aws-lc-rs allocates part of its key state with C's malloc, which this
/// counter does not see (RSS: about 5.7 KiB per idle wss:// connection). No read buffer: rustls keeps its 4 KiB deframer buffer only
/// while a record is partly read (vendor/WSGATE-PATCHES.md). 4,065 bytes
/// in 17 blocks when this was written (with ring's keys: 5,120 with the
/// patch, 9,217 in 19 blocks without it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tls_connection_holds_no_read_buffer() {
    let (bytes, blocks) = per_idle_tls_connection().await;
    assert!(bytes <= 4608, "{bytes} bytes per idle TLS connection");
    assert!(blocks <= 18, "{blocks} heap blocks per idle TLS connection");
}
