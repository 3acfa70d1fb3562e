//! The chunked transfer coding, decoded from a read buffer — one decoder for both
//! HTTP/1.1 sides (request bodies in `server::h1`, response bodies in
//! `upstream::h1`).
//!
//! Owns: chunk-size lines (extensions allowed), chunk data, the CRLF after each chunk,
//! and the trailer block. Must not touch: reading (the caller reads more when told to
//! and decides what an early EOF means).

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;

use super::framing::parse_trailers;

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
    Data(Bytes),
    /// The trailer block (not empty); the body has ended.
    Trailers(HeaderMap),
    /// The body has ended, without trailers.
    End,
    /// `buf` holds no complete next piece: read more and call again.
    More,
}

/// The body is not valid chunked coding (or a size line or the trailer block is
/// longer than allowed).
#[derive(Debug, Clone, Copy)]
pub struct ChunkError;

/// Decodes what `buf` allows from state `at`, consuming it from `buf`. A size line
/// or trailer block still incomplete past `max_line` bytes is an error.
pub fn step(at: &mut Chunk, buf: &mut BytesMut, max_line: usize) -> Result<Step, ChunkError> {
    loop {
        match *at {
            Chunk::Size => match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((used, size))) => {
                    buf.advance(used);
                    *at = if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    };
                }
                Ok(httparse::Status::Partial) => return more(buf, max_line),
                Err(_) => return Err(ChunkError),
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
            Chunk::Trailers => match parse_trailers(buf) {
                Ok(Some((used, trailers))) => {
                    buf.advance(used);
                    return Ok(if trailers.is_empty() {
                        Step::End
                    } else {
                        Step::Trailers(trailers)
                    });
                }
                Ok(None) => return more(buf, max_line),
                Err(_) => return Err(ChunkError),
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
                Step::Data(d) => body.extend_from_slice(&d),
                Step::Trailers(t) => return Ok((body, Some(t))),
                Step::End => return Ok((body, None)),
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

    #[test]
    fn broken_bodies_are_errors() {
        assert!(decode(b"zz\r\nhello\r\n0\r\n\r\n", 100).is_err());
        assert!(decode(b"5\r\nhelloXX0\r\n\r\n", 100).is_err());
        let long_line = [b"1".repeat(2000), b"\r\n".to_vec()].concat();
        assert!(decode(&long_line, 4096).is_err());
    }
}
