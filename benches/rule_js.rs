//! Cost of one JavaScript rule decision, warm, and throughput on two threads.
//!
//! Run with `cargo bench --bench rule_js` (release profile). Every figure is printed next to
//! baselines measured in the same run (this machine is shared and noisy): `timer` is an empty
//! closure timed the same way (the floor of the method), `build request` is the cost of making
//! the `RuleRequest` a decision needs. Ratios are to `build request`.
//!
//! No harness and no dependencies beyond std and the crate: each decision is timed on its own
//! with `Instant`, and p50/p99 are read from the sorted samples.

#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use httpjail::config::JsSource;
use httpjail::rules::RuleRequest;
use httpjail::rules::js::{JsEngine, JsOptions};

const WARMUP: usize = 20_000;
const SAMPLES: usize = 200_000;
const THROUGHPUT_TIME: Duration = Duration::from_secs(2);

const HOST_EQUALS: &str = "r.host === 'github.com'";

const HOST_ALLOWLIST_FILE: &str = "\
// Simple host whitelist
const allowedHosts = [
  'github.com',
  'api.github.com',
  'raw.githubusercontent.com',
  'codeload.github.com'
];
allowedHosts.includes(r.host)
";

const REGEXP_METHOD_URL: &str = r"// Whitelist patterns for METHOD + URL combinations
const patterns = [
  /^GET api\.github\.com\/repos\/.+/,
  /^POST api\.example\.com\/v[12]\/.*/,
  /^(GET|HEAD) .*\.cdn\.example\.com\/.*\.(jpg|png|gif)/
];
// Build request string using host and path for simpler patterns
const requestString = `${r.method} ${r.host}${r.path}`;
patterns.some(pattern => pattern.test(requestString))
";

const RULES_ARRAY: &str = "\
// Allow specific methods only for certain hosts
const rules = [
  {host: 'api.github.com', methods: ['GET', 'POST']},
  {host: 'github.com', methods: ['GET']},
  {host: 'uploads.github.com', methods: ['POST', 'PUT']}
];
rules.some(rule =>
  rule.host === r.host && rule.methods.includes(r.method)
)
";

/// The same allowlist with `var`: the slower, parse-per-request path.
const VAR_ALLOWLIST: &str =
    "var allowed = ['github.com', 'api.github.com']; allowed.includes(r.host)";

fn options() -> JsOptions {
    JsOptions {
        deadline: Duration::from_millis(100),
        memory_limit: 64 * 1024 * 1024,
    }
}

/// A mix of allowed and denied requests, cycled through.
fn requests() -> Vec<RuleRequest> {
    [
        ("GET", "https://github.com/user/repo"),
        ("GET", "https://api.github.com/repos/a/b?page=2"),
        ("POST", "https://api.example.com/v1/items"),
        ("HEAD", "https://img.cdn.example.com/a/b.png"),
        ("PUT", "https://uploads.github.com/f"),
        ("DELETE", "https://evil.example/x"),
    ]
    .iter()
    .map(|(m, u)| RuleRequest::from_url(m, u, RuleRequest::local_requester()).unwrap())
    .collect()
}

struct Stats {
    name: String,
    p50: Duration,
    p99: Duration,
}

/// Times `f` once per sample after a warm-up.
fn measure(name: &str, mut f: impl FnMut(usize)) -> Stats {
    for i in 0..WARMUP {
        f(i);
    }
    let mut samples = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES {
        let start = Instant::now();
        f(i);
        samples.push(start.elapsed());
    }
    samples.sort_unstable();
    Stats {
        name: name.to_owned(),
        p50: samples[SAMPLES / 2],
        p99: samples[SAMPLES * 99 / 100],
    }
}

fn engine(source: JsSource) -> Arc<JsEngine> {
    Arc::new(JsEngine::compile(&source, options()).unwrap())
}

fn inline(rule: &str) -> Arc<JsEngine> {
    engine(JsSource::Inline(rule.to_owned()))
}

fn file(dir: &Path, name: &str, rule: &str) -> Arc<JsEngine> {
    let path = dir.join(name);
    std::fs::write(&path, rule).unwrap();
    engine(JsSource::File(path))
}

/// Decisions per second with `threads` threads evaluating as fast as they can.
fn throughput(engine: &Arc<JsEngine>, threads: usize) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (engine, stop, total) = (Arc::clone(engine), Arc::clone(&stop), Arc::clone(&total));
            std::thread::spawn(move || {
                let reqs = requests();
                for i in 0..WARMUP {
                    black_box(engine.evaluate(&reqs[i % reqs.len()]));
                }
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for r in &reqs {
                        black_box(engine.evaluate(r));
                    }
                    n += reqs.len() as u64;
                }
                total.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    // Measure after every thread warmed up (roughly: warm-up is short next to the window).
    let start = Instant::now();
    std::thread::sleep(THROUGHPUT_TIME);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    total.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Time from the end of a file write to the first evaluation that sees the new rule.
fn reload_latency(dir: &Path) -> (Duration, Duration) {
    let path = dir.join("reload.js");
    std::fs::write(&path, "true").unwrap();
    let engine = JsEngine::compile(&JsSource::File(path.clone()), options()).unwrap();
    let req = &requests()[0];
    let mut latencies = Vec::new();
    for i in 0..40 {
        let allow = i % 2 == 1;
        std::fs::write(&path, if allow { "true" } else { "false" }).unwrap();
        let start = Instant::now();
        while engine.evaluate(req).is_allow() != allow {
            assert!(start.elapsed() < Duration::from_secs(5), "reload not seen");
        }
        latencies.push(start.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    latencies.sort_unstable();
    (
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
    )
}

fn micros(d: Duration) -> String {
    format!("{:.2} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    let dir = std::env::temp_dir().join(format!("httpjail-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let reqs = requests();
    let n = reqs.len();

    let mut rows = vec![measure("baseline: timer (empty closure)", |i| {
        black_box(i);
    })];
    rows.push(measure("baseline: build request", |i| {
        let (m, u) = [
            ("GET", "https://github.com/user/repo"),
            ("POST", "https://api.example.com/v1/items"),
        ][i % 2];
        black_box(RuleRequest::from_url(m, u, RuleRequest::local_requester()).unwrap());
    }));
    let cases: Vec<(&str, Arc<JsEngine>)> = vec![
        ("js: true", inline("true")),
        ("js: r.host === 'github.com'", inline(HOST_EQUALS)),
        (
            "js-file: host allowlist",
            file(&dir, "allowlist.js", HOST_ALLOWLIST_FILE),
        ),
        (
            "js-file: regexp on METHOD host/path",
            file(&dir, "regexp.js", REGEXP_METHOD_URL),
        ),
        (
            "js-file: rules array (host+methods)",
            file(&dir, "rules.js", RULES_ARRAY),
        ),
        ("js: allowlist with top-level var", inline(VAR_ALLOWLIST)),
    ];
    for (name, engine) in &cases {
        rows.push(measure(name, |i| {
            black_box(engine.evaluate(&reqs[i % n]));
        }));
    }

    let base = rows[1].p50.as_secs_f64();
    println!();
    println!(
        "{:<40} {:>10} {:>10} {:>14}",
        "per decision (warm, 1 thread)", "p50", "p99", "p50 / request"
    );
    for row in &rows {
        println!(
            "{:<40} {:>10} {:>10} {:>13.1}x",
            row.name,
            micros(row.p50),
            micros(row.p99),
            row.p50.as_secs_f64() / base
        );
    }

    println!();
    println!(
        "{:<40} {:>14} {:>14} {:>8}",
        "throughput (decisions/s)", "1 thread", "2 threads", "2 / 1"
    );
    for (name, engine) in &cases[1..5] {
        let one = throughput(engine, 1);
        let two = throughput(engine, 2);
        println!("{name:<40} {one:>14.0} {two:>14.0} {:>7.2}x", two / one);
    }

    // Cold start: a thread's first decision creates its runtime, freezes the environment and
    // compiles the rule.
    let regexp = Arc::clone(&cases[3].1);
    let mut cold: Vec<Duration> = (0..20)
        .map(|_| {
            let engine = Arc::clone(&regexp);
            std::thread::spawn(move || {
                let req = &requests()[0];
                let start = Instant::now();
                black_box(engine.evaluate(req));
                start.elapsed()
            })
            .join()
            .unwrap()
        })
        .collect();
    cold.sort_unstable();
    println!();
    println!(
        "first decision on a new thread (runtime + frozen environment + compile): p50 {}, max {}",
        micros(cold[cold.len() / 2]),
        micros(cold[cold.len() - 1])
    );

    let (p50, max) = reload_latency(&dir);
    println!();
    println!(
        "--js-file reload: write -> first evaluation with the new rule: p50 {}, max {} (40 edits)",
        micros(p50),
        micros(max)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
