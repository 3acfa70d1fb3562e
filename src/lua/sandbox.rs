//! Building a VM with only what LUA.md allows: Lua 5.4 with `string`, `table`,
//! `math`, `utf8`, `coroutine` and three functions of `os`; no `io`, `debug`,
//! `package`, `dofile`, `loadfile`, `string.dump` or binary chunks; read-only library
//! tables; a hidden string metatable; per-module global tables in which a request's
//! globals die with its hook call; hook coroutines only the driver may resume or close;
//! library functions that loop in C charged by their input's size (`sandbox.lua`).
//! Also the [`Meter`]: the instruction budget and wall-clock check every hook call
//! runs under.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::chunk::ChunkMode;
use mlua::{Function, HookTriggers, Lua, LuaOptions, StdLib, Table, VmState};
use parking_lot::Mutex;

/// The prelude that sets the sandbox up (run once per VM).
const PRELUDE: &str = include_str!("sandbox.lua");

/// VM instructions between two budget checks (and reads of the clock). Each costs a
/// call into Rust; with Lua's per-instruction hook dispatch already paid for any
/// count hook, 100 adds little (see docs/lua.md Limits).
pub const STEP: u32 = 100;

/// Wall-clock time one slice of a hook (from a resume to its next yield or end) may
/// take, whatever its instruction count: a few instructions can call slow C functions.
pub const SLICE_LIMIT: Duration = Duration::from_millis(500);

/// The message of a spent budget.
pub const BUDGET_MESSAGE: &str = "instruction budget exceeded";

/// The budget of the hook call running now on a VM (one runs at a time per VM).
#[derive(Debug)]
pub struct Meter {
    remaining: AtomicI64,
    spent: AtomicBool,
    tries: AtomicU32,
    /// The runner running now (its request-time globals are keyed by it).
    runner: AtomicU32,
    /// Whether the runner set a global during this slice.
    dirty: AtomicBool,
    /// Start of the running slice, in ns since `epoch` (0: none).
    slice_start: AtomicU64,
    /// A runner is being closed after its hook ended: no instruction is allowed.
    closing: AtomicBool,
    /// Where the script was when the count hook found the budget spent: the stack
    /// traceback at that tick (see [`SliceEnd::at`]). Written only on that failing
    /// tick, and taken by [`end`](Self::end) only from a spent slice.
    spent_at: Mutex<Option<String>>,
    epoch: Instant,
}

/// What a slice left behind.
#[derive(Debug, Clone)]
pub struct SliceEnd {
    pub remaining: i64,
    /// Over budget, or the slice ran longer than [`SLICE_LIMIT`] (checked at every
    /// tick and when the slice ends: a slice that ended over its time fails too).
    pub spent: bool,
    pub dirty: bool,
    /// For a spent slice, the Lua stack traceback (`stack traceback:\n\t...`) of
    /// where the script was running when the count hook found the budget spent:
    /// `None` when no tick did (a budget a Rust function's `charge` spent, whose error
    /// carries its own traceback; a slice found over its time only when it ended).
    pub at: Option<String>,
}

impl Meter {
    fn new() -> Self {
        Meter {
            remaining: AtomicI64::new(i64::MAX),
            spent: AtomicBool::new(false),
            tries: AtomicU32::new(0),
            runner: AtomicU32::new(0),
            dirty: AtomicBool::new(false),
            slice_start: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            spent_at: Mutex::new(None),
            epoch: Instant::now(),
        }
    }

    /// Starts closing `runner`, whose hook did not end by returning: closing it runs
    /// the `__close` handlers its pending `<close>` variables have, and those get no
    /// budget at all (the first count-hook tick raises the budget error), whatever the
    /// hook had left. Ended by [`end`](Self::end).
    pub fn begin_closing(&self, runner: u32) {
        self.begin(runner, 0);
        self.spent.store(true, Ordering::Relaxed);
        self.closing.store(true, Ordering::Relaxed);
    }

    /// Starts a slice for `runner` with `remaining` instructions left.
    pub fn begin(&self, runner: u32, remaining: i64) {
        self.remaining.store(remaining, Ordering::Relaxed);
        self.spent.store(false, Ordering::Relaxed);
        self.tries.store(0, Ordering::Relaxed);
        self.runner.store(runner, Ordering::Relaxed);
        self.dirty.store(false, Ordering::Relaxed);
        self.slice_start
            .store(self.now_ns().max(1), Ordering::Relaxed);
    }

    /// Ends the slice. One that ran longer than [`SLICE_LIMIT`] is `spent`, even if
    /// no tick saw it (a few instructions that called slow C functions).
    pub fn end(&self) -> SliceEnd {
        let start = self.slice_start.swap(0, Ordering::Relaxed);
        let over_time =
            start != 0 && self.now_ns().saturating_sub(start) >= SLICE_LIMIT.as_nanos() as u64;
        let spent = self.spent.load(Ordering::Relaxed) || over_time;
        let end = SliceEnd {
            remaining: self.remaining.load(Ordering::Relaxed),
            spent,
            dirty: self.dirty.load(Ordering::Relaxed),
            // Only a failed slice looks (one that was not spent recorded nothing).
            at: if spent {
                self.spent_at.lock().take()
            } else {
                None
            },
        };
        // Outside a hook call (chunk loading has its own slice) nothing is metered.
        self.remaining.store(i64::MAX, Ordering::Relaxed);
        self.spent.store(false, Ordering::Relaxed);
        self.closing.store(false, Ordering::Relaxed);
        end
    }

    /// Whether the running hook is over its budget.
    pub fn spent(&self) -> bool {
        self.spent.load(Ordering::Relaxed)
    }

    /// Charges `n` instructions' worth of work done in Rust for the script (a pattern
    /// match's steps), with the count hook's checks: `Err` once the budget or the
    /// slice's wall-clock time is spent (the budget error; `spent` is set).
    pub fn charge(&self, n: u64) -> Result<(), String> {
        if self.take(i64::try_from(n).unwrap_or(i64::MAX)) {
            return Ok(());
        }
        self.spent.store(true, Ordering::Relaxed);
        Err(BUDGET_MESSAGE.to_owned())
    }

    /// Takes `n` instructions from the budget; whether the slice may go on (budget
    /// left, not spent, within its wall-clock time). Outside a slice (no start) the
    /// clock is not read.
    fn take(&self, n: i64) -> bool {
        let left = self
            .remaining
            .fetch_sub(n, Ordering::Relaxed)
            .saturating_sub(n);
        if left < 0 || self.spent() {
            return false;
        }
        let start = self.slice_start.load(Ordering::Relaxed);
        start == 0 || self.now_ns().saturating_sub(start) < SLICE_LIMIT.as_nanos() as u64
    }

    /// Records the running coroutine's traceback (level 0: the Lua function the
    /// count hook interrupted). A traceback that cannot be made (memory) is left out.
    fn note_place(&self, lua: &Lua) {
        let traceback = lua.traceback(None, 0).map(|t| t.to_string_lossy()).ok();
        *self.spent_at.lock() = traceback;
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The count hook: charge `STEP` instructions. Over budget (or over the slice's
    /// wall-clock limit), the hook first yields — which no `pcall` can catch; the
    /// driver then ends the call — and where Lua cannot yield (inside a C call or a
    /// metamethod) it raises the budget error, which the sandbox's `pcall` passes on.
    /// The first failing tick of a slice notes where the script is (`lua` runs the
    /// hook's coroutine): the error is logged at that line, not the hook's first.
    fn tick(&self, lua: &Lua) -> mlua::Result<VmState> {
        if self.take(i64::from(STEP)) {
            return Ok(VmState::Continue);
        }
        self.spent.store(true, Ordering::Relaxed);
        if self.closing.load(Ordering::Relaxed) {
            return Err(mlua::Error::runtime(BUDGET_MESSAGE));
        }
        let tries = self.tries.fetch_add(1, Ordering::Relaxed);
        if tries == 0 {
            self.note_place(lua);
        }
        if tries.is_multiple_of(2) {
            Ok(VmState::Yield)
        } else {
            Err(mlua::Error::runtime(BUDGET_MESSAGE))
        }
    }
}

/// A VM with the sandbox in place, and the prelude's constructors.
pub struct Sandbox {
    pub lua: Lua,
    pub meter: Arc<Meter>,
    /// `new_env(config) -> {env, globals, freeze, release}`.
    pub new_env: Function,
    /// `waiting(start) -> function`: wraps a Rust function that starts an operation.
    pub waiting: Function,
    /// `plain(f) -> function`: `f` raising plain-string errors at the caller's line.
    pub plain: Function,
    /// `fast(f, name, arg_names, field_names) -> function`: `plain`, plus named
    /// arguments unpacked and record results built in Lua (see sandbox.lua).
    pub fast: Function,
    /// `readonly(table, name) -> view`.
    pub readonly: Function,
    /// `library_tree(table, name) -> view`: a read-only view of a tree of tables that
    /// does not change after it is made (lookups as fast as a plain table's).
    pub library_tree: Function,
    /// `set_base(name, value)`: adds a global every module sees.
    pub set_base: Function,
    /// `release(runner)`: drops that runner's request-time globals.
    pub release: Function,
    /// A function that does nothing (resets finished coroutines).
    pub noop: Function,
    /// `protect(table)`: the sandbox's `rawset` refuses this table.
    pub protect: Function,
    /// `runner_thread(thread)`: marks a hook coroutine, which scripts may then not
    /// resume or close.
    pub runner_thread: Function,
}

/// Reads `mods/lib/NAME.lua` for `require`.
pub type LibReader = Box<dyn Fn(&str) -> Result<(String, String), String> + Send + 'static>;

/// Builds a sandboxed VM with `memory` bytes at most.
pub fn build(memory: usize, read_lib: LibReader) -> mlua::Result<Sandbox> {
    let libs = StdLib::COROUTINE
        | StdLib::TABLE
        | StdLib::STRING
        | StdLib::UTF8
        | StdLib::MATH
        | StdLib::OS;
    let lua = Lua::new_with(libs, LuaOptions::new())?;
    let meter = Arc::new(Meter::new());
    let host = lua.create_table()?;
    {
        let m = Arc::clone(&meter);
        host.set("spent", lua.create_function(move |_, ()| Ok(m.spent()))?)?;
        let m = Arc::clone(&meter);
        host.set(
            "runner",
            lua.create_function(move |_, ()| Ok(m.runner.load(Ordering::Relaxed)))?,
        )?;
        let m = Arc::clone(&meter);
        host.set(
            "mark",
            lua.create_function(move |_, ()| {
                m.dirty.store(true, Ordering::Relaxed);
                Ok(m.runner.load(Ordering::Relaxed))
            })?,
        )?;
        let m = Arc::clone(&meter);
        let [find, matcher, gmatch, gsub] = super::pattern::functions(&lua, move |n| m.charge(n))?;
        host.set("find", find)?;
        host.set("match", matcher)?;
        host.set("gmatch", gmatch)?;
        host.set("gsub", gsub)?;
        let m = Arc::clone(&meter);
        host.set(
            "charge",
            lua.create_function(move |_, n: mlua::Number| {
                // `as` saturates (NaN and negatives are 0).
                m.charge(n as u64).map_err(mlua::Error::runtime)
            })?,
        )?;
        host.set("step", STEP)?;
        // For `pcall`: the plain message of an error a Rust function raised, or nil
        // for any other value (see `caught`).
        host.set(
            "caught",
            lua.create_function(|_, v: mlua::Value| {
                Ok(match v {
                    mlua::Value::Error(e) => Some(super::caught::caught_message(&e)),
                    _ => None,
                })
            })?,
        )?;
        host.set(
            "read_lib",
            lua.create_function(move |_, name: String| {
                read_lib(&name).map_err(mlua::Error::runtime)
            })?,
        )?;
    }
    let exports: Table = lua
        .load(PRELUDE)
        .set_name("=sandbox")
        .set_mode(ChunkMode::Text)
        .call(host)?;
    // What the prelude did not take a private reference to goes now.
    let g = lua.globals();
    for name in [
        "dofile",
        "loadfile",
        "collectgarbage",
        "print",
        "require",
        "package",
        "io",
        "debug",
        "os",
    ] {
        g.raw_remove(name)?;
    }
    let m = Arc::clone(&meter);
    lua.set_global_hook(
        HookTriggers::new().every_nth_instruction(STEP),
        move |lua, _| m.tick(lua),
    )?;
    lua.set_memory_limit(memory)?;
    Ok(Sandbox {
        new_env: exports.get("new_env")?,
        waiting: exports.get("waiting")?,
        plain: exports.get("plain")?,
        fast: exports.get("fast")?,
        readonly: exports.get("readonly")?,
        library_tree: exports.get("library_tree")?,
        set_base: exports.get("set_base")?,
        release: exports.get("release")?,
        noop: exports.get("noop")?,
        protect: exports.get("protect")?,
        runner_thread: exports.get("runner_thread")?,
        lua,
        meter,
    })
}
