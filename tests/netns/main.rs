//! Root-only tests of the strong jail (network, mount, PID and user namespaces).
//!
//! They need root, `ip`, `nft`, `curl`, `python3`, `setpriv`, `useradd`, `nsenter` and
//! `unshare`. Without them each test prints `SKIPPED: <why>` and passes, except with `CI=true`,
//! where a missing prerequisite fails the test. Everything a test reaches is a jail it created,
//! the host's loopback, or a network namespace it created: never a real network.
//!
//! The library API is used directly (the jail with a stand-in proxy that answers with the
//! original destination and Host header); the httpjail binary runs the supervisor.

mod support;

// The local upstreams and the test CA of the `it` suite (`upstream` refers to `super::tls`).
#[allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    reason = "shared test support"
)]
#[path = "../it/support/tls.rs"]
mod tls;
#[allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    reason = "shared test support"
)]
#[path = "../it/support/upstream.rs"]
mod upstream;

mod adversarial;
mod basics;
#[allow(clippy::unwrap_used, reason = "test code: a panic is a test failure")]
mod binary;
mod confinement;
#[allow(clippy::unwrap_used, reason = "test code: a panic is a test failure")]
mod docker;
mod lifetime;
mod rootless;
