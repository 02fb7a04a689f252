//! The generated rule, run in QuickJS (strict mode, as a script and inside a block as the JS
//! engine compiles it), must agree with [`Policy::decide`] and survive hostile logs.

use rquickjs::context::EvalOptions;
use rquickjs::{Context, Object, Runtime, Value};

use super::*;
use crate::policy::learn::Learner;
use crate::policy::records::{Line, parse_line};
use crate::request_log::Record;
use crate::rules::answer::{self, Answer};
use crate::rules::{Decision, DenyReason, RuleRequest};

fn request(method: &str, url: &str) -> RuleRequest {
    RuleRequest::from_url(method, url, RuleRequest::local_requester()).unwrap()
}

fn record(method: &str, url: &str, bytes_up: u64) -> Record {
    let mut r = Record::for_request(&request(method, url), &Decision::ALLOW);
    r.bytes_up = bytes_up;
    r
}

fn learn_lines(lines: &[String]) -> Policy {
    let mut learner = Learner::new();
    for (i, line) in lines.iter().enumerate() {
        learner.add(parse_line(i + 1, Line::Text(line)));
    }
    learner.finish()
}

fn learn(records: &[Record]) -> Policy {
    learn_lines(&records.iter().map(Record::json_line).collect::<Vec<_>>())
}

const HEADER: Header<'static> = Header {
    source: "run.jsonl",
    generated: "2025-01-02",
};

/// Evaluates `rule` for each request in one QuickJS context, the way the engine does: strict
/// global code, the rule inside a block, `r` a global; the answer goes through the one
/// answer parser.
fn js_decide(rule: &str, requests: &[RuleRequest]) -> Vec<Decision> {
    let runtime = Runtime::new().unwrap();
    let context = Context::full(&runtime).unwrap();
    context.with(|ctx| {
        // As a plain script too: it must compile and run on its own (one request).
        if let Some(first) = requests.first() {
            set_request(&ctx, first);
            let _: Value<'_> = ctx
                .eval_with_options(rule, EvalOptions::default())
                .unwrap_or_else(|e| panic!("the rule does not run as a script: {e}\n{rule}"));
        }
        let wrapped = format!("{{\n{rule}\n}}");
        requests
            .iter()
            .map(|request| {
                set_request(&ctx, request);
                let value: Value<'_> = ctx
                    .eval_with_options(wrapped.as_str(), EvalOptions::default())
                    .unwrap_or_else(|e| panic!("the rule failed: {e}\n{rule}"));
                let answer = match ctx.json_stringify(value).unwrap() {
                    Some(json) => {
                        Answer::Value(serde_json::from_str(&json.to_string().unwrap()).unwrap())
                    }
                    None => Answer::Undefined,
                };
                answer::decide(&answer)
            })
            .collect()
    })
}

fn set_request(ctx: &rquickjs::Ctx<'_>, request: &RuleRequest) {
    let r = Object::new(ctx.clone()).unwrap();
    r.set("url", request.url.as_str()).unwrap();
    r.set("method", request.method.as_str()).unwrap();
    r.set("scheme", request.scheme.as_str()).unwrap();
    r.set("host", request.host.as_str()).unwrap();
    r.set("path", request.path.as_str()).unwrap();
    r.set("port", i32::from(request.port)).unwrap();
    r.set("requester_ip", request.requester_ip.to_string())
        .unwrap();
    ctx.globals().set("r", r).unwrap();
}

/// JS and Rust agree on every request; every learned record is allowed by both.
fn assert_agree(policy: &Policy, learned: &[RuleRequest], others: &[RuleRequest]) {
    let rule = render(policy, &HEADER);
    let all: Vec<RuleRequest> = learned.iter().chain(others).cloned().collect();
    let js = js_decide(&rule, &all);
    for (request, js) in all.iter().zip(&js) {
        let rust = policy.decide(request);
        let same = match (&rust, js) {
            (Decision::Allow { max_tx_bytes: a }, Decision::Allow { max_tx_bytes: b }) => a == b,
            (Decision::Deny { .. }, Decision::Deny { reason, .. }) => *reason == DenyReason::Rule,
            _ => false,
        };
        assert!(
            same,
            "{} {}: rust {rust:?}, js {js:?}\n{rule}",
            request.method, request.url
        );
    }
    for request in learned {
        assert!(
            policy.decide(request).is_allow(),
            "learned request denied: {} {}\n{rule}",
            request.method,
            request.url
        );
    }
}

#[test]
fn the_rule_reads_well() {
    let policy = learn(&[
        record("GET", "https://api.test/users/123/repos", 200),
        record("GET", "https://api.test/users/456/repos", 200),
        record("POST", "http://127.0.0.1:8080/upload", 5000),
        record("GET", "https://api.test/", 100),
    ]);
    let rule = render(&policy, &HEADER);
    let expected_sites = r#"const sites = [
  { // http://127.0.0.1:8080: 1 request
    host: "127.0.0.1",
    scheme: "http",
    port: 8080,
    methods: ["POST"],
    paths: [
      ["upload"],
    ],
    max_tx_bytes: 6300, // largest request seen: 5000 bytes
  },
  { // https://api.test: 3 requests
    host: "api.test",
    methods: ["GET"],
    paths: [
      [""], // the path "/"
      ["users", INT, "repos"],
    ],
  },
];
"#;
    assert!(rule.contains(expected_sites), "{rule}");
    assert!(rule.starts_with("// httpjail rule learned from run.jsonl by `httpjail learn`\n"));
    assert!(
        rule.contains("// generated 2025-01-02; requests recorded "),
        "{rule}"
    );
    assert!(
        rule.contains(
            "// 4 log lines: 4 allowed requests learned (2 sites), 0 requests not learned (denied),\n// 0 lines skipped (malformed or inconsistent)\n"
        ),
        "{rule}"
    );
}

#[test]
fn js_and_rust_agree_and_allow_every_learned_request() {
    let records = vec![
        record("GET", "https://api.test/users/123/repos", 200),
        record("GET", "https://api.test/users/456/repos/x", 200),
        record(
            "HEAD",
            "https://api.test/objects/0b6f6c2e-8d4a-4f7e-9a63-2f0c1d9e8b7a",
            200,
        ),
        record(
            "GET",
            "https://api.test/blobs/da39a3ee5e6b4b0d3255bfef95601890afd80709",
            200,
        ),
        record("GET", "https://api.test/t/aZ3kP9qL2mX7vB4nR8tY", 200),
        record("PUT", "http://up.test/files/a.bin", 70_000),
        record("GET", "http://up.test:8080/", 100),
        record("GET", "https://[::1]:8443/v6", 100),
        record("GET", "https://big.test/?q=1", 100),
    ];
    let mut many: Vec<Record> = (0..40)
        .map(|i| {
            record(
                "GET",
                &format!("https://npm.test/pkg-{i}/-/pkg-{i}.tgz"),
                150,
            )
        })
        .collect();
    many.extend(records);
    let policy = learn(&many);
    let learned: Vec<RuleRequest> = many.iter().map(|r| request(&r.method, &r.url)).collect();
    let others = [
        request("GET", "https://api.test/users/789/repos"),
        request("GET", "https://api.test/users/789/repos/deep/er"),
        request("GET", "https://api.test/users/x/repos"),
        request("GET", "https://api.test/users/789/reposx"),
        request("POST", "https://api.test/users/1/repos"),
        request(
            "HEAD",
            "https://api.test/objects/11111111-2222-3333-4444-555555555555",
        ),
        request("HEAD", "https://api.test/objects/not-a-uuid"),
        request("GET", "https://api.test/t/ZZZZZZZZZZZZZZZZZZZZ"),
        request("GET", "https://api.test/t/short"),
        request("PUT", "http://up.test/files/b.bin"),
        request("PUT", "https://up.test/files/a.bin"),
        request("GET", "http://up.test:8081/"),
        request("GET", "http://up.test:8080/other"),
        request("GET", "https://[::1]:8443/v6/x"),
        request("GET", "https://[::2]:8443/v6"),
        request("GET", "https://npm.test/anything/at/all"),
        request("GET", "https://nowhere.test/"),
        request("GET", "https://big.test/"),
        request("GET", "https://big.test/x"),
    ];
    assert_agree(&policy, &learned, &others);
    let npm = policy.sites.iter().find(|s| s.host == "npm.test").unwrap();
    assert!(npm.prefixes.len() <= MAX_PREFIXES_PER_SITE);
    assert_eq!(npm.merged_from, Some(40));
    let rule = render(&policy, &HEADER);
    assert!(
        rule.contains(&format!(
            "  {{ // https://npm.test: 40 requests; 40 path prefixes merged into {}\n",
            npm.prefixes.len()
        )),
        "{rule}"
    );
}

#[test]
fn hostile_paths_methods_and_names_cannot_break_out() {
    let nasty_paths = [
        r#"/a"b"#,
        r"/back\slash",
        "/end*/comment",
        "/*/x",
        "/line\u{2028}sep\u{2029}",
        "/unicode/\u{e9}\u{1f600}/\u{202e}rtl",
        "/\"]});allowAll=true;//",
        "/${x}/`tick`",
        "/</script>",
    ];
    let mut records: Vec<Record> = nasty_paths
        .iter()
        .map(|p| record("GET", &format!("https://victim.test{p}"), 10))
        .collect();
    records.push(record("PO'S`T|", "https://victim.test/m", 10));
    let mut timed = record("GET", "https://victim.test/t", 10);
    timed.time = "2025\n}; true; //\u{2028}x".to_owned();
    records.push(timed);
    let policy = learn(&records);
    assert_eq!(
        policy.stats.learned,
        records.len(),
        "every hostile record is learned"
    );
    let header = Header {
        source: "evil\nname\u{2028}*/\".jsonl",
        generated: "2025-01-02\r\n;true",
    };
    let rule = render(&policy, &header);
    assert!(rule.is_ascii(), "{rule}");
    for line in rule.lines() {
        // Every line is code we wrote or a comment: untrusted text never starts a line.
        let t = line.trim_start();
        assert!(
            t.is_empty()
                || t.starts_with("//")
                || t.starts_with("const ")
                || t.starts_with("function ")
                || t.starts_with('{')
                || t.starts_with('}')
                || t.starts_with(']')
                || t.starts_with('[')
                || t.starts_with("host:")
                || t.starts_with("methods:")
                || t.starts_with("paths:")
                || t.starts_with("scheme:")
                || t.starts_with("port:")
                || t.starts_with("max_tx_bytes:")
                || t.starts_with("return ")
                || t.starts_with("prefix.")
                || t.starts_with("s.")
                || t.starts_with('(')
                || t.starts_with("site")
                || t.starts_with("? ")
                || t.starts_with(": "),
            "unexpected line {line:?}\n{rule}"
        );
    }
    let learned: Vec<RuleRequest> = records.iter().map(|r| request(&r.method, &r.url)).collect();
    let others = [
        request("GET", "https://other.test/"),
        request("GET", "https://victim.test/a%22b"),
        request("DELETE", "https://victim.test/m"),
    ];
    assert_agree(&policy, &learned, &others);
}

#[test]
fn rendering_is_deterministic_in_any_record_order() {
    let mut records: Vec<Record> = (0..120)
        .map(|i| {
            record(
                ["GET", "POST", "PUT"][i % 3],
                &format!("https://h{}.test/a{}/{}/z", i % 5, i % 17, i),
                (i as u64) * 37,
            )
        })
        .collect();
    let forward = render(&learn(&records), &HEADER);
    records.reverse();
    let backward = render(&learn(&records), &HEADER);
    records.rotate_left(17);
    let rotated = render(&learn(&records), &HEADER);
    assert_eq!(forward, backward);
    assert_eq!(forward, rotated);
}

#[test]
fn an_empty_policy_denies_everything() {
    let policy = learn(&[]);
    let rule = render(&policy, &HEADER);
    assert!(rule.contains("const sites = [];"), "{rule}");
    let js = js_decide(&rule, &[request("GET", "https://a.test/")]);
    assert_eq!(js, vec![Decision::deny(DenyReason::Rule)]);
}

#[test]
fn denied_requests_are_listed_in_the_header() {
    let denied = Record::for_request(
        &request("POST", "https://evil.test/x"),
        &Decision::deny(DenyReason::Rule),
    );
    let policy = learn(&[denied.clone(), denied, record("GET", "https://ok.test/", 1)]);
    let rule = render(&policy, &HEADER);
    assert!(
        rule.contains("// Denied in the recorded run and not learned (count):\n//   POST https://evil.test (rule) x2\n"),
        "{rule}"
    );
    assert!(!rule.contains("host: \"evil.test\""), "{rule}");
}

#[test]
fn escaping() {
    assert_eq!(js_string(r#"a"b\c"#), r#""a\"b\\c""#);
    assert_eq!(
        js_string("\n\u{2028}é😀"),
        r#""\u000a\u2028\u00e9\ud83d\ude00""#
    );
    assert_eq!(comment("a\nb*/c\u{2029}"), "a\\u{a}b*/c\\u{2029}");
}
