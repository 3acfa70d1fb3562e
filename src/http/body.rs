//! `ProxyBody`: the one body type that flows through the proxy in both directions.
//!
//! An enum rather than a boxed trait object so the common cases (a streamed hyper body,
//! a small local response) cost no allocation. Streamed bodies can carry a byte limit
//! (`server.limits.max_body`); crossing it fails the stream with [`BodyTooLarge`],
//! which the request path turns into 413.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;

/// Boxed error type of bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body stream crossed `server.limits.max_body`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub struct BodyTooLarge {
    /// The configured limit in bytes.
    pub limit: u64,
}

/// The body of every request and response inside the proxy.
#[derive(Debug)]
pub enum ProxyBody {
    /// No body.
    Empty,
    /// A body already in memory (local responses, echo, cached entries).
    Full(Option<Bytes>),
    /// A body streamed from a peer, optionally limited to `limit` bytes.
    Streamed {
        inner: RequestBody,
        seen: u64,
        limit: Option<u64>,
    },
    /// An upstream response that returns its connection to the pool when done.
    Upstream(crate::upstream::client::UpstreamBody),
    /// Anything else (compression, teeing): one allocation, used only when asked for.
    Boxed(BoxBody<Bytes, BoxError>),
}

impl ProxyBody {
    /// The upstream response head as received, when this is an upstream's body that
    /// kept it so (see [`RawHead`](crate::http::RawHead)): its headers are not in the
    /// response's map.
    pub fn take_raw_head(&mut self) -> Option<Box<crate::http::RawHead>> {
        match self {
            ProxyBody::Upstream(body) => body.take_raw_head(),
            _ => None,
        }
    }

    /// An in-memory body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        if bytes.is_empty() {
            ProxyBody::Empty
        } else {
            ProxyBody::Full(Some(bytes))
        }
    }

    /// A streamed body with no limit.
    pub fn streamed(inner: Incoming) -> Self {
        ProxyBody::Streamed {
            inner: RequestBody::Hyper(inner),
            seen: 0,
            limit: None,
        }
    }

    /// A request body that fails with [`BodyTooLarge`] past `limit` bytes.
    pub fn limited(inner: RequestBody, limit: u64) -> Self {
        if let RequestBody::Empty = inner {
            return ProxyBody::Empty;
        }
        ProxyBody::Streamed {
            inner,
            seen: 0,
            limit: Some(limit),
        }
    }
}

/// A request body as the server hands it to the request path: read by hyper (HTTP/2,
/// upgrades) or by the server's own HTTP/1.1 connection (`server::h1`).
#[derive(Debug)]
pub enum RequestBody {
    /// The request has no body.
    Empty,
    Hyper(Incoming),
    Client(crate::server::h1::ClientBody),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Hyper(inner) => Pin::new(inner)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|e| Box::new(e) as BoxError))),
            RequestBody::Client(inner) => Pin::new(inner)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|e| Box::new(e) as BoxError))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Hyper(inner) => inner.is_end_stream(),
            RequestBody::Client(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Hyper(inner) => inner.size_hint(),
            RequestBody::Client(inner) => inner.size_hint(),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Empty => Poll::Ready(None),
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Streamed { inner, seen, limit } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let (Some(data), Some(limit)) = (frame.data_ref(), *limit) {
                        *seen += data.len() as u64;
                        if *seen > limit {
                            return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit }))));
                        }
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            ProxyBody::Upstream(inner) => Pin::new(inner).poll_frame(cx),
            ProxyBody::Boxed(inner) => Pin::new(inner).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Empty => true,
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Streamed { inner, .. } => inner.is_end_stream(),
            ProxyBody::Upstream(inner) => inner.is_end_stream(),
            ProxyBody::Boxed(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Empty => SizeHint::with_exact(0),
            ProxyBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ProxyBody::Streamed { inner, .. } => inner.size_hint(),
            ProxyBody::Upstream(inner) => inner.size_hint(),
            ProxyBody::Boxed(inner) => inner.size_hint(),
        }
    }
}

/// What was wrong with the client's request body, if `err` (or anything in its
/// source chain) is a failure to read it (a broken chunked body, a client that went
/// away mid-body): the client's fault, not the upstream's.
pub fn client_body_error(err: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    use crate::server::h1::BodyError;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(b) = e.downcast_ref::<BodyError>() {
            return Some(match b {
                BodyError::Chunk => "invalid chunked request body",
                BodyError::Framing => "request body framing not accepted",
                BodyError::Closed | BodyError::Io(_) => "request body cut short",
            });
        }
        cur = e.source();
    }
    None
}

/// The limit that was crossed, if `err` (or anything in its source chain) is a
/// [`BodyTooLarge`].
pub fn body_too_large(err: &(dyn std::error::Error + 'static)) -> Option<u64> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<BodyTooLarge>() {
            return Some(t.limit);
        }
        cur = e.source();
    }
    None
}
