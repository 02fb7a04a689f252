//! Applies a [`plan`] inside the jail's fresh network namespace: the only code
//! that configures the jail's network (rtnetlink for the loopback, `nft` for the ruleset), and
//! the code that binds httpjail's listeners there.
//!
//! Runs in the supervisor, after it entered the new namespace; nothing here can reach the host's
//! network namespace. One process in total, `nft -f -`, with the whole ruleset in one
//! transaction (either all of it is in place or none, and the jail is not used). The loopback
//! takes four netlink requests from the supervisor itself (`netlink`): running `ip`
//! for them cost more than the rest of the set-up together and needed iproute2 installed.
//!
//! `nft` is looked up in fixed system directories, never through `PATH`: under sudo a `PATH`
//! chosen by the user must not choose what runs as root.

use std::io::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::netlink::Netlink;
use super::plan::{self, LinkStep, Ports};
use crate::jail::Error;

/// Where `nft` is looked for, in order. The last one is NixOS's system profile.
pub(crate) const TOOL_DIRS: &[&str] = &[
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
    "/usr/local/sbin",
    "/usr/local/bin",
    "/run/current-system/sw/bin",
];

/// The programs the jail runs.
#[derive(Debug, Clone)]
pub(crate) struct Tools {
    pub(crate) nft: PathBuf,
}

impl Tools {
    /// Finds the tools, or names the package that provides a missing one.
    pub(crate) fn find() -> Result<Self, Error> {
        let dirs: Vec<&Path> = TOOL_DIRS.iter().map(Path::new).collect();
        Ok(Self {
            nft: find_tool("nft", "nftables", &dirs)?,
        })
    }
}

/// The first executable regular file called `name` in `dirs`.
pub(crate) fn find_tool(name: &str, package: &str, dirs: &[&Path]) -> Result<PathBuf, Error> {
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| Error::MissingTool {
            tool: name.to_owned(),
            package: package.to_owned(),
        })
}

/// Whether the jail's namespace has IPv6: the kernel may be booted with `ipv6.disable=1`, and
/// Docker disables IPv6 in a container's namespace (`--docker-run`) unless its network has
/// IPv6. Reads the calling *thread's* namespace (`/proc/thread-self`, since `/proc/net` is the
/// main thread's view), so call it inside the jail.
pub(crate) fn ipv6_available() -> bool {
    Path::new("/proc/thread-self/net/if_inet6").exists()
        && std::fs::read_to_string("/proc/sys/net/ipv6/conf/lo/disable_ipv6")
            .map_or(true, |v| v.trim() != "1")
}

/// Brings up `lo` with the jail addresses and default routes ([`plan::link_steps`]).
pub(crate) fn configure_links(ipv6: bool) -> Result<(), Error> {
    let failed = |what: String, e: std::io::Error| Error::Setup {
        step: what,
        detail: e.to_string(),
        hint: None,
    };
    let mut netlink =
        Netlink::open().map_err(|e| failed("open a netlink socket in the jail".into(), e))?;
    let lo = nix::net::if_::if_nametoindex("lo")
        .map_err(|e| failed("find the jail's loopback".into(), std::io::Error::from(e)))?;
    for step in plan::link_steps(ipv6) {
        match step {
            LinkStep::Up => netlink.set_up(lo),
            LinkStep::Address { ip, prefix } => netlink.add_address(lo, ip, prefix),
            LinkStep::DefaultRoute { ipv6 } => netlink.add_default_route(lo, ipv6),
        }
        .map_err(|e| failed(format!("configure the jail's loopback (`{step}`)"), e))?;
    }
    Ok(())
}

/// Lets every user bind ports below 1024 in the jail's namespace (and only there: the setting
/// is per network namespace). The command has no `CAP_NET_BIND_SERVICE`, even as root, yet a
/// local server on port 80 of the jail's loopback is a normal thing for it to run; no port of
/// the jail is reachable from outside it.
pub(crate) fn allow_low_ports() -> Result<(), Error> {
    std::fs::write("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0").map_err(|e| Error::Io {
        what: "set net.ipv4.ip_unprivileged_port_start in the jail".into(),
        source: e,
    })
}

/// Loads the jail's nft table. `rootless` only changes the hint given on failure.
pub(crate) fn install_ruleset(tools: &Tools, ports: Ports, rootless: bool) -> Result<(), Error> {
    let hint = rootless.then(|| {
        "without root the kernel cannot load missing netfilter modules; load them once with \
         `sudo modprobe -a nf_tables nft_chain_nat nft_redir nft_reject_inet`, or run httpjail \
         with sudo"
            .to_owned()
    });
    run_tool(
        &tools.nft,
        &["-f", "-"],
        &plan::nft_ruleset(ports),
        "load the jail's nftables rules",
        hint,
    )
}

fn run_tool(
    program: &Path,
    args: &[&str],
    input: &str,
    step: &str,
    hint: Option<String>,
) -> Result<(), Error> {
    let setup = |detail: String| Error::Setup {
        step: step.to_owned(),
        detail,
        hint: hint.clone(),
    };
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| setup(format!("cannot run `{}`: {e}", program.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| setup(format!("cannot write to `{}`: {e}", program.display())))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| setup(format!("waiting for `{}`: {e}", program.display())))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stderr = stderr.trim();
    Err(setup(if stderr.is_empty() {
        format!("`{}` {}", program.display(), output.status)
    } else {
        format!("`{}` {}: {stderr}", program.display(), output.status)
    }))
}

/// httpjail's sockets inside the jail, in the order they are sent to httpjail.
#[derive(Debug)]
pub(crate) struct Listeners {
    pub(crate) ports: Ports,
    pub(crate) http: Vec<TcpListener>,
    pub(crate) https: Vec<TcpListener>,
    pub(crate) dns_tcp: Vec<TcpListener>,
    pub(crate) dns_udp: Vec<UdpSocket>,
}

impl Listeners {
    /// Every descriptor, in the order of [`Self::counts`].
    pub(crate) fn raw_fds(&self) -> Vec<RawFd> {
        let tcp = self.http.iter().chain(&self.https).chain(&self.dns_tcp);
        tcp.map(AsRawFd::as_raw_fd)
            .chain(self.dns_udp.iter().map(AsRawFd::as_raw_fd))
            .collect()
    }

    /// How many sockets of each kind, in the order http, https, dns-tcp, dns-udp.
    pub(crate) fn counts(&self) -> [u8; 4] {
        [
            self.http.len(),
            self.https.len(),
            self.dns_tcp.len(),
            self.dns_udp.len(),
        ]
        .map(|n| u8::try_from(n).unwrap_or(u8::MAX))
    }
}

/// Binds the listeners on the jail's loopback: one port per service, chosen by the kernel on
/// `127.0.0.1` and reused on `::1` (free by construction: the namespace is new and empty).
/// All are non-blocking and close-on-exec, ready for the proxy's event loop.
pub(crate) fn bind_listeners(ipv6: bool) -> Result<Listeners, Error> {
    let bind_err = |what: &str, e: std::io::Error| Error::Io {
        what: format!("bind the jail's {what} listener"),
        source: e,
    };
    let tcp_pair = |what: &str| -> Result<(u16, Vec<TcpListener>), Error> {
        let v4 = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| bind_err(what, e))?;
        let port = v4.local_addr().map_err(|e| bind_err(what, e))?.port();
        let mut all = vec![v4];
        if ipv6 {
            all.push(
                TcpListener::bind(SocketAddr::from((Ipv6Addr::LOCALHOST, port)))
                    .map_err(|e| bind_err(what, e))?,
            );
        }
        Ok((port, all))
    };
    let (http_port, http) = tcp_pair("HTTP")?;
    let (https_port, https) = tcp_pair("HTTPS")?;
    let (dns_port, dns_tcp) = tcp_pair("DNS (TCP)")?;
    let mut dns_udp =
        vec![UdpSocket::bind((Ipv4Addr::LOCALHOST, dns_port)).map_err(|e| bind_err("DNS", e))?];
    if ipv6 {
        dns_udp.push(
            UdpSocket::bind(SocketAddr::from((Ipv6Addr::LOCALHOST, dns_port)))
                .map_err(|e| bind_err("DNS", e))?,
        );
    }
    let listeners = Listeners {
        ports: Ports {
            http: http_port,
            https: https_port,
            dns: dns_port,
        },
        http,
        https,
        dns_tcp,
        dns_udp,
    };
    for l in listeners
        .http
        .iter()
        .chain(&listeners.https)
        .chain(&listeners.dns_tcp)
    {
        l.set_nonblocking(true)
            .map_err(|e| bind_err("(non-blocking)", e))?;
    }
    for u in &listeners.dns_udp {
        u.set_nonblocking(true)
            .map_err(|e| bind_err("(non-blocking)", e))?;
    }
    Ok(listeners)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_names_its_package() {
        let empty = tempfile::tempdir().unwrap();
        let err = find_tool("nft", "nftables", &[empty.path()]).unwrap_err();
        assert!(
            matches!(&err, Error::MissingTool { tool, package } if tool == "nft" && package == "nftables")
        );
        let text = err.to_string();
        assert!(
            text.contains("`nft`") && text.contains("`nftables`"),
            "{text}"
        );
    }

    #[test]
    fn a_tool_must_be_an_executable_file() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("ip");
        std::fs::write(&plain, "").unwrap();
        assert!(
            find_tool("ip", "iproute2", &[dir.path()]).is_err(),
            "not executable"
        );
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_tool("ip", "iproute2", &[dir.path()]).unwrap(), plain);
    }

    #[test]
    fn a_failing_tool_reports_its_stderr() {
        let err = run_tool(
            Path::new("/bin/sh"),
            &["-c", "echo 'Error: no such thing' >&2; exit 3"],
            "",
            "load the jail's nftables rules",
            Some("a hint".into()),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("load the jail's nftables rules"), "{text}");
        assert!(text.contains("Error: no such thing"), "{text}");
        assert_eq!(err.hint().as_deref(), Some("a hint"));
    }
}
