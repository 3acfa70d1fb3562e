//! Percent-encoding of text that modules put into a request target: a value for one
//! query parameter or path segment (pcmod's `url_encode`), and the bytes of a whole
//! query or path a module sets that a request target cannot carry (pcmod `set
//! req.query`/`set req.path`, Lua `req:set_query`/`req:set_path`).
//!
//! Without this, a value decoded from the client's query (`$req.query["q"]`) went back
//! raw: `a%26admin%3D1` became a second parameter `admin=1`, `x%23y` was cut at the
//! `#`, and a space made the request fail. Owns: which bytes are encoded. Must not
//! touch: path normalisation (`http::path`), where the results go (`pipeline`).

use std::borrow::Cow;

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// RFC 3986 2.3's unreserved characters: the only bytes [`component`] keeps (and the
/// escapes `http::path` decodes).
pub(crate) fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Bytes a query cannot carry as they are: the WHATWG URL standard's query
/// percent-encode set (C0 controls, space, `"`, `#`, `<`, `>`, DEL and every byte
/// above it, so all of non-ASCII text).
fn not_in_query(b: u8) -> bool {
    b <= b' ' || b >= 0x7f || matches!(b, b'"' | b'#' | b'<' | b'>')
}

/// Bytes a path cannot carry as they are: WHATWG's path percent-encode set, the query
/// set and `?` `^` `` ` `` `{` `}`.
fn not_in_path(b: u8) -> bool {
    not_in_query(b) || matches!(b, b'?' | b'^' | b'`' | b'{' | b'}')
}

/// `text` with each byte for which `encode` holds written `%XX` (upper-case hex, as
/// RFC 3986 2.1 recommends); borrowed when there is none.
fn encode(text: &str, encode: impl Fn(u8) -> bool) -> Cow<'_, str> {
    let Some(first) = text.bytes().position(&encode) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len() + 16);
    out.push_str(&text[..first]);
    for b in text[first..].bytes() {
        if encode(b) {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        } else {
            // Only ASCII is kept (every byte >= 0x80 is encoded), so this is a char.
            out.push(char::from(b));
        }
    }
    Cow::Owned(out)
}

/// One value for inside a query parameter or a path segment: every byte but the
/// unreserved characters (`A-Z a-z 0-9 - . _ ~`) encoded, so `&`, `=`, `/`, `?`, `#`,
/// `+` and `%` are data, not syntax. JavaScript's `encodeURIComponent` but stricter:
/// it keeps `! ' ( ) *` too. A space is `%20`.
pub fn component(text: &str) -> Cow<'_, str> {
    encode(text, |b| !is_unreserved(b))
}

/// A whole query string as a module sets it: only the bytes a query cannot carry are
/// encoded (a space, `#`, controls, non-ASCII...), so `&`, `=` and escapes already
/// there (`%26`) keep their meaning.
pub fn query(text: &str) -> Cow<'_, str> {
    encode(text, not_in_query)
}

/// A whole path as a module sets it, like [`query`] with the path's set. Callers
/// refuse a `?` or `#` first: in a path set by a module they are a mistake, not data.
pub fn path(text: &str) -> Cow<'_, str> {
    encode(text, not_in_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_component_keeps_only_unreserved_characters() {
        assert_eq!(component("AZaz09-._~"), "AZaz09-._~");
        assert!(matches!(component("plain"), Cow::Borrowed(_)));
        assert_eq!(component("hello world"), "hello%20world");
        assert_eq!(component("a&admin=1"), "a%26admin%3D1");
        assert_eq!(component("x#y"), "x%23y");
        assert_eq!(component("a+b%20/?"), "a%2Bb%2520%2F%3F");
        assert_eq!(component("!'()*"), "%21%27%28%29%2A");
        assert_eq!(component("caf\u{e9}"), "caf%C3%A9");
        assert_eq!(component("\n\0\x7f"), "%0A%00%7F");
        assert_eq!(component(""), "");
    }

    #[test]
    fn a_query_keeps_its_syntax_and_encodes_what_it_cannot_carry() {
        assert_eq!(query("a=1&b=%26"), "a=1&b=%26");
        assert!(matches!(query("a=1&b=/?:@!$'()*+,;"), Cow::Borrowed(_)));
        assert_eq!(query("q=hello world"), "q=hello%20world");
        assert_eq!(query("q=x#y"), "q=x%23y");
        assert_eq!(query("q=\"<>\""), "q=%22%3C%3E%22");
        assert_eq!(query("q=\r\n\t\x1b\x7f"), "q=%0D%0A%09%1B%7F");
        assert_eq!(query("q=\u{e9}"), "q=%C3%A9");
        // What the `http` crate accepts, so a target built from it always parses.
        for b in 0u8..=0x7f {
            let q = query(std::str::from_utf8(&[b]).unwrap_or_default()).into_owned();
            assert!(
                format!("/?{q}")
                    .parse::<http::uri::PathAndQuery>()
                    .is_ok_and(|pq| pq.query() == Some(&q)),
                "byte {b:#x} -> {q:?}"
            );
        }
    }

    #[test]
    fn a_path_encodes_its_own_set() {
        assert!(matches!(path("/a/b.c;d=e,f/%2F~"), Cow::Borrowed(_)));
        assert_eq!(path("/a b"), "/a%20b");
        assert_eq!(path("/{x}^`"), "/%7Bx%7D%5E%60");
        assert_eq!(path("/caf\u{e9}\n"), "/caf%C3%A9%0A");
        for b in 0u8..=0x7f {
            let p = path(std::str::from_utf8(&[b'/', b]).unwrap_or_default()).into_owned();
            assert!(
                p.parse::<http::uri::PathAndQuery>()
                    .is_ok_and(|pq| pq.path() == p),
                "byte {b:#x} -> {p:?}"
            );
        }
    }
}
