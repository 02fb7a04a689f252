//! The jail's lifetime: exit codes, signals, teardown, leftovers, many jails at once.

use std::io::{BufRead as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::process::Stdio;

use httpjail::jail::linux::{ExitOutcome, JailSpec, StrongJail, cleanup};
use nix::sys::signal::Signal;

use crate::support::{self, Run, Served};

/// A `sleep` argument unique to one test, so that its processes can be found on the host.
fn sleeper() -> String {
    let mut n = [0u8; 4];
    getrandom::fill(&mut n).expect("randomness");
    format!("1000.{}", u32::from_le_bytes(n))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_host_network_is_identical_before_during_and_after() {
    if !support::prerequisites() {
        return;
    }
    let before = support::host_network_state();
    let (stdin_r, stdin_w) = support::pipe();
    let mut served = Served::create(Run::sh("read line; echo got $line").stdin(stdin_r));
    served.jail.start().unwrap();
    let during = support::host_network_state();
    std::fs::File::from(stdin_w).write_all(b"it\n").unwrap();
    let done = served.wait().await;
    done.success();
    assert_eq!(done.stdout, "got it\n");
    assert_eq!(during, before, "the host changed while the jail ran");
    assert_eq!(
        support::host_network_state(),
        before,
        "the host changed after the jail"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn background_processes_do_not_outlive_the_jail() {
    if !support::prerequisites() {
        return;
    }
    let s = sleeper();
    let done = support::run(Run::sh(&format!("sleep {s} & sleep {s} & echo started"))).await;
    done.success();
    assert_eq!(done.stdout, "started\n");
    // No polling: when wait() returns, the jail's PID namespace is already empty.
    assert_eq!(
        support::processes_running(&["sleep", &s]),
        Vec::<u32>::new()
    );
    assert!(
        !support::alive(done.supervisor_pid),
        "the supervisor has exited too"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_tell_the_command_apart_from_the_jail() {
    if !support::prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("not-executable");
    std::fs::write(&plain, "#!/bin/sh\necho never\n").unwrap();
    let no_shebang = dir.path().join("no-shebang");
    std::fs::write(&no_shebang, "echo ran by sh\n").unwrap();
    std::fs::set_permissions(&no_shebang, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let cases = [
        (Run::sh("exit 7"), ExitOutcome::Exited(7)),
        (Run::sh("exit 127"), ExitOutcome::Exited(127)),
        (
            Run::argv(&["no-such-command-httpjail"]),
            ExitOutcome::NotFound,
        ),
        (Run::argv(&["/no/such/program"]), ExitOutcome::NotFound),
        (
            Run::argv(&[&path(&plain)]),
            ExitOutcome::NotExecutable {
                errno: libc::EACCES,
            },
        ),
        (
            Run::argv(&["/tmp"]),
            ExitOutcome::NotExecutable {
                errno: libc::EACCES,
            },
        ),
        (Run::argv(&[&path(&no_shebang)]), ExitOutcome::Exited(0)),
        (Run::sh("kill -TERM $$"), ExitOutcome::Signaled(15)),
        (Run::sh("kill -KILL $$"), ExitOutcome::Signaled(9)),
    ];
    for (run, expected) in cases {
        let what = format!("{:?}", run.command);
        let done = support::run(run).await;
        assert_eq!(done.outcome, expected, "{what}: {done:#?}");
    }
    let mut missing_cwd = Run::argv(&["true"]);
    missing_cwd.cwd = dir.path().join("gone");
    let done = support::run(missing_cwd).await;
    assert!(
        matches!(&done.outcome, ExitOutcome::Failed(m) if m.contains("working directory")),
        "{done:#?}"
    );
    assert_eq!(done.outcome.exit_code(), 125);
}

#[tokio::test(flavor = "multi_thread")]
async fn signals_reach_the_command_and_kill_ends_the_whole_jail() {
    if !support::prerequisites() {
        return;
    }
    let mut served = Served::create(Run::probe(
        "import signal\n\
         signal.signal(signal.SIGTERM, lambda *a: sys.exit(42))\n\
         out('ready', 1)\n\
         time.sleep(30)",
    ));
    served.jail.start().unwrap();
    served.wait_for_stdout("ready=1");
    served.jail.signal(Signal::SIGTERM);
    assert_eq!(served.wait().await.outcome, ExitOutcome::Exited(42));

    let s = sleeper();
    let mut served = Served::create(Run::sh(&format!("sleep {s} & sleep {s}")));
    served.jail.start().unwrap();
    support::eventually("both sleeps running", || {
        support::processes_running(&["sleep", &s]).len() == 2
    });
    served.jail.kill();
    let done = served.wait().await;
    assert_eq!(done.outcome, ExitOutcome::Signaled(9));
    assert_eq!(
        support::processes_running(&["sleep", &s]),
        Vec::<u32>::new()
    );
}

/// How `--timeout` uses the jail: `wait` in a `select!` beside a timer, then `kill` and wait
/// again (the first, cancelled `wait` must not lose the outcome).
#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_wait_loses_nothing() {
    if !support::prerequisites() {
        return;
    }
    let mut served = Served::create(Run::sh("sleep 30"));
    served.jail.start().unwrap();
    tokio::select! {
        outcome = served.jail.wait() => panic!("ended before the timeout: {outcome:?}"),
        () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
    }
    served.jail.kill();
    assert_eq!(served.wait().await.outcome, ExitOutcome::Signaled(9));
}

const HOLDER_TEST: &str = "lifetime::sigkill_of_the_process_holding_the_jail_leaves_nothing";
const HOLDER_SLEEP: &str = "HTTPJAIL_NETNS_HOLDER_SLEEP";

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_the_process_holding_the_jail_leaves_nothing() {
    if support::role().as_deref() == Some("holder") {
        return hold_a_jail_until_killed().await;
    }
    if !support::prerequisites() {
        return;
    }
    let s = sleeper();
    let before = support::host_network_state();
    let mut holder = support::rerun_self(HOLDER_TEST, "holder", &[])
        .env(HOLDER_SLEEP, &s)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(holder.stdout.take().unwrap());
    let supervisor: u32 = stdout
        .lines()
        .map_while(Result::ok)
        .find_map(|l| Some(l.split_once("HOLDING ")?.1.trim().parse().unwrap()))
        .expect("the holder reports its jail");
    assert!(support::alive(supervisor));
    assert_eq!(support::processes_running(&["sleep", &s]).len(), 2);
    assert_eq!(support::host_network_state(), before, "during");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(holder.id()).unwrap()),
        Signal::SIGKILL,
    )
    .unwrap();
    let _ = holder.wait();
    support::eventually("the supervisor to die with its httpjail", || {
        !support::alive(supervisor)
    });
    support::eventually("the jail's processes to die", || {
        support::processes_running(&["sleep", &s]).is_empty()
    });
    assert_eq!(support::host_network_state(), before, "after");
    assert!(
        cleanup::cleanup().unwrap().killed.is_empty(),
        "nothing was left for --cleanup"
    );
}

/// The holder role: a process that holds a running jail and prints its supervisor's PID.
async fn hold_a_jail_until_killed() {
    let s = std::env::var(HOLDER_SLEEP).expect("the parent names the sleep");
    let mut served = Served::create(Run::sh(&format!("sleep {s} & sleep {s}")));
    served.jail.start().expect("start");
    support::eventually("both sleeps running", || {
        support::processes_running(&["sleep", &s]).len() == 2
    });
    let mut stdout = std::io::stdout();
    writeln!(stdout, "HOLDING {}", served.jail.supervisor_pid()).expect("stdout");
    stdout.flush().expect("stdout");
    tokio::time::sleep(support::DEADLINE).await;
    panic!("the holder was not killed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_supervisor_that_cannot_start_is_reported_at_once() {
    if !support::prerequisites() {
        return;
    }
    for (exe, expected) in [
        (
            "/no/such/httpjail",
            "start the jail supervisor `/no/such/httpjail`",
        ),
        (
            "/bin/true",
            "the supervisor stopped before the jail was ready",
        ),
    ] {
        let mut spec = JailSpec::new(vec!["true".into()], vec![], "/");
        spec.supervisor_exe = exe.into();
        let started = std::time::Instant::now();
        let err = StrongJail::create(&spec).expect_err("no jail without a supervisor");
        assert!(err.to_string().contains(expected), "{exe}: {err}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{exe}: reported at once"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_leaves_live_jails_alone() {
    if !support::prerequisites() {
        return;
    }
    let mut served = Served::create(Run::sh("echo up; sleep 30"));
    served.jail.start().unwrap();
    served.wait_for_stdout("up");
    let report = cleanup::cleanup().unwrap();
    let pid = served.jail.supervisor_pid();
    assert!(!report.killed.contains(&pid), "{report:?}");
    assert!(support::alive(pid));
    served.jail.kill();
    assert_eq!(served.wait().await.outcome, ExitOutcome::Signaled(9));
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_jails_at_once_each_reach_only_their_own_listener() {
    if !support::prerequisites() {
        return;
    }
    // One more jail is being torn down while the ten start.
    let s = sleeper();
    let mut dying = Served::create(Run::sh(&format!("sleep {s}")));
    dying.jail.start().unwrap();
    let runs: Vec<_> = (0..10)
        .map(|i| {
            tokio::spawn(support::run(
                Run::sh("curl -sS --max-time 10 http://name.test/").tag(&format!("j{i}")),
            ))
        })
        .collect();
    dying.jail.kill();
    assert_eq!(dying.wait().await.outcome, ExitOutcome::Signaled(9));
    for (i, run) in runs.into_iter().enumerate() {
        let done = run.await.unwrap();
        done.success();
        assert_eq!(
            done.stdout,
            format!("jail=j{i} listener=http orig=6.6.6.6:80 host=name.test\n")
        );
        assert_eq!(done.hits.len(), 1, "j{i} got only its own request");
    }
}
