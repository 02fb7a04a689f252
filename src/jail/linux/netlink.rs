//! The four rtnetlink requests the jail's loopback needs, sent by the supervisor itself.
//!
//! Running `ip` for them cost about 7 ms per jail (process start and library loading, for four
//! tiny requests) and a runtime dependency on iproute2; these messages are the same ones `ip`
//! sends. Used only by [`super::apply`], inside the jail's namespace. The byte layout follows
//! `linux/netlink.h`, `linux/rtnetlink.h`, `linux/if_addr.h`; everything is native-endian, as
//! netlink is.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

const NETLINK_ROUTE: libc::c_int = 0;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_F_NODAD: u8 = 0x02;
const RTA_OIF: u16 = 4;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;
const IFF_UP: u32 = 0x1;
const NLMSG_HDRLEN: usize = 16;

/// A route-netlink socket of the calling thread's network namespace.
#[derive(Debug)]
pub(crate) struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    pub(crate) fn open() -> io::Result<Self> {
        // SAFETY: socket(2) with constant arguments; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Self { fd, seq: 0 })
    }

    /// `ip link set dev INDEX up`.
    pub(crate) fn set_up(&mut self, index: u32) -> io::Result<()> {
        self.request(RTM_NEWLINK, 0, &link_up_body(index))
    }

    /// `ip address add IP/PREFIX dev INDEX` (IPv6: `nodad`).
    pub(crate) fn add_address(&mut self, index: u32, ip: IpAddr, prefix: u8) -> io::Result<()> {
        let flags = NLM_F_CREATE | NLM_F_EXCL;
        self.request(RTM_NEWADDR, flags, &address_body(index, ip, prefix))
    }

    /// `ip [-6] route add default dev INDEX`.
    pub(crate) fn add_default_route(&mut self, index: u32, ipv6: bool) -> io::Result<()> {
        let flags = NLM_F_CREATE | NLM_F_EXCL;
        self.request(RTM_NEWROUTE, flags, &default_route_body(index, ipv6))
    }

    /// Sends one request and waits for the kernel's acknowledgement.
    fn request(&mut self, kind: u16, flags: u16, body: &[u8]) -> io::Result<()> {
        self.seq += 1;
        let msg = message(kind, NLM_F_REQUEST | NLM_F_ACK | flags, self.seq, body);
        // SAFETY: sends `msg.len()` bytes from a live buffer; the kernel is the destination of
        // an unbound netlink socket by default.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: receives into a live buffer of the given length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let Ok(n) = usize::try_from(n) else {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            };
            if let Some(result) = find_ack(&buf[..n], self.seq) {
                return result;
            }
        }
    }
}

/// A netlink message: header, then `body` (already padded to 4 bytes by its builder).
fn message(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(NLMSG_HDRLEN + body.len()).unwrap_or(u32::MAX);
    let mut m = Vec::with_capacity(NLMSG_HDRLEN + body.len());
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(body);
    m
}

/// `struct ifinfomsg` asking for `IFF_UP`.
fn link_up_body(index: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    b.extend_from_slice(&index.to_ne_bytes());
    b.extend_from_slice(&IFF_UP.to_ne_bytes());
    b.extend_from_slice(&IFF_UP.to_ne_bytes());
    b
}

/// `struct ifaddrmsg` plus `IFA_LOCAL` and `IFA_ADDRESS`, as `ip address add` sends them.
fn address_body(index: u32, ip: IpAddr, prefix: u8) -> Vec<u8> {
    let (family, flags, bytes) = match ip {
        IpAddr::V4(v4) => (libc::AF_INET as u8, 0, v4.octets().to_vec()),
        IpAddr::V6(v6) => (libc::AF_INET6 as u8, IFA_F_NODAD, v6.octets().to_vec()),
    };
    let mut b = vec![family, prefix, flags, RT_SCOPE_UNIVERSE];
    b.extend_from_slice(&index.to_ne_bytes());
    attribute(&mut b, IFA_LOCAL, &bytes);
    attribute(&mut b, IFA_ADDRESS, &bytes);
    b
}

/// `struct rtmsg` for a default route out of `index`, plus `RTA_OIF`. Like `ip`, an IPv4
/// route without a gateway has link scope and an IPv6 one universe scope.
fn default_route_body(index: u32, ipv6: bool) -> Vec<u8> {
    let (family, scope) = if ipv6 {
        (libc::AF_INET6 as u8, RT_SCOPE_UNIVERSE)
    } else {
        (libc::AF_INET as u8, RT_SCOPE_LINK)
    };
    let mut b = vec![
        family,
        0,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        scope,
        RTN_UNICAST,
    ];
    b.extend_from_slice(&0u32.to_ne_bytes());
    attribute(&mut b, RTA_OIF, &index.to_ne_bytes());
    b
}

/// Appends one `struct rtattr` with its payload, padded to 4 bytes.
fn attribute(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = u16::try_from(4 + payload.len()).unwrap_or(u16::MAX);
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// The outcome carried by the `NLMSG_ERROR` acknowledging request `seq` in `buf`, if any.
fn find_ack(mut buf: &[u8], seq: u32) -> Option<io::Result<()>> {
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let msg_seq = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Some(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed netlink reply",
            )));
        }
        if kind == NLMSG_ERROR && msg_seq == seq && len >= NLMSG_HDRLEN + 4 {
            let p = &buf[NLMSG_HDRLEN..NLMSG_HDRLEN + 4];
            let errno = i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
            return Some(if errno == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(-errno))
            });
        }
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn messages_have_their_length_in_the_header_and_are_aligned() {
        for body in [
            link_up_body(1),
            address_body(1, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 32),
            address_body(1, IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
            default_route_body(1, false),
            default_route_body(1, true),
        ] {
            assert_eq!(body.len() % 4, 0);
            let m = message(RTM_NEWADDR, NLM_F_REQUEST, 7, &body);
            assert_eq!(
                u32::from_ne_bytes(m[..4].try_into().unwrap()) as usize,
                m.len()
            );
            assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        }
    }

    #[test]
    fn an_ipv4_address_request_carries_local_and_address() {
        let b = address_body(1, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 32);
        let mut expected = vec![libc::AF_INET as u8, 32, 0, 0];
        expected.extend_from_slice(&1u32.to_ne_bytes());
        for kind in [IFA_LOCAL, IFA_ADDRESS] {
            expected.extend_from_slice(&8u16.to_ne_bytes());
            expected.extend_from_slice(&kind.to_ne_bytes());
            expected.extend_from_slice(&[192, 0, 2, 2]);
        }
        assert_eq!(b, expected);
        let v6 = address_body(1, IpAddr::V6(Ipv6Addr::LOCALHOST), 128);
        assert_eq!(v6[2], IFA_F_NODAD, "no duplicate address detection on lo");
        assert_eq!(v6.len(), 8 + 2 * 20);
    }

    #[test]
    fn default_routes_leave_through_the_given_interface() {
        let v4 = default_route_body(5, false);
        assert_eq!(&v4[..8], [libc::AF_INET as u8, 0, 0, 0, 254, 3, 253, 1]);
        assert_eq!(&v4[16..20], 5u32.to_ne_bytes());
        let v6 = default_route_body(5, true);
        assert_eq!(v6[6], RT_SCOPE_UNIVERSE);
    }

    #[test]
    fn acks_are_matched_by_sequence_and_carry_the_errno() {
        let ack = |seq: u32, errno: i32| {
            let mut body = errno.to_ne_bytes().to_vec();
            body.extend_from_slice(&[0; 16]);
            message(NLMSG_ERROR, 0, seq, &body)
        };
        let mut two = ack(3, 0);
        two.extend_from_slice(&ack(4, -libc::EEXIST));
        assert!(matches!(find_ack(&two, 3), Some(Ok(()))));
        let err = find_ack(&two, 4).unwrap().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
        assert!(find_ack(&two, 5).is_none());
        assert!(find_ack(&[0u8; 3], 1).is_none());
        assert!(matches!(
            find_ack(&[1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], 1),
            Some(Err(_))
        ));
    }
}
