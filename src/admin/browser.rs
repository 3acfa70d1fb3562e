//! Keeps web pages away from the admin API. A page in a local user's browser can send
//! simple requests (`POST /reload`, a form post to `/config/repair`) to
//! `127.0.0.1:9901` without any preflight, and a page on a rebinding DNS name can read
//! answers as if it were the admin API's own origin. Neither can add an
//! `Authorization` header, so with `admin.api_key` set the key already refuses them;
//! without one this module does: a call that carries an `Origin` other than the admin
//! API's own is refused, and so is a `Host` that is a DNS name other than
//! `localhost` (what a rebinding page sends). Tools (curl, scripts) send neither.
//! Owns: the two rules. Must not touch: authentication (`admin::authorized`).

use http::{header, HeaderMap};

/// Why a call looks like it comes from a web page on another site, if it does.
pub fn refusal(headers: &HeaderMap, api_key_set: bool) -> Option<&'static str> {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if let Some(origin) = headers.get(header::ORIGIN) {
        let same = host.is_some_and(|h| {
            origin
                .to_str()
                .ok()
                .and_then(|o| o.strip_prefix("http://"))
                .is_some_and(|o| o.eq_ignore_ascii_case(h))
        });
        if !same {
            return Some("cross-origin calls to the admin API are refused");
        }
    }
    if api_key_set {
        return None;
    }
    match host {
        Some(h) if !is_address_or_localhost(h) => Some(
            "the admin API without admin.api_key answers only a Host that is an IP address \
             or localhost (a DNS name may be a rebinding web page)",
        ),
        _ => None,
    }
}

/// `h` (a `Host` value, perhaps with a port) is an IP address or `localhost`.
fn is_address_or_localhost(h: &str) -> bool {
    let name = match h.strip_prefix('[') {
        // `[::1]:9901`
        Some(rest) => {
            let Some((ip, after)) = rest.split_once(']') else {
                return false;
            };
            let port_ok = after.is_empty()
                || after
                    .strip_prefix(':')
                    .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            return port_ok && ip.parse::<std::net::Ipv6Addr>().is_ok();
        }
        None => h.rsplit_once(':').map_or(h, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                h
            }
        }),
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            let name = http::HeaderName::from_bytes(name.as_bytes()).expect("name");
            map.append(name, value.parse().expect("value"));
        }
        map
    }

    #[test]
    fn tools_and_the_admin_apis_own_pages_pass() {
        for pairs in [
            vec![],
            vec![("host", "127.0.0.1:9901")],
            vec![("host", "localhost:9901")],
            vec![("host", "LOCALHOST")],
            vec![("host", "[::1]:9901")],
            vec![("host", "10.1.2.3")],
            vec![
                ("host", "127.0.0.1:9901"),
                ("origin", "http://127.0.0.1:9901"),
            ],
        ] {
            assert_eq!(refusal(&headers(&pairs), false), None, "{pairs:?}");
        }
    }

    #[test]
    fn other_origins_and_dns_names_are_refused_without_a_key() {
        for pairs in [
            vec![
                ("host", "127.0.0.1:9901"),
                ("origin", "http://evil.example"),
            ],
            vec![("host", "127.0.0.1:9901"), ("origin", "null")],
            vec![("origin", "http://127.0.0.1:9901")],
            vec![("host", "rebind.attacker.example:9901")],
            vec![("host", "localhost.attacker.example")],
            vec![("host", "[::1]evil:9901")],
            vec![("host", "[::1]:")],
        ] {
            assert!(refusal(&headers(&pairs), false).is_some(), "{pairs:?}");
        }
        // With a key, a name is fine (a browser cannot send the key), an origin not.
        assert_eq!(
            refusal(&headers(&[("host", "admin.internal:9901")]), true),
            None
        );
        let cross = headers(&[
            ("host", "admin.internal"),
            ("origin", "http://evil.example"),
        ]);
        assert!(refusal(&cross, true).is_some());
    }
}
