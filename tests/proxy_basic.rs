//! Acceptance 1 and routing: requests and bodies reach the upstream intact, HEAD
//! answers carry no body, routes match by host, path prefix, methods and headers
//! (first match wins, no match -> 404), `builtin:echo` answers JSON, and HTTP/2 prior
//! knowledge is served on the plain listener.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::Full;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_reaches_the_upstream_with_path_query_and_headers() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let px = proxy(&app(&[&up], ""));

    let resp = send(
        px.addr,
        empty(req("GET", "/hello/world?x=1&y=two").header("x-custom", "abc")),
    )
    .await;

    assert_eq!(resp.status, 200, "body: {}", resp.text());
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("application/json")
    );
    let echo = resp.json();
    assert_eq!(echo["server"], "a");
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["uri"], "/hello/world?x=1&y=two");
    assert_eq!(up.requests(), 1);
    let got = up.last().expect("upstream saw the request");
    assert_eq!(got.method, http::Method::GET);
    assert_eq!(got.uri, "/hello/world?x=1&y=two");
    assert_eq!(got.header("x-custom").as_deref(), Some("abc"));
    assert_eq!(
        got.header("host").as_deref(),
        Some(TEST_HOST),
        "Host is kept"
    );
    assert!(got.body.is_empty());
    // Counted when the response is over, which may be just after the client has it.
    let shared = std::sync::Arc::clone(px.handle().shared());
    let counted = wait_until(std::time::Duration::from_secs(5), || {
        shared.stats.class(2) >= 1
    })
    .await;
    assert!(counted, "2xx responses are counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_keep_content_length_but_carry_no_body() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let px = proxy(&app(&[&up], ""));

    // What a GET of the same resource would carry.
    let get_len = get(px.addr, "/doc").await.body.len();
    assert!(get_len > 0);

    let raw = raw_request(
        px.addr,
        b"HEAD /doc HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&raw), 200, "raw response: {raw:?}");
    let len: usize = raw_header(&raw, "content-length")
        .unwrap_or_else(|| panic!("HEAD answer keeps content-length: {raw:?}"))
        .parse()
        .expect("numeric content-length");
    assert!(len > 0, "the upstream's content-length is passed on");
    assert!(raw_header(&raw, "transfer-encoding").is_none(), "{raw:?}");
    assert_eq!(raw_body(&raw), "", "a HEAD answer has no body, got {raw:?}");
    let got = up.last().expect("upstream saw the HEAD");
    assert_eq!(got.method, http::Method::HEAD);
    assert_eq!(got.uri, "/doc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_with_a_100_kb_body_arrives_intact() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let px = proxy(&app(&[&up], ""));
    let body = payload(100 * 1024);

    let request = req("POST", "/upload")
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::from(body.clone())))
        .expect("request builds");
    let resp = send(px.addr, request).await;

    assert_eq!(resp.status, 200, "body: {}", resp.text());
    assert_eq!(resp.json()["body_len"], 100 * 1024);
    let got = up.last().expect("upstream saw the POST");
    assert_eq!(got.method, http::Method::POST);
    assert_eq!(got.body.len(), body.len());
    assert!(
        got.body.as_ref() == body.as_slice(),
        "the body bytes are unchanged"
    );
    assert_eq!(
        got.header("content-type").as_deref(),
        Some("application/octet-stream")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_request_body_arrives_intact_with_one_framing() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let px = proxy(&app(&[&up], ""));
    let chunks: [&[u8]; 4] = [b"hello ", b"chunked ", &[b'x'; 5000], b" world"];

    let mut raw = b"POST /chunks HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    let mut expected = Vec::new();
    for chunk in chunks {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
        expected.extend_from_slice(chunk);
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_request(px.addr, &raw).await;

    assert_eq!(raw_status(&answer), 200, "raw response: {answer:?}");
    let got = up.last().expect("upstream saw the chunked POST");
    assert_eq!(got.body.len(), expected.len());
    assert!(
        got.body.as_ref() == expected.as_slice(),
        "the chunked body is unchanged"
    );
    let te = got.header("transfer-encoding");
    let cl = got.header("content-length");
    assert!(
        te.is_some() != cl.is_some(),
        "exactly one framing upstream: te={te:?} cl={cl:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_matching_route_is_404_with_a_request_id() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let px = proxy(&format!(
        "[upstreams.app]\nservers = {}\n\n[[routes]]\npath_prefix = \"/api/\"\nupstream = \"app\"\n",
        servers(&[&up])
    ));

    let resp = get(px.addr, "/other").await;
    assert_eq!(resp.status, 404);
    assert!(
        resp.request_id().is_some_and(|id| !id.is_empty()),
        "404 carries x-request-id"
    );
    assert_eq!(up.requests(), 0, "nothing was forwarded");

    let resp = get(px.addr, "/api/x").await;
    assert_eq!(resp.status, 200);
    assert_eq!(up.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_match_host_prefix_methods_headers_and_the_first_match_wins() {
    let by_host = Upstream::start("by_host", Behavior::echo()).await;
    let by_prefix = Upstream::start("by_prefix", Behavior::echo()).await;
    let by_method = Upstream::start("by_method", Behavior::echo()).await;
    let by_header = Upstream::start("by_header", Behavior::echo()).await;
    let px = proxy(&format!(
        r#"
[upstreams.host]
servers = {}
[upstreams.prefix]
servers = {}
[upstreams.method]
servers = {}
[upstreams.header]
servers = {}
[upstreams.fallback]
servers = ["builtin:echo"]

[[routes]]
host = "api.example.com"
upstream = "host"

[[routes]]
path_prefix = "/static/"
upstream = "prefix"

[[routes]]
methods = ["POST", "PUT"]
upstream = "method"

[[routes]]
headers = {{ "x-canary" = "1" }}
upstream = "header"

[[routes]]
upstream = "fallback"
"#,
        servers(&[&by_host]),
        servers(&[&by_prefix]),
        servers(&[&by_method]),
        servers(&[&by_header]),
    ));

    let who = |resp: Resp| {
        let json = resp.json();
        json["server"]
            .as_str()
            .or(json["upstream"].as_str())
            .unwrap_or("")
            .to_owned()
    };
    let cases: Vec<(&str, &str, &str, Option<&str>, &str)> = vec![
        // method, host, path, x-canary, expected upstream
        ("GET", "api.example.com", "/static/a", None, "by_host"),
        ("GET", "API.Example.com:8080", "/x", None, "by_host"),
        ("POST", "api.example.com", "/x", Some("1"), "by_host"),
        ("GET", "other.example.com", "/static/a", None, "by_prefix"),
        (
            "POST",
            "other.example.com",
            "/static/a",
            Some("1"),
            "by_prefix",
        ),
        ("POST", "other.example.com", "/x", None, "by_method"),
        ("PUT", "other.example.com", "/x", Some("1"), "by_method"),
        ("GET", "other.example.com", "/x", Some("1"), "by_header"),
        ("GET", "other.example.com", "/x", Some("0"), "builtin:echo"),
        (
            "DELETE",
            "other.example.com",
            "/static",
            None,
            "builtin:echo",
        ),
    ];
    for (method, host, path, canary, expected) in cases {
        let mut builder = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", host);
        if let Some(v) = canary {
            builder = builder.header("x-canary", v);
        }
        let resp = send(px.addr, empty(builder)).await;
        assert_eq!(resp.status, 200, "{method} {host}{path}: {}", resp.text());
        assert_eq!(
            who(resp),
            expected,
            "{method} {host}{path} x-canary={canary:?}"
        );
    }
    assert_eq!(by_host.requests(), 3);
    assert_eq!(by_prefix.requests(), 2);
    assert_eq!(by_method.requests(), 2);
    assert_eq!(by_header.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_echo_answers_with_json_describing_the_request() {
    let px = proxy(
        "[upstreams.echo]\nservers = [\"builtin:echo\"]\n\n[[routes]]\nupstream = \"echo\"\n",
    );

    let request = req("POST", "/echo/me?q=1")
        .header("x-probe", "yes")
        .body(Full::new(Bytes::from_static(b"ping")))
        .expect("request builds");
    let resp = send(px.addr, request).await;

    assert_eq!(resp.status, 200);
    assert!(resp
        .header("content-type")
        .is_some_and(|ct| ct.starts_with("application/json")));
    let echo = resp.json();
    assert_eq!(echo["upstream"], "builtin:echo");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/echo/me");
    assert_eq!(echo["query"], "q=1");
    assert_eq!(echo["body_bytes"], 4);
    assert_eq!(echo["body"], "ping");
    assert_eq!(echo["headers"]["x-probe"], "yes");
    assert_eq!(echo["headers"]["host"], TEST_HOST);
    assert_eq!(echo["headers"]["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_is_proxied() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let px = proxy(&app(&[&up], ""));
    let authority = format!("h2.example.com:{}", px.addr.port());

    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{authority}/h2/path?z=9"))
        .body(Full::new(Bytes::from_static(b"over h2")))
        .expect("request builds");
    let resp = send_h2(px.addr, request).await;

    assert_eq!(resp.status, 200, "body: {}", resp.text());
    assert_eq!(resp.version, http::Version::HTTP_2);
    assert_eq!(resp.json()["server"], "a");
    let got = up.last().expect("upstream saw the h2 request");
    assert_eq!(got.method, http::Method::POST);
    assert_eq!(
        got.uri, "/h2/path?z=9",
        "the upstream gets an origin-form URI"
    );
    assert_eq!(got.version, http::Version::HTTP_11);
    assert_eq!(
        got.header("host").as_deref(),
        Some(authority.as_str()),
        "Host comes from :authority"
    );
    assert_eq!(got.body.as_ref(), b"over h2");
    assert!(got.header("via").is_some_and(|v| v.contains("proxycache")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_content_and_not_modified_answers_carry_no_body_and_keep_the_connection_usable() {
    let no_content = Upstream::start("no_content", Behavior::status(204)).await;
    let not_modified = Upstream::start("not_modified", Behavior::status(304)).await;
    let ok = Upstream::start("ok", Behavior::echo()).await;
    let px = proxy(&format!(
        "[upstreams.nc]\nservers = {}\n[upstreams.nm]\nservers = {}\n[upstreams.ok]\nservers = {}\n\n\
         [[routes]]\npath_prefix = \"/204\"\nupstream = \"nc\"\n\n\
         [[routes]]\npath_prefix = \"/304\"\nupstream = \"nm\"\n\n\
         [[routes]]\nupstream = \"ok\"\n",
        servers(&[&no_content]),
        servers(&[&not_modified]),
        servers(&[&ok]),
    ));

    // On one keep-alive connection: if a bodyless answer were framed wrongly, the
    // answers after it would not parse.
    let requests = ["/204", "/after-204", "/304", "/after-304"]
        .into_iter()
        .map(|path| empty(req("GET", path)))
        .collect();
    let resps = send_on_one_connection(px.addr, requests).await;

    assert_eq!(resps[0].status, 204);
    assert!(resps[0].body.is_empty());
    assert_eq!(resps[1].status, 200);
    assert_eq!(resps[1].json()["uri"], "/after-204");
    assert_eq!(resps[2].status, 304);
    assert!(resps[2].body.is_empty());
    assert_eq!(resps[3].status, 200);
    assert_eq!(resps[3].json()["uri"], "/after-304");

    let raw = raw_request(
        px.addr,
        b"GET /204 HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&raw), 204, "raw response: {raw:?}");
    assert!(
        raw_header(&raw, "transfer-encoding").is_none(),
        "a 204 is not chunked: {raw:?}"
    );
    assert_eq!(raw_body(&raw), "", "a 204 has no body: {raw:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_and_large_response_bodies_stream_back_intact() {
    let body = payload(1024 * 1024);
    let chunked = Upstream::start("chunked", Behavior::fixed_body(body.clone(), true)).await;
    let sized = Upstream::start("sized", Behavior::fixed_body(body.clone(), false)).await;
    let px = proxy(&format!(
        "[upstreams.chunked]\nservers = {}\n[upstreams.sized]\nservers = {}\n\n\
         [[routes]]\npath_prefix = \"/chunked\"\nupstream = \"chunked\"\n\n\
         [[routes]]\nupstream = \"sized\"\n",
        servers(&[&chunked]),
        servers(&[&sized]),
    ));

    let resps = send_on_one_connection(
        px.addr,
        vec![empty(req("GET", "/chunked")), empty(req("GET", "/sized"))],
    )
    .await;

    for (resp, name) in resps.iter().zip(["chunked", "sized"]) {
        assert_eq!(resp.status, 200, "{name}");
        assert_eq!(resp.body.len(), body.len(), "{name}: length");
        assert!(
            resp.body.as_ref() == body.as_slice(),
            "{name}: the body bytes are unchanged"
        );
    }
    assert_eq!(
        resps[1].header("content-length").as_deref(),
        Some(body.len().to_string().as_str()),
        "a sized answer keeps its content-length"
    );
    assert!(
        !(resps[0].header("content-length").is_some()
            && resps[0].header("transfer-encoding").is_some()),
        "never two framings"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_405_and_never_forwarded() {
    // It went upstream as `CONNECT / HTTP/1.1`, and a 2xx there left the client an
    // empty reply.
    let up = Upstream::start("a", Behavior::echo()).await;
    let px = proxy(&app(&[&up], ""));
    let raw = raw_request(
        px.addr,
        b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&raw), 405, "{raw}");
    assert!(raw.to_ascii_lowercase().contains("x-request-id"), "{raw}");
    assert_eq!(up.requests(), 0);
    // The proxy carries on.
    assert_eq!(get(px.addr, "/after").await.status, 200);
}

/// RFC 9110 15.5.6: a 405 says what is allowed, over HTTP/1.1 and HTTP/2 alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_405_for_connect_has_an_allow_header() {
    let up = Upstream::start("a", Behavior::echo()).await;
    let px = proxy(&app(&[&up], ""));
    let allow = "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH";
    let raw = raw_request(
        px.addr,
        b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&raw), 405, "{raw}");
    assert_eq!(raw_header(&raw, "allow").as_deref(), Some(allow), "{raw}");

    let h2 = http::Request::builder()
        .method("CONNECT")
        .uri("example.com:443")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = send_h2(px.addr, h2).await;
    assert_eq!(resp.status, 405, "{}", resp.text());
    assert_eq!(resp.header("allow").as_deref(), Some(allow));
    assert_eq!(up.requests(), 0);
}
