//! HTTP/2 streams the client stops reading: a stream whose flow-control window stays
//! shut is reset after `server.timeouts.idle` with no progress (the HTTP/1.1 send
//! timeout's rule), and its upstream connection is closed rather than pinned, while
//! the client's other streams on the same connection go on.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Larger than what the proxy, hyper and the sockets buffer between the upstream and
/// a client that reads nothing.
const BIG: usize = 4 << 20;

/// An HTTP/2 connection whose streams open with a window of 16 KB: hyper's client
/// widens a stream's window only as its body is read.
async fn h2_small_windows(addr: std::net::SocketAddr) -> SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(16 * 1024)
        .initial_connection_window_size(16 << 20)
        .handshake(TokioIo::new(tcp))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

/// `GET path` on `sender`, body read whole: its length.
async fn read_all(sender: &mut SendRequest<Full<Bytes>>, path: &str) -> Result<usize, String> {
    let exchange = async {
        let resp = sender
            .send_request(empty(req("GET", path)))
            .await
            .map_err(|e| format!("send: {e}"))?;
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?;
        Ok(body.to_bytes().len())
    };
    timeout(CLIENT_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err("no whole answer in time".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_left_unread_is_reset_after_the_idle_timeout() {
    let up = Upstream::start("a", Behavior::fixed_body(payload(BIG), false)).await;
    let px = proxy_with(
        "workers = 1\n[server.timeouts]\nidle = \"1s\"",
        &app(&[&up], ""),
    );
    let mut sender = h2_small_windows(px.addr).await;

    // A response whose body the client never reads: its window stays shut after 16 KB.
    let stalled = timeout(
        CLIENT_TIMEOUT,
        sender.send_request(empty(req("GET", "/stalled"))),
    )
    .await
    .expect("a response head in time")
    .expect("a response head");
    assert_eq!(stalled.status(), 200);

    // Meanwhile another stream on the same connection is served in full.
    assert_eq!(read_all(&mut sender, "/meanwhile").await, Ok(BIG));

    // The stalled stream's upstream connection is let go (not kept for the stream, not
    // returned to the pool) a little after the 1 s idle timeout.
    assert!(
        wait_until(Duration::from_secs(5), || up.closed() > 0).await,
        "the upstream connection of a stream left unread for 5 s is still open"
    );
    // And the stream was reset: its body ends in an error, not in the whole answer.
    let rest = timeout(CLIENT_TIMEOUT, stalled.into_body().collect())
        .await
        .expect("the stalled body ends in time");
    assert!(
        rest.is_err(),
        "the stalled stream was not reset: {:?} bytes",
        rest.map(|b| b.to_bytes().len())
    );

    // The connection itself goes on.
    assert_eq!(read_all(&mut sender, "/after").await, Ok(BIG));
}

/// A client that reads slowly but steadily makes progress: its stream is never cut,
/// however long the whole body takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_reader_keeps_its_stream() {
    const LEN: usize = 256 * 1024;
    let up = Upstream::start("a", Behavior::fixed_body(payload(LEN), false)).await;
    let px = proxy_with(
        "workers = 1\n[server.timeouts]\nidle = \"1s\"",
        &app(&[&up], ""),
    );
    let mut sender = h2_small_windows(px.addr).await;
    let resp = timeout(
        CLIENT_TIMEOUT,
        sender.send_request(empty(req("GET", "/slowly"))),
    )
    .await
    .expect("a response head in time")
    .expect("a response head");
    let mut body = resp.into_body();
    let (mut read, mut frames) = (0, 0);
    // At most 16 KB a frame: 16 frames or more, 150 ms apart, well past the 1 s timeout.
    while let Some(frame) = timeout(CLIENT_TIMEOUT, body.frame())
        .await
        .expect("the next frame in time")
    {
        let frame = frame.expect("the body goes on");
        if let Some(data) = frame.data_ref() {
            read += data.len();
            frames += 1;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(read, LEN, "the whole body, in {frames} frames");
    assert!(frames >= 16);
}
