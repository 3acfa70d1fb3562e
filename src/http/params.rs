//! A request's query parameters and cookies as modules read them (pcmod's
//! `$req.query[...]`/`$req.cookie[...]`, Lua's `req:query_param`/`req:cookie`), as
//! bytes: a percent-decoded parameter may be any bytes (`%ff`), and a client may send
//! any byte in a `Cookie` (a browser sends a Latin-1 or UTF-8 value as it is).
//!
//! Read as text, a `Cookie` with one non-ASCII byte hid every cookie in it, and a
//! decoded `%ff` reached Lua as the text `\xff`. Here nothing is text yet: pcmod makes
//! text of the result by its one rule (`script::value::text_from_bytes`), Lua takes the
//! bytes (its strings are bytes, as OpenResty's `ngx.var.cookie_*` and
//! `get_uri_args`). Owns: splitting, decoding and matching names. Must not touch: how a
//! script represents the bytes.

use std::borrow::Cow;

use http::{header, HeaderMap};

/// The first parameter of `query` whose percent-decoded name `name` accepts, decoded
/// (`+` is a space); `None` when there is none. A parameter without `=` has the
/// value `""`.
pub fn query_param<'q>(query: &'q str, name: impl Fn(&[u8]) -> bool) -> Option<Cow<'q, [u8]>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        name(&percent_decode(k)).then(|| percent_decode(v))
    })
}

/// The value of the first cookie `name` accepts, in the request's `Cookie` fields (the
/// bytes between `=` and the next `;`, without surrounding `"`); `None` when there is
/// none. Byte-wise, as nginx's `$cookie_NAME`: a byte that is not ASCII in one cookie
/// hides no other.
pub fn cookie(headers: &HeaderMap, name: impl Fn(&[u8]) -> bool) -> Option<&[u8]> {
    headers.get_all(header::COOKIE).iter().find_map(|field| {
        field.as_bytes().split(|&b| b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            name(&pair[..eq]).then(|| trim_quotes(&pair[eq + 1..]))
        })
    })
}

/// `v` without the `"` at either end (RFC 6265 4.1.1 allows a quoted value).
fn trim_quotes(mut v: &[u8]) -> &[u8] {
    while let [b'"', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b'"'] = v {
        v = rest;
    }
    v
}

/// `s` with `+` as a space and each `%` followed by exactly two hex digits as the byte
/// they spell; any other `%` is kept. Borrowed when there is neither.
fn percent_decode(s: &str) -> Cow<'_, [u8]> {
    let bytes = s.as_bytes();
    if !bytes.iter().any(|&b| b == b'%' || b == b'+') {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            // Exactly two hex digits (`from_str_radix` alone would take `%+a`).
            b'%' if i + 2 < bytes.len() => {
                let digit = |b: u8| char::from(b).to_digit(16);
                match (digit(bytes[i + 1]), digit(bytes[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn param(query: &str, name: &str) -> Option<Vec<u8>> {
        query_param(query, |k| k == name.as_bytes()).map(Cow::into_owned)
    }

    fn cookies(fields: &[&[u8]], name: &str) -> Option<Vec<u8>> {
        let mut headers = HeaderMap::new();
        for f in fields {
            let v = HeaderValue::from_bytes(f).expect("a valid field value");
            headers.append(header::COOKIE, v);
        }
        cookie(&headers, |k| k == name.as_bytes()).map(<[u8]>::to_vec)
    }

    #[test]
    fn query_parameters_are_decoded_to_bytes() {
        assert_eq!(param("c=%ff%fe", "c").as_deref(), Some(&b"\xff\xfe"[..]));
        assert_eq!(
            param("c=%5Cxff%5Cxfe", "c").as_deref(),
            Some(&b"\\xff\\xfe"[..])
        );
        assert_eq!(param("a=1&b=x+y%21", "b").as_deref(), Some(&b"x y!"[..]));
        assert_eq!(param("a=1&a=2", "a").as_deref(), Some(&b"1"[..]));
        assert_eq!(param("flag&b=2", "flag").as_deref(), Some(&b""[..]));
        assert_eq!(param("%61=1", "a").as_deref(), Some(&b"1"[..]));
        assert_eq!(param("a=1", "b"), None);
        // Not two hex digits: the `%` is kept.
        assert_eq!(param("a=%+a%4", "a").as_deref(), Some(&b"% a%4"[..]));
    }

    #[test]
    fn a_cookie_that_is_not_ascii_hides_no_other() {
        let field: &[u8] = b"sid=abc; name=J\xc3\xbcrgen; latin=J\xfcrgen";
        assert_eq!(cookies(&[field], "sid").as_deref(), Some(&b"abc"[..]));
        assert_eq!(
            cookies(&[field], "name").as_deref(),
            Some(&b"J\xc3\xbcrgen"[..])
        );
        assert_eq!(
            cookies(&[field], "latin").as_deref(),
            Some(&b"J\xfcrgen"[..])
        );
    }

    #[test]
    fn cookies_are_split_trimmed_and_unquoted() {
        assert_eq!(
            cookies(&[b"a=1;b=2 ;  c=\"3\""], "c").as_deref(),
            Some(&b"3"[..])
        );
        assert_eq!(
            cookies(&[b"a=1;b=2 ; c=3"], "b").as_deref(),
            Some(&b"2"[..])
        );
        assert_eq!(cookies(&[b"a=x=y"], "a").as_deref(), Some(&b"x=y"[..]));
        assert_eq!(cookies(&[b"a=1", b"b=2"], "b").as_deref(), Some(&b"2"[..]));
        assert_eq!(cookies(&[b"a=1; a=2"], "a").as_deref(), Some(&b"1"[..]));
        assert_eq!(cookies(&[b"flag; a=1"], "flag"), None);
        assert_eq!(cookies(&[b"ab=1"], "a"), None);
    }
}
