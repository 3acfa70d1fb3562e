//! The trailer section that ends a chunked body (RFC 9112 7.1.2), for both HTTP/1.1
//! sides (`chunked` decodes for `server::h1` and `upstream::h1`).
//!
//! Owns: parsing a trailer block — bounded by its bytes like a head, not by a count of
//! fields (a block with more lines than the stack holds is parsed again with room on
//! the heap), dropping the fields no trailer may carry, and finding where a block that
//! does not parse ends, so it can be dropped whole. Must not touch: reading bytes, and
//! what a malformed block costs (the caller decides: a client's request is refused, an
//! upstream's response loses its trailers and keeps its body).

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};

/// Trailer fields parsed into stack storage before the heap is asked for room.
const STACK_FIELDS: usize = 32;
/// The shortest field line httparse takes (`a:` and a line feed).
const MIN_FIELD_LINE: usize = 3;

/// A complete trailer block.
#[derive(Debug)]
pub enum Block {
    /// Its fields, those no trailer may carry left out (empty: no trailers).
    Fields(HeaderMap),
    /// Not a valid trailer block (a field name that is no token, such as `:status`,
    /// a bare LF, more fields than `max` bytes can hold): it ends here.
    Malformed,
}

/// The trailer block at the front of `buf`: how many bytes it takes and what it is;
/// `None` while it is incomplete. `max`: the most bytes a block may take (the caller
/// fails one still incomplete past it).
pub fn parse(buf: &[u8], max: usize) -> Option<(usize, Block)> {
    let mut stack = [httparse::EMPTY_HEADER; STACK_FIELDS];
    let parsed = match httparse::parse_headers(buf, &mut stack) {
        Err(httparse::Error::TooManyHeaders) => {
            let mut heap = vec![httparse::EMPTY_HEADER; field_room(buf, max)];
            match httparse::parse_headers(buf, &mut heap) {
                Ok(httparse::Status::Complete((used, fields))) => fields_of(buf, used, fields),
                Ok(httparse::Status::Partial) => None,
                Err(_) => malformed(buf),
            }
        }
        Ok(httparse::Status::Complete((used, fields))) => fields_of(buf, used, fields),
        Ok(httparse::Status::Partial) => None,
        Err(_) => malformed(buf),
    };
    // Only a block within the limit (a large one found whole in one read included).
    parsed.filter(|(used, _)| *used <= max)
}

/// How many field slots a block in `buf` can need: a field line ends with a line feed,
/// so no more than `buf` has, nor than a block of `max` bytes can hold.
fn field_room(buf: &[u8], max: usize) -> usize {
    let lines = memchr::memchr_iter(b'\n', &buf[..buf.len().min(max)]).count();
    lines.min(max / MIN_FIELD_LINE) + 1
}

fn fields_of(buf: &[u8], used: usize, fields: &[httparse::Header<'_>]) -> Option<(usize, Block)> {
    let block = &buf[..used];
    // httparse takes a line ending in a bare LF, which other parsers may not (as in
    // heads): such a block is not read as fields.
    let bare_lf = block
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || block[i - 1] != b'\r'));
    if bare_lf {
        return Some((used, Block::Malformed));
    }
    let mut trailers = HeaderMap::new();
    for f in fields {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(f.name.as_bytes()),
            HeaderValue::from_bytes(f.value),
        ) {
            if !forbidden(&n) {
                trailers.append(n, v);
            }
        }
    }
    Some((used, Block::Fields(trailers)))
}

/// A block httparse refused: it ends at its first empty line (CRLF or a bare LF).
fn malformed(buf: &[u8]) -> Option<(usize, Block)> {
    if buf.starts_with(b"\n") {
        return Some((1, Block::Malformed));
    }
    memchr::memchr_iter(b'\n', buf).find_map(|i| match &buf[i + 1..] {
        [b'\n', ..] => Some((i + 2, Block::Malformed)),
        [b'\r', b'\n', ..] => Some((i + 3, Block::Malformed)),
        _ => None,
    })
}

/// Fields a trailer may not carry, dropped rather than passed on (RFC 9110 6.5.1):
/// those of one connection (which an HTTP/2 peer refuses outright, RFC 9113 8.2.2),
/// framing, routing, request modifiers, authentication, response control data and
/// what says how to read the content — all of which a recipient needs before the
/// content, and none of which may change it after.
pub fn forbidden(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
            | "content-length"
            | "content-encoding"
            | "content-type"
            | "content-range"
            | "host"
            | "expect"
            | "max-forwards"
            | "range"
            | "cache-control"
            | "pragma"
            | "age"
            | "expires"
            | "date"
            | "location"
            | "retry-after"
            | "vary"
            | "authorization"
            | "proxy-authorization"
            | "proxy-authenticate"
            | "www-authenticate"
            | "cookie"
            | "set-cookie"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(wire: &[u8]) -> HeaderMap {
        match parse(wire, 1024) {
            Some((used, Block::Fields(f))) => {
                assert_eq!(used, wire.len());
                f
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn blocks_of_many_fields_parse_within_the_byte_limit() {
        let mut wire = Vec::new();
        for i in 0..40 {
            wire.extend_from_slice(format!("x-t{i}: {i}\r\n").as_bytes());
        }
        wire.extend_from_slice(b"grpc-status: 0\r\n\r\n");
        let f = fields(&wire);
        assert_eq!(f.len(), 41);
        assert_eq!(f["grpc-status"], "0");
        assert_eq!(f["x-t39"], "39");
        // The same block over a smaller limit is not taken.
        assert!(parse(&wire, 64).is_none());
    }

    #[test]
    fn forbidden_fields_are_dropped_and_the_rest_kept() {
        let f = fields(
            b"connection: close\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\
              keep-alive: 1\r\nhost: evil\r\nset-cookie: a=b\r\ngrpc-status: 0\r\n\r\n",
        );
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f["grpc-status"], "0");
    }

    #[test]
    fn a_block_that_does_not_parse_is_found_whole() {
        for (wire, used) in [
            (&b":status: 500\r\ngrpc-status: 0\r\n\r\nNEXT"[..], 32),
            (b"bad name: 1\r\n\r\n", 15),
            (b"x-a: 1\n\r\n", 9),
            (b"x-a: 1\r\n\nNEXT", 9),
            (b"\n", 1),
        ] {
            match parse(wire, 1024) {
                Some((n, Block::Malformed)) => assert_eq!(n, used, "{wire:?}"),
                other => panic!("{wire:?}: {other:?}"),
            }
        }
        assert!(parse(b":status: 500\r\n", 1024).is_none(), "not ended yet");
        assert!(matches!(parse(b"\r\n", 1024), Some((2, Block::Fields(f))) if f.is_empty()));
    }
}
