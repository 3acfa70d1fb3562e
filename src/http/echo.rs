//! The built-in `builtin:echo` upstream: answers in-process with a JSON description of
//! the request it received (after header hygiene), so a fresh checkout has something
//! to proxy to and tests can see exactly what an upstream would.

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Map, Value};

use super::body::{body_stalled, body_too_large, client_body_error, patient, BodyFault, ProxyBody};
use super::error::ProxyError;

/// Reads the request body and answers with its JSON echo. `stall_timeout`: how long
/// the body may make no progress (its set's `response_timeout`, as for a body sent to
/// a real server) before the answer is `408`.
pub async fn respond(
    req: Request<ProxyBody>,
    stall_timeout: std::time::Duration,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (parts, body) = req.into_parts();
    let body = match patient(body, stall_timeout).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            if let Some(timeout) = body_stalled(e.as_ref()) {
                return Err(ProxyError::RequestBodyTimeout { timeout });
            }
            if let Some(limit) = body_too_large(e.as_ref()) {
                return Err(ProxyError::BodyTooLarge { limit });
            }
            // A client that reset its HTTP/2 stream or left is nginx's 499, as for a
            // body sent to a real server; a body that broke its framing is a 400.
            return Err(match client_body_error(e.as_ref()) {
                Some(BodyFault::Gone(reason)) => ProxyError::ClientGone(reason),
                Some(BodyFault::Malformed(reason)) => ProxyError::BadRequest(reason),
                None => ProxyError::BadRequest("request body ended early"),
            });
        }
    };
    let mut headers = Map::new();
    for (name, value) in &parts.headers {
        let value = Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned());
        match headers.get_mut(name.as_str()) {
            Some(Value::Array(list)) => list.push(value),
            Some(first) => *first = Value::Array(vec![first.take(), value]),
            None => {
                headers.insert(name.as_str().to_owned(), value);
            }
        }
    }
    let echo = json!({
        "upstream": "builtin:echo",
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_bytes": body.len(),
        "body": String::from_utf8_lossy(&body),
    });
    let mut text = serde_json::to_vec_pretty(&echo).unwrap_or_default();
    text.push(b'\n');
    let mut resp = Response::new(ProxyBody::full(Bytes::from(text)));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}
