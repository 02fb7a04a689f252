//! The request log (`--request-log`): one record per request, allowed or denied.
//!
//! Records are sent over a channel to a single writer thread, so concurrent requests never
//! interleave lines; the writer flushes whenever the channel is drained and when the log is
//! closed. Field names of the JSON format are a public, stable interface (SPEC sections 1, 10):
//! `replay` and `learn` read them back.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::cli::LogFormat;
use crate::rules::{Decision, DenyReason, RuleRequest};

/// One line of the JSON request log. Every field a rule sees, plus the outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// RFC 3339 UTC with milliseconds.
    pub time: String,
    /// `allow` or `deny`.
    pub decision: String,
    pub method: String,
    pub url: String,
    pub host: String,
    pub scheme: String,
    pub path: String,
    pub port: u16,
    pub requester_ip: String,
    /// The deny reason code (`rule`, `secret_leak`, …); `null` when allowed.
    pub reason: Option<String>,
    /// The rule's own deny message, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The HTTP status the client received (`null` when the connection failed before one).
    pub status: Option<u16>,
    /// Bytes of the request as sent upstream (request line, headers, body); 0 when denied.
    pub bytes_up: u64,
    /// Bytes of the response body received from upstream.
    pub bytes_down: u64,
    pub duration_ms: u64,
    /// The address the client connected to before redirection (strong jail), for the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_dst: Option<String>,
}

impl Record {
    /// A record for a request that became a [`RuleRequest`].
    pub fn for_request(request: &RuleRequest, decision: &Decision) -> Self {
        let (decision_str, reason, message) = match decision {
            Decision::Allow { .. } => ("allow", None, None),
            Decision::Deny { reason, message } => {
                ("deny", Some(reason.as_str().to_owned()), message.clone())
            }
        };
        Self {
            time: now_rfc3339(),
            decision: decision_str.to_owned(),
            method: request.method.clone(),
            url: request.url.clone(),
            host: request.host.clone(),
            scheme: request.scheme.as_str().to_owned(),
            path: request.path.clone(),
            port: request.port,
            requester_ip: request.requester_ip.to_string(),
            reason,
            message,
            status: None,
            bytes_up: 0,
            bytes_down: 0,
            duration_ms: 0,
            original_dst: None,
        }
    }

    /// A record for traffic that could not even be parsed into a request (no Host, no SNI,
    /// garbage on the wire): it is denied, and still logged once.
    pub fn unparsed(
        client: IpAddr,
        scheme: &str,
        host: &str,
        port: u16,
        reason: DenyReason,
        message: impl Into<String>,
    ) -> Self {
        Self {
            time: now_rfc3339(),
            decision: "deny".to_owned(),
            method: "-".to_owned(),
            url: if host.is_empty() {
                "-".to_owned()
            } else {
                format!("{scheme}://{host}:{port}/")
            },
            host: host.to_owned(),
            scheme: scheme.to_owned(),
            path: String::new(),
            port,
            requester_ip: client.to_string(),
            reason: Some(reason.as_str().to_owned()),
            message: Some(message.into()),
            status: None,
            bytes_up: 0,
            bytes_down: 0,
            duration_ms: 0,
            original_dst: None,
        }
    }

    pub fn is_allow(&self) -> bool {
        self.decision == "allow"
    }

    /// `<time> <+|-> <METHOD> <URL>`.
    pub fn text_line(&self) -> String {
        let sign = if self.is_allow() { '+' } else { '-' };
        format!("{} {sign} {} {}", self.time, self.method, self.url)
    }

    pub fn json_line(&self) -> String {
        serde_json::to_string(self).expect("a Record always serializes")
    }

    pub fn with_original_dst(mut self, dst: Option<SocketAddr>) -> Self {
        self.original_dst = dst.map(|d| d.to_string());
        self
    }
}

/// The current time as `2025-09-22T14:23:45.123Z`.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Rewrites each record before it is queued: the secrets redactor (SPEC section 9).
pub type RecordFilter = std::sync::Arc<dyn Fn(&mut Record) + Send + Sync>;

/// A cloneable handle to send records; a no-op when no log is configured.
#[derive(Clone)]
pub struct RequestLog {
    sender: Option<mpsc::Sender<Message>>,
    filter: Option<RecordFilter>,
}

impl std::fmt::Debug for RequestLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestLog")
            .field("enabled", &self.sender.is_some())
            .field("filtered", &self.filter.is_some())
            .finish()
    }
}

#[derive(Debug)]
enum Message {
    Record(Box<Record>),
    Close,
}

/// The writer thread; [`LogWriter::close`] flushes and joins it.
#[derive(Debug)]
pub struct LogWriter {
    sender: mpsc::Sender<Message>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
    path: PathBuf,
}

/// Opening the log failed.
#[derive(Debug, thiserror::Error)]
#[error("--request-log: cannot open `{path}` for appending")]
pub struct OpenError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl RequestLog {
    /// A log that records nothing.
    pub fn disabled() -> Self {
        Self {
            sender: None,
            filter: None,
        }
    }

    /// This log with `filter` applied to every record before it is written.
    pub fn with_filter(mut self, filter: RecordFilter) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Opens (creating, appending) the log and starts its writer thread.
    pub fn open(path: &Path, format: LogFormat) -> Result<(Self, LogWriter), OpenError> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|source| OpenError {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self::from_file(file, format, path))
    }

    fn from_file(file: File, format: LogFormat, path: &Path) -> (Self, LogWriter) {
        let (sender, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("httpjail-request-log".to_owned())
            .spawn(move || write_loop(receiver, file, format))
            .expect("spawning the request-log thread");
        (
            Self {
                sender: Some(sender.clone()),
                filter: None,
            },
            LogWriter {
                sender,
                thread: Some(thread),
                path: path.to_owned(),
            },
        )
    }

    pub fn is_enabled(&self) -> bool {
        self.sender.is_some()
    }

    /// Queues one record. Never blocks; a record sent after close is dropped.
    pub fn record(&self, mut record: Record) {
        if let Some(sender) = &self.sender {
            if let Some(filter) = &self.filter {
                filter(&mut record);
            }
            let _ = sender.send(Message::Record(Box::new(record)));
        }
    }
}

impl LogWriter {
    /// Writes everything queued so far, flushes, and stops the writer.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.sender.send(Message::Close);
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!("--request-log `{}`: write failed: {e}", self.path.display());
                }
                Err(_) => tracing::error!("--request-log writer thread panicked"),
            }
        }
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn write_loop(
    receiver: mpsc::Receiver<Message>,
    file: File,
    format: LogFormat,
) -> std::io::Result<()> {
    let mut out = BufWriter::with_capacity(64 * 1024, file);
    let mut first_error: Option<std::io::Error> = None;
    let mut write = |out: &mut BufWriter<File>, record: &Record| {
        let line = match format {
            LogFormat::Text => record.text_line(),
            LogFormat::Json => record.json_line(),
        };
        if let Err(e) = writeln!(out, "{line}")
            && first_error.is_none()
        {
            first_error = Some(e);
        }
    };
    'outer: while let Ok(message) = receiver.recv() {
        let mut next = Some(message);
        // Drain what is queued, then flush once: one write syscall per burst, not per record.
        while let Some(message) = next.take() {
            match message {
                Message::Record(record) => write(&mut out, &record),
                Message::Close => break 'outer,
            }
            next = receiver.try_recv().ok();
        }
        out.flush()?;
    }
    // Close: take whatever raced in before the close message, then flush.
    while let Ok(Message::Record(record)) = receiver.try_recv() {
        write(&mut out, &record);
    }
    out.flush()?;
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> RuleRequest {
        RuleRequest::from_url(
            "GET",
            "https://api.github.com/repos?page=2",
            RuleRequest::local_requester(),
        )
        .unwrap()
    }

    #[test]
    fn text_line_matches_the_documented_format() {
        let r = Record::for_request(&request(), &Decision::ALLOW);
        let line = r.text_line();
        let (time, rest) = line.split_once(' ').unwrap();
        assert_eq!(rest, "+ GET https://api.github.com/repos?page=2");
        assert!(
            time.ends_with('Z') && time.len() == "2025-09-22T14:23:45.123Z".len(),
            "{time}"
        );
        let denied = Record::for_request(&request(), &Decision::deny(DenyReason::Rule));
        assert!(denied.text_line().contains(" - GET "));
    }

    #[test]
    fn json_has_every_documented_field() {
        let mut r = Record::for_request(&request(), &Decision::deny_with(DenyReason::Rule, "nope"));
        r.status = Some(403);
        let v: serde_json::Value = serde_json::from_str(&r.json_line()).unwrap();
        for key in [
            "time",
            "decision",
            "method",
            "url",
            "host",
            "scheme",
            "path",
            "port",
            "requester_ip",
            "reason",
            "status",
            "bytes_up",
            "bytes_down",
            "duration_ms",
        ] {
            assert!(v.get(key).is_some(), "missing {key} in {v}");
        }
        assert_eq!(v["decision"], "deny");
        assert_eq!(v["reason"], "rule");
        assert_eq!(v["message"], "nope");
        assert_eq!(v["port"], 443);
        let back: Record = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn concurrent_records_never_interleave_and_all_are_flushed_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let (log, writer) = RequestLog::open(&path, LogFormat::Json).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        log.record(Record::for_request(&request(), &Decision::ALLOW));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        writer.close();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 4000);
        for line in lines {
            let r: Record = serde_json::from_str(line).unwrap();
            assert_eq!(r.host, "api.github.com");
        }
    }

    #[test]
    fn opening_an_impossible_path_names_it() {
        let e = RequestLog::open(Path::new("/nonexistent-dir/x/log"), LogFormat::Text).unwrap_err();
        assert!(e.to_string().contains("/nonexistent-dir/x/log"), "{e}");
    }

    #[test]
    fn disabled_log_accepts_records() {
        let log = RequestLog::disabled();
        assert!(!log.is_enabled());
        log.record(Record::for_request(&request(), &Decision::ALLOW));
    }
}
