//! Sending one request to one server: a pooled connection if there is a live one,
//! otherwise a new connection (see `connect`) within `connect_timeout`. HTTP/1.1 sets
//! use connections driven by the request's own task (`h1`), `http2 = true` sets
//! hyper's (`connect::connect`). The response head must arrive within
//! `response_timeout`. A request that a pooled connection hands back (the server
//! closed it at the same moment: `h1::Failure::Unsent`, or hyper's unsent message) is
//! sent again on a fresh connection, so a stale keep-alive connection does not turn
//! into a 502.
//!
//! hyper's exchanges (`http2 = true` sets) keep the same times as `h1`'s: while the
//! request body goes out, `response_timeout` from its last progress, and whose turn it
//! was when that runs out says who is blamed (see `progress`); then `response_timeout`
//! for the head, and at most that between two reads of the response body.
//!
//! Requests arrive here in HTTP/1.1 shape (origin-form URI, `Host`); one going out on
//! an HTTP/2 connection is reshaped (`:scheme` and `:authority` from the endpoint and
//! `Host`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;

use crate::http::body::BoxError;
use crate::http::hygiene::Forwarding;
use crate::http::ProxyBody;

use super::connect::{self, ConnectFailure, ConnectStage, Endpoint};
use super::h1;
use super::pool::{Pool, Sender};
use super::progress::{self, Progress, Turn};

/// Why a send failed, before it is mapped to a `ProxyError` by the caller.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made; the request was not sent and is handed back.
    Connect(std::io::Error, Box<Request<ProxyBody>>),
    /// The connect did not finish in time (the step it was in); the request is handed
    /// back.
    ConnectTimeout(ConnectStage, Box<Request<ProxyBody>>),
    /// The TLS handshake failed (the reason in words); the request is handed back.
    Tls(String, Box<Request<ProxyBody>>),
    /// The request was (perhaps partly) sent and failed.
    Upstream(BoxError),
    /// A fresh connection closed before the request could be written.
    Closed,
    /// No response head within the response timeout.
    ResponseTimeout,
    /// The request body (from the client) made no progress for the response timeout
    /// while the server waited for it.
    RequestBodyStalled(Duration),
    /// The server took none of the request for the response timeout while there was
    /// more of it to send (it stopped reading).
    SendTimeout(Duration),
    /// The server does not speak the protocol this exchange needs (an upgrade's
    /// HTTP/1.1 to a server that speaks only HTTP/2): a mismatch of configuration,
    /// not a failure of the server's.
    Unsupported(String),
}

impl SendError {
    /// What went wrong, in words (`connect failed: Connection refused (os error 111)`,
    /// `no response within 2s`); `timeout`: the response timeout the send was given.
    pub fn describe(&self, timeout: Duration) -> String {
        match self {
            SendError::Connect(io, _) => format!("connect failed: {io}"),
            SendError::ConnectTimeout(stage, _) => format!("{} timed out", stage.step()),
            SendError::Tls(reason, _) => reason.clone(),
            SendError::Upstream(e) => e.to_string(),
            SendError::Closed => "the connection closed".into(),
            SendError::ResponseTimeout => format!("no response within {timeout:?}"),
            SendError::RequestBodyStalled(t) => {
                format!("the request body made no progress within {t:?}")
            }
            SendError::SendTimeout(t) => {
                format!("the server read none of the request within {t:?}")
            }
            SendError::Unsupported(reason) => reason.clone(),
        }
    }
}

/// Sends `req` to `ep` and waits up to `response_timeout` for the response head.
/// `wire`: forwarding headers to write into the head; given only for HTTP/1.1 sets
/// (an `http2 = true` set's request carries them in its map).
pub async fn send(
    pool: &Arc<Pool>,
    ep: &Arc<Endpoint>,
    response_timeout: Duration,
    mut req: Box<Request<ProxyBody>>,
    wire: Option<&Forwarding>,
) -> Result<Response<UpstreamBody>, SendError> {
    // Whatever goes upstream is HTTP/1.1 (or HTTP/2, from this map), which needs a
    // host; only an HTTP/1.0 client's request (or one made here without one) comes
    // without: it gets the server's address as configured (nginx sends its upstream's
    // name).
    if !crate::http::lookup::has(req.headers(), &header::HOST) {
        if let Ok(host) = HeaderValue::from_str(&ep.authority) {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    if ep.key.http2 {
        debug_assert!(
            wire.is_none(),
            "forwarding headers for hyper belong in the map"
        );
        // Boxed: hyper's exchange is a large future, and every request's future
        // (HTTP/1.1 sets too) would otherwise carry and copy its size at each await.
        return Box::pin(send_hyper(pool, ep, response_timeout, req)).await;
    }
    while let Some(sender) = pool.checkout(&ep.key, ep.pool.idle_timeout) {
        // (An HTTP/1.1 key only ever holds connections of our own.)
        let Sender::Own(conn) = sender else {
            continue;
        };
        match send_own(pool, ep, response_timeout, conn, req, true, wire).await {
            Ok(resp) => return Ok(resp),
            Err(Retry::Unsent(back)) => req = back,
            Err(Retry::Failed(e)) => return Err(e),
        }
    }
    // Boxed: a new connection is the rare path, and its future is large.
    let stream = match Box::pin(connect::open_stream(ep)).await {
        Ok(stream) => stream,
        Err(failure) => return Err(connect_failed(failure, req)),
    };
    pool.count_opened();
    let conn = h1::Conn::new(stream);
    match send_own(pool, ep, response_timeout, conn, req, false, wire).await {
        Ok(resp) => Ok(resp),
        Err(Retry::Unsent(_)) => Err(SendError::Closed),
        Err(Retry::Failed(e)) => Err(e),
    }
}

/// The request handed back with why its connection could not be made.
pub(super) fn connect_failed(failure: ConnectFailure, req: Box<Request<ProxyBody>>) -> SendError {
    match failure {
        ConnectFailure::Io(e) => SendError::Connect(e, req),
        ConnectFailure::Timeout(stage) => SendError::ConnectTimeout(stage, req),
        ConnectFailure::Tls(reason) | ConnectFailure::NoCommonProtocol(reason) => {
            SendError::Tls(reason, req)
        }
    }
}

/// One exchange on a connection of our own (see `h1`).
async fn send_own(
    pool: &Arc<Pool>,
    ep: &Arc<Endpoint>,
    response_timeout: Duration,
    conn: h1::Conn,
    req: Box<Request<ProxyBody>>,
    reused: bool,
    wire: Option<&Forwarding>,
) -> Result<Response<UpstreamBody>, Retry> {
    match h1::send(conn, req, reused, response_timeout, wire).await {
        Err(h1::Failure::Failed(h1::H1Error::ResponseTimeout)) => {
            Err(Retry::Failed(SendError::ResponseTimeout))
        }
        Err(h1::Failure::Failed(h1::H1Error::RequestBodyStalled(t))) => {
            Err(Retry::Failed(SendError::RequestBodyStalled(t)))
        }
        Err(h1::Failure::Failed(h1::H1Error::SendStalled(t))) => {
            Err(Retry::Failed(SendError::SendTimeout(t)))
        }
        Err(h1::Failure::Unsent(back)) => Err(Retry::Unsent(back)),
        Err(h1::Failure::Failed(e)) => Err(Retry::Failed(SendError::Upstream(Box::new(e)))),
        Ok(resp) => {
            let back = PoolReturn {
                pool: Arc::clone(pool),
                ep: Arc::clone(ep),
                sender: None,
            };
            Ok(resp.map(|body| UpstreamBody {
                inner: Inner::Own(Box::new(body)),
                back: Some(back),
            }))
        }
    }
}

/// [`send`] for an `http2 = true` set: hyper's connections (HTTP/2, or HTTP/1.1 when
/// TLS ALPN did not pick `h2`).
async fn send_hyper(
    pool: &Arc<Pool>,
    ep: &Arc<Endpoint>,
    response_timeout: Duration,
    mut req: Box<Request<ProxyBody>>,
) -> Result<Response<UpstreamBody>, SendError> {
    while let Some(mut sender) = pool.checkout(&ep.key, ep.pool.idle_timeout) {
        // A pooled connection becomes ready once its connection task has seen the
        // previous response end; one that closed meanwhile fails here, unsent.
        if sender.ready().await.is_err() {
            continue;
        }
        match try_send(pool, ep, response_timeout, sender, *req).await {
            Ok(resp) => return Ok(resp),
            Err(Retry::Unsent(back)) => req = back,
            Err(Retry::Failed(e)) => return Err(e),
        }
    }
    // Boxed: a new connection is the rare path, and the handshake's future is large
    // (inline, it would grow every request's future).
    let sender = match Box::pin(connect::connect(ep)).await {
        Ok(sender) => sender,
        Err(failure) => return Err(connect_failed(failure, req)),
    };
    pool.count_opened();
    if let Sender::H2(shared) = &sender {
        // Shared at once: requests arriving meanwhile multiplex over it.
        pool.checkin(
            &ep.key,
            Sender::H2(shared.clone()),
            ep.pool.max_idle_per_server,
        );
    }
    match try_send(pool, ep, response_timeout, sender, *req).await {
        Ok(resp) => Ok(resp),
        Err(Retry::Unsent(_)) => Err(SendError::Closed),
        Err(Retry::Failed(e)) => Err(e),
    }
}

enum Retry {
    Unsent(Box<Request<ProxyBody>>),
    Failed(SendError),
}

async fn try_send(
    pool: &Arc<Pool>,
    ep: &Arc<Endpoint>,
    response_timeout: Duration,
    sender: Sender,
    req: Request<ProxyBody>,
) -> Result<Response<UpstreamBody>, Retry> {
    let mut sender = match sender {
        Sender::H1(s) => HyperSender::H1(s),
        Sender::H2(s) => HyperSender::H2(s),
        // Never here: `send` drives its own connections itself.
        Sender::Own(_) => return Err(Retry::Failed(SendError::Closed)),
    };
    // The body goes out from hyper's connection task: its progress is shared.
    let (parts, body) = req.into_parts();
    let (body, progress) = progress::watch(body);
    let req = Request::from_parts(parts, body);
    let watched = progress.as_deref();
    let sent = match &mut sender {
        HyperSender::H1(s) => {
            within(response_timeout, watched, s.try_send_request(for_h1(req))).await
        }
        HyperSender::H2(s) => {
            within(
                response_timeout,
                watched,
                s.try_send_request(for_h2(req, ep)),
            )
            .await
        }
    };
    let resp = match sent {
        Err(e) => return Err(Retry::Failed(e)),
        Ok(Ok(resp)) => resp,
        Ok(Err(mut e)) => {
            return Err(match e.take_message() {
                Some(req) => Retry::Unsent(Box::new(req)),
                None => Retry::Failed(SendError::Upstream(Box::new(e.into_error()))),
            })
        }
    };
    // An HTTP/1.1 connection goes back into the pool when the response body has been
    // read to the end (see `UpstreamBody`); a body abandoned half-way takes it down
    // with it. An HTTP/2 connection is already shared.
    let back = PoolReturn {
        pool: Arc::clone(pool),
        ep: Arc::clone(ep),
        sender: Some(sender),
    };
    Ok(resp.map(|incoming| UpstreamBody {
        inner: Inner::Hyper(Box::new(HyperBody {
            incoming,
            read_timeout: response_timeout,
            deadline: None,
            rearm: false,
            request: progress,
        })),
        back: Some(back),
    }))
}

/// Waits for hyper's exchange as `h1::send` waits for its own: while the request body
/// goes out, up to `timeout` from its last progress, and once it has all been handed
/// over, `timeout` from then for the head. When that runs out, whose turn it was says
/// who is blamed: the client's body (408, the server not charged), the server not
/// taking more of it (504), or the server's answer (504). Without a body, `timeout`.
async fn within<F: Future>(
    timeout: Duration,
    progress: Option<&Progress>,
    exchange: F,
) -> Result<F::Output, SendError> {
    let Some(progress) = progress else {
        return tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| SendError::ResponseTimeout);
    };
    let mut exchange = std::pin::pin!(exchange);
    let mut sleep = std::pin::pin!(tokio::time::sleep(timeout));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = exchange.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        loop {
            ready!(sleep.as_mut().poll(cx));
            let Some(deadline) = progress.last().checked_add(timeout) else {
                // Further off than time goes: only the exchange ends the wait.
                return Poll::Pending;
            };
            if deadline > tokio::time::Instant::now() {
                // The body moved since the timer was set.
                sleep.as_mut().reset(deadline);
                continue;
            }
            return Poll::Ready(Err(match progress.turn() {
                Turn::Client => SendError::RequestBodyStalled(timeout),
                Turn::Server => SendError::SendTimeout(timeout),
                Turn::Done => SendError::ResponseTimeout,
            }));
        }
    })
    .await
}

/// A response body from hyper, read with `h1::RespBody`'s wait: no longer than
/// `read_timeout` since the last bytes came, or since the request body, when it was
/// still going out as the head came, last moved (a server may answer early and read
/// a slow upload before it sends its body).
#[derive(Debug)]
struct HyperBody {
    incoming: Incoming,
    read_timeout: Duration,
    /// The wait for the next bytes; made at the first wait.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes came since the deadline was last set: set it afresh at the next wait.
    rearm: bool,
    /// The request body's progress (`None`: it had none to send).
    request: Option<Arc<Progress>>,
}

impl HyperBody {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        let polled = match http_body::Body::poll_frame(Pin::new(&mut self.incoming), cx) {
            Poll::Pending => return self.poll_wait(cx),
            Poll::Ready(polled) => polled,
        };
        if matches!(polled, Some(Ok(_))) {
            self.rearm = true;
        }
        Poll::Ready(polled.map(|r| r.map_err(|e| Box::new(e) as BoxError)))
    }

    /// The body has nothing now: `Pending`, or the timeout's error once the wait is
    /// over.
    fn poll_wait(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        let deadline = match &mut self.deadline {
            Some(deadline) => {
                if std::mem::take(&mut self.rearm) {
                    deadline
                        .as_mut()
                        .reset(h1::deadline_after(self.read_timeout));
                }
                deadline
            }
            None => {
                self.rearm = false;
                self.deadline
                    .insert(Box::pin(tokio::time::sleep_until(h1::deadline_after(
                        self.read_timeout,
                    ))))
            }
        };
        loop {
            ready!(deadline.as_mut().poll(cx));
            let moved = self
                .request
                .as_ref()
                .and_then(|p| p.last().checked_add(self.read_timeout))
                .filter(|later| *later > tokio::time::Instant::now());
            match moved {
                Some(later) => deadline.as_mut().reset(later),
                None => {
                    let timeout = h1::H1Error::BodyTimeout(self.read_timeout);
                    return Poll::Ready(Some(Err(Box::new(timeout))));
                }
            }
        }
    }
}

/// Reshapes an HTTP/1.1-shaped request for an HTTP/2 connection: absolute URI
/// (`:scheme`, `:authority` from `Host` or the server's address), no `Host`.
fn for_h2(mut req: Request<ProxyBody>, ep: &Endpoint) -> Request<ProxyBody> {
    if req.version() == Version::HTTP_2 {
        return req;
    }
    let host = req.headers_mut().remove(header::HOST);
    let authority = host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .unwrap_or(&ep.authority);
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let absolute = Uri::builder()
        .scheme(ep.scheme())
        .authority(authority)
        .path_and_query(path)
        .build();
    match absolute {
        Ok(uri) => *req.uri_mut() = uri,
        // An authority that does not parse: the server's own address does.
        Err(_) => {
            if let Ok(uri) = Uri::builder()
                .scheme(ep.scheme())
                .authority(ep.authority.as_str())
                .path_and_query(path)
                .build()
            {
                *req.uri_mut() = uri;
            }
        }
    }
    *req.version_mut() = Version::HTTP_2;
    req
}

/// The reverse of [`for_h2`], for a request handed back by an HTTP/2 connection and
/// retried on an HTTP/1.1 one (a server that stopped offering `h2`).
fn for_h1(mut req: Request<ProxyBody>) -> Request<ProxyBody> {
    if req.version() != Version::HTTP_2 {
        return req;
    }
    if let Some(authority) = req.uri().authority() {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            req.headers_mut().entry(header::HOST).or_insert(host);
        }
    }
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    if let Ok(origin) = path.parse() {
        *req.uri_mut() = origin;
    }
    *req.version_mut() = Version::HTTP_11;
    req
}

/// What is needed to put a connection back into its pool.
struct PoolReturn {
    pool: Arc<Pool>,
    ep: Arc<Endpoint>,
    /// A hyper connection's sender; `None` for our own, which the body hands back.
    sender: Option<HyperSender>,
}

impl std::fmt::Debug for PoolReturn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolReturn")
            .field("key", &self.ep.key)
            .finish()
    }
}

/// A hyper connection's sender (kept apart from [`Sender`] so that a response body
/// does not carry room for a whole connection of our own).
enum HyperSender {
    H1(hyper::client::conn::http1::SendRequest<ProxyBody>),
    H2(hyper::client::conn::http2::SendRequest<ProxyBody>),
}

impl From<HyperSender> for Sender {
    fn from(s: HyperSender) -> Sender {
        match s {
            HyperSender::H1(s) => Sender::H1(s),
            HyperSender::H2(s) => Sender::H2(s),
        }
    }
}

#[derive(Debug)]
enum Inner {
    /// Boxed: with its timer, larger than the other.
    Hyper(Box<HyperBody>),
    /// Boxed: the body owns the connection, and bodies are moved around a lot.
    Own(Box<h1::RespBody>),
}

/// An upstream response body that returns its connection to the pool once read to
/// the end — without a task per request.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Inner,
    back: Option<PoolReturn>,
}

impl UpstreamBody {
    /// The response head as received, when the exchange kept it so (see `RawHead`).
    pub fn take_raw_head(&mut self) -> Option<Box<crate::http::RawHead>> {
        match &mut self.inner {
            Inner::Own(body) => body.take_raw_head(),
            Inner::Hyper(_) => None,
        }
    }

    fn give_back(&mut self) {
        let Some(back) = self.back.take() else {
            return;
        };
        let sender = match (back.sender, &mut self.inner) {
            (Some(sender), _) => sender.into(),
            (None, Inner::Own(body)) => match body.take_reusable() {
                Some(conn) => Sender::Own(conn),
                None => return,
            },
            (None, Inner::Hyper(_)) => return,
        };
        back.pool
            .checkin(&back.ep.key, sender, back.ep.pool.max_idle_per_server);
    }
}

impl http_body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            Inner::Hyper(b) => b.poll_frame(cx),
            Inner::Own(b) => {
                let polled = Pin::new(b.as_mut())
                    .poll_frame(cx)
                    .map_err(|e| Box::new(e) as BoxError);
                if b.take_dropped_trailers() {
                    if let Some(back) = &this.back {
                        tracing::warn!(
                            target: "proxycache::upstream",
                            upstream = %back.ep.upstream,
                            server = %back.ep.addr,
                            "upstream sent an invalid trailer section; the response goes on without its trailers"
                        );
                    }
                }
                polled
            }
        };
        match &polled {
            Poll::Ready(None) => this.give_back(),
            Poll::Ready(Some(Err(_))) => this.back = None,
            Poll::Ready(Some(Ok(_))) if this.is_end_stream() => this.give_back(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Hyper(b) => b.incoming.is_end_stream(),
            Inner::Own(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.inner {
            Inner::Hyper(b) => b.incoming.size_hint(),
            Inner::Own(b) => b.size_hint(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // hyper stops polling a body that says it has ended, so the end may only be
        // visible here. Anything else is a half-read body: its connection is dropped.
        if http_body::Body::is_end_stream(self) {
            self.give_back();
        }
    }
}
