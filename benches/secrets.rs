//! What `--secret` costs, against baselines measured in the same run (this machine is shared
//! and noisy: compare ratios, not absolute numbers).
//!
//! Run with `cargo bench --bench secrets` (release). Set `BENCH_SCALE=0.2` (or any factor) to
//! shorten or lengthen the runs.
//!
//! - Proxy throughput on small requests: an in-process proxy (allow-all native rule) in front
//!   of a local keep-alive upstream, driven by keep-alive HTTP/1.1 clients on loopback, with 0
//!   and with 5 secrets configured (none bound to the upstream, so every request is fully
//!   scanned: URL, headers, body). Two request shapes: a GET with typical headers, and a POST
//!   with a 300-byte JSON body. Runs alternate (0, 5, 0, 5, ...); the median of each is
//!   compared. Target: at most 10% slower.
//! - Scanner throughput: the streaming scanner (raw view plus decoded views, 10 needles in every
//!   encoding, 64 KiB chunks) over 8 MiB of JSON-like text, against `memchr::memmem` looking for
//!   one needle over the same data, and against one `aho-corasick` pass with the same patterns.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use httpjail::config::{HostPattern, ResolveOverride, SecretSpec};
use httpjail::proxy::body::BoxError;
use httpjail::proxy::{Entry, Interceptor, Proxy, ProxySettings};
use httpjail::request_log::RequestLog;
use httpjail::rules::{Decision, RuleEngine};
use httpjail::secrets::Secrets;
use httpjail::secrets::scan::{Matcher, Needle, StreamScanner, Target};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use zeroize::Zeroizing;

const CLIENTS: usize = 4;

fn scale() -> f64 {
    std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

#[derive(Debug)]
struct NoTls;

impl Interceptor for NoTls {
    fn server_config(&self, _: &str) -> Result<Arc<rustls::ServerConfig>, BoxError> {
        Err("plain http only in this benchmark".into())
    }
}

/// A token-like value: 40 characters from a fixed pseudo-random sequence.
fn token(seed: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_";
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..40)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(ALPHABET[(x % ALPHABET.len() as u64) as usize])
        })
        .collect()
}

fn specs(n: usize) -> Vec<SecretSpec> {
    (0..n)
        .map(|i| SecretSpec {
            var: format!("TOKEN_{i}"),
            hosts: vec![HostPattern::parse(&format!("api{i}.example.com")).unwrap()],
            value: Zeroizing::new(format!("ghp_{}", token(i as u64 + 1))),
        })
        .collect()
}

async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        b"{\"ok\":true}",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn proxy(upstream: SocketAddr, secrets: usize) -> SocketAddr {
    let mut settings = ProxySettings::new(Arc::new(rustls::RootCertStore::empty()));
    settings.resolve = vec![ResolveOverride {
        host: "up.bench".into(),
        port: upstream.port(),
        addrs: vec![upstream.ip()],
    }];
    settings.secrets = Secrets::from_config(&specs(secrets)).unwrap();
    let proxy = Proxy::new(
        settings,
        RuleEngine::native(|_| Decision::ALLOW),
        Arc::new(NoTls),
        RequestLog::disabled(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, shutdown) = httpjail::shutdown::channel();
    std::mem::forget(trigger);
    tokio::spawn(async move { proxy.serve(listener, Entry::PROXY, shutdown).await });
    addr
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Get,
    PostJson,
}

fn request(shape: Shape, port: u16) -> Request<Full<Bytes>> {
    let uri = format!("http://up.bench:{port}/repos/owner/name/issues?state=open&page=2");
    let builder = Request::builder()
        .uri(uri)
        .header("host", format!("up.bench:{port}"))
        .header("user-agent", "bench/1.0 (httpjail secrets)")
        .header("accept", "application/vnd.github+json")
        .header("accept-encoding", "gzip, deflate, br")
        .header(
            "authorization",
            "Bearer not-a-secret-just-a-typical-header-value",
        )
        .header("x-request-id", "9f0c3a54-7d1e-4f7b-9a0e-2b6d9c1e5f42");
    match shape {
        Shape::Get => builder.method("GET").body(Full::new(Bytes::new())).unwrap(),
        Shape::PostJson => {
            let body = format!(
                "{{\"title\":\"Benchmark issue\",\"body\":\"{}\",\"labels\":[\"bug\",\"perf\"]}}",
                "lorem ipsum dolor sit amet ".repeat(9)
            );
            builder
                .method("POST")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap()
        }
    }
}

/// CPU time (user + system) of this process so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// One measurement: requests per second, and CPU time of the whole process (clients, proxy,
/// upstream) per request. CPU time is less sensitive to other load on a shared machine.
#[derive(Clone, Copy)]
struct Rate {
    per_second: f64,
    cpu_us: f64,
}

/// Requests through `proxy` for `duration`, with CLIENTS keep-alive connections.
async fn throughput(
    proxy: SocketAddr,
    upstream_port: u16,
    shape: Shape,
    duration: Duration,
) -> Rate {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(proxy).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            while Instant::now() < deadline {
                let response = sender
                    .send_request(request(shape, upstream_port))
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                let _ = response.into_body().collect().await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    let cpu = cpu_time();
    for task in tasks {
        task.await.unwrap();
    }
    let n = done.load(Ordering::Relaxed) as f64;
    Rate {
        per_second: n / started.elapsed().as_secs_f64(),
        cpu_us: (cpu_time() - cpu).as_secs_f64() * 1e6 / n,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn proxy_bench() {
    let up = upstream().await;
    let plain = proxy(up, 0).await;
    // A second proxy without secrets: the A/A ratio shows the noise of this machine.
    let plain_again = proxy(up, 0).await;
    let with_secrets = proxy(up, 5).await;
    let duration = Duration::from_secs_f64(0.5 * scale());
    let rounds = 15;
    println!(
        "\nProxy, small requests ({CLIENTS} keep-alive clients, loopback). Each round runs the three \
         proxies back to back in rotated order; ratios are per round, then the median of {rounds}."
    );
    println!(
        "| {:<26} | {:>10} | {:>10} | {:>10} | {:>8} | {:>8} | {:>12} | {:>9} |",
        "request",
        "0 secrets",
        "0 (again)",
        "5 secrets",
        "A/A r/s",
        "5/0 r/s",
        "CPU µs/req",
        "5/0 CPU"
    );
    println!(
        "|{:-<28}|{:->12}|{:->12}|{:->12}|{:->10}|{:->10}|{:->14}|{:->11}|",
        "", "", "", "", "", "", "", ""
    );
    for (name, shape) in [
        ("GET, 6 headers", Shape::Get),
        ("POST, 300-byte JSON body", Shape::PostJson),
    ] {
        let proxies = [plain, plain_again, with_secrets];
        for p in proxies {
            throughput(p, up.port(), shape, Duration::from_millis(300)).await;
        }
        let mut rates: [Vec<Rate>; 3] = Default::default();
        for round in 0..rounds {
            for k in 0..3 {
                let i = (round + k) % 3;
                rates[i].push(throughput(proxies[i], up.port(), shape, duration).await);
            }
        }
        let ratio = |x: usize, f: fn(&Rate) -> f64| {
            median(
                (0..rounds)
                    .map(|r| f(&rates[x][r]) / f(&rates[0][r]))
                    .collect(),
            )
        };
        let med = |x: usize, f: fn(&Rate) -> f64| median(rates[x].iter().map(f).collect());
        println!(
            "| {:<26} | {:>6.0} r/s | {:>6.0} r/s | {:>6.0} r/s | {:>8.3} | {:>8.3} | {:>5.1} / {:<4.1} | {:>9.3} |",
            name,
            med(0, |r| r.per_second),
            med(1, |r| r.per_second),
            med(2, |r| r.per_second),
            ratio(1, |r| r.per_second),
            ratio(2, |r| r.per_second),
            med(0, |r| r.cpu_us),
            med(2, |r| r.cpu_us),
            ratio(2, |r| r.cpu_us),
        );
    }
}

/// JSON-like text: words, numbers, punctuation, no secret.
fn corpus(len: usize, with_escapes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 128);
    let mut i = 0u64;
    while out.len() < len {
        i += 1;
        let word = token(i);
        if with_escapes && i.is_multiple_of(7) {
            out.extend_from_slice(format!("\"k{i}\":\"a%20b\\n{}\",\n", &word[..12]).as_bytes());
        } else {
            out.extend_from_slice(
                format!("\"k{i}\":\"{}\",", &word[..(i % 30 + 5) as usize]).as_bytes(),
            );
        }
    }
    out.truncate(len);
    out
}

fn scanner_bench() {
    let specs = specs(5);
    let placeholders: Vec<String> = (0..5)
        .map(|i| format!("httpjail-secret-TOKEN_{i}-{}", &token(100 + i)[..32]))
        .collect();
    let mut targets = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        targets.push(Target {
            secret: i,
            needle: Needle::Placeholder,
            bytes: placeholders[i].as_bytes(),
        });
        targets.push(Target {
            secret: i,
            needle: Needle::Value,
            bytes: spec.value.as_bytes(),
        });
    }
    let matcher = Matcher::new(&targets).unwrap();
    let size = ((8 << 20) as f64 * scale().max(0.1)) as usize;
    let rounds = 5;
    println!(
        "\nScanner throughput, 10 needles (5 secrets), {} MiB per pass, median of {rounds}",
        size >> 20
    );
    println!("| {:<52} | {:>10} | {:>9} |", "case", "MB/s", "vs memmem");
    println!("|{:-<54}|{:->12}|{:->11}|", "", "", "");
    for (label, escapes) in [
        ("JSON-like text", false),
        ("JSON-like text with % and \\ escapes", true),
    ] {
        let data = corpus(size, escapes);
        let measure = |f: &dyn Fn() -> bool| {
            let mut rates = Vec::new();
            for _ in 0..rounds {
                let start = Instant::now();
                assert!(!f(), "no secret in the corpus");
                rates.push(data.len() as f64 / start.elapsed().as_secs_f64() / 1e6);
            }
            median(rates)
        };
        let needle = specs[0].value.as_bytes().to_vec();
        let finder = memchr::memmem::Finder::new(&needle);
        let memmem = measure(&|| finder.find(&data).is_some());
        let patterns: Vec<Vec<u8>> = targets
            .iter()
            .flat_map(|t| httpjail::secrets::scan::encoded_forms(t.bytes))
            .map(|(_, f)| f.to_vec())
            .collect();
        let ac = aho_corasick::AhoCorasick::new(&patterns).unwrap();
        let one_pass = measure(&|| ac.is_match(&data));
        let streaming = measure(&|| {
            let mut scanner = StreamScanner::new();
            for chunk in data.chunks(64 * 1024) {
                if scanner
                    .feed(&matcher, chunk, &mut ControlFlow::Break)
                    .is_break()
                {
                    return true;
                }
            }
            scanner.finish(&matcher, &mut ControlFlow::Break).is_break()
        });
        let whole = measure(&|| {
            matcher
                .scan_decoding(
                    &data,
                    httpjail::secrets::scan::Case::Exact,
                    &mut ControlFlow::Break,
                )
                .is_break()
        });
        for (name, rate) in [
            (
                format!("memchr::memmem, 1 needle (baseline) [{label}]"),
                memmem,
            ),
            (
                format!("aho-corasick, all {} patterns, 1 pass", patterns.len()),
                one_pass,
            ),
            ("httpjail scanner, whole buffer".to_owned(), whole),
            (
                "httpjail scanner, streaming, 64 KiB chunks".to_owned(),
                streaming,
            ),
        ] {
            println!(
                "| {:<52} | {:>10.0} | {:>8.3}x |",
                name,
                rate,
                rate / memmem
            );
        }
    }
}

/// The per-request cost of the head check (host, request line, headers) on a typical GET.
fn head_check_bench() {
    let secrets = Secrets::from_config(&specs(5)).unwrap().unwrap();
    let request = request(Shape::Get, 8080);
    let policy = secrets.policy(httpjail::rules::Scheme::Http, "up.bench");
    let path = request.uri().path_and_query().unwrap().as_str().to_owned();
    let n = (200_000.0 * scale()) as u32;
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        for _ in 0..n {
            let r = secrets.check_head(&policy, "GET", "up.bench", &path, request.headers());
            assert!(r.is_ok());
        }
        rounds.push(start.elapsed().as_secs_f64() * 1e9 / f64::from(n));
    }
    println!(
        "\nHead check of a typical GET (5 secrets): {:.0} ns per request (median of 5)",
        median(rounds)
    );
}

/// The per-request cost of reading, scanning and re-wrapping a small body.
fn body_check_bench(runtime: &tokio::runtime::Runtime) {
    let secrets = Secrets::from_config(&specs(5)).unwrap().unwrap();
    let policy = secrets.policy(httpjail::rules::Scheme::Http, "up.bench");
    let body = request(Shape::PostJson, 8080).into_body();
    let len = body.size_hint().exact();
    let n = (100_000.0 * scale()) as u32;
    let rounds: Vec<f64> = runtime.block_on(async {
        let mut rounds = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            for _ in 0..n {
                let prepared = httpjail::secrets::body::prepare(
                    &secrets,
                    &policy,
                    body.clone(),
                    len,
                    Some("application/json"),
                )
                .await;
                assert!(matches!(
                    prepared,
                    httpjail::secrets::body::Prepared::Forward { .. }
                ));
            }
            rounds.push(start.elapsed().as_secs_f64() * 1e9 / f64::from(n));
        }
        rounds
    });
    println!(
        "Body check of a 300-byte JSON body (5 secrets): {:.0} ns per request (median of 5)",
        median(rounds)
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    head_check_bench();
    body_check_bench(&runtime);
    scanner_bench();
    runtime.block_on(proxy_bench());
}
