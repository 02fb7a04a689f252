//! The rootless jail's two user namespaces, and why the kernel may refuse them.
//!
//! Without root, the supervisor first enters an *outer* user namespace in which the user is
//! root (`0 <uid> 1`): that gives it the capabilities to create and configure the jail's network
//! and mount namespaces, which the outer namespace then owns. The command runs in a second,
//! *inner* user namespace nested in the first, which maps the user's own uid and gid back
//! (`<uid> 0 1`): inside, the command is the user again, files it creates belong to the user,
//! and it holds no capability over the namespaces the outer one owns, so it cannot change the
//! jail's routes or nft table (a new user namespace it makes itself only owns what it creates).
//!
//! An unprivileged process may write its own maps only for its own ids, after denying
//! `setgroups`; the inner maps are written by the jail's init, which is root in the outer
//! namespace.

use std::path::Path;

use nix::errno::Errno;
use nix::sched::{CloneFlags, unshare};

use crate::jail::Error;

/// Kernel settings that decide whether unprivileged users may create user namespaces.
pub(crate) const UNPRIVILEGED_USERNS_CLONE: &str = "/proc/sys/kernel/unprivileged_userns_clone";
pub(crate) const APPARMOR_RESTRICT: &str = "/proc/sys/kernel/apparmor_restrict_unprivileged_userns";
pub(crate) const MAX_USER_NAMESPACES: &str = "/proc/sys/user/max_user_namespaces";

/// Enters the outer user namespace as its root, mapped to the caller's `uid`/`gid`.
pub(crate) fn enter_outer(uid: u32, gid: u32) -> Result<(), Error> {
    unshare(CloneFlags::CLONE_NEWUSER).map_err(denied)?;
    // `deny` first: the kernel refuses an unprivileged gid map while setgroups(2) is allowed
    // (a process could otherwise drop a group used to deny it access). Kernels before 3.19 have
    // no such file and no such rule.
    match std::fs::write("/proc/self/setgroups", "deny") {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(denied_io(&e)),
        _ => {}
    }
    std::fs::write("/proc/self/uid_map", format!("0 {uid} 1")).map_err(|e| denied_io(&e))?;
    std::fs::write("/proc/self/gid_map", format!("0 {gid} 1")).map_err(|e| denied_io(&e))?;
    Ok(())
}

/// Writes the inner namespace's maps for process `pid` (in the caller's PID namespace): the
/// user's ids inside map to root of the outer namespace, which is the user on the host.
pub(crate) fn map_inner(pid: i32, uid: u32, gid: u32) -> std::io::Result<()> {
    let proc = Path::new("/proc").join(pid.to_string());
    std::fs::write(proc.join("uid_map"), format!("{uid} 0 1"))?;
    std::fs::write(proc.join("gid_map"), format!("{gid} 0 1"))
}

/// The error for a refused namespace operation during rootless setup, with the reason read
/// from the kernel's settings.
pub(crate) fn denied(errno: Errno) -> Error {
    Error::UserNamespaceDenied {
        reason: diagnose(errno, |p| std::fs::read_to_string(p).ok()),
    }
}

fn denied_io(e: &std::io::Error) -> Error {
    denied(e.raw_os_error().map_or(Errno::EPERM, Errno::from_raw))
}

/// Explains why the kernel refused (`errno`), from its settings (`read` returns a setting's
/// file contents). Pure, so that every case can be tested without changing the machine.
pub(crate) fn diagnose(errno: Errno, read: impl Fn(&str) -> Option<String>) -> String {
    let setting = |path: &str| read(path).map(|v| v.trim().to_owned());
    if setting(UNPRIVILEGED_USERNS_CLONE).as_deref() == Some("0") {
        return "user namespaces are disabled for unprivileged users \
                (kernel.unprivileged_userns_clone = 0)"
            .to_owned();
    }
    if setting(MAX_USER_NAMESPACES).as_deref() == Some("0") {
        return "user namespaces are disabled (user.max_user_namespaces = 0)".to_owned();
    }
    if setting(APPARMOR_RESTRICT).as_deref() == Some("1")
        && matches!(errno, Errno::EPERM | Errno::EACCES)
    {
        return "AppArmor restricts unprivileged user namespaces \
                (kernel.apparmor_restrict_unprivileged_userns = 1)"
            .to_owned();
    }
    match errno {
        Errno::ENOSPC => {
            "the limit on user namespaces is reached (user.max_user_namespaces)".into()
        }
        Errno::EINVAL | Errno::ENOSYS => "this kernel has no user namespace support".into(),
        Errno::EPERM => "the kernel refused to create a user namespace (Operation not permitted); \
                         a seccomp filter or a container runtime may forbid them"
            .into(),
        other => format!(
            "the kernel refused to create a user namespace ({})",
            other.desc()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(settings: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let owned: Vec<(String, String)> = settings
            .iter()
            .map(|(k, v)| ((*k).to_owned(), format!("{v}\n")))
            .collect();
        move |p| owned.iter().find(|(k, _)| k == p).map(|(_, v)| v.clone())
    }

    #[test]
    fn each_kernel_setting_is_named() {
        let cases = [
            (
                with(&[(UNPRIVILEGED_USERNS_CLONE, "0")]),
                Errno::EPERM,
                "kernel.unprivileged_userns_clone = 0",
            ),
            (
                with(&[(MAX_USER_NAMESPACES, "0")]),
                Errno::ENOSPC,
                "user.max_user_namespaces = 0",
            ),
            (
                with(&[(APPARMOR_RESTRICT, "1")]),
                Errno::EPERM,
                "kernel.apparmor_restrict_unprivileged_userns = 1",
            ),
            (
                with(&[(MAX_USER_NAMESPACES, "100")]),
                Errno::ENOSPC,
                "limit on user namespaces is reached",
            ),
            (
                with(&[]),
                Errno::EPERM,
                "seccomp filter or a container runtime",
            ),
            (with(&[]), Errno::EINVAL, "no user namespace support"),
        ];
        for (settings, errno, expected) in cases {
            let text = diagnose(errno, settings);
            assert!(text.contains(expected), "{errno}: {text}");
        }
    }

    #[test]
    fn enabled_settings_do_not_mislead() {
        let settings = with(&[
            (UNPRIVILEGED_USERNS_CLONE, "1"),
            (APPARMOR_RESTRICT, "0"),
            (MAX_USER_NAMESPACES, "1000"),
        ]);
        let text = diagnose(Errno::EPERM, settings);
        assert!(!text.contains("= 0") && !text.contains("= 1"), "{text}");
    }

    #[test]
    fn the_error_tells_the_user_what_to_do() {
        let err = Error::UserNamespaceDenied { reason: "x".into() };
        let hint = err.hint().unwrap();
        assert!(hint.contains("sudo") && hint.contains("--weak"), "{hint}");
    }
}
