//! One end of a relayed connection: its socket, the bytes waiting toward
//! it, its heartbeat bookkeeping and where its close handshake stands.
//!
//! Writes go straight to the socket; only what the peer does not take at
//! once is kept (`spill`), and the relay reads nothing more for this peer
//! until it is gone, so pending data is bounded by one read.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::time::Instant;

use crate::relay::RelayIo;
use crate::relay::inbound::{HEARTBEAT_PAYLOAD, Inbound};
use crate::relay::timers::Liveness;
use crate::side::Side;
use crate::ws::frame::{ControlFrame, opcode};

/// A spill buffer bigger than this is freed once drained rather than put
/// back in the thread's pool.
const SPILL_KEEP: usize = 4 * 1024;
/// Drained spill buffers kept per thread for the next slow receiver, so a
/// busy link does not allocate per burst and an idle one holds none.
const SPILL_POOL: usize = 64;

thread_local! {
    // Boxed on purpose: a box moves between a peer and the pool without
    // being allocated again.
    #[allow(clippy::vec_box)]
    static SPILL_FREE: std::cell::RefCell<Vec<Box<Pending>>> = const {
        std::cell::RefCell::new(Vec::new())
    };
}

/// Bytes toward a peer that it has not taken yet.
struct Pending {
    buf: Vec<u8>,
    /// Written up to here.
    pos: usize,
    /// Since when they have been waiting (slow-consumer limit).
    since: Instant,
}

/// What waits toward one peer. Exists only while bytes wait: an idle link
/// holds no buffer (8 bytes instead of a `Vec`, its position and a time),
/// and a drained buffer goes back to a per-thread pool.
#[derive(Default)]
pub struct Spill(Option<Box<Pending>>);

impl Spill {
    /// Appends `data` behind what waits; starts the wait at `now`.
    pub fn extend(&mut self, data: &[u8], now: Instant) {
        let p = self.0.get_or_insert_with(|| {
            let mut p = SPILL_FREE
                .with(|f| f.borrow_mut().pop())
                .unwrap_or_else(|| {
                    Box::new(Pending {
                        buf: Vec::new(),
                        pos: 0,
                        since: now,
                    })
                });
            p.since = now;
            p
        });
        p.buf.extend_from_slice(data);
    }

    pub fn pending(&self) -> bool {
        self.0.as_ref().is_some_and(|p| p.pos < p.buf.len())
    }

    /// Since when bytes have been waiting, if any do.
    pub fn since(&self) -> Option<Instant> {
        self.0.as_ref().map(|p| p.since)
    }

    fn unwritten(&self) -> &[u8] {
        self.0.as_ref().map_or(&[], |p| &p.buf[p.pos..])
    }

    fn written(&mut self, n: usize) {
        if let Some(p) = self.0.as_mut() {
            p.pos += n;
        }
    }

    /// Drops what waits; the buffer goes back to the pool if small.
    pub fn release(&mut self) {
        let Some(mut p) = self.0.take() else { return };
        if p.buf.capacity() > SPILL_KEEP {
            return;
        }
        p.buf.clear();
        p.pos = 0;
        SPILL_FREE.with(|f| {
            let mut f = f.borrow_mut();
            if f.len() < SPILL_POOL {
                f.push(p);
            }
        });
    }
}

/// Where the close handshake stands toward this peer (what the gateway
/// sends it). What the peer sent is [`Reading`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseState {
    /// No close frame toward this peer yet.
    Open,
    /// The gateway owes this peer a close frame, written at the next frame
    /// boundary of the stream toward it.
    Due { code: u16, reason: &'static str },
    /// A close frame went toward this peer (the gateway's own, or its
    /// partner's passed through). Nothing more is written but pending bytes.
    Sent,
    /// Sent, and the TCP side is done: FIN sent when the gateway started
    /// the close, or none needed.
    Shut,
    /// The peer is gone: nothing is read from it or written to it.
    Gone,
}

/// What the peer has sent, as far as the end of the connection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    Open,
    /// Its close frame arrived (and was passed on): nothing more is read.
    CloseReceived,
    /// Its socket ended (EOF or a read error).
    Eof,
}

/// Traffic one way, for the access log.
#[derive(Debug, Default, Clone, Copy)]
pub struct Traffic {
    pub messages: u64,
    pub bytes: u64,
}

pub struct Peer<S> {
    pub io: S,
    side: Side,
    /// The parser of the frames this peer sends.
    pub inbound: Inbound,
    /// Bytes the handshake read ahead of the frames (hyper's read buffer),
    /// copied out; `None` once consumed (16 bytes less than a `Bytes`).
    pub pre: Option<Box<[u8]>>,
    /// Bytes toward this peer that it did not take yet.
    pub spill: Spill,
    /// The stream toward this peer stopped inside a forwarded frame: nothing
    /// of the gateway's own may be written until it completes.
    pub mid_frame: bool,
    pub liveness: Liveness,
    /// `app_pong`s owed to this peer.
    pub pongs_due: u32,
    pub close: CloseState,
    pub reading: Reading,
    /// A write to it failed (reset, broken pipe): it is gone, and the relay
    /// has yet to treat that as the peer vanishing (it takes the flag).
    pub write_failed: bool,
    /// What this peer sent (data messages and payload bytes).
    pub traffic: Traffic,
}

impl<S: RelayIo> Peer<S> {
    pub fn new(io: S, side: Side, pre: Bytes, now: Instant) -> Self {
        // The read-ahead is a view into the handshake's read buffer (8 KiB
        // or more); copy it out so that buffer is freed now.
        let pre = (!pre.is_empty()).then(|| Box::from(&pre[..]));
        Peer {
            io,
            side,
            inbound: Inbound::default(),
            pre,
            spill: Spill::default(),
            mid_frame: false,
            liveness: Liveness::new(now),
            pongs_due: 0,
            close: CloseState::Open,
            reading: Reading::Open,
            write_failed: false,
            traffic: Traffic::default(),
        }
    }

    pub fn side(&self) -> Side {
        self.side
    }

    pub fn gone(&self) -> bool {
        self.close == CloseState::Gone
    }

    /// A close frame went (or will only go) toward it: the gateway sends it
    /// nothing of its own any more but that close.
    pub fn close_sent(&self) -> bool {
        matches!(
            self.close,
            CloseState::Sent | CloseState::Shut | CloseState::Gone
        )
    }

    /// Still worth reading from: not gone, no close frame or EOF from it.
    pub fn readable(&self) -> bool {
        !self.gone() && self.reading == Reading::Open
    }

    /// Heartbeats toward it are still meaningful: no close frame went to
    /// it or came from it.
    pub fn heartbeating(&self) -> bool {
        matches!(self.close, CloseState::Open | CloseState::Due { .. })
            && self.reading != Reading::CloseReceived
    }

    /// Mask key for frames the gateway sends: frames toward a backend must be
    /// masked (RFC 6455 section 5.3). fastrand is not a CSPRNG; the mask
    /// only guards intermediaries against crafted plaintext, and these
    /// frames' payloads are the gateway's own.
    fn mask(&self) -> Option<[u8; 4]> {
        (self.side == Side::Backend).then(|| fastrand::u32(..).to_ne_bytes())
    }

    pub fn spill_pending(&self) -> bool {
        self.spill.pending()
    }

    /// Since when bytes toward this peer have been waiting.
    pub fn blocked_since(&self) -> Option<Instant> {
        self.spill.since()
    }

    /// Writes `data` now if the peer takes it, keeping what it does not.
    pub fn write_or_spill(&mut self, cx: &mut Context<'_>, mut data: &[u8], now: Instant) {
        while !data.is_empty() && !self.gone() {
            match Pin::new(&mut self.io).poll_write(cx, data) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => self.write_failed(),
                Poll::Ready(Ok(n)) => data = &data[n..],
                Poll::Pending => break,
            }
        }
        if !data.is_empty() && !self.gone() {
            self.spill.extend(data, now);
        }
    }

    /// Appends bytes behind those already waiting (order is kept).
    pub fn spill_behind(&mut self, data: &[u8], now: Instant) {
        self.spill.extend(data, now);
    }

    /// Moves spilled bytes, then the gateway's own frames when the stream is
    /// at a frame boundary, then ends the TCP side after a close frame.
    /// `fin_needed`: the gateway itself is ending the connection.
    /// `own_reason`: a close reason that is not static (a close by cluster
    /// command), used instead of the one in [`CloseState::Due`].
    pub fn flush(
        &mut self,
        cx: &mut Context<'_>,
        now: Instant,
        fin_needed: bool,
        own_reason: Option<&str>,
    ) -> bool {
        let mut progress = false;
        if matches!(self.close, CloseState::Gone | CloseState::Shut) {
            return false;
        }
        while self.spill_pending() {
            match Pin::new(&mut self.io).poll_write(cx, self.spill.unwritten()) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    self.write_failed();
                    return true;
                }
                Poll::Ready(Ok(n)) => {
                    self.spill.written(n);
                    progress = true;
                }
                Poll::Pending => return progress,
            }
        }
        self.spill.release();
        if self.mid_frame || self.close == CloseState::Sent {
            return self.finish_close(cx, fin_needed) || progress;
        }
        if let CloseState::Due { code, reason } = self.close {
            let f = ControlFrame::close(code, own_reason.unwrap_or(reason), self.mask());
            self.close = CloseState::Sent;
            self.write_or_spill(cx, f.as_bytes(), now);
            return true;
        }
        if self.liveness.ping_unsent {
            self.liveness.ping_unsent = false;
            let f = ControlFrame::new(opcode::PING, HEARTBEAT_PAYLOAD, self.mask());
            self.write_or_spill(cx, f.as_bytes(), now);
            progress = true;
        }
        progress
    }

    /// After a close frame went out and nothing is pending. When the gateway
    /// itself started the close (`fin_needed`) and the peer has not answered
    /// yet, send FIN so it sees the end (RFC 6455 section 7.1.1: the server
    /// closes TCP first). When the close is passed through, each peer answers
    /// with its own close frame and the socket is simply closed when the
    /// relay ends: no `shutdown` call per connection.
    fn finish_close(&mut self, cx: &mut Context<'_>, fin_needed: bool) -> bool {
        if self.close != CloseState::Sent || self.spill_pending() || self.mid_frame {
            return false;
        }
        if self.reading == Reading::CloseReceived || !fin_needed {
            self.close = CloseState::Shut;
            return true;
        }
        match Pin::new(&mut self.io).poll_shutdown(cx) {
            Poll::Ready(_) => {
                self.close = CloseState::Shut;
                true
            }
            Poll::Pending => false,
        }
    }

    /// Sends an `app_pong` text frame if owed and allowed here.
    pub fn flush_app_pong(&mut self, cx: &mut Context<'_>, pong: &[u8], now: Instant) -> bool {
        if self.pongs_due == 0 || self.close_sent() || self.mid_frame || self.spill_pending() {
            return false;
        }
        self.pongs_due -= 1;
        let f = ControlFrame::new(opcode::TEXT, pong, self.mask());
        self.write_or_spill(cx, f.as_bytes(), now);
        true
    }

    /// Owes the peer a close frame from the gateway, unless one already went
    /// (or is owed). If the stream toward this peer stopped inside a frame
    /// that will never be completed, a close frame cannot be framed: just
    /// end the stream.
    pub fn queue_close(&mut self, code: u16, reason: &'static str) {
        if self.close != CloseState::Open {
            return;
        }
        if self.mid_frame {
            self.mid_frame = false;
            self.spill.release();
            self.close = CloseState::Sent;
        } else {
            self.close = CloseState::Due { code, reason };
        }
    }

    /// Its partner's close frame was passed on toward it.
    pub fn close_forwarded(&mut self) {
        if matches!(self.close, CloseState::Open | CloseState::Due { .. }) {
            self.close = CloseState::Sent;
        }
    }

    pub fn drop_peer(&mut self) {
        self.close = CloseState::Gone;
    }

    /// The socket refused a write: nothing more can reach this peer. Its
    /// reads are not polled any more either (a gone peer is not readable),
    /// so the EOF that would tell the relay never comes: the flag does.
    fn write_failed(&mut self) {
        self.close = CloseState::Gone;
        self.write_failed = true;
    }

    /// Its close frame arrived while the gateway was discarding what it
    /// sends (the gateway had sent or owed it a close of its own): the
    /// close handshake is complete toward it and nothing more is read.
    pub fn close_answered(&mut self) {
        if self.reading == Reading::Open {
            self.reading = Reading::CloseReceived;
        }
    }

    /// Done with this peer: nothing more to send it, nothing more to read.
    pub fn finished(&self) -> bool {
        self.gone() || (self.close == CloseState::Shut && self.reading != Reading::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle peer holds no pending buffer: the spill exists only while
    /// bytes wait, and costs one pointer otherwise.
    #[test]
    fn spill_exists_only_while_bytes_wait() {
        assert_eq!(std::mem::size_of::<Spill>(), 8);
        let now = Instant::now();
        let mut s = Spill::default();
        assert!(!s.pending() && s.since().is_none());
        s.extend(b"abc", now);
        assert!(s.pending());
        assert_eq!(s.since(), Some(now));
        s.written(3);
        assert!(!s.pending());
        s.release();
        assert!(s.0.is_none() && s.since().is_none());
        // The buffer went back to the pool and is reused, empty.
        s.extend(b"d", now);
        assert_eq!(s.unwritten(), b"d");
    }
}
