//! Responses from bound hosts: a real value the upstream sends back (an OAuth exchange, an API
//! that echoes the credential it received) is replaced by its placeholder before the response
//! reaches the command, so the value does not enter the jail that way either.
//!
//! Exact byte matches only, in header values and in the body (streamed: the last
//! `longest value − 1` bytes of each chunk are held back until the next one shows whether a
//! value continues there). A compressed or otherwise encoded echo is not recognised.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use aho_corasick::{AhoCorasick, MatchKind};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};

use super::Entry;
use crate::proxy::body::BoxError;

/// Finds real values and knows each one's placeholder.
pub struct Scrubber {
    finder: AhoCorasick,
    placeholders: Vec<Bytes>,
    keep: usize,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrubber")
            .field("values", &self.placeholders.len())
            .finish()
    }
}

impl Scrubber {
    pub(super) fn from_entries(entries: &[Entry]) -> Option<Arc<Self>> {
        let values: Vec<&[u8]> = entries.iter().map(|e| e.value.as_bytes()).collect();
        let finder = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&values)
            .ok()?;
        let keep = values
            .iter()
            .map(|v| v.len())
            .max()
            .unwrap_or(1)
            .saturating_sub(1);
        let placeholders = entries
            .iter()
            .map(|e| Bytes::copy_from_slice(e.placeholder.as_bytes()))
            .collect();
        Some(Arc::new(Self {
            finder,
            placeholders,
            keep,
        }))
    }

    /// Replaces real values in header values. Returns whether anything was replaced.
    pub fn headers(&self, headers: &mut HeaderMap) -> bool {
        let mut changed = false;
        for value in headers.values_mut() {
            let bytes = value.as_bytes();
            if self.finder.find(bytes).is_none() {
                continue;
            }
            let mut out = Vec::with_capacity(bytes.len());
            self.replace_into(bytes, &mut out);
            if let Ok(new) = HeaderValue::from_bytes(&out) {
                *value = new;
                changed = true;
            }
        }
        changed
    }

    fn replace_into(&self, hay: &[u8], out: &mut Vec<u8>) {
        let mut last = 0;
        for m in self.finder.find_iter(hay) {
            out.extend_from_slice(&hay[last..m.start()]);
            out.extend_from_slice(&self.placeholders[m.pattern().as_usize()]);
            last = m.end();
        }
        out.extend_from_slice(&hay[last..]);
    }

    /// Processes `buf` (held-back bytes plus a new chunk): returns what may be emitted and
    /// leaves in `buf` what must wait for more data.
    fn step(&self, buf: &mut BytesMut, end_of_stream: bool) -> Bytes {
        let emit_limit = if end_of_stream {
            buf.len()
        } else {
            buf.len().saturating_sub(self.keep)
        };
        let mut out = Vec::with_capacity(buf.len());
        let mut cut = 0;
        for m in self.finder.find_iter(&buf[..]) {
            // A match that starts in the held-back region is found again next time, whole.
            if m.start() >= emit_limit {
                break;
            }
            out.extend_from_slice(&buf[cut..m.start()]);
            out.extend_from_slice(&self.placeholders[m.pattern().as_usize()]);
            cut = m.end();
        }
        let cut_at = emit_limit.max(cut);
        out.extend_from_slice(&buf[cut..cut_at]);
        let _ = buf.split_to(cut_at);
        Bytes::from(out)
    }
}

/// A response body with real values replaced by placeholders.
#[derive(Debug)]
pub struct ScrubbedBody<B> {
    inner: B,
    scrubber: Arc<Scrubber>,
    held: BytesMut,
    done: bool,
}

impl<B> ScrubbedBody<B> {
    pub fn new(inner: B, scrubber: Arc<Scrubber>) -> Self {
        Self {
            inner,
            scrubber,
            held: BytesMut::new(),
            done: false,
        }
    }
}

impl<B> Body for ScrubbedBody<B>
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
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers are dropped like every forwarded trailer.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    this.held.extend_from_slice(&data);
                    let out = this.scrubber.step(&mut this.held, false);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
                Poll::Ready(None) => {
                    this.done = true;
                    let out = this.scrubber.step(&mut this.held, true);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        // Replacing a value changes the length.
        SizeHint::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HostPattern, SecretSpec};
    use crate::secrets::Secrets;
    use http_body_util::{BodyExt, StreamBody};
    use zeroize::Zeroizing;

    const VALUE: &str = "ghp_EchoedBack0123456789";

    fn secrets() -> Arc<Secrets> {
        let specs = [SecretSpec {
            var: "TOKEN".into(),
            hosts: vec![HostPattern::parse("api.test").unwrap()],
            value: Zeroizing::new(VALUE.into()),
        }];
        Secrets::from_config(&specs).unwrap().unwrap()
    }

    async fn scrub_chunks(scrubber: Arc<Scrubber>, chunks: Vec<&'static [u8]>) -> Vec<u8> {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .into_iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        let body = ScrubbedBody::new(
            StreamBody::new(futures_util::stream::iter(frames)),
            scrubber,
        );
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_value_split_anywhere_across_chunks_is_replaced() {
        let s = secrets();
        let placeholder = s.placeholder("TOKEN").unwrap().to_owned();
        let scrubber = s.scrubber().unwrap().clone();
        let text = format!("{{\"access_token\":\"{VALUE}\",\"again\":\"{VALUE}\"}}");
        let expected = text.replace(VALUE, &placeholder);
        let leaked: &'static str = Box::leak(text.into_boxed_str());
        for split in 1..leaked.len() {
            let (a, b) = leaked.as_bytes().split_at(split);
            let out = scrub_chunks(scrubber.clone(), vec![a, b]).await;
            assert_eq!(
                String::from_utf8(out).unwrap(),
                expected,
                "split at {split}"
            );
        }
    }

    #[tokio::test]
    async fn bodies_without_values_are_unchanged() {
        let scrubber = secrets().scrubber().unwrap().clone();
        let out = scrub_chunks(scrubber, vec![b"plain ", b"text ghp_", b"Echoed"]).await;
        assert_eq!(out, b"plain text ghp_Echoed");
    }

    #[test]
    fn header_values_are_scrubbed() {
        let s = secrets();
        let scrubber = s.scrubber().unwrap().clone();
        let mut h = HeaderMap::new();
        h.insert("x-token", format!("Bearer {VALUE}").parse().unwrap());
        h.insert("x-other", "fine".parse().unwrap());
        assert!(scrubber.headers(&mut h));
        assert_eq!(
            h["x-token"],
            format!("Bearer {}", s.placeholder("TOKEN").unwrap())
        );
        assert_eq!(h["x-other"], "fine");
    }
}
