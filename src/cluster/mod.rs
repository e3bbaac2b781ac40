//! Many gateways, one system, on Redis: presence of client IDs, commands
//! that reach a client wherever it is connected (disconnect, send, topics),
//! topic broadcasts and a cap on connections per client ID across gateways.
//! Off unless `[cluster] redis_url` is set.
//!
//! Redis crate: `redis` (redis-rs) with its tokio multiplexed connection
//! and async pub/sub. It is the most used and best kept Rust client (the
//! Redis project's own), supports `rediss://` over rustls (the TLS stack
//! the gateway already links) and ACL users in the URL, and its
//! multiplexed connection pipelines commands from many callers over one
//! socket in order, which is what keeps per-topic publish order. Its
//! connection manager is not used: reconnection is ours (below), because a
//! reconnect must also re-subscribe and re-publish presence.
//!
//! Rooms:
//! - `registry`: this gateway's live connections by ID and topic (memory
//!   only; the connection path touches nothing else);
//! - `link`: the one cluster task: the Redis connection with backoff and
//!   jitter, presence mirroring, the per-client cap, pub/sub delivery;
//! - `wire`: the JSON on the channels; `admin`: the HTTP API;
//!   `metrics`: the `wsgate_cluster_*` metrics.
//!
//! Redis layout (`P` = `key_prefix`):
//!
//! | key / channel | what |
//! |---|---|
//! | `P nodes` (sorted set) | live gateways: member `node/incarnation`, score = last refresh (Unix ms) |
//! | `P node:NODE` (hash) | that gateway's client IDs -> `{backend, since_ms, connections}`; expires `presence_ttl` after the last refresh |
//! | `P conns:ID` (sorted set) | the connections of a client ID (`node/incarnation/conn`, score = start), for the cap |
//! | `P cmd:NODE` (channel) | commands to one gateway |
//! | `P topic:NAME` (channel) | messages to a topic (each gateway pattern-subscribes `P topic:*`) |
//!
//! Redis pub/sub is at most once and reaches only connected subscribers:
//! a command published while a gateway is cut off from Redis is lost for
//! that gateway. A Redis outage is a degraded mode, never a reason to drop
//! a socket: connections keep relaying, the admin API answers 503.

pub mod admin;
pub mod link;
pub mod metrics;
pub mod registry;
pub mod wire;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::cluster::ClusterConfig;
use metrics::ClusterMetrics;
use registry::{Event, Registry};

/// Close code for a connection closed because its client ID went over
/// `max_connections_per_client` (the oldest connections are closed).
pub const CAP_CLOSE_CODE: u16 = 4009;
pub const CAP_CLOSE_REASON: &str = "too many connections for this client ID";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("config key `cluster.redis_url`: {0}")]
    Url(#[from] redis::RedisError),
    #[error("config key `cluster.redis_ca`: {0}")]
    Ca(String),
    #[error("cluster metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Why a cluster command cannot be served now (HTTP 503).
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("cluster unavailable: not connected to Redis")]
    Down,
    #[error("cluster unavailable: the Redis pub/sub connection closed")]
    PubSubClosed,
    #[error("cluster unavailable: Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cluster unavailable: Redis error: {0}")]
    Redis(#[from] redis::RedisError),
}

/// The cluster as the rest of the gateway sees it. Built at start from
/// `[cluster]` (a reload does not change it: restart to change it).
pub struct Cluster {
    pub node: String,
    /// Random per process: tells this run of `node` from an earlier one.
    pub incarnation: String,
    pub prefix: String,
    pub cap: usize,
    pub ttl: Duration,
    pub command_timeout: Duration,
    pub registry: Arc<Registry>,
    pub metrics: ClusterMetrics,
    client: redis::Client,
    /// The command connection while Redis is up (cloned per call).
    conn: Mutex<Option<MultiplexedConnection>>,
    up: AtomicBool,
    events: Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
}

impl Cluster {
    pub fn new(
        config: &ClusterConfig,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let client = redis_client(config)?;
        let (registry, events) = Registry::new();
        Ok(Arc::new(Cluster {
            node: config.node_name(),
            incarnation: format!("{:08x}", fastrand::u32(..)),
            prefix: config.key_prefix.clone(),
            cap: config.max_connections_per_client,
            ttl: config.presence_ttl.get(),
            command_timeout: config.command_timeout.get(),
            registry,
            metrics: ClusterMetrics::new(metrics.registry())?,
            client,
            conn: Mutex::new(None),
            up: AtomicBool::new(false),
            events: Mutex::new(Some(events)),
        }))
    }

    /// Starts the cluster task on the current runtime; it ends with
    /// `shutdown`, withdrawing this gateway's presence.
    pub fn spawn(self: &Arc<Self>, shutdown: CancellationToken) {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(events) = events {
            tokio::spawn(link::run(self.clone(), events, shutdown));
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn set_conn(&self, conn: Option<MultiplexedConnection>) {
        let up = conn.is_some();
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = conn;
        self.up.store(up, Ordering::Relaxed);
        self.metrics.up.set(up as i64);
    }

    /// A handle on the command connection, if Redis is up.
    pub fn connection(&self) -> Result<MultiplexedConnection, Unavailable> {
        self.conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(Unavailable::Down)
    }

    /// Runs one Redis call under `command_timeout`.
    pub async fn call<T, F>(&self, f: F) -> Result<T, Unavailable>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(self.command_timeout, f).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(Unavailable::Timeout(self.command_timeout)),
        }
    }

    pub fn key_nodes(&self) -> String {
        format!("{}nodes", self.prefix)
    }
    pub fn key_node(&self, node: &str) -> String {
        format!("{}node:{node}", self.prefix)
    }
    pub fn key_conns(&self, client_id: &str) -> String {
        format!("{}conns:{client_id}", self.prefix)
    }
    pub fn channel_cmd(&self, node: &str) -> String {
        format!("{}cmd:{node}", self.prefix)
    }
    pub fn channel_topic(&self, topic: &str) -> String {
        format!("{}topic:{topic}", self.prefix)
    }
    /// This gateway as a member of `nodes`.
    pub fn member(&self) -> String {
        format!("{}/{}", self.node, self.incarnation)
    }

    /// The gateways refreshed within `presence_ttl`: `node/incarnation`.
    pub async fn live_nodes(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> Result<Vec<String>, Unavailable> {
        let min = registry::now_ms().saturating_sub(self.ttl.as_millis() as u64);
        self.call(
            redis::cmd("ZRANGEBYSCORE")
                .arg(self.key_nodes())
                .arg(min)
                .arg("+inf")
                .query_async(conn),
        )
        .await
    }
}

/// The Redis client of `[cluster]`: the URL, and with `redis_ca` the CA
/// bundle read (and checked to hold a certificate) now, so `wsgate check`,
/// the start and a bad file all fail the same way.
pub fn redis_client(c: &ClusterConfig) -> Result<redis::Client, ClusterError> {
    if c.redis_ca.is_empty() {
        return Ok(redis::Client::open(c.redis_url.as_str())?);
    }
    let pem = std::fs::read(&c.redis_ca)
        .map_err(|e| ClusterError::Ca(format!("cannot read {}: {e}", c.redis_ca)))?;
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    if !CertificateDer::pem_slice_iter(&pem).any(|c| c.is_ok()) {
        return Err(ClusterError::Ca(format!(
            "{} holds no PEM certificate",
            c.redis_ca
        )));
    }
    let certs = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    };
    Ok(redis::Client::build_with_tls(c.redis_url.as_str(), certs)?)
}

/// `node/incarnation` -> `node`.
pub fn node_of(member: &str) -> &str {
    member.split('/').next().unwrap_or(member)
}
