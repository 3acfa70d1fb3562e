//! Unit tests of `ip_in`: parsing ranges, matching IPv4 and IPv6, IPv4-mapped
//! addresses and ranges, and what is not an address.

use super::*;

fn list(items: &[&str]) -> Value {
    Value::List(items.iter().map(|s| Value::str(*s)).collect())
}

/// `ip_in(ip, ranges)` as pcmod calls it with a list computed per request.
fn ip_in(ip: &str, ranges: &[&str]) -> bool {
    match call(&[Value::str(ip), list(ranges)], None) {
        Ok(Value::Bool(b)) => b,
        other => panic!("ip_in({ip:?}, {ranges:?}) = {other:?}"),
    }
}

#[test]
fn ipv4_cidrs_and_single_addresses() {
    let private = ["10.0.0.0/8", "172.16.0.0/12", "192.168.1.10"];
    assert!(ip_in("10.0.0.1", &private));
    assert!(ip_in("10.255.255.255", &private));
    assert!(ip_in("172.31.0.1", &private));
    assert!(!ip_in("172.32.0.1", &private));
    assert!(
        ip_in("192.168.1.10", &private),
        "a bare address is that host"
    );
    assert!(!ip_in("192.168.1.11", &private));
    assert!(!ip_in("11.0.0.1", &private));
    assert!(ip_in("8.8.8.8", &["0.0.0.0/0"]));
    assert!(!ip_in("10.0.0.1", &[]), "no ranges: in none");
}

#[test]
fn host_bits_in_a_range_are_ignored() {
    // `10.1.2.3/8` is 10.0.0.0/8, as nginx reads it.
    assert!(ip_in("10.200.0.1", &["10.1.2.3/8"]));
}

#[test]
fn ipv6_cidrs() {
    let ranges = ["2001:db8::/32", "::1"];
    assert!(ip_in("2001:db8::1", &ranges));
    assert!(ip_in("2001:db8:ffff::1", &ranges));
    assert!(!ip_in("2001:db9::1", &ranges));
    assert!(ip_in("::1", &ranges));
    assert!(!ip_in("::2", &ranges));
    assert!(!ip_in("127.0.0.1", &ranges), "IPv4 is not in IPv6 ranges");
    assert!(
        !ip_in("2001:db8::1", &["0.0.0.0/0"]),
        "nor IPv6 in IPv4 ones"
    );
}

#[test]
fn ipv4_mapped_addresses_match_ipv4_ranges() {
    // A dual-stack listener sees an IPv4 client as ::ffff:a.b.c.d.
    assert!(ip_in("::ffff:10.1.2.3", &["10.0.0.0/8"]));
    assert!(ip_in("::ffff:127.0.0.1", &["127.0.0.1"]));
    assert!(!ip_in("::ffff:11.1.2.3", &["10.0.0.0/8"]));
    // ... and the IPv6 ranges that hold them as written.
    assert!(ip_in("::ffff:10.1.2.3", &["::ffff:0:0/96"]));
    // A mapped range is the IPv4 range it stands for, also for an IPv4 address.
    assert!(ip_in("10.1.2.3", &["::ffff:10.0.0.0/104"]));
    assert!(!ip_in("11.1.2.3", &["::ffff:10.0.0.0/104"]));
    assert!(ip_in("10.1.2.3", &["::ffff:10.1.2.3"]));
    // `::/0` is every IPv6 address, not the IPv4 clients (as in nginx).
    assert!(!ip_in("10.1.2.3", &["::/0"]));
}

#[test]
fn what_is_not_an_address_is_in_no_range() {
    let all = ["0.0.0.0/0", "::/0"];
    for ip in [
        "",
        "x",
        "10.0.0",
        "10.0.0.1/32",
        "10.0.0.1:80",
        "[::1]",
        " 10.0.0.1",
        "256.0.0.1",
    ] {
        assert!(!ip_in(ip, &all), "{ip:?}");
    }
    for ip in [Value::Nil, Value::Int(167772161), Value::Bool(true)] {
        let got = call(&[ip.clone(), list(&all)], None);
        assert!(matches!(got, Ok(Value::Bool(false))), "{ip:?}: {got:?}");
    }
}

#[test]
fn a_bad_range_names_the_item() {
    let bad =
        Ranges::parse(&[Value::str("10.0.0.0/8"), Value::str("10.0.0/8")]).expect_err("refused");
    assert_eq!(bad.index, 1);
    assert!(
        bad.message
            .starts_with("\"10.0.0/8\" is not an IP address or CIDR range"),
        "{}",
        bad.message
    );
    for text in [
        "10.0.0.0/33",
        "2001:db8::/129",
        "example.com",
        "",
        "10.0.0.0/8 ",
    ] {
        assert!(Ranges::parse(&[Value::str(text)]).is_err(), "{text:?}");
    }
    let bad = Ranges::parse(&[Value::str("::1"), Value::Int(1)]).expect_err("refused");
    assert_eq!(bad.message, "item 2 is an int, not a string");
}

#[test]
fn a_bad_range_at_run_time_is_a_fault_naming_it() {
    // Also when an earlier range matches: a broken list is a broken list.
    let err = call(
        &[Value::str("10.0.0.1"), list(&["10.0.0.0/8", "nope"])],
        None,
    )
    .expect_err("a fault");
    assert_eq!(err.function, "ip_in");
    assert!(
        err.message
            .starts_with("argument `ranges`: \"nope\" is not"),
        "{}",
        err.message
    );
    let err = call(&[Value::str("10.0.0.1"), Value::Nil], None).expect_err("a fault");
    assert_eq!(
        err.message,
        "argument `ranges`: must be a list of strings, not nil"
    );
}

#[test]
fn prepared_ranges_are_used_as_they_are() {
    let ranges = Ranges::parse(&[Value::str("10.0.0.0/8")]).expect("parses");
    let prepared = Prepared::Ranges(ranges);
    // The list argument is not read again.
    let got = call(&[Value::str("10.9.9.9"), Value::Nil], Some(&prepared));
    assert!(matches!(got, Ok(Value::Bool(true))), "{got:?}");
}
