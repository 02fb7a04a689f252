//! Names of every environment variable httpjail reads or sets, in one place.
//!
//! Nothing outside `config` reads the process environment; everything else gets values from
//! [`crate::config::Config`]. The child's environment is set on its `Command`, never with
//! `std::env::set_var`.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};

/// Where httpjail's HTTP listener binds in server mode (`PORT`, `IP:PORT` or `[IPv6]:PORT`).
pub const HTTP_BIND: &str = "HTTPJAIL_HTTP_BIND";
/// Where httpjail's HTTPS listener binds in server mode.
pub const HTTPS_BIND: &str = "HTTPJAIL_HTTPS_BIND";
/// A CA certificate to use instead of the one under `$XDG_CONFIG_HOME/httpjail/`.
pub const CA_CERT: &str = "HTTPJAIL_CA_CERT";
/// The private key of [`CA_CERT`]; defaults to `ca-key.pem` beside it.
pub const CA_KEY: &str = "HTTPJAIL_CA_KEY";
/// Extra roots the proxy trusts toward upstreams (same as `--upstream-ca`).
pub const UPSTREAM_CA: &str = "HTTPJAIL_UPSTREAM_CA";
/// Diagnostics filter, as understood by `tracing_subscriber::EnvFilter`.
pub const RUST_LOG: &str = "RUST_LOG";
/// Set by CI; makes root-only tests fail instead of skipping when a prerequisite is missing.
pub const CI: &str = "CI";
/// Where a bare `--sh` / `--proc` program name is looked up, as `execvp` would.
pub const PATH: &str = "PATH";
pub const XDG_CONFIG_HOME: &str = "XDG_CONFIG_HOME";
pub const HOME: &str = "HOME";
pub const SUDO_USER: &str = "SUDO_USER";
pub const SUDO_UID: &str = "SUDO_UID";
pub const SUDO_GID: &str = "SUDO_GID";
/// The Docker daemon's address; a `unix://` socket it names is protected like the default one.
pub const DOCKER_HOST: &str = "DOCKER_HOST";

/// What a `--sh` rule receives, one variable per field of the request (SPEC section 2).
pub mod rule {
    pub const URL: &str = "HTTPJAIL_URL";
    pub const METHOD: &str = "HTTPJAIL_METHOD";
    pub const SCHEME: &str = "HTTPJAIL_SCHEME";
    pub const HOST: &str = "HTTPJAIL_HOST";
    pub const PATH: &str = "HTTPJAIL_PATH";
    pub const PORT: &str = "HTTPJAIL_PORT";
    pub const REQUESTER_IP: &str = "HTTPJAIL_REQUESTER_IP";
}

/// Proxy variables given to the command in weak mode.
pub const PROXY_VARS: [&str; 4] = ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"];
/// Hosts the command should reach without the proxy.
pub const NO_PROXY_VARS: [&str; 2] = ["NO_PROXY", "no_proxy"];
/// Value of [`NO_PROXY_VARS`].
pub const NO_PROXY_VALUE: &str = "localhost,127.0.0.1,::1";
/// Variables that point tools at a CA bundle file (ours plus the system roots).
pub const CA_FILE_VARS: [&str; 7] = [
    "SSL_CERT_FILE",
    "CURL_CA_BUNDLE",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "CARGO_HTTP_CAINFO",
    "GIT_SSL_CAINFO",
    "DENO_CERT",
];
/// Variable that points tools at a directory of CA certificates.
pub const CA_DIR_VAR: &str = "SSL_CERT_DIR";

/// Read access to an environment, so that configuration can be tested without touching the
/// process environment.
pub trait Environment {
    fn var_os(&self, name: &str) -> Option<OsString>;

    /// The variable as UTF-8, `None` when unset; an error naming it when it is not UTF-8.
    fn var(&self, name: &str) -> Result<Option<String>, NotUnicode> {
        match self.var_os(name) {
            None => Ok(None),
            Some(v) => v.into_string().map(Some).map_err(|_| NotUnicode {
                name: name.to_owned(),
            }),
        }
    }
}

/// A variable whose value is not valid UTF-8.
#[derive(Debug, thiserror::Error)]
#[error("environment variable `{name}` is not valid UTF-8")]
pub struct NotUnicode {
    pub name: String,
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var_os(&self, name: &str) -> Option<OsString> {
        std::env::var_os(name)
    }
}

/// A fixed environment, for tests.
#[derive(Debug, Clone, Default)]
pub struct MapEnv(pub BTreeMap<String, OsString>);

impl MapEnv {
    pub fn new<K: Into<String>, V: AsRef<OsStr>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.as_ref().to_owned()))
                .collect(),
        )
    }
}

impl Environment for MapEnv {
    fn var_os(&self, name: &str) -> Option<OsString> {
        self.0.get(name).cloned()
    }
}

/// Variables removed from the command's environment because they would route traffic around
/// our proxy or point TLS at other roots.
const STRIPPED: [&str; 8] = [
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// What the command's environment must say about our proxy and CA (SPEC section 4).
#[derive(Debug, Clone)]
pub struct CommandEnv<'a> {
    /// `http://127.0.0.1:PORT` in weak mode; `None` in strong mode (no proxy variables).
    pub proxy_url: Option<&'a str>,
    /// The bundle with our CA and the system roots.
    pub ca_bundle: &'a std::path::Path,
    /// A directory of hashed certificates (OpenSSL `SSL_CERT_DIR` layout).
    pub ca_dir: &'a std::path::Path,
}

/// The command's complete environment: httpjail's own, minus proxy variables, plus ours.
pub fn command_env(
    base: impl IntoIterator<Item = (OsString, OsString)>,
    ours: &CommandEnv<'_>,
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = base
        .into_iter()
        .filter(|(k, _)| {
            let k = k.to_string_lossy();
            !STRIPPED.contains(&k.as_ref())
                && !CA_FILE_VARS.contains(&k.as_ref())
                && k != CA_DIR_VAR
        })
        .collect();
    if let Some(url) = ours.proxy_url {
        for var in PROXY_VARS {
            env.push((var.into(), url.into()));
        }
    }
    for var in NO_PROXY_VARS {
        env.push((var.into(), NO_PROXY_VALUE.into()));
    }
    for var in CA_FILE_VARS {
        env.push((var.into(), ours.ca_bundle.as_os_str().to_owned()));
    }
    env.push((CA_DIR_VAR.into(), ours.ca_dir.as_os_str().to_owned()));
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn get<'a>(env: &'a [(OsString, OsString)], key: &str) -> Vec<&'a OsString> {
        env.iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v)
            .collect()
    }

    #[test]
    fn weak_env_sets_proxies_and_every_ca_variable_once() {
        let base = vec![
            ("PATH".into(), "/bin".into()),
            ("HTTPS_PROXY".into(), "http://corp:3128".into()),
            ("ALL_PROXY".into(), "socks5://elsewhere:1080".into()),
            ("SSL_CERT_FILE".into(), "/other.pem".into()),
        ];
        let env = command_env(
            base,
            &CommandEnv {
                proxy_url: Some("http://127.0.0.1:4000"),
                ca_bundle: Path::new("/run/b.pem"),
                ca_dir: Path::new("/run/certs"),
            },
        );
        assert_eq!(get(&env, "PATH"), ["/bin"]);
        for var in PROXY_VARS {
            assert_eq!(get(&env, var), ["http://127.0.0.1:4000"], "{var}");
        }
        assert!(
            get(&env, "ALL_PROXY").is_empty(),
            "a SOCKS proxy would bypass ours"
        );
        for var in CA_FILE_VARS {
            assert_eq!(get(&env, var), ["/run/b.pem"], "{var}");
        }
        assert_eq!(get(&env, "SSL_CERT_DIR"), ["/run/certs"]);
        assert_eq!(get(&env, "NO_PROXY"), [NO_PROXY_VALUE]);
        assert_eq!(get(&env, "no_proxy"), [NO_PROXY_VALUE]);
    }

    #[test]
    fn strong_env_has_no_proxy_variables() {
        let env = command_env(
            vec![("HTTP_PROXY".into(), "http://x".into())],
            &CommandEnv {
                proxy_url: None,
                ca_bundle: Path::new("/b"),
                ca_dir: Path::new("/d"),
            },
        );
        for var in PROXY_VARS {
            assert!(get(&env, var).is_empty(), "{var}");
        }
        assert_eq!(get(&env, "CURL_CA_BUNDLE"), ["/b"]);
    }
}
