//! Everything built from one config, immutable once published: the
//! backends, their pools and routes, the Origin policy, auth, the relay's policy and the
//! TLS acceptor. Built completely (and so validated: files read, keys
//! parsed) before anyone sees it; a connection keeps the snapshot it
//! started with.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, AuthSetupError, OriginPolicy};
use crate::backend::Backend;
use crate::config::Config;
use crate::relay::Policy;
use crate::state::affinity::Affinity;
use crate::state::routes::Routes;
use crate::tls::{self, TlsError};

/// Why a snapshot could not be built from a config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("server.tls: {0}")]
    Tls(Box<TlsError>),
    #[error("backend {name}: {source}")]
    BackendTls { name: String, source: Box<TlsError> },
    #[error("{0}")]
    Auth(#[from] AuthSetupError),
}

pub struct Snapshot {
    pub config: Arc<Config>,
    /// In the order of `config.backends`: index i here is index i there and
    /// in the pools' member lists.
    pub backends: Vec<Arc<Backend>>,
    /// The pools (each with its ring over its members) and the routes to them.
    pub routes: Routes,
    pub origins: OriginPolicy,
    pub policy: Arc<Policy>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub auth: Auth,
    /// The affinity cookie's name and backend tags.
    pub affinity: Affinity,
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
        for bc in &config.backends {
            // A drained backend that is still (or again) configured comes back
            // fresh: its old token is cancelled for good.
            let kept = prev.and_then(|p| {
                p.backends
                    .iter()
                    .find(|b| b.same_endpoint(bc) && !b.is_draining())
            });
            let b = match kept {
                Some(b) => b.clone(),
                None => Arc::new(
                    Backend::new(bc, config.routing.connect_timeout.get(), root).map_err(
                        |source| BuildError::BackendTls {
                            name: bc.name.clone(),
                            source: Box::new(source),
                        },
                    )?,
                ),
            };
            backends.push(b);
        }
        let routes = Routes::new(&config);
        let tls = match &config.server.tls {
            Some(t) => Some(tokio_rustls::TlsAcceptor::from(
                tls::server_config(t).map_err(|e| BuildError::Tls(Box::new(e)))?,
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
            affinity: Affinity::new(&config),
            routes,
            tls,
            backends,
            config: Arc::new(config),
        })
    }

    /// Whether at least one backend may be routed to.
    pub fn any_routable(&self) -> bool {
        self.backends
            .iter()
            .any(|b| b.routable(&self.config.health))
    }
}
