//! Rule engines: what decides, for each request, allow or deny.
//!
//! A rule is the user's program (JS expression, shell command, line processor). An engine runs
//! it. Engines see only [`RuleRequest`] (never hyper types) and always produce a [`Decision`]:
//! any failure, timeout or malformed answer is a deny with its own [`DenyReason`] (fail closed).
//!
//! - [`request`]: the request model (SPEC section 2), built in one place.
//! - [`answer`]: the one parser of rule answers (SPEC section 3), shared by `js` and
//!   `line_processor`.
//! - [`js`], [`shell`], [`line_processor`]: the three engines.

pub mod answer;
pub mod decision;
pub mod js;
pub mod line_processor;
pub mod program;
pub mod request;
pub mod shell;

use std::path::PathBuf;
use std::sync::Arc;

pub use decision::{Decision, DenyReason};
pub use request::{RuleRequest, Scheme};

use crate::config::{Config, RuleSource};

/// Why a rule could not be loaded. Each is fatal at start-up (exit 125) and names the flag.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{origin}: JavaScript syntax error at line {line}, column {column}: {message}")]
    JsSyntax {
        origin: String,
        line: u32,
        column: u32,
        message: String,
    },
    #[error("{origin}: the rule could not be compiled: {message}")]
    JsCompile { origin: String, message: String },
    #[error("--js-file: cannot read `{path}`")]
    JsFileRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{flag}: `{program}` was not found")]
    ProgramNotFound { flag: &'static str, program: String },
    #[error("{flag}: `{program}` is not executable")]
    ProgramNotExecutable { flag: &'static str, program: String },
    #[error("--proc: cannot start `{command}`")]
    ProcessorStart {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--proc: `{command}` exited right after it started ({status})")]
    ProcessorExited { command: String, status: String },
}

impl Error {
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::ProgramNotExecutable { program, .. } => Some(format!("make it executable: chmod +x {program}")),
            Self::ProgramNotFound { .. } => {
                Some("give a path (e.g. ./policy.sh) or a program on PATH".to_owned())
            }
            Self::JsSyntax { .. } | Self::JsCompile { .. } => Some(
                "the rule is a JavaScript expression (or statements ending in one), e.g. r.host === 'example.com'"
                    .to_owned(),
            ),
            _ => None,
        }
    }
}

/// The configured engine. Cheap to clone; shared by every connection.
#[derive(Debug, Clone)]
pub struct RuleEngine {
    inner: Arc<Kind>,
}

/// A rule written in Rust, for embedding httpjail as a library and for tests.
pub type NativeRule = dyn Fn(&RuleRequest) -> Decision + Send + Sync;

enum Kind {
    DenyAll,
    Native(Box<NativeRule>),
    Js(js::JsEngine),
    Shell(shell::ShellEngine),
    LineProcessor(line_processor::LineProcessor),
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::DenyAll => f.write_str("DenyAll"),
            Self::Native(_) => f.write_str("Native"),
            Self::Js(e) => e.fmt(f),
            Self::Shell(e) => e.fmt(f),
            Self::LineProcessor(e) => e.fmt(f),
        }
    }
}

impl RuleEngine {
    /// Loads the rule of `config`: compiles JS, checks a shell program, starts a line processor.
    /// Must be called inside a tokio runtime (the line processor's I/O runs on it).
    pub async fn start(config: &Config) -> Result<Self, Error> {
        // --secret: rule programs inherit our environment, minus the secrets.
        let hidden = || crate::secrets::env::hidden_vars(&config.secrets, std::env::vars_os());
        let kind = match &config.rule {
            RuleSource::None => Kind::DenyAll,
            RuleSource::Js(source) => Kind::Js(js::JsEngine::compile(
                source,
                js::JsOptions {
                    deadline: config.timeouts.js_eval,
                    memory_limit: config.js_memory_limit,
                },
            )?),
            RuleSource::Shell { command } => Kind::Shell(shell::ShellEngine::with_program(
                program::Program::resolve("--sh", command)?.hiding_env(hidden()),
                shell::ShellOptions {
                    timeout: config.timeouts.shell,
                },
            )),
            RuleSource::LineProcessor { command } => Kind::LineProcessor(
                line_processor::LineProcessor::start_program(
                    program::Program::resolve("--proc", command)?.hiding_env(hidden()),
                    line_processor::ProcessorOptions {
                        answer_timeout: config.timeouts.line_processor,
                    },
                )
                .await?,
            ),
        };
        Ok(Self {
            inner: Arc::new(kind),
        })
    }

    /// An engine that denies everything (no rule configured).
    pub fn deny_all() -> Self {
        Self {
            inner: Arc::new(Kind::DenyAll),
        }
    }

    /// An engine that runs a Rust closure.
    pub fn native(rule: impl Fn(&RuleRequest) -> Decision + Send + Sync + 'static) -> Self {
        Self {
            inner: Arc::new(Kind::Native(Box::new(rule))),
        }
    }

    /// Decides one request. Never fails: every error is a deny.
    pub async fn evaluate(&self, request: &RuleRequest) -> Decision {
        match &*self.inner {
            Kind::DenyAll => Decision::deny(DenyReason::NoRule),
            Kind::Native(rule) => rule(request),
            Kind::Js(engine) => engine.evaluate(request),
            Kind::Shell(engine) => engine.evaluate(request).await,
            Kind::LineProcessor(engine) => engine.evaluate(request).await,
        }
    }

    /// Stops what the engine started (the line processor). Idempotent.
    pub async fn shutdown(&self) {
        if let Kind::LineProcessor(p) = &*self.inner {
            p.stop().await;
        }
    }
}
