//! The integration test binary: the real `httpjail` executable and the library API, against
//! local upstreams on loopback only.
//!
//! One binary (faster to link than one per file). Modules:
//! - `support`: builders for the binary, temporary homes, local upstream servers.
//! - `cli`: usage errors and `--help` (no network).
//! - `rules_sh`, `rules_proc`: the `--sh` and `--proc` engines through `--test` (no network).

mod support;

mod cli;
mod rules_proc;
mod rules_sh;
