//! Local upstream servers for tests: they record every request they receive (so a test can
//! assert that a denied request never arrived) and answer by path:
//! - `/status/<code>`: that status;
//! - `/bytes/<n>`: n bytes of body, streamed;
//! - `/slow/<ms>`: wait before the response headers;
//! - `/upgrade`: `101 Switching Protocols` (Upgrade: echo), then echo every byte;
//! - `/<name>.git/info/refs`: a git smart-HTTP ref advertisement (for `git ls-remote`);
//! - anything else: 200 with a JSON echo of the request (method, path, headers, body).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::tls::TestCa;

/// What the upstream saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    /// Whether the body arrived complete (false when the client aborted it).
    pub body_complete: bool,
}

#[derive(Clone)]
pub struct TestUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    _task: Arc<tokio::task::JoinHandle<()>>,
}

type Body = BoxBody<Bytes, Infallible>;

impl TestUpstream {
    /// Plain HTTP on 127.0.0.1.
    pub async fn http() -> Self {
        Self::start(None).await
    }

    /// HTTPS on 127.0.0.1 with a certificate from `ca` for `names`, ALPN per `alpn`.
    pub async fn https(ca: &TestCa, names: &[&str], alpn: &[&[u8]]) -> Self {
        Self::start(Some(ca.server_config(names, alpn))).await
    }

    /// HTTPS on a given address (e.g. a unique 127.x.y.z on port 443, for transparent tests).
    pub async fn https_at(addr: SocketAddr, ca: &TestCa, names: &[&str]) -> Self {
        Self::start_at(addr, Some(ca.server_config(names, &[b"h2", b"http/1.1"]))).await
    }

    /// Plain HTTP on a given address.
    pub async fn http_at(addr: SocketAddr) -> Self {
        Self::start_at(addr, None).await
    }

    async fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        Self::start_at("127.0.0.1:0".parse().unwrap(), tls).await
    }

    async fn start_at(addr: SocketAddr, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let seen = seen2.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, seen.clone()));
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(config) => {
                            let Ok(tls) =
                                tokio_rustls::TlsAcceptor::from(config).accept(stream).await
                            else {
                                return;
                            };
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                                .await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            seen,
            _task: Arc::new(task),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

async fn handle(
    mut req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Body>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let upgrade = req.uri().path() == "/upgrade";
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let (body, body_complete) = match body.collect().await {
        Ok(b) => (b.to_bytes().to_vec(), true),
        Err(_) => (Vec::new(), false),
    };
    let record = Seen {
        method: parts.method.to_string(),
        path_and_query: path.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body: body.clone(),
        body_complete,
    };
    seen.lock().unwrap().push(record);
    let segments: Vec<&str> = parts
        .uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .collect();
    let response = match segments.as_slice() {
        ["status", code] => {
            let code = code.parse().unwrap_or(500);
            let mut r = Response::new(full(format!("status {code}\n")));
            *r.status_mut() =
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            r
        }
        ["bytes", n] => {
            let n: usize = n.parse().unwrap_or(0);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let frames = futures_util::stream::unfold(n, move |left| {
                let chunk = chunk.clone();
                async move {
                    if left == 0 {
                        return None;
                    }
                    let take = left.min(chunk.len());
                    Some((
                        Ok::<_, Infallible>(Frame::data(chunk.slice(..take))),
                        left - take,
                    ))
                }
            });
            let mut r = Response::new(StreamBody::new(frames).boxed());
            r.headers_mut()
                .insert(http::header::CONTENT_LENGTH, n.into());
            r
        }
        [repo, "info", "refs"] if repo.ends_with(".git") => git_advertisement(),
        ["slow", ms] => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            Response::new(full("slow\n"))
        }
        ["upgrade"] => {
            if let Some(on_upgrade) = on_upgrade {
                tokio::spawn(async move {
                    if let Ok(upgraded) = on_upgrade.await {
                        let mut io = TokioIo::new(upgraded);
                        let (mut r, mut w) = tokio::io::split(&mut io);
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    }
                });
            }
            let mut r = Response::new(full(""));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut()
                .insert(http::header::CONNECTION, "upgrade".parse().unwrap());
            r.headers_mut()
                .insert(http::header::UPGRADE, "echo".parse().unwrap());
            r
        }
        _ => {
            let headers: serde_json::Map<String, serde_json::Value> = parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        serde_json::Value::String(
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        ),
                    )
                })
                .collect();
            let echo = serde_json::json!({
                "method": parts.method.as_str(),
                "path": path,
                "version": format!("{:?}", parts.version),
                "headers": headers,
                "body": String::from_utf8_lossy(&body),
                "body_len": body.len(),
            });
            let mut r = Response::new(full(echo.to_string()));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                "application/json".parse().unwrap(),
            );
            r
        }
    };
    Ok(response)
}

/// The first answer of git's smart HTTP protocol (v0): the refs of a repository, enough for
/// `git ls-remote`.
pub const GIT_HEAD: &str = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";

fn git_advertisement() -> Response<Body> {
    fn pkt(line: &str) -> String {
        format!("{:04x}{line}", line.len() + 4)
    }
    let mut body = pkt("# service=git-upload-pack\n");
    body.push_str("0000");
    body.push_str(&pkt(&format!(
        "{GIT_HEAD} HEAD\0multi_ack side-band-64k agent=test\n"
    )));
    body.push_str(&pkt(&format!("{GIT_HEAD} refs/heads/main\n")));
    body.push_str("0000");
    let mut r = Response::new(full(body));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/x-git-upload-pack-advertisement"
            .parse()
            .unwrap(),
    );
    r
}

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).boxed()
}
