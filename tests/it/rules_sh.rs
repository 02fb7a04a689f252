//! `--sh`: the shell engine through the real binary, with `--test` (no network).

use std::time::{Duration, Instant};

use crate::support::{TestHome, run};

#[test]
fn exit_zero_allows() {
    let home = TestHome::new();
    let out = run(home
        .httpjail()
        .args(["--sh", "exit 0", "--test", "https://github.com/x"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "ALLOW GET https://github.com/x\n", "{out:?}");
}

#[test]
fn non_zero_denies_with_stdout_as_the_message() {
    let home = TestHome::new();
    let out = run(home.httpjail().args([
        "--sh",
        "echo 'Only GitHub requests allowed'; exit 1",
        "--test",
        "POST",
        "https://example.com/upload",
    ]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(
        out.stdout, "DENY POST https://example.com/upload\nOnly GitHub requests allowed\n",
        "{out:?}"
    );
}

#[test]
fn deny_without_output_has_no_message_line() {
    let home = TestHome::new();
    let out = run(home
        .httpjail()
        .args(["--sh", "false", "--test", "https://a.test/"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.stdout, "DENY GET https://a.test/\n", "{out:?}");
}

#[test]
fn the_script_gets_every_request_variable() {
    let home = TestHome::new();
    let env_file = home.path().join("env.txt");
    let script = home.script(
        "dump.sh",
        &format!(
            "#!/bin/sh\n{{\n  echo \"url=$HTTPJAIL_URL\"\n  echo \"method=$HTTPJAIL_METHOD\"\n  echo \"scheme=$HTTPJAIL_SCHEME\"\n  echo \"host=$HTTPJAIL_HOST\"\n  echo \"path=$HTTPJAIL_PATH\"\n  echo \"port=$HTTPJAIL_PORT\"\n  echo \"requester_ip=$HTTPJAIL_REQUESTER_IP\"\n}} > {}\nexit 0\n",
            env_file.display()
        ),
    );
    let out = run(home.httpjail().args([
        "--sh",
        script.to_str().unwrap(),
        "--test",
        "PUT",
        "http://API.Example.com:8080/v1/items?page=2",
    ]));
    assert_eq!(out.code, Some(0), "{out:?}");
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert_eq!(
        env,
        "url=http://api.example.com:8080/v1/items?page=2\n\
         method=PUT\n\
         scheme=http\n\
         host=api.example.com\n\
         path=/v1/items\n\
         port=8080\n\
         requester_ip=127.0.0.1\n"
    );
}

#[test]
fn a_script_path_is_executed_directly_and_decides_by_host() {
    let home = TestHome::new();
    let script = home.script(
        "allow-github.sh",
        "#!/bin/sh\ncase \"$HTTPJAIL_HOST\" in\n  api.github.com|github.com) exit 0 ;;\n  *) echo \"Only GitHub requests allowed\"; exit 1 ;;\nesac\n",
    );
    let script = script.to_str().unwrap();
    let allowed =
        run(home
            .httpjail()
            .args(["--sh", script, "--test", "https://api.github.com/repos"]));
    assert_eq!(allowed.code, Some(0), "{allowed:?}");
    let denied = run(home
        .httpjail()
        .args(["--sh", script, "--test", "https://gitlab.com/"]));
    assert_eq!(denied.code, Some(1), "{denied:?}");
    assert_eq!(
        denied.stdout,
        "DENY GET https://gitlab.com/\nOnly GitHub requests allowed\n"
    );
}

#[test]
fn a_command_with_a_space_runs_through_sh() {
    let home = TestHome::new();
    // `[` with arguments: only works as a shell command line.
    let cmd = r#"[ "$HTTPJAIL_HOST" = github.com ]"#;
    let allowed = run(home
        .httpjail()
        .args(["--sh", cmd, "--test", "https://github.com/"]));
    assert_eq!(allowed.code, Some(0), "{allowed:?}");
    let denied = run(home
        .httpjail()
        .args(["--sh", cmd, "--test", "https://example.com/"]));
    assert_eq!(denied.code, Some(1), "{denied:?}");
}

#[test]
fn a_missing_script_is_an_error_naming_it() {
    let home = TestHome::new();
    let missing = home.path().join("nope.sh");
    let missing = missing.to_str().unwrap();
    let out = run(home
        .httpjail()
        .args(["--sh", missing, "--test", "https://a.test/"]));
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("--sh: `{missing}` was not found")),
        "{out:?}"
    );
    assert!(
        out.stderr.lines().all(|l| l.starts_with("httpjail:")),
        "{out:?}"
    );
}

#[test]
fn a_non_executable_script_is_an_error_with_the_chmod_hint() {
    let home = TestHome::new();
    let path = home.write("policy.sh", "#!/bin/sh\nexit 0\n");
    let path = path.to_str().unwrap();
    let out = run(home
        .httpjail()
        .args(["--sh", path, "--test", "https://a.test/"]));
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(out.stderr.contains("is not executable"), "{out:?}");
    assert!(out.stderr.contains(&format!("chmod +x {path}")), "{out:?}");
}

#[test]
fn stderr_of_the_rule_goes_to_the_diagnostics() {
    let home = TestHome::new();
    let out = run(home.httpjail().args([
        "-v",
        "--sh",
        "echo 'checking the host' >&2; echo denied; exit 1",
        "--test",
        "https://a.test/",
    ]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.stdout, "DENY GET https://a.test/\ndenied\n", "{out:?}");
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("checking the host"))
        .unwrap_or_else(|| panic!("stderr line not forwarded: {out:?}"));
    assert!(line.starts_with("httpjail:"), "{out:?}");
}

#[test]
fn a_background_job_does_not_hold_up_the_decision() {
    let home = TestHome::new();
    let pidfile = home.path().join("bg.pid");
    let started = Instant::now();
    let out = run(home.httpjail().args([
        "--sh",
        &format!("sleep 60 & echo $! > {}; exit 0", pidfile.display()),
        "--test",
        "https://a.test/",
    ]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "{out:?}");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while running(pid) {
        assert!(Instant::now() < deadline, "background job {pid} survived");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` is a live (non-zombie) process.
pub(crate) fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}
