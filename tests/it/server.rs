//! Server mode through the real binary: explicit and transparent entries on both listeners,
//! graceful shutdown, many clients.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::support::TestHome;
use crate::support::proxy::curl;
use crate::support::tls::TestCa;
use crate::support::upstream::TestUpstream;

struct Server {
    child: tokio::process::Child,
    http: SocketAddr,
    https: SocketAddr,
    home: TestHome,
    stderr: tokio::task::JoinHandle<String>,
}

impl Server {
    async fn start(home: TestHome, args: &[String]) -> Self {
        let mut cmd = home.httpjail();
        cmd.env("HTTPJAIL_HTTP_BIND", "127.0.0.1:0")
            .env("HTTPJAIL_HTTPS_BIND", "127.0.0.1:0")
            .arg("--server")
            .args(args)
            .stderr(std::process::Stdio::piped());
        let mut child = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (mut http, mut https) = (None, None);
        let mut seen = String::new();
        let found = tokio::time::timeout(Duration::from_secs(20), async {
            while let Ok(Some(line)) = lines.next_line().await {
                seen.push_str(&line);
                seen.push('\n');
                let addr = || {
                    line.rsplit(' ')
                        .next()
                        .and_then(|a| a.parse::<SocketAddr>().ok())
                };
                if line.contains("HTTP proxy listening on") {
                    http = addr();
                } else if line.contains("HTTPS proxy listening on") {
                    https = addr();
                }
                if http.is_some() && https.is_some() {
                    return;
                }
            }
        })
        .await;
        assert!(
            found.is_ok() && http.is_some() && https.is_some(),
            "server did not announce its listeners:\n{seen}"
        );
        let stderr = tokio::spawn(async move {
            let mut rest = seen;
            while let Ok(Some(line)) = lines.next_line().await {
                rest.push_str(&line);
                rest.push('\n');
            }
            rest
        });
        Self {
            child,
            http: http.unwrap(),
            https: https.unwrap(),
            home,
            stderr,
        }
    }

    fn ca(&self) -> String {
        self.home
            .path()
            .join(".config/httpjail/ca-cert.pem")
            .to_str()
            .unwrap()
            .to_owned()
    }
}

/// A loopback address of its own for one test, so port 443 is free on it.
fn unique_loopback() -> std::net::IpAddr {
    let n = std::process::id() as u16
        ^ (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u16);
    std::net::IpAddr::from([127, 77, (n >> 8) as u8, (n as u8).max(1)])
}

#[tokio::test(flavor = "multi_thread")]
async fn explicit_requests_on_both_listeners_and_transparent_tls() {
    let home = TestHome::new();
    let ca = TestCa::new("server-mode upstream CA");
    let ca_path = ca.write_pem(home.path(), "upstream-ca.pem");
    // The upstream listens on 443 of its own loopback address, as a real server would.
    let ip = unique_loopback();
    let upstream = TestUpstream::https_at(SocketAddr::new(ip, 443), &ca, &["site.test"]).await;
    let server = Server::start(
        home,
        &[
            "--sh".into(),
            "true".into(),
            "--upstream-ca".into(),
            ca_path.to_str().unwrap().into(),
            "--resolve".into(),
            format!("site.test:443:{ip}"),
        ],
    )
    .await;
    let ca = server.ca();
    // Explicit: CONNECT through either listener (HTTPS_PROXY commonly points at the second).
    for listener in [server.http, server.https] {
        let got = curl(&[
            "-x",
            &format!("http://{listener}"),
            "--cacert",
            &ca,
            "https://site.test/explicit",
        ])
        .await;
        assert_eq!(got.status, 200, "{got:?}");
        assert_eq!(got.json()["path"], "/explicit");
    }
    // Transparent: TLS straight to the HTTPS listener (as a firewall redirect would deliver it).
    let connect_to = format!(
        "site.test:443:{}:{}",
        server.https.ip(),
        server.https.port()
    );
    let got = curl(&[
        "--connect-to",
        &connect_to,
        "--cacert",
        &ca,
        "https://site.test/transparent",
    ])
    .await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.json()["path"], "/transparent");
    assert_eq!(upstream.count(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn transparent_plain_http_is_routed_by_host() {
    let home = TestHome::new();
    let ip = unique_loopback();
    let upstream = TestUpstream::http_at(SocketAddr::new(ip, 80)).await;
    let server = Server::start(
        home,
        &[
            "--sh".into(),
            "true".into(),
            "--resolve".into(),
            format!("plain.test:80:{ip}"),
        ],
    )
    .await;
    let mut stream = TcpStream::connect(server.http).await.unwrap();
    stream
        .write_all(b"GET /t HTTP/1.1\r\nHost: plain.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(upstream.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_in_flight_requests_finish() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let home = TestHome::new();
    let upstream = TestUpstream::http().await;
    let port = upstream.port();
    let mut server = Server::start(
        home,
        &[
            "--sh".into(),
            "true".into(),
            "--resolve".into(),
            format!("slow.test:{port}:127.0.0.1"),
        ],
    )
    .await;
    let proxy = format!("http://{}", server.http);
    let url = format!("http://slow.test:{port}/slow/1500");
    let in_flight = tokio::spawn(async move { curl(&["-x", &proxy, &url]).await });
    // Wait until the request reached the upstream, then ask the server to stop.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while upstream.count() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    kill(
        Pid::from_raw(server.child.id().unwrap() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    let got = in_flight.await.unwrap();
    assert_eq!(
        got.status, 200,
        "the in-flight request must complete: {got:?}"
    );
    let status = tokio::time::timeout(Duration::from_secs(15), server.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let stderr = server.stderr.await.unwrap();
    assert!(stderr.contains("shutting down"), "{stderr}");
    // After shutdown nothing listens any more.
    assert!(TcpStream::connect(server.http).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_idle_clients_do_not_stop_new_requests() {
    let home = TestHome::new();
    let upstream = TestUpstream::http().await;
    let port = upstream.port();
    let server = Server::start(
        home,
        &[
            "--sh".into(),
            "true".into(),
            "--resolve".into(),
            format!("busy.test:{port}:127.0.0.1"),
        ],
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..1000 {
        let mut s = TcpStream::connect(server.http).await.unwrap();
        // A request line without the end of its head: the connection stays open, waiting.
        s.write_all(b"GET http://busy.test/ HTTP/1.1\r\n")
            .await
            .unwrap();
        idle.push(s);
    }
    let got = curl(&[
        "-x",
        &format!("http://{}", server.http),
        &format!("http://busy.test:{port}/ok"),
    ])
    .await;
    assert_eq!(got.status, 200, "{got:?}");
    drop(idle);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_port_is_a_clear_error() {
    let home = TestHome::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = home
        .httpjail()
        .env("HTTPJAIL_HTTP_BIND", port.to_string())
        .env("HTTPJAIL_HTTPS_BIND", "127.0.0.1:0")
        .args(["--server"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")) && stderr.contains("HTTPJAIL_HTTP_BIND"),
        "{stderr}"
    );
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_stream_in_constant_memory() {
    let home = TestHome::new();
    let ca = TestCa::new("streaming upstream CA");
    let ca_path = ca.write_pem(home.path(), "upstream-ca.pem");
    let upstream = TestUpstream::https(&ca, &["bulk.test"], &[b"http/1.1"]).await;
    let port = upstream.port();
    let server = Server::start(
        home,
        &[
            "--sh".into(),
            "true".into(),
            "--upstream-ca".into(),
            ca_path.to_str().unwrap().into(),
            "--resolve".into(),
            format!("bulk.test:{port}:127.0.0.1"),
        ],
    )
    .await;
    let proxy = format!("http://{}", server.http);
    let ca = server.ca();
    let gib = 1u64 << 30;
    let got = curl(&[
        "-x",
        &proxy,
        "--cacert",
        &ca,
        "-o",
        "/dev/null",
        "--max-time",
        "300",
        &format!("https://bulk.test:{port}/bytes/{gib}"),
    ])
    .await;
    assert_eq!(got.status, 200, "{got:?}");
    // Upload 256 MiB without a length (chunked), streamed from a pipe.
    let upload = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c 268435456 /dev/zero | curl -sS -o /dev/null -w '%{{http_code}}' -x {proxy} --cacert {ca} -T - https://bulk.test:{port}/upload"
        ))
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&upload.stdout), "200", "{upload:?}");
    let peak = peak_rss_kib(server.child.id().unwrap());
    // A buffered gigabyte would show as ~1 GiB; streaming keeps the proxy near its idle size.
    assert!(
        peak < 96 * 1024,
        "peak RSS {peak} KiB: bodies are being buffered"
    );
}
