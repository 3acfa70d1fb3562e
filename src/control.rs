//! The control thread: everything that is not request work and must stay off the
//! workers — active health checks (restarted for each new generation), the file
//! watcher and SIGHUP (reloads), and the admin API.

use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::server::Shared;
use crate::upstream::health;

/// The control thread's runtime and its SIGHUP listener, made by `server::start`
/// before it returns: a SIGHUP from then on reloads (the binary's `main` catches
/// SIGHUP before loading anything, so one sent earlier is dropped rather than ending
/// the process as the signal's default action would).
pub struct Control {
    /// Taken by [`run`]; still here only when `start` failed after making it.
    runtime: Option<tokio::runtime::Runtime>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Drop for Control {
    fn drop(&mut self) {
        // `start` failed after `prepare`, perhaps inside the caller's own runtime,
        // where dropping a runtime the usual way would panic.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Builds the control runtime and starts listening for SIGHUP.
pub fn prepare() -> std::io::Result<Control> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    #[cfg(unix)]
    let hup = {
        use tokio::signal::unix::{signal, SignalKind};
        let _entered = runtime.enter();
        match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(target: "proxycache::control", error = %e, "cannot listen for SIGHUP");
                None
            }
        }
    };
    Ok(Control {
        runtime: Some(runtime),
        #[cfg(unix)]
        hup,
    })
}

/// Runs until shutdown begins. `admin` is the bound admin listener, if any; `watching`
/// the file watches installed by `server::start`, if any.
pub fn run(
    mut control: Control,
    shared: Arc<Shared>,
    admin: Option<std::net::TcpListener>,
    watching: Option<crate::reload::watch::Watching>,
) {
    let Some(runtime) = control.runtime.take() else {
        return;
    };
    #[cfg(unix)]
    let hup = control.hup.take();
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
        #[cfg(unix)]
        if let Some(hup) = hup {
            tasks.push(tokio::spawn(sighup(hup, Arc::clone(&shared))));
        }
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

/// Reloads on each SIGHUP.
#[cfg(unix)]
async fn sighup(mut hup: tokio::signal::unix::Signal, shared: Arc<Shared>) {
    while hup.recv().await.is_some() {
        let shared = Arc::clone(&shared);
        let _ = tokio::task::spawn_blocking(move || crate::reload::reload(&shared, "sighup")).await;
    }
}

#[cfg(test)]
mod tests {
    /// `server::start` may fail after `prepare` (a worker thread that cannot start),
    /// and its caller may be async: the unused control runtime must go quietly.
    #[tokio::test]
    async fn a_prepared_control_dropped_inside_a_runtime_goes_quietly() {
        let control = super::prepare().expect("the control runtime");
        drop(control);
    }
}
