//! How a connection ends, decided in one place: for each way a connection
//! can end, the close frame (or none) the gateway sends toward each peer,
//! who counts as the initiator, and the code and reason that go to the
//! metrics and the access log. The relay and the connection phases only
//! say *what* happened; the numbers are here.

use crate::side::{Initiator, Side};
use crate::ws::close::code;

/// Why a connection ended. The first one decided is the one reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// A peer sent a close frame and it was passed on to its partner.
    Closed { by: Side, code: u16 },
    /// A peer's socket ended or failed without a close frame.
    Vanished(Side),
    /// A peer broke a rule: framing, UTF-8 or JSON, size, rate, slow
    /// consumer, an expired token. It gets `code`; its partner is told.
    Violation {
        by: Side,
        code: u16,
        reason: &'static str,
    },
    /// A peer stopped answering the gateway's heartbeats.
    HeartbeatTimeout(Side),
    /// Graceful shutdown of the gateway.
    Shutdown,
    /// The backend was drained by the admin API or removed by a reload.
    Drained,
    /// The gateway answered the 101 itself and then refused the client
    /// (`reject_with = "close"`, first-message auth, no backend after it).
    Refused(Refusal),
    /// Closed by a cluster command (disconnect by client ID, or the
    /// per-client cap): `code` and the command's reason to the client,
    /// 1001 to the backend.
    Disconnected { code: u16 },
    /// Both sockets failed before anything else ended the connection.
    Aborted,
}

/// Refusals after a 101 the gateway sent itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Bad or missing credentials (handshake time or first message).
    AuthFailed,
    /// No first-message token within `first_message_timeout`.
    AuthTimeout,
    /// The token was good but no backend could be reached.
    NoBackend,
}

/// What the gateway does toward one peer when a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toward {
    /// Nothing: it has (or gets) its partner's close frame.
    Nothing,
    /// Send this close frame (at the next frame boundary).
    Close(u16, &'static str),
    /// The peer is gone: write nothing more to it, read nothing more.
    Drop,
}

impl Ending {
    /// The close frame toward `peer`.
    pub fn toward(&self, peer: Side) -> Toward {
        match *self {
            Ending::Closed { .. } | Ending::Aborted => Toward::Nothing,
            Ending::Vanished(side) | Ending::HeartbeatTimeout(side) if side == peer => Toward::Drop,
            Ending::Vanished(side) => Toward::Close(
                partner_code(side),
                match side {
                    Side::Client => "client went away",
                    Side::Backend => "backend went away",
                },
            ),
            Ending::HeartbeatTimeout(_) => {
                Toward::Close(partner_code(peer.partner()), self.reason())
            }
            Ending::Violation { by, code, reason } if by == peer => Toward::Close(code, reason),
            // Too big either way: both sides get 1009. A client's policy
            // reads 1009 as "do not retry" (1014 would make it reconnect
            // into the same oversized message), and a backend learns that
            // its client was cut off for size, not that it went away.
            Ending::Violation {
                code: code::MESSAGE_TOO_BIG,
                reason,
                ..
            } => Toward::Close(code::MESSAGE_TOO_BIG, reason),
            Ending::Violation { by, code, reason } => Toward::Close(
                partner_code(by),
                match (by, code) {
                    (Side::Backend, code::PROTOCOL_ERROR) => "backend protocol error",
                    _ => reason,
                },
            ),
            Ending::Shutdown => Toward::Close(code::GOING_AWAY, self.reason()),
            Ending::Disconnected { code } => match peer {
                // The command's own reason replaces this one (see relay::push).
                Side::Client => Toward::Close(code, self.reason()),
                Side::Backend => {
                    Toward::Close(code::GOING_AWAY, "client disconnected by the gateway")
                }
            },
            Ending::Drained => match peer {
                Side::Client => Toward::Close(code::SERVICE_RESTART, self.reason()),
                Side::Backend => Toward::Close(code::GOING_AWAY, self.reason()),
            },
            Ending::Refused(_) => match peer {
                Side::Client => Toward::Close(self.code(), self.reason()),
                Side::Backend => Toward::Nothing,
            },
        }
    }

    /// Who ended the connection (the `initiator` label).
    pub fn initiator(&self) -> Initiator {
        match *self {
            Ending::Closed { by, .. } => by.into(),
            Ending::Vanished(side) => side.into(),
            _ => Initiator::Gateway,
        }
    }

    /// The close code recorded for this ending (the `code` label). 1006
    /// when no close frame was involved (RFC 6455 section 7.1.5).
    pub fn code(&self) -> u16 {
        match *self {
            Ending::Closed { code, .. }
            | Ending::Violation { code, .. }
            | Ending::Disconnected { code } => code,
            Ending::Vanished(_) | Ending::Aborted => code::ABNORMAL,
            Ending::HeartbeatTimeout(side) => partner_code(side),
            Ending::Shutdown => code::GOING_AWAY,
            Ending::Drained => code::SERVICE_RESTART,
            Ending::Refused(Refusal::AuthFailed) => code::AUTH_FAILED,
            Ending::Refused(Refusal::AuthTimeout) => code::AUTH_TIMEOUT,
            Ending::Refused(Refusal::NoBackend) => code::BAD_GATEWAY,
        }
    }

    /// The reason recorded for this ending (access log; the close frames
    /// the gateway sends carry it too). Empty when a peer closed: the
    /// peer's own reason passed through untouched and is not kept.
    pub fn reason(&self) -> &'static str {
        match *self {
            Ending::Closed { .. } | Ending::Aborted => "",
            Ending::Vanished(_) => "connection dropped",
            Ending::Violation { reason, .. } => reason,
            Ending::HeartbeatTimeout(Side::Client) => "client heartbeat timeout",
            Ending::HeartbeatTimeout(Side::Backend) => "backend heartbeat timeout",
            Ending::Shutdown => "gateway shutting down",
            Ending::Disconnected { .. } => "closed by a cluster command",
            Ending::Drained => "backend removed from service",
            Ending::Refused(Refusal::AuthFailed) => "authentication failed",
            Ending::Refused(Refusal::AuthTimeout) => "no token in time",
            Ending::Refused(Refusal::NoBackend) => "no backend available",
        }
    }

    /// The gateway itself decided to end the connection: what the peers
    /// still send is read and dropped, only close frames go out.
    pub fn gateway_decided(&self) -> bool {
        !matches!(self, Ending::Closed { .. })
    }
}

/// The code the partner of a failed `side` gets: a backend is told the
/// client went away (1001); a client is told its backend failed (1014), so
/// it reconnects rather than giving up.
fn partner_code(failed: Side) -> u16 {
    match failed {
        Side::Client => code::GOING_AWAY,
        Side::Backend => code::BAD_GATEWAY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_ending_maps_to_spec_codes() {
        let cases: &[(Ending, Toward, Toward, Initiator, u16)] = &[
            (
                Ending::Vanished(Side::Backend),
                Toward::Close(1014, "backend went away"),
                Toward::Drop,
                Initiator::Backend,
                1006,
            ),
            (
                Ending::Vanished(Side::Client),
                Toward::Drop,
                Toward::Close(1001, "client went away"),
                Initiator::Client,
                1006,
            ),
            (
                Ending::HeartbeatTimeout(Side::Client),
                Toward::Drop,
                Toward::Close(1001, "client heartbeat timeout"),
                Initiator::Gateway,
                1001,
            ),
            (
                Ending::HeartbeatTimeout(Side::Backend),
                Toward::Close(1014, "backend heartbeat timeout"),
                Toward::Drop,
                Initiator::Gateway,
                1014,
            ),
            (
                Ending::Violation {
                    by: Side::Backend,
                    code: 1002,
                    reason: "reserved opcode",
                },
                Toward::Close(1014, "backend protocol error"),
                Toward::Close(1002, "reserved opcode"),
                Initiator::Gateway,
                1002,
            ),
            (
                Ending::Violation {
                    by: Side::Client,
                    code: 1009,
                    reason: "message too big",
                },
                Toward::Close(1009, "message too big"),
                Toward::Close(1009, "message too big"),
                Initiator::Gateway,
                1009,
            ),
            (
                Ending::Violation {
                    by: Side::Backend,
                    code: 1009,
                    reason: "message too big",
                },
                Toward::Close(1009, "message too big"),
                Toward::Close(1009, "message too big"),
                Initiator::Gateway,
                1009,
            ),
            (
                Ending::Violation {
                    by: Side::Client,
                    code: 1007,
                    reason: "invalid UTF-8 in a text message",
                },
                Toward::Close(1007, "invalid UTF-8 in a text message"),
                Toward::Close(1001, "invalid UTF-8 in a text message"),
                Initiator::Gateway,
                1007,
            ),
            (
                Ending::Shutdown,
                Toward::Close(1001, "gateway shutting down"),
                Toward::Close(1001, "gateway shutting down"),
                Initiator::Gateway,
                1001,
            ),
            (
                Ending::Drained,
                Toward::Close(1012, "backend removed from service"),
                Toward::Close(1001, "backend removed from service"),
                Initiator::Gateway,
                1012,
            ),
            (
                Ending::Refused(Refusal::AuthTimeout),
                Toward::Close(4008, "no token in time"),
                Toward::Nothing,
                Initiator::Gateway,
                4008,
            ),
            (
                Ending::Closed {
                    by: Side::Client,
                    code: 4000,
                },
                Toward::Nothing,
                Toward::Nothing,
                Initiator::Client,
                4000,
            ),
        ];
        for (e, client, backend, initiator, code) in cases {
            assert_eq!(e.toward(Side::Client), *client, "{e:?} toward client");
            assert_eq!(e.toward(Side::Backend), *backend, "{e:?} toward backend");
            assert_eq!(e.initiator(), *initiator, "{e:?}");
            assert_eq!(e.code(), *code, "{e:?}");
        }
    }
}
