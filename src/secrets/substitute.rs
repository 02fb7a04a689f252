//! Putting the real values in: placeholders are replaced in the URL, the header values and the
//! body of allowed https requests to a secret's hosts ([`Policy::substitutes`]).
//!
//! The value is written the way the surrounding text expects it, so that the server reads back
//! exactly the value: percent-encoded in the URL and in form bodies, JSON-escaped in JSON
//! bodies, raw elsewhere. In `Authorization: Basic`, the credentials are decoded, substituted
//! and encoded again (git and other credential helpers send the token there).
//!
//! Runs after the rule: the rule and the request log see the placeholder, never the value.
//! Nothing here logs or formats a substituted string.

use std::borrow::Cow;

use base64::Engine as _;
use http::{HeaderMap, HeaderValue, header};
use memchr::memmem;

use super::placeholder::PREFIX;
use super::{Policy, Secrets};

/// How the value is written where a placeholder was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Raw,
    /// Every byte outside the URL-unreserved set as `%XX`.
    Percent,
    /// Escaped for the inside of a JSON string.
    Json,
}

impl Form {
    /// The form for a request body of this `Content-Type`.
    pub fn for_content_type(content_type: Option<&str>) -> Self {
        let Some(ct) = content_type else {
            return Self::Raw;
        };
        let essence = ct
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if essence == "application/x-www-form-urlencoded" {
            Self::Percent
        } else if essence == "application/json" || essence.ends_with("+json") {
            Self::Json
        } else {
            Self::Raw
        }
    }

    fn write(self, value: &str, out: &mut Vec<u8>) {
        match self {
            Self::Raw => out.extend_from_slice(value.as_bytes()),
            Self::Percent => {
                for &b in value.as_bytes() {
                    if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                        out.push(b);
                    } else {
                        out.extend_from_slice(format!("%{b:02X}").as_bytes());
                    }
                }
            }
            Self::Json => {
                // serde_json writes a quoted, escaped string; keep what is between the quotes.
                let quoted = serde_json::Value::String(value.to_owned()).to_string();
                let inner = quoted
                    .strip_prefix('"')
                    .and_then(|s| s.strip_suffix('"'))
                    .unwrap_or(value);
                out.extend_from_slice(inner.as_bytes());
            }
        }
    }
}

impl Secrets {
    /// `data` with the placeholder of every secret `policy` binds replaced by its value in
    /// `form`; `None` when there is nothing to replace.
    pub fn substitute_bytes(&self, policy: &Policy, data: &[u8], form: Form) -> Option<Vec<u8>> {
        if !policy.substitutes() || memmem::find(data, PREFIX.as_bytes()).is_none() {
            return None;
        }
        let mut current: Option<Vec<u8>> = None;
        for (i, entry) in self.entries.iter().enumerate() {
            if !policy.is_bound(i) {
                continue;
            }
            let haystack = current.as_deref().unwrap_or(data);
            let finder = memmem::Finder::new(entry.placeholder.as_bytes());
            let mut positions = finder.find_iter(haystack).peekable();
            if positions.peek().is_none() {
                continue;
            }
            let mut out = Vec::with_capacity(haystack.len() + entry.value.len());
            let mut last = 0;
            for at in positions {
                out.extend_from_slice(&haystack[last..at]);
                form.write(&entry.value, &mut out);
                last = at + entry.placeholder.len();
            }
            out.extend_from_slice(&haystack[last..]);
            current = Some(out);
        }
        current
    }

    /// The URL with placeholders replaced by percent-encoded values (the host cannot hold
    /// one: [`Secrets::check_head`] denies that).
    pub fn substitute_url<'a>(&self, policy: &Policy, url: &'a str) -> Cow<'a, str> {
        match self.substitute_bytes(policy, url.as_bytes(), Form::Percent) {
            // Percent-encoding keeps it ASCII; a failed conversion keeps the placeholder.
            Some(bytes) => String::from_utf8(bytes).map_or(Cow::Borrowed(url), Cow::Owned),
            None => Cow::Borrowed(url),
        }
    }

    /// Replaces placeholders in every header value, and inside `Authorization: Basic`
    /// credentials.
    pub fn substitute_headers(&self, policy: &Policy, headers: &mut HeaderMap) {
        if !policy.substitutes() {
            return;
        }
        for (name, value) in headers.iter_mut() {
            let replaced = if name == header::AUTHORIZATION {
                self.substitute_basic(policy, value.as_bytes())
            } else {
                None
            }
            .or_else(|| self.substitute_bytes(policy, value.as_bytes(), Form::Raw));
            let Some(bytes) = replaced else {
                continue;
            };
            match HeaderValue::from_bytes(&bytes) {
                Ok(mut new) => {
                    new.set_sensitive(true);
                    *value = new;
                }
                // Values with control characters are refused at start-up; keep the
                // placeholder (harmless) rather than fail the request.
                Err(_) => tracing::warn!("--secret: could not substitute a header of the request"),
            }
        }
    }

    /// `Basic base64(user:password)` with placeholders replaced inside the credentials.
    fn substitute_basic(&self, policy: &Policy, value: &[u8]) -> Option<Vec<u8>> {
        let (scheme, rest) = value.split_at_checked(6)?;
        if !scheme.eq_ignore_ascii_case(b"basic ") {
            return None;
        }
        let engine = base64::engine::general_purpose::STANDARD;
        let decoded = zeroize::Zeroizing::new(engine.decode(rest.trim_ascii()).ok()?);
        let substituted =
            zeroize::Zeroizing::new(self.substitute_bytes(policy, &decoded, Form::Raw)?);
        let mut out = b"Basic ".to_vec();
        out.extend_from_slice(engine.encode(&*substituted).as_bytes());
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Scheme;
    use crate::secrets::tests::{VALUE, secrets};

    #[test]
    fn forms_follow_the_content_type() {
        assert_eq!(Form::for_content_type(None), Form::Raw);
        assert_eq!(
            Form::for_content_type(Some("application/json; charset=utf-8")),
            Form::Json
        );
        assert_eq!(
            Form::for_content_type(Some("application/vnd.api+json")),
            Form::Json
        );
        assert_eq!(
            Form::for_content_type(Some("Application/X-WWW-Form-Urlencoded")),
            Form::Percent
        );
        assert_eq!(Form::for_content_type(Some("text/plain")), Form::Raw);
        let mut out = Vec::new();
        Form::Percent.write("a b/+=~", &mut out);
        assert_eq!(out, b"a%20b%2F%2B%3D~");
        let mut out = Vec::new();
        Form::Json.write("q\"\\x", &mut out);
        assert_eq!(out, br#"q\"\\x"#);
    }

    #[test]
    fn only_bound_https_requests_are_substituted() {
        let s = secrets();
        let ph = s.placeholder("TOKEN").unwrap().to_owned();
        let url = format!("https://api.example.test/x?t={ph}&u={ph}");
        let bound = s.policy(Scheme::Https, "api.example.test");
        let got = s.substitute_url(&bound, &url);
        let encoded: String = {
            let mut v = Vec::new();
            Form::Percent.write(VALUE, &mut v);
            String::from_utf8(v).unwrap()
        };
        assert_eq!(
            got,
            format!("https://api.example.test/x?t={encoded}&u={encoded}")
        );
        for policy in [
            s.policy(Scheme::Http, "api.example.test"),
            s.policy(Scheme::Https, "other.test"),
        ] {
            assert!(matches!(s.substitute_url(&policy, &url), Cow::Borrowed(_)));
        }
    }

    #[test]
    fn headers_and_basic_credentials_are_substituted() {
        let s = secrets();
        let ph = s.placeholder("TOKEN").unwrap().to_owned();
        let engine = base64::engine::general_purpose::STANDARD;
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!(
                "Basic {}",
                engine.encode(format!("x-access-token:{ph}"))
            ))
            .unwrap(),
        );
        headers.insert("x-api-key", HeaderValue::from_str(&ph).unwrap());
        headers.insert("accept", HeaderValue::from_static("*/*"));
        s.substitute_headers(&s.policy(Scheme::Https, "api.example.test"), &mut headers);
        let basic = headers[header::AUTHORIZATION].to_str().unwrap();
        let creds = engine
            .decode(basic.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(creds, format!("x-access-token:{VALUE}").as_bytes());
        assert_eq!(headers["x-api-key"], VALUE);
        assert!(headers["x-api-key"].is_sensitive());
        assert_eq!(headers["accept"], "*/*");
    }
}
