//! Route matching: the first `[[routes]]` entry whose host, path prefix, methods and
//! headers all match wins; no match is a 404.

use http::{HeaderMap, HeaderValue, Method};

use crate::config::RouteConfig;

/// The routes of a generation, in file order.
#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<RouteConfig>,
}

impl Router {
    /// A router over `routes` (already validated).
    pub fn new(routes: Vec<RouteConfig>) -> Self {
        Router { routes }
    }

    /// The first route matching the request, if any. `host`: the Host header or
    /// `:authority` (a port on it is ignored).
    pub fn find(
        &self,
        method: &Method,
        host: Option<&HeaderValue>,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<&RouteConfig> {
        self.find_index(method, host, path, headers).map(|(_, r)| r)
    }

    /// Like [`Router::find`], with the route's position in `[[routes]]` (its label in
    /// the metrics).
    pub fn find_index(
        &self,
        method: &Method,
        host: Option<&HeaderValue>,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<(usize, &RouteConfig)> {
        // The host name is worked out only for the first route that asks for one
        // (most configs have none: a catch-all route pays nothing for it).
        let mut name: Option<Option<&str>> = None;
        self.routes.iter().enumerate().find(|(_, r)| {
            if let Some(want) = &r.host {
                let host =
                    *name.get_or_insert_with(|| host.and_then(|h| h.to_str().ok()).map(strip_port));
                if !host.is_some_and(|h| h.eq_ignore_ascii_case(want)) {
                    return false;
                }
            }
            matches(r, method, path, headers)
        })
    }
}

/// Whether route `r` matches, its host aside.
fn matches(r: &RouteConfig, method: &Method, path: &str, headers: &HeaderMap) -> bool {
    if let Some(prefix) = &r.path_prefix {
        if !path.starts_with(prefix.as_str()) {
            return false;
        }
    }
    if !r.methods.is_empty() && !r.methods.contains(method) {
        return false;
    }
    r.headers.iter().all(|(name, value)| {
        headers
            .get_all(name)
            .iter()
            .any(|v| v.as_bytes() == value.as_bytes())
    })
}

/// `example.com:8080` -> `example.com`; `[::1]:80` -> `[::1]`.
fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;

    fn route(
        host: Option<&str>,
        prefix: Option<&str>,
        methods: &[Method],
        upstream: usize,
    ) -> RouteConfig {
        RouteConfig {
            host: host.map(str::to_owned),
            path_prefix: prefix.map(str::to_owned),
            methods: methods.to_vec(),
            headers: vec![],
            upstream,
        }
    }

    #[test]
    fn first_match_wins_on_every_criterion() {
        let mut canary = route(None, Some("/api/"), &[], 3);
        canary
            .headers
            .push((HeaderName::from_static("x-canary"), "1".into()));
        let r = Router::new(vec![
            canary,
            route(Some("api.example.com"), Some("/api/"), &[Method::GET], 0),
            route(None, Some("/api/"), &[], 1),
            route(None, None, &[], 2),
        ]);
        let h = HeaderMap::new();
        let pick = |m: &Method, host: Option<&str>, path: &str, h: &HeaderMap| {
            let host = host.map(|s| HeaderValue::from_str(s).expect("a host value"));
            r.find(m, host.as_ref(), path, h).map(|r| r.upstream)
        };
        assert_eq!(
            pick(&Method::GET, Some("API.example.com:8080"), "/api/x", &h),
            Some(0)
        );
        assert_eq!(
            pick(&Method::POST, Some("api.example.com"), "/api/x", &h),
            Some(1)
        );
        assert_eq!(pick(&Method::GET, Some("other"), "/api/x", &h), Some(1));
        assert_eq!(pick(&Method::GET, None, "/", &h), Some(2));
        let mut h2 = HeaderMap::new();
        h2.insert("x-canary", HeaderValue::from_static("1"));
        assert_eq!(pick(&Method::GET, None, "/api/x", &h2), Some(3));
        assert_eq!(
            Router::new(vec![])
                .find(&Method::GET, None, "/", &h)
                .map(|r| r.upstream),
            None
        );
    }

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("a.com:80"), "a.com");
        assert_eq!(strip_port("a.com"), "a.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }
}
