//! The error type of the crate.

use std::fmt;

/// A Python exception that escaped user code, with the output written before it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PythonError {
    /// Exception type, qualified by module unless builtin (`ValueError`,
    /// `json.decoder.JSONDecodeError`).
    pub type_name: String,
    /// `str()` of the exception.
    pub message: String,
    /// The formatted traceback as Python prints it, starting at the user's
    /// code (`File "<exec>", line N`); for a `SyntaxError`, the caret report.
    pub traceback: String,
    /// What the code wrote to `sys.stdout` before failing.
    pub stdout: String,
    /// What the code wrote to `sys.stderr` before failing.
    pub stderr: String,
}

impl fmt::Display for PythonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.type_name)
        } else {
            write!(f, "{}: {}", self.type_name, self.message)
        }
    }
}

/// Errors of the eryx runtime.
///
/// Python-level failures ([`Error::Exception`], [`Error::Compile`],
/// [`Error::Exit`]) leave the sandbox usable; a [`Error::Trap`] ends the
/// instance it happened in (the next `execute` gets a fresh one).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The code raised an exception that it did not catch.
    #[error("Python exception: {0}")]
    Exception(Box<PythonError>),
    /// The code did not compile (`SyntaxError`, `IndentationError`, ...).
    #[error("Python syntax error: {0}")]
    Compile(Box<PythonError>),
    /// The code called `sys.exit()` (raised `SystemExit`).
    #[error("Python exited with status {code}")]
    Exit {
        /// Exit status: the integer passed to `sys.exit`, 0 for none, 1 for any
        /// other value (as CPython does).
        code: i32,
        /// Text passed to `sys.exit` when it was not an integer.
        message: Option<String>,
        /// Output written before exiting.
        stdout: String,
        /// Error output written before exiting.
        stderr: String,
    },
    /// The call ran past its timeout and was stopped.
    #[error("the call exceeded its time limit of {} ms", limit.as_millis())]
    Timeout {
        /// The time limit that was exceeded.
        limit: std::time::Duration,
    },
    /// The code needed more memory than the instance's memory limit allows.
    #[error("the instance reached its memory limit of {} MiB", limit_bytes >> 20)]
    MemoryLimit {
        /// The limit, in bytes.
        limit_bytes: u64,
        /// The Python `MemoryError` it raised, when it raised one (rather than
        /// trapping).
        error: Option<Box<PythonError>>,
    },
    /// The code made more callback invocations than
    /// [`ResourceLimits::max_callback_invocations`](crate::ResourceLimits::max_callback_invocations)
    /// allows, and the `eryx.CallbackLimitExceeded` raised at the first
    /// refused one escaped. Invocations past the limit never reach the host.
    #[error("the call made more than {limit} callback invocations")]
    CallbackLimit {
        /// The limit.
        limit: u32,
        /// The Python exception that escaped.
        error: Box<PythonError>,
    },
    /// A callback ran past
    /// [`ResourceLimits::callback_timeout`](crate::ResourceLimits::callback_timeout)
    /// (its future was dropped) and the `eryx.CallbackTimeout` raised in
    /// Python escaped.
    #[error("a callback exceeded its time limit of {} ms", limit.as_millis())]
    CallbackTimeout {
        /// The per-callback limit.
        limit: std::time::Duration,
        /// The Python exception that escaped (its message names the callback).
        error: Box<PythonError>,
    },
    /// The call used up its fuel
    /// ([`ResourceLimits::with_fuel`](crate::ResourceLimits::with_fuel)) and
    /// was stopped; the instance is gone.
    #[error("the call used up its fuel ({fuel} units)")]
    FuelExhausted {
        /// The fuel each call gets.
        fuel: u64,
    },
    /// The WebAssembly instance trapped (a guest crash or a limit hit); the
    /// instance is gone, the output written before the trap is kept.
    #[error("the sandbox trapped: {0}")]
    Trap(Box<TrapError>),
    /// The handler's result, or an `execute` result, is larger than the
    /// sandbox's result limit (see
    /// [`SandboxBuilder::with_result_limit_bytes`](crate::SandboxBuilder::with_result_limit_bytes)).
    #[error("the result is {size} bytes, over the limit of {limit} bytes")]
    ResultTooLarge {
        /// The result's size, in bytes.
        size: usize,
        /// The limit, in bytes.
        limit: usize,
    },
    /// The guest returned a handler result that is not JSON (user code can
    /// rebind what the guest serializes with); the result was dropped.
    #[error("the handler's result is not valid JSON")]
    ResultNotJson,
    /// The session's instance was stopped by an earlier timeout or trap; open
    /// a new session.
    #[error("this session's instance stopped at an earlier timeout or trap")]
    SessionEnded,
    /// Every instance slot of the engine's pool is in use; retry later.
    /// (sized by [`EngineOptions::pool_size`](crate::EngineOptions::pool_size)).
    #[error("no free instance slot: {0}")]
    PoolExhausted(String),
    /// A precompiled artifact's bytes do not have the content hash (BLAKE3)
    /// its manifest records (corrupted or substituted); it was not loaded.
    #[error("corrupt artifact {path}: content hash is {actual}, expected {expected}")]
    CorruptArtifact {
        /// The file.
        path: std::path::PathBuf,
        /// The recorded hash.
        expected: String,
        /// The file's hash.
        actual: String,
    },
    /// A precompiled artifact was made by another wasmtime version or engine
    /// configuration (or is not a component); it was not loaded.
    #[error("incompatible artifact: {0}")]
    IncompatibleArtifact(String),
    /// Pre-initialization failed inside Python (e.g. a module to preload
    /// does not import).
    #[error("pre-initialization: {0}")]
    Preinit(String),
    /// Snapshotting or restoring Python state failed (a value's pickling
    /// raised for every attempt, or the data does not unpickle).
    #[error("state: {0}")]
    State(String),
    /// The pickled state is larger than the sandbox's state limit
    /// ([`with_state_limit_bytes`](crate::SandboxBuilder::with_state_limit_bytes));
    /// it was not returned.
    #[error("the pickled state is {size} bytes, over the limit of {limit} bytes")]
    StateTooLarge {
        /// Size of the pickle, in bytes.
        size: usize,
        /// The limit, in bytes.
        limit: usize,
    },
    /// The embedded CPython distribution could not be unpacked into the data
    /// directory.
    #[error(transparent)]
    Bundle(#[from] eryx_bundle::Error),
    /// Generating the guest's bindings or linking the component failed.
    #[error("linking the component: {0}")]
    Link(String),
    /// The runtime was configured wrongly (missing component, bad path).
    #[error("configuration: {0}")]
    Config(String),
    /// The engine failed outside the guest (compiling, instantiating, linking).
    #[error("host: {0}")]
    Host(String),
    /// A filesystem operation of the host failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What kind of trap ended an instance, by wasmtime's trap code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrapKind {
    /// The wasm call stack was exhausted (deep recursion in C code).
    StackOverflow,
    /// A load or store outside linear memory, or a table access out of
    /// bounds (e.g. the C stack in linear memory overran its region).
    OutOfBounds,
    /// `unreachable` was executed (a guest panic or `abort()`).
    Unreachable,
    /// Integer division by zero or overflow in a conversion.
    Arithmetic,
    /// A call through a function table went wrong (null or wrong signature).
    IndirectCall,
    /// The instance was interrupted (its epoch deadline passed).
    Interrupt,
    /// A host function or wasmtime itself refused to continue (e.g. a WASI
    /// call that failed fatally).
    Host,
    /// Another trap code.
    Other,
}

impl TrapKind {
    fn of(trap: Option<&wasmtime::Trap>) -> TrapKind {
        use wasmtime::Trap;
        match trap {
            Some(Trap::StackOverflow) => TrapKind::StackOverflow,
            Some(Trap::MemoryOutOfBounds | Trap::TableOutOfBounds | Trap::HeapMisaligned) => {
                TrapKind::OutOfBounds
            }
            Some(Trap::UnreachableCodeReached) => TrapKind::Unreachable,
            Some(
                Trap::IntegerDivisionByZero | Trap::IntegerOverflow | Trap::BadConversionToInteger,
            ) => TrapKind::Arithmetic,
            Some(Trap::IndirectCallToNull | Trap::BadSignature) => TrapKind::IndirectCall,
            Some(Trap::Interrupt) => TrapKind::Interrupt,
            Some(_) => TrapKind::Other,
            None => TrapKind::Host,
        }
    }
}

/// A trap that ended an instance: its kind, wasmtime's description, and what
/// the code wrote before it (each capped as the sandbox's output limit says).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TrapError {
    /// The trap code's kind.
    pub kind: TrapKind,
    /// wasmtime's description of the trap (without the wasm backtrace).
    pub message: String,
    /// What the code wrote to stdout before the trap.
    pub stdout: String,
    /// What the code wrote to stderr before the trap.
    pub stderr: String,
}

impl fmt::Display for TrapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error {
    /// Classifies an error from wasmtime: a trap, an exit (`proc_exit`, as
    /// `os._exit` calls it), a full instance pool, or a host failure.
    pub(crate) fn from_wasmtime(error: wasmtime::Error) -> Error {
        Error::from_wasmtime_with_output(error, String::new(), String::new())
    }

    /// As [`from_wasmtime`](Error::from_wasmtime), with the output the
    /// instance wrote before it failed.
    pub(crate) fn from_wasmtime_with_output(
        error: wasmtime::Error,
        stdout: String,
        stderr: String,
    ) -> Error {
        if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
            return Error::Exit {
                code: exit.0,
                message: None,
                stdout,
                stderr,
            };
        }
        if let Some(limit) = error.downcast_ref::<wasmtime::PoolConcurrencyLimitError>() {
            return Error::PoolExhausted(limit.to_string());
        }
        let trap = error.downcast_ref::<wasmtime::Trap>();
        if trap.is_some() || error.downcast_ref::<wasmtime::WasmBacktrace>().is_some() {
            // The wasm backtrace can run to thousands of frames (a stack
            // overflow); keep it in the log, not in the error.
            tracing::debug!("trap: {error:#}");
            let message = match trap {
                Some(trap) => trap.to_string(),
                None => error.to_string(),
            };
            return Error::Trap(Box::new(TrapError {
                kind: TrapKind::of(trap),
                message: crate::untrusted::cap(message, crate::untrusted::MAX_MESSAGE_BYTES),
                stdout,
                stderr,
            }));
        }
        Error::Host(format!("{error:#}"))
    }

    /// The trap, for [`Error::Trap`].
    pub fn trap(&self) -> Option<&TrapError> {
        match self {
            Error::Trap(trap) => Some(trap),
            _ => None,
        }
    }

    /// The Python exception, for [`Error::Exception`] and [`Error::Compile`].
    pub fn python(&self) -> Option<&PythonError> {
        match self {
            Error::Exception(e) | Error::Compile(e) => Some(e),
            _ => None,
        }
    }
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
