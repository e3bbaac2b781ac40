//! Keep-alive connections toward one backend, for plain HTTP requests (not
//! upgrades, which get a connection of their own in `dial`).
//!
//! Each shard thread keeps its own idle connections (hyper's low-level
//! HTTP/1.1 client: one `SendRequest` per connection, its connection future
//! a task on the same runtime), so a request and the backend connection it
//! uses never wake another thread. A connection is lent to one request
//! ([`Lease`]) and comes back when the response body has been read to its
//! end; a response cut short closes it.
//!
//! Written over hyper's connection API rather than hyper-util's pooled
//! `Client`: that client spawns a task per request to watch for the
//! connection becoming idle, keys its pool by a hashed URI authority under
//! a mutex shared by every thread, and wants absolute URIs built for it;
//! a gateway knows the backend already and gets the connection back at
//! the end of the body it streams.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::ThreadId;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::time::Instant;

use crate::backend::Backend;
use crate::backend::dial::{self, DialError};

/// Idle keep-alive connections close after this long (below the usual
/// 60-75 s of backend servers, so the gateway closes first and never writes
/// into a connection the backend is closing).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// Idle connections kept per backend and shard thread.
const POOL_MAX_IDLE: usize = 256;

/// A backend's idle connections, per shard thread (a handful: a short
/// list, each under one short lock that is never held across `.await`).
#[derive(Default)]
pub struct HttpPool {
    idle: Mutex<Vec<(ThreadId, VecDeque<Idle>)>>,
}

struct Idle {
    tx: SendRequest<UpstreamBody>,
    since: Instant,
}

impl HttpPool {
    fn lock(&self) -> MutexGuard<'_, Vec<(ThreadId, VecDeque<Idle>)>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used live connection of this thread, if any;
    /// expired and closed ones are dropped on the way.
    fn checkout(&self) -> Option<SendRequest<UpstreamBody>> {
        let me = std::thread::current().id();
        let now = Instant::now();
        let mut all = self.lock();
        let (_, idle) = all.iter_mut().find(|(t, _)| *t == me)?;
        while idle
            .front()
            .is_some_and(|i| now.duration_since(i.since) > POOL_IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        // Newest first: the warmest connection, and the one least likely
        // to be closed by the backend's own idle timeout.
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            if idle[i].tx.is_ready() {
                return idle.remove(i).map(|x| x.tx);
            }
            if idle[i].tx.is_closed() {
                idle.remove(i);
            }
            // Else it is still finishing its last response: left for later.
        }
        None
    }

    fn checkin(&self, tx: SendRequest<UpstreamBody>) {
        if tx.is_closed() {
            return;
        }
        let me = std::thread::current().id();
        let mut all = self.lock();
        let idle = match all.iter().position(|(t, _)| *t == me) {
            Some(i) => &mut all[i].1,
            None => {
                all.push((me, VecDeque::new()));
                &mut all.last_mut().expect("just pushed").1
            }
        };
        if idle.len() >= POOL_MAX_IDLE {
            idle.pop_front();
        }
        idle.push_back(Idle {
            tx,
            since: Instant::now(),
        });
    }
}

/// A backend connection lent to one request; given back when its response
/// body has ended ([`Lease::give_back`]), closed if dropped.
pub struct Lease {
    tx: SendRequest<UpstreamBody>,
    backend: Arc<Backend>,
}

impl Lease {
    /// The response was read to its end: the connection may carry another.
    pub fn give_back(self) {
        self.backend.http.checkin(self.tx);
    }
}

/// Why a request got no response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection: nothing of the request was sent.
    #[error("{0}")]
    Connect(#[from] DialError),
    #[error("HTTP/1.1 handshake: {0}")]
    Handshake(hyper::Error),
    #[error("{0}")]
    Http(hyper::Error),
}

impl SendError {
    /// Nothing of the request reached the backend (another may take it).
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_) | SendError::Handshake(_))
    }
}

/// Sends `req` (origin-form URI, Host set) to `backend` over one of this
/// thread's idle connections, or a new one dialed within
/// `connect_timeout`, and waits for the response head.
pub async fn send(
    backend: &Arc<Backend>,
    mut req: Request<UpstreamBody>,
    connect_timeout: Duration,
) -> Result<(Response<Incoming>, Lease), SendError> {
    loop {
        let (mut tx, pooled) = match backend.http.checkout() {
            Some(tx) => (tx, true),
            None => (connect(backend, connect_timeout).await?, false),
        };
        match tx.try_send_request(req).await {
            Ok(resp) => {
                let lease = Lease {
                    tx,
                    backend: backend.clone(),
                };
                return Ok((resp, lease));
            }
            Err(mut e) => match e.take_message() {
                // A pooled connection closed under us before the request
                // was written: the request goes out on another.
                Some(back) if pooled => req = back,
                _ => return Err(SendError::Http(e.into_error())),
            },
        }
    }
}

/// A new connection to `backend`, its connection future a task of this
/// thread's runtime (it ends when the connection closes).
async fn connect(
    backend: &Backend,
    timeout: Duration,
) -> Result<SendRequest<UpstreamBody>, SendError> {
    let io = tokio::time::timeout(timeout, dial::connect(&backend.url, backend.tls()))
        .await
        .map_err(|_| DialError::Timeout(timeout))??;
    let (tx, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(SendError::Handshake)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "backend keep-alive connection ended");
        }
    });
    Ok(tx)
}

/// Where a client's request body waits until the backend request polls it.
/// If dialing fails before the first poll, the body is still here and the
/// request can go to the next backend on the ring with it.
pub struct BodySlot {
    body: Mutex<Option<Incoming>>,
    /// The body grew past the configured limit (the answer is 413).
    over_limit: AtomicBool,
}

impl BodySlot {
    pub fn new(body: Incoming) -> Arc<BodySlot> {
        Arc::new(BodySlot {
            body: Mutex::new(Some(body)),
            over_limit: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Option<Incoming>> {
        self.body.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether no byte of the body has been read (a retry may send it).
    pub fn untouched(&self) -> bool {
        self.lock().is_some()
    }

    pub fn over_limit(&self) -> bool {
        self.over_limit.load(Ordering::Relaxed)
    }
}

/// The body of a request sent to a backend: the client's body, streamed
/// frame by frame (trailers included), cut off past `limit` bytes.
pub struct UpstreamBody {
    slot: Arc<BodySlot>,
    /// Taken from the slot at the first poll, so later polls take no lock.
    body: Option<Incoming>,
    /// 0: no limit.
    limit: u64,
    seen: u64,
}

/// The body grew past `max_request_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body over the limit")]
pub struct BodyTooLarge;

impl UpstreamBody {
    pub fn new(slot: Arc<BodySlot>, limit: u64) -> UpstreamBody {
        UpstreamBody {
            slot,
            body: None,
            limit,
            seen: 0,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.body.is_none() {
            this.body = this.slot.lock().take();
        }
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.seen += d.len() as u64;
                    if this.limit > 0 && this.seen > this.limit {
                        this.slot.over_limit.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Some(b) => b.is_end_stream(),
            None => self.slot.lock().as_ref().is_none_or(|b| b.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Some(b) => b.size_hint(),
            None => self
                .slot
                .lock()
                .as_ref()
                .map_or(SizeHint::with_exact(0), |b| b.size_hint()),
        }
    }
}
