//! The RFC 6455 opening-handshake checks on the client's request (section
//! 4.2.1): request in, `Ok` or the [`Reject`] that answers it. Pure.

use base64::Engine;
use hyper::header::{self, HeaderMap};
use hyper::{Method, Request, Version};

use crate::conn::reject::Reject;

/// Whether `req` asks for a WebSocket upgrade (valid or not); anything
/// else is a plain HTTP request, proxied as such. An upgrade to another
/// protocol (h2c) is plain HTTP too: its `Upgrade` header is not forwarded.
pub fn wants_upgrade<B>(req: &Request<B>) -> bool {
    let h = req.headers();
    has_token(h, header::UPGRADE, "websocket") || h.contains_key(header::SEC_WEBSOCKET_KEY)
}

/// Checks that `req` is a valid WebSocket opening handshake
/// (RFC 6455 section 4.2.1).
pub fn check_upgrade<B>(req: &Request<B>) -> Result<(), Reject> {
    let h = req.headers();
    let upgrade_ws = has_token(h, header::UPGRADE, "websocket");
    if !wants_upgrade(req) {
        // A plain HTTP request (or an upgrade to something else) on the
        // WebSocket listener.
        return Err(Reject::UpgradeRequired);
    }
    if req.method() != Method::GET {
        return Err(Reject::BadRequest("method must be GET"));
    }
    if req.version() != Version::HTTP_11 {
        return Err(Reject::BadRequest("HTTP/1.1 required"));
    }
    if !upgrade_ws {
        return Err(Reject::BadRequest("missing Upgrade: websocket"));
    }
    if !has_token(h, header::CONNECTION, "upgrade") {
        return Err(Reject::BadRequest("missing Connection: Upgrade"));
    }
    if !h.contains_key(header::HOST) {
        return Err(Reject::BadRequest("missing Host"));
    }
    let key = h
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(Reject::BadRequest("missing Sec-WebSocket-Key"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key.as_bytes())
        .map_err(|_| Reject::BadRequest("Sec-WebSocket-Key is not base64"))?;
    if decoded.len() != 16 {
        return Err(Reject::BadRequest("Sec-WebSocket-Key must encode 16 bytes"));
    }
    match h.get(header::SEC_WEBSOCKET_VERSION) {
        None => Err(Reject::BadRequest("missing Sec-WebSocket-Version")),
        Some(v) if v.as_bytes() == b"13" => Ok(()),
        // Section 4.4: answer 426 with the versions we speak.
        Some(_) => Err(Reject::UnsupportedVersion),
    }
}

/// Whether a comma-separated header contains `token` (case-insensitive).
fn has_token(h: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::headers::accept_key;

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri("/chat?client_id=abc&x=1");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    const GOOD: &[(&str, &str)] = &[
        ("host", "gw"),
        ("upgrade", "websocket"),
        ("connection", "keep-alive, Upgrade"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ];

    #[test]
    fn valid_upgrade_passes_and_accept_matches_rfc() {
        check_upgrade(&req(GOOD)).unwrap();
        // The example of RFC 6455 section 1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn plain_http_is_426_and_broken_upgrades_400() {
        assert!(matches!(
            check_upgrade(&req(&[("host", "gw")])),
            Err(Reject::UpgradeRequired)
        ));
        let mut h = GOOD.to_vec();
        h[3] = ("sec-websocket-key", "short");
        assert!(matches!(
            check_upgrade(&req(&h)),
            Err(Reject::BadRequest(_))
        ));
        let mut h = GOOD.to_vec();
        h[4] = ("sec-websocket-version", "8");
        assert!(matches!(
            check_upgrade(&req(&h)),
            Err(Reject::UnsupportedVersion)
        ));
        let h: Vec<_> = GOOD
            .iter()
            .filter(|(k, _)| *k != "connection")
            .cloned()
            .collect();
        assert!(matches!(
            check_upgrade(&req(&h)),
            Err(Reject::BadRequest(_))
        ));
    }
}
