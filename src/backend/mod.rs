//! Backends: who they are, their live state, and reaching them.
//!
//! - `health`: the rise/fall state per check and what routing concludes;
//! - `checks`: the active HTTP and WebSocket checks that feed it;
//! - `dial`: TCP, TLS for wss://, and the upgrade;
//! - `upgrade`: the upgrade's request and answer on the wire (dial);
//! - `http1`: the one hyper client exchange (checks, forward auth);
//! - `pool`: the keep-alive client for plain HTTP requests.
//!
//! A `Backend` outlives config reloads that keep it (same name and
//! endpoint), so its health and connection count carry over. Its weight is
//! not here: it belongs to the config snapshot (and its ring), so a reload
//! that changes a weight changes it in one place. The cancellation token
//! ends every connection to it at once (drain, removal).

pub mod checks;
pub mod dial;
pub mod health;
pub mod http1;
pub mod pool;
pub mod upgrade;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

use crate::config::{BackendConfig, BackendUrl};
use crate::metrics::Metrics;
use crate::tls::{self, TlsError};
use health::Health;

/// One backend and its live state.
pub struct Backend {
    pub name: String,
    pub url: BackendUrl,
    /// What the TLS settings were built from: a reload keeps this backend
    /// only if they are the same.
    tls_source: (String, bool),
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Plain HTTP requests, over pooled keep-alive connections: one pool
    /// per shard thread, so a request and the backend connection it uses
    /// run on the same runtime (no cross-thread wake-ups per request).
    http: pool::HttpPool,
    /// A short std mutex: updated by its health task and by passive
    /// failures, never held across `.await`.
    health: Mutex<Health>,
    /// Connections to it now (bounded loads, `/backends`).
    active: AtomicUsize,
    /// Out of routing; its connections are closing (1012).
    pub draining: AtomicBool,
    /// Ends every connection to this backend (drain, removal, shutdown).
    pub cancel: CancellationToken,
}

impl Backend {
    pub fn new(config: &BackendConfig, root: &CancellationToken) -> Result<Backend, TlsError> {
        let tls = if config.url.tls {
            Some(tls::client_config(config)?)
        } else {
            None
        };
        Ok(Backend {
            http: pool::HttpPool::default(),
            name: config.name.clone(),
            url: config.url.clone(),
            tls_source: (config.ca.clone(), config.tls_insecure_skip_verify),
            tls,
            health: Mutex::new(Health::default()),
            active: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            cancel: root.child_token(),
        })
    }

    /// Same name, endpoint and TLS settings: a reload may keep this
    /// backend's state.
    pub fn same_endpoint(&self, c: &BackendConfig) -> bool {
        self.name == c.name
            && self.url == c.url
            && self.tls_source == (c.ca.clone(), c.tls_insecure_skip_verify)
    }

    pub fn tls(&self) -> Option<&Arc<rustls::ClientConfig>> {
        self.tls.as_ref()
    }

    fn health(&self) -> MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connections to it now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Out of the ring at once, and every connection to it closes (1012,
    /// spread over `shutdown_grace` by each relay).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.cancel.cancel();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Counts one connection to this backend until the guard is dropped,
    /// in `active` and in `wsgate_connections_active{backend}`.
    pub fn enter(self: &Arc<Self>, metrics: &Metrics) -> Active {
        self.active.fetch_add(1, Ordering::Relaxed);
        let gauge = metrics.active(&self.name);
        gauge.inc();
        Active {
            backend: self.clone(),
            gauge,
        }
    }
}

/// One connection's place in its backend's counts; released on drop, so a
/// connection that ends any way (even by a panic) gives it back.
pub struct Active {
    backend: Arc<Backend>,
    gauge: prometheus::IntGauge,
}

impl Active {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.backend.active.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}
