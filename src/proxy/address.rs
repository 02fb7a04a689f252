//! Which upstream addresses the proxy refuses to dial (SPEC section 5): pure classification.
//!
//! An allowed *name* must not become a way into the user's own network: a rule such as
//! `r.host.endsWith('.example.com')` would otherwise let `internal.example.com → 10.0.0.5` or a
//! DNS-rebinding name reach private services and cloud metadata (169.254.169.254). The check is
//! applied to each address the connector is about to dial, after resolution.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::{IpNet, canonical};

/// Why an address is refused, for messages.
pub fn private_range(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => private_v4(v4),
        IpAddr::V6(v6) => private_v6(v6),
    }
}

fn private_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    let range = match o {
        [0, ..] => "unspecified (0.0.0.0/8)",
        [10, ..] => "private (10.0.0.0/8)",
        [100, b, ..] if (64..128).contains(&b) => "shared CGNAT (100.64.0.0/10)",
        [127, ..] => "loopback (127.0.0.0/8)",
        [169, 254, ..] => "link-local (169.254.0.0/16)",
        [172, b, ..] if (16..32).contains(&b) => "private (172.16.0.0/12)",
        [192, 0, 0, _] => "IETF protocol assignments (192.0.0.0/24)",
        [192, 168, ..] => "private (192.168.0.0/16)",
        [198, b, ..] if b == 18 || b == 19 => "benchmarking (198.18.0.0/15)",
        [a, ..] if (224..240).contains(&a) => "multicast (224.0.0.0/4)",
        [a, ..] if a >= 240 => "reserved or broadcast (240.0.0.0/4)",
        _ => return None,
    };
    Some(range)
}

fn private_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified (::)");
    }
    if ip.is_loopback() {
        return Some("loopback (::1)");
    }
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) embed an IPv4 address that a gateway may reach.
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let v4 = Ipv4Addr::from(((u32::from(seg[6])) << 16) | u32::from(seg[7]));
        return private_v4(v4).map(|_| "NAT64 of a private IPv4 address (64:ff9b::/96)");
    }
    if seg[0] == 0x2002 {
        let v4 = Ipv4Addr::from(((u32::from(seg[1])) << 16) | u32::from(seg[2]));
        return private_v4(v4).map(|_| "6to4 of a private IPv4 address (2002::/16)");
    }
    match seg[0] {
        s if s & 0xfe00 == 0xfc00 => Some("unique local (fc00::/7)"),
        s if s & 0xffc0 == 0xfe80 => Some("link-local (fe80::/10)"),
        s if s & 0xffc0 == 0xfec0 => Some("site-local (fec0::/10)"),
        s if s & 0xff00 == 0xff00 => Some("multicast (ff00::/8)"),
        _ => None,
    }
}

/// Whether dialling `ip` is permitted: public, or covered by an `--allow-private` range.
pub fn is_dialable(ip: IpAddr, allow_private: &[IpNet]) -> Result<(), &'static str> {
    match private_range(ip) {
        None => Ok(()),
        Some(_) if allow_private.iter().any(|net| net.contains(ip)) => Ok(()),
        Some(range) => Err(range),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_and_special_ranges_are_refused() {
        for s in [
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "198.18.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "fc00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::1",
            "fec0::1",
        ] {
            assert!(private_range(ip(s)).is_some(), "{s} should be private");
        }
    }

    #[test]
    fn public_addresses_are_dialable() {
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "140.82.112.3",
            "172.32.0.1",
            "172.15.255.255",
            "100.128.0.1",
            "192.169.0.1",
            "2606:4700::1111",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "6.6.6.6",
        ] {
            assert_eq!(private_range(ip(s)), None, "{s} should be public");
        }
    }

    #[test]
    fn allow_private_opens_exactly_its_range() {
        let allow = [
            IpNet::parse("127.0.0.0/8").unwrap(),
            IpNet::parse("fd00::/8").unwrap(),
        ];
        assert!(is_dialable(ip("127.0.0.1"), &allow).is_ok());
        assert!(is_dialable(ip("::ffff:127.0.0.1"), &allow).is_ok());
        assert!(is_dialable(ip("fd12::1"), &allow).is_ok());
        assert_eq!(
            is_dialable(ip("10.0.0.1"), &allow),
            Err("private (10.0.0.0/8)")
        );
        assert_eq!(
            is_dialable(ip("169.254.169.254"), &allow),
            Err("link-local (169.254.0.0/16)")
        );
        assert!(
            is_dialable(ip("::1"), &allow).is_err(),
            "::1 is not in 127.0.0.0/8"
        );
        assert!(is_dialable(ip("8.8.8.8"), &[]).is_ok());
    }
}
