//! A `200` response as the answer to one request: `304 Not Modified` when the
//! request's validators match it (`If-None-Match`, else `If-Modified-Since`), `206
//! Partial Content` for one byte range (`416` when the range is past the end; a
//! `Range` with several ranges, or an `If-Range` that does not match, gets the whole
//! response), else the whole response. Hits are answered so from the stored entry, and
//! the request that fills a key from the upstream's response as it arrives (the
//! upstream was asked for the whole response: see [`Conditions::strip`]).
//!
//! Owns reading those request headers and the shapes of the three answers; only `200`
//! responses are answered this way. Must not touch: the store, freshness.

use std::ops::Range;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

use super::store::Cached;

/// The request headers a hit is answered by here (`If-Match` and
/// `If-Unmodified-Since` are left to the upstream).
const NAMES: [HeaderName; 4] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::RANGE,
    header::IF_RANGE,
];

/// What the answer to a request depends on besides the entry (kept only when the
/// request has any of it).
#[derive(Debug, Default)]
pub struct Conditions {
    if_none_match: Option<HeaderValue>,
    if_modified_since: Option<HeaderValue>,
    range: Option<HeaderValue>,
    if_range: Option<HeaderValue>,
}

impl Conditions {
    /// The request's conditions; `None` (nothing allocated) for a plain request.
    pub fn of(req: &HeaderMap) -> Option<Box<Conditions>> {
        let get = |name: &HeaderName| req.get(name).cloned();
        let c = Conditions {
            if_none_match: get(&header::IF_NONE_MATCH),
            if_modified_since: get(&header::IF_MODIFIED_SINCE),
            range: get(&header::RANGE),
            if_range: get(&header::IF_RANGE),
        };
        let any = c.if_none_match.is_some() || c.if_modified_since.is_some() || c.range.is_some();
        any.then(|| Box::new(c))
    }

    /// Takes them off a request that fills the cache: the upstream must send the
    /// whole response, not a `304` or a part, for it to be stored.
    pub fn strip(req: &mut HeaderMap) {
        for name in NAMES {
            req.remove(name);
        }
    }
}

/// How to answer from an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Whole,
    NotModified,
    Part(Range<usize>),
    Unsatisfiable,
}

/// How to answer `cond` from `c`.
pub fn answer(c: &Cached, cond: Option<&Conditions>) -> Answer {
    match cond {
        Some(cond) => answer_to(c.status, &c.headers, Some(c.body.len()), cond),
        None => Answer::Whole,
    }
}

/// How to answer `cond` from a response with `status`, `headers` and a body of `len`
/// bytes (`None`: not known yet, so a range gets the whole response, as nginx does).
pub fn answer_to(
    status: StatusCode,
    headers: &HeaderMap,
    len: Option<usize>,
    cond: &Conditions,
) -> Answer {
    if status != StatusCode::OK {
        return Answer::Whole;
    }
    let etag = headers.get(header::ETAG).and_then(|v| v.to_str().ok());
    if let Some(inm) = cond.if_none_match.as_ref().and_then(|v| v.to_str().ok()) {
        if none_match_matches(inm, etag) {
            return Answer::NotModified;
        }
    } else if let Some(ims) = date(cond.if_modified_since.as_ref()) {
        let modified = date(headers.get(header::LAST_MODIFIED));
        if modified.is_some_and(|m| m <= ims) {
            return Answer::NotModified;
        }
    }
    let Some(range) = cond.range.as_ref().and_then(|v| v.to_str().ok()) else {
        return Answer::Whole;
    };
    let Some(len) = len else {
        return Answer::Whole;
    };
    if let Some(if_range) = cond.if_range.as_ref().and_then(|v| v.to_str().ok()) {
        if !if_range_matches(if_range.trim(), etag, headers.get(header::LAST_MODIFIED)) {
            return Answer::Whole;
        }
    }
    match one_range(range, len) {
        Some(Ok(r)) => Answer::Part(r),
        Some(Err(())) => Answer::Unsatisfiable,
        None => Answer::Whole,
    }
}

fn date(v: Option<&HeaderValue>) -> Option<std::time::SystemTime> {
    v.and_then(|v| v.to_str().ok())
        .and_then(|t| httpdate::parse_http_date(t.trim()).ok())
}

/// The opaque tag of an entity tag, and whether it is weak.
fn opaque(tag: &str) -> (&str, bool) {
    match tag.strip_prefix("W/") {
        Some(rest) => (rest, true),
        None => (tag, false),
    }
}

/// `If-None-Match` against the entry's `ETag` (weak comparison, RFC 9110 §13.1.2).
fn none_match_matches(list: &str, etag: Option<&str>) -> bool {
    if list.trim() == "*" {
        return true;
    }
    let Some(etag) = etag else { return false };
    let want = opaque(etag.trim()).0;
    list.split(',').any(|t| opaque(t.trim()).0 == want)
}

/// `If-Range`: an entity tag must match strongly, a date must equal `Last-Modified`.
fn if_range_matches(if_range: &str, etag: Option<&str>, modified: Option<&HeaderValue>) -> bool {
    if if_range.starts_with('"') || if_range.starts_with("W/") {
        let Some(etag) = etag.map(str::trim) else {
            return false;
        };
        let ((a, weak_a), (b, weak_b)) = (opaque(if_range), opaque(etag));
        return !weak_a && !weak_b && a == b;
    }
    match (httpdate::parse_http_date(if_range).ok(), date(modified)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// One `bytes` range of a body of `len` bytes: `None` when the header is not one
/// range this answers (several ranges, another unit, malformed: the whole body is
/// sent), `Err` when it starts past the end.
fn one_range(header: &str, len: usize) -> Option<Result<Range<usize>, ()>> {
    let (unit, spec) = header.trim().split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return None;
    }
    let (first, last) = spec.trim().split_once('-')?;
    let number = |t: &str| -> Option<u64> {
        let t = t.trim();
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse::<u64>().unwrap_or(u64::MAX))
    };
    let len64 = len as u64;
    let (start, end) = match (first.trim().is_empty(), last.trim().is_empty()) {
        // `-N`: the last N bytes.
        (true, false) => {
            let n = number(last)?;
            if n == 0 || len == 0 {
                return Some(Err(()));
            }
            (len64.saturating_sub(n), len64 - 1)
        }
        // `A-`: from A to the end.
        (false, true) => (number(first)?, len64.saturating_sub(1)),
        (false, false) => {
            let (a, b) = (number(first)?, number(last)?);
            if b < a {
                return None;
            }
            (a, b.min(len64.saturating_sub(1)))
        }
        (true, true) => return None,
    };
    if start >= len64 {
        return Some(Err(()));
    }
    Some(Ok(start as usize..end as usize + 1))
}

/// The headers of a `304` from the entry's: no body, so no `Content-Length`.
pub fn not_modified_headers(headers: &mut HeaderMap) {
    headers.remove(header::CONTENT_LENGTH);
}

/// The headers of a `206` for `part` of a `len`-byte body.
pub fn part_headers(headers: &mut HeaderMap, part: &Range<usize>, len: usize) {
    let range = format!("bytes {}-{}/{len}", part.start, part.end - 1);
    if let Ok(v) = HeaderValue::from_str(&range) {
        headers.insert(header::CONTENT_RANGE, v);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(part.len()));
}

/// The headers of a `416` for a `len`-byte body.
pub fn unsatisfiable_headers(headers: &mut HeaderMap, len: usize) {
    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
        headers.insert(header::CONTENT_RANGE, v);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::{Duration, Instant};

    fn entry() -> Cached {
        let mut headers = HeaderMap::new();
        headers.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
        headers.insert(
            header::LAST_MODIFIED,
            HeaderValue::from_static("Tue, 14 Nov 2023 22:13:20 GMT"),
        );
        Cached {
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"0123456789"),
            stored_at: Instant::now(),
            fresh_for: Duration::from_secs(60),
            stale_for: Duration::ZERO,
        }
    }

    fn answer_to(pairs: &[(HeaderName, &'static str)]) -> Answer {
        let mut req = HeaderMap::new();
        for (n, v) in pairs {
            req.insert(n.clone(), HeaderValue::from_static(v));
        }
        answer(&entry(), Conditions::of(&req).as_deref())
    }

    #[test]
    fn validators_give_304() {
        use header::{IF_MODIFIED_SINCE as IMS, IF_NONE_MATCH as INM};
        assert_eq!(answer_to(&[]), Answer::Whole);
        assert_eq!(answer_to(&[(INM, "\"v1\"")]), Answer::NotModified);
        assert_eq!(answer_to(&[(INM, "\"x\", W/\"v1\"")]), Answer::NotModified);
        assert_eq!(answer_to(&[(INM, "*")]), Answer::NotModified);
        assert_eq!(answer_to(&[(INM, "\"v2\"")]), Answer::Whole);
        // If-None-Match decides alone when present.
        let later = "Wed, 15 Nov 2023 00:00:00 GMT";
        assert_eq!(answer_to(&[(INM, "\"v2\""), (IMS, later)]), Answer::Whole);
        assert_eq!(answer_to(&[(IMS, later)]), Answer::NotModified);
        assert_eq!(
            answer_to(&[(IMS, "Mon, 13 Nov 2023 00:00:00 GMT")]),
            Answer::Whole
        );
        assert_eq!(answer_to(&[(IMS, "yesterday")]), Answer::Whole);
    }

    #[test]
    fn one_range_gives_206_or_416() {
        use header::{IF_RANGE, RANGE};
        assert_eq!(answer_to(&[(RANGE, "bytes=0-3")]), Answer::Part(0..4));
        assert_eq!(answer_to(&[(RANGE, "bytes=7-")]), Answer::Part(7..10));
        assert_eq!(answer_to(&[(RANGE, "bytes=-3")]), Answer::Part(7..10));
        assert_eq!(answer_to(&[(RANGE, "bytes=-30")]), Answer::Part(0..10));
        assert_eq!(answer_to(&[(RANGE, "bytes=5-500")]), Answer::Part(5..10));
        assert_eq!(answer_to(&[(RANGE, "bytes=10-")]), Answer::Unsatisfiable);
        assert_eq!(answer_to(&[(RANGE, "bytes=-0")]), Answer::Unsatisfiable);
        for whole in [
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=3-1",
            "bytes=a-",
            "bytes=-",
        ] {
            assert_eq!(answer_to(&[(RANGE, whole)]), Answer::Whole, "{whole}");
        }
        assert_eq!(
            answer_to(&[(RANGE, "bytes=0-1"), (IF_RANGE, "\"v1\"")]),
            Answer::Part(0..2)
        );
        assert_eq!(
            answer_to(&[(RANGE, "bytes=0-1"), (IF_RANGE, "W/\"v1\"")]),
            Answer::Whole
        );
        assert_eq!(
            answer_to(&[
                (RANGE, "bytes=0-1"),
                (IF_RANGE, "Tue, 14 Nov 2023 22:13:20 GMT")
            ]),
            Answer::Part(0..2)
        );
        assert_eq!(
            answer_to(&[
                (RANGE, "bytes=0-1"),
                (IF_RANGE, "Tue, 14 Nov 2023 22:13:21 GMT")
            ]),
            Answer::Whole
        );
    }
}
