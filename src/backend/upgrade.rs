//! The client half of the WebSocket upgrade toward a backend, on the
//! connection `dial` just opened: the request head written in one write,
//! the answer's head parsed with `httparse`, and, for a refusal, its short
//! body read back for the client.
//!
//! Written by hand rather than through hyper's client because an upgrade is
//! one request whose 101 ends HTTP on that connection: hyper's client
//! spends a dispatcher, a request channel, a connection future and an
//! upgrade hand-off on it, and the profile of a handshake storm showed
//! that as the largest user-space cost of the gateway's side of a
//! handshake. What HTTP/1.1 needs here is small: a head out, a head in
//! (informational answers skipped), and a refusal's body framed by
//! Content-Length, chunked coding or the connection's end.

use bytes::{Buf, Bytes, BytesMut};
use hyper::StatusCode;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A response head larger than this is refused (hyper's client default
/// buffer limit is about 400 KiB; a 101 is a few hundred bytes).
const MAX_HEAD: usize = 64 * 1024;

/// Headers parsed per response head.
const MAX_HEADERS: usize = 64;

/// What is read per call while a head is incomplete.
const READ_CHUNK: usize = 2048;

/// Why the exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("malformed response head: {0}")]
    Parse(#[from] httparse::Error),
    #[error("invalid header in the response head")]
    Header,
    #[error("response head over {MAX_HEAD} bytes")]
    TooLarge,
    #[error("connection closed before the response head")]
    Closed,
    #[error("request target {0:?} is not visible ASCII")]
    Target(String),
}

/// A response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

/// Writes `GET target HTTP/1.1` and `headers` in one write.
pub async fn send_request<S: AsyncWrite + Unpin>(
    io: &mut S,
    target: &str,
    headers: &HeaderMap,
) -> Result<(), WireError> {
    // A target with a space or a control byte would split the request line.
    if target.is_empty() || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(WireError::Target(target.to_string()));
    }
    let size = 16
        + target.len()
        + headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>();
    let mut head = Vec::with_capacity(size);
    head.extend_from_slice(b"GET ");
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        // HeaderName and HeaderValue hold no CR or LF.
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    io.write_all(&head).await?;
    io.flush().await?;
    Ok(())
}

/// Reads the final response head (skipping 1xx answers other than 101).
/// What follows the head stays in `buf`.
pub async fn read_head<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
) -> Result<Head, WireError> {
    loop {
        if let Some((len, head)) = parse_head(buf)? {
            buf.advance(len);
            if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS {
                continue;
            }
            return Ok(head);
        }
        if buf.len() >= MAX_HEAD {
            return Err(WireError::TooLarge);
        }
        buf.reserve(READ_CHUNK);
        if io.read_buf(buf).await? == 0 {
            return Err(WireError::Closed);
        }
    }
}

/// One complete head at the start of `buf`, and its length; `None` while
/// it is incomplete. Synchronous, so the parser's header array never lives
/// in the caller's future.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, Head)>, WireError> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut raw);
    let len = match resp.parse(buf)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let status = resp
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(WireError::Header)?;
    let mut headers = HeaderMap::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| WireError::Header)?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| WireError::Header)?;
        headers.append(name, value);
    }
    Ok(Some((len, Head { status, headers })))
}

/// At most `limit` bytes of the body that follows `head` (a refusal's
/// text), starting with what `buf` already holds. A body that fails or is
/// cut short reads as what arrived: it is only shown to the client.
pub async fn read_body<S: AsyncRead + Unpin>(
    io: &mut S,
    mut buf: BytesMut,
    head: &Head,
    limit: usize,
) -> Bytes {
    let status = head.status;
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Bytes::new();
    }
    let h = &head.headers;
    let chunked = h
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    if chunked {
        return read_chunked(io, buf, limit).await;
    }
    let length = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<usize>().ok());
    // Without a length the body ends with the connection.
    let want = length.unwrap_or(usize::MAX).min(limit);
    while buf.len() < want {
        buf.reserve(READ_CHUNK.min(want - buf.len()));
        match io.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    buf.truncate(want);
    buf.freeze()
}

/// A chunked body, its chunks joined, up to `limit` bytes (trailers are
/// not read: the connection is dropped after).
async fn read_chunked<S: AsyncRead + Unpin>(io: &mut S, mut buf: BytesMut, limit: usize) -> Bytes {
    let mut body = BytesMut::new();
    // Bytes of the current chunk still to come, then its CRLF.
    let mut remaining: Option<u64> = None;
    loop {
        match remaining {
            None => match httparse::parse_chunk_size(&buf) {
                // The last chunk: trailers are not read.
                Ok(httparse::Status::Complete((_, 0))) => break,
                Ok(httparse::Status::Complete((used, size))) => {
                    buf.advance(used);
                    remaining = Some(size);
                    continue;
                }
                Ok(httparse::Status::Partial) if buf.len() < 1024 => {}
                _ => break,
            },
            Some(n) => {
                let take = (n as usize).min(buf.len());
                let room = limit - body.len();
                body.extend_from_slice(&buf[..take.min(room)]);
                buf.advance(take);
                if body.len() >= limit {
                    break;
                }
                let left = n - take as u64;
                if left > 0 {
                    remaining = Some(left);
                } else if buf.len() >= 2 {
                    // The chunk's CRLF.
                    buf.advance(2);
                    remaining = None;
                    continue;
                } else {
                    remaining = Some(0);
                }
            }
        }
        buf.reserve(READ_CHUNK);
        match io.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    body.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(wire: &'static [u8]) -> (Result<Head, WireError>, Bytes) {
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        b.write_all(wire).await.unwrap();
        drop(b);
        let mut buf = BytesMut::new();
        let head = read_head(&mut a, &mut buf).await;
        let body = match &head {
            Ok(h) if h.status != StatusCode::SWITCHING_PROTOCOLS => {
                read_body(&mut a, buf, h, 16).await
            }
            _ => buf.freeze(),
        };
        (head, body)
    }

    #[tokio::test]
    async fn request_head_is_one_block_in_order() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("b1:80"));
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        send_request(&mut a, "/chat?x=1", &h).await.unwrap();
        drop(a);
        let mut out = String::new();
        b.read_to_string(&mut out).await.unwrap();
        assert_eq!(
            out,
            "GET /chat?x=1 HTTP/1.1\r\nhost: b1:80\r\nx-a: 1\r\nx-a: 2\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn bad_targets_are_refused_before_writing() {
        let (mut a, _b) = tokio::io::duplex(64);
        for t in ["", "/a b", "/a\r\nx: y"] {
            let r = send_request(&mut a, t, &HeaderMap::new()).await;
            assert!(matches!(r, Err(WireError::Target(_))), "{t:?}");
        }
    }

    #[tokio::test]
    async fn a_101_keeps_the_bytes_after_it() {
        let (head, rest) = answer(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Accept: abc\r\n\r\n\x81\x02hi",
        )
        .await;
        let head = head.unwrap();
        assert_eq!(head.status, StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(head.headers["sec-websocket-accept"], "abc");
        assert_eq!(&rest[..], b"\x81\x02hi");
    }

    #[tokio::test]
    async fn informational_answers_are_skipped() {
        let (head, _) =
            answer(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\n\r\n").await;
        assert_eq!(head.unwrap().status, StatusCode::SWITCHING_PROTOCOLS);
    }

    #[tokio::test]
    async fn refusal_bodies_by_length_chunks_and_close() {
        let (h, body) =
            answer(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\n\r\nnope!tail").await;
        assert_eq!(h.unwrap().status, StatusCode::FORBIDDEN);
        assert_eq!(&body[..], b"nope!");
        let (_, body) = answer(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(&body[..], b"abcdefg");
        let (_, body) = answer(b"HTTP/1.1 500 Oops\r\n\r\nuntil the end").await;
        // No length: up to the connection's end (within the limit).
        assert_eq!(&body[..], b"until the end");
        let (_, body) =
            answer(b"HTTP/1.1 500 Oops\r\nContent-Length: 100\r\n\r\n0123456789abcdefXYZ").await;
        assert_eq!(&body[..], b"0123456789abcdef");
        let (_, body) = answer(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        assert!(body.is_empty());
    }

    #[tokio::test]
    async fn broken_answers_are_errors_not_panics() {
        let cases: [&'static [u8]; 4] = [
            b"",
            b"HTTP/1.1 101 Switching",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 abc What\r\n\r\n",
        ];
        for wire in cases {
            let (h, _) = answer(wire).await;
            assert!(h.is_err(), "{:?}", String::from_utf8_lossy(wire));
        }
    }

    #[tokio::test]
    async fn an_endless_head_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(8 * 1024);
        let writer = tokio::spawn(async move {
            let _ = b.write_all(b"HTTP/1.1 101 OK\r\n").await;
            let line = b"x-filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
            for _ in 0..2_000 {
                if b.write_all(line).await.is_err() {
                    return;
                }
            }
        });
        let mut buf = BytesMut::new();
        let r = read_head(&mut a, &mut buf).await;
        assert!(
            matches!(r, Err(WireError::TooLarge) | Err(WireError::Parse(_))),
            "{r:?}"
        );
        drop(a);
        let _ = writer.await;
    }
}
