//! Request bodies when secrets are configured: scanned before they are forwarded, and
//! substituted for bound hosts.
//!
//! Phase 1 ([`prepare`]): the body is read and scanned, and nothing is sent upstream, until it
//! ends, reaches [`BUFFER_LIMIT`] (1 MiB), or the client pauses for [`IDLE_FLUSH`] (a client
//! that waits for the response before it sends more: streaming RPCs). A leak found here denies
//! the request before the upstream is contacted. For a bound host the placeholders in this
//! part are replaced, and a `Content-Length` is corrected by the size difference.
//!
//! Phase 2 ([`ScannedBody`]), only for what comes after: streamed, without substitution, but
//! still scanned chunk by chunk before it is released. The last
//! [`Matcher::hold_back`](super::scan::Matcher::hold_back) bytes
//! are held until the next chunk has been scanned (or the client pauses), so a secret split
//! across chunks is seen whole before any of its bytes leave. A leak found here aborts the
//! upstream request (the upstream receives an incomplete request, never the secret) and the
//! client gets the `secret_leak` denial when no response has started yet.
//!
//! Why stream instead of denying bodies we cannot buffer: uploads larger than 1 MiB (git push,
//! package uploads) must keep working with secrets configured, and scanning every byte before
//! it is released keeps the guarantee that matters: no byte of a secret reaches an upstream
//! that may not have it. What phase 2 gives up: the upstream may see the start of a request
//! that is then aborted, and a value split by a pause of [`IDLE_FLUSH`] or spread over more
//! than the hold-back (padding it with line breaks) may have its first part released.

use std::collections::VecDeque;
use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, header};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Either};

use futures_util::FutureExt as _;

use super::scan::{Case, Hit, StreamScanner};
use super::substitute::Form;
use super::{Leak, Place, Policy, Secrets};
use crate::proxy::body::{BoxError, ProxyBody, full};

/// Largest part of a body read before anything is forwarded; also the part substituted.
pub const BUFFER_LIMIT: usize = 1 << 20;

/// A client pause that ends phase 1 (and releases held bytes in phase 2).
pub const IDLE_FLUSH: Duration = Duration::from_millis(200);

/// What to do with a request body.
#[derive(Debug)]
pub enum Prepared {
    /// Forward this body. With `content_length`, set `Content-Length` to it.
    Forward {
        body: ProxyBody,
        content_length: Option<u64>,
    },
    /// Deny: it carries a secret where it may not go. Nothing was sent upstream.
    Leak(Leak),
    /// The client's body failed before it was forwarded (aborted upload).
    ClientError(BoxError),
}

/// What the proxy sends upstream, or why it sends nothing.
#[derive(Debug)]
pub enum Outgoing<B> {
    /// The client's body untouched (none, or no secret configured), or the prepared one.
    Forward(Either<B, ProxyBody>),
    /// Deny: the body carries a secret where it may not go. Nothing was sent upstream.
    Leak(Leak),
    /// The client's body failed before it was forwarded (aborted upload).
    ClientError(BoxError),
}

/// The proxy's hook for an allowed request: substitutes placeholders in `headers` (for a
/// bound host), then reads, scans and substitutes the start of `body` with [`prepare`] and
/// fixes `Content-Length`. A request without a body is forwarded as is.
pub async fn prepare_request<B>(
    secrets: &Arc<Secrets>,
    policy: &Policy,
    headers: &mut HeaderMap,
    body: B,
) -> Outgoing<B>
where
    B: Body<Data = Bytes> + Unpin + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    secrets.substitute_headers(policy, headers);
    if body.is_end_stream() {
        return Outgoing::Forward(Either::Left(body));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match prepare(secrets, policy, body, declared, content_type.as_deref()).await {
        Prepared::Forward {
            body,
            content_length,
        } => {
            if let Some(len) = content_length {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
            Outgoing::Forward(Either::Right(body))
        }
        Prepared::Leak(leak) => Outgoing::Leak(leak),
        Prepared::ClientError(e) => Outgoing::ClientError(e),
    }
}

/// The upstream request was aborted because its body carried a secret (phase 2).
#[derive(Debug, thiserror::Error)]
#[error("request body cut before a secret was sent: {0}")]
pub struct LeakCut(pub String);

/// Reads, scans and, for a bound host, substitutes the start of `body` (phase 1); returns the
/// body to forward. `declared` is the request's `Content-Length`, `content_type` its type.
pub async fn prepare<B>(
    secrets: &Arc<Secrets>,
    policy: &Policy,
    mut body: B,
    declared: Option<u64>,
    content_type: Option<&str>,
) -> Prepared
where
    B: Body<Data = Bytes> + Unpin + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let matcher = secrets.matcher();
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0;
    let complete = loop {
        if body.is_end_stream() {
            break true;
        }
        if len >= BUFFER_LIMIT {
            break false;
        }
        // A small body usually arrived with the head; hyper hands it over from the
        // connection's task once asked. Ask, let that task run, and only then arm a timer.
        let mut next = body.frame().now_or_never();
        if next.is_none() {
            tokio::task::yield_now().await;
            next = body.frame().now_or_never();
        }
        let next = match next {
            Some(next) => next,
            None => match tokio::time::timeout(IDLE_FLUSH, body.frame()).await {
                Ok(next) => next,
                Err(_) => break false,
            },
        };
        let frame = match next {
            None => break true,
            Some(Err(e)) => return Prepared::ClientError(e.into()),
            Some(Ok(frame)) => frame,
        };
        // Trailers end the body; like every forwarded body, we do not pass them on.
        let Ok(data) = frame.into_data() else {
            break true;
        };
        len += data.len();
        chunks.push(data);
    };
    let buffer = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => {
            let mut joined = BytesMut::with_capacity(len);
            for chunk in &chunks {
                joined.extend_from_slice(chunk);
            }
            joined.freeze()
        }
    };
    // Scanned as one buffer: a value split across chunks is whole here.
    let mut verdict = verdict(policy);
    let mut scanner = StreamScanner::new();
    let found = if complete {
        matcher.scan_decoding(&buffer, Case::Exact, &mut verdict)
    } else {
        scanner.feed(matcher, &buffer, &mut verdict)
    };
    if let ControlFlow::Break(hit) = found {
        return Prepared::Leak(secrets.leak(hit, Place::Body, policy));
    }
    let original_len = buffer.len() as u64;
    let prefix =
        match secrets.substitute_bytes(policy, &buffer, Form::for_content_type(content_type)) {
            Some(substituted) => Bytes::from(substituted),
            None => buffer,
        };
    if complete {
        let len = prefix.len() as u64;
        return Prepared::Forward {
            body: full(prefix),
            content_length: Some(len),
        };
    }
    // The declared length changes by what substitution changed in the prefix.
    let content_length = declared.map(|d| (d + prefix.len() as u64).saturating_sub(original_len));
    Prepared::Forward {
        body: ScannedBody::new(secrets.clone(), policy.clone(), scanner, prefix, body).boxed(),
        content_length,
    }
}

/// Stops at the first hit `policy` does not permit in a body.
fn verdict(policy: &Policy) -> impl FnMut(Hit) -> ControlFlow<Hit> + '_ {
    move |hit| {
        if policy.permits(hit, Place::Body) {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(hit)
        }
    }
}

/// Phase 2: the rest of a body, scanned before it is released (see the module documentation).
pub struct ScannedBody<B> {
    secrets: Arc<Secrets>,
    policy: Policy,
    scanner: StreamScanner,
    inner: B,
    /// Scanned and releasable.
    ready: VecDeque<Bytes>,
    /// Scanned, but held until the next chunk is scanned.
    held: VecDeque<Bytes>,
    held_len: usize,
    hold: usize,
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    state: State,
    /// The denial's message, for the error the upstream request fails with.
    leak_message: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Streaming,
    /// The client's body ended; release what is held.
    Ended,
    /// A leak was found; fail once.
    Leaked,
    Done,
}

impl<B> std::fmt::Debug for ScannedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScannedBody")
            .field("held_len", &self.held_len)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<B> ScannedBody<B> {
    fn new(
        secrets: Arc<Secrets>,
        policy: Policy,
        scanner: StreamScanner,
        prefix: Bytes,
        inner: B,
    ) -> Self {
        let hold = secrets.matcher().hold_back();
        let mut body = Self {
            secrets,
            policy,
            scanner,
            inner,
            ready: VecDeque::new(),
            held: VecDeque::new(),
            held_len: 0,
            hold,
            idle: None,
            state: State::Streaming,
            leak_message: None,
        };
        body.hold_and_release(prefix);
        body
    }

    /// Holds `data`, then releases everything but the last `hold` bytes.
    fn hold_and_release(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.held_len += data.len();
            self.held.push_back(data);
        }
        while self.held_len > self.hold {
            let Some(mut front) = self.held.pop_front() else {
                break;
            };
            let excess = self.held_len - self.hold;
            if front.len() > excess {
                let rest = front.split_off(excess);
                self.held.push_front(rest);
            }
            self.held_len -= front.len();
            self.ready.push_back(front);
        }
    }

    fn release_all(&mut self) {
        self.ready.extend(self.held.drain(..));
        self.held_len = 0;
    }

    fn leaked(&mut self, hit: Hit) {
        let leak = self.secrets.leak(hit, Place::Body, &self.policy);
        tracing::warn!("{leak}; the upstream request was aborted");
        self.held.clear();
        self.ready.clear();
        self.held_len = 0;
        self.state = State::Leaked;
        self.leak_message = Some(leak.to_string());
    }
}

impl<B> Body for ScannedBody<B>
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
        loop {
            if let Some(data) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            match this.state {
                State::Done => return Poll::Ready(None),
                State::Leaked => {
                    this.state = State::Done;
                    let message = this.leak_message.take().unwrap_or_default();
                    return Poll::Ready(Some(Err(Box::new(LeakCut(message)))));
                }
                State::Ended => {
                    if this.held.is_empty() {
                        this.state = State::Done;
                    } else {
                        this.release_all();
                    }
                    continue;
                }
                State::Streaming => {}
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    this.idle = None;
                    let Ok(data) = frame.into_data() else {
                        this.end();
                        continue;
                    };
                    let found = {
                        let mut verdict = verdict(&this.policy);
                        this.scanner
                            .feed(this.secrets.matcher(), &data, &mut verdict)
                    };
                    if let ControlFlow::Break(hit) = found {
                        this.leaked(hit);
                        continue;
                    }
                    this.hold_and_release(data);
                }
                Poll::Ready(None) => this.end(),
                Poll::Ready(Some(Err(e))) => {
                    this.state = State::Done;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Pending => {
                    if this.held.is_empty() {
                        return Poll::Pending;
                    }
                    // The client paused with bytes held: release them after IDLE_FLUSH.
                    let idle = this
                        .idle
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(IDLE_FLUSH)));
                    match idle.as_mut().poll(cx) {
                        Poll::Ready(()) => {
                            this.idle = None;
                            this.release_all();
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done && self.ready.is_empty()
    }
}

impl<B> ScannedBody<B> {
    /// The client's body ended: scan what unfinished escapes complete, then release the rest.
    fn end(&mut self) {
        let found = {
            let mut verdict = verdict(&self.policy);
            self.scanner.finish(self.secrets.matcher(), &mut verdict)
        };
        match found {
            ControlFlow::Break(hit) => self.leaked(hit),
            ControlFlow::Continue(()) => self.state = State::Ended,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Scheme;
    use crate::secrets::tests::{VALUE, secrets};
    use futures_util::stream;
    use http_body_util::StreamBody;

    type TestBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

    fn chunks(parts: Vec<Vec<u8>>) -> TestBody {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .into_iter()
            .map(|p| Ok(Frame::data(Bytes::from(p))))
            .collect();
        StreamBody::new(stream::iter(frames)).boxed()
    }

    async fn collect(body: ProxyBody) -> Result<Vec<u8>, BoxError> {
        Ok(body.collect().await?.to_bytes().to_vec())
    }

    #[tokio::test]
    async fn small_body_to_a_bound_host_is_substituted_with_the_right_length() {
        let s = Arc::new(secrets());
        let ph = s.placeholder("TOKEN").unwrap().to_owned();
        let policy = s.policy(Scheme::Https, "api.example.test");
        let json = format!("{{\"token\": \"{ph}\"}}").into_bytes();
        let (a, b) = json.split_at(20);
        let prepared = prepare(
            &s,
            &policy,
            chunks(vec![a.to_vec(), b.to_vec()]),
            Some(json.len() as u64),
            Some("application/json"),
        )
        .await;
        let Prepared::Forward {
            body,
            content_length,
        } = prepared
        else {
            panic!("{prepared:?}");
        };
        let got = collect(body).await.unwrap();
        assert_eq!(
            String::from_utf8(got.clone()).unwrap(),
            format!("{{\"token\": \"{VALUE}\"}}")
        );
        assert_eq!(content_length, Some(got.len() as u64));
    }

    #[tokio::test]
    async fn a_value_split_across_chunks_to_another_host_is_a_leak() {
        let s = Arc::new(secrets());
        let policy = s.policy(Scheme::Https, "elsewhere.test");
        let body = format!("data={VALUE}").into_bytes();
        let (a, b) = body.split_at(12);
        let prepared = prepare(
            &s,
            &policy,
            chunks(vec![a.to_vec(), b.to_vec()]),
            None,
            None,
        )
        .await;
        match prepared {
            Prepared::Leak(leak) => {
                assert!(leak.is_value());
                assert_eq!(leak.place(), Place::Body);
                assert!(!leak.to_string().contains(VALUE));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn beyond_the_buffer_limit_a_leak_cuts_the_stream_before_any_of_its_bytes() {
        let s = Arc::new(secrets());
        let policy = s.policy(Scheme::Https, "elsewhere.test");
        let mut parts = vec![vec![b'a'; BUFFER_LIMIT]];
        let mut tail = vec![b'b'; 1000];
        tail.extend_from_slice(&VALUE.as_bytes()[..10]);
        parts.push(tail);
        parts.push(VALUE.as_bytes()[10..].to_vec());
        parts.push(vec![b'c'; 100]);
        let prepared = prepare(&s, &policy, chunks(parts), None, None).await;
        let Prepared::Forward { mut body, .. } = prepared else {
            panic!("{prepared:?}");
        };
        let mut released = Vec::new();
        let error = loop {
            match body.frame().await {
                Some(Ok(frame)) => released.extend_from_slice(&frame.into_data().unwrap()),
                Some(Err(e)) => break e,
                None => panic!("the stream must fail"),
            }
        };
        assert!(error.downcast_ref::<LeakCut>().is_some(), "{error}");
        assert!(
            !released.windows(10).any(|w| w == &VALUE.as_bytes()[..10]),
            "no byte of the value may be released"
        );
        assert!(released.len() >= BUFFER_LIMIT - s.matcher().hold_back());
    }

    #[tokio::test]
    async fn a_large_clean_body_streams_through_unchanged() {
        let s = Arc::new(secrets());
        let policy = s.policy(Scheme::Https, "elsewhere.test");
        let parts: Vec<Vec<u8>> = (0..40u8).map(|i| vec![b'a' + i % 26; 64 * 1024]).collect();
        let expected: Vec<u8> = parts.concat();
        let prepared = prepare(
            &s,
            &policy,
            chunks(parts),
            Some(expected.len() as u64),
            None,
        )
        .await;
        let Prepared::Forward {
            body,
            content_length,
        } = prepared
        else {
            panic!("{prepared:?}");
        };
        assert_eq!(content_length, Some(expected.len() as u64));
        assert_eq!(collect(body).await.unwrap(), expected);
    }

    #[tokio::test]
    async fn a_paused_client_gets_held_bytes_released() {
        let s = Arc::new(secrets());
        let policy = s.policy(Scheme::Https, "elsewhere.test");
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let body = StreamBody::new(tokio_stream_from(rx)).boxed();
        tx.send(Ok(Frame::data(Bytes::from_static(b"first message"))))
            .await
            .unwrap();
        let prepared = prepare(&s, &policy, body, None, None).await;
        let Prepared::Forward { mut body, .. } = prepared else {
            panic!("{prepared:?}");
        };
        // Phase 1 ended on the pause; the held bytes come out after another pause.
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("held bytes are released when the client pauses")
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), "first message");
        drop(tx);
        assert!(body.frame().await.is_none());
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> {
        stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
