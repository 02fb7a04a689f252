//! Start-up cost of the strong jail: `true` in a jail against `true` alone, measured in the
//! same run (this machine is noisy, so only ratios and differences are meaningful), plus the
//! cost of each step on its own to show where the time goes.
//!
//! `cargo bench --bench jail_startup` (as root for the root path; the rootless path is
//! measured too when the test user `httpjail-test` exists, by re-running this binary through
//! `setpriv`). Not run in CI.

#![expect(clippy::print_stdout, reason = "a benchmark reports on stdout")]
#![expect(clippy::unwrap_used, reason = "a benchmark fails loudly")]

use std::ffi::OsString;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use httpjail::jail::linux::{ExitOutcome, JailSpec, StrongJail, plan};

const ROUNDS: usize = 60;
const ROLE_ENV: &str = "HTTPJAIL_BENCH_ROLE";

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for the list of tests; there are none.
    }
    let rootless = std::env::var(ROLE_ENV).is_ok_and(|r| r == "rootless");
    let who = if nix::unistd::geteuid().is_root() {
        "root"
    } else {
        "rootless"
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let mut bare = Vec::new();
    let mut jailed = Vec::new();
    let mut create = Vec::new();
    for _ in 0..ROUNDS {
        bare.push(time(|| {
            assert!(Command::new("true").status().unwrap().success());
        }));
        let (total, setup) = runtime.block_on(jail_true());
        jailed.push(total);
        create.push(setup);
    }
    println!("strong jail start-up ({who}, {ROUNDS} rounds, median / p90):");
    report("`true` alone", &bare);
    report("`true` in a jail (create+start+wait)", &jailed);
    report("  of which create (jail ready)", &create);
    let added = median(&jailed).saturating_sub(median(&bare));
    println!(
        "  added by the jail: {:.1} ms (ratio {:.1}x)",
        ms(added),
        ms(median(&jailed)) / ms(median(&bare))
    );

    if rootless {
        return;
    }
    println!("steps on their own:");
    let exe = env!("CARGO_BIN_EXE_httpjail");
    report(
        "exec the supervisor binary (no work)",
        &rounds(|| {
            let _ = Command::new(exe)
                .arg("__httpjail-supervisor")
                .status()
                .unwrap();
        }),
    );
    if who == "root" {
        report(
            "unshare net+mount in a thread",
            &rounds(|| in_new_netns(|| {})),
        );
        // What the loopback set-up cost when it ran `ip` (it now uses rtnetlink in-process).
        let batch: String = plan::link_steps(true)
            .iter()
            .map(|s| format!("{}\n", s.to_string().trim_start_matches("ip ")))
            .collect();
        report(
            "`ip -batch -` (lo set-up, no longer used)",
            &rounds(|| in_new_netns(|| pipe_to("ip", &["-batch", "-"], &batch))),
        );
        let ports = plan::Ports {
            http: 40080,
            https: 40443,
            dns: 40053,
        };
        report(
            "`nft -f -` (the ruleset)",
            &rounds(|| in_new_netns(|| pipe_to("nft", &["-f", "-"], &plan::nft_ruleset(ports)))),
        );
        run_rootless_too();
    }
}

async fn jail_true() -> (Duration, Duration) {
    let start = Instant::now();
    let mut spec = JailSpec::new(
        vec![OsString::from("true")],
        vec![("PATH".into(), "/usr/bin:/bin".into())],
        "/",
    );
    spec.supervisor_exe = env!("CARGO_BIN_EXE_httpjail").into();
    let (mut jail, listeners) = StrongJail::create(&spec).unwrap();
    let setup = start.elapsed();
    jail.start().unwrap();
    assert_eq!(jail.wait().await, ExitOutcome::Exited(0));
    drop(listeners);
    drop(jail);
    (start.elapsed(), setup)
}

fn run_rootless_too() {
    let Ok(Some(user)) = nix::unistd::User::from_name("httpjail-test") else {
        println!("(rootless not measured: no user `httpjail-test`; the netns tests create it)");
        return;
    };
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("setpriv")
        .arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .args(["--clear-groups", "--"])
        .arg(exe)
        .env(ROLE_ENV, "rootless")
        .current_dir("/")
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    std::io::stdout().write_all(&out.stdout).unwrap();
}

fn in_new_netns(f: impl FnOnce() + Send) {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(
                nix::sched::CloneFlags::CLONE_NEWNET | nix::sched::CloneFlags::CLONE_NEWNS,
            )
            .unwrap();
            f();
        });
    });
}

fn pipe_to(program: &str, args: &[&str], input: &str) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

fn rounds(mut f: impl FnMut()) -> Vec<Duration> {
    (0..ROUNDS).map(|_| time(&mut f)).collect()
}

fn time(mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn p90(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() * 9 / 10]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report(what: &str, v: &[Duration]) {
    println!(
        "  {what:<44} {:>7.2} ms / {:>7.2} ms",
        ms(median(v)),
        ms(p90(v))
    );
}
