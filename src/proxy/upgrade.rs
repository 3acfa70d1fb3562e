//! HTTP/1.1 `Upgrade` (WebSocket and other protocols) on the request path.
//!
//! A request with `Connection: upgrade` and `Upgrade: X` is routed and runs the
//! request phase like any other (a module may reject it, or remove `Upgrade` to make
//! it an ordinary request). It then goes to the upstream with `Connection` and
//! `Upgrade` kept — the one case where those hop-by-hop headers cross the proxy — on a
//! connection of its own (`upstream::upgrade`). When the upstream answers `101`, the
//! client gets the `101` and both sockets become one byte tunnel (`server::relay`)
//! until either side closes or `server.timeouts.idle` passes in silence; a `101` to a
//! protocol the request did not ask for never gets here (`upstream::upgrade` makes it
//! a 502). Any other answer is passed through as a normal response. A Lua hook's
//! `std.proxy.forward` of such a request sends it the same way ([`send`]) and gets the
//! `101`; the upstream's half of the switch ([`Switched`]) goes with the response
//! object, and the tunnel opens if the request is answered with it (`finish`).
//!
//! `h2c` is never tunnelled: a tunnelled h2c connection would carry requests that no
//! module ever sees ("h2c smuggling"), so such a request is proxied as a plain one.
//! HTTP/2 extended CONNECT (RFC 8441) is not supported, so an upgrade to a set that
//! speaks HTTP/2 without TLS (h2c) is refused with `501` before any connect, and one
//! an HTTP/2-only TLS server turns down is `501` too: neither counts against the
//! server's breaker. A handshake's body goes on as the client framed it (chunked
//! when its length is unknown). A module that turns the `101` into another status
//! in the response phase gets the upgrade's headers taken off again.
//!
//! Owns: deciding what is an upgrade and starting its tunnel. Must not touch: the copy
//! loop (`server::relay`), the upstream connection (`upstream::upgrade`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::completion::Completion;
use super::transport::Transport;
use super::{phases, Outbound};
use crate::http::ProxyError;
use crate::http::{hygiene, ProxyBody};
use crate::server::relay::{self, ConnSlot};
use crate::server::Shared;
use crate::upstream::client::SendError;
use crate::upstream::connect::Endpoint;
use crate::upstream::pool::Pool;
use crate::upstream::InflightGuard;

/// The transport of an upgrade to `protocol`: a connection of its own with upgrades
/// enabled, `Connection`/`Upgrade` kept both ways.
#[derive(Debug)]
pub struct Upgrading {
    pub protocol: HeaderValue,
}

impl Transport for Upgrading {
    type Body = Incoming;

    fn send<'a>(
        &'a self,
        pool: &'a Arc<Pool>,
        ep: &'a Arc<Endpoint>,
        timeout: Duration,
        req: Box<Request<ProxyBody>>,
        _wire: Option<&'a crate::http::hygiene::Forwarding>,
    ) -> impl Future<Output = Result<Response<Incoming>, SendError>> + Send + 'a {
        crate::upstream::upgrade::send(pool, ep, timeout, *req)
    }

    fn body(body: Incoming) -> ProxyBody {
        ProxyBody::streamed(body)
    }

    /// Also frames a body: hygiene took `Transfer-Encoding` away, and hyper sends a
    /// `GET` body of unknown length with neither framing header — that is, not at all.
    fn outgoing(&self, req: &mut Request<ProxyBody>) {
        restore_headers(req.headers_mut(), self.protocol.clone());
        if crate::http::lookup::has(req.headers(), &header::CONTENT_LENGTH)
            || http_body::Body::is_end_stream(req.body())
        {
            return;
        }
        let framing = match http_body::Body::size_hint(req.body()).exact() {
            Some(0) => return,
            Some(n) => (header::CONTENT_LENGTH, HeaderValue::from(n)),
            None => (
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            ),
        };
        req.headers_mut().insert(framing.0, framing.1);
    }

    /// A `101` keeps `Connection`/`Upgrade` (the upstream's protocol, which
    /// `upstream::upgrade` checked is one the request asked for) and loses any body
    /// length; other answers get the usual hygiene.
    fn incoming(&self, resp: &mut http::response::Parts) {
        let upstream_protocol = resp.headers.get(header::UPGRADE).cloned();
        hygiene::strip_hop_by_hop(&mut resp.headers);
        if resp.status != StatusCode::SWITCHING_PROTOCOLS {
            return;
        }
        resp.headers.remove(header::CONTENT_LENGTH);
        let protocol = upstream_protocol.unwrap_or_else(|| self.protocol.clone());
        restore_headers(&mut resp.headers, protocol);
    }
}

/// The client's half of a pending upgrade.
pub struct ClientUpgrade(OnUpgrade);

impl std::fmt::Debug for ClientUpgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientUpgrade")
    }
}

/// Takes the client's pending upgrade when the request asks for one the proxy
/// tunnels (HTTP/1.1, `Connection: upgrade`, an `Upgrade` that is not `h2c`).
pub fn take<B>(req: &mut Request<B>) -> Option<ClientUpgrade> {
    if req.version() != Version::HTTP_11 || protocol(req.headers()).is_none() {
        return None;
    }
    Some(ClientUpgrade(hyper::upgrade::on(req)))
}

/// The protocol the request asks to switch to, if it (still) asks for an upgrade the
/// proxy tunnels.
pub fn protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    // `Upgrade` first: almost no request has one.
    let upgrade = crate::http::lookup::get(headers, &header::UPGRADE)?;
    let connection_says_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let h2c = upgrade.to_str().map_or(true, |v| {
        v.split(',').any(|p| p.trim().eq_ignore_ascii_case("h2c"))
    });
    (connection_says_upgrade && !h2c).then(|| upgrade.clone())
}

/// Puts back, after hop-by-hop stripping, the two headers an upgrade needs on the
/// next hop.
pub fn restore_headers(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Takes off the headers that only a `101` carries (the ones `Upgrading::incoming`
/// put back, and the WebSocket handshake's answer).
fn unswitch(headers: &mut HeaderMap) {
    headers.remove(header::UPGRADE);
    headers.remove(header::CONNECTION);
    headers.remove(header::SEC_WEBSOCKET_ACCEPT);
}

/// An upgrade about to be sent.
pub(super) struct Diverted {
    client: ClientUpgrade,
    protocol: HeaderValue,
    req: Box<Request<ProxyBody>>,
    host: Option<HeaderValue>,
}

/// What the request path sends upstream: the request and its host.
type ToSend = (Box<Request<ProxyBody>>, Option<HeaderValue>);

/// After the request phase: `Err` with the upgrade when the client asked for one and
/// the request (which modules may have changed) still asks for it, else the request.
pub(super) fn divert(
    client: Option<ClientUpgrade>,
    req: Box<Request<ProxyBody>>,
    host: Option<HeaderValue>,
) -> Result<ToSend, Box<Diverted>> {
    let Some(client) = client else {
        return Ok((req, host));
    };
    match protocol(req.headers()) {
        Some(protocol) => Err(Box::new(Diverted {
            client,
            protocol,
            req,
            host,
        })),
        None => Ok((req, host)),
    }
}

/// Steps 4-7 of the request path for an upgrade — [`send`], the response phase, and
/// on a `101` the tunnel ([`finish`]). `timing` is the response timeout and connect
/// retries.
pub(super) async fn forward(
    diverted: Diverted,
    out: Outbound<'_>,
    target: usize,
    timing: (Option<Duration>, Option<u32>),
    done: &mut Completion,
) -> Result<Response<ProxyBody>, ProxyError> {
    let Diverted {
        client,
        protocol,
        req,
        host,
    } = diverted;
    let (generation, worker) = (out.generation, out.worker);
    let out = Outbound {
        waiting: done.access.as_deref_mut().map(|entry| &mut entry.waiting),
        ..out
    };
    let (mut resp, guard) = send(out, target, req, host, protocol, timing).await?;
    done.inflight = Some(guard);
    let was = resp.status();
    if let Some(state) = done.script.as_mut() {
        phases::response_phase(generation, state, &mut resp).await?;
    }
    let idle = generation.config.server.timeouts.idle;
    finish(client, was, &mut resp, done, &worker.shared, idle);
    Ok(resp)
}

/// Sends an upgrade request to set `target` on a connection of its own (an
/// `Upgrading` transport), `Connection` and `Upgrade: protocol` kept: steps 4-5 for an
/// upgrade, for the request path and for Lua's `std.proxy.forward`. A `101` comes back
/// with the upstream's pending upgrade in its extensions ([`Switched::take`]).
/// `timing` is the response timeout and connect retries.
pub async fn send(
    out: Outbound<'_>,
    target: usize,
    req: Box<Request<ProxyBody>>,
    host: Option<HeaderValue>,
    protocol: HeaderValue,
    timing: (Option<Duration>, Option<u32>),
) -> Result<(Response<ProxyBody>, InflightGuard), ProxyError> {
    let generation = out.generation;
    let set = generation
        .upstreams
        .sets
        .get(target)
        .ok_or(ProxyError::NoRoute)?;
    if set.config.http2 && !set.config.tls {
        // h2c has no upgrade (and no extended CONNECT here): sent as HTTP/1.1 it would
        // only meet HTTP/2 bytes, and a breaker that blamed the server.
        return Err(ProxyError::UpgradeUnsupported {
            upstream: set.name().to_owned(),
            reason: "an Upgrade cannot reach a set that speaks HTTP/2 without TLS (h2c)".into(),
        });
    }
    let key = super::pick_key(set, &req, out.client_ip);
    // hyper sends upgrades: the forwarding headers go into the map.
    let (mut req, _) = super::upstream_request(req, generation, out.conn, host, set, false);
    let via = Upgrading { protocol };
    via.outgoing(&mut req);
    let sending = super::Sending {
        timeout: timing.0.unwrap_or(set.config.response_timeout),
        retries: timing.1.unwrap_or(super::DEFAULT_CONNECT_RETRIES),
        wire: None,
    };
    let (resp, guard) =
        super::forward(&via, set, &key, req, out.worker, sending, out.waiting).await?;
    let (mut head, body) = resp.into_parts();
    via.incoming(&mut head);
    Ok((Response::from_parts(head, body), guard))
}

/// An upgrade's answer once the response phase has run (`was` its status before): a
/// `101` starts the tunnel, which holds the server's in-flight guard for its whole
/// life; a `101` a module turned into another status loses the upgrade's headers.
/// Any other answer drops both pending upgrades and goes out as a normal response,
/// the guard left with `done` until its body ends (also when a module answered the
/// request some other way: `std.respond`, a forward the script made plain).
pub(super) fn finish(
    client: ClientUpgrade,
    was: StatusCode,
    resp: &mut Response<ProxyBody>,
    done: &mut Completion,
    shared: &Arc<Shared>,
    idle: Duration,
) {
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        if was == StatusCode::SWITCHING_PROTOCOLS {
            // A module answered otherwise: no switch, so none of its headers.
            unswitch(resp.headers_mut());
        }
        return;
    }
    if let (Some(entry), Some(g)) = (done.access.as_mut(), done.inflight.as_ref()) {
        entry.server = Some(g.server().label().to_owned());
    }
    start_tunnel(client, resp, done.inflight.take(), shared, idle);
}

/// The upstream's half of a `101` that a module holds before it answers with it (a
/// Lua `std.proxy.forward` of an upgrade request): the connection hyper hands over
/// once the switch is done, and the protocol switched to.
pub struct Switched {
    upstream: OnUpgrade,
    protocol: HeaderValue,
}

impl std::fmt::Debug for Switched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Switched")
            .field("protocol", &self.protocol)
            .finish()
    }
}

impl Switched {
    /// Takes the upstream's pending upgrade out of a `101` from [`send`] (`None` for
    /// any other answer, which is an ordinary response).
    pub fn take(resp: &mut Response<ProxyBody>) -> Option<Switched> {
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return None;
        }
        let protocol = resp.headers().get(header::UPGRADE).cloned()?;
        Some(Switched {
            upstream: hyper::upgrade::on(&mut *resp),
            protocol,
        })
    }

    /// Gives a module's answer (its hop-by-hop headers already stripped) back what the
    /// switch needs: a `101` gets `Connection`/`Upgrade` and the pending upgrade the
    /// tunnel takes ([`start_tunnel`]); an answer the module gave another status
    /// loses the upgrade's headers, and dropping the upgrade closes the upstream's
    /// connection.
    pub fn answer(self, resp: &mut Response<ProxyBody>) {
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            unswitch(resp.headers_mut());
            return;
        }
        restore_headers(resp.headers_mut(), self.protocol);
        resp.extensions_mut().insert(self.upstream);
    }
}

/// When the answer going to the client is a `101`: spawns the tunnel between the
/// client's connection and the upstream's, which starts once hyper has written the
/// `101`. The server's in-flight guard and a connection slot are held for the
/// tunnel's life. Any other answer drops both pending upgrades (the upstream
/// connection closes after its body).
pub fn start_tunnel(
    client: ClientUpgrade,
    resp: &mut Response<ProxyBody>,
    guard: Option<InflightGuard>,
    shared: &Arc<Shared>,
    idle: Duration,
) {
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    let upstream = hyper::upgrade::on(&mut *resp);
    *resp.body_mut() = ProxyBody::Empty;
    // The client's HTTP connection gives its slot back once hyper hands the socket
    // over; the tunnel holds its own so shutdown waits for it.
    let slot = ConnSlot::take(shared);
    tokio::spawn(async move {
        let _slot = slot;
        let _guard = guard;
        let both = async { tokio::try_join!(client.0, upstream) };
        let (c, u) = match tokio::time::timeout(idle, both).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                tracing::debug!(target: "proxycache::proxy", error = %e, "upgrade did not complete");
                return;
            }
            Err(_) => {
                tracing::debug!(target: "proxycache::proxy", "upgrade did not complete in time");
                return;
            }
        };
        match relay::relay(TokioIo::new(c), TokioIo::new(u), idle, &Default::default()).await {
            Ok((up, down)) => {
                tracing::debug!(target: "proxycache::proxy", up, down, "tunnel closed")
            }
            Err(e) => tracing::debug!(target: "proxycache::proxy", error = %e, "tunnel ended"),
        }
    });
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue};

    use super::protocol;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn an_upgrade_needs_both_headers() {
        let ws = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(protocol(&ws), Some(HeaderValue::from_static("websocket")));
        assert_eq!(protocol(&headers(&[("upgrade", "websocket")])), None);
        assert_eq!(protocol(&headers(&[("connection", "upgrade")])), None);
    }

    #[test]
    fn h2c_is_never_tunnelled() {
        let h = headers(&[
            ("connection", "upgrade, http2-settings"),
            ("upgrade", "h2c"),
        ]);
        assert_eq!(protocol(&h), None);
        let h = headers(&[("connection", "upgrade"), ("upgrade", "websocket, H2C")]);
        assert_eq!(protocol(&h), None);
    }
}
