//! The one parser for rule answers (SPEC section 3), shared by the JS and line-processor
//! engines.
//!
//! Both engines reduce what the rule produced to an [`Answer`]: a JSON value (a JS value converted
//! by the JS engine, or a line the processor printed that parses as JSON) or a raw text line.
//! [`decide`] turns it into a [`Decision`]. Anything not in the table is a deny: fail closed.

use serde_json::Value;

use super::decision::{Decision, DenyReason};

/// Longest deny message we keep; longer ones are cut (on a char boundary) so that a runaway
/// rule cannot make us send megabytes in a 403.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// What a rule produced, before interpretation.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A structured value (JS result, or a processor line that is valid JSON).
    Value(Value),
    /// The JS value `undefined` (a rule that produced nothing).
    Undefined,
}

impl Answer {
    /// Interprets one line printed by a line processor.
    pub fn from_line(line: &str) -> Self {
        let line = line.trim();
        match serde_json::from_str::<Value>(line) {
            Ok(v) => Self::Value(v),
            // Any other text is a deny whose message is the text itself.
            Err(_) => Self::Value(Value::String(line.to_owned())),
        }
    }
}

/// Turns a rule's answer into a decision. Every row of SPEC section 3:
///
/// | answer | decision |
/// |---|---|
/// | `true`, `"true"`, `{"allow": true}` | allow |
/// | `false`, `"false"`, `{"allow": false}` | deny |
/// | `{"deny_message": "text"}` (with or without `"allow": false`) | deny with that message |
/// | `{"allow": {"max_tx_bytes": N}}` | allow with a size limit |
/// | any other text | deny, the text is the message |
/// | anything else (number, null, array, undefined, bad object) | deny, `invalid_answer` |
pub fn decide(answer: &Answer) -> Decision {
    let value = match answer {
        Answer::Undefined => {
            return invalid(
                "the rule produced `undefined`; end it with an expression such as `true`",
            );
        }
        Answer::Value(v) => v,
    };
    match value {
        Value::Bool(true) => Decision::ALLOW,
        Value::Bool(false) => Decision::deny(DenyReason::Rule),
        Value::String(s) => match s.trim() {
            "true" => Decision::ALLOW,
            "false" => Decision::deny(DenyReason::Rule),
            "" => invalid("the rule produced an empty string"),
            text => Decision::deny_with(DenyReason::Rule, cap_message(text)),
        },
        Value::Object(map) => decide_object(map),
        Value::Null => invalid("the rule produced `null`"),
        Value::Number(n) => invalid(&format!("the rule produced the number {n}, not a boolean")),
        Value::Array(_) => invalid("the rule produced an array, not a boolean or an object"),
    }
}

fn decide_object(map: &serde_json::Map<String, Value>) -> Decision {
    let message = match map.get("deny_message") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(cap_message(s)),
        Some(other) => Some(cap_message(&other.to_string())),
    };
    if let Some(message) = message {
        // A deny message always denies, even next to `"allow": true` (fail closed).
        return Decision::Deny {
            reason: DenyReason::Rule,
            message: Some(message),
        };
    }
    match map.get("allow") {
        Some(Value::Bool(true)) => Decision::ALLOW,
        Some(Value::Bool(false)) => Decision::deny(DenyReason::Rule),
        Some(Value::Object(limits)) => match limits.get("max_tx_bytes") {
            Some(Value::Number(n)) => match n.as_u64() {
                Some(max) => Decision::Allow {
                    max_tx_bytes: Some(max),
                },
                None => match n.as_f64() {
                    // JS numbers arrive as floats; accept integral, non-negative ones.
                    Some(f) if f >= 0.0 && f.fract() == 0.0 && f <= u64::MAX as f64 => {
                        Decision::Allow {
                            max_tx_bytes: Some(f as u64),
                        }
                    }
                    _ => invalid(&format!(
                        "`max_tx_bytes` must be a non-negative integer, got {n}"
                    )),
                },
            },
            Some(other) => invalid(&format!(
                "`max_tx_bytes` must be a non-negative integer, got {other}"
            )),
            None => invalid("`allow` is an object without `max_tx_bytes`"),
        },
        Some(other) => invalid(&format!(
            "`allow` must be true, false or {{\"max_tx_bytes\": N}}, got {other}"
        )),
        None => invalid("the object has neither `allow` nor `deny_message`"),
    }
}

fn invalid(why: &str) -> Decision {
    Decision::Deny {
        reason: DenyReason::InvalidAnswer,
        message: Some(why.to_owned()),
    }
}

/// Cuts a message to [`MAX_MESSAGE_BYTES`] on a char boundary and strips control characters
/// that would break a header or a log line.
pub fn cap_message(text: &str) -> String {
    let mut end = text.len().min(MAX_MESSAGE_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end]
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                ' '
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v(value: Value) -> Decision {
        decide(&Answer::Value(value))
    }

    fn line(s: &str) -> Decision {
        decide(&Answer::from_line(s))
    }

    #[test]
    fn true_in_every_form_allows() {
        assert_eq!(v(json!(true)), Decision::ALLOW);
        assert_eq!(v(json!("true")), Decision::ALLOW);
        assert_eq!(v(json!({"allow": true})), Decision::ALLOW);
        assert_eq!(line("true"), Decision::ALLOW);
        assert_eq!(line("  true \r"), Decision::ALLOW);
        assert_eq!(line("\"true\""), Decision::ALLOW);
        assert_eq!(line(r#"{"allow": true}"#), Decision::ALLOW);
    }

    #[test]
    fn false_in_every_form_denies_without_message() {
        let deny = Decision::deny(DenyReason::Rule);
        assert_eq!(v(json!(false)), deny);
        assert_eq!(v(json!("false")), deny);
        assert_eq!(v(json!({"allow": false})), deny);
        assert_eq!(line("false"), deny);
        assert_eq!(line("\"false\""), deny);
        assert_eq!(line(r#"{"allow":false}"#), deny);
    }

    #[test]
    fn deny_message_denies_with_or_without_allow_false() {
        let want = Decision::deny_with(DenyReason::Rule, "Social media blocked");
        assert_eq!(v(json!({"deny_message": "Social media blocked"})), want);
        assert_eq!(
            v(json!({"allow": false, "deny_message": "Social media blocked"})),
            want
        );
        assert_eq!(
            line(r#"{"allow": false, "deny_message": "Social media blocked"}"#),
            want
        );
    }

    #[test]
    fn deny_message_beats_allow_true() {
        let d = v(json!({"allow": true, "deny_message": "no"}));
        assert_eq!(d, Decision::deny_with(DenyReason::Rule, "no"));
    }

    #[test]
    fn max_tx_bytes_allows_with_limit() {
        let want = Decision::Allow {
            max_tx_bytes: Some(1024),
        };
        assert_eq!(v(json!({"allow": {"max_tx_bytes": 1024}})), want);
        assert_eq!(v(json!({"allow": {"max_tx_bytes": 1024.0}})), want);
        assert_eq!(line(r#"{"allow": {"max_tx_bytes": 1024}}"#), want);
        assert_eq!(
            v(json!({"allow": {"max_tx_bytes": 0}})),
            Decision::Allow {
                max_tx_bytes: Some(0)
            }
        );
    }

    #[test]
    fn bad_max_tx_bytes_denies() {
        for bad in [
            json!({"allow": {"max_tx_bytes": -1}}),
            json!({"allow": {"max_tx_bytes": 1.5}}),
            json!({"allow": {"max_tx_bytes": "1024"}}),
            json!({"allow": {}}),
        ] {
            assert_eq!(
                v(bad.clone()).reason(),
                Some(DenyReason::InvalidAnswer),
                "{bad}"
            );
        }
    }

    #[test]
    fn other_text_lines_deny_with_the_text_as_message() {
        assert_eq!(
            line("Access denied"),
            Decision::deny_with(DenyReason::Rule, "Access denied")
        );
        assert_eq!(
            line("  spaced out  "),
            Decision::deny_with(DenyReason::Rule, "spaced out")
        );
        assert_eq!(
            v(json!("not allowed here")),
            Decision::deny_with(DenyReason::Rule, "not allowed here")
        );
    }

    #[test]
    fn malformed_or_unexpected_answers_deny_as_invalid() {
        for d in [
            v(json!(1)),
            v(json!(0)),
            v(json!(null)),
            v(json!([true])),
            v(json!({})),
            v(json!({"allow": "yes"})),
            v(json!({"allow": 1})),
            v(json!("")),
            line(""),
            line("1"),
            line("null"),
            line("[]"),
            line("{}"),
            decide(&Answer::Undefined),
        ] {
            assert_eq!(d.reason(), Some(DenyReason::InvalidAnswer), "{d:?}");
        }
    }

    #[test]
    fn truncated_json_is_text_and_denies() {
        let d = line(r#"{"allow": tru"#);
        assert_eq!(d.reason(), Some(DenyReason::Rule));
        assert!(!d.is_allow());
    }

    #[test]
    fn messages_are_capped_and_cleaned() {
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let capped = cap_message(&long);
        assert!(capped.len() <= MAX_MESSAGE_BYTES);
        assert!(capped.chars().all(|c| c == 'é'));
        assert_eq!(cap_message("a\u{0}b\x1b[31m"), "a b [31m");
    }

    #[test]
    fn unknown_keys_do_not_change_the_decision() {
        assert_eq!(v(json!({"allow": true, "note": "x"})), Decision::ALLOW);
        assert_eq!(
            v(json!({"allow": false, "note": "x"})),
            Decision::deny(DenyReason::Rule)
        );
    }
}
