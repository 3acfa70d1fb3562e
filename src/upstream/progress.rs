//! How far a request body that hyper sends (an `http2 = true` set's) has got, so that
//! the waits for the response can tell, when they run out, whose turn it was: as
//! `h1` tells it for its own connections, a body waiting for the client is the
//! client's slowness (408), one the connection is not taking any more is the
//! server's (504), and once it is all sent the wait is for the server's answer.
//!
//! Owns: [`Progress`] (shared with the connection task that sends the body) and
//! [`Watched`], the body wrapper that records it. Must not touch: the timeouts
//! themselves (`client`).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use crate::http::body::BoxError;
use crate::http::ProxyBody;

/// Whose move it is in sending a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// The body was asked for more and has none yet: the client's.
    Client,
    /// The last frame went to the connection, which has not asked for another: it
    /// waits to write (the server's flow-control window, or its socket, is full).
    Server,
    /// The whole body has been handed over (or failed).
    Done,
}

impl Turn {
    fn from_u8(v: u8) -> Turn {
        match v {
            0 => Turn::Client,
            1 => Turn::Server,
            _ => Turn::Done,
        }
    }
}

/// A request body's progress, written by whoever polls it and read by the waits.
#[derive(Debug)]
pub struct Progress {
    start: Instant,
    /// Nanoseconds from `start` to the body's last progress (a frame, or its end).
    last: AtomicU64,
    turn: AtomicU8,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            start: Instant::now(),
            last: AtomicU64::new(0),
            turn: AtomicU8::new(Turn::Client as u8),
        }
    }

    /// When the body last moved (when it was made, before its first frame).
    pub fn last(&self) -> Instant {
        let nanos = self.last.load(Ordering::Acquire);
        self.start
            .checked_add(Duration::from_nanos(nanos))
            .unwrap_or(self.start)
    }

    /// Whose move it is now.
    pub fn turn(&self) -> Turn {
        Turn::from_u8(self.turn.load(Ordering::Acquire))
    }

    fn record(&self, turn: Turn, moved: bool) {
        if moved {
            let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.last.store(nanos, Ordering::Release);
        }
        self.turn.store(turn as u8, Ordering::Release);
    }
}

/// `body` wrapped so that its progress is recorded, with the record; `None` for a
/// body that is already over (nothing to send, nothing to watch).
pub fn watch(body: ProxyBody) -> (ProxyBody, Option<Arc<Progress>>) {
    if body.is_end_stream() {
        return (body, None);
    }
    let progress = Arc::new(Progress::new());
    let watched = Watched {
        inner: body,
        progress: Arc::clone(&progress),
    };
    (
        ProxyBody::Boxed(http_body_util::BodyExt::boxed(watched)),
        Some(progress),
    )
}

/// A request body that records its [`Progress`] as it is polled.
struct Watched {
    inner: ProxyBody,
    progress: Arc<Progress>,
}

impl Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Pending => this.progress.record(Turn::Client, false),
            Poll::Ready(Some(Ok(_))) => {
                // (hyper asks no more of a body that says it has ended.)
                let turn = if this.inner.is_end_stream() {
                    Turn::Done
                } else {
                    Turn::Server
                };
                this.progress.record(turn, true);
            }
            Poll::Ready(None) => this.progress.record(Turn::Done, true),
            // The exchange fails with the body's own error.
            Poll::Ready(Some(Err(_))) => this.progress.record(Turn::Done, false),
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
