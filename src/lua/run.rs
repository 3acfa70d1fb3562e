//! The hook driver. A hook runs in a pooled coroutine of the worker's VM: resumed
//! synchronously (no allocation, no future, when it does not wait), and when it
//! yields an operation ([`super::ops`]) the driver awaits it — the worker serves
//! other requests meanwhile — and resumes the hook with the result. Every slice runs
//! under the instruction budget; a spent budget ends the call whatever the script
//! does (see [`super::sandbox::Meter`]).

use std::sync::Arc;

use http::{header, Response};
use mlua::thread::ThreadStatus;
use mlua::{AnyUserData, Function, MultiValue};

use super::handles::{LuaResponse, RespData, Turn};
use super::ops::{self, PendingOp, Reply};
use super::sandbox::{BUDGET_MESSAGE, SLICE_LIMIT};
use super::vm::{
    error_text, innermost_position, phase_index, script_files, split_location, Runner, Vm,
};
use crate::http::ProxyBody;
use crate::pipeline::{ClientFault, Exchange, Flow, LocalResponse, ModuleResponse, ScriptError};
use crate::script::ast::PhaseKind;

/// How a hook ended.
#[derive(Debug)]
pub struct HookOutcome {
    /// For `on_request`: go on, or answer.
    pub flow: Flow,
}

/// Why a hook failed.
enum HookError {
    Lua(mlua::Error),
    /// The budget ran out; where the script was running (a Lua stack traceback), when
    /// known.
    Budget(Option<String>),
    Yielded,
    Lost,
    /// `req:body()` failed: the request fails with the client's fault, even if the
    /// hook caught the error. With the error the hook ended with when that is the
    /// body's, uncaught (it has the position of the script's call).
    Body(ClientFault, Option<mlua::Error>),
    /// The hook ended with the error of a `std.proxy.forward` that got no response.
    Forward(mlua::Error, Box<crate::http::ProxyError>),
}

/// Runs module `index`'s hook for `ex.phase`.
pub async fn run_hook(index: usize, ex: &mut Exchange<'_>) -> Result<HookOutcome, ScriptError> {
    let Some(call) = ex.lua.map(Arc::clone) else {
        return Err(ScriptError {
            module: ex.module.to_owned(),
            file: String::new(),
            line: 0,
            message: "the Lua runtime is not available for this request".into(),
            client: None,
            upstream: None,
        });
    };
    let vm = Arc::clone(&call.vm);
    let Some(spec) = vm.specs.get(index) else {
        return Err(ScriptError {
            module: ex.module.to_owned(),
            file: String::new(),
            line: 0,
            message: "no such Lua module".into(),
            client: None,
            upstream: None,
        });
    };
    let phase = ex.phase;
    let Some(func) = vm.hooks[index][phase_index(phase)].clone() else {
        return Ok(HookOutcome {
            flow: Flow::Continue,
        });
    };
    let turn = Box::new(Turn::take(ex, call, Arc::clone(&spec.module)));
    let (turn, result) = drive(&vm, &func, turn, ex).await;
    let Some(mut turn) = turn else {
        return Err(script_error(&vm, index, &func, HookError::Lost));
    };
    let outcome = match result {
        Ok(value) if phase == PhaseKind::Request => answer(value, &mut turn),
        Ok(_) => Ok(Flow::Continue),
        Err(e) => Err(e),
    };
    let outcome = match turn.body_failed.take() {
        Some((fault, message)) => {
            let raised = match outcome {
                Err(HookError::Lua(e)) if is_error(&vm, index, &e, &message) => Some(e),
                _ => None,
            };
            Err(HookError::Body(fault, raised))
        }
        None => outcome,
    };
    // The hook ended with a failed forward's error (not caught, or raised again as it
    // was, with or without a position): the upstream's failure, not the script's. An
    // error of the script's own that only quotes it stays the script's.
    let outcome = match (outcome, turn.forward_failed.take()) {
        (Err(HookError::Lua(e)), Some((message, failure)))
            if is_error(&vm, index, &e, &message) =>
        {
            Err(HookError::Forward(e, Box::new(failure)))
        }
        (outcome, _) => outcome,
    };
    if let (Ok(_), Some(r)) = (&outcome, turn.resp.as_mut()) {
        replace_lost_body(r, &turn.info.id, &turn.module);
    }
    turn.close_forwarded();
    turn.thread = None;
    turn.answer = None;
    turn.put_back(ex);
    match outcome {
        Ok(flow) => Ok(HookOutcome { flow }),
        Err(e) => Err(script_error(&vm, index, &func, e)),
    }
}

/// A hook call in progress: its coroutine and the request's turn. Ended by
/// [`finish`](Self::finish); dropped before that — the request was abandoned (the
/// client left) while the hook waited — it still checks the coroutine in: closed,
/// with its request-time globals dropped, as for a hook that ended in an error.
/// Otherwise the suspended coroutine and the globals it set would live as long as
/// the VM. The turn then goes back to `home`: the abandoned request's log phase
/// still runs, on the request, its id and `ctx` as the hook left them.
struct Driving<'a, 'x> {
    vm: &'a Vm,
    /// Where the turn was taken from.
    home: &'a mut Exchange<'x>,
    runner: Option<Runner>,
    slot: Option<Box<Turn>>,
    /// The hook set a global (or ran out of budget).
    dirty: bool,
    /// The hook returned.
    finished: bool,
}

impl Driving<'_, '_> {
    /// Checks the coroutine in and hands the turn back.
    fn finish(mut self) -> Option<Box<Turn>> {
        self.check_in();
        self.slot.take()
    }

    fn check_in(&mut self) {
        if let Some(runner) = self.runner.take() {
            self.vm.checkin(runner, self.finished, self.dirty);
        }
    }
}

impl Drop for Driving<'_, '_> {
    fn drop(&mut self) {
        // Only when abandoned: `finish` took the runner.
        if self.runner.is_some() {
            if let Some(turn) = self.slot.as_mut() {
                turn.close_forwarded();
            }
            self.dirty = true;
            self.check_in();
            if let Some(mut turn) = self.slot.take() {
                turn.thread = None;
                turn.answer = None;
                turn.put_back(self.home);
            }
        }
    }
}

/// Runs `func` to its end; returns the turn (always, unless something impossible
/// happened) and the hook's first return value.
async fn drive(
    vm: &Vm,
    func: &Function,
    turn: Box<Turn>,
    home: &mut Exchange<'_>,
) -> (Option<Box<Turn>>, Result<mlua::Value, HookError>) {
    let runner = match vm.checkout(func) {
        Ok(r) => r,
        Err(e) => return (Some(turn), Err(HookError::Lua(e))),
    };
    let phase = turn.phase;
    let mut d = Driving {
        vm,
        home,
        runner: Some(runner),
        slot: Some(turn),
        dirty: false,
        finished: false,
    };
    let mut reply: Option<MultiValue> = None;
    let mut remaining = vm.budget;
    if let (Some(t), Some(r)) = (d.slot.as_mut(), d.runner.as_ref()) {
        t.thread = Some(r.thread.clone());
    }
    let result = loop {
        let Some(runner) = d.runner.as_ref() else {
            break Err(HookError::Lost);
        };
        vm.meter().begin(runner.id, remaining);
        std::mem::swap(&mut *vm.cell.lock(), &mut d.slot);
        let resumed = match reply.take() {
            Some(args) => runner.thread.resume::<mlua::Value>(args),
            None if phase == PhaseKind::Request => {
                runner.thread.resume::<mlua::Value>((&vm.req, &vm.ctx))
            }
            None => runner
                .thread
                .resume::<mlua::Value>((&vm.req, &vm.resp, &vm.ctx)),
        };
        std::mem::swap(&mut *vm.cell.lock(), &mut d.slot);
        let end = vm.meter().end();
        remaining = end.remaining;
        d.dirty |= end.spent || end.dirty;
        if end.spent {
            // Where it ran out: the count hook's note, else the traceback of the
            // budget error a Rust function's `charge` raised.
            let at = end.at.or_else(|| resumed.as_ref().err().map(error_text));
            break Err(HookError::Budget(at));
        }
        let value = match resumed {
            Ok(v) => v,
            Err(e) => break Err(HookError::Lua(e)),
        };
        if runner.thread.status() == ThreadStatus::Finished {
            d.finished = true;
            break Ok(value);
        }
        let op = match &value {
            mlua::Value::UserData(ud) => ud.take::<PendingOp>().ok(),
            _ => None,
        };
        let (Some(PendingOp(op)), Some(turn)) = (op, d.slot.as_mut()) else {
            break Err(HookError::Yielded);
        };
        // Boxed: only a hook that waits pays for the operation's (large) future.
        // The request may be abandoned here: then `d` is dropped, and checks in.
        let outcome = Box::pin(ops::run(op, turn)).await;
        reply = match reply_args(vm, outcome, d.slot.as_deref_mut()) {
            Ok(a) => Some(a),
            Err(e) => break Err(HookError::Lua(e)),
        };
    };
    if let Err(HookError::Lua(mlua::Error::MemoryError(_))) = &result {
        let _ = vm.sb.lua.gc_collect();
    }
    (d.finish(), result)
}

/// What the hook is resumed with: `true, result` or `false, message`. A response from
/// `std.proxy.forward` becomes the turn's answer and is recorded to be closed when the
/// hook ends, unless it answers.
fn reply_args(
    vm: &Vm,
    reply: Result<Reply, String>,
    turn: Option<&mut Turn>,
) -> mlua::Result<MultiValue> {
    let lua = &vm.sb.lua;
    let value = match reply {
        Err(message) => {
            return Ok(MultiValue::from_iter([
                mlua::Value::Boolean(false),
                mlua::Value::String(lua.create_string(&message)?),
            ]))
        }
        Ok(Reply::Bytes(b)) => mlua::Value::String(lua.create_string(&b)?),
        Ok(Reply::Response {
            data,
            guard,
            upstream,
            body_timeout,
            switched,
        }) => {
            let ud = lua.create_userdata(LuaResponse {
                data,
                guard,
                upstream,
                body_timeout: Some(body_timeout),
                body_fn: vm.body_fn.clone(),
                switched,
            })?;
            if let Some(turn) = turn {
                turn.answer = Some(ud.clone());
                turn.forwarded.push(ud.clone());
            }
            mlua::Value::UserData(ud)
        }
        Ok(Reply::Http {
            status,
            headers,
            body,
        }) => {
            let t = lua.create_table_with_capacity(0, 3)?;
            t.raw_set("status", i64::from(status))?;
            let h = lua.create_table_with_capacity(0, headers.len())?;
            for (k, v) in headers {
                h.raw_set(k, lua.create_string(&v)?)?;
            }
            t.raw_set("headers", h)?;
            t.raw_set("body", lua.create_string(&body)?)?;
            mlua::Value::Table(t)
        }
    };
    Ok(MultiValue::from_iter([mlua::Value::Boolean(true), value]))
}

/// What `on_request`'s return value (or a `std.respond` it made) means.
fn answer(value: mlua::Value, turn: &mut Turn) -> Result<Flow, HookError> {
    let returned = match value {
        mlua::Value::Nil => match turn.answer.take() {
            Some(ud) => ud,
            None => return Ok(Flow::Continue),
        },
        mlua::Value::UserData(ud) if ud.is::<LuaResponse>() => ud,
        // An integral float too (`200.0`, a status computed with `/`), as std
        // functions take one for an integer.
        mlua::Value::Integer(n) => return answer_status(n),
        mlua::Value::Number(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
            return answer_status(f as i64)
        }
        other => {
            return Err(HookError::Lua(mlua::Error::runtime(format!(
                "on_request returned a {}: return nothing to go on, or std.respond(...), a response from std.proxy.forward, or a status code",
                other.type_name()
            ))))
        }
    };
    response_flow(returned, turn).map_err(HookError::Lua)
}

/// A response whose body a failed `body()` lost, the hook having caught the error and
/// set no new body, becomes the proxy's own `502` (with `x-request-id`), as nginx
/// answers when an upstream's response fails before anything was sent: its body
/// would fail before the head is written, and the client would get no answer at all
/// while the logs said 200. The hook's headers go with the lost body.
fn replace_lost_body(data: &mut RespData, id: &crate::http::RequestId, module: &str) {
    let Some(why) = data.lost.take() else { return };
    tracing::warn!(target: "proxycache::pipeline", module, error = %why, "the response body was lost (a failed body() was caught and no set_body followed): answering 502");
    let status = http::StatusCode::BAD_GATEWAY;
    let text = format!(
        "{} {}\nrequest id: {id}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let (parts, body) = crate::http::error::local_response(status, text, id).into_parts();
    data.status = parts.status;
    data.headers = parts.headers;
    data.body = Some(body);
}

/// `return STATUS` from `on_request`: an empty answer with that status.
fn answer_status(n: i64) -> Result<Flow, HookError> {
    let status =
        super::handles::status_code(n).map_err(|m| HookError::Lua(mlua::Error::runtime(m)))?;
    Ok(Flow::Respond(LocalResponse {
        status,
        body: bytes::Bytes::new(),
        headers: Vec::new(),
    }))
}

fn response_flow(ud: AnyUserData, turn: &mut Turn) -> mlua::Result<Flow> {
    let mut r = ud.take::<LuaResponse>()?;
    replace_lost_body(&mut r.data, &turn.info.id, &turn.module);
    let mut resp = Response::new(r.data.body.unwrap_or(ProxyBody::Empty));
    *resp.status_mut() = r.data.status;
    *resp.headers_mut() = r.data.headers;
    if r.upstream.is_none()
        && !resp
            .headers()
            .contains_key(&crate::http::request_id::HEADER_NAME)
    {
        resp.headers_mut().insert(
            crate::http::request_id::HEADER_NAME,
            turn.info.id.header_value().clone(),
        );
    }
    if r.upstream.is_some() {
        crate::http::hygiene::strip_hop_by_hop(resp.headers_mut());
    }
    if let Some(switched) = r.switched {
        switched.answer(&mut resp);
    }
    let _ = header::CONTENT_LENGTH;
    Ok(Flow::Response(Box::new(ModuleResponse {
        resp,
        guard: r.guard,
        upstream: r.upstream,
    })))
}

/// Whether Lua error `e` is `message` itself, with or without the position the
/// script's `error` put before it.
fn is_error(vm: &Vm, index: usize, e: &mlua::Error, message: &str) -> bool {
    let text = error_text(e);
    if text.lines().next() == Some(message) {
        return true;
    }
    let Some(spec) = vm.specs.get(index) else {
        return false;
    };
    let files = script_files(spec, &vm.libs);
    let (at, _, rest) = split_location(&text, &files);
    at.is_some() && rest.lines().next() == Some(message)
}

/// The error a failed hook is logged with, at the file and line the script was
/// running when that is known (a Lua error's position, the count hook's note of a
/// spent budget). Otherwise at the line that defines the hook, and the message says
/// so: a memory error raised by the VM has no position, nor a yield.
fn script_error(vm: &Vm, index: usize, func: &Function, e: HookError) -> ScriptError {
    let spec = &vm.specs[index];
    let client = match &e {
        HookError::Body(fault, _) => Some(*fault),
        _ => None,
    };
    let (e, upstream) = match e {
        HookError::Forward(e, failure) => (HookError::Lua(e), Some(failure)),
        e => (e, None),
    };
    let files = script_files(spec, &vm.libs);
    let (at, message) = match e {
        HookError::Budget(at) => budget_error(vm, at.as_deref(), &files),
        HookError::Yielded => (
            None,
            "the hook yielded; coroutine.yield may only be used inside coroutines the script makes"
                .into(),
        ),
        HookError::Lost => (None, "the request was lost while the hook ran".into()),
        HookError::Body(fault, raised) => body_error(fault, raised.as_ref(), &files),
        // Lua gives a memory error no position, nor does mlua a traceback.
        HookError::Lua(mlua::Error::MemoryError(m)) => (
            None,
            format!("out of memory (scripts.lua_memory_limit): {m}"),
        ),
        HookError::Lua(e) | HookError::Forward(e, _) => {
            let (at, line, message) = split_location(&error_text(&e), &files);
            (at.map(|i| (i, line)), message)
        }
    };
    let (file, line, message) = match at {
        Some((i, line)) => (files[i].to_owned(), line, message),
        None => {
            let defined = u32::try_from(func.info().line_defined.unwrap_or(0)).unwrap_or(0);
            let message = format!("{message} (in the hook defined at line {defined})");
            (spec.file.to_string(), defined, message)
        }
    };
    ScriptError {
        module: spec.module.to_string(),
        file,
        line,
        message,
        client,
        upstream,
    }
}

/// A spent budget's message, with the traceback of where the script was (`at`) and
/// the innermost place in the module's `files` in it.
fn budget_error(vm: &Vm, at: Option<&str>, files: &[&str]) -> (Option<(usize, u32)>, String) {
    let what = format!(
        "{BUDGET_MESSAGE}: the hook ran more than {} VM instructions or {} ms without waiting",
        vm.budget,
        SLICE_LIMIT.as_millis()
    );
    let traceback = at.and_then(|t| t.find("stack traceback:").map(|from| &t[from..]));
    match traceback.and_then(|t| Some((innermost_position(t, files)?, t))) {
        Some((place, t)) => (Some(place), format!("{what}\n{t}")),
        None => (None, what),
    }
}

/// A failed `req:body()`'s message, at the script's call when the hook ended with
/// its error (`raised`); caught, nothing names the call.
fn body_error(
    fault: ClientFault,
    raised: Option<&mlua::Error>,
    files: &[&str],
) -> (Option<(usize, u32)>, String) {
    let why = match fault {
        ClientFault::BodyTooLarge { limit } => {
            format!("req:body(): the request body is over server.limits.max_body ({limit} bytes)")
        }
        ClientFault::BadBody(reason) | ClientFault::Gone(reason) => {
            format!("req:body(): {reason}")
        }
        ClientFault::Stalled { timeout } => {
            format!("req:body(): the request body made no progress within {timeout:?}")
        }
    };
    let at = raised.and_then(|e| match split_location(&error_text(e), files) {
        (Some(i), line, _) => Some((i, line)),
        (None, _, _) => None,
    });
    (at, why)
}

/// `lua.NAME(args)` from a pcmod phase: calls the module's own function at once (it
/// may not wait on the network), under the instruction budget, with the request in
/// place for any `std` call it makes. `Err` is the message of the pcmod fault.
pub fn call_function(
    index: usize,
    name: &str,
    args: Vec<crate::script::value::Value>,
    ex: &mut Exchange<'_>,
) -> Result<crate::script::value::Value, String> {
    let Some(call) = ex.lua.map(Arc::clone) else {
        return Err(format!("lua.{name}: the Lua runtime is not available"));
    };
    let vm = Arc::clone(&call.vm);
    let (Some(func), Some(spec)) = (
        vm.functions.get(index).and_then(|f| f.get(name)).cloned(),
        vm.specs.get(index),
    ) else {
        return Err(format!(
            "lua.{name}: no such function in the module's chunk"
        ));
    };
    let lua = &vm.sb.lua;
    let mut lua_args = MultiValue::with_capacity(args.len());
    for a in &args {
        lua_args.push_back(super::convert::to_lua(lua, a).map_err(|e| e.to_string())?);
    }
    let runner = vm.checkout(&func).map_err(|e| e.to_string())?;
    let mut turn = Box::new(Turn::take(ex, call, Arc::clone(&spec.module)));
    turn.thread = Some(runner.thread.clone());
    let mut slot = Some(turn);
    vm.meter().begin(runner.id, vm.budget);
    std::mem::swap(&mut *vm.cell.lock(), &mut slot);
    let resumed = runner.thread.resume::<mlua::Value>(lua_args);
    std::mem::swap(&mut *vm.cell.lock(), &mut slot);
    let end = vm.meter().end();
    let finished = runner.thread.status() == ThreadStatus::Finished;
    let result = if end.spent {
        // The pcmod fault is at the pcmod line; the Lua line it ran out at is named.
        let at = end
            .at
            .or_else(|| resumed.as_ref().err().map(error_text))
            .and_then(|t| {
                let files = script_files(spec, &vm.libs);
                innermost_position(&t, &files).map(|(i, line)| format!(" at {}:{line}", files[i]))
            });
        Err(format!(
            "lua.{name}: {BUDGET_MESSAGE}{}",
            at.unwrap_or_default()
        ))
    } else {
        match resumed {
            Err(e) => Err(format!("lua.{name}: {}", error_text(&e))),
            Ok(v) if finished => super::convert::from_lua(&v, &format!("the result of lua.{name}")),
            Ok(_) => Err(format!(
                "lua.{name} tried to wait (std.http.request, std.proxy.forward, body()); only Lua hooks may wait"
            )),
        }
    };
    vm.checkin(runner, finished, end.dirty || end.spent);
    if let Some(mut turn) = slot {
        turn.thread = None;
        turn.answer = None;
        turn.put_back(ex);
    }
    result
}
