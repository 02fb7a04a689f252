//! Reading a JSON request log back: lines → [`Record`]s → the [`RuleRequest`]s a rule saw.
//!
//! The log is untrusted input (it may be hand-edited, truncated by a crash, or come from
//! elsewhere). Every line is either a usable request ([`Entry::Request`]), a line skipped for
//! a stated reason with its line number ([`Entry::Skipped`]), or blank. Requests are rebuilt
//! with [`RuleRequest::from_url`] (the one place requests are built) from the record's `method`,
//! `url` and `requester_ip`, and the record's `host`, `scheme`, `port` and `path` must agree
//! with the rebuilt request: a record that disagrees does not describe what a rule saw, so it
//! is skipped, never guessed at. Lines are read with a length cap so that a log without
//! newlines cannot exhaust memory. This module decides nothing and prints nothing.

use std::io::{self, BufRead};
use std::net::IpAddr;

use serde::Serialize;

use crate::request_log::Record;
use crate::rules::{DenyReason, RuleRequest};

/// Longest line taken; longer ones are skipped (a record is a few hundred bytes; a URL is
/// bounded by the proxy well below this).
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// One line of the log as read (without its `\n` or `\r\n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    Text(&'a str),
    TooLong,
    NotUtf8,
}

/// Consecutive lines of the log in one buffer: one allocation per chunk, not per line, so
/// the reading thread stays cheap and the lines are freed by whoever parses them.
#[derive(Debug, Default)]
pub struct Chunk {
    data: Vec<u8>,
    lines: Vec<RawLine>,
}

#[derive(Debug, Clone, Copy)]
struct RawLine {
    number: usize,
    start: usize,
    end: usize,
    too_long: bool,
}

impl Chunk {
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// The lines with their 1-based numbers.
    pub fn lines(&self) -> impl Iterator<Item = (usize, Line<'_>)> {
        self.lines.iter().map(|raw| {
            let line = if raw.too_long {
                Line::TooLong
            } else {
                match std::str::from_utf8(&self.data[raw.start..raw.end]) {
                    Ok(text) => Line::Text(text),
                    Err(_) => Line::NotUtf8,
                }
            };
            (raw.number, line)
        })
    }
}

/// Reads lines with their 1-based numbers, at most [`MAX_LINE_BYTES`] kept per line.
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    number: usize,
}

impl<R: BufRead> LineReader<R> {
    pub fn new(inner: R) -> Self {
        Self { inner, number: 0 }
    }

    /// The next `max_lines` lines (fewer at the end of the input; none after it).
    pub fn read_chunk(&mut self, max_lines: usize) -> io::Result<Chunk> {
        let mut chunk = Chunk::default();
        while chunk.lines.len() < max_lines {
            match self.read_line_into(&mut chunk.data)? {
                Some(raw) => chunk.lines.push(raw),
                None => break,
            }
        }
        Ok(chunk)
    }

    /// Appends the next line to `data`; `None` at the end of the input.
    fn read_line_into(&mut self, data: &mut Vec<u8>) -> io::Result<Option<RawLine>> {
        let start = data.len();
        let mut too_long = false;
        let mut any = false;
        loop {
            let available = match self.inner.fill_buf() {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                break;
            }
            any = true;
            let newline = available.iter().position(|&b| b == b'\n');
            let piece = &available[..newline.unwrap_or(available.len())];
            if !too_long {
                if data.len() - start + piece.len() > MAX_LINE_BYTES {
                    too_long = true;
                    data.truncate(start);
                } else {
                    data.extend_from_slice(piece);
                }
            }
            let consumed = newline.map_or(available.len(), |i| i + 1);
            self.inner.consume(consumed);
            if newline.is_some() {
                break;
            }
        }
        if !any {
            return Ok(None);
        }
        self.number += 1;
        if !too_long && data.last() == Some(&b'\r') && data.len() > start {
            data.pop();
        }
        Ok(Some(RawLine {
            number: self.number,
            start,
            end: data.len(),
            too_long,
        }))
    }
}

/// Who made the recorded decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The request was allowed (by the rule).
    Allowed,
    /// The rule denied it (its answer, or its failure: no rule, error, timeout, bad answer).
    DeniedByRule(DenyReason),
    /// One of the proxy's own checks denied it; the rule's verdict is not in the log.
    DeniedByProxy(DenyReason),
}

impl Recorded {
    fn of(reason: DenyReason) -> Self {
        // Exhaustive on purpose: a new reason must be placed on one side here.
        match reason {
            DenyReason::Rule
            | DenyReason::NoRule
            | DenyReason::EngineError
            | DenyReason::EngineTimeout
            | DenyReason::InvalidAnswer => Self::DeniedByRule(reason),
            DenyReason::PrivateAddress
            | DenyReason::DomainFronting
            | DenyReason::LoopDetected
            | DenyReason::MalformedRequest
            | DenyReason::ExplicitProxyRefused
            | DenyReason::SecretLeak
            | DenyReason::TxLimit => Self::DeniedByProxy(reason),
        }
    }

    pub fn is_allow(self) -> bool {
        self == Self::Allowed
    }
}

/// A usable request of the log.
#[derive(Debug, Clone)]
pub struct Logged {
    pub line: usize,
    pub record: Record,
    /// Rebuilt from the record's method, URL and requester IP.
    pub request: RuleRequest,
    pub recorded: Recorded,
}

/// Why a line was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipKind {
    /// Not a record of the JSON request log (not JSON, missing fields, bad values, too long).
    Malformed,
    /// A record whose fields disagree with its URL: it does not describe what a rule saw.
    Inconsistent,
    /// Traffic the proxy could not parse into a request (`method` `-`): no rule ever saw it.
    Unparsed,
}

impl SkipKind {
    /// Whether the line deserves a warning (something is wrong with the log itself).
    pub fn is_problem(self) -> bool {
        !matches!(self, Self::Unparsed)
    }
}

/// A skipped line and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub line: usize,
    pub kind: SkipKind,
    pub detail: String,
}

/// What one line of the log is.
#[derive(Debug, Clone)]
pub enum Entry {
    Blank,
    Request(Box<Logged>),
    Skipped(Skipped),
}

/// Classifies one line.
pub fn parse_line(number: usize, line: Line<'_>) -> Entry {
    let skip = |kind, detail: String| {
        Entry::Skipped(Skipped {
            line: number,
            kind,
            detail,
        })
    };
    let text = match line {
        Line::Text(text) => text,
        Line::TooLong => {
            return skip(
                SkipKind::Malformed,
                format!("line longer than {MAX_LINE_BYTES} bytes"),
            );
        }
        Line::NotUtf8 => return skip(SkipKind::Malformed, "not UTF-8 text".to_owned()),
    };
    if text.trim().is_empty() {
        return Entry::Blank;
    }
    let record: Record = match serde_json::from_str(text) {
        Ok(record) => record,
        Err(e) => return skip(SkipKind::Malformed, json_problem(text, &e)),
    };
    let recorded = match (record.decision.as_str(), record.reason.as_deref()) {
        ("allow", None) => Recorded::Allowed,
        ("allow", Some(reason)) => {
            return skip(
                SkipKind::Malformed,
                format!("an allowed record has a deny reason (`{}`)", shown(reason)),
            );
        }
        ("deny", Some(reason)) => match DenyReason::parse(reason) {
            Some(reason) => Recorded::of(reason),
            None => {
                return skip(
                    SkipKind::Malformed,
                    format!("unknown deny reason `{}`", shown(reason)),
                );
            }
        },
        ("deny", None) => {
            return skip(
                SkipKind::Malformed,
                "a denied record without a reason".to_owned(),
            );
        }
        (other, _) => {
            return skip(
                SkipKind::Malformed,
                format!(
                    "`decision` is `{}`, expected `allow` or `deny`",
                    shown(other)
                ),
            );
        }
    };
    if record.method == "-" {
        let reason = record.reason.as_deref().unwrap_or("none");
        return skip(
            SkipKind::Unparsed,
            format!("unparsed traffic (method `-`, reason {})", shown(reason)),
        );
    }
    let requester_ip: IpAddr = match record.requester_ip.parse() {
        Ok(ip) => ip,
        Err(_) => {
            return skip(
                SkipKind::Malformed,
                format!(
                    "`requester_ip` `{}` is not an IP address",
                    shown(&record.requester_ip)
                ),
            );
        }
    };
    let request = match RuleRequest::from_url(&record.method, &record.url, requester_ip) {
        Ok(request) => request,
        Err(e) => return skip(SkipKind::Malformed, shown(&e.to_string())),
    };
    if let Some(field) = disagreement(&record, &request) {
        return skip(SkipKind::Inconsistent, field);
    }
    Entry::Request(Box::new(Logged {
        line: number,
        record,
        request,
        recorded,
    }))
}

/// The first field of `record` that does not match the request rebuilt from its URL.
fn disagreement(record: &Record, request: &RuleRequest) -> Option<String> {
    let differs = |name: &str, logged: &str, rebuilt: &str| {
        Some(format!(
            "`{name}` is `{}` but the URL gives `{}`",
            shown(logged),
            shown(rebuilt)
        ))
    };
    if record.host != request.host {
        return differs("host", &record.host, &request.host);
    }
    if record.scheme != request.scheme.as_str() {
        return differs("scheme", &record.scheme, request.scheme.as_str());
    }
    if record.port != request.port {
        return differs("port", &record.port.to_string(), &request.port.to_string());
    }
    if record.path != request.path {
        return differs("path", &record.path, &request.path);
    }
    None
}

/// A readable reason for a line that is not a record.
fn json_problem(text: &str, e: &serde_json::Error) -> String {
    if looks_like_text_log(text) {
        return "this looks like a text log line; record with --request-log-format json".to_owned();
    }
    let message = e.to_string();
    // serde_json positions are within the line ("at line 1 column 9"); keep only the column.
    let position = format!(" at line {} column {}", e.line(), e.column());
    let message = message.strip_suffix(&position).unwrap_or(&message);
    format!(
        "not a request-log record: {} (column {})",
        shown(message),
        e.column()
    )
}

/// `<time> <+|-> <METHOD> <URL>`: the text format of `--request-log`.
fn looks_like_text_log(text: &str) -> bool {
    let mut words = text.split(' ');
    matches!(
        (words.next(), words.next(), words.next(), words.next(), words.next()),
        (Some(_), Some("+" | "-"), Some(_), Some(url), None) if url.contains("://") || url == "-"
    )
}

/// Untrusted text made safe to show on one terminal line: control characters, line
/// separators and bidirectional overrides escaped, cut at 200 characters.
pub fn shown(text: &str) -> String {
    escape_controls(text, Some(200))
}

/// Like [`shown`], without a length limit (for URLs, which must be shown whole).
pub fn escape_controls(text: &str, max_chars: Option<usize>) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, c) in text.chars().enumerate() {
        if Some(i) == max_chars {
            out.push('…');
            break;
        }
        if c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Decision;

    fn line(text: &str) -> Entry {
        parse_line(7, Line::Text(text))
    }

    fn record_json(method: &str, url: &str) -> String {
        let request = RuleRequest::from_url(method, url, RuleRequest::local_requester()).unwrap();
        Record::for_request(&request, &Decision::ALLOW).json_line()
    }

    fn skipped(entry: Entry) -> Skipped {
        match entry {
            Entry::Skipped(s) => s,
            other => panic!("expected a skip, got {other:?}"),
        }
    }

    #[test]
    fn a_proxy_record_becomes_the_same_request() {
        let Entry::Request(logged) = line(&record_json("POST", "http://a.test:8080/x?y=1")) else {
            panic!("not a request");
        };
        assert_eq!(logged.line, 7);
        assert_eq!(logged.recorded, Recorded::Allowed);
        assert_eq!(logged.request.url, "http://a.test:8080/x?y=1");
        assert_eq!(logged.request.path, "/x");
        assert_eq!(logged.request.method, "POST");
    }

    #[test]
    fn reasons_are_sorted_into_rule_and_proxy_decisions() {
        let request =
            RuleRequest::from_url("GET", "https://a.test/", RuleRequest::local_requester())
                .unwrap();
        for reason in DenyReason::ALL {
            let json = Record::for_request(&request, &Decision::deny(reason)).json_line();
            let Entry::Request(logged) = line(&json) else {
                panic!("{reason}");
            };
            let by_rule = matches!(logged.recorded, Recorded::DeniedByRule(_));
            assert_eq!(
                by_rule,
                matches!(
                    reason,
                    DenyReason::Rule
                        | DenyReason::NoRule
                        | DenyReason::EngineError
                        | DenyReason::EngineTimeout
                        | DenyReason::InvalidAnswer
                ),
                "{reason}"
            );
        }
    }

    #[test]
    fn malformed_lines_say_why() {
        assert!(matches!(line(""), Entry::Blank));
        assert!(matches!(line("   "), Entry::Blank));
        let s = skipped(line("{not json"));
        assert_eq!((s.line, s.kind), (7, SkipKind::Malformed));
        assert!(s.detail.contains("column"), "{s:?}");
        let s = skipped(line(r#"{"time":"t"}"#));
        assert!(s.detail.contains("missing field"), "{s:?}");
        let s = skipped(line("2025-01-01T00:00:00.000Z + GET https://a.test/"));
        assert!(s.detail.contains("--request-log-format json"), "{s:?}");
        let good = record_json("GET", "https://a.test/");
        let s = skipped(line(&good.replace("\"allow\"", "\"maybe\"")));
        assert!(s.detail.contains("maybe"), "{s:?}");
        let s = skipped(line(&good.replace("127.0.0.1", "not-an-ip")));
        assert!(s.detail.contains("requester_ip"), "{s:?}");
        let s = skipped(line(
            &good.replace("\"reason\":null", "\"reason\":\"rule\""),
        ));
        assert!(s.detail.contains("deny reason"), "{s:?}");
        let s = skipped(line(
            &good
                .replace("\"allow\"", "\"deny\"")
                .replace("\"reason\":null", "\"reason\":\"made_up\""),
        ));
        assert!(s.detail.contains("made_up"), "{s:?}");
        let s = skipped(line(&good.replace("https://a.test/", "ftp://a.test/")));
        assert_eq!(s.kind, SkipKind::Malformed, "{s:?}");
    }

    #[test]
    fn fields_that_disagree_with_the_url_are_inconsistent() {
        let good = record_json("GET", "https://a.test/p");
        for (from, to, field) in [
            ("\"host\":\"a.test\"", "\"host\":\"b.test\"", "host"),
            ("\"scheme\":\"https\"", "\"scheme\":\"http\"", "scheme"),
            ("\"port\":443", "\"port\":8443", "port"),
            ("\"path\":\"/p\"", "\"path\":\"/q\"", "path"),
        ] {
            let bad = good.replace(from, to);
            assert_ne!(bad, good);
            let s = skipped(line(&bad));
            assert_eq!(s.kind, SkipKind::Inconsistent, "{s:?}");
            assert!(s.detail.contains(field), "{s:?}");
        }
    }

    #[test]
    fn unparsed_traffic_is_skipped_with_its_reason() {
        let r = Record::unparsed(
            RuleRequest::local_requester(),
            "https",
            "",
            443,
            DenyReason::MalformedRequest,
            "no SNI",
        );
        let s = skipped(line(&r.json_line()));
        assert_eq!(s.kind, SkipKind::Unparsed);
        assert!(s.detail.contains("malformed_request"), "{s:?}");
        assert!(!s.kind.is_problem());
    }

    #[test]
    fn reader_numbers_lines_and_caps_their_length() {
        let mut input = Vec::new();
        input.extend_from_slice(b"one\r\n");
        input.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES + 10));
        input.extend_from_slice(b"\n\xff\xfe\n\r\n\nlast");
        let mut reader = LineReader::new(io::BufReader::with_capacity(1000, &input[..]));
        let first = reader.read_chunk(4).unwrap();
        assert_eq!(
            first.lines().collect::<Vec<_>>(),
            vec![
                (1, Line::Text("one")),
                (2, Line::TooLong),
                (3, Line::NotUtf8),
                (4, Line::Text("")),
            ]
        );
        let second = reader.read_chunk(4).unwrap();
        assert_eq!(
            second.lines().collect::<Vec<_>>(),
            vec![(5, Line::Text("")), (6, Line::Text("last"))]
        );
        assert!(reader.read_chunk(4).unwrap().is_empty());
    }

    #[test]
    fn shown_escapes_terminal_controls() {
        assert_eq!(shown("a\u{1b}[31mb\n"), "a\\u{1b}[31mb\\u{a}");
        assert_eq!(shown("ok ü"), "ok ü");
        assert_eq!(shown(&"x".repeat(300)).chars().count(), 201);
    }
}
