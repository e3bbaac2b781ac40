//! `wsgate-bench-echo`: a minimal, fast WebSocket echo backend for benchmarks.
//!
//! After the HTTP upgrade it works on raw frames: data frames (text, binary,
//! continuation) are echoed with their opcode and FIN bit, pings are answered with
//! pongs, a close is answered with the same close payload and then the TCP connection
//! is closed (server closes first, RFC 6455 section 7.1.1). Plain HTTP requests are
//! served with keep-alive: `GET /64k` gets 65536 bytes, anything else `ok\n` (so HTTP
//! health checks pass). It never validates UTF-8 and never compresses: when a client
//! offers permessage-deflate it accepts without context takeover either way and echoes
//! compressed frames (RSV1) as they came, which is valid since each of the client's
//! messages is then a self-contained deflate stream.

use std::io;
use std::net::SocketAddr;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wsgate_bench::{
    MAX_HEAD_BYTES, accept_key, apply_mask, head_end, header_value, opcode, parse_header,
    put_header,
};

/// Initial per-connection read buffer; it grows for big frames.
const READ_BUF_INITIAL: usize = 4096;
/// Bytes read per read call when the buffer has room to grow into.
const READ_CHUNK: usize = 64 * 1024;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Fast raw-frame WebSocket echo backend for wsgate benchmarks"
)]
struct Args {
    /// Address to listen on; repeat for several listeners in one process.
    #[arg(short, long, required = true)]
    listen: Vec<SocketAddr>,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// listen(2) backlog.
    #[arg(long, default_value_t = 4096)]
    backlog: u32,
    /// Answer every upgrade with `Wsgate-Topics: <this>` (wsgate's cluster
    /// subscribes the connection to these topics), e.g. "bench".
    #[arg(long, default_value = "")]
    topics: String,
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async move {
        for addr in &args.listen {
            let sock = tokio::net::TcpSocket::new_v4()?;
            sock.set_reuseaddr(true)?;
            sock.bind(*addr)?;
            let listener = sock.listen(args.backlog)?;
            eprintln!("wsgate-bench-echo listening on ws://{addr}");
            tokio::spawn(accept_loop(listener, args.topics.clone().into()));
        }
        tokio::signal::ctrl_c().await?;
        Ok(())
    })
}

async fn accept_loop(listener: TcpListener, topics: std::sync::Arc<str>) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let topics = topics.clone();
                tokio::spawn(async move {
                    let _ = serve(s, &topics).await;
                });
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// The 64 KiB body of `GET /64k`.
static BODY_64K: [u8; 65536] = [b'x'; 65536];

/// Answers one plain HTTP/1.1 request head (bodies are not expected) with
/// keep-alive. Returns whether the client asked for `Connection: close`.
async fn answer_http(s: &mut TcpStream, head: &str) -> io::Result<bool> {
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let body: &[u8] = if path == "/64k" { &BODY_64K } else { b"ok\n" };
    let close = header_value(head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n{}\r\n",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    );
    let mut out = Vec::with_capacity(resp.len() + body.len());
    out.extend_from_slice(resp.as_bytes());
    out.extend_from_slice(body);
    s.write_all(&out).await?;
    Ok(close)
}

async fn serve(mut s: TcpStream, topics: &str) -> io::Result<()> {
    s.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::with_capacity(READ_BUF_INITIAL);
    // Plain HTTP requests on a keep-alive connection until one is an
    // upgrade: a proxy with an upstream keep-alive pool (nginx `keepalive`)
    // sends an upgrade on a connection that served plain requests before.
    let (end, head, key) = loop {
        let end = loop {
            if let Some(e) = head_end(&buf) {
                break e;
            }
            if buf.len() > MAX_HEAD_BYTES || read_more(&mut s, &mut buf).await? == 0 {
                return Ok(());
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        if let Some(key) = header_value(&head, "sec-websocket-key") {
            let key = key.to_string();
            break (end, head, key);
        }
        buf.drain(..end);
        if answer_http(&mut s, &head).await? {
            return Ok(());
        }
    };
    let ext = match header_value(&head, "sec-websocket-extensions") {
        Some(v) if v.contains("permessage-deflate") => {
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; \
             client_no_context_takeover\r\n"
        }
        _ => "",
    };
    let topics = if topics.is_empty() {
        String::new()
    } else {
        format!("Wsgate-Topics: {topics}\r\n")
    };
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n{ext}{topics}\r\n",
        accept_key(&key)
    );
    s.write_all(resp.as_bytes()).await?;
    buf.drain(..end);
    buf.shrink_to(READ_BUF_INITIAL);

    let mut out: Vec<u8> = Vec::new();
    let mut pos = 0usize;
    loop {
        let mut closing = false;
        while let Some(h) = parse_header(&buf[pos..])? {
            if buf.len() - pos < h.frame_len() {
                buf.reserve(h.frame_len());
                break;
            }
            let payload = pos + h.header_len..pos + h.frame_len();
            let reply_op = match h.opcode {
                opcode::TEXT | opcode::BINARY | opcode::CONTINUATION => Some(h.opcode),
                opcode::PING => Some(opcode::PONG),
                opcode::CLOSE => {
                    closing = true;
                    Some(opcode::CLOSE)
                }
                _ => None,
            };
            if let Some(op) = reply_op {
                let fin = h.fin || op == opcode::PONG || op == opcode::CLOSE;
                let at = out.len();
                put_header(&mut out, fin, op, h.payload_len, None);
                if h.rsv1 {
                    out[at] |= 0x40;
                }
                let start = out.len();
                out.extend_from_slice(&buf[payload]);
                if let Some(m) = h.mask {
                    apply_mask(&mut out[start..], m);
                }
            }
            pos += h.frame_len();
            if closing {
                break;
            }
        }
        if !out.is_empty() {
            s.write_all(&out).await?;
            out.clear();
            if out.capacity() > READ_CHUNK * 4 {
                out = Vec::new();
            }
        }
        if closing {
            s.shutdown().await?;
            return Ok(());
        }
        buf.drain(..pos);
        pos = 0;
        if read_more(&mut s, &mut buf).await? == 0 {
            return Ok(());
        }
    }
}

/// Reads into the spare capacity of `buf`, growing it by up to `READ_CHUNK`.
async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_CHUNK);
    }
    s.read_buf(buf).await
}
