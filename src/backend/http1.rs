//! The one HTTP/1.1 client exchange the gateway makes toward other servers
//! outside proxying: a single request on a fresh connection, through
//! hyper's client. Used by the HTTP health check and forward auth (the
//! upgrade toward a backend has its own lean exchange, `upgrade`).
//!
//! hyper's connection future must be polled for the response to arrive,
//! and it may finish before the response future is polled again; that is
//! not a failure. `send` drives both together on the
//! caller's task (no extra task per request) and hands back what is left.

use std::future::Future;
use std::pin::{Pin, pin};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// A socket the client speaks over.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> ClientIo for T {}

/// hyper's connection future (its type is not nameable).
type Conn = Pin<Box<dyn Future<Output = Result<(), hyper::Error>> + Send>>;

/// A response head, and the connection it came on.
pub struct Exchange {
    response: Response<Incoming>,
    /// `None` once the connection future has finished (its result was
    /// checked: an error would have failed the response too).
    conn: Option<Conn>,
}

/// Sends `req` as the only request on a new HTTP/1.1 connection over `io`
/// and waits for the response head.
pub async fn send<I: ClientIo>(
    io: I,
    req: Request<Empty<Bytes>>,
) -> Result<Exchange, hyper::Error> {
    let (mut sender, conn) = http1::Builder::new()
        .handshake::<_, Empty<Bytes>>(TokioIo::new(io))
        .await?;
    let mut conn: Conn = Box::pin(conn);
    let mut send = pin!(sender.send_request(req));
    let mut conn_done = false;
    let response = loop {
        tokio::select! {
            r = &mut send => break r?,
            r = &mut conn, if !conn_done => {
                r?;
                conn_done = true;
            }
        }
    };
    Ok(Exchange {
        response,
        conn: (!conn_done).then_some(conn),
    })
}

impl Exchange {
    pub fn response(&self) -> &Response<Incoming> {
        &self.response
    }

    /// The response head alone; the connection is closed.
    pub fn into_response(self) -> Response<Incoming> {
        self.response
    }

    /// The head and at most `limit` bytes of the body (a refusal's text),
    /// driving the connection meanwhile. A body that fails or is cut short
    /// reads as what arrived, or empty.
    pub async fn into_body(self, limit: usize) -> (hyper::http::response::Parts, Bytes) {
        let (parts, body) = self.response.into_parts();
        let mut collect = pin!(Limited::new(body, limit).collect());
        let mut conn = self.conn;
        let body = loop {
            tokio::select! {
                b = &mut collect => break b.map(|b| b.to_bytes()).unwrap_or_default(),
                _ = async { conn.as_mut().expect("guarded").await }, if conn.is_some() => conn = None,
            }
        };
        (parts, body)
    }
}
