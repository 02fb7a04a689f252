//! httpjail: run a command with every HTTP(S) request it makes filtered by a rule you write.
//!
//! # Layout
//!
//! - [`cli`]: command-line syntax; [`config`]: validated configuration; [`env`](mod@env): variable names.
//! - [`app`]: orchestration of a run, the only module that knows both proxy and jails.
//! - [`rules`]: the request model, the answer parser and the three rule engines.
//! - [`policy`]: `httpjail replay` and `httpjail learn` on JSON request logs.
//! - [`ca`]: the certificate authority, leaf certificates, CA bundles and `httpjail trust`.
//! - [`error`]: the top-level error and exit codes; [`diagnostics`]: stderr output.
//! - [`jail`]: the strong jail (Linux namespaces); [`dns`]: the jail's resolver.
//! - [`secrets`]: `--secret` placeholders, substitution and leak blocking.
//!
//! See `ARCHITECTURE.md` for the map, the life of a request and the security model.

pub mod app;
pub mod ca;
pub mod cert_dir;
pub mod child;
pub mod cli;
pub mod config;
pub mod diagnostics;
pub mod dns;
pub mod env;
pub mod error;
pub mod jail;
pub mod policy;
pub mod proxy;
pub mod request_log;
pub mod rules;
pub mod runtime_dir;
pub mod secrets;
pub mod shutdown;
pub mod signals;
pub mod tls;
