//! Process-wide request counters, cheap enough to bump on every request (relaxed
//! atomics); read by the admin API and tests.

use std::sync::atomic::{AtomicU64, Ordering};

use http::StatusCode;

/// Request counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Responses by status class: index 1 = 1xx ... 5 = 5xx.
    by_class: [AtomicU64; 6],
    /// TLS handshakes on the listeners: done, and failed or timed out.
    tls_handshakes: [AtomicU64; 2],
}

impl Stats {
    /// Counts one response.
    pub fn record(&self, status: StatusCode) {
        let class = usize::from(status.as_u16() / 100).min(5);
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Responses with this status class (1..=5).
    pub fn class(&self, class: usize) -> u64 {
        self.by_class
            .get(class)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Counts one TLS handshake of a client's (`ok`: it completed).
    pub fn tls_handshake(&self, ok: bool) {
        self.tls_handshakes[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    /// TLS handshakes `(completed, failed)`.
    pub fn tls_handshakes(&self) -> (u64, u64) {
        let [ok, failed] = &self.tls_handshakes;
        (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
    }

    /// All responses.
    pub fn total(&self) -> u64 {
        self.by_class
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}
