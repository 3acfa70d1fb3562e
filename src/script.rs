//! pcmod: loading `.pcmod` files from `scripts.dir` into a compiled [`Pipeline`].
//!
//! `parse` (pest -> AST) -> `modconfig` (defaults + `[mods.NAME]`) -> `compile` (every
//! static check, then the executable form) -> `PcmodModule` (the pipeline's `Module`).
//! A module that fails any check is not loaded, and every error of every file is
//! reported at once.

pub mod ast;
pub mod compile;
pub mod diag;
pub mod exec;
pub mod ir;
mod luachunk;
pub mod modconfig;
pub mod parse;
pub mod regexes;
pub mod value;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::config::Config;
use crate::pipeline::{Exchange, Flow, Module as PipelineModule, Pipeline, ScriptError};
use ast::PhaseKind;
pub use diag::Diagnostic;
use exec::Exit;

/// What the admin API and `check` report about a loaded module.
#[derive(Debug, Clone, Serialize)]
pub struct ModuleInfo {
    pub name: String,
    pub version: Option<String>,
    pub priority: i64,
    pub enabled: bool,
    pub kind: &'static str,
    pub file: PathBuf,
    pub phases: Vec<&'static str>,
    pub description: Option<String>,
    /// The resolved config (defaults merged with `[mods.NAME]`), as TOML literals.
    pub config: std::collections::BTreeMap<String, String>,
    /// A hash of the module's text and its Lua chunk (a reload reports a change).
    #[serde(skip)]
    pub source_hash: u64,
}

/// A compiled pcmod module (some of whose phases may be Lua hooks).
#[derive(Debug)]
pub struct PcmodModule {
    name: String,
    file: Arc<str>,
    priority: i64,
    compiled: compile::Compiled,
    upstreams: Arc<[String]>,
    /// The module's index in the pipeline's Lua runtime, and which hooks its chunk
    /// defines (request, response, log).
    lua: Option<(usize, [bool; 3])>,
}

impl PcmodModule {
    fn fault(&self, f: exec::Fault) -> ScriptError {
        ScriptError {
            module: self.name.clone(),
            file: self.file.to_string(),
            line: f.line,
            message: f.message,
            client: None,
            upstream: None,
        }
    }

    fn run(&self, phase: Option<&ir::CPhase>, ex: &mut Exchange<'_>) -> Result<Exit, ScriptError> {
        match phase {
            Some(p) => exec::run_phase(p, ex, &self.upstreams, self.lua.map(|(i, _)| i))
                .map_err(|f| self.fault(f)),
            None => Ok(Exit::Done),
        }
    }
}

impl PipelineModule for PcmodModule {
    fn name(&self) -> &str {
        &self.name
    }

    fn priority(&self) -> i64 {
        self.priority
    }

    fn has_phase(&self, phase: PhaseKind) -> bool {
        self.lua_hook(phase).is_some()
            || match phase {
                PhaseKind::Request => self.compiled.request.is_some(),
                PhaseKind::Response => self.compiled.response.is_some(),
                PhaseKind::Log => self.compiled.log.is_some(),
            }
    }

    fn lua_hook(&self, phase: PhaseKind) -> Option<usize> {
        let (index, hooks) = self.lua?;
        hooks[crate::lua::vm::phase_index(phase)].then_some(index)
    }

    fn on_request(&self, ex: &mut Exchange<'_>) -> Result<Flow, ScriptError> {
        Ok(match self.run(self.compiled.request.as_ref(), ex)? {
            Exit::Respond(r) => Flow::Respond(*r),
            Exit::Forward(f) => Flow::Forward(*f),
            Exit::Done | Exit::Next => Flow::Continue,
        })
    }

    fn on_response(&self, ex: &mut Exchange<'_>) -> Result<(), ScriptError> {
        self.run(self.compiled.response.as_ref(), ex).map(|_| ())
    }

    fn on_log(&self, ex: &mut Exchange<'_>) -> Result<(), ScriptError> {
        self.run(self.compiled.log.as_ref(), ex).map(|_| ())
    }
}

/// The result of loading `scripts.dir`.
#[derive(Debug, Default)]
pub struct Loaded {
    pub pipeline: Pipeline,
    pub modules: Vec<ModuleInfo>,
}

/// Loads every `*.pcmod` in `config.scripts.dir` (none when the folder does not
/// exist) into a pipeline for `config`'s upstreams.
pub fn load(config: &Config) -> Result<Loaded, Vec<Diagnostic>> {
    let sources = read_sources(&config.scripts.dir).map_err(|d| vec![d])?;
    load_sources(config, &sources)
}

/// Reads every `*.pcmod` in `dir` but hidden ones ([`is_hidden`]), sorted by file name
/// (none when the folder does not exist).
pub fn read_sources(dir: &Path) -> Result<Vec<(PathBuf, String)>, Diagnostic> {
    let mut sources = Vec::new();
    for path in module_files(dir)? {
        match std::fs::read_to_string(&path) {
            Ok(text) => sources.push((path, text)),
            Err(e) => {
                return Err(Diagnostic::file_level(
                    &path.display().to_string(),
                    format!("cannot read: {e}"),
                ))
            }
        }
    }
    Ok(sources)
}

fn module_files(dir: &Path) -> Result<Vec<PathBuf>, Diagnostic> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Diagnostic::file_level(
                &dir.display().to_string(),
                format!("cannot read the scripts folder: {e}"),
            ))
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pcmod") && !is_hidden(p) && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Whether `lua "FILE"` may name `rel`: a relative path that stays inside the
/// scripts folder (no `..`).
pub fn chunk_path_allowed(rel: &str) -> bool {
    luachunk::outside_scripts(rel).is_none()
}

/// Whether a file's name starts with `.` (an editor's or macOS's `._NAME` side file):
/// such files are never modules or libraries, as nginx's `include *.conf` skips them.
pub fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."))
}

/// Loads modules from `(path, source)` pairs; the path's stem must be the module name.
pub fn load_sources(
    config: &Config,
    sources: &[(PathBuf, String)],
) -> Result<Loaded, Vec<Diagnostic>> {
    // Parsing and checking recurse as deep as the module nests; the limits keep that
    // bounded, and a thread of our own makes the bound independent of the caller's
    // stack (tests and `spawn_blocking` threads get 2 MiB).
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("pc-load".into())
            .stack_size(LOAD_STACK)
            .spawn_scoped(scope, || load_sources_here(config, sources))
            .map_err(|e| {
                vec![Diagnostic::file_level(
                    "<loader>",
                    format!("cannot start the loader thread: {e}"),
                )]
            })?
            .join()
            .unwrap_or_else(|_| {
                Err(vec![Diagnostic::file_level(
                    "<loader>",
                    "the module loader failed unexpectedly",
                )])
            })
    })
}

/// Stack for the loader thread.
const LOAD_STACK: usize = 64 << 20;

fn load_sources_here(
    config: &Config,
    sources: &[(PathBuf, String)],
) -> Result<Loaded, Vec<Diagnostic>> {
    let upstreams: Arc<[String]> = config.upstreams.iter().map(|u| u.name.clone()).collect();
    let config_file = config
        .source
        .as_ref()
        .map_or("<default>".to_owned(), |p| p.display().to_string());
    let mut diags = Vec::new();
    let mut ctx_names = Vec::new();
    let mut regex_budget = regexes::Budget::default();
    let mut modules: Vec<Arc<dyn PipelineModule>> = Vec::new();
    let mut infos = Vec::new();
    let mut keeps_request_headers = false;
    let mut response_head_unread = true;
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut lua_specs: Vec<crate::lua::LuaSpec> = Vec::new();
    let limits = crate::lua::Limits {
        memory: config.scripts.lua_memory_limit,
        budget: config.scripts.lua_instruction_budget,
        max_body: config.server.limits.max_body,
    };
    // Read once, here: the checks below and every worker's VM of this generation load
    // libraries from this snapshot only.
    let libs = Arc::new(crate::lua::Libraries::read(&config.scripts.dir.join("lib")));
    for (path, source) in sources {
        let file = path.display().to_string();
        // Editors on Windows may start a UTF-8 file with a byte-order mark: skipped
        // here, once, so that parsing and every check see the same text.
        let source = source.strip_prefix('\u{feff}').unwrap_or(source);
        let module = match parse::parse(&file, source) {
            Ok(m) => m,
            Err(d) => {
                diags.push(d);
                continue;
            }
        };
        let mut errors = module_checks(&module, path, source, &seen);
        seen.push((module.name.node.clone(), file.clone()));
        let overrides = modconfig::Overrides {
            file: &config_file,
            text: &config.source_text,
            table: config.mods.get(&module.name.node),
        };
        let settings = match modconfig::resolve(&module, source, &overrides) {
            Ok(s) => Some(s),
            Err(mut d) => {
                errors.append(&mut d);
                None
            }
        };
        // With broken overrides, check the phases against the declared defaults so
        // one bad TOML value does not cascade into "unknown field" errors.
        let fields = match &settings {
            Some(s) => s.fields.clone(),
            None => {
                let defaults = modconfig::Overrides {
                    table: None,
                    ..overrides
                };
                modconfig::resolve(&module, source, &defaults)
                    .map(|s| s.fields)
                    .unwrap_or_default()
            }
        };
        let lua = match (&module.lua, &settings) {
            (Some(item), Some(settings)) => {
                let config = settings
                    .fields
                    .iter()
                    .map(|(k, (_, v))| (k.clone(), v.clone()))
                    .collect();
                match luachunk::lua_chunk(&module, item, path, source, config, &libs, limits) {
                    Ok(chunk) => {
                        errors.extend(luachunk::twice_defined(&module, source, chunk.1.hooks));
                        Some(chunk)
                    }
                    Err(d) => {
                        errors.push(d);
                        None
                    }
                }
            }
            _ => None,
        };
        let env = compile::Env {
            upstreams: &upstreams,
            ctx_names: &mut ctx_names,
            regex_budget: &mut regex_budget,
            lua_functions: lua.as_ref().map(|(_, facts)| facts.functions.as_slice()),
        };
        let compiled = match compile::compile(&module, source, &fields, env) {
            Ok(c) => Some(c),
            Err(mut d) => {
                errors.append(&mut d);
                None
            }
        };
        let lua = lua.map(|(spec, facts)| (spec, facts.hooks));
        if !errors.is_empty() {
            diags.append(&mut errors);
            continue;
        }
        let (Some(settings), Some(compiled)) = (settings, compiled) else {
            continue;
        };
        let source_hash = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            source.hash(&mut h);
            if let Some((spec, _)) = &lua {
                spec.source.hash(&mut h);
            }
            h.finish()
        };
        infos.push(ModuleInfo {
            source_hash,
            name: module.name.node.clone(),
            version: module.version.as_ref().map(|v| v.node.clone()),
            priority: settings.priority,
            enabled: settings.enabled,
            kind: if lua.is_some() { "lua" } else { "pcmod" },
            file: path.clone(),
            phases: module_phases(&module, lua.as_ref().map(|(_, h)| *h)),
            description: module.description.as_ref().map(|d| d.node.clone()),
            config: settings
                .fields
                .iter()
                .map(|(k, (_, v))| (k.clone(), value::toml_literal(v)))
                .collect(),
        });
        if settings.enabled {
            keeps_request_headers |= compiled.reads_request_later;
            // Whether the module has a Lua hook after the request phase.
            let late_lua = lua.as_ref().is_some_and(|(_, hooks)| {
                hooks[crate::lua::vm::phase_index(PhaseKind::Response)]
                    || hooks[crate::lua::vm::phase_index(PhaseKind::Log)]
            });
            // Lua that runs only in the request phase cannot read a response either.
            response_head_unread &= compiled.blind_to_response_head() && !late_lua;
            // A Lua hook of a later phase, or a Lua function a later pcmod phase calls,
            // may read any request header.
            if lua.is_some() {
                keeps_request_headers |=
                    late_lua || compiled.response.is_some() || compiled.log.is_some();
            }
            let lua = lua.map(|(spec, hooks)| {
                lua_specs.push(spec);
                (lua_specs.len() - 1, hooks)
            });
            modules.push(Arc::new(PcmodModule {
                name: module.name.node.clone(),
                file: Arc::from(file.as_str()),
                priority: settings.priority,
                compiled,
                upstreams: Arc::clone(&upstreams),
                lua,
            }));
        }
    }
    // A module is in the folder when its file is, whether or not it parses: a file
    // with a syntax error is reported as that, not as a table naming no module.
    let in_folder = |name: &str| {
        seen.iter().any(|(n, _)| n == name)
            || sources
                .iter()
                .any(|(path, _)| path.file_stem().is_some_and(|stem| stem == name))
    };
    for name in config.mods.keys() {
        if !in_folder(name) {
            tracing::warn!(target: "proxycache::script", module = %name, "[mods.{name}] in config.toml names no module in the scripts folder");
        }
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    infos.sort_by(|a, b| {
        a.priority
            .cmp(&b.priority)
            .then_with(|| a.name.cmp(&b.name))
    });
    let ctx_shared: Arc<[Arc<str>]> = ctx_names.iter().cloned().collect();
    let mut pipeline = Pipeline::new(modules, ctx_names, keeps_request_headers);
    pipeline.response_head_unread = response_head_unread;
    if !lua_specs.is_empty() {
        let rt = crate::lua::LuaRuntime::new(
            lua_specs,
            limits,
            Arc::clone(&libs),
            ctx_shared,
            config.server.workers,
        );
        // Every chunk loaded in a VM of its own above; a worker loads them all in one.
        if let Err(e) = rt.build() {
            return Err(vec![luachunk::vm_diagnostic(&e, &rt.specs, &libs)]);
        }
        pipeline.lua = Some(Arc::new(rt));
    }
    Ok(Loaded {
        pipeline,
        modules: infos,
    })
}

/// The phases a module has, pcmod blocks and Lua hooks, in phase order.
fn module_phases(module: &ast::Module, hooks: Option<[bool; 3]>) -> Vec<&'static str> {
    [PhaseKind::Request, PhaseKind::Response, PhaseKind::Log]
        .into_iter()
        .filter(|k| {
            module.phases.iter().any(|p| p.kind == *k)
                || hooks.is_some_and(|h| h[crate::lua::vm::phase_index(*k)])
        })
        .map(|k| k.as_str())
        .collect()
}

/// Checks about the module as a whole: its name, priority, phases, Lua.
fn module_checks(
    module: &ast::Module,
    path: &Path,
    source: &str,
    seen: &[(String, String)],
) -> Vec<Diagnostic> {
    let file = &module.file;
    let mut diags = Vec::new();
    let name = &module.name;
    let valid = name.node.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .node
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        diags.push(Diagnostic::new(
            file,
            source,
            name.span,
            format!("module name `{}` must match [a-z][a-z0-9_]*", name.node),
        ));
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if stem != name.node {
        diags.push(
            Diagnostic::new(
                file,
                source,
                name.span,
                format!("module `{}` is in `{stem}.pcmod`", name.node),
            )
            .with_hint(format!(
                "name the file `{}.pcmod` or the module `{stem}`",
                name.node
            )),
        );
    }
    if let Some((_, other)) = seen.iter().find(|(n, _)| *n == name.node) {
        diags.push(Diagnostic::new(
            file,
            source,
            name.span,
            format!(
                "a module named `{}` is already loaded from {other}",
                name.node
            ),
        ));
    }
    if let Some(p) = &module.priority {
        if !(0..=1000).contains(&p.node) {
            diags.push(
                Diagnostic::new(
                    file,
                    source,
                    p.span,
                    format!("priority {} is outside 0..=1000", p.node),
                )
                .with_hint("lower runs first; the default is 500"),
            );
        }
    }
    let mut phases: Vec<PhaseKind> = Vec::new();
    for phase in &module.phases {
        if phases.contains(&phase.kind) {
            diags.push(
                Diagnostic::new(
                    file,
                    source,
                    phase.span,
                    format!("phase `on {}` is defined twice", phase.kind.as_str()),
                )
                .with_hint("merge the two blocks"),
            );
        }
        phases.push(phase.kind);
    }
    diags
}
