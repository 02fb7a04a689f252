//! The proxy in-process, through the library API, against local upstreams, with curl as the
//! client. Upstreams get realistic names through resolve overrides.

use std::time::Duration;

use httpjail::proxy::Entry;
use httpjail::rules::{Decision, DenyReason};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::proxy::{TestProxy, curl};
use crate::support::tls::TestCa;
use crate::support::upstream::TestUpstream;

fn allow_all(_: &httpjail::rules::RuleRequest) -> Decision {
    Decision::ALLOW
}

#[tokio::test(flavor = "multi_thread")]
async fn explicit_http_allowed_reaches_upstream_with_rule_fields() {
    let upstream = TestUpstream::http().await;
    let port = upstream.port();
    let seen_by_rule = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = seen_by_rule.clone();
    let mut proxy = TestProxy::builder(move |r| {
        seen.lock().unwrap().push(r.clone());
        Decision::ALLOW
    })
    .resolve("api.example.test", port, upstream.addr)
    .start()
    .await;
    let url = format!("http://API.example.test:{port}/repos?page=2");
    let got = curl(&["-x", &proxy.url(), &url]).await;
    assert_eq!(got.status, 200, "{got:?}");
    let echo = got.json();
    assert_eq!(echo["path"], "/repos?page=2");
    assert_eq!(echo["headers"]["host"], format!("api.example.test:{port}"));
    assert!(
        echo["headers"]["x-httpjail-loop"].is_string(),
        "loop marker is sent upstream"
    );
    assert!(echo["headers"].get("proxy-connection").is_none());
    let rule_saw = seen_by_rule.lock().unwrap().clone();
    assert_eq!(rule_saw.len(), 1);
    assert_eq!(
        rule_saw[0].url,
        format!("http://api.example.test:{port}/repos?page=2")
    );
    assert_eq!(rule_saw[0].host, "api.example.test");
    assert_eq!(rule_saw[0].path, "/repos");
    assert_eq!(rule_saw[0].port, port);
    assert_eq!(rule_saw[0].requester_ip.to_string(), "127.0.0.1");
    let records = proxy.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].decision, "allow");
    assert_eq!(records[0].status, Some(200));
    assert!(
        records[0].bytes_down > 0 && records[0].bytes_up > 0,
        "{records:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn denied_request_gets_403_and_never_reaches_upstream() {
    let upstream = TestUpstream::http().await;
    let port = upstream.port();
    let mut proxy =
        TestProxy::builder(|_| Decision::deny_with(DenyReason::Rule, "not on the list"))
            .resolve("blocked.test", port, upstream.addr)
            .start()
            .await;
    let url = format!("http://blocked.test:{port}/x");
    let got = curl(&["-x", &proxy.url(), &url]).await;
    assert_eq!(got.status, 403, "{got:?}");
    assert_eq!(
        got.body,
        format!("httpjail: Blocked GET {url}\nnot on the list\n")
    );
    assert!(
        got.headers
            .to_lowercase()
            .contains("x-httpjail-reason: rule"),
        "{}",
        got.headers
    );
    assert!(
        got.headers
            .to_lowercase()
            .contains("content-type: text/plain"),
        "{}",
        got.headers
    );
    assert_eq!(
        upstream.count(),
        0,
        "a denied request must never be sent upstream"
    );
    let records = proxy.records();
    assert_eq!(records.len(), 1);
    assert_eq!(
        (records[0].decision.as_str(), records[0].reason.as_deref()),
        ("deny", Some("rule"))
    );
    assert_eq!(records[0].status, Some(403));
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_tunnel_is_intercepted_and_each_request_is_decided_with_port_kept() {
    let upstream_ca = TestCa::new("upstream CA");
    let upstream = TestUpstream::https(&upstream_ca, &["secure.test"], &[b"http/1.1"]).await;
    let port = upstream.port();
    let seen_by_rule = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = seen_by_rule.clone();
    let mut proxy = TestProxy::builder(move |r| {
        seen.lock().unwrap().push(r.url.clone());
        if r.path.starts_with("/allowed") {
            Decision::ALLOW
        } else {
            Decision::deny(DenyReason::Rule)
        }
    })
    .resolve("secure.test", port, upstream.addr)
    .upstream_ca(&upstream_ca)
    .start()
    .await;
    let ca = proxy.proxy_ca_pem.to_str().unwrap().to_owned();
    let ok = format!("https://secure.test:{port}/allowed/1");
    let no = format!("https://secure.test:{port}/secret");
    // One curl, one keep-alive connection, two requests: each is decided on its own.
    let got = curl(&["-x", &proxy.url(), "--cacert", &ca, &ok, &no]).await;
    assert!(got.body.contains("/allowed/1"), "{got:?}");
    assert!(
        got.body.contains(&format!("httpjail: Blocked GET {no}")),
        "{got:?}"
    );
    assert_eq!(
        *seen_by_rule.lock().unwrap(),
        [ok.clone(), no.clone()],
        "the CONNECT itself is not shown to the rule"
    );
    assert_eq!(upstream.count(), 1);
    let records = proxy.records();
    assert_eq!(records.len(), 2, "{records:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_on_both_sides_when_offered() {
    let upstream_ca = TestCa::new("upstream CA");
    let upstream = TestUpstream::https(&upstream_ca, &["h2.test"], &[b"h2", b"http/1.1"]).await;
    let port = upstream.port();
    let proxy = TestProxy::builder(allow_all)
        .resolve("h2.test", port, upstream.addr)
        .upstream_ca(&upstream_ca)
        .start()
        .await;
    let ca = proxy.proxy_ca_pem.to_str().unwrap().to_owned();
    let url = format!("https://h2.test:{port}/two");
    let got = curl(&["-x", &proxy.url(), "--cacert", &ca, "--http2", &url]).await;
    assert_eq!(got.status, 200, "{got:?}");
    assert!(
        got.headers
            .starts_with("HTTP/1.1 200 Connection established")
            || got.headers.contains("HTTP/2 200"),
        "{}",
        got.headers
    );
    assert!(
        got.headers.contains("HTTP/2 200"),
        "client side should be h2: {}",
        got.headers
    );
    assert_eq!(
        got.json()["version"],
        "HTTP/2.0",
        "upstream side should be h2"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http1_upstream_behind_http2_client() {
    let upstream_ca = TestCa::new("upstream CA");
    let upstream = TestUpstream::https(&upstream_ca, &["h1.test"], &[b"http/1.1"]).await;
    let port = upstream.port();
    let proxy = TestProxy::builder(allow_all)
        .resolve("h1.test", port, upstream.addr)
        .upstream_ca(&upstream_ca)
        .start()
        .await;
    let ca = proxy.proxy_ca_pem.to_str().unwrap().to_owned();
    let got = curl(&[
        "-x",
        &proxy.url(),
        "--cacert",
        &ca,
        "--http2",
        &format!("https://h1.test:{port}/"),
    ])
    .await;
    assert!(got.headers.contains("HTTP/2 200"), "{got:?}");
    assert_eq!(got.json()["version"], "HTTP/1.1");
}

#[tokio::test(flavor = "multi_thread")]
async fn transparent_tls_is_routed_by_sni() {
    let upstream_ca = TestCa::new("upstream CA");
    let upstream = TestUpstream::https(&upstream_ca, &["sni.test"], &[b"http/1.1"]).await;
    let port = upstream.port();
    let proxy = TestProxy::builder(allow_all)
        .entry(Entry::Jail { port })
        .resolve("sni.test", port, upstream.addr)
        .upstream_ca(&upstream_ca)
        .start()
        .await;
    let ca = proxy.proxy_ca_pem.to_str().unwrap().to_owned();
    // --connect-to plays the netfilter redirect: curl believes it talks to sni.test.
    let connect_to = format!("sni.test:{port}:127.0.0.1:{}", proxy.addr.port());
    let got = curl(&[
        "--connect-to",
        &connect_to,
        "--cacert",
        &ca,
        &format!("https://sni.test:{port}/via-sni"),
    ])
    .await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.json()["path"], "/via-sni");
}

#[tokio::test(flavor = "multi_thread")]
async fn jail_entry_uses_the_connection_port_not_the_host_header_port() {
    let upstream = TestUpstream::http().await;
    let port = upstream.port();
    let proxy = TestProxy::builder(allow_all)
        .entry(Entry::Jail { port })
        .resolve("name.test", port, upstream.addr)
        .start()
        .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /p HTTP/1.1\r\nHost: name.test:22\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(
        upstream.count(),
        1,
        "went to the connection's port, not :22"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn jail_entry_refuses_explicit_proxy_requests() {
    let upstream = TestUpstream::http().await;
    let port = upstream.port();
    let proxy = TestProxy::builder(allow_all)
        .entry(Entry::Jail { port: 80 })
        .resolve("name.test", port, upstream.addr)
        .start()
        .await;
    let got = curl(&["-x", &proxy.url(), &format!("http://name.test:{port}/")]).await;
    assert_eq!(got.status, 403, "{got:?}");
    assert!(got.headers.contains("explicit_proxy_refused"), "{got:?}");
    let got = curl(&[
        "-x",
        &proxy.url(),
        "-k",
        &format!("https://name.test:{port}/"),
    ])
    .await;
    assert_ne!(got.status, 200, "CONNECT must be refused: {got:?}");
    assert_eq!(upstream.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn domain_fronting_is_refused_with_421() {
    let upstream_ca = TestCa::new("upstream CA");
    let upstream =
        TestUpstream::https(&upstream_ca, &["front.test", "hidden.test"], &[b"http/1.1"]).await;
    let port = upstream.port();
    let mut proxy = TestProxy::builder(|r| {
        if r.host == "front.test" {
            Decision::ALLOW
        } else {
            Decision::deny(DenyReason::Rule)
        }
    })
    .resolve("front.test", port, upstream.addr)
    .resolve("hidden.test", port, upstream.addr)
    .upstream_ca(&upstream_ca)
    .start()
    .await;
    let ca = proxy.proxy_ca_pem.to_str().unwrap().to_owned();
    let got = curl(&[
        "-x",
        &proxy.url(),
        "--cacert",
        &ca,
        "-H",
        "Host: hidden.test",
        &format!("https://front.test:{port}/"),
    ])
    .await;
    assert_eq!(got.status, 421, "{got:?}");
    assert!(got.headers.contains("domain_fronting"), "{got:?}");
    assert_eq!(upstream.count(), 0);
    let records = proxy.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].reason.as_deref(), Some("domain_fronting"));
}

#[tokio::test(flavor = "multi_thread")]
async fn private_addresses_are_refused_unless_allowed() {
    let upstream = TestUpstream::http().await;
    let port = upstream.port();
    // The rule allows everything; the name is an IP literal on loopback.
    let mut proxy = TestProxy::builder(allow_all).start().await;
    let url = format!("http://127.0.0.1:{port}/");
    let got = curl(&["-x", &proxy.url(), &url]).await;
    assert_eq!(got.status, 403, "{got:?}");
    assert!(got.headers.contains("private_address"), "{got:?}");
    assert_eq!(upstream.count(), 0);
    let records = proxy.records();
    assert_eq!(records[0].reason.as_deref(), Some("private_address"));
    let open = TestProxy::builder(allow_all)
        .allow_private("127.0.0.0/8")
        .start()
        .await;
    let got = curl(&["-x", &open.url(), &url]).await;
    assert_eq!(got.status, 200, "{got:?}");
    // Metadata endpoints stay closed when only loopback is allowed.
    let got = curl(&[
        "-x",
        &open.url(),
        "http://169.254.169.254/latest/meta-data/",
    ])
    .await;
    assert_eq!(got.status, 403, "{got:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_looping_back_into_the_proxy_is_refused() {
    let proxy = TestProxy::builder(allow_all)
        .allow_private("127.0.0.0/8")
        .start()
        .await;
    let url = format!("http://127.0.0.1:{}/loop", proxy.addr.port());
    let got = curl(&["-x", &proxy.url(), &url]).await;
    assert_eq!(got.status, 508, "{got:?}");
    assert!(got.body.contains("loop"), "{got:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn max_tx_bytes_with_content_length_is_413_without_contacting_upstream() {
    let upstream = TestUpstream::http().await;
    let port = upstream.port();
    let proxy = TestProxy::builder(|_| Decision::Allow {
        max_tx_bytes: Some(1024),
    })
    .resolve("up.test", port, upstream.addr)
    .start()
    .await;
    let body = "x".repeat(5000);
    let got = curl(&[
        "-x",
        &proxy.url(),
        "--data-binary",
        &body,
        &format!("http://up.test:{port}/upload"),
    ])
    .await;
    assert_eq!(got.status, 413, "{got:?}");
    let size: u64 = got
        .body
        .split('(')
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(size > 5000, "size counts the whole request: {got:?}");
    assert_eq!(
        got.body,
        format!("Request body size ({size} bytes) exceeds maximum allowed (1024 bytes)")
    );
    assert_eq!(upstream.count(), 0);
    // A small request under the limit passes.
    let got = curl(&[
        "-x",
        &proxy.url(),
        "--data-binary",
        "small",
        &format!("http://up.test:{port}/upload"),
    ])
    .await;
    assert_eq!(got.status, 200, "{got:?}");
}

/// A TCP server that records the raw bytes of one connection until the peer stops sending.
async fn raw_upstream() -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => all.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        all
    });
    (addr, task)
}

/// Head length plus decoded chunked-body length of a raw HTTP/1.1 request.
fn decoded_size(raw: &[u8]) -> (usize, usize) {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, mut rest) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete head in {} bytes: {text:?}", raw.len()));
    let mut body = 0;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        let available = after.len().min(n);
        body += available;
        if available < n || n == 0 {
            break;
        }
        rest = after[n..].strip_prefix("\r\n").unwrap_or("");
    }
    (head.len() + 4, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn max_tx_bytes_without_length_sends_exactly_the_limit() {
    let (upstream, received) = raw_upstream().await;
    let port = upstream.port();
    let limit = 600u64;
    let mut proxy = TestProxy::builder(move |_| Decision::Allow {
        max_tx_bytes: Some(limit),
    })
    .resolve("up.test", port, upstream)
    .start()
    .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST http://up.test:{port}/chunked HTTP/1.1\r\nHost: up.test:{port}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..10 {
        let _ = stream.write_all(b"100\r\n").await;
        let _ = stream.write_all(&[b'y'; 0x100]).await;
        let _ = stream.write_all(b"\r\n").await;
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    let raw = received.await.unwrap();
    let (head_len, body_len) = decoded_size(&raw);
    assert_eq!(
        (head_len + body_len) as u64,
        limit,
        "the upstream must receive exactly max_tx_bytes (head {head_len} + body {body_len}):\n{}",
        String::from_utf8_lossy(&raw)
    );
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    let records = proxy.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].reason.as_deref(), Some("tx_limit"));
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_failures_map_to_502_and_504() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let upstream = TestUpstream::http().await;
    let port = upstream.port();
    let proxy = TestProxy::builder(allow_all)
        .resolve("dead.test", dead_port, "127.0.0.1:0".parse().unwrap())
        .resolve("slow.test", port, upstream.addr)
        .settings(|s| s.timeouts.upstream_headers = Duration::from_millis(300))
        .start()
        .await;
    let got = curl(&[
        "-x",
        &proxy.url(),
        &format!("http://dead.test:{dead_port}/"),
    ])
    .await;
    assert_eq!(got.status, 502, "{got:?}");
    let got = curl(&[
        "-x",
        &proxy.url(),
        &format!("http://slow.test:{port}/slow/3000"),
    ])
    .await;
    assert_eq!(got.status, 504, "{got:?}");
    let got = curl(&["-x", &proxy.url(), "http://no-such-name.invalid/"]).await;
    assert_eq!(got.status, 502, "{got:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_oversized_requests_are_answered_and_logged() {
    let mut proxy = TestProxy::builder(allow_all).start().await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(b"THIS IS NOT HTTP\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    assert!(
        String::from_utf8_lossy(&response).starts_with("HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&response)
    );
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let huge = format!(
        "GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let _ = stream.write_all(huge.as_bytes()).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    assert!(
        String::from_utf8_lossy(&response).starts_with("HTTP/1.1 431"),
        "{:?}",
        String::from_utf8_lossy(&response)
    );
    let records = proxy.records();
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(
        records
            .iter()
            .all(|r| r.decision == "deny" && r.reason.as_deref() == Some("malformed_request"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn transparent_http_without_host_is_denied_and_tls_without_sni_is_dropped() {
    let mut proxy = TestProxy::builder(allow_all)
        .entry(Entry::Jail { port: 80 })
        .start()
        .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    assert!(
        String::from_utf8_lossy(&response).starts_with("HTTP/1.0 400"),
        "{:?}",
        String::from_utf8_lossy(&response)
    );
    // curl sends no SNI for an IP literal.
    let ca = proxy.proxy_ca_pem.to_str().unwrap().to_owned();
    let connect_to = format!("127.0.0.9:443:127.0.0.1:{}", proxy.addr.port());
    let got = curl(&[
        "--connect-to",
        &connect_to,
        "--cacert",
        &ca,
        "https://127.0.0.9/",
    ])
    .await;
    assert_eq!(got.status, 0, "{got:?}");
    let records = proxy.records();
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(records.iter().all(|r| r.decision == "deny"));
}

#[tokio::test(flavor = "multi_thread")]
async fn protocol_upgrades_are_spliced_after_the_rule_allows_them() {
    let upstream = TestUpstream::http().await;
    let port = upstream.port();
    let proxy = TestProxy::builder(allow_all)
        .resolve("ws.test", port, upstream.addr)
        .start()
        .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let request = format!(
        "GET http://ws.test:{port}/upgrade HTTP/1.1\r\nHost: ws.test:{port}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
        .write_all(b"ping over the upgraded stream")
        .await
        .unwrap();
    let mut echoed = vec![0u8; 29];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"ping over the upgraded stream");
}

#[tokio::test(flavor = "multi_thread")]
async fn large_downloads_stream_through() {
    let upstream_ca = TestCa::new("upstream CA");
    let upstream = TestUpstream::https(&upstream_ca, &["big.test"], &[b"http/1.1"]).await;
    let port = upstream.port();
    let mut proxy = TestProxy::builder(allow_all)
        .resolve("big.test", port, upstream.addr)
        .upstream_ca(&upstream_ca)
        .start()
        .await;
    let ca = proxy.proxy_ca_pem.to_str().unwrap().to_owned();
    let n = 64 * 1024 * 1024;
    let got = curl(&[
        "-x",
        &proxy.url(),
        "--cacert",
        &ca,
        "-o",
        "/dev/null",
        &format!("https://big.test:{port}/bytes/{n}"),
    ])
    .await;
    assert_eq!(got.status, 200, "{got:?}");
    let records = proxy.records();
    assert_eq!(records[0].bytes_down, n as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_sending_headers_one_byte_at_a_time_is_cut_off() {
    let proxy = TestProxy::builder(allow_all)
        .settings(|s| s.timeouts.client_handshake = Duration::from_millis(500))
        .start()
        .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut closed = false;
    for byte in b"GET http://slow.test/ HTTP/1.1\r\nHost: slow.test\r\n"
        .iter()
        .cycle()
        .take(200)
    {
        if stream.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(
        closed || matches!(read, Ok(Ok(_))),
        "the proxy must close a connection whose head never completes"
    );
    assert!(started.elapsed() < Duration::from_secs(9));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_disconnects_mid_upload_does_not_hurt_the_proxy() {
    let upstream = TestUpstream::http().await;
    let port = upstream.port();
    let mut proxy = TestProxy::builder(allow_all)
        .resolve("up.test", port, upstream.addr)
        .start()
        .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST http://up.test:{port}/upload HTTP/1.1\r\nHost: up.test\r\nContent-Length: 100000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[b'z'; 1000]).await.unwrap();
    drop(stream);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = curl(&["-x", &proxy.url(), &format!("http://up.test:{port}/after")]).await;
    assert_eq!(got.status, 200, "{got:?}");
    let records = proxy.records();
    assert_eq!(
        records.len(),
        2,
        "one record per request, the aborted one included: {records:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_resets_is_a_502() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            // Close with RST: linger 0.
            let _ = s.set_zero_linger();
            drop(s);
        }
    });
    let mut proxy = TestProxy::builder(allow_all)
        .resolve("reset.test", addr.port(), addr)
        .start()
        .await;
    let got = curl(&[
        "-x",
        &proxy.url(),
        &format!("http://reset.test:{}/", addr.port()),
    ])
    .await;
    assert_eq!(got.status, 502, "{got:?}");
    let records = proxy.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, Some(502));
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_after_connect_is_refused_and_logged() {
    let mut proxy = TestProxy::builder(allow_all).start().await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"CONNECT ssh.test:22 HTTP/1.1\r\nHost: ssh.test:22\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Not TLS, not HTTP: an SSH banner. No blind tunnel: nothing is forwarded.
    stream.write_all(b"SSH-2.0-OpenSSH_9.0\r\n").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(
        !String::from_utf8_lossy(&rest).contains("SSH-2.0"),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    // The client gives up; the connection's one record says why it was refused.
    drop(stream);
    let records = proxy.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].decision, "deny");
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrades_work_inside_an_intercepted_tunnel() {
    use tokio_rustls::TlsConnector;
    let upstream_ca = TestCa::new("upstream CA");
    let upstream = TestUpstream::https(&upstream_ca, &["wss.test"], &[b"http/1.1"]).await;
    let port = upstream.port();
    let proxy = TestProxy::builder(allow_all)
        .resolve("wss.test", port, upstream.addr)
        .upstream_ca(&upstream_ca)
        .start()
        .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(
            format!("CONNECT wss.test:{port} HTTP/1.1\r\nHost: wss.test:{port}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let mut client = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(proxy.proxy_ca.root_store())
    .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut tls = TlsConnector::from(std::sync::Arc::new(client))
        .connect("wss.test".try_into().unwrap(), stream)
        .await
        .unwrap();
    tls.write_all(format!("GET /upgrade HTTP/1.1\r\nHost: wss.test:{port}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let n = tls.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    tls.write_all(b"frames").await.unwrap();
    let mut echoed = [0u8; 6];
    tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"frames");
}
