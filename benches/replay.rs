//! Throughput of `httpjail replay` on a generated 100,000-line JSON request log.
//!
//! Run with `cargo bench --bench replay` (release). Figures are requests per second through
//! [`httpjail::policy::replay::replay`] (read, parse, rebuild the request, decide, compare,
//! fold in log order), each the best of a few rounds:
//!
//! - `no rule`: the baseline, measured in the same run: parsing and request building only (the
//!   deny-all engine answers at once).
//! - `native`: a host allowlist written in Rust ([`RuleEngine::native`]): the cost of the
//!   replay machinery around a near-free rule.
//! - `js`: the same host allowlist as a `--js` rule, loaded the way the CLI loads it (target:
//!   at least 100,000 requests/s).
//!
//! Ratios are to the baseline (this machine is shared and noisy: compare ratios). If the JS
//! engine of this build is a stub (it denies everything with `engine_error`), the JS report
//! differs from the native one and the JS figure is marked as not meaningful.
//!
//! Set `BENCH_LINES` to change the log size.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use clap::Parser;
use httpjail::cli::Cli;
use httpjail::config::{Config, RuleSource};
use httpjail::env::ProcessEnv;
use httpjail::policy::replay::{Report, Settings, replay};
use httpjail::request_log::Record;
use httpjail::rules::{Decision, DenyReason, RuleEngine, RuleRequest};

const ROUNDS: usize = 5;
const ALLOWED: [&str; 4] = [
    "registry.npmjs.org",
    "github.com",
    "api.github.com",
    "objects.githubusercontent.com",
];
const OTHER: [&str; 4] = [
    "telemetry.example.com",
    "evil.example.net",
    "cdn.example.org",
    "registry.yarnpkg.com",
];
const JS_RULE: &str = "\
const allowedHosts = [
  'registry.npmjs.org',
  'github.com',
  'api.github.com',
  'objects.githubusercontent.com'
];
allowedHosts.includes(r.host)
";

/// Writes `lines` records like the proxy's: 3 in 4 to allowed hosts, recorded as allowed; the
/// rest denied by the rule; varied paths and methods.
fn write_log(path: &Path, lines: usize) {
    let mut out = BufWriter::new(File::create(path).unwrap());
    let ip = "10.99.0.2".parse().unwrap();
    for i in 0..lines {
        let allowed = i % 4 != 3;
        let host = if allowed {
            ALLOWED[i % ALLOWED.len()]
        } else {
            OTHER[(i / 4) % OTHER.len()]
        };
        let method = if i % 10 == 0 { "POST" } else { "GET" };
        let url = format!("https://{host}/pkg{}/-/item-{i}.tgz?v={}", i % 97, i % 13);
        let request = RuleRequest::from_url(method, &url, ip).unwrap();
        let decision = if allowed {
            Decision::ALLOW
        } else {
            Decision::deny(DenyReason::Rule)
        };
        let mut record = Record::for_request(&request, &decision);
        record.status = Some(if allowed { 200 } else { 403 });
        record.bytes_up = if allowed { 200 + (i as u64 % 5000) } else { 0 };
        record.bytes_down = if allowed { 10_000 } else { 0 };
        record.duration_ms = 12;
        writeln!(out, "{}", record.json_line()).unwrap();
    }
    out.flush().unwrap();
}

fn js_config(log: &Path) -> Config {
    let cli = Cli::try_parse_from(["httpjail", "replay", "--js", JS_RULE, log.to_str().unwrap()])
        .unwrap();
    Config::from_cli(cli, &ProcessEnv).unwrap()
}

/// Best time of [`ROUNDS`] replays, and the report.
fn measure(
    runtime: &tokio::runtime::Runtime,
    engine: &RuleEngine,
    settings: Settings,
    log: &Path,
) -> (Duration, Report) {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..ROUNDS {
        let input = BufReader::with_capacity(256 * 1024, File::open(log).unwrap());
        let started = Instant::now();
        let report = runtime
            .block_on(replay(engine, input, settings, |_| {}))
            .unwrap();
        best = best.min(started.elapsed());
        last = Some(report);
    }
    (best, last.unwrap())
}

fn main() {
    let lines: usize = std::env::var("BENCH_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("run.jsonl");
    write_log(&log, lines);
    let size = std::fs::metadata(&log).unwrap().len();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "replay of {lines} lines ({:.1} MB), best of {ROUNDS} rounds, {threads} CPU(s)",
        size as f64 / 1e6
    );

    let cpu_settings = Settings::for_rule(&RuleSource::None);
    let (base_time, base) = measure(&runtime, &RuleEngine::deny_all(), cpu_settings, &log);
    assert_eq!(base.total, lines);

    let native = RuleEngine::native(|r| {
        if ALLOWED.contains(&r.host.as_str()) {
            Decision::ALLOW
        } else {
            Decision::deny(DenyReason::Rule)
        }
    });
    let (native_time, native_report) = measure(&runtime, &native, cpu_settings, &log);
    assert_eq!(
        native_report.flip_count(),
        0,
        "the native rule is the recorded policy"
    );

    let config = js_config(&log);
    let js = runtime.block_on(RuleEngine::start(&config)).unwrap();
    let (js_time, js_report) = measure(&runtime, &js, Settings::for_rule(&config.rule), &log);
    let js_real = js_report == native_report;

    let rate = |d: Duration| lines as f64 / d.as_secs_f64();
    let row = |name: &str, d: Duration, note: &str| {
        println!(
            "  {name:<28} {:>10.0} requests/s  {:>8.1} ms  {:>5.2}x baseline time{note}",
            rate(d),
            d.as_secs_f64() * 1e3,
            d.as_secs_f64() / base_time.as_secs_f64()
        );
    };
    row("no rule (baseline)", base_time, "");
    row("native host allowlist", native_time, "");
    row(
        "js host allowlist",
        js_time,
        if js_real {
            ""
        } else {
            "  (NOT MEANINGFUL: the JS engine of this build is a stub)"
        },
    );
    if js_real {
        let ok = rate(js_time) >= 100_000.0;
        println!(
            "  target >= 100000 requests/s with JS: {}",
            if ok { "met" } else { "NOT met" }
        );
    }
}
