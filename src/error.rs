//! The top-level error, how it is printed, and the exit codes httpjail uses.
//!
//! Exit codes follow the convention of GNU `env`, `timeout` and `chroot`, so that the command's
//! own codes stay unambiguous (SPEC section 4).

use std::fmt::Write as _;

/// The command's exit code is passed through; these are httpjail's own.
pub mod exit_code {
    /// `--test` allowed / everything fine.
    pub const SUCCESS: i32 = 0;
    /// `--test` denied; `replay` found flips.
    pub const DENIED: i32 = 1;
    /// `--timeout` expired.
    pub const TIMEOUT: i32 = 124;
    /// httpjail itself failed (configuration, CA, jail setup).
    pub const HTTPJAIL_FAILED: i32 = 125;
    /// The command was found but could not be executed.
    pub const NOT_EXECUTABLE: i32 = 126;
    /// The command was not found.
    pub const NOT_FOUND: i32 = 127;
    /// Added to the signal number when the command died of a signal.
    pub const SIGNAL_BASE: i32 = 128;
}

/// Everything that can stop httpjail before or while it runs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    #[error(transparent)]
    Rules(#[from] crate::rules::Error),
    #[error(transparent)]
    Ca(#[from] crate::ca::Error),
    #[error(transparent)]
    Jail(#[from] crate::jail::Error),
    #[error(transparent)]
    Docker(#[from] crate::jail::docker::Error),
    #[error("{0}")]
    Message(String),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    /// A hint printed after the error, when there is one worth giving.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Rules(e) => e.hint(),
            Self::Jail(e) => e.hint(),
            Self::Docker(e) => e.hint(),
            _ => None,
        }
    }

    pub fn exit_code(&self) -> i32 {
        exit_code::HTTPJAIL_FAILED
    }
}

/// An error and its causes on one line (for messages embedded in another error).
pub fn render_inline(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

/// The first error of type `T` in `error`'s source chain (itself included).
pub fn find_source<'a, T: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// Renders an error the one way httpjail prints errors:
///
/// ```text
/// httpjail: error: <what failed>
///   caused by: <source>
///
/// hint: <what to do>
/// ```
pub fn render(error: &(dyn std::error::Error + 'static), hint: Option<&str>) -> String {
    let mut out = format!("httpjail: error: {error}\n");
    let mut source = error.source();
    let mut last = error.to_string();
    while let Some(cause) = source {
        let text = cause.to_string();
        // `#[error(transparent)]` and friends can repeat the same text; print it once.
        if !last.contains(&text) {
            let _ = writeln!(out, "httpjail:   caused by: {text}");
        }
        last = text;
        source = cause.source();
    }
    if let Some(hint) = hint {
        let _ = writeln!(out, "httpjail: hint: {hint}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_prints_chain_once_with_prefix() {
        let e = Error::io(
            "read rule file `r.js`",
            std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory"),
        );
        let text = render(&e, Some("check the path"));
        assert_eq!(
            text,
            "httpjail: error: read rule file `r.js`\n\
             httpjail:   caused by: No such file or directory\n\
             httpjail: hint: check the path\n"
        );
        assert!(text.lines().all(|l| l.starts_with("httpjail:")));
    }
}
