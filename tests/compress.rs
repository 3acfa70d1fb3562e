//! `std.compress` over real sockets (issue 5, acceptance 3): gzip, br and zstd each
//! decode to the upstream's body, for a body with a `Content-Length` and for a chunked
//! one; nothing is compressed without `Accept-Encoding`, for a body under `min_size`,
//! for a response that is already encoded or whose type does not compress. The same
//! function from a Lua hook.
//!
//! Each test writes a site (config.toml + mods/) to a temp folder, starts upstreams and
//! proxycache in-process on port 0, and decodes what the client got with
//! async-compression's decoders.

mod common;

use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, ZstdDecoder};
use common::*;
use tokio::io::AsyncReadExt;

/// The pcmod module under test: `/gzip-only/...` offers gzip alone, everything else
/// the defaults; `x-best` and `x-compressed` tell what the calls returned.
const GZ: &str = r#"mod gz {
  on response {
    let best = std.compress.check()
    if $path starts_with "/gzip-only" {
      let done = std.compress.apply(min_size: 100, algorithms: "gzip")
      set resp.header["x-compressed"] = "${done}"
    } else {
      let done = std.compress.apply(min_size: 100B)
      set resp.header["x-compressed"] = "${done}"
    }
    set resp.header["x-best"] = "${best}"
  }
}
"#;

/// The same from Lua, inline in a `.pcmod`.
const LUA_GZ: &str = r#"mod luagz {
  lua """
function on_response(req, resp, ctx)
  local done = std.compress.apply{ min_size = 100 }
  resp:set_header("x-compressed", tostring(done))
  resp:set_header("x-best", tostring(std.compress.check()))
end
"""
}
"#;

/// About 64 KiB of text that compresses well but not to nothing.
fn text_body() -> Vec<u8> {
    let mut out = Vec::with_capacity(64 * 1024);
    let mut i = 0u32;
    while out.len() < 64 * 1024 {
        out.extend_from_slice(
            format!(
                "line {i}: the quick brown fox jumps over the lazy dog {}\n",
                i * 7919 % 1000
            )
            .as_bytes(),
        );
        i += 1;
    }
    out
}

async fn setup(module: (&str, &str), routes: Vec<(&str, Behavior)>) -> RouteSite {
    route_site("compress", 1, module, routes, "").await
}

fn text(body: Vec<u8>, chunked: bool) -> Behavior {
    Behavior::fixed_body(body, chunked).with_header("content-type", "text/plain; charset=utf-8")
}

async fn get_with(addr: std::net::SocketAddr, path: &str, accept: Option<&str>) -> Resp {
    let mut b = req("GET", path);
    if let Some(a) = accept {
        b = b.header("accept-encoding", a);
    }
    send(addr, empty(b)).await
}

async fn decode(coding: &str, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let read = match coding {
        "gzip" => GzipDecoder::new(bytes).read_to_end(&mut out).await,
        "br" => BrotliDecoder::new(bytes).read_to_end(&mut out).await,
        "zstd" => ZstdDecoder::new(bytes).read_to_end(&mut out).await,
        other => panic!("no decoder for {other}"),
    };
    read.unwrap_or_else(|e| panic!("the {coding} body does not decode: {e}"));
    out
}

fn values(r: &Resp, name: &str) -> Vec<String> {
    r.headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// `r` is `coding`-encoded, streamed without a length, varies by Accept-Encoding and
/// decodes to `original`.
async fn assert_compressed(r: &Resp, coding: &str, original: &[u8]) {
    assert_eq!(r.status, 200, "{:?}", r.headers);
    assert_eq!(
        r.header("content-encoding").as_deref(),
        Some(coding),
        "{:?}",
        r.headers
    );
    assert_eq!(
        r.header("content-length"),
        None,
        "a compressed body is chunked"
    );
    assert!(
        values(r, "vary")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("accept-encoding")),
        "vary: {:?}",
        values(r, "vary")
    );
    assert_eq!(r.header("x-compressed").as_deref(), Some("true"));
    assert!(
        r.body.len() < original.len() / 4,
        "{coding}: {} bytes from {}",
        r.body.len(),
        original.len()
    );
    let decoded = decode(coding, &r.body).await;
    assert!(
        decoded == original,
        "{coding}: the decoded body differs from the upstream's"
    );
}

/// `r` is the upstream's body as it was.
fn assert_untouched(r: &Resp, original: &[u8], what: &str) {
    assert_eq!(r.status, 200, "{what}");
    assert_eq!(r.header("x-compressed").as_deref(), Some("false"), "{what}");
    assert!(r.body == original, "{what}: the body changed");
}

#[tokio::test]
async fn gzip_br_and_zstd_each_decode_to_the_upstream_body() {
    let body = text_body();
    let s = setup(
        ("gz", GZ),
        vec![
            ("/fixed", text(body.clone(), false)),
            (
                "/chunked",
                text(body.clone(), true)
                    .with_header("vary", "Origin")
                    .with_header("etag", "\"v1\"")
                    .with_header("accept-ranges", "bytes"),
            ),
            ("/gzip-only", text(body.clone(), false)),
        ],
    )
    .await;
    let addr = s.run.addr;
    for coding in ["gzip", "br", "zstd"] {
        for path in ["/fixed", "/chunked"] {
            let r = get_with(addr, path, Some(coding)).await;
            assert_compressed(&r, coding, &body).await;
            assert_eq!(
                r.header("x-best").as_deref(),
                Some(coding),
                "check() agrees"
            );
        }
    }

    // The chunked upstream's own Vary is kept, its strong ETag weakened, Accept-Ranges
    // dropped.
    let r = get_with(addr, "/chunked", Some("gzip")).await;
    assert_eq!(values(&r, "vary"), ["Origin", "accept-encoding"]);
    assert_eq!(r.header("etag").as_deref(), Some("W/\"v1\""));
    assert_eq!(r.header("accept-ranges"), None);

    // q-values and the server's order.
    let r = get_with(addr, "/fixed", Some("gzip, deflate, br, zstd")).await;
    assert_compressed(&r, "br", &body).await;
    let r = get_with(addr, "/fixed", Some("br;q=0.5, gzip;q=0.9, zstd;q=0.1")).await;
    assert_compressed(&r, "gzip", &body).await;
    let r = get_with(addr, "/fixed", Some("br;q=0, *")).await;
    assert_compressed(&r, "zstd", &body).await;
    let r = get_with(addr, "/gzip-only", Some("br, zstd, gzip;q=0.1")).await;
    assert_compressed(&r, "gzip", &body).await;
    assert_eq!(r.header("x-best").as_deref(), Some("br"));
}

#[tokio::test]
async fn nothing_is_compressed_that_should_not_be() {
    let body = text_body();
    let tiny = b"short and sweet: under a hundred bytes".to_vec();
    let encoded = payload(8 * 1024);
    let png = payload(8 * 1024);
    let s = setup(
        ("gz", GZ),
        vec![
            ("/text", text(body.clone(), false)),
            ("/tiny", text(tiny.clone(), false)),
            (
                "/encoded",
                text(encoded.clone(), false).with_header("content-encoding", "gzip"),
            ),
            (
                "/png",
                Behavior::fixed_body(png.clone(), false).with_header("content-type", "image/png"),
            ),
            (
                "/no-transform",
                text(body.clone(), false).with_header("cache-control", "no-transform"),
            ),
            ("/gzip-only", text(body.clone(), true)),
        ],
    )
    .await;
    let addr = s.run.addr;

    let r = get_with(addr, "/text", None).await;
    assert_untouched(&r, &body, "no Accept-Encoding");
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.header("content-length"), Some(body.len().to_string()));
    assert_eq!(r.header("x-best").as_deref(), Some(""), "check() is nil");
    // The response could have been compressed, so caches must still key it.
    assert!(values(&r, "vary").iter().any(|v| v == "accept-encoding"));

    for accept in [
        "identity",
        "",
        "deflate, compress",
        "gzip;q=0, br;q=0, zstd;q=0",
        "*;q=0",
    ] {
        let r = get_with(addr, "/text", Some(accept)).await;
        assert_untouched(&r, &body, &format!("Accept-Encoding: {accept:?}"));
        assert_eq!(r.header("content-encoding"), None);
    }

    let r = get_with(addr, "/tiny", Some("gzip, br, zstd")).await;
    assert_untouched(&r, &tiny, "a body under min_size");
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.header("content-length"), Some(tiny.len().to_string()));

    let r = get_with(addr, "/encoded", Some("br, zstd, gzip")).await;
    assert_untouched(&r, &encoded, "an already encoded response");
    assert_eq!(values(&r, "content-encoding"), ["gzip"]);

    let r = get_with(addr, "/png", Some("br, zstd, gzip")).await;
    assert_untouched(&r, &png, "image/png");
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.header("vary"), None, "a png never varies by encoding");

    let r = get_with(addr, "/no-transform", Some("gzip")).await;
    assert_untouched(&r, &body, "Cache-Control: no-transform");

    let r = get_with(addr, "/gzip-only", Some("br, zstd")).await;
    assert_untouched(&r, &body, "none of the offered algorithms accepted");

    let r = send(
        addr,
        empty(req("HEAD", "/text").header("accept-encoding", "gzip")),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), None, "HEAD");
}

#[tokio::test]
async fn lua_calls_the_same_function() {
    let body = text_body();
    let tiny = b"tiny".to_vec();
    let s = setup(
        ("luagz", LUA_GZ),
        vec![
            ("/text", text(body.clone(), true)),
            ("/tiny", text(tiny.clone(), false)),
        ],
    )
    .await;
    let addr = s.run.addr;
    for coding in ["gzip", "br", "zstd"] {
        let r = get_with(addr, "/text", Some(coding)).await;
        assert_compressed(&r, coding, &body).await;
        assert_eq!(r.header("x-best").as_deref(), Some(coding));
    }
    let r = get_with(addr, "/text", None).await;
    assert_untouched(&r, &body, "Lua, no Accept-Encoding");
    assert_eq!(r.header("x-best").as_deref(), Some("nil"));
    let r = get_with(addr, "/tiny", Some("gzip")).await;
    assert_untouched(&r, &tiny, "Lua, a body under min_size");
}

/// An upstream on a raw socket that sends the head and `first` as one chunk, then
/// waits for a permit before sending `rest` and ending the body.
async fn held_upstream(
    first: Vec<u8>,
    rest: Vec<u8>,
) -> (std::net::SocketAddr, std::sync::Arc<tokio::sync::Semaphore>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the held upstream");
    let addr = listener.local_addr().expect("its address");
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let gate = std::sync::Arc::clone(&permits);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (gate, first, rest) = (std::sync::Arc::clone(&gate), first.clone(), rest.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if sock.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let chunk = |data: &[u8]| {
                    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
                    out.extend_from_slice(data);
                    out.extend_from_slice(b"\r\n");
                    out
                };
                let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                out.extend(chunk(&first));
                if sock.write_all(&out).await.is_err() {
                    return;
                }
                let Ok(permit) = gate.acquire().await else {
                    return;
                };
                permit.forget();
                let mut out = chunk(&rest);
                out.extend_from_slice(b"0\r\n\r\n");
                let _ = sock.write_all(&out).await;
            });
        }
    });
    (addr, permits)
}

#[tokio::test]
async fn compressed_bodies_stream_before_the_upstream_finishes() {
    use http_body_util::BodyExt;
    let body = text_body();
    let (first, rest) = body.split_at(4096);
    let (up, permits) = held_upstream(first.to_vec(), rest.to_vec()).await;
    let site = Site::new("compress-stream");
    site.write_mod("gz", GZ);
    site.write_config(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [scripts]\ndir = \"mods\"\nwatch = false\n\n\
         [upstreams.held]\nservers = [\"{up}\"]\n\n[[routes]]\nupstream = \"held\"\n"
    ));
    let run = Running::start(&site);
    for coding in ["gzip", "br", "zstd"] {
        let exchange = async {
            let stream = tokio::net::TcpStream::connect(run.addr)
                .await
                .expect("connect to the proxy");
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .expect("handshake");
            tokio::spawn(conn);
            let resp = sender
                .send_request(empty(req("GET", "/").header("accept-encoding", coding)))
                .await
                .expect("the response head");
            assert_eq!(
                resp.headers().get("content-encoding").map(|v| v.as_bytes()),
                Some(coding.as_bytes())
            );
            let mut body = resp.into_body();
            // Before the upstream sends the rest, the first part arrives compressed.
            let mut early = Vec::new();
            let mut decoded = Vec::new();
            while decoded.len() < first.len() {
                let frame = body
                    .frame()
                    .await
                    .expect("a frame before the upstream finished")
                    .expect("a good frame");
                early.extend_from_slice(frame.data_ref().expect("a data frame"));
                decoded = partial_decode(coding, &early).await;
            }
            assert!(decoded == first, "{coding}: the early part differs");
            permits.add_permits(1);
            let tail = body.collect().await.expect("the rest").to_bytes();
            early.extend_from_slice(&tail);
            assert!(
                decode(coding, &early).await == body_of(first, rest),
                "{coding}: the whole body differs"
            );
        };
        tokio::time::timeout(CLIENT_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| panic!("{coding}: the compressed body did not stream"));
    }
}

fn body_of(first: &[u8], rest: &[u8]) -> Vec<u8> {
    [first, rest].concat()
}

/// What a decoder makes of the start of a stream (it ends early, so read what comes
/// before the error).
async fn partial_decode(coding: &str, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    macro_rules! drain {
        ($d:expr) => {{
            let mut d = $d;
            while let Ok(n @ 1..) = d.read(&mut buf).await {
                out.extend_from_slice(&buf[..n]);
            }
        }};
    }
    match coding {
        "gzip" => drain!(GzipDecoder::new(bytes)),
        "br" => drain!(BrotliDecoder::new(bytes)),
        _ => drain!(ZstdDecoder::new(bytes)),
    }
    out
}

/// The documented pairing: the cache above, compression below (its response phase
/// runs after `store`, on hits too).
const CACHE_ABOVE: &str = r#"mod cache_above {
  priority 100
  on request {
    let hit = std.cache.check()
  }
  on response {
    let stored = std.cache.store()
  }
}
"#;

fn accept_encoding_varies(r: &Resp) -> usize {
    values(r, "vary")
        .iter()
        .flat_map(|v| v.split(','))
        .filter(|t| t.trim().eq_ignore_ascii_case("accept-encoding"))
        .count()
}

async fn head_with(addr: std::net::SocketAddr, path: &str, accept: Option<&str>) -> Resp {
    let mut b = req("HEAD", path);
    if let Some(a) = accept {
        b = b.header("accept-encoding", a);
    }
    send(addr, empty(b)).await
}

/// A 304 — the upstream's, or a cache hit's — and the answer to a HEAD lacked the
/// `Vary: Accept-Encoding` the GET 200 of the same URL has; RFC 9110 §15.4.5 asks a
/// 304 for the `Vary` the 200 would carry. Now they have it, once; HEAD's other
/// headers stay as they are (nginx's gzip filter leaves header-only responses alone).
#[tokio::test]
async fn not_modified_and_head_answers_vary_as_the_200_does() {
    let body = text_body();
    let tiny = b"under a hundred bytes".to_vec();
    let png = payload(8 * 1024);
    let cached = text(body.clone(), false)
        .with_header("cache-control", "public, max-age=60")
        .with_header("etag", "\"c1\"");
    let routes = [
        (
            "/text",
            text(body.clone(), false).with_header("etag", "\"v1\""),
        ),
        ("/tiny", text(tiny.clone(), false)),
        (
            "/png",
            Behavior::fixed_body(png, false).with_header("content-type", "image/png"),
        ),
        (
            "/nm-text",
            Behavior::status(304)
                .with_header("etag", "\"v1\"")
                .with_header("vary", "Origin"),
        ),
        (
            "/nm-png",
            Behavior::status(304)
                .with_header("etag", "\"p1\"")
                .with_header("content-type", "image/png"),
        ),
        ("/cached", cached),
    ];
    let RouteSite { ups, run, .. } = route_site_with(
        "compress-vary",
        1,
        &[("gz", GZ), ("cache_above", CACHE_ABOVE)],
        routes.into(),
        "",
    )
    .await;
    let addr = run.addr;

    // The GET 200 varies; so do the HEAD answers for the same URL, with or without
    // an Accept-Encoding, and nothing else about them changes.
    let r = get_with(addr, "/text", Some("gzip")).await;
    assert_compressed(&r, "gzip", &body).await;
    for accept in [Some("gzip"), None] {
        let r = head_with(addr, "/text", accept).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            accept_encoding_varies(&r),
            1,
            "HEAD {accept:?}: {:?}",
            r.headers
        );
        assert_eq!(r.header("content-encoding"), None, "HEAD {accept:?}");
        assert_eq!(r.header("content-length"), Some(body.len().to_string()));
        assert_eq!(
            r.header("etag").as_deref(),
            Some("\"v1\""),
            "a HEAD keeps its strong ETag"
        );
        assert_eq!(r.header("x-compressed").as_deref(), Some("false"));
    }
    // What a GET would not vary, a HEAD does not either.
    for path in ["/tiny", "/png"] {
        let get = get_with(addr, path, Some("gzip")).await;
        let head = head_with(addr, path, Some("gzip")).await;
        assert_eq!(accept_encoding_varies(&get), 0, "GET {path}");
        assert_eq!(accept_encoding_varies(&head), 0, "HEAD {path}");
    }

    // The upstream's 304: its own Vary kept, accept-encoding appended once.
    let r = get_with(addr, "/nm-text", Some("gzip")).await;
    assert_eq!(r.status, 304);
    assert_eq!(values(&r, "vary"), ["Origin", "accept-encoding"]);
    assert!(r.body.is_empty());
    // A 304 for a type that does not compress does not vary.
    let r = get_with(addr, "/nm-png", Some("gzip")).await;
    assert_eq!(r.status, 304);
    assert_eq!(accept_encoding_varies(&r), 0, "{:?}", r.headers);

    // The cache's 304 on a hit.
    let fill = get_with(addr, "/cached", Some("gzip")).await;
    assert_compressed(&fill, "gzip", &body).await;
    let mut b = req("GET", "/cached").header("if-none-match", "\"c1\"");
    b = b.header("accept-encoding", "gzip");
    let hit = send(addr, empty(b)).await;
    assert_eq!(hit.status, 304, "{:?}", hit.headers);
    assert_eq!(hit.header("x-cache").as_deref(), Some("HIT"));
    assert_eq!(accept_encoding_varies(&hit), 1, "{:?}", hit.headers);
    assert_eq!(ups[5].requests(), 1, "the 304 came from the cache");
}
