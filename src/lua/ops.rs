//! What a Lua hook can wait on. A function that waits (`std.proxy.forward`,
//! `std.http.request`, `req:body()`, `resp:body()`) only *describes* the operation
//! ([`Op`]) and yields it; the hook driver runs it here with the request's turn in
//! hand, while the worker serves other requests, then resumes the hook with the
//! [`Reply`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Uri, Version};
use http_body_util::BodyExt;
use mlua::{AnyUserData, UserData};

use super::handles::{LuaResponse, RespData, Turn};
use crate::config::PoolConfig;
use crate::http::ProxyBody;
use crate::pipeline::ClientFault;
use crate::script::value::Value;
use crate::upstream::client;
use crate::upstream::connect::Endpoint;
use crate::upstream::InflightGuard;

/// An operation a hook waits on.
pub enum Op {
    /// `req:body()`: read the whole request body (and keep it for the upstream).
    ReqBody,
    /// `resp:body()` in the response phase.
    RespBody,
    /// `body()` of a response object.
    OwnBody(AnyUserData),
    /// `std.proxy.forward`.
    Forward {
        upstream: Option<String>,
        timeout: Option<Duration>,
        retries: Option<u32>,
    },
    /// `std.http.request`.
    Http(Box<HttpCall>),
}

/// The userdata a waiting function yields.
pub struct PendingOp(pub Op);

impl UserData for PendingOp {}

/// What the hook is resumed with.
pub enum Reply {
    Bytes(Bytes),
    Response {
        data: RespData,
        guard: Option<InflightGuard>,
        upstream: Option<Arc<str>>,
        /// How long its `body()` may wait.
        body_timeout: Duration,
        /// A `101` to an upgrade: the upstream's half of the switch.
        switched: Option<Box<crate::proxy::upgrade::Switched>>,
    },
    /// `std.http.request`'s `{status, headers, body}`.
    Http {
        status: u16,
        /// Values as received (bytes: a value may hold obs-text).
        headers: Vec<(String, Vec<u8>)>,
        body: Bytes,
    },
}

/// Runs `op`; `Err` is the message the hook's call raises.
pub async fn run(op: Op, turn: &mut Turn) -> Result<Reply, String> {
    let limit = turn.call.generation.config.server.limits.max_body;
    match op {
        Op::ReqBody => {
            let timeout = request_body_timeout(turn);
            let Some(body) = turn.body.as_mut() else {
                return Err("req:body() is available in the request phase only".into());
            };
            let taken = std::mem::replace(body, ProxyBody::Empty);
            match collect(crate::http::body::patient(taken, timeout), limit).await {
                Ok(bytes) => {
                    *body = ProxyBody::full(bytes.clone());
                    Ok(Reply::Bytes(bytes))
                }
                Err(e) => {
                    // What was read is gone: the request cannot go on, whatever the
                    // hook does with the error.
                    let message = e.to_string();
                    turn.body_failed = Some((e.client_fault(), message.clone()));
                    Err(message)
                }
            }
        }
        Op::RespBody => {
            let timeout = response_timeout(turn);
            let Some(body) = turn.resp.as_mut().and_then(|r| r.body.as_mut()) else {
                return Err("resp:body() is available in the response phase only".into());
            };
            let taken = std::mem::replace(body, ProxyBody::Empty);
            let (read, kept) = collect_within(taken, limit, timeout).await;
            *body = kept;
            read.map(Reply::Bytes).map_err(|e| {
                let message = format!("resp:body(): {e}");
                if let Some(r) = turn.resp.as_mut() {
                    r.lost = Some(message.clone());
                }
                message
            })
        }
        Op::OwnBody(ud) => {
            let (taken, timeout) = {
                let mut r = ud.borrow_mut::<LuaResponse>().map_err(|e| e.to_string())?;
                (r.data.body.take(), r.body_timeout)
            };
            let (read, kept) = match taken {
                Some(body) => {
                    let timeout = timeout.unwrap_or_else(|| response_timeout(turn));
                    collect_within(body, limit, timeout).await
                }
                None => (Ok(Bytes::new()), ProxyBody::Empty),
            };
            let mut r = ud.borrow_mut::<LuaResponse>().map_err(|e| e.to_string())?;
            r.data.body = Some(kept);
            read.map(Reply::Bytes).map_err(|e| {
                let message = format!("body(): {e}");
                r.data.lost = Some(message.clone());
                message
            })
        }
        Op::Forward {
            upstream,
            timeout,
            retries,
        } => forward(turn, upstream, timeout, retries).await,
        Op::Http(call) => http_request(*call, turn, limit).await,
    }
}

/// The `response_timeout` of the turn's upstream set, or the default one when there
/// is none.
fn response_timeout(turn: &Turn) -> Duration {
    let name = turn.upstream.as_deref();
    turn.call
        .generation
        .upstreams
        .sets
        .iter()
        .find(|s| Some(s.name()) == name)
        .map_or(crate::config::DEFAULT_RESPONSE_TIMEOUT, |s| {
            s.config.response_timeout
        })
}

/// How long the request body may make no progress while `req:body()` reads it: the
/// `response_timeout` of the upstream the request goes to, as when that upstream's
/// client sends it (then `408`); `server.timeouts.idle` when it goes to none (no
/// route matched), as for a body the admin API reads.
fn request_body_timeout(turn: &Turn) -> Duration {
    let generation = &turn.call.generation;
    let name = turn.upstream.as_deref();
    generation
        .upstreams
        .sets
        .iter()
        .find(|s| Some(s.name()) == name)
        .map_or(generation.config.server.timeouts.idle, |s| {
            s.config.response_timeout
        })
}

/// Reads a response's whole body within `timeout` (an upstream that sends its head and
/// then stalls must not hold the hook for good). Returns what was read, and what the
/// response's body is now: the bytes read, or — when the read failed and what was
/// read is gone — a body that fails as it is sent. The caller marks the response's
/// body lost: unless the hook sets a new body, the response becomes a `502` when the
/// hook ends (a body that fails before the head is written would send the client
/// nothing at all); the failing body is only what is left if it went out anyway.
async fn collect_within(
    body: ProxyBody,
    limit: u64,
    timeout: Duration,
) -> (Result<Bytes, ReadError>, ProxyBody) {
    let read = match tokio::time::timeout(timeout, collect(body, limit)).await {
        Ok(read) => read,
        Err(_) => Err(ReadError::TimedOut(timeout)),
    };
    match read {
        Ok(bytes) => {
            let kept = ProxyBody::full(bytes.clone());
            (Ok(bytes), kept)
        }
        Err(e) => {
            let kept = broken_body(e.to_string());
            (Err(e), kept)
        }
    }
}

/// A body that fails with `message` when it is read.
fn broken_body(message: String) -> ProxyBody {
    ProxyBody::Boxed(http_body_util::combinators::BoxBody::new(Broken(Some(
        message,
    ))))
}

/// See [`broken_body`].
struct Broken(Option<String>);

impl http_body::Body for Broken {
    type Data = Bytes;
    type Error = crate::http::body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.take().map(|m| Err(m.into())))
    }
}

/// Why reading a whole body failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the whole body did not arrive within {0:?}")]
    TimedOut(Duration),
    /// The client's request body made no progress for this long.
    #[error("the request body made no progress within {0:?}")]
    Stalled(Duration),
    #[error("the body is over server.limits.max_body ({0} bytes)")]
    TooLarge(u64),
    /// `client`: what was wrong with it, when it is the client's request body.
    #[error("reading the body failed: {reason}")]
    Failed {
        reason: String,
        client: Option<crate::http::body::BodyFault>,
    },
}

impl ReadError {
    /// The answer the client gets when this was its request body.
    pub fn client_fault(&self) -> ClientFault {
        match self {
            ReadError::TooLarge(limit) => ClientFault::BodyTooLarge { limit: *limit },
            ReadError::TimedOut(_) => ClientFault::BadBody("request body timed out"),
            ReadError::Stalled(timeout) => ClientFault::Stalled { timeout: *timeout },
            ReadError::Failed { client, .. } => match client {
                Some(crate::http::body::BodyFault::Gone(reason)) => ClientFault::Gone(reason),
                Some(crate::http::body::BodyFault::Malformed(reason)) => {
                    ClientFault::BadBody(reason)
                }
                None => ClientFault::BadBody("request body could not be read"),
            },
        }
    }
}

/// Reads a whole body, at most `limit` bytes.
async fn collect<B>(body: B, limit: u64) -> Result<Bytes, ReadError>
where
    B: http_body::Body<Data = Bytes, Error = crate::http::body::BoxError>,
{
    let limited = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => {
            if let Some(timeout) = crate::http::body::body_stalled(&*e) {
                return Err(ReadError::Stalled(timeout));
            }
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return Err(ReadError::TooLarge(limit));
            }
            if let Some(limit) = crate::http::body::body_too_large(&*e) {
                return Err(ReadError::TooLarge(limit));
            }
            Err(ReadError::Failed {
                reason: e.to_string(),
                client: crate::http::body::client_body_error(&*e),
            })
        }
    }
}

async fn forward(
    turn: &mut Turn,
    upstream: Option<String>,
    timeout: Option<Duration>,
    retries: Option<u32>,
) -> Result<Reply, String> {
    let call = Arc::clone(&turn.call);
    let generation = &call.generation;
    let name = upstream
        .or_else(|| turn.route.as_deref().map(str::to_owned))
        .ok_or("std.proxy.forward: the route names no upstream; pass one")?;
    let index = generation
        .upstreams
        .index_of(&name)
        .ok_or_else(|| format!("std.proxy.forward: no upstream named {name:?}"))?;
    let name: Arc<str> = Arc::from(name.as_str());
    let mut parts = Request::new(()).into_parts().0;
    parts.method = turn.method.clone();
    parts.uri = turn.uri.clone();
    parts.headers = turn.headers.clone();
    parts.version = Version::HTTP_11;
    let body = match turn.body.as_mut() {
        None => ProxyBody::Empty,
        // Read by `req:body()`: kept, for `req:body()` and another forward.
        Some(ProxyBody::Full(Some(bytes))) => ProxyBody::Full(Some(bytes.clone())),
        Some(_) if turn.body_failed.is_some() => {
            return Err("std.proxy.forward: the request body could not be read (req:body() failed); the request fails".into())
        }
        Some(_) if turn.body_forwarded => {
            return Err("std.proxy.forward: the request body went upstream with an earlier std.proxy.forward and cannot be sent again (read it with req:body() first to forward it more than once)".into())
        }
        Some(b) => {
            let body = std::mem::replace(b, ProxyBody::Empty);
            turn.body_forwarded = !http_body::Body::is_end_stream(&body);
            body
        }
    };
    let host = turn.headers.get(header::HOST).cloned();
    // `req.upstream` names the set tried, also when the forward fails (a hook
    // reporting the failure names the set that failed, not the route's).
    turn.upstream = Some(Arc::clone(&name));
    let out = crate::proxy::Outbound {
        generation,
        worker: &call.worker,
        conn: &call.conn,
        client_ip: turn.info.client_ip,
        // The script reads the response.
        head_unread: false,
        waiting: None,
    };
    let req = Box::new(Request::from_parts(parts, body));
    // An upgrade the client waits for goes as the request path sends one (it went as
    // a plain request, `Upgrade` stripped, and the client got the upstream's refusal):
    // the hook gets the `101`, and the tunnel opens if the request is answered with it.
    let upgrade = if call.client_upgrade {
        crate::proxy::upgrade::protocol(&turn.headers)
    } else {
        None
    };
    let sent = match upgrade {
        Some(protocol) => {
            let timing = (timeout, retries);
            let sending = crate::proxy::upgrade::send(out, index, req, host, protocol, timing);
            Box::pin(sending).await
        }
        None => crate::proxy::send_upstream(out, index, req, host, timeout, retries).await,
    };
    let body_timeout = timeout.unwrap_or(generation.upstreams.sets[index].config.response_timeout);
    match sent {
        Ok((mut resp, guard)) => {
            let switched = crate::proxy::upgrade::Switched::take(&mut resp).map(Box::new);
            let (parts, body) = resp.into_parts();
            Ok(Reply::Response {
                data: RespData {
                    status: parts.status,
                    headers: parts.headers,
                    body: Some(body),
                    lost: None,
                },
                guard: Some(guard),
                upstream: Some(name),
                body_timeout,
                switched,
            })
        }
        Err(e) => {
            let message = format!("std.proxy.forward: {e}");
            turn.forward_failed = Some((message.clone(), e));
            Err(message)
        }
    }
}

/// `std.http.request`'s checked arguments.
pub struct HttpCall {
    pub method: Method,
    pub url: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub timeout: Duration,
}

impl HttpCall {
    /// From the bound arguments `url, method, headers, body, timeout`, the body as
    /// its exact bytes (see `bind::bind_args_with_bytes`).
    pub fn from_args(args: &[Value], body: Option<Bytes>) -> Result<Self, String> {
        let url_text = args.first().and_then(Value::as_str).unwrap_or("");
        let url: Uri = url_text
            .parse()
            .map_err(|_| format!("{url_text:?} is not a valid URL"))?;
        match url.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err("https URLs are not supported yet (plain http only)".into())
            }
            _ => return Err(format!("{url_text:?} must be an http:// URL")),
        }
        let Some(authority) = url.authority() else {
            return Err(format!("{url_text:?} has no host"));
        };
        if authority.as_str().contains('@') {
            // Sent as they are, they would end up in `Host`.
            return Err(
                "the URL has credentials (user:password@); send them in an authorization header"
                    .into(),
            );
        }
        let method_text = args.get(1).and_then(Value::as_str).unwrap_or("GET");
        let method = Method::from_bytes(method_text.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("{method_text:?} is not a valid method"))?;
        let mut headers = HeaderMap::new();
        if let Some(Value::Map(map)) = args.get(2) {
            for (k, v) in map.iter() {
                let name = HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| format!("{k:?} is not a valid header name"))?;
                let value = HeaderValue::from_str(&v.to_string())
                    .map_err(|_| format!("the value of {k:?} is not a valid header value"))?;
                headers.append(name, value);
            }
        }
        let body = body.unwrap_or_default();
        let timeout = match args.get(4) {
            Some(Value::Duration(d)) => *d,
            _ => Duration::from_secs(5),
        };
        Ok(HttpCall {
            method,
            url,
            headers,
            body,
            timeout,
        })
    }
}

/// Connect timeout of outbound calls.
const OUTBOUND_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Pool settings of outbound calls' connections (pooled per worker, shared with plain
/// HTTP/1.1 upstream connections to the same address): those of the upstream set that
/// has the address as a server, so that a callout to an app's own server keeps (and
/// never evicts) its connections by the set's rules; else 16 idle for 30 s.
fn pool_for(generation: &crate::generation::Generation, addr: std::net::SocketAddr) -> PoolConfig {
    generation
        .upstreams
        .serving(addr)
        .find(|s| !s.config.http2 && !s.config.tls)
        .map_or(
            PoolConfig {
                max_idle_per_server: 16,
                idle_timeout: crate::upstream::pool::OUTBOUND_IDLE_TIMEOUT,
            },
            |s| s.config.pool.clone(),
        )
}

async fn http_request(call: HttpCall, turn: &Turn, limit: u64) -> Result<Reply, String> {
    let fail = |m: String| format!("std.http.request {}: {m}", call.url);
    let host = call.url.host().unwrap_or("").to_owned();
    let port = call.url.port_u16().unwrap_or(80);
    let pool = Arc::clone(&turn.call.worker.pool);
    // The call's timeout bounds the whole call (below) and says which part was late;
    // the client's own timeouts (for the head, and then between body bytes) are a
    // second longer, a backstop only: at the same deadline, either could fire first.
    let head_came = std::sync::atomic::AtomicBool::new(false);
    let backstop = call.timeout.saturating_add(Duration::from_secs(1));
    let work = async {
        let addr = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
            .await
            .map_err(|e| fail(format!("cannot resolve {host}: {e}")))?
            .next()
            .ok_or_else(|| fail(format!("{host} has no address")))?;
        let mut req = Request::new(ProxyBody::full(call.body.clone()));
        *req.method_mut() = call.method.clone();
        *req.uri_mut() = call
            .url
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .map_err(|_| fail("bad path".into()))?;
        *req.headers_mut() = call.headers.clone();
        // From the host and the port as written, never from the whole authority.
        let host_header = match call.url.port() {
            Some(p) => format!("{host}:{}", p.as_str()),
            None => host.clone(),
        };
        if let Ok(v) = HeaderValue::from_str(&host_header) {
            req.headers_mut().entry(header::HOST).or_insert(v);
        }
        if !call.body.is_empty() {
            req.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(call.body.len()));
        }
        let endpoint = Arc::new(Endpoint::plain(
            addr,
            OUTBOUND_CONNECT_TIMEOUT,
            pool_for(&turn.call.generation, addr),
        ));
        let resp = client::send(&pool, &endpoint, backstop, Box::new(req), None)
            .await
            .map_err(|e| fail(e.describe(backstop)))?;
        head_came.store(true, std::sync::atomic::Ordering::Relaxed);
        let status = resp.status();
        let mut headers = Vec::with_capacity(resp.headers().keys_len());
        for name in resp.headers().keys() {
            let mut joined = Vec::new();
            for (i, v) in resp.headers().get_all(name).iter().enumerate() {
                if i > 0 {
                    joined.extend_from_slice(b", ");
                }
                joined.extend_from_slice(v.as_bytes());
            }
            headers.push((name.as_str().to_owned(), joined));
        }
        let body = collect(ProxyBody::Upstream(resp.into_body()), limit)
            .await
            .map_err(|e| fail(e.to_string()))?;
        Ok(Reply::Http {
            status: status.as_u16(),
            headers,
            body,
        })
    };
    match tokio::time::timeout(call.timeout, work).await {
        Ok(r) => r,
        Err(_) if head_came.load(std::sync::atomic::Ordering::Relaxed) => Err(fail(format!(
            "no complete answer within {:?} (the head came, not all of the body)",
            call.timeout
        ))),
        Err(_) => Err(fail(format!("no response within {:?}", call.timeout))),
    }
}
