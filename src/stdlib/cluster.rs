//! Cluster scope: state several proxycache processes share through Redis (`[redis]`),
//! today the `std.rate_limit(..., scope: "cluster")` buckets.
//!
//! Each bucket is the same GCRA as the local limiter, kept in Redis and updated by a
//! server-side script in one round trip (the time comes from Redis, so the processes'
//! clocks need not agree). Connections are one per worker thread, so the path takes no
//! lock. A pcmod call cannot wait, so the round trip blocks the worker for its length
//! (tens of microseconds on a LAN), bounded by `redis.timeout`; after a failure Redis is
//! left alone for `RETRY_AFTER` and callers fall back to local state at once — a call
//! never fails a request because Redis is away.
//!
//! Must not touch: the local limiter (the caller falls back to it).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::rate_limit::Decision;

/// How long Redis is left alone after a failure before the next try.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// `[redis]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://[user:pass@]host:port[/db]`.
    pub url: String,
    /// Connect, read and write timeout of one call.
    pub timeout: Duration,
    /// Prefix of every key proxycache writes.
    pub key_prefix: String,
}

/// Defaults of `[redis]`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);
/// Default `redis.key_prefix`.
pub const DEFAULT_KEY_PREFIX: &str = "proxycache:";

/// Why a cluster call did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no [redis] section in config.toml")]
    NotConfigured,
    #[error("redis was unreachable less than {}s ago", RETRY_AFTER.as_secs())]
    Resting,
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// GCRA in Redis: KEYS[1] the bucket; ARGV[1] the emission interval and ARGV[2] the
/// burst window, both in microseconds. Returns {allowed, remaining, retry_after_us}.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - window
if now < allow_at then
  return {0, 0, allow_at - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((now + window - new_tat) / interval), 0}
";

/// Distinguishes clusters (a restart with another URL) in the per-thread connections.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This worker thread's connection, and the cluster it belongs to.
    static CONN: RefCell<Option<(u64, redis::Connection)>> = const { RefCell::new(None) };
}

/// The process's link to Redis.
pub struct Cluster {
    id: u64,
    settings: Option<RedisSettings>,
    client: Option<redis::Client>,
    script: redis::Script,
    epoch: Instant,
    /// Milliseconds since `epoch` until which Redis is not tried.
    resting_until: AtomicU64,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("url", &self.settings.as_ref().map(|s| &s.url))
            .finish()
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster::new(None)
    }
}

impl Cluster {
    /// A link to the Redis of `settings` (none: cluster calls fall back at once). The
    /// URL was checked when the config was validated; no connection is made yet.
    pub fn new(settings: Option<RedisSettings>) -> Self {
        let client = settings
            .as_ref()
            .and_then(|s| redis::Client::open(s.url.as_str()).ok());
        Cluster {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            settings,
            client,
            script: redis::Script::new(GCRA),
            epoch: Instant::now(),
            resting_until: AtomicU64::new(0),
        }
    }

    /// Whether `[redis]` is configured.
    pub fn is_configured(&self) -> bool {
        self.client.is_some()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs `f` on this worker thread's connection (made on first use); on any error
    /// the connection is dropped and Redis is rested for [`RETRY_AFTER`].
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection, &RedisSettings) -> redis::RedisResult<T>,
    ) -> Result<T, ClusterError> {
        let (Some(client), Some(settings)) = (&self.client, &self.settings) else {
            return Err(ClusterError::NotConfigured);
        };
        if self.now_ms() < self.resting_until.load(Ordering::Relaxed) {
            return Err(ClusterError::Resting);
        }
        let result = CONN.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.as_ref().is_none_or(|(id, _)| *id != self.id) {
                let conn = client.get_connection_with_timeout(settings.timeout)?;
                conn.set_read_timeout(Some(settings.timeout))?;
                conn.set_write_timeout(Some(settings.timeout))?;
                *slot = Some((self.id, conn));
            }
            let Some((_, conn)) = slot.as_mut() else {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "no connection",
                )));
            };
            let reply = f(conn, settings);
            if reply.is_err() {
                // The connection may be half-broken: make a new one next time.
                *slot = None;
            }
            reply
        });
        result.map_err(|e| {
            tracing::warn!(target: "proxycache::stdlib", error = %e, url = %settings.url, "redis unreachable: cluster-scoped calls use local state for the next {}s", RETRY_AFTER.as_secs());
            self.resting_until.store(
                self.now_ms() + RETRY_AFTER.as_millis() as u64,
                Ordering::Relaxed,
            );
            ClusterError::Redis(e)
        })
    }

    /// Takes one token from the cluster-wide bucket `key` (GCRA, `burst` tokens
    /// refilled at `rate` per `per`).
    pub fn rate_limit(
        &self,
        key: &str,
        rate: f64,
        burst: u64,
        per: Duration,
    ) -> Result<Decision, ClusterError> {
        let burst = burst.max(1);
        let interval = (per.as_micros() as f64 / rate.max(1e-9)).max(1.0) as u64;
        let window = interval.saturating_mul(burst);
        let (allowed, remaining, retry_us): (u64, u64, u64) = self.with_conn(|conn, s| {
            self.script
                .key(format!("{}rl:{}", s.key_prefix, key))
                .arg(interval)
                .arg(window)
                .invoke(conn)
        })?;
        Ok(Decision {
            allowed: allowed == 1,
            remaining,
            retry_after: Duration::from_micros(retry_us),
            limit: burst,
        })
    }

    /// The bytes under `PREFIX + key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ClusterError> {
        self.with_conn(|conn, s| {
            redis::cmd("GET")
                .arg(format!("{}{}", s.key_prefix, key))
                .query(conn)
        })
    }

    /// Removes `PREFIX + key`.
    pub fn del(&self, key: &str) -> Result<(), ClusterError> {
        self.with_conn(|conn, s| {
            redis::cmd("DEL")
                .arg(format!("{}{}", s.key_prefix, key))
                .query(conn)
        })
    }

    /// Sets `PREFIX + key` to `value`, expiring after `ttl`.
    pub fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), ClusterError> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.with_conn(|conn, s| {
            redis::cmd("SET")
                .arg(format!("{}{}", s.key_prefix, key))
                .arg(value)
                .arg("PX")
                .arg(ms)
                .query(conn)
        })
    }
}
