//! Inspection of permessage-deflate messages (RFC 7692): raw inflate of a
//! compressed message's payload, only so the relay can judge it (size,
//! UTF-8, JSON, `app_ping`). The inflated bytes are dropped as they are
//! judged; the frames themselves are forwarded as they arrived.
//!
//! Crate: `flate2` with its `zlib-rs` backend: pure Rust (this crate
//! forbids `unsafe`, and a C zlib would bring a build-time C dependency),
//! modelled on zlib-ng, with SIMD paths chosen at run time, and a
//! plain streaming API (`Decompress`) whose state can be reset and reused,
//! which the pool below relies on. `miniz_oxide` would do too (also pure
//! Rust); zlib-rs was picked for speed, since every compressed message is
//! inflated once on the hot path. Measured on this machine: about 4 us of
//! CPU to inflate and UTF-8-check a 4 KiB JSON-like message compressed to
//! 844 bytes (an isolated loop, release build).
//!
//! Memory: an inflater is a zlib inflate state, its 32 KiB window and an
//! 8 KiB output chunk (about 50 KiB once a big message has passed).
//! Without context takeover (what the gateway negotiates for every side it
//! inspects, see `conn::headers`) an inflater is only
//! needed during one message: it is taken from a small per-thread pool at
//! the first frame and given back at the last, so an idle connection holds
//! none and no message allocates one in the steady state. With context
//! takeover (a backend that refuses `server_no_context_takeover`) the
//! window must outlive the message: that direction keeps its inflater for
//! the connection's life.
//!
//! Bounds: output goes through the inflater's fixed chunk (`OUT_CHUNK`) to a sink
//! that counts it, so a compression bomb is stopped after at most
//! `max_message_bytes + OUT_CHUNK` inflated bytes, none of them kept.

use std::cell::RefCell;

use flate2::{Decompress, FlushDecompress, Status};

use crate::ws::frame;

/// Inflated bytes produced per call into the sink.
pub const OUT_CHUNK: usize = 8 * 1024;
/// Inflaters kept per worker thread for reuse (each about 50 KiB).
const POOL_MAX: usize = 4;
/// RFC 7692 section 7.2.2: appended to a message's payload before inflating.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// How compressed messages from one sender are inspected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inspect {
    /// The sender compresses with context takeover: its window must be kept
    /// between messages, and a message may never be dropped (the receiver's
    /// window would miss it).
    pub keep_window: bool,
}

/// The compressed data cannot be inflated (RFC 7692 section 8.2.3.. : the
/// endpoint fails the connection; the gateway closes 1007).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid compressed data")]
pub struct Corrupt;

/// A raw inflate stream, reset at the start of each message unless the
/// sender keeps its context.
pub struct Inflater {
    z: Decompress,
    /// The stream ended with a BFINAL block: the rest of the message is
    /// ignored, and the next message needs a fresh stream.
    ended: bool,
    /// Bytes inflated of the current message (kept here rather than in the
    /// per-connection parser, which holds only this box's pointer).
    inflated: u64,
    /// The current message's end (its RFC 7692 tail) was inflated.
    done: bool,
    /// Where output goes before the sink judges it: part of the box, so no
    /// call zeroes a fresh buffer.
    out: [u8; OUT_CHUNK],
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

thread_local! {
    // Boxed as `Inbound` holds them: moving one in or out is a pointer copy.
    #[allow(clippy::vec_box)]
    static POOL: RefCell<Vec<Box<Inflater>>> = const { RefCell::new(Vec::new()) };
}

impl Inflater {
    fn new() -> Inflater {
        Inflater {
            z: Decompress::new(false),
            ended: false,
            inflated: 0,
            done: false,
            out: [0; OUT_CHUNK],
        }
    }

    /// A new message starts (on a reused stream with context takeover).
    pub fn begin_message(&mut self) {
        self.inflated = 0;
        self.done = false;
    }

    /// The current message's end was inflated ([`Inflater::finish`]).
    pub fn message_done(&self) -> bool {
        self.done
    }

    /// An inflater at the start of a stream: from this thread's pool if it
    /// has one (no allocation), else a new one.
    pub fn take() -> Box<Inflater> {
        POOL.with(|p| p.borrow_mut().pop())
            .unwrap_or_else(|| Box::new(Inflater::new()))
    }

    /// Returns an inflater to this thread's pool, reset; dropped if the
    /// pool is full.
    pub fn give(mut me: Box<Inflater>) {
        me.reset();
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_MAX {
                p.push(me);
            }
        });
    }

    fn reset(&mut self) {
        self.z.reset(false);
        self.ended = false;
        self.begin_message();
    }

    /// Inflates payload bytes as they arrived (`mask` and the offset of
    /// `input` in its frame, for client frames), handing the output to
    /// `sink` in chunks of at most [`OUT_CHUNK`], with the message's
    /// inflated total so far (including the chunk). The sink's error stops
    /// inflating at once.
    pub fn feed<E: From<Corrupt>>(
        &mut self,
        input: &[u8],
        mask: Option<[u8; 4]>,
        off: u64,
        sink: &mut impl FnMut(&[u8], u64) -> Result<(), E>,
    ) -> Result<(), E> {
        match mask {
            None => self.feed_plain(input, sink),
            Some(m) => {
                // Unmask through a stack buffer: the forwarded bytes keep
                // the client's mask.
                let mut tmp = [0u8; 2048];
                let mut off = off;
                for chunk in input.chunks(tmp.len()) {
                    let t = &mut tmp[..chunk.len()];
                    t.copy_from_slice(chunk);
                    frame::apply_mask(t, m, off);
                    self.feed_plain(t, sink)?;
                    off += chunk.len() as u64;
                }
                Ok(())
            }
        }
    }

    /// The message's last payload byte was fed: inflates the RFC 7692 tail.
    /// Afterwards the stream is at a block boundary, ready for the next
    /// message of a sender with context takeover.
    pub fn finish<E: From<Corrupt>>(
        &mut self,
        sink: &mut impl FnMut(&[u8], u64) -> Result<(), E>,
    ) -> Result<(), E> {
        self.feed_plain(&TAIL, sink)?;
        self.done = true;
        if self.ended {
            // A BFINAL block ended the stream: the next message starts a
            // new one (a sender doing this cannot refer back anyway).
            self.z.reset(false);
            self.ended = false;
        }
        Ok(())
    }

    fn feed_plain<E: From<Corrupt>>(
        &mut self,
        mut input: &[u8],
        sink: &mut impl FnMut(&[u8], u64) -> Result<(), E>,
    ) -> Result<(), E> {
        while !self.ended {
            let (in0, out0) = (self.z.total_in(), self.z.total_out());
            let status = self
                .z
                .decompress(input, &mut self.out, FlushDecompress::None)
                .map_err(|_| Corrupt)?;
            let used = (self.z.total_in() - in0) as usize;
            let made = (self.z.total_out() - out0) as usize;
            input = &input[used..];
            if made > 0 {
                self.inflated += made as u64;
                sink(&self.out[..made], self.inflated)?;
            }
            if status == Status::StreamEnd {
                self.ended = true;
            } else if made < OUT_CHUNK && (input.is_empty() || used == 0) {
                // All input taken and the output not full: nothing pending.
                // (No progress at all with input left cannot happen with
                // room in `out`; stop rather than spin if it ever does.)
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    /// RFC 7692 compression of one message: sync flush, tail removed.
    fn deflate(c: &mut Compress, msg: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(msg.len() + 64);
        c.compress_vec(msg, &mut out, FlushCompress::Sync).unwrap();
        while out.capacity() - out.len() < 16 {
            out.reserve(64);
            c.compress_vec(&[], &mut out, FlushCompress::Sync).unwrap();
        }
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - 4);
        out
    }

    fn inflate_all(
        i: &mut Inflater,
        data: &[u8],
        mask: Option<[u8; 4]>,
    ) -> Result<Vec<u8>, Corrupt> {
        let mut got = Vec::new();
        let mut sink = |b: &[u8], _: u64| -> Result<(), Corrupt> {
            got.extend_from_slice(b);
            Ok(())
        };
        // Fed in odd pieces, as reads split frames.
        let mut off = 0;
        for piece in data.chunks(7) {
            i.feed(piece, mask, off, &mut sink)?;
            off += piece.len() as u64;
        }
        i.finish(&mut sink)?;
        Ok(got)
    }

    #[test]
    fn inflates_messages_with_and_without_context_takeover() {
        let mut c = Compress::new(Compression::default(), false);
        let mut i = Inflater::new();
        let a = br#"{"type":"hello","n":1,"text":"hello hello hello"}"#;
        for _ in 0..3 {
            // Context takeover: later messages refer back to earlier ones.
            let z = deflate(&mut c, a);
            assert_eq!(inflate_all(&mut i, &z, None).unwrap(), a);
        }
        // Without takeover: a fresh stream per message, reset between.
        let mut fresh = Compress::new(Compression::default(), false);
        let z = deflate(&mut fresh, a);
        let mut i = Inflater::take();
        assert_eq!(inflate_all(&mut i, &z, None).unwrap(), a);
        Inflater::give(i);
        let mut i = Inflater::take();
        assert_eq!(inflate_all(&mut i, &z, None).unwrap(), a);
    }

    #[test]
    fn unmasks_what_it_inflates() {
        let mut c = Compress::new(Compression::default(), false);
        let msg = b"masked and compressed, masked and compressed".repeat(100);
        let mut z = deflate(&mut c, &msg);
        let m = [1, 2, 3, 4];
        frame::apply_mask(&mut z, m, 0);
        let mut i = Inflater::new();
        assert_eq!(inflate_all(&mut i, &z, Some(m)).unwrap(), msg);
    }

    #[test]
    fn corrupt_data_is_an_error() {
        let mut i = Inflater::new();
        // BTYPE 11 is reserved.
        assert_eq!(inflate_all(&mut i, &[0xff, 0xff, 0xff], None), Err(Corrupt));
        // A distance before the start of a fresh stream.
        let mut i = Inflater::new();
        let mut c = Compress::new(Compression::default(), false);
        let first = deflate(&mut c, b"abcdefghijklmnop");
        let second = deflate(&mut c, b"abcdefghijklmnop");
        assert!(inflate_all(&mut i, &first, None).is_ok());
        let mut j = Inflater::new();
        assert_eq!(inflate_all(&mut j, &second, None), Err(Corrupt));
    }

    #[derive(Debug, PartialEq)]
    enum Stop {
        TooBig,
        Corrupt,
    }

    impl From<Corrupt> for Stop {
        fn from(_: Corrupt) -> Stop {
            Stop::Corrupt
        }
    }

    #[test]
    fn a_bomb_stops_at_the_sink() {
        let mut c = Compress::new(Compression::best(), false);
        let z = deflate(&mut c, &vec![b'a'; 10 << 20]);
        assert!(z.len() < 20 << 10);
        let mut i = Inflater::new();
        let limit = 65536usize;
        let mut seen = 0usize;
        let mut sink = |b: &[u8], total: u64| -> Result<(), Stop> {
            assert!(b.len() <= OUT_CHUNK);
            seen += b.len();
            assert_eq!(total, seen as u64);
            if seen > limit {
                Err(Stop::TooBig)
            } else {
                Ok(())
            }
        };
        assert_eq!(i.feed(&z, None, 0, &mut sink), Err(Stop::TooBig));
        assert!(seen <= limit + OUT_CHUNK);
    }
}
