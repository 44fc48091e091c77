//! Host bindings generated from `wit/sandbox.wit`, and the host side of the
//! world's imports.

use std::path::Path;
use std::sync::Arc;

use wasmtime::component::{Accessor, HasSelf, ResourceTable};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::callback::{CallbackError, CallbackErrorKind, CallbackLimits, Callbacks};
use crate::output::OutputCapture;
use crate::trace::TraceHandler;
use crate::{Error, Result};

wasmtime::component::bindgen!({
    path: "../wit/sandbox.wit",
    world: "sandbox",
    exports: { default: async },
    imports: {
        "net-connect": async,
        "net-start-tls": async,
        "net-send": async,
        "net-recv": async,
        "net-readable": async,
    },
});

/// Per-instance host state: the instance's WASI context and resource table,
/// and what it writes to file descriptors 1 and 2.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) stdout: OutputCapture,
    pub(crate) stderr: OutputCapture,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) callbacks: Arc<Callbacks>,
    pub(crate) callback_limits: CallbackLimits,
    /// Callback invocations in the current call (reset per export call).
    pub(crate) invocations: u32,
    /// Whether an invocation was refused for the invocation limit.
    pub(crate) invocation_limit_hit: bool,
    /// Whether a callback ran past the per-callback timeout.
    pub(crate) callback_timeout_hit: bool,
    /// Whether callbacks may run now: only during `execute` and
    /// `call-handler` (not while a state is pickled or unpickled).
    pub(crate) callbacks_open: bool,
    /// Host calls (`invoke`, `sleep`) in flight, capped at [`MAX_IN_FLIGHT`].
    pub(crate) in_flight: Arc<std::sync::atomic::AtomicUsize>,
    pub(crate) trace: Option<Arc<dyn TraceHandler>>,
    /// The instance's writable in-memory `/tmp` and `/work`.
    pub(crate) memfs: crate::memfs::MemFs,
    /// The instance's outbound connections, made under its network policy.
    pub(crate) net: crate::net::Connections,
}

/// Caps each linear memory of an instance, and remembers whether the cap
/// refused a growth (so a `MemoryError` or trap can be reported as the
/// memory limit).
#[derive(Debug, Default)]
pub(crate) struct MemoryLimiter {
    /// The cap in bytes; `None` leaves only the engine's pool limit.
    pub(crate) limit_bytes: Option<usize>,
    /// Whether a growth past the cap was refused.
    pub(crate) denied: bool,
}

impl MemoryLimiter {
    /// The limit in bytes, when a growth past it was refused.
    pub(crate) fn hit(&self) -> Option<u64> {
        self.denied.then(|| self.limit_bytes.unwrap_or(0) as u64)
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if self.limit_bytes.is_some_and(|limit| desired > limit) {
            self.denied = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

impl HostState {
    /// The sandbox's WASI world: the standard library read-only at `/python`,
    /// the few environment variables CPython needs, captured stdout/stderr
    /// (each kept up to `output_limit_bytes` per call, on the host), `env`
    /// (validated: no `=` or NUL in names, no NUL in values) added to the
    /// environment, no sockets, nothing else —
    /// but `mounts` (host directories of libraries and packages)
    /// read-only at `/eryx/path/<n>`, named in `ERYX_PATHS` for the guest to
    /// put on `sys.path`.
    pub(crate) fn new(
        stdlib_dir: &Path,
        output_limit_bytes: u32,
        env: &[(String, String)],
        mounts: &[std::path::PathBuf],
        fs_limits: crate::FsLimits,
    ) -> Result<HostState> {
        let stdout = OutputCapture::new(output_limit_bytes as usize);
        let stderr = OutputCapture::new(output_limit_bytes as usize);
        let mut wasi = WasiCtxBuilder::new();
        wasi.preopened_dir(stdlib_dir, "python", FsPerms::ReadOnly)
            .map_err(|e| {
                Error::Config(format!(
                    "mounting the standard library {}: {e:#}",
                    stdlib_dir.display()
                ))
            })?
            .env("PYTHONHOME", "/python")
            .env("PYTHONPATH", "/python")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("TMPDIR", crate::TMP_DIR)
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for (key, value) in env {
            check_env(key, value)?;
            wasi.env(key, value);
        }
        let mut paths = Vec::with_capacity(mounts.len());
        for (n, dir) in mounts.iter().enumerate() {
            let guest = crate::library::guest_path(n);
            wasi.preopened_dir(dir, &guest, FsPerms::ReadOnly)
                .map_err(|e| Error::Config(format!("mounting {}: {e:#}", dir.display())))?;
            paths.push(guest);
        }
        if !paths.is_empty() {
            wasi.env(crate::library::PATHS_VAR, paths.join(":"));
        }
        Ok(HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            stdout,
            stderr,
            limiter: MemoryLimiter::default(),
            callbacks: Arc::default(),
            callback_limits: CallbackLimits::default(),
            invocations: 0,
            invocation_limit_hit: false,
            callback_timeout_hit: false,
            callbacks_open: false,
            in_flight: Arc::default(),
            trace: None,
            memfs: crate::memfs::MemFs::new(fs_limits),
            net: crate::net::Connections::new(crate::NetworkPolicy::new()),
        })
    }
}

/// Checks one environment variable for an instance: a name that is not
/// empty and has no `=` or NUL, a value without NUL (WASI passes them as C
/// strings; a NUL would make every instance fail at start).
/// [`SandboxBuilder::build`](crate::SandboxBuilder::build) applies it; callers
/// that accept variables from users can check them earlier with it.
///
/// # Errors
/// [`Error::Config`] naming the variable.
pub fn check_env(key: &str, value: &str) -> Result<()> {
    if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
        return Err(Error::Config(format!(
            "environment variable {key:?}: a name must be non-empty without `=` or NUL, a value without NUL"
        )));
    }
    Ok(())
}

impl HostState {
    /// `wasi:filesystem` of this instance: wasmtime-wasi's host-backed
    /// directories and the in-memory tree.
    pub(crate) fn filesystem_view(&mut self) -> crate::memfs::FsView<'_> {
        crate::memfs::FsView {
            host: wasmtime_wasi::filesystem::WasiFilesystemCtxView {
                ctx: self.wasi.filesystem(),
                table: &mut self.table,
            },
            mem: &self.memfs,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl SandboxImports for HostState {
    fn list_callbacks(&mut self) -> Vec<CallbackInfo> {
        self.callbacks
            .iter()
            .map(|registered| CallbackInfo {
                name: registered.callback.name().to_owned(),
                description: registered.callback.description().to_owned(),
                parameters_schema_json: registered.schema.to_string(),
            })
            .collect()
    }

    async fn net_connect(
        &mut self,
        host: String,
        port: u16,
        timeout_ms: u32,
    ) -> std::result::Result<u32, String> {
        self.net.connect(&host, port, timeout_ms).await
    }

    async fn net_start_tls(
        &mut self,
        connection: u32,
        server_name: String,
        alpn: Vec<String>,
        timeout_ms: u32,
    ) -> std::result::Result<String, String> {
        self.net
            .start_tls(connection, &server_name, alpn, timeout_ms)
            .await
    }

    async fn net_send(
        &mut self,
        connection: u32,
        data: Vec<u8>,
        timeout_ms: u32,
    ) -> std::result::Result<u32, String> {
        self.net.send(connection, &data, timeout_ms).await
    }

    async fn net_recv(
        &mut self,
        connection: u32,
        max_bytes: u32,
        timeout_ms: u32,
    ) -> std::result::Result<Vec<u8>, String> {
        self.net.recv(connection, max_bytes, timeout_ms).await
    }

    async fn net_readable(&mut self, connection: u32, timeout_ms: u32) -> bool {
        self.net.readable(connection, timeout_ms).await
    }

    fn net_close(&mut self, connection: u32) {
        self.net.close(connection);
    }

    fn report_trace(&mut self, events: Vec<TraceEvent>) {
        if let Some(handler) = &self.trace {
            crate::trace::deliver(handler.as_ref(), events);
        }
    }
}

/// Most host calls (`invoke` and `sleep`) one instance may have in flight:
/// each is a future on the host, so user code must not be able to start an
/// unbounded number.
pub(crate) const MAX_IN_FLIGHT: usize = 1024;

/// Counts one host call in flight until dropped (also when the guest
/// cancels it and the host drops its future).
struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl InFlight {
    fn enter(counter: &Arc<std::sync::atomic::AtomicUsize>) -> Option<InFlight> {
        use std::sync::atomic::Ordering;
        let previous = counter.fetch_add(1, Ordering::Relaxed);
        if previous >= MAX_IN_FLIGHT {
            counter.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(InFlight(counter.clone()))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What `invoke` needs to run one callback.
struct Invocation {
    registered: crate::callback::Registered,
    timeout: Option<std::time::Duration>,
    _in_flight: InFlight,
}

impl HostState {
    /// Looks up callback `name` for one invocation, counting it against the
    /// invocation limit and the in-flight cap.
    fn begin_invocation(&mut self, name: &str) -> std::result::Result<Invocation, CallbackError> {
        if !self.callbacks_open {
            return Err(CallbackError::with_kind(
                CallbackErrorKind::Limit,
                "host callbacks are available only while code runs (execute or a handler)",
            ));
        }
        let Some(registered) = self.callbacks.get(name).cloned() else {
            return Err(CallbackError::with_kind(
                CallbackErrorKind::NotFound,
                format!("no host callback named {name:?}"),
            ));
        };
        if let Some(max) = self.callback_limits.max_invocations
            && self.invocations >= max
        {
            self.invocation_limit_hit = true;
            return Err(CallbackError::with_kind(
                CallbackErrorKind::Limit,
                format!("at most {max} callback invocations are allowed per call"),
            ));
        }
        let Some(in_flight) = InFlight::enter(&self.in_flight) else {
            return Err(CallbackError::with_kind(
                CallbackErrorKind::Limit,
                format!("at most {MAX_IN_FLIGHT} host calls may be in flight at once"),
            ));
        };
        self.invocations += 1;
        Ok(Invocation {
            registered,
            timeout: self.callback_limits.timeout,
            _in_flight: in_flight,
        })
    }
}

impl SandboxImportsWithStore<HostState> for HasSelf<HostState> {
    async fn invoke(
        accessor: &Accessor<HostState, Self>,
        name: String,
        arguments_json: String,
    ) -> Result<String, String> {
        let invocation = accessor
            .with(|mut access| access.get().begin_invocation(&name))
            .map_err(|e| e.to_wire())?;
        // The guest checked the arguments against the schema, but user code
        // can call the host directly: check the same rules again here.
        let arguments: serde_json::Value = serde_json::from_str(&arguments_json)
            .map_err(|e| CallbackError::invalid_arguments(format!("{name}(): {e}")).to_wire())?;
        crate::callback::check_arguments(&name, &invocation.registered.schema, &arguments)
            .map_err(|e| e.to_wire())?;
        let call = invocation.registered.callback.call(arguments);
        let outcome = match invocation.timeout {
            Some(limit) => match tokio::time::timeout(limit, call).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    accessor.with(|mut access| access.get().callback_timeout_hit = true);
                    Err(CallbackError::with_kind(
                        CallbackErrorKind::Timeout,
                        format!("{name}() did not finish within {} ms", limit.as_millis()),
                    ))
                }
            },
            None => call.await,
        };
        outcome
            .map(|value| value.to_string())
            .map_err(|e| e.to_wire())
    }

    async fn sleep(accessor: &Accessor<HostState, Self>, nanoseconds: u64) {
        // Outside a call, or past the in-flight cap, the timer fires at once
        // (the guest's loop then just checks its clock again).
        let Some(_in_flight) = accessor.with(|mut access| {
            let state = access.get();
            state
                .callbacks_open
                .then(|| InFlight::enter(&state.in_flight))
                .flatten()
        }) else {
            return;
        };
        tokio::time::sleep(std::time::Duration::from_nanos(nanoseconds)).await;
    }
}
