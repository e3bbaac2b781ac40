//! A backend's health: one rise/fall state machine per check (HTTP and
//! WebSocket), fed by the active checks (`checks`) and by passive failures
//! (a failed dial), and what routing may conclude from them. Logs and sets
//! the gauge only when a state flips.

use std::sync::atomic::Ordering;

use crate::backend::Backend;
use crate::config::{HealthConfig, RouteOn};
use crate::metrics::{Check, Metrics};

/// Consecutive results of one health check, against rise/fall.
#[derive(Debug, Clone, Copy)]
pub struct CheckState {
    pub up: bool,
    successes: u32,
    failures: u32,
}

impl Default for CheckState {
    /// A backend starts up (SPEC: marked down only after `fall` failures).
    fn default() -> Self {
        CheckState {
            up: true,
            successes: 0,
            failures: 0,
        }
    }
}

impl CheckState {
    /// Records a result; returns `Some(new state)` when it flips.
    pub fn record(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.up && self.successes >= rise {
                self.up = true;
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.up && self.failures >= fall {
                self.up = false;
                return Some(false);
            }
        }
        None
    }
}

/// Health of a backend: one state per check.
#[derive(Debug, Default)]
pub struct Health {
    pub http: CheckState,
    pub ws: CheckState,
    /// The HTTP status the last WebSocket check got instead of a 101, if
    /// it did: the check is misconfigured (the backend answers HTTP).
    pub ws_misconfigured: Option<u16>,
}

impl Health {
    fn state(&mut self, check: Check) -> &mut CheckState {
        match check {
            Check::Http => &mut self.http,
            Check::Ws => &mut self.ws,
        }
    }
}

/// Whether `check` runs under `cfg` (an empty path turns it off). The
/// snapshot's config is the one owner of this; backends keep only results.
pub fn check_on(cfg: &HealthConfig, check: Check) -> bool {
    match check {
        Check::Http => !cfg.http_path.is_empty(),
        Check::Ws => !cfg.ws_path.is_empty(),
    }
}

impl Backend {
    /// Whether a check passes under `cfg` ("off" counts as passing).
    pub fn check_up(&self, cfg: &HealthConfig, check: Check) -> bool {
        !check_on(cfg, check) || self.health().state(check).up
    }

    /// `"up"`, `"down"`, `"off"` or `"misconfigured"` for `/backends`.
    pub fn check_label(&self, cfg: &HealthConfig, check: Check) -> &'static str {
        let misconfigured = check == Check::Ws && self.health().ws_misconfigured.is_some();
        match (check_on(cfg, check), self.check_up(cfg, check)) {
            (false, _) => "off",
            (true, _) if misconfigured => "misconfigured",
            (true, true) => "up",
            (true, false) => "down",
        }
    }

    /// Records whether the last WebSocket check got an HTTP status instead
    /// of a 101; logs only when that changes (a warning naming the path and
    /// status, so the fix is one config line away).
    pub fn set_ws_misconfigured(&self, status: Option<u16>, ws_path: &str) {
        let before = std::mem::replace(&mut self.health().ws_misconfigured, status);
        if before == status {
            return;
        }
        match status {
            Some(status) => tracing::warn!(
                backend = %self.name,
                ws_path,
                status,
                "WebSocket health check misconfigured: the backend answered ws_path with HTTP \
                 {status}, not 101; set [health] ws_path to its WebSocket endpoint. The backend \
                 stays in routing"
            ),
            None => {
                tracing::info!(backend = %self.name, ws_path, "WebSocket health check answered with 101 again")
            }
        }
    }

    /// Whether routing may use it: the checks of `route_on` pass and it is
    /// not draining.
    pub fn routable(&self, cfg: &HealthConfig) -> bool {
        if self.draining.load(Ordering::Relaxed) {
            return false;
        }
        self.passes(cfg)
    }

    /// Whether the checks of `route_on` pass (draining or not).
    pub fn passes(&self, cfg: &HealthConfig) -> bool {
        match cfg.route_on {
            RouteOn::Ws => self.check_up(cfg, Check::Ws),
            RouteOn::Http => self.check_up(cfg, Check::Http),
            RouteOn::Both => self.check_up(cfg, Check::Ws) && self.check_up(cfg, Check::Http),
        }
    }

    /// Routable, or in panic mode (`panic`) merely not draining.
    pub fn routable_in(&self, cfg: &HealthConfig, panic: bool) -> bool {
        if panic {
            !self.is_draining()
        } else {
            self.routable(cfg)
        }
    }

    /// Records a check result (active or passive), updating the gauge and
    /// logging only when the state flips.
    pub fn record(&self, check: Check, ok: bool, rise: u32, fall: u32, metrics: &Metrics) {
        let flip = self.health().state(check).record(ok, rise, fall);
        if let Some(up) = flip {
            metrics.backend_up(&self.name, check).set(up as i64);
            if up {
                tracing::info!(backend = %self.name, check = check.label(), "backend up");
            } else {
                tracing::warn!(backend = %self.name, check = check.label(), "backend down");
            }
        }
    }

    /// A failed dial or upgrade counts toward `fall` for the WebSocket check
    /// at once (for the HTTP one when only that check is on).
    pub fn passive_failure(&self, cfg: &HealthConfig, metrics: &Metrics) {
        for check in [Check::Ws, Check::Http] {
            if check_on(cfg, check) {
                self.record(check, false, cfg.rise, cfg.fall, metrics);
                return;
            }
        }
    }
}

/// Envoy's panic mode: whether fewer than `panic_threshold` of the
/// backends (of one pool) that are not draining pass their checks, in which case routing
/// treats them all as up (a health-check outage must not become a full
/// outage; dial failures still fail over and answer 502).
pub fn panic_mode<'a>(backends: impl IntoIterator<Item = &'a Backend>, cfg: &HealthConfig) -> bool {
    if cfg.panic_threshold <= 0.0 {
        return false;
    }
    let (mut total, mut passing) = (0usize, 0usize);
    for b in backends.into_iter().filter(|b| !b.is_draining()) {
        total += 1;
        passing += b.passes(cfg) as usize;
    }
    total > 0 && (passing as f64) < cfg.panic_threshold * total as f64
}
