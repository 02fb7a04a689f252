//! The validated, typed configuration: the single place that gives meaning to flags and
//! environment variables.
//!
//! [`Config::from_cli`] turns [`Cli`] (syntax) plus an [`Environment`] into a [`Config`] in which
//! every value is already checked and typed: socket addresses, durations, CIDR ranges, a
//! [`RuleSource`] enum. Nothing else in the crate reads flags or the process environment.

use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use zeroize::Zeroizing;

use crate::cli::{Cli, Command, LogFormat, ReplayFormat, RuleArgs, RunArgs};
use crate::env::{self, Environment};
use crate::rules::request::normalize_host;

/// What httpjail was asked to do.
#[derive(Debug)]
pub enum Mode {
    /// Run a command in a jail.
    Run {
        command: Vec<OsString>,
        jail: JailKind,
    },
    /// Run only the proxy.
    Server {
        http_bind: SocketAddr,
        https_bind: SocketAddr,
    },
    /// Evaluate the rule once.
    Test { method: String, url: String },
    /// `docker run ARGS...` with the container's network jailed.
    DockerRun { args: Vec<OsString> },
    /// Remove leftovers of killed runs.
    Cleanup,
    /// `httpjail trust`.
    Trust(TrustAction),
    /// `httpjail replay`.
    Replay { log: PathBuf, format: ReplayFormat },
    /// `httpjail learn`.
    Learn { log: PathBuf },
}

/// How a command is confined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JailKind {
    /// Network namespace, nothing leaves except through the proxy (Linux).
    Strong,
    /// Proxy variables only.
    Weak,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustAction {
    Show,
    Install,
    Uninstall,
}

/// Where the rule comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleSource {
    /// No rule: every request is denied.
    None,
    Js(JsSource),
    /// `--sh CMD`.
    Shell {
        command: String,
    },
    /// `--proc CMD`.
    LineProcessor {
        command: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsSource {
    Inline(String),
    File(PathBuf),
}

impl RuleSource {
    /// The flag that selected this source, for messages.
    pub fn flag(&self) -> &'static str {
        match self {
            Self::None => "(no rule)",
            Self::Js(JsSource::Inline(_)) => "--js",
            Self::Js(JsSource::File(_)) => "--js-file",
            Self::Shell { .. } => "--sh",
            Self::LineProcessor { .. } => "--proc",
        }
    }
}

/// `--request-log` and its format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLogConfig {
    pub path: PathBuf,
    pub format: LogFormat,
}

/// One `--resolve HOST:PORT:ADDR[,ADDR...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveOverride {
    /// Normalised like a rule's `host`.
    pub host: String,
    pub port: u16,
    pub addrs: Vec<IpAddr>,
}

/// An address range, as in `--allow-private 10.0.0.0/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then(|| Self {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("`{addr}` is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`/{p}` is not a prefix length between 0 and {max}"))?,
        };
        Ok(Self::new(addr, prefix).expect("prefix checked against the address family above"))
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// IPv4-mapped IPv6 addresses are treated as the IPv4 address they carry, so that
/// `::ffff:127.0.0.1` cannot slip past a check written for `127.0.0.0/8`.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

/// A host pattern of `--secret`: an exact name or `*.suffix` (subdomains of suffix only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    Subdomains(String),
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(suffix) = s.strip_prefix("*.") {
            let host = normalize_host(suffix).map_err(|e| e.to_string())?;
            Ok(Self::Subdomains(host))
        } else if s.contains('*') {
            Err(format!("`{s}`: `*` is only allowed as a leading `*.`"))
        } else {
            normalize_host(s)
                .map(Self::Exact)
                .map_err(|e| e.to_string())
        }
    }

    /// Whether `host` (already normalised) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => h == host,
            Self::Subdomains(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.')),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(h) => f.write_str(h),
            Self::Subdomains(h) => write!(f, "*.{h}"),
        }
    }
}

/// One `--secret VAR=HOSTS`, with the real value read from httpjail's environment.
pub struct SecretSpec {
    pub var: String,
    pub hosts: Vec<HostPattern>,
    /// Zeroed when dropped. Never printed: `Debug` shows only its length.
    pub value: Zeroizing<String>,
}

impl fmt::Debug for SecretSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretSpec")
            .field("var", &self.var)
            .field("hosts", &self.hosts)
            .field("value", &format_args!("<{} bytes>", self.value.len()))
            .finish()
    }
}

/// Where the CA lives and who owns it (SPEC section 6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaLocation {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `Some` when httpjail manages the files (creates them on first use).
    pub managed_dir: Option<PathBuf>,
    /// Under sudo, the invoking user, who must own created files.
    pub owner: Option<(u32, u32)>,
}

/// The invoking user when httpjail runs under sudo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SudoUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// Limits and timeouts of the proxy and the engines. Defaults are documented per field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// Deadline of one JS evaluation (default 100 ms).
    pub js_eval: Duration,
    /// Deadline of one `--sh` run (default 30 s; the process group is killed).
    pub shell: Duration,
    /// Deadline of one `--proc` answer (default 5 s).
    pub line_processor: Duration,
    /// Connecting to an upstream (default 10 s → 502).
    pub upstream_connect: Duration,
    /// Waiting for the upstream's response headers (default 60 s → 504).
    pub upstream_headers: Duration,
    /// A connection with no traffic in either direction is closed (default 300 s).
    pub idle: Duration,
    /// Reading a client's request headers, TLS handshake, first bytes (default 10 s).
    pub client_handshake: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            js_eval: Duration::from_millis(100),
            shell: Duration::from_secs(30),
            line_processor: Duration::from_secs(5),
            upstream_connect: Duration::from_secs(10),
            upstream_headers: Duration::from_secs(60),
            idle: Duration::from_secs(300),
            client_handshake: Duration::from_secs(10),
        }
    }
}

/// Memory ceiling of one JS runtime (one per worker thread).
pub const DEFAULT_JS_MEMORY_LIMIT: usize = 64 * 1024 * 1024;

/// Everything httpjail needs to run, validated.
#[derive(Debug)]
pub struct Config {
    pub mode: Mode,
    pub rule: RuleSource,
    pub request_log: Option<RequestLogConfig>,
    pub verbosity: u8,
    pub timeout: Option<Duration>,
    pub upstream_ca: Option<PathBuf>,
    pub resolve: Vec<ResolveOverride>,
    pub allow_private: Vec<IpNet>,
    pub secrets: Vec<SecretSpec>,
    pub ca: CaLocation,
    pub sudo_user: Option<SudoUser>,
    pub timeouts: Timeouts,
    pub js_memory_limit: usize,
    /// Whether `CI=true`: root-only features report missing prerequisites as errors.
    pub ci: bool,
}

/// A flag or variable with a bad value. Every message names the flag, the value and a fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no command given; put it after `--`, e.g. `httpjail --js true -- curl https://example.com`"
    )]
    NoCommand,
    #[error("{first} and {second} cannot be used together")]
    Conflict {
        first: &'static str,
        second: &'static str,
    },
    #[error("{flag} takes no command; remove the arguments after `--`")]
    UnexpectedCommand { flag: &'static str },
    #[error(
        "--docker-run needs the arguments of `docker run` after `--`, e.g. `--docker-run -- --rm alpine wget -qO- https://example.com`"
    )]
    NoDockerArgs,
    #[error("invalid value `{value}` for {flag}: {why}")]
    InvalidValue {
        flag: &'static str,
        value: String,
        why: String,
    },
    #[error("invalid value `{value}` for environment variable `{var}`: {why}")]
    InvalidEnv {
        var: &'static str,
        value: String,
        why: String,
    },
    #[error("--js is empty; give an expression such as `--js \"r.host === 'example.com'\"`")]
    EmptyJs,
    #[error("{flag} is empty; give a command")]
    EmptyCommand { flag: &'static str },
    #[error(transparent)]
    NotUnicode(#[from] env::NotUnicode),
    #[error(
        "cannot find a home directory for the CA: set HOME or XDG_CONFIG_HOME, or point HTTPJAIL_CA_CERT at a CA"
    )]
    NoHome,
    #[error(
        "--secret {var}=...: environment variable `{var}` is {state}; export the real value before starting httpjail"
    )]
    SecretMissing { var: String, state: &'static str },
    #[error("--secret {var} is given twice")]
    SecretTwice { var: String },
    #[error("sudo user `{name}` (from SUDO_USER) is not a known user")]
    UnknownSudoUser { name: String },
    #[error(transparent)]
    DockerArgs(#[from] crate::jail::docker::args::ArgError),
}

impl Config {
    /// Validates parsed arguments against an environment.
    pub fn from_cli(cli: Cli, env: &dyn Environment) -> Result<Self, Error> {
        let Cli { subcommand, run } = cli;
        let sudo_user = sudo_user(env)?;
        let ca = ca_location(env, sudo_user.as_ref())?;
        let ci = env.var(env::CI)?.is_some_and(|v| v == "true" || v == "1");
        match subcommand {
            Some(Command::Trust(t)) => {
                let action = if t.install {
                    TrustAction::Install
                } else if t.uninstall {
                    TrustAction::Uninstall
                } else {
                    TrustAction::Show
                };
                Ok(Self::minimal(
                    Mode::Trust(action),
                    RuleSource::None,
                    ca,
                    sudo_user,
                    ci,
                ))
            }
            Some(Command::Learn(l)) => Ok(Self::minimal(
                Mode::Learn { log: l.log },
                RuleSource::None,
                ca,
                sudo_user,
                ci,
            )),
            Some(Command::Replay(r)) => {
                let rule = rule_source(&r.rule)?;
                Ok(Self::minimal(
                    Mode::Replay {
                        log: r.log,
                        format: r.format,
                    },
                    rule,
                    ca,
                    sudo_user,
                    ci,
                ))
            }
            None => Self::from_run(run, env, ca, sudo_user, ci),
        }
    }

    fn minimal(
        mode: Mode,
        rule: RuleSource,
        ca: CaLocation,
        sudo_user: Option<SudoUser>,
        ci: bool,
    ) -> Self {
        Self {
            mode,
            rule,
            request_log: None,
            verbosity: 0,
            timeout: None,
            upstream_ca: None,
            resolve: Vec::new(),
            allow_private: Vec::new(),
            secrets: Vec::new(),
            ca,
            sudo_user,
            timeouts: Timeouts::default(),
            js_memory_limit: DEFAULT_JS_MEMORY_LIMIT,
            ci,
        }
    }

    fn from_run(
        run: RunArgs,
        env: &dyn Environment,
        ca: CaLocation,
        sudo_user: Option<SudoUser>,
        ci: bool,
    ) -> Result<Self, Error> {
        let rule = rule_source(&run.rule)?;
        let mode = mode(&run, env)?;
        let request_log = match (run.request_log, run.request_log_format) {
            (Some(path), format) => Some(RequestLogConfig {
                path,
                format: format.unwrap_or_default(),
            }),
            (None, Some(_)) => {
                return Err(Error::InvalidValue {
                    flag: "--request-log-format",
                    value: "(set)".to_owned(),
                    why: "it only applies together with --request-log PATH".to_owned(),
                });
            }
            (None, None) => None,
        };
        let timeout = run.timeout.as_deref().map(parse_timeout).transpose()?;
        if timeout.is_some() && !matches!(mode, Mode::Run { .. } | Mode::DockerRun { .. }) {
            return Err(Error::InvalidValue {
                flag: "--timeout",
                value: run.timeout.unwrap_or_default(),
                why: "it only applies when httpjail runs a command".to_owned(),
            });
        }
        let resolve = run
            .resolve
            .iter()
            .map(|s| parse_resolve(s))
            .collect::<Result<Vec<_>, _>>()?;
        let allow_private = run
            .allow_private
            .iter()
            .map(|s| {
                IpNet::parse(s).map_err(|why| Error::InvalidValue {
                    flag: "--allow-private",
                    value: s.clone(),
                    why: format!("{why} (expected a CIDR range such as 10.0.0.0/8 or fd00::/8)"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let secrets = parse_secrets(&run.secret, env)?;
        if !secrets.is_empty() && matches!(mode, Mode::Test { .. }) {
            return Err(Error::Conflict {
                first: "--secret",
                second: "--test",
            });
        }
        let upstream_ca = run.upstream_ca.filter(|p| !p.as_os_str().is_empty());
        Ok(Self {
            mode,
            rule,
            request_log,
            verbosity: run.verbose,
            timeout,
            upstream_ca,
            resolve,
            allow_private,
            secrets,
            ca,
            sudo_user,
            timeouts: Timeouts::default(),
            js_memory_limit: DEFAULT_JS_MEMORY_LIMIT,
            ci,
        })
    }
}

fn rule_source(rule: &RuleArgs) -> Result<RuleSource, Error> {
    // clap's group already guarantees at most one of them.
    if let Some(js) = &rule.js {
        if js.trim().is_empty() {
            return Err(Error::EmptyJs);
        }
        return Ok(RuleSource::Js(JsSource::Inline(js.clone())));
    }
    if let Some(path) = &rule.js_file {
        if path.as_os_str().is_empty() {
            return Err(Error::InvalidValue {
                flag: "--js-file",
                value: String::new(),
                why: "the path is empty".to_owned(),
            });
        }
        return Ok(RuleSource::Js(JsSource::File(path.clone())));
    }
    if let Some(cmd) = &rule.sh {
        if cmd.trim().is_empty() {
            return Err(Error::EmptyCommand { flag: "--sh" });
        }
        return Ok(RuleSource::Shell {
            command: cmd.clone(),
        });
    }
    if let Some(cmd) = &rule.proc {
        if cmd.trim().is_empty() {
            return Err(Error::EmptyCommand { flag: "--proc" });
        }
        return Ok(RuleSource::LineProcessor {
            command: cmd.clone(),
        });
    }
    Ok(RuleSource::None)
}

/// Refuses `docker run` options that would defeat the jail (see [`crate::jail::docker::args`]).
fn docker_args(args: &[OsString], env: &dyn Environment) -> Result<(), Error> {
    let socket = env
        .var_os(env::DOCKER_HOST)
        .and_then(|host| {
            let host = host.to_string_lossy().into_owned();
            host.strip_prefix("unix://").map(PathBuf::from)
        })
        .into_iter()
        .collect::<Vec<_>>();
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    crate::jail::docker::args::check(args, &socket, &cwd)?;
    Ok(())
}

fn mode(run: &RunArgs, env: &dyn Environment) -> Result<Mode, Error> {
    let mut chosen: Vec<&'static str> = Vec::new();
    if run.server {
        chosen.push("--server");
    }
    if run.test.is_some() {
        chosen.push("--test");
    }
    if run.docker_run {
        chosen.push("--docker-run");
    }
    if run.cleanup {
        chosen.push("--cleanup");
    }
    if let [first, second, ..] = chosen[..] {
        return Err(Error::Conflict { first, second });
    }
    if run.weak
        && let Some(&other) = chosen.first()
        && other != "--test"
    {
        return Err(Error::Conflict {
            first: "--weak",
            second: other,
        });
    }
    let no_command = |flag| {
        if run.command.is_empty() {
            Ok(())
        } else {
            Err(Error::UnexpectedCommand { flag })
        }
    };
    if run.server {
        no_command("--server")?;
        let http_bind = bind_from_env(env, env::HTTP_BIND, 8080)?;
        let https_bind = bind_from_env(env, env::HTTPS_BIND, 8443)?;
        return Ok(Mode::Server {
            http_bind,
            https_bind,
        });
    }
    if let Some(values) = &run.test {
        no_command("--test")?;
        let (method, url) = match values.as_slice() {
            [url] => ("GET".to_owned(), url.clone()),
            [method, url] => (method.clone(), url.clone()),
            _ => unreachable!("clap limits --test to one or two values"),
        };
        return Ok(Mode::Test { method, url });
    }
    if run.cleanup {
        no_command("--cleanup")?;
        return Ok(Mode::Cleanup);
    }
    if run.docker_run {
        if run.command.is_empty() {
            return Err(Error::NoDockerArgs);
        }
        docker_args(&run.command, env)?;
        return Ok(Mode::DockerRun {
            args: run.command.clone(),
        });
    }
    if run.command.is_empty() {
        return Err(Error::NoCommand);
    }
    let jail = if run.weak || !cfg!(target_os = "linux") {
        JailKind::Weak
    } else {
        JailKind::Strong
    };
    Ok(Mode::Run {
        command: run.command.clone(),
        jail,
    })
}

/// Parses a bind address: `PORT`, `IP:PORT` or `[IPv6]:PORT`. A bare port binds 127.0.0.1.
pub fn parse_bind(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    s.parse::<SocketAddr>().map_err(|_| {
        "expected PORT, IP:PORT or [IPv6]:PORT (e.g. 8080, 0.0.0.0:8080, [::1]:8080)".to_owned()
    })
}

fn bind_from_env(
    env: &dyn Environment,
    var: &'static str,
    default_port: u16,
) -> Result<SocketAddr, Error> {
    match env.var(var)? {
        None => Ok(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            default_port,
        )),
        Some(value) => parse_bind(&value).map_err(|why| Error::InvalidEnv { var, value, why }),
    }
}

/// Parses `--timeout`: seconds, possibly fractional, greater than zero.
pub fn parse_timeout(s: &str) -> Result<Duration, Error> {
    let invalid = |why: &str| Error::InvalidValue {
        flag: "--timeout",
        value: s.to_owned(),
        why: why.to_owned(),
    };
    let secs: f64 = s
        .trim()
        .strip_suffix('s')
        .unwrap_or(s.trim())
        .parse()
        .map_err(|_| invalid("expected a number of seconds, e.g. 30 or 2.5"))?;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(invalid("the timeout must be more than 0 seconds"));
    }
    if secs > 10.0 * 365.0 * 86400.0 {
        return Err(invalid("the timeout must be at most ten years"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `--resolve HOST:PORT:ADDR[,ADDR...]` (IPv6 addresses in brackets).
pub fn parse_resolve(s: &str) -> Result<ResolveOverride, Error> {
    let invalid = |why: String| Error::InvalidValue {
        flag: "--resolve",
        value: s.to_owned(),
        why,
    };
    let (host, rest) = s.split_once(':').ok_or_else(|| {
        invalid("expected HOST:PORT:ADDR, e.g. example.test:443:127.0.0.1".to_owned())
    })?;
    let (port, addrs) = rest.split_once(':').ok_or_else(|| {
        invalid("expected HOST:PORT:ADDR, e.g. example.test:443:127.0.0.1".to_owned())
    })?;
    let host = normalize_host(host).map_err(|e| invalid(e.to_string()))?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| invalid(format!("`{port}` is not a port number between 1 and 65535")))?;
    let addrs = addrs
        .split(',')
        .map(|a| {
            let a = a.trim();
            a.strip_prefix('[')
                .and_then(|a| a.strip_suffix(']'))
                .unwrap_or(a)
                .parse::<IpAddr>()
                .map_err(|_| {
                    invalid(format!(
                        "`{a}` is not an IP address (IPv6 goes in brackets)"
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ResolveOverride { host, port, addrs })
}

fn parse_secrets(specs: &[String], env: &dyn Environment) -> Result<Vec<SecretSpec>, Error> {
    let mut out: Vec<SecretSpec> = Vec::new();
    for spec in specs {
        let invalid = |why: String| Error::InvalidValue {
            flag: "--secret",
            value: spec.clone(),
            why,
        };
        let (var, hosts) = spec.split_once('=').ok_or_else(|| {
            invalid("expected VAR=HOSTS, e.g. GITHUB_TOKEN=api.github.com".to_owned())
        })?;
        let valid_var = !var.is_empty()
            && !var.starts_with(|c: char| c.is_ascii_digit())
            && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid_var {
            return Err(invalid(format!(
                "`{var}` is not an environment variable name (letters, digits, `_`)"
            )));
        }
        if out.iter().any(|s| s.var == var) {
            return Err(Error::SecretTwice {
                var: var.to_owned(),
            });
        }
        let hosts = hosts
            .split(',')
            .filter(|h| !h.trim().is_empty())
            .map(|h| HostPattern::parse(h).map_err(&invalid))
            .collect::<Result<Vec<_>, _>>()?;
        if hosts.is_empty() {
            return Err(invalid("no hosts given after `=`".to_owned()));
        }
        let value = match env.var_os(var) {
            None => {
                return Err(Error::SecretMissing {
                    var: var.to_owned(),
                    state: "not set",
                });
            }
            Some(v) if v.is_empty() => {
                return Err(Error::SecretMissing {
                    var: var.to_owned(),
                    state: "empty",
                });
            }
            Some(v) => v.into_string().map_err(|_| env::NotUnicode {
                name: var.to_owned(),
            })?,
        };
        out.push(SecretSpec {
            var: var.to_owned(),
            hosts,
            value: Zeroizing::new(value),
        });
    }
    Ok(out)
}

fn sudo_user(env: &dyn Environment) -> Result<Option<SudoUser>, Error> {
    // Only meaningful when we really are root: a user setting SUDO_USER by hand gains nothing.
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let Some(name) = env
        .var(env::SUDO_USER)?
        .filter(|n| !n.is_empty() && n != "root")
    else {
        return Ok(None);
    };
    let user = nix::unistd::User::from_name(&name)
        .ok()
        .flatten()
        .ok_or_else(|| Error::UnknownSudoUser { name: name.clone() })?;
    Ok(Some(SudoUser {
        name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        home: user.dir,
    }))
}

fn ca_location(env: &dyn Environment, sudo: Option<&SudoUser>) -> Result<CaLocation, Error> {
    if let Some(cert) = env.var_os(env::CA_CERT).filter(|v| !v.is_empty()) {
        let cert = PathBuf::from(cert);
        let key = match env.var_os(env::CA_KEY).filter(|v| !v.is_empty()) {
            Some(k) => PathBuf::from(k),
            None => cert.with_file_name("ca-key.pem"),
        };
        return Ok(CaLocation {
            cert,
            key,
            managed_dir: None,
            owner: None,
        });
    }
    let dir = match sudo {
        // Under sudo the invoking user's CA is used, so that the same CA is trusted either way.
        Some(user) => user.home.join(".config").join("httpjail"),
        None => match env
            .var_os(env::XDG_CONFIG_HOME)
            .filter(|v| Path::new(v).is_absolute())
        {
            Some(xdg) => PathBuf::from(xdg).join("httpjail"),
            None => {
                let home = env
                    .var_os(env::HOME)
                    .filter(|v| !v.is_empty())
                    .ok_or(Error::NoHome)?;
                PathBuf::from(home).join(".config").join("httpjail")
            }
        },
    };
    Ok(CaLocation {
        cert: dir.join("ca-cert.pem"),
        key: dir.join("ca-key.pem"),
        managed_dir: Some(dir),
        owner: sudo.map(|u| (u.uid, u.gid)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::MapEnv;
    use clap::Parser;

    fn env() -> MapEnv {
        MapEnv::new([("HOME", "/home/u")])
    }

    fn parse(args: &[&str]) -> Result<Config, Error> {
        parse_env(args, &env())
    }

    fn parse_env(args: &[&str], env: &MapEnv) -> Result<Config, Error> {
        let cli = Cli::try_parse_from(std::iter::once("httpjail").chain(args.iter().copied()))
            .map_err(|e| Error::InvalidValue {
                flag: "(clap)",
                value: String::new(),
                why: e.to_string(),
            })?;
        Config::from_cli(cli, env)
    }

    fn err(args: &[&str]) -> String {
        parse(args).unwrap_err().to_string()
    }

    #[test]
    fn run_mode_with_command_after_double_dash() {
        let c = parse(&["--js", "true", "--", "curl", "-s", "https://x"]).unwrap();
        match c.mode {
            Mode::Run { command, jail } => {
                assert_eq!(command, ["curl", "-s", "https://x"]);
                assert_eq!(jail, JailKind::Strong);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.rule, RuleSource::Js(JsSource::Inline("true".into())));
    }

    #[test]
    fn weak_flag_selects_weak_jail() {
        let c = parse(&["-w", "--", "true"]).unwrap();
        assert!(matches!(
            c.mode,
            Mode::Run {
                jail: JailKind::Weak,
                ..
            }
        ));
        assert_eq!(c.rule, RuleSource::None);
    }

    #[test]
    fn two_rule_options_are_a_usage_error_naming_both() {
        let e = err(&["--js", "true", "--sh", "true", "--", "x"]);
        assert!(e.contains("--js") && e.contains("--sh"), "{e}");
        let e = err(&["--proc", "a", "--js-file", "b", "--", "x"]);
        assert!(e.contains("--proc") && e.contains("--js-file"), "{e}");
    }

    #[test]
    fn no_command_is_an_error_with_an_example() {
        let e = err(&["--js", "true"]);
        assert!(e.contains("after `--`"), "{e}");
    }

    #[test]
    fn test_mode_defaults_to_get() {
        let c = parse(&["--test", "https://a.test/"]).unwrap();
        assert!(
            matches!(c.mode, Mode::Test { ref method, ref url } if method == "GET" && url == "https://a.test/")
        );
        let c = parse(&["--test", "POST", "https://a.test/"]).unwrap();
        assert!(matches!(c.mode, Mode::Test { ref method, .. } if method == "POST"));
    }

    #[test]
    fn modes_conflict() {
        let e = err(&["--server", "--test", "http://a/"]);
        assert!(e.contains("--server") && e.contains("--test"), "{e}");
        let e = err(&["--weak", "--server"]);
        assert!(e.contains("--weak") && e.contains("--server"), "{e}");
        let e = err(&["--server", "--", "curl"]);
        assert!(e.contains("takes no command"), "{e}");
    }

    #[test]
    fn server_binds_come_from_env() {
        let c = parse(&["--server"]).unwrap();
        match c.mode {
            Mode::Server {
                http_bind,
                https_bind,
            } => {
                assert_eq!(http_bind.to_string(), "127.0.0.1:8080");
                assert_eq!(https_bind.to_string(), "127.0.0.1:8443");
            }
            other => panic!("{other:?}"),
        }
        let env = MapEnv::new([
            ("HOME", "/h"),
            ("HTTPJAIL_HTTP_BIND", "3128"),
            ("HTTPJAIL_HTTPS_BIND", "[::1]:3129"),
        ]);
        let c = parse_env(&["--server"], &env).unwrap();
        match c.mode {
            Mode::Server {
                http_bind,
                https_bind,
            } => {
                assert_eq!(http_bind.to_string(), "127.0.0.1:3128");
                assert_eq!(https_bind.to_string(), "[::1]:3129");
            }
            other => panic!("{other:?}"),
        }
        let env = MapEnv::new([("HOME", "/h"), ("HTTPJAIL_HTTP_BIND", "localhost:80")]);
        let e = parse_env(&["--server"], &env).unwrap_err().to_string();
        assert!(
            e.contains("HTTPJAIL_HTTP_BIND") && e.contains("localhost:80"),
            "{e}"
        );
    }

    #[test]
    fn timeout_parsing() {
        assert_eq!(parse_timeout("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_timeout("2.5").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_timeout("5s").unwrap(), Duration::from_secs(5));
        for bad in ["0", "-1", "abc", "", "inf", "NaN"] {
            let e = parse_timeout(bad).unwrap_err().to_string();
            assert!(e.contains("--timeout"), "{e}");
        }
        let e = err(&["--timeout", "5", "--test", "http://a/"]);
        assert!(e.contains("only applies"), "{e}");
    }

    #[test]
    fn resolve_parsing() {
        let r = parse_resolve("Example.test:443:127.0.0.1").unwrap();
        assert_eq!(r.host, "example.test");
        assert_eq!(r.port, 443);
        assert_eq!(r.addrs, [IpAddr::from([127, 0, 0, 1])]);
        let r = parse_resolve("a.test:80:[::1],10.0.0.1").unwrap();
        assert_eq!(r.addrs.len(), 2);
        assert!(r.addrs[0].is_ipv6());
        for bad in [
            "a.test",
            "a.test:443",
            "a.test:x:1.2.3.4",
            "a.test:0:1.2.3.4",
            "a.test:80:nope",
            "a b:80:1.2.3.4",
        ] {
            let e = parse_resolve(bad).unwrap_err().to_string();
            assert!(e.contains("--resolve") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let n = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        let host = IpNet::parse("127.0.0.1").unwrap();
        assert!(host.contains("127.0.0.1".parse().unwrap()));
        assert!(
            host.contains("::ffff:127.0.0.1".parse().unwrap()),
            "mapped v4 counts as v4"
        );
        assert!(!host.contains("127.0.0.2".parse().unwrap()));
        let v6 = IpNet::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert_eq!(
            IpNet::parse("10.1.2.3/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert!(
            IpNet::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        for bad in ["10.0.0.0/33", "nope", "::/129", "1.2.3.4/x"] {
            assert!(IpNet::parse(bad).is_err(), "{bad}");
        }
        let e = err(&["--allow-private", "10/8", "--", "x"]);
        assert!(e.contains("--allow-private") && e.contains("10/8"), "{e}");
    }

    #[test]
    fn secrets_read_the_environment_and_never_print_the_value() {
        let env = MapEnv::new([("HOME", "/h"), ("TOKEN", "s3cr3t-value")]);
        let c = parse_env(
            &["--secret", "TOKEN=api.github.com,*.example.com", "--", "x"],
            &env,
        )
        .unwrap();
        assert_eq!(c.secrets.len(), 1);
        assert_eq!(c.secrets[0].value.as_str(), "s3cr3t-value");
        assert!(
            !format!("{c:?}").contains("s3cr3t"),
            "Debug must not show the value"
        );
        assert!(c.secrets[0].hosts[1].matches("raw.example.com"));
        assert!(!c.secrets[0].hosts[1].matches("example.com"));
        assert!(!c.secrets[0].hosts[1].matches("evilexample.com"));
        let e = parse_env(&["--secret", "MISSING=a.test", "--", "x"], &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("MISSING") && e.contains("not set"), "{e}");
        let env = MapEnv::new([("HOME", "/h"), ("EMPTY", "")]);
        let e = parse_env(&["--secret", "EMPTY=a.test", "--", "x"], &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty"), "{e}");
        for bad in ["NOEQUALS", "=a.test", "1X=a.test", "T=", "T=a*.test"] {
            let e = parse_env(&["--secret", bad, "--", "x"], &env)
                .unwrap_err()
                .to_string();
            assert!(e.contains("--secret"), "{bad}: {e}");
        }
    }

    #[test]
    fn ca_location_defaults_and_overrides() {
        let c = parse(&["--test", "http://a/"]).unwrap();
        assert_eq!(
            c.ca.cert,
            PathBuf::from("/home/u/.config/httpjail/ca-cert.pem")
        );
        assert_eq!(
            c.ca.key,
            PathBuf::from("/home/u/.config/httpjail/ca-key.pem")
        );
        let env = MapEnv::new([("HOME", "/h"), ("XDG_CONFIG_HOME", "/x")]);
        let c = parse_env(&["--test", "http://a/"], &env).unwrap();
        assert_eq!(c.ca.cert, PathBuf::from("/x/httpjail/ca-cert.pem"));
        let env = MapEnv::new([("HTTPJAIL_CA_CERT", "/etc/my/ca.pem")]);
        let c = parse_env(&["--test", "http://a/"], &env).unwrap();
        assert_eq!(c.ca.key, PathBuf::from("/etc/my/ca-key.pem"));
        assert_eq!(c.ca.managed_dir, None);
    }

    #[test]
    fn empty_rules_are_rejected() {
        assert!(err(&["--js", " ", "--", "x"]).contains("--js"));
        assert!(err(&["--sh", "", "--", "x"]).contains("--sh"));
        assert!(err(&["--proc", "", "--", "x"]).contains("--proc"));
    }

    #[test]
    fn log_format_needs_log() {
        let e = err(&["--request-log-format", "json", "--", "x"]);
        assert!(e.contains("--request-log"), "{e}");
        let c = parse(&[
            "--request-log",
            "/tmp/l",
            "--request-log-format",
            "json",
            "--",
            "x",
        ])
        .unwrap();
        assert_eq!(c.request_log.unwrap().format, LogFormat::Json);
    }

    #[test]
    fn subcommands() {
        let c = parse(&["trust", "--install"]).unwrap();
        assert!(matches!(c.mode, Mode::Trust(TrustAction::Install)));
        let c = parse(&["replay", "--js", "true", "log.jsonl"]).unwrap();
        assert!(matches!(c.mode, Mode::Replay { .. }));
        assert_eq!(c.rule, RuleSource::Js(JsSource::Inline("true".into())));
        let c = parse(&["learn", "log.jsonl"]).unwrap();
        assert!(matches!(c.mode, Mode::Learn { .. }));
        // After `--`, `trust` is a command to run, not the subcommand.
        let c = parse(&["--", "trust"]).unwrap();
        assert!(matches!(c.mode, Mode::Run { .. }));
    }

    #[test]
    fn host_patterns() {
        assert_eq!(
            HostPattern::parse("API.github.com").unwrap(),
            HostPattern::Exact("api.github.com".into())
        );
        let p = HostPattern::parse("*.github.com").unwrap();
        assert!(p.matches("api.github.com") && p.matches("a.b.github.com"));
        assert!(!p.matches("github.com") && !p.matches("xgithub.com"));
        assert!(HostPattern::parse("a.*.com").is_err());
    }
}
