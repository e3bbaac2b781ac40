//! An upgrade refused before the 101, and the one place where a refusal
//! becomes an HTTP status, a `wsgate_connections_total{result}` label and
//! the response the client reads. Call sites never spell those numbers.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use crate::auth::AuthError;
use crate::metrics::ConnResult;
use crate::state::caps::CapExceeded;

/// Seconds a client is told to wait in `Retry-After` when the gateway is full
/// or has no backend: long enough to spread a reconnect storm, short enough
/// for a restarted backend.
pub const RETRY_AFTER_SECS: u32 = 5;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Reject {
    #[error("malformed WebSocket upgrade: {0}")]
    BadRequest(&'static str),
    #[error("plain HTTP request on a WebSocket listener")]
    UpgradeRequired,
    #[error("unsupported Sec-WebSocket-Version (only 13)")]
    UnsupportedVersion,
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("over max_connections")]
    Overloaded,
    #[error("over max_connections_per_ip")]
    PerIpLimit,
    #[error("no healthy backend")]
    NoBackend,
    #[error("no route for this host and path")]
    NoRoute,
    #[error("backend unreachable: {0}")]
    BackendUnreachable(String),
}

impl From<CapExceeded> for Reject {
    fn from(c: CapExceeded) -> Reject {
        match c {
            CapExceeded::Total => Reject::Overloaded,
            CapExceeded::PerIp => Reject::PerIpLimit,
        }
    }
}

impl Reject {
    pub fn status(&self) -> StatusCode {
        match self {
            Reject::BadRequest(_) => StatusCode::BAD_REQUEST,
            Reject::NoRoute => StatusCode::NOT_FOUND,
            Reject::UpgradeRequired | Reject::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            Reject::Auth(AuthError::OriginForbidden) => StatusCode::FORBIDDEN,
            Reject::Auth(AuthError::Unauthorized(_)) => StatusCode::UNAUTHORIZED,
            Reject::Overloaded | Reject::NoBackend => StatusCode::SERVICE_UNAVAILABLE,
            Reject::PerIpLimit => StatusCode::TOO_MANY_REQUESTS,
            Reject::BackendUnreachable(_) => StatusCode::BAD_GATEWAY,
        }
    }

    pub fn result(&self) -> ConnResult {
        match self {
            Reject::BadRequest(_)
            | Reject::UpgradeRequired
            | Reject::UnsupportedVersion
            | Reject::NoRoute => ConnResult::BadRequest,
            Reject::Auth(AuthError::OriginForbidden) => ConnResult::OriginRejected,
            Reject::Auth(AuthError::Unauthorized(_)) => ConnResult::AuthRejected,
            Reject::Overloaded | Reject::PerIpLimit => ConnResult::Overloaded,
            Reject::NoBackend => ConnResult::NoBackend,
            Reject::BackendUnreachable(_) => ConnResult::BackendError,
        }
    }

    /// Whether the answer carries `Retry-After`.
    fn retry_after(&self) -> bool {
        matches!(
            self,
            Reject::Overloaded | Reject::NoBackend | Reject::PerIpLimit
        )
    }

    /// The HTTP answer: the status, the reason as text, and the headers
    /// RFC 6455 and RFC 9110 ask for with it. `Connection: close` is added
    /// by `conn::handle` to every non-101 answer, this one included.
    pub fn response(&self) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(Bytes::from(format!("{self}\n"))));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if self.retry_after() {
            h.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        if matches!(self, Reject::UnsupportedVersion | Reject::UpgradeRequired) {
            // RFC 6455 section 4.4: the versions the server speaks.
            h.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        if matches!(self, Reject::Auth(AuthError::Unauthorized(_))) {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
