//! [`FunctionBuilder`]: per-function snapshots. A function's snapshot is the
//! base snapshot (CPython started, common modules imported) with the user's
//! module imported too, so each request's instance starts with the module's
//! top-level code (imports, setup) already run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wasmtime::Store;
use wasmtime::component::{Component, Linker};
use wasmtime_wizer::{WasmtimeWizerComponent, Wizer};

use crate::bindings::{self, HostState};
use crate::session::{call_error, guest_error, within};
use crate::{Engine, Error, Result};

/// Output kept of each of stdout and stderr while a function's module is
/// imported: 64 KiB.
const IMPORT_OUTPUT_LIMIT_BYTES: u32 = 64 << 10;

/// One function to snapshot: its module's source and handler name.
#[derive(Debug, Clone)]
pub struct FunctionSource<'a> {
    /// The module's name in `sys.modules`; tracebacks name its file
    /// `<module_name>.py`.
    pub module_name: &'a str,
    /// The module's Python source.
    pub source: &'a str,
    /// Name of the handler function the module must define.
    pub handler: &'a str,
    /// Longest the module's top-level code may run.
    pub import_timeout: Duration,
    /// Memory limit while it runs, in bytes (`None`: the engine's).
    pub memory_limit_bytes: Option<u64>,
}

/// A per-function snapshot, not yet compiled; see [`FunctionBuilder::compile`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FunctionSnapshot {
    /// The snapshot: a component (`.wasm` bytes) whose instances start with
    /// the module imported.
    pub wasm: Vec<u8>,
    /// What the module's top-level code printed (up to 64 KiB).
    pub stdout: String,
    /// What it wrote to stderr (up to 64 KiB).
    pub stderr: String,
    /// Time to import the module and snapshot the instance.
    pub snapshot_time: Duration,
}

/// Builds per-function snapshots from one base snapshot (the `.wasm` the
/// base artifact was compiled from). Made once per process: it instruments
/// the base for wizer and compiles that once (or loads it from the engine's
/// compile cache directory).
pub struct FunctionBuilder {
    engine: Engine,
    unpooled: wasmtime::Engine,
    base: Vec<u8>,
    component: Component,
    linker: Linker<HostState>,
    stdlib_dir: PathBuf,
}

impl std::fmt::Debug for FunctionBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionBuilder")
            .field("base_bytes", &self.base.len())
            .finish_non_exhaustive()
    }
}

impl FunctionBuilder {
    /// Prepares to build snapshots of `base_snapshot` (a pre-initialized
    /// component) for `engine`, with the standard library at `stdlib_dir`.
    /// CPU-heavy the first time (a Cranelift compile, seconds); later it loads
    /// the compiled form from the engine's compile cache directory.
    ///
    /// # Errors
    /// [`Error::Host`] when the component cannot be instrumented or compiled.
    pub fn new(
        engine: &Engine,
        base_snapshot: Vec<u8>,
        stdlib_dir: &Path,
    ) -> Result<FunctionBuilder> {
        let (_, instrumented) = Wizer::new()
            .instrument_component(&base_snapshot)
            .map_err(Error::from_wasmtime)?;
        let unpooled = engine.unpooled()?;
        let options = engine.options();
        let cache = options
            .compile_cache_dir
            .as_deref()
            .zip(options.signing_key.as_ref());
        let component = compile_cached(&unpooled, &instrumented, cache)?;
        let linker = crate::engine::linker(&unpooled)?;
        Ok(FunctionBuilder {
            engine: engine.clone(),
            unpooled,
            base: base_snapshot,
            component,
            linker,
            stdlib_dir: stdlib_dir.to_owned(),
        })
    }

    /// Imports `function`'s module into an instance of the base snapshot and
    /// snapshots that instance with wizer (about half a second); compile the
    /// snapshot with [`compile`](FunctionBuilder::compile).
    ///
    /// # Errors
    /// [`Error::Compile`] for a syntax error; [`Error::Exception`] when the
    /// module raises while imported or lacks the handler (type
    /// `eryx.HandlerNotFound`); [`Error::Exit`] when it calls `sys.exit`;
    /// [`Error::Timeout`] past `import_timeout` (also when the module is
    /// blocked in the host, e.g. in `time.sleep`), or when the collection
    /// before the snapshot, which may run the module's finalizers, takes as
    /// long; [`Error::MemoryLimit`];
    /// [`Error::Host`] when snapshotting fails.
    pub async fn snapshot(&self, function: &FunctionSource<'_>) -> Result<FunctionSnapshot> {
        self.snapshot_with_mounts(function, &[]).await
    }

    /// As [`snapshot`](Self::snapshot), with directories mounted on
    /// `sys.path` while the module is imported, so it may import from them
    /// (e.g. a [`RuntimeLibrary`](crate::RuntimeLibrary)'s, from
    /// [`RuntimeLibrary::install`](crate::RuntimeLibrary::install)). Every
    /// sandbox that runs the snapshot must mount the same directories in
    /// the same order (the same libraries and packages, added in the same
    /// order).
    ///
    /// # Errors
    /// As [`snapshot`](Self::snapshot).
    pub async fn snapshot_with_mounts(
        &self,
        function: &FunctionSource<'_>,
        mounts: &[PathBuf],
    ) -> Result<FunctionSnapshot> {
        let start = Instant::now();
        let wizer = Wizer::new();
        // The context borrows the base bytes; re-instrumenting yields the
        // same component that was compiled in `new`.
        let (context, _) = wizer
            .instrument_component(&self.base)
            .map_err(Error::from_wasmtime)?;
        let mut state = HostState::new(
            &self.stdlib_dir,
            IMPORT_OUTPUT_LIMIT_BYTES,
            &[],
            mounts,
            crate::FsLimits::default(),
        )?;
        state.limiter.limit_bytes = function
            .memory_limit_bytes
            .map(|b| usize::try_from(b).unwrap_or(usize::MAX));
        let mut store = Store::new(&self.unpooled, state);
        self.engine.unlimited_fuel(&mut store)?;
        store.limiter(|state| &mut state.limiter);
        store.set_epoch_deadline(Engine::deadline_ticks(Some(function.import_timeout)));
        let instance = self
            .linker
            .instantiate_async(&mut store, &self.component)
            .await
            .map_err(Error::from_wasmtime)?;
        let sandbox =
            bindings::Sandbox::new(&mut store, &instance).map_err(Error::from_wasmtime)?;
        // The epoch deadline stops code that runs; the host-side timer stops
        // code blocked in the host (`time.sleep` at import), so a deploy never
        // outlives its import timeout.
        let loaded = within(
            Some(function.import_timeout),
            sandbox.call_load_function(
                &mut store,
                function.module_name,
                function.source,
                function.handler,
            ),
        )
        .await?;
        let state = store.data();
        let memory_hit = state.limiter.hit();
        let (fd_out, fd_err) = (state.stdout.take(), state.stderr.take());
        match loaded {
            Err(error) => {
                return Err(call_error(
                    error,
                    Some(function.import_timeout),
                    memory_hit,
                    fd_out,
                    fd_err,
                ));
            }
            Ok(Err(error)) => {
                return Err(guest_error(
                    error,
                    fd_out,
                    fd_err,
                    memory_hit,
                    IMPORT_OUTPUT_LIMIT_BYTES as usize,
                ));
            }
            Ok(Ok(())) => {}
        }
        // A budget of its own, as long as the import's: the collection it
        // starts may run the module's finalizers (user code), so it keeps the
        // module's timeout and memory limit; the walk after it is short.
        store.set_epoch_deadline(Engine::deadline_ticks(Some(function.import_timeout)));
        let prepared = within(
            Some(function.import_timeout),
            sandbox.call_prepare_snapshot(&mut store),
        )
        .await?;
        if let Err(message) = prepared.map_err(|error| {
            let state = store.data();
            let (fd_out, fd_err) = (state.stdout.take(), state.stderr.take());
            call_error(
                error,
                Some(function.import_timeout),
                state.limiter.hit(),
                fd_out,
                fd_err,
            )
        })? {
            return Err(Error::Host(format!("preparing the snapshot: {message}")));
        }
        let mut target = WasmtimeWizerComponent {
            store: &mut store,
            instance,
        };
        let snapshot = wizer
            .snapshot_component(&context, &mut target)
            .await
            .map_err(Error::from_wasmtime)?;
        let snapshot_time = start.elapsed();
        tracing::debug!(
            snapshot_ms = snapshot_time.as_millis() as u64,
            "snapshotted a function"
        );
        Ok(FunctionSnapshot {
            wasm: snapshot,
            stdout: fd_out,
            stderr: fd_err,
            snapshot_time,
        })
    }

    /// Precompiles a snapshot for the builder's engine (`.cwasm` bytes), on a
    /// blocking thread. With the engine's
    /// [compile cache](crate::EngineOptions::compile_cache_dir) every
    /// function whose code the base already had is a cache hit; what remains
    /// is translating, hashing and linking (seconds for CPython's ~17,000
    /// functions, see `benches/README.md`).
    ///
    /// # Errors
    /// [`Error::Host`] when the snapshot does not compile.
    pub async fn compile(&self, snapshot: Vec<u8>) -> Result<Vec<u8>> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.precompile(&snapshot))
            .await
            .map_err(|e| Error::Host(format!("compile task: {e}")))?
    }
}

/// The signing domain of cached compiled components.
const COMPONENT_DOMAIN: &str = "eryx-compiled-component";

/// Compiles `wasm` on `engine`, keeping the compiled form in `cache_dir` (by
/// the content hash of `wasm`, signed with `key`) when there is one.
fn compile_cached(
    engine: &wasmtime::Engine,
    wasm: &[u8],
    cache: Option<(&Path, &crate::SigningKey)>,
) -> Result<Component> {
    let Some((dir, key)) = cache else {
        return Component::new(engine, wasm).map_err(Error::from_wasmtime);
    };
    let path = dir.join(format!("component-{}.cwasm", crate::content_hash(wasm)));
    // One read: the bytes whose tag is checked are the bytes deserialized.
    if let Ok(entry) = std::fs::read(&path) {
        match entry.split_at_checked(32) {
            Some((tag, bytes)) if key.verify(COMPONENT_DOMAIN, bytes, tag) => {
                // SAFETY: these bytes carry a valid HMAC under the engine's
                // signing key in the `COMPONENT_DOMAIN` domain, which only the
                // `serialize` below (in a process holding the key) signs, so
                // they are a component this engine configuration compiled;
                // wasmtime also checks the header's version and settings and
                // refuses a mismatch.
                match unsafe { Component::deserialize(engine, bytes) } {
                    Ok(component) => return Ok(component),
                    Err(error) => tracing::warn!("recompiling {}: {error:#}", path.display()),
                }
            }
            _ => tracing::warn!("{} has a bad tag: recompiling", path.display()),
        }
    }
    let component = Component::new(engine, wasm).map_err(Error::from_wasmtime)?;
    let bytes = component.serialize().map_err(Error::from_wasmtime)?;
    let mut entry = key.sign(COMPONENT_DOMAIN, &bytes).to_vec();
    entry.extend_from_slice(&bytes);
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&temporary, entry)
        .and_then(|()| std::fs::rename(&temporary, &path))
        .is_err()
    {
        tracing::warn!("could not cache {}", path.display());
        let _ = std::fs::remove_file(&temporary);
    }
    Ok(component)
}
