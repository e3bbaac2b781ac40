//! The pooled HTTP/1.1 client toward one backend, for plain HTTP requests
//! (not upgrades, which get a connection of their own in `dial`).
//!
//! hyper-util's legacy `Client` keeps idle keep-alive connections per
//! backend. Its connector ignores the request URI's host and always dials
//! this backend (TCP with TCP_NODELAY, TLS for a wss:// URL), so the URI
//! only carries the path and the pool key.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::Uri;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::backend::dial::{self, DialError};
use crate::config::BackendUrl;
use crate::tls::Stream;

/// Idle keep-alive connections to a backend close after this long (below
/// the usual 60-75 s of backend servers, so the gateway closes first and
/// never writes into a connection the backend is closing).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// Idle connections kept per backend.
const POOL_MAX_IDLE: usize = 256;

/// The client for one backend's plain HTTP requests.
pub type HttpClient = Client<BackendConnector, UpstreamBody>;

/// Builds the client with its keep-alive pool.
pub fn client(
    url: &BackendUrl,
    tls: Option<&Arc<rustls::ClientConfig>>,
    connect_timeout: Duration,
) -> HttpClient {
    let connector = BackendConnector {
        url: Arc::new(url.clone()),
        tls: tls.cloned(),
        connect_timeout,
    };
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE)
        // The client's Host header is forwarded as sent.
        .set_host(false)
        .build(connector)
}

/// Dials one backend, whatever the URI says.
#[derive(Clone)]
pub struct BackendConnector {
    url: Arc<BackendUrl>,
    tls: Option<Arc<rustls::ClientConfig>>,
    connect_timeout: Duration,
}

impl tower_service::Service<Uri> for BackendConnector {
    type Response = PooledIo;
    type Error = DialError;
    type Future = Pin<Box<dyn Future<Output = Result<PooledIo, DialError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), DialError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (url, tls, timeout) = (self.url.clone(), self.tls.clone(), self.connect_timeout);
        Box::pin(async move {
            let io = tokio::time::timeout(timeout, dial::connect(&url, tls.as_ref()))
                .await
                .map_err(|_| DialError::Timeout(timeout))??;
            Ok(PooledIo(TokioIo::new(io)))
        })
    }
}

/// A backend connection as the pool holds it.
pub struct PooledIo(TokioIo<Stream>);

impl Connection for PooledIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for PooledIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for PooledIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
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
