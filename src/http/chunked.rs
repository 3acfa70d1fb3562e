//! The chunked transfer coding, decoded from a read buffer — one decoder for both
//! HTTP/1.1 sides (request bodies in `server::h1`, response bodies in
//! `upstream::h1`).
//!
//! Owns: chunk-size lines (extensions allowed), chunk data, the CRLF after each chunk,
//! and the trailer block. Must not touch: reading (the caller reads more when told to
//! and decides what an early EOF means).

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;

use super::trailers::{self, Block};

/// Where a chunked body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// What one step of decoding found.
#[derive(Debug)]
pub enum Step {
    /// A chunk-size line: a chunk of this many bytes (not 0) follows. Call again for
    /// its data. (Told apart so a reader can weigh what a body declares before any of
    /// it arrives: `server::h1` holds it to `max_body`.)
    Size(u64),
    Data(Bytes),
    /// The trailer block (not empty); the body has ended.
    Trailers(HeaderMap),
    /// The body has ended, without trailers.
    End,
    /// The body has ended with a trailer block that is not valid (see
    /// [`trailers::Block::Malformed`]), consumed: the caller decides what it costs.
    BadTrailers,
    /// `buf` holds no complete next piece: read more and call again.
    More,
}

/// The body is not valid chunked coding (or a size line or the trailer block is
/// longer than allowed).
#[derive(Debug, Clone, Copy)]
pub struct ChunkError;

/// A chunk-size line at the front of `buf` (RFC 9112 7.1): 1 to 16 hex digits, then
/// optional extensions (`;` after optional spaces or tabs, then visible characters,
/// spaces and tabs), then CRLF. Returns the bytes it takes and the size, or `None`
/// while the line is incomplete. Stricter than `httparse::parse_chunk_size`, which
/// reads a line without digits as size 0 and lets a bare LF or any byte through an
/// extension: two parsers that split a body differently are how requests are
/// smuggled past a front end that passes chunks on unchanged.
fn size_line(buf: &[u8]) -> Result<Option<(usize, u64)>, ChunkError> {
    let mut size: u64 = 0;
    let mut i = 0;
    while let Some(&b) = buf.get(i) {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => break,
        };
        if i == 16 {
            return Err(ChunkError);
        }
        size = (size << 4) | u64::from(digit);
        i += 1;
    }
    if i == buf.len() {
        return Ok(None);
    }
    if i == 0 {
        return Err(ChunkError);
    }
    while matches!(buf.get(i), Some(b' ' | b'\t')) {
        i += 1;
    }
    let mut extension = false;
    while let Some(&b) = buf.get(i) {
        match b {
            b'\r' => {
                return match buf.get(i + 1) {
                    None => Ok(None),
                    Some(b'\n') => Ok(Some((i + 2, size))),
                    Some(_) => Err(ChunkError),
                };
            }
            b';' => extension = true,
            b'\t' | b' '..=b'~' | 0x80..=0xff if extension => {}
            _ => return Err(ChunkError),
        }
        i += 1;
    }
    Ok(None)
}

/// Decodes what `buf` allows from state `at`, consuming it from `buf`. A size line
/// or trailer block still incomplete past `max_line` bytes is an error.
pub fn step(at: &mut Chunk, buf: &mut BytesMut, max_line: usize) -> Result<Step, ChunkError> {
    loop {
        match *at {
            Chunk::Size => match size_line(buf)? {
                Some((used, size)) => {
                    buf.advance(used);
                    if size == 0 {
                        *at = Chunk::Trailers;
                    } else {
                        *at = Chunk::Data(size);
                        return Ok(Step::Size(size));
                    }
                }
                None => return more(buf, max_line),
            },
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let data = buf.split_to(take).freeze();
                let left = left - take as u64;
                *at = if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                };
                return Ok(Step::Data(data));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Step::More);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(ChunkError);
                }
                buf.advance(2);
                *at = Chunk::Size;
            }
            Chunk::Trailers => match trailers::parse(buf, max_line) {
                Some((used, block)) => {
                    buf.advance(used);
                    return Ok(match block {
                        Block::Fields(fields) if fields.is_empty() => Step::End,
                        Block::Fields(fields) => Step::Trailers(fields),
                        Block::Malformed => Step::BadTrailers,
                    });
                }
                None => return more(buf, max_line),
            },
        }
    }
}

fn more(buf: &BytesMut, max_line: usize) -> Result<Step, ChunkError> {
    if buf.len() > max_line {
        Err(ChunkError)
    } else {
        Ok(Step::More)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire` fed in pieces of `piece` bytes.
    fn decode(wire: &[u8], piece: usize) -> Result<(Vec<u8>, Option<HeaderMap>), ChunkError> {
        let mut at = Chunk::Size;
        let mut buf = BytesMut::new();
        let mut rest = wire;
        let mut body = Vec::new();
        loop {
            match step(&mut at, &mut buf, 1024)? {
                Step::Size(_) => {}
                Step::Data(d) => body.extend_from_slice(&d),
                Step::Trailers(t) => return Ok((body, Some(t))),
                Step::End => return Ok((body, None)),
                Step::BadTrailers => return Err(ChunkError),
                Step::More => {
                    if rest.is_empty() {
                        return Err(ChunkError);
                    }
                    let n = piece.min(rest.len());
                    buf.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                }
            }
        }
    }

    #[test]
    fn bodies_decode_whatever_the_read_sizes() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 9\r\n\r\n";
        for piece in [1, 2, 3, 7, 100] {
            let (body, trailers) = decode(wire, piece).expect("valid");
            assert_eq!(body, b"hello world");
            assert_eq!(trailers.expect("trailers")["x-sum"], "9");
        }
        let (body, trailers) = decode(b"3\r\nabc\r\n0\r\n\r\n", 4).expect("valid");
        assert_eq!(body, b"abc");
        assert!(trailers.is_none());
    }

    /// Each size line is told before its data: a reader can weigh what the body
    /// declares before any of it arrives.
    #[test]
    fn sizes_are_told_before_their_data() {
        let mut at = Chunk::Size;
        let mut buf = BytesMut::from(&b"ffffffffffffffff\r\nab"[..]);
        assert!(matches!(
            step(&mut at, &mut buf, 1024),
            Ok(Step::Size(u64::MAX))
        ));
        assert!(matches!(step(&mut at, &mut buf, 1024), Ok(Step::Data(d)) if d == "ab"));
        let mut at = Chunk::Size;
        let mut buf = BytesMut::from(&b"0\r\n\r\n"[..]);
        assert!(
            matches!(step(&mut at, &mut buf, 1024), Ok(Step::End)),
            "size 0 is the end"
        );
    }

    #[test]
    fn broken_bodies_are_errors() {
        assert!(decode(b"zz\r\nhello\r\n0\r\n\r\n", 100).is_err());
        assert!(decode(b"5\r\nhelloXX0\r\n\r\n", 100).is_err());
        let long_line = [b"1".repeat(2000), b"\r\n".to_vec()].concat();
        assert!(decode(&long_line, 4096).is_err());
    }

    /// Size lines that another parser could split differently: no digits (read as
    /// size 0 by httparse, ending the body early), a bare LF or a control byte in an
    /// extension, garbage after the digits, more than 16 digits, `0x`.
    #[test]
    fn size_lines_are_read_strictly() {
        for wire in [
            &b"\r\n\r\n"[..],
            b" \r\n\r\n",
            b";x\r\n\r\n",
            b"2;\nxx\r\nab\r\n0\r\n\r\n",
            b"2;a\x01b\r\nab\r\n0\r\n\r\n",
            b"2;a\rb\r\nab\r\n0\r\n\r\n",
            b"2x\r\nab\r\n0\r\n\r\n",
            b"2\nab\r\n0\r\n\r\n",
            b"0x2\r\nab\r\n0\r\n\r\n",
            b"00000000000000002\r\nab\r\n0\r\n\r\n",
            // Trailer blocks with a bare LF.
            b"2\r\nab\r\n0\r\n\n",
            b"2\r\nab\r\n0\r\nx-a: 1\n\r\n",
            b"2\r\nab\r\n0\r\nx-a: 1\r\n\n",
        ] {
            for piece in [1, 100] {
                assert!(
                    decode(wire, piece).is_err(),
                    "{:?}",
                    String::from_utf8_lossy(wire)
                );
            }
        }
        for (wire, want) in [
            (&b"0000000000000002\r\nab\r\n0\r\n\r\n"[..], &b"ab"[..]),
            (b"2 \t;name=\"v a\";x\r\nab\r\n0;end\r\n\r\n", b"ab"),
            (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
        ] {
            for piece in [1, 100] {
                let (body, _) = decode(wire, piece).expect("valid");
                assert_eq!(body, want);
            }
        }
    }
}
