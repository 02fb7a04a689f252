//! The rootless jail: the same isolation through user namespaces, for a user without root.
//!
//! The test re-runs itself as an unprivileged user (created when missing) through `setpriv`;
//! that child builds jails with the library, as httpjail would without sudo, and checks from
//! inside. The parent checks what the child cannot: the host's network state, and who owns a
//! file the command created.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::process::Stdio;

use httpjail::jail::linux::{ExitOutcome, JailSpec, RunAs, StrongJail, UserIdentity};

use crate::support::{self, Run};

const SUITE: &str = "rootless::a_user_without_root_gets_the_same_jail";
const SHARED_DIR: &str = "HTTPJAIL_NETNS_SHARED_DIR";
const PASSED: &str = "ROOTLESS SUITE PASSED";

#[tokio::test(flavor = "multi_thread")]
async fn a_user_without_root_gets_the_same_jail() {
    if support::role().as_deref() == Some("rootless") {
        return rootless_suite().await;
    }
    if !support::prerequisites() {
        return;
    }
    let (uid, gid) = support::test_user();
    let wrapper = [
        "setpriv".to_owned(),
        format!("--reuid={uid}"),
        format!("--regid={gid}"),
        "--clear-groups".to_owned(),
        "--".to_owned(),
    ];
    let userns = std::process::Command::new(&wrapper[0])
        .args(&wrapper[1..])
        .args(["unshare", "--user", "--map-root-user", "--net", "true"])
        .status()
        .unwrap();
    if !userns.success()
        && !support::skip_or_fail("the kernel refuses user namespaces to unprivileged users")
    {
        return;
    }
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let before = support::host_network_state();
    let out = support::rerun_self(SUITE, "rootless", &wrapper)
        .env(SHARED_DIR, shared.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(PASSED),
        "rootless suite failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let made = std::fs::metadata(shared.path().join("made-inside")).unwrap();
    assert_eq!(
        (made.uid(), made.gid()),
        (uid, gid),
        "the command's files are the user's"
    );
    assert_eq!(support::host_network_state(), before);
}

/// Runs as the unprivileged user.
async fn rootless_suite() {
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    assert_ne!(uid, 0, "the rootless suite must not run as root");
    let shared = std::env::var(SHARED_DIR).expect("shared directory");

    let web = support::run(Run::argv(&[
        "curl",
        "-sS",
        "--max-time",
        "10",
        "http://name.test/",
    ]))
    .await;
    web.success();
    assert_eq!(
        web.stdout,
        "jail=jail listener=http orig=6.6.6.6:80 host=name.test\n"
    );

    let net = support::run(Run::probe(
        "out('dns', dns_udp('203.0.113.7', 'any.example'))\n\
         out('dns tcp', dns_tcp('2001:db8::53', 'any.example'))\n\
         out('ssh', tcp('6.6.6.6', 22)[0])\n\
         out('ssh6', tcp('2001:db8::1', 22)[0])\n\
         out('ntp', udp('6.6.6.6', 123))\n\
         out('raw', sock(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))",
    ))
    .await;
    net.success();
    assert_eq!(net.value("dns"), "id=4242 rcode=0 answers=1 addr=6.6.6.6");
    assert_eq!(
        net.value("dns tcp"),
        "id=4242 rcode=0 answers=1 addr=6.6.6.6"
    );
    assert_eq!(net.value("ssh"), "ECONNREFUSED");
    assert_eq!(net.value("ssh6"), "ECONNREFUSED");
    assert!(
        ["EPERM", "ECONNREFUSED"].contains(&net.value("ntp")),
        "{net:#?}"
    );
    assert_eq!(net.value("raw"), "EPERM");

    let script = format!(
        r#"echo uid=$(id -u) gid=$(id -g)
grep -E '^(CapEff|CapBnd|NoNewPrivs):' /proc/self/status | tr -d ' \t' | tr ':' '='
touch {shared}/made-inside
t() {{ label=$1; shift; if "$@" >/dev/null 2>&1; then echo "$label=ok"; else echo "$label=denied"; fi; }}
t ip-link ip link add x type veth peer name y
t ip-route ip route del default
t nft-flush nft flush ruleset
t nsenter-net nsenter --net=/proc/1/ns/net true
t umount-resolv umount /etc/resolv.conf
t nested-nft unshare -r nft flush ruleset
t nested-umount unshare -r --mount umount /etc/resolv.conf
echo nested-net=$(unshare -rn python3 -c 'import socket
try:
    socket.create_connection(("6.6.6.6", 80), timeout=3); print("connected")
except OSError as e:
    print(e.errno)')
echo pids=$(ls /proc | grep -cE '^[0-9]+$')
sleep 1000.4242 &
echo done"#
    );
    let inside = support::run(Run::sh(&script)).await;
    inside.success();
    assert!(
        inside.stdout.starts_with(&format!("uid={uid} gid={gid}\n")),
        "the user's own ids inside: {inside:#?}"
    );
    assert_eq!(inside.value("CapEff"), "0000000000000000");
    assert_eq!(inside.value("CapBnd"), "0000000000000000");
    assert_eq!(inside.value("NoNewPrivs"), "1");
    for attempt in [
        "ip-link",
        "ip-route",
        "nft-flush",
        "nsenter-net",
        "umount-resolv",
        "nested-nft",
        "nested-umount",
    ] {
        assert_eq!(inside.value(attempt), "denied", "{attempt}: {inside:#?}");
    }
    assert_eq!(inside.value("nested-net"), libc::ENETUNREACH.to_string());
    let pids: u32 = inside.value("pids").parse().expect("a count");
    assert!(pids < 10, "only the jail's processes are visible: {pids}");
    assert_eq!(
        support::processes_running(&["sleep", "1000.4242"]),
        Vec::<u32>::new()
    );

    let missing = support::run(Run::argv(&["no-such-command-httpjail"])).await;
    assert_eq!(missing.outcome, ExitOutcome::NotFound);

    // A failure inside the supervisor comes back as the error it is.
    let mut spec = JailSpec::new(vec!["true".into()], vec![], "/");
    spec.supervisor_exe = support::httpjail_bin();
    spec.run_as = RunAs::User(UserIdentity {
        name: "someone".into(),
        uid: uid + 1,
        gid,
        groups: vec![gid],
        home: "/".into(),
    });
    let err = StrongJail::create(&spec).expect_err("another user needs root");
    assert_eq!(
        err.to_string(),
        "strong jail: could not run the command as another user: that needs root"
    );

    let mut stdout = std::io::stdout();
    std::io::Write::write_all(&mut stdout, format!("{PASSED}\n").as_bytes()).expect("stdout");
}
