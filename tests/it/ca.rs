//! The certificate authority through the real binary (`httpjail trust`, which loads or creates
//! the CA) and through the library API with real TLS over loopback.

use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use httpjail::ca::{self, Authority};
use httpjail::config::CaLocation;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{Run, TestHome, bin, run};

fn ca_dir(home: &TestHome) -> PathBuf {
    home.path().join(".config").join("httpjail")
}

fn fingerprint_line(stdout: &str) -> String {
    stdout
        .lines()
        .find(|l| l.trim_start().starts_with("SHA-256:"))
        .unwrap_or_else(|| panic!("no fingerprint in:\n{stdout}"))
        .trim()
        .to_owned()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("read directory")
        .map(|e| {
            e.expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

/// Whether root-only tests can run; under `CI=true` a missing prerequisite fails the test.
fn can_run_as_nobody(test: &str) -> bool {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let root = nix::unistd::geteuid().is_root();
    let setpriv = Command::new("setpriv")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if root && setpriv {
        return true;
    }
    assert!(
        !ci,
        "{test}: needs root and setpriv (root={root}, setpriv={setpriv})"
    );
    eprintln!("skipping {test}: needs root and setpriv");
    false
}

/// `httpjail ARGS` as the unprivileged user `nobody`, with `HOME` set to `home`.
fn as_nobody(home: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bin())
        .args(args)
        .env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null());
    run(&mut cmd)
}

#[test]
fn processes_racing_to_create_the_ca_end_with_one() {
    for _round in 0..3 {
        let home = TestHome::new();
        let children: Vec<_> = (0..8)
            .map(|_| {
                home.httpjail()
                    .arg("trust")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn httpjail trust")
            })
            .collect();
        let outputs: Vec<Run> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap().into())
            .collect();
        for out in &outputs {
            // A fresh CA is in no system store: "not trusted" is exit 1; errors would be 125.
            assert_eq!(out.code, Some(1), "{out:?}");
        }
        let first = fingerprint_line(&outputs[0].stdout);
        for out in &outputs {
            assert_eq!(fingerprint_line(&out.stdout), first, "one CA for all");
        }
        let dir = ca_dir(&home);
        assert_eq!(names(&dir), [".ca.lock", "ca-cert.pem", "ca-key.pem"]);
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(
            fs::metadata(dir.join("ca-key.pem")).unwrap().mode() & 0o777,
            0o600
        );
        // The library loads the same CA the processes agreed on.
        let location = CaLocation {
            cert: dir.join("ca-cert.pem"),
            key: dir.join("ca-key.pem"),
            managed_dir: Some(dir.clone()),
            owner: None,
        };
        let authority = Authority::load_or_create(&location).unwrap();
        assert!(first.ends_with(&authority.fingerprint()), "{first}");
    }
}

#[test]
fn a_corrupt_ca_fails_with_125_and_is_left_alone() {
    let home = TestHome::new();
    assert_eq!(run(home.httpjail().arg("trust")).code, Some(1));
    let cert = ca_dir(&home).join("ca-cert.pem");
    fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnope\n").unwrap();
    let out = run(home.httpjail().arg("trust"));
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(
        out.stderr.starts_with("httpjail: error:")
            && out.stderr.contains(&cert.display().to_string()),
        "{out:?}"
    );
    assert_eq!(
        fs::read_to_string(&cert).unwrap(),
        "-----BEGIN CERTIFICATE-----\nnope\n"
    );
}

#[test]
fn a_user_supplied_ca_is_used_and_not_written() {
    let home = TestHome::new();
    // Make a CA with the library in one place, then hand its files over as "the user's CA".
    let made = home.path().join("made");
    let location = CaLocation {
        cert: made.join("ca-cert.pem"),
        key: made.join("ca-key.pem"),
        managed_dir: Some(made.clone()),
        owner: None,
    };
    let authority = Authority::load_or_create(&location).unwrap();
    let mine = home.path().join("mine");
    fs::create_dir(&mine).unwrap();
    fs::copy(&location.cert, mine.join("corp.pem")).unwrap();
    fs::copy(&location.key, mine.join("corp-key.pem")).unwrap();

    let out = run(home
        .httpjail()
        .arg("trust")
        .env("HTTPJAIL_CA_CERT", mine.join("corp.pem"))
        .env("HTTPJAIL_CA_KEY", mine.join("corp-key.pem")));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(fingerprint_line(&out.stdout).ends_with(&authority.fingerprint()));
    assert_eq!(
        names(&mine),
        ["corp-key.pem", "corp.pem"],
        "nothing written"
    );
    assert!(
        !home.path().join(".config").exists(),
        "no managed CA created"
    );

    let out = run(home
        .httpjail()
        .arg("trust")
        .env("HTTPJAIL_CA_CERT", mine.join("missing.pem")));
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(
        out.stderr.contains("HTTPJAIL_CA_CERT") && out.stderr.contains("missing.pem"),
        "{out:?}"
    );
}

#[test]
fn install_and_uninstall_need_root_and_say_sudo() {
    if !can_run_as_nobody("install_and_uninstall_need_root_and_say_sudo") {
        return;
    }
    let home = TestHome::new();
    fs::set_permissions(home.path(), fs::Permissions::from_mode(0o755)).unwrap();
    for flag in ["--install", "--uninstall"] {
        let out = as_nobody(home.path(), &["trust", flag]);
        assert_eq!(out.code, Some(125), "{out:?}");
        assert!(
            out.stderr.contains(&format!("sudo httpjail trust {flag}")),
            "{out:?}"
        );
        assert!(
            out.stderr.lines().all(|l| l.starts_with("httpjail:")),
            "{out:?}"
        );
    }
    assert!(
        !home.path().join(".config").exists(),
        "refused before touching anything"
    );
}

#[test]
fn an_unwritable_home_is_a_clear_error() {
    if !can_run_as_nobody("an_unwritable_home_is_a_clear_error") {
        return;
    }
    let home = TestHome::new();
    fs::set_permissions(home.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // Owned by root, readable by everyone, writable by nobody else.
    let locked = home.path().join("locked");
    fs::create_dir(&locked).unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
    let out = as_nobody(&locked, &["trust"]);
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(out.stderr.contains("not writable"), "{out:?}");
    assert!(
        out.stderr.contains(&format!("`{}`", locked.display())),
        "{out:?}"
    );
    assert!(out.stderr.contains("HTTPJAIL_CA_CERT"), "{out:?}");
    assert_eq!(names(&locked), Vec::<String>::new());
}

/// A TLS echo server on loopback presenting `authority`'s leaf for `name`; returns its port.
async fn echo_server(authority: Arc<Authority>, name: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let port = listener.local_addr().expect("local address").port();
    tokio::spawn(async move {
        let config = authority.server_config(name).expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (tcp, _) = listener.accept().await.expect("accept");
        let tls = acceptor.accept(tcp).await.expect("server handshake");
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let mut tls = BufReader::new(tls);
        let mut line = String::new();
        tls.read_line(&mut line).await.expect("read request line");
        let reply = format!(
            "{} {}",
            String::from_utf8_lossy(&alpn.unwrap_or_default()),
            line
        );
        tls.get_mut()
            .write_all(reply.as_bytes())
            .await
            .expect("write reply");
        tls.get_mut().shutdown().await.expect("close");
    });
    port
}

#[tokio::test]
async fn tokio_rustls_clients_trust_leaves_over_loopback() {
    let home = TestHome::new();
    let dir = home.path().join("ca");
    let authority = Arc::new(
        Authority::load_or_create(&CaLocation {
            cert: dir.join("ca-cert.pem"),
            key: dir.join("ca-key.pem"),
            managed_dir: Some(dir.clone()),
            owner: None,
        })
        .unwrap(),
    );
    // The client trusts the system roots plus our CA given as --upstream-ca.
    let roots = ca::upstream_roots(Some(&dir.join("ca-cert.pem"))).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(authority.provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));

    for (name, server_name) in [
        ("localhost", ServerName::try_from("localhost").unwrap()),
        ("127.0.0.1", ServerName::try_from("127.0.0.1").unwrap()),
    ] {
        let port = echo_server(Arc::clone(&authority), name).await;
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let tls = connector
            .connect(server_name.to_owned(), tcp)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut tls = BufReader::new(tls);
        tls.get_mut().write_all(b"hello\n").await.unwrap();
        let mut reply = String::new();
        tls.read_line(&mut reply).await.unwrap();
        assert_eq!(reply, "h2 hello\n", "{name}");
    }
}
