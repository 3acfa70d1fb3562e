//! Shared helpers for the integration tests: tiny upstream servers on port 0, a
//! proxycache started in-process from a TOML string, and clients (hyper HTTP/1.1,
//! hyper HTTP/2 prior knowledge, and raw sockets for malformed requests).
//!
//! Every network wait has a timeout so a broken proxy fails a test instead of hanging it.

#![allow(dead_code)]

pub mod h2raw;
pub mod log;
pub mod pki;
pub mod prometheus;
pub mod redis;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxycache::server::ServerHandle;
use proxycache::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How long any single client exchange may take before the test fails.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The Host header the helpers send unless told otherwise: a name the admin API
/// answers without a key (it refuses other DNS names, as a rebinding web page sends).
pub const TEST_HOST: &str = "localhost";

// ---- upstream servers ---------------------------------------------------------------

/// How an upstream answers (every variant also serves the health endpoint).
#[derive(Clone, Debug)]
pub struct Behavior {
    /// Status of normal answers (the body is always the JSON echo).
    pub status: u16,
    /// Sleep this long before answering.
    pub delay: Option<Duration>,
    /// Only delay requests whose path starts with this prefix (all when `None`).
    pub delay_prefix: Option<String>,
    /// Answer with `connection: close` (the server then closes after the response).
    pub close_after_response: bool,
    /// Close a keep-alive connection once it has been idle this long (no notice).
    pub idle_close: Option<Duration>,
    /// Extra response headers.
    pub headers: Vec<(String, String)>,
    /// Answer with this body instead of the JSON echo.
    pub body: Option<Bytes>,
    /// Send the body in several chunks with no `Content-Length` (chunked framing).
    pub chunked: bool,
}

impl Behavior {
    /// 200 with a JSON echo of the request.
    pub fn echo() -> Self {
        Behavior {
            status: 200,
            delay: None,
            delay_prefix: None,
            close_after_response: false,
            idle_close: None,
            headers: Vec::new(),
            body: None,
            chunked: false,
        }
    }

    /// Sleep `ms` before answering every request.
    pub fn slow(ms: u64) -> Self {
        Behavior {
            delay: Some(Duration::from_millis(ms)),
            ..Self::echo()
        }
    }

    /// Sleep `ms` only for paths starting with `prefix`; answer the rest at once.
    pub fn slow_on(prefix: &str, ms: u64) -> Self {
        Behavior {
            delay: Some(Duration::from_millis(ms)),
            delay_prefix: Some(prefix.to_owned()),
            ..Self::echo()
        }
    }

    /// A fixed status (with the echo body).
    pub fn status(code: u16) -> Self {
        Behavior {
            status: code,
            ..Self::echo()
        }
    }

    /// `connection: close` on every response.
    pub fn close_after_response() -> Self {
        Behavior {
            close_after_response: true,
            ..Self::echo()
        }
    }

    /// Close keep-alive connections idle for `ms`.
    pub fn idle_close(ms: u64) -> Self {
        Behavior {
            idle_close: Some(Duration::from_millis(ms)),
            ..Self::echo()
        }
    }

    /// Answer with `body`; `chunked` sends it in pieces with no `Content-Length`.
    pub fn fixed_body(body: impl Into<Bytes>, chunked: bool) -> Self {
        Behavior {
            body: Some(body.into()),
            chunked,
            ..Self::echo()
        }
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// One request as an upstream received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    /// Path and query as received.
    pub uri: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    /// A header's value as text (the first one), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

/// What an upstream counts and records; shared with the test.
#[derive(Debug)]
pub struct UpstreamState {
    pub name: String,
    /// TCP connections accepted.
    pub accepts: AtomicUsize,
    /// Requests other than health checks (including ones answered by failing).
    pub requests: AtomicUsize,
    /// Requests to the health path.
    pub health_checks: AtomicUsize,
    /// Requests being handled right now (health checks excluded).
    pub inflight: AtomicUsize,
    /// Connections that have ended (closed by either side, or failed).
    pub closed: AtomicUsize,
    /// What `/healthz` answers: 200 when true, 500 when false.
    pub healthy: AtomicBool,
    /// When true, requests are read and then the connection is dropped without an answer.
    pub fail: AtomicBool,
    /// Every non-health request, in arrival order.
    pub log: Mutex<Vec<Recorded>>,
}

/// The health endpoint every test upstream serves.
pub const HEALTH_PATH: &str = "/healthz";

/// A tiny hyper 1 HTTP/1.1 server on 127.0.0.1:0, running as tokio tasks of the test.
pub struct Upstream {
    pub addr: SocketAddr,
    pub state: Arc<UpstreamState>,
    accept_task: JoinHandle<()>,
}

impl Upstream {
    /// Starts an upstream called `name` (the name is in every echo body as `server`).
    pub async fn start(name: &str, behavior: Behavior) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream local addr");
        let state = Arc::new(UpstreamState {
            name: name.to_owned(),
            accepts: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            health_checks: AtomicUsize::new(0),
            inflight: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            fail: AtomicBool::new(false),
            log: Mutex::new(Vec::new()),
        });
        let behavior = Arc::new(behavior);
        let accept_state = Arc::clone(&state);
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accept_state.accepts.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_nodelay(true);
                let state = Arc::clone(&accept_state);
                let behavior = Arc::clone(&behavior);
                tokio::spawn(async move {
                    serve_upstream_conn(stream, Arc::clone(&state), behavior).await;
                    state.closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Upstream {
            addr,
            state,
            accept_task,
        }
    }

    /// `"127.0.0.1:PORT"`.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    pub fn accepts(&self) -> usize {
        self.state.accepts.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    pub fn inflight(&self) -> usize {
        self.state.inflight.load(Ordering::SeqCst)
    }

    /// Connections that have ended.
    pub fn closed(&self) -> usize {
        self.state.closed.load(Ordering::SeqCst)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::SeqCst);
    }

    pub fn set_fail(&self, fail: bool) {
        self.state.fail.store(fail, Ordering::SeqCst);
    }

    /// The last non-health request received.
    pub fn last(&self) -> Option<Recorded> {
        self.state
            .log
            .lock()
            .expect("upstream log lock")
            .last()
            .cloned()
    }

    /// Every non-health request received.
    pub fn all(&self) -> Vec<Recorded> {
        self.state.log.lock().expect("upstream log lock").clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

/// Per-connection activity, for `idle_close`.
struct ConnTrack {
    inflight: AtomicUsize,
    last_done: Mutex<Instant>,
}

async fn serve_upstream_conn(
    stream: TcpStream,
    state: Arc<UpstreamState>,
    behavior: Arc<Behavior>,
) {
    let track = Arc::new(ConnTrack {
        inflight: AtomicUsize::new(0),
        last_done: Mutex::new(Instant::now()),
    });
    let svc_track = Arc::clone(&track);
    let idle_close = behavior.idle_close;
    let service = service_fn(move |req| {
        let (state, behavior, track) = (
            Arc::clone(&state),
            Arc::clone(&behavior),
            Arc::clone(&svc_track),
        );
        async move {
            track.inflight.fetch_add(1, Ordering::SeqCst);
            let result = upstream_answer(req, &state, &behavior).await;
            *track.last_done.lock().expect("track lock") = Instant::now();
            track.inflight.fetch_sub(1, Ordering::SeqCst);
            result
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = tokio::time::sleep(Duration::from_millis(10)), if idle_close.is_some() => {
                let idle = idle_close.unwrap_or_default();
                let quiet = track.inflight.load(Ordering::SeqCst) == 0
                    && track.last_done.lock().expect("track lock").elapsed() >= idle;
                if quiet {
                    // Dropping the connection closes the socket with no notice, as a
                    // server with a keep-alive timeout does.
                    return;
                }
            }
        }
    }
}

async fn upstream_answer(
    req: Request<Incoming>,
    state: &UpstreamState,
    behavior: &Behavior,
) -> Result<Response<UpBody>, std::io::Error> {
    if req.uri().path() == HEALTH_PATH {
        state.health_checks.fetch_add(1, Ordering::SeqCst);
        let status = if state.healthy.load(Ordering::SeqCst) {
            200
        } else {
            500
        };
        let mut resp = Response::new(full(Bytes::from_static(b"health\n")));
        *resp.status_mut() =
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Ok(resp);
    }
    state.requests.fetch_add(1, Ordering::SeqCst);
    state.inflight.fetch_add(1, Ordering::SeqCst);
    let result = upstream_echo(req, state, behavior).await;
    state.inflight.fetch_sub(1, Ordering::SeqCst);
    result
}

async fn upstream_echo(
    req: Request<Incoming>,
    state: &UpstreamState,
    behavior: &Behavior,
) -> Result<Response<UpBody>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.to_string(), |pq| pq.as_str().to_owned());
    state.log.lock().expect("upstream log lock").push(Recorded {
        method: parts.method.clone(),
        uri: uri.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    if state.fail.load(Ordering::SeqCst) {
        // hyper closes the connection without a response when the service fails.
        return Err(std::io::Error::other("told to fail"));
    }
    if let Some(delay) = behavior.delay {
        let applies = behavior
            .delay_prefix
            .as_deref()
            .is_none_or(|p| parts.uri.path().starts_with(p));
        if applies {
            tokio::time::sleep(delay).await;
        }
    }
    let mut headers = serde_json::Map::new();
    for (name, value) in &parts.headers {
        let value =
            serde_json::Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned());
        match headers.get_mut(name.as_str()) {
            Some(serde_json::Value::Array(list)) => list.push(value),
            Some(first) => *first = serde_json::Value::Array(vec![first.take(), value]),
            None => {
                headers.insert(name.as_str().to_owned(), value);
            }
        }
    }
    let echo = serde_json::json!({
        "server": state.name,
        "method": parts.method.as_str(),
        "uri": uri,
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body.len(),
    });
    let status = StatusCode::from_u16(behavior.status).unwrap_or(StatusCode::OK);
    // 1xx, 204 and 304 answers have no body.
    let bodyless = status.is_informational() || status == 204 || status == 304;
    let text = match &behavior.body {
        _ if bodyless => Bytes::new(),
        Some(fixed) => fixed.clone(),
        None => Bytes::from(serde_json::to_vec(&echo).unwrap_or_default()),
    };
    let len = text.len();
    let mut resp = if behavior.chunked && !bodyless {
        Response::new(chunks(text))
    } else {
        Response::new(full(text))
    };
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    if behavior.body.is_none() && !bodyless {
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
    }
    if !behavior.chunked && !bodyless {
        h.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    }
    if behavior.close_after_response {
        h.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    for (name, value) in &behavior.headers {
        let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(std::io::Error::other)?;
        let value = http::HeaderValue::from_str(value).map_err(std::io::Error::other)?;
        h.append(name, value);
    }
    Ok(resp)
}

/// The body type of test upstream responses.
pub type UpBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn full(bytes: Bytes) -> UpBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// `bytes` in up to 8 frames, with no size hint (so hyper frames it chunked).
fn chunks(bytes: Bytes) -> UpBody {
    let piece = bytes.len().div_ceil(8).max(1);
    let frames: std::collections::VecDeque<Bytes> = (0..bytes.len())
        .step_by(piece)
        .map(|start| bytes.slice(start..(start + piece).min(bytes.len())))
        .collect();
    Chunks(frames).boxed()
}

struct Chunks(std::collections::VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// An address where nothing listens and nothing will while the tests run.
pub fn dead_addr() -> SocketAddr {
    // Bound but never listening, and held until the test process ends: connecting is
    // refused, and nothing else (the proxy's own listeners, another test's upstream)
    // can be handed this port meanwhile, as it could a port freed at once.
    static HELD: Mutex<Vec<socket2::Socket>> = Mutex::new(Vec::new());
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .expect("a TCP socket");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("an address");
    socket.bind(&any.into()).expect("bind for a dead port");
    let addr = socket
        .local_addr()
        .expect("local addr")
        .as_socket()
        .expect("an IP address");
    HELD.lock().unwrap_or_else(|e| e.into_inner()).push(socket);
    addr
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind for a free port");
    l.local_addr().expect("local addr").port()
}

// ---- the proxy ----------------------------------------------------------------------

/// A proxycache started in-process. Dropping it begins a graceful shutdown without
/// waiting; `shutdown()` waits for the threads.
pub struct Proxy {
    pub addr: SocketAddr,
    handle: Option<ServerHandle>,
}

impl Proxy {
    pub fn handle(&self) -> &ServerHandle {
        self.handle.as_ref().expect("proxy handle")
    }

    /// `(opened, reused)` upstream connections across workers.
    pub fn pool_totals(&self) -> (u64, u64) {
        self.handle().shared().pool_totals()
    }

    /// Graceful shutdown, waiting for every thread (off the async runtime's threads).
    pub async fn shutdown(mut self) {
        if let Some(handle) = self.handle.take() {
            tokio::task::spawn_blocking(move || handle.shutdown())
                .await
                .expect("shutdown thread");
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            // Do not block a runtime thread: the workers finish draining on their own.
            handle.begin_shutdown();
        }
    }
}

/// Directory config-relative paths resolve against: one that does not exist, so no
/// stray `mods/` folder is ever picked up.
fn base_dir() -> PathBuf {
    std::env::temp_dir().join(format!("proxycache-it-nonexistent-{}", std::process::id()))
}

/// Parses `toml` as a complete config (panicking with every error on failure).
pub fn config(toml: &str) -> Config {
    match Config::from_toml_str(toml, None, &base_dir()) {
        Ok(config) => config,
        Err(errors) => panic!("test config does not load:\n{errors}\n--- config ---\n{toml}"),
    }
}

/// Starts proxycache from a complete TOML text.
pub fn proxy_toml(toml: &str) -> Proxy {
    let handle = proxycache::start(config(toml)).expect("proxycache starts");
    let addr = handle.local_addr();
    Proxy {
        addr,
        handle: Some(handle),
    }
}

/// Starts proxycache on 127.0.0.1:0 with the admin API off. `server_keys` are extra
/// lines inside `[server]` (`workers` defaults to 2); `rest` is the rest of the file
/// (upstreams, routes, `[server.limits]`...).
pub fn proxy_with(server_keys: &str, rest: &str) -> Proxy {
    let workers = if server_keys.contains("workers") {
        ""
    } else {
        "workers = 2"
    };
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n{workers}\n{server_keys}\n\n[admin]\nlisten = \"\"\n\n{rest}\n"
    );
    proxy_toml(&toml)
}

/// `proxy_with` with no extra `[server]` keys.
pub fn proxy(rest: &str) -> Proxy {
    proxy_with("", rest)
}

/// A TOML array of the upstreams' addresses: `["127.0.0.1:1", "127.0.0.1:2"]`.
pub fn servers(upstreams: &[&Upstream]) -> String {
    let list: Vec<String> = upstreams
        .iter()
        .map(|u| format!("\"{}\"", u.addr))
        .collect();
    format!("[{}]", list.join(", "))
}

/// One upstream set `app` over `upstreams` (with `extra` lines in its table) and a
/// catch-all route to it.
pub fn app(upstreams: &[&Upstream], extra: &str) -> String {
    format!(
        "[upstreams.app]\nservers = {}\n{extra}\n\n[[routes]]\nupstream = \"app\"\n",
        servers(upstreams)
    )
}

// ---- clients ------------------------------------------------------------------------

/// A response read in full.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }

    /// Which test upstream answered (the `server` field of its echo).
    pub fn server(&self) -> String {
        self.json()["server"].as_str().unwrap_or("").to_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    pub fn request_id(&self) -> Option<String> {
        self.header("x-request-id")
    }
}

/// A request builder for `method path` with `Host: localhost` (`TEST_HOST`).
pub fn req(method: &str, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, TEST_HOST)
}

/// A body-less request.
pub fn empty(builder: http::request::Builder) -> Request<Full<Bytes>> {
    builder
        .body(Full::new(Bytes::new()))
        .expect("request builds")
}

/// Sends `req` on a new HTTP/1.1 connection; `Err` on any transport failure or timeout.
pub async fn try_send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Result<Resp, String> {
    let exchange = async move {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("send: {e}"))?;
        read_resp(resp).await
    };
    match tokio::time::timeout(CLIENT_TIMEOUT, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("no complete response within {CLIENT_TIMEOUT:?}")),
    }
}

/// Reads a whole response.
pub async fn read_resp(resp: Response<Incoming>) -> Result<Resp, String> {
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("response body: {e}"))?
        .to_bytes();
    Ok(Resp {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

/// Sends `req` on a new HTTP/1.1 connection, panicking on transport failure.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Resp {
    match try_send(addr, req).await {
        Ok(resp) => resp,
        Err(e) => panic!("request to the proxy at {addr} failed: {e}"),
    }
}

/// `GET path` with `Host: localhost` (`TEST_HOST`) on a new connection.
pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    send(addr, empty(req("GET", path))).await
}

/// Sends `reqs` one after another on a single HTTP/1.1 keep-alive connection.
pub async fn send_on_one_connection(
    addr: SocketAddr,
    reqs: Vec<Request<Full<Bytes>>>,
) -> Vec<Resp> {
    let exchange = async move {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let mut out = Vec::new();
        for (i, req) in reqs.into_iter().enumerate() {
            sender
                .ready()
                .await
                .map_err(|e| format!("request {i}: connection not ready: {e}"))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| format!("request {i}: send: {e}"))?;
            out.push(
                read_resp(resp)
                    .await
                    .map_err(|e| format!("request {i}: {e}"))?,
            );
        }
        Ok::<_, String>(out)
    };
    match tokio::time::timeout(CLIENT_TIMEOUT, exchange).await {
        Ok(Ok(resps)) => resps,
        Ok(Err(e)) => panic!("keep-alive exchange with {addr} failed: {e}"),
        Err(_) => panic!("keep-alive exchange with {addr}: no responses within {CLIENT_TIMEOUT:?}"),
    }
}

/// Sends `req` over HTTP/2 with prior knowledge (h2c) on a new connection. The URI must
/// be absolute (`http://host/path`).
pub async fn send_h2(addr: SocketAddr, req: Request<Full<Bytes>>) -> Resp {
    let exchange = async move {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("h2 send: {e}"))?;
        read_resp(resp).await
    };
    match tokio::time::timeout(CLIENT_TIMEOUT, exchange).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => panic!("h2 request to {addr} failed: {e}"),
        Err(_) => panic!("h2 request to {addr}: no response within {CLIENT_TIMEOUT:?}"),
    }
}

/// Writes `bytes` on a new connection and reads the answer until the peer closes, a
/// complete response (by `Content-Length` or chunked end) has arrived, or 5 s pass.
/// Write and read errors (a reset after the answer) end the exchange quietly.
pub async fn raw_request(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = tokio::time::timeout(CLIENT_TIMEOUT, TcpStream::connect(addr))
        .await
        .expect("connect within the timeout")
        .expect("connect to the proxy");
    let _ = stream.write_all(bytes).await;
    read_raw(&mut stream, Duration::from_secs(5)).await
}

/// `POST path` with a body of `len` bytes, written as fast as the proxy takes them;
/// returns the response head (up to `limit`), read while the upload goes on, which is
/// then stopped. For servers that stop reading an upload.
pub async fn upload_and_read_head(
    addr: SocketAddr,
    path: &str,
    len: usize,
    limit: Duration,
) -> String {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let head = format!("POST {path} HTTP/1.1\r\nhost: a\r\ncontent-length: {len}\r\n\r\n");
    let writer = tokio::spawn(async move {
        if wr.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..len / chunk.len() {
            // The proxy stops reading once it has answered: a reset ends the upload.
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    writer.abort();
    String::from_utf8_lossy(&buf).into_owned()
}

/// Reads a request head from `stream` (up to and with its blank line, perhaps a little
/// more); `None` when the stream ends or fails first. For hand-written upstreams.
pub async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// Reads from `stream` as `raw_request` does.
pub async fn read_raw(stream: &mut TcpStream, limit: Duration) -> String {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) | Ok(Err(_)) | Ok(Ok(0)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        if raw_complete(&buf) {
            break;
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn raw_complete(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let body = &buf[end + 4..];
    if let Some(len) = head_value(&head, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        return body.len() >= len;
    }
    if head_value(&head, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        return body.ends_with(b"0\r\n\r\n");
    }
    false
}

fn head_value(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// The status code of a raw response (`0` when there is none).
pub fn raw_status(raw: &str) -> u16 {
    raw.lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// A header of a raw response, by case-insensitive name.
pub fn raw_header(raw: &str, name: &str) -> Option<String> {
    let end = raw.find("\r\n\r\n").unwrap_or(raw.len());
    head_value(&raw[..end], name)
}

/// The body of a raw response (everything after the head).
pub fn raw_body(raw: &str) -> &str {
    raw.find("\r\n\r\n").map_or("", |i| &raw[i + 4..])
}

/// Polls `cond` every 25 ms until it holds or `limit` passes; returns whether it held.
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A deterministic pseudo-random payload of `len` bytes.
pub fn payload(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

// ---- sites: config.toml and mods/ in a temp folder ------------------------------------

/// A fresh temp folder with `config.toml` and `mods/`; removed on drop.
pub struct Site {
    pub dir: PathBuf,
}

impl Site {
    /// A new, empty site; `tag` goes into the folder name for debugging.
    pub fn new(tag: &str) -> Site {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "proxycache-site-{}-{tag}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(dir.join("mods")).expect("create the mods folder");
        Site { dir }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    pub fn mods_dir(&self) -> PathBuf {
        self.dir.join("mods")
    }

    pub fn mod_path(&self, name: &str) -> PathBuf {
        self.mods_dir().join(format!("{name}.pcmod"))
    }

    /// Replaces `config.toml` by renaming a complete temp file over it, as an editor
    /// that saves safely does (module files are written in place).
    pub fn write_config(&self, text: &str) {
        let tmp = self.dir.join("config.toml.tmp");
        std::fs::write(&tmp, text).expect("write config.toml.tmp");
        std::fs::rename(&tmp, self.config_path()).expect("rename over config.toml");
    }

    pub fn write_mod(&self, name: &str, source: &str) {
        std::fs::write(self.mod_path(name), source).expect("write a module");
    }

    pub fn remove_mod(&self, name: &str) {
        std::fs::remove_file(self.mod_path(name)).expect("remove a module");
    }

    /// Every file name in the site folder and in `mods/`, and their bytes.
    pub fn snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        let mut files = BTreeMap::new();
        for dir in [self.dir.clone(), self.mods_dir()] {
            for entry in std::fs::read_dir(&dir).expect("list a folder").flatten() {
                let path = entry.path();
                if path.is_file() && path.file_name().is_some_and(|n| n != "stderr.log") {
                    let bytes = std::fs::read(&path).expect("read a file");
                    files.insert(path.display().to_string(), bytes);
                }
            }
        }
        files
    }

    /// `proxycache check --config` on this site's config.toml, run to its end.
    pub fn run_check(&self) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_proxycache"))
            .args(["check", "--config"])
            .arg(self.config_path())
            .output()
            .expect("run proxycache check")
    }

    /// Starts the real binary on this site's config.toml (cwd = the site), its stderr
    /// going to `stderr.log` in the site; returns the child and that path.
    pub fn spawn_run(&self) -> (std::process::Child, PathBuf) {
        let config = self.config_path();
        let config = config.to_str().expect("the test folder's path is UTF-8");
        self.spawn_run_with(&["--config", config])
    }

    /// `proxycache run ARGS` in this site (cwd = the site), stderr to `stderr.log`.
    pub fn spawn_run_with(&self, args: &[&str]) -> (std::process::Child, PathBuf) {
        let stderr_path = self.dir.join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("create stderr.log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_proxycache"))
            .arg("run")
            .args(args)
            .current_dir(&self.dir)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn proxycache run");
        (child, stderr_path)
    }

    /// Files in `mods/` that look like leftovers of an atomic write.
    pub fn temp_files(&self) -> Vec<String> {
        std::fs::read_dir(self.mods_dir())
            .expect("list mods/")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.') || n.ends_with(".tmp"))
            .collect()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---- proxycache in-process from a site ------------------------------------------------

/// proxycache started in-process from a site's `config.toml`; shutdown begins on drop.
pub struct Running {
    pub handle: Option<proxycache::server::ServerHandle>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl Running {
    pub fn start(site: &Site) -> Running {
        let config = proxycache::Config::load(Some(&site.config_path()))
            .unwrap_or_else(|e| panic!("the test config does not load:\n{e}"));
        let handle =
            proxycache::start(config).unwrap_or_else(|e| panic!("proxycache does not start: {e}"));
        let addr = handle.local_addr();
        let admin = handle.admin_addr().expect("the admin API is on");
        Running {
            handle: Some(handle),
            addr,
            admin,
        }
    }

    pub fn shared(&self) -> &Arc<proxycache::server::Shared> {
        self.handle.as_ref().expect("running").shared()
    }

    pub fn generation(&self) -> u64 {
        self.shared().generation().number
    }

    pub fn last_reload(&self) -> Option<proxycache::reload::ReloadReport> {
        self.shared().reloads.last()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.begin_shutdown();
        }
    }
}

// ---- a site with one module and one upstream ----------------------------------------

/// proxycache in-process over a new site whose only module is `module` (its name, its
/// source) and whose one route sends everything to the server at `upstream`; one
/// worker, the admin API on a free port.
pub fn one_module_site(tag: &str, module: (&str, &str), upstream: SocketAddr) -> (Site, Running) {
    let site = Site::new(tag);
    site.write_mod(module.0, module.1);
    site.write_config(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [scripts]\ndir = \"mods\"\nwatch = false\n\n\
         [upstreams.app]\nservers = [\"{upstream}\"]\n\n[[routes]]\nupstream = \"app\"\n"
    ));
    let run = Running::start(&site);
    (site, run)
}

// ---- a site with one module and one upstream per route prefix ----------------------

/// A running site whose only module is given and whose routes each go to their own
/// upstream (`ups[i]` serves the i-th prefix).
pub struct RouteSite {
    pub ups: Vec<Upstream>,
    pub site: Site,
    pub run: Running,
}

/// Starts a [`RouteSite`]: one worker unless `extra` says otherwise in its own
/// `[server]`-free TOML (e.g. a `[cache]` table), the admin API on a free port.
pub async fn route_site(
    tag: &str,
    workers: usize,
    module: (&str, &str),
    routes: Vec<(&str, Behavior)>,
    extra: &str,
) -> RouteSite {
    route_site_with(tag, workers, &[module], routes, extra).await
}

/// [`route_site`] with several modules.
pub async fn route_site_with(
    tag: &str,
    workers: usize,
    modules: &[(&str, &str)],
    routes: Vec<(&str, Behavior)>,
    extra: &str,
) -> RouteSite {
    let site = Site::new(tag);
    for (name, source) in modules {
        site.write_mod(name, source);
    }
    let mut ups = Vec::new();
    let mut rest = String::new();
    for (i, (prefix, behavior)) in routes.into_iter().enumerate() {
        let up = Upstream::start(&format!("u{i}"), behavior).await;
        rest.push_str(&format!(
            "[upstreams.u{i}]\nservers = {}\n\n[[routes]]\npath_prefix = \"{prefix}\"\nupstream = \"u{i}\"\n\n",
            servers(&[&up])
        ));
        ups.push(up);
    }
    site.write_config(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = {workers}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [scripts]\ndir = \"mods\"\nwatch = false\n\n{extra}\n\n{rest}"
    ));
    let run = Running::start(&site);
    RouteSite { ups, site, run }
}

// ---- the binary ---------------------------------------------------------------------

/// A proxycache process, killed (and waited for) when dropped.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Killed {
    /// Sends signal `name` (`TERM`, `HUP`...) to the process.
    pub fn signal(&self, name: &str) {
        let sent = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{name}");
    }
}

/// Runs the binary on `site`'s config (`RUST_LOG` unset) with its stderr in
/// `site.dir/stderr.log`, and waits (up to 20 s) until `addr` accepts connections.
pub async fn spawn_logging(site: &Site, addr: SocketAddr) -> (Killed, PathBuf) {
    let log = site.dir.join("stderr.log");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_proxycache"))
        .args(["run", "--config"])
        .arg(site.config_path())
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn proxycache");
    let child = Killed(child);
    let up = wait_until(Duration::from_secs(20), || {
        std::net::TcpStream::connect(addr).is_ok()
    })
    .await;
    assert!(
        up,
        "proxycache did not start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    (child, log)
}
