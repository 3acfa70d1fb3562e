//! Sending one request to one server: a pooled connection if there is a live one,
//! otherwise a new connection (see `connect`) within `connect_timeout`; the response
//! head must arrive within `response_timeout`. A request that a pooled connection hands
//! back unsent (the server closed it at the same moment) is sent again on a fresh
//! connection, so a stale keep-alive connection never turns into a 502.
//!
//! Requests arrive here in HTTP/1.1 shape (origin-form URI, `Host`); one going out on
//! an HTTP/2 connection is reshaped (`:scheme` and `:authority` from the endpoint and
//! `Host`).

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;

use crate::http::ProxyBody;

use super::connect::{self, ConnectFailure, Endpoint};
use super::pool::{Pool, Sender};

/// Why a send failed, before it is mapped to a `ProxyError` by the caller.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made; the request was not sent and is handed back.
    Connect(std::io::Error, Box<Request<ProxyBody>>),
    /// The connect did not finish in time; the request is handed back.
    ConnectTimeout(Box<Request<ProxyBody>>),
    /// The TLS handshake failed (the reason in words); the request is handed back.
    Tls(String, Box<Request<ProxyBody>>),
    /// The request was (perhaps partly) sent and failed.
    Upstream(hyper::Error),
    /// A fresh connection closed before the request could be written.
    Closed,
    /// No response head within the response timeout.
    ResponseTimeout,
}

/// Sends `req` to `ep` and waits up to `response_timeout` for the response head.
pub async fn send(
    pool: &Arc<Pool>,
    ep: &Arc<Endpoint>,
    response_timeout: Duration,
    mut req: Request<ProxyBody>,
) -> Result<Response<UpstreamBody>, SendError> {
    while let Some(mut sender) = pool.checkout(&ep.key, ep.pool.idle_timeout) {
        // A pooled connection becomes ready once its connection task has seen the
        // previous response end; one that closed meanwhile fails here, unsent.
        if sender.ready().await.is_err() {
            continue;
        }
        match try_send(pool, ep, response_timeout, sender, req).await {
            Ok(resp) => return Ok(resp),
            Err(Retry::Unsent(back)) => req = *back,
            Err(Retry::Failed(e)) => return Err(e),
        }
    }
    // Boxed: a new connection is the rare path, and the handshake's future is large
    // (inline, it would grow every request's future).
    let sender = match Box::pin(connect::connect(ep)).await {
        Ok(sender) => sender,
        Err(ConnectFailure::Io(e)) => return Err(SendError::Connect(e, Box::new(req))),
        Err(ConnectFailure::Timeout) => return Err(SendError::ConnectTimeout(Box::new(req))),
        Err(ConnectFailure::Tls(reason)) => return Err(SendError::Tls(reason, Box::new(req))),
    };
    pool.count_opened();
    if let Sender::H2(shared) = &sender {
        // Shared at once: requests arriving meanwhile multiplex over it.
        pool.checkin(
            &ep.key,
            Sender::H2(shared.clone()),
            ep.pool.max_idle_per_server,
        );
    }
    match try_send(pool, ep, response_timeout, sender, req).await {
        Ok(resp) => Ok(resp),
        Err(Retry::Unsent(_)) => Err(SendError::Closed),
        Err(Retry::Failed(e)) => Err(e),
    }
}

enum Retry {
    Unsent(Box<Request<ProxyBody>>),
    Failed(SendError),
}

async fn try_send(
    pool: &Arc<Pool>,
    ep: &Arc<Endpoint>,
    response_timeout: Duration,
    mut sender: Sender,
    req: Request<ProxyBody>,
) -> Result<Response<UpstreamBody>, Retry> {
    let req = if sender.is_h2() {
        for_h2(req, ep)
    } else {
        for_h1(req)
    };
    let fut = sender.try_send_request(req);
    let resp = match tokio::time::timeout(response_timeout, fut).await {
        Err(_) => return Err(Retry::Failed(SendError::ResponseTimeout)),
        Ok(Ok(resp)) => resp,
        Ok(Err(mut e)) => {
            return Err(match e.take_message() {
                Some(req) => Retry::Unsent(Box::new(req)),
                None => Retry::Failed(SendError::Upstream(e.into_error())),
            })
        }
    };
    // An HTTP/1.1 connection goes back into the pool when the response body has been
    // read to the end (see `UpstreamBody`); a body abandoned half-way takes it down
    // with it. An HTTP/2 connection is already shared.
    let back = PoolReturn {
        pool: Arc::clone(pool),
        ep: Arc::clone(ep),
        sender,
    };
    Ok(resp.map(|body| UpstreamBody {
        inner: body,
        back: Some(back),
    }))
}

/// Reshapes an HTTP/1.1-shaped request for an HTTP/2 connection: absolute URI
/// (`:scheme`, `:authority` from `Host` or the server's address), no `Host`.
fn for_h2(mut req: Request<ProxyBody>, ep: &Endpoint) -> Request<ProxyBody> {
    if req.version() == Version::HTTP_2 {
        return req;
    }
    let host = req.headers_mut().remove(header::HOST);
    let authority = host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .unwrap_or(&ep.authority);
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let absolute = Uri::builder()
        .scheme(ep.scheme())
        .authority(authority)
        .path_and_query(path)
        .build();
    match absolute {
        Ok(uri) => *req.uri_mut() = uri,
        // An authority that does not parse: the server's own address does.
        Err(_) => {
            if let Ok(uri) = Uri::builder()
                .scheme(ep.scheme())
                .authority(ep.authority.as_str())
                .path_and_query(path)
                .build()
            {
                *req.uri_mut() = uri;
            }
        }
    }
    *req.version_mut() = Version::HTTP_2;
    req
}

/// The reverse of [`for_h2`], for a request handed back by an HTTP/2 connection and
/// retried on an HTTP/1.1 one (a server that stopped offering `h2`).
fn for_h1(mut req: Request<ProxyBody>) -> Request<ProxyBody> {
    if req.version() != Version::HTTP_2 {
        return req;
    }
    if let Some(authority) = req.uri().authority() {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            req.headers_mut().entry(header::HOST).or_insert(host);
        }
    }
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    if let Ok(origin) = path.parse() {
        *req.uri_mut() = origin;
    }
    *req.version_mut() = Version::HTTP_11;
    req
}

/// What is needed to put a connection back into its pool.
struct PoolReturn {
    pool: Arc<Pool>,
    ep: Arc<Endpoint>,
    sender: Sender,
}

impl std::fmt::Debug for PoolReturn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolReturn")
            .field("key", &self.ep.key)
            .finish()
    }
}

/// An upstream response body that returns its connection to the pool once read to
/// the end — without a task per request.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    back: Option<PoolReturn>,
}

impl UpstreamBody {
    fn give_back(&mut self) {
        if let Some(back) = self.back.take() {
            back.pool
                .checkin(&back.ep.key, back.sender, back.ep.pool.max_idle_per_server);
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(None) => this.give_back(),
            std::task::Poll::Ready(Some(Err(_))) => this.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // hyper stops polling a body that says it has ended, so the end may only be
        // visible here. Anything else is a half-read body: its connection is dropped.
        if http_body::Body::is_end_stream(&self.inner) {
            self.give_back();
        }
    }
}
