//! The JavaScript engine (`--js EXPR`, `--js-file PATH`) on QuickJS-ng (rquickjs).
//!
//! This module owns the life of a JS rule: it reads and checks the rule at start-up (a syntax
//! error stops httpjail before anything runs), evaluates it once per request, and, for
//! `--js-file`, applies edits to the file while httpjail runs. It turns what the rule produced
//! into an [`Answer`](super::answer::Answer) and lets [`answer::decide`](super::answer::decide)
//! interpret it; it never interprets answers itself. It must not give a rule any access to
//! files, the network, processes, time limits or memory beyond its own.
//!
//! - `sandbox`: one QuickJS runtime and context per thread, the frozen global environment,
//!   deadlines, memory and stack limits, and converting values.
//! - `memory`: the allocator of each runtime, which enforces the memory limit.
//! - `watch`: the `--js-file` watcher thread (inotify on the file's directory).
//!
//! # How a rule runs
//!
//! The rule's text is compiled as strict-mode code whose completion value (the value of the last
//! expression statement) is the answer, so `const a = [...]; a.includes(r.host)` works. It is
//! compiled inside a block (`{` *rule* `}`), which makes its `let`, `const`, `class` and function
//! declarations local to each evaluation. A rule that declares a top-level `var` (which a block
//! cannot contain) is instead run as strict direct `eval` code, where `var` is local too; such a
//! rule is parsed again for every request (several microseconds more) and httpjail says so at
//! start-up (at `-v`). A rule that is a single object literal (`{allow: true}`) may be written
//! without the parentheses JavaScript would otherwise need.
//!
//! # What strict mode and the frozen environment refuse
//!
//! Rules are strict-mode code, so these are errors (at start-up when they are syntax): `with`,
//! legacy octal literals (`010`), assigning an undeclared variable (`x = 1` without `let`),
//! `delete` of a plain name, duplicate parameter names, `arguments.callee`. `return` outside a
//! function is a syntax error as in any script: the rule's value is its last expression.
//!
//! The built-ins are frozen, so adding or changing their properties (`Array.prototype.x = ...`,
//! `Math.max = ...`, `globalThis.x = ...`, `Error.stackTraceLimit = 0`) throws a `TypeError` and
//! the request is denied. Assigning, on an object of your own, a property that a built-in
//! prototype already has (`obj.valueOf = ...`) throws as well, except for `name` and `message`
//! (of errors) and `toString`, which work as usual; for others use an object literal or
//! `Object.defineProperty`. There are no timers, no `import`, no typed arrays and no `WeakRef`;
//! promise jobs a rule queues run before its evaluation ends, within its deadline.
//!
//! Isolation between requests does not depend on the rule: the context's intrinsics and
//! `globalThis` are deep-frozen when the context is created, so nothing an evaluation does can
//! be seen by the next one (see `prelude.js`). The one exception is the position in the
//! `Math.random` sequence, which QuickJS keeps per context.
//!
//! # Hot path
//!
//! [`JsEngine::evaluate`] runs on the calling thread, in that thread's QuickJS context. The
//! compiled rule is cached per thread, keyed by the engine and a generation counter that a reload
//! bumps; checking it is one atomic load, so evaluations on different threads never wait for each
//! other.

mod memory;
mod sandbox;
mod watch;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::{Decision, Error, RuleRequest};
use crate::config::JsSource;

/// Limits of one evaluation.
#[derive(Debug, Clone, Copy)]
pub struct JsOptions {
    /// How long one evaluation may run; past it the request is denied (`engine_timeout`).
    pub deadline: Duration,
    /// The most memory the QuickJS runtime of one thread may hold; past it the evaluation fails
    /// and the request is denied (`engine_error`). 0 means no limit.
    pub memory_limit: usize,
}

/// A compiled JavaScript rule. `Send + Sync`; every thread that calls [`JsEngine::evaluate`]
/// gets its own QuickJS context.
#[derive(Debug)]
pub struct JsEngine {
    shared: Arc<Shared>,
    /// Stops (and joins) the `--js-file` watcher thread when the engine is dropped.
    _watcher: Option<watch::Watcher>,
}

/// What the engine, its watcher and every thread's cache share.
#[derive(Debug)]
struct Shared {
    /// Tells engines apart in the per-thread caches.
    id: u64,
    options: JsOptions,
    /// `--js` or `--js-file <path>`, for messages.
    origin: String,
    /// The generation of `current`, readable without the lock.
    generation: AtomicU64,
    /// The rule now in force. Locked only to install a new version or to fetch one after the
    /// generation changed (once per thread per reload), never on the hot path.
    current: Mutex<Arc<Version>>,
}

#[derive(Debug)]
struct Version {
    generation: u64,
    program: Arc<sandbox::Program>,
}

impl Shared {
    fn current(&self) -> Arc<Version> {
        Arc::clone(&self.current.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Makes `program` the rule for every request from now on.
    fn install(&self, program: sandbox::Program) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let generation = current.generation + 1;
        *current = Arc::new(Version {
            generation,
            program: Arc::new(program),
        });
        // Published after `current` is replaced, under the lock: a thread that sees the new
        // generation and then takes the lock finds (at least) this version.
        self.generation.store(generation, Ordering::Release);
    }
}

static NEXT_ENGINE_ID: AtomicU64 = AtomicU64::new(1);

impl JsEngine {
    /// Reads (for `--js-file`) and compiles the rule. Fails with the line and column of a syntax
    /// error, or when the file cannot be read. For `--js-file`, also starts watching the file.
    pub fn compile(source: &JsSource, options: JsOptions) -> Result<Self, Error> {
        let (origin, text, path) = match source {
            JsSource::Inline(text) => ("--js".to_owned(), text.clone(), None),
            JsSource::File(path) => (file_origin(path), read_rule_file(path)?, Some(path.clone())),
        };
        let program = sandbox::prepare(&origin, &text, options)?;
        let shared = Arc::new(Shared {
            id: NEXT_ENGINE_ID.fetch_add(1, Ordering::Relaxed),
            options,
            origin,
            generation: AtomicU64::new(0),
            current: Mutex::new(Arc::new(Version {
                generation: 0,
                program: Arc::new(program),
            })),
        });
        let watcher = match path {
            Some(path) => watch::Watcher::start(path, text, Arc::clone(&shared)),
            None => None,
        };
        Ok(Self {
            shared,
            _watcher: watcher,
        })
    }

    /// Decides one request. Never fails and never blocks on other threads: a syntax error
    /// cannot happen here, and an exception, a timeout or exhausted memory is a deny.
    pub fn evaluate(&self, request: &RuleRequest) -> Decision {
        sandbox::evaluate(&self.shared, request)
    }

    /// How many times an edit of the `--js-file` replaced the rule since start-up.
    pub fn reloads(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }
}

fn file_origin(path: &Path) -> String {
    format!("--js-file {}", path.display())
}

/// Reads a rule file; the error names the path (exit 125 at start-up).
fn read_rule_file(path: &Path) -> Result<String, Error> {
    let read_error = |source| Error::JsFileRead {
        path: PathBuf::from(path),
        source,
    };
    let bytes = std::fs::read(path).map_err(read_error)?;
    String::from_utf8(bytes).map_err(|e| {
        read_error(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the file is not UTF-8 text ({e})"),
        ))
    })
}
