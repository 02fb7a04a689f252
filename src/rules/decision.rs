//! What was decided for one request, and why a request was denied.

use std::fmt;

/// The outcome of evaluating one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward the request; `max_tx_bytes` bounds the whole request as sent upstream
    /// (request line, headers, blank line and body).
    Allow { max_tx_bytes: Option<u64> },
    /// Answer 403 (or the status [`DenyReason::status`] gives) and never contact the upstream.
    Deny {
        reason: DenyReason,
        /// The rule's own message, shown to the client on the line after `httpjail: Blocked …`.
        message: Option<String>,
    },
}

impl Decision {
    pub const ALLOW: Self = Self::Allow { max_tx_bytes: None };

    pub fn deny(reason: DenyReason) -> Self {
        Self::Deny {
            reason,
            message: None,
        }
    }

    pub fn deny_with(reason: DenyReason, message: impl Into<String>) -> Self {
        Self::Deny {
            reason,
            message: Some(message.into()),
        }
    }

    pub fn is_allow(&self) -> bool {
        matches!(self, Self::Allow { .. })
    }

    /// The reason code of a deny, `None` for an allow.
    pub fn reason(&self) -> Option<DenyReason> {
        match self {
            Self::Allow { .. } => None,
            Self::Deny { reason, .. } => Some(*reason),
        }
    }
}

/// Why a request was denied. [`DenyReason::as_str`] is the stable code used in the
/// `x-httpjail-reason` header and the request log; never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// A request header named a different host than the SNI / CONNECT target (421).
    DomainFronting,
    /// The rule engine failed: exception, crash, unstartable process.
    EngineError,
    /// The rule engine did not answer in time.
    EngineTimeout,
    /// An explicit proxy request (CONNECT, absolute-form) reached a transparent-only listener.
    ExplicitProxyRefused,
    /// The rule answered something that is not a valid answer.
    InvalidAnswer,
    /// The request came back to the proxy that sent it.
    LoopDetected,
    /// The request could not be understood (no Host, no SNI, bad URL).
    MalformedRequest,
    /// No rule is configured: everything is denied.
    NoRule,
    /// The upstream address is in a private/loopback range not covered by `--allow-private`.
    PrivateAddress,
    /// The rule denied the request.
    Rule,
    /// The request carried a secret (or its placeholder) to a host it is not bound to.
    SecretLeak,
    /// The request is larger than the rule's `max_tx_bytes` (413).
    TxLimit,
}

impl DenyReason {
    pub const ALL: [Self; 12] = [
        Self::DomainFronting,
        Self::EngineError,
        Self::EngineTimeout,
        Self::ExplicitProxyRefused,
        Self::InvalidAnswer,
        Self::LoopDetected,
        Self::MalformedRequest,
        Self::NoRule,
        Self::PrivateAddress,
        Self::Rule,
        Self::SecretLeak,
        Self::TxLimit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::DomainFronting => "domain_fronting",
            Self::EngineError => "engine_error",
            Self::EngineTimeout => "engine_timeout",
            Self::ExplicitProxyRefused => "explicit_proxy_refused",
            Self::InvalidAnswer => "invalid_answer",
            Self::LoopDetected => "loop_detected",
            Self::MalformedRequest => "malformed_request",
            Self::NoRule => "no_rule",
            Self::PrivateAddress => "private_address",
            Self::Rule => "rule",
            Self::SecretLeak => "secret_leak",
            Self::TxLimit => "tx_limit",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The HTTP status a client receives for this reason.
    pub fn status(self) -> u16 {
        match self {
            Self::DomainFronting => 421,
            Self::MalformedRequest => 400,
            Self::TxLimit => 413,
            Self::LoopDetected => 508,
            _ => 403,
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in DenyReason::ALL {
            assert!(seen.insert(r.as_str()), "duplicate code {}", r.as_str());
            assert_eq!(DenyReason::parse(r.as_str()), Some(r));
        }
        assert_eq!(DenyReason::parse("nope"), None);
    }

    #[test]
    fn statuses() {
        assert_eq!(DenyReason::Rule.status(), 403);
        assert_eq!(DenyReason::SecretLeak.status(), 403);
        assert_eq!(DenyReason::TxLimit.status(), 413);
        assert_eq!(DenyReason::DomainFronting.status(), 421);
    }
}
