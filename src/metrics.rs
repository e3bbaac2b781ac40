//! The Prometheus registry and typed handles for every SPEC metric, so call
//! sites never spell a metric name or a label value.
//!
//! One `Metrics` per gateway instance (not a global), so tests that run
//! several gateways in one process see their own counts. Every label value
//! comes from an enum here or in `side`, or from a backend or route name of
//! the config; never from a client ID, a host or a path.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::side::{Initiator, Side};

/// Why an upgrade request ended the way it did (`wsgate_connections_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnResult {
    Upgraded,
    OriginRejected,
    AuthRejected,
    Overloaded,
    NoBackend,
    BackendError,
    BadRequest,
}

impl ConnResult {
    pub fn label(self) -> &'static str {
        match self {
            ConnResult::Upgraded => "upgraded",
            ConnResult::OriginRejected => "origin_rejected",
            ConnResult::AuthRejected => "auth_rejected",
            ConnResult::Overloaded => "overloaded",
            ConnResult::NoBackend => "no_backend",
            ConnResult::BackendError => "backend_error",
            ConnResult::BadRequest => "bad_request",
        }
    }
}

/// The codes RFC 6455 and IANA define (1000-1015), each its own label.
const RFC_CODE_LABELS: [&str; 16] = [
    "1000", "1001", "1002", "1003", "1004", "1005", "1006", "1007", "1008", "1009", "1010", "1011",
    "1012", "1013", "1014", "1015",
];

/// The `code` label of `wsgate_closes_total`, from a closed set (SPEC,
/// Hardening rules): a peer picks its close code, so a label per code would
/// let any client add thousands of series to every Prometheus that scrapes
/// the gateway. The codes of the SPEC are kept as numbers, the other
/// registered and private ranges are bucketed. A static string: no
/// allocation per close.
pub fn close_code_label(code: u16) -> &'static str {
    use crate::ws::close::code as c;
    match code {
        1000..=1015 => RFC_CODE_LABELS[usize::from(code - 1000)],
        c::AUTH_FAILED => "4001",
        c::AUTH_TIMEOUT => "4008",
        c::RATE_LIMITED => "4029",
        3000..=3999 => "3xxx",
        4000..=4999 => "4xxx",
        _ => "other",
    }
}

/// How one resume attempt, or one waiting session, ended
/// (`wsgate_resume_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeResult {
    /// A client reattached to its session.
    Resumed,
    /// The window passed with no client: the session ended.
    Expired,
    /// More than `max_buffered_bytes` waited for a missing client.
    Overflow,
    /// A credential the gateway does not know (never issued, spent, or
    /// issued before a restart).
    Unknown,
    /// A known credential presented by another client ID or identity, or
    /// with counts the session cannot honour.
    Refused,
}

impl ResumeResult {
    pub const ALL: [ResumeResult; 5] = [
        ResumeResult::Resumed,
        ResumeResult::Expired,
        ResumeResult::Overflow,
        ResumeResult::Unknown,
        ResumeResult::Refused,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ResumeResult::Resumed => "resumed",
            ResumeResult::Expired => "expired",
            ResumeResult::Overflow => "overflow",
            ResumeResult::Unknown => "unknown",
            ResumeResult::Refused => "refused",
        }
    }
}

/// Which health check a backend gauge is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Http,
    Ws,
}

impl Check {
    pub fn label(self) -> &'static str {
        match self {
            Check::Http => "http",
            Check::Ws => "ws",
        }
    }
}

/// Per-direction counters, resolved once so the relay adds to them without
/// a label lookup.
#[derive(Clone)]
pub struct DirectionCounters {
    pub messages: IntCounter,
    pub bytes: IntCounter,
}

/// Heartbeat handles for one peer kind.
#[derive(Clone)]
pub struct HeartbeatHandles {
    pub rtt: Histogram,
    pub timeouts: IntCounter,
}

pub struct Metrics {
    registry: Registry,
    connections_active: IntGaugeVec,
    connections_total: IntCounterVec,
    pub handshake_duration: Histogram,
    pub connection_duration: Histogram,
    pub client_to_backend: DirectionCounters,
    pub backend_to_client: DirectionCounters,
    closes_total: IntCounterVec,
    pub client_heartbeat: HeartbeatHandles,
    pub backend_heartbeat: HeartbeatHandles,
    backend_up: IntGaugeVec,
    health_check_duration: HistogramVec,
    pub rate_limited: IntCounter,
    config_reloads: IntCounterVec,
    /// Plain HTTP requests proxied.
    pub http: HttpMetrics,
    resume_total: IntCounterVec,
    /// Payload bytes resumable sessions hold toward their clients.
    pub resume_buffered_bytes: IntGauge,
    /// Sessions whose client is gone, waiting within their window.
    pub resume_waiting: IntGauge,
}

/// Latency buckets from 0.5 ms to 10 s: handshakes and heartbeat RTTs on a
/// LAN sit at the low end, stuck backends at the high end.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// WebSocket connections live from seconds to days.
const DURATION_BUCKETS: &[f64] = &[
    0.1,
    1.0,
    10.0,
    60.0,
    300.0,
    1800.0,
    3600.0,
    4.0 * 3600.0,
    24.0 * 3600.0,
];

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let r = &registry;
        let connections_active = reg(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "wsgate_connections_active",
                    "Open proxied WebSocket connections",
                ),
                &["backend"],
            ),
        );
        let connections_total = reg(
            r,
            IntCounterVec::new(
                Opts::new("wsgate_connections_total", "Upgrade requests by outcome"),
                &["result"],
            ),
        );
        for res in [
            ConnResult::Upgraded,
            ConnResult::OriginRejected,
            ConnResult::AuthRejected,
            ConnResult::Overloaded,
            ConnResult::NoBackend,
            ConnResult::BackendError,
            ConnResult::BadRequest,
        ] {
            connections_total.with_label_values(&[res.label()]);
        }
        let handshake_duration = reg(
            r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "wsgate_handshake_duration_seconds",
                    "From request head received to 101 sent (includes the backend dial)",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            ),
        );
        let connection_duration = reg(
            r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "wsgate_connection_duration_seconds",
                    "Lifetime of upgraded connections",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
            ),
        );
        let messages = reg(
            r,
            IntCounterVec::new(
                Opts::new("wsgate_messages_total", "WebSocket data messages relayed"),
                &["direction"],
            ),
        );
        let bytes = reg(
            r,
            IntCounterVec::new(
                Opts::new("wsgate_bytes_total", "WebSocket payload bytes relayed"),
                &["direction"],
            ),
        );
        let dir = |d: &str| DirectionCounters {
            messages: messages.with_label_values(&[d]),
            bytes: bytes.with_label_values(&[d]),
        };
        let closes_total = reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "wsgate_closes_total",
                    "Connection closes by initiator and close code",
                ),
                &["initiator", "code"],
            ),
        );
        let rtt = reg(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "wsgate_heartbeat_rtt_seconds",
                    "Round trip of the gateway's heartbeat pings",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["peer"],
            ),
        );
        let timeouts = reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "wsgate_heartbeat_timeouts_total",
                    "Peers dropped for not answering heartbeats",
                ),
                &["peer"],
            ),
        );
        let hb = |p: &str| HeartbeatHandles {
            rtt: rtt.with_label_values(&[p]),
            timeouts: timeouts.with_label_values(&[p]),
        };
        let backend_up = reg(
            r,
            IntGaugeVec::new(
                Opts::new("wsgate_backend_up", "1 if the backend passes the check"),
                &["backend", "check"],
            ),
        );
        let health_check_duration = reg(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "wsgate_health_check_duration_seconds",
                    "Duration of health checks",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["backend", "check"],
            ),
        );
        let rate_limited = reg(
            r,
            IntCounter::new(
                "wsgate_rate_limited_total",
                "Connections closed by rate limits (4029)",
            ),
        );
        let config_reloads = reg(
            r,
            IntCounterVec::new(
                Opts::new("wsgate_config_reloads_total", "Config reloads by result"),
                &["result"],
            ),
        );
        let resume_total = reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "wsgate_resume_total",
                    "Resume attempts and waiting sessions by outcome",
                ),
                &["result"],
            ),
        );
        for res in ResumeResult::ALL {
            resume_total.with_label_values(&[res.label()]);
        }
        let resume_buffered_bytes = reg(
            r,
            IntGauge::new(
                "wsgate_resume_buffered_bytes",
                "Payload bytes held by resumable sessions, not yet acknowledged by their clients",
            ),
        );
        let resume_waiting = reg(
            r,
            IntGauge::new(
                "wsgate_resume_sessions_waiting",
                "Resumable sessions whose client is gone, within their window",
            ),
        );
        config_reloads.with_label_values(&["ok"]);
        config_reloads.with_label_values(&["error"]);
        #[cfg(target_os = "linux")]
        {
            // Registration fails only if registered twice; a fresh registry is ours.
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = registry.register(Box::new(pc));
        }
        let http = HttpMetrics::new(&registry);
        Metrics {
            http,
            client_to_backend: dir("client_to_backend"),
            backend_to_client: dir("backend_to_client"),
            client_heartbeat: hb("client"),
            backend_heartbeat: hb("backend"),
            registry,
            connections_active,
            connections_total,
            handshake_duration,
            connection_duration,
            closes_total,
            backend_up,
            health_check_duration,
            rate_limited,
            config_reloads,
            resume_total,
            resume_buffered_bytes,
            resume_waiting,
        }
    }

    pub fn resume(&self, result: ResumeResult) {
        self.resume_total.with_label_values(&[result.label()]).inc();
    }

    /// Counters of the direction whose frames come from `from`.
    pub fn direction(&self, from: Side) -> &DirectionCounters {
        match from {
            Side::Client => &self.client_to_backend,
            Side::Backend => &self.backend_to_client,
        }
    }

    /// Heartbeat handles toward `peer`.
    pub fn heartbeat(&self, peer: Side) -> &HeartbeatHandles {
        match peer {
            Side::Client => &self.client_heartbeat,
            Side::Backend => &self.backend_heartbeat,
        }
    }

    pub fn connection(&self, result: ConnResult) {
        self.connections_total
            .with_label_values(&[result.label()])
            .inc();
    }

    pub fn active(&self, backend: &str) -> IntGauge {
        self.connections_active.with_label_values(&[backend])
    }

    pub fn close(&self, initiator: Initiator, code: u16) {
        self.closes_total
            .with_label_values(&[initiator.label(), close_code_label(code)])
            .inc();
    }

    pub fn backend_up(&self, backend: &str, check: Check) -> IntGauge {
        self.backend_up.with_label_values(&[backend, check.label()])
    }

    pub fn health_duration(&self, backend: &str, check: Check) -> Histogram {
        self.health_check_duration
            .with_label_values(&[backend, check.label()])
    }

    /// Drops the series of a backend removed by a reload, so dashboards do
    /// not show a ghost.
    pub fn forget_backend(&self, backend: &str) {
        let _ = self.connections_active.remove_label_values(&[backend]);
        for c in [Check::Http, Check::Ws] {
            let _ = self.backend_up.remove_label_values(&[backend, c.label()]);
            let _ = self
                .health_check_duration
                .remove_label_values(&[backend, c.label()]);
        }
    }

    pub fn reload(&self, ok: bool) {
        self.config_reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// The text exposition format served on `/metrics`.
    /// The registry, for metrics registered by optional features (the
    /// cluster's, only when `[cluster]` is on).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("exposition is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn reg<M: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    m: Result<M, prometheus::Error>,
) -> M {
    let m = m.expect("metric definitions are constant and valid");
    r.register(Box::new(m.clone()))
        .expect("each metric is registered once");
    m
}

/// The class of an HTTP status (`code_class` label): a closed set.
pub fn code_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Plain HTTP proxying: requests by route and status class, their duration
/// (head received to body end) by route, and client connections that have
/// carried a plain HTTP request and are still open.
pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    pub connections_active: IntGauge,
}

impl HttpMetrics {
    fn new(r: &Registry) -> HttpMetrics {
        let requests = reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "wsgate_http_requests_total",
                    "Plain HTTP requests by route and status class",
                ),
                &["route", "code_class"],
            ),
        );
        let duration = reg(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "wsgate_http_request_duration_seconds",
                    "Plain HTTP requests, from request head to the response's last byte",
                )
                .buckets(
                    LATENCY_BUCKETS
                        .iter()
                        .copied()
                        .chain([30.0, 60.0, 300.0])
                        .collect(),
                ),
                &["route"],
            ),
        );
        let connections_active = reg(
            r,
            IntGauge::new(
                "wsgate_http_connections_active",
                "Open client connections that have carried plain HTTP requests",
            ),
        );
        HttpMetrics {
            requests,
            duration,
            connections_active,
        }
    }

    /// Counts one finished request.
    pub fn request(&self, route: &str, status: u16, secs: f64) {
        self.requests
            .with_label_values(&[route, code_class(status)])
            .inc();
        self.duration.with_label_values(&[route]).observe(secs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_code_labels_are_a_closed_set() {
        for code in 1000..=1015u16 {
            assert_eq!(close_code_label(code), code.to_string());
        }
        for (code, label) in [
            (4001, "4001"),
            (4008, "4008"),
            (4029, "4029"),
            (3000, "3xxx"),
            (3999, "3xxx"),
            (4000, "4xxx"),
            (4002, "4xxx"),
            (4999, "4xxx"),
            (0, "other"),
            (999, "other"),
            (1016, "other"),
            (2999, "other"),
            (5000, "other"),
            (u16::MAX, "other"),
        ] {
            assert_eq!(close_code_label(code), label, "code {code}");
        }
        let all: std::collections::HashSet<_> = (0..=u16::MAX).map(close_code_label).collect();
        assert_eq!(all.len(), 16 + 3 + 3, "{all:?}");
    }

    #[test]
    fn renders_spec_names() {
        let m = Metrics::new();
        m.connection(ConnResult::Upgraded);
        m.client_to_backend.messages.inc_by(3);
        m.close(Initiator::Client, 1000);
        m.backend_up("b1", Check::Ws).set(1);
        m.reload(false);
        let text = m.render();
        for line in [
            "wsgate_connections_total{result=\"upgraded\"} 1",
            "wsgate_messages_total{direction=\"client_to_backend\"} 3",
            "wsgate_closes_total{code=\"1000\",initiator=\"client\"} 1",
            "wsgate_backend_up{backend=\"b1\",check=\"ws\"} 1",
            "wsgate_config_reloads_total{result=\"error\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
