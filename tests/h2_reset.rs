//! HTTP/2 rapid reset (CVE-2023-44487): one connection opens and cancels thousands of
//! streams as fast as it can. The proxy must cut that connection off (GOAWAY) while
//! other clients keep being served. Slower variants (resets once streams reach the
//! upstream) are cut gracefully, letting requests in flight finish; a client that
//! cancels requests it waited for is not cut at all.
//!
//! The abusive client writes raw frames: the `h2` crate's client drops a stream whose
//! HEADERS are still queued when it is reset, so it never puts this attack on the wire.

mod common;

use std::time::Duration;

use common::h2raw::*;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Streams the abusive client opens and cancels.
const STREAMS: u32 = 5_000;
/// HEADERS + RST_STREAM pairs per write.
const BATCH: u32 = 100;

const END_STREAM_AND_HEADERS: u8 = 0x1 | 0x4;

/// `GET http://test.local/` in HPACK: static-table indexes for :method GET, :scheme
/// http and :path /, and :authority as a literal without indexing.
fn request_block() -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x84, 0x01, TEST_HOST.len() as u8];
    block.extend_from_slice(TEST_HOST.as_bytes());
    block
}

/// The next frame: its type, stream id and payload (`None` once the connection ends).
async fn read_frame(rd: &mut OwnedReadHalf) -> Option<(u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    rd.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    rd.read_exact(&mut payload).await.ok()?;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    Some((head[3], stream, payload))
}

/// How the abusive connection ended.
#[derive(Debug)]
struct Outcome {
    /// Streams written before the server stopped taking them.
    opened: u32,
    /// The GOAWAY error code, if one arrived.
    goaway: Option<u32>,
}

/// Writes HEADERS + RST_STREAM for `STREAMS` streams, then reads until GOAWAY or close.
async fn rapid_reset(addr: std::net::SocketAddr) -> Outcome {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = tcp.into_split();
    let reader = tokio::spawn(async move {
        while let Some((kind, _, payload)) = read_frame(&mut rd).await {
            if kind == GOAWAY && payload.len() >= 8 {
                return Some(u32::from_be_bytes([
                    payload[4], payload[5], payload[6], payload[7],
                ]));
            }
        }
        None
    });
    let mut hello = PREFACE.to_vec();
    frame(&mut hello, SETTINGS, 0, 0, &[]);
    let mut opened = 0;
    if wr.write_all(&hello).await.is_ok() {
        let block = request_block();
        'writing: for batch in 0..STREAMS / BATCH {
            let mut out = Vec::new();
            for i in 0..BATCH {
                let stream = 2 * (batch * BATCH + i) + 1;
                frame(&mut out, HEADERS, END_STREAM_AND_HEADERS, stream, &block);
                frame(&mut out, RST_STREAM, 0, stream, &CANCEL.to_be_bytes());
            }
            if wr.write_all(&out).await.is_err() {
                break 'writing;
            }
            opened += BATCH;
        }
    }
    let goaway = timeout(Duration::from_secs(10), reader)
        .await
        .expect("the abusive connection was neither told to go away nor closed")
        .expect("reader task");
    Outcome { opened, goaway }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_cut_off_while_others_are_served() {
    let up = Upstream::start("a", Behavior::echo()).await;
    // One worker: the abuse and the honest client share it.
    let px = proxy_with("workers = 1", &app(&[&up], ""));
    let addr = px.addr;

    let abuse = tokio::spawn(rapid_reset(addr));
    // Meanwhile an honest client, over both HTTP/1.1 and HTTP/2.
    let mut rounds = 0;
    while !abuse.is_finished() || rounds < 10 {
        assert_eq!(get(addr, "/honest").await.status, 200);
        let h2 = send_h2(addr, empty(req("GET", "/honest-h2"))).await;
        assert_eq!(h2.status, 200);
        rounds += 1;
        assert!(rounds < 2_000, "the abusive connection is never cut off");
    }
    let outcome = abuse.await.expect("abuse task");
    println!(
        "{} streams written before the cut-off, GOAWAY {:?}; the upstream saw {} requests; {rounds} honest rounds",
        outcome.opened,
        outcome.goaway,
        up.requests()
    );
    assert_eq!(
        outcome.goaway,
        Some(ENHANCE_YOUR_CALM),
        "the abusive connection is told to go away: {outcome:?}"
    );
    // Few of the reset streams ever cost an upstream request.
    assert!(
        up.requests() < 2 * rounds + 200,
        "{} upstream requests",
        up.requests()
    );
    // And afterwards, still served.
    assert_eq!(get(addr, "/after").await.status, 200);
    assert_eq!(
        send_h2(addr, empty(req("GET", "/after-h2"))).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_reset_once_they_reach_the_upstream_get_the_connection_closed() {
    // Resetting each stream ~100 ms after opening it slips past the rapid-reset
    // counter (hyper has accepted it by then): 20,000 upstream requests from one
    // connection that never read an answer.
    let mut slow = Behavior::echo();
    slow.delay = Some(Duration::from_secs(2));
    let up = Upstream::start("a", slow).await;
    let px = proxy_with("workers = 1", &app(&[&up], ""));
    let tcp = TcpStream::connect(px.addr).await.expect("connect");
    let (mut rd, mut wr) = tcp.into_split();
    let reader = tokio::spawn(async move {
        while let Some((kind, _, _)) = read_frame(&mut rd).await {
            if kind == GOAWAY {
                return true;
            }
        }
        false
    });
    let mut hello = PREFACE.to_vec();
    frame(&mut hello, SETTINGS, 0, 0, &[]);
    wr.write_all(&hello).await.expect("preface");
    let block = request_block();
    let mut next = 1u32;
    for _ in 0..30 {
        if reader.is_finished() {
            break;
        }
        let ids: Vec<u32> = (0..100).map(|i| next + 2 * i).collect();
        next += 200;
        let mut out = Vec::new();
        for &id in &ids {
            frame(&mut out, HEADERS, END_STREAM_AND_HEADERS, id, &block);
        }
        if wr.write_all(&out).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut out = Vec::new();
        for &id in &ids {
            frame(&mut out, RST_STREAM, 0, id, &CANCEL.to_be_bytes());
        }
        if wr.write_all(&out).await.is_err() {
            break;
        }
    }
    let told = timeout(Duration::from_secs(5), reader)
        .await
        .expect("the connection was neither told to go away nor closed")
        .expect("reader task");
    assert!(told, "a GOAWAY ends the abusive connection");
    assert!(
        up.requests() < 600,
        "{} upstream requests from one abusive connection",
        up.requests()
    );
    assert_eq!(
        send_h2(px.addr, empty(req("GET", "/after-h2")))
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_answering_499_does_not_make_its_client_an_abuser() {
    // Abandoned requests were told by their status (499), so an upstream's own 499s
    // counted as the client's resets and closed an honest connection.
    let up = Upstream::start("a", Behavior::status(499)).await;
    let px = proxy_with("workers = 1", &app(&[&up], ""));
    let tcp = TcpStream::connect(px.addr).await.expect("connect");
    let (mut rd, mut wr) = tcp.into_split();
    let mut hello = PREFACE.to_vec();
    frame(&mut hello, SETTINGS, 0, 0, &[]);
    wr.write_all(&hello).await.expect("preface");
    let block = request_block();
    let reader = tokio::spawn(async move {
        let mut answered = 0;
        while let Some((kind, _, _)) = read_frame(&mut rd).await {
            match kind {
                GOAWAY => return (answered, true),
                HEADERS => {
                    answered += 1;
                    if answered == 150 {
                        return (answered, false);
                    }
                }
                _ => {}
            }
        }
        (answered, false)
    });
    for batch in 0..3u32 {
        let mut out = Vec::new();
        for i in 0..50 {
            frame(
                &mut out,
                HEADERS,
                END_STREAM_AND_HEADERS,
                2 * (batch * 50 + i) + 1,
                &block,
            );
        }
        wr.write_all(&out).await.expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (answered, goaway) = timeout(Duration::from_secs(10), reader)
        .await
        .expect("answers in time")
        .expect("reader task");
    assert!(!goaway, "GOAWAY after {answered} answers");
    assert_eq!(answered, 150);
}

const PING: u8 = 0x6;

/// Reads frames until one of `kind` on `stream` arrives (true) or the connection ends
/// (false).
async fn wait_for_frame(rd: &mut OwnedReadHalf, kind: u8, stream: u32) -> bool {
    while let Some((k, id, _)) = read_frame(rd).await {
        if k == kind && id == stream {
            return true;
        }
    }
    false
}

/// An HTTP/2 connection between requests is idle, whatever control frames arrive: a
/// client that PINGs it (gRPC keep-alive, browsers) is not cut off at the header
/// timeout, and its next request is served on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_between_requests_do_not_start_the_header_clock() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let px = proxy_with(
        "workers = 1\n[server.timeouts]\nheader = \"300ms\"\nidle = \"30s\"",
        &app(&[&up], ""),
    );
    let tcp = TcpStream::connect(px.addr).await.expect("connect");
    let (mut rd, mut wr) = tcp.into_split();
    let mut hello = PREFACE.to_vec();
    frame(&mut hello, SETTINGS, 0, 0, &[]);
    frame(
        &mut hello,
        HEADERS,
        END_STREAM_AND_HEADERS,
        1,
        &request_block(),
    );
    wr.write_all(&hello).await.expect("write");
    let answered = timeout(Duration::from_secs(10), wait_for_frame(&mut rd, HEADERS, 1)).await;
    assert_eq!(answered.ok(), Some(true), "the first request is answered");
    // A second of PINGs, well past the 300 ms header timeout.
    for i in 0..10u64 {
        let mut ping = Vec::new();
        frame(&mut ping, PING, 0, 0, &i.to_be_bytes());
        wr.write_all(&ping)
            .await
            .expect("the connection is still open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut next = Vec::new();
    frame(
        &mut next,
        HEADERS,
        END_STREAM_AND_HEADERS,
        3,
        &request_block(),
    );
    let written = wr.write_all(&next).await;
    let answered = timeout(Duration::from_secs(10), wait_for_frame(&mut rd, HEADERS, 3)).await;
    assert!(
        written.is_ok() && answered.ok() == Some(true),
        "the second request is answered on the same connection"
    );
}

type H2Sender = hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>;

/// An HTTP/2 connection (prior knowledge) with hyper's client, whose connection task
/// runs in the background.
async fn h2_connect(addr: std::net::SocketAddr) -> H2Sender {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

/// `GET path` on an open HTTP/2 connection, read whole.
async fn h2_get(mut sender: H2Sender, path: String) -> Result<Resp, String> {
    let resp = sender
        .send_request(empty(req("GET", &path)))
        .await
        .map_err(|e| format!("send: {e}"))?;
    read_resp(resp).await
}

/// `n` requests to `/slow/...` on `sender`, each given up (RST_STREAM CANCEL) after
/// `patience` without an answer.
async fn cancel_many(sender: &H2Sender, n: usize, patience: Duration) {
    let mut cancels = Vec::new();
    for i in 0..n {
        let s = sender.clone();
        cancels.push(tokio::spawn(async move {
            let answered = timeout(patience, h2_get(s, format!("/slow/cancelled-{i}"))).await;
            assert!(
                answered.is_err(),
                "request {i} was not meant to be answered"
            );
        }));
    }
    for c in cancels {
        c.await.expect("cancelling task");
    }
}

/// A browser leaving slow pages, or a gRPC client whose deadlines expire, cancels
/// requests it waited for: that costs it as much as the proxy, is no rapid reset, and
/// must not cost it its connection (it was closed once 100 resets were over half the
/// connection's requests, however long each had run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_requests_after_waiting_for_them_keeps_the_connection() {
    let up = Upstream::start("a", Behavior::slow_on("/slow", 5_000)).await;
    let px = proxy_with("workers = 1", &app(&[&up], ""));
    let sender = h2_connect(px.addr).await;
    cancel_many(&sender, 150, Duration::from_millis(1_200)).await;
    // Time for a GOAWAY, if one were coming, to arrive before the next request.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = timeout(CLIENT_TIMEOUT, h2_get(sender, "/after".into()))
        .await
        .expect("an answer in time");
    assert_eq!(
        after.map(|r| r.status),
        Ok(http::StatusCode::OK),
        "the connection still serves requests after 150 cancels"
    );
}

/// When the premature-reset check does close a connection, it does so gracefully:
/// requests already running on it finish and are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_finish_when_premature_resets_close_the_connection() {
    let up = Upstream::start("a", Behavior::slow_on("/slow", 3_000)).await;
    let px = proxy_with("workers = 1", &app(&[&up], ""));
    let sender = h2_connect(px.addr).await;
    let in_flight: Vec<_> = (0..4)
        .map(|i| tokio::spawn(h2_get(sender.clone(), format!("/slow/kept-{i}"))))
        .collect();
    // Let them reach the upstream before the resets start.
    assert!(wait_until(Duration::from_secs(5), || up.inflight() == 4).await);
    cancel_many(&sender, 150, Duration::from_millis(100)).await;
    for (i, answer) in in_flight.into_iter().enumerate() {
        let answer = timeout(CLIENT_TIMEOUT, answer)
            .await
            .expect("an answer in time")
            .expect("task");
        assert_eq!(
            answer.map(|r| r.status),
            Ok(http::StatusCode::OK),
            "in-flight request {i}"
        );
    }
    // The check did fire: the connection takes no new request.
    let after = timeout(CLIENT_TIMEOUT, h2_get(sender, "/after".into()))
        .await
        .expect("an answer or an error in time");
    assert!(after.is_err(), "the connection was closed: {after:?}");
}

/// A client that never answers the `PING` of hyper's two-step `GOAWAY` must not hold
/// shutdown for the whole drain: with nothing in flight, its connection is closed
/// after a short grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2_client_that_never_acks_the_ping_does_not_hold_shutdown() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let px = proxy_with("timeouts = { shutdown_drain = \"60s\" }", &app(&[&up], ""));
    let tcp = TcpStream::connect(px.addr).await.expect("connect");
    let (mut rd, mut wr) = tcp.into_split();
    let mut hello = PREFACE.to_vec();
    frame(&mut hello, SETTINGS, 0, 0, &[]);
    wr.write_all(&hello).await.expect("preface");
    // The server's SETTINGS: the connection is served by hyper now.
    let first = timeout(CLIENT_TIMEOUT, read_frame(&mut rd)).await;
    assert!(
        matches!(first, Ok(Some((SETTINGS, 0, _)))),
        "the server's SETTINGS: {first:?}"
    );
    // Read (never answer) everything the server sends from now on.
    let reader = tokio::spawn(async move { while read_frame(&mut rd).await.is_some() {} });
    let stopped = timeout(Duration::from_secs(15), px.shutdown()).await;
    assert!(
        stopped.is_ok(),
        "shutdown waited for the silent client (shutdown_drain is 60s)"
    );
    // The proxy closed the connection.
    assert!(timeout(CLIENT_TIMEOUT, reader).await.is_ok());
    drop(wr);
}
