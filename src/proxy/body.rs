//! Body wrappers: byte counting, the `max_tx_bytes` cut for bodies without a length, and the
//! request-log record written when a response body ends.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;

use crate::request_log::{Record, RequestLog};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every request and response the proxy produces.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// A body with fixed contents.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// The request body would exceed `max_tx_bytes`; the upstream request is cut here.
#[derive(Debug, thiserror::Error)]
#[error("request cut after {limit} body bytes: max_tx_bytes reached")]
pub struct TxLimitReached {
    pub limit: u64,
}

/// Counts the bytes of a request body as they go upstream and, with a limit, lets exactly
/// `limit` body bytes through before failing (which makes hyper abort the upstream request).
#[derive(Debug)]
pub struct CountedBody<B> {
    inner: B,
    sent: Arc<AtomicU64>,
    remaining: Option<u64>,
    limit: u64,
    cut: Cut,
}

/// Where a limited body is in being cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    No,
    /// The last allowed bytes went out; pause once so hyper flushes them before the abort.
    Flushing,
    Done,
}

impl<B> CountedBody<B> {
    pub fn new(inner: B, sent: Arc<AtomicU64>, limit: Option<u64>) -> Self {
        Self {
            inner,
            sent,
            remaining: limit,
            limit: limit.unwrap_or(0),
            cut: Cut::No,
        }
    }
}

impl<B> Body for CountedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match this.cut {
            Cut::No => {}
            Cut::Flushing => {
                // hyper flushes its write buffer when the body is pending, and drops it when
                // the body fails: returning Pending once (and waking at once) gets every
                // allowed byte to the upstream before the request is aborted.
                this.cut = Cut::Done;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Cut::Done => {
                return Poll::Ready(Some(Err(Box::new(TxLimitReached { limit: this.limit }))));
            }
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Some(Ok(frame))) => {
                let Ok(mut data) = frame.into_data() else {
                    // Trailers carry no body bytes; forward nothing (trailers are hop-specific
                    // in practice and would escape the byte limit).
                    return Poll::Ready(None);
                };
                if let Some(remaining) = this.remaining.as_mut() {
                    let len = data.len() as u64;
                    if len > *remaining {
                        data.truncate(*remaining as usize);
                        this.cut = Cut::Flushing;
                        *remaining = 0;
                        if data.is_empty() {
                            this.cut = Cut::Done;
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                    } else {
                        *remaining -= len;
                    }
                }
                this.sent.fetch_add(data.len() as u64, Ordering::Relaxed);
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.cut == Cut::No && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        if let Some(remaining) = self.remaining {
            // Never promise more than we will send.
            if hint.upper().is_none_or(|u| u > remaining) {
                hint = SizeHint::new();
            }
        }
        hint
    }
}

/// What is needed to write the log record once the response has been delivered.
#[derive(Debug)]
pub struct Completion {
    pub log: RequestLog,
    pub record: Record,
    pub started: Instant,
    /// Head bytes plus request-body bytes actually sent upstream.
    pub head_bytes: u64,
    pub body_sent: Arc<AtomicU64>,
}

impl Completion {
    fn finish(self, bytes_down: u64) {
        let mut record = self.record;
        record.bytes_up = self.head_bytes + self.body_sent.load(Ordering::Relaxed);
        record.bytes_down = bytes_down;
        record.duration_ms = self.started.elapsed().as_millis() as u64;
        self.log.record(record);
    }
}

/// A response body that counts bytes and writes the request's log record when it ends (or is
/// dropped, e.g. when the client goes away mid-download).
#[derive(Debug)]
pub struct LoggedBody<B> {
    inner: B,
    received: u64,
    completion: Option<Completion>,
}

impl<B> LoggedBody<B> {
    /// `completion` is `None` when there is no request log to write to.
    pub fn new(inner: B, completion: Option<Completion>) -> Self {
        Self {
            inner,
            received: 0,
            completion,
        }
    }

    fn finish(&mut self) {
        if let Some(c) = self.completion.take() {
            c.finish(self.received);
        }
    }
}

impl<B> Body for LoggedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for LoggedBody<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use http_body_util::StreamBody;

    fn chunks(parts: &[&'static str]) -> BoxBody<Bytes, BoxError> {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(stream::iter(frames)).boxed()
    }

    async fn drain(body: impl Body<Data = Bytes, Error = BoxError> + Unpin) -> (Vec<u8>, bool) {
        let mut body = body;
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => out.extend_from_slice(&f.into_data().unwrap()),
                Err(_) => return (out, true),
            }
        }
        (out, false)
    }

    #[tokio::test]
    async fn counted_body_without_limit_passes_everything_and_counts() {
        let sent = Arc::new(AtomicU64::new(0));
        let (bytes, failed) = drain(CountedBody::new(
            chunks(&["abc", "defg"]),
            sent.clone(),
            None,
        ))
        .await;
        assert_eq!(bytes, b"abcdefg");
        assert!(!failed);
        assert_eq!(sent.load(Ordering::Relaxed), 7);
    }

    #[tokio::test]
    async fn counted_body_cuts_at_exactly_the_limit_across_chunks() {
        let sent = Arc::new(AtomicU64::new(0));
        let (bytes, failed) = drain(CountedBody::new(
            chunks(&["abc", "defg", "hij"]),
            sent.clone(),
            Some(5),
        ))
        .await;
        assert_eq!(bytes, b"abcde");
        assert!(
            failed,
            "the body must end in an error so the upstream request is aborted"
        );
        assert_eq!(sent.load(Ordering::Relaxed), 5);
    }

    #[tokio::test]
    async fn counted_body_at_limit_boundary_is_not_cut_when_it_fits() {
        let sent = Arc::new(AtomicU64::new(0));
        let (bytes, failed) = drain(CountedBody::new(chunks(&["abc", "de"]), sent, Some(5))).await;
        assert_eq!(bytes, b"abcde");
        assert!(!failed);
    }

    #[tokio::test]
    async fn zero_limit_sends_nothing() {
        let sent = Arc::new(AtomicU64::new(0));
        let (bytes, failed) = drain(CountedBody::new(chunks(&["abc"]), sent, Some(0))).await;
        assert!(bytes.is_empty());
        assert!(failed);
    }
}
