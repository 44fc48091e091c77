//! [`Sandbox`]: per-tenant settings; every `execute` gets a fresh instance.

use std::time::Duration;

use crate::{Result, Runtime, Session};

/// Default cap on each of stdout and stderr per execution: 1 MiB.
pub const DEFAULT_OUTPUT_LIMIT_BYTES: u32 = 1 << 20;

/// Runs Python code in isolated WebAssembly instances of CPython 3.14.
///
/// Each [`execute`](Sandbox::execute) runs in a fresh instance: no globals,
/// files or module state carry over from one call to the next. The instance
/// sees only the Python standard library (read-only, at `/python`); it has no
/// other filesystem, no network and none of the host's environment.
/// For several calls that share state, open a [`Session`].
///
/// ```no_run
/// # async fn demo(runtime: eryx::Runtime) -> Result<(), eryx::Error> {
/// let sandbox = eryx::Sandbox::builder(&runtime).build()?;
/// let result = sandbox.execute("print('hello'); 6 * 7").await?;
/// assert_eq!(result.stdout, "hello\n");
/// assert_eq!(result.result.as_deref(), Some("42"));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Sandbox {
    runtime: Runtime,
    output_limit_bytes: u32,
}

/// Configures a [`Sandbox`]; see [`Sandbox::builder`].
#[derive(Debug, Clone)]
pub struct SandboxBuilder {
    runtime: Runtime,
    output_limit_bytes: u32,
}

impl Sandbox {
    /// Starts configuring a sandbox on `runtime`.
    pub fn builder(runtime: &Runtime) -> SandboxBuilder {
        SandboxBuilder {
            runtime: runtime.clone(),
            output_limit_bytes: DEFAULT_OUTPUT_LIMIT_BYTES,
        }
    }

    /// Runs `code` in a fresh instance as the body of `__main__`. Top-level
    /// `await` is allowed. If the code ends with an expression, its value is
    /// returned in [`ExecuteResult::result`].
    ///
    /// # Errors
    /// [`Error::Exception`](crate::Error::Exception),
    /// [`Error::Compile`](crate::Error::Compile) and
    /// [`Error::Exit`](crate::Error::Exit) for Python failures (with the output
    /// written before them); [`Error::Trap`](crate::Error::Trap) if the
    /// instance traps; [`Error::Host`](crate::Error::Host) if it cannot be
    /// created.
    pub async fn execute(&self, code: &str) -> Result<ExecuteResult> {
        self.session().await?.execute(code).await
    }

    /// Creates a fresh instance for several calls that share Python state.
    ///
    /// # Errors
    /// [`Error::Host`](crate::Error::Host) if the instance cannot be created,
    /// [`Error::Trap`](crate::Error::Trap) if CPython fails to start.
    pub async fn session(&self) -> Result<Session> {
        Session::new(&self.runtime, self.output_limit_bytes).await
    }
}

impl SandboxBuilder {
    /// Caps what is kept of each of stdout and stderr per execution, in bytes
    /// (default [`DEFAULT_OUTPUT_LIMIT_BYTES`]). Output past the cap is dropped
    /// and a line `[eryx: output truncated, N more bytes not shown]` is appended.
    pub fn with_output_limit_bytes(mut self, bytes: u32) -> Self {
        self.output_limit_bytes = bytes;
        self
    }

    /// Builds the sandbox (cheap: instances are created per execution).
    ///
    /// # Errors
    /// None yet; the `Result` leaves room for validating future settings.
    pub fn build(self) -> Result<Sandbox> {
        Ok(Sandbox {
            runtime: self.runtime,
            output_limit_bytes: self.output_limit_bytes,
        })
    }
}

/// The outcome of code that ran to completion.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ExecuteResult {
    /// What the code wrote to stdout (`print`, `sys.stdout`, and file
    /// descriptor 1), up to the output limit.
    pub stdout: String,
    /// What the code wrote to stderr, up to the output limit.
    pub stderr: String,
    /// `repr()` of the final expression's value, when the code ends with an
    /// expression whose value is not `None`.
    pub result: Option<String>,
    /// The same value as JSON, when `json.dumps` accepts it.
    pub result_json: Option<String>,
    /// Wall-clock time of the execution inside the instance (excluding
    /// instance creation).
    pub duration: Duration,
}
