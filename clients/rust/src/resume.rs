//! The client side of wsgate's resumable sessions (`[resume]` on the gateway;
//! see clients/README.md for the protocol): what this client sent and the
//! gateway has not acknowledged, what it received, and the credential for
//! the next reconnect. Survives reconnects; one per client.

use std::collections::VecDeque;

use crate::client::Message;

/// The subprotocol that asks the gateway for a resumable session.
pub const SUBPROTOCOL: &str = "wsgate.resume.v1";
/// The control message that is this client's heartbeat on a resumable link.
pub const PING: &str = "\0ping";
/// Acknowledge after this many received messages (or after a short delay).
pub const ACK_EVERY: u64 = 32;

/// A text received on a resumable link.
#[derive(Debug, PartialEq, Eq)]
pub enum Control<'a> {
    /// App data (unescaped).
    Data(&'a str),
    /// `\0hello <credential> <received> <state>`.
    Hello {
        credential: &'a str,
        received: u64,
        state: &'a str,
    },
    /// `\0ack <n>`.
    Ack(u64),
    /// Any other control message (`\0pong`, or one this version does not know).
    Other,
}

/// Tells session control from app data: control texts start with NUL, and an
/// app text that starts with NUL comes escaped with one more.
pub fn classify(text: &str) -> Control<'_> {
    let Some(rest) = text.strip_prefix('\0') else {
        return Control::Data(text);
    };
    if rest.starts_with('\0') {
        return Control::Data(rest);
    }
    if let Some(h) = rest.strip_prefix("hello ") {
        let mut parts = h.splitn(3, ' ');
        if let (Some(credential), Some(Ok(received)), Some(state)) = (
            parts.next(),
            parts.next().map(str::parse::<u64>),
            parts.next(),
        ) {
            return Control::Hello {
                credential,
                received,
                state,
            };
        }
        return Control::Other;
    }
    match rest.strip_prefix("ack ").map(str::parse::<u64>) {
        Some(Ok(n)) => Control::Ack(n),
        _ => Control::Other,
    }
}

/// An app message as it goes on a resumable link (a text that starts with NUL
/// gets one more).
pub fn escape(m: Message) -> Message {
    match m {
        Message::Text(t) if t.as_bytes().first() == Some(&0) => {
            Message::Text(format!("\0{}", t.as_str()).into())
        }
        m => m,
    }
}

/// What a hello means for the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// A fresh session (the first one).
    New,
    /// The session continues: these messages go again, in order.
    Resumed(Vec<Message>),
    /// The session asked for is gone; this is a fresh one. The reason.
    Lost(String),
}

/// The session state that outlives a link.
#[derive(Debug, Default)]
pub struct Session {
    /// The credential for the next reconnect (never logged).
    credential: Option<String>,
    /// Data messages received in this session.
    pub received: u64,
    /// The last count acknowledged to the gateway.
    pub ack_sent: u64,
    /// Messages the gateway acknowledged.
    acked: u64,
    /// Sent and not yet acknowledged, oldest first: number `acked + 1` on.
    unacked: VecDeque<Message>,
}

impl Session {
    /// The subprotocol offers for the next upgrade.
    pub fn offer(&self) -> String {
        match &self.credential {
            Some(c) => format!("{SUBPROTOCOL}, {SUBPROTOCOL}.{c}.{}", self.received),
            None => SUBPROTOCOL.to_owned(),
        }
    }

    /// A data message went out on the link.
    pub fn sent(&mut self, m: Message) {
        self.unacked.push_back(m);
    }

    /// The gateway acknowledged `n` of our messages.
    pub fn acked(&mut self, n: u64) {
        while self.acked < n && self.unacked.pop_front().is_some() {
            self.acked += 1;
        }
    }

    /// The gateway's hello: `received` is how many of ours it has.
    pub fn hello(&mut self, credential: &str, received: u64, state: &str) -> Hello {
        let had = self.credential.replace(credential.to_owned()).is_some();
        let sent = self.acked + self.unacked.len() as u64;
        let fresh = |s: &mut Session| {
            s.received = 0;
            s.ack_sent = 0;
            s.acked = 0;
            s.unacked.clear();
        };
        match state {
            "resumed" if had && (self.acked..=sent).contains(&received) => {
                self.acked(received);
                self.ack_sent = self.received;
                Hello::Resumed(self.unacked.iter().cloned().collect())
            }
            "resumed" => {
                // Counts the client cannot honour: the state is lost.
                fresh(self);
                Hello::Lost("count mismatch".into())
            }
            "new" if !had => {
                fresh(self);
                Hello::New
            }
            other => {
                fresh(self);
                Hello::Lost(other.strip_prefix("lost:").unwrap_or(other).to_owned())
            }
        }
    }

    /// Forget the session: the application closed the client or asked for a new
    /// link, so it knows. (A close from the server keeps it: the next hello then says
    /// the state is lost, and the application hears so.)
    pub fn end(&mut self) {
        *self = Session::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_is_told_from_data() {
        assert_eq!(classify("x"), Control::Data("x"));
        assert_eq!(classify("\0\0x"), Control::Data("\0x"));
        assert_eq!(classify("\0ack 3"), Control::Ack(3));
        assert_eq!(
            classify("\0hello abc 7 lost:expired"),
            Control::Hello {
                credential: "abc",
                received: 7,
                state: "lost:expired"
            }
        );
        assert_eq!(classify("\0pong"), Control::Other);
        assert_eq!(escape(Message::text("\0x")), Message::text("\0\0x"));
        assert_eq!(escape(Message::text("x")), Message::text("x"));
    }

    #[test]
    fn resume_replays_what_the_gateway_lacks() {
        let mut s = Session::default();
        assert_eq!(s.offer(), SUBPROTOCOL);
        assert_eq!(s.hello("c1", 0, "new"), Hello::New);
        for i in 0..5 {
            s.sent(Message::text(i.to_string()));
        }
        s.acked(2);
        s.received = 9;
        assert_eq!(s.offer(), format!("{SUBPROTOCOL}, {SUBPROTOCOL}.c1.9"));
        assert_eq!(
            s.hello("c2", 3, "resumed"),
            Hello::Resumed(vec![Message::text("3"), Message::text("4")])
        );
        assert_eq!(
            s.hello("c3", 9, "resumed"),
            Hello::Lost("count mismatch".into())
        );
        assert_eq!(s.received, 0);
        assert_eq!(
            s.hello("c4", 0, "lost:expired"),
            Hello::Lost("expired".into())
        );
    }
}
