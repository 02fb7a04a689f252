//! The line-processor engine (`--proc CMD`): one long-running process, one JSON line in and one
//! line out per request.
//!
//! The processor is started once (directly, or as `sh -c CMD` when `CMD` has a space). For each
//! request it gets `serde_json::to_string(&RuleRequest)` and a newline on stdin, and must print
//! one line on stdout, interpreted only by [`answer::Answer::from_line`] and [`answer::decide`]
//! (SPEC section 3). Its stderr goes to the diagnostics.
//!
//! # Design
//!
//! One owner task holds the child, its pipes and a FIFO of pending answers (oneshot senders).
//! [`LineProcessor::evaluate`] only serialises the request, hands it to the owner through a
//! channel and waits for its oneshot with a deadline; no lock is held across an await. The
//! protocol is ordered, so the n-th line answers the n-th request written.
//!
//! - **Deadline.** A request not answered within `answer_timeout` is denied (`engine_timeout`).
//!   Its slot stays in the FIFO, so a late line is consumed by the request it belongs to and is
//!   never applied to the next one. If the oldest slot is overdue by another `answer_timeout`,
//!   the processor is considered hung: it is killed and restarted.
//! - **Death.** When the processor exits (or closes a pipe), what it already printed is still
//!   read and applied, then every request still in flight is denied (`engine_error`), the
//!   warning names the exit status, and it is restarted after an exponential backoff (100 ms
//!   doubling to 5 s, back to 100 ms once a process has lived 30 s). Requests that arrive while
//!   it is down wait for the restart if it comes before their deadline, else are denied at once.
//! - **Bounds.** Answer lines are cut at 64 KiB (the request is denied, the rest of the line is
//!   dropped), decoded lossily; at most [`MAX_PENDING`] requests wait; httpjail's writes never
//!   block its reads (a processor that stops reading cannot deadlock us), and EPIPE is an error
//!   value, not a signal (Rust ignores SIGPIPE in its runtime).
//! - **Stop.** [`LineProcessor::stop`] closes stdin, waits up to 1 s, then kills the process
//!   group. Dropping the engine does the same; if the runtime is gone, the child is killed.
//!
//! This module must not parse answers itself nor hold the child anywhere but in the owner task.

use std::collections::VecDeque;
use std::io;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::answer::{self, Answer};
use super::program::{LineSplitter, Piece, Program, RuleChild, forward_stderr, human_delay};
use super::{Decision, DenyReason, Error, RuleRequest};

/// Longest answer line; longer ones deny the request and the rest of the line is dropped.
pub const MAX_ANSWER_LINE: usize = 64 * 1024;
/// Requests written or waiting for a processor; more are denied at once (memory bound).
pub const MAX_PENDING: usize = 16 * 1024;
/// Requests handed to the owner but not yet taken (backpressure toward evaluations).
const JOB_QUEUE: usize = 1024;
/// Request bytes not yet written to the processor's stdin before we stop taking new ones.
const MAX_UNWRITTEN: usize = 256 * 1024;
/// First restart delay; doubled after each quick death up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A processor that lived this long was healthy: its next restart is quick again.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// How long a dying processor gets to finish exiting (and we to read its last lines).
const EXIT_GRACE: Duration = Duration::from_millis(100);
/// How long [`LineProcessor::stop`] lets the processor exit after closing its stdin.
const STOP_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
pub struct ProcessorOptions {
    /// Deadline of one answer (default 5 s); on expiry the request is denied.
    pub answer_timeout: Duration,
}

/// A running `--proc` rule. Cheap to share by reference; `evaluate` may be called concurrently.
#[derive(Debug)]
pub struct LineProcessor {
    jobs: mpsc::Sender<Job>,
    control: Mutex<Option<Control>>,
    options: ProcessorOptions,
}

#[derive(Debug)]
struct Control {
    stop: oneshot::Sender<()>,
    owner: JoinHandle<()>,
}

/// One request on its way to the owner task.
#[derive(Debug)]
struct Job {
    /// The JSON line, newline included.
    line: Vec<u8>,
    reply: oneshot::Sender<Decision>,
    deadline: Instant,
}

impl LineProcessor {
    /// Checks and starts the processor. A program that is missing, not executable or cannot
    /// be spawned is an error; one that exits right away is reported by the first evaluation
    /// (a prompt deny) and on stderr. Must be called inside a tokio runtime.
    pub async fn start(command: &str, options: ProcessorOptions) -> Result<Self, Error> {
        Self::start_program(Program::resolve("--proc", command)?, options).await
    }

    /// Starts a program already resolved (e.g. with variables hidden from it).
    pub async fn start_program(program: Program, options: ProcessorOptions) -> Result<Self, Error> {
        let first = Running::spawn(&program).map_err(|source| Error::ProcessorStart {
            command: program.display().to_owned(),
            source,
        })?;
        let (jobs, jobs_rx) = mpsc::channel(JOB_QUEUE);
        let (stop, stop_rx) = oneshot::channel();
        let owner = tokio::spawn(Owner::new(program, options, first).run(jobs_rx, stop_rx));
        Ok(Self {
            jobs,
            control: Mutex::new(Some(Control { stop, owner })),
            options,
        })
    }

    /// Sends `request` to the processor and waits for its answer, at most `answer_timeout`.
    /// Never fails: every problem is a deny.
    pub async fn evaluate(&self, request: &RuleRequest) -> Decision {
        let deadline = Instant::now() + self.options.answer_timeout;
        let mut line = match serde_json::to_vec(request) {
            Ok(line) => line,
            Err(e) => {
                tracing::warn!("--proc: cannot encode the request: {e}");
                return Decision::deny_with(DenyReason::EngineError, "cannot encode the request");
            }
        };
        line.push(b'\n');
        let (reply, answer) = oneshot::channel();
        let exchange = async {
            let job = Job {
                line,
                reply,
                deadline,
            };
            if self.jobs.send(job).await.is_err() {
                return stopped();
            }
            answer.await.unwrap_or_else(|_| stopped())
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(decision) => decision,
            Err(_) => {
                let waited = human_delay(self.options.answer_timeout);
                tracing::warn!("--proc: no answer within {waited} for {}", request.url);
                Decision::deny_with(
                    DenyReason::EngineTimeout,
                    format!("the --proc rule did not answer within {waited}"),
                )
            }
        }
    }

    /// Closes the processor's stdin, waits up to 1 s for it to exit, then kills its process
    /// group. Pending requests are denied. Idempotent.
    pub async fn stop(&self) {
        let control = match self.control.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let Some(Control { stop, owner }) = control else {
            return;
        };
        let _ = stop.send(());
        let abort = owner.abort_handle();
        // The owner needs at most STOP_GRACE plus a kill; never wait much longer than that.
        if tokio::time::timeout(STOP_GRACE * 3, owner).await.is_err() {
            // Dropping the owner's state kills the process group (RuleChild's Drop).
            abort.abort();
        }
    }
}

fn stopped() -> Decision {
    Decision::deny_with(DenyReason::EngineError, "the --proc rule is stopped")
}

/// The processor currently running.
#[derive(Debug)]
struct Running {
    child: RuleChild,
    /// `None` once we closed it.
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    started: Instant,
}

impl Running {
    fn spawn(program: &Program) -> io::Result<Self> {
        let mut cmd = program.command();
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = RuleChild::spawn(&mut cmd)?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.take_stdin(), child.take_stdout(), child.take_stderr())
        else {
            return Err(io::Error::other("the processor's pipes are missing"));
        };
        // Ends by itself at EOF, when the process group is gone.
        tokio::spawn(forward_stderr(stderr));
        Ok(Self {
            child,
            stdin: Some(stdin),
            stdout,
            started: Instant::now(),
        })
    }
}

/// A request written to the processor, waiting for its line.
#[derive(Debug)]
struct Slot {
    reply: oneshot::Sender<Decision>,
    deadline: Instant,
}

/// Why a processor is being replaced.
#[derive(Debug)]
enum Death {
    /// Its exit was observed.
    Exited,
    /// Its stdout reached EOF (or failed).
    StdoutClosed,
    /// Writing a request failed (EPIPE: it no longer reads).
    StdinClosed(io::Error),
    /// Its oldest request is long overdue.
    Hung,
}

/// What woke the owner.
#[derive(Debug)]
enum Event {
    Stop,
    Job(Job),
    Read(io::Result<usize>),
    Written(io::Result<usize>),
    Exited,
    Restart,
    Hung,
}

/// The task that owns the processor. Everything below runs on it alone.
#[derive(Debug)]
struct Owner {
    program: Program,
    answer_timeout: Duration,
    running: Option<Running>,
    /// When the next processor starts; `Some` exactly while none runs.
    restart_at: Option<Instant>,
    backoff: Duration,
    /// Requests that arrived while no processor ran.
    waiting: VecDeque<Job>,
    /// Requests written (or being written) to the running processor, oldest first.
    in_flight: VecDeque<Slot>,
    /// Bytes for the processor's stdin; `unwritten[written..]` is still to be written.
    unwritten: Vec<u8>,
    written: usize,
    lines: LineSplitter,
    read_buf: Box<[u8]>,
}

impl Owner {
    fn new(program: Program, options: ProcessorOptions, first: Running) -> Self {
        Self {
            program,
            answer_timeout: options.answer_timeout,
            running: Some(first),
            restart_at: None,
            backoff: INITIAL_BACKOFF,
            waiting: VecDeque::new(),
            in_flight: VecDeque::new(),
            unwritten: Vec::with_capacity(4096),
            written: 0,
            lines: LineSplitter::new(MAX_ANSWER_LINE),
            read_buf: vec![0; 16 * 1024].into_boxed_slice(),
        }
    }

    async fn run(mut self, mut jobs: mpsc::Receiver<Job>, mut stop: oneshot::Receiver<()>) {
        loop {
            let accepting = self.unwritten.len() - self.written < MAX_UNWRITTEN;
            let hung_at = self
                .in_flight
                .front()
                .map(|slot| slot.deadline + self.answer_timeout);
            let (stdin, stdout, child) = match self.running.as_mut() {
                Some(r) => (r.stdin.as_mut(), Some(&mut r.stdout), Some(&r.child)),
                None => (None, None, None),
            };
            // Answers first, then deaths, then new requests, then writes: a reply never waits
            // behind new work, and requests taken together are written with one syscall.
            let event = tokio::select! {
                biased;
                _ = &mut stop => Event::Stop,
                read = read_some(stdout, &mut self.read_buf) => Event::Read(read),
                () = exited(child) => Event::Exited,
                job = jobs.recv(), if accepting => job.map_or(Event::Stop, Event::Job),
                written = write_some(stdin, &self.unwritten[self.written..]) => Event::Written(written),
                () = sleep_until(self.restart_at) => Event::Restart,
                () = sleep_until(hung_at) => Event::Hung,
            };
            match event {
                Event::Stop => {
                    self.shutdown(&mut jobs).await;
                    return;
                }
                Event::Job(job) => {
                    self.accept(job);
                    while self.unwritten.len() - self.written < MAX_UNWRITTEN {
                        match jobs.try_recv() {
                            Ok(job) => self.accept(job),
                            Err(_) => break,
                        }
                    }
                }
                Event::Read(Ok(0)) | Event::Read(Err(_)) => self.died(Death::StdoutClosed).await,
                Event::Read(Ok(n)) => self.take_answers(n),
                Event::Written(Ok(0)) => {
                    let e = io::Error::from(io::ErrorKind::WriteZero);
                    self.died(Death::StdinClosed(e)).await;
                }
                Event::Written(Ok(n)) => {
                    self.written += n;
                    if self.written == self.unwritten.len() {
                        self.unwritten.clear();
                        self.written = 0;
                    }
                }
                Event::Written(Err(e)) => self.died(Death::StdinClosed(e)).await,
                Event::Exited => self.died(Death::Exited).await,
                Event::Restart => self.restart(),
                Event::Hung => {
                    let now = Instant::now();
                    if self
                        .in_flight
                        .front()
                        .is_some_and(|slot| now >= slot.deadline + self.answer_timeout)
                    {
                        self.died(Death::Hung).await;
                    }
                }
            }
        }
    }

    /// Takes a new request: to the processor, to the waiting list, or denied.
    fn accept(&mut self, job: Job) {
        if job.reply.is_closed() {
            // Its evaluation already gave up (deadline, cancelled connection).
            return;
        }
        if self.in_flight.len() + self.waiting.len() >= MAX_PENDING {
            let _ = job.reply.send(Decision::deny_with(
                DenyReason::EngineError,
                "too many requests are waiting for the --proc rule",
            ));
            return;
        }
        if self.running.is_some() {
            self.send(job);
        } else if self.restart_at.is_some_and(|at| at >= job.deadline) {
            let _ = job.reply.send(restarting());
        } else {
            self.waiting.push_back(job);
        }
    }

    fn send(&mut self, job: Job) {
        self.unwritten.extend_from_slice(&job.line);
        self.in_flight.push_back(Slot {
            reply: job.reply,
            deadline: job.deadline,
        });
    }

    /// Applies the lines completed by the `n` bytes just read, in order.
    fn take_answers(&mut self, n: usize) {
        let Self {
            lines,
            in_flight,
            read_buf,
            program,
            ..
        } = self;
        lines.feed(&read_buf[..n], |piece| {
            let Some(slot) = in_flight.pop_front() else {
                tracing::warn!(
                    "--proc `{}` printed a line while no request was waiting; ignored it",
                    program.display()
                );
                return;
            };
            if slot.reply.is_closed() {
                // A late answer: it is consumed by the request it belongs to (which already
                // timed out) and never applied to another one.
                tracing::debug!("--proc: dropped a late answer");
                return;
            }
            let decision = match piece {
                Piece::Line(line) => {
                    answer::decide(&Answer::from_line(&String::from_utf8_lossy(line)))
                }
                Piece::Overlong(_) => Decision::deny_with(
                    DenyReason::InvalidAnswer,
                    format!(
                        "the --proc answer is longer than {} KiB",
                        MAX_ANSWER_LINE / 1024
                    ),
                ),
            };
            let _ = slot.reply.send(decision);
        });
    }

    /// Replaces a processor that exited, closed a pipe or hung: reads what it printed, kills
    /// its group, denies what is left in flight, schedules the restart.
    async fn died(&mut self, death: Death) {
        let Some(mut running) = self.running.take() else {
            return;
        };
        drop(running.stdin.take());
        // Usually it is already exiting: give it a moment, so we report its own status.
        let exited_itself = !matches!(death, Death::Hung)
            && tokio::time::timeout(EXIT_GRACE, running.child.exited())
                .await
                .is_ok();
        running.child.kill_group();
        // Answers printed before it died still count. Every writer is dead now, so EOF is
        // prompt unless a process escaped the group; the grace bounds that case.
        let _ = tokio::time::timeout(EXIT_GRACE, async {
            loop {
                match running.stdout.read(&mut self.read_buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => self.take_answers(n),
                }
            }
        })
        .await;
        let status = match tokio::time::timeout(EXIT_GRACE, running.child.reap()).await {
            Ok(Ok(status)) => status.to_string(),
            Ok(Err(e)) => format!("cannot wait for it: {e}"),
            Err(_) => "still not reaped after SIGKILL".to_owned(),
        };
        // A line cut short by the death is not an answer.
        self.lines.reset();
        self.unwritten.clear();
        self.written = 0;
        let denial = match death {
            Death::Hung => Decision::deny_with(
                DenyReason::EngineTimeout,
                "the --proc rule stopped answering and was restarted",
            ),
            _ => Decision::deny_with(
                DenyReason::EngineError,
                "the --proc rule exited before answering",
            ),
        };
        for slot in self.in_flight.drain(..) {
            let _ = slot.reply.send(denial.clone());
        }
        let delay = self.next_delay(Some(running.started));
        let command = self.program.display();
        let delay_text = human_delay(delay);
        match death {
            _ if exited_itself => {
                tracing::warn!("--proc `{command}` exited ({status}); restarting in {delay_text}");
            }
            Death::Hung => tracing::warn!(
                "--proc `{command}` has not answered for {}; killed it; restarting in {delay_text}",
                human_delay(self.answer_timeout * 2)
            ),
            Death::StdinClosed(e) => tracing::warn!(
                "--proc `{command}` stopped reading requests ({e}); killed it ({status}); restarting in {delay_text}"
            ),
            Death::Exited | Death::StdoutClosed => tracing::warn!(
                "--proc `{command}` closed its output; killed it ({status}); restarting in {delay_text}"
            ),
        }
        self.schedule_restart(delay);
    }

    fn restart(&mut self) {
        self.restart_at = None;
        match Running::spawn(&self.program) {
            Ok(running) => {
                self.running = Some(running);
                let now = Instant::now();
                for job in std::mem::take(&mut self.waiting) {
                    if !job.reply.is_closed() && job.deadline > now {
                        self.send(job);
                    }
                }
            }
            Err(e) => {
                let delay = self.next_delay(None);
                tracing::warn!(
                    "--proc: cannot start `{}` again: {e}; retrying in {}",
                    self.program.display(),
                    human_delay(delay)
                );
                self.schedule_restart(delay);
            }
        }
    }

    fn schedule_restart(&mut self, delay: Duration) {
        let at = Instant::now() + delay;
        self.restart_at = Some(at);
        // Who cannot be served before their deadline is told now rather than left waiting.
        let (keep, deny): (VecDeque<Job>, VecDeque<Job>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|job| job.deadline > at);
        self.waiting = keep;
        for job in deny {
            let _ = job.reply.send(restarting());
        }
    }

    /// The delay before the next start: doubles after each quick death, resets after a healthy
    /// run.
    fn next_delay(&mut self, started: Option<Instant>) -> Duration {
        if started.is_some_and(|s| s.elapsed() >= HEALTHY_AFTER) {
            self.backoff = INITIAL_BACKOFF;
        }
        let delay = self.backoff;
        self.backoff = (delay * 2).min(MAX_BACKOFF);
        delay
    }

    async fn shutdown(&mut self, jobs: &mut mpsc::Receiver<Job>) {
        jobs.close();
        let stopping = || Decision::deny_with(DenyReason::EngineError, "httpjail is stopping");
        for slot in self.in_flight.drain(..) {
            let _ = slot.reply.send(stopping());
        }
        for job in self.waiting.drain(..) {
            let _ = job.reply.send(stopping());
        }
        while let Ok(job) = jobs.try_recv() {
            let _ = job.reply.send(stopping());
        }
        if let Some(mut running) = self.running.take() {
            // EOF on stdin is how a processor learns to finish (`for line in sys.stdin`).
            drop(running.stdin.take());
            let _ = tokio::time::timeout(STOP_GRACE, running.child.exited()).await;
            running.child.kill_group();
            let _ = tokio::time::timeout(EXIT_GRACE, running.child.reap()).await;
        }
    }
}

fn restarting() -> Decision {
    Decision::deny_with(
        DenyReason::EngineError,
        "the --proc rule is restarting after it exited",
    )
}

async fn read_some(stdout: Option<&mut ChildStdout>, buf: &mut [u8]) -> io::Result<usize> {
    match stdout {
        Some(stdout) => stdout.read(buf).await,
        None => std::future::pending().await,
    }
}

async fn write_some(stdin: Option<&mut ChildStdin>, data: &[u8]) -> io::Result<usize> {
    match stdin {
        Some(stdin) if !data.is_empty() => stdin.write(data).await,
        _ => std::future::pending().await,
    }
}

async fn exited(child: Option<&RuleChild>) {
    match child {
        Some(child) => child.exited().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::super::program::testing::{alive, poll_pid_file, wait_gone};
    use super::*;
    use std::path::Path;
    use std::sync::Arc;

    /// A processor that behaves like the Python example of the reference documentation.
    const DOCS_PYTHON: &str = include_str!("../../tests/fixtures/docs_filter.py");

    fn request(host: &str) -> RuleRequest {
        RuleRequest::from_url(
            "GET",
            &format!("https://{host}/p"),
            RuleRequest::local_requester(),
        )
        .unwrap()
    }

    async fn start(cmd: &str, answer_timeout: Duration) -> LineProcessor {
        LineProcessor::start(cmd, ProcessorOptions { answer_timeout })
            .await
            .unwrap()
    }

    fn script(dir: &Path, name: &str, body: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.to_str().unwrap().to_owned()
    }

    /// A processor that answers by host: `allow.test` true, `deny.test` false,
    /// `limit.test` a max_tx_bytes object, `msg.test` a deny_message, anything else "nope".
    const BY_HOST: &str = r#"while IFS= read -r line; do
  case "$line" in
    *'"host":"allow.test"'*) echo true ;;
    *'"host":"deny.test"'*) echo false ;;
    *'"host":"limit.test"'*) echo '{"allow": {"max_tx_bytes": 1024}}' ;;
    *'"host":"msg.test"'*) echo '{"allow": false, "deny_message": "Social media blocked"}' ;;
    *'"host":"string.test"'*) echo '"true"' ;;
    *) echo nope ;;
  esac
done"#;

    #[tokio::test]
    async fn answers_follow_the_shared_table() {
        let p = start(BY_HOST, Duration::from_secs(5)).await;
        assert_eq!(p.evaluate(&request("allow.test")).await, Decision::ALLOW);
        assert_eq!(
            p.evaluate(&request("deny.test")).await,
            Decision::deny(DenyReason::Rule)
        );
        assert_eq!(
            p.evaluate(&request("limit.test")).await,
            Decision::Allow {
                max_tx_bytes: Some(1024)
            }
        );
        assert_eq!(
            p.evaluate(&request("msg.test")).await,
            Decision::deny_with(DenyReason::Rule, "Social media blocked")
        );
        assert_eq!(p.evaluate(&request("string.test")).await, Decision::ALLOW);
        assert_eq!(
            p.evaluate(&request("other.test")).await,
            Decision::deny_with(DenyReason::Rule, "nope")
        );
        p.stop().await;
    }

    #[tokio::test]
    async fn the_request_is_one_json_line_with_every_field() {
        // `head -n1` echoes the first line back as the deny message (it is JSON, but not an
        // answer object, so it is an invalid answer carrying no message): use sed to quote it.
        let p = start(
            r#"while IFS= read -r line; do printf '%s\n' "$line" | sed 's/"/~/g'; done"#,
            Duration::from_secs(5),
        )
        .await;
        let r = RuleRequest::from_url(
            "POST",
            "http://API.example.com:8080/v1/x?q=1",
            "10.1.2.3".parse().unwrap(),
        )
        .unwrap();
        let Decision::Deny {
            message: Some(m), ..
        } = p.evaluate(&r).await
        else {
            panic!("expected the echoed line as a message");
        };
        let json: serde_json::Value = serde_json::from_str(&m.replace('~', "\"")).unwrap();
        assert_eq!(json, serde_json::to_value(&r).unwrap());
        assert_eq!(json["host"], "api.example.com");
        assert_eq!(json["port"], 8080);
        assert_eq!(json["requester_ip"], "10.1.2.3");
        p.stop().await;
    }

    #[tokio::test]
    async fn the_python_processor_of_the_docs_works() {
        let dir = tempfile::tempdir().unwrap();
        let path = script(dir.path(), "filter.py", DOCS_PYTHON);
        let p = start(&path, Duration::from_secs(10)).await;
        assert_eq!(p.evaluate(&request("github.com")).await, Decision::ALLOW);
        assert_eq!(
            p.evaluate(&request("uploads.example.com")).await,
            Decision::Allow {
                max_tx_bytes: Some(1024)
            }
        );
        assert_eq!(
            p.evaluate(&request("evil.test")).await,
            Decision::deny_with(DenyReason::Rule, "evil.test not allowed")
        );
        p.stop().await;
    }

    #[tokio::test]
    async fn garbage_denies_with_the_text_and_non_utf8_is_lossy() {
        let p = start(
            r#"while read -r l; do printf 'hello \377world\n'; done"#,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(
            p.evaluate(&request("a.test")).await,
            Decision::deny_with(DenyReason::Rule, "hello \u{fffd}world")
        );
        p.stop().await;
    }

    #[tokio::test]
    async fn an_overlong_line_denies_and_keeps_the_order() {
        // First answer: 100 KiB of `x` (then true would be the tail); second answer: true.
        let p = start(
            r#"read -r l; head -c 102400 /dev/zero | tr '\0' x; echo true; read -r l; echo true; cat >/dev/null"#,
            Duration::from_secs(5),
        )
        .await;
        let first = p.evaluate(&request("a.test")).await;
        assert_eq!(first.reason(), Some(DenyReason::InvalidAnswer), "{first:?}");
        assert_eq!(p.evaluate(&request("b.test")).await, Decision::ALLOW);
        p.stop().await;
    }

    #[tokio::test]
    async fn a_processor_that_never_answers_is_a_timeout() {
        let p = start("cat >/dev/null", Duration::from_millis(200)).await;
        let started = std::time::Instant::now();
        let d = p.evaluate(&request("a.test")).await;
        assert_eq!(d.reason(), Some(DenyReason::EngineTimeout), "{d:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        p.stop().await;
    }

    #[tokio::test]
    async fn a_late_answer_is_never_applied_to_the_next_request() {
        // It answers `true` to the first request after 1.5 s (too late), then `false` to all.
        let p = start(
            "read -r l; sleep 1.5; echo true; while read -r l; do echo false; done",
            Duration::from_secs(1),
        )
        .await;
        let first = p.evaluate(&request("a.test")).await;
        assert_eq!(first.reason(), Some(DenyReason::EngineTimeout), "{first:?}");
        // Sent while the late `true` is still to come: it must get its own `false`.
        let second = p.evaluate(&request("b.test")).await;
        assert_eq!(second, Decision::deny(DenyReason::Rule));
        assert_eq!(
            p.evaluate(&request("c.test")).await,
            Decision::deny(DenyReason::Rule)
        );
        p.stop().await;
    }

    #[tokio::test]
    async fn a_hung_processor_is_restarted() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        // The first instance hangs on its first request; later ones answer.
        let cmd = format!(
            "echo $$ >> {p}; if [ $(wc -l < {p}) -eq 1 ]; then read -r l; exec sleep 60; fi; while read -r l; do echo true; done",
            p = pids.display()
        );
        let p = start(&cmd, Duration::from_millis(200)).await;
        let d = p.evaluate(&request("a.test")).await;
        assert_eq!(d.reason(), Some(DenyReason::EngineTimeout));
        let first = poll_pid_file(&pids).await;
        // Hung after 2 x 200 ms, restarted after 100 ms: poll until answered.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if p.evaluate(&request("b.test")).await == Decision::ALLOW {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never restarted");
        }
        wait_gone(first).await;
        p.stop().await;
    }

    #[tokio::test]
    async fn a_processor_that_exits_at_once_is_a_prompt_deny() {
        let p = start("exit 3", Duration::from_secs(5)).await;
        for _ in 0..3 {
            let started = std::time::Instant::now();
            let d = p.evaluate(&request("a.test")).await;
            assert!(!d.is_allow());
            assert_eq!(d.reason(), Some(DenyReason::EngineError), "{d:?}");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{:?}",
                started.elapsed()
            );
        }
        p.stop().await;
    }

    #[tokio::test]
    async fn a_processor_that_closed_stdin_does_not_kill_us() {
        // Writing to it fails with EPIPE; that must be a deny, not SIGPIPE. The marker file
        // tells us stdin is closed before we write, so the write cannot land in the pipe first.
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("closed");
        let cmd = format!("exec 0<&-; echo $$ > {}; sleep 30", marker.display());
        let p = start(&cmd, Duration::from_secs(5)).await;
        poll_pid_file(&marker).await;
        let started = std::time::Instant::now();
        let d = p.evaluate(&request("a.test")).await;
        assert_eq!(d.reason(), Some(DenyReason::EngineError), "{d:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        p.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_processor_is_restarted_and_in_flight_requests_denied() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let path = script(
            dir.path(),
            "proc.sh",
            &format!(
                "#!/bin/sh\necho $$ > {}\nwhile IFS= read -r line; do\n  case \"$line\" in *slow*) sleep 30 ;; esac\n  echo true\ndone\n",
                pidfile.display()
            ),
        );
        let p = Arc::new(start(&path, Duration::from_secs(10)).await);
        assert_eq!(p.evaluate(&request("a.test")).await, Decision::ALLOW);
        let first = poll_pid_file(&pidfile).await;
        std::fs::remove_file(&pidfile).unwrap();

        let in_flight = tokio::spawn({
            let p = p.clone();
            async move { p.evaluate(&request("slow.test")).await }
        });
        // Wait until the processor is inside `sleep` (its child), then SIGKILL it.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !has_child(first) {
            assert!(std::time::Instant::now() < deadline, "never got busy");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(first),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let started = std::time::Instant::now();
        let d = in_flight.await.unwrap();
        assert_eq!(d.reason(), Some(DenyReason::EngineError), "{d:?}");
        assert!(started.elapsed() < Duration::from_secs(3));

        // Restarted: a new process, answering again.
        assert_eq!(p.evaluate(&request("b.test")).await, Decision::ALLOW);
        let second = poll_pid_file(&pidfile).await;
        assert_ne!(first, second);
        p.stop().await;
        wait_gone(second).await;
    }

    fn has_child(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .is_ok_and(|c| !c.trim().is_empty())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_requests_get_their_own_answers() {
        // The answer names the request's host, so any mix-up would show.
        let p = Arc::new(
            start(
                r#"python3 -u -c 'import sys, json
for line in sys.stdin:
    print(json.dumps({"deny_message": json.loads(line)["host"]}))'"#,
                Duration::from_secs(20),
            )
            .await,
        );
        let tasks: Vec<_> = (0..300)
            .map(|i| {
                let p = p.clone();
                tokio::spawn(async move {
                    let host = format!("h{i}.test");
                    (p.evaluate(&request(&host)).await, host)
                })
            })
            .collect();
        for t in tasks {
            let (d, host) = t.await.unwrap();
            assert_eq!(d, Decision::deny_with(DenyReason::Rule, host));
        }
        p.stop().await;
    }

    #[tokio::test]
    async fn stop_leaves_no_process_behind() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("main");
        let bg = dir.path().join("bg");
        // It ignores EOF and TERM and has a background child: stop must still clean up.
        let cmd = format!(
            "trap '' TERM; sleep 60 & echo $! > {bg}; echo $$ > {main}; while :; do sleep 1; done",
            bg = bg.display(),
            main = main.display()
        );
        let p = start(&cmd, Duration::from_secs(5)).await;
        let (main, bg) = (poll_pid_file(&main).await, poll_pid_file(&bg).await);
        assert!(alive(main) && alive(bg));
        let started = std::time::Instant::now();
        p.stop().await;
        assert!(started.elapsed() < Duration::from_secs(3));
        wait_gone(main).await;
        wait_gone(bg).await;
        // Stopped: later evaluations deny at once, and stop is idempotent.
        assert_eq!(
            p.evaluate(&request("a.test")).await.reason(),
            Some(DenyReason::EngineError)
        );
        p.stop().await;
    }

    #[tokio::test]
    async fn a_well_behaved_processor_exits_on_eof_without_being_killed() {
        let dir = tempfile::tempdir().unwrap();
        let done = dir.path().join("done");
        let cmd = format!(
            "while read -r l; do echo true; done; echo clean > {}",
            done.display()
        );
        let p = start(&cmd, Duration::from_secs(5)).await;
        assert_eq!(p.evaluate(&request("a.test")).await, Decision::ALLOW);
        p.stop().await;
        assert_eq!(std::fs::read_to_string(&done).unwrap().trim(), "clean");
    }

    #[tokio::test]
    async fn dropping_the_engine_kills_the_processor() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let cmd = format!("echo $$ > {}; exec sleep 60", pidfile.display());
        let p = start(&cmd, Duration::from_secs(5)).await;
        let pid = poll_pid_file(&pidfile).await;
        drop(p);
        wait_gone(pid).await;
    }

    #[tokio::test]
    async fn requests_while_it_keeps_dying_are_denied_within_their_deadline() {
        let p = start("exit 1", Duration::from_millis(300)).await;
        for _ in 0..8 {
            let started = std::time::Instant::now();
            let d = p.evaluate(&request("a.test")).await;
            assert!(!d.is_allow(), "{d:?}");
            assert!(started.elapsed() < Duration::from_secs(1));
        }
        p.stop().await;
    }

    #[tokio::test]
    async fn a_missing_program_is_an_error_at_start() {
        let e = LineProcessor::start(
            "/nonexistent/filter.py",
            ProcessorOptions {
                answer_timeout: Duration::from_secs(1),
            },
        )
        .await
        .unwrap_err();
        assert!(
            matches!(e, Error::ProgramNotFound { flag: "--proc", .. }),
            "{e}"
        );
    }
}
