//! A request's cookies as modules read them (pcmod's `$req.cookie[...]`, Lua's
//! `req:cookie`), as bytes: a client may send any byte in a `Cookie` (a browser sends
//! a Latin-1 or UTF-8 value as it is).
//!
//! Read as text, a `Cookie` with one non-ASCII byte hid every cookie in it. Here
//! nothing is text yet: pcmod makes text of the result by its one rule
//! (`script::value::text_from_bytes`), Lua takes the bytes (its strings are bytes, as
//! OpenResty's `ngx.var.cookie_*`). Owns: splitting and matching names. Must not
//! touch: how a script represents the bytes.

use http::{header, HeaderMap};

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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn cookies(fields: &[&[u8]], name: &str) -> Option<Vec<u8>> {
        let mut headers = HeaderMap::new();
        for f in fields {
            let v = HeaderValue::from_bytes(f).expect("a valid field value");
            headers.append(header::COOKIE, v);
        }
        cookie(&headers, |k| k == name.as_bytes()).map(<[u8]>::to_vec)
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
