//! The gateway's error vocabulary: which side a failure belongs to, the close
//! codes of SPEC.md, and the one place where an admission failure becomes an
//! HTTP status and a metric label. Call sites never spell those numbers.

use hyper::StatusCode;

use crate::metrics::ConnResult;

/// Who a failure or a close belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
    Gateway,
}

impl Side {
    pub fn label(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Backend => "backend",
            Side::Gateway => "gateway",
        }
    }
}

/// Close codes the gateway sends (RFC 6455 section 7.4.1, SPEC.md).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Never on the wire: "no status code was present" (RFC 6455 7.4.1).
    pub const NO_STATUS: u16 = 1005;
    /// Never on the wire: the connection dropped without a close frame.
    pub const ABNORMAL: u16 = 1006;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
    pub const SERVICE_RESTART: u16 = 1012;
    pub const BAD_GATEWAY: u16 = 1014;
    pub const AUTH_FAILED: u16 = 4001;
    pub const AUTH_TIMEOUT: u16 = 4008;
    pub const RATE_LIMITED: u16 = 4029;

    /// Whether a code may appear in a close frame on the wire
    /// (RFC 6455 section 7.4: 1000-1003, 1007-1011 and the IANA-registered
    /// 1012-1014; 3000-4999 for libraries and applications).
    pub fn valid_on_wire(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// An upgrade request refused before the 101: each maps to one HTTP status
/// and one `wsgate_connections_total{result}` label.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Reject {
    #[error("malformed WebSocket upgrade: {0}")]
    BadRequest(&'static str),
    #[error("plain HTTP request on a WebSocket listener")]
    UpgradeRequired,
    #[error("unsupported Sec-WebSocket-Version (only 13)")]
    UnsupportedVersion,
    #[error("origin not allowed")]
    OriginForbidden,
    #[error("authentication failed: {0}")]
    Unauthorized(String),
    #[error("over max_connections")]
    Overloaded,
    #[error("over max_connections_per_ip")]
    PerIpLimit,
    #[error("no healthy backend")]
    NoBackend,
    #[error("backend unreachable: {0}")]
    BackendUnreachable(String),
}

/// Seconds a client is told to wait in `Retry-After` when the gateway is full
/// or has no backend: long enough to spread a reconnect storm, short enough
/// for a restarted backend.
pub const RETRY_AFTER_SECS: u32 = 5;

impl Reject {
    pub fn status(&self) -> StatusCode {
        match self {
            Reject::BadRequest(_) => StatusCode::BAD_REQUEST,
            Reject::UpgradeRequired | Reject::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            Reject::OriginForbidden => StatusCode::FORBIDDEN,
            Reject::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Reject::Overloaded | Reject::NoBackend => StatusCode::SERVICE_UNAVAILABLE,
            Reject::PerIpLimit => StatusCode::TOO_MANY_REQUESTS,
            Reject::BackendUnreachable(_) => StatusCode::BAD_GATEWAY,
        }
    }

    pub fn result(&self) -> ConnResult {
        match self {
            Reject::BadRequest(_) | Reject::UpgradeRequired | Reject::UnsupportedVersion => {
                ConnResult::BadRequest
            }
            Reject::OriginForbidden => ConnResult::OriginRejected,
            Reject::Unauthorized(_) => ConnResult::AuthRejected,
            Reject::Overloaded | Reject::PerIpLimit => ConnResult::Overloaded,
            Reject::NoBackend => ConnResult::NoBackend,
            Reject::BackendUnreachable(_) => ConnResult::BackendError,
        }
    }

    /// Whether the answer carries `Retry-After`.
    pub fn retry_after(&self) -> bool {
        matches!(
            self,
            Reject::Overloaded | Reject::NoBackend | Reject::PerIpLimit
        )
    }
}

/// How an upgraded connection ended: who closed it, with which code and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub initiator: Side,
    pub code: u16,
    pub reason: String,
}
