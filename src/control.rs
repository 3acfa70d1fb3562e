//! The control thread: everything that is not request work and must stay off the
//! workers — active health checks now; the admin API and reload watching later.

use std::sync::Arc;

use crate::server::Shared;
use crate::upstream::health;

/// Runs until shutdown begins.
pub fn run(shared: Arc<Shared>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(target: "proxycache::control", error = %e, "cannot start the control runtime");
            return;
        }
    };
    runtime.block_on(async move {
        let generation = shared.generation();
        let checks = health::spawn_checks(&generation.upstreams);
        drop(generation);
        let mut shutdown = shared.shutdown_signal();
        while !*shutdown.borrow_and_update() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        for task in checks {
            task.abort();
        }
    });
}
