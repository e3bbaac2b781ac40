//! The running gateway, the process's view: bind the listeners, start the
//! shards, the admin listener and the health checks; reload; shut down.
//!
//! - `check`: load a config and every file it names (check, run, reload);
//! - `listeners`: sockets, shards and the accept loop;
//! - `reload`: a new config, published as one snapshot.
//!
//! The state all of them touch lives in `state`, below this module.

pub mod check;
pub mod listeners;
pub mod reload;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::backend::checks;
use crate::cluster::Cluster;
use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::state::{BuildError, Shared, Snapshot};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] Box<ConfigError>),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// Shard threads by default: `WSGATE_WORKERS`, else one per core.
pub fn default_shards() -> usize {
    std::env::var("WSGATE_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// A running gateway. Dropping it ends its shards and connections; call
/// [`Gateway::shutdown`] for the graceful way.
pub struct Gateway {
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    admin_addrs: Vec<SocketAddr>,
    admin_tasks: Vec<JoinHandle<()>>,
    /// Ends the shard threads once drained.
    shards_exit: CancellationToken,
}

impl Gateway {
    /// Binds `server.listen` and `admin.listen` (port 0 picks a port) and
    /// starts `shards` accept loops, each on a single-threaded runtime on
    /// its own thread with its own `SO_REUSEPORT` listener per address:
    /// no work stealing and no cross-thread wake-ups on the relay's hot
    /// path. Admin and health checks run on the caller's runtime. Returns
    /// once every shard listens, so the first client is never refused.
    pub async fn bind(config: Config, shards: usize) -> Result<Gateway, StartError> {
        crate::tls::install_default_provider();
        let shards = shards.max(1);
        let mut per_shard: Vec<Vec<tokio::net::TcpSocket>> =
            (0..shards).map(|_| Vec::new()).collect();
        let mut addrs = Vec::new();
        for &addr in &config.server.listen.0 {
            let first = listeners::reuseport_socket(addr)?;
            // With port 0 the first bind picks the port; the others share it.
            let actual = first
                .local_addr()
                .map_err(|source| StartError::Bind { addr, source })?;
            addrs.push(actual);
            per_shard[0].push(first);
            for shard in per_shard.iter_mut().skip(1) {
                shard.push(listeners::reuseport_socket(actual)?);
            }
        }
        let mut admin = Vec::new();
        for &addr in &config.admin.listen.0 {
            admin.push(listeners::listen(addr)?);
        }
        let metrics = Arc::new(Metrics::new());
        let root = CancellationToken::new();
        let snapshot = Snapshot::build(config, None, &root)?;
        let shared = Arc::new(Shared::new(snapshot, metrics, root));
        let cluster_config = &shared.snapshot.load().config.cluster;
        if cluster_config.enabled() {
            // Redis is reached in the background: a gateway starts (and
            // relays) whether or not Redis is up.
            let cluster = Cluster::new(cluster_config, &shared.metrics)?;
            cluster.spawn(shared.shutdown.clone());
            let _ = shared.cluster.set(cluster);
        }
        {
            let snap = shared.snapshot.load();
            checks::spawn(
                snap.health_checks(),
                &shared.metrics,
                &shared.health_token(),
            );
        }
        let admin_addrs = admin.iter().filter_map(|l| l.local_addr().ok()).collect();
        let admin_tasks = admin
            .into_iter()
            .map(|l| tokio::spawn(admin::serve(shared.clone(), l)))
            .collect();
        let gw = Gateway {
            shared,
            addrs,
            admin_addrs,
            admin_tasks,
            shards_exit: CancellationToken::new(),
        };
        let mut listening = Vec::with_capacity(shards);
        for (i, sockets) in per_shard.into_iter().enumerate() {
            let shared = gw.shared.clone();
            let exit = gw.shards_exit.clone();
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name(format!("wsgate-shard-{i}"))
                .spawn(move || listeners::run_shard(shared, sockets, exit, ready_tx))
                .map_err(|source| StartError::Bind {
                    addr: gw.addrs[0],
                    source,
                })?;
            listening.push(ready_rx);
        }
        for ready in listening {
            let failed = match ready.await {
                Ok(Ok(())) => continue,
                Ok(Err(source)) => source,
                Err(_) => std::io::Error::other("a shard thread failed to start"),
            };
            return Err(StartError::Bind {
                addr: gw.addrs[0],
                source: failed,
            });
        }
        Ok(gw)
    }

    /// Addresses of the WebSocket listeners.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Addresses of the admin listeners.
    pub fn admin_addrs(&self) -> &[SocketAddr] {
        &self.admin_addrs
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Applies a new config to new connections. Existing connections keep
    /// theirs, except those to a backend that is gone (closed with 1012).
    /// On error the old config keeps serving. Counts
    /// `wsgate_config_reloads_total` either way.
    pub fn reload(&self, config: Config) -> Result<(), StartError> {
        let result = reload::reload(&self.shared, config);
        self.shared.metrics.reload(result.is_ok());
        Ok(result?)
    }

    /// Graceful shutdown (SPEC): readiness 503, listeners closed, close 1001
    /// to every connection, then wait for them up to `shutdown_grace`.
    pub async fn shutdown(self) {
        /// Bounds the wait for the accept loops (each shard closes its own).
        const LISTENERS_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
        let grace = self
            .shared
            .snapshot
            .load()
            .config
            .server
            .shutdown_grace
            .get();
        self.shared.accepting.store(false, Ordering::Relaxed);
        // Listening sockets first (see `Shared::stop_listening`); an accept
        // loop ends at its next poll, so this wait is short.
        self.shared.stop_listening.cancel();
        self.shared.listening.close();
        let _ = tokio::time::timeout(LISTENERS_CLOSE_WAIT, self.shared.listening.wait()).await;
        self.shared.shutdown.cancel();
        self.shared.tracker.close();
        let drained = tokio::time::timeout(grace, self.shared.tracker.wait())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                remaining = self.shared.tracker.len(),
                "shutdown_grace passed; dropping the rest"
            );
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        for t in &self.admin_tasks {
            t.abort();
        }
        self.shared.shutdown.cancel();
        self.shards_exit.cancel();
    }
}
