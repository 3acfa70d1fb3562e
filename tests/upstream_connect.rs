//! Opening upstream connections: a timed-out connect says which step was still
//! going (a server that takes the TCP connection and never answers the TLS
//! ClientHello is not a connect timeout), and an `http2 = true` set shares its
//! HTTP/2 connection even when `pool.max_idle_per_server = 0` keeps no idle ones.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;

use common::pki::*;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_hangs_is_a_504_logged_as_a_tls_handshake_timeout() {
    // Accepts, then never reads or writes: no ServerHello ever comes.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let ca = write_pem("ca", &pki(&["127.0.0.1"]).ca_pem);
    common::log::capture();
    let px = proxy(&format!(
        "[upstreams.app]\nservers = [\"{addr}\"]\ntls = true\ntls_ca = \"{}\"\n\
         connect_timeout = \"300ms\"\n\n[[routes]]\nupstream = \"app\"\n",
        toml_path(&ca)
    ));

    let resp = get(px.addr, "/hang").await;
    assert_eq!(resp.status, 504, "{}", resp.text());
    let id = resp.request_id().unwrap_or_default();
    let lines = common::log::lines_with(&id);
    assert!(
        lines.iter().any(|l| l.contains(&format!(
            "upstream app: TLS handshake with {addr} timed out"
        ))),
        "the log says the TLS handshake timed out: {lines:#?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains(&format!("connect to {addr} timed out"))),
        "the TCP connect did not time out: {lines:#?}"
    );
}

/// A plain HTTP/2 (h2c) upstream answering `200 ok`; returns its address and how many
/// connections it accepted.
async fn h2c_upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let accepts = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepts);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                    ))
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            });
        }
    });
    (addr, accepts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_idle_per_server_0_still_shares_the_http2_connection() {
    let (addr, accepts) = h2c_upstream().await;
    let px = proxy_with(
        "workers = 1",
        &format!(
            "[upstreams.app]\nservers = [\"{addr}\"]\nhttp2 = true\n\
             pool = {{ max_idle_per_server = 0 }}\n\n[[routes]]\nupstream = \"app\"\n"
        ),
    );
    for i in 0..10 {
        let resp = get(px.addr, &format!("/n/{i}")).await;
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
    }
    assert_eq!(
        accepts.load(Ordering::SeqCst),
        1,
        "one worker multiplexes every request over one HTTP/2 connection"
    );
    let (opened, reused) = px.pool_totals();
    assert!(
        opened == 1 && reused >= 9,
        "opened {opened}, reused {reused}"
    );
}
