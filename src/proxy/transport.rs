//! How a request reaches the server `forward` picked: `Pooled` (the worker's
//! keep-alive connections, for every ordinary request) or `Upgrading` (a connection
//! of its own that can switch protocols, see `upgrade`). A trait rather than a flag,
//! so that the ordinary request path is compiled without the upgrade path in its
//! future (every request pays for that future's size).
//!
//! Owns: the per-transport steps around a send. Must not touch: picking, retries.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};

use crate::http::hygiene::{self, Forwarding};
use crate::http::ProxyBody;
use crate::upstream::client::{self, SendError, UpstreamBody};
use crate::upstream::connect::Endpoint;
use crate::upstream::pool::Pool;

/// One way of sending a request to a server.
pub trait Transport: Sync {
    /// The response body the transport yields.
    type Body;

    /// Sends `req` to the server `ep`; the response head must come within `timeout`.
    /// `wire`: forwarding headers to write into the head (not in `req`'s map).
    fn send<'a>(
        &'a self,
        pool: &'a Arc<Pool>,
        ep: &'a Arc<Endpoint>,
        timeout: Duration,
        req: Box<Request<ProxyBody>>,
        wire: Option<&'a Forwarding>,
    ) -> impl Future<Output = Result<Response<Self::Body>, SendError>> + Send + 'a;

    /// The body as the proxy carries it.
    fn body(body: Self::Body) -> ProxyBody;

    /// Last touches to the upstream request, after header hygiene.
    fn outgoing(&self, _req: &mut Request<ProxyBody>) {}

    /// Header hygiene on the upstream's response head.
    fn incoming(&self, resp: &mut http::response::Parts) {
        hygiene::strip_hop_by_hop(&mut resp.headers);
    }
}

/// The worker's pooled keep-alive connections.
pub struct Pooled;

impl Transport for Pooled {
    type Body = UpstreamBody;

    fn send<'a>(
        &'a self,
        pool: &'a Arc<Pool>,
        ep: &'a Arc<Endpoint>,
        timeout: Duration,
        req: Box<Request<ProxyBody>>,
        wire: Option<&'a Forwarding>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, SendError>> + Send + 'a {
        client::send(pool, ep, timeout, req, wire)
    }

    fn body(body: UpstreamBody) -> ProxyBody {
        ProxyBody::Upstream(body)
    }
}
