//! An incremental UTF-8 validator for text messages whose bytes arrive in
//! pieces (frames and reads may split a character), RFC 6455 section 8.1.
//! Pure; keeps at most 3 bytes between calls.

/// Bytes that are not UTF-8 in a text message (RFC 6455 section 8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid UTF-8")]
pub struct InvalidUtf8;

/// Validates UTF-8 fed in pieces that may split a character (a text message
/// across frames and reads), keeping at most 3 bytes between calls.
#[derive(Debug, Default, Clone, Copy)]
pub struct Utf8Validator {
    carry: [u8; 4],
    carry_len: u8,
}

impl Utf8Validator {
    /// Feeds the next unmasked bytes; `Err` at the first invalid sequence.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), InvalidUtf8> {
        if self.carry_len > 0 {
            let need = utf8_width(self.carry[0]).ok_or(InvalidUtf8)?;
            let have = self.carry_len as usize;
            let take = (need - have).min(data.len());
            self.carry[have..have + take].copy_from_slice(&data[..take]);
            self.carry_len += take as u8;
            data = &data[take..];
            let cur = &self.carry[..self.carry_len as usize];
            match std::str::from_utf8(cur) {
                Ok(_) => self.carry_len = 0,
                Err(e) if e.error_len().is_some() => return Err(InvalidUtf8),
                Err(_) => return Ok(()), // still incomplete, and data is used up
            }
        }
        match std::str::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(InvalidUtf8),
            Err(e) => {
                let rest = &data[e.valid_up_to()..];
                self.carry[..rest.len()].copy_from_slice(rest);
                self.carry_len = rest.len() as u8;
                Ok(())
            }
        }
    }

    /// Whether the message ended on a character boundary.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let ok = self.carry_len == 0;
        self.carry_len = 0;
        if ok { Ok(()) } else { Err(InvalidUtf8) }
    }
}

fn utf8_width(first: u8) -> Option<usize> {
    match first {
        0x00..=0x7F => Some(1),
        0xC2..=0xDF => Some(2),
        0xE0..=0xEF => Some(3),
        0xF0..=0xF4 => Some(4),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_anywhere() {
        let s = "aé€😀z".as_bytes();
        for cut in 0..s.len() {
            let mut v = Utf8Validator::default();
            v.feed(&s[..cut]).unwrap();
            v.feed(&s[cut..]).unwrap();
            v.finish().unwrap();
        }
        let mut v = Utf8Validator::default();
        assert!(v.feed(&[0xC3, 0x28]).is_err());
        let mut v = Utf8Validator::default();
        v.feed(&[0xE2, 0x82]).unwrap();
        assert!(v.finish().is_err());
        let mut v = Utf8Validator::default();
        v.feed(&[0xF0]).unwrap();
        assert!(v.feed(&[0x28]).is_err());
    }
}
