//! Leaf certificates for intercepted names, and the bounded cache of the TLS server
//! configurations that present them.
//!
//! One ECDSA P-256 leaf key is generated per [`Leaves`] (per process) and shared by every leaf.
//! That is fine because the key never leaves process memory and is never written anywhere: an
//! attacker who could read it could read the CA key in the same memory, which already lets them
//! mint any certificate. Per-name keys would add a key generation and a key parse to every new
//! name for no security gain. Each leaf still binds exactly one name to that key through the CA's
//! signature, and a fresh key per process keeps leaves of different runs unrelated.
//!
//! Leaves: `not_before` one hour in the past (clients with a slow clock), `not_after` at most
//! [`LEAF_VALIDITY`](super::LEAF_VALIDITY) ahead and never after the CA's own expiry, a random
//! serial, the name as a DNS or IP SAN (lower case), EKU serverAuth, keyUsage digitalSignature,
//! basicConstraints CA:FALSE, and an authority key identifier. A cached entry is re-issued once
//! half its remaining lifetime has passed, long before clients would reject it.
//!
//! The cache holds at most `capacity` names and evicts the least recently used. Signing happens
//! outside the lock; two threads missing the same name at once may both sign, and the first to
//! insert wins, so callers always share one `Arc` per name.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls::crypto::CryptoProvider;
use rustls::server::ServerConfig;
use rustls::sign::{CertifiedKey, SigningKey, SingleCertAndKey};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use super::Error;

/// How far a leaf's `not_before` is backdated, for clients whose clock is a little behind.
const LEAF_BACKDATE: Duration = Duration::from_secs(3600);
/// ALPN protocols offered to clients, in order of preference.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A name a leaf can be issued for, normalised (lower case, no trailing dot, canonical IP text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum LeafName {
    Dns(String),
    Ip(IpAddr),
}

impl LeafName {
    pub(super) fn parse(name: &str) -> Result<Self, Error> {
        let invalid = || Error::InvalidName {
            name: name.to_owned(),
        };
        let trimmed = name.strip_suffix('.').unwrap_or(name);
        let unbracketed = trimmed
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(trimmed);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        let lower = trimmed.to_ascii_lowercase();
        // The same validation rustls applies to a client's SNI; it rejects wildcards, empty
        // labels and characters that are not allowed in host names.
        match rustls_pki_types::DnsName::try_from(lower.as_str()) {
            Ok(_) if !lower.is_empty() => Ok(Self::Dns(lower)),
            _ => Err(invalid()),
        }
    }

    /// The cache key.
    fn key(&self) -> String {
        match self {
            Self::Dns(name) => name.clone(),
            Self::Ip(ip) => ip.to_string(),
        }
    }
}

/// One issued leaf with the configuration that presents it.
#[derive(Debug)]
pub(super) struct Issued {
    pub(super) config: Arc<ServerConfig>,
    pub(super) cert: CertificateDer<'static>,
    renew_after: SystemTime,
}

/// Issues leaves and caches their server configurations.
pub(super) struct Leaves {
    provider: Arc<CryptoProvider>,
    key: KeyPair,
    signing_key: Arc<dyn SigningKey>,
    cache: Mutex<Lru>,
}

impl Leaves {
    pub(super) fn new(provider: Arc<CryptoProvider>, capacity: usize) -> Result<Self, Error> {
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| Error::Generate {
                what: "leaf key",
                source,
            })?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing_key = provider
            .key_provider
            .load_private_key(der)
            .map_err(|source| Error::Tls {
                name: "(leaf key)".to_owned(),
                source,
            })?;
        Ok(Self {
            provider,
            key,
            signing_key,
            cache: Mutex::new(Lru::new(capacity)),
        })
    }

    pub(super) fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    pub(super) fn server_config(
        &self,
        issuer: &Issuer<'static, KeyPair>,
        ca_der: &CertificateDer<'static>,
        ca_not_after: SystemTime,
        name: &str,
    ) -> Result<Arc<ServerConfig>, Error> {
        self.issued_at(issuer, ca_der, ca_not_after, name, SystemTime::now())
            .map(|issued| Arc::clone(&issued.config))
    }

    /// The cached leaf for `name` as of `now`, issuing one on a miss or when the cached one is
    /// due for renewal.
    pub(super) fn issued_at(
        &self,
        issuer: &Issuer<'static, KeyPair>,
        ca_der: &CertificateDer<'static>,
        ca_not_after: SystemTime,
        name: &str,
        now: SystemTime,
    ) -> Result<Arc<Issued>, Error> {
        let leaf_name = LeafName::parse(name)?;
        let key = leaf_name.key();
        if let Some(hit) = self.lock().get(&key, now) {
            return Ok(hit);
        }
        // Signing happens without the lock held.
        let issued = Arc::new(self.issue(issuer, ca_der, ca_not_after, &leaf_name, now)?);
        Ok(self.lock().insert(key, issued, now))
    }

    fn lock(&self) -> MutexGuard<'_, Lru> {
        // A panic while holding this lock cannot leave the map inconsistent in a way that
        // matters (worst case a stale order entry), so a poisoned lock is simply taken over.
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn issue(
        &self,
        issuer: &Issuer<'static, KeyPair>,
        ca_der: &CertificateDer<'static>,
        ca_not_after: SystemTime,
        name: &LeafName,
        now: SystemTime,
    ) -> Result<Issued, Error> {
        let not_after = (now + super::LEAF_VALIDITY).min(ca_not_after);
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        let san = match name {
            LeafName::Dns(dns) => {
                if dns.len() <= 64 {
                    dn.push(DnType::CommonName, dns.as_str());
                }
                SanType::DnsName(
                    dns.clone()
                        .try_into()
                        .map_err(|_| Error::InvalidName { name: dns.clone() })?,
                )
            }
            LeafName::Ip(ip) => {
                dn.push(DnType::CommonName, ip.to_string());
                SanType::IpAddress(*ip)
            }
        };
        params.distinguished_name = dn;
        params.subject_alt_names = vec![san];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        params.not_before = to_asn1_time(now - LEAF_BACKDATE);
        params.not_after = to_asn1_time(not_after);
        let cert = params
            .signed_by(&self.key, issuer)
            .map_err(|source| Error::Generate {
                what: "leaf certificate",
                source,
            })?;
        let cert = cert.der().clone();
        let certified = CertifiedKey::new(
            vec![cert.clone(), ca_der.clone()],
            Arc::clone(&self.signing_key),
        );
        let tls_error = |source| Error::Tls {
            name: name.key(),
            source,
        };
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(tls_error)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        // Choose the suite by our preference (AES-128-GCM first, see `crate::tls`), not the
        // client's: both are among the client's offers either way.
        config.ignore_client_order = true;
        // Renew at half the remaining lifetime: far from expiry, yet rare.
        let remaining = not_after.duration_since(now).unwrap_or_default();
        Ok(Issued {
            config: Arc::new(config),
            cert,
            renew_after: now + remaining / 2,
        })
    }

    #[cfg(test)]
    pub(super) fn cached_len(&self) -> usize {
        self.lock().map.len()
    }
}

/// Least-recently-used map from name to issued leaf.
struct Lru {
    map: HashMap<Arc<str>, Slot>,
    /// Use tick → name; the first entry is the least recently used.
    order: BTreeMap<u64, Arc<str>>,
    tick: u64,
    capacity: usize,
}

struct Slot {
    issued: Arc<Issued>,
    tick: u64,
}

impl Lru {
    fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            capacity: capacity.max(1),
        }
    }

    fn get(&mut self, key: &str, now: SystemTime) -> Option<Arc<Issued>> {
        let (name, slot) = self.map.get_key_value(key)?;
        if now >= slot.issued.renew_after {
            return None;
        }
        let name = Arc::clone(name);
        let old_tick = slot.tick;
        self.tick += 1;
        let tick = self.tick;
        self.order.remove(&old_tick);
        self.order.insert(tick, Arc::clone(&name));
        let slot = self.map.get_mut(&*name)?;
        slot.tick = tick;
        Some(Arc::clone(&slot.issued))
    }

    /// Inserts `issued` unless a fresh entry for `key` appeared meanwhile; returns the entry
    /// that is now cached.
    fn insert(&mut self, key: String, issued: Arc<Issued>, now: SystemTime) -> Arc<Issued> {
        if let Some(existing) = self.get(&key, now) {
            return existing;
        }
        self.tick += 1;
        let tick = self.tick;
        let name: Arc<str> = Arc::from(key);
        if let Some(old) = self.map.insert(
            Arc::clone(&name),
            Slot {
                issued: Arc::clone(&issued),
                tick,
            },
        ) {
            self.order.remove(&old.tick);
        }
        self.order.insert(tick, name);
        while self.map.len() > self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.map.remove(&*oldest);
        }
        issued
    }
}

/// A `SystemTime` as rcgen wants it, in whole seconds (X.509 times have no fractions).
pub(super) fn to_asn1_time(t: SystemTime) -> OffsetDateTime {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// A random positive 16-byte serial number (RFC 5280 allows up to 20 bytes).
pub(super) fn random_serial() -> Result<SerialNumber, Error> {
    let mut bytes = random_bytes::<16>()?;
    bytes[0] &= 0x7f;
    // A leading zero byte would be dropped by the DER encoder; keep the length fixed.
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Random bytes from the operating system.
pub(super) fn random_bytes<const N: usize>() -> Result<[u8; N], Error> {
    let mut bytes = [0u8; N];
    // getrandom's error is not a std error without its `std` feature; keep its text.
    getrandom::fill(&mut bytes).map_err(|e| Error::Random {
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(bytes)
}
