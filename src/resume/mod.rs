//! Lossless reconnect ("resume", issue 16): the gateway holds the backend
//! link through a client's blip and each side replays what the other has
//! not acknowledged. The backend never hears of it.
//!
//! # Design
//!
//! **Opt-in, per connection.** A client asks for a resumable session by
//! offering the extra subprotocol `wsgate.resume.v1` in
//! `Sec-WebSocket-Protocol`; to resume, it also offers
//! `wsgate.resume.v1.<credential>.<received>`. With `[resume] enabled` the
//! gateway removes both before dialing, so the other subprotocols the app
//! offers are negotiated end to end and the backend sees exactly what a
//! plain client would have sent. A client that offers neither is untouched,
//! byte for byte: it takes the usual relay (`relay`), and
//! `conn::task::Connection` does not grow. With `enabled = false` the offer
//! is not looked at, and reaches the backend like any other subprotocol.
//!
//! **Control versus data.** Session control travels as text messages whose
//! first byte is NUL (`\0`). An app's text message that starts with NUL is
//! escaped by its sender with one more NUL, and unescaped by the receiver;
//! every other message (all binary ones, all other texts) goes as it is. So
//! control is recognised by one byte compare, never reaches the app's
//! handler (the client library) nor the backend (the gateway), and data
//! costs nothing more. The control messages ([`wire`]):
//! - `\0hello <credential> <received> <state>`, gateway to client, always
//!   the first message of a resumable link: the credential for the next
//!   reconnect, how many client data messages the gateway has received in
//!   this session, and `new`, `resumed`, or `lost:<reason>` (a resume was
//!   asked for and is impossible: this is a fresh session, and the library
//!   raises its one "state lost" event).
//! - `\0ack <n>`, both ways: the sender has received `n` data messages of
//!   this session in total (cumulative, so a lost ack costs nothing).
//! - `\0ping`, client to gateway, answered with `\0pong`: the client
//!   library's heartbeat on a resumable link (its app-level ping would be a
//!   data message, numbered and forwarded to the backend).
//!
//! The 101 names the subprotocol the backend chose; if it chose none, it
//! names `wsgate.resume.v1` (the client offered it, and a client that offers
//! subprotocols may fail a 101 that names none, as tungstenite does).
//!
//! **Numbering.** Data messages are numbered implicitly each way: the nth
//! data message since the session began. Nothing is added to them. The
//! gateway keeps what it sent toward the client until the client
//! acknowledges it (at most `max_buffered_bytes`); the client keeps what it
//! sent until the gateway acknowledges it (which means: forwarded to the
//! backend). On reattach, the client says in its offer how many it
//! received, the gateway says in its hello how many it received, and each
//! side sends again everything after that count: exactly once, in order.
//!
//! **When the client vanishes.** Only a link lost without a close frame (EOF,
//! reset, failed write, heartbeat timeout) keeps the session: it waits for
//! `window`, still reading the backend into its buffer. A close frame from
//! the client ends the session as usual. When the window passes, or the
//! buffer would pass `max_buffered_bytes` while the client is away, the
//! backend gets 1001 with the reason (`resume window expired`,
//! `resume buffer overflow`). A later resume with that credential gets
//! `lost:expired` or `lost:overflow` (the gateway remembers ended sessions
//! for one more window, at least a minute), an unknown one `lost:unknown` (never issued,
//! already spent, or issued before a restart), one from another client ID
//! or identity `lost:refused`.
//!
//! **The credential.** 192 bits from the TLS provider's secure random
//! source, hex encoded; a new one in every hello, so each is single use: a
//! spent credential is unknown, and a replayed one cannot take over a live
//! session. It is bound to the client ID and the auth identity (forward
//! auth's headers) of the original upgrade: a resume request passes the
//! same Origin and auth checks as a new upgrade, and then must yield the
//! same client ID and identity. Credentials are never logged (no path or
//! header is logged; the session's log lines name the client ID only).
//!
//! **Where it runs.** A resumable session is its own task ([`session`]),
//! message by message (tungstenite on both sockets), not the byte-level
//! relay: it must count and hold messages, which the relay is built never to
//! do. The shared [`Registry`] maps live credentials to sessions; a
//! reconnect (on any shard) hands its upgraded socket to the session's task.
//!
//! **What a resumable link does not do (yet).** Rate limits and
//! `validate_json` are enforced by the relay only: while either is
//! configured the gateway does not grant resume (it strips the offer, sends
//! no hello, and relays as usual, so the client library sees a plain link).
//! permessage-deflate is not offered to the backend on a resumable link.
//! Heartbeats toward the backend are not sent (the backend's own pings are
//! answered). `app_ping` is not answered by the gateway on a resumable link:
//! an app's ping text there is data like any other.

pub mod registry;
pub mod session;
pub mod wire;

pub use registry::{Lookup, Registry};
pub use session::{SessionStart, start};
pub use wire::{Offer, SUBPROTOCOL};
