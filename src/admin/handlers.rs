//! One function per admin endpoint.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::{json as json_resp, text, AdminBody};
use crate::config::Config;
use crate::reload::{self, ReloadError};
use crate::server::Shared;

/// One admin call: the server, who called, and the request body.
pub struct Call<'a> {
    pub shared: &'a Arc<Shared>,
    pub peer: SocketAddr,
    pub body: Bytes,
}

impl Call<'_> {
    /// Writes an `admin_audit` line: who did what to what (`object`: a field named
    /// `target` would meet the log line's own in JSON), and how it ended.
    pub fn audit(&self, action: &str, object: &str, result: &str) {
        let generation = self.shared.generation().number;
        tracing::info!(target: "admin_audit", caller = %self.peer, action, object, result, generation, "admin call");
    }
}

/// `GET /status`.
pub fn status(c: &Call<'_>) -> Response<AdminBody> {
    let g = c.shared.generation();
    let last = c.shared.reloads.last();
    json_resp(
        StatusCode::OK,
        &json!({
            "status": "ok",
            "version": crate::VERSION,
            "uptime_s": c.shared.started.elapsed().as_secs(),
            "generation": g.number,
            // The workers running (a changed `server.workers` needs a restart).
            "workers": c.shared.workers.lock().len(),
            "connections": c.shared.connections.load(Ordering::Relaxed),
            // What the serving config changed that only a restart applies.
            "requires_restart": crate::reload::restart::pending(&c.shared.startup_config, &g.config),
            "last_reload": last.map(|r| json!({
                "at": r.at, "ok": r.ok, "trigger": r.trigger, "generation": r.generation, "errors": r.errors,
            })),
        }),
    )
}

/// `GET /stats`.
pub fn stats(c: &Call<'_>) -> Response<AdminBody> {
    let s = &c.shared.stats;
    let (opened, reused) = c.shared.pool_totals();
    let (ok, failed) = *c.shared.reloads.counts.lock();
    json_resp(
        StatusCode::OK,
        &json!({
            "requests": { "1xx": s.class(1), "2xx": s.class(2), "3xx": s.class(3), "4xx": s.class(4), "5xx": s.class(5), "total": s.total() },
            "connections": c.shared.connections.load(Ordering::Relaxed),
            "upstream_connections": { "opened": opened, "reused_requests": reused },
            "upstreams": upstream_list(c.shared),
            "modules": c.shared.generation().modules.iter().map(|m| json!({"name": m.name, "enabled": m.enabled})).collect::<Vec<_>>(),
            "reloads": { "ok": ok, "failed": failed },
        }),
    )
}

/// `GET /metrics`: Prometheus text exposition.
pub fn metrics(c: &Call<'_>) -> Response<AdminBody> {
    match c.shared.generation().std_state.metrics.prometheus() {
        Ok(body) => text(StatusCode::OK, crate::metrics::CONTENT_TYPE, body),
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            "the metrics could not be written\n".to_owned(),
        ),
    }
}

/// `GET /upstreams`.
pub fn upstreams(c: &Call<'_>) -> Response<AdminBody> {
    let (opened, reused) = c.shared.pool_totals();
    let idle: usize = c.shared.pools.lock().iter().map(|p| p.idle_count()).sum();
    json_resp(
        StatusCode::OK,
        &json!({ "upstreams": upstream_list(c.shared), "pool": { "opened": opened, "reused_requests": reused, "idle": idle } }),
    )
}

pub(super) fn upstream_list(shared: &Shared) -> Vec<Value> {
    let g = shared.generation();
    g.upstreams
        .sets
        .iter()
        .map(|set| {
            let servers: Vec<Value> = set
                .servers
                .iter()
                .map(|s| {
                    json!({
                        "server": s.label(), "weight": s.weight, "healthy": s.is_healthy(),
                        "breaker": s.breaker.state().as_str(), "inflight": s.inflight(),
                        "requests": s.requests(), "failures": s.failures(),
                    })
                })
                .collect();
            json!({ "name": set.name(), "balance": set.config.balance.as_str(), "health_checks": set.config.health.is_some(), "servers": servers })
        })
        .collect()
}

/// `GET /mods`: every module on disk, loaded or not.
pub fn mods(c: &Call<'_>) -> Response<AdminBody> {
    let disk = OnDisk::read(c.shared);
    json_resp(
        StatusCode::OK,
        &json!({
            "generation": c.shared.generation().number,
            "mods": module_list(c.shared, &disk, false),
            // Errors of the last failed reload that belong to no module file
            // (config.toml, the scripts folder).
            "errors": disk.other_errors(),
        }),
    )
}

/// `GET /mods/{name}`.
pub fn mod_get(c: &Call<'_>, name: &str) -> Response<AdminBody> {
    if let Err(resp) = valid_name(name) {
        return *resp;
    }
    match module_list(c.shared, &OnDisk::read(c.shared), true)
        .into_iter()
        .find(|m| m["name"] == name)
    {
        Some(m) => json_resp(StatusCode::OK, &m),
        None => not_found(name),
    }
}

/// The module files in `scripts.dir` and the errors of the last reload if it failed,
/// read once per call.
struct OnDisk {
    files: Vec<(PathBuf, String)>,
    errors: Vec<ReloadError>,
}

impl OnDisk {
    fn read(shared: &Shared) -> OnDisk {
        let dir = shared.generation().config.scripts.dir.clone();
        OnDisk {
            files: crate::script::read_sources(&dir).unwrap_or_default(),
            errors: shared
                .reloads
                .last()
                .filter(|r| !r.ok)
                .map(|r| r.errors)
                .unwrap_or_default(),
        }
    }

    /// The errors that belong to no module file.
    fn other_errors(&self) -> Vec<&ReloadError> {
        self.errors
            .iter()
            .filter(|e| {
                !self
                    .files
                    .iter()
                    .any(|(path, source)| owned_by(e, path, source))
            })
            .collect()
    }
}

/// Whether two spellings of a path name one file.
fn same_file(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (a.canonicalize(), b.canonicalize()),
            (Ok(x), Ok(y)) if x == y
        )
}

/// Whether error `e` belongs to the module in file `path` with `source`: it is about
/// that file, about a Lua chunk the module names (`lua "sub/x.lua"`), or about a
/// library the module's chunk `require`s.
fn owned_by(e: &ReloadError, path: &Path, source: &str) -> bool {
    if let Some(module) = &e.module {
        return path.file_stem().is_some_and(|s| *s == **module);
    }
    let file = Path::new(&e.file);
    if file.as_os_str().is_empty() {
        return false;
    }
    if same_file(file, path) {
        return true;
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    crate::generation::lua_chunk_names(source).any(|chunk| same_file(file, &dir.join(chunk)))
}

fn module_list(shared: &Shared, disk: &OnDisk, with_source: bool) -> Vec<Value> {
    let g = shared.generation();
    let mut out = Vec::new();
    for (path, source) in &disk.files {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let errors: Vec<&ReloadError> = disk
            .errors
            .iter()
            .filter(|e| owned_by(e, path, source))
            .collect();
        let loaded = g.modules.iter().find(|m| m.name == stem);
        let mut m = match loaded {
            Some(info) => json!({
                "name": info.name, "version": info.version, "priority": info.priority, "enabled": info.enabled,
                "kind": info.kind, "phases": info.phases, "config": info.config, "description": info.description,
                "file": path, "status": if errors.is_empty() { "loaded" } else { "error" }, "errors": errors,
            }),
            None => json!({
                "name": stem, "kind": "pcmod", "file": path,
                "status": if errors.is_empty() { "not loaded" } else { "error" }, "errors": errors,
            }),
        };
        if with_source {
            m["source"] = Value::String(source.clone());
        }
        out.push(m);
    }
    out
}

/// `PUT /mods/{name}`: check, write atomically, reload. On 400 nothing on disk changed.
pub async fn mod_put(c: &Call<'_>, name: &str) -> Response<AdminBody> {
    if let Err(resp) = valid_name(name) {
        c.audit("put_mod", name, "rejected: invalid name");
        return *resp;
    }
    let Ok(source) = std::str::from_utf8(&c.body).map(str::to_owned) else {
        c.audit("put_mod", name, "rejected: not UTF-8");
        return json_resp(
            StatusCode::BAD_REQUEST,
            &json!({"error": "the module source must be UTF-8"}),
        );
    };
    let config = match disk_config(c.shared) {
        Ok(cfg) => cfg,
        Err(errors) => {
            c.audit("put_mod", name, "rejected: config.toml has errors");
            return json_resp(
                StatusCode::BAD_REQUEST,
                &json!({"ok": false, "errors": errors}),
            );
        }
    };
    let path = config.scripts.dir.join(format!("{name}.pcmod"));
    // Checking compiles every module: off the admin runtime's thread, so that
    // /status and friends keep answering meanwhile.
    let candidate = vec![(path.clone(), Some(source.clone()))];
    let checked = tokio::task::spawn_blocking(move || reload::check_candidate(&config, &candidate))
        .await
        .unwrap_or_else(|e| {
            Err(vec![ReloadError::internal(format!(
                "the check failed: {e}"
            ))])
        });
    if let Err(errors) = checked {
        c.audit("put_mod", name, "rejected: diagnostics");
        return json_resp(
            StatusCode::BAD_REQUEST,
            &json!({"ok": false, "errors": errors}),
        );
    }
    // What was there, to put back if the reload fails for a reason the module check
    // cannot see (a certificate, an upstream): a 400 means nothing on disk changed.
    let previous = std::fs::read(&path).ok();
    if let Err(e) = write_atomically(&path, source.as_bytes()) {
        c.audit("put_mod", name, "failed: write");
        return json_resp(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"ok": false, "error": format!("cannot write {}: {e}", path.display())}),
        );
    }
    let report = run_reload(c, "put_mod", name).await;
    if matches!(&report, Ok(r) if !r.ok) {
        let restored = match &previous {
            Some(old) => write_atomically(&path, old),
            None => std::fs::remove_file(&path),
        };
        if let Err(e) = restored {
            tracing::warn!(target: "proxycache::admin", path = %path.display(), error = %e, "putting back the module after a failed reload failed");
        }
    }
    answer_reload(c, "put_mod", name, report)
}

/// `DELETE /mods/{name}`: remove the file and reload.
pub async fn mod_delete(c: &Call<'_>, name: &str) -> Response<AdminBody> {
    if let Err(resp) = valid_name(name) {
        c.audit("delete_mod", name, "rejected: invalid name");
        return *resp;
    }
    let path = c
        .shared
        .generation()
        .config
        .scripts
        .dir
        .join(format!("{name}.pcmod"));
    if !path.is_file() {
        c.audit("delete_mod", name, "rejected: no such module");
        return not_found(name);
    }
    let previous = std::fs::read(&path).ok();
    if let Err(e) = std::fs::remove_file(&path) {
        c.audit("delete_mod", name, "failed: remove");
        return json_resp(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"ok": false, "error": format!("cannot remove {}: {e}", path.display())}),
        );
    }
    let report = run_reload(c, "delete_mod", name).await;
    if let (Ok(r), Some(old)) = (&report, &previous) {
        if !r.ok {
            if let Err(e) = write_atomically(&path, old) {
                tracing::warn!(target: "proxycache::admin", path = %path.display(), error = %e, "putting back the module after a failed reload failed");
            }
        }
    }
    answer_reload(c, "delete_mod", name, report)
}

/// `POST /reload`.
pub async fn reload(c: &Call<'_>) -> Response<AdminBody> {
    reload_and_answer(c, "reload", "-").await
}

async fn reload_and_answer(c: &Call<'_>, action: &str, target: &str) -> Response<AdminBody> {
    let report = run_reload(c, action, target).await;
    answer_reload(c, action, target, report)
}

/// Reloads off the control thread.
async fn run_reload(
    c: &Call<'_>,
    action: &str,
    target: &str,
) -> Result<reload::ReloadReport, tokio::task::JoinError> {
    let shared = Arc::clone(c.shared);
    let trigger = format!("admin:{action} {target}");
    tokio::task::spawn_blocking(move || reload::reload(&shared, &trigger)).await
}

fn answer_reload(
    c: &Call<'_>,
    action: &str,
    target: &str,
    report: Result<reload::ReloadReport, tokio::task::JoinError>,
) -> Response<AdminBody> {
    match report {
        Ok(r) => {
            c.audit(action, target, if r.ok { "ok" } else { "reload failed" });
            json_resp(
                if r.ok {
                    StatusCode::OK
                } else {
                    StatusCode::BAD_REQUEST
                },
                &r,
            )
        }
        Err(e) => json_resp(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"ok": false, "error": e.to_string()}),
        ),
    }
}

/// `POST /config/verify`: body = TOML (empty: the file on disk).
pub async fn config_verify(c: &Call<'_>) -> Response<AdminBody> {
    let path = c.shared.config_path.clone();
    let text = if c.body.is_empty() {
        match &path {
            Some(p) => std::fs::read_to_string(p).unwrap_or_default(),
            None => crate::config::DEFAULT_CONFIG_TOML.to_owned(),
        }
    } else {
        String::from_utf8_lossy(&c.body).into_owned()
    };
    let base = base_dir(c.shared);
    let errors: Vec<Value> = match Config::from_toml_str(&text, path.as_deref(), &base) {
        Err(e) => e.0.iter().map(|e| json!({"key": e.key, "line": e.line, "col": e.col, "message": e.message, "file": e.file})).collect(),
        Ok(config) => {
            let errs = tokio::task::spawn_blocking(move || {
                let mut errs = reload::check_candidate(&config, &[]).err().unwrap_or_default();
                // Certificate files too: a reload of this config would read them.
                errs.extend(reload::check_tls(&config));
                errs
            })
            .await
            .unwrap_or_else(|e| vec![ReloadError::internal(format!("the check failed: {e}"))]);
            errs.iter().map(|e| json!({"key": e.key, "line": e.line, "col": e.col, "message": e.message, "file": e.file})).collect()
        }
    };
    json_resp(
        StatusCode::OK,
        &json!({"valid": errors.is_empty(), "errors": errors}),
    )
}

/// `POST /config/repair`: appends missing `[mods.NAME]` sections with their defaults
/// to config.toml (existing text and comments are kept as they are).
pub async fn config_repair(c: &Call<'_>) -> Response<AdminBody> {
    let Some(path) = c.shared.config_path.clone() else {
        return json_resp(
            StatusCode::CONFLICT,
            &json!({"error": "serving the embedded default: there is no config.toml to repair"}),
        );
    };
    let g = c.shared.generation();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            return json_resp(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"error": format!("cannot read {}: {e}", path.display())}),
            )
        }
    };
    let mut added = Vec::new();
    let mut extra = String::new();
    // What the file already has, not what is running: a second repair before a
    // reload must add nothing.
    let present: Vec<String> = match text.parse::<toml::Table>() {
        Ok(t) => t
            .get("mods")
            .and_then(|m| m.as_table())
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default(),
        Err(e) => {
            c.audit("config_repair", "config.toml", "refused: does not parse");
            return json_resp(
                StatusCode::CONFLICT,
                &json!({"error": format!("config.toml does not parse; fix it first: {e}")}),
            );
        }
    };
    for m in &g.modules {
        if present.contains(&m.name) {
            continue;
        }
        extra.push_str(&repair_section(m));
        added.push(m.name.clone());
    }
    if added.is_empty() {
        return json_resp(StatusCode::OK, &json!({"added": added}));
    }
    let mut new_text = text;
    if !new_text.ends_with('\n') {
        new_text.push('\n');
    }
    new_text.push_str("\n# Added by POST /config/repair: module settings with their defaults.");
    new_text.push_str(&extra);
    // The file must still load as a config afterwards (a `mods = { }` inline table,
    // say, cannot take `[mods.NAME]` sections): else nothing is written.
    if let Err(e) = Config::from_toml_str(&new_text, Some(&path), &base_dir(c.shared)) {
        c.audit(
            "config_repair",
            "config.toml",
            "refused: the result would not load",
        );
        let errors: Vec<Value> =
            e.0.iter()
                .map(|e| json!({"key": e.key, "line": e.line, "col": e.col, "message": e.message}))
                .collect();
        return json_resp(
            StatusCode::CONFLICT,
            &json!({"error": "adding the missing [mods.NAME] sections would leave config.toml invalid; add them by hand", "errors": errors}),
        );
    }
    if let Err(e) = write_atomically(&path, new_text.as_bytes()) {
        c.audit("config_repair", "config.toml", "failed: write");
        return json_resp(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"error": format!("cannot write {}: {e}", path.display())}),
        );
    }
    c.audit("config_repair", "config.toml", "ok");
    json_resp(StatusCode::OK, &json!({"added": added, "file": path}))
}

/// The `[mods.NAME]` section that pins a module's current settings without changing
/// what it does.
///
/// `enabled` and `priority` are reserved keys, so a config field of either name is
/// not written again (a second `enabled = ...` would be a duplicate key). The reserved
/// `enabled` also sets a module's own `bool` field of that name, so for such a module
/// (the shipped `rate_limit`) it is written with the field's value: `enabled = true`
/// would switch the module's behaviour on, while `false` keeps it off (and unloads it,
/// which is what that field means).
fn repair_section(m: &crate::script::ModuleInfo) -> String {
    let own_switch = m.config.get("enabled").and_then(|v| v.parse::<bool>().ok());
    let mut s = format!("\n[mods.{}]\n", m.name);
    match own_switch {
        Some(field) => s.push_str(&format!(
            "enabled  = {}  # also the module's own `enabled` field\n",
            m.enabled && field
        )),
        None => s.push_str(&format!("enabled  = {}\n", m.enabled)),
    }
    s.push_str(&format!("priority = {}\n", m.priority));
    for (k, v) in &m.config {
        if !matches!(k.as_str(), "enabled" | "priority") {
            s.push_str(&format!("{k} = {v}\n"));
        }
    }
    s
}

fn disk_config(shared: &Shared) -> Result<Config, Vec<ReloadError>> {
    match &shared.config_path {
        Some(p) => Config::load(Some(p)).map_err(|e| e.0.iter().map(ReloadError::from).collect()),
        None => Ok(Config::embedded_default()),
    }
}

fn base_dir(shared: &Shared) -> PathBuf {
    shared.generation().config.base_dir.clone()
}

/// Module names are `[a-z][a-z0-9_]*` (at most 64): never a path.
fn valid_name(name: &str) -> Result<(), Box<Response<AdminBody>>> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Box::new(json_resp(
            StatusCode::BAD_REQUEST,
            &json!({"error": format!("invalid module name {name:?}: use [a-z][a-z0-9_]*")}),
        )))
    }
}

fn not_found(name: &str) -> Response<AdminBody> {
    json_resp(
        StatusCode::NOT_FOUND,
        &json!({"error": format!("no module named {name:?}")}),
    )
}

/// Writes via a temporary file in the same folder and a rename, so readers (and the
/// watcher) never see half a file; the data, then the rename, are synced to disk, so
/// a crash right after leaves the old file or the new one, never an empty one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", fastrand::u64(..)));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    let renamed = written.and_then(|()| std::fs::rename(&tmp, path));
    if renamed.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return renamed;
    }
    // The rename itself is durable once the folder is synced (where a folder can be
    // opened for that; elsewhere the rename stands as the filesystem keeps it).
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
