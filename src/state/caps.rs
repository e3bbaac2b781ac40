//! The connection caps, `max_connections` and `max_connections_per_ip`: a
//! connection's place is a guard taken at accept and given back when the
//! guard drops, however the connection ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::ServerConfig;

/// Which cap a new connection is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapExceeded {
    Total,
    PerIp,
}

/// Connections now, in total and per client IP.
#[derive(Debug, Default)]
pub struct Caps {
    total: AtomicUsize,
    /// Only while a per-IP limit is configured. A short std mutex, never
    /// held across `.await`; entries leave at zero.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place under the caps, released on drop.
pub struct Place {
    caps: Arc<Caps>,
    /// Counted in `per_ip` (only while a per-IP limit is configured).
    ip: Option<IpAddr>,
}

impl Caps {
    /// Takes a place, and says which cap it is over, if any (the place is
    /// still taken, so the refusal itself is counted until it is sent).
    pub fn take(self: &Arc<Self>, ip: IpAddr, s: &ServerConfig) -> (Place, Option<CapExceeded>) {
        let total = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        let limit_ip = s.max_connections_per_ip;
        // Without a per-IP limit, no entry per client IP is kept at all.
        let per_ip = if limit_ip > 0 {
            let mut m = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = m.entry(ip).or_insert(0);
            *n += 1;
            *n
        } else {
            0
        };
        let place = Place {
            caps: self.clone(),
            ip: (limit_ip > 0).then_some(ip),
        };
        let over = if total > s.max_connections {
            Some(CapExceeded::Total)
        } else if limit_ip > 0 && per_ip > limit_ip {
            Some(CapExceeded::PerIp)
        } else {
            None
        };
        (place, over)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.caps.total.fetch_sub(1, Ordering::Relaxed);
        let Some(ip) = self.ip else { return };
        let mut m = self.caps.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}
