//! Header lookups for the small maps most requests carry.
//!
//! `HeaderMap::get` hashes the name and probes its index: about 80-100 instructions
//! (callgrind), paid several times per request on the request path (id, host, framing,
//! upgrade). A request with a handful of headers is searched faster by walking its
//! entries and comparing names (a standard name compares as one byte); bigger maps
//! still go through the index. Same answers as `get` and `contains_key`: the first
//! value of the name, in the order the map keeps.
//!
//! Owns: nothing but these two functions.

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

/// Up to this many distinct names, a walk beats the hash.
const WALK: usize = 6;

/// `headers.get(name)`.
pub fn get<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    if headers.keys_len() <= WALK {
        headers.iter().find_map(|(n, v)| (n == name).then_some(v))
    } else {
        headers.get(name)
    }
}

/// `headers.contains_key(name)`.
pub fn has(headers: &HeaderMap, name: &HeaderName) -> bool {
    get(headers, name).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    /// The same answers as the map's own lookups, small maps and big, with repeated
    /// names and names that are missing.
    #[test]
    fn answers_what_the_map_answers() {
        let custom = HeaderName::from_static("x-request-id");
        let names = [
            header::HOST,
            header::CONTENT_LENGTH,
            header::UPGRADE,
            custom.clone(),
        ];
        for extra in 0..10 {
            let mut h = HeaderMap::new();
            h.append(header::HOST, HeaderValue::from_static("a"));
            h.append(custom.clone(), HeaderValue::from_static("first"));
            h.append(custom.clone(), HeaderValue::from_static("second"));
            for i in 0..extra {
                let n = HeaderName::from_bytes(format!("x-extra-{i}").as_bytes())
                    .unwrap_or(header::ACCEPT);
                h.append(n, HeaderValue::from_static("e"));
            }
            for name in &names {
                assert_eq!(get(&h, name), h.get(name), "{name} with {extra} extra");
                assert_eq!(
                    has(&h, name),
                    h.contains_key(name),
                    "{name} with {extra} extra"
                );
            }
        }
    }
}
