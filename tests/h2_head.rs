//! How answers are framed for HTTP/2 clients (h2c by prior knowledge). HEAD for every
//! kind of answer: a module's `respond`, the proxy's own 404 and 502, `builtin:echo`
//! and a real upstream. Each gets its status and headers (a `Content-Length` as the
//! GET's) and no body, and the connection serves the next request. And the lengths an
//! HTTP/1.1 upstream or a module gives: a 204 has none and no body, a 304 no body,
//! any other answer at most one `content-length`, true to its DATA (else a client
//! resets the stream). (HTTP/2 over TLS: `tests/tls.rs`.)

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use http::{Request, Version};
use http_body_util::Full;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const GREET: &str = r#"mod greet {
  priority 10
  on request {
    if $path == "/mod" {
      respond 200 "hello from a module\n" { "x-from": "greet" }
    }
  }
}
"#;

/// An h2c connection (prior knowledge) to `addr`.
async fn h2_connection(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

/// Sends `method path` on `sender`'s connection and reads the whole answer.
async fn exchange(sender: &mut SendRequest<Full<Bytes>>, method: &str, path: &str) -> Resp {
    let req: Request<Full<Bytes>> = empty(req(method, &format!("http://{TEST_HOST}{path}")));
    let sent = async {
        sender
            .ready()
            .await
            .map_err(|e| format!("connection not ready: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("send: {e}"))?;
        read_resp(resp).await
    };
    match tokio::time::timeout(CLIENT_TIMEOUT, sent).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => panic!("{method} {path} over h2: {e}"),
        Err(_) => panic!("{method} {path} over h2: no answer within {CLIENT_TIMEOUT:?}"),
    }
}

fn content_length(resp: &Resp) -> Option<u64> {
    resp.header("content-length").and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_over_h2_gets_the_head_without_a_body_for_every_kind_of_answer() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let site = Site::new("h2-head");
    site.write_mod("greet", GREET);
    site.write_config(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [scripts]\ndir = \"mods\"\nwatch = false\n\n\
         [upstreams.echo]\nservers = [\"builtin:echo\"]\n\n\
         [upstreams.dead]\nservers = [\"{}\"]\n\n\
         [upstreams.app]\nservers = [\"{}\"]\n\n\
         [[routes]]\npath_prefix = \"/echo/\"\nupstream = \"echo\"\n\n\
         [[routes]]\npath_prefix = \"/dead/\"\nupstream = \"dead\"\n\n\
         [[routes]]\npath_prefix = \"/app/\"\nupstream = \"app\"\n",
        dead_addr(),
        up.addr
    ));
    let run = Running::start(&site);
    // One connection for everything: each HEAD must leave it usable.
    let mut h2 = h2_connection(run.addr).await;

    // (path, status): a module's answer, no route, an upstream that refuses
    // connections, the echo.
    for (path, status) in [
        ("/mod", 200),
        ("/nowhere", 404),
        ("/dead/x", 502),
        ("/echo/x", 200),
    ] {
        let get = exchange(&mut h2, "GET", path).await;
        assert_eq!(get.status, status, "GET {path}: {}", get.text());
        assert!(!get.body.is_empty(), "GET {path} has a body");
        let head = exchange(&mut h2, "HEAD", path).await;
        assert_eq!(head.version, Version::HTTP_2);
        assert_eq!(head.status, status, "HEAD {path}");
        assert!(
            head.body.is_empty(),
            "HEAD {path} over h2 carries no DATA, got {:?}",
            head.text()
        );
        assert_eq!(
            head.header("content-type"),
            get.header("content-type"),
            "HEAD {path} keeps its headers"
        );
        let len = content_length(&head)
            .unwrap_or_else(|| panic!("HEAD {path} has a content-length: {:?}", head.headers));
        if path.starts_with("/echo/") {
            // The echo describes the request, whose method differs.
            assert!(len > 0, "HEAD {path}");
        } else {
            assert_eq!(
                Some(len),
                content_length(&get),
                "HEAD {path}: the GET's length"
            );
            assert_eq!(len as usize, get.body.len(), "HEAD {path}");
            assert!(
                head.request_id().is_some(),
                "HEAD {path}: {:?}",
                head.headers
            );
        }
    }
    let head = exchange(&mut h2, "HEAD", "/mod").await;
    assert_eq!(head.header("x-from").as_deref(), Some("greet"));

    // A real upstream: its HEAD answer, then a GET on the same upstream connection.
    let head = exchange(&mut h2, "HEAD", "/app/doc").await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(
        content_length(&head).is_some_and(|n| n > 0),
        "{:?}",
        head.headers
    );
    let get = exchange(&mut h2, "GET", "/app/doc").await;
    assert_eq!(get.status, 200);
    assert_eq!(get.json()["method"], "GET");
    let (opened, _) = run.shared().pool_totals();
    assert_eq!(
        opened, 1,
        "the HEAD's upstream connection went back to the pool"
    );

    // And the connection still serves: the last request.
    let last = exchange(&mut h2, "GET", "/mod").await;
    assert_eq!(last.status, 200);
    assert_eq!(last.text(), "hello from a module\n");
}

/// An HTTP/1.1 upstream that answers each request with the raw bytes `replies` gives
/// for its path (the path's first segment), then closes the connection.
async fn raw_upstream(replies: &'static [(&'static str, &'static [u8])]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let line = String::from_utf8_lossy(&head).into_owned();
                let path = line.split(' ').nth(1).unwrap_or("");
                let first = path.split('/').nth(1).unwrap_or("");
                if let Some((_, reply)) = replies.iter().find(|(p, _)| *p == first) {
                    let _ = stream.write_all(reply).await;
                }
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// A running site whose every route goes to `upstream`, with `module` (when given)
/// and the access log on.
fn site_to(tag: &str, upstream: SocketAddr, module: Option<&str>) -> (Site, Running) {
    log::capture();
    let site = Site::new(tag);
    if let Some(module) = module {
        site.write_mod("m", module);
    }
    site.write_config(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [log]\naccess = true\n\n\
         [scripts]\ndir = \"mods\"\nwatch = false\n\n\
         [upstreams.app]\nservers = [\"{upstream}\"]\n\n[[routes]]\nupstream = \"app\"\n"
    ));
    let run = Running::start(&site);
    (site, run)
}

/// Every `content-length` field of `resp`.
fn lengths(resp: &Resp) -> Vec<String> {
    resp.headers
        .get_all("content-length")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// An HTTP/1.1 upstream's `Content-Length` lines are not handed on as they came: a
/// 204's length (and the bytes after its head) is dropped, a length sent twice or as
/// a list is sent once as one number, a 304 keeps its one length and sends no body.
/// (hyper's client, like curl, resets a stream whose length is a list.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstreams_lengths_reach_h2_clients_as_one_true_length() {
    static REPLIES: &[(&str, &[u8])] = &[
        (
            "no-content",
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
        ),
        (
            "twice",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
        ),
        ("list", b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok"),
        (
            "not-modified",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\nX-A: 1\r\n\r\n",
        ),
    ];
    let up = raw_upstream(REPLIES).await;
    let (_site, run) = site_to("h2-lengths", up, None);
    let mut h2 = h2_connection(run.addr).await;

    let resp = exchange(&mut h2, "GET", "/no-content/a").await;
    assert_eq!(resp.status, 204);
    assert_eq!(lengths(&resp), Vec::<String>::new(), "{:?}", resp.headers);
    assert!(resp.body.is_empty(), "{:?}", resp.text());
    assert_eq!(resp.header("x-a").as_deref(), Some("1"));
    let line = log::access_line_for("/no-content/a").await;
    assert!(
        line.contains("status=204") && line.contains("bytes=0"),
        "{line}"
    );

    for path in ["/twice/a", "/list/a"] {
        let resp = exchange(&mut h2, "GET", path).await;
        assert_eq!(resp.status, 200, "{path}");
        assert_eq!(lengths(&resp), ["2"], "{path}: {:?}", resp.headers);
        assert_eq!(resp.text(), "ok", "{path}");
        let line = log::access_line_for(path).await;
        assert!(
            line.contains("status=200") && line.contains("bytes=2"),
            "{line}"
        );
    }

    let resp = exchange(&mut h2, "GET", "/not-modified/a").await;
    assert_eq!(resp.status, 304);
    assert_eq!(lengths(&resp), ["100"], "{:?}", resp.headers);
    assert!(resp.body.is_empty());

    // The connection still serves.
    let resp = exchange(&mut h2, "GET", "/twice/b").await;
    assert_eq!(resp.text(), "ok");
}

const STATUSES: &str = r#"mod m {
  on request {
    if $path == "/respond-204" {
      respond 204 "body!"
    }
  }
  on response {
    if $path == "/ok/to-304" {
      set resp.status = 304
    }
    if $path == "/ok/to-204" {
      set resp.status = 204
    }
    if $path == "/not-modified/to-200" {
      set resp.status = 200
    }
  }
}
"#;

/// A module's status over a body it does not match: a 204 `respond`ed with a body,
/// a 200 made a 304 or a 204, a 304 (whose length has no body behind it) made a 200.
/// Each goes with the body its status has and a length no larger than it, as over
/// HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modules_status_gets_the_framing_it_has_over_h2() {
    static REPLIES: &[(&str, &[u8])] = &[
        ("ok", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
        (
            "not-modified",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n",
        ),
    ];
    let up = raw_upstream(REPLIES).await;
    let (_site, run) = site_to("h2-statuses", up, Some(STATUSES));
    let mut h2 = h2_connection(run.addr).await;

    // (path, status, content-length fields)
    let cases: [(&str, u16, &[&str]); 4] = [
        ("/respond-204", 204, &[]),
        ("/ok/to-204", 204, &[]),
        // As over HTTP/1.1, a 304 keeps the length its 200 had.
        ("/ok/to-304", 304, &["5"]),
        ("/not-modified/to-200", 200, &[]),
    ];
    for (path, status, want) in cases {
        let resp = exchange(&mut h2, "GET", path).await;
        assert_eq!(resp.status, status, "{path}: {}", resp.text());
        assert_eq!(lengths(&resp), want, "{path}: {:?}", resp.headers);
        assert!(resp.body.is_empty(), "{path}: {:?}", resp.text());
    }
    let resp = exchange(&mut h2, "GET", "/ok/plain").await;
    assert_eq!(lengths(&resp), ["5"]);
    assert_eq!(resp.text(), "hello");
}
