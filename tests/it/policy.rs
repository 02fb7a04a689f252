//! `httpjail replay` and `httpjail learn` through the real binary, on logs shaped like what the
//! proxy writes (`tests/fixtures/policy/run.jsonl`: allowed, rule-denied, proxy-denied and
//! unparsed records). No network.
//!
//! Tests whose name ends in `_js` need the JavaScript engine (`--js-file`).

use std::path::{Path, PathBuf};

use crate::support::{Run, TestHome, run};

/// The fixture: 18 lines; 14 allowed requests on 4 sites, 1 rule deny (telemetry.test, line
/// 7), 2 proxy denies (private_address line 15, tx_limit line 16), 1 unparsed (line 17).
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policy/run.jsonl")
}

fn fixture_text() -> String {
    std::fs::read_to_string(fixture()).unwrap()
}

fn replay(home: &TestHome, args: &[&str]) -> Run {
    run(home.httpjail().arg("replay").args(args))
}

/// A `--sh` rule that allows exactly these hosts.
fn sh_allow(hosts: &[&str]) -> String {
    format!(
        "case \"$HTTPJAIL_HOST\" in {}) exit 0;; *) echo \"host $HTTPJAIL_HOST is not allowed\"; exit 1;; esac",
        hosts.join("|")
    )
}

const FIXTURE_HOSTS: [&str; 4] = ["registry.test", "objects.test", "api.test", "127.0.0.1"];

fn json(out: &Run) -> serde_json::Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"))
}

#[test]
fn replay_with_the_recorded_policy_as_sh_has_no_flips() {
    let home = TestHome::new();
    let fixture = fixture();
    let out = replay(
        &home,
        &["--sh", &sh_allow(&FIXTURE_HOSTS), fixture.to_str().unwrap()],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.ends_with("result: no flips\n"), "{out:?}");
    assert!(
        out.stdout.contains("  requests decided again  15\n"),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains("  allowed                 14 (recorded: 14)\n"),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains("  denied                  1 (recorded: 1)\n"),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains("  denied by the proxy     2 (not compared)\n"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains(
            "  skipped lines           1 (0 malformed or inconsistent, 1 unparsed traffic)\n"
        ),
        "{out:?}"
    );
    assert!(
        !out.stderr.contains("warning"),
        "no warning for a clean log: {out:?}"
    );
}

#[test]
fn replay_with_sh_lists_flips_both_ways_in_log_order_and_exits_1() {
    let home = TestHome::new();
    let fixture = fixture();
    // objects.test no longer allowed; telemetry.test now allowed.
    let out = replay(
        &home,
        &[
            "--sh",
            &sh_allow(&["registry.test", "api.test", "127.0.0.1", "telemetry.test"]),
            fixture.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    let log = fixture.display().to_string();
    let expected_to_deny = format!(
        "flipped allow -> deny (3):\n\
         \x20 {log}:8: GET https://objects.test/blobs/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n\
         \x20     now: deny (rule): host objects.test is not allowed\n\
         \x20 {log}:9: GET https://objects.test/blobs/da39a3ee5e6b4b0d3255bfef95601890afd80709\n\
         \x20     now: deny (rule): host objects.test is not allowed\n\
         \x20 {log}:10: HEAD https://objects.test/objects/0b6f6c2e-8d4a-4f7e-9a63-2f0c1d9e8b7a\n\
         \x20     now: deny (rule): host objects.test is not allowed\n\n"
    );
    assert!(out.stdout.starts_with(&expected_to_deny), "{out:?}");
    let expected_to_allow = format!(
        "flipped deny -> allow (1):\n\
         \x20 {log}:7: GET https://telemetry.test/collect?id=1\n\
         \x20     was: deny (rule): telemetry is not allowed\n\
         \x20     now: allow\n"
    );
    assert!(out.stdout.contains(&expected_to_allow), "{out:?}");
    assert!(
        out.stdout.contains("  flipped allow -> deny   3\n"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("  flipped deny -> allow   1\n"),
        "{out:?}"
    );
    assert!(out.stdout.ends_with("result: 4 flips\n"), "{out:?}");
}

#[test]
fn replay_with_a_proc_rule() {
    let home = TestHome::new();
    let processor = home.script(
        "filter.sh",
        "#!/bin/sh\n\
         while IFS= read -r line; do\n\
           case \"$line\" in\n\
             *'\"host\":\"registry.test\"'*) echo true ;;\n\
             *'\"method\":\"PUT\"'*) echo '{\"allow\": {\"max_tx_bytes\": 1000}}' ;;\n\
             *) echo '{\"deny_message\": \"registry only\"}' ;;\n\
           esac\n\
         done\n",
    );
    let fixture = fixture();
    let out = replay(
        &home,
        &[
            "--proc",
            processor.to_str().unwrap(),
            "--format",
            "json",
            fixture.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    let v = json(&out);
    // Allowed before, denied now: objects.test (3), api.test (2), 127.0.0.1 GET (1), and the
    // PUT of 70345 bytes, now bounded to 1000 bytes (a tx_limit deny).
    assert_eq!(v["flipped_allow_to_deny"], 7, "{out:?}");
    assert_eq!(v["flipped_deny_to_allow"], 0, "{out:?}");
    let put = v["flips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["method"] == "PUT")
        .unwrap();
    assert_eq!(put["line"], 13);
    assert_eq!(put["reason"], "tx_limit");
    assert!(put["message"].as_str().unwrap().contains("70345"), "{put}");
    let api = v["flips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["url"] == "https://api.test/users/456/repos")
        .unwrap();
    assert_eq!(api["message"], "registry only");
}

#[test]
fn replay_without_a_rule_denies_everything() {
    let home = TestHome::new();
    let fixture = fixture();
    let out = replay(&home, &["--format", "json", fixture.to_str().unwrap()]);
    assert_eq!(out.code, Some(1), "{out:?}");
    let v = json(&out);
    assert_eq!(v["rule"], "no rule (everything denied)");
    assert_eq!(v["total"], 15);
    assert_eq!(v["allowed"], 0);
    assert_eq!(v["denied"], 15);
    assert_eq!(v["flipped_allow_to_deny"], 14);
    assert_eq!(v["flips"][0]["reason"], "no_rule");

    // A log of denials only: nothing flips without a rule.
    let denied: String = fixture_text()
        .lines()
        .filter(|l| l.contains("\"decision\":\"deny\""))
        .map(|l| format!("{l}\n"))
        .collect();
    let path = home.write("denied.jsonl", &denied);
    let out = replay(&home, &[path.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.ends_with("result: no flips\n"), "{out:?}");
}

#[test]
fn json_output_is_one_document_with_the_documented_shape() {
    let home = TestHome::new();
    let fixture = fixture();
    let out = replay(
        &home,
        &[
            "--sh",
            "exit 0",
            "--format",
            "json",
            fixture.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    let v = json(&out);
    assert_eq!(v["format"], "httpjail-replay-v1");
    assert_eq!(v["log"], fixture.to_str().unwrap());
    assert_eq!(v["rule"], "--sh exit 0");
    for (key, value) in [
        ("lines", 18),
        ("total", 15),
        ("allowed", 15),
        ("denied", 0),
        ("recorded_allowed", 14),
        ("recorded_denied", 1),
        ("flipped_allow_to_deny", 0),
        ("flipped_deny_to_allow", 1),
        ("proxy_decided", 2),
        ("skipped", 1),
    ] {
        assert_eq!(v[key], value, "{key}: {out:?}");
    }
    let flip = &v["flips"][0];
    assert_eq!(flip["line"], 7);
    assert_eq!(flip["method"], "GET");
    assert_eq!(flip["url"], "https://telemetry.test/collect?id=1");
    assert_eq!(
        (flip["from"].as_str(), flip["to"].as_str()),
        (Some("deny"), Some("allow"))
    );
    assert_eq!(flip["recorded_reason"], "rule");
    assert_eq!(flip["recorded_message"], "telemetry is not allowed");
    assert!(flip["reason"].is_null() && flip["message"].is_null());
    let proxy = v["proxy_decided_requests"].as_array().unwrap();
    let reasons: Vec<(u64, &str, &str)> = proxy
        .iter()
        .map(|p| {
            (
                p["line"].as_u64().unwrap(),
                p["reason"].as_str().unwrap(),
                p["rule_now"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [(15, "private_address", "allow"), (16, "tx_limit", "allow")]
    );
    assert_eq!(v["skipped_lines"][0]["line"], 17);
    assert_eq!(v["skipped_lines"][0]["kind"], "unparsed");
}

#[test]
fn malformed_lines_are_reported_with_their_line_numbers_and_skipped() {
    let home = TestHome::new();
    let mut lines: Vec<String> = fixture_text().lines().map(str::to_owned).collect();
    lines.insert(2, "this is not json".to_owned()); // line 3
    lines.insert(5, "{\"time\": \"t\"}".to_owned()); // line 6
    let host_swapped = lines[0].replace("\"host\":\"registry.test\"", "\"host\":\"evil.test\"");
    lines.push(host_swapped); // line 21
    lines.push("{\"truncated\":".to_owned()); // line 22, as after a crash
    let path = home.write("run.jsonl", &(lines.join("\n") + "\n"));
    let out = replay(
        &home,
        &["--sh", &sh_allow(&FIXTURE_HOSTS), path.to_str().unwrap()],
    );
    assert_eq!(out.code, Some(0), "the good lines still replay: {out:?}");
    let p = path.display();
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("httpjail: warning: "))
        .collect();
    assert_eq!(warnings.len(), 4, "{out:?}");
    assert!(
        warnings[0].starts_with(&format!(
            "httpjail: warning: {p}:3: not a request-log record"
        )),
        "{out:?}"
    );
    assert!(
        warnings[1].starts_with(&format!("httpjail: warning: {p}:6: ")),
        "{out:?}"
    );
    assert!(warnings[1].contains("missing field"), "{out:?}");
    assert!(
        warnings[2].starts_with(&format!(
            "httpjail: warning: {p}:21: `host` is `evil.test` but the URL gives `registry.test`"
        )),
        "{out:?}"
    );
    assert!(
        warnings[3].starts_with(&format!("httpjail: warning: {p}:22: ")),
        "{out:?}"
    );
    assert!(
        out.stdout.contains(
            "  skipped lines           5 (4 malformed or inconsistent, 1 unparsed traffic)\n"
        ),
        "{out:?}"
    );
    // JSON lists them too.
    let out = replay(&home, &["--format", "json", path.to_str().unwrap()]);
    let v = json(&out);
    let skipped: Vec<(u64, &str)> = v["skipped_lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["line"].as_u64().unwrap(), s["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        skipped,
        [
            (3, "malformed"),
            (6, "malformed"),
            (19, "unparsed"),
            (21, "inconsistent"),
            (22, "malformed")
        ]
    );
}

#[test]
fn errors_exit_125() {
    let home = TestHome::new();
    let fixture = fixture();
    let fixture = fixture.to_str().unwrap();
    let missing = home.path().join("missing.jsonl");
    let out = replay(&home, &["--sh", "exit 0", missing.to_str().unwrap()]);
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(out.stderr.contains("cannot read the log"), "{out:?}");
    assert!(out.stderr.contains("missing.jsonl"), "{out:?}");

    let out = replay(&home, &["--sh", home.path().to_str().unwrap(), fixture]);
    assert_eq!(out.code, Some(125), "a directory is not a rule: {out:?}");

    let out = replay(&home, &["--sh", "/nonexistent/rule", fixture]);
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(out.stderr.contains("--sh"), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");

    let out = replay(&home, &["--sh", "exit 0", home.path().to_str().unwrap()]);
    assert_eq!(out.code, Some(125), "a directory is not a log: {out:?}");

    let text_log = home.write(
        "text.log",
        "2025-06-01T10:00:00.000Z + GET https://a.test/\n2025-06-01T10:00:01.000Z - GET https://b.test/\n",
    );
    let out = replay(&home, &["--sh", "exit 0", text_log.to_str().unwrap()]);
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(
        out.stderr
            .contains("text.log:1: this looks like a text log line"),
        "{out:?}"
    );
    assert!(out.stderr.contains("--request-log-format json"), "{out:?}");
    assert!(out.stderr.contains("no line of"), "{out:?}");

    let out = run(home.httpjail().args(["learn", text_log.to_str().unwrap()]));
    assert_eq!(out.code, Some(125), "{out:?}");
    let out = run(home.httpjail().args(["learn", missing.to_str().unwrap()]));
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn a_js_rule_that_does_not_load_exits_125_js() {
    let home = TestHome::new();
    let fixture = fixture();
    let out = replay(
        &home,
        &[
            "--js-file",
            "/nonexistent/rule.js",
            fixture.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(out.stderr.contains("rule.js"), "{out:?}");
    let broken = home.write("broken.js", "const x = ;\n");
    let out = replay(
        &home,
        &[
            "--js-file",
            broken.to_str().unwrap(),
            fixture.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn an_empty_log_replays_to_nothing() {
    let home = TestHome::new();
    let empty = home.write("empty.jsonl", "");
    let out = replay(&home, &["--format", "json", empty.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(json(&out)["total"], 0);
}

#[test]
fn sh_replays_in_parallel_but_bounded_and_in_log_order() {
    let home = TestHome::new();
    let slots = home.path().join("slots");
    std::fs::create_dir(&slots).unwrap();
    let counts = home.path().join("counts");
    let rule = home.script(
        "rule.sh",
        &format!(
            "#!/bin/sh\nmkdir {slots}/$HTTPJAIL_HOST\nls {slots} | wc -l >> {counts}\nsleep 0.2\nrmdir {slots}/$HTTPJAIL_HOST\n\
             case \"$HTTPJAIL_HOST\" in h*[13579].test) exit 1;; esac\nexit 0\n",
            slots = slots.display(),
            counts = counts.display()
        ),
    );
    let log: String = (0..48)
        .map(|i| {
            format!(
                "{{\"time\":\"2025-06-01T10:00:00.000Z\",\"decision\":\"allow\",\"method\":\"GET\",\"url\":\"https://h{i}.test/\",\"host\":\"h{i}.test\",\"scheme\":\"https\",\"path\":\"/\",\"port\":443,\"requester_ip\":\"127.0.0.1\",\"reason\":null,\"status\":200,\"bytes_up\":100,\"bytes_down\":10,\"duration_ms\":1}}\n"
            )
        })
        .collect();
    let path = home.write("many.jsonl", &log);
    let out = replay(
        &home,
        &[
            "--sh",
            rule.to_str().unwrap(),
            "--format",
            "json",
            path.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    let v = json(&out);
    let lines: Vec<u64> = v["flips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["line"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (0..48u64).filter(|i| i % 2 == 1).map(|i| i + 1).collect();
    assert_eq!(lines, expected, "flips come in log order");
    let counts = std::fs::read_to_string(&counts).unwrap();
    let max = counts
        .lines()
        .map(|l| l.trim().parse::<usize>().unwrap())
        .max()
        .unwrap();
    assert!(max <= 16, "at most 16 --sh processes at once, saw {max}");
    assert!(
        max >= 2,
        "--sh rules run in parallel, saw at most {max} at once"
    );
}

#[test]
fn learn_prints_a_sorted_commented_rule() {
    let home = TestHome::new();
    let fixture = fixture();
    let out = run(home.httpjail().args(["learn", fixture.to_str().unwrap()]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    let rule = &out.stdout;
    assert!(rule.starts_with(&format!(
        "// httpjail rule learned from {} by `httpjail learn`\n// generated ",
        fixture.display()
    )));
    assert!(
        rule.contains(
            "// 18 log lines: 14 allowed requests learned (4 sites), 4 requests not learned (denied),\n"
        ),
        "{rule}"
    );
    assert!(
        rule.contains("//   GET https://telemetry.test (rule) x1\n"),
        "{rule}"
    );
    assert!(
        rule.contains("//   GET https://internal.test (private_address) x1\n"),
        "{rule}"
    );
    let hosts: Vec<&str> = rule
        .lines()
        .filter_map(|l| l.trim().strip_prefix("host: "))
        .collect();
    assert_eq!(
        hosts,
        [
            "\"127.0.0.1\",",
            "\"api.test\",",
            "\"objects.test\",",
            "\"registry.test\","
        ]
    );
    assert!(
        rule.contains("      [\"users\", INT, \"repos\"],\n"),
        "{rule}"
    );
    assert!(rule.contains("      [\"blobs\", HEX],\n"), "{rule}");
    assert!(rule.contains("      [\"objects\", UUID],\n"), "{rule}");
    assert!(
        rule.contains("    max_tx_bytes: 88000, // largest request seen: 70345 bytes\n"),
        "{rule}"
    );
    assert!(
        rule.contains("    max_tx_bytes: 3500, // largest request seen: 2431 bytes\n"),
        "{rule}"
    );
    assert!(
        !rule.contains("telemetry.test\","),
        "denied hosts are not learned: {rule}"
    );
    // Same log, same rule (the date is the day's).
    let again = run(home.httpjail().args(["learn", fixture.to_str().unwrap()]));
    assert_eq!(again.stdout, out.stdout);
}

/// Learns the fixture into `learned.js` in `home`.
fn learn_to_file(home: &TestHome) -> PathBuf {
    let fixture = fixture();
    let out = run(home.httpjail().args(["learn", fixture.to_str().unwrap()]));
    assert_eq!(out.code, Some(0), "{out:?}");
    home.write("learned.js", &out.stdout)
}

#[test]
fn the_learned_rule_replays_without_flips_js() {
    let home = TestHome::new();
    let learned = learn_to_file(&home);
    let fixture = fixture();
    let out = replay(
        &home,
        &[
            "--js-file",
            learned.to_str().unwrap(),
            fixture.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.ends_with("result: no flips\n"), "{out:?}");
    assert!(
        out.stdout
            .contains("  allowed                 14 (recorded: 14)\n"),
        "{out:?}"
    );
    // And requests the run did not make stay denied.
    for (method, url, expected) in [
        ("GET", "https://api.test/users/789/repos", 0),
        ("GET", "https://api.test/admin", 1),
        ("DELETE", "https://api.test/users/1/repos", 1),
        ("GET", "https://telemetry.test/collect", 1),
        ("GET", "https://registry.test:8443/lodash", 1),
    ] {
        let out = run(home.httpjail().args([
            "--js-file",
            learned.to_str().unwrap(),
            "--test",
            method,
            url,
        ]));
        assert_eq!(out.code, Some(expected), "{method} {url}: {out:?}");
    }
}

#[test]
fn an_edited_learned_rule_that_drops_a_host_lists_its_flips_js() {
    let home = TestHome::new();
    let learned = learn_to_file(&home);
    let text = std::fs::read_to_string(&learned).unwrap();
    // Delete the objects.test entry, as a reviewer would.
    let start = text.find("  { // https://objects.test").unwrap();
    let end = start + text[start..].find("\n  },\n").unwrap() + "\n  },\n".len();
    let edited = format!("{}{}", &text[..start], &text[end..]);
    assert!(!edited.contains("objects.test\""));
    let edited_path = home.write("edited.js", &edited);
    let fixture = fixture();
    let out = replay(
        &home,
        &[
            "--js-file",
            edited_path.to_str().unwrap(),
            fixture.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stdout.starts_with("flipped allow -> deny (3):\n"),
        "{out:?}"
    );
    for line in [8, 9, 10] {
        assert!(
            out.stdout
                .contains(&format!("{}:{line}: ", fixture.display())),
            "line {line}: {out:?}"
        );
    }
    assert!(!out.stdout.contains("flipped deny -> allow ("), "{out:?}");
    assert!(out.stdout.ends_with("result: 3 flips\n"), "{out:?}");
}

#[test]
fn a_js_host_allowlist_replays_js() {
    let home = TestHome::new();
    let fixture = fixture();
    let out = replay(
        &home,
        &[
            "--js",
            "['registry.test', 'api.test'].includes(r.host)",
            "--format",
            "json",
            fixture.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    let v = json(&out);
    // objects.test (3) and 127.0.0.1 (2) flip to deny.
    assert_eq!(v["flipped_allow_to_deny"], 5, "{out:?}");
    assert_eq!(v["flips"][0]["reason"], "rule", "{out:?}");
}
