//! `[redis]` and `[cache]`: the settings of stateful stdlib parts.

use super::*;

impl Checker<'_> {
    pub(super) fn redis(&mut self, file: &Spanned<file::RedisFile>) -> Option<RedisSettings> {
        let span = file.span();
        let file = file.get_ref();
        let timeout = self.nonzero_duration(
            "redis.timeout",
            &file.timeout,
            crate::stdlib::cluster::DEFAULT_TIMEOUT,
        );
        let key_prefix = file.key_prefix.as_ref().map_or_else(
            || crate::stdlib::cluster::DEFAULT_KEY_PREFIX.to_owned(),
            |t| t.get_ref().clone(),
        );
        let Some(url) = &file.url else {
            self.error(
                "redis.url",
                span,
                "is required in [redis] (e.g. \"redis://127.0.0.1:6379\")",
            );
            return None;
        };
        let text = url.get_ref();
        if !(text.starts_with("redis://") || text.starts_with("unix://")) {
            self.error(
                "redis.url",
                url.span(),
                format!(
                    "must start with redis:// or unix://, got {:?}",
                    crate::stdlib::cluster::masked_url(text)
                ),
            );
            return None;
        }
        if let Err(e) = redis::Client::open(text.as_str()) {
            self.error(
                "redis.url",
                url.span(),
                format!("is not a valid Redis URL: {e}"),
            );
            return None;
        }
        Some(RedisSettings {
            url: text.clone(),
            timeout,
            key_prefix,
        })
    }

    pub(super) fn cache(&mut self, file: &file::CacheFile, has_redis: bool) -> CacheSettings {
        let d = CacheSettings::default();
        let settings = CacheSettings {
            max_size: self.size("cache.max_size", &file.max_size, d.max_size),
            max_entry_size: self.size(
                "cache.max_entry_size",
                &file.max_entry_size,
                d.max_entry_size,
            ),
            lock_timeout: self.duration("cache.lock_timeout", &file.lock_timeout, d.lock_timeout),
            shared: file.shared.as_ref().is_some_and(|b| *b.get_ref()),
        };
        if let Some(v) = file.shared.as_ref().filter(|b| *b.get_ref()) {
            if !has_redis {
                self.error(
                    "cache.shared",
                    v.span(),
                    "needs a [redis] section (the shared tier lives in Redis)",
                );
            }
        }
        if let Some(v) = &file.max_entry_size {
            if settings.max_entry_size > settings.max_size {
                self.error(
                    "cache.max_entry_size",
                    v.span(),
                    "must not be larger than cache.max_size",
                );
            }
        }
        settings
    }
}
