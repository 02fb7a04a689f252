//! The `--js-file` watcher: applies edits of the rule file while httpjail runs.
//!
//! This module owns one background thread per `--js-file` engine. It watches the file's parent
//! directory with inotify (so that editors that save by writing a new file and renaming it over
//! the old one, and symlink swaps such as Kubernetes ConfigMaps, are seen), re-reads the file
//! after any change in that directory, and installs the new rule if its content changed and it
//! compiles. It never replaces a working rule with a broken or missing one: such edits are
//! reported on stderr and the previous rule stays in force. It must not block evaluations: a
//! reload only swaps an `Arc` and bumps the generation that each thread's cache checks.
//!
//! Latency: an edit is in force for the next request once the watcher has read the event and
//! compiled the file: inotify delivery plus one compile, typically well under a millisecond
//! for a rule file of a few kilobytes (`benches/rule_js.rs` measured a median of about 25 µs
//! from the end of the write to the first evaluation that used the new rule, with a few
//! milliseconds at worst when both cores were busy). Each thread then compiles the new version
//! on its next evaluation (a few microseconds).
//!
//! The thread stops, and is joined, when the engine (and so the [`Watcher`]) is dropped.

use std::io::ErrorKind;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use super::{Shared, read_rule_file, sandbox};
use crate::rules::Error;

/// How long a vanished file may stay missing before we say so: editors that save by deleting
/// and re-creating the file bring it back within milliseconds.
const MISSING_GRACE: Duration = Duration::from_millis(200);

/// The watcher thread's name (at most 15 bytes: Linux truncates longer ones).
pub(super) const THREAD_NAME: &str = "httpjail-jsfile";

/// Handle to the watcher thread; dropping it stops and joins the thread.
#[derive(Debug)]
pub(super) struct Watcher {
    /// Writing to (or closing) this pipe wakes the thread up to stop.
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Starts watching `path`, whose current content is `text`. Returns `None`, after a
    /// warning, when the file cannot be watched: the rule still works, only edits are not
    /// applied.
    pub(super) fn start(path: PathBuf, text: String, shared: Arc<Shared>) -> Option<Self> {
        match Self::try_start(path, text, &shared) {
            Ok(watcher) => Some(watcher),
            Err(e) => {
                tracing::warn!(
                    "{}: cannot watch the file for changes ({e}); edits will apply only after a \
                     restart",
                    shared.origin
                );
                None
            }
        }
    }

    fn try_start(path: PathBuf, text: String, shared: &Arc<Shared>) -> Result<Self, String> {
        if path.file_name().is_none() {
            return Err("the path does not name a file".to_owned());
        }
        // Absolute, so that a later change of httpjail's working directory cannot redirect the
        // re-reads; symlinks are still followed afresh on every read.
        let path = std::path::absolute(&path).unwrap_or(path);
        let directory = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // Non-blocking and close-on-exec: the fd is only read after poll() says so, and must
        // not leak into the jailed command.
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .map_err(|e| format!("inotify_init: {e}"))?;
        inotify
            .add_watch(
                &directory,
                AddWatchFlags::IN_CLOSE_WRITE
                    | AddWatchFlags::IN_MOVED_TO
                    | AddWatchFlags::IN_MOVED_FROM
                    | AddWatchFlags::IN_CREATE
                    | AddWatchFlags::IN_DELETE
                    | AddWatchFlags::IN_DELETE_SELF
                    | AddWatchFlags::IN_MOVE_SELF
                    | AddWatchFlags::IN_ONLYDIR,
            )
            .map_err(|e| format!("watch {}: {e}", directory.display()))?;
        let (stop_read, stop_write) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        let state = WatchState {
            path,
            last_text: text,
            missing_since: None,
            reported_missing: false,
            shared: Arc::clone(shared),
        };
        // The thread reports where the code that created the engine reports (a scoped
        // subscriber in tests, the global one otherwise).
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.to_owned())
            .spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || state.run(&inotify, &stop_read));
            })
            .map_err(|e| format!("cannot start the watcher thread: {e}"))?;
        Ok(Self {
            stop: Some(stop_write),
            thread: Some(thread),
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // Closing the write end makes the read end readable (end of file): the thread wakes
        // up and returns.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct WatchState {
    path: PathBuf,
    /// The content last read (applied or not), so that unrelated events change nothing and a
    /// broken edit is reported once.
    last_text: String,
    /// When the file was first seen missing, while waiting [`MISSING_GRACE`].
    missing_since: Option<Instant>,
    reported_missing: bool,
    shared: Arc<Shared>,
}

impl WatchState {
    fn run(mut self, inotify: &Inotify, stop: &OwnedFd) {
        let mut watching = true;
        loop {
            let timeout = match self.missing_since {
                Some(since) => PollTimeout::try_from(MISSING_GRACE.saturating_sub(since.elapsed()))
                    .unwrap_or(PollTimeout::ZERO),
                None => PollTimeout::NONE,
            };
            let mut fds = vec![PollFd::new(stop.as_fd(), PollFlags::POLLIN)];
            if watching {
                fds.push(PollFd::new(inotify.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(
                        "{}: stopped watching the file for changes: poll: {e}",
                        self.shared.origin
                    );
                    return;
                }
            }
            if fds[0].any().unwrap_or(true) {
                return;
            }
            let inotify_ready = fds.get(1).is_some_and(|fd| fd.any().unwrap_or(false));
            if inotify_ready {
                match drain(inotify) {
                    Ok(Events { relevant, gone }) => {
                        if gone {
                            tracing::warn!(
                                "{}: the directory of the file was removed or moved; edits \
                                 will apply only after a restart",
                                self.shared.origin
                            );
                            watching = false;
                        }
                        if relevant {
                            self.check();
                        }
                    }
                    Err(e) => {
                        tracing::warn!(
                            "{}: stopped watching the file for changes: {e}",
                            self.shared.origin
                        );
                        watching = false;
                    }
                }
            } else if self.missing_since.is_some() {
                self.check();
            }
        }
    }

    /// Re-reads the file and installs it if it changed and compiles.
    fn check(&mut self) {
        let origin = &self.shared.origin;
        let text = match read_rule_file(&self.path) {
            Ok(text) => text,
            Err(Error::JsFileRead { source, .. }) if source.kind() == ErrorKind::NotFound => {
                self.note_missing();
                return;
            }
            Err(e) => {
                tracing::warn!(
                    "{origin}: edit not applied: {}; keeping the previous rule",
                    cause(&e)
                );
                return;
            }
        };
        self.missing_since = None;
        self.reported_missing = false;
        if text == self.last_text {
            return;
        }
        self.last_text = text;
        match sandbox::prepare(origin, &self.last_text, self.shared.options) {
            Ok(program) => {
                self.shared.install(program);
                tracing::info!("{origin}: the edited rule is now in force");
            }
            Err(e) => {
                tracing::warn!(
                    "{origin}: edit not applied: {}; keeping the previous rule",
                    cause(&e)
                );
            }
        }
    }

    fn note_missing(&mut self) {
        match self.missing_since {
            None => self.missing_since = Some(Instant::now()),
            Some(since) if since.elapsed() >= MISSING_GRACE => {
                self.missing_since = None;
                if !self.reported_missing {
                    self.reported_missing = true;
                    tracing::warn!(
                        "{}: the file was deleted; keeping the previous rule",
                        self.shared.origin
                    );
                }
            }
            Some(_) => {}
        }
    }
}

/// What a batch of inotify events means for us.
struct Events {
    /// Something in the directory changed: re-read the file.
    relevant: bool,
    /// The directory itself went away: no more events will come.
    gone: bool,
}

/// Reads every pending event. Any entry of the directory counts, not only the file's own name:
/// the file may be a symlink whose target is swapped by renaming another entry.
fn drain(inotify: &Inotify) -> Result<Events, Errno> {
    let mut events = Events {
        relevant: false,
        gone: false,
    };
    loop {
        match inotify.read_events() {
            Ok(batch) if batch.is_empty() => return Ok(events),
            Ok(batch) => {
                for event in batch {
                    if event.mask.intersects(
                        AddWatchFlags::IN_DELETE_SELF
                            | AddWatchFlags::IN_MOVE_SELF
                            | AddWatchFlags::IN_IGNORED,
                    ) {
                        events.gone = true;
                    }
                    events.relevant = true;
                }
            }
            Err(Errno::EAGAIN) => return Ok(events),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// The error without the origin prefix (the caller's message names the file already).
fn cause(error: &Error) -> String {
    match error {
        Error::JsSyntax {
            line,
            column,
            message,
            ..
        } => format!("JavaScript syntax error at line {line}, column {column}: {message}"),
        Error::JsCompile { message, .. } => message.clone(),
        Error::JsFileRead { source, .. } => format!("cannot read the file: {source}"),
        other => other.to_string(),
    }
}
