//! A worker's keep-alive connections to upstream servers. Each worker owns one `Pool`
//! (so the lock below is never contended across threads); a connection goes back into
//! it once its response has been read to the end and hyper says it is ready again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::SendRequest;
use parking_lot::Mutex;

use crate::http::ProxyBody;

/// A sender for one idle HTTP/1.1 upstream connection.
pub type Sender = SendRequest<ProxyBody>;

/// Idle connections by server address.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    /// Connections opened by this worker.
    pub opened: AtomicU64,
    /// Requests sent on a pooled connection.
    pub reused: AtomicU64,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

impl Pool {
    /// The most recently used live connection to `addr`, dropping closed or expired
    /// ones on the way.
    pub fn checkout(&self, addr: SocketAddr, idle_timeout: Duration) -> Option<Sender> {
        let mut idle = self.idle.lock();
        let list = idle.get_mut(&addr)?;
        while let Some(entry) = list.pop() {
            if entry.since.elapsed() < idle_timeout && !entry.sender.is_closed() {
                self.reused.fetch_add(1, Ordering::Relaxed);
                return Some(entry.sender);
            }
        }
        None
    }

    /// Keeps a ready connection for reuse, up to `max_idle` per server.
    pub fn checkin(&self, addr: SocketAddr, sender: Sender, max_idle: usize) {
        if max_idle == 0 || sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock();
        let list = idle.entry(addr).or_default();
        if list.len() >= max_idle {
            // Drop the oldest: the newest are the least likely to have been closed.
            list.remove(0);
        }
        list.push(Idle {
            sender,
            since: Instant::now(),
        });
    }

    /// Drops closed and expired connections (called periodically by the worker).
    pub fn sweep(&self, idle_timeout: impl Fn(SocketAddr) -> Duration) {
        let mut idle = self.idle.lock();
        idle.retain(|addr, list| {
            let timeout = idle_timeout(*addr);
            list.retain(|e| e.since.elapsed() < timeout && !e.sender.is_closed());
            !list.is_empty()
        });
    }

    /// Idle connections held right now.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().values().map(Vec::len).sum()
    }

    /// Counts a newly opened connection.
    pub fn count_opened(&self) {
        self.opened.fetch_add(1, Ordering::Relaxed);
    }
}
