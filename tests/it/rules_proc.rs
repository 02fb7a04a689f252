//! `--proc`: the line-processor engine through the real binary, with `--test` (no network).

use std::time::{Duration, Instant};

use crate::support::{TestHome, run};

/// A processor that behaves like the Python example of the reference documentation.
const DOCS_PYTHON: &str = include_str!("../fixtures/docs_filter.py");

#[test]
fn true_allows_and_false_denies() {
    let home = TestHome::new();
    let out = run(home.httpjail().args([
        "--proc",
        "while read -r l; do echo true; done",
        "--test",
        "https://github.com/",
    ]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "ALLOW GET https://github.com/\n");
    let out = run(home.httpjail().args([
        "--proc",
        "while read -r l; do echo false; done",
        "--test",
        "https://github.com/",
    ]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.stdout, "DENY GET https://github.com/\n");
}

#[test]
fn the_python_processor_of_the_docs_works() {
    let home = TestHome::new();
    let filter = home.script("filter.py", DOCS_PYTHON);
    let filter = filter.to_str().unwrap();
    for (url, code, stdout) in [
        (
            "https://api.github.com/repos",
            0,
            "ALLOW GET https://api.github.com/repos\n",
        ),
        (
            "https://uploads.example.com/put",
            0,
            "ALLOW GET https://uploads.example.com/put\nmax_tx_bytes: 1024\n",
        ),
        (
            "https://evil.test/",
            1,
            "DENY GET https://evil.test/\nevil.test not allowed\n",
        ),
    ] {
        let out = run(home.httpjail().args(["--proc", filter, "--test", url]));
        assert_eq!(out.code, Some(code), "{url}: {out:?}");
        assert_eq!(out.stdout, stdout, "{url}: {out:?}");
    }
    // With arguments: `sh -c`.
    let out = run(home.httpjail().args([
        "--proc",
        &format!("python3 -u {filter}"),
        "--test",
        "https://github.com/",
    ]));
    assert_eq!(out.code, Some(0), "{out:?}");
}

#[test]
fn json_deny_message_is_printed_after_deny() {
    let home = TestHome::new();
    let out = run(home.httpjail().args([
        "--proc",
        r#"while read -r l; do echo '{"allow": false, "deny_message": "Social media blocked"}'; done"#,
        "--test",
        "https://facebook.com/",
    ]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(
        out.stdout,
        "DENY GET https://facebook.com/\nSocial media blocked\n"
    );
}

#[test]
fn garbage_is_a_deny_with_the_text() {
    let home = TestHome::new();
    let out = run(home.httpjail().args([
        "--proc",
        "while read -r l; do echo 'Access denied'; done",
        "--test",
        "https://a.test/",
    ]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.stdout, "DENY GET https://a.test/\nAccess denied\n");
}

#[test]
fn stderr_of_the_processor_goes_to_the_diagnostics() {
    let home = TestHome::new();
    let out = run(home.httpjail().args([
        "-v",
        "--proc",
        "while read -r l; do echo 'saw a request' >&2; echo true; done",
        "--test",
        "https://a.test/",
    ]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "ALLOW GET https://a.test/\n", "{out:?}");
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("saw a request"))
        .unwrap_or_else(|| panic!("stderr line not forwarded: {out:?}"));
    assert!(line.starts_with("httpjail:"), "{out:?}");
}

#[test]
fn a_processor_that_exits_at_once_denies_promptly_and_says_so() {
    let home = TestHome::new();
    let started = Instant::now();
    let out = run(home
        .httpjail()
        .args(["--proc", "exit 1", "--test", "https://a.test/"]));
    assert!(started.elapsed() < Duration::from_secs(4), "{out:?}");
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stdout.starts_with("DENY GET https://a.test/\n"),
        "{out:?}"
    );
    assert!(
        out.stderr
            .contains("--proc `exit 1` exited (exit status: 1)"),
        "{out:?}"
    );
    assert!(
        out.stderr.lines().all(|l| l.starts_with("httpjail:")),
        "{out:?}"
    );
}

#[test]
fn a_processor_that_closed_its_stdin_does_not_kill_httpjail() {
    let home = TestHome::new();
    // The request line (~200 KB: the path appears in `url` and `path`) is larger than a pipe
    // buffer, so our write is still blocked when the processor closes its stdin, and must end
    // in EPIPE whatever the timing. That must be a deny, not a SIGPIPE death (no exit code).
    let url = format!("https://a.test/{}", "a".repeat(100_000));
    let started = Instant::now();
    let out = run(home
        .httpjail()
        .args(["--proc", "exec 0<&-; sleep 30", "--test", &url]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stdout.starts_with("DENY GET https://a.test/aaa"),
        "{out:?}"
    );
    assert!(out.stderr.contains("stopped reading requests"), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(4), "{out:?}");
}

#[test]
fn a_missing_processor_is_an_error_naming_it() {
    let home = TestHome::new();
    let missing = home.path().join("filter.py");
    let missing = missing.to_str().unwrap();
    let out = run(home
        .httpjail()
        .args(["--proc", missing, "--test", "https://a.test/"]));
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("--proc: `{missing}` was not found")),
        "{out:?}"
    );
    assert!(out.stderr.contains("hint:"), "{out:?}");
}

#[test]
fn a_non_executable_processor_is_an_error_with_the_chmod_hint() {
    let home = TestHome::new();
    let path = home.write("filter.py", DOCS_PYTHON);
    let path = path.to_str().unwrap();
    let out = run(home
        .httpjail()
        .args(["--proc", path, "--test", "https://a.test/"]));
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(out.stderr.contains(&format!("chmod +x {path}")), "{out:?}");
}

#[test]
fn the_processor_is_stopped_when_httpjail_exits() {
    let home = TestHome::new();
    let pidfile = home.path().join("pid");
    let started = Instant::now();
    // It ignores EOF on stdin: httpjail must kill it rather than wait or leave it behind.
    let out = run(home.httpjail().args([
        "--proc",
        &format!(
            "echo $$ > {}; read -r l; echo true; exec sleep 60",
            pidfile.display()
        ),
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
    assert!(
        !crate::rules_sh::running(pid),
        "the processor {pid} outlived httpjail"
    );
}
