//! Usage errors, `--help`, `--version`: the binary without any network.

use crate::support::{TestHome, run};

#[test]
fn help_documents_every_option_with_examples() {
    let home = TestHome::new();
    let out = run(home.httpjail().arg("--help"));
    assert_eq!(out.code, Some(0), "{out:?}");
    for flag in [
        "--js",
        "--js-file",
        "--sh",
        "--proc",
        "--request-log",
        "--request-log-format",
        "--weak",
        "--server",
        "--timeout",
        "--test",
        "--docker-run",
        "--upstream-ca",
        "--resolve",
        "--allow-private",
        "--secret",
        "--verbose",
        "--cleanup",
        "--version",
    ] {
        assert!(
            out.stdout.contains(flag),
            "--help does not mention {flag}:\n{}",
            out.stdout
        );
    }
    assert!(out.stdout.contains("Example"), "{out:?}");
}

#[test]
fn version_prints_the_crate_version() {
    let home = TestHome::new();
    let out = run(home.httpjail().arg("--version"));
    assert_eq!(out.code, Some(0));
    assert!(out.stdout.contains(env!("CARGO_PKG_VERSION")), "{out:?}");
}

#[test]
fn two_rule_options_are_refused_naming_both() {
    let home = TestHome::new();
    let out =
        run(home
            .httpjail()
            .args(["--js", "true", "--proc", "cat", "--test", "http://a.test/"]));
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(
        out.stderr.contains("--js") && out.stderr.contains("--proc"),
        "{out:?}"
    );
    assert!(
        out.stderr.lines().all(|l| l.starts_with("httpjail:")),
        "{out:?}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn bad_values_name_the_flag_and_the_value() {
    let home = TestHome::new();
    for (args, needle) in [
        (vec!["--timeout", "soon", "--", "true"], "--timeout"),
        (vec!["--resolve", "nohost", "--", "true"], "--resolve"),
        (
            vec!["--allow-private", "10.0.0.0/40", "--", "true"],
            "--allow-private",
        ),
        (vec!["--secret", "NOPE", "--", "true"], "--secret"),
        (vec!["--test", "GET", "not-a-url"], "--test"),
        (vec!["--js", "true"], "after `--`"),
    ] {
        let out = run(home.httpjail().args(&args));
        assert_eq!(out.code, Some(125), "{args:?}: {out:?}");
        assert!(out.stderr.contains(needle), "{args:?}: {out:?}");
    }
}

#[test]
fn no_rule_denies() {
    let home = TestHome::new();
    let out = run(home.httpjail().args(["--test", "https://example.com/"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(
        out.stdout.lines().next(),
        Some("DENY GET https://example.com/"),
        "{out:?}"
    );
}
