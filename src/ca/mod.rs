//! The httpjail certificate authority (SPEC section 6): the CA on disk, the per-host leaf
//! certificates the proxy presents when it intercepts TLS, the CA bundle handed to jailed
//! commands, the roots the proxy trusts toward upstreams, and `httpjail trust`.
//!
//! This module is the *issuing* side of interception: it creates keys and certificates and
//! hands the proxy a ready [`rustls::ServerConfig`] per name. It never touches a socket (the
//! proxy's `mitm` code does the handshakes) and never reads the process environment (where the
//! CA lives comes from [`CaLocation`], resolved by `config`).
//!
//! - `store`: load or create the CA files, atomically and under a lock, with 0600 keys;
//!   an existing CA that is corrupt, incomplete or mismatched is an error, never replaced.
//! - `leaf`: leaf issuance and the bounded cache of per-name server configurations.
//! - `roots`: the system roots, the child's CA bundle and [`upstream_roots`].
//! - [`trust`]: `httpjail trust` (show / install / uninstall in the system store).
//!
//! Cryptography is rustls's and rcgen's `ring` backend only; the rustls provider is always passed
//! explicitly, never taken from a process default.

mod leaf;
mod roots;
mod store;
pub mod trust;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls_pki_types::CertificateDer;

use crate::config::CaLocation;

pub use roots::{SYSTEM_BUNDLES, upstream_roots};
pub use trust::TrustStore;

/// Leaves are valid for this long (minus nothing: `not_before` is backdated separately).
///
/// Chrome and Apple reject server certificates valid for more than 398 days; 30 days keeps us far
/// below that and below the shorter limits browsers are phasing in, while a proxy process that
/// runs longer simply re-issues (see `leaf`).
pub const LEAF_VALIDITY: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// How many per-name configurations are kept. A new name costs well under a millisecond to
/// issue, so the cache only has to cover a working set, not every name ever seen.
pub const LEAF_CACHE_CAPACITY: usize = 1024;

/// Everything that can go wrong in the CA module. Messages name the file, flag or operation and
/// say what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot create the CA directory `{}`; make its parent writable for this user, or set HTTPJAIL_CA_CERT and HTTPJAIL_CA_KEY to an existing CA",
        path.display()
    )]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "`{}` should be the CA directory but is not a directory; move it away, or set HTTPJAIL_CA_CERT and HTTPJAIL_CA_KEY to an existing CA",
        path.display()
    )]
    NotADirectory { path: PathBuf },
    #[error(
        "cannot create the CA in `{}`: `{}` is not writable for this user; fix its permissions (e.g. `chmod u+w {}`), or set HTTPJAIL_CA_CERT and HTTPJAIL_CA_KEY to an existing CA",
        ca_dir.display(),
        dir.display(),
        dir.display()
    )]
    NotWritable {
        ca_dir: PathBuf,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("lock `{}` while creating the CA", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("write CA file `{}`", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "give `{}` to the invoking user (uid {uid}, gid {gid})",
        path.display()
    )]
    Chown {
        path: PathBuf,
        uid: u32,
        gid: u32,
        #[source]
        source: io::Error,
    },
    #[error("read CA file `{}`; check that this user may read it", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{var} points to `{}`, which does not exist; set {var} to an existing file (httpjail never creates a CA it does not manage)",
        path.display()
    )]
    UserCaMissing { var: &'static str, path: PathBuf },
    #[error("CA file `{}` is not usable: {why}; {remedy}", path.display())]
    Corrupt {
        path: PathBuf,
        why: String,
        remedy: String,
    },
    #[error(
        "CA certificate `{}` and CA key `{}` do not belong together; {remedy}",
        cert.display(),
        key.display()
    )]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        remedy: String,
    },
    #[error(
        "CA file `{}` exists but `{}` is missing, and httpjail will not create a new CA over it; {remedy}",
        present.display(),
        missing.display()
    )]
    Incomplete {
        present: PathBuf,
        missing: PathBuf,
        remedy: String,
    },
    #[error("CA certificate `{}` expired on {not_after}; {remedy}", path.display())]
    Expired {
        path: PathBuf,
        not_after: String,
        remedy: String,
    },
    #[error(
        "CA certificate `{}` is not valid before {not_before}; check the system clock",
        path.display()
    )]
    NotYetValid { path: PathBuf, not_before: String },
    #[error("`{}` cannot issue certificates: {why}; {remedy}", path.display())]
    NotCa {
        path: PathBuf,
        why: &'static str,
        remedy: String,
    },
    #[error("generate the {what}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("read random bytes from the operating system")]
    Random {
        #[source]
        source: io::Error,
    },
    #[error("`{name}` is not a host name or IP address a certificate can be issued for")]
    InvalidName { name: String },
    #[error("build the TLS server configuration for `{name}`")]
    Tls {
        name: String,
        #[source]
        source: rustls::Error,
    },
    #[error("--upstream-ca `{}`: cannot read the file; check the path", path.display())]
    UpstreamCaRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("--upstream-ca `{}`: {why}", path.display())]
    UpstreamCa { path: PathBuf, why: String },
    #[error(
        "`httpjail trust {flag}` changes the system trust store and needs root; run `sudo httpjail trust {flag}`"
    )]
    NotRoot { flag: &'static str },
    #[error(
        "no supported system trust store found (looked for {looked}); add `{}` to your system's trust store by hand",
        cert.display()
    )]
    UnknownTrustStore { looked: String, cert: PathBuf },
    #[error("write the trust anchor `{}`", path.display())]
    AnchorWrite {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("remove the trust anchor `{}`", path.display())]
    AnchorRemove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("run `{command}` to update the system trust store")]
    UpdateToolSpawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}){output}; the system trust store may be out of date")]
    UpdateToolFailed {
        command: String,
        status: String,
        output: String,
    },
}

impl Error {
    /// The message and every cause, joined as one line (`a: b: c`), for callers that carry
    /// errors as text.
    pub fn chain(&self) -> String {
        crate::error::render_inline(self)
    }
}

/// The httpjail CA, loaded or created, ready to issue leaf certificates.
///
/// Cheap to share behind an `Arc`; every method takes `&self` and is thread-safe.
pub struct Authority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    subject: String,
    not_after: SystemTime,
    cert_path: PathBuf,
    key_path: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    leaves: leaf::Leaves,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The keys are deliberately left out.
        f.debug_struct("Authority")
            .field("subject", &self.subject)
            .field("cert_path", &self.cert_path)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Loads the CA at `location`, creating it first when httpjail manages the directory and no
    /// CA exists yet (SPEC section 6). Two processes starting at once end with one CA.
    pub fn load_or_create(location: &CaLocation) -> Result<Self, Error> {
        let loaded = store::load_or_create(location)?;
        Self::from_loaded(loaded, location, LEAF_CACHE_CAPACITY)
    }

    fn from_loaded(
        loaded: store::LoadedCa,
        location: &CaLocation,
        cache_capacity: usize,
    ) -> Result<Self, Error> {
        let store::LoadedCa {
            cert_der,
            key,
            subject,
            not_after,
        } = loaded;
        let issuer =
            rcgen::Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| Error::Corrupt {
                path: location.cert.clone(),
                why: format!("its subject or extensions cannot be used for issuing ({e})"),
                remedy: store::remedy(location),
            })?;
        let provider = crate::tls::provider();
        Ok(Self {
            cert_pem: roots::der_to_pem(&cert_der),
            cert_der,
            subject,
            not_after,
            cert_path: location.cert.clone(),
            key_path: location.key.clone(),
            issuer,
            leaves: leaf::Leaves::new(provider, cache_capacity)?,
        })
    }

    /// The CA certificate in PEM form (one `CERTIFICATE` block).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate in DER form.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA's subject, as text (e.g. `CN=httpjail CA (alice@laptop), O=httpjail`).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// When the CA certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// The crypto provider every configuration of this authority uses (rustls's `ring`).
    pub fn provider(&self) -> &Arc<CryptoProvider> {
        self.leaves.provider()
    }

    /// A TLS server configuration presenting a leaf for `name` (a host name, or an IP literal,
    /// IPv6 without brackets) signed by this CA: chain leaf + CA, TLS 1.2 and 1.3, ALPN `h2` and
    /// `http/1.1`. Cached per name; the same `Arc` comes back until the leaf nears expiry or the
    /// name is evicted.
    pub fn server_config(&self, name: &str) -> Result<Arc<rustls::ServerConfig>, Error> {
        self.leaves
            .server_config(&self.issuer, &self.cert_der, self.not_after, name)
    }

    /// The leaf certificate (DER) [`server_config`](Self::server_config) presents for `name`;
    /// the same cache entry, issued on demand.
    pub fn leaf_cert(&self, name: &str) -> Result<CertificateDer<'static>, Error> {
        self.leaves
            .issued_at(
                &self.issuer,
                &self.cert_der,
                self.not_after,
                name,
                SystemTime::now(),
            )
            .map(|issued| issued.cert.clone())
    }

    /// The PEM bundle for jailed commands (SPEC section 4): this CA first, then the system's
    /// roots, so that tools that *replace* their roots with the bundle keep working. Without
    /// system roots, only this CA (with a warning).
    pub fn child_bundle_pem(&self) -> Result<String, Error> {
        let system = roots::system_roots();
        if let Some(source) = &system.source {
            tracing::debug!(
                "child CA bundle: httpjail CA + {} system roots from `{}`",
                system.certs.len(),
                source.display()
            );
        } else {
            tracing::warn!(
                "no system CA certificates found (looked in {}); jailed commands will trust only the httpjail CA",
                roots::looked_for()
            );
        }
        Ok(roots::bundle_pem(&self.cert_der, &system.certs))
    }

    /// The SHA-256 fingerprint of the CA certificate, as colon-separated upper-case hex.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_der)
    }
}

/// SHA-256 over a DER certificate, as `AB:CD:...`.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = String::with_capacity(95);
    for (i, byte) in digest.as_ref().iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(&format!("{byte:02X}"));
    }
    out
}

#[cfg(test)]
mod tests;
