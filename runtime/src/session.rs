//! [`Session`]: one instance kept for several calls (REPL-style), with
//! state snapshots.

use std::time::{Duration, Instant};

use wasmtime::{Store, UpdateDeadline};

use crate::bindings::{self, ErrorKind, ExecuteOptions, HostState};
use crate::engine::NO_DEADLINE;
use crate::sandbox::Settings;
use crate::untrusted::{self, cap};
use crate::{Error, ExecuteResult, HandlerContext, HandlerOutput, PythonError, Result, Runtime};

/// What an `execute` or `call-handler` export returns.
type GuestOutcome = std::result::Result<bindings::ExecuteOutput, bindings::ExecuteError>;

/// An export call that runs Python code.
enum Call {
    /// `execute(code)`.
    Execute(String),
    /// `call-handler(event-json, context-json)`.
    Handler(String, String),
}

/// Epoch ticks (of 2 ms) of running code between yields to the executor.
const YIELD_TICKS: u64 = 5;

/// How long after the timeout the host stops waiting for a call that is
/// blocked in the host (where epoch deadlines are not checked).
const HOST_TIMEOUT_MARGIN: Duration = Duration::from_millis(100);

/// One live instance: Python globals persist from one
/// [`execute`](Session::execute) to the next, like a REPL.
pub struct Session {
    store: Store<HostState>,
    instance: bindings::Sandbox,
    settings: Settings,
    instantiate_time: Duration,
    /// Set after a timeout or trap: the instance must not be entered again.
    poisoned: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

/// Pickled user globals of a session; see [`Session::snapshot_state`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StateSnapshot {
    /// The pickle (protocol 5) of a dict of the user's globals. Functions and
    /// classes defined in the session are pickled by value, modules by name.
    /// When the instance had files in `/tmp` or `/work`, they follow the
    /// pickle (a tar), behind an 8-byte marker and the pickle's length: treat
    /// the bytes as opaque.
    pub data: Vec<u8>,
    /// Globals that could not be pickled (open files, generators, ...) and
    /// were left out.
    pub skipped: Vec<String>,
}

impl StateSnapshot {
    /// A snapshot from stored bytes (the [`data`](StateSnapshot::data) of an
    /// earlier snapshot); nothing is known about skipped names.
    pub fn from_bytes(data: Vec<u8>) -> StateSnapshot {
        StateSnapshot {
            data,
            skipped: Vec::new(),
        }
    }
}

impl Session {
    pub(crate) async fn new(runtime: &Runtime, settings: &Settings) -> Result<Session> {
        let session = Session::create(runtime, settings).await?;
        tracing::debug!(
            elapsed_us = session.instantiate_time.as_micros() as u64,
            "instantiated"
        );
        Ok(session)
    }

    async fn create(runtime: &Runtime, settings: &Settings) -> Result<Session> {
        // What the code writes to file descriptors 1 and 2 directly (bypassing
        // `sys.stdout`) is kept up to the same limit.
        let mut state = HostState::new(
            runtime.stdlib_dir(),
            settings.output_limit_bytes,
            &settings.env,
            &settings.mounts,
            settings.fs_limits,
        )?;
        state.limiter.limit_bytes = settings
            .memory_limit_bytes
            .map(|b| usize::try_from(b).unwrap_or(usize::MAX));
        state.callbacks = settings.callbacks.clone();
        state.callback_limits = settings.callback_limits;
        state.trace = settings.trace.clone();
        state.net = crate::net::Connections::new(settings.network.clone());
        if let Some(handler) = &settings.output {
            state
                .stdout
                .set_handler(handler.clone(), crate::OutputStream::Stdout);
            state
                .stderr
                .set_handler(handler.clone(), crate::OutputStream::Stderr);
        }
        let start = Instant::now();
        let mut store = Store::new(runtime.engine().wasmtime(), state);
        runtime.engine().unlimited_fuel(&mut store)?;
        store.limiter(|state| &mut state.limiter);
        store.set_epoch_deadline(NO_DEADLINE);
        let instance = runtime
            .pre()
            .instantiate_async(&mut store)
            .await
            .map_err(|e| {
                let (stdout, stderr) = (store.data().stdout.take(), store.data().stderr.take());
                Error::from_wasmtime_with_output(e, stdout, stderr)
            })?;
        Ok(Session {
            store,
            instance,
            settings: settings.clone(),
            instantiate_time: start.elapsed(),
            poisoned: false,
        })
    }

    /// Removes this session's callbacks: later calls see no host function
    /// (see [`Sandbox::without_callbacks`](crate::Sandbox::without_callbacks)).
    pub fn clear_callbacks(&mut self) {
        self.settings.callbacks = std::sync::Arc::default();
        self.store.data_mut().callbacks = std::sync::Arc::default();
    }

    /// How long creating this session's instance took.
    pub fn instantiate_time(&self) -> Duration {
        self.instantiate_time
    }

    /// Runs `code` in this session's `__main__`; globals from earlier calls
    /// are visible. See [`Sandbox::execute`](crate::Sandbox::execute).
    ///
    /// # Errors
    /// As [`Sandbox::execute`](crate::Sandbox::execute). After a
    /// [`Error::Timeout`] or a trap the session is unusable and every later
    /// call returns [`Error::SessionEnded`].
    pub async fn execute(&mut self, code: &str) -> Result<ExecuteResult> {
        let (outcome, duration) = self.call(Call::Execute(code.to_owned())).await?;
        let (output, stdout, stderr) = self.finish(outcome)?;
        let limit = self.settings.result_limit_bytes;
        Ok(ExecuteResult {
            stdout,
            stderr,
            result: output.result_repr.map(|repr| cap(repr, limit)),
            // Optional by contract: one that is too large or not JSON (user
            // code can rebind `json.dumps`) is left out.
            result_json: output
                .result_json
                .filter(|json| json.len() <= limit && untrusted::is_json(json)),
            duration,
        })
    }

    /// Calls the handler of the function this session's instance was
    /// snapshotted with (see [`FunctionBuilder`](crate::FunctionBuilder)); see
    /// [`Sandbox::call_handler`](crate::Sandbox::call_handler).
    ///
    /// # Errors
    /// As [`Sandbox::call_handler`](crate::Sandbox::call_handler).
    pub async fn call_handler(
        &mut self,
        event_json: &str,
        context: &HandlerContext,
    ) -> Result<HandlerOutput> {
        let context_json = serde_json::json!({
            "request_id": context.request_id,
            "function_name": context.function_name,
            "function_version": context.function_version,
            "timeout_ms": self.settings.timeout.map(|t| t.as_millis() as u64),
        })
        .to_string();
        let (outcome, duration) = self
            .call(Call::Handler(event_json.to_owned(), context_json))
            .await?;
        let (output, stdout, stderr) = self.finish(outcome)?;
        let result_json = output.result_json.unwrap_or_else(|| "null".to_owned());
        let limit = self.settings.result_limit_bytes;
        if result_json.len() > limit {
            return Err(Error::ResultTooLarge {
                size: result_json.len(),
                limit,
            });
        }
        if !untrusted::is_json(&result_json) {
            return Err(Error::ResultNotJson);
        }
        Ok(HandlerOutput {
            result_json,
            stdout,
            stderr,
            instantiate_time: self.instantiate_time,
            duration,
        })
    }

    /// Runs one export call under the settings' timeout: the epoch deadline
    /// stops code running in the instance, and a host-side timer (a little
    /// later) stops one blocked in the host, e.g. in `time.sleep`.
    async fn call(&mut self, call: Call) -> Result<(GuestOutcome, Duration)> {
        let start = self.begin()?;
        let timeout = self.settings.timeout;
        let instance = &self.instance;
        let options = ExecuteOptions {
            output_limit_bytes: self.settings.output_limit_bytes,
            callbacks: !self.settings.callbacks.is_empty(),
            trace: self.settings.trace.is_some(),
        };
        let state = self.store.data_mut();
        state.invocations = 0;
        state.invocation_limit_hit = false;
        state.callback_timeout_hit = false;
        state.callbacks_open = true;
        let call = self.store.run_concurrent(async move |accessor| match call {
            Call::Execute(code) => instance.call_execute(accessor, code, options).await,
            Call::Handler(event, context) => {
                instance
                    .call_call_handler(accessor, event, context, options)
                    .await
            }
        });
        let waited = within(timeout, call).await;
        let duration = start.elapsed();
        self.store.data_mut().callbacks_open = false;
        let value = self.end(waited.map(|outcome| outcome.and_then(|r| r)))?;
        tracing::debug!(elapsed_us = duration.as_micros() as u64, "called");
        Ok((value, duration))
    }

    /// Starts an export call: refuses a session stopped earlier, and arms the
    /// deadline (see [`arm_deadline`](Self::arm_deadline)); returns the start.
    /// The call itself then runs under [`within`] the settings' timeout.
    fn begin(&mut self) -> Result<Instant> {
        self.ensure_usable()?;
        if let Some(fuel) = self.settings.fuel {
            self.store.set_fuel(fuel).map_err(Error::from_wasmtime)?;
        }
        Ok(self.arm_deadline())
    }

    /// Ends an export call begun with [`begin`](Self::begin): passes its
    /// value on; a host-side timeout or a failed call poisons the session,
    /// and a failed call becomes its typed error, with the output written
    /// before it.
    fn end<T>(&mut self, waited: Result<wasmtime::Result<T>>) -> Result<T> {
        let outcome = waited.inspect_err(|_| self.poisoned = true)?;
        outcome.map_err(|error| {
            self.poisoned = true;
            if let (Some(wasmtime::Trap::OutOfFuel), Some(fuel)) =
                (error.downcast_ref::<wasmtime::Trap>(), self.settings.fuel)
            {
                return Error::FuelExhausted { fuel };
            }
            let state = self.store.data();
            call_error(
                error,
                self.settings.timeout,
                state.limiter.hit(),
                state.stdout.take(),
                state.stderr.take(),
            )
        })
    }

    /// Refuses a call into an instance stopped by an earlier timeout or trap.
    fn ensure_usable(&self) -> Result<()> {
        if self.poisoned {
            return Err(Error::SessionEnded);
        }
        Ok(())
    }

    /// Starts the clock of a call: every few ticks of running code the
    /// instance yields to the async executor (so a busy handler cannot hold
    /// a worker thread), and past the timeout it is interrupted.
    fn arm_deadline(&mut self) -> Instant {
        let start = Instant::now();
        let deadline = self.settings.timeout.map(|t| start + t);
        self.store.epoch_deadline_callback(move |_| {
            Ok(match deadline {
                Some(deadline) if Instant::now() >= deadline => UpdateDeadline::Interrupt,
                _ => UpdateDeadline::Yield(YIELD_TICKS),
            })
        });
        self.store.set_epoch_deadline(YIELD_TICKS);
        start
    }

    /// Imports `function`'s module into this session's instance (as a
    /// [`FunctionBuilder`](crate::FunctionBuilder) does before snapshotting)
    /// so that [`call_handler`](Session::call_handler) can call its handler:
    /// the way to serve a function before its snapshot is compiled. The
    /// session's timeout and memory limit apply (not the source's).
    ///
    /// # Errors
    /// As [`FunctionBuilder::snapshot`](crate::FunctionBuilder::snapshot).
    pub async fn load_function(&mut self, function: &crate::FunctionSource<'_>) -> Result<()> {
        self.begin()?;
        let call = self.instance.call_load_function(
            &mut self.store,
            function.module_name,
            function.source,
            function.handler,
        );
        let waited = within(self.settings.timeout, call).await;
        let loaded = self.end(waited)?;
        // What the import printed is taken either way: on success it must not
        // show up in the next call's output.
        let state = self.store.data();
        let (stdout, stderr) = (state.stdout.take(), state.stderr.take());
        loaded.map_err(|error| {
            guest_error(
                error,
                stdout,
                stderr,
                state.limiter.hit(),
                self.settings.output_limit_bytes as usize,
            )
        })
    }

    /// Appends what was written straight to the WASI descriptors to the
    /// output, and converts a Python failure to its typed error.
    fn finish(
        &mut self,
        outcome: GuestOutcome,
    ) -> Result<(bindings::ExecuteOutput, String, String)> {
        // The guest's streams write through to the WASI descriptors, whose
        // capture the host caps; a record's own output fields (empty unless
        // user code replaced the streams' machinery) are capped too.
        let state = self.store.data();
        let limit = self.settings.output_limit_bytes as usize;
        let (fd_out, fd_err) = (state.stdout.take(), state.stderr.take());
        match outcome {
            Ok(mut output) => {
                let stdout = cap(std::mem::take(&mut output.stdout), limit) + &fd_out;
                let stderr = cap(std::mem::take(&mut output.stderr), limit) + &fd_err;
                Ok((output, stdout, stderr))
            }
            Err(error) => Err(self.callback_error(guest_error(
                error,
                fd_out,
                fd_err,
                state.limiter.hit(),
                limit,
            ))),
        }
    }

    /// A callback limit's own error for an exception that escaped because a
    /// callback limit was hit (`eryx.CallbackLimitExceeded`,
    /// `eryx.CallbackTimeout`); any other error unchanged.
    fn callback_error(&self, error: Error) -> Error {
        let Error::Exception(python) = &error else {
            return error;
        };
        let state = self.store.data();
        let limits = self.settings.callback_limits;
        match (
            python.type_name.as_str(),
            limits.max_invocations,
            limits.timeout,
        ) {
            ("eryx.CallbackLimitExceeded", Some(limit), _) if state.invocation_limit_hit => {
                Error::CallbackLimit {
                    limit,
                    error: python.clone(),
                }
            }
            ("eryx.CallbackTimeout", _, Some(limit)) if state.callback_timeout_hit => {
                Error::CallbackTimeout {
                    limit,
                    error: python.clone(),
                }
            }
            _ => error,
        }
    }

    /// Pickles the user's globals, under the session's timeout, and packs
    /// the instance's in-memory files (`/tmp`, `/work`) with them when there
    /// are any.
    ///
    /// In an instance with a loaded function (a function's snapshot), the
    /// globals are those of the function's module.
    ///
    /// # Errors
    /// [`Error::State`] when pickling fails as a whole;
    /// [`Error::StateTooLarge`] when the pickle and files together are larger
    /// than the state limit ([`with_state_limit_bytes`](crate::SandboxBuilder::with_state_limit_bytes));
    /// [`Error::Timeout`]; [`Error::Trap`] if the instance traps.
    pub async fn snapshot_state(&mut self) -> Result<StateSnapshot> {
        self.begin()?;
        let call = self.instance.call_snapshot_state(&mut self.store);
        let waited = within(self.settings.timeout, call).await;
        let snapshot = self
            .end(waited)?
            .map_err(|message| Error::State(cap(message, untrusted::MAX_MESSAGE_BYTES)))?;
        let data = self.with_files(snapshot.data)?;
        let limit = self.settings.state_limit_bytes;
        if data.len() > limit {
            return Err(Error::StateTooLarge {
                size: data.len(),
                limit,
            });
        }
        let mut skipped = snapshot.skipped;
        skipped.truncate(untrusted::MAX_SKIPPED_NAMES);
        for name in &mut skipped {
            *name = cap(std::mem::take(name), untrusted::MAX_TYPE_NAME_BYTES);
        }
        Ok(StateSnapshot { data, skipped })
    }

    /// Unpickles `snapshot` into the globals (names in it replace same-named
    /// globals; others are kept), under the session's timeout, and when it
    /// carries files, replaces the instance's `/tmp` and `/work` with them.
    /// Works in a fresh session too.
    ///
    /// # Errors
    /// [`Error::State`] when the data does not unpickle (the session keeps
    /// the globals it had); [`Error::Timeout`]; [`Error::Trap`].
    pub async fn restore_state(&mut self, snapshot: &StateSnapshot) -> Result<()> {
        self.restore_bytes(&snapshot.data).await
    }

    /// [`restore_state`](Self::restore_state) from the bytes of a pickle.
    pub(crate) async fn restore_bytes(&mut self, data: &[u8]) -> Result<()> {
        let (data, files) = split_files(data)?;
        let files = match files {
            Some(files) => Some(
                self.store
                    .data()
                    .memfs
                    .load_tar(files)
                    .map_err(Error::State)?,
            ),
            None => None,
        };
        self.begin()?;
        let call = self.instance.call_restore_state(&mut self.store, data);
        let waited = within(self.settings.timeout, call).await;
        self.end(waited)?
            .map_err(|message| Error::State(cap(message, untrusted::MAX_MESSAGE_BYTES)))?;
        if let Some(files) = files {
            self.store.data().memfs.replace(files);
        }
        Ok(())
    }

    /// Removes every user global.
    ///
    /// # Errors
    /// [`Error::Timeout`]; [`Error::Trap`] if the instance traps.
    pub async fn clear_state(&mut self) -> Result<()> {
        self.begin()?;
        let call = self.instance.call_clear_state(&mut self.store);
        let waited = within(self.settings.timeout, call).await;
        self.end(waited)
    }
}

/// The first bytes of a state that carries files: a pickle (protocol 2 and
/// up) starts with `0x80`, so the two never mix up.
const FILES_MAGIC: &[u8; 8] = b"ERYXFS1\0";

impl Session {
    /// `pickle` with the instance's in-memory files appended, when there are
    /// any: `FILES_MAGIC`, the pickle's length (u64 little-endian), the
    /// pickle, a tar of the files. Without files, the pickle alone.
    ///
    /// # Errors
    /// [`Error::StateTooLarge`] when the files do not fit in what the state
    /// limit leaves after the pickle (checked before the tar is built).
    fn with_files(&self, pickle: Vec<u8>) -> Result<Vec<u8>> {
        let memfs = &self.store.data().memfs;
        if memfs.is_empty() {
            return Ok(pickle);
        }
        let limit = self.settings.state_limit_bytes;
        let room = limit.saturating_sub(16 + pickle.len());
        let files = memfs.to_tar(room).map_err(|e| match e {
            // Refused before the archive is built: a state over its limit
            // never costs its size in host memory.
            crate::memfs::TarError::TooLarge(size) => Error::StateTooLarge {
                size: usize::try_from(size)
                    .unwrap_or(usize::MAX)
                    .saturating_add(16 + pickle.len()),
                limit,
            },
            crate::memfs::TarError::Io(e) => {
                Error::State(format!("packing the files of the state: {e}"))
            }
        })?;
        let mut data = Vec::with_capacity(16 + pickle.len() + files.len());
        data.extend_from_slice(FILES_MAGIC);
        data.extend_from_slice(&(pickle.len() as u64).to_le_bytes());
        data.extend_from_slice(&pickle);
        data.extend_from_slice(&files);
        Ok(data)
    }
}

/// A state's pickle and, when it carries them, its files (see
/// [`Session::with_files`]).
fn split_files(data: &[u8]) -> Result<(&[u8], Option<&[u8]>)> {
    let Some(rest) = data.strip_prefix(FILES_MAGIC.as_slice()) else {
        return Ok((data, None));
    };
    let malformed = || Error::State("the state's files are malformed".to_owned());
    let (len, rest) = rest.split_first_chunk::<8>().ok_or_else(malformed)?;
    let len = usize::try_from(u64::from_le_bytes(*len)).map_err(|_| malformed())?;
    if len > rest.len() {
        return Err(malformed());
    }
    let (pickle, files) = rest.split_at(len);
    Ok((pickle, Some(files)))
}

/// Awaits `call`, giving up [`HOST_TIMEOUT_MARGIN`] after `timeout` (a call
/// blocked in the host, where epoch deadlines are not checked) with
/// [`Error::Timeout`].
pub(crate) async fn within<T>(
    timeout: Option<Duration>,
    call: impl Future<Output = T>,
) -> Result<T> {
    match timeout {
        Some(limit) => tokio::time::timeout(limit + HOST_TIMEOUT_MARGIN, call)
            .await
            .map_err(|_| Error::Timeout { limit }),
        None => Ok(call.await),
    }
}

/// The typed error of a failed export call: a timeout when the instance was
/// interrupted at its deadline (`timeout`), the memory limit when it trapped
/// after a refused growth (`memory_hit`), else a trap or host error.
pub(crate) fn call_error(
    error: wasmtime::Error,
    timeout: Option<Duration>,
    memory_hit: Option<u64>,
    stdout: String,
    stderr: String,
) -> Error {
    if let (Some(wasmtime::Trap::Interrupt), Some(limit)) =
        (error.downcast_ref::<wasmtime::Trap>(), timeout)
    {
        return Error::Timeout { limit };
    }
    match (
        Error::from_wasmtime_with_output(error, stdout, stderr),
        memory_hit,
    ) {
        (Error::Trap(_), Some(limit_bytes)) => Error::MemoryLimit {
            limit_bytes,
            error: None,
        },
        (error, _) => error,
    }
}

/// The typed error of a Python failure reported by the guest, with the
/// output written to the WASI descriptors appended; a `MemoryError` after a
/// refused growth (`memory_hit`) is the memory limit. Every string from the
/// guest is capped (output fields at `output_limit` bytes).
pub(crate) fn guest_error(
    error: bindings::ExecuteError,
    fd_out: String,
    fd_err: String,
    memory_hit: Option<u64>,
    output_limit: usize,
) -> Error {
    match (
        python_error(error, fd_out, fd_err, output_limit),
        memory_hit,
    ) {
        (Error::Exception(python), Some(limit_bytes)) if python.type_name == "MemoryError" => {
            Error::MemoryLimit {
                limit_bytes,
                error: Some(python),
            }
        }
        (error, _) => error,
    }
}

/// The typed error of a Python failure reported by the guest.
fn python_error(
    error: bindings::ExecuteError,
    fd_out: String,
    fd_err: String,
    output_limit: usize,
) -> Error {
    let stdout = cap(error.stdout, output_limit) + &fd_out;
    let stderr = cap(error.stderr, output_limit) + &fd_err;
    let message = cap(error.message, untrusted::MAX_MESSAGE_BYTES);
    match error.kind {
        ErrorKind::Exit => {
            let (code, message) = match message.parse::<i32>() {
                Ok(code) => (code, None),
                Err(_) => (1, Some(message)),
            };
            Error::Exit {
                code,
                message,
                stdout,
                stderr,
            }
        }
        kind => {
            let python = PythonError {
                type_name: cap(error.type_name, untrusted::MAX_TYPE_NAME_BYTES),
                message,
                traceback: cap(error.traceback, untrusted::MAX_TRACEBACK_BYTES),
                stdout,
                stderr,
            };
            if kind == ErrorKind::Syntax {
                Error::Compile(Box::new(python))
            } else {
                Error::Exception(Box::new(python))
            }
        }
    }
}
