//! Jails: how the command is confined.
//!
//! - [`linux`]: the strong jail (SPEC section 7), a network namespace whose only way out is
//!   httpjail's listeners, with or without root.
//! - [`docker`]: `--docker-run`, a container whose network namespace is configured the same way.
//! - [`harden_process`]: what httpjail does to its own process so that a jailed (or weakly
//!   jailed) command cannot read its memory.
//!
//! This module knows nothing of HTTP: it hands listener sockets to `app`, which gives them to
//! the proxy and to [`crate::dns`]. It never touches the host's network namespace.

#[cfg(target_os = "linux")]
pub mod docker;
#[cfg(target_os = "linux")]
pub mod linux;

/// Why a strong jail could not be set up. Every message names the failed step; [`Self::hint`]
/// says what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the strong jail needs `{tool}`, which is not installed; install the `{package}` package"
    )]
    MissingTool { tool: String, package: String },
    #[error("cannot create the strong jail without root: {reason}")]
    UserNamespaceDenied { reason: String },
    #[error("strong jail: could not {step}: {detail}")]
    Setup {
        step: String,
        detail: String,
        hint: Option<String>,
    },
    #[error("strong jail: could not {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// What the user can do about it, when there is something.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::MissingTool { .. } => {
                Some("or use --weak (proxy variables only, no isolation)".into())
            }
            Self::UserNamespaceDenied { .. } => Some(
                "run httpjail with sudo for the strong jail, or use --weak (proxy variables \
                 only: a program that ignores them is not confined)"
                    .into(),
            ),
            Self::Setup { hint, .. } => hint.clone(),
            Self::Io { .. } => None,
        }
    }
}

/// Makes httpjail's own process non-dumpable. Call first thing in `main`.
///
/// Why: a process of the same uid may read another's `/proc/PID/environ` and `/proc/PID/mem`
/// and attach with ptrace when it is dumpable. The command runs as the same user as httpjail
/// in weak mode and in a rootless strong jail, and httpjail's memory holds the `--secret`
/// values and the CA key. Non-dumpable, those files belong to root and ptrace is refused
/// (also without Yama). The strong jail additionally hides httpjail's PID entirely; this
/// covers every mode. It also disables core dumps, which would contain the same secrets.
/// Children get the default back at `exec`.
pub fn harden_process() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::debug!("could not make httpjail non-dumpable: {e}");
    }
}
