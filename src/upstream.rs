//! Backends: their live state (health per check, active connections,
//! draining) and dialing one: TCP, TLS for wss://, and the HTTP/1.1 upgrade
//! through hyper's client.
//!
//! A `Backend` outlives config reloads that keep it (same name and URL), so
//! its health and connection count carry over. Its cancellation token ends
//! every connection to it at once (drain, removal).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use crate::config::{BackendConfig, BackendUrl, HealthConfig, RouteOn};
use crate::handshake::accept_key;
use crate::metrics::{Check, Metrics};
use crate::tls::{self, Stream};

/// Body of a refused upgrade passed back to the client, at most this big.
const MAX_REFUSAL_BODY: usize = 16 * 1024;

/// Consecutive results of one health check, against rise/fall.
#[derive(Debug, Clone, Copy)]
pub struct CheckState {
    pub up: bool,
    successes: u32,
    failures: u32,
}

impl Default for CheckState {
    /// A backend starts up (SPEC: marked down only after `fall` failures).
    fn default() -> Self {
        CheckState {
            up: true,
            successes: 0,
            failures: 0,
        }
    }
}

impl CheckState {
    /// Records a result; returns `Some(new state)` when it flips.
    pub fn record(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.up && self.successes >= rise {
                self.up = true;
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.up && self.failures >= fall {
                self.up = false;
                return Some(false);
            }
        }
        None
    }
}

/// Health of a backend: one state per check. A short std mutex: updated by
/// its health task and by passive failures, never held across `.await`.
#[derive(Debug, Default)]
pub struct Health {
    pub http: CheckState,
    pub ws: CheckState,
}

/// One backend and its live state.
pub struct Backend {
    pub name: String,
    pub url: BackendUrl,
    /// Ring weight; read by `/backends`, the ring has its own copy.
    pub weight: AtomicU32,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub health: Mutex<Health>,
    pub active: AtomicUsize,
    pub draining: AtomicBool,
    /// Ends every connection to this backend (drain, removal, shutdown).
    pub cancel: CancellationToken,
    pub config: BackendConfig,
}

impl Backend {
    pub fn new(config: &BackendConfig, root: &CancellationToken) -> Result<Backend, tls::TlsError> {
        let tls = if config.url.tls {
            Some(tls::client_config(config)?)
        } else {
            None
        };
        Ok(Backend {
            name: config.name.clone(),
            url: config.url.clone(),
            weight: AtomicU32::new(config.weight),
            tls,
            health: Mutex::new(Health::default()),
            active: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            cancel: root.child_token(),
            config: config.clone(),
        })
    }

    /// Same endpoint and TLS settings: a reload may keep this backend's state.
    pub fn same_endpoint(&self, c: &BackendConfig) -> bool {
        self.config.url == c.url
            && self.config.ca == c.ca
            && self.config.tls_insecure_skip_verify == c.tls_insecure_skip_verify
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a check passes under `cfg` ("off" counts as passing).
    pub fn check_up(&self, cfg: &HealthConfig, check: Check) -> bool {
        let h = self.health();
        !check_on(cfg, check)
            || match check {
                Check::Http => h.http.up,
                Check::Ws => h.ws.up,
            }
    }

    /// `"up"`, `"down"` or `"off"` for `/backends`.
    pub fn check_label(&self, cfg: &HealthConfig, check: Check) -> &'static str {
        match (check_on(cfg, check), self.check_up(cfg, check)) {
            (false, _) => "off",
            (true, true) => "up",
            (true, false) => "down",
        }
    }

    /// Whether routing may use it: the checks of `route_on` pass and it is
    /// not draining.
    pub fn routable(&self, cfg: &HealthConfig) -> bool {
        if self.draining.load(Ordering::Relaxed) {
            return false;
        }
        match cfg.route_on {
            RouteOn::Ws => self.check_up(cfg, Check::Ws),
            RouteOn::Http => self.check_up(cfg, Check::Http),
            RouteOn::Both => self.check_up(cfg, Check::Ws) && self.check_up(cfg, Check::Http),
        }
    }

    /// Records a check result (active or passive), updating the gauge and
    /// logging only when the state flips.
    pub fn record(&self, check: Check, ok: bool, rise: u32, fall: u32, metrics: &Metrics) {
        let flip = {
            let mut h = self.health();
            let s = match check {
                Check::Http => &mut h.http,
                Check::Ws => &mut h.ws,
            };
            s.record(ok, rise, fall)
        };
        if let Some(up) = flip {
            metrics.backend_up(&self.name, check).set(up as i64);
            if up {
                tracing::info!(backend = %self.name, check = check.label(), "backend up");
            } else {
                tracing::warn!(backend = %self.name, check = check.label(), "backend down");
            }
        }
    }

    /// A failed dial or upgrade counts toward `fall` for the WebSocket check
    /// at once (for the HTTP one when only that check is on).
    pub fn passive_failure(&self, cfg: &HealthConfig, metrics: &Metrics) {
        for check in [Check::Ws, Check::Http] {
            if check_on(cfg, check) {
                self.record(check, false, cfg.rise, cfg.fall, metrics);
                return;
            }
        }
    }
}

/// Whether `check` runs under `cfg` (an empty path turns it off). The
/// snapshot's config is the one owner of this; backends keep only results.
pub fn check_on(cfg: &HealthConfig, check: Check) -> bool {
    match check {
        Check::Http => !cfg.http_path.is_empty(),
        Check::Ws => !cfg.ws_path.is_empty(),
    }
}

/// Why a dial failed (before any 101).
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with {host}: {source}")]
    Tls {
        host: String,
        source: std::io::Error,
    },
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    #[error("HTTP exchange failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("backend answered 101 with a wrong Sec-WebSocket-Accept")]
    BadAccept,
    #[error("upgrade hand-off failed")]
    Upgrade,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// A backend that accepted the upgrade.
pub struct Upgraded {
    pub io: Stream,
    /// Bytes hyper read past the 101 (frames the backend sent at once).
    pub pre: Bytes,
    /// The backend's 101 headers the client must see: the chosen
    /// subprotocol and extensions.
    pub protocol: Option<HeaderValue>,
    pub extensions: Option<HeaderValue>,
}

/// What the backend said to the upgrade.
pub enum Dialed {
    Upgraded(Upgraded),
    /// A non-101 answer (401, 404, ...), passed to the client as is.
    Refused(Response<Full<Bytes>>),
}

/// Opens TCP (+TLS) to `url`, with TCP_NODELAY: frames are small and
/// latency-sensitive, and the relay already batches what it writes.
pub async fn connect(
    url: &BackendUrl,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Stream, DialError> {
    let addr = format!("{}:{}", url.host, url.port);
    let tcp = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|source| DialError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    match tls {
        None => Ok(Either::Left(tcp)),
        Some(cfg) => {
            let name = tls::server_name(&url.host)
                .ok_or_else(|| DialError::ServerName(url.host.clone()))?;
            let s = tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(name, tcp)
                .await
                .map_err(|source| DialError::Tls {
                    host: url.host.clone(),
                    source,
                })?;
            Ok(Either::Right(Box::new(tokio_rustls::TlsStream::Client(s))))
        }
    }
}

/// Dials `backend` and sends it the upgrade `headers` for `path_and_query`.
pub async fn dial(
    backend: &Backend,
    path_and_query: &str,
    headers: HeaderMap,
    timeout: Duration,
) -> Result<Dialed, DialError> {
    tokio::time::timeout(timeout, dial_inner(backend, path_and_query, headers))
        .await
        .map_err(|_| DialError::Timeout(timeout))?
}

async fn dial_inner(
    backend: &Backend,
    path_and_query: &str,
    headers: HeaderMap,
) -> Result<Dialed, DialError> {
    let io = connect(&backend.url, backend.tls.as_ref()).await?;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, Empty<Bytes>>(TokioIo::new(io))
        .await?;
    let mut conn = std::pin::pin!(conn.with_upgrades());
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let uri = format!("{}{}", backend.url.prefix, path_and_query);
    let mut req = Request::get(uri)
        .body(Empty::new())
        .expect("valid request parts");
    *req.headers_mut() = headers;
    // Drive the connection and the request together. With upgrades on, the
    // connection future ends as soon as the 101 arrives, possibly before
    // the response future is polled again: that is not a failure.
    let send = sender.send_request(req);
    tokio::pin!(send);
    let mut conn_result = None;
    let mut resp = loop {
        tokio::select! {
            r = &mut send => break r?,
            r = &mut conn, if conn_result.is_none() => conn_result = Some(r),
        }
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (parts, body) = resp.into_parts();
        // Drive the connection while reading the body.
        let collect = Limited::new(body, MAX_REFUSAL_BODY).collect();
        let body = if conn_result.is_some() {
            collect.await.map(|b| b.to_bytes()).unwrap_or_default()
        } else {
            tokio::select! {
                b = collect => b.map(|b| b.to_bytes()).unwrap_or_default(),
                _ = &mut conn => Bytes::new(),
            }
        };
        let mut out = Response::new(Full::new(body));
        *out.status_mut() = parts.status;
        for name in [
            header::CONTENT_TYPE,
            header::WWW_AUTHENTICATE,
            header::RETRY_AFTER,
            header::LOCATION,
        ] {
            if let Some(v) = parts.headers.get(&name) {
                out.headers_mut().insert(name, v.clone());
            }
        }
        return Ok(Dialed::Refused(out));
    }
    let expected = key.map(|k| accept_key(k.as_bytes()));
    if resp.headers().get(header::SEC_WEBSOCKET_ACCEPT) != expected.as_ref() {
        return Err(DialError::BadAccept);
    }
    let protocol = resp.headers().get(header::SEC_WEBSOCKET_PROTOCOL).cloned();
    let extensions = resp
        .headers()
        .get(header::SEC_WEBSOCKET_EXTENSIONS)
        .cloned();
    let on_upgrade = hyper::upgrade::on(&mut resp);
    let upgraded = match conn_result {
        Some(r) => {
            r?;
            on_upgrade.await
        }
        None => {
            let (upgraded, r) = tokio::join!(on_upgrade, conn);
            r?;
            upgraded
        }
    };
    let parts = upgraded?
        .downcast::<TokioIo<Stream>>()
        .map_err(|_| DialError::Upgrade)?;
    Ok(Dialed::Upgraded(Upgraded {
        io: parts.io.into_inner(),
        pre: parts.read_buf,
        protocol,
        extensions,
    }))
}
