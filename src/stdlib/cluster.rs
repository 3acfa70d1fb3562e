//! Cluster scope: state several proxycache processes share through Redis (`[redis]`),
//! today the `std.rate_limit(..., scope: "cluster")` buckets and the cache's shared tier.
//!
//! Each bucket is the same GCRA as the local limiter, kept in Redis and updated by a
//! server-side script in one round trip (the time comes from Redis, so the processes'
//! clocks need not agree). Connections are one per worker thread, so the path takes no
//! lock. A pcmod call cannot wait, so the round trip blocks the worker for its length
//! (tens of microseconds on a LAN); one deadline of `redis.timeout` bounds the whole
//! call, connecting included ([`link`]). A pooled connection Redis has closed (its idle
//! `timeout`, a restart) is replaced once within that deadline, as redis-rs's
//! ConnectionManager and lua-resty-redis do. After any other failure Redis is left
//! alone for `RETRY_AFTER` and callers fall back to local state at once — a call never
//! fails a request because Redis is away.
//!
//! Owns the URL as shown to people ([`masked_url`]: never the password).
//! Must not touch: the local limiter (the caller falls back to it).

pub mod link;

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use self::link::Link;
use super::rate_limit::Decision;

/// How long Redis is left alone after a failure before the next try.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// `[redis]`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://[user:pass@]host:port[/db]`.
    pub url: String,
    /// The longest one call may take, connecting included.
    pub timeout: Duration,
    /// Prefix of every key proxycache writes.
    pub key_prefix: String,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &masked_url(&self.url))
            .field("timeout", &self.timeout)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

/// Defaults of `[redis]`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);
/// Default `redis.key_prefix`.
pub const DEFAULT_KEY_PREFIX: &str = "proxycache:";

/// `url` fit to show: a password (after `user:` in the authority, or a `pass` or
/// `password` query parameter) becomes `***`; the user, host, port and database stay.
pub fn masked_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let (rest, query) = match rest.find('?') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let mut out = String::from(scheme);
    match rest.rfind('@') {
        Some(at) => {
            let (userinfo, host) = rest.split_at(at);
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..colon]);
                    out.push_str(":***");
                }
                // Without a scheme there is no telling a user from a password.
                None if scheme.is_empty() => out.push_str("***"),
                None => out.push_str(userinfo),
            }
            out.push_str(host);
        }
        None => out.push_str(rest),
    }
    if let Some(pairs) = query.strip_prefix('?') {
        out.push('?');
        let shown: Vec<String> = pairs
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _))
                    if k.eq_ignore_ascii_case("pass") || k.eq_ignore_ascii_case("password") =>
                {
                    format!("{k}=***")
                }
                _ => pair.to_owned(),
            })
            .collect();
        out.push_str(&shown.join("&"));
    }
    out
}

/// Why a cluster call did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no [redis] section in config.toml")]
    NotConfigured,
    #[error("redis was unreachable less than {}s ago", RETRY_AFTER.as_secs())]
    Resting,
    /// The call's deadline (`redis.timeout`) passed.
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// Connecting failed, or the connection broke.
    #[error("{0}")]
    Io(std::io::Error),
    /// Redis refused the credentials of the URL (or wants some it has none of).
    #[error("authentication failed: {0}")]
    Auth(redis::RedisError),
    /// The URL's database does not exist.
    #[error("database {db} cannot be selected: {source}")]
    Select { db: i64, source: redis::RedisError },
    /// Redis answered with an error.
    #[error("redis: {0}")]
    Redis(redis::RedisError),
}

impl ClusterError {
    /// An error reply as what it means.
    pub fn from_reply(e: redis::RedisError) -> ClusterError {
        match e.code() {
            Some("NOAUTH" | "WRONGPASS") => ClusterError::Auth(e),
            _ => ClusterError::Redis(e),
        }
    }

    /// An error of the `AUTH` command: any refusal is an authentication failure.
    pub fn into_auth(self) -> ClusterError {
        match self {
            ClusterError::Redis(e) => ClusterError::Auth(e),
            other => other,
        }
    }

    /// What the log says happened, before the details.
    pub fn summary(&self) -> &'static str {
        match self {
            ClusterError::NotConfigured => "no [redis]",
            ClusterError::Resting => "redis resting",
            ClusterError::TimedOut(_) | ClusterError::Io(_) => "redis unreachable",
            ClusterError::Auth(_) => "redis authentication failed",
            ClusterError::Select { .. } => "redis database cannot be selected",
            ClusterError::Redis(_) => "redis refused a command",
        }
    }
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
    static CONN: RefCell<Option<(u64, Link)>> = const { RefCell::new(None) };
}

/// The process's link to Redis.
pub struct Cluster {
    id: u64,
    settings: Option<RedisSettings>,
    client: Option<redis::Client>,
    /// `settings.url` with the password masked, for messages.
    shown_url: String,
    script: redis::Script,
    epoch: Instant,
    /// Milliseconds since `epoch` until which Redis is not tried.
    resting_until: AtomicU64,
    /// Milliseconds since `epoch` (plus one) of the last throttled warning; 0: none yet.
    warned_at: AtomicU64,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("url", &self.shown_url)
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
            shown_url: settings
                .as_ref()
                .map(|s| masked_url(&s.url))
                .unwrap_or_default(),
            settings,
            client,
            script: redis::Script::new(GCRA),
            epoch: Instant::now(),
            resting_until: AtomicU64::new(0),
            warned_at: AtomicU64::new(0),
        }
    }

    /// Whether `[redis]` is configured.
    pub fn is_configured(&self) -> bool {
        self.client.is_some()
    }

    /// The Redis URL as messages show it (password masked).
    pub fn shown_url(&self) -> &str {
        &self.shown_url
    }

    /// Whether a warning about a lost cluster write may be logged now: one per
    /// [`RETRY_AFTER`] at most, whichever worker asks.
    pub fn may_warn(&self) -> bool {
        let now = self.now_ms() + 1;
        let last = self.warned_at.load(Ordering::Relaxed);
        (last == 0 || now >= last + RETRY_AFTER.as_millis() as u64)
            && self
                .warned_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs `f` on this worker thread's connection (made on first use), all of it
    /// within one `redis.timeout`. A pooled connection Redis closed while it was idle
    /// is replaced before `f` runs; `f` is never run twice (a command whose reply was
    /// lost may have run: a rate-limit script would take a second token). On an error
    /// the connection is dropped and Redis is rested for [`RETRY_AFTER`].
    fn with_conn<T>(
        &self,
        f: impl Fn(&mut Link, &RedisSettings) -> redis::RedisResult<T>,
    ) -> Result<T, ClusterError> {
        let (Some(client), Some(settings)) = (&self.client, &self.settings) else {
            return Err(ClusterError::NotConfigured);
        };
        if self.now_ms() < self.resting_until.load(Ordering::Relaxed) {
            return Err(ClusterError::Resting);
        }
        let deadline = Instant::now() + settings.timeout;
        let result = CONN.with(|cell| {
            let slot = &mut *cell.borrow_mut();
            self.call(client, settings, deadline, slot, &f)
        });
        result.inspect_err(|e| {
            tracing::warn!(target: "proxycache::stdlib", error = %e, url = %self.shown_url, "{}: cluster-scoped calls use local state for the next {}s", e.summary(), RETRY_AFTER.as_secs());
            self.resting_until.store(
                self.now_ms() + RETRY_AFTER.as_millis() as u64,
                Ordering::Relaxed,
            );
        })
    }

    /// One try of `f` before `deadline`, on the connection in `slot` or a new one; a
    /// connection that failed is dropped (it may be half-broken).
    fn call<T>(
        &self,
        client: &redis::Client,
        settings: &RedisSettings,
        deadline: Instant,
        slot: &mut Option<(u64, Link)>,
        f: &impl Fn(&mut Link, &RedisSettings) -> redis::RedisResult<T>,
    ) -> Result<T, ClusterError> {
        let pooled = match slot.take() {
            Some((id, mut link)) if id == self.id => {
                if link.closed_while_idle() {
                    tracing::debug!(target: "proxycache::stdlib", "redis closed a pooled connection while it was idle: opening a new one");
                    None
                } else {
                    Some(link)
                }
            }
            _ => None,
        };
        let mut link = match pooled {
            Some(link) => link,
            None => Link::open(client.get_connection_info(), deadline, settings.timeout)?,
        };
        link.set_deadline(deadline);
        match f(&mut link, settings) {
            Ok(v) => {
                *slot = Some((self.id, link));
                Ok(v)
            }
            Err(e) => Err(link.error(e, settings.timeout)),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_wherever_a_url_is_shown() {
        for (url, shown) in [
            (
                "redis://:s3cret@127.0.0.1:19150/99",
                "redis://:***@127.0.0.1:19150/99",
            ),
            (
                "redis://admin:s3cret@redis.local:6379",
                "redis://admin:***@redis.local:6379",
            ),
            ("redis://admin@h:1/2", "redis://admin@h:1/2"),
            ("redis://:p@ss:w@rd@h/0", "redis://:***@h/0"),
            ("redis://127.0.0.1:6379/2", "redis://127.0.0.1:6379/2"),
            (
                "unix:///run/redis.sock?db=2&pass=s3cret",
                "unix:///run/redis.sock?db=2&pass=***",
            ),
            ("http://u:s3cret@x", "http://u:***@x"),
            ("s3cret@x", "***@x"),
        ] {
            assert_eq!(masked_url(url), shown, "{url}");
        }
        let settings = RedisSettings {
            url: "redis://:s3cret@h:1".into(),
            timeout: DEFAULT_TIMEOUT,
            key_prefix: DEFAULT_KEY_PREFIX.into(),
        };
        assert!(!format!("{settings:?}").contains("s3cret"));
        let cluster = Cluster::new(Some(settings));
        assert!(!format!("{cluster:?}").contains("s3cret"));
        assert_eq!(cluster.shown_url(), "redis://:***@h:1");
    }
}
