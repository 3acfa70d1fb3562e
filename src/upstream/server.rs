//! `ServerState`: what the proxy knows about one server of an upstream set — its
//! address, weight, health, breaker and in-flight count. Shared by every worker.
//!
//! Across reloads a server is known by its address: its health and counts (in flight,
//! requests, failures) carry over whatever its weight, and its breaker carries over
//! while the breaker's settings are unchanged. A state whose weight and breaker
//! settings are unchanged is carried whole.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::{BreakerConfig, ServerTarget};

use super::breaker::{Breaker, Permit};

/// One server of an upstream set.
#[derive(Debug)]
pub struct ServerState {
    pub target: ServerTarget,
    pub weight: u32,
    pub breaker: Arc<Breaker>,
    standing: Arc<Standing>,
}

/// What is known about a server by its address, whatever the settings of the set
/// that lists it: health and counts.
#[derive(Debug)]
struct Standing {
    healthy: AtomicBool,
    check_successes: AtomicU32,
    check_failures: AtomicU32,
    inflight: AtomicUsize,
    /// Requests sent to this server.
    requests: AtomicU64,
    /// Failures: transport failures (connect errors, resets, timeouts) and answers with
    /// a status in the set's `circuit_breaker.statuses`.
    failures: AtomicU64,
}

impl ServerState {
    /// A healthy server with a closed breaker.
    pub fn new(target: ServerTarget, weight: u32, breaker: &BreakerConfig) -> Self {
        ServerState {
            target,
            weight,
            breaker: Arc::new(Breaker::new(breaker.failures, breaker.open_for)),
            standing: Arc::new(Standing {
                healthy: AtomicBool::new(true),
                check_successes: AtomicU32::new(0),
                check_failures: AtomicU32::new(0),
                inflight: AtomicUsize::new(0),
                requests: AtomicU64::new(0),
                failures: AtomicU64::new(0),
            }),
        }
    }

    /// This server (same address) in a generation with `weight` and `breaker`: itself
    /// when nothing changed, else a state sharing its health and counts, and its
    /// breaker while the breaker's settings are the same.
    pub fn carried(self: &Arc<Self>, weight: u32, breaker: &BreakerConfig) -> Arc<Self> {
        let same_breaker = self.breaker.settings() == (breaker.failures.max(1), breaker.open_for);
        if same_breaker && self.weight == weight {
            return Arc::clone(self);
        }
        Arc::new(ServerState {
            target: self.target.clone(),
            weight,
            breaker: if same_breaker {
                Arc::clone(&self.breaker)
            } else {
                Arc::new(Breaker::new(breaker.failures, breaker.open_for))
            },
            standing: Arc::clone(&self.standing),
        })
    }

    /// Healthy per active checks.
    pub fn is_healthy(&self) -> bool {
        self.standing.healthy.load(Ordering::Acquire)
    }

    /// Healthy and not held off by its breaker.
    pub fn is_available(&self) -> bool {
        self.is_healthy() && self.breaker.is_available()
    }

    /// Requests in flight to this server, across workers.
    pub fn inflight(&self) -> usize {
        self.standing.inflight.load(Ordering::Relaxed)
    }

    /// Requests sent to this server.
    pub fn requests(&self) -> u64 {
        self.standing.requests.load(Ordering::Relaxed)
    }

    /// Failures: transport failures (connect errors, resets, timeouts) and answers with
    /// a status in the set's `circuit_breaker.statuses`.
    pub fn failures(&self) -> u64 {
        self.standing.failures.load(Ordering::Relaxed)
    }

    /// Takes the breaker's permission for one request and counts it in flight until
    /// the guard drops. `None`: the breaker refused (open, or another request is its
    /// half-open probe).
    pub fn try_begin(self: &Arc<Self>) -> Option<InflightGuard> {
        let permit = self.breaker.try_acquire()?;
        self.standing.inflight.fetch_add(1, Ordering::Relaxed);
        self.standing.requests.fetch_add(1, Ordering::Relaxed);
        Some(InflightGuard {
            server: Arc::clone(self),
            permit,
            head_ok: false,
        })
    }

    /// Feeds one active health-check result; returns the new health when it flipped.
    pub fn record_check(&self, ok: bool, healthy_after: u32, unhealthy_after: u32) -> Option<bool> {
        let s = &self.standing;
        if ok {
            s.check_failures.store(0, Ordering::Relaxed);
            let n = s.check_successes.fetch_add(1, Ordering::Relaxed) + 1;
            if !self.is_healthy() && n >= healthy_after {
                s.healthy.store(true, Ordering::Release);
                return Some(true);
            }
        } else {
            s.check_successes.store(0, Ordering::Relaxed);
            let n = s.check_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if self.is_healthy() && n >= unhealthy_after {
                s.healthy.store(false, Ordering::Release);
                return Some(false);
            }
        }
        None
    }

    /// Forgets what active checks said: healthy, no passes or failures counted. For a
    /// server no check watches any more (nothing else would mark it up again).
    pub fn reset_health(&self) {
        let s = &self.standing;
        s.check_successes.store(0, Ordering::Relaxed);
        s.check_failures.store(0, Ordering::Relaxed);
        s.healthy.store(true, Ordering::Release);
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
    /// A good head whose outcome waits for its body ([`Self::head_ok`]).
    head_ok: bool,
}

impl InflightGuard {
    /// The server this request went to.
    pub fn server(&self) -> &Arc<ServerState> {
        &self.server
    }

    /// The server answered with a good head: a success, recorded when the body is over
    /// (this guard drops), unless the body fails first ([`Self::body_failed`]). A
    /// server that fails every response partway through its body then opens its
    /// breaker like one that fails before the head (a success recorded at the head
    /// reset the count of failures each time).
    pub fn head_ok(&mut self) {
        self.head_ok = true;
    }

    /// Whether this request is a half-open breaker's probe (its outcome is recorded at
    /// the head: a probe kept open by a long body would block the breaker's next probe
    /// and then not count).
    pub fn is_probe(&self) -> bool {
        self.permit.is_probe()
    }

    /// The body after a good head failed (reset, closed short, stalled past the
    /// response timeout): the server's failure after all.
    pub fn body_failed(&mut self, upstream: &str) {
        if std::mem::take(&mut self.head_ok) {
            self.record_outcome(false, upstream);
        }
    }

    /// Records the request's transport outcome for the breaker (passive health);
    /// `upstream`: the set's name, for the line that says the breaker opened.
    pub fn record_outcome(&self, ok: bool, upstream: &str) {
        if !ok {
            self.server
                .standing
                .failures
                .fetch_add(1, Ordering::Relaxed);
        }
        if self.server.breaker.record(self.permit, ok) {
            let (failures, open_for) = self.server.breaker.settings();
            tracing::warn!(
                target: "proxycache::upstream",
                upstream,
                server = self.server.label(),
                failures,
                open_for = ?open_for,
                "circuit breaker opened"
            );
        }
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.head_ok {
            // The body ended (or its client left): the server did well. (A success
            // never opens a breaker.)
            let _ = self.server.breaker.record(self.permit, true);
        }
        self.server
            .standing
            .inflight
            .fetch_sub(1, Ordering::Relaxed);
    }
}
