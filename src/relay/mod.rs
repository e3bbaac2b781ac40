//! The per-connection pump between a client and its backend, after both
//! upgrades: frames both ways, heartbeats, limits, backpressure and close
//! codes. One task per connection; this is the gateway's hot path.
//!
//! This file is the poll loop only. Its rooms:
//! - `peer`: one end (socket, pending bytes, where its close stands);
//! - `inbound`: one direction's frame parser, limits and validation;
//! - `inflate`: inflating compressed (permessage-deflate) messages to judge them;
//! - `ending`: how a connection ends, and what that means toward each side;
//! - `timers`: the one `Sleep` and every deadline it serves;
//! - `policy`: the relay's view of the config; `rate`: token buckets.
//!
//! How it spends memory and CPU:
//! - Reads go into a per-thread scratch buffer, are parsed in place and
//!   written straight to the other side. Only bytes the receiver will not
//!   take right now are copied into that peer's own `spill`, and the relay
//!   stops reading from the sender until they are gone. So a quiet
//!   connection holds no buffer, and pending data per direction is bounded
//!   by one read (`READ_CHUNK`, capped at `max_buffered_bytes`).
//! - Frame payloads are forwarded as they arrived, masked or not; only the
//!   frames a feature must read are inspected (see `inbound`).
//!
//! It must never: block, allocate per message on the common path, queue
//! without bound, or forward anything after a close frame it has sent.

pub mod ending;
pub mod inbound;
pub mod inflate;
pub mod peer;
pub mod policy;
pub mod push;
pub mod rate;
pub mod timers;

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::{DirectionCounters, Metrics};
use crate::side::Side;
use crate::ws::close::{code, valid_on_wire};
use ending::{Ending, Toward};
use inbound::{DirCtx, Events, Violation};
use inflate::Inspect;
use peer::{CloseState, Peer, Reading, Traffic};
use push::{Link, Push};
use rate::Bucket;
use timers::{Beat, Timers};

pub use policy::{Heartbeat, Policy};

/// Room before the read position for bytes carried over from the previous
/// read (a split header or a captured control frame: at most 14 + 125).
const HEADROOM: usize = 256;
/// Rounds of flush-and-read per wake-up before yielding to other tasks.
const MAX_ROUNDS_PER_POLL: usize = 32;

thread_local! {
    /// One read buffer per runtime worker thread, shared by all connections
    /// that thread polls. Never held across an `.await`.
    static SCRATCH: RefCell<Box<[u8]>> =
        RefCell::new(vec![0u8; HEADROOM + policy::READ_CHUNK].into_boxed_slice());
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

/// Per-connection inputs besides the two sockets.
pub struct Session {
    /// permessage-deflate was negotiated end to end (RSV1 allowed).
    pub deflate: bool,
    /// How compressed messages from each side (indexed by [`Side`]) are
    /// inspected; `None`: not inspected (passthrough).
    pub inspect: [Option<Inspect>; 2],
    /// When the client's token expires (close 4001 "token expired").
    pub token_expires: Option<Instant>,
    /// Fires when this connection must end: shutdown, or its backend was
    /// drained or removed. A child of `shutdown`.
    pub cancel: CancellationToken,
    /// The root token: tells a shutdown (1001) from a drain (1012).
    pub shutdown: CancellationToken,
}

/// How a relayed connection ended.
#[derive(Debug, Clone)]
pub struct Report {
    pub ending: Ending,
    pub client_to_backend: Traffic,
    pub backend_to_client: Traffic,
}

/// The relay of one connection: a plain struct polled by its owner (the
/// connection task in `conn`), so the task's future is this struct and
/// little more: no nested `async fn` state machines, each of which would
/// keep its own copies of the arguments.
pub struct Relay<S> {
    /// Indexed by [`Side`]: client, backend.
    peers: [Peer<S>; 2],
    policy: Arc<Policy>,
    metrics: Arc<Metrics>,
    deflate: bool,
    inspect: [Option<Inspect>; 2],
    /// Boxed: most connections have no rate limit.
    bucket: Option<Box<Bucket>>,
    /// Pushes from the cluster; boxed, and only on cluster-enabled gateways.
    link: Option<Box<Link>>,
    timers: Timers,
    cancel_seen: bool,
    shutdown: CancellationToken,
    /// The first ending decided; later ones only add close frames.
    ending: Option<Ending>,
    /// The gateway has decided to end the connection: incoming data is
    /// read and dropped, only close frames go out.
    discarding: bool,
    /// Short reads may mark a socket drained (see [`RelayIo::drained`]).
    /// Only on a current-thread runtime: its reactor cannot record new
    /// readiness between our read and that mark, so no wake-up is lost;
    /// on a multi-thread runtime another thread's reactor could.
    trust_short_reads: bool,
}

impl<S: RelayIo> Relay<S> {
    pub fn new(
        client: S,
        client_pre: Bytes,
        backend: S,
        backend_pre: Bytes,
        policy: Arc<Policy>,
        metrics: Arc<Metrics>,
        session: Session,
    ) -> Self {
        let now = Instant::now();
        Relay {
            peers: [
                Peer::new(client, Side::Client, client_pre, now),
                Peer::new(backend, Side::Backend, backend_pre, now),
            ],
            bucket: Bucket::new(&policy.rate, now).map(Box::new),
            link: None,
            policy,
            metrics,
            deflate: session.deflate,
            inspect: session.inspect,
            timers: Timers::new(now, session.token_expires, session.cancel),
            cancel_seen: false,
            shutdown: session.shutdown,
            ending: None,
            discarding: false,
            trust_short_reads: tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread),
        }
    }

    /// Lets the cluster push frames and closes to this connection.
    pub fn with_link(mut self, link: Link) -> Self {
        self.link = Some(Box::new(link));
        self
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// How the connection ended; counts the close. Call once, after
    /// [`Relay::poll_relay`] returned `Ready`.
    pub fn report(&mut self) -> Report {
        let ending = self.ending.unwrap_or(Ending::Aborted);
        self.metrics.close(ending.initiator(), ending.code());
        Report {
            ending,
            client_to_backend: self.peers[Side::Client as usize].traffic,
            backend_to_client: self.peers[Side::Backend as usize].traffic,
        }
    }

    fn peer(&mut self, side: Side) -> &mut Peer<S> {
        &mut self.peers[side as usize]
    }

    /// The peer frames come `from`, and the one they go to.
    fn pair(&mut self, from: Side) -> (&mut Peer<S>, &mut Peer<S>) {
        let [client, backend] = &mut self.peers;
        match from {
            Side::Client => (client, backend),
            Side::Backend => (backend, client),
        }
    }

    /// Moves bytes until the connection ends (`Ready`).
    pub fn poll_relay(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut now = Instant::now();
        if !self.cancel_seen && self.timers.poll_cancelled(cx) {
            self.cancel_seen = true;
            self.on_cancel(now);
        }
        let mut timer_due = self.timers.poll_fired(cx);
        for _ in 0..MAX_ROUNDS_PER_POLL {
            if timer_due {
                self.timers.fired(now);
                self.on_timer(now);
            }
            let mut progress = false;
            let fin_needed = self.discarding;
            let reason = self.link.as_ref().and_then(|l| l.close_reason.as_deref());
            progress |= self.peers[Side::Client as usize].flush(cx, now, fin_needed, reason);
            if let Some((_, pong)) = self.policy.app_ping.as_ref() {
                let [client, backend] = &mut self.peers;
                // app_pong is a data frame: never between another message's fragments.
                if !backend.inbound.mid_message() {
                    progress |= client.flush_app_pong(cx, pong, now);
                }
            }
            progress |= self.peer(Side::Backend).flush(cx, now, fin_needed, None);
            if self.link.is_some() {
                progress |= self.deliver_pushes(cx, now);
            }
            progress |= self.pump(cx, Side::Client, now);
            progress |= self.pump(cx, Side::Backend, now);
            progress |= self.on_failed_writes(now);
            if self.peers.iter().all(Peer::finished) || self.timers.close_overdue(now) {
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

    /// Writes pushed frames toward the client at message boundaries, and
    /// acts on a close by command. Frames that arrive once the client's
    /// close has begun are dropped.
    fn deliver_pushes(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        // A close by command only counts if nothing else ended the
        // connection first (its reason must not replace another's).
        let undecided = self.ending.is_none();
        let Some(link) = self.link.as_deref_mut() else {
            return false;
        };
        let [client, backend] = &mut self.peers;
        let mut progress = false;
        let mut close = None;
        loop {
            let frame = match link.pending.take() {
                Some(f) => f,
                None => match link.rx.poll_pop(cx) {
                    Poll::Ready(Push::Frame(f)) => f,
                    Poll::Ready(Push::Close { code, reason }) if undecided => {
                        link.close_reason = Some(reason);
                        close = Some(code);
                        break;
                    }
                    Poll::Ready(Push::Close { .. }) => continue,
                    Poll::Pending => break,
                },
            };
            if client.close != CloseState::Open {
                continue;
            }
            // A frame of our own only between whole messages toward the
            // client; woken again by the socket that completes them.
            if client.mid_frame || client.spill_pending() || backend.inbound.mid_message() {
                link.pending = Some(frame);
                if undecided && let Some((code, reason)) = link.rx.take_close() {
                    link.pending = None;
                    link.close_reason = Some(reason);
                    close = Some(code);
                }
                break;
            }
            client.write_or_spill(cx, &frame, now);
            progress = true;
        }
        if let Some(code) = close {
            self.end(Ending::Disconnected { code }, now);
            progress = true;
        }
        progress
    }

    /// Reads once from one side and forwards what it may to the other.
    fn pump(&mut self, cx: &mut Context<'_>, from: Side, now: Instant) -> bool {
        // Field by field: the peers are borrowed mutably while the policy
        // and the counters are read, with no clone on the hot path.
        let policy = &*self.policy;
        let dir = Direction {
            ctx: DirCtx {
                from_client: from == Side::Client,
                max_message_bytes: policy.max_message_bytes,
                validate_utf8: policy.validate_utf8,
                // JSON and app_ping apply to what clients send only.
                validate_json: policy.validate_json && from == Side::Client,
                deflate: self.deflate,
                inspect: self.inspect[from as usize],
                app_ping: match from {
                    Side::Client => policy.app_ping.as_ref().map(|(p, _)| &p[..]),
                    Side::Backend => None,
                },
            },
            read_chunk: policy.read_chunk,
            discarding: self.discarding,
            trust_short_reads: self.trust_short_reads,
            counters: self.metrics.direction(from),
        };
        // Rates apply to what clients send only.
        let mut no_bucket = None;
        let bucket = match from {
            Side::Client => &mut self.bucket,
            Side::Backend => &mut no_bucket,
        };
        let [client, backend] = &mut self.peers;
        let (src, dst) = match from {
            Side::Client => (client, backend),
            Side::Backend => (backend, client),
        };
        match pump_dir(cx, src, dst, &dir, bucket, now) {
            Some(o) => {
                self.on_pumped(from, o, now);
                true
            }
            None => false,
        }
    }

    /// Acts on what one read showed.
    fn on_pumped(&mut self, from: Side, o: Pumped, now: Instant) {
        if o.events.heartbeat_pong
            && let Some(rtt) = self.peer(from).liveness.pong(now)
        {
            self.metrics.heartbeat(from).rtt.observe(rtt.as_secs_f64());
        }
        if from == Side::Client {
            self.peer(Side::Client).pongs_due += o.events.app_pings;
        }
        if let Some(v) = o.violation {
            if v.code == code::RATE_LIMITED {
                self.metrics.rate_limited.inc();
            }
            self.end(
                Ending::Violation {
                    by: from,
                    code: v.code,
                    reason: v.reason,
                },
                now,
            );
            return;
        }
        if let Some(c) = o.events.close {
            // The close frame was forwarded: the receiver has its close now.
            let (src, dst) = self.pair(from);
            src.reading = Reading::CloseReceived;
            dst.close_forwarded();
            self.end(Ending::Closed { by: from, code: c }, now);
        }
        if o.close_answered {
            self.peer(from).close_answered();
        }
        if o.eof {
            self.on_gone(from, now);
        }
    }

    /// A peer's socket ended: EOF or a failed read, or a failed write.
    fn on_gone(&mut self, from: Side, now: Instant) {
        let (src, dst) = self.pair(from);
        let closed_cleanly = src.reading == Reading::CloseReceived;
        let partner_closing = dst.reading == Reading::CloseReceived;
        if partner_closing && !closed_cleanly {
            // The partner started a close handshake and this side left
            // without answering: complete it for the partner with its
            // own code, as the vanished side should have.
            let c = self.ending.map_or(code::NORMAL, |e| e.code());
            let c = if valid_on_wire(c) { c } else { code::NORMAL };
            let (src, dst) = self.pair(from);
            src.drop_peer();
            dst.queue_close(c, "");
        } else if !closed_cleanly {
            self.end(Ending::Vanished(from), now);
        }
    }

    /// A write that failed made its peer gone without a read seeing it (a
    /// gone peer is not read any more): that peer vanished, and its partner
    /// is told now rather than at a heartbeat timeout, or never.
    fn on_failed_writes(&mut self, now: Instant) -> bool {
        let mut any = false;
        for side in Side::BOTH {
            if std::mem::take(&mut self.peer(side).write_failed) {
                self.on_gone(side, now);
                any = true;
            }
        }
        any
    }

    /// Records how the connection ends (the first ending wins) and acts on
    /// it toward each peer.
    fn end(&mut self, ending: Ending, now: Instant) {
        for side in Side::BOTH {
            match ending.toward(side) {
                Toward::Nothing => {}
                Toward::Close(c, reason) => self.peer(side).queue_close(c, reason),
                Toward::Drop => self.peer(side).drop_peer(),
            }
        }
        self.discarding |= ending.gateway_decided();
        self.timers.start_close(now);
        self.ending.get_or_insert(ending);
    }

    fn on_cancel(&mut self, now: Instant) {
        if self.shutdown.is_cancelled() {
            self.end(Ending::Shutdown, now);
        } else {
            let delay = self.policy.drain_spread.mul_f64(fastrand::f64());
            self.timers.drain_at(now + delay);
        }
    }

    fn on_timer(&mut self, now: Instant) {
        if self.timers.take_drain(now) {
            self.end(Ending::Drained, now);
        }
        if self.timers.take_token_expiry(now) {
            self.end(
                Ending::Violation {
                    by: Side::Client,
                    code: code::AUTH_FAILED,
                    reason: "token expired",
                },
                now,
            );
        }
        let slow = self.policy.slow_consumer_timeout;
        for side in Side::BOTH {
            let hb = self.policy.heartbeat(side);
            let peer = self.peer(side);
            if peer.blocked_since().is_some_and(|t| now >= t + slow) {
                self.end(
                    Ending::Violation {
                        by: side,
                        code: code::POLICY_VIOLATION,
                        reason: "slow consumer",
                    },
                    now,
                );
                continue;
            }
            let deadline = peer
                .heartbeating()
                .then(|| peer.liveness.deadline(hb))
                .flatten();
            if deadline.is_none_or(|d| now < d) {
                continue;
            }
            if peer.liveness.due(now) == Beat::Dead {
                self.metrics.heartbeat(side).timeouts.inc();
                self.end(Ending::HeartbeatTimeout(side), now);
            }
        }
    }

    /// Arms the one timer at the earliest deadline. Returns true if it is
    /// already due (the caller loops).
    fn arm_timer(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let slow = self.policy.slow_consumer_timeout;
        let mut peer_deadlines = [None; 4];
        for (i, side) in Side::BOTH.into_iter().enumerate() {
            let peer = &self.peers[side as usize];
            peer_deadlines[2 * i] = peer
                .heartbeating()
                .then(|| peer.liveness.deadline(self.policy.heartbeat(side)))
                .flatten();
            peer_deadlines[2 * i + 1] = peer.blocked_since().map(|t| t + slow);
        }
        self.timers.arm(cx, peer_deadlines, now)
    }
}

/// What one direction needs besides its two peers.
struct Direction<'a> {
    ctx: DirCtx<'a>,
    read_chunk: usize,
    discarding: bool,
    trust_short_reads: bool,
    counters: &'a DirectionCounters,
}

/// What one read of one direction produced.
struct Pumped {
    events: Events,
    violation: Option<Violation>,
    eof: bool,
    /// While discarding: the sender's close frame arrived (not forwarded).
    close_answered: bool,
}

/// Reads once from `from` (if `to` has room) and forwards to `to`. `None`
/// if nothing happened.
fn pump_dir<S: RelayIo>(
    cx: &mut Context<'_>,
    from: &mut Peer<S>,
    to: &mut Peer<S>,
    dir: &Direction<'_>,
    bucket: &mut Option<Box<Bucket>>,
    now: Instant,
) -> Option<Pumped> {
    if !from.readable() {
        return None;
    }
    // Backpressure: nothing new is read while the receiver has not taken
    // what it was given (unless the data will be dropped anyway).
    if !dir.discarding && (to.spill_pending() || to.gone()) {
        return None;
    }
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let read_chunk = dir.read_chunk;
        let n = if let Some(pre) = from.pre.take() {
            let n = pre.len().min(read_chunk);
            scratch[HEADROOM..HEADROOM + n].copy_from_slice(&pre[..n]);
            // More than one read's worth: keep the rest (once per connection
            // at most, not per message).
            if n < pre.len() {
                from.pre = Some(Box::from(&pre[n..]));
            }
            n
        } else {
            let mut rb = ReadBuf::new(&mut scratch[HEADROOM..HEADROOM + read_chunk]);
            match Pin::new(&mut from.io).poll_read(cx, &mut rb) {
                Poll::Pending => return None,
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if dir.trust_short_reads && n > 0 && n < read_chunk {
                        from.io.drained();
                    }
                    n
                }
                Poll::Ready(Err(e)) => {
                    tracing::debug!(side = from.side().label(), error = %e, "read failed");
                    0
                }
            }
        };
        from.liveness.heard(now);
        if n == 0 {
            from.reading = Reading::Eof;
            return Some(Pumped {
                events: Events::default(),
                violation: None,
                eof: true,
                close_answered: false,
            });
        }
        let carry = from.inbound.carry.len();
        let start = HEADROOM - carry;
        scratch[start..HEADROOM].copy_from_slice(&from.inbound.carry);
        from.inbound.carry.clear();
        if dir.discarding {
            // Dropped unread, but delimited: the peer's answer to the
            // gateway's close frame completes the handshake.
            return Some(Pumped {
                events: Events::default(),
                violation: None,
                eof: false,
                close_answered: from.inbound.scan_for_close(&scratch[start..HEADROOM + n]),
            });
        }
        let mut events = Events::default();
        let (w, violation) = from.inbound.process(
            &mut scratch[start..HEADROOM + n],
            &dir.ctx,
            bucket,
            now,
            &mut events,
            &mut to.spill,
        );
        let out = &scratch[start..start + w];
        if to.spill_pending() {
            // A held message was released into the spill: keep the order.
            to.spill_behind(out, now);
        } else if !out.is_empty() {
            to.write_or_spill(cx, out, now);
        }
        to.mid_frame = from.inbound.mid_frame();
        if events.messages > 0 {
            dir.counters.messages.inc_by(events.messages);
        }
        if events.payload_bytes > 0 {
            dir.counters.bytes.inc_by(events.payload_bytes);
        }
        from.traffic.messages += events.messages;
        from.traffic.bytes += events.payload_bytes;
        Some(Pumped {
            events,
            violation,
            eof: false,
            close_answered: false,
        })
    })
}
