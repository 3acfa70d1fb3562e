//! The glue between the request path and the pipeline: building the `Exchange` each
//! phase sees, turning a module's local response into an HTTP response, and the log
//! phase that runs when the response is finished (or the request ended without one).

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Method, Response, StatusCode, Uri};

use crate::generation::Generation;
use crate::http::{ProxyBody, ProxyError};
use crate::lua::LuaCall;
use crate::pipeline::{
    ClientFault, Ctx, Exchange, Flow, LocalResponse, ModuleResponse, ReqParts, RequestInfo,
    RespParts, ResponseHeaders, ScriptError,
};
use crate::script::ast::PhaseKind;

/// A request's pipeline state between phases.
#[derive(Debug)]
pub struct ScriptState {
    pub info: RequestInfo,
    pub ctx: Ctx,
    /// How many modules' request phases ran.
    pub ran: usize,
    /// Headers modules asked to put on the response (e.g. `std.request_id.inject`).
    pub response_headers: ResponseHeaders,
    /// The request as it left the request phase (headers only when a later phase
    /// reads them).
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    /// The upstream the request went to.
    pub upstream: Option<Arc<str>>,
    /// What Lua hooks need, when the pipeline has any.
    pub lua: Option<Arc<LuaCall>>,
}

impl ScriptState {
    /// The state of a request about to enter the request phase. Its URI and headers
    /// move in from `parts` (and go back after the phase, see [`request_phase`]):
    /// the modules change them here, so a request given up in the middle of a phase
    /// still has them, as the modules left them, for its log phase.
    pub fn new(
        pipeline: &crate::pipeline::Pipeline,
        parts: &mut Parts,
        info: RequestInfo,
        upstream: Option<&Arc<str>>,
        lua: Option<Arc<LuaCall>>,
    ) -> Box<Self> {
        // Boxed here: it is kept (in the request's completion) until the response ends.
        Box::new(ScriptState {
            info,
            ctx: pipeline.new_ctx(),
            ran: 0,
            response_headers: ResponseHeaders::new(),
            method: parts.method.clone(),
            uri: std::mem::take(&mut parts.uri),
            headers: std::mem::take(&mut parts.headers),
            upstream: upstream.cloned(),
            lua,
        })
    }
}

/// Runs the request phase over `state` (made by [`ScriptState::new`] from `parts`)
/// and `body`; returns the flow. `state` is the request's for its later phases, and
/// `parts` gets the request as the phase left it.
pub async fn request_phase(
    generation: &Generation,
    parts: &mut Parts,
    body: &mut ProxyBody,
    state: &mut ScriptState,
) -> Result<Flow, ProxyError> {
    let pipeline = &generation.pipeline;
    let flow = {
        let mut ex = Exchange {
            module: "",
            phase: PhaseKind::Request,
            req: ReqParts {
                method: &state.method,
                uri: &mut state.uri,
                headers: &mut state.headers,
            },
            resp: None,
            info: &mut state.info,
            ctx: &mut state.ctx,
            state: &generation.std_state,
            upstreams: &generation.upstreams,
            upstream: state.upstream.as_ref(),
            response_headers: &mut state.response_headers,
            body: Some(body),
            lua: state.lua.as_ref(),
        };
        pipeline.run_request(&mut ex, &mut state.ran).await
    };
    // A cache miss while another request fetches the same key: wait for it, then
    // serve what it stored.
    let flow = match (flow, state.ctx.cache.as_deref_mut()) {
        (Ok(Flow::Continue), Some(cache)) if cache.must_wait() => {
            match crate::stdlib::cache::after_wait(
                cache,
                &generation.std_state.cache,
                &state.headers,
                &state.info.id,
            )
            .await
            {
                Some(resp) => Ok(Flow::Response(Box::new(ModuleResponse {
                    resp,
                    guard: None,
                    upstream: None,
                }))),
                None => Ok(Flow::Continue),
            }
        }
        (flow, _) => flow,
    };
    parts.uri = state.uri.clone();
    parts.headers = if pipeline.keeps_request_headers {
        state.headers.clone()
    } else {
        std::mem::take(&mut state.headers)
    };
    flow.map_err(module_error)
}

/// Adds the headers modules asked for, then runs the response phase in reverse.
pub async fn response_phase(
    generation: &Generation,
    state: &mut ScriptState,
    resp: &mut Response<ProxyBody>,
) -> Result<(), ProxyError> {
    for (name, value) in state.response_headers.drain(..) {
        resp.headers_mut().insert(name, value);
    }
    crate::stdlib::cache::mark(state.ctx.cache.as_deref(), resp.headers_mut());
    let pipeline = &generation.pipeline;
    if state.ran == 0 || !pipeline.has_late_phases() {
        crate::stdlib::cache::answer_fill(state.ctx.cache.as_deref_mut(), resp);
        return Ok(());
    }
    let (mut parts, mut body) =
        std::mem::replace(resp, Response::new(ProxyBody::Empty)).into_parts();
    let result = {
        let mut ex = Exchange {
            module: "",
            phase: PhaseKind::Response,
            req: ReqParts {
                method: &state.method,
                uri: &mut state.uri,
                headers: &mut state.headers,
            },
            resp: Some(RespParts {
                status: &mut parts.status,
                headers: &mut parts.headers,
                body: Some(&mut body),
            }),
            info: &mut state.info,
            ctx: &mut state.ctx,
            state: &generation.std_state,
            upstreams: &generation.upstreams,
            upstream: state.upstream.as_ref(),
            response_headers: &mut ResponseHeaders::new(),
            body: None,
            lua: state.lua.as_ref(),
        };
        pipeline.run_response(state.ran, &mut ex).await
    };
    // The body is final now: a `std.cache.store` stores what the client gets, even
    // when a later module replaced the body.
    crate::stdlib::cache::tee_pending(
        state.ctx.cache.as_deref_mut(),
        parts.status,
        &parts.headers,
        &mut body,
    );
    // `std.cache.store` alone (no `check`) starts the cache state in this phase.
    crate::stdlib::cache::mark(state.ctx.cache.as_deref(), &mut parts.headers);
    *resp = Response::from_parts(parts, body);
    // Last: a fill's client gets the 304/206 it asked for from the response the
    // modules saw (and `store` kept) whole.
    crate::stdlib::cache::answer_fill(state.ctx.cache.as_deref_mut(), resp);
    result.map_err(module_error)
}

/// Everything the log phase needs once the response is finished.
#[derive(Debug)]
pub struct LogJob {
    pub generation: Arc<Generation>,
    pub state: Box<ScriptState>,
    pub status: StatusCode,
    pub response_headers: HeaderMap,
}

impl LogJob {
    /// Runs the log phase (from the response body's completion): inline when it is
    /// all pcmod, as a task on the worker when a Lua hook may wait.
    pub fn run(self) {
        // The request's span has ended (this runs from the body's completion): the log
        // phase gets one like it, so that its lines carry the request id too.
        let span = tracing::info_span!(target: "proxycache::proxy", "request", request_id = %self.state.info.id);
        if self.generation.pipeline.has_lua_log() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(tracing::Instrument::instrument(self.run_async(), span));
                return;
            }
        }
        let _entered = span.enter();
        self.run_now();
    }

    fn run_now(self) {
        let LogJob {
            generation,
            mut state,
            mut status,
            mut response_headers,
        } = self;
        let ran = state.ran;
        let mut scratch = ResponseHeaders::new();
        let mut ex = log_exchange(
            &generation,
            &mut state,
            &mut status,
            &mut response_headers,
            &mut scratch,
            false,
        );
        generation.pipeline.run_log_now(ran, &mut ex);
    }

    async fn run_async(self) {
        let LogJob {
            generation,
            mut state,
            mut status,
            mut response_headers,
        } = self;
        let ran = state.ran;
        let mut scratch = ResponseHeaders::new();
        let mut ex = log_exchange(
            &generation,
            &mut state,
            &mut status,
            &mut response_headers,
            &mut scratch,
            true,
        );
        generation.pipeline.run_log(ran, &mut ex).await;
    }
}

/// What the log phase sees: the request as it left the request phase and the
/// response head as sent; nothing it changes reaches the client. `lua`: whether Lua
/// hooks may run (only when the phase runs as a task).
fn log_exchange<'a>(
    generation: &'a Generation,
    state: &'a mut ScriptState,
    status: &'a mut StatusCode,
    response_headers: &'a mut HeaderMap,
    scratch: &'a mut ResponseHeaders,
    lua: bool,
) -> Exchange<'a> {
    Exchange {
        module: "",
        phase: PhaseKind::Log,
        req: ReqParts {
            method: &state.method,
            uri: &mut state.uri,
            headers: &mut state.headers,
        },
        resp: Some(RespParts {
            status,
            headers: response_headers,
            body: None,
        }),
        info: &mut state.info,
        ctx: &mut state.ctx,
        state: &generation.std_state,
        upstreams: &generation.upstreams,
        upstream: state.upstream.as_ref(),
        response_headers: scratch,
        body: None,
        lua: if lua { state.lua.as_ref() } else { None },
    }
}

/// A module's local response as an HTTP response; like every response the proxy
/// makes, it carries `x-request-id`.
pub fn local_response(local: LocalResponse, id: &crate::http::RequestId) -> Response<ProxyBody> {
    let len = local.body.len();
    let mut resp = Response::new(ProxyBody::full(local.body));
    *resp.status_mut() = local.status;
    let h = resp.headers_mut();
    for (name, value) in local.headers {
        h.append(name, value);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if !h.contains_key(&crate::http::request_id::HEADER_NAME) {
        h.insert(
            crate::http::request_id::HEADER_NAME,
            id.header_value().clone(),
        );
    }
    resp
}

pub(crate) fn module_error(e: ScriptError) -> ProxyError {
    // The client's fault, found by a module: answered as if the proxy had found it.
    match e.client {
        Some(ClientFault::BodyTooLarge { limit }) => return ProxyError::BodyTooLarge { limit },
        Some(ClientFault::BadBody(reason)) => return ProxyError::BadRequest(reason),
        Some(ClientFault::Gone(reason)) => return ProxyError::ClientGone(reason),
        Some(ClientFault::Stalled { timeout }) => {
            return ProxyError::RequestBodyTimeout { timeout }
        }
        None => {}
    }
    // An upstream's failure, met by a module's forward: answered (and logged) as the
    // proxy's own forward would be.
    if let Some(failure) = e.upstream {
        tracing::debug!(target: "proxycache::pipeline", module = %e.module, file = %e.file, line = e.line, "a module's forward got no response");
        return *failure;
    }
    tracing::error!(target: "proxycache::pipeline", module = %e.module, file = %e.file, line = e.line, error = %e.message, "module failed");
    ProxyError::Module {
        module: e.module,
        location: format!("{}:{}", e.file, e.line),
        message: e.message,
        logged: true,
    }
}
