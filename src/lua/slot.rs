//! A worker's VM slot: the VM once built, or why the last build failed and when the
//! next one may be tried. A failed build is not kept for the generation's life (a
//! chunk's top level can run over its wall-clock limit on a busy host): a later
//! request tries again, after a backoff that doubles from [`FIRST_RETRY`] up to
//! [`MAX_RETRY`], so a build that keeps failing costs one build per backoff, not one
//! per request.
//!
//! Must not touch: what a build does (the caller's closure).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Wait after a first failed build before the next is tried.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);

/// The longest wait between two builds that fail.
pub const MAX_RETRY: Duration = Duration::from_secs(30);

/// A value built on first use, retried with backoff when the build fails.
#[derive(Debug)]
pub struct Slot<T, E> {
    built: OnceLock<T>,
    /// Boxed: most slots never fail, and there are many (one per possible worker).
    failed: Mutex<Option<Box<Failed<E>>>>,
}

impl<T, E> Default for Slot<T, E> {
    fn default() -> Self {
        Slot {
            built: OnceLock::new(),
            failed: Mutex::new(None),
        }
    }
}

#[derive(Debug)]
struct Failed<E> {
    error: E,
    next_try: Instant,
    backoff: Duration,
}

/// Why [`Slot::get`] gave no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused<E> {
    /// The error of the last build.
    pub error: E,
    /// Whether that build ran in this call (then it is news worth logging).
    pub fresh: bool,
    /// How long until the next build may be tried.
    pub retry_in: Duration,
}

impl<T: Clone, E: Clone> Slot<T, E> {
    /// The value, built with `build` when there is none and no failed build is
    /// waiting out its backoff at `now()` (the clock is read only then: a built
    /// value costs one atomic load).
    pub fn get(
        &self,
        now: impl FnOnce() -> Instant,
        build: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, Refused<E>> {
        if let Some(v) = self.built.get() {
            return Ok(v.clone());
        }
        let now = now();
        let mut failed = self.failed.lock();
        // Built by another caller while this one waited for the lock.
        if let Some(v) = self.built.get() {
            return Ok(v.clone());
        }
        if let Some(f) = failed.as_deref() {
            if now < f.next_try {
                return Err(Refused {
                    error: f.error.clone(),
                    fresh: false,
                    retry_in: f.next_try - now,
                });
            }
        }
        match build() {
            Ok(v) => {
                *failed = None;
                Ok(self.built.get_or_init(|| v).clone())
            }
            Err(error) => {
                let backoff = failed
                    .as_deref()
                    .map_or(FIRST_RETRY, |f| (f.backoff * 2).min(MAX_RETRY));
                *failed = Some(Box::new(Failed {
                    error: error.clone(),
                    next_try: now + backoff,
                    backoff,
                }));
                Err(Refused {
                    error,
                    fresh: true,
                    retry_in: backoff,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::time::Instant;

    use super::{Refused, Slot, FIRST_RETRY, MAX_RETRY};

    /// A failed build is retried only once its backoff is over (doubling each time up
    /// to the cap), and a build that then succeeds is kept for good.
    #[test]
    fn a_failed_build_is_retried_after_a_growing_backoff_and_a_success_is_kept() {
        let slot: Slot<u32, &str> = Slot::default();
        let builds = Cell::new(0);
        let failing = || {
            builds.set(builds.get() + 1);
            Err("boom")
        };
        let t0 = Instant::now();
        assert_eq!(
            slot.get(|| t0, failing),
            Err(Refused {
                error: "boom",
                fresh: true,
                retry_in: FIRST_RETRY
            })
        );
        // Within the backoff: the stored error, no build.
        let half = t0 + FIRST_RETRY / 2;
        let refused = slot.get(|| half, failing).expect_err("still failing");
        assert!(!refused.fresh);
        assert_eq!(refused.retry_in, FIRST_RETRY / 2);
        assert_eq!(builds.get(), 1);
        // After it: built again, and the next wait is twice as long.
        let t1 = t0 + FIRST_RETRY;
        let refused = slot.get(|| t1, failing).expect_err("fails again");
        assert!(refused.fresh);
        assert_eq!(refused.retry_in, FIRST_RETRY * 2);
        assert_eq!(builds.get(), 2);
        let mut t = t1;
        for _ in 0..10 {
            t += MAX_RETRY;
            let _ = slot.get(|| t, failing);
        }
        let refused = slot.get(|| t, failing).expect_err("waiting");
        assert_eq!(refused.retry_in, MAX_RETRY, "the backoff is capped");
        // A build that succeeds is kept: no more builds.
        assert_eq!(slot.get(|| t + MAX_RETRY, || Ok(7)), Ok(7));
        assert_eq!(slot.get(|| t + MAX_RETRY * 2, || Err("not called")), Ok(7));
    }
}
