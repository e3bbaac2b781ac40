//! The WebSocket protocol itself (RFC 6455), as pure functions over bytes:
//! frame headers and masking, close codes and close payloads, incremental
//! UTF-8 validation. No I/O, no allocation, no policy: what a frame means
//! for a connection is the relay's business.

pub mod close;
pub mod frame;
pub mod utf8;
