//! One upgraded connection for the rest of its life: a future that is the
//! relay plus what `finish` needs (the access-log line, the duration), and
//! the guards that hold its places in the counts until it is dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;

use crate::backend::Active;
use crate::metrics::Metrics;
use crate::relay::{Relay, Report};
use crate::state::caps::Place;
use crate::tls::Stream;

/// Kept small on purpose: it is the per-connection memory of an idle link.
pub struct Connection {
    pub relay: Relay<Stream>,
    /// Its place in the backend's counts; given back as soon as the relay
    /// ends (and on drop, however the task ends).
    pub active: Option<Active>,
    pub peer: SocketAddr,
    /// Empty when the client ID is the peer's IP address (never empty
    /// otherwise): that one is formatted for the log line at the end.
    pub client_id: Box<str>,
    pub started: Instant,
    /// Holds the connection's place under the caps.
    pub place: Arc<Place>,
}

impl Future for Connection {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.relay.poll_relay(cx).is_pending() {
            return Poll::Pending;
        }
        let report = this.relay.report();
        let active = this.active.take();
        finish(
            this.relay.metrics(),
            this.peer,
            &this.client_id,
            active.as_ref().map_or("", |a| a.backend().name.as_str()),
            this.started,
            report,
        );
        drop(active);
        Poll::Ready(())
    }
}

/// The last phase: duration metric and the access-log line. Paths are never
/// logged, so query tokens never are.
fn finish(
    metrics: &Metrics,
    peer: SocketAddr,
    client_id: &str,
    backend: &str,
    started: Instant,
    r: Report,
) {
    let from_peer;
    let client_id = if client_id.is_empty() {
        from_peer = peer.ip().to_string();
        &from_peer
    } else {
        client_id
    };
    let secs = started.elapsed().as_secs_f64();
    metrics.connection_duration.observe(secs);
    tracing::info!(
        target: "wsgate::access",
        peer = %peer,
        client_id,
        backend,
        duration_ms = (secs * 1000.0) as u64,
        c2b_messages = r.client_to_backend.messages,
        c2b_bytes = r.client_to_backend.bytes,
        b2c_messages = r.backend_to_client.messages,
        b2c_bytes = r.backend_to_client.bytes,
        close_code = r.ending.code(),
        initiator = r.ending.initiator().label(),
        reason = r.ending.reason(),
        "connection closed"
    );
}

#[cfg(test)]
mod tests {
    /// The per-connection task is the relay state and a few handles; keep it
    /// under 1 KiB (idle memory target: 2 KiB per proxied connection).
    #[test]
    fn connection_task_is_small() {
        let size = std::mem::size_of::<super::Connection>();
        println!("Connection: {size} bytes");
        assert!(size <= 1024, "Connection is {size} bytes");
    }
}
