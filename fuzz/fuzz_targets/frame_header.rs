//! Frame-header parser, masking and the incremental UTF-8 validator over
//! arbitrary bytes: no panic, and the invariants the relay relies on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::ws::close::{ClosePayload, parse_close};
use wsgate::ws::frame::{self, parse_header};
use wsgate::ws::utf8::Utf8Validator;

fuzz_target!(|data: &[u8]| {
    // parse_header: a parsed header lies within the input and every shorter
    // prefix is "need more".
    match parse_header(data) {
        Ok(Some(h)) => {
            assert!(h.header_len <= data.len() && h.header_len <= frame::MAX_HEADER_LEN);
            assert!(h.payload_len >> 63 == 0);
            if frame::opcode::is_control(h.opcode) {
                assert!(h.fin && h.payload_len <= frame::MAX_CONTROL_PAYLOAD as u64);
            }
            for k in 0..h.header_len {
                assert_eq!(parse_header(&data[..k]), Ok(None));
            }
            // Unmask what payload there is, in two pieces, and compare.
            let end = (h.header_len as u64 + h.payload_len).min(data.len() as u64) as usize;
            if let Some(key) = h.mask {
                let mut whole = data[h.header_len..end].to_vec();
                frame::apply_mask(&mut whole, key, 0);
                let mut pieces = data[h.header_len..end].to_vec();
                let at = pieces.len() / 3;
                let (a, b) = pieces.split_at_mut(at);
                frame::apply_mask(a, key, 0);
                frame::apply_mask(b, key, at as u64);
                assert_eq!(whole, pieces);
                frame::apply_mask(&mut whole, key, 0);
                assert_eq!(whole, &data[h.header_len..end]);
                if h.opcode == frame::opcode::CLOSE {
                    let _ = parse_close(&pieces);
                }
            }
        }
        Ok(None) => assert!(data.len() < frame::MAX_HEADER_LEN),
        Err(_) => {}
    }

    // apply_mask at an arbitrary offset against the byte-wise definition.
    if data.len() >= 5 {
        let key = [data[0], data[1], data[2], data[3]];
        let offset = u64::from(data[4]) * 7919;
        let body = &data[5..];
        let mut masked = body.to_vec();
        frame::apply_mask(&mut masked, key, offset);
        for (i, (m, b)) in masked.iter().zip(body).enumerate() {
            assert_eq!(*m, b ^ key[((offset + i as u64) % 4) as usize]);
        }
    }

    // Utf8Validator: fed in three pieces at input-chosen points, it agrees
    // with std.
    if !data.is_empty() {
        let body = &data[1..];
        let a = (usize::from(data[0] & 0x0f)).min(body.len());
        let b = (a + usize::from(data[0] >> 4)).min(body.len());
        let mut v = Utf8Validator::default();
        let ok = v.feed(&body[..a]).is_ok()
            && v.feed(&body[a..b]).is_ok()
            && v.feed(&body[b..]).is_ok()
            && v.finish().is_ok();
        assert_eq!(ok, std::str::from_utf8(body).is_ok());
    }

    // parse_close on anything.
    match parse_close(data) {
        ClosePayload::Empty => assert!(data.is_empty()),
        ClosePayload::Code(c) => assert!(wsgate::ws::close::valid_on_wire(c)),
        ClosePayload::Invalid(c) => assert!(c == 1002 || c == 1007),
    }
});
