//! [`Runtime`]: what is built once per process and component — the engine,
//! the compiled component and its pre-linked instance template.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine};

use crate::bindings::{self, HostState, SandboxPre};
use crate::{Error, Result};

/// The compiled eryx component, ready to instantiate: an [`Engine`], the
/// compiled [`Component`] and its `InstancePre` (imports resolved once).
///
/// Building one compiles the component with Cranelift (seconds for the
/// ~12 MB CPython component) unless a compiled copy is in the cache
/// directory. Cloning is cheap (shared); create one per process and make
/// [`Sandbox`](crate::Sandbox)es from it.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    pre: SandboxPre<HostState>,
    stdlib_dir: PathBuf,
    load_time: Duration,
    compiled: bool,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("stdlib_dir", &self.inner.stdlib_dir)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Runtime`]; see [`Runtime::builder`].
#[derive(Debug, Default, Clone)]
pub struct RuntimeBuilder {
    component: Option<PathBuf>,
    stdlib_dir: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
}

impl Runtime {
    /// Starts configuring a runtime.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    pub(crate) fn pre(&self) -> &SandboxPre<HostState> {
        &self.inner.pre
    }

    pub(crate) fn engine(&self) -> &Engine {
        self.inner.pre.engine()
    }

    pub(crate) fn stdlib_dir(&self) -> &Path {
        &self.inner.stdlib_dir
    }

    /// How long [`RuntimeBuilder::build`] took to compile or load the component.
    pub fn load_time(&self) -> Duration {
        self.inner.load_time
    }

    /// Whether the component was compiled by Cranelift (`true`) or loaded
    /// from the compiled-code cache (`false`).
    pub fn was_compiled(&self) -> bool {
        self.inner.compiled
    }
}

impl RuntimeBuilder {
    /// The linked eryx component (`.wasm`), as produced by `eryx-preinit`.
    pub fn with_component_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.component = Some(path.into());
        self
    }

    /// The Python standard library directory, mounted read-only at `/python`
    /// in every instance.
    pub fn with_stdlib_dir(mut self, path: impl Into<PathBuf>) -> Self {
        self.stdlib_dir = Some(path.into());
        self
    }

    /// A directory for compiled components (`<key>.cwasm`, keyed by the
    /// sha256 of the component and the engine's compatibility hash), so only
    /// the first build pays for Cranelift.
    pub fn with_cache_dir(mut self, path: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(path.into());
        self
    }

    /// Creates the engine, compiles (or loads) the component and links it.
    ///
    /// # Errors
    /// [`Error::Config`] when the component or standard library is not given
    /// or missing; [`Error::Host`] when compiling or linking fails;
    /// [`Error::Io`] when the cache cannot be read or written.
    pub fn build(self) -> Result<Runtime> {
        let start = Instant::now();
        let component_path = self
            .component
            .ok_or_else(|| Error::Config("no component: call with_component_file".into()))?;
        let stdlib_dir = self
            .stdlib_dir
            .ok_or_else(|| Error::Config("no standard library: call with_stdlib_dir".into()))?;
        if !stdlib_dir.join("os.py").exists() {
            return Err(Error::Config(format!(
                "{} is not a Python standard library",
                stdlib_dir.display()
            )));
        }
        let engine = Engine::new(&engine_config()).map_err(Error::from_wasmtime)?;
        let (component, compiled) =
            load_component(&engine, &component_path, self.cache_dir.as_deref())?;

        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(Error::from_wasmtime)?;
        bindings::Sandbox::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| {
            state
        })
        .map_err(Error::from_wasmtime)?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(Error::from_wasmtime)?;
        let pre = SandboxPre::new(pre).map_err(Error::from_wasmtime)?;
        Ok(Runtime {
            inner: Arc::new(Inner {
                pre,
                stdlib_dir,
                load_time: start.elapsed(),
                compiled,
            }),
        })
    }
}

/// The engine configuration every eryx engine uses (and that compiled
/// artifacts must match).
fn engine_config() -> Config {
    let mut config = Config::new();
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    config
}

/// Compiles the component, or loads it from the cache when a compiled copy
/// for this exact component and engine exists.
fn load_component(
    engine: &Engine,
    path: &Path,
    cache_dir: Option<&Path>,
) -> Result<(Component, bool)> {
    let wasm = std::fs::read(path)
        .map_err(|e| Error::Config(format!("cannot read component {}: {e}", path.display())))?;
    let Some(cache_dir) = cache_dir else {
        let component = Component::new(engine, &wasm).map_err(Error::from_wasmtime)?;
        return Ok((component, true));
    };
    let mut engine_hash = DefaultHasher::new();
    engine
        .precompile_compatibility_hash()
        .hash(&mut engine_hash);
    let mut key = Sha256::new();
    key.update(&wasm);
    key.update(engine_hash.finish().to_le_bytes());
    let cached = cache_dir.join(format!("{}.cwasm", hex::encode(key.finalize())));
    if cached.exists() {
        // SAFETY: the file is one we wrote below from `Engine::precompile_component`
        // for an engine with the same compatibility hash; wasmtime also checks its
        // header and refuses an artifact from another version or configuration.
        match unsafe { Component::deserialize_file(engine, &cached) } {
            Ok(component) => return Ok((component, false)),
            Err(error) => {
                tracing::warn!(path = %cached.display(), "ignoring unusable compiled component: {error}")
            }
        }
    }
    let compiled = engine
        .precompile_component(&wasm)
        .map_err(Error::from_wasmtime)?;
    std::fs::create_dir_all(cache_dir)?;
    let tmp = cache_dir.join(format!(".{}.tmp", std::process::id()));
    std::fs::write(&tmp, &compiled)?;
    std::fs::rename(&tmp, &cached)?;
    // SAFETY: `compiled` was just produced by this engine.
    let component =
        unsafe { Component::deserialize(engine, &compiled) }.map_err(Error::from_wasmtime)?;
    Ok((component, true))
}
