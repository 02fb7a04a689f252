//! Unit tests of the leak policy, and fixtures shared by the submodules' tests.

use super::*;
use crate::rules::Scheme;
use http::HeaderValue;

/// A value with characters that need escaping in URLs.
pub(crate) const VALUE: &str = "s3cr3t/V4lue+with=chars-0123456789";

pub(crate) fn spec(var: &str, value: &str, hosts: &str) -> SecretSpec {
    SecretSpec {
        var: var.to_owned(),
        hosts: hosts
            .split(',')
            .map(|h| HostPattern::parse(h).unwrap())
            .collect(),
        value: Zeroizing::new(value.to_owned()),
    }
}

/// `TOKEN` (bound to api.example.test and *.files.test) and `OTHER` (bound to other.test).
pub(crate) fn secrets() -> Secrets {
    let specs = [
        spec("TOKEN", VALUE, "api.example.test,*.files.test"),
        spec("OTHER", "another-secret-value-42", "other.test"),
    ];
    let placeholders = specs
        .iter()
        .map(|s| placeholder::generate(&s.var).unwrap())
        .collect();
    Secrets::with_placeholders(&specs, placeholders).unwrap()
}

fn head(
    s: &Secrets,
    scheme: Scheme,
    host: &str,
    pq: &str,
    headers: &[(&str, &str)],
) -> Result<(), Leak> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let policy = s.policy(scheme, host);
    s.check_head(&policy, "GET", host, pq, &map)
}

#[test]
fn placeholders_go_to_bound_hosts_over_https_only() {
    let s = secrets();
    let ph = s.placeholder("TOKEN").unwrap().to_owned();
    let auth = format!("Bearer {ph}");
    let query = format!("/x?access_token={ph}");
    assert!(
        head(
            &s,
            Scheme::Https,
            "api.example.test",
            &query,
            &[("authorization", &auth)]
        )
        .is_ok()
    );
    assert!(
        head(
            &s,
            Scheme::Https,
            "raw.files.test",
            "/",
            &[("authorization", &auth)]
        )
        .is_ok()
    );
    let leak = head(
        &s,
        Scheme::Https,
        "evil.test",
        "/",
        &[("authorization", &auth)],
    )
    .unwrap_err();
    assert_eq!(
        (leak.var(), leak.place(), leak.is_value()),
        ("TOKEN", Place::HeaderValue, false)
    );
    let message = leak.to_string();
    assert!(
        message.contains("$TOKEN may only be sent to api.example.test, *.files.test"),
        "{message}"
    );
    let leak = head(&s, Scheme::Http, "api.example.test", &query, &[]).unwrap_err();
    assert!(leak.to_string().contains("only sent over https"), "{leak}");
    // Another secret's placeholder to this secret's host is a leak of the other one.
    let other = s.placeholder("OTHER").unwrap().to_owned();
    let leak = head(
        &s,
        Scheme::Https,
        "api.example.test",
        "/",
        &[("x-key", &other)],
    )
    .unwrap_err();
    assert_eq!(leak.var(), "OTHER");
}

#[test]
fn a_real_value_in_the_url_is_denied_even_to_its_host() {
    let s = secrets();
    let leak = head(
        &s,
        Scheme::Https,
        "api.example.test",
        &format!("/x?t={VALUE}"),
        &[],
    )
    .unwrap_err();
    assert!(leak.is_value());
    assert!(leak.to_string().contains("shown to the rule"), "{leak}");
    // In a header, the value may go to its host (a tool that read it from a file).
    assert!(
        head(
            &s,
            Scheme::Https,
            "api.example.test",
            "/",
            &[("authorization", &format!("token {VALUE}"))]
        )
        .is_ok()
    );
}

#[test]
fn secrets_in_host_names_and_header_names_are_caught_in_any_case() {
    let s = secrets();
    let ph = s.placeholder("TOKEN").unwrap().to_lowercase();
    let host = format!("{ph}.evil.test");
    let leak = head(&s, Scheme::Https, &host, "/", &[]).unwrap_err();
    assert_eq!(leak.place(), Place::Host);
    // Even a bound host may not carry one in its name.
    let host = format!("{ph}.files.test");
    assert_eq!(
        head(&s, Scheme::Https, &host, "/", &[])
            .unwrap_err()
            .place(),
        Place::Host
    );
    let hex_host = format!("{}.evil.test", hex::encode("another-secret-value-42"));
    assert!(head(&s, Scheme::Https, &hex_host, "/", &[]).is_err());
    let leak = head(&s, Scheme::Https, "evil.test", "/", &[(&ph, "1")]).unwrap_err();
    assert_eq!(leak.place(), Place::HeaderName);
}

#[test]
fn the_method_is_part_of_the_request_line() {
    let s = secrets();
    let policy = s.policy(Scheme::Https, "evil.test");
    let leak = s
        .check_head(
            &policy,
            "another-secret-value-42",
            "evil.test",
            "/",
            &HeaderMap::new(),
        )
        .unwrap_err();
    assert_eq!(leak.place(), Place::RequestLine);
}

#[test]
fn debug_never_shows_values_or_placeholders() {
    let s = secrets();
    let text = format!("{s:?}");
    assert!(!text.contains(VALUE));
    assert!(!text.contains(s.placeholder("TOKEN").unwrap()));
    assert!(text.contains("TOKEN"));
}

#[test]
fn control_characters_in_a_value_are_a_start_up_error() {
    let specs = [spec("BAD", "line\nbreak-in-the-value", "a.test")];
    let e = Secrets::with_placeholders(&specs, vec!["p".repeat(40)]).unwrap_err();
    assert!(e.to_string().contains("--secret BAD"), "{e}");
}
