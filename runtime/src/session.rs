//! [`Session`]: one instance kept for several calls (REPL-style), with
//! state snapshots.

use std::time::Instant;

use wasmtime::Store;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use crate::bindings::{self, ErrorKind, ExecuteOptions, HostState};
use crate::{Error, ExecuteResult, PythonError, Result, Runtime};

/// One live instance: Python globals persist from one
/// [`execute`](Session::execute) to the next, like a REPL.
pub struct Session {
    store: Store<HostState>,
    instance: bindings::Sandbox,
    output_limit_bytes: u32,
    stdout_seen: Seen,
    stderr_seen: Seen,
}

/// How much of what the instance wrote to one WASI descriptor earlier calls
/// already returned.
#[derive(Default)]
struct Seen(usize);

impl Seen {
    /// What was written to `pipe` since the last call.
    fn take_new(&mut self, pipe: &MemoryOutputPipe) -> String {
        let bytes = pipe.contents();
        let new = String::from_utf8_lossy(&bytes[self.0.min(bytes.len())..]).into_owned();
        self.0 = bytes.len();
        new
    }
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
    pub(crate) async fn new(runtime: &Runtime, output_limit_bytes: u32) -> Result<Session> {
        // What the code writes to file descriptors 1 and 2 directly (bypassing
        // `sys.stdout`) is kept up to the same limit.
        let state = HostState::new(runtime.stdlib_dir(), output_limit_bytes)?;
        let start = Instant::now();
        let mut store = Store::new(runtime.engine().wasmtime(), state);
        let instance = runtime
            .pre()
            .instantiate_async(&mut store)
            .await
            .map_err(Error::from_wasmtime)?;
        tracing::debug!(
            elapsed_us = start.elapsed().as_micros() as u64,
            "instantiated"
        );
        Ok(Session {
            store,
            instance,
            output_limit_bytes,
            stdout_seen: Seen::default(),
            stderr_seen: Seen::default(),
        })
    }

    /// Runs `code` in this session's `__main__`; globals from earlier calls
    /// are visible. See [`Sandbox::execute`](crate::Sandbox::execute).
    ///
    /// # Errors
    /// As [`Sandbox::execute`](crate::Sandbox::execute).
    pub async fn execute(&mut self, code: &str) -> Result<ExecuteResult> {
        let start = Instant::now();
        let instance = &self.instance;
        let code = code.to_owned();
        let options = ExecuteOptions {
            output_limit_bytes: self.output_limit_bytes,
        };
        let outcome = self
            .store
            .run_concurrent(async move |accessor| {
                instance.call_execute(accessor, code, options).await
            })
            .await
            .and_then(|r| r)
            .map_err(Error::from_wasmtime)?;
        let duration = start.elapsed();
        tracing::debug!(elapsed_us = duration.as_micros() as u64, "executed");
        // Output written straight to the WASI descriptors goes after what
        // Python buffered; both are bounded.
        let fd_out = self.stdout_seen.take_new(&self.store.data().stdout);
        let fd_err = self.stderr_seen.take_new(&self.store.data().stderr);
        match outcome {
            Ok(output) => Ok(ExecuteResult {
                stdout: output.stdout + &fd_out,
                stderr: output.stderr + &fd_err,
                result: output.result_repr,
                result_json: output.result_json,
                duration,
            }),
            Err(error) => {
                let stdout = error.stdout + &fd_out;
                let stderr = error.stderr + &fd_err;
                Err(match error.kind {
                    ErrorKind::Exit => {
                        let (code, message) = match error.message.parse::<i32>() {
                            Ok(code) => (code, None),
                            Err(_) => (1, Some(error.message)),
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
                            type_name: error.type_name,
                            message: error.message,
                            traceback: error.traceback,
                            stdout,
                            stderr,
                        };
                        if kind == ErrorKind::Syntax {
                            Error::Compile(python)
                        } else {
                            Error::Exception(python)
                        }
                    }
                })
            }
        }
    }

    /// Pickles the user's globals.
    ///
    /// # Errors
    /// [`Error::State`] when pickling fails as a whole; [`Error::Trap`] if
    /// the instance traps.
    pub async fn snapshot_state(&mut self) -> Result<StateSnapshot> {
        let snapshot = self
            .instance
            .call_snapshot_state(&mut self.store)
            .await
            .map_err(Error::from_wasmtime)?
            .map_err(Error::State)?;
        Ok(StateSnapshot {
            data: snapshot.data,
            skipped: snapshot.skipped,
        })
    }

    /// Unpickles `snapshot` into the globals (names in it replace same-named
    /// globals; others are kept). Works in a fresh session too.
    ///
    /// # Errors
    /// [`Error::State`] when the data does not unpickle (the session keeps
    /// the globals it had).
    pub async fn restore_state(&mut self, snapshot: &StateSnapshot) -> Result<()> {
        self.instance
            .call_restore_state(&mut self.store, &snapshot.data)
            .await
            .map_err(Error::from_wasmtime)?
            .map_err(Error::State)
    }

    /// Removes every user global.
    ///
    /// # Errors
    /// [`Error::Trap`] if the instance traps.
    pub async fn clear_state(&mut self) -> Result<()> {
        self.instance
            .call_clear_state(&mut self.store)
            .await
            .map_err(Error::from_wasmtime)
    }
}
