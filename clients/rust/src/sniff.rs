//! A transparent stream wrapper that reads the raw close frame off the wire and counts
//! bytes written to the socket.
//!
//! Why: tungstenite 0.30 (`protocol/mod.rs`, `do_close`) replaces any received close
//! code that `CloseCode::is_allowed()` rejects with 1002 "Protocol violation". 1014
//! (Bad Gateway, which wsgate sends when the backend link dies) is `Reserved(1014)`
//! there, so tungstenite would report 1002, and 1002 means "stop" in the close-code
//! policy. The sniffer parses the server-to-client frame headers (after the HTTP
//! response head), copies the first close frame's code and reason aside, and the client
//! prefers that copy over what tungstenite reports. Nothing is modified on the wire.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Data shared between the wrapper and the connection task.
#[derive(Default, Debug)]
pub(crate) struct SniffShared {
    close: Mutex<Option<(u16, String)>>,
    written: AtomicU64,
}

impl SniffShared {
    /// The first close frame received: `(code, reason)`; code 1005 if it had none.
    pub(crate) fn close_frame(&self) -> Option<(u16, String)> {
        self.close.lock().unwrap().clone()
    }

    /// Bytes accepted by the socket so far.
    pub(crate) fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

enum Parse {
    /// Looking for the end of the HTTP response head; the value is how many bytes of
    /// "\r\n\r\n" have matched.
    Http(u8),
    /// Collecting a frame header.
    Header { buf: [u8; 14], have: usize },
    /// Inside a payload.
    Payload {
        remaining: u64,
        close: Option<(Vec<u8>, Option<[u8; 4]>)>,
    },
    /// A close frame was seen, or the stream is not parseable: stop looking.
    Done,
}

/// The wrapper. Server frames are parsed only to find the close frame.
pub(crate) struct Sniffed<S> {
    inner: S,
    parse: Parse,
    shared: Arc<SniffShared>,
}

impl<S> Sniffed<S> {
    pub(crate) fn new(inner: S) -> (Self, Arc<SniffShared>) {
        let shared = Arc::new(SniffShared::default());
        (
            Sniffed {
                inner,
                parse: Parse::Http(0),
                shared: shared.clone(),
            },
            shared,
        )
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.parse {
                Parse::Done => return,
                Parse::Http(matched) => {
                    let pattern = b"\r\n\r\n";
                    let b = data[0];
                    data = &data[1..];
                    if b == pattern[*matched as usize] {
                        *matched += 1;
                        if *matched == 4 {
                            self.parse = Parse::Header {
                                buf: [0; 14],
                                have: 0,
                            };
                        }
                    } else {
                        *matched = u8::from(b == b'\r');
                    }
                }
                Parse::Header { buf, have } => {
                    let need = header_len(&buf[..*have]);
                    let take = (need - *have).min(data.len());
                    buf[*have..*have + take].copy_from_slice(&data[..take]);
                    *have += take;
                    data = &data[take..];
                    if *have == need && header_len(&buf[..*have]) == need {
                        let h = &buf[..need];
                        let opcode = h[0] & 0x0f;
                        let masked = h[1] & 0x80 != 0;
                        let len7 = (h[1] & 0x7f) as u64;
                        let (len, at) = match len7 {
                            126 => (u16::from_be_bytes([h[2], h[3]]) as u64, 4),
                            127 => (u64::from_be_bytes(h[2..10].try_into().unwrap()), 10),
                            n => (n, 2),
                        };
                        let mask = masked.then(|| [h[at], h[at + 1], h[at + 2], h[at + 3]]);
                        let close = (opcode == 0x8)
                            .then(|| (Vec::with_capacity(len.min(125) as usize), mask));
                        self.parse = Parse::Payload {
                            remaining: len,
                            close,
                        };
                        self.maybe_finish();
                    }
                }
                Parse::Payload { remaining, close } => {
                    let take = (*remaining).min(data.len() as u64) as usize;
                    if let Some((buf, _)) = close
                        && buf.len() + take <= 125
                    {
                        buf.extend_from_slice(&data[..take]);
                    }
                    *remaining -= take as u64;
                    data = &data[take..];
                    self.maybe_finish();
                }
            }
        }
    }

    fn maybe_finish(&mut self) {
        if let Parse::Payload {
            remaining: 0,
            close,
        } = &mut self.parse
        {
            if let Some((mut payload, mask)) = close.take() {
                if let Some(mask) = mask {
                    for (i, b) in payload.iter_mut().enumerate() {
                        *b ^= mask[i % 4];
                    }
                }
                let frame = if payload.len() >= 2 {
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    (code, String::from_utf8_lossy(&payload[2..]).into_owned())
                } else {
                    (1005, String::new())
                };
                *self.shared.close.lock().unwrap() = Some(frame);
                self.parse = Parse::Done;
            } else {
                self.parse = Parse::Header {
                    buf: [0; 14],
                    have: 0,
                };
            }
        }
    }
}

/// How long the frame header starting with `h` is (2 until the second byte is known).
fn header_len(h: &[u8]) -> usize {
    if h.len() < 2 {
        return 2;
    }
    let ext = match h[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if h[1] & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

impl<S: AsyncRead + Unpin> AsyncRead for Sniffed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && !matches!(self.parse, Parse::Done) {
            self.feed(&buf.filled()[before..]);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Sniffed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = res {
            self.shared.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sniff(chunks: &[&[u8]]) -> Option<(u16, String)> {
        let (mut s, shared) = Sniffed::new(());
        for c in chunks {
            s.feed(c);
        }
        shared.close_frame()
    }

    fn close_frame(code: u16, reason: &str) -> Vec<u8> {
        let mut f = vec![0x88, (2 + reason.len()) as u8];
        f.extend_from_slice(&code.to_be_bytes());
        f.extend_from_slice(reason.as_bytes());
        f
    }

    #[test]
    fn finds_close_after_head_and_frames() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
        let mut text = vec![0x81, 126, 0x01, 0x00];
        text.extend(std::iter::repeat_n(b'a', 256));
        let mut all = head.to_vec();
        all.extend(&text);
        all.extend(close_frame(1014, "backend gone"));
        assert_eq!(sniff(&[&all]), Some((1014, "backend gone".into())));
        // byte by byte
        let chunks: Vec<&[u8]> = all.chunks(1).collect();
        assert_eq!(sniff(&chunks), Some((1014, "backend gone".into())));
    }

    #[test]
    fn empty_close_is_1005() {
        let mut all = b"HTTP/1.1 101 X\r\n\r\n".to_vec();
        all.extend([0x88, 0x00]);
        assert_eq!(sniff(&[&all]), Some((1005, String::new())));
        assert_eq!(sniff(&[b"HTTP/1.1 101 X\r\n\r\n", &[0x89, 0x00]]), None);
    }
}
