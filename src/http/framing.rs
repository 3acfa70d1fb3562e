//! Request framing checks run before routing: hyper accepts some ambiguous shapes that
//! let a front end and a back end disagree on where a request ends (request smuggling).
//! Anything ambiguous is rejected with 400, and no request leaves with two framings.
//! So is a request target two hops could read differently: a `Host` other than
//! HTTP/2's `:authority` (or an HTTP/2 request with neither), or `*` for a method
//! other than `OPTIONS`.
//! Also the framing piece both HTTP/1.1 sides read the same way: `Content-Length`
//! values.

use http::{header, HeaderMap, Method, Uri, Version};

use super::error::ProxyError;

/// Rejects requests whose framing or `Host` is ambiguous.
///
/// - `Transfer-Encoding` must be a single `chunked` (not `chunked, chunked`, not
///   `gzip, chunked`, not two header lines), and never beside `Content-Length`.
/// - `Content-Length` must be one non-negative integer (repeated identical values are
///   tolerated, as RFC 9110 allows; different values are not).
/// - HTTP/1.1 requests need exactly one `Host` header.
pub fn check_request(version: Version, headers: &HeaderMap) -> Result<(), ProxyError> {
    // One pass over the map (a request has few headers; three lookups by name cost
    // more than walking them all).
    let mut encodings = 0usize;
    let mut chunked = false;
    let mut lengths = 0usize;
    let mut length: Result<Option<u64>, ProxyError> = Ok(None);
    let mut hosts = 0usize;
    let mut host_empty = false;
    let mut host_valid = true;
    for (name, value) in headers {
        if name == header::TRANSFER_ENCODING {
            encodings += 1;
            chunked = value.as_bytes().eq_ignore_ascii_case(b"chunked");
        } else if name == header::CONTENT_LENGTH {
            lengths += 1;
            if let Ok(prev) = length {
                length = content_length_value(value.as_bytes(), prev);
            }
        } else if name == header::HOST {
            hosts += 1;
            host_empty = value.is_empty();
            host_valid = is_host(value.as_bytes());
        }
    }
    if encodings > 1 {
        return Err(ProxyError::BadRequest(
            "more than one Transfer-Encoding header",
        ));
    }
    if encodings == 1 && !chunked {
        return Err(ProxyError::BadRequest(
            "Transfer-Encoding other than a single `chunked`",
        ));
    }
    if encodings == 1 && lengths > 0 {
        return Err(ProxyError::BadRequest(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    // RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 message means faulty framing (an
    // HTTP/1.0 hop behind the client may not have understood it).
    if encodings == 1 && version == Version::HTTP_10 {
        return Err(ProxyError::BadRequest(
            "Transfer-Encoding in an HTTP/1.0 request",
        ));
    }
    length?;
    // Two Hosts would let routing (the first) and an upstream (perhaps the last)
    // disagree on the site, whatever the version (nginx refuses them too).
    if hosts > 1 {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    if version == Version::HTTP_11 {
        match hosts {
            0 => return Err(ProxyError::BadRequest("missing Host header")),
            _ if host_empty => return Err(ProxyError::BadRequest("empty Host header")),
            _ => {}
        }
    }
    // RFC 9112 3.2: a Host that is not `host[:port]` is a 400. `good.example:80@evil`
    // was routed as `good.example` (the part before the last `:`) and sent upstream
    // whole, where a URL parser reads `evil` as the host.
    if !host_valid {
        return Err(ProxyError::BadRequest("invalid Host header"));
    }
    Ok(())
}

/// `value` is RFC 3986's `host [ ":" port ]`: a reg-name (unreserved, sub-delims and
/// `%`), an IPv4 address, or an IP literal in brackets; a port of digits only. (An
/// empty value passes here: whether it may be empty is the version's rule.)
fn is_host(value: &[u8]) -> bool {
    let (host, port) = match value.first() {
        Some(b'[') => match value.iter().position(|&b| b == b']') {
            Some(end) => {
                let literal = &value[1..end];
                if !literal
                    .iter()
                    .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
                {
                    return false;
                }
                (&value[..=end], &value[end + 1..])
            }
            None => return false,
        },
        _ => match value.iter().position(|&b| b == b':') {
            Some(colon) => (&value[..colon], &value[colon..]),
            None => (value, &value[value.len()..]),
        },
    };
    let name_ok = host.first() == Some(&b'[')
        || host.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'%'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                )
        });
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    name_ok && port_ok
}

/// Folds one `Content-Length` line into the value seen so far: each comma-separated
/// part must be a non-negative integer, and all must agree.
fn content_length_value(line: &[u8], mut value: Option<u64>) -> Result<Option<u64>, ProxyError> {
    for part in line.split(|b| *b == b',') {
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
    Ok(value)
}

/// Rejects request targets that hops could read differently.
///
/// - `*` (asterisk-form) is for `OPTIONS` only (RFC 9112 3.2.4).
/// - `host:port` (authority-form) is for `CONNECT` only (RFC 9112 3.2.3; nginx answers
///   400 too): any other target is origin-form (`/p`) or absolute-form
///   (`http://a.example/p`). (HTTP/2's `:path` is checked by the h2 library.)
/// - An absolute-form target (`GET http://a.example/p HTTP/1.1`) may not carry
///   userinfo (RFC 9110 4.2.4): `http://good.example:80@evil.example/` names
///   `evil.example` to a URL parser but was routed as `good.example`, and passwords
///   went upstream in `Host`. nginx answers 400 too.
/// - HTTP/2: `:authority` is the host (RFC 9113 8.3.1), and a request with neither
///   it nor a `Host` is malformed. `:authority` may not carry userinfo,
///   and a `Host` header beside it must name the same (case aside): a request whose
///   `Host` differs is malformed, lest routing and the upstream pick different sites.
///   With this passed, the request's host is its `:authority` (see `proxy`).
pub fn check_target(
    method: &Method,
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<(), ProxyError> {
    let path = uri.path();
    if !path.starts_with('/') {
        if path == "*" {
            if method != Method::OPTIONS {
                return Err(ProxyError::BadRequest(
                    "the target `*` is for OPTIONS requests only",
                ));
            }
        } else if uri.scheme().is_none() && method != Method::CONNECT {
            // Authority-form (`GET admin.internal:8080`, `POST evil`): the URI parser
            // reads a bare `host[:port]` as an authority, which was routed and sent
            // upstream as the request's host whatever `Host` said.
            return Err(ProxyError::BadRequest(
                "an authority-form target is for CONNECT requests only",
            ));
        }
    }
    let Some(authority) = uri.authority() else {
        // RFC 9113 8.3.1, RFC 9110 7.2: an HTTP/2 request names its host in
        // `:authority` or, failing that, `Host`. With neither it went upstream with the
        // upstream's own address for a host (nginx answers 400 too).
        if version == Version::HTTP_2
            && !headers.get_all(header::HOST).iter().any(|h| !h.is_empty())
        {
            return Err(ProxyError::BadRequest("neither :authority nor Host"));
        }
        return Ok(());
    };
    if version != Version::HTTP_2 {
        if authority.as_str().contains('@') {
            return Err(ProxyError::BadRequest("a request target with userinfo"));
        }
        return Ok(());
    }
    if authority.as_str().contains('@') {
        return Err(ProxyError::BadRequest(":authority with userinfo"));
    }
    for host in headers.get_all(header::HOST) {
        if !host
            .as_bytes()
            .eq_ignore_ascii_case(authority.as_str().as_bytes())
        {
            return Err(ProxyError::BadRequest("Host differs from :authority"));
        }
    }
    Ok(())
}

/// A `Content-Length` value as framing needs it on either side of the proxy (request
/// heads in `server::h1`, response heads in `upstream::h1`): digits only, and a
/// comma-separated list only when every value agrees. `None`: unusable.
pub fn parse_length(value: &[u8]) -> Option<u64> {
    // The usual shape, digits only, without splitting and trimming (19 digits cannot
    // overflow a u64).
    if !value.is_empty() && value.len() <= 19 && value.iter().all(u8::is_ascii_digit) {
        return Some(value.iter().fold(0, |n, b| n * 10 + u64::from(b - b'0')));
    }
    let text = std::str::from_utf8(value).ok()?;
    let mut result: Option<u64> = None;
    // `Content-Length: 5, 5` is allowed when every value agrees (RFC 9110 8.6).
    for part in text.split(',') {
        let part = part.trim();
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u64 = part.parse().ok()?;
        if result.is_some_and(|m| m != n) {
            return None;
        }
        result = Some(n);
    }
    result
}

/// The declared body length, once `check_request` has passed.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    let v = super::lookup::get(headers, &header::CONTENT_LENGTH)?;
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
    fn a_host_is_host_and_port_only() {
        for host in [
            "example.com",
            "example.com:8080",
            "example.com:",
            "127.0.0.1:9",
            "[::1]",
            "[::1]:443",
            "a_b-c.example",
            "xn--bcher-kva.example",
        ] {
            assert!(ok(&[("host", host)]), "{host}");
        }
        for host in [
            "good.example:80@evil.example",
            "user@evil.example",
            "good.example:x",
            "good.example:80:81",
            "a/b",
            "[::1",
            "[::1]x",
            "[evil.example]",
            "a b",
        ] {
            assert!(!ok(&[("host", host)]), "{host}");
        }
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

    fn target(method: Method, version: Version, uri: &str, host: Option<&'static str>) -> bool {
        let uri: Uri = uri.parse().expect("uri");
        let h = headers(host.map(|h| ("host", h)).as_slice());
        check_target(&method, version, &uri, &h).is_ok()
    }

    #[test]
    fn asterisk_is_for_options_only() {
        assert!(target(Method::OPTIONS, Version::HTTP_11, "*", Some("a")));
        assert!(!target(Method::GET, Version::HTTP_11, "*", Some("a")));
        assert!(!target(Method::POST, Version::HTTP_2, "*", None));
        assert!(target(Method::GET, Version::HTTP_11, "/*", Some("a")));
    }

    #[test]
    fn authority_form_is_for_connect_only() {
        for uri in ["admin.internal:8080", "admin.internal", "evil", "x:80"] {
            for method in [Method::GET, Method::POST, Method::OPTIONS, Method::HEAD] {
                assert!(
                    !target(method.clone(), Version::HTTP_11, uri, Some("a")),
                    "{method} {uri}"
                );
            }
            assert!(target(Method::CONNECT, Version::HTTP_11, uri, Some("a")));
        }
        assert!(target(
            Method::GET,
            Version::HTTP_11,
            "http://a.example",
            Some("a")
        ));
        assert!(target(
            Method::GET,
            Version::HTTP_11,
            "http://a.example/p",
            Some("a")
        ));
        assert!(target(Method::GET, Version::HTTP_11, "/p", Some("a")));
    }

    #[test]
    fn http2_host_must_be_its_authority() {
        let h2 = Version::HTTP_2;
        assert!(target(Method::GET, h2, "http://a.example/", None));
        assert!(target(
            Method::GET,
            h2,
            "http://a.example/",
            Some("A.Example")
        ));
        assert!(!target(
            Method::GET,
            h2,
            "http://a.example/",
            Some("b.example")
        ));
        assert!(!target(Method::GET, h2, "http://a.example/", Some("")));
        assert!(!target(
            Method::GET,
            h2,
            "http://a.example:81/",
            Some("a.example")
        ));
        assert!(!target(Method::GET, h2, "http://u@a.example/", None));
        assert!(!target(
            Method::GET,
            h2,
            "http://u:p@a.example/",
            Some("u:p@a.example")
        ));
        // Without `:authority`, `Host` is the host; HTTP/1.1 is settled in `server::h1`.
        assert!(target(Method::GET, h2, "/", Some("b.example")));
        // With neither, the request names no host at all.
        assert!(!target(Method::GET, h2, "/", None));
        assert!(!target(Method::GET, h2, "/", Some("")));
        assert!(target(Method::GET, Version::HTTP_10, "/", None));
        assert!(target(
            Method::GET,
            Version::HTTP_11,
            "/",
            Some("b.example")
        ));
    }

    #[test]
    fn lengths_parse_strictly() {
        assert_eq!(parse_length(b"12"), Some(12));
        assert_eq!(parse_length(b"7, 7"), Some(7));
        assert_eq!(parse_length(b"7, 8"), None);
        assert_eq!(parse_length(b"+7"), None);
        assert_eq!(parse_length(b""), None);
        assert_eq!(parse_length(b"0012"), Some(12));
        assert_eq!(
            parse_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        assert_eq!(parse_length(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_length(b"18446744073709551616"), None, "overflow");
        assert_eq!(parse_length(b" 7 "), Some(7));
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
