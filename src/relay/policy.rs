//! The relay's view of the configuration: what every connection of one
//! config snapshot obeys, built once per snapshot and shared through an
//! `Arc`. It holds only the relay's own types, so the relay never reads a
//! config struct and a config change cannot silently reach the hot path.

use std::time::Duration;

use crate::config::{Config, Dur, LimitsConfig};
use crate::relay::rate::RateLimit;
use crate::side::Side;

/// Bytes read per `read` call: big enough that 64 KiB messages move in one
/// syscall each way, small enough to stay in L2.
pub const READ_CHUNK: usize = 64 * 1024;

/// Heartbeat settings toward one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// Ping after this long without a frame from the peer.
    pub interval: Duration,
    /// No frame within this after the ping: the peer is dead.
    pub timeout: Duration,
}

/// `(app_ping, app_pong)` texts.
pub type AppPing = (Box<[u8]>, Box<[u8]>);

#[derive(Debug)]
pub struct Policy {
    pub max_message_bytes: u64,
    pub validate_utf8: bool,
    /// Client messages only (see `inbound`).
    pub validate_json: bool,
    pub client_heartbeat: Option<Heartbeat>,
    pub backend_heartbeat: Option<Heartbeat>,
    /// `app_ping` and the `app_pong` that answers it.
    pub app_ping: Option<AppPing>,
    /// Client-to-backend rates.
    pub rate: RateLimit,
    pub slow_consumer_timeout: Duration,
    /// Bytes per read: `READ_CHUNK`, capped at `max_buffered_bytes` (what
    /// may wait toward a slow peer is at most one read).
    pub read_chunk: usize,
    /// Connections of a drained or removed backend close at a random moment
    /// within this, so their clients do not reconnect all at once.
    pub drain_spread: Duration,
}

impl Policy {
    /// The policy of the top-level `[limits]`.
    pub fn from_config(c: &Config) -> Policy {
        Policy::with_limits(c, &c.limits)
    }

    /// The policy of one pool: its own `limits`, the rest from `c`.
    pub fn with_limits(c: &Config, l: &LimitsConfig) -> Policy {
        let hb = |i: Dur, t: Dur| {
            (!i.is_zero()).then_some(Heartbeat {
                interval: i.get(),
                timeout: t.get(),
            })
        };
        let h = &c.heartbeat;
        Policy {
            max_message_bytes: l.max_message_bytes,
            validate_utf8: l.validate_utf8,
            validate_json: l.validate_json,
            client_heartbeat: hb(h.client_interval, h.client_timeout),
            backend_heartbeat: hb(h.backend_interval, h.backend_timeout),
            app_ping: (!h.app_ping.is_empty())
                .then(|| (h.app_ping.as_bytes().into(), h.app_pong.as_bytes().into())),
            rate: RateLimit {
                messages_per_sec: l.messages_per_sec,
                burst: l.burst,
                bytes_per_sec: l.bytes_per_sec,
            },
            slow_consumer_timeout: l.slow_consumer_timeout.get(),
            read_chunk: READ_CHUNK.min(l.max_buffered_bytes),
            drain_spread: c.server.shutdown_grace.get(),
        }
    }

    /// Heartbeat settings toward `peer`, if heartbeats toward it are on.
    pub fn heartbeat(&self, peer: Side) -> Option<Heartbeat> {
        match peer {
            Side::Client => self.client_heartbeat,
            Side::Backend => self.backend_heartbeat,
        }
    }
}
