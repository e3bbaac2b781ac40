//! The bounded outgoing queue.

use std::collections::VecDeque;

use crate::Message;

/// What `send` does when the queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Refuse the new message: `send` returns [`SendError::QueueFull`](crate::SendError::QueueFull)
    /// with the message. The default: nothing is lost silently.
    #[default]
    Reject,
    /// Drop the oldest queued messages until the new one fits.
    DropOldest,
}

/// Bounds of the outgoing queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// At most this many messages. Default 1000.
    pub max_messages: usize,
    /// At most this many payload bytes in total. Default 1 MiB.
    pub max_bytes: usize,
    /// What happens when a message does not fit. Default [`Overflow::Reject`].
    pub overflow: Overflow,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            max_messages: 1000,
            max_bytes: 1 << 20,
            overflow: Overflow::Reject,
        }
    }
}

/// A snapshot of the queue's size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueInfo {
    /// Messages waiting.
    pub messages: usize,
    /// Their payload bytes.
    pub bytes: usize,
    /// Messages dropped by [`Overflow::DropOldest`] since the client started.
    pub dropped: u64,
}

pub(crate) enum Push {
    Queued,
    /// Queued after dropping this many old messages.
    QueuedDropped(usize),
    Full(Message),
    TooLarge(Message),
}

#[derive(Default)]
pub(crate) struct Queue {
    items: VecDeque<Message>,
    bytes: usize,
    dropped: u64,
}

impl Queue {
    pub(crate) fn push(&mut self, msg: Message, limits: &QueueLimits) -> Push {
        let len = msg.len();
        if len > limits.max_bytes || limits.max_messages == 0 {
            return Push::TooLarge(msg);
        }
        let fits =
            |q: &Queue| q.items.len() < limits.max_messages && q.bytes + len <= limits.max_bytes;
        let mut dropped = 0;
        if !fits(self) {
            match limits.overflow {
                Overflow::Reject => return Push::Full(msg),
                Overflow::DropOldest => {
                    while !fits(self) {
                        let old = self.items.pop_front().expect("non-empty while not fitting");
                        self.bytes -= old.len();
                        dropped += 1;
                    }
                    self.dropped += dropped as u64;
                }
            }
        }
        self.bytes += len;
        self.items.push_back(msg);
        if dropped > 0 {
            Push::QueuedDropped(dropped)
        } else {
            Push::Queued
        }
    }

    pub(crate) fn pop(&mut self) -> Option<Message> {
        let m = self.items.pop_front()?;
        self.bytes -= m.len();
        Some(m)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub(crate) fn info(&self) -> QueueInfo {
        QueueInfo {
            messages: self.items.len(),
            bytes: self.bytes,
            dropped: self.dropped,
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<Message> {
        self.items.iter().cloned().collect()
    }

    pub(crate) fn clear(&mut self) -> Vec<Message> {
        self.bytes = 0;
        self.items.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Message {
        Message::text(s)
    }

    #[test]
    fn reject_by_count_and_bytes() {
        let limits = QueueLimits {
            max_messages: 2,
            max_bytes: 10,
            overflow: Overflow::Reject,
        };
        let mut q = Queue::default();
        assert!(matches!(q.push(t("aaaa"), &limits), Push::Queued));
        assert!(matches!(q.push(t("bbbb"), &limits), Push::Queued));
        assert!(matches!(q.push(t("c"), &limits), Push::Full(_)));
        q.pop();
        assert!(matches!(q.push(t("ccccccc"), &limits), Push::Full(_))); // 4 + 7 > 10
        assert!(matches!(q.push(t("cccccc"), &limits), Push::Queued));
        assert!(matches!(
            q.push(t("x".repeat(11).as_str()), &limits),
            Push::TooLarge(_)
        ));
        assert_eq!(q.info().messages, 2);
        assert_eq!(q.info().bytes, 10);
    }

    #[test]
    fn drop_oldest() {
        let limits = QueueLimits {
            max_messages: 3,
            max_bytes: 100,
            overflow: Overflow::DropOldest,
        };
        let mut q = Queue::default();
        for s in ["1", "2", "3", "4", "5"] {
            q.push(t(s), &limits);
        }
        assert_eq!(q.snapshot(), vec![t("3"), t("4"), t("5")]);
        assert_eq!(q.info().dropped, 2);
        let big = "x".repeat(99);
        // 3 messages: one must go for the count; then 2 + 99 > 100, so a second goes.
        assert!(matches!(q.push(t(&big), &limits), Push::QueuedDropped(2)));
        assert_eq!(q.clear(), vec![t("5"), t(&big)]);
        assert_eq!(q.info().bytes, 0);
    }
}
