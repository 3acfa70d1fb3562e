//! Running compiled phases: a tree walk over [`ir`](super::ir) with locals in a slot
//! vector. A run-time fault (a failing stdlib call, arithmetic on a string from a
//! header) becomes an error carrying the statement's line.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use smallvec::SmallVec;

use super::ast::{BinOp, LogLevel};
use super::ir::*;
use super::value::{text_from_bytes, Value};
use crate::http::{lookup, params};
use crate::pipeline::{Exchange, ForwardTo, LocalResponse};
use crate::stdlib;

/// How a block ended.
pub enum Exit {
    /// Ran to the end.
    Done,
    /// `next`.
    Next,
    /// Boxed, as is `Forward`'s: every statement returns an `Exit`, and only these two
    /// carry anything (the result then stays two words wide).
    Respond(Box<LocalResponse>),
    Forward(Box<ForwardTo>),
}

/// A run-time fault, with the line of the statement that raised it.
#[derive(Debug)]
pub struct Fault {
    pub line: u32,
    pub message: String,
}

type Eval<T> = Result<T, String>;

/// A call's evaluated arguments: inline for every signature in the stdlib.
type Args = SmallVec<[Value; 6]>;

/// Why a statement stopped: a message (the statement's line is added by the block
/// running it), or a fault already placed on an inner statement's line.
enum Raise {
    Msg(String),
    Fault(Fault),
}

impl From<String> for Raise {
    fn from(m: String) -> Self {
        Raise::Msg(m)
    }
}

/// Runs one phase.
pub fn run_phase(
    phase: &CPhase,
    ex: &mut Exchange<'_>,
    upstreams: &[String],
    lua: Option<usize>,
) -> Result<Exit, Fault> {
    // On the stack for the usual handful of locals (a phase runs per request), and
    // only as many as the phase has: each one is made and dropped per run.
    let mut locals: SmallVec<[Value; 8]> = SmallVec::new();
    locals.resize(phase.locals, Value::Nil);
    let mut m = Machine {
        locals: &mut locals,
        upstreams,
        lua,
    };
    m.block(&phase.body, ex)
}

struct Machine<'a> {
    locals: &'a mut [Value],
    /// The module's index in the pipeline's Lua runtime (for `lua.NAME(...)`).
    lua: Option<usize>,
    upstreams: &'a [String],
}

impl Machine<'_> {
    fn block(&mut self, stmts: &[CStmt], ex: &mut Exchange<'_>) -> Result<Exit, Fault> {
        for stmt in stmts {
            match self.stmt(stmt, ex) {
                Ok(Exit::Done) => {}
                Ok(other) => return Ok(other),
                Err(Raise::Msg(message)) => {
                    return Err(Fault {
                        line: stmt.line,
                        message,
                    })
                }
                Err(Raise::Fault(f)) => return Err(f),
            }
        }
        Ok(Exit::Done)
    }

    fn stmt(&mut self, stmt: &CStmt, ex: &mut Exchange<'_>) -> Result<Exit, Raise> {
        match &stmt.kind {
            CStmtKind::Let(slot, e) => {
                let v = self.eval(e, ex)?;
                self.locals[usize::from(*slot)] = v;
            }
            CStmtKind::If(branches, otherwise) => {
                for (cond, body) in branches.iter() {
                    if self.test(cond, ex)? {
                        return self.block(body, ex).map_err(Raise::Fault);
                    }
                }
                return self.block(otherwise, ex).map_err(Raise::Fault);
            }
            CStmtKind::Respond {
                status,
                body,
                headers,
            } => {
                return Ok(Exit::Respond(Box::new(self.respond(
                    status,
                    body.as_ref(),
                    headers,
                    ex,
                )?)))
            }
            CStmtKind::Forward {
                upstream,
                timeout,
                retries,
            } => {
                let index = match upstream {
                    CForward::Index(i) => *i,
                    CForward::Dynamic(e) => {
                        let name = self.eval(e, ex)?;
                        let name = name.to_string();
                        self.upstreams
                            .iter()
                            .position(|u| *u == name)
                            .ok_or_else(|| format!("forward: unknown upstream {name:?}"))?
                    }
                };
                return Ok(Exit::Forward(Box::new(ForwardTo {
                    upstream: index,
                    timeout: *timeout,
                    retries: *retries,
                })));
            }
            CStmtKind::SetHeader {
                resp,
                name,
                value,
                append,
                constant,
            } => {
                let v = match constant {
                    Some(v) => v.clone(),
                    None => self.header_value(value, ex)?,
                };
                let headers = if *resp {
                    ex.resp.as_mut().map(|r| &mut *r.headers)
                } else {
                    Some(&mut *ex.req.headers)
                };
                if let Some(h) = headers {
                    // A second `Host` is one the upstream may read instead of the first
                    // (RFC 9112 3.2 answers 400 to it): `add` of `host` replaces it.
                    if *append && name != header::HOST {
                        h.append(name.clone(), v);
                    } else {
                        h.insert(name.clone(), v);
                    }
                }
            }
            CStmtKind::RemoveHeader { resp, name } => {
                let headers = if *resp {
                    ex.resp.as_mut().map(|r| &mut *r.headers)
                } else {
                    Some(&mut *ex.req.headers)
                };
                if let Some(h) = headers {
                    h.remove(name);
                }
            }
            CStmtKind::SetPath(e) => {
                let path = self.eval(e, ex)?.to_string();
                set_uri(ex, Some(&path), None)?;
            }
            CStmtKind::SetQuery(e) => {
                let q = self.eval(e, ex)?.to_string();
                set_uri(ex, None, Some(&q))?;
            }
            CStmtKind::SetStatus(e) => {
                let s = status(&self.eval(e, ex)?)?;
                if let Some(r) = ex.resp.as_mut() {
                    *r.status = s;
                }
            }
            CStmtKind::SetCtx(slot, e) => {
                let v = self.eval(e, ex)?;
                if let Some(s) = ex.ctx.slots.get_mut(usize::from(*slot)) {
                    *s = v;
                }
            }
            CStmtKind::Log(level, e) => {
                let value = self.eval(e, ex)?;
                // Written as it is: the log format escapes it (`observe`), so a
                // client's text in the message is one line, never a forged one.
                let msg: Cow<'_, str> = match &value {
                    Value::Str(s) => Cow::Borrowed(s),
                    other => Cow::Owned(other.to_string()),
                };
                let (module, id) = (ex.module, &ex.info.id);
                match level {
                    LogLevel::Debug => {
                        tracing::debug!(target: "proxycache::script", module, request_id = %id, "{msg}")
                    }
                    LogLevel::Info => {
                        tracing::info!(target: "proxycache::script", module, request_id = %id, "{msg}")
                    }
                    LogLevel::Warn => {
                        tracing::warn!(target: "proxycache::script", module, request_id = %id, "{msg}")
                    }
                    LogLevel::Error => {
                        tracing::error!(target: "proxycache::script", module, request_id = %id, "{msg}")
                    }
                }
            }
            CStmtKind::Next => return Ok(Exit::Next),
            CStmtKind::Call(call) => match &call.target {
                // A call for its effect: functions that can skip making their result do.
                CallTarget::Std(sig) => {
                    let mut args = Args::new();
                    self.args(call, ex, &mut args)?;
                    stdlib::call_for_effect(sig.id, &args, call.prepared.as_ref(), ex)
                        .map_err(|e| e.to_string())?;
                }
                CallTarget::Lua(_) => {
                    self.call(call, ex)?;
                }
            },
        }
        Ok(Exit::Done)
    }

    fn respond(
        &self,
        status_e: &CExpr,
        body: Option<&CExpr>,
        headers: &[(http::HeaderName, CExpr)],
        ex: &mut Exchange<'_>,
    ) -> Eval<LocalResponse> {
        let status = status(&self.eval(status_e, ex)?)?;
        let body = match body {
            Some(b) => Bytes::from(self.eval(b, ex)?.to_string()),
            None => Bytes::new(),
        };
        let mut hs = Vec::with_capacity(headers.len() + 1);
        for (name, value) in headers {
            hs.push((name.clone(), header_value(&*self.eval_ref(value, ex)?)?));
        }
        if !body.is_empty() && !hs.iter().any(|(n, _)| n == header::CONTENT_TYPE) {
            hs.push((
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ));
        }
        Ok(LocalResponse {
            status,
            body,
            headers: hs,
        })
    }

    /// Evaluates `call`'s arguments into `out`, which the caller keeps where it is
    /// (returned by value, the inline vector was copied on every call).
    fn args(&self, call: &BoundCall, ex: &mut Exchange<'_>, out: &mut Args) -> Eval<()> {
        out.reserve(call.args.len());
        for a in call.args.iter() {
            // Constants and locals, most arguments, without the general evaluator.
            out.push(match a {
                CExpr::Const(v) => v.clone(),
                CExpr::Local(slot) => self.locals[usize::from(*slot)].clone(),
                other => self.eval(other, ex)?,
            });
        }
        Ok(())
    }

    fn call(&self, call: &BoundCall, ex: &mut Exchange<'_>) -> Eval<Value> {
        let mut args = Args::new();
        self.args(call, ex, &mut args)?;
        match &call.target {
            CallTarget::Std(sig) => {
                stdlib::call(sig.id, &args, call.prepared.as_ref(), ex).map_err(|e| e.to_string())
            }
            CallTarget::Lua(name) => match self.lua {
                Some(index) => crate::lua::run::call_function(index, name, args.into_vec(), ex),
                None => Err(format!("lua.{name}: the module has no Lua chunk")),
            },
        }
    }

    /// `e`'s value, borrowed where it already exists (a constant, a local), so that
    /// comparing a local with a constant clones neither.
    fn eval_ref<'s>(&'s self, e: &'s CExpr, ex: &mut Exchange<'_>) -> Eval<Cow<'s, Value>> {
        Ok(match e {
            CExpr::Const(v) => Cow::Borrowed(v),
            CExpr::Local(slot) => Cow::Borrowed(&self.locals[usize::from(*slot)]),
            other => Cow::Owned(self.eval(other, ex)?),
        })
    }

    /// Whether `e` is true, without making a `Value::Bool` on the way.
    fn test(&self, e: &CExpr, ex: &mut Exchange<'_>) -> Eval<bool> {
        Ok(match e {
            CExpr::Not(x) => !self.test(x, ex)?,
            CExpr::And(a, b) => self.test(a, ex)? && self.test(b, ex)?,
            CExpr::Or(a, b) => self.test(a, ex)? || self.test(b, ex)?,
            CExpr::Bin(op @ (BinOp::Eq | BinOp::Ne), a, b) => {
                let a = self.eval_ref(a, ex)?;
                equal(&a, &*self.eval_ref(b, ex)?) == (*op == BinOp::Eq)
            }
            CExpr::Bin(op, a, b) => {
                let a = self.eval_ref(a, ex)?;
                binary(*op, &a, &*self.eval_ref(b, ex)?)?.truthy()
            }
            CExpr::Match(x, re) => self.is_match(x, re, ex)?,
            other => self.eval_ref(other, ex)?.truthy(),
        })
    }

    fn is_match(&self, x: &CExpr, re: &Pattern, ex: &mut Exchange<'_>) -> Eval<bool> {
        Ok(match &*self.eval_ref(x, ex)? {
            Value::Nil => false,
            Value::Str(s) => re.is_match(s),
            other => re.is_match(&other.to_string()),
        })
    }

    fn interpolate(&self, parts: &[CPart], ex: &mut Exchange<'_>) -> Eval<String> {
        // Room for the text and a short value per `${...}`: usually no regrowth.
        let room = parts
            .iter()
            .map(|p| match p {
                CPart::Text(t) => t.len(),
                CPart::Expr(_) => 24,
            })
            .sum();
        let mut s = String::with_capacity(room);
        for p in parts {
            match p {
                CPart::Text(t) => s.push_str(t),
                CPart::Expr(x) => match &*self.eval_ref(x, ex)? {
                    // Strings, the common case, without the formatting machinery.
                    Value::Str(v) => s.push_str(v),
                    other => {
                        use std::fmt::Write;
                        let _ = write!(s, "{other}");
                    }
                },
            }
        }
        Ok(s)
    }

    /// `e` as a header value; an interpolation's text becomes the value without
    /// another copy.
    fn header_value(&self, e: &CExpr, ex: &mut Exchange<'_>) -> Eval<HeaderValue> {
        match e {
            CExpr::Interp(parts) => {
                let text = self.interpolate(parts, ex)?;
                // What `HeaderValue` accepts; checked first so the message can show it.
                if !text.bytes().all(|b| b == b'\t' || (b >= 32 && b != 127)) {
                    return Err(format!("{text:?} is not a valid header value"));
                }
                HeaderValue::try_from(text).map_err(|e| e.to_string())
            }
            other => header_value(&*self.eval_ref(other, ex)?),
        }
    }

    fn eval(&self, e: &CExpr, ex: &mut Exchange<'_>) -> Eval<Value> {
        Ok(match e {
            CExpr::Const(v) => v.clone(),
            CExpr::Local(slot) => self.locals[usize::from(*slot)].clone(),
            CExpr::Var(var) => variable(var, ex),
            CExpr::Ctx(slot) => ex
                .ctx
                .slots
                .get(usize::from(*slot))
                .cloned()
                .unwrap_or_default(),
            CExpr::Interp(parts) => Value::str(self.interpolate(parts, ex)?),
            CExpr::Not(_) | CExpr::And(..) | CExpr::Or(..) | CExpr::Match(..) => {
                Value::Bool(self.test(e, ex)?)
            }
            CExpr::Neg(x) => match self.eval(x, ex)? {
                Value::Int(i) => Value::Int(i.checked_neg().ok_or("integer overflow")?),
                Value::Float(f) => Value::Float(-f),
                other => return Err(format!("cannot negate a {}", other.type_name())),
            },
            CExpr::Bin(op, a, b) => {
                let a = self.eval_ref(a, ex)?;
                binary(*op, &a, &*self.eval_ref(b, ex)?)?
            }
            CExpr::Field(x, i) => match &*self.eval_ref(x, ex)? {
                Value::Record(_, fields) => fields.get(*i).cloned().unwrap_or_default(),
                other => return Err(format!("field access on a {}", other.type_name())),
            },
            CExpr::Call(call) => self.call(call, ex)?,
            CExpr::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                for i in items.iter() {
                    out.push(self.eval(i, ex)?);
                }
                Value::List(Arc::from(out))
            }
        })
    }
}

fn variable(var: &VarRef, ex: &Exchange<'_>) -> Value {
    let text = |s: &str| Value::str(s);
    match var {
        VarRef::Method => text(ex.req.method.as_str()),
        VarRef::Path => text(ex.req.uri.path()),
        VarRef::Query => text(ex.req.uri.query().unwrap_or("")),
        VarRef::Host => match ex
            .req
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| ex.req.uri.host())
        {
            Some(h) => text(h),
            None => Value::Nil,
        },
        VarRef::Scheme => text(ex.info.scheme),
        VarRef::ClientIp => Value::str(ex.info.client_ip.to_string()),
        VarRef::RequestId => text(ex.info.id.as_str()),
        VarRef::Upstream => ex
            .upstream
            .map_or(Value::Nil, |u| Value::Str(Arc::clone(u))),
        VarRef::Status => ex
            .resp
            .as_ref()
            .map_or(Value::Nil, |r| Value::Int(i64::from(r.status.as_u16()))),
        VarRef::ReqHeader(name) => header_text(lookup::get(ex.req.headers, name)),
        VarRef::RespHeader(name) => {
            header_text(ex.resp.as_ref().and_then(|r| lookup::get(r.headers, name)))
        }
        VarRef::ReqQuery(key) => query_param(ex.req.uri.query().unwrap_or(""), key),
        VarRef::ReqCookie(key) => cookie(ex.req.headers, key),
    }
}

/// A header's value as text: bytes that are not UTF-8 by [`text_from_bytes`]'s rule,
/// so that clients sending different bytes never share a key.
fn header_text(v: Option<&HeaderValue>) -> Value {
    match v {
        Some(v) => Value::str(text_from_bytes(v.as_bytes())),
        None => Value::Nil,
    }
}

/// `$req.query["key"]`: names and values made text by [`text_from_bytes`]'s rule, as
/// header values are (Lua takes the bytes: `lua::handles`).
pub(crate) fn query_param(query: &str, key: &str) -> Value {
    params::query_param(query, |k| text_from_bytes(k) == key)
        .map_or(Value::Nil, |v| Value::str(text_from_bytes(&v)))
}

/// `$req.cookie["key"]`, by the same rule as [`query_param`].
pub(crate) fn cookie(headers: &http::HeaderMap, key: &str) -> Value {
    params::cookie(headers, |k| text_from_bytes(k) == key)
        .map_or(Value::Nil, |v| Value::str(text_from_bytes(v)))
}

/// A value as a header value (strings as they are, others as they interpolate).
pub(super) fn header_value(v: &Value) -> Eval<HeaderValue> {
    let text: Cow<'_, str> = match v {
        Value::Str(s) => Cow::Borrowed(s),
        other => Cow::Owned(other.to_string()),
    };
    HeaderValue::from_str(&text).map_err(|_| format!("{text:?} is not a valid header value"))
}

fn status(v: &Value) -> Eval<StatusCode> {
    match v {
        // A final response: a 1xx would leave the client waiting for the real one.
        Value::Int(n) if (200..=599).contains(n) => {
            StatusCode::from_u16(*n as u16).map_err(|e| e.to_string())
        }
        Value::Int(n) => Err(format!("status must be an int in 200..=599, got {n}")),
        Value::Str(text) => Err(format!(
            "status must be an int in 200..=599, got the string {text:?} (convert it with int(...))"
        )),
        other => Err(format!(
            "status must be an int in 200..=599, got {} {other}",
            other.type_name()
        )),
    }
}

fn set_uri(ex: &mut Exchange<'_>, path: Option<&str>, query: Option<&str>) -> Eval<()> {
    if let Some(p) = path.filter(|p| p.contains(['?', '#'])) {
        return Err(format!(
            "req.path {p:?} contains '?' or '#': set req.query for the query"
        ));
    }
    crate::pipeline::set_script_target(ex.req.uri, path, query, ex.info.path_rules)
        .map_err(|e| format!("req.{e}"))
}

fn binary(op: BinOp, a: &Value, b: &Value) -> Eval<Value> {
    Ok(match op {
        BinOp::Eq => Value::Bool(equal(a, b)),
        BinOp::Ne => Value::Bool(!equal(a, b)),
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            let ord = compare(a, b).ok_or_else(|| {
                format!("cannot compare {} with {}", a.type_name(), b.type_name())
            })?;
            Value::Bool(match op {
                BinOp::Lt => ord == Ordering::Less,
                BinOp::Le => ord != Ordering::Greater,
                BinOp::Gt => ord == Ordering::Greater,
                _ => ord != Ordering::Less,
            })
        }
        BinOp::In => Value::Bool(match b {
            Value::List(items) => items.iter().any(|i| equal(i, a)),
            Value::Map(m) => m.contains_key(&a.to_string()),
            Value::Nil => false,
            other => {
                return Err(format!(
                    "`in` needs a list or map, got {}",
                    other.type_name()
                ))
            }
        }),
        BinOp::StartsWith => {
            Value::Bool(matches!((a, b), (Value::Str(x), Value::Str(y)) if x.starts_with(&**y)))
        }
        BinOp::EndsWith => {
            Value::Bool(matches!((a, b), (Value::Str(x), Value::Str(y)) if x.ends_with(&**y)))
        }
        BinOp::Contains => Value::Bool(contains(a, b)?),
        BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem => arith(op, a, b)?,
        BinOp::And | BinOp::Or | BinOp::Match => Value::Nil,
    })
}

/// `a contains b`. A `nil` on the right is false, as for `starts_with`: made `""`, it
/// was in every string, so `$path contains $req.header["x-absent"]` held for every
/// request. Another type on the right of a string is a fault rather than its
/// interpolation (`"a5" contains 5` was true); `""` is in every string, as in Rust.
fn contains(a: &Value, b: &Value) -> Eval<bool> {
    Ok(match (a, b) {
        (Value::List(items), b) => items.iter().any(|i| equal(i, b)),
        (_, Value::Nil) => false,
        (Value::Str(x), Value::Str(y)) => x.contains(&**y),
        (Value::Map(m), Value::Str(y)) => m.contains_key(&**y),
        (Value::Str(_) | Value::Map(_), other) => {
            return Err(format!(
                "`contains` needs a string on the right of a {}, got {}",
                a.type_name(),
                other.type_name()
            ))
        }
        _ => false,
    })
}

/// `==`, consistent with ordering: two numbers (ints, floats, durations in seconds,
/// sizes in bytes) are equal when [`compare`] finds them so (`1KiB == 1024`,
/// `1 == 1.0`, `1500ms == 1.5`); lists and maps are equal item by item under this
/// rule (`[1, 2] == [1, 2.0]`); any other values only when they are the same.
fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::List(x), Value::List(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(x, y)| equal(x, y))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y.iter())
                    .all(|((kx, x), (ky, y))| kx == ky && equal(x, y))
        }
        _ if a.as_f64().is_some() && b.as_f64().is_some() => compare(a, b) == Some(Ordering::Equal),
        _ => a == b,
    }
}

fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Str(x), Value::Str(y)) => Some(x.cmp(y)),
        (Value::Int(x), Value::Int(y)) => Some(x.cmp(y)),
        (Value::Duration(x), Value::Duration(y)) => Some(x.cmp(y)),
        (Value::Size(x), Value::Size(y)) => Some(x.cmp(y)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

fn arith(op: BinOp, a: &Value, b: &Value) -> Eval<Value> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => {
            let r = match op {
                BinOp::Add => x.checked_add(*y),
                BinOp::Sub => x.checked_sub(*y),
                BinOp::Mul => x.checked_mul(*y),
                BinOp::Div => x.checked_div(*y),
                _ => x.checked_rem(*y),
            };
            r.map(Value::Int).ok_or_else(|| {
                format!(
                    "integer overflow or division by zero in {x} {} {y}",
                    op.as_str()
                )
            })
        }
        (Value::Duration(x), Value::Duration(y)) if op == BinOp::Add => x
            .checked_add(*y)
            .map(Value::Duration)
            .ok_or_else(|| "duration overflow in `+`".to_owned()),
        (Value::Duration(x), Value::Duration(y)) if op == BinOp::Sub => {
            Ok(Value::Duration(x.saturating_sub(*y)))
        }
        _ => {
            let (x, y) = match (a.as_f64(), b.as_f64()) {
                (Some(x), Some(y)) => (x, y),
                _ => {
                    // A string from `$ctx` (set by Lua, or from a header) meets a
                    // number: the checker's hint, which it could not give here.
                    let numbers = |v: &Value| v.as_f64().is_some();
                    let hint = match (a, b) {
                        (Value::Str(_), n) | (n, Value::Str(_)) if numbers(n) => {
                            " (make a number of the string with `int(...)`)"
                        }
                        _ => "",
                    };
                    return Err(format!(
                        "cannot use `{}` on {} and {}{hint}",
                        op.as_str(),
                        a.type_name(),
                        b.type_name()
                    ));
                }
            };
            // As for ints: `1.0 / 0` is a fault, not an `inf` (or `NaN`) that reaches a
            // header as the text "inf".
            if matches!(op, BinOp::Div | BinOp::Rem) && y == 0.0 {
                return Err(format!("division by zero in {a} {} {b}", op.as_str()));
            }
            let r = match op {
                BinOp::Add => x + y,
                BinOp::Sub => x - y,
                BinOp::Mul => x * y,
                BinOp::Div => x / y,
                _ => x % y,
            };
            if !r.is_finite() {
                return Err(format!("float overflow in {a} {} {b}", op.as_str()));
            }
            Ok(Value::Float(r))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A string that meets a number at run time (the checker did not know its type)
    /// gets the checker's hint.
    #[test]
    fn string_arithmetic_at_run_time_says_how_to_make_a_number() {
        let e = arith(BinOp::Add, &Value::Str("5".into()), &Value::Int(1)).err();
        assert_eq!(
            e.as_deref(),
            Some("cannot use `+` on string and int (make a number of the string with `int(...)`)")
        );
        let e = arith(BinOp::Mul, &Value::Bool(true), &Value::Int(1)).err();
        assert_eq!(e.as_deref(), Some("cannot use `*` on bool and int"));
    }
}
