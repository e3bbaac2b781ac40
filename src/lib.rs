//! wsgate: a WebSocket gateway. One binary, one TOML file.
//!
//! # Layout
//!
//! The path of one connection, module by module (each arrow a function
//! call with a typed result, not a channel hop):
//!
//! ```text
//! gateway::listeners (accept, caps)
//!   -> conn::serve (TLS, HTTP/1.1) -> conn::handle
//!        plain HTTP: conn::http (route, pick, backend::pool) -> streamed response
//!        admit:   conn::handshake (RFC 6455) -> auth::origin -> auth (jwt | forward)
//!                 -> request (client ID)
//!        pick:    state::routes (pool) -> routing (hash ring) over backend::health
//!        dial:    backend::dial (TCP, TLS, upgrade via backend::http1)
//!        101:     conn::headers; or first: the gateway's own 101 -> auth::first_message -> pick, dial
//!        relay:   conn::task::Connection -> relay (peer, inbound, timers, ending)
//!        finish:  metrics + access log (conn::task)
//! refusals:   conn::reject (before the 101) | relay::ending (after it)
//! ```
//!
//! | module | owns |
//! |---|---|
//! | [`gateway`] | the process: bind, shards, start, reload, shutdown |
//! | [`state`] | what every task shares: config snapshot, caps, cancellation root, tracker |
//! | [`conn`] | one client connection: its phases in order, refusals, the upgraded task |
//! | [`relay`] | the per-connection frame pump (the hot path), and how a connection ends |
//! | [`resume`] | lossless reconnect: resumable sessions, their credentials and wire format |
//! | [`ws`] | RFC 6455 frames, masking, close codes, UTF-8 (pure) |
//! | [`backend`] | backend state, health (rise/fall, checks), dialing, the HTTP client |
//! | [`auth`] | Origin, JWT, forward auth, first-message tokens |
//! | [`cluster`] | many gateways as one on Redis: presence, commands by client ID, topics, per-client cap |
//! | [`routing`] | the consistent-hash ring with bounded loads (pure) |
//! | [`request`] | values from a request head: query, header, cookie, client ID (pure) |
//! | [`config`] | the TOML schema, defaults, validation; errors with key and line |
//! | [`side`] | client / backend / gateway: who a frame or a close belongs to |
//! | [`admin`] | /metrics, /healthz, /readyz, /backends, drain |
//! | [`metrics`] | the registry, typed metric handles, label enums |
//! | [`tls`] | rustls server and client configs; the socket type |
//! | [`demo`] | the echo backends and config of `wsgate demo` |
//!
//! Modules only import downward in this order (no cycles): `gateway` ->
//! `admin`, `conn` -> `state` -> `cluster`, `resume` -> `relay`, `backend`, `auth` -> `routing`,
//! `request`, `ws`, `config`, `metrics`, `side`, `tls`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod backend;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod demo;
pub mod gateway;
pub mod metrics;
pub mod relay;
pub mod request;
pub mod resume;
pub mod routing;
pub mod side;
pub mod state;
pub mod tls;
pub mod ws;

pub use config::Config;
pub use gateway::Gateway;
