//! The cache's shared tier: entries also kept in Redis (`[cache] shared = true` with a
//! `[redis]`), so several proxycache processes fill the cache for each other. A local
//! miss asks Redis before the upstream; a stored response is written to Redis too.
//!
//! Owns the entry's wire format (a small length-prefixed binary, versioned) and the
//! calls. Like every cluster call it blocks the worker for one round trip, bounded by
//! `redis.timeout`, and falls back to local-only when Redis is away (never failing
//! the request; every call Redis did not answer is counted as a fallback). Must not
//! touch: the local store.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use prometheus_client::metrics::counter::Counter;

use super::store::Cached;
use crate::stdlib::cluster::{Cluster, ClusterError};

/// First byte of every encoded entry; a different version is a miss.
const VERSION: u8 = 1;

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The entry as bytes: version, status, stored-at (unix ms), fresh and stale (ms),
/// headers (count, then name and value with u16 lengths), body (rest).
pub fn encode(c: &Cached) -> Bytes {
    let mut out = BytesMut::with_capacity(c.body.len() + 256);
    out.put_u8(VERSION);
    out.put_u16(c.status.as_u16());
    let age = Instant::now().saturating_duration_since(c.stored_at);
    out.put_u64(SystemTime::now().checked_sub(age).map_or(0, unix_ms));
    out.put_u64(u64::try_from(c.fresh_for.as_millis()).unwrap_or(u64::MAX));
    out.put_u64(u64::try_from(c.stale_for.as_millis()).unwrap_or(u64::MAX));
    let headers: Vec<_> = c
        .headers
        .iter()
        .filter(|(n, v)| {
            n.as_str().len() <= usize::from(u16::MAX) && v.len() <= usize::from(u16::MAX)
        })
        .collect();
    out.put_u16(u16::try_from(headers.len()).unwrap_or(u16::MAX));
    for (name, value) in headers.into_iter().take(usize::from(u16::MAX)) {
        out.put_u16(name.as_str().len() as u16);
        out.put_slice(name.as_str().as_bytes());
        out.put_u16(value.len() as u16);
        out.put_slice(value.as_bytes());
    }
    out.put_slice(&c.body);
    out.freeze()
}

/// An entry from bytes; `None` when they are not one (another version, truncated).
pub fn decode(mut b: Bytes) -> Option<Cached> {
    if b.remaining() < 1 + 2 + 8 * 3 + 2 || b.get_u8() != VERSION {
        return None;
    }
    let status = StatusCode::from_u16(b.get_u16()).ok()?;
    let stored_unix_ms = b.get_u64();
    let fresh_for = Duration::from_millis(b.get_u64());
    let stale_for = Duration::from_millis(b.get_u64());
    let count = b.get_u16();
    let mut headers = HeaderMap::with_capacity(usize::from(count));
    for _ in 0..count {
        let name = take(&mut b)?;
        let value = take(&mut b)?;
        headers.append(
            HeaderName::from_bytes(&name).ok()?,
            HeaderValue::from_maybe_shared(value).ok()?,
        );
    }
    let age = Duration::from_millis(unix_ms(SystemTime::now()).saturating_sub(stored_unix_ms));
    let stored_at = Instant::now().checked_sub(age)?;
    Some(Cached {
        status,
        headers,
        body: b,
        stored_at,
        fresh_for,
        stale_for,
    })
}

fn take(b: &mut Bytes) -> Option<Bytes> {
    if b.remaining() < 2 {
        return None;
    }
    let n = usize::from(b.get_u16());
    (b.remaining() >= n).then(|| b.split_to(n))
}

/// Reads `key` from the shared tier.
pub fn fetch(cluster: &Cluster, key: &str) -> Result<Option<Cached>, ClusterError> {
    Ok(cluster
        .get(&format!("c:{key}"))?
        .and_then(|v| decode(Bytes::from(v))))
}

/// Writes `entry` under `key`, expiring when it is too stale to serve.
pub fn put(cluster: &Cluster, key: &str, entry: &Cached) -> Result<(), ClusterError> {
    let ttl = entry.keep_for(Instant::now());
    cluster.set(&format!("c:{key}"), &encode(entry), ttl)
}

/// Writes entries to the shared tier when their body has ended (away from the module
/// that stored them), counting a write Redis did not take as the module's fallback.
#[derive(Debug, Clone)]
pub struct Writer {
    pub cluster: Arc<Cluster>,
    /// `proxycache_cluster_fallbacks_total{module}` of the storing module.
    pub fallbacks: Counter,
}

impl Writer {
    /// [`put`]; a failure leaves the entry local only (the local copy still serves).
    pub fn put(&self, key: &str, entry: &Cached) {
        if let Err(e) = put(&self.cluster, key, entry) {
            // A failed call was warned about by the cluster link; a skipped one (Redis
            // resting) is covered by that warning's "for the next 1s".
            tracing::debug!(target: "proxycache::stdlib", key, error = %e, "cache entry not written to the shared tier");
            self.fallbacks.inc();
        }
    }
}

/// Removes `key` from the shared tier.
pub fn remove(cluster: &Cluster, key: &str) -> Result<(), ClusterError> {
    cluster.del(&format!("c:{key}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_the_wire_format() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        let c = Cached {
            status: StatusCode::NOT_FOUND,
            headers,
            body: Bytes::from_static(b"hello body"),
            stored_at: Instant::now() - Duration::from_secs(3),
            fresh_for: Duration::from_secs(60),
            stale_for: Duration::from_secs(5),
        };
        let back = decode(encode(&c)).unwrap_or_else(|| panic!("decodes"));
        assert_eq!(back.status, StatusCode::NOT_FOUND);
        assert_eq!(back.body, c.body);
        assert_eq!(back.headers, c.headers);
        assert_eq!(back.fresh_for, c.fresh_for);
        assert_eq!(back.stale_for, c.stale_for);
        let age = back.age(Instant::now());
        assert!((2..=4).contains(&age), "age {age}");
        assert!(decode(Bytes::from_static(b"\x02junk")).is_none());
        assert!(decode(Bytes::new()).is_none());
    }
}
