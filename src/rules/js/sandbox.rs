//! One QuickJS runtime and context per thread, and everything that happens inside them.
//!
//! This module owns the QuickJS side of a rule: creating the frozen environment
//! (`prelude.js`), compiling, running with a deadline and memory and stack limits, converting the
//! result to an [`Answer`], and reporting exceptions on stderr. It keeps no state between
//! evaluations that a rule could observe, and it must never let a failure become an allow.
//!
//! Why per thread: a QuickJS runtime is single-threaded, and a runtime shared behind a lock
//! would serialise every request. Each thread (tokio worker, watcher, test thread) creates its
//! runtime on first use and keeps it, with the compiled rules it has seen, in a thread-local.

use std::cell::{Cell, RefCell};
use std::ffi::{CStr, CString};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rquickjs::context::{EvalOptions, intrinsic};
use rquickjs::convert::Coerced;
use rquickjs::{Context, Ctx, Function, Object, Persistent, Runtime, Value, qjs};
use serde_json::Value as Json;

use super::memory::{Budget, LimitedAllocator};
use super::{JsOptions, Shared, Version};
use crate::diagnostics::RULE_LOG_TARGET;
use crate::rules::answer::{self, Answer};
use crate::rules::{Decision, DenyReason, Error, RuleRequest};

/// The file name QuickJS gives the rule in positions and stack traces.
const RULE_FILE: &CStr = c"<rule>";
/// The file name QuickJS gives code run by `eval` (used for rules with top-level `var`).
const EVAL_FILE: &str = "<input>";
/// The prelude's own name in stack traces.
const PRELUDE_FILE: &str = "<httpjail prelude>";
const PRELUDE: &str = include_str!("prelude.js");
/// Runs a rule as strict direct-eval code, where top-level `var` is local to the evaluation.
/// Created outside the prelude so that the rule sees none of the prelude's variables.
const REPARSE_HELPER: &str = "(function () { 'use strict'; return eval(arguments[0]); })";
/// A variable no rule declares, put after the rule to find out whether it declares any
/// top-level `var` (see [`Sandbox::declares_var`]).
const PROBE_VAR: &str = "__httpjail_var_probe_7f3a__";

/// QuickJS's own stack limit: deep recursion (about 1,500 nested JS calls) becomes a
/// `RangeError` long before the thread's stack (2 MiB for tokio workers and test threads) runs
/// out.
const STACK_SIZE: usize = 1024 * 1024;
/// Compiled rules kept per thread (one per engine; more than one only in tests and `replay`).
const MAX_CACHED_RULES: usize = 8;
/// `console.*` lines one evaluation may write; more are dropped so that a loop cannot flood
/// the terminal.
const MAX_CONSOLE_LINES: u32 = 32;

/// How the rule's text is run on each thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Compiled once per thread to bytecode and run as global strict code (block-wrapped or
    /// parenthesised): the fast path.
    Compiled,
    /// Run as strict direct `eval` code, parsed on each evaluation: for rules with a top-level
    /// `var`, which must stay local to one evaluation.
    Reparsed,
}

/// A checked rule, ready to be compiled on any thread.
#[derive(Debug)]
pub(super) struct Program {
    /// The rule as the user wrote it (to turn positions into the user's columns).
    text: String,
    /// What each thread compiles (`Compiled`) or evaluates (`Reparsed`).
    code: String,
    mode: Mode,
    /// Bytes httpjail put before the rule on its first line (`{` or `(`).
    first_line_shift: u32,
}

impl Program {
    /// Maps a QuickJS position (1-based line, 1-based byte column, in `code`) to the user's
    /// line and character column.
    fn user_position(&self, line: u32, column: u32) -> (u32, u32) {
        let byte_column = if line == 1 {
            column.saturating_sub(self.first_line_shift).max(1)
        } else {
            column
        };
        (line, char_column(&self.text, line, byte_column))
    }
}

/// Checks and prepares a rule on the calling thread: syntax errors (with the user's line and
/// column) are found here, at start-up or when a `--js-file` edit is read.
pub(super) fn prepare(origin: &str, text: &str, options: JsOptions) -> Result<Program, Error> {
    if text.contains('\0') {
        return Err(Error::JsCompile {
            origin: origin.to_owned(),
            message: "the rule contains a NUL character".to_owned(),
        });
    }
    let engine_error = |message: String| Error::JsCompile {
        origin: origin.to_owned(),
        message: format!("cannot start the JavaScript engine: {message}"),
    };
    SANDBOX
        .try_with(|slot| {
            let mut slot = slot
                .0
                .try_borrow_mut()
                .map_err(|_| engine_error("it is already in use on this thread".to_owned()))?;
            let sandbox = match slot.as_mut() {
                Some(sandbox) => sandbox,
                None => slot.insert(Sandbox::new(options.memory_limit).map_err(engine_error)?),
            };
            sandbox.set_memory_limit(options.memory_limit);
            sandbox.prepare(origin, text, options.deadline)
        })
        .map_err(|_| engine_error("this thread is exiting".to_owned()))?
}

/// Evaluates the engine's current rule for `request` on this thread. Every failure is a deny.
pub(super) fn evaluate(shared: &Shared, request: &RuleRequest) -> Decision {
    SANDBOX
        .try_with(|slot| {
            let Ok(mut slot) = slot.0.try_borrow_mut() else {
                // Only reachable if a rule's evaluation re-entered the engine on this thread.
                return engine_failure("the JavaScript engine is already in use on this thread");
            };
            let outcome =
                catch_unwind(AssertUnwindSafe(|| evaluate_in(&mut slot, shared, request)));
            outcome.unwrap_or_else(|_| {
                // A bug in httpjail or rquickjs: abandon this thread's runtime (its state is
                // unknown) and deny. The next evaluation starts a fresh one.
                if let Some(sandbox) = slot.take() {
                    std::mem::forget(sandbox);
                }
                tracing::error!(
                    "{}: the JavaScript engine panicked; request denied",
                    shared.origin
                );
                engine_failure("the JavaScript engine failed")
            })
        })
        .unwrap_or_else(|_| {
            engine_failure("the JavaScript engine is not available on an exiting thread")
        })
}

fn engine_failure(message: &str) -> Decision {
    Decision::deny_with(DenyReason::EngineError, message)
}

fn evaluate_in(slot: &mut Option<Sandbox>, shared: &Shared, request: &RuleRequest) -> Decision {
    let options = shared.options;
    let sandbox = match slot {
        Some(sandbox) => sandbox,
        None => match Sandbox::new(options.memory_limit) {
            Ok(sandbox) => slot.insert(sandbox),
            Err(e) => {
                tracing::warn!(
                    "{}: cannot start the JavaScript engine on this thread: {e}; request denied",
                    shared.origin
                );
                return engine_failure("the JavaScript engine could not start");
            }
        },
    };
    sandbox.set_memory_limit(options.memory_limit);
    let generation = shared.generation.load(Ordering::Acquire);
    let index = match sandbox.find(shared.id, generation) {
        Some(index) => index,
        None => {
            let version = shared.current();
            match sandbox.find(shared.id, version.generation) {
                Some(index) => index,
                None => match sandbox.load(shared.id, &version) {
                    Ok(index) => index,
                    Err(e) => {
                        tracing::warn!(
                            "{}: cannot compile the rule on this thread: {e}; request denied",
                            shared.origin
                        );
                        return engine_failure("the rule could not be compiled");
                    }
                },
            }
        }
    };
    let (decision, health) = sandbox.run(index, shared, request);
    match health {
        Health::Good => {}
        Health::CheckMemory => {
            if sandbox.memory_is_stuck()
                && let Some(old) = slot.take()
            {
                tracing::warn!(
                    "{}: the JavaScript runtime of this thread kept {} MiB after the rule ran out \
                     of memory; it was replaced",
                    shared.origin,
                    old.memory.used() / (1024 * 1024)
                );
                old.abandon();
            }
        }
        Health::Replace => {
            if let Some(old) = slot.take() {
                old.release();
            }
        }
    }
    decision
}

/// What the thread's runtime needs after an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Good,
    /// The evaluation ran out of memory: check that the memory came back.
    CheckMemory,
    /// Work is left in the runtime (promise jobs past the deadline): start a fresh one.
    Replace,
}

thread_local! {
    static SANDBOX: Slot = const { Slot(RefCell::new(None)) };
}

/// The thread-local slot; see [`Sandbox::release`] for what happens at thread exit.
struct Slot(RefCell<Option<Sandbox>>);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(sandbox) = self.0.get_mut().take() {
            sandbox.release();
        }
    }
}

/// Per-evaluation limits, shared with the interrupt handler and `console`.
#[derive(Debug, Default)]
struct Limits {
    deadline: Cell<Option<Instant>>,
    interrupted: Cell<bool>,
    console_lines: Cell<u32>,
}

impl Limits {
    fn start(&self, budget: Duration) {
        self.interrupted.set(false);
        self.console_lines.set(0);
        self.deadline.set(Instant::now().checked_add(budget));
    }

    fn stop(&self) {
        self.deadline.set(None);
    }

    fn expired(&self) -> bool {
        self.deadline.get().is_some_and(|d| Instant::now() >= d)
    }

    /// Called by QuickJS every few thousand operations; `true` raises an uncatchable error.
    fn should_interrupt(&self) -> bool {
        let expired = self.expired();
        if expired {
            self.interrupted.set(true);
        }
        expired
    }

    /// One `console.*` call of the rule, as diagnostics lines.
    fn console(&self, text: &str) {
        for line in answer::cap_message(text).split('\n') {
            let written = self.console_lines.get();
            if written >= MAX_CONSOLE_LINES {
                return;
            }
            self.console_lines.set(written + 1);
            if written + 1 == MAX_CONSOLE_LINES {
                tracing::info!(
                    target: RULE_LOG_TARGET,
                    "(more console output of this evaluation was dropped)"
                );
            } else {
                tracing::info!(target: RULE_LOG_TARGET, "{line}");
            }
        }
    }
}

/// One compiled rule in a thread's cache.
struct CachedRule {
    engine: u64,
    generation: u64,
    program: Arc<Program>,
    /// Bytecode (`Compiled`) or the source string (`Reparsed`).
    code: Persistent<Value<'static>>,
}

/// A thread's QuickJS runtime and context.
///
/// Field order is drop order: every handle into the runtime is released before the context and
/// the runtime themselves (QuickJS aborts if an object outlives its runtime).
struct Sandbox {
    rules: Vec<CachedRule>,
    set_request: Persistent<Function<'static>>,
    reparse: Persistent<Function<'static>>,
    context: Context,
    runtime: Runtime,
    limits: Rc<Limits>,
    memory: Rc<Budget>,
    memory_limit: usize,
    /// Memory in use right after creation, to tell whether a failed evaluation gave it back.
    baseline: usize,
}

impl Sandbox {
    fn new(memory_limit: usize) -> Result<Self, String> {
        let memory = Rc::new(Budget::default());
        memory.set_limit(memory_limit);
        let runtime = Runtime::new_with_alloc(LimitedAllocator::new(Rc::clone(&memory)))
            .map_err(|e| e.to_string())?;
        runtime.set_max_stack_size(STACK_SIZE);
        let limits = Rc::new(Limits::default());
        let interrupt = Rc::clone(&limits);
        runtime.set_interrupt_handler(Some(Box::new(move || interrupt.should_interrupt())));
        // The core language only: no std/os modules (files, network, processes), no timers,
        // no typed arrays or Atomics (which can block), no WeakRef/FinalizationRegistry
        // (callbacks outside any evaluation). Promise stays: async functions need it, and the
        // jobs an evaluation queues are run before it ends.
        let context = Context::custom::<(
            intrinsic::Date,
            intrinsic::Eval,
            intrinsic::RegExpCompiler,
            intrinsic::RegExp,
            intrinsic::Json,
            intrinsic::MapSet,
            intrinsic::Proxy,
            intrinsic::Promise,
        )>(&runtime)
        .map_err(|e| e.to_string())?;
        let console = Rc::clone(&limits);
        let (set_request, reparse) = context.with(|ctx| {
            let init = || -> rquickjs::Result<_> {
                let mut options = EvalOptions::default();
                options.strict = true;
                options.filename = Some(PRELUDE_FILE.to_owned());
                let prelude: Function<'_> = ctx.eval_with_options(PRELUDE, options)?;
                let emit = Function::new(ctx.clone(), move |text: String| console.console(&text))?;
                let set_request: Function<'_> = prelude.call((emit,))?;
                let reparse: Function<'_> = ctx.eval(REPARSE_HELPER)?;
                Ok((
                    Persistent::save(&ctx, set_request),
                    Persistent::save(&ctx, reparse),
                ))
            };
            init().map_err(|e| match e {
                rquickjs::Error::Exception => describe_exception(&ctx, ctx.catch()).text(),
                other => other.to_string(),
            })
        })?;
        runtime.run_gc();
        let baseline = memory.used();
        Ok(Self {
            rules: Vec::new(),
            set_request,
            reparse,
            context,
            runtime,
            limits,
            memory,
            memory_limit,
            baseline,
        })
    }

    fn set_memory_limit(&mut self, limit: usize) {
        if self.memory_limit != limit {
            self.memory.set_limit(limit);
            self.memory_limit = limit;
        }
    }

    /// Frees the runtime at thread exit. In release builds it is left to the OS instead:
    /// QuickJS asserts that nothing leaked when a runtime is freed, and a leak after an
    /// out-of-memory path must not turn into an abort (and a wrong exit code) while httpjail
    /// shuts down. Debug builds free it, so that tests catch our own reference leaks.
    fn release(self) {
        if cfg!(debug_assertions) {
            drop(self);
        } else {
            std::mem::forget(self);
        }
    }

    /// Gives up a runtime whose state is suspect (see [`Sandbox::release`] for why it is not
    /// freed).
    fn abandon(self) {
        std::mem::forget(self);
    }

    /// Whether memory stayed in use after a failed evaluation and a garbage collection.
    fn memory_is_stuck(&self) -> bool {
        self.runtime.run_gc();
        self.memory_limit != 0
            && self.memory.used() > self.baseline.saturating_add(self.memory_limit / 4)
    }

    fn find(&self, engine: u64, generation: u64) -> Option<usize> {
        self.rules
            .iter()
            .position(|r| r.engine == engine && r.generation == generation)
    }

    /// Compiles `version` of `engine`'s rule on this thread and caches it.
    fn load(&mut self, engine: u64, version: &Version) -> Result<usize, String> {
        let program = Arc::clone(&version.program);
        let code = self.context.with(|ctx| -> Result<_, String> {
            let value = match program.mode {
                Mode::Compiled => compile_only(&ctx, &program.code)
                    .map_err(|exception| describe_exception(&ctx, exception).text())?,
                Mode::Reparsed => rquickjs::String::from_str(ctx.clone(), &program.code)
                    .map_err(|e| e.to_string())?
                    .into_value(),
            };
            Ok(Persistent::save(&ctx, value))
        })?;
        self.rules.retain(|r| r.engine != engine);
        if self.rules.len() >= MAX_CACHED_RULES {
            self.rules.remove(0);
        }
        self.rules.push(CachedRule {
            engine,
            generation: version.generation,
            program,
            code,
        });
        Ok(self.rules.len() - 1)
    }

    /// Checks a rule and decides how to run it (see the module docs of `js`).
    fn prepare(&self, origin: &str, text: &str, deadline: Duration) -> Result<Program, Error> {
        self.memory.reset_exhausted();
        self.prepare_in_context(origin, text, deadline)
            .map_err(|e| match e {
                Error::JsSyntax { .. } | Error::JsCompile { .. } if self.memory.exhausted() => {
                    Error::JsCompile {
                        origin: origin.to_owned(),
                        message: format!(
                            "compiling it needs more memory than the limit ({} MiB)",
                            self.memory_limit / (1024 * 1024)
                        ),
                    }
                }
                other => other,
            })
    }

    fn prepare_in_context(
        &self,
        origin: &str,
        text: &str,
        deadline: Duration,
    ) -> Result<Program, Error> {
        self.context.with(|ctx| {
            let program = |code: String, mode: Mode, first_line_shift: u32| Program {
                text: text.to_owned(),
                code,
                mode,
                first_line_shift,
            };
            // 1. A lone object literal, which JavaScript would read as a block.
            if starts_with_brace(text) {
                let expression = format!("({text}\n)");
                if compile_only(&ctx, &expression).is_ok() {
                    return Ok(program(expression, Mode::Compiled, 1));
                }
            }
            // 2. The rule exactly as written, so that positions are the user's own.
            let as_written = program(text.to_owned(), Mode::Reparsed, 0);
            compile_only(&ctx, text)
                .map_err(|e| syntax_error(origin, describe_exception(&ctx, e), &as_written))?;
            // 3. Statements in a block: declarations are local to each evaluation.
            let block = program(format!("{{{text}\n}}"), Mode::Compiled, 1);
            compile_only(&ctx, &block.code)
                .map_err(|e| syntax_error(origin, describe_exception(&ctx, e), &block))?;
            // 4. A block cannot hold a top-level `var`; such rules run as strict eval code.
            if let Some(name) = self.declares_var(&ctx, &block.code, deadline) {
                tracing::info!(
                    "{origin}: the rule declares `var {name}` at the top level, so it is parsed \
                     again for every request; declare it with `let` or `const` to compile the \
                     rule once"
                );
                return Ok(as_written);
            }
            Ok(block)
        })
    }

    /// Whether the block-wrapped rule declares a top-level `var` (and the first such name).
    ///
    /// Without running the rule: the program `{rule} var PROBE;` starts by checking, in order
    /// of declaration, that each of its global `var`s can be created, and `globalThis` is
    /// frozen, so the first check fails before any statement of the rule runs. If it names
    /// PROBE, the rule declared none.
    fn declares_var(&self, ctx: &Ctx<'_>, block: &str, deadline: Duration) -> Option<String> {
        let probe = format!("{block}\nvar {PROBE_VAR};");
        let bytecode = compile_only(ctx, &probe).ok()?;
        // The deadline only guards against a QuickJS that behaves differently from the above.
        self.limits.start(deadline);
        let result = run_bytecode(ctx, &bytecode);
        self.limits.stop();
        let exception = match result {
            Ok(_) => return None,
            Err(()) => ctx.catch(),
        };
        let message = describe_exception(ctx, exception).message?;
        let name = message
            .strip_prefix("cannot define variable '")?
            .strip_suffix('\'')?;
        (name != PROBE_VAR).then(|| name.to_owned())
    }

    /// Runs cached rule `index` for `request` under the engine's limits.
    fn run(&self, index: usize, shared: &Shared, request: &RuleRequest) -> (Decision, Health) {
        let Some(rule) = self.rules.get(index) else {
            return (engine_failure("the rule is not loaded"), Health::Good);
        };
        self.limits.start(shared.options.deadline);
        self.memory.reset_exhausted();
        let outcome = self.context.with(|ctx| {
            let result = self.run_rule(&ctx, rule, request);
            let outcome = match result {
                Ok(value) => match to_answer(&ctx, value) {
                    Ok(Converted::Answer(answer)) => (answer::decide(&answer), Health::Good),
                    Ok(Converted::Invalid(why)) => (
                        Decision::deny_with(DenyReason::InvalidAnswer, why),
                        Health::Good,
                    ),
                    Err(e) => self.failure(&ctx, e, rule, shared, " in its answer"),
                },
                Err(e) => self.failure(&ctx, e, rule, shared, ""),
            };
            if drain_jobs(&ctx, &self.limits) {
                outcome
            } else {
                let ms = shared.options.deadline.as_millis();
                tracing::warn!(
                    "{}: the promise jobs of the rule did not finish within {ms} ms; request \
                     denied",
                    shared.origin
                );
                (
                    Decision::deny_with(
                        DenyReason::EngineTimeout,
                        format!("the rule did not finish within {ms} ms"),
                    ),
                    Health::Replace,
                )
            }
        });
        self.limits.stop();
        outcome
    }

    fn run_rule<'js>(
        &self,
        ctx: &Ctx<'js>,
        rule: &CachedRule,
        request: &RuleRequest,
    ) -> rquickjs::Result<Value<'js>> {
        let set_request = self.set_request.clone().restore(ctx)?;
        let requester_ip = request.requester_ip.to_string();
        set_request.call::<_, ()>((
            request.url.as_str(),
            request.method.as_str(),
            request.scheme.as_str(),
            request.host.as_str(),
            request.path.as_str(),
            request.port,
            requester_ip.as_str(),
        ))?;
        let code = rule.code.clone().restore(ctx)?;
        match rule.program.mode {
            Mode::Compiled => run_bytecode(ctx, &code).map_err(|()| rquickjs::Error::Exception),
            Mode::Reparsed => self.reparse.clone().restore(ctx)?.call((code,)),
        }
    }

    /// Turns a failed evaluation into a deny and a diagnostic. `in_answer` says where, when
    /// it was not the rule's own code (` in its answer`: a `toJSON` or getter).
    fn failure(
        &self,
        ctx: &Ctx<'_>,
        error: rquickjs::Error,
        rule: &CachedRule,
        shared: &Shared,
        in_answer: &str,
    ) -> (Decision, Health) {
        let origin = &shared.origin;
        if self.limits.interrupted.get() {
            ctx.catch();
            let ms = shared.options.deadline.as_millis();
            tracing::warn!(
                "{origin}: the rule did not finish within {ms} ms{in_answer}; request denied"
            );
            return (
                Decision::deny_with(
                    DenyReason::EngineTimeout,
                    format!("the rule did not finish within {ms} ms"),
                ),
                Health::Good,
            );
        }
        let described = match error {
            rquickjs::Error::Exception => describe_exception(ctx, ctx.catch()),
            other => Described::text_only(other.to_string()),
        };
        let text = described.text();
        let where_ = match described.position {
            Some((line, column)) => {
                let (line, column) = rule.program.user_position(line, column);
                format!(" at line {line}, column {column}")
            }
            None => String::new(),
        };
        let out_of_memory = self.memory.exhausted() || text.contains("out of memory");
        if out_of_memory {
            tracing::warn!(
                "{origin}: the rule ran out of memory{in_answer}{where_} (the limit is {} MiB); \
                 request denied",
                shared.options.memory_limit / (1024 * 1024)
            );
        } else {
            tracing::warn!("{origin}: the rule threw {text}{in_answer}{where_}; request denied");
        }
        let health = if out_of_memory {
            Health::CheckMemory
        } else {
            Health::Good
        };
        let message = if out_of_memory {
            "the rule ran out of memory"
        } else {
            "the rule failed; the reason is in httpjail's diagnostics"
        };
        (
            Decision::deny_with(DenyReason::EngineError, message),
            health,
        )
    }
}

/// The start-up error for a rule that does not compile.
fn syntax_error(origin: &str, described: Described, program: &Program) -> Error {
    match described.position {
        Some((line, column)) if described.name.as_deref() == Some("SyntaxError") => {
            let (line, column) = program.user_position(line, column);
            Error::JsSyntax {
                origin: origin.to_owned(),
                line,
                column,
                message: described.message.unwrap_or_default(),
            }
        }
        _ => Error::JsCompile {
            origin: origin.to_owned(),
            message: described.text(),
        },
    }
}

/// Compiles `code` as global strict code without running it.
fn compile_only<'js>(ctx: &Ctx<'js>, code: &str) -> Result<Value<'js>, Value<'js>> {
    let Ok(source) = CString::new(code) else {
        return Err(Value::new_undefined(ctx.clone()));
    };
    let flags =
        qjs::JS_EVAL_TYPE_GLOBAL | qjs::JS_EVAL_FLAG_STRICT | qjs::JS_EVAL_FLAG_COMPILE_ONLY;
    // SAFETY: `source` is NUL-terminated and outlives the call; the context is alive (we are
    // inside `Context::with`); the returned value is owned and handed to `Value`.
    let value = unsafe {
        let raw = qjs::JS_Eval(
            ctx.as_raw().as_ptr(),
            source.as_ptr(),
            code.len() as _,
            RULE_FILE.as_ptr(),
            flags as i32,
        );
        Value::from_raw(ctx.clone(), raw)
    };
    if value.is_exception() {
        Err(ctx.catch())
    } else {
        Ok(value)
    }
}

/// Runs bytecode from [`compile_only`]. On `Err`, the exception is pending on `ctx`.
fn run_bytecode<'js>(ctx: &Ctx<'js>, bytecode: &Value<'js>) -> Result<Value<'js>, ()> {
    // SAFETY: `JS_EvalFunction` takes ownership of its argument, so it gets its own reference
    // (the cached bytecode stays valid); the result is owned and handed to `Value`.
    let value = unsafe {
        let ctx_ptr = ctx.as_raw().as_ptr();
        let raw = qjs::JS_EvalFunction(ctx_ptr, qjs::JS_DupValue(ctx_ptr, bytecode.as_raw()));
        Value::from_raw(ctx.clone(), raw)
    };
    if value.is_exception() {
        Err(())
    } else {
        Ok(value)
    }
}

/// Runs the promise jobs an evaluation queued, within its deadline, so that nothing is left for
/// the next one. `false` if some are left (the runtime must then be replaced).
fn drain_jobs(ctx: &Ctx<'_>, limits: &Limits) -> bool {
    // SAFETY: the runtime pointer comes from a live context.
    let runtime = unsafe { qjs::JS_GetRuntime(ctx.as_raw().as_ptr()) };
    // SAFETY: as above; QuickJS only reads its job list.
    while unsafe { qjs::JS_IsJobPending(runtime) } {
        if limits.expired() {
            return false;
        }
        ctx.execute_pending_job();
    }
    true
}

/// What a rule produced, converted out of QuickJS.
enum Converted {
    Answer(Answer),
    /// A value no answer can be made of (function, symbol, NaN ...), with the reason.
    Invalid(String),
}

/// Converts the rule's value: primitives directly, objects through `JSON.stringify` (so that
/// `toJSON`, getters and proxies behave as in JavaScript, within the deadline).
fn to_answer<'js>(ctx: &Ctx<'js>, value: Value<'js>) -> rquickjs::Result<Converted> {
    let json = if value.is_undefined() {
        return Ok(Converted::Answer(Answer::Undefined));
    } else if value.is_null() {
        Json::Null
    } else if let Some(b) = value.as_bool() {
        Json::Bool(b)
    } else if let Some(i) = value.as_int() {
        Json::from(i)
    } else if let Some(f) = value.as_float() {
        match number(f) {
            Some(n) => n,
            None => {
                return Ok(Converted::Invalid(format!(
                    "the rule produced the number {f}, not a boolean"
                )));
            }
        }
    } else if let Some(s) = value.as_string() {
        Json::String(s.to_string()?)
    } else if value.is_function() {
        return Ok(Converted::Invalid(
            "the rule produced a function, not a boolean or an object (call it?)".to_owned(),
        ));
    } else if value.is_object() {
        match ctx.json_stringify(value)? {
            None => return Ok(Converted::Answer(Answer::Undefined)),
            Some(text) => match serde_json::from_str(&text.to_string()?) {
                Ok(json) => json,
                Err(e) => {
                    return Ok(Converted::Invalid(format!(
                        "the rule's answer is not valid JSON: {e}"
                    )));
                }
            },
        }
    } else if let Some(big) = value.as_big_int() {
        match big.clone().to_i64() {
            Ok(i) => Json::from(i),
            Err(_) => {
                return Ok(Converted::Invalid(
                    "the rule produced a BigInt, not a boolean".to_owned(),
                ));
            }
        }
    } else {
        return Ok(Converted::Invalid(format!(
            "the rule produced a {}, not a boolean or an object",
            value.type_name()
        )));
    };
    Ok(Converted::Answer(Answer::Value(json)))
}

/// A JS number as JSON: integral values become JSON integers (so that `max_tx_bytes: 1024`
/// is `1024`, not `1024.0`); NaN and the infinities have no JSON form.
fn number(f: f64) -> Option<Json> {
    const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;
    if !f.is_finite() {
        return None;
    }
    if f.fract() == 0.0 && f.abs() < TWO_POW_63 {
        #[expect(
            clippy::cast_possible_truncation,
            reason = "integral and within i64 range, checked above"
        )]
        return Some(Json::from(f as i64));
    }
    serde_json::Number::from_f64(f).map(Json::Number)
}

/// An exception, as far as it could be read.
#[derive(Debug, Default)]
struct Described {
    /// `name` of an Error (`TypeError` ...).
    name: Option<String>,
    message: Option<String>,
    /// Line and byte column in the compiled code, from the stack trace.
    position: Option<(u32, u32)>,
}

impl Described {
    fn text_only(text: String) -> Self {
        Self {
            message: Some(text),
            ..Self::default()
        }
    }

    /// `TypeError: x is not a function`, capped and cleaned for a terminal.
    fn text(&self) -> String {
        let text = match (&self.name, &self.message) {
            (Some(name), Some(message)) if !message.is_empty() => format!("{name}: {message}"),
            (Some(name), _) => name.clone(),
            (None, Some(message)) => message.clone(),
            (None, None) => "an exception that cannot be shown".to_owned(),
        };
        answer::cap_message(&text).replace('\n', " ")
    }
}

/// Reads what can be read of an exception. A thrown object's getters may run (within the
/// deadline); whatever they throw is discarded.
fn describe_exception<'js>(ctx: &Ctx<'js>, exception: Value<'js>) -> Described {
    let mut described = Described::default();
    if let Some(object) = exception.as_object() {
        described.name = string_property(object, "name");
        described.message = string_property(object, "message");
        described.position = string_property(object, "stack").and_then(|s| position_in(&s));
    }
    if described.name.is_none() && described.message.is_none() {
        described.message = if let Some(s) = exception.as_string() {
            s.to_string().ok()
        } else if exception.is_object() {
            ctx.json_stringify(exception.clone())
                .ok()
                .flatten()
                .and_then(|s| s.to_string().ok())
        } else {
            rquickjs::FromJs::from_js(ctx, exception)
                .ok()
                .map(|c: Coerced<String>| c.0)
        };
    }
    // Anything thrown while reading the exception is not the rule's answer.
    ctx.catch();
    described
}

fn string_property(object: &Object<'_>, key: &str) -> Option<String> {
    let value: Value<'_> = object.get(key).ok()?;
    value.as_string()?.to_string().ok()
}

/// The first `<rule>:LINE:COLUMN` (or `<input>:...` for eval code) in a stack trace.
fn position_in(stack: &str) -> Option<(u32, u32)> {
    let rule_file = RULE_FILE.to_str().ok()?;
    let start = [rule_file, EVAL_FILE]
        .iter()
        .filter_map(|name| stack.find(&format!("{name}:")).map(|i| i + name.len() + 1))
        .min()?;
    let mut numbers = stack[start..].splitn(3, ':');
    let line = numbers.next()?.parse().ok()?;
    let column: String = numbers
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((line, column.parse().ok()?))
}

/// Converts a 1-based byte column on `line` of `text` to a 1-based character column.
fn char_column(text: &str, line: u32, byte_column: u32) -> u32 {
    let Some(content) = text.split('\n').nth(line.saturating_sub(1) as usize) else {
        return byte_column;
    };
    let mut end = (byte_column.saturating_sub(1) as usize).min(content.len());
    while !content.is_char_boundary(end) {
        end -= 1;
    }
    u32::try_from(content[..end].chars().count()).map_or(byte_column, |n| n + 1)
}

/// Whether the first token of `text` (after whitespace and comments) is `{`.
fn starts_with_brace(text: &str) -> bool {
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix("//") {
            rest = after.split_once('\n').map_or("", |(_, next)| next);
        } else if let Some(after) = rest.strip_prefix("/*") {
            match after.split_once("*/") {
                Some((_, next)) => rest = next,
                None => return false,
            }
        } else {
            return rest.starts_with('{');
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn positions_are_found_in_stack_traces() {
        assert_eq!(position_in("    at <rule>:3:14\n"), Some((3, 14)));
        assert_eq!(
            position_in("    at f (<rule>:12:5)\n    at <eval> (<rule>:1:2)\n"),
            Some((12, 5))
        );
        assert_eq!(position_in("    at <eval> (<input>:2:7)\n"), Some((2, 7)));
        assert_eq!(position_in("    at native\n"), None);
    }

    #[test]
    fn char_columns_count_characters_not_bytes() {
        assert_eq!(char_column("abc", 1, 3), 3);
        assert_eq!(char_column("x\n'é' + y", 2, 7), 6);
        assert_eq!(char_column("short", 1, 99), 6);
        assert_eq!(char_column("one", 5, 2), 2);
    }

    #[test]
    fn leading_brace_is_found_after_comments() {
        assert!(starts_with_brace("{allow: true}"));
        assert!(starts_with_brace("  // note\n/* more */ {allow: true}"));
        assert!(!starts_with_brace("r.host === 'a'"));
        assert!(!starts_with_brace("/* unterminated {"));
        assert!(!starts_with_brace("// only a comment"));
    }

    #[test]
    fn integral_numbers_become_json_integers() {
        assert_eq!(number(1024.0), Some(Json::from(1024)));
        assert_eq!(number(-0.0), Some(Json::from(0)));
        assert_eq!(
            number(1.5),
            serde_json::Number::from_f64(1.5).map(Json::Number)
        );
        assert_eq!(number(f64::NAN), None);
        assert_eq!(number(f64::INFINITY), None);
        assert!(number(1e300).is_some_and(|n| n.is_f64()));
    }
}
