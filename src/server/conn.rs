//! One client connection: HTTP/1.1 served by `h1` (the server's own loop), and what
//! it hands on — HTTP/2 (prior knowledge, or as ALPN chose on TLS listeners) and
//! `Upgrade`/`CONNECT` requests — served by hyper, with a watchdog that enforces
//! `timeouts.header` (a request head must arrive within it once its first byte has)
//! and `timeouts.idle` (a connection with nothing in flight is closed), and graceful
//! shutdown (a connection with nothing in flight is closed `SHUTDOWN_GRACE` after it
//! began, whether or not an HTTP/2 client acknowledged the `GOAWAY`). HTTP/2 streams
//! run under `stall`'s send timeout, and their answers are framed by `h2`'s rules
//! (HEAD, 204 and 304 without a body, a `content-length` only where it is true).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::Config;

use super::stall::{StallClock, StreamExec};
use super::worker::WorkerCtx;

/// Per-connection facts the request path needs.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub scheme: &'static str,
    pub activity: Activity,
    /// The peer's IP as a header value (`X-Forwarded-For`), formatted once.
    pub peer_ip: http::HeaderValue,
    /// The process's response counters (`/stats`): a request is counted when it
    /// completes, a client's abort (499) included.
    pub stats: Arc<crate::stats::Stats>,
}

impl ConnInfo {
    /// A connection from `peer` to `local` that has just opened.
    pub fn new(
        peer: SocketAddr,
        local: SocketAddr,
        scheme: &'static str,
        stats: Arc<crate::stats::Stats>,
    ) -> Self {
        ConnInfo {
            peer,
            local,
            scheme,
            activity: Activity::new(),
            peer_ip: crate::http::hygiene::ip_value(peer.ip()),
            stats,
        }
    }
}

/// Premature resets (see [`Activity::request_abandoned`]) a client may make within one
/// [`RESET_WINDOW`] before the ratio check applies.
pub const ABANDONED_LIMIT: u64 = 100;

/// A request the client gives up sooner than this after it arrived is a premature
/// reset (Envoy's `premature_reset_min_stream_lifetime`); one given up later is not
/// counted at all.
pub const PREMATURE_RESET: Duration = Duration::from_secs(1);

/// Premature resets are counted per window of this length: a long-lived connection
/// is judged by its recent behaviour, not by all it ever did.
pub const RESET_WINDOW: Duration = Duration::from_secs(10);

/// What the watchdog reads: requests in flight, and when things last happened, in
/// milliseconds since the connection opened (0 = never).
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    inflight: AtomicU32,
    last_done_ms: AtomicU64,
    head_started_ms: AtomicU64,
    /// Whether a watchdog reads this (connections hyper serves): only then is the time
    /// of each finished request worth a clock read.
    watched: AtomicBool,
    /// Requests started on this connection (the head scanner restarts per request).
    started: AtomicU64,
    /// The head being read carries both Content-Length and Transfer-Encoding (hyper
    /// silently drops the former, so only the raw bytes show it).
    ambiguous_framing: AtomicBool,
    /// Premature resets in the current window (HTTP/2: streams reset before their
    /// answer, young). Locked only when a request is given up, never per request.
    resets: parking_lot::Mutex<ResetWindow>,
    /// Told when abandoned requests say the client abuses the connection.
    abuse: tokio::sync::Notify,
}

impl Activity {
    fn new() -> Self {
        Activity {
            opened: Instant::now(),
            inflight: AtomicU32::new(0),
            last_done_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(0),
            watched: AtomicBool::new(false),
            started: AtomicU64::new(0),
            ambiguous_framing: AtomicBool::new(false),
            resets: parking_lot::Mutex::new(ResetWindow::default()),
            abuse: tokio::sync::Notify::new(),
        }
    }

    /// A request ended before its answer because the client gave it up (a reset
    /// HTTP/2 stream), `age` after it arrived. Opening streams and resetting each once
    /// it reaches the upstream (slower than the rapid reset hyper counts) makes
    /// upstream requests at no cost to the client. So a premature reset (younger than
    /// [`PREMATURE_RESET`], as Envoy counts them) is counted per [`RESET_WINDOW`]; once
    /// a window holds [`ABANDONED_LIMIT`] of them and they are over half of the
    /// requests the window saw, the watchdog closes the connection gracefully (GOAWAY;
    /// streams already accepted finish). A client that cancels requests it waited for
    /// (a page left, a gRPC deadline of a second or more), or cancels at a human pace,
    /// keeps its connection.
    pub fn request_abandoned(&self, age: Duration) {
        if age >= PREMATURE_RESET {
            return;
        }
        let now = self.now_ms();
        let started = self.started.load(Ordering::Relaxed);
        let inflight = u64::from(self.inflight.load(Ordering::Relaxed));
        if self.resets.lock().premature(now, started, inflight) {
            self.abuse.notify_one();
        }
    }

    fn now_ms(&self) -> u64 {
        // +1 so that "0" keeps meaning "never".
        self.opened.elapsed().as_millis() as u64 + 1
    }

    /// A request head has been parsed (called by the request path). Returns whether
    /// its raw head carried both Content-Length and Transfer-Encoding.
    pub fn request_started(&self) -> bool {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        self.head_started_ms.store(0, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        self.ambiguous_framing.swap(false, Ordering::Relaxed)
    }

    /// A response has been sent in full or abandoned.
    pub fn request_finished(&self) {
        if self.watched.load(Ordering::Relaxed) {
            self.last_done_ms.store(self.now_ms(), Ordering::Relaxed);
        }
        self.inflight.fetch_sub(1, Ordering::Relaxed);
    }

    /// A watchdog starts reading this connection (hyper serves it from now on, maybe
    /// after the server's own loop served earlier requests): idle time counts from now.
    fn watch(&self) {
        self.last_done_ms.store(self.now_ms(), Ordering::Relaxed);
        self.watched.store(true, Ordering::Relaxed);
    }

    fn bytes_read(&self) {
        if self.inflight.load(Ordering::Relaxed) == 0
            && self.head_started_ms.load(Ordering::Relaxed) == 0
        {
            // No wake-up: the watchdog looks at least every `header` (see `serve_io`).
            self.head_started_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }
}

/// The premature resets of one window, and the requests it saw.
#[derive(Debug, Default)]
struct ResetWindow {
    /// When the window opened (ms since the connection opened).
    opened_ms: u64,
    /// Requests started before the window opened and not in flight then.
    before: u64,
    /// Premature resets in this window (0: no window open).
    premature: u64,
}

impl ResetWindow {
    /// Counts a premature reset at `now_ms`, when `started` requests have started on
    /// the connection and `inflight` (the reset one included) are running. True when
    /// the window now says the client abuses the connection.
    fn premature(&mut self, now_ms: u64, started: u64, inflight: u64) -> bool {
        if self.premature == 0
            || now_ms.saturating_sub(self.opened_ms) >= RESET_WINDOW.as_millis() as u64
        {
            // Requests in flight when the window opens count as the window's: the
            // reset ones among them are counted here too.
            *self = ResetWindow {
                opened_ms: now_ms,
                before: started.saturating_sub(inflight),
                premature: 0,
            };
        }
        self.premature += 1;
        let requests = started.saturating_sub(self.before);
        self.premature >= ABANDONED_LIMIT && self.premature * 2 > requests
    }
}

/// How long a connection hyper serves may take, once shutdown has begun and nothing
/// is in flight on it, to finish closing by itself. hyper's HTTP/2 graceful shutdown
/// waits for the client to acknowledge the `GOAWAY`'s `PING`: a client that never
/// does would otherwise hold the whole drain (`timeouts.shutdown_drain`).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// What the watchdog decided.
enum Verdict {
    /// Check again at this instant.
    Wait(Instant),
    /// A request head is overdue: drop the connection.
    HeaderTimeout,
    /// Nothing in flight for `idle`: close gracefully.
    Idle,
}

fn judge(a: &Activity, header: Duration, idle: Duration) -> Verdict {
    let now = a.now_ms();
    let (header_ms, idle_ms) = (header.as_millis() as u64, idle.as_millis() as u64);
    if a.inflight.load(Ordering::Relaxed) > 0 {
        return Verdict::Wait(Instant::now() + header.min(idle));
    }
    let head = a.head_started_ms.load(Ordering::Relaxed);
    if head != 0 {
        if now.saturating_sub(head) >= header_ms {
            return Verdict::HeaderTimeout;
        }
        return Verdict::Wait(a.opened + Duration::from_millis(head + header_ms));
    }
    let last = a.last_done_ms.load(Ordering::Relaxed).max(1);
    if now.saturating_sub(last) >= idle_ms {
        return Verdict::Idle;
    }
    Verdict::Wait(a.opened + Duration::from_millis(last + idle_ms))
}

/// The socket (or the decrypted side of a TLS stream), reporting reads to the
/// watchdog and scanning request heads.
struct WatchedIo<S> {
    stream: S,
    /// Bytes already read from `stream` (by `h1`), served before it.
    read: Bytes,
    conn: Arc<ConnInfo>,
    /// `None` on connections ALPN made HTTP/2: their bytes are frames, not heads.
    scan: Option<HeadScan>,
}

/// Reads request-head lines as they pass (bodies are never scanned: it stops at the
/// blank line) and notices a head with both `Content-Length` and
/// `Transfer-Encoding`, which hyper would otherwise hide by dropping the former.
#[derive(Default)]
struct HeadScan {
    /// Value of `Activity::started` when the current head began.
    request: u64,
    done: bool,
    /// The start of the current line, lower-cased.
    line: [u8; 18],
    len: usize,
    saw_cl: bool,
    saw_te: bool,
}

impl HeadScan {
    /// Feeds bytes read; returns true when a head just ended with both headers.
    fn feed(&mut self, request: u64, bytes: &[u8]) -> bool {
        if request != self.request {
            *self = HeadScan {
                request,
                ..HeadScan::default()
            };
        }
        if self.done {
            return false;
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            // Only a line's first bytes matter: copy those, skip to the newline.
            let end = memchr::memchr(b'\n', rest);
            let seg = &rest[..end.unwrap_or(rest.len())];
            let take = (self.line.len() - self.len).min(seg.len());
            for (d, s) in self.line[self.len..self.len + take].iter_mut().zip(seg) {
                *d = s.to_ascii_lowercase();
            }
            self.len += take;
            let Some(end) = end else {
                break;
            };
            let line = &self.line[..self.len];
            if line.is_empty() || line == b"\r" {
                self.done = true;
                return self.saw_cl && self.saw_te;
            }
            self.saw_cl |=
                line.starts_with(b"content-length:") || line.starts_with(b"content-length ");
            self.saw_te |= line.starts_with(b"transfer-encoding");
            self.len = 0;
            rest = &rest[end + 1..];
        }
        false
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WatchedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = if this.read.is_empty() {
            Pin::new(&mut this.stream).poll_read(cx, buf)
        } else {
            // What `h1` read before handing the connection over comes first.
            let n = this.read.len().min(buf.remaining());
            buf.put_slice(&this.read[..n]);
            this.read.advance(n);
            Poll::Ready(Ok(()))
        };
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let activity = &this.conn.activity;
            // Bytes on an idle HTTP/1.1 connection start a request head (the header
            // timeout runs); on HTTP/2 (no scan) they may be a PING or a WINDOW_UPDATE
            // between requests, which must not put the idle connection on the header
            // clock: requests there are counted by the request path itself.
            if this.scan.is_some() {
                activity.bytes_read();
            }
            let started = activity.started.load(Ordering::Relaxed);
            let ambiguous = this
                .scan
                .as_mut()
                .is_some_and(|scan| scan.feed(started, &buf.filled()[before..]));
            if ambiguous {
                activity.ambiguous_framing.store(true, Ordering::Relaxed);
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WatchedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The hyper builder for a generation's limits: HTTP/1.1 with keep-alive and HTTP/2
/// by prior knowledge on the same listener; HTTP/2 streams run under the send timeout
/// (`timeouts.idle`, see `stall`), and `peer` is the client, for its log.
pub fn http_builder(config: &Config, peer: SocketAddr) -> auto::Builder<StreamExec> {
    let limits = &config.server.limits;
    let mut builder = auto::Builder::new(StreamExec {
        send_timeout: config.server.timeouts.idle,
        peer,
    });
    // hyper's own 431 is a backstop at twice the limit; below that the request path
    // answers 431 itself, with an x-request-id.
    let hyper_limit = limits.max_header_bytes.saturating_mul(2).max(16 * 1024);
    builder
        .http1()
        .keep_alive(true)
        .max_buf_size(hyper_limit)
        // The watchdog owns header and idle timeouts: hyper's header timer would also
        // run while a keep-alive connection is idle and so cut `idle` to `header`.
        .header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(256);
    builder
}

/// Which HTTP version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Whichever the client's first bytes say (plain listeners, TLS without ALPN).
    Auto,
    /// ALPN chose `http/1.1`.
    Http1,
    /// ALPN chose `h2`.
    Http2,
}

/// Serves one accepted plain-HTTP connection until it closes, times out or shutdown
/// drains it.
pub async fn serve(stream: TcpStream, peer: SocketAddr, ctx: Arc<WorkerCtx>) {
    let local = stream.local_addr().unwrap_or(peer);
    serve_io(stream, peer, local, "http", Protocol::Auto, ctx).await;
}

/// Serves one connection over any byte stream (a socket, or a TLS stream after its
/// handshake); `scheme` is what `X-Forwarded-Proto` says.
pub async fn serve_io<S>(
    stream: S,
    peer: SocketAddr,
    local: SocketAddr,
    scheme: &'static str,
    protocol: Protocol,
    ctx: Arc<WorkerCtx>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(ConnInfo::new(
        peer,
        local,
        scheme,
        Arc::clone(&ctx.shared.stats),
    ));
    let (stream, read, protocol) = match protocol {
        Protocol::Http2 => (stream, Bytes::new(), Protocol::Http2),
        Protocol::Http1 | Protocol::Auto => {
            match super::h1::serve(stream, &conn, &ctx, protocol == Protocol::Auto).await {
                super::h1::Served::Closed => return,
                super::h1::Served::Handoff {
                    stream,
                    read,
                    http2,
                } => (
                    stream,
                    read,
                    if http2 {
                        Protocol::Http2
                    } else {
                        Protocol::Http1
                    },
                ),
            }
        }
    };
    serve_hyper(stream, read, conn, protocol, ctx).await;
}

/// hyper serves the rest of a connection `h1` handed on (`read`: the bytes `h1`
/// read and did not consume).
async fn serve_hyper<S>(
    stream: S,
    read: Bytes,
    conn: Arc<ConnInfo>,
    protocol: Protocol,
    ctx: Arc<WorkerCtx>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let generation = ctx.shared.generation();
    let timeouts = generation.config.server.timeouts.clone();
    let builder = match protocol {
        Protocol::Auto => http_builder(&generation.config, peer),
        Protocol::Http1 => http_builder(&generation.config, peer).http1_only(),
        Protocol::Http2 => http_builder(&generation.config, peer).http2_only(),
    };
    drop(generation);

    let io = TokioIo::new(WatchedIo {
        stream,
        read,
        conn: Arc::clone(&conn),
        scan: (protocol != Protocol::Http2).then(HeadScan::default),
    });
    let svc_conn = Arc::clone(&conn);
    let svc_ctx = Arc::clone(&ctx);
    // An HTTP/1.1 connection comes here for an `Upgrade` or `CONNECT` request. When it
    // is not upgraded, the connection ends with that answer: a request pipelined
    // behind it would otherwise be parsed by hyper alone, past the checks `h1` makes
    // on every head (hyper drops a `Content-Length` sent with `Transfer-Encoding`).
    let close_unless_upgraded = protocol == Protocol::Http1;
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        // hyper's HTTP/2 sends the head and body it is handed (its HTTP/1.1 frames
        // them itself): they are made to agree first, see `h2::frame_answer`.
        let http2 = req.version() == http::Version::HTTP_2;
        let head_request = req.method() == http::Method::HEAD;
        let answer = crate::proxy::handle(
            req.map(crate::http::body::RequestBody::Hyper),
            Arc::clone(&svc_conn),
            Arc::clone(&svc_ctx),
            crate::proxy::Writer::MapOnly,
        );
        async move {
            let mut resp = answer.await?;
            if http2 {
                super::h2::frame_answer(&mut resp, head_request);
            }
            // On an HTTP/2 stream: the body tells the stream's send timeout how far
            // the client has taken it.
            if let Some(clock) = StallClock::current() {
                resp.body_mut().watch_stall(clock);
            }
            if close_unless_upgraded && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                resp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    // With upgrades: a `101` hands the socket to the request path's tunnel (see
    // `proxy::upgrade`), and this connection is then over.
    let served = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(served);

    let mut shutdown = ctx.shared.shutdown_signal();
    let mut draining = *shutdown.borrow();
    // While the server shuts down: when a connection with nothing in flight may be
    // closed without waiting for hyper (see `SHUTDOWN_GRACE`).
    let mut shutdown_close = None;
    if draining {
        served.as_mut().graceful_shutdown();
        shutdown_close = Some(Instant::now() + SHUTDOWN_GRACE);
    }
    // One timer for the connection's life, moved rather than made anew.
    let sleep = tokio::time::sleep(timeouts.header);
    tokio::pin!(sleep);
    conn.activity.watch();
    loop {
        if let Some(at) = shutdown_close {
            if Instant::now() >= at && conn.activity.inflight.load(Ordering::Relaxed) == 0 {
                tracing::debug!(target: "proxycache::server", %peer, "shutting down: nothing in flight; closing");
                return;
            }
        }
        let deadline = match judge(&conn.activity, timeouts.header, timeouts.idle) {
            Verdict::Wait(at) => at,
            Verdict::HeaderTimeout => {
                tracing::debug!(target: "proxycache::server", %peer, "request header timeout; closing");
                return;
            }
            Verdict::Idle if !draining => {
                draining = true;
                served.as_mut().graceful_shutdown();
                Instant::now() + timeouts.header
            }
            Verdict::Idle => return,
        };
        // Nothing wakes the watchdog when a request head starts arriving (that would
        // cost every request a wake-up and a new timer), so it looks again at least
        // every `header`: a head that started since is then judged by its own deadline.
        let deadline = deadline.min(Instant::now() + timeouts.header);
        let deadline = shutdown_close.map_or(deadline, |at| {
            // Past the grace a request is still running: look again soon after it ends.
            deadline.min(at.max(Instant::now() + SHUTDOWN_GRACE / 4))
        });
        sleep.as_mut().reset(deadline);
        tokio::select! {
            result = served.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(target: "proxycache::server", %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.changed(), if !draining || shutdown_close.is_none() => {
                if !draining {
                    served.as_mut().graceful_shutdown();
                }
                draining = true;
                shutdown_close = Some(Instant::now() + SHUTDOWN_GRACE);
            }
            _ = conn.activity.abuse.notified(), if !draining => {
                // Graceful: GOAWAY, and the streams already accepted (the client's
                // honest requests among them) still finish.
                tracing::warn!(target: "proxycache::server", %peer, "the client reset most of its recent requests early (premature resets); closing the connection gracefully");
                draining = true;
                served.as_mut().graceful_shutdown();
            }
            _ = sleep.as_mut() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{HeadScan, ResetWindow, ABANDONED_LIMIT, RESET_WINDOW};

    #[test]
    fn a_burst_of_premature_resets_is_abuse() {
        let mut w = ResetWindow::default();
        // 100 streams opened, then reset one by one.
        let fired: Vec<bool> = (0..ABANDONED_LIMIT)
            .map(|i| w.premature(10, 100, 100 - i))
            .collect();
        assert!(!fired[..99].iter().any(|&f| f));
        assert!(fired[99]);
    }

    #[test]
    fn resets_among_many_answers_are_not_abuse() {
        let mut w = ResetWindow::default();
        // Within one window, two requests answered for each one reset.
        let fired = (0..150).any(|i| w.premature(10 + i, 250 + 3 * i, 1));
        assert!(!fired);
    }

    #[test]
    fn resets_at_a_steady_pace_open_new_windows() {
        let mut w = ResetWindow::default();
        let step = 2 * RESET_WINDOW.as_millis() as u64 / ABANDONED_LIMIT;
        // Nothing but resets, at half the limit's pace: no window holds the limit.
        let fired = (0..1_000u64).any(|i| w.premature(1 + i * step, i + 1, 1));
        assert!(!fired);
    }

    #[test]
    fn heads_with_both_framings_are_noticed() {
        let mut s = HeadScan::default();
        assert!(!s.feed(0, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"));
        assert!(s.feed(0, b"Transfer-Encoding: chunked\r\n\r\nhello"));
    }

    #[test]
    fn bodies_and_plain_heads_are_not_flagged() {
        let mut s = HeadScan::default();
        assert!(!s.feed(
            0,
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n\ncontent-length: 1\r\n"
        ));
        // The next request starts a new scan.
        assert!(!s.feed(1, b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"));
    }
}
