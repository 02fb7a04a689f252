//! What the command can do to the jail, written as the attacker: capabilities, namespace
//! escapes, kernel interfaces, inherited descriptors, httpjail's processes, identity.

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

use httpjail::config::SudoUser;
use httpjail::jail::linux::RunAs;

use crate::support::{self, Run, Served};

/// `status` lines about privileges, as `key=value` from `/proc/self/status`.
const PRIVILEGES: &str = "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status | tr -d ' \\t' | tr ':' '='";

fn assert_no_privileges(done: &support::Finished) {
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(done.value(cap), "0000000000000000", "{cap}: {done:#?}");
    }
    assert_eq!(done.value("NoNewPrivs"), "1");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_root_command_has_no_capability_and_no_new_privs() {
    if !support::prerequisites() {
        return;
    }
    let done = support::run(Run::sh(&format!("id -u; {PRIVILEGES}"))).await;
    done.success();
    assert!(done.stdout.starts_with("0\n"), "runs as root: {done:#?}");
    assert_no_privileges(&done);
}

#[tokio::test(flavor = "multi_thread")]
async fn escape_attempts_fail_and_gain_nothing() {
    if !support::prerequisites() {
        return;
    }
    let core_pattern = std::fs::read("/proc/sys/kernel/core_pattern").unwrap();
    let script = r#"
t() { label=$1; shift; if "$@" >/dev/null 2>&1; then echo "$label=ok"; else echo "$label=denied"; fi; }
t nsenter-net nsenter --net=/proc/1/ns/net true
t nsenter-all nsenter -t 1 -a true
t unshare-net unshare -n true
t umount-resolv umount /etc/resolv.conf
t umount-proc umount -l /proc
t mount-proc mount -t proc proc /mnt
t ip-link ip link add x type veth peer name y
t ip-addr ip address add 10.9.9.9/32 dev lo
t ip-route ip route del default
t nft-flush nft flush ruleset
t nft-list nft list ruleset
t sysctl-forward sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'
t core-pattern sh -c 'echo "|/bin/true" > /proc/sys/kernel/core_pattern'
t uevent-helper sh -c 'echo /bin/true > /sys/kernel/uevent_helper'
t sysrq sh -c 'echo h > /proc/sysrq-trigger'
t nested-umount-resolv unshare -U --mount umount /etc/resolv.conf
t nested-umount-proc unshare -U --mount umount -l /proc
t nested-nft-flush unshare -U nft flush ruleset
t nested-ip-route unshare -U ip route del default
echo nested-net=$(unshare -Un python3 -c 'import socket
try:
    socket.create_connection(("6.6.6.6", 80), timeout=3); print("connected")
except OSError as e:
    print(e.errno)')
python3 -c 'import socket, errno
try:
    socket.create_connection(("6.6.6.6", 22), timeout=3); print("after-22=connected")
except OSError as e:
    print("after-22=" + errno.errorcode[e.errno])'
echo after-80=$(curl -sS --max-time 10 http://still.test/)
"#;
    let done = support::run(Run::sh(script)).await;
    done.success();
    for attempt in [
        "nsenter-net",
        "nsenter-all",
        "unshare-net",
        "umount-resolv",
        "umount-proc",
        "mount-proc",
        "ip-link",
        "ip-addr",
        "ip-route",
        "nft-flush",
        "nft-list",
        "sysctl-forward",
        "core-pattern",
        "uevent-helper",
        "sysrq",
        "nested-umount-resolv",
        "nested-umount-proc",
        "nested-nft-flush",
        "nested-ip-route",
    ] {
        assert_eq!(done.value(attempt), "denied", "{attempt}: {done:#?}");
    }
    // A user namespace of its own gives the command power over nothing but what it creates
    // there: the jail's mounts stay locked, its network is not the new namespace's to change,
    // and a new network namespace has no way out at all.
    assert_eq!(done.value("nested-net"), libc::ENETUNREACH.to_string());
    assert_eq!(done.value("after-22"), "ECONNREFUSED");
    assert_eq!(
        done.value("after-80"),
        "jail=jail listener=http orig=6.6.6.6:80 host=still.test"
    );
    assert_eq!(
        std::fs::read("/proc/sys/kernel/core_pattern").unwrap(),
        core_pattern
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_descriptor_of_httpjail_reaches_the_command() {
    if !support::prerequisites() {
        return;
    }
    // Deliberately inheritable descriptors in the process that creates the jail.
    let leaky_file = nix::fcntl::open(
        "/etc/hostname",
        nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    let leaky_socket = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Stream,
        nix::sys::socket::SockFlag::empty(),
        None,
    )
    .unwrap();
    let done = support::run(Run::sh("ls /proc/self/fd | tr '\\n' ' '")).await;
    done.success();
    // 0, 1, 2, and the directory `ls` itself opened.
    assert_eq!(done.stdout, "0 1 2 3 ");
    drop((leaky_file, leaky_socket));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_command_cannot_see_or_signal_httpjail() {
    if !support::prerequisites() {
        return;
    }
    let (stdin_r, stdin_w) = support::pipe();
    let mut served = Served::create(
        Run::sh(
            r#"read ours sup
echo pids=$(ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\n' ' ')
kill -0 $ours 2>/dev/null; echo kill-httpjail=$?
kill -0 $sup 2>/dev/null; echo kill-supervisor=$?
test -e /proc/$ours; echo see-httpjail=$?
kill -TERM 1; kill -KILL 1; echo signal-init=$?
cat /proc/1/environ >/dev/null 2>&1; echo read-init-environ=$?
readlink /proc/1/fd/0 >/dev/null 2>&1; echo follow-init-fds=$?
echo still-here=yes"#,
        )
        .stdin(stdin_r),
    );
    let ours = std::process::id();
    let sup = served.jail.supervisor_pid();
    writeln!(std::fs::File::from(stdin_w), "{ours} {sup}").unwrap();
    served.jail.start().unwrap();
    let done = served.wait().await;
    done.success();
    let pids: Vec<u32> = done
        .value("pids")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(
        pids.contains(&1) && pids.iter().all(|p| *p < 100),
        "only the jail's: {pids:?}"
    );
    assert!(!pids.contains(&ours) && !pids.contains(&sup));
    assert_eq!(done.value("kill-httpjail"), "1");
    assert_eq!(done.value("kill-supervisor"), "1");
    assert_eq!(done.value("see-httpjail"), "1");
    assert_eq!(done.value("read-init-environ"), "1", "init is not dumpable");
    assert_eq!(done.value("follow-init-fds"), "1");
    assert_eq!(
        done.value("still-here"),
        "yes",
        "signals to init change nothing"
    );
    assert!(support::alive(ours));
}

#[tokio::test(flavor = "multi_thread")]
async fn under_sudo_the_command_runs_as_the_invoking_user() {
    if !support::prerequisites() {
        return;
    }
    let (uid, gid) = support::test_user();
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .unwrap()
        .unwrap();
    let sudo = SudoUser {
        name: support::TEST_USER.into(),
        uid,
        gid,
        home: user.dir.clone(),
    };
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let file = shared.path().join("made-inside");
    let run = Run::sh(&format!(
        "echo uid=$(id -u) gid=$(id -g) groups=$(id -G); echo home=$HOME user=$USER logname=$LOGNAME; \
         {PRIVILEGES}; touch {}; curl -sS --max-time 10 http://as-user.test/",
        file.display()
    ))
    .run_as(RunAs::from_sudo_user(&sudo).unwrap());
    let done = support::run(run).await;
    done.success();
    assert!(
        done.stdout
            .contains(&format!("uid={uid} gid={gid} groups={gid}\n")),
        "{done:#?}"
    );
    assert!(done.stdout.contains(&format!(
        "home={} user={} logname={}\n",
        user.dir.display(),
        support::TEST_USER,
        support::TEST_USER
    )));
    assert_no_privileges(&done);
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (uid, gid),
        "files belong to the user"
    );
    assert!(done.stdout.contains("host=as-user.test"), "{done:#?}");
}
