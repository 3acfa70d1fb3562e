//! The send timeout of HTTP/2 streams: a response the client takes nothing of for
//! `server.timeouts.idle` is reset (`RST_STREAM`), as an HTTP/1.1 client's connection is
//! dropped in `h1::write_response` (nginx's `send_timeout`). Without it a client can
//! keep its connection alive (PINGs, other streams) while one stream's flow-control
//! window stays shut, pinning that stream's upstream connection and buffers forever.
//!
//! hyper has no hook for this: while a stream waits for window it parks on h2's
//! capacity and polls neither the response body nor anything of ours. So the timer
//! lives in the stream's task, around hyper's stream future:
//!
//! - [`StreamExec`] is the executor hyper spawns each HTTP/2 stream with. It runs the
//!   stream inside a [`StallClock`] (a task-local the request path picks up with
//!   [`StallClock::current`] and hands to the response body), and after each poll of
//!   the stream looks at the clock.
//! - The response body (`proxy::completion::ResponseBody`, through a [`BodyWatch`])
//!   tells the clock when it hands hyper a data frame and when hyper asks for the next
//!   one. Between the two, hyper holds data it cannot send: the client's window is what
//!   it waits for. Waiting on the body (a slow upstream) is not the client's doing and
//!   is not timed here. Frames are handed on in slices of at most [`SLICE`] bytes, so
//!   "progress" means the client took at least a slice.
//! - Once hyper has held a frame for `idle` with no frame taken since, the task drops
//!   the stream: h2 resets it (`CANCEL`), and the response body goes with it, closing
//!   its upstream connection (a body not read to its end never returns to the pool).
//!   The access log line is written then, with the bytes sent so far.
//!
//! A body that has handed hyper its last frame is over for hyper, and its task ends:
//! what h2 still buffers for the client then (at most its per-stream send buffer) waits
//! with the connection, holding no upstream connection.
//!
//! Must not touch: the connection's own timeouts (`conn`'s watchdog).

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, Sleep};

tokio::task_local! {
    static CLOCK: Arc<StallClock>;
}

/// What a stream's response body tells its task.
#[derive(Debug, Default)]
pub struct StallClock {
    /// Data frames handed to hyper so far.
    frames: AtomicU64,
    /// hyper holds a frame and has not asked for the next one.
    held: AtomicBool,
}

impl StallClock {
    /// The clock of the HTTP/2 stream being served (`None` elsewhere: HTTP/1.1, and
    /// the upgrades hyper serves).
    pub fn current() -> Option<Arc<StallClock>> {
        CLOCK.try_with(Arc::clone).ok()
    }

    /// hyper asks the body for its next frame.
    fn asked(&self) {
        self.held.store(false, Ordering::Relaxed);
    }

    /// The body handed hyper a data frame.
    fn handed(&self) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        self.held.store(true, Ordering::Relaxed);
    }
}

/// The most of a data frame handed to hyper at once on a watched stream. h2 takes a
/// whole frame into its send buffer once the window has any room, and hyper asks for
/// the next one only when the window is past it: so progress is seen per slice, and a
/// client that reads a large frame (a cached object in one piece) slowly but steadily
/// shows progress at least every `SLICE` bytes (h2's default frame size).
pub const SLICE: usize = 16 * 1024;

/// A response body's side of its stream's clock, with what is left of a frame being
/// handed on in slices.
#[derive(Debug)]
pub struct BodyWatch {
    clock: Arc<StallClock>,
    rest: Bytes,
}

impl BodyWatch {
    pub fn new(clock: Arc<StallClock>) -> Self {
        BodyWatch {
            clock,
            rest: Bytes::new(),
        }
    }

    /// hyper asks for the next frame: the next slice of the last one, if any is left.
    pub fn asked(&mut self) -> Option<Bytes> {
        self.clock.asked();
        if self.rest.is_empty() {
            return None;
        }
        let n = self.rest.len().min(SLICE);
        Some(self.rest.split_to(n))
    }

    /// The first slice of `data` (a frame of the body), keeping the rest for later.
    pub fn slice(&mut self, mut data: Bytes) -> Bytes {
        if data.len() > SLICE {
            self.rest = data.split_off(SLICE);
        }
        data
    }

    /// A slice is handed to hyper.
    pub fn handed(&self) {
        self.clock.handed();
    }

    /// Bytes taken from the body and not handed on yet.
    pub fn held_back(&self) -> usize {
        self.rest.len()
    }
}

/// hyper's executor for the HTTP/2 streams of one connection: each runs in its own
/// task, as with `TokioExecutor`, under a send timeout of `send_timeout`.
#[derive(Debug, Clone, Copy)]
pub struct StreamExec {
    pub send_timeout: Duration,
    /// The client, for the log.
    pub peer: SocketAddr,
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        tokio::spawn(watch(stream, *self));
    }
}

/// Runs `stream` (hyper's future for one stream) until it ends, or until it has held
/// a frame of its response for the send timeout without taking another.
async fn watch<F: Future<Output = ()>>(stream: F, exec: StreamExec) {
    let send_timeout = exec.send_timeout;
    let clock = Arc::new(StallClock::default());
    let stream = CLOCK.scope(Arc::clone(&clock), stream);
    let mut stream = std::pin::pin!(stream);
    // Made the first time hyper holds a frame: most streams never wait.
    let mut timer: Option<(u64, Pin<Box<Sleep>>)> = None;
    let stalled = poll_fn(|cx| {
        if stream.as_mut().poll(cx).is_ready() {
            return Poll::Ready(false);
        }
        if !clock.held.load(Ordering::Relaxed) {
            // The body is being read: the upstream's pace, not the client's.
            return Poll::Pending;
        }
        let frames = clock.frames.load(Ordering::Relaxed);
        let sleep = match &mut timer {
            Some((seen, sleep)) => {
                if *seen != frames {
                    // Progress since the timer was set: it counts from now.
                    *seen = frames;
                    sleep.as_mut().reset(Instant::now() + send_timeout);
                }
                sleep
            }
            None => {
                let (_, sleep) = timer.insert((frames, Box::pin(tokio::time::sleep(send_timeout))));
                sleep
            }
        };
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(true);
        }
        Poll::Pending
    })
    .await;
    if stalled {
        tracing::debug!(target: "proxycache::server", peer = %exec.peer, "the client read nothing of an HTTP/2 response for server.timeouts.idle; resetting the stream");
    }
    // Dropping the stream (here, when it stalled) resets it and ends its response.
}

#[cfg(test)]
mod tests {
    use super::{BodyWatch, StallClock, SLICE};
    use bytes::Bytes;
    use std::sync::Arc;

    #[test]
    fn large_frames_are_handed_on_in_slices() {
        let mut w = BodyWatch::new(Arc::new(StallClock::default()));
        assert_eq!(w.asked(), None);
        let first = w.slice(Bytes::from(vec![7u8; 2 * SLICE + 100]));
        assert_eq!(first.len(), SLICE);
        assert_eq!(w.held_back(), SLICE + 100);
        assert_eq!(w.asked().map(|b| b.len()), Some(SLICE));
        assert_eq!(w.asked().map(|b| b.len()), Some(100));
        assert_eq!(w.asked(), None);
        assert_eq!(w.slice(Bytes::from_static(b"small")).len(), 5);
        assert_eq!(w.held_back(), 0);
    }
}
