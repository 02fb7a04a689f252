//! One client connection: tell TLS from HTTP by the first byte, terminate TLS with a
//! certificate for the SNI (or the CONNECT target), and serve HTTP/1.1 or HTTP/2 on it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;

use super::body::{BoxError, ProxyBody};
use super::io::Rewind;
use super::{ConnCtx, Entry, Shared};
use crate::request_log::Record;
use crate::rules::DenyReason;
use crate::rules::request::normalize_host;
use crate::shutdown::Shutdown;

/// What the per-request service returns to hyper.
type ServiceFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<ProxyBody>, Infallible>> + Send>>;

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// Plain text: HTTP/1.1, or HTTP/2 with prior knowledge.
    Auto,
    Http1,
    Http2,
}

impl Shared {
    pub(super) async fn accept(
        self: Arc<Self>,
        stream: TcpStream,
        client: SocketAddr,
        entry: Entry,
        shutdown: Shutdown,
    ) {
        let original_dst = match entry {
            Entry::Jail { .. } => crate::jail::linux::original_destination(&stream),
            Entry::Proxy { .. } => None,
        };
        let ctx = ConnCtx {
            client,
            entry,
            tunnel: None,
            tls_name: None,
            port: 0,
            original_dst,
            shutdown,
        };
        self.serve_stream(stream, ctx).await;
    }

    /// Serves a stream whose protocol is not known yet: a new connection or an opened tunnel.
    pub(super) async fn serve_stream<I>(self: Arc<Self>, mut io: I, mut ctx: ConnCtx)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut first = vec![0u8; 1];
        let handshake = self.settings.timeouts.client_handshake;
        match tokio::time::timeout(handshake, io.read(&mut first)).await {
            Ok(Ok(1)) => {}
            // Closed, failed or silent: nothing was asked, nothing to log.
            _ => return,
        }
        let io = Rewind::new(Bytes::from(first.clone()), io);
        if first[0] == TLS_HANDSHAKE {
            ctx.port = ctx
                .tunnel
                .as_ref()
                .map_or(ctx.entry.transparent_port(true), |t| t.1);
            self.serve_tls(io, ctx).await;
        } else {
            ctx.port = ctx
                .tunnel
                .as_ref()
                .map_or(ctx.entry.transparent_port(false), |t| t.1);
            self.serve_http(io, ctx, Protocol::Auto).await;
        }
    }

    async fn serve_tls<I>(self: Arc<Self>, io: I, mut ctx: ConnCtx)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // The handshake runs in its own boxed future and the stream comes back boxed: the
        // client hello and handshake state are several KiB, and whatever this future holds
        // at any await point is kept for as long as the connection stays open.
        let Some((tls, name)) = Box::pin(self.tls_handshake(io, &ctx)).await else {
            return;
        };
        let protocol = if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            Protocol::Http2
        } else {
            Protocol::Http1
        };
        ctx.tls_name = Some(name);
        self.serve_http(tls, ctx, protocol).await;
    }

    /// Reads the client hello, picks the certificate name (CONNECT target, else SNI) and
    /// completes the handshake. `None` when the connection is over (logged where it counts).
    async fn tls_handshake<I>(
        &self,
        io: I,
        ctx: &ConnCtx,
    ) -> Option<(Box<tokio_rustls::server::TlsStream<I>>, String)>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let handshake = self.settings.timeouts.client_handshake;
        let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
        let start = match tokio::time::timeout(handshake, acceptor).await {
            Ok(Ok(start)) => start,
            Ok(Err(e)) => {
                self.log_unparsed(
                    ctx,
                    "",
                    DenyReason::MalformedRequest,
                    format!(
                        "TLS ClientHello refused (not TLS, or parameters we do not accept): {e}"
                    ),
                );
                return None;
            }
            Err(_) => return None,
        };
        let sni = start
            .client_hello()
            .server_name()
            .and_then(|name| normalize_host(name).ok());
        // Inside a CONNECT tunnel the certificate is for the host the client asked for; the
        // requests on it are then held to that host.
        let name = match (&ctx.tunnel, sni) {
            (Some((host, _)), _) => host.clone(),
            (None, Some(sni)) => sni,
            (None, None) => {
                self.log_unparsed(
                    ctx,
                    "",
                    DenyReason::MalformedRequest,
                    "TLS without SNI: the destination is unknown",
                );
                return None;
            }
        };
        let config = match self.interceptor.server_config(&name) {
            Ok(config) => config,
            Err(e) => {
                tracing::error!("cannot issue a certificate for `{name}`: {e}");
                self.log_unparsed(
                    ctx,
                    &name,
                    DenyReason::MalformedRequest,
                    "certificate issuance failed",
                );
                return None;
            }
        };
        match tokio::time::timeout(handshake, start.into_stream(config)).await {
            Ok(Ok(tls)) => Some((Box::new(tls), name)),
            Ok(Err(e)) => {
                // Typically the client does not trust our CA; worth a diagnostic, not a record.
                tracing::info!("TLS handshake with {} for `{name}` failed: {e}", ctx.client);
                None
            }
            Err(_) => None,
        }
    }

    async fn serve_http<I>(self: Arc<Self>, io: I, ctx: ConnCtx, protocol: Protocol)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        let mut shutdown = ctx.shutdown.clone();
        let this = self.clone();
        let service_ctx = ctx.clone();
        // Whether any request got as far as the handler: a connection that sent bytes but
        // never a request still earns one log record when it fails.
        let served = Arc::new(AtomicBool::new(false));
        let served_flag = served.clone();
        let service = service_fn(move |request| {
            served_flag.store(true, Ordering::Relaxed);
            let this = this.clone();
            let ctx = service_ctx.clone();
            // Boxed per request: hyper keeps one slot sized for the service future in every
            // connection, busy or idle. The request future is several KiB (rule engines,
            // upstream client), so an unboxed one would cost that much per idle connection;
            // boxed, the slot holds a pointer and the allocation lives only while a request
            // is in flight.
            let response: ServiceFuture =
                Box::pin(async move { Ok::<_, Infallible>(this.handle(request, ctx).await) });
            response
        });
        let timeouts = &self.settings.timeouts;
        let result = match protocol {
            Protocol::Http2 => {
                let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                builder
                    .timer(TokioTimer::new())
                    .max_header_list_size(self.settings.max_header_bytes as u32)
                    .keep_alive_interval(Some(timeouts.idle / 4))
                    .keep_alive_timeout(timeouts.client_handshake);
                let conn = builder.serve_connection(io, service);
                // Boxed: only the protocol in use is allocated, not the largest of the three
                // inside every connection's task.
                let mut conn = Box::pin(conn);
                tokio::select! {
                    r = conn.as_mut() => r,
                    () = shutdown.wait() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                }
                .map_err(BoxError::from)
            }
            Protocol::Http1 => {
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(timeouts.client_handshake)
                    .max_buf_size(self.settings.max_header_bytes.max(8192));
                let conn = builder.serve_connection(io, service).with_upgrades();
                let mut conn = Box::pin(conn);
                tokio::select! {
                    r = conn.as_mut() => r,
                    () = shutdown.wait() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                }
                .map_err(BoxError::from)
            }
            Protocol::Auto => {
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(timeouts.client_handshake)
                    .max_buf_size(self.settings.max_header_bytes.max(8192));
                builder
                    .http2()
                    .timer(TokioTimer::new())
                    .max_header_list_size(self.settings.max_header_bytes as u32);
                let conn = builder.serve_connection_with_upgrades(io, service);
                let mut conn = Box::pin(conn);
                tokio::select! {
                    r = conn.as_mut() => r,
                    () = shutdown.wait() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                }
            }
        };
        if let Err(e) = result {
            self.connection_error(&ctx, &e, served.load(Ordering::Relaxed));
        }
    }

    /// A connection that ended in an error: malformed requests and oversized heads get their
    /// one log record; hyper has already answered 400 / 431 where it could.
    /// A connection that ended in an error. Malformed requests and oversized heads get their
    /// one log record (hyper has already answered 400 / 431 where it could); so does a
    /// connection that sent bytes but never a complete request (non-HTTP traffic in a tunnel,
    /// a head that never finished), whatever the error.
    fn connection_error(&self, ctx: &ConnCtx, e: &BoxError, served: bool) {
        let hyper_error = e.downcast_ref::<hyper::Error>();
        let why = match hyper_error {
            Some(h) if h.is_parse_too_large() => "request head too large (431)".to_owned(),
            Some(h) if h.is_parse() || h.is_parse_status() => format!("malformed request: {h}"),
            _ if !served => format!("no complete HTTP request: {e}"),
            _ => {
                tracing::debug!("connection from {} ended: {e}", ctx.client);
                return;
            }
        };
        self.log_unparsed(ctx, "", DenyReason::MalformedRequest, why);
    }

    pub(super) fn log_unparsed(
        &self,
        ctx: &ConnCtx,
        host: &str,
        reason: DenyReason,
        message: impl Into<String>,
    ) {
        let message = message.into();
        tracing::info!("denied connection from {}: {message}", ctx.client);
        let host = if host.is_empty() {
            ctx.tunnel.as_ref().map_or("", |t| t.0.as_str())
        } else {
            host
        };
        let scheme = if ctx.tls_name.is_some() || ctx.port == 443 {
            "https"
        } else {
            "http"
        };
        let record = Record::unparsed(
            crate::config::canonical(ctx.client.ip()),
            scheme,
            host,
            ctx.port,
            reason,
            message,
        )
        .with_original_dst(ctx.original_dst);
        self.log.record(record);
    }
}
