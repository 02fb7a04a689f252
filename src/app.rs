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
use crate::child::{self, CommandSpec, Outcome, Supervised};
use crate::config::{Config, JailKind, Mode};
use crate::env::{self, CommandEnv};
use crate::error::{Error, exit_code};
use crate::jail::docker;
use crate::jail::linux::{ExitOutcome, JailListeners, JailSpec, RunAs, StrongJail};
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
    // Our handlers go in before anything else runs (see `signals`).
    let signals = match config.mode {
        Mode::Run { .. } | Mode::DockerRun { .. } => {
            Some(signals::listen().map_err(|e| Error::io("set up signal handling", e))?)
        }
        _ => None,
    };
    raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("httpjail-worker")
        .build()
        .map_err(|e| Error::io("start the async runtime", e))?;
    runtime.block_on(run_async(config, signals))
}

/// Every client connection is a descriptor (two when forwarded): use the hard limit, not the
/// often much lower soft limit, so thousands of connections do not fail with EMFILE.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::debug!("cannot raise the open-files limit from {soft} to {hard}: {e}");
    }
}

async fn run_async(config: Config, signals: Option<Signals>) -> Result<i32, Error> {
    match &config.mode {
        Mode::Test { method, url } => test(&config, method, url).await,
        Mode::Trust(action) => Ok(crate::ca::trust::run(*action, &config.ca)?),
        Mode::Server {
            http_bind,
            https_bind,
        } => server(&config, *http_bind, *https_bind).await,
        Mode::Run {
            command,
            jail: JailKind::Weak,
        } => weak(&config, command, signals.unwrap_or_else(Signals::none)).await,
        Mode::Run {
            command,
            jail: JailKind::Strong,
        } => strong(&config, command, signals.unwrap_or_else(Signals::none)).await,
        Mode::DockerRun { args } => {
            docker_run(&config, args, signals.unwrap_or_else(Signals::none)).await
        }
        Mode::Cleanup => cleanup().await,
        Mode::Replay { log, format } => crate::policy::run_replay(&config, log, *format).await,
        Mode::Learn { log } => crate::policy::run_learn(log),
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
        // httpjail is already non-dumpable (`jail::harden_process` in `main`), which keeps the
        // real values out of core dumps and away from same-user debuggers.
        if secrets.is_some() {
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

    /// `env` with every `--secret` variable (and any copy of a real value) replaced by its
    /// placeholder: what a command, a docker client or a container may see.
    fn with_placeholders(&self, mut env: Vec<(OsString, OsString)>) -> Vec<(OsString, OsString)> {
        if let Some(secrets) = &self.secrets {
            secrets.patch_env(&mut env);
        }
        env
    }

    /// The command's complete environment: ours, with the proxy variables when `proxy_url` is
    /// given (weak mode), the CA variables pointing into `files`, and placeholders for secrets.
    fn command_env(
        &self,
        files: &CommandFiles,
        proxy_url: Option<&str>,
    ) -> Vec<(OsString, OsString)> {
        let bundle = files.bundle();
        let certs = files.certs();
        self.with_placeholders(env::command_env(
            std::env::vars_os(),
            &CommandEnv {
                proxy_url,
                ca_bundle: &bundle,
                ca_dir: &certs,
            },
        ))
    }

    fn serve(&mut self, listener: TcpListener, entry: Entry) {
        let proxy = self.proxy.clone();
        let shutdown = self.trigger.subscribe();
        self.tasks.push(tokio::spawn(async move {
            proxy.serve(listener, entry, shutdown).await;
        }));
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
        std::fs::create_dir(&certs)
            .map_err(|e| Error::io(format!("create `{}`", certs.display()), e))?;
        crate::cert_dir::write_hashed(&certs, authority.cert_der(), authority.cert_pem())
            .map_err(|e| Error::io(format!("write the CA into `{}`", certs.display()), e))?;
        let files = Self { dir };
        files.make_readable().map_err(|e| {
            Error::io(
                format!("set permissions in `{}`", files.dir.path().display()),
                e,
            )
        })?;
        Ok(files)
    }

    /// The command may run as another user (the sudo user, a container's user) and httpjail's
    /// umask may be 077: the certificates (nothing secret) get explicit read permissions. The
    /// run directory itself stays private to httpjail's user (or the sudo user it is shared
    /// with).
    fn make_readable(&self) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |path: &std::path::Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        };
        mode(&self.bundle(), 0o644)?;
        mode(&self.certs(), 0o755)?;
        for entry in std::fs::read_dir(self.certs())? {
            mode(&entry?.path(), 0o644)?;
        }
        Ok(())
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
    let spec = CommandSpec {
        argv: command.to_vec(),
        env: services.command_env(&files, Some(&proxy_url)),
        cwd: None,
    };
    tracing::info!("weak jail: proxy on {proxy_url}");
    let outcome = child::run(&spec, config.timeout, &mut signals).await;
    services.stop().await;
    drop(files);
    let outcome = outcome.map_err(|e| Error::io("run the command", e))?;
    report_outcome(command, &outcome);
    Ok(outcome.exit_code())
}

/// A command in a strong jail, for [`child::supervise`].
struct Jailed(StrongJail);

impl Supervised for Jailed {
    async fn wait(&mut self) -> Outcome {
        match self.0.wait().await {
            ExitOutcome::Exited(code) => Outcome::Exited(code),
            ExitOutcome::Signaled(signal) => Outcome::Signaled(signal),
            ExitOutcome::NotFound => Outcome::NotFound,
            ExitOutcome::NotExecutable { .. } => Outcome::NotExecutable,
            ExitOutcome::Failed(why) => Outcome::Failed(why),
        }
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        self.0.signal(signal);
    }

    fn kill(&self) {
        self.0.kill();
    }
}

/// Strong mode: the command in its own network namespace whose only way out is the proxy.
async fn strong(config: &Config, command: &[OsString], mut signals: Signals) -> Result<i32, Error> {
    let mut services = Services::start(config).await?;
    let files = CommandFiles::write(&services.authority)?;
    if let Some(user) = &config.sudo_user {
        files
            .dir
            .share_with(user.uid, user.gid)
            .map_err(|e| Error::io("let the sudo user read the run directory", e))?;
    }
    let cwd = std::env::current_dir().map_err(|e| Error::io("read the current directory", e))?;
    let mut spec = JailSpec::new(command.to_vec(), services.command_env(&files, None), cwd);
    if let Some(user) = &config.sudo_user {
        spec.run_as = RunAs::from_sudo_user(user)?;
    }
    let (jail, listeners) = tokio::task::spawn_blocking(move || StrongJail::create(&spec))
        .await
        .map_err(|e| Error::Message(format!("strong jail set-up panicked: {e}")))??;
    let mut jailed = Jailed(jail);
    let resolvers = serve_jail(&mut services, listeners)?;
    jailed.0.start()?;
    // The command shares our process group: the terminal's signals reach it directly.
    let outcome = child::supervise(&mut jailed, config.timeout, &mut signals, true).await;
    drop(jailed);
    for resolver in resolvers {
        resolver.abort();
    }
    services.stop().await;
    drop(files);
    report_outcome(command, &outcome);
    Ok(outcome.exit_code())
}

/// Serves a jail's listeners: 80/443 with the proxy (transparent entries), 53 with the
/// resolver. Returns the resolver tasks, to abort when the jail ends.
fn serve_jail(
    services: &mut Services,
    listeners: JailListeners,
) -> Result<Vec<tokio::task::JoinHandle<()>>, Error> {
    let from_std = |l: std::net::TcpListener| {
        TcpListener::from_std(l).map_err(|e| Error::io("serve a jail listener", e))
    };
    for listener in listeners.http {
        services.serve(from_std(listener)?, Entry::Jail { port: 80 });
    }
    for listener in listeners.https {
        services.serve(from_std(listener)?, Entry::Jail { port: 443 });
    }
    let mut resolvers = Vec::new();
    for socket in listeners.dns_udp {
        let socket = tokio::net::UdpSocket::from_std(socket)
            .map_err(|e| Error::io("serve the jail's resolver", e))?;
        resolvers.push(tokio::spawn(crate::dns::serve_udp(socket)));
    }
    for listener in listeners.dns_tcp {
        resolvers.push(tokio::spawn(crate::dns::serve_tcp(from_std(listener)?)));
    }
    Ok(resolvers)
}

/// `--docker-run`: a container whose network namespace is jailed like a strong jail's (see
/// [`crate::jail::docker`]). The arguments were checked by `config`.
async fn docker_run(
    config: &Config,
    args: &[OsString],
    mut signals: Signals,
) -> Result<i32, Error> {
    // Root and the client first: cheap checks, before anything is started.
    let docker = docker::Session::check_local()?;
    let mut services = Services::start(config).await?;
    // Readable by any user in the container (see `CommandFiles::make_readable`).
    let files = CommandFiles::write(&services.authority)?;
    let session = docker::Session::connect(docker).await?;
    let (jail, listeners) = session.create().await?;
    let outcome = async {
        let resolvers = serve_jail(&mut services, listeners)?;
        let interactive = child::is_interactive();
        // --secret: the container and the docker client see placeholders only.
        let client_env = services.with_placeholders(std::env::vars_os().collect());
        let mut placeholders = Vec::new();
        if let Some(secrets) = &services.secrets {
            for var in secrets.vars() {
                if let Some(placeholder) = secrets.placeholder(var) {
                    placeholders.push((OsString::from(var), OsString::from(placeholder)));
                }
            }
        }
        let run_args = jail.run_args(args, &files.bundle(), &files.certs(), &placeholders);
        let mut run = jail.spawn(run_args, interactive, &client_env)?;
        let outcome = child::supervise(&mut run, config.timeout, &mut signals, interactive).await;
        Ok::<_, Error>((outcome, resolvers))
    }
    .await;
    // The container is gone (or killed now) before the proxy stops serving it.
    jail.remove().await;
    let (outcome, resolvers) = match outcome {
        Ok(done) => done,
        Err(e) => {
            services.stop().await;
            return Err(e);
        }
    };
    for resolver in resolvers {
        resolver.abort();
    }
    services.stop().await;
    drop(files);
    report_outcome(&[OsString::from("docker")], &outcome);
    Ok(outcome.exit_code())
}

fn report_outcome(command: &[OsString], outcome: &Outcome) {
    let program = command
        .first()
        .map(|p| p.to_string_lossy())
        .unwrap_or_default();
    match outcome {
        Outcome::NotFound => eprintln!("httpjail: error: command `{program}` not found"),
        Outcome::NotExecutable => {
            eprintln!("httpjail: error: command `{program}` is not executable (permission denied)");
        }
        Outcome::TimedOut => eprintln!("httpjail: the command was stopped by --timeout"),
        Outcome::Failed(why) => eprintln!("httpjail: error: {why}"),
        Outcome::Exited(_) | Outcome::Signaled(_) => {}
    }
}

/// Server mode: both listeners until SIGINT or SIGTERM, then a graceful stop.
async fn server(
    config: &Config,
    http_bind: SocketAddr,
    https_bind: SocketAddr,
) -> Result<i32, Error> {
    let mut services = Services::start(config).await?;
    let bind = |addr: SocketAddr, var: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| Error::io(format!("bind {addr} (from {var} or its default)"), e))
    };
    let http = bind(http_bind, env::HTTP_BIND).await?;
    let https = bind(https_bind, env::HTTPS_BIND).await?;
    let http_addr = http
        .local_addr()
        .map_err(|e| Error::io("read the HTTP address", e))?;
    let https_addr = https
        .local_addr()
        .map_err(|e| Error::io("read the HTTPS address", e))?;
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
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
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
async fn cleanup() -> Result<i32, Error> {
    let removed = crate::runtime_dir::cleanup_stale()
        .map_err(|e| Error::io("clean up run directories", e))?;
    for path in &removed {
        eprintln!("httpjail: removed {}", path.display());
    }
    let mut nothing = removed.is_empty();
    // Strong jails whose supervisor outlived its httpjail.
    match crate::jail::linux::cleanup::cleanup() {
        Ok(report) => {
            for pid in &report.killed {
                eprintln!("httpjail: stopped the jail of supervisor {pid}");
            }
            for (pid, why) in &report.failed {
                eprintln!("httpjail: cannot stop the jail of supervisor {pid}: {why}");
            }
            nothing &= report.killed.is_empty() && report.failed.is_empty();
        }
        Err(e) => eprintln!("httpjail: jails not checked: {e}"),
    }
    // Containers of killed `--docker-run`s, when Docker is installed at all.
    if let Ok(docker) = docker::Docker::find() {
        match docker::cleanup::remove_stale(&docker).await {
            Ok(report) => {
                for id in &report.removed {
                    eprintln!("httpjail: removed container {id}");
                }
                for id in &report.stopped {
                    eprintln!("httpjail: stopped container {id}");
                }
                nothing &= report.removed.is_empty() && report.stopped.is_empty();
            }
            Err(e) => eprintln!("httpjail: containers not checked: {e}"),
        }
    }
    if nothing {
        eprintln!("httpjail: nothing to clean up");
    }
    Ok(exit_code::SUCCESS)
}
