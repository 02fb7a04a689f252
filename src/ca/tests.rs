//! Unit tests of the CA module: on-disk creation and validation, leaves, caching, bundles,
//! upstream roots and `httpjail trust` against a fake trust store.

use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::store::test_support::{common_name_for, make_ca_pem};
use super::*;
use crate::config::{CaLocation, TrustAction};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn managed(root: &Path) -> CaLocation {
    let dir = root.join("config").join("httpjail");
    CaLocation {
        cert: dir.join("ca-cert.pem"),
        key: dir.join("ca-key.pem"),
        managed_dir: Some(dir),
        owner: None,
    }
}

fn user_supplied(cert: PathBuf, key: PathBuf) -> CaLocation {
    CaLocation {
        cert,
        key,
        managed_dir: None,
        owner: None,
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().mode() & 0o777
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    X509Certificate::from_der(der)
        .expect("valid DER certificate")
        .1
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn snapshot(paths: &[&Path]) -> Vec<Option<Vec<u8>>> {
    paths.iter().map(|p| fs::read(p).ok()).collect()
}

fn authority(root: &Path) -> Authority {
    Authority::load_or_create(&managed(root)).expect("create CA")
}

fn small_cache_authority(root: &Path, capacity: usize) -> Authority {
    let location = managed(root);
    let loaded = store::load_or_create(&location).unwrap();
    Authority::from_loaded(loaded, &location, capacity).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Creation and loading

#[test]
fn creates_a_private_ca_and_reloads_the_same_one() {
    let tmp = tempfile::tempdir().unwrap();
    let location = managed(tmp.path());
    let first = Authority::load_or_create(&location).unwrap();
    let dir = location.managed_dir.as_ref().unwrap();

    assert_eq!(mode(dir), 0o700, "CA directory");
    assert_eq!(mode(dir.parent().unwrap()), 0o700, "created parent");
    assert_eq!(mode(&location.key), 0o600, "CA key");
    assert_eq!(mode(&location.cert), 0o600, "CA certificate");
    assert_eq!(
        dir_names(dir),
        [".ca.lock", "ca-cert.pem", "ca-key.pem"],
        "no temporary files left"
    );

    let second = Authority::load_or_create(&location).unwrap();
    assert_eq!(
        first.cert_der(),
        second.cert_der(),
        "reload gives the same CA"
    );
    assert_eq!(first.cert_pem(), second.cert_pem());
    assert_eq!(
        fs::read_to_string(&location.cert).unwrap(),
        first.cert_pem(),
        "cert_pem is the file's certificate"
    );

    let cert = parse(first.cert_der());
    let bc = cert.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    assert!(cn.starts_with("httpjail CA (") && cn.contains('@'), "{cn}");
    assert_eq!(cn, common_name_for(None));
    let validity = cert.validity();
    let years = (validity.not_after.timestamp() - validity.not_before.timestamp()) / 86_400 / 365;
    assert!((9..=11).contains(&years), "about ten years, got {years}");
    assert!(cert.public_key().algorithm.algorithm.to_id_string() == "1.2.840.10045.2.1");
}

#[test]
fn corrupt_certificate_is_an_error_and_nothing_is_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let location = managed(tmp.path());
    authority(tmp.path());
    let good_cert = fs::read_to_string(&location.cert).unwrap();
    let truncated = good_cert.replace("-----END CERTIFICATE-----\n", "");
    let cases = [
        ("garbage", "this is not a certificate\n".to_owned()),
        ("truncated", truncated),
        (
            "bad base64",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".to_owned(),
        ),
        ("empty", String::new()),
    ];
    for (what, contents) in cases {
        fs::write(&location.cert, &contents).unwrap();
        let before = snapshot(&[&location.cert, &location.key]);
        let err = Authority::load_or_create(&location).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{what}: {err:?}");
        let text = err.to_string();
        assert!(
            text.contains(&location.cert.display().to_string()),
            "{what}: names the file: {text}"
        );
        assert!(
            text.contains("remove both"),
            "{what}: says what to do: {text}"
        );
        assert_eq!(
            snapshot(&[&location.cert, &location.key]),
            before,
            "{what}: files untouched"
        );
    }
}

#[test]
fn corrupt_key_is_an_error_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let location = managed(tmp.path());
    authority(tmp.path());
    fs::write(
        &location.key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = Authority::load_or_create(&location).unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { path, .. } if *path == location.key),
        "{err:?}"
    );

    // A legacy SEC1 key gets a conversion hint (the label alone decides the format).
    fs::write(
        &location.key,
        "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
    )
    .unwrap();
    let text = Authority::load_or_create(&location)
        .unwrap_err()
        .to_string();
    assert!(text.contains("openssl pkcs8 -topk8"), "{text}");
}

#[test]
fn mismatched_key_is_an_error() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    authority(a.path());
    authority(b.path());
    let (la, lb) = (managed(a.path()), managed(b.path()));
    fs::copy(&lb.key, &la.key).unwrap();
    let before = snapshot(&[&la.cert, &la.key]);
    let err = Authority::load_or_create(&la).unwrap_err();
    assert!(matches!(err, Error::Mismatch { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&la.cert.display().to_string())
            && text.contains(&la.key.display().to_string()),
        "{text}"
    );
    assert_eq!(snapshot(&[&la.cert, &la.key]), before);
}

#[test]
fn half_a_pair_is_an_error_and_never_completed() {
    for remove_key in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let location = managed(tmp.path());
        authority(tmp.path());
        let (gone, kept) = if remove_key {
            (&location.key, &location.cert)
        } else {
            (&location.cert, &location.key)
        };
        fs::remove_file(gone).unwrap();
        let kept_before = fs::read(kept).unwrap();
        let err = Authority::load_or_create(&location).unwrap_err();
        match &err {
            Error::Incomplete {
                present, missing, ..
            } => {
                assert_eq!(present, kept);
                assert_eq!(missing, gone);
            }
            other => panic!("expected Incomplete, got {other:?}"),
        }
        assert!(err.to_string().contains("will not create a new CA"));
        assert!(!gone.exists(), "the missing file was not recreated");
        assert_eq!(fs::read(kept).unwrap(), kept_before);
    }
}

#[test]
fn a_file_where_the_directory_should_be_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    // The parent of the CA directory is a regular file.
    let blocker = tmp.path().join("config");
    fs::write(&blocker, "not a directory").unwrap();
    let location = managed(tmp.path());
    let err = Authority::load_or_create(&location).unwrap_err();
    assert!(
        matches!(&err, Error::NotADirectory { path } if *path == blocker),
        "{err:?}"
    );
    assert!(err.to_string().contains("HTTPJAIL_CA_CERT"), "{err}");
    assert_eq!(fs::read_to_string(&blocker).unwrap(), "not a directory");

    // The CA directory itself is a regular file.
    let tmp = tempfile::tempdir().unwrap();
    let location = managed(tmp.path());
    let dir = location.managed_dir.clone().unwrap();
    fs::create_dir_all(dir.parent().unwrap()).unwrap();
    fs::write(&dir, "x").unwrap();
    let err = Authority::load_or_create(&location).unwrap_err();
    assert!(
        matches!(&err, Error::NotADirectory { path } if *path == dir),
        "{err:?}"
    );
}

#[test]
fn user_supplied_ca_is_used_and_never_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert_pem, key_pem) = make_ca_pem(SystemTime::now() - DAY, SystemTime::now() + 365 * DAY);
    let dir = tmp.path().join("mine");
    fs::create_dir(&dir).unwrap();
    let cert = dir.join("corp.pem");
    let key = dir.join("corp.key");
    fs::write(&cert, &cert_pem).unwrap();
    fs::write(&key, &key_pem).unwrap();
    let mtimes = |p: &Path| fs::metadata(p).unwrap().modified().unwrap();
    let before = (mtimes(&cert), mtimes(&key), dir_names(&dir));

    let location = user_supplied(cert.clone(), key.clone());
    let ca = Authority::load_or_create(&location).unwrap();
    assert_eq!(ca.cert_pem(), cert_pem);
    ca.server_config("example.com").unwrap();
    assert_eq!(before, (mtimes(&cert), mtimes(&key), dir_names(&dir)));

    // Missing files are an error naming the variable; nothing is created.
    let missing = user_supplied(dir.join("nope.pem"), key.clone());
    let text = Authority::load_or_create(&missing).unwrap_err().to_string();
    assert!(
        text.contains("HTTPJAIL_CA_CERT") && text.contains("nope.pem"),
        "{text}"
    );
    let missing = user_supplied(cert.clone(), dir.join("nope.key"));
    let text = Authority::load_or_create(&missing).unwrap_err().to_string();
    assert!(
        text.contains("HTTPJAIL_CA_KEY") && text.contains("nope.key"),
        "{text}"
    );
    assert_eq!(dir_names(&dir), ["corp.key", "corp.pem"]);

    // The remedy for a user CA talks about the variables, not about deleting files.
    fs::write(&cert, "junk").unwrap();
    let text = Authority::load_or_create(&location)
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("HTTPJAIL_CA_CERT") && !text.contains("remove both"),
        "{text}"
    );
}

#[test]
fn expired_and_not_yet_valid_cas_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let write = |name: &str, nb: SystemTime, na: SystemTime| {
        let (c, k) = make_ca_pem(nb, na);
        let cert = tmp.path().join(format!("{name}.pem"));
        let key = tmp.path().join(format!("{name}.key"));
        fs::write(&cert, c).unwrap();
        fs::write(&key, k).unwrap();
        user_supplied(cert, key)
    };
    let expired = write("expired", now - 20 * DAY, now - DAY);
    let err = Authority::load_or_create(&expired).unwrap_err();
    assert!(matches!(err, Error::Expired { .. }), "{err:?}");
    assert!(err.to_string().contains("expired.pem"), "{err}");

    let future = write("future", now + 10 * DAY, now + 20 * DAY);
    let err = Authority::load_or_create(&future).unwrap_err();
    assert!(matches!(err, Error::NotYetValid { .. }), "{err:?}");
}

#[test]
fn a_certificate_that_is_not_a_ca_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["example.com".to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let cert_path = tmp.path().join("leaf.pem");
    let key_path = tmp.path().join("leaf.key");
    fs::write(&cert_path, cert.pem()).unwrap();
    fs::write(&key_path, key.serialize_pem()).unwrap();
    let err =
        Authority::load_or_create(&user_supplied(cert_path.clone(), key_path.clone())).unwrap_err();
    assert!(matches!(err, Error::NotCa { .. }), "{err:?}");
    assert!(err.to_string().contains("basicConstraints"), "{err}");

    // A CA whose keyUsage forbids signing certificates.
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    fs::write(&cert_path, params.self_signed(&key).unwrap().pem()).unwrap();
    let err = Authority::load_or_create(&user_supplied(cert_path, key_path)).unwrap_err();
    assert!(err.to_string().contains("keyCertSign"), "{err}");
}

#[test]
fn authority_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Authority>();
    assert_send_sync::<Error>();
}

#[test]
fn racing_threads_create_exactly_one_ca() {
    for _round in 0..10 {
        let tmp = tempfile::tempdir().unwrap();
        let location = Arc::new(managed(tmp.path()));
        let barrier = Arc::new(Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let location = Arc::clone(&location);
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    Authority::load_or_create(&location)
                        .map(|ca| ca.cert_der().clone())
                        .map_err(|e| e.chain())
                })
            })
            .collect();
        let certs: Vec<CertificateDer<'static>> = handles
            .into_iter()
            .map(|h| h.join().unwrap().expect("every racer gets a CA"))
            .collect();
        assert!(certs.windows(2).all(|w| w[0] == w[1]), "one CA for all");
        let on_disk = CertificateDer::from_pem_file(&location.cert).unwrap();
        assert_eq!(on_disk, certs[0]);
        assert_eq!(
            dir_names(location.managed_dir.as_ref().unwrap()),
            [".ca.lock", "ca-cert.pem", "ca-key.pem"]
        );
    }
}

#[test]
fn stale_temporary_files_are_cleaned_up() {
    let tmp = tempfile::tempdir().unwrap();
    let location = managed(tmp.path());
    let dir = location.managed_dir.clone().unwrap();
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(".ca-tmp-1-deadbeef"), "half a key").unwrap();
    Authority::load_or_create(&location).unwrap();
    assert_eq!(dir_names(&dir), [".ca.lock", "ca-cert.pem", "ca-key.pem"]);
}

fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs root and CI=true"
    );
    eprintln!("skipping {test}: needs root");
    false
}

#[test]
fn under_sudo_created_files_and_directories_belong_to_the_user() {
    if !require_root("under_sudo_created_files_and_directories_belong_to_the_user") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (uid, gid) = (65534, 65534);
    let mut location = managed(tmp.path());
    location.owner = Some((uid, gid));
    let ca = Authority::load_or_create(&location).unwrap();
    let dir = location.managed_dir.clone().unwrap();
    for path in [
        dir.parent().unwrap(),
        dir.as_path(),
        &location.cert,
        &location.key,
        &dir.join(".ca.lock"),
    ] {
        let meta = fs::metadata(path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{}", path.display());
    }
    assert_eq!(mode(&location.key), 0o600);
    // The pre-existing directory is left to its owner.
    assert_eq!(fs::metadata(tmp.path()).unwrap().uid(), 0);
    // The CN names the user, not root.
    let user = nix::unistd::User::from_uid(uid.into())
        .unwrap()
        .map_or_else(|| uid.to_string(), |u| u.name);
    assert!(
        ca.subject().contains(&format!("({user}@")),
        "{}",
        ca.subject()
    );
}

#[test]
fn under_sudo_a_missing_home_is_an_error_not_created() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home-that-does-not-exist");
    let dir = home.join(".config").join("httpjail");
    let location = CaLocation {
        cert: dir.join("ca-cert.pem"),
        key: dir.join("ca-key.pem"),
        managed_dir: Some(dir),
        owner: Some((65534, 65534)),
    };
    let err = Authority::load_or_create(&location).unwrap_err().chain();
    assert!(
        err.contains("home-that-does-not-exist") && err.contains("does not exist"),
        "{err}"
    );
    assert!(
        !home.exists(),
        "httpjail must not create a user's home directory"
    );
}

// ---------------------------------------------------------------------------------------------
// Leaves

fn sans(cert: &X509Certificate<'_>) -> Vec<String> {
    cert.subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|g| match g {
            GeneralName::DNSName(d) => format!("dns:{d}"),
            GeneralName::IPAddress(ip) => format!("ip:{}", hex::encode(ip)),
            other => format!("other:{other:?}"),
        })
        .collect()
}

#[test]
fn leaf_for_a_dns_name_has_the_right_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = authority(tmp.path());
    let now = SystemTime::now();
    let der = ca.leaf_cert("WWW.Example.COM.").unwrap();
    let cert = parse(&der);
    assert_eq!(sans(&cert), ["dns:www.example.com"]);
    let bc = cert.basic_constraints().unwrap().unwrap().value;
    assert!(!bc.ca, "a leaf is not a CA");
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth && !eku.any);

    let ca_cert = parse(ca.cert_der());
    let ski = ca_cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
        .unwrap();
    let aki = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .expect("leaf has an AKI");
    assert_eq!(aki, ski);
    assert_eq!(cert.issuer(), ca_cert.subject());

    let nb = cert.validity().not_before.timestamp();
    let na = cert.validity().not_after.timestamp();
    let now_s = i64::try_from(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    assert!(nb <= now_s - 3590, "backdated for clock skew");
    assert!(na - nb <= 398 * 86_400, "within the 398-day limit");
    assert!(
        na - now_s <= 31 * 86_400 && na - now_s >= 29 * 86_400,
        "about 30 days"
    );
    assert!(cert.raw_serial().len() >= 16, "random serial");
    let other = parse(&ca.leaf_cert("other.example.com").unwrap())
        .raw_serial()
        .to_vec();
    assert_ne!(cert.raw_serial(), other.as_slice());
}

#[test]
fn leaf_for_ip_literals_has_an_ip_san() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = authority(tmp.path());
    let v4 = ca.leaf_cert("127.0.0.1").unwrap();
    assert_eq!(sans(&parse(&v4)), ["ip:7f000001"]);
    let v6 = ca.leaf_cert("::1").unwrap();
    assert_eq!(sans(&parse(&v6)), [format!("ip:{}0001", "0".repeat(28))]);
    // Brackets and non-canonical spellings name the same cache entry.
    let a = ca.server_config("::1").unwrap();
    assert!(Arc::ptr_eq(&a, &ca.server_config("[::1]").unwrap()));
    assert!(Arc::ptr_eq(&a, &ca.server_config("0:0::1").unwrap()));
}

#[test]
fn invalid_names_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = authority(tmp.path());
    for bad in [
        "",
        ".",
        "*.example.com",
        "a..b",
        "exa mple.com",
        "a/b",
        "[::1",
    ] {
        let err = ca.server_config(bad).unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }), "{bad:?}: {err:?}");
    }
}

#[test]
fn cache_returns_the_same_arc_and_stays_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = small_cache_authority(tmp.path(), 4);
    let first = ca.server_config("a.test").unwrap();
    assert!(Arc::ptr_eq(&first, &ca.server_config("A.TEST").unwrap()));
    for name in ["b.test", "c.test", "d.test"] {
        ca.server_config(name).unwrap();
    }
    // Touch a.test so that b.test is now the least recently used.
    assert!(Arc::ptr_eq(&first, &ca.server_config("a.test").unwrap()));
    let b = ca.server_config("b.test").unwrap();
    ca.server_config("c.test").unwrap();
    ca.server_config("d.test").unwrap();
    // Order of use now: a, b, c, d → inserting e evicts a.
    ca.server_config("e.test").unwrap();
    assert_eq!(ca.leaves.cached_len(), 4);
    assert!(
        Arc::ptr_eq(&b, &ca.server_config("b.test").unwrap()),
        "b survived"
    );
    assert!(
        !Arc::ptr_eq(&first, &ca.server_config("a.test").unwrap()),
        "a was evicted"
    );
    assert_eq!(ca.leaves.cached_len(), 4);
    for i in 0..50 {
        ca.server_config(&format!("h{i}.test")).unwrap();
    }
    assert_eq!(ca.leaves.cached_len(), 4);
}

#[test]
fn leaves_are_renewed_before_they_expire() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = authority(tmp.path());
    let now = SystemTime::now();
    let issue = |at| {
        ca.leaves
            .issued_at(&ca.issuer, &ca.cert_der, ca.not_after, "renew.test", at)
            .unwrap()
    };
    let first = issue(now);
    assert!(
        Arc::ptr_eq(&first, &issue(now + DAY)),
        "fresh entry is reused"
    );
    let later = issue(now + 20 * DAY);
    assert!(
        !Arc::ptr_eq(&first, &later),
        "re-issued past half its lifetime"
    );
    let na = parse(&later.cert).validity().not_after.timestamp();
    let expected = i64::try_from(
        (now + 50 * DAY)
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    assert!(
        (na - expected).abs() < 60,
        "new leaf runs 30 days from its issue time"
    );
}

#[test]
fn leaves_never_outlive_the_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let (c, k) = make_ca_pem(now - DAY, now + 3 * DAY);
    let cert = tmp.path().join("short.pem");
    let key = tmp.path().join("short.key");
    fs::write(&cert, c).unwrap();
    fs::write(&key, k).unwrap();
    let ca = Authority::load_or_create(&user_supplied(cert, key)).unwrap();
    let leaf = parse(&ca.leaf_cert("short.test").unwrap())
        .validity()
        .not_after
        .timestamp();
    let ca_na = parse(ca.cert_der()).validity().not_after.timestamp();
    assert!(leaf <= ca_na, "leaf {leaf} > CA {ca_na}");
}

// ---------------------------------------------------------------------------------------------
// Handshakes (in memory)

fn client_config(roots: RootCertStore, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

fn only(ca: &Authority) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    roots
}

/// Runs a handshake between the two in memory; returns the client after it, or the first error.
fn handshake(
    client: Arc<ClientConfig>,
    server: Arc<rustls::ServerConfig>,
    name: &str,
) -> Result<ClientConnection, rustls::Error> {
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    let mut c = ClientConnection::new(client, server_name)?;
    let mut s = ServerConnection::new(server)?;
    for _ in 0..20 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let mut slice = buf.as_slice();
        while !slice.is_empty() {
            s.read_tls(&mut slice).unwrap();
        }
        s.process_new_packets()?;
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        let mut slice = buf.as_slice();
        while !slice.is_empty() {
            c.read_tls(&mut slice).unwrap();
        }
        c.process_new_packets()?;
        if !c.is_handshaking() && !s.is_handshaking() {
            // Prove the channel works: one message each way.
            c.writer().write_all(b"ping").unwrap();
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets()?;
            let mut got = [0u8; 4];
            s.reader().read_exact(&mut got).unwrap();
            assert_eq!(&got, b"ping");
            return Ok(c);
        }
    }
    panic!("handshake did not finish");
}

#[test]
fn leaf_verifies_against_the_ca_with_a_rustls_client() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = authority(tmp.path());
    for name in ["example.com", "127.0.0.1", "::1"] {
        let client = client_config(only(&ca), &[b"h2", b"http/1.1"]);
        let conn = handshake(client, ca.server_config(name).unwrap(), name)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]), "{name}");
        let chain = conn.peer_certificates().unwrap();
        assert_eq!(chain.len(), 2, "leaf + CA");
        assert_eq!(&chain[1], ca.cert_der());
    }
    // HTTP/1.1-only clients get http/1.1; TLS 1.2-only clients work too.
    let conn = handshake(
        client_config(only(&ca), &[b"http/1.1"]),
        ca.server_config("example.com").unwrap(),
        "example.com",
    )
    .unwrap();
    assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let tls12 = Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(only(&ca))
            .with_no_client_auth(),
    );
    let conn = handshake(
        tls12,
        ca.server_config("example.com").unwrap(),
        "example.com",
    )
    .unwrap();
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
}

#[test]
fn leaf_for_another_name_or_from_another_ca_is_rejected() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let ca = authority(a.path());
    let stranger = authority(b.path());
    let client = client_config(only(&ca), &[]);
    let err = handshake(
        client.clone(),
        ca.server_config("a.test").unwrap(),
        "b.test",
    )
    .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    let err = handshake(client, stranger.server_config("a.test").unwrap(), "a.test").unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Bundles and upstream roots

fn certs_in(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap())
        .collect()
}

#[test]
fn bundle_puts_our_ca_first_and_deduplicates_it() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = authority(tmp.path());
    let other = authority(tempfile::tempdir().unwrap().path());
    let system = vec![other.cert_der().clone(), ca.cert_der().clone()];
    let bundle = roots::bundle_pem(ca.cert_der(), &system);
    let certs = certs_in(&bundle);
    assert_eq!(certs, [ca.cert_der().clone(), other.cert_der().clone()]);
    // Only our CA when there are no system roots.
    assert_eq!(
        certs_in(&roots::bundle_pem(ca.cert_der(), &[])),
        [ca.cert_der().clone()]
    );
    // PEM lines are at most 64 characters.
    assert!(bundle.lines().all(|l| l.len() <= 64));
}

#[test]
fn child_bundle_holds_our_ca_then_the_system_roots() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = authority(tmp.path());
    let bundle = ca.child_bundle_pem().unwrap();
    let certs = certs_in(&bundle);
    assert_eq!(&certs[0], ca.cert_der());
    let system = roots::system_roots();
    assert_eq!(certs.len(), 1 + system.certs.len());
    if Path::new(SYSTEM_BUNDLES[0]).is_file() {
        assert!(certs.len() > 10, "this machine's roots follow ours");
    }
}

#[test]
fn system_roots_come_from_the_first_usable_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let a = authority(&tmp.path().join("a"));
    let b = authority(&tmp.path().join("b"));
    let empty = tmp.path().join("empty.pem");
    fs::write(&empty, "").unwrap();
    let full = tmp.path().join("full.pem");
    fs::write(&full, format!("{}{}", a.cert_pem(), b.cert_pem())).unwrap();
    let missing = tmp.path().join("missing.pem");
    let found = roots::system_roots_from(&[&missing, &empty, &full], &[]);
    // The order of system roots carries no meaning (the loader may reorder them).
    let mut got = found.certs.clone();
    got.sort_by(|x, y| x.as_ref().cmp(y.as_ref()));
    let mut want = vec![a.cert_der().clone(), b.cert_der().clone()];
    want.sort_by(|x, y| x.as_ref().cmp(y.as_ref()));
    assert_eq!(got, want);
    assert_eq!(found.source.as_deref(), Some(full.as_path()));
    let none = roots::system_roots_from(&[&missing, &empty], &[]);
    assert!(none.certs.is_empty() && none.source.is_none());
}

#[test]
fn upstream_roots_add_the_extra_file_and_reject_bad_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = authority(&tmp.path().join("ca"));
    let system = roots::system_roots().certs.clone();
    let base = roots::upstream_roots_with(system.clone(), None).unwrap();

    let extra = tmp.path().join("extra.pem");
    fs::write(&extra, ca.cert_pem()).unwrap();
    let with_extra = roots::upstream_roots_with(system.clone(), Some(&extra)).unwrap();
    assert_eq!(with_extra.len(), base.len() + 1);
    // The extra root really is trusted: a handshake with a leaf of that CA succeeds.
    let only_extra = roots::upstream_roots_with(Vec::new(), Some(&extra)).unwrap();
    handshake(
        client_config(only_extra, &[]),
        ca.server_config("registry.internal").unwrap(),
        "registry.internal",
    )
    .unwrap();
    // And the public entry point agrees.
    assert_eq!(
        upstream_roots(Some(&extra)).unwrap().len(),
        with_extra.len()
    );

    let cases: [(&str, &str); 4] = [
        ("empty", ""),
        ("text", "hello world\n"),
        ("truncated", "-----BEGIN CERTIFICATE-----\nMIIB\n"),
        (
            "private key",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ),
    ];
    for (what, contents) in cases {
        let path = tmp.path().join(format!("{what}.pem"));
        fs::write(&path, contents).unwrap();
        let text = roots::upstream_roots_with(system.clone(), Some(&path))
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("--upstream-ca") && text.contains(&path.display().to_string()),
            "{what}: {text}"
        );
    }
    let missing = tmp.path().join("nope.pem");
    let err = roots::upstream_roots_with(system, Some(&missing)).unwrap_err();
    assert!(matches!(err, Error::UpstreamCaRead { .. }), "{err:?}");
    assert!(err.to_string().contains("nope.pem"));
}

// ---------------------------------------------------------------------------------------------
// httpjail trust, against a fake store

struct FakeStore {
    tmp: tempfile::TempDir,
    store: TrustStore,
}

impl FakeStore {
    /// A store whose update tool concatenates a base bundle and the anchors, and counts runs.
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let anchors = tmp.path().join("anchors");
        fs::create_dir(&anchors).unwrap();
        let base = tmp.path().join("base.pem");
        let other = authority(&tmp.path().join("unrelated"));
        fs::write(&base, other.cert_pem()).unwrap();
        let bundle = tmp.path().join("bundle.pem");
        fs::copy(&base, &bundle).unwrap();
        let script = r#"set -e
cat "$1" > "$3"
for f in "$2"/*.crt; do [ -e "$f" ] && cat "$f" >> "$3"; done
echo run >> "$4"
echo "Updating certificates... done."
"#;
        let store = TrustStore {
            name: "Fake".to_owned(),
            anchor: anchors.join("httpjail-ca.crt"),
            bundle: bundle.clone(),
            update_cmd: vec![
                "sh".into(),
                "-c".into(),
                script.into(),
                "update".into(),
                base.into(),
                anchors.into(),
                bundle.into(),
                tmp.path().join("runs").into(),
            ],
        };
        Self { tmp, store }
    }

    fn runs(&self) -> usize {
        fs::read_to_string(self.tmp.path().join("runs"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}

fn trust(
    action: TrustAction,
    location: &CaLocation,
    store: Option<&TrustStore>,
    is_root: bool,
) -> (Result<i32, Error>, String) {
    let mut out = Vec::new();
    let result = trust::run_with(action, location, store, is_root, &mut out);
    (result, String::from_utf8(out).unwrap())
}

#[test]
fn trust_show_install_uninstall_against_a_fake_store() {
    let fake = FakeStore::new();
    let home = tempfile::tempdir().unwrap();
    let location = managed(home.path());

    let (code, out) = trust(TrustAction::Show, &location, Some(&fake.store), false);
    assert_eq!(code.unwrap(), 1, "not trusted yet: {out}");
    assert!(out.contains("not trusted"), "{out}");
    assert!(out.contains(&location.cert.display().to_string()), "{out}");
    let ca = Authority::load_or_create(&location).unwrap();
    assert!(out.contains(&ca.fingerprint()), "{out}");

    let (result, _) = trust(TrustAction::Install, &location, Some(&fake.store), false);
    let err = result.unwrap_err();
    assert!(matches!(err, Error::NotRoot { .. }), "{err:?}");
    assert!(
        err.to_string().contains("sudo httpjail trust --install"),
        "{err}"
    );
    assert!(!fake.store.anchor.exists());
    assert_eq!(fake.runs(), 0);

    let (code, out) = trust(TrustAction::Install, &location, Some(&fake.store), true);
    assert_eq!(code.unwrap(), 0, "{out}");
    assert_eq!(
        fs::read_to_string(&fake.store.anchor).unwrap(),
        ca.cert_pem()
    );
    assert_eq!(mode(&fake.store.anchor), 0o644);
    assert_eq!(fake.runs(), 1);
    assert!(out.contains("now trusts"), "{out}");
    assert_eq!(
        dir_names(fake.store.anchor_dir()),
        ["httpjail-ca.crt"],
        "no temp left"
    );

    let (code, out) = trust(TrustAction::Show, &location, Some(&fake.store), false);
    assert_eq!(code.unwrap(), 0, "trusted now: {out}");
    assert!(out.contains(": trusted"), "{out}");

    let (code, out) = trust(TrustAction::Install, &location, Some(&fake.store), true);
    assert_eq!(code.unwrap(), 0);
    assert!(out.contains("already installed"), "{out}");
    assert_eq!(fake.runs(), 1, "no second update run");

    let (result, _) = trust(TrustAction::Uninstall, &location, Some(&fake.store), false);
    assert!(
        result
            .unwrap_err()
            .to_string()
            .contains("sudo httpjail trust --uninstall")
    );
    assert!(fake.store.anchor.exists());

    let (code, out) = trust(TrustAction::Uninstall, &location, Some(&fake.store), true);
    assert_eq!(code.unwrap(), 0, "{out}");
    assert!(!fake.store.anchor.exists());
    assert_eq!(fake.runs(), 2);
    let (code, _) = trust(TrustAction::Show, &location, Some(&fake.store), false);
    assert_eq!(code.unwrap(), 1, "untrusted again");

    let (code, out) = trust(TrustAction::Uninstall, &location, Some(&fake.store), true);
    assert_eq!(code.unwrap(), 0);
    assert!(out.contains("not installed"), "{out}");
    assert_eq!(fake.runs(), 2, "nothing to update");
}

#[test]
fn trust_reports_failing_or_missing_update_tools() {
    let fake = FakeStore::new();
    let home = tempfile::tempdir().unwrap();
    let location = managed(home.path());
    let mut store = fake.store.clone();
    store.update_cmd = vec![
        "sh".into(),
        "-c".into(),
        "echo 'boom: no space' >&2; exit 3".into(),
    ];
    let (result, _) = trust(TrustAction::Install, &location, Some(&store), true);
    let text = result.unwrap_err().to_string();
    assert!(
        text.contains("boom: no space") && text.contains("exit status: 3"),
        "{text}"
    );

    store.update_cmd = vec!["/nonexistent/update-tool".into()];
    let (result, _) = trust(TrustAction::Uninstall, &location, Some(&store), true);
    let err = result.unwrap_err();
    assert!(matches!(err, Error::UpdateToolSpawn { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/update-tool"));
}

#[test]
fn trust_without_a_known_store() {
    let home = tempfile::tempdir().unwrap();
    let location = managed(home.path());
    for action in [TrustAction::Install, TrustAction::Uninstall] {
        let (result, _) = trust(action, &location, None, true);
        let text = result.unwrap_err().to_string();
        assert!(
            text.contains("/usr/local/share/ca-certificates")
                && text.contains("/etc/pki/ca-trust/source/anchors"),
            "{text}"
        );
    }
    // Show still works and reports "not trusted" (a fresh CA is in no system bundle).
    let (code, out) = trust(TrustAction::Show, &location, None, false);
    assert_eq!(code.unwrap(), 1, "{out}");
}

#[test]
fn known_stores_describe_the_distributions() {
    let debian = TrustStore::debian();
    assert_eq!(
        debian.anchor,
        Path::new("/usr/local/share/ca-certificates/httpjail-ca.crt")
    );
    assert_eq!(debian.update_cmd, ["update-ca-certificates"]);
    let fedora = TrustStore::fedora();
    assert_eq!(
        fedora.anchor,
        Path::new("/etc/pki/ca-trust/source/anchors/httpjail-ca.pem")
    );
    assert_eq!(fedora.update_cmd, ["update-ca-trust", "extract"]);
    let known = TrustStore::known();
    let mut dirs: Vec<&Path> = known.iter().map(TrustStore::anchor_dir).collect();
    dirs.sort();
    dirs.dedup();
    assert_eq!(dirs.len(), known.len(), "detection is unambiguous");
    assert!(
        known
            .iter()
            .all(|s| s.anchor.file_stem().unwrap() == trust::ANCHOR_NAME)
    );
}

#[test]
fn error_chain_joins_causes_once() {
    let err = Error::Read {
        path: PathBuf::from("/x/ca-key.pem"),
        source: std::io::Error::from_raw_os_error(libc::EACCES),
    };
    let text = err.chain();
    assert!(text.starts_with("read CA file `/x/ca-key.pem`"), "{text}");
    assert!(text.contains("Permission denied"), "{text}");
}
