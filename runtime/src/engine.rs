//! [`Engine`]: the wasmtime engine with eryx's configuration, built once per
//! process; it also pre-initializes and precompiles components, so artifacts
//! are always made by exactly the configuration that loads them.

use std::hash::Hasher;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wizer::{WasmtimeWizerComponent, Wizer};

use crate::bindings::{self, HostState};
use crate::{Error, Result};

/// The wasmtime version eryx is built on (pinned in the workspace).
pub const WASMTIME_VERSION: &str = "48.0.8";

/// Core instances, memories and tables one eryx component instance uses at
/// most, as measured on the linked CPython component (≈12 core instances:
/// one per shared library plus wit-component's shims), with headroom.
const CORE_INSTANCES_PER_INSTANCE: u32 = 24;
const MEMORIES_PER_INSTANCE: u32 = 2;
const TABLES_PER_INSTANCE: u32 = 4;

/// Sizing of the engine's instance pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineOptions {
    /// How many instances may be alive at once (default 1,000). Each reserves
    /// address space (not memory) for its linear memory up front.
    pub pool_size: u32,
    /// Largest linear memory one instance may grow to, in bytes (default
    /// 512 MiB); growing past it fails inside Python with `MemoryError`.
    pub max_memory_bytes: u64,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            pool_size: 1_000,
            max_memory_bytes: 512 << 20,
        }
    }
}

impl EngineOptions {
    /// Sets [`pool_size`](EngineOptions::pool_size).
    pub fn with_pool_size(mut self, instances: u32) -> Self {
        self.pool_size = instances;
        self
    }

    /// Sets [`max_memory_bytes`](EngineOptions::max_memory_bytes).
    pub fn with_max_memory_bytes(mut self, bytes: u64) -> Self {
        self.max_memory_bytes = bytes;
        self
    }
}

/// The wasmtime [`Engine`](wasmtime::Engine) configured for eryx: Cranelift,
/// the pooling instance allocator with copy-on-write memory images, and the
/// component-model async ABI. Cheap to clone (shared).
#[derive(Clone)]
pub struct Engine {
    inner: wasmtime::Engine,
    options: EngineOptions,
    /// See [`Engine::fingerprint`]; fixed for the engine's life, so computed once.
    fingerprint: Arc<str>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Settings that decide how code is compiled; artifacts must agree on them.
fn base_config() -> Config {
    let mut config = Config::new();
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    // Fixed, not derived from `max_memory_bytes`, so the pool knobs never
    // change compiled code: bounds checks are elided within a 4 GiB reservation.
    config.memory_reservation(4 << 30);
    config.memory_guard_size(32 << 20);
    config
}

impl Engine {
    /// Creates the engine and its instance pool.
    ///
    /// # Errors
    /// [`Error::Config`] when the pool cannot be reserved (too large a
    /// `pool_size` for the address space) or the options are invalid.
    pub fn new(options: EngineOptions) -> Result<Engine> {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(options.pool_size)
            .total_core_instances(
                options
                    .pool_size
                    .saturating_mul(CORE_INSTANCES_PER_INSTANCE),
            )
            .total_memories(options.pool_size.saturating_mul(MEMORIES_PER_INSTANCE))
            .total_tables(options.pool_size.saturating_mul(TABLES_PER_INSTANCE))
            .total_stacks(options.pool_size)
            .max_core_instances_per_component(CORE_INSTANCES_PER_INSTANCE)
            .max_memories_per_component(MEMORIES_PER_INSTANCE)
            .max_tables_per_component(TABLES_PER_INSTANCE)
            .max_memory_size(usize::try_from(options.max_memory_bytes).unwrap_or(usize::MAX))
            // CPython's function table holds every function of every library.
            .table_elements(64 * 1024)
            .max_component_instance_size(1 << 20)
            .max_core_instance_size(1 << 20);
        let mut config = base_config();
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let inner = wasmtime::Engine::new(&config)
            .map_err(|e| Error::Config(format!("creating the engine: {e:#}")))?;
        let fingerprint = fingerprint(&inner).into();
        Ok(Engine {
            inner,
            options,
            fingerprint,
        })
    }

    /// The options this engine was made with.
    pub fn options(&self) -> EngineOptions {
        self.options
    }

    pub(crate) fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner
    }

    /// Identifies the compiled-code compatibility of this engine: hex sha256
    /// of the wasmtime version and wasmtime's own compatibility hash (target,
    /// features, compiler settings). A precompiled artifact loads only into an
    /// engine with the same fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Compiles a component to native code (`.cwasm` bytes) for this engine.
    ///
    /// # Errors
    /// [`Error::Host`] when the component does not validate or compile.
    pub fn precompile(&self, wasm: &[u8]) -> Result<Vec<u8>> {
        self.inner
            .precompile_component(wasm)
            .map_err(Error::from_wasmtime)
    }

    /// Pre-initializes a component with wizer: instantiates it with a real
    /// WASI context (the standard library mounted at `/python`), lets the
    /// guest start CPython and import `modules` (`finalize-preinit`, which
    /// also resets the WASI state that must not be frozen), and returns the
    /// snapshot: the same component with its memories and globals as they are
    /// then. Instances of the snapshot start with Python already running.
    ///
    /// # Errors
    /// [`Error::Preinit`] when an import fails inside Python;
    /// [`Error::Host`] when instrumenting, compiling or snapshotting fails.
    pub async fn preinitialize(
        &self,
        wasm: &[u8],
        stdlib_dir: &Path,
        modules: &[String],
    ) -> Result<Vec<u8>> {
        let wizer = Wizer::new();
        let (context, instrumented) = wizer
            .instrument_component(wasm)
            .map_err(Error::from_wasmtime)?;
        // The instrumented component is compiled once and thrown away, so it
        // does not need (or fit) the instance pool.
        let engine = wasmtime::Engine::new(&base_config()).map_err(Error::from_wasmtime)?;
        let component = Component::new(&engine, &instrumented).map_err(Error::from_wasmtime)?;
        let linker = linker(&engine)?;
        let state = HostState::new(stdlib_dir, crate::DEFAULT_OUTPUT_LIMIT_BYTES)?;
        let mut store = Store::new(&engine, state);
        let instance = linker
            .instantiate_async(&mut store, &component)
            .await
            .map_err(Error::from_wasmtime)?;
        let sandbox =
            bindings::Sandbox::new(&mut store, &instance).map_err(Error::from_wasmtime)?;
        sandbox
            .call_finalize_preinit(&mut store, modules)
            .await
            .map_err(Error::from_wasmtime)?
            .map_err(Error::Preinit)?;
        let mut target = WasmtimeWizerComponent {
            store: &mut store,
            instance,
        };
        wizer
            .snapshot_component(&context, &mut target)
            .await
            .map_err(Error::from_wasmtime)
    }
}

fn fingerprint(engine: &wasmtime::Engine) -> String {
    let mut hasher = Sha256Hasher(Sha256::new());
    hasher.0.update(WASMTIME_VERSION);
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
    hex::encode(hasher.0.finalize())
}

/// The linker every eryx instance is made with: WASI preview 2 plus the
/// world's own imports.
pub(crate) fn linker(engine: &wasmtime::Engine) -> Result<Linker<HostState>> {
    let mut linker = Linker::<HostState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(Error::from_wasmtime)?;
    bindings::Sandbox::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)
        .map_err(Error::from_wasmtime)?;
    Ok(linker)
}

/// Feeds `Hash` implementations into sha256, for a hash that is stable across
/// processes and Rust versions (unlike `DefaultHasher`).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        unreachable!("read the digest with finalize")
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}
