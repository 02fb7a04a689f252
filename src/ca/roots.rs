//! Trust in the other direction: the system's root certificates, the CA bundle handed to jailed
//! commands, and the roots the proxy uses to verify upstream servers.
//!
//! The system roots are read from the distribution's bundle file at a fixed list of places
//! ([`SYSTEM_BUNDLES`], then the certificate directories), never from `SSL_CERT_FILE` /
//! `SSL_CERT_DIR`: httpjail's own environment may be that of an outer jail, and only `config`
//! reads the environment. Extra upstream roots come from `--upstream-ca`.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::{self, PemObject as _};

use super::Error;

/// Where distributions keep their PEM bundle of trusted roots, most common first.
pub const SYSTEM_BUNDLES: &[&str] = &[
    // Debian, Ubuntu, Alpine, Arch, Gentoo
    "/etc/ssl/certs/ca-certificates.crt",
    // Fedora, RHEL, CentOS
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    // openSUSE
    "/etc/ssl/ca-bundle.pem",
    // macOS, BSDs, some minimal images
    "/etc/ssl/cert.pem",
];

/// Directories of individual certificates, used when no bundle file exists.
const SYSTEM_CERT_DIRS: &[&str] = &["/etc/ssl/certs", "/etc/pki/tls/certs"];

/// The system roots and where they came from.
#[derive(Debug, Default)]
pub(super) struct SystemRoots {
    pub(super) certs: Vec<CertificateDer<'static>>,
    pub(super) source: Option<PathBuf>,
}

/// Reads the system roots from the first bundle (or directory) that yields any. Read once per
/// process: the upstream root store and the command's bundle both need them, and parsing a
/// distribution bundle (~150 certificates) costs milliseconds at every start.
pub(super) fn system_roots() -> std::sync::Arc<SystemRoots> {
    static ROOTS: std::sync::OnceLock<std::sync::Arc<SystemRoots>> = std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let bundles: Vec<&Path> = SYSTEM_BUNDLES.iter().map(Path::new).collect();
            let dirs: Vec<&Path> = SYSTEM_CERT_DIRS.iter().map(Path::new).collect();
            std::sync::Arc::new(system_roots_from(&bundles, &dirs))
        })
        .clone()
}

pub(super) fn system_roots_from(bundles: &[&Path], dirs: &[&Path]) -> SystemRoots {
    for bundle in bundles.iter().filter(|p| p.is_file()) {
        let result = rustls_native_certs::load_certs_from_paths(Some(bundle), None);
        for e in &result.errors {
            tracing::debug!("reading system roots from `{}`: {e}", bundle.display());
        }
        if !result.certs.is_empty() {
            return SystemRoots {
                certs: dedup(result.certs),
                source: Some(bundle.to_path_buf()),
            };
        }
    }
    for dir in dirs.iter().filter(|p| p.is_dir()) {
        let result = rustls_native_certs::load_certs_from_paths(None, Some(dir));
        for e in &result.errors {
            tracing::debug!("reading system roots from `{}`: {e}", dir.display());
        }
        if !result.certs.is_empty() {
            return SystemRoots {
                certs: dedup(result.certs),
                source: Some(dir.to_path_buf()),
            };
        }
    }
    SystemRoots::default()
}

/// The places [`system_roots`] looks, for messages.
pub(super) fn looked_for() -> String {
    SYSTEM_BUNDLES
        .iter()
        .chain(SYSTEM_CERT_DIRS)
        .map(|p| format!("`{p}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn dedup(certs: Vec<CertificateDer<'static>>) -> Vec<CertificateDer<'static>> {
    let mut seen = HashSet::new();
    certs
        .into_iter()
        .filter(|c| seen.insert(c.as_ref().to_vec()))
        .collect()
}

/// `ours` first, then every system root that is not `ours`, as PEM.
pub(super) fn bundle_pem(ours: &CertificateDer<'_>, system: &[CertificateDer<'_>]) -> String {
    let mut out = der_to_pem(ours);
    for cert in system.iter().filter(|c| c.as_ref() != ours.as_ref()) {
        out.push_str(&der_to_pem(cert));
    }
    out
}

/// One `CERTIFICATE` PEM block with 64-character lines.
pub(super) fn der_to_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    let mut rest = b64.as_str();
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(64));
        let _ = writeln!(out, "{line}");
        rest = tail;
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Whether a PEM bundle file contains `cert` (compared as DER). A missing or unreadable file
/// contains nothing.
pub(super) fn bundle_contains(bundle: &Path, cert: &CertificateDer<'_>) -> bool {
    let Ok(bytes) = std::fs::read(bundle) else {
        return false;
    };
    CertificateDer::pem_slice_iter(&bytes)
        .filter_map(Result::ok)
        .any(|c| c.as_ref() == cert.as_ref())
}

/// The roots the proxy trusts toward upstream servers: the system roots plus the certificates
/// of the `--upstream-ca` PEM file, if given. A file that is missing, unreadable, empty or not
/// PEM is an error; no system roots is only a warning (every upstream TLS connection will then
/// fail verification, which denies rather than allows).
pub fn upstream_roots(extra: Option<&Path>) -> Result<RootCertStore, Error> {
    let system = system_roots();
    if system.certs.is_empty() {
        tracing::warn!(
            "no system CA certificates found (looked in {}); only --upstream-ca roots will be trusted toward upstream servers",
            looked_for()
        );
    }
    upstream_roots_with(system.certs.clone(), extra)
}

pub(super) fn upstream_roots_with(
    system: Vec<CertificateDer<'static>>,
    extra: Option<&Path>,
) -> Result<RootCertStore, Error> {
    let mut store = RootCertStore::empty();
    let (_, ignored) = store.add_parsable_certificates(system);
    if ignored > 0 {
        tracing::debug!("ignored {ignored} system root certificates rustls cannot use");
    }
    let Some(path) = extra else {
        return Ok(store);
    };
    let problem = |why: String| Error::UpstreamCa {
        path: path.to_owned(),
        why,
    };
    let bytes = std::fs::read(path).map_err(|source| Error::UpstreamCaRead {
        path: path.to_owned(),
        source,
    })?;
    let mut added = 0usize;
    for (index, item) in CertificateDer::pem_slice_iter(&bytes).enumerate() {
        let cert = item.map_err(|e| {
            problem(match e {
                pem::Error::MissingSectionEnd { .. } => {
                    "a PEM block is truncated (no `-----END CERTIFICATE-----`)".to_owned()
                }
                pem::Error::Base64Decode(_) => "a PEM block is not valid base64".to_owned(),
                other => format!("the file is not valid PEM ({other})"),
            })
        })?;
        store.add(cert).map_err(|e| {
            problem(format!(
                "certificate #{} cannot be used as a trust anchor ({e})",
                index + 1
            ))
        })?;
        added += 1;
    }
    if added == 0 {
        return Err(problem(
            "the file contains no PEM certificate (`-----BEGIN CERTIFICATE-----`); give a PEM file of CA certificates".to_owned(),
        ));
    }
    Ok(store)
}
