//! Request ids: keep a well-formed incoming `x-request-id`, otherwise make a UUIDv7.
//!
//! The id names the request's tracing span, is sent upstream and back to the client,
//! and is on every response the proxy makes itself.
//!
//! A fresh id is made when it is first needed (a log line, a response the proxy makes,
//! `std.request_id.inject`, a clone), not when the request arrives: a request that is
//! proxied without any of those (the plain path with logging off) never pays for one.
//! The pipeline is lent the request's one id (`proxy`, with a stand-in left behind), so
//! a pipeline that never reads it does not make one either. Once made it never
//! changes, and every copy has the same one.

use std::fmt;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};

/// The header that carries request ids.
pub const HEADER: &str = "x-request-id";

/// [`HEADER`] as a header name, made at compile time: looking a header up or inserting
/// it by `&str` parses and validates the name every time.
pub const HEADER_NAME: HeaderName = HeaderName::from_static(HEADER);

/// Longest incoming id that is kept.
pub const MAX_LEN: usize = 128;

/// A request id: a header-safe ASCII string (made on first use, see the module doc).
#[derive(Debug)]
pub struct RequestId(Id);

#[derive(Debug)]
enum Id {
    /// Known from the start (kept from the request, made eagerly, a stand-in).
    Known(HeaderValue),
    /// Made when first read.
    Lazy(OnceLock<HeaderValue>),
}

impl Clone for RequestId {
    /// The clone has the same id: one is made now if none was yet.
    fn clone(&self) -> Self {
        RequestId(Id::Known(self.header_value().clone()))
    }
}

impl PartialEq for RequestId {
    fn eq(&self, other: &Self) -> bool {
        self.header_value() == other.header_value()
    }
}

impl Eq for RequestId {}

impl RequestId {
    /// The incoming `x-request-id` if it is valid, else a fresh UUIDv7 (made when
    /// first asked for).
    pub fn from_headers_or_new(headers: &HeaderMap) -> Self {
        match super::lookup::get(headers, &HEADER_NAME).filter(|v| is_valid(v.as_bytes())) {
            Some(v) => RequestId(Id::Known(v.clone())),
            None => RequestId(Id::Lazy(OnceLock::new())),
        }
    }

    /// What stands in a request's info while the real one is lent out (a Lua hook's
    /// turn holds it, see `lua::handles::Turn`): never made into a UUID, and it reads
    /// as `-` should anything read it meanwhile.
    pub fn stand_in() -> Self {
        const LENT: HeaderValue = HeaderValue::from_static("-");
        RequestId(Id::Known(LENT))
    }

    /// A fresh UUIDv7, made now.
    pub fn generate() -> Self {
        RequestId(Id::Known(uuid_v7()))
    }

    /// The id as a header value.
    pub fn header_value(&self) -> &HeaderValue {
        match &self.0 {
            Id::Known(v) => v,
            Id::Lazy(cell) => cell.get_or_init(uuid_v7),
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        self.header_value().to_str().unwrap_or("")
    }
}

/// A fresh UUIDv7 (48-bit millisecond timestamp, 74 random bits).
fn uuid_v7() -> HeaderValue {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let rand_a = fastrand::u16(..) & 0x0fff;
    let rand_b = fastrand::u64(..) & 0x3fff_ffff_ffff_ffff;
    let hi = (ms << 16) | 0x7000 | u64::from(rand_a);
    let lo = 0x8000_0000_0000_0000 | rand_b;
    let mut buf = [0u8; 36];
    write_uuid(&mut buf, hi, lo);
    // Only hex digits and dashes: always a valid header value. Owned by a shared
    // `Bytes` from the start, so that the clones every request makes (upstream
    // header, response header) are reference counts, not a first clone that
    // reallocates.
    match HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf)) {
        Ok(v) => v,
        Err(_) => HeaderValue::from_static("00000000-0000-7000-8000-000000000000"),
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An incoming id is kept when it is 1..=128 characters of `[A-Za-z0-9._:-]`.
pub fn is_valid(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

fn write_uuid(buf: &mut [u8; 36], hi: u64, lo: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Where each byte's two digits go: the dashes sit at 8, 13, 18 and 23.
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    let bytes: [u8; 16] = ((u128::from(hi) << 64) | u128::from(lo)).to_be_bytes();
    for at in [8, 13, 18, 23] {
        buf[at] = b'-';
    }
    for (byte, at) in bytes.iter().zip(AT) {
        buf[at] = HEX[usize::from(byte >> 4)];
        buf[at + 1] = HEX[usize::from(byte & 0x0f)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_written_in_the_canonical_form() {
        let mut buf = [0u8; 36];
        write_uuid(&mut buf, 0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210);
        assert_eq!(&buf, b"01234567-89ab-cdef-fedc-ba9876543210");
    }

    #[test]
    fn generated_ids_are_uuid_v7_and_distinct() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 36);
        assert_eq!(&a.as_str()[14..15], "7");
        assert!(is_valid(a.as_str().as_bytes()));
    }

    #[test]
    fn a_fresh_id_is_made_once_and_shared_by_clones() {
        let id = RequestId::from_headers_or_new(&HeaderMap::new());
        let clone = id.clone();
        assert_eq!(id.as_str().len(), 36);
        assert_eq!(id.as_str(), clone.as_str(), "a clone has the same id");
        assert_eq!(id, clone);
        let later = id.as_str().to_owned();
        assert_eq!(id.as_str(), later, "made once");
        let other = RequestId::from_headers_or_new(&HeaderMap::new());
        assert_ne!(other, id, "every request its own");
        // A clone made before the id was ever read still shares it.
        let fresh = RequestId::from_headers_or_new(&HeaderMap::new());
        let early = fresh.clone();
        assert_eq!(fresh.as_str(), early.as_str());
    }

    #[test]
    fn an_id_is_made_only_when_first_read() {
        let id = RequestId::from_headers_or_new(&HeaderMap::new());
        assert!(
            matches!(&id.0, Id::Lazy(c) if c.get().is_none()),
            "not made on arrival"
        );
        let lent = id;
        assert_eq!(lent.as_str().len(), 36);
        assert!(matches!(&lent.0, Id::Lazy(c) if c.get().is_some()));
        assert_eq!(RequestId::stand_in().as_str(), "-");
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_static("abc-123"));
        let kept = RequestId::from_headers_or_new(&h);
        assert!(matches!(&kept.0, Id::Known(v) if v == "abc-123"));
    }

    #[test]
    fn incoming_ids_are_kept_only_when_valid() {
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_static("abc-123"));
        assert_eq!(RequestId::from_headers_or_new(&h).as_str(), "abc-123");
        h.insert(HEADER, HeaderValue::from_static("bad id with spaces"));
        assert_ne!(
            RequestId::from_headers_or_new(&h).as_str(),
            "bad id with spaces"
        );
        let long = "a".repeat(MAX_LEN + 1);
        h.insert(
            HEADER,
            HeaderValue::from_str(&long).unwrap_or(HeaderValue::from_static("x")),
        );
        assert_ne!(RequestId::from_headers_or_new(&h).as_str(), long);
    }
}
