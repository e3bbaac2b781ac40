//! Rules that span keys, or that serde cannot see one field at a time: one
//! function per section, each naming the key it blames. `Config::parse`
//! turns an [`Invalid`] into a `ConfigError` with the key's line.

use std::collections::HashSet;

use crate::config::schema::DEFAULT_POOL;
use crate::config::schema::{
    AdminConfig, AuthConfig, AuthMode, BackendConfig, Config, HealthConfig, HeartbeatConfig,
    LimitsConfig, ResumeConfig, RoutingConfig, ServerConfig,
};
use crate::config::types::Source;

/// The smallest head limit hyper can enforce (its smallest read buffer).
pub const MIN_REQUEST_HEAD_BYTES: usize = 8192;
/// Largest control-frame payload (RFC 6455 section 5.5): `app_ping` is
/// compared to single frames of at most this.
const MAX_APP_PING: usize = 125;
/// `app_pong` is written as one unfragmented text frame with the short
/// (7-bit) length form; longer would need the extended length encoding the
/// gateway's pre-built control-size frames do not have.
const MAX_APP_PONG: usize = 125;

/// Retries past the number of backends try nothing new; a bound keeps a
/// typo (or 4294967295) from sizing anything by it.
const MAX_CONNECT_RETRIES: u32 = 100;

/// Whether `p` can be sent as (the start of) an HTTP/1.1 request target:
/// visible ASCII only (no space, control or non-ASCII byte, which would
/// make the request line unparseable or fail `http::Uri`), no fragment,
/// and what `http` accepts as a path and query. `query` allows a `?`.
pub(super) fn is_request_target(p: &str, query: bool) -> bool {
    p.bytes().all(|b| b.is_ascii_graphic())
        && !p.contains('#')
        && (query || !p.contains('?'))
        && (p.is_empty() || hyper::http::uri::PathAndQuery::try_from(p).is_ok())
}

/// A rule broken by the value of `section.key` (of the `index`th entry of
/// an array of tables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// "" for a top-level key.
    pub section: &'static str,
    pub index: Option<usize>,
    pub key: &'static str,
    pub message: String,
}

fn invalid(section: &'static str, key: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        section,
        index: None,
        key,
        message: message.into(),
    }
}

type Check = Result<(), Invalid>;

/// Every section; the first broken rule is reported.
pub fn config(c: &Config) -> Check {
    backends(&c.backends)?;
    routes(c)?;
    server(&c.server)?;
    routing(&c.routing)?;
    health(&c.health)?;
    heartbeat(&c.heartbeat)?;
    limits(&c.limits)?;
    resume(&c.resume)?;
    auth(&c.auth)?;
    admin(&c.admin)?;
    crate::config::cluster::validate(&c.cluster)
}

fn admin(a: &AdminConfig) -> Check {
    if !a.token.is_empty() && !a.token_file.is_empty() {
        return Err(invalid(
            "admin",
            "token_file",
            "set token or token_file, not both",
        ));
    }
    if !a.token.is_empty() && (a.token.len() < 16 || !a.token.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(invalid(
            "admin",
            "token",
            "must be at least 16 visible ASCII characters (e.g. `openssl rand -hex 32`)",
        ));
    }
    if a.protect_metrics && a.token.is_empty() && a.token_file.is_empty() {
        return Err(invalid(
            "admin",
            "protect_metrics",
            "needs token or token_file",
        ));
    }
    Ok(())
}

fn resume(r: &ResumeConfig) -> Check {
    if r.enabled && r.window.is_zero() {
        return Err(invalid("resume", "window", "must be more than 0s"));
    }
    if r.max_buffered_bytes < 1024 {
        return Err(invalid(
            "resume",
            "max_buffered_bytes",
            "must be at least 1024",
        ));
    }
    Ok(())
}

fn server(s: &ServerConfig) -> Check {
    for o in &s.allowed_origins {
        if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) {
            return Err(invalid(
                "server",
                "allowed_origins",
                format!("origin {o:?} must be \"*\" or start with http:// or https://"),
            ));
        }
        // An Origin header is scheme://host[:port] and nothing else: an
        // entry with a path, query or fragment could never match.
        if let Some((_, rest)) = o.split_once("://") {
            let rest = rest.trim_end_matches('/');
            if rest.is_empty()
                || rest.contains(['/', '?', '#'])
                || !rest.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(invalid(
                    "server",
                    "allowed_origins",
                    format!(
                        "origin {o:?} must be scheme://host[:port] with no path (origins have none)"
                    ),
                ));
            }
        }
    }
    if s.max_connections == 0 {
        return Err(invalid("server", "max_connections", "must be at least 1"));
    }
    if s.handshake_timeout.is_zero() {
        return Err(invalid(
            "server",
            "handshake_timeout",
            "must be greater than 0 (0 would refuse every handshake)",
        ));
    }
    if s.max_request_head_bytes < MIN_REQUEST_HEAD_BYTES {
        return Err(invalid(
            "server",
            "max_request_head_bytes",
            "must be at least 8192 (hyper's smallest read buffer)",
        ));
    }
    Ok(())
}

fn backends(list: &[BackendConfig]) -> Check {
    if list.is_empty() {
        return Err(invalid(
            "",
            "backends",
            "at least one [[backends]] entry is required",
        ));
    }
    let mut names = HashSet::new();
    for (i, b) in list.iter().enumerate() {
        let at = |key: &'static str, message: String| Invalid {
            section: "backends",
            index: Some(i),
            key,
            message,
        };
        if b.name.is_empty()
            || !b
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(at(
                "name",
                format!(
                    "backend name {:?} must be non-empty and use only letters, digits, '-', '_' and '.'",
                    b.name
                ),
            ));
        }
        if !names.insert(b.name.as_str()) {
            return Err(at(
                "name",
                format!("backend name {:?} is used twice", b.name),
            ));
        }
        if b.weight == 0 || b.weight > 1000 {
            return Err(at(
                "weight",
                format!("weight {} must be between 1 and 1000", b.weight),
            ));
        }
        if (!b.ca.is_empty() || b.tls_insecure_skip_verify) && !b.url.tls {
            let key = if b.ca.is_empty() {
                "tls_insecure_skip_verify"
            } else {
                "ca"
            };
            return Err(at(key, "only applies to a wss:// backend".into()));
        }
    }
    Ok(())
}

/// A label, pool or host name: letters, digits and `-_.`.
fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn routes(c: &Config) -> Check {
    let mut seen: Vec<(String, &str)> = Vec::new();
    for (i, r) in c.routes.iter().enumerate() {
        let at = |key: &'static str, message: String| Invalid {
            section: "routes",
            index: Some(i),
            key,
            message,
        };
        if !plain_name(&r.pool) || !c.backends.iter().any(|b| b.pool == r.pool) {
            return Err(at(
                "pool",
                format!("no [[backends]] entry has pool = {:?}", r.pool),
            ));
        }
        if !r.name.is_empty() && !plain_name(&r.name) {
            return Err(at(
                "name",
                format!(
                    "route name {:?}: letters, digits, '-', '_' and '.' only",
                    r.name
                ),
            ));
        }
        let bare = r.host.strip_prefix("*.").unwrap_or(&r.host);
        if !r.host.is_empty()
            && (!plain_name(bare) || bare.contains(':') || r.host != r.host.to_ascii_lowercase())
        {
            return Err(at(
                "host",
                format!(
                    "host {:?} must be \"\", a lower-case name, or \"*.\" and a name (no port)",
                    r.host
                ),
            ));
        }
        if !r.path.starts_with('/') || r.path.contains(['?', '#', '*']) {
            return Err(at(
                "path",
                format!(
                    "path {:?} must be a prefix starting with '/' (no '?', '#' or '*')",
                    r.path
                ),
            ));
        }
        // "/api" and "/api/" are the same prefix.
        let path = if r.path.len() > 1 {
            r.path.trim_end_matches('/')
        } else {
            "/"
        };
        let key = (r.host.clone(), path);
        if let Some(j) = seen.iter().position(|k| *k == key) {
            return Err(at(
                "path",
                format!(
                    "same host and path as route {} ([[routes]] entry {}): one of them is never used",
                    j + 1,
                    j + 1
                ),
            ));
        }
        seen.push(key);
    }
    // An empty default pool is not an error: requests no route matches get 404.
    for (i, b) in c.backends.iter().enumerate() {
        if !plain_name(&b.pool) {
            return Err(Invalid {
                section: "backends",
                index: Some(i),
                key: "pool",
                message: format!(
                    "pool name {:?}: letters, digits, '-', '_' and '.' only",
                    b.pool
                ),
            });
        }
        if b.pool != DEFAULT_POOL && !c.routes.iter().any(|r| r.pool == b.pool) {
            return Err(Invalid {
                section: "backends",
                index: Some(i),
                key: "pool",
                message: format!("no [[routes]] entry sends requests to pool {:?}", b.pool),
            });
        }
    }
    Ok(())
}

pub(super) fn routing(r: &RoutingConfig) -> Check {
    if r.client_id.contains(&Source::FirstMessage) {
        return Err(invalid(
            "routing",
            "client_id",
            "\"first_message\" is only a token source ([auth] token_from)",
        ));
    }
    if r.vnodes == 0 || r.vnodes > 10_000 {
        return Err(invalid(
            "routing",
            "vnodes",
            format!("{} must be between 1 and 10000", r.vnodes),
        ));
    }
    if !(r.load_factor == 0.0 || (r.load_factor > 1.0 && r.load_factor.is_finite())) {
        return Err(invalid(
            "routing",
            "load_factor",
            format!(
                "{} must be 0 (off) or greater than 1 (e.g. 1.25)",
                r.load_factor
            ),
        ));
    }
    if r.connect_retries > MAX_CONNECT_RETRIES {
        return Err(invalid(
            "routing",
            "connect_retries",
            format!(
                "{} must be at most {MAX_CONNECT_RETRIES} (each retry tries one more backend)",
                r.connect_retries
            ),
        ));
    }
    if r.connect_timeout.is_zero() {
        return Err(invalid(
            "routing",
            "connect_timeout",
            "must be greater than 0",
        ));
    }
    if r.response_timeout.is_zero() {
        return Err(invalid(
            "routing",
            "response_timeout",
            "must be greater than 0",
        ));
    }
    if !r
        .affinity_cookie
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
    {
        return Err(invalid(
            "routing",
            "affinity_cookie",
            "letters, digits, '_' and '-' only",
        ));
    }
    Ok(())
}

pub(super) fn health(h: &HealthConfig) -> Check {
    if h.fall == 0 || h.rise == 0 {
        let key = if h.fall == 0 { "fall" } else { "rise" };
        return Err(invalid("health", key, "must be at least 1"));
    }
    if h.interval.is_zero() || h.timeout.is_zero() {
        let key = if h.interval.is_zero() {
            "interval"
        } else {
            "timeout"
        };
        return Err(invalid("health", key, "must be greater than 0"));
    }
    for (key, p) in [("http_path", &h.http_path), ("ws_path", &h.ws_path)] {
        if !p.is_empty() && !p.starts_with('/') {
            return Err(invalid(
                "health",
                key,
                format!("{p:?} must be empty or start with '/'"),
            ));
        }
        if !is_request_target(p, true) {
            return Err(invalid(
                "health",
                key,
                format!(
                    "{p:?} is not a valid request path: use visible ASCII only (percent-encode spaces and non-ASCII), no '#'"
                ),
            ));
        }
    }
    if !h.ws_subprotocol.is_empty()
        && hyper::header::HeaderValue::from_str(&h.ws_subprotocol).is_err()
    {
        return Err(invalid(
            "health",
            "ws_subprotocol",
            "must be a valid header value (visible ASCII)",
        ));
    }
    if !(0.0..=1.0).contains(&h.panic_threshold) {
        return Err(invalid(
            "health",
            "panic_threshold",
            format!(
                "{} must be between 0 (off) and 1 (e.g. 0.5)",
                h.panic_threshold
            ),
        ));
    }
    if !h.ws_expect.is_empty() && h.ws_send.is_empty() {
        return Err(invalid(
            "health",
            "ws_expect",
            "needs ws_send (the message whose reply is checked)",
        ));
    }
    Ok(())
}

fn heartbeat(hb: &HeartbeatConfig) -> Check {
    for (key, iv, to) in [
        ("client_timeout", hb.client_interval, hb.client_timeout),
        ("backend_timeout", hb.backend_interval, hb.backend_timeout),
    ] {
        if !iv.is_zero() && to.is_zero() {
            return Err(invalid(
                "heartbeat",
                key,
                "must be greater than 0 while its interval is on",
            ));
        }
    }
    if hb.app_ping.is_empty() != hb.app_pong.is_empty() {
        let key = if hb.app_ping.is_empty() {
            "app_ping"
        } else {
            "app_pong"
        };
        return Err(invalid(
            "heartbeat",
            key,
            "app_ping and app_pong must be set together",
        ));
    }
    if hb.app_ping.len() > MAX_APP_PING {
        return Err(invalid(
            "heartbeat",
            "app_ping",
            "must be at most 125 bytes",
        ));
    }
    if hb.app_pong.len() > MAX_APP_PONG {
        return Err(invalid(
            "heartbeat",
            "app_pong",
            "must be at most 125 bytes (it is sent as one short frame)",
        ));
    }
    Ok(())
}

pub(super) fn limits(l: &LimitsConfig) -> Check {
    if l.max_message_bytes == 0 {
        return Err(invalid("limits", "max_message_bytes", "must be at least 1"));
    }
    if l.max_buffered_bytes < 1024 {
        return Err(invalid(
            "limits",
            "max_buffered_bytes",
            "must be at least 1024",
        ));
    }
    if l.slow_consumer_timeout.is_zero() {
        return Err(invalid(
            "limits",
            "slow_consumer_timeout",
            "must be greater than 0 (0 would close every connection that ever buffers)",
        ));
    }
    if l.burst > 0 && l.messages_per_sec == 0 {
        return Err(invalid("limits", "burst", "needs messages_per_sec"));
    }
    Ok(())
}

fn auth(a: &AuthConfig) -> Check {
    match a.mode {
        AuthMode::None => {}
        AuthMode::Jwt => {
            if a.jwt_secret.is_empty() == a.jwt_public_key.is_empty() {
                return Err(invalid(
                    "auth",
                    "jwt_secret",
                    "mode \"jwt\" needs exactly one of jwt_secret (HS256) or jwt_public_key (RS256/ES256)",
                ));
            }
            if a.token_from.is_empty() {
                return Err(invalid("auth", "token_from", "needs at least one source"));
            }
        }
        AuthMode::Forward => {
            if !a.forward_url.starts_with("http://") {
                return Err(invalid(
                    "auth",
                    "forward_url",
                    "mode \"forward\" needs an http:// URL (e.g. \"http://127.0.0.1:8000/auth\")",
                ));
            }
        }
    }
    for (key, d) in [
        ("forward_timeout", a.forward_timeout),
        ("first_message_timeout", a.first_message_timeout),
    ] {
        if d.is_zero() {
            return Err(invalid(
                "auth",
                key,
                "must be greater than 0 (0 would refuse every client)",
            ));
        }
    }
    if a.token_from.contains(&Source::FirstMessage) && a.token_from.len() > 1 {
        return Err(invalid(
            "auth",
            "token_from",
            "\"first_message\" cannot be combined with other sources",
        ));
    }
    if a.token_from.contains(&Source::FirstMessage) && a.mode == AuthMode::Forward {
        return Err(invalid(
            "auth",
            "token_from",
            "\"first_message\" needs mode \"jwt\"",
        ));
    }
    Ok(())
}
