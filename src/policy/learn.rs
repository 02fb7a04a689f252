//! `httpjail learn`: from the requests a log shows to a [`Policy`] that allows exactly those,
//! generalised.
//!
//! Only allowed requests are learned. Denied ones (by the rule or by the proxy) are not: the
//! recorded run did without them, and learning them would turn a refusal into a permission.
//! They are counted and listed (grouped) in the rule's header for the reviewer.
//!
//! One [`Site`] per scheme, host and port, with the methods seen there, the path prefixes of
//! [`generalize`] and, when a request with a body was seen there (any
//! method but `GET`, `HEAD`, `OPTIONS`, `TRACE`, `DELETE`), a `max_tx_bytes` bound for every
//! request to that site: the largest `bytes_up` of any learned request to it (uploads are
//! normally the largest), plus a margin, rounded up ([`bound_for`]). The bound is never below
//! what was seen, so the recorded run replays without a flip.
//!
//! [`Policy::decide`] is the Rust twin of the generated JS (`super::render`): tests check that
//! both agree. This module is pure (no I/O, no clock).

use std::collections::{BTreeMap, BTreeSet};

use super::generalize::{self, PrefixSet};
use super::records::{Entry, Logged, Recorded, SkipKind};
use crate::rules::{Decision, DenyReason, RuleRequest, Scheme};

/// Prefixes kept per site before merging (see [`PrefixSet::limit`]).
pub const MAX_PREFIXES_PER_SITE: usize = 16;

/// Methods taken to carry no request body; any other method is an upload.
const BODILESS_METHODS: [&str; 5] = ["GET", "HEAD", "OPTIONS", "TRACE", "DELETE"];

/// The learned rule, ready to render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Sorted by host, then scheme, then port.
    pub sites: Vec<Site>,
    pub stats: Stats,
    /// Denied requests, grouped, sorted: `(what, count)`.
    pub denied: Vec<(String, usize)>,
    /// Earliest and latest `time` of the learned records.
    pub first_time: Option<String>,
    pub last_time: Option<String>,
}

/// One scheme + host + port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    /// Sorted.
    pub methods: Vec<String>,
    /// Sorted; empty only if nothing was learned (never for a site that exists).
    pub prefixes: Vec<generalize::Prefix>,
    /// Set when a request with a body was seen.
    pub max_tx_bytes: Option<u64>,
    /// The largest `bytes_up` seen for this site.
    pub largest_request: u64,
    /// Learned requests to this site.
    pub requests: usize,
    /// How many prefixes there were before merging, when there were too many.
    pub merged_from: Option<usize>,
}

/// Counts for the header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Non-blank lines.
    pub lines: usize,
    pub learned: usize,
    pub denied: usize,
    /// Unparsed traffic (`method` `-`).
    pub unparsed: usize,
    /// Malformed or inconsistent lines.
    pub bad_lines: usize,
}

/// Collects entries; [`Learner::finish`] makes the policy.
#[derive(Debug, Default)]
pub struct Learner {
    sites: BTreeMap<SiteKey, SiteData>,
    denied: BTreeMap<String, usize>,
    stats: Stats,
    first_time: Option<String>,
    last_time: Option<String>,
}

/// Sorts sites by host, then scheme (`http` before `https`), then port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SiteKey {
    host: String,
    https: bool,
    port: u16,
}

#[derive(Debug, Default)]
struct SiteData {
    methods: BTreeSet<String>,
    prefixes: PrefixSet,
    uploads: bool,
    largest: u64,
    requests: usize,
}

impl Learner {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, entry: Entry) {
        match entry {
            Entry::Blank => {}
            Entry::Skipped(skipped) => {
                self.stats.lines += 1;
                match skipped.kind {
                    SkipKind::Unparsed => {
                        self.stats.unparsed += 1;
                        self.stats.denied += 1;
                        *self
                            .denied
                            .entry("unparsed traffic (method -)".to_owned())
                            .or_default() += 1;
                    }
                    SkipKind::Malformed | SkipKind::Inconsistent => self.stats.bad_lines += 1,
                }
            }
            Entry::Request(logged) => {
                self.stats.lines += 1;
                self.add_request(*logged);
            }
        }
    }

    fn add_request(&mut self, logged: Logged) {
        let Logged {
            record,
            request,
            recorded,
            ..
        } = logged;
        let reason = match recorded {
            Recorded::Allowed => None,
            Recorded::DeniedByRule(r) | Recorded::DeniedByProxy(r) => Some(r),
        };
        if let Some(reason) = reason {
            self.stats.denied += 1;
            *self
                .denied
                .entry(format!(
                    "{} {} ({reason})",
                    request.method,
                    origin(request.scheme, &request.host, request.port)
                ))
                .or_default() += 1;
            return;
        }
        self.stats.learned += 1;
        if self.first_time.as_ref().is_none_or(|t| record.time < *t) {
            self.first_time = Some(record.time.clone());
        }
        if self.last_time.as_ref().is_none_or(|t| record.time > *t) {
            self.last_time = Some(record.time.clone());
        }
        let site = self
            .sites
            .entry(SiteKey {
                host: request.host.clone(),
                https: request.scheme == Scheme::Https,
                port: request.port,
            })
            .or_default();
        site.requests += 1;
        site.prefixes.insert(generalize::pattern(&request.path));
        site.uploads |= !BODILESS_METHODS.contains(&request.method.as_str());
        site.largest = site.largest.max(record.bytes_up);
        site.methods.insert(request.method);
    }

    pub fn finish(self) -> Policy {
        let sites = self
            .sites
            .into_iter()
            .map(|(key, mut data)| {
                let before = data.prefixes.len();
                data.prefixes.limit(MAX_PREFIXES_PER_SITE);
                let merged_from = (data.prefixes.len() < before).then_some(before);
                Site {
                    scheme: if key.https {
                        Scheme::Https
                    } else {
                        Scheme::Http
                    },
                    host: key.host,
                    port: key.port,
                    methods: data.methods.into_iter().collect(),
                    prefixes: data.prefixes.prefixes(),
                    max_tx_bytes: data.uploads.then(|| bound_for(data.largest)),
                    largest_request: data.largest,
                    requests: data.requests,
                    merged_from,
                }
            })
            .collect();
        Policy {
            sites,
            stats: self.stats,
            denied: self.denied.into_iter().collect(),
            first_time: self.first_time,
            last_time: self.last_time,
        }
    }
}

/// `scheme://host[:port]`, the port only when not the scheme's default.
pub fn origin(scheme: Scheme, host: &str, port: u16) -> String {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    if port == scheme.default_port() {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}:{port}")
    }
}

/// The `max_tx_bytes` for a site whose largest request was `largest` bytes: a quarter more
/// (at least 1 KiB more: headers vary between runs), rounded up to two significant digits
/// (`5000` → `6300`). Never below `largest`. Two significant digits times a power of ten is
/// exact as a JS number in the whole `u64` range.
pub fn bound_for(largest: u64) -> u64 {
    let target = largest.saturating_add((largest / 4).max(1024));
    let mut unit: u64 = 1;
    while target / unit >= 100 {
        unit *= 10;
    }
    target.div_ceil(unit).saturating_mul(unit)
}

impl Policy {
    /// What the generated rule answers for `request` (the Rust twin of the JS).
    pub fn decide(&self, request: &RuleRequest) -> Decision {
        let site = self.sites.iter().find(|s| {
            s.host == request.host && s.scheme == request.scheme && s.port == request.port
        });
        match site {
            Some(site)
                if site.methods.contains(&request.method)
                    && site
                        .prefixes
                        .iter()
                        .any(|p| generalize::prefix_matches(p, &request.path)) =>
            {
                Decision::Allow {
                    max_tx_bytes: site.max_tx_bytes,
                }
            }
            _ => Decision::deny(DenyReason::Rule),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::generalize::Segment;
    use crate::policy::records::{Line, parse_line};
    use crate::request_log::Record;

    pub(crate) fn record(method: &str, url: &str, bytes_up: u64) -> Record {
        let request = RuleRequest::from_url(method, url, RuleRequest::local_requester()).unwrap();
        let mut r = Record::for_request(&request, &Decision::ALLOW);
        r.bytes_up = bytes_up;
        r
    }

    pub(crate) fn learn(records: &[Record]) -> Policy {
        let mut learner = Learner::new();
        for (i, r) in records.iter().enumerate() {
            learner.add(parse_line(i + 1, Line::Text(&r.json_line())));
        }
        learner.finish()
    }

    fn lit(s: &str) -> Segment {
        Segment::Literal(s.to_owned())
    }

    #[test]
    fn ids_collapse_and_methods_are_per_host() {
        let p = learn(&[
            record("GET", "https://api.test/users/123/repos", 200),
            record("GET", "https://api.test/users/456/repos", 210),
            record("HEAD", "https://api.test/users/789/repos", 190),
        ]);
        assert_eq!(p.sites.len(), 1);
        let s = &p.sites[0];
        assert_eq!(s.methods, ["GET", "HEAD"]);
        assert_eq!(
            s.prefixes,
            vec![vec![lit("users"), Segment::Int, lit("repos")]]
        );
        assert_eq!(s.max_tx_bytes, None, "GET/HEAD only: no bound");
        assert_eq!(s.requests, 3);
    }

    #[test]
    fn hosts_ports_and_schemes_stay_apart() {
        let p = learn(&[
            record("GET", "https://a.test/same", 100),
            record("GET", "https://b.test/same", 100),
            record("POST", "http://b.test:8080/same", 100),
        ]);
        let keys: Vec<String> = p
            .sites
            .iter()
            .map(|s| origin(s.scheme, &s.host, s.port))
            .collect();
        assert_eq!(
            keys,
            ["https://a.test", "http://b.test:8080", "https://b.test"]
        );
        let req =
            |m: &str, u: &str| RuleRequest::from_url(m, u, RuleRequest::local_requester()).unwrap();
        assert!(p.decide(&req("GET", "https://a.test/same")).is_allow());
        assert!(!p.decide(&req("POST", "https://a.test/same")).is_allow());
        assert!(!p.decide(&req("GET", "http://a.test/same")).is_allow());
        assert!(!p.decide(&req("GET", "https://a.test:8443/same")).is_allow());
        assert!(!p.decide(&req("GET", "https://c.test/same")).is_allow());
        assert!(!p.decide(&req("GET", "https://a.test/other")).is_allow());
    }

    #[test]
    fn uploads_are_bounded_above_the_largest_seen() {
        let p = learn(&[
            record("POST", "https://up.test/upload", 5000),
            record("GET", "https://up.test/status", 300),
        ]);
        let s = &p.sites[0];
        let bound = s.max_tx_bytes.unwrap();
        assert!(bound >= 5000, "{bound}");
        assert_eq!(bound, 6300);
        assert_eq!(s.largest_request, 5000);
        let req = RuleRequest::from_url(
            "GET",
            "https://up.test/status",
            RuleRequest::local_requester(),
        )
        .unwrap();
        assert_eq!(
            p.decide(&req),
            Decision::Allow {
                max_tx_bytes: Some(6300)
            },
            "the bound holds for every request of the site"
        );
    }

    #[test]
    fn bounds_are_round_and_never_below_the_observed_size() {
        for (seen, want) in [
            (0, 1100),
            (1, 1100),
            (5000, 6300),
            (100_000, 130_000),
            (123_456_789, 160_000_000),
        ] {
            assert_eq!(bound_for(seen), want, "{seen}");
        }
        for seen in [
            0,
            7,
            99,
            100,
            4095,
            9_999_999,
            u64::MAX / 2,
            u64::MAX - 1,
            u64::MAX,
        ] {
            assert!(bound_for(seen) >= seen, "{seen}");
        }
        // Exact as a JS number (an f64), so the rule's answer is the bound itself.
        for seen in [5000, 123_456_789, 1 << 60, u64::MAX / 3] {
            let b = bound_for(seen);
            assert_eq!(b as f64 as u64, b, "{seen} → {b}");
        }
    }

    #[test]
    fn denied_requests_are_not_learned_but_listed() {
        let request =
            RuleRequest::from_url("GET", "https://evil.test/x", RuleRequest::local_requester())
                .unwrap();
        let denied = Record::for_request(&request, &Decision::deny(DenyReason::Rule));
        let mut private = record("GET", "https://internal.test/", 0);
        private.decision = "deny".into();
        private.reason = Some("private_address".into());
        let p = learn(&[
            denied.clone(),
            denied,
            private,
            record("GET", "https://ok.test/", 10),
        ]);
        assert_eq!(p.sites.len(), 1);
        assert_eq!(p.sites[0].host, "ok.test");
        assert_eq!(p.stats.learned, 1);
        assert_eq!(p.stats.denied, 3);
        assert_eq!(
            p.denied,
            vec![
                ("GET https://evil.test (rule)".to_owned(), 2),
                ("GET https://internal.test (private_address)".to_owned(), 1),
            ]
        );
    }

    #[test]
    fn learning_is_independent_of_record_order() {
        let mut records: Vec<Record> = (0..200)
            .map(|i| {
                record(
                    if i % 5 == 0 { "POST" } else { "GET" },
                    &format!("https://h{}.test/p{}/{}/item", i % 4, i % 23, i),
                    i * 10,
                )
            })
            .collect();
        let forward = learn(&records);
        records.reverse();
        let backward = learn(&records);
        assert_eq!(forward, backward);
    }
}
