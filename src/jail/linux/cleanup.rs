//! `httpjail --cleanup`: ends strong jails whose httpjail is gone.
//!
//! The strong jail creates nothing on the host that outlives its processes: its namespaces are
//! unnamed (no `/var/run/netns` entry, no bind mount on the host), its resolv.conf lives on a
//! tmpfs inside the jail, and nothing is added to the host's network namespace. So the only
//! thing a killed httpjail can leave is a running jail, and even that only if its supervisor
//! missed the parent-death signal (armed right after it starts, and checked for the race).
//!
//! A supervisor records its httpjail's PID in its own arguments; one whose parent is no longer
//! that process is stale. Killing it kills its init (parent-death signal) and so every process
//! of the jail's PID namespace; the namespaces go with the last process. Live jails are left
//! alone.

use std::path::Path;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::SUPERVISOR_ARG;
use crate::jail::Error;

/// What [`cleanup`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CleanupReport {
    /// PIDs of the stale supervisors that were killed.
    pub killed: Vec<u32>,
    /// Stale supervisors that could not be killed (another user's, without root), with why.
    pub failed: Vec<(u32, String)>,
}

/// Finds stale jail supervisors in `/proc` and kills them.
pub fn cleanup() -> Result<CleanupReport, Error> {
    cleanup_in(Path::new("/proc"))
}

fn cleanup_in(proc: &Path) -> Result<CleanupReport, Error> {
    let entries = std::fs::read_dir(proc).map_err(|e| Error::Io {
        what: format!("list {}", proc.display()),
        source: e,
    })?;
    let mut report = CleanupReport::default();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes may end while we look: unreadable entries are skipped.
        let (Ok(cmdline), Ok(stat), Ok(status)) = (
            std::fs::read(entry.path().join("cmdline")),
            std::fs::read_to_string(entry.path().join("stat")),
            std::fs::read_to_string(entry.path().join("status")),
        ) else {
            continue;
        };
        let Some(ppid) = parent_pid(&stat) else {
            continue;
        };
        // A jail's init is a fork of its supervisor, with the same arguments and the
        // supervisor as parent: it lives in the jail's PID namespace, one level down.
        if !in_our_pid_namespace(&status) || !is_stale_supervisor(&cmdline, ppid) {
            continue;
        }
        let Ok(raw) = i32::try_from(pid) else {
            continue;
        };
        match kill(Pid::from_raw(raw), Signal::SIGKILL) {
            Ok(()) => report.killed.push(pid),
            Err(e) => report.failed.push((pid, e.desc().to_owned())),
        }
    }
    Ok(report)
}

/// Whether a process with this `cmdline` (NUL-separated arguments) and parent is a jail
/// supervisor whose httpjail is gone: its recorded parent (third argument after the program)
/// is no longer its parent.
pub(crate) fn is_stale_supervisor(cmdline: &[u8], ppid: u32) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    if args.get(1) != Some(&SUPERVISOR_ARG.as_bytes()) {
        return false;
    }
    let recorded = args
        .get(3)
        .and_then(|a| std::str::from_utf8(a).ok())
        .and_then(|a| a.parse::<u32>().ok());
    recorded != Some(ppid)
}

/// Whether a `/proc/PID/status` text belongs to a process of the PID namespace `/proc` shows
/// (its `NSpid` line lists one PID per namespace level, starting from that one). Kernels
/// before 4.1 have no `NSpid` line and no way to tell; such processes are treated as ours.
pub(crate) fn in_our_pid_namespace(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .is_none_or(|pids| pids.split_whitespace().count() == 1)
}

/// The parent PID from a `/proc/PID/stat` line. The command name (field 2) may hold spaces
/// and parentheses, so fields are counted from the last `)`.
pub(crate) fn parent_pid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmdline(args: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for a in args {
            out.extend_from_slice(a.as_bytes());
            out.push(0);
        }
        out
    }

    #[test]
    fn a_supervisor_is_stale_once_its_httpjail_is_not_its_parent() {
        let sup = cmdline(&["/usr/bin/httpjail", SUPERVISOR_ARG, "3", "4242"]);
        assert!(
            !is_stale_supervisor(&sup, 4242),
            "live: parent is the recorded httpjail"
        );
        assert!(is_stale_supervisor(&sup, 1), "reparented to init");
        assert!(is_stale_supervisor(&sup, 777), "reparented to a subreaper");
        let garbled = cmdline(&["/usr/bin/httpjail", SUPERVISOR_ARG, "3"]);
        assert!(is_stale_supervisor(&garbled, 1));
    }

    #[test]
    fn other_processes_are_never_supervisors() {
        for args in [
            &["/usr/bin/httpjail", "--js", "true", "--", "sleep", "1"][..],
            &["sh", "-c", SUPERVISOR_ARG][..],
            &["/usr/bin/httpjail"][..],
        ] {
            assert!(!is_stale_supervisor(&cmdline(args), 1), "{args:?}");
        }
        assert!(!is_stale_supervisor(b"", 1));
    }

    #[test]
    fn a_jails_init_is_not_in_our_pid_namespace() {
        assert!(in_our_pid_namespace("Name:\thttpjail\nNSpid:\t4321\n"));
        assert!(!in_our_pid_namespace("Name:\thttpjail\nNSpid:\t4322\t1\n"));
        assert!(in_our_pid_namespace("Name:\told kernel\n"));
    }

    #[test]
    fn parent_pid_survives_odd_command_names() {
        assert_eq!(parent_pid("123 (sleep) S 45 123 123 0 -1"), Some(45));
        assert_eq!(parent_pid("123 (a) b) (c) R 46 1 1"), Some(46));
        assert_eq!(parent_pid("garbage"), None);
    }

    #[test]
    fn cleanup_reads_a_proc_like_tree_and_spares_live_jails() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("100");
        std::fs::create_dir(&live).unwrap();
        std::fs::write(
            live.join("cmdline"),
            cmdline(&["httpjail", SUPERVISOR_ARG, "3", "99"]),
        )
        .unwrap();
        std::fs::write(live.join("stat"), "100 (httpjail) S 99 1 1").unwrap();
        std::fs::write(live.join("status"), "NSpid:\t100\n").unwrap();
        let init = dir.path().join("101");
        std::fs::create_dir(&init).unwrap();
        std::fs::write(
            init.join("cmdline"),
            cmdline(&["httpjail", SUPERVISOR_ARG, "3", "99"]),
        )
        .unwrap();
        std::fs::write(init.join("stat"), "101 (httpjail) S 100 1 1").unwrap();
        std::fs::write(init.join("status"), "NSpid:\t101\t1\n").unwrap();
        std::fs::create_dir(dir.path().join("self")).unwrap();
        let report = cleanup_in(dir.path()).unwrap();
        assert_eq!(report, CleanupReport::default());
    }
}
