//! Watching `scripts.dir` (recursively, so `mods/lib/` counts), the config file, and
//! the TLS listeners' certificate, key and CA files (their folders, so a file renamed
//! over one — as certbot and editors do — counts). Editors write files in several steps, so events are debounced: a reload starts only
//! once no relevant event has arrived for [`SETTLE`], and then re-reads everything.
//! The watches are installed ([`install`]) before `server::start` returns, so a change
//! made the moment the server is up is not missed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use parking_lot::RwLock;
use tokio::sync::mpsc;

use crate::server::Shared;

/// Quiet time after the last event before reloading.
pub const SETTLE: Duration = Duration::from_millis(250);

/// The installed watches, made before the server reports that it is up (so a file
/// changed right after start is seen), and driven by [`Watching::run`] on the control
/// thread.
pub struct Watching {
    watcher: notify::RecommendedWatcher,
    rx: mpsc::UnboundedReceiver<()>,
    tls_files: Arc<RwLock<Vec<PathBuf>>>,
    watched_dirs: Vec<PathBuf>,
    seen_generation: u64,
}

/// Installs the watches; `None` when `scripts.watch` is off or watching is impossible
/// (logged: reloads then come from SIGHUP and the admin API only).
pub fn install(shared: &Shared) -> Option<Watching> {
    let generation = shared.generation();
    if !generation.config.scripts.watch {
        return None;
    }
    let scripts_dir = generation.config.scripts.dir.clone();
    let config_path = shared.config_path.clone();
    let seen_generation = generation.number;
    let tls_files = Arc::new(RwLock::new(crate::server::tls::files(&generation.config)));
    drop(generation);
    let (tx, rx) = mpsc::unbounded_channel::<()>();
    let filter_dir = scripts_dir.clone();
    let filter_cfg = config_path.clone();
    let filter_tls = Arc::clone(&tls_files);
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            // Only changes count: reading a file (which every reload does) must not
            // trigger the next reload.
            let changed = matches!(
                event.kind,
                notify::EventKind::Create(_)
                    | notify::EventKind::Modify(_)
                    | notify::EventKind::Remove(_)
            ) && !matches!(
                event.kind,
                notify::EventKind::Modify(notify::event::ModifyKind::Metadata(_))
            );
            if changed
                && event.paths.iter().any(|p| {
                    relevant(p, &filter_dir, filter_cfg.as_deref())
                        || filter_tls.read().iter().any(|f| same_file(p, f))
                })
            {
                let _ = tx.send(());
            }
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(target: "proxycache::reload", error = %e, "cannot watch files; reload with SIGHUP or POST /reload");
            return None;
        }
    };
    if scripts_dir.is_dir() {
        if let Err(e) = watcher.watch(&scripts_dir, RecursiveMode::Recursive) {
            tracing::warn!(target: "proxycache::reload", dir = %scripts_dir.display(), error = %e, "cannot watch the scripts folder");
        }
    }
    if let Some(dir) = config_path.as_deref().and_then(Path::parent) {
        // The folder, not the file: editors replace files by renaming over them.
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(target: "proxycache::reload", dir = %dir.display(), error = %e, "cannot watch the config folder");
        }
    }
    let mut watched_dirs = Vec::new();
    watch_tls_dirs(&mut watcher, &tls_files.read(), &mut watched_dirs);
    Some(Watching {
        watcher,
        rx,
        tls_files,
        watched_dirs,
        seen_generation,
    })
}

impl Watching {
    /// Reloads after each settled burst of relevant changes, until shutdown.
    pub async fn run(mut self, shared: Arc<Shared>) {
        // Reloads from anywhere (SIGHUP, the admin API) may name new certificate files.
        let mut recheck = tokio::time::interval(Duration::from_secs(1));
        let mut shutdown = shared.shutdown_signal();
        loop {
            tokio::select! {
                _ = recheck.tick() => {
                    let generation = shared.generation();
                    if generation.number != self.seen_generation {
                        self.seen_generation = generation.number;
                        let files = crate::server::tls::files(&generation.config);
                        watch_tls_dirs(&mut self.watcher, &files, &mut self.watched_dirs);
                        *self.tls_files.write() = files;
                    }
                }
                event = self.rx.recv() => {
                    if event.is_none() {
                        return;
                    }
                    // Debounce: wait until the burst has settled.
                    loop {
                        match tokio::time::timeout(SETTLE, self.rx.recv()).await {
                            Ok(Some(())) => continue,
                            Ok(None) => return,
                            Err(_) => break,
                        }
                    }
                    let shared = Arc::clone(&shared);
                    let _ = tokio::task::spawn_blocking(move || crate::reload::reload(&shared, "watch")).await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

fn relevant(path: &Path, scripts_dir: &Path, config: Option<&Path>) -> bool {
    if let Some(cfg) = config {
        if path.file_name() == cfg.file_name() && same_dir(path, cfg) {
            return true;
        }
    }
    let ext_ok = path.extension().is_some_and(|e| e == "pcmod" || e == "lua");
    ext_ok && (path.starts_with(canonical(scripts_dir)) || path.starts_with(scripts_dir))
}

/// Watches the folder of each TLS file not watched yet (non-recursively: only the
/// files themselves count, see `same_file`).
fn watch_tls_dirs(watcher: &mut impl Watcher, files: &[PathBuf], watched: &mut Vec<PathBuf>) {
    for file in files {
        let dir = canonical(file.parent().unwrap_or(Path::new(".")));
        if watched.contains(&dir) {
            continue;
        }
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => watched.push(dir),
            Err(e) => {
                tracing::warn!(target: "proxycache::reload", dir = %dir.display(), error = %e, "cannot watch a certificate folder; reload with SIGHUP or POST /reload")
            }
        }
    }
}

/// Whether an event's `path` is the file `file` (same name in the same folder).
fn same_file(path: &Path, file: &Path) -> bool {
    path.file_name() == file.file_name() && same_dir(path, file)
}

fn same_dir(a: &Path, b: &Path) -> bool {
    let parent = |p: &Path| canonical(p.parent().unwrap_or(Path::new(".")));
    parent(a) == parent(b)
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}
