//! `ProxyError`: everything that can end a request with a proxy-made response, and the
//! one function that maps where an error came from to its status (STYLE rule 7):
//! the client -> 4xx, the upstream -> 502/503/504, the proxy or a script -> 500, an
//! upgrade the upstream set cannot carry -> 501.

use std::net::SocketAddr;

use http::{header, HeaderValue, Response, StatusCode};

use super::body::ProxyBody;
#[cfg(test)]
use super::request_id::HEADER as REQUEST_ID;
use super::request_id::{RequestId, HEADER_NAME as REQUEST_ID_NAME};

/// Why the proxy answered a request itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Malformed or ambiguous request (framing, Host, ...).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The client gave the request up while its body was being read (it reset the
    /// HTTP/2 stream, or its connection went away): nginx's 499, answered to nobody.
    #[error("the client went away: {0}")]
    ClientGone(&'static str),
    /// The request head did not arrive within `server.timeouts.header`.
    #[error("the request head did not arrive within server.timeouts.header")]
    HeaderTimeout,
    /// A method the proxy does not serve (`CONNECT`).
    #[error("method {0} is not served")]
    MethodNotAllowed(&'static str),
    /// The request body went over `server.limits.max_body`.
    #[error("request body over {limit} bytes")]
    BodyTooLarge { limit: u64 },
    /// The request head went over `server.limits.max_header_bytes`.
    #[error("request headers over {limit} bytes")]
    HeadersTooLarge { limit: usize },
    /// The request target is longer than the proxy can hold (in a head within
    /// `max_header_bytes`).
    #[error("request target over {limit} bytes")]
    UriTooLong { limit: usize },
    /// No `[[routes]]` entry matched.
    #[error("no route matches")]
    NoRoute,
    /// Every server of the upstream is unhealthy or has its breaker open.
    #[error(transparent)]
    NoServer(#[from] crate::upstream::NoServer),
    /// Could not connect to a server.
    #[error("upstream {upstream}: connect to {server}: {source}")]
    Connect {
        upstream: String,
        server: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Connecting took longer than `connect_timeout`; `stage` says whether the TCP
    /// connect or the TLS handshake (or HTTP's) was still going.
    #[error("upstream {upstream}: {} timed out", stage.describe(*server))]
    ConnectTimeout {
        upstream: String,
        server: SocketAddr,
        stage: crate::upstream::connect::ConnectStage,
    },
    /// The TLS handshake with a server failed (certificate not trusted, wrong name,
    /// not TLS at all...).
    #[error("upstream {upstream}: TLS to {server} (server name {name:?}): {reason}")]
    Tls {
        upstream: String,
        server: SocketAddr,
        name: String,
        reason: String,
    },
    /// The upstream reset the connection or sent a bad response.
    #[error("upstream {upstream}: {server}: {reason}")]
    Upstream {
        upstream: String,
        server: SocketAddr,
        reason: String,
    },
    /// The client's request body stalled (no progress for the upstream's
    /// `response_timeout` while the server waited for it).
    #[error("the request body made no progress within {timeout:?}")]
    RequestBodyTimeout { timeout: std::time::Duration },
    /// No response headers within `response_timeout`.
    #[error("upstream {upstream}: {server}: no response within the response timeout")]
    ResponseTimeout {
        upstream: String,
        server: SocketAddr,
    },
    /// The server stopped reading the request (none of it taken for the upstream's
    /// `response_timeout` while there was more to send): nginx's `proxy_send_timeout`.
    #[error("upstream {upstream}: {server}: read none of the request body within {timeout:?}")]
    SendTimeout {
        upstream: String,
        server: SocketAddr,
        timeout: std::time::Duration,
    },
    /// The upstream set cannot carry what the request needs: an `Upgrade` (WebSocket)
    /// to a set that speaks only HTTP/2 (`http2 = true` without TLS, or a TLS server
    /// that takes only `h2`). Not counted against the server's breaker.
    #[error("upstream {upstream}: {reason}")]
    UpgradeUnsupported { upstream: String, reason: String },
    /// A module failed at run time (stdlib error, Lua error or budget).
    #[error("module {module} ({location}): {message}")]
    Module {
        module: String,
        location: String,
        message: String,
        /// Already logged where it arose (the pipeline's `module failed` line, at
        /// ERROR with the module, file and line): the proxy does not log it again.
        logged: bool,
    },
    /// A bug or an impossible state inside the proxy.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    /// The status a client gets for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::ClientGone(_) => CLIENT_CLOSED_REQUEST,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::HeaderTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::RequestBodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoServer(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect { .. } | ProxyError::Tls { .. } | ProxyError::Upstream { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::ConnectTimeout { .. }
            | ProxyError::ResponseTimeout { .. }
            | ProxyError::SendTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpgradeUnsupported { .. } => StatusCode::NOT_IMPLEMENTED,
            ProxyError::Module { .. } | ProxyError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// Whether the error is the client's doing (logged at a lower level).
    pub fn is_client_error(&self) -> bool {
        self.status().is_client_error()
    }

    /// Whether the error has been logged where it arose, so that logging it again
    /// would give one fault two lines.
    pub fn logged(&self) -> bool {
        matches!(self, ProxyError::Module { logged: true, .. })
    }

    /// The upstream set the failed exchange was with, if it was with one.
    pub fn upstream(&self) -> Option<&str> {
        match self {
            ProxyError::NoServer(crate::upstream::NoServer { upstream, .. })
            | ProxyError::Connect { upstream, .. }
            | ProxyError::ConnectTimeout { upstream, .. }
            | ProxyError::Tls { upstream, .. }
            | ProxyError::Upstream { upstream, .. }
            | ProxyError::ResponseTimeout { upstream, .. }
            | ProxyError::SendTimeout { upstream, .. }
            | ProxyError::UpgradeUnsupported { upstream, .. } => Some(upstream),
            _ => None,
        }
    }

    /// The server the failed exchange was with, if it was with one.
    pub fn server(&self) -> Option<SocketAddr> {
        match self {
            ProxyError::Connect { server, .. }
            | ProxyError::ConnectTimeout { server, .. }
            | ProxyError::Tls { server, .. }
            | ProxyError::Upstream { server, .. }
            | ProxyError::ResponseTimeout { server, .. }
            | ProxyError::SendTimeout { server, .. } => Some(*server),
            _ => None,
        }
    }

    /// The response sent for this error. The body names the status and the request id,
    /// never internal addresses; the details go to the log.
    pub fn to_response(&self, id: &RequestId) -> Response<ProxyBody> {
        let status = self.status();
        let body = format!(
            "{} {}\nrequest id: {}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            id
        );
        let mut resp = local_response(status, body, id);
        if let ProxyError::MethodNotAllowed(_) = self {
            // RFC 9110 15.5.6: a 405 lists the methods the target does serve.
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(ALLOWED));
        }
        if matches!(
            self,
            ProxyError::BadRequest(_)
                | ProxyError::BodyTooLarge { .. }
                | ProxyError::HeadersTooLarge { .. }
                | ProxyError::UriTooLong { .. }
        ) {
            // The rest of a malformed or refused request must never be read as the
            // next one.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// nginx's status for a request whose client went away before the answer.
pub const CLIENT_CLOSED_REQUEST: StatusCode = match StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => StatusCode::BAD_REQUEST,
};

/// The methods a `405` names in `Allow`: all the proxy forwards that clients commonly
/// send (everything but `CONNECT`, which is the one refused).
pub const ALLOWED: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH";

/// A plain-text response made by the proxy, carrying `x-request-id`.
pub fn local_response(status: StatusCode, body: String, id: &RequestId) -> Response<ProxyBody> {
    let len = body.len();
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(REQUEST_ID_NAME, id.header_value().clone());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_error_mapping() {
        assert_eq!(ProxyError::BadRequest("x").status(), 400);
        assert_eq!(ProxyError::ClientGone("x").status(), 499);
        assert_eq!(ProxyError::BodyTooLarge { limit: 1 }.status(), 413);
        assert_eq!(ProxyError::HeadersTooLarge { limit: 1 }.status(), 431);
        assert_eq!(ProxyError::UriTooLong { limit: 1 }.status(), 414);
        assert_eq!(ProxyError::NoRoute.status(), 404);
        let upstream = "app".to_string();
        assert_eq!(
            ProxyError::NoServer(crate::upstream::NoServer {
                upstream: upstream.clone(),
                why: crate::upstream::Unavailable::BreakersOpen,
            })
            .status(),
            503
        );
        let server: SocketAddr = ([127, 0, 0, 1], 1).into();
        assert_eq!(
            ProxyError::SendTimeout {
                upstream: upstream.clone(),
                server,
                timeout: std::time::Duration::from_secs(1),
            }
            .status(),
            504
        );
        assert_eq!(
            ProxyError::ResponseTimeout { upstream, server }.status(),
            504
        );
    }

    #[test]
    fn local_responses_carry_the_request_id() {
        let id = RequestId::generate();
        let resp = ProxyError::NoRoute.to_response(&id);
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.headers()[REQUEST_ID], *id.header_value());
    }
}
