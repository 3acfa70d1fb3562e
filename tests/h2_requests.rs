//! HTTP/2 clients toward HTTP/1.1 upstreams, over real sockets: a request body the
//! client resets or cuts short is the client's fault (499 / 400, never counted against
//! the server, so no client can open a healthy server's breaker), cookies split into
//! several fields are one line from arrival (the upstream and `hash_key` see it),
//! `:authority` is the host (a `Host` that differs, or userinfo, or neither it nor
//! `Host`, is a 400), and the target `*` is for `OPTIONS` only.
//!
//! The client writes raw frames where hyper's would not send what is tested (a body
//! shorter than its `Content-Length`, a `:path` of `*`), with every header a literal
//! HPACK field.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::h2raw::*;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

/// An HPACK integer with a 7-bit prefix (string lengths, no Huffman).
fn hpack_len(out: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        out.push(n as u8);
        return;
    }
    out.push(127);
    n -= 127;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

/// A header block of literal fields without indexing, new names.
fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_len(&mut out, name.len());
        out.extend_from_slice(name.as_bytes());
        hpack_len(&mut out, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// An HTTP/2 connection with the preface and SETTINGS written; what the server sends
/// is read and dropped in the background (these tests read the access log).
async fn raw_h2(addr: SocketAddr) -> OwnedWriteHalf {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = tcp.into_split();
    tokio::spawn(async move {
        let mut sink = [0u8; 16 * 1024];
        while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    let mut hello = PREFACE.to_vec();
    frame(&mut hello, SETTINGS, 0, 0, &[]);
    wr.write_all(&hello).await.expect("preface");
    wr
}

fn logging_proxy(up: &Upstream) -> Proxy {
    log::capture();
    proxy_with(
        "workers = 1",
        &format!("[log]\naccess = true\n\n{}", app(&[up], "")),
    )
}

/// Transport failures counted against the proxy's only server.
fn failures(px: &Proxy) -> u64 {
    px.handle().shared().generation().upstreams.sets[0].servers[0].failures()
}

/// How an upload of 16 KiB out of a declared 200,000 bytes ends, a moment after the
/// 16 KiB (the request has reached the server by then).
#[derive(Clone, Copy)]
enum Ending {
    /// RST_STREAM(CANCEL): the client gave the request up.
    Reset,
    /// An empty DATA with END_STREAM: the body is shorter than its `Content-Length`.
    Short,
}

async fn upload(addr: SocketAddr, path: &str, ending: Ending) {
    let mut wr = raw_h2(addr).await;
    let mut out = Vec::new();
    let head = block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", TEST_HOST),
        (":path", path),
        ("content-length", "200000"),
    ]);
    frame(&mut out, HEADERS, END_HEADERS, 1, &head);
    frame(&mut out, DATA, 0, 1, &[b'x'; 16 * 1024]);
    wr.write_all(&out).await.expect("request");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut end = Vec::new();
    match ending {
        Ending::Reset => frame(&mut end, RST_STREAM, 0, 1, &CANCEL.to_be_bytes()),
        Ending::Short => frame(&mut end, DATA, END_STREAM, 1, &[]),
    }
    wr.write_all(&end).await.expect("the end");
    // The connection stays open until the request is logged.
    log::access_line_for(path).await;
}

/// More uploads than the default breaker's 5 failures, each ended by the client: the
/// server is not charged, its breaker stays closed, and each is logged with the
/// client's status.
async fn client_endings_are_not_the_servers(ending: Ending, tag: &str, status: &str) {
    let up = Upstream::start("a", Behavior::echo()).await;
    let px = logging_proxy(&up);
    for i in 0..7 {
        let path = format!("/{tag}/{i}");
        upload(px.addr, &path, ending).await;
        let line = log::access_line_for(&path).await;
        assert!(line.contains(&format!("status={status}")), "{line}");
    }
    assert_eq!(failures(&px), 0, "the server is not charged");
    let after = get(px.addr, &format!("/{tag}/after")).await;
    assert_eq!(
        after.status,
        200,
        "the breaker stayed closed: {}",
        after.text()
    );
    let warned: Vec<String> = log::lines_with("request body")
        .into_iter()
        .filter(|l| l.contains(" WARN "))
        .collect();
    assert!(
        warned.is_empty(),
        "no WARN for the client's doing: {warned:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resetting_its_upload_is_499_and_not_the_servers_failure() {
    client_endings_are_not_the_servers(Ending::Reset, "reset", "499").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_shorter_than_its_content_length_is_400_and_not_the_servers_failure() {
    client_endings_are_not_the_servers(Ending::Short, "short", "400").await;
}

/// The built-in echo reads the body itself: a reset is the client leaving (499), as
/// toward a real server, and a short body a 400 (a reset was logged 400).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_logs_a_reset_upload_as_499_and_a_short_one_as_400() {
    log::capture();
    let px = proxy_with(
        "workers = 1",
        "[log]\naccess = true\n\n[upstreams.echo]\nservers = [\"builtin:echo\"]\n\n[[routes]]\nupstream = \"echo\"\n",
    );
    upload(px.addr, "/echo-reset", Ending::Reset).await;
    let line = log::access_line_for("/echo-reset").await;
    assert!(line.contains("status=499"), "{line}");
    upload(px.addr, "/echo-short", Ending::Short).await;
    let line = log::access_line_for("/echo-short").await;
    assert!(line.contains("status=400"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_fields_are_joined_for_an_http11_upstream() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let px = proxy(&app(&[&up], ""));
    let resp = send_h2(
        px.addr,
        empty(
            http::Request::builder()
                .method("GET")
                .uri(format!("http://{TEST_HOST}/cookies"))
                .header("cookie", "a=1")
                .header("cookie", "b=2")
                .header("cookie", "c=3"),
        ),
    )
    .await;
    assert_eq!(resp.status, 200);
    let seen = up.last().expect("the upstream got the request");
    let cookies: Vec<_> = seen.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1; b=2; c=3"], "one line, joined with \"; \"");
}

/// `hash_key = "header:cookie"` hashed an HTTP/2 client's first crumb only (the fields
/// were joined after the server was picked): every `a=1; b=N` client went to one
/// server, and to another than the same cookies sent as one HTTP/1.1 line. Now the
/// crumbs are joined on arrival and hash as that line does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_the_cookie_hashes_http2_crumbs_as_one_line() {
    let a = Upstream::start("a", Behavior::echo()).await;
    let b = Upstream::start("b", Behavior::echo()).await;
    let c = Upstream::start("c", Behavior::echo()).await;
    let px = proxy(&app(
        &[&a, &b, &c],
        "balance = \"consistent_hash\"\nhash_key = \"header:cookie\"",
    ));
    let mut used = std::collections::BTreeSet::new();
    for n in 0..12 {
        let line = format!("a=1; b={n}; c=3");
        let h1 = send(
            px.addr,
            empty(req("GET", "/").header("cookie", line.as_str())),
        )
        .await;
        let b = format!("b={n}");
        let h2 = send_h2(
            px.addr,
            empty(
                http::Request::builder()
                    .method("GET")
                    .uri(format!("http://{TEST_HOST}/"))
                    .header("cookie", "a=1")
                    .header("cookie", b.as_str())
                    .header("cookie", "c=3"),
            ),
        )
        .await;
        assert_eq!((h1.status.as_u16(), h2.status.as_u16()), (200, 200));
        assert_eq!(h2.server(), h1.server(), "{line}: the same key either way");
        used.insert(h1.server());
    }
    assert!(used.len() > 1, "12 keys all hashed to one server: {used:?}");
}

/// Two sites, by host: which one a request reaches, and the `Host` it is sent with.
async fn two_sites() -> (Upstream, Upstream, Proxy) {
    let auth = Upstream::start("auth", Behavior::echo()).await;
    let host = Upstream::start("host", Behavior::echo()).await;
    let px = proxy(&format!(
        "[upstreams.auth]\nservers = {}\n\n[upstreams.host]\nservers = {}\n\n\
         [[routes]]\nhost = \"auth.example\"\nupstream = \"auth\"\n\n\
         [[routes]]\nhost = \"host.example\"\nupstream = \"host\"\n",
        servers(&[&auth]),
        servers(&[&host])
    ));
    (auth, host, px)
}

fn h2_get(uri: &str, host: Option<&str>) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut b = http::Request::builder().method("GET").uri(uri);
    if let Some(h) = host {
        b = b.header("host", h);
    }
    empty(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authority_is_the_host_and_a_host_that_differs_is_refused() {
    let (auth, host, px) = two_sites().await;

    // `:authority` alone, or with a `Host` that says the same in other case: routed
    // by it and sent with it.
    for h in [None, Some("AUTH.example")] {
        let resp = send_h2(px.addr, h2_get("http://auth.example/same", h)).await;
        assert_eq!(resp.status, 200, "{h:?}: {}", resp.text());
        assert_eq!(resp.server(), "auth");
        let seen = auth.last().expect("request");
        assert_eq!(
            seen.header("host").as_deref(),
            Some("auth.example"),
            "{h:?}"
        );
    }

    // A `Host` that names another site (or nothing) beside `:authority`: malformed.
    for h in ["host.example", ""] {
        let resp = send_h2(px.addr, h2_get("http://auth.example/differs", Some(h))).await;
        assert_eq!(resp.status, 400, "host {h:?}: {}", resp.text());
        assert!(resp.request_id().is_some(), "a 400 made here has an id");
    }
    assert_eq!(host.requests(), 0, "nothing reached the site `Host` named");
    assert_eq!(auth.requests(), 2);
}

/// A request that names no host at all (no `:authority`, no `Host`) is malformed
/// (RFC 9113 8.3.1): a 400 with an id, not a request to the upstream's own address.
/// `Host` alone still names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_authority_or_host_is_refused() {
    let (auth, host, px) = two_sites().await;
    // A relative URI: hyper's client sends `:method`, `:scheme` and `:path` alone.
    let resp = send_h2(px.addr, h2_get("/no-host", None)).await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert!(resp.request_id().is_some(), "a 400 made here has an id");
    let resp = send_h2(px.addr, h2_get("/empty-host", Some(""))).await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert_eq!(
        auth.requests() + host.requests(),
        0,
        "nothing was forwarded"
    );

    let resp = send_h2(px.addr, h2_get("/host-only", Some("auth.example"))).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.server(), "auth");
    let seen = auth.last().expect("request");
    assert_eq!(seen.header("host").as_deref(), Some("auth.example"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authority_with_userinfo_is_refused() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let px = logging_proxy(&up);
    let mut wr = raw_h2(px.addr).await;
    let mut out = Vec::new();
    let head = block(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "user:secret@test.local"),
        (":path", "/userinfo"),
    ]);
    frame(&mut out, HEADERS, END_HEADERS | END_STREAM, 1, &head);
    wr.write_all(&out).await.expect("request");
    let line = log::access_line_for("/userinfo").await;
    assert!(line.contains("status=400"), "{line}");
    assert_eq!(up.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_asterisk_target_is_for_options_only() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let px = logging_proxy(&up);

    // HTTP/2: `GET *` is refused; there is no resource `*` to look for.
    let mut wr = raw_h2(px.addr).await;
    let mut out = Vec::new();
    for (stream, method) in [(1, "GET"), (3, "POST")] {
        let head = block(&[
            (":method", method),
            (":scheme", "http"),
            (":authority", "star.example"),
            (":path", "*"),
        ]);
        frame(&mut out, HEADERS, END_HEADERS | END_STREAM, stream, &head);
    }
    wr.write_all(&out).await.expect("request");
    wait_until(Duration::from_secs(10), || {
        log::lines_with("path=*").len() + log::lines_with("path=\"*\"").len() >= 2
    })
    .await;
    let lines: Vec<String> = log::lines_with("proxycache::access")
        .into_iter()
        .filter(|l| l.contains("path=*") || l.contains("path=\"*\""))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines.iter().all(|l| l.contains("status=400")), "{lines:?}");

    // HTTP/1.1 the same; `OPTIONS *` goes on.
    let raw = raw_request(px.addr, b"GET * HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(raw_status(&raw), 400, "{raw}");
    let raw = raw_request(px.addr, b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(raw_status(&raw), 200, "{raw}");
    assert_eq!(up.requests(), 1, "only OPTIONS reached the server");
}

/// Reads frames from `rd` until each of `streams` has a response head (its first
/// header byte: `0x88` is `:status 200`, `0x8c` is `400` from HPACK's static table)
/// or a reset (`RST(code)`), or 5 s pass.
async fn outcomes(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    streams: &[u32],
) -> std::collections::BTreeMap<u32, String> {
    let mut got = std::collections::BTreeMap::new();
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while streams.iter().any(|s| !got.contains_key(s)) {
        while buf.len() >= 9 {
            let len =
                (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let kind = buf[3];
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let payload = &buf[9..9 + len];
            match kind {
                HEADERS => {
                    got.entry(stream).or_insert_with(|| {
                        format!("{:#04x}", payload.first().copied().unwrap_or(0))
                    });
                }
                RST_STREAM => {
                    let code = payload
                        .get(..4)
                        .map_or(0, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                    got.entry(stream).or_insert_with(|| format!("RST({code})"));
                }
                GOAWAY => {
                    for s in streams {
                        got.entry(*s).or_insert_with(|| "GOAWAY".to_owned());
                    }
                }
                _ => {}
            }
            buf.drain(..9 + len);
        }
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    got
}

/// `:path` is origin-form or `*` (RFC 9113 8.3.1): an authority-form or bare-word
/// path never reaches an upstream (over HTTP/1.1 such a target is 400 too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_that_is_not_origin_form_is_refused() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let px = logging_proxy(&up);
    let tcp = TcpStream::connect(px.addr).await.expect("connect");
    let (mut rd, mut wr) = tcp.into_split();
    let mut out = PREFACE.to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    let cases = [
        (1, "GET", "admin.internal:8080"),
        (3, "GET", "evil"),
        (5, "OPTIONS", "x:80"),
        (7, "GET", "/fine"),
    ];
    for (stream, method, path) in cases {
        let head = block(&[
            (":method", method),
            (":scheme", "http"),
            (":authority", "public.example"),
            (":path", path),
        ]);
        frame(&mut out, HEADERS, END_HEADERS | END_STREAM, stream, &head);
    }
    wr.write_all(&out).await.expect("requests");
    let got = outcomes(&mut rd, &[1, 3, 5, 7]).await;
    assert_eq!(got.get(&7).map(String::as_str), Some("0x88"), "{got:?}");
    for stream in [1, 3, 5] {
        let outcome = got.get(&stream).map(String::as_str);
        assert!(
            matches!(outcome, Some("0x8c") | Some("RST(1)")),
            "stream {stream}: {got:?}"
        );
    }
    assert_eq!(up.requests(), 1, "{:?}", up.all());
    assert_eq!(up.last().expect("one").uri, "/fine");
}
