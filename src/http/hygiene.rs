//! Header hygiene between hops: hop-by-hop headers (and those a peer names in
//! `Connection`) never cross the proxy, and requests gain `X-Forwarded-*` and `Via`.
//! `server.trusted_proxies` decides whether an incoming `X-Forwarded-For` is believed
//! when working out the client's address.

use std::net::IpAddr;

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Version};
use ipnet::IpNet;

/// Headers that describe one hop and are always dropped (RFC 9110 7.6.1, plus the
/// non-standard `Proxy-Connection` and `Keep-Alive`).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Headers a peer may not make us drop by naming them in `Connection`: removing them
/// would change the message's framing or destination.
const PROTECTED: [HeaderName; 3] = [header::HOST, header::CONTENT_LENGTH, header::CONTENT_TYPE];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes hop-by-hop headers, `Upgrade`, and every header named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .filter(|name| !PROTECTED.contains(name))
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// Whether `TE` lists `trailers` (the client accepts trailer fields).
pub fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
}

/// The client's address: the peer, or — when the peer is a trusted proxy — the
/// right-most address in `X-Forwarded-For` that is not itself trusted.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return peer;
    }
    let mut client = peer;
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(text) = value.to_str() else {
            return client;
        };
        for hop in text.rsplit(',') {
            let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                return client;
            };
            client = ip;
            if !is_trusted(ip, trusted) {
                return client;
            }
        }
    }
    client
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// What the forwarding headers are made from.
pub struct Forwarded<'a> {
    /// The address of the peer that connected to us.
    pub peer: IpAddr,
    /// Whether that peer is in `server.trusted_proxies`.
    pub peer_trusted: bool,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The request's host (Host header or `:authority`).
    pub host: Option<&'a HeaderValue>,
    /// The client's HTTP version (for `Via`).
    pub version: Version,
}

/// Adds `X-Forwarded-For` (appending the peer), `X-Forwarded-Proto`,
/// `X-Forwarded-Host` (believed from a trusted peer, set otherwise) and `Via`.
pub fn add_forwarding(headers: &mut HeaderMap, fwd: &Forwarded<'_>) {
    append_xff(headers, fwd.peer);
    if !(fwd.peer_trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(fwd.scheme),
        );
    }
    if !(fwd.peer_trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        match fwd.host {
            Some(host) => {
                headers.insert(X_FORWARDED_HOST.clone(), host.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
    headers.append(header::VIA, via_value(fwd.version));
}

fn append_xff(headers: &mut HeaderMap, peer: IpAddr) {
    let existing: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let value = if existing.is_empty() {
        peer.to_string()
    } else {
        format!("{}, {}", existing.join(", "), peer)
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

fn via_value(version: Version) -> HeaderValue {
    HeaderValue::from_static(match version {
        Version::HTTP_09 => "0.9 proxycache",
        Version::HTTP_10 => "1.0 proxycache",
        Version::HTTP_2 => "2 proxycache",
        Version::HTTP_3 => "3 proxycache",
        _ => "1.1 proxycache",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret, host"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("host", HeaderValue::from_static("a"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("connection").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get("x-secret").is_none());
        assert!(h.get("te").is_none());
        assert_eq!(h["host"], "a");
        assert_eq!(h["x-keep"], "1");
    }

    #[test]
    fn client_ip_believes_xff_only_from_trusted_peers() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.2.3.4, 10.0.0.5"),
        );
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap_or_default()];
        assert_eq!(client_ip(ip("10.0.0.9"), &h, &trusted), ip("1.2.3.4"));
        assert_eq!(client_ip(ip("8.8.8.8"), &h, &trusted), ip("8.8.8.8"));
        assert_eq!(client_ip(ip("10.0.0.9"), &h, &[]), ip("10.0.0.9"));
    }

    #[test]
    fn forwarding_headers_are_added() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let host = HeaderValue::from_static("example.com");
        let fwd = Forwarded {
            peer: ip("127.0.0.1"),
            peer_trusted: false,
            scheme: "http",
            host: Some(&host),
            version: Version::HTTP_11,
        };
        add_forwarding(&mut h, &fwd);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert_eq!(h["via"], "1.1 proxycache");
    }
}
