//! What the gateway itself sends a client besides heartbeats, on behalf of
//! the cluster (`cluster`): a message pushed to a client ID or a topic, or
//! a close by command. Only cluster-enabled connections have a [`Link`]
//! (boxed, so a connection without one pays one null pointer).
//!
//! Messages arrive pre-framed (one unmasked frame, built once per publish
//! and shared by every receiver) through a [`Mailbox`], a bounded queue
//! filled by the cluster task without waiting: a client that does not keep
//! up loses pushes (counted by the sender) rather than growing a queue.
//! The relay writes a pushed frame only at a message boundary of the
//! stream toward the client, as it does its own control frames.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::task::AtomicWaker;

use crate::ws::frame::opcode;

/// Pushes waiting per connection; more are dropped (and counted).
pub const QUEUE: usize = 256;
/// A queue that grew past this is freed once emptied (bursts do not leave
/// their memory behind).
const QUEUE_KEEP: usize = 8;

/// One connection's bounded queue of pushes. Unlike a channel it allocates
/// nothing until something is pushed (an idle connection pays about 80
/// bytes for it), and its buffer is freed again after a burst.
///
/// The relay polls it on every round of every wake-up, so an empty mailbox
/// is answered from `len` alone: no lock on the relay's hot path.
#[derive(Default)]
pub struct Mailbox {
    queue: Mutex<VecDeque<Push>>,
    /// `queue.len()`, written under the lock, read without it.
    len: AtomicUsize,
    waker: AtomicWaker,
}

/// The queue is full: the push was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl Mailbox {
    pub fn new() -> Arc<Mailbox> {
        Arc::default()
    }

    /// Queues a push and wakes the connection; never waits.
    pub fn try_push(&self, push: Push) -> Result<(), Full> {
        {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() >= QUEUE {
                return Err(Full);
            }
            q.push_back(push);
            self.len.store(q.len(), Ordering::Release);
        }
        self.waker.wake();
        Ok(())
    }

    /// Takes a close waiting anywhere in the queue (with the frames ahead
    /// of it, which would now never be sent): a close by command must not
    /// wait behind a frame that waits for a message boundary that may never
    /// come.
    pub fn take_close(&self) -> Option<(u16, Box<str>)> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let at = q.iter().position(|p| matches!(p, Push::Close { .. }))?;
        let close = match q.drain(..=at).last() {
            Some(Push::Close { code, reason }) => Some((code, reason)),
            _ => None,
        };
        self.len.store(q.len(), Ordering::Release);
        close
    }

    /// The next push, or `Pending` (woken by the next `try_push`).
    pub fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Push> {
        // Registered on every call, so a close pushed while a frame waits
        // for a message boundary (see `take_close`) still wakes the relay.
        self.waker.register(cx.waker());
        if self.len.load(Ordering::Acquire) == 0 {
            return Poll::Pending;
        }
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let Some(p) = q.pop_front() else {
            return Poll::Pending;
        };
        self.len.store(q.len(), Ordering::Release);
        if q.is_empty() && q.capacity() > QUEUE_KEEP {
            *q = VecDeque::new();
        }
        Poll::Ready(p)
    }
}

/// One command toward one connection.
#[derive(Debug, Clone)]
pub enum Push {
    /// A complete frame toward the client (see [`data_frame`]).
    Frame(Bytes),
    /// Close the connection: this code and reason to the client, 1001 to
    /// its backend.
    Close { code: u16, reason: Box<str> },
}

/// The receiving end a relay polls, and what it must hold while it lives.
pub struct Link {
    pub(crate) rx: Arc<Mailbox>,
    /// A frame taken from `rx` that waits for a message boundary.
    pub(crate) pending: Option<Bytes>,
    /// The reason of a close by command (not a static string, so it is
    /// kept here and handed to the client's close frame).
    pub(crate) close_reason: Option<Box<str>>,
    /// The connection's registration: unregisters when the relay is dropped.
    _registration: Box<dyn Any + Send>,
}

impl Link {
    pub fn new(rx: Arc<Mailbox>, registration: Box<dyn Any + Send>) -> Link {
        Link {
            rx,
            pending: None,
            close_reason: None,
            _registration: registration,
        }
    }
}

/// One unmasked, unfragmented data frame (server to client), uncompressed
/// (RSV1 clear, which permessage-deflate allows per message).
pub fn data_frame(text: bool, payload: &[u8]) -> Bytes {
    let mut f = BytesMut::with_capacity(payload.len() + 10);
    f.put_u8(0x80 | if text { opcode::TEXT } else { opcode::BINARY });
    match payload.len() {
        n if n < 126 => f.put_u8(n as u8),
        n if n <= u16::MAX as usize => {
            f.put_u8(126);
            f.put_u16(n as u16);
        }
        n => {
            f.put_u8(127);
            f.put_u64(n as u64);
        }
    }
    f.put_slice(payload);
    f.freeze()
}

#[cfg(test)]
mod tests {
    use super::data_frame;
    use crate::ws::frame::parse_header;

    #[test]
    fn frames_parse_back_with_their_length() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 70000] {
            let payload = vec![b'x'; len];
            let f = data_frame(len % 2 == 0, &payload);
            let h = parse_header(&f).unwrap().unwrap();
            assert_eq!(h.payload_len, len as u64, "len {len}");
            assert!(h.fin && h.mask.is_none());
            assert_eq!(f.len() - h.header_len, len);
        }
    }
}
