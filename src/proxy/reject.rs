//! The only place that chooses an error status and writes an error body (SPEC section 5).

use http::{HeaderValue, Response, StatusCode, header};

use super::body::{ProxyBody, full};
use crate::rules::DenyReason;

/// Name of the header that carries the deny reason code.
pub const REASON_HEADER: &str = "x-httpjail-reason";

/// The answer to a denied request: `httpjail: Blocked METHOD URL`, then the rule's message on
/// the next line. Status from [`DenyReason::status`] (403, 421, 508…).
pub fn denied(
    method: &str,
    url: &str,
    reason: DenyReason,
    message: Option<&str>,
) -> Response<ProxyBody> {
    let mut body = format!("httpjail: Blocked {method} {url}\n");
    if let Some(message) = message.filter(|m| !m.is_empty()) {
        body.push_str(message);
        body.push('\n');
    }
    text(status(reason.status()), body, Some(reason))
}

/// 413 when the declared size exceeds `max_tx_bytes`; the upstream is never contacted.
pub fn too_large(size: u64, max: u64) -> Response<ProxyBody> {
    text(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("Request body size ({size} bytes) exceeds maximum allowed ({max} bytes)"),
        Some(DenyReason::TxLimit),
    )
}

/// 400: the request could not be understood.
pub fn bad_request(why: &str) -> Response<ProxyBody> {
    text(
        StatusCode::BAD_REQUEST,
        format!("httpjail: bad request: {why}\n"),
        Some(DenyReason::MalformedRequest),
    )
}

/// 502: the upstream could not be reached or broke the exchange.
pub fn bad_gateway(url: &str, why: &str) -> Response<ProxyBody> {
    text(
        StatusCode::BAD_GATEWAY,
        format!("httpjail: upstream error for {url}: {why}\n"),
        None,
    )
}

/// 504: the upstream did not answer in time.
pub fn gateway_timeout(url: &str, why: &str) -> Response<ProxyBody> {
    text(
        StatusCode::GATEWAY_TIMEOUT,
        format!("httpjail: upstream timed out for {url}: {why}\n"),
        None,
    )
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::FORBIDDEN)
}

fn text(status: StatusCode, body: String, reason: Option<DenyReason>) -> Response<ProxyBody> {
    let len = body.len();
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(reason) = reason {
        headers.insert(REASON_HEADER, HeaderValue::from_static(reason.as_str()));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_text(r: Response<ProxyBody>) -> String {
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn denied_body_and_headers_follow_the_spec() {
        let r = denied(
            "GET",
            "https://x.test/a",
            DenyReason::Rule,
            Some("not on the list"),
        );
        assert_eq!(r.status(), 403);
        assert_eq!(r.headers()[REASON_HEADER], "rule");
        assert!(
            r.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        assert_eq!(
            body_text(r).await,
            "httpjail: Blocked GET https://x.test/a\nnot on the list\n"
        );
        let r = denied("POST", "http://x.test/", DenyReason::NoRule, None);
        assert_eq!(
            body_text(r).await,
            "httpjail: Blocked POST http://x.test/\n"
        );
    }

    #[tokio::test]
    async fn too_large_has_the_exact_message() {
        let r = too_large(5000, 1024);
        assert_eq!(r.status(), 413);
        assert_eq!(r.headers()[REASON_HEADER], "tx_limit");
        assert_eq!(
            body_text(r).await,
            "Request body size (5000 bytes) exceeds maximum allowed (1024 bytes)"
        );
    }

    #[test]
    fn statuses_per_reason() {
        assert_eq!(
            denied("GET", "u", DenyReason::DomainFronting, None).status(),
            421
        );
        assert_eq!(
            denied("GET", "u", DenyReason::SecretLeak, None).status(),
            403
        );
        assert_eq!(
            denied("GET", "u", DenyReason::LoopDetected, None).status(),
            508
        );
        assert_eq!(bad_request("x").status(), 400);
        assert_eq!(bad_gateway("u", "x").status(), 502);
        assert_eq!(gateway_timeout("u", "x").status(), 504);
    }
}
