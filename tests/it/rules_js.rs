//! The JavaScript rule engine through the binary (`httpjail --js/--js-file ... --test`) and the
//! `--js-file` reload through the library. No network.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use httpjail::config::JsSource;
use httpjail::rules::js::{JsEngine, JsOptions};
use httpjail::rules::{Decision, DenyReason, RuleRequest};

use crate::support::{Run, TestHome, run};

/// `httpjail <rule args> --test <test args>`.
fn test_with(home: &TestHome, rule: &[&str], test: &[&str]) -> Run {
    run(home.httpjail().args(rule).arg("--test").args(test))
}

fn js(home: &TestHome, rule: &str, test: &[&str]) -> Run {
    test_with(home, &["--js", rule], test)
}

fn assert_httpjail_stderr(out: &Run) {
    assert!(
        out.stderr.lines().all(|l| l.starts_with("httpjail:")),
        "every stderr line must start with `httpjail:`\n{out:?}"
    );
}

#[test]
fn an_allowing_rule_exits_0_and_prints_allow() {
    let home = TestHome::new();
    let out = js(
        &home,
        "r.host === 'example.com' && r.path === '/path'",
        &["https://example.com/path?q=1"],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "ALLOW GET https://example.com/path?q=1\n");
    assert_httpjail_stderr(&out);
}

#[test]
fn a_denying_rule_exits_1_and_prints_its_message_on_the_next_line() {
    let home = TestHome::new();
    let out = js(
        &home,
        "r.method === 'POST' ? {deny_message: 'Social media blocked'} : true",
        &["POST", "https://facebook.com/share"],
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(
        out.stdout,
        "DENY POST https://facebook.com/share\nSocial media blocked\n"
    );
    let out = js(&home, "false", &["https://example.com/"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.stdout, "DENY GET https://example.com/\n");
}

#[test]
fn max_tx_bytes_is_an_allow_with_a_limit() {
    let home = TestHome::new();
    let out = js(
        &home,
        "({allow: {max_tx_bytes: 1024}})",
        &["PUT", "https://uploads.example.com/f"],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        out.stdout,
        "ALLOW PUT https://uploads.example.com/f\nmax_tx_bytes: 1024\n"
    );
}

#[test]
fn a_rule_file_with_statements_decides() {
    let home = TestHome::new();
    let file = home.write(
        "rules.js",
        "// Allow specific methods only for certain hosts\n\
         const rules = [\n\
         {host: 'api.github.com', methods: ['GET', 'POST']},\n\
         {host: 'github.com', methods: ['GET']},\n\
         ];\n\
         rules.some(rule =>\n\
         rule.host === r.host && rule.methods.includes(r.method)\n\
         )\n",
    );
    let file = file.to_str().expect("utf-8 path");
    let out = test_with(
        &home,
        &["--js-file", file],
        &["POST", "https://api.github.com/repos"],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "ALLOW POST https://api.github.com/repos\n");
    let out = test_with(
        &home,
        &["--js-file", file],
        &["POST", "https://github.com/"],
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.stdout, "DENY POST https://github.com/\n");
}

#[test]
fn a_relative_rule_file_is_read_from_the_working_directory() {
    let home = TestHome::new();
    home.write("relative.js", "r.host === 'example.com'");
    let out = run(home.httpjail().current_dir(home.path()).args([
        "--js-file",
        "relative.js",
        "--test",
        "https://example.com/",
    ]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "ALLOW GET https://example.com/\n");
}

#[test]
fn a_syntax_error_stops_httpjail_with_line_and_column() {
    let home = TestHome::new();
    let out = js(&home, "r.host ===", &["https://example.com/"]);
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(
        out.stderr
            .contains("--js: JavaScript syntax error at line 1, column 11"),
        "{out:?}"
    );
    assert_httpjail_stderr(&out);

    let file = home.write(
        "broken.js",
        "const hosts = ['a.com'];\n\nhosts.includes(r.host) &&& true\n",
    );
    let out = test_with(
        &home,
        &["--js-file", file.to_str().expect("utf-8 path")],
        &["https://a.com/"],
    );
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(out.stderr.contains(&file.display().to_string()), "{out:?}");
    assert!(out.stderr.contains("line 3, column 26"), "{out:?}");
    assert_httpjail_stderr(&out);
}

#[test]
fn a_runtime_exception_denies_with_the_reason_on_stderr() {
    let home = TestHome::new();
    let out = js(
        &home,
        "const x = 1;\nnotDefined(x)",
        &["https://example.com/"],
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stdout.starts_with("DENY GET https://example.com/\n"),
        "{out:?}"
    );
    assert!(!out.stdout.contains("notDefined"), "{out:?}");
    assert!(
        out.stderr.contains("ReferenceError") && out.stderr.contains("notDefined"),
        "{out:?}"
    );
    assert!(out.stderr.contains("line 2, column 1"), "{out:?}");
    assert_httpjail_stderr(&out);
}

#[test]
fn an_endless_loop_is_denied_in_bounded_time() {
    let home = TestHome::new();
    let start = Instant::now();
    let out = js(&home, "while (true) {}", &["https://example.com/"]);
    let elapsed = start.elapsed();
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stdout.starts_with("DENY GET https://example.com/\n"),
        "{out:?}"
    );
    assert!(out.stderr.contains("did not finish"), "{out:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[test]
fn a_huge_allocation_is_denied_without_crashing() {
    let home = TestHome::new();
    for rule in [
        "let a = []; while (true) a.push('x'.repeat(1e6))",
        "new Array(1e9).fill(1)",
    ] {
        let out = js(&home, rule, &["https://example.com/"]);
        // Some(1): an orderly exit, not a signal.
        assert_eq!(out.code, Some(1), "{rule}: {out:?}");
        assert!(
            out.stdout.starts_with("DENY GET https://example.com/\n"),
            "{out:?}"
        );
        assert!(
            out.stderr.contains("out of memory") || out.stderr.contains("did not finish"),
            "{out:?}"
        );
        assert_httpjail_stderr(&out);
    }
}

#[test]
fn numbers_and_undefined_are_not_answers() {
    let home = TestHome::new();
    for (rule, needle) in [
        ("1", "number"),
        ("undefined", "undefined"),
        ("let x = 1;", "undefined"),
    ] {
        let out = js(&home, rule, &["https://example.com/"]);
        assert_eq!(out.code, Some(1), "{rule}: {out:?}");
        assert!(
            out.stdout.starts_with("DENY GET https://example.com/\n"),
            "{out:?}"
        );
        assert!(out.stdout.contains(needle), "{rule}: {out:?}");
    }
}

#[test]
fn a_missing_rule_file_stops_httpjail_naming_the_path() {
    let home = TestHome::new();
    let missing = home.path().join("no-such-rules.js");
    let out = test_with(
        &home,
        &["--js-file", missing.to_str().expect("utf-8 path")],
        &["https://example.com/"],
    );
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(
        out.stderr.contains(&missing.display().to_string()),
        "{out:?}"
    );
    assert_httpjail_stderr(&out);
}

#[test]
fn console_output_shows_on_stderr_by_default() {
    let home = TestHome::new();
    let out = js(
        &home,
        "console.log('checking', r.host); true",
        &["https://example.com/"],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "ALLOW GET https://example.com/\n");
    assert!(
        out.stderr.contains("httpjail: rule: checking example.com"),
        "{out:?}"
    );
    assert_httpjail_stderr(&out);
}

// ---------------------------------------------------------------------------------------------
// --js-file reload, through the library

#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl io::Write for LogBuffer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

fn poll_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn js_file_edits_take_effect_and_broken_edits_keep_the_previous_rule() {
    let home = TestHome::new();
    let path: PathBuf = home.write("policy.js", "r.host === 'allowed.example'");
    let log = LogBuffer::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let request = RuleRequest::from_url(
        "GET",
        "https://allowed.example/",
        RuleRequest::local_requester(),
    )
    .expect("request");
    tracing::subscriber::with_default(subscriber, || {
        let engine = JsEngine::compile(
            &JsSource::File(path.clone()),
            JsOptions {
                deadline: Duration::from_millis(100),
                memory_limit: 64 * 1024 * 1024,
            },
        )
        .expect("compile");
        assert_eq!(engine.evaluate(&request), Decision::ALLOW);

        std::fs::write(&path, "({deny_message: 'policy changed'})").expect("rewrite");
        poll_until("the edit to apply", || {
            !engine.evaluate(&request).is_allow()
        });
        assert_eq!(
            engine.evaluate(&request),
            Decision::deny_with(DenyReason::Rule, "policy changed")
        );

        std::fs::write(&path, "true &&& false").expect("broken edit");
        poll_until("the broken edit to be reported", || {
            log.text().contains("edit not applied")
        });
        assert_eq!(
            engine.evaluate(&request),
            Decision::deny_with(DenyReason::Rule, "policy changed"),
            "the previous rule must stay in force"
        );
    });
    let text = log.text();
    let expected = format!(
        "--js-file {}: edit not applied: JavaScript syntax error at line 1, column",
        path.display()
    );
    assert!(text.contains(&expected), "{text}");
    assert!(text.contains("keeping the previous rule"), "{text}");
    assert!(text.contains("WARN"), "{text}");
}
