//! The real `httpjail` binary in strong mode (the default), with the real proxy, against local
//! upstreams on the host's loopback reached only through `--resolve`: what a user runs.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{self, TEST_USER, eventually, host_network_state, prerequisites, test_user};
use crate::tls::TestCa;
use crate::upstream::TestUpstream;

/// An HTTP upstream on :80 and an HTTPS one on :443 of a loopback address of their own, known
/// to httpjail as `name.test` (and `other.test` for the HTTPS one).
struct World {
    home: tempfile::TempDir,
    ip: IpAddr,
    http: TestUpstream,
    https: TestUpstream,
    ca_pem: std::path::PathBuf,
}

impl World {
    async fn new() -> Self {
        let home = tempfile::Builder::new()
            .prefix("httpjail-netns-")
            .tempdir()
            .unwrap();
        // Readable by the unprivileged test user too (rootless and sudo tests).
        std::fs::set_permissions(
            home.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let ip = unique_loopback();
        let ca = TestCa::new("netns upstream CA");
        let ca_pem = ca.write_pem(home.path(), "upstream-ca.pem");
        let http = TestUpstream::http_at(SocketAddr::new(ip, 80)).await;
        let https =
            TestUpstream::https_at(SocketAddr::new(ip, 443), &ca, &["name.test", "other.test"])
                .await;
        Self {
            home,
            ip,
            http,
            https,
            ca_pem,
        }
    }

    /// `httpjail` (strong mode) with the world wired in, then `args`.
    fn httpjail(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(support::httpjail_bin());
        cmd.env_clear()
            .env("PATH", support::JAIL_PATH)
            .env("HOME", self.home.path())
            .arg("--upstream-ca")
            .arg(&self.ca_pem)
            .args(["--resolve", &format!("name.test:80:{}", self.ip)])
            .args(["--resolve", &format!("name.test:443:{}", self.ip)])
            .args(["--resolve", &format!("other.test:443:{}", self.ip)])
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Out {
        let mut cmd = self.httpjail(args);
        Out::from(cmd.output().expect("run httpjail"))
    }
}

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl From<std::process::Output> for Out {
    fn from(o: std::process::Output) -> Self {
        Self {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn unique_loopback() -> IpAddr {
    let mut b = [0u8; 2];
    getrandom::fill(&mut b).unwrap();
    IpAddr::from([127, 88, b[0], b[1].max(1)])
}

#[tokio::test(flavor = "multi_thread")]
async fn http_and_https_without_proxy_variables_with_the_request_log() {
    if !prerequisites() {
        return;
    }
    let w = World::new().await;
    let log = w.home.path().join("requests.jsonl");
    let script = "env | grep -i _proxy; \
                  curl -sS http://name.test/plain; echo; \
                  curl -sS https://name.test/tls; echo; \
                  curl -sS -o /dev/null -w 'denied=%{http_code}' https://other.test/nope";
    let out = w
        .httpjail(&[
            "--js",
            "r.host === 'name.test'",
            "--request-log",
            log.to_str().unwrap(),
            "--request-log-format",
            "json",
            "--",
            "sh",
            "-c",
            script,
        ])
        .output()
        .map(Out::from)
        .unwrap();
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        !out.stdout.to_lowercase().contains("http_proxy="),
        "strong mode sets no proxy variables: {out:?}"
    );
    assert!(out.stdout.contains("\"path\":\"/plain\""), "{out:?}");
    assert!(out.stdout.contains("\"path\":\"/tls\""), "{out:?}");
    assert!(out.stdout.contains("denied=403"), "{out:?}");
    assert_eq!(
        (w.http.count(), w.https.count()),
        (1, 1),
        "the denied request must not arrive"
    );
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 3, "{records:?}");
    assert_eq!(records[0]["url"], "http://name.test/plain");
    assert_eq!(records[1]["url"], "https://name.test/tls");
    assert_eq!(records[2]["decision"], "deny");
    // The jail's resolver answered 6.6.6.6: that is where the command believed it connected.
    assert_eq!(records[1]["original_dst"], "6.6.6.6:443", "{records:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_jail_resolves_every_name_to_the_dummy_address() {
    if !prerequisites() {
        return;
    }
    let w = World::new().await;
    let out = w.run(&["--", "getent", "ahostsv4", "some-random-name-7f3a.example"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("6.6.6.6"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn host_port_sni_and_proxy_tricks_change_nothing() {
    if !prerequisites() {
        return;
    }
    let w = World::new().await;
    let script = "\
        echo port=$(curl -sS -H 'Host: name.test:2222' http://name.test/port | grep -c '/port'); \
        echo fronting=$(curl -sS -o /dev/null -w '%{http_code}' -H 'Host: name.test' https://other.test/x); \
        echo absolute=$(curl -sS -o /dev/null -w '%{http_code}' -x http://198.51.100.1:80 http://name.test/abs); \
        echo connect=$(curl -sS -o /dev/null -w '%{http_code}' -p -x http://198.51.100.1:443 https://name.test/c 2>/dev/null)";
    let out = w.run(&["--js", "true", "--", "sh", "-c", script]);
    assert!(
        out.stdout.contains("port=1"),
        "a Host port must not change the upstream port: {out:?}"
    );
    assert!(out.stdout.contains("fronting=421"), "{out:?}");
    assert!(
        out.stdout.contains("absolute=403"),
        "explicit proxy requests are refused in the jail: {out:?}"
    );
    assert!(!out.stdout.contains("connect=200"), "{out:?}");
    assert_eq!(w.https.count(), 0, "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_host_loopback_is_only_reachable_through_allowed_rules() {
    if !prerequisites() {
        return;
    }
    let w = World::new().await;
    // A service on the host's loopback, outside the jail.
    let service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = service.local_addr().unwrap().port();
    let script = format!(
        "echo direct=$(curl -sS -o /dev/null -w '%{{http_code}}' --max-time 3 http://127.0.0.1:{port}/ 2>/dev/null); \
         echo own=$(curl -sS -o /dev/null -w '%{{http_code}}' --max-time 3 http://127.0.0.1/ 2>/dev/null); \
         echo by_name=$(curl -sS -o /dev/null -w '%{{http_code}}' --max-time 3 -H 'Host: localhost' http://198.51.100.7/ 2>/dev/null)"
    );
    let out = w.run(&["--js", "true", "--", "sh", "-c", &script]);
    assert!(
        out.stdout.contains("direct=000"),
        "the host's loopback port must be unreachable: {out:?}"
    );
    // 127.0.0.1 inside the jail is the jail's own loopback: nothing listens there.
    assert!(out.stdout.contains("own=000"), "{out:?}");
    // Through the proxy, a name that resolves to loopback is refused unless allowed.
    assert!(out.stdout.contains("by_name=403"), "{out:?}");
    service.set_nonblocking(true).unwrap();
    assert!(
        service.accept().is_err(),
        "nothing may have reached the host service"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sudo_user_runs_the_command_and_can_read_the_ca_bundle() {
    if !prerequisites() {
        return;
    }
    let (uid, _) = test_user();
    let w = World::new().await;
    let inner = w.httpjail(&[
        "--js",
        "true",
        "--",
        "sh",
        "-c",
        "id -u; curl -sS https://name.test/as-user",
    ]);
    // A restrictive umask (common under sudo) must not make the CA files unreadable to the user.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "umask 077; exec \"$0\" \"$@\""])
        .arg(inner.get_program())
        .args(inner.get_args())
        .env_clear()
        .env("PATH", support::JAIL_PATH)
        .env("HOME", w.home.path())
        .env("SUDO_USER", TEST_USER)
        .stdin(Stdio::null());
    let out = Out::from(cmd.output().unwrap());
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        out.stdout.lines().next(),
        Some(uid.to_string().as_str()),
        "{out:?}"
    );
    assert!(out.stdout.contains("/as-user"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rootless_end_to_end_as_an_unprivileged_user() {
    if !prerequisites() {
        return;
    }
    let (uid, gid) = test_user();
    let w = World::new().await;
    let home = w.home.path().join("user-home");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(uid), Some(gid)).unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", &uid.to_string(), "--regid", &gid.to_string(), "--clear-groups", "--"])
        .arg(support::httpjail_bin())
        .env_clear()
        .env("PATH", support::JAIL_PATH)
        .env("HOME", &home)
        .arg("--upstream-ca")
        .arg(&w.ca_pem)
        .args(["--resolve", &format!("name.test:443:{}", w.ip)])
        .args(["--js", "r.host === 'name.test'", "--", "sh", "-c", "id -u; curl -sS https://name.test/rootless; echo; curl -sS -o /dev/null -w 'other=%{http_code}' https://other.test/"])
        .current_dir(&home)
        .stdin(Stdio::null());
    let out = Out::from(cmd.output().unwrap());
    if out
        .stderr
        .contains("cannot create the strong jail without root")
    {
        support::skip_or_fail(&format!(
            "unprivileged user namespaces are not available: {}",
            out.stderr
        ));
        return;
    }
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        out.stdout.lines().next(),
        Some(uid.to_string().as_str()),
        "the command runs as the user: {out:?}"
    );
    assert!(out.stdout.contains("/rootless"), "{out:?}");
    assert!(out.stdout.contains("other=403"), "{out:?}");
    assert!(
        home.join(".config/httpjail/ca-cert.pem").exists(),
        "the user's own CA was used"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_httpjail_leaves_nothing_behind() {
    if !prerequisites() {
        return;
    }
    let w = World::new().await;
    let before = host_network_state();
    let mut random = [0u8; 3];
    getrandom::fill(&mut random).unwrap();
    // A sleep with a duration no other process has, to find it among the host's processes.
    let duration = format!(
        "1000.{}",
        u32::from_be_bytes([0, random[0], random[1], random[2]])
    );
    let mut child = w.httpjail(&["--", "sleep", &duration]).spawn().unwrap();
    eventually("the jailed sleep to start", || {
        !support::processes_running(&["sleep", &duration]).is_empty()
    });
    let during = host_network_state();
    assert_eq!(before, during, "a running jail must not change the host");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let pid = child.id();
    let _ = child.wait();
    let run_dirs = || {
        std::fs::read_dir(httpjail::runtime_dir::base_dir())
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .starts_with(&format!("run-{pid}-"))
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(
        run_dirs(),
        1,
        "a SIGKILLed httpjail leaves its run directory for --cleanup"
    );
    eventually("the jailed process to die with httpjail", || {
        support::processes_running(&["sleep", &duration]).is_empty()
    });
    let out = w.run(&["--cleanup"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        before,
        host_network_state(),
        "nothing left on the host after SIGKILL"
    );
    assert_eq!(run_dirs(), 0, "--cleanup removed the run directory");
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_jails_at_once_each_with_its_own_rule() {
    if !prerequisites() {
        return;
    }
    let w = World::new().await;
    let started = Instant::now();
    let children: Vec<_> = (0..10)
        .map(|i| {
            let log = w.home.path().join(format!("jail-{i}.log"));
            let rule = format!("r.path === '/jail-{i}'");
            let script = (0..10)
                .map(|j| {
                    format!(
                        "curl -sS -o /dev/null -w '{j}=%{{http_code}} ' https://name.test/jail-{j};"
                    )
                })
                .collect::<String>();
            let child = w
                .httpjail(&[
                    "--js",
                    &rule,
                    "--request-log",
                    log.to_str().unwrap(),
                    "--",
                    "sh",
                    "-c",
                    &script,
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (i, log, child)
        })
        .collect();
    for (i, log, child) in children {
        let out = Out::from(child.wait_with_output().unwrap());
        assert_eq!(out.code, Some(0), "jail {i}: {out:?}");
        for j in 0..10 {
            let want = if i == j { 200 } else { 403 };
            assert!(
                out.stdout.contains(&format!("{j}={want}")),
                "jail {i}, request {j}: {out:?}"
            );
        }
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            text.lines().count(),
            10,
            "jail {i} logs only its own requests: {text}"
        );
        assert_eq!(
            text.lines().filter(|l| l.contains(" + ")).count(),
            1,
            "{text}"
        );
    }
    assert_eq!(w.https.count(), 10);
    assert!(started.elapsed() < Duration::from_secs(120));
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_and_timeout_in_strong_mode() {
    if !prerequisites() {
        return;
    }
    let w = World::new().await;
    assert_eq!(w.run(&["--", "sh", "-c", "exit 9"]).code, Some(9));
    let missing = w.run(&["--", "no-such-program-in-the-jail"]);
    assert_eq!(missing.code, Some(127), "{missing:?}");
    assert!(missing.stderr.contains("not found"), "{missing:?}");
    let timed = w.run(&["--timeout", "0.5", "--", "sleep", "30"]);
    assert_eq!(timed.code, Some(124), "{timed:?}");
    let jail_file = Path::new("/proc/self/status");
    assert!(jail_file.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_nft_is_a_clear_error_naming_the_package() {
    if !prerequisites() {
        return;
    }
    let w = World::new().await;
    let nft = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("nft is installed for these tests");
    let marker = w.home.path().join("ran");
    // Hide nft in a private mount namespace: a /dev/null over it is not an executable file.
    let inner = w.httpjail(&["--js", "true", "--", "touch", marker.to_str().unwrap()]);
    let program = inner.get_program().to_owned();
    let args: Vec<_> = inner.get_args().map(|a| a.to_owned()).collect();
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &format!("mount --bind /dev/null {nft} && exec \"$0\" \"$@\""),
    ])
    .arg(program)
    .args(args)
    .env_clear()
    .env("PATH", support::JAIL_PATH)
    .env("HOME", w.home.path())
    .stdin(Stdio::null());
    let out = Out::from(cmd.output().unwrap());
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(
        out.stderr.contains("`nft`") && out.stderr.contains("nftables"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("--weak"),
        "the hint names the alternative: {out:?}"
    );
    assert!(
        !marker.exists(),
        "the command must not run without its jail"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn jails_started_while_others_shut_down() {
    if !prerequisites() {
        return;
    }
    let w = World::new().await;
    // Overlapping lifetimes: each jail starts while the previous one is tearing down.
    let mut previous: Option<std::process::Child> = None;
    for i in 0..6 {
        let child = w
            .httpjail(&[
                "--js",
                "true",
                "--",
                "sh",
                "-c",
                &format!("curl -sS -o /dev/null -w '{i}=%{{http_code}}' https://name.test/overlap"),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(prev) = previous.take() {
            let out = Out::from(prev.wait_with_output().unwrap());
            assert_eq!(out.code, Some(0), "{out:?}");
            assert!(out.stdout.contains("=200"), "{out:?}");
        }
        previous = Some(child);
    }
    let out = Out::from(previous.unwrap().wait_with_output().unwrap());
    assert!(out.stdout.contains("5=200"), "{out:?}");
    assert_eq!(w.https.count(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_in_strong_mode_reach_only_their_host() {
    if !prerequisites() {
        return;
    }
    let w = World::new().await;
    let real = "s3cr3t-strong-token-a7c2";
    let script = "echo token=$TOKEN; \
        curl -sS -o /dev/null -H \"Authorization: Bearer $TOKEN\" https://name.test/with-secret; echo; \
        curl -sS -o /dev/null -w 'other=%{http_code}' -H \"Authorization: Bearer $TOKEN\" https://other.test/exfil";
    let log = w.home.path().join("log.jsonl");
    let mut cmd = w.httpjail(&[
        "--js",
        "true",
        "--secret",
        "TOKEN=name.test",
        "--request-log",
        log.to_str().unwrap(),
        "--request-log-format",
        "json",
        "--",
        "sh",
        "-c",
        script,
    ]);
    cmd.env("TOKEN", real);
    let out = Out::from(cmd.output().unwrap());
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("token=httpjail-secret-TOKEN-"),
        "{out:?}"
    );
    assert!(
        !out.stdout.contains(real) && !out.stderr.contains(real),
        "{out:?}"
    );
    assert!(out.stdout.contains("other=403"), "{out:?}");
    let seen = w.https.seen();
    assert_eq!(seen.len(), 1, "only the bound host is contacted: {out:?}");
    assert_eq!(seen[0].headers["authorization"], format!("Bearer {real}"));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("secret_leak") && !text.contains(real),
        "{text}"
    );
}
