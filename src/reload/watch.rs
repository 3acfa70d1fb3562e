//! Watching `scripts.dir` (recursively, so `mods/lib/` counts), the config file, and
//! the certificate files (`generation::certificate_files`: the TLS listeners'
//! certificates, keys and CAs, the upstream sets' `tls_ca`; their folders, so a file
//! renamed over one — as certbot and editors do — counts). Editors write files in several
//! steps, so events are debounced: a reload starts only once no relevant event has
//! arrived for [`SETTLE`], and then re-reads everything.
//! The watches are installed ([`install`]) before `server::start` returns, so a change
//! made the moment the server is up is not missed.
//!
//! Events miss some changes: a config.toml reached through a symlink that is swapped
//! (a Kubernetes ConfigMap's `..data`), a `scripts.dir` replaced by a rename (the
//! watch follows the old folder), a scripts folder made after start or named anew by
//! a reload. So every [`POLL`] the files' identity (path, inode, size, modification
//! time) is also compared with what it was after the last reload, and a difference
//! reloads too (once the identity has stayed the same for [`SETTLE`]), re-watching
//! the scripts folder where it is now.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use parking_lot::RwLock;
use tokio::sync::mpsc;

use crate::server::Shared;

/// Quiet time after the last event before reloading.
pub const SETTLE: Duration = Duration::from_millis(250);

/// The longest a burst of events may put a reload off (an editor or a tool that
/// keeps writing would otherwise delay it for as long as it writes).
pub const MAX_SETTLE: Duration = Duration::from_secs(2);

/// Most folder entries the poll looks at.
const MAX_WALK: usize = 10_000;

/// How often the files' identity is compared (see the module doc).
pub const POLL: Duration = Duration::from_secs(2);

/// The installed watches, made before the server reports that it is up (so a file
/// changed right after start is seen), and driven by [`Watching::run`] on the control
/// thread.
pub struct Watching {
    watcher: notify::RecommendedWatcher,
    rx: mpsc::UnboundedReceiver<()>,
    tls_files: Arc<RwLock<Vec<PathBuf>>>,
    watched_dirs: Vec<PathBuf>,
    seen_generation: u64,
    /// The scripts folder as watched now (its canonical path and inode).
    scripts_watched: Option<(PathBuf, u64)>,
    /// The filter's view of the scripts folder, updated when it moves.
    filter_dir: Arc<RwLock<PathBuf>>,
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
    let tls_files = Arc::new(RwLock::new(crate::generation::certificate_files(
        &generation.config,
    )));
    drop(generation);
    let (tx, rx) = mpsc::unbounded_channel::<()>();
    let filter_dir = Arc::new(RwLock::new(scripts_dir.clone()));
    let filter_view = Arc::clone(&filter_dir);
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
                    relevant(p, &filter_view.read(), filter_cfg.as_deref())
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
    let scripts_watched = watch_scripts(&mut watcher, &scripts_dir, None);
    if let Some(dir) = config_path.as_deref().map(parent) {
        // The folder, not the file: editors replace files by renaming over them.
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
        scripts_watched,
        filter_dir,
    })
}

/// Watches `dir` (recursively) unless it is the folder `current` already watches;
/// returns what is watched now.
fn watch_scripts(
    watcher: &mut impl Watcher,
    dir: &Path,
    current: Option<(PathBuf, u64)>,
) -> Option<(PathBuf, u64)> {
    let id = identity(dir).map(|(_, ino, _, _)| (canonical(dir), ino));
    if id == current {
        return current;
    }
    if let Some((old, _)) = &current {
        let _ = watcher.unwatch(old);
    }
    let (path, ino) = id?;
    if let Err(e) = watcher.watch(&path, RecursiveMode::Recursive) {
        tracing::warn!(target: "proxycache::reload", dir = %path.display(), error = %e, "cannot watch the scripts folder");
        return None;
    }
    Some((path, ino))
}

/// What identifies a file's contents without reading them: its canonical path, inode,
/// size and modification time (symlinks followed).
fn identity(path: &Path) -> Option<(PathBuf, u64, u64, i128)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let mtime = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
    Some((canonical(path), meta.ino(), meta.len(), mtime))
}

/// A hash of the identity of everything a reload reads: the config file, the scripts
/// folder and its `.pcmod`/`.lua` files (recursively, hidden ones left out), the TLS
/// files.
fn files_signature(config: Option<&Path>, scripts: &Path, tls: &[PathBuf]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    config.map(identity).hash(&mut h);
    // The folder by where it is and which it is, not by its own times: a file of
    // another kind written in it is no reason to reload.
    identity(scripts)
        .map(|(path, ino, _, _)| (path, ino))
        .hash(&mut h);
    let mut stack = vec![scripts.to_path_buf()];
    let mut files = Vec::new();
    let mut seen = 0usize;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            // Bounded, and symlinked folders are not entered (a link to `/usr` has
            // loops): this runs on the control thread.
            seen += 1;
            if seen > MAX_WALK {
                break;
            }
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(path);
            } else if script_file(&path) {
                files.push(path);
            }
        }
    }
    files.sort();
    for f in files.iter().chain(tls) {
        (f, identity(f)).hash(&mut h);
    }
    h.finish()
}

impl Watching {
    /// Reloads after each settled burst of relevant changes, until shutdown.
    pub async fn run(mut self, shared: Arc<Shared>) {
        // Reloads from anywhere (SIGHUP, the admin API) may name new certificate files.
        let mut recheck = tokio::time::interval(Duration::from_secs(1));
        let mut poll = tokio::time::interval(POLL);
        let mut shutdown = shared.shutdown_signal();
        let signature = |shared: &Shared| {
            let g = shared.generation();
            files_signature(
                shared.config_path.as_deref(),
                &g.config.scripts.dir,
                &crate::generation::certificate_files(&g.config),
            )
        };
        let mut last_signature = signature(&shared);
        loop {
            tokio::select! {
                _ = poll.tick() => {
                    let mut now = signature(&shared);
                    if now != last_signature {
                        // The same quiet time as after an event: the change may be a
                        // write still in progress.
                        let burst = tokio::time::Instant::now();
                        loop {
                            tokio::time::sleep(SETTLE).await;
                            let later = signature(&shared);
                            if later == now || burst.elapsed() >= MAX_SETTLE {
                                break;
                            }
                            now = later;
                        }
                        tracing::debug!(target: "proxycache::reload", "files changed without an event (a symlink or folder swapped): reloading");
                        let s = Arc::clone(&shared);
                        let _ = tokio::task::spawn_blocking(move || crate::reload::reload(&s, "watch")).await;
                        self.rewatch_scripts(&shared);
                        last_signature = signature(&shared);
                    }
                }
                _ = recheck.tick() => {
                    let generation = shared.generation();
                    if generation.number != self.seen_generation {
                        self.seen_generation = generation.number;
                        let files = crate::generation::certificate_files(&generation.config);
                        watch_tls_dirs(&mut self.watcher, &files, &mut self.watched_dirs);
                        *self.tls_files.write() = files;
                        drop(generation);
                        // A reload from anywhere: what it read is the new reference.
                        self.rewatch_scripts(&shared);
                        last_signature = signature(&shared);
                    }
                }
                event = self.rx.recv() => {
                    if event.is_none() {
                        return;
                    }
                    // Debounce: wait until the burst has settled, or MAX_SETTLE.
                    let burst = tokio::time::Instant::now();
                    loop {
                        if burst.elapsed() >= MAX_SETTLE {
                            break;
                        }
                        match tokio::time::timeout(SETTLE, self.rx.recv()).await {
                            Ok(Some(())) => continue,
                            Ok(None) => return,
                            Err(_) => break,
                        }
                    }
                    let s = Arc::clone(&shared);
                    let _ = tokio::task::spawn_blocking(move || crate::reload::reload(&s, "watch")).await;
                    self.rewatch_scripts(&shared);
                    last_signature = signature(&shared);
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

impl Watching {
    /// Watches the scripts folder where the current generation's `scripts.dir` is now
    /// (a reload may name another, or the folder may have been replaced).
    fn rewatch_scripts(&mut self, shared: &Shared) {
        let dir = shared.generation().config.scripts.dir.clone();
        self.scripts_watched = watch_scripts(&mut self.watcher, &dir, self.scripts_watched.take());
        *self.filter_dir.write() = dir;
    }
}

fn relevant(path: &Path, scripts_dir: &Path, config: Option<&Path>) -> bool {
    if let Some(cfg) = config {
        if path.file_name() == cfg.file_name() && same_dir(path, cfg) {
            return true;
        }
    }
    script_file(path) && (path.starts_with(canonical(scripts_dir)) || path.starts_with(scripts_dir))
}

/// A `.pcmod` or `.lua` file that is not hidden (`.gate.pcmod`, macOS's `._gate.pcmod`
/// are never loaded, so changing one is no reason to reload).
fn script_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "pcmod" || e == "lua") && !crate::script::is_hidden(path)
}

/// Watches the folder of each TLS file not watched yet (non-recursively: only the
/// files themselves count, see `same_file`).
fn watch_tls_dirs(watcher: &mut impl Watcher, files: &[PathBuf], watched: &mut Vec<PathBuf>) {
    for file in files {
        let dir = canonical(parent(file));
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
    canonical(parent(a)) == canonical(parent(b))
}

/// The folder `path` is in: `.` for a bare name such as `config.toml` (whose
/// `parent()` is the empty path, which names no folder).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::relevant;

    /// Hidden files are never loaded (`.gate.pcmod`, macOS's `._gate.pcmod`), so a
    /// change to one does not reload.
    #[test]
    fn hidden_files_in_the_scripts_folder_are_not_relevant() {
        let dir = Path::new("/nowhere/mods");
        let yes = |p: &str| relevant(Path::new(p), dir, None);
        assert!(yes("/nowhere/mods/gate.pcmod"));
        assert!(yes("/nowhere/mods/lib/util.lua"));
        assert!(!yes("/nowhere/mods/.gate.pcmod"));
        assert!(!yes("/nowhere/mods/._gate.pcmod"));
        assert!(!yes("/nowhere/mods/lib/.util.lua"));
        assert!(!yes("/nowhere/mods/notes.txt"));
    }
}
