//! The request a rule sees (SPEC section 2), built in exactly one place.
//!
//! Every entry point (proxy, `--test`, `replay`) builds a [`RuleRequest`] through
//! [`RuleRequest::new`] or [`RuleRequest::from_url`], so normalisation (lowercase host without
//! port or brackets, path without query, default ports) cannot differ between them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::Serialize;

/// `http` or `https`: the scheme of the request as the client meant it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }

    /// Parses a scheme, case-insensitively.
    pub fn parse(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("http") {
            Some(Self::Http)
        } else if s.eq_ignore_ascii_case("https") {
            Some(Self::Https)
        } else {
            None
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One HTTP request as every rule engine sees it.
///
/// Field names are a public interface: they are the JS properties, the `--proc` JSON keys and
/// (upper-cased, `HTTPJAIL_` prefixed) the `--sh` environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleRequest {
    /// The full URL: `scheme://host[:port]/path[?query]`, the port only when not the default.
    pub url: String,
    /// The method as the client sent it (methods are case-sensitive in HTTP).
    pub method: String,
    pub scheme: Scheme,
    /// Lowercase, without port, without IPv6 brackets, without a trailing dot.
    pub host: String,
    /// The path without the query; `/` when empty.
    pub path: String,
    pub port: u16,
    /// The address of the client that sent the request.
    pub requester_ip: IpAddr,
}

/// Why a URL or host could not become a [`RuleRequest`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("`{url}` is not an absolute URL (expected e.g. `https://example.com/path`)")]
    NotAbsolute { url: String },
    #[error("`{url}` has scheme `{scheme}`; only `http` and `https` are supported")]
    UnsupportedScheme { url: String, scheme: String },
    #[error("`{url}` is not a valid URL: {detail}")]
    InvalidUrl { url: String, detail: String },
    #[error("host `{host}` is not a valid host name or IP address")]
    InvalidHost { host: String },
    #[error("method `{method}` is not a valid HTTP method")]
    InvalidMethod { method: String },
    #[error("port 0 is not a valid destination port")]
    PortZero,
}

impl RuleRequest {
    /// Builds a request from its parts. `path_and_query` is what follows the authority in the
    /// URL (`/a/b?c=d`; empty means `/`). `host` may be in any case, with brackets around an
    /// IPv6 literal and a trailing dot; it must not carry a port.
    pub fn new(
        method: &str,
        scheme: Scheme,
        host: &str,
        port: u16,
        path_and_query: &str,
        requester_ip: IpAddr,
    ) -> Result<Self, RequestError> {
        if !is_valid_method(method) {
            return Err(RequestError::InvalidMethod {
                method: method.to_owned(),
            });
        }
        if port == 0 {
            return Err(RequestError::PortZero);
        }
        let host = normalize_host(host)?;
        let path_and_query = if path_and_query.is_empty() {
            "/"
        } else {
            path_and_query
        };
        let path = match path_and_query.find('?') {
            Some(i) => &path_and_query[..i],
            None => path_and_query,
        };
        let path = if path.is_empty() { "/" } else { path };
        // `*` (OPTIONS *) and other non-slash forms are kept verbatim after the authority.
        let mut url = String::with_capacity(host.len() + path_and_query.len() + 16);
        url.push_str(scheme.as_str());
        url.push_str("://");
        push_host_for_url(&mut url, &host);
        if port != scheme.default_port() {
            url.push(':');
            url.push_str(&port.to_string());
        }
        if !path_and_query.starts_with('/') {
            url.push('/');
        }
        url.push_str(path_and_query);
        Ok(Self {
            url,
            method: method.to_owned(),
            scheme,
            host,
            path: path.to_owned(),
            port,
            requester_ip,
        })
    }

    /// Parses an absolute `http`/`https` URL (as given to `--test` or found in a log).
    pub fn from_url(method: &str, url: &str, requester_ip: IpAddr) -> Result<Self, RequestError> {
        let (scheme_str, rest) =
            url.split_once("://")
                .ok_or_else(|| RequestError::NotAbsolute {
                    url: url.to_owned(),
                })?;
        let scheme = Scheme::parse(scheme_str).ok_or_else(|| RequestError::UnsupportedScheme {
            url: url.to_owned(),
            scheme: scheme_str.to_owned(),
        })?;
        // Fragments are never sent over HTTP; drop one if the user pasted it.
        let rest = rest.split('#').next().unwrap_or_default();
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path_and_query) = rest.split_at(split);
        if authority.contains('@') {
            return Err(RequestError::InvalidUrl {
                url: url.to_owned(),
                detail: "user information (`user@`) is not supported".to_owned(),
            });
        }
        let (host, port) =
            split_host_port(authority).map_err(|detail| RequestError::InvalidUrl {
                url: url.to_owned(),
                detail,
            })?;
        let port = port.unwrap_or(scheme.default_port());
        let path_and_query = if path_and_query.starts_with('?') {
            format!("/{path_and_query}")
        } else {
            path_and_query.to_owned()
        };
        if path_and_query
            .chars()
            .any(|c| c.is_ascii_whitespace() || c.is_ascii_control())
        {
            return Err(RequestError::InvalidUrl {
                url: url.to_owned(),
                detail: "the path contains whitespace or control characters".to_owned(),
            });
        }
        Self::new(method, scheme, host, port, &path_and_query, requester_ip)
    }

    /// The address used for `--test` and other requests that have no real client.
    pub fn local_requester() -> IpAddr {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }

    /// The query string without `?`, if any.
    pub fn query(&self) -> Option<&str> {
        let after_host = self.url.find("://").map_or(0, |i| i + 3);
        self.url[after_host..]
            .find('?')
            .map(|i| &self.url[after_host + i + 1..])
    }
}

/// Splits `host[:port]` / `[v6][:port]`. The host is returned as given (brackets kept off).
pub fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), String> {
    if authority.is_empty() {
        return Err("the host is empty".to_owned());
    }
    if let Some(rest) = authority.strip_prefix('[') {
        let end = rest
            .find(']')
            .ok_or_else(|| "an IPv6 address is missing its closing `]`".to_owned())?;
        let host = &rest[..end];
        let after = &rest[end + 1..];
        if after.is_empty() {
            return Ok((host, None));
        }
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| format!("unexpected `{after}` after the IPv6 address"))?;
        return parse_port(port).map(|p| (host, Some(p)));
    }
    match authority.rsplit_once(':') {
        Some((host, _)) if host.contains(':') => Err(format!(
            "`{authority}` looks like an IPv6 address; write it in brackets: `[{authority}]`"
        )),
        Some((host, port)) => parse_port(port).map(|p| (host, Some(p))),
        None => Ok((authority, None)),
    }
}

fn parse_port(port: &str) -> Result<u16, String> {
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{port}` is not a port number"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("`{port}` is not a port number between 1 and 65535")),
        Ok(p) => Ok(p),
    }
}

/// Lowercases a host, strips IPv6 brackets and one trailing dot, and checks its characters.
///
/// The trailing dot matters for security: `blocked.example.` and `blocked.example` are the same
/// name to DNS, so a deny-list rule must not be bypassed by adding the dot.
pub fn normalize_host(host: &str) -> Result<String, RequestError> {
    let invalid = || RequestError::InvalidHost {
        host: host.to_owned(),
    };
    let inner = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if inner.contains(':') {
        // Only an IPv6 literal may contain a colon; render it canonically.
        let ip: std::net::Ipv6Addr = inner
            .split('%')
            .next()
            .unwrap_or_default()
            .parse()
            .map_err(|_| invalid())?;
        return Ok(ip.to_string());
    }
    let name = inner.strip_suffix('.').unwrap_or(inner);
    if name.is_empty() || name.len() > 253 {
        return Err(invalid());
    }
    let valid_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
    if !name.bytes().all(valid_char) || name.starts_with('.') || name.contains("..") {
        return Err(invalid());
    }
    Ok(name.to_ascii_lowercase())
}

fn push_host_for_url(url: &mut String, host: &str) {
    if host.contains(':') {
        url.push('[');
        url.push_str(host);
        url.push(']');
    } else {
        url.push_str(host);
    }
}

/// An HTTP method token (RFC 9110 `tchar`s).
fn is_valid_method(method: &str) -> bool {
    !method.is_empty()
        && method.len() <= 32
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip() -> IpAddr {
        RuleRequest::local_requester()
    }

    #[test]
    fn url_fields_follow_the_spec_example() {
        let r = RuleRequest::from_url("GET", "https://api.github.com/repos?page=2", ip()).unwrap();
        assert_eq!(r.url, "https://api.github.com/repos?page=2");
        assert_eq!(r.method, "GET");
        assert_eq!(r.scheme, Scheme::Https);
        assert_eq!(r.host, "api.github.com");
        assert_eq!(r.path, "/repos");
        assert_eq!(r.port, 443);
        assert_eq!(r.query(), Some("page=2"));
    }

    #[test]
    fn host_is_lowercased_and_port_removed() {
        let r = RuleRequest::from_url("GET", "HTTP://Example.COM:8080/A/b", ip()).unwrap();
        assert_eq!(r.host, "example.com");
        assert_eq!(r.port, 8080);
        assert_eq!(r.url, "http://example.com:8080/A/b");
        assert_eq!(r.path, "/A/b", "paths are case-sensitive and kept");
    }

    #[test]
    fn default_ports_are_filled_in_and_not_repeated_in_url() {
        let http = RuleRequest::from_url("GET", "http://a.test", ip()).unwrap();
        assert_eq!(
            (http.port, http.path.as_str(), http.url.as_str()),
            (80, "/", "http://a.test/")
        );
        let https = RuleRequest::from_url("GET", "https://a.test:443/", ip()).unwrap();
        assert_eq!((https.port, https.url.as_str()), (443, "https://a.test/"));
        let cross = RuleRequest::from_url("GET", "http://a.test:443/", ip()).unwrap();
        assert_eq!(cross.url, "http://a.test:443/");
    }

    #[test]
    fn ipv6_literals_lose_brackets_in_host_but_keep_them_in_url() {
        let r = RuleRequest::from_url("GET", "http://[::1]:8080/x", ip()).unwrap();
        assert_eq!(r.host, "::1");
        assert_eq!(r.port, 8080);
        assert_eq!(r.url, "http://[::1]:8080/x");
        let canon = RuleRequest::from_url("GET", "https://[2001:DB8:0:0::1]/", ip()).unwrap();
        assert_eq!(canon.host, "2001:db8::1");
        assert_eq!(canon.url, "https://[2001:db8::1]/");
    }

    #[test]
    fn query_without_path_gets_a_slash() {
        let r = RuleRequest::from_url("GET", "https://a.test?x=1", ip()).unwrap();
        assert_eq!(r.path, "/");
        assert_eq!(r.url, "https://a.test/?x=1");
    }

    #[test]
    fn trailing_dot_is_removed_so_deny_lists_cannot_be_bypassed() {
        let r = RuleRequest::from_url("GET", "https://blocked.example./", ip()).unwrap();
        assert_eq!(r.host, "blocked.example");
        assert_eq!(r.url, "https://blocked.example/");
    }

    #[test]
    fn fragment_is_dropped() {
        let r = RuleRequest::from_url("GET", "https://a.test/p?q#frag", ip()).unwrap();
        assert_eq!(r.url, "https://a.test/p?q");
    }

    #[test]
    fn bad_urls_are_rejected_with_a_reason() {
        let cases = [
            "example.com/x",
            "ftp://example.com/",
            "http:///x",
            "http://exa mple.com/",
            "http://a.test:0/",
            "http://a.test:99999/",
            "http://a.test:/",
            "http://::1/",
            "http://[::1/",
            "http://user@a.test/",
            "http://a..test/",
            "http://a.test/a b",
        ];
        for url in cases {
            assert!(
                RuleRequest::from_url("GET", url, ip()).is_err(),
                "{url} should be rejected"
            );
        }
    }

    #[test]
    fn methods_must_be_tokens() {
        assert!(RuleRequest::from_url("GET X", "http://a.test/", ip()).is_err());
        assert!(RuleRequest::from_url("", "http://a.test/", ip()).is_err());
        let r = RuleRequest::from_url("PROPFIND", "http://a.test/", ip()).unwrap();
        assert_eq!(r.method, "PROPFIND");
    }

    #[test]
    fn new_builds_the_same_request_as_from_url() {
        let a = RuleRequest::new("POST", Scheme::Https, "[::1]", 8443, "/p?q=1", ip()).unwrap();
        let b = RuleRequest::from_url("POST", "https://[::1]:8443/p?q=1", ip()).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn serializes_with_public_field_names() {
        let r = RuleRequest::from_url("GET", "https://a.test/p", ip()).unwrap();
        let v = serde_json::to_value(&r).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "host",
                "method",
                "path",
                "port",
                "requester_ip",
                "scheme",
                "url"
            ]
        );
        assert_eq!(v["scheme"], "https");
        assert_eq!(v["requester_ip"], "127.0.0.1");
        assert_eq!(v["port"], 443);
    }
}
