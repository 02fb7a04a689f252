//! The shell engine (`--sh CMD`): one process per request (SPEC sections 1-3).
//!
//! Each evaluation runs `CMD` (directly, or as `sh -c CMD` when it has a space) with the
//! request in `HTTPJAIL_*` variables added to httpjail's environment and stdin on `/dev/null`.
//! Exit status 0 allows; any other status denies with stdout (trimmed, capped) as the message;
//! death by a signal is an engine error. stderr goes to the diagnostics line by line.
//!
//! Every run is a process group of its own. When the command exits the whole group is killed,
//! so a rule cannot leave background processes behind; after the timeout (30 s by default) the
//! group is killed and the request denied. Every read is bounded by the deadline, so a
//! grandchild that keeps stdout open cannot hang a request. Evaluations run concurrently;
//! nothing here serialises them.
//!
//! `max_tx_bytes` cannot be expressed by an exit status and is not available to `--sh`.
//!
//! This module must not interpret stdout as an answer (no JSON): that is `--proc`'s protocol.

use std::process::Stdio;
use std::time::Duration;

use tokio::time::Instant;

use super::answer::{MAX_MESSAGE_BYTES, cap_message};
use super::program::{Program, RuleChild, forward_stderr, human_delay, read_capped};
use super::{Decision, DenyReason, Error, RuleRequest};
use crate::env::rule as vars;

/// After the command exits and its group is killed, how long we keep reading what it printed.
/// The writers are dead by then, so this only matters if one escaped the group (setsid) and
/// still holds the pipe: we stop waiting for it rather than hang the request.
const OUTPUT_GRACE: Duration = Duration::from_millis(250);

/// How many bytes of stdout we keep: enough for a capped message after trimming.
const MAX_STDOUT: usize = 2 * MAX_MESSAGE_BYTES;

#[derive(Debug, Clone, Copy)]
pub struct ShellOptions {
    /// Deadline of one run; the group is then killed and the request denied.
    pub timeout: Duration,
}

#[derive(Debug)]
pub struct ShellEngine {
    program: Program,
    options: ShellOptions,
}

impl ShellEngine {
    /// Checks that the program (or `sh`, for a command with a space) exists and is executable.
    pub fn new(command: &str, options: ShellOptions) -> Result<Self, Error> {
        Ok(Self::with_program(
            Program::resolve("--sh", command)?,
            options,
        ))
    }

    /// An engine for a program already resolved (e.g. with variables hidden from it).
    pub fn with_program(program: Program, options: ShellOptions) -> Self {
        Self { program, options }
    }

    /// Runs the command once for `request`. Never fails: every problem is a deny.
    pub async fn evaluate(&self, request: &RuleRequest) -> Decision {
        let mut cmd = self.program.command();
        cmd.env(vars::URL, &request.url)
            .env(vars::METHOD, &request.method)
            .env(vars::SCHEME, request.scheme.as_str())
            .env(vars::HOST, &request.host)
            .env(vars::PATH, &request.path)
            .env(vars::PORT, request.port.to_string())
            .env(vars::REQUESTER_IP, request.requester_ip.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let deadline = Instant::now() + self.options.timeout;
        let mut child = match RuleChild::spawn(&mut cmd) {
            Ok(child) => child,
            Err(e) => {
                tracing::warn!("--sh: cannot start `{}`: {e}", self.program.display());
                return Decision::deny_with(
                    DenyReason::EngineError,
                    "the --sh rule could not be started",
                );
            }
        };
        let (Some(stdout), Some(stderr)) = (child.take_stdout(), child.take_stderr()) else {
            return Decision::deny_with(DenyReason::EngineError, "the --sh rule has no stdout");
        };

        let mut out = Vec::new();
        let finished = {
            let read_out = read_capped(stdout, &mut out, MAX_STDOUT);
            let forward_err = forward_stderr(stderr);
            tokio::pin!(read_out, forward_err);
            let mut out_done = false;
            let mut err_done = false;

            // Phase 1: the command runs; its output is read meanwhile so it never blocks on a
            // full pipe. Everything is bounded by the deadline.
            let finished = tokio::time::timeout_at(deadline, async {
                loop {
                    tokio::select! {
                        biased;
                        () = child.exited() => return,
                        () = &mut read_out, if !out_done => out_done = true,
                        () = &mut forward_err, if !err_done => err_done = true,
                    }
                }
            })
            .await
            .is_ok();

            // Phase 2: kill the group while the leader is still unreaped (so its id cannot have
            // been reused): background jobs die, on time-out the command itself too.
            child.kill_group();

            // Phase 3: collect what is left in the pipes; writers are gone, so EOF is prompt.
            if finished {
                let grace = deadline.min(Instant::now() + OUTPUT_GRACE);
                let _ = tokio::time::timeout_at(grace, async {
                    tokio::join!(
                        async {
                            if !out_done {
                                (&mut read_out).await;
                            }
                        },
                        async {
                            if !err_done {
                                (&mut forward_err).await;
                            }
                        }
                    )
                })
                .await;
            }
            finished
        };

        let status = child.reap().await;
        if !finished {
            tracing::warn!(
                "--sh `{}` did not finish within {}; killed it",
                self.program.display(),
                human_delay(self.options.timeout)
            );
            return Decision::deny_with(
                DenyReason::EngineTimeout,
                format!(
                    "the --sh rule did not finish within {}",
                    human_delay(self.options.timeout)
                ),
            );
        }
        let status = match status {
            Ok(status) => status,
            Err(e) => {
                tracing::warn!("--sh `{}`: cannot wait for it: {e}", self.program.display());
                return Decision::deny_with(DenyReason::EngineError, "the --sh rule was lost");
            }
        };
        match status.code() {
            Some(0) => Decision::ALLOW,
            Some(_) => {
                let text = String::from_utf8_lossy(&out);
                let text = text.trim();
                if text.is_empty() {
                    Decision::deny(DenyReason::Rule)
                } else {
                    Decision::deny_with(DenyReason::Rule, cap_message(text))
                }
            }
            None => {
                tracing::warn!("--sh `{}` was killed ({status})", self.program.display());
                Decision::deny_with(DenyReason::EngineError, "the --sh rule was killed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::program::testing::{poll_pid_file, wait_gone};
    use super::*;
    use std::path::Path;

    fn request(url: &str) -> RuleRequest {
        RuleRequest::from_url("GET", url, RuleRequest::local_requester()).unwrap()
    }

    fn engine(cmd: &str) -> ShellEngine {
        engine_with(cmd, Duration::from_secs(30))
    }

    fn engine_with(cmd: &str, timeout: Duration) -> ShellEngine {
        ShellEngine::new(cmd, ShellOptions { timeout }).unwrap()
    }

    fn script(dir: &Path, name: &str, body: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.to_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn exit_status_decides() {
        let r = request("https://github.com/x");
        assert_eq!(engine("exit 0").evaluate(&r).await, Decision::ALLOW);
        assert_eq!(
            engine("exit 3").evaluate(&r).await,
            Decision::deny(DenyReason::Rule)
        );
        assert_eq!(engine("true").evaluate(&r).await, Decision::ALLOW);
        assert_eq!(
            engine("false").evaluate(&r).await,
            Decision::deny(DenyReason::Rule)
        );
    }

    #[tokio::test]
    async fn stdout_is_the_trimmed_deny_message_and_ignored_on_allow() {
        let r = request("https://a.test/");
        assert_eq!(
            engine("echo '  Only GitHub  '; exit 1").evaluate(&r).await,
            Decision::deny_with(DenyReason::Rule, "Only GitHub")
        );
        assert_eq!(
            engine("echo fine; exit 0").evaluate(&r).await,
            Decision::ALLOW
        );
    }

    #[tokio::test]
    async fn long_output_is_capped_and_does_not_block_the_rule() {
        // 1 MiB is far more than a pipe buffer: the rule must not block writing it.
        let d = engine("head -c 1048576 /dev/zero | tr '\\0' x; exit 1")
            .evaluate(&request("https://a.test/"))
            .await;
        let Decision::Deny {
            reason: DenyReason::Rule,
            message: Some(m),
        } = d
        else {
            panic!("{d:?}");
        };
        assert_eq!(m.len(), MAX_MESSAGE_BYTES);
        assert!(m.bytes().all(|b| b == b'x'));
    }

    #[tokio::test]
    async fn every_request_field_is_in_the_environment() {
        let r = RuleRequest::from_url(
            "POST",
            "http://API.Example.com:8080/v1/x?q=1",
            "10.1.2.3".parse().unwrap(),
        )
        .unwrap();
        let cmd = r#"printf '%s|%s|%s|%s|%s|%s|%s' "$HTTPJAIL_URL" "$HTTPJAIL_METHOD" "$HTTPJAIL_SCHEME" "$HTTPJAIL_HOST" "$HTTPJAIL_PATH" "$HTTPJAIL_PORT" "$HTTPJAIL_REQUESTER_IP"; exit 1"#;
        assert_eq!(
            engine(cmd).evaluate(&r).await,
            Decision::deny_with(
                DenyReason::Rule,
                "http://api.example.com:8080/v1/x?q=1|POST|http|api.example.com|/v1/x|8080|10.1.2.3"
            )
        );
    }

    #[tokio::test]
    async fn direct_exec_of_a_script_sees_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = script(
            dir.path(),
            "policy.sh",
            "#!/bin/sh\n[ \"$HTTPJAIL_HOST\" = github.com ] && exit 0\necho \"no $HTTPJAIL_HOST\"\nexit 1\n",
        );
        let e = engine(&path);
        assert_eq!(
            e.evaluate(&request("https://github.com/")).await,
            Decision::ALLOW
        );
        assert_eq!(
            e.evaluate(&request("https://gitlab.com/")).await,
            Decision::deny_with(DenyReason::Rule, "no gitlab.com")
        );
    }

    #[tokio::test]
    async fn killed_by_a_signal_is_an_engine_error() {
        let d = engine("kill -9 $$")
            .evaluate(&request("https://a.test/"))
            .await;
        assert_eq!(d.reason(), Some(DenyReason::EngineError), "{d:?}");
    }

    #[tokio::test]
    async fn a_slow_rule_is_killed_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let e = engine_with(
            &format!("echo $$ > {}; exec sleep 30", pidfile.display()),
            Duration::from_millis(300),
        );
        let started = std::time::Instant::now();
        let d = e.evaluate(&request("https://a.test/")).await;
        assert_eq!(d.reason(), Some(DenyReason::EngineTimeout), "{d:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        wait_gone(poll_pid_file(&pidfile).await).await;
    }

    #[tokio::test]
    async fn background_processes_are_killed_when_the_rule_exits() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("bg");
        // The background job keeps stdout open: the engine must neither wait for it nor let
        // it live on.
        let e = engine(&format!(
            "sleep 30 & echo $! > {}; exit 0",
            pidfile.display()
        ));
        let started = std::time::Instant::now();
        assert_eq!(
            e.evaluate(&request("https://a.test/")).await,
            Decision::ALLOW
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        wait_gone(poll_pid_file(&pidfile).await).await;
    }

    #[tokio::test]
    async fn a_grandchild_that_escaped_the_group_cannot_hang_the_request() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("escaped");
        // setsid puts the sleeper in another session, out of our reach, holding stdout open.
        // The rule waits until it is there, so the test cannot pass by killing it early.
        let e = engine(&format!(
            "setsid sh -c 'echo $$ > {p}; exec sleep 5' & while [ ! -s {p} ]; do sleep 0.01; done; echo gone; exit 1",
            p = pidfile.display()
        ));
        let started = std::time::Instant::now();
        let d = e.evaluate(&request("https://a.test/")).await;
        let took = started.elapsed();
        let escaped = poll_pid_file(&pidfile).await;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(escaped),
            nix::sys::signal::Signal::SIGKILL,
        );
        assert_eq!(d, Decision::deny_with(DenyReason::Rule, "gone"));
        assert!(
            took >= OUTPUT_GRACE,
            "the escaped writer was not there: {took:?}"
        );
        assert!(took < Duration::from_secs(3), "{took:?}");
    }

    #[tokio::test]
    async fn a_cancelled_evaluation_kills_the_rule() {
        // The proxy drops an evaluation when its client goes away: the rule must not live on.
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let e = engine(&format!("sleep 60 & echo $! > {}; wait", pidfile.display()));
        let r = request("https://a.test/");
        let mut evaluation = Box::pin(e.evaluate(&r));
        let pid = tokio::select! {
            d = &mut evaluation => panic!("finished early: {d:?}"),
            pid = poll_pid_file(&pidfile) => pid,
        };
        drop(evaluation);
        wait_gone(pid).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn evaluations_run_concurrently() {
        let e = std::sync::Arc::new(engine("sleep 0.5"));
        let started = std::time::Instant::now();
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let e = e.clone();
                tokio::spawn(
                    async move { e.evaluate(&request(&format!("https://h{i}.test/"))).await },
                )
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Decision::ALLOW);
        }
        // Serialised, this would take 8 x 0.5 s = 4 s.
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "took {took:?}");
    }

    #[tokio::test]
    async fn the_program_is_checked_at_start() {
        assert!(matches!(
            ShellEngine::new(
                "/nonexistent/policy.sh",
                ShellOptions {
                    timeout: Duration::from_secs(1)
                }
            ),
            Err(Error::ProgramNotFound { flag: "--sh", .. })
        ));
    }
}
