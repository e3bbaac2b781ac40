//! Per-connection token buckets for client-to-backend traffic
//! (`limits.messages_per_sec`, `burst`, `bytes_per_sec`).
//!
//! Refilled lazily from the time of the read that brought the frame, so an
//! idle connection costs no timer and no work.

use tokio::time::Instant;

/// The configured rates (`[limits]`), copied into the relay's policy.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateLimit {
    pub messages_per_sec: u32,
    /// Bucket size for messages; 0 = `messages_per_sec`.
    pub burst: u32,
    pub bytes_per_sec: u64,
}

/// The buckets of one connection.
#[derive(Debug, Clone)]
pub struct Bucket {
    msg_rate: f64,
    msg_cap: f64,
    msgs: f64,
    byte_rate: f64,
    bytes: f64,
    last: Instant,
}

impl Bucket {
    /// `None` when no rate is configured: the relay then skips all of this.
    pub fn new(l: &RateLimit, now: Instant) -> Option<Bucket> {
        if l.messages_per_sec == 0 && l.bytes_per_sec == 0 {
            return None;
        }
        let msg_cap = if l.burst > 0 {
            l.burst
        } else {
            l.messages_per_sec
        } as f64;
        Some(Bucket {
            msg_rate: l.messages_per_sec as f64,
            msg_cap,
            msgs: msg_cap,
            // One second's worth of bytes may arrive at once.
            byte_rate: l.bytes_per_sec as f64,
            bytes: l.bytes_per_sec as f64,
            last: now,
        })
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        if dt > 0.0 {
            self.msgs = (self.msgs + dt * self.msg_rate).min(self.msg_cap);
            self.bytes = (self.bytes + dt * self.byte_rate).min(self.byte_rate);
            self.last = now;
        }
    }

    /// A new message whose first frame carries `bytes`: false = over a limit.
    pub fn take_message(&mut self, bytes: u64, now: Instant) -> bool {
        self.refill(now);
        if self.msg_rate > 0.0 {
            if self.msgs < 1.0 {
                return false;
            }
            self.msgs -= 1.0;
        }
        self.take_bytes_refilled(bytes)
    }

    /// A continuation frame carrying `bytes`.
    pub fn take_bytes(&mut self, bytes: u64, now: Instant) -> bool {
        self.refill(now);
        self.take_bytes_refilled(bytes)
    }

    fn take_bytes_refilled(&mut self, bytes: u64) -> bool {
        if self.byte_rate > 0.0 {
            if self.bytes < bytes as f64 {
                return false;
            }
            self.bytes -= bytes as f64;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let l = RateLimit {
            messages_per_sec: 10,
            burst: 3,
            ..Default::default()
        };
        let t0 = Instant::now();
        let mut b = Bucket::new(&l, t0).unwrap();
        assert!((0..3).all(|_| b.take_message(1, t0)));
        assert!(!b.take_message(1, t0));
        assert!(b.take_message(1, t0 + Duration::from_millis(100)));
    }

    #[test]
    fn bytes_limit() {
        let l = RateLimit {
            bytes_per_sec: 1000,
            ..Default::default()
        };
        let t0 = Instant::now();
        let mut b = Bucket::new(&l, t0).unwrap();
        assert!(b.take_message(800, t0));
        assert!(!b.take_bytes(300, t0));
        assert!(b.take_bytes(300, t0 + Duration::from_millis(200)));
    }

    #[test]
    fn off_when_unset() {
        assert!(Bucket::new(&RateLimit::default(), Instant::now()).is_none());
    }
}
