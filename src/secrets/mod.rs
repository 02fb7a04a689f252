//! Secrets that never enter the jail (SPEC section 9): `--secret VAR=HOSTS`.
//!
//! For each secret, a per-run placeholder `httpjail-secret-VAR-<128 random bits>` replaces the
//! real value in the command's environment ([`Secrets::patch_env`]). The proxy puts the real
//! value back for allowed https requests to the secret's hosts ([`substitute`]) and denies,
//! with reason `secret_leak`, any request that carries a placeholder or a real value where it
//! may not go ([`Secrets::check_head`] before the rule, [`body`] after it).
//!
//! Where a secret may appear ([`Policy::permits`]):
//! - in a host name: never (the name goes to DNS resolvers and, in TLS SNI, over the wire in
//!   clear text), whatever the host;
//! - in the request line (method, path, query): only a placeholder, and only to a bound host
//!   over https. The rule sees the URL with the placeholder and the request log records it; a
//!   real value there would be shown to both, so it is denied even to a bound host;
//! - in header names and values and in the body: to a bound host over https.
//!
//! Plain http to a bound host carrying a secret is denied: the value would cross the network
//! in clear text. The checks only ever deny: the rule decides everything else, and a secret
//! never makes a denied request allowed.
//!
//! Layout: [`placeholder`] (generation), [`scan`] (encodings and the streaming matcher),
//! [`substitute`] (URL, headers, body), [`body`] (buffering and streaming request bodies),
//! [`env`](mod@env) (the command's and the rule programs' environments), [`redact`] (the request log
//! and the diagnostics never show a real value).
//!
//! The real values live in [`Zeroizing`] strings that are zeroed when the last reference to
//! [`Secrets`] is dropped. Copies that other code owns cannot be zeroed: the automata's tables,
//! and the substituted requests handed to hyper. [`crate::jail::harden_process`] (run for every invocation in `main`) keeps them out of core
//! dumps and away from same-user debuggers (`PR_SET_DUMPABLE` = 0).

pub mod body;
pub mod env;
pub mod placeholder;
pub mod redact;
pub mod response;
pub mod scan;
pub mod substitute;
pub mod upgrade;

use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;

use http::HeaderMap;
use zeroize::Zeroizing;

use crate::config::{HostPattern, SecretSpec};
use crate::rules::Scheme;
use scan::{Case, Hit, Matcher, Needle, Target};

/// A secret value shorter than this is likely to occur in unrelated traffic.
const SHORT_VALUE: usize = 12;

thread_local! {
    /// Header names and values of the request being checked (see [`Secrets::check_head`]).
    static HEADER_BUFFERS: std::cell::RefCell<(Vec<u8>, Vec<u8>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Why the secrets could not be set up (start-up errors, exit 125).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--secret: cannot generate placeholders: the OS random source failed ({0})")]
    Random(getrandom::Error),
    #[error(transparent)]
    Build(#[from] scan::BuildError),
    #[error(
        "--secret {var}: the value contains control characters and cannot be sent in an HTTP header"
    )]
    ControlCharacters { var: String },
}

/// One configured secret.
struct Entry {
    var: String,
    hosts: Vec<HostPattern>,
    value: Zeroizing<String>,
    placeholder: String,
}

/// The secrets of one run. Built once at start-up; shared by the proxy, the environment
/// builders and the redactors.
pub struct Secrets {
    entries: Vec<Entry>,
    matcher: Matcher,
    /// Replaces real values echoed back in responses from bound hosts.
    scrubber: Option<Arc<response::Scrubber>>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Variable names and hosts only: never a value, never a placeholder.
        let vars: Vec<&str> = self.entries.iter().map(|e| e.var.as_str()).collect();
        f.debug_struct("Secrets")
            .field("vars", &vars)
            .field("matcher", &self.matcher)
            .finish()
    }
}

impl Secrets {
    /// The secrets of `specs` with fresh placeholders; `None` when there are none.
    pub fn from_config(specs: &[SecretSpec]) -> Result<Option<Arc<Self>>, Error> {
        if specs.is_empty() {
            return Ok(None);
        }
        let placeholders = specs
            .iter()
            .map(|s| placeholder::generate(&s.var))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Error::Random)?;
        Self::with_placeholders(specs, placeholders).map(|s| Some(Arc::new(s)))
    }

    /// The secrets of `specs` with the given placeholders (one per spec, in order).
    pub fn with_placeholders(
        specs: &[SecretSpec],
        placeholders: Vec<String>,
    ) -> Result<Self, Error> {
        let entries: Vec<Entry> = specs
            .iter()
            .zip(placeholders)
            .map(|(spec, placeholder)| Entry {
                var: spec.var.clone(),
                hosts: spec.hosts.clone(),
                value: spec.value.clone(),
                placeholder,
            })
            .collect();
        for entry in &entries {
            if entry
                .value
                .bytes()
                .any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
            {
                return Err(Error::ControlCharacters {
                    var: entry.var.clone(),
                });
            }
            if entry.value.len() < SHORT_VALUE {
                tracing::warn!(
                    "--secret {}: the value is only {} bytes long; requests that happen to contain it will be denied as leaks",
                    entry.var,
                    entry.value.len()
                );
            }
        }
        let mut targets = Vec::with_capacity(2 * entries.len());
        for (i, entry) in entries.iter().enumerate() {
            targets.push(Target {
                secret: i,
                needle: Needle::Placeholder,
                bytes: entry.placeholder.as_bytes(),
            });
            targets.push(Target {
                secret: i,
                needle: Needle::Value,
                bytes: entry.value.as_bytes(),
            });
        }
        let matcher = Matcher::new(&targets)?;
        let scrubber = response::Scrubber::from_entries(&entries);
        Ok(Self {
            entries,
            matcher,
            scrubber,
        })
    }

    /// What replaces real values in responses (see [`response`]).
    pub fn scrubber(&self) -> Option<&Arc<response::Scrubber>> {
        self.scrubber.as_ref()
    }

    /// The placeholder the command sees in `$var`.
    pub fn placeholder(&self, var: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.var == var)
            .map(|e| e.placeholder.as_str())
    }

    /// The secret variables' names, in configuration order.
    pub fn vars(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.var.as_str())
    }

    /// Which secrets a request to `host` over `scheme` may carry.
    pub fn policy(&self, scheme: Scheme, host: &str) -> Policy {
        let is_bound = |e: &Entry| e.hosts.iter().any(|p| p.matches(host));
        // Most requests go to hosts no secret is bound to: no allocation for them.
        let bound = if self.entries.iter().any(is_bound) {
            self.entries.iter().map(is_bound).collect()
        } else {
            Vec::new()
        };
        Policy {
            https: scheme == Scheme::Https,
            bound,
        }
    }

    /// Checks everything of a request but its body: the host name, the request line and every
    /// header. Runs before the rule, so that a rule is never shown a real value.
    pub fn check_head(
        &self,
        policy: &Policy,
        method: &str,
        host: &str,
        path_and_query: &str,
        headers: &HeaderMap,
    ) -> Result<(), Leak> {
        let m = &self.matcher;
        self.check(policy, Place::Host, |f| {
            m.scan_decoding(host.as_bytes(), Case::Folded, f)
        })?;
        self.check(policy, Place::RequestLine, |f| {
            m.scan_decoding(method.as_bytes(), Case::Exact, f)?;
            m.scan_decoding(path_and_query.as_bytes(), Case::Exact, f)
        })?;
        // All names, then all values, each in one buffer (NUL cannot occur in either, so no
        // match can span two headers): two scans per request instead of two per header. The
        // buffers are reused by the thread.
        HEADER_BUFFERS.with(|buffers| {
            let mut fresh = (Vec::new(), Vec::new());
            let mut borrowed = buffers.try_borrow_mut();
            let (names, values) = match borrowed.as_deref_mut() {
                Ok(reused) => reused,
                Err(_) => &mut fresh,
            };
            names.clear();
            values.clear();
            for (name, value) in headers {
                names.extend_from_slice(name.as_str().as_bytes());
                names.push(0);
                values.extend_from_slice(value.as_bytes());
                values.push(0);
            }
            self.check(policy, Place::HeaderName, |f| {
                m.scan_decoding(names, Case::Folded, f)
            })?;
            self.check(policy, Place::HeaderValue, |f| {
                m.scan_decoding(values, Case::Exact, f)
            })
        })
    }

    /// Runs `scan` with a verdict that stops at the first hit `policy` does not permit.
    fn check(
        &self,
        policy: &Policy,
        place: Place,
        scan: impl FnOnce(&mut dyn FnMut(Hit) -> scan::Flow) -> scan::Flow,
    ) -> Result<(), Leak> {
        let mut verdict = |hit: Hit| {
            if policy.permits(hit, place) {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(hit)
            }
        };
        match scan(&mut verdict) {
            ControlFlow::Continue(()) => Ok(()),
            ControlFlow::Break(hit) => Err(self.leak(hit, place, policy)),
        }
    }

    /// Describes a hit that `policy` does not permit at `place`.
    fn leak(&self, hit: Hit, place: Place, policy: &Policy) -> Leak {
        let entry = &self.entries[hit.secret];
        let why = if place == Place::Host {
            Why::HostName
        } else if !policy.is_bound(hit.secret) {
            Why::NotBound
        } else if !policy.https {
            Why::PlainHttp
        } else {
            Why::ValueInUrl
        };
        Leak {
            var: entry.var.clone(),
            hosts: entry
                .hosts
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            needle: hit.needle,
            encoding: hit.encoding,
            decoded: hit.decoded,
            place,
            why,
        }
    }

    pub(crate) fn matcher(&self) -> &Matcher {
        &self.matcher
    }
}

/// Where in a request a hit was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Host,
    RequestLine,
    HeaderName,
    HeaderValue,
    Body,
}

impl Place {
    fn as_str(self) -> &'static str {
        match self {
            Self::Host => "in the host name",
            Self::RequestLine => "in the URL",
            Self::HeaderName => "in a header name",
            Self::HeaderValue => "in a header",
            Self::Body => "in the body",
        }
    }
}

/// Which secrets one request may carry: those bound to its host, if it is https.
#[derive(Debug, Clone)]
pub struct Policy {
    https: bool,
    /// Per secret, whether its hosts match; empty when none does.
    bound: Vec<bool>,
}

impl Policy {
    fn is_bound(&self, secret: usize) -> bool {
        self.bound.get(secret).copied().unwrap_or(false)
    }

    /// Whether the request may carry `hit` at `place` (see the module documentation).
    pub fn permits(&self, hit: Hit, place: Place) -> bool {
        let allowed_here = match place {
            Place::Host => false,
            Place::RequestLine => hit.needle == Needle::Placeholder,
            Place::HeaderName | Place::HeaderValue | Place::Body => true,
        };
        allowed_here && self.https && self.is_bound(hit.secret)
    }

    /// Whether placeholders are replaced by real values in this request.
    pub fn substitutes(&self) -> bool {
        self.https && !self.bound.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    NotBound,
    PlainHttp,
    ValueInUrl,
    HostName,
}

/// A request that would carry a secret where it may not go. Its message names the variable,
/// the form and the place, never the value.
#[derive(Debug, Clone)]
pub struct Leak {
    var: String,
    hosts: String,
    needle: Needle,
    encoding: scan::Encoding,
    decoded: bool,
    place: Place,
    why: Why,
}

impl Leak {
    pub fn var(&self) -> &str {
        &self.var
    }

    pub fn place(&self) -> Place {
        self.place
    }

    /// Whether the real value (not the placeholder) was found.
    pub fn is_value(&self) -> bool {
        self.needle == Needle::Value
    }
}

impl fmt::Display for Leak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.needle {
            Needle::Placeholder => "the placeholder of",
            Needle::Value => "the value of",
        };
        write!(f, "secret leak: {what} ${} ", self.var)?;
        match (self.encoding, self.decoded) {
            (scan::Encoding::Raw, false) => {}
            (scan::Encoding::Raw, true) => f.write_str("(escaped) ")?,
            (e, false) => write!(f, "({}) ", e.as_str())?,
            (e, true) => write!(f, "({}, escaped) ", e.as_str())?,
        }
        f.write_str(self.place.as_str())?;
        match self.why {
            Why::NotBound => write!(f, "; ${} may only be sent to {}", self.var, self.hosts),
            Why::PlainHttp => write!(
                f,
                "; ${} is only sent over https, never in clear text",
                self.var
            ),
            Why::ValueInUrl => f.write_str(
                "; the URL is shown to the rule and written to the log: put the placeholder there, not the value",
            ),
            Why::HostName => f.write_str("; host names go to DNS resolvers and in clear text over TLS"),
        }
    }
}

#[cfg(test)]
mod tests;
