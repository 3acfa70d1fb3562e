//! Lua handlers (LUA.md): a module's phases may be Lua functions (`on_request`,
//! `on_response`, `on_log`) that call the same Rust stdlib as pcmod.
//!
//! - [`sandbox`]: building a VM with only what LUA.md allows (the prelude in
//!   `sandbox.lua`), per-module global tables, `require` from `mods/lib/`.
//! - [`vm`]: one VM per worker and generation, built lazily on the worker's first
//!   request; loading the modules' chunks into it.
//! - [`libs`]: the generation's snapshot of `mods/lib/`, the only thing `require`
//!   reads.
//! - [`slot`]: a worker's VM once built, or its failed build and when to retry.
//! - [`handles`]: `req`, `resp`, `ctx` and response objects, as narrow UserData over
//!   the request in flight (the [`Turn`](handles::Turn)).
//! - [`bind`]: `std` (from the one signature table), `log`, `print`.
//! - [`run`]: the hook driver: coroutines, the instruction budget, waiting.
//! - [`ops`]: what a hook can wait on (`std.proxy.forward`, `std.http.request`,
//!   `req:body()`).
//! - [`convert`]: script values to Lua and back.
//! - [`caught`]: the plain string a script's `pcall` gets for an error a Rust
//!   function raised.
//!
//! Must not touch: the order of modules (the pipeline's), sockets (the upstream
//! layer's, reached through `proxy::send_upstream` and the worker's pool).

pub mod bind;
pub mod caught;
pub mod convert;
pub mod handles;
pub mod libs;
pub mod meta;
pub mod ops;
pub mod pattern;
pub mod run;
pub mod sandbox;
pub mod slot;
pub mod vm;

use std::sync::Arc;
use std::time::Instant;

use crate::generation::Generation;
use crate::script::value::Value;
use crate::server::conn::ConnInfo;
use crate::server::worker::WorkerCtx;

pub use libs::Libraries;
pub use run::run_hook;
pub use vm::Vm;

/// One module's Lua chunk, as loaded from disk.
#[derive(Debug, Clone)]
pub struct LuaSpec {
    /// The module's name.
    pub module: Arc<str>,
    /// Where the chunk is, for messages: the `.lua` file, or the `.pcmod` file for an
    /// inline chunk.
    pub file: Arc<str>,
    /// The chunk. Inline chunks are padded with empty lines so that Lua's line
    /// numbers are the `.pcmod` file's.
    pub source: Arc<str>,
    /// The module's resolved config (defaults merged with `[mods.NAME]`).
    pub config: Vec<(String, Value)>,
}

/// `[scripts]` limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes per VM.
    pub memory: usize,
    /// VM instructions per hook call.
    pub budget: u64,
    /// Largest body `req:body()`, `resp:body()` and `std.http.request` read.
    pub max_body: u64,
}

/// A worker's VM once built (or its last failed build).
type VmSlot = slot::Slot<Arc<Vm>, VmError>;

/// Why a worker has no VM for its generation: a module's chunk (or a library it
/// requires) failed while the VM was built, though it passed when the generation was
/// checked (the top level ran over its wall-clock limit on a busy host, memory).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{module} ({file}:{line}): {message}")]
pub struct VmError {
    /// The module whose chunk was loading (the first Lua module when the failure
    /// came before any chunk).
    pub module: Arc<str>,
    pub file: String,
    /// 0 when Lua gave no line.
    pub line: u32,
    pub message: String,
}

/// The Lua side of a pipeline: the chunks, the libraries they were checked with, and
/// one VM per worker, built on first use.
pub struct LuaRuntime {
    pub specs: Arc<[LuaSpec]>,
    pub limits: Limits,
    /// `mods/lib/` as read when the generation was checked: what `require` loads.
    pub libs: Arc<Libraries>,
    /// The pipeline's `$ctx` names, by slot.
    pub ctx_names: Arc<[Arc<str>]>,
    slots: Box<[VmSlot]>,
}

impl std::fmt::Debug for LuaRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LuaRuntime")
            .field("modules", &self.specs.len())
            .finish()
    }
}

/// Worker VM slots made whatever the config says (about 32 bytes each).
pub const MIN_SLOTS: usize = 256;

impl LuaRuntime {
    /// A runtime for `workers` workers (room is kept for at least [`MIN_SLOTS`]: the
    /// running worker count is the one at start, and a reload may come with a config
    /// that says otherwise); no VM is built until a worker asks.
    pub fn new(
        specs: Vec<LuaSpec>,
        limits: Limits,
        libs: Arc<Libraries>,
        ctx_names: Arc<[Arc<str>]>,
        workers: usize,
    ) -> Self {
        LuaRuntime {
            specs: specs.into(),
            limits,
            libs,
            ctx_names,
            slots: (0..workers.max(MIN_SLOTS))
                .map(|_| VmSlot::default())
                .collect(),
        }
    }

    /// Worker `worker`'s VM, built on its first call. A build that fails is logged
    /// and tried again on a later call, once its backoff ([`slot`]) is over; calls
    /// meanwhile get its error. A worker beyond the count this runtime was made for
    /// (the worker count changed without a restart) gets a VM of its own per call,
    /// which is slow but correct.
    pub fn vm(&self, worker: usize) -> Result<Arc<Vm>, VmError> {
        let Some(slot) = self.slots.get(worker) else {
            return self
                .build()
                .inspect_err(|e| log_failed_build(e, worker, None));
        };
        slot.get(Instant::now, || self.build()).map_err(|refused| {
            if refused.fresh {
                log_failed_build(&refused.error, worker, Some(refused.retry_in));
            }
            refused.error
        })
    }

    /// Builds a VM with every module loaded, as a worker would: `check` and reloads
    /// call it once, so a generation whose chunks cannot share one VM (together over
    /// the memory limit) never serves.
    pub fn build(&self) -> Result<Arc<Vm>, VmError> {
        Vm::build(self).map(Arc::new).map_err(|e| VmError {
            module: self
                .specs
                .get(e.module)
                .map_or_else(|| Arc::from("<lua>"), |s| Arc::clone(&s.module)),
            file: e.file,
            line: e.line,
            message: e.message,
        })
    }
}

fn log_failed_build(e: &VmError, worker: usize, retry_in: Option<std::time::Duration>) {
    tracing::error!(
        target: "proxycache::lua",
        module = %e.module,
        file = %e.file,
        line = e.line,
        worker,
        retry_in = ?retry_in,
        error = %e.message,
        "cannot build the worker's Lua VM; its requests fail (500) until a build succeeds"
    );
}

/// What a request's Lua hooks need besides the request: the worker's VM, the
/// generation (upstreams, limits), the worker (its connection pool), the connection.
pub struct LuaCall {
    pub vm: Arc<Vm>,
    pub generation: Arc<Generation>,
    pub worker: Arc<WorkerCtx>,
    pub conn: Arc<ConnInfo>,
    /// The client asked to switch protocols (WebSocket...) and waits for the answer
    /// (`proxy::upgrade`): a `std.proxy.forward` of a request that still asks for it
    /// sends it as an upgrade.
    pub client_upgrade: bool,
}

impl std::fmt::Debug for LuaCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LuaCall")
            .field("generation", &self.generation.number)
            .field("worker", &self.worker.id)
            .finish()
    }
}
