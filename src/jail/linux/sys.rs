//! Thin wrappers over the few system calls `nix` does not cover: capability sets, closing file
//! descriptor ranges, signal dispositions. Every `unsafe` block of the jail outside `fork` lives
//! here, each with the reason it is sound.

use std::io;
use std::os::fd::RawFd;

use nix::errno::Errno;

/// `CAP_SYS_ADMIN` (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit capability sets, two 32-bit words each.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Highest capability number the running kernel knows (`/proc/sys/kernel/cap_last_cap`), or 63
/// when that cannot be read, in which case dropping unknown numbers fails harmlessly.
pub(crate) fn last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

/// Removes every capability from the bounding set, so that nothing this process executes can
/// ever gain one again (not through a set-uid-root binary, not through file capabilities).
/// Needs `CAP_SETPCAP` in the current user namespace, which the jail's processes have until
/// [`clear_capabilities`].
pub(crate) fn drop_bounding_set(last: u32) -> Result<(), Errno> {
    for cap in 0..=last {
        // SAFETY: prctl(PR_CAPBSET_DROP, cap) takes plain integers and touches no memory.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
        if rc != 0 {
            let errno = Errno::last();
            // EINVAL: a capability number this kernel does not know (only when `last` is a guess).
            if errno != Errno::EINVAL {
                return Err(errno);
            }
        }
    }
    Ok(())
}

/// Clears the ambient set (kernels before 4.3 have none, which is just as good).
pub(crate) fn clear_ambient() -> Result<(), Errno> {
    // SAFETY: prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL) takes integers only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc != 0 && Errno::last() != Errno::EINVAL {
        return Err(Errno::last());
    }
    Ok(())
}

/// Empties the effective, permitted and inheritable sets of the calling thread. After this the
/// process can no longer change its identity or namespaces; it is the last step before `exec`.
pub(crate) fn clear_capabilities() -> Result<(), Errno> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads one header and, for version 3, exactly two data structs, both valid
    // for the duration of the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Closes every file descriptor from 3 up, except those in `keep` (which must be sorted).
/// `close_range(2)` (Linux 5.9); older kernels fall back to closing one by one.
pub(crate) fn close_fds_from_3_except(keep: &[RawFd]) {
    let mut first: RawFd = 3;
    for &fd in keep.iter().filter(|&&fd| fd >= 3) {
        if fd > first {
            close_range(first, fd - 1);
        }
        first = fd + 1;
    }
    close_range(first, RawFd::MAX);
}

fn close_range(first: RawFd, last: RawFd) {
    let (Ok(lo), Ok(hi)) = (libc::c_uint::try_from(first), libc::c_uint::try_from(last)) else {
        return;
    };
    // SAFETY: close_range only closes descriptors; the callers own every descriptor in the
    // range (they run between fork and exec, or at the start of the supervisor, before any
    // Rust object holding a descriptor exists).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0) };
    if rc == 0 {
        return;
    }
    let mut limit = libc::rlimit {
        rlim_cur: 1024,
        rlim_max: 1024,
    };
    // SAFETY: getrlimit writes one rlimit struct we own.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) };
    let max = limit.rlim_cur.min(1 << 20);
    let hi = RawFd::try_from(max).unwrap_or(RawFd::MAX).min(last);
    for fd in first..=hi {
        // SAFETY: as above.
        unsafe { libc::close(fd) };
    }
}

/// Restores the default action of every signal and unblocks them all, so that the command
/// starts as if from a fresh shell whatever httpjail, the supervisor or init had set up
/// (ignored SIGINT, ignored SIGPIPE, a blocked SIGCHLD).
pub(crate) fn reset_signals() {
    let max = libc::SIGRTMAX();
    for sig in 1..=max {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: installing SIG_DFL involves no handler code; invalid numbers fail with EINVAL.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
}

/// Ignores the signals a terminal sends to its whole foreground process group (Ctrl-C,
/// Ctrl-\, hang-up). The supervisor shares that group with httpjail and the command; whether
/// the command gets a signal is decided by the terminal (it is in the group too) and by
/// httpjail, never by the supervisor dying of it and taking the jail along.
pub(crate) fn ignore_terminal_signals() {
    for sig in [libc::SIGINT, libc::SIGQUIT, libc::SIGHUP, libc::SIGPIPE] {
        // SAFETY: installing SIG_IGN involves no handler code.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
}

/// Marks `fd` close-on-exec (`on`) or inheritable.
pub(crate) fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    let flags = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD on a descriptor number; an invalid one fails with EBADF.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFD, flags) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Ends the calling process at once, without running destructors or `atexit` handlers: for
/// forked children, which must not flush or free anything they share with their parent.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Whether the calling process has `CAP_SYS_ADMIN` in its user namespace (from
/// `/proc/self/status`), i.e. whether it can create namespaces without a user namespace.
pub(crate) fn has_cap_sys_admin() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}
