//! `ResponseBody`: the body handed to hyper for every response. It counts the bytes
//! sent (on HTTP/2 also telling the stream's send timeout, `server::stall`), and when
//! the response is finished (or the client goes away) its drop runs the request's
//! epilogue: the in-flight count of the upstream server and of the connection go
//! down, the log phase runs, and the access log line is written. A request still
//! unanswered when it is dropped was given up by its client (`499`), unless the
//! shutdown drain ran out of time and the proxy cut it (`503`, with reason `shutdown`
//! in the access log); its log phase runs too, with that status and no response.
//!
//! A body that fails partway (an upstream that resets, closes short of its length, or
//! stalls past its `response_timeout`) is told here, for every client protocol: a
//! WARN with the request id, upstream and server, and `reason = "upstream_body"` on
//! the access line. (A client that goes away is the server loop's to tell.)

use std::fmt;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use crate::generation::Generation;

use bytes::Bytes;
use http::{Method, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};

use crate::http::body::BoxError;
use crate::http::{ProxyBody, RequestId};
use crate::server::conn::ConnInfo;
use crate::server::stall::{BodyWatch, StallClock};
use crate::upstream::{InflightGuard, ServerState};

/// What the access log line says about a request.
#[derive(Debug)]
pub struct AccessEntry {
    pub method: Method,
    pub uri: Uri,
    pub version: http::Version,
    pub client_ip: IpAddr,
    pub id: RequestId,
    pub upstream: Option<Arc<str>>,
    /// The server, when no in-flight guard names it at the end: the one a failed
    /// exchange was with, or an upgrade's (its tunnel holds the guard).
    pub server: Option<String>,
    /// The server last sent to, set before the wait for its answer: what a request
    /// the client gave up on meanwhile (499) names.
    pub waiting: Option<Arc<ServerState>>,
    pub start: Instant,
    /// How long the proxy's upstream exchange took to its response head (or to its
    /// failure), connects and retries included: nginx's `$upstream_header_time`.
    pub upstream_ms: Option<f64>,
}

/// Everything that must happen when a response is over.
#[derive(Debug)]
pub struct Completion {
    pub conn: Arc<ConnInfo>,
    pub status: StatusCode,
    pub inflight: Option<InflightGuard>,
    pub access: Option<Box<AccessEntry>>,
    pub bytes: u64,
    /// The pipeline state while the request runs.
    /// Boxed: the completion travels inside the response body, which hyper moves
    /// several times per request.
    pub script: Option<Box<super::phases::ScriptState>>,
    /// The log phase, when a module has one.
    pub log: Option<Box<super::phases::LogJob>>,
    /// What the request metrics need.
    pub meter: Meter,
    /// A response was made (else the client gave the request up: `status` is 499;
    /// or the shutdown drain cut it: 503).
    pub answered: bool,
    /// The request's id, unless it is lent to the pipeline (see [`Self::request_id`]).
    pub id: RequestId,
    /// Why the response ended before its body did, when it did (the access line's
    /// `reason`).
    pub cut: Option<&'static str>,
}

/// Where a request went, for the request counters and the latency histogram.
#[derive(Debug)]
pub struct Meter {
    pub generation: Arc<Generation>,
    pub start: Instant,
    /// Index of the route that matched.
    pub route: Option<u32>,
    /// Index of the upstream set that answered (or was asked).
    pub upstream: Option<u32>,
}

impl Meter {
    /// A meter for a request that arrived now.
    pub fn new(generation: Arc<Generation>) -> Self {
        Meter {
            generation,
            start: Instant::now(),
            route: None,
            upstream: None,
        }
    }

    /// The upstream set that answered (or was asked).
    fn set(&self) -> Option<&crate::upstream::UpstreamSet> {
        let i = self.upstream? as usize;
        self.generation.upstreams.sets.get(i).map(|set| &**set)
    }

    /// Counts the finished request: once, when its response is over.
    fn record(&self, status: StatusCode) {
        let g = &self.generation;
        g.meters.record(
            &g.std_state.metrics,
            self.route.map(|r| r as usize),
            self.upstream.map(|u| u as usize),
            status,
            self.start.elapsed(),
        );
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        let mut reason = None;
        if !self.answered {
            if crate::server::worker::drain_cut() {
                // Not the client: the drain time ran out and the worker dropped it.
                self.status = StatusCode::SERVICE_UNAVAILABLE;
                reason = Some(SHUTDOWN);
            } else {
                // Before `request_finished`: the abandoned request is still in flight.
                self.conn
                    .activity
                    .request_abandoned(self.meter.start.elapsed());
            }
        }
        self.conn.activity.request_finished();
        self.conn.stats.record(self.status);
        self.meter.record(self.status);
        if let Some(job) = self.log.take().or_else(|| self.unanswered_log()) {
            job.run();
        }
        if let Some(entry) = self.access.take() {
            let end = (self.status, self.bytes, reason.or(self.cut));
            write_access_log(&entry, end, self.inflight.as_ref());
        }
    }
}

impl Completion {
    /// The request's id: the pipeline's, which holds it once lent, else this one.
    pub fn request_id(&self) -> &RequestId {
        if let Some(state) = &self.script {
            return &state.info.id;
        }
        if let Some(job) = &self.log {
            return &job.state.info.id;
        }
        &self.id
    }

    /// The response's body failed after its head was made: the client gets what came
    /// and a connection closed (HTTP/1.1) or a reset stream (HTTP/2). A body that
    /// fails is the upstream's (nginx: "upstream prematurely closed connection while
    /// reading upstream"), or a module's that made it: a WARN that names the request,
    /// the upstream and the server, and the access line says so. Told once.
    pub fn body_failed(&mut self, error: &dyn fmt::Display) {
        let what = "the upstream's response body failed; the response to the client is cut short";
        self.cut_short(UPSTREAM_BODY, what, error);
        // Counted against the server as a failure before the head would be.
        if let (Some(guard), Some(set)) = (self.inflight.as_mut(), self.meter.set()) {
            guard.body_failed(set.name());
        }
    }

    /// Tells a response cut short: `reason` for the access line, `what` happened for
    /// the WARN (with the request, and the upstream and server when it has them).
    fn cut_short(&mut self, reason: &'static str, what: &str, error: &dyn fmt::Display) {
        if self.cut.is_some() {
            return;
        }
        self.cut = Some(reason);
        let upstream = self.meter.set();
        let server = self
            .inflight
            .as_ref()
            .map(|g| g.server().label())
            .or(self.access.as_ref().and_then(|e| e.server.as_deref()))
            .unwrap_or("-");
        let id = self.request_id();
        tracing::warn!(
            target: "proxycache::proxy",
            request_id = %id,
            upstream = upstream.map_or("-", |set| set.name()),
            server,
            bytes = self.bytes,
            error = %error,
            "{what}"
        );
    }

    /// The log phase of a request that ended with no response (the client left: 499;
    /// the shutdown drain cut it: 503), for the modules it reached, whichever phase
    /// it was in. It sees that status and no response headers.
    fn unanswered_log(&mut self) -> Option<Box<super::phases::LogJob>> {
        if self.answered || !self.meter.generation.pipeline.has_log_phase() {
            return None;
        }
        let state = self.script.take()?;
        Some(Box::new(super::phases::LogJob {
            generation: Arc::clone(&self.meter.generation),
            state,
            status: self.status,
            response_headers: http::HeaderMap::new(),
        }))
    }
}

/// The access log's `reason` for a request the shutdown drain cut.
const SHUTDOWN: &str = "shutdown";
/// The access log's `reason` for a response whose body failed partway.
const UPSTREAM_BODY: &str = "upstream_body";
/// The access log's `reason` for a response whose body ended short of its declared
/// length (a length a module set).
const SHORT_BODY: &str = "short_body";

/// `end`: the status, bytes sent and why the proxy ended the request, if it did.
fn write_access_log(
    e: &AccessEntry,
    end: (StatusCode, u64, Option<&'static str>),
    server: Option<&InflightGuard>,
) {
    let (status, bytes, reason) = end;
    access_line(&AccessLine {
        method: e.method.as_str(),
        // The target as in an HTTP/1.1 request line (an HTTP/2 request's URI is
        // absolute: scheme and authority are not the path); an authority-form one
        // (`CONNECT a.example:443`, or one refused for being it) is its authority.
        path: match (e.uri.path_and_query(), e.uri.authority()) {
            (Some(p), _) => p.as_str(),
            (None, Some(a)) => a.as_str(),
            (None, None) => "/",
        },
        protocol: protocol_name(e.version),
        status,
        bytes,
        duration_ms: e.start.elapsed().as_secs_f64() * 1000.0,
        upstream_ms: e.upstream_ms,
        upstream: e.upstream.as_deref().unwrap_or("-"),
        server: server
            .map(|g| g.server().label())
            .or(e.server.as_deref())
            .or(e.waiting.as_deref().map(ServerState::label))
            .unwrap_or("-"),
        client: e.client_ip,
        id: &e.id,
        reason,
    });
}

/// `version` as a request line spells it; HTTP/2 as nginx logs it (`HTTP/2.0`).
pub fn protocol_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// One access-log line's fields.
pub struct AccessLine<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The request's HTTP version as its request line spells it (nginx's
    /// `$server_protocol`); `-` for a head that could not be read.
    pub protocol: &'a str,
    pub status: StatusCode,
    pub bytes: u64,
    pub duration_ms: f64,
    /// See [`AccessEntry::upstream_ms`]; no field when `None`.
    pub upstream_ms: Option<f64>,
    pub upstream: &'a str,
    pub server: &'a str,
    pub client: IpAddr,
    pub id: &'a RequestId,
    /// Why the proxy ended the request itself (`shutdown`); no field when `None`.
    pub reason: Option<&'a str>,
}

/// Writes an access-log line: the one place its fields are named, for answered
/// requests and refused heads alike.
pub fn access_line(l: &AccessLine<'_>) {
    tracing::info!(
        target: "proxycache::access",
        method = l.method,
        path = l.path,
        protocol = l.protocol,
        status = l.status.as_u16(),
        bytes = l.bytes,
        duration_ms = crate::observe::to_microseconds(l.duration_ms),
        upstream_ms = l.upstream_ms.map(crate::observe::to_microseconds),
        upstream = l.upstream,
        server = l.server,
        client = %l.client,
        request_id = %l.id,
        reason = l.reason,
    );
}

/// The response body: the real body plus the completion that runs when it is done.
#[derive(Debug)]
pub struct ResponseBody {
    inner: ProxyBody,
    completion: Completion,
    /// On an HTTP/2 stream: its send timeout's clock (`server::stall`). Boxed: most
    /// responses (HTTP/1.1) have none, and this body is moved several times.
    stall: Option<Box<BodyWatch>>,
}

impl ResponseBody {
    /// Wraps `inner`; `completion` runs when this body is dropped.
    pub fn new(inner: ProxyBody, completion: Completion) -> Self {
        ResponseBody {
            inner,
            completion,
            stall: None,
        }
    }

    /// Reports to `clock` each frame hyper takes, and each time it asks for more.
    pub fn watch_stall(&mut self, clock: Arc<StallClock>) {
        self.stall = Some(Box::new(BodyWatch::new(clock)));
    }

    /// The body ended `missing` bytes short of the length the response head declared
    /// (a length a module set): told as a failed body is ([`Completion::body_failed`]).
    pub fn ended_short(&mut self, missing: u64) {
        let what = "the response body ended short of the content-length sent to the client";
        let error = format!("{missing} bytes missing");
        self.completion.cut_short(SHORT_BODY, what, &error);
    }

    /// The request's id.
    pub fn request_id(&self) -> &RequestId {
        self.completion.request_id()
    }

    /// See [`ProxyBody::take_raw_head`].
    pub fn take_raw_head(&mut self) -> Option<Box<crate::http::RawHead>> {
        self.inner.take_raw_head()
    }

    /// Drops the body now, unread, and leaves an empty one (the answer to a HEAD
    /// request); the completion still runs when this body is dropped. As when
    /// `server::h1` drops a HEAD answer's body: an upstream body that had ended gives
    /// its connection back to the pool, one that had not closes it.
    pub fn discard(&mut self) {
        self.inner = ProxyBody::Empty;
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(watch) = this.stall.as_deref_mut() else {
            let polled = Pin::new(&mut this.inner).poll_frame(cx);
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        this.completion.bytes += data.len() as u64;
                    }
                }
                Poll::Ready(Some(Err(e))) => this.completion.body_failed(e),
                _ => {}
            }
            return polled;
        };
        let data = match watch.asked() {
            Some(slice) => slice,
            None => match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => watch.slice(data),
                    Err(other) => return Poll::Ready(Some(Ok(other))),
                },
                Some(Err(e)) => {
                    this.completion.body_failed(&e);
                    return Poll::Ready(Some(Err(e)));
                }
                None => return Poll::Ready(None),
            },
        };
        this.completion.bytes += data.len() as u64;
        watch.handed();
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.stall.as_ref().is_none_or(|w| w.held_back() == 0) && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        let held = self.stall.as_ref().map_or(0, |w| w.held_back() as u64);
        if held > 0 {
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper.saturating_add(held));
            }
            hint.set_lower(hint.lower().saturating_add(held));
        }
        hint
    }
}
