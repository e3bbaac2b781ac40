//! The headers of an upgrade as the gateway passes it on: the request to
//! the backend (end-to-end headers as sent, every `Sec-WebSocket-*` so
//! subprotocols and extensions are agreed end to end, `X-Forwarded-*` and
//! `X-Client-Id` set by the gateway) and the 101 toward the client.
//!
//! `Sec-WebSocket-Extensions` is the one header the gateway rewrites, per
//! `[limits] permessage_deflate`; that rewriting lives in `extensions`.

use std::net::IpAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::auth::Admitted;
use crate::config::HostHeader;
use crate::request;

/// `Sec-WebSocket-Accept` for a key (RFC 6455 section 4.2.2), computed by
/// tungstenite.
pub fn accept_key(key: &[u8]) -> HeaderValue {
    HeaderValue::from_str(&derive_accept_key(key)).expect("base64 is a valid header value")
}

/// The client's path and query, minus a stripped token.
pub fn upstream_path<B>(req: &Request<B>, admitted: &Admitted) -> String {
    let path = req.uri().path();
    match (req.uri().query(), &admitted.strip_query) {
        (Some(q), Some(name)) => {
            let q = request::strip_query_param(q, name);
            if q.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{q}")
            }
        }
        (Some(q), None) => format!("{path}?{q}"),
        (None, _) => path.to_string(),
    }
}

/// The `Host` an upgrade carries to the backend (`[routing]
/// host_header`): the backend URL's `host:port` (`backend`), or the
/// client's own (`client`; the backend's when the client's is not text).
pub fn upstream_host<'a, B>(req: &'a Request<B>, backend: &'a str, mode: HostHeader) -> &'a str {
    match mode {
        HostHeader::Client => req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(backend),
        HostHeader::Auto | HostHeader::Backend => backend,
    }
}

/// Hop-by-hop headers (RFC 9110 section 7.6.1) and the ones the gateway
/// sets itself: never copied from the client (upgrades).
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "x-client-id",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// The upgrade request's headers for the backend: end-to-end headers as
/// sent (including every Sec-WebSocket-* so subprotocols and extensions are
/// negotiated end to end), plus X-Forwarded-* and X-Client-Id.
pub fn upstream_headers<B>(
    req: &Request<B>,
    peer: IpAddr,
    tls: bool,
    authority: &str,
    admitted: &Admitted,
) -> HeaderMap {
    let src = req.headers();
    // Headers the client named in Connection are hop-by-hop too.
    let named: Vec<String> = src
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .collect();
    let mut h = HeaderMap::with_capacity(src.len() + 6);
    for (name, value) in src {
        let n = name.as_str();
        if NOT_FORWARDED.contains(&n) || named.iter().any(|t| t == n) {
            continue;
        }
        if n == "x-forwarded-for" {
            continue;
        }
        h.append(name.clone(), value.clone());
    }
    h.insert(
        header::HOST,
        HeaderValue::from_str(authority).unwrap_or(HeaderValue::from_static("backend")),
    );
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    set_forwarded(&mut h, src, peer, tls);
    if let Ok(v) = HeaderValue::from_str(&admitted.client_id) {
        h.insert(HeaderName::from_static("x-client-id"), v);
    }
    for (name, value) in &admitted.extra_headers {
        h.insert(name.clone(), value.clone());
    }
    h
}

/// `X-Forwarded-For` (the client's value, if any, then the peer),
/// `X-Forwarded-Proto` and `X-Forwarded-Host`: the same for upgrades and
/// plain HTTP.
fn set_forwarded(h: &mut HeaderMap, src: &HeaderMap, peer: IpAddr, tls: bool) {
    let peer_ip = peer.to_string();
    let xff = match src.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {peer_ip}"),
        _ => peer_ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert(X_FORWARDED_FOR, v);
    }
    h.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    if let Some(host) = src.get(header::HOST) {
        h.insert(X_FORWARDED_HOST, host.clone());
    }
}

/// The 101 headers for the client: accept key, and what the backend chose.
pub fn switching_protocols<B>(
    req: &Request<B>,
    protocol: Option<HeaderValue>,
    extensions: Option<HeaderValue>,
) -> Response<Full<Bytes>> {
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .cloned()
        .unwrap_or(HeaderValue::from_static(""));
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept_key(key.as_bytes()));
    if let Some(p) = protocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    if let Some(e) = extensions {
        h.insert(header::SEC_WEBSOCKET_EXTENSIONS, e);
    }
    resp
}

/// Whether `n` is a hop-by-hop header of a plain HTTP message (RFC 9110
/// section 7.6.1), never passed on in either direction. `Trailer` is end
/// to end and kept: hyper sends only the trailer fields it names.
/// `Content-Length` is kept: it is the body's length end to end (and a
/// HEAD answer's). `Expect` too is the gateway's: hyper's server answers
/// `100-continue` itself when the body is first read (that is, once the
/// backend request streams it). Standard names compare as enum values, so
/// this costs no parsing per request.
fn is_hop_by_hop(n: &HeaderName) -> bool {
    n == header::CONNECTION
        || n == header::TE
        || n == header::TRANSFER_ENCODING
        || n == header::UPGRADE
        || n == header::EXPECT
        || n == header::PROXY_AUTHENTICATE
        || n == header::PROXY_AUTHORIZATION
        || n == KEEP_ALIVE
        || n == PROXY_CONNECTION
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The header names a `Connection` header lists (hop-by-hop too).
fn named_by_connection(h: &HeaderMap) -> Vec<HeaderName> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

/// Removes hop-by-hop headers, and the ones a `Connection` header names.
pub fn remove_hop_by_hop(h: &mut HeaderMap) {
    // Usually only `Connection: keep-alive` or nothing: look before
    // removing.
    let found: Vec<HeaderName> = h.keys().filter(|n| is_hop_by_hop(n)).cloned().collect();
    if found.is_empty() {
        return;
    }
    for n in named_by_connection(h) {
        h.remove(n);
    }
    for n in found {
        h.remove(n);
    }
}

/// A plain HTTP request's headers for the backend: end-to-end headers as
/// sent, `Host` as the client sent it, `X-Forwarded-*` as for upgrades,
/// and `TE: trailers` when the client accepts trailers (so the backend may
/// send them). Built in one pass over the client's headers.
pub fn proxy_request_headers(src: &HeaderMap, peer: IpAddr, tls: bool) -> HeaderMap {
    let te_trailers = src
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    let named = if src.contains_key(header::CONNECTION) {
        named_by_connection(src)
    } else {
        Vec::new()
    };
    let mut h = HeaderMap::with_capacity(src.len() + 3);
    for (name, value) in src {
        if is_hop_by_hop(name)
            || name == X_FORWARDED_FOR
            || name == X_FORWARDED_PROTO
            || name == X_FORWARDED_HOST
            || named.contains(name)
        {
            continue;
        }
        h.append(name.clone(), value.clone());
    }
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    set_forwarded(&mut h, src, peer, tls);
    h
}
