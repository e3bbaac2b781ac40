//! Admission of an upgrade request: the RFC 6455 handshake checks, the
//! Origin allow-list and client ID extraction. Request in, `Ok` or a
//! [`Reject`] out; no I/O.

use std::net::IpAddr;

use base64::Engine;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Version};
use sha1::{Digest, Sha1};

use crate::config::Source;
use crate::error::Reject;

/// The GUID of RFC 6455 section 1.3, appended to the key for the accept hash.
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Checks that `req` is a valid WebSocket opening handshake
/// (RFC 6455 section 4.2.1).
pub fn check_upgrade<B>(req: &Request<B>) -> Result<(), Reject> {
    let h = req.headers();
    let upgrade_ws = has_token(h, header::UPGRADE, "websocket");
    if !upgrade_ws && !h.contains_key(header::SEC_WEBSOCKET_KEY) {
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

/// `Sec-WebSocket-Accept` for a key (RFC 6455 section 4.2.2).
pub fn accept_key(key: &[u8]) -> HeaderValue {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(WS_GUID);
    let v = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    HeaderValue::from_str(&v).expect("base64 is a valid header value")
}

/// One allow-list entry: scheme, host (or `*.suffix`) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OriginEntry {
    scheme: String,
    host: Host,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Exact(String),
    /// `*.example.com`: any subdomain at any depth, stored as `.example.com`.
    Suffix(String),
}

/// The Origin allow-list of `[server] allowed_origins` / `require_origin`.
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    any: bool,
    entries: Vec<OriginEntry>,
    require: bool,
}

/// Splits `scheme://host[:port]` into its parts, lowercased, with the
/// scheme's default port filled in.
fn parse_origin(s: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = s.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "http" | "ws" => 80,
        "https" | "wss" => 443,
        _ => return None,
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') || rest.is_empty() {
        return None;
    }
    let (host, port) = if let Some(stripped) = rest.strip_prefix('[') {
        let (h, after) = stripped.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default,
            None => return None,
        };
        (format!("[{h}]"), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (rest.to_string(), default),
        }
    };
    Some((scheme, host.to_ascii_lowercase(), port))
}

impl OriginPolicy {
    pub fn new(allowed: &[String], require: bool) -> OriginPolicy {
        let any = allowed.iter().any(|o| o == "*");
        let entries = allowed
            .iter()
            .filter(|o| *o != "*")
            .filter_map(|o| {
                let (scheme, host, port) = parse_origin(o)?;
                let host = match host.strip_prefix("*.") {
                    Some(suffix) => Host::Suffix(format!(".{suffix}")),
                    None => Host::Exact(host),
                };
                Some(OriginEntry { scheme, host, port })
            })
            .collect();
        OriginPolicy {
            any,
            entries,
            require,
        }
    }

    /// Checks the request's `Origin` header.
    pub fn check(&self, origin: Option<&HeaderValue>) -> Result<(), Reject> {
        let Some(origin) = origin else {
            return if self.require {
                Err(Reject::OriginForbidden)
            } else {
                Ok(())
            };
        };
        if self.any {
            return Ok(());
        }
        let parsed = origin.to_str().ok().and_then(parse_origin);
        let Some((scheme, host, port)) = parsed else {
            return Err(Reject::OriginForbidden);
        };
        let ok = self.entries.iter().any(|e| {
            e.scheme == scheme
                && e.port == port
                && match &e.host {
                    Host::Exact(h) => *h == host,
                    Host::Suffix(s) => host.ends_with(s.as_str()) && host.len() > s.len(),
                }
        });
        if ok {
            Ok(())
        } else {
            Err(Reject::OriginForbidden)
        }
    }
}

/// Reads a value from the first of `sources` present in the request.
pub fn find_value<B>(req: &Request<B>, sources: &[Source]) -> Option<(Source, String)> {
    sources.iter().find_map(|s| {
        let v = match s {
            Source::Query(name) => query_param(req.uri().query().unwrap_or(""), name),
            Source::Header(name) => req
                .headers()
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            Source::Cookie(name) => cookie(req.headers(), name),
            Source::FirstMessage => None,
        }?;
        (!v.is_empty()).then(|| (s.clone(), v))
    })
}

/// The routing client ID: the first configured source present, else the
/// peer's IP address.
pub fn client_id<B>(req: &Request<B>, sources: &[Source], peer: IpAddr) -> String {
    find_value(req, sources)
        .map(|(_, v)| v)
        .unwrap_or_else(|| peer.to_string())
}

/// A query parameter's value, percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

/// The query string without parameter `name` (for `strip_token`).
pub fn strip_query_param(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter(|pair| {
            let k = pair.split_once('=').map_or(*pair, |(k, _)| k);
            !pair.is_empty() && percent_decode(k) != name
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn cookie(h: &HeaderMap, name: &str) -> Option<String> {
    h.get_all(header::COOKIE).iter().find_map(|v| {
        v.to_str().ok()?.split(';').find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"').to_string())
        })
    })
}

/// `%XX` and `+` decoding for query strings. Hand-written: eight lines do
/// not justify a dependency.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn origin_matching() {
        let p = OriginPolicy::new(
            &[
                "https://app.example.com".into(),
                "https://*.example.org".into(),
                "http://localhost:3000".into(),
            ],
            true,
        );
        let ok = |o: &str| p.check(Some(&HeaderValue::from_str(o).unwrap())).is_ok();
        assert!(ok("https://app.example.com"));
        assert!(ok("https://app.example.com:443"));
        assert!(ok("HTTPS://APP.EXAMPLE.COM"));
        assert!(!ok("http://app.example.com"));
        assert!(!ok("https://app.example.com:8443"));
        assert!(!ok("https://evil.com"));
        assert!(!ok("https://app.example.com.evil.com"));
        assert!(ok("https://a.example.org"));
        assert!(ok("https://a.b.example.org"));
        assert!(!ok("https://example.org"));
        assert!(!ok("https://xexample.org"));
        assert!(ok("http://localhost:3000"));
        assert!(!ok("null"));
        assert!(p.check(None).is_err());
        let any = OriginPolicy::new(&["*".into()], false);
        assert!(any.check(None).is_ok());
        assert!(
            any.check(Some(&HeaderValue::from_static("https://x.y")))
                .is_ok()
        );
    }

    #[test]
    fn client_id_sources_in_order() {
        let sources = vec![
            Source::Header("x-client-id".into()),
            Source::Query("client_id".into()),
            Source::Cookie("cid".into()),
        ];
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(client_id(&req(&[]), &sources, ip), "abc");
        assert_eq!(
            client_id(&req(&[("x-client-id", "hdr")]), &sources, ip),
            "hdr"
        );
        let r = Request::builder()
            .uri("/")
            .header("cookie", "a=1; cid=ck")
            .body(())
            .unwrap();
        assert_eq!(client_id(&r, &sources, ip), "ck");
        let r = Request::builder().uri("/").body(()).unwrap();
        assert_eq!(client_id(&r, &sources, ip), "10.1.2.3");
    }

    #[test]
    fn query_helpers() {
        assert_eq!(
            query_param("a=1&token=x%2By&b=2", "token").as_deref(),
            Some("x+y")
        );
        assert_eq!(
            strip_query_param("a=1&token=secret&b=2", "token"),
            "a=1&b=2"
        );
        assert_eq!(strip_query_param("token=secret", "token"), "");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
