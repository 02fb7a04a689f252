//! The intercepting proxy: every HTTP request the client sends is decided by the rule engine,
//! one decision per request (not per connection), then forwarded or refused.
//!
//! Layout:
//! - `connection`: one accepted connection: first bytes → TLS (terminated with a certificate
//!   from the [`Interceptor`]) or HTTP/1.1 / HTTP/2; CONNECT tunnels are opened only to be
//!   intercepted the same way (no blind tunnels).
//! - `handler`: one request: what the client is asking for (Host / SNI / CONNECT target /
//!   absolute-form), fronting and loop checks, the rule, and forwarding.
//! - [`upstream`]: resolving, the private-address check, dialling, upstream TLS, pooling.
//! - [`reject`]: the only place that picks an error status. [`body`]: byte counting, the
//!   `max_tx_bytes` cut, and the request-log record written when a response ends.
//!
//! Invariants: rules see [`RuleRequest`](crate::rules::RuleRequest), never hyper types; a
//! denied request is never sent upstream and its name is never resolved; every request yields
//! exactly one request-log record. Nothing here knows about namespaces.

pub mod address;
pub mod body;
mod connection;
mod handler;
pub mod headers;
pub mod io;
pub mod reject;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::{IpNet, ResolveOverride, Timeouts};
use crate::request_log::RequestLog;
use crate::rules::RuleEngine;
use crate::shutdown::{Shutdown, Tracker};
use body::BoxError;
use upstream::{UpstreamClient, UpstreamSettings};

/// Issues the certificates the proxy presents to clients when it terminates their TLS.
/// Implemented by [`crate::ca::Authority`]; tests may supply their own.
pub trait Interceptor: Send + Sync + std::fmt::Debug + 'static {
    /// A server configuration whose certificate is valid for `name` (a lowercase host name or
    /// an IP literal without brackets), advertising ALPN `h2` and `http/1.1`.
    fn server_config(&self, name: &str) -> Result<Arc<rustls::ServerConfig>, BoxError>;
}

/// How connections reached a listener, which decides what they may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Weak mode and server mode: explicit proxy requests (absolute-form, CONNECT) and
    /// transparent connections. Transparent plain HTTP goes to `http_port`, TLS to `tls_port`.
    Proxy { http_port: u16, tls_port: u16 },
    /// A strong jail's listener: transparent connections only; the command connected to
    /// `port` (80 or 443), which is the upstream port whatever the Host header says.
    Jail { port: u16 },
}

impl Entry {
    /// The usual proxy entry: transparent HTTP to 80, TLS to 443.
    pub const PROXY: Self = Self::Proxy {
        http_port: 80,
        tls_port: 443,
    };

    fn allows_explicit(self) -> bool {
        matches!(self, Self::Proxy { .. })
    }

    fn transparent_port(self, tls: bool) -> u16 {
        match self {
            Self::Proxy {
                http_port,
                tls_port,
            } => {
                if tls {
                    tls_port
                } else {
                    http_port
                }
            }
            Self::Jail { port } => port,
        }
    }
}

/// Everything the proxy needs besides the engine and the certificates.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub resolve: Vec<ResolveOverride>,
    pub allow_private: Vec<IpNet>,
    pub upstream_roots: Arc<rustls::RootCertStore>,
    pub timeouts: Timeouts,
    /// Largest request head accepted from a client (431 beyond).
    pub max_header_bytes: usize,
    /// How long a graceful shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// `--secret`: placeholders to substitute and leaks to block (SPEC section 9).
    pub secrets: Option<Arc<crate::secrets::Secrets>>,
}

impl ProxySettings {
    pub fn new(upstream_roots: Arc<rustls::RootCertStore>) -> Self {
        Self {
            resolve: Vec::new(),
            allow_private: Vec::new(),
            upstream_roots,
            timeouts: Timeouts::default(),
            max_header_bytes: 64 * 1024,
            drain_timeout: Duration::from_secs(10),
            secrets: None,
        }
    }
}

/// The proxy. Cheap to clone; every listener and connection shares one.
#[derive(Debug, Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    engine: RuleEngine,
    interceptor: Arc<dyn Interceptor>,
    log: RequestLog,
    /// Offers h2 and http/1.1 to upstreams.
    client: UpstreamClient,
    /// HTTP/1.1 only, for protocol upgrades (WebSocket), which HTTP/2 cannot carry.
    client_h1: UpstreamClient,
    settings: ProxySettings,
    /// Random per proxy; a request that carries it came back to us (a loop).
    loop_token: http::HeaderValue,
    tracker: Tracker,
}

/// Header that marks requests this proxy sent upstream (loop detection).
pub const LOOP_HEADER: &str = "x-httpjail-loop";

impl Proxy {
    pub fn new(
        settings: ProxySettings,
        engine: RuleEngine,
        interceptor: Arc<dyn Interceptor>,
        log: RequestLog,
    ) -> Self {
        let upstream = UpstreamSettings {
            resolve: settings.resolve.clone(),
            allow_private: settings.allow_private.clone(),
            roots: settings.upstream_roots.clone(),
            connect_timeout: settings.timeouts.upstream_connect,
            idle_timeout: settings.timeouts.idle,
        };
        // --secret: no request-log record ever shows a real value (crate::secrets::redact).
        let log = match &settings.secrets {
            Some(secrets) => log.with_filter(secrets.record_filter()),
            None => log,
        };
        let mut token = [0u8; 16];
        getrandom::fill(&mut token).expect("the OS random source is available");
        Self {
            shared: Arc::new(Shared {
                engine,
                interceptor,
                log,
                client: upstream::client(&upstream, &[b"h2", b"http/1.1"]),
                client_h1: upstream::client(&upstream, &[b"http/1.1"]),
                settings,
                loop_token: http::HeaderValue::from_str(&hex::encode(token))
                    .expect("hex digits are a valid header value"),
                tracker: Tracker::default(),
            }),
        }
    }

    /// Accepts connections on `listener` until `shutdown` fires, then stops accepting and
    /// lets in-flight connections finish (each closes after its current request).
    pub async fn serve(&self, listener: TcpListener, entry: Entry, mut shutdown: Shutdown) {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = shutdown.wait() => break,
            };
            match accepted {
                Ok((stream, client)) => {
                    let _ = stream.set_nodelay(true);
                    let this = self.clone();
                    let guard = self.shared.tracker.enter();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        this.shared
                            .clone()
                            .accept(stream, client, entry, shutdown)
                            .await;
                        drop(guard);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed on {:?}: {e}", listener.local_addr().ok());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Waits until every connection has finished, up to the drain timeout.
    pub async fn drain(&self) -> bool {
        self.shared
            .tracker
            .wait_idle(self.shared.settings.drain_timeout)
            .await
    }

    /// Number of connections being served.
    pub fn live_connections(&self) -> usize {
        self.shared.tracker.live()
    }
}

/// Where a connection came from and what it is bound to.
#[derive(Debug, Clone)]
struct ConnCtx {
    client: SocketAddr,
    entry: Entry,
    /// Inside a CONNECT tunnel: the host and port the client asked for.
    tunnel: Option<(String, u16)>,
    /// After TLS termination: the name the certificate was issued for. Every request on the
    /// connection must name this host (otherwise 421, domain fronting).
    tls_name: Option<String>,
    /// Upstream port for transparent and tunnelled requests.
    port: u16,
    /// For the log only: where the client really connected (SO_ORIGINAL_DST).
    original_dst: Option<SocketAddr>,
    shutdown: Shutdown,
}
