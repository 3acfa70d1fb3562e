//! The admin API on its own listener (CONFIG.md "Admin API"): status, stats, metrics,
//! modules (list, read, write, delete), reload, config verify and repair, upstreams,
//! and a small HTML dashboard.
//!
//! Security: with `admin.api_key` set every call needs `Authorization: Bearer KEY`
//! (compared in constant time); calls from web pages on other sites are refused
//! (`browser`); request bodies are bounded; module names are
//! validated so no path can escape the scripts folder. Every mutating call writes an
//! `admin_audit` log line. A connection gets `server.timeouts.header` to send a
//! request head (and as keep-alive idle time), `server.timeouts.idle` for its body,
//! and at most [`MAX_CONNECTIONS`] are open at once (more wait in the backlog). Must
//! not touch: the request path.

mod browser;
mod dashboard;
mod handlers;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::server::Shared;

/// Largest admin request body (a module source or a config file).
pub const MAX_BODY: usize = 1024 * 1024;

/// Admin connections open at once; further ones wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;

/// An admin response body.
pub type AdminBody = Full<Bytes>;

/// Serves the admin API until the task is aborted.
pub async fn serve(listener: std::net::TcpListener, shared: Arc<Shared>) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(target: "proxycache::admin", error = %e, "cannot start the admin listener");
            return;
        }
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        let shared = Arc::clone(&shared);
        let header_timeout = shared.generation().config.server.timeouts.header;
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, peer, Arc::clone(&shared)));
            // hyper's header timer also runs while a keep-alive connection waits for
            // its next request: an idle admin connection closes after it too.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
            drop(slot);
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> Result<Response<AdminBody>, Infallible> {
    let generation = shared.generation();
    let api_key = &generation.config.admin.api_key;
    if let Some(reason) = browser::refusal(req.headers(), !api_key.is_empty()) {
        if req.method() != Method::GET {
            tracing::info!(target: "admin_audit", caller = %peer, action = %req.method(), object = req.uri().path(), result = "rejected: from a web page", generation = generation.number, "admin call");
        }
        return Ok(json(
            StatusCode::FORBIDDEN,
            &serde_json::json!({ "error": reason }),
        ));
    }
    if !authorized(&req, api_key) {
        if req.method() != Method::GET {
            tracing::info!(target: "admin_audit", caller = %peer, action = %req.method(), object = req.uri().path(), result = "rejected: unauthorized", generation = generation.number, "admin call");
        }
        let mut resp = json(
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({"error": "missing or wrong admin API key"}),
        );
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Ok(resp);
    }
    let body_timeout = generation.config.server.timeouts.idle;
    drop(generation);
    // A declared length over the limit is refused before any of the body is read (and
    // before hyper answers `Expect: 100-continue`).
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        tracing::info!(target: "admin_audit", caller = %peer, action = %req.method(), object = req.uri().path(), result = "rejected: body too large", "admin call");
        let mut resp = json(
            StatusCode::PAYLOAD_TOO_LARGE,
            &serde_json::json!({"error": format!("body over {MAX_BODY} bytes")}),
        );
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Ok(resp);
    }
    let (parts, body) = req.into_parts();
    let collected = tokio::time::timeout(body_timeout, Limited::new(body, MAX_BODY).collect());
    let body = match collected.await {
        Ok(Ok(b)) => b.to_bytes(),
        Err(_) => {
            tracing::info!(target: "admin_audit", caller = %peer, action = %parts.method, object = parts.uri.path(), result = "rejected: body not received in time", "admin call");
            let mut resp = json(
                StatusCode::REQUEST_TIMEOUT,
                &serde_json::json!({"error": format!("the body did not arrive within {body_timeout:?} (server.timeouts.idle)")}),
            );
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Ok(resp);
        }
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            tracing::info!(target: "admin_audit", caller = %peer, action = %parts.method, object = parts.uri.path(), result = "rejected: body too large", "admin call");
            return Ok(json(
                StatusCode::PAYLOAD_TOO_LARGE,
                &serde_json::json!({"error": format!("body over {MAX_BODY} bytes")}),
            ));
        }
        // A malformed body (a bad chunk size) or a client that left: not "too large".
        Ok(Err(e)) => {
            tracing::info!(target: "admin_audit", caller = %peer, action = %parts.method, object = parts.uri.path(), result = "rejected: malformed body", "admin call");
            let mut resp = json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"error": format!("the request body could not be read: {e}")}),
            );
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Ok(resp);
        }
    };
    let path = parts.uri.path().trim_end_matches('/').to_owned();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let call = handlers::Call {
        shared: &shared,
        peer,
        body,
    };
    let Some(allow) = allowed_methods(&segments) else {
        return Ok(json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": format!("no admin endpoint {}", parts.uri.path())}),
        ));
    };
    // HEAD is GET without the body (hyper leaves the body out).
    let method = match parts.method {
        Method::HEAD => Method::GET,
        ref m => m.clone(),
    };
    let resp = match (&method, segments.as_slice()) {
        (&Method::GET, []) => dashboard::page(&call),
        (&Method::GET, ["status"]) => handlers::status(&call),
        (&Method::GET, ["stats"]) => handlers::stats(&call),
        (&Method::GET, ["metrics"]) => handlers::metrics(&call),
        (&Method::GET, ["mods"]) => handlers::mods(&call),
        (&Method::GET, ["mods", name]) => handlers::mod_get(&call, name),
        (&Method::PUT, ["mods", name]) => handlers::mod_put(&call, name).await,
        (&Method::DELETE, ["mods", name]) => handlers::mod_delete(&call, name).await,
        (&Method::POST, ["reload"]) => handlers::reload(&call).await,
        (&Method::POST, ["config", "verify"]) => handlers::config_verify(&call).await,
        (&Method::POST, ["config", "repair"]) => handlers::config_repair(&call).await,
        (&Method::GET, ["upstreams"]) => handlers::upstreams(&call),
        _ => {
            let mut resp = json(
                StatusCode::METHOD_NOT_ALLOWED,
                &serde_json::json!({"error": format!("{} is not allowed on {} (allowed: {allow})", parts.method, parts.uri.path())}),
            );
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            resp
        }
    };
    Ok(resp)
}

/// The methods the resource at `segments` answers (`Allow`); `None`: no such resource.
fn allowed_methods(segments: &[&str]) -> Option<&'static str> {
    Some(match segments {
        [] | ["status" | "stats" | "metrics" | "mods" | "upstreams"] => "GET, HEAD",
        ["mods", _] => "GET, HEAD, PUT, DELETE",
        ["reload"] | ["config", "verify" | "repair"] => "POST",
        _ => return None,
    })
}

/// Constant-time check of `Authorization: Bearer KEY`; no key configured: open.
fn authorized<B>(req: &Request<B>, key: &str) -> bool {
    if key.is_empty() {
        return true;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The scheme is case-insensitive (RFC 9110, section 11.1).
            let (scheme, token) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim_start_matches(' '))
        })
        .unwrap_or("");
    constant_time_eq(given.as_bytes(), key.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Length is not secret enough to hide here; the comparison of contents is.
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A JSON response.
pub fn json(status: StatusCode, value: &impl Serialize) -> Response<AdminBody> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A response with a given content type.
pub fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<AdminBody> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_by_content() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }

    #[test]
    fn bearer_keys_are_required_when_set() {
        let req = |auth: Option<&str>| {
            let mut b = Request::get("/status");
            if let Some(a) = auth {
                b = b.header("authorization", a);
            }
            b.body(()).unwrap_or_default()
        };
        assert!(authorized(&req(None), ""));
        assert!(!authorized(&req(None), "k"));
        assert!(!authorized(&req(Some("Bearer x")), "k"));
        assert!(authorized(&req(Some("Bearer k")), "k"));
    }
}
