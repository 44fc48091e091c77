//! [`Session`]: one instance kept for several calls (REPL-style), with
//! state snapshots.

use std::time::Instant;

use wasmtime::Store;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::bindings::{self, ErrorKind, ExecuteOptions, HostState};
use crate::{Error, ExecuteResult, PythonError, Result, Runtime};

/// One live instance: Python globals persist from one
/// [`execute`](Session::execute) to the next, like a REPL.
pub struct Session {
    store: Store<HostState>,
    instance: bindings::Sandbox,
    output_limit_bytes: u32,
    stdout: FdOutput,
    stderr: FdOutput,
}

/// What the instance wrote to one WASI descriptor, and how much of it earlier
/// calls already returned.
struct FdOutput {
    pipe: MemoryOutputPipe,
    seen: usize,
}

impl FdOutput {
    fn new(limit: u32) -> FdOutput {
        FdOutput {
            pipe: MemoryOutputPipe::new(limit as usize),
            seen: 0,
        }
    }

    /// What was written since the last call.
    fn take_new(&mut self) -> String {
        let bytes = self.pipe.contents();
        let new = String::from_utf8_lossy(&bytes[self.seen.min(bytes.len())..]).into_owned();
        self.seen = bytes.len();
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
        let stdout = FdOutput::new(output_limit_bytes);
        let stderr = FdOutput::new(output_limit_bytes);
        let mut wasi = WasiCtxBuilder::new();
        wasi.preopened_dir(runtime.stdlib_dir(), "python", FsPerms::ReadOnly)
            .map_err(|e| Error::Config(format!("mounting the standard library: {e:#}")))?
            .env("PYTHONHOME", "/python")
            .env("PYTHONPATH", "/python")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdout(stdout.pipe.clone())
            .stderr(stderr.pipe.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let state = HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
        };
        let start = Instant::now();
        let mut store = Store::new(runtime.engine(), state);
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
            stdout,
            stderr,
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
        let fd_out = self.stdout.take_new();
        let fd_err = self.stderr.take_new();
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
