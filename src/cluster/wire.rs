//! What travels over Redis pub/sub: commands to one gateway (on its node
//! channel) and messages to a topic (on the topic's channel), as JSON.
//! Binary payloads are base64. Each message carries its publish time so
//! the receiving gateway can observe the delivery latency.

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::relay::push::data_frame;

/// A message toward clients: exactly one of `text` / `binary` (base64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
    /// Unix microseconds at publish (for the delivery latency histogram).
    #[serde(default)]
    pub ts_us: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    #[error("give exactly one of \"text\" or \"binary\" (base64)")]
    NotOne,
    #[error("\"binary\" is not valid base64")]
    Base64,
}

impl Message {
    /// The frame every receiver gets (built once per message per gateway).
    pub fn frame(&self) -> Result<Bytes, MessageError> {
        match (&self.text, &self.binary) {
            (Some(t), None) => Ok(data_frame(true, t.as_bytes())),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map(|raw| data_frame(false, &raw))
                .map_err(|_| MessageError::Base64),
            _ => Err(MessageError::NotOne),
        }
    }

    /// Payload bytes (the decoded size of a binary message).
    pub fn payload_len(&self) -> usize {
        match (&self.text, &self.binary) {
            (Some(t), _) => t.len(),
            (_, Some(b)) => b.len() / 4 * 3,
            _ => 0,
        }
    }
}

/// A command on a gateway's node channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// A message to every connection of a client ID on that gateway.
    Send { client: String, message: Message },
    /// Close every connection of a client ID on that gateway.
    Disconnect {
        client: String,
        code: u16,
        reason: String,
    },
    /// Close one connection (the per-client cap); `incarnation` guards
    /// against a restarted gateway reusing the connection number.
    CloseConn {
        incarnation: String,
        conn: u64,
        code: u16,
        reason: String,
    },
    /// Change the topics of every connection of a client ID there.
    Topics {
        client: String,
        subscribe: Vec<String>,
        unsubscribe: Vec<String>,
    },
}

pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_messages_need_one_payload() {
        let c = Command::Disconnect {
            client: "a".into(),
            code: 4001,
            reason: "token revoked".into(),
        };
        let j = serde_json::to_string(&c).unwrap();
        assert!(j.contains("\"op\":\"disconnect\""), "{j}");
        assert_eq!(serde_json::from_str::<Command>(&j).unwrap(), c);
        let both = Message {
            text: Some("x".into()),
            binary: Some("eA==".into()),
            ts_us: 0,
        };
        assert_eq!(both.frame(), Err(MessageError::NotOne));
        let bin = Message {
            text: None,
            binary: Some("AAEC".into()),
            ts_us: 0,
        };
        assert_eq!(&bin.frame().unwrap()[..], &[0x82, 3, 0, 1, 2]);
        let bad = Message {
            text: None,
            binary: Some("!!".into()),
            ts_us: 0,
        };
        assert_eq!(bad.frame(), Err(MessageError::Base64));
    }
}
