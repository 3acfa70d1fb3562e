//! `req`, `resp`, `ctx` and response objects: narrow UserData over the request in
//! flight. A hook call moves the request's parts out of the pipeline's `Exchange`
//! into a [`Turn`] (moves, not copies), the VM's one `req`/`resp`/`ctx` handle reads
//! and changes the turn of the hook running now, and the parts move back when the
//! hook returns or waits. No table of headers is built unless `headers()` asks.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri};
use mlua::{AnyUserData, Function, Lua, MetaMethod, UserData, UserDataFields, UserDataMethods};
use parking_lot::Mutex;

use super::convert;
use super::LuaCall;
use crate::http::ProxyBody;
use crate::pipeline::{Ctx, Exchange, RequestInfo};
use crate::script::ast::PhaseKind;
use crate::script::value::Value;
use crate::upstream::InflightGuard;

/// A response's parts while Lua holds them.
#[derive(Debug)]
pub struct RespData {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body; `None` where the phase has none to give (the log phase).
    pub body: Option<ProxyBody>,
}

/// The request in flight, while one of its Lua hooks runs.
pub struct Turn {
    pub call: Arc<LuaCall>,
    pub module: Arc<str>,
    pub phase: PhaseKind,
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    /// The request body (request phase).
    pub body: Option<ProxyBody>,
    pub resp: Option<RespData>,
    pub info: RequestInfo,
    pub ctx: Ctx,
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    pub upstream: Option<Arc<str>>,
    /// A response `std.respond` made (it answers even if the hook does not return it).
    pub answer: Option<AnyUserData>,
    /// The coroutine running the hook (waiting is allowed only from it).
    pub thread: Option<mlua::Thread>,
}

impl Turn {
    /// Moves the request's parts out of `ex`.
    pub fn take(ex: &mut Exchange<'_>, call: Arc<LuaCall>, module: Arc<str>) -> Self {
        Turn {
            call,
            module,
            phase: ex.phase,
            method: ex.req.method.clone(),
            uri: std::mem::take(ex.req.uri),
            headers: std::mem::take(ex.req.headers),
            body: ex
                .body
                .as_mut()
                .map(|b| std::mem::replace(&mut **b, ProxyBody::Empty)),
            resp: ex.resp.as_mut().map(|r| RespData {
                status: *r.status,
                headers: std::mem::take(r.headers),
                body: r
                    .body
                    .as_mut()
                    .map(|b| std::mem::replace(&mut **b, ProxyBody::Empty)),
            }),
            info: ex.info.clone(),
            ctx: std::mem::take(ex.ctx),
            response_headers: std::mem::take(ex.response_headers),
            upstream: ex.upstream.map(Arc::from),
            answer: None,
            thread: None,
        }
    }

    /// Moves the parts back into `ex`.
    pub fn put_back(self, ex: &mut Exchange<'_>) {
        *ex.req.uri = self.uri;
        *ex.req.headers = self.headers;
        if let (Some(slot), Some(body)) = (ex.body.as_mut(), self.body) {
            **slot = body;
        }
        if let (Some(r), Some(data)) = (ex.resp.as_mut(), self.resp) {
            *r.status = data.status;
            *r.headers = data.headers;
            if let (Some(slot), Some(body)) = (r.body.as_mut(), data.body) {
                **slot = body;
            }
        }
        *ex.ctx = self.ctx;
        *ex.response_headers = self.response_headers;
    }
}

/// Where the turn of the hook running now is.
pub type TurnCell = Mutex<Option<Turn>>;

/// Runs `f` on the running hook's turn.
pub fn with_turn<R>(
    cell: &TurnCell,
    f: impl FnOnce(&mut Turn) -> mlua::Result<R>,
) -> mlua::Result<R> {
    let mut guard = cell.lock();
    match guard.as_mut() {
        Some(turn) => f(turn),
        None => Err(mlua::Error::runtime(
            "no request is running: req, resp and ctx are valid only inside a hook",
        )),
    }
}

fn header_name(name: &[u8]) -> mlua::Result<HeaderName> {
    HeaderName::from_bytes(name).map_err(|_| {
        mlua::Error::runtime(format!(
            "{:?} is not a valid header name",
            String::from_utf8_lossy(name)
        ))
    })
}

fn header_value(v: &mlua::Value) -> mlua::Result<HeaderValue> {
    let bytes: Vec<u8> = match v {
        mlua::Value::String(s) => s.as_bytes().to_vec(),
        mlua::Value::Integer(i) => i.to_string().into_bytes(),
        mlua::Value::Number(f) => f.to_string().into_bytes(),
        mlua::Value::Boolean(b) => b.to_string().into_bytes(),
        other => {
            return Err(mlua::Error::runtime(format!(
                "a header value must be a string, not {}",
                other.type_name()
            )))
        }
    };
    HeaderValue::from_bytes(&bytes).map_err(|_| {
        mlua::Error::runtime(format!(
            "{:?} is not a valid header value",
            String::from_utf8_lossy(&bytes)
        ))
    })
}

fn read_only(phase: PhaseKind) -> mlua::Result<()> {
    if phase == PhaseKind::Log {
        return Err(mlua::Error::runtime(
            "the log phase may not change the request or the response",
        ));
    }
    Ok(())
}

/// All values of each header as a table (several values joined with ", ").
fn headers_table(lua: &Lua, headers: &HeaderMap) -> mlua::Result<mlua::Table> {
    let t = lua.create_table_with_capacity(0, headers.keys_len())?;
    for name in headers.keys() {
        let mut values = headers.get_all(name).iter();
        let Some(first) = values.next() else { continue };
        let mut joined = first.as_bytes().to_vec();
        for v in values {
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(v.as_bytes());
        }
        t.raw_set(name.as_str(), lua.create_string(&joined)?)?;
    }
    Ok(t)
}

fn opt_string(lua: &Lua, v: Option<HeaderValue>) -> mlua::Result<mlua::Value> {
    match v {
        Some(v) => Ok(mlua::Value::String(lua.create_string(v.as_bytes())?)),
        None => Ok(mlua::Value::Nil),
    }
}

fn set_uri(uri: &mut Uri, path: Option<&str>, query: Option<&str>) -> mlua::Result<()> {
    let path = path.unwrap_or_else(|| uri.path()).to_owned();
    if !path.starts_with('/') {
        return Err(mlua::Error::runtime(format!(
            "path {path:?} must start with /"
        )));
    }
    let query = query
        .map(str::to_owned)
        .or_else(|| uri.query().map(str::to_owned));
    let pq = match query.as_deref() {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path,
    };
    let pq = pq
        .parse()
        .map_err(|_| mlua::Error::runtime(format!("{pq:?} is not a valid path")))?;
    crate::pipeline::set_path_and_query(uri, pq);
    Ok(())
}

/// `req`: the request of the hook running now.
pub struct ReqHandle {
    pub cell: Arc<TurnCell>,
    /// `req:body()` (a function that waits).
    pub body_fn: Function,
}

impl UserData for ReqHandle {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("method", |lua, this| {
            let m = with_turn(&this.cell, |t| Ok(t.method.clone()))?;
            lua.create_string(m.as_str())
        });
        fields.add_field_method_get("path", |lua, this| {
            with_turn(&this.cell, |t| lua.create_string(t.uri.path()))
        });
        fields.add_field_method_get("query", |lua, this| {
            with_turn(&this.cell, |t| match t.uri.query() {
                Some(q) => Ok(mlua::Value::String(lua.create_string(q)?)),
                None => Ok(mlua::Value::Nil),
            })
        });
        fields.add_field_method_get("host", |lua, this| {
            let host = with_turn(&this.cell, |t| {
                Ok(t.headers
                    .get(header::HOST)
                    .cloned()
                    .or_else(|| t.uri.host().and_then(|h| HeaderValue::from_str(h).ok())))
            })?;
            opt_string(lua, host)
        });
        fields.add_field_method_get("scheme", |_, this| {
            with_turn(&this.cell, |t| Ok(t.info.scheme))
        });
        fields.add_field_method_get("client_ip", |_, this| {
            with_turn(&this.cell, |t| Ok(t.info.client_ip.to_string()))
        });
        fields.add_field_method_get("id", |lua, this| {
            with_turn(&this.cell, |t| lua.create_string(t.info.id.as_str()))
        });
        fields.add_field_method_get("upstream", |_, this| {
            with_turn(&this.cell, |t| Ok(t.upstream.as_deref().map(str::to_owned)))
        });
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("header", |lua, this, name: mlua::LuaString| {
            let v = with_turn(&this.cell, |t| {
                Ok(t.headers.get(header_name(&name.as_bytes())?).cloned())
            })?;
            opt_string(lua, v)
        });
        methods.add_method("headers", |lua, this, ()| {
            with_turn(&this.cell, |t| headers_table(lua, &t.headers))
        });
        methods.add_method(
            "set_header",
            |_, this, (name, value): (mlua::LuaString, mlua::Value)| {
                let name = header_name(&name.as_bytes())?;
                with_turn(&this.cell, |t| {
                    read_only(t.phase)?;
                    if value.is_nil() {
                        t.headers.remove(&name);
                    } else {
                        t.headers.insert(name, header_value(&value)?);
                    }
                    Ok(())
                })
            },
        );
        methods.add_method(
            "add_header",
            |_, this, (name, value): (mlua::LuaString, mlua::Value)| {
                let name = header_name(&name.as_bytes())?;
                let value = header_value(&value)?;
                with_turn(&this.cell, |t| {
                    read_only(t.phase)?;
                    t.headers.append(name, value);
                    Ok(())
                })
            },
        );
        methods.add_method("remove_header", |_, this, name: mlua::LuaString| {
            let name = header_name(&name.as_bytes())?;
            with_turn(&this.cell, |t| {
                read_only(t.phase)?;
                t.headers.remove(&name);
                Ok(())
            })
        });
        methods.add_method("set_path", |_, this, path: String| {
            with_turn(&this.cell, |t| {
                read_only(t.phase)?;
                set_uri(&mut t.uri, Some(&path), None)
            })
        });
        methods.add_method("set_query", |_, this, query: String| {
            with_turn(&this.cell, |t| {
                read_only(t.phase)?;
                let path = t.uri.path().to_owned();
                let pq = if query.is_empty() {
                    path
                } else {
                    format!("{path}?{query}")
                };
                let pq = pq
                    .parse()
                    .map_err(|_| mlua::Error::runtime(format!("{query:?} is not a valid query")))?;
                crate::pipeline::set_path_and_query(&mut t.uri, pq);
                Ok(())
            })
        });
        methods.add_method("query_param", |_, this, name: String| {
            with_turn(&this.cell, |t| {
                let v = crate::script::exec::query_param(t.uri.query().unwrap_or(""), &name);
                Ok(v.as_str().map(str::to_owned))
            })
        });
        methods.add_method("cookie", |_, this, name: String| {
            with_turn(&this.cell, |t| {
                let v = crate::script::exec::cookie(&t.headers, &name);
                Ok(v.as_str().map(str::to_owned))
            })
        });
        methods.add_meta_method(MetaMethod::Index, |_, this, key: mlua::LuaString| {
            if key.as_bytes().as_ref() == b"body" {
                return Ok(Some(this.body_fn.clone()));
            }
            Ok(None)
        });
    }
}

/// What `resp` and response objects share: status, headers, body.
pub trait RespLike: Sized + Send + 'static {
    /// Runs `f` on the response; `writing` says whether `f` changes it.
    fn with_resp<R>(
        &mut self,
        writing: bool,
        f: impl FnOnce(&mut RespData) -> mlua::Result<R>,
    ) -> mlua::Result<R>;
    fn body_fn(&self) -> Function;
}

fn add_resp_methods<T: RespLike, M: UserDataMethods<T>>(methods: &mut M) {
    methods.add_method_mut("header", |lua, this, name: mlua::LuaString| {
        let name = header_name(&name.as_bytes())?;
        let v = this.with_resp(false, |r| Ok(r.headers.get(&name).cloned()))?;
        opt_string(lua, v)
    });
    methods.add_method_mut("headers", |lua, this, ()| {
        this.with_resp(false, |r| headers_table(lua, &r.headers))
    });
    methods.add_method_mut(
        "set_header",
        |_, this, (name, value): (mlua::LuaString, mlua::Value)| {
            let name = header_name(&name.as_bytes())?;
            this.with_resp(true, |r| {
                if value.is_nil() {
                    r.headers.remove(&name);
                } else {
                    r.headers.insert(name, header_value(&value)?);
                }
                Ok(())
            })
        },
    );
    methods.add_method_mut(
        "add_header",
        |_, this, (name, value): (mlua::LuaString, mlua::Value)| {
            let name = header_name(&name.as_bytes())?;
            let value = header_value(&value)?;
            this.with_resp(true, |r| {
                r.headers.append(name, value);
                Ok(())
            })
        },
    );
    methods.add_method_mut("remove_header", |_, this, name: mlua::LuaString| {
        let name = header_name(&name.as_bytes())?;
        this.with_resp(true, |r| {
            r.headers.remove(&name);
            Ok(())
        })
    });
    methods.add_method_mut("set_status", |_, this, status: i64| {
        let status = status_code(status)?;
        this.with_resp(true, |r| {
            r.status = status;
            Ok(())
        })
    });
    methods.add_method_mut("set_body", |_, this, body: mlua::LuaString| {
        let bytes = Bytes::copy_from_slice(&body.as_bytes());
        this.with_resp(true, |r| {
            set_body(r, bytes);
            Ok(())
        })
    });
    methods.add_meta_method_mut(MetaMethod::Index, |_, this, key: mlua::LuaString| match key
        .as_bytes()
        .as_ref()
    {
        b"body" => Ok(mlua::Value::Function(this.body_fn())),
        b"status" => this.with_resp(false, |r| {
            Ok(mlua::Value::Integer(i64::from(r.status.as_u16())))
        }),
        _ => Ok(mlua::Value::Nil),
    });
}

/// Replaces a response's body with `bytes`, fixing its framing headers.
pub fn set_body(r: &mut RespData, bytes: Bytes) {
    r.headers.remove(header::TRANSFER_ENCODING);
    r.headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    r.body = Some(ProxyBody::full(bytes));
}

/// A status code from Lua.
pub fn status_code(status: i64) -> mlua::Result<StatusCode> {
    u16::try_from(status)
        .ok()
        .filter(|s| (100..=599).contains(s))
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| mlua::Error::runtime(format!("status {status} is outside 100..=599")))
}

/// `resp`: the response of the hook running now (response and log phases).
pub struct RespHandle {
    pub cell: Arc<TurnCell>,
    pub body_fn: Function,
}

impl RespLike for RespHandle {
    fn with_resp<R>(
        &mut self,
        writing: bool,
        f: impl FnOnce(&mut RespData) -> mlua::Result<R>,
    ) -> mlua::Result<R> {
        with_turn(&self.cell, |t| {
            if writing {
                read_only(t.phase)?;
            }
            match t.resp.as_mut() {
                Some(r) => f(r),
                None => Err(mlua::Error::runtime("there is no response in this phase")),
            }
        })
    }

    fn body_fn(&self) -> Function {
        self.body_fn.clone()
    }
}

impl UserData for RespHandle {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        add_resp_methods(methods);
    }
}

/// A response object: made by `std.respond` or returned by `std.proxy.forward`.
/// Returned from `on_request`, it becomes the request's response.
pub struct LuaResponse {
    pub data: RespData,
    pub guard: Option<InflightGuard>,
    pub upstream: Option<Arc<str>>,
    pub body_fn: Function,
}

impl RespLike for LuaResponse {
    fn with_resp<R>(
        &mut self,
        _writing: bool,
        f: impl FnOnce(&mut RespData) -> mlua::Result<R>,
    ) -> mlua::Result<R> {
        f(&mut self.data)
    }

    fn body_fn(&self) -> Function {
        self.body_fn.clone()
    }
}

impl UserData for LuaResponse {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        add_resp_methods(methods);
    }
}

/// `ctx`: the request's context, the same one pcmod reads as `$ctx.NAME`.
pub struct CtxHandle {
    pub cell: Arc<TurnCell>,
    /// pcmod's `$ctx` names -> slots.
    pub slots: Arc<std::collections::HashMap<Arc<str>, usize>>,
}

impl UserData for CtxHandle {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(MetaMethod::Index, |lua, this, key: String| {
            let v = with_turn(&this.cell, |t| {
                Ok(match this.slots.get(key.as_str()) {
                    Some(&slot) => t.ctx.slots.get(slot).cloned().unwrap_or(Value::Nil),
                    None => t
                        .ctx
                        .extra
                        .iter()
                        .find(|(k, _)| **k == *key)
                        .map_or(Value::Nil, |(_, v)| v.clone()),
                })
            })?;
            convert::to_lua(lua, &v)
        });
        methods.add_meta_method(
            MetaMethod::NewIndex,
            |_, this, (key, value): (String, mlua::Value)| {
                let v = convert::from_lua(&value, &format!("ctx.{key}"))
                    .map_err(mlua::Error::runtime)?;
                with_turn(&this.cell, |t| {
                    read_only(t.phase)?;
                    match this.slots.get(key.as_str()) {
                        Some(&slot) => {
                            if let Some(s) = t.ctx.slots.get_mut(slot) {
                                *s = v;
                            }
                        }
                        None => match t.ctx.extra.iter_mut().find(|(k, _)| **k == *key) {
                            Some((_, s)) => *s = v,
                            None => t.ctx.extra.push((Arc::from(key.as_str()), v)),
                        },
                    }
                    Ok(())
                })
            },
        );
    }
}
