//! Unit tests of the JavaScript engine: answers, the request object, syntax errors, isolation
//! between evaluations, deadlines, memory and stack limits, `console`, threads and reloads.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::json;

use super::*;
use crate::rules::{DenyReason, RuleRequest};

const MIB: usize = 1024 * 1024;

fn options() -> JsOptions {
    JsOptions {
        deadline: Duration::from_millis(100),
        memory_limit: 64 * MIB,
    }
}

fn engine(source: &str) -> JsEngine {
    JsEngine::compile(&JsSource::Inline(source.to_owned()), options())
        .unwrap_or_else(|e| panic!("`{source}` should compile: {e}"))
}

fn request(method: &str, url: &str) -> RuleRequest {
    RuleRequest::from_url(method, url, RuleRequest::local_requester()).expect("valid test URL")
}

fn get(url: &str) -> RuleRequest {
    request("GET", url)
}

/// Compiles `source` and decides one GET of `url`.
fn decide(source: &str, url: &str) -> Decision {
    engine(source).evaluate(&get(url))
}

fn allows(source: &str, url: &str) -> bool {
    decide(source, url).is_allow()
}

fn syntax_error(source: &str) -> (u32, u32, String) {
    match JsEngine::compile(&JsSource::Inline(source.to_owned()), options()) {
        Err(Error::JsSyntax {
            origin,
            line,
            column,
            message,
        }) => {
            assert_eq!(origin, "--js");
            (line, column, message)
        }
        Err(other) => panic!("`{source}`: expected a syntax error, got {other}"),
        Ok(_) => panic!("`{source}` compiled but should not"),
    }
}

/// What tracing events were written, as text.
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

    /// Runs `f` with events (also those of threads that inherit the subscriber) written here.
    fn record<R>(&self, f: impl FnOnce() -> R) -> R {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f)
    }
}

/// Collects what the code in `f` logs.
fn capture<R>(f: impl FnOnce() -> R) -> (R, String) {
    let log = LogBuffer::default();
    let result = log.record(f);
    (result, log.text())
}

// ---------------------------------------------------------------------------------------------
// Answers

#[test]
fn every_answer_type_is_interpreted_by_the_shared_parser() {
    let url = "https://example.com/";
    let cases: &[(&str, Decision)] = &[
        ("true", Decision::ALLOW),
        ("false", Decision::deny(DenyReason::Rule)),
        ("'true'", Decision::ALLOW),
        ("'false'", Decision::deny(DenyReason::Rule)),
        ("({allow: true})", Decision::ALLOW),
        ("({allow: false})", Decision::deny(DenyReason::Rule)),
        (
            "({deny_message: 'Social media blocked'})",
            Decision::deny_with(DenyReason::Rule, "Social media blocked"),
        ),
        (
            "({allow: false, deny_message: 'no'})",
            Decision::deny_with(DenyReason::Rule, "no"),
        ),
        (
            "({allow: {max_tx_bytes: 1024}})",
            Decision::Allow {
                max_tx_bytes: Some(1024),
            },
        ),
        (
            "({allow: {max_tx_bytes: 512 * 2}})",
            Decision::Allow {
                max_tx_bytes: Some(1024),
            },
        ),
        (
            "({allow: {max_tx_bytes: 2 ** 40}})",
            Decision::Allow {
                max_tx_bytes: Some(1 << 40),
            },
        ),
        (
            "'Access denied'",
            Decision::deny_with(DenyReason::Rule, "Access denied"),
        ),
    ];
    for (source, want) in cases {
        assert_eq!(&decide(source, url), want, "{source}");
    }
}

#[test]
fn answers_that_are_not_answers_deny_as_invalid() {
    for source in [
        "1",
        "0",
        "1.5",
        "NaN",
        "Infinity",
        "undefined",
        "null",
        "[true]",
        "({})",
        "''",
        "(() => true)",
        "Symbol('x')",
        "10n",
        "({allow: {max_tx_bytes: 1.5}})",
        "({allow: {max_tx_bytes: -1}})",
        "({allow: 'yes'})",
        "let x = 1;",
        "// only a comment",
    ] {
        let d = decide(source, "https://example.com/");
        assert_eq!(
            d.reason(),
            Some(DenyReason::InvalidAnswer),
            "{source}: {d:?}"
        );
    }
}

#[test]
fn object_answers_may_omit_the_parentheses() {
    let url = "https://example.com/";
    assert_eq!(decide("{allow: true}", url), Decision::ALLOW);
    assert_eq!(
        decide("{allow: {max_tx_bytes: 1024}}", url),
        Decision::Allow {
            max_tx_bytes: Some(1024)
        }
    );
    assert_eq!(
        decide("// comment\n{allow: false, deny_message: 'nope'}", url),
        Decision::deny_with(DenyReason::Rule, "nope")
    );
    // A real block still works as statements.
    assert_eq!(decide("{ const a = 1; a === 1 }", url), Decision::ALLOW);
}

#[test]
fn conditional_object_answers_from_the_docs() {
    let rule = "r.host === 'facebook.com' ? {deny_message: 'Social media blocked'} : true";
    assert_eq!(
        decide(rule, "https://facebook.com/"),
        Decision::deny_with(DenyReason::Rule, "Social media blocked")
    );
    assert_eq!(decide(rule, "https://example.com/"), Decision::ALLOW);
    let uploads = "const uploadHosts = ['uploads.example.com', 'upload.github.com'];\n\
                   uploadHosts.includes(r.host)\n\
                   ? {allow: {max_tx_bytes: 1024}}\n\
                   : r.host.endsWith('.example.com')";
    assert_eq!(
        decide(uploads, "https://uploads.example.com/f"),
        Decision::Allow {
            max_tx_bytes: Some(1024)
        }
    );
    assert_eq!(decide(uploads, "https://api.example.com/"), Decision::ALLOW);
    assert!(!allows(uploads, "https://evil.test/"));
}

#[test]
fn answers_with_getters_and_to_json_are_read_like_json_stringify() {
    let url = "https://example.com/";
    assert_eq!(
        decide("({ toJSON() { return {allow: true}; } })", url),
        Decision::ALLOW
    );
    assert_eq!(
        decide(
            "({ get allow() { return r.host === 'example.com'; } })",
            url
        ),
        Decision::ALLOW
    );
    // A cyclic answer cannot be converted: a deny, not a crash.
    let d = decide("const o = {allow: true}; o.self = o; o", url);
    assert_eq!(d.reason(), Some(DenyReason::EngineError), "{d:?}");
}

// ---------------------------------------------------------------------------------------------
// The request object

#[test]
fn r_has_exactly_the_fields_of_rule_request() {
    let req = RuleRequest::from_url(
        "PATCH",
        "https://API.Example.com:8443/v1/x?y=1",
        "10.1.2.3".parse().expect("ip"),
    )
    .expect("url");
    let d = engine("JSON.stringify(r)").evaluate(&req);
    let Decision::Deny {
        message: Some(text),
        ..
    } = d
    else {
        panic!("expected the JSON of r as a deny message, got {d:?}");
    };
    let seen: serde_json::Value = serde_json::from_str(&text).expect("JSON of r");
    assert_eq!(seen, serde_json::to_value(&req).expect("serialize"));
    assert_eq!(
        seen,
        json!({
            "url": "https://api.example.com:8443/v1/x?y=1",
            "method": "PATCH",
            "scheme": "https",
            "host": "api.example.com",
            "path": "/v1/x",
            "port": 8443,
            "requester_ip": "10.1.2.3",
        })
    );
}

#[test]
fn r_fields_have_the_documented_types() {
    let rule = "typeof r.port === 'number' && r.port === 80 && r.scheme === 'http' \
                && typeof r.requester_ip === 'string' && r.path === '/a' && r.method === 'GET'";
    assert!(allows(rule, "http://example.com/a?b"));
}

#[test]
fn rules_from_the_documentation_work() {
    let allowlist = "const allowed = ['a.com', 'b.com']; allowed.includes(r.host)";
    assert!(allows(allowlist, "https://a.com/"));
    assert!(allows(allowlist, "https://b.com/x"));
    assert!(!allows(allowlist, "https://c.com/"));

    let hosts_and_methods = "// Allow specific methods only for certain hosts\n\
        const rules = [\n\
        {host: 'api.github.com', methods: ['GET', 'POST']},\n\
        {host: 'github.com', methods: ['GET']},\n\
        {host: 'uploads.github.com', methods: ['POST', 'PUT']}\n\
        ];\n\
        rules.some(rule =>\n\
        rule.host === r.host && rule.methods.includes(r.method)\n\
        )";
    let e = engine(hosts_and_methods);
    assert!(
        e.evaluate(&request("POST", "https://api.github.com/x"))
            .is_allow()
    );
    assert!(
        e.evaluate(&request("GET", "https://github.com/"))
            .is_allow()
    );
    assert!(
        !e.evaluate(&request("POST", "https://github.com/"))
            .is_allow()
    );
    assert!(
        e.evaluate(&request("PUT", "https://uploads.github.com/f"))
            .is_allow()
    );
    assert!(
        !e.evaluate(&request("GET", "https://uploads.github.com/f"))
            .is_allow()
    );

    let regexps = "// Whitelist patterns for METHOD + URL combinations\n\
        const patterns = [\n\
        /^GET api\\.github\\.com\\/repos\\/.+/,\n\
        /^POST api\\.example\\.com\\/v[12]\\/.*/,\n\
        /^(GET|HEAD) .*\\.cdn\\.example\\.com\\/.*\\.(jpg|png|gif)/\n\
        ];\n\
        // Build request string using host and path for simpler patterns\n\
        const requestString = `${r.method} ${r.host}${r.path}`;\n\
        patterns.some(pattern => pattern.test(requestString))";
    let e = engine(regexps);
    assert!(
        e.evaluate(&request("GET", "https://api.github.com/repos/a/b"))
            .is_allow()
    );
    assert!(
        !e.evaluate(&request("GET", "https://api.github.com/users"))
            .is_allow()
    );
    assert!(
        e.evaluate(&request("POST", "https://api.example.com/v2/x"))
            .is_allow()
    );
    assert!(
        e.evaluate(&request("HEAD", "https://img.cdn.example.com/a/b.png"))
            .is_allow()
    );
    assert!(
        !e.evaluate(&request("HEAD", "https://img.cdn.example.com/a/b.svg"))
            .is_allow()
    );

    let file_rule = "// rules.js\n\
        const allowedHosts = [\n  'api.github.com',\n  'github.com',\n];\n\
        const isAllowed = allowedHosts.some(host =>\n  r.host === host || r.host.endsWith('.' + host)\n);\n\
        // Result (must be a boolean expression)\n\
        isAllowed && r.method !== 'DELETE';\n";
    let e = engine(file_rule);
    assert!(
        e.evaluate(&request("GET", "https://x.github.com/"))
            .is_allow()
    );
    assert!(
        !e.evaluate(&request("DELETE", "https://github.com/"))
            .is_allow()
    );
}

#[test]
fn rules_with_top_level_var_work_and_say_how_they_run() {
    let (e, log) = capture(|| engine("var allowed = ['a.com']; allowed.includes(r.host)"));
    assert!(log.contains("`var allowed`"), "{log}");
    assert!(e.evaluate(&get("https://a.com/")).is_allow());
    assert!(!e.evaluate(&get("https://b.com/")).is_allow());
    // Runtime positions point into the user's text in this mode too.
    let (d, log) = capture(|| engine("var x = 1;\nnope()").evaluate(&get("https://a.com/")));
    assert_eq!(d.reason(), Some(DenyReason::EngineError));
    assert!(log.contains("line 2, column 1"), "{log}");
}

#[test]
fn eval_and_function_work_inside_the_sandbox() {
    assert!(allows(
        "eval('1 + 1') === 2 && Function('return 3')() === 3 && (0, eval)('4') === 4",
        "https://a.com/"
    ));
}

#[test]
fn no_file_network_or_process_access_is_exposed() {
    let rule = "['require', 'std', 'os', 'process', 'fetch', 'XMLHttpRequest', 'setTimeout', \
                'setInterval', 'SharedArrayBuffer', 'Atomics', 'WeakRef', 'FinalizationRegistry', \
                'scriptArgs', 'print', 'Deno', 'Bun'].every(n => typeof globalThis[n] === 'undefined')";
    assert!(allows(rule, "https://a.com/"));
    // Dynamic import has no loader: the promise rejects, nothing is loaded.
    assert!(allows(
        "import('os').catch(() => {}); true",
        "https://a.com/"
    ));
}

// ---------------------------------------------------------------------------------------------
// Syntax errors

#[test]
fn syntax_errors_report_the_users_line_and_column() {
    let (line, column, message) = syntax_error("r.host ===");
    assert_eq!((line, column), (1, 11), "{message}");
    let (line, column, _) = syntax_error("r.host === 'a' &&& true");
    assert_eq!((line, column), (1, 18));
    let (line, column, _) = syntax_error("const a = 1;\nconst b = ;\na === 1");
    assert_eq!((line, column), (2, 11));
    // Strict mode applies at compile time.
    let (line, column, message) = syntax_error("true;\n  with (r) { host }");
    assert_eq!((line, column), (2, 3), "{message}");
    // Non-ASCII text before the error counts in characters.
    let (line, column, _) = syntax_error("'é' + ]");
    assert_eq!((line, column), (1, 7));
}

#[test]
fn errors_only_the_block_form_finds_still_point_at_the_users_text() {
    // Two declarations of one function are allowed in a script, not in a strict block.
    let (line, column, message) = syntax_error("function f() {}\nfunction f() {}\ntrue");
    assert_eq!(line, 2, "{message}");
    assert!(column >= 1, "{message}");
}

#[test]
fn multi_line_file_rules_report_positions_in_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rules.js");
    std::fs::write(
        &path,
        "// header\nconst hosts = ['a.com'];\n\nhosts.includes(r.host) &&\n  r.method === 'GET' )\n",
    )
    .expect("write rule");
    match JsEngine::compile(&JsSource::File(path.clone()), options()) {
        Err(Error::JsSyntax {
            origin,
            line,
            column,
            ..
        }) => {
            assert_eq!(origin, format!("--js-file {}", path.display()));
            assert_eq!((line, column), (5, 22));
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn a_missing_or_unreadable_file_is_a_read_error_naming_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.js");
    match JsEngine::compile(&JsSource::File(missing.clone()), options()) {
        Err(Error::JsFileRead { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected JsFileRead, got {other:?}"),
    }
    let binary = dir.path().join("binary.js");
    std::fs::write(&binary, [0xff, 0xfe, 0x00]).expect("write");
    assert!(matches!(
        JsEngine::compile(&JsSource::File(binary), options()),
        Err(Error::JsFileRead { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Isolation between evaluations

/// Runs `source` three times on one engine (so on one thread's context) and returns the
/// decisions.
fn thrice(source: &str) -> [Decision; 3] {
    let e = engine(source);
    let r = get("https://a.com/");
    [e.evaluate(&r), e.evaluate(&r), e.evaluate(&r)]
}

#[test]
fn state_does_not_survive_between_evaluations() {
    for source in [
        "var c = (typeof c === 'undefined') ? 1 : c + 1; c === 1",
        "let c = (typeof c2 === 'undefined') ? 1 : 2; c === 1",
        "const seen = []; seen.push(1); seen.length === 1",
        "typeof f === 'function' && f.marked !== true && (f.marked = true); function f() {}",
        "class C { static count = 0 }; C.count++ === 0",
        "r.extra === undefined && (r.extra = 1, r.host = 'x', true)",
        "Function('this.sloppy = 1')(); typeof sloppy === 'undefined'",
    ] {
        let decisions = thrice(source);
        assert!(decisions[0].is_allow(), "{source}: {decisions:?}");
        assert_eq!(decisions[0], decisions[1], "{source}");
        assert_eq!(decisions[0], decisions[2], "{source}");
    }
}

#[test]
fn mutating_the_global_environment_is_refused_every_time() {
    // Each mutation fails (an exception: deny) the same way every time, and leaves nothing for
    // a later rule on the same thread to see.
    let cases = [
        (
            "globalThis.n = (globalThis.n || 0) + 1; n === 1",
            "typeof n === 'undefined'",
        ),
        ("Array.prototype.evil = 1; true", "[].evil === undefined"),
        (
            "Array.prototype.includes = () => true; true",
            "![1].includes(2)",
        ),
        (
            "Object.prototype.polluted = 1; true",
            "({}).polluted === undefined",
        ),
        (
            "Object.defineProperty(Object.prototype, 'y', {get() { return 1 }}); true",
            "({}).y === undefined",
        ),
        ("String.prototype.x = () => 1; true", "''.x === undefined"),
        ("Math.random = () => 4; true", "Math.random() < 1"),
        ("Math.max = () => 0; true", "Math.max(1, 2) === 2"),
        ("JSON.parse = () => 1; true", "JSON.parse('2') === 2"),
        ("Array = null; true", "Array.isArray([])"),
        (
            "globalThis.Object = null; true",
            "typeof Object === 'function'",
        ),
        (
            "delete Array.prototype.push; true",
            "typeof [].push === 'function'",
        ),
        (
            "Object.setPrototypeOf(Array.prototype, null); true",
            "[].hasOwnProperty('length')",
        ),
        (
            "console.log = null; true",
            "typeof console.log === 'function'",
        ),
        (
            "Error.prototype.name = 'x'; true",
            "new Error().name === 'Error'",
        ),
        (
            "Object.getPrototypeOf(function* () {}).prototype.next = null; true",
            "(function* () { yield 1 })().next().value === 1",
        ),
        (
            "Object.getPrototypeOf([][Symbol.iterator]()).next = null; true",
            "[...[1, 2]].length === 2",
        ),
        (
            "Iterator.prototype.map = null; true",
            "typeof [].values().map === 'function'",
        ),
        ("RegExp.prototype.test = () => true; true", "!/a/.test('b')"),
        (
            "Promise.prototype.then = null; true",
            "typeof Promise.resolve().then === 'function'",
        ),
        (
            "(0, eval)('var leak = 1'); true",
            "typeof leak === 'undefined'",
        ),
        (
            "Promise.resolve().then(() => { globalThis.later = 1 }); true",
            "typeof later === 'undefined'",
        ),
        (
            "Object.defineProperty(globalThis, 'r', {value: 1}); true",
            "r.host === 'a.com'",
        ),
    ];
    for (mutation, check) in cases {
        let decisions = thrice(mutation);
        assert_eq!(decisions[0], decisions[1], "{mutation}");
        assert_eq!(decisions[0], decisions[2], "{mutation}");
        // Same thread, after the mutation attempts: the environment is intact.
        assert!(
            allows(check, "https://a.com/"),
            "after `{mutation}`: `{check}` failed"
        );
    }
}

#[test]
fn everything_a_rule_can_reach_is_frozen() {
    // Walks what the prelude walks, and more ways of reaching intrinsics, from inside a rule.
    let rule = r#"
        // (A generator object's prototype is its function's own `prototype`: fresh, not shared.)
        const roots = [globalThis, function* () {}, async function () {},
            async function* () {}, [][Symbol.iterator](), ''[Symbol.iterator](),
            new Map().entries(), new Set().values(), /a/[Symbol.matchAll]('a'),
            [].values().map(x => x), Iterator.from({ next: () => ({ done: true }) }),
            (function () { return arguments })(), Promise.resolve(), new Error(),
            async () => {}, Iterator.concat?.([]), new Proxy({}, {}), new Date(), /a/g,
            new WeakMap(), new WeakSet(), Symbol('s'), 1n, new Number(1), new String('s')];
        // Shared objects only: the globals, and the prototypes of fresh objects (the fresh
        // objects themselves and their own properties belong to this evaluation).
        const seen = new Set(), todo = [globalThis, ...roots.slice(1).map(x => Object.getPrototypeOf(x))];
        todo.push(Object.getOwnPropertyDescriptor(Function.prototype, 'caller')?.get);
        const notFrozen = [];
        while (todo.length) {
            const o = todo.pop();
            if ((typeof o !== 'object' && typeof o !== 'function') || o === null || seen.has(o)) continue;
            seen.add(o);
            todo.push(Object.getPrototypeOf(o));
            for (const k of Reflect.ownKeys(o)) {
                const d = Reflect.getOwnPropertyDescriptor(o, k);
                if ('value' in d) todo.push(d.value); else todo.push(d.get, d.set);
            }
        }
        for (const o of seen) {
            if (!Object.isFrozen(o)) notFrozen.push(String(o.constructor?.name ?? typeof o));
        }
        notFrozen.length === 0 && seen.size > 300 ? true : 'not frozen: ' + notFrozen.join(', ') + ' of ' + seen.size
    "#;
    assert_eq!(decide(rule, "https://a.com/"), Decision::ALLOW);
}

/// Walks every shared object (as above) and calls `visit(path, object, key, descriptor)`.
const WALK_SHARED: &str = r#"
    function walkShared(visit) {
        const roots = [['globalThis', globalThis], ['genfn', function* () {}],
            ['asyncfn', async function () {}], ['asyncgen', async function* () {}],
            ['arrayit', [][Symbol.iterator]()], ['stringit', ''[Symbol.iterator]()],
            ['mapit', new Map().entries()], ['setit', new Set().values()],
            ['regexpit', /a/[Symbol.matchAll]('a')], ['helper', [].values().map(x => x)],
            ['wrap', Iterator.from({ next: () => ({ done: true }) })],
            ['promise', Promise.resolve()], ['error', new Error()]];
        const seen = new Set();
        const todo = roots.map(([n, x]) => n === 'globalThis' ? [n, x] : [n + '.__proto__', Object.getPrototypeOf(x)]);
        while (todo.length) {
            const [path, o] = todo.pop();
            if ((typeof o !== 'object' && typeof o !== 'function') || o === null || seen.has(o)) continue;
            seen.add(o);
            todo.push([path + '.__proto__', Object.getPrototypeOf(o)]);
            for (const k of Reflect.ownKeys(o)) {
                const d = Reflect.getOwnPropertyDescriptor(o, k);
                const p = path + '.' + String(k);
                visit(p, o, k, d);
                if ('value' in d) todo.push([p, d.value]); else todo.push([p + '<get>', d.get], [p + '<set>', d.set]);
            }
        }
    }
"#;

#[test]
fn built_in_setters_cannot_change_what_later_evaluations_see() {
    // What every shared getter returns, as text.
    let snapshot = format!(
        "{WALK_SHARED}
        const out = [];
        walkShared((path, o, k, d) => {{
            if (!d.get) return;
            let v;
            try {{ v = d.get.call(o); }} catch (e) {{ v = 'throws'; }}
            const shown = (typeof v === 'object' && v !== null) || typeof v === 'function' ? '' : String(v);
            out.push(path + '=' + typeof v + ':' + shown);
        }});
        out.sort().join('\\n')"
    );
    // Calls every shared setter, on its own object and on others, with various values.
    let mutate = format!(
        "{WALK_SHARED}
        let calls = 0;
        walkShared((path, o, k, d) => {{
            if (!d.set) return;
            for (const self of [o, globalThis, {{}}, []])
                for (const v of [0, 'x', () => 1, {{}}, undefined]) {{
                    try {{ d.set.call(self, v); calls++; }} catch (e) {{}}
                }}
        }});
        for (const [obj, key, v] of [[Error, 'stackTraceLimit', 0], [Error, 'prepareStackTrace', () => 'leak']])
            try {{ obj[key] = v; calls++; }} catch (e) {{}}
        calls > 0"
    );
    let snapshot = engine(&snapshot);
    let mutate = engine(&mutate);
    let r = get("https://a.com/");
    let before = snapshot.evaluate(&r);
    assert!(
        matches!(&before, Decision::Deny { message: Some(m), .. } if m.contains("RegExp.prototype.flags") && m.contains("globalThis.r=")),
        "{before:?}"
    );
    assert!(
        mutate.evaluate(&r).is_allow(),
        "some setter calls should succeed on fresh objects"
    );
    assert_eq!(snapshot.evaluate(&r), before);
    // Stack traces still work the same way afterwards.
    assert!(allows(
        "Error.stackTraceLimit === 10 && Error.prepareStackTrace === undefined \
         && new Error('x').stack.includes('<rule>')",
        "https://a.com/"
    ));
}

#[test]
fn assigning_overridden_builtin_names_on_own_objects_still_works() {
    assert!(allows(
        "class E extends Error { constructor(m) { super(m); this.name = 'E'; } }\n\
         const e = new E('x'); const o = {}; o.toString = () => 'o';\n\
         e.name === 'E' && String(o) === 'o' && Error.prototype.name === 'Error'",
        "https://a.com/"
    ));
}

// ---------------------------------------------------------------------------------------------
// Failures: exceptions, deadline, memory, stack

#[test]
fn a_rule_that_throws_is_denied_and_the_reason_goes_to_diagnostics_only() {
    let e = engine("if (r.host === 'a.com') throw new Error('detail for the log');\ntrue");
    let (d, log) = capture(|| e.evaluate(&get("https://a.com/")));
    assert_eq!(d.reason(), Some(DenyReason::EngineError));
    let Decision::Deny { message, .. } = &d else {
        unreachable!()
    };
    assert!(
        !message.as_deref().unwrap_or_default().contains("detail"),
        "{d:?}"
    );
    assert!(log.contains("Error: detail for the log"), "{log}");
    assert!(log.contains("line 1, column"), "{log}");
    assert!(log.contains("--js"), "{log}");
    // The same engine keeps working.
    assert!(e.evaluate(&get("https://b.com/")).is_allow());
    // Thrown non-errors are reported too.
    let (d, log) = capture(|| decide("throw {code: 42}", "https://a.com/"));
    assert_eq!(d.reason(), Some(DenyReason::EngineError));
    assert!(log.contains("42"), "{log}");
}

#[test]
fn an_endless_loop_hits_the_deadline_and_the_thread_recovers() {
    let e = engine("if (r.host === 'slow.test') { while (true) {} } true");
    for _ in 0..2 {
        let start = Instant::now();
        let d = e.evaluate(&get("https://slow.test/"));
        let elapsed = start.elapsed();
        assert_eq!(d.reason(), Some(DenyReason::EngineTimeout), "{d:?}");
        // Bounded, not tight: the deadline is 100 ms.
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
        assert!(e.evaluate(&get("https://fast.test/")).is_allow());
    }
}

#[test]
fn the_deadline_cannot_be_caught_or_escaped() {
    for source in [
        "try { while (true) {} } catch (e) {} true",
        "try { while (true) {} } finally { true }",
        "new Array(1e9).indexOf(5)",
        "/(a+)+$/.test('a'.repeat(40) + '!')",
        "({ toJSON() { while (true) {} } })",
        "Promise.resolve().then(function f() { return Promise.resolve().then(f) }); true",
    ] {
        let start = Instant::now();
        let d = decide(source, "https://a.com/");
        assert!(!d.is_allow(), "{source}: {d:?}");
        assert!(start.elapsed() < Duration::from_secs(3), "{source}");
        assert!(allows("true", "https://a.com/"), "after `{source}`");
    }
}

#[test]
fn exhausting_memory_is_denied_and_the_thread_recovers() {
    // A long deadline, so that memory (not time) is what stops these.
    let options = JsOptions {
        deadline: Duration::from_secs(20),
        memory_limit: 64 * MIB,
    };
    for source in [
        "let a = []; while (true) a.push('x'.repeat(1e6))",
        "new Array(1e9).fill(1)",
        "let s = ''; while (true) s += 'y'.repeat(1e6)",
        "const m = new Map(); for (let i = 0; ; i++) m.set(i, {i})",
    ] {
        let e = JsEngine::compile(&JsSource::Inline(source.to_owned()), options).expect("compile");
        let (d, log) = capture(|| e.evaluate(&get("https://a.com/")));
        assert_eq!(d.reason(), Some(DenyReason::EngineError), "{source}: {d:?}");
        assert!(log.contains("out of memory"), "{source}: {log}");
        let ok = JsEngine::compile(&JsSource::Inline("r.port === 443".to_owned()), options)
            .expect("compile");
        for _ in 0..3 {
            assert!(
                ok.evaluate(&get("https://a.com/")).is_allow(),
                "after {source}"
            );
        }
    }
}

#[test]
fn a_rule_too_big_for_the_memory_limit_is_a_compile_error() {
    let options = JsOptions {
        deadline: Duration::from_millis(100),
        memory_limit: 8 * MIB,
    };
    let huge = format!(
        "const a = [{}0]; a.length > 0",
        "'some text',".repeat(2_000_000)
    );
    match JsEngine::compile(&JsSource::Inline(huge), options) {
        Err(Error::JsCompile { message, .. }) => {
            assert!(
                message.contains("more memory than the limit (8 MiB)"),
                "{message}"
            );
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
    // The thread's engine still works, with a normal limit.
    assert!(allows("true", "https://a.com/"));
}

#[test]
fn deep_recursion_is_a_stack_overflow_not_a_crash() {
    let d = decide(
        "function f(n) { return f(n + 1) + 1 } f(0)",
        "https://a.com/",
    );
    assert_eq!(d.reason(), Some(DenyReason::EngineError));
    let d = decide(
        "const deep = JSON.parse('['.repeat(100000) + ']'.repeat(100000)); true",
        "https://a.com/",
    );
    assert!(!d.is_allow());
    // Deeply nested source is a compile error, not a crash.
    let nested = format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000));
    assert!(JsEngine::compile(&JsSource::Inline(nested), options()).is_err());
    assert!(allows(
        "function f(n) { return n ? f(n - 1) : true } f(1000)",
        "https://a.com/"
    ));
}

// ---------------------------------------------------------------------------------------------
// console

#[test]
fn console_output_goes_to_the_rule_log_target_and_does_not_change_the_answer() {
    let rule = "console.log('checking', r.host, {n: 1}, [2], undefined, null, Symbol('s'));\n\
                console.error('oops\\nsecond line');\n\
                r.host === 'a.com'";
    let (d, log) = capture(|| decide(rule, "https://a.com/"));
    assert_eq!(d, Decision::ALLOW);
    assert!(
        log.contains(r#"checking a.com {"n":1} [2] undefined null Symbol(s)"#),
        "{log}"
    );
    assert!(log.contains(crate::diagnostics::RULE_LOG_TARGET), "{log}");
    assert!(log.contains("INFO"), "{log}");
    assert!(log.contains("oops") && log.contains("second line"), "{log}");
}

#[test]
fn console_output_is_bounded_per_evaluation() {
    let (d, log) = capture(|| {
        decide(
            "for (let i = 0; i < 1000; i++) console.log('line', i); true",
            "https://a.com/",
        )
    });
    assert_eq!(d, Decision::ALLOW);
    let lines = log.lines().filter(|l| l.contains("line ")).count();
    assert!((10..=32).contains(&lines), "{lines} lines:\n{log}");
    assert!(log.contains("dropped"), "{log}");
}

// ---------------------------------------------------------------------------------------------
// Threads

#[test]
fn the_engine_is_send_and_sync_and_evaluates_concurrently() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<JsEngine>();
    let e = Arc::new(engine(
        "const allowed = ['t0.test', 't2.test']; allowed.includes(r.host)",
    ));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let e = Arc::clone(&e);
            std::thread::spawn(move || {
                let host = format!("https://t{t}.test/");
                let want = t % 2 == 0;
                for i in 0..500 {
                    assert_eq!(e.evaluate(&get(&host)).is_allow(), want, "thread {t}, {i}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("evaluation thread");
    }
}

#[test]
fn engines_with_different_rules_share_a_thread_without_mixing() {
    let a = engine("r.host === 'a.com'");
    let b = engine("r.host === 'b.com'");
    for _ in 0..20 {
        assert!(a.evaluate(&get("https://a.com/")).is_allow());
        assert!(!a.evaluate(&get("https://b.com/")).is_allow());
        assert!(b.evaluate(&get("https://b.com/")).is_allow());
    }
    // More engines than a thread caches.
    let many: Vec<_> = (0..12)
        .map(|i| (i, engine(&format!("r.port === {i}"))))
        .collect();
    for (i, e) in &many {
        let url = format!("https://a.com:{}/", i + 1);
        assert!(!e.evaluate(&get(&url)).is_allow());
    }
    assert!(a.evaluate(&get("https://a.com/")).is_allow());
}

// ---------------------------------------------------------------------------------------------
// --js-file reload

/// Serialises the tests that start watcher threads, so that counting them is meaningful.
static WATCHERS: Mutex<()> = Mutex::new(());

fn watchers_lock() -> MutexGuard<'static, ()> {
    WATCHERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn watcher_threads() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim() == watch::THREAD_NAME)
        })
        .count()
}

fn file_engine(path: &Path) -> JsEngine {
    JsEngine::compile(&JsSource::File(path.to_path_buf()), options()).expect("compile file rule")
}

/// Polls until `f` holds, for at most 5 s.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn file_edits_apply_and_broken_or_deleted_files_keep_the_previous_rule() {
    let _lock = watchers_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rules.js");
    std::fs::write(&path, "r.host === 'a.com'").expect("write");
    let log = LogBuffer::default();
    log.record(|| {
        let e = file_engine(&path);
        let a = get("https://a.com/");
        let b = get("https://b.com/");
        assert!(e.evaluate(&a).is_allow());

        // Written in place.
        std::fs::write(&path, "r.host === 'b.com'").expect("write");
        eventually("the in-place edit", || e.evaluate(&b).is_allow());
        assert!(!e.evaluate(&a).is_allow());
        assert_eq!(e.reloads(), 1);

        // Saved by rename, as many editors do.
        let tmp = dir.path().join(".rules.js.swp");
        std::fs::write(&tmp, "['a.com', 'b.com'].includes(r.host)").expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
        eventually("the renamed file", || e.evaluate(&a).is_allow());
        assert!(e.evaluate(&b).is_allow());

        // A broken edit keeps the previous rule.
        std::fs::write(&path, "const x = ;\nfalse").expect("write");
        eventually("the broken edit to be reported", || {
            log.text().contains("edit not applied")
        });
        assert!(e.evaluate(&a).is_allow() && e.evaluate(&b).is_allow());
        assert_eq!(e.reloads(), 2);

        // Deleting the file keeps the previous rule too.
        std::fs::remove_file(&path).expect("remove");
        eventually("the deletion to be reported", || {
            log.text().contains("the file was deleted")
        });
        assert!(e.evaluate(&a).is_allow());

        // Fixing it applies again.
        std::fs::write(&path, "false").expect("write");
        eventually("the fixed file", || !e.evaluate(&a).is_allow());
    });
    let log = log.text();
    let origin = format!("--js-file {}", path.display());
    assert!(
        log.contains(&format!(
            "{origin}: edit not applied: JavaScript syntax error at line 1, column 11"
        )),
        "{log}"
    );
    assert!(log.contains("keeping the previous rule"), "{log}");
    assert!(
        log.contains(&format!(
            "{origin}: the file was deleted; keeping the previous rule"
        )),
        "{log}"
    );
}

#[test]
fn a_reload_reaches_every_thread() {
    let _lock = watchers_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rules.js");
    std::fs::write(&path, "true").expect("write");
    let e = Arc::new(file_engine(&path));
    let r = get("https://a.com/");
    let compiled = Arc::new(std::sync::Barrier::new(4));
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let (e, r, compiled) = (Arc::clone(&e), r.clone(), Arc::clone(&compiled));
            std::thread::spawn(move || {
                // Each thread has the first version compiled before the edit.
                assert!(e.evaluate(&r).is_allow());
                compiled.wait();
                eventually("the reload on this thread", || !e.evaluate(&r).is_allow());
            })
        })
        .collect();
    compiled.wait();
    std::fs::write(&path, "false").expect("write");
    for t in threads {
        t.join().expect("thread saw the reload");
    }
}

#[test]
fn the_watcher_thread_stops_when_the_engine_is_dropped() {
    let _lock = watchers_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rules.js");
    std::fs::write(&path, "true").expect("write");
    let before = watcher_threads();
    let e = file_engine(&path);
    // The thread names itself once it runs.
    eventually("the watcher thread", || watcher_threads() == before + 1);
    assert!(e.evaluate(&get("https://a.com/")).is_allow());
    drop(e);
    // Drop joins the thread, so it is gone now, not eventually.
    assert_eq!(watcher_threads(), before);
    // Inline rules start no watcher.
    let inline = engine("true");
    assert_eq!(watcher_threads(), before);
    drop(inline);
}
