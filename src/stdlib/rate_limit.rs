//! `std.rate_limit`: GCRA (the token bucket as one timestamp per key) in a sharded
//! map, so workers rarely contend, with a cap on keys so a flood of distinct keys
//! cannot exhaust memory. Buckets live outside generations: a reload never resets them.
//!
//! A bucket is named by a scope (the module), a key and its limit (burst and the time
//! per token): two calls with one key and different limits count apart, as two
//! nginx `limit_req` zones do. The name is kept as one 64-bit keyed hash (SipHash
//! under keys this process chose at random; keys come from requests), never as text:
//! a bucket is 24 bytes whatever its key's length, so the cap on keys bounds memory.
//! The hash picks the shard and the slot and tells names apart: two names share a
//! bucket only if their hashes collide, which nobody can aim for without the keys
//! and which by chance is about one in 10^10 among 100,000 keys. Nothing is
//! allocated for a key already held.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::HashTable;
use parking_lot::Mutex;

use super::{ArgDefault, ArgSig, ArgType, FnSig, RecordSig, Returns, StdError, StdFn, ALL_PHASES};
use crate::script::value::Value;

/// `{allowed, remaining, retry_after, limit}`.
pub static RESULT: RecordSig = RecordSig {
    name: "rate_limit",
    fields: &[
        ("allowed", ArgType::Bool),
        ("remaining", ArgType::Int),
        ("retry_after", ArgType::Int),
        ("limit", ArgType::Int),
    ],
};

/// The signature entries of this area.
pub static SIGS: &[FnSig] = &[FnSig {
    name: "std.rate_limit",
    id: StdFn::RateLimit,
    args: &[
        ArgSig { name: "key", ty: ArgType::Str, default: ArgDefault::Required, literal: false, check: None, doc: "what is limited (an API key, a client IP, ...)" },
        ArgSig { name: "rate", ty: ArgType::Number, default: ArgDefault::Required, literal: false, check: Some(positive_number), doc: "requests allowed per `per`" },
        ArgSig { name: "burst", ty: ArgType::Int, default: ArgDefault::Nil, literal: false, check: Some(positive_int), doc: "bucket size; defaults to `rate`" },
        ArgSig { name: "per", ty: ArgType::Duration, default: ArgDefault::DurationMs(1000), literal: false, check: None, doc: "the period `rate` is counted over" },
        ArgSig { name: "scope", ty: ArgType::Str, default: ArgDefault::Str("local"), literal: true, check: Some(scope), doc: "`local` (this process) or `cluster` (every process sharing `[redis]`; local when Redis is unreachable)" },
    ],
    returns: Returns::Record(&RESULT),
    phases: ALL_PHASES,
    doc: "Token bucket per key: `allowed` says whether this request fits; `retry_after` is whole seconds until one would.",
}];

const SHARDS: usize = 64;

/// Default cap on keys held at once, across shards.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// One bucket: the hash of its name, its theoretical arrival time (ns since the
/// limiter's epoch), and the ns one token stands for (what eviction ranks by).
struct Bucket {
    hash: u64,
    tat: u64,
    interval: u64,
}

/// One shard of buckets.
type Shard = Mutex<HashTable<Bucket>>;

/// Every bucket of the process.
pub struct RateLimiter {
    shards: Box<[Shard]>,
    hasher: RandomState,
    epoch: Instant,
    max_per_shard: usize,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("keys", &self.len())
            .finish()
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter::new(DEFAULT_MAX_KEYS)
    }
}

/// One decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub remaining: u64,
    pub retry_after: Duration,
    pub limit: u64,
}

impl RateLimiter {
    /// A limiter holding at most about `max_keys` keys.
    pub fn new(max_keys: usize) -> Self {
        RateLimiter {
            shards: (0..SHARDS).map(|_| Mutex::new(HashTable::new())).collect(),
            hasher: RandomState::new(),
            epoch: Instant::now(),
            max_per_shard: (max_keys / SHARDS).max(1),
        }
    }

    /// Keys held right now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes one token for `key` in `scope` from a bucket of `burst` refilled at
    /// `rate` per `per`.
    pub fn check(&self, scope: &str, key: &str, rate: f64, burst: u64, per: Duration) -> Decision {
        let burst = burst.max(1);
        let interval = (per.as_nanos() as f64 / rate.max(1e-9)).max(1.0) as u64; // ns per token
        let window = interval.saturating_mul(burst);
        let now = self.epoch.elapsed().as_nanos() as u64;
        let hash = self.hasher.hash_one((scope, key, interval, burst));
        // Bits the table does not use for its slots (low) or tags (top 7) pick the shard.
        let shard = &self.shards[((hash >> 32) as usize) % SHARDS];
        let mut map = shard.lock();
        // One lookup for a known key (the common case); a new one is inserted below.
        let slot = map.find_mut(hash, |b| b.hash == hash);
        let tat = slot.as_ref().map_or(now, |b| b.tat).max(now);
        let new_tat = tat.saturating_add(interval);
        let allow_at = new_tat.saturating_sub(window);
        if now < allow_at {
            return Decision {
                allowed: false,
                remaining: 0,
                retry_after: Duration::from_nanos(allow_at - now),
                limit: burst,
            };
        }
        match slot {
            Some(b) => b.tat = new_tat,
            None => {
                if map.len() >= self.max_per_shard {
                    evict(&mut map, now, self.max_per_shard);
                }
                let bucket = Bucket {
                    hash,
                    tat: new_tat,
                    interval,
                };
                map.insert_unique(hash, bucket, |b| b.hash);
            }
        }
        // `now + window - new_tat` without the sum: `window` saturates at u64::MAX for
        // huge `per` values, and `new_tat - now` (>= 0: `tat` is never before `now`) is
        // at most `window` here.
        let remaining = window.saturating_sub(new_tat - now) / interval;
        Decision {
            allowed: true,
            remaining,
            retry_after: Duration::ZERO,
            limit: burst,
        }
    }
}

/// Makes room in a full shard: first drop buckets that have refilled completely
/// (forgetting them changes nothing), then, if a flood keeps it full, those that lack
/// the fewest tokens. Forgetting a bucket hands its key a fresh burst, so the clients
/// held back hardest (whatever their limit) are forgotten last: a flood of new keys
/// (each one token down) cannot free them.
fn evict(map: &mut HashTable<Bucket>, now: u64, cap: usize) {
    map.retain(|b| b.tat > now);
    if map.len() >= cap {
        // The tokens a bucket lacks (rounded up), then how long it takes to be full
        // again: a client whose one token is an hour away outranks a flood key whose
        // one token (of a hundred) is a minute away.
        let lacking = |b: &Bucket| {
            let wait = b.tat - now;
            (wait.div_ceil(b.interval.max(1)), wait)
        };
        let victims = (map.len() + 1 - cap).max(cap / 8).min(map.len());
        let mut ranks: Vec<(u64, u64)> = map.iter().map(lacking).collect();
        let (_, &mut cut, _) = ranks.select_nth_unstable(victims - 1);
        // Everything below `cut`, then buckets at `cut` until enough are gone.
        let mut at_cut = victims - ranks[..victims].iter().filter(|&&r| r < cut).count();
        map.retain(|b| {
            let rank = lacking(b);
            if rank < cut {
                return false;
            }
            if rank == cut && at_cut > 0 {
                at_cut -= 1;
                return false;
            }
            true
        });
    }
}

fn positive_number(v: &Value) -> Result<(), String> {
    match v.as_f64() {
        Some(x) if x > 0.0 => Ok(()),
        _ => Err(format!("must be a positive number, not {v}")),
    }
}

fn positive_int(v: &Value) -> Result<(), String> {
    match v {
        Value::Int(i) if *i > 0 => Ok(()),
        _ => Err(format!("must be a positive int, not {v}")),
    }
}

fn scope(v: &Value) -> Result<(), String> {
    match v.as_str() {
        Some("local" | "cluster") => Ok(()),
        _ => Err(format!("must be \"local\" or \"cluster\", not {v}")),
    }
}

/// `std.rate_limit(key, rate, burst?, per?, scope?)`.
pub fn call(args: &[Value], ex: &mut super::Exchange<'_>) -> Result<Value, StdError> {
    let err = |message: String| StdError {
        function: "std.rate_limit",
        message,
    };
    let key: std::borrow::Cow<'_, str> = match &args[0] {
        Value::Nil => return Err(err("key is nil".into())),
        Value::Str(s) => std::borrow::Cow::Borrowed(s),
        v => std::borrow::Cow::Owned(v.to_string()),
    };
    let rate = args[1]
        .as_f64()
        .filter(|r| *r > 0.0)
        .ok_or_else(|| err(format!("rate must be a positive number, got {}", args[1])))?;
    let burst = match &args[2] {
        Value::Int(b) if *b > 0 => *b as u64,
        Value::Nil => rate.ceil() as u64,
        other => return Err(err(format!("burst must be a positive int, got {other}"))),
    };
    let per = match &args[3] {
        Value::Duration(d) if !d.is_zero() => *d,
        other => return Err(err(format!("per must be a positive duration, got {other}"))),
    };
    // Buckets are per module, key and limit.
    let cluster = matches!(args.get(4), Some(Value::Str(s)) if &**s == "cluster");
    let local = || {
        ex.state
            .rate_limits
            .check(ex.module, &key, rate, burst, per)
    };
    let d = match cluster {
        false => local(),
        true => {
            match ex.state.cluster.rate_limit(
                &format!(
                    "{}\u{0}{key}\u{0}{rate}/{}ms\u{0}{burst}",
                    ex.module,
                    per.as_millis()
                ),
                rate,
                burst,
                per,
            ) {
                Ok(d) => d,
                Err(e) => {
                    // Never fail the request for Redis: this process's own bucket decides.
                    // (An unreachable Redis is warned about by the cluster link; a
                    // missing `[redis]` once here.)
                    static WARNED: std::sync::atomic::AtomicBool =
                        std::sync::atomic::AtomicBool::new(false);
                    if matches!(e, super::cluster::ClusterError::NotConfigured)
                        && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed)
                    {
                        tracing::warn!(target: "proxycache::stdlib", module = ex.module, "std.rate_limit scope \"cluster\" without a [redis] section: limits are per process");
                    }
                    tracing::debug!(target: "proxycache::stdlib", module = ex.module, error = %e, "cluster rate limit fell back to local");
                    ex.state.metrics.cluster_fallback(ex.module);
                    local()
                }
            }
        }
    };
    if !d.allowed {
        ex.state.metrics.rate_limited(ex.module);
    }
    let retry_after = d.retry_after.as_secs() + u64::from(d.retry_after.subsec_nanos() > 0);
    Ok(Value::Record(
        &RESULT,
        Arc::from([
            Value::Bool(d.allowed),
            Value::Int(d.remaining as i64),
            Value::Int(retry_after as i64),
            Value::Int(d.limit as i64),
        ]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_then_refill() {
        let rl = RateLimiter::new(1000);
        let per = Duration::from_millis(100);
        for i in 0..3 {
            let d = rl.check("m", "k", 3.0, 3, per);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 2 - i);
        }
        let d = rl.check("m", "k", 3.0, 3, per);
        assert!(!d.allowed);
        assert!(d.retry_after > Duration::ZERO && d.retry_after <= Duration::from_millis(34));
        assert!(
            rl.check("m", "other", 3.0, 3, per).allowed,
            "keys are independent"
        );
        std::thread::sleep(Duration::from_millis(40));
        assert!(
            rl.check("m", "k", 3.0, 3, per).allowed,
            "refilled one token"
        );
        assert!(
            rl.check("mk", "", 3.0, 3, per).allowed && rl.check("", "mk", 3.0, 3, per).allowed,
            "scope and key are told apart"
        );
    }

    /// A window that saturates (a huge `per`: 100 tokens of 200 years each) is
    /// decided without overflowing (a debug build panicked on `now + window`); what
    /// is left is then counted against the saturated window.
    #[test]
    fn a_saturated_window_decides_without_overflow() {
        let rl = RateLimiter::new(1000);
        for per_days in [200 * 365, 10_000_000] {
            let per = Duration::from_secs(per_days * 86_400);
            let d = rl.check("m", &per_days.to_string(), 1.0, 100, per);
            assert!(d.allowed);
            assert!(d.remaining < 100);
        }
    }

    #[test]
    fn one_key_under_two_limits_counts_twice() {
        let rl = RateLimiter::new(1000);
        let (second, minute) = (Duration::from_secs(1), Duration::from_secs(60));
        for i in 0..3 {
            let s = rl.check("m", "ip", 3.0, 3, second);
            let m = rl.check("m", "ip", 1000.0, 1000, minute);
            assert!(s.allowed && m.allowed, "request {i}");
            assert_eq!((s.remaining, m.remaining), (2 - i, 999 - i));
        }
        assert!(!rl.check("m", "ip", 3.0, 3, second).allowed);
        assert!(rl.check("m", "ip", 1000.0, 1000, minute).allowed);
    }

    /// A bucket holds no part of its key: the cap on keys bounds memory whatever the
    /// keys' length (each bucket held a copy of its key, 60 KB keys filled gigabytes).
    #[test]
    fn a_bucket_is_the_same_size_for_any_key() {
        assert_eq!(std::mem::size_of::<Bucket>(), 24);
    }

    #[test]
    fn distinct_keys_stay_under_the_cap() {
        let rl = RateLimiter::new(6400);
        for i in 0..100_000 {
            rl.check("m", &format!("key-{i}"), 1.0, 1, Duration::from_secs(60));
        }
        assert!(rl.len() <= 6400, "held {}", rl.len());
    }

    /// A flood of new keys that fills the table evicts the buckets that lack the
    /// fewest tokens first: a client that is being limited stays limited (forgetting
    /// its bucket would hand it a fresh burst).
    #[test]
    fn a_flood_of_new_keys_does_not_free_a_limited_client() {
        let rl = RateLimiter::new(SHARDS * 8);
        let hour = Duration::from_secs(3600);
        assert!(rl.check("m", "victim", 1.0, 1, hour).allowed);
        assert!(!rl.check("m", "victim", 1.0, 1, hour).allowed);
        for i in 0..20_000 {
            rl.check("m", &format!("flood-{i}"), 100.0, 100, hour);
        }
        assert!(rl.len() <= SHARDS * 8, "held {}", rl.len());
        assert!(
            !rl.check("m", "victim", 1.0, 1, hour).allowed,
            "the limited client is still limited"
        );
    }

    /// Buckets of different limits share the table: a flood under a slow limit (each
    /// new key one token down, an hour away from full) does not free a client held
    /// back under a faster one (a minute away, but ten tokens short).
    #[test]
    fn a_flood_under_a_slower_limit_does_not_free_a_limited_client() {
        let rl = RateLimiter::new(SHARDS * 8);
        let (minute, hour) = (Duration::from_secs(60), Duration::from_secs(3600));
        for _ in 0..10 {
            assert!(rl.check("m", "victim", 10.0, 10, minute).allowed);
        }
        assert!(!rl.check("m", "victim", 10.0, 10, minute).allowed);
        for i in 0..20_000 {
            rl.check("m", &format!("flood-{i}"), 1.0, 1, hour);
        }
        assert!(
            !rl.check("m", "victim", 10.0, 10, minute).allowed,
            "the limited client is still limited"
        );
    }
}
