//! Acceptance 4 and header hygiene: hop-by-hop headers and those named in
//! `Connection` never cross the proxy; `X-Forwarded-For`, `-Proto`, `-Host` and `Via`
//! are added; `Host` is kept; `server.trusted_proxies` decides what incoming forwarding
//! headers are believed.

mod common;

use common::*;

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "x-drop-me",
    "x-drop-too",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_and_connection_named_headers_never_reach_the_upstream() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let px = proxy(&app(&[&up], ""));

    let raw = raw_request(
        px.addr,
        b"GET /hop HTTP/1.1\r\n\
          Host: example.test:1234\r\n\
          Connection: keep-alive, X-Drop-Me, x-drop-too\r\n\
          Keep-Alive: timeout=5, max=100\r\n\
          Proxy-Connection: keep-alive\r\n\
          Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\
          TE: trailers\r\n\
          Trailer: x-checksum\r\n\
          Upgrade: websocket\r\n\
          X-Drop-Me: secret\r\n\
          X-Drop-Too: secret too\r\n\
          X-Keep-Me: kept\r\n\
          \r\n",
    )
    .await;

    assert_eq!(raw_status(&raw), 200, "raw response: {raw:?}");
    let got = up.last().expect("upstream saw the request");
    for name in HOP_BY_HOP {
        assert!(
            got.header(name).is_none(),
            "{name} reached the upstream: {:?}",
            got.headers
        );
    }
    assert_eq!(got.header("x-keep-me").as_deref(), Some("kept"));
    assert_eq!(
        got.header("host").as_deref(),
        Some("example.test:1234"),
        "Host is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_and_via_are_added() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let px = proxy(&app(&[&up], ""));

    let resp = send(
        px.addr,
        empty(http::Request::get("/fwd").header("host", "shop.example.com")),
    )
    .await;

    assert_eq!(resp.status, 200);
    let got = up.last().expect("upstream saw the request");
    assert_eq!(got.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(got.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        got.header("x-forwarded-host").as_deref(),
        Some("shop.example.com")
    );
    assert_eq!(got.header("host").as_deref(), Some("shop.example.com"));
    let via = got.header("via").expect("Via is added");
    assert!(
        via.contains("1.1") && via.contains("proxycache"),
        "via = {via:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incoming_x_forwarded_for_is_appended_to() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let px = proxy(&app(&[&up], ""));

    let resp = send(
        px.addr,
        empty(req("GET", "/").header("x-forwarded-for", "203.0.113.7")),
    )
    .await;

    assert_eq!(resp.status, 200);
    let got = up.last().expect("upstream saw the request");
    assert_eq!(
        got.header("x-forwarded-for").as_deref(),
        Some("203.0.113.7, 127.0.0.1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_from_an_untrusted_peer_are_replaced() {
    let up = Upstream::start("a", Behavior::echo()).await;
    // Only 10.0.0.0/8 is trusted; the test client is 127.0.0.1.
    let px = proxy_with("trusted_proxies = [\"10.0.0.0/8\"]", &app(&[&up], ""));

    let request = req("GET", "/")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "spoofed.example");
    let resp = send(px.addr, empty(request)).await;

    assert_eq!(resp.status, 200);
    let got = up.last().expect("upstream saw the request");
    assert_eq!(got.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(got.header("x-forwarded-host").as_deref(), Some(TEST_HOST));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_from_a_trusted_peer_are_believed() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let px = proxy_with("trusted_proxies = [\"127.0.0.0/8\"]", &app(&[&up], ""));

    let request = req("GET", "/")
        .header("x-forwarded-for", "198.51.100.1")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "public.example");
    let resp = send(px.addr, empty(request)).await;

    assert_eq!(resp.status, 200);
    let got = up.last().expect("upstream saw the request");
    assert_eq!(got.header("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(
        got.header("x-forwarded-host").as_deref(),
        Some("public.example")
    );
    assert_eq!(
        got.header("x-forwarded-for").as_deref(),
        Some("198.51.100.1, 127.0.0.1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_response_headers_never_reach_the_client() {
    let behavior = Behavior::echo()
        .with_header("connection", "x-resp-secret")
        .with_header("x-resp-secret", "1")
        .with_header("keep-alive", "timeout=5")
        .with_header("proxy-authenticate", "Basic")
        .with_header("x-resp-kept", "yes");
    let up = Upstream::start("a", behavior).await;
    let px = proxy(&app(&[&up], ""));

    let resp = get(px.addr, "/").await;

    assert_eq!(resp.status, 200);
    for name in ["x-resp-secret", "keep-alive", "proxy-authenticate"] {
        assert!(
            resp.header(name).is_none(),
            "{name} reached the client: {:?}",
            resp.headers
        );
    }
    assert!(resp
        .header("connection")
        .is_none_or(|v| !v.contains("x-resp-secret")));
    assert_eq!(resp.header("x-resp-kept").as_deref(), Some("yes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_settings_never_reaches_the_upstream() {
    // Hop-by-hop by definition (RFC 7540 3.2.1), also when `Connection` does not name it.
    let up = Upstream::start("a", Behavior::echo()).await;
    let px = proxy(&app(&[&up], ""));
    for head in [
        &b"GET /a HTTP/1.1\r\nHost: test.local\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\
           HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"[..],
        &b"GET /b HTTP/1.1\r\nHost: test.local\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"[..],
    ] {
        let raw = raw_request(px.addr, head).await;
        assert_eq!(raw_status(&raw), 200, "{raw}");
        let got = up.last().expect("the upstream saw the request");
        assert_eq!(got.header("http2-settings"), None, "{:?}", got.headers);
        assert_eq!(got.header("upgrade"), None, "{:?}", got.headers);
    }
}
