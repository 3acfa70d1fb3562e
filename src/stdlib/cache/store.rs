//! The in-memory HTTP cache of the process: entries in a byte-bounded TinyLFU map
//! (moka), the table of fills in flight (so concurrent misses for one key make one
//! upstream request), and the body that tees a response into the cache while it
//! streams to the client.
//!
//! Must not touch: cacheability rules (`policy`), the request in flight.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName};
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::watch;

use crate::http::body::{BoxError, ProxyBody};

/// Settings of the cache (`[cache]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// Bytes held at most, bodies, headers and keys counted.
    pub max_size: u64,
    /// Responses with larger bodies are not stored.
    pub max_entry_size: u64,
    /// How long a request waits for another request's fill of the same key.
    pub lock_timeout: Duration,
    /// Also keep entries in Redis (`[redis]`) for other processes.
    pub shared: bool,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_size: 64 * 1024 * 1024,
            max_entry_size: 1024 * 1024,
            lock_timeout: Duration::from_secs(5),
            shared: false,
        }
    }
}

/// A stored response.
#[derive(Debug)]
pub struct Cached {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When it was made, on this process's clock: when it was stored, less the `Age`
    /// it arrived with.
    pub stored_at: Instant,
    pub fresh_for: Duration,
    pub stale_for: Duration,
}

impl Cached {
    /// `stored_at` for a response stored `now` that arrived `age` old, with its
    /// `fresh_for` (which counts from `stored_at`). Should `now - age` not be a time
    /// this clock can tell, the age is taken off the freshness instead.
    pub fn made_at(now: Instant, age: Duration, fresh_for: Duration) -> (Instant, Duration) {
        match now.checked_sub(age) {
            Some(at) => (at, fresh_for),
            None => (now, fresh_for.saturating_sub(age)),
        }
    }

    /// Whether it may be served without asking the upstream.
    pub fn is_fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.stored_at) < self.fresh_for
    }

    /// Whether it may be served while one request refreshes it.
    pub fn is_usable_stale(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.stored_at)
            < self.fresh_for.saturating_add(self.stale_for)
    }

    /// How long it may still be kept: until it is too stale to serve.
    pub fn keep_for(&self, now: Instant) -> Duration {
        self.fresh_for
            .saturating_add(self.stale_for)
            .saturating_sub(now.saturating_duration_since(self.stored_at))
    }

    /// Its age in seconds (the `Age` header): the age it arrived with plus the time
    /// it has been here.
    pub fn age(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.stored_at).as_secs()
    }

    fn weight(&self, key: &str) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        u32::try_from(key.len() + headers + self.body.len() + 128).unwrap_or(u32::MAX)
    }
}

/// What one key holds: a response, or the `Vary` names its variants are keyed by.
#[derive(Debug, Clone)]
pub enum Slot {
    Resp(Arc<Cached>),
    Vary(Arc<[HeaderName]>),
}

/// Entries live until they are too stale to serve (`Vary` records until evicted).
struct SlotExpiry;

impl moka::Expiry<Arc<str>, Slot> for SlotExpiry {
    fn expire_after_create(&self, _: &Arc<str>, slot: &Slot, at: Instant) -> Option<Duration> {
        match slot {
            Slot::Resp(c) => Some(c.keep_for(at)),
            Slot::Vary(_) => None,
        }
    }

    fn expire_after_update(
        &self,
        key: &Arc<str>,
        slot: &Slot,
        at: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, slot, at)
    }
}

/// Counters of the cache's work since the process started: the registry's
/// `proxycache_cache_*_total` (a stale hit counts as a hit).
#[derive(Debug, Default)]
pub struct CacheCounts {
    pub hits: Counter,
    pub misses: Counter,
    /// Responses the cache kept.
    pub stores: Counter,
    /// Responses offered to the cache that its admission policy turned away (TinyLFU:
    /// a full cache keeps what is asked for more often than the newcomer).
    pub rejected: Counter,
}

/// A fill in flight: its id (so a late guard never removes a newer fill) and the
/// channel its waiters watch.
type Fill = (u64, watch::Receiver<()>);

/// The cache of the process; survives reloads.
pub struct HttpCache {
    entries: moka::sync::Cache<Arc<str>, Slot>,
    /// Body bytes held by fills in flight (not in `entries` yet): kept within
    /// `max_size` too, so many large fills at once cannot hold more than the cache.
    filling: AtomicU64,
    inflight: Mutex<HashMap<Arc<str>, Fill>>,
    next_fill: AtomicU64,
    pub settings: CacheSettings,
    pub counts: CacheCounts,
}

impl std::fmt::Debug for HttpCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpCache")
            .field("entries", &self.entries.entry_count())
            .field("settings", &self.settings)
            .finish()
    }
}

impl Default for HttpCache {
    fn default() -> Self {
        HttpCache::new(CacheSettings::default())
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    Fresh(Arc<Cached>),
    /// Stale but inside `stale-while-revalidate`.
    Stale(Arc<Cached>),
    Miss,
}

impl HttpCache {
    /// An empty cache.
    pub fn new(settings: CacheSettings) -> Self {
        HttpCache::with_counts(settings, CacheCounts::default())
    }

    /// An empty cache counting into `counts`.
    pub fn with_counts(settings: CacheSettings, counts: CacheCounts) -> Self {
        HttpCache {
            entries: moka::sync::Cache::builder()
                .max_capacity(settings.max_size)
                .weigher(|key: &Arc<str>, slot: &Slot| match slot {
                    Slot::Resp(c) => c.weight(key),
                    Slot::Vary(names) => {
                        u32::try_from(key.len() + names.len() * 32 + 64).unwrap_or(u32::MAX)
                    }
                })
                .expire_after(SlotExpiry)
                .support_invalidation_closures()
                .build(),
            filling: AtomicU64::new(0),
            inflight: Mutex::new(HashMap::new()),
            next_fill: AtomicU64::new(0),
            settings,
            counts,
        }
    }

    /// Finds the response for `primary`, following a `Vary` record with the request's
    /// headers.
    pub fn lookup(&self, primary: &str, req: &HeaderMap, now: Instant) -> Lookup {
        let found = match self.entries.get(primary) {
            Some(Slot::Resp(c)) => Some(c),
            Some(Slot::Vary(names)) => {
                match self
                    .entries
                    .get(super::policy::variant_key(primary, &names, req).as_str())
                {
                    Some(Slot::Resp(c)) => Some(c),
                    _ => None,
                }
            }
            None => None,
        };
        match found {
            Some(c) if c.is_fresh(now) => Lookup::Fresh(c),
            Some(c) if c.is_usable_stale(now) => Lookup::Stale(c),
            _ => Lookup::Miss,
        }
    }

    /// Stores a response under `primary`, or under its variant key when `vary` names
    /// headers (then `primary` records the names).
    ///
    /// moka decides admission in its upkeep, after the insert: that runs here, at
    /// once, so `stores` counts only what the cache kept and `rejected` what TinyLFU
    /// turned away. (The upkeep is work moka does on inserts anyway; this runs it now
    /// rather than at the next batch.)
    pub fn insert(&self, primary: &Arc<str>, vary: &[HeaderName], req: &HeaderMap, entry: Cached) {
        let entry = Slot::Resp(Arc::new(entry));
        let key = if vary.is_empty() {
            Arc::clone(primary)
        } else {
            self.entries
                .insert(Arc::clone(primary), Slot::Vary(Arc::from(vary)));
            Arc::from(super::policy::variant_key(primary, vary, req))
        };
        self.entries.insert(Arc::clone(&key), entry);
        self.entries.run_pending_tasks();
        if self.entries.contains_key(key.as_ref()) {
            self.counts.stores.inc();
        } else {
            self.counts.rejected.inc();
        }
    }

    /// Keeps an entry that came from the shared tier (not counted as a store).
    pub fn insert_shared(&self, primary: &Arc<str>, entry: Arc<Cached>) {
        self.entries.insert(Arc::clone(primary), Slot::Resp(entry));
    }

    /// Becomes the one request filling `key`, or learns whom to wait for.
    pub fn claim(self: &Arc<Self>, key: &Arc<str>) -> Claim {
        let mut inflight = self.inflight.lock();
        if let Some((_, rx)) = inflight.get(key) {
            return Claim::Wait(rx.clone());
        }
        let id = self.next_fill.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(());
        inflight.insert(Arc::clone(key), (id, rx));
        Claim::Fill(FillGuard {
            cache: Arc::clone(self),
            key: Arc::clone(key),
            id,
            _tx: tx,
        })
    }

    /// The key a miss of `primary` fills: the variant's, when `primary` records
    /// `Vary` names (so requests for different variants do not wait for each other).
    pub fn fill_key(&self, primary: &Arc<str>, req: &HeaderMap) -> Arc<str> {
        match self.entries.get(primary.as_ref()) {
            Some(Slot::Vary(names)) => Arc::from(super::policy::variant_key(primary, &names, req)),
            _ => Arc::clone(primary),
        }
    }

    /// Drops `primary` and every variant stored under it (after an unsafe request
    /// changed the resource, RFC 9111 §4.4).
    pub fn invalidate(&self, primary: &str) {
        if let Some(Slot::Vary(_)) = self.entries.get(primary) {
            let prefix: Arc<str> = Arc::from(format!("{primary}\n"));
            let dropped = self
                .entries
                .invalidate_entries_if(move |k, _| k.starts_with(prefix.as_ref()));
            if let Err(e) = dropped {
                tracing::warn!(target: "proxycache::stdlib", error = %e, "cache variants not invalidated");
            }
        }
        self.entries.invalidate(primary);
    }
}

/// The answer of [`HttpCache::claim`].
#[derive(Debug)]
pub enum Claim {
    Fill(FillGuard),
    Wait(watch::Receiver<()>),
}

/// Held by the one request fetching a key; dropping it (stored, not cacheable, or
/// failed) wakes the requests waiting for it.
pub struct FillGuard {
    cache: Arc<HttpCache>,
    key: Arc<str>,
    id: u64,
    _tx: watch::Sender<()>,
}

impl std::fmt::Debug for FillGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FillGuard").field("key", &self.key).finish()
    }
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        let mut inflight = self.cache.inflight.lock();
        if inflight
            .get(&self.key)
            .is_some_and(|(id, _)| *id == self.id)
        {
            inflight.remove(&self.key);
        }
        // `_tx` drops after this: waiters wake and look again.
    }
}

/// Waits until the fill `rx` belongs to ends, or `timeout`.
pub async fn wait_for_fill(mut rx: watch::Receiver<()>, timeout: Duration) {
    // `changed` fails once the sender (the fill guard) is gone, which is the signal.
    let _ = tokio::time::timeout(timeout, async { while rx.changed().await.is_ok() {} }).await;
}

/// A response on its way into the cache once its body is complete.
#[derive(Debug)]
pub struct PendingEntry {
    pub cache: Arc<HttpCache>,
    pub primary: Arc<str>,
    pub vary: Vec<HeaderName>,
    /// The request headers the `Vary` names are read from.
    pub req_headers: HeaderMap,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub fresh_for: Duration,
    /// The `Age` the response arrived with.
    pub age: Duration,
    pub stale_for: Duration,
    /// `Content-Length` of the response, checked against what arrived.
    pub expect_len: Option<u64>,
    /// Released when the entry is stored or abandoned.
    pub guard: Option<FillGuard>,
    /// The shared tier to write the entry to as well (`cache.shared`, no `Vary`).
    pub shared: Option<super::shared::Writer>,
}

/// A body that passes frames through untouched and keeps a copy (reference-counted
/// chunks, no copying while streaming); stores the response when the body ends.
pub struct TeeBody {
    inner: ProxyBody,
    pending: Option<Box<PendingEntry>>,
    chunks: Vec<Bytes>,
    size: u64,
    limit: u64,
    cache: Arc<HttpCache>,
    /// Bytes of `chunks` counted in `cache.filling`.
    held: u64,
}

impl TeeBody {
    /// Tees `inner` into `pending` (up to `limit` bytes; a larger body is not stored).
    pub fn new(inner: ProxyBody, pending: PendingEntry, limit: u64) -> Self {
        TeeBody {
            inner,
            cache: Arc::clone(&pending.cache),
            pending: Some(Box::new(pending)),
            chunks: Vec::new(),
            size: 0,
            limit,
            held: 0,
        }
    }

    fn abandon(&mut self, why: &'static str) {
        if let Some(p) = self.pending.take() {
            tracing::debug!(target: "proxycache::stdlib", key = %p.primary, why, "cache fill abandoned");
        }
        self.chunks = Vec::new();
        self.release();
    }

    /// Gives back the bytes this fill counted in `cache.filling`.
    fn release(&mut self) {
        if self.held > 0 {
            self.cache.filling.fetch_sub(self.held, Ordering::Relaxed);
            self.held = 0;
        }
    }

    /// Counts `n` more bytes held by this fill; false when all fills in flight would
    /// then hold more than `max_size`.
    fn hold(&mut self, n: u64) -> bool {
        let before = self.cache.filling.fetch_add(n, Ordering::Relaxed);
        self.held += n;
        before + n <= self.cache.settings.max_size
    }

    /// Stores the entry, once the body has ended (at once for a body that never began).
    pub fn finish(&mut self) {
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.expect_len.is_some_and(|n| n != self.size))
        {
            return self.abandon("body length differs from Content-Length");
        }
        let Some(p) = self.pending.take() else { return };
        self.release();
        let body = match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks.pop().unwrap_or_default(),
            _ => {
                let mut all = BytesMut::with_capacity(self.size as usize);
                for c in self.chunks.drain(..) {
                    all.extend_from_slice(&c);
                }
                all.freeze()
            }
        };
        let p = *p;
        let (stored_at, fresh_for) = Cached::made_at(Instant::now(), p.age, p.fresh_for);
        let entry = Cached {
            status: p.status,
            headers: p.headers,
            body,
            stored_at,
            fresh_for,
            stale_for: p.stale_for,
        };
        if let Some(shared) = &p.shared {
            shared.put(&p.primary, &entry);
        }
        p.cache.insert(&p.primary, &p.vary, &p.req_headers, entry);
        // `p.guard` drops here, after the insert: waiters find the entry.
    }
}

impl Body for TeeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => match f.data_ref() {
                Some(data) if this.pending.is_some() => {
                    this.size += data.len() as u64;
                    if this.size > this.limit {
                        this.abandon("body larger than cache.max_entry_size");
                    } else if !this.hold(data.len() as u64) {
                        this.abandon("fills in flight hold cache.max_size");
                    } else {
                        this.chunks.push(data.clone());
                        // hyper stops polling once the body says it has ended.
                        if this.inner.is_end_stream() {
                            this.finish();
                        }
                    }
                }
                Some(_) => {}
                None => this.abandon("trailers"),
            },
            Some(Err(_)) => this.abandon("body failed"),
            None => this.finish(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TeeBody {
    fn drop(&mut self) {
        if self.pending.is_some() {
            self.abandon("response not finished");
        }
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(cache: &Arc<HttpCache>, key: &str) -> TeeBody {
        let pending = PendingEntry {
            cache: Arc::clone(cache),
            primary: Arc::from(key),
            vary: Vec::new(),
            req_headers: HeaderMap::new(),
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            fresh_for: Duration::from_secs(60),
            age: Duration::ZERO,
            stale_for: Duration::ZERO,
            expect_len: None,
            guard: None,
            shared: None,
        };
        TeeBody::new(ProxyBody::Empty, pending, cache.settings.max_entry_size)
    }

    /// Fills in flight count against `max_size`: many large fills at once held their
    /// bodies outside every bound.
    #[test]
    fn fills_in_flight_hold_at_most_max_size() {
        let cache = Arc::new(HttpCache::new(CacheSettings {
            max_size: 100,
            max_entry_size: 100,
            ..CacheSettings::default()
        }));
        let (mut a, mut b) = (fill(&cache, "a"), fill(&cache, "b"));
        assert!(a.hold(80));
        assert!(!b.hold(80), "two fills of 80 bytes do not fit in 100");
        b.abandon("test");
        assert!(b.hold(20), "what an abandoned fill held is given back");
        drop(a);
        drop(b);
        assert_eq!(cache.filling.load(Ordering::Relaxed), 0);
    }
}
