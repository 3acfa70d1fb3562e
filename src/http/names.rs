//! Header names as they come off the wire, recognised without parsing them again.
//!
//! `HeaderName::from_bytes` lower-cases the name into a scratch buffer and matches it
//! against every standard header of its length: about 150 instructions a name
//! (callgrind), paid for every header of every request and response head. A server
//! sends the same names in the same spelling every time, so each worker thread keeps
//! the last name seen per slot (slots chosen by length and first and last byte) and
//! hands out a clone when the raw bytes match exactly.
//!
//! Owns: that cache. Names that do not parse are never cached.

use std::cell::RefCell;

use http::header::{HeaderName, InvalidHeaderName};

const SLOTS: usize = 64;
/// Longer names are parsed every time (rare, and they would bloat the cache).
const MAX_CACHED: usize = 48;

struct Slot {
    raw: [u8; MAX_CACHED],
    len: u8,
    name: HeaderName,
}

thread_local! {
    static CACHE: RefCell<Vec<Option<Slot>>> = RefCell::new((0..SLOTS).map(|_| None).collect());
}

fn slot_of(raw: &[u8]) -> usize {
    let first = raw.first().copied().unwrap_or(0) | 0x20;
    let last = raw.last().copied().unwrap_or(0) | 0x20;
    (raw.len() * 7 + usize::from(first) * 3 + usize::from(last)) % SLOTS
}

/// The header name spelled `raw`, as `HeaderName::from_bytes` would make it.
pub fn header_name(raw: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    if raw.is_empty() || raw.len() > MAX_CACHED {
        return HeaderName::from_bytes(raw);
    }
    let slot = slot_of(raw);
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(Some(hit)) = cache.get(slot) {
            if &hit.raw[..usize::from(hit.len)] == raw {
                return Ok(hit.name.clone());
            }
        }
        let name = HeaderName::from_bytes(raw)?;
        let mut copy = [0u8; MAX_CACHED];
        copy[..raw.len()].copy_from_slice(raw);
        if let Some(entry) = cache.get_mut(slot) {
            *entry = Some(Slot {
                raw: copy,
                len: raw.len() as u8,
                name: name.clone(),
            });
        }
        Ok(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_a_fresh_parse_hit_or_miss() {
        for raw in [
            &b"Content-Type"[..],
            b"content-type",
            b"X-Custom-Thing",
            b"x-custom-thing",
            b"ETag",
            b"Set-Cookie",
            b"Content-Type",
        ] {
            for _ in 0..2 {
                assert_eq!(
                    header_name(raw).expect("valid"),
                    HeaderName::from_bytes(raw).expect("valid")
                );
            }
        }
        assert!(header_name(b"bad name").is_err());
        assert!(
            header_name(b"bad name").is_err(),
            "a bad name is not cached"
        );
        let long = vec![b'x'; 100];
        assert_eq!(
            header_name(&long).expect("valid"),
            HeaderName::from_bytes(&long).expect("valid")
        );
    }
}
