//! Values read from an HTTP request head, in the order of configured
//! sources (`query:NAME`, `header:NAME`, `cookie:NAME`): the routing client
//! ID and the credentials. Pure; used by admission (`auth`) and by the
//! connection phases (`conn`), so it sits below both.

use std::net::IpAddr;

use hyper::Request;
use hyper::header::{self, HeaderMap};

use crate::config::Source;

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
