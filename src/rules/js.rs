//! The JavaScript engine (`--js`, `--js-file`) on QuickJS (rquickjs).

use std::time::Duration;

use super::{Decision, DenyReason, Error, RuleRequest};
use crate::config::JsSource;

/// Limits of one evaluation.
#[derive(Debug, Clone, Copy)]
pub struct JsOptions {
    pub deadline: Duration,
    pub memory_limit: usize,
}

#[derive(Debug)]
pub struct JsEngine {
    _options: JsOptions,
}

impl JsEngine {
    pub fn compile(_source: &JsSource, options: JsOptions) -> Result<Self, Error> {
        Ok(Self { _options: options })
    }

    pub fn evaluate(&self, _request: &RuleRequest) -> Decision {
        Decision::deny_with(
            DenyReason::EngineError,
            "the JavaScript engine is not built yet",
        )
    }
}
