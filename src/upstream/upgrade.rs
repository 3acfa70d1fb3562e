//! Sending an HTTP/1.1 `Upgrade` request (WebSocket and others) to one server: always
//! on a fresh connection of its own — never taken from the pool and never put back —
//! driven with upgrades on, so that a `101` answer hands the socket over to whoever
//! calls `hyper::upgrade::on` on the response. A `101` that switches to a protocol the
//! request did not list in its `Upgrade` (or names none) is refused (RFC 9110 7.8): an
//! upstream error (502), its connection dropped, not tunnelled. Any other answer is an
//! ordinary response, and the connection closes when its body ends. A server that does
//! not speak HTTP/1.1 (an `h2`-only TLS server refusing the `http/1.1`-only ALPN, or one
//! that answers in HTTP/2) is `SendError::Unsupported`: a mismatch the breaker does
//! not count (`proxy::upgrade` refuses plain-h2c sets before connecting).
//!
//! Owns: that one connection. Must not touch: the tunnel (see `proxy::upgrade`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
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
    let asked: Vec<HeaderValue> = req
        .headers()
        .get_all(header::UPGRADE)
        .iter()
        .cloned()
        .collect();
    let resp = drive(TokioIo::new(stream), pool, ep.addr, response_timeout, req).await?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        // Refused, the response goes and with it the pending upgrade: the socket hyper
        // hands over is dropped unread, which closes the connection.
        switched_as_asked(&asked, resp.headers()).map_err(|e| SendError::Upstream(Box::new(e)))?;
    }
    Ok(resp)
}

/// Why a server's `101` is not taken.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("upstream switched protocols without naming the protocol in Upgrade")]
    Unnamed,
    #[error(
        "upstream switched to {offered:?}, not to a protocol the request asked for ({asked:?})"
    )]
    Unasked { offered: String, asked: String },
}

/// Whether a `101`'s `Upgrade` names only protocols the request listed (RFC 9110
/// 7.8: a server must not switch to any other). Names match in any case; a version
/// must match too when the request gave one (`foo/2` is not `foo/3`, nor `foo`),
/// and any goes when it did not (`foo` takes `foo/2`).
fn switched_as_asked(asked: &[HeaderValue], answered: &HeaderMap) -> Result<(), SwitchError> {
    let mut offered = protocols(answered.get_all(header::UPGRADE).iter()).peekable();
    if offered.peek().is_none() {
        return Err(SwitchError::Unnamed);
    }
    let listed = |(name, version): (&[u8], Option<&[u8]>)| {
        protocols(asked.iter()).any(|(n, v)| {
            n.eq_ignore_ascii_case(name)
                && v.is_none_or(|v| version.is_some_and(|w| w.eq_ignore_ascii_case(v)))
        })
    };
    if offered.all(listed) {
        return Ok(());
    }
    let words = |values: &mut dyn Iterator<Item = &HeaderValue>| {
        values
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(SwitchError::Unasked {
        offered: words(&mut answered.get_all(header::UPGRADE).iter()),
        asked: words(&mut asked.iter()),
    })
}

/// The protocols `Upgrade` values list, as name and version (`name/version`).
fn protocols<'a>(
    values: impl Iterator<Item = &'a HeaderValue>,
) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> {
    values
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut parts = p.splitn(2, |b| *b == b'/');
            (parts.next().unwrap_or(p), parts.next())
        })
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

#[cfg(test)]
mod tests {
    use http::header::{HeaderMap, HeaderValue, UPGRADE};

    use super::{switched_as_asked, SwitchError};

    fn check(asked: &[&'static str], answered: &[&'static str]) -> Result<(), SwitchError> {
        let asked: Vec<HeaderValue> = asked.iter().map(|v| HeaderValue::from_static(v)).collect();
        let mut headers = HeaderMap::new();
        for v in answered {
            headers.append(UPGRADE, HeaderValue::from_static(v));
        }
        switched_as_asked(&asked, &headers)
    }

    #[test]
    fn a_switch_names_only_protocols_the_request_listed() {
        assert!(check(&["websocket"], &["websocket"]).is_ok());
        assert!(check(&["websocket"], &["WebSocket"]).is_ok());
        assert!(check(&["foo/2, bar"], &["foo/2"]).is_ok());
        assert!(check(&["foo/2", "bar"], &["bar/3"]).is_ok());
        assert!(check(&["foo/2, bar"], &["bar", "foo/2"]).is_ok());
        assert!(check(&["foo/x2"], &["FOO/X2"]).is_ok());

        assert!(matches!(
            check(&["websocket"], &[]),
            Err(SwitchError::Unnamed)
        ));
        assert!(matches!(
            check(&["websocket"], &[" , "]),
            Err(SwitchError::Unnamed)
        ));
        for answered in ["h2c", "foo", "websocket, h2c", "websockets"] {
            assert!(
                matches!(
                    check(&["websocket"], &[answered]),
                    Err(SwitchError::Unasked { .. })
                ),
                "{answered}"
            );
        }
        assert!(check(&["foo/2"], &["foo/3"]).is_err());
        assert!(check(&["foo/2"], &["foo"]).is_err());
        assert!(check(&[], &["foo"]).is_err());
    }
}
