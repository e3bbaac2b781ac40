//! Everything built from one config, immutable once published: the
//! backends, their ring, the Origin policy, auth, the relay's policy and the
//! TLS acceptor. Built completely (and so validated: files read, keys
//! parsed) before anyone sees it; a connection keeps the snapshot it
//! started with.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, AuthSetupError, OriginPolicy};
use crate::backend::Backend;
use crate::config::Config;
use crate::relay::Policy;
use crate::routing::Ring;
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
    /// on the ring.
    pub backends: Vec<Arc<Backend>>,
    pub ring: Ring,
    pub origins: OriginPolicy,
    pub policy: Arc<Policy>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub auth: Auth,
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
        let ring = Ring::new(
            config.backends.iter().map(|b| (b.name.as_str(), b.weight)),
            config.routing.vnodes,
        );
        let tls = match &config.server.tls {
            Some(t) => Some(tokio_rustls::TlsAcceptor::from(
                tls::server_config(t).map_err(|e| BuildError::Tls {
                    key: tls_key(t, &e),
                    source: Box::new(e),
                })?,
            )),
            None => None,
        };
        Ok(Snapshot {
            origins: OriginPolicy::new(
                &config.server.allowed_origins,
                config.server.require_origin,
            ),
            policy: Arc::new(Policy::from_config(&config)),
            auth: Auth::new(&config.auth)?,
            admin_token: admin_token(&config.admin)?,
            ring,
            tls,
            backends,
            config: Arc::new(config),
        })
    }

    /// Whether at least one backend may be routed to (in panic mode: any
    /// that is not draining).
    pub fn any_routable(&self) -> bool {
        let panic = self.panic_mode();
        self.backends
            .iter()
            .any(|b| b.routable_in(&self.config.health, panic))
    }

    /// Whether routing is in panic mode (`[health] panic_threshold`).
    pub fn panic_mode(&self) -> bool {
        crate::backend::health::panic_mode(&self.backends, &self.config.health)
    }
}
