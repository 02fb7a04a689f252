//! `httpjail replay`: every recorded request decided again by a rule, and what flips.
//!
//! The log is read in chunks (one buffer each); each chunk is parsed, decided and summed up in
//! a task of its own, and the partial reports are merged in log order, so the report is the
//! same whatever the engine's speed. Records are allocated and freed on the task that parses
//! them; only flips and skipped lines travel back.
//! How much runs at once depends on the engine ([`Settings::for_rule`]): `--sh` starts a process
//! per request, so 16 at most are in flight; `--proc` is pipelined; JS and no rule are CPU-bound
//! and spread over the runtime's threads.
//!
//! # What is compared
//!
//! - A record the rule decided (allowed, or denied with reason `rule`, `no_rule`,
//!   `engine_error`, `engine_timeout`, `invalid_answer`) is compared with the rule's new
//!   decision; a difference is a flip. An allow whose `max_tx_bytes` is below the record's
//!   `bytes_up` counts as a deny (`tx_limit`): the proxy would have refused that request.
//! - A record one of the proxy's own checks denied (`private_address`, `domain_fronting`,
//!   `loop_detected`, `malformed_request`, `explicit_proxy_refused`, `secret_leak`, `tx_limit`)
//!   is decided again and listed with the new rule's verdict, but never counted as a flip: the
//!   same check would refuse it again whatever the rule says, and the log does not say what the
//!   rule had answered.
//! - Unparsed traffic (`method` `-`) never reached a rule: counted as skipped. Malformed and
//!   inconsistent lines are skipped and handed to the caller to report with their line number.
//!
//! This module decides through [`RuleEngine::evaluate`] only (the proxy's code) and prints
//! nothing; `super::report` renders the [`Report`].

use std::collections::VecDeque;
use std::io::{self, BufRead};

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use serde::Serialize;

use super::records::{Chunk, Entry, LineReader, Logged, Recorded, Skipped, parse_line};
use crate::config::RuleSource;
use crate::rules::{Decision, DenyReason, RuleEngine};

/// How the work is split. Every value is at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Lines per task.
    pub chunk_lines: usize,
    /// Tasks at once.
    pub chunks_in_flight: usize,
    /// Evaluations at once inside a task.
    pub per_chunk: usize,
}

impl Settings {
    /// The split that suits the engine of `rule`.
    pub fn for_rule(rule: &RuleSource) -> Self {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        match rule {
            // One process per request: 2 × 8 = 16 at most, enough to hide process start-up
            // without swamping a small machine.
            RuleSource::Shell { .. } => Self {
                chunk_lines: 32,
                chunks_in_flight: 2,
                per_chunk: 8,
            },
            // One process, ordered pipe: keep it busy without nearing its queue limit.
            RuleSource::LineProcessor { .. } => Self {
                chunk_lines: 256,
                chunks_in_flight: 4,
                per_chunk: 64,
            },
            // Decisions on the calling thread: parallel chunks, sequential inside.
            RuleSource::None | RuleSource::Js(_) => Self {
                chunk_lines: 1024,
                chunks_in_flight: threads * 2,
                per_chunk: 1,
            },
        }
    }

    fn sane(self) -> Self {
        Self {
            chunk_lines: self.chunk_lines.max(1),
            chunks_in_flight: self.chunks_in_flight.max(1),
            per_chunk: self.per_chunk.max(1),
        }
    }
}

/// `allow` or `deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Deny,
}

impl Verdict {
    fn of(allowed: bool) -> Self {
        if allowed { Self::Allow } else { Self::Deny }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

/// A request whose decision changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Flip {
    pub line: usize,
    pub method: String,
    pub url: String,
    /// The recorded decision.
    pub from: Verdict,
    /// The new decision.
    pub to: Verdict,
    /// The new deny reason (`to` = deny).
    pub reason: Option<String>,
    /// The new deny message, if the rule gave one (`to` = deny).
    pub message: Option<String>,
    /// The new allow's bound (`to` = allow).
    pub max_tx_bytes: Option<u64>,
    /// The recorded deny reason (`from` = deny).
    pub recorded_reason: Option<String>,
    /// The recorded deny message (`from` = deny).
    pub recorded_message: Option<String>,
}

/// A request the proxy itself refused in the recorded run, with the new rule's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyDecided {
    pub line: usize,
    pub method: String,
    pub url: String,
    /// The proxy check that refused it.
    pub reason: String,
    /// What the new rule answers for it.
    pub rule_now: Verdict,
    pub rule_now_reason: Option<String>,
    pub max_tx_bytes: Option<u64>,
}

/// Everything `replay` found. Counts are over the log's non-blank lines:
/// `lines` = `total` + `proxy_decided` + `skipped`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub lines: usize,
    /// Requests the rule decided in the recorded run, decided again.
    pub total: usize,
    /// Of `total`, allowed / denied by the new rule.
    pub allowed: usize,
    pub denied: usize,
    /// Of `total`, allowed / denied in the recorded run.
    pub recorded_allowed: usize,
    pub recorded_denied: usize,
    pub flipped_allow_to_deny: usize,
    pub flipped_deny_to_allow: usize,
    /// Requests the proxy's own checks denied (not compared).
    pub proxy_decided: usize,
    /// Lines that were not a usable request.
    pub skipped: usize,
    pub flips: Vec<Flip>,
    pub proxy_decided_requests: Vec<ProxyDecided>,
    pub skipped_lines: Vec<Skipped>,
}

impl Report {
    pub fn flip_count(&self) -> usize {
        self.flipped_allow_to_deny + self.flipped_deny_to_allow
    }

    /// Lines that were neither a request nor unparsed traffic.
    pub fn problem_lines(&self) -> usize {
        self.skipped_lines
            .iter()
            .filter(|s| s.kind.is_problem())
            .count()
    }

    /// Appends `later`, the report of the lines that follow.
    fn merge(&mut self, later: Self) {
        self.lines += later.lines;
        self.total += later.total;
        self.allowed += later.allowed;
        self.denied += later.denied;
        self.recorded_allowed += later.recorded_allowed;
        self.recorded_denied += later.recorded_denied;
        self.flipped_allow_to_deny += later.flipped_allow_to_deny;
        self.flipped_deny_to_allow += later.flipped_deny_to_allow;
        self.proxy_decided += later.proxy_decided;
        self.skipped += later.skipped;
        self.flips.extend(later.flips);
        self.proxy_decided_requests
            .extend(later.proxy_decided_requests);
        self.skipped_lines.extend(later.skipped_lines);
    }

    fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Blank => {}
            Outcome::Skipped(skipped) => {
                self.lines += 1;
                self.skipped += 1;
                self.skipped_lines.push(skipped);
            }
            Outcome::Decided(logged, now) => {
                self.lines += 1;
                self.add_decided(*logged, now);
            }
        }
    }

    fn add_decided(&mut self, logged: Logged, now: Decision) {
        let Logged {
            line,
            record,
            request,
            recorded,
        } = logged;
        let (now_reason, now_message, now_max) = match &now {
            Decision::Allow { max_tx_bytes } => (None, None, *max_tx_bytes),
            Decision::Deny { reason, message } => {
                (Some(reason.as_str().to_owned()), message.clone(), None)
            }
        };
        let to = Verdict::of(now.is_allow());
        if let Recorded::DeniedByProxy(reason) = recorded {
            self.proxy_decided += 1;
            self.proxy_decided_requests.push(ProxyDecided {
                line,
                method: request.method,
                url: request.url,
                reason: reason.as_str().to_owned(),
                rule_now: to,
                rule_now_reason: now_reason,
                max_tx_bytes: now_max,
            });
            return;
        }
        self.total += 1;
        let from = Verdict::of(recorded.is_allow());
        match from {
            Verdict::Allow => self.recorded_allowed += 1,
            Verdict::Deny => self.recorded_denied += 1,
        }
        match to {
            Verdict::Allow => self.allowed += 1,
            Verdict::Deny => self.denied += 1,
        }
        if from == to {
            return;
        }
        match from {
            Verdict::Allow => self.flipped_allow_to_deny += 1,
            Verdict::Deny => self.flipped_deny_to_allow += 1,
        }
        self.flips.push(Flip {
            line,
            method: request.method,
            url: request.url,
            from,
            to,
            reason: now_reason,
            message: now_message,
            max_tx_bytes: now_max,
            recorded_reason: record.reason,
            recorded_message: record.message,
        });
    }
}

/// What became of one line.
#[derive(Debug)]
enum Outcome {
    Blank,
    Skipped(Skipped),
    Decided(Box<Logged>, Decision),
}

/// Why replay stopped before the end of the log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the log failed")]
    Read(#[source] io::Error),
    #[error("a replay task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// Decides every request of `input` again with `engine`. `on_skip` is called, in log order,
/// for every skipped line (the caller reports the problems). Must run inside a tokio runtime;
/// reading `input` blocks the calling task, so call it from the runtime's own `block_on` (the
/// CLI) or a task that may block.
pub async fn replay<R: BufRead>(
    engine: &RuleEngine,
    input: R,
    settings: Settings,
    mut on_skip: impl FnMut(&Skipped),
) -> Result<Report, Error> {
    let settings = settings.sane();
    let mut reader = LineReader::new(input);
    let mut report = Report::default();
    let mut pending = VecDeque::new();
    let mut fold = |partial: Report, report: &mut Report| {
        for skipped in &partial.skipped_lines {
            on_skip(skipped);
        }
        report.merge(partial);
    };
    loop {
        let chunk = reader
            .read_chunk(settings.chunk_lines)
            .map_err(Error::Read)?;
        if chunk.is_empty() {
            break;
        }
        let done = chunk.len() < settings.chunk_lines;
        pending.push_back(tokio::spawn(decide_chunk(
            engine.clone(),
            chunk,
            settings.per_chunk,
        )));
        if pending.len() >= settings.chunks_in_flight
            && let Some(first) = pending.pop_front()
        {
            fold(first.await.map_err(Error::Task)?, &mut report);
        }
        if done {
            break;
        }
    }
    while let Some(task) = pending.pop_front() {
        fold(task.await.map_err(Error::Task)?, &mut report);
    }
    Ok(report)
}

/// Parses and decides one chunk, at most `in_flight` evaluations at once, and sums it up in
/// log order.
async fn decide_chunk(engine: RuleEngine, chunk: Chunk, in_flight: usize) -> Report {
    let mut report = Report::default();
    let mut lines = chunk.lines();
    let mut running = FuturesOrdered::new();
    loop {
        while running.len() < in_flight {
            let Some((number, line)) = lines.next() else {
                break;
            };
            // Parsed here, so the futures own their data and borrow only the engine.
            running.push_back(decide(&engine, parse_line(number, line)));
        }
        match running.next().await {
            Some(outcome) => report.add(outcome),
            None => break,
        }
    }
    report
}

async fn decide(engine: &RuleEngine, entry: Entry) -> Outcome {
    match entry {
        Entry::Blank => Outcome::Blank,
        Entry::Skipped(skipped) => Outcome::Skipped(skipped),
        Entry::Request(logged) => {
            let decision = engine.evaluate(&logged.request).await;
            let decision = with_size_limit(decision, logged.record.bytes_up);
            Outcome::Decided(logged, decision)
        }
    }
}

/// An allow whose `max_tx_bytes` is below what the recorded request sent is what the proxy
/// would have turned into a 413: a deny (`tx_limit`). `bytes_up` is measured exactly as the
/// limit is (request line, headers, body as sent upstream).
fn with_size_limit(decision: Decision, bytes_up: u64) -> Decision {
    match decision {
        Decision::Allow {
            max_tx_bytes: Some(max),
        } if bytes_up > max => Decision::deny_with(
            DenyReason::TxLimit,
            format!("the recorded request sent {bytes_up} bytes; max_tx_bytes is now {max}"),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request_log::Record;
    use crate::rules::RuleRequest;

    fn record(method: &str, url: &str, decision: &Decision) -> Record {
        let request = RuleRequest::from_url(method, url, RuleRequest::local_requester()).unwrap();
        Record::for_request(&request, decision)
    }

    fn log(records: &[Record]) -> String {
        records.iter().map(|r| r.json_line() + "\n").collect()
    }

    async fn run(engine: &RuleEngine, text: &str, settings: Settings) -> (Report, Vec<usize>) {
        let mut warned = Vec::new();
        let report = replay(engine, text.as_bytes(), settings, |s| {
            if s.kind.is_problem() {
                warned.push(s.line);
            }
        })
        .await
        .unwrap();
        (report, warned)
    }

    fn js_like() -> Settings {
        Settings::for_rule(&RuleSource::None)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flips_both_ways_are_listed_with_the_new_deny_message() {
        let text = log(&[
            record("GET", "https://a.test/", &Decision::ALLOW),
            record("GET", "https://b.test/", &Decision::ALLOW),
            record("GET", "https://c.test/", &Decision::deny(DenyReason::Rule)),
            record(
                "GET",
                "https://d.test/",
                &Decision::deny(DenyReason::NoRule),
            ),
        ]);
        let engine = RuleEngine::native(|r| match r.host.as_str() {
            "a.test" | "c.test" => Decision::ALLOW,
            _ => Decision::deny_with(DenyReason::Rule, "only a and c"),
        });
        let (report, warned) = run(&engine, &text, js_like()).await;
        assert!(warned.is_empty());
        assert_eq!(report.lines, 4);
        assert_eq!(report.total, 4);
        assert_eq!((report.recorded_allowed, report.recorded_denied), (2, 2));
        assert_eq!((report.allowed, report.denied), (2, 2));
        assert_eq!(report.flipped_allow_to_deny, 1);
        assert_eq!(report.flipped_deny_to_allow, 1);
        assert_eq!(report.flips.len(), 2);
        let b = &report.flips[0];
        assert_eq!((b.line, b.url.as_str()), (2, "https://b.test/"));
        assert_eq!((b.from, b.to), (Verdict::Allow, Verdict::Deny));
        assert_eq!(b.reason.as_deref(), Some("rule"));
        assert_eq!(b.message.as_deref(), Some("only a and c"));
        let c = &report.flips[1];
        assert_eq!((c.line, c.from, c.to), (3, Verdict::Deny, Verdict::Allow));
        assert_eq!(c.recorded_reason.as_deref(), Some("rule"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn output_is_in_log_order_whatever_the_engine_speed() {
        let records: Vec<Record> = (0..300)
            .map(|i| record("GET", &format!("https://h{i}.test/"), &Decision::ALLOW))
            .collect();
        let text = log(&records);
        // Later requests answer sooner: completion order is the reverse of log order.
        let engine = RuleEngine::native(|_| Decision::deny(DenyReason::Rule));
        let slow = RuleEngine::native(|r| {
            let n: u64 = r.host[1..r.host.len() - 5].parse().unwrap();
            std::thread::sleep(std::time::Duration::from_micros(300 - n));
            Decision::deny(DenyReason::Rule)
        });
        let settings = Settings {
            chunk_lines: 7,
            chunks_in_flight: 5,
            per_chunk: 3,
        };
        let (fast, _) = run(&engine, &text, settings).await;
        let (slow, _) = run(&slow, &text, settings).await;
        assert_eq!(fast, slow);
        let lines: Vec<usize> = fast.flips.iter().map(|f| f.line).collect();
        assert_eq!(lines, (1..=300).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_smaller_max_tx_bytes_than_what_was_sent_is_a_deny() {
        let mut big = record("POST", "https://up.test/x", &Decision::ALLOW);
        big.bytes_up = 5000;
        let mut small = record("POST", "https://up.test/y", &Decision::ALLOW);
        small.bytes_up = 4000;
        let text = log(&[big, small]);
        let engine = RuleEngine::native(|_| Decision::Allow {
            max_tx_bytes: Some(4000),
        });
        let (report, _) = run(&engine, &text, js_like()).await;
        assert_eq!(report.flipped_allow_to_deny, 1, "{report:?}");
        assert_eq!(report.flips[0].line, 1);
        assert_eq!(report.flips[0].reason.as_deref(), Some("tx_limit"));
        assert!(report.flips[0].message.as_deref().unwrap().contains("5000"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn proxy_decisions_are_listed_but_never_flips() {
        let text = log(&[
            record(
                "GET",
                "https://internal.test/",
                &Decision::deny(DenyReason::PrivateAddress),
            ),
            record(
                "POST",
                "https://up.test/",
                &Decision::deny(DenyReason::TxLimit),
            ),
            record("GET", "https://ok.test/", &Decision::ALLOW),
        ]);
        let engine = RuleEngine::native(|_| Decision::ALLOW);
        let (report, _) = run(&engine, &text, js_like()).await;
        assert_eq!(report.flip_count(), 0);
        assert_eq!(report.total, 1);
        assert_eq!(report.proxy_decided, 2);
        let p = &report.proxy_decided_requests[0];
        assert_eq!((p.line, p.reason.as_str()), (1, "private_address"));
        assert_eq!(p.rule_now, Verdict::Allow);
        assert_eq!(report.proxy_decided_requests[1].reason, "tx_limit");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn skipped_lines_are_counted_and_reported_in_order() {
        let ok = record("GET", "https://a.test/", &Decision::ALLOW).json_line();
        let unparsed = Record::unparsed(
            RuleRequest::local_requester(),
            "https",
            "x.test",
            443,
            DenyReason::MalformedRequest,
            "garbage",
        )
        .json_line();
        let text = format!("{ok}\n{{broken\n\n{unparsed}\n{ok}\n[1,2]\n");
        let engine = RuleEngine::native(|_| Decision::ALLOW);
        let (report, warned) = run(&engine, &text, js_like()).await;
        assert_eq!(warned, vec![2, 6]);
        assert_eq!(report.lines, 5, "the blank line is not counted");
        assert_eq!(report.total, 2);
        assert_eq!(report.skipped, 3);
        assert_eq!(report.problem_lines(), 2);
        let lines: Vec<usize> = report.skipped_lines.iter().map(|s| s.line).collect();
        assert_eq!(lines, vec![2, 4, 6]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_empty_log_is_an_empty_report() {
        let engine = RuleEngine::deny_all();
        let (report, _) = run(&engine, "", js_like()).await;
        assert_eq!(report, Report::default());
    }

    #[test]
    fn settings_bound_shell_parallelism() {
        let sh = Settings::for_rule(&RuleSource::Shell {
            command: "true".into(),
        });
        assert!(sh.chunks_in_flight * sh.per_chunk <= 16);
        let zero = Settings {
            chunk_lines: 0,
            chunks_in_flight: 0,
            per_chunk: 0,
        }
        .sane();
        assert_eq!(
            (zero.chunk_lines, zero.chunks_in_flight, zero.per_chunk),
            (1, 1, 1)
        );
    }
}
