//! What every task of one gateway shares: the live config snapshot, the
//! metrics, the connection caps, the root of the cancellation tree and the
//! tracker of upgraded connections.
//!
//! It sits below `gateway` (which creates and changes it: start, reload,
//! shutdown), `conn` and `admin` (which read it), so none of them imports
//! another's state. Each piece has one owner and one primitive, chosen on
//! purpose:
//! - the snapshot is an `ArcSwap`: read on every request, swapped whole on
//!   reload (parse, validate, build, then one store);
//! - caps are atomics and a short mutex, taken as Drop guards (`caps`);
//! - shutdown and drain travel down cancellation tokens (root -> backend);
//! - upgraded connections run in a `TaskTracker`, so shutdown can wait for
//!   them after hyper has forgotten them at the 101.

pub mod affinity;
pub mod caps;
pub mod routes;
pub mod snapshot;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::Cluster;
use crate::metrics::Metrics;
use crate::resume::Registry;
use caps::Caps;
pub use snapshot::{BuildError, Snapshot};

pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Arc<Metrics>,
    /// Root of the cancellation tree: shutdown.
    pub shutdown: CancellationToken,
    /// Upgraded connections, awaited by shutdown.
    pub tracker: TaskTracker,
    /// Ends the accept loops (a child of `shutdown`). Shutdown cancels it
    /// first and waits for `listening` to empty, so the listening sockets
    /// are closed before any connection is told 1001: a client reconnecting
    /// at once is refused here (and retries, or reaches a new process on
    /// the same port) instead of landing in a backlog about to be reset.
    pub stop_listening: CancellationToken,
    /// The accept loops; each owns its listening socket.
    pub listening: TaskTracker,
    /// False once shutdown starts: `/readyz` answers 503.
    pub accepting: AtomicBool,
    pub caps: Arc<Caps>,
    /// TCP connections accepted since start (activity, for housekeeping).
    pub accepted: AtomicU64,
    /// Cancels the current snapshot's health-check tasks on reload.
    pub health: Mutex<CancellationToken>,
    /// Serialises reloads (SIGHUP and tests) so two never interleave.
    pub reload_lock: Mutex<()>,
    /// Live resumable sessions, by credential (shared by every shard).
    pub resume: Arc<Registry>,
    /// The cluster (`[cluster]` on), set once at start.
    pub cluster: OnceLock<Arc<Cluster>>,
}

impl Shared {
    pub fn new(snapshot: Snapshot, metrics: Arc<Metrics>, shutdown: CancellationToken) -> Shared {
        Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            health: Mutex::new(shutdown.child_token()),
            stop_listening: shutdown.child_token(),
            listening: TaskTracker::new(),
            shutdown,
            tracker: TaskTracker::new(),
            accepting: AtomicBool::new(true),
            caps: Arc::default(),
            accepted: AtomicU64::new(0),
            reload_lock: Mutex::new(()),
            resume: Arc::default(),
            cluster: OnceLock::new(),
        }
    }

    /// Whether `/readyz` is 200: accepting and at least one backend routable.
    pub fn ready(&self) -> bool {
        self.accepting.load(Ordering::Relaxed) && self.snapshot.load().any_routable()
    }

    /// The token under which the current snapshot's health checks run.
    pub fn health_token(&self) -> CancellationToken {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
