//! Stream adapters.
//!
//! - [`Rewind`]: a stream with bytes put back in front: the proxy reads the first bytes of a
//!   connection to tell TLS from HTTP, then hands the whole stream (those bytes included) to the
//!   right layer.
//! - [`ReadAhead`]: large socket reads under a TLS layer that asks for small ones.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug)]
pub struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// How much [`ReadAhead`] asks the socket for at once: two full TLS records and then some.
pub const READ_AHEAD: usize = 32 * 1024;

/// Reads from the inner stream in chunks of [`READ_AHEAD`] bytes and serves smaller reads from
/// them. Writes pass straight through.
///
/// rustls reads at most 4 KiB per call, so a TLS stream that moves a large body costs one
/// `recv` system call per 4 KiB; under this adapter it costs one per 32 KiB (or per whatever
/// the socket had). The buffer is allocated while data flows and freed as soon as the inner
/// stream has nothing to read, so an idle connection holds none.
#[derive(Debug)]
pub struct ReadAhead<T> {
    inner: T,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl<T> ReadAhead<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            start: 0,
            end: 0,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadAhead<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.start == this.end {
            if out.remaining() >= READ_AHEAD {
                // The caller's buffer is as large as ours: no point copying.
                this.buf = Vec::new();
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            if this.buf.is_empty() {
                this.buf = vec![0; READ_AHEAD];
            }
            let mut fill = ReadBuf::new(&mut this.buf);
            match Pin::new(&mut this.inner).poll_read(cx, &mut fill) {
                Poll::Ready(Ok(())) => {
                    this.start = 0;
                    this.end = fill.filled().len();
                    if this.end == 0 {
                        // End of stream: report it as the inner stream did.
                        this.buf = Vec::new();
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Err(e)) => {
                    this.buf = Vec::new();
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => {
                    // Idle: give the memory back until data arrives.
                    this.buf = Vec::new();
                    return Poll::Pending;
                }
            }
        }
        let n = (this.end - this.start).min(out.remaining());
        out.put_slice(&this.buf[this.start..this.start + n]);
        this.start += n;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadAhead<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn prefix_is_read_first_then_the_stream() {
        let inner: &[u8] = b" world";
        let mut r = Rewind::new(Bytes::from_static(b"hello"), inner);
        let mut s = String::new();
        r.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "hello world");
    }

    #[tokio::test]
    async fn read_ahead_serves_small_reads_from_one_large_read_and_frees_when_idle() {
        let (mut writer, reader) = tokio::io::duplex(256 * 1024);
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        tokio::io::AsyncWriteExt::write_all(&mut writer, &data)
            .await
            .unwrap();
        let mut r = ReadAhead::new(reader);
        let mut got = Vec::new();
        let mut small = [0u8; 4096];
        while got.len() < data.len() {
            let n = r.read(&mut small).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&small[..n]);
            // Served from one buffer of READ_AHEAD bytes at most.
            assert!(r.buf.len() <= READ_AHEAD);
        }
        assert_eq!(got, data);
        // Nothing left to read: the next read is pending and the buffer is given back.
        let pending =
            tokio::time::timeout(std::time::Duration::from_millis(20), r.read(&mut small));
        assert!(pending.await.is_err());
        assert_eq!(r.buf.capacity(), 0);
        // End of stream is passed on.
        drop(writer);
        assert_eq!(r.read(&mut small).await.unwrap(), 0);
        // A read as large as the buffer goes straight to the stream.
        let (mut w2, r2) = tokio::io::duplex(256 * 1024);
        tokio::io::AsyncWriteExt::write_all(&mut w2, &data[..50_000])
            .await
            .unwrap();
        let mut r2 = ReadAhead::new(r2);
        let mut big = vec![0u8; READ_AHEAD];
        let n = r2.read(&mut big).await.unwrap();
        assert_eq!(&big[..n], &data[..n]);
        assert_eq!(r2.buf.capacity(), 0);
    }
}
