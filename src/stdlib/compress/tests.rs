//! Unit tests of `std.compress`: Accept-Encoding negotiation, the compressible
//! types, what the response head rules out, and the header changes.

use super::*;

const ALL: &[Coding] = &[Coding::Br, Coding::Zstd, Coding::Gzip];

fn pick(accept: &str) -> Option<Coding> {
    negotiate([accept], ALL)
}

#[test]
fn plain_lists_prefer_br_then_zstd_then_gzip() {
    assert_eq!(pick("gzip"), Some(Coding::Gzip));
    assert_eq!(pick("gzip, deflate, br"), Some(Coding::Br));
    assert_eq!(pick("gzip, zstd"), Some(Coding::Zstd));
    assert_eq!(
        pick("zstd, br, gzip"),
        Some(Coding::Br),
        "ties: the server's order"
    );
}

#[test]
fn q_values_rank_and_q0_refuses() {
    assert_eq!(pick("br;q=0.5, gzip;q=0.8"), Some(Coding::Gzip));
    assert_eq!(pick("br;q=0.8, gzip"), Some(Coding::Gzip));
    assert_eq!(pick("gzip;q=1.0, br;q=0.999"), Some(Coding::Gzip));
    assert_eq!(pick("br;q=0, gzip;q=0.1"), Some(Coding::Gzip));
    assert_eq!(pick("br;q=0, gzip;q=0.000"), None);
    assert_eq!(
        pick("gzip ; Q=0.5 , br;q=0.4"),
        Some(Coding::Gzip),
        "spaces, upper-case Q"
    );
    assert_eq!(
        pick("br;level=5;q=0.2, gzip;q=0.1"),
        Some(Coding::Br),
        "other params ignored"
    );
}

#[test]
fn malformed_q_values_drop_their_entry() {
    assert_eq!(pick("br;q=2, gzip"), Some(Coding::Gzip));
    assert_eq!(pick("br;q=0.5555, gzip;q=0.1"), Some(Coding::Gzip));
    assert_eq!(pick("br;q=abc"), None);
    assert_eq!(pick("br;q=1.5"), None);
    assert_eq!(pick("gzip;q=1.000"), Some(Coding::Gzip));
}

#[test]
fn star_covers_what_is_not_named() {
    assert_eq!(pick("*"), Some(Coding::Br));
    assert_eq!(pick("*;q=0.5, gzip"), Some(Coding::Gzip));
    assert_eq!(pick("br;q=0, *"), Some(Coding::Zstd));
    assert_eq!(pick("*;q=0"), None);
    assert_eq!(pick("*;q=0, gzip;q=0.3"), Some(Coding::Gzip));
}

#[test]
fn identity_and_empty_and_unknown() {
    assert_eq!(pick(""), None);
    assert_eq!(negotiate([], ALL), None, "no header");
    assert_eq!(pick("identity"), None);
    assert_eq!(pick("deflate, compress, x-custom"), None, "unknown codings");
    assert_eq!(pick("identity;q=0, gzip"), Some(Coding::Gzip));
    assert_eq!(pick("gzip;q=0.5, identity"), None, "identity preferred");
    assert_eq!(
        pick("gzip;q=0.5, identity;q=0.5"),
        Some(Coding::Gzip),
        "a tie compresses"
    );
    assert_eq!(pick(", ,gzip,"), Some(Coding::Gzip), "empty entries");
}

#[test]
fn case_and_aliases_and_several_headers() {
    assert_eq!(pick("GZIP"), Some(Coding::Gzip));
    assert_eq!(pick("Br;Q=0.9, gZip;q=0.1"), Some(Coding::Br));
    assert_eq!(pick("x-gzip"), Some(Coding::Gzip));
    assert_eq!(
        negotiate(["gzip;q=0.2", "zstd;q=0.4"], ALL),
        Some(Coding::Zstd)
    );
}

#[test]
fn only_offered_codings_are_chosen() {
    assert_eq!(negotiate(["br, gzip"], &[Coding::Gzip]), Some(Coding::Gzip));
    assert_eq!(negotiate(["br"], &[Coding::Gzip, Coding::Zstd]), None);
    assert_eq!(
        negotiate(["br, gzip"], &[Coding::Gzip, Coding::Br]),
        Some(Coding::Gzip),
        "the caller's order breaks ties"
    );
}

#[test]
fn algorithm_lists() {
    assert_eq!(parse_algorithms("br,zstd,gzip"), Ok(ALL.to_vec()));
    assert_eq!(
        parse_algorithms(" GZIP , br ,gzip"),
        Ok(vec![Coding::Gzip, Coding::Br])
    );
    assert!(parse_algorithms("gzip,deflate").is_err());
    assert!(parse_algorithms(" , ").is_err());
    assert!(check_algorithms(&Value::Int(1)).is_err());
    assert!(check_min_size(&Value::Size(1024)).is_ok());
    assert!(check_min_size(&Value::Int(0)).is_ok());
    assert!(check_min_size(&Value::Int(-1)).is_err());
}

#[test]
fn compressible_types() {
    for t in [
        "text/html",
        "text/plain; charset=utf-8",
        "TEXT/CSS",
        "application/json",
        "application/javascript",
        "application/xml",
        "image/svg+xml",
        "application/ld+json",
        "application/vnd.api+json; charset=utf-8",
        "application/rss+xml",
        "application/wasm",
        "font/ttf",
    ] {
        assert!(compressible_type(t), "{t}");
    }
    for t in [
        "image/png",
        "image/jpeg",
        "video/mp4",
        "application/octet-stream",
        "application/zip",
        "application/gzip",
        "font/woff2",
        "text/event-stream",
        "text/",
        "json",
        "",
    ] {
        assert!(!compressible_type(t), "{t}");
    }
}

fn head(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    h
}

#[test]
fn skip_reasons_from_the_head() {
    let text = [("content-type", "text/plain"), ("content-length", "5000")];
    let ok = StatusCode::OK;
    assert_eq!(skip_reason(&Method::GET, ok, &head(&text), 1024), None);
    assert!(skip_reason(&Method::HEAD, ok, &head(&text), 1024).is_some());
    assert!(skip_reason(&Method::GET, StatusCode::NO_CONTENT, &head(&text), 1024).is_some());
    assert!(skip_reason(&Method::GET, StatusCode::NOT_MODIFIED, &head(&text), 1024).is_some());
    assert!(skip_reason(&Method::GET, ok, &head(&text), 5001).is_some());
    let mut encoded = text.to_vec();
    encoded.push(("content-encoding", "gzip"));
    assert!(skip_reason(&Method::GET, ok, &head(&encoded), 1).is_some());
    let mut no_transform = text.to_vec();
    no_transform.push(("cache-control", "public, No-Transform"));
    assert!(skip_reason(&Method::GET, ok, &head(&no_transform), 1).is_some());
    let png = [("content-type", "image/png"), ("content-length", "5000")];
    assert!(skip_reason(&Method::GET, ok, &head(&png), 1).is_some());
    assert!(skip_reason(&Method::GET, ok, &head(&[("content-length", "5000")]), 1).is_some());
    let chunked = [("content-type", "application/json")];
    assert_eq!(
        skip_reason(&Method::GET, ok, &head(&chunked), 1 << 20),
        None
    );
}

/// A 304 and a HEAD answer stand for the 200 a GET would get: they vary as it would.
#[test]
fn bodiless_responses_vary_as_the_full_one_would() {
    let get = Method::GET;
    let ok = StatusCode::OK;
    let nm = StatusCode::NOT_MODIFIED;
    let text = [("content-type", "text/plain"), ("content-length", "5000")];
    assert_eq!(
        bodiless_varies(&get, ok, &head(&text), 1024),
        None,
        "a GET 200"
    );
    assert_eq!(
        bodiless_varies(&Method::HEAD, ok, &head(&text), 1024),
        Some(true)
    );
    assert_eq!(
        bodiless_varies(&Method::HEAD, ok, &head(&text), 5001),
        Some(false)
    );
    let png = [("content-type", "image/png"), ("content-length", "5000")];
    assert_eq!(
        bodiless_varies(&Method::HEAD, ok, &head(&png), 1),
        Some(false)
    );
    assert_eq!(
        bodiless_varies(&Method::HEAD, ok, &head(&[]), 1),
        Some(false)
    );
    assert_eq!(
        bodiless_varies(&Method::HEAD, StatusCode::NO_CONTENT, &head(&text), 1),
        Some(false)
    );
    // A 304 usually repeats only the validators: no type, no length, or a length of 0.
    assert_eq!(
        bodiless_varies(&get, nm, &head(&[("etag", "\"a\"")]), 1024),
        Some(true)
    );
    assert_eq!(
        bodiless_varies(&get, nm, &head(&[("content-length", "0")]), 1024),
        Some(true)
    );
    assert_eq!(
        bodiless_varies(&Method::HEAD, nm, &head(&text), 1024),
        Some(true)
    );
    assert_eq!(bodiless_varies(&get, nm, &head(&png), 1), Some(false));
    let no_transform = [("cache-control", "no-transform")];
    assert_eq!(
        bodiless_varies(&get, nm, &head(&no_transform), 1),
        Some(false)
    );
    let encoded = [("content-encoding", "br")];
    assert_eq!(bodiless_varies(&get, nm, &head(&encoded), 1), Some(false));
}

#[test]
fn vary_is_appended_once_and_etags_weakened() {
    let mut h = head(&[("vary", "Origin")]);
    add_vary(&mut h);
    add_vary(&mut h);
    let vary: Vec<_> = h.get_all(header::VARY).iter().collect();
    assert_eq!(vary, ["Origin", "accept-encoding"]);
    let mut h = head(&[("vary", "origin, Accept-Encoding")]);
    add_vary(&mut h);
    assert_eq!(h.get_all(header::VARY).iter().count(), 1);
    let mut h = head(&[("vary", "*")]);
    add_vary(&mut h);
    assert_eq!(h.get_all(header::VARY).iter().count(), 1);

    let mut h = head(&[("etag", "\"abc\"")]);
    weaken_etag(&mut h);
    assert_eq!(h[header::ETAG], "W/\"abc\"");
    weaken_etag(&mut h);
    assert_eq!(h[header::ETAG], "W/\"abc\"");
}

/// A body of `frames`, each a piece of data or a failure.
struct Frames(std::collections::VecDeque<Result<&'static [u8], &'static str>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.pop_front().map(|f| match f {
            Ok(data) => Ok(Frame::data(Bytes::from_static(data))),
            Err(e) => Err(e.into()),
        }))
    }
}

async fn drain(
    coding: Coding,
    frames: Vec<Result<&'static [u8], &'static str>>,
) -> Result<Vec<u8>, String> {
    use http_body_util::BodyExt;
    let inner = ProxyBody::Boxed(BoxBody::new(Frames(frames.into())));
    let mut body = Compressed::new(coding, inner);
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        out.extend_from_slice(frame.data_ref().map_or(&[][..], |d| &d[..]));
    }
    assert!(body.is_end_stream());
    Ok(out)
}

#[tokio::test]
async fn every_coding_round_trips_across_frames() {
    use tokio::io::AsyncReadExt;
    let frames = vec![
        Ok(&b"hello, "[..]),
        Ok(&b""[..]),
        Ok(&b"compressed world"[..]),
    ];
    for coding in [Coding::Br, Coding::Zstd, Coding::Gzip] {
        let encoded = drain(coding, frames.clone()).await.expect("no error");
        let mut decoded = Vec::new();
        let bytes = &encoded[..];
        match coding {
            Coding::Br => {
                async_compression::tokio::bufread::BrotliDecoder::new(bytes)
                    .read_to_end(&mut decoded)
                    .await
            }
            Coding::Zstd => {
                async_compression::tokio::bufread::ZstdDecoder::new(bytes)
                    .read_to_end(&mut decoded)
                    .await
            }
            Coding::Gzip => {
                async_compression::tokio::bufread::GzipDecoder::new(bytes)
                    .read_to_end(&mut decoded)
                    .await
            }
        }
        .expect("decodes");
        assert_eq!(decoded, b"hello, compressed world", "{coding:?}");
    }
}

#[tokio::test]
async fn a_failing_body_fails_the_compressed_one() {
    let frames = vec![Ok(&b"some data"[..]), Err("upstream reset")];
    for coding in [Coding::Br, Coding::Zstd, Coding::Gzip] {
        let err = drain(coding, frames.clone())
            .await
            .expect_err("the failure");
        assert!(err.contains("upstream reset"), "{coding:?}: {err}");
    }
}
