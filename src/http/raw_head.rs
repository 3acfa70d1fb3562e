//! An upstream response head passed through as received. When nothing between the
//! upstream and the client looks at a response's headers (no module runs for the
//! request, and the client's connection is written by `server::h1`), building a
//! `HeaderMap` from the upstream's head only to write it out again costs more than
//! the rest of the response path (callgrind: ~2,000 instructions a request). A
//! [`RawHead`] keeps the header lines as spans of the received head instead, already
//! cleaned: no hop-by-hop header is ever in one (a head that has any is read into a
//! map as usual, see [`Hop`]), and the framing headers are held apart, as facts,
//! because the client's hop writes its own.
//!
//! Modules that only `set` response headers (no reads, no `add`/`remove`) run over
//! such a response too: their headers go in the response's map, and the writer
//! leaves out every received line whose name the map has (`set` replaces).

use bytes::Bytes;
use smallvec::SmallVec;

/// Header lines of a response head, as received, for a writer that copies them out.
#[derive(Debug, Clone)]
pub struct RawHead {
    /// The whole head as it came off the wire.
    head: Bytes,
    /// Each kept line: where it starts, where its name ends, and where its value
    /// ends.
    lines: SmallVec<[(u32, u32, u32); 12]>,
    /// The response's `Content-Length`, when its framing keeps one.
    pub content_length: Option<u64>,
    /// Whether a `Date` line is among the kept ones.
    pub has_date: bool,
}

impl RawHead {
    /// An empty set of lines over `head`.
    pub fn new(head: Bytes) -> RawHead {
        RawHead {
            head,
            lines: SmallVec::new(),
            content_length: None,
            has_date: false,
        }
    }

    /// Keeps the line `start..end` of the head (name to end of value), whose name
    /// ends at `name_end`.
    pub fn keep(&mut self, start: usize, name_end: usize, end: usize) {
        debug_assert!(start <= name_end && name_end <= end && end <= self.head.len());
        // An upstream head is at most 128 KiB (`upstream::h1`): offsets fit in a u32.
        let at = |i: usize| u32::try_from(i).unwrap_or(0);
        self.lines.push((at(start), at(name_end), at(end)));
    }

    /// The kept lines as (name, whole line `name: value` without its line ending).
    pub fn lines(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.lines.iter().map(|&(start, name_end, end)| {
            (
                &self.head[start as usize..name_end as usize],
                &self.head[start as usize..end as usize],
            )
        })
    }

    /// Bytes the kept lines take when written out with their line endings.
    pub fn written_len(&self) -> usize {
        self.lines
            .iter()
            .map(|&(start, _, end)| (end - start) as usize + 2)
            .sum()
    }
}

/// What the response path does with a header, judged from its name alone (no
/// `HeaderName` is made): the few names that matter are told apart by length first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// An end-to-end header: passes through as it is.
    Kept,
    /// `Date` (kept, and the writer adds none).
    Date,
    Connection,
    ContentLength,
    TransferEncoding,
    KeepAlive,
    /// Another hop-by-hop header (`TE`, `Trailer`, `Upgrade`, `Proxy-*`,
    /// `HTTP2-Settings`): a head with one goes through the map and header hygiene.
    OtherHopByHop,
}

impl Hop {
    /// The class of header name `name` (any case).
    pub fn of(name: &[u8]) -> Hop {
        match name.len() {
            2 if is(name, b"te") => Hop::OtherHopByHop,
            4 if is(name, b"date") => Hop::Date,
            7 if is(name, b"trailer") || is(name, b"upgrade") => Hop::OtherHopByHop,
            10 if is(name, b"connection") => Hop::Connection,
            10 if is(name, b"keep-alive") => Hop::KeepAlive,
            14 if is(name, b"content-length") => Hop::ContentLength,
            14 if is(name, b"http2-settings") => Hop::OtherHopByHop,
            16 if is(name, b"proxy-connection") => Hop::OtherHopByHop,
            17 if is(name, b"transfer-encoding") => Hop::TransferEncoding,
            18 if is(name, b"proxy-authenticate") => Hop::OtherHopByHop,
            19 if is(name, b"proxy-authorization") => Hop::OtherHopByHop,
            _ => Hop::Kept,
        }
    }
}

/// Whether `name` is `lower` (lower-case ASCII) in any case. Names of
/// 8 bytes or more are compared as two (overlapping) 8-byte words, letters folded by
/// setting their 0x20 bit: a byte ORed with 0x20 equals a lower-case letter only when
/// it is that letter in either case (every response pays this for its headers).
#[inline(always)]
fn is(name: &[u8], lower: &'static [u8]) -> bool {
    let n = lower.len();
    if n < 8 || name.len() != n {
        return name.eq_ignore_ascii_case(lower);
    }
    let word = |s: &[u8], at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let fold = |at: usize| {
        let mut m = [0u8; 8];
        for (m, b) in m.iter_mut().zip(&lower[at..at + 8]) {
            *m = if b.is_ascii_lowercase() { 0x20 } else { 0 };
        }
        u64::from_le_bytes(m)
    };
    let (head, tail) = (0, n - 8);
    word(name, head) | fold(head) == word(lower, head)
        && word(name, tail) | fold(tail) == word(lower, tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_classed_in_any_case() {
        for (name, hop) in [
            ("Date", Hop::Date),
            ("CONNECTION", Hop::Connection),
            ("Content-Length", Hop::ContentLength),
            ("transfer-encoding", Hop::TransferEncoding),
            ("Keep-Alive", Hop::KeepAlive),
            ("TE", Hop::OtherHopByHop),
            ("Trailer", Hop::OtherHopByHop),
            ("Upgrade", Hop::OtherHopByHop),
            ("Proxy-Connection", Hop::OtherHopByHop),
            ("Proxy-Authenticate", Hop::OtherHopByHop),
            ("proxy-authorization", Hop::OtherHopByHop),
            ("Content-Type", Hop::Kept),
            ("Server", Hop::Kept),
            ("Dates", Hop::Kept),
            ("x-te", Hop::Kept),
            ("Content-Lengths", Hop::Kept),
        ] {
            assert_eq!(Hop::of(name.as_bytes()), hop, "{name}");
        }
    }

    #[test]
    fn hop_by_hop_here_is_what_header_hygiene_drops() {
        // A raw head must never carry a header that hygiene would have removed.
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "http2-settings",
            "date",
            "content-length",
            "content-type",
            "server",
            "via",
            "x-request-id",
        ] {
            let header = http::HeaderName::from_static(name);
            let here = !matches!(
                Hop::of(name.as_bytes()),
                Hop::Kept | Hop::Date | Hop::ContentLength
            );
            assert_eq!(here, crate::http::hygiene::is_hop_by_hop(&header), "{name}");
        }
    }

    #[test]
    fn word_compare_folds_letters_only() {
        assert!(is(b"CoNtEnT-LeNgTh", b"content-length"));
        assert!(is(b"TRANSFER-ENCODING", b"transfer-encoding"));
        // 0x20 set on a non-letter is not a match: `\r` | 0x20 is `-`.
        assert!(!is(b"content\rlength", b"content-length"));
        assert!(!is(b"content-lengti", b"content-length"));
        assert!(!is(b"Kontent-length", b"content-length"));
        // `@` | 0x20 is a backtick, `[` | 0x20 is `{`: only letters fold.
        assert!(!is(b"connecti@n", b"connection"));
        assert!(!is(b"c[nnection", b"c{nnection"));
    }

    #[test]
    fn kept_lines_are_spans_of_the_head() {
        let head = Bytes::from_static(b"HTTP/1.1 200 OK\r\nServer: x\r\nA: b c\r\n\r\n");
        let mut raw = RawHead::new(head);
        raw.keep(17, 23, 26);
        raw.keep(28, 29, 34);
        let lines: Vec<(&[u8], &[u8])> = raw.lines().collect();
        assert_eq!(
            lines,
            [
                (&b"Server"[..], &b"Server: x"[..]),
                (&b"A"[..], &b"A: b c"[..])
            ]
        );
        assert_eq!(raw.written_len(), 9 + 2 + 6 + 2);
    }
}
