//! Header hygiene between hops: hop-by-hop headers (and those a peer names in
//! `Connection`) never cross the proxy, and requests gain `X-Forwarded-*` and `Via`.
//! `server.trusted_proxies` decides whether an incoming `X-Forwarded-For` is believed
//! when working out the client's address.

use std::net::IpAddr;

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Version};
use ipnet::IpNet;

/// Headers a peer may not make us drop by naming them in `Connection`: removing them
/// would change the message's framing or destination.
const PROTECTED: [HeaderName; 3] = [header::HOST, header::CONTENT_LENGTH, header::CONTENT_TYPE];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes hop-by-hop headers, `Upgrade`, and every header named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names (no hashing) decides.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let mut doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .collect();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for token in value.split(',').map(str::trim) {
            // `close` and `keep-alive` are options, not (or not only) header names.
            if token.is_empty()
                || token.eq_ignore_ascii_case("close")
                || token.eq_ignore_ascii_case("keep-alive")
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                if !is_hop_by_hop(&name) && !PROTECTED.contains(&name) {
                    doomed.push(name);
                }
            }
        }
    }
    for name in doomed {
        headers.remove(name);
    }
}

/// Whether `name` describes one hop and is always dropped (RFC 9110 7.6.1, plus the
/// non-standard `Proxy-Connection` and `Keep-Alive`, `Upgrade`, and `HTTP2-Settings`,
/// which only means something with `Upgrade: h2c` on the hop it came over, RFC 7540
/// 3.2.1).
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "http2-settings"
    )
}

/// Joins several `Cookie` fields into one with `"; "`: an HTTP/2 client may send each
/// cookie as a field of its own, and they are one header (RFC 9113 8.2.3), the one
/// line an HTTP/1.1 server reads. Done to an HTTP/2 request on arrival, so everything
/// after sees one value. One field or none: left alone, at the cost of one lookup.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let mut joined = bytes::BytesMut::new();
    for (i, v) in headers.get_all(header::COOKIE).iter().enumerate() {
        if i > 0 {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    // Valid field values joined with "; " are a valid field value.
    if let Ok(v) = HeaderValue::from_maybe_shared(joined.freeze()) {
        headers.insert(header::COOKIE, v);
    }
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
    /// The address of the peer that connected to us, as a header value (made once per
    /// connection: formatting an address costs more than the rest of this module).
    pub peer: &'a HeaderValue,
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
    Forwarding::new(fwd).apply(headers);
}

fn append_xff(headers: &mut HeaderMap, peer: &HeaderValue) {
    let existing: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if existing.is_empty() {
        headers.insert(X_FORWARDED_FOR.clone(), peer.clone());
        return;
    }
    let value = format!(
        "{}, {}",
        existing.join(", "),
        peer.to_str().unwrap_or_default()
    );
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

/// The forwarding headers of one upstream request, kept apart from its header map so
/// the HTTP/1.1 client can write them straight into the request head (see
/// `upstream::h1`): the same result as [`add_forwarding`], without four map inserts.
#[derive(Debug, Clone)]
pub struct Forwarding {
    peer: HeaderValue,
    peer_trusted: bool,
    scheme: &'static str,
    host: Option<HeaderValue>,
    via: HeaderValue,
    /// The response head may come back as received (see `http::RawHead`).
    pass_response_head: bool,
}

impl Forwarding {
    /// The spec for `fwd`.
    pub fn new(fwd: &Forwarded<'_>) -> Forwarding {
        Forwarding {
            peer: fwd.peer.clone(),
            peer_trusted: fwd.peer_trusted,
            scheme: fwd.scheme,
            host: fwd.host.cloned(),
            via: via_value(fwd.version),
            pass_response_head: false,
        }
    }

    /// Lets the response head come back as received, with no header map, when it
    /// needs no hygiene: for a caller whose response goes to the client unread.
    pub fn passing_response_head(mut self, pass: bool) -> Forwarding {
        self.pass_response_head = pass;
        self
    }

    /// Whether the response head may come back as received.
    pub fn passes_response_head(&self) -> bool {
        self.pass_response_head
    }

    /// Adds the forwarding headers to `headers` (see [`add_forwarding`]).
    pub fn apply(&self, headers: &mut HeaderMap) {
        append_xff(headers, &self.peer);
        if !(self.peer_trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
            headers.insert(
                X_FORWARDED_PROTO.clone(),
                HeaderValue::from_static(self.scheme),
            );
        }
        if !(self.peer_trusted && headers.contains_key(&X_FORWARDED_HOST)) {
            match &self.host {
                Some(host) => {
                    headers.insert(X_FORWARDED_HOST.clone(), host.clone());
                }
                None => {
                    headers.remove(&X_FORWARDED_HOST);
                }
            }
        }
        headers.append(header::VIA, self.via.clone());
    }

    /// Writes the request's headers as `name: value` lines into `out` with the
    /// forwarding headers applied exactly as [`add_forwarding`] would: incoming
    /// `X-Forwarded-For` values joined in front of the peer, `X-Forwarded-Proto` and
    /// `-Host` kept only from a trusted peer, our `Via` after any earlier ones.
    /// `skip` names headers not to copy at all.
    pub fn write_head(
        &self,
        headers: &HeaderMap,
        skip: impl Fn(&HeaderName) -> bool,
        out: &mut bytes::BytesMut,
    ) {
        let mut xff: Vec<&[u8]> = Vec::new();
        let (mut saw_proto, mut saw_host) = (false, false);
        for (name, value) in headers {
            if skip(name) {
                continue;
            }
            match name.as_str() {
                "x-forwarded-for" => {
                    if value.to_str().is_ok() {
                        xff.push(value.as_bytes());
                    }
                    continue;
                }
                "x-forwarded-proto" if !self.peer_trusted => continue,
                "x-forwarded-proto" => saw_proto = true,
                "x-forwarded-host" if !self.peer_trusted => continue,
                "x-forwarded-host" => saw_host = true,
                _ => {}
            }
            line(out, name.as_str().as_bytes(), value.as_bytes());
        }
        out.extend_from_slice(b"x-forwarded-for: ");
        for v in &xff {
            out.extend_from_slice(v);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(self.peer.as_bytes());
        out.extend_from_slice(b"\r\n");
        if !saw_proto {
            line(out, b"x-forwarded-proto", self.scheme.as_bytes());
        }
        if let (false, Some(host)) = (saw_host, &self.host) {
            line(out, b"x-forwarded-host", host.as_bytes());
        }
        line(out, b"via", self.via.as_bytes());
    }
}

fn line(out: &mut bytes::BytesMut, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `ip` as a header value (for [`Forwarded::peer`]).
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(ip.to_string()))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

fn via_value(version: Version) -> HeaderValue {
    // Made at compile time: `from_static` outside a const checks every byte each call.
    const VIA_09: HeaderValue = HeaderValue::from_static("0.9 proxycache");
    const VIA_10: HeaderValue = HeaderValue::from_static("1.0 proxycache");
    const VIA_11: HeaderValue = HeaderValue::from_static("1.1 proxycache");
    const VIA_2: HeaderValue = HeaderValue::from_static("2 proxycache");
    const VIA_3: HeaderValue = HeaderValue::from_static("3 proxycache");
    match version {
        Version::HTTP_09 => VIA_09,
        Version::HTTP_10 => VIA_10,
        Version::HTTP_2 => VIA_2,
        Version::HTTP_3 => VIA_3,
        _ => VIA_11,
    }
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
        let peer = ip_value(ip("127.0.0.1"));
        let fwd = Forwarded {
            peer: &peer,
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

    /// Writing the forwarding headers into a head gives the same lines as adding them
    /// to the map, for every mix of incoming headers and trust.
    #[test]
    fn written_forwarding_matches_the_map() {
        let peer = ip_value(ip("10.1.2.3"));
        let host = HeaderValue::from_static("example.com");
        let incoming: [&[(&str, &str)]; 5] = [
            &[],
            &[
                ("x-forwarded-for", "1.1.1.1"),
                ("x-forwarded-for", "2.2.2.2"),
            ],
            &[
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "orig.example"),
            ],
            &[("via", "1.0 edge"), ("x-other", "o")],
            &[
                ("x-forwarded-for", "3.3.3.3"),
                ("x-forwarded-host", "h"),
                ("via", "2 cdn"),
            ],
        ];
        for trusted in [false, true] {
            for with_host in [false, true] {
                for hs in incoming {
                    let mut h = HeaderMap::new();
                    for (k, v) in hs {
                        h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
                    }
                    let fwd = Forwarding::new(&Forwarded {
                        peer: &peer,
                        peer_trusted: trusted,
                        scheme: "http",
                        host: with_host.then_some(&host),
                        version: Version::HTTP_11,
                    });
                    let mut mapped = h.clone();
                    fwd.apply(&mut mapped);
                    let mut want: Vec<String> = mapped
                        .iter()
                        .map(|(k, v)| format!("{}: {}", k, v.to_str().unwrap_or("?")))
                        .collect();
                    let mut out = bytes::BytesMut::new();
                    fwd.write_head(&h, |_| false, &mut out);
                    let text = String::from_utf8_lossy(&out).into_owned();
                    let mut got: Vec<String> = text
                        .split("\r\n")
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned)
                        .collect();
                    want.sort();
                    got.sort();
                    assert_eq!(got, want, "trusted={trusted} host={with_host} in={hs:?}");
                }
            }
        }
    }
}
