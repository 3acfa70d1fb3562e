//! `req`, `resp`, `ctx` and response objects: narrow UserData over the request in
//! flight. A hook call moves the request's parts out of the pipeline's `Exchange`
//! into a [`Turn`] (moves, not copies), the VM's one `req`/`resp`/`ctx` handle reads
//! and changes the turn of the hook running now, and the parts move back when the
//! hook returns or waits. No table of headers is built unless `headers()` asks.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri};
use mlua::{AnyUserData, Function, Lua, LuaString, MetaMethod, Table, UserData, UserDataMethods};
use parking_lot::Mutex;

use super::convert;
use super::LuaCall;
use crate::http::params;
use crate::http::path::PathRules;
use crate::http::ProxyBody;
use crate::pipeline::{ClientFault, Ctx, Exchange, RequestInfo};
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
    /// Why the body is gone: a `body()` failed and what it read is lost. Unless
    /// `set_body` gives a new body, the response becomes the proxy's `502` when the
    /// hook ends (see `run::replace_lost_body`).
    pub lost: Option<String>,
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
    pub response_headers: crate::pipeline::ResponseHeaders,
    /// `req.upstream`: the set the request is routed to, then the one a
    /// `std.proxy.forward` used (or tried).
    pub upstream: Option<Arc<str>>,
    /// The set the request came to the hook routed to: a `std.proxy.forward` that
    /// names none goes there, whatever an earlier forward in the hook used.
    pub route: Option<Arc<str>>,
    /// The last response the hook made, by `std.respond` or `std.proxy.forward` (it
    /// answers even if the hook does not return it).
    pub answer: Option<AnyUserData>,
    /// Every response `std.proxy.forward` returned in this hook call: those the hook
    /// does not answer with are closed when it ends ([`Turn::close_forwarded`]), not
    /// when Lua's GC gets to them (they hold an upstream connection and the server's
    /// in-flight count).
    pub forwarded: Vec<AnyUserData>,
    /// A `std.proxy.forward` sent the request's body (which was not in memory): it
    /// cannot be sent again.
    pub body_forwarded: bool,
    /// `req:body()` failed (over the limit, broken): the request fails with that,
    /// whatever the hook does after catching the error. With the message the
    /// script's call raised (to find its position if the hook ends with it).
    pub body_failed: Option<(ClientFault, String)>,
    /// The last `std.proxy.forward` that got no response: the message the script
    /// saw, and the failure. A hook that ends with that error, uncaught, answers as
    /// the failure would (502, 503, 504), not 500.
    pub forward_failed: Option<(String, crate::http::ProxyError)>,
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
                lost: None,
            }),
            // Moved, not cloned: a clone would make the request id now (ids are made
            // on first use, and clones share them).
            info: std::mem::replace(
                ex.info,
                RequestInfo {
                    id: crate::http::RequestId::stand_in(),
                    client_ip: ex.info.client_ip,
                    scheme: ex.info.scheme,
                    path_rules: ex.info.path_rules,
                },
            ),
            ctx: std::mem::take(ex.ctx),
            response_headers: std::mem::take(ex.response_headers),
            upstream: ex.upstream.cloned(),
            route: ex.upstream.cloned(),
            answer: None,
            forwarded: Vec::new(),
            body_forwarded: false,
            body_failed: None,
            forward_failed: None,
            thread: None,
        }
    }

    /// Closes the responses `std.proxy.forward` returned that the hook did not answer
    /// with (the one it did was taken already): their upstream bodies are dropped, which
    /// closes the connections, and the servers' in-flight counts go down.
    pub fn close_forwarded(&mut self) {
        for ud in self.forwarded.drain(..) {
            drop(ud.take::<LuaResponse>());
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
        *ex.info = self.info;
        *ex.ctx = self.ctx;
        *ex.response_headers = self.response_headers;
    }
}

/// Where the turn of the hook running now is.
pub type TurnCell = Mutex<Option<Box<Turn>>>;

/// Runs `f` on the running hook's turn.
pub fn with_turn<R>(
    cell: &TurnCell,
    f: impl FnOnce(&mut Turn) -> mlua::Result<R>,
) -> mlua::Result<R> {
    let mut guard = cell.lock();
    match guard.as_mut() {
        Some(turn) => f(turn),
        None => Err(mlua::Error::runtime(
            "no request is running: req, resp, ctx and the std functions that use the request work only while a hook runs (not at a chunk's top level)",
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

fn set_uri(
    uri: &mut Uri,
    path: Option<&str>,
    query: Option<&str>,
    rules: PathRules,
) -> mlua::Result<()> {
    if let Some(p) = path.filter(|p| p.contains(['?', '#'])) {
        return Err(mlua::Error::runtime(format!(
            "{p:?}: a path has no '?' or '#': use req:set_query for the query"
        )));
    }
    crate::pipeline::set_script_target(uri, path, query, rules).map_err(mlua::Error::runtime)
}

/// Fields of `req` (the editor definitions are checked against these lists).
pub const REQ_FIELDS: &[&str] = &[
    "method",
    "path",
    "query",
    "host",
    "scheme",
    "client_ip",
    "id",
    "upstream",
];
/// Methods of `req`.
pub const REQ_METHODS: &[&str] = &[
    "header",
    "headers",
    "set_header",
    "add_header",
    "remove_header",
    "set_path",
    "set_query",
    "query_param",
    "cookie",
    "body",
];
/// Fields of `resp` and of response objects.
pub const RESP_FIELDS: &[&str] = &["status"];
/// Methods of `resp` and of response objects.
pub const RESP_METHODS: &[&str] = &[
    "header",
    "headers",
    "set_header",
    "add_header",
    "remove_header",
    "set_status",
    "set_body",
    "body",
];

/// A header value as a Lua string, or nil.
fn header_text(lua: &Lua, v: Option<&HeaderValue>) -> mlua::Result<mlua::Value> {
    bytes_or_nil(lua, v.map(HeaderValue::as_bytes))
}

/// Bytes as a Lua string, or nil.
fn bytes_or_nil(lua: &Lua, v: Option<&[u8]>) -> mlua::Result<mlua::Value> {
    match v {
        Some(v) => Ok(mlua::Value::String(lua.create_string(v)?)),
        None => Ok(mlua::Value::Nil),
    }
}

/// A header name from Lua for reading (an invalid name simply matches nothing).
fn lookup_name(name: &LuaString) -> String {
    String::from_utf8_lossy(&name.as_bytes()).into_owned()
}

/// Sets (or with `append`, adds) a header; a nil value removes it.
fn put_header(
    headers: &mut HeaderMap,
    name: HeaderName,
    value: &mlua::Value,
    append: bool,
) -> mlua::Result<()> {
    if value.is_nil() {
        if !append {
            headers.remove(&name);
        }
        return Ok(());
    }
    let v = header_value(value)?;
    // A second `Host` is one the upstream may read instead of the first (RFC 9112 3.2
    // answers 400 to it): `add_header` of `host` replaces it.
    if append && name != header::HOST {
        headers.append(name, v);
    } else {
        headers.insert(name, v);
    }
    Ok(())
}

/// Adds method `name` of `object` (`req`, `resp`, `response`) whose errors name it as
/// std functions name themselves: `req:set_header: "bad name" is not a valid header
/// name`. The name goes in only when there is an error: a call costs what it did.
fn add_named<T, M, A, R, F>(methods: &mut M, object: &'static str, name: &'static str, f: F)
where
    M: UserDataMethods<T>,
    A: mlua::FromLuaMulti,
    R: mlua::IntoLuaMulti,
    F: Fn(&Lua, &T, A) -> mlua::Result<R> + mlua::MaybeSend + 'static,
{
    methods.add_method(name, move |lua, this, args| {
        f(lua, this, args).map_err(|e| named(object, name, e))
    });
}

/// [`add_named`] for a method that changes its object.
fn add_named_mut<T, M, A, R, F>(methods: &mut M, object: &'static str, name: &'static str, mut f: F)
where
    M: UserDataMethods<T>,
    A: mlua::FromLuaMulti,
    R: mlua::IntoLuaMulti,
    F: FnMut(&Lua, &mut T, A) -> mlua::Result<R> + mlua::MaybeSend + 'static,
{
    methods.add_method_mut(name, move |lua, this, args| {
        f(lua, this, args).map_err(|e| named(object, name, e))
    });
}

/// `e` with `object:method: ` before its message (a memory error passes as it is).
fn named(object: &str, method: &str, e: mlua::Error) -> mlua::Error {
    match e {
        mlua::Error::RuntimeError(m) => {
            mlua::Error::RuntimeError(format!("{object}:{method}: {m}"))
        }
        other => other,
    }
}

/// `req`: the request of the hook running now. One per VM; its methods read and
/// change the running hook's turn.
pub struct ReqHandle {
    pub cell: Arc<TurnCell>,
}

/// `resp`: the response of the hook running now (response and log phases).
pub struct RespHandle {
    pub cell: Arc<TurnCell>,
}

impl UserData for ReqHandle {
    // Methods only (no field getters): mlua then makes `__index` a plain table and a
    // method call is one table lookup plus the Rust call. Fields and `body` are added
    // to that table by `finish_handle`.
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        add_named(methods, "req", "header", |lua, this, name: String| {
            with_turn(&this.cell, |t| {
                header_text(lua, t.headers.get(name.as_str()))
            })
        });
        add_named(methods, "req", "headers", |lua, this, ()| {
            with_turn(&this.cell, |t| headers_table(lua, &t.headers))
        });
        add_named(
            methods,
            "req",
            "set_header",
            |_, this, (name, value): (String, mlua::Value)| {
                let name = header_name(name.as_bytes())?;
                with_turn(&this.cell, |t| {
                    read_only(t.phase)?;
                    put_header(&mut t.headers, name, &value, false)
                })
            },
        );
        add_named(
            methods,
            "req",
            "add_header",
            |_, this, (name, value): (String, mlua::Value)| {
                let name = header_name(name.as_bytes())?;
                with_turn(&this.cell, |t| {
                    read_only(t.phase)?;
                    put_header(&mut t.headers, name, &value, true)
                })
            },
        );
        add_named(methods, "req", "remove_header", |_, this, name: String| {
            let name = header_name(name.as_bytes())?;
            with_turn(&this.cell, |t| {
                read_only(t.phase)?;
                t.headers.remove(&name);
                Ok(())
            })
        });
        add_named(methods, "req", "set_path", |_, this, path: String| {
            with_turn(&this.cell, |t| {
                read_only(t.phase)?;
                set_uri(&mut t.uri, Some(&path), None, t.info.path_rules)
            })
        });
        add_named(methods, "req", "set_query", |_, this, query: String| {
            with_turn(&this.cell, |t| {
                read_only(t.phase)?;
                set_uri(&mut t.uri, None, Some(&query), t.info.path_rules)
            })
        });
        // Bytes in and out: a Lua string is bytes, and a decoded `%ff` or a Latin-1
        // cookie is the byte itself (as OpenResty's `get_uri_args` and
        // `ngx.var.cookie_*`), not pcmod's text.
        add_named(
            methods,
            "req",
            "query_param",
            |lua, this, name: LuaString| {
                let name = name.as_bytes();
                with_turn(&this.cell, |t| {
                    let query = t.uri.query().unwrap_or("");
                    bytes_or_nil(
                        lua,
                        params::query_param(query, |k| k == &name[..]).as_deref(),
                    )
                })
            },
        );
        add_named(methods, "req", "cookie", |lua, this, name: LuaString| {
            let name = name.as_bytes();
            with_turn(&this.cell, |t| {
                bytes_or_nil(lua, params::cookie(&t.headers, |k| k == &name[..]))
            })
        });
    }
}

impl UserData for RespHandle {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        add_named(methods, "resp", "header", |lua, this, name: String| {
            with_resp(&this.cell, false, |r| {
                header_text(lua, r.headers.get(name.as_str()))
            })
        });
        add_named(methods, "resp", "headers", |lua, this, ()| {
            with_resp(&this.cell, false, |r| headers_table(lua, &r.headers))
        });
        add_named(
            methods,
            "resp",
            "set_header",
            |_, this, (name, value): (String, mlua::Value)| {
                let name = header_name(name.as_bytes())?;
                with_resp(&this.cell, true, |r| {
                    put_header(&mut r.headers, name, &value, false)
                })
            },
        );
        add_named(
            methods,
            "resp",
            "add_header",
            |_, this, (name, value): (String, mlua::Value)| {
                let name = header_name(name.as_bytes())?;
                with_resp(&this.cell, true, |r| {
                    put_header(&mut r.headers, name, &value, true)
                })
            },
        );
        add_named(methods, "resp", "remove_header", |_, this, name: String| {
            let name = header_name(name.as_bytes())?;
            with_resp(&this.cell, true, |r| {
                r.headers.remove(&name);
                Ok(())
            })
        });
        add_named(methods, "resp", "set_status", |_, this, status: i64| {
            let status = status_code(status).map_err(mlua::Error::runtime)?;
            with_resp(&this.cell, true, |r| {
                r.status = status;
                Ok(())
            })
        });
        add_named(methods, "resp", "set_body", |_, this, body: LuaString| {
            let bytes = Bytes::copy_from_slice(&body.as_bytes());
            with_resp(&this.cell, true, |r| {
                set_body(r, bytes);
                Ok(())
            })
        });
    }
}

/// Gives a handle's method table `body` (a Lua function, because it waits) and a
/// metatable that serves the fields through `fields(key)`.
fn finish_handle(
    lua: &Lua,
    handle: &AnyUserData,
    body: &Function,
    fields: Function,
) -> mlua::Result<()> {
    let methods: Table = handle.metatable()?.get("__index")?;
    methods.raw_set("body", body.clone())?;
    let meta = lua.create_table()?;
    meta.raw_set("__index", fields)?;
    meta.raw_set("__metatable", false)?;
    methods.set_metatable(Some(meta))?;
    Ok(())
}

/// The VM's `req` handle.
pub fn req_handle(lua: &Lua, cell: &Arc<TurnCell>, body: &Function) -> mlua::Result<AnyUserData> {
    let handle = lua.create_userdata(ReqHandle {
        cell: Arc::clone(cell),
    })?;
    let c = Arc::clone(cell);
    let fields = lua.create_function(move |_, (_, key): (mlua::Value, String)| {
        with_turn(&c, |t| {
            Ok(match key.as_str() {
                "method" => Some(t.method.as_str().to_owned()),
                "path" => Some(t.uri.path().to_owned()),
                "query" => t.uri.query().map(str::to_owned),
                "host" => t
                    .headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .or_else(|| t.uri.host())
                    .map(str::to_owned),
                "scheme" => Some(t.info.scheme.to_owned()),
                "client_ip" => Some(t.info.client_ip.to_string()),
                "id" => Some(t.info.id.as_str().to_owned()),
                "upstream" => t.upstream.as_deref().map(str::to_owned),
                _ => None,
            })
        })
    })?;
    finish_handle(lua, &handle, body, fields)?;
    Ok(handle)
}

/// The VM's `resp` handle.
pub fn resp_handle(lua: &Lua, cell: &Arc<TurnCell>, body: &Function) -> mlua::Result<AnyUserData> {
    let handle = lua.create_userdata(RespHandle {
        cell: Arc::clone(cell),
    })?;
    let c = Arc::clone(cell);
    let fields = lua.create_function(move |_, (_, key): (mlua::Value, String)| {
        if key != "status" {
            return Ok(None);
        }
        with_resp(&c, false, |r| Ok(Some(i64::from(r.status.as_u16()))))
    })?;
    finish_handle(lua, &handle, body, fields)?;
    Ok(handle)
}

/// Runs `f` on the running hook's response.
fn with_resp<R>(
    cell: &TurnCell,
    writing: bool,
    f: impl FnOnce(&mut RespData) -> mlua::Result<R>,
) -> mlua::Result<R> {
    with_turn(cell, |t| {
        if writing {
            read_only(t.phase)?;
        }
        match t.resp.as_mut() {
            Some(r) => f(r),
            None => Err(mlua::Error::runtime("there is no response in this phase")),
        }
    })
}

/// Methods of response objects (userdata that own their response).
fn add_object_methods<M: UserDataMethods<LuaResponse>>(methods: &mut M) {
    add_named(
        methods,
        "response",
        "header",
        |lua, this, name: LuaString| {
            let name = lookup_name(&name);
            header_text(lua, this.data.headers.get(name.as_str()))
        },
    );
    add_named(methods, "response", "headers", |lua, this, ()| {
        headers_table(lua, &this.data.headers)
    });
    add_named_mut(
        methods,
        "response",
        "set_header",
        |_, this, (name, value): (LuaString, mlua::Value)| {
            let name = header_name(&name.as_bytes())?;
            put_header(&mut this.data.headers, name, &value, false)
        },
    );
    add_named_mut(
        methods,
        "response",
        "add_header",
        |_, this, (name, value): (LuaString, mlua::Value)| {
            let name = header_name(&name.as_bytes())?;
            put_header(&mut this.data.headers, name, &value, true)
        },
    );
    add_named_mut(
        methods,
        "response",
        "remove_header",
        |_, this, name: LuaString| {
            let name = header_name(&name.as_bytes())?;
            this.data.headers.remove(&name);
            Ok(())
        },
    );
    add_named_mut(methods, "response", "set_status", |_, this, status: i64| {
        this.data.status = status_code(status).map_err(mlua::Error::runtime)?;
        Ok(())
    });
    add_named_mut(
        methods,
        "response",
        "set_body",
        |_, this, body: LuaString| {
            set_body(&mut this.data, Bytes::copy_from_slice(&body.as_bytes()));
            Ok(())
        },
    );
    methods.add_meta_method(MetaMethod::Index, |_, this, key: LuaString| {
        Ok(match key.as_bytes().as_ref() {
            b"body" => mlua::Value::Function(this.body_fn.clone()),
            b"status" => mlua::Value::Integer(i64::from(this.data.status.as_u16())),
            _ => mlua::Value::Nil,
        })
    });
}

/// Replaces a response's body with `bytes`, fixing its framing headers.
pub fn set_body(r: &mut RespData, bytes: Bytes) {
    r.headers.remove(header::TRANSFER_ENCODING);
    r.headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    r.body = Some(ProxyBody::full(bytes));
    r.lost = None;
}

/// A status code from Lua for a final response: 200..=599 (a 1xx is not an answer, and
/// written as one it would leave the client waiting for the real one).
pub fn status_code(status: i64) -> Result<StatusCode, String> {
    u16::try_from(status)
        .ok()
        .filter(|s| (200..=599).contains(s))
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| format!("status {status} is outside 200..=599"))
}

/// A response object: made by `std.respond` or returned by `std.proxy.forward`.
/// Returned from `on_request`, it becomes the request's response.
pub struct LuaResponse {
    pub data: RespData,
    pub guard: Option<InflightGuard>,
    pub upstream: Option<Arc<str>>,
    /// How long `body()` may wait for the whole body: the forward's timeout (or its
    /// upstream's `response_timeout`); `None` for a body already in memory.
    pub body_timeout: Option<std::time::Duration>,
    pub body_fn: Function,
    /// The upstream's `101` to a forwarded upgrade: the switch, which the tunnel takes
    /// if the request is answered with it (and still a `101`).
    pub switched: Option<Box<crate::proxy::upgrade::Switched>>,
}

impl UserData for LuaResponse {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        add_object_methods(methods);
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
