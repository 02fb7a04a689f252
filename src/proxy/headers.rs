//! Header handling shared by both directions: hop-by-hop removal and the size of a request
//! head as the upstream receives it (for `max_tx_bytes`). Pure functions.

use http::header::{self, HeaderMap, HeaderName};

/// Headers that describe one connection, never forwarded (RFC 9110 section 7.6.1), plus the
/// proxy-only ones.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Whether the request or response asks to switch protocols (`Connection: upgrade` +
/// `Upgrade: …`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers, and every header the `Connection` header names. When
/// `keep_upgrade` is set (an allowed protocol switch), `Upgrade` and `Connection: upgrade`
/// are kept so the peer sees the request for what it is.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if keep_upgrade && name == header::UPGRADE {
            continue;
        }
        headers.remove(&name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(
            header::CONNECTION,
            header::HeaderValue::from_static("upgrade"),
        );
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Size in bytes of `METHOD SP target SP HTTP/1.1 CRLF`, every header line `name: value CRLF`,
/// a `host` line when `host` is given, and the final CRLF: what an HTTP/1.1 upstream receives
/// before the body.
pub fn head_size(method: &str, target: &str, headers: &HeaderMap, host: Option<&str>) -> u64 {
    let mut size = method.len() + 1 + target.len() + " HTTP/1.1\r\n".len();
    for (name, value) in headers {
        size += name.as_str().len() + 2 + value.len() + 2;
    }
    if let Some(host) = host {
        size += "host: ".len() + host.len() + 2;
    }
    (size + 2) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("proxy-authorization", "Basic abc"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("accept", "*/*"),
            ("authorization", "Bearer t"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        assert_eq!(names, ["accept", "authorization"]);
    }

    #[test]
    fn upgrade_is_kept_when_asked() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["sec-websocket-key"], "k");
    }

    #[test]
    fn upgrade_needs_both_headers() {
        assert!(!is_upgrade(&map(&[("upgrade", "websocket")])));
        assert!(!is_upgrade(&map(&[("connection", "upgrade")])));
        assert!(is_upgrade(&map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket")
        ])));
    }

    #[test]
    fn head_size_counts_the_serialized_head() {
        let h = map(&[("accept", "*/*"), ("content-length", "5")]);
        let expected =
            "POST /upload HTTP/1.1\r\naccept: */*\r\ncontent-length: 5\r\nhost: a.test\r\n\r\n";
        assert_eq!(
            head_size("POST", "/upload", &h, Some("a.test")),
            expected.len() as u64
        );
        assert_eq!(
            head_size("GET", "/", &HeaderMap::new(), None),
            "GET / HTTP/1.1\r\n\r\n".len() as u64
        );
    }
}
