//! The Origin allow-list of `[server] allowed_origins` / `require_origin`:
//! the defence against cross-site WebSocket hijacking (a page on another
//! site opening a socket with the user's cookies). Pure.

use hyper::header::HeaderValue;

use crate::auth::AuthError;

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
    pub fn check(&self, origin: Option<&HeaderValue>) -> Result<(), AuthError> {
        let Some(origin) = origin else {
            return if self.require {
                Err(AuthError::OriginForbidden)
            } else {
                Ok(())
            };
        };
        if self.any {
            return Ok(());
        }
        let parsed = origin.to_str().ok().and_then(parse_origin);
        let Some((scheme, host, port)) = parsed else {
            return Err(AuthError::OriginForbidden);
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
            Err(AuthError::OriginForbidden)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
