//! Upstream TLS and HTTP/2 (issue #7): `tls = true` with a custom CA (`tls_ca`), a CA
//! or `sni` that does not match (502, the reason in the log), TLS connections pooled,
//! `http2 = true` to an h2c upstream, ALPN `h2` over TLS, gRPC-style trailers
//! passing from an HTTP/2 upstream to an HTTP/2 client, and the same timeouts for an
//! HTTP/2 upstream as for an HTTP/1.1 one (a response body that stalls is cut; a
//! stalled upload is the client's 408, an upload the server stops reading its 504).
//!
//! The upstreams are tiny hyper servers in the test (behind tokio-rustls for TLS), with
//! certificates made here by rcgen.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, Version};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::PrivateKeyDer;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use common::pki::*;
use common::*;

// ---- test upstreams -----------------------------------------------------------------

/// What a test upstream saw.
#[derive(Default)]
struct Seen {
    accepts: AtomicUsize,
    requests: AtomicUsize,
    /// (HTTP version, URI authority or Host, path) of each request.
    log: Mutex<Vec<(Version, String, String)>>,
    /// The `te` header and body of each request.
    te_and_body: Mutex<Vec<(Option<String>, Bytes)>>,
    /// The SNI of each TLS connection (`None`: none sent).
    sni: Mutex<Vec<Option<String>>>,
}

impl Seen {
    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn last(&self) -> Option<(Version, String, String)> {
        self.log.lock().ok().and_then(|l| l.last().cloned())
    }
}

/// A response body of one data frame and then trailers (or, `stall`, nothing more
/// ever).
struct WithTrailers {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
    stall: bool,
}

impl http_body::Body for WithTrailers {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(data) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if this.stall {
            return Poll::Pending;
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

/// Answers `hello from <version>` and, for `/grpc`, the trailer `grpc-status: 0`;
/// `/stall`: that much of the body and then nothing; `/ignore`: reads none of the
/// request body and never answers.
async fn answer(
    req: Request<Incoming>,
    seen: Arc<Seen>,
) -> Result<Response<WithTrailers>, Infallible> {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    let host = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        })
        .unwrap_or_default();
    let (version, path) = (req.version(), req.uri().path().to_owned());
    if let Ok(mut log) = seen.log.lock() {
        log.push((version, host, path.clone()));
    }
    if path == "/ignore" {
        let _unread = req;
        return std::future::pending().await;
    }
    let te = req
        .headers()
        .get(http::header::TE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    if let Ok(mut list) = seen.te_and_body.lock() {
        list.push((te, body));
    }
    let trailers = (path == "/grpc").then(|| {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        t
    });
    let body = WithTrailers {
        data: Some(Bytes::from(format!("hello from {version:?}"))),
        trailers,
        stall: path == "/stall",
    };
    let mut resp = Response::new(body);
    if path == "/grpc" {
        resp.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
    }
    if path == "/big-header" {
        // 40 KiB of response headers: above h2's 16 KiB default list size.
        let value = HeaderValue::from_str(&"v".repeat(10 * 1024)).expect("value");
        for i in 0..4 {
            resp.headers_mut().insert(
                format!("x-big-{i}")
                    .parse::<http::HeaderName>()
                    .expect("name"),
                value.clone(),
            );
        }
    }
    Ok(resp)
}

/// Serves HTTP/1.1 and HTTP/2 (prior knowledge or ALPN) on `io`.
async fn serve<T>(io: T, seen: Arc<Seen>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| answer(req, Arc::clone(&seen)));
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// A TLS upstream on 127.0.0.1 with `pki`'s certificate, offering `alpn`.
async fn tls_upstream(pki: &Pki, alpn: &[&str]) -> (SocketAddr, Arc<Seen>) {
    let mut config =
        rustls::ServerConfig::builder_with_provider(proxycache::upstream::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(pki.chain.clone(), PrivateKeyDer::Pkcs8(pki.key.clone_key()))
            .expect("server certificate");
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let seen = Arc::new(Seen::default());
    let state = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            state.accepts.fetch_add(1, Ordering::SeqCst);
            let (acceptor, state) = (acceptor.clone(), Arc::clone(&state));
            tokio::spawn(async move {
                // A failed handshake (the proxy refused our certificate) just ends.
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().map(str::to_owned);
                if let Ok(mut list) = state.sni.lock() {
                    list.push(sni);
                }
                serve(tls, state).await;
            });
        }
    });
    (addr, seen)
}

/// A plain upstream speaking HTTP/1.1 and h2c.
async fn plain_upstream() -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let seen = Arc::new(Seen::default());
    let state = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            state.accepts.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream, Arc::clone(&state)));
        }
    });
    (addr, seen)
}

/// A proxy with one upstream set `app` (`keys` in its table) and a catch-all route.
fn proxy_to(server: &str, keys: &str) -> Proxy {
    common::log::capture();
    proxy(&format!(
        "[upstreams.app]\nservers = [\"{server}\"]\n{keys}\n\n[[routes]]\nupstream = \"app\"\n"
    ))
}

// ---- the tests ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_upstream_with_a_custom_ca_is_reached_and_an_ip_address_sends_no_sni() {
    let pki = pki(&["127.0.0.1", "localhost"]);
    let (addr, seen) = tls_upstream(&pki, &["http/1.1"]).await;
    let ca = write_pem("ca", &pki.ca_pem);
    let px = proxy_to(
        &addr.to_string(),
        &format!("tls = true\ntls_ca = \"{}\"", toml_path(&ca)),
    );

    let resp = get(px.addr, "/a").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "hello from HTTP/1.1");
    let (version, host, path) = seen.last().expect("the upstream saw the request");
    assert_eq!(
        (version, host.as_str(), path.as_str()),
        (Version::HTTP_11, TEST_HOST, "/a")
    );
    // The server's address is an IP: no SNI, and the certificate's IP SAN is checked.
    assert_eq!(
        seen.sni.lock().map(|s| s.clone()).unwrap_or_default(),
        [None]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_sets_the_name_sent_and_verified() {
    let pki = pki(&["upstream.test"]);
    let (addr, seen) = tls_upstream(&pki, &["http/1.1"]).await;
    let ca = write_pem("ca", &pki.ca_pem);
    let px = proxy_to(
        &addr.to_string(),
        &format!(
            "tls = true\ntls_ca = \"{}\"\nsni = \"upstream.test\"",
            toml_path(&ca)
        ),
    );

    let resp = get(px.addr, "/sni").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let sni = seen.sni.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(sni, [Some("upstream.test".to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_did_not_sign_the_certificate_is_a_502_naming_the_upstream_and_why() {
    let pki = pki(&["127.0.0.1"]);
    let other = self::pki(&["127.0.0.1"]);
    let (addr, seen) = tls_upstream(&pki, &["http/1.1"]).await;
    let wrong_ca = write_pem("wrong-ca", &other.ca_pem);
    let px = proxy_to(
        &addr.to_string(),
        &format!("tls = true\ntls_ca = \"{}\"", toml_path(&wrong_ca)),
    );

    let resp = get(px.addr, "/never").await;
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert!(resp.request_id().is_some());
    assert_eq!(
        seen.requests(),
        0,
        "nothing is sent over an unverified connection"
    );
    let id = resp.request_id().unwrap_or_default();
    let lines = common::log::lines_with(&id);
    assert!(
        lines.iter().any(|l| l.contains("upstream app")
            && l.contains(&addr.to_string())
            && l.contains("certificate verification failed")
            && l.contains("UnknownIssuer")
            && l.contains(&toml_path(&wrong_ca))),
        "the log says which upstream and why: {lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sni_the_certificate_does_not_have_is_a_502() {
    let pki = pki(&["upstream.test"]);
    let (addr, seen) = tls_upstream(&pki, &["http/1.1"]).await;
    let ca = write_pem("ca", &pki.ca_pem);
    let px = proxy_to(
        &addr.to_string(),
        &format!(
            "tls = true\ntls_ca = \"{}\"\nsni = \"other.test\"",
            toml_path(&ca)
        ),
    );

    let resp = get(px.addr, "/never").await;
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert_eq!(seen.requests(), 0);
    let lines = common::log::lines_with(&resp.request_id().unwrap_or_default());
    assert!(
        lines.iter().any(|l| l.contains("upstream app")
            && l.contains("other.test")
            && l.contains("not valid for name")),
        "the log names the server name that failed: {lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_http_server_behind_tls_true_is_a_502_not_a_plaintext_request() {
    let (addr, seen) = plain_upstream().await;
    let ca = write_pem("ca", &pki(&["127.0.0.1"]).ca_pem);
    let px = proxy_to(
        &addr.to_string(),
        &format!("tls = true\ntls_ca = \"{}\"", toml_path(&ca)),
    );
    let resp = get(px.addr, "/plain").await;
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert_eq!(seen.requests(), 0, "nothing went out as plaintext");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_are_pooled_across_client_connections() {
    let pki = pki(&["127.0.0.1"]);
    let (addr, seen) = tls_upstream(&pki, &["http/1.1"]).await;
    let ca = write_pem("ca", &pki.ca_pem);
    let px = proxy_to(
        &addr.to_string(),
        &format!("tls = true\ntls_ca = \"{}\"", toml_path(&ca)),
    );

    for i in 0..20 {
        // `get` opens a new client connection every time.
        let resp = get(px.addr, &format!("/n/{i}")).await;
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
    }
    assert_eq!(seen.requests(), 20);
    // Two workers, each with its own pool.
    assert!(
        seen.accepts() <= 2,
        "20 requests opened {} TLS connections",
        seen.accepts()
    );
    let (opened, reused) = px.pool_totals();
    assert!(
        opened <= 2 && reused >= 18,
        "opened {opened}, reused {reused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_true_speaks_h2c_to_a_plain_upstream_over_one_connection_per_worker() {
    let (addr, seen) = plain_upstream().await;
    let px = proxy_to(&addr.to_string(), "http2 = true");

    for i in 0..6 {
        let resp = get(px.addr, &format!("/h2/{i}")).await;
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
        assert_eq!(
            resp.version,
            Version::HTTP_11,
            "the client still gets HTTP/1.1"
        );
        assert_eq!(resp.text(), "hello from HTTP/2.0");
    }
    let (version, authority, path) = seen.last().expect("the upstream saw requests");
    assert_eq!(version, Version::HTTP_2);
    assert_eq!(authority, TEST_HOST, "Host became :authority");
    assert_eq!(path, "/h2/5");
    assert!(seen.accepts() <= 2, "{} h2 connections", seen.accepts());

    // A body with Content-Length from an HTTP/1.1 client goes out as h2 DATA.
    let post = req("POST", "/h2/post")
        .body(Full::new(Bytes::from_static(b"payload")))
        .expect("request");
    let resp = send(px.addr, post).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let last = seen.te_and_body.lock().ok().and_then(|l| l.last().cloned());
    assert_eq!(last.map(|l| l.1), Some(Bytes::from_static(b"payload")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_upstream_may_send_response_headers_as_large_as_an_http1_upstream() {
    // An HTTP/1.1 upstream may send up to 128 KiB of response head; over h2 the
    // client kept h2's 16 KiB default and reset the stream (a 502).
    let (addr, _seen) = plain_upstream().await;
    let px = proxy_to(&addr.to_string(), "http2 = true");
    let resp = get(px.addr, "/big-header").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    for i in 0..4 {
        let got = resp.headers.get(format!("x-big-{i}")).map(|v| v.len());
        assert_eq!(got, Some(10 * 1024), "x-big-{i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_to_a_tls_http2_set_offers_only_http1_in_alpn() {
    // The upgrade connection offered h2 too; a server preferring h2 picked it and the
    // upgrade failed (502).
    let pki = pki(&["127.0.0.1"]);
    let (addr, seen) = tls_upstream(&pki, &["h2", "http/1.1"]).await;
    let ca = write_pem("ca-upgrade", &pki.ca_pem);
    let px = proxy_to(
        &addr.to_string(),
        &format!("tls = true\nhttp2 = true\ntls_ca = \"{}\"", toml_path(&ca)),
    );
    let upgrade = req("GET", "/ws")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = send(px.addr, upgrade).await;
    // The test server does not upgrade: it answers an ordinary HTTP/1.1 200.
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "hello from HTTP/1.1");
    let (version, _, path) = seen.last().expect("the upstream saw the request");
    assert_eq!((version, path.as_str()), (Version::HTTP_11, "/ws"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_an_h2_only_tls_server_refuses_is_a_501_that_spares_the_breaker() {
    // The server takes only `h2` in ALPN: the upgrade's `http/1.1` offer is turned
    // down. A mismatch of configuration, not a failure of the server's.
    let pki = pki(&["127.0.0.1"]);
    let (addr, seen) = tls_upstream(&pki, &["h2"]).await;
    let ca = write_pem("ca-upgrade-h2", &pki.ca_pem);
    let px = proxy_to(
        &addr.to_string(),
        &format!(
            "tls = true\nhttp2 = true\ntls_ca = \"{}\"\n\
             circuit_breaker = {{ failures = 1, open_for = \"60s\" }}",
            toml_path(&ca)
        ),
    );
    for _ in 0..3 {
        let upgrade = req("GET", "/ws")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = send(px.addr, upgrade).await;
        assert_eq!(resp.status, 501, "{}", resp.text());
    }
    let resp = get(px.addr, "/grpc-ish").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let (version, _, path) = seen.last().expect("the upstream saw the request");
    assert_eq!((version, path.as_str()), (Version::HTTP_2, "/grpc-ish"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_true_over_tls_negotiates_h2_by_alpn_and_falls_back_to_http1() {
    let pki = pki(&["127.0.0.1"]);
    let ca = write_pem("ca", &pki.ca_pem);
    let keys = format!("tls = true\nhttp2 = true\ntls_ca = \"{}\"", toml_path(&ca));

    let (h2_addr, h2_seen) = tls_upstream(&pki, &["h2", "http/1.1"]).await;
    let px = proxy_to(&h2_addr.to_string(), &keys);
    let resp = get(px.addr, "/alpn").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(h2_seen.last().map(|l| l.0), Some(Version::HTTP_2));

    let (h1_addr, h1_seen) = tls_upstream(&pki, &["http/1.1"]).await;
    let px = proxy_to(&h1_addr.to_string(), &keys);
    let resp = get(px.addr, "/alpn").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(h1_seen.last().map(|l| l.0), Some(Version::HTTP_11));
}

/// Sends `req` over h2c and returns the status, body and trailers.
async fn h2_with_trailers(
    addr: SocketAddr,
    req: Request<Full<Bytes>>,
) -> (u16, Bytes, Option<HeaderMap>) {
    let exchange = async move {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        let resp = sender.send_request(req).await.expect("h2 send");
        let status = resp.status().as_u16();
        let collected = resp.into_body().collect().await.expect("h2 body");
        let trailers = collected.trailers().cloned();
        (status, collected.to_bytes(), trailers)
    };
    tokio::time::timeout(CLIENT_TIMEOUT, exchange)
        .await
        .expect("an h2 answer in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_style_trailers_pass_from_an_h2_upstream_to_an_h2_client() {
    let (addr, seen) = plain_upstream().await;
    let px = proxy_to(&addr.to_string(), "http2 = true");

    let req = Request::post(format!("http://{TEST_HOST}/grpc"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .expect("request");
    let (status, body, trailers) = h2_with_trailers(px.addr, req).await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"hello from HTTP/2.0");
    let trailers = trailers.expect("the client got trailers");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    assert_eq!(seen.last().map(|l| l.0), Some(Version::HTTP_2));
    // gRPC servers want `te: trailers`; it is hop-by-hop, yet forwarded to HTTP/2.
    let last = seen.te_and_body.lock().ok().and_then(|l| l.last().cloned());
    assert_eq!(last.and_then(|l| l.0).as_deref(), Some("trailers"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_ca_that_does_not_load_refuses_the_start_naming_the_key() {
    let missing = std::env::temp_dir().join("proxycache-uptls-no-such-ca.pem");
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n[admin]\nlisten = \"\"\n\n\
         [upstreams.app]\nservers = [\"127.0.0.1:1\"]\ntls = true\ntls_ca = \"{}\"\n\n\
         [[routes]]\nupstream = \"app\"\n",
        toml_path(&missing)
    );
    let err = match proxycache::start(config(&toml)) {
        Ok(handle) => {
            handle.begin_shutdown();
            panic!("a config whose tls_ca cannot be read started");
        }
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("upstreams.app") && err.contains("tls_ca") && err.contains("cannot read"),
        "{err}"
    );
}

// ---- timeouts with an HTTP/2 upstream ------------------------------------------------

/// One worker (one pool) to an h2c upstream at `addr`, `response_timeout` 500ms and a
/// breaker that opens at the first failure.
fn h2_proxy_with_breaker(addr: SocketAddr) -> Proxy {
    common::log::capture();
    proxy_with(
        "workers = 1",
        &format!(
            "[server.limits]\nmax_body = \"64MiB\"\n\n[upstreams.app]\nservers = [\"{addr}\"]\nhttp2 = true\n\
             response_timeout = \"500ms\"\ncircuit_breaker = {{ failures = 1, open_for = \"60s\" }}\n\n\
             [[routes]]\nupstream = \"app\"\n"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_response_body_that_stalls_ends_after_the_response_timeout() {
    // The head and a first DATA frame, then nothing with the stream left open: the
    // response hung for good (an HTTP/1.1 upstream's is cut after the timeout).
    let (addr, _seen) = plain_upstream().await;
    let px = proxy_to(&addr.to_string(), "http2 = true\nresponse_timeout = \"1s\"");
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(8),
        try_send(px.addr, empty(req("GET", "/stall"))),
    )
    .await;
    let Ok(result) = result else {
        panic!("the response still hangs after 8s (response_timeout is 1s)");
    };
    assert!(
        result.is_err(),
        "a cut body must not look complete: {result:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "ended after {:?}, before the 1s timeout",
        started.elapsed()
    );
    // The proxy and the connection carry on.
    assert_eq!(get(px.addr, "/after").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_its_body_to_an_h2_upstream_gets_408_and_the_server_is_not_blamed() {
    // As with an HTTP/1.1 upstream: the client's slowness is a 408 that does not
    // count against the server (it was a 504, and opened the breaker for everyone).
    let (addr, _seen) = plain_upstream().await;
    let px = h2_proxy_with_breaker(addr);
    let answer = raw_request(
        px.addr,
        b"POST /upload HTTP/1.1\r\nhost: a\r\ncontent-length: 500\r\n\r\nabc",
    )
    .await;
    assert_eq!(raw_status(&answer), 408, "{answer}");
    let next = get(px.addr, "/next").await;
    assert_eq!(next.status, 200, "{}", next.text());
    // A body that keeps coming, slower than the timeout in all but each step, is
    // not cut.
    let mut steady = TcpStream::connect(px.addr).await.expect("connect");
    steady
        .write_all(
            b"POST /steady HTTP/1.1\r\nhost: a\r\ncontent-length: 8\r\nconnection: close\r\n\r\n",
        )
        .await
        .expect("write");
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        steady.write_all(b"ab").await.expect("write");
    }
    let answer = read_raw(&mut steady, Duration::from_secs(5)).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    // (Chunked: the h2 answer gave no length.)
    assert!(
        raw_body(&answer).contains("hello from HTTP/2.0"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_upstream_that_stops_reading_an_upload_gets_504_and_the_blame() {
    // Flow control: the server grants no more window, so the proxy waits on the
    // server, not on the client sending as fast as it can.
    let (addr, _seen) = plain_upstream().await;
    let px = h2_proxy_with_breaker(addr);
    let answer =
        upload_and_read_head(px.addr, "/ignore", 8 * 1024 * 1024, Duration::from_secs(10)).await;
    assert_eq!(raw_status(&answer), 504, "{answer}");
    // Logged as what it was, with the server's address.
    let logged = common::log::lines_with(&addr.to_string());
    assert!(
        logged
            .iter()
            .any(|l| l.contains("read none of the request body")),
        "{logged:#?}"
    );
    let next = get(px.addr, "/next").await;
    assert_eq!(next.status, 503, "{}", next.text());
}
