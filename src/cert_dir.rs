//! The OpenSSL `SSL_CERT_DIR` layout: certificates stored as `<subject hash>.<n>`.
//!
//! OpenSSL finds a root in a directory by the hash of its subject name (`X509_NAME_hash`, what
//! `openssl x509 -subject_hash` prints), so a directory with only a `ca.pem` in it is useless to
//! OpenSSL-based tools. This module computes that hash: SHA-1 over the canonical encoding of the
//! name (every string value as a lowercased, whitespace-collapsed UTF8String, the RDN sets
//! concatenated without the outer SEQUENCE), first four bytes read little-endian.

use std::io;
use std::path::Path;

/// A DER element: tag, contents, and the whole encoding.
struct Element<'a> {
    tag: u8,
    contents: &'a [u8],
}

fn read_element(input: &[u8]) -> Option<(Element<'_>, &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let mut len = 0usize;
        for &b in &rest[..count] {
            len = (len << 8) | usize::from(b);
        }
        rest = &rest[count..];
        len
    };
    if rest.len() < len {
        return None;
    }
    let (contents, after) = rest.split_at(len);
    Some((Element { tag, contents }, after))
}

fn write_element(out: &mut Vec<u8>, tag: u8, contents: &[u8]) {
    out.push(tag);
    let len = contents.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(contents);
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const UTF8_STRING: u8 = 0x0c;

/// String types OpenSSL canonicalises (`ASN1_MASK_CANON`).
fn is_string_type(tag: u8) -> bool {
    matches!(tag, 0x0c | 0x13 | 0x14 | 0x16 | 0x1a | 0x1c | 0x1e)
}

fn canonical_text(tag: u8, contents: &[u8]) -> Option<String> {
    let text = match tag {
        0x1e => {
            // BMPString: UTF-16BE.
            let units: Vec<u16> = contents
                .chunks(2)
                .map(|c| Some(u16::from_be_bytes([c[0], *c.get(1)?])))
                .collect::<Option<_>>()?;
            String::from_utf16(&units).ok()?
        }
        0x1c => {
            // UniversalString: UTF-32BE.
            contents
                .chunks(4)
                .map(|c| {
                    (c.len() == 4)
                        .then(|| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                        .and_then(char::from_u32)
                })
                .collect::<Option<String>>()?
        }
        _ => String::from_utf8_lossy(contents).into_owned(),
    };
    let mut out = String::with_capacity(text.len());
    for word in text
        .split(|c: char| c.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
    {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&word.to_ascii_lowercase());
    }
    Some(out)
}

/// Finds the subject `Name` in a DER certificate.
fn subject(cert_der: &[u8]) -> Option<&[u8]> {
    let (cert, _) = read_element(cert_der)?;
    let (tbs, _) = read_element(cert.contents)?;
    let mut rest = tbs.contents;
    let mut fields = Vec::new();
    while !rest.is_empty() {
        let (element, after) = read_element(rest)?;
        fields.push((
            element.tag,
            element.contents,
            &rest[..rest.len() - after.len()],
        ));
        rest = after;
    }
    // Optional [0] version first; then serial, signature algorithm, issuer, validity, subject.
    let offset = usize::from(fields.first()?.0 == 0xa0);
    let (tag, _, whole) = fields.get(offset + 4)?;
    (*tag == SEQUENCE).then_some(*whole)
}

/// `X509_NAME_hash` of the certificate's subject, as `openssl x509 -subject_hash` prints it.
pub fn subject_hash(cert_der: &[u8]) -> Option<u32> {
    let (name, _) = read_element(subject(cert_der)?)?;
    let mut canon = Vec::new();
    let mut rdns = name.contents;
    while !rdns.is_empty() {
        let (rdn, after) = read_element(rdns)?;
        rdns = after;
        if rdn.tag != SET {
            return None;
        }
        let mut set = Vec::new();
        let mut attrs = rdn.contents;
        while !attrs.is_empty() {
            let (attr, after) = read_element(attrs)?;
            attrs = after;
            let (oid, rest) = read_element(attr.contents)?;
            let (value, _) = read_element(rest)?;
            let mut pair = Vec::new();
            write_element(&mut pair, oid.tag, oid.contents);
            if is_string_type(value.tag) {
                write_element(
                    &mut pair,
                    UTF8_STRING,
                    canonical_text(value.tag, value.contents)?.as_bytes(),
                );
            } else {
                write_element(&mut pair, value.tag, value.contents);
            }
            write_element(&mut set, SEQUENCE, &pair);
        }
        write_element(&mut canon, SET, &set);
    }
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &canon);
    let bytes = digest.as_ref();
    Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// Writes `pem` into `dir` as `<hash>.0` so OpenSSL finds it through `SSL_CERT_DIR`.
pub fn write_hashed(dir: &Path, cert_der: &[u8], pem: &str) -> io::Result<()> {
    let hash = subject_hash(cert_der).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "cannot parse the certificate subject",
        )
    })?;
    std::fs::write(dir.join(format!("{hash:08x}.0")), pem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    fn cert(cn: &str, org: Option<&str>) -> (Vec<u8>, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(o) = org {
            params.distinguished_name.push(DnType::OrganizationName, o);
        }
        let cert = params.self_signed(&key).unwrap();
        (cert.der().to_vec(), cert.pem())
    }

    fn openssl_hash(pem: &str) -> Option<String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.pem");
        std::fs::write(&path, pem).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-subject_hash", "-in"])
            .arg(&path)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    #[test]
    fn matches_openssl() {
        let cases = [
            ("httpjail CA (root@host)", None),
            ("  Mixed   CASE  name ", Some("Some Org")),
            ("ünïcode CA", Some("Ørg")),
        ];
        let mut checked = 0;
        for (cn, org) in cases {
            let (der, pem) = cert(cn, org);
            let ours = format!("{:08x}", subject_hash(&der).unwrap());
            match openssl_hash(&pem) {
                Some(theirs) => {
                    assert_eq!(ours, theirs, "subject {cn:?} / {org:?}");
                    checked += 1;
                }
                None => eprintln!("openssl not available; skipping comparison for {cn:?}"),
            }
        }
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            assert_eq!(checked, 3, "openssl must be installed in CI");
        }
    }

    #[test]
    fn hash_depends_on_canonical_subject_only() {
        let (a, _) = cert("Same  Name", None);
        let (b, _) = cert("same name", None);
        assert_eq!(subject_hash(&a), subject_hash(&b));
        let (c, _) = cert("other", None);
        assert_ne!(subject_hash(&a), subject_hash(&c));
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(subject_hash(b"not der"), None);
        assert_eq!(subject_hash(&[]), None);
    }
}
