//! The cluster's metrics, registered into the gateway's registry only when
//! `[cluster]` is on. Every label value is from a closed set here.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// An admin command of the cluster API (`command` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    Lookup,
    Disconnect,
    Send,
    Topics,
    Publish,
}

impl Cmd {
    pub const ALL: [Cmd; 5] = [
        Cmd::Lookup,
        Cmd::Disconnect,
        Cmd::Send,
        Cmd::Topics,
        Cmd::Publish,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Cmd::Lookup => "lookup",
            Cmd::Disconnect => "disconnect",
            Cmd::Send => "send",
            Cmd::Topics => "topics",
            Cmd::Publish => "publish",
        }
    }
}

/// How an admin command ended (`result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmdResult {
    Ok,
    NotFound,
    Invalid,
    Unavailable,
}

impl CmdResult {
    pub const ALL: [CmdResult; 4] = [
        CmdResult::Ok,
        CmdResult::NotFound,
        CmdResult::Invalid,
        CmdResult::Unavailable,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CmdResult::Ok => "ok",
            CmdResult::NotFound => "not_found",
            CmdResult::Invalid => "invalid",
            CmdResult::Unavailable => "unavailable",
        }
    }
}

#[derive(Clone)]
pub struct ClusterMetrics {
    pub up: IntGauge,
    commands: IntCounterVec,
    /// PUBLISH calls to Redis by channel kind (`node`, `topic`).
    pub publish_node: IntCounter,
    pub publish_topic: IntCounter,
    /// Pushes handed to a connection's queue, and those dropped (full).
    pub delivered: IntCounter,
    pub dropped: IntCounter,
    /// Publish to hand-off into the local connections' queues.
    pub delivery_seconds: Histogram,
    pub connects_ok: IntCounter,
    pub connects_error: IntCounter,
}

const DELIVERY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

fn reg<M: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    m: Result<M, prometheus::Error>,
) -> Result<M, prometheus::Error> {
    let m = m?;
    r.register(Box::new(m.clone()))?;
    Ok(m)
}

impl ClusterMetrics {
    /// Registers the cluster metrics. Fails only if they are registered
    /// twice in one registry (one cluster per gateway).
    pub fn new(r: &Registry) -> Result<ClusterMetrics, prometheus::Error> {
        let up = reg(
            r,
            IntGauge::new(
                "wsgate_cluster_up",
                "1 while this gateway is connected to Redis (cluster features available)",
            ),
        )?;
        let commands = reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "wsgate_cluster_commands_total",
                    "Cluster admin commands by command and result",
                ),
                &["command", "result"],
            ),
        )?;
        for c in Cmd::ALL {
            for res in CmdResult::ALL {
                commands.with_label_values(&[c.label(), res.label()]);
            }
        }
        let publishes = reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "wsgate_cluster_publishes_total",
                    "Messages this gateway published to Redis, by channel kind",
                ),
                &["channel"],
            ),
        )?;
        let deliveries = reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "wsgate_cluster_deliveries_total",
                    "Pushes to local connections: delivered to the connection's queue, or dropped (queue full)",
                ),
                &["result"],
            ),
        )?;
        let delivery_seconds = reg(
            r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "wsgate_cluster_delivery_seconds",
                    "From publish (admin API) to hand-off to this gateway's connections",
                )
                .buckets(DELIVERY_BUCKETS.to_vec()),
            ),
        )?;
        let connects = reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "wsgate_cluster_redis_connects_total",
                    "Attempts to (re)connect to Redis by result",
                ),
                &["result"],
            ),
        )?;
        Ok(ClusterMetrics {
            up,
            commands,
            publish_node: publishes.with_label_values(&["node"]),
            publish_topic: publishes.with_label_values(&["topic"]),
            delivered: deliveries.with_label_values(&["delivered"]),
            dropped: deliveries.with_label_values(&["dropped"]),
            delivery_seconds,
            connects_ok: connects.with_label_values(&["ok"]),
            connects_error: connects.with_label_values(&["error"]),
        })
    }

    pub fn command(&self, c: Cmd, r: CmdResult) {
        self.commands
            .with_label_values(&[c.label(), r.label()])
            .inc();
    }
}
