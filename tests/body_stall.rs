//! A request body the proxy reads itself — `builtin:echo`, a Lua hook's `req:body()` —
//! that stops arriving is answered `408` once it has made no progress for the
//! timeout a body sent to a real upstream has (its set's `response_timeout`; with no
//! upstream, `server.timeouts.idle`), over HTTP/1.1 and HTTP/2, with a request id
//! and an access line. It once held its connection for good (nine minutes and
//! counting): the shipped config.toml sends everything to `builtin:echo`.

mod common;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body::{Body, Frame};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Every request to `builtin:echo`, whose set gives a stalled body 300 ms.
const ECHO: &str = "[upstreams.app]\nservers = [\"builtin:echo\"]\nresponse_timeout = \"300ms\"\n\n[[routes]]\nupstream = \"app\"\n";

/// How long a test waits for an answer: far past every timeout configured here, far
/// short of the 60 s idle timeout an answer must not wait for.
const ANSWER_WITHIN: Duration = Duration::from_secs(8);

/// `POST path` announcing 100 bytes and sending 3; what comes back within
/// [`ANSWER_WITHIN`] (nothing, when the body read has no deadline).
async fn stalled_post(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc").as_bytes(),
        )
        .await
        .expect("write");
    read_raw(&mut stream, ANSWER_WITHIN).await
}

fn assert_408(raw: &str) {
    assert_eq!(
        raw_status(raw),
        408,
        "a stalled body is the client's 408: {raw:?}"
    );
    assert!(
        raw_header(raw, "x-request-id").is_some_and(|id| !id.is_empty()),
        "{raw:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_to_builtin_echo_is_408() {
    log::capture();
    let px = proxy_with("workers = 1", ECHO);
    let raw = stalled_post(px.addr, "/echo-stall").await;
    assert_408(&raw);
    // The rest of the body is never read: the connection closes, and says so.
    assert_eq!(
        raw_header(&raw, "connection").as_deref(),
        Some("close"),
        "{raw}"
    );
    let line = log::access_line_for("/echo-stall").await;
    assert!(line.contains("status=408"), "{line}");
    // The proxy goes on serving.
    assert_eq!(get(px.addr, "/after").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_that_keeps_moving_reaches_builtin_echo() {
    // The timeout is on progress, not on the whole body: 12 steps 100 ms apart take
    // longer than the 600 ms timeout, each well within it.
    let px = proxy_with("workers = 1", &ECHO.replace("300ms", "600ms"));
    let mut stream = TcpStream::connect(px.addr).await.expect("connect");
    stream
        .write_all(
            b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 12\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("write the head");
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stream.write_all(b"x").await.expect("write a byte");
    }
    let raw = read_raw(&mut stream, ANSWER_WITHIN).await;
    assert_eq!(raw_status(&raw), 200, "{raw:?}");
    assert!(raw.contains("\"body_bytes\": 12"), "{raw}");
}

/// A request body that sends its first bytes and then nothing, for good.
struct ThenStall(Option<Bytes>);

impl Body for ThenStall {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.0.take() {
            Some(first) => Poll::Ready(Some(Ok(Frame::data(first)))),
            None => Poll::Pending,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_http2_body_to_builtin_echo_is_408() {
    let px = proxy_with("workers = 1", ECHO);
    let stream = TcpStream::connect(px.addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{TEST_HOST}/h2-stall"))
        .header("content-length", "100")
        .body(ThenStall(Some(Bytes::from_static(b"abc"))))
        .expect("request builds");
    let resp = tokio::time::timeout(ANSWER_WITHIN, sender.send_request(req))
        .await
        .expect("an answer to the stalled stream (it got nothing, not even a reset)")
        .expect("the stream is answered");
    assert_eq!(resp.status(), 408);
    assert!(resp.headers().contains_key("x-request-id"));
}

/// A Lua module whose request hook reads the body.
fn reading_site(rest: &str, server: &str) -> Site {
    let site = Site::new("body-stall");
    site.write_mod(
        "reader",
        "mod reader {\n  priority 10\n  lua \"reader.lua\"\n}\n",
    );
    std::fs::write(
        site.mods_dir().join("reader.lua"),
        "function on_request(req, ctx)\n  local b = req:body()\n  return std.respond(200, \"read \" .. #b .. \"\\n\")\nend\n",
    )
    .expect("write reader.lua");
    site.write_config(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n{server}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [scripts]\ndir = \"mods\"\nwatch = false\n\n{rest}\n"
    ));
    site
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_read_by_lua_is_408_after_the_upstreams_response_timeout() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let site = reading_site(&app(&[&up], "response_timeout = \"300ms\""), "");
    let run = Running::start(&site);
    let raw = stalled_post(run.addr, "/lua-stall").await;
    assert_408(&raw);
    assert_eq!(up.requests(), 0);
    // A whole body is still read.
    let raw = raw_request(
        run.addr,
        b"POST /whole HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    .await;
    assert_eq!(raw_body(&raw), "read 3\n", "{raw:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_read_by_lua_with_no_route_is_408_after_idle() {
    // No route matches: there is no upstream whose timeout applies, so the server's
    // idle timeout does.
    let site = reading_site("", "[server.timeouts]\nidle = \"300ms\"");
    let run = Running::start(&site);
    let raw = stalled_post(run.addr, "/lua-no-route").await;
    assert_408(&raw);
}
