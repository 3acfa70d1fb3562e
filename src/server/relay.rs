//! Byte relays: what an upgraded HTTP connection (WebSocket and other `Upgrade`s) and
//! an L4 `[[tcp]]` connection become once the proxy stops reading the bytes. Both
//! directions are copied at once with half-close (when one side reaches EOF the other
//! side's write half is shut down and the other direction keeps flowing), and silence
//! in both directions for the caller's idle timeout closes the relay
//! (`server.timeouts.idle` for an upgrade, the frontend's `idle_timeout` for
//! `[[tcp]]`).
//!
//! A relay counts as an open connection (`Shared::connections`) for its whole life,
//! so graceful shutdown waits for it up to `timeouts.shutdown_drain`; when the drain
//! time is up the worker's runtime stops and every relay still open is closed.
//!
//! Owns: the copy loop, its idle clock and its connection slot. Must not touch: how
//! the two ends were obtained (the request path, the L4 accept loop).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::Shared;

/// Why a relay ended early (a clean close on both sides is `Ok`).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Nothing moved either way for the idle timeout.
    #[error("idle for {0:?}; closed")]
    Idle(Duration),
    /// A read or write failed on either side.
    #[error("relay failed: {0}")]
    Io(#[from] io::Error),
}

/// Bytes moved by a relay that ended cleanly: `(a -> b, b -> a)`.
pub type Moved = (u64, u64);

/// What a relay has moved so far, counted on `a`'s side as it goes: readable while
/// it runs and however it ended (an idle timeout, an error, or its task dropped),
/// which [`Moved`] is not.
#[derive(Debug, Default)]
pub struct Traffic {
    from_a: AtomicU64,
    to_a: AtomicU64,
}

impl Traffic {
    /// Bytes read from `a` (for a `[[tcp]]` relay: received from the client).
    pub fn from_a(&self) -> u64 {
        self.from_a.load(Ordering::Relaxed)
    }

    /// Bytes written to `a` (sent to the client).
    pub fn to_a(&self) -> u64 {
        self.to_a.load(Ordering::Relaxed)
    }
}

/// Copies between `a` and `b` until both directions have reached EOF, either side
/// fails, or nothing moved for `idle`; counts into `traffic` as it goes.
pub async fn relay<A, B>(a: A, b: B, idle: Duration, traffic: &Traffic) -> Result<Moved, RelayError>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let clock = IdleClock::new();
    let mut a = Clocked {
        io: a,
        clock: &clock,
        counts: Some(traffic),
    };
    let mut b = Clocked {
        io: b,
        clock: &clock,
        counts: None,
    };
    tokio::select! {
        moved = tokio::io::copy_bidirectional(&mut a, &mut b) => Ok(moved?),
        () = clock.expired(idle) => Err(RelayError::Idle(idle)),
    }
}

/// When bytes last moved, in milliseconds since the relay started.
struct IdleClock {
    start: Instant,
    last_ms: AtomicU64,
}

impl IdleClock {
    fn new() -> Self {
        IdleClock {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `idle` (sleeping only until the next
    /// possible deadline, so a busy relay costs one timer wake-up per `idle`).
    async fn expired(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// One end of a relay, touching the idle clock whenever bytes move (and counting
/// them, on the end that has `counts`).
struct Clocked<'a, T> {
    io: T,
    clock: &'a IdleClock,
    counts: Option<&'a Traffic>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Clocked<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            this.clock.touch();
            if let Some(counts) = this.counts {
                counts.from_a.fetch_add(read as u64, Ordering::Relaxed);
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Clocked<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                this.clock.touch();
                if let Some(counts) = this.counts {
                    counts.to_a.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
        polled
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// One open connection in `Shared::connections`, given back on drop (which wakes a
/// draining shutdown).
pub struct ConnSlot {
    shared: Arc<Shared>,
}

impl ConnSlot {
    /// Takes a slot if fewer than `server.limits.max_connections` are open.
    pub fn try_take(shared: &Arc<Shared>) -> Option<ConnSlot> {
        let max = shared.generation().config.server.limits.max_connections;
        if shared.connections.fetch_add(1, Ordering::AcqRel) >= max {
            shared.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnSlot {
            shared: Arc::clone(shared),
        })
    }

    /// Takes a slot whatever the limit: for a connection that already held one and
    /// is changing hands (an HTTP connection becoming a tunnel).
    pub fn take(shared: &Arc<Shared>) -> ConnSlot {
        shared.connections.fetch_add(1, Ordering::AcqRel);
        ConnSlot {
            shared: Arc::clone(shared),
        }
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.shared.connections.fetch_sub(1, Ordering::AcqRel);
        self.shared.conn_closed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::{relay, RelayError, Traffic};

    #[tokio::test]
    async fn a_silent_relay_times_out() {
        let (a, _a_peer) = tokio::io::duplex(64);
        let (b, _b_peer) = tokio::io::duplex(64);
        let ended = relay(a, b, Duration::from_millis(50), &Traffic::default()).await;
        assert!(matches!(ended, Err(RelayError::Idle(_))), "{ended:?}");
    }

    #[tokio::test]
    async fn an_idle_relay_still_tells_what_it_moved() -> std::io::Result<()> {
        let (a, mut client) = tokio::io::duplex(64);
        let (b, mut server) = tokio::io::duplex(64);
        let traffic = std::sync::Arc::new(Traffic::default());
        let counted = std::sync::Arc::clone(&traffic);
        let task =
            tokio::spawn(async move { relay(a, b, Duration::from_millis(50), &counted).await });
        client.write_all(b"abc").await?;
        let mut three = [0u8; 3];
        server.read_exact(&mut three).await?;
        server.write_all(b"hello").await?;
        let mut five = [0u8; 5];
        client.read_exact(&mut five).await?;
        let ended = task.await.map_err(std::io::Error::other)?;
        assert!(matches!(ended, Err(RelayError::Idle(_))), "{ended:?}");
        assert_eq!((traffic.from_a(), traffic.to_a()), (3, 5));
        Ok(())
    }

    #[tokio::test]
    async fn half_close_keeps_the_other_direction() -> std::io::Result<()> {
        let (a, mut client) = tokio::io::duplex(64);
        let (b, mut server) = tokio::io::duplex(64);
        let traffic = std::sync::Arc::new(Traffic::default());
        let counted = std::sync::Arc::clone(&traffic);
        let task = tokio::spawn(async move { relay(a, b, Duration::from_secs(5), &counted).await });
        client.write_all(b"ping").await?;
        client.shutdown().await?;
        let mut got = Vec::new();
        server.read_to_end(&mut got).await?;
        assert_eq!(got, b"ping");
        server.write_all(b"pong").await?;
        server.shutdown().await?;
        let mut back = Vec::new();
        client.read_to_end(&mut back).await?;
        assert_eq!(back, b"pong");
        let moved = task.await.map_err(std::io::Error::other)?;
        assert!(matches!(moved, Ok((4, 4))), "{moved:?}");
        assert_eq!((traffic.from_a(), traffic.to_a()), (4, 4));
        Ok(())
    }
}
