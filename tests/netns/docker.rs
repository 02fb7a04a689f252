//! `--docker-run`: the real binary runs a busybox container whose network is jailed, against
//! local upstreams on the host's loopback reached only through `--resolve`.
//!
//! Needs root, `nft`, a running Docker daemon and the test image `httpjail-test-busybox`
//! (imported here from the host's static busybox when missing). Without them each test skips
//! with a printed reason, except with `CI=true`, where that is a failure. Every test checks
//! that nothing is left afterwards: no container of its httpjail, no new Docker network, no
//! host nft table.

use std::io::Read as _;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use crate::support::{self, eventually, skip_or_fail};
use crate::tls::TestCa;
use crate::upstream::TestUpstream;

/// The image the tests run: busybox and a few applet links, nothing else.
const IMAGE: &str = "httpjail-test-busybox:latest";
const APPLETS: &[&str] = &[
    "sh", "wget", "nslookup", "cat", "echo", "sleep", "id", "env", "ls",
];
const BUSYBOX: &str = "/bin/busybox";

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run docker")
}

/// Whether the Docker tests can run here (root, nft, a daemon, the image); imports the image
/// when missing.
fn prerequisites() -> bool {
    if !support::prerequisites() {
        return false;
    }
    let client = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdin(Stdio::null())
        .output();
    match client {
        Err(e) => return skip_or_fail(&format!("the Docker tests need `docker`: {e}")),
        Ok(o) if !o.status.success() => {
            return skip_or_fail(&format!(
                "the Docker tests need a running Docker daemon: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Ok(_) => {}
    }
    // One import at a time, across test processes (two would leave an untagged image).
    let _guard = lock_file("httpjail-docker-tests-image.lock", true);
    if docker(&["image", "inspect", IMAGE]).status.success() {
        return true;
    }
    if !Path::new(BUSYBOX).exists() {
        return skip_or_fail(&format!(
            "the Docker tests need the image {IMAGE}, made from {BUSYBOX} (busybox-static)"
        ));
    }
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("bin")).unwrap();
    std::fs::copy(BUSYBOX, root.path().join("bin/busybox")).unwrap();
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", root.path().join("bin").join(applet)).unwrap();
    }
    let imported = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C '{}' -c . | docker import - {IMAGE}",
            root.path().display()
        ))
        .output()
        .unwrap();
    assert!(
        imported.status.success(),
        "import {IMAGE}: {}",
        String::from_utf8_lossy(&imported.stderr)
    );
    true
}

/// Prerequisites, and a lock on the Docker tests: shared by all, exclusive for the one that
/// leaves a container behind on purpose (another test's `--docker-run` would remove it, as
/// it should, before `--cleanup` could).
fn prerequisites_locked(exclusive: bool) -> Option<nix::fcntl::Flock<std::fs::File>> {
    if !prerequisites() {
        return None;
    }
    Some(lock_file("httpjail-docker-tests.lock", exclusive))
}

/// A lock on a file of the temporary directory, held until dropped (works across processes,
/// and across threads that each open the file).
fn lock_file(name: &str, exclusive: bool) -> nix::fcntl::Flock<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join(name))
        .unwrap();
    let mode = if exclusive {
        nix::fcntl::FlockArg::LockExclusive
    } else {
        nix::fcntl::FlockArg::LockShared
    };
    nix::fcntl::Flock::lock(file, mode)
        .map_err(|(_, e)| e)
        .unwrap()
}

/// An HTTP upstream on :80 and an HTTPS one on :443 of a loopback address of their own, known
/// to httpjail as `name.test`.
struct World {
    home: tempfile::TempDir,
    ip: IpAddr,
    http: TestUpstream,
    https: TestUpstream,
    ca_pem: std::path::PathBuf,
    host: HostState,
}

impl World {
    async fn new() -> Self {
        let home = tempfile::Builder::new()
            .prefix("httpjail-docker-")
            .tempdir()
            .unwrap();
        let mut b = [0u8; 2];
        getrandom::fill(&mut b).unwrap();
        let ip = IpAddr::from([127, 89, b[0], b[1].max(1)]);
        let ca = TestCa::new("docker upstream CA");
        let ca_pem = ca.write_pem(home.path(), "upstream-ca.pem");
        let http = TestUpstream::http_at(SocketAddr::new(ip, 80)).await;
        let https = TestUpstream::https_at(SocketAddr::new(ip, 443), &ca, &["name.test"]).await;
        Self {
            home,
            ip,
            http,
            https,
            ca_pem,
            host: HostState::capture(),
        }
    }

    /// `httpjail ARGS` with the world wired in (put `--docker-run -- ...` last in `args`).
    fn httpjail(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(support::httpjail_bin());
        cmd.env_clear()
            .env("PATH", support::JAIL_PATH)
            .env("HOME", self.home.path())
            .arg("--upstream-ca")
            .arg(&self.ca_pem)
            .args(["--resolve", &format!("name.test:80:{}", self.ip)])
            .args(["--resolve", &format!("name.test:443:{}", self.ip)])
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    fn log_path(&self) -> String {
        self.home
            .path()
            .join("requests.jsonl")
            .to_string_lossy()
            .into_owned()
    }

    fn log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// What a run must leave as it found: the host's nft tables and Docker's networks.
#[derive(Debug, PartialEq, Eq)]
struct HostState {
    nft_tables: String,
    networks: String,
}

impl HostState {
    fn capture() -> Self {
        let nft = Command::new("nft")
            .args(["list", "tables"])
            .output()
            .expect("nft");
        let networks = docker(&["network", "ls", "--format", "{{.ID}} {{.Name}}"]);
        Self {
            nft_tables: String::from_utf8_lossy(&nft.stdout).into_owned(),
            networks: String::from_utf8_lossy(&networks.stdout).into_owned(),
        }
    }
}

/// IDs of the containers (running or not) started by httpjail process `pid`.
fn containers_of(pid: u32, role: Option<&str>) -> Vec<String> {
    let pid_filter = format!("label=httpjail.pid={pid}");
    let mut args = vec!["ps", "-a", "-q", "--filter", &pid_filter];
    let role_filter = role.map(|r| format!("label=httpjail.role={r}"));
    if let Some(f) = &role_filter {
        args.extend(["--filter", f]);
    }
    String::from_utf8_lossy(&docker(&args).stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Nothing of httpjail `pid` is left: no container, no Docker network, no host nft table.
fn assert_nothing_left(world: &World, pid: u32) {
    assert_eq!(
        containers_of(pid, None),
        Vec::<String>::new(),
        "containers left by httpjail {pid}"
    );
    let now = HostState::capture();
    assert!(
        !now.nft_tables.contains("httpjail"),
        "an httpjail nft table on the host: {}",
        now.nft_tables
    );
    assert_eq!(
        now, world.host,
        "the host's nft tables or Docker networks changed"
    );
}

struct Out {
    pid: u32,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "httpjail {} exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.pid, self.code, self.stdout, self.stderr
        )
    }
}

fn run(mut cmd: Command) -> Out {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start httpjail");
    let pid = child.id();
    let o = child.wait_with_output().expect("wait for httpjail");
    Out {
        pid,
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Waits until httpjail `pid` has a running container of role `role`; returns its ID.
fn running_container(pid: u32, role: &str) -> String {
    let mut id = String::new();
    eventually(
        &format!("a running {role} container of httpjail {pid}"),
        || {
            let pid_filter = format!("label=httpjail.pid={pid}");
            let role_filter = format!("label=httpjail.role={role}");
            let out = docker(&[
                "ps",
                "-q",
                "--filter",
                &pid_filter,
                "--filter",
                &role_filter,
                "--filter",
                "status=running",
            ]);
            id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            !id.is_empty()
        },
    );
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn http_allowed_denied_dns_non_http_and_the_exit_code() {
    let Some(_lock) = prerequisites_locked(false) else {
        return;
    };
    let w = World::new().await;
    let script = "\
        wget -qO- http://name.test/allowed; echo; \
        wget -qO- http://name.test/denied; echo denied_rc=$?; \
        nslookup some-random-name-8c1f.example; \
        wget -qO- http://192.0.2.77:8080/; echo tcp8080_rc=$?; \
        wget -qO- http://[2001:db8::1]:80/; echo ipv6_rc=$?; \
        busybox grep CapBnd /proc/self/status; \
        exit 7";
    let log = w.log_path();
    let out = run(w.httpjail(&[
        "--js",
        "r.host === 'name.test' && r.path !== '/denied'",
        "--request-log",
        &log,
        "--request-log-format",
        "json",
        "--docker-run",
        "--",
        "--rm",
        IMAGE,
        "sh",
        "-c",
        script,
    ]));
    assert_eq!(out.code, Some(7), "the container's exit code: {out:?}");
    // Allowed: the upstream answered with its echo of the request.
    assert!(out.stdout.contains("\"path\":\"/allowed\""), "{out:?}");
    // Denied: a 403 that busybox wget reports, and nothing reached the upstream.
    assert!(out.stderr.contains("403 Forbidden"), "{out:?}");
    assert!(out.stdout.contains("denied_rc=1"), "{out:?}");
    let paths: Vec<String> = w
        .http
        .seen()
        .iter()
        .map(|s| s.path_and_query.clone())
        .collect();
    assert_eq!(paths, ["/allowed"], "the denied request must not arrive");
    let records = w.log();
    let decisions: Vec<(String, String)> = records
        .iter()
        .map(|r| (r["decision"].to_string(), r["url"].to_string()))
        .collect();
    assert_eq!(
        decisions[..2],
        [
            ("\"allow\"".into(), "\"http://name.test/allowed\"".into()),
            ("\"deny\"".into(), "\"http://name.test/denied\"".into()),
        ],
        "{records:?}"
    );
    // With IPv6 in the namespace, the IPv6 literal would reach the proxy: denied then.
    assert!(
        decisions[2..].iter().all(|(d, _)| d == "\"deny\""),
        "{records:?}"
    );
    // The jail's resolver answered, whatever the container's resolv.conf says.
    assert!(out.stdout.contains("6.6.6.6"), "DNS inside: {out:?}");
    assert_eq!(records[0]["original_dst"], "6.6.6.6:80", "{records:?}");
    // Other ports are refused at once (a reset), not timed out.
    assert!(out.stdout.contains("tcp8080_rc=1"), "{out:?}");
    assert!(
        out.stderr.contains("Connection refused"),
        "a reset, not a timeout: {out:?}"
    );
    // No IPv6 way out either (Docker leaves IPv6 disabled in this namespace).
    assert!(out.stdout.contains("ipv6_rc=1"), "{out:?}");
    // No capability that could undo the jail, CAP_NET_RAW (a Docker default) included.
    let bounding = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
        .unwrap_or_else(|| panic!("no CapBnd line: {out:?}"));
    for (name, bit) in [
        ("NET_ADMIN", 12),
        ("NET_RAW", 13),
        ("SYS_MODULE", 16),
        ("SYS_PTRACE", 19),
        ("SYS_ADMIN", 21),
    ] {
        assert_eq!(bounding & (1 << bit), 0, "{name} in {bounding:x}");
    }
    assert_nothing_left(&w, out.pid);
}

/// busybox wget cannot talk to the proxy over TLS (its ClientHello has no
/// signature_algorithms extension, which rustls requires), so the host's curl runs in the
/// container, from the host's `/usr` mounted read-only: it verifies the certificate against
/// the CA bundle httpjail mounted and pointed `CURL_CA_BUNDLE` at.
#[tokio::test(flavor = "multi_thread")]
async fn https_is_intercepted_with_our_ca_mounted_in_the_container() {
    let Some(_lock) = prerequisites_locked(false) else {
        return;
    };
    let w = World::new().await;
    let script = "\
        /usr/bin/curl -sS https://name.test/tls; echo; \
        /usr/bin/curl -sS -o /dev/null -w 'denied=%{http_code}\\n' https://name.test/nope; \
        echo bundle=$CURL_CA_BUNDLE; \
        /usr/bin/curl -sS -o /dev/null --cacert /dev/null https://name.test/unverified; \
        echo unverified_rc=$?";
    let log = w.log_path();
    let mut args = vec![
        "--js",
        "r.path !== '/nope'",
        "--request-log",
        &log,
        "--request-log-format",
        "json",
        "--docker-run",
        "--",
        "--rm",
    ];
    // The host's curl and its libraries (`/lib*` may be links into `/usr`).
    let mut mounts = vec!["/usr:/usr:ro".to_owned()];
    for dir in ["/lib", "/lib64"] {
        if let Ok(real) = std::fs::canonicalize(dir) {
            mounts.push(format!("{}:{dir}:ro", real.display()));
        }
    }
    for m in &mounts {
        args.extend(["-v", m]);
    }
    // Not root in the container, and httpjail under umask 077: the CA must still be readable.
    args.extend(["--user", "1000:1000", IMAGE, "sh", "-c", script]);
    let mut cmd = w.httpjail(&args);
    // SAFETY: umask is async-signal-safe; it runs in the child before exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
            Ok(())
        });
    }
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("\"path\":\"/tls\""), "{out:?}");
    assert!(out.stdout.contains("denied=403"), "{out:?}");
    assert!(
        out.stdout.contains("bundle=/etc/httpjail/ca-bundle.pem"),
        "{out:?}"
    );
    // Without our CA the certificate is refused: it really is ours that made it work.
    assert!(!out.stdout.contains("unverified_rc=0"), "{out:?}");
    assert_eq!(w.https.count(), 1, "only the allowed request arrives");
    let urls: Vec<String> = w.log().iter().map(|r| r["url"].to_string()).collect();
    assert!(
        urls.contains(&"\"https://name.test/tls\"".to_owned())
            && urls.contains(&"\"https://name.test/nope\"".to_owned()),
        "{urls:?}"
    );
    assert_nothing_left(&w, out.pid);
}

#[tokio::test(flavor = "multi_thread")]
async fn forbidden_options_and_missing_requirements_are_clear_errors_before_docker_is_used() {
    let Some(_lock) = prerequisites_locked(false) else {
        return;
    };
    let w = World::new().await;
    // A daemon address that does not exist: had httpjail contacted Docker, the error would
    // be about the daemon, not about the option.
    let nowhere = "unix:///nonexistent/httpjail-test.sock";
    for (args, needle) in [
        (&["--network", "host"][..], "--network host"),
        (&["--net=none"], "--net none"),
        (&["--privileged"], "--privileged"),
        (&["--cap-add", "net_admin"], "NET_ADMIN"),
        (&["--cap-add=CAP_SYS_ADMIN"], "SYS_ADMIN"),
        (&["--add-host", "x.test:1.2.3.4"], "--add-host"),
        (&["--dns=1.1.1.1"], "--dns"),
        (&["-p", "8080:80"], "--publish"),
        (&["--pid=host"], "--pid host"),
        (
            &["-v", "/var/run/docker.sock:/var/run/docker.sock"],
            "socket",
        ),
        (&["--mount", "type=bind,src=/run,dst=/r"], "socket"),
        (&["-d"], "--detach"),
    ] {
        let mut full = vec!["--docker-run", "--", "--rm"];
        full.extend_from_slice(args);
        full.extend([IMAGE, "true"]);
        let mut cmd = w.httpjail(&full);
        cmd.env("DOCKER_HOST", nowhere);
        let out = run(cmd);
        assert_eq!(out.code, Some(125), "{args:?}: {out:?}");
        assert!(out.stderr.contains("refused"), "{args:?}: {out:?}");
        assert!(out.stderr.contains(needle), "{args:?}: {out:?}");
        assert!(!out.stderr.contains("daemon"), "{args:?}: {out:?}");
    }
    // An unknown option without `=` is refused too (its value could hide a forbidden one).
    let mut cmd = w.httpjail(&["--docker-run", "--", "--brand-new", "--privileged", IMAGE]);
    cmd.env("DOCKER_HOST", nowhere);
    let out = run(cmd);
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(out.stderr.contains("--brand-new=VALUE"), "{out:?}");
    // The daemon unreachable: docker's own message and what to do.
    let mut cmd = w.httpjail(&["--docker-run", "--", "--rm", IMAGE, "true"]);
    cmd.env("DOCKER_HOST", nowhere);
    let out = run(cmd);
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(
        out.stderr.contains("cannot reach the Docker daemon"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("nonexistent"),
        "docker's message: {out:?}"
    );
    assert!(out.stderr.contains("hint:"), "{out:?}");
    // Without root: a clear error naming sudo, before anything else.
    let (uid, gid) = support::test_user();
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={uid}"),
        &format!("--regid={gid}"),
        "--clear-groups",
    ])
    .arg(support::httpjail_bin())
    .args(["--docker-run", "--", "--rm", IMAGE, "true"])
    .env_clear()
    .env("PATH", support::JAIL_PATH)
    .env("HOME", w.home.path())
    .stdin(Stdio::null());
    let out = run(cmd);
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(out.stderr.contains("needs root"), "{out:?}");
    assert!(out.stderr.contains("sudo"), "{out:?}");
    assert_nothing_left(&w, out.pid);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_docker_jails_at_once() {
    let Some(_lock) = prerequisites_locked(false) else {
        return;
    };
    let w = World::new().await;
    let start = |tag: &str| {
        let script = format!("sleep 2; wget -qO- http://name.test/{tag}");
        w.httpjail(&[
            "--js",
            "true",
            "--docker-run",
            "--",
            "--rm",
            IMAGE,
            "sh",
            "-c",
            &script,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    let (a, b) = (start("first"), start("second"));
    let (pid_a, pid_b) = (a.id(), b.id());
    // Both are up at the same time, each with a pause container of its own.
    eventually("both jails running at once", || {
        let (pause_a, pause_b) = (
            containers_of(pid_a, Some("pause")),
            containers_of(pid_b, Some("pause")),
        );
        pause_a.len() == 1 && pause_b.len() == 1 && pause_a != pause_b
    });
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    for (o, tag) in [(&a, "first"), (&b, "second")] {
        assert!(o.status.success(), "{o:?}");
        assert!(
            String::from_utf8_lossy(&o.stdout).contains(&format!("\"path\":\"/{tag}\"")),
            "{o:?}"
        );
    }
    assert_eq!(w.http.count(), 2);
    assert_nothing_left(&w, pid_a);
    assert_nothing_left(&w, pid_b);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_reaches_the_container_and_a_second_ctrl_c_kills_it() {
    let Some(_lock) = prerequisites_locked(false) else {
        return;
    };
    let w = World::new().await;
    let spawn = |script: &str| {
        let mut child = w
            .httpjail(&["--docker-run", "--", "--rm", IMAGE, "sh", "-c", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stdout);
        let mut pipe = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        (child, stdout, reader)
    };
    let signal = |pid: u32, sig| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
    };
    // A container that ends on SIGTERM, and one that shrugs off SIGINT.
    let (mut polite, polite_out, polite_reader) =
        spawn("trap 'echo got-term; exit 42' TERM; echo ready; sleep 60 & wait");
    let (mut stubborn, stubborn_out, stubborn_reader) =
        spawn("trap 'echo got-int' INT; echo ready; while true; do sleep 1; done");
    let (polite_pid, stubborn_pid) = (polite.id(), stubborn.id());
    for out in [&polite_out, &stubborn_out] {
        eventually("the containers to start", || {
            out.lock().unwrap().contains("ready")
        });
    }
    signal(polite_pid, nix::sys::signal::Signal::SIGTERM);
    signal(stubborn_pid, nix::sys::signal::Signal::SIGINT);
    // The first SIGINT reaches the container, which goes on; the second kills it.
    eventually("the container to see the first SIGINT", || {
        stubborn_out.lock().unwrap().contains("got-int")
    });
    signal(stubborn_pid, nix::sys::signal::Signal::SIGINT);
    let polite_code = polite.wait().unwrap().code();
    let stubborn_code = stubborn.wait().unwrap().code();
    polite_reader.join().unwrap();
    stubborn_reader.join().unwrap();
    assert_eq!(polite_code, Some(42), "{}", polite_out.lock().unwrap());
    assert!(polite_out.lock().unwrap().contains("got-term"));
    assert_eq!(stubborn_code, Some(137), "killed by the second SIGINT");
    assert_nothing_left(&w, polite_pid);
    assert_nothing_left(&w, stubborn_pid);
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_kills_the_container() {
    let Some(_lock) = prerequisites_locked(false) else {
        return;
    };
    let w = World::new().await;
    let out = run(w.httpjail(&[
        "--timeout",
        "1",
        "--docker-run",
        "--",
        "--rm",
        IMAGE,
        "sleep",
        "60",
    ]));
    assert_eq!(out.code, Some(124), "{out:?}");
    assert!(out.stderr.contains("--timeout"), "{out:?}");
    assert_nothing_left(&w, out.pid);
}

#[tokio::test(flavor = "multi_thread")]
async fn after_sigkill_the_container_stays_jailed_and_cleanup_removes_it() {
    let Some(_lock) = prerequisites_locked(true) else {
        return;
    };
    let w = World::new().await;
    let mut child = w
        .httpjail(&[
            "--js",
            "true",
            "--docker-run",
            "--",
            "--rm",
            IMAGE,
            "sleep",
            "60",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let container = running_container(pid, "container");
    let pause = running_container(pid, "pause");
    child.kill().unwrap();
    child.wait().unwrap();
    // The namespace keeps its rules but nobody serves its listeners: nothing gets out.
    let probe = docker(&[
        "exec",
        &container,
        "wget",
        "-qO-",
        "-T",
        "5",
        "http://name.test/after-kill",
    ]);
    assert!(!probe.status.success(), "{probe:?}");
    assert_eq!(
        w.http.count(),
        0,
        "a request left the jail after httpjail died"
    );
    assert_eq!(
        containers_of(pid, Some("pause")),
        std::slice::from_ref(&pause)
    );
    let cleanup = Command::new(support::httpjail_bin())
        .arg("--cleanup")
        .env("HOME", w.home.path())
        .output()
        .unwrap();
    assert!(cleanup.status.success(), "{cleanup:?}");
    let said = String::from_utf8_lossy(&cleanup.stderr);
    assert!(said.contains(&pause[..12]), "{said}");
    // The user's container was killed and, started with --rm, removed by Docker.
    eventually("the user's container to be removed", || {
        containers_of(pid, None).is_empty()
    });
    assert_nothing_left(&w, pid);
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_reach_only_their_host_and_the_container_sees_the_placeholder() {
    let Some(_lock) = prerequisites_locked(false) else {
        return;
    };
    let w = World::new().await;
    let real = "s3cr3t-docker-token-5f1e";
    let script = "\
        echo token=$TOKEN; \
        /usr/bin/curl -sS -o /dev/null -H \"Authorization: Bearer $TOKEN\" https://name.test/with-secret; echo; \
        /usr/bin/curl -sS -o /dev/null -w 'plain=%{http_code}\\n' -H \"X-T: $TOKEN\" http://name.test/leak";
    let log = w.log_path();
    let mut args = vec![
        "--js",
        "true",
        "--secret",
        "TOKEN=name.test",
        "--request-log",
        &log,
        "--request-log-format",
        "json",
        "--docker-run",
        "--",
        "--rm",
        "-e",
        "TOKEN",
    ];
    let mut mounts = vec!["/usr:/usr:ro".to_owned()];
    for dir in ["/lib", "/lib64"] {
        if let Ok(real) = std::fs::canonicalize(dir) {
            mounts.push(format!("{}:{dir}:ro", real.display()));
        }
    }
    for m in &mounts {
        args.extend(["-v", m]);
    }
    args.extend([IMAGE, "sh", "-c", script]);
    let mut cmd = w.httpjail(&args);
    cmd.env("TOKEN", real);
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{out:?}");
    let token = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("token="))
        .unwrap_or_default()
        .to_owned();
    assert!(
        token.starts_with("httpjail-secret-TOKEN-"),
        "the container sees the placeholder: {out:?}"
    );
    assert!(
        !out.stdout.contains(real) && !out.stderr.contains(real),
        "{out:?}"
    );
    // The bound host received the real value over https.
    let seen = w.https.seen();
    assert_eq!(seen.len(), 1, "{out:?}");
    assert_eq!(seen[0].headers["authorization"], format!("Bearer {real}"));
    // Plain http never carries a secret, even to its own host.
    assert!(out.stdout.contains("plain=403"), "{out:?}");
    assert_eq!(w.http.count(), 0);
    let log = std::fs::read_to_string(w.log_path()).unwrap();
    assert!(log.contains("secret_leak") && !log.contains(real), "{log}");
    assert_nothing_left(&w, out.pid);
}
