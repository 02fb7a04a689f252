//! `httpjail trust`: show whether the httpjail CA is in the system trust store, install it, or
//! remove it.
//!
//! The distribution's layout is described by a [`TrustStore`] value (anchor file, bundle file,
//! update command), so that the logic runs against a temporary directory and a fake update
//! command in tests and never touches the real store there. Installing writes the CA to the
//! anchor directory (atomically, mode 0644: anchors are public) and runs the distribution's
//! update tool; trust is then checked by looking for the CA's DER in the regenerated bundle.
//!
//! This module changes system files only for `--install` / `--uninstall`, and only as root.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{Authority, Error, roots};
use crate::config::{CaLocation, TrustAction};
use crate::error::exit_code;

/// Base name of the anchor file httpjail installs.
pub const ANCHOR_NAME: &str = "httpjail-ca";

/// How one distribution family manages its trust store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustStore {
    /// For messages, e.g. `Debian/Ubuntu`.
    pub name: String,
    /// The file httpjail installs (inside the distribution's anchor directory).
    pub anchor: PathBuf,
    /// The PEM bundle the update tool regenerates; trust is checked against it.
    pub bundle: PathBuf,
    /// The update tool and its arguments.
    pub update_cmd: Vec<OsString>,
}

impl TrustStore {
    /// Debian, Ubuntu and derivatives (`update-ca-certificates`, anchors must end in `.crt`).
    pub fn debian() -> Self {
        Self {
            name: "Debian/Ubuntu".to_owned(),
            anchor: PathBuf::from(format!(
                "/usr/local/share/ca-certificates/{ANCHOR_NAME}.crt"
            )),
            bundle: PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
            update_cmd: vec!["update-ca-certificates".into()],
        }
    }

    /// Fedora, RHEL, CentOS and derivatives (`update-ca-trust`).
    pub fn fedora() -> Self {
        Self {
            name: "Fedora/RHEL".to_owned(),
            anchor: PathBuf::from(format!(
                "/etc/pki/ca-trust/source/anchors/{ANCHOR_NAME}.pem"
            )),
            bundle: PathBuf::from("/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem"),
            update_cmd: vec!["update-ca-trust".into(), "extract".into()],
        }
    }

    /// Arch Linux and derivatives (p11-kit's `update-ca-trust`).
    pub fn arch() -> Self {
        Self {
            name: "Arch".to_owned(),
            anchor: PathBuf::from(format!(
                "/etc/ca-certificates/trust-source/anchors/{ANCHOR_NAME}.crt"
            )),
            bundle: PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
            update_cmd: vec!["update-ca-trust".into()],
        }
    }

    /// openSUSE and SLES (`update-ca-certificates` over `/etc/pki/trust/anchors`).
    pub fn suse() -> Self {
        Self {
            name: "openSUSE/SLES".to_owned(),
            anchor: PathBuf::from(format!("/etc/pki/trust/anchors/{ANCHOR_NAME}.pem")),
            bundle: PathBuf::from("/etc/ssl/ca-bundle.pem"),
            update_cmd: vec!["update-ca-certificates".into()],
        }
    }

    /// Every layout httpjail knows, in detection order.
    pub fn known() -> Vec<Self> {
        vec![Self::debian(), Self::fedora(), Self::arch(), Self::suse()]
    }

    /// The first known layout whose anchor directory exists on this machine.
    pub fn detect() -> Option<Self> {
        Self::known().into_iter().find(|s| s.anchor_dir().is_dir())
    }

    /// The directory the anchor goes into.
    pub fn anchor_dir(&self) -> &Path {
        self.anchor.parent().unwrap_or(Path::new("/"))
    }

    fn update_cmd_text(&self) -> String {
        self.update_cmd
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `httpjail trust [--install | --uninstall]` on this machine: the detected store, the real
/// effective uid, output on stdout. Returns the exit code (Show: 0 trusted, 1 not trusted).
pub fn run(action: TrustAction, location: &CaLocation) -> Result<i32, Error> {
    let store = TrustStore::detect();
    let is_root = nix::unistd::geteuid().is_root();
    let mut stdout = io::stdout().lock();
    run_with(action, location, store.as_ref(), is_root, &mut stdout)
}

/// [`run`] with everything that touches the machine injected.
pub fn run_with(
    action: TrustAction,
    location: &CaLocation,
    store: Option<&TrustStore>,
    is_root: bool,
    out: &mut dyn Write,
) -> Result<i32, Error> {
    match action {
        TrustAction::Show => {
            let authority = Authority::load_or_create(location)?;
            let trusted = show(&authority, store, out);
            Ok(if trusted {
                exit_code::SUCCESS
            } else {
                exit_code::DENIED
            })
        }
        TrustAction::Install => {
            require_root(is_root, "--install")?;
            let store = store.ok_or_else(|| unknown_store(location))?;
            let authority = Authority::load_or_create(location)?;
            install(&authority, store, out)?;
            Ok(exit_code::SUCCESS)
        }
        TrustAction::Uninstall => {
            require_root(is_root, "--uninstall")?;
            let store = store.ok_or_else(|| unknown_store(location))?;
            uninstall(store, out)?;
            Ok(exit_code::SUCCESS)
        }
    }
}

fn require_root(is_root: bool, flag: &'static str) -> Result<(), Error> {
    if is_root {
        Ok(())
    } else {
        Err(Error::NotRoot { flag })
    }
}

fn unknown_store(location: &CaLocation) -> Error {
    Error::UnknownTrustStore {
        looked: TrustStore::known()
            .iter()
            .map(|s| format!("`{}` ({})", s.anchor_dir().display(), s.name))
            .collect::<Vec<_>>()
            .join(", "),
        cert: location.cert.clone(),
    }
}

/// Prints where the CA is and whether the system trusts it; returns whether it does.
pub fn show(authority: &Authority, store: Option<&TrustStore>, out: &mut dyn Write) -> bool {
    // Output errors (a closed pipe) do not change the answer, which is the exit code.
    let _ = writeln!(out, "httpjail CA: {}", authority.subject());
    let _ = writeln!(out, "  certificate: {}", authority.cert_path().display());
    let _ = writeln!(out, "  key:         {}", authority.key_path().display());
    let _ = writeln!(out, "  SHA-256:     {}", authority.fingerprint());
    let _ = writeln!(
        out,
        "  expires:     {}",
        humantime::format_rfc3339_seconds(authority.not_after())
    );
    let (label, bundle) = match store {
        Some(store) => (store.name.clone(), Some(store.bundle.clone())),
        None => (
            "system".to_owned(),
            roots::SYSTEM_BUNDLES
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file()),
        ),
    };
    let Some(bundle) = bundle else {
        let _ = writeln!(
            out,
            "system trust store: none found (looked for {}); not trusted",
            roots::looked_for()
        );
        return false;
    };
    let trusted = roots::bundle_contains(&bundle, authority.cert_der());
    if trusted {
        let _ = writeln!(out, "{label} trust store (`{}`): trusted", bundle.display());
    } else {
        let _ = writeln!(
            out,
            "{label} trust store (`{}`): not trusted",
            bundle.display()
        );
        let _ = writeln!(
            out,
            "  jailed commands trust it through SSL_CERT_FILE and friends; to trust it system-wide run `sudo httpjail trust --install`"
        );
    }
    trusted
}

/// Copies the CA into the anchor directory and runs the update tool.
pub fn install(
    authority: &Authority,
    store: &TrustStore,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let pem = authority.cert_pem();
    let current = fs::read(&store.anchor).ok();
    if current.as_deref() == Some(pem.as_bytes())
        && roots::bundle_contains(&store.bundle, authority.cert_der())
    {
        let _ = writeln!(
            out,
            "already installed: `{}` is trusted through `{}`",
            authority.cert_path().display(),
            store.anchor.display()
        );
        return Ok(());
    }
    write_anchor(&store.anchor, pem.as_bytes())?;
    run_update(store)?;
    if roots::bundle_contains(&store.bundle, authority.cert_der()) {
        let _ = writeln!(
            out,
            "installed `{}` as `{}`; the {} trust store now trusts the httpjail CA",
            authority.cert_path().display(),
            store.anchor.display(),
            store.name
        );
    } else {
        tracing::warn!(
            "installed `{}` and ran `{}`, but `{}` does not contain the httpjail CA",
            store.anchor.display(),
            store.update_cmd_text(),
            store.bundle.display()
        );
        let _ = writeln!(
            out,
            "installed `{}`, but `{}` does not list it yet",
            store.anchor.display(),
            store.bundle.display()
        );
    }
    Ok(())
}

/// Removes the anchor (if present) and runs the update tool.
pub fn uninstall(store: &TrustStore, out: &mut dyn Write) -> Result<(), Error> {
    match fs::remove_file(&store.anchor) {
        Ok(()) => {
            run_update(store)?;
            let _ = writeln!(
                out,
                "removed `{}` from the {} trust store",
                store.anchor.display(),
                store.name
            );
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let _ = writeln!(
                out,
                "not installed: `{}` does not exist; nothing to remove",
                store.anchor.display()
            );
            Ok(())
        }
        Err(source) => Err(Error::AnchorRemove {
            path: store.anchor.clone(),
            source,
        }),
    }
}

/// Writes the anchor through a temporary file in the same directory and a rename, so that the
/// update tool never reads half a certificate. The temporary name does not end in `.crt` or
/// `.pem`, which the update tools look for.
fn write_anchor(anchor: &Path, pem: &[u8]) -> Result<(), Error> {
    let error = |source| Error::AnchorWrite {
        path: anchor.to_owned(),
        source,
    };
    let dir = anchor.parent().unwrap_or(Path::new("/"));
    let temp = dir.join(format!(".{ANCHOR_NAME}.{}.tmp", std::process::id()));
    let result = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&temp)
        .and_then(|mut f| {
            f.write_all(pem)?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&temp, anchor));
    if let Err(e) = result {
        let _ = fs::remove_file(&temp);
        return Err(error(e));
    }
    Ok(())
}

fn run_update(store: &TrustStore) -> Result<(), Error> {
    let Some((program, args)) = store.update_cmd.split_first() else {
        return Ok(());
    };
    let command = store.update_cmd_text();
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::UpdateToolSpawn {
            command: command.clone(),
            source,
        })?;
    if output.status.success() {
        tracing::info!(
            "`{command}`: {}",
            String::from_utf8_lossy(&output.stdout).trim()
        );
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stdout));
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(10)..].join(" | ");
    Err(Error::UpdateToolFailed {
        command,
        status: output.status.to_string(),
        output: if tail.is_empty() {
            String::new()
        } else {
            format!(": {tail}")
        },
    })
}
