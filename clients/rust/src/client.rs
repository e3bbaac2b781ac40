//! The client: builder, handle, and the task that keeps the connection alive.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Error as WsError, Message as WsMessage};

use crate::backoff::{Backoff, RandomSource, default_random};
use crate::policy::{Action, CloseDecision, Disconnect, classify};
use crate::queue::{Push, Queue, QueueInfo, QueueLimits};
use crate::resume::{self, Control, Hello, Session};
use crate::sniff::{SniffShared, Sniffed};
use crate::transport::Transport;
use crate::{Bytes, Utf8Bytes};

/// A data message, sent or received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A UTF-8 text message.
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
}

impl Message {
    /// A text message.
    pub fn text(s: impl Into<Utf8Bytes>) -> Self {
        Message::Text(s.into())
    }

    /// A binary message.
    pub fn binary(b: impl Into<Bytes>) -> Self {
        Message::Binary(b.into())
    }

    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The text, for a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(t) => Some(t.as_str()),
            Message::Binary(_) => None,
        }
    }

    fn into_ws(self) -> WsMessage {
        match self {
            Message::Text(t) => WsMessage::Text(t),
            Message::Binary(b) => WsMessage::Binary(b),
        }
    }
}

impl From<String> for Message {
    fn from(s: String) -> Self {
        Message::Text(s.into())
    }
}

impl From<&str> for Message {
    fn from(s: &str) -> Self {
        Message::Text(s.into())
    }
}

impl From<Vec<u8>> for Message {
    fn from(b: Vec<u8>) -> Self {
        Message::Binary(b.into())
    }
}

impl From<Bytes> for Message {
    fn from(b: Bytes) -> Self {
        Message::Binary(b)
    }
}

/// Why the client stopped for good.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The application called [`Client::close`] (or dropped every [`Client`] handle).
    Client,
    /// The server closed with 1000: the connection was ended on purpose.
    Normal {
        /// The reason the server gave.
        reason: String,
    },
    /// The close-code policy said "stop and report" (1002, 1007, 1009, 4001, 4008,
    /// HTTP 401/403, an unknown 4xxx the app's callback did not want retried, a token
    /// the server refused offered again, ...).
    Terminal(Disconnect),
    /// `max_retries` reconnect attempts in a row failed.
    RetriesExhausted {
        /// How many reconnect attempts were made.
        attempts: u32,
        /// Why the last one failed.
        last: Disconnect,
    },
}

impl CloseReason {
    /// Whether this is a failure the application should report (not a requested close).
    pub fn is_error(&self) -> bool {
        matches!(
            self,
            CloseReason::Terminal(_) | CloseReason::RetriesExhausted { .. }
        )
    }
}

/// The connection state. Every change is published on [`Client::state_changes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Fetching a token, connecting TCP and upgrading.
    Connecting,
    /// The WebSocket is open; queued messages are being flushed.
    Open,
    /// Waiting `delay` before reconnect attempt number `attempt` (1-based, counting
    /// attempts since the last reset). A 4001 "token expired" refresh has delay 0.
    Reconnecting {
        /// Which reconnect attempt comes next.
        attempt: u32,
        /// How long the client waits before it.
        delay: Duration,
    },
    /// Stopped for good.
    Closed {
        /// Why.
        reason: CloseReason,
    },
    /// An event, not a state (published on [`Client::state_changes`] only; `state()`
    /// never returns it): with [`ClientBuilder::resume`], the link came back but the
    /// gateway could not resume the session, so messages in flight either way may be
    /// lost. The link is open on a fresh session; resynchronise the application.
    StateLost {
        /// Why: `expired`, `overflow`, `unknown`, `refused` or `count mismatch`.
        reason: String,
    },
}

/// Why [`Client::send`] did not take a message. Each variant gives the message back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    /// The client is closed (or closing).
    #[error("the client is closed")]
    Closed(Message),
    /// The queue is at its message or byte limit and the overflow policy is Reject.
    #[error("the send queue is full")]
    QueueFull(Message),
    /// The message alone is bigger than the queue's byte limit.
    #[error("the message is larger than the queue's byte limit")]
    TooLarge(Message),
}

impl SendError {
    /// The message that was not sent.
    pub fn into_inner(self) -> Message {
        match self {
            SendError::Closed(m) | SendError::QueueFull(m) | SendError::TooLarge(m) => m,
        }
    }
}

/// Where the token from the [`TokenProvider`] goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenPlacement {
    /// A query parameter with this name (percent-encoded), e.g. `token` to match
    /// wsgate's `token_from = ["query:token"]`.
    Query(String),
    /// A request header with this name; the value is the token as returned (return
    /// `"Bearer ..."` for `Authorization`).
    Header(String),
    /// The first text message after the upgrade (wsgate's `token_from =
    /// ["first_message"]`), sent before any queued message.
    FirstMessage,
}

/// What the [`TokenProvider`] is told about the attempt it is asked a token for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenContext {
    /// Consecutive failed attempts so far (0 for the first attempt after a reset).
    pub attempt: u32,
    /// True when the server just closed with 4001 "token expired": the provider must
    /// return a fresh token, not a cached one.
    pub refresh: bool,
    /// Tokens the server refused (4001, HTTP 401/403), oldest first, at most 32.
    /// Returning one of them stops the client with [`Disconnect::StaleToken`].
    pub refused: Vec<String>,
    /// Why the previous connection or attempt ended, if there was one.
    pub last: Option<Disconnect>,
}

/// An error from a token provider.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The future a [`TokenProvider`] returns.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send>>;

/// Supplies a token before each connection attempt.
///
/// Implemented for every `Fn(TokenContext) -> impl Future<Output = Result<String, BoxError>>`.
/// An error counts as a failed attempt and is retried with the normal backoff.
pub trait TokenProvider: Send + Sync + 'static {
    /// A token for the next attempt.
    fn token(&self, ctx: TokenContext) -> TokenFuture;
}

impl<F, Fut> TokenProvider for F
where
    F: Fn(TokenContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, BoxError>> + Send + 'static,
{
    fn token(&self, ctx: TokenContext) -> TokenFuture {
        Box::pin(self(ctx))
    }
}

/// The application-level heartbeat (wsgate's `[heartbeat] app_ping` / `app_pong`).
///
/// When nothing has been received for `interval`, the client sends `ping`; if nothing
/// at all (any message counts) arrives within `timeout` after that, the link is dead:
/// the client drops it and reconnects with the normal backoff. A received text equal
/// to `pong` is consumed, never delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The ping text. Default `{"type":"ping"}`.
    pub ping: String,
    /// The pong text, swallowed on receipt. Default `{"type":"pong"}`.
    pub pong: String,
    /// Idle time before a ping. Default 30 s.
    pub interval: Duration,
    /// How long to wait for any message after a ping. Default 10 s.
    pub timeout: Duration,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            ping: r#"{"type":"ping"}"#.into(),
            pong: r#"{"type":"pong"}"#.into(),
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
        }
    }
}

type CloseCallback = Arc<dyn Fn(u16, &str) -> CloseDecision + Send + Sync>;

struct Config {
    url: String,
    headers: Vec<(String, String)>,
    backoff: Backoff,
    reset_after: Duration,
    max_retries: Option<u32>,
    connect_timeout: Duration,
    close_timeout: Duration,
    heartbeat: Option<Heartbeat>,
    queue: QueueLimits,
    high_water: usize,
    low_water: usize,
    incoming_capacity: usize,
    ws_config: WebSocketConfig,
    token: Option<(Arc<dyn TokenProvider>, TokenPlacement)>,
    on_close_code: Option<CloseCallback>,
    random: RandomSource,
    resume: bool,
    #[cfg(feature = "rustls-tls")]
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
}

/// Configures and starts a [`Client`]. Created by [`Client::builder`].
pub struct ClientBuilder {
    cfg: Config,
    events: broadcast::Sender<State>,
}

impl ClientBuilder {
    /// Asks wsgate for a resumable session (gateway `[resume] enabled`; default off):
    /// when the link is lost without a close frame, the gateway holds the backend link
    /// and, on reconnect, both sides replay what the other missed, so every message
    /// arrives exactly once and in order. If that is impossible the client reports
    /// [`State::StateLost`] once and goes on with a fresh session. See clients/README.md.
    pub fn resume(mut self, on: bool) -> Self {
        self.cfg.resume = on;
        self
    }

    /// Backoff base and cap (defaults 1 s and 30 s).
    pub fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.cfg.backoff = Backoff { base, cap };
        self
    }

    /// After a connection has stayed open this long, the attempt counter (and the
    /// one-time token refresh) reset. Default 5 s.
    pub fn reset_after(mut self, d: Duration) -> Self {
        self.cfg.reset_after = d;
        self
    }

    /// At most this many reconnect attempts in a row; when the last fails too, the
    /// client stops with [`CloseReason::RetriesExhausted`]. `None` = no limit.
    /// Default `Some(10)`.
    pub fn max_retries(mut self, n: Option<u32>) -> Self {
        self.cfg.max_retries = n;
        self
    }

    /// Watchdog over one attempt: token provider + TCP connect + upgrade (+ first
    /// message). Default 10 s. A timeout counts as a lost link (normal backoff).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.cfg.connect_timeout = d;
        self
    }

    /// How long [`Client::close`] waits for the queue to flush and the close handshake
    /// to finish before dropping the link. Default 5 s.
    pub fn close_timeout(mut self, d: Duration) -> Self {
        self.cfg.close_timeout = d;
        self
    }

    /// The application heartbeat; `None` turns it off. Default [`Heartbeat::default`].
    pub fn heartbeat(mut self, hb: Option<Heartbeat>) -> Self {
        self.cfg.heartbeat = hb;
        self
    }

    /// Bounds and overflow policy of the outgoing queue.
    pub fn queue(mut self, limits: QueueLimits) -> Self {
        self.cfg.queue = limits;
        self
    }

    /// Write backpressure: the client stops moving messages from the queue to the
    /// socket while more than `high` bytes are written to the WebSocket but not yet
    /// accepted by the kernel, and resumes at `low`. Defaults 256 KiB and 64 KiB.
    pub fn write_water_marks(mut self, high: usize, low: usize) -> Self {
        self.cfg.high_water = high.max(1);
        self.cfg.low_water = low.min(high);
        self
    }

    /// Capacity of the incoming message channel (default 256). When the application
    /// does not read, the client stops reading the socket (TCP backpressure).
    pub fn incoming_capacity(mut self, n: usize) -> Self {
        self.cfg.incoming_capacity = n.max(1);
        self
    }

    /// tungstenite's settings (message size limits, write buffer sizes).
    pub fn ws_config(mut self, c: WebSocketConfig) -> Self {
        self.cfg.ws_config = c;
        self
    }

    /// An extra request header sent on every upgrade.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.cfg.headers.push((name.into(), value.into()));
        self
    }

    /// The token provider, called before every attempt, and where its token goes.
    pub fn token_provider(
        mut self,
        placement: TokenPlacement,
        provider: impl TokenProvider,
    ) -> Self {
        self.cfg.token = Some((Arc::new(provider), placement));
        self
    }

    /// Decides what to do on a 4000-4999 close code the policy does not know (every one
    /// except 4001, 4008, 4029). Without a callback the client stops.
    pub fn on_close_code(
        mut self,
        f: impl Fn(u16, &str) -> CloseDecision + Send + Sync + 'static,
    ) -> Self {
        self.cfg.on_close_code = Some(Arc::new(f));
        self
    }

    /// The TLS configuration for `wss://` URLs (custom roots, client certificates).
    /// Default: [`default_tls_config`](crate::default_tls_config), the webpki roots.
    #[cfg(feature = "rustls-tls")]
    pub fn tls_config(mut self, config: Arc<tokio_rustls::rustls::ClientConfig>) -> Self {
        self.cfg.tls = Some(config);
        self
    }

    /// The random source for backoff jitter (a fresh draw per attempt). Default fastrand.
    pub fn random(mut self, r: RandomSource) -> Self {
        self.cfg.random = r;
        self
    }

    /// A receiver of every state change from the start (subscribe here, before
    /// [`connect`](Self::connect), not to miss the first `Connecting`).
    pub fn state_changes(&self) -> broadcast::Receiver<State> {
        self.events.subscribe()
    }

    /// Starts the client on the current tokio runtime and returns its handle and the
    /// incoming messages. Never fails: problems are reported through the state.
    pub fn connect(self) -> (Client, Incoming) {
        let (state_tx, _) = watch::channel(State::Connecting);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            limits: self.cfg.queue,
            wake_writer: Notify::new(),
            space: Notify::new(),
            state_tx,
            events: self.events,
            unwritten: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            last_disconnect: Mutex::new(None),
            incoming_capacity: self.cfg.incoming_capacity,
        });
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (in_tx, in_rx) = mpsc::channel(self.cfg.incoming_capacity);
        let sup = Supervisor {
            session: self.cfg.resume.then(Session::default),
            cfg: Arc::new(self.cfg),
            shared: shared.clone(),
            cmd: cmd_rx,
            incoming: Some(in_tx),
            failures: 0,
            refresh_used: false,
            refused: VecDeque::new(),
        };
        tokio::spawn(sup.run());
        (
            Client {
                shared,
                cmd: cmd_tx,
            },
            Incoming { rx: in_rx },
        )
    }
}

struct Shared {
    queue: Mutex<Queue>,
    limits: QueueLimits,
    wake_writer: Notify,
    space: Notify,
    state_tx: watch::Sender<State>,
    events: broadcast::Sender<State>,
    unwritten: AtomicU64,
    closed: AtomicBool,
    last_disconnect: Mutex<Option<Disconnect>>,
    incoming_capacity: usize,
}

impl Shared {
    fn pop(&self) -> Option<Message> {
        let m = self.queue.lock().unwrap().pop();
        if m.is_some() {
            self.space.notify_waiters();
        }
        m
    }

    fn queue_empty(&self) -> bool {
        self.queue.lock().unwrap().is_empty()
    }

    fn set_state(&self, s: State) {
        tracing::debug!(state = ?s, "wsgate-client state");
        self.state_tx.send_replace(s.clone());
        let _ = self.events.send(s);
    }
}

enum Command {
    Close {
        code: u16,
        reason: String,
    },
    /// Drop the current link (if any) and connect now, counters reset.
    Reconnect,
    /// Start again after `Closed`, delivering to this new channel.
    Restart(mpsc::Sender<Message>),
}

/// What a command asks of the running supervisor.
enum Cmd {
    Close(u16, String),
    Reconnect,
}

/// Incoming data messages (text and binary). Also a [`futures_util::Stream`].
pub struct Incoming {
    rx: mpsc::Receiver<Message>,
}

impl Incoming {
    /// The next message; `None` once the client has reached [`State::Closed`] (if it is
    /// started again with [`Client::reconnect`], that returns a new `Incoming`).
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }
}

impl futures_util::Stream for Incoming {
    type Item = Message;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}

/// The handle to a running client. Cheap to clone; when every clone is dropped the
/// client closes.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    cmd: mpsc::UnboundedSender<Command>,
}

impl Client {
    /// Starts configuring a client for `url` (`ws://host:port/path?query`).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        let (events, _) = broadcast::channel(256);
        ClientBuilder {
            cfg: Config {
                url: url.into(),
                headers: Vec::new(),
                backoff: Backoff::default(),
                reset_after: Duration::from_secs(5),
                max_retries: Some(10),
                connect_timeout: Duration::from_secs(10),
                close_timeout: Duration::from_secs(5),
                heartbeat: Some(Heartbeat::default()),
                queue: QueueLimits::default(),
                high_water: 256 * 1024,
                low_water: 64 * 1024,
                incoming_capacity: 256,
                ws_config: WebSocketConfig::default(),
                token: None,
                on_close_code: None,
                random: default_random(),
                resume: false,
                #[cfg(feature = "rustls-tls")]
                tls: None,
            },
            events,
        }
    }

    /// Queues a message. It goes out in order as soon as the connection is open (at
    /// once if it is). Fails, giving the message back, when the queue is full under
    /// [`Overflow::Reject`](crate::Overflow::Reject), when the message alone exceeds the
    /// byte limit, or when the client is closed.
    pub fn send(&self, msg: impl Into<Message>) -> Result<(), SendError> {
        let msg = msg.into();
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(SendError::Closed(msg));
        }
        let pushed = self
            .shared
            .queue
            .lock()
            .unwrap()
            .push(msg, &self.shared.limits);
        match pushed {
            Push::QueuedDropped(n) => {
                tracing::debug!(
                    dropped = n,
                    "wsgate-client queue full: dropped the oldest messages"
                );
                self.shared.wake_writer.notify_one();
                Ok(())
            }
            Push::Queued => {
                self.shared.wake_writer.notify_one();
                Ok(())
            }
            Push::Full(m) => Err(SendError::QueueFull(m)),
            Push::TooLarge(m) => Err(SendError::TooLarge(m)),
        }
    }

    /// Like [`send`](Self::send), but waits for room instead of failing when the queue
    /// is full.
    pub async fn send_wait(&self, msg: impl Into<Message>) -> Result<(), SendError> {
        let mut msg = msg.into();
        loop {
            let notified = self.shared.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.send(msg) {
                Err(SendError::QueueFull(m)) => {
                    msg = m;
                    notified.await;
                }
                other => return other,
            }
        }
    }

    /// Closes with 1000 and waits until the client has stopped. When open, queued
    /// messages are flushed first (bounded by the close timeout).
    pub async fn close(&self) {
        self.close_with(1000, "").await
    }

    /// Closes with the given code and reason and waits until the client has stopped.
    pub async fn close_with(&self, code: u16, reason: &str) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.space.notify_waiters();
        let _ = self.cmd.send(Command::Close {
            code,
            reason: reason.to_owned(),
        });
        self.wait_closed().await;
    }

    /// Waits until the client has stopped for good and returns why.
    pub async fn wait_closed(&self) -> CloseReason {
        let mut rx = self.shared.state_tx.subscribe();
        let state = rx.wait_for(|s| matches!(s, State::Closed { .. })).await;
        match state.as_deref() {
            Ok(State::Closed { reason }) => reason.clone(),
            _ => CloseReason::Client,
        }
    }

    /// Connects now, with the attempt counter and the one-time token refresh reset.
    ///
    /// - While running (connecting, open or waiting to reconnect), the current link or
    ///   wait is dropped (an open link is closed with 1000 "reconnect"; queued
    ///   messages stay queued and go out on the new link) and a new attempt starts at
    ///   once. Returns `None`: the existing [`Incoming`] keeps delivering.
    /// - After [`State::Closed`] (a `close()`, a 1000, a terminal error or exhausted
    ///   retries), the client starts again and returns `Some` new [`Incoming`] (the old
    ///   one has ended). The queue was kept, so it is flushed on open.
    pub fn reconnect(&self) -> Option<Incoming> {
        if matches!(self.state(), State::Closed { .. }) {
            let (tx, rx) = mpsc::channel(self.shared.incoming_capacity);
            self.shared.closed.store(false, Ordering::SeqCst);
            if self.cmd.send(Command::Restart(tx)).is_ok() {
                return Some(Incoming { rx });
            }
            None
        } else {
            let _ = self.cmd.send(Command::Reconnect);
            None
        }
    }

    /// Why the last connection (or attempt) ended, e.g. to show "reconnecting after
    /// 1014" while in [`State::Reconnecting`].
    pub fn last_disconnect(&self) -> Option<Disconnect> {
        self.shared.last_disconnect.lock().unwrap().clone()
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.shared.state_tx.borrow().clone()
    }

    /// Every state change from now on (see also [`ClientBuilder::state_changes`]).
    pub fn state_changes(&self) -> broadcast::Receiver<State> {
        self.shared.events.subscribe()
    }

    /// A watch of the current state (intermediate states may be skipped).
    pub fn watch_state(&self) -> watch::Receiver<State> {
        self.shared.state_tx.subscribe()
    }

    /// Size of the outgoing queue.
    pub fn queued(&self) -> QueueInfo {
        self.shared.queue.lock().unwrap().info()
    }

    /// A copy of the queued messages, oldest first.
    pub fn queued_messages(&self) -> Vec<Message> {
        self.shared.queue.lock().unwrap().snapshot()
    }

    /// Empties the queue and returns what was in it, oldest first.
    pub fn clear_queue(&self) -> Vec<Message> {
        let v = self.shared.queue.lock().unwrap().clear();
        self.shared.space.notify_waiters();
        v
    }

    /// Bytes not yet handed to the kernel: queued payload bytes plus bytes written to
    /// the WebSocket layer but not yet accepted by the socket (the `bufferedAmount`).
    pub fn buffered(&self) -> usize {
        self.queued().bytes + self.unwritten()
    }

    /// Bytes written to the WebSocket layer but not yet accepted by the socket; kept
    /// under the high-water mark plus one message.
    pub fn unwritten(&self) -> usize {
        self.shared.unwritten.load(Ordering::Relaxed) as usize
    }
}

type Ws = WebSocketStream<Sniffed<Transport>>;

/// How long a resumable link waits for the gateway's hello before it counts as a
/// plain link (the gateway sends it at once).
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Received messages are acknowledged after this, if fewer than `ACK_EVERY` came.
const ACK_DELAY: Duration = Duration::from_millis(100);

enum Attempt {
    /// The link, and whether the gateway took the resume offer.
    Opened(Box<Ws>, Arc<SniffShared>, Option<String>, bool),
    Failed(Disconnect, Option<String>),
    Cmd(Cmd),
}

enum OpenEnd {
    Lost(Disconnect),
    Cmd(Cmd),
}

struct Supervisor {
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    cmd: mpsc::UnboundedReceiver<Command>,
    incoming: Option<mpsc::Sender<Message>>,
    failures: u32,
    refresh_used: bool,
    refused: VecDeque<String>,
    /// With resume on: the session that outlives links.
    session: Option<Session>,
}

impl Supervisor {
    async fn run(mut self) {
        loop {
            let reason = self.run_inner().await;
            self.shared.closed.store(true, Ordering::SeqCst);
            self.shared.space.notify_waiters();
            self.shared.unwritten.store(0, Ordering::Relaxed);
            if reason.is_error() {
                tracing::warn!(?reason, "wsgate-client stopped");
            }
            // End the current Incoming before publishing Closed.
            self.incoming = None;
            self.shared.set_state(State::Closed { reason });
            // Stopped: wait for reconnect() or for every handle to be dropped.
            loop {
                match self.cmd.recv().await {
                    None => return,
                    Some(Command::Restart(tx)) => {
                        self.incoming = Some(tx);
                        break;
                    }
                    Some(_) => {}
                }
            }
            self.failures = 0;
            self.refresh_used = false;
            self.shared.closed.store(false, Ordering::SeqCst);
        }
    }

    /// Interprets a command received while running.
    fn on_command(&mut self, cmd: Option<Command>) -> Cmd {
        match cmd {
            None => Cmd::Close(1000, String::new()),
            Some(Command::Close { code, reason }) => Cmd::Close(code, reason),
            Some(Command::Reconnect) => {
                self.failures = 0;
                self.refresh_used = false;
                Cmd::Reconnect
            }
            Some(Command::Restart(tx)) => {
                // reconnect() raced with the end of a run: deliver to the new channel.
                self.incoming = Some(tx);
                self.failures = 0;
                self.refresh_used = false;
                Cmd::Reconnect
            }
        }
    }

    fn refuse(&mut self, token: String) {
        if !self.refused.contains(&token) {
            if self.refused.len() >= 32 {
                self.refused.pop_front();
            }
            self.refused.push_back(token);
        }
    }

    async fn run_inner(&mut self) -> CloseReason {
        let mut refresh = false;
        loop {
            self.shared.set_state(State::Connecting);
            let (outcome, token) = match self.attempt(refresh).await {
                Attempt::Cmd(Cmd::Close(..)) => return CloseReason::Client,
                Attempt::Cmd(Cmd::Reconnect) => {
                    refresh = false;
                    continue;
                }
                Attempt::Failed(d, token) => (d, token),
                Attempt::Opened(ws, sniff, token, offered) => {
                    match self.run_open(*ws, sniff, offered).await {
                        OpenEnd::Cmd(Cmd::Close(..)) => return CloseReason::Client,
                        OpenEnd::Cmd(Cmd::Reconnect) => {
                            refresh = false;
                            continue;
                        }
                        OpenEnd::Lost(d) => (d, token),
                    }
                }
            };
            refresh = false;
            tracing::debug!(disconnect = %outcome, "wsgate-client disconnected");
            *self.shared.last_disconnect.lock().unwrap() = Some(outcome.clone());
            if outcome.is_auth_refusal()
                && let Some(t) = token
            {
                self.refuse(t);
            }
            let long = match classify(&outcome) {
                Action::Done => {
                    return CloseReason::Normal {
                        reason: outcome.reason().to_owned(),
                    };
                }
                Action::Stop => return CloseReason::Terminal(outcome),
                Action::RefreshToken => {
                    if self.cfg.token.is_none() || self.refresh_used {
                        return CloseReason::Terminal(outcome);
                    }
                    self.refresh_used = true;
                    refresh = true;
                    self.failures += 1;
                    self.shared.set_state(State::Reconnecting {
                        attempt: self.failures,
                        delay: Duration::ZERO,
                    });
                    continue;
                }
                Action::Reconnect => false,
                Action::ReconnectLong => true,
                Action::AppDecides => {
                    let decision = match &self.cfg.on_close_code {
                        Some(f) => f(outcome.code(), outcome.reason()),
                        None => CloseDecision::Stop,
                    };
                    match decision {
                        CloseDecision::Stop => return CloseReason::Terminal(outcome),
                        CloseDecision::Reconnect => false,
                        CloseDecision::ReconnectLong => true,
                    }
                }
            };
            if let Some(max) = self.cfg.max_retries
                && self.failures >= max
            {
                return CloseReason::RetriesExhausted {
                    attempts: self.failures,
                    last: outcome,
                };
            }
            let n = self.failures;
            self.failures += 1;
            let mut delay = self.cfg.backoff.delay(n, long, (self.cfg.random)());
            if let Disconnect::Http {
                retry_after: Some(ra),
                ..
            } = &outcome
            {
                delay = delay.max(*ra);
            }
            self.shared.set_state(State::Reconnecting {
                attempt: self.failures,
                delay,
            });
            tokio::select! {
                _ = sleep(delay) => {}
                cmd = self.cmd.recv() => {
                    if let Cmd::Close(..) = self.on_command(cmd) {
                        return CloseReason::Client;
                    }
                }
            }
        }
    }

    async fn attempt(&mut self, refresh: bool) -> Attempt {
        let cfg = self.cfg.clone();
        let ctx = TokenContext {
            attempt: self.failures,
            refresh,
            refused: self.refused.iter().cloned().collect(),
            last: self.shared.last_disconnect.lock().unwrap().clone(),
        };
        let refused: Vec<String> = self.refused.iter().cloned().collect();
        let offer = self.session.as_ref().map(Session::offer);
        let token_slot: Arc<Mutex<Option<String>>> = Arc::default();
        let slot = token_slot.clone();
        let fut = async move {
            let token = match &cfg.token {
                Some((provider, _)) => match provider.token(ctx).await {
                    Ok(t) if refused.contains(&t) => return Err(Disconnect::StaleToken),
                    Ok(t) => Some(t),
                    Err(e) => {
                        return Err(Disconnect::TokenProvider {
                            error: e.to_string(),
                        });
                    }
                },
                None => None,
            };
            *slot.lock().unwrap() = token.clone();
            connect_once(&cfg, token.as_deref(), offer.as_deref()).await
        };
        let res = tokio::select! {
            r = timeout(self.cfg.connect_timeout, fut) => r,
            cmd = self.cmd.recv() => return Attempt::Cmd(self.on_command(cmd)),
        };
        let token = token_slot.lock().unwrap().take();
        match res {
            Ok(Ok((ws, sniff, offered))) => Attempt::Opened(Box::new(ws), sniff, token, offered),
            Ok(Err(d)) => Attempt::Failed(d, token),
            Err(_) => Attempt::Failed(Disconnect::ConnectTimeout, token),
        }
    }

    async fn run_open(&mut self, ws: Ws, sniff: Arc<SniffShared>, offered: bool) -> OpenEnd {
        let cfg = self.cfg.clone();
        let shared = self.shared.clone();
        let (mut sink, mut stream) = ws.split();
        let mut w = Writer {
            fed: sniff.written(),
            sniff: sniff.clone(),
            priority: VecDeque::new(),
            need_flush: false,
            paused: false,
            high: cfg.high_water as u64,
            low: cfg.low_water as u64,
            replay: VecDeque::new(),
        };
        // Resume: nothing is written before the gateway's hello (the first message
        // of a resumable link) says what to replay. `resumable` once it came.
        let mut awaiting_hello = offered;
        let hello_by = Instant::now() + HELLO_TIMEOUT;
        let mut resumable = false;
        let mut ack_at: Option<Instant> = None;
        shared.set_state(State::Open);
        let opened = Instant::now();
        let mut reset_pending = true;
        let mut last_rx = Instant::now();
        let mut ping_deadline: Option<Instant> = None;
        let far = Duration::from_secs(86400 * 365);
        loop {
            w.publish(&shared);
            let next_ping = match (&cfg.heartbeat, ping_deadline) {
                (Some(hb), None) => last_rx + hb.interval,
                _ => opened + far,
            };
            let dead_at = ping_deadline.unwrap_or(opened + far);
            let reset_at = opened + cfg.reset_after;
            let has_work = !awaiting_hello && w.has_work(&shared);
            // Unbiased: a flood of incoming messages must not starve the writer or timers.
            tokio::select! {
                cmd = self.cmd.recv() => {
                    let cmd = self.on_command(cmd);
                    close_open(&mut sink, &mut stream, &mut w, &shared, &cmd, cfg.close_timeout, resumable).await;
                    if let Some(s) = &mut self.session { s.end() }
                    return OpenEnd::Cmd(cmd);
                }
                _ = sleep_until(hello_by), if awaiting_hello => {
                    // No hello: the gateway did not take the offer. A plain link.
                    awaiting_hello = false;
                }
                _ = sleep_until(ack_at.unwrap_or(opened + far)), if ack_at.is_some() => {
                    ack_at = None;
                    if let Some(s) = &mut self.session {
                        s.ack_sent = s.received;
                        w.priority.push_back(Message::text(format!("\0ack {}", s.received)));
                    }
                }
                msg = stream.next() => {
                    let msg = match msg {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => return OpenEnd::Lost(lost(&sniff, e.to_string())),
                        None => return OpenEnd::Lost(lost(&sniff, "connection ended".into())),
                    };
                    last_rx = Instant::now();
                    ping_deadline = None;
                    if awaiting_hello {
                        awaiting_hello = false;
                        if let (WsMessage::Text(t), Some(s)) = (&msg, &mut self.session)
                            && let Control::Hello { credential, received, state } = resume::classify(t)
                        {
                            resumable = true;
                            match s.hello(credential, received, state) {
                                Hello::New => {}
                                Hello::Resumed(again) => w.replay = again.into(),
                                Hello::Lost(reason) => {
                                    tracing::info!(%reason, "wsgate-client: session state lost");
                                    let _ = shared.events.send(State::StateLost { reason });
                                }
                            }
                            continue;
                        }
                    }
                    let data = match msg {
                        WsMessage::Text(t) if resumable => match resume::classify(&t) {
                            Control::Data(d) if d.len() == t.len() => Message::Text(t),
                            Control::Data(d) => Message::text(d.to_owned()),
                            Control::Ack(n) => {
                                if let Some(s) = &mut self.session { s.acked(n) }
                                continue;
                            }
                            Control::Hello { .. } | Control::Other => continue,
                        },
                        WsMessage::Text(t) => {
                            if cfg.heartbeat.as_ref().is_some_and(|hb| t.as_str() == hb.pong) {
                                continue;
                            }
                            Message::Text(t)
                        }
                        WsMessage::Binary(b) => Message::Binary(b),
                        WsMessage::Ping(p) => {
                            // tungstenite queued the pong; count it as written data.
                            w.fed += frame_len(p.len());
                            w.need_flush = true;
                            continue;
                        }
                        WsMessage::Pong(_) | WsMessage::Frame(_) => continue,
                        WsMessage::Close(frame) => {
                            // The server ended the session. Its credential is kept: the
                            // next link offers it, learns the state is lost, and the
                            // application hears so (StateLost), never silently.
                            let d = match sniff.close_frame() {
                                Some((code, reason)) => Disconnect::Close { code, reason },
                                None => match frame {
                                    Some(f) => Disconnect::Close { code: f.code.into(), reason: f.reason.as_str().to_owned() },
                                    None => Disconnect::Close { code: 1005, reason: String::new() },
                                },
                            };
                            // Send tungstenite's close reply and wait for the server to end
                            // the TCP connection, briefly.
                            let _ = timeout(Duration::from_secs(1), async {
                                let _ = sink.flush().await;
                                while let Some(Ok(_)) = stream.next().await {}
                            })
                            .await;
                            return OpenEnd::Lost(d);
                        }
                    };
                    if resumable && let Some(s) = &mut self.session {
                        s.received += 1;
                        if s.received - s.ack_sent >= resume::ACK_EVERY {
                            s.ack_sent = s.received;
                            ack_at = None;
                            w.priority.push_back(Message::text(format!("\0ack {}", s.received)));
                        } else if ack_at.is_none() {
                            ack_at = Some(Instant::now() + ACK_DELAY);
                        }
                    }
                    // Deliver, but stay responsive to close() while the app is not reading.
                    let Some(tx) = self.incoming.clone() else { continue };
                    tokio::select! {
                        permit = tx.reserve() => {
                            if let Ok(p) = permit {
                                p.send(data);
                            }
                        }
                        cmd = self.cmd.recv() => {
                            let cmd = self.on_command(cmd);
                            close_open(&mut sink, &mut stream, &mut w, &shared, &cmd, cfg.close_timeout, resumable).await;
                            if let Some(s) = &mut self.session { s.end() }
                            return OpenEnd::Cmd(cmd);
                        }
                    }
                }
                _ = sleep_until(dead_at), if ping_deadline.is_some() => {
                    return OpenEnd::Lost(Disconnect::HeartbeatTimeout);
                }
                _ = sleep_until(next_ping), if cfg.heartbeat.is_some() && ping_deadline.is_none() => {
                    let hb = cfg.heartbeat.as_ref().expect("heartbeat configured");
                    // On a resumable link the app ping would be numbered data: the
                    // gateway answers the `\0ping` control message instead.
                    let ping = if resumable { resume::PING.to_owned() } else { hb.ping.clone() };
                    w.priority.push_back(Message::text(ping));
                    ping_deadline = Some(Instant::now() + hb.timeout);
                }
                _ = sleep_until(reset_at), if reset_pending => {
                    reset_pending = false;
                    self.failures = 0;
                    self.refresh_used = false;
                }
                r = w.step(&mut sink, &shared, if resumable { self.session.as_mut() } else { None }), if has_work => {
                    if let Err(e) = r {
                        return OpenEnd::Lost(lost(&sniff, e.to_string()));
                    }
                }
                _ = shared.wake_writer.notified() => {}
            }
        }
    }
}

fn lost(sniff: &SniffShared, error: String) -> Disconnect {
    match sniff.close_frame() {
        Some((code, reason)) => Disconnect::Close { code, reason },
        None => Disconnect::Abnormal { error },
    }
}

/// Size of a client (masked) frame with this payload length.
fn frame_len(payload: usize) -> u64 {
    let ext = if payload < 126 {
        0
    } else if payload < 65536 {
        2
    } else {
        8
    };
    (2 + ext + 4 + payload) as u64
}

type Sink = SplitSink<Ws, WsMessage>;
type Stream = SplitStream<Ws>;

/// Moves messages from the queue into the WebSocket, within the water marks.
struct Writer {
    /// Frame bytes handed to tungstenite, on the same scale as `sniff.written()`.
    fed: u64,
    sniff: Arc<SniffShared>,
    /// Messages that go before the queue (heartbeat pings; on a resumable link,
    /// control messages).
    priority: VecDeque<Message>,
    /// Resume: messages the gateway did not get, sent again before the queue.
    replay: VecDeque<Message>,
    need_flush: bool,
    paused: bool,
    high: u64,
    low: u64,
}

impl Writer {
    fn unwritten(&self) -> u64 {
        self.fed.saturating_sub(self.sniff.written())
    }

    fn publish(&mut self, shared: &Shared) {
        let u = self.unwritten();
        if u >= self.high {
            self.paused = true;
        } else if u <= self.low {
            self.paused = false;
        }
        shared.unwritten.store(u, Ordering::Relaxed);
    }

    fn has_work(&self, shared: &Shared) -> bool {
        !self.priority.is_empty()
            || !self.replay.is_empty()
            || self.need_flush
            || (!self.paused && !shared.queue_empty())
    }

    /// One cancel-safe step: feed one message, or flush.
    /// With a resumable `session`, data messages are recorded until acknowledged
    /// and escaped.
    async fn step(
        &mut self,
        sink: &mut Sink,
        shared: &Shared,
        session: Option<&mut Session>,
    ) -> Result<(), WsError> {
        self.publish(shared);
        if !self.priority.is_empty()
            || !self.replay.is_empty()
            || (!self.paused && !shared.queue_empty())
        {
            poll_fn(|cx| sink.poll_ready_unpin(cx)).await?;
            let msg = if let Some(m) = self.priority.pop_front() {
                Some(m)
            } else if let Some(m) = self.replay.pop_front() {
                Some(resume::escape(m))
            } else {
                let m = shared.pop();
                match (m, session) {
                    (Some(m), Some(s)) => {
                        s.sent(m.clone());
                        Some(resume::escape(m))
                    }
                    (m, _) => m,
                }
            };
            if let Some(m) = msg {
                self.fed += frame_len(m.len());
                self.need_flush = true;
                sink.start_send_unpin(m.into_ws())?;
            }
            return Ok(());
        }
        if self.need_flush {
            let low = self.low;
            poll_fn(|cx| match sink.poll_flush_unpin(cx) {
                Poll::Ready(Ok(())) => {
                    self.need_flush = false;
                    // Everything fed has reached the socket: resynchronise the count.
                    self.fed = self.sniff.written();
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => {
                    if self.paused && self.unwritten() <= low && !shared.queue_empty() {
                        Poll::Ready(Ok(()))
                    } else {
                        Poll::Pending
                    }
                }
            })
            .await?;
        }
        Ok(())
    }
}

async fn close_open(
    sink: &mut Sink,
    stream: &mut Stream,
    w: &mut Writer,
    shared: &Shared,
    cmd: &Cmd,
    limit: Duration,
    resumable: bool,
) {
    // close(): send what is queued first. reconnect(): leave the queue for the next link.
    let (code, reason, flush) = match cmd {
        Cmd::Close(code, reason) => (*code, reason.clone(), true),
        Cmd::Reconnect => (1000, "reconnect".to_owned(), false),
    };
    let _ = timeout(limit, async {
        while flush && let Some(m) = shared.pop() {
            let m = if resumable { resume::escape(m) } else { m };
            sink.feed(m.into_ws()).await?;
        }
        w.priority.clear();
        sink.send(WsMessage::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        })))
        .await?;
        // Wait for the server's close reply and its end of the TCP connection.
        while let Some(Ok(_)) = stream.next().await {}
        Ok::<_, WsError>(())
    })
    .await;
}

/// Percent-encodes a query parameter value.
fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn with_query(url: &str, name: &str, value: &str) -> String {
    let (base, frag) = match url.find('#') {
        Some(i) => (&url[..i], &url[i..]),
        None => (url, ""),
    };
    let sep = if base.contains('?') {
        if base.ends_with('?') || base.ends_with('&') {
            ""
        } else {
            "&"
        }
    } else {
        "?"
    };
    format!(
        "{base}{sep}{}={}{frag}",
        encode_query(name),
        encode_query(value)
    )
}

/// Connects and upgrades; with a resume `offer`, also says whether the gateway took
/// it. A server that answers a resume offer without a subprotocol (no `[resume]`
/// there) fails tungstenite's check: the client then connects once more without it.
async fn connect_once(
    cfg: &Config,
    token: Option<&str>,
    offer: Option<&str>,
) -> Result<(Ws, Arc<SniffShared>, bool), Disconnect> {
    if let Some(offer) = offer {
        match upgrade(cfg, token, Some(offer)).await {
            Err(Refused::NoSubprotocol) => {
                tracing::warn!("wsgate-client: the server does not offer resume; plain link");
            }
            Err(Refused::Other(d)) => return Err(d),
            Ok((ws, sniff)) => return Ok((ws, sniff, true)),
        }
    }
    match upgrade(cfg, token, None).await {
        Ok((ws, sniff)) => Ok((ws, sniff, false)),
        Err(Refused::NoSubprotocol) => Err(Disconnect::Abnormal {
            error: "server chose no subprotocol".into(),
        }),
        Err(Refused::Other(d)) => Err(d),
    }
}

/// Why an upgrade failed.
enum Refused {
    /// Subprotocols were offered and the 101 named none.
    NoSubprotocol,
    Other(Disconnect),
}

impl From<Disconnect> for Refused {
    fn from(d: Disconnect) -> Self {
        Refused::Other(d)
    }
}

async fn upgrade(
    cfg: &Config,
    token: Option<&str>,
    offer: Option<&str>,
) -> Result<(Ws, Arc<SniffShared>), Refused> {
    let invalid = |e: String| Disconnect::Invalid { error: e };
    let placement = cfg.token.as_ref().map(|(_, p)| p);
    let url = match (placement, token) {
        (Some(TokenPlacement::Query(name)), Some(t)) => with_query(&cfg.url, name, t),
        _ => cfg.url.clone(),
    };
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| invalid(e.to_string()))?;
    for (name, value) in &cfg.headers {
        let name: tungstenite::http::HeaderName = name
            .parse()
            .map_err(|_| invalid(format!("bad header name {name}")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| invalid(format!("bad value for header {name}")))?;
        req.headers_mut().append(name, value);
    }
    if let Some(offer) = offer {
        let name = tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
        let value = match req.headers().get(&name).and_then(|v| v.to_str().ok()) {
            Some(app) => format!("{app}, {offer}"),
            None => offer.to_owned(),
        };
        let value = HeaderValue::from_str(&value)
            .map_err(|_| invalid("bad Sec-WebSocket-Protocol".into()))?;
        req.headers_mut().insert(name, value);
    }
    if let (Some(TokenPlacement::Header(name)), Some(t)) = (placement, token) {
        let name: tungstenite::http::HeaderName = name
            .parse()
            .map_err(|_| invalid(format!("bad header name {name}")))?;
        let value = HeaderValue::from_str(t)
            .map_err(|_| invalid("token is not a valid header value".into()))?;
        req.headers_mut().insert(name, value);
    }
    let uri = req.uri().clone();
    let tls = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        other => return Err(invalid(format!("unsupported scheme {other:?}")).into()),
    };
    #[cfg(not(feature = "rustls-tls"))]
    if tls {
        return Err(invalid("wss:// needs the rustls-tls feature".into()).into());
    }
    let host = uri
        .host()
        .ok_or_else(|| invalid("URL has no host".into()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| Disconnect::Abnormal {
            error: format!("connect {host}:{port}: {e}"),
        })?;
    let _ = tcp.set_nodelay(true);
    let transport = if tls {
        #[cfg(feature = "rustls-tls")]
        {
            let config = cfg
                .tls
                .clone()
                .unwrap_or_else(crate::transport::default_tls_config);
            crate::transport::tls(config, host, tcp)
                .await
                .map_err(|e| Disconnect::Abnormal {
                    error: format!("TLS with {host}:{port}: {e}"),
                })?
        }
        #[cfg(not(feature = "rustls-tls"))]
        unreachable!()
    } else {
        Transport::Plain(tcp)
    };
    let (stream, sniff) = Sniffed::new(transport);
    let (mut ws, _resp) =
        tokio_tungstenite::client_async_with_config(req, stream, Some(cfg.ws_config))
            .await
            .map_err(|e| match e {
                WsError::Protocol(
                    tungstenite::error::ProtocolError::SecWebSocketSubProtocolError(
                        tungstenite::error::SubProtocolError::NoSubProtocol,
                    ),
                ) => Refused::NoSubprotocol,
                e => Refused::Other(handshake_error(e)),
            })?;
    if let (Some(TokenPlacement::FirstMessage), Some(t)) = (placement, token) {
        ws.send(WsMessage::Text(t.to_owned().into()))
            .await
            .map_err(|e| Disconnect::Abnormal {
                error: e.to_string(),
            })?;
    }
    Ok((ws, sniff))
}

fn handshake_error(e: WsError) -> Disconnect {
    match e {
        WsError::Http(resp) => {
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            Disconnect::Http {
                status: resp.status().as_u16(),
                retry_after,
            }
        }
        WsError::Url(u) => Disconnect::Invalid {
            error: u.to_string(),
        },
        other => Disconnect::Abnormal {
            error: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_building() {
        assert_eq!(
            with_query("ws://h/p", "token", "a b&c"),
            "ws://h/p?token=a%20b%26c"
        );
        assert_eq!(
            with_query("ws://h/p?x=1", "token", "t"),
            "ws://h/p?x=1&token=t"
        );
        assert_eq!(with_query("ws://h/?", "token", "t"), "ws://h/?token=t");
    }

    #[test]
    fn frame_lengths() {
        assert_eq!(frame_len(0), 6);
        assert_eq!(frame_len(125), 131);
        assert_eq!(frame_len(126), 134);
        assert_eq!(frame_len(70000), 70014);
    }
}
