//! The head of an answer on an HTTP/2 stream, made to agree with its body before hyper
//! sends it. HTTP/2 frames a body itself, but a client checks what `content-length`
//! says: a second field, a value that is not one number, a length on a 1xx or 204, or
//! DATA that does not add up to it make the response malformed (RFC 9113 8.1.1), and
//! curl and nghttp2 reset the stream with `PROTOCOL_ERROR`. An upstream's lines reach
//! the header map as it sent them, and a module's `respond` or `set resp.status` may
//! have put another status over them: `server::h1` writes an HTTP/1.1 head by the
//! same rules (`write_response`), these apply them to the map hyper is handed.

use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body::Body;

use crate::http::framing::parse_length;
use crate::proxy::completion::ResponseBody;

/// Makes `resp`'s `content-length` and body agree, for an HTTP/2 stream
/// (`head_request`: the answer to a HEAD; hyper sends whatever body it is handed).
///
/// - 1xx and 204: no `content-length` and no body (RFC 9110 8.6, 15.3.5).
/// - HEAD and 304: no body, and the one usable length the head had (the length a GET
///   would get, which nginx sends too); a HEAD answer without one gets its body's size
///   when that is known (hyper gives one only to a body it is to send).
/// - Any other: at most one `content-length`, and only when it is the body's exact
///   size. Otherwise none: the DATA frames say where the body ends, and hyper writes
///   the exact size itself when the body knows it.
pub(crate) fn frame_answer(resp: &mut Response<ResponseBody>, head_request: bool) {
    let body = resp.body();
    let ended = body.is_end_stream();
    let exact = if ended {
        None
    } else {
        body.size_hint().exact()
    };
    let status = resp.status();
    if !frame_head(status, resp.headers_mut(), head_request, ended, exact) {
        resp.body_mut().discard();
    }
}

/// `frame_answer` on the head alone (`ended`: the body has nothing to send; `exact`:
/// its size when known and not ended). `false`: the body must not be sent.
fn frame_head(
    status: StatusCode,
    headers: &mut HeaderMap,
    head_request: bool,
    ended: bool,
    exact: Option<u64>,
) -> bool {
    if status.is_informational() || status == StatusCode::NO_CONTENT {
        headers.remove(CONTENT_LENGTH);
        return false;
    }
    if head_request || status == StatusCode::NOT_MODIFIED {
        if one_length(headers).is_none() && head_request {
            if let Some(len) = exact {
                headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
            }
        }
        return false;
    }
    let exact = if ended { Some(0) } else { exact };
    // The usual head, one length that is the body's (or none), is left as it is: one
    // lookup.
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    let keep = match (values.next(), values.next()) {
        (None, _) => true,
        (Some(value), None) => exact.is_some() && plain_length(value) == exact,
        _ => false,
    };
    if !keep {
        headers.remove(CONTENT_LENGTH);
    }
    true
}

/// Leaves at most one `content-length` in `headers`, as one number: the first value
/// that is usable (as `server::h1` reads it: `5, 5` is 5), or none when no value is.
fn one_length(headers: &mut HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    let first = values.next()?;
    if values.next().is_none() {
        if let Some(n) = plain_length(first) {
            return Some(n);
        }
    }
    let declared = headers
        .get_all(CONTENT_LENGTH)
        .iter()
        .find_map(|v| parse_length(v.as_bytes()));
    match declared {
        Some(n) => headers.insert(CONTENT_LENGTH, HeaderValue::from(n)),
        None => headers.remove(CONTENT_LENGTH),
    };
    declared
}

/// A `content-length` value that is one number, digits only (what HTTP/2 clients
/// accept); `None` for a list, however equal its parts.
fn plain_length(value: &HeaderValue) -> Option<u64> {
    let bytes = value.as_bytes();
    if bytes.iter().all(u8::is_ascii_digit) {
        parse_length(bytes)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lengths left and whether the body goes, for a body of `body` bytes
    /// (`None`: of unknown size).
    fn framed(
        status: u16,
        lengths: &[&'static str],
        body: Option<u64>,
        head: bool,
    ) -> (Vec<String>, bool) {
        let mut headers = HeaderMap::new();
        for l in lengths {
            headers.append(CONTENT_LENGTH, HeaderValue::from_static(l));
        }
        let status = StatusCode::from_u16(status).expect("a status");
        let ended = body == Some(0);
        let exact = body.filter(|n| *n > 0);
        let goes = frame_head(status, &mut headers, head, ended, exact);
        let lengths = headers
            .get_all(CONTENT_LENGTH)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        (lengths, goes)
    }

    fn one(n: &str) -> Vec<String> {
        vec![n.to_owned()]
    }

    #[test]
    fn bodiless_statuses_carry_no_length_and_no_body() {
        for status in [204, 100] {
            assert_eq!(framed(status, &["5"], Some(5), false), (vec![], false));
            assert_eq!(framed(status, &["5", "5"], Some(0), true), (vec![], false));
        }
    }

    #[test]
    fn head_and_304_keep_one_usable_length_and_no_body() {
        assert_eq!(framed(304, &["100"], Some(0), false), (one("100"), false));
        assert_eq!(framed(304, &["2, 2"], Some(0), false), (one("2"), false));
        assert_eq!(framed(304, &["x", "7"], Some(0), false), (one("7"), false));
        assert_eq!(framed(304, &[], Some(5), false), (vec![], false));
        assert_eq!(framed(200, &["2", "2"], Some(0), true), (one("2"), false));
        // A HEAD answer without a length: its body's, when known.
        assert_eq!(framed(200, &[], Some(5), true), (one("5"), false));
        assert_eq!(framed(200, &[], None, true), (vec![], false));
    }

    #[test]
    fn other_statuses_keep_a_length_only_when_it_is_the_bodys() {
        assert_eq!(framed(200, &["2"], Some(2), false), (one("2"), true));
        assert_eq!(framed(200, &[], Some(2), false), (vec![], true));
        for lengths in [&["2", "2"][..], &["2, 2"], &["3"], &["x"]] {
            assert_eq!(
                framed(200, lengths, Some(2), false),
                (vec![], true),
                "{lengths:?}"
            );
        }
        // A body of unknown size: no length can be vouched for.
        assert_eq!(framed(200, &["2"], None, false), (vec![], true));
        // A 304 made a 200: the promised length has no body behind it.
        assert_eq!(framed(200, &["100"], Some(0), false), (vec![], true));
        assert_eq!(framed(200, &["0"], Some(0), false), (one("0"), true));
    }
}
