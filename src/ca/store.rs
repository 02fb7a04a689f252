//! The CA on disk: finding, validating and (for the managed directory only) creating
//! `ca-cert.pem` and `ca-key.pem`.
//!
//! Creation protocol, so that two httpjail processes starting at the same moment end with one
//! valid CA and nobody ever sees a half-written file:
//!
//! 1. Without any lock, read both files. Both present means a complete pair (files only appear
//!    through step 4), so they are validated and used; any error is real.
//! 2. Otherwise create the directory (0700; each directory we create is given to the sudo user),
//!    open `.ca.lock` in it and take an exclusive `flock`.
//! 3. Under the lock, look again: both present → validate and use (someone else created them);
//!    exactly one present → error (never create a new CA over a key or a certificate that
//!    exists); neither → create.
//! 4. Create: write each file to a temporary file opened with `O_CREAT|O_EXCL` and mode 0600
//!    from the start (so the key is never readable by others, not even for an instant), fsync,
//!    give it to the owner, then publish it under its final name with `renameat2(NOREPLACE)`.
//!    The key is published first and the certificate last, so "certificate present" implies
//!    "key present"; the directory is fsynced at the end.
//!
//! A CA pointed to by `HTTPJAIL_CA_CERT` / `HTTPJAIL_CA_KEY` (no managed directory) is only ever
//! read. A CA that fails validation is reported with the file it concerns and never replaced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{
    DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::Path;
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, RenameFlags};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::pem::{self, PemObject as _};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use super::Error;
use crate::config::CaLocation;

/// Name of the lock file inside the managed directory. It is left in place: removing it would
/// let a process that opened the old file and one that created a new one both hold "the" lock.
pub(super) const LOCK_FILE: &str = ".ca.lock";
/// Prefix of temporary files; leftovers of a crash are removed under the lock.
const TEMP_PREFIX: &str = ".ca-tmp-";
/// How long a newly created CA is valid (about 10 years).
const CA_VALIDITY: Duration = Duration::from_secs(3650 * 24 * 3600);
/// The CA's `not_before` is backdated by this much, for machines whose clocks disagree.
const CA_BACKDATE: Duration = Duration::from_secs(24 * 3600);
/// X.520 upper bound of a common name.
const MAX_CN_LEN: usize = 64;

/// A validated CA pair, as read from disk.
pub(super) struct LoadedCa {
    pub(super) cert_der: CertificateDer<'static>,
    pub(super) key: KeyPair,
    pub(super) subject: String,
    pub(super) not_after: SystemTime,
}

/// What to tell the user when a CA cannot be used, depending on who manages it.
pub(super) fn remedy(location: &CaLocation) -> String {
    if location.managed_dir.is_some() {
        format!(
            "fix or restore the file, or remove both `{}` and `{}` to let httpjail create a new CA (then run `httpjail trust --install` again if you had installed the old one)",
            location.cert.display(),
            location.key.display()
        )
    } else {
        "point HTTPJAIL_CA_CERT and HTTPJAIL_CA_KEY at a valid CA certificate and its private key"
            .to_owned()
    }
}

pub(super) fn load_or_create(location: &CaLocation) -> Result<LoadedCa, Error> {
    let Some(dir) = &location.managed_dir else {
        return load_user_supplied(location);
    };
    // Step 1: the common case, a CA that exists, needs neither the lock nor write access.
    if let (Some(cert), Some(key)) = (
        read_optional(&location.cert)?,
        read_optional(&location.key)?,
    ) {
        return validate(&cert, &key, location);
    }
    // Step 2.
    ensure_dir(dir, location.owner)?;
    let _lock = lock(dir, location.owner)?;
    remove_stale_temps(dir);
    // Step 3.
    match (
        read_optional(&location.cert)?,
        read_optional(&location.key)?,
    ) {
        (Some(cert), Some(key)) => validate(&cert, &key, location),
        (Some(_), None) => Err(Error::Incomplete {
            present: location.cert.clone(),
            missing: location.key.clone(),
            remedy: remedy(location),
        }),
        (None, Some(_)) => Err(Error::Incomplete {
            present: location.key.clone(),
            missing: location.cert.clone(),
            remedy: remedy(location),
        }),
        (None, None) => create(dir, location),
    }
}

fn load_user_supplied(location: &CaLocation) -> Result<LoadedCa, Error> {
    let read = |path: &Path, var: &'static str| match read_optional(path)? {
        Some(bytes) => Ok(bytes),
        None => Err(Error::UserCaMissing {
            var,
            path: path.to_owned(),
        }),
    };
    let cert = read(&location.cert, crate::env::CA_CERT)?;
    let key = read(&location.key, crate::env::CA_KEY)?;
    validate(&cert, &key, location)
}

/// The file's contents, `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, Error> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(Zeroizing::new(bytes))),
        // ENOTDIR: some component of the path is a file, so the file cannot exist either;
        // creating the directory reports that component by name.
        Err(e)
            if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            Ok(None)
        }
        Err(source) => Err(Error::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Parses and checks a pair: one PEM certificate, one PKCS#8 key, the key matches the
/// certificate, the certificate is a CA and is valid now.
fn validate(cert_pem: &[u8], key_pem: &[u8], location: &CaLocation) -> Result<LoadedCa, Error> {
    let corrupt = |path: &Path, why: String| Error::Corrupt {
        path: path.to_owned(),
        why,
        remedy: remedy(location),
    };
    let cert_der = match CertificateDer::pem_slice_iter(cert_pem).next() {
        Some(Ok(der)) => der,
        Some(Err(e)) => return Err(corrupt(&location.cert, pem_problem(&e, "CERTIFICATE"))),
        None => {
            return Err(corrupt(
                &location.cert,
                "it contains no `-----BEGIN CERTIFICATE-----` block".to_owned(),
            ));
        }
    };
    let key = match PrivateKeyDer::from_pem_slice(key_pem) {
        Ok(PrivateKeyDer::Pkcs8(der)) => KeyPair::try_from(&der).map_err(|e| {
            corrupt(
                &location.key,
                format!("the private key cannot be used ({e}); httpjail supports ECDSA P-256/P-384, Ed25519 and RSA keys"),
            )
        })?,
        Ok(PrivateKeyDer::Sec1(_) | PrivateKeyDer::Pkcs1(_)) => {
            return Err(corrupt(
                &location.key,
                format!(
                    "the key is in a legacy format (`EC PRIVATE KEY` / `RSA PRIVATE KEY`); convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt -in {0} -out {0}.pk8` and use that",
                    location.key.display()
                ),
            ));
        }
        Ok(_) => {
            return Err(corrupt(
                &location.key,
                "the private key has an unsupported format".to_owned(),
            ));
        }
        Err(pem::Error::NoItemsFound) => {
            return Err(corrupt(
                &location.key,
                "it contains no `-----BEGIN PRIVATE KEY-----` block".to_owned(),
            ));
        }
        Err(e) => return Err(corrupt(&location.key, pem_problem(&e, "PRIVATE KEY"))),
    };
    let (_, x509) = x509_parser::parse_x509_certificate(&cert_der).map_err(|e| {
        corrupt(
            &location.cert,
            format!("the certificate cannot be parsed ({e})"),
        )
    })?;
    if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(Error::Mismatch {
            cert: location.cert.clone(),
            key: location.key.clone(),
            remedy: remedy(location),
        });
    }
    let not_ca = |why| Error::NotCa {
        path: location.cert.clone(),
        why,
        remedy: remedy(location),
    };
    if !matches!(x509.basic_constraints(), Ok(Some(bc)) if bc.value.ca) {
        return Err(not_ca(
            "it is not a CA certificate (no basicConstraints CA:TRUE)",
        ));
    }
    // rcgen would sign with it anyway, and every client would then reject the leaves.
    match x509.key_usage() {
        Ok(Some(ku)) if !ku.value.key_cert_sign() => {
            return Err(not_ca("its keyUsage does not include keyCertSign"));
        }
        Err(_) => return Err(not_ca("its keyUsage extension cannot be parsed")),
        Ok(_) => {}
    }
    let validity = x509.validity();
    let now = SystemTime::now();
    let not_after = unix_to_system(validity.not_after.timestamp());
    let not_before = unix_to_system(validity.not_before.timestamp());
    if not_after <= now {
        return Err(Error::Expired {
            path: location.cert.clone(),
            not_after: validity.not_after.to_string(),
            remedy: remedy(location),
        });
    }
    if not_before > now {
        return Err(Error::NotYetValid {
            path: location.cert.clone(),
            not_before: validity.not_before.to_string(),
        });
    }
    if not_after < now + super::LEAF_VALIDITY {
        tracing::warn!(
            "the CA certificate `{}` expires on {}; leaf certificates will not outlive it",
            location.cert.display(),
            validity.not_after
        );
    }
    warn_if_key_exposed(&location.key);
    Ok(LoadedCa {
        subject: x509.subject().to_string(),
        not_after,
        key,
        cert_der: cert_der.into_owned(),
    })
}

fn pem_problem(e: &pem::Error, label: &str) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => {
            format!("the PEM block is truncated (no `-----END {label}-----` line)")
        }
        pem::Error::IllegalSectionStart { .. } => "a PEM `-----BEGIN` line is malformed".to_owned(),
        pem::Error::Base64Decode(_) => "the PEM block is not valid base64".to_owned(),
        other => format!("it is not valid PEM ({other})"),
    }
}

fn unix_to_system(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(s) => SystemTime::UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
    }
}

fn warn_if_key_exposed(key: &Path) {
    if let Ok(meta) = fs::metadata(key)
        && meta.mode() & 0o077 != 0
    {
        tracing::warn!(
            "the CA key `{}` is accessible to other users (mode {:o}); run `chmod 600 {}`",
            key.display(),
            meta.mode() & 0o777,
            key.display()
        );
    }
}

/// Creates `dir` and any missing parents with mode 0700, giving each one we create to `owner`.
fn ensure_dir(dir: &Path, owner: Option<(u32, u32)>) -> Result<(), Error> {
    let mut missing = Vec::new();
    let mut current = dir;
    loop {
        match fs::metadata(current) {
            Ok(meta) if meta.is_dir() => break,
            Ok(_) => {
                return Err(Error::NotADirectory {
                    path: current.to_owned(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(current);
                match current.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => current = parent,
                    _ => break,
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                // Some ancestor is a file; name the first one that is not a directory.
                let culprit = current
                    .ancestors()
                    .find(|p| fs::metadata(p).is_ok_and(|m| !m.is_dir()))
                    .unwrap_or(current);
                return Err(Error::NotADirectory {
                    path: culprit.to_owned(),
                });
            }
            Err(source) => {
                return Err(Error::CreateDir {
                    path: current.to_owned(),
                    source,
                });
            }
        }
    }
    // Under sudo, creating `~/.config/httpjail` for the user is expected; creating the user's
    // home directory itself (as root) is not: that is the system's job.
    if owner.is_some()
        && let Some(top) = missing.last().filter(|_| missing.len() > 2)
    {
        return Err(Error::CreateDir {
            path: dir.to_owned(),
            source: io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "`{}` does not exist, and httpjail does not create a user's home directory",
                    top.display()
                ),
            ),
        });
    }
    for path in missing.into_iter().rev() {
        match fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => {
                // The umask can only remove bits; set the mode explicitly anyway so that a
                // strange umask cannot leave the directory unusable.
                fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(|source| {
                    Error::CreateDir {
                        path: path.to_owned(),
                        source,
                    }
                })?;
                chown_dir(path, owner)?;
            }
            // Another httpjail created it between our check and now.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) if is_permission_problem(&e) => {
                return Err(Error::NotWritable {
                    ca_dir: dir.to_owned(),
                    dir: path.parent().unwrap_or(path).to_owned(),
                    source: e,
                });
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                return Err(Error::NotADirectory {
                    path: path.parent().unwrap_or(path).to_owned(),
                });
            }
            Err(source) => {
                return Err(Error::CreateDir {
                    path: path.to_owned(),
                    source,
                });
            }
        }
    }
    Ok(())
}

fn is_permission_problem(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EACCES | libc::EPERM | libc::EROFS)
    )
}

/// Opens (creating if needed) the lock file and takes an exclusive lock; released on drop.
fn lock(dir: &Path, owner: Option<(u32, u32)>) -> Result<Flock<File>, Error> {
    let path = dir.join(LOCK_FILE);
    // O_NOFOLLOW: under sudo we are root inside the user's directory; a planted symlink must not
    // make us create or open a file elsewhere.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| {
            if is_permission_problem(&e) {
                Error::NotWritable {
                    ca_dir: dir.to_owned(),
                    dir: dir.to_owned(),
                    source: e,
                }
            } else {
                Error::Lock {
                    path: path.clone(),
                    source: e,
                }
            }
        })?;
    chown_file(&file, &path, owner)?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| Error::Lock {
        path,
        source: io::Error::from(errno),
    })
}

/// Removes temporary files left by a crashed creator. Only called under the lock, when no
/// other process can be writing one.
fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn create(dir: &Path, location: &CaLocation) -> Result<LoadedCa, Error> {
    // The directory holds a private key: 0700 whatever it was before.
    if let Err(e) = fs::set_permissions(dir, fs::Permissions::from_mode(0o700)) {
        tracing::warn!("cannot set mode 0700 on `{}`: {e}", dir.display());
    }
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| Error::Generate {
        what: "CA key",
        source,
    })?;
    let params = ca_params(&common_name(location.owner), SystemTime::now())?;
    let cert = params.self_signed(&key).map_err(|source| Error::Generate {
        what: "CA certificate",
        source,
    })?;
    let key_pem = Zeroizing::new(key.serialize_pem());
    let cert_pem = cert.pem();
    // Key first, certificate last: a present certificate implies a complete pair.
    publish(dir, &location.key, key_pem.as_bytes(), location.owner)?;
    publish(dir, &location.cert, cert_pem.as_bytes(), location.owner)?;
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!("cannot fsync `{}`: {e}", dir.display());
    }
    tracing::info!("created a new CA in `{}`", dir.display());
    // Validate what was written exactly as a later run will.
    validate(cert_pem.as_bytes(), key_pem.as_bytes(), location)
}

fn ca_params(common_name: &str, now: SystemTime) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "httpjail");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = super::leaf::to_asn1_time(now - CA_BACKDATE);
    params.not_after = super::leaf::to_asn1_time(now + CA_VALIDITY);
    params.serial_number = Some(super::leaf::random_serial()?);
    Ok(params)
}

/// `httpjail CA (<user>@<host>)`, cut to the X.520 limit.
fn common_name(owner: Option<(u32, u32)>) -> String {
    let uid = owner.map_or_else(nix::unistd::geteuid, |(uid, _)| {
        nix::unistd::Uid::from_raw(uid)
    });
    let user = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name);
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    let mut cn = format!("httpjail CA ({user}@{host})");
    if cn.len() > MAX_CN_LEN {
        let mut cut = MAX_CN_LEN - 1;
        while !cn.is_char_boundary(cut) {
            cut -= 1;
        }
        cn.truncate(cut);
        cn.push(')');
    }
    cn
}

/// Writes `bytes` to a new 0600 temporary file in `dir`, fsyncs it, gives it to `owner`, and
/// publishes it as `dest` without ever replacing an existing file.
fn publish(dir: &Path, dest: &Path, bytes: &[u8], owner: Option<(u32, u32)>) -> Result<(), Error> {
    let temp = dir.join(format!(
        "{TEMP_PREFIX}{}-{}",
        std::process::id(),
        hex::encode(super::leaf::random_bytes::<8>()?)
    ));
    let write_error = |source: io::Error| {
        if is_permission_problem(&source) {
            Error::NotWritable {
                ca_dir: dir.to_owned(),
                dir: dir.to_owned(),
                source,
            }
        } else {
            Error::Write {
                path: dest.to_owned(),
                source,
            }
        }
    };
    // create_new + mode 0600: the file is born private; nothing ever widens it.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&temp)
        .map_err(write_error)?;
    let result = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(write_error)
        .and_then(|()| chown_file(&file, dest, owner))
        .and_then(|()| rename_noreplace(&temp, dest).map_err(write_error));
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// `rename(2)` that fails with `EEXIST` instead of replacing `to`. Filesystems without
/// `RENAME_NOREPLACE` get a plain rename; we hold the lock and checked that `to` is absent.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    match nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        from,
        nix::fcntl::AT_FDCWD,
        to,
        RenameFlags::RENAME_NOREPLACE,
    ) {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL | Errno::ENOSYS) => fs::rename(from, to),
        Err(errno) => Err(io::Error::from(errno)),
    }
}

fn chown_file(file: &File, path: &Path, owner: Option<(u32, u32)>) -> Result<(), Error> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    std::os::unix::fs::fchown(file, Some(uid), Some(gid)).map_err(|source| Error::Chown {
        path: path.to_owned(),
        uid,
        gid,
        source,
    })
}

fn chown_dir(path: &Path, owner: Option<(u32, u32)>) -> Result<(), Error> {
    if owner.is_none() {
        return Ok(());
    }
    // Through a descriptor opened without following symlinks, so that what we chown is the
    // directory we just created.
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| Error::CreateDir {
            path: path.to_owned(),
            source,
        })?;
    chown_file(&dir, path, owner)
}

#[cfg(test)]
pub(super) mod test_support {
    //! Helpers that build CA files for tests without going through `load_or_create`.

    use super::*;

    /// A CA certificate and PKCS#8 key in PEM, with the given validity.
    pub(crate) fn make_ca_pem(not_before: SystemTime, not_after: SystemTime) -> (String, String) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = ca_params("test CA", SystemTime::now()).unwrap();
        params.not_before = crate::ca::leaf::to_asn1_time(not_before);
        params.not_after = crate::ca::leaf::to_asn1_time(not_after);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    pub(crate) fn common_name_for(owner: Option<(u32, u32)>) -> String {
        common_name(owner)
    }
}
