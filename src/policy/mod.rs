//! Policy as code: `httpjail replay` and `httpjail learn` (SPEC section 10), on top of the JSON
//! request log (`crate::request_log::Record`, whose serde form is the stable log format).
//!
//! - [`records`]: reading a log back, line by line, into the requests a rule saw (untrusted
//!   input: every bad line is skipped with its line number, never guessed at).
//! - [`replay`]: every recorded request decided again by a rule through
//!   [`RuleEngine::evaluate`], the code the proxy uses; flips counted and listed.
//! - [`report`]: the replay report as text or as one JSON document.
//! - [`generalize`], [`learn`], [`render`]: from the allowed requests to path prefixes per
//!   host, to a [`learn::Policy`], to a reviewable JS rule for `--js-file`.
//!
//! This module only reads the log and writes stdout (the report, the rule) and stderr
//! (warnings). It never contacts the network and never changes the log. Exit codes: `replay`
//! 0 when nothing flipped, 1 when something did; both 125 on errors (unreadable log, a rule
//! that does not load, a log with no usable line).

pub mod generalize;
pub mod learn;
pub mod records;
pub mod render;
pub mod replay;
pub mod report;

use std::fs::File;
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};

use crate::cli::ReplayFormat;
use crate::config::Config;
use crate::error::{self, exit_code};
use crate::rules::RuleEngine;
use records::{LineReader, Skipped};

/// What stops `replay` or `learn` (exit 125).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{command}: cannot read the log `{path}`")]
    ReadLog {
        command: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{command}: no line of `{path}` is a record of the JSON request log ({lines} line(s) skipped; see the warnings above)"
    )]
    NothingUsable {
        command: &'static str,
        path: PathBuf,
        lines: usize,
    },
    #[error("{command}: cannot write to stdout")]
    Stdout {
        command: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("replay: an internal task failed")]
    Task(#[source] tokio::task::JoinError),
}

impl Error {
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::NothingUsable { .. } => Some(
                "record a run with --request-log PATH --request-log-format json, then pass PATH",
            ),
            _ => None,
        }
    }
}

impl From<Error> for error::Error {
    fn from(e: Error) -> Self {
        let mut text = error::render_inline(&e);
        if let Some(hint) = e.hint() {
            text.push_str("\nhttpjail: hint: ");
            text.push_str(hint);
        }
        Self::Message(text)
    }
}

fn open(command: &'static str, path: &Path) -> Result<BufReader<File>, Error> {
    let read_error = |source| Error::ReadLog {
        command,
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    // A directory opens fine on Linux and fails on the first read; say so now.
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(read_error(io::Error::new(
            io::ErrorKind::IsADirectory,
            "it is a directory",
        )));
    }
    Ok(BufReader::with_capacity(256 * 1024, file))
}

/// Reports a skipped line on stderr when it is a problem with the log (malformed,
/// inconsistent); unparsed traffic is only counted.
fn warn_skipped(path: &Path, skipped: &Skipped) {
    if skipped.kind.is_problem() {
        eprintln!(
            "httpjail: warning: {}:{}: {} (line skipped)",
            records::escape_controls(&path.display().to_string(), None),
            skipped.line,
            skipped.detail
        );
    }
}

fn write_stdout(command: &'static str, text: &str) -> Result<(), Error> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|source| Error::Stdout { command, source })
}

/// `httpjail replay RULE LOG`: returns the exit code (0 nothing flipped, 1 flips).
pub async fn run_replay(
    config: &Config,
    log: &Path,
    format: ReplayFormat,
) -> Result<i32, error::Error> {
    let input = open("replay", log)?;
    let engine = RuleEngine::start(config).await?;
    let settings = replay::Settings::for_rule(&config.rule);
    let outcome = replay::replay(&engine, input, settings, |s| warn_skipped(log, s)).await;
    engine.shutdown().await;
    let report = outcome.map_err(|e| match e {
        replay::Error::Read(source) => Error::ReadLog {
            command: "replay",
            path: log.to_owned(),
            source,
        },
        replay::Error::Task(e) => Error::Task(e),
    })?;
    if report.lines > 0 && report.problem_lines() == report.lines {
        return Err(Error::NothingUsable {
            command: "replay",
            path: log.to_owned(),
            lines: report.lines,
        }
        .into());
    }
    let context = report::Context {
        log: &log.display().to_string(),
        rule: &report::describe_rule(&config.rule),
    };
    let text = match format {
        ReplayFormat::Text => report::text(&report, &context),
        ReplayFormat::Json => report::json(&report, &context),
    };
    write_stdout("replay", &text)?;
    Ok(if report.flip_count() == 0 {
        exit_code::SUCCESS
    } else {
        exit_code::DENIED
    })
}

/// `httpjail learn LOG`: prints the rule; returns the exit code (0).
pub fn run_learn(log: &Path) -> Result<i32, error::Error> {
    let input = open("learn", log)?;
    let mut reader = LineReader::new(input);
    let mut learner = learn::Learner::new();
    let read_error = |source| Error::ReadLog {
        command: "learn",
        path: log.to_owned(),
        source,
    };
    loop {
        let chunk = reader.read_chunk(1024).map_err(read_error)?;
        if chunk.is_empty() {
            break;
        }
        for (number, line) in chunk.lines() {
            let entry = records::parse_line(number, line);
            if let records::Entry::Skipped(skipped) = &entry {
                warn_skipped(log, skipped);
            }
            learner.add(entry);
        }
    }
    let policy = learner.finish();
    let stats = &policy.stats;
    if stats.lines > 0 && stats.bad_lines == stats.lines {
        return Err(Error::NothingUsable {
            command: "learn",
            path: log.to_owned(),
            lines: stats.lines,
        }
        .into());
    }
    if policy.sites.is_empty() {
        eprintln!(
            "httpjail: warning: learn: `{}` shows no allowed request; the rule denies everything",
            records::shown(&log.display().to_string())
        );
    }
    let today = crate::request_log::now_rfc3339();
    let source = log.display().to_string();
    let rule = render::render(
        &policy,
        &render::Header {
            source: &source,
            generated: today.get(..10).unwrap_or(&today),
        },
    );
    write_stdout("learn", &rule)?;
    Ok(exit_code::SUCCESS)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::learn::{Learner, Policy};
    use super::records::{Line, parse_line};
    use super::replay::{Settings, replay};
    use crate::config::RuleSource;
    use crate::request_log::Record;
    use crate::rules::{Decision, DenyReason, RuleEngine, RuleRequest};

    /// A log with ids, hashes, uploads, crowded hosts, odd paths, ports, and denials.
    fn log() -> String {
        let mut records = Vec::new();
        let mut add = |method: &str, url: &str, decision: Decision, bytes_up: u64| {
            let request =
                RuleRequest::from_url(method, url, RuleRequest::local_requester()).unwrap();
            let mut r = Record::for_request(&request, &decision);
            r.bytes_up = bytes_up;
            records.push(r.json_line());
        };
        for i in 0..60u64 {
            add(
                "GET",
                &format!("https://registry.test/pkg{i}"),
                Decision::ALLOW,
                200 + i,
            );
            add(
                "GET",
                &format!("https://registry.test/-/pkg{i}-1.0.{i}.tgz"),
                Decision::ALLOW,
                210,
            );
        }
        for i in 0..30u64 {
            add(
                "GET",
                &format!("https://api.test/users/{}/repos/{:040x}", i * 7919, i * 31),
                Decision::ALLOW,
                300,
            );
            add(
                "PATCH",
                &format!("https://api.test/issues/{i}"),
                Decision::ALLOW,
                900 + i * 100,
            );
        }
        add(
            "PUT",
            "http://127.0.0.1:8081/up/a\"b\\c*/d",
            Decision::ALLOW,
            1 << 20,
        );
        add("GET", "http://127.0.0.1:8081/", Decision::ALLOW, 90);
        add(
            "GET",
            "https://[::1]:8443/x/\u{2028}/y",
            Decision::ALLOW,
            90,
        );
        add(
            "GET",
            "https://evil.test/",
            Decision::deny(DenyReason::Rule),
            0,
        );
        add(
            "GET",
            "https://internal.test/",
            Decision::deny(DenyReason::PrivateAddress),
            0,
        );
        records.join("\n") + "\n"
    }

    fn learn(text: &str) -> Policy {
        let mut learner = Learner::new();
        for (i, line) in text.lines().enumerate() {
            learner.add(parse_line(i + 1, Line::Text(line)));
        }
        learner.finish()
    }

    fn engine(policy: Policy) -> RuleEngine {
        let policy = Arc::new(policy);
        RuleEngine::native(move |r| policy.decide(r))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_learned_policy_replays_the_log_without_flips() {
        let text = log();
        let policy = learn(&text);
        assert_eq!(policy.sites.len(), 4);
        let settings = Settings::for_rule(&RuleSource::None);
        let report = replay(&engine(policy.clone()), text.as_bytes(), settings, |_| {})
            .await
            .unwrap();
        assert_eq!(report.flip_count(), 0, "{:?}", report.flips);
        assert_eq!(report.allowed, report.recorded_allowed);
        assert_eq!(report.recorded_allowed, 183);
        assert_eq!(report.proxy_decided, 1);

        // Dropping one site flips exactly its requests.
        let mut without_api = policy;
        without_api.sites.retain(|s| s.host != "api.test");
        let report = replay(&engine(without_api), text.as_bytes(), settings, |_| {})
            .await
            .unwrap();
        assert_eq!(report.flipped_allow_to_deny, 60);
        assert_eq!(report.flipped_deny_to_allow, 0);
        assert!(
            report
                .flips
                .iter()
                .all(|f| f.url.starts_with("https://api.test/"))
        );
    }
}
