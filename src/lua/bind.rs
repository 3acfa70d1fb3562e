//! `std`, `log` and `print` for Lua, built from the one signature table
//! ([`crate::stdlib::SIGNATURES`]): every `std.*` entry becomes a Lua function that
//! takes its arguments as one table of named arguments (`std.rate_limit{key = k,
//! rate = 10}`) or positionally in the table's order (`std.proxy.forward("eu")`),
//! checks them against the signature (a wrong name or type is a Lua error naming the
//! argument), and calls the same Rust code pcmod calls.

use std::collections::HashMap;
use std::sync::Arc;

use mlua::{Function, Lua, MultiValue, Table};
use parking_lot::Mutex;
use smallvec::SmallVec;

use super::convert::{self, arg_from_lua, to_lua};
use super::handles::{with_turn, LuaResponse, RespData, Turn, TurnCell};
use super::ops::{HttpCall, Op, PendingOp};
use super::sandbox::Sandbox;
use crate::pipeline::{Exchange, ReqParts, RespParts};
use crate::script::regexes;
use crate::script::value::Value;
use crate::stdlib::ip::Ranges;
use crate::stdlib::{self, ArgDefault, FnSig, Prepared, Returns, StdFn};

/// Regexes compiled for `std.url_rewrite` calls from Lua, by pattern, and the memory
/// they may still take (the cache starts over when it runs out).
type RegexCache = Mutex<(HashMap<String, Arc<regex::Regex>>, regexes::Budget)>;

/// How many distinct patterns a VM keeps compiled.
const REGEX_CACHE: usize = 256;

/// The functions behind `body()`: they wait, so they are Lua functions made by the
/// sandbox's `waiting` around a Rust function that starts the read.
pub struct Bodies {
    pub req: Function,
    pub resp: Function,
    pub object: Function,
}

fn body_fn(sb: &Sandbox, cell: &Arc<TurnCell>, which: u8) -> mlua::Result<Function> {
    let cell = Arc::clone(cell);
    let start = sb.lua.create_function(move |lua, this: mlua::Value| {
        check_waiting_allowed(lua, &cell)?;
        let op = match (which, this) {
            (0, _) => Op::ReqBody,
            (1, _) => Op::RespBody,
            (_, mlua::Value::UserData(ud)) if ud.is::<LuaResponse>() => Op::OwnBody(ud),
            _ => {
                return Err(mlua::Error::runtime(
                    "body() is a method: call it as resp:body()",
                ))
            }
        };
        lua.create_userdata(PendingOp(op))
    })?;
    sb.waiting.call(start)
}

/// Installs `std`, `log` and `print` as globals every module sees. Returns the
/// functions behind `body()`.
pub fn install(sb: &Sandbox, cell: &Arc<TurnCell>) -> mlua::Result<Bodies> {
    let lua = &sb.lua;
    let bodies = Bodies {
        req: body_fn(sb, cell, 0)?,
        resp: body_fn(sb, cell, 1)?,
        object: body_fn(sb, cell, 2)?,
    };
    let body_fn = bodies.object.clone();
    let std_table = lua.create_table()?;
    let regexes: Arc<RegexCache> = Arc::new(Mutex::new(Default::default()));
    for sig in stdlib::SIGNATURES.iter().flat_map(|area| area.iter()) {
        let Some(path) = sig.name.strip_prefix("std.") else {
            continue;
        };
        let f = match sig.id {
            StdFn::Respond => sb
                .plain
                .call::<Function>(respond_fn(lua, sig, cell, &body_fn)?)?,
            StdFn::ProxyForward | StdFn::HttpRequest => {
                let start = start_fn(lua, sig, cell)?;
                sb.waiting.call::<Function>(start)?
            }
            _ => {
                let args: Vec<&str> = sig.args.iter().map(|a| a.name).collect();
                let fields: Vec<&str> = match &sig.returns {
                    Returns::Record(r) => r.fields.iter().map(|(name, _)| *name).collect(),
                    _ => Vec::new(),
                };
                let f = match sig.id {
                    StdFn::SharedGet | StdFn::SharedSet => shared_fn(lua, sig, cell)?,
                    _ => sync_fn(lua, sig, cell, &regexes)?,
                };
                sb.fast.call::<Function>((f, sig.name, args, fields))?
            }
        };
        insert_path(lua, &std_table, path, f)?;
    }
    sb.set_base
        .call::<()>(("std", sb.library_tree.call::<Table>((std_table, "std"))?))?;
    let log = lua.create_table()?;
    for level in ["debug", "info", "warn", "error"] {
        log.raw_set(level, log_fn(lua, cell, level)?)?;
    }
    sb.set_base
        .call::<()>(("print", log_fn(lua, cell, "info")?))?;
    sb.set_base
        .call::<()>(("log", sb.library_tree.call::<Table>((log, "log"))?))?;
    Ok(bodies)
}

fn insert_path(lua: &Lua, root: &Table, path: &str, f: Function) -> mlua::Result<()> {
    let mut table = root.clone();
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            table.raw_set(part, f)?;
            return Ok(());
        }
        let next: Option<Table> = table.raw_get(part)?;
        table = match next {
            Some(t) => t,
            None => {
                let t = lua.create_table()?;
                table.raw_set(part, t.clone())?;
                t
            }
        };
    }
    Ok(())
}

/// Most arguments any signature has.
const MAX_ARGS: usize = 8;

/// A signature's default values, made once per VM rather than per call (a string
/// default would otherwise be a new allocation every time).
fn defaults(sig: &FnSig) -> Box<[Value]> {
    sig.args.iter().map(|a| a.default.value()).collect()
}

/// The arguments of a call in signature order, defaults (from [`defaults`]) filled
/// in, types checked. On the stack: a call has a handful.
pub fn bind_args(
    sig: &FnSig,
    defaults: &[Value],
    args: MultiValue,
) -> mlua::Result<SmallVec<[Value; 6]>> {
    bind_args_with_bytes(sig, defaults, args, None).map(|(args, _)| args)
}

/// [`bind_args`], except that argument `bytes` (an index), when it is a Lua string, is
/// handed back as its exact bytes — a body may be binary, where a script value's
/// string is text — and is `nil` among the arguments.
pub fn bind_args_with_bytes(
    sig: &FnSig,
    defaults: &[Value],
    args: MultiValue,
    bytes: Option<usize>,
) -> mlua::Result<(SmallVec<[Value; 6]>, Option<bytes::Bytes>)> {
    let mut raw = None;
    let mut bind = |i: usize, a: &stdlib::ArgSig, v: &mlua::Value| -> mlua::Result<Value> {
        match v {
            mlua::Value::String(s) if Some(i) == bytes => {
                raw = Some(bytes::Bytes::copy_from_slice(&s.as_bytes()));
                Ok(Value::Nil)
            }
            _ => one_arg(sig, a, defaults.get(i), v),
        }
    };
    let fail = |m: String| mlua::Error::runtime(format!("{}: {m}", sig.name));
    let mut out = SmallVec::with_capacity(sig.args.len());
    let named = match args.front() {
        Some(mlua::Value::Table(t)) if args.len() == 1 => Some(t.clone()),
        _ => None,
    };
    match named {
        Some(t) => {
            // One pass over the table: each key must name an argument.
            let mut given: [Option<mlua::Value>; MAX_ARGS] = Default::default();
            t.for_each(|k: mlua::Value, v: mlua::Value| {
                let index = match &k {
                    mlua::Value::String(s) => {
                        let s = s.as_bytes();
                        sig.args
                            .iter()
                            .position(|a| a.name.as_bytes() == s.as_ref())
                    }
                    _ => None,
                };
                match index {
                    Some(i) if i < MAX_ARGS => {
                        given[i] = Some(v);
                        Ok(())
                    }
                    _ => {
                        let names: Vec<&str> = sig.args.iter().map(|a| a.name).collect();
                        Err(fail(format!(
                            "unknown argument `{}` (arguments: {})",
                            k.to_string().unwrap_or_else(|_| k.type_name().to_owned()),
                            names.join(", ")
                        )))
                    }
                }
            })?;
            for (i, a) in sig.args.iter().enumerate() {
                let v = given
                    .get_mut(i)
                    .and_then(Option::take)
                    .unwrap_or(mlua::Value::Nil);
                out.push(bind(i, a, &v)?);
            }
        }
        None => {
            if args.len() > sig.args.len() {
                return Err(fail(format!(
                    "takes at most {} arguments, got {}",
                    sig.args.len(),
                    args.len()
                )));
            }
            for (i, a) in sig.args.iter().enumerate() {
                let v = args.get(i).unwrap_or(&mlua::Value::Nil);
                out.push(bind(i, a, v)?);
            }
        }
    }
    Ok((out, raw))
}

/// Where a signature's `body` argument is (bodies keep their exact bytes).
fn body_index(sig: &FnSig) -> Option<usize> {
    sig.args.iter().position(|a| a.name == "body")
}

fn one_arg(
    sig: &FnSig,
    a: &stdlib::ArgSig,
    default: Option<&Value>,
    v: &mlua::Value,
) -> mlua::Result<Value> {
    if v.is_nil() {
        if a.default == ArgDefault::Required {
            return Err(mlua::Error::runtime(format!(
                "{}: missing argument `{}`",
                sig.name, a.name
            )));
        }
        return Ok(default.cloned().unwrap_or_else(|| a.default.value()));
    }
    let value = arg_from_lua(v, a.ty, a.name)
        .map_err(|m| mlua::Error::runtime(format!("{}: {m}", sig.name)))?;
    if let Some(check) = a.check {
        check(&value).map_err(|m| {
            mlua::Error::runtime(format!("{}: argument `{}`: {m}", sig.name, a.name))
        })?;
    }
    Ok(value)
}

fn check_phase(sig: &FnSig, t: &Turn) -> mlua::Result<()> {
    if sig.phases.contains(&t.phase) {
        return Ok(());
    }
    Err(mlua::Error::runtime(format!(
        "{} may not be called in the {} phase",
        sig.name,
        t.phase.as_str()
    )))
}

/// The pipeline's view of a turn, for stdlib calls.
pub fn exchange(t: &mut Turn) -> Exchange<'_> {
    Exchange {
        module: &t.module,
        phase: t.phase,
        req: ReqParts {
            method: &t.method,
            uri: &mut t.uri,
            headers: &mut t.headers,
        },
        resp: t.resp.as_mut().map(|r| RespParts {
            status: &mut r.status,
            headers: &mut r.headers,
            body: r.body.as_mut(),
        }),
        info: &mut t.info,
        ctx: &mut t.ctx,
        state: &t.call.generation.std_state,
        upstreams: &t.call.generation.upstreams,
        upstream: t.upstream.as_ref(),
        response_headers: &mut t.response_headers,
        body: t.body.as_mut(),
        lua: None,
    }
}

fn sync_fn(
    lua: &Lua,
    sig: &'static FnSig,
    cell: &Arc<TurnCell>,
    regexes: &Arc<RegexCache>,
) -> mlua::Result<Function> {
    let cell = Arc::clone(cell);
    let regexes = Arc::clone(regexes);
    let defaults = defaults(sig);
    lua.create_function(move |lua, args: MultiValue| {
        let args = bind_args(sig, &defaults, args)?;
        let prepared = match sig.id {
            StdFn::UrlRewrite => Some(Prepared::Regex(cached_regex(&regexes, &args)?)),
            // A Lua table may change between calls: its ranges are parsed each time.
            StdFn::IpIn => Some(Prepared::Ranges(
                Ranges::from_value(args.get(1).unwrap_or(&Value::Nil)).map_err(|m| {
                    mlua::Error::runtime(format!("{}: argument `ranges`: {m}", sig.name))
                })?,
            )),
            _ => None,
        };
        let result = with_turn(&cell, |t| {
            check_phase(sig, t)?;
            let mut ex = exchange(t);
            stdlib::call(sig.id, &args, prepared.as_ref(), &mut ex)
                .map_err(|e| mlua::Error::runtime(e.to_string()))
        })?;
        // A record's fields go back in order; `fast` (sandbox.lua) makes the table.
        match (&sig.returns, &result) {
            (Returns::Nothing, _) => Ok(MultiValue::new()),
            (Returns::Record(_), Value::Record(_, fields)) => {
                std::iter::once(Ok(mlua::Value::Boolean(true)))
                    .chain(fields.iter().map(|v| to_lua(lua, v)))
                    .collect::<mlua::Result<MultiValue>>()
            }
            (Returns::Record(_), _) => Ok(MultiValue::new()),
            _ => Ok(MultiValue::from_iter([to_lua(lua, &result)?])),
        }
    })
}

/// `std.shared.get` and `std.shared.set`, which keep a Lua string's exact bytes: a
/// string that is not UTF-8 is stored as bytes and read back as the same Lua string
/// (OpenResty's `ngx.shared.DICT` stores any Lua string).
fn shared_fn(lua: &Lua, sig: &'static FnSig, cell: &Arc<TurnCell>) -> mlua::Result<Function> {
    let cell = Arc::clone(cell);
    let defaults = defaults(sig);
    lua.create_function(move |lua, args: MultiValue| {
        let (args, raw) = bind_args_with_bytes(sig, &defaults, args, Some(1))?;
        let got = with_turn(&cell, |t| {
            check_phase(sig, t)?;
            let ex = exchange(t);
            if sig.id == StdFn::SharedGet {
                return Ok(Some(stdlib::dict::get(&args, &ex)));
            }
            let value = match (raw, args.get(1)) {
                (Some(bytes), _) => Some(stdlib::shared::SharedValue::from_bytes(bytes)),
                (None, None | Some(Value::Nil)) => None,
                (None, Some(v)) => Some(
                    stdlib::dict::to_shared(v)
                        .map_err(|m| mlua::Error::runtime(format!("{}: {m}", sig.name)))?,
                ),
            };
            stdlib::dict::set(&args, value, &ex)
                .map_err(|e| mlua::Error::runtime(e.to_string()))?;
            Ok(None)
        })?;
        // `got`: `None` from set (no result), `Some(value)` from get.
        let value = match got {
            None => return Ok(MultiValue::new()),
            Some(None) => mlua::Value::Nil,
            Some(Some(stdlib::shared::SharedValue::Bytes(b))) => {
                mlua::Value::String(lua.create_string(&b)?)
            }
            Some(Some(v)) => to_lua(lua, &stdlib::dict::from_shared(v))?,
        };
        Ok(MultiValue::from_iter([value]))
    })
}

fn cached_regex(cache: &RegexCache, args: &[Value]) -> mlua::Result<Arc<regex::Regex>> {
    let pattern = args.first().and_then(Value::as_str).unwrap_or("");
    let mut guard = cache.lock();
    let (map, budget) = &mut *guard;
    if let Some(r) = map.get(pattern) {
        return Ok(Arc::clone(r));
    }
    if map.len() >= REGEX_CACHE {
        map.clear();
        *budget = regexes::Budget::default();
    }
    let compiled = match regexes::compile(pattern, budget) {
        Err(r) if r.over_budget && !map.is_empty() => {
            map.clear();
            *budget = regexes::Budget::default();
            regexes::compile(pattern, budget)
        }
        other => other,
    };
    let r = Arc::new(compiled.map_err(|r| {
        mlua::Error::runtime(format!(
            "std.url_rewrite: pattern: {} ({})",
            r.message, r.hint
        ))
    })?);
    map.insert(pattern.to_owned(), Arc::clone(&r));
    Ok(r)
}

/// Waiting is allowed only from the hook's own coroutine (not from a coroutine the
/// script made: that one's yield would not reach the driver).
pub fn check_waiting_allowed(lua: &Lua, cell: &TurnCell) -> mlua::Result<()> {
    let current = lua.current_thread();
    with_turn(cell, |t| {
        if t.thread.as_ref() == Some(&current) {
            Ok(())
        } else {
            Err(mlua::Error::runtime(
                "functions that wait (std.proxy.forward, std.http.request, body()) cannot be called inside a coroutine the script made",
            ))
        }
    })
}

fn start_fn(lua: &Lua, sig: &'static FnSig, cell: &Arc<TurnCell>) -> mlua::Result<Function> {
    let cell = Arc::clone(cell);
    let defaults = defaults(sig);
    let body_at = body_index(sig);
    lua.create_function(move |lua, args: MultiValue| {
        let (args, body) = bind_args_with_bytes(sig, &defaults, args, body_at)?;
        check_waiting_allowed(lua, &cell)?;
        with_turn(&cell, |t| check_phase(sig, t))?;
        let op = match sig.id {
            StdFn::ProxyForward => Op::Forward {
                upstream: args[0].as_str().map(str::to_owned),
                timeout: match &args[1] {
                    Value::Duration(d) => Some(*d),
                    _ => None,
                },
                retries: match &args[2] {
                    // The same bound as pcmod's `forward { retries }`.
                    Value::Int(n) if (0..=10).contains(n) => Some(*n as u32),
                    Value::Int(n) => {
                        return Err(mlua::Error::runtime(format!(
                            "{}: retries must be in 0..=10, got {n}",
                            sig.name
                        )))
                    }
                    _ => None,
                },
            },
            _ => {
                Op::Http(Box::new(HttpCall::from_args(&args, body).map_err(|m| {
                    mlua::Error::runtime(format!("{}: {m}", sig.name))
                })?))
            }
        };
        lua.create_userdata(PendingOp(op))
    })
}

fn respond_fn(
    lua: &Lua,
    sig: &'static FnSig,
    cell: &Arc<TurnCell>,
    body_fn: &Function,
) -> mlua::Result<Function> {
    let cell = Arc::clone(cell);
    let body_fn = body_fn.clone();
    let defaults = defaults(sig);
    let body_at = body_index(sig);
    lua.create_function(move |lua, args: MultiValue| {
        let (args, body) = bind_args_with_bytes(sig, &defaults, args, body_at)?;
        let status = match &args[0] {
            Value::Int(n) => super::handles::status_code(*n)
                .map_err(|m| mlua::Error::runtime(format!("std.respond: {m}")))?,
            _ => {
                return Err(mlua::Error::runtime(
                    "std.respond: status must be an integer",
                ))
            }
        };
        let mut data = RespData {
            status,
            headers: http::HeaderMap::new(),
            body: None,
            lost: None,
        };
        if let Value::Map(map) = &args[2] {
            for (k, v) in map.iter() {
                let name = http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
                    mlua::Error::runtime(format!("std.respond: {k:?} is not a valid header name"))
                })?;
                let value = http::HeaderValue::from_str(&v.to_string()).map_err(|_| {
                    mlua::Error::runtime(format!(
                        "std.respond: the value of {k:?} is not a valid header value"
                    ))
                })?;
                data.headers.append(name, value);
            }
        }
        let body = body.unwrap_or_default();
        // Like pcmod's `respond`: a body without a declared type is text.
        if !body.is_empty() && !data.headers.contains_key(http::header::CONTENT_TYPE) {
            data.headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
        }
        super::handles::set_body(&mut data, body);
        let ud = lua.create_userdata(LuaResponse {
            data,
            guard: None,
            upstream: None,
            body_timeout: None,
            body_fn: body_fn.clone(),
            switched: None,
        })?;
        with_turn(&cell, |t| {
            check_phase(sig, t)?;
            t.answer = Some(ud.clone());
            Ok(())
        })?;
        Ok(ud)
    })
}

fn log_fn(lua: &Lua, cell: &Arc<TurnCell>, level: &'static str) -> mlua::Result<Function> {
    let cell = Arc::clone(cell);
    lua.create_function(move |_, args: MultiValue| {
        let mut text = String::new();
        for (i, v) in args.iter().enumerate() {
            if i > 0 {
                text.push(' ');
            }
            match v {
                // Bytes that are not UTF-8 (a header's obs-text) are kept as U+FFFD,
                // not replaced by the word `string`.
                mlua::Value::String(s) => text.push_str(&s.to_string_lossy()),
                v => match v.to_string() {
                    Ok(s) => text.push_str(&s),
                    Err(_) => text.push_str(v.type_name()),
                },
            }
        }
        // Written as it is: the log format escapes it (`observe`), so a client's text
        // in the message is one line, never a forged one.
        let (module, id) = {
            let guard = cell.lock();
            match guard.as_ref() {
                Some(t) => (t.module.to_string(), t.info.id.as_str().to_owned()),
                None => (String::from("-"), String::from("-")),
            }
        };
        match level {
            "debug" => tracing::debug!(target: "proxycache::lua", module = %module, request_id = %id, "{text}"),
            "warn" => tracing::warn!(target: "proxycache::lua", module = %module, request_id = %id, "{text}"),
            "error" => tracing::error!(target: "proxycache::lua", module = %module, request_id = %id, "{text}"),
            _ => tracing::info!(target: "proxycache::lua", module = %module, request_id = %id, "{text}"),
        }
        Ok(())
    })
}

/// A config value table for a module (read-only to scripts).
pub fn config_table(sb: &Sandbox, config: &[(String, Value)]) -> mlua::Result<Table> {
    let t = sb.lua.create_table()?;
    for (k, v) in config {
        t.raw_set(k.as_str(), convert::to_lua(&sb.lua, v)?)?;
    }
    sb.readonly.call::<Table>((t, "config"))
}
