//! The jail's private mount namespace: the generated resolv.conf, a `/proc` of the jail's own
//! PID namespace, and (as root) read-only kernel interfaces.
//!
//! Everything here happens inside the new mount namespace, after [`make_private`], so that no
//! mount propagates back to the host. No file is written on the host: the resolv.conf lives on
//! a small tmpfs that exists only inside the jail.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::jail::Error;

/// Where the jail's resolv.conf is shown.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// A directory that exists on every Linux system and that nothing needs while the resolv.conf
/// tmpfs is briefly mounted on it (see [`install_resolv_conf`]).
const SCRATCH: &str = "/proc";

/// Kernel interfaces under `/proc` that a process running as root could use to change the
/// host (sysctls such as `kernel.core_pattern`, the SysRq trigger, IRQ routing, bus devices):
/// read-only in a jail created as root. The same set container runtimes protect.
const PROC_READONLY: &[&str] = &[
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/proc/irq",
    "/proc/bus",
    "/proc/fs",
];

fn setup(step: &str, errno: Errno) -> Error {
    Error::Setup {
        step: step.to_owned(),
        detail: errno.desc().to_owned(),
        hint: None,
    }
}

/// Stops mount events from propagating out of (and into) the jail's mount namespace. Must be
/// the first thing done in it: on systemd hosts `/` is a shared mount, and a bind mount made
/// before this would appear on the host.
pub(crate) fn make_private() -> Result<(), Error> {
    mount::<str, str, str, str>(None, "/", None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None)
        .map_err(|e| setup("make the jail's mounts private", e))
}

/// The file to cover with the jail's resolv.conf: `/etc/resolv.conf` with symlinks resolved
/// (e.g. systemd-resolved's `../run/systemd/resolve/stub-resolv.conf`), or `None` when it is
/// missing, dangling or not a regular file. Resolvers then fall back to `127.0.0.1:53`, which
/// the jail's ruleset sends to httpjail's resolver as well, so no file is needed.
pub(crate) fn resolv_conf_target(path: &Path) -> Option<PathBuf> {
    let target = std::fs::canonicalize(path).ok()?;
    target.metadata().ok()?.is_file().then_some(target)
}

/// Shows `contents` at `/etc/resolv.conf` inside the jail (read-only), without touching the
/// host's file. Returns the path that was covered, if any.
///
/// A bind mount needs a source file, and the source must not be on the host's filesystems
/// (it would be left behind by a SIGKILL). So: mount a tiny tmpfs on [`SCRATCH`], write the
/// file there, bind it over the target, and detach the tmpfs again; the bind mount keeps the
/// tmpfs alive for exactly as long as the jail's mount namespace exists.
pub(crate) fn install_resolv_conf(contents: &str) -> Result<Option<PathBuf>, Error> {
    let Some(target) = resolv_conf_target(Path::new(RESOLV_CONF)) else {
        return Ok(None);
    };
    let step = "show the jail's resolv.conf";
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("tmpfs"),
        SCRATCH,
        Some("tmpfs"),
        flags,
        Some("mode=0755,size=64k"),
    )
    .map_err(|e| setup(step, e))?;
    let result = (|| {
        let source = Path::new(SCRATCH).join("resolv.conf");
        std::fs::write(&source, contents).map_err(|e| Error::Io {
            what: format!("write the jail's resolv.conf on its tmpfs ({step})"),
            source: e,
        })?;
        mount::<_, _, str, str>(Some(&source), &target, None, MsFlags::MS_BIND, None)
            .map_err(|e| setup(step, e))?;
        mount::<str, _, str, str>(
            None,
            &target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | flags,
            None,
        )
        .map_err(|e| setup(step, e))
    })();
    let detached = umount2(SCRATCH, MntFlags::MNT_DETACH).map_err(|e| setup(step, e));
    result?;
    detached?;
    Ok(Some(target))
}

/// Mounts a `/proc` of the calling process's PID namespace over the host's, so that the command
/// sees only the jail's processes. Called by the jail's init (PID 1 of the new namespace).
/// With `harden`, also makes [`PROC_READONLY`] read-only.
pub(crate) fn mount_proc(harden: bool) -> Result<(), Error> {
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| setup("mount the jail's /proc", e))?;
    if harden {
        for path in PROC_READONLY {
            if Path::new(path).exists() {
                bind_readonly(path).map_err(|e| setup(&format!("make {path} read-only"), e))?;
            }
        }
    }
    Ok(())
}

fn bind_readonly(path: &str) -> Result<(), Errno> {
    mount::<str, str, str, str>(
        Some(path),
        path,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    mount::<str, str, str, str>(
        None,
        path,
        None,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None,
    )
}

/// Makes `/sys` and every mount below it (cgroup, debugfs, securityfs, ...) read-only in the
/// jail, so that a command running as root without capabilities cannot write host-wide
/// settings such as `/sys/kernel/uevent_helper` (which would run a program outside the jail).
/// Only the jail's copies of these mounts change.
pub(crate) fn readonly_sys() -> Result<(), Error> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| Error::Io {
        what: "read /proc/self/mountinfo".to_owned(),
        source: e,
    })?;
    for (mount_point, flags) in mounts_under(&mountinfo, "/sys") {
        mount::<str, str, str, str>(
            None,
            mount_point.as_str(),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | flags,
            None,
        )
        .map_err(|e| setup(&format!("make {mount_point} read-only"), e))?;
    }
    Ok(())
}

/// Mount points equal to or below `top` in a mountinfo text, with the per-mount flags a bind
/// remount must repeat so as not to change them.
pub(crate) fn mounts_under(mountinfo: &str, top: &str) -> Vec<(String, MsFlags)> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(point), Some(options)) = (fields.get(4), fields.get(5)) else {
            continue;
        };
        let point = unescape_mountinfo(point);
        let below = point == top || point.starts_with(&format!("{top}/"));
        if !below {
            continue;
        }
        let mut flags = MsFlags::empty();
        for opt in options.split(',') {
            flags |= match opt {
                "nosuid" => MsFlags::MS_NOSUID,
                "nodev" => MsFlags::MS_NODEV,
                "noexec" => MsFlags::MS_NOEXEC,
                "noatime" => MsFlags::MS_NOATIME,
                "nodiratime" => MsFlags::MS_NODIRATIME,
                "relatime" => MsFlags::MS_RELATIME,
                _ => MsFlags::empty(),
            };
        }
        out.push((point, flags));
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(oct) = bytes.get(i + 1..i + 4)
            && let Ok(v) = u8::from_str_radix(&String::from_utf8_lossy(oct), 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_target_follows_symlinks_and_skips_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("stub-resolv.conf");
        std::fs::write(&real, "nameserver 127.0.0.53\n").unwrap();
        let link = dir.path().join("resolv.conf");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert_eq!(
            resolv_conf_target(&link),
            Some(std::fs::canonicalize(&real).unwrap())
        );
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert_eq!(resolv_conf_target(&dangling), None);
        assert_eq!(resolv_conf_target(&dir.path().join("missing")), None);
        assert_eq!(
            resolv_conf_target(dir.path()),
            None,
            "a directory is not covered"
        );
    }

    #[test]
    fn mounts_under_sys_with_their_flags() {
        let info = "\
22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
23 22 0:6 / /sys/kernel/security rw,nosuid,nodev,noexec,relatime shared:8 - securityfs securityfs rw
30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,noatime shared:9 - cgroup2 cgroup2 rw
31 1 0:27 / /sysroot rw,relatime - ext4 /dev/vda rw
32 1 0:28 / /mnt/with\\040space rw - tmpfs tmpfs rw
";
        let found = mounts_under(info, "/sys");
        let points: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(points, ["/sys", "/sys/kernel/security", "/sys/fs/cgroup"]);
        assert!(
            found[0]
                .1
                .contains(MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_RELATIME)
        );
        assert!(found[2].1.contains(MsFlags::MS_NOATIME));
        assert_eq!(
            mounts_under(info, "/mnt/with space").len(),
            1,
            "octal escapes decoded"
        );
    }
}
