//! What may be cached and for how long (RFC 9111, the parts a shared cache in front of
//! an origin needs): request and response `Cache-Control`, `Expires`, `Age`,
//! cacheable status codes, `Vary`, and the cache key.
//!
//! Pure functions over headers; no state. Must not touch: the store, bodies.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode, Uri};

use crate::script::value::text_from_bytes;

/// The directives of one `Cache-Control` header set that matter here.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub stale_while_revalidate: Option<u64>,
    /// `must-revalidate` or `proxy-revalidate`: never served stale.
    pub must_revalidate: bool,
}

impl CacheControl {
    /// Parses every `Cache-Control` value of `headers`. Unknown directives are ignored;
    /// a malformed number makes its directive count as absent, except that a malformed
    /// `max-age` counts as 0 (stale), as RFC 9111 §4.2.1 asks.
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut cc = CacheControl::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(text) = value.to_str() else { continue };
            for directive in text.split(',') {
                let (name, arg) = match directive.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (directive.trim(), None),
                };
                let seconds = || arg.and_then(delta_seconds);
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => cc.no_store = true,
                    "no-cache" => cc.no_cache = true,
                    "private" => cc.private = true,
                    "public" => cc.public = true,
                    "max-age" => cc.max_age = Some(seconds().unwrap_or(0)),
                    "s-maxage" => cc.s_maxage = Some(seconds().unwrap_or(0)),
                    "stale-while-revalidate" => cc.stale_while_revalidate = seconds(),
                    "must-revalidate" | "proxy-revalidate" => cc.must_revalidate = true,
                    _ => {}
                }
            }
        }
        cc
    }
}

/// The largest delta-seconds value kept (RFC 9111 §1.2.2): a larger one, or one too
/// large to parse, counts as this (68 years), so sums of durations cannot overflow.
pub const MAX_DELTA_SECONDS: u64 = 1 << 31;

/// Delta-seconds (digits only; too large is [`MAX_DELTA_SECONDS`]).
fn delta_seconds(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // All digits: parsing fails only when the value overflows.
    Some(
        text.parse::<u64>()
            .map_or(MAX_DELTA_SECONDS, |n| n.min(MAX_DELTA_SECONDS)),
    )
}

/// How a request may use the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestUse {
    /// Look up, and store the response.
    Normal,
    /// Do not look up (the client asked for a fresh answer), but store the response.
    Refresh,
    /// Neither look up nor store.
    Bypass,
}

/// How a request may use the cache: only GET and HEAD are looked up; requests with
/// credentials or `no-store` bypass it; `no-cache` (or `Pragma: no-cache`) refreshes.
pub fn request_use(method: &Method, headers: &HeaderMap) -> RequestUse {
    if method != Method::GET && method != Method::HEAD {
        return RequestUse::Bypass;
    }
    if headers.contains_key(header::AUTHORIZATION) {
        return RequestUse::Bypass;
    }
    let cc = CacheControl::parse(headers);
    if cc.no_store {
        return RequestUse::Bypass;
    }
    let pragma_no_cache = headers
        .get_all(header::PRAGMA)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache"));
    if cc.no_cache || pragma_no_cache {
        return RequestUse::Refresh;
    }
    RequestUse::Normal
}

/// Status codes a response may be stored with (RFC 9110 §15.1 "heuristically
/// cacheable", minus 206: ranges are not stored).
pub fn cacheable_status(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// How long a stored response stays fresh counted from when the origin made it, how
/// old it already was when it arrived (its `Age`), and how long after its freshness
/// it may still be served while one request refreshes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    pub fresh_for: Duration,
    pub age: Duration,
    pub stale_for: Duration,
}

/// Why a response is not stored; `Ok` holds its freshness.
///
/// `default_ttl` applies only to responses that say nothing about freshness
/// (no `max-age`, `s-maxage` or `Expires`), like nginx's `proxy_cache_valid`.
pub fn storable(
    method: &Method,
    status: StatusCode,
    resp: &HeaderMap,
    default_ttl: Option<Duration>,
    now: SystemTime,
) -> Result<Freshness, &'static str> {
    if method != Method::GET {
        return Err("only GET responses are stored");
    }
    if !cacheable_status(status) {
        return Err("status not cacheable");
    }
    let cc = CacheControl::parse(resp);
    if cc.no_store {
        return Err("Cache-Control: no-store");
    }
    if cc.private {
        return Err("Cache-Control: private");
    }
    if cc.no_cache {
        return Err("Cache-Control: no-cache (revalidation is not supported)");
    }
    if resp.contains_key(header::SET_COOKIE) {
        return Err("Set-Cookie");
    }
    if vary_names(resp).is_none() {
        return Err("Vary: * (or a Vary that cannot be read)");
    }
    let lifetime = if let Some(s) = cc.s_maxage.or(cc.max_age) {
        Duration::from_secs(s)
    } else if let Some(expires) = resp.get(header::EXPIRES) {
        // An invalid Expires (e.g. "0") means already expired.
        let expires = expires
            .to_str()
            .ok()
            .and_then(|t| httpdate::parse_http_date(t).ok());
        let date = resp
            .get(header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|t| httpdate::parse_http_date(t).ok())
            .unwrap_or(now);
        expires
            .and_then(|e| e.duration_since(date).ok())
            .unwrap_or(Duration::ZERO)
    } else {
        match default_ttl {
            Some(ttl) => ttl,
            None => return Err("no freshness (max-age, s-maxage, Expires) and no ttl"),
        }
    };
    // The age the upstream (or a cache before it) reports. `Date` is not used to
    // guess an age: an origin whose clock is off would have nothing cached.
    let age = resp
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|t| delta_seconds(t.trim()))
        .map_or(Duration::ZERO, Duration::from_secs);
    if lifetime <= age {
        return Err("already stale");
    }
    Ok(Freshness {
        fresh_for: lifetime,
        age,
        // `must-revalidate` forbids serving it stale (RFC 9111 §5.2.2.2), whatever
        // `stale-while-revalidate` allows.
        stale_for: match cc.must_revalidate {
            true => Duration::ZERO,
            false => Duration::from_secs(cc.stale_while_revalidate.unwrap_or(0)),
        },
    })
}

/// The header names of `Vary`, lower-cased; `None` for `Vary: *` or a `Vary` that
/// cannot be read (never matches: storing it as not varying could serve one client's
/// variant to another).
pub fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for value in headers.get_all(header::VARY) {
        let text = value.to_str().ok()?;
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if token == "*" {
                return None;
            }
            let name = HeaderName::from_bytes(token.as_bytes()).ok()?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    Some(names)
}

/// The default key: scheme, host, path and query, and the upstream the request is
/// routed to (`https://example.com/a?b @app`); HEAD shares GET's entries. Without the
/// scheme an `http` -> `https` redirect would be served to `https` clients; without the
/// upstream, routes that choose the upstream by header or method would share entries.
pub fn default_key(scheme: &str, upstream: Option<&str>, uri: &Uri, headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    let upstream = upstream.unwrap_or("");
    let mut key = String::with_capacity(scheme.len() + host.len() + pq.len() + upstream.len() + 5);
    key.push_str(scheme);
    key.push_str("://");
    key.push_str(&host.to_ascii_lowercase());
    key.push_str(pq);
    if !upstream.is_empty() {
        key.push_str(" @");
        key.push_str(upstream);
    }
    key
}

/// The key of one variant: the primary key plus the request's values of the `Vary`
/// headers (absent and empty differ). A value that is not UTF-8 is written by the
/// scripts' rule ([`text_from_bytes`]) after a control character, which no header
/// value holds: distinct bytes never share a variant, not even with a UTF-8 value
/// spelled like their escapes.
pub fn variant_key(primary: &str, names: &[HeaderName], req: &HeaderMap) -> String {
    let mut key = String::from(primary);
    for name in names {
        key.push('\n');
        key.push_str(name.as_str());
        let mut values = req.get_all(name).iter().peekable();
        if values.peek().is_none() {
            key.push('!');
            continue;
        }
        key.push(':');
        for (i, v) in values.enumerate() {
            if i > 0 {
                key.push(',');
            }
            match std::str::from_utf8(v.as_bytes()) {
                Ok(text) => key.push_str(text),
                Err(_) => {
                    key.push('\u{1}');
                    key.push_str(&text_from_bytes(v.as_bytes()));
                }
            }
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    fn fresh(
        pairs: &[(&'static str, &'static str)],
        ttl: Option<u64>,
    ) -> Result<u64, &'static str> {
        storable(
            &Method::GET,
            StatusCode::OK,
            &headers(pairs),
            ttl.map(Duration::from_secs),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        )
        .map(|f| f.fresh_for.saturating_sub(f.age).as_secs())
    }

    /// How long a GET 200 with `Cache-Control: cc` may be served stale.
    fn stale_for(cc: &'static str) -> Result<Duration, &'static str> {
        let h = headers(&[("cache-control", cc)]);
        storable(&Method::GET, StatusCode::OK, &h, None, SystemTime::now()).map(|f| f.stale_for)
    }

    #[test]
    fn freshness_comes_from_s_maxage_then_max_age_then_expires_then_ttl() {
        assert_eq!(
            fresh(&[("cache-control", "max-age=60, s-maxage=30")], None),
            Ok(30)
        );
        assert_eq!(
            fresh(&[("cache-control", "public, max-age=60")], Some(5)),
            Ok(60)
        );
        assert_eq!(
            fresh(
                &[
                    ("date", "Tue, 14 Nov 2023 22:13:20 GMT"),
                    ("expires", "Tue, 14 Nov 2023 22:15:20 GMT")
                ],
                None
            ),
            Ok(120)
        );
        assert_eq!(fresh(&[], Some(7)), Ok(7));
        assert!(fresh(&[], None).is_err());
        assert_eq!(
            fresh(&[("cache-control", "max-age=60"), ("age", "50")], None),
            Ok(10)
        );
        assert!(fresh(&[("cache-control", "max-age=60"), ("age", "60")], None).is_err());
        assert!(fresh(&[("expires", "0")], Some(10)).is_err());
        // Values too large for a u64 are 2^31 seconds (they were 0: not stored).
        let huge = "max-age=99999999999999999999";
        assert_eq!(fresh(&[("cache-control", huge)], None), Ok(1 << 31));
        assert!(fresh(
            &[
                ("cache-control", "max-age=60"),
                ("age", "99999999999999999999")
            ],
            None
        )
        .is_err());
        let swr = "max-age=1, stale-while-revalidate=18446744073709551615";
        assert_eq!(stale_for(swr), Ok(Duration::from_secs(1 << 31)));
    }

    #[test]
    fn what_is_never_stored() {
        for cc in ["no-store", "private", "no-cache", "private, max-age=60"] {
            assert!(fresh(&[("cache-control", cc)], Some(10)).is_err(), "{cc}");
        }
        assert!(fresh(&[("set-cookie", "a=b")], Some(10)).is_err());
        assert!(fresh(&[("vary", "*")], Some(10)).is_err());
        // A Vary name that cannot be read is not taken as "varies by nothing".
        assert!(fresh(&[("vary", "accept, bad name")], Some(10)).is_err());
        let swr = "max-age=1, stale-while-revalidate=60, must-revalidate";
        assert_eq!(stale_for(swr), Ok(Duration::ZERO));
        let h = headers(&[("cache-control", "max-age=60")]);
        let now = SystemTime::now();
        assert!(storable(&Method::POST, StatusCode::OK, &h, None, now).is_err());
        assert!(storable(
            &Method::GET,
            StatusCode::INTERNAL_SERVER_ERROR,
            &h,
            None,
            now
        )
        .is_err());
        assert!(storable(&Method::GET, StatusCode::NOT_FOUND, &h, None, now).is_ok());
    }

    #[test]
    fn requests_that_bypass_or_refresh() {
        assert_eq!(request_use(&Method::GET, &headers(&[])), RequestUse::Normal);
        assert_eq!(
            request_use(&Method::POST, &headers(&[])),
            RequestUse::Bypass
        );
        assert_eq!(
            request_use(&Method::GET, &headers(&[("authorization", "Bearer x")])),
            RequestUse::Bypass
        );
        assert_eq!(
            request_use(&Method::GET, &headers(&[("cache-control", "no-cache")])),
            RequestUse::Refresh
        );
        assert_eq!(
            request_use(&Method::GET, &headers(&[("cache-control", "no-store")])),
            RequestUse::Bypass
        );
    }

    #[test]
    fn the_default_key_has_scheme_host_target_and_upstream() {
        let uri: Uri = "/a?b=1".parse().unwrap_or_default();
        let h = headers(&[("host", "Example.COM")]);
        assert_eq!(
            default_key("https", Some("app"), &uri, &h),
            "https://example.com/a?b=1 @app"
        );
        assert_ne!(
            default_key("http", Some("app"), &uri, &h),
            default_key("https", Some("app"), &uri, &h)
        );
        assert_eq!(
            default_key("http", None, &uri, &h),
            "http://example.com/a?b=1"
        );
    }

    #[test]
    fn variants_differ_by_vary_values() {
        let names =
            vary_names(&headers(&[("vary", "Accept-Encoding, X-Lang")])).unwrap_or_default();
        assert_eq!(names.len(), 2);
        let a = variant_key("k", &names, &headers(&[("accept-encoding", "gzip")]));
        let b = variant_key("k", &names, &headers(&[("accept-encoding", "br")]));
        let c = variant_key("k", &names, &headers(&[]));
        let d = variant_key("k", &names, &headers(&[("accept-encoding", "")]));
        assert!(a != b && a != c && c != d, "{a:?} {b:?} {c:?} {d:?}");
    }

    #[test]
    fn variants_differ_by_bytes_that_are_not_utf8() {
        let names = vary_names(&headers(&[("vary", "X-Lang")])).unwrap_or_default();
        let key = |value: &[u8]| {
            let mut h = HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_bytes(value) {
                h.insert("x-lang", v);
            }
            variant_key("k", &names, &h)
        };
        // Replaced by U+FFFD, all three were one variant; spelled out, the escape.
        let keys = [
            key(b"\xff"),
            key(b"\xfe"),
            key(b"\xe9"),
            key("\u{fffd}".as_bytes()),
            key(b"\\xff"),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
