//! Weak mode through the real binary: real clients that only honour proxy and CA variables,
//! exit codes, signals, `--timeout`, the request log, and what is left behind.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::support::tls::TestCa;
use crate::support::upstream::{GIT_HEAD, TestUpstream};
use crate::support::{Run, TestHome};

/// A local HTTPS upstream known to httpjail as `name.test`, and a temporary home.
struct Fixture {
    home: TestHome,
    upstream: TestUpstream,
    upstream_ca: PathBuf,
}

impl Fixture {
    async fn new() -> Self {
        let home = TestHome::new();
        let ca = TestCa::new("weak-mode upstream CA");
        let upstream =
            TestUpstream::https(&ca, &["name.test", "other.test"], &[b"h2", b"http/1.1"]).await;
        let upstream_ca = ca.write_pem(home.path(), "upstream-ca.pem");
        Self {
            home,
            upstream,
            upstream_ca,
        }
    }

    fn port(&self) -> u16 {
        self.upstream.port()
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.port())
    }

    /// `httpjail --weak` with the upstream wiring, then `args`.
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = self.home.httpjail();
        cmd.arg("--weak")
            .arg("--upstream-ca")
            .arg(&self.upstream_ca)
            .arg("--resolve")
            .arg(format!("name.test:{}:127.0.0.1", self.port()))
            .arg("--resolve")
            .arg(format!("other.test:{}:127.0.0.1", self.port()))
            .args(args);
        tokio::process::Command::from(cmd)
    }

    async fn run(&self, args: &[&str]) -> Run {
        self.command(args)
            .output()
            .await
            .expect("run httpjail")
            .into()
    }
}

/// Only `name.test` is allowed (a shell rule: the JS engine is tested elsewhere).
const ONLY_NAME_TEST: &str = r#"[ "$HTTPJAIL_HOST" = name.test ]"#;

#[tokio::test(flavor = "multi_thread")]
async fn curl_allowed_and_denied_with_text_log() {
    let f = Fixture::new().await;
    let log = f.home.path().join("requests.log");
    let ok = f.url("name.test", "/hello");
    let denied = f.url("other.test", "/secret");
    let script = format!("curl -sS {ok}; echo; curl -sS -w '%{{http_code}}' {denied}");
    let out = f
        .run(&[
            "--sh",
            ONLY_NAME_TEST,
            "--request-log",
            log.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            &script,
        ])
        .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("\"path\":\"/hello\""), "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("httpjail: Blocked GET {denied}")),
        "{out:?}"
    );
    assert!(out.stdout.trim_end().ends_with("403"), "{out:?}");
    assert_eq!(
        f.upstream.count(),
        1,
        "the denied request must not reach the upstream"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].ends_with(&format!(" + GET {ok}")), "{text}");
    assert!(lines[1].ends_with(&format!(" - GET {denied}")), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn python_requests_and_urllib_trust_the_ca_through_their_variables() {
    let f = Fixture::new().await;
    let url = f.url("name.test", "/py");
    // Debian's python3 has `requests` (installed by .ci/run).
    let script = format!(
        "import requests, urllib.request\n\
         r = requests.get('{url}?via=requests', timeout=10)\n\
         print('requests', r.status_code, r.json()['path'])\n\
         with urllib.request.urlopen('{url}?via=urllib', timeout=10) as u:\n\
         \x20   print('urllib', u.status)\n"
    );
    let out = f
        .run(&["--sh", "true", "--", "/usr/bin/python3", "-c", &script])
        .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("requests 200 /py?via=requests"),
        "{out:?}"
    );
    assert!(out.stdout.contains("urllib 200"), "{out:?}");
    assert_eq!(f.upstream.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn node_https_trusts_the_ca_through_node_extra_ca_certs() {
    let f = Fixture::new().await;
    // Node 20's https module ignores HTTPS_PROXY, so the script opens the CONNECT tunnel itself;
    // the certificate check relies only on NODE_EXTRA_CA_CERTS.
    let script = format!(
        r#"
const http = require('http'), https = require('https'), tls = require('tls');
const proxy = new URL(process.env.HTTPS_PROXY);
const req = http.request({{ host: proxy.hostname, port: proxy.port, method: 'CONNECT', path: 'name.test:{port}' }});
req.on('connect', (res, socket) => {{
  const r = https.request({{ host: 'name.test', port: {port}, path: '/node',
    createConnection: () => tls.connect({{ socket, servername: 'name.test' }}) }}, (resp) => {{
      let body = ''; resp.on('data', (d) => body += d); resp.on('end', () => {{ console.log('node', resp.statusCode, JSON.parse(body).path); }});
  }});
  r.on('error', (e) => {{ console.error('request failed', e.message); process.exit(2); }});
  r.end();
}});
req.on('error', (e) => {{ console.error('connect failed', e.message); process.exit(3); }});
req.end();
"#,
        port = f.port()
    );
    let out = f.run(&["--sh", "true", "--", "node", "-e", &script]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("node 200 /node"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn git_ls_remote_over_https() {
    let f = Fixture::new().await;
    let url = f.url("name.test", "/repo.git");
    let out = f
        .run(&[
            "--sh",
            "true",
            "--",
            "git",
            "-c",
            "protocol.version=0",
            "ls-remote",
            &url,
        ])
        .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains(&format!("{GIT_HEAD}\tHEAD")), "{out:?}");
    assert!(out.stdout.contains("refs/heads/main"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_command_gets_the_documented_environment_and_the_bundle_is_removed() {
    let f = Fixture::new().await;
    let out = f
        .run(&["--", "sh", "-c", "env; echo BUNDLE_LINES=$(grep -c 'BEGIN CERTIFICATE' \"$SSL_CERT_FILE\"); ls \"$SSL_CERT_DIR\""])
        .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let var = |name: &str| {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} not set: {out:?}"))
            .to_owned()
    };
    let proxy = var("HTTP_PROXY");
    assert!(proxy.starts_with("http://127.0.0.1:"), "{proxy}");
    for name in ["HTTPS_PROXY", "http_proxy", "https_proxy"] {
        assert_eq!(var(name), proxy);
    }
    assert_eq!(var("NO_PROXY"), "localhost,127.0.0.1,::1");
    let bundle = var("SSL_CERT_FILE");
    for name in [
        "CURL_CA_BUNDLE",
        "REQUESTS_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "CARGO_HTTP_CAINFO",
        "GIT_SSL_CAINFO",
        "DENO_CERT",
    ] {
        assert_eq!(var(name), bundle, "{name}");
    }
    let count: usize = var("BUNDLE_LINES").parse().unwrap();
    assert!(
        count > 1,
        "the bundle holds our CA and the system roots: {count}"
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.len() == 10 && l.ends_with(".0")),
        "hashed CA in SSL_CERT_DIR: {out:?}"
    );
    assert!(
        !std::path::Path::new(&bundle).exists(),
        "the bundle must be removed on exit"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes() {
    let f = Fixture::new().await;
    assert_eq!(f.run(&["--", "sh", "-c", "exit 3"]).await.code, Some(3));
    let missing = f.run(&["--", "no-such-command-xyz"]).await;
    assert_eq!(missing.code, Some(127), "{missing:?}");
    assert!(
        missing.stderr.contains("no-such-command-xyz") && missing.stderr.contains("not found"),
        "{missing:?}"
    );
    let not_exec = f.home.write("plain.txt", "echo hi\n");
    let out = f.run(&["--", not_exec.to_str().unwrap()]).await;
    assert_eq!(out.code, Some(126), "{out:?}");
    assert_eq!(
        f.run(&["--", "sh", "-c", "kill -KILL $$"]).await.code,
        Some(137)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_stops_the_command_with_124() {
    let f = Fixture::new().await;
    let started = Instant::now();
    let out = f.run(&["--timeout", "0.5", "--", "sleep", "30"]).await;
    assert_eq!(out.code, Some(124), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(out.stderr.contains("--timeout"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_and_sigint_reach_the_command_and_a_second_sigint_ends_it() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let f = Fixture::new().await;
    let marker = f.home.path().join("got-term");
    let script = format!(
        "trap 'echo term > {}; exit 42' TERM; echo ready; while :; do sleep 0.05; done",
        marker.display()
    );
    let mut child = f
        .command(&["--", "sh", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_line(&mut child, "ready").await;
    kill(Pid::from_raw(child.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(42));
    assert!(marker.exists(), "the command got SIGTERM");
    // A command that ignores SIGINT: the first interrupt is forwarded, the second kills it.
    let mut child = f
        .command(&[
            "--",
            "sh",
            "-c",
            "trap '' INT; echo ready; while :; do sleep 0.05; done",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_line(&mut child, "ready").await;
    let pid = Pid::from_raw(child.id().unwrap() as i32);
    kill(pid, Signal::SIGINT).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "one SIGINT must not end a command that ignores it"
    );
    kill(pid, Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(128 + 9),
        "the second SIGINT kills the command"
    );
}

async fn wait_for_line(child: &mut tokio::process::Child, needle: &str) {
    use tokio::io::AsyncBufReadExt;
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(needle) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "the command never printed {needle:?}");
    // Keep draining so the command never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
}

#[tokio::test(flavor = "multi_thread")]
async fn json_request_log_records_every_field() {
    let f = Fixture::new().await;
    let log = f.home.path().join("requests.jsonl");
    let url = f.url("name.test", "/json?x=1");
    let out = f
        .run(&[
            "--sh",
            "true",
            "--request-log",
            log.to_str().unwrap(),
            "--request-log-format",
            "json",
            "--",
            "curl",
            "-sS",
            "--data-binary",
            "12345",
            &url,
        ])
        .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    let record: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(record["decision"], "allow");
    assert_eq!(record["method"], "POST");
    assert_eq!(record["url"], url);
    assert_eq!(record["host"], "name.test");
    assert_eq!(record["scheme"], "https");
    assert_eq!(record["path"], "/json");
    assert_eq!(record["port"], f.port());
    assert_eq!(record["requester_ip"], "127.0.0.1");
    assert_eq!(record["status"], 200);
    assert!(record["bytes_up"].as_u64().unwrap() > 5);
    assert!(record["bytes_down"].as_u64().unwrap() > 0);
    assert!(record["reason"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rule_that_cannot_load_stops_httpjail_before_the_command_runs() {
    let f = Fixture::new().await;
    let marker = f.home.path().join("ran");
    let out = f
        .run(&[
            "--sh",
            "/nonexistent/policy.sh",
            "--",
            "touch",
            marker.to_str().unwrap(),
        ])
        .await;
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(!marker.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_command_starts_with_no_blocked_or_ignored_signals() {
    // Regression: a blocked mask in httpjail is inherited across exec and made the command
    // immune to SIGTERM (and so to --timeout's first signal).
    let f = Fixture::new().await;
    let out = f
        .run(&["--", "grep", "-E", "^Sig(Blk|Ign):", "/proc/self/status"])
        .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    for line in out.stdout.lines() {
        let mask = u64::from_str_radix(line.split_whitespace().last().unwrap(), 16).unwrap();
        // Standard signals 1..=31 only: real-time signals belong to the C library and test
        // harnesses.
        assert_eq!(mask & 0x7fff_ffff, 0, "{line}");
    }
    assert_eq!(out.stdout.lines().count(), 2, "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn record_learn_replay_and_run_again_under_the_learned_rule() {
    let f = Fixture::new().await;
    let log = f.home.path().join("run.jsonl");
    let port = f.port();
    let script = format!(
        "set -e; for id in 101 202 303; do curl -sSf https://name.test:{port}/users/$id/repos >/dev/null; done; \
         curl -sSf --data-binary 'hello upload' https://name.test:{port}/upload >/dev/null; \
         curl -sSf https://other.test:{port}/static/app.js >/dev/null"
    );
    let recorded = f
        .run(&[
            "--js",
            "true",
            "--request-log",
            log.to_str().unwrap(),
            "--request-log-format",
            "json",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .await;
    assert_eq!(recorded.code, Some(0), "{recorded:?}");
    let learned = tokio::process::Command::from({
        let mut c = f.home.httpjail();
        c.args(["learn", log.to_str().unwrap()]);
        c
    })
    .output()
    .await
    .unwrap();
    assert!(learned.status.success(), "{learned:?}");
    let rule = String::from_utf8(learned.stdout).unwrap();
    assert!(
        rule.contains("name.test") && rule.contains("other.test"),
        "{rule}"
    );
    let rule_path = f.home.write("learned.js", &rule);
    let replay = |rule: &std::path::Path| {
        let mut c = f.home.httpjail();
        c.args([
            "replay",
            "--js-file",
            rule.to_str().unwrap(),
            log.to_str().unwrap(),
        ]);
        crate::support::run(&mut c)
    };
    let clean = replay(&rule_path);
    assert_eq!(
        clean.code,
        Some(0),
        "the learned rule must replay without flips: {clean:?}"
    );
    // Run again under the learned rule: the same traffic passes, a new id too (ids collapse),
    // something never seen does not.
    let again = format!(
        "{script}; curl -sSf https://name.test:{port}/users/999/repos >/dev/null; echo; curl -sS -o /dev/null -w 'unseen=%{{http_code}}' https://name.test:{port}/admin"
    );
    let rerun = f
        .run(&[
            "--js-file",
            rule_path.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            &again,
        ])
        .await;
    assert_eq!(rerun.code, Some(0), "{rerun:?}");
    assert!(rerun.stdout.contains("unseen=403"), "{rerun:?}");
    // Drop one host from the rule: replay lists its flips and exits 1.
    let edited = f.home.write(
        "edited.js",
        &rule.replace("\"other.test\"", "\"removed.test\""),
    );
    let flipped = replay(&edited);
    assert_eq!(flipped.code, Some(1), "{flipped:?}");
    assert!(
        flipped
            .stdout
            .contains(&format!("https://other.test:{port}/static/app.js")),
        "{flipped:?}"
    );
}
