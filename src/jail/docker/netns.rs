//! Configuring the pause container's network namespace exactly as the strong jail configures
//! its own: the same loopback addresses and routes, the same nft table, httpjail's listeners
//! bound inside.
//!
//! Why a dedicated thread: `setns(CLONE_NEWNET)` changes the network namespace of the calling
//! *thread* only (unlike the mount or user namespace, it is allowed in a multi-threaded
//! process). Sockets it creates belong to that namespace, `/proc/thread-self/net` and
//! `/proc/sys/net` show it, and a process it starts (`nft`) is born in it. The thread ends when
//! the set-up is done, so no other code ever runs in the container's namespace; the listeners
//! stay bound there and are served by the proxy from the host's namespace, as for the strong
//! jail.
//!
//! Before touching anything it checks that the namespace is not httpjail's own and holds
//! nothing but `lo` (what `docker run --network none` gives): httpjail never configures a
//! namespace that has another way out, or the host's.

use std::fs::File;
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;

use super::Error;
use crate::jail::linux::JailListeners;
use crate::jail::linux::apply::{self, Tools};

/// Enters the network namespace of process `pid` (the pause container's) on a new thread and
/// sets it up; returns httpjail's listeners, bound inside it. Blocking (tens of milliseconds).
pub fn configure(pid: u32) -> Result<JailListeners, Error> {
    let path = format!("/proc/{pid}/ns/net");
    let namespace = File::open(&path).map_err(|e| Error::Namespace {
        detail: format!("cannot open `{path}`: {e}"),
    })?;
    let tools = Tools::find().map_err(Error::Network)?;
    let worker = std::thread::Builder::new()
        .name("httpjail-docker-net".into())
        .spawn(move || configure_inside(&namespace, &tools))
        .map_err(|e| Error::Namespace {
            detail: format!("cannot start a thread: {e}"),
        })?;
    let listeners = worker.join().map_err(|_| Error::Namespace {
        detail: "the set-up thread panicked".into(),
    })??;
    Ok(JailListeners {
        ports: listeners.ports,
        http: listeners.http,
        https: listeners.https,
        dns_udp: listeners.dns_udp,
        dns_tcp: listeners.dns_tcp,
    })
}

/// Runs on the dedicated thread, which it moves into `namespace` for good.
fn configure_inside(namespace: &File, tools: &Tools) -> Result<apply::Listeners, Error> {
    let mismatch = |detail: String| Error::Namespace { detail };
    let ours = std::fs::metadata("/proc/thread-self/ns/net")
        .map_err(|e| mismatch(format!("cannot read httpjail's own network namespace: {e}")))?;
    let theirs = namespace.metadata().map_err(|e| {
        mismatch(format!(
            "cannot read the container's network namespace: {e}"
        ))
    })?;
    if (ours.dev(), ours.ino()) == (theirs.dev(), theirs.ino()) {
        return Err(mismatch(
            "it is httpjail's own network namespace (is the Docker daemon on another machine, \
             or the container started with --network host?); httpjail changes nothing there"
                .into(),
        ));
    }
    nix::sched::setns(namespace.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
        mismatch(format!(
            "cannot enter it: {} (entering another network namespace needs root)",
            e.desc()
        ))
    })?;
    // From here on this thread is inside the container's namespace.
    let interfaces = interface_names()
        .map_err(|e| mismatch(format!("cannot list its network interfaces: {e}")))?;
    if interfaces != ["lo"] {
        return Err(mismatch(format!(
            "it has the interfaces {} where only `lo` was expected (a container started with \
             --network none); httpjail jails only a namespace without another way out",
            interfaces.join(", ")
        )));
    }
    // Docker disables IPv6 in a namespace without an IPv6 network: then there is no IPv6 at
    // all, and nothing of it to redirect.
    let ipv6 = apply::ipv6_available();
    apply::configure_links(ipv6).map_err(Error::Network)?;
    apply::allow_low_ports().map_err(Error::Network)?;
    let listeners = apply::bind_listeners(ipv6).map_err(Error::Network)?;
    apply::install_ruleset(tools, listeners.ports, false).map_err(Error::Network)?;
    Ok(listeners)
}

/// Names of the network interfaces of the calling thread's namespace.
fn interface_names() -> nix::Result<Vec<String>> {
    let list = nix::net::if_::if_nameindex()?;
    let mut names: Vec<String> = list
        .iter()
        .map(|i| i.name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_namespace_is_never_configured() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: needs root");
            return;
        }
        let err = configure(std::process::id()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("httpjail's own network namespace"), "{text}");
    }

    #[test]
    fn a_namespace_with_another_interface_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: needs root");
            return;
        }
        // A process in a network namespace of this test's own, with a bridge in it (built
        // into most kernels, unlike veth or dummy).
        let mut holder = std::process::Command::new("unshare")
            .args([
                "--net",
                "sh",
                "-c",
                "ip link add br0 type bridge && exec sleep 30",
            ])
            .spawn()
            .unwrap();
        let pid = holder.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let dev = format!("/proc/{pid}/net/dev");
        while !std::fs::read_to_string(&dev).is_ok_and(|d| d.contains("br0:")) {
            assert!(
                std::time::Instant::now() < deadline,
                "the bridge never appeared"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let result = configure(pid);
        let _ = holder.kill();
        let _ = holder.wait();
        let text = result.unwrap_err().to_string();
        assert!(text.contains("the interfaces br0, lo"), "{text}");
    }
}
