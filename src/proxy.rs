//! The request path, top to bottom (STYLE rule 5):
//! checks (framing, then the path put in normal form) -> route -> request phase (modules may respond or forward) -> upstream
//! request -> pick + send (+ retries on connect failure) -> response hygiene ->
//! response phase -> respond, with the log phase running when the response body is
//! finished, or when the request is dropped unanswered (`completion`).
//!
//! Owns: what happens to one parsed request. Must not touch: sockets and connection
//! lifecycle (`server`), how servers are reached (`upstream`).

pub mod completion;
pub mod phases;
pub mod route;
pub mod transport;
pub mod upgrade;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Request, Response, Uri, Version};

use crate::config::{HashKey, ServerTarget};
use crate::generation::Generation;
use crate::http::body::{body_too_large, client_body_error, BodyFault, RequestBody};
use crate::http::error::CLIENT_CLOSED_REQUEST;
use crate::http::hygiene::{self, Forwarded, Forwarding};
use crate::http::path;
use crate::http::{echo, framing, ProxyBody, ProxyError, RequestId};
use crate::pipeline::{Flow, RequestInfo};
use crate::server::conn::ConnInfo;
use crate::server::worker::WorkerCtx;
use crate::upstream::balance::{hash_bytes, PickKey};
use crate::upstream::client::SendError;
use crate::upstream::{InflightGuard, ServerState, Tried, UpstreamSet};

use transport::{Pooled, Transport};

use completion::{AccessEntry, Completion, Meter, ResponseBody};

/// The entry point for every request on every connection (from `server::h1`, or
/// from hyper for HTTP/2 and upgrades).
pub async fn handle(
    mut req: Request<RequestBody>,
    conn: Arc<ConnInfo>,
    ctx: Arc<WorkerCtx>,
    writer: Writer,
) -> Result<Response<ResponseBody>, Infallible> {
    let ambiguous_framing = conn.activity.request_started();
    // Taken before anything else reads the request: hyper keeps the client's half of
    // an upgrade in the request's extensions.
    let client_upgrade = upgrade::take(&mut req);
    // Pin the generation: this request sees one config from start to end, whatever a
    // reload does meanwhile.
    let generation = ctx.shared.generation();
    let id = RequestId::from_headers_or_new(req.headers());
    let client_ip = hygiene::client_ip(
        conn.peer.ip(),
        req.headers(),
        &generation.config.server.trusted_proxies,
    );
    let access = access_entry(&generation, &req, &id, client_ip);
    // Every line logged while the request runs carries its id, under the access line's
    // key (`request_id`).
    let span = tracing::info_span!(target: "proxycache::proxy", "request", request_id = %id);
    let mut done = Completion {
        conn: Arc::clone(&conn),
        // Until a response exists: a request dropped before it (the client left) is
        // counted and logged as nginx's 499.
        status: CLIENT_CLOSED_REQUEST,
        inflight: None,
        access,
        bytes: 0,
        script: None,
        log: None,
        meter: Meter::new(Arc::clone(&generation)),
        answered: false,
        id,
        cut: None,
    };
    let request = Arrived {
        req,
        client_ip,
        ambiguous_framing,
        client_upgrade,
        writer,
    };
    // Polled in place inside the span, not boxed and not wrapped by `instrument`:
    // on HTTP/1.1 this future lives in the connection's task (`server::h1`) and is
    // never moved; boxing it cost an allocation and a copy of a few KB per request
    // (callgrind: 25,702 -> 24,427 instructions per proxied request without).
    let result = {
        let fut = proxy(request, &generation, &conn, &ctx, &mut done);
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(|cx| {
            let _entered = span.enter();
            fut.as_mut().poll(cx)
        })
        .await
    };
    let resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            let _enter = span.enter();
            note_failure(&e, &mut done.access);
            // The pipeline holds the id it was lent (and may have made) until the end.
            e.to_response(done.request_id())
        }
    };
    done.status = resp.status();
    done.answered = true;
    if generation.pipeline.has_log_phase() {
        if let Some(state) = done.script.take() {
            done.log = Some(Box::new(phases::LogJob {
                generation: Arc::clone(&generation),
                state,
                status: resp.status(),
                response_headers: resp.headers().clone(),
            }));
        }
    }
    Ok(resp.map(|body| ResponseBody::new(body, done)))
}

/// Logs why a request failed and notes the server it failed on for the access log.
fn note_failure(e: &ProxyError, access: &mut Option<Box<AccessEntry>>) {
    if let (Some(entry), Some(server)) = (access.as_mut(), e.server()) {
        entry.server = Some(server.to_string());
    }
    if e.is_client_error() {
        tracing::debug!(target: "proxycache::proxy", error = %e, "request refused");
    } else if !e.logged() {
        tracing::warn!(target: "proxycache::proxy", error = %e, "request failed");
    }
}

/// The proxy's own answer to a request the request phase let through and no upstream
/// answered (no route, or the upstream failed: 404, 502, 503, 504): it goes through the
/// response phase of the modules that ran, as an upstream's answer would, so they can
/// add their headers to it or make an error page of it (nginx's `add_header ...
/// always`, `error_page`). Without a pipeline, the error goes back up as it is.
async fn answer_failure(
    generation: &Generation,
    done: &mut Completion,
    e: ProxyError,
) -> Result<Response<ProxyBody>, ProxyError> {
    let Some(state) = done.script.as_mut() else {
        return Err(e);
    };
    note_failure(&e, &mut done.access);
    let mut resp = e.to_response(&state.info.id);
    state.ctx.proxys_answer = true;
    phases::response_phase(generation, state, &mut resp).await?;
    Ok(resp)
}

/// What writes the response to the client, as far as its head goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// `server::h1`: writes the header map and, after it, the head an upstream
    /// response kept as received (`ResponseBody::take_raw_head`).
    TakesRawHead,
    /// hyper: writes the header map only.
    MapOnly,
}

/// A request and the facts worked out about it before routing.
struct Arrived {
    req: Request<RequestBody>,
    client_ip: std::net::IpAddr,
    /// The raw head had both Content-Length and Transfer-Encoding (which hyper hides).
    ambiguous_framing: bool,
    /// The client asked to switch protocols (WebSocket...), see `upgrade`.
    client_upgrade: Option<upgrade::ClientUpgrade>,
    writer: Writer,
}

fn access_entry(
    generation: &Generation,
    req: &Request<RequestBody>,
    id: &RequestId,
    client_ip: std::net::IpAddr,
) -> Option<Box<AccessEntry>> {
    if !generation.config.log.access
        || !tracing::enabled!(target: "proxycache::access", tracing::Level::INFO)
    {
        return None;
    }
    Some(Box::new(AccessEntry {
        method: req.method().clone(),
        uri: req.uri().clone(),
        version: req.version(),
        client_ip,
        id: id.clone(),
        upstream: None,
        server: None,
        waiting: None,
        start: Instant::now(),
        upstream_ms: None,
    }))
}

async fn proxy(
    incoming: Arrived,
    generation: &Arc<Generation>,
    conn: &Arc<ConnInfo>,
    ctx: &Arc<WorkerCtx>,
    done: &mut Completion,
) -> Result<Response<ProxyBody>, ProxyError> {
    let Arrived {
        mut req,
        client_ip,
        ambiguous_framing,
        client_upgrade,
        writer,
    } = incoming;
    let limits = &generation.config.server.limits;
    // 1. Framing and size limits, before routing: nothing ambiguous is ever matched,
    //    let alone forwarded.
    if ambiguous_framing {
        return Err(ProxyError::BadRequest(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    framing::check_request(req.version(), req.headers())?;
    framing::check_target(req.method(), req.version(), req.uri(), req.headers())?;
    if req.version() == Version::HTTP_2 {
        // `:authority` as sent is the `Host` modules and the upstream see, as over
        // HTTP/1.1: with or without a `Host` of its own (the same host, perhaps spelled
        // in other case), and with its port. (Without `Host`, modules read the URI's
        // host, which has no port, and `$req.header["host"]` was nil.)
        if let Some(authority) = request_host(&req) {
            req.headers_mut().insert(header::HOST, authority);
        }
        // RFC 9113 8.2.3: cookies sent one field each ("crumbs", as browsers do) are one
        // `Cookie`, joined with "; ". Joined here, before routing, so routes, `hash_key`,
        // modules and the upstream all read the one line an HTTP/1.1 client sends (a
        // module read only the first crumb, Lua's `req:headers()` joined them with ", ").
        // No field or one: one lookup.
        hygiene::join_cookies(req.headers_mut());
    }
    if req.method() == http::Method::CONNECT {
        // A reverse proxy has no tunnel to open to an authority the client names (as
        // nginx: 405). Forwarded, it reached the upstream as `CONNECT /`.
        return Err(ProxyError::MethodNotAllowed("CONNECT"));
    }
    // The path in normal form before anything decides on it: routes, modules and the
    // upstream then see one path, and `/x/../admin` or `/%61dmin` is `/admin` to all
    // of them (nginx matches its locations on the normalised `$uri` the same way).
    let path_rules = generation.config.server.path_rules();
    path::normalize_uri(req.uri_mut(), path_rules)
        .map_err(|e| ProxyError::BadRequest(e.reason()))?;
    if head_size(&req) > limits.max_header_bytes {
        return Err(ProxyError::HeadersTooLarge {
            limit: limits.max_header_bytes,
        });
    }
    if framing::content_length(req.headers()).is_some_and(|n| n > limits.max_body) {
        return Err(ProxyError::BodyTooLarge {
            limit: limits.max_body,
        });
    }

    // 2. Route. No match is not yet a 404: a module may still answer the request.
    // (An HTTP/2 request's `Host` is its `:authority` by now: read, not made again.)
    let host = match crate::http::lookup::get(req.headers(), &header::HOST) {
        Some(h) => Some(h.clone()),
        None => request_host(&req),
    };
    let found =
        generation
            .router
            .find_index(req.method(), host.as_ref(), req.uri().path(), req.headers());
    done.meter.route = found.map(|(i, _)| index32(i));
    let routed = found.map(|(_, r)| r.upstream);
    let (mut parts, body) = req.into_parts();
    let mut body = ProxyBody::limited(body, limits.max_body);

    // 3. Request phase: modules in priority order; one may answer or forward.
    let mut target = routed;
    let mut response_timeout = None;
    let mut retries = DEFAULT_CONNECT_RETRIES;
    if !generation.pipeline.is_empty() {
        // Before the id is lent below: a VM that cannot be built fails the request
        // with the id still here, for the error response.
        let lua = match &generation.pipeline.lua {
            Some(rt) => Some(Arc::new(crate::lua::LuaCall {
                vm: rt
                    .vm(ctx.id)
                    .map_err(|e| phases::module_error(generation.pipeline.lua_unavailable(e)))?,
                generation: Arc::clone(generation),
                worker: Arc::clone(ctx),
                conn: Arc::clone(conn),
                client_upgrade: client_upgrade.is_some(),
            })),
            None => None,
        };
        let info = RequestInfo {
            // Lent, not cloned (a clone makes the id): a pipeline that never reads it
            // does not make one. The state holds it from now on (an error response
            // takes it from there).
            id: std::mem::replace(&mut done.id, RequestId::stand_in()),
            client_ip,
            scheme: conn.scheme,
            path_rules,
        };
        let upstream_name = routed.map(|i| generation.upstreams.sets[i].shared_name());
        // In the completion from the start: a request that fails, or that its client
        // gives up in the middle of a phase (499), still runs the log phase over the
        // modules it reached.
        let state = done.script.insert(phases::ScriptState::new(
            &generation.pipeline,
            &mut parts,
            info,
            upstream_name,
            lua,
        ));
        let flow = match phases::request_phase(generation, &mut parts, &mut body, state).await {
            Ok(flow) => flow,
            Err(e) => {
                // A module's forward that got no response: the request's upstream (in
                // the access log, the metrics and the log phase) is the set it tried.
                if let Some(set) = e.upstream().and_then(|n| generation.upstreams.by_name(n)) {
                    let name = Arc::clone(set.shared_name());
                    name_upstream(&mut done.meter, &mut done.access, state, generation, name);
                }
                return Err(e);
            }
        };
        match flow {
            Flow::Continue => {}
            Flow::Respond(local) => {
                let mut resp = phases::local_response(local, &state.info.id);
                phases::response_phase(generation, state, &mut resp).await?;
                return Ok(resp);
            }
            Flow::Response(answer) => {
                let crate::pipeline::ModuleResponse {
                    resp: mut answer_resp,
                    guard,
                    upstream,
                } = *answer;
                if guard.is_some() {
                    done.inflight = guard;
                }
                if let Some(u) = upstream {
                    name_upstream(&mut done.meter, &mut done.access, state, generation, u);
                }
                let was = answer_resp.status();
                phases::response_phase(generation, state, &mut answer_resp).await?;
                if let Some(client) = client_upgrade {
                    // A module's own forward of the upgrade (Lua's `std.proxy.forward`):
                    // its `101` opens the tunnel as one from step 5 would.
                    let idle = generation.config.server.timeouts.idle;
                    upgrade::finish(client, was, &mut answer_resp, done, &ctx.shared, idle);
                }
                return Ok(answer_resp);
            }
            Flow::Forward(to) => {
                target = Some(to.upstream);
                response_timeout = to.timeout;
                retries = to.retries.unwrap_or(retries);
                state.upstream = Some(Arc::clone(
                    generation.upstreams.sets[to.upstream].shared_name(),
                ));
            }
        }
    }
    let Some(target) = target else {
        return answer_failure(generation, done, ProxyError::NoRoute).await;
    };
    done.meter.upstream = Some(index32(target));
    if let Some(entry) = done.access.as_mut() {
        entry.upstream = Some(Arc::clone(generation.upstreams.sets[target].shared_name()));
    }

    // 4-5. The upstream request, sent (see `send_upstream`). An upgrade is decided
    //      only now (a module may have removed `Upgrade`) and goes its own way.
    // No module reads the response's headers (the modules' own changes go in the
    // map and win over the received lines), and the client's writer can copy a head
    // as received: the upstream's head needs no header map.
    let head_unread = writer == Writer::TakesRawHead
        && done.script.as_ref().is_none_or(|state| {
            generation.pipeline.response_head_unread && state.ctx.cache.is_none()
        });
    let outbound = |waiting| Outbound {
        generation,
        worker: ctx,
        conn,
        client_ip,
        head_unread,
        waiting,
    };
    // (Moved through a function rather than borrowed here: a borrowed local keeps
    // its room in this future across every later await.)
    // Boxed once here: the request then moves down every layer of the upstream call
    // by pointer, where each one's future would otherwise hold and copy it whole.
    let req = Box::new(Request::from_parts(parts, body));
    let (req, host) = match upgrade::divert(client_upgrade, req, host) {
        Ok(plain) => plain,
        Err(upgrade) => {
            // Boxed: upgrades are rare, and every request pays for this future's size.
            let timing = (response_timeout, Some(retries));
            // (`upgrade::forward` notes the server in `done` itself.)
            let out = outbound(None);
            let upgrading = Box::pin(upgrade::forward(*upgrade, out, target, timing, done));
            return upgrading.await;
        }
    };
    let sent = done.access.is_some().then(Instant::now);
    let out = outbound(done.access.as_deref_mut().map(|entry| &mut entry.waiting));
    let answer = send_upstream(out, target, req, host, response_timeout, Some(retries)).await;
    if let (Some(entry), Some(sent)) = (done.access.as_mut(), sent) {
        entry.upstream_ms = Some(sent.elapsed().as_secs_f64() * 1000.0);
    }
    let (mut resp, guard) = match answer {
        Ok(answer) => answer,
        Err(e) => return answer_failure(generation, done, e).await,
    };
    done.inflight = Some(guard);

    // 6. The response phase over the modules that ran.
    if let Some(state) = done.script.as_mut() {
        phases::response_phase(generation, state, &mut resp).await?;
    }
    Ok(resp)
}

/// Where a request to an upstream comes from.
pub struct Outbound<'a> {
    pub generation: &'a Generation,
    pub worker: &'a WorkerCtx,
    pub conn: &'a ConnInfo,
    pub client_ip: std::net::IpAddr,
    /// Nothing reads the response's headers before `server::h1` writes them to the
    /// client: an HTTP/1.1 upstream's head may come back as received (see
    /// `http::RawHead`), its headers not in the response's map.
    pub head_unread: bool,
    /// Where to note the server each attempt goes to, before waiting for it (the
    /// access log's, for a request given up meanwhile).
    pub waiting: Option<&'a mut Option<Arc<ServerState>>>,
}

/// Sends a request to upstream set `target` now and returns the response (hop-by-hop
/// headers gone) with the chosen server's in-flight guard. The request path and Lua's
/// `std.proxy.forward` both send through here (an upgrade through its twin,
/// `upgrade::send`):
/// hygiene and forwarding headers, origin-form URI, pick a server, send; a failed
/// connect is retried on another server (nothing was sent, so this is safe for any
/// method).
pub async fn send_upstream(
    out: Outbound<'_>,
    target: usize,
    req: Box<Request<ProxyBody>>,
    host: Option<HeaderValue>,
    response_timeout: Option<Duration>,
    retries: Option<u32>,
) -> Result<(Response<ProxyBody>, InflightGuard), ProxyError> {
    let set = out
        .generation
        .upstreams
        .sets
        .get(target)
        .ok_or(ProxyError::NoRoute)?;
    let key = pick_key(set, &req, out.client_ip);
    // HTTP/1.1 sets go out through our own client, which writes the forwarding
    // headers into the head itself.
    let (upstream_req, wire) =
        upstream_request(req, out.generation, out.conn, host, set, !set.config.http2);
    let wire = wire.map(|w| w.passing_response_head(out.head_unread));
    let timeout = response_timeout.unwrap_or(set.config.response_timeout);
    let retries = retries.unwrap_or(DEFAULT_CONNECT_RETRIES);
    let via = &Pooled;
    let sending = Sending {
        timeout,
        retries,
        wire: wire.as_ref(),
    };
    let (resp, guard) = forward(
        via,
        set,
        &key,
        upstream_req,
        out.worker,
        sending,
        out.waiting,
    )
    .await?;
    let (mut parts, body) = resp.into_parts();
    via.incoming(&mut parts);
    Ok((Response::from_parts(parts, body), guard))
}

/// A route or upstream index as the meter keeps it (configs have far fewer).
/// Makes `name` the request's upstream from here on, for the access log, the metrics
/// and the log phase (a module's forward answered, or failed).
fn name_upstream(
    meter: &mut Meter,
    access: &mut Option<Box<AccessEntry>>,
    state: &mut phases::ScriptState,
    generation: &Generation,
    name: Arc<str>,
) {
    meter.upstream = generation.upstreams.index_of(&name).map(index32);
    if let Some(entry) = access.as_mut() {
        entry.upstream = Some(Arc::clone(&name));
    }
    state.upstream = Some(name);
}

fn index32(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// Connect failures retried on another server when `forward` does not say.
const DEFAULT_CONNECT_RETRIES: u32 = 1;

/// Bytes in the request head as sent: request line plus `name: value\r\n` lines.
fn head_size<B>(req: &Request<B>) -> usize {
    let line = req.method().as_str().len()
        + req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + 12;
    req.headers()
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

/// The request's host: HTTP/2's `:authority` (RFC 9113 8.3.1: a `Host` beside it
/// names the same, `framing::check_target` saw to that), else the `Host` header (an
/// HTTP/1.1 absolute-form target's authority is in it already, see `server::h1`).
fn request_host<B>(req: &Request<B>) -> Option<HeaderValue> {
    let authority = || {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    };
    if req.version() == Version::HTTP_2 {
        if let Some(a) = authority() {
            return Some(a);
        }
    }
    if let Some(h) = crate::http::lookup::get(req.headers(), &header::HOST) {
        return Some(h.clone());
    }
    authority()
}

fn pick_key<B>(set: &UpstreamSet, req: &Request<B>, client_ip: std::net::IpAddr) -> PickKey {
    let hash = match &set.config.hash_key {
        HashKey::ClientIp => match client_ip {
            std::net::IpAddr::V4(v4) => hash_bytes(&v4.octets()),
            std::net::IpAddr::V6(v6) => hash_bytes(&v6.octets()),
        },
        HashKey::Path => hash_bytes(req.uri().path().as_bytes()),
        HashKey::Header(name) => {
            hash_bytes(req.headers().get(name).map_or(&[][..], |v| v.as_bytes()))
        }
    };
    PickKey { client_ip, hash }
}

/// The request as it goes upstream. `wire`: the forwarding headers are handed back
/// to be written into the head by the HTTP/1.1 client (see `hygiene::Forwarding`)
/// rather than added to the header map.
fn upstream_request(
    mut req: Box<Request<ProxyBody>>,
    generation: &Generation,
    conn: &ConnInfo,
    host: Option<HeaderValue>,
    set: &UpstreamSet,
    wire: bool,
) -> (Box<Request<ProxyBody>>, Option<Forwarding>) {
    let trusted = &generation.config.server.trusted_proxies;
    let peer_trusted = trusted.iter().any(|n| n.contains(&conn.peer.ip()));
    // `TE: trailers` is hop-by-hop, but a gRPC client's is meant for the server at the
    // end: an HTTP/2 upstream gets it again (the one TE value HTTP/2 allows).
    let te_trailers = set.config.http2 && hygiene::accepts_trailers(req.headers());
    hygiene::strip_hop_by_hop(req.headers_mut());
    if te_trailers {
        req.headers_mut()
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let forwarded = Forwarded {
        peer: &conn.peer_ip,
        peer_trusted,
        scheme: conn.scheme,
        host: host.as_ref(),
        version: req.version(),
    };
    let wire = if wire {
        Some(Forwarding::new(&forwarded))
    } else {
        hygiene::add_forwarding(req.headers_mut(), &forwarded);
        None
    };
    if let Some(host) = host {
        // HTTP/2 clients send `:authority`, HTTP/1.1 upstreams need `Host`. (Not
        // `entry()`: it reserves room even when the key is there, and grows a full map.)
        if !crate::http::lookup::has(req.headers(), &header::HOST) {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    if req.version() == Version::HTTP_2 && !set.config.http2 {
        // The client's cookie crumbs were joined on arrival (`proxy`); this joins only
        // `cookie` fields a module added, for the one line an HTTP/1.1 server reads.
        // Usually one field: one lookup.
        hygiene::join_cookies(req.headers_mut());
    }
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        *req.uri_mut() = origin_form(req.uri());
    }
    *req.version_mut() = Version::HTTP_11;
    (req, wire)
}

fn origin_form(uri: &Uri) -> Uri {
    if uri.scheme().is_none() && uri.authority().is_none() {
        return uri.clone();
    }
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    pq.parse().unwrap_or_else(|_| Uri::from_static("/"))
}

/// How `forward` sends: the response timeout, connect retries, and the forwarding
/// headers the transport writes itself (`None`: they are in the header map).
#[derive(Clone, Copy)]
struct Sending<'a> {
    timeout: Duration,
    retries: u32,
    wire: Option<&'a Forwarding>,
}

/// `waiting`: where to note each server sent to, before its answer is waited for.
async fn forward<T: Transport>(
    via: &T,
    set: &UpstreamSet,
    key: &PickKey,
    mut req: Box<Request<ProxyBody>>,
    ctx: &WorkerCtx,
    sending: Sending<'_>,
    mut waiting: Option<&mut Option<Arc<ServerState>>>,
) -> Result<(Response<ProxyBody>, InflightGuard), ProxyError> {
    let retries = sending.retries;
    let no_server = || ProxyError::NoServer(set.no_server());
    let mut tried = Tried::new();
    let mut attempt = 0;
    // The connect error of the last server tried: what to answer when retries are left
    // but servers are not (a 502 about that server, not a 503 about the set).
    let mut last_error = None;
    loop {
        let pick = set.pick(key, &tried);
        let (index, guard) = match pick {
            Some(p) => p,
            None => return Err(last_error.unwrap_or_else(no_server)),
        };
        if let Some(slot) = waiting.as_deref_mut() {
            *slot = Some(Arc::clone(guard.server()));
        }
        match send_to(via, set, index, guard, req, ctx, sending).await {
            Ok(resp) => return Ok(resp),
            Err(Failed::Sent(e)) => return Err(e),
            Err(Failed::Unsent(e, back)) if attempt < retries && set.servers.len() > 1 => {
                tracing::warn!(target: "proxycache::proxy", error = %e, "connect failed; retrying on another server");
                last_error = Some(e);
                req = back;
                tried.insert(index);
                attempt += 1;
            }
            Err(Failed::Unsent(e, _)) => return Err(e),
        }
    }
}

/// What an exchange says about its server, for the breaker: working for a response,
/// failing for a transport failure; `None` when nothing — a failure of the client's
/// doing (its body over the limit, broken, cut short or stalled: the server proved
/// nothing either way, so it neither counts against it nor closes a half-open
/// breaker as a probe's success would), or a connect that failed for a reason of this
/// machine's, such as no file descriptors.
fn server_did_well<T>(result: &Result<T, SendError>) -> Option<bool> {
    match result {
        Ok(_) => Some(true),
        Err(SendError::Connect(e, _)) if crate::upstream::connect::is_local_failure(e) => None,
        // The client's slowness, not the server's.
        Err(SendError::RequestBodyStalled(_)) => None,
        // A protocol the set cannot speak (an upgrade to an HTTP/2-only server): the
        // configuration's doing; the server may well serve its own traffic.
        Err(SendError::Unsupported(_)) => None,
        Err(SendError::Upstream(e))
            if body_too_large(e.as_ref()).is_some() || client_body_error(e.as_ref()).is_some() =>
        {
            None
        }
        Err(_) => Some(false),
    }
}

enum Failed {
    /// Not sent (connect failed): can be retried elsewhere.
    Unsent(ProxyError, Box<Request<ProxyBody>>),
    Sent(ProxyError),
}

async fn send_to<T: Transport>(
    via: &T,
    set: &UpstreamSet,
    index: usize,
    mut guard: InflightGuard,
    req: Box<Request<ProxyBody>>,
    ctx: &WorkerCtx,
    sending: Sending<'_>,
) -> Result<(Response<ProxyBody>, InflightGuard), Failed> {
    let server = Arc::clone(guard.server());
    let endpoint = match (&server.target, set.endpoints.get(index)) {
        (ServerTarget::Addr { .. }, Some(Some(endpoint))) => endpoint,
        (ServerTarget::Addr { .. }, _) => {
            return Err(Failed::Sent(ProxyError::Internal(format!(
                "upstream {}: server {index} has no endpoint",
                set.name()
            ))))
        }
        (ServerTarget::Echo, _) => {
            // The echo shows the request as a server would get it.
            let mut req = *req;
            if let Some(fwd) = sending.wire {
                fwd.apply(req.headers_mut());
            }
            return Box::pin(echo::respond(req, sending.timeout))
                .await
                .map(|r| (r, guard))
                .map_err(Failed::Sent);
        }
    };
    let addr = endpoint.addr;
    let upstream = || set.name().to_owned();
    let result = via
        .send(&ctx.pool, endpoint, sending.timeout, req, sending.wire)
        .await;
    let verdict = match &result {
        // An answer, but one the set counts as the server failing.
        Ok(resp) if set.config.circuit_breaker.statuses.contains(&resp.status()) => Some(false),
        _ => server_did_well(&result),
    };
    // A success is recorded when the body is over, as nginx does (a server that breaks
    // off every body then fails like one that refuses), except for a probe and a
    // `101` (a tunnel may last hours): at the head.
    let switched =
        matches!(&result, Ok(resp) if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS);
    match verdict {
        Some(true) if guard.is_probe() || switched => guard.record_outcome(true, set.name()),
        Some(true) => guard.head_ok(),
        Some(false) => guard.record_outcome(false, set.name()),
        None => {}
    }
    match result {
        Ok(resp) => Ok((resp.map(T::body), guard)),
        Err(SendError::Connect(source, req)) => Err(Failed::Unsent(
            ProxyError::Connect {
                upstream: upstream(),
                server: addr,
                source,
            },
            req,
        )),
        Err(SendError::ConnectTimeout(stage, req)) => Err(Failed::Unsent(
            ProxyError::ConnectTimeout {
                upstream: upstream(),
                server: addr,
                stage,
            },
            req,
        )),
        Err(SendError::Tls(reason, req)) => Err(Failed::Unsent(
            ProxyError::Tls {
                upstream: upstream(),
                server: addr,
                name: endpoint
                    .tls
                    .as_ref()
                    .map_or_else(String::new, |t| t.identity.name.to_str().into_owned()),
                reason,
            },
            req,
        )),
        Err(SendError::Closed) => Err(Failed::Sent(ProxyError::Upstream {
            upstream: upstream(),
            server: addr,
            reason: "connection closed before the request was sent".into(),
        })),
        Err(SendError::ResponseTimeout) => Err(Failed::Sent(ProxyError::ResponseTimeout {
            upstream: upstream(),
            server: addr,
        })),
        Err(SendError::RequestBodyStalled(timeout)) => {
            Err(Failed::Sent(ProxyError::RequestBodyTimeout { timeout }))
        }
        Err(SendError::Unsupported(reason)) => Err(Failed::Sent(ProxyError::UpgradeUnsupported {
            upstream: upstream(),
            reason,
        })),
        Err(SendError::SendTimeout(timeout)) => Err(Failed::Sent(ProxyError::SendTimeout {
            upstream: upstream(),
            server: addr,
            timeout,
        })),
        Err(SendError::Upstream(e)) => Err(Failed::Sent(
            match (body_too_large(e.as_ref()), client_body_error(e.as_ref())) {
                (Some(limit), _) => ProxyError::BodyTooLarge { limit },
                (None, Some(BodyFault::Malformed(reason))) => ProxyError::BadRequest(reason),
                (None, Some(BodyFault::Gone(reason))) => ProxyError::ClientGone(reason),
                (None, None) => ProxyError::Upstream {
                    upstream: upstream(),
                    server: addr,
                    reason: e.to_string(),
                },
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::Request;

    use crate::http::body::RequestBody;

    use crate::server::conn::ConnInfo;
    use crate::server::worker::WorkerCtx;

    /// A client's failure says nothing about the server: it neither counts against it
    /// nor, as a half-open breaker's probe, closes the breaker as a success would.
    #[test]
    fn a_client_fault_says_nothing_about_the_server() {
        use crate::upstream::client::SendError;
        let too_large: Result<(), SendError> = Err(SendError::Upstream(Box::new(
            crate::http::body::BodyTooLarge { limit: 1 },
        )));
        assert_eq!(super::server_did_well(&too_large), None);
        let broken: Result<(), SendError> = Err(SendError::Upstream("reset".into()));
        assert_eq!(super::server_did_well(&broken), Some(false));
        assert_eq!(super::server_did_well::<()>(&Ok(())), Some(true));
    }

    /// The size of the future `f` returns, without calling it.
    fn future_size<F, Fut>(_: F) -> usize
    where
        F: Fn(Request<RequestBody>, Arc<ConnInfo>, Arc<WorkerCtx>, super::Writer) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// The request future is part of every HTTP/1.1 connection's task and is copied
    /// into each HTTP/2 stream's task: keep it small (Lua hooks and their waits are
    /// boxed, see `Pipeline::run_request`).
    #[test]
    fn the_request_future_stays_small() {
        let size = future_size(super::handle);
        println!("request future: {size} bytes");
        assert!(size <= 5120, "the request future is {size} bytes");
    }

    /// The size of the future of a function of six arguments, without calling it.
    fn future_size6<A, B, C, D, E, F, Fut>(_: impl FnOnce(A, B, C, D, E, F) -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// Each layer of the upstream call holds its callee's future and copies it at each
    /// call: the request goes down boxed and hyper's large exchange is boxed, so these
    /// stay well under what they were (send_upstream: 4,224 bytes before).
    #[test]
    fn the_upstream_call_futures_stay_small() {
        use super::{Outbound, ProxyBody};
        use http::HeaderValue;
        use std::time::Duration;
        let send = future_size6::<
            Outbound<'static>,
            usize,
            Box<Request<ProxyBody>>,
            Option<HeaderValue>,
            Option<Duration>,
            Option<u32>,
            _,
        >(super::send_upstream);
        println!("send_upstream future: {send} bytes");
        assert!(send <= 2048, "send_upstream's future is {send} bytes");
    }
}
