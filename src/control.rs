//! The control thread: everything that is not request work and must stay off the
//! workers — active health checks (restarted for each new generation), the file
//! watcher and SIGHUP (reloads), and the admin API.

use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::server::Shared;
use crate::upstream::health;

/// Runs until shutdown begins. `admin` is the bound admin listener, if any; `watching`
/// the file watches installed by `server::start`, if any.
pub fn run(
    shared: Arc<Shared>,
    admin: Option<std::net::TcpListener>,
    watching: Option<crate::reload::watch::Watching>,
) {
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
        let mut tasks: Vec<JoinHandle<()>> = Vec::new();
        if let Some(listener) = admin {
            tasks.push(tokio::spawn(crate::admin::serve(
                listener,
                Arc::clone(&shared),
            )));
        }
        if let Some(watching) = watching {
            tasks.push(tokio::spawn(watching.run(Arc::clone(&shared))));
        }
        tasks.push(tokio::spawn(sighup(Arc::clone(&shared))));
        let mut generation = shared.generation();
        let mut checks = health::spawn_checks(&generation.upstreams);
        let mut shutdown = shared.shutdown_signal();
        while !*shutdown.borrow_and_update() {
            tokio::select! {
                changed = shutdown.changed() => if changed.is_err() { break },
                _ = shared.generation_swapped.notified() => {
                    // A new generation: its upstream sets are new objects, so its
                    // servers get their own checkers (state carried over by the build).
                    let next = shared.generation();
                    if next.number != generation.number {
                        for task in checks.drain(..) {
                            task.abort();
                        }
                        checks = health::spawn_checks(&next.upstreams);
                        generation = next;
                    }
                }
            }
        }
        for task in checks.into_iter().chain(tasks) {
            task.abort();
        }
    });
}

/// Reloads on SIGHUP.
async fn sighup(shared: Arc<Shared>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(target: "proxycache::control", error = %e, "cannot listen for SIGHUP");
                return;
            }
        };
        while hup.recv().await.is_some() {
            let shared = Arc::clone(&shared);
            let _ =
                tokio::task::spawn_blocking(move || crate::reload::reload(&shared, "sighup")).await;
        }
    }
    #[cfg(not(unix))]
    let _ = shared;
}
