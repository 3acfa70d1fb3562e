//! A circuit breaker per server: closed -> (N consecutive failures) -> open ->
//! (`open_for` elapsed) -> half-open, which lets one probe request through; its success
//! closes the breaker, its failure opens it again.
//!
//! The closed state is read with one atomic load, so the common case takes no lock.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// The state of a breaker, as reported to the admin API and scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// Lower-case name for JSON and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// One breaker.
#[derive(Debug)]
pub struct Breaker {
    failures_to_open: u32,
    open_for: Duration,
    state: AtomicU8,
    consecutive_failures: AtomicU32,
    slow: Mutex<Slow>,
}

#[derive(Debug)]
struct Slow {
    opened_at: Option<Instant>,
    /// When the probe now in flight was let through; a probe that never reports back
    /// (its request was dropped) stops blocking others after `open_for`.
    probe_since: Option<Instant>,
}

impl Slow {
    fn probe_blocks(&self, open_for: Duration) -> bool {
        self.probe_since.is_some_and(|at| at.elapsed() < open_for)
    }
}

impl Breaker {
    /// A closed breaker that opens after `failures` consecutive failures.
    pub fn new(failures: u32, open_for: Duration) -> Self {
        Breaker {
            failures_to_open: failures.max(1),
            open_for,
            state: AtomicU8::new(CLOSED),
            consecutive_failures: AtomicU32::new(0),
            slow: Mutex::new(Slow {
                opened_at: None,
                probe_since: None,
            }),
        }
    }

    /// `(failures, open_for)` as made.
    pub fn settings(&self) -> (u32, Duration) {
        (self.failures_to_open, self.open_for)
    }

    /// The current state (an open breaker whose time is up reads as half-open).
    pub fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            HALF_OPEN => BreakerState::HalfOpen,
            _ => {
                let slow = self.slow.lock();
                match slow.opened_at {
                    Some(at) if at.elapsed() >= self.open_for => BreakerState::HalfOpen,
                    _ => BreakerState::Open,
                }
            }
        }
    }

    /// Whether a request could be let through now (no side effects).
    pub fn is_available(&self) -> bool {
        match self.state.load(Ordering::Acquire) {
            CLOSED => true,
            _ => {
                let slow = self.slow.lock();
                !slow.probe_blocks(self.open_for)
                    && slow
                        .opened_at
                        .is_none_or(|at| at.elapsed() >= self.open_for)
            }
        }
    }

    /// Takes permission for one request: always when closed, once (the probe) when
    /// half-open, never while open.
    pub fn try_acquire(&self) -> bool {
        if self.state.load(Ordering::Acquire) == CLOSED {
            return true;
        }
        let mut slow = self.slow.lock();
        if slow.probe_blocks(self.open_for) {
            return false;
        }
        if slow
            .opened_at
            .is_some_and(|at| at.elapsed() < self.open_for)
        {
            return false;
        }
        slow.probe_since = Some(Instant::now());
        self.state.store(HALF_OPEN, Ordering::Release);
        true
    }

    /// Records the outcome of a request that `try_acquire` let through.
    pub fn record(&self, ok: bool) {
        let state = self.state.load(Ordering::Acquire);
        if state == CLOSED {
            if ok {
                if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                    self.consecutive_failures.store(0, Ordering::Relaxed);
                }
                return;
            }
            let n = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
            if n >= self.failures_to_open {
                self.open();
            }
            return;
        }
        let mut slow = self.slow.lock();
        slow.probe_since = None;
        if ok {
            slow.opened_at = None;
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.state.store(CLOSED, Ordering::Release);
        } else {
            slow.opened_at = Some(Instant::now());
            self.state.store(OPEN, Ordering::Release);
        }
    }

    fn open(&self) {
        let mut slow = self.slow.lock();
        slow.opened_at = Some(Instant::now());
        slow.probe_since = None;
        self.state.store(OPEN, Ordering::Release);
        tracing::warn!(target: "proxycache::upstream", "circuit breaker opened");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_n_failures_then_half_opens_and_closes() {
        let b = Breaker::new(3, Duration::from_millis(30));
        for _ in 0..2 {
            assert!(b.try_acquire());
            b.record(false);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.try_acquire());
        b.record(false);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.try_acquire());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.try_acquire(), "one probe is let through");
        assert!(!b.try_acquire(), "only one probe at a time");
        b.record(true);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_probe_that_never_reports_back_stops_blocking_after_open_for() {
        let b = Breaker::new(1, Duration::from_millis(20));
        b.record(false);
        std::thread::sleep(Duration::from_millis(25));
        assert!(b.try_acquire(), "the probe");
        assert!(!b.try_acquire(), "one probe at a time");
        std::thread::sleep(Duration::from_millis(25));
        assert!(b.try_acquire(), "the first probe was lost: another may go");
    }

    #[test]
    fn a_failed_probe_opens_again() {
        let b = Breaker::new(1, Duration::from_millis(10));
        b.record(false);
        std::thread::sleep(Duration::from_millis(15));
        assert!(b.try_acquire());
        b.record(false);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn success_resets_the_failure_count() {
        let b = Breaker::new(2, Duration::from_secs(10));
        b.record(false);
        b.record(true);
        b.record(false);
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
