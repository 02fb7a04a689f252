//! The replay [`Report`] for people (`--format text`) and for CI (`--format json`).
//!
//! Text: the flips (allow → deny, then deny → allow), the requests the proxy decided, then a
//! summary, so the summary is what a terminal shows last. Every string from the log or from
//! the rule is escaped before it reaches the terminal ([`escape_controls`]).
//!
//! JSON: one document, `"format": "httpjail-replay-v1"`; the counts and lists of [`Report`]
//! with the field names it serialises with. Fields are always present (`null` when empty), so
//! the shape does not depend on the data. Never change a field's meaning; add fields instead.

use std::fmt::Write as _;

use serde::Serialize;

use super::records::{SkipKind, escape_controls, shown};
use super::replay::{Report, Verdict};
use crate::config::{JsSource, RuleSource};

/// Where the report comes from.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The log, as named on the command line.
    pub log: &'a str,
    /// The rule, as [`describe_rule`] puts it.
    pub rule: &'a str,
}

/// The value of `format` in the JSON document.
pub const JSON_FORMAT: &str = "httpjail-replay-v1";

/// The rule in a few words: its flag and source (inline JS cut to one short line).
pub fn describe_rule(rule: &RuleSource) -> String {
    match rule {
        RuleSource::None => "no rule (everything denied)".to_owned(),
        RuleSource::Js(JsSource::File(path)) => format!("--js-file {}", path.display()),
        RuleSource::Js(JsSource::Inline(text)) => {
            let first = text.lines().next().unwrap_or_default();
            let short: String = first.chars().take(60).collect();
            let more = short.len() < text.trim_end().len();
            format!("--js {short}{}", if more { " …" } else { "" })
        }
        RuleSource::Shell { command } => format!("--sh {command}"),
        RuleSource::LineProcessor { command } => format!("--proc {command}"),
    }
}

/// The report as text.
pub fn text(report: &Report, context: &Context<'_>) -> String {
    let log = escape_controls(context.log, None);
    let mut out = String::new();
    for (direction, title) in [
        (Verdict::Allow, "flipped allow -> deny"),
        (Verdict::Deny, "flipped deny -> allow"),
    ] {
        let flips: Vec<_> = report
            .flips
            .iter()
            .filter(|f| f.from == direction)
            .collect();
        if flips.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{title} ({}):", flips.len());
        for flip in flips {
            let _ = writeln!(
                out,
                "  {log}:{}: {} {}",
                flip.line,
                shown(&flip.method),
                escape_controls(&flip.url, None)
            );
            if let Some(reason) = &flip.recorded_reason {
                let _ = writeln!(
                    out,
                    "      was: deny ({}){}",
                    shown(reason),
                    message(flip.recorded_message.as_deref())
                );
            }
            match flip.to {
                Verdict::Deny => {
                    let _ = writeln!(
                        out,
                        "      now: deny ({}){}",
                        shown(flip.reason.as_deref().unwrap_or("rule")),
                        message(flip.message.as_deref())
                    );
                }
                Verdict::Allow => {
                    let _ = writeln!(out, "      now: allow{}", limit(flip.max_tx_bytes));
                }
            }
        }
        out.push('\n');
    }
    if !report.proxy_decided_requests.is_empty() {
        let _ = writeln!(
            out,
            "denied by the proxy's own checks in the recorded run, not compared ({}):",
            report.proxy_decided_requests.len()
        );
        for p in &report.proxy_decided_requests {
            let _ = writeln!(
                out,
                "  {log}:{}: {} {} ({}); the rule now answers: {}{}",
                p.line,
                shown(&p.method),
                escape_controls(&p.url, None),
                shown(&p.reason),
                p.rule_now.as_str(),
                match p.rule_now {
                    Verdict::Allow => limit(p.max_tx_bytes),
                    Verdict::Deny => format!(
                        " ({})",
                        shown(p.rule_now_reason.as_deref().unwrap_or("rule"))
                    ),
                }
            );
        }
        out.push('\n');
    }
    let unparsed = report
        .skipped_lines
        .iter()
        .filter(|s| s.kind == SkipKind::Unparsed)
        .count();
    let problems = report.problem_lines();
    let _ = writeln!(out, "replay of {log} with {}", shown(context.rule));
    let rows = [
        ("requests decided again", report.total.to_string()),
        (
            "allowed",
            format!("{} (recorded: {})", report.allowed, report.recorded_allowed),
        ),
        (
            "denied",
            format!("{} (recorded: {})", report.denied, report.recorded_denied),
        ),
        (
            "flipped allow -> deny",
            report.flipped_allow_to_deny.to_string(),
        ),
        (
            "flipped deny -> allow",
            report.flipped_deny_to_allow.to_string(),
        ),
        (
            "denied by the proxy",
            format!("{} (not compared)", report.proxy_decided),
        ),
        (
            "skipped lines",
            format!(
                "{} ({problems} malformed or inconsistent, {unparsed} unparsed traffic)",
                report.skipped
            ),
        ),
    ];
    for (name, value) in rows {
        let _ = writeln!(out, "  {name:<24}{value}");
    }
    let flips = report.flip_count();
    if flips == 0 {
        out.push_str("result: no flips\n");
    } else {
        let _ = writeln!(
            out,
            "result: {flips} flip{}",
            if flips == 1 { "" } else { "s" }
        );
    }
    out
}

fn message(message: Option<&str>) -> String {
    message.map_or_else(String::new, |m| format!(": {}", shown(m)))
}

fn limit(max_tx_bytes: Option<u64>) -> String {
    max_tx_bytes.map_or_else(String::new, |m| format!(" (max_tx_bytes {m})"))
}

#[derive(Serialize)]
struct Document<'a> {
    format: &'static str,
    log: &'a str,
    rule: &'a str,
    #[serde(flatten)]
    report: &'a Report,
}

/// The report as one JSON document (pretty-printed, with a final newline).
pub fn json(report: &Report, context: &Context<'_>) -> String {
    let document = Document {
        format: JSON_FORMAT,
        log: context.log,
        rule: context.rule,
        report,
    };
    // Serialising plain structs of strings and numbers cannot fail; if it ever did, the
    // output would still be a JSON document that says so.
    let mut text = serde_json::to_string_pretty(&document).unwrap_or_else(|e| {
        format!(
            "{{\"format\":\"{JSON_FORMAT}\",\"error\":{:?}}}",
            e.to_string()
        )
    });
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::records::Skipped;
    use crate::policy::replay::{Flip, ProxyDecided};

    fn report() -> Report {
        Report {
            lines: 6,
            total: 3,
            allowed: 1,
            denied: 2,
            recorded_allowed: 2,
            recorded_denied: 1,
            flipped_allow_to_deny: 1,
            flipped_deny_to_allow: 0,
            proxy_decided: 1,
            skipped: 2,
            flips: vec![Flip {
                line: 2,
                method: "POST".into(),
                url: "https://b.test/\u{1b}[2J".into(),
                from: Verdict::Allow,
                to: Verdict::Deny,
                reason: Some("rule".into()),
                message: Some("no uploads\u{1b}[31m".into()),
                max_tx_bytes: None,
                recorded_reason: None,
                recorded_message: None,
            }],
            proxy_decided_requests: vec![ProxyDecided {
                line: 4,
                method: "GET".into(),
                url: "https://internal.test/".into(),
                reason: "private_address".into(),
                rule_now: Verdict::Allow,
                rule_now_reason: None,
                max_tx_bytes: Some(100),
            }],
            skipped_lines: vec![
                Skipped {
                    line: 5,
                    kind: SkipKind::Malformed,
                    detail: "not a request-log record".into(),
                },
                Skipped {
                    line: 6,
                    kind: SkipKind::Unparsed,
                    detail: "unparsed traffic".into(),
                },
            ],
        }
    }

    const CONTEXT: Context<'static> = Context {
        log: "run.jsonl",
        rule: "--sh ./policy.sh",
    };

    #[test]
    fn text_lists_flips_then_the_summary() {
        let text = text(&report(), &CONTEXT);
        assert!(
            text.starts_with(
                "flipped allow -> deny (1):\n  run.jsonl:2: POST https://b.test/\\u{1b}[2J\n      now: deny (rule): no uploads\\u{1b}[31m\n"
            ),
            "{text}"
        );
        assert!(
            !text.contains('\u{1b}'),
            "terminal escapes must not pass: {text}"
        );
        assert!(
            text.contains("  run.jsonl:4: GET https://internal.test/ (private_address); the rule now answers: allow (max_tx_bytes 100)\n"),
            "{text}"
        );
        assert!(text.contains("\n  flipped allow -> deny   1\n"), "{text}");
        assert!(
            text.contains(
                "  skipped lines           2 (1 malformed or inconsistent, 1 unparsed traffic)\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("result: 1 flip\n"), "{text}");
    }

    #[test]
    fn json_has_a_stable_shape() {
        let text = json(&report(), &CONTEXT);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["format"], JSON_FORMAT);
        assert_eq!(v["log"], "run.jsonl");
        assert_eq!(v["rule"], "--sh ./policy.sh");
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "allowed",
                "denied",
                "flipped_allow_to_deny",
                "flipped_deny_to_allow",
                "flips",
                "format",
                "lines",
                "log",
                "proxy_decided",
                "proxy_decided_requests",
                "recorded_allowed",
                "recorded_denied",
                "rule",
                "skipped",
                "skipped_lines",
                "total"
            ]
        );
        let flip = &v["flips"][0];
        let mut flip_keys: Vec<&str> = flip
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        flip_keys.sort_unstable();
        assert_eq!(
            flip_keys,
            [
                "from",
                "line",
                "max_tx_bytes",
                "message",
                "method",
                "reason",
                "recorded_message",
                "recorded_reason",
                "to",
                "url"
            ]
        );
        assert_eq!(flip["from"], "allow");
        assert_eq!(flip["to"], "deny");
        assert_eq!(v["proxy_decided_requests"][0]["rule_now"], "allow");
        assert_eq!(v["skipped_lines"][1]["kind"], "unparsed");
    }

    #[test]
    fn rules_are_described_briefly() {
        assert_eq!(
            describe_rule(&RuleSource::None),
            "no rule (everything denied)"
        );
        assert_eq!(
            describe_rule(&RuleSource::Js(JsSource::Inline("r.host === 'a'".into()))),
            "--js r.host === 'a'"
        );
        let long = describe_rule(&RuleSource::Js(JsSource::Inline(format!(
            "{}\nmore",
            "x".repeat(100)
        ))));
        assert!(long.ends_with(" …") && long.len() < 80, "{long}");
    }
}
