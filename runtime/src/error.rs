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
    Exception(PythonError),
    /// The code did not compile (`SyntaxError`, `IndentationError`, ...).
    #[error("Python syntax error: {0}")]
    Compile(PythonError),
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
    /// The WebAssembly instance trapped (a guest crash or a limit hit).
    #[error("the sandbox trapped: {0}")]
    Trap(String),
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
    /// Snapshotting or restoring Python state failed.
    #[error("state: {0}")]
    State(String),
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

impl Error {
    /// Classifies an error from wasmtime: a trap or a host failure.
    pub(crate) fn from_wasmtime(error: wasmtime::Error) -> Error {
        if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
            // The wasm backtrace can run to thousands of frames (a stack
            // overflow); keep it in the log, not in the error.
            tracing::debug!("trap: {error:#}");
            Error::Trap(trap.to_string())
        } else {
            Error::Host(format!("{error:#}"))
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
