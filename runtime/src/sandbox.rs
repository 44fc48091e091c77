//! [`Sandbox`]: per-tenant settings; every `execute` gets a fresh instance.

use std::time::Duration;

use crate::{Result, Runtime, Session};

/// Default cap on each of stdout and stderr per execution: 1 MiB.
pub const DEFAULT_OUTPUT_LIMIT_BYTES: u32 = 1 << 20;

/// Default cap on a result (a handler's JSON, an `execute` result's `repr`):
/// 6 MiB, as AWS Lambda's synchronous response payload.
pub const DEFAULT_RESULT_LIMIT_BYTES: usize = 6 << 20;

/// Default cap on a pickled state snapshot: 64 MiB.
pub const DEFAULT_STATE_LIMIT_BYTES: usize = 64 << 20;

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
    settings: Settings,
}

/// Per-instance settings of a sandbox.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) output_limit_bytes: u32,
    pub(crate) timeout: Option<Duration>,
    pub(crate) memory_limit_bytes: Option<u64>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) result_limit_bytes: usize,
    pub(crate) state_limit_bytes: usize,
}

/// Configures a [`Sandbox`]; see [`Sandbox::builder`].
#[derive(Debug, Clone)]
pub struct SandboxBuilder {
    runtime: Runtime,
    settings: Settings,
}

/// Who is calling a function's handler; passed to Python as `context`
/// (with `timeout_ms` from the sandbox's timeout, and a
/// `remaining_time_ms()` method).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerContext {
    /// The request's id, for correlating logs.
    pub request_id: String,
    /// The function's name.
    pub function_name: String,
    /// The function's version (1 for the first deployment).
    pub function_version: u64,
}

/// What a handler returned; see [`Sandbox::call_handler`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HandlerOutput {
    /// The return value as JSON (`null` for `None`).
    pub result_json: String,
    /// What the handler wrote to stdout, up to the output limit.
    pub stdout: String,
    /// What the handler wrote to stderr, up to the output limit.
    pub stderr: String,
    /// Time to create the instance from the function's snapshot.
    pub instantiate_time: Duration,
    /// Wall-clock time of the handler call inside the instance.
    pub duration: Duration,
}

impl Sandbox {
    /// Starts configuring a sandbox on `runtime`.
    pub fn builder(runtime: &Runtime) -> SandboxBuilder {
        SandboxBuilder {
            runtime: runtime.clone(),
            settings: Settings {
                output_limit_bytes: DEFAULT_OUTPUT_LIMIT_BYTES,
                timeout: None,
                memory_limit_bytes: None,
                env: Vec::new(),
                result_limit_bytes: DEFAULT_RESULT_LIMIT_BYTES,
                state_limit_bytes: DEFAULT_STATE_LIMIT_BYTES,
            },
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
    /// written before them); [`Error::Timeout`](crate::Error::Timeout) past
    /// the timeout; [`Error::MemoryLimit`](crate::Error::MemoryLimit) when
    /// the code failed for want of memory past the memory limit;
    /// [`Error::Trap`](crate::Error::Trap) if the instance traps otherwise;
    /// [`Error::Host`](crate::Error::Host) if it cannot be created.
    pub async fn execute(&self, code: &str) -> Result<ExecuteResult> {
        self.session().await?.execute(code).await
    }

    /// Calls, in a fresh instance, the handler of the function the runtime's
    /// component was snapshotted with (a per-function snapshot made by
    /// [`FunctionBuilder`](crate::FunctionBuilder)): `handler(event,
    /// context)` with `event` decoded from `event_json`; an `async def`
    /// handler is awaited. Returns the handler's return value as JSON.
    ///
    /// # Errors
    /// As [`execute`](Sandbox::execute); a return value that is not JSON
    /// serializable, or an `event_json` that is not JSON, is an
    /// [`Error::Exception`](crate::Error::Exception) (`TypeError`,
    /// `json.JSONDecodeError`); a runtime without a function gives
    /// `eryx.NoHandler`.
    pub async fn call_handler(
        &self,
        event_json: &str,
        context: &HandlerContext,
    ) -> Result<HandlerOutput> {
        self.session()
            .await?
            .call_handler(event_json, context)
            .await
    }

    /// Creates a fresh instance for several calls that share Python state.
    ///
    /// # Errors
    /// [`Error::Host`](crate::Error::Host) if the instance cannot be created,
    /// [`Error::Trap`](crate::Error::Trap) if CPython fails to start.
    pub async fn session(&self) -> Result<Session> {
        Session::new(&self.runtime, &self.settings).await
    }
}

impl SandboxBuilder {
    /// Caps what is kept of each of stdout and stderr per execution, in bytes
    /// (default [`DEFAULT_OUTPUT_LIMIT_BYTES`]). Output past the cap is dropped
    /// and a line `[eryx: output truncated, N more bytes not shown]` is appended.
    pub fn with_output_limit_bytes(mut self, bytes: u32) -> Self {
        self.settings.output_limit_bytes = bytes;
        self
    }

    /// Limits each call ([`Sandbox::execute`], [`Sandbox::call_handler`],
    /// each [`Session::execute`]) to `timeout` of wall-clock time (default:
    /// none). Past it the instance is stopped (epoch interruption, checked
    /// every 2 ms) and the call fails with
    /// [`Error::Timeout`](crate::Error::Timeout).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = Some(timeout);
        self
    }

    /// Limits each instance's linear memory to `bytes` (default: the
    /// engine's [`max_memory_bytes`](crate::EngineOptions::max_memory_bytes)).
    /// Allocations past it fail inside Python with `MemoryError`, reported
    /// as [`Error::MemoryLimit`](crate::Error::MemoryLimit).
    pub fn with_memory_limit_bytes(mut self, bytes: u64) -> Self {
        self.settings.memory_limit_bytes = Some(bytes);
        self
    }

    /// Adds an environment variable that Python sees in `os.environ`.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.env.push((key.into(), value.into()));
        self
    }

    /// Caps a result, in bytes (default [`DEFAULT_RESULT_LIMIT_BYTES`]): a
    /// handler's JSON larger than this fails with
    /// [`Error::ResultTooLarge`](crate::Error::ResultTooLarge); an
    /// `execute` result's `repr` is cut with a marker (and its JSON left out).
    pub fn with_result_limit_bytes(mut self, bytes: usize) -> Self {
        self.settings.result_limit_bytes = bytes;
        self
    }

    /// Caps a pickled state snapshot, in bytes (default
    /// [`DEFAULT_STATE_LIMIT_BYTES`]); a larger one fails with
    /// [`Error::StateTooLarge`](crate::Error::StateTooLarge).
    pub fn with_state_limit_bytes(mut self, bytes: usize) -> Self {
        self.settings.state_limit_bytes = bytes;
        self
    }

    /// Builds the sandbox (cheap: instances are created per execution).
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) when an environment variable
    /// is unusable: an empty name, `=` or NUL in a name, NUL in a value.
    pub fn build(self) -> Result<Sandbox> {
        for (key, value) in &self.settings.env {
            crate::bindings::check_env(key, value)?;
        }
        Ok(Sandbox {
            runtime: self.runtime,
            settings: self.settings,
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
