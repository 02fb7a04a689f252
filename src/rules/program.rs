//! Starting the user's rule programs (`--sh`, `--proc`) and cleaning up after them.
//!
//! This module owns three things both process engines need:
//! - [`Program`]: how `CMD` becomes a process (direct exec, or `sh -c CMD` when it has a space),
//!   checked once at start-up so that a missing or non-executable program is an error before
//!   anything runs;
//! - [`RuleChild`]: a spawned rule in its own process group, whose whole group is killed when it
//!   is done, timed out or dropped, so a rule cannot leave processes behind;
//! - [`LineSplitter`] and [`forward_stderr`]: bounded line handling for what a rule prints.
//!
//! It must not interpret answers (that is `answer`) nor decide anything (that is the engines).

use std::ffi::OsString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::{AccessFlags, Pid, access};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

use super::Error;
use super::answer::cap_message;
use crate::env::{Environment, ProcessEnv};

/// The `tracing` target of everything a rule program prints on stderr.
pub const RULE_TARGET: &str = "httpjail::rule";

/// Longest stderr line of a rule that we forward; the rest of the line is dropped.
pub const MAX_STDERR_LINE: usize = 4096;

/// `execvp`'s search path when `PATH` is unset (glibc's default, without the current directory).
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// How a rule command is started.
#[derive(Debug, Clone)]
enum Launch {
    /// `CMD` itself, resolved to a path at start-up.
    Direct(PathBuf),
    /// `sh -c CMD`, with `sh` resolved at start-up.
    Shell { sh: PathBuf },
}

/// A rule command, checked and ready to be started any number of times.
#[derive(Debug, Clone)]
pub struct Program {
    /// The command exactly as the user wrote it, for messages.
    command: String,
    launch: Launch,
    /// Variables of our environment the program must not inherit (`--secret`).
    hidden_env: Vec<OsString>,
}

impl Program {
    /// Checks `command` for `flag` (`--sh` or `--proc`).
    ///
    /// With whitespace in it, `command` is a shell command line run as `sh -c command` (so it
    /// may carry arguments, pipes, `exec`...), and only `sh` has to exist. Otherwise it is one
    /// program, executed directly: a path when it contains `/`, else looked up on `PATH` the
    /// way `execvp` does. A program that is missing or not executable is an error now rather
    /// than a deny on every request.
    pub fn resolve(flag: &'static str, command: &str) -> Result<Self, Error> {
        let launch = if command.contains(char::is_whitespace) {
            Launch::Shell {
                sh: find_executable(flag, "sh")?,
            }
        } else {
            Launch::Direct(find_executable(flag, command)?)
        };
        Ok(Self {
            command: command.to_owned(),
            launch,
            hidden_env: Vec::new(),
        })
    }

    /// The same program, started without these variables of our environment (the `--secret`
    /// variables and copies of their values: see `crate::secrets::env::hidden_vars`).
    pub fn hiding_env(mut self, names: Vec<OsString>) -> Self {
        self.hidden_env = names;
        self
    }

    /// The command as the user gave it.
    pub fn display(&self) -> &str {
        &self.command
    }

    /// A `Command` that starts the program in a new process group, killed when dropped.
    /// The caller sets stdio and environment.
    pub fn command(&self) -> Command {
        let mut cmd = match &self.launch {
            Launch::Direct(path) => {
                let mut cmd = Command::new(path);
                cmd.arg0(&self.command);
                cmd
            }
            Launch::Shell { sh } => {
                let mut cmd = Command::new(sh);
                cmd.arg0("sh").arg("-c").arg(&self.command);
                cmd
            }
        };
        // A group of its own lets us kill everything the rule started (pipelines, background
        // jobs) with one signal, and keeps terminal signals (Ctrl-C) meant for the jailed
        // command's foreground group away from it. std implements this with posix_spawn's
        // POSIX_SPAWN_SETPGROUP, so the cheap vfork-style spawn path is kept.
        cmd.process_group(0).kill_on_drop(true);
        for name in &self.hidden_env {
            cmd.env_remove(name);
        }
        cmd
    }
}

/// What a path is, as far as running it goes.
enum Check {
    Runnable,
    Missing,
    NotRunnable,
}

fn check(path: &Path) -> Check {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Check::Missing,
        // Unreadable parent directories and the like: it exists but we cannot run it.
        Err(_) => Check::NotRunnable,
        Ok(meta) if !meta.is_file() => Check::NotRunnable,
        // access(2) checks execute permission for our real uid, as exec would.
        Ok(_) => match access(path, AccessFlags::X_OK) {
            Ok(()) => Check::Runnable,
            Err(_) => Check::NotRunnable,
        },
    }
}

/// Resolves `name` the way `execvp` would: a path when it contains `/`, else the first
/// executable file named `name` in a `PATH` directory. Returns an absolute path.
fn find_executable(flag: &'static str, name: &str) -> Result<PathBuf, Error> {
    let not_found = || Error::ProgramNotFound {
        flag,
        program: name.to_owned(),
    };
    let not_executable = || Error::ProgramNotExecutable {
        flag,
        program: name.to_owned(),
    };
    if name.contains('/') {
        let path = Path::new(name);
        return match check(path) {
            // Absolute, so that the rule keeps working whatever our working directory becomes.
            Check::Runnable => Ok(std::path::absolute(path).unwrap_or_else(|_| path.to_owned())),
            Check::Missing => Err(not_found()),
            Check::NotRunnable => Err(not_executable()),
        };
    }
    // The rule inherits our environment, so our PATH is the one it would be looked up on.
    let search = ProcessEnv
        .var_os(crate::env::PATH)
        .unwrap_or_else(|| OsString::from(DEFAULT_PATH));
    let mut saw_non_executable = false;
    for dir in std::env::split_paths(&search) {
        // An empty PATH entry means the current directory (POSIX).
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let candidate = dir.join(name);
        match check(&candidate) {
            Check::Runnable => {
                return Ok(std::path::absolute(&candidate).unwrap_or(candidate));
            }
            // execvp skips a non-executable match and keeps searching; so do we.
            Check::NotRunnable => saw_non_executable = true,
            Check::Missing => {}
        }
    }
    Err(if saw_non_executable {
        not_executable()
    } else {
        not_found()
    })
}

/// A running rule program, leader of its own process group.
///
/// The group is killed (SIGKILL) by [`RuleChild::kill_group`] and on drop. The group is only
/// ever signalled while the leader is not yet reaped: until then the kernel cannot give its
/// pid (which is the group id) to another process, so we can never kill a stranger's group.
#[derive(Debug)]
pub struct RuleChild {
    child: Child,
    /// The group (= the leader's pid) while the leader is unreaped; `None` afterwards.
    group: Option<Pid>,
    /// Readable once the leader has exited, without reaping it (Linux >= 5.3).
    pidfd: Option<AsyncFd<OwnedFd>>,
}

impl RuleChild {
    /// Spawns `cmd` (built by [`Program::command`]).
    pub fn spawn(cmd: &mut Command) -> io::Result<Self> {
        let child = cmd.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| io::Error::other("the rule process has no pid"))?;
        let raw = i32::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
        Ok(Self {
            child,
            group: Some(Pid::from_raw(raw)),
            pidfd: open_pidfd(raw),
        })
    }

    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    /// Resolves once the leader has exited. It is left unreaped (a zombie), so that the group
    /// can still be killed safely; call [`RuleChild::reap`] afterwards.
    pub async fn exited(&self) {
        let Some(pid) = self.group else {
            return;
        };
        if let Some(fd) = &self.pidfd {
            // A pidfd polls readable when the process exits; readiness stays set.
            if fd.readable().await.is_ok() {
                return;
            }
        }
        // Without pidfd: ask waitid without reaping (WNOWAIT), backing off up to 20 ms.
        let mut pause = Duration::from_millis(1);
        loop {
            match waitid(
                Id::Pid(pid),
                WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
            ) {
                Ok(WaitStatus::StillAlive) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                // Exited, or an error that means there is nothing left to wait for.
                _ => return,
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Sends SIGKILL to the whole group. A no-op once the leader is reaped.
    pub fn kill_group(&self) {
        if let Some(group) = self.group {
            // ESRCH (the group is already gone) is the expected outcome when nothing is left.
            let _ = killpg(group, Signal::SIGKILL);
        }
    }

    /// Waits for the leader and reaps it. Kill the group first if anything may be left in it.
    pub async fn reap(&mut self) -> io::Result<ExitStatus> {
        let status = self.child.wait().await;
        if status.is_ok() {
            self.group = None;
        }
        status
    }
}

impl Drop for RuleChild {
    fn drop(&mut self) {
        // Evaluation cancelled, engine dropped, runtime shutting down: nothing of the rule may
        // survive. tokio's kill_on_drop then kills and reaps the leader in the background.
        self.kill_group();
    }
}

/// Opens a pidfd for `pid`, registered with the runtime; `None` where the kernel has none.
fn open_pidfd(pid: i32) -> Option<AsyncFd<OwnedFd>> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new file descriptor (always
    // O_CLOEXEC) or -1; it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, libc::PIDFD_NONBLOCK) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: `fd` was just returned by pidfd_open, is valid, and nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an OwnedFd keeps its descriptor open, unchanged, until the AsyncFd drops it.
    unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }.ok()
}

/// One piece of output produced by [`LineSplitter`].
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// A complete line, without its `\n`.
    Line(&'a [u8]),
    /// A line longer than the limit: its first `max` bytes. The rest of it, up to the next
    /// `\n`, is discarded and produces no further piece.
    Overlong(&'a [u8]),
}

/// Splits a byte stream into lines of at most `max` bytes, using at most `max` bytes of memory.
#[derive(Debug)]
pub struct LineSplitter {
    line: Vec<u8>,
    max: usize,
    discarding: bool,
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        Self {
            line: Vec::new(),
            max,
            discarding: false,
        }
    }

    /// Feeds bytes; calls `on_piece` for every line completed (or found overlong) by them.
    pub fn feed(&mut self, mut data: &[u8], mut on_piece: impl FnMut(Piece<'_>)) {
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    self.extend(&data[..end], &mut on_piece);
                    if !self.discarding {
                        on_piece(Piece::Line(&self.line));
                    }
                    self.line.clear();
                    self.discarding = false;
                    data = &data[end + 1..];
                }
                None => {
                    self.extend(data, &mut on_piece);
                    return;
                }
            }
        }
    }

    /// The bytes after the last `\n` (an unterminated last line), then resets.
    pub fn take_rest(&mut self) -> Option<Vec<u8>> {
        let rest =
            (!self.discarding && !self.line.is_empty()).then(|| std::mem::take(&mut self.line));
        self.reset();
        rest
    }

    /// Forgets any partial line.
    pub fn reset(&mut self) {
        self.line.clear();
        self.discarding = false;
    }

    fn extend(&mut self, part: &[u8], on_piece: &mut impl FnMut(Piece<'_>)) {
        if self.discarding {
            return;
        }
        let room = self.max - self.line.len();
        if part.len() <= room {
            self.line.extend_from_slice(part);
        } else {
            self.line.extend_from_slice(&part[..room]);
            on_piece(Piece::Overlong(&self.line));
            self.line.clear();
            self.discarding = true;
        }
    }
}

/// Forwards a rule's stderr to the diagnostics, one event per line (target [`RULE_TARGET`]),
/// until EOF or a read error. Lines are decoded lossily, cleaned of control characters and cut
/// at [`MAX_STDERR_LINE`] bytes, so a rule cannot flood memory or corrupt the terminal.
pub async fn forward_stderr<R: AsyncRead + Unpin>(mut reader: R) {
    let mut splitter = LineSplitter::new(MAX_STDERR_LINE);
    let mut buf = vec![0u8; 4096];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => splitter.feed(&buf[..n], |piece| match piece {
                Piece::Line(line) => log_stderr_line(line, false),
                Piece::Overlong(head) => log_stderr_line(head, true),
            }),
        }
    }
    if let Some(rest) = splitter.take_rest() {
        log_stderr_line(&rest, false);
    }
}

fn log_stderr_line(line: &[u8], cut: bool) {
    let text = String::from_utf8_lossy(line);
    let text = cap_message(text.trim_end());
    if cut {
        tracing::info!(target: RULE_TARGET, "{text} [line cut at {MAX_STDERR_LINE} bytes]");
    } else {
        tracing::info!(target: RULE_TARGET, "{text}");
    }
}

/// Reads `reader` to EOF into `out`, keeping at most `max` bytes and discarding the rest (the
/// writer is never blocked on a full pipe because we stopped reading).
pub async fn read_capped<R: AsyncRead + Unpin>(mut reader: R, out: &mut Vec<u8>, max: usize) {
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let room = max.saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// Formats a delay for messages: `200 ms`, `1.6 s`.
pub fn human_delay(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn collect(splitter: &mut LineSplitter, data: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        splitter.feed(data, |p| {
            out.push(match p {
                Piece::Line(l) => format!("L:{}", String::from_utf8_lossy(l)),
                Piece::Overlong(h) => format!("O:{}", String::from_utf8_lossy(h)),
            });
        });
        out
    }

    #[test]
    fn splitter_joins_chunks_and_caps_long_lines() {
        let mut s = LineSplitter::new(4);
        assert_eq!(collect(&mut s, b"ab"), Vec::<String>::new());
        assert_eq!(collect(&mut s, b"c\nd"), ["L:abc"]);
        assert_eq!(collect(&mut s, b"\n\n"), ["L:d", "L:"]);
        // Exactly the limit is fine; one more byte is overlong, reported once.
        assert_eq!(collect(&mut s, b"abcd\nabcde"), ["L:abcd", "O:abcd"]);
        assert_eq!(collect(&mut s, b"fgh"), Vec::<String>::new());
        assert_eq!(collect(&mut s, b"ij\nok\n"), ["L:ok"]);
        assert_eq!(collect(&mut s, b"tail"), Vec::<String>::new());
        assert_eq!(s.take_rest(), Some(b"tail".to_vec()));
        assert_eq!(s.take_rest(), None);
    }

    #[test]
    fn whitespace_means_sh_and_sh_is_found() {
        let p = Program::resolve("--sh", "exit 0").unwrap();
        match &p.launch {
            Launch::Shell { sh } => assert!(sh.is_absolute() && sh.ends_with("sh"), "{sh:?}"),
            Launch::Direct(_) => panic!("a command with a space must run through sh"),
        }
        assert_eq!(p.display(), "exit 0");
    }

    #[test]
    fn bare_names_are_looked_up_on_path() {
        let p = Program::resolve("--proc", "cat").unwrap();
        match &p.launch {
            Launch::Direct(path) => assert!(path.is_absolute() && path.ends_with("cat")),
            Launch::Shell { .. } => panic!("`cat` has no space: direct exec"),
        }
    }

    #[test]
    fn missing_and_non_executable_programs_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.sh");
        let missing = missing.to_str().unwrap();
        let e = Program::resolve("--sh", missing).unwrap_err();
        assert!(
            matches!(e, Error::ProgramNotFound { flag: "--sh", .. }),
            "{e}"
        );
        assert!(e.to_string().contains(missing), "{e}");

        let plain = dir.path().join("plain.sh");
        std::fs::write(&plain, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Program::resolve("--proc", plain.to_str().unwrap()).unwrap_err();
        assert!(
            matches!(e, Error::ProgramNotExecutable { flag: "--proc", .. }),
            "{e}"
        );
        assert!(e.hint().unwrap().contains("chmod +x"), "{e}");

        let e = Program::resolve("--sh", dir.path().to_str().unwrap()).unwrap_err();
        assert!(
            matches!(e, Error::ProgramNotExecutable { .. }),
            "a directory: {e}"
        );

        let e = Program::resolve("--sh", "httpjail-no-such-program-xyz").unwrap_err();
        assert!(matches!(e, Error::ProgramNotFound { .. }), "{e}");
    }

    #[tokio::test]
    async fn kill_group_reaches_background_processes() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("bg.pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let program = Program::resolve("--sh", &script).unwrap();
        let mut cmd = program.command();
        let mut child = RuleChild::spawn(&mut cmd).unwrap();
        let bg = poll_pid_file(&pidfile).await;
        assert!(alive(bg));
        child.kill_group();
        child.exited().await;
        let status = child.reap().await.unwrap();
        assert!(!status.success());
        wait_gone(bg).await;
    }
}

/// Process helpers shared by the engines' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::Path;
    use std::time::Duration;

    pub(crate) async fn poll_pid_file(path: &Path) -> i32 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(text) = std::fs::read_to_string(path)
                && let Ok(pid) = text.trim().parse()
            {
                return pid;
            }
            assert!(tokio::time::Instant::now() < deadline, "no pid in {path:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub(crate) fn alive(pid: i32) -> bool {
        // A zombie still "exists" for kill(0); look at its state instead.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    }

    pub(crate) async fn wait_gone(pid: i32) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while alive(pid) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "process {pid} is still running"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
