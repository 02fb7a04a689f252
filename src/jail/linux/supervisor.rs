//! The jail supervisor: a re-executed httpjail (`httpjail __httpjail-supervisor FD PPID`) that
//! builds the jail and stays its parent.
//!
//! Why a separate process: creating namespaces and forking are only sound in a
//! single-threaded process, and httpjail runs a multi-threaded async runtime. Re-executing
//! the same binary gives a fresh single-threaded process with no inherited state.
//!
//! In order (each step's failure is reported to httpjail as a [`jail::Error`](crate::jail::Error)
//! and nothing is left behind, since everything created lives in namespaces that die with us):
//! 1. parent-death signal `SIGKILL` (httpjail gone ⇒ we are gone ⇒ init is gone ⇒ the whole
//!    PID namespace is gone), close every inherited descriptor but the control socket, ignore
//!    terminal signals;
//! 2. read the spec; without root, enter the outer user namespace ([`super::userns`]);
//! 3. new network and mount namespaces; mounts private; `lo`, addresses and routes
//!    (rtnetlink); the listeners, bound inside; the nft table (`nft`); the jail's resolv.conf;
//!    as root, `/sys` read-only;
//! 4. send the listeners to httpjail (`READY`), close our copies, wait for `START`;
//! 5. new PID namespace; fork init ([`super::init`]); relay `SIGNAL`/`KILL`; when init has
//!    ended (so every process of the jail has), report the outcome (`EXIT`) and exit.
//!
//! The control socket closing at any point (httpjail exited or was killed) kills the jail.

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getgid, getuid, pipe2};

use super::apply::{self, Listeners, Tools};
use super::init::{self, InitArgs};
use super::protocol::{self, Encoder, ReadError, WireSpec, kind};
use super::{ExitOutcome, RunAs, mounts, plan, sys, userns};
use crate::jail::Error;

/// Entry point of the supervisor mode; `args` are the process arguments after the marker
/// (`FD PPID`). Returns the process exit code.
pub(crate) fn main(args: &[OsString]) -> i32 {
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let parse = |i: usize| {
        args.get(i)
            .and_then(|a| a.to_str())
            .and_then(|a| a.parse::<i32>().ok())
    };
    let (Some(fd), Some(parent)) = (parse(0), parse(1)) else {
        return 2;
    };
    // The parent may have died before the parent-death signal was armed.
    if nix::unistd::getppid().as_raw() != parent || fd < 3 {
        return 2;
    }
    sys::close_fds_from_3_except(&[fd]);
    // SAFETY: `fd` is the control socket our parent placed there for us, and it was just the
    // only descriptor above 2 left open; nothing else owns it.
    let control = unsafe { OwnedFd::from_raw_fd(fd) };
    if sys::set_cloexec(fd, true).is_err() {
        return 2;
    }
    sys::ignore_terminal_signals();
    let code = serve(control.as_fd());
    drop(control);
    code
}

fn serve(control: BorrowedFd<'_>) -> i32 {
    let spec = match receive_spec(control) {
        Ok(spec) => spec,
        Err(e) => {
            report_failure(
                control,
                &Error::Setup {
                    step: "receive the jail's specification".into(),
                    detail: e.to_string(),
                    hint: None,
                },
            );
            return 1;
        }
    };
    let rootless = !(nix::unistd::geteuid().is_root() && sys::has_cap_sys_admin());
    let (uid, gid) = (getuid().as_raw(), getgid().as_raw());
    let listeners = match prepare(&spec, rootless, uid, gid) {
        Ok(listeners) => listeners,
        Err(e) => {
            report_failure(control, &e);
            return 1;
        }
    };
    let mut ready = Encoder::default();
    ready
        .u32(u32::from(listeners.ports.http))
        .u32(u32::from(listeners.ports.https))
        .u32(u32::from(listeners.ports.dns));
    for n in listeners.counts() {
        ready.u8(n);
    }
    if protocol::write_frame(control, kind::READY, &ready.0, &listeners.raw_fds()).is_err() {
        return 1;
    }
    drop(listeners);

    loop {
        match protocol::read_frame(control) {
            Ok(frame) if frame.kind == kind::START => break,
            Ok(frame) if frame.kind == kind::SIGNAL => {}
            _ => return 0,
        }
    }
    let outcome = run(control, spec, rootless, uid, gid);
    let _ = protocol::write_frame(
        control,
        kind::EXIT,
        &protocol::encode_outcome(&outcome),
        &[],
    );
    0
}

fn receive_spec(control: BorrowedFd<'_>) -> Result<WireSpec, ReadError> {
    let frame = protocol::read_frame(control)?;
    if frame.kind != kind::SPEC {
        return Err(ReadError::Malformed("expected the spec"));
    }
    let spec = WireSpec::decode(&frame.payload)?;
    if frame.fds.len() != spec.stdio_mask.count_ones() as usize {
        return Err(ReadError::Malformed("standard stream descriptors"));
    }
    let mut given = frame.fds.into_iter();
    for target in 0..3 {
        if spec.stdio_mask & (1 << target) != 0
            && let Some(fd) = given.next()
        {
            // dup2 onto 0/1/2: the copies are inheritable (init and the command get them),
            // the originals are close-on-exec and dropped right after.
            // SAFETY: dup2 onto a standard descriptor number we own; the old one is replaced.
            if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
                return Err(ReadError::Os(Errno::last()));
            }
        }
    }
    Ok(spec)
}

/// Step 2 and 3: everything up to the listeners being ready.
fn prepare(spec: &WireSpec, rootless: bool, uid: u32, gid: u32) -> Result<Listeners, Error> {
    let tools = Tools::find()?;
    if rootless && matches!(spec.run_as, RunAs::User(_)) {
        return Err(Error::Setup {
            step: "run the command as another user".into(),
            detail: "that needs root".into(),
            hint: None,
        });
    }
    if rootless {
        userns::enter_outer(uid, gid)?;
    }
    unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS).map_err(|e| {
        if rootless {
            userns::denied(e)
        } else {
            Error::Setup {
                step: "create the jail's network and mount namespaces".into(),
                detail: e.desc().into(),
                hint: None,
            }
        }
    })?;
    mounts::make_private()?;
    let ipv6 = apply::ipv6_available();
    apply::configure_links(ipv6)?;
    apply::allow_low_ports()?;
    let listeners = apply::bind_listeners(ipv6)?;
    apply::install_ruleset(&tools, listeners.ports, rootless)?;
    mounts::install_resolv_conf(&plan::resolv_conf())?;
    if !rootless {
        mounts::readonly_sys()?;
    }
    // From here on nothing needs to read our /proc files, and no process of the jail may read
    // our memory (in the rootless case they share our uid on the host).
    let _ = nix::sys::prctl::set_dumpable(false);
    Ok(listeners)
}

fn report_failure(control: BorrowedFd<'_>, error: &Error) {
    let _ = protocol::write_frame(control, kind::FAILED, &encode_error(error), &[]);
}

/// Step 5: the PID namespace, init, and the relay loop. Returns once every process of the
/// jail has ended.
fn run(control: BorrowedFd<'_>, spec: WireSpec, rootless: bool, uid: u32, gid: u32) -> ExitOutcome {
    if let Err(e) = unshare(CloneFlags::CLONE_NEWPID) {
        return ExitOutcome::Failed(format!("create the jail's PID namespace: {}", e.desc()));
    }
    let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
    let (Ok((status_r, status_w)), Ok((signals_r, signals_w))) = (pipe2(cloexec), pipe2(cloexec))
    else {
        return ExitOutcome::Failed("create the supervisor's pipes".into());
    };
    // SAFETY: the supervisor is single-threaded; the child runs init, which forks again and
    // allocates, both sound in a single-threaded process.
    let init_pid = match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            // The control socket stays with the supervisor: init must not keep it open.
            // SAFETY: closing our copy of a descriptor we do not use in this process.
            unsafe { libc::close(control.as_raw_fd()) };
            drop((status_r, signals_w));
            let code = init::run(InitArgs {
                spec,
                rootless,
                uid,
                gid,
                status: status_w,
                signals: signals_r,
            });
            sys::exit_now(code)
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => return ExitOutcome::Failed(format!("fork the jail's init: {}", e.desc())),
    };
    drop((status_w, signals_r));
    relay(control, init_pid, &status_r, &signals_w)
}

fn relay(
    control: BorrowedFd<'_>,
    init_pid: Pid,
    status: &OwnedFd,
    signals: &OwnedFd,
) -> ExitOutcome {
    let mut killed = false;
    let mut control_open = true;
    loop {
        let mut fds = vec![PollFd::new(status.as_fd(), PollFlags::POLLIN)];
        if control_open {
            fds.push(PollFd::new(control, PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => break,
        }
        let status_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
        let control_ready = fds
            .get(1)
            .and_then(PollFd::revents)
            .is_some_and(|r| !r.is_empty());
        drop(fds);
        if status_ready {
            break;
        }
        if control_ready {
            match protocol::read_frame(control) {
                Ok(frame) if frame.kind == kind::SIGNAL => {
                    let _ = nix::unistd::write(signals, &frame.payload);
                }
                Ok(frame) if frame.kind != kind::KILL => {}
                _ => {
                    // KILL, or httpjail is gone: end the jail. Init's death makes the kernel
                    // kill every other process of the PID namespace.
                    let _ = kill(init_pid, Signal::SIGKILL);
                    killed = true;
                    control_open = false;
                }
            }
        }
    }
    let report = read_to_end(status);
    // Returns only when init is gone, and init is gone only when every process of its PID
    // namespace is: after this, nothing of the jail runs any more.
    let status = loop {
        match waitpid(init_pid, None) {
            Err(Errno::EINTR) => {}
            other => break other,
        }
    };
    if let Ok(outcome) = protocol::decode_outcome(&report) {
        return outcome;
    }
    match status {
        _ if killed => ExitOutcome::Signaled(Signal::SIGKILL as i32),
        Ok(WaitStatus::Signaled(_, sig, _)) => {
            ExitOutcome::Failed(format!("the jail's init was killed by {sig}"))
        }
        other => ExitOutcome::Failed(format!(
            "the jail's init ended without a report ({other:?})"
        )),
    }
}

/// Everything init writes before it exits (one short message), up to end of file.
fn read_to_end(fd: &OwnedFd) -> Vec<u8> {
    let mut report = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => return report,
            Ok(n) => report.extend_from_slice(&buf[..n]),
            Err(Errno::EINTR) => {}
            Err(_) => return report,
        }
    }
}

/// `FAILED` payload: which [`Error`] and its fields.
pub(crate) fn encode_error(error: &Error) -> Vec<u8> {
    let mut e = Encoder::default();
    match error {
        Error::MissingTool { tool, package } => {
            e.u8(1).str(tool).str(package);
        }
        Error::UserNamespaceDenied { reason } => {
            e.u8(2).str(reason);
        }
        Error::Setup { step, detail, hint } => {
            e.u8(3).str(step).str(detail);
            match hint {
                Some(h) => e.u8(1).str(h),
                None => e.u8(0),
            };
        }
        Error::Io { what, source } => {
            e.u8(3).str(what).str(&source.to_string()).u8(0);
        }
    }
    e.0
}

pub(crate) fn decode_error(payload: &[u8]) -> Result<Error, ReadError> {
    let mut d = protocol::Decoder::new(payload);
    let error = match d.u8()? {
        1 => Error::MissingTool {
            tool: d.string()?,
            package: d.string()?,
        },
        2 => Error::UserNamespaceDenied {
            reason: d.string()?,
        },
        3 => {
            let step = d.string()?;
            let detail = d.string()?;
            let hint = match d.u8()? {
                0 => None,
                _ => Some(d.string()?),
            };
            Error::Setup { step, detail, hint }
        }
        _ => return Err(ReadError::Malformed("error kind")),
    };
    d.finish()?;
    Ok(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_keep_their_step_and_cause_once() {
        let e = Error::Io {
            what: "bind the jail's HTTP listener".into(),
            source: std::io::Error::from_raw_os_error(libc::EADDRINUSE),
        };
        let back = decode_error(&encode_error(&e)).unwrap().to_string();
        assert!(
            back.starts_with("strong jail: could not bind the jail's HTTP listener: "),
            "{back}"
        );
        assert_eq!(back.matches("strong jail").count(), 1, "{back}");
    }

    #[test]
    fn errors_round_trip_with_their_hints() {
        let cases = [
            Error::MissingTool {
                tool: "nft".into(),
                package: "nftables".into(),
            },
            Error::UserNamespaceDenied {
                reason: "AppArmor".into(),
            },
            Error::Setup {
                step: "load".into(),
                detail: "no".into(),
                hint: Some("modprobe".into()),
            },
            Error::Setup {
                step: "load".into(),
                detail: "no".into(),
                hint: None,
            },
        ];
        for e in cases {
            let back = decode_error(&encode_error(&e)).unwrap();
            assert_eq!(back.to_string(), e.to_string());
            assert_eq!(back.hint(), e.hint());
        }
    }
}
