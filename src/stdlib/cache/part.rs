//! The body of a fill's own answer when its client asked for less than the whole
//! response: the bytes of one range cut from the upstream's body as it streams, and
//! the rest of a body the cache is still copying read to its end in the background.
//!
//! The request that fills a key asks the upstream for the whole response (so it can
//! be stored); its client still gets the `206` or `304` it asked for. When the body is
//! being copied into the cache, the client's part may end before the body does: what
//! is left is read by a task of its own, so the entry is stored all the same (nginx
//! goes on reading an upstream response it caches too).
//!
//! Must not touch: which answer to give (`serve`), the entry (`store`).

use std::ops::Range;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::http::body::BoxError;
use crate::http::ProxyBody;

/// Reads `body` to its end on a task of its own (without a runtime, drops it): the
/// cache's copy of it then completes with nobody waiting for the bytes.
pub fn finish_in_background(body: ProxyBody) {
    if body.is_end_stream() {
        return;
    }
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(async move {
            let mut body = body;
            while let Some(frame) = body.frame().await {
                if frame.is_err() {
                    break;
                }
            }
        });
    }
}

/// The bytes `range` of the body it wraps (offsets into the whole body).
pub struct PartBody {
    inner: Option<ProxyBody>,
    range: Range<u64>,
    /// The offset of the inner body's next byte.
    at: u64,
    /// The inner body is being copied into the cache: once the part is out, its rest
    /// is read in the background ([`finish_in_background`]) rather than dropped.
    finish_rest: bool,
}

impl PartBody {
    pub fn new(inner: ProxyBody, range: Range<usize>, finish_rest: bool) -> Self {
        PartBody {
            inner: Some(inner),
            range: range.start as u64..range.end as u64,
            at: 0,
            finish_rest,
        }
    }

    /// The part is out: let the inner body go (read on in the background, or dropped).
    fn release(&mut self) {
        if let Some(rest) = self.inner.take() {
            if self.finish_rest {
                finish_in_background(rest);
            }
        }
    }
}

impl Body for PartBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(inner) = this.inner.as_mut() else {
                return Poll::Ready(None);
            };
            let frame = match ready!(Pin::new(inner).poll_frame(cx)) {
                None => {
                    this.inner = None;
                    return Poll::Ready(None);
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(frame)) => frame,
            };
            // Trailers belong to the whole body, not to a part of it.
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let start = this.at;
            let end = start + data.len() as u64;
            this.at = end;
            let (lo, hi) = (this.range.start.max(start), this.range.end.min(end));
            if end >= this.range.end {
                this.release();
            }
            if lo < hi {
                let piece = data.slice((lo - start) as usize..(hi - start) as usize);
                return Poll::Ready(Some(Ok(Frame::data(piece))));
            }
            if this.inner.is_none() {
                return Poll::Ready(None);
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let left = match self.inner {
            Some(_) => self.range.end - self.at.clamp(self.range.start, self.range.end),
            None => 0,
        };
        SizeHint::with_exact(left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The part of a body that comes in `chunks`.
    async fn part_of(chunks: &[&'static str], range: Range<usize>) -> String {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        let inner = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let body = PartBody::new(ProxyBody::Boxed(inner.boxed()), range, false);
        assert_eq!(
            body.size_hint().exact(),
            Some(body.range.end - body.range.start)
        );
        let bytes = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn a_part_is_cut_across_chunks() {
        assert_eq!(part_of(&["0123", "4567", "89"], 0..4).await, "0123");
        assert_eq!(part_of(&["0123", "4567", "89"], 2..7).await, "23456");
        assert_eq!(part_of(&["0123", "4567", "89"], 7..10).await, "789");
        assert_eq!(part_of(&["0123456789"], 3..4).await, "3");
        assert_eq!(part_of(&["", "01", "", "23"], 1..3).await, "12");
    }
}
