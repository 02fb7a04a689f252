//! A small HTTP/1.1 load generator for `bench/proxy.py`.
//!
//! Why not wrk / h2load: neither can speak to an HTTP proxy with `CONNECT` and then TLS inside
//! the tunnel, which is how clients use an intercepting proxy (and squid's plain tunnel) for
//! HTTPS. This tool does the same thing for every configuration so that only the server side
//! changes between rows of the benchmark:
//!
//! - `--proxy none`: straight to the origin (plain or TLS),
//! - `--proxy absolute`: plain HTTP through a proxy, absolute-form request line,
//! - `--proxy connect`: `CONNECT host:port`, then TLS (or plain HTTP) inside the tunnel.
//!
//! Keep-alive (one connection per worker) or a new connection per request; a fixed duration
//! after a warm-up, or a fixed number of requests (each host name once, for the certificate
//! test); or `--idle N` to open N connections and hold them while memory is read.
//!
//! While it runs it samples `/proc/<pid>/stat` and `/proc/<pid>/status` of the processes given
//! with `--watch NAME=PID[,PID...]` at the exact edges of the measured window, so CPU per request
//! is the server's own CPU over the requests counted. It reports its own CPU too (getrusage), so
//! a reader can tell whether the client was the bottleneck. Output: one JSON object on stdout.
//!
//! The client is deliberately lean: single-threaded by default (`--threads`), no allocation
//! per request beyond the request line, response bodies discarded as they arrive.

#![allow(clippy::print_stdout)]

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProxyKind {
    None,
    Absolute,
    Connect,
}

#[derive(Debug, Clone)]
struct Cfg {
    target: SocketAddr,
    proxy: ProxyKind,
    tls: bool,
    hosts: Vec<String>,
    port: u16,
    path: String,
    ca: Vec<PathBuf>,
    concurrency: usize,
    duration: Duration,
    warmup: Duration,
    new_conn: bool,
    count: Option<u64>,
    idle: Option<usize>,
    settle: Duration,
    threads: usize,
    watch: Vec<(String, Vec<u32>)>,
    expect_status: u16,
    resume: bool,
    timeout: Duration,
}

const USAGE: &str = "usage: loadgen --target IP:PORT [--proxy none|absolute|connect] [--tls] \
         --host NAME | --hosts-file FILE  --port PORT [--path /p] [--ca PEM]... \
         [-c N] [-d SECS] [--warmup SECS] [--new-conn] [--count N] [--idle N] [--settle SECS] \
         [--threads N] [--watch NAME=PID[,PID]]... [--expect-status 200] [--resume]";

fn parse_args() -> Result<Cfg, String> {
    let mut cfg = Cfg {
        target: "127.0.0.1:0".parse().expect("literal"),
        proxy: ProxyKind::None,
        tls: false,
        hosts: Vec::new(),
        port: 0,
        path: "/".into(),
        ca: Vec::new(),
        concurrency: 1,
        duration: Duration::from_secs(5),
        warmup: Duration::from_secs(1),
        new_conn: false,
        count: None,
        idle: None,
        settle: Duration::from_secs(2),
        threads: 1,
        watch: Vec::new(),
        expect_status: 200,
        resume: false,
        timeout: Duration::from_secs(30),
    };
    let mut args = std::env::args().skip(1);
    let bad = |flag: &str| format!("loadgen: bad or missing value for `{flag}`\n{USAGE}");
    let secs = |v: String, flag: &str| -> Result<Duration, String> {
        v.parse::<f64>()
            .ok()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .ok_or_else(|| bad(flag))
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| bad(&flag));
        match flag.as_str() {
            "--target" => cfg.target = value()?.parse().map_err(|_| bad(&flag))?,
            "--proxy" => {
                cfg.proxy = match value()?.as_str() {
                    "none" => ProxyKind::None,
                    "absolute" => ProxyKind::Absolute,
                    "connect" => ProxyKind::Connect,
                    _ => return Err(bad(&flag)),
                }
            }
            "--tls" => cfg.tls = true,
            "--host" => cfg.hosts.push(value()?),
            "--hosts-file" => {
                let text = std::fs::read_to_string(value()?)
                    .map_err(|e| format!("loadgen: hosts file: {e}"))?;
                cfg.hosts
                    .extend(text.lines().filter(|l| !l.is_empty()).map(str::to_owned));
            }
            "--port" => cfg.port = value()?.parse().map_err(|_| bad(&flag))?,
            "--path" => cfg.path = value()?,
            "--ca" => cfg.ca.push(PathBuf::from(value()?)),
            "-c" => cfg.concurrency = value()?.parse().map_err(|_| bad(&flag))?,
            "-d" => cfg.duration = secs(value()?, &flag)?,
            "--warmup" => cfg.warmup = secs(value()?, &flag)?,
            "--new-conn" => cfg.new_conn = true,
            "--count" => cfg.count = Some(value()?.parse().map_err(|_| bad(&flag))?),
            "--idle" => cfg.idle = Some(value()?.parse().map_err(|_| bad(&flag))?),
            "--settle" => cfg.settle = secs(value()?, &flag)?,
            "--threads" => cfg.threads = value()?.parse().map_err(|_| bad(&flag))?,
            "--timeout" => cfg.timeout = secs(value()?, &flag)?,
            "--watch" => {
                let v = value()?;
                let (name, pids) = v.split_once('=').ok_or_else(|| bad(&flag))?;
                let pids = pids
                    .split(',')
                    .map(|p| p.parse().map_err(|_| bad(&flag)))
                    .collect::<Result<_, _>>()?;
                cfg.watch.push((name.to_owned(), pids));
            }
            "--expect-status" => cfg.expect_status = value()?.parse().map_err(|_| bad(&flag))?,
            "--resume" => cfg.resume = true,
            _ => return Err(format!("loadgen: unknown flag `{flag}`\n{USAGE}")),
        }
    }
    if cfg.hosts.is_empty() || cfg.port == 0 || cfg.target.port() == 0 {
        return Err(format!(
            "loadgen: --target, --port and --host (or --hosts-file) are required\n{USAGE}"
        ));
    }
    Ok(cfg)
}

// ---------------------------------------------------------------------------------------------
// Process accounting

#[derive(Debug, Clone, Copy, Default)]
struct ProcSample {
    /// utime + stime in clock ticks (10 ms each): includes threads that have exited.
    cpu_ticks: u64,
    /// Sum over the live threads of `schedstat`'s time on CPU, in nanoseconds: precise, but
    /// blind to threads that exited in between (none do in the servers measured here).
    cpu_ns: u64,
    rss_kb: u64,
    hwm_kb: u64,
}

fn sample_pid(pid: u32) -> ProcSample {
    let mut s = ProcSample::default();
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Fields after the command name (which may hold spaces) start at field 3; utime and
        // stime are fields 14 and 15 and cover every thread of the process.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
            let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
            s.cpu_ticks = utime + stime;
        }
    }
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) {
                s.cpu_ns += stat
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        for line in status.lines() {
            let kb = |l: &str| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            if line.starts_with("VmRSS:") {
                s.rss_kb = kb(line);
            } else if line.starts_with("VmHWM:") {
                s.hwm_kb = kb(line);
            }
        }
    }
    s
}

fn sample_group(pids: &[u32]) -> ProcSample {
    pids.iter().fold(ProcSample::default(), |mut acc, &p| {
        let s = sample_pid(p);
        acc.cpu_ticks += s.cpu_ticks;
        acc.cpu_ns += s.cpu_ns;
        acc.rss_kb += s.rss_kb;
        acc.hwm_kb += s.hwm_kb;
        acc
    })
}

fn self_cpu() -> Duration {
    // SAFETY: getrusage writes into the struct we pass and reads nothing else.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

struct Snapshot {
    at: Instant,
    groups: Vec<ProcSample>,
    client_cpu: Duration,
}

fn snapshot(cfg: &Cfg) -> Snapshot {
    Snapshot {
        at: Instant::now(),
        groups: cfg.watch.iter().map(|(_, p)| sample_group(p)).collect(),
        client_cpu: self_cpu(),
    }
}

// ---------------------------------------------------------------------------------------------
// Connections

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Conn {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

impl Conn {
    fn new(io: Box<dyn Io>) -> Self {
        Self {
            io,
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
        }
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.start == 0 {
                return Err(err("response head larger than the buffer"));
            }
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = self.io.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.end += n;
        Ok(())
    }

    /// The next `\r\n`-terminated line, without its terminator; consumed.
    async fn line(&mut self) -> io::Result<(usize, usize)> {
        loop {
            if let Some(i) = find(&self.buf[self.start..self.end], b"\r\n") {
                let range = (self.start, self.start + i);
                self.start += i + 2;
                return Ok(range);
            }
            self.fill().await?;
        }
    }

    async fn skip(&mut self, mut n: u64) -> io::Result<()> {
        loop {
            let have = (self.end - self.start) as u64;
            if have >= n {
                self.start += n as usize;
                return Ok(());
            }
            n -= have;
            self.start = self.end;
            self.fill().await?;
        }
    }

    /// Reads one response; returns (status, body bytes, server asked to close).
    async fn response(&mut self) -> io::Result<(u16, u64, bool)> {
        let (a, b) = self.line().await?;
        let status = std::str::from_utf8(&self.buf[a..b])
            .ok()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| err("bad status line"))?;
        let mut length = None;
        let mut chunked = false;
        let mut close = false;
        loop {
            let (a, b) = self.line().await?;
            if a == b {
                break;
            }
            let line = &self.buf[a..b];
            let Some(colon) = line.iter().position(|&c| c == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
            if name.eq_ignore_ascii_case(b"content-length") {
                length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                chunked = value.eq_ignore_ascii_case(b"chunked");
            } else if name.eq_ignore_ascii_case(b"connection") {
                close = value.eq_ignore_ascii_case(b"close");
            }
        }
        let mut body = 0;
        if chunked {
            loop {
                let (a, b) = self.line().await?;
                let size = std::str::from_utf8(&self.buf[a..b])
                    .ok()
                    .map(|s| s.split(';').next().unwrap_or("").trim())
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                    .ok_or_else(|| err("bad chunk size"))?;
                if size == 0 {
                    // Trailers, then the empty line.
                    loop {
                        let (a, b) = self.line().await?;
                        if a == b {
                            break;
                        }
                    }
                    break;
                }
                self.skip(size + 2).await?;
                body += size;
            }
        } else if let Some(n) = length {
            self.skip(n).await?;
            body = n;
        } else if status != 204 && status != 304 && !(100..200).contains(&status) {
            // Body until close.
            loop {
                body += (self.end - self.start) as u64;
                self.start = self.end;
                match self.fill().await {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e),
                }
            }
            close = true;
        }
        Ok((status, body, close))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn trim(v: &[u8]) -> &[u8] {
    let s = v
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(v.len());
    let e = v
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(s, |e| e + 1);
    &v[s..e]
}

struct Client {
    cfg: Cfg,
    tls: tokio_rustls::TlsConnector,
}

impl Client {
    fn new(cfg: Cfg) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        for path in &cfg.ca {
            let fail = |e: &dyn std::fmt::Display| format!("loadgen: {}: {e}", path.display());
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| fail(&e))?;
            for cert in certs {
                roots
                    .add(cert.map_err(|e| fail(&e))?)
                    .map_err(|e| fail(&e))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        if !cfg.resume {
            // Every new connection is a full handshake unless asked otherwise: the cost a
            // proxy pays for a client it has never seen.
            tls.resumption = rustls::client::Resumption::disabled();
        }
        Ok(Self {
            cfg,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
        })
    }

    async fn open(&self, host: &str) -> io::Result<Conn> {
        let tcp = TcpStream::connect(self.cfg.target).await?;
        tcp.set_nodelay(true)?;
        let mut conn = Conn::new(Box::new(tcp));
        if self.cfg.proxy == ProxyKind::Connect {
            let req = format!(
                "CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n",
                port = self.cfg.port
            );
            conn.io.write_all(req.as_bytes()).await?;
            let (status, _, _) = conn.response_head_only().await?;
            if status != 200 {
                return Err(err(format!("CONNECT answered {status}")));
            }
            if conn.start != conn.end {
                return Err(err("bytes after the CONNECT response"));
            }
        }
        if !self.cfg.tls {
            return Ok(conn);
        }
        let name = ServerName::try_from(host.to_owned()).map_err(|e| err(e.to_string()))?;
        let io = conn.io;
        // The TLS stream wraps whatever we have: the TCP stream or the opened tunnel.
        let tls = self.tls.connect(name, io).await?;
        Ok(Conn::new(Box::new(tls)))
    }

    fn request(&self, host: &str, close: bool) -> Vec<u8> {
        let port = self.cfg.port;
        let path = &self.cfg.path;
        let conn = if close { "Connection: close\r\n" } else { "" };
        if self.cfg.proxy == ProxyKind::Absolute {
            format!(
                "GET http://{host}:{port}{path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: loadgen\r\n{conn}\r\n"
            )
        } else {
            format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: loadgen\r\n{conn}\r\n")
        }
        .into_bytes()
    }
}

impl Conn {
    /// A response head whose body we do not read (CONNECT's 200).
    async fn response_head_only(&mut self) -> io::Result<(u16, u64, bool)> {
        let (a, b) = self.line().await?;
        let status = std::str::from_utf8(&self.buf[a..b])
            .ok()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| err("bad status line"))?;
        loop {
            let (a, b) = self.line().await?;
            if a == b {
                break;
            }
        }
        Ok((status, 0, false))
    }
}

// ---------------------------------------------------------------------------------------------
// Load

#[derive(Default)]
struct WorkerResult {
    latencies_us: Vec<u32>,
    requests: u64,
    bytes: u64,
    errors: u64,
    first_error: Option<String>,
}

async fn worker(
    client: Arc<Client>,
    id: usize,
    record_from: Instant,
    until: Option<Instant>,
    tickets: Arc<AtomicU64>,
) -> WorkerResult {
    let cfg = &client.cfg;
    let mut out = WorkerResult::default();
    let mut conn: Option<Conn> = None;
    let mut consecutive_errors = 0u32;
    loop {
        let ticket = if let Some(count) = cfg.count {
            let t = tickets.fetch_add(1, Ordering::Relaxed);
            if t >= count {
                break;
            }
            t as usize
        } else {
            if until.is_some_and(|u| Instant::now() >= u) {
                break;
            }
            id
        };
        let host = &cfg.hosts[ticket % cfg.hosts.len()];
        let t0 = Instant::now();
        let attempt = async {
            if conn.is_none() {
                conn = Some(client.open(host).await?);
            }
            let c = conn.as_mut().expect("just opened");
            c.io.write_all(&client.request(host, cfg.new_conn)).await?;
            c.response().await
        };
        let result = match tokio::time::timeout(cfg.timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(err("timed out")),
        };
        let t1 = Instant::now();
        match result {
            Ok((status, body, close)) if status == cfg.expect_status => {
                consecutive_errors = 0;
                if t0 >= record_from && until.is_none_or(|u| t1 <= u) {
                    out.requests += 1;
                    out.bytes += body;
                    out.latencies_us
                        .push((t1 - t0).as_micros().min(u32::MAX as u128) as u32);
                }
                if close || cfg.new_conn {
                    conn = None;
                }
            }
            other => {
                let why = match other {
                    Ok((status, _, _)) => format!("status {status}"),
                    Err(e) => e.to_string(),
                };
                if t0 >= record_from {
                    out.errors += 1;
                }
                out.first_error.get_or_insert(why);
                conn = None;
                consecutive_errors += 1;
                if consecutive_errors > 100 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    out
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank]
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn groups_json(cfg: &Cfg, before: &Snapshot, after: &Snapshot) -> String {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let parts: Vec<String> = cfg
        .watch
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let (b, a) = (before.groups[i], after.groups[i]);
            let ticks_s = a.cpu_ticks.saturating_sub(b.cpu_ticks) as f64 / hz;
            let ns_s = a.cpu_ns.saturating_sub(b.cpu_ns) as f64 / 1e9;
            // schedstat when it is there (ns resolution), the tick count otherwise.
            let cpu_s = if a.cpu_ns > 0 { ns_s } else { ticks_s };
            format!(
                "{}:{{\"cpu_s\":{cpu_s:.6},\"cpu_ticks_s\":{ticks_s:.3},\"rss_kb\":{},\"hwm_kb\":{}}}",
                json_str(name),
                a.rss_kb,
                a.hwm_kb
            )
        })
        .collect();
    format!("{{{}}}", parts.join(","))
}

async fn run_load(client: Arc<Client>) {
    let cfg = client.cfg.clone();
    let started = Instant::now();
    let (record_from, until) = if cfg.count.is_some() {
        (started, None)
    } else {
        let from = started + cfg.warmup;
        (from, Some(from + cfg.duration))
    };
    let tickets = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..cfg.concurrency)
        .map(|id| {
            tokio::spawn(worker(
                client.clone(),
                id,
                record_from,
                until,
                tickets.clone(),
            ))
        })
        .collect();
    let before;
    let after;
    let mut results = Vec::new();
    if let Some(until) = until {
        tokio::time::sleep_until(record_from.into()).await;
        before = snapshot(&cfg);
        tokio::time::sleep_until(until.into()).await;
        after = snapshot(&cfg);
        for h in handles {
            results.push(h.await.unwrap_or_default());
        }
    } else {
        before = snapshot(&cfg);
        for h in handles {
            results.push(h.await.unwrap_or_default());
        }
        after = snapshot(&cfg);
    }
    let elapsed = (after.at - before.at).as_secs_f64();
    let mut lat: Vec<u32> = Vec::new();
    let (mut requests, mut bytes, mut errors) = (0u64, 0u64, 0u64);
    let mut first_error = None;
    for r in results {
        lat.extend_from_slice(&r.latencies_us);
        requests += r.requests;
        bytes += r.bytes;
        errors += r.errors;
        if first_error.is_none() {
            first_error = r.first_error;
        }
    }
    lat.sort_unstable();
    let client_cpu = (after.client_cpu - before.client_cpu).as_secs_f64();
    println!(
        "{{\"requests\":{requests},\"errors\":{errors},\"first_error\":{},\"elapsed_s\":{elapsed:.3},\
         \"rps\":{:.1},\"mb_per_s\":{:.2},\"p50_us\":{},\"p99_us\":{},\"max_us\":{},\
         \"client_cpu_s\":{client_cpu:.3},\"procs\":{}}}",
        first_error.map_or("null".to_owned(), |e| json_str(&e)),
        requests as f64 / elapsed,
        bytes as f64 / elapsed / 1e6,
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(0),
        groups_json(&cfg, &before, &after),
    );
}

async fn run_idle(client: Arc<Client>, n: usize) {
    let cfg = client.cfg.clone();
    let before = snapshot(&cfg);
    let started = Instant::now();
    // Open with bounded parallelism, each connection serving one request so that the proxy
    // has done all its per-connection work (tunnel, interception) before it goes idle.
    let next = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..cfg.concurrency.max(1))
        .map(|_| {
            let client = client.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let mut conns = Vec::new();
                let mut errors = 0u64;
                let mut first_error = None;
                while (next.fetch_add(1, Ordering::Relaxed) as usize) < n {
                    let host = &client.cfg.hosts[0];
                    let r = async {
                        let mut c = client.open(host).await?;
                        c.io.write_all(&client.request(host, false)).await?;
                        let (status, _, _) = c.response().await?;
                        if status != client.cfg.expect_status {
                            return Err(err(format!("status {status}")));
                        }
                        Ok::<_, io::Error>(c)
                    };
                    match tokio::time::timeout(client.cfg.timeout, r).await {
                        Ok(Ok(c)) => conns.push(c),
                        Ok(Err(e)) => {
                            errors += 1;
                            first_error.get_or_insert(e.to_string());
                        }
                        Err(_) => {
                            errors += 1;
                            first_error.get_or_insert("timed out".to_owned());
                        }
                    }
                }
                (conns, errors, first_error)
            })
        })
        .collect();
    let mut conns = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for h in handles {
        if let Ok((c, e, f)) = h.await {
            conns.extend(c);
            errors += e;
            if first_error.is_none() {
                first_error = f;
            }
        }
    }
    let open_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(cfg.settle).await;
    let idle = snapshot(&cfg);
    // Are they still usable? One more request on each.
    let mut alive = 0u64;
    for c in &mut conns {
        let host = &client.cfg.hosts[0];
        let r = async {
            c.io.write_all(&client.request(host, false)).await?;
            c.response().await
        };
        if let Ok(Ok((status, _, _))) = tokio::time::timeout(Duration::from_secs(5), r).await
            && status == client.cfg.expect_status
        {
            alive += 1;
        }
    }
    println!(
        "{{\"idle_open\":{},\"idle_alive_after\":{alive},\"errors\":{errors},\"first_error\":{},\
         \"open_s\":{open_s:.3},\"procs\":{}}}",
        conns.len(),
        first_error.map_or("null".to_owned(), |e| json_str(&e)),
        groups_json(&cfg, &before, &idle),
    );
}

fn main() -> std::process::ExitCode {
    let client = match parse_args().and_then(Client::new) {
        Ok(client) => Arc::new(client),
        Err(message) => {
            eprintln!("{message}");
            return std::process::ExitCode::from(2);
        }
    };
    let built = if client.cfg.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(client.cfg.threads)
            .enable_all()
            .build()
    };
    let rt = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match client.cfg.idle {
        Some(n) => rt.block_on(run_idle(client, n)),
        None => rt.block_on(run_load(client)),
    }
    std::process::ExitCode::SUCCESS
}
