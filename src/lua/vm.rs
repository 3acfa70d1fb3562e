//! One worker's VM for one generation: the sandbox, `std`, the handles, every
//! module's chunk loaded in its own environment, and a pool of coroutines that run
//! hooks. Built by [`LuaRuntime::vm`](super::LuaRuntime::vm) on the worker's first
//! request that needs it; never shared between threads at the same time.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use mlua::chunk::ChunkMode;
use mlua::{AnyUserData, Function, Table, Thread};
use parking_lot::Mutex;

use super::handles::{req_handle, resp_handle, CtxHandle, TurnCell};
use super::sandbox::{self, Meter, Sandbox};
use super::{LuaRuntime, LuaSpec};
use crate::script::ast::PhaseKind;

/// A chunk that failed to load, for diagnostics.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct LoadError {
    /// Index of the module in the specs.
    pub module: usize,
    pub file: String,
    /// 0 when Lua gave no line.
    pub line: u32,
    pub message: String,
}

/// A coroutine that runs hooks, reused from call to call.
pub struct Runner {
    pub id: u32,
    pub thread: Thread,
}

/// Coroutines kept for reuse per VM.
const RUNNER_POOL: usize = 64;

/// One worker's VM.
pub struct Vm {
    pub(crate) sb: Sandbox,
    pub(crate) cell: Arc<TurnCell>,
    pub(crate) req: AnyUserData,
    pub(crate) resp: AnyUserData,
    pub(crate) ctx: AnyUserData,
    pub(crate) body_fn: Function,
    /// Per module: its `on_request`, `on_response`, `on_log`.
    pub(crate) hooks: Vec<[Option<Function>; 3]>,
    /// Per module: its other global functions (`lua.NAME(...)` from pcmod).
    pub(crate) functions: Vec<HashMap<String, Function>>,
    pub(crate) specs: Arc<[LuaSpec]>,
    pub(crate) budget: i64,
    runners: Mutex<Vec<Runner>>,
    next_runner: AtomicU32,
}

/// Index of a phase in `hooks`.
pub fn phase_index(phase: PhaseKind) -> usize {
    match phase {
        PhaseKind::Request => 0,
        PhaseKind::Response => 1,
        PhaseKind::Log => 2,
    }
}

/// The hook names, by phase index.
pub const HOOK_NAMES: [&str; 3] = ["on_request", "on_response", "on_log"];

impl Vm {
    /// Builds a VM with every module of `rt` loaded.
    pub fn build(rt: &LuaRuntime) -> Result<Vm, LoadError> {
        let ctx_slots: HashMap<Arc<str>, usize> = rt
            .ctx_names
            .iter()
            .enumerate()
            .map(|(i, n)| (Arc::clone(n), i))
            .collect();
        Self::build_with(
            Arc::clone(&rt.specs),
            rt.limits.memory,
            rt.limits.budget,
            &rt.lib_dir,
            Arc::new(ctx_slots),
        )
    }

    /// Builds a VM for `specs`.
    pub fn build_with(
        specs: Arc<[LuaSpec]>,
        memory: usize,
        budget: u64,
        lib_dir: &Path,
        ctx_slots: Arc<HashMap<Arc<str>, usize>>,
    ) -> Result<Vm, LoadError> {
        let vm_error = |e: mlua::Error| LoadError {
            module: 0,
            file: "<lua>".into(),
            line: 0,
            message: format!("cannot build the Lua VM: {e}"),
        };
        let lib_dir = lib_dir.to_path_buf();
        let reader: sandbox::LibReader = Box::new(move |name: &str| {
            // The prelude checks the name too; this check is the one a script cannot
            // reach: a name is letters, digits and `_`, so the path stays in `lib_dir`.
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!(
                    "require {name:?}: a library name is letters, digits and _ (mods/lib/NAME.lua)"
                ));
            }
            let path = lib_dir.join(format!("{name}.lua"));
            match std::fs::read_to_string(&path) {
                Ok(text) => Ok((text, path.display().to_string())),
                Err(e) => Err(format!(
                    "require {name:?}: cannot read {}: {e}",
                    path.display()
                )),
            }
        });
        let sb = sandbox::build(memory, reader).map_err(vm_error)?;
        let cell: Arc<TurnCell> = Arc::new(Mutex::new(None));
        let bodies = super::bind::install(&sb, &cell).map_err(vm_error)?;
        let body_fn = bodies.object.clone();
        let lua = &sb.lua;
        let req = req_handle(lua, &cell, &bodies.req).map_err(vm_error)?;
        let resp = resp_handle(lua, &cell, &bodies.resp).map_err(vm_error)?;
        let ctx = lua
            .create_userdata(CtxHandle {
                cell: Arc::clone(&cell),
                slots: ctx_slots,
            })
            .map_err(vm_error)?;
        let budget = i64::try_from(budget).unwrap_or(i64::MAX);
        let mut hooks = Vec::with_capacity(specs.len());
        let mut functions = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let (h, f) = load_chunk(&sb, spec, budget).map_err(|mut e| {
                e.module = i;
                e
            })?;
            hooks.push(h);
            functions.push(f);
        }
        // Loading made garbage (and perhaps grew the heap); start requests clean.
        let _ = lua.gc_collect();
        Ok(Vm {
            sb,
            cell,
            req,
            resp,
            ctx,
            body_fn,
            hooks,
            functions,
            specs,
            budget,
            runners: Mutex::new(Vec::new()),
            next_runner: AtomicU32::new(1),
        })
    }

    /// The meter of this VM.
    pub fn meter(&self) -> &Meter {
        &self.sb.meter
    }

    /// A coroutine set up to run `func`.
    pub(crate) fn checkout(&self, func: &Function) -> mlua::Result<Runner> {
        let pooled = self.runners.lock().pop();
        if let Some(r) = pooled {
            if r.thread.reset(func.clone()).is_ok() {
                return Ok(r);
            }
        }
        let thread = self.sb.lua.create_thread(func.clone())?;
        // Scripts may not resume or close it (`coroutine.running()` hands it out).
        self.sb.runner_thread.call::<()>(&thread)?;
        Ok(Runner {
            id: self.next_runner.fetch_add(1, Ordering::Relaxed),
            thread,
        })
    }

    /// Returns a coroutine to the pool, dropping the request-time globals its hook set
    /// (`dirty`). One whose hook did not finish is closed first, with no budget for the
    /// `__close` handlers that runs, and its globals dropped after that (a handler may
    /// have set some).
    pub(crate) fn checkin(&self, runner: Runner, finished: bool, dirty: bool) {
        if !finished {
            self.sb.meter.begin_closing(runner.id);
            let reset = runner.thread.reset(self.sb.noop.clone());
            self.sb.meter.end();
            self.release(runner.id);
            if reset.is_err() {
                return;
            }
        } else if dirty {
            self.release(runner.id);
        }
        let mut pool = self.runners.lock();
        if pool.len() < RUNNER_POOL {
            pool.push(runner);
        }
    }

    /// Drops the request-time globals a runner set.
    pub(crate) fn release(&self, runner: u32) {
        if let Err(e) = self.sb.release.call::<()>(runner) {
            tracing::warn!(target: "proxycache::lua", error = %e, "releasing request globals failed");
        }
    }
}

/// A chunk's hooks (request, response, log) and its other global functions.
type ChunkFunctions = ([Option<Function>; 3], HashMap<String, Function>);

/// Loads one module's chunk into its own environment and runs it (with the hook
/// budget), then freezes the environment. Returns the hooks it defined and its other
/// global functions.
fn load_chunk(sb: &Sandbox, spec: &LuaSpec, budget: i64) -> Result<ChunkFunctions, LoadError> {
    let fail = |line: u32, message: String| LoadError {
        module: 0,
        file: spec.file.to_string(),
        line,
        message,
    };
    let lua_fail = |e: mlua::Error| {
        let (line, message) = split_location(&error_text(&e), &spec.file);
        fail(line, message)
    };
    let config = super::bind::config_table(sb, &spec.config).map_err(lua_fail)?;
    let record: Table = sb.new_env.call(config).map_err(lua_fail)?;
    let env: Table = record.get("env").map_err(lua_fail)?;
    let globals: Table = record.get("globals").map_err(lua_fail)?;
    let func = sb
        .lua
        .load(&*spec.source)
        .set_name(format!("@{}", spec.file))
        .set_mode(ChunkMode::Text)
        .set_environment(env)
        .into_function()
        .map_err(lua_fail)?;
    // What the sandbox put there (`load`, `require`, `config`, `_G`) is not the chunk's.
    let mut preset = Vec::new();
    for pair in globals.pairs::<String, mlua::Value>() {
        preset.push(pair.map_err(lua_fail)?.0);
    }
    sb.meter.begin(0, budget);
    let ran = func.call::<()>(());
    let end = sb.meter.end();
    if end.spent {
        return Err(fail(
            0,
            "the chunk's top level ran over the instruction budget (or 500 ms) while loading"
                .into(),
        ));
    }
    ran.map_err(lua_fail)?;
    let freeze: Function = record.get("freeze").map_err(lua_fail)?;
    freeze.call::<()>(()).map_err(lua_fail)?;
    let mut hooks: [Option<Function>; 3] = [None, None, None];
    for (i, name) in HOOK_NAMES.iter().enumerate() {
        let v: mlua::Value = globals.raw_get(*name).map_err(lua_fail)?;
        hooks[i] = match v {
            mlua::Value::Nil => None,
            mlua::Value::Function(f) => Some(f),
            other => {
                return Err(fail(
                    0,
                    format!("`{name}` must be a function, not a {}", other.type_name()),
                ))
            }
        };
    }
    let mut functions = HashMap::new();
    for pair in globals.pairs::<mlua::Value, mlua::Value>() {
        let (k, v) = pair.map_err(lua_fail)?;
        if let (mlua::Value::String(name), mlua::Value::Function(f)) = (k, v) {
            let name = name.to_string_lossy();
            if !HOOK_NAMES.contains(&name.as_str()) && !preset.contains(&name) {
                functions.insert(name, f);
            }
        }
    }
    Ok((hooks, functions))
}

/// The text of a Lua error: the root cause's message, then the traceback if any.
pub fn error_text(e: &mlua::Error) -> String {
    match e {
        mlua::Error::CallbackError { traceback, cause } => {
            format!("{}\n{traceback}", error_text(cause))
        }
        mlua::Error::WithContext { context, cause } => format!("{context}: {}", error_text(cause)),
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        mlua::Error::RuntimeError(m) | mlua::Error::MemoryError(m) => m.clone(),
        mlua::Error::ExternalError(e) => e.to_string(),
        other => other.to_string(),
    }
}

/// Splits `file:LINE: message` (Lua shortens long file names to `...tail`) into the
/// line and the message without the prefix; without one, the line of the first
/// traceback entry in a script file. `file` is the module's chunk, preferred when
/// the traceback names several.
pub fn split_location(text: &str, file: &str) -> (u32, String) {
    let first_line = text.lines().next().unwrap_or("");
    if let Some((line, at)) = script_position(first_line) {
        let message = &first_line[at..];
        let tail: Vec<&str> = text.lines().skip(1).collect();
        let message = if tail.is_empty() {
            message.to_owned()
        } else {
            format!("{message}\n{}", tail.join("\n"))
        };
        return (line, message);
    }
    let tail_of_file = file.rsplit('/').next().unwrap_or(file);
    let mut fallback = None;
    for l in text.lines() {
        if let Some((line, _)) = script_position(l.trim_start()) {
            if l.contains(tail_of_file) {
                return (line, text.to_owned());
            }
            fallback.get_or_insert(line);
        }
    }
    (fallback.unwrap_or(0), text.to_owned())
}

/// In `path.lua:12: rest`, the line and where `rest` starts.
fn script_position(l: &str) -> Option<(u32, usize)> {
    for ext in [".lua:", ".pcmod:"] {
        let Some(pos) = l.find(ext) else { continue };
        let after = pos + ext.len();
        let digits: String = l[after..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let Ok(line) = digits.parse() else { continue };
        let mut at = after + digits.len();
        if l[at..].starts_with(": ") {
            at += 2;
        } else if l[at..].starts_with(':') {
            at += 1;
        }
        return Some((line, at));
    }
    None
}
