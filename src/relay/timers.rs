//! The relay's one timer and every deadline it serves: heartbeats toward
//! each peer, the close handshake, the drain moment, the token's expiry and
//! the slow-consumer limit.
//!
//! One `Sleep` per connection, re-armed only when a deadline moves earlier
//! or it fires: later deadlines are found when the armed one fires, so
//! traffic (which pushes heartbeat deadlines later on every read) never
//! touches the timer wheel. A quiet link costs one timer fire per interval.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::relay::policy::Heartbeat;

/// How long a close handshake may take once started, before the sockets are
/// simply dropped.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// "Never" for the one timer (a year away).
const FAR: Duration = Duration::from_secs(86400 * 365);

/// The connection-wide deadlines and the one `Sleep` armed at the earliest
/// of them and of the peers' heartbeat and slow-consumer deadlines.
///
/// Kept small: it lives in every idle connection's task. The armed moment
/// is the sleep's own deadline, and the deadlines most connections never
/// have (a close under way, a drain, an expiring token) are boxed together.
pub struct Timers {
    /// The sleep and the wait for cancellation, in one allocation.
    waits: Pin<Box<Waits>>,
    /// The sleep fired and was not re-armed since: nothing is armed.
    idle: bool,
    rare: Option<Box<Rare>>,
}

pin_project_lite::pin_project! {
    /// What an idle connection waits on besides its sockets.
    struct Waits {
        #[pin]
        sleep: Sleep,
        // Shutdown, or its backend drained or removed.
        #[pin]
        cancelled: WaitForCancellationFutureOwned,
    }
}

/// Deadlines of a connection's end (or of a token with an expiry).
#[derive(Default)]
struct Rare {
    /// The close handshake must be over by then.
    close_deadline: Option<Instant>,
    /// A drained backend's connection closes at this (random) moment.
    drain_at: Option<Instant>,
    /// The client's token expires (close 4001 "token expired").
    token_expires: Option<Instant>,
}

impl Timers {
    pub fn new(now: Instant, token_expires: Option<Instant>, cancel: CancellationToken) -> Timers {
        Timers {
            waits: Box::pin(Waits {
                sleep: tokio::time::sleep_until(now + FAR),
                cancelled: cancel.cancelled_owned(),
            }),
            idle: false,
            rare: token_expires.map(|t| {
                Box::new(Rare {
                    token_expires: Some(t),
                    ..Rare::default()
                })
            }),
        }
    }

    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_default()
    }

    /// Whether the sleep has fired; registers the task's waker when not.
    pub fn poll_fired(&mut self, cx: &mut Context<'_>) -> bool {
        self.waits.as_mut().project().sleep.poll(cx).is_ready()
    }

    /// Whether the connection's token was cancelled; registers the task's
    /// waker when not.
    pub fn poll_cancelled(&mut self, cx: &mut Context<'_>) -> bool {
        self.waits.as_mut().project().cancelled.poll(cx).is_ready()
    }

    /// The armed deadline passed: nothing is armed until `arm` again.
    pub fn fired(&mut self, _now: Instant) {
        self.idle = true;
    }

    /// A close handshake started: it has `CLOSE_TIMEOUT` to finish (the
    /// first start counts).
    pub fn start_close(&mut self, now: Instant) {
        self.rare()
            .close_deadline
            .get_or_insert(now + CLOSE_TIMEOUT);
    }

    pub fn close_overdue(&self, now: Instant) -> bool {
        self.rare
            .as_ref()
            .and_then(|r| r.close_deadline)
            .is_some_and(|d| now >= d)
    }

    pub fn drain_at(&mut self, at: Instant) {
        self.rare().drain_at = Some(at);
    }

    /// True once, when the drain moment has come.
    pub fn take_drain(&mut self, now: Instant) -> bool {
        self.rare
            .as_mut()
            .is_some_and(|r| take_due(&mut r.drain_at, now))
    }

    /// True once, when the token has expired.
    pub fn take_token_expiry(&mut self, now: Instant) -> bool {
        self.rare
            .as_mut()
            .is_some_and(|r| take_due(&mut r.token_expires, now))
    }

    /// Arms the sleep at the earliest of this connection's deadlines and
    /// `others`. Returns true if that is already due (the caller loops).
    pub fn arm(
        &mut self,
        cx: &mut Context<'_>,
        others: impl IntoIterator<Item = Option<Instant>>,
        now: Instant,
    ) -> bool {
        let own = self.rare.as_deref().map_or([None; 3], |r| {
            [r.close_deadline, r.drain_at, r.token_expires]
        });
        let next = own.into_iter().chain(others).flatten().min();
        let Some(next) = next else { return false };
        if next <= now {
            return true;
        }
        if self.idle || next < self.waits.sleep.deadline() {
            self.idle = false;
            let mut sleep = self.waits.as_mut().project().sleep;
            sleep.as_mut().reset(next);
            return sleep.poll(cx).is_ready();
        }
        false
    }
}

fn take_due(slot: &mut Option<Instant>, now: Instant) -> bool {
    if slot.is_some_and(|t| now >= t) {
        *slot = None;
        true
    } else {
        false
    }
}

/// What a heartbeat deadline means when it passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Quiet for `interval`: send a ping.
    Ping,
    /// No frame at all for `timeout` after the ping: the peer is dead.
    Dead,
}

/// Heartbeat bookkeeping toward one peer.
#[derive(Debug)]
pub struct Liveness {
    /// When the last bytes came from the peer: any frame counts as life.
    last_rx: Instant,
    /// When the current ping became due; cleared by its pong.
    ping_at: Option<Instant>,
    /// The ping is due but not written yet (written at a frame boundary).
    pub ping_unsent: bool,
}

impl Liveness {
    pub fn new(now: Instant) -> Liveness {
        Liveness {
            last_rx: now,
            ping_at: None,
            ping_unsent: false,
        }
    }

    /// Bytes arrived from the peer.
    pub fn heard(&mut self, now: Instant) {
        self.last_rx = now;
    }

    /// The next heartbeat deadline under `hb` (`None`: heartbeats off).
    pub fn deadline(&self, hb: Option<Heartbeat>) -> Option<Instant> {
        let hb = hb?;
        Some(match self.ping_at {
            Some(t) if self.last_rx <= t => t + hb.timeout,
            _ => self.last_rx + hb.interval,
        })
    }

    /// The deadline passed: ping, or declare the peer dead. The timeout
    /// clock starts when the ping is due, even if it cannot be written yet,
    /// so a peer that stopped reading is found dead too.
    pub fn due(&mut self, now: Instant) -> Beat {
        match self.ping_at {
            Some(t) if self.last_rx <= t => Beat::Dead,
            _ => {
                self.ping_at = Some(now);
                self.ping_unsent = true;
                Beat::Ping
            }
        }
    }

    /// The gateway's own pong came back: the round trip, if a ping was out.
    pub fn pong(&mut self, now: Instant) -> Option<Duration> {
        self.ping_at
            .take()
            .map(|t| now.saturating_duration_since(t))
    }
}
