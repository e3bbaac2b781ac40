//! Property tests of the pure codec and handshake functions (issue 5,
//! part 5): no input panics them, and what they parse re-encodes to the
//! bytes it came from.

use std::net::IpAddr;

use hyper::header::HeaderValue;
use hyper::{Method, Request, Version};
use proptest::prelude::*;
use wsgate::auth::OriginPolicy;
use wsgate::config::Source;
use wsgate::conn::handshake;
use wsgate::relay::inbound::{DirCtx, Events, Inbound};
use wsgate::relay::inflate::Inspect;
use wsgate::request;
use wsgate::ws::close::{ClosePayload, parse_close};
use wsgate::ws::frame::{self, ControlFrame, Header, MAX_CONTROL_PAYLOAD, parse_header};
use wsgate::ws::utf8::Utf8Validator;

/// Encodes `h` in the same length form the parser saw (the parser accepts
/// non-minimal lengths, so the form is read back from `header_len`).
fn encode_header(h: &Header) -> Vec<u8> {
    let mut out = vec![(u8::from(h.fin) << 7) | (h.rsv << 4) | h.opcode];
    let m = if h.mask.is_some() { 0x80 } else { 0 };
    let len_bytes = h.header_len - 2 - if h.mask.is_some() { 4 } else { 0 };
    match len_bytes {
        0 => out.push(m | h.payload_len as u8),
        2 => {
            out.push(m | 126);
            out.extend_from_slice(&(h.payload_len as u16).to_be_bytes());
        }
        8 => {
            out.push(m | 127);
            out.extend_from_slice(&h.payload_len.to_be_bytes());
        }
        n => panic!("impossible length field of {n} bytes in {h:?}"),
    }
    if let Some(k) = h.mask {
        out.extend_from_slice(&k);
    }
    out
}

fn valid_opcode() -> impl Strategy<Value = u8> {
    prop::sample::select(vec![0x0u8, 0x1, 0x2, 0x8, 0x9, 0xA])
}

/// Bytes that are often, but not always, UTF-8.
fn mostly_utf8() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<String>().prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..40),
        (any::<String>(), any::<u8>(), any::<String>()).prop_map(|(a, b, c)| {
            let mut v = a.into_bytes();
            v.push(b);
            v.extend(c.into_bytes());
            v
        }),
        // Truncated multi-byte characters.
        (any::<String>(), 0usize..4).prop_map(|(s, cut)| {
            let mut v = s.into_bytes();
            v.truncate(v.len().saturating_sub(cut));
            v
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn parse_header_never_panics_and_round_trips(buf in prop::collection::vec(any::<u8>(), 0..24)) {
        match parse_header(&buf) {
            Ok(Some(h)) => {
                prop_assert!(h.header_len <= buf.len());
                prop_assert!(h.header_len <= frame::MAX_HEADER_LEN);
                prop_assert_eq!(&encode_header(&h)[..], &buf[..h.header_len]);
                prop_assert!(h.payload_len >> 63 == 0);
                if frame::opcode::is_control(h.opcode) {
                    prop_assert!(h.fin && h.payload_len <= MAX_CONTROL_PAYLOAD as u64);
                }
                // Any shorter prefix is "need more"; any longer input the same.
                for k in 0..h.header_len {
                    prop_assert_eq!(parse_header(&buf[..k]), Ok(None));
                }
                let mut longer = buf.clone();
                longer.extend_from_slice(&[0xEE; 8]);
                prop_assert_eq!(parse_header(&longer), Ok(Some(h)));
            }
            Ok(None) => prop_assert!(buf.len() < frame::MAX_HEADER_LEN),
            Err(_) => prop_assert!(buf.len() >= 2),
        }
    }

    #[test]
    fn structured_headers_round_trip(
        fin in any::<bool>(),
        rsv in 0u8..8,
        op in valid_opcode(),
        mask in any::<Option<[u8; 4]>>(),
        len in prop_oneof![0u64..126, 126u64..65536, 65536u64..(1 << 63)],
    ) {
        let control = frame::opcode::is_control(op);
        let mut buf = vec![(u8::from(fin) << 7) | (rsv << 4) | op];
        let m = if mask.is_some() { 0x80 } else { 0 };
        if len < 126 {
            buf.push(m | len as u8);
        } else if len < 65536 {
            buf.push(m | 126);
            buf.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            buf.push(m | 127);
            buf.extend_from_slice(&len.to_be_bytes());
        }
        if let Some(k) = mask {
            buf.extend_from_slice(&k);
        }
        let parsed = parse_header(&buf);
        if control && len > MAX_CONTROL_PAYLOAD as u64 {
            prop_assert_eq!(parsed, Err(frame::FrameError::ControlTooLong));
        } else if control && !fin {
            prop_assert_eq!(parsed, Err(frame::FrameError::ControlFragmented));
        } else {
            let h = parsed.unwrap().unwrap();
            prop_assert_eq!(
                (h.fin, h.rsv, h.opcode, h.mask, h.payload_len, h.header_len),
                (fin, rsv, op, mask, len, buf.len())
            );
        }
    }

    #[test]
    fn reserved_opcodes_and_huge_lengths_are_errors(op in 0u8..16, b1 in any::<u8>(), rest in any::<[u8; 12]>()) {
        let mut buf = vec![0x80 | op, b1];
        buf.extend_from_slice(&rest);
        if matches!(op, 3..=7 | 0xB..=0xF) {
            prop_assert_eq!(parse_header(&buf), Err(frame::FrameError::ReservedOpcode));
        }
        let mut buf = vec![0x82, 0x80 | 127];
        buf.extend_from_slice(&((1u64 << 63) | u64::from(b1)).to_be_bytes());
        buf.extend_from_slice(&rest[..4]);
        prop_assert_eq!(parse_header(&buf), Err(frame::FrameError::LengthOverflow));
    }

    #[test]
    fn apply_mask_is_an_involution_at_any_split(
        data in prop::collection::vec(any::<u8>(), 0..200),
        key in any::<[u8; 4]>(),
        offset in 0u64..1_000_000,
        split in any::<prop::sample::Index>(),
    ) {
        // Reference: byte i is XORed with key[(offset + i) % 4].
        let reference: Vec<u8> = data
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[((offset + i as u64) % 4) as usize])
            .collect();
        let mut whole = data.clone();
        frame::apply_mask(&mut whole, key, offset);
        prop_assert_eq!(&whole, &reference);
        // In two pieces at any split point.
        let at = split.index(data.len() + 1);
        let mut pieces = data.clone();
        let (a, b) = pieces.split_at_mut(at);
        frame::apply_mask(a, key, offset);
        frame::apply_mask(b, key, offset + at as u64);
        prop_assert_eq!(&pieces, &reference);
        // Twice is the identity.
        frame::apply_mask(&mut whole, key, offset);
        prop_assert_eq!(whole, data);
    }

    #[test]
    fn utf8_validator_agrees_with_std_at_any_splits(
        data in mostly_utf8(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..5),
    ) {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
        cuts.sort_unstable();
        let mut v = Utf8Validator::default();
        let mut ok = true;
        let mut from = 0;
        for &c in cuts.iter().chain(std::iter::once(&data.len())) {
            if v.feed(&data[from..c]).is_err() {
                ok = false;
                break;
            }
            from = c;
        }
        let ok = ok && v.finish().is_ok();
        prop_assert_eq!(ok, std::str::from_utf8(&data).is_ok(), "cuts {:?}", cuts);
    }

    #[test]
    fn close_frames_encode_and_parse(code in any::<u16>(), reason in any::<String>(), mask in any::<Option<[u8; 4]>>()) {
        let f = ControlFrame::close(code, &reason, mask);
        let bytes = f.as_bytes();
        let h = parse_header(bytes).unwrap().unwrap();
        prop_assert_eq!((h.opcode, h.fin, h.mask), (0x8, true, mask));
        prop_assert_eq!(h.header_len + h.payload_len as usize, bytes.len());
        let mut p = bytes[h.header_len..].to_vec();
        if let Some(k) = mask {
            frame::apply_mask(&mut p, k, 0);
        }
        prop_assert!(reason.as_bytes().starts_with(&p[2..]));
        let expect = if wsgate::ws::close::valid_on_wire(code) {
            ClosePayload::Code(code)
        } else {
            ClosePayload::Invalid(1002)
        };
        prop_assert_eq!(parse_close(&p), expect);
    }

    #[test]
    fn parse_close_never_panics(p in prop::collection::vec(any::<u8>(), 0..130)) {
        match parse_close(&p) {
            ClosePayload::Empty => prop_assert!(p.is_empty()),
            ClosePayload::Code(c) => {
                prop_assert!(wsgate::ws::close::valid_on_wire(c));
                prop_assert!(std::str::from_utf8(&p[2..]).is_ok());
            }
            ClosePayload::Invalid(c) => prop_assert!(c == 1002 || c == 1007),
        }
    }
}

// ---------------------------------------------------------------------------
// The relay's inbound parser over arbitrary streams
// ---------------------------------------------------------------------------

fn ctx(from_client: bool, max: u64, deflate: bool) -> DirCtx<'static> {
    DirCtx {
        from_client,
        max_message_bytes: max,
        validate_utf8: true,
        validate_json: false,
        deflate,
        // Compressed messages are inflated (arbitrary bytes: mostly corrupt
        // data, which must close, never panic), with and without a window.
        inspect: deflate.then_some(Inspect {
            keep_window: from_client,
        }),
        app_ping: None,
    }
}

/// Feeds `stream` to an `Inbound` in the given chunks, as the relay does
/// (carry first, then the new bytes). Returns the forwarded bytes, the
/// events and the violation that stopped it, if any.
fn run_inbound(stream: &[u8], cuts: &[usize], ctx: &DirCtx<'_>) -> (Vec<u8>, Events, Option<u16>) {
    let mut inb = Inbound::default();
    let mut out = Vec::new();
    let mut ev = Events::default();
    let mut spill = wsgate::relay::peer::Spill::default();
    let now = tokio::time::Instant::now();
    let mut from = 0;
    for &c in cuts.iter().chain(std::iter::once(&stream.len())) {
        let mut buf = std::mem::take(&mut inb.carry);
        buf.extend_from_slice(&stream[from..c]);
        from = c;
        let (w, v) = inb.process(&mut buf, ctx, &mut None, now, &mut ev, &mut spill);
        assert!(w <= buf.len());
        out.extend_from_slice(&buf[..w]);
        if let Some(v) = v {
            return (out, ev, Some(v.code));
        }
    }
    assert!(!spill.pending());
    (out, ev, None)
}

/// A valid message stream: (opcode, payload, fragment sizes) messages with
/// pings between frames.
fn message() -> impl Strategy<Value = (bool, Vec<u8>, Vec<usize>, bool)> {
    (
        any::<bool>(),
        prop_oneof![
            any::<String>().prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..300),
        ],
        prop::collection::vec(1usize..100, 0..4),
        any::<bool>(),
    )
}

fn encode(fin: bool, op: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | op];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n < 65536 => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mut p = payload.to_vec();
    if let Some(k) = mask {
        out.extend_from_slice(&k);
        frame::apply_mask(&mut p, k, 0);
    }
    out.extend(p);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn inbound_never_panics_on_arbitrary_streams(
        stream in prop::collection::vec(any::<u8>(), 0..400),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        from_client in any::<bool>(),
        deflate in any::<bool>(),
        max in prop_oneof![Just(u64::MAX), 0u64..200],
    ) {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        cuts.sort_unstable();
        let (out, _, _) = run_inbound(&stream, &cuts, &ctx(from_client, max, deflate));
        // Forwarded bytes are always a prefix of the input (nothing made up,
        // nothing reordered: no app_ping and no JSON holding here).
        prop_assert!(stream.starts_with(&out));
    }

    #[test]
    fn valid_streams_pass_unchanged_at_any_split(
        msgs in prop::collection::vec(message(), 0..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        mask in any::<[u8; 4]>(),
        from_client in any::<bool>(),
    ) {
        let mask = from_client.then_some(mask);
        let mut stream = Vec::new();
        for (text, payload, frags, ping) in &msgs {
            let payload = if *text {
                // Text must be UTF-8: keep the valid prefix.
                let n = match std::str::from_utf8(payload) {
                    Ok(_) => payload.len(),
                    Err(e) => e.valid_up_to(),
                };
                &payload[..n]
            } else {
                &payload[..]
            };
            // Split the payload into fragments of the given sizes.
            let mut pieces = Vec::new();
            let mut rest = payload;
            for &f in frags {
                let f = f.min(rest.len());
                pieces.push(&rest[..f]);
                rest = &rest[f..];
            }
            pieces.push(rest);
            for (i, p) in pieces.iter().enumerate() {
                let op = if i == 0 { if *text { 0x1 } else { 0x2 } } else { 0x0 };
                stream.extend(encode(i + 1 == pieces.len(), op, p, mask));
                if *ping {
                    stream.extend(encode(true, 0x9, b"interleaved", mask));
                }
            }
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        cuts.sort_unstable();
        let (out, ev, violation) = run_inbound(&stream, &cuts, &ctx(from_client, u64::MAX, false));
        prop_assert_eq!(violation, None);
        prop_assert_eq!(out, stream);
        prop_assert_eq!(ev.messages, msgs.len() as u64);
    }
}

// ---------------------------------------------------------------------------
// Handshake functions over arbitrary requests
// ---------------------------------------------------------------------------

/// Header names the handshake reads, plus noise.
fn header_name() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "host",
        "upgrade",
        "connection",
        "sec-websocket-key",
        "sec-websocket-version",
        "origin",
        "cookie",
        "x-client-id",
        "authorization",
        "x-other",
    ])
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(vec![
            b"websocket".to_vec(),
            b"Upgrade".to_vec(),
            b"keep-alive, Upgrade".to_vec(),
            b"dGhlIHNhbXBsZSBub25jZQ==".to_vec(),
            b"13".to_vec(),
            b"https://app.example.com".to_vec(),
            b"client_id=abc; token=t".to_vec(),
        ]),
        prop::collection::vec(any::<u8>(), 0..40),
        any::<String>().prop_map(String::into_bytes),
    ]
}

fn request() -> impl Strategy<Value = Request<()>> {
    (
        prop::sample::select(vec![
            Method::GET,
            Method::POST,
            Method::CONNECT,
            Method::OPTIONS,
        ]),
        prop::sample::select(vec![Version::HTTP_10, Version::HTTP_11, Version::HTTP_2]),
        "[ -~]{0,40}",
        prop::collection::vec((header_name(), header_value()), 0..10),
    )
        .prop_map(|(method, version, query, headers)| {
            let uri = format!(
                "/p?{}",
                query.replace(
                    |c: char| !c.is_ascii_alphanumeric() && !"=&%+._-".contains(c),
                    ""
                )
            );
            let mut b = Request::builder().method(method).version(version).uri(uri);
            for (k, v) in headers {
                // Values hyper could not have parsed are not requests it passes on.
                if let Ok(v) = HeaderValue::from_bytes(&v) {
                    b = b.header(k, v);
                }
            }
            b.body(()).unwrap()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn check_upgrade_never_panics(req in request()) {
        if handshake::check_upgrade(&req).is_ok() {
            // What passes is a real RFC 6455 opening handshake.
            prop_assert_eq!(req.method(), Method::GET);
            prop_assert_eq!(req.version(), Version::HTTP_11);
            prop_assert_eq!(req.headers().get("sec-websocket-version").unwrap(), "13");
            prop_assert!(req.headers().contains_key("host"));
        }
    }

    #[test]
    fn origin_and_client_id_never_panic(
        req in request(),
        allowed in prop::collection::vec("[ -~]{0,30}", 0..4),
        require in any::<bool>(),
        ip in any::<IpAddr>(),
    ) {
        let p = OriginPolicy::new(&allowed, require);
        let _ = p.check(req.headers().get("origin"));
        let sources = vec![
            Source::Query("client_id".into()),
            Source::Header("x-client-id".into()),
            Source::Cookie("client_id".into()),
        ];
        let id = request::client_id(&req, &sources, ip);
        prop_assert!(!id.is_empty());
    }

    #[test]
    fn query_helpers_never_panic(query in any::<String>(), name in any::<String>()) {
        let _ = request::query_param(&query, &name);
        // (An empty name matches the empty pair of an empty query; config
        // names are never empty.)
        prop_assume!(!name.is_empty());
        let stripped = request::strip_query_param(&query, &name);
        // What is stripped is gone.
        prop_assert_eq!(request::query_param(&stripped, &name), None);
        prop_assert!(stripped.len() <= query.len());
    }

    #[test]
    fn query_helpers_on_query_like_strings(
        pairs in prop::collection::vec(("[a-z%+0-9]{0,6}", "[a-z%+0-9=]{0,6}"), 0..6),
        name in "[a-z%+0-9]{1,4}",
    ) {
        let query = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
        let _ = request::query_param(&query, &name);
        let stripped = request::strip_query_param(&query, &name);
        prop_assert_eq!(request::query_param(&stripped, &name), None);
        // Other parameters survive stripping.
        for (k, _) in &pairs {
            if !k.is_empty() && *k != name && request::query_param(&query, k).is_some() {
                prop_assert!(request::query_param(&stripped, k).is_some(), "{} lost from {}", k, query);
            }
        }
    }

    #[test]
    fn accept_key_is_base64_of_20_bytes(key in prop::collection::vec(any::<u8>(), 0..64)) {
        use base64::Engine;
        let v = wsgate::conn::headers::accept_key(&key);
        let raw = base64::engine::general_purpose::STANDARD.decode(v.as_bytes()).unwrap();
        prop_assert_eq!(raw.len(), 20);
    }
}
