//! SIGHUP: parse, validate, build, then publish one snapshot. Backends that
//! stay keep their state; removed ones are drained (1012, spread over
//! `shutdown_grace`); the health checks restart for the new snapshot. A
//! config that fails any step leaves the old one serving.

use std::sync::Arc;

use crate::backend::{Backend, checks};
use crate::config::Config;
use crate::state::{BuildError, Shared, Snapshot};

pub fn reload(shared: &Arc<Shared>, config: Config) -> Result<(), BuildError> {
    let _serial = shared.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
    let old = shared.snapshot.load_full();
    if old.config.server.listen != config.server.listen
        || old.config.admin.listen.0 != config.admin.listen.0
    {
        tracing::warn!("listen addresses changed: they apply after a restart, not a reload");
    }
    let next = Snapshot::build(config, Some(&old), &shared.shutdown)?;
    let removed: Vec<Arc<Backend>> = old
        .backends
        .iter()
        .filter(|b| !next.backends.iter().any(|n| Arc::ptr_eq(n, b)))
        .cloned()
        .collect();
    let health_token = shared.shutdown.child_token();
    checks::spawn(next.health_checks(), &shared.metrics, &health_token);
    let old_health = std::mem::replace(
        &mut *shared.health.lock().unwrap_or_else(|p| p.into_inner()),
        health_token,
    );
    old_health.cancel();
    shared.snapshot.store(Arc::new(next));
    for b in removed {
        tracing::info!(backend = %b.name, "backend removed by reload; closing its connections with 1012");
        b.drain();
        // Only drop the series if no backend of the new snapshot reuses the name.
        if !shared
            .snapshot
            .load()
            .backends
            .iter()
            .any(|n| n.name == b.name)
        {
            shared.metrics.forget_backend(&b.name);
        }
    }
    tracing::info!("config reloaded");
    Ok(())
}
