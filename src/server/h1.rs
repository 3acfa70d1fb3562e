//! HTTP/1.1 from clients, served by the connection's own task.
//!
//! hyper's server dispatcher costs a proxied request about a third of its
//! instructions (callgrind, docs/architecture.md "Serving HTTP/1.1"): a state machine
//! per connection, a channel-like body, a head encoder that walks the map twice. Here
//! one loop per connection reads a head (httparse, header values sliced from the read
//! buffer), runs the request path inline, and writes the response with its first body
//! bytes in the same write. Requests that need hyper's machinery — `Upgrade`
//! (WebSocket...) and `CONNECT` — and HTTP/2 prior-knowledge connections are handed to
//! hyper together with the bytes read so far (`Served::Handoff`).
//!
//! Owns: request heads (bounded by size, not line count; body framing), reading request bodies
//! (length or chunked, `100 Continue`), response framing (`Content-Length`, chunked,
//! close-delimited; HEAD, 204, 304), keep-alive and pipelining, the header and idle
//! timeouts, graceful shutdown and lingering close of HTTP/1.1 connections. Must not
//! touch: what a request means (`proxy`).

use std::fmt;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::conn::ConnInfo;
use super::worker::WorkerCtx;
use crate::http::body::RequestBody;
use crate::http::chunked::{self, Chunk, Step};
use crate::http::{ProxyError, RawHead, RequestId};

/// Header lines parsed into stack storage (hyper's default); a head with more is parsed
/// again with room on the heap (see [`parse_request`]).
const STACK_HEADERS: usize = 100;
/// The least a header counts for in the request path's measure of a head.
const MIN_HEADER_BYTES: usize = 5;
/// The longest request target a request can carry: the `http` crate's limit on a URI
/// (longer ones are answered `414`).
pub const MAX_TARGET: usize = u16::MAX as usize - 1;
/// Read buffer room asked for before each read.
const READ_CHUNK: usize = 8 * 1024;
/// A connection with no read buffer (a new one, or one idle for a while) reads through
/// this much stack, and makes the buffer when bytes arrive: an idle connection costs
/// its task, not 8 KiB more.
const FIRST_READ: usize = 2048;
/// The longest chunk-size line or trailer block of a chunked request body.
const MAX_CHUNK_LINE: usize = 16 * 1024;
/// Response segments queued before the body is polled no further.
const MAX_QUEUED: usize = 8;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// How long a connection closed with request bytes unread keeps reading (and
/// discarding) them, so the client sees the answer rather than a reset.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// How a connection ended here.
pub enum Served<S> {
    Closed,
    /// hyper serves the rest: `read` is what was read and not consumed (the head of
    /// an upgrade request, or the HTTP/2 preface).
    Handoff {
        stream: S,
        read: Bytes,
        http2: bool,
    },
}

/// The socket and what was read from it, shared by the connection loop and the
/// request body (both run in the connection's task, so the lock is never contended).
struct Io<S> {
    stream: S,
    buf: BytesMut,
    body: BodyState,
    /// Which request `body` belongs to: a body kept past its response must not read
    /// the next request's.
    seq: u64,
    /// `100 Continue` owed before the body is read: bytes left to write, then a flush.
    cont: Continue,
    /// A chunked body's chunk sizes so far, and the most they may add up to (the
    /// request path's `max_body`, see [`ClientBody::limit`]; none until it says): a
    /// size over it fails the body when its line is read, not once that many bytes
    /// have come (they may never come, and the upstream would wait for them).
    declared: u64,
    max_body: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Continue {
    None,
    Write(usize),
    Flush,
}

/// Where the current request's body stands.
#[derive(Debug, Clone, Copy)]
enum BodyState {
    /// No body, or all of it read: the next bytes are the next request.
    Done,
    Length(u64),
    Chunked(Chunk),
    /// Framing the request path refuses (two framings, a coding other than
    /// `chunked`...): never read, and the connection closes after the answer.
    Unusable,
    /// Reading failed: the connection cannot go on.
    Failed,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Io<S> {
    /// Watches a client that owes no request body while its answer is on the way:
    /// `Ready(true)` when it closed (EOF or an error), `Ready(false)` when bytes came
    /// (a pipelined request: they stay in the buffer, and the watch is over).
    /// Pending while there is nothing to see, or nothing may be read now.
    fn poll_client_left(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        if !matches!(self.body, BodyState::Done) || self.buf.len() >= READ_CHUNK {
            return Poll::Pending;
        }
        match self.poll_fill(cx) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(true),
            Poll::Ready(Ok(_)) => Poll::Ready(false),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Reads more into the buffer; `Ok(0)` at EOF.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() == 0 {
            let mut room = [MaybeUninit::<u8>::uninit(); FIRST_READ];
            let mut read = ReadBuf::uninit(&mut room);
            ready!(Pin::new(&mut self.stream).poll_read(cx, &mut read))?;
            let got = read.filled();
            if !got.is_empty() {
                self.buf.reserve(READ_CHUNK);
                self.buf.extend_from_slice(got);
            }
            return Poll::Ready(Ok(got.len()));
        }
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf)
    }

    /// Up to `left` bytes of the body: what is buffered, else what one read brings.
    fn poll_take(&mut self, cx: &mut Context<'_>, left: u64) -> Poll<Result<Bytes, BodyError>> {
        if self.buf.is_empty() && ready!(self.poll_fill(cx))? == 0 {
            return Poll::Ready(Err(BodyError::Closed));
        }
        let take = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(self.buf.len());
        Poll::Ready(Ok(self.buf.split_to(take).freeze()))
    }

    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Continue::Write(left) = self.cont {
            let from = CONTINUE.len() - left;
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &CONTINUE[from..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.cont = if n == left {
                Continue::Flush
            } else {
                Continue::Write(left - n)
            };
        }
        if self.cont == Continue::Flush {
            ready!(Pin::new(&mut self.stream).poll_flush(cx))?;
            self.cont = Continue::None;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.cont != Continue::None {
            ready!(self.poll_continue(cx))?;
        }
        loop {
            match self.body {
                BodyState::Done => return Poll::Ready(None),
                BodyState::Unusable => return Poll::Ready(Some(Err(BodyError::Framing))),
                BodyState::Failed => return Poll::Ready(Some(Err(BodyError::Closed))),
                BodyState::Length(left) => {
                    let data = ready!(self.poll_take(cx, left))?;
                    let left = left - data.len() as u64;
                    self.body = if left == 0 {
                        BodyState::Done
                    } else {
                        BodyState::Length(left)
                    };
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                BodyState::Chunked(mut at) => {
                    let step = chunked::step(&mut at, &mut self.buf, MAX_CHUNK_LINE)
                        .map_err(|_| BodyError::Chunk)?;
                    self.body = BodyState::Chunked(at);
                    match step {
                        Step::Size(size) => {
                            self.declared = self.declared.saturating_add(size);
                            if self.declared > self.max_body {
                                let limit = self.max_body;
                                return Poll::Ready(Some(Err(BodyError::TooLarge(limit))));
                            }
                        }
                        Step::Data(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        Step::Trailers(trailers) => {
                            self.body = BodyState::Done;
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        Step::End => {
                            self.body = BodyState::Done;
                            return Poll::Ready(None);
                        }
                        // A client's request is refused for it, as for any broken
                        // chunked body (what it meant is anybody's guess).
                        Step::BadTrailers => return Poll::Ready(Some(Err(BodyError::Chunk))),
                        Step::More => ready!(self.poll_more_bytes(cx))?,
                    }
                }
            }
        }
    }

    fn poll_more_bytes(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BodyError>> {
        if ready!(self.poll_fill(cx))? == 0 {
            return Poll::Ready(Err(BodyError::Closed));
        }
        Poll::Ready(Ok(()))
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("client connection: {0}")]
    Io(#[from] io::Error),
    #[error("the client closed the connection before the request body ended")]
    Closed,
    #[error("invalid chunked request body")]
    Chunk,
    #[error("request body framing the proxy does not accept")]
    Framing,
    /// Its chunk sizes add up to more than this many bytes (`max_body`).
    #[error("the request body's chunk sizes add up to more than {0} bytes")]
    TooLarge(u64),
}

/// What a request body needs from its connection, whatever the stream type.
trait BodySource: Send + Sync {
    fn poll_frame(
        &self,
        seq: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>>;
    fn state(&self, seq: u64) -> BodyState;
    fn limit(&self, seq: u64, max_body: u64);
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> BodySource for Mutex<Io<S>> {
    fn poll_frame(
        &self,
        seq: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut io = self.lock();
        if io.seq != seq {
            return Poll::Ready(None);
        }
        match io.poll_body(cx) {
            Poll::Ready(Some(Err(e))) => {
                io.body = BodyState::Failed;
                Poll::Ready(Some(Err(e)))
            }
            polled => polled,
        }
    }

    fn state(&self, seq: u64) -> BodyState {
        let io = self.lock();
        if io.seq == seq {
            io.body
        } else {
            BodyState::Done
        }
    }

    fn limit(&self, seq: u64, max_body: u64) {
        let mut io = self.lock();
        if io.seq == seq {
            io.max_body = max_body;
        }
    }
}

/// A request body read from the client's HTTP/1.1 connection.
pub struct ClientBody {
    src: Arc<dyn BodySource>,
    seq: u64,
}

impl fmt::Debug for ClientBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBody")
            .field("seq", &self.seq)
            .finish()
    }
}

impl ClientBody {
    /// Holds a chunked body's declared chunk sizes to `max_body` (the request path's
    /// limit, which it also applies to the bytes that come, `ProxyBody::limited`):
    /// past it the body fails with [`BodyError::TooLarge`] as the size line is read.
    pub fn limit(&self, max_body: u64) {
        self.src.limit(self.seq, max_body);
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.src.poll_frame(self.seq, cx)
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.src.state(self.seq), BodyState::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.src.state(self.seq) {
            BodyState::Done => SizeHint::with_exact(0),
            BodyState::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// A request head, parsed.
struct Head {
    parts: http::request::Parts,
    body: BodyState,
    keep_alive: bool,
    expect_continue: bool,
}

// Not boxed: a head is moved once, to the caller; a box would be an allocation per
// request.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Head(Head),
    /// An `Upgrade` or `CONNECT` request: hyper serves it (nothing consumed).
    Handoff,
    /// The HTTP/2 preface: hyper serves the connection.
    Http2,
    Partial,
}

fn bad(reason: &'static str) -> ProxyError {
    ProxyError::BadRequest(reason)
}

/// Where one header's name and value sit in the buffer.
type Spans = SmallVec<[(u32, u32, u32, u32); 24]>;

/// What one pass of httparse over the buffer found; nothing consumed yet.
enum Scan {
    Partial,
    Handoff,
    Head(Scanned),
}

/// A request head: its length, its line, and what framing and keep-alive need (its
/// headers' places are in the spans [`scan_request`] filled).
struct Scanned {
    len: usize,
    method: Method,
    path_span: (usize, usize),
    version: Version,
    body: BodyState,
    keep_alive: bool,
    expect_continue: bool,
}

/// How many header slots a request head may need: no more lines than `buf` holds
/// (each ends with a line feed), nor more headers than fit in `max_header_bytes` as
/// the request path measures them (at least 5 bytes each: a name, `: ` and CRLF).
fn header_room(buf: &[u8], max_header_bytes: usize) -> usize {
    memchr::memchr_iter(b'\n', buf)
        .count()
        .min(max_header_bytes / MIN_HEADER_BYTES)
        + 1
}

/// Parses a request head from the front of `buf`, consuming it when complete.
///
/// Headers are counted into a stack array first; a head with more lines than that is
/// parsed again with room on the heap. Like nginx (`large_client_header_buffers`), a
/// head is bounded by its size, `max_header_bytes`, not by how many lines it has.
fn parse_request(buf: &mut BytesMut, max_header_bytes: usize) -> Result<Parsed, ProxyError> {
    let too_large = || ProxyError::HeadersTooLarge {
        limit: max_header_bytes,
    };
    let mut spans = Spans::new();
    let mut stack: [MaybeUninit<httparse::Header<'_>>; STACK_HEADERS] =
        [const { MaybeUninit::uninit() }; STACK_HEADERS];
    let scanned = match scan_request(&buf[..], &mut stack, &mut spans, max_header_bytes) {
        Err(ScanError::TooManyHeaders) => {
            let mut heap = vec![MaybeUninit::uninit(); header_room(&buf[..], max_header_bytes)];
            scan_request(&buf[..], &mut heap, &mut spans, max_header_bytes)
        }
        scanned => scanned,
    };
    let Scanned {
        len,
        method,
        path_span,
        version,
        body,
        keep_alive,
        expect_continue,
    } = match scanned {
        Ok(Scan::Head(scanned)) => scanned,
        Ok(Scan::Partial) => return Ok(Parsed::Partial),
        Ok(Scan::Handoff) => return Ok(Parsed::Handoff),
        Err(ScanError::TooManyHeaders) => return Err(too_large()),
        Err(ScanError::Refused(e)) => return Err(e),
    };
    if path_span.1 > MAX_TARGET {
        // A head over `max_header_bytes` is a 431 however long its target; a target
        // too long to hold in a head within it is nginx's and hyper's 414.
        return Err(
            if measured_size(&spans, &method, path_span.1) > max_header_bytes {
                too_large()
            } else {
                ProxyError::UriTooLong { limit: MAX_TARGET }
            },
        );
    }
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(path_span.0..path_span.0 + path_span.1))
        .map_err(|_| bad("malformed request target"))?;
    // Room for the few headers the request path adds (request id, forwarding) without
    // growing the map.
    let mut headers = HeaderMap::with_capacity(spans.len() + 4);
    for &(ns, nl, vs, vl) in &spans {
        let (ns, nl, vs, vl) = (ns as usize, nl as usize, vs as usize, vl as usize);
        let name = crate::http::names::header_name(&head[ns..ns + nl])
            .map_err(|_| bad("malformed header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs..vs + vl))
            .map_err(|_| bad("malformed header value"))?;
        headers.append(name, value);
    }
    // RFC 9112 3.2.2: with an absolute-form target (`GET http://a.example/p`), the
    // target's authority is the host, whatever `Host` says: routing and the upstream
    // see that one. Only absolute-form: an authority-form target (`GET a.example:80`,
    // which the URI parser reads as an authority alone) is refused by the request
    // path (`framing::check_target`), never made the host.
    if let (Some(_), Some(authority)) = (uri.scheme(), uri.authority()) {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            headers.insert(header::HOST, host);
        }
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    let (parts, ()) = request.into_parts();
    Ok(Parsed::Head(Head {
        parts,
        body,
        keep_alive,
        expect_continue,
    }))
}

/// A head's size as the request path measures it against `max_header_bytes`
/// (`proxy::head_size`; the path it measures is normalised first, which only
/// shortens it): the request line and each
/// header's name and value with 4 bytes for `: ` and CRLF.
fn measured_size(spans: &Spans, method: &Method, target: usize) -> usize {
    spans
        .iter()
        .fold(method.as_str().len() + target + 12, |n, &(_, nl, _, vl)| {
            n + nl as usize + vl as usize + 4
        })
}

/// Why one pass of httparse gave no head.
enum ScanError {
    /// More headers than the storage had room for.
    TooManyHeaders,
    Refused(ProxyError),
}

impl From<ProxyError> for ScanError {
    fn from(e: ProxyError) -> Self {
        ScanError::Refused(e)
    }
}

/// One pass of httparse over `buf` with `storage` for the headers; `spans` gets the
/// place of each header.
fn scan_request<'b>(
    buf: &'b [u8],
    storage: &mut [MaybeUninit<httparse::Header<'b>>],
    spans: &mut Spans,
    max_header_bytes: usize,
) -> Result<Scan, ScanError> {
    let too_large = || ProxyError::HeadersTooLarge {
        limit: max_header_bytes,
    };
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, storage)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Scan::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(ScanError::TooManyHeaders),
        Err(_) => return Err(bad("malformed request head").into()),
    };
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| bad("malformed method"))?;
    if method == Method::CONNECT
        || req
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("upgrade"))
    {
        return Ok(Scan::Handoff);
    }
    let version = if req.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let base = buf.as_ptr() as usize;
    let path = req.path.unwrap_or("/");
    let path_span = (path.as_ptr() as usize - base, path.len());
    // Where each name and value sit in the buffer (on the stack for the usual few
    // headers: no allocation, and nothing to zero), so the map is built from slices
    // of one frozen head after the loop.
    spans.clear();
    let mut keep_alive = version == Version::HTTP_11;
    let mut expect_continue = false;
    let mut lengths = 0usize;
    let mut length: Option<u64> = None;
    let mut length_ok = true;
    let mut encodings = 0usize;
    let mut chunked = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let span32 = |at: usize, len: usize| -> Option<(u32, u32)> {
            Some((u32::try_from(at).ok()?, u32::try_from(len).ok()?))
        };
        let (Some((ns, nl)), Some((vs, vl))) = (
            span32(name.as_ptr() as usize - base, name.len()),
            span32(h.value.as_ptr() as usize - base, h.value.len()),
        ) else {
            return Err(too_large().into());
        };
        spans.push((ns, nl, vs, vl));
        if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && version == Version::HTTP_10 {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
            match crate::http::framing::parse_length(h.value) {
                Some(n) if length.is_none_or(|m| m == n) => length = Some(n),
                _ => length_ok = false,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            encodings += 1;
            chunked = h.value.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"expect") {
            expect_continue = h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
    }
    // Anything ambiguous is left `Unusable`: the request path answers 400 without
    // reading the body, and the connection closes.
    let body = match (encodings, lengths) {
        (0, 0) => BodyState::Done,
        (0, _) if !length_ok => BodyState::Unusable,
        (0, _) => match length {
            Some(0) | None => BodyState::Done,
            Some(n) => BodyState::Length(n),
        },
        (1, 0) if chunked && version == Version::HTTP_11 => BodyState::Chunked(Chunk::Size),
        _ => BodyState::Unusable,
    };
    Ok(Scan::Head(Scanned {
        len,
        method,
        path_span,
        version,
        body,
        keep_alive,
        expect_continue,
    }))
}

/// What the connection wakes up for while waiting for a head.
enum Woke {
    Read(io::Result<usize>),
    Timer,
    Shutdown,
}

/// Serves HTTP/1.1 requests on `stream` until the connection ends or needs hyper.
/// `sniff_h2`: the client may instead open with the HTTP/2 preface.
pub async fn serve<S>(
    stream: S,
    conn: &Arc<ConnInfo>,
    ctx: &Arc<WorkerCtx>,
    sniff_h2: bool,
) -> Served<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (max_header_bytes, header, idle) = {
        let generation = ctx.shared.generation();
        let server = &generation.config.server;
        (
            server.limits.max_header_bytes,
            server.timeouts.header,
            server.timeouts.idle,
        )
    };
    // A head may grow to twice the limit before it is refused unread; under that the
    // request path measures it and answers 431 itself.
    let max_head = max_header_bytes.saturating_mul(2).max(16 * 1024);
    let io = Arc::new(Mutex::new(Io {
        stream,
        buf: BytesMut::new(),
        body: BodyState::Done,
        seq: 0,
        cont: Continue::None,
        declared: 0,
        max_body: u64::MAX,
    }));
    let mut out = Out::default();
    // Two views of the shutdown signal: one waited on while idle (registered once),
    // one looked at after each request.
    let shutdown = ctx.shared.shutdown_signal();
    let mut draining = *shutdown.borrow();
    let mut watch = ctx.shared.shutdown_signal();
    let shutdown_changed = async move {
        let _ = watch.changed().await;
    };
    tokio::pin!(shutdown_changed);
    // One timer for the connection's life, reset only when it fires: it fires at
    // least every `header`, and then judges against the real deadlines.
    let sleep = tokio::time::sleep(header.min(idle));
    tokio::pin!(sleep);
    let mut idle_since = Instant::now();
    let mut head_since: Option<Instant> = None;
    let mut first = true;
    loop {
        // 1. A request head.
        let head = loop {
            let parsed = {
                let mut guard = io.lock();
                let inner = &mut *guard;
                if inner.buf.is_empty() {
                    Ok(Parsed::Partial)
                } else if first
                    && sniff_h2
                    && H2_PREFACE.starts_with(&inner.buf[..inner.buf.len().min(H2_PREFACE.len())])
                {
                    if inner.buf.len() >= H2_PREFACE.len() {
                        Ok(Parsed::Http2)
                    } else {
                        Ok(Parsed::Partial)
                    }
                } else {
                    parse_request(&mut inner.buf, max_header_bytes).and_then(|p| match p {
                        Parsed::Partial if inner.buf.len() > max_head => {
                            Err(ProxyError::HeadersTooLarge {
                                limit: max_header_bytes,
                            })
                        }
                        p => Ok(p),
                    })
                }
            };
            match parsed {
                Ok(Parsed::Head(head)) => break head,
                Ok(Parsed::Handoff) => return handoff(io, false),
                Ok(Parsed::Http2) => return handoff(io, true),
                Ok(Parsed::Partial) => {}
                Err(e) => {
                    refuse(&io, &mut out, e, head_since, conn, ctx).await;
                    return Served::Closed;
                }
            }
            if head_since.is_none() && !io.lock().buf.is_empty() {
                head_since = Some(Instant::now());
            }
            let woke = poll_fn(|cx| {
                if let Poll::Ready(r) = io.lock().poll_fill(cx) {
                    return Poll::Ready(Woke::Read(r));
                }
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Woke::Timer);
                }
                if !draining && shutdown_changed.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Woke::Shutdown);
                }
                Poll::Pending
            })
            .await;
            match woke {
                Woke::Read(Ok(0)) | Woke::Read(Err(_)) => return Served::Closed,
                // The clock is read only if the head is still incomplete after this
                // read (above): a head that arrives whole, the usual case, costs none.
                Woke::Read(Ok(_)) => {}
                Woke::Timer => {
                    let now = Instant::now();
                    let deadline = match head_since {
                        Some(at) => at + header,
                        None => idle_since + idle,
                    };
                    if head_since.is_none() {
                        // Idle a while (the timer fires at least every `header`):
                        // wait on without a buffer (see `FIRST_READ`). A busy
                        // keep-alive connection keeps its buffer between requests.
                        let mut guard = io.lock();
                        if guard.buf.is_empty() && guard.buf.capacity() > 0 {
                            guard.buf = BytesMut::new();
                        }
                    }
                    if now >= deadline {
                        if head_since.is_some() {
                            tracing::debug!(target: "proxycache::server", peer = %conn.peer, "request header timeout; closing");
                            let err = ProxyError::HeaderTimeout;
                            refuse(&io, &mut out, err, head_since, conn, ctx).await;
                        }
                        return Served::Closed;
                    }
                    sleep.as_mut().reset(deadline.min(now + header));
                }
                Woke::Shutdown => {
                    draining = true;
                    if head_since.is_none() {
                        return Served::Closed;
                    }
                }
            }
        };
        head_since = None;
        first = false;

        // 2. The request path.
        let Head {
            parts,
            body: framing,
            keep_alive,
            expect_continue,
        } = head;
        let head_request = parts.method == Method::HEAD;
        let http10 = parts.version == Version::HTTP_10;
        let body = {
            let mut guard = io.lock();
            guard.seq += 1;
            guard.body = framing;
            guard.declared = 0;
            guard.max_body = u64::MAX;
            let has_body = matches!(framing, BodyState::Length(_) | BodyState::Chunked(_));
            guard.cont = if expect_continue && has_body && !http10 {
                Continue::Write(CONTINUE.len())
            } else {
                Continue::None
            };
            if matches!(framing, BodyState::Done) {
                RequestBody::Empty
            } else {
                let src: Arc<dyn BodySource> = io.clone();
                RequestBody::Client(ClientBody {
                    src,
                    seq: guard.seq,
                })
            }
        };
        let req = Request::from_parts(parts, body);
        // Pinned where it is made: the request future is a few KB, and moving it into
        // the watch would copy it (callgrind: ~1,000 instructions a request).
        let handling = std::pin::pin!(crate::proxy::handle(
            req,
            Arc::clone(conn),
            Arc::clone(ctx),
            crate::proxy::Writer::TakesRawHead
        ));
        let Some(mut resp) = until_client_leaves(&io, handling).await else {
            tracing::debug!(target: "proxycache::server", peer = %conn.peer, "client closed the connection before the response; request abandoned");
            return Served::Closed;
        };

        // 3. The response; the connection goes on only at a clean boundary.
        if !draining && *shutdown.borrow() {
            draining = true;
        }
        // A request body not read to its end by now (a stall answered 408, a module
        // that answered without reading it) is never read as the next request: the
        // connection closes after this answer, and the answer says so.
        let body_done = matches!(io.lock().body, BodyState::Done);
        let plan = Plan {
            head_request,
            keep_alive: keep_alive && !draining && body_done,
            http10,
            send_timeout: idle,
        };
        let raw = resp.body_mut().take_raw_head();
        // Lent, not moved: the response is a few hundred bytes, and each move copies it.
        let kept = write_response(&io, &mut out, &mut resp, raw, plan).await;
        if let Err(e) = &kept {
            tell_cut_short(e, &mut resp, conn);
        }
        // Its end (in-flight counts, the upstream connection back to the pool, the
        // access log) comes before any lingering close.
        drop(resp);
        let clean = matches!(io.lock().body, BodyState::Done);
        match kept {
            Ok(true) if clean => {}
            Ok(_) => {
                close(&io, !clean).await;
                return Served::Closed;
            }
            Err(_) => return Served::Closed,
        }
        idle_since = Instant::now();
    }
}

/// Tells why a response was cut short, by whose doing: a client that went away (or
/// read nothing for the send timeout) is no fault of the proxy's or the upstream's, a
/// DEBUG line; a body that failed or ended short of its length is a WARN with the
/// request, the upstream and the server (`proxy::completion`; a failed body was told
/// there as it failed, for HTTP/2 clients too).
fn tell_cut_short(
    e: &WriteFailure,
    resp: &mut Response<crate::proxy::completion::ResponseBody>,
    conn: &ConnInfo,
) {
    match e {
        WriteFailure::Client(error) => tracing::debug!(
            target: "proxycache::server",
            peer = %conn.peer,
            request_id = %resp.body().request_id(),
            %error,
            "the client went away before the response ended; closing"
        ),
        WriteFailure::Body(_) => {}
        WriteFailure::Short { missing } => resp.body_mut().ended_short(*missing),
    }
}

/// Runs the request path, watching the client meanwhile: a client that closes its
/// connection before the answer (EOF while no request body is being read) abandons
/// the request, which is dropped — its upstream exchange with it — as nginx does
/// (`proxy_ignore_client_abort off`) and hyper did. Bytes that arrive instead (a
/// pipelined request) stay in the buffer, and the watch stops there. `None`: the
/// client left.
async fn until_client_leaves<S, F, R>(
    io: &Arc<Mutex<Io<S>>>,
    mut handling: Pin<&mut F>,
) -> Option<R>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = Result<R, std::convert::Infallible>>,
{
    let mut watching = true;
    poll_fn(|cx| {
        if let Poll::Ready(Ok(resp)) = handling.as_mut().poll(cx) {
            return Poll::Ready(Some(resp));
        }
        if watching {
            match io.lock().poll_client_left(cx) {
                Poll::Ready(true) => return Poll::Ready(None),
                Poll::Ready(false) => watching = false,
                Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await
}

/// hyper takes the connection: the stream and whatever was read but not consumed.
fn handoff<S>(io: Arc<Mutex<Io<S>>>, http2: bool) -> Served<S> {
    match Arc::try_unwrap(io) {
        Ok(io) => {
            let io = io.into_inner();
            Served::Handoff {
                stream: io.stream,
                read: io.buf.freeze(),
                http2,
            }
        }
        // An earlier request's body is still held somewhere: the bytes cannot be
        // handed on whole.
        Err(_) => Served::Closed,
    }
}

/// Answers a head that could not be parsed (400, 431) or did not arrive in time (408)
/// and closes. Counted in `/stats` and logged in the access log like any answer (no
/// method or path: there was no request to name).
/// `since`: when the head's first byte arrived, if before the read that ended it.
async fn refuse<S>(
    io: &Arc<Mutex<Io<S>>>,
    out: &mut Out,
    err: ProxyError,
    since: Option<Instant>,
    conn: &ConnInfo,
    ctx: &WorkerCtx,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let since = since.unwrap_or_else(Instant::now);
    let id = RequestId::generate();
    let status = err.status();
    tracing::debug!(target: "proxycache::server", error = %err, request_id = %id, "request head refused");
    let plan = Plan {
        head_request: false,
        keep_alive: false,
        http10: false,
        send_timeout: LINGER_TIME,
    };
    let mut resp = err.to_response(&id);
    let bytes = resp.body().size_hint().exact().unwrap_or(0);
    let _ = write_response(io, out, &mut resp, None, plan).await;
    // Counted and logged as any answered request: its status class, no route and no
    // upstream, the time since its head began and the bytes of its body.
    conn.stats.record(status);
    let generation = ctx.shared.generation();
    let took = since.elapsed();
    generation
        .meters
        .record(&generation.std_state.metrics, None, None, status, took);
    if generation.config.log.access {
        crate::proxy::completion::access_line(&crate::proxy::completion::AccessLine {
            method: "-",
            path: "-",
            protocol: "-",
            status,
            bytes,
            duration_ms: took.as_secs_f64() * 1000.0,
            upstream_ms: None,
            upstream: "-",
            server: "-",
            client: conn.peer.ip(),
            id: &id,
            reason: None,
        });
    }
    drop(generation);
    close(io, true).await;
}

/// Closes the sending side; with `linger`, first reads and drops what the client
/// still sends for a while, so the answer is not lost to a reset.
async fn close<S>(io: &Arc<Mutex<Io<S>>>, linger: bool)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let shut = poll_fn(|cx| Pin::new(&mut io.lock().stream).poll_shutdown(cx));
    if tokio::time::timeout(LINGER_TIME, shut).await.is_err() || !linger {
        return;
    }
    let drain = async {
        let mut seen = 0;
        loop {
            let n = poll_fn(|cx| {
                let mut io = io.lock();
                io.buf.clear();
                io.poll_fill(cx)
            })
            .await;
            match n {
                Ok(0) | Err(_) => return,
                Ok(n) => seen += n,
            }
            if seen > LINGER_BYTES {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

/// What the response may be and do, from its request.
#[derive(Debug, Clone, Copy)]
struct Plan {
    head_request: bool,
    keep_alive: bool,
    http10: bool,
    /// The longest a client may leave the response unread (no byte taken): then the
    /// connection is dropped, and the upstream's with it (nginx's `send_timeout`).
    send_timeout: Duration,
}

/// How the response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0 clients, length unknown).
    Eof,
}

/// The connection's write queue, kept between responses so a response allocates
/// nothing for it.
#[derive(Default)]
struct Out {
    segs: Vec<Bytes>,
    front: usize,
    /// Room for chunk-size lines and the like.
    lines: BytesMut,
}

impl Out {
    fn queued(&self) -> usize {
        self.segs.len() - self.front
    }

    fn line(&mut self, f: impl FnOnce(&mut BytesMut)) -> Bytes {
        if self.lines.capacity() < 64 {
            self.lines.reserve(1024);
        }
        f(&mut self.lines);
        self.lines.split().freeze()
    }

    fn push_data(&mut self, data: Bytes, framing: Framing) {
        if data.is_empty() {
            return;
        }
        if framing == Framing::Chunked {
            let size = self.line(|b| {
                let _ =
                    fmt::Write::write_fmt(&mut HexWriter(b), format_args!("{:x}\r\n", data.len()));
            });
            self.segs.push(size);
            self.segs.push(data);
            self.segs.push(Bytes::from_static(b"\r\n"));
        } else {
            self.segs.push(data);
        }
    }

    fn push_end(&mut self, trailers: Option<&HeaderMap>) {
        match trailers {
            None => self.segs.push(Bytes::from_static(b"0\r\n\r\n")),
            Some(map) => {
                let block = self.line(|b| {
                    b.put_slice(b"0\r\n");
                    for (name, value) in map {
                        b.put_slice(name.as_str().as_bytes());
                        b.put_slice(b": ");
                        b.put_slice(value.as_bytes());
                        b.put_slice(b"\r\n");
                    }
                    b.put_slice(b"\r\n");
                });
                self.segs.push(block);
            }
        }
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 && self.front < self.segs.len() {
            let seg = &mut self.segs[self.front];
            if seg.len() <= n {
                n -= seg.len();
                self.front += 1;
            } else {
                seg.advance(n);
                n = 0;
            }
        }
        if self.front == self.segs.len() {
            self.segs.clear();
            self.front = 0;
        }
    }
}

/// `fmt::Write` into a `BytesMut`.
struct HexWriter<'a>(&'a mut BytesMut);

impl fmt::Write for HexWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.put_slice(s.as_bytes());
        Ok(())
    }
}

/// Why a response was not written to its end.
#[derive(Debug, thiserror::Error)]
enum WriteFailure {
    /// The client went away, or read nothing of the response for the send timeout.
    #[error("client connection: {0}")]
    Client(#[from] io::Error),
    /// The response body failed (its upstream's: reset, closed short, stalled). What
    /// came of it was sent; the connection then closes, which tells the client the
    /// body is cut short.
    #[error("response body: {0}")]
    Body(String),
    /// The body ended short of the length the head declared (one a module set).
    #[error("response body {missing} bytes shorter than its content-length")]
    Short { missing: u64 },
}

/// Writes a response; `Ok(true)` when the connection may carry another request.
/// `raw`: the upstream's head as received (see `RawHead`), written after the map's
/// headers, less the lines of names the map has; it carries no hop-by-hop header and
/// no framing line of its own.
async fn write_response<S, B>(
    io: &Arc<Mutex<Io<S>>>,
    out: &mut Out,
    resp: &mut Response<B>,
    raw: Option<Box<RawHead>>,
    plan: Plan,
) -> Result<bool, WriteFailure>
where
    S: AsyncRead + AsyncWrite + Unpin,
    B: Body<Data = Bytes> + Unpin,
    B::Error: fmt::Display,
{
    let status = resp.status();
    let headers = resp.headers();
    let mut keep_alive = plan.keep_alive;
    let bodiless = status.is_informational() || status == StatusCode::NO_CONTENT;
    let no_body = plan.head_request || bodiless || status == StatusCode::NOT_MODIFIED;

    let mut size = 64 + 48 + raw.as_ref().map_or(0, |r| r.written_len());
    for (name, value) in headers {
        size += name.as_str().len() + value.len() + 4;
    }
    // Written into the connection's reusable room and split off (no allocation per
    // response once the previous head is gone).
    let head = &mut out.lines;
    head.reserve(size);
    head.put_slice(b"HTTP/1.1 ");
    head.put_slice(status.as_str().as_bytes());
    head.put_u8(b' ');
    head.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.put_slice(b"\r\n");
    let mut declared: Option<u64> = None;
    let mut has_date = false;
    let mut has_connection = false;
    for (name, value) in headers {
        if *name == header::CONTENT_LENGTH {
            // Written once, below, as one number: a map may hold the line twice, or
            // as a list (`5, 5`), where the upstream sent it so.
            if declared.is_none() && !bodiless {
                declared = crate::http::framing::parse_length(value.as_bytes());
            }
            continue;
        } else if *name == header::TRANSFER_ENCODING {
            // This hop's framing is written below.
            continue;
        } else if *name == header::CONNECTION {
            has_connection = true;
            if value
                .as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
            {
                keep_alive = false;
            }
        } else if *name == header::DATE {
            has_date = true;
        }
        head.put_slice(name.as_str().as_bytes());
        head.put_slice(b": ");
        head.put_slice(value.as_bytes());
        head.put_slice(b"\r\n");
    }
    // A length in the map may be a module's (a received head's is in `raw`).
    let set_in_map = declared.is_some();
    if let Some(raw) = &raw {
        // The map's headers are what modules `set`: they replace received ones.
        let overlay = !headers.is_empty();
        for (name, line) in raw.lines() {
            if overlay
                && headers
                    .keys()
                    .any(|k| name.eq_ignore_ascii_case(k.as_str().as_bytes()))
            {
                continue;
            }
            head.put_slice(line);
            head.put_slice(b"\r\n");
        }
        has_date |= raw.has_date;
        if !bodiless && declared.is_none() {
            declared = raw.content_length;
        }
    }
    // A length with no body behind it (a module turned a 204 or 304 into a status
    // that has one): the client gets the empty body it will be sent, not a promise
    // that fails before the head goes out.
    if !no_body && declared.is_some_and(|n| n > 0) && resp.body().is_end_stream() {
        declared = Some(0);
    }
    // A length the body does not have (a module set one by hand): the body's, as the
    // HTTP/2 path writes it, rather than a response cut short (or one the client waits
    // on) and a closed connection. (A received head's length is its body's.)
    if !no_body && set_in_map {
        if let Some(exact) = resp.body().size_hint().exact() {
            if declared != Some(exact) && !resp.body().is_end_stream() {
                declared = Some(exact);
            }
        }
    }
    if let Some(n) = declared {
        head.put_slice(b"content-length: ");
        head.put_slice(itoa_u64(n, &mut [0u8; 20]));
        head.put_slice(b"\r\n");
    }
    let mut framing = if no_body {
        Framing::None
    } else if let Some(n) = declared {
        Framing::Length(n)
    } else {
        let exact = if resp.body().is_end_stream() {
            Some(0)
        } else {
            resp.body().size_hint().exact()
        };
        match exact {
            Some(n) => {
                head.put_slice(b"content-length: ");
                head.put_slice(itoa_u64(n, &mut [0u8; 20]));
                head.put_slice(b"\r\n");
                Framing::Length(n)
            }
            None if !plan.http10 => {
                head.put_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
            None => {
                keep_alive = false;
                Framing::Eof
            }
        }
    };
    if !has_date {
        head.put_slice(b"date: ");
        date::with(|d| head.put_slice(d));
        head.put_slice(b"\r\n");
    }
    if !has_connection {
        if !keep_alive {
            head.put_slice(b"connection: close\r\n");
        } else if plan.http10 {
            head.put_slice(b"connection: keep-alive\r\n");
        }
    }
    head.put_slice(b"\r\n");
    let head = out.lines.split().freeze();
    out.segs.push(head);

    let body = resp.body_mut();
    let mut body_done = framing == Framing::None || matches!(framing, Framing::Length(0));
    let mut flushed = false;
    // Made only when a write has to wait (the client's window is full), moved on only
    // when one waits again after bytes went out: a response written at once costs no
    // timer.
    let mut stall: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut wrote_since_wait = true;
    let mut watching = true;
    // A body that failed (or ended short): what came of it still goes out, then this.
    let mut failed: Option<WriteFailure> = None;
    poll_fn(|cx| loop {
        // Gather what the body has ready, so the head and a small body go out in one
        // write.
        while !body_done && out.queued() < MAX_QUEUED {
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(mut data) => {
                        if let Framing::Length(left) = &mut framing {
                            if data.len() as u64 >= *left {
                                if data.len() as u64 > *left {
                                    // More than declared: the rest never goes out, and
                                    // the client cannot trust this connection.
                                    data.truncate(*left as usize);
                                    keep_alive = false;
                                }
                                body_done = true;
                            }
                            *left -= data.len() as u64;
                        }
                        out.push_data(data, framing);
                    }
                    Err(frame) => {
                        if let (Ok(trailers), Framing::Chunked) = (frame.into_trailers(), framing) {
                            out.push_end(Some(&trailers));
                            body_done = true;
                        }
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    body_done = true;
                    failed = Some(WriteFailure::Body(e.to_string()));
                }
                Poll::Ready(None) => {
                    body_done = true;
                    match framing {
                        Framing::Chunked => out.push_end(None),
                        Framing::Length(left) if left > 0 => {
                            failed = Some(WriteFailure::Short { missing: left });
                        }
                        _ => {}
                    }
                }
                Poll::Pending => break,
            }
        }
        if out.queued() == 0 {
            if !flushed {
                ready!(Pin::new(&mut io.lock().stream).poll_flush(cx))?;
                flushed = true;
            }
            if body_done {
                return Poll::Ready(failed.take().map_or(Ok(()), Err));
            }
            // Waiting for the body (an upstream that stalls, a long poll): watch the
            // client meanwhile, as `until_client_leaves` does before the head. One
            // that closes abandons the response and, with it, the upstream exchange;
            // otherwise that would wait for the set's response_timeout.
            if watching {
                match io.lock().poll_client_left(cx) {
                    Poll::Ready(true) => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "the client closed the connection before the response body ended",
                        )
                        .into()));
                    }
                    Poll::Ready(false) => watching = false,
                    Poll::Pending => {}
                }
            }
            return Poll::Pending;
        }
        let n = {
            let mut slices = [IoSlice::new(&[]); MAX_QUEUED * 3 + 1];
            let mut count = 0;
            for (slot, seg) in slices.iter_mut().zip(&out.segs[out.front..]) {
                *slot = IoSlice::new(seg);
                count += 1;
            }
            match Pin::new(&mut io.lock().stream).poll_write_vectored(cx, &slices[..count]) {
                Poll::Ready(n) => n?,
                Poll::Pending => {
                    let timer = stall
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(plan.send_timeout)));
                    if wrote_since_wait {
                        wrote_since_wait = false;
                        timer
                            .as_mut()
                            .reset(tokio::time::Instant::now() + plan.send_timeout);
                    }
                    if timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the client read nothing of the response for server.timeouts.idle",
                        )
                        .into()));
                    }
                    return Poll::Pending;
                }
            }
        };
        if n == 0 {
            return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
        }
        wrote_since_wait = true;
        flushed = false;
        out.advance(n);
    })
    .await
    .inspect_err(|_| {
        out.segs.clear();
        out.front = 0;
    })?;
    Ok(keep_alive && framing != Framing::Eof)
}

/// `n` in decimal, in `buf`.
fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// The `Date` header value, formatted once a second per worker thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, [u8; 29])> = const { RefCell::new((0, [0; 29])) };
    }

    pub fn with(f: impl FnOnce(&[u8])) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with(|c| {
            let mut c = c.borrow_mut();
            if c.0 != secs {
                let text = httpdate::fmt_http_date(now);
                let bytes = text.as_bytes();
                if bytes.len() == 29 {
                    c.1.copy_from_slice(bytes);
                    c.0 = secs;
                }
            }
            f(&c.1);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        let mut buf = BytesMut::from(text.as_bytes());
        match parse_request(&mut buf, 8192) {
            Ok(Parsed::Head(h)) => h,
            Ok(_) => panic!("not a complete plain head: {text:?}"),
            Err(e) => panic!("refused {text:?}: {e}"),
        }
    }

    #[test]
    fn heads_parse_with_framing_and_keep_alive() {
        let h = head("GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(h.parts.uri, "/a?b");
        assert!(h.keep_alive);
        assert!(matches!(h.body, BodyState::Done));
        let h =
            head("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\n");
        assert!(matches!(h.body, BodyState::Length(5)));
        assert!(!h.keep_alive);
        let h = head("POST / HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n");
        assert!(matches!(h.body, BodyState::Length(2)));
        assert!(h.keep_alive);
        for ambiguous in [
            // RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty
            // framing, even a plain `chunked`.
            "POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        ] {
            let h = head(ambiguous);
            assert!(matches!(h.body, BodyState::Unusable), "{ambiguous:?}");
            // The request path sees both headers and refuses.
            assert!(
                crate::http::framing::check_request(h.parts.version, &h.parts.headers).is_err()
            );
        }
    }

    #[test]
    fn upgrades_and_garbage_are_told_apart() {
        let mut buf = BytesMut::from(
            &b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"[..],
        );
        assert!(matches!(parse_request(&mut buf, 8192), Ok(Parsed::Handoff)));
        assert!(!buf.is_empty(), "a handed-off head is not consumed");
        let mut buf = BytesMut::from(&b"THIS IS NOT HTTP\r\n\r\n"[..]);
        assert!(matches!(
            parse_request(&mut buf, 8192),
            Err(ProxyError::BadRequest(_))
        ));
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\n"[..]);
        assert!(matches!(parse_request(&mut buf, 8192), Ok(Parsed::Partial)));
    }

    #[test]
    fn numbers_and_dates_format() {
        assert_eq!(itoa_u64(0, &mut [0; 20]), b"0");
        assert_eq!(itoa_u64(1234567, &mut [0; 20]), b"1234567");
        assert_eq!(
            itoa_u64(u64::MAX, &mut [0; 20]),
            u64::MAX.to_string().as_bytes()
        );
        date::with(|d| assert!(d.ends_with(b" GMT"), "{:?}", String::from_utf8_lossy(d)));
    }
}
