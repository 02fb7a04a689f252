//! The upstream side: resolving (with `--resolve` overrides), refusing private addresses on the
//! address actually dialled, connecting with a timeout, TLS with verification against the
//! system roots plus `--upstream-ca`, and ALPN (HTTP/2 when the upstream offers it).
//!
//! Names are only ever resolved here, i.e. only for requests the rule allowed.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::address::is_dialable;
use super::body::ProxyBody;
use crate::config::{IpNet, ResolveOverride};

/// Why the proxy could not reach an upstream.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve `{host}`")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("`{host}` resolves to no address")]
    NoAddress { host: String },
    #[error(
        "`{host}` resolves to {addr}, a {range} address; allow it with --allow-private if that is intended"
    )]
    PrivateAddress {
        host: String,
        addr: IpAddr,
        range: &'static str,
    },
    #[error("cannot connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("connecting to `{host}` timed out after {after:?}")]
    Timeout { host: String, after: Duration },
    #[error("TLS handshake with `{host}` failed")]
    Tls {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("`{uri}` has no host")]
    NoHost { uri: String },
}

/// Settings of the upstream side.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub resolve: Vec<ResolveOverride>,
    pub allow_private: Vec<IpNet>,
    pub roots: Arc<rustls::RootCertStore>,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Dials upstreams for the hyper client.
#[derive(Clone, Debug)]
pub struct Connector {
    inner: Arc<ConnectorInner>,
}

struct ConnectorInner {
    resolve: HashMap<(String, u16), Vec<IpAddr>>,
    allow_private: Vec<IpNet>,
    tls: TlsConnector,
    connect_timeout: Duration,
}

impl Connector {
    pub fn new(settings: &UpstreamSettings, alpn: &[&[u8]]) -> Self {
        let provider = crate::tls::provider();
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .with_root_certificates(settings.roots.clone())
            .with_no_client_auth();
        tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let resolve = settings
            .resolve
            .iter()
            .map(|r| ((r.host.clone(), r.port), r.addrs.clone()))
            .collect();
        Self {
            inner: Arc::new(ConnectorInner {
                resolve,
                allow_private: settings.allow_private.clone(),
                tls: TlsConnector::from(Arc::new(tls)),
                connect_timeout: settings.connect_timeout,
            }),
        }
    }
}

impl std::fmt::Debug for ConnectorInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectorInner")
            .field("resolve", &self.resolve)
            .field("allow_private", &self.allow_private)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl ConnectorInner {
    async fn connect(&self, uri: Uri) -> Result<UpstreamIo, ConnectError> {
        let host = uri.host().ok_or_else(|| ConnectError::NoHost {
            uri: uri.to_string(),
        })?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let deadline = self.connect_timeout;
        let dial = async {
            let addrs = self.addresses(&host, port).await?;
            let tcp = dial_first(&addrs).await?;
            if !https {
                return Ok(UpstreamIo::Plain(TokioIo::new(tcp)));
            }
            let name = ServerName::try_from(host.clone()).map_err(|e| ConnectError::Tls {
                host: host.clone(),
                source: io::Error::new(io::ErrorKind::InvalidInput, e),
            })?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|source| ConnectError::Tls {
                    host: host.clone(),
                    source,
                })?;
            Ok(UpstreamIo::Tls(Box::new(TokioIo::new(tls))))
        };
        match tokio::time::timeout(deadline, dial).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::Timeout {
                host,
                after: deadline,
            }),
        }
    }

    /// The addresses to try: the `--resolve` override as given, or DNS answers minus the
    /// private ones (an error when nothing dialable is left).
    async fn addresses(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ConnectError> {
        if let Some(addrs) = self.resolve.get(&(host.to_owned(), port)) {
            return Ok(addrs.iter().map(|ip| SocketAddr::new(*ip, port)).collect());
        }
        let resolved: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|source| ConnectError::Resolve {
                    host: host.to_owned(),
                    source,
                })?
                .collect(),
        };
        let mut refused = None;
        let dialable: Vec<SocketAddr> = resolved
            .into_iter()
            .filter(|a| match is_dialable(a.ip(), &self.allow_private) {
                Ok(()) => true,
                Err(range) => {
                    refused.get_or_insert((a.ip(), range));
                    false
                }
            })
            .collect();
        match (dialable.is_empty(), refused) {
            (false, _) => Ok(dialable),
            (true, Some((addr, range))) => Err(ConnectError::PrivateAddress {
                host: host.to_owned(),
                addr,
                range,
            }),
            (true, None) => Err(ConnectError::NoAddress {
                host: host.to_owned(),
            }),
        }
    }
}

async fn dial_first(addrs: &[SocketAddr]) -> Result<TcpStream, ConnectError> {
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(source) => {
                last = Some(ConnectError::Connect {
                    addr: *addr,
                    source,
                });
            }
        }
    }
    Err(last.unwrap_or(ConnectError::NoAddress {
        host: String::new(),
    }))
}

impl tower_service::Service<Uri> for Connector {
    type Response = UpstreamIo;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamIo, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { inner.connect(uri).await })
    }
}

/// A connection to an upstream, plain or TLS.
#[derive(Debug)]
pub enum UpstreamIo {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        match self {
            Self::Plain(_) => Connected::new(),
            Self::Tls(tls) => {
                let (_, session) = tls.inner().get_ref();
                if session.alpn_protocol() == Some(b"h2") {
                    Connected::new().negotiated_h2()
                } else {
                    Connected::new()
                }
            }
        }
    }
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_flush(cx),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(io) => io.is_write_vectored(),
            Self::Tls(io) => io.is_write_vectored(),
        }
    }
}

/// The pooled HTTP client toward upstreams.
pub type UpstreamClient = Client<Connector, ProxyBody>;

/// Builds a pooled client. `alpn` is what we offer upstream TLS servers.
pub fn client(settings: &UpstreamSettings, alpn: &[&[u8]]) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(settings.idle_timeout.min(Duration::from_secs(90)))
        .pool_max_idle_per_host(64)
        .build(Connector::new(settings, alpn))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inner(resolve: Vec<ResolveOverride>, allow: Vec<IpNet>) -> ConnectorInner {
        let settings = UpstreamSettings {
            resolve,
            allow_private: allow,
            roots: Arc::new(rustls::RootCertStore::empty()),
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(2),
        };
        Arc::into_inner(Connector::new(&settings, &[b"http/1.1"]).inner).unwrap()
    }

    #[tokio::test]
    async fn loopback_literals_are_refused_without_allow_private() {
        let c = inner(vec![], vec![]);
        let e = c.addresses("127.0.0.1", 80).await.unwrap_err();
        assert!(matches!(e, ConnectError::PrivateAddress { .. }), "{e}");
        assert!(e.to_string().contains("--allow-private"));
        let e = c.addresses("169.254.169.254", 80).await.unwrap_err();
        assert!(matches!(e, ConnectError::PrivateAddress { .. }), "{e}");
        let e = c.addresses("localhost", 80).await.unwrap_err();
        assert!(
            matches!(
                e,
                ConnectError::PrivateAddress { .. } | ConnectError::Resolve { .. }
            ),
            "{e}"
        );
    }

    #[tokio::test]
    async fn allow_private_and_resolve_overrides() {
        let c = inner(vec![], vec![IpNet::parse("127.0.0.0/8").unwrap()]);
        assert_eq!(
            c.addresses("127.0.0.1", 80).await.unwrap(),
            ["127.0.0.1:80".parse().unwrap()]
        );
        let c = inner(
            vec![ResolveOverride {
                host: "name.test".into(),
                port: 443,
                addrs: vec!["127.0.0.1".parse().unwrap()],
            }],
            vec![],
        );
        assert_eq!(
            c.addresses("name.test", 443).await.unwrap(),
            ["127.0.0.1:443".parse().unwrap()]
        );
        // The override is for one port only; another port is resolved normally.
        assert!(c.addresses("name.test", 80).await.is_err());
    }
}
