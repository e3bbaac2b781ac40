//! wsgate: a WebSocket gateway. One binary, one TOML file.
//!
//! # Layout
//!
//! The path of one connection, module by module:
//!
//! ```text
//! server (accept, caps, TLS) -> proxy (phases) -> handshake (RFC 6455, Origin, client ID)
//!   -> auth (JWT / forward / first message) -> routing (hash ring) -> upstream (dial + upgrade)
//!   -> relay (frames, heartbeats, limits, close codes) -> metrics + access log
//! ```
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | the TOML schema, defaults, durations, errors with key and line |
//! | [`server`] | listeners, accept loop, connection caps, config snapshot, reload, shutdown |
//! | [`proxy`] | the phases of one connection: admit, pick, dial, 101, relay, finish |
//! | [`tls`] | rustls server and client configs; the socket type |
//! | [`handshake`] | upgrade validation, Origin allow-list, client ID sources |
//! | [`auth`] | JWT and forward auth, token sources |
//! | [`routing`] | the consistent-hash ring with bounded loads (pure) |
//! | [`upstream`] | backend state and dialing |
//! | [`health`] | active HTTP and WebSocket health checks |
//! | [`relay`] | the per-connection frame pump (the hot path) |
//! | [`frame`] | RFC 6455 frame headers, masking, UTF-8, control frames (pure) |
//! | [`admin`] | /metrics, /healthz, /readyz, /backends, drain |
//! | [`metrics`] | the registry and typed metric handles |
//! | [`error`] | sides, close codes, refusals and their HTTP statuses |
//! | [`demo`] | the echo backends of `wsgate demo` |
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod config;
pub mod demo;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod health;
pub mod metrics;
pub mod proxy;
pub mod relay;
pub mod routing;
pub mod server;
pub mod tls;
pub mod upstream;

pub use config::Config;
pub use server::Gateway;
