//! Helpers for the strong-jail tests: prerequisites, a jail with a stand-in proxy, host state
//! snapshots, re-running this test binary in another role (another user, another namespace).

#![allow(dead_code, unreachable_pub)]

use std::ffi::OsString;
use std::io::Read as _;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use httpjail::jail::linux::{ExitOutcome, JailListeners, JailSpec, RunAs, StrongJail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `PATH` given to commands in the jail: system directories only (root's pyenv shims are not
/// readable by the test user).
pub const JAIL_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Name of the unprivileged user the tests create when missing.
pub const TEST_USER: &str = "httpjail-test";
/// Environment variable that selects a child role when this binary re-runs itself.
pub const ROLE_ENV: &str = "HTTPJAIL_NETNS_ROLE";
/// Every wait in these tests is bounded by this.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Path of the built httpjail binary, which runs the jail supervisor.
pub fn httpjail_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_httpjail"))
}

/// Whether the root-only tests can run here. Without a prerequisite they skip with a printed
/// reason, except with `CI=true`, where a missing prerequisite is a failure.
pub fn prerequisites() -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root".to_owned());
    }
    for tool in [
        "ip", "nft", "curl", "python3", "setpriv", "useradd", "nsenter", "unshare",
    ] {
        let found = JAIL_PATH
            .split(':')
            .any(|d| std::path::Path::new(d).join(tool).exists());
        if !found {
            missing.push(format!("`{tool}`"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    skip_or_fail(&format!("strong-jail tests need {}", missing.join(", ")))
}

/// Skips (returns `false`) with a printed reason, or fails under `CI=true`.
pub fn skip_or_fail(why: &str) -> bool {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("CI=true: {why}; a missing prerequisite fails instead of skipping");
    }
    eprintln!("SKIPPED: {why}");
    false
}

/// One connection a listener of the stand-in proxy accepted.
#[derive(Debug, Clone)]
pub struct Hit {
    /// `http` or `https`: which of the jail's listeners took it.
    pub listener: &'static str,
    pub original_destination: Option<SocketAddr>,
    pub host: Option<String>,
}

/// A command to run in a fresh jail.
#[derive(Debug)]
pub struct Run {
    pub command: Vec<OsString>,
    pub run_as: RunAs,
    pub env: Vec<(OsString, OsString)>,
    pub cwd: PathBuf,
    pub stdin: Option<OwnedFd>,
    /// Written into every reply of the stand-in proxy, to tell jails apart.
    pub tag: String,
}

impl Run {
    pub fn sh(script: &str) -> Self {
        Self::argv(&["sh", "-c", script])
    }

    pub fn python(script: &str) -> Self {
        Self::argv(&["python3", "-c", script])
    }

    pub fn argv(args: &[&str]) -> Self {
        Self {
            command: args.iter().map(OsString::from).collect(),
            run_as: RunAs::Current,
            env: vec![
                ("PATH".into(), JAIL_PATH.into()),
                ("LANG".into(), "C.UTF-8".into()),
                ("HOME".into(), "/root".into()),
            ],
            cwd: PathBuf::from("/"),
            stdin: None,
            tag: "jail".into(),
        }
    }

    pub fn tag(mut self, tag: &str) -> Self {
        self.tag = tag.to_owned();
        self
    }

    pub fn run_as(mut self, run_as: RunAs) -> Self {
        self.run_as = run_as;
        self
    }

    pub fn stdin(mut self, fd: OwnedFd) -> Self {
        self.stdin = Some(fd);
        self
    }
}

/// What a jailed run produced.
#[derive(Debug)]
pub struct Finished {
    pub outcome: ExitOutcome,
    pub stdout: String,
    pub stderr: String,
    pub hits: Vec<Hit>,
    pub supervisor_pid: u32,
}

impl Finished {
    /// Asserts a zero exit, showing the output otherwise.
    pub fn success(&self) -> &Self {
        assert_eq!(self.outcome, ExitOutcome::Exited(0), "{self:#?}");
        self
    }
}

/// A jail whose listeners are served by the stand-in proxy and the real DNS servers.
pub struct Served {
    pub jail: StrongJail,
    pub hits: Arc<Mutex<Vec<Hit>>>,
    stdout: Output,
    stderr: Output,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Served {
    /// Creates the jail (in the calling thread's network namespace) and serves it. Must be
    /// called inside a tokio runtime.
    pub fn create(run: Run) -> Self {
        let (out_r, out_w) = pipe();
        let (err_r, err_w) = pipe();
        let mut spec = JailSpec::new(run.command, run.env, run.cwd);
        spec.run_as = run.run_as;
        spec.stdout = Some(out_w);
        spec.stderr = Some(err_w);
        spec.stdin = run.stdin;
        spec.supervisor_exe = httpjail_bin();
        let (jail, listeners) = StrongJail::create(&spec).expect("create the jail");
        drop(spec);
        let hits = Arc::new(Mutex::new(Vec::new()));
        let tasks = serve(listeners, &run.tag, &hits);
        Self {
            jail,
            hits,
            stdout: Output::read(out_r),
            stderr: Output::read(err_r),
            tasks,
        }
    }

    /// Waits (bounded) until the command has printed `needle` on stdout.
    pub fn wait_for_stdout(&self, needle: &str) {
        eventually(&format!("`{needle}` on the command's stdout"), || {
            self.stdout.text().contains(needle)
        });
    }

    /// Starts the command and waits (bounded) for the jail to end.
    pub async fn finish(mut self) -> Finished {
        self.jail.start().expect("start the command");
        self.wait().await
    }

    /// Waits (bounded) for an already started jail to end.
    pub async fn wait(mut self) -> Finished {
        let Ok(outcome) = tokio::time::timeout(DEADLINE, self.jail.wait()).await else {
            self.jail.kill();
            panic!("the jailed command did not finish within {DEADLINE:?}");
        };
        let supervisor_pid = self.jail.supervisor_pid();
        drop(self.jail);
        for t in &self.tasks {
            t.abort();
        }
        let hits = self.hits.lock().expect("hits").clone();
        Finished {
            outcome,
            stdout: self.stdout.finish(),
            stderr: self.stderr.finish(),
            hits,
            supervisor_pid,
        }
    }
}

/// Runs one command in a fresh, served jail.
pub async fn run(run: Run) -> Finished {
    Served::create(run).finish().await
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe")
}

/// A stream of the command, read to its end by a thread; readable while it grows.
struct Output {
    text: Arc<Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
}

impl Output {
    fn read(fd: OwnedFd) -> Self {
        let text = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&text);
        let reader = std::thread::spawn(move || {
            let mut file = std::fs::File::from(fd);
            let mut buf = [0u8; 4096];
            while let Ok(n) = file.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("output")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self { text, reader }
    }

    fn text(&self) -> String {
        self.text.lock().expect("output").clone()
    }

    fn finish(self) -> String {
        self.reader.join().expect("output reader");
        let text = self.text.lock().expect("output");
        text.clone()
    }
}

fn serve(
    listeners: JailListeners,
    tag: &str,
    hits: &Arc<Mutex<Vec<Hit>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for (name, list) in [("http", listeners.http), ("https", listeners.https)] {
        for l in list {
            let l = tokio::net::TcpListener::from_std(l).expect("listener into tokio");
            let (tag, hits) = (tag.to_owned(), Arc::clone(hits));
            tasks.push(tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = l.accept().await else {
                        continue;
                    };
                    let (tag, hits) = (tag.clone(), Arc::clone(&hits));
                    tokio::spawn(answer_http(stream, name, tag, hits));
                }
            }));
        }
    }
    for u in listeners.dns_udp {
        let u = tokio::net::UdpSocket::from_std(u).expect("udp into tokio");
        tasks.push(tokio::spawn(httpjail::dns::serve_udp(u)));
    }
    for t in listeners.dns_tcp {
        let t = tokio::net::TcpListener::from_std(t).expect("tcp into tokio");
        tasks.push(tokio::spawn(httpjail::dns::serve_tcp(t)));
    }
    tasks
}

/// The stand-in proxy: reads one request head and answers with what it learnt about the
/// connection, `jail=<tag> listener=<name> orig=<SO_ORIGINAL_DST> host=<Host>`.
async fn answer_http(
    mut stream: tokio::net::TcpStream,
    listener: &'static str,
    tag: String,
    hits: Arc<Mutex<Vec<Hit>>>,
) {
    let orig = httpjail::jail::linux::original_destination(&stream);
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    });
    let _ = read.await;
    let text = String::from_utf8_lossy(&head);
    let host = text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("host").then(|| v.trim().to_owned())
    });
    hits.lock().expect("hits").push(Hit {
        listener,
        original_destination: orig,
        host: host.clone(),
    });
    let orig_text = orig.map_or("none".to_owned(), |a| a.to_string());
    let body = format!(
        "jail={tag} listener={listener} orig={orig_text} host={}\n",
        host.as_deref().unwrap_or("none")
    );
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The host's state the jail must never change: its network namespace (interfaces, addresses,
/// routes, named namespaces, nft ruleset) and its mount table (the jail's mounts must not
/// propagate out).
pub fn host_network_state() -> String {
    // Mounts dockerd makes for containers (overlays, network namespace handles) come and go
    // with the `--docker-run` tests running at the same time: they are Docker's, not ours.
    let mounts: String = std::fs::read_to_string("/proc/self/mountinfo")
        .expect("read the host's mounts")
        .lines()
        .filter(|l| !l.contains(" /var/lib/docker/") && !l.contains(" /run/docker/"))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut out = format!("$ cat /proc/self/mountinfo\n{mounts}");
    for args in [
        &["ip", "netns", "list"][..],
        &["ip", "link"],
        &["ip", "address"],
        &["ip", "route"],
        &["ip", "-6", "route"],
        &["nft", "list", "ruleset"],
    ] {
        let o = Command::new(args[0])
            .args(&args[1..])
            .output()
            .expect("run a host tool");
        out.push_str(&format!(
            "$ {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout)
        ));
    }
    out
}

/// The uid and gid of [`TEST_USER`], created (as a system user without home) when missing.
pub fn test_user() -> (u32, u32) {
    let lookup = || nix::unistd::User::from_name(TEST_USER).ok().flatten();
    if lookup().is_none() {
        // Concurrent tests may race to create it; whoever loses sees it exist afterwards.
        let _ = Command::new("useradd")
            .args([
                "--system",
                "--create-home",
                "--shell",
                "/usr/sbin/nologin",
                TEST_USER,
            ])
            .status();
    }
    let user = lookup().expect("the test user exists");
    // Like a real sudo user, the test user has a home (httpjail keeps its CA there and does not
    // create home directories).
    if !user.dir.exists() {
        let _ = std::fs::create_dir_all(&user.dir);
        let _ =
            std::os::unix::fs::chown(&user.dir, Some(user.uid.as_raw()), Some(user.gid.as_raw()));
    }
    (user.uid.as_raw(), user.gid.as_raw())
}

/// This test binary, set to run only `test` (its full path, e.g. `rootless::suite`) in the
/// child role `role`, optionally through `wrapper` (e.g. `setpriv ...`).
pub fn rerun_self(test: &str, role: &str, wrapper: &[String]) -> Command {
    let exe = std::env::current_exe().expect("current test binary");
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, role)
        .current_dir("/");
    cmd
}

/// The role this process was re-run in, if any.
pub fn role() -> Option<String> {
    std::env::var(ROLE_ENV).ok()
}

/// Polls `cond` until it holds or [`DEADLINE`] passes.
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// PIDs of host processes whose arguments are exactly `argv`.
pub fn processes_running(argv: &[&str]) -> Vec<u32> {
    let mut wanted = Vec::new();
    for a in argv {
        wanted.extend_from_slice(a.as_bytes());
        wanted.push(0);
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("list /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if std::fs::read(entry.path().join("cmdline")).is_ok_and(|c| c == wanted) {
            found.push(pid);
        }
    }
    found
}

/// Whether process `pid` still exists (zombies included).
pub fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// A random marker, to find one test's processes and names.
pub fn unique(prefix: &str) -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("randomness");
    format!("{prefix}{}", hex::encode(bytes))
}

/// Python helpers prepended to every [`Run::probe`] script. Each prints `key=value` lines.
pub const PROBE: &str = r#"
import errno, os, socket, struct, sys, time
def fam(host):
    return socket.AF_INET6 if ':' in host else socket.AF_INET
def tcp(host, port, timeout=5):
    s = socket.socket(fam(host), socket.SOCK_STREAM); s.settimeout(timeout)
    t = time.monotonic()
    try:
        s.connect((host, port)); s.close(); return 'connected', time.monotonic() - t
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e)), time.monotonic() - t
def http(host, port, hostname='probe.test'):
    s = socket.socket(fam(host), socket.SOCK_STREAM); s.settimeout(5)
    try:
        s.connect((host, port))
        s.sendall(b'GET / HTTP/1.1\r\nHost: ' + hostname.encode() + b'\r\n\r\n')
        data = b''
        while True:
            chunk = s.recv(4096)
            if not chunk: break
            data += chunk
        return data.decode(errors='replace').split('\r\n\r\n', 1)[-1].strip()
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
def udp(host, port, payload=b'x'):
    s = socket.socket(fam(host), socket.SOCK_DGRAM); s.settimeout(2)
    try:
        s.connect((host, port)); s.send(payload); s.recv(512); return 'answered'
    except socket.timeout:
        return 'timeout'
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
def query(name, qtype):
    q = struct.pack('!HHHHHH', 0x4242, 0x0100, 1, 0, 0, 0)
    for label in name.split('.'):
        q += bytes([len(label)]) + label.encode()
    return q + b'\0' + struct.pack('!HH', qtype, 1)
def parse(r):
    qid, flags, qd, an, ns, ar = struct.unpack('!HHHHHH', r[:12])
    addr = socket.inet_ntoa(r[-4:]) if an else 'none'
    return 'id=%x rcode=%d answers=%d addr=%s' % (qid, flags & 0xf, an, addr)
def dns_udp(server, name, qtype=1):
    s = socket.socket(fam(server), socket.SOCK_DGRAM); s.settimeout(5)
    try:
        s.sendto(query(name, qtype), (server, 53)); return parse(s.recv(512))
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
def dns_tcp(server, name, qtype=1):
    s = socket.socket(fam(server), socket.SOCK_STREAM); s.settimeout(5)
    try:
        s.connect((server, 53)); q = query(name, qtype)
        s.sendall(struct.pack('!H', len(q)) + q)
        n = struct.unpack('!H', s.recv(2))[0]; r = b''
        while len(r) < n: r += s.recv(n - len(r))
        return parse(r)
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
def sock(family, kind, proto=0):
    try:
        socket.socket(family, kind, proto).close(); return 'created'
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
def out(key, value):
    print('%s=%s' % (key, value), flush=True)
"#;

impl Run {
    /// A Python script with [`PROBE`]'s helpers.
    pub fn probe(script: &str) -> Self {
        Self::python(&format!("{PROBE}\n{script}"))
    }
}

impl Finished {
    /// The value printed as `key=value` by a probe script.
    pub fn value(&self, key: &str) -> &str {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no `{key}=` in the output: {self:#?}"))
    }
}

/// A network namespace held only by a descriptor (no process, no `/var/run/netns` entry): it
/// disappears when dropped.
pub struct NetNs(OwnedFd);

impl NetNs {
    pub fn new() -> Self {
        let fd = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare -n");
            OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net").expect("open netns"))
        })
        .join()
        .expect("netns thread");
        Self(fd)
    }

    /// A path naming the namespace for `nsenter --net=` and `ip ... netns`.
    pub fn path(&self) -> String {
        use std::os::fd::AsRawFd as _;
        format!("/proc/{}/fd/{}", std::process::id(), self.0.as_raw_fd())
    }

    /// Runs `ip ARGS` inside, asserting success.
    pub fn ip(&self, args: &str) {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.path()))
            .arg("ip")
            .args(args.split_whitespace())
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "ip {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `f` on a thread that has entered this namespace (threads it starts, like a jail's
    /// keeper thread, start there too).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    nix::sched::setns(&self.0, nix::sched::CloneFlags::CLONE_NEWNET)
                        .expect("setns");
                    f()
                })
                .join()
                .expect("thread in the namespace")
        })
    }
}
