//! Per-decision latency of the process engines (`--sh`, `--proc`), against baselines measured
//! in the same run (this machine is shared and noisy: compare ratios, not absolute numbers).
//!
//! Run with `cargo bench --bench rule_processes` (release). Needs `python3`, `sh`, `cat`, `true`.
//!
//! - `--sh`: the engine running `/bin/true` and a one-line `sh` script, sequentially and with
//!   8 requests in flight; baseline: `std::process::Command::status()` of the same program.
//! - `--proc`: the engine with a `cat` processor (echoes the line: a deny, but the cheapest
//!   possible answer) and with a Python processor like the one of the docs; baseline: a raw
//!   blocking write + read-line round trip through the same process, without tokio.
//!
//! Set `BENCH_SCALE=0.2` (or any factor) to shorten or lengthen the runs.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use httpjail::rules::RuleRequest;
use httpjail::rules::line_processor::{LineProcessor, ProcessorOptions};
use httpjail::rules::shell::{ShellEngine, ShellOptions};

const PYTHON: &str = include_str!("../tests/fixtures/docs_filter.py");
const SH_RULE: &str = "#!/bin/sh\n[ \"$HTTPJAIL_HOST\" = github.com ]\n";
const IN_FLIGHT: usize = 8;

struct Stats {
    name: String,
    samples: Vec<Duration>,
    wall: Duration,
}

impl Stats {
    fn new(name: &str, mut samples: Vec<Duration>, wall: Duration) -> Self {
        samples.sort_unstable();
        Self {
            name: name.to_owned(),
            samples,
            wall,
        }
    }

    fn pct(&self, p: f64) -> Duration {
        let i = ((self.samples.len() as f64 - 1.0) * p).round() as usize;
        self.samples[i]
    }

    fn per_second(&self) -> f64 {
        self.samples.len() as f64 / self.wall.as_secs_f64()
    }
}

fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.1} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

fn print_table(title: &str, baseline: &Stats, rows: &[Stats]) {
    println!("\n{title}");
    println!(
        "| {:<44} | {:>7} | {:>10} | {:>10} | {:>10} | {:>9} |",
        "case", "n", "p50", "p99", "decisions/s", "p50 ratio"
    );
    println!(
        "|{:-<46}|{:->9}|{:->12}|{:->12}|{:->12}|{:->11}|",
        "", "", "", "", "", ""
    );
    for s in std::iter::once(baseline).chain(rows) {
        let ratio = s.pct(0.5).as_secs_f64() / baseline.pct(0.5).as_secs_f64();
        println!(
            "| {:<44} | {:>7} | {:>10} | {:>10} | {:>11.0} | {:>8.2}x |",
            s.name,
            s.samples.len(),
            fmt(s.pct(0.5)),
            fmt(s.pct(0.99)),
            s.per_second(),
            ratio
        );
    }
}

fn scaled(n: usize) -> usize {
    let scale: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * scale) as usize).max(20)
}

fn request(host: &str) -> RuleRequest {
    RuleRequest::from_url(
        "GET",
        &format!("https://{host}/repos/x?page=2"),
        RuleRequest::local_requester(),
    )
    .unwrap()
}

/// Sequential: one evaluation at a time, from a task on a worker (as the proxy does).
fn sequential<F, Fut>(rt: &tokio::runtime::Runtime, name: &str, n: usize, eval: F) -> Stats
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let name = name.to_owned();
    rt.block_on(async move {
        tokio::spawn(async move {
            for i in 0..n / 10 {
                eval(i).await;
            }
            let mut samples = Vec::with_capacity(n);
            let wall = Instant::now();
            for i in 0..n {
                let t = Instant::now();
                eval(i).await;
                samples.push(t.elapsed());
            }
            Stats::new(&name, samples, wall.elapsed())
        })
        .await
        .unwrap()
    })
}

/// `IN_FLIGHT` tasks evaluating in a loop; every decision's own latency is a sample.
fn concurrent<F, Fut>(rt: &tokio::runtime::Runtime, name: &str, n: usize, eval: F) -> Stats
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let eval = Arc::new(eval);
    rt.block_on(async move {
        let per_task = n / IN_FLIGHT;
        let wall = Instant::now();
        let tasks: Vec<_> = (0..IN_FLIGHT)
            .map(|t| {
                let eval = eval.clone();
                tokio::spawn(async move {
                    let mut samples = Vec::with_capacity(per_task);
                    for i in 0..per_task {
                        let start = Instant::now();
                        eval(t * per_task + i).await;
                        samples.push(start.elapsed());
                    }
                    samples
                })
            })
            .collect();
        let mut samples = Vec::with_capacity(n);
        for t in tasks {
            samples.extend(t.await.unwrap());
        }
        Stats::new(name, samples, wall.elapsed())
    })
}

/// Blocking spawn-and-wait with std, the floor for `--sh`.
fn std_spawn(name: &str, program: &Path, n: usize) -> Stats {
    let run = || {
        let status = Command::new(program)
            .env("HTTPJAIL_HOST", "github.com")
            .stdin(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    };
    for _ in 0..n / 10 {
        run();
    }
    let mut samples = Vec::with_capacity(n);
    let wall = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        run();
        samples.push(t.elapsed());
    }
    Stats::new(name, samples, wall.elapsed())
}

/// Blocking write + read-line through a long-running process, the floor for `--proc`.
fn raw_round_trip(name: &str, argv: &[&str], n: usize) -> Stats {
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = serde_like_line(&request("github.com"));
    line.push('\n');
    let mut answer = String::new();
    let mut once = || {
        stdin.write_all(line.as_bytes()).unwrap();
        answer.clear();
        stdout.read_line(&mut answer).unwrap();
        assert!(!answer.is_empty());
    };
    for _ in 0..n / 10 {
        once();
    }
    let mut samples = Vec::with_capacity(n);
    let wall = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        once();
        samples.push(t.elapsed());
    }
    let stats = Stats::new(name, samples, wall.elapsed());
    drop(stdin);
    let _ = child.wait();
    stats
}

/// The JSON line the engine sends (built by hand: the bench uses std and tokio only).
fn serde_like_line(r: &RuleRequest) -> String {
    format!(
        r#"{{"url":"{}","method":"{}","scheme":"{}","host":"{}","path":"{}","port":{},"requester_ip":"{}"}}"#,
        r.url, r.method, r.scheme, r.host, r.path, r.port, r.requester_ip
    )
}

fn which(name: &str) -> PathBuf {
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} not found on PATH");
}

fn bench_sh(rt: &tokio::runtime::Runtime, dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let n = scaled(1000);
    let script = dir.join("rule.sh");
    std::fs::write(&script, SH_RULE).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let true_bin = which("true");
    let options = ShellOptions {
        timeout: Duration::from_secs(30),
    };

    let baseline_true = std_spawn("baseline: std spawn+wait /bin/true", &true_bin, n);
    let baseline_script = std_spawn("baseline: std spawn+wait rule.sh", &script, n);

    let mut rows = Vec::new();
    for (name, cmd, allow) in [
        (
            "--sh /bin/true",
            true_bin.to_str().unwrap().to_owned(),
            true,
        ),
        (
            "--sh rule.sh (direct exec)",
            script.to_str().unwrap().to_owned(),
            true,
        ),
        (
            "--sh '[ \"$HTTPJAIL_HOST\" = github.com ]' (sh -c)",
            r#"[ "$HTTPJAIL_HOST" = github.com ]"#.to_owned(),
            true,
        ),
    ] {
        let engine = Arc::new(ShellEngine::new(&cmd, options).unwrap());
        let req = Arc::new(request("github.com"));
        let e = engine.clone();
        let r = req.clone();
        rows.push(sequential(rt, name, n, move |_| {
            let (e, r) = (e.clone(), r.clone());
            async move {
                assert_eq!(e.evaluate(&r).await.is_allow(), allow);
            }
        }));
        let e = engine.clone();
        let r = req.clone();
        rows.push(concurrent(
            rt,
            &format!("{name}, {IN_FLIGHT} in flight"),
            n,
            move |_| {
                let (e, r) = (e.clone(), r.clone());
                async move {
                    assert_eq!(e.evaluate(&r).await.is_allow(), allow);
                }
            },
        ));
    }
    print_table(
        "--sh: one process per decision (ratio: p50 / std spawn of /bin/true)",
        &baseline_true,
        &std::iter::once(baseline_script)
            .chain(rows)
            .collect::<Vec<_>>(),
    );
}

fn bench_proc(rt: &tokio::runtime::Runtime, dir: &Path) {
    let n = scaled(40_000);
    let python = dir.join("filter.py");
    std::fs::write(&python, PYTHON).unwrap();
    let python = python.to_str().unwrap().to_owned();
    let options = ProcessorOptions {
        answer_timeout: Duration::from_secs(5),
    };

    let cat_baseline = raw_round_trip("baseline: raw round trip through cat", &["cat"], n);
    let py_baseline = raw_round_trip(
        "baseline: raw round trip through filter.py",
        &["python3", &python],
        n,
    );
    let mut rows = vec![py_baseline];
    for (name, cmd, allow) in [
        ("--proc cat", "cat".to_owned(), false),
        (
            "--proc 'python3 filter.py'",
            format!("python3 {python}"),
            true,
        ),
    ] {
        let engine = Arc::new(rt.block_on(LineProcessor::start(&cmd, options)).unwrap());
        let req = Arc::new(request("github.com"));
        let e = engine.clone();
        let r = req.clone();
        rows.push(sequential(rt, name, n, move |_| {
            let (e, r) = (e.clone(), r.clone());
            async move {
                assert_eq!(e.evaluate(&r).await.is_allow(), allow);
            }
        }));
        let e = engine.clone();
        let r = req.clone();
        rows.push(concurrent(
            rt,
            &format!("{name}, {IN_FLIGHT} in flight"),
            n,
            move |_| {
                let (e, r) = (e.clone(), r.clone());
                async move {
                    assert_eq!(e.evaluate(&r).await.is_allow(), allow);
                }
            },
        ));
        rt.block_on(engine.stop());
    }
    print_table(
        "--proc: one long-running process (ratio: p50 / raw round trip through cat)",
        &cat_baseline,
        &rows,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument selects `sh` or `proc`.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("httpjail-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!(
        "rule_processes: multi-thread runtime, {} CPUs; samples are per decision",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if wants("proc") {
        bench_proc(&rt, &dir);
    }
    if wants("sh") {
        bench_sh(&rt, &dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
