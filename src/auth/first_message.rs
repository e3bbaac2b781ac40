//! `token_from = ["first_message"]`: the token is the client's first text
//! message after the upgrade (the whole text, or its JSON field `token`),
//! read before any backend is dialed and never forwarded.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::ws::frame::{apply_mask, opcode, parse_header};

/// Largest first message accepted as a token.
const MAX_FIRST_MESSAGE: usize = 16 * 1024;

/// Why no token could be read from the first message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FirstMessageError {
    #[error("no first message in time")]
    Timeout,
    #[error("the first message is not a token")]
    Invalid,
}

/// Extracts the token from a first message: the whole text, or its JSON
/// field `token`.
pub fn token(text: &str) -> String {
    let t = text.trim();
    if t.starts_with('{')
        && let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(t)
        && let Some(serde_json::Value::String(s)) = m.get("token")
    {
        return s.clone();
    }
    t.to_string()
}

/// Reads the client's first message (one masked text frame; pings before it
/// are ignored) within `timeout`. Returns its text and any bytes read past
/// it.
pub async fn read<S: AsyncRead + Unpin>(
    io: &mut S,
    pre: Bytes,
    timeout: Duration,
) -> Result<(String, Bytes), FirstMessageError> {
    use FirstMessageError::Invalid;
    let mut buf = pre.to_vec();
    let read = async {
        loop {
            while let Ok(Some(h)) = parse_header(&buf) {
                let total = h.header_len + h.payload_len as usize;
                let Some(mask) = h.mask else {
                    return Err(Invalid);
                };
                if h.payload_len as usize > MAX_FIRST_MESSAGE {
                    return Err(Invalid);
                }
                if buf.len() < total {
                    break;
                }
                let mut payload = buf[h.header_len..total].to_vec();
                apply_mask(&mut payload, mask, 0);
                let rest = Bytes::copy_from_slice(&buf[total..]);
                buf.drain(..total);
                match h.opcode {
                    opcode::PING | opcode::PONG => continue,
                    opcode::TEXT if h.fin && h.rsv == 0 => {
                        let text = String::from_utf8(payload).map_err(|_| Invalid)?;
                        return Ok((text, rest));
                    }
                    _ => return Err(Invalid),
                }
            }
            if parse_header(&buf).is_err() {
                return Err(Invalid);
            }
            let mut chunk = [0u8; 4096];
            let n = io.read(&mut chunk).await.map_err(|_| Invalid)?;
            if n == 0 {
                return Err(Invalid);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(FirstMessageError::Timeout))
}
