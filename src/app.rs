//! Orchestration: turns a [`Config`] into a run of the chosen mode and an exit code.
//!
//! `app` is the only module that knows both the proxy and the jails. Start-up order for a run:
//! rule (compile / start) → CA → upstream roots → request log → proxy listeners → the
//! command's files (CA bundle) → the command. Teardown is the reverse, after the command has
//! exited: stop accepting, let in-flight requests finish, stop the rule engine, flush the log,
//! remove the files.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::ca::Authority;
use crate::child::{self, CommandSpec, Outcome};
use crate::config::{Config, JailKind, Mode};
use crate::env::{self, CommandEnv};
use crate::error::{Error, exit_code};
use crate::proxy::body::BoxError;
use crate::proxy::{Entry, Interceptor, Proxy, ProxySettings};
use crate::request_log::{LogWriter, RequestLog};
use crate::rules::{Decision, RuleEngine, RuleRequest};
use crate::runtime_dir::RuntimeDir;
use crate::secrets::Secrets;
use crate::shutdown::{self, ShutdownTrigger};
use crate::signals::{self, Signals};

impl Interceptor for Authority {
    fn server_config(&self, name: &str) -> Result<Arc<rustls::ServerConfig>, BoxError> {
        Authority::server_config(self, name).map_err(BoxError::from)
    }
}

/// Runs the configured mode; returns the process exit code.
pub fn run(config: Config) -> Result<i32, Error> {
    // Signals must be blocked before the runtime creates its threads (see `signals`).
    let signals = match config.mode {
        Mode::Run { .. } | Mode::DockerRun { .. } => {
            Some(signals::listen().map_err(|e| Error::io("set up signal handling", e))?)
        }
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("httpjail-worker")
        .build()
        .map_err(|e| Error::io("start the async runtime", e))?;
    runtime.block_on(run_async(config, signals))
}

async fn run_async(config: Config, signals: Option<Signals>) -> Result<i32, Error> {
    match &config.mode {
        Mode::Test { method, url } => test(&config, method, url).await,
        Mode::Trust(action) => Ok(crate::ca::trust::run(*action, &config.ca)?),
        Mode::Server { http_bind, https_bind } => server(&config, *http_bind, *https_bind).await,
        Mode::Run {
            command,
            jail: JailKind::Weak,
        } => weak(&config, command, signals.unwrap_or_else(Signals::none)).await,
        Mode::Cleanup => cleanup(),
        other => Err(Error::Message(format!(
            "{} is not available in this build yet",
            mode_name(other)
        ))),
    }
}

fn mode_name(mode: &Mode) -> &'static str {
    match mode {
        Mode::Run { jail: JailKind::Strong, .. } => "strong mode (use --weak for now)",
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

#[expect(clippy::print_stdout, reason = "--test prints its verdict on stdout by contract")]
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

/// Everything that serves requests: shared by weak mode, the strong jail and server mode.
struct Services {
    proxy: Proxy,
    /// `--secret`: the placeholders the command's environment gets.
    secrets: Option<Arc<Secrets>>,
    engine: RuleEngine,
    authority: Arc<Authority>,
    log_writer: Option<LogWriter>,
    trigger: ShutdownTrigger,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Services {
    async fn start(config: &Config) -> Result<Self, Error> {
        // The rule first: a rule that cannot load is the most likely error, and nothing else
        // should have been created when it is reported.
        let engine = RuleEngine::start(config).await?;
        // --secret: placeholders and the leak detector, before anything can show a value.
        let secrets =
            Secrets::from_config(&config.secrets).map_err(|e| Error::Message(e.to_string()))?;
        if secrets.is_some() {
            crate::secrets::harden_process();
            crate::secrets::redact::install_diagnostics(secrets.clone());
        }
        let authority = Arc::new(Authority::load_or_create(&config.ca)?);
        let roots = Arc::new(crate::ca::upstream_roots(config.upstream_ca.as_deref())?);
        let (log, log_writer) = match &config.request_log {
            Some(log) => {
                let (log, writer) = RequestLog::open(&log.path, log.format)
                    .map_err(|e| Error::Message(crate::error::render_inline(&e)))?;
                (log, Some(writer))
            }
            None => (RequestLog::disabled(), None),
        };
        let mut settings = ProxySettings::new(roots);
        settings.resolve = config.resolve.clone();
        settings.allow_private = config.allow_private.clone();
        settings.timeouts = config.timeouts.clone();
        settings.secrets = secrets.clone();
        let proxy = Proxy::new(settings, engine.clone(), authority.clone(), log);
        let (trigger, _) = shutdown::channel();
        Ok(Self {
            proxy,
            secrets,
            engine,
            authority,
            log_writer,
            trigger,
            tasks: Vec::new(),
        })
    }

    fn serve(&mut self, listener: TcpListener, entry: Entry) {
        let proxy = self.proxy.clone();
        let shutdown = self.trigger.subscribe();
        self.tasks
            .push(tokio::spawn(async move { proxy.serve(listener, entry, shutdown).await }));
    }

    /// Stops accepting, lets in-flight requests finish (bounded), stops the engine, flushes
    /// the log.
    async fn stop(self) {
        self.trigger.trigger();
        for task in self.tasks {
            let _ = task.await;
        }
        if !self.proxy.drain().await {
            tracing::warn!(
                "{} connection(s) still open at shutdown were closed",
                self.proxy.live_connections()
            );
        }
        self.engine.shutdown().await;
        if let Some(writer) = self.log_writer {
            writer.close();
        }
        // --secret: drop our references so the values are zeroed once the last one goes.
        crate::secrets::redact::install_diagnostics(None);
    }
}

/// The files the command needs to trust our CA: a bundle (our CA and the system roots) and an
/// OpenSSL hashed directory, in this run's private directory.
struct CommandFiles {
    dir: RuntimeDir,
}

impl CommandFiles {
    fn write(authority: &Authority) -> Result<Self, Error> {
        let dir = RuntimeDir::create().map_err(|e| Error::io("create the run directory", e))?;
        let bundle = authority.child_bundle_pem()?;
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text)
                .map_err(|e| Error::io(format!("write `{}`", dir.path().join(name).display()), e))
        };
        write("ca-bundle.pem", &bundle)?;
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).map_err(|e| Error::io(format!("create `{}`", certs.display()), e))?;
        crate::cert_dir::write_hashed(&certs, authority.cert_der(), authority.cert_pem())
            .map_err(|e| Error::io(format!("write the CA into `{}`", certs.display()), e))?;
        Ok(Self { dir })
    }

    fn bundle(&self) -> std::path::PathBuf {
        self.dir.path().join("ca-bundle.pem")
    }

    fn certs(&self) -> std::path::PathBuf {
        self.dir.path().join("certs")
    }
}

/// Weak mode: the proxy on loopback, the command with proxy and CA variables.
async fn weak(config: &Config, command: &[OsString], mut signals: Signals) -> Result<i32, Error> {
    let mut services = Services::start(config).await?;
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .map_err(|e| Error::io("bind the proxy on 127.0.0.1", e))?;
    let proxy_addr = listener
        .local_addr()
        .map_err(|e| Error::io("read the proxy address", e))?;
    services.serve(listener, Entry::PROXY);
    let files = CommandFiles::write(&services.authority)?;
    let proxy_url = format!("http://{proxy_addr}");
    let bundle = files.bundle();
    let certs = files.certs();
    let mut command_env = env::command_env(
        std::env::vars_os(),
        &CommandEnv {
            proxy_url: Some(&proxy_url),
            ca_bundle: &bundle,
            ca_dir: &certs,
        },
    );
    // --secret: the command sees placeholders, never the real values.
    if let Some(secrets) = &services.secrets {
        secrets.patch_env(&mut command_env);
    }
    let spec = CommandSpec {
        argv: command.to_vec(),
        env: command_env,
        cwd: None,
    };
    tracing::info!("weak jail: proxy on {proxy_url}");
    let outcome = child::run(&spec, config.timeout, &mut signals).await;
    services.stop().await;
    drop(files);
    let outcome = outcome.map_err(|e| Error::io("run the command", e))?;
    report_outcome(command, outcome);
    Ok(outcome.exit_code())
}

fn report_outcome(command: &[OsString], outcome: Outcome) {
    let program = command.first().map(|p| p.to_string_lossy()).unwrap_or_default();
    match outcome {
        Outcome::NotFound => eprintln!("httpjail: error: command `{program}` not found"),
        Outcome::NotExecutable => {
            eprintln!("httpjail: error: command `{program}` is not executable (permission denied)");
        }
        Outcome::TimedOut => eprintln!("httpjail: the command was stopped by --timeout"),
        Outcome::Exited(_) | Outcome::Signaled(_) => {}
    }
}

/// Server mode: both listeners until SIGINT or SIGTERM, then a graceful stop.
async fn server(config: &Config, http_bind: SocketAddr, https_bind: SocketAddr) -> Result<i32, Error> {
    let mut services = Services::start(config).await?;
    let bind = |addr: SocketAddr, var: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| Error::io(format!("bind {addr} (from {var} or its default)"), e))
    };
    let http = bind(http_bind, env::HTTP_BIND).await?;
    let https = bind(https_bind, env::HTTPS_BIND).await?;
    let http_addr = http.local_addr().map_err(|e| Error::io("read the HTTP address", e))?;
    let https_addr = https.local_addr().map_err(|e| Error::io("read the HTTPS address", e))?;
    services.serve(http, Entry::PROXY);
    services.serve(https, Entry::PROXY);
    eprintln!("httpjail: server: HTTP proxy listening on {http_addr}");
    eprintln!("httpjail: server: HTTPS proxy listening on {https_addr}");
    eprintln!(
        "httpjail: server: CA certificate for clients: {}",
        services.authority.cert_path().display()
    );
    // --secret: clients have no environment from us; they need the placeholders to use.
    if let Some(secrets) = &services.secrets {
        for var in secrets.vars() {
            let placeholder = secrets.placeholder(var).unwrap_or_default();
            eprintln!("httpjail: server: --secret {var}: clients send {placeholder}");
        }
    }
    wait_for_stop_signal().await;
    eprintln!("httpjail: server: shutting down (waiting for in-flight requests)");
    services.stop().await;
    Ok(exit_code::SUCCESS)
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers we can only run until killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// `--cleanup`: remove what killed runs left behind.
fn cleanup() -> Result<i32, Error> {
    let removed = crate::runtime_dir::cleanup_stale().map_err(|e| Error::io("clean up run directories", e))?;
    for path in &removed {
        eprintln!("httpjail: removed {}", path.display());
    }
    if removed.is_empty() {
        eprintln!("httpjail: nothing to clean up");
    }
    Ok(exit_code::SUCCESS)
}
