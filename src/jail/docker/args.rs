//! Which `docker run` arguments `--docker-run` refuses, before anything starts.
//!
//! httpjail passes the user's `docker run` arguments through untouched, after its own
//! (`--network container:<pause>`, labels, the CA mounts and variables). A few options would
//! defeat the jail or make no sense with it; [`check`] refuses them with a message that says
//! why. It is pure: it reads nothing but the arguments and, for bind-mount sources, the file
//! system (to resolve symbolic links).
//!
//! # How the options are found
//!
//! `docker run [OPTIONS] IMAGE [COMMAND] [ARG...]`: the Docker CLI (Go's `pflag`, with
//! interspersed arguments off) reads options up to the first argument that is not one, the
//! image, or up to `--`; everything after belongs to the container's command. [`check`] reads
//! exactly that part, the way `pflag` does: `--name=value`, `--name value` for options that
//! take a value, `-abc` groups of one-letter switches whose last letter may take the rest or
//! the next argument as its value (`-e=X`, `-eX`, `-e X`). For that it must know which
//! options take a value ([`VALUE_OPTIONS`], [`SHORT_VALUE`]): otherwise
//! `-e FOO=--privileged` would be misread, or worse, `--some-new-flag --privileged` read as
//! an option and its value. An option it does not know is refused unless written with `=`
//! (`--new-flag=VALUE`, `--new-switch=true`), which is unambiguous.
//!
//! # Limits (documented in the README)
//!
//! - Named volumes and `--volumes-from` are not inspected: a volume created with bind options
//!   pointing at the Docker socket, or another container's mounts, are not seen.
//! - Only the Docker and containerd sockets (and the directories holding them) are refused as
//!   bind-mount sources; other Unix sockets mounted into the container stay reachable, as
//!   they are from a strong jail that can see them.

use std::ffi::{OsStr, OsString};
use std::path::{Component, Path, PathBuf};

/// Why the arguments of `--docker-run` are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    #[error("--docker-run: the `docker run` option `{option}` is refused: {why}")]
    Refused { option: String, why: String },
    #[error(
        "--docker-run: `{option}` is not a `docker run` option httpjail knows, so it cannot tell \
         whether the next argument is its value; write it as `{option}=VALUE` (or \
         `{option}=true` for a switch)"
    )]
    UnknownOption { option: String },
}

/// Long options of `docker run` that take a value (hidden and deprecated ones included).
pub const VALUE_OPTIONS: &[&str] = &[
    "add-host",
    "annotation",
    "attach",
    "blkio-weight",
    "blkio-weight-device",
    "cap-add",
    "cap-drop",
    "cgroup-parent",
    "cgroupns",
    "cidfile",
    "cpu-count",
    "cpu-percent",
    "cpu-period",
    "cpu-quota",
    "cpu-rt-period",
    "cpu-rt-runtime",
    "cpu-shares",
    "cpus",
    "cpuset-cpus",
    "cpuset-mems",
    "credentialspec",
    "detach-keys",
    "device",
    "device-cgroup-rule",
    "device-read-bps",
    "device-read-iops",
    "device-write-bps",
    "device-write-iops",
    "dns",
    "dns-opt",
    "dns-option",
    "dns-search",
    "domainname",
    "entrypoint",
    "env",
    "env-file",
    "expose",
    "gpus",
    "group-add",
    "health-cmd",
    "health-interval",
    "health-retries",
    "health-start-interval",
    "health-start-period",
    "health-timeout",
    "hostname",
    "io-maxbandwidth",
    "io-maxiops",
    "ip",
    "ip6",
    "ipc",
    "isolation",
    "kernel-memory",
    "label",
    "label-file",
    "link",
    "link-local-ip",
    "log-driver",
    "log-opt",
    "mac-address",
    "memory",
    "memory-reservation",
    "memory-swap",
    "memory-swappiness",
    "mount",
    "name",
    "net",
    "net-alias",
    "network",
    "network-alias",
    "oom-score-adj",
    "pid",
    "pids-limit",
    "platform",
    "publish",
    "pull",
    "restart",
    "runtime",
    "security-opt",
    "shm-size",
    "stop-signal",
    "stop-timeout",
    "storage-opt",
    "sysctl",
    "tmpfs",
    "ulimit",
    "user",
    "userns",
    "uts",
    "volume",
    "volume-driver",
    "volumes-from",
    "workdir",
];

/// Long switches of `docker run` (no value, or `--switch=false`).
pub const SWITCHES: &[&str] = &[
    "detach",
    "disable-content-trust",
    "help",
    "init",
    "interactive",
    "no-healthcheck",
    "oom-kill-disable",
    "privileged",
    "publish-all",
    "quiet",
    "read-only",
    "rm",
    "sig-proxy",
    "tty",
    "use-api-socket",
];

/// One-letter options that take a value, and the long option each stands for.
pub const SHORT_VALUE: &[(char, &str)] = &[
    ('a', "attach"),
    ('c', "cpu-shares"),
    ('e', "env"),
    ('h', "hostname"),
    ('l', "label"),
    ('m', "memory"),
    ('p', "publish"),
    ('u', "user"),
    ('v', "volume"),
    ('w', "workdir"),
];

/// One-letter switches, and the long option each stands for.
pub const SHORT_SWITCHES: &[(char, &str)] = &[
    ('d', "detach"),
    ('i', "interactive"),
    ('t', "tty"),
    ('P', "publish-all"),
    ('q', "quiet"),
];

/// Capabilities that would let the container undo the jail or reach past it: change its
/// network (`NET_ADMIN`), forge packets (`NET_RAW`), enter other namespaces or mount
/// (`SYS_ADMIN`), read other processes (`SYS_PTRACE`), load code into the kernel
/// (`SYS_MODULE`, `BPF`), open host files by handle (`DAC_READ_SEARCH`, the "shocker"
/// escape) or touch raw I/O (`SYS_RAWIO`).
pub const FORBIDDEN_CAPABILITIES: &[&str] = &[
    "ALL",
    "NET_ADMIN",
    "NET_RAW",
    "SYS_ADMIN",
    "SYS_PTRACE",
    "SYS_MODULE",
    "BPF",
    "DAC_READ_SEARCH",
    "SYS_RAWIO",
];

/// The daemon sockets a container must not reach: with them it could start a sibling
/// container outside the jail.
pub const DAEMON_SOCKETS: &[&str] = &[
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/var/run/containerd/containerd.sock",
];

/// Checks the options of `docker run` arguments (up to the image). `extra_sockets`: more
/// daemon sockets to protect (the one `DOCKER_HOST` names); `cwd`: for relative bind sources.
pub fn check(args: &[OsString], extra_sockets: &[PathBuf], cwd: &Path) -> Result<(), ArgError> {
    let sockets: Vec<PathBuf> = DAEMON_SOCKETS
        .iter()
        .map(PathBuf::from)
        .chain(extra_sockets.iter().cloned())
        .collect();
    for (name, value) in options(args)? {
        check_option(&name, value.as_deref(), &sockets, cwd)?;
    }
    Ok(())
}

/// The options before the image, as (long name, value); a switch given without a value has
/// `None`. Short options are reported under their long name.
pub fn options(args: &[OsString]) -> Result<Vec<(String, Option<OsString>)>, ArgError> {
    let mut found = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let text = arg.to_string_lossy();
        if text == "--" || !text.starts_with('-') || text == "-" {
            break;
        }
        if let Some(long) = text.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((name, _)) => (name, Some(after_first_equals(arg))),
                None => (long, None),
            };
            if let Some(value) = inline {
                found.push((name.to_owned(), Some(value)));
            } else if VALUE_OPTIONS.contains(&name) {
                found.push((name.to_owned(), rest.next().cloned()));
            } else if SWITCHES.contains(&name) {
                found.push((name.to_owned(), None));
            } else {
                return Err(ArgError::UnknownOption {
                    option: format!("--{name}"),
                });
            }
            continue;
        }
        // A group of one-letter options: switches, then at most one that takes a value,
        // which is the rest of the group (after an optional `=`) or the next argument.
        let letters: Vec<char> = text[1..].chars().collect();
        let mut i = 0;
        while i < letters.len() {
            let letter = letters[i];
            let tail: String = letters[i + 1..].iter().collect();
            if let Some(&(_, name)) = SHORT_VALUE.iter().find(|(c, _)| *c == letter) {
                let value = if let Some(v) = tail.strip_prefix('=') {
                    Some(OsString::from(v))
                } else if !tail.is_empty() {
                    Some(OsString::from(tail))
                } else {
                    rest.next().cloned()
                };
                found.push((name.to_owned(), value));
                break;
            }
            let Some(&(_, name)) = SHORT_SWITCHES.iter().find(|(c, _)| *c == letter) else {
                return Err(ArgError::UnknownOption {
                    option: format!("-{letter}"),
                });
            };
            if let Some(v) = tail.strip_prefix('=') {
                found.push((name.to_owned(), Some(OsString::from(v))));
                break;
            }
            found.push((name.to_owned(), None));
            i += 1;
        }
    }
    Ok(found)
}

/// The part of `--name=value` after the first `=`, kept byte-exact (a path may not be UTF-8).
fn after_first_equals(arg: &OsStr) -> OsString {
    use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
    let bytes = arg.as_bytes();
    let at = bytes
        .iter()
        .position(|b| *b == b'=')
        .map_or(bytes.len(), |p| p + 1);
    OsString::from_vec(bytes[at..].to_vec())
}

fn check_option(
    name: &str,
    value: Option<&OsStr>,
    sockets: &[PathBuf],
    cwd: &Path,
) -> Result<(), ArgError> {
    let refuse = |why: &str| {
        Err(ArgError::Refused {
            option: match value {
                Some(v) => format!("--{name} {}", v.to_string_lossy()),
                None => format!("--{name}"),
            },
            why: why.to_owned(),
        })
    };
    let text = value.map(OsStr::to_string_lossy);
    let switch_on = text.as_deref().is_none_or(|v| !is_false(v));
    match name {
        "network" | "net" => refuse(
            "httpjail puts the container in a network namespace whose only way out is its proxy; \
             another network would bypass the jail",
        ),
        "privileged" if switch_on => {
            refuse("a privileged container can reconfigure its own network and leave the jail")
        }
        "cap-add" => {
            let caps = text.as_deref().unwrap_or_default();
            for cap in caps.split(',') {
                let cap = cap.trim().to_ascii_uppercase();
                let cap = cap.strip_prefix("CAP_").unwrap_or(&cap);
                if FORBIDDEN_CAPABILITIES.contains(&cap) {
                    return refuse(&format!(
                        "capability {cap} would let the container undo the jail or reach past it"
                    ));
                }
            }
            Ok(())
        }
        "add-host" => refuse(
            "name resolution inside the jail is httpjail's; to choose where the proxy connects \
             for a name, use httpjail's `--resolve HOST:PORT:ADDR`",
        ),
        "dns" | "dns-opt" | "dns-option" | "dns-search" => refuse(
            "httpjail answers every DNS query inside the jail itself; DNS settings would not apply",
        ),
        "publish" => refuse(
            "ports cannot be published from the jail's network namespace (Docker does not allow \
             it with a shared namespace, and nothing may reach into the jail)",
        ),
        "publish-all" if switch_on => refuse(
            "ports cannot be published from the jail's network namespace (Docker does not allow \
             it with a shared namespace, and nothing may reach into the jail)",
        ),
        "pid" | "userns" | "uts" | "ipc" | "cgroupns"
            if text
                .as_deref()
                .is_some_and(|v| v.eq_ignore_ascii_case("host")) =>
        {
            refuse("sharing a namespace with the host weakens the jail's isolation")
        }
        "detach" if switch_on => refuse(
            "httpjail serves the container's requests and must run as long as it does; run \
             httpjail itself in the background instead",
        ),
        "restart"
            if text
                .as_deref()
                .is_some_and(|v| !v.eq_ignore_ascii_case("no")) =>
        {
            refuse(
                "a restarted container would outlive the jail, whose proxy ends with the first run",
            )
        }
        "use-api-socket" if switch_on => refuse(
            "with the Docker API socket the container could start another container outside \
             the jail",
        ),
        "volume" => match value.and_then(volume_source) {
            Some(source) if reaches_socket(&absolute(&source, cwd), sockets) => refuse(
                "with the Docker or containerd socket the container could start another \
                 container outside the jail",
            ),
            _ => Ok(()),
        },
        "mount" => {
            for source in value.map(mount_sources).unwrap_or_default() {
                if reaches_socket(&absolute(&source, cwd), sockets) {
                    return refuse(
                        "with the Docker or containerd socket the container could start another \
                         container outside the jail",
                    );
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Go's `strconv.ParseBool` false values, which is what `--switch=false` accepts.
fn is_false(value: &str) -> bool {
    matches!(value, "0" | "f" | "F" | "false" | "FALSE" | "False")
}

/// The host path of `-v SOURCE:TARGET[:OPTIONS]`, when it is a bind mount (an absolute path, or
/// a relative one starting with `.`, which newer CLIs resolve against the current directory).
fn volume_source(value: &OsStr) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt as _;
    let bytes = value.as_bytes();
    let colon = bytes.iter().position(|b| *b == b':')?;
    let source = &bytes[..colon];
    (source.starts_with(b"/") || source.starts_with(b"."))
        .then(|| PathBuf::from(OsStr::from_bytes(source)))
}

/// The host paths a `--mount` value names: `source=`/`src=` (bind mounts) and a volume's
/// `volume-opt=device=` (a local volume with bind options).
fn mount_sources(value: &OsStr) -> Vec<PathBuf> {
    let text = value.to_string_lossy();
    let mut sources = Vec::new();
    for field in text.split(',') {
        let field = field.trim().trim_matches('"');
        let Some((key, val)) = field.split_once('=') else {
            continue;
        };
        let val = val.trim_matches('"');
        let path = match key.trim().to_ascii_lowercase().as_str() {
            "source" | "src" => val,
            "volume-opt" => match val.split_once('=') {
                Some((opt, device)) if opt.eq_ignore_ascii_case("device") => device,
                _ => continue,
            },
            _ => continue,
        };
        if path.starts_with('/') || path.starts_with('.') {
            sources.push(PathBuf::from(path));
        }
    }
    sources
}

fn absolute(path: &Path, cwd: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        cwd.join(path)
    }
}

/// Whether mounting `source` gives access to one of `sockets`: it is the socket or a
/// directory above it, compared both as written (cleaned up) and with symbolic links
/// resolved, since Docker follows them.
fn reaches_socket(source: &Path, sockets: &[PathBuf]) -> bool {
    let forms = |p: &Path| {
        let mut forms = vec![normalize(p)];
        if let Ok(real) = std::fs::canonicalize(p) {
            forms.push(real);
        } else if let Some(parent) = p.parent()
            && let (Ok(real), Some(name)) = (std::fs::canonicalize(parent), p.file_name())
        {
            // The socket may not exist yet (or be gone), its directory does.
            forms.push(real.join(name));
        }
        forms
    };
    let source_forms = forms(source);
    sockets.iter().any(|socket| {
        let socket_forms = forms(socket);
        source_forms
            .iter()
            .any(|s| socket_forms.iter().any(|k| k.starts_with(s)))
    })
}

/// `path` without `.`, empty and `..` components (lexically; `..` above `/` stays at `/`).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn run(list: &[&str]) -> Result<(), ArgError> {
        check(&args(list), &[], Path::new("/home/u/project"))
    }

    fn refused(list: &[&str]) -> String {
        match run(list) {
            Err(ArgError::Refused { option, .. }) => option,
            other => panic!("{list:?} was not refused: {other:?}"),
        }
    }

    #[test]
    fn ordinary_arguments_pass() {
        for list in [
            &["--rm", "alpine", "wget", "-qO-", "https://example.com"][..],
            &[
                "-it",
                "--rm",
                "-e",
                "FOO=bar",
                "-v",
                "/home/u/src:/src:ro",
                "img",
            ],
            &["--name=x", "--cap-add", "CHOWN", "--cap-drop=ALL", "img"],
            &["-u", "1000:1000", "-w", "/work", "--init", "img", "sh"],
            &["--privileged=false", "--detach=false", "-P=false", "img"],
            &["--pid", "container:other", "--restart=no", "img"],
            &["--mount", "type=volume,source=data,target=/data", "img"],
            &["--mount", "type=bind,src=/home/u,dst=/h", "img"],
            &["-v", "data:/data", "-v", "/anonymous", "img"],
            &["--new-flag=value", "--another-switch=true", "img"],
        ] {
            assert_eq!(run(list), Ok(()), "{list:?}");
        }
    }

    #[test]
    fn networks_in_every_spelling_are_refused() {
        for list in [
            &["--network", "host", "img"][..],
            &["--network=bridge", "img"],
            &["--net", "host", "img"],
            &["--net=container:x", "img"],
            &["--rm", "-it", "--network", "none", "img"],
        ] {
            assert!(refused(list).starts_with("--net"), "{list:?}");
        }
    }

    #[test]
    fn privileges_and_capabilities_are_refused() {
        assert_eq!(refused(&["--privileged", "img"]), "--privileged");
        assert_eq!(refused(&["--privileged=true", "img"]), "--privileged true");
        for cap in [
            "NET_ADMIN",
            "net_admin",
            "CAP_NET_ADMIN",
            "cap_sys_admin",
            "NET_RAW",
            "SYS_PTRACE",
            "SYS_MODULE",
            "BPF",
            "ALL",
            "all",
            "CHOWN,NET_ADMIN",
            " Sys_Admin ",
            "DAC_READ_SEARCH",
        ] {
            refused(&["--cap-add", cap, "img"]);
            refused(&[&format!("--cap-add={cap}"), "img"]);
        }
    }

    #[test]
    fn dns_hosts_ports_and_host_namespaces_are_refused() {
        for list in [
            &["--add-host", "a.test:1.2.3.4", "img"][..],
            &["--add-host=a.test:1.2.3.4", "img"],
            &["--dns", "8.8.8.8", "img"],
            &["--dns-search=x", "img"],
            &["--dns-option", "ndots:1", "img"],
            &["--dns-opt=ndots:1", "img"],
            &["-p", "80:80", "img"],
            &["-p80:80", "img"],
            &["--publish=80:80", "img"],
            &["-P", "img"],
            &["--publish-all", "img"],
            &["-itP", "img"],
            &["--pid=host", "img"],
            &["--pid", "HOST", "img"],
            &["--userns=host", "img"],
            &["--uts", "host", "img"],
            &["--ipc=host", "img"],
            &["-d", "img"],
            &["-itd", "img"],
            &["--detach", "img"],
            &["--restart=always", "img"],
            &["--restart", "on-failure:3", "img"],
            &["--use-api-socket", "img"],
        ] {
            refused(list);
        }
    }

    #[test]
    fn the_docker_socket_is_refused_however_it_is_mounted() {
        for list in [
            &["-v", "/var/run/docker.sock:/var/run/docker.sock", "img"][..],
            &["-v", "/run/docker.sock:/s", "img"],
            &["-v=/run/docker.sock:/s", "img"],
            &["-v/run/docker.sock:/s", "img"],
            &["--volume=/var/run/docker.sock:/s:ro", "img"],
            &["-v", "//var//run/./docker.sock:/s", "img"],
            &["-v", "/var/run:/hostrun", "img"],
            &["-v", "/:/host", "img"],
            &["-v", "/var:/v", "img"],
            &["-v", "/run/containerd:/c", "img"],
            &["-v", "/tmp/../run/docker.sock:/s", "img"],
            &[
                "--mount",
                "type=bind,source=/var/run/docker.sock,target=/s",
                "img",
            ],
            &["--mount=type=bind,src=/run,dst=/r", "img"],
            &[
                "--mount",
                "\"type=bind\",\"source=/run/docker.sock\",target=/s",
                "img",
            ],
            &[
                "--mount",
                "type=volume,target=/r,volume-opt=type=none,volume-opt=o=bind,volume-opt=device=/run",
                "img",
            ],
        ] {
            refused(list);
        }
        // A socket named by DOCKER_HOST is protected too.
        let extra = [PathBuf::from("/srv/dock/api.sock")];
        let cwd = Path::new("/");
        assert!(check(&args(&["-v", "/srv/dock:/d", "img"]), &extra, cwd).is_err());
        assert!(check(&args(&["-v", "/srv/other:/d", "img"]), &extra, cwd).is_ok());
        // Relative sources are resolved against the current directory.
        let cwd = Path::new("/var");
        assert!(check(&args(&["-v", "./run:/r", "img"]), &[], cwd).is_err());
    }

    #[test]
    fn values_that_look_like_forbidden_options_are_values() {
        for list in [
            &["-e", "FOO=--privileged", "img"][..],
            &["-e", "--privileged", "img"],
            &["--env", "--network=host", "img"],
            &["-l", "--net", "img"],
            &["-it", "-e", "--cap-add", "img"],
            &["-ite", "--privileged", "img"],
            &["--label=x=--privileged", "img"],
            &["--name", "--network", "img"],
            &["-w", "-p", "img"],
        ] {
            assert_eq!(run(list), Ok(()), "{list:?}");
        }
    }

    #[test]
    fn scanning_stops_at_the_image_or_at_the_double_dash() {
        for list in [
            &["img", "--privileged"][..],
            &["--rm", "img", "--network", "host"],
            &["--rm", "--", "img", "--privileged"],
            &["-e", "A=1", "img", "-p", "80:80"],
            &["--", "--privileged"],
        ] {
            assert_eq!(run(list), Ok(()), "{list:?}");
        }
    }

    #[test]
    fn unknown_options_need_an_equals_sign() {
        assert_eq!(
            run(&["--brand-new", "--privileged", "img"]),
            Err(ArgError::UnknownOption {
                option: "--brand-new".into()
            })
        );
        assert_eq!(
            run(&["-Z", "img"]),
            Err(ArgError::UnknownOption {
                option: "-Z".into()
            })
        );
        assert_eq!(
            run(&["-iZ", "img"]),
            Err(ArgError::UnknownOption {
                option: "-Z".into()
            })
        );
        // With `=` the value is unambiguous: later options are still checked.
        assert_eq!(run(&["--brand-new=x", "img"]), Ok(()));
        assert!(run(&["--brand-new=x", "--privileged", "img"]).is_err());
    }

    #[test]
    fn short_groups_are_read_like_pflag() {
        let opts = options(&args(&[
            "-it",
            "-eA=1",
            "-e=B=2",
            "-ve",
            "-dq=false",
            "img",
        ]))
        .unwrap();
        let opts: Vec<(String, Option<String>)> = opts
            .into_iter()
            .map(|(n, v)| (n, v.map(|v| v.to_string_lossy().into_owned())))
            .collect();
        assert_eq!(
            opts,
            [
                ("interactive".into(), None),
                ("tty".into(), None),
                ("env".into(), Some("A=1".into())),
                ("env".into(), Some("B=2".into())),
                ("volume".into(), Some("e".into())),
                ("detach".into(), None),
                ("quiet".into(), Some("false".into())),
            ]
        );
    }

    #[test]
    fn every_listed_option_is_listed_once() {
        let mut all: Vec<&str> = VALUE_OPTIONS.iter().chain(SWITCHES).copied().collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "an option is both a switch and takes a value");
        for (_, long) in SHORT_VALUE {
            assert!(VALUE_OPTIONS.contains(long), "{long}");
        }
        for (_, long) in SHORT_SWITCHES {
            assert!(SWITCHES.contains(long), "{long}");
        }
    }

    #[test]
    fn paths_are_normalized_lexically() {
        assert_eq!(normalize(Path::new("//a/./b/../c/")), PathBuf::from("/a/c"));
        assert_eq!(normalize(Path::new("/../..")), PathBuf::from("/"));
    }
}
