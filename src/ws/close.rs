//! Close codes (RFC 6455 section 7.4) and close-frame payloads
//! (section 5.5.1). Pure. Which code the gateway sends when is decided in
//! one place, `relay::ending`; this file only names the numbers.

/// Close codes the gateway sends or must recognise (RFC 6455 section 7.4.1,
/// SPEC.md).
pub mod code {
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
}

/// Whether a code may appear in a close frame on the wire
/// (RFC 6455 section 7.4: 1000-1003, 1007-1011 and the IANA-registered
/// 1012-1014; 3000-4999 for libraries and applications).
pub fn valid_on_wire(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// What a close frame's payload says (RFC 6455 section 5.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosePayload {
    /// Empty payload: the code reads as 1005 (no status).
    Empty,
    Code(u16),
    /// A 1-byte payload, a code that must not be on the wire, or a reason
    /// that is not UTF-8; the `u16` is the close code to answer with.
    Invalid(u16),
}

/// Checks an (unmasked) close payload.
pub fn parse_close(payload: &[u8]) -> ClosePayload {
    match payload.len() {
        0 => ClosePayload::Empty,
        1 => ClosePayload::Invalid(code::PROTOCOL_ERROR),
        _ => {
            let c = u16::from_be_bytes([payload[0], payload[1]]);
            if !valid_on_wire(c) {
                ClosePayload::Invalid(code::PROTOCOL_ERROR)
            } else if std::str::from_utf8(&payload[2..]).is_err() {
                ClosePayload::Invalid(code::INVALID_PAYLOAD)
            } else {
                ClosePayload::Code(c)
            }
        }
    }
}
