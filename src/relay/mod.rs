//! The per-connection pump between a client and its backend, after both
//! upgrades: frames both ways, heartbeats, limits, backpressure and close
//! codes. One task per connection; this is the gateway's hot path.
//!
//! How it spends memory and CPU:
//! - Reads go into a per-thread scratch buffer, are parsed in place and
//!   written straight to the other side. Only bytes the receiver will not
//!   take right now are copied into the connection's own `spill`, and the
//!   relay stops reading from the sender until they are gone. So a quiet
//!   connection holds no buffer, and pending data per direction is bounded
//!   by one read (`READ_CHUNK`, capped at `max_buffered_bytes`).
//! - Frame payloads are forwarded as they arrived, masked or not; only the
//!   frames a feature must read are inspected (see `inbound`).
//! - One `Sleep` per connection serves every deadline (heartbeats, close
//!   handshake, slow consumer, drain, token expiry). It is re-armed only
//!   when a deadline moves earlier or it fires, so traffic does not touch
//!   the timer wheel.
//!
//! It must never: block, allocate per message on the common path, queue
//! without bound, or forward anything after a close frame it has sent.

pub mod inbound;
pub mod limits;

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::config::Config;
use crate::error::{Closed, Side, close_code};
use crate::frame::{ControlFrame, opcode};
use crate::metrics::{DirectionCounters, HeartbeatHandles, Metrics};
use inbound::{DirCtx, Events, HEARTBEAT_PAYLOAD, Inbound, Violation};
use limits::Bucket;

/// Bytes read per `read` call: big enough that 64 KiB messages move in one
/// syscall each way, small enough to stay in L2.
const READ_CHUNK: usize = 64 * 1024;
/// Room before the read position for bytes carried over from the previous
/// read (a split header or a captured control frame: at most 14 + 125).
const HEADROOM: usize = 256;
/// How long a close handshake may take once started, before the sockets are
/// simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// A spill buffer bigger than this is freed once drained rather than kept,
/// so a connection that once had a burst does not hold its memory forever.
const SPILL_KEEP: usize = 4 * 1024;
/// Rounds of flush-and-read per wake-up before yielding to other tasks.
const MAX_ROUNDS_PER_POLL: usize = 32;
/// "Never" for the one timer (a year away).
const FAR: Duration = Duration::from_secs(86400 * 365);

thread_local! {
    /// One read buffer per runtime worker thread, shared by all connections
    /// that thread polls. Never held across an `.await`.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; HEADROOM + READ_CHUNK].into_boxed_slice());
}

/// A socket the relay moves bytes between.
pub trait RelayIo: AsyncRead + AsyncWrite + Unpin {
    /// A read returned less than it asked for, so the socket has nothing
    /// more right now: mark it not readable without the `read` that would
    /// only say EAGAIN (nginx does the same with EPOLLRDHUP). Sockets
    /// without this shortcut just read again.
    fn drained(&self) {}
}

impl RelayIo for crate::tls::Stream {
    fn drained(&self) {
        // Plain TCP only: a TLS session may hold decrypted bytes already.
        if let tokio_util::either::Either::Left(tcp) = self {
            let _ = tcp.try_io(tokio::io::Interest::READABLE, || {
                Err::<(), _>(io::ErrorKind::WouldBlock.into())
            });
        }
    }
}

impl RelayIo for tokio::io::DuplexStream {}

/// Heartbeat settings toward one peer.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat {
    pub interval: Duration,
    pub timeout: Duration,
}

/// `(app_ping, app_pong)` texts.
pub type AppPing = (Box<[u8]>, Box<[u8]>);

/// The relay's view of the configuration, built once per config snapshot and
/// shared by its connections.
#[derive(Debug)]
pub struct Policy {
    pub max_message_bytes: u64,
    pub validate_utf8: bool,
    pub validate_json: bool,
    pub client_heartbeat: Option<Heartbeat>,
    pub backend_heartbeat: Option<Heartbeat>,
    /// `app_ping` and the `app_pong` that answers it.
    pub app_ping: Option<AppPing>,
    pub limits: crate::config::LimitsConfig,
    pub slow_consumer_timeout: Duration,
    pub read_chunk: usize,
    /// Connections of a drained or removed backend close at a random moment
    /// within this, so their clients do not reconnect all at once.
    pub drain_spread: Duration,
}

impl Policy {
    pub fn from_config(c: &Config) -> Policy {
        let hb = |i: crate::config::Dur, t: crate::config::Dur| {
            (!i.is_zero()).then_some(Heartbeat {
                interval: i.get(),
                timeout: t.get(),
            })
        };
        let h = &c.heartbeat;
        Policy {
            max_message_bytes: c.limits.max_message_bytes,
            validate_utf8: c.limits.validate_utf8,
            validate_json: c.limits.validate_json,
            client_heartbeat: hb(h.client_interval, h.client_timeout),
            backend_heartbeat: hb(h.backend_interval, h.backend_timeout),
            app_ping: (!h.app_ping.is_empty())
                .then(|| (h.app_ping.as_bytes().into(), h.app_pong.as_bytes().into())),
            limits: c.limits.clone(),
            slow_consumer_timeout: c.limits.slow_consumer_timeout.get(),
            read_chunk: READ_CHUNK.min(c.limits.max_buffered_bytes),
            drain_spread: c.server.shutdown_grace.get(),
        }
    }
}

/// Per-connection inputs besides the two sockets.
pub struct Session {
    /// permessage-deflate was negotiated end to end (RSV1 allowed).
    pub deflate: bool,
    /// When the client's token expires (close 4001 "token expired").
    pub token_expires: Option<Instant>,
    /// Fires when this connection must end: shutdown, or its backend was
    /// drained or removed. A child of `shutdown`.
    pub cancel: CancellationToken,
    /// The root token: tells a shutdown (1001) from a drain (1012).
    pub shutdown: CancellationToken,
}

/// Traffic one way, for the access log.
#[derive(Debug, Default, Clone, Copy)]
pub struct Traffic {
    pub messages: u64,
    pub bytes: u64,
}

/// How a relayed connection ended.
#[derive(Debug, Clone)]
pub struct Report {
    pub closed: Closed,
    pub client_to_backend: Traffic,
    pub backend_to_client: Traffic,
}

/// One end of the relay.
struct Peer<S> {
    io: S,
    side: Side,
    inbound: Inbound,
    /// Bytes the handshake read ahead of the frames (hyper's read buffer).
    pre: Bytes,
    /// Bytes toward this peer that it did not take yet, from `spill_pos`.
    spill: Vec<u8>,
    spill_pos: usize,
    /// The stream toward this peer stopped inside a forwarded frame.
    mid_frame: bool,
    /// Since when bytes toward this peer have been waiting.
    blocked_since: Option<Instant>,
    last_rx: Instant,
    /// When the current heartbeat ping became due; cleared by life.
    ping_at: Option<Instant>,
    ping_unsent: bool,
    /// `app_pong`s owed to this peer.
    pongs_due: u32,
    close_due: Option<(u16, &'static str)>,
    close_sent: bool,
    close_rcvd: bool,
    eof: bool,
    shut: bool,
    /// Gone: not read from, not written to.
    dead: bool,
    traffic: Traffic,
}

impl<S: RelayIo> Peer<S> {
    fn new(io: S, side: Side, pre: Bytes, now: Instant) -> Self {
        // The read-ahead is a view into the handshake's read buffer (8 KiB
        // or more); copy it out so that buffer is freed now.
        let pre = if pre.is_empty() {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(&pre)
        };
        Peer {
            io,
            side,
            inbound: Inbound::default(),
            pre,
            spill: Vec::new(),
            spill_pos: 0,
            mid_frame: false,
            blocked_since: None,
            last_rx: now,
            ping_at: None,
            ping_unsent: false,
            pongs_due: 0,
            close_due: None,
            close_sent: false,
            close_rcvd: false,
            eof: false,
            shut: false,
            dead: false,
            traffic: Traffic::default(),
        }
    }

    /// Mask key for frames the gateway sends: frames toward a backend must be
    /// masked (RFC 6455 section 5.3). fastrand is not a CSPRNG; the mask
    /// only guards intermediaries against crafted plaintext, and these
    /// frames' payloads are the gateway's own.
    fn mask(&self) -> Option<[u8; 4]> {
        (self.side == Side::Backend).then(|| fastrand::u32(..).to_ne_bytes())
    }

    fn spill_pending(&self) -> bool {
        self.spill_pos < self.spill.len()
    }

    /// Writes `data` now if the peer takes it, keeping what it does not.
    fn write_or_spill(&mut self, cx: &mut Context<'_>, mut data: &[u8], now: Instant) {
        while !data.is_empty() && !self.dead {
            match Pin::new(&mut self.io).poll_write(cx, data) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => self.dead = true,
                Poll::Ready(Ok(n)) => data = &data[n..],
                Poll::Pending => break,
            }
        }
        if !data.is_empty() && !self.dead {
            self.spill.extend_from_slice(data);
            self.blocked_since.get_or_insert(now);
        }
    }

    /// Moves spilled bytes, then the gateway's own frames when the stream is
    /// at a frame boundary, then half-closes after a close frame.
    fn flush(&mut self, cx: &mut Context<'_>, now: Instant, fin_needed: bool) -> bool {
        let mut progress = false;
        if self.dead || self.shut {
            return false;
        }
        while self.spill_pending() {
            match Pin::new(&mut self.io).poll_write(cx, &self.spill[self.spill_pos..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    self.dead = true;
                    return true;
                }
                Poll::Ready(Ok(n)) => {
                    self.spill_pos += n;
                    progress = true;
                }
                Poll::Pending => return progress,
            }
        }
        if !self.spill.is_empty() {
            if self.spill.capacity() > SPILL_KEEP {
                self.spill = Vec::new();
            } else {
                self.spill.clear();
            }
            self.spill_pos = 0;
        }
        self.blocked_since = None;
        if self.mid_frame || self.close_sent {
            return self.finish_close(cx, fin_needed) || progress;
        }
        if let Some((code, reason)) = self.close_due.take() {
            let f = ControlFrame::close(code, reason, self.mask());
            self.close_sent = true;
            self.write_or_spill(cx, f.as_bytes(), now);
            return true;
        }
        if self.ping_unsent {
            self.ping_unsent = false;
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
        if !self.close_sent || self.shut || self.spill_pending() || self.mid_frame {
            return false;
        }
        if self.close_rcvd || !fin_needed {
            self.shut = true;
            return true;
        }
        match Pin::new(&mut self.io).poll_shutdown(cx) {
            Poll::Ready(_) => {
                self.shut = true;
                true
            }
            Poll::Pending => false,
        }
    }

    /// Sends an `app_pong` text frame if owed and allowed here.
    fn flush_app_pong(&mut self, cx: &mut Context<'_>, pong: &[u8], now: Instant) -> bool {
        if self.pongs_due == 0
            || self.dead
            || self.close_sent
            || self.mid_frame
            || self.spill_pending()
        {
            return false;
        }
        self.pongs_due -= 1;
        let f = ControlFrame::new(opcode::TEXT, pong, self.mask());
        self.write_or_spill(cx, f.as_bytes(), now);
        true
    }

    /// Queues a close frame from the gateway, unless one already went out.
    /// If the stream toward this peer stopped inside a frame that will never
    /// be completed, a close frame cannot be framed: just end the stream.
    fn queue_close(&mut self, code: u16, reason: &'static str) {
        if self.close_sent || self.dead || self.close_due.is_some() {
            return;
        }
        if self.mid_frame {
            self.mid_frame = false;
            self.spill.clear();
            self.spill_pos = 0;
            self.close_sent = true;
        } else {
            self.close_due = Some((code, reason));
        }
    }

    /// Done with this peer: nothing more to send it, nothing more to read.
    fn finished(&self) -> bool {
        self.dead || (self.shut && (self.eof || self.close_rcvd))
    }

    /// Next heartbeat deadline toward this peer, if any.
    fn heartbeat_deadline(&self, hb: Option<Heartbeat>) -> Option<Instant> {
        let hb = hb?;
        if self.dead || self.close_sent || self.close_rcvd {
            return None;
        }
        Some(match self.ping_at {
            Some(t) if self.last_rx <= t => t + hb.timeout,
            _ => self.last_rx + hb.interval,
        })
    }
}

/// The relay of one connection: a plain struct polled by its owner (the
/// connection task in `proxy`), so the task's future is this
/// struct and little more: no nested `async fn` state machines, each of
/// which would keep its own copies of the arguments.
pub struct Relay<C, B> {
    client: Peer<C>,
    backend: Peer<B>,
    policy: Arc<Policy>,
    metrics: Arc<Metrics>,
    deflate: bool,
    /// Boxed: most connections have no rate limit.
    bucket: Option<Box<Bucket>>,
    timer: Pin<Box<Sleep>>,
    armed: Instant,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    cancel_seen: bool,
    shutdown: CancellationToken,
    drain_at: Option<Instant>,
    token_expires: Option<Instant>,
    /// The gateway has decided to end the connection: incoming data is
    /// read and dropped, only close frames go out.
    discarding: bool,
    close_deadline: Option<Instant>,
    outcome: Option<Closed>,
    /// Short reads may mark a socket drained (see [`RelayIo::drained`]).
    /// Only on a current-thread runtime: its reactor cannot record new
    /// readiness between our read and that mark, so no wake-up is lost;
    /// on a multi-thread runtime another thread's reactor could.
    trust_short_reads: bool,
}

impl<C, B> Relay<C, B>
where
    C: RelayIo,
    B: RelayIo,
{
    pub fn new(
        client: C,
        client_pre: Bytes,
        backend: B,
        backend_pre: Bytes,
        policy: Arc<Policy>,
        metrics: Arc<Metrics>,
        session: Session,
    ) -> Self {
        let now = Instant::now();
        let far = now + FAR;
        Relay {
            client: Peer::new(client, Side::Client, client_pre, now),
            backend: Peer::new(backend, Side::Backend, backend_pre, now),
            bucket: Bucket::new(&policy.limits, now).map(Box::new),
            policy,
            metrics,
            deflate: session.deflate,
            timer: Box::pin(tokio::time::sleep_until(far)),
            armed: far,
            cancelled: Box::pin(session.cancel.cancelled_owned()),
            cancel_seen: false,
            shutdown: session.shutdown,
            drain_at: None,
            token_expires: session.token_expires,
            discarding: false,
            close_deadline: None,
            outcome: None,
            trust_short_reads: tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// How the connection ended; counts the close. Call once, after
    /// [`Relay::poll_relay`] returned `Ready`.
    pub fn report(&mut self) -> Report {
        let closed = self.outcome.take().unwrap_or(Closed {
            initiator: Side::Gateway,
            code: close_code::ABNORMAL,
            reason: String::new(),
        });
        self.metrics.close(closed.initiator, closed.code);
        Report {
            closed,
            client_to_backend: self.client.traffic,
            backend_to_client: self.backend.traffic,
        }
    }
}

impl<C, B> Relay<C, B>
where
    C: RelayIo,
    B: RelayIo,
{
    /// Moves bytes until the connection ends (`Ready`).
    pub fn poll_relay(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut now = Instant::now();
        if !self.cancel_seen && self.cancelled.as_mut().poll(cx).is_ready() {
            self.cancel_seen = true;
            self.on_cancel(now);
        }
        let mut timer_due = self.timer.as_mut().poll(cx).is_ready();
        for _ in 0..MAX_ROUNDS_PER_POLL {
            if timer_due {
                self.armed = now + FAR;
                self.on_timer(now);
            }
            let mut progress = false;
            progress |= self.client.flush(cx, now, self.discarding);
            if let Some((_, pong)) = self.policy.app_ping.as_ref() {
                // app_pong is a data frame: never between another message's fragments.
                if !self.backend.inbound.mid_message() {
                    progress |= self.client.flush_app_pong(cx, pong, now);
                }
            }
            progress |= self.backend.flush(cx, now, self.discarding);
            progress |= self.pump(cx, Side::Client, now);
            progress |= self.pump(cx, Side::Backend, now);
            if self.client.finished() && self.backend.finished() {
                return Poll::Ready(());
            }
            if self.close_deadline.is_some_and(|d| now >= d) {
                return Poll::Ready(());
            }
            timer_due = self.arm_timer(cx, now);
            if !(progress || timer_due) {
                return Poll::Pending;
            }
            now = Instant::now();
        }
        // Busy in both directions: let other connections on this worker run.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Reads once from one side and forwards what it may to the other.
    fn pump(&mut self, cx: &mut Context<'_>, from: Side, now: Instant) -> bool {
        match from {
            Side::Client => pump_dir(
                cx,
                &mut self.client,
                &mut self.backend,
                &DirCtx {
                    from_client: true,
                    max_message_bytes: self.policy.max_message_bytes,
                    validate_utf8: self.policy.validate_utf8,
                    validate_json: self.policy.validate_json,
                    deflate: self.deflate,
                    app_ping: self.policy.app_ping.as_ref().map(|(p, _)| &p[..]),
                },
                &mut self.bucket,
                self.policy.read_chunk,
                self.discarding,
                self.trust_short_reads,
                &self.metrics.client_to_backend,
                now,
            )
            .map(|o| self.on_pumped(Side::Client, o, now)),
            _ => pump_dir(
                cx,
                &mut self.backend,
                &mut self.client,
                &DirCtx {
                    from_client: false,
                    max_message_bytes: self.policy.max_message_bytes,
                    validate_utf8: self.policy.validate_utf8,
                    validate_json: false,
                    deflate: self.deflate,
                    app_ping: None,
                },
                &mut None,
                self.policy.read_chunk,
                self.discarding,
                self.trust_short_reads,
                &self.metrics.backend_to_client,
                now,
            )
            .map(|o| self.on_pumped(Side::Backend, o, now)),
        }
        .is_some()
    }

    /// Acts on what one read showed.
    fn on_pumped(&mut self, from: Side, o: Pumped, now: Instant) {
        if o.events.heartbeat_pong {
            let (ping_at, hb) = match from {
                Side::Client => (&mut self.client.ping_at, &self.metrics.client_heartbeat),
                _ => (&mut self.backend.ping_at, &self.metrics.backend_heartbeat),
            };
            if let Some(t) = ping_at.take() {
                hb.rtt
                    .observe(now.saturating_duration_since(t).as_secs_f64());
            }
        }
        if from == Side::Client {
            self.client.pongs_due += o.events.app_pings;
        }
        if let Some(v) = o.violation {
            if v.code == close_code::RATE_LIMITED {
                self.metrics.rate_limited.inc();
            }
            self.fail(from, v.code, v.reason, false, now);
            return;
        }
        if let Some(code) = o.events.close {
            // The close frame was forwarded: the receiver has its close now.
            match from {
                Side::Client => {
                    self.client.close_rcvd = true;
                    self.backend.close_sent = true;
                }
                _ => {
                    self.backend.close_rcvd = true;
                    self.client.close_sent = true;
                }
            }
            self.outcome.get_or_insert(Closed {
                initiator: from,
                code,
                reason: String::new(),
            });
            self.close_deadline.get_or_insert(now + CLOSE_TIMEOUT);
        }
        if o.eof {
            let closed_cleanly = match from {
                Side::Client => self.client.close_rcvd,
                _ => self.backend.close_rcvd,
            };
            let partner_closing = match from {
                Side::Client => self.backend.close_rcvd,
                _ => self.client.close_rcvd,
            };
            if partner_closing && !closed_cleanly {
                // The partner started a close handshake and this side left
                // without answering: complete it for the partner with its
                // own code, as the vanished side should have.
                let code = self.outcome.as_ref().map_or(close_code::NORMAL, |c| c.code);
                let code = if close_code::valid_on_wire(code) {
                    code
                } else {
                    close_code::NORMAL
                };
                match from {
                    Side::Client => {
                        self.client.dead = true;
                        self.backend.queue_close(code, "");
                    }
                    _ => {
                        self.backend.dead = true;
                        self.client.queue_close(code, "");
                    }
                }
            } else if !closed_cleanly {
                // The peer vanished without a close frame.
                self.fail(from, close_code::ABNORMAL, "connection dropped", true, now);
            }
        }
    }

    /// Ends the connection because of `culprit`: it gets `code` (unless it
    /// is gone), its partner gets 1001 (a backend) or 1014 (a client).
    fn fail(&mut self, culprit: Side, code: u16, reason: &'static str, gone: bool, now: Instant) {
        let (partner_code, partner_reason) = match culprit {
            Side::Client => (close_code::GOING_AWAY, client_reason(code, reason)),
            _ => (close_code::BAD_GATEWAY, backend_reason(code, reason)),
        };
        match culprit {
            Side::Client => {
                if gone {
                    self.client.dead = true;
                } else {
                    self.client.queue_close(code, reason);
                }
                self.backend.queue_close(partner_code, partner_reason);
            }
            _ => {
                if gone {
                    self.backend.dead = true;
                } else {
                    self.backend.queue_close(code, reason);
                }
                self.client.queue_close(partner_code, partner_reason);
            }
        }
        let initiator = if code == close_code::ABNORMAL {
            culprit
        } else {
            Side::Gateway
        };
        self.outcome.get_or_insert(Closed {
            initiator,
            code,
            reason: reason.to_string(),
        });
        self.discarding = true;
        self.close_deadline.get_or_insert(now + CLOSE_TIMEOUT);
    }

    /// The gateway itself ends the connection, toward both sides.
    fn end_both(
        &mut self,
        client: (u16, &'static str),
        backend: (u16, &'static str),
        now: Instant,
    ) {
        self.client.queue_close(client.0, client.1);
        self.backend.queue_close(backend.0, backend.1);
        self.outcome.get_or_insert(Closed {
            initiator: Side::Gateway,
            code: client.0,
            reason: client.1.to_string(),
        });
        self.discarding = true;
        self.close_deadline.get_or_insert(now + CLOSE_TIMEOUT);
    }

    fn on_cancel(&mut self, now: Instant) {
        if self.shutdown.is_cancelled() {
            let bye = (close_code::GOING_AWAY, "gateway shutting down");
            self.end_both(bye, bye, now);
        } else {
            let spread = self.policy.drain_spread;
            let delay = spread.mul_f64(fastrand::f64());
            self.drain_at = Some(now + delay);
        }
    }

    fn on_timer(&mut self, now: Instant) {
        if self.drain_at.is_some_and(|t| now >= t) {
            self.drain_at = None;
            self.end_both(
                (close_code::SERVICE_RESTART, "backend removed from service"),
                (close_code::GOING_AWAY, "backend removed from service"),
                now,
            );
        }
        if self.token_expires.is_some_and(|t| now >= t) {
            self.token_expires = None;
            self.fail(
                Side::Client,
                close_code::AUTH_FAILED,
                "token expired",
                false,
                now,
            );
        }
        for side in [Side::Client, Side::Backend] {
            let (blocked, hb_state) = match side {
                Side::Client => (
                    self.client.blocked_since,
                    self.client.heartbeat_deadline(self.policy.client_heartbeat),
                ),
                _ => (
                    self.backend.blocked_since,
                    self.backend
                        .heartbeat_deadline(self.policy.backend_heartbeat),
                ),
            };
            if blocked.is_some_and(|t| now >= t + self.policy.slow_consumer_timeout) {
                self.fail(
                    side,
                    close_code::POLICY_VIOLATION,
                    "slow consumer",
                    false,
                    now,
                );
                continue;
            }
            if hb_state.is_none_or(|d| now < d) {
                continue;
            }
            let peer_ping = match side {
                Side::Client => (
                    &mut self.client.ping_at,
                    self.client.last_rx,
                    &mut self.client.ping_unsent,
                ),
                _ => (
                    &mut self.backend.ping_at,
                    self.backend.last_rx,
                    &mut self.backend.ping_unsent,
                ),
            };
            match *peer_ping.0 {
                Some(t) if peer_ping.1 <= t => {
                    // No frame at all since the ping, for `timeout`: dead.
                    let handles: &HeartbeatHandles = match side {
                        Side::Client => &self.metrics.client_heartbeat,
                        _ => &self.metrics.backend_heartbeat,
                    };
                    handles.timeouts.inc();
                    let reason = match side {
                        Side::Client => "client heartbeat timeout",
                        _ => "backend heartbeat timeout",
                    };
                    self.heartbeat_dead(side, reason, now);
                }
                _ => {
                    // Quiet for `interval`: ping. The clock starts now, even
                    // if the stream is blocked and the ping cannot go out,
                    // so a peer that stopped reading is found dead too.
                    *peer_ping.0 = Some(now);
                    *peer_ping.2 = true;
                }
            }
        }
    }

    fn heartbeat_dead(&mut self, side: Side, reason: &'static str, now: Instant) {
        match side {
            Side::Client => {
                self.client.dead = true;
                self.backend.queue_close(close_code::GOING_AWAY, reason);
            }
            _ => {
                self.backend.dead = true;
                self.client.queue_close(close_code::BAD_GATEWAY, reason);
            }
        }
        let code = match side {
            Side::Client => close_code::GOING_AWAY,
            _ => close_code::BAD_GATEWAY,
        };
        self.outcome.get_or_insert(Closed {
            initiator: Side::Gateway,
            code,
            reason: reason.to_string(),
        });
        self.discarding = true;
        self.close_deadline.get_or_insert(now + CLOSE_TIMEOUT);
    }

    /// Arms the one timer at the earliest deadline. Returns true if it is
    /// already due (the caller loops).
    fn arm_timer(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let mut next = None::<Instant>;
        let mut consider = |d: Option<Instant>| {
            if let Some(d) = d {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        };
        consider(self.client.heartbeat_deadline(self.policy.client_heartbeat));
        consider(
            self.backend
                .heartbeat_deadline(self.policy.backend_heartbeat),
        );
        consider(self.close_deadline);
        consider(self.drain_at);
        consider(self.token_expires);
        let slow = self.policy.slow_consumer_timeout;
        consider(self.client.blocked_since.map(|t| t + slow));
        consider(self.backend.blocked_since.map(|t| t + slow));
        let Some(next) = next else { return false };
        if next <= now {
            return true;
        }
        // Later deadlines are found when the armed one fires; re-arming on
        // every read would cost a timer-wheel update per message.
        if next < self.armed {
            self.armed = next;
            self.timer.as_mut().reset(next);
            return self.timer.as_mut().poll(cx).is_ready();
        }
        false
    }
}

/// What one read of one direction produced.
struct Pumped {
    events: Events,
    violation: Option<Violation>,
    eof: bool,
}

/// Reads once from `from` (if `to` has room) and forwards to `to`. `None`
/// if nothing happened.
#[allow(clippy::too_many_arguments)]
fn pump_dir<R, W>(
    cx: &mut Context<'_>,
    from: &mut Peer<R>,
    to: &mut Peer<W>,
    ctx: &DirCtx<'_>,
    bucket: &mut Option<Box<Bucket>>,
    read_chunk: usize,
    discarding: bool,
    trust_short_reads: bool,
    counters: &DirectionCounters,
    now: Instant,
) -> Option<Pumped>
where
    R: RelayIo,
    W: RelayIo,
{
    if from.dead || from.eof || from.close_rcvd {
        return None;
    }
    // Backpressure: nothing new is read while the receiver has not taken
    // what it was given (unless the data will be dropped anyway).
    if !discarding && (to.spill_pending() || to.dead) {
        return None;
    }
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let n = if !from.pre.is_empty() {
            let n = from.pre.len().min(read_chunk);
            scratch[HEADROOM..HEADROOM + n].copy_from_slice(&from.pre[..n]);
            from.pre = if n == from.pre.len() {
                Bytes::new()
            } else {
                from.pre.slice(n..)
            };
            n
        } else {
            let mut rb = ReadBuf::new(&mut scratch[HEADROOM..HEADROOM + read_chunk]);
            match Pin::new(&mut from.io).poll_read(cx, &mut rb) {
                Poll::Pending => return None,
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if trust_short_reads && n > 0 && n < read_chunk {
                        from.io.drained();
                    }
                    n
                }
                Poll::Ready(Err(e)) => {
                    log_io_error(from.side, &e);
                    0
                }
            }
        };
        from.last_rx = now;
        if n == 0 {
            from.eof = true;
            return Some(Pumped {
                events: Events::default(),
                violation: None,
                eof: true,
            });
        }
        if discarding {
            return Some(Pumped {
                events: Events::default(),
                violation: None,
                eof: false,
            });
        }
        let carry = from.inbound.carry.len();
        let start = HEADROOM - carry;
        scratch[start..HEADROOM].copy_from_slice(&from.inbound.carry);
        from.inbound.carry.clear();
        let mut events = Events::default();
        let (w, violation) = from.inbound.process(
            &mut scratch[start..HEADROOM + n],
            ctx,
            bucket,
            now,
            &mut events,
            &mut to.spill,
        );
        let out = &scratch[start..start + w];
        if to.spill_pending() {
            // A held message was released into the spill: keep the order.
            to.spill.extend_from_slice(out);
            to.blocked_since.get_or_insert(now);
        } else if !out.is_empty() {
            to.write_or_spill(cx, out, now);
        }
        to.mid_frame = from.inbound.mid_frame();
        if events.messages > 0 {
            counters.messages.inc_by(events.messages);
        }
        if events.payload_bytes > 0 {
            counters.bytes.inc_by(events.payload_bytes);
        }
        from.traffic.messages += events.messages;
        from.traffic.bytes += events.payload_bytes;
        Some(Pumped {
            events,
            violation,
            eof: false,
        })
    })
}

fn log_io_error(side: Side, e: &io::Error) {
    tracing::debug!(side = side.label(), error = %e, "read failed");
}

/// Reason sent to the backend when the client side ended the link.
fn client_reason(code: u16, reason: &'static str) -> &'static str {
    match code {
        close_code::ABNORMAL => "client went away",
        _ => reason,
    }
}

/// Reason sent to the client when the backend side ended the link.
fn backend_reason(code: u16, reason: &'static str) -> &'static str {
    match code {
        close_code::ABNORMAL => "backend went away",
        close_code::PROTOCOL_ERROR => "backend protocol error",
        _ => reason,
    }
}
