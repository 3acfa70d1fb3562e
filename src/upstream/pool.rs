//! A worker's keep-alive connections to upstream servers. Each worker owns one `Pool`
//! (so the lock below is never contended across threads).
//!
//! An HTTP/1.1 connection is lent to one request at a time: it goes back into the pool
//! once its response has been read to the end cleanly (see `h1`; for hyper's, once
//! hyper says it is ready again), and is probed for a close before reuse. An
//! HTTP/2 connection is shared: it stays in the pool while alive and every request
//! multiplexes over a clone of its sender.
//!
//! Connections are keyed by [`PoolKey`] — address, TLS identity and protocol — so a
//! plain connection is never handed to a TLS set, nor one verified for another name.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::client::conn::{http1, http2};
use parking_lot::Mutex;

use super::h1;
use super::tls::TlsIdentity;
use crate::http::ProxyBody;

/// What makes two connections interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub addr: SocketAddr,
    /// `None`: plain TCP.
    pub tls: Option<Arc<TlsIdentity>>,
    /// HTTP/2 asked for (h2c on plain TCP, ALPN `h2` over TLS).
    pub http2: bool,
}

impl PoolKey {
    /// A plain HTTP/1.1 connection to `addr`.
    pub fn plain(addr: SocketAddr) -> PoolKey {
        PoolKey {
            addr,
            tls: None,
            http2: false,
        }
    }
}

/// How long connections to an address of no upstream set (a Lua `std.http.request`
/// callout's) are kept idle.
pub const OUTBOUND_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The sending half of one upstream connection.
pub enum Sender {
    /// HTTP/1.1 driven by the request's task (see `h1`): every HTTP/1.1 set.
    Own(h1::Conn),
    /// HTTP/1.1 through hyper: a set that asked for HTTP/2 over TLS and was not
    /// offered it.
    H1(http1::SendRequest<ProxyBody>),
    H2(http2::SendRequest<ProxyBody>),
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sender::Own(_) => "Sender::Own",
            Sender::H1(_) => "Sender::H1",
            Sender::H2(_) => "Sender::H2",
        })
    }
}

impl Sender {
    /// Waits until the connection can take a request; `Err` if it closed.
    pub async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Sender::Own(_) => Ok(()),
            Sender::H1(s) => s.ready().await,
            Sender::H2(s) => s.ready().await,
        }
    }

    /// Whether the connection has closed.
    pub fn is_closed(&mut self) -> bool {
        match self {
            Sender::Own(c) => c.is_closed(),
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    /// Whether this is a multiplexed HTTP/2 connection.
    pub fn is_h2(&self) -> bool {
        matches!(self, Sender::H2(_))
    }
}

/// Idle (HTTP/1.1) and shared (HTTP/2) connections by key.
#[derive(Default)]
pub struct Pool {
    /// FxHash: keys come from the configuration, not from requests, and SipHash of a
    /// key cost ~1,000 instructions a request (checkout + checkin).
    idle: Mutex<HashMap<PoolKey, Vec<Idle>, rustc_hash::FxBuildHasher>>,
    /// Connections opened by this worker.
    pub opened: AtomicU64,
    /// Requests sent on a pooled connection.
    pub reused: AtomicU64,
}

struct Idle {
    sender: Sender,
    /// Since it was checked in (HTTP/1.1) or last used (HTTP/2).
    since: Instant,
}

impl Pool {
    /// A live connection for `key`: the shared HTTP/2 one, or the most recently used
    /// HTTP/1.1 one, dropping closed or expired ones on the way.
    pub fn checkout(&self, key: &PoolKey, idle_timeout: Duration) -> Option<Sender> {
        let mut idle = self.idle.lock();
        let list = idle.get_mut(key)?;
        while let Some(entry) = list.last_mut() {
            if entry.since.elapsed() >= idle_timeout || entry.sender.is_closed() {
                list.pop();
                continue;
            }
            self.reused.fetch_add(1, Ordering::Relaxed);
            if let Sender::H2(shared) = &entry.sender {
                entry.since = Instant::now();
                return Some(Sender::H2(shared.clone()));
            }
            return list.pop().map(|e| e.sender);
        }
        None
    }

    /// Keeps a ready connection for reuse: HTTP/1.1 ones up to `max_idle` per key. An
    /// HTTP/2 connection is kept once (a clone of one already shared is dropped),
    /// whatever `max_idle` says: it is not idle but shared, requests multiplexing over
    /// it while it is alive (as Envoy always does), so `max_idle = 0` does not make
    /// every request open a connection of its own.
    pub fn checkin(&self, key: &PoolKey, mut sender: Sender, max_idle: usize) {
        // An own HTTP/1.1 connection comes back at the clean end of a response; whether
        // the server closed it since is looked at when it is next checked out.
        if !matches!(sender, Sender::Own(_)) && sender.is_closed() {
            return;
        }
        let h2 = sender.is_h2();
        if max_idle == 0 && !h2 {
            return;
        }
        let mut idle = self.idle.lock();
        let list = match idle.get_mut(key) {
            Some(list) => list,
            None => idle.entry(key.clone()).or_default(),
        };
        if h2 {
            if list
                .iter_mut()
                .any(|e| e.sender.is_h2() && !e.sender.is_closed())
            {
                return;
            }
        } else if list.iter().filter(|e| !e.sender.is_h2()).count() >= max_idle {
            // Drop the oldest: the newest are the least likely to have been closed.
            if let Some(oldest) = list.iter().position(|e| !e.sender.is_h2()) {
                list.remove(oldest);
            }
        }
        list.push(Idle {
            sender,
            since: Instant::now(),
        });
    }

    /// Drops closed and expired connections (called periodically by the worker).
    pub fn sweep(&self, idle_timeout: impl Fn(SocketAddr) -> Duration) {
        let mut idle = self.idle.lock();
        idle.retain(|key, list| {
            let timeout = idle_timeout(key.addr);
            list.retain_mut(|e| e.since.elapsed() < timeout && !e.sender.is_closed());
            !list.is_empty()
        });
    }

    /// Connections held right now (idle HTTP/1.1 and shared HTTP/2).
    pub fn idle_count(&self) -> usize {
        self.idle.lock().values().map(Vec::len).sum()
    }

    /// Counts a newly opened connection.
    pub fn count_opened(&self) {
        self.opened.fetch_add(1, Ordering::Relaxed);
    }
}
