//! The shell engine (`--sh`): one process per request.

use std::time::Duration;

use super::{Decision, DenyReason, Error, RuleRequest};

#[derive(Debug, Clone, Copy)]
pub struct ShellOptions {
    pub timeout: Duration,
}

#[derive(Debug)]
pub struct ShellEngine {
    _options: ShellOptions,
}

impl ShellEngine {
    pub fn new(_command: &str, options: ShellOptions) -> Result<Self, Error> {
        Ok(Self { _options: options })
    }

    pub async fn evaluate(&self, _request: &RuleRequest) -> Decision {
        Decision::deny_with(DenyReason::EngineError, "the shell engine is not built yet")
    }
}
