//! `ProxyBody`: the one body type that flows through the proxy in both directions.
//!
//! An enum rather than a boxed trait object so the common cases (a streamed hyper body,
//! a small local response) cost no allocation. Streamed bodies can carry a byte limit
//! (`server.limits.max_body`); crossing it fails the stream with [`BodyTooLarge`],
//! which the request path turns into 413.
//!
//! A client's request body that fails, whichever protocol it came over, fails with a
//! [`ClientBodyError`] (made in [`RequestBody`]): whoever reads it later (an upstream
//! client, a Lua hook) can tell the client's fault from the server's by that type
//! alone ([`client_body_error`]).
//!
//! A request body the proxy reads itself (the echo upstream, a Lua hook's
//! `req:body()`) is read through [`patient`], which fails it with [`BodyStalled`]
//! once it has made no progress for a while: a client that announces a body and sends
//! none of it must not hold its connection for good. (A body sent to an upstream is
//! timed by the upstream client instead, `upstream::h1` and `upstream::progress`.)

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

/// Boxed error type of bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body stream crossed `server.limits.max_body`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub struct BodyTooLarge {
    /// The configured limit in bytes.
    pub limit: u64,
}

/// A client's request body made no progress (no byte, no end) for `timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body made no progress within {timeout:?}")]
pub struct BodyStalled {
    /// How long it was waited for.
    pub timeout: Duration,
}

/// `body`, failing with [`BodyStalled`] when no frame of it comes for `timeout` (a
/// progress timeout, as nginx's `client_body_timeout`: a slow body that keeps moving
/// is read to its end, however long that takes).
pub fn patient(body: ProxyBody, timeout: Duration) -> Patient {
    Patient {
        inner: body,
        timeout,
        // Boxed: only bodies the proxy reads itself get one.
        sleep: Box::pin(tokio::time::sleep(timeout)),
    }
}

/// See [`patient`].
#[derive(Debug)]
pub struct Patient {
    inner: ProxyBody,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl Body for Patient {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = Instant::now()
                    .checked_add(this.timeout)
                    .unwrap_or_else(|| this.sleep.deadline());
                this.sleep.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyStalled {
                    timeout: this.timeout,
                })))),
                Poll::Pending => Poll::Pending,
            },
            done => done,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How long the body waited, if `err` (or anything in its source chain) is a
/// [`BodyStalled`].
pub fn body_stalled(err: &(dyn std::error::Error + 'static)) -> Option<Duration> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(s) = e.downcast_ref::<BodyStalled>() {
            return Some(s.timeout);
        }
        cur = e.source();
    }
    None
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

    /// A body streamed from an upstream by hyper (an upgrade's answer that did not
    /// switch). Not a [`RequestBody`]: its errors are the server's, not the client's.
    pub fn streamed(inner: Incoming) -> Self {
        use http_body_util::BodyExt;
        ProxyBody::Boxed(inner.map_err(|e| Box::new(e) as BoxError).boxed())
    }

    /// A request body that fails with [`BodyTooLarge`] past `limit` bytes.
    pub fn limited(inner: RequestBody, limit: u64) -> Self {
        match &inner {
            RequestBody::Empty => return ProxyBody::Empty,
            // A chunked body's sizes are held to it too, as each size line is read.
            RequestBody::Client(body) => body.limit(limit),
            RequestBody::Hyper(_) => {}
        }
        ProxyBody::Streamed {
            inner,
            seen: 0,
            limit: Some(limit),
        }
    }
}

/// A request body as the server hands it to the request path: read by hyper (HTTP/2,
/// upgrades) or by the server's own HTTP/1.1 connection (`server::h1`). Its errors
/// are [`ClientBodyError`]s.
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
                .map(|f| f.map(|r| r.map_err(ClientBodyError::from_hyper))),
            RequestBody::Client(inner) => Pin::new(inner)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(ClientBodyError::from_h1))),
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

/// What was wrong with a client's request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    /// The body broke the rules of its framing (invalid chunked coding, a length
    /// other than its `Content-Length`, an HTTP/2 protocol error) or was cut short on
    /// an HTTP/1.1 connection, whose client may still read the answer: 400.
    Malformed(&'static str),
    /// The client gave the request up: it reset the HTTP/2 stream or its connection
    /// went away. Nobody reads an answer; logged as nginx's 499.
    Gone(&'static str),
}

impl BodyFault {
    /// The fault in words, for the log and the error response.
    pub fn reason(self) -> &'static str {
        match self {
            BodyFault::Malformed(reason) | BodyFault::Gone(reason) => reason,
        }
    }
}

/// A client's request body failed to arrive: the client's fault, never the server's
/// it was being sent to.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", fault.reason())]
pub struct ClientBodyError {
    pub fault: BodyFault,
    #[source]
    source: BoxError,
}

impl ClientBodyError {
    /// A body error of the server's own HTTP/1.1 connection.
    /// Chunk sizes over the limit fail as bytes over it do ([`BodyTooLarge`]: 413).
    fn from_h1(e: crate::server::h1::BodyError) -> BoxError {
        use crate::server::h1::BodyError;
        let fault = BodyFault::Malformed(match e {
            BodyError::Chunk => "invalid chunked request body",
            BodyError::Framing => "request body framing not accepted",
            BodyError::Closed | BodyError::Io(_) => "request body cut short",
            BodyError::TooLarge(limit) => return Box::new(BodyTooLarge { limit }),
        });
        Box::new(ClientBodyError {
            fault,
            source: Box::new(e),
        })
    }

    /// A body error of hyper's (an HTTP/2 stream, or an HTTP/1.1 upgrade request).
    fn from_hyper(e: hyper::Error) -> BoxError {
        let fault = hyper_fault(&e);
        Box::new(ClientBodyError {
            fault,
            source: Box::new(e),
        })
    }
}

/// Whose doing a hyper request-body error was: an HTTP/2 reset or GOAWAY the client
/// sent, or its connection lost, is a client gone; one the h2 library sent because
/// the client broke the protocol (DATA longer or shorter than `Content-Length`, flow
/// control) is a malformed body.
fn hyper_fault(e: &hyper::Error) -> BodyFault {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return if h2.is_remote() && h2.is_go_away() {
                BodyFault::Gone("the client closed its HTTP/2 connection mid-body")
            } else if h2.is_remote() {
                BodyFault::Gone("the client reset the HTTP/2 stream mid-body")
            } else if h2.is_io() {
                BodyFault::Gone("the client's connection failed mid-body")
            } else if h2.reason() == Some(h2::Reason::PROTOCOL_ERROR) {
                BodyFault::Malformed(
                    "malformed HTTP/2 request body (its length is not its Content-Length, or a frame broke the protocol)",
                )
            } else {
                BodyFault::Malformed("HTTP/2 request body refused (the client broke the protocol)")
            };
        }
        cur = err.source();
    }
    if e.is_incomplete_message() {
        return BodyFault::Malformed("request body cut short");
    }
    BodyFault::Malformed("request body could not be read")
}

/// What was wrong with the client's request body, if `err` (or anything in its source
/// chain) is a failure to read it ([`ClientBodyError`]): the client's fault, not the
/// upstream's.
pub fn client_body_error(err: &(dyn std::error::Error + 'static)) -> Option<BodyFault> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(b) = e.downcast_ref::<ClientBodyError>() {
            return Some(b.fault);
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
