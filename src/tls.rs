//! The rustls crypto provider used on both sides of interception.
//!
//! ring only (never aws-lc-rs: two providers in one tree make rustls's process default
//! ambiguous), passed explicitly to every config. The suites are rustls's defaults; only the
//! order changes: AES-128-GCM first. It is a standard AEAD with a 128-bit security level, and
//! with AES-NI it costs about two thirds of AES-256-GCM per byte; an intercepting proxy
//! encrypts every byte twice, so on large transfers this is most of the proxy's CPU (measured in
//! `bench/`: AES was ~23% of proxy CPU on 1 MiB downloads). ChaCha20-Poly1305 comes next, for
//! peers without AES hardware that prefer it.

use std::sync::Arc;

use rustls::CipherSuite;
use rustls::crypto::CryptoProvider;

/// Lower is preferred.
fn rank(suite: CipherSuite) -> u8 {
    match suite {
        CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 1,
        CipherSuite::TLS13_AES_256_GCM_SHA384 => 2,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 3,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => 4,
        _ => 5,
    }
}

/// ring's provider with AES-128-GCM preferred.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    // A stable sort keeps rustls's order among suites of the same rank.
    provider.cipher_suites.sort_by_key(|s| rank(s.suite()));
    Arc::new(provider)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_suites_as_rustls_with_aes_128_first() {
        let ours = provider();
        let default = rustls::crypto::ring::default_provider();
        let mut a: Vec<_> = ours.cipher_suites.iter().map(|s| s.suite()).collect();
        let mut b: Vec<_> = default.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(
            ours.cipher_suites[0].suite(),
            CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        a.sort_by_key(|s| u16::from(*s));
        b.sort_by_key(|s| u16::from(*s));
        assert_eq!(a, b, "only the order may differ");
    }
}
