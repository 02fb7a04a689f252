//! PID 1 of the jail, and the last steps of the command's process before `exec`.
//!
//! The supervisor forks [`run`] as the first process of the jail's new PID namespace. Init
//! mounts the jail's `/proc`, forks the command, reaps every process that ends in the
//! namespace, forwards the signals the supervisor relays, and, when the command ends, reports
//! how and exits: the kernel then kills every process left in the namespace (a `sleep 1000 &`
//! does not outlive the jail). Signals from inside the namespace do not reach init (the kernel
//! drops signals to a namespace's init that it has no handler for), so the command cannot kill
//! it to escape supervision; if the supervisor dies, init gets `SIGKILL` (parent-death signal)
//! or sees its pipe close, and the namespace ends with it.
//!
//! [`exec_command`] runs in the command's process between `fork` and `exec`: inner user
//! namespace (rootless), identity (sudo user), no capability left and none that can ever come
//! back, `no_new_privs`, no inherited descriptor but 0, 1, 2; exec errors go back to init
//! through a close-on-exec pipe, so "not found" and "not executable" are told apart from the
//! command's own exit codes.
//!
//! Everything here runs in single-threaded processes forked from the single-threaded
//! supervisor, so allocating after `fork` is sound.

use std::ffi::{CString, OsString};
use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid, fork, pipe2};

use super::protocol::{WireSpec, encode_outcome};
use super::{ExitOutcome, RunAs, mounts, sys, userns};

/// Used when the command's environment has no `PATH` (as `execvp` does, plus `/usr/local/bin`).
const DEFAULT_PATH: &[u8] = b"/usr/local/bin:/usr/bin:/bin";

/// What init needs, handed over by the supervisor.
#[derive(Debug)]
pub(crate) struct InitArgs {
    pub(crate) spec: WireSpec,
    /// Rootless jail: the command goes into an inner user namespace mapping these ids back.
    pub(crate) rootless: bool,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Init writes the command's outcome here, once, just before it exits.
    pub(crate) status: OwnedFd,
    /// Signal numbers (4 bytes each) the supervisor relays for the command; closed when the
    /// supervisor ends.
    pub(crate) signals: OwnedFd,
}

/// Where preparing the command failed, as reported through the exec-error pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Step {
    NotFound = 1,
    NotExecutable = 2,
    Chdir = 3,
    UserNamespace = 4,
    Identity = 5,
    Capabilities = 6,
    NoNewPrivs = 7,
    Arguments = 8,
}

impl Step {
    fn from_u8(v: u8) -> Option<Self> {
        [
            Self::NotFound,
            Self::NotExecutable,
            Self::Chdir,
            Self::UserNamespace,
            Self::Identity,
            Self::Capabilities,
            Self::NoNewPrivs,
            Self::Arguments,
        ]
        .into_iter()
        .find(|s| *s as u8 == v)
    }

    fn describe(self) -> &'static str {
        match self {
            Self::NotFound => "find the command",
            Self::NotExecutable => "execute the command",
            Self::Chdir => "enter the working directory",
            Self::UserNamespace => "enter the command's user namespace",
            Self::Identity => "switch to the user",
            Self::Capabilities => "drop capabilities",
            Self::NoNewPrivs => "set no_new_privs",
            Self::Arguments => "pass the arguments (a NUL byte inside one?)",
        }
    }
}

/// Body of the jail's PID 1; returns its exit code.
pub(crate) fn run(args: InitArgs) -> i32 {
    // If the supervisor is already gone, the closed `signals` pipe tells us below.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let outcome = supervise(&args);
    let mut status = std::fs::File::from(args.status);
    let _ = status.write_all(&encode_outcome(&outcome));
    0
}

fn supervise(args: &InitArgs) -> ExitOutcome {
    let harden = !args.rootless;
    if let Err(e) = mounts::mount_proc(harden) {
        return ExitOutcome::Failed(e.to_string());
    }
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    if let Err(e) = chld.thread_block() {
        return ExitOutcome::Failed(format!("block SIGCHLD in the jail's init: {e}"));
    }
    let flags = SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC;
    let sigfd = match SignalFd::with_flags(&chld, flags) {
        Ok(fd) => fd,
        Err(e) => return ExitOutcome::Failed(format!("signalfd in the jail's init: {e}")),
    };
    let pipes = (|| Ok::<_, Errno>((pipe2(cloexec())?, pipe2(cloexec())?, pipe2(cloexec())?)))();
    let Ok(((err_r, err_w), (ready_r, ready_w), (mapped_r, mapped_w))) = pipes else {
        return ExitOutcome::Failed("create pipes in the jail's init".into());
    };

    // SAFETY: init is single-threaded (forked from the single-threaded supervisor), so the
    // child may run arbitrary code after fork.
    let child = match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop((err_r, ready_r, mapped_w, sigfd));
            exec_command(args, err_w, ready_w, mapped_r)
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => return ExitOutcome::Failed(format!("fork the command: {e}")),
    };
    drop((err_w, ready_w, mapped_r));

    let mut map_failure = None;
    if args.rootless
        && let Err(e) = map_command(child, args, ready_r, mapped_w)
    {
        let _ = kill(child, Signal::SIGKILL);
        map_failure = Some(ExitOutcome::Failed(e));
    }
    // The command's own report (it may have failed before we could map it) wins.
    let mut exec_failure = None;
    let mut report = [0u8; 6];
    let mut err_r = std::fs::File::from(err_r);
    if err_r.read_exact(&mut report).is_ok() {
        let errno = i32::from_le_bytes([report[2], report[3], report[4], report[5]]);
        exec_failure = Some(failure_outcome(report[0], errno, &args.spec));
    }
    drop(err_r);
    let exec_failure = exec_failure.or(map_failure);

    let status = wait_for(child, &sigfd, &args.signals);
    match (exec_failure, status) {
        (Some(failure), _) => failure,
        (None, Some(outcome)) => outcome,
        (None, None) => ExitOutcome::Failed("the jail's supervisor ended".into()),
    }
}

fn cloexec() -> nix::fcntl::OFlag {
    nix::fcntl::OFlag::O_CLOEXEC
}

/// Rootless: waits until the command's process has entered its user namespace, writes that
/// namespace's maps, and lets it go on.
fn map_command(child: Pid, args: &InitArgs, ready: OwnedFd, mapped: OwnedFd) -> Result<(), String> {
    let mut byte = [0u8; 1];
    std::fs::File::from(ready)
        .read_exact(&mut byte)
        .map_err(|_| "the command's process ended before entering its user namespace")?;
    userns::map_inner(child.as_raw(), args.uid, args.gid).map_err(|e| {
        format!("could not map the user's ids into the command's user namespace: {e}")
    })?;
    std::fs::File::from(mapped)
        .write_all(&[1])
        .map_err(|e| format!("could not resume the command's process: {e}"))
}

fn failure_outcome(step: u8, errno: i32, spec: &WireSpec) -> ExitOutcome {
    match Step::from_u8(step) {
        Some(Step::NotFound) => ExitOutcome::NotFound,
        Some(Step::NotExecutable) => ExitOutcome::NotExecutable { errno },
        Some(Step::Chdir) => ExitOutcome::Failed(format!(
            "cannot enter the working directory `{}`: {}",
            spec.cwd.display(),
            Errno::from_raw(errno).desc()
        )),
        Some(step) => ExitOutcome::Failed(format!(
            "could not {}: {}",
            step.describe(),
            Errno::from_raw(errno).desc()
        )),
        None => ExitOutcome::Failed("the command's process reported an unknown failure".into()),
    }
}

/// Reaps children until the command has ended, relaying signals to it meanwhile. `None` if
/// the supervisor went away first (the jail is then torn down without a report).
fn wait_for(child: Pid, sigfd: &SignalFd, signals: &OwnedFd) -> Option<ExitOutcome> {
    let mut signals_open = true;
    loop {
        let mut fds = vec![PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
        if signals_open {
            fds.push(PollFd::new(signals.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return None,
        }
        let relay_ready = fds
            .get(1)
            .and_then(PollFd::revents)
            .is_some_and(|r| !r.is_empty());
        drop(fds);
        while let Ok(Some(_)) = sigfd.read_signal() {}
        if let Some(outcome) = reap(child) {
            return Some(outcome);
        }
        if relay_ready {
            let mut buf = [0u8; 4];
            match nix::unistd::read(signals, &mut buf) {
                Ok(4) => {
                    if let Ok(sig) = Signal::try_from(i32::from_le_bytes(buf)) {
                        let _ = kill(child, sig);
                    }
                }
                Ok(0) | Err(_) => return None,
                Ok(_) => signals_open = false,
            }
        }
    }
}

/// Reaps every child that has ended; the command's status, if it is among them.
fn reap(child: Pid) -> Option<ExitOutcome> {
    let mut outcome = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == child => {
                outcome = Some(ExitOutcome::Exited(code));
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                outcome = Some(ExitOutcome::Signaled(sig as i32));
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return outcome,
            Ok(_) => {}
        }
    }
}

/// The command's process: final preparation, then `exec`. Never returns; on failure it reports
/// the step and errno to init and exits.
fn exec_command(args: &InitArgs, err: OwnedFd, ready: OwnedFd, mapped: OwnedFd) -> ! {
    let fail = |step: Step, errno: Errno| -> ! {
        let mut report = [0u8; 6];
        report[0] = step as u8;
        report[2..].copy_from_slice(&(errno as i32).to_le_bytes());
        let _ = nix::unistd::write(&err, &report);
        let code = if step == Step::NotFound { 127 } else { 126 };
        sys::exit_now(code)
    };
    let spec = &args.spec;

    if args.rootless {
        // Our /proc files belong to root while we are not dumpable (inherited from init), and
        // init could not write our maps; exec resets this anyway.
        let _ = nix::sys::prctl::set_dumpable(true);
        if let Err(e) = unshare(CloneFlags::CLONE_NEWUSER) {
            fail(Step::UserNamespace, e);
        }
        let mut byte = [0u8; 1];
        if nix::unistd::write(&ready, &[1]).is_err()
            || nix::unistd::read(&mapped, &mut byte) != Ok(1)
        {
            fail(Step::UserNamespace, Errno::EPERM);
        }
    }
    drop((ready, mapped));
    sys::reset_signals();

    let Some(argv) = to_cstrings(spec.command.iter().map(|a| a.as_bytes().to_vec())) else {
        fail(Step::Arguments, Errno::EINVAL)
    };
    let env = command_env(spec);
    let path = env
        .iter()
        .find(|(k, _)| k.as_bytes() == b"PATH")
        .map_or(DEFAULT_PATH.to_vec(), |(_, v)| v.as_bytes().to_vec());
    let Some(envp) = to_cstrings(env.iter().map(|(k, v)| {
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        kv
    })) else {
        fail(Step::Arguments, Errno::EINVAL)
    };
    let Ok(cwd) = CString::new(spec.cwd.as_os_str().as_bytes()) else {
        fail(Step::Chdir, Errno::EINVAL)
    };

    sys::close_fds_from_3_except(&[err.as_raw_fd()]);
    if let Err(e) = sys::drop_bounding_set(sys::last_capability()) {
        fail(Step::Capabilities, e);
    }
    if let Err(e) = sys::clear_ambient() {
        fail(Step::Capabilities, e);
    }
    if let (false, RunAs::User(user)) = (args.rootless, &spec.run_as) {
        let groups: Vec<Gid> = user.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        let gid = Gid::from_raw(user.gid);
        let uid = Uid::from_raw(user.uid);
        if let Err(e) = nix::unistd::setgroups(&groups)
            .and_then(|()| nix::unistd::setresgid(gid, gid, gid))
            .and_then(|()| nix::unistd::setresuid(uid, uid, uid))
        {
            fail(Step::Identity, e);
        }
    }
    if let Err(e) = sys::clear_capabilities() {
        fail(Step::Capabilities, e);
    }
    if let Err(e) = nix::sys::prctl::set_no_new_privs() {
        fail(Step::NoNewPrivs, e);
    }
    if let Err(e) = nix::unistd::chdir(cwd.as_c_str()) {
        fail(Step::Chdir, e);
    }
    let (step, errno) = exec_search(&argv, &envp, &path);
    fail(step, errno)
}

/// The command's environment: the spec's, with `HOME`, `USER` and `LOGNAME` of the user the
/// command runs as (sudo user) replacing httpjail's.
fn command_env(spec: &WireSpec) -> Vec<(OsString, OsString)> {
    let RunAs::User(user) = &spec.run_as else {
        return spec.env.clone();
    };
    let replaced = ["HOME", "USER", "LOGNAME"];
    let mut env: Vec<(OsString, OsString)> = spec
        .env
        .iter()
        .filter(|(k, _)| !replaced.iter().any(|r| k.as_bytes() == r.as_bytes()))
        .cloned()
        .collect();
    env.push(("HOME".into(), user.home.clone().into_os_string()));
    env.push(("USER".into(), user.name.clone().into()));
    env.push(("LOGNAME".into(), user.name.clone().into()));
    env
}

fn to_cstrings(items: impl Iterator<Item = Vec<u8>>) -> Option<Vec<CString>> {
    items.map(|b| CString::new(b).ok()).collect()
}

/// `execvp` with an explicit `PATH`: returns only on failure, with the step to report.
/// A name containing `/` is executed as is; otherwise each `PATH` entry is tried, skipping
/// entries where it is missing, and "not executable" wins over "not found" if any entry had
/// the file without permission. A file the kernel cannot execute (`ENOEXEC`, a script without
/// `#!`) is run by `/bin/sh`, as `execvp` and shells do.
fn exec_search(argv: &[CString], envp: &[CString], path: &[u8]) -> (Step, Errno) {
    let Some(program) = argv.first() else {
        return (Step::NotFound, Errno::ENOENT);
    };
    let name = program.as_bytes();
    if name.is_empty() {
        return (Step::NotFound, Errno::ENOENT);
    }
    if name.contains(&b'/') {
        return match exec_one(program, argv, envp) {
            Errno::ENOENT | Errno::ENOTDIR => (Step::NotFound, Errno::ENOENT),
            e => (Step::NotExecutable, e),
        };
    }
    let mut denied = None;
    for dir in path.split(|b| *b == b':') {
        let dir = if dir.is_empty() { &b"."[..] } else { dir };
        let mut candidate = dir.to_vec();
        candidate.push(b'/');
        candidate.extend_from_slice(name);
        let Ok(candidate) = CString::new(candidate) else {
            continue;
        };
        match exec_one(&candidate, argv, envp) {
            Errno::ENOENT | Errno::ENOTDIR | Errno::ENAMETOOLONG | Errno::ELOOP => {}
            Errno::EACCES => denied = Some(Errno::EACCES),
            e => return (Step::NotExecutable, e),
        }
    }
    match denied {
        Some(e) => (Step::NotExecutable, e),
        None => (Step::NotFound, Errno::ENOENT),
    }
}

fn exec_one(file: &CString, argv: &[CString], envp: &[CString]) -> Errno {
    let Err(e) = nix::unistd::execve(file, argv, envp);
    if e != Errno::ENOEXEC {
        return e;
    }
    let mut sh_argv = vec![CString::from(c"/bin/sh"), file.clone()];
    sh_argv.extend(argv.iter().skip(1).cloned());
    let Err(sh_error) = nix::unistd::execve(c"/bin/sh", &sh_argv, envp);
    match sh_error {
        Errno::ENOENT => Errno::ENOEXEC,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jail::linux::UserIdentity;

    #[test]
    fn sudo_user_gets_its_own_home_user_and_logname() {
        let spec = WireSpec {
            command: vec!["id".into()],
            env: vec![
                ("HOME".into(), "/root".into()),
                ("PATH".into(), "/bin".into()),
                ("USER".into(), "root".into()),
            ],
            cwd: "/".into(),
            run_as: RunAs::User(UserIdentity {
                name: "alice".into(),
                uid: 1000,
                gid: 1000,
                groups: vec![1000],
                home: "/home/alice".into(),
            }),
            stdio_mask: 0,
        };
        let env = command_env(&spec);
        let names: Vec<_> = env.iter().map(|(k, _)| k.as_os_str()).collect();
        assert_eq!(names, ["PATH", "HOME", "USER", "LOGNAME"]);
        assert!(env.contains(&("HOME".into(), "/home/alice".into())));
        assert!(env.contains(&("LOGNAME".into(), "alice".into())));
        let current = WireSpec {
            run_as: RunAs::Current,
            ..spec
        };
        assert_eq!(command_env(&current), current.env);
    }

    #[test]
    fn failure_reports_map_to_outcomes() {
        let spec = WireSpec {
            command: vec![],
            env: vec![],
            cwd: "/nowhere".into(),
            run_as: RunAs::Current,
            stdio_mask: 0,
        };
        assert_eq!(failure_outcome(1, 2, &spec), ExitOutcome::NotFound);
        assert_eq!(
            failure_outcome(2, 13, &spec),
            ExitOutcome::NotExecutable { errno: 13 }
        );
        let ExitOutcome::Failed(text) = failure_outcome(3, 2, &spec) else {
            panic!("chdir failure is a jail failure");
        };
        assert!(text.contains("/nowhere"), "{text}");
        assert!(matches!(
            failure_outcome(99, 1, &spec),
            ExitOutcome::Failed(_)
        ));
    }
}
