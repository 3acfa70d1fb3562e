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
) -> Result<Response<Incoming>, SendError> {
    if let Some(sender) = pool.checkout(addr, cfg.pool.idle_timeout) {
        match try_send(pool, addr, cfg, response_timeout, sender, req).await {
            Ok(resp) => return Ok(resp),
            Err(Retry::Unsent(back)) => req = *back,
            Err(Retry::Failed(e)) => return Err(e),
        }
    }
    let sender = match connect(addr, cfg).await {
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
) -> Result<Response<Incoming>, Retry> {
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
    // The connection is reusable once the response body has been read to the end;
    // hyper signals that through `ready()`. Waiting for it off the request path keeps
    // the pool free of half-read connections.
    let pool = Arc::clone(pool);
    let max_idle = cfg.pool.max_idle_per_server;
    tokio::spawn(async move {
        if sender.ready().await.is_ok() {
            pool.checkin(addr, sender, max_idle);
        }
    });
    Ok(resp)
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
