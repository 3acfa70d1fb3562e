//! One worker's VM for one generation: the sandbox, `std`, the handles, every
//! module's chunk loaded in its own environment, and a pool of coroutines that run
//! hooks. Built by [`LuaRuntime::vm`](super::LuaRuntime::vm) on the worker's first
//! request that needs it; never shared between threads at the same time.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use mlua::chunk::ChunkMode;
use mlua::{AnyUserData, Function, Table, Thread};
use parking_lot::Mutex;

use super::handles::{req_handle, resp_handle, CtxHandle, TurnCell};
use super::libs::Libraries;
use super::sandbox::{self, Meter, Sandbox};
use super::{LuaRuntime, LuaSpec};
use crate::script::ast::PhaseKind;

/// A chunk that failed to load, for diagnostics.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct LoadError {
    /// Index of the module in the specs.
    pub module: usize,
    /// The file the error is in: the module's chunk, or a library it requires.
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
    /// What `require` loads (also how errors in a library are placed).
    pub(crate) libs: Arc<Libraries>,
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
            Arc::clone(&rt.libs),
            Arc::new(ctx_slots),
        )
    }

    /// Builds a VM for `specs`, whose `require` loads from `libs`.
    pub fn build_with(
        specs: Arc<[LuaSpec]>,
        memory: usize,
        budget: u64,
        libs: Arc<Libraries>,
        ctx_slots: Arc<HashMap<Arc<str>, usize>>,
    ) -> Result<Vm, LoadError> {
        let vm_error = |e: mlua::Error| LoadError {
            module: 0,
            file: "<lua>".into(),
            line: 0,
            message: format!("cannot build the Lua VM: {e}"),
        };
        let reader_libs = Arc::clone(&libs);
        let reader: sandbox::LibReader = Box::new(move |name: &str| reader_libs.require(name));
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
            let (h, f) = load_chunk(&sb, spec, &libs, budget).map_err(|mut e| {
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
            libs,
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
fn load_chunk(
    sb: &Sandbox,
    spec: &LuaSpec,
    libs: &Libraries,
    budget: i64,
) -> Result<ChunkFunctions, LoadError> {
    let fail = |line: u32, message: String| LoadError {
        module: 0,
        file: spec.file.to_string(),
        line,
        message,
    };
    let lua_fail = |e: mlua::Error| {
        let files = script_files(spec, libs);
        let (at, line, message) = split_location(&error_text(&e), &files);
        LoadError {
            module: 0,
            file: at.map_or(&*spec.file, |i| files[i]).to_owned(),
            line,
            message,
        }
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
        let message =
            "the chunk's top level ran over the instruction budget (or 500 ms) while loading";
        // Where it was running (a library's line when the loop is in one).
        let files = script_files(spec, libs);
        let traceback = match (end.at, &ran) {
            (Some(t), _) => t,
            (None, Err(e)) => error_text(e),
            (None, Ok(())) => String::new(),
        };
        return Err(match innermost_position(&traceback, &files) {
            Some((i, line)) => LoadError {
                module: 0,
                file: files[i].to_owned(),
                line,
                message: message.into(),
            },
            None => fail(0, message.into()),
        });
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
        mlua::Error::RuntimeError(m) => error_object_text(m),
        mlua::Error::MemoryError(m) => m.clone(),
        mlua::Error::ExternalError(e) => e.to_string(),
        mlua::Error::BadArgument {
            to,
            pos,
            name,
            cause,
        } => super::caught::bad_argument_text(to.as_deref(), *pos, name.as_deref(), cause),
        other => other.to_string(),
    }
}

/// A runtime error's text with an error object that is not a string (`error({code =
/// 1})`) named in Lua's own words, `(error object is a table value)`, as the `lua`
/// interpreter reports it, rather than by its heap address. mlua has already turned
/// the object into text, as `tostring` does: `table: 0x...` (or `NAME: 0x...` with a
/// `__name`, which every userdata has), `nil`, `true`, `false`. Those are told from a
/// string message by that exact first line: `error` puts the position before a
/// string, so only `error(s, 0)` with such a text would be taken for an object. An
/// object with a `__tostring` is its text; a number is its digits, as in `lua`.
fn error_object_text(text: &str) -> String {
    let (first, rest) = text
        .split_once('\n')
        .map_or((text, None), |(f, r)| (f, Some(r)));
    let kind = match first {
        "nil" => "nil",
        "true" | "false" => "boolean",
        _ => match first.split_once(": 0x") {
            Some((name, hex)) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                match name {
                    "table" | "function" | "thread" | "userdata" => name,
                    // The handles' `__name`s (`ReqHandle`, ...): userdata to Lua.
                    _ if !name.is_empty()
                        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
                    {
                        "userdata"
                    }
                    _ => return text.to_owned(),
                }
            }
            _ => return text.to_owned(),
        },
    };
    match rest {
        Some(rest) => format!("(error object is a {kind} value)\n{rest}"),
        None => format!("(error object is a {kind} value)"),
    }
}

/// The innermost place in `traceback` (a Lua stack traceback, innermost call first)
/// that is in one of `files`: the index of the file and the line. Frames of the
/// sandbox's own Lua functions and of C functions are passed over.
pub fn innermost_position(traceback: &str, files: &[&str]) -> Option<(usize, u32)> {
    traceback
        .lines()
        .find_map(|l| script_position(l, files).map(|(file, line, _)| (file, line)))
}

/// The files a module's Lua errors can be in: its chunk's first, then the libraries
/// `require` may load.
pub fn script_files<'a>(spec: &'a LuaSpec, libs: &'a Libraries) -> Vec<&'a str> {
    std::iter::once(&*spec.file).chain(libs.paths()).collect()
}

/// Splits `FILE:LINE: message`, where FILE is one of `files` as Lua names it (long
/// names shortened to `...tail`), into the index of the file, the line and the
/// message without the prefix. Without one on the first line: the first traceback
/// entry in one of `files` (the first file, the module's chunk, preferred) and the
/// whole text. `None` and 0 when no line of the text names one of `files`.
pub fn split_location(text: &str, files: &[&str]) -> (Option<usize>, u32, String) {
    let first_line = text.lines().next().unwrap_or("");
    if let Some((file, line, at)) = script_position(first_line, files) {
        let message = &first_line[at..];
        let tail: Vec<&str> = text.lines().skip(1).collect();
        let message = if tail.is_empty() {
            message.to_owned()
        } else {
            format!("{message}\n{}", tail.join("\n"))
        };
        return (Some(file), line, message);
    }
    let mut fallback = None;
    for l in text.lines() {
        if let Some((file, line, _)) = script_position(l, files) {
            if file == 0 {
                return (Some(0), line, text.to_owned());
            }
            fallback.get_or_insert((file, line));
        }
    }
    match fallback {
        Some((file, line)) => (Some(file), line, text.to_owned()),
        None => (None, 0, text.to_owned()),
    }
}

/// In a line with `FILE:12: rest` (FILE one of `files`, as Lua names it), the first
/// such place: the index of the file, the line, and where `rest` starts.
fn script_position(l: &str, files: &[&str]) -> Option<(usize, u32, usize)> {
    let mut best: Option<(usize, usize, u32, usize)> = None;
    for (i, file) in files.iter().enumerate() {
        let id = chunk_id(file);
        let mut from = 0;
        while let Some(found) = l[from..].find(&*id) {
            let start = from + found;
            let after = start + id.len();
            if let Some((line, rest)) = line_number(&l[after..]) {
                // The earliest place wins; at the same place, the longest name.
                if best.is_none_or(|(s, b, _, _)| {
                    start < s || (start == s && id.len() > chunk_id(files[b]).len())
                }) {
                    best = Some((start, i, line, after + rest));
                }
                break;
            }
            from = after;
        }
    }
    best.map(|(_, i, line, at)| (i, line, at))
}

/// `:12: rest` -> 12 and where `rest` starts.
fn line_number(s: &str) -> Option<(u32, usize)> {
    let digits = s.strip_prefix(':')?;
    let n = digits.bytes().take_while(u8::is_ascii_digit).count();
    let line = digits[..n].parse().ok()?;
    let mut at = 1 + n;
    if s[at..].starts_with(": ") {
        at += 2;
    } else if s[at..].starts_with(':') {
        at += 1;
    }
    Some((line, at))
}

/// How Lua names a chunk loaded as `@file` in messages (`luaO_chunkid`, with
/// `LUA_IDSIZE` 60): the name, or `...` and its last 56 bytes when longer than 59.
fn chunk_id(file: &str) -> Cow<'_, str> {
    const WHOLE: usize = 59;
    const TAIL: usize = 56;
    if file.len() <= WHOLE {
        Cow::Borrowed(file)
    } else {
        let bytes = file.as_bytes();
        Cow::Owned(format!(
            "...{}",
            String::from_utf8_lossy(&bytes[bytes.len() - TAIL..])
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::{chunk_id, error_object_text, innermost_position, split_location};

    #[test]
    fn error_objects_are_named_by_their_type_not_their_address() {
        let trace = "\nstack traceback:\n\t[C]: in function 'error'";
        for (text, says) in [
            ("table: 0x20000754a40", "(error object is a table value)"),
            ("nil", "(error object is a nil value)"),
            ("false", "(error object is a boolean value)"),
            ("function: 0x5612ab", "(error object is a function value)"),
            ("ReqHandle: 0x5612ab", "(error object is a userdata value)"),
        ] {
            assert_eq!(
                error_object_text(&format!("{text}{trace}")),
                format!("{says}{trace}")
            );
            assert_eq!(error_object_text(text), says);
        }
        // Messages, numbers and `__tostring` texts are kept.
        for text in [
            "mods/x.lua:3: boom",
            "42",
            "custom failure",
            "table: 0xnothex",
            "a b: 0x12",
        ] {
            assert_eq!(error_object_text(text), text);
        }
    }

    #[test]
    fn the_innermost_script_frame_is_where_a_budget_ran_out() {
        let files = ["mods/hooks.lua", "mods/lib/spin.lua"];
        let trace = "stack traceback:\n\t[C]: in ?\n\tsandbox:40: in function 'table.insert'\n\t\
                     mods/lib/spin.lua:4: in function 'spin.forever'\n\t\
                     mods/hooks.lua:8: in function <mods/hooks.lua:2>";
        assert_eq!(innermost_position(trace, &files), Some((1, 4)));
        assert_eq!(
            innermost_position("stack traceback:\n\t[C]: in ?", &files),
            None
        );
    }

    #[test]
    fn a_location_names_the_file_lua_named_whatever_its_extension() {
        let files = ["mods/gate.lua", "mods/lib/util.lua"];
        let (file, line, message) =
            split_location("mods/lib/util.lua:7: unexpected symbol near '='", &files);
        assert_eq!(
            (file, line, message.as_str()),
            (Some(1), 7, "unexpected symbol near '='")
        );
        let files = ["mods/hooks", "mods/lib/util.lua"];
        let (file, line, _) = split_location("mods/hooks:2: 'end' expected near <eof>", &files);
        assert_eq!((file, line), (Some(0), 2));
        // Not a file of the module's: the traceback's entry in the chunk.
        let text = "[string \"x\"]:1: boom\nstack traceback:\n\tmods/lib/util.lua:3: in function 'f'\n\tmods/hooks:9: in main chunk";
        let (file, line, _) = split_location(text, &files);
        assert_eq!((file, line), (Some(0), 9));
        assert_eq!(split_location("no place", &files).0, None);
    }

    #[test]
    fn long_file_names_are_found_as_lua_shortens_them() {
        let long = format!("/srv/{}/mods/lib/util.lua", "x".repeat(80));
        let id = chunk_id(&long);
        assert_eq!(id.len(), 59);
        assert!(id.starts_with("...") && long.ends_with(&id[3..]));
        let files = ["mods/gate.lua", long.as_str()];
        let (file, line, _) = split_location(&format!("{id}:4: boom"), &files);
        assert_eq!((file, line), (Some(1), 4));
    }
}
