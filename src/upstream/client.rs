//! Sending one request to one server: a pooled connection if there is a live one,
//! otherwise a new connection within `connect_timeout`; the response head must arrive
//! within `response_timeout`. A request that a pooled connection hands back unsent
//! (the server closed it at the same moment) is sent again on a fresh connection, so a
//! stale keep-alive connection never turns into a 502.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::UpstreamConfig;
use crate::http::ProxyBody;

use super::pool::{Pool, Sender};

/// Why a send failed, before it is mapped to a `ProxyError` by the caller.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made; the request was not sent and is handed back.
    Connect(std::io::Error, Box<Request<ProxyBody>>),
    /// The connect did not finish in time; the request is handed back.
    ConnectTimeout(Box<Request<ProxyBody>>),
    /// The request was (perhaps partly) sent and failed.
    Upstream(hyper::Error),
    /// A fresh connection closed before the request could be written.
    Closed,
    /// No response head within the response timeout.
    ResponseTimeout,
}

/// Sends `req` to `addr` and waits up to `response_timeout` for the response head.
pub async fn send(
    pool: &Arc<Pool>,
    addr: SocketAddr,
    cfg: &UpstreamConfig,
    response_timeout: Duration,
    mut req: Request<ProxyBody>,
) -> Result<Response<UpstreamBody>, SendError> {
    while let Some(mut sender) = pool.checkout(addr, cfg.pool.idle_timeout) {
        // A pooled connection becomes ready once its connection task has seen the
        // previous response end; one that closed meanwhile fails here, unsent.
        if sender.ready().await.is_err() {
            continue;
        }
        match try_send(pool, addr, cfg, response_timeout, sender, req).await {
            Ok(resp) => return Ok(resp),
            Err(Retry::Unsent(back)) => req = *back,
            Err(Retry::Failed(e)) => return Err(e),
        }
    }
    // Boxed: a new connection is the rare path, and the handshake's future is large
    // (inline, it would grow every request's future).
    let sender = match Box::pin(connect(addr, cfg)).await {
        Ok(sender) => sender,
        Err(ConnectFailure::Io(e)) => return Err(SendError::Connect(e, Box::new(req))),
        Err(ConnectFailure::Timeout) => return Err(SendError::ConnectTimeout(Box::new(req))),
    };
    pool.count_opened();
    match try_send(pool, addr, cfg, response_timeout, sender, req).await {
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
    addr: SocketAddr,
    cfg: &UpstreamConfig,
    response_timeout: Duration,
    mut sender: Sender,
    req: Request<ProxyBody>,
) -> Result<Response<UpstreamBody>, Retry> {
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
    // The connection goes back into the pool when the response body has been read to
    // the end (see `UpstreamBody`); a body abandoned half-way takes it down with it.
    let back = PoolReturn {
        pool: Arc::clone(pool),
        addr,
        sender,
        max_idle: cfg.pool.max_idle_per_server,
    };
    Ok(resp.map(|body| UpstreamBody {
        inner: body,
        back: Some(back),
    }))
}

/// What is needed to put a connection back into its pool.
struct PoolReturn {
    pool: Arc<Pool>,
    addr: SocketAddr,
    sender: Sender,
    max_idle: usize,
}

impl std::fmt::Debug for PoolReturn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolReturn")
            .field("addr", &self.addr)
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
            back.pool.checkin(back.addr, back.sender, back.max_idle);
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

enum ConnectFailure {
    Io(std::io::Error),
    Timeout,
}

async fn connect(addr: SocketAddr, cfg: &UpstreamConfig) -> Result<Sender, ConnectFailure> {
    let stream = match tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(ConnectFailure::Timeout),
        Ok(Err(e)) => return Err(ConnectFailure::Io(e)),
        Ok(Ok(stream)) => stream,
    };
    // Small requests and responses must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ConnectFailure::Io(std::io::Error::other(e)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(target: "proxycache::upstream", %addr, error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}
