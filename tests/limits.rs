//! Acceptance 5: limits and malformed requests. Over-limit body -> 413, over-limit
//! headers -> 431, ambiguous framing -> 400 (never forwarded), a garbage request line
//! -> 400, a client that stalls mid-headers is closed after the header timeout.
//! Responses the proxy makes itself carry `x-request-id`.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An upstream and a proxy with `max_body = 1KiB`, `max_header_bytes = 4KiB` and a
/// 300 ms header timeout.
async fn limited() -> (Upstream, Proxy) {
    let up = Upstream::start("a", Behavior::echo()).await;
    let rest = format!(
        "[server.limits]\nmax_body = \"1KiB\"\nmax_header_bytes = \"4KiB\"\n\n[server.timeouts]\nheader = \"300ms\"\n\n{}",
        app(&[&up], "")
    );
    let px = proxy(&rest);
    (up, px)
}

fn post_with_length(declared: usize, body_len: usize) -> Vec<u8> {
    let mut raw = format!("POST /upload HTTP/1.1\r\nHost: test.local\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n").into_bytes();
    raw.extend(std::iter::repeat_n(b'b', body_len));
    raw
}

fn assert_proxy_made(raw: &str, status: u16) {
    assert_eq!(raw_status(raw), status, "raw response: {raw:?}");
    assert!(
        raw_header(raw, "x-request-id").is_some_and(|id| !id.is_empty()),
        "a {status} made by the proxy carries x-request-id: {raw:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_at_the_limit_passes() {
    let (up, px) = limited().await;
    let raw = raw_request(px.addr, &post_with_length(1024, 1024)).await;
    assert_eq!(raw_status(&raw), 200, "raw response: {raw:?}");
    assert_eq!(up.last().expect("forwarded").body.len(), 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_over_the_limit_is_413_and_not_forwarded() {
    let (up, px) = limited().await;
    let raw = raw_request(px.addr, &post_with_length(2048, 2048)).await;
    assert_proxy_made(&raw, 413);
    assert_eq!(up.requests(), 0, "an over-limit request is not forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_the_limit_is_413() {
    let (_up, px) = limited().await;
    let mut raw = b"POST /upload HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..3 {
        raw.extend_from_slice(b"3e8\r\n"); // 1000 bytes
        raw.extend(std::iter::repeat_n(b'c', 1000));
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_request(px.addr, &raw).await;
    assert_proxy_made(&answer, 413);
}

/// A chunk size over `max_body` (or sizes that add up to more) is 413 as soon as its
/// size line is read, as a `Content-Length` over it is: not a wait for bytes that may
/// never come (the request went upstream and the client got 408 after the response
/// timeout). With the head not yet forwarded, nothing reaches the server; with it
/// forwarded, the exchange is dropped and the client still gets the 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_size_over_the_limit_is_413_at_once() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let px = proxy(&format!(
        "[server.limits]\nmax_body = \"1KiB\"\n\n{}",
        app(&[&up], "response_timeout = \"20s\"")
    ));
    let head = "POST /upload HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n";
    // With the head: one size over the limit, the largest size line there is, and two
    // that add up to more (the second's data never sent).
    for first in [
        "1000001\r\nabc",
        "ffffffffffffffff\r\n",
        "200\r\n",
        "0000000000000401\r\n",
    ] {
        let mut body = first.as_bytes().to_vec();
        if first == "200\r\n" {
            body.extend(std::iter::repeat_n(b'c', 0x200));
            body.extend_from_slice(b"\r\n201\r\nabc");
        }
        let started = Instant::now();
        let mut stream = TcpStream::connect(px.addr).await.expect("connect");
        stream
            .write_all(&[head.as_bytes(), &body].concat())
            .await
            .expect("write");
        let answer = read_raw(&mut stream, Duration::from_secs(5)).await;
        assert_proxy_made(&answer, 413);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{first:?}: answered after {:?}",
            started.elapsed()
        );
    }
    assert_eq!(up.requests(), 0, "{:?}", up.all());

    // The head forwarded first (a chunk within the limit read and sent), then a size
    // over it.
    let started = Instant::now();
    let mut stream = TcpStream::connect(px.addr).await.expect("connect");
    stream
        .write_all(format!("{head}10\r\n0123456789abcdef\r\n").as_bytes())
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream
        .write_all(b"ffffffffffffffff\r\nabc")
        .await
        .expect("write");
    let answer = read_raw(&mut stream, Duration::from_secs(5)).await;
    assert_proxy_made(&answer, 413);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_the_limit_to_builtin_echo_is_413() {
    let rest = "[server.limits]\nmax_body = \"1KiB\"\n\n[upstreams.echo]\nservers = [\"builtin:echo\"]\n\n[[routes]]\nupstream = \"echo\"\n";
    let px = proxy(rest);
    let mut raw = b"POST /upload HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    raw.extend_from_slice(b"800\r\n"); // 2048 bytes
    raw.extend(std::iter::repeat_n(b'c', 2048));
    raw.extend_from_slice(b"\r\n0\r\n\r\n");
    let answer = raw_request(px.addr, &raw).await;
    assert_proxy_made(&answer, 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_over_the_limit_are_431() {
    let (up, px) = limited().await;
    // Over max_header_bytes (4 KiB) but under hyper's backstop: the proxy answers.
    let big = "v".repeat(5000);
    let raw = raw_request(
        px.addr,
        format!("GET / HTTP/1.1\r\nHost: test.local\r\nX-Big: {big}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_proxy_made(&raw, 431);

    // Far over the limit: refused before a request exists (the server's HTTP/1.1
    // loop stops reading at twice the limit), still with a request id.
    let huge = "v".repeat(40_000);
    let raw = raw_request(
        px.addr,
        format!(
            "GET / HTTP/1.1\r\nHost: test.local\r\nX-Huge: {huge}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_proxy_made(&raw, 431);
    assert_eq!(up.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_content_lengths_are_400() {
    let (up, px) = limited().await;
    let raw = raw_request(
        px.addr,
        b"POST / HTTP/1.1\r\nHost: test.local\r\nContent-Length: 5\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello!",
    )
    .await;
    assert_eq!(raw_status(&raw), 400, "two lines: {raw:?}");
    let raw = raw_request(
        px.addr,
        b"POST / HTTP/1.1\r\nHost: test.local\r\nContent-Length: 5, 6\r\nConnection: close\r\n\r\nhello!",
    )
    .await;
    assert_eq!(raw_status(&raw), 400, "one list: {raw:?}");
    assert_eq!(up.requests(), 0, "nothing ambiguous is forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_transfer_encodings_are_400_with_a_request_id() {
    let (up, px) = limited().await;
    for te in ["chunked, chunked", "gzip, chunked"] {
        let raw = raw_request(
            px.addr,
            format!("POST / HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: {te}\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert_proxy_made(&raw, 400);
    }
    let raw = raw_request(
        px.addr,
        b"POST / HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(
        raw_status(&raw),
        400,
        "two Transfer-Encoding lines: {raw:?}"
    );
    assert_eq!(up.requests(), 0, "nothing ambiguous is forwarded");
}

/// Two Host headers are refused whatever the version; an HTTP/1.0 request without one
/// reaches the upstream (as HTTP/1.1) with exactly one, the server's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_are_one_upstream_whatever_the_client_version() {
    let (up, px) = limited().await;
    let raw = raw_request(
        px.addr,
        b"GET /h HTTP/1.0\r\nHost: public.example\r\nHost: admin.internal\r\n\r\n",
    )
    .await;
    assert_proxy_made(&raw, 400);
    assert_eq!(up.requests(), 0);
    let raw = raw_request(px.addr, b"GET /h HTTP/1.0\r\n\r\n").await;
    assert_eq!(raw_status(&raw), 200, "{raw}");
    let got = up.last().expect("the request went upstream");
    let hosts: Vec<_> = got.headers.get_all("host").iter().collect();
    assert_eq!(hosts.len(), 1, "{:?}", got.headers);
    assert_eq!(hosts[0], up.authority().as_str());
}

/// An absolute-form target names the host (RFC 9112 3.2.2): routing and the upstream
/// see the target's authority, not a `Host` that says otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_names_the_host() {
    let (up, px) = limited().await;
    let raw = raw_request(
        px.addr,
        b"GET http://internal.example/p?q=1 HTTP/1.1\r\nHost: public.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&raw), 200, "{raw}");
    let got = up.last().expect("the request went upstream");
    assert_eq!(got.uri, "/p?q=1");
    let hosts: Vec<_> = got.headers.get_all("host").iter().collect();
    assert_eq!(hosts, ["internal.example"], "{:?}", got.headers);
}

/// An authority-form target (`host:port`, RFC 9112 3.2.3) is for `CONNECT` only:
/// on any other method it is 400, as nginx answers, and the connection closes. It was
/// forwarded as `GET /` with the target's authority written over `Host`, so any
/// client could name any site (`admin.internal:8080`) past the one it connected for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authority_form_target_is_400_on_any_method_but_connect() {
    log::capture();
    let (up, px) = limited().await;
    for head in [
        "GET admin.internal:8080 HTTP/1.1\r\nHost: public.example\r\n\r\n",
        "GET admin.internal HTTP/1.1\r\nHost: public.example\r\n\r\n",
        "POST evil HTTP/1.1\r\nHost: public.example\r\nContent-Length: 5\r\n\r\nhello",
        "OPTIONS x:80 HTTP/1.1\r\nHost: public.example\r\n\r\n",
        "HEAD admin.internal:8080 HTTP/1.1\r\nHost: public.example\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(px.addr).await.expect("connect");
        stream.write_all(head.as_bytes()).await.expect("write");
        let raw = read_raw(&mut stream, Duration::from_secs(5)).await;
        assert_proxy_made(&raw, 400);
        assert_eq!(
            raw_header(&raw, "connection").as_deref(),
            Some("close"),
            "{head:?}: {raw}"
        );
        let mut rest = [0u8; 64];
        let closed = matches!(
            tokio::time::timeout(Duration::from_secs(3), stream.read(&mut rest)).await,
            Ok(Ok(0)) | Ok(Err(_))
        );
        assert!(closed, "{head:?}: the connection closes after the 400");
    }
    assert_eq!(up.requests(), 0, "{:?}", up.all());
    // Logged with the target as sent (not as `/`).
    let line = log::access_line_for("admin.internal:8080").await;
    assert!(line.contains("status=400"), "{line}");
    // The other forms go on: origin-form, absolute-form, and `*` for OPTIONS.
    for head in [
        "GET /o HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        "GET http://a.example/abs HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    ] {
        let raw = raw_request(px.addr, head.as_bytes()).await;
        assert_eq!(raw_status(&raw), 200, "{head:?}: {raw}");
    }
    assert_eq!(up.requests(), 3);
    // `CONNECT host:port` has no tunnel to open here: 405, as before.
    let raw = raw_request(
        px.addr,
        b"CONNECT admin.internal:8080 HTTP/1.1\r\nHost: admin.internal:8080\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&raw), 405, "{raw}");
    assert_eq!(up.requests(), 3);
}

/// An absolute-form target with userinfo is 400 (as nginx): `good.example:80@evil.example`
/// names evil.example to a URL parser but was routed as `good.example`, and a
/// password went upstream in `Host` and `X-Forwarded-Host`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_with_userinfo_is_refused() {
    let (up, px) = limited().await;
    for target in [
        "http://good.example:80@evil.example/x",
        "http://user:pw@evil.example/x",
        "http://@evil.example/x",
    ] {
        let head = format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let raw = raw_request(px.addr, head.as_bytes()).await;
        assert_eq!(raw_status(&raw), 400, "{target}: {raw}");
    }
    // The same in a Host header (it was routed as `good.example` and sent on whole).
    for host in [
        "good.example:80@evil.example",
        "user:pw@evil.example",
        "good.example:x",
    ] {
        let head = format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let raw = raw_request(px.addr, head.as_bytes()).await;
        assert_eq!(raw_status(&raw), 400, "{host}: {raw}");
    }
    assert_eq!(up.requests(), 0, "{:?}", up.all());
}

/// `Expect: 100-continue` is answered at the client's hop and not passed on (as nginx
/// does): the upstream gets the body and no Expect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_is_answered_here_and_not_forwarded() {
    let (up, px) = limited().await;
    let mut stream = TcpStream::connect(px.addr).await.expect("connect");
    stream
        .write_all(b"POST /e HTTP/1.1\r\nHost: test.local\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .expect("write head");
    let mut first = [0u8; 25];
    stream.read_exact(&mut first).await.expect("100 Continue");
    assert!(
        first.starts_with(b"HTTP/1.1 100 Continue\r\n"),
        "{:?}",
        String::from_utf8_lossy(&first)
    );
    stream.write_all(b"hello").await.expect("write body");
    let raw = read_raw(&mut stream, Duration::from_secs(5)).await;
    assert!(raw.contains(" 200 "), "{raw}");
    let got = up.last().expect("the request went upstream");
    assert_eq!(got.body.as_ref(), b"hello");
    assert!(got.headers.get("expect").is_none(), "{:?}", got.headers);
}

/// A request pipelined behind an `Upgrade` that is not upgraded is not served: hyper,
/// which serves such a connection, would drop the `Content-Length` of a request with
/// both framings instead of refusing it. The connection ends with the first answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_pipelined_behind_a_refused_upgrade_is_forwarded() {
    let (up, px) = limited().await;
    let mut stream = TcpStream::connect(px.addr).await.expect("connect");
    stream
        .write_all(b"GET /u HTTP/1.1\r\nHost: test.local\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\nPOST /p HTTP/1.1\r\nHost: test.local\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        .await
        .expect("write");
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut all))
        .await
        .expect("the proxy closes the connection after the first answer")
        .expect("read");
    let text = String::from_utf8_lossy(&all);
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "one answer: {text}");
    assert!(
        up.all().iter().all(|r| r.uri != "/p"),
        "the pipelined request never reaches the upstream"
    );
}

/// A chunk-size line without digits is not the last chunk (httparse reads it as size 0,
/// which would end the body early and make what follows a request of its own): the
/// body is broken, the request fails, and nothing after it reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_size_line_without_digits_smuggles_nothing() {
    let (up, px) = limited().await;
    let mut stream = TcpStream::connect(px.addr).await.expect("connect");
    stream
        .write_all(b"POST /a HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: test.local\r\n\r\n")
        .await
        .expect("write");
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut all)).await;
    let text = String::from_utf8_lossy(&all);
    assert!(
        !text.starts_with("HTTP/1.1 200"),
        "the broken body is not a request: {text}"
    );
    assert!(
        up.all().iter().all(|r| !r.uri.contains("smuggled")),
        "nothing after the broken body reaches the upstream"
    );
}

/// RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 message means its framing is
/// faulty (an HTTP/1.0 hop on the way may not have understood it), even a plain
/// `chunked`: 400, the connection closes, nothing goes upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encoding_in_an_http10_request_is_400_and_closes() {
    let (up, px) = limited().await;
    let mut stream = TcpStream::connect(px.addr).await.expect("connect");
    stream
        .write_all(b"POST / HTTP/1.0\r\nHost: test.local\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .await
        .expect("write");
    let raw = read_raw(&mut stream, Duration::from_secs(5)).await;
    assert_proxy_made(&raw, 400);
    let mut rest = [0u8; 64];
    let after = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut rest))
        .await
        .expect("the proxy closes the connection");
    assert!(matches!(after, Ok(0) | Err(_)), "closed, not kept alive");
    assert_eq!(up.requests(), 0, "nothing ambiguous is forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_is_400() {
    let (up, px) = limited().await;
    let raw = raw_request(
        px.addr,
        b"POST / HTTP/1.1\r\nHost: test.local\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&raw), 400, "raw response: {raw:?}");
    assert_eq!(
        up.requests(),
        0,
        "a request with two framings is never forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_duplicated_host_on_http11_is_400() {
    let (up, px) = limited().await;
    let raw = raw_request(px.addr, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_proxy_made(&raw, 400);
    let raw = raw_request(
        px.addr,
        b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&raw), 400, "two Host lines: {raw:?}");
    assert_eq!(up.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_request_line_is_400() {
    let (up, px) = limited().await;
    let raw = raw_request(px.addr, b"THIS IS NOT HTTP AT ALL\r\n\r\n").await;
    assert_eq!(raw_status(&raw), 400, "raw response: {raw:?}");
    let raw = raw_request(
        px.addr,
        b"GET /\x01\x02 HTTP/1.1\r\nHost: test.local\r\n\r\n",
    )
    .await;
    assert_eq!(
        raw_status(&raw),
        400,
        "control bytes in the target: {raw:?}"
    );
    assert_eq!(up.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalling_mid_headers_is_closed_after_the_header_timeout() {
    let (up, px) = limited().await;
    let mut stream = tokio::net::TcpStream::connect(px.addr)
        .await
        .expect("connect");
    stream
        .write_all(b"GET /stall HTTP/1.1\r\nHost: test.local\r\nX-Half: ")
        .await
        .expect("write half a head");
    let start = Instant::now();

    // A 408 (as docs/config.md says; it once closed without a word), then the close.
    let answer = read_raw(&mut stream, Duration::from_secs(3)).await;
    let elapsed = start.elapsed();

    assert!(
        elapsed < Duration::from_millis(2_500),
        "the stalled connection was still open after {elapsed:?} (header timeout 300ms); got {answer:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(250),
        "closed before the header timeout: {elapsed:?}"
    );
    assert_eq!(raw_status(&answer), 408, "{answer:?}");
    assert!(
        answer.to_ascii_lowercase().contains("x-request-id"),
        "{answer:?}"
    );
    assert_eq!(up.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_timeout_does_not_cut_an_idle_connection_before_its_first_byte() {
    let (up, px) = limited().await;
    let mut stream = tokio::net::TcpStream::connect(px.addr)
        .await
        .expect("connect");
    // Quiet for twice the header timeout, well under the idle timeout (60 s).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let _ = stream
        .write_all(b"GET /late HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n")
        .await;
    let answer = read_raw(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(raw_status(&answer), 200, "raw response: {answer:?}");
    assert_eq!(up.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_is_dropped_after_idle() {
    // A client that stopped reading held its connection (and the upstream's) for
    // good: no time bound on writing a response.
    let big = Bytes::from(vec![b'x'; 32 * 1024 * 1024]);
    let up = Upstream::start("a", Behavior::fixed_body(big, false)).await;
    let rest = format!("[server.timeouts]\nidle = \"500ms\"\n\n{}", app(&[&up], ""));
    let px = proxy(&rest);
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("small window");
    let mut stalled = socket.connect(px.addr).await.expect("connect");
    stalled
        .write_all(b"GET /big HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .expect("write");
    // Read nothing; the proxy's writes block, and after `idle` it gives up.
    let shared = std::sync::Arc::clone(px.handle().shared());
    let open = || {
        shared
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let started = wait_until(Duration::from_secs(5), || open() == 1).await;
    assert!(started, "the connection is counted");
    let dropped = wait_until(Duration::from_secs(5), || open() == 0).await;
    assert!(
        dropped,
        "a client reading nothing still holds its connection"
    );
    drop(stalled);
}

/// An upstream that answers each request with how many header lines its head had.
async fn line_counter() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i;
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let lines = buf[..end].split(|b| *b == b'\n').count() - 1;
                let body = lines.to_string();
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    addr
}

/// A request head with `count` small headers (`X<i>: v`) besides `Host`.
fn many_headers(count: usize) -> Vec<u8> {
    let mut head = String::from("GET /many HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n");
    for i in 0..count {
        head.push_str(&format!("X{i}: v\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_headers_within_the_size_limit_pass() {
    // nginx bounds a request head by size (`large_client_header_buffers`), not by its
    // line count: 300 headers in under 3 KiB are within `max_header_bytes = 4KiB`.
    let upstream = line_counter().await;
    let px = proxy(&format!(
        "[server.limits]\nmax_header_bytes = \"4KiB\"\n\n[upstreams.app]\nservers = [\"{upstream}\"]\n\n[[routes]]\nupstream = \"app\"\n"
    ));
    let raw = raw_request(px.addr, &many_headers(300)).await;
    assert_eq!(raw_status(&raw), 200, "{raw:.400}");
    let forwarded: usize = raw_body(&raw).parse().expect("a count");
    assert!(forwarded >= 301, "every header reached the upstream: {raw}");

    // The size limit still holds, however small each header is.
    let raw = raw_request(px.addr, &many_headers(600)).await;
    assert_proxy_made(&raw, 431);
}

/// `GET` of a target `len` bytes long (`/` and then `a`s).
fn long_target(len: usize) -> Vec<u8> {
    let target = format!("/{}", "a".repeat(len - 1));
    format!("GET {target} HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_over_the_uri_limit_is_414_and_a_head_over_max_header_bytes_still_431() {
    // Targets over 65534 bytes cannot be held (the http crate's limit): they were a
    // bare 400 "malformed request target", where hyper's path (and nginx) answer 414.
    let up = Upstream::start("a", Behavior::echo()).await;
    let px = proxy(&format!(
        "[server.limits]\nmax_header_bytes = \"256KiB\"\n\n{}",
        app(&[&up], "")
    ));
    let raw = raw_request(px.addr, &long_target(70_000)).await;
    assert_proxy_made(&raw, 414);
    // The longest target that can be held is served.
    let raw = raw_request(px.addr, &long_target(65_534)).await;
    assert_eq!(raw_status(&raw), 200, "{:.200}", raw);
    assert_eq!(up.requests(), 1);

    // With the default max_header_bytes (64 KiB) the same head is over the limit:
    // 431, as documented for a head (request line and headers) over it.
    let px = proxy(&app(&[&up], ""));
    let raw = raw_request(px.addr, &long_target(70_000)).await;
    assert_proxy_made(&raw, 431);
    assert_eq!(up.requests(), 1);
}
