//! The strong jail on Linux: a command in its own network (and mount, PID, and without root
//! user) namespaces, whose only way out is httpjail's listeners.
//!
//! # Interface
//!
//! ```text
//! let (mut jail, listeners) = StrongJail::create(&spec)?;  // namespaces + listeners ready
//! // serve listeners.http / .https with the proxy, .dns_udp / .dns_tcp with crate::dns
//! jail.start()?;                                            // the command runs
//! let outcome = jail.wait().await;                          // it ended; nothing of it runs
//! std::process::exit(outcome.exit_code());
//! ```
//!
//! The listeners are sockets *inside* the jail's namespace, handed to httpjail, which serves
//! them from the host namespace: upstream connections leave from the host, and nothing is
//! added to the host's network namespace (no interface, route, nft table or sysctl).
//!
//! # Processes
//!
//! ```text
//! httpjail ──control socket── supervisor (re-executed httpjail, host PID namespace)
//!                                 └── init (PID 1 of the jail's PID namespace)
//!                                       └── the command (PID 2), and all it starts
//! ```
//! `supervisor` builds the jail, `init` reaps and relays signals, and the command is
//! prepared in `init` too. A keeper thread in httpjail spawns the supervisor and stays alive
//! as long as it does, because the supervisor's parent-death signal fires when the *thread*
//! that forked it ends (a short-lived blocking-pool thread would kill the jail).
//!
//! # Modules
//! - [`plan`]: the ruleset, link commands and resolv.conf, as pure data (snapshot-tested);
//! - [`apply`]: the only code that configures the jail's network (rtnetlink, `nft`); binds
//!   the listeners;
//! - [`cleanup`]: `httpjail --cleanup`;
//! - `supervisor`, `init`, `userns`, `mounts`, `netlink`, `protocol`, `sys`: the mechanics.

pub mod apply;
pub mod cleanup;
mod init;
mod mounts;
mod netlink;
pub mod plan;
mod protocol;
mod supervisor;
mod sys;
mod userns;

use std::ffi::{OsStr, OsString};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, FromRawFd as _, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::Duration;

use nix::sys::signal::Signal;

pub use plan::Ports;

use crate::config::SudoUser;
use crate::error::exit_code;
use crate::jail::Error;
use protocol::{Decoder, ReadError, WireSpec, kind};

/// The first argument that makes the httpjail binary run as a jail supervisor. Reserved: no
/// command line a user types starts with it.
pub const SUPERVISOR_ARG: &str = "__httpjail-supervisor";

/// How long [`StrongJail::create`] waits for the supervisor to report the jail ready. Setup
/// takes tens of milliseconds; this only bounds a hung `ip` or `nft`.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long dropping a [`StrongJail`] waits for the supervisor to confirm the jail is gone
/// before killing the supervisor itself (which takes init, and so the jail, with it).
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// What to run in the jail, and as whom.
#[derive(Debug)]
pub struct JailSpec {
    /// Program and arguments. The program is looked up in the `PATH` of [`Self::env`] (as
    /// `execvp` does) unless it contains a `/`.
    pub command: Vec<OsString>,
    /// The complete environment of the command: nothing of httpjail's own is added. With
    /// [`RunAs::User`], `HOME`, `USER` and `LOGNAME` are replaced by that user's.
    pub env: Vec<(OsString, OsString)>,
    /// Working directory of the command, entered as the user the command runs as.
    pub cwd: PathBuf,
    /// Who the command runs as.
    pub run_as: RunAs,
    /// Standard streams for the command; `None` inherits httpjail's.
    pub stdin: Option<OwnedFd>,
    /// See [`Self::stdin`].
    pub stdout: Option<OwnedFd>,
    /// See [`Self::stdin`].
    pub stderr: Option<OwnedFd>,
    /// The httpjail executable that runs the supervisor: `/proc/self/exe` by default (the very
    /// binary running, even if its file was replaced since). Tests and benchmarks, whose own
    /// executable is not httpjail, point it at the built binary.
    pub supervisor_exe: PathBuf,
}

impl JailSpec {
    /// A spec that runs `command` as the current user, with httpjail's standard streams.
    pub fn new(
        command: Vec<OsString>,
        env: Vec<(OsString, OsString)>,
        cwd: impl Into<PathBuf>,
    ) -> Self {
        Self {
            command,
            env,
            cwd: cwd.into(),
            run_as: RunAs::Current,
            stdin: None,
            stdout: None,
            stderr: None,
            supervisor_exe: PathBuf::from("/proc/self/exe"),
        }
    }
}

/// Who the command runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAs {
    /// httpjail's own user: root when started as root (without any capability), or the user
    /// itself in a rootless jail.
    Current,
    /// Another user (httpjail must be root): the user who ran `sudo httpjail`.
    User(UserIdentity),
}

/// The identity the command takes with [`RunAs::User`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIdentity {
    pub name: String,
    pub uid: u32,
    /// Primary group.
    pub gid: u32,
    /// Supplementary groups (as `getgrouplist` gives them, the primary included).
    pub groups: Vec<u32>,
    pub home: PathBuf,
}

impl RunAs {
    /// The sudo user with the supplementary groups from the group database.
    pub fn from_sudo_user(user: &SudoUser) -> Result<Self, Error> {
        let name = std::ffi::CString::new(user.name.as_bytes()).map_err(|_| Error::Setup {
            step: format!("look up the groups of `{}`", user.name),
            detail: "the name contains a NUL byte".into(),
            hint: None,
        })?;
        let groups = nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(user.gid))
            .map_err(|e| Error::Setup {
                step: format!("look up the groups of `{}`", user.name),
                detail: e.desc().into(),
                hint: None,
            })?;
        Ok(Self::User(UserIdentity {
            name: user.name.clone(),
            uid: user.uid,
            gid: user.gid,
            groups: groups.iter().map(|g| g.as_raw()).collect(),
            home: user.home.clone(),
        }))
    }
}

/// httpjail's sockets inside the jail, to be served from the host namespace. All are
/// non-blocking and close-on-exec (ready for `tokio::net::*::from_std`); each vector holds the
/// `127.0.0.1` socket first and the `::1` one second (absent when the kernel has no IPv6).
#[derive(Debug)]
pub struct JailListeners {
    /// The command's TCP port 80 connections (any destination but the jail's own addresses).
    pub http: Vec<TcpListener>,
    /// The command's TCP port 443 connections.
    pub https: Vec<TcpListener>,
    /// DNS over UDP, port 53 of any destination: serve with [`crate::dns::serve_udp`].
    pub dns_udp: Vec<UdpSocket>,
    /// DNS over TCP: serve with [`crate::dns::serve_tcp`].
    pub dns_tcp: Vec<TcpListener>,
    /// The ports these are bound to on the jail's loopback.
    pub ports: Ports,
}

/// How the command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitOutcome {
    /// It exited with this code.
    Exited(i32),
    /// It was killed by this signal.
    Signaled(i32),
    /// The program was not found (exit code 127).
    NotFound,
    /// The program was found but could not be executed (exit code 126).
    NotExecutable { errno: i32 },
    /// The jail could not run it (exit code 125), with the reason.
    Failed(String),
}

impl ExitOutcome {
    /// httpjail's exit code for this outcome (SPEC section 4).
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Exited(code) => *code,
            Self::Signaled(sig) => exit_code::SIGNAL_BASE + sig,
            Self::NotFound => exit_code::NOT_FOUND,
            Self::NotExecutable { .. } => exit_code::NOT_EXECUTABLE,
            Self::Failed(_) => exit_code::HTTPJAIL_FAILED,
        }
    }
}

/// A running strong jail. Dropping it kills every process in the jail and waits (bounded) for
/// the supervisor to confirm; the namespaces vanish once the last process and the last
/// listener (held by httpjail) are gone.
#[derive(Debug)]
pub struct StrongJail {
    control: Mutex<UnixStream>,
    supervisor_pid: u32,
    started: bool,
    outcome_rx: Option<tokio::sync::oneshot::Receiver<ExitOutcome>>,
    outcome: Option<ExitOutcome>,
    done_rx: mpsc::Receiver<()>,
    keeper: Option<std::thread::JoinHandle<()>>,
}

/// What the keeper thread hands back once the jail is ready.
struct Ready {
    control: UnixStream,
    supervisor_pid: u32,
    listeners: JailListeners,
}

impl StrongJail {
    /// Builds the jail: namespaces, network, resolv.conf, listeners. The command is not started
    /// yet; serve the listeners, then call [`Self::start`]. Blocks for the set-up time (tens of
    /// milliseconds); from async code, call it via `spawn_blocking`.
    pub fn create(spec: &JailSpec) -> Result<(Self, JailListeners), Error> {
        let io = |what: &str, e: std::io::Error| Error::Io {
            what: what.to_owned(),
            source: e,
        };
        let mut stdio_mask = 0u8;
        let mut stdio = Vec::new();
        for (bit, fd) in [&spec.stdin, &spec.stdout, &spec.stderr]
            .into_iter()
            .enumerate()
        {
            if let Some(fd) = fd {
                stdio_mask |= 1 << bit;
                stdio.push(
                    fd.try_clone()
                        .map_err(|e| io("duplicate a standard stream", e))?,
                );
            }
        }
        let wire = WireSpec {
            command: spec.command.clone(),
            env: spec.env.clone(),
            cwd: spec.cwd.clone(),
            run_as: spec.run_as.clone(),
            stdio_mask,
        };
        let exe = spec.supervisor_exe.clone();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (outcome_tx, outcome_rx) = tokio::sync::oneshot::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let keeper = std::thread::Builder::new()
            .name("httpjail-jail".into())
            .spawn(move || keep(&exe, &wire, stdio, &ready_tx, outcome_tx, &done_tx))
            .map_err(|e| io("start the jail's keeper thread", e))?;
        let ready = match ready_rx.recv_timeout(SETUP_TIMEOUT) {
            Ok(Ok(ready)) => ready,
            Ok(Err(e)) => {
                let _ = keeper.join();
                return Err(e);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(lost(format!(
                    "no answer from the supervisor in {SETUP_TIMEOUT:?}"
                )));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = keeper.join();
                return Err(lost("the keeper thread ended without an answer".into()));
            }
        };
        let jail = Self {
            control: Mutex::new(ready.control),
            supervisor_pid: ready.supervisor_pid,
            started: false,
            outcome_rx: Some(outcome_rx),
            outcome: None,
            done_rx,
            keeper: Some(keeper),
        };
        Ok((jail, ready.listeners))
    }

    /// Starts the command (call it once the proxy serves the listeners).
    pub fn start(&mut self) -> Result<(), Error> {
        if self.started {
            return Ok(());
        }
        self.send(kind::START, &[]).map_err(|e| Error::Io {
            what: "start the command in the jail (the supervisor is gone)".into(),
            source: e.into(),
        })?;
        self.started = true;
        Ok(())
    }

    /// Waits until the command has ended and every other process of the jail is gone.
    /// Returns the same outcome when called again. Cancel-safe: it can sit in a `select!`
    /// beside a timer (for `--timeout`, then [`Self::kill`] and wait again).
    pub async fn wait(&mut self) -> ExitOutcome {
        if let Some(outcome) = &self.outcome {
            return outcome.clone();
        }
        if !self.started {
            return ExitOutcome::Failed("the command was never started".into());
        }
        let outcome = match &mut self.outcome_rx {
            Some(rx) => rx.await.unwrap_or_else(|_| {
                ExitOutcome::Failed("the jail's keeper thread ended without a report".into())
            }),
            None => ExitOutcome::Failed("the jail's keeper thread ended without a report".into()),
        };
        self.outcome_rx = None;
        self.outcome = Some(outcome.clone());
        outcome
    }

    /// Sends `sig` to the command (only to the command: the processes it started get what it
    /// passes on, as with any parent). The command shares httpjail's process group, so a
    /// terminal's Ctrl-C already reaches it; relay only signals sent to httpjail alone.
    pub fn signal(&self, sig: Signal) {
        let payload = (sig as i32).to_le_bytes();
        if let Err(e) = self.send(kind::SIGNAL, &payload) {
            tracing::debug!("jail: relaying {sig} failed: {e}");
        }
    }

    /// Kills every process in the jail at once (for `--timeout`); [`Self::wait`] then returns
    /// `Signaled(9)` unless the command had already ended.
    pub fn kill(&self) {
        if let Err(e) = self.send(kind::KILL, &[]) {
            tracing::debug!("jail: kill request failed: {e}");
        }
    }

    /// The supervisor's process id in httpjail's PID namespace (for diagnostics and tests).
    pub fn supervisor_pid(&self) -> u32 {
        self.supervisor_pid
    }

    fn send(&self, frame_kind: u8, payload: &[u8]) -> Result<(), nix::errno::Errno> {
        let control = self.control.lock().map_err(|_| nix::errno::Errno::EPIPE)?;
        protocol::write_frame(control.as_fd(), frame_kind, payload, &[])
    }
}

impl Drop for StrongJail {
    fn drop(&mut self) {
        self.kill();
        if let Ok(control) = self.control.get_mut() {
            let _ = control.shutdown(std::net::Shutdown::Write);
        }
        if self.done_rx.recv_timeout(TEARDOWN_TIMEOUT).is_err() {
            // The supervisor did not finish in time (a process stuck in the kernel?). Killing
            // it kills init (parent-death signal), which kills the rest of the namespace.
            if let Ok(pid) = i32::try_from(self.supervisor_pid) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = self.done_rx.recv_timeout(TEARDOWN_TIMEOUT);
        }
        if let Some(keeper) = self.keeper.take()
            && keeper.is_finished()
        {
            let _ = keeper.join();
        }
    }
}

/// The keeper thread: spawns the supervisor, sends the spec, hands the listeners back, then
/// waits for the outcome and the supervisor's exit. Lives exactly as long as the supervisor.
fn keep(
    exe: &std::path::Path,
    spec: &WireSpec,
    stdio: Vec<OwnedFd>,
    ready_tx: &mpsc::Sender<Result<Ready, Error>>,
    outcome_tx: tokio::sync::oneshot::Sender<ExitOutcome>,
    done_tx: &mpsc::Sender<()>,
) {
    let (control, mut supervisor) = match spawn_supervisor(exe) {
        Ok(spawned) => spawned,
        Err(e) => {
            let _ = ready_tx.send(Err(e));
            let _ = done_tx.send(());
            return;
        }
    };
    let raw_stdio: Vec<_> = stdio.iter().map(AsRawFd::as_raw_fd).collect();
    let handshake =
        match protocol::write_frame(control.as_fd(), kind::SPEC, &spec.encode(), &raw_stdio) {
            Err(e) => Err(format!("sending the spec failed ({})", e.desc())),
            Ok(()) => protocol::read_frame(control.as_fd()).map_err(|e| e.to_string()),
        };
    drop(stdio);
    let listeners = match handshake {
        Ok(frame) if frame.kind == kind::READY => decode_ready(&frame.payload, frame.fds),
        Ok(frame) if frame.kind == kind::FAILED => Err(supervisor::decode_error(&frame.payload)
            .unwrap_or_else(|e| lost(format!("unreadable failure report: {e}")))),
        Ok(_) => Err(lost("unexpected message".into())),
        Err(e) => Err(lost(format!(
            "the supervisor stopped before the jail was ready: {e} ({})",
            describe(supervisor.wait().ok())
        ))),
    };
    let ready = listeners.and_then(|listeners| {
        let writer = control.try_clone().map_err(|e| Error::Io {
            what: "duplicate the jail's control socket".into(),
            source: e,
        })?;
        Ok(Ready {
            control: writer,
            supervisor_pid: supervisor.id(),
            listeners,
        })
    });
    // Not delivered (create() gave up waiting, or setup failed): dropping the control socket
    // below makes the supervisor end the jail.
    let delivered = match ready {
        Ok(ready) => ready_tx.send(Ok(ready)).is_ok(),
        Err(e) => {
            let _ = ready_tx.send(Err(e));
            false
        }
    };
    let mut outcome = None;
    if delivered {
        while let Ok(frame) = protocol::read_frame(control.as_fd()) {
            if frame.kind == kind::EXIT {
                outcome = protocol::decode_outcome(&frame.payload).ok();
            }
        }
    }
    drop(control);
    let status = supervisor.wait().ok();
    let outcome = outcome.unwrap_or_else(|| {
        ExitOutcome::Failed(format!(
            "the jail's supervisor ended without reporting ({})",
            describe(status)
        ))
    });
    let _ = outcome_tx.send(outcome);
    let _ = done_tx.send(());
}

fn lost(detail: String) -> Error {
    Error::Setup {
        step: "set up the jail (supervisor)".into(),
        detail,
        hint: None,
    }
}

fn describe(status: Option<ExitStatus>) -> String {
    status.map_or_else(|| "exit status unknown".into(), |s| s.to_string())
}

fn spawn_supervisor(exe: &std::path::Path) -> Result<(UnixStream, std::process::Child), Error> {
    let io = |what: &str, e: std::io::Error| Error::Io {
        what: what.to_owned(),
        source: e,
    };
    let (ours, theirs) =
        UnixStream::pair().map_err(|e| io("create the jail's control socket", e))?;
    let (ours, theirs) = (above_stdio(ours), above_stdio(theirs));
    let (ours, theirs) = (
        ours.map_err(|e| io("move the control socket above 2", e))?,
        theirs.map_err(|e| io("move the control socket above 2", e))?,
    );
    let theirs_fd = theirs.as_raw_fd();
    let mut command = Command::new(exe);
    command
        .arg(SUPERVISOR_ARG)
        .arg(theirs_fd.to_string())
        .arg(std::process::id().to_string())
        .env_clear()
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    // SAFETY: runs in the forked child before exec and only calls fcntl, which is
    // async-signal-safe. The socket is close-on-exec everywhere else, so that no other child
    // of httpjail (a `--sh` rule, say) ever holds the jail's control channel.
    unsafe {
        command.pre_exec(move || sys::set_cloexec(theirs_fd, false));
    }
    let child = command
        .spawn()
        .map_err(|e| io(&format!("start the jail supervisor `{}`", exe.display()), e))?;
    drop(theirs);
    Ok((ours, child))
}

/// The same socket on a descriptor above 2. When httpjail was started with a standard stream
/// closed, a new socket can take its number; 0 to 2 are the command's streams, and the
/// supervisor refuses a control socket there.
fn above_stdio(socket: UnixStream) -> std::io::Result<UnixStream> {
    if socket.as_raw_fd() > 2 {
        return Ok(socket);
    }
    let moved = nix::fcntl::fcntl(&socket, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))
        .map_err(std::io::Error::from)?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that only we own.
    Ok(unsafe { UnixStream::from_raw_fd(moved) })
}

fn decode_ready(payload: &[u8], fds: Vec<OwnedFd>) -> Result<JailListeners, Error> {
    let malformed = |e: ReadError| lost(format!("malformed ready message: {e}"));
    let mut d = Decoder::new(payload);
    let mut port = || -> Result<u16, Error> {
        u16::try_from(d.u32().map_err(malformed)?).map_err(|_| lost("port out of range".into()))
    };
    let ports = Ports {
        http: port()?,
        https: port()?,
        dns: port()?,
    };
    let mut counts = [0usize; 4];
    for c in &mut counts {
        *c = usize::from(d.u8().map_err(malformed)?);
    }
    d.finish().map_err(malformed)?;
    if counts.iter().sum::<usize>() != fds.len() || counts.contains(&0) {
        return Err(lost("listener descriptors missing".into()));
    }
    let mut fds = fds.into_iter();
    let mut take = |n: usize| fds.by_ref().take(n).collect::<Vec<OwnedFd>>();
    let http = take(counts[0]).into_iter().map(TcpListener::from).collect();
    let https = take(counts[1]).into_iter().map(TcpListener::from).collect();
    let dns_tcp = take(counts[2]).into_iter().map(TcpListener::from).collect();
    let dns_udp = take(counts[3]).into_iter().map(UdpSocket::from).collect();
    Ok(JailListeners {
        http,
        https,
        dns_udp,
        dns_tcp,
        ports,
    })
}

/// Runs the supervisor when the process was started as one (first argument
/// [`SUPERVISOR_ARG`]); returns its exit code, or `None` for a normal httpjail run.
pub fn run_supervisor_if_requested(args: &[OsString]) -> Option<i32> {
    if args.get(1).map(OsString::as_os_str) != Some(OsStr::new(SUPERVISOR_ARG)) {
        return None;
    }
    Some(supervisor::main(&args[2..]))
}

/// The address the command connected to, before the jail redirected it to a listener
/// (`SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`). For logs only: the proxy takes the real
/// destination from the Host header or SNI, since this is usually the resolver's `6.6.6.6`.
pub fn original_destination(stream: &impl AsFd) -> Option<SocketAddr> {
    use nix::sys::socket::{SockaddrStorage, getsockname, getsockopt, sockopt};
    let local: SockaddrStorage = getsockname(stream.as_fd().as_raw_fd()).ok()?;
    if local.as_sockaddr_in().is_some() {
        let raw = getsockopt(stream, sockopt::OriginalDst).ok()?;
        let ip = std::net::Ipv4Addr::from(u32::from_be(raw.sin_addr.s_addr));
        Some(SocketAddr::V4(SocketAddrV4::new(
            ip,
            u16::from_be(raw.sin_port),
        )))
    } else if local.as_sockaddr_in6().is_some() {
        let raw = getsockopt(stream, sockopt::Ip6tOriginalDst).ok()?;
        let ip = std::net::Ipv6Addr::from(raw.sin6_addr.s6_addr);
        Some(SocketAddr::V6(SocketAddrV6::new(
            ip,
            u16::from_be(raw.sin6_port),
            raw.sin6_flowinfo,
            raw.sin6_scope_id,
        )))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_spec() {
        assert_eq!(ExitOutcome::Exited(0).exit_code(), 0);
        assert_eq!(ExitOutcome::Exited(3).exit_code(), 3);
        assert_eq!(ExitOutcome::Signaled(15).exit_code(), 143);
        assert_eq!(ExitOutcome::NotFound.exit_code(), 127);
        assert_eq!(ExitOutcome::NotExecutable { errno: 13 }.exit_code(), 126);
        assert_eq!(ExitOutcome::Failed("x".into()).exit_code(), 125);
    }

    #[test]
    fn only_the_reserved_first_argument_selects_the_supervisor() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            run_supervisor_if_requested(&args(&["httpjail", "--js", "true"])),
            None
        );
        assert_eq!(run_supervisor_if_requested(&args(&["httpjail"])), None);
        assert_eq!(
            run_supervisor_if_requested(&args(&["httpjail", "--", SUPERVISOR_ARG])),
            None
        );
    }

    #[test]
    fn original_destination_of_a_plain_connection_is_none() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        // Not redirected by netfilter: conntrack has no original destination to report, or
        // reports the address itself.
        let orig = original_destination(&accepted);
        assert!(
            orig.is_none() || orig == accepted.local_addr().ok(),
            "{orig:?}"
        );
    }
}
