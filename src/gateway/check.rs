//! `wsgate check`, and the config loading of `run` and every reload: parse
//! and validate the file, then build a snapshot from it (without binding
//! anything), so every file the config names (TLS cert and key, the JWT
//! public key, a backend's `ca`) is read and parsed exactly as the running
//! gateway would, like `nginx -t`. A file problem comes back as a
//! `ConfigError` naming the key and its line.

use std::path::Path;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::state::Snapshot;

/// Loads `path` and builds (then drops) a snapshot from it.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let (config, text) = Config::load_text(path)?;
    check_files(config, &text)
}

/// Builds (then drops) a snapshot from a parsed `config`, blaming any
/// failure on the key of `text` it comes from.
pub fn check_files(config: Config, text: &str) -> Result<Config, ConfigError> {
    // The snapshot's backends hang off a throwaway root: nothing runs
    // under it, and it is dropped with the snapshot.
    let root = CancellationToken::new();
    // `[cluster] redis_ca` is read as the start reads it (no connection).
    if config.cluster.enabled()
        && let Err(e) = crate::cluster::redis_client(&config.cluster)
    {
        let key = match e {
            crate::cluster::ClusterError::Ca(_) => "redis_ca",
            _ => "redis_url",
        };
        let problem = e.to_string();
        let problem = problem.split_once(": ").map_or(&*problem, |(_, p)| p);
        return Err(ConfigError::at(
            text,
            "cluster",
            None,
            key,
            problem.to_string(),
        ));
    }
    match Snapshot::build(config, None, &root) {
        Ok(snap) => Ok((*snap.config).clone()),
        Err(e) => {
            let b = e.blame();
            Err(ConfigError::at(
                text,
                b.section,
                b.index,
                b.key,
                e.problem(),
            ))
        }
    }
}
