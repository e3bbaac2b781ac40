//! RFC 6455 framing as pure functions over bytes: the frame-header parser,
//! masking and the encoding of the small frames the gateway sends itself.
//!
//! Nothing here does I/O or allocates. "Need more bytes" is `Ok(None)`, not
//! an error (as in mini-redis `frame.rs`). What a frame *means* for the
//! connection (order of fragments, who may mask) is the relay's business.
//!
//! Hand-written on purpose: tungstenite's codec owns a read buffer per
//! stream and reassembles whole messages, while the relay forwards frame
//! payloads as they arrive (see `relay`), so it needs only this header
//! parser over borrowed bytes.

/// Opcodes (RFC 6455 section 5.2).
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;

    pub fn is_control(op: u8) -> bool {
        op & 0x8 != 0
    }
}

/// Largest control-frame payload (RFC 6455 section 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// Largest frame header: 2 bytes + 8-byte length + 4-byte mask (section 5.2).
pub const MAX_HEADER_LEN: usize = 14;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    /// RSV1..RSV3 as the low three bits (RSV1 = 0b100).
    pub rsv: u8,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
    /// Bytes the header itself takes on the wire.
    pub header_len: usize,
}

/// A framing violation found in one header (RFC 6455 section 5.2 / 5.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("reserved opcode")]
    ReservedOpcode,
    #[error("control frame longer than 125 bytes")]
    ControlTooLong,
    #[error("fragmented control frame")]
    ControlFragmented,
    #[error("payload length with the most significant bit set")]
    LengthOverflow,
}

/// Parses a frame header from the start of `buf`; `Ok(None)` if `buf` holds
/// only part of one.
pub fn parse_header(buf: &[u8]) -> Result<Option<Header>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    let fin = b0 & 0x80 != 0;
    let rsv = (b0 >> 4) & 0x7;
    let op = b0 & 0x0F;
    if !matches!(op, 0x0..=0x2 | 0x8..=0xA) {
        return Err(FrameError::ReservedOpcode);
    }
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(b);
            if len >> 63 != 0 {
                return Err(FrameError::LengthOverflow);
            }
            (len, 10)
        }
        n => (n as u64, 2),
    };
    if opcode::is_control(op) {
        if len > MAX_CONTROL_PAYLOAD as u64 {
            return Err(FrameError::ControlTooLong);
        }
        if !fin {
            return Err(FrameError::ControlFragmented);
        }
    }
    let mask = if masked {
        if buf.len() < at + 4 {
            return Ok(None);
        }
        let m = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        at += 4;
        Some(m)
    } else {
        None
    };
    Ok(Some(Header {
        fin,
        rsv,
        opcode: op,
        mask,
        payload_len: len,
        header_len: at,
    }))
}

/// XORs `buf` with the mask `key`, where `buf` starts `offset` bytes into the
/// payload (RFC 6455 section 5.3). Applying it twice restores the input.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: u64) {
    let mut k = key;
    k.rotate_left((offset % 4) as usize);
    let k8 = u64::from_ne_bytes([k[0], k[1], k[2], k[3], k[0], k[1], k[2], k[3]]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) ^ k8;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    // 8 is a multiple of 4, so the remainder starts at key index 0.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= k[i % 4];
    }
}

/// One control frame the gateway itself sends, encoded on the stack.
pub struct ControlFrame {
    buf: [u8; MAX_HEADER_LEN + MAX_CONTROL_PAYLOAD],
    len: usize,
}

impl ControlFrame {
    /// Encodes a single-frame message (control frame, or a small text frame
    /// for `app_pong`). `mask` is required toward a server (section 5.3).
    pub fn new(op: u8, payload: &[u8], mask: Option<[u8; 4]>) -> ControlFrame {
        debug_assert!(payload.len() <= MAX_CONTROL_PAYLOAD);
        let mut buf = [0u8; MAX_HEADER_LEN + MAX_CONTROL_PAYLOAD];
        buf[0] = 0x80 | op;
        buf[1] = payload.len() as u8 | if mask.is_some() { 0x80 } else { 0 };
        let mut at = 2;
        if let Some(m) = mask {
            buf[2..6].copy_from_slice(&m);
            at = 6;
        }
        buf[at..at + payload.len()].copy_from_slice(payload);
        if let Some(m) = mask {
            apply_mask(&mut buf[at..at + payload.len()], m, 0);
        }
        ControlFrame {
            buf,
            len: at + payload.len(),
        }
    }

    /// A close frame with `code` and `reason` (cut to fit 125 bytes on a
    /// character boundary).
    pub fn close(code: u16, reason: &str, mask: Option<[u8; 4]>) -> ControlFrame {
        let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
        payload[..2].copy_from_slice(&code.to_be_bytes());
        let mut r = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
        while !reason.is_char_boundary(r) {
            r -= 1;
        }
        payload[2..2 + r].copy_from_slice(&reason.as_bytes()[..r]);
        ControlFrame::new(opcode::CLOSE, &payload[..2 + r], mask)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::close::{ClosePayload, parse_close};

    #[test]
    fn parses_small_and_extended_lengths() {
        let h = parse_header(&[0x81, 0x85, 1, 2, 3, 4]).unwrap().unwrap();
        assert_eq!(
            (h.fin, h.opcode, h.payload_len, h.header_len),
            (true, 1, 5, 6)
        );
        assert_eq!(h.mask, Some([1, 2, 3, 4]));
        let h = parse_header(&[0x02, 126, 0x01, 0x00]).unwrap().unwrap();
        assert_eq!((h.fin, h.payload_len, h.header_len), (false, 256, 4));
        let mut b = vec![0x82, 127];
        b.extend_from_slice(&(1u64 << 20).to_be_bytes());
        assert_eq!(parse_header(&b).unwrap().unwrap().payload_len, 1 << 20);
    }

    #[test]
    fn incomplete_is_none() {
        assert_eq!(parse_header(&[0x81]), Ok(None));
        assert_eq!(parse_header(&[0x81, 126, 0]), Ok(None));
        assert_eq!(parse_header(&[0x81, 0x80, 1, 2]), Ok(None));
    }

    #[test]
    fn violations() {
        assert_eq!(parse_header(&[0x83, 0]), Err(FrameError::ReservedOpcode));
        assert_eq!(
            parse_header(&[0x89, 126, 0, 126]),
            Err(FrameError::ControlTooLong)
        );
        assert_eq!(parse_header(&[0x09, 0]), Err(FrameError::ControlFragmented));
        let mut b = vec![0x82, 127];
        b.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(parse_header(&b), Err(FrameError::LengthOverflow));
    }

    #[test]
    fn mask_roundtrip_at_any_offset() {
        let data: Vec<u8> = (0..37u8).collect();
        let key = [0xA1, 0xB2, 0xC3, 0xD4];
        let mut whole = data.clone();
        apply_mask(&mut whole, key, 0);
        // Masking in two pieces at an odd split equals masking at once.
        let mut pieces = data.clone();
        let (a, b) = pieces.split_at_mut(13);
        apply_mask(a, key, 0);
        apply_mask(b, key, 13);
        assert_eq!(whole, pieces);
        apply_mask(&mut whole, key, 0);
        assert_eq!(whole, data);
    }

    #[test]
    fn close_frame_encoding_and_parsing() {
        let f = ControlFrame::close(1001, "bye", None);
        assert_eq!(f.as_bytes(), &[0x88, 5, 0x03, 0xE9, b'b', b'y', b'e']);
        assert_eq!(parse_close(&f.as_bytes()[2..]), ClosePayload::Code(1001));
        assert_eq!(parse_close(&[]), ClosePayload::Empty);
        assert_eq!(parse_close(&[3]), ClosePayload::Invalid(1002));
        assert_eq!(
            parse_close(&1005u16.to_be_bytes()),
            ClosePayload::Invalid(1002)
        );
        assert_eq!(
            parse_close(&[0x03, 0xE8, 0xFF]),
            ClosePayload::Invalid(1007)
        );
        let long = "é".repeat(100);
        let f = ControlFrame::close(1000, &long, None);
        assert!(f.as_bytes().len() <= 127);
        assert!(matches!(
            parse_close(&f.as_bytes()[2..]),
            ClosePayload::Code(1000)
        ));
    }
}
