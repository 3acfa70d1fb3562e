//! Sending an HTTP/1.1 `Upgrade` request (WebSocket and others) to one server: always
//! on a fresh connection of its own — never taken from the pool and never put back —
//! driven with upgrades on, so that a `101` answer hands the socket over to whoever
//! calls `hyper::upgrade::on` on the response. Any other answer is an ordinary
//! response, and the connection closes when its body ends. A server that does not
//! speak HTTP/1.1 (an `h2`-only TLS server refusing the `http/1.1`-only ALPN, or one
//! that answers in HTTP/2) is `SendError::Unsupported`: a mismatch the breaker does
//! not count (`proxy::upgrade` refuses plain-h2c sets before connecting).
//!
//! Owns: that one connection. Must not touch: the tunnel (see `proxy::upgrade`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::http::ProxyBody;

use super::client::SendError;
use super::connect::Endpoint;
use super::pool::Pool;

/// Connects to `ep` (TCP, then TLS when the set has `tls = true`, see
/// `connect::open_stream`) within its `connect_timeout`, sends `req` over HTTP/1.1 and waits up to `response_timeout`
/// for the response head.
pub async fn send(
    pool: &Arc<Pool>,
    ep: &Endpoint,
    response_timeout: Duration,
    req: Request<ProxyBody>,
) -> Result<Response<Incoming>, SendError> {
    // Boxed: the connect future is large and upgrades are rare.
    let stream = match Box::pin(super::connect::open_stream(ep)).await {
        Ok(stream) => stream,
        Err(super::connect::ConnectFailure::NoCommonProtocol(reason)) => {
            return Err(SendError::Unsupported(format!(
                "{reason}: an upgrade needs HTTP/1.1"
            )))
        }
        Err(failure) => return Err(super::client::connect_failed(failure, Box::new(req))),
    };
    // (The stream offered only `http/1.1` in ALPN, also to `http2 = true` sets: an
    // upgrade cannot ride an HTTP/2 connection.)
    drive(TokioIo::new(stream), pool, ep.addr, response_timeout, req).await
}

async fn drive<T>(
    io: TokioIo<T>,
    pool: &Arc<Pool>,
    addr: SocketAddr,
    response_timeout: Duration,
    req: Request<ProxyBody>,
) -> Result<Response<Incoming>, SendError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(io).await {
        Ok(pair) => pair,
        Err(e) => return Err(SendError::Connect(std::io::Error::other(e), Box::new(req))),
    };
    pool.count_opened();
    tokio::spawn(async move {
        // With upgrades: on a 101 the task ends by handing the socket to the response.
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(target: "proxycache::upstream", %addr, error = %e, "upgrade connection ended");
        }
    });
    match tokio::time::timeout(response_timeout, sender.send_request(req)).await {
        Err(_) => Err(SendError::ResponseTimeout),
        // An answer that is not HTTP/1.x at all: an HTTP/2-only server (hyper says
        // only this much of a bad version).
        Ok(Err(e)) if e.is_parse() && e.to_string().contains("HTTP version") => {
            Err(SendError::Unsupported(format!(
                "the server does not answer in HTTP/1.1 ({e}): an upgrade needs HTTP/1.1"
            )))
        }
        Ok(Err(e)) => Err(SendError::Upstream(Box::new(e))),
        Ok(Ok(resp)) => Ok(resp),
    }
}
