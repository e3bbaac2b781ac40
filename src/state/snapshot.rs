//! Everything built from one config, immutable once published: the
//! backends, their pools and routes, the Origin policy, auth, the relay's policy and the
//! TLS acceptor. Built completely (and so validated: files read, keys
//! parsed) before anyone sees it; a connection keeps the snapshot it
//! started with.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, AuthSetupError, OriginPolicy};
use crate::backend::Backend;
use crate::config::{Config, HealthConfig};
use crate::state::affinity::Affinity;
use crate::state::routes::{Pool, Routes};
use crate::tls::{self, TlsError};

/// Why a snapshot could not be built from a config: a file the config
/// names is missing, unreadable, unparseable, or does not fit its pair.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("server.tls.{key}: {source}")]
    Tls {
        /// `cert` or `key`: the one the problem is blamed on.
        key: &'static str,
        source: Box<TlsError>,
    },
    #[error("backend {name}: {source}")]
    BackendTls {
        /// Position in `[[backends]]`, for the line of its `ca` key.
        index: usize,
        name: String,
        source: Box<TlsError>,
    },
    #[error("{0}")]
    Auth(#[from] AuthSetupError),
    #[error("admin.token_file: {0}")]
    AdminToken(String),
}

/// Where in the config a [`BuildError`] points: section, array index, key.
pub struct Blame {
    pub section: &'static str,
    pub index: Option<usize>,
    pub key: &'static str,
}

impl BuildError {
    /// The key whose file (or value) is at fault.
    pub fn blame(&self) -> Blame {
        let (section, index, key) = match self {
            BuildError::Tls { key, .. } => ("server.tls", None, *key),
            BuildError::BackendTls { index, .. } => ("backends", Some(*index), "ca"),
            BuildError::Auth(AuthSetupError::ForwardUrl(_)) => ("auth", None, "forward_url"),
            BuildError::Auth(_) => ("auth", None, "jwt_public_key"),
            BuildError::AdminToken(_) => ("admin", None, "token_file"),
        };
        Blame {
            section,
            index,
            key,
        }
    }

    /// The problem without the key (which `blame` gives), for a message
    /// like "config key `k` (line n): <problem>".
    pub fn problem(&self) -> String {
        match self {
            BuildError::Tls { source, .. } | BuildError::BackendTls { source, .. } => {
                source.to_string()
            }
            BuildError::Auth(AuthSetupError::ReadKey { path, source }) => {
                format!("cannot read {path}: {source}")
            }
            BuildError::Auth(AuthSetupError::BadKey { path }) => {
                format!("{path} is neither an RSA nor an EC public key PEM")
            }
            BuildError::Auth(AuthSetupError::ForwardUrl(m)) | BuildError::AdminToken(m) => {
                m.clone()
            }
        }
    }
}

/// The admin token: inline, or read from `token_file` (trailing newline
/// and spaces dropped, as `echo` and Kubernetes Secrets leave them).
fn admin_token(a: &crate::config::AdminConfig) -> Result<Option<Box<[u8]>>, BuildError> {
    if !a.token.is_empty() {
        return Ok(Some(a.token.as_bytes().into()));
    }
    if a.token_file.is_empty() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&a.token_file)
        .map_err(|e| BuildError::AdminToken(format!("cannot read {}: {e}", a.token_file)))?;
    let token = text.trim_end();
    if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(BuildError::AdminToken(format!(
            "{} must hold a token of at least 16 visible ASCII characters",
            a.token_file
        )));
    }
    Ok(Some(token.as_bytes().into()))
}

/// Which of `cert` / `key` a server TLS error is about.
fn tls_key(c: &crate::config::TlsConfig, e: &TlsError) -> &'static str {
    match e {
        TlsError::Read { path, .. } if *path == c.cert => "cert",
        TlsError::NoCert { .. } => "cert",
        _ => "key",
    }
}

pub struct Snapshot {
    pub config: Arc<Config>,
    /// In the order of `config.backends`: index i here is index i there and
    /// in the pools' member lists.
    pub backends: Vec<Arc<Backend>>,
    /// The pools (each with its ring over its members, its settings and
    /// its relay policy) and the routes to them.
    pub routes: Routes,
    pub origins: OriginPolicy,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub auth: Auth,
    /// The affinity cookie's name and backend tags.
    pub affinity: Affinity,
    /// `[admin] token` or the content of `token_file`; `None`: no token.
    pub admin_token: Option<Box<[u8]>>,
}

impl Snapshot {
    /// Builds a snapshot. Backends with the same name and endpoint as in
    /// `prev` are kept, with their health and connections; new ones get a
    /// cancellation token under `root`.
    pub fn build(
        config: Config,
        prev: Option<&Snapshot>,
        root: &CancellationToken,
    ) -> Result<Snapshot, BuildError> {
        let routes = Routes::new(&config);
        let mut backends = Vec::with_capacity(config.backends.len());
        for (index, bc) in config.backends.iter().enumerate() {
            // A drained backend that is still (or again) configured comes back
            // fresh: its old token is cancelled for good.
            let kept = prev.and_then(|p| {
                p.backends
                    .iter()
                    .find(|b| b.same_endpoint(bc) && !b.is_draining())
            });
            let b =
                match kept {
                    Some(b) => b.clone(),
                    None => Arc::new(Backend::new(bc, root).map_err(|source| {
                        BuildError::BackendTls {
                            index,
                            name: bc.name.clone(),
                            source: Box::new(source),
                        }
                    })?),
                };
            backends.push(b);
        }
        let tls = match &config.server.tls {
            Some(t) => Some(tokio_rustls::TlsAcceptor::from(
                tls::server_config(t).map_err(|e| BuildError::Tls {
                    key: tls_key(t, &e),
                    source: Box::new(e),
                })?,
            )),
            None => None,
        };
        let auth = Auth::new(&config.auth)?;
        let admin_token = admin_token(&config.admin)?;
        Ok(Snapshot {
            origins: OriginPolicy::new(
                &config.server.allowed_origins,
                config.server.require_origin,
            ),
            auth,
            affinity: Affinity::new(&config),
            admin_token,
            routes,
            tls,
            backends,
            config: Arc::new(config),
        })
    }

    /// Pool `i` of the route table (indices come from the table itself;
    /// anything else gets the default pool, which always exists).
    pub fn pool(&self, i: usize) -> &Pool {
        self.routes.pools.get(i).unwrap_or(&self.routes.pools[0])
    }

    /// The pool backend `b` belongs to: its settings, health rules and
    /// relay policy apply to `b`.
    pub fn pool_of(&self, b: &Arc<Backend>) -> &Pool {
        let i = self.backends.iter().position(|x| Arc::ptr_eq(x, b));
        self.pool(i.map_or(0, |i| self.routes.pool_of[i]))
    }

    /// Every backend with the health settings of its pool.
    pub fn health_checks(&self) -> impl Iterator<Item = (&Arc<Backend>, &HealthConfig)> {
        self.backends
            .iter()
            .zip(&self.routes.pool_of)
            .map(|(b, &p)| (b, &self.pool(p).settings.health))
    }

    /// Whether at least one backend may be routed to (in panic mode: any
    /// that is not draining).
    pub fn any_routable(&self) -> bool {
        (0..self.routes.pools.len()).any(|p| {
            let panic = self.panic_mode(p);
            let pool = self.pool(p);
            pool.members
                .iter()
                .any(|&i| self.backends[i].routable_in(&pool.settings.health, panic))
        })
    }

    /// Whether pool `p` routes in panic mode (its `panic_threshold`, over
    /// its own backends only).
    pub fn panic_mode(&self, p: usize) -> bool {
        let pool = self.pool(p);
        crate::backend::health::panic_mode(
            pool.members.iter().map(|&i| &*self.backends[i]),
            &pool.settings.health,
        )
    }
}
