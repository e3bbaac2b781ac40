//! # wsgate-client
//!
//! An async, reconnecting WebSocket client (tokio + tokio-tungstenite 0.30) that follows
//! wsgate's client rules (SPEC "Close-code policy for clients"):
//!
//! - **Backoff**: `delay = min(cap, base * 2^n) * (0.5 + random())`, base 1 s, cap 30 s,
//!   a fresh draw per attempt; reset after a connection stayed open `reset_after` (5 s);
//!   after `max_retries` (10) failed reconnects in a row the client stops and reports.
//! - **Close codes decide** ([`classify`]): 1000 ends quietly; 1002/1007/1009, 4001,
//!   4008 and HTTP 401/403 stop and report; 4001 "token expired" fetches a fresh token
//!   and reconnects at once, once; 1008/1013/4029 use the long backoff (from half the
//!   cap); 1001/1006/1011/1012/1014 the normal one; other 4xxx ask the application.
//! - **1014 is seen as 1014.** tungstenite 0.30 turns a received 1014 (and any code it
//!   considers reserved) into 1002 "Protocol violation". The client reads the server's
//!   close frame off the wire itself (a passive frame-header parser wrapped around the
//!   TCP stream) and reports the code and reason the server actually sent. tungstenite
//!   still answers such a frame with 1002; that reply is cosmetic.
//! - **Application heartbeat**: `{"type":"ping"}` after 30 s of silence; nothing within
//!   10 s = dead link, dropped and reconnected; `{"type":"pong"}` is swallowed.
//! - **Bounded queue** (count and bytes; Reject or DropOldest), flushed in order on open,
//!   inspectable and clearable; **write backpressure** with high/low water marks.
//! - **Token provider** called before every attempt; the token goes in a query
//!   parameter, a header, or the first message; a refused token is never offered again.
//! - **State** as a stream of changes: `Connecting`, `Open`, `Reconnecting { attempt,
//!   delay }`, `Closed { reason }`.
//!
//! ```no_run
//! use std::time::Duration;
//! use wsgate_client::{Client, TokenPlacement, Message};
//!
//! # async fn demo() {
//! let builder = Client::builder("ws://127.0.0.1:8080/chat")
//!     .token_provider(TokenPlacement::Query("token".into()), |ctx: wsgate_client::TokenContext| async move {
//!         let _ = ctx.refresh; // true after 4001 "token expired": do not use a cached token
//!         Ok::<_, wsgate_client::BoxError>("my-token".to_string())
//!     })
//!     .backoff(Duration::from_secs(1), Duration::from_secs(30));
//! let mut states = builder.state_changes();
//! let (client, mut incoming) = builder.connect();
//! client.send("hello").unwrap();
//! tokio::spawn(async move { while let Ok(s) = states.recv().await { println!("{s:?}") } });
//! while let Some(Message::Text(t)) = incoming.recv().await {
//!     println!("got {t}");
//! }
//! println!("stopped: {:?}", client.wait_closed().await);
//! # }
//! ```

#![warn(missing_docs)]

mod backoff;
mod client;
mod policy;
mod queue;
mod resume;
mod sniff;
mod transport;

pub use backoff::{Backoff, RandomSource, default_random};
pub use client::{
    BoxError, Client, ClientBuilder, CloseReason, Heartbeat, Incoming, Message, SendError, State,
    TokenContext, TokenFuture, TokenPlacement, TokenProvider,
};
pub use policy::{Action, CloseDecision, Disconnect, classify, is_token_expired};
pub use queue::{Overflow, QueueInfo, QueueLimits};
#[cfg(feature = "rustls-tls")]
pub use tokio_rustls::rustls;
pub use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
pub use tokio_tungstenite::tungstenite::{Bytes, Utf8Bytes};
#[cfg(feature = "rustls-tls")]
pub use transport::default_tls_config;
