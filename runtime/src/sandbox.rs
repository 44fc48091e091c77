//! [`Sandbox`]: per-tenant settings; every `execute` gets a fresh instance.

use std::sync::Arc;
use std::time::Duration;

use crate::callback::{CallbackLimits, Callbacks};
use crate::{Callback, OutputHandler, Result, Runtime, RuntimeLibrary, Session, TraceHandler};

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
/// let sandbox = eryx::Sandbox::builder().with_runtime(&runtime).build()?;
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
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) output_limit_bytes: u32,
    pub(crate) timeout: Option<Duration>,
    pub(crate) memory_limit_bytes: Option<u64>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) result_limit_bytes: usize,
    pub(crate) state_limit_bytes: usize,
    pub(crate) callbacks: Arc<Callbacks>,
    pub(crate) callback_limits: CallbackLimits,
    pub(crate) trace: Option<Arc<dyn TraceHandler>>,
    pub(crate) output: Option<Arc<dyn OutputHandler>>,
    /// Host directories of libraries and packages, mounted read-only.
    pub(crate) mounts: Vec<std::path::PathBuf>,
    /// Fuel per call (the engine meters fuel).
    pub(crate) fuel: Option<u64>,
    /// Caps of each instance's in-memory `/tmp` and `/work`.
    pub(crate) fs_limits: crate::FsLimits,
    /// Which hosts instances may connect to (none by default).
    pub(crate) network: crate::NetworkPolicy,
}

impl Settings {
    /// Refuses limits that `engine`'s compiled code cannot enforce: a fuel
    /// limit without fuel metering, a timeout without epoch interruption.
    fn check_engine(&self, engine: &crate::EngineOptions) -> Result<()> {
        if self.fuel.is_some() && !engine.fuel_metering {
            return Err(crate::Error::Config(
                "a fuel limit needs a runtime on an engine with EngineOptions::with_fuel_metering(true)"
                    .into(),
            ));
        }
        if self.timeout.is_some() && !engine.epoch_interruption {
            return Err(crate::Error::Config(
                "a timeout needs a runtime on an engine with epoch interruption \
                 (EngineOptions::epoch_interruption, on by default)"
                    .into(),
            ));
        }
        Ok(())
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("output_limit_bytes", &self.output_limit_bytes)
            .field("timeout", &self.timeout)
            .field("memory_limit_bytes", &self.memory_limit_bytes)
            .field("result_limit_bytes", &self.result_limit_bytes)
            .field("state_limit_bytes", &self.state_limit_bytes)
            .field("callbacks", &self.callbacks)
            .field("callback_limits", &self.callback_limits)
            .field("trace", &self.trace.is_some())
            .field("output", &self.output.is_some())
            .finish_non_exhaustive()
    }
}

/// Limits on one call of a sandbox ([`Sandbox::execute`], a handler call,
/// each [`Session`] call); see [`SandboxBuilder::with_resource_limits`].
/// Each limit, when hit, is its own [`Error`](crate::Error) variant, and the
/// sandbox stays usable (the next call gets a fresh instance).
///
/// ```
/// # use std::time::Duration;
/// let limits = eryx::ResourceLimits::default()
///     .with_execution_timeout(Duration::from_secs(5))
///     .with_memory_bytes(128 << 20)
///     .with_max_callback_invocations(100)
///     .with_callback_timeout(Duration::from_secs(1));
/// # let _ = limits;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResourceLimits {
    /// Wall-clock time per call ([`Error::Timeout`](crate::Error::Timeout)).
    pub execution_timeout: Option<Duration>,
    /// Linear memory per instance, in bytes
    /// ([`Error::MemoryLimit`](crate::Error::MemoryLimit)).
    pub memory_bytes: Option<u64>,
    /// Callback invocations per call; past it Python's call raises
    /// `eryx.CallbackLimitExceeded` without reaching the host, and if that
    /// escapes the call fails with
    /// [`Error::CallbackLimit`](crate::Error::CallbackLimit).
    pub max_callback_invocations: Option<u32>,
    /// Time one callback may take; past it the host drops the callback's
    /// future and Python's call raises `eryx.CallbackTimeout` (a
    /// `TimeoutError`), which, if it escapes, fails the call with
    /// [`Error::CallbackTimeout`](crate::Error::CallbackTimeout).
    pub callback_timeout: Option<Duration>,
    /// Fuel per call: a deterministic cap on the work the code does
    /// (wasmtime fuel: about one unit per wasm instruction), independent of
    /// the machine's speed; past it the call fails with
    /// [`Error::FuelExhausted`](crate::Error::FuelExhausted). Needs a
    /// runtime on an engine with
    /// [`EngineOptions::fuel_metering`](crate::EngineOptions::fuel_metering)
    /// (the shared default runtime has none).
    pub fuel: Option<u64>,
}

impl ResourceLimits {
    /// Sets [`execution_timeout`](ResourceLimits::execution_timeout).
    pub fn with_execution_timeout(mut self, timeout: Duration) -> Self {
        self.execution_timeout = Some(timeout);
        self
    }

    /// Sets [`memory_bytes`](ResourceLimits::memory_bytes).
    pub fn with_memory_bytes(mut self, bytes: u64) -> Self {
        self.memory_bytes = Some(bytes);
        self
    }

    /// Sets [`max_callback_invocations`](ResourceLimits::max_callback_invocations).
    pub fn with_max_callback_invocations(mut self, invocations: u32) -> Self {
        self.max_callback_invocations = Some(invocations);
        self
    }

    /// Sets [`fuel`](ResourceLimits::fuel).
    pub fn with_fuel(mut self, fuel: u64) -> Self {
        self.fuel = Some(fuel);
        self
    }

    /// Sets [`callback_timeout`](ResourceLimits::callback_timeout).
    pub fn with_callback_timeout(mut self, timeout: Duration) -> Self {
        self.callback_timeout = Some(timeout);
        self
    }
}

/// Configures a [`Sandbox`]; see [`Sandbox::builder`].
#[derive(Clone)]
pub struct SandboxBuilder {
    runtime: Option<Runtime>,
    settings: Settings,
    pending_callbacks: Vec<Arc<dyn Callback>>,
    libraries: Vec<RuntimeLibrary>,
    packages: Vec<std::path::PathBuf>,
    package_dirs: Vec<std::path::PathBuf>,
    preload: Vec<String>,
    data_dir: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for SandboxBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxBuilder")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
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
    /// Starts configuring a sandbox. Without
    /// [`with_runtime`](SandboxBuilder::with_runtime) it runs on the
    /// process-wide default runtime ([`Runtime::shared`]).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), eryx::Error> {
    /// let sandbox = eryx::Sandbox::builder().build()?;
    /// let result = sandbox.execute("sum(range(10))").await?;
    /// assert_eq!(result.result.as_deref(), Some("45"));
    /// # Ok(()) }
    /// ```
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder {
            runtime: None,
            settings: Settings {
                output_limit_bytes: DEFAULT_OUTPUT_LIMIT_BYTES,
                timeout: None,
                memory_limit_bytes: None,
                env: Vec::new(),
                result_limit_bytes: DEFAULT_RESULT_LIMIT_BYTES,
                state_limit_bytes: DEFAULT_STATE_LIMIT_BYTES,
                callbacks: Arc::default(),
                callback_limits: CallbackLimits::default(),
                trace: None,
                output: None,
                mounts: Vec::new(),
                fuel: None,
                fs_limits: crate::FsLimits::default(),
                network: crate::NetworkPolicy::new(),
            },
            pending_callbacks: Vec::new(),
            libraries: Vec::new(),
            packages: Vec::new(),
            package_dirs: Vec::new(),
            preload: Vec::new(),
            data_dir: None,
        }
    }

    /// This sandbox without its callbacks (same runtime, limits, libraries
    /// and packages): Python sees no host function. For code that must not
    /// reach the host API, e.g. an operator's `execute` in a function's
    /// session.
    pub fn without_callbacks(&self) -> Sandbox {
        let mut sandbox = self.clone();
        sandbox.settings.callbacks = Arc::default();
        sandbox
    }

    /// The names of the callbacks Python can await in this sandbox, in the
    /// order they were added.
    pub fn callback_names(&self) -> Vec<String> {
        self.settings
            .callbacks
            .iter()
            .map(|r| r.callback.name().to_owned())
            .collect()
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
    /// Runs the sandbox's instances on `runtime` (a component loaded for an
    /// engine: a base artifact, or a function's snapshot) instead of the
    /// default [`Runtime::shared`].
    pub fn with_runtime(mut self, runtime: &Runtime) -> Self {
        self.runtime = Some(runtime.clone());
        self
    }

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

    /// Caps each instance's writable in-memory filesystem (`/tmp` and the
    /// working directory `/work`; default [`FsLimits::default`]: 64 MiB of
    /// file contents, 10,000 files and directories). Creating past the count
    /// or truncating past the bytes raises `OSError` `ENOSPC` in Python; a
    /// `write` past the bytes fills the file to the cap, then raises
    /// `OSError` `EIO` (wasi-libc's code for any failed stream write). In a
    /// session the files live as long as its instance, and a
    /// [`StateSnapshot`] carries them (inside the state limit; a state
    /// without files leaves an instance's files as they are). Files written
    /// while a function's snapshot is taken are not in the snapshot.
    ///
    /// [`FsLimits::default`]: crate::FsLimits
    /// [`StateSnapshot`]: crate::StateSnapshot
    pub fn with_filesystem_limits(mut self, limits: crate::FsLimits) -> Self {
        self.settings.fs_limits = limits;
        self
    }

    /// Lets instances open connections to the hosts `policy` allows (see
    /// [`NetworkPolicy`](crate::NetworkPolicy)); by default they may
    /// connect nowhere. Python's `socket.create_connection`, `http.client`,
    /// `urllib.request` (http and https) and socket-based clients go through
    /// the host, which checks every connection, resolves names and does TLS;
    /// a refused connection raises `eryx.NetworkPolicyError` (a
    /// `PermissionError`) naming the policy.
    pub fn with_network(mut self, policy: crate::NetworkPolicy) -> Self {
        self.settings.network = policy;
        self
    }

    /// Offers `callback` to Python as an async function by its name (see
    /// [`Callback`]); one of the same name is replaced.
    pub fn with_callback(mut self, callback: impl Callback) -> Self {
        self.pending_callbacks.push(Arc::new(callback));
        self
    }

    /// Offers every callback of `callbacks` (see [`with_callback`](Self::with_callback)).
    pub fn with_callbacks(
        mut self,
        callbacks: impl IntoIterator<Item = Arc<dyn Callback>>,
    ) -> Self {
        self.pending_callbacks.extend(callbacks);
        self
    }

    /// Ships `library` into the sandbox: its callbacks are offered like
    /// [`with_callback`](Self::with_callback)'s, its modules importable (see
    /// [`RuntimeLibrary`]).
    pub fn with_library(mut self, library: RuntimeLibrary) -> Self {
        self.pending_callbacks
            .extend(library.callbacks.iter().cloned());
        self.libraries.push(library);
        self
    }

    /// Where [`build`](Self::build) unpacks libraries and packages and keeps
    /// preload snapshots (default:
    /// [`default_data_dir`](crate::base::default_data_dir)).
    pub fn with_data_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Makes the modules of the pure-Python wheel (`.whl`) at `path`
    /// importable in the sandbox: [`build`](Self::build) unpacks it once into
    /// the data directory (`packages/<sha256>/`), and every instance mounts
    /// it read-only on `sys.path`. Dependencies are not resolved: add each
    /// wheel a package needs.
    pub fn with_package(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.packages.push(path.into());
        self
    }

    /// Mounts the host directory `dir` (pure-Python modules and packages,
    /// e.g. wheels unpacked with [`wheel_files`](crate::wheel_files))
    /// read-only on `sys.path`, after the libraries and wheels. The sandbox
    /// never writes to it; the caller must not change it while sandboxes
    /// use it (a snapshot taken with it expects the same files).
    pub fn with_package_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.package_dirs.push(dir.into());
        self
    }

    /// Imports `modules` (from packages, libraries or the standard library)
    /// into a snapshot that every instance of the sandbox starts from, so
    /// their import cost is paid once: [`build`](Self::build) re-snapshots
    /// the runtime's pre-initialized component with them imported and
    /// precompiles it (seconds, mostly compile-cache hits), once per data
    /// directory; later builds in the process reuse it.
    ///
    /// Needs a runtime that knows its snapshot file: the shared default, or
    /// one built with [`RuntimeBuilder::with_snapshot_file`](crate::RuntimeBuilder::with_snapshot_file).
    pub fn with_preload<S: Into<String>>(mut self, modules: impl IntoIterator<Item = S>) -> Self {
        self.preload.extend(modules.into_iter().map(Into::into));
        self
    }

    /// Applies `limits` (see [`ResourceLimits`]); limits it leaves unset
    /// keep what the builder had.
    pub fn with_resource_limits(mut self, limits: ResourceLimits) -> Self {
        if let Some(timeout) = limits.execution_timeout {
            self.settings.timeout = Some(timeout);
        }
        if let Some(bytes) = limits.memory_bytes {
            self.settings.memory_limit_bytes = Some(bytes);
        }
        if let Some(max) = limits.max_callback_invocations {
            self.settings.callback_limits.max_invocations = Some(max);
        }
        if let Some(timeout) = limits.callback_timeout {
            self.settings.callback_limits.timeout = Some(timeout);
        }
        if let Some(fuel) = limits.fuel {
            self.settings.fuel = Some(fuel);
        }
        self
    }

    /// Sends tracing events of user code to `handler` (see [`TraceHandler`]);
    /// without one, code runs untraced at no cost.
    pub fn with_trace_handler(mut self, handler: impl TraceHandler) -> Self {
        self.settings.trace = Some(Arc::new(handler));
        self
    }

    /// Streams stdout and stderr to `handler` as they are written (see
    /// [`OutputHandler`]); the result still holds the whole output.
    pub fn with_output_handler(mut self, handler: impl OutputHandler) -> Self {
        self.settings.output = Some(Arc::new(handler));
        self
    }

    /// Builds the sandbox (cheap: instances are created per execution). The
    /// first build without [`with_runtime`](Self::with_runtime) in a process
    /// loads the default runtime, and the first on a machine builds it (see
    /// [`Runtime::shared`]); later ones take microseconds.
    ///
    /// # Errors
    /// Those of [`Runtime::shared`] when no runtime was given and the default
    /// cannot be loaded or built;
    /// [`Error::Config`](crate::Error::Config) when an environment variable
    /// is unusable (an empty name, `=` or NUL in a name, NUL in a value) or
    /// a callback's name is not a Python identifier, or is a keyword or a
    /// common builtin; a library module name that is not dotted
    /// identifiers; a package that is not a pure-Python wheel (see
    /// [`with_package`](Self::with_package)), or
    /// [`with_preload`](Self::with_preload) on a runtime without a snapshot
    /// file, a fuel limit on an engine that does not meter fuel, or a timeout
    /// on an engine without
    /// [`epoch_interruption`](crate::EngineOptions::epoch_interruption);
    /// [`Error::Preinit`](crate::Error::Preinit) when a preloaded module does
    /// not import. [`Error::Io`](crate::Error::Io) when a library or package
    /// cannot be written to the data directory.
    pub fn build(mut self) -> Result<Sandbox> {
        for (key, value) in &self.settings.env {
            crate::bindings::check_env(key, value)?;
        }
        if !self.pending_callbacks.is_empty() {
            let mut callbacks = (*self.settings.callbacks).clone();
            for callback in self.pending_callbacks.drain(..) {
                callbacks.add(callback)?;
            }
            self.settings.callbacks = Arc::new(callbacks);
        }
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(crate::base::default_data_dir);
        if !self.libraries.is_empty() || !self.packages.is_empty() {
            for library in &self.libraries {
                if let Some(dir) = library.install(&data_dir)? {
                    self.settings.mounts.push(dir);
                }
            }
            for wheel in &self.packages {
                self.settings
                    .mounts
                    .push(crate::library::unpack_wheel(wheel, &data_dir)?);
            }
        }
        self.settings
            .mounts
            .extend(self.package_dirs.iter().cloned());
        let mut runtime = match self.runtime {
            Some(runtime) => runtime,
            None => Runtime::shared()?,
        };
        self.settings.check_engine(runtime.engine().options())?;
        if !self.preload.is_empty() {
            runtime = crate::base::shared::preloaded(
                &runtime,
                &data_dir,
                &self.settings.mounts,
                &self.preload,
            )?;
        }
        Ok(Sandbox {
            runtime,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_the_engine_cannot_enforce_are_refused_by_check_engine() {
        // `SandboxBuilder::build` calls `check_engine` before anything loads.
        let settings = Sandbox::builder().settings;
        let default = crate::EngineOptions::default();
        let unchecked = crate::EngineOptions::default().with_epoch_interruption(false);
        let metered = crate::EngineOptions::default().with_fuel_metering(true);
        let mut timed = settings.clone();
        timed.timeout = Some(Duration::from_secs(1));
        let mut fueled = settings.clone();
        fueled.fuel = Some(1_000);

        assert!(settings.check_engine(&default).is_ok());
        assert!(settings.check_engine(&unchecked).is_ok());
        assert!(timed.check_engine(&default).is_ok());
        assert!(matches!(
            timed.check_engine(&unchecked),
            Err(crate::Error::Config(_))
        ));
        assert!(matches!(
            fueled.check_engine(&default),
            Err(crate::Error::Config(_))
        ));
        assert!(fueled.check_engine(&metered).is_ok());
    }
}
