//! HTTP/1.1 to upstream servers, driven by the request's own task.
//!
//! hyper's client runs every connection as a task of its own and hands requests and
//! responses across channels: per request, two tasks are polled and woken, and heads
//! and bodies cross a channel each way. Here the connection is owned by whoever sends
//! on it — the request future, then the response body — so a proxied request is one
//! task end to end (callgrind: see docs/architecture.md "Upstream HTTP/1.1"). HTTP/2
//! upstreams and Upgrade tunnels stay on hyper.
//!
//! Owns: writing a request (head, body as `Content-Length` or chunked, written while
//! the response is read), reading a response head (httparse; 1xx skipped) and its body
//! (length, chunked with trailers, or to EOF), and deciding whether the connection
//! can be used again. Must not touch: pooling (the caller puts a [`Conn`] back), picking
//! servers, header policy beyond what framing needs.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::http::body::BoxError;
use crate::http::chunked::{self, Chunk, Step};
use crate::http::framing::parse_length;
use crate::http::hygiene::Forwarding;
use crate::http::raw_head::{Hop, RawHead};
use crate::http::ProxyBody;

/// Header lines parsed into stack storage; a head with more is parsed again with room
/// on the heap (see [`parse_head`]).
const STACK_HEADERS: usize = 128;
/// The shortest header line httparse takes (`a:` and a line feed).
const MIN_HEADER_LINE: usize = 3;
/// The largest response head (or chunk-size line, or trailer block) accepted.
pub(crate) const MAX_HEAD_BYTES: usize = 128 * 1024;
/// Read buffer room asked for before each read: a 16 KiB body and its head arrive in
/// one read (with 16 KiB they took two; strace, `/16k` bench variant).
const READ_CHUNK: usize = 32 * 1024;
/// Write segments queued before the request body is polled no further.
const MAX_QUEUED: usize = 8;

/// A connection's byte stream: TCP, or TLS over TCP.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, b),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, b),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    #[error("upstream closed the connection before sending a response")]
    ClosedBeforeResponse,
    #[error("upstream closed the connection in the middle of the response body")]
    ClosedMidBody,
    #[error("upstream sent an invalid response head: {0}")]
    Parse(httparse::Error),
    #[error("upstream response head is larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("upstream sent an invalid header: {0}")]
    Header(String),
    #[error("upstream sent conflicting or invalid Content-Length")]
    ContentLength,
    #[error("upstream sent an invalid chunked body")]
    Chunk,
    #[error("upstream sent a Transfer-Encoding other than chunked")]
    TransferEncoding,
    #[error("no response head within the response timeout")]
    ResponseTimeout,
    /// The request body made no progress for the response timeout while the server
    /// waited for it (a client sending slowly, most often: not the server's fault).
    #[error("the request body made no progress within {0:?}")]
    RequestBodyStalled(Duration),
    /// The server took none of the request for the response timeout while there was
    /// more to write (it stopped reading: its fault, as nginx's `proxy_send_timeout`).
    #[error("the server read none of the request within {0:?}")]
    SendStalled(Duration),
    #[error("no response body bytes within {0:?} (the response timeout)")]
    BodyTimeout(Duration),
    #[error("upstream switched protocols without being asked to")]
    UnaskedUpgrade,
    #[error("request body: {0}")]
    RequestBody(#[source] BoxError),
}

/// An HTTP/1.1 connection between exchanges (idle, or lent to one request).
pub struct Conn {
    io: Stream,
    /// Bytes read and not yet consumed (the start of the next head while parsing).
    buf: BytesMut,
    /// The response-head deadline, one timer for the connection's life: moving a
    /// registered tokio timer later is an atomic store, where a new timer per request
    /// is a registration and a removal in the timer wheel.
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// Where request heads are written: each head is split off and sent, and the
    /// room is reused once it is gone (no allocation per request).
    wbuf: BytesMut,
}

impl Conn {
    pub fn new(io: Stream) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
            deadline: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
            wbuf: BytesMut::new(),
        }
    }

    /// Whether an idle connection is no use any more: the server closed it, reset it,
    /// or sent bytes nobody asked for. Costs at most one non-blocking read, and over
    /// plain TCP none while the socket has not been reported readable since the last
    /// read (`try_read` looks at the readiness the runtime keeps and, unlike
    /// `poll_read`, registers no waker).
    pub fn is_closed(&mut self) -> bool {
        let mut probe = [0u8; 1];
        if let Stream::Tcp(s) = &self.io {
            return !matches!(s.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut rb = ReadBuf::new(&mut probe);
        !matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut rb),
            Poll::Pending
        )
    }
}

/// How an exchange ended without a response.
pub enum Failure {
    /// A reused connection turned out closed before anything came back, and the
    /// request can be sent again elsewhere (its body was empty, and it was not written
    /// at all or its method is idempotent): here it is.
    Unsent(Box<Request<ProxyBody>>),
    Failed(H1Error),
}

/// How far ahead a deadline goes when `now + timeout` does not fit in an `Instant`.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 86_400);

/// `now + timeout`, or [`FAR_FUTURE`] from now when the sum overflows: config bounds
/// its durations, but a script's `timeout` may be any number of seconds.
pub(super) fn deadline_after(timeout: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(FAR_FUTURE))
        .unwrap_or(now)
}

/// Sends `req` on `conn` and reads the response head. `reused`: the connection served
/// earlier requests (so a close before any response byte is the server's keep-alive
/// timeout racing us, and worth a retry).
pub async fn send(
    mut conn: Conn,
    mut req: Box<Request<ProxyBody>>,
    reused: bool,
    response_timeout: Duration,
    wire: Option<&Forwarding>,
) -> Result<Response<RespBody>, Failure> {
    conn.deadline
        .as_mut()
        .reset(deadline_after(response_timeout));
    // The body goes out with the head; the rest of the request stays boxed (the
    // request moves through every layer above by pointer, and a retry gets it back).
    let body = std::mem::replace(req.body_mut(), ProxyBody::Empty);
    let empty = body.is_end_stream();
    let (head, chunked) = encode_head(&req, &body, wire, &mut conn.wbuf);
    let mut out = Some(Outgoing::new(head, body, chunked));
    let head_method_is_head = req.method() == Method::HEAD;
    let pass = wire.is_some_and(Forwarding::passes_response_head);
    let mut wrote_any = false;
    let mut write_failed = false;

    // While the body goes out, the deadline is `response_timeout` from the body's last
    // progress; once it is all sent, `response_timeout` for the head (as nginx times
    // its read from the end of the send). A body that arrives with its head moves no
    // timer. When it runs out with the body unsent, whoever was being waited for is
    // blamed: the client (nothing to write, its body has no more yet) or the server
    // (bytes to write that it does not take).
    let parsed = poll_fn(|cx| {
        if let Some(o) = out.as_mut() {
            let mut progressed = false;
            let polled = o.poll_write(cx, &mut conn.io, &mut progressed);
            wrote_any |= progressed;
            if progressed && !empty {
                conn.deadline
                    .as_mut()
                    .reset(deadline_after(response_timeout));
            }
            match polled {
                Poll::Ready(Ok(())) => out = None,
                Poll::Ready(Err(WriteError::Body(e))) => {
                    return Poll::Ready(Err(H1Error::RequestBody(e)));
                }
                Poll::Ready(Err(WriteError::Io(e))) => {
                    // The server may still answer (an early error before closing): read on.
                    tracing::debug!(target: "proxycache::upstream", error = %e, "writing the request failed; reading on");
                    out = None;
                    write_failed = true;
                }
                Poll::Pending => {}
            }
        }
        match conn.poll_head(cx, head_method_is_head, pass) {
            Poll::Pending if conn.deadline.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Err(match &out {
                    Some(o) if o.waits_for_server() => H1Error::SendStalled(response_timeout),
                    Some(_) => H1Error::RequestBodyStalled(response_timeout),
                    None => H1Error::ResponseTimeout,
                }))
            }
            polled => polled,
        }
    })
    .await;

    let head = match parsed {
        Ok(head) => head,
        Err(e) => {
            let nothing_back =
                conn.buf.is_empty() && matches!(e, H1Error::ClosedBeforeResponse | H1Error::Io(_));
            let idempotent = req.method().is_idempotent();
            if reused && nothing_back && empty && (idempotent || !wrote_any) {
                // (Its body was empty: what is in the box is the request as it came.)
                return Err(Failure::Unsent(req));
            }
            return Err(Failure::Failed(e));
        }
    };
    let reusable = head.keep_alive && !write_failed;
    let mut resp = Response::new(RespBody {
        conn: Some(conn),
        out: out.map(Box::new),
        framing: head.framing,
        reusable,
        raw: head.raw,
        read_timeout: response_timeout,
        rearm: true,
        dropped_trailers: false,
    });
    *resp.status_mut() = head.status;
    *resp.version_mut() = head.version;
    *resp.headers_mut() = head.headers;
    Ok(resp)
}

/// The request head in wire form, and whether the body goes chunked.
fn encode_head(
    req: &Request<ProxyBody>,
    body: &ProxyBody,
    wire: Option<&Forwarding>,
    head: &mut BytesMut,
) -> (Bytes, bool) {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let path = if path.is_empty() { "/" } else { path };
    let mut size = req.method().as_str().len() + path.len() + 13 + 40 + 160;
    for (name, value) in req.headers() {
        size += name.as_str().len() + value.len() + 4;
    }
    head.clear();
    head.reserve(size);
    head.extend_from_slice(req.method().as_str().as_bytes());
    head.extend_from_slice(b" ");
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    // Framing is this hop's business: written below from the body itself. So is
    // `Expect: 100-continue`: the client's hop answered it (as nginx, which clears it).
    let framing = |name: &HeaderName| {
        name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::EXPECT
    };
    match wire {
        Some(fwd) => fwd.write_head(req.headers(), framing, head),
        None => {
            for (name, value) in req.headers() {
                if framing(name) {
                    continue;
                }
                head.extend_from_slice(name.as_str().as_bytes());
                head.extend_from_slice(b": ");
                head.extend_from_slice(value.as_bytes());
                head.extend_from_slice(b"\r\n");
            }
        }
    }
    let chunked = match body_length(req, body) {
        Some(None) => false,
        Some(Some(n)) => {
            head.extend_from_slice(b"content-length: ");
            head.extend_from_slice(n.to_string().as_bytes());
            head.extend_from_slice(b"\r\n");
            false
        }
        None => {
            head.extend_from_slice(b"transfer-encoding: chunked\r\n");
            true
        }
    };
    head.extend_from_slice(b"\r\n");
    (head.split().freeze(), chunked)
}

/// `Some(None)`: no body and no `Content-Length` needed; `Some(Some(n))`: exactly `n`
/// bytes; `None`: unknown (chunked).
fn body_length(req: &Request<ProxyBody>, body: &ProxyBody) -> Option<Option<u64>> {
    let exact = if body.is_end_stream() {
        Some(0)
    } else {
        body.size_hint().exact()
    };
    match exact {
        Some(0) => {
            // Methods whose requests usually carry content say so even when empty
            // (RFC 9110 8.6), as does any request that came with a Content-Length.
            let says = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH)
                || crate::http::lookup::has(req.headers(), &header::CONTENT_LENGTH);
            Some(says.then_some(0))
        }
        Some(n) => Some(Some(n)),
        None => None,
    }
}

enum WriteError {
    /// The request body failed (the client went away, or sent too much).
    Body(BoxError),
    Io(io::Error),
}

/// The request still being written: queued segments, then the rest of the body.
struct Outgoing {
    /// The head, or what is left of it (kept apart: most requests are a head only,
    /// and then the queue never allocates).
    head: Bytes,
    queue: VecDeque<Bytes>,
    body: ProxyBody,
    chunked: bool,
    body_done: bool,
    flushed: bool,
}

impl Outgoing {
    fn new(head: Bytes, body: ProxyBody, chunked: bool) -> Outgoing {
        let body_done = body.is_end_stream();
        Outgoing {
            head,
            queue: VecDeque::new(),
            body,
            chunked,
            body_done,
            flushed: false,
        }
    }

    /// Writes what can be written; `Ready(Ok)` once the whole request is out.
    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut Stream,
        wrote_any: &mut bool,
    ) -> Poll<Result<(), WriteError>> {
        loop {
            // Gather what the body has ready, so the head and a small body go out in
            // one write.
            while !self.body_done && self.queue.len() < MAX_QUEUED {
                match Pin::new(&mut self.body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            self.push_data(data);
                        }
                        // Request trailers are not forwarded to HTTP/1.1 servers.
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(WriteError::Body(e))),
                    Poll::Ready(None) => {
                        self.body_done = true;
                        if self.chunked {
                            self.queue.push_back(Bytes::from_static(b"0\r\n\r\n"));
                        }
                    }
                    Poll::Pending => break,
                }
            }
            if self.head.is_empty() && self.queue.is_empty() {
                if !self.flushed {
                    ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(WriteError::Io)?;
                    self.flushed = true;
                }
                return if self.body_done {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
            let n = {
                let mut slices = [IoSlice::new(&[]); MAX_QUEUED + 1];
                let mut count = 0;
                let head = (!self.head.is_empty()).then_some(&self.head);
                for (slot, seg) in slices
                    .iter_mut()
                    .zip(head.into_iter().chain(self.queue.iter()))
                {
                    *slot = IoSlice::new(seg);
                    count += 1;
                }
                ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))
                    .map_err(WriteError::Io)?
            };
            if n == 0 {
                return Poll::Ready(Err(WriteError::Io(io::ErrorKind::WriteZero.into())));
            }
            *wrote_any = true;
            self.flushed = false;
            self.advance(n);
        }
    }

    /// Whether what holds the request up is the server: there are bytes to write
    /// (or to flush) that it has not taken. Otherwise it is the body, which has
    /// nothing more yet (after a `Pending` from [`Outgoing::poll_write`]).
    fn waits_for_server(&self) -> bool {
        !self.head.is_empty() || !self.queue.is_empty() || !self.flushed
    }

    fn push_data(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        if self.chunked {
            self.queue
                .push_back(Bytes::from(format!("{:x}\r\n", data.len())));
            self.queue.push_back(data);
            self.queue.push_back(Bytes::from_static(b"\r\n"));
        } else {
            self.queue.push_back(data);
        }
    }

    fn advance(&mut self, mut n: usize) {
        let from_head = n.min(self.head.len());
        self.head.advance(from_head);
        n -= from_head;
        while n > 0 {
            let Some(front) = self.queue.front_mut() else {
                return;
            };
            if front.len() <= n {
                n -= front.len();
                self.queue.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
}

/// How the response body is delimited, and how much of it is left.
#[derive(Debug, Clone, Copy)]
enum Framing {
    /// No body (HEAD, 204, 304, or `Content-Length: 0`).
    Empty,
    Length(u64),
    Chunked(Chunk),
    /// Until the server closes (neither length nor chunked): never reusable.
    Eof,
    Done,
}

struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    /// The head as received, when the caller takes it so and it needs no hygiene
    /// (then `headers` is empty).
    raw: Option<Box<RawHead>>,
    framing: Framing,
    keep_alive: bool,
}

impl Conn {
    /// Reads until a final (non-1xx) response head is complete.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        to_head: bool,
        pass: bool,
    ) -> Poll<Result<Head, H1Error>> {
        loop {
            if !self.buf.is_empty() {
                match parse_head(&mut self.buf, to_head, pass)? {
                    Parsed::Final(head) => return Poll::Ready(Ok(head)),
                    Parsed::Interim => continue,
                    Parsed::Partial => {
                        if self.buf.len() > MAX_HEAD_BYTES {
                            return Poll::Ready(Err(H1Error::HeadTooLarge));
                        }
                    }
                }
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(H1Error::ClosedBeforeResponse));
            }
        }
    }

    /// Up to `left` bytes of a delimited body: what is buffered, else what one read
    /// brings. `None`: the server closed first.
    fn poll_take(
        &mut self,
        cx: &mut Context<'_>,
        left: u64,
    ) -> Poll<Result<Option<Bytes>, H1Error>> {
        if self.buf.is_empty() && ready!(self.poll_fill(cx))? == 0 {
            return Poll::Ready(Ok(None));
        }
        let take = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(self.buf.len());
        Poll::Ready(Ok(Some(self.buf.split_to(take).freeze())))
    }

    /// Reads more into the buffer; `Ok(0)` at EOF.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

/// Where one header of a head sits in the buffer.
struct Span {
    name: usize,
    name_len: usize,
    value: usize,
    value_len: usize,
    /// It is `Content-Length`.
    length: bool,
}

/// Where a head's headers sit (on the stack for the usual few).
type Spans = smallvec::SmallVec<[Span; 12]>;

enum Parsed {
    Final(Head),
    /// A 1xx head was consumed; another head follows.
    Interim,
    Partial,
}

/// What one pass of httparse over the buffer found; nothing consumed yet.
enum Scan {
    Partial,
    /// A 1xx head of this many bytes.
    Interim(usize),
    Final(Scanned),
}

/// A final response head: what framing needs (its headers' places are in the spans
/// [`scan_head`] filled).
struct Scanned {
    len: usize,
    status: StatusCode,
    version: Version,
    /// The head can be passed on as received.
    raw: bool,
    keep_alive: bool,
    content_length: Option<u64>,
    transfer_chunked: Option<bool>,
    has_date: bool,
}

/// How many header slots a head in `buf` can need: a header line ends with a line
/// feed, so no more than `buf` has (nor than a head of [`MAX_HEAD_BYTES`] can hold).
fn header_room(buf: &[u8]) -> usize {
    let lines = memchr::memchr_iter(b'\n', &buf[..buf.len().min(MAX_HEAD_BYTES)]).count();
    lines.min(MAX_HEAD_BYTES / MIN_HEADER_LINE) + 1
}

/// Parses a response head. `pass`: the caller takes the head as received when it can
/// (see [`RawHead`]); a head with a hop-by-hop header other than the framing ones and
/// `Connection` options is read into the map all the same, so hygiene can see it.
///
/// Headers are counted into a stack array first; a head with more lines than that is
/// parsed again with room on the heap for as many as the buffer can hold. nginx bounds
/// an upstream head by its size (`proxy_buffer_size`), not by a count: so does this,
/// with [`MAX_HEAD_BYTES`].
fn parse_head(buf: &mut BytesMut, to_head: bool, pass: bool) -> Result<Parsed, H1Error> {
    if !read_later_minor_as_11(buf) {
        return Ok(Parsed::Partial);
    }
    let mut stack: [MaybeUninit<httparse::Header<'_>>; STACK_HEADERS] =
        [const { MaybeUninit::uninit() }; STACK_HEADERS];
    let mut spans = Spans::new();
    let scanned = match scan_head(&buf[..], &mut stack, pass, &mut spans) {
        Err(H1Error::Parse(httparse::Error::TooManyHeaders)) => {
            let mut heap = vec![MaybeUninit::uninit(); header_room(&buf[..])];
            match scan_head(&buf[..], &mut heap, pass, &mut spans) {
                // More lines than a head of the largest size can have.
                Err(H1Error::Parse(httparse::Error::TooManyHeaders)) => {
                    return Err(H1Error::HeadTooLarge)
                }
                scanned => scanned?,
            }
        }
        scanned => scanned?,
    };
    let Scanned {
        len,
        status,
        version,
        raw,
        mut keep_alive,
        content_length,
        transfer_chunked,
        has_date,
    } = match scanned {
        Scan::Partial => return Ok(Parsed::Partial),
        Scan::Interim(len) => {
            buf.advance(len);
            return Ok(Parsed::Interim);
        }
        Scan::Final(scanned) => scanned,
    };
    let head = buf.split_to(len).freeze();
    if transfer_chunked.is_some() && version == Version::HTTP_10 {
        // RFC 9112 6.1: HTTP/1.0 has no Transfer-Encoding, so the framing is faulty:
        // the body is still read as chunked below, and the connection closed after it.
        keep_alive = false;
    }
    let no_body = to_head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    // Whether `Content-Length` goes on (it does not when chunked framing overrides it).
    let (framing, keep_length) = if no_body {
        (Framing::Empty, true)
    } else {
        match (transfer_chunked, content_length) {
            (Some(true), cl) => {
                // Both framings: chunked wins, and the connection is not trusted again.
                if cl.is_some() {
                    keep_alive = false;
                }
                (Framing::Chunked(Chunk::Size), false)
            }
            (Some(false), _) => return Err(H1Error::TransferEncoding),
            (None, Some(0)) => (Framing::Empty, true),
            (None, Some(n)) => (Framing::Length(n), true),
            (None, None) => {
                keep_alive = false;
                (Framing::Eof, true)
            }
        }
    };
    let mut headers = HeaderMap::new();
    let raw = if raw {
        let mut raw = RawHead::new(head);
        for span in spans.iter().filter(|s| !s.length) {
            raw.keep(
                span.name,
                span.name + span.name_len,
                span.value + span.value_len,
            );
        }
        // The client's hop writes its own framing from this.
        raw.content_length = content_length.filter(|_| keep_length);
        raw.has_date = has_date;
        // Boxed: the head moves through several layers, and a response read into the
        // map (every one a module sees) would carry the room for nothing.
        Some(Box::new(raw))
    } else {
        headers.reserve(spans.len());
        for span in spans.iter().filter(|s| keep_length || !s.length) {
            let name_bytes = &head[span.name..span.name + span.name_len];
            let name = crate::http::names::header_name(name_bytes)
                .map_err(|_| H1Error::Header(String::from_utf8_lossy(name_bytes).into_owned()))?;
            let value =
                HeaderValue::from_maybe_shared(head.slice(span.value..span.value + span.value_len))
                    .map_err(|_| H1Error::Header(name.as_str().to_owned()))?;
            headers.append(name, value);
        }
        None
    };
    Ok(Parsed::Final(Head {
        status,
        version,
        headers,
        raw,
        framing,
        keep_alive,
    }))
}

/// Rewrites the version of a head that starts `HTTP/1.x ` with `x` a digit over 1 to
/// `HTTP/1.1`, which httparse refuses to read: RFC 9110 2.5 has a recipient process a
/// later minor version as the highest it implements (nginx passes these on too).
/// `HTTP/1.10` and other majors are left for httparse to refuse. `false`: the buffer
/// ends right after such a version, and the byte that says which it is must come first.
fn read_later_minor_as_11(buf: &mut [u8]) -> bool {
    const PREFIX: &[u8] = b"HTTP/1.";
    if !buf.starts_with(PREFIX) {
        return true;
    }
    match &mut buf[PREFIX.len()..] {
        [b'2'..=b'9'] => false,
        [minor @ b'2'..=b'9', b' ', ..] => {
            *minor = b'1';
            true
        }
        _ => true,
    }
}

/// One pass of httparse over `buf` with `storage` for the headers; `spans` gets the
/// place of each header a final head keeps.
fn scan_head<'b>(
    buf: &'b [u8],
    storage: &mut [MaybeUninit<httparse::Header<'b>>],
    pass: bool,
    spans: &mut Spans,
) -> Result<Scan, H1Error> {
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, storage)
        .map_err(H1Error::Parse)?
    {
        httparse::Status::Partial => return Ok(Scan::Partial),
        httparse::Status::Complete(len) => len,
    };
    let code = resp.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| H1Error::Parse(httparse::Error::Status))?;
    let version = if resp.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(H1Error::UnaskedUpgrade);
    }
    if status.is_informational() {
        return Ok(Scan::Interim(len));
    }

    // Where each header's name and value sit in the buffer, so values can be slices of
    // one frozen head (no copy per value).
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| s.as_ptr() as usize - base;
    let mut raw = pass;
    spans.clear();
    let mut keep_alive = version == Version::HTTP_11;
    let mut content_length: Option<u64> = None;
    let mut transfer_chunked: Option<bool> = None;
    let mut has_date = false;
    for h in resp.headers.iter() {
        let hop = Hop::of(h.name.as_bytes());
        match hop {
            Hop::Connection => {
                let mut only_options = true;
                for token in h.value.split(|b| *b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        keep_alive = false;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = keep_alive || version == Version::HTTP_10;
                    } else if !token.is_empty() {
                        only_options = false;
                    }
                }
                if only_options {
                    // Hop-by-hop and fully read: the proxy would drop it anyway.
                    continue;
                }
                // It names headers to drop: hygiene's work, on the map.
                raw = false;
            }
            Hop::ContentLength => {
                let n = parse_length(h.value).ok_or(H1Error::ContentLength)?;
                if content_length.is_some_and(|m| m != n) {
                    return Err(H1Error::ContentLength);
                }
                content_length = Some(n);
            }
            Hop::TransferEncoding => {
                // Every coding of every line (empty list elements do not count):
                // `chunked` once and nothing else is the only framing passed on. Any
                // other coding would reach the client still applied, with nothing
                // saying so; nginx answers 502 there too.
                for coding in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                    if coding.is_empty() {
                        continue;
                    }
                    transfer_chunked =
                        Some(transfer_chunked.is_none() && coding.eq_ignore_ascii_case(b"chunked"));
                }
                transfer_chunked.get_or_insert(false);
                continue;
            }
            Hop::KeepAlive => continue,
            Hop::OtherHopByHop => raw = false,
            Hop::Date => has_date = true,
            Hop::Kept => {}
        }
        spans.push(Span {
            name: offset(h.name.as_bytes()),
            name_len: h.name.len(),
            value: offset(h.value),
            value_len: h.value.len(),
            length: hop == Hop::ContentLength,
        });
    }
    Ok(Scan::Final(Scanned {
        len,
        status,
        version,
        raw,
        keep_alive,
        content_length,
        transfer_chunked,
        has_date,
    }))
}

/// A response body read from the connection. At its end the connection can be taken
/// back ([`RespBody::take_reusable`]) when framing and both sides allow reuse.
pub struct RespBody {
    conn: Option<Conn>,
    /// The rest of the request body, when the server answered before it was all sent
    /// (boxed: rare, and a request body may itself be an upstream body).
    out: Option<Box<Outgoing>>,
    framing: Framing,
    reusable: bool,
    /// The head as received, for the client's writer (see [`RawHead`]).
    raw: Option<Box<RawHead>>,
    /// Longest wait for body bytes (the set's `response_timeout`, as nginx's
    /// `proxy_read_timeout` covers the head and every read of the body).
    read_timeout: Duration,
    /// Bytes came since the deadline was last set: set it afresh at the next wait.
    rearm: bool,
    /// The body ended with a trailer block that was not valid, dropped (see
    /// [`RespBody::take_dropped_trailers`]).
    dropped_trailers: bool,
}

impl std::fmt::Debug for RespBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RespBody")
            .field("framing", &self.framing)
            .finish()
    }
}

impl RespBody {
    /// The connection, once the body has ended cleanly and it may serve another request.
    /// The response head as received, when it was kept so (once).
    pub fn take_raw_head(&mut self) -> Option<Box<RawHead>> {
        self.raw.take()
    }

    /// Whether the body ended with a trailer block that was not valid (once): the
    /// response kept its body, whole, and lost its trailers; the caller, who knows the
    /// server, says so.
    pub fn take_dropped_trailers(&mut self) -> bool {
        std::mem::take(&mut self.dropped_trailers)
    }

    pub fn take_reusable(&mut self) -> Option<Conn> {
        if !matches!(self.framing, Framing::Done | Framing::Empty) || !self.reusable {
            return None;
        }
        if self.out.is_some() {
            // The server answered before the request was all sent: its end of the
            // exchange is not where ours is.
            return None;
        }
        let conn = self.conn.take()?;
        // Bytes after the response: the server is not speaking HTTP/1.1 as we are.
        (conn.buf.is_empty()).then_some(conn)
    }

    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(o) = self.out.as_mut() {
            let mut wrote = false;
            let polled = o.poll_write(cx, &mut conn.io, &mut wrote);
            if wrote {
                // The exchange is moving (the rest of the request goes out): the wait
                // for response bytes counts from here.
                self.rearm = true;
            }
            match polled {
                Poll::Ready(Ok(())) => self.out = None,
                Poll::Ready(Err(WriteError::Io(e))) => {
                    tracing::debug!(target: "proxycache::upstream", error = %e, "writing the request body failed after the response began");
                    self.out = None;
                    self.reusable = false;
                }
                Poll::Ready(Err(WriteError::Body(_))) => {
                    // The response goes on without the rest of the request.
                    self.out = None;
                    self.reusable = false;
                }
                Poll::Pending => {}
            }
        }
        loop {
            match self.framing {
                Framing::Empty | Framing::Done => return Poll::Ready(None),
                Framing::Length(left) => {
                    let Some(data) = ready!(conn.poll_take(cx, left))? else {
                        return Poll::Ready(Some(Err(H1Error::ClosedMidBody)));
                    };
                    let left = left - data.len() as u64;
                    self.framing = if left == 0 {
                        Framing::Done
                    } else {
                        Framing::Length(left)
                    };
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Eof => {
                    if conn.buf.is_empty() && ready!(conn.poll_fill(cx))? == 0 {
                        self.framing = Framing::Done;
                        self.reusable = false;
                        return Poll::Ready(None);
                    }
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(mut at) => {
                    let step = chunked::step(&mut at, &mut conn.buf, MAX_HEAD_BYTES)
                        .map_err(|_| H1Error::Chunk)?;
                    self.framing = Framing::Chunked(at);
                    match step {
                        // Any size: a response body is not held to a limit here.
                        Step::Size(_) => {}
                        Step::Data(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        Step::Trailers(trailers) => {
                            self.framing = Framing::Done;
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        Step::End => {
                            self.framing = Framing::Done;
                            return Poll::Ready(None);
                        }
                        // The body is framed and whole; only its trailer section is
                        // bad. The response ends without it (resetting it would cost
                        // the client the whole answer), on a connection not trusted
                        // again.
                        Step::BadTrailers => {
                            self.framing = Framing::Done;
                            self.reusable = false;
                            self.dropped_trailers = true;
                            return Poll::Ready(None);
                        }
                        Step::More => {
                            if ready!(conn.poll_fill(cx))? == 0 {
                                return Poll::Ready(Some(Err(H1Error::ClosedMidBody)));
                            }
                        }
                    }
                }
            }
        }
    }
}

impl http_body::Body for RespBody {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = self.get_mut();
        let mut polled = this.poll_body(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) => this.rearm = true,
            // Waiting for the server: no longer than `read_timeout` since the last
            // bytes (the timer is moved only when bytes came since, so a body that
            // arrives with its head costs no timer work).
            Poll::Pending => {
                if let Some(conn) = this.conn.as_mut() {
                    if this.rearm {
                        this.rearm = false;
                        conn.deadline
                            .as_mut()
                            .reset(deadline_after(this.read_timeout));
                    }
                    if conn.deadline.as_mut().poll(cx).is_ready() {
                        polled = Poll::Ready(Some(Err(H1Error::BodyTimeout(this.read_timeout))));
                    }
                }
            }
            _ => {}
        }
        if let Poll::Ready(Some(Err(_))) = &polled {
            this.framing = Framing::Done;
            this.reusable = false;
            this.conn = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Empty | Framing::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty | Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, to_head: bool) -> Head {
        parse_passing(text, to_head, false)
    }

    fn parse_passing(text: &str, to_head: bool, pass: bool) -> Head {
        let mut buf = BytesMut::from(text.as_bytes());
        loop {
            match parse_head(&mut buf, to_head, pass) {
                Ok(Parsed::Final(head)) => return head,
                Ok(Parsed::Interim) => continue,
                Ok(Parsed::Partial) => panic!("partial"),
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn heads_frame_bodies_and_decide_reuse() {
        let h = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nX-A: b\r\n\r\n",
            false,
        );
        assert!(matches!(h.framing, Framing::Length(5)));
        assert!(h.keep_alive);
        assert!(h.headers.get("connection").is_none());
        assert_eq!(h.headers["x-a"], "b");
        assert_eq!(h.headers["content-length"], "5");

        let h = parse(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        );
        assert!(matches!(h.framing, Framing::Chunked(Chunk::Size)));
        assert!(h.headers.get("transfer-encoding").is_none());

        let h = parse("HTTP/1.0 200 OK\r\n\r\n", false);
        assert!(matches!(h.framing, Framing::Eof));
        assert!(!h.keep_alive);

        let h = parse(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(h.keep_alive);
        assert!(matches!(h.framing, Framing::Empty));

        let h = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\n",
            true,
        );
        assert!(matches!(h.framing, Framing::Empty));
        assert!(!h.keep_alive);

        let h = parse(
            "HTTP/1.1 200 OK\r\nConnection: x-secret\r\nX-Secret: 1\r\n\r\n",
            false,
        );
        assert!(
            h.headers.get("connection").is_some(),
            "left for hygiene to act on"
        );

        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
        );
        assert!(matches!(
            parse_head(&mut buf, false, false),
            Err(H1Error::ContentLength)
        ));
        let mut buf = BytesMut::from(&b"HTTP/1.1 101 Switching Protocols\r\n\r\n"[..]);
        assert!(matches!(
            parse_head(&mut buf, false, true),
            Err(H1Error::UnaskedUpgrade)
        ));
    }

    #[test]
    fn http10_with_transfer_encoding_is_read_chunked_and_not_kept() {
        for text in [
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n",
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            for pass in [false, true] {
                let h = parse_passing(text, false, pass);
                assert!(matches!(h.framing, Framing::Chunked(Chunk::Size)), "{text}");
                assert!(!h.keep_alive, "{text}");
            }
        }
        // Also where there is no body to read.
        let h = parse(
            "HTTP/1.0 204 No Content\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n",
            false,
        );
        assert!(!h.keep_alive);
    }

    #[test]
    fn later_http1_minor_versions_read_as_http11() {
        let h = parse("HTTP/1.2 200 OK\r\nContent-Length: 0\r\n\r\n", false);
        assert_eq!(h.version, Version::HTTP_11);
        assert!(h.keep_alive);
        let h = parse(
            "HTTP/1.9 100 Continue\r\n\r\nHTTP/1.3 204 No Content\r\n\r\n",
            false,
        );
        assert_eq!(h.status, StatusCode::NO_CONTENT);
        // The byte after the minor version decides: wait for it.
        let mut buf = BytesMut::from(&b"HTTP/1.2"[..]);
        assert!(matches!(
            parse_head(&mut buf, false, false),
            Ok(Parsed::Partial)
        ));
        for text in ["HTTP/1.10 200 OK\r\n\r\n", "HTTP/2.0 200 OK\r\n\r\n"] {
            let mut buf = BytesMut::from(text.as_bytes());
            assert!(
                matches!(parse_head(&mut buf, false, false), Err(H1Error::Parse(_))),
                "{text}"
            );
        }
    }

    #[test]
    fn heads_of_more_lines_than_the_stack_holds_parse_on_the_heap() {
        let mut text = String::from("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n");
        for i in 0..STACK_HEADERS * 3 {
            text.push_str(&format!("X-{i}: {i}\r\n"));
        }
        text.push_str("\r\n");
        let h = parse(&text, false);
        assert_eq!(h.headers.len(), STACK_HEADERS * 3 + 1);
        assert_eq!(h.headers["x-383"], "383");
        let h = parse_passing(&text, false, true);
        assert_eq!(raw_lines(&h).len(), STACK_HEADERS * 3);

        // Partial: more lines than the stack holds and no end yet.
        let mut buf = BytesMut::from(&text.as_bytes()[..text.len() - 2]);
        assert!(matches!(
            parse_head(&mut buf, false, false),
            Ok(Parsed::Partial)
        ));
    }

    fn raw_lines(head: &Head) -> Vec<String> {
        head.raw
            .as_ref()
            .expect("passed as received")
            .lines()
            .map(|(_, l)| String::from_utf8_lossy(l).into_owned())
            .collect()
    }

    #[test]
    fn heads_pass_as_received_without_framing_or_hop_by_hop_lines() {
        let h = parse_passing(
            "HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Mon, 07 Dec 2026 06:00:00 GMT\r\n\
             Content-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
             X-A:b  \r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nhello",
            false,
            true,
        );
        assert!(h.headers.is_empty(), "{:?}", h.headers);
        assert_eq!(
            raw_lines(&h),
            [
                "Server: nginx",
                "Date: Mon, 07 Dec 2026 06:00:00 GMT",
                "X-A:b",
                "Set-Cookie: a=1",
                "Set-Cookie: b=2"
            ]
        );
        let raw = h.raw.as_ref().expect("raw");
        assert_eq!(raw.content_length, Some(5));
        assert!(raw.has_date);
        assert!(matches!(h.framing, Framing::Length(5)));
        assert!(h.keep_alive);

        // Chunked: no length to pass on, however many Content-Lengths came with it.
        let h = parse_passing(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            true,
        );
        assert_eq!(raw_lines(&h), Vec::<String>::new());
        assert_eq!(h.raw.as_ref().and_then(|r| r.content_length), None);
        assert!(!h.keep_alive);
        // HEAD: the length of what a GET would have had goes on.
        let h = parse_passing("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true, true);
        assert_eq!(h.raw.as_ref().and_then(|r| r.content_length), Some(10));
        assert!(matches!(h.framing, Framing::Empty));
    }

    #[test]
    fn heads_with_hop_by_hop_headers_go_through_the_map() {
        for text in [
            // Connection naming a header (hygiene drops both), however late it comes.
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Secret: 1\r\nConnection: x-secret\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nUpgrade: h2c\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTrailer: x-sum\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nProxy-Authenticate: Basic\r\n\r\n",
        ] {
            let h = parse_passing(text, false, true);
            assert!(h.raw.is_none(), "{text}");
            // The map has everything hygiene needs, the framing length included.
            assert_eq!(h.headers["content-length"], "2", "{text}");
            assert!(h.headers.len() >= 2, "{text}");
        }
    }

    /// Differential: over many generated heads (names in any case, repeats, every
    /// framing and hop-by-hop header in random order), a head passed as received
    /// carries exactly what the map path carries after header hygiene, the framing
    /// length as a fact, and the same framing and reuse decision.
    #[test]
    fn passed_heads_agree_with_the_map_path_after_hygiene() {
        const LINES: &[&str] = &[
            "Server: nginx",
            "server: Other",
            "Date: Mon, 07 Dec 2026 06:00:00 GMT",
            "Content-Type: text/plain",
            "X-A: 1",
            "x-a: 2",
            "Set-Cookie: a=1",
            "Set-Cookie: b=2",
            "Via: 1.1 up",
            "Content-Length: 5",
            "content-length: 5",
            "Transfer-Encoding: chunked",
            "Transfer-Encoding: gzip",
            "Connection: close",
            "Connection: keep-alive",
            "Connection: x-a",
            "Keep-Alive: timeout=5",
            "Upgrade: h2c",
            "TE: trailers",
            "Trailer: x-sum",
            "Proxy-Connection: keep-alive",
            "CONTENT-TYPE: text/html",
            "X-Empty:",
            "X-Spaces:   ",
        ];
        let mut rng = fastrand::Rng::with_seed(9);
        let mut passed = 0;
        for round in 0..2000 {
            let n = rng.usize(0..8);
            let lines: Vec<&str> = (0..n).map(|_| LINES[rng.usize(..LINES.len())]).collect();
            let status = [
                "200 OK",
                "204 No Content",
                "304 Not Modified",
                "404 Not Found",
            ][rng.usize(..4)];
            let version = if rng.bool() { "1.1" } else { "1.0" };
            let to_head = rng.usize(..5) == 0;
            let text = format!(
                "HTTP/{version} {status}\r\n{}\r\n",
                lines.iter().map(|l| format!("{l}\r\n")).collect::<String>()
            );
            let parse = |pass: bool| {
                let mut buf = BytesMut::from(text.as_bytes());
                match parse_head(&mut buf, to_head, pass) {
                    Ok(Parsed::Final(head)) => Some(head),
                    Ok(_) => panic!("round {round}: not a final head:\n{text}"),
                    Err(_) => None,
                }
            };
            let (Some(raw), Some(mut map)) = (parse(true), parse(false)) else {
                assert!(
                    parse(true).is_none() && parse(false).is_none(),
                    "round {round}: one path refused:\n{text}"
                );
                continue;
            };
            assert_eq!(raw.status, map.status, "round {round}");
            assert_eq!(raw.keep_alive, map.keep_alive, "round {round}:\n{text}");
            assert_eq!(
                format!("{:?}", raw.framing),
                format!("{:?}", map.framing),
                "round {round}:\n{text}"
            );
            let Some(rh) = raw.raw.as_ref() else {
                continue;
            };
            passed += 1;
            assert!(raw.headers.is_empty(), "round {round}");
            crate::http::hygiene::strip_hop_by_hop(&mut map.headers);
            let length = map
                .headers
                .get(header::CONTENT_LENGTH)
                .map(|v| v.to_str().unwrap_or_default().to_owned());
            assert_eq!(
                rh.content_length.map(|n| n.to_string()),
                length,
                "round {round}:\n{text}"
            );
            let mut from_map: Vec<(String, String)> = map
                .headers
                .iter()
                .filter(|(n, _)| **n != header::CONTENT_LENGTH)
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        v.to_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            let mut from_raw: Vec<(String, String)> = rh
                .lines()
                .map(|(name, line)| {
                    let value = &line[name.len() + 1..];
                    (
                        String::from_utf8_lossy(name).to_ascii_lowercase(),
                        String::from_utf8_lossy(value).trim().to_owned(),
                    )
                })
                .collect();
            from_map.sort();
            from_raw.sort();
            assert_eq!(from_raw, from_map, "round {round}:\n{text}");
        }
        assert!(passed > 200, "only {passed} heads took the raw path");
    }

    /// Bodies are moved through every request's future: an upstream body owning its
    /// connection must not make them bigger (the connection is boxed).
    #[test]
    fn bodies_stay_small() {
        let size = std::mem::size_of::<ProxyBody>();
        assert!(size <= 96, "ProxyBody is {size} bytes");
    }
}
