//! The resume wire format (see the module doc): the subprotocol offer, the
//! control messages and the escaping of app texts that start with NUL.
//! Pure: bytes in, values out.

/// The subprotocol a client offers to ask for a resumable session.
pub const SUBPROTOCOL: &str = "wsgate.resume.v1";
/// A resume offer: `wsgate.resume.v1.<credential>.<received>`.
const RESUME_PREFIX: &str = "wsgate.resume.v1.";
/// First byte of every control message.
pub const CONTROL: u8 = 0;
/// Hex digits of a credential (192 bits).
pub const CREDENTIAL_HEX: usize = 48;

/// What the client's `Sec-WebSocket-Protocol` offer says about resume.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Offer {
    /// `wsgate.resume.v1` was offered.
    pub wanted: bool,
    /// A session to resume, and how many data messages the client received.
    pub resume: Option<(String, u64)>,
    /// The other subprotocols, in order, for the backend.
    pub rest: Vec<String>,
}

impl Offer {
    /// Splits the values of every `Sec-WebSocket-Protocol` header.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Offer {
        let mut offer = Offer::default();
        for token in values
            .into_iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            if token == SUBPROTOCOL {
                offer.wanted = true;
            } else if let Some(rest) = token.strip_prefix(RESUME_PREFIX) {
                // A malformed resume offer is dropped, never forwarded: it
                // may hold a credential.
                if let Some((cred, n)) = rest.split_once('.')
                    && let Ok(n) = n.parse::<u64>()
                {
                    offer.resume = Some((cred.to_string(), n));
                }
            } else {
                offer.rest.push(token.to_string());
            }
        }
        offer
    }
}

/// The state a hello reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloState {
    New,
    Resumed,
    Lost(&'static str),
}

/// `\0hello <credential> <received> <state>`.
pub fn hello(credential: &str, received: u64, state: HelloState) -> String {
    let state = match state {
        HelloState::New => "new".to_string(),
        HelloState::Resumed => "resumed".to_string(),
        HelloState::Lost(why) => format!("lost:{why}"),
    };
    format!("\0hello {credential} {received} {state}")
}

/// `\0ack <n>`.
pub fn ack(n: u64) -> String {
    format!("\0ack {n}")
}

/// The answer to `\0ping`.
pub const PONG: &str = "\0pong";

/// A text message as the receiver's side sees it.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// App data (unescaped).
    Data(&'a str),
    /// `\0ack <n>`.
    Ack(u64),
    /// `\0ping`: a client's heartbeat, answered with `\0pong`.
    Ping,
    /// A control message this side does not know: ignored.
    Other,
}

/// Classifies a text message received on a resumable link.
pub fn classify(text: &str) -> Incoming<'_> {
    let Some(rest) = text.strip_prefix('\0') else {
        return Incoming::Data(text);
    };
    if rest.starts_with('\0') {
        return Incoming::Data(rest);
    }
    if rest == "ping" {
        return Incoming::Ping;
    }
    match rest.strip_prefix("ack ").map(str::parse::<u64>) {
        Some(Ok(n)) => Incoming::Ack(n),
        _ => Incoming::Other,
    }
}

/// Whether an app text must be escaped (it starts with NUL).
pub fn needs_escape(text: &str) -> bool {
    text.as_bytes().first() == Some(&CONTROL)
}

/// An app text as it goes on a resumable link.
pub fn escape(text: &str) -> String {
    format!("\0{text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offer_splits_resume_from_app_subprotocols() {
        let o = Offer::parse(["chat, wsgate.resume.v1", "wsgate.resume.v1.abcd.17,v2"]);
        assert!(o.wanted);
        assert_eq!(o.resume, Some(("abcd".to_string(), 17)));
        assert_eq!(o.rest, ["chat", "v2"]);
        let plain = Offer::parse(["chat"]);
        assert!(!plain.wanted && plain.resume.is_none());
        let bad = Offer::parse(["wsgate.resume.v1.abcd.x"]);
        assert!(bad.resume.is_none() && bad.rest.is_empty());
    }

    #[test]
    fn control_and_escaped_data_are_told_apart() {
        assert_eq!(classify("hi"), Incoming::Data("hi"));
        assert_eq!(classify("\0ack 5"), Incoming::Ack(5));
        assert_eq!(classify("\0ack x"), Incoming::Other);
        assert_eq!(classify("\0ping"), Incoming::Ping);
        let app = "\0ack 5";
        assert!(needs_escape(app));
        assert_eq!(classify(&escape(app)), Incoming::Data(app));
        assert_eq!(classify(&escape("\0")), Incoming::Data("\0"));
        assert_eq!(
            hello("c", 3, HelloState::Lost("expired")),
            "\0hello c 3 lost:expired"
        );
    }
}
