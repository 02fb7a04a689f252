//! Command-line syntax (clap derive). Doc comments here are the `--help` text.
//!
//! Parsing here is syntactic only: strings stay strings, paths stay paths. Meaning and validation
//! live in [`crate::config`].

// The doc comments below are the `--help` text users read, written for a terminal, not rustdoc.
#![allow(
    rustdoc::bare_urls,
    rustdoc::broken_intra_doc_links,
    reason = "doc comments here are --help text"
)]

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, Args as ClapArgs, Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
Examples:
  httpjail --js \"r.host === 'api.github.com'\" -- curl https://api.github.com/zen
  httpjail --js-file rules.js --request-log requests.log -- npm install
  httpjail --sh ./policy.sh -- git clone https://github.com/org/repo
  httpjail --proc ./filter.py --weak -- python3 app.py
  httpjail --test POST https://api.github.com/repos --js \"r.method === 'GET'\"
  httpjail --server --js \"true\"          # proxy only, on 127.0.0.1:8080 and :8443

Everything is denied unless the rule allows it. Messages from httpjail go to stderr and start
with `httpjail:`; stdout belongs to the command.";

/// Run a command with every HTTP(S) request it makes filtered by a rule you write.
#[derive(Debug, Parser)]
#[command(
    name = "httpjail",
    version,
    about,
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub subcommand: Option<Command>,

    #[command(flatten)]
    pub run: RunArgs,
}

/// The rule options, shared by a jailed run, `--server`, `--test` and `replay`.
#[derive(Debug, Clone, Default, ClapArgs)]
#[group(id = "rule", multiple = false)]
pub struct RuleArgs {
    /// JavaScript rule: `r` is the request (r.url, r.method, r.scheme, r.host, r.path, r.port,
    /// r.requester_ip); the value of the last expression is the answer: true, false,
    /// {deny_message: "..."} or {allow: {max_tx_bytes: N}}.
    /// Example: --js "r.host === 'github.com' && r.method === 'GET'"
    #[arg(
        long,
        value_name = "EXPR",
        help_heading = "Rule (choose one; none denies everything)"
    )]
    pub js: Option<String>,

    /// Like --js, with the rule read from a file. The file is watched: an edit applies to the
    /// next request; an edit that does not compile keeps the previous rule (reported on stderr).
    /// Example: --js-file rules.js
    #[arg(
        long,
        value_name = "PATH",
        help_heading = "Rule (choose one; none denies everything)"
    )]
    pub js_file: Option<PathBuf>,

    /// Shell rule, run once per request with HTTPJAIL_URL, HTTPJAIL_METHOD, HTTPJAIL_HOST, ...
    /// in its environment. Exit status 0 allows; stdout is the deny message. With a space in
    /// CMD it runs as `sh -c CMD`, otherwise CMD is executed directly. Killed after 30 s (deny).
    /// Example: --sh ./policy.sh   or   --sh 'grep -qx "$HTTPJAIL_HOST" allowed.txt'
    #[arg(
        long,
        value_name = "CMD",
        help_heading = "Rule (choose one; none denies everything)"
    )]
    pub sh: Option<String>,

    /// Line-processor rule: CMD is started once; it reads one JSON request per line on stdin and
    /// answers one line per request (true, false, or a JSON answer as for --js). Restarted if it
    /// dies. Example: --proc "python3 -u filter.py"
    #[arg(
        long,
        value_name = "CMD",
        help_heading = "Rule (choose one; none denies everything)"
    )]
    pub proc: Option<String>,
}

/// Options of a jailed run, `--server` and `--test`.
#[derive(Debug, Clone, Default, ClapArgs)]
pub struct RunArgs {
    #[command(flatten)]
    pub rule: RuleArgs,

    /// Append one line per request to PATH: `<time> <+|-> <METHOD> <URL>` (or JSON, see
    /// --request-log-format). Example: --request-log requests.log
    #[arg(long, value_name = "PATH", help_heading = "Logging")]
    pub request_log: Option<PathBuf>,

    /// Format of --request-log: `text` (default) or `json` (one object per line with time,
    /// decision, method, url, host, scheme, path, port, requester_ip, reason, status, bytes_up,
    /// bytes_down, duration_ms).
    #[arg(long, value_name = "FORMAT", value_enum, help_heading = "Logging")]
    pub request_log_format: Option<LogFormat>,

    /// More diagnostics on stderr (-v: info, -vv: debug, -vvv: trace). RUST_LOG overrides.
    #[arg(short, long, action = ArgAction::Count, help_heading = "Logging")]
    pub verbose: u8,

    /// Weak mode: no network isolation, only proxy and CA variables in the command's
    /// environment. The command can bypass the proxy if it ignores HTTP_PROXY.
    #[arg(short = 'w', long, help_heading = "Mode")]
    pub weak: bool,

    /// Run only the proxy, for other processes. Binds HTTPJAIL_HTTP_BIND (default
    /// 127.0.0.1:8080) and HTTPJAIL_HTTPS_BIND (default 127.0.0.1:8443); each takes PORT,
    /// IP:PORT or [IPv6]:PORT.
    #[arg(long, help_heading = "Mode")]
    pub server: bool,

    /// Evaluate the rule for one request, print `ALLOW METHOD URL` or `DENY METHOD URL` (and the
    /// rule's message), exit 0 on allow and 1 on deny. METHOD defaults to GET.
    /// Example: --test POST https://api.github.com/repos
    #[arg(long, value_name = "METHOD] [URL", num_args = 1..=2, help_heading = "Mode")]
    pub test: Option<Vec<String>>,

    /// Run `docker run ARGS...` (the arguments after --) with the container's network jailed
    /// like a strong jail. Example: --docker-run -- --rm alpine wget -qO- https://example.com
    #[arg(long, help_heading = "Mode")]
    pub docker_run: bool,

    /// Remove what a killed httpjail left behind (temporary files, stale jails), then exit.
    #[arg(long, help_heading = "Mode")]
    pub cleanup: bool,

    /// Kill the command (its whole process group) after SECONDS; httpjail then exits with 124.
    /// Example: --timeout 600 or --timeout 2.5
    #[arg(long, value_name = "SECONDS", help_heading = "Mode")]
    pub timeout: Option<String>,

    /// Also trust the CA certificates in this PEM file when connecting to upstream servers
    /// (private registries, tests). Example: --upstream-ca corp-root.pem
    #[arg(
        long,
        value_name = "PEM",
        env = "HTTPJAIL_UPSTREAM_CA",
        help_heading = "Upstream"
    )]
    pub upstream_ca: Option<PathBuf>,

    /// Connect to ADDR for HOST:PORT, like curl's --resolve; rules still see HOST. ADDR may be
    /// a comma-separated list; IPv6 in brackets. Repeatable.
    /// Example: --resolve api.internal:443:10.0.0.7
    #[arg(long, value_name = "HOST:PORT:ADDR", help_heading = "Upstream")]
    pub resolve: Vec<String>,

    /// Let the proxy connect to upstream addresses in this private, loopback or link-local
    /// range (denied by default, so that an allowed name cannot reach your internal network).
    /// Repeatable. Example: --allow-private 10.0.0.0/8 --allow-private ::1/128
    #[arg(long, value_name = "CIDR", help_heading = "Upstream")]
    pub allow_private: Vec<String>,

    /// Keep the secret in $VAR out of the jail: the command sees a placeholder, and the proxy
    /// puts the real value in only for requests to HOSTS (comma list, `*.x` for subdomains).
    /// A request carrying it anywhere else is denied (secret_leak). Repeatable.
    /// Example: --secret GITHUB_TOKEN=api.github.com,*.githubusercontent.com
    #[arg(long, value_name = "VAR=HOSTS", help_heading = "Secrets")]
    pub secret: Vec<String>,

    /// The command to run, after `--`.
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<OsString>,
}

/// Request-log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show whether httpjail's CA is in the system trust store; install or remove it (root).
    Trust(TrustArgs),
    /// Re-decide every request of a JSON request log with another rule and list what flips.
    /// Exit 0 when nothing flipped, 1 when something did.
    /// Example: httpjail replay --js-file new.js run.jsonl
    Replay(ReplayArgs),
    /// Print a JS rule (for --js-file) that allows exactly what a JSON request log shows.
    /// Example: httpjail learn run.jsonl > rules.js
    Learn(LearnArgs),
}

#[derive(Debug, ClapArgs)]
#[group(id = "trust_action", multiple = false)]
pub struct TrustArgs {
    /// Add the CA to the system trust store (Debian/Ubuntu, Fedora-style systems; needs root).
    #[arg(long)]
    pub install: bool,
    /// Remove the CA from the system trust store (needs root).
    #[arg(long, alias = "remove")]
    pub uninstall: bool,
}

#[derive(Debug, ClapArgs)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub rule: RuleArgs,

    /// Output format: `text` (summary and flips) or `json` (for CI).
    #[arg(long, value_enum, default_value_t = ReplayFormat::Text)]
    pub format: ReplayFormat,

    /// A log written with --request-log-format json.
    #[arg(value_name = "LOG.jsonl")]
    pub log: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReplayFormat {
    Text,
    Json,
}

#[derive(Debug, ClapArgs)]
pub struct LearnArgs {
    /// A log written with --request-log-format json.
    #[arg(value_name = "LOG.jsonl")]
    pub log: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
