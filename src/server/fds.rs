//! The process's open-file limit (`RLIMIT_NOFILE`): raised at start-up as far as it
//! goes, and checked against `server.limits.max_connections`.
//!
//! Every client connection is a file descriptor, and a proxied request holds a second
//! one, its upstream connection. With the common soft limit of 1024 and the default
//! `max_connections = 20000`, accepts failed with `EMFILE` long before the configured
//! limit and requests already accepted got `502 Too many open files`. So, as HAProxy
//! raises its limit to fit `maxconn` and nginx warns, the soft limit is raised to the
//! hard one (which needs no privilege) and a warning says when even that is short.
//!
//! Owns: reading and raising the limit, the warning. Must not touch: accepting
//! (`worker`), which refuses connections over `max_connections` itself.

/// Descriptors kept for what is not a request's: listeners (one per worker with
/// `SO_REUSEPORT`), the admin API, each worker's event queue and wakers, watched files,
/// health checks, Redis, idle pooled upstream connections, log files.
pub const RESERVED_FDS: u64 = 256;

/// The open files `max_connections` needs: two for each connection (the client's and
/// its upstream's) and [`RESERVED_FDS`].
pub fn fds_needed(max_connections: usize) -> u64 {
    u64::try_from(max_connections)
        .unwrap_or(u64::MAX)
        .saturating_mul(2)
        .saturating_add(RESERVED_FDS)
}

/// Whether a soft open-file limit of `limit` is too low for `max_connections`: the
/// number needed when it is.
pub fn shortfall(max_connections: usize, limit: u64) -> Option<u64> {
    let needed = fds_needed(max_connections);
    (limit < needed).then_some(needed)
}

/// Raises the soft open-file limit to the hard one and warns when it is still below
/// what `max_connections` needs (at start-up: `proxycache run`). Where the limit
/// cannot be read, does nothing.
#[cfg(unix)]
pub fn raise_and_check(max_connections: usize) {
    let Ok((soft, hard)) = rlimit::getrlimit(rlimit::Resource::NOFILE) else {
        return;
    };
    let limit = if soft < hard {
        // (`increase_nofile_limit` knows macOS's cap on it, `OPEN_MAX`.)
        match rlimit::increase_nofile_limit(hard) {
            Ok(raised) => {
                tracing::debug!(target: "proxycache::server", from = soft, to = raised, "raised the open-file limit (RLIMIT_NOFILE)");
                raised
            }
            Err(e) => {
                tracing::warn!(target: "proxycache::server", soft, hard, error = %e, "cannot raise the open-file limit (RLIMIT_NOFILE)");
                soft
            }
        }
    } else {
        soft
    };
    warn_if_short(max_connections, limit);
}

/// Warns when the open-file limit is below what `max_connections` needs (on a reload
/// that changes it).
#[cfg(unix)]
pub fn check(max_connections: usize) {
    if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
        warn_if_short(max_connections, soft);
    }
}

/// Elsewhere the limit is not read.
#[cfg(not(unix))]
pub fn raise_and_check(_max_connections: usize) {}

/// Elsewhere the limit is not read.
#[cfg(not(unix))]
pub fn check(_max_connections: usize) {}

/// The warning, when `limit` is short of what `max_connections` needs.
#[cfg_attr(not(unix), allow(dead_code))]
fn warn_if_short(max_connections: usize, limit: u64) {
    if let Some(needed) = shortfall(max_connections, limit) {
        tracing::warn!(
            target: "proxycache::server",
            limit,
            needed,
            max_connections,
            "the open-file limit (RLIMIT_NOFILE, ulimit -n) is {limit}, below the {needed} that server.limits.max_connections = {max_connections} needs (2 per proxied connection and {RESERVED_FDS} more): connections will fail with \"Too many open files\" before that limit. Raise the hard limit (LimitNOFILE= in a systemd unit, ulimit -Hn) or lower max_connections"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_max_connections_does_not_fit_in_1024_files() {
        assert_eq!(shortfall(20_000, 1024), Some(40_256));
        assert_eq!(shortfall(20_000, 40_255), Some(40_256));
        assert_eq!(shortfall(20_000, 40_256), None);
        assert_eq!(shortfall(20_000, u64::MAX), None, "RLIM_INFINITY");
    }

    #[test]
    fn a_small_max_connections_fits_in_1024_files() {
        assert_eq!(shortfall(384, 1024), None);
        assert_eq!(shortfall(385, 1024), Some(1026));
        assert_eq!(shortfall(usize::MAX, u64::MAX - 1), Some(u64::MAX));
    }
}
