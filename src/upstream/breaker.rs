//! A circuit breaker per server: closed -> (N consecutive failures) -> open ->
//! (`open_for` elapsed) -> half-open, which lets one probe request through; its success
//! closes the breaker, its failure opens it again.
//!
//! Every request the breaker lets through carries a [`Permit`] naming the state it was
//! let through in, and only outcomes whose permit matches the current state count: a
//! request already in flight when the breaker opened cannot close it (or open it
//! again) when it ends; only the probe decides a half-open breaker.
//!
//! The closed state is read with one atomic load, so the common case takes no lock.
//!
//! A breaker does not know its name: [`Breaker::record`] says when an outcome opened
//! it, and the caller, which knows the upstream and server (or the named breaker),
//! logs it.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The state, in the low two bits of [`Breaker::word`].
const STATE: u64 = 0b11;
const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;

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

/// What [`Breaker::try_acquire`] let through: hand it back to [`Breaker::record`] with
/// the outcome. It remembers the breaker's state and how many times the state had
/// changed, so an outcome from an earlier state is told apart and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit(u64);

impl Permit {
    /// Whether this request is a half-open breaker's one probe.
    pub fn is_probe(self) -> bool {
        self.0 & STATE == HALF_OPEN
    }
}

/// One breaker.
#[derive(Debug)]
pub struct Breaker {
    failures_to_open: u32,
    open_for: Duration,
    /// The state (low two bits) and, above it, a count of state changes; changed only
    /// under the `slow` lock, read without it.
    word: AtomicU64,
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
            word: AtomicU64::new(CLOSED),
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
        match self.word.load(Ordering::Acquire) & STATE {
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
        match self.word.load(Ordering::Acquire) & STATE {
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
    /// half-open, never while open. `None`: refused.
    pub fn try_acquire(&self) -> Option<Permit> {
        let word = self.word.load(Ordering::Acquire);
        if word & STATE == CLOSED {
            return Some(Permit(word));
        }
        let mut slow = self.slow.lock();
        let word = self.word.load(Ordering::Acquire);
        if word & STATE == CLOSED {
            return Some(Permit(word));
        }
        if slow.probe_blocks(self.open_for) {
            return None;
        }
        if slow
            .opened_at
            .is_some_and(|at| at.elapsed() < self.open_for)
        {
            return None;
        }
        // A new probe each time (also after a lost one): only its outcome decides.
        slow.probe_since = Some(Instant::now());
        Some(Permit(self.advance(word, HALF_OPEN)))
    }

    /// Records the outcome of a request that `try_acquire` let through with `permit`.
    /// Ignored when the breaker has changed state since (the request was in flight
    /// when it opened, or it is not the probe now deciding). `true`: this failure
    /// opened a closed breaker (for the caller to log; a failed probe opening it
    /// again is not news).
    #[must_use = "log when it opened the breaker"]
    pub fn record(&self, permit: Permit, ok: bool) -> bool {
        let word = self.word.load(Ordering::Acquire);
        if word != permit.0 {
            return false;
        }
        if word & STATE == CLOSED {
            if ok {
                if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                    self.consecutive_failures.store(0, Ordering::Relaxed);
                }
                return false;
            }
            let n = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
            return n >= self.failures_to_open && self.open(word);
        }
        let mut slow = self.slow.lock();
        if self.word.load(Ordering::Acquire) != permit.0 {
            return false;
        }
        slow.probe_since = None;
        if ok {
            slow.opened_at = None;
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.advance(word, CLOSED);
        } else {
            slow.opened_at = Some(Instant::now());
            self.advance(word, OPEN);
        }
        false
    }

    /// Records the outcome of work no `try_acquire` of this caller let through: it
    /// counts while the breaker is closed, and is ignored otherwise (it is not the probe).
    /// `true`: as for [`record`](Self::record).
    #[must_use = "log when it opened the breaker"]
    pub fn record_unchecked(&self, ok: bool) -> bool {
        let word = self.word.load(Ordering::Acquire);
        word & STATE == CLOSED && self.record(Permit(word), ok)
    }

    /// Opens a breaker still in the closed state `word` (not one another failure
    /// opened meanwhile, which would push its `opened_at` later). `true`: this call
    /// opened it.
    fn open(&self, word: u64) -> bool {
        let mut slow = self.slow.lock();
        if self.word.load(Ordering::Acquire) != word {
            return false;
        }
        slow.opened_at = Some(Instant::now());
        slow.probe_since = None;
        self.advance(word, OPEN);
        true
    }

    /// Moves from `word` to `state`, counting the change; called under the `slow` lock.
    fn advance(&self, word: u64, state: u64) -> u64 {
        let next = (word & !STATE).wrapping_add(STATE + 1) | state;
        self.word.store(next, Ordering::Release);
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lets one request through and records its outcome; `true`: it opened the breaker.
    fn run(b: &Breaker, ok: bool) -> bool {
        match b.try_acquire() {
            Some(permit) => b.record(permit, ok),
            None => panic!("the breaker refused the request"),
        }
    }

    #[test]
    fn opens_after_n_failures_then_half_opens_and_closes() {
        let b = Breaker::new(3, Duration::from_millis(30));
        for _ in 0..2 {
            assert!(!run(&b, false));
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(
            run(&b, false),
            "the third failure opened it (for the caller to log)"
        );
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_acquire().is_none());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let probe = b.try_acquire().expect("one probe is let through");
        assert!(probe.is_probe());
        assert!(b.try_acquire().is_none(), "only one probe at a time");
        assert!(!b.record(probe, true));
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_probe_that_never_reports_back_stops_blocking_after_open_for() {
        let b = Breaker::new(1, Duration::from_millis(20));
        run(&b, false);
        std::thread::sleep(Duration::from_millis(25));
        let lost = b.try_acquire().expect("the probe");
        assert!(b.try_acquire().is_none(), "one probe at a time");
        std::thread::sleep(Duration::from_millis(25));
        let probe = b
            .try_acquire()
            .expect("the first probe was lost: another may go");
        // The lost probe reporting late decides nothing; the new one does.
        let _ = b.record(lost, true);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let _ = b.record(probe, true);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_opens_again() {
        let b = Breaker::new(1, Duration::from_millis(10));
        assert!(run(&b, false));
        std::thread::sleep(Duration::from_millis(15));
        assert!(!run(&b, false), "opened again, which is not news");
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn success_resets_the_failure_count() {
        let b = Breaker::new(2, Duration::from_secs(10));
        run(&b, false);
        run(&b, true);
        run(&b, false);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_late_outcome_of_a_request_let_through_before_it_opened_is_ignored() {
        let b = Breaker::new(1, Duration::from_secs(60));
        let slow = b.try_acquire().expect("closed");
        let other = b.try_acquire().expect("closed");
        run(&b, false);
        assert_eq!(b.state(), BreakerState::Open);
        // The request in flight when it opened ends well: it stays open.
        let _ = b.record(slow, true);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_acquire().is_none());
        // A late failure does not push the end of `open_for` later either.
        let opened_at = b.slow.lock().opened_at;
        let _ = b.record(other, false);
        assert_eq!(b.slow.lock().opened_at, opened_at);
    }

    #[test]
    fn a_late_failure_from_before_the_breaker_closed_again_is_ignored() {
        let b = Breaker::new(1, Duration::from_millis(10));
        let old = b.try_acquire().expect("closed");
        run(&b, false);
        std::thread::sleep(Duration::from_millis(15));
        run(&b, true);
        assert_eq!(b.state(), BreakerState::Closed);
        let _ = b.record(old, false);
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "a stale failure reopened it"
        );
    }
}
