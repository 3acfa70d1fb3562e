//! Request framing checks run before routing: hyper accepts some ambiguous shapes that
//! let a front end and a back end disagree on where a request ends (request smuggling).
//! Anything ambiguous is rejected with 400, and no request leaves with two framings.

use http::{header, HeaderMap, Version};

use super::error::ProxyError;

/// Rejects requests whose framing or `Host` is ambiguous.
///
/// - `Transfer-Encoding` must be a single `chunked` (not `chunked, chunked`, not
///   `gzip, chunked`, not two header lines), and never beside `Content-Length`.
/// - `Content-Length` must be one non-negative integer (repeated identical values are
///   tolerated, as RFC 9110 allows; different values are not).
/// - HTTP/1.1 requests need exactly one `Host` header.
pub fn check_request(version: Version, headers: &HeaderMap) -> Result<(), ProxyError> {
    check_transfer_encoding(headers)?;
    check_content_length(headers)?;
    if version == Version::HTTP_11 {
        let mut hosts = headers.get_all(header::HOST).iter();
        match (hosts.next(), hosts.next()) {
            (None, _) => return Err(ProxyError::BadRequest("missing Host header")),
            (Some(_), Some(_)) => return Err(ProxyError::BadRequest("more than one Host header")),
            (Some(h), None) if h.is_empty() => {
                return Err(ProxyError::BadRequest("empty Host header"))
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_transfer_encoding(headers: &HeaderMap) -> Result<(), ProxyError> {
    let mut te = headers.get_all(header::TRANSFER_ENCODING).iter();
    let Some(first) = te.next() else {
        return Ok(());
    };
    if te.next().is_some() {
        return Err(ProxyError::BadRequest(
            "more than one Transfer-Encoding header",
        ));
    }
    if !first.as_bytes().eq_ignore_ascii_case(b"chunked") {
        return Err(ProxyError::BadRequest(
            "Transfer-Encoding other than a single `chunked`",
        ));
    }
    if headers.contains_key(header::CONTENT_LENGTH) {
        return Err(ProxyError::BadRequest(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    Ok(())
}

fn check_content_length(headers: &HeaderMap) -> Result<(), ProxyError> {
    let mut value: Option<u64> = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) || part.len() > 19 {
                return Err(ProxyError::BadRequest("malformed Content-Length"));
            }
            let n = part
                .iter()
                .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
            match value {
                Some(prev) if prev != n => {
                    return Err(ProxyError::BadRequest("conflicting Content-Length values"))
                }
                _ => value = Some(n),
            }
        }
    }
    Ok(())
}

/// The declared body length, once `check_request` has passed.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get(header::CONTENT_LENGTH)?;
    let first = v.as_bytes().split(|b| *b == b',').next()?;
    std::str::from_utf8(first).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn ok(pairs: &[(&'static str, &'static str)]) -> bool {
        check_request(Version::HTTP_11, &headers(pairs)).is_ok()
    }

    #[test]
    fn plain_requests_pass() {
        assert!(ok(&[("host", "a")]));
        assert!(ok(&[("host", "a"), ("content-length", "10")]));
        assert!(ok(&[("host", "a"), ("transfer-encoding", "chunked")]));
        assert!(ok(&[("host", "a"), ("transfer-encoding", "Chunked")]));
        assert!(ok(&[
            ("host", "a"),
            ("content-length", "5"),
            ("content-length", "5")
        ]));
    }

    #[test]
    fn ambiguous_framing_is_rejected() {
        assert!(!ok(&[
            ("host", "a"),
            ("transfer-encoding", "chunked, chunked")
        ]));
        assert!(!ok(&[
            ("host", "a"),
            ("transfer-encoding", "gzip, chunked")
        ]));
        assert!(!ok(&[
            ("host", "a"),
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "chunked")
        ]));
        assert!(!ok(&[
            ("host", "a"),
            ("transfer-encoding", "chunked"),
            ("content-length", "3")
        ]));
        assert!(!ok(&[
            ("host", "a"),
            ("content-length", "5"),
            ("content-length", "6")
        ]));
        assert!(!ok(&[("host", "a"), ("content-length", "5, 6")]));
        assert!(!ok(&[("host", "a"), ("content-length", "-1")]));
        assert!(!ok(&[("host", "a"), ("content-length", "0x10")]));
    }

    #[test]
    fn host_is_required_once_on_http11() {
        assert!(!ok(&[]));
        assert!(!ok(&[("host", "a"), ("host", "b")]));
        assert!(check_request(Version::HTTP_10, &HeaderMap::new()).is_ok());
        assert!(check_request(Version::HTTP_2, &HeaderMap::new()).is_ok());
    }

    #[test]
    fn content_length_reads_the_value() {
        assert_eq!(
            content_length(&headers(&[("content-length", "42")])),
            Some(42)
        );
        assert_eq!(content_length(&HeaderMap::new()), None);
    }
}
