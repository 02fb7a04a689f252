//! The `httpjail` binary: parse, run, map to an exit code. Nothing else lives here.

use clap::Parser;
use httpjail::{app, cli::Cli, config::Config, diagnostics, env, error};

fn main() -> std::process::ExitCode {
    let code = match httpjail::jail::linux::run_supervisor_if_requested(
        &std::env::args_os().collect::<Vec<_>>(),
    ) {
        // A re-executed httpjail acting as a strong jail's supervisor: no CLI, no runtime.
        Some(code) => code,
        None => {
            httpjail::jail::harden_process();
            real_main()
        }
    };
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX))
}

fn real_main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version: print as clap renders them, exit 0.
            let _ = e.print();
            return error::exit_code::SUCCESS;
        }
        Err(e) => {
            let text = e.render().to_string();
            for line in text.lines() {
                eprintln!("httpjail: {line}");
            }
            return error::exit_code::HTTPJAIL_FAILED;
        }
    };
    let rust_log = std::env::var(env::RUST_LOG).ok();
    diagnostics::init(cli.run.verbose, rust_log.as_deref());
    let outcome = Config::from_cli(cli, &env::ProcessEnv)
        .map_err(error::Error::from)
        .and_then(app::run);
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprint!("{}", error::render(&e, e.hint().as_deref()));
            e.exit_code()
        }
    }
}
