//! The upgrade checks over arbitrary request heads: the bytes go through
//! httparse (as hyper would parse them), become an http::Request, and meet
//! check_upgrade, the Origin policy and the client-ID sources.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Version};
use libfuzzer_sys::fuzz_target;
use wsgate::config::Source;
use wsgate::auth::OriginPolicy;
use wsgate::conn::{handshake, headers};
use wsgate::request;

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = parsed.parse(data) else {
        return;
    };
    let (Some(method), Some(path), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let version = if version == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let mut b = Request::builder().method(method).version(version).uri(path);
    for h in parsed.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return;
        };
        b = b.header(name, value);
    }
    let Ok(req) = b.body(()) else {
        return;
    };

    let ok = handshake::check_upgrade(&req).is_ok();
    if ok {
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.version(), Version::HTTP_11);
    }

    let origin = req.headers().get("origin");
    for (allowed, require) in [
        (vec!["*".to_string()], false),
        (
            vec![
                "https://app.example.com".to_string(),
                "https://*.example.org".to_string(),
                "http://[::1]:3000".to_string(),
            ],
            true,
        ),
    ] {
        let _ = OriginPolicy::new(&allowed, require).check(origin);
    }
    // The Origin value itself as an allow-list entry matches itself.
    if let Some(o) = origin.and_then(|o| o.to_str().ok()) {
        let p = OriginPolicy::new(&[o.to_string()], true);
        let _ = p.check(origin);
    }

    let sources = [
        Source::Query("client_id".into()),
        Source::Header("x-client-id".into()),
        Source::Cookie("client_id".into()),
        Source::Query("token".into()),
        Source::Cookie("token".into()),
    ];
    let id = request::client_id(&req, &sources, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert!(!id.is_empty());
    let _ = request::find_value(&req, &sources);
    if let Some(q) = req.uri().query() {
        let stripped = request::strip_query_param(q, "token");
        assert_eq!(request::query_param(&stripped, "token"), None);
    }
    let _ = headers::accept_key(data);
});
