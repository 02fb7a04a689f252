//! The private per-run directory (CA bundle for the command, jail files), and the removal of
//! those left behind by a killed httpjail (`--cleanup`).
//!
//! Layout: `/tmp/httpjail-<euid>/run-<pid>-<random>/`. The per-user directory is created 0700
//! and checked (a real directory, owned by us, not group/world-accessible) before use, because
//! its name is predictable: another user could pre-create it or plant a symlink there.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A directory removed (recursively) when dropped.
#[derive(Debug)]
pub struct RuntimeDir {
    path: PathBuf,
}

/// The per-user parent of every run directory.
pub fn base_dir() -> PathBuf {
    PathBuf::from(format!("/tmp/httpjail-{}", nix::unistd::geteuid().as_raw()))
}

impl RuntimeDir {
    /// Creates this run's directory (0700).
    pub fn create() -> io::Result<Self> {
        let base = base_dir();
        match fs::DirBuilder::new().mode(0o700).create(&base) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("create `{}`: {e}", base.display()),
                ));
            }
        }
        check_private(&base)?;
        let mut random = [0u8; 6];
        getrandom::fill(&mut random).map_err(|e| io::Error::other(e.to_string()))?;
        let path = base.join(format!(
            "run-{}-{}",
            std::process::id(),
            hex::encode(random)
        ));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("create `{}`: {e}", path.display())))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lets another user (the sudo user the command runs as) enter and read the directory.
    pub fn share_with(&self, uid: u32, gid: u32) -> io::Result<()> {
        std::os::unix::fs::chown(&self.path, Some(uid), Some(gid))?;
        let base = base_dir();
        // The parent stays ours; others may traverse it but not list it.
        fs::set_permissions(&base, fs::Permissions::from_mode(0o711))
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove `{}`: {e}", self.path.display());
        }
    }
}

fn check_private(dir: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(dir)?;
    let euid = nix::unistd::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != euid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "`{}` is not a directory owned by uid {euid}; remove it (someone else may have created it)",
                dir.display()
            ),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("`{}` is writable by others; remove it", dir.display()),
        ));
    }
    Ok(())
}

/// The pid encoded in a run directory's name.
fn run_pid(name: &str) -> Option<i32> {
    name.strip_prefix("run-")?.split('-').next()?.parse().ok()
}

/// Removes run directories whose httpjail is gone. Returns what was removed.
pub fn cleanup_stale() -> io::Result<Vec<PathBuf>> {
    let base = base_dir();
    let entries = match fs::read_dir(&base) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    check_private(&base)?;
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(run_pid) else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        let path = entry.path();
        fs::remove_dir_all(&path)?;
        removed.push(path);
    }
    Ok(removed)
}

fn pid_alive(pid: i32) -> bool {
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_private_and_removed_on_drop() {
        let dir = RuntimeDir::create().unwrap();
        let path = dir.path().to_owned();
        let meta = fs::metadata(&path).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.mode() & 0o777, 0o700);
        fs::write(path.join("f"), "x").unwrap();
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn cleanup_removes_only_dead_runs() {
        let live = RuntimeDir::create().unwrap();
        // A pid that cannot exist (beyond pid_max) plays a killed httpjail.
        let stale = base_dir().join("run-2147483646-abcdef");
        fs::create_dir_all(stale.join("inner")).unwrap();
        let removed = cleanup_stale().unwrap();
        assert!(removed.contains(&stale), "{removed:?}");
        assert!(!stale.exists());
        assert!(live.path().exists(), "our own live run must stay");
    }

    #[test]
    fn pid_is_parsed_from_name() {
        assert_eq!(run_pid("run-123-abcd"), Some(123));
        assert_eq!(run_pid("other"), None);
    }
}
