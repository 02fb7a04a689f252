//! The `docker` command-line client: finding it, and running it with a time limit.
//!
//! httpjail talks to the Docker daemon only through the `docker` CLI, as the user would: the
//! user's context, `DOCKER_HOST` and credentials apply, and no API client is needed. Like `nft`
//! for the strong jail, `docker` is looked up in fixed system directories, never through
//! `PATH`: under sudo, a `PATH` chosen by the user must not choose what runs as root.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;

use super::Error;

/// How long one `docker` command may take. Starting a container takes about half a second;
/// this bounds a daemon that hangs.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Where `docker` is looked for, in sudo's `secure_path` order (so that the client a user
/// installed in `/usr/local/bin` wins over a distribution's older one, as it does in their
/// shell), then Snap's and NixOS's directories. All are writable by root only.
pub const DOCKER_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
    "/snap/bin",
    "/run/current-system/sw/bin",
];

/// The `docker` client.
#[derive(Debug, Clone)]
pub struct Docker {
    program: PathBuf,
}

impl Docker {
    /// Finds `docker` in the system directories.
    pub fn find() -> Result<Self, Error> {
        let dirs: Vec<&Path> = DOCKER_DIRS.iter().map(Path::new).collect();
        Self::find_in(&dirs)
    }

    fn find_in(dirs: &[&Path]) -> Result<Self, Error> {
        crate::jail::linux::apply::find_tool("docker", "docker.io", dirs)
            .map(|program| Self { program })
            .map_err(|_| Error::MissingDocker {
                searched: dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// A client at an explicit path (tests).
    pub fn at(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
        }
    }

    pub fn program(&self) -> &Path {
        &self.program
    }

    /// `docker ARGS` as a child process with httpjail's environment (the user's Docker
    /// settings) and inherited standard streams; the caller sets what else it needs.
    pub fn command(&self) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.program);
        command.env("LC_ALL", "C");
        command
    }

    /// Runs `docker ARGS` to completion and returns its stdout (trimmed); `what` names the
    /// step for the error message, which carries docker's own stderr.
    pub async fn run<I, S>(&self, what: &str, args: I) -> Result<String, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_with_input(what, args, None).await
    }

    /// Like [`Self::run`], with `input` on docker's stdin.
    pub async fn run_with_input<I, S>(
        &self,
        what: &str,
        args: I,
        input: Option<&[u8]>,
    ) -> Result<String, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let failed = |detail: String| Error::Docker {
            what: what.to_owned(),
            detail,
        };
        let mut command = self.command();
        command
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| failed(format!("cannot run `{}`: {e}", self.program.display())))?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin
                .write_all(input)
                .await
                .map_err(|e| failed(format!("cannot write to `docker`: {e}")))?;
            drop(stdin);
        }
        let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| {
                failed(format!(
                    "`docker` did not answer within {COMMAND_TIMEOUT:?} (is the daemon hung?)"
                ))
            })?
            .map_err(|e| failed(format!("waiting for `docker`: {e}")))?;
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stderr = stderr.trim();
        Err(failed(if stderr.is_empty() {
            format!("`docker` {}", output.status)
        } else {
            stderr.to_owned()
        }))
    }

    /// Runs `docker ARGS` from a plain thread, without waiting for the result (signals and
    /// kills requested from a synchronous context). Errors only go to the debug log.
    pub fn run_detached(&self, args: Vec<String>) {
        let program = self.program.clone();
        let spawned = std::thread::Builder::new()
            .name("httpjail-docker".into())
            .spawn(move || {
                let result = std::process::Command::new(&program)
                    .args(&args)
                    .env("LC_ALL", "C")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .output();
                match result {
                    Ok(o) if o.status.success() => {}
                    Ok(o) => tracing::debug!(
                        "docker {}: {}",
                        args.join(" "),
                        String::from_utf8_lossy(&o.stderr).trim()
                    ),
                    Err(e) => tracing::debug!("docker {}: {e}", args.join(" ")),
                }
            });
        if let Err(e) = spawned {
            tracing::debug!("cannot start a thread for docker: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_docker_names_the_packages() {
        let empty = tempfile::tempdir().unwrap();
        let err = Docker::find_in(&[empty.path()]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`docker`"), "{text}");
        let hint = err.hint().unwrap_or_default();
        assert!(
            hint.contains("docker.io") && hint.contains("docker-ce"),
            "{hint}"
        );
    }

    #[tokio::test]
    async fn failures_carry_dockers_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("docker");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let err = Docker::at(&fake)
            .run("list containers", ["ps"])
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("list containers"), "{text}");
        assert!(
            text.contains("Cannot connect to the Docker daemon"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn output_is_trimmed_and_input_is_passed() {
        let docker = Docker::at("/bin/sh");
        let out = docker
            .run_with_input("echo", ["-c", "cat; echo"], Some(b"  hello \n"))
            .await
            .unwrap();
        assert_eq!(out, "hello");
    }
}
