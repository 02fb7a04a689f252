//! Scanning what the client sends after a protocol upgrade (WebSocket and others).
//!
//! After `101 Switching Protocols` the connection is no longer HTTP: request bodies end, but
//! the client can keep sending. Without this, an allowed WebSocket host would be a channel
//! around leak blocking. Client-to-server WebSocket frames are masked (XOR with a per-frame
//! key), so raw bytes hide the payload: frames are parsed, their payload unmasked and scanned,
//! and only then forwarded unchanged. Compression is ruled out by removing
//! `Sec-WebSocket-Extensions` from the upgrade request (see [`strip_extensions`]), so a
//! server never agrees to `permessage-deflate`. Other upgraded protocols are scanned as a raw
//! byte stream.
//!
//! Limits (documented): the server-to-client direction is not filtered (as for responses), and
//! a value split across frames is only caught if the parts are scanned in order (the scanner
//! keeps context across frames, as it does across body chunks).

use std::ops::ControlFlow;
use std::sync::Arc;

use http::HeaderMap;

use super::scan::{Hit, StreamScanner};
use super::{Leak, Place, Policy, Secrets};

/// A frame larger than this cannot be scanned before it is forwarded without holding that
/// much memory; the connection is closed instead (fail closed).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Why the upgraded stream was cut.
#[derive(Debug)]
pub enum Cut {
    Leak(Leak),
    /// A WebSocket frame too large to scan, or not a valid frame.
    Unscannable(String),
}

/// The client side of one upgraded connection.
pub struct UpgradeScanner {
    secrets: Arc<Secrets>,
    policy: Policy,
    scanner: StreamScanner,
    /// `Some` for WebSocket: bytes of a frame not complete yet.
    websocket: Option<Vec<u8>>,
}

impl std::fmt::Debug for UpgradeScanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpgradeScanner")
            .field("websocket", &self.websocket.is_some())
            .finish_non_exhaustive()
    }
}

/// Whether the upgrade request asks for WebSocket.
pub fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
        })
}

/// Removes WebSocket extensions from an upgrade request: a compressed payload could not be
/// scanned. Every extension is optional; the server then speaks plain frames.
pub fn strip_extensions(headers: &mut HeaderMap) {
    headers.remove("sec-websocket-extensions");
}

impl UpgradeScanner {
    pub fn new(secrets: Arc<Secrets>, policy: Policy, websocket: bool) -> Self {
        Self {
            secrets,
            policy,
            scanner: StreamScanner::new(),
            websocket: websocket.then(Vec::new),
        }
    }

    /// Takes the next bytes the client sent; appends to `out` what may go upstream now.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Cut> {
        let Some(pending) = self.websocket.as_mut() else {
            scan(&self.secrets, &self.policy, &mut self.scanner, input)?;
            out.extend_from_slice(input);
            return Ok(());
        };
        pending.extend_from_slice(input);
        loop {
            let frame = match parse_frame(pending) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(why) => return Err(Cut::Unscannable(why)),
            };
            let mut payload = pending[frame.payload_start..frame.end].to_vec();
            if let Some(key) = frame.mask {
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= key[i % 4];
                }
            }
            scan(&self.secrets, &self.policy, &mut self.scanner, &payload)?;
            out.extend_from_slice(&pending[..frame.end]);
            pending.drain(..frame.end);
        }
    }
}

fn scan(
    secrets: &Secrets,
    policy: &Policy,
    scanner: &mut StreamScanner,
    data: &[u8],
) -> Result<(), Cut> {
    let mut verdict = |hit: Hit| {
        if policy.permits(hit, Place::Body) {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(hit)
        }
    };
    match scanner.feed(secrets.matcher(), data, &mut verdict) {
        ControlFlow::Break(hit) => Err(Cut::Leak(secrets.leak(hit, Place::Body, policy))),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// Where a complete frame lies in the buffer.
#[derive(Debug, PartialEq, Eq)]
struct Frame {
    payload_start: usize,
    end: usize,
    mask: Option<[u8; 4]>,
}

/// Parses the frame at the start of `buf` (RFC 6455 section 5.2); `None` until it is complete.
fn parse_frame(buf: &[u8]) -> Result<Option<Frame>, String> {
    let [_, second, ..] = buf else {
        return Ok(None);
    };
    let masked = second & 0x80 != 0;
    let (len, mut at) = match second & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (usize::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let len = u64::from_be_bytes(b.try_into().map_err(|_| "frame length")?);
                (usize::try_from(len).unwrap_or(usize::MAX), 10)
            }
            None => return Ok(None),
        },
        n => (usize::from(n), 2),
    };
    if len > MAX_FRAME {
        return Err(format!(
            "a WebSocket frame of {len} bytes is too large to scan for secrets"
        ));
    }
    let mask = if masked {
        let Some(key) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some([key[0], key[1], key[2], key[3]])
    } else {
        None
    };
    let end = at + len;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some(Frame {
        payload_start: at,
        end,
        mask,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HostPattern, SecretSpec};
    use crate::rules::Scheme;
    use zeroize::Zeroizing;

    const VALUE: &str = "ghp_UpgradeSecretValue0123456789";

    fn secrets() -> Arc<Secrets> {
        let specs = [SecretSpec {
            var: "TOKEN".into(),
            hosts: vec![HostPattern::parse("api.test").unwrap()],
            value: Zeroizing::new(VALUE.into()),
        }];
        Secrets::from_config(&specs).unwrap().unwrap()
    }

    /// A masked client frame.
    fn frame(opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        out
    }

    fn scanner_for(host: &str, websocket: bool) -> UpgradeScanner {
        let s = secrets();
        let policy = s.policy(Scheme::Https, host);
        UpgradeScanner::new(s, policy, websocket)
    }

    #[test]
    fn clean_frames_pass_unchanged_even_when_split_anywhere() {
        let data = [
            frame(1, b"hello", [1, 2, 3, 4]),
            frame(2, &vec![7u8; 70_000], [9, 8, 7, 6]),
        ]
        .concat();
        for split in [1, 2, 5, 6, 100, data.len() - 1] {
            let mut sc = scanner_for("evil.test", true);
            let mut out = Vec::new();
            sc.feed(&data[..split], &mut out).unwrap();
            sc.feed(&data[split..], &mut out).unwrap();
            assert_eq!(out, data, "split at {split}");
        }
    }

    #[test]
    fn a_masked_secret_is_caught_before_its_frame_is_forwarded() {
        let s = secrets();
        let placeholder = s.placeholder("TOKEN").unwrap().to_owned();
        for (what, payload) in [("value", VALUE.to_owned()), ("placeholder", placeholder)] {
            let policy = s.policy(Scheme::Https, "evil.test");
            let mut sc = UpgradeScanner::new(s.clone(), policy, true);
            let mut out = Vec::new();
            sc.feed(&frame(1, b"first", [5, 5, 5, 5]), &mut out)
                .unwrap();
            let forwarded = out.len();
            let leak = sc.feed(
                &frame(1, format!("x {payload} y").as_bytes(), [1, 2, 3, 4]),
                &mut out,
            );
            assert!(matches!(leak, Err(Cut::Leak(_))), "{what}");
            assert_eq!(
                out.len(),
                forwarded,
                "{what}: nothing of the leaking frame may be forwarded"
            );
        }
    }

    #[test]
    fn the_bound_host_may_receive_its_secret() {
        let mut sc = scanner_for("api.test", true);
        let mut out = Vec::new();
        sc.feed(&frame(1, VALUE.as_bytes(), [1, 2, 3, 4]), &mut out)
            .unwrap();
        assert!(!out.is_empty());
    }

    #[test]
    fn raw_upgrades_are_scanned_as_a_stream() {
        let mut sc = scanner_for("evil.test", false);
        let mut out = Vec::new();
        let (a, b) = VALUE.split_at(10);
        sc.feed(format!("abc {a}").as_bytes(), &mut out).unwrap();
        assert!(matches!(
            sc.feed(format!("{b} def").as_bytes(), &mut out),
            Err(Cut::Leak(_))
        ));
    }

    #[test]
    fn oversized_frames_are_refused() {
        let mut head = vec![0x82, 0x80 | 127];
        head.extend_from_slice(&((MAX_FRAME as u64) + 1).to_be_bytes());
        let mut sc = scanner_for("evil.test", true);
        assert!(matches!(
            sc.feed(&head, &mut Vec::new()),
            Err(Cut::Unscannable(_))
        ));
    }

    #[test]
    fn extensions_are_removed_and_websocket_is_recognised() {
        let mut h = HeaderMap::new();
        h.insert("upgrade", "WebSocket".parse().unwrap());
        h.insert(
            "sec-websocket-extensions",
            "permessage-deflate".parse().unwrap(),
        );
        assert!(is_websocket(&h));
        strip_extensions(&mut h);
        assert!(!h.contains_key("sec-websocket-extensions"));
    }
}
