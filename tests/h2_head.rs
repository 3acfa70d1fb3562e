//! HEAD over HTTP/2 (h2c by prior knowledge) for every kind of answer: a module's
//! `respond`, the proxy's own 404 and 502, `builtin:echo` and a real upstream. Each
//! gets its status and headers (a `Content-Length` as the GET's) and no body, and the
//! connection serves the next request. (HTTP/2 over TLS: `tests/tls.rs`.)

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use http::{Request, Version};
use http_body_util::Full;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

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
