//! The pipeline: modules in priority order (ties by name), and the three phases.
//!
//! - request phase: module by module until one responds or forwards;
//! - response phase: in reverse, over the modules whose request phase ran;
//! - log phase: over the same modules, once the response is finished, or once the
//!   request is given up (the client left, status 499) or fails.
//!
//! Every module implements [`Module`]; a phase is either a pcmod block (run inline,
//! synchronously) or a Lua hook (run by [`crate::lua`], which may wait on the network).
//! The per-request [`Ctx`] is shared by all modules, pcmod and Lua. Must not touch: sockets, upstream selection (a
//! module can only *name* an upstream; `proxy` sends).

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};

use crate::http::path::PathRules;
use crate::http::{ProxyBody, RequestId};
use crate::lua::LuaCall;
use crate::metrics::{Metrics, ModuleMeter};
use crate::script::ast::PhaseKind;
use crate::script::value::Value;
use crate::stdlib::breaker::NamedBreakers;
use crate::stdlib::cache::store::{CacheSettings, HttpCache};
use crate::stdlib::cache::CacheReq;
use crate::stdlib::cluster::{Cluster, RedisSettings};
use crate::stdlib::rate_limit::RateLimiter;
use crate::stdlib::shared::SharedDict;
use crate::upstream::breaker::Permit;
use crate::upstream::{InflightGuard, Upstreams};

/// State of the stdlib that outlives generations (rate-limit buckets, `std.shared`,
/// the metrics registry).
#[derive(Debug)]
pub struct StdState {
    pub rate_limits: RateLimiter,
    pub shared: SharedDict,
    /// The HTTP cache of `std.cache.*`.
    pub cache: Arc<HttpCache>,
    /// Named breakers of `std.circuit_breaker.*`.
    pub breakers: NamedBreakers,
    pub metrics: Metrics,
    /// Redis, for cluster-scoped calls.
    pub cluster: Arc<Cluster>,
}

impl StdState {
    /// The state of a process whose cache and Redis have these settings.
    pub fn new(cache: CacheSettings, redis: Option<RedisSettings>) -> Self {
        let metrics = Metrics::default();
        let counts = metrics.cache_counts();
        StdState {
            rate_limits: RateLimiter::default(),
            shared: SharedDict::default(),
            cache: Arc::new(HttpCache::with_counts(cache, counts)),
            breakers: NamedBreakers::default(),
            metrics,
            cluster: Arc::new(Cluster::new(redis)),
        }
    }
}

impl Default for StdState {
    fn default() -> Self {
        StdState::new(CacheSettings::default(), None)
    }
}

/// Facts about the request that do not change while it runs.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    pub id: RequestId,
    pub client_ip: IpAddr,
    pub scheme: &'static str,
    /// How a path a module sets is normalised: as the request's own was, by the
    /// generation it runs in (`server.merge_slashes`).
    pub path_rules: PathRules,
}

/// The request as a phase sees it: the live request in the request phase, a snapshot
/// afterwards.
pub struct ReqParts<'a> {
    pub method: &'a Method,
    pub uri: &'a mut Uri,
    pub headers: &'a mut HeaderMap,
}

/// The response as the response and log phases see it.
pub struct RespParts<'a> {
    pub status: &'a mut StatusCode,
    pub headers: &'a mut HeaderMap,
    /// The body, in the response phase (Lua's `resp:body()` and `resp:set_body()`).
    pub body: Option<&'a mut ProxyBody>,
}

/// Per-request context shared by every module (`$ctx.NAME`, and `ctx` in Lua).
#[derive(Debug, Default)]
pub struct Ctx {
    /// Values by slot; slot numbers are the pipeline's `ctx_names` positions.
    pub slots: Vec<Value>,
    /// Names only Lua uses (pcmod never reads them), in the order first set.
    pub extra: Vec<(Arc<str>, Value)>,
    /// The request's cache state, once `std.cache.*` ran (not visible to scripts).
    pub cache: Option<Box<CacheReq>>,
    /// The named breakers this request checked, the last one last, each with the
    /// permit its check was given (`None`: refused), for `std.circuit_breaker.record`.
    pub breakers: Vec<(Arc<str>, Option<Permit>)>,
    /// The response is the proxy's own error answer (no route, upstream failed): never
    /// stored by `std.cache.store`, whatever a module made of it.
    pub proxys_answer: bool,
}

/// Headers the request phase asks to put on the response (`std.request_id.inject`
/// puts one): inline, so a request that adds one does not allocate for it.
pub type ResponseHeaders = smallvec::SmallVec<[(HeaderName, HeaderValue); 1]>;

/// What one phase of one module can see and change.
pub struct Exchange<'a> {
    /// The module running (for messages and per-module state keys).
    pub module: &'a str,
    pub phase: PhaseKind,
    pub req: ReqParts<'a>,
    pub resp: Option<RespParts<'a>>,
    pub info: &'a mut RequestInfo,
    pub ctx: &'a mut Ctx,
    pub state: &'a StdState,
    /// The generation's upstream sets (`std.load_balance`, `std.circuit_breaker`).
    pub upstreams: &'a Upstreams,
    /// Name of the upstream the request is routed or forwarded to, if any.
    pub upstream: Option<&'a Arc<str>>,
    /// Headers to put on the response, whoever makes it (set in the request phase).
    pub response_headers: &'a mut ResponseHeaders,
    /// The request body, in the request phase (Lua's `req:body()`, `std.proxy.forward`).
    pub body: Option<&'a mut ProxyBody>,
    /// What Lua hooks need (the worker's VM, the upstreams), when the pipeline has any.
    pub lua: Option<&'a Arc<LuaCall>>,
}

/// How a module's request phase ended.
#[derive(Debug)]
pub enum Flow {
    /// Go on to the next module.
    Continue,
    /// Answer locally; the upstream never sees the request.
    Respond(LocalResponse),
    /// Send to this upstream instead of the route's.
    Forward(ForwardTo),
    /// A whole response made by a module (Lua: `std.respond`, or a response from
    /// `std.proxy.forward`, perhaps changed).
    Response(Box<ModuleResponse>),
}

/// A response a Lua hook returned.
#[derive(Debug)]
pub struct ModuleResponse {
    pub resp: http::Response<ProxyBody>,
    /// The upstream server it came from (its in-flight count ends with the response).
    pub guard: Option<InflightGuard>,
    /// The upstream it came from.
    pub upstream: Option<Arc<str>>,
}

/// A response made by a module.
#[derive(Debug)]
pub struct LocalResponse {
    pub status: StatusCode,
    pub body: Bytes,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// `forward NAME { timeout, retries }`.
#[derive(Debug, Clone)]
pub struct ForwardTo {
    /// Index into the generation's upstream sets.
    pub upstream: usize,
    pub timeout: Option<Duration>,
    pub retries: Option<u32>,
}

/// A module failed at run time.
#[derive(Debug, thiserror::Error)]
#[error("{module} ({file}:{line}): {message}")]
pub struct ScriptError {
    pub module: String,
    pub file: String,
    pub line: u32,
    pub message: String,
    /// Set when the failure was the client's: the request then gets the answer to
    /// that (413, 400), not 500.
    pub client: Option<ClientFault>,
    /// Set when the failure was an upstream's: a Lua `std.proxy.forward` that got no
    /// response, uncaught. The request gets that failure's answer (502, 503, 504), as
    /// for a pcmod `forward` or a route, not 500: the script is not at fault.
    pub upstream: Option<Box<crate::http::ProxyError>>,
}

/// What the client did wrong, found while a module ran (a Lua hook reading the
/// request body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// The request body went over `server.limits.max_body`.
    BodyTooLarge { limit: u64 },
    /// The request body could not be read (cut short, broken chunked framing).
    BadBody(&'static str),
    /// The client gave the request up while its body was read (499).
    Gone(&'static str),
    /// The request body made no progress for `timeout` (408).
    Stalled { timeout: std::time::Duration },
}

/// A pipeline module. Each phase has an empty default, so a module implements only
/// the phases it has.
pub trait Module: Send + Sync + fmt::Debug {
    /// The module's name (= its file stem).
    fn name(&self) -> &str;

    /// Lower runs first (0..=1000).
    fn priority(&self) -> i64;

    /// Whether the module has this phase at all.
    fn has_phase(&self, phase: PhaseKind) -> bool;

    /// Request phase: after routing, before the upstream. May change the request,
    /// answer it (`Flow::Respond`) or send it elsewhere (`Flow::Forward`).
    fn on_request(&self, _ex: &mut Exchange<'_>) -> Result<Flow, ScriptError> {
        Ok(Flow::Continue)
    }

    /// Response phase: after the response head arrived (or a module answered); may
    /// change status and headers.
    fn on_response(&self, _ex: &mut Exchange<'_>) -> Result<(), ScriptError> {
        Ok(())
    }

    /// Log phase: after the response is finished; may not change anything.
    fn on_log(&self, _ex: &mut Exchange<'_>) -> Result<(), ScriptError> {
        Ok(())
    }

    /// When this phase is a Lua hook: the module's index in the pipeline's Lua runtime.
    fn lua_hook(&self, _phase: PhaseKind) -> Option<usize> {
        None
    }
}

/// The modules of a generation, in run order.
#[derive(Debug, Default)]
pub struct Pipeline {
    pub modules: Vec<Arc<dyn Module>>,
    /// `$ctx.NAME` slots, by position.
    pub ctx_names: Vec<Arc<str>>,
    /// Whether a response or log phase reads request headers (then they are kept).
    pub keeps_request_headers: bool,
    /// Whether every module's response and log phases are blind to the response head
    /// (`CPhase::blind_to_response_head`) and none has a Lua response or log hook:
    /// then an upstream's head may stay as received (`http::RawHead`) unless a
    /// request starts a cache entry.
    pub response_head_unread: bool,
    /// The Lua chunks of the modules, when any module has one.
    pub lua: Option<Arc<crate::lua::LuaRuntime>>,
    /// Each module's time and error counters, in `modules` order (empty: not metered).
    pub meters: Vec<ModuleMeter>,
}

impl Pipeline {
    /// A pipeline over `modules`, sorted by priority then name.
    pub fn new(
        mut modules: Vec<Arc<dyn Module>>,
        ctx_names: Vec<Arc<str>>,
        keeps_request_headers: bool,
    ) -> Self {
        modules.sort_by(|a, b| {
            a.priority()
                .cmp(&b.priority())
                .then_with(|| a.name().cmp(b.name()))
        });
        Pipeline {
            modules,
            ctx_names,
            keeps_request_headers,
            response_head_unread: false,
            lua: None,
            meters: Vec::new(),
        }
    }

    /// Counts one run of module `i`'s `phase`, which started at `start`.
    fn meter(&self, i: usize, phase: PhaseKind, start: Instant, failed: bool) {
        if let Some(m) = self.meters.get(i) {
            m.record(phase, start.elapsed(), failed);
        }
    }

    /// A request found its worker without a Lua VM (the build failed): counted as a
    /// request-phase error of the module whose chunk failed to load, and that
    /// module's fault.
    pub fn lua_unavailable(&self, e: crate::lua::VmError) -> ScriptError {
        if let Some(i) = self.modules.iter().position(|m| m.name() == &*e.module) {
            self.meter(i, PhaseKind::Request, Instant::now(), true);
        }
        ScriptError {
            module: e.module.to_string(),
            file: e.file,
            line: e.line,
            message: format!("cannot build the worker's Lua VM: {}", e.message),
            client: None,
            upstream: None,
        }
    }

    /// Whether there is nothing to run.
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// A fresh context for one request.
    pub fn new_ctx(&self) -> Ctx {
        Ctx {
            slots: vec![Value::Nil; self.ctx_names.len()],
            extra: Vec::new(),
            cache: None,
            breakers: Vec::new(),
            proxys_answer: false,
        }
    }

    /// Whether any module's log phase is a Lua hook (then the log phase runs as a task).
    pub fn has_lua_log(&self) -> bool {
        self.modules
            .iter()
            .any(|m| m.lua_hook(PhaseKind::Log).is_some())
    }

    /// Whether any module has a log phase.
    pub fn has_log_phase(&self) -> bool {
        self.modules.iter().any(|m| m.has_phase(PhaseKind::Log))
    }

    /// Whether any module has a response or log phase (then the request is
    /// remembered past the request phase).
    pub fn has_late_phases(&self) -> bool {
        self.modules
            .iter()
            .any(|m| m.has_phase(PhaseKind::Response) || m.has_phase(PhaseKind::Log))
    }

    /// Runs request phases in order until one responds or forwards. Returns how the
    /// phase ended; `ran` counts the modules it reached, the one running included
    /// (the response and log phases run over those), and is kept up to date as it
    /// goes: a request given up while a hook waits runs its log phase over the modules
    /// up to that one.
    pub async fn run_request<'a>(
        &'a self,
        ex: &mut Exchange<'a>,
        ran: &mut usize,
    ) -> Result<Flow, ScriptError> {
        ex.phase = PhaseKind::Request;
        for (i, m) in self.modules.iter().enumerate() {
            if !m.has_phase(PhaseKind::Request) {
                continue;
            }
            *ran = i + 1;
            ex.module = m.name();
            let start = Instant::now();
            let flow = match m.lua_hook(PhaseKind::Request) {
                // Boxed: the hook's future (its waits, forward, outbound calls) is
                // large, and would otherwise make every request's future large.
                Some(index) => Box::pin(crate::lua::run_hook(index, ex))
                    .await
                    .map(|o| o.flow),
                None => m.on_request(ex),
            };
            // An upstream's failure met by a module's forward is not the module's fault.
            let fault = flow.as_ref().is_err_and(|e| e.upstream.is_none());
            self.meter(i, PhaseKind::Request, start, fault);
            match flow {
                Ok(Flow::Continue) => {
                    // `std.cache.check` found a fresh response: it is the answer.
                    if let Some(resp) = ex.ctx.cache.as_mut().and_then(|c| c.take_hit(&ex.info.id))
                    {
                        let answer = ModuleResponse {
                            resp,
                            guard: None,
                            upstream: None,
                        };
                        return Ok(Flow::Response(Box::new(answer)));
                    }
                }
                Ok(flow) => return Ok(flow),
                Err(e) => return Err(e),
            }
        }
        *ran = self.modules.len();
        Ok(Flow::Continue)
    }

    /// Runs response phases in reverse over the first `ran` modules.
    pub async fn run_response<'a>(
        &'a self,
        ran: usize,
        ex: &mut Exchange<'a>,
    ) -> Result<(), ScriptError> {
        ex.phase = PhaseKind::Response;
        let ran = ran.min(self.modules.len());
        for (i, m) in self.modules[..ran].iter().enumerate().rev() {
            if m.has_phase(PhaseKind::Response) {
                ex.module = m.name();
                let start = Instant::now();
                let result = match m.lua_hook(PhaseKind::Response) {
                    Some(index) => Box::pin(crate::lua::run_hook(index, ex)).await.map(|_| ()),
                    None => m.on_response(ex),
                };
                self.meter(i, PhaseKind::Response, start, result.is_err());
                result?;
            }
        }
        Ok(())
    }

    /// Runs log phases over the first `ran` modules; failures are logged, not raised
    /// (the response is already gone).
    pub async fn run_log<'a>(&'a self, ran: usize, ex: &mut Exchange<'a>) {
        ex.phase = PhaseKind::Log;
        for (i, m) in self.modules[..ran.min(self.modules.len())]
            .iter()
            .enumerate()
        {
            if m.has_phase(PhaseKind::Log) {
                ex.module = m.name();
                let start = Instant::now();
                let result = match m.lua_hook(PhaseKind::Log) {
                    Some(index) => Box::pin(crate::lua::run_hook(index, ex)).await.map(|_| ()),
                    None => m.on_log(ex),
                };
                self.meter(i, PhaseKind::Log, start, result.is_err());
                if let Err(e) = result {
                    tracing::warn!(target: "proxycache::pipeline", module = %e.module, file = %e.file, line = e.line, error = %e.message, "log phase failed");
                }
            }
        }
    }

    /// The log phase when no module's log phase is Lua: runs inline, without a task.
    pub fn run_log_now<'a>(&'a self, ran: usize, ex: &mut Exchange<'a>) {
        ex.phase = PhaseKind::Log;
        for (i, m) in self.modules[..ran.min(self.modules.len())]
            .iter()
            .enumerate()
        {
            if m.has_phase(PhaseKind::Log) {
                ex.module = m.name();
                let start = Instant::now();
                let result = m.on_log(ex);
                self.meter(i, PhaseKind::Log, start, result.is_err());
                if let Err(e) = result {
                    tracing::warn!(target: "proxycache::pipeline", module = %e.module, file = %e.file, line = e.line, error = %e.message, "log phase failed");
                }
            }
        }
    }
}

/// A path a module sets (pcmod `set req.path`, Lua `req:set_path`, `std.url_rewrite`)
/// in normal form: later modules, routing of a `forward` and the upstream see what a
/// request arriving with it would have been, never `/pub/../admin`. (A path that
/// climbs above the root is the module's fault, not rewritten to something else.)
pub fn normal_script_path(path: &str, rules: PathRules) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("path {path:?} must start with /"));
    }
    crate::http::path::normalize(path, rules)
        .map(std::borrow::Cow::into_owned)
        .map_err(|e| format!("path {path:?}: {e}"))
}

/// Sets the path, the query or both as a module asks (pcmod `set req.path` and `set
/// req.query`, Lua `req:set_path` and `req:set_query`); `None` keeps what `uri` has.
/// Bytes a request target cannot carry are percent-encoded ([`crate::http::percent`]):
/// a space, a `#`, controls, non-ASCII. Without it a `#` cut the query short (the rest
/// read as a fragment) and a space failed the request. The path is then put in normal
/// form; the caller refuses a `?` or `#` in it first (a mistake, not data).
pub fn set_script_target(
    uri: &mut Uri,
    path: Option<&str>,
    query: Option<&str>,
    rules: PathRules,
) -> Result<(), String> {
    let path = match path {
        Some(p) => normal_script_path(&crate::http::percent::path(p), rules)?,
        None => uri.path().to_owned(),
    };
    let query = match query {
        Some(q) => Some(crate::http::percent::query(q)),
        None => uri.query().map(std::borrow::Cow::Borrowed),
    };
    let pq = match query.as_deref() {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path,
    };
    // All that is left to fail is the length (the `http` crate's limit, 64 KiB).
    let pq = PathAndQuery::try_from(pq.as_str()).map_err(|_| {
        format!(
            "path and query are not a valid request target ({} bytes)",
            pq.len()
        )
    })?;
    set_path_and_query(uri, pq);
    Ok(())
}

/// Replaces a URI's path and query, keeping scheme and authority.
pub fn set_path_and_query(uri: &mut Uri, pq: PathAndQuery) {
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(pq);
    *uri = Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"));
}
