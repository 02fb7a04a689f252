//! The request log and the diagnostics never show a real value.
//!
//! The proxy already denies, before the rule, any request whose URL or host holds a real
//! value, and builds its records and messages from the placeholder side of a request. This
//! module is the backstop at the two sinks, for text that reaches them by another way (a
//! refused Host header, a malformed CONNECT target, a dependency's error message):
//! - [`Secrets::redact_record`]: the request-log filter installed by the proxy;
//! - [`DiagnosticsWriter`]: stderr for `tracing`, redacting every line while a run's secrets are
//!   installed with [`install_diagnostics`].
//!
//! A value is replaced by `[secret $VAR]` wherever it appears raw, base64 or hex, in any case;
//! a text that still holds one once escapes are decoded is replaced whole. Placeholders are
//! not redacted: they are worthless outside this run's proxy and useful when debugging.

use std::borrow::Cow;
use std::io::{self, Write};
use std::ops::ControlFlow;
use std::sync::{Arc, RwLock};

use super::Secrets;
use super::scan::{Case, Needle};
use crate::request_log::Record;
use crate::rules::RuleRequest;

impl Secrets {
    /// `text` with every real value replaced (see the module documentation).
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let matcher = self.matcher();
        let spans = matcher.value_spans(text.as_bytes());
        let redacted: Cow<'a, str> = if spans.is_empty() {
            Cow::Borrowed(text)
        } else {
            let mut out = Vec::with_capacity(text.len());
            let mut last = 0;
            for (range, secret) in spans {
                out.extend_from_slice(&text.as_bytes()[last..range.start]);
                out.extend_from_slice(format!("[secret ${}]", self.entries[secret].var).as_bytes());
                last = range.end;
            }
            out.extend_from_slice(&text.as_bytes()[last..]);
            Cow::Owned(String::from_utf8_lossy(&out).into_owned())
        };
        let mut still = None;
        let _ = matcher.scan_decoding(redacted.as_bytes(), Case::Folded, &mut |hit| {
            if hit.needle == Needle::Value {
                still = Some(hit.secret);
                ControlFlow::Break(hit)
            } else {
                ControlFlow::Continue(())
            }
        });
        match still {
            Some(secret) => Cow::Owned(format!(
                "[redacted: held the value of ${}]",
                self.entries[secret].var
            )),
            None => redacted,
        }
    }

    /// Redacts every text field of a request-log record.
    pub fn redact_record(&self, record: &mut Record) {
        for field in [
            &mut record.url,
            &mut record.host,
            &mut record.path,
            &mut record.method,
        ] {
            if let Cow::Owned(clean) = self.redact(field) {
                *field = clean;
            }
        }
        if let Some(message) = record.message.as_mut()
            && let Cow::Owned(clean) = self.redact(message)
        {
            *message = clean;
        }
    }

    /// A copy of `request` fit to be shown: URL, host, path and method redacted. For denying
    /// a request whose URL or host carried a real value.
    pub fn redact_request(&self, request: &RuleRequest) -> RuleRequest {
        let mut shown = request.clone();
        for field in [
            &mut shown.url,
            &mut shown.host,
            &mut shown.path,
            &mut shown.method,
        ] {
            if let Cow::Owned(clean) = self.redact(field) {
                *field = clean;
            }
        }
        shown
    }

    /// The filter the request log applies to every record.
    pub fn record_filter(self: &Arc<Self>) -> crate::request_log::RecordFilter {
        let secrets = self.clone();
        Arc::new(move |record: &mut Record| secrets.redact_record(record))
    }
}

/// The secrets whose values the diagnostics redact; `None` outside a run with secrets.
static DIAGNOSTICS: RwLock<Option<Arc<Secrets>>> = RwLock::new(None);

/// Makes the diagnostics redact `secrets` (or stop redacting, with `None`).
pub fn install_diagnostics(secrets: Option<Arc<Secrets>>) {
    let mut slot = DIAGNOSTICS.write().unwrap_or_else(|e| e.into_inner());
    *slot = secrets;
}

/// `tracing`'s writer: stderr, through the installed redactor. `tracing` formats each event
/// into one buffer and writes it with one `write_all`, so every line is redacted whole.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiagnosticsWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for DiagnosticsWriter {
    type Writer = RedactingStderr;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingStderr
    }
}

/// One write to stderr, redacted.
#[derive(Debug)]
pub struct RedactingStderr;

impl Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let secrets = DIAGNOSTICS
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(secrets) = secrets {
            let text = String::from_utf8_lossy(buf);
            if let Cow::Owned(clean) = secrets.redact(&text) {
                let mut line = clean;
                if buf.ends_with(b"\n") && !line.ends_with('\n') {
                    line.push('\n');
                }
                io::stderr().write_all(line.as_bytes())?;
                return Ok(buf.len());
            }
        }
        io::stderr().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Decision;
    use crate::secrets::tests::{VALUE, secrets};
    use base64::Engine as _;

    #[test]
    fn values_are_redacted_in_every_form_and_placeholders_are_kept() {
        let s = secrets();
        let ph = s.placeholder("TOKEN").unwrap().to_owned();
        let b64 = base64::engine::general_purpose::STANDARD.encode(VALUE);
        let text = format!("a {VALUE} b {b64} c {ph} d {}", VALUE.to_uppercase());
        let clean = s.redact(&text);
        assert!(!clean.contains(VALUE), "{clean}");
        assert!(!clean.contains(&b64[2..b64.len() - 3]), "{clean}");
        assert!(!clean.contains(&VALUE.to_uppercase()), "{clean}");
        assert!(clean.contains(&ph), "{clean}");
        assert!(clean.contains("[secret $TOKEN]"), "{clean}");
        assert!(matches!(s.redact("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn escaped_values_replace_the_whole_text() {
        let s = secrets();
        let escaped: String = VALUE.bytes().map(|b| format!("%{b:02x}")).collect();
        let text = format!("GET /x?q={escaped}");
        let clean = s.redact(&text);
        assert_eq!(clean, "[redacted: held the value of $TOKEN]");
    }

    #[test]
    fn records_and_requests_are_redacted() {
        let s = secrets();
        let request = RuleRequest::from_url(
            "GET",
            &format!("https://evil.test/p/{VALUE}?x=1"),
            RuleRequest::local_requester(),
        )
        .unwrap();
        let shown = s.redact_request(&request);
        assert!(!shown.url.contains(VALUE), "{}", shown.url);
        assert!(!shown.path.contains(VALUE));
        let mut record = Record::for_request(&request, &Decision::ALLOW);
        record.message = Some(format!("echo {VALUE}"));
        s.redact_record(&mut record);
        let line = record.json_line();
        assert!(!line.contains(VALUE), "{line}");
    }
}
