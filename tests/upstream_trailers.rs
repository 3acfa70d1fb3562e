//! Trailer sections from HTTP/1.1 upstreams (raw bytes), relayed to HTTP/1.1 and h2c
//! clients: many fields pass (bounded by bytes, as heads are), fields no trailer may
//! carry are dropped on the way, and a section that does not parse costs the response
//! its trailers only — never its body — with a WARN naming the upstream and server.

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A server answering every request (heads only, no bodies) with `reply`.
async fn raw_upstream(reply: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let reply = Bytes::from(reply);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.clear();
                    if stream.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// `hello world` in two chunks, then `trailers` (lines with their CRLF) and the
/// blank line.
fn chunked_reply(trailers: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\n6\r\n world\r\n0\r\n{trailers}\r\n"
    )
    .into_bytes()
}

/// A response read whole: status, body and trailers.
type Whole = (u16, Bytes, Option<HeaderMap>);

/// `GET path` over HTTP/1.1 (`TE: trailers`) or h2c, read whole.
async fn fetch(addr: SocketAddr, path: &str, h2: bool) -> Result<Whole, String> {
    let exchange = async move {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let io = TokioIo::new(stream);
        let resp = if h2 {
            let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .handshake(io)
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(conn);
            let req = Request::get(format!("http://{TEST_HOST}{path}"))
                .header("te", "trailers")
                .body(Full::new(Bytes::new()))
                .map_err(|e| e.to_string())?;
            sender.send_request(req).await
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("h1 handshake: {e}"))?;
            tokio::spawn(conn);
            let req = Request::get(path)
                .header("host", TEST_HOST)
                .header("te", "trailers")
                .body(Full::new(Bytes::new()))
                .map_err(|e| e.to_string())?;
            sender.send_request(req).await
        }
        .map_err(|e| format!("send: {e}"))?;
        let status = resp.status().as_u16();
        let collected = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("the body failed: {e}"))?;
        let trailers = collected.trailers().cloned();
        Ok((status, collected.to_bytes(), trailers))
    };
    tokio::time::timeout(CLIENT_TIMEOUT, exchange)
        .await
        .map_err(|_| "no answer in time".to_string())?
}

fn proxy_to(addr: SocketAddr) -> Proxy {
    log::capture();
    proxy(&format!(
        "[upstreams.app]\nservers = [\"{addr}\"]\n\n[[routes]]\nupstream = \"app\"\n"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_trailer_fields_and_grpc_status_pass_to_both_protocols() {
    let mut trailers = String::new();
    for i in 0..40 {
        trailers.push_str(&format!("x-t{i}: {i}\r\n"));
    }
    trailers.push_str("grpc-status: 0\r\n");
    let px = proxy_to(raw_upstream(chunked_reply(&trailers)).await);
    for h2 in [false, true] {
        let (status, body, trailers) = fetch(px.addr, "/many", h2)
            .await
            .unwrap_or_else(|e| panic!("h2 {h2}: {e}"));
        assert_eq!(status, 200);
        assert_eq!(body, "hello world", "h2 {h2}");
        let trailers = trailers.unwrap_or_else(|| panic!("h2 {h2}: no trailers"));
        assert_eq!(trailers.len(), 41, "h2 {h2}: {trailers:?}");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["x-t39"], "39");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_no_trailer_may_carry_are_dropped_and_the_rest_kept() {
    let px = proxy_to(
        raw_upstream(chunked_reply(
            "Connection: close\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\
             Keep-Alive: timeout=5\r\nHost: evil.example\r\ngrpc-status: 0\r\n",
        ))
        .await,
    );
    for h2 in [false, true] {
        let (status, body, trailers) = fetch(px.addr, "/forbidden", h2)
            .await
            .unwrap_or_else(|e| panic!("h2 {h2}: {e}"));
        assert_eq!(status, 200);
        assert_eq!(body, "hello world", "h2 {h2}");
        let trailers = trailers.unwrap_or_else(|| panic!("h2 {h2}: no trailers"));
        assert_eq!(trailers.len(), 1, "h2 {h2}: {trailers:?}");
        assert_eq!(trailers["grpc-status"], "0");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trailer_section_that_does_not_parse_costs_only_the_trailers() {
    let upstream = raw_upstream(chunked_reply(":status: 500\r\ngrpc-status: 0\r\n")).await;
    let px = proxy_to(upstream);
    for h2 in [false, true] {
        let (status, body, trailers) = fetch(px.addr, "/pseudo", h2)
            .await
            .unwrap_or_else(|e| panic!("h2 {h2}: {e}"));
        assert_eq!(status, 200);
        assert_eq!(body, "hello world", "h2 {h2}: the body is whole");
        assert!(
            trailers.is_none_or(|t| t.is_empty()),
            "h2 {h2}: trailers dropped"
        );
    }
    let warned: Vec<String> = log::lines_with("invalid trailer section")
        .into_iter()
        .filter(|l| l.contains(" WARN ") && l.contains(&upstream.to_string()))
        .collect();
    assert_eq!(warned.len(), 2, "one WARN per response: {warned:?}");
    assert!(warned[0].contains("upstream=app"), "{}", warned[0]);
    // The proxy still serves that server: the connection was not trusted again,
    // nothing else.
    let (status, body, _) = fetch(px.addr, "/again", false).await.expect("again");
    assert_eq!((status, &body[..]), (200, &b"hello world"[..]));
}
