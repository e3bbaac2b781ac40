//! Why a connection ended, and what the client does about it (SPEC "Close-code policy
//! for clients").

use std::fmt;
use std::time::Duration;

/// Why a connection attempt failed or an open connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disconnect {
    /// A close frame was received. `code` is the code as the peer sent it, including
    /// codes tungstenite refuses to report (1014 Bad Gateway, see the crate docs);
    /// 1005 means the frame carried no code.
    Close {
        /// The close code the peer sent.
        code: u16,
        /// The close reason the peer sent (may be empty).
        reason: String,
    },
    /// The server refused the WebSocket upgrade with an HTTP status (401, 403, 429,
    /// 502, 503, ...).
    Http {
        /// The HTTP status code.
        status: u16,
        /// The `Retry-After` header, when present in seconds.
        retry_after: Option<Duration>,
    },
    /// The link was lost without a close frame (what browsers report as 1006): the
    /// TCP connect failed, the peer reset or ended the stream, or a protocol error.
    Abnormal {
        /// A description of the underlying error.
        error: String,
    },
    /// No message arrived within the heartbeat timeout after an application ping.
    HeartbeatTimeout,
    /// Token, TCP connect and upgrade did not complete within the connect timeout.
    ConnectTimeout,
    /// The token provider returned an error.
    TokenProvider {
        /// The provider's error, as text.
        error: String,
    },
    /// The token provider returned a token the server had already refused. The client
    /// never offers such a token again; it stops instead.
    StaleToken,
    /// The configuration cannot work (bad URL, `wss://` without TLS support, ...).
    Invalid {
        /// What is wrong.
        error: String,
    },
}

impl Disconnect {
    /// The close code this disconnect counts as: the received code for
    /// [`Disconnect::Close`]; 4000 for the client's own timeouts (heartbeat, connect
    /// watchdog), as in the JS client; 1006 for everything else.
    pub fn code(&self) -> u16 {
        match self {
            Disconnect::Close { code, .. } => *code,
            Disconnect::HeartbeatTimeout | Disconnect::ConnectTimeout => 4000,
            _ => 1006,
        }
    }

    /// Whether the client itself ended the link (heartbeat or connect timeout) rather
    /// than the peer or the network. Local ends never reach the 4xxx app callback.
    pub fn is_local(&self) -> bool {
        matches!(
            self,
            Disconnect::HeartbeatTimeout | Disconnect::ConnectTimeout
        )
    }

    /// The close reason (empty unless a close frame carried one).
    pub fn reason(&self) -> &str {
        match self {
            Disconnect::Close { reason, .. } => reason,
            _ => "",
        }
    }

    /// Whether this is a refusal of the credentials: close 4001 (any reason) or HTTP
    /// 401/403 at the handshake. The token used is never offered again.
    pub fn is_auth_refusal(&self) -> bool {
        matches!(
            self,
            Disconnect::Close { code: 4001, .. }
                | Disconnect::Http {
                    status: 401 | 403,
                    ..
                }
        )
    }
}

impl fmt::Display for Disconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Disconnect::Close { code, reason } if reason.is_empty() => write!(f, "closed {code}"),
            Disconnect::Close { code, reason } => write!(f, "closed {code} \"{reason}\""),
            Disconnect::Http { status, .. } => write!(f, "upgrade refused with HTTP {status}"),
            Disconnect::Abnormal { error } => write!(f, "connection lost (1006): {error}"),
            Disconnect::HeartbeatTimeout => write!(f, "heartbeat timeout (local 4000)"),
            Disconnect::ConnectTimeout => write!(f, "connect timeout (local 4000)"),
            Disconnect::TokenProvider { error } => write!(f, "token provider failed: {error}"),
            Disconnect::StaleToken => {
                write!(f, "the token provider returned a token the server refused")
            }
            Disconnect::Invalid { error } => write!(f, "invalid configuration: {error}"),
        }
    }
}

/// What the close-code policy says to do after a [`Disconnect`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// 1000: the connection was closed on purpose; do nothing.
    Done,
    /// Stop and report: retrying would repeat the same failure.
    Stop,
    /// 4001 "token expired": fetch a fresh token and reconnect at once, once.
    RefreshToken,
    /// Reconnect with the normal backoff.
    Reconnect,
    /// Reconnect with the long backoff (starting at half the cap).
    ReconnectLong,
    /// Another 4000-4999 code: the application's callback decides (default: stop).
    AppDecides,
}

/// The application's answer for a 4000-4999 close code the policy does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseDecision {
    /// Stop and report (the default).
    Stop,
    /// Reconnect with the normal backoff.
    Reconnect,
    /// Reconnect with the long backoff.
    ReconnectLong,
}

/// Whether a close reason means "token expired" (case-insensitive, surrounding
/// whitespace ignored).
pub fn is_token_expired(reason: &str) -> bool {
    reason.trim().eq_ignore_ascii_case("token expired")
}

/// The SPEC close-code policy.
///
/// | disconnect | action |
/// |---|---|
/// | 1000 | [`Action::Done`] |
/// | 1002, 1003, 1007, 1009, 1010 | [`Action::Stop`] |
/// | 4001 "token expired" | [`Action::RefreshToken`] |
/// | 4001 (other reason), 4008, HTTP 401/403 | [`Action::Stop`] |
/// | 1008, 1013, 4029, HTTP 429/503 | [`Action::ReconnectLong`] |
/// | 1001, 1005, 1006, 1011, 1012, 1014, other 1xxx/2xxx/3xxx, HTTP 5xx/408, lost link, heartbeat or connect timeout, token provider error | [`Action::Reconnect`] |
/// | other 4000-4999 | [`Action::AppDecides`] |
/// | other HTTP status (400, 404, ...), stale token, invalid configuration | [`Action::Stop`] |
///
/// Codes the SPEC table does not name are extensions documented in the README:
/// 1003/1010 are client bugs like 1007; 1005 (a close frame without a code) and
/// codes outside 4000-4999 reconnect normally; HTTP 429/503 are "ask for less".
pub fn classify(d: &Disconnect) -> Action {
    match d {
        Disconnect::Close { code, reason } => match *code {
            1000 => Action::Done,
            1002 | 1003 | 1007 | 1009 | 1010 => Action::Stop,
            4001 if is_token_expired(reason) => Action::RefreshToken,
            4001 | 4008 => Action::Stop,
            1008 | 1013 | 4029 => Action::ReconnectLong,
            4000..=4999 => Action::AppDecides,
            _ => Action::Reconnect,
        },
        Disconnect::Http { status, .. } => match *status {
            401 | 403 => Action::Stop,
            429 | 503 => Action::ReconnectLong,
            408 | 500..=599 => Action::Reconnect,
            _ => Action::Stop,
        },
        Disconnect::Abnormal { .. }
        | Disconnect::HeartbeatTimeout
        | Disconnect::ConnectTimeout
        | Disconnect::TokenProvider { .. } => Action::Reconnect,
        Disconnect::StaleToken | Disconnect::Invalid { .. } => Action::Stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(code: u16, reason: &str) -> Disconnect {
        Disconnect::Close {
            code,
            reason: reason.into(),
        }
    }

    #[test]
    fn spec_table() {
        assert_eq!(classify(&close(1000, "")), Action::Done);
        for c in [1002, 1007, 1009] {
            assert_eq!(classify(&close(c, "x")), Action::Stop, "{c}");
        }
        assert_eq!(
            classify(&close(4001, "token expired")),
            Action::RefreshToken
        );
        assert_eq!(
            classify(&close(4001, " Token Expired ")),
            Action::RefreshToken
        );
        assert_eq!(
            classify(&close(4001, "authentication failed")),
            Action::Stop
        );
        assert_eq!(classify(&close(4008, "")), Action::Stop);
        for status in [401, 403] {
            let d = Disconnect::Http {
                status,
                retry_after: None,
            };
            assert_eq!(classify(&d), Action::Stop);
            assert!(d.is_auth_refusal());
        }
        for c in [1008, 1013, 4029] {
            assert_eq!(classify(&close(c, "")), Action::ReconnectLong, "{c}");
        }
        for c in [1001, 1006, 1011, 1012, 1014] {
            assert_eq!(classify(&close(c, "")), Action::Reconnect, "{c}");
        }
        assert_eq!(
            classify(&Disconnect::Abnormal {
                error: "eof".into()
            }),
            Action::Reconnect
        );
        assert_eq!(classify(&Disconnect::HeartbeatTimeout), Action::Reconnect);
        assert_eq!(classify(&close(4000, "")), Action::AppDecides);
        assert_eq!(classify(&close(4999, "")), Action::AppDecides);
    }
}
