//! The line-processor engine (`--proc`): one long-running process, one JSON line per request.

use std::time::Duration;

use super::{Decision, DenyReason, Error, RuleRequest};

#[derive(Debug, Clone, Copy)]
pub struct ProcessorOptions {
    pub answer_timeout: Duration,
}

#[derive(Debug)]
pub struct LineProcessor {
    _options: ProcessorOptions,
}

impl LineProcessor {
    pub async fn start(_command: &str, options: ProcessorOptions) -> Result<Self, Error> {
        Ok(Self { _options: options })
    }

    pub async fn evaluate(&self, _request: &RuleRequest) -> Decision {
        Decision::deny_with(
            DenyReason::EngineError,
            "the line processor is not built yet",
        )
    }

    pub async fn stop(&self) {}
}
