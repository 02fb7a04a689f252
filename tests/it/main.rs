//! The integration test binary: the real `httpjail` executable and the library API, against
//! local upstreams on loopback only.
//!
//! One binary (faster to link than one per file). Modules:
//! - `support`: builders for the binary, temporary homes, local upstream servers.
//! - `cli`: usage errors and `--help` (no network).
//! - `rules_js`: the JavaScript engine through `--test`, and `--js-file` reloads.

mod support;

mod cli;
mod rules_js;
