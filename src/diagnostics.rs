//! Diagnostics (`tracing`) on stderr, every line prefixed with `httpjail:` so that our messages
//! can be told apart from the command's in a shared terminal.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The target of what a JavaScript rule writes with `console.log` and friends. Shown at the
/// default verbosity, as `httpjail: rule: <text>`.
pub const RULE_LOG_TARGET: &str = "httpjail::rule";

/// Installs the stderr subscriber. `RUST_LOG` wins over `-v`; the default shows warnings,
/// errors and the rule's own `console` output.
pub fn init(verbosity: u8, rust_log: Option<&str>) {
    let default = match verbosity {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = rust_log
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| {
            EnvFilter::new(format!("httpjail={default},{RULE_LOG_TARGET}=info,warn"))
        });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // stderr, with the real values of `--secret` redacted once a run installs them.
        .with_writer(crate::secrets::redact::DiagnosticsWriter)
        .event_format(Prefixed)
        .try_init();
}

struct Prefixed;

impl<S, N> FormatEvent<S, N> for Prefixed
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if event.metadata().target() == RULE_LOG_TARGET {
            write!(writer, "httpjail: rule: ")?;
            ctx.field_format().format_fields(writer.by_ref(), event)?;
            return writeln!(writer);
        }
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warning",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            Level::TRACE => "trace",
        };
        write!(writer, "httpjail: {level}: ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
