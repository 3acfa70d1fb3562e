//! Hot reload: build a complete new generation off the workers, check it fully, swap
//! it in atomically — or swap nothing and keep serving the old one.
//!
//! Triggers (file watcher, SIGHUP, the admin API) all end in [`reload`]. Reloads are
//! serialised; each returns a [`ReloadReport`] that `/reload`, `/status` and the log
//! show. State that must not reset (rate-limit buckets, breakers, health) is carried
//! into the new generation (STYLE rule 9: reload is a diff).

pub mod diff;
pub mod restart;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;

use crate::config::Config;
use crate::generation::Generation;
use crate::script::Diagnostic;
use crate::server::Shared;

/// One error of a failed reload, as JSON.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReloadError {
    pub file: String,
    pub line: u32,
    pub col: u32,
    /// The config key, for config errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub message: String,
    /// What to do about it, for the module errors that have one (also in `rendered`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The full rendered diagnostic (source line, caret, hint).
    pub rendered: String,
    /// For an error in a library a module's Lua chunk `require`s: that module.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

impl From<&Diagnostic> for ReloadError {
    fn from(d: &Diagnostic) -> Self {
        ReloadError {
            file: d.file.clone(),
            line: d.line,
            col: d.col,
            key: None,
            message: d.message.clone(),
            hint: d.hint.clone(),
            rendered: d.render(),
            module: d.module.as_deref().cloned(),
        }
    }
}

impl ReloadError {
    /// An error of the checking machinery itself (no file or position).
    pub fn internal(message: String) -> Self {
        ReloadError {
            file: String::new(),
            line: 0,
            col: 0,
            key: None,
            rendered: message.clone(),
            module: None,
            hint: None,
            message,
        }
    }
}

impl From<&crate::config::ConfigError> for ReloadError {
    fn from(e: &crate::config::ConfigError) -> Self {
        ReloadError {
            file: e.file.clone(),
            line: e.line as u32,
            col: e.col as u32,
            key: (!e.key.is_empty()).then(|| e.key.clone()),
            message: e.message.clone(),
            rendered: e.to_string(),
            hint: None,
            module: None,
        }
    }
}

/// The outcome of one reload.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    /// The generation serving after this reload (unchanged when it failed).
    pub generation: u64,
    pub ok: bool,
    /// Seconds since the Unix epoch.
    pub at: u64,
    /// What started it: `watch`, `sighup`, `admin`, `admin:put NAME`, ...
    pub trigger: String,
    /// Changes now in effect.
    pub applied: Vec<String>,
    /// Every restart-only key on which the configuration now serving differs from
    /// what the process started with: not applied, and listed by every report until a
    /// restart or until the config puts it back.
    pub requires_restart: Vec<String>,
    pub errors: Vec<ReloadError>,
}

/// Serialises reloads and remembers the last one.
#[derive(Debug, Default)]
pub struct ReloadState {
    lock: Mutex<()>,
    last: Mutex<Option<ReloadReport>>,
    /// Successful and failed reloads so far.
    pub counts: Mutex<(u64, u64)>,
}

impl ReloadState {
    /// The last reload's report, if there was one.
    pub fn last(&self) -> Option<ReloadReport> {
        self.last.lock().clone()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Loads config and modules from disk and, if everything checks, swaps in the new
/// generation. Blocking (file I/O and compiling): call it off the workers.
pub fn reload(shared: &Arc<Shared>, trigger: &str) -> ReloadReport {
    let _serial = shared.reloads.lock.lock();
    let old = shared.generation();
    let mut pending_swap = None;
    let mut report = match build(shared, &old) {
        Ok(None) => ReloadReport {
            generation: old.number,
            ok: true,
            at: now_secs(),
            trigger: trigger.to_owned(),
            applied: vec!["nothing changed".into()],
            requires_restart: Vec::new(),
            errors: Vec::new(),
        },
        Err(errors) => ReloadReport {
            generation: old.number,
            ok: false,
            at: now_secs(),
            trigger: trigger.to_owned(),
            applied: Vec::new(),
            requires_restart: Vec::new(),
            errors,
        },
        Ok(Some(next)) => match bind_added(shared, &next.config) {
            // A new address that cannot be bound fails the whole reload: nothing is
            // swapped and every listener stays as it was.
            Err(errors) => ReloadReport {
                generation: old.number,
                ok: false,
                at: now_secs(),
                trigger: trigger.to_owned(),
                applied: Vec::new(),
                requires_restart: Vec::new(),
                errors,
            },
            Ok(bound) => {
                let max_connections = next.config.server.limits.max_connections;
                if max_connections != old.config.server.limits.max_connections {
                    crate::server::fds::check(max_connections);
                }
                let mut applied = diff::applied(&shared.startup_config, &old, &next);
                applied.extend(apply_listeners(shared, &next.config, bound));
                let number = next.number;
                pending_swap = Some(next);
                ReloadReport {
                    generation: number,
                    ok: true,
                    at: now_secs(),
                    trigger: trigger.to_owned(),
                    applied,
                    requires_restart: Vec::new(),
                    errors: Vec::new(),
                }
            }
        },
    };
    // Against what runs, not against `old`: a change still waiting for a restart is
    // listed by every report until the config puts it back.
    let serving = pending_swap.as_ref().unwrap_or(&old);
    report.requires_restart = restart::pending(&shared.startup_config, &serving.config);
    log_report(&report);
    old.std_state.metrics.reloaded(report.ok);
    {
        let mut counts = shared.reloads.counts.lock();
        if report.ok {
            counts.0 += 1;
        } else {
            counts.1 += 1;
        }
    }
    *shared.reloads.last.lock() = Some(report.clone());
    // Swapped last, so whoever sees the new generation also sees its report.
    if let Some(next) = pending_swap {
        shared.swap_generation(Arc::new(next));
    }
    report
}

/// Builds (but does not swap in) the next generation from what is on disk; `None`
/// when its inputs are exactly the current generation's.
fn build(shared: &Shared, old: &Generation) -> Result<Option<Generation>, Vec<ReloadError>> {
    let config = match &shared.config_path {
        Some(path) => Config::load(Some(path))
            .map_err(|e| e.0.iter().map(ReloadError::from).collect::<Vec<_>>())?,
        None => Config::embedded_default(),
    };
    if config.source_text.trim().is_empty() && !old.config.source_text.trim().is_empty() {
        // An empty file is far more likely a write in progress than a wish to drop
        // every setting; the next change event reloads again.
        let message = "config file is empty (a write in progress?); keeping the current generation";
        return Err(whole_file_error(&config, message.to_owned()));
    }
    if let Err(message) = keeps_admin_closed(&shared.startup_config, &config) {
        return Err(whole_file_error(&config, message));
    }
    let sources = crate::script::read_sources(&config.scripts.dir)
        .map_err(|d| vec![ReloadError::from(&d)])?;
    if crate::generation::fingerprint(&config, &sources) == old.fingerprint {
        return Ok(None);
    }
    Generation::build_from(
        old.number + 1,
        config,
        &sources,
        Some(old),
        Arc::clone(&old.std_state),
    )
    .map(Some)
    .map_err(|d| d.iter().map(ReloadError::from).collect())
}

/// The admin listener is bound at start-up (`admin.listen` needs a restart), but its
/// API key is live: a reload that drops the key while the running listener is on a
/// non-loopback address would open the admin API to the network until the restart
/// (the config alone, which may move the listener to loopback, looks fine).
fn keeps_admin_closed(running: &Config, next: &Config) -> Result<(), String> {
    match running.admin.listen {
        Some(addr) if !addr.ip().is_loopback() && next.admin.api_key.is_empty() => Err(format!(
            "admin.api_key: the admin listener serving on {addr} needs an API key until a \
             restart applies admin.listen; keep admin.api_key set until then"
        )),
        _ => Ok(()),
    }
}

/// The config file's name for messages (`<default>` for the embedded config).
fn config_file(config: &Config) -> String {
    config
        .source
        .as_ref()
        .map_or("<default>".to_owned(), |p| p.display().to_string())
}

/// An error about the config file as a whole.
fn whole_file_error(config: &Config, message: String) -> Vec<ReloadError> {
    vec![ReloadError {
        file: config_file(config),
        line: 1,
        col: 1,
        key: None,
        rendered: message.clone(),
        module: None,
        hint: None,
        message,
    }]
}

/// Checks a candidate without swapping anything (for `PUT /mods` and
/// `/config/verify`): `sources` replaces what is on disk for those module files.
pub fn check_candidate(
    config: &Config,
    replace: &[(std::path::PathBuf, Option<String>)],
) -> Result<(), Vec<ReloadError>> {
    let mut sources = crate::script::read_sources(&config.scripts.dir)
        .map_err(|d| vec![ReloadError::from(&d)])?;
    for (path, text) in replace {
        sources.retain(|(p, _)| p.file_name() != path.file_name());
        if let Some(text) = text {
            sources.push((path.clone(), text.clone()));
        }
    }
    sources.sort_by(|a, b| a.0.cmp(&b.0));
    crate::script::load_sources(config, &sources)
        .map(|_| ())
        .map_err(|d| d.iter().map(ReloadError::from).collect())
}

/// Reads the TLS listeners' certificate, key and CA files and the upstream sets'
/// `tls_ca` as a reload would; one error per bad file or setting.
pub fn check_tls(config: &Config) -> Vec<ReloadError> {
    let mut errors = match crate::server::tls::TlsListeners::build(config, None) {
        Ok(_) => Vec::new(),
        Err(errors) => crate::server::tls::diagnostics(config, &errors)
            .iter()
            .map(ReloadError::from)
            .collect(),
    };
    errors.extend(
        crate::upstream::check_tls(config)
            .iter()
            .map(ReloadError::from),
    );
    errors
}

/// Sockets bound for addresses a reload adds, not yet handed to the workers.
type Bound = Vec<(SocketAddr, Vec<std::net::TcpListener>, SocketAddr)>;

/// Binds every address `config` adds to `server.listen`, before anything changes:
/// `Err` (with nothing bound) when one cannot be. A new address on a port this process
/// listens on already (another IP) is bound without the "in use" probe, which would
/// meet our own socket.
fn bind_added(shared: &Shared, config: &Config) -> Result<Bound, Vec<ReloadError>> {
    let current = shared.listeners.lock();
    let workers = shared.workers.lock().len();
    let mut bound = Vec::new();
    for (i, &addr) in config.server.listen.iter().enumerate() {
        if current.contains_key(&addr) {
            continue;
        }
        // Ours overlaps it when on its port and one of the two is the wildcard (the
        // same address is already bound and skipped above); otherwise another
        // process on that port must still be found.
        let ours = addr.port() != 0
            && current.keys().any(|a| {
                a.port() == addr.port() && (a.ip().is_unspecified() || addr.ip().is_unspecified())
            });
        match crate::server::listener::bind_group(addr, workers, !ours) {
            Ok((sockets, at)) => bound.push((addr, sockets, at)),
            Err(e) => {
                tracing::error!(target: "proxycache::reload", %addr, error = %e, "cannot listen on a new address");
                let message = format!("cannot listen on {addr}: {e}");
                let key = format!("server.listen[{i}]");
                let (line, col) = config.position_of(&key).unwrap_or((0, 0));
                let file = config_file(config);
                let rendered = match line {
                    0 => format!("{file}: {key}: {message}"),
                    _ => format!("{file}:{line}:{col}: {key}: {message}"),
                };
                return Err(vec![ReloadError {
                    file,
                    line: line as u32,
                    col: col as u32,
                    key: Some(key),
                    rendered,
                    module: None,
                    hint: None,
                    message,
                }]);
            }
        }
    }
    Ok(bound)
}

/// Hands the sockets [`bind_added`] made to the workers, then closes the listeners of
/// addresses `config` no longer has.
fn apply_listeners(shared: &Shared, config: &Config, bound: Bound) -> Vec<String> {
    let mut done = Vec::new();
    let mut current = shared.listeners.lock();
    let workers = shared.workers.lock();
    for (addr, sockets, at) in bound {
        for (w, socket) in workers.iter().zip(sockets) {
            let _ = w.send(crate::server::worker::WorkerCmd::Listen(addr, socket));
        }
        current.insert(addr, at);
        done.push(format!("listening on {at}"));
    }
    let removed: Vec<_> = current
        .keys()
        .filter(|a| !config.server.listen.contains(a))
        .copied()
        .collect();
    for addr in removed {
        for w in workers.iter() {
            let _ = w.send(crate::server::worker::WorkerCmd::Unlisten(addr));
        }
        current.remove(&addr);
        done.push(format!("stopped listening on {addr}"));
    }
    done
}

/// One line per event: `reloaded`, or `reload failed` and then one line per error
/// with its position as fields (the rendered diagnostic, with its source line and
/// caret, spans lines: it is in `/status` and the reload's answer).
fn log_report(r: &ReloadReport) {
    if r.ok {
        let applied = crate::observe::list(&r.applied, "; ");
        tracing::info!(target: "proxycache::reload", generation = r.generation, trigger = %r.trigger, applied = applied.as_deref(), "reloaded");
    } else {
        tracing::error!(target: "proxycache::reload", generation = r.generation, trigger = %r.trigger, errors = r.errors.len(), "reload failed; the previous generation keeps serving");
        for e in &r.errors {
            let position = (e.line > 0).then_some((e.line, e.col));
            tracing::error!(
                target: "proxycache::reload",
                generation = r.generation,
                file = %e.file,
                line = position.map(|p| p.0),
                col = position.map(|p| p.1),
                key = e.key.as_deref().map(tracing::field::display),
                module = e.module.as_deref().map(tracing::field::display),
                error = %e.message,
                hint = e.hint.as_deref().map(tracing::field::display),
                "reload error"
            );
        }
    }
    for what in &r.requires_restart {
        tracing::warn!(target: "proxycache::reload", change = %what, "this change needs a restart and was not applied");
    }
}
