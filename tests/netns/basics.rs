//! The jail's network from inside: what is redirected, what is refused, what stays local.

use std::net::{TcpListener, UdpSocket};

use crate::support::{self, Run};

#[tokio::test(flavor = "multi_thread")]
async fn web_ports_of_any_name_reach_the_jails_listeners() {
    if !support::prerequisites() {
        return;
    }
    let done = support::run(Run::sh(
        "curl -sS --max-time 10 http://name.test/ && \
         curl -sS --max-time 10 http://other.test:443/path",
    ))
    .await;
    done.success();
    assert_eq!(
        done.stdout,
        "jail=jail listener=http orig=6.6.6.6:80 host=name.test\n\
         jail=jail listener=https orig=6.6.6.6:443 host=other.test:443\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ipv6_web_ports_are_redirected_too() {
    if !support::prerequisites() {
        return;
    }
    let done = support::run(Run::sh(
        "curl -sS --max-time 10 -g 'http://[2001:db8::1]/' && \
         curl -sS --max-time 10 -g 'http://[2001:db8::1]:443/'",
    ))
    .await;
    done.success();
    assert_eq!(
        done.stdout,
        "jail=jail listener=http orig=[2001:db8::1]:80 host=[2001:db8::1]\n\
         jail=jail listener=https orig=[2001:db8::1]:443 host=[2001:db8::1]:443\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_dns_query_is_answered_by_httpjail_with_the_fixed_address() {
    if !support::prerequisites() {
        return;
    }
    let name = support::unique("n") + ".example";
    let done = support::run(Run::probe(&format!(
        "out('udp4', dns_udp('203.0.113.7', '{name}'))\n\
         out('tcp4', dns_tcp('198.51.100.1', '{name}'))\n\
         out('udp6', dns_udp('2001:db8::53', '{name}'))\n\
         out('tcp6', dns_tcp('2001:db8::53', '{name}'))\n\
         out('loopback', dns_udp('127.0.0.1', '{name}'))\n\
         out('aaaa', dns_udp('203.0.113.7', '{name}', 28))\n\
         out('getent', os.popen('getent ahostsv4 {name}').read().split()[0])\n\
         out('resolv', open('/etc/resolv.conf').read().split('nameserver ')[1].split()[0])"
    )))
    .await;
    done.success();
    let answer = "id=4242 rcode=0 answers=1 addr=6.6.6.6";
    for key in ["udp4", "tcp4", "udp6", "tcp6", "loopback"] {
        assert_eq!(done.value(key), answer, "{key}");
    }
    assert_eq!(done.value("aaaa"), "id=4242 rcode=0 answers=0 addr=none");
    assert_eq!(done.value("getent"), "6.6.6.6");
    assert_eq!(done.value("resolv"), "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread")]
async fn other_ports_and_protocols_are_refused_at_once() {
    if !support::prerequisites() {
        return;
    }
    let done = support::run(Run::probe(
        "for host in ('6.6.6.6', '203.0.113.9', '2001:db8::1'):\n\
         \x20   for port in (22, 8080, 25):\n\
         \x20       r, dt = tcp(host, port)\n\
         \x20       out('tcp %s %d' % (host, port), '%s fast=%s' % (r, dt < 1))\n\
         \x20   out('udp %s' % host, udp(host, 123))\n\
         out('raw icmp', sock(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))\n\
         out('ping socket', sock(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP))\n\
         out('packet', sock(socket.AF_PACKET, socket.SOCK_RAW, 3))",
    ))
    .await;
    done.success();
    for host in ["6.6.6.6", "203.0.113.9", "2001:db8::1"] {
        for port in [22, 8080, 25] {
            let key = format!("tcp {host} {port}");
            assert_eq!(done.value(&key), "ECONNREFUSED fast=True", "{key}");
        }
        let udp = done.value(&format!("udp {host}"));
        assert!(
            ["EPERM", "ECONNREFUSED", "EHOSTUNREACH"].contains(&udp),
            "udp {host}: {udp}"
        );
    }
    assert_eq!(done.value("raw icmp"), "EPERM");
    assert_eq!(done.value("packet"), "EPERM");
    assert_eq!(done.value("ping socket"), "EACCES");
    assert!(
        done.hits.is_empty(),
        "nothing reached the proxy: {:?}",
        done.hits
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_hosts_loopback_services_are_unreachable() {
    if !support::prerequisites() {
        return;
    }
    let tcp4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp6 = TcpListener::bind("[::1]:0").unwrap();
    let udp4 = UdpSocket::bind("127.0.0.1:0").unwrap();
    for s in [&tcp4, &tcp6] {
        s.set_nonblocking(true).unwrap();
    }
    udp4.set_nonblocking(true).unwrap();
    let (p4, p6, pu) = (
        tcp4.local_addr().unwrap().port(),
        tcp6.local_addr().unwrap().port(),
        udp4.local_addr().unwrap().port(),
    );
    let done = support::run(Run::probe(&format!(
        "out('tcp4', tcp('127.0.0.1', {p4})[0])\n\
         out('tcp6', tcp('::1', {p6})[0])\n\
         out('udp4', udp('127.0.0.1', {pu}))"
    )))
    .await;
    done.success();
    assert_eq!(done.value("tcp4"), "ECONNREFUSED");
    assert_eq!(done.value("tcp6"), "ECONNREFUSED");
    assert_eq!(done.value("udp4"), "ECONNREFUSED");
    for (what, accepted) in [
        ("tcp4", tcp4.accept().is_ok()),
        ("tcp6", tcp6.accept().is_ok()),
        ("udp4", udp4.recv_from(&mut [0u8; 16]).is_ok()),
    ] {
        assert!(!accepted, "the host's {what} service was contacted");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_jails_own_loopback_and_addresses_stay_inside() {
    if !support::prerequisites() {
        return;
    }
    // A server the command starts, on port 80 of its loopback and on the jail's own address,
    // is reached directly: not redirected to httpjail.
    let done = support::run(Run::probe(
        "import threading\n\
         def serve(host):\n\
         \x20   s = socket.socket(fam(host)); s.bind((host, 80)); s.listen()\n\
         \x20   def loop():\n\
         \x20       while True:\n\
         \x20           c, _ = s.accept(); c.recv(4096)\n\
         \x20           c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: 6\\r\\n\\r\\nlocal\\n'); c.close()\n\
         \x20   threading.Thread(target=loop, daemon=True).start()\n\
         for h in ('127.0.0.1', '::1', '192.0.2.2'):\n\
         \x20   serve(h)\n\
         \x20   out('http ' + h, http(h, 80))",
    ))
    .await;
    done.success();
    for h in ["127.0.0.1", "::1", "192.0.2.2"] {
        assert_eq!(done.value(&format!("http {h}")), "local", "{h}");
    }
    assert!(done.hits.is_empty(), "{:?}", done.hits);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_jail_sees_its_own_resolv_conf_and_the_hosts_is_untouched() {
    if !support::prerequisites() {
        return;
    }
    let before = std::fs::read("/etc/resolv.conf").ok();
    let done = support::run(Run::sh("cat /etc/resolv.conf; echo x >> /etc/resolv.conf")).await;
    assert!(
        done.stdout.contains("nameserver 127.0.0.1\n") && done.stdout.contains("httpjail"),
        "{done:#?}"
    );
    assert!(
        done.stderr.contains("Read-only"),
        "the jail's file is read-only: {done:#?}"
    );
    assert_eq!(std::fs::read("/etc/resolv.conf").ok(), before);
}
