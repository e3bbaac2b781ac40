//! One resumable session: the backend link for its whole life, and the
//! client link of the moment (none while the client is away). Message by
//! message, because it must count and hold what it sends (see the module
//! doc for the protocol).
//!
//! One task per session, polling: the backend, the attached client, the
//! attach channel (a reconnect hands its socket over here, from any shard),
//! one deadline (window, acks, heartbeat, token expiry, drain) and the
//! backend's cancellation token.

use std::any::Any;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::header::HeaderValue;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use crate::backend::Active;
use crate::config::ResumeConfig;
use crate::metrics::{Metrics, ResumeResult};
use crate::relay::Policy;
use crate::relay::ending::{Ending, Toward};
use crate::resume::registry::{Live, Owner, Registry};
use crate::resume::wire::{self, HelloState, Incoming};
use crate::side::{Initiator, Side};
use crate::tls::Stream;
use crate::ws::close::code;

type Ws = WebSocketStream<Stream>;

/// The gateway acknowledges after this many client messages, or after
/// `ACK_DELAY` if fewer came.
const ACK_EVERY: u64 = 32;
const ACK_DELAY: Duration = Duration::from_millis(100);
/// How long a write to the client may take before the link counts as lost.
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// An ended session's reason is kept at least this long (or one window).
const REMEMBER_ENDED: Duration = Duration::from_secs(60);
/// How long the last close frame may take to go out.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A client link for a session: a new one, or a reconnect.
pub struct Attach {
    pub client: Stream,
    /// Bytes read past the upgrade request.
    pub pre: Bytes,
    /// Data messages the client received in this session (0 for a new one).
    pub received: u64,
    pub state: HelloState,
    pub peer: SocketAddr,
    /// The link's place under the caps. The session keeps the place of its
    /// latest link until it ends, attached or waiting: a waiting session
    /// holds a backend link and a buffer, so it counts under
    /// `max_connections` and `max_connections_per_ip` like a live one.
    pub place: Arc<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for Attach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attach")
            .field("peer", &self.peer)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

/// Everything a session needs besides its first client link.
pub struct SessionStart {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub policy: Arc<Policy>,
    pub config: ResumeConfig,
    pub owner: Owner,
    /// The subprotocol the backend chose (a reconnect's 101 repeats it).
    pub protocol: Option<HeaderValue>,
    pub active: Active,
    /// Fires on shutdown or when the backend is drained or removed.
    pub cancel: CancellationToken,
    pub shutdown: CancellationToken,
    pub token_expires: Option<Instant>,
    pub started: Instant,
}

/// Runs a session over the upgraded backend link (and the bytes read past
/// its 101) until it ends; the caller spawns it.
pub async fn start(s: SessionStart, backend: Stream, backend_pre: Bytes, first: Attach) {
    let cfg = ws_config(&s.policy);
    let backend =
        Ws::from_partially_read(backend, backend_pre.to_vec(), Role::Client, Some(cfg)).await;
    let (tx, rx) = mpsc::unbounded_channel();
    let credential = s.registry.issue(Live {
        owner: s.owner.clone(),
        attach: tx.clone(),
        protocol: s.protocol.clone(),
    });
    let mut session = Session {
        backend,
        client: None,
        attach_rx: rx,
        _attach_tx: tx,
        credential,
        out: VecDeque::new(),
        out_acked: 0,
        out_sent: 0,
        buffered: 0,
        in_total: 0,
        in_acked: 0,
        in_bytes: 0,
        out_bytes: 0,
        ack_due: None,
        detached_at: None,
        backend_closed: None,
        drain_at: None,
        resumes: 0,
        last_peer: first.peer,
        _place: first.place.clone(),
        s,
    };
    session.attach(first, Instant::now()).await;
    let end = session.run().await;
    session.finish(end).await;
}

/// Read buffer per socket: tungstenite's default (128 KiB, allocated up
/// front) would make a waiting session cost ~280 KB; it grows when a
/// message needs more.
const READ_BUFFER: usize = 4096;

fn ws_config(p: &Policy) -> WebSocketConfig {
    let max = usize::try_from(p.max_message_bytes).unwrap_or(usize::MAX);
    WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
        .read_buffer_size(READ_BUFFER)
        // Every message is flushed at once anyway (`send`): no write buffer.
        .write_buffer_size(0)
}

/// The attached client link.
struct Client {
    ws: Ws,
    last_heard: Instant,
    ping_sent: Option<Instant>,
}

/// How a session ended.
enum End {
    /// Like a relayed connection (close frames already decided by `Ending`).
    Relay(Ending),
    /// The client stayed away for the whole window.
    Expired,
    /// Too much waited for a missing client.
    Overflow,
    /// The backend closed and its close was delivered to the client.
    BackendClosed(u16),
}

struct Session {
    s: SessionStart,
    backend: Ws,
    client: Option<Client>,
    attach_rx: mpsc::UnboundedReceiver<Attach>,
    /// Kept so the channel never reports closed while no credential is
    /// registered (between a reconnect's take and its attach).
    _attach_tx: mpsc::UnboundedSender<Attach>,
    /// The credential now valid for this session (never logged).
    credential: Box<str>,
    /// Backend messages not yet acknowledged by the client; the first is
    /// number `out_acked + 1`.
    out: VecDeque<Message>,
    out_acked: u64,
    /// Messages written to the current client link.
    out_sent: u64,
    /// Payload bytes in `out`.
    buffered: usize,
    /// Client data messages forwarded to the backend.
    in_total: u64,
    /// The last count acknowledged to the client.
    in_acked: u64,
    in_bytes: u64,
    out_bytes: u64,
    ack_due: Option<Instant>,
    /// The client vanished at this moment.
    detached_at: Option<Instant>,
    /// The backend closed while the client was away: delivered after the
    /// replay.
    backend_closed: Option<Option<CloseFrame>>,
    drain_at: Option<Instant>,
    resumes: u64,
    last_peer: SocketAddr,
    /// The place under the caps of the latest link (see [`Attach::place`]).
    _place: Arc<dyn Any + Send + Sync>,
}

impl Session {
    async fn run(&mut self) -> End {
        let mut cancel_seen = false;
        loop {
            let now = Instant::now();
            let deadline = self.deadline(now);
            let read_backend = self.backend_closed.is_none()
                && (self.client.is_none() || self.buffered < self.s.config.max_buffered_bytes);
            let cancel = self.s.cancel.clone();
            tokio::select! {
                r = self.backend.next(), if read_backend => {
                    if let Some(end) = self.on_backend(r).await {
                        return end;
                    }
                }
                r = next_client(&mut self.client) => {
                    if let Some(end) = self.on_client(r).await {
                        return end;
                    }
                }
                Some(a) = self.attach_rx.recv() => {
                    if let Some(end) = self.attach(a, Instant::now()).await {
                        return end;
                    }
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or(now + Duration::from_secs(3600))) => {
                    if let Some(end) = self.on_deadline(Instant::now()).await {
                        return end;
                    }
                }
                _ = cancel.cancelled(), if !cancel_seen => {
                    cancel_seen = true;
                    if self.s.shutdown.is_cancelled() {
                        return End::Relay(Ending::Shutdown);
                    }
                    let spread = self.s.policy.drain_spread.mul_f64(fastrand::f64());
                    self.drain_at = Some(Instant::now() + spread);
                }
            }
        }
    }

    /// The earliest moment something is due.
    fn deadline(&self, _now: Instant) -> Option<Instant> {
        let mut d: Option<Instant> = None;
        let mut at = |t: Option<Instant>| {
            if let Some(t) = t {
                d = Some(d.map_or(t, |d| d.min(t)));
            }
        };
        at(self.detached_at.map(|t| t + self.s.config.window.get()));
        at(self.s.token_expires);
        at(self.drain_at);
        if let Some(c) = &self.client {
            at(self.ack_due);
            if let Some(hb) = self.s.policy.heartbeat(Side::Client) {
                at(Some(match c.ping_sent {
                    Some(t) => t + hb.timeout,
                    None => c.last_heard + hb.interval,
                }));
            }
        }
        d
    }

    async fn on_deadline(&mut self, now: Instant) -> Option<End> {
        if self
            .detached_at
            .is_some_and(|t| now >= t + self.s.config.window.get())
        {
            return Some(End::Expired);
        }
        if self.s.token_expires.is_some_and(|t| now >= t) {
            return Some(End::Relay(Ending::Violation {
                by: Side::Client,
                code: code::AUTH_FAILED,
                reason: "token expired",
            }));
        }
        if self.drain_at.is_some_and(|t| now >= t) {
            return Some(End::Relay(Ending::Drained));
        }
        if self.ack_due.is_some_and(|t| now >= t) {
            self.send_ack().await;
        }
        if let (Some(c), Some(hb)) = (&mut self.client, self.s.policy.heartbeat(Side::Client)) {
            match c.ping_sent {
                Some(t) if now >= t + hb.timeout => {
                    self.s.metrics.client_heartbeat.timeouts.inc();
                    self.detach(now);
                }
                None if now >= c.last_heard + hb.interval => {
                    c.ping_sent = Some(now);
                    self.send_client(Message::Ping(Bytes::new())).await;
                }
                _ => {}
            }
        }
        None
    }

    async fn on_backend(&mut self, r: Option<Result<Message, WsError>>) -> Option<End> {
        let msg = match r {
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => m,
            Some(Ok(Message::Close(f))) => {
                if self.client.is_none() {
                    self.backend_closed = Some(f);
                    return None;
                }
                let c = f.as_ref().map_or(code::NO_STATUS, |f| f.code.into());
                self.close_client(f).await;
                return Some(End::BackendClosed(c));
            }
            Some(Ok(_)) => return None,
            Some(Err(WsError::Capacity(_))) => {
                return Some(End::Relay(too_big(Side::Backend)));
            }
            Some(Err(_)) | None => return Some(End::Relay(Ending::Vanished(Side::Backend))),
        };
        let len = payload_len(&msg);
        self.buffered += len;
        self.out_bytes += len as u64;
        self.s.metrics.resume_buffered_bytes.add(len as i64);
        self.s.metrics.backend_to_client.messages.inc();
        self.s.metrics.backend_to_client.bytes.inc_by(len as u64);
        self.out.push_back(msg);
        if self.client.is_none() {
            if self.buffered > self.s.config.max_buffered_bytes {
                return Some(End::Overflow);
            }
            return None;
        }
        self.send_pending().await;
        None
    }

    async fn on_client(&mut self, r: Option<Result<Message, WsError>>) -> Option<End> {
        let now = Instant::now();
        if let Some(c) = &mut self.client {
            c.last_heard = now;
            c.ping_sent = None;
        }
        let msg = match r {
            Some(Ok(Message::Text(t))) => match wire::classify(&t) {
                Incoming::Data(d) if d.len() == t.len() => Message::Text(t),
                Incoming::Data(d) => Message::Text(d.into()),
                Incoming::Ack(n) => {
                    self.acked(n);
                    return None;
                }
                Incoming::Ping => {
                    self.send_client(Message::Text(wire::PONG.into())).await;
                    return None;
                }
                Incoming::Other => return None,
            },
            Some(Ok(m @ Message::Binary(_))) => m,
            Some(Ok(Message::Close(f))) => {
                let c = f.as_ref().map_or(code::NO_STATUS, |f| f.code.into());
                let _ =
                    tokio::time::timeout(CLOSE_TIMEOUT, self.backend.send(Message::Close(f))).await;
                if let Some(c) = &mut self.client {
                    // tungstenite answered the close; make sure it is sent.
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, c.ws.flush()).await;
                }
                return Some(End::Relay(Ending::Closed {
                    by: Side::Client,
                    code: c,
                }));
            }
            Some(Ok(_)) => return None,
            Some(Err(WsError::Capacity(_))) => return Some(End::Relay(too_big(Side::Client))),
            Some(Err(WsError::Utf8(_))) => {
                return Some(End::Relay(Ending::Violation {
                    by: Side::Client,
                    code: code::INVALID_PAYLOAD,
                    reason: "invalid UTF-8",
                }));
            }
            Some(Err(WsError::Protocol(p)))
                if !matches!(
                    p,
                    tokio_tungstenite::tungstenite::error::ProtocolError::ResetWithoutClosingHandshake
                ) =>
            {
                return Some(End::Relay(Ending::Violation {
                    by: Side::Client,
                    code: code::PROTOCOL_ERROR,
                    reason: "protocol error",
                }));
            }
            // Lost without a close frame: wait for the client.
            Some(Err(_)) | None => {
                self.detach(now);
                return None;
            }
        };
        let len = payload_len(&msg) as u64;
        if self.backend.send(msg).await.is_err() {
            return Some(End::Relay(Ending::Vanished(Side::Backend)));
        }
        self.in_total += 1;
        self.in_bytes += len;
        self.s.metrics.client_to_backend.messages.inc();
        self.s.metrics.client_to_backend.bytes.inc_by(len);
        if self.in_total - self.in_acked >= ACK_EVERY {
            self.send_ack().await;
        } else if self.ack_due.is_none() {
            self.ack_due = Some(now + ACK_DELAY);
        }
        None
    }

    /// The client received `n` messages: drop them from the buffer.
    fn acked(&mut self, n: u64) {
        let n = n.min(self.out_sent);
        while self.out_acked < n {
            let Some(m) = self.out.pop_front() else { break };
            let len = payload_len(&m);
            self.buffered -= len;
            self.s.metrics.resume_buffered_bytes.sub(len as i64);
            self.out_acked += 1;
        }
    }

    async fn send_ack(&mut self) {
        self.ack_due = None;
        if self.client.is_some() && self.in_total > self.in_acked {
            self.in_acked = self.in_total;
            self.send_client(Message::Text(wire::ack(self.in_total).into()))
                .await;
        }
    }

    /// Writes what the client link has not been given yet.
    async fn send_pending(&mut self) {
        while self.client.is_some() {
            let i = (self.out_sent - self.out_acked) as usize;
            let Some(m) = self.out.get(i) else { break };
            let m = match m {
                Message::Text(t) if wire::needs_escape(t) => Message::Text(wire::escape(t).into()),
                m => m.clone(),
            };
            if self.send_client(m).await {
                self.out_sent += 1;
            }
        }
    }

    /// One write to the client; a failure detaches it. True if written.
    async fn send_client(&mut self, m: Message) -> bool {
        let Some(c) = &mut self.client else {
            return false;
        };
        match tokio::time::timeout(CLIENT_WRITE_TIMEOUT, c.ws.send(m)).await {
            Ok(Ok(())) => true,
            _ => {
                self.detach(Instant::now());
                false
            }
        }
    }

    /// The client link is lost without a close: wait for a reconnect.
    fn detach(&mut self, now: Instant) {
        if self.client.take().is_some() && self.detached_at.is_none() {
            self.detached_at = Some(now);
            self.s.metrics.resume_waiting.inc();
        }
    }

    /// A client link arrives: the first one, or a reconnect that spent the
    /// credential. Sends the hello and replays what the client lacks.
    async fn attach(&mut self, a: Attach, now: Instant) -> Option<End> {
        let resumed = a.state == HelloState::Resumed;
        let cfg = ws_config(&self.s.policy);
        let ws = Ws::from_partially_read(a.client, a.pre.to_vec(), Role::Server, Some(cfg)).await;
        let mut client = Client {
            ws,
            last_heard: now,
            ping_sent: None,
        };
        let total = self.out_acked + self.out.len() as u64;
        if resumed && !(self.out_acked..=total).contains(&a.received) {
            // The client claims what the session cannot honour: this link
            // is refused; the session waits on for a sound one.
            self.s.metrics.resume(ResumeResult::Refused);
            let _ = tokio::time::timeout(
                CLOSE_TIMEOUT,
                client.ws.close(Some(close_frame(
                    code::POLICY_VIOLATION,
                    "resume count out of range",
                ))),
            )
            .await;
            self.reissue();
            return None;
        }
        if self.client.is_some() {
            // Superseded by a reconnect holding the live credential: the old
            // link is dead or about to be.
            self.client = None;
        } else if self.detached_at.take().is_some() {
            self.s.metrics.resume_waiting.dec();
        }
        if resumed {
            self.resumes += 1;
            self.s.metrics.resume(ResumeResult::Resumed);
            tracing::debug!(client_id = &*self.s.owner.client_id, peer = %a.peer, "session resumed");
        }
        self.last_peer = a.peer;
        self._place = a.place;
        self.client = Some(client);
        // What the client says it received counts as acknowledged; the
        // rest goes again, in order.
        self.out_sent = total;
        self.acked(a.received);
        self.out_sent = self.out_acked;
        self.reissue();
        self.in_acked = self.in_total;
        let hello = wire::hello(&self.credential, self.in_total, a.state);
        self.send_client(Message::Text(hello.into())).await;
        self.send_pending().await;
        if let Some(f) = self.backend_closed.take()
            && self.client.is_some()
        {
            let c = f.as_ref().map_or(code::NO_STATUS, |f| f.code.into());
            self.close_client(f).await;
            return Some(End::BackendClosed(c));
        }
        None
    }

    /// A fresh credential: the one the reconnect spent is gone.
    fn reissue(&mut self) {
        self.s
            .registry
            .ended(&self.credential, None, Duration::ZERO);
        self.credential = self.s.registry.issue(Live {
            owner: self.s.owner.clone(),
            attach: self._attach_tx.clone(),
            protocol: self.s.protocol.clone(),
        });
    }

    async fn close_client(&mut self, f: Option<CloseFrame>) {
        if let Some(c) = &mut self.client {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, c.ws.close(f)).await;
        }
    }

    /// Close frames, the registry, metrics and the access-log line.
    async fn finish(mut self, end: End) {
        // Long enough for a client that was away longer than the window to
        // come back and learn why, even with a short window.
        let remember = self.s.config.window.get().max(REMEMBER_ENDED);
        let (why, initiator, close_code, reason) = match &end {
            End::Expired => (
                Some(ResumeResult::Expired),
                Initiator::Gateway,
                code::GOING_AWAY,
                "resume window expired",
            ),
            End::Overflow => (
                Some(ResumeResult::Overflow),
                Initiator::Gateway,
                code::GOING_AWAY,
                "resume buffer overflow",
            ),
            End::BackendClosed(c) => (None, Initiator::Backend, *c, ""),
            End::Relay(e) => (None, e.initiator(), e.code(), e.reason()),
        };
        if let Some(why) = why {
            self.s.metrics.resume(why);
        }
        self.s.registry.ended(&self.credential, why, remember);
        match &end {
            End::Expired | End::Overflow => {
                let f = close_frame(code::GOING_AWAY, reason);
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.backend.close(Some(f))).await;
            }
            End::Relay(e) => {
                for side in Side::BOTH {
                    if let Toward::Close(c, r) = e.toward(side) {
                        let f = Some(close_frame(c, r));
                        let _ = match side {
                            Side::Client => {
                                self.close_client(f).await;
                                Ok(())
                            }
                            Side::Backend => {
                                tokio::time::timeout(CLOSE_TIMEOUT, self.backend.close(f))
                                    .await
                                    .map(|_| ())
                            }
                        };
                    }
                }
            }
            End::BackendClosed(_) => {}
        }
        if self.detached_at.is_some() {
            self.s.metrics.resume_waiting.dec();
        }
        self.s
            .metrics
            .resume_buffered_bytes
            .sub(self.buffered as i64);
        self.s.metrics.close(initiator, close_code);
        let secs = self.s.started.elapsed().as_secs_f64();
        self.s.metrics.connection_duration.observe(secs);
        tracing::info!(
            target: "wsgate::access",
            peer = %self.last_peer,
            client_id = &*self.s.owner.client_id,
            backend = self.s.active.backend().name.as_str(),
            duration_ms = (secs * 1000.0) as u64,
            c2b_messages = self.in_total,
            c2b_bytes = self.in_bytes,
            b2c_messages = self.out_acked + self.out.len() as u64,
            b2c_bytes = self.out_bytes,
            close_code,
            initiator = initiator.label(),
            reason,
            resumable = true,
            resumes = self.resumes,
            "connection closed"
        );
    }
}

/// The next message of the attached client; pending while there is none.
async fn next_client(c: &mut Option<Client>) -> Option<Result<Message, WsError>> {
    match c {
        Some(c) => c.ws.next().await,
        None => std::future::pending().await,
    }
}

fn too_big(by: Side) -> Ending {
    Ending::Violation {
        by,
        code: code::MESSAGE_TOO_BIG,
        reason: "message too big",
    }
}

fn close_frame(c: u16, reason: &str) -> CloseFrame {
    CloseFrame {
        code: CloseCode::from(c),
        reason: reason.to_string().into(),
    }
}

fn payload_len(m: &Message) -> usize {
    match m {
        Message::Text(t) => t.len(),
        Message::Binary(b) => b.len(),
        _ => 0,
    }
}
