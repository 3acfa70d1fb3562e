//! `ServerState`: what the proxy knows about one server of an upstream set — its
//! address, weight, health, breaker and in-flight count. Shared by every worker and
//! carried across reloads while the server's settings are unchanged.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::{BreakerConfig, ServerTarget};

use super::breaker::{Breaker, Permit};

/// One server of an upstream set.
#[derive(Debug)]
pub struct ServerState {
    pub target: ServerTarget,
    pub weight: u32,
    pub breaker: Breaker,
    breaker_config: (u32, std::time::Duration),
    healthy: AtomicBool,
    inflight: AtomicUsize,
    check_successes: AtomicU32,
    check_failures: AtomicU32,
    /// Requests sent to this server.
    pub requests: AtomicU64,
    /// Transport failures (connect errors, resets, timeouts).
    pub failures: AtomicU64,
}

impl ServerState {
    /// A healthy server with a closed breaker.
    pub fn new(target: ServerTarget, weight: u32, breaker: &BreakerConfig) -> Self {
        ServerState {
            target,
            weight,
            breaker: Breaker::new(breaker.failures, breaker.open_for),
            breaker_config: (breaker.failures, breaker.open_for),
            healthy: AtomicBool::new(true),
            inflight: AtomicUsize::new(0),
            check_successes: AtomicU32::new(0),
            check_failures: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// Whether this state can be carried into a generation with these settings.
    pub fn same_settings(&self, target: &ServerTarget, weight: u32, b: &BreakerConfig) -> bool {
        self.target == *target
            && self.weight == weight
            && self.breaker_config == (b.failures, b.open_for)
    }

    /// Healthy per active checks.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Healthy and not held off by its breaker.
    pub fn is_available(&self) -> bool {
        self.is_healthy() && self.breaker.is_available()
    }

    /// Requests in flight to this server, across workers.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Takes the breaker's permission for one request and counts it in flight until
    /// the guard drops. `None`: the breaker refused (open, or another request is its
    /// half-open probe).
    pub fn try_begin(self: &Arc<Self>) -> Option<InflightGuard> {
        let permit = self.breaker.try_acquire()?;
        self.inflight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        Some(InflightGuard {
            server: Arc::clone(self),
            permit,
        })
    }

    /// Feeds one active health-check result; returns the new health when it flipped.
    pub fn record_check(&self, ok: bool, healthy_after: u32, unhealthy_after: u32) -> Option<bool> {
        if ok {
            self.check_failures.store(0, Ordering::Relaxed);
            let n = self.check_successes.fetch_add(1, Ordering::Relaxed) + 1;
            if !self.is_healthy() && n >= healthy_after {
                self.healthy.store(true, Ordering::Release);
                return Some(true);
            }
        } else {
            self.check_successes.store(0, Ordering::Relaxed);
            let n = self.check_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if self.is_healthy() && n >= unhealthy_after {
                self.healthy.store(false, Ordering::Release);
                return Some(false);
            }
        }
        None
    }

    /// Forgets what active checks said: healthy, no passes or failures counted. For a
    /// server no check watches any more (nothing else would mark it up again).
    pub fn reset_health(&self) {
        self.check_successes.store(0, Ordering::Relaxed);
        self.check_failures.store(0, Ordering::Relaxed);
        self.healthy.store(true, Ordering::Release);
    }

    /// The address as written in the config.
    pub fn label(&self) -> &str {
        match &self.target {
            ServerTarget::Addr { authority, .. } => authority,
            ServerTarget::Echo => "builtin:echo",
        }
    }
}

/// A request on its way to a server: holds the breaker's permit for its outcome and
/// decrements the server's in-flight count on drop (when the response body is done).
#[derive(Debug)]
pub struct InflightGuard {
    server: Arc<ServerState>,
    permit: Permit,
}

impl InflightGuard {
    /// The server this request went to.
    pub fn server(&self) -> &Arc<ServerState> {
        &self.server
    }

    /// Records the request's transport outcome for the breaker (passive health).
    pub fn record_outcome(&self, ok: bool) {
        if !ok {
            self.server.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.server.breaker.record(self.permit, ok);
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.server.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}
