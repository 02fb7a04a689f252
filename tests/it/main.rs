#![allow(
    clippy::unwrap_used,
    clippy::type_complexity,
    reason = "test code: a panic is a test failure"
)]

//! The integration test binary: the real `httpjail` executable and the library API, against
//! local upstreams on loopback only.
//!
//! One binary (faster to link than one per file). Modules:
//! - `support`: builders for the binary, temporary homes, local upstream servers.
//! - `cli`: usage errors and `--help` (no network).
//! - `ca`: the CA through `httpjail trust` (several processes at once) and leaves over loopback TLS.
//! - `proxy`: the proxy in-process against local upstreams, curl as the client.
//! - `rules_sh`, `rules_proc`: the `--sh` and `--proc` engines through `--test` (no network).
//! - `rules_js`: the JavaScript engine through `--test`, and `--js-file` reloads.
//! - `policy`: `httpjail replay` and `httpjail learn` on recorded logs (no network).
//! - `secrets`: `--secret` in-process and through `httpjail --weak`, against local upstreams.

mod support;

mod ca;
mod cli;
mod policy;
mod proxy;
mod rules_js;
mod rules_proc;
mod rules_sh;
mod secrets;
mod server;
mod weak;
