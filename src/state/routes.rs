//! The route table: which pool of backends a request goes to, by its host
//! and path, and whether that route carries WebSocket upgrades, plain HTTP
//! or both. Built with the snapshot; matching is pure.
//!
//! A request's host is its `Host` header without the port, lower-cased.
//! Among the routes whose host matches, an exact host beats a `*.` pattern,
//! which beats a route for any host (as nginx picks its `server` first);
//! then the longest path prefix wins, matched at a segment boundary (`/api`
//! matches `/api` and `/api/x`, not `/apix`). A request no route matches
//! goes to the default pool (backends without a `pool` key) with both kinds
//! allowed, or gets 404 when that pool is empty.

use std::sync::Arc;

use crate::config::{Config, DEFAULT_POOL, PoolSettings, Serve};
use crate::relay::Policy;
use crate::routing::Ring;

/// The backends of one pool, their ring, and the settings the pool runs
/// with (`[pools.NAME]` over the top-level sections).
pub struct Pool {
    pub name: String,
    /// Indices into the snapshot's backends; ring index i is `members[i]`.
    pub members: Vec<usize>,
    pub ring: Ring,
    pub settings: PoolSettings,
    /// The relay policy of its connections (its `limits`).
    pub policy: Arc<Policy>,
}

/// A matched route: its pool, what it carries and its metric label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub label: Arc<str>,
    pub pool: usize,
    pub serve: Serve,
}

enum HostMatch {
    Any,
    Exact(String),
    /// `*.example.com`: stored as `.example.com`.
    Suffix(String),
}

impl HostMatch {
    /// 0: no match; higher: more specific.
    fn rank(&self, host: &str) -> u8 {
        match self {
            HostMatch::Any => 1,
            HostMatch::Suffix(s) if host.len() > s.len() && host.ends_with(s.as_str()) => 2,
            HostMatch::Exact(h) if h == host => 3,
            _ => 0,
        }
    }
}

struct Entry {
    label: Arc<str>,
    host: HostMatch,
    /// Without a trailing slash ("" for "/").
    path: String,
    pool: usize,
    serve: Serve,
}

pub struct Routes {
    pub pools: Vec<Pool>,
    /// The pool of each backend, by index into the snapshot's backends.
    pub pool_of: Vec<usize>,
    entries: Vec<Entry>,
    /// The default pool's index in `pools`, when it has backends.
    default: Option<usize>,
    default_label: Arc<str>,
}

impl Routes {
    pub fn new(config: &Config) -> Routes {
        let mut names: Vec<&str> = vec![DEFAULT_POOL];
        for b in &config.backends {
            if !names.contains(&b.pool.as_str()) {
                names.push(&b.pool);
            }
        }
        let pools: Vec<Pool> = names
            .iter()
            .map(|name| {
                let members: Vec<usize> = (0..config.backends.len())
                    .filter(|&i| config.backends[i].pool == *name)
                    .collect();
                let settings = config.pool_settings(name);
                let ring = Ring::new(
                    members
                        .iter()
                        .map(|&i| (config.backends[i].name.as_str(), config.backends[i].weight)),
                    settings.routing.vnodes,
                );
                Pool {
                    name: name.to_string(),
                    members,
                    ring,
                    policy: Arc::new(Policy::with_limits(config, &settings.limits)),
                    settings,
                }
            })
            .collect();
        let pool_of = config
            .backends
            .iter()
            .map(|b| names.iter().position(|n| *n == b.pool).unwrap_or(0))
            .collect();
        let entries = config
            .routes
            .iter()
            .filter_map(|r| {
                let pool = pools.iter().position(|p| p.name == r.pool)?;
                let host = if r.host.is_empty() {
                    HostMatch::Any
                } else if let Some(s) = r.host.strip_prefix('*') {
                    HostMatch::Suffix(s.to_string())
                } else {
                    HostMatch::Exact(r.host.clone())
                };
                Some(Entry {
                    label: r.label().into(),
                    host,
                    path: r.path.trim_end_matches('/').to_string(),
                    pool,
                    serve: r.serve,
                })
            })
            .collect();
        let default = (!pools[0].members.is_empty()).then_some(0);
        Routes {
            pools,
            pool_of,
            entries,
            default,
            default_label: DEFAULT_POOL.into(),
        }
    }

    /// The route for a request's `Host` header value (port and case
    /// ignored) and path; `None`: no route and no default pool (404).
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<Route> {
        let host = host
            .map(|h| strip_port(h).to_ascii_lowercase())
            .unwrap_or_default();
        let best = self
            .entries
            .iter()
            .filter(|e| prefix_matches(&e.path, path))
            .filter_map(|e| match e.host.rank(&host) {
                0 => None,
                r => Some((r, e.path.len(), e)),
            })
            .max_by_key(|(r, len, _)| (*r, *len));
        match best {
            Some((_, _, e)) => Some(Route {
                label: e.label.clone(),
                pool: e.pool,
                serve: e.serve,
            }),
            None => self.default.map(|pool| Route {
                label: self.default_label.clone(),
                pool,
                serve: Serve::Both,
            }),
        }
    }
}

/// `prefix` (no trailing slash) covers `path` at a segment boundary.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || prefix.is_empty())
}

/// `host:port` -> `host`; `[::1]:80` -> `[::1]`.
fn strip_port(h: &str) -> &str {
    if h.starts_with('[') {
        return h.split_once(']').map_or(h, |(a, _)| &h[..a.len() + 1]);
    }
    h.rsplit_once(':').map_or(h, |(a, _)| a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(extra: &str) -> Routes {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\
             [[backends]]\nname = \"d\"\nurl = \"ws://127.0.0.1:1\"\n\
             [[backends]]\nname = \"a1\"\nurl = \"ws://127.0.0.1:2\"\npool = \"api\"\n\
             [[backends]]\nname = \"w1\"\nurl = \"ws://127.0.0.1:3\"\npool = \"www\"\n{extra}"
        );
        Routes::new(&Config::parse(&text).unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn host_specificity_then_longest_prefix() {
        let r = routes(
            "[[routes]]\npath = \"/api\"\npool = \"api\"\nserve = \"http\"\n\
             [[routes]]\nhost = \"*.example.com\"\npool = \"www\"\n\
             [[routes]]\nhost = \"app.example.com\"\npath = \"/api/v2/\"\npool = \"api\"\nname = \"v2\"\n",
        );
        let pool = |h: Option<&str>, p: &str| {
            r.find(h, p)
                .map(|x| (r.pools[x.pool].name.clone(), x.label.to_string()))
        };
        let pool = |h, p| pool(h, p).map(|(a, b)| (leak(a), leak(b)));
        assert_eq!(pool(Some("x"), "/api/users"), Some(("api", "api")));
        assert_eq!(pool(Some("x"), "/api"), Some(("api", "api")));
        assert_eq!(
            pool(Some("x"), "/apix"),
            Some(("default", "default")),
            "segment boundary"
        );
        assert_eq!(pool(None, "/"), Some(("default", "default")));
        // A host route beats a longer path on any host.
        assert_eq!(
            pool(Some("www.example.com:8080"), "/api/x"),
            Some(("www", "www"))
        );
        assert_eq!(
            pool(Some("example.com"), "/"),
            Some(("default", "default")),
            "*. needs a subdomain"
        );
        assert_eq!(
            pool(Some("APP.example.com"), "/api/v2/x"),
            Some(("api", "v2"))
        );
        assert_eq!(
            pool(Some("app.example.com"), "/api/v1"),
            Some(("www", "www"))
        );
        assert_eq!(r.find(Some("x"), "/api").unwrap().serve, Serve::Http);
    }

    fn leak(s: String) -> &'static str {
        Box::leak(s.into_boxed_str())
    }

    #[test]
    fn strip_port_keeps_ipv6_brackets() {
        assert_eq!(strip_port("a.b:80"), "a.b");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("a.b"), "a.b");
    }
}
