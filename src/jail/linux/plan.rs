//! The jail's network, as data: the `ip` commands, the nft ruleset and the resolv.conf text.
//!
//! Pure: nothing here touches the system, so everything the jail will apply is covered by the
//! snapshot tests at the bottom. [`super::apply`] is the only code that applies it (rtnetlink
//! for the links, `nft` for the ruleset); all of it lives *inside* the jail's own network
//! namespace.
//!
//! # The shape of the jail's network
//!
//! The namespace has `lo` only. Besides the usual `127.0.0.1/8` and `::1`, `lo` carries one
//! jail address per family ([`JAIL_IPV4`], [`JAIL_IPV6`]) and the default routes point at `lo`.
//! That makes `connect()` to *any* address succeed in routing, so every packet the command sends
//! reaches the nftables `output` hooks, where one table decides:
//!
//! - UDP and TCP port 53, to any address (the jail's loopback included, which is where a
//!   missing `/etc/resolv.conf` sends resolvers), is redirected to httpjail's resolver;
//! - traffic to the jail's own addresses stays inside (a server the command starts on its
//!   loopback is reachable by the command);
//! - TCP 80 and 443 to any other address is redirected to httpjail's listeners, which sit on
//!   the jail's loopback but are served by the proxy in the host namespace;
//! - everything else is rejected at once: TCP with a reset, the rest with ICMP
//!   administratively-prohibited (clients fail fast instead of hanging).
//!
//! No dummy or veth interface is needed (and so no kernel module that may be missing: the
//! `dummy` driver is not built into every kernel), and nothing exists outside the namespace.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The jail's own IPv4 address on `lo`: the source address of the command's connections.
/// From TEST-NET-1 (RFC 5737), which never appears on a real network.
pub const JAIL_IPV4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

/// The jail's own IPv6 address on `lo`, from a unique-local prefix (RFC 4193).
pub const JAIL_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd6a, 0x6169, 0x6c00, 0, 0, 0, 0, 2);

/// The nameserver written into the jail's resolv.conf. Any address would do, since port 53 is
/// redirected whatever the destination; the loopback is what resolvers assume when the file is
/// missing, so both cases behave the same.
pub const NAMESERVER: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Name of the one nftables table, inside the jail's namespace.
pub const NFT_TABLE: &str = "httpjail";

/// Ports of httpjail's listeners on the jail's loopback (`127.0.0.1` and `::1` share each
/// number). Chosen by the kernel at bind time, so they never collide with a port the command
/// asks for by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// Transparent HTTP: TCP 80 of any outside address lands here.
    pub http: u16,
    /// Transparent HTTPS: TCP 443 of any outside address lands here.
    pub https: u16,
    /// The resolver, UDP and TCP: port 53 of any address lands here.
    pub dns: u16,
}

/// One step of the jail's loopback set-up. [`super::apply`] sends each as an rtnetlink
/// request; `Display` gives the equivalent `ip` command, for messages and for reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkStep {
    /// Bring `lo` up (which also gives it `127.0.0.1/8` and `::1`).
    Up,
    /// Add a jail address to `lo` (IPv6 without duplicate address detection: there is no one
    /// on `lo` to collide with, and detection would only delay the address).
    Address { ip: IpAddr, prefix: u8 },
    /// Route every destination of a family to `lo`.
    DefaultRoute { ipv6: bool },
}

impl fmt::Display for LinkStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Up => write!(f, "ip link set dev lo up"),
            Self::Address {
                ip: IpAddr::V4(ip),
                prefix,
            } => {
                write!(f, "ip address add {ip}/{prefix} dev lo")
            }
            Self::Address {
                ip: IpAddr::V6(ip),
                prefix,
            } => {
                write!(f, "ip address add {ip}/{prefix} dev lo nodad")
            }
            Self::DefaultRoute { ipv6: false } => write!(f, "ip route add default dev lo"),
            Self::DefaultRoute { ipv6: true } => write!(f, "ip route add ::/0 dev lo"),
        }
    }
}

/// The loopback set-up, in order. `ipv6` is false on kernels booted with IPv6 disabled.
pub fn link_steps(ipv6: bool) -> Vec<LinkStep> {
    let mut steps = vec![
        LinkStep::Up,
        LinkStep::Address {
            ip: IpAddr::V4(JAIL_IPV4),
            prefix: 32,
        },
        LinkStep::DefaultRoute { ipv6: false },
    ];
    if ipv6 {
        steps.push(LinkStep::Address {
            ip: IpAddr::V6(JAIL_IPV6),
            prefix: 128,
        });
        steps.push(LinkStep::DefaultRoute { ipv6: true });
    }
    steps
}

/// The whole nftables configuration of the jail, for `nft -f -`.
///
/// Numbers rather than priority names (`dstnat`, `filter`) keep it valid for older `nft`.
/// Every match is a plain payload comparison (no sets, no `fib`), so that the rootless path,
/// which cannot load kernel modules, needs only the modules NAT and reject need anyway.
pub fn nft_ruleset(ports: Ports) -> String {
    let Ports { http, https, dns } = ports;
    let jail_local = format!(
        "\t\tip daddr 127.0.0.0/8 accept\n\
         \t\tip daddr {JAIL_IPV4} accept\n\
         \t\tip6 daddr ::1 accept\n\
         \t\tip6 daddr {JAIL_IPV6} accept\n"
    );
    format!(
        "table inet {NFT_TABLE} {{\n\
         \tchain output_nat {{\n\
         \t\ttype nat hook output priority -100; policy accept;\n\
         \t\tudp dport 53 redirect to :{dns}\n\
         \t\ttcp dport 53 redirect to :{dns}\n\
         {jail_local}\
         \t\ttcp dport 80 redirect to :{http}\n\
         \t\ttcp dport 443 redirect to :{https}\n\
         \t}}\n\
         \tchain output_filter {{\n\
         \t\ttype filter hook output priority 0; policy drop;\n\
         {jail_local}\
         \t\tmeta l4proto tcp reject with tcp reset\n\
         \t\treject with icmpx admin-prohibited\n\
         \t}}\n\
         }}\n"
    )
}

/// The jail's `/etc/resolv.conf`. No `search` or `options` lines: nothing of the host's
/// resolver configuration is carried into the jail.
pub fn resolv_conf() -> String {
    format!(
        "# Written by httpjail for this jail only; the host's file is unchanged.\n\
         # Every name resolves to 6.6.6.6 here: httpjail's proxy resolves the real name.\n\
         nameserver {NAMESERVER}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORTS: Ports = Ports {
        http: 40080,
        https: 40443,
        dns: 40053,
    };

    fn render(steps: &[LinkStep]) -> Vec<String> {
        steps.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn link_steps_snapshot() {
        assert_eq!(
            render(&link_steps(true)),
            [
                "ip link set dev lo up",
                "ip address add 192.0.2.2/32 dev lo",
                "ip route add default dev lo",
                "ip address add fd6a:6169:6c00::2/128 dev lo nodad",
                "ip route add ::/0 dev lo",
            ]
        );
    }

    #[test]
    fn link_steps_without_ipv6_touch_no_ipv6_state() {
        assert_eq!(
            render(&link_steps(false)),
            [
                "ip link set dev lo up",
                "ip address add 192.0.2.2/32 dev lo",
                "ip route add default dev lo",
            ]
        );
    }

    #[test]
    fn nft_ruleset_snapshot() {
        assert_eq!(
            nft_ruleset(PORTS),
            "table inet httpjail {\n\
             \tchain output_nat {\n\
             \t\ttype nat hook output priority -100; policy accept;\n\
             \t\tudp dport 53 redirect to :40053\n\
             \t\ttcp dport 53 redirect to :40053\n\
             \t\tip daddr 127.0.0.0/8 accept\n\
             \t\tip daddr 192.0.2.2 accept\n\
             \t\tip6 daddr ::1 accept\n\
             \t\tip6 daddr fd6a:6169:6c00::2 accept\n\
             \t\ttcp dport 80 redirect to :40080\n\
             \t\ttcp dport 443 redirect to :40443\n\
             \t}\n\
             \tchain output_filter {\n\
             \t\ttype filter hook output priority 0; policy drop;\n\
             \t\tip daddr 127.0.0.0/8 accept\n\
             \t\tip daddr 192.0.2.2 accept\n\
             \t\tip6 daddr ::1 accept\n\
             \t\tip6 daddr fd6a:6169:6c00::2 accept\n\
             \t\tmeta l4proto tcp reject with tcp reset\n\
             \t\treject with icmpx admin-prohibited\n\
             \t}\n\
             }\n"
        );
    }

    /// The order inside `output_nat` is the policy: DNS is redirected before the loopback
    /// exemption (so a resolver pointed at 127.0.0.1 still reaches ours), and the exemption
    /// comes before the 80/443 redirect (so the command's own local servers keep working).
    #[test]
    fn nat_rule_order_is_dns_then_local_then_web() {
        let text = nft_ruleset(PORTS);
        let pos = |needle: &str| text.find(needle).unwrap_or_else(|| panic!("{needle}"));
        assert!(pos("udp dport 53") < pos("ip daddr 127.0.0.0/8 accept"));
        assert!(pos("ip6 daddr fd6a:6169:6c00::2 accept") < pos("tcp dport 80 redirect"));
        assert_eq!(text.matches("table ").count(), 1, "exactly one table");
    }

    #[test]
    fn resolv_conf_points_at_a_redirected_address_and_nothing_else() {
        let text = resolv_conf();
        let directives: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(directives, ["nameserver 127.0.0.1"]);
    }
}
