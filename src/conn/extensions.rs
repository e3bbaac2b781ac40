//! `Sec-WebSocket-Extensions` (RFC 6455 section 9.1) and what the gateway
//! makes of permessage-deflate (RFC 7692) under `[limits] permessage_deflate`:
//! a small pure parser and formatter, the rewritten offer toward the backend,
//! the rewritten answer toward the client, and what the relay must inspect.

use hyper::header::{self, HeaderMap, HeaderValue};

use crate::config::DeflateMode;
use crate::relay::inflate::Inspect;

/// One element of a `Sec-WebSocket-Extensions` value (RFC 6455 section
/// 9.1): an extension name and its parameters, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    pub name: String,
    pub params: Vec<(String, Option<String>)>,
}

const DEFLATE: &str = "permessage-deflate";

impl Extension {
    fn has(&self, param: &str) -> bool {
        self.params
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(param))
    }

    fn add(&mut self, param: &str) {
        if !self.has(param) {
            self.params.push((param.to_string(), None));
        }
    }

    fn is_deflate(&self) -> bool {
        self.name.eq_ignore_ascii_case(DEFLATE)
    }
}

/// Parses `ext; p; q=v, ext2` (values may be quoted strings). `None` if it
/// is not well formed: an empty name or parameter, or an open quote.
pub fn parse_extensions(v: &str) -> Option<Vec<Extension>> {
    // Split at top-level ',' and ';' (not inside quotes), keeping which.
    let mut out: Vec<Extension> = Vec::new();
    let mut items: Vec<Vec<String>> = vec![vec![String::new()]];
    let mut quoted = false;
    let mut escaped = false;
    for c in v.chars() {
        let cur = items.last_mut().and_then(|i| i.last_mut())?;
        match c {
            _ if escaped => {
                cur.push(c);
                escaped = false;
            }
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => items.push(vec![String::new()]),
            ';' if !quoted => items.last_mut()?.push(String::new()),
            _ => cur.push(c),
        }
    }
    if quoted {
        return None;
    }
    for item in items {
        let mut parts = item.into_iter();
        let name = parts.next()?.trim().to_string();
        if name.is_empty() || name.contains(char::is_whitespace) || name.contains('=') {
            return None;
        }
        let mut params = Vec::new();
        for p in parts {
            let (k, val) = match p.split_once('=') {
                Some((k, val)) => (k.trim(), Some(val.trim().to_string())),
                None => (p.trim(), None),
            };
            if k.is_empty() || k.contains(char::is_whitespace) {
                return None;
            }
            params.push((k.to_string(), val));
        }
        out.push(Extension { name, params });
    }
    Some(out)
}

/// The inverse of [`parse_extensions`] (values always written as tokens
/// when they are, else quoted).
pub fn format_extensions(exts: &[Extension]) -> String {
    let mut s = String::new();
    for (i, e) in exts.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&e.name);
        for (k, v) in &e.params {
            s.push_str("; ");
            s.push_str(k);
            if let Some(v) = v {
                s.push('=');
                if !v.is_empty()
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                {
                    s.push_str(v);
                } else {
                    s.push('"');
                    s.push_str(&v.replace('\\', "\\\\").replace('"', "\\\""));
                    s.push('"');
                }
            }
        }
    }
    s
}

/// The client's extension offers as sent to the backend, per
/// `permessage_deflate`:
/// - inspect: each permessage-deflate offer asks for
///   `server_no_context_takeover`, so the backend's messages can be
///   inflated without a window kept between them (a backend may refuse:
///   then the gateway keeps one);
/// - off: permessage-deflate offers are removed;
/// - passthrough: as sent.
///
/// An offer the gateway cannot parse is dropped (inspect, off): nothing it
/// cannot judge is negotiated.
pub fn offer_deflate(h: &mut HeaderMap, mode: DeflateMode) {
    if mode == DeflateMode::Passthrough {
        return;
    }
    let joined = h
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .map(|v| v.to_str().unwrap_or("\u{0}"))
        .collect::<Vec<_>>()
        .join(", ");
    if joined.is_empty() {
        return;
    }
    h.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    let Some(mut exts) = parse_extensions(&joined) else {
        return;
    };
    match mode {
        DeflateMode::Off => exts.retain(|e| !e.is_deflate()),
        _ => exts
            .iter_mut()
            .filter(|e| e.is_deflate())
            .for_each(|e| e.add("server_no_context_takeover")),
    }
    if !exts.is_empty()
        && let Ok(v) = HeaderValue::from_str(&format_extensions(&exts))
    {
        h.insert(header::SEC_WEBSOCKET_EXTENSIONS, v);
    }
}

/// The backend's accepted extensions as passed to the client, per
/// `permessage_deflate`: with inspect, `client_no_context_takeover` is
/// added (RFC 7692 section 7.1.1.2 lets a server add it unasked, and any
/// decompressor reads such messages), so the client's messages can be
/// inflated without a window kept between them; with off, a
/// permessage-deflate the backend accepted anyway is removed (its
/// compressed frames then close 1002).
pub fn answer_deflate(ext: Option<HeaderValue>, mode: DeflateMode) -> Option<HeaderValue> {
    let v = ext?;
    if mode == DeflateMode::Passthrough {
        return Some(v);
    }
    // Unparseable: passed as is; the relay then assumes the worst (windows
    // kept both ways, see `deflate_session`).
    let Some(mut exts) = v.to_str().ok().and_then(parse_extensions) else {
        return Some(v);
    };
    match mode {
        DeflateMode::Off => exts.retain(|e| !e.is_deflate()),
        _ => exts
            .iter_mut()
            .filter(|e| e.is_deflate())
            .for_each(|e| e.add("client_no_context_takeover")),
    }
    if exts.is_empty() {
        return None;
    }
    HeaderValue::from_str(&format_extensions(&exts)).ok()
}

/// What the relay needs from the extensions agreed (the value the client
/// got in its 101): whether RSV1 may mark compressed messages, and how
/// each side's compressed messages are inspected (indexed by `Side`).
pub fn deflate_session(
    ext: Option<&HeaderValue>,
    mode: DeflateMode,
) -> (bool, [Option<Inspect>; 2]) {
    let Some(text) = ext.map(|v| v.to_str().unwrap_or("")) else {
        return (false, [None, None]);
    };
    let exts = parse_extensions(text);
    let deflate = match &exts {
        Some(e) => e.iter().any(Extension::is_deflate),
        None => text.to_ascii_lowercase().contains(DEFLATE),
    };
    if !deflate || mode != DeflateMode::Inspect {
        return (deflate, [None, None]);
    }
    let chosen = exts
        .as_ref()
        .and_then(|e| e.iter().find(|e| e.is_deflate()));
    let no_takeover = |p: &str| chosen.is_some_and(|e| e.has(p));
    let inspect = |p| {
        Some(Inspect {
            keep_window: !no_takeover(p),
        })
    };
    (
        true,
        [
            inspect("client_no_context_takeover"),
            inspect("server_no_context_takeover"),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(name: &str, params: &[(&str, Option<&str>)]) -> Extension {
        Extension {
            name: name.into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
                .collect(),
        }
    }

    #[test]
    fn parses_offers_as_browsers_and_libraries_send_them() {
        assert_eq!(
            parse_extensions("permessage-deflate; client_max_window_bits").unwrap(),
            vec![ext(
                "permessage-deflate",
                &[("client_max_window_bits", None)]
            )]
        );
        assert_eq!(
            parse_extensions(
                "permessage-deflate; server_max_window_bits=10; client_max_window_bits=\"12\", permessage-deflate,x-foo"
            )
            .unwrap(),
            vec![
                ext(
                    "permessage-deflate",
                    &[("server_max_window_bits", Some("10")), ("client_max_window_bits", Some("12"))]
                ),
                ext("permessage-deflate", &[]),
                ext("x-foo", &[]),
            ]
        );
        assert_eq!(
            parse_extensions("x; a=\"1,2;3\"").unwrap(),
            vec![ext("x", &[("a", Some("1,2;3"))])]
        );
        for bad in ["", "a,,b", "a; ", "x; a=\"open", "a b", "; p"] {
            assert_eq!(parse_extensions(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn format_round_trips() {
        let v = "permessage-deflate; client_max_window_bits=15; server_no_context_takeover, x; a=\"1,2\"";
        let e = parse_extensions(v).unwrap();
        assert_eq!(format_extensions(&e), v);
        assert_eq!(parse_extensions(&format_extensions(&e)).unwrap(), e);
    }

    fn offer(values: &[&str], mode: DeflateMode) -> Option<String> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                header::SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_str(v).unwrap(),
            );
        }
        offer_deflate(&mut h, mode);
        assert!(h.get_all(header::SEC_WEBSOCKET_EXTENSIONS).iter().count() <= 1);
        h.get(header::SEC_WEBSOCKET_EXTENSIONS)
            .map(|v| v.to_str().unwrap().to_string())
    }

    #[test]
    fn the_offer_asks_the_backend_for_no_context_takeover() {
        let chrome = "permessage-deflate; client_max_window_bits";
        assert_eq!(
            offer(&[chrome], DeflateMode::Inspect).as_deref(),
            Some("permessage-deflate; client_max_window_bits; server_no_context_takeover")
        );
        assert_eq!(
            offer(
                &["permessage-deflate; server_no_context_takeover", "x-other"],
                DeflateMode::Inspect
            )
            .as_deref(),
            Some("permessage-deflate; server_no_context_takeover, x-other")
        );
        assert_eq!(
            offer(&[chrome], DeflateMode::Passthrough).as_deref(),
            Some(chrome)
        );
        assert_eq!(offer(&[chrome], DeflateMode::Off), None);
        assert_eq!(
            offer(&[chrome, "x-other"], DeflateMode::Off).as_deref(),
            Some("x-other")
        );
        assert_eq!(offer(&[], DeflateMode::Inspect), None);
        assert_eq!(
            offer(&["permessage-deflate; \"broken"], DeflateMode::Inspect),
            None
        );
    }

    fn answer(v: &str, mode: DeflateMode) -> Option<String> {
        answer_deflate(Some(HeaderValue::from_str(v).unwrap()), mode)
            .map(|v| v.to_str().unwrap().to_string())
    }

    #[test]
    fn the_answer_tells_the_client_to_drop_its_context() {
        let python = "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12";
        let a = answer(python, DeflateMode::Inspect).unwrap();
        assert_eq!(a, format!("{python}; client_no_context_takeover"));
        let hv = HeaderValue::from_str(&a).unwrap();
        // The backend did not accept server_no_context_takeover: its side
        // keeps a window; the client's side does not.
        assert_eq!(
            deflate_session(Some(&hv), DeflateMode::Inspect),
            (
                true,
                [
                    Some(Inspect { keep_window: false }),
                    Some(Inspect { keep_window: true })
                ]
            )
        );
        let both = HeaderValue::from_static(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        );
        assert_eq!(
            deflate_session(Some(&both), DeflateMode::Inspect).1,
            [Some(Inspect { keep_window: false }); 2]
        );
        assert_eq!(
            answer(python, DeflateMode::Passthrough).as_deref(),
            Some(python)
        );
        assert_eq!(
            deflate_session(Some(&hv), DeflateMode::Passthrough),
            (true, [None, None])
        );
        assert_eq!(answer(python, DeflateMode::Off), None);
        assert_eq!(
            deflate_session(None, DeflateMode::Inspect),
            (false, [None, None])
        );
    }
}
