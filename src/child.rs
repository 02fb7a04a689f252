//! Spawning the user's command, forwarding signals to it, `--timeout`, and turning how it
//! ended into httpjail's exit code.
//!
//! Who receives what (see nextest's "signal handling" design notes and Rain's talk on Unix
//! signals for the background):
//! - **Interactive** (stdin is a terminal and we are its foreground process group): the command
//!   stays in our process group so it keeps the terminal (a TUI agent must be able to read it).
//!   Ctrl-C then reaches the command *and* us; we do not forward terminal-generated signals a
//!   second time. A second Ctrl-C while the command is still running kills it (SIGKILL), for
//!   commands that ignore SIGINT.
//! - **Non-interactive** (CI, pipes, services): the command gets its own process group, so that
//!   `--timeout` and a second SIGINT end the command *and everything it started*. Signals sent
//!   to httpjail (SIGINT, SIGTERM, SIGHUP, SIGQUIT) are forwarded to that group.
//! - `--timeout`: SIGTERM to the command (group), SIGKILL after a short grace; exit code 124.
//!
//! httpjail waits for the command before tearing anything down, so the proxy outlives every
//! request the command made.

use std::ffi::OsString;
use std::future::Future;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::error::exit_code;
use crate::signals::Signals;

/// How long a command has to exit after SIGTERM (timeout) before it gets SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);

/// The command to run and its complete environment.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    pub argv: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub cwd: Option<PathBuf>,
}

/// How the command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Signaled(i32),
    TimedOut,
    NotFound,
    NotExecutable,
    /// httpjail could not run it (exit code 125), with the reason.
    Failed(String),
}

impl Outcome {
    /// SPEC section 4.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Exited(code) => *code,
            Self::Signaled(signal) => exit_code::SIGNAL_BASE + signal,
            Self::TimedOut => exit_code::TIMEOUT,
            Self::NotFound => exit_code::NOT_FOUND,
            Self::NotExecutable => exit_code::NOT_EXECUTABLE,
            Self::Failed(_) => exit_code::HTTPJAIL_FAILED,
        }
    }

    pub fn from_status(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => Self::Exited(code),
            (None, Some(signal)) => Self::Signaled(signal),
            (None, None) => Self::Failed(format!("unknown exit status {status:?}")),
        }
    }
}

/// Whether stdin is a terminal whose foreground process group is ours.
pub fn is_interactive() -> bool {
    let stdin = std::io::stdin();
    match nix::unistd::tcgetpgrp(&stdin) {
        Ok(foreground) => foreground == nix::unistd::getpgrp(),
        Err(_) => false,
    }
}

/// A running command, however it is confined.
pub trait Supervised {
    /// Waits for the command to end. Must be cancel-safe (it sits in a `select!`).
    fn wait(&mut self) -> impl Future<Output = Outcome> + Send;
    /// Passes a signal on to the command.
    fn signal(&self, signal: Signal);
    /// Ends the command and everything it started, now.
    fn kill(&self);
}

/// Waits for the command while forwarding signals and enforcing `timeout`.
///
/// `shares_terminal_signals`: the command is in our foreground process group, so signals the
/// terminal generates reach it without us; only signals sent to httpjail alone are passed on.
pub async fn supervise(
    command: &mut impl Supervised,
    timeout: Option<Duration>,
    signals: &mut Signals,
    shares_terminal_signals: bool,
) -> Outcome {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut interrupts = 0u32;
    loop {
        let expired = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            outcome = command.wait() => return outcome,
            Some(received) = signals.recv() => {
                if received.signal == Signal::SIGINT {
                    interrupts += 1;
                    if interrupts >= 2 {
                        tracing::warn!("second interrupt: killing the command");
                        command.kill();
                        continue;
                    }
                }
                if shares_terminal_signals && received.from_terminal {
                    continue;
                }
                command.signal(received.signal);
            }
            () = expired => {
                tracing::warn!("--timeout expired: stopping the command");
                command.signal(Signal::SIGTERM);
                if tokio::time::timeout(TERM_GRACE, command.wait()).await.is_err() {
                    command.kill();
                    let _ = command.wait().await;
                }
                return Outcome::TimedOut;
            }
        }
    }
}

/// A command started directly (weak mode).
struct DirectChild {
    child: tokio::process::Child,
    target: Target,
}

impl Supervised for DirectChild {
    async fn wait(&mut self) -> Outcome {
        match self.child.wait().await {
            Ok(status) => Outcome::from_status(status),
            Err(e) => Outcome::Failed(format!("waiting for the command failed: {e}")),
        }
    }

    fn signal(&self, signal: Signal) {
        self.target.send(signal);
    }

    fn kill(&self) {
        self.target.send(Signal::SIGKILL);
    }
}

/// Runs the command to completion, forwarding signals and enforcing `timeout`.
pub async fn run(
    spec: &CommandSpec,
    timeout: Option<Duration>,
    signals: &mut Signals,
) -> io::Result<Outcome> {
    let interactive = is_interactive();
    let Some((program, args)) = spec.argv.split_first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no command"));
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    if !interactive {
        command.process_group(0);
    }
    let child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return match e.kind() {
                io::ErrorKind::NotFound => Ok(Outcome::NotFound),
                io::ErrorKind::PermissionDenied => Ok(Outcome::NotExecutable),
                _ if e.raw_os_error() == Some(libc::ENOEXEC) => Ok(Outcome::NotExecutable),
                _ => Err(e),
            };
        }
    };
    let pid = Pid::from_raw(child.id().map_or(0, |id| id as i32));
    let mut direct = DirectChild {
        child,
        target: Target {
            pid,
            own_group: !interactive,
        },
    };
    Ok(supervise(&mut direct, timeout, signals, interactive).await)
}

/// Where signals for the command go.
#[derive(Debug, Clone, Copy)]
struct Target {
    pid: Pid,
    own_group: bool,
}

impl Target {
    fn send(self, signal: Signal) {
        if self.pid.as_raw() <= 0 {
            return;
        }
        if self.own_group {
            let _ = killpg(self.pid, signal);
            return;
        }
        // Sharing our process group: signal the command and what it started, never us.
        if signal == Signal::SIGKILL {
            for pid in descendants(self.pid) {
                let _ = kill(pid, signal);
            }
        }
        let _ = kill(self.pid, signal);
    }
}

/// Every live descendant of `root` (by walking parent links in /proc).
fn descendants(root: Pid) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut parents: Vec<(i32, i32)> = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name is in parentheses and may contain spaces: parse after the last ')'.
        let Some(after) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        let Some(ppid) = after
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        parents.push((pid, ppid));
    }
    let mut found = vec![root.as_raw()];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.into_iter().skip(1).map(Pid::from_raw).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(args: &[&str]) -> CommandSpec {
        CommandSpec {
            argv: args.iter().map(OsString::from).collect(),
            env: std::env::vars_os().collect(),
            cwd: None,
        }
    }

    #[tokio::test]
    async fn exit_codes_pass_through() {
        let mut signals = Signals::none();
        assert_eq!(
            run(&spec(&["sh", "-c", "exit 7"]), None, &mut signals)
                .await
                .unwrap(),
            Outcome::Exited(7)
        );
        assert_eq!(
            run(&spec(&["true"]), None, &mut signals)
                .await
                .unwrap()
                .exit_code(),
            0
        );
        let killed = run(&spec(&["sh", "-c", "kill -TERM $$"]), None, &mut signals)
            .await
            .unwrap();
        assert_eq!(killed, Outcome::Signaled(15));
        assert_eq!(killed.exit_code(), 143);
    }

    #[tokio::test]
    async fn missing_and_non_executable_commands() {
        let mut signals = Signals::none();
        let missing = run(&spec(&["/nonexistent/cmd"]), None, &mut signals)
            .await
            .unwrap();
        assert_eq!(
            (missing.clone(), missing.exit_code()),
            (Outcome::NotFound, 127)
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-exec");
        std::fs::write(&file, "#!/bin/sh\necho hi\n").unwrap();
        let denied = run(&spec(&[file.to_str().unwrap()]), None, &mut signals)
            .await
            .unwrap();
        assert_eq!(
            (denied.clone(), denied.exit_code()),
            (Outcome::NotExecutable, 126)
        );
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let mut signals = Signals::none();
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survivor");
        // A background grandchild that would write the marker if it survived.
        let script = format!("(sleep 3; touch {}) & sleep 60", marker.display());
        let started = std::time::Instant::now();
        let outcome = run(
            &spec(&["sh", "-c", &script]),
            Some(Duration::from_millis(300)),
            &mut signals,
        )
        .await
        .unwrap();
        assert_eq!(
            (outcome.clone(), outcome.exit_code()),
            (Outcome::TimedOut, 124)
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(3500));
        assert!(
            !marker.exists(),
            "the background process outlived the timeout"
        );
    }

    #[test]
    fn descendants_are_found() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let root = Pid::from_raw(child.id() as i32);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut found = Vec::new();
        while found.is_empty() && std::time::Instant::now() < deadline {
            found = descendants(root);
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(found.len(), 1, "{found:?}");
        for pid in found {
            let _ = kill(pid, Signal::SIGKILL);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
