//! `--docker-run`: a container whose network is jailed like a strong jail's.
//!
//! # Design
//!
//! ```text
//! httpjail ──docker run -d --network none── pause container (owns the network namespace)
//!    │  setns (one thread): lo addresses + routes, nft table, listeners bound inside
//!    │  proxy + resolver serve those listeners from the host namespace (as for a strong jail)
//!    └──docker run --network container:<pause> USER_ARGS── the user's container
//! ```
//!
//! 1. [`Session::connect`]: root (entering a namespace needs `CAP_SYS_ADMIN`), the `docker`
//!    client ([`cli`]), a reachable daemon; containers left by a killed httpjail are removed
//!    on the way ([`cleanup`]).
//! 2. [`Session::create`]: the pause image ([`pause`]) is imported when missing; the pause
//!    container starts with `--network none`, so its namespace has nothing but `lo`; that
//!    namespace gets exactly the strong jail's configuration ([`netns`], which reuses
//!    [`crate::jail::linux::apply`]); the listeners come back to `app`.
//! 3. [`DockerJail::spawn`]: `docker run` with httpjail's options first (the network of the
//!    pause container, labels, the CA bundle mounted read-only with the CA variables pointing
//!    at it, `CAP_NET_RAW` dropped), then the user's arguments, which [`args`] checked before
//!    anything started. Its exit code is the container's.
//! 4. [`DockerJail::remove`]: the user's container is stopped if it still runs, the pause
//!    container removed. On SIGKILL of httpjail the pause container stays, still a jail whose
//!    listeners are closed (nothing gets out); `httpjail --cleanup`, or the next
//!    `--docker-run`, removes it.
//!
//! Nothing is changed in the host's network namespace: no bridge network, no veth, no host nft
//! table (Docker itself adds nothing for `--network none` and `container:` networks).
//!
//! This module knows nothing of HTTP; it must not touch the host's network namespace, and it
//! talks to Docker only through the `docker` client.

pub mod args;
pub mod cleanup;
pub mod cli;
pub mod netns;
pub mod pause;

use std::ffi::OsString;
use std::path::Path;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

pub use cli::Docker;

use crate::child::{Outcome, Supervised};
use crate::jail::linux::JailListeners;

/// Label holding the PID of the httpjail that started a container.
pub const LABEL_PID: &str = "httpjail.pid";
/// Label identifying that httpjail process exactly: `<boot id>/<pid>/<start time>`.
pub const LABEL_INSTANCE: &str = "httpjail.instance";
/// Label saying what the container is: [`ROLE_PAUSE`] or [`ROLE_CONTAINER`].
pub const LABEL_ROLE: &str = "httpjail.role";
pub const ROLE_PAUSE: &str = "pause";
pub const ROLE_CONTAINER: &str = "container";

/// Where the CA bundle appears inside the container (mounted read-only).
pub const CA_BUNDLE_IN_CONTAINER: &str = "/etc/httpjail/ca-bundle.pem";
/// Where the OpenSSL hashed directory of the CA appears inside the container.
pub const CA_DIR_IN_CONTAINER: &str = "/etc/httpjail/certs";

/// Why `--docker-run` could not run. Every message names the step; [`Self::hint`] says what to
/// do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "--docker-run needs root: httpjail configures the container's network namespace \
         itself, which needs CAP_SYS_ADMIN"
    )]
    NotRoot,
    #[error("--docker-run needs `docker`, which was not found in {searched}")]
    MissingDocker { searched: String },
    #[error("cannot reach the Docker daemon: {detail}")]
    Daemon { detail: String },
    #[error("docker: could not {what}: {detail}")]
    Docker { what: String, detail: String },
    #[error(
        "--docker-run has no pause program for the `{arch}` architecture (only x86_64 and \
         aarch64)"
    )]
    UnsupportedArch { arch: String },
    #[error("--docker-run: the pause container's network namespace is refused: {detail}")]
    Namespace { detail: String },
    #[error("--docker-run: could not jail the container's network")]
    Network(#[source] crate::jail::Error),
}

impl Error {
    /// What the user can do about it, when there is something.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::NotRoot => {
                Some("run httpjail with sudo: `sudo httpjail ... --docker-run -- ...`".into())
            }
            Self::MissingDocker { .. } => Some(
                "install Docker: the `docker.io` package (Debian/Ubuntu) or Docker's `docker-ce`"
                    .into(),
            ),
            Self::Daemon { .. } => Some(
                "start the daemon (`sudo systemctl start docker`) and check that `docker info` \
                 works; --docker-run needs a daemon on this machine"
                    .into(),
            ),
            // The strong jail's own hint for a missing tool suggests --weak, which does not
            // apply here.
            Self::Network(crate::jail::Error::MissingTool { package, .. }) => {
                Some(format!("install the `{package}` package"))
            }
            Self::Network(e) => e.hint(),
            _ => None,
        }
    }
}

/// This httpjail process, as its containers' labels record it: the PID alone could be reused
/// after httpjail died, so the process start time and the boot are recorded too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub boot_id: String,
    pub pid: u32,
    pub start_time: u64,
}

impl Instance {
    /// The running httpjail.
    pub fn current() -> Self {
        let pid = std::process::id();
        Self {
            boot_id: boot_id(),
            pid,
            start_time: start_time(pid).unwrap_or(0),
        }
    }

    /// The label value.
    pub fn label(&self) -> String {
        format!("{}/{}/{}", self.boot_id, self.pid, self.start_time)
    }

    /// Parses a label value.
    pub fn parse(label: &str) -> Option<Self> {
        let mut parts = label.split('/');
        let (Some(boot_id), Some(pid), Some(start), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        Some(Self {
            boot_id: boot_id.to_owned(),
            pid: pid.parse().ok()?,
            start_time: start.parse().ok()?,
        })
    }

    /// Whether this httpjail has certainly ended: it ran during this boot (of this machine:
    /// a container of another machine's httpjail, through a remote daemon, is never judged)
    /// and its PID is gone or now belongs to a process started at another time.
    pub fn is_gone(&self) -> bool {
        self.boot_id == boot_id() && start_time(self.pid) != Some(self.start_time)
    }
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Field 22 of `/proc/PID/stat` (start time in clock ticks since boot), `None` when the
/// process does not exist.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// A checked connection to Docker: root, the client found, the daemon reachable.
#[derive(Debug)]
pub struct Session {
    docker: Docker,
    instance: Instance,
}

impl Session {
    /// Checks what `--docker-run` needs (root, the `docker` client) without contacting the
    /// daemon; cheap, so it runs before anything else is started.
    pub fn check_local() -> Result<Docker, Error> {
        if !nix::unistd::geteuid().is_root() {
            return Err(Error::NotRoot);
        }
        if pause::program(std::env::consts::ARCH).is_none() {
            return Err(Error::UnsupportedArch {
                arch: std::env::consts::ARCH.to_owned(),
            });
        }
        Docker::find()
    }

    /// Contacts the daemon (its error is reported as unreachable) and removes the containers
    /// of httpjails that were killed.
    pub async fn connect(docker: Docker) -> Result<Self, Error> {
        let report = cleanup::remove_stale(&docker).await.map_err(|e| match e {
            Error::Docker { detail, .. } => Error::Daemon { detail },
            other => other,
        })?;
        for id in report.removed.iter().chain(&report.stopped) {
            tracing::info!("removed container {id} left by a killed httpjail");
        }
        Ok(Self {
            docker,
            instance: Instance::current(),
        })
    }

    /// Starts the pause container and jails its network namespace; returns the jail and
    /// httpjail's listeners inside it (serve them, then [`DockerJail::spawn`]).
    pub async fn create(self) -> Result<(DockerJail, JailListeners), Error> {
        ensure_pause_image(&self.docker).await?;
        let mut name_suffix = [0u8; 6];
        getrandom::fill(&mut name_suffix).map_err(|e| Error::Docker {
            what: "name the pause container".into(),
            detail: e.to_string(),
        })?;
        let name = format!(
            "httpjail-pause-{}-{}",
            self.instance.pid,
            hex::encode(name_suffix)
        );
        let labels = self.labels(ROLE_PAUSE);
        let mut run_args: Vec<String> = ["run", "-d", "--rm", "--pull=never", "--network=none"]
            .map(String::from)
            .to_vec();
        run_args.extend(labels);
        run_args.extend(
            [
                "--name",
                &name,
                // The pause program needs nothing: no privilege, no file to write, no log.
                "--user=65534:65534",
                "--cap-drop=ALL",
                "--security-opt=no-new-privileges",
                "--read-only",
                "--log-driver=none",
                "--entrypoint",
                pause::PROGRAM_PATH,
                pause::IMAGE,
            ]
            .map(String::from),
        );
        let id = match self
            .docker
            .run("start the pause container", &run_args)
            .await
        {
            Ok(id) => id,
            Err(e) => {
                // It may exist without running (a failed start): remove it, best effort.
                let _ = self
                    .docker
                    .run("remove the pause container", ["rm", "-f", &name])
                    .await;
                return Err(e);
            }
        };
        let jail = DockerJail {
            docker: self.docker,
            instance: self.instance,
            pause: Some(id),
        };
        match jail.configure().await {
            Ok(listeners) => Ok((jail, listeners)),
            Err(e) => {
                jail.remove().await;
                Err(e)
            }
        }
    }

    fn labels(&self, role: &str) -> Vec<String> {
        labels(&self.instance, role)
    }
}

fn labels(instance: &Instance, role: &str) -> Vec<String> {
    vec![
        format!("--label={LABEL_PID}={}", instance.pid),
        format!("--label={LABEL_INSTANCE}={}", instance.label()),
        format!("--label={LABEL_ROLE}={role}"),
    ]
}

/// Imports the pause image unless the daemon has it.
async fn ensure_pause_image(docker: &Docker) -> Result<(), Error> {
    let present = || async {
        docker
            .run(
                "inspect the pause image",
                ["image", "inspect", "--format={{.Id}}", pause::IMAGE],
            )
            .await
            .is_ok()
    };
    if present().await {
        return Ok(());
    }
    // httpjails starting together on a fresh machine would each import it, leaving untagged
    // copies behind: one imports, the others wait for it and find the image.
    let _lock = import_lock().await;
    if present().await {
        return Ok(());
    }
    let arch = std::env::consts::ARCH;
    let program = pause::program(arch).ok_or_else(|| Error::UnsupportedArch {
        arch: arch.to_owned(),
    })?;
    let tar = pause::image_tar(&program);
    tracing::info!("importing the pause image {}", pause::IMAGE);
    docker
        .run_with_input(
            &format!("import the pause image {}", pause::IMAGE),
            [
                "import",
                &format!("--change=CMD [\"{}\"]", pause::PROGRAM_PATH),
                "-",
                pause::IMAGE,
            ],
            Some(&tar),
        )
        .await
        .map(drop)
}

/// An exclusive lock on `docker-pause-image.lock` in httpjail's private per-user directory
/// (it exists: the run directory was made in it). `None` when it cannot be had: importing
/// twice is harmless, only untidy.
async fn import_lock() -> Option<nix::fcntl::Flock<std::fs::File>> {
    let path = crate::runtime_dir::base_dir().join("docker-pause-image.lock");
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .ok()?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).ok()
    })
    .await
    .ok()
    .flatten()
}

/// A pause container whose network namespace is jailed, and the user's container once
/// spawned. [`Self::remove`] ends both; dropping it without that removes the pause container
/// in the background.
#[derive(Debug)]
pub struct DockerJail {
    docker: Docker,
    instance: Instance,
    pause: Option<String>,
}

impl DockerJail {
    async fn configure(&self) -> Result<JailListeners, Error> {
        let id = self.pause.as_deref().unwrap_or_default();
        let pid_text = self
            .docker
            .run(
                "find the pause container's process",
                ["inspect", "--format={{.State.Pid}}", id],
            )
            .await?;
        let pid = pid_text
            .parse::<u32>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| Error::Namespace {
                detail: format!("the pause container is not running (process `{pid_text}`)"),
            })?;
        tokio::task::spawn_blocking(move || netns::configure(pid))
            .await
            .map_err(|e| Error::Namespace {
                detail: format!("the set-up task failed: {e}"),
            })?
    }

    /// The `docker run` arguments: httpjail's own, then the user's (already checked by
    /// [`args::check`]). `ca_bundle` and `ca_dir` are the host files to mount.
    /// `extra_env`: variables the container gets before the user's own `--env` options (the
    /// `--secret` placeholders).
    pub fn run_args(
        &self,
        user_args: &[OsString],
        ca_bundle: &Path,
        ca_dir: &Path,
        extra_env: &[(OsString, OsString)],
    ) -> Vec<OsString> {
        let mut out: Vec<OsString> = vec!["run".into()];
        out.push(
            format!(
                "--network=container:{}",
                self.pause.as_deref().unwrap_or_default()
            )
            .into(),
        );
        out.extend(
            labels(&self.instance, ROLE_CONTAINER)
                .into_iter()
                .map(OsString::from),
        );
        // The strong jail drops CAP_NET_RAW too; Docker grants it by default.
        out.push("--cap-drop=NET_RAW".into());
        let mut mount = |host: &Path, inside: &str| {
            let mut v = OsString::from("--volume=");
            v.push(host.as_os_str());
            v.push(format!(":{inside}:ro"));
            out.push(v);
        };
        mount(ca_bundle, CA_BUNDLE_IN_CONTAINER);
        mount(ca_dir, CA_DIR_IN_CONTAINER);
        let env = crate::env::command_env(
            std::iter::empty(),
            &crate::env::CommandEnv {
                proxy_url: None,
                ca_bundle: Path::new(CA_BUNDLE_IN_CONTAINER),
                ca_dir: Path::new(CA_DIR_IN_CONTAINER),
            },
        );
        for (key, value) in env.iter().chain(extra_env) {
            let mut e = OsString::from("--env=");
            e.push(key);
            e.push("=");
            e.push(value);
            out.push(e);
        }
        out.extend(user_args.iter().cloned());
        out
    }

    /// Starts `docker run` with [`Self::run_args`], standard streams inherited. `interactive`:
    /// the client stays in our process group (it keeps the terminal); otherwise it gets its own,
    /// like a weak-mode command.
    /// `client_env` is the complete environment of the docker client: a bare `--env VAR` in
    /// the user's arguments copies `VAR` from it into the container, so it must hold the
    /// `--secret` placeholders, never the real values.
    pub fn spawn(
        &self,
        args: Vec<OsString>,
        interactive: bool,
        client_env: &[(OsString, OsString)],
    ) -> Result<ContainerRun, Error> {
        let mut command = tokio::process::Command::new(self.docker.program());
        command
            .args(&args)
            .env_clear()
            .envs(client_env.iter().map(|(k, v)| (k, v)));
        if !interactive {
            command.process_group(0);
        }
        let child = command.spawn().map_err(|e| Error::Docker {
            what: "run `docker run`".into(),
            detail: format!("cannot start `{}`: {e}", self.docker.program().display()),
        })?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map_or(Pid::from_raw(0), Pid::from_raw);
        Ok(ContainerRun {
            child,
            client: pid,
            docker: self.docker.clone(),
            instance: self.instance.label(),
        })
    }

    /// Ends the jail: the user's container is killed if it still runs (removed if it never
    /// started), the pause container is removed. Errors are logged: there is nothing left to
    /// do about them, and the pause container of a gone httpjail is removed by `--cleanup`.
    pub async fn remove(mut self) {
        if let Err(e) = stop_containers(&self.docker, &self.instance.label()).await {
            tracing::warn!("{e}");
        }
        if let Some(id) = self.pause.take()
            && let Err(e) = self
                .docker
                .run("remove the pause container", ["rm", "-f", &id])
                .await
        {
            tracing::warn!("{e}; `httpjail --cleanup` will remove it");
        }
    }
}

impl Drop for DockerJail {
    fn drop(&mut self) {
        if let Some(id) = self.pause.take() {
            self.docker.run_detached(vec!["rm".into(), "-f".into(), id]);
        }
    }
}

/// Kills the running user containers of httpjail instance `instance` and removes those that
/// never started.
async fn stop_containers(docker: &Docker, instance: &str) -> Result<(), Error> {
    let list = docker
        .run(
            "list the container",
            [
                "ps",
                "-a",
                &format!("--filter=label={LABEL_INSTANCE}={instance}"),
                &format!("--filter=label={LABEL_ROLE}={ROLE_CONTAINER}"),
                "--format={{.ID}} {{.State}}",
            ],
        )
        .await?;
    let (mut kill, mut remove) = (
        vec!["kill".to_owned()],
        vec!["rm".to_owned(), "-f".to_owned()],
    );
    for line in list.lines() {
        match line.split_once(' ') {
            Some((id, "running" | "paused" | "restarting")) => kill.push(id.to_owned()),
            Some((id, "created")) => remove.push(id.to_owned()),
            _ => {}
        }
    }
    if kill.len() > 1 {
        docker.run("stop the container", &kill).await?;
    }
    if remove.len() > 2 {
        docker
            .run("remove the container that never started", &remove)
            .await?;
    }
    Ok(())
}

/// The `docker run` client, supervised by [`crate::child::supervise`]. Signals go to the
/// container itself (`docker kill --signal`), whatever `--sig-proxy` says; before the
/// container exists they go to the client.
#[derive(Debug)]
pub struct ContainerRun {
    child: tokio::process::Child,
    client: Pid,
    docker: Docker,
    instance: String,
}

impl ContainerRun {
    /// `docker kill --signal=N` to this run's container from a thread (the caller is
    /// synchronous). Falls back to signalling the client when there is no
    /// container (yet) or Docker refuses.
    fn signal_container(&self, signal: Signal) {
        let docker = self.docker.clone();
        let instance = self.instance.clone();
        let client = self.client;
        let spawned = std::thread::Builder::new()
            .name("httpjail-docker-signal".into())
            .spawn(move || {
                let delivered = signal_container_blocking(&docker, &instance, signal);
                if !delivered && client.as_raw() > 0 {
                    let _ = nix::sys::signal::kill(client, signal);
                }
            });
        if spawned.is_err() && self.client.as_raw() > 0 {
            let _ = nix::sys::signal::kill(self.client, signal);
        }
    }
}

fn signal_container_blocking(docker: &Docker, instance: &str, signal: Signal) -> bool {
    let run = |args: &[String]| {
        std::process::Command::new(docker.program())
            .args(args)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let Some(ids) = run(&[
        "ps".into(),
        "-q".into(),
        format!("--filter=label={LABEL_INSTANCE}={instance}"),
        format!("--filter=label={LABEL_ROLE}={ROLE_CONTAINER}"),
    ]) else {
        return false;
    };
    let ids: Vec<String> = ids.split_whitespace().map(str::to_owned).collect();
    if ids.is_empty() {
        return false;
    }
    let mut kill = vec!["kill".to_owned(), format!("--signal={}", signal as i32)];
    kill.extend(ids);
    run(&kill).is_some()
}

impl Supervised for ContainerRun {
    async fn wait(&mut self) -> Outcome {
        match self.child.wait().await {
            Ok(status) => Outcome::from_status(status),
            Err(e) => Outcome::Failed(format!("waiting for `docker run` failed: {e}")),
        }
    }

    fn signal(&self, signal: Signal) {
        self.signal_container(signal);
    }

    fn kill(&self) {
        self.signal_container(Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_labels_round_trip() {
        let me = Instance::current();
        assert_eq!(me.pid, std::process::id());
        assert!(me.start_time > 0);
        assert!(!me.boot_id.is_empty());
        assert_eq!(Instance::parse(&me.label()), Some(me.clone()));
        assert!(!me.is_gone(), "we are alive");
        for bad in ["", "a/b", "a/1/x", "a/1/2/3", "a/-1/2"] {
            assert_eq!(Instance::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_instance_is_gone_when_its_process_is() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = start_time(pid).unwrap();
        child.wait().unwrap();
        let gone = Instance {
            boot_id: boot_id(),
            pid,
            start_time: start,
        };
        assert!(gone.is_gone());
        // Our PID with another start time: a reused PID.
        let reused = Instance {
            start_time: Instance::current().start_time + 1,
            ..Instance::current()
        };
        assert!(reused.is_gone());
        // Another boot (or another machine): never judged.
        let elsewhere = Instance {
            boot_id: "another-boot".into(),
            ..gone
        };
        assert!(!elsewhere.is_gone());
    }

    #[test]
    fn run_arguments_put_ours_first_and_the_users_untouched_last() {
        let mut jail = DockerJail {
            docker: Docker::at("/usr/bin/docker"),
            instance: Instance {
                boot_id: "b".into(),
                pid: 42,
                start_time: 7,
            },
            pause: Some("abc123".into()),
        };
        let user: Vec<OsString> = ["--rm", "-e", "X=1", "img", "sh", "-c", "exit 7"]
            .iter()
            .map(OsString::from)
            .collect();
        let placeholder = (
            OsString::from("TOKEN"),
            OsString::from("httpjail-secret-TOKEN-00"),
        );
        let args = jail.run_args(
            &user,
            Path::new("/tmp/run/ca-bundle.pem"),
            Path::new("/tmp/run/certs"),
            std::slice::from_ref(&placeholder),
        );
        let text: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(text[0], "run");
        assert_eq!(text[1], "--network=container:abc123");
        assert!(text.contains(&"--label=httpjail.pid=42".to_owned()));
        assert!(text.contains(&"--label=httpjail.instance=b/42/7".to_owned()));
        assert!(text.contains(&"--label=httpjail.role=container".to_owned()));
        assert!(text.contains(&"--cap-drop=NET_RAW".to_owned()));
        assert!(text.contains(
            &"--volume=/tmp/run/ca-bundle.pem:/etc/httpjail/ca-bundle.pem:ro".to_owned()
        ));
        assert!(text.contains(&"--volume=/tmp/run/certs:/etc/httpjail/certs:ro".to_owned()));
        for var in crate::env::CA_FILE_VARS {
            assert!(
                text.contains(&format!("--env={var}={CA_BUNDLE_IN_CONTAINER}")),
                "{var}: {text:?}"
            );
        }
        assert!(text.contains(&format!("--env=SSL_CERT_DIR={CA_DIR_IN_CONTAINER}")));
        // The --secret placeholder comes before the user's options (which may override it).
        let at = text
            .iter()
            .position(|a| a == "--env=TOKEN=httpjail-secret-TOKEN-00");
        assert!(at.is_some_and(|i| i < args.len() - user.len()), "{text:?}");
        assert_eq!(&args[args.len() - user.len()..], &user[..]);
        // Our own options pass our own check (no network option comes from the user).
        let ours = &args[1..args.len() - user.len()];
        let opts = args::options(ours).unwrap();
        assert!(opts.iter().any(|(n, _)| n == "network"));
        // Not a real container: nothing to remove when the jail is dropped.
        jail.pause = None;
    }
}
