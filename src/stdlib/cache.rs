//! `std.cache.check` and `std.cache.store`: an HTTP cache in memory.
//!
//! `check` (request phase) looks the request up: a fresh hit becomes the response
//! when the module's request phase ends (later modules' request phases do not run,
//! the upstream is not asked); a miss makes this request the one that fills the key,
//! or — when another request is already fetching it — waits for that one (after the
//! request phase, up to `cache.lock_timeout`) and then looks again. `store` (response
//! phase) checks the response is cacheable; when the response phase ends
//! ([`tee_pending`]) its body, as the client gets it, is teed into the cache while it
//! streams. Every response of a request that called either carries
//! `x-cache: HIT | STALE | MISS | BYPASS`. A hit answers validators and one byte
//! range itself (`serve`); the request that fills a key goes upstream without them,
//! and its own client gets the same answer cut from the upstream's `200`
//! ([`answer_fill`], `part`), whether the response is stored or not.
//! A successful unsafe request (`POST`, `PUT`, `PATCH`, `DELETE`) that calls `store`
//! drops the entries of its key.
//!
//! Owns the per-request cache state and the two calls; `policy` owns the rules,
//! `store` the entries. Must not touch: the upstream, the pipeline's order.

pub mod part;
pub mod policy;
pub mod serve;
pub mod shared;
pub mod store;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;

use super::{ArgDefault, ArgSig, ArgType, FnSig, Returns, StdError, StdFn};
use crate::http::ProxyBody;
use crate::script::ast::PhaseKind;
use crate::script::value::Value;
use policy::RequestUse;
use serve::{Answer, Conditions};
use store::{Claim, FillGuard, HttpCache, Lookup, PendingEntry, TeeBody};

/// The response header telling whether the cache answered.
pub const X_CACHE: &str = "x-cache";

const TTL_ARG: ArgSig = ArgSig {
    name: "ttl",
    ty: ArgType::Duration,
    default: ArgDefault::Nil,
    literal: false,
    check: None,
    doc: "freshness for responses that state none (no `max-age`, `s-maxage` or `Expires`); without it such responses are not stored",
};

/// The signature entries of this area.
pub static SIGS: &[FnSig] = &[
    FnSig {
        name: "std.cache.check",
        id: StdFn::CacheCheck,
        args: &[
            ArgSig {
                name: "key",
                ty: ArgType::Str,
                default: ArgDefault::Nil,
                literal: false,
                check: None,
                doc: "the cache key; host, path and query by default",
            },
            TTL_ARG,
        ],
        returns: Returns::Value(ArgType::Bool),
        phases: &[PhaseKind::Request],
        doc: "Looks the request up in the cache. On a fresh hit (true) the cached response becomes the response once this module's request phase ends; on a miss (false) the request goes on, and concurrent misses for one key wait for the first one's response.",
    },
    FnSig {
        name: "std.cache.store",
        id: StdFn::CacheStore,
        args: &[TTL_ARG],
        returns: Returns::Value(ArgType::Bool),
        phases: &[PhaseKind::Response],
        doc: "Stores the response if it is cacheable (GET, a cacheable status, no `no-store`/`private`/`no-cache`, no `Set-Cookie`, not `Vary: *`, fresh for some time); the body the client gets (a new one a module sets after `store` included) is copied into the cache as it streams to the client. Returns whether it will be stored.",
    },
];

/// How the cache took part in a request (the `x-cache` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Stale,
    Miss,
    Bypass,
}

impl CacheStatus {
    fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Stale => "STALE",
            CacheStatus::Miss => "MISS",
            CacheStatus::Bypass => "BYPASS",
        })
    }
}

/// The cache state of one request (kept in its `Ctx`).
#[derive(Debug)]
pub struct CacheReq {
    pub status: CacheStatus,
    key: Arc<str>,
    /// Default freshness from `check(ttl)`.
    ttl: Option<Duration>,
    /// The cached response to serve, until the pipeline takes it.
    hit: Option<Arc<store::Cached>>,
    /// This request fills the key.
    fill: Option<FillGuard>,
    /// Another request fills the key: wait for it.
    wait: Option<tokio::sync::watch::Receiver<()>>,
    /// The request was a HEAD (its hit carries no body).
    head: bool,
    /// Its validators and range, when it has any (a hit answers them).
    cond: Option<Box<Conditions>>,
    /// The validators and range this request's fill took off its upstream request:
    /// the response answers them on its way to the client ([`answer_fill`]).
    fill_cond: Option<Box<Conditions>>,
    /// `store` is copying the response body into the cache.
    teeing: bool,
    /// The entry `store` accepted, waiting for the body the client will get: a module
    /// may still replace the body after `store` (Lua's `resp:set_body`), so the tee
    /// goes round it only when the response phase ends ([`tee_pending`]).
    pending: Option<Box<PendingEntry>>,
}

impl CacheReq {
    /// Takes the cached response to serve, if `check` found one; like every response
    /// the proxy makes itself it carries this request's `x-request-id`.
    pub fn take_hit(&mut self, id: &crate::http::RequestId) -> Option<Response<ProxyBody>> {
        let cached = self.hit.take()?;
        let mut resp = hit_response(&cached, self.head, self.status, self.cond.as_deref());
        resp.headers_mut().insert(
            crate::http::request_id::HEADER_NAME,
            id.header_value().clone(),
        );
        Some(resp)
    }

    /// Whether `check` found a response to serve.
    pub fn has_hit(&self) -> bool {
        self.hit.is_some()
    }

    /// Whether the request should wait for another request's fill.
    pub fn must_wait(&self) -> bool {
        self.wait.is_some()
    }
}

fn cache_of<'a>(ex: &super::Exchange<'a>) -> &'a Arc<HttpCache> {
    &ex.state.cache
}

/// `std.cache.check(key?, ttl?)`.
pub fn check(args: &[Value], ex: &mut super::Exchange<'_>) -> Result<Value, StdError> {
    let ttl = duration_arg(args.get(1), "std.cache.check")?;
    let key: Arc<str> = match args.first() {
        Some(Value::Str(k)) => Arc::clone(k),
        Some(Value::Nil) | None => default_key(ex),
        Some(other) => Arc::from(other.to_string()),
    };
    let head = *ex.req.method == Method::HEAD;
    let mut req = CacheReq {
        status: CacheStatus::Miss,
        key,
        ttl,
        hit: None,
        fill: None,
        wait: None,
        head,
        cond: None,
        fill_cond: None,
        teeing: false,
        pending: None,
    };
    let cache = Arc::clone(cache_of(ex));
    match policy::request_use(ex.req.method, ex.req.headers) {
        RequestUse::Bypass => req.status = CacheStatus::Bypass,
        RequestUse::Refresh => {}
        RequestUse::Normal => match cache.lookup(&req.key, ex.req.headers, Instant::now()) {
            Lookup::Fresh(c) => {
                req.status = CacheStatus::Hit;
                req.hit = Some(c);
            }
            Lookup::Stale(c) if head => {
                req.status = CacheStatus::Stale;
                req.hit = Some(c);
            }
            // A HEAD is answered from a stored GET response (RFC 9110 §9.3.2: the same
            // head), here or in the shared tier (whose entries are all GET responses:
            // a HEAD's is never stored); a miss goes to the upstream as HEAD, unclaimed.
            Lookup::Miss if head => {
                if let Some(c) = from_shared_tier(&cache, ex, &req.key) {
                    req.status = CacheStatus::Hit;
                    req.hit = Some(c);
                }
            }
            // Stale inside stale-while-revalidate: one request refreshes it, the
            // others get the stale copy meanwhile.
            Lookup::Stale(c) => match cache.claim(&cache.fill_key(&req.key, ex.req.headers)) {
                Claim::Fill(guard) => req.fill = Some(guard),
                Claim::Wait(_) => {
                    req.status = CacheStatus::Stale;
                    req.hit = Some(c);
                }
            },
            Lookup::Miss => match from_shared_tier(&cache, ex, &req.key) {
                Some(c) => {
                    req.status = CacheStatus::Hit;
                    req.hit = Some(c);
                }
                None => match cache.claim(&cache.fill_key(&req.key, ex.req.headers)) {
                    Claim::Fill(guard) => req.fill = Some(guard),
                    Claim::Wait(rx) => req.wait = Some(rx),
                },
            },
        },
    }
    if req.hit.is_some() {
        req.cond = Conditions::of(ex.req.headers);
    } else if req.fill.is_some() {
        req.fill_cond = Conditions::of(ex.req.headers);
        Conditions::strip(ex.req.headers);
    }
    let counts = &cache.counts;
    match req.status {
        CacheStatus::Hit | CacheStatus::Stale => {
            counts.hits.inc();
        }
        // A request that waits is counted once it knows.
        CacheStatus::Miss if req.wait.is_none() => {
            counts.misses.inc();
        }
        _ => {}
    }
    let hit = req.hit.is_some();
    ex.ctx.cache = Some(Box::new(req));
    Ok(Value::Bool(hit))
}

/// The key of a request that names none: see [`policy::default_key`].
fn default_key(ex: &super::Exchange<'_>) -> Arc<str> {
    Arc::from(policy::default_key(
        ex.info.scheme,
        ex.upstream.map(|u| u.as_ref()),
        ex.req.uri,
        ex.req.headers,
    ))
}

/// A local miss asks the shared tier (when `cache.shared`); a fresh entry found there
/// is kept locally too. Redis being away is a miss, counted as a fallback.
fn from_shared_tier(
    cache: &HttpCache,
    ex: &super::Exchange<'_>,
    key: &Arc<str>,
) -> Option<Arc<store::Cached>> {
    if !cache.settings.shared {
        return None;
    }
    match shared::fetch(&ex.state.cluster, key) {
        Ok(Some(c)) if c.is_fresh(Instant::now()) => {
            let c = Arc::new(c);
            cache.insert_shared(key, Arc::clone(&c));
            Some(c)
        }
        Ok(_) => None,
        Err(e) => {
            tracing::debug!(target: "proxycache::stdlib", error = %e, "shared cache tier not used");
            ex.state.metrics.cluster_fallback(ex.module);
            None
        }
    }
}

/// After the request phase: waits for another request's fill of the same key, then
/// looks again. Returns the cached response when the wait produced one.
pub async fn after_wait(
    req: &mut CacheReq,
    cache: &HttpCache,
    headers: &HeaderMap,
    id: &crate::http::RequestId,
) -> Option<Response<ProxyBody>> {
    let rx = req.wait.take()?;
    store::wait_for_fill(rx, cache.settings.lock_timeout).await;
    match cache.lookup(&req.key, headers, Instant::now()) {
        Lookup::Fresh(c) | Lookup::Stale(c) => {
            cache.counts.hits.inc();
            req.status = CacheStatus::Hit;
            req.hit = Some(c);
            req.cond = Conditions::of(headers);
            req.take_hit(id)
        }
        Lookup::Miss => {
            cache.counts.misses.inc();
            None
        }
    }
}

/// A stored response as the response to send to a request with `cond`.
fn hit_response(
    c: &store::Cached,
    head: bool,
    status: CacheStatus,
    cond: Option<&Conditions>,
) -> Response<ProxyBody> {
    let mut headers = c.headers.clone();
    let (code, body) = match serve::answer(c, cond) {
        Answer::Whole => (c.status, c.body.clone()),
        Answer::NotModified => {
            serve::not_modified_headers(&mut headers);
            (http::StatusCode::NOT_MODIFIED, bytes::Bytes::new())
        }
        Answer::Part(part) => {
            serve::part_headers(&mut headers, &part, c.body.len());
            (http::StatusCode::PARTIAL_CONTENT, c.body.slice(part))
        }
        Answer::Unsatisfiable => {
            serve::unsatisfiable_headers(&mut headers, c.body.len());
            (http::StatusCode::RANGE_NOT_SATISFIABLE, bytes::Bytes::new())
        }
    };
    let body = if head || body.is_empty() {
        ProxyBody::Empty
    } else {
        ProxyBody::full(body)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = code;
    *resp.headers_mut() = headers;
    let h = resp.headers_mut();
    h.insert(header::AGE, HeaderValue::from(c.age(Instant::now())));
    h.insert(X_CACHE, status.header());
    resp
}

/// Answers the validators and range a fill took off its upstream request (see
/// [`CacheReq::fill_cond`]) from the response going to its client, as a hit would be
/// answered: `304`, `206` (when the body's length is known) or `416` for a `200`.
/// A body the cache is still copying is read to its end in the background when the
/// client's answer needs less of it.
pub fn answer_fill(req: Option<&mut CacheReq>, resp: &mut Response<ProxyBody>) {
    let Some(req) = req else { return };
    let Some(cond) = req.fill_cond.take() else {
        return;
    };
    if resp.status() != StatusCode::OK {
        return;
    }
    let len = crate::http::framing::content_length(resp.headers())
        .or_else(|| resp.body().size_hint().exact())
        .and_then(|n| usize::try_from(n).ok());
    // The status, and the range of the body the client gets (none: no body).
    let (status, part) = match serve::answer_to(resp.status(), resp.headers(), len, &cond) {
        Answer::Whole => return,
        Answer::NotModified => {
            serve::not_modified_headers(resp.headers_mut());
            (StatusCode::NOT_MODIFIED, None)
        }
        Answer::Part(part) => {
            serve::part_headers(resp.headers_mut(), &part, len.unwrap_or(part.end));
            (StatusCode::PARTIAL_CONTENT, Some(part))
        }
        Answer::Unsatisfiable => {
            serve::unsatisfiable_headers(resp.headers_mut(), len.unwrap_or(0));
            (StatusCode::RANGE_NOT_SATISFIABLE, None)
        }
    };
    let whole = std::mem::replace(resp.body_mut(), ProxyBody::Empty);
    match part {
        Some(part) => {
            let body = part::PartBody::new(whole, part, req.teeing);
            *resp.body_mut() = ProxyBody::Boxed(body.boxed());
        }
        None if req.teeing => part::finish_in_background(whole),
        None => {}
    }
    *resp.status_mut() = status;
}

/// Sets `x-cache` on the response of a request that used the cache.
pub fn mark(req: Option<&CacheReq>, headers: &mut HeaderMap) {
    if let Some(r) = req {
        headers.insert(X_CACHE, r.status.header());
    }
}

/// `std.cache.store(ttl?)`.
pub fn store(args: &[Value], ex: &mut super::Exchange<'_>) -> Result<Value, StdError> {
    let ttl = duration_arg(args.first(), "std.cache.store")?;
    let cache = Arc::clone(cache_of(ex));
    if ex.ctx.cache.is_none() {
        // `store` without `check`: key the response the default way.
        let use_ = policy::request_use(ex.req.method, ex.req.headers);
        ex.ctx.cache = Some(Box::new(CacheReq {
            status: if use_ == RequestUse::Bypass {
                CacheStatus::Bypass
            } else {
                CacheStatus::Miss
            },
            key: default_key(ex),
            ttl: None,
            hit: None,
            fill: None,
            wait: None,
            head: *ex.req.method == Method::HEAD,
            cond: None,
            fill_cond: None,
            teeing: false,
            pending: None,
        }));
    }
    let changed = ex
        .resp
        .as_ref()
        .is_some_and(|r| r.status.is_success() || r.status.is_redirection());
    if changed && is_unsafe(ex.req.method) {
        if let Some(key) = ex.ctx.cache.as_ref().map(|r| Arc::clone(&r.key)) {
            invalidate(&cache, ex, &key);
        }
    }
    let Some(req) = ex.ctx.cache.as_deref_mut() else {
        return Ok(Value::Bool(false));
    };
    // A cached answer is not stored again; a bypassed request is not stored at all;
    // nor is the proxy's own error (a 404 for no route, a 502 a module made a page of).
    if req.status != CacheStatus::Miss || ex.ctx.proxys_answer {
        return Ok(Value::Bool(false));
    }
    // A second `store` takes over the first one's claim on the key.
    let guard = req
        .fill
        .take()
        .or_else(|| req.pending.take().and_then(|p| p.guard));
    let Some(resp) = ex.resp.as_mut() else {
        return Ok(Value::Bool(false));
    };
    let freshness = match policy::storable(
        ex.req.method,
        *resp.status,
        resp.headers,
        ttl.or(req.ttl),
        SystemTime::now(),
    ) {
        Ok(f) => f,
        Err(why) => {
            tracing::debug!(target: "proxycache::stdlib", key = %req.key, why, "not stored");
            return Ok(Value::Bool(false));
        }
    };
    let Some(vary) = policy::vary_names(resp.headers) else {
        return Ok(Value::Bool(false));
    };
    if resp.body.is_none() {
        return Ok(Value::Bool(false));
    }
    let limit = cache.settings.max_entry_size;
    let expect_len = crate::http::framing::content_length(resp.headers);
    if expect_len.is_some_and(|n| n > limit) {
        return Ok(Value::Bool(false));
    }
    let mut headers = resp.headers.clone();
    for name in [
        header::AGE,
        header::SET_COOKIE,
        header::HeaderName::from_static(X_CACHE),
        crate::http::request_id::HEADER_NAME,
    ] {
        headers.remove(name);
    }
    // Responses with `Vary` stay local: the shared tier keys by URL alone.
    let shared = (cache.settings.shared && vary.is_empty() && ex.state.cluster.is_configured())
        .then(|| shared::Writer {
            cluster: Arc::clone(&ex.state.cluster),
            fallbacks: ex.state.metrics.cluster_fallback_counter(ex.module),
        });
    req.pending = Some(Box::new(PendingEntry {
        cache: Arc::clone(&cache),
        primary: Arc::clone(&req.key),
        req_headers: if vary.is_empty() {
            HeaderMap::new()
        } else {
            ex.req.headers.clone()
        },
        vary,
        status: *resp.status,
        headers,
        fresh_for: freshness.fresh_for,
        age: freshness.age,
        stale_for: freshness.stale_for,
        expect_len,
        guard,
        shared,
    }));
    Ok(Value::Bool(true))
}

/// Tees the body the client gets into the entry `store` accepted, if there is one:
/// when the response phase ends, or before a module wraps the body for the client
/// alone (`std.compress.apply`: the entry keeps the plain body, and any client gets
/// it compressed as it asks). The entry's framing and representation headers
/// (`content-type`, `etag`...) follow the body's (a module may have set a new one); a
/// response whose status changed since `store` is not stored (the entry would be
/// another response's).
pub fn tee_pending(
    req: Option<&mut CacheReq>,
    status: StatusCode,
    headers: &HeaderMap,
    body: &mut ProxyBody,
) {
    let Some(req) = req else { return };
    let Some(mut pending) = req.pending.take() else {
        return;
    };
    if pending.status != status {
        tracing::debug!(target: "proxycache::stdlib", key = %req.key, "not stored: the status changed after std.cache.store");
        return;
    }
    // The fields that describe the body go with the body the client gets (a module
    // after `store` may have replaced it, and said what it is now); the others stay
    // as `store` saw them (a later module's `add`s would repeat on every hit).
    for name in [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::CONTENT_TYPE,
        header::CONTENT_ENCODING,
        header::CONTENT_LANGUAGE,
        header::CONTENT_LOCATION,
        header::ETAG,
        header::LAST_MODIFIED,
    ] {
        pending.headers.remove(&name);
        for v in headers.get_all(&name) {
            pending.headers.append(name.clone(), v.clone());
        }
    }
    let limit = pending.cache.settings.max_entry_size;
    pending.expect_len = crate::http::framing::content_length(headers);
    if pending.expect_len.is_some_and(|n| n > limit) {
        tracing::debug!(target: "proxycache::stdlib", key = %req.key, "not stored: the body set after std.cache.store is over cache.max_entry_size");
        return;
    }
    let inner = std::mem::replace(body, ProxyBody::Empty);
    let mut tee = TeeBody::new(inner, *pending, limit);
    if tee.is_end_stream() {
        // No body to wait for (204, an empty body): store now.
        tee.finish();
    } else {
        *body = ProxyBody::Boxed(tee.boxed());
        req.teeing = true;
    }
}

/// Methods that may change the resource (RFC 9110 §9.2.1: not safe).
fn is_unsafe(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Drops `key`'s entries here and in the shared tier. Other processes' local copies
/// are not reached: they serve until they expire (there is no broadcast).
fn invalidate(cache: &HttpCache, ex: &super::Exchange<'_>, key: &str) {
    cache.invalidate(key);
    if cache.settings.shared && ex.state.cluster.is_configured() {
        if let Err(e) = shared::remove(&ex.state.cluster, key) {
            // Other processes can fetch the old entry from Redis until it expires: worth
            // a warning, once a second at most (a Redis that is away would flood it).
            if ex.state.cluster.may_warn() {
                tracing::warn!(target: "proxycache::stdlib", module = ex.module, key, error = %e, "shared cache entry not removed: other processes may serve it from Redis until it expires");
            } else {
                tracing::debug!(target: "proxycache::stdlib", module = ex.module, key, error = %e, "shared cache entry not removed");
            }
            ex.state.metrics.cluster_fallback(ex.module);
        }
    }
    tracing::debug!(target: "proxycache::stdlib", key, "cache entries invalidated");
}

fn duration_arg(v: Option<&Value>, function: &'static str) -> Result<Option<Duration>, StdError> {
    match v {
        None | Some(Value::Nil) => Ok(None),
        Some(Value::Duration(d)) => Ok(Some(*d)),
        Some(Value::Int(s)) if *s >= 0 => Ok(Some(Duration::from_secs(*s as u64))),
        Some(other) => Err(StdError {
            function,
            message: format!("ttl must be a duration, got {other}"),
        }),
    }
}
