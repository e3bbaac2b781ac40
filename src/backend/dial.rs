//! Dialing a backend: TCP (with TCP_NODELAY), TLS for wss://, then the
//! WebSocket upgrade (`upgrade`: one head out, one head in). A 101 is
//! checked (RFC 6455 section 4.1: the accept key must match); any other
//! answer is handed back for the client to see.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::Full;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_util::either::Either;

use crate::backend::Backend;
use crate::backend::upgrade::{self, WireError};
use crate::config::BackendUrl;
use crate::tls::{self, Stream};

/// Body of a refused upgrade passed back to the client, at most this big.
const MAX_REFUSAL_BODY: usize = 16 * 1024;

/// Why a dial failed (before any 101).
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with {host}: {source}")]
    Tls {
        host: String,
        source: std::io::Error,
    },
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    #[error("upgrade exchange failed: {0}")]
    Exchange(#[from] WireError),
    #[error("backend answered 101 with a wrong Sec-WebSocket-Accept")]
    BadAccept,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// A backend that accepted the upgrade.
/// The backend's 101 header naming the topics of the new connection.
pub const TOPICS_HEADER: &str = "wsgate-topics";

pub struct Upgraded {
    pub io: Stream,
    /// Bytes hyper read past the 101 (frames the backend sent at once).
    pub pre: Bytes,
    /// The backend's 101 headers the client must see: the chosen
    /// subprotocol and extensions.
    pub protocol: Option<HeaderValue>,
    pub extensions: Option<HeaderValue>,
    /// `Wsgate-Topics`: the topics the backend subscribes this connection
    /// to (cluster); never passed on to the client.
    pub topics: Option<HeaderValue>,
}

/// What the backend said to the upgrade.
pub enum Dialed {
    Upgraded(Upgraded),
    /// A non-101 answer (401, 404, ...), passed to the client as is.
    Refused(Response<Full<Bytes>>),
}

/// Opens TCP (+TLS) to `url`, with TCP_NODELAY: frames are small and
/// latency-sensitive, and the relay already batches what it writes.
pub async fn connect(
    url: &BackendUrl,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Stream, DialError> {
    let addr = format!("{}:{}", url.host, url.port);
    let tcp = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|source| DialError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    match tls {
        None => Ok(Either::Left(tcp)),
        Some(cfg) => {
            let name = tls::server_name(&url.host)
                .ok_or_else(|| DialError::ServerName(url.host.clone()))?;
            let s = tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(name, tcp)
                .await
                .map_err(|source| DialError::Tls {
                    host: url.host.clone(),
                    source,
                })?;
            Ok(Either::Right(Box::new(tokio_rustls::TlsStream::Client(s))))
        }
    }
}

/// Dials `backend` and sends it the upgrade `headers` for `path_and_query`,
/// all within `timeout`.
pub async fn dial(
    backend: &Backend,
    path_and_query: &str,
    headers: HeaderMap,
    timeout: Duration,
) -> Result<Dialed, DialError> {
    tokio::time::timeout(timeout, upgrade(backend, path_and_query, headers))
        .await
        .map_err(|_| DialError::Timeout(timeout))?
}

async fn upgrade(
    backend: &Backend,
    path_and_query: &str,
    headers: HeaderMap,
) -> Result<Dialed, DialError> {
    let mut io = connect(&backend.url, backend.tls()).await?;
    let expected = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()));
    let target = format!("{}{}", backend.url.prefix, path_and_query);
    upgrade::send_request(&mut io, &target, &headers).await?;
    let mut buf = BytesMut::new();
    let head = upgrade::read_head(&mut io, &mut buf).await?;
    if head.status != StatusCode::SWITCHING_PROTOCOLS {
        let body = upgrade::read_body(&mut io, buf, &head, MAX_REFUSAL_BODY).await;
        let mut out = Response::new(Full::new(body));
        *out.status_mut() = head.status;
        for name in [
            header::CONTENT_TYPE,
            header::WWW_AUTHENTICATE,
            header::RETRY_AFTER,
            header::LOCATION,
        ] {
            if let Some(v) = head.headers.get(&name) {
                out.headers_mut().insert(name, v.clone());
            }
        }
        return Ok(Dialed::Refused(out));
    }
    let mut h = head.headers;
    let accept = h.get(header::SEC_WEBSOCKET_ACCEPT);
    if accept.map(|v| v.as_bytes()) != expected.as_ref().map(|e| e.as_bytes()) {
        return Err(DialError::BadAccept);
    }
    // Frames the backend sent right behind its 101; usually none, and then
    // the read buffer is not kept.
    let pre = if buf.is_empty() {
        Bytes::new()
    } else {
        buf.freeze()
    };
    Ok(Dialed::Upgraded(Upgraded {
        io,
        pre,
        protocol: h.remove(header::SEC_WEBSOCKET_PROTOCOL),
        extensions: h.remove(header::SEC_WEBSOCKET_EXTENSIONS),
        topics: h.remove(TOPICS_HEADER),
    }))
}
