//! Reconnect delays: capped exponential backoff with jitter applied after the cap.

use std::sync::Arc;
use std::time::Duration;

/// A source of uniform random numbers in `[0, 1)`, called once per reconnect attempt.
///
/// The default draws from [`fastrand`]; tests inject a fixed or seeded source.
pub type RandomSource = Arc<dyn Fn() -> f64 + Send + Sync>;

/// The default random source: a fresh `fastrand` draw on every call.
pub fn default_random() -> RandomSource {
    Arc::new(fastrand::f64)
}

/// Capped exponential backoff, as in wsgate's SPEC ("Close-code policy for clients"):
///
/// `delay = min(cap, base * 2^n) * (0.5 + random())`
///
/// where `n` counts the reconnect attempts since the last reset (the first retry has
/// `n = 0`). The jitter is applied *after* the cap, so with the defaults (1 s base,
/// 30 s cap) a saturated client waits anywhere in 15-45 s rather than exactly 30 s.
///
/// The *long* backoff (used for 1008, 1013, 4029, HTTP 429/503: "the peer asked for
/// less") starts at half the cap: `min(cap, max(cap / 2, base * 2^n)) * (0.5 + random())`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first (un-jittered) delay. Default 1 s.
    pub base: Duration,
    /// The largest un-jittered delay. Default 30 s.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The un-jittered delay before retry number `n` (0-based): `min(cap, base * 2^n)`,
    /// or for the long backoff `min(cap, max(cap / 2, base * 2^n))`.
    pub fn raw_delay(&self, n: u32, long: bool) -> Duration {
        // 2^n saturates: beyond 2^31 every realistic base is over any cap.
        let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
        let exp = self.base.saturating_mul(factor);
        let mut d = exp.min(self.cap);
        if long {
            d = d.max(self.cap / 2);
        }
        d
    }

    /// The delay before retry number `n` (0-based) given one random draw `r` in `[0, 1)`:
    /// `raw_delay(n, long) * (0.5 + r)`. A draw outside `[0, 1]` is clamped.
    pub fn delay(&self, n: u32, long: bool, r: f64) -> Duration {
        let r = if r.is_finite() {
            r.clamp(0.0, 1.0)
        } else {
            0.5
        };
        self.raw_delay(n, long).mul_f64(0.5 + r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps() {
        let b = Backoff::default();
        assert_eq!(b.raw_delay(0, false), Duration::from_secs(1));
        assert_eq!(b.raw_delay(1, false), Duration::from_secs(2));
        assert_eq!(b.raw_delay(4, false), Duration::from_secs(16));
        assert_eq!(b.raw_delay(5, false), Duration::from_secs(30));
        assert_eq!(b.raw_delay(1000, false), Duration::from_secs(30));
    }

    #[test]
    fn long_starts_at_half_cap() {
        let b = Backoff::default();
        assert_eq!(b.raw_delay(0, true), Duration::from_secs(15));
        assert_eq!(b.raw_delay(4, true), Duration::from_secs(16));
        assert_eq!(b.raw_delay(9, true), Duration::from_secs(30));
    }

    #[test]
    fn jitter_after_cap() {
        let b = Backoff::default();
        assert_eq!(b.delay(20, false, 0.0), Duration::from_secs(15));
        assert_eq!(b.delay(20, false, 1.0), Duration::from_secs(45));
        assert_eq!(b.delay(0, false, 0.5), Duration::from_secs(1));
        assert_eq!(b.delay(0, false, 0.0), Duration::from_millis(500));
        // out-of-range draws are clamped
        assert_eq!(b.delay(0, false, 7.0), Duration::from_millis(1500));
        assert_eq!(b.delay(0, false, f64::NAN), Duration::from_secs(1));
    }
}
