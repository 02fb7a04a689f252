//! Orchestration: turns a [`Config`] into a run of the chosen mode and an exit code.
//!
//! `app` is the only module that knows both the proxy and the jails.

use crate::config::{Config, Mode};
use crate::error::{Error, exit_code};
use crate::rules::{Decision, RuleEngine, RuleRequest};

/// Runs the configured mode; returns the process exit code.
pub fn run(config: Config) -> Result<i32, Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("httpjail-worker")
        .build()
        .map_err(|e| Error::io("start the async runtime", e))?;
    runtime.block_on(run_async(config))
}

async fn run_async(config: Config) -> Result<i32, Error> {
    match &config.mode {
        Mode::Test { method, url } => test(&config, method, url).await,
        Mode::Trust(action) => {
            crate::ca::trust::run(*action, &config.ca).map_err(|e| Error::Message(e.chain()))
        }
        other => Err(Error::Message(format!(
            "{} is not available in this build yet",
            mode_name(other)
        ))),
    }
}

fn mode_name(mode: &Mode) -> &'static str {
    match mode {
        Mode::Run { .. } => "running a command",
        Mode::Server { .. } => "--server",
        Mode::Test { .. } => "--test",
        Mode::DockerRun { .. } => "--docker-run",
        Mode::Cleanup => "--cleanup",
        Mode::Trust(_) => "trust",
        Mode::Replay { .. } => "replay",
        Mode::Learn { .. } => "learn",
    }
}

/// `--test [METHOD] URL`: one evaluation, printed on stdout; exit 0 allow, 1 deny.
async fn test(config: &Config, method: &str, url: &str) -> Result<i32, Error> {
    let request = RuleRequest::from_url(method, url, RuleRequest::local_requester())
        .map_err(|e| Error::Message(format!("--test: {e}")))?;
    let engine = RuleEngine::start(config).await?;
    let decision = engine.evaluate(&request).await;
    engine.shutdown().await;
    Ok(print_test_result(&request, &decision))
}

#[expect(
    clippy::print_stdout,
    reason = "--test prints its verdict on stdout by contract"
)]
fn print_test_result(request: &RuleRequest, decision: &Decision) -> i32 {
    match decision {
        Decision::Allow { max_tx_bytes } => {
            println!("ALLOW {} {}", request.method, request.url);
            if let Some(max) = max_tx_bytes {
                println!("max_tx_bytes: {max}");
            }
            exit_code::SUCCESS
        }
        Decision::Deny { reason, message } => {
            println!("DENY {} {}", request.method, request.url);
            if let Some(message) = message {
                println!("{message}");
            }
            tracing::info!("deny reason: {reason}");
            exit_code::DENIED
        }
    }
}
