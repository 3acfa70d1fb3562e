//! The server's own HTTP/1.1 loop (src/server/h1.rs) over raw sockets: pipelining,
//! HTTP/1.0 keep-alive and close-delimited bodies, `100 Continue`, broken chunked
//! bodies, unread bodies that must never be read as the next request, and the
//! hand-over to hyper for HTTP/2 and upgrades on the same port.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn connect(px: &Proxy) -> TcpStream {
    TcpStream::connect(px.addr).await.expect("connect")
}

/// Reads exactly `n` responses framed by `Content-Length` (or chunked) from `stream`.
async fn read_responses(stream: &mut TcpStream, n: usize) -> Vec<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let split = split_responses(&buf);
        if split.len() >= n {
            return split;
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return split,
            Ok(Ok(k)) => buf.extend_from_slice(&chunk[..k]),
        }
    }
}

/// The complete responses at the front of `buf`.
fn split_responses(mut buf: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
        let len: usize = raw_header(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if buf.len() < end + 4 + len {
            break;
        }
        out.push(String::from_utf8_lossy(&buf[..end + 4 + len]).into_owned());
        buf = &buf[end + 4 + len..];
    }
    out
}

/// Reads until the peer closes (or 5 s pass); returns what came and whether it closed.
async fn read_to_close(stream: &mut TcpStream) -> (String, bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&buf).into_owned(), true),
            Err(_) => return (String::from_utf8_lossy(&buf).into_owned(), false),
            Ok(Ok(k)) => buf.extend_from_slice(&chunk[..k]),
        }
    }
}

fn echoed_uri(raw: &str) -> String {
    let body: serde_json::Value =
        serde_json::from_str(raw_body(raw)).unwrap_or_else(|e| panic!("{e}: {raw:?}"));
    body["uri"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_with_a_date() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let px = proxy(&app(&[&up], ""));
    let mut s = connect(&px).await;
    s.write_all(
        b"GET /one HTTP/1.1\r\nHost: test.local\r\n\r\nGET /two HTTP/1.1\r\nHost: test.local\r\n\r\nGET /three HTTP/1.1\r\nHost: test.local\r\n\r\n",
    )
    .await
    .expect("write three requests at once");
    let answers = read_responses(&mut s, 3).await;
    assert_eq!(answers.len(), 3, "three answers: {answers:?}");
    let uris: Vec<String> = answers.iter().map(|a| echoed_uri(a)).collect();
    assert_eq!(uris, ["/one", "/two", "/three"]);
    for a in &answers {
        assert_eq!(raw_status(a), 200, "{a:?}");
        let date = raw_header(a, "date").expect("every answer has a Date");
        assert!(date.ends_with(" GMT"), "an HTTP date: {date:?}");
        assert!(
            raw_header(a, "connection").is_none(),
            "keep-alive is the default: {a:?}"
        );
    }
    assert_eq!(up.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_keeps_alive_only_when_asked_and_unknown_lengths_end_at_close() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let chunky = Upstream::start("c", Behavior::fixed_body("x".repeat(3000), true)).await;
    let rest = format!(
        "[upstreams.app]\nservers = {}\n\n[upstreams.chunky]\nservers = {}\n\n[[routes]]\npath_prefix = \"/chunky\"\nupstream = \"chunky\"\n\n[[routes]]\nupstream = \"app\"\n",
        servers(&[&up]),
        servers(&[&chunky])
    );
    let px = proxy(&rest);

    // Asked: the answer says keep-alive and the connection carries a second request.
    let mut s = connect(&px).await;
    s.write_all(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .expect("write");
    let first = read_responses(&mut s, 1).await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(
        raw_header(&first[0], "connection").as_deref(),
        Some("keep-alive")
    );
    s.write_all(b"GET /b HTTP/1.0\r\n\r\n")
        .await
        .expect("write");
    let (second, closed) = read_to_close(&mut s).await;
    assert_eq!(raw_status(&second), 200, "{second:?}");
    assert_eq!(echoed_uri(&second), "/b");
    assert!(closed, "HTTP/1.0 without keep-alive ends with the answer");

    // A body of unknown length goes to an HTTP/1.0 client unchunked, ended by close.
    let mut s = connect(&px).await;
    s.write_all(b"GET /chunky HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .expect("write");
    let (raw, closed) = read_to_close(&mut s).await;
    assert!(closed, "a close-delimited body ends the connection");
    assert_eq!(raw_status(&raw), 200, "{raw:?}");
    assert!(raw_header(&raw, "transfer-encoding").is_none(), "{raw:?}");
    assert_eq!(raw_body(&raw), "x".repeat(3000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let px = proxy(&app(&[&up], ""));
    let mut s = connect(&px).await;
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: test.local\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .expect("write head");
    let mut interim = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut interim))
        .await
        .expect("an interim answer without sending the body")
        .expect("read");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").await.expect("write body");
    let answers = read_responses(&mut s, 1).await;
    assert_eq!(answers.len(), 1);
    assert_eq!(raw_status(&answers[0]), 200, "{answers:?}");
    assert_eq!(up.last().expect("forwarded").body, "hello".as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_chunked_body_is_400_and_closes_the_connection() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let px = proxy(&app(&[&up], ""));
    let mut s = connect(&px).await;
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nGET /next HTTP/1.1\r\nHost: test.local\r\n\r\n",
    )
    .await
    .expect("write");
    let (raw, closed) = read_to_close(&mut s).await;
    assert_eq!(raw_status(&raw), 400, "{raw:?}");
    assert!(raw_header(&raw, "x-request-id").is_some(), "{raw:?}");
    assert!(
        closed,
        "the rest of a broken body is never read as a request"
    );
    assert!(
        up.all().iter().all(|r| r.uri != "/next"),
        "nothing after a broken body is forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_body_is_never_read_as_the_next_request() {
    let up = Upstream::start("a", Behavior::echo()).await;
    // Only /api is routed: a POST elsewhere is answered 404 without its body read.
    let rest = format!(
        "[upstreams.app]\nservers = {}\n\n[[routes]]\npath_prefix = \"/api\"\nupstream = \"app\"\n",
        servers(&[&up])
    );
    let px = proxy(&rest);
    let smuggled = "GET /api/smuggled HTTP/1.1\r\nHost: test.local\r\n\r\n";
    let mut s = connect(&px).await;
    s.write_all(
        format!(
            "POST /elsewhere HTTP/1.1\r\nHost: test.local\r\nContent-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let (raw, closed) = read_to_close(&mut s).await;
    assert_eq!(raw_status(&raw), 404, "{raw:?}");
    assert_eq!(raw.matches("HTTP/1.1 ").count(), 1, "one answer: {raw:?}");
    assert!(closed, "a connection whose body was not read is closed");
    assert_eq!(up.requests(), 0, "the body was not taken for a request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_over_the_hard_cap_are_431_with_a_request_id() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let px = proxy_with(
        "",
        &format!(
            "[server.limits]\nmax_header_bytes = \"4KiB\"\n\n{}",
            app(&[&up], "")
        ),
    );
    // Never finished: the proxy refuses once the head passes twice the limit.
    let mut s = connect(&px).await;
    let mut head = b"GET / HTTP/1.1\r\nHost: test.local\r\n".to_vec();
    head.extend(std::iter::repeat_n(b'a', 20_000));
    let _ = s.write_all(&head).await;
    let (raw, closed) = read_to_close(&mut s).await;
    assert_eq!(raw_status(&raw), 431, "{raw:?}");
    assert!(raw_header(&raw, "x-request-id").is_some(), "{raw:?}");
    assert!(closed);
    assert_eq!(up.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_and_http1_share_the_plain_port() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let px = proxy(&app(&[&up], ""));
    let h2 = send_h2(px.addr, empty(req("GET", "/over-h2"))).await;
    assert_eq!(h2.status, 200);
    assert_eq!(h2.json()["uri"], "/over-h2");
    let h1 = get(px.addr, "/over-h1").await;
    assert_eq!(h1.status, 200);
    assert_eq!(h1.json()["uri"], "/over-h1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_keep_alive_connections_and_lets_busy_ones_finish() {
    let up = Upstream::start("a", Behavior::slow_on("/slow", 600)).await;
    let px = proxy_with(
        "",
        &format!(
            "[server.timeouts]\nshutdown_drain = \"10s\"\nidle = \"60s\"\n\n{}",
            app(&[&up], "")
        ),
    );
    // One connection has served a request and sits idle; another is mid-request.
    let mut idle = connect(&px).await;
    idle.write_all(b"GET /first HTTP/1.1\r\nHost: test.local\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(read_responses(&mut idle, 1).await.len(), 1);
    let mut busy = connect(&px).await;
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: test.local\r\n\r\n")
        .await
        .expect("write");
    assert!(wait_until(Duration::from_secs(5), || up.inflight() == 1).await);

    let start = std::time::Instant::now();
    let shutdown = tokio::spawn(px.shutdown());
    let (rest, closed) = read_to_close(&mut idle).await;
    assert!(
        closed && rest.is_empty(),
        "the idle connection is closed: {rest:?}"
    );
    let (answer, closed) = read_to_close(&mut busy).await;
    assert_eq!(
        raw_status(&answer),
        200,
        "the busy request finishes: {answer:?}"
    );
    assert_eq!(
        raw_header(&answer, "connection").as_deref(),
        Some("close"),
        "and says the connection ends"
    );
    assert!(closed);
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown finishes once both connections are done")
        .expect("shutdown task");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_request_bodies_stream_through_intact_and_the_connection_goes_on() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let px = proxy(&app(&[&up], ""));
    let body = payload(3 * 1024 * 1024 + 17);
    let mut s = connect(&px).await;
    let head = format!(
        "PUT /upload HTTP/1.1\r\nHost: test.local\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    // Written while the proxy streams it on: neither side holds the whole body.
    let (mut rd, mut wr) = s.split();
    let write = async {
        wr.write_all(head.as_bytes()).await.expect("head");
        for piece in body.chunks(64 * 1024) {
            wr.write_all(piece).await.expect("body piece");
        }
        wr.write_all(b"GET /after HTTP/1.1\r\nHost: test.local\r\n\r\n")
            .await
            .expect("next request");
    };
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if split_responses(&buf).len() >= 2 {
                return split_responses(&buf);
            }
            match tokio::time::timeout(Duration::from_secs(10), rd.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return split_responses(&buf),
                Ok(Ok(k)) => buf.extend_from_slice(&chunk[..k]),
            }
        }
    };
    let ((), answers) = tokio::join!(write, read);
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert_eq!(raw_status(&answers[0]), 200, "{:?}", answers[0]);
    assert_eq!(echoed_uri(&answers[1]), "/after");
    let recorded = up.all();
    let upload = recorded
        .iter()
        .find(|r| r.uri == "/upload")
        .expect("the upload reached the upstream");
    assert!(upload.body == body, "the body arrived byte for byte");
}

/// An upstream that reads one request head, sends `answer` (a head and the start of a
/// body, or nothing), then stalls, and reports whether the proxy closed the
/// connection on it within 5 s.
async fn stalling_upstream(
    answer: &'static [u8],
) -> (std::net::SocketAddr, tokio::sync::oneshot::Receiver<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<bool>();
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        if read_head(&mut s).await.is_none() {
            return;
        }
        if s.write_all(answer).await.is_err() {
            return;
        }
        let mut chunk = [0u8; 4096];
        let closed = matches!(
            tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await,
            Ok(Ok(0)) | Ok(Err(_))
        );
        let _ = tx.send(closed);
    });
    (addr, rx)
}

/// A proxy in front of `addr` with a response timeout far longer than the tests.
fn patient_proxy(addr: std::net::SocketAddr) -> Proxy {
    proxy(&format!(
        "[upstreams.app]\nservers = [\"{addr}\"]\nresponse_timeout = \"30s\"\n\n[[routes]]\nupstream = \"app\"\n"
    ))
}

async fn reported(rx: tokio::sync::oneshot::Receiver<bool>) -> bool {
    tokio::time::timeout(Duration::from_secs(8), rx)
        .await
        .expect("the upstream reports")
        .expect("report")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_abandons_its_upstream_exchange() {
    // The upstream never answers.
    let (addr, rx) = stalling_upstream(b"").await;
    let px = patient_proxy(addr);
    let mut s = connect(&px).await;
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: test.local\r\n\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(s);
    assert!(
        reported(rx).await,
        "the proxy dropped the upstream exchange when its client left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_during_a_stalled_body_abandons_its_upstream_exchange() {
    // A head and the start of a chunked body, then nothing.
    let (addr, rx) =
        stalling_upstream(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
            .await;
    let px = patient_proxy(addr);
    let mut s = connect(&px).await;
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: test.local\r\n\r\n")
        .await
        .expect("write");
    let got = read_raw(&mut s, Duration::from_secs(2)).await;
    assert!(
        got.contains("hello"),
        "the body's start came through: {got:?}"
    );
    drop(s);
    assert!(
        reported(rx).await,
        "the proxy dropped the upstream exchange when its client left mid-body"
    );
}

/// A keep-alive connection idle past the connection's timer gives its read buffer
/// back; its next request, a head larger than the first read (2 KiB) included, is read
/// whole on a buffer made when the bytes arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_idle_a_while_reads_its_next_request_whole() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let px = proxy(&format!(
        "[server.timeouts]\nheader = \"200ms\"\nidle = \"5s\"\n\n{}",
        app(&[&up], "")
    ));
    let mut s = connect(&px).await;
    s.write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(read_responses(&mut s, 1).await.len(), 1);
    // Several timer rounds while idle.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let big = "v".repeat(6000);
    let head = format!("GET /second HTTP/1.1\r\nHost: a\r\nx-big: {big}\r\n\r\n");
    s.write_all(head.as_bytes()).await.expect("write");
    let answers = read_responses(&mut s, 1).await;
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(raw_status(&answers[0]), 200, "{}", answers[0]);
    assert_eq!(echoed_uri(&answers[0]), "/second");
    let got = up.last().expect("the second request went upstream");
    assert_eq!(got.headers.get("x-big").map(|v| v.len()), Some(6000));
}
