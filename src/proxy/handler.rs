//! One request: work out what the client is asking for, hold it to the host of the intercepted
//! connection, ask the rule, then forward it or refuse it.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use http::{Method, Request, Response, StatusCode, Uri, Version, header};
use http_body::Body as _;
use http_body_util::{BodyExt, Either};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::body::{Completion, CountedBody, LoggedBody, ProxyBody, TxLimitReached, empty};
use super::upstream::ConnectError;
use super::{ConnCtx, LOOP_HEADER, Shared, headers, reject};
use crate::config::canonical;
use crate::error::{find_source, render_inline};
use crate::request_log::Record;
use crate::rules::request::{normalize_host, split_host_port};
use crate::rules::{Decision, DenyReason, RuleRequest, Scheme};
use crate::secrets::body::{self as secret_body, LeakCut, Outgoing};
use crate::secrets::response::ScrubbedBody;
use crate::secrets::upgrade::{self as secret_upgrade, Cut as SecretCut, UpgradeScanner};
use crate::secrets::{Leak, Policy, Secrets};

/// What a request is for, before it becomes a [`RuleRequest`].
#[derive(Debug, PartialEq, Eq)]
struct Target {
    scheme: Scheme,
    host: String,
    port: u16,
    path_and_query: String,
}

/// Why a request is refused before the rule is asked.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// 400: no usable host, bad URL.
    Malformed(String),
    /// An explicit proxy request on a transparent-only (jail) listener.
    ExplicitProxy,
    /// A Host / :authority different from the SNI or CONNECT target (421).
    Fronting { expected: String, named: String },
}

/// Decides the target of a non-CONNECT request from the connection context and the request.
fn target(
    version: Version,
    uri: &Uri,
    host_header: Option<&str>,
    ctx_tls_name: Option<&str>,
    ctx_tunnel_host: Option<&str>,
    port: u16,
    allows_explicit: bool,
) -> Result<Target, Refusal> {
    let path_and_query = uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
    let normalize = |named: &str| -> Result<String, Refusal> {
        let (host, _port) = split_host_port(named)
            .map_err(|e| Refusal::Malformed(format!("bad host `{named}`: {e}")))?;
        normalize_host(host).map_err(|e| Refusal::Malformed(e.to_string()))
    };
    // Intercepted TLS or a CONNECT tunnel: the destination is already fixed; every name the
    // request carries must agree with it.
    if let Some(expected) = ctx_tls_name.or(ctx_tunnel_host) {
        for named in [uri.authority().map(|a| a.as_str()), host_header]
            .into_iter()
            .flatten()
        {
            let host = normalize(named)?;
            if host != expected {
                return Err(Refusal::Fronting {
                    expected: expected.to_owned(),
                    named: host,
                });
            }
        }
        let scheme = if ctx_tls_name.is_some() {
            Scheme::Https
        } else {
            Scheme::Http
        };
        return Ok(Target {
            scheme,
            host: expected.to_owned(),
            port,
            path_and_query,
        });
    }
    // Absolute-form over HTTP/1: an explicit proxy request.
    if version != Version::HTTP_2 && uri.scheme().is_some() {
        if !allows_explicit {
            return Err(Refusal::ExplicitProxy);
        }
        let scheme = uri
            .scheme_str()
            .and_then(Scheme::parse)
            .ok_or_else(|| Refusal::Malformed(format!("unsupported scheme in `{uri}`")))?;
        let host = uri
            .host()
            .ok_or_else(|| Refusal::Malformed(format!("no host in `{uri}`")))?;
        let host = normalize_host(host).map_err(|e| Refusal::Malformed(e.to_string()))?;
        return Ok(Target {
            scheme,
            host,
            port: uri.port_u16().unwrap_or(scheme.default_port()),
            path_and_query,
        });
    }
    // Transparent plain HTTP (or h2c): routed by Host / :authority, to the port the client
    // connected to. A port in the Host header changes nothing.
    let named = uri
        .authority()
        .map(|a| a.as_str())
        .or(host_header)
        .ok_or_else(|| {
            Refusal::Malformed("no Host header: the destination is unknown".to_owned())
        })?;
    Ok(Target {
        scheme: Scheme::Http,
        host: normalize(named)?,
        port,
        path_and_query,
    })
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// `host[:port]` as it appears in a URL (IPv6 in brackets, default port omitted).
fn authority(request: &RuleRequest) -> String {
    let host = if request.host.contains(':') {
        format!("[{}]", request.host)
    } else {
        request.host.clone()
    };
    if request.port == request.scheme.default_port() {
        host
    } else {
        format!("{host}:{}", request.port)
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Shared {
    pub(super) async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        ctx: ConnCtx,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        if request.method() == Method::CONNECT {
            return self.connect(request, ctx);
        }
        let host_header = request
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok());
        let target = target(
            request.version(),
            request.uri(),
            host_header,
            ctx.tls_name.as_deref(),
            ctx.tunnel.as_ref().map(|t| t.0.as_str()),
            ctx.port,
            ctx.entry.allows_explicit(),
        );
        let target = match target {
            Ok(target) => target,
            Err(refusal) => return self.refuse(refusal, &request, &ctx),
        };
        let client_ip = canonical(ctx.client.ip());
        let rule_request = match RuleRequest::new(
            request.method().as_str(),
            target.scheme,
            &target.host,
            target.port,
            &target.path_and_query,
            client_ip,
        ) {
            Ok(r) => r,
            Err(e) => {
                self.log_unparsed(
                    &ctx,
                    &target.host,
                    DenyReason::MalformedRequest,
                    e.to_string(),
                );
                return reject::bad_request(&e.to_string());
            }
        };
        // --secret (SPEC section 9): a request that carries a secret where it may not go is
        // denied here, before the rule, so that no rule is ever shown a real value.
        let secret_policy = match &self.settings.secrets {
            None => None,
            Some(secrets) => {
                let policy = secrets.policy(target.scheme, &rule_request.host);
                if let Err(leak) = secrets.check_head(
                    &policy,
                    request.method().as_str(),
                    &rule_request.host,
                    &target.path_and_query,
                    request.headers(),
                ) {
                    return self.secret_leak(secrets, &rule_request, &leak, &ctx, started);
                }
                Some(policy)
            }
        };
        let looped = request
            .headers()
            .get(LOOP_HEADER)
            .is_some_and(|v| v.as_bytes() == self.loop_token.as_bytes());
        let decision = if looped {
            Decision::deny_with(
                DenyReason::LoopDetected,
                "the request came back to the proxy that sent it",
            )
        } else {
            self.engine.evaluate(&rule_request).await
        };
        match decision {
            Decision::Deny { reason, message } => {
                self.deny(&rule_request, reason, message, &ctx, started)
            }
            Decision::Allow { max_tx_bytes } => {
                self.forward(
                    request,
                    rule_request,
                    max_tx_bytes,
                    secret_policy,
                    &ctx,
                    started,
                )
                .await
            }
        }
    }

    fn refuse(
        &self,
        refusal: Refusal,
        request: &Request<Incoming>,
        ctx: &ConnCtx,
    ) -> Response<ProxyBody> {
        match refusal {
            Refusal::Malformed(why) => {
                self.log_unparsed(ctx, "", DenyReason::MalformedRequest, why.clone());
                reject::bad_request(&why)
            }
            Refusal::ExplicitProxy => {
                let why =
                    "this listener only takes transparent connections; proxy requests are refused";
                self.log_unparsed(
                    ctx,
                    request.uri().host().unwrap_or(""),
                    DenyReason::ExplicitProxyRefused,
                    why,
                );
                reject::denied(
                    request.method().as_str(),
                    &request.uri().to_string(),
                    DenyReason::ExplicitProxyRefused,
                    Some(why),
                )
            }
            Refusal::Fronting { expected, named } => {
                let why = format!("the request names `{named}` on a connection to `{expected}`");
                let url = format!("https://{named}{}", request.uri().path());
                self.log_unparsed(ctx, &named, DenyReason::DomainFronting, why.clone());
                reject::denied(
                    request.method().as_str(),
                    &url,
                    DenyReason::DomainFronting,
                    Some(&why),
                )
            }
        }
    }

    /// Writes the one log record of a request answered here (not by an upstream body that
    /// streams: that one is written by `LoggedBody`). Nothing is built without a request log.
    fn log_answered(
        &self,
        request: &RuleRequest,
        decision: &Decision,
        status: u16,
        bytes_up: u64,
        ctx: &ConnCtx,
        started: Instant,
    ) {
        if !self.log.is_enabled() {
            return;
        }
        let mut record = Record::for_request(request, decision).with_original_dst(ctx.original_dst);
        record.status = Some(status);
        record.bytes_up = bytes_up;
        record.duration_ms = started.elapsed().as_millis() as u64;
        self.log.record(record);
    }

    fn deny(
        &self,
        request: &RuleRequest,
        reason: DenyReason,
        message: Option<String>,
        ctx: &ConnCtx,
        started: Instant,
    ) -> Response<ProxyBody> {
        let response = reject::denied(&request.method, &request.url, reason, message.as_deref());
        tracing::info!("deny {} {} ({reason})", request.method, request.url);
        let status = response.status().as_u16();
        self.log_answered(
            request,
            &Decision::Deny { reason, message },
            status,
            0,
            ctx,
            started,
        );
        response
    }

    /// Denies a request that carries a secret where it may not go (`secret_leak`); what is
    /// shown in the response, the log and the diagnostics is redacted.
    fn secret_leak(
        &self,
        secrets: &Secrets,
        request: &RuleRequest,
        leak: &Leak,
        ctx: &ConnCtx,
        started: Instant,
    ) -> Response<ProxyBody> {
        let shown = secrets.redact_request(request);
        self.deny(
            &shown,
            DenyReason::SecretLeak,
            Some(leak.to_string()),
            ctx,
            started,
        )
    }

    /// A CONNECT opens a tunnel only to intercept it: the stream inside is served like a new
    /// connection bound to the requested host and port. The CONNECT itself is not shown to
    /// the rule; every request inside is.
    fn connect(
        self: Arc<Self>,
        mut request: Request<Incoming>,
        ctx: ConnCtx,
    ) -> Response<ProxyBody> {
        if !ctx.entry.allows_explicit() || ctx.tunnel.is_some() || ctx.tls_name.is_some() {
            return self.refuse(Refusal::ExplicitProxy, &request, &ctx);
        }
        let Some(authority) = request.uri().authority().map(|a| a.as_str().to_owned()) else {
            return self.refuse(
                Refusal::Malformed("CONNECT without host:port".to_owned()),
                &request,
                &ctx,
            );
        };
        let parsed = split_host_port(&authority)
            .map_err(|e| e.to_string())
            .and_then(|(host, port)| {
                normalize_host(host)
                    .map(|h| (h, port.unwrap_or(443)))
                    .map_err(|e| e.to_string())
            });
        let (host, port) = match parsed {
            Ok(hp) => hp,
            Err(why) => {
                return self.refuse(
                    Refusal::Malformed(format!("CONNECT {authority}: {why}")),
                    &request,
                    &ctx,
                );
            }
        };
        let on_upgrade = hyper::upgrade::on(&mut request);
        let tunnel_ctx = ConnCtx {
            tunnel: Some((host, port)),
            tls_name: None,
            port,
            ..ctx
        };
        let this = self.clone();
        // Boxed: the tunnel is served by the same code that serves connections, which is what
        // called us; a concrete future type here would be infinitely recursive.
        let serve: BoxFuture = Box::pin(async move {
            match on_upgrade.await {
                Ok(upgraded) => this.serve_stream(TokioIo::new(upgraded), tunnel_ctx).await,
                Err(e) => tracing::debug!("CONNECT tunnel was not opened: {e}"),
            }
        });
        tokio::spawn(serve);
        Response::new(empty())
    }

    async fn forward(
        &self,
        mut request: Request<Incoming>,
        rule_request: RuleRequest,
        max_tx_bytes: Option<u64>,
        secret_policy: Option<Policy>,
        ctx: &ConnCtx,
        started: Instant,
    ) -> Response<ProxyBody> {
        // --secret: `Some` when secrets are configured (the policy of this request).
        let secrets = self.settings.secrets.as_ref().zip(secret_policy.as_ref());
        let upgrade =
            request.version() == Version::HTTP_11 && headers::is_upgrade(request.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        let client_version = request.version();
        let (mut parts, body) = request.into_parts();
        // --secret: real values go into the URL only now, after the rule saw placeholders.
        let url = match secrets {
            Some((secrets, policy)) => secrets.substitute_url(policy, &rule_request.url),
            None => Cow::Borrowed(rule_request.url.as_str()),
        };
        let uri: Uri = match url.parse() {
            Ok(uri) => uri,
            Err(e) => {
                return reject::bad_request(&format!("cannot forward `{}`: {e}", rule_request.url));
            }
        };
        headers::strip_hop_by_hop(&mut parts.headers, upgrade);
        // --secret: what the client sends after an upgrade is scanned too; a compressed
        // WebSocket could not be, so no extension is offered upstream.
        let websocket = upgrade && secret_upgrade::is_websocket(&parts.headers);
        if websocket && secrets.is_some() {
            secret_upgrade::strip_extensions(&mut parts.headers);
        }
        parts.headers.remove(header::HOST);
        parts.headers.insert(LOOP_HEADER, self.loop_token.clone());
        // --secret: substitute in the headers; scan (and, for a bound host, substitute in)
        // the body before anything is sent upstream (crate::secrets::body).
        let body = match secrets {
            Some((secrets, policy)) => {
                match secret_body::prepare_request(secrets, policy, &mut parts.headers, body).await
                {
                    Outgoing::Forward(body) => body,
                    Outgoing::Leak(leak) => {
                        return self.secret_leak(secrets, &rule_request, &leak, ctx, started);
                    }
                    Outgoing::ClientError(e) => {
                        let why = format!("the request body could not be read: {e}");
                        let response = reject::bad_request(&why);
                        return self.log_failure(&rule_request, response, ctx, started);
                    }
                }
            }
            None => Either::Left(body),
        };
        let authority = authority(&rule_request);
        let path = uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        let mut head = headers::head_size(
            parts.method.as_str(),
            &path,
            &parts.headers,
            Some(&authority),
        );
        if !parts.headers.contains_key(header::CONTENT_LENGTH) && !body.is_end_stream() {
            // An HTTP/1.1 upstream gets this body chunked, announced by one more header line.
            head += "transfer-encoding: chunked\r\n".len() as u64;
        }
        let mut body_limit = None;
        if let Some(max) = max_tx_bytes {
            let declared = content_length(&parts.headers).unwrap_or(0);
            if head + declared > max {
                return self.too_large(&rule_request, head + declared, max, ctx, started);
            }
            body_limit = Some(max - head);
        }
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        let sent = Arc::new(AtomicU64::new(0));
        let body = CountedBody::new(body, sent.clone(), body_limit).boxed();
        let client = if upgrade {
            &self.client_h1
        } else {
            &self.client
        };
        let pending = client.request(Request::from_parts(parts, body));
        let response =
            match tokio::time::timeout(self.settings.timeouts.upstream_headers, pending).await {
                Ok(Ok(response)) => response,
                Ok(Err(e)) => {
                    return self.upstream_failed(&rule_request, &e, ctx, started, max_tx_bytes);
                }
                Err(_) => {
                    let response =
                        reject::gateway_timeout(&rule_request.url, "no response headers in time");
                    return self.log_failure(&rule_request, response, ctx, started);
                }
            };
        let mut response = response;
        let upstream_upgrade = (upgrade && response.status() == StatusCode::SWITCHING_PROTOCOLS)
            .then(|| hyper::upgrade::on(&mut response));
        let (mut parts, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, upstream_upgrade.is_some());
        parts.version = client_version;
        // --secret: a bound host that sends a real value back (an echo, a token exchange)
        // must not hand it to the command: it is replaced by the placeholder.
        let scrubber = secrets
            .filter(|(_, policy)| policy.substitutes())
            .and_then(|(secrets, _)| secrets.scrubber().cloned());
        let body = match scrubber {
            Some(scrubber)
                if upstream_upgrade.is_none()
                    && rule_request.method != "HEAD"
                    && !matches!(parts.status.as_u16(), 204 | 304) =>
            {
                scrubber.headers(&mut parts.headers);
                // Replacing changes the length; hyper frames the body itself then.
                parts.headers.remove(header::CONTENT_LENGTH);
                Either::Right(ScrubbedBody::new(body, scrubber))
            }
            _ => Either::Left(body),
        };
        if let (Some(client_side), Some(upstream_side)) = (client_upgrade, upstream_upgrade) {
            match secrets {
                None => {
                    tokio::spawn(splice_upgrade(
                        client_side,
                        upstream_side,
                        rule_request.url.clone(),
                    ));
                }
                Some((secrets, policy)) => {
                    let scanner = UpgradeScanner::new(secrets.clone(), policy.clone(), websocket);
                    let shown = secrets.redact_request(&rule_request);
                    let log = self.log.clone();
                    let original_dst = ctx.original_dst;
                    tokio::spawn(async move {
                        if let Some(why) =
                            splice_scanned(client_side, upstream_side, scanner, &shown.url).await
                        {
                            let record = Record::for_request(
                                &shown,
                                &Decision::deny_with(DenyReason::SecretLeak, why),
                            )
                            .with_original_dst(original_dst);
                            log.record(record);
                        }
                    });
                }
            }
        }
        tracing::debug!(
            "allow {} {} → {}",
            rule_request.method,
            rule_request.url,
            parts.status
        );
        // Without --request-log there is nothing to write: the record (a timestamp, a dozen
        // strings) is not built at all on this, the hot path.
        let completion = self.log.is_enabled().then(|| {
            let mut record = Record::for_request(&rule_request, &Decision::ALLOW)
                .with_original_dst(ctx.original_dst);
            record.status = Some(parts.status.as_u16());
            Completion {
                log: self.log.clone(),
                record,
                started,
                head_bytes: head,
                body_sent: sent,
            }
        });
        Response::from_parts(parts, LoggedBody::new(body, completion).boxed())
    }

    fn too_large(
        &self,
        request: &RuleRequest,
        size: u64,
        max: u64,
        ctx: &ConnCtx,
        started: Instant,
    ) -> Response<ProxyBody> {
        let decision = Decision::deny_with(
            DenyReason::TxLimit,
            format!("{size} bytes > max_tx_bytes {max}"),
        );
        self.log_answered(request, &decision, 413, 0, ctx, started);
        reject::too_large(size, max)
    }

    fn upstream_failed(
        &self,
        request: &RuleRequest,
        error: &hyper_util::client::legacy::Error,
        ctx: &ConnCtx,
        started: Instant,
        max_tx_bytes: Option<u64>,
    ) -> Response<ProxyBody> {
        let as_dyn: &(dyn std::error::Error + 'static) = error;
        // --secret: the body was cut while streaming because it carried a secret.
        if let Some(cut) = find_source::<LeakCut>(as_dyn) {
            return self.deny(
                request,
                DenyReason::SecretLeak,
                Some(cut.0.clone()),
                ctx,
                started,
            );
        }
        if let Some(cut) = find_source::<TxLimitReached>(as_dyn)
            && let Some(max) = max_tx_bytes
        {
            tracing::info!("{} {}: {cut}", request.method, request.url);
            let decision = Decision::deny_with(DenyReason::TxLimit, cut.to_string());
            self.log_answered(request, &decision, 413, max, ctx, started);
            return reject::too_large(max.saturating_add(1), max);
        }
        match find_source::<ConnectError>(as_dyn) {
            Some(e @ ConnectError::PrivateAddress { .. }) => self.deny(
                request,
                DenyReason::PrivateAddress,
                Some(e.to_string()),
                ctx,
                started,
            ),
            Some(e @ ConnectError::Timeout { .. }) => {
                let response = reject::gateway_timeout(&request.url, &e.to_string());
                self.log_failure(request, response, ctx, started)
            }
            Some(e) => {
                let why = render_inline(e);
                tracing::info!("{} {}: {why}", request.method, request.url);
                let response = reject::bad_gateway(&request.url, &why);
                self.log_failure(request, response, ctx, started)
            }
            None => {
                let why = render_inline(as_dyn);
                tracing::info!("{} {}: {why}", request.method, request.url);
                let response = reject::bad_gateway(&request.url, &why);
                self.log_failure(request, response, ctx, started)
            }
        }
    }

    /// An allowed request whose upstream failed: logged as allowed, with the error status.
    fn log_failure(
        &self,
        request: &RuleRequest,
        response: Response<ProxyBody>,
        ctx: &ConnCtx,
        started: Instant,
    ) -> Response<ProxyBody> {
        let status = response.status().as_u16();
        self.log_answered(request, &Decision::ALLOW, status, 0, ctx, started);
        response
    }
}

/// Copies both ways between the client and the upstream once both agreed to switch protocols.
async fn splice_upgrade(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    url: String,
) {
    match tokio::try_join!(client, upstream) {
        Ok((client, upstream)) => {
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                tracing::debug!("upgraded connection for {url} ended: {e}");
            }
        }
        Err(e) => tracing::debug!("protocol upgrade for {url} failed: {e}"),
    }
}

/// Like [`splice_upgrade`], with everything the client sends scanned for secrets before it
/// is forwarded. Returns why the connection was cut, if it was.
async fn splice_scanned(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    mut scanner: UpgradeScanner,
    url: &str,
) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!("protocol upgrade for {url} failed: {e}");
            return None;
        }
    };
    let (mut client_read, mut client_write) = tokio::io::split(TokioIo::new(client));
    let (mut upstream_read, mut upstream_write) = tokio::io::split(TokioIo::new(upstream));
    let down = async {
        let _ = tokio::io::copy(&mut upstream_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut out = Vec::with_capacity(buf.len());
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = upstream_write.shutdown().await;
                    return None;
                }
                Ok(n) => n,
            };
            out.clear();
            if let Err(cut) = scanner.feed(&buf[..n], &mut out) {
                let why = match cut {
                    SecretCut::Leak(leak) => leak.to_string(),
                    SecretCut::Unscannable(why) => why,
                };
                tracing::warn!("upgraded connection to {url} cut: {why}");
                return Some(why);
            }
            if upstream_write.write_all(&out).await.is_err() {
                return None;
            }
        }
    };
    tokio::pin!(down);
    tokio::select! {
        cut = up => cut,
        () = &mut down => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(
        version: Version,
        uri: &str,
        host: Option<&str>,
        tls: Option<&str>,
        tunnel: Option<&str>,
        port: u16,
        explicit: bool,
    ) -> Result<Target, Refusal> {
        target(
            version,
            &uri.parse().unwrap(),
            host,
            tls,
            tunnel,
            port,
            explicit,
        )
    }

    #[test]
    fn transparent_http_uses_host_header_and_connection_port() {
        let got = t(
            Version::HTTP_11,
            "/a?b=1",
            Some("Name.Test:8080"),
            None,
            None,
            80,
            false,
        )
        .unwrap();
        assert_eq!(
            got,
            Target {
                scheme: Scheme::Http,
                host: "name.test".into(),
                port: 80,
                path_and_query: "/a?b=1".into()
            },
            "the port in the Host header must not change the upstream port"
        );
    }

    #[test]
    fn transparent_without_host_is_malformed() {
        assert!(matches!(
            t(Version::HTTP_11, "/", None, None, None, 80, false),
            Err(Refusal::Malformed(_))
        ));
    }

    #[test]
    fn absolute_form_is_explicit_and_refused_on_jail_listeners() {
        let got = t(
            Version::HTTP_11,
            "http://a.test:8080/x",
            Some("a.test:8080"),
            None,
            None,
            80,
            true,
        )
        .unwrap();
        assert_eq!(
            (got.host.as_str(), got.port, got.scheme),
            ("a.test", 8080, Scheme::Http)
        );
        assert_eq!(
            t(
                Version::HTTP_11,
                "http://a.test/x",
                None,
                None,
                None,
                80,
                false
            ),
            Err(Refusal::ExplicitProxy)
        );
    }

    #[test]
    fn intercepted_tls_requires_matching_host() {
        let ok = t(
            Version::HTTP_11,
            "/p",
            Some("API.test:443"),
            Some("api.test"),
            None,
            443,
            true,
        )
        .unwrap();
        assert_eq!(
            (ok.scheme, ok.host.as_str(), ok.port),
            (Scheme::Https, "api.test", 443)
        );
        let fronted = t(
            Version::HTTP_11,
            "/p",
            Some("evil.test"),
            Some("api.test"),
            None,
            443,
            true,
        );
        assert_eq!(
            fronted,
            Err(Refusal::Fronting {
                expected: "api.test".into(),
                named: "evil.test".into()
            })
        );
        let h2 = t(
            Version::HTTP_2,
            "https://evil.test/p",
            None,
            Some("api.test"),
            None,
            443,
            true,
        );
        assert!(matches!(h2, Err(Refusal::Fronting { .. })));
        let h2_ok = t(
            Version::HTTP_2,
            "https://api.test/p",
            None,
            Some("api.test"),
            None,
            443,
            true,
        )
        .unwrap();
        assert_eq!(h2_ok.path_and_query, "/p");
    }

    #[test]
    fn plain_http_in_a_tunnel_keeps_tunnel_host_and_port() {
        let ok = t(
            Version::HTTP_11,
            "/x",
            Some("a.test"),
            None,
            Some("a.test"),
            8080,
            true,
        )
        .unwrap();
        assert_eq!((ok.scheme, ok.port), (Scheme::Http, 8080));
        assert!(matches!(
            t(
                Version::HTTP_11,
                "/x",
                Some("b.test"),
                None,
                Some("a.test"),
                8080,
                true
            ),
            Err(Refusal::Fronting { .. })
        ));
        // No Host header at all: the tunnel target is the destination.
        assert!(
            t(
                Version::HTTP_11,
                "/x",
                None,
                None,
                Some("a.test"),
                8080,
                true
            )
            .is_ok()
        );
    }

    #[test]
    fn authority_omits_default_port_and_brackets_ipv6() {
        let r = RuleRequest::from_url("GET", "https://[::1]:8443/", RuleRequest::local_requester())
            .unwrap();
        assert_eq!(authority(&r), "[::1]:8443");
        let r = RuleRequest::from_url("GET", "https://a.test/", RuleRequest::local_requester())
            .unwrap();
        assert_eq!(authority(&r), "a.test");
    }
}
