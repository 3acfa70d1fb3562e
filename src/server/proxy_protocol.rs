//! The PROXY protocol header (HAProxy's spec, versions 1 and 2) that an L4 frontend
//! with `proxy_protocol = 1|2` sends to the upstream before any client byte, so the
//! server behind learns the real client and the address it connected to.
//!
//! Owns: encoding one header. Must not touch: sockets (the caller writes the bytes).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// The 12-byte signature every v2 header starts with.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2, command PROXY.
const V2_PROXY: u8 = 0x21;
/// TCP over IPv4 / over IPv6.
const V2_TCP4: u8 = 0x11;
const V2_TCP6: u8 = 0x21;

/// The header for a connection from `client` to `local`, in `version` (1: text,
/// anything else: binary v2; config validation allows only 1 and 2).
pub fn header(version: u8, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (client, local) = same_family(client, local);
    if version == 1 {
        v1(client, local)
    } else {
        v2(client, local)
    }
}

/// Both addresses in one family, as both versions require: IPv4-mapped IPv6
/// addresses (a dual-stack listener) become IPv4, and a remaining mix is written as
/// IPv6 with the IPv4 side mapped.
fn same_family(client: SocketAddr, local: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (c, l) = (canon(client), canon(local));
    match (c.ip(), l.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => (c, l),
        _ => (as_v6(c), as_v6(l)),
    }
}

fn as_v6(a: SocketAddr) -> SocketAddr {
    let ip: Ipv6Addr = match a.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    SocketAddr::new(IpAddr::V6(ip), a.port())
}

fn v1(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        client.ip(),
        local.ip(),
        client.port(),
        local.port()
    )
    .into_bytes()
}

fn v2(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(V2_PROXY);
    match (client.ip(), local.ip()) {
        (IpAddr::V4(c), IpAddr::V4(l)) => {
            out.push(V2_TCP4);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&c.octets());
            out.extend_from_slice(&l.octets());
        }
        _ => {
            let (c, l) = (as_v6(client), as_v6(local));
            out.push(V2_TCP6);
            out.extend_from_slice(&36u16.to_be_bytes());
            for a in [c, l] {
                if let IpAddr::V6(v6) = a.ip() {
                    out.extend_from_slice(&v6.octets());
                }
            }
        }
    }
    out.extend_from_slice(&client.port().to_be_bytes());
    out.extend_from_slice(&local.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::header;

    fn addr(s: &str) -> SocketAddr {
        s.parse()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    #[test]
    fn v1_is_one_text_line() {
        let h = header(1, addr("192.0.2.1:5000"), addr("10.0.0.1:443"));
        assert_eq!(h, b"PROXY TCP4 192.0.2.1 10.0.0.1 5000 443\r\n");
        let h = header(1, addr("[2001:db8::1]:5000"), addr("[::1]:443"));
        assert_eq!(h, b"PROXY TCP6 2001:db8::1 ::1 5000 443\r\n");
    }

    #[test]
    fn mapped_addresses_become_ipv4_and_mixes_become_ipv6() {
        let h = header(1, addr("[::ffff:192.0.2.1]:1"), addr("10.0.0.1:2"));
        assert_eq!(h, b"PROXY TCP4 192.0.2.1 10.0.0.1 1 2\r\n");
        let h = header(1, addr("192.0.2.1:1"), addr("[2001:db8::2]:2"));
        assert_eq!(h, b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 1 2\r\n");
    }

    #[test]
    fn v2_ipv4_layout() {
        let h = header(2, addr("192.0.2.1:5000"), addr("10.0.0.1:443"));
        assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        assert_eq!(&h[14..16], &[0, 12]);
        assert_eq!(&h[16..20], &[192, 0, 2, 1]);
        assert_eq!(&h[20..24], &[10, 0, 0, 1]);
        assert_eq!(&h[24..26], &5000u16.to_be_bytes());
        assert_eq!(&h[26..28], &443u16.to_be_bytes());
        assert_eq!(h.len(), 28);
    }

    #[test]
    fn v2_ipv6_layout() {
        let h = header(2, addr("[2001:db8::1]:1"), addr("[::1]:2"));
        assert_eq!(h[13], 0x21);
        assert_eq!(&h[14..16], &[0, 36]);
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(h[16], 0x20);
        assert_eq!(h[47], 1);
        assert_eq!(&h[48..52], &[0, 1, 0, 2]);
    }
}
