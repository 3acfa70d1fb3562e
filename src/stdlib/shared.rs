//! `std.shared`: a typed key/value dictionary shared by every worker thread (like
//! OpenResty's `lua_shared_dict`), behind `std.shared.get/set/incr(key, value?, ttl?)`.
//!
//! It owns the entries, their expiry and the memory bound. The map is split into
//! shards, each behind its own lock, so workers rarely contend. The bound (`max_keys`,
//! `max_bytes`) is split evenly across shards, and a write never fails for lack of
//! room: it drops expired entries, then evicts the shard's least recently used ones
//! until the new entry fits (nginx's slab allocator, by contrast, can fail on
//! fragmentation). Expired entries are invisible at once and removed lazily.
//!
//! Must not touch: script values (the binding converts at the edge), the clock (every
//! call takes `now`, so tests need no sleeping), sockets.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Keys a dictionary built by [`SharedDict::default`] holds at most.
pub const DEFAULT_MAX_KEYS: usize = 100_000;
/// Bytes (as [`SharedDict::bytes`] counts them) a default dictionary holds at most.
pub const DEFAULT_MAX_BYTES: usize = 16 << 20;
/// The longest key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// The largest value, in bytes (a string's length; 8 for a number, 1 for a bool).
pub const MAX_VALUE_LEN: usize = 1 << 20;
/// Bytes charged per entry on top of its key and value, for the map and LRU nodes.
pub const ENTRY_OVERHEAD: usize = 64;

/// Most shards a dictionary is split into; 16 locks make contention rare.
const MAX_SHARDS: usize = 16;
/// Fewest keys per shard: below this, LRU order per shard drifts too far from the
/// dictionary's, so small dictionaries get fewer shards (one, if tiny).
const MIN_SHARD_KEYS: usize = 64;
/// The largest entry; a shard's byte budget should hold one, so a value of
/// [`MAX_VALUE_LEN`] fits whenever the dictionary's budget allows it at all.
const MAX_ENTRY_BYTES: usize = MAX_KEY_LEN + MAX_VALUE_LEN + ENTRY_OVERHEAD;

/// A value the dictionary holds.
#[derive(Debug, Clone, PartialEq)]
pub enum SharedValue {
    /// Charged 1 byte.
    Bool(bool),
    /// Charged 8 bytes; `incr` keeps Int + Int an Int.
    Int(i64),
    /// Charged 8 bytes.
    Float(f64),
    /// Charged its length; shared, so `get` copies no bytes.
    Str(Arc<str>),
    /// A string that is not UTF-8 (a Lua string may hold any bytes, as in
    /// OpenResty's `ngx.shared.DICT`), kept byte for byte. Charged its length.
    Bytes(bytes::Bytes),
}

impl SharedValue {
    /// The name used in messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            SharedValue::Bool(_) => "bool",
            SharedValue::Int(_) => "int",
            SharedValue::Float(_) => "float",
            SharedValue::Str(_) | SharedValue::Bytes(_) => "string",
        }
    }

    /// The bytes charged for this value.
    pub fn byte_len(&self) -> usize {
        match self {
            SharedValue::Bool(_) => 1,
            SharedValue::Int(_) | SharedValue::Float(_) => 8,
            SharedValue::Str(s) => s.len(),
            SharedValue::Bytes(b) => b.len(),
        }
    }

    /// A string value from a script's bytes: text as [`SharedValue::Str`], anything
    /// else as [`SharedValue::Bytes`].
    pub fn from_bytes(bytes: bytes::Bytes) -> Self {
        match std::str::from_utf8(&bytes) {
            Ok(text) => SharedValue::Str(Arc::from(text)),
            Err(_) => SharedValue::Bytes(bytes),
        }
    }

    fn is_number(&self) -> bool {
        matches!(self, SharedValue::Int(_) | SharedValue::Float(_))
    }
}

/// Why a write to the dictionary failed. Running out of room is never one: the
/// dictionary evicts instead.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SharedError {
    /// `incr` on a key holding a bool or string.
    #[error("value of {key:?} is a {found}, not a number")]
    NotANumber {
        /// The key incremented.
        key: String,
        /// [`SharedValue::type_name`] of what it holds.
        found: &'static str,
    },
    /// `incr` by a bool or string.
    #[error("increment is a {found}, not a number")]
    IncrementNotANumber {
        /// [`SharedValue::type_name`] of the increment.
        found: &'static str,
    },
    /// A key longer than [`MAX_KEY_LEN`].
    #[error("key is {len} bytes; the limit is {limit}")]
    KeyTooLong {
        /// The key's length in bytes.
        len: usize,
        /// [`MAX_KEY_LEN`].
        limit: usize,
    },
    /// A value larger than [`MAX_VALUE_LEN`], or than a shard's whole byte budget.
    #[error("value is {len} bytes; the limit is {limit}")]
    ValueTooLarge {
        /// [`SharedValue::byte_len`] of the value.
        len: usize,
        /// [`MAX_VALUE_LEN`], or less when the dictionary's per-shard byte budget
        /// cannot hold the entry even when empty.
        limit: usize,
    },
    /// Int + Int out of `i64` range; the stored value is unchanged.
    #[error("integer overflow")]
    Overflow,
}

/// The dictionary: sharded, bounded, with per-key expiry and LRU eviction.
pub struct SharedDict {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    max_keys: usize,
    max_bytes: usize,
}

impl Default for SharedDict {
    fn default() -> Self {
        SharedDict::new(DEFAULT_MAX_KEYS, DEFAULT_MAX_BYTES)
    }
}

impl fmt::Debug for SharedDict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedDict")
            .field("len", &self.len())
            .field("bytes", &self.bytes())
            .field("shards", &self.shards.len())
            .field("max_keys", &self.max_keys)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

impl SharedDict {
    /// A dictionary holding at most `max_keys` entries (at least 1) and `max_bytes`
    /// bytes as [`SharedDict::bytes`] counts them.
    pub fn new(max_keys: usize, max_bytes: usize) -> Self {
        let max_keys = max_keys.max(1);
        let n = shard_count(max_keys, max_bytes);
        let shards = (0..n)
            .map(|_| Mutex::new(Shard::new(max_keys / n, max_bytes / n)))
            .collect();
        SharedDict {
            shards,
            hasher: RandomState::new(),
            max_keys,
            max_bytes,
        }
    }

    /// The value of `key`, refreshing its recency; an expired key is absent.
    pub fn get(&self, key: &str, now: Instant) -> Option<SharedValue> {
        let mut shard = self.shard(key).lock();
        shard.lookup(key, now).map(|entry| entry.value.clone())
    }

    /// Stores `value` under `key`, replacing any old value and its expiry.
    /// `None` deletes. `ttl` `None` means no expiry; a zero `ttl` deletes.
    pub fn set(
        &self,
        key: &str,
        value: Option<SharedValue>,
        ttl: Option<Duration>,
        now: Instant,
    ) -> Result<(), SharedError> {
        check_key(key)?;
        let shard = self.shard(key);
        let Some(value) = value else {
            shard.lock().remove(key);
            return Ok(());
        };
        if value.byte_len() > MAX_VALUE_LEN {
            return Err(SharedError::ValueTooLarge {
                len: value.byte_len(),
                limit: MAX_VALUE_LEN,
            });
        }
        let mut shard = shard.lock();
        shard.check_fits(key, &value)?;
        shard.remove(key);
        if let Some(expires) = expiry(ttl, now) {
            shard.insert(key, value, expires, now);
        }
        Ok(())
    }

    /// Adds `by` to a number. An absent (or expired) key starts from 0 and gets `ttl`;
    /// an existing one keeps its expiry. Int + Int stays Int (checked; overflow is
    /// [`SharedError::Overflow`] and leaves the value as it was); anything with a
    /// Float gives Float. Returns the new value.
    pub fn incr(
        &self,
        key: &str,
        by: SharedValue,
        ttl: Option<Duration>,
        now: Instant,
    ) -> Result<SharedValue, SharedError> {
        check_key(key)?;
        if !by.is_number() {
            return Err(SharedError::IncrementNotANumber {
                found: by.type_name(),
            });
        }
        let mut shard = self.shard(key).lock();
        if let Some(entry) = shard.lookup(key, now) {
            let new = add(key, &entry.value, &by)?;
            let (old_len, new_len) = (entry.value.byte_len(), new.byte_len());
            entry.value = new.clone();
            // Int and Float are both 8 bytes today; keep the count right regardless.
            shard.bytes = shard.bytes - old_len + new_len;
            return Ok(new);
        }
        // 0 + a number is that number, as the same type.
        shard.check_fits(key, &by)?;
        if let Some(expires) = expiry(ttl, now) {
            shard.insert(key, by.clone(), expires, now);
        }
        Ok(by)
    }

    /// Entries held, counting expired ones not yet removed.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }

    /// Whether no entries are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes charged: key + value + [`ENTRY_OVERHEAD`] per entry held.
    pub fn bytes(&self) -> usize {
        self.shards.iter().map(|s| s.lock().bytes).sum()
    }

    fn shard(&self, key: &str) -> &Mutex<Shard> {
        // The hash is keyed per dictionary, so clients cannot pile keys on one shard.
        let index = self.hasher.hash_one(key) % self.shards.len() as u64;
        &self.shards[index as usize]
    }
}

/// The largest power of two up to [`MAX_SHARDS`] that leaves each shard
/// [`MIN_SHARD_KEYS`] keys and room for one [`MAX_ENTRY_BYTES`] entry.
fn shard_count(max_keys: usize, max_bytes: usize) -> usize {
    let mut n = MAX_SHARDS;
    while n > 1 && (max_keys / n < MIN_SHARD_KEYS || max_bytes / n < MAX_ENTRY_BYTES) {
        n /= 2;
    }
    n
}

fn check_key(key: &str) -> Result<(), SharedError> {
    if key.len() > MAX_KEY_LEN {
        return Err(SharedError::KeyTooLong {
            len: key.len(),
            limit: MAX_KEY_LEN,
        });
    }
    Ok(())
}

/// When an entry written at `now` expires: `Some(None)` never, `None` already
/// (a zero ttl). A ttl past what `Instant` can hold means never.
fn expiry(ttl: Option<Duration>, now: Instant) -> Option<Option<Instant>> {
    match ttl {
        None => Some(None),
        Some(ttl) if ttl.is_zero() => None,
        Some(ttl) => Some(now.checked_add(ttl)),
    }
}

fn add(key: &str, current: &SharedValue, by: &SharedValue) -> Result<SharedValue, SharedError> {
    use SharedValue::{Float, Int};
    match (current, by) {
        (Int(a), Int(b)) => a.checked_add(*b).map(Int).ok_or(SharedError::Overflow),
        (Int(a), Float(b)) => Ok(Float(*a as f64 + b)),
        (Float(a), Int(b)) => Ok(Float(a + *b as f64)),
        (Float(a), Float(b)) => Ok(Float(a + b)),
        (Int(_) | Float(_), other) => Err(SharedError::IncrementNotANumber {
            found: other.type_name(),
        }),
        (other, _) => Err(SharedError::NotANumber {
            key: key.to_owned(),
            found: other.type_name(),
        }),
    }
}

fn entry_size(key: &str, value: &SharedValue) -> usize {
    key.len() + value.byte_len() + ENTRY_OVERHEAD
}

struct Entry {
    value: SharedValue,
    expires: Option<Instant>,
    /// Last use; the entry's key in [`Shard::lru`].
    tick: u64,
    /// Set once at insertion; with `expires`, the entry's key in [`Shard::expiry`].
    id: u64,
}

impl Entry {
    fn is_expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|at| at <= now)
    }
}

/// One lock's worth of the dictionary. Invariant: every entry of `map` has exactly one
/// node in `lru` (under its `tick`) and, if it expires, one in `expiry`; `bytes` is the
/// sum of their [`entry_size`]s.
struct Shard {
    map: HashMap<Arc<str>, Entry>,
    /// Least recently used first. A BTreeMap rather than a linked list: O(log n) per
    /// touch, no unsafe, and `pop_first` finds the victim.
    lru: BTreeMap<u64, Arc<str>>,
    /// Soonest expiry first, so making room drops expired entries without a scan.
    expiry: BTreeMap<(Instant, u64), Arc<str>>,
    bytes: usize,
    clock: u64,
    max_keys: usize,
    max_bytes: usize,
}

impl Shard {
    fn new(max_keys: usize, max_bytes: usize) -> Self {
        Shard {
            map: HashMap::new(),
            lru: BTreeMap::new(),
            expiry: BTreeMap::new(),
            bytes: 0,
            clock: 0,
            max_keys,
            max_bytes,
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The live entry of `key`, marked most recently used; an expired one is removed.
    fn lookup(&mut self, key: &str, now: Instant) -> Option<&mut Entry> {
        if self.map.get(key)?.is_expired(now) {
            self.remove(key);
            return None;
        }
        let tick = self.tick();
        let entry = self.map.get_mut(key)?;
        if let Some(node) = self.lru.remove(&entry.tick) {
            self.lru.insert(tick, node);
        }
        entry.tick = tick;
        Some(entry)
    }

    /// Errs when `key` with `value` exceeds the budget of this shard even when empty.
    fn check_fits(&self, key: &str, value: &SharedValue) -> Result<(), SharedError> {
        if entry_size(key, value) > self.max_bytes {
            return Err(SharedError::ValueTooLarge {
                len: value.byte_len(),
                limit: self.max_bytes.saturating_sub(key.len() + ENTRY_OVERHEAD),
            });
        }
        Ok(())
    }

    /// Inserts an absent key, making room first. The caller has run [`Self::check_fits`].
    fn insert(&mut self, key: &str, value: SharedValue, expires: Option<Instant>, now: Instant) {
        let size = entry_size(key, &value);
        self.make_room(size, now);
        let key: Arc<str> = Arc::from(key);
        let tick = self.tick();
        self.lru.insert(tick, Arc::clone(&key));
        if let Some(at) = expires {
            self.expiry.insert((at, tick), Arc::clone(&key));
        }
        self.bytes += size;
        let entry = Entry {
            value,
            expires,
            tick,
            id: tick,
        };
        self.map.insert(key, entry);
    }

    /// Frees room for one more entry of `size` bytes: expired entries first, then
    /// least recently used ones.
    fn make_room(&mut self, size: usize, now: Instant) {
        if self.fits(size) {
            return;
        }
        self.purge_expired(now);
        while !self.fits(size) {
            let Some(key) = self.lru.first_key_value().map(|(_, k)| Arc::clone(k)) else {
                return;
            };
            self.remove(&key);
        }
    }

    fn fits(&self, size: usize) -> bool {
        self.map.len() < self.max_keys && self.bytes + size <= self.max_bytes
    }

    fn purge_expired(&mut self, now: Instant) {
        while let Some(((at, _), key)) = self.expiry.first_key_value() {
            if *at > now {
                return;
            }
            let key = Arc::clone(key);
            self.remove(&key);
        }
    }

    fn remove(&mut self, key: &str) -> Option<SharedValue> {
        let (key, entry) = self.map.remove_entry(key)?;
        self.lru.remove(&entry.tick);
        if let Some(at) = entry.expires {
            self.expiry.remove(&(at, entry.id));
        }
        self.bytes -= entry_size(&key, &entry.value);
        Some(entry.value)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use SharedValue::{Bool, Float, Int, Str};

    fn s(text: &str) -> SharedValue {
        Str(Arc::from(text))
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<SharedDict>();
    }

    #[test]
    fn get_set_delete() {
        let dict = SharedDict::default();
        let now = Instant::now();
        assert!(dict.is_empty());
        assert_eq!(dict.get("a", now), None);
        dict.set("a", Some(s("x")), None, now).unwrap();
        dict.set("b", Some(Int(7)), None, now).unwrap();
        dict.set("c", Some(Bool(true)), None, now).unwrap();
        dict.set("d", Some(Float(1.5)), None, now).unwrap();
        assert_eq!(dict.get("a", now), Some(s("x")));
        assert_eq!(dict.get("b", now), Some(Int(7)));
        assert_eq!(dict.get("c", now), Some(Bool(true)));
        assert_eq!(dict.get("d", now), Some(Float(1.5)));
        assert_eq!(dict.len(), 4);
        assert_eq!(dict.bytes(), 4 + 1 + 8 + 1 + 8 + 4 * ENTRY_OVERHEAD);
        dict.set("a", Some(s("longer")), None, now).unwrap();
        assert_eq!(dict.get("a", now), Some(s("longer")));
        assert_eq!(dict.len(), 4);
        dict.set("a", None, None, now).unwrap();
        dict.set("missing", None, None, now).unwrap();
        assert_eq!(dict.get("a", now), None);
        assert_eq!(dict.len(), 3);
        assert_eq!(dict.bytes(), 3 + 8 + 1 + 8 + 3 * ENTRY_OVERHEAD);
        assert!(format!("{dict:?}").contains("len: 3"));
    }

    #[test]
    fn ttl_expiry() {
        let dict = SharedDict::default();
        let t0 = Instant::now();
        dict.set("k", Some(Int(1)), Some(secs(10)), t0).unwrap();
        dict.set("forever", Some(Int(2)), None, t0).unwrap();
        assert_eq!(dict.get("k", t0 + secs(9)), Some(Int(1)));
        assert_eq!(dict.get("k", t0 + secs(10)), None);
        assert_eq!(dict.len(), 1, "an expired key is removed when read");
        assert_eq!(dict.get("forever", t0 + secs(1_000_000)), Some(Int(2)));

        // A new set replaces the expiry, including with none.
        dict.set("k", Some(Int(3)), Some(secs(5)), t0).unwrap();
        dict.set("k", Some(Int(4)), None, t0).unwrap();
        assert_eq!(dict.get("k", t0 + secs(100)), Some(Int(4)));

        // A zero ttl deletes; a huge one never expires.
        dict.set("k", Some(Int(5)), Some(Duration::ZERO), t0)
            .unwrap();
        assert_eq!(dict.get("k", t0), None);
        dict.set("k", Some(Int(6)), Some(Duration::MAX), t0)
            .unwrap();
        assert_eq!(dict.get("k", t0 + secs(1_000_000)), Some(Int(6)));
    }

    #[test]
    fn incr_absent_int_float() {
        let dict = SharedDict::default();
        let t0 = Instant::now();
        assert_eq!(dict.incr("n", Int(2), None, t0), Ok(Int(2)));
        assert_eq!(dict.incr("n", Int(3), None, t0), Ok(Int(5)));
        assert_eq!(dict.incr("n", Int(-10), None, t0), Ok(Int(-5)));
        assert_eq!(dict.incr("n", Float(0.5), None, t0), Ok(Float(-4.5)));
        assert_eq!(dict.incr("n", Int(1), None, t0), Ok(Float(-3.5)));
        assert_eq!(dict.get("n", t0), Some(Float(-3.5)));
        assert_eq!(dict.incr("f", Float(1.25), None, t0), Ok(Float(1.25)));
        assert_eq!(dict.bytes(), 2 + 16 + 2 * ENTRY_OVERHEAD);
    }

    #[test]
    fn incr_ttl_applies_only_to_a_new_key() {
        let dict = SharedDict::default();
        let t0 = Instant::now();
        assert_eq!(dict.incr("n", Int(1), Some(secs(10)), t0), Ok(Int(1)));
        // An existing key keeps its expiry whatever ttl is passed.
        let later = Some(secs(100));
        assert_eq!(dict.incr("n", Int(1), later, t0 + secs(5)), Ok(Int(2)));
        assert_eq!(dict.get("n", t0 + secs(9)), Some(Int(2)));
        assert_eq!(dict.get("n", t0 + secs(10)), None);
        // Once expired, it starts again from 0 with the new ttl.
        dict.set("m", Some(Int(40)), Some(secs(1)), t0).unwrap();
        assert_eq!(
            dict.incr("m", Int(2), Some(secs(10)), t0 + secs(1)),
            Ok(Int(2))
        );
        assert_eq!(dict.get("m", t0 + secs(10)), Some(Int(2)));
        assert_eq!(dict.get("m", t0 + secs(11)), None);
    }

    #[test]
    fn incr_errors() {
        let dict = SharedDict::default();
        let now = Instant::now();
        dict.set("s", Some(s("abc")), None, now).unwrap();
        assert_eq!(
            dict.incr("s", Int(1), None, now),
            Err(SharedError::NotANumber {
                key: "s".into(),
                found: "string"
            })
        );
        dict.set("b", Some(Bool(false)), None, now).unwrap();
        assert!(matches!(
            dict.incr("b", Float(1.0), None, now),
            Err(SharedError::NotANumber { found: "bool", .. })
        ));
        assert_eq!(
            dict.incr("n", s("1"), None, now),
            Err(SharedError::IncrementNotANumber { found: "string" })
        );
        assert_eq!(dict.get("n", now), None);

        dict.set("max", Some(Int(i64::MAX)), None, now).unwrap();
        assert_eq!(
            dict.incr("max", Int(1), None, now),
            Err(SharedError::Overflow)
        );
        assert_eq!(dict.get("max", now), Some(Int(i64::MAX)));
        dict.set("min", Some(Int(i64::MIN)), None, now).unwrap();
        assert_eq!(
            dict.incr("min", Int(-1), None, now),
            Err(SharedError::Overflow)
        );
        assert_eq!(
            dict.incr("min", Float(-1.0), None, now),
            Ok(Float(i64::MIN as f64 - 1.0))
        );
    }

    #[test]
    fn bounded_keys_single_shard_keeps_the_newest() {
        let dict = SharedDict::new(8, 1 << 20);
        let now = Instant::now();
        for i in 0..80 {
            dict.set(&format!("k{i}"), Some(Int(i)), None, now).unwrap();
            assert!(dict.len() <= 8);
        }
        assert_eq!(dict.len(), 8);
        for i in 72..80 {
            assert_eq!(dict.get(&format!("k{i}"), now), Some(Int(i)));
        }
        assert_eq!(dict.get("k71", now), None);
    }

    #[test]
    fn bounded_keys_sharded() {
        let dict = SharedDict::new(1024, 64 << 20);
        assert_eq!(dict.shards.len(), 16);
        let now = Instant::now();
        for i in 0..10_240 {
            let key = format!("key-{i}");
            assert_eq!(dict.incr(&key, Int(i), None, now), Ok(Int(i)));
            assert!(dict.len() <= 1024);
            assert_eq!(
                dict.get(&key, now),
                Some(Int(i)),
                "the newest key is present"
            );
        }
        // Every shard is full (at most 1024 / 16 each), so the total is exactly the bound.
        assert_eq!(dict.len(), 1024);
    }

    #[test]
    fn bounded_bytes() {
        let entry = 3 + 100 + ENTRY_OVERHEAD;
        let dict = SharedDict::new(1000, 10 * entry);
        let now = Instant::now();
        let value = s(&"v".repeat(100));
        for i in 0..100 {
            dict.set(&format!("{i:03}"), Some(value.clone()), None, now)
                .unwrap();
            assert!(dict.bytes() <= 10 * entry);
        }
        assert_eq!(dict.len(), 10);
        assert_eq!(dict.bytes(), 10 * entry);
        for i in 90..100 {
            assert_eq!(dict.get(&format!("{i:03}"), now), Some(value.clone()));
        }

        // One entry may take the whole budget, evicting everything else...
        let limit = 10 * entry - 3 - ENTRY_OVERHEAD;
        let big = s(&"b".repeat(limit));
        dict.set("big", Some(big.clone()), None, now).unwrap();
        assert_eq!(dict.len(), 1);
        assert_eq!(dict.get("big", now), Some(big));
        // ...but no more, and a failed write changes nothing.
        let too_big = s(&"b".repeat(limit + 1));
        assert_eq!(
            dict.set("big", Some(too_big), None, now),
            Err(SharedError::ValueTooLarge {
                len: limit + 1,
                limit
            })
        );
        assert_eq!(dict.len(), 1);
    }

    #[test]
    fn expired_entries_go_before_live_ones() {
        let dict = SharedDict::new(4, 1 << 20);
        let t0 = Instant::now();
        dict.set("old", Some(Int(0)), None, t0).unwrap();
        dict.set("short", Some(Int(1)), Some(secs(1)), t0).unwrap();
        dict.set("b", Some(Int(2)), None, t0).unwrap();
        dict.set("c", Some(Int(3)), None, t0).unwrap();
        // Full; "short" has expired, so it makes room rather than LRU victim "old".
        dict.set("d", Some(Int(4)), None, t0 + secs(2)).unwrap();
        assert_eq!(dict.get("old", t0 + secs(2)), Some(Int(0)));
        assert_eq!(dict.len(), 4);
    }

    #[test]
    fn lru_keeps_recently_read_keys() {
        let dict = SharedDict::new(4, 1 << 20);
        let now = Instant::now();
        for key in ["a", "b", "c", "d"] {
            dict.set(key, Some(s(key)), None, now).unwrap();
        }
        assert_eq!(dict.get("a", now), Some(s("a")));
        dict.set("e", Some(s("e")), None, now).unwrap();
        assert_eq!(dict.get("b", now), None, "b was least recently used");
        assert_eq!(dict.get("a", now), Some(s("a")));
        // incr counts as a use too.
        assert_eq!(dict.incr("x", Int(1), None, now), Ok(Int(1)));
        assert_eq!(dict.get("c", now), None);
    }

    #[test]
    fn binary_strings_are_kept_and_charged_their_length() {
        let dict = SharedDict::default();
        let now = Instant::now();
        let binary = bytes::Bytes::from_static(b"\x00\xff\xfe-bin");
        let value = SharedValue::from_bytes(binary.clone());
        assert_eq!(value, SharedValue::Bytes(binary.clone()));
        assert_eq!(value.type_name(), "string");
        dict.set("b", Some(value.clone()), None, now).unwrap();
        assert_eq!(dict.get("b", now), Some(value));
        assert_eq!(dict.bytes(), 1 + binary.len() + ENTRY_OVERHEAD);
        assert!(matches!(
            dict.incr("b", Int(1), None, now),
            Err(SharedError::NotANumber {
                found: "string",
                ..
            })
        ));
        // Text stays text.
        let text = SharedValue::from_bytes(bytes::Bytes::from_static("é".as_bytes()));
        assert_eq!(text, s("é"));
    }

    #[test]
    fn key_and_value_limits() {
        let dict = SharedDict::default();
        assert_eq!(dict.shards.len(), 8);
        let now = Instant::now();
        let long = "k".repeat(MAX_KEY_LEN + 1);
        let err = || SharedError::KeyTooLong {
            len: MAX_KEY_LEN + 1,
            limit: MAX_KEY_LEN,
        };
        assert_eq!(dict.set(&long, Some(Int(1)), None, now), Err(err()));
        assert_eq!(dict.incr(&long, Int(1), None, now), Err(err()));
        assert_eq!(dict.get(&long, now), None);
        dict.set(&long[1..], Some(Int(1)), None, now).unwrap();

        let huge = s(&"v".repeat(MAX_VALUE_LEN + 1));
        assert_eq!(
            dict.set("v", Some(huge), None, now),
            Err(SharedError::ValueTooLarge {
                len: MAX_VALUE_LEN + 1,
                limit: MAX_VALUE_LEN
            })
        );
        let largest = s(&"v".repeat(MAX_VALUE_LEN));
        dict.set(&long[1..], Some(largest.clone()), None, now)
            .unwrap();
        assert_eq!(dict.get(&long[1..], now), Some(largest));
        assert!(dict.bytes() <= DEFAULT_MAX_BYTES);
    }

    #[test]
    fn concurrent_incr_is_exact() {
        let dict = SharedDict::default();
        let now = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..10_000 {
                        dict.incr("hits", Int(1), None, now).unwrap();
                    }
                });
            }
        });
        assert_eq!(dict.get("hits", now), Some(Int(40_000)));
    }
}
