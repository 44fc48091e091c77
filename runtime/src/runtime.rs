//! [`Runtime`]: what is built once per component — the compiled component
//! and its pre-linked instance template (`InstancePre`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::Component;

use crate::bindings::{HostState, SandboxPre};
use crate::engine::{Engine, linker};
use crate::{EngineOptions, Error, Result};

/// A component ready to instantiate: the compiled [`Component`] and its
/// `InstancePre` (imports resolved once), on an [`Engine`].
///
/// Cloning is cheap (shared). Make one per component per process and create
/// [`Sandbox`](crate::Sandbox)es from it; every instance then costs only a
/// `Store` and a copy-on-write mapping of the snapshot's memory.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    pre: SandboxPre<HostState>,
    stdlib_dir: PathBuf,
    load_time: Duration,
    /// The pre-initialized component this runtime was compiled from, and its
    /// content hash, when known (see [`RuntimeBuilder::with_snapshot_file`]).
    snapshot: Option<(PathBuf, String)>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("stdlib_dir", &self.inner.stdlib_dir)
            .finish_non_exhaustive()
    }
}

enum Source {
    /// A `.wasm` component, compiled by Cranelift at build time.
    Wasm(PathBuf),
    /// A precompiled `.cwasm` and the content hash it must have.
    Precompiled { path: PathBuf, hash: String },
}

/// Builds a [`Runtime`]; see [`Runtime::builder`].
#[derive(Default)]
pub struct RuntimeBuilder {
    source: Option<Source>,
    stdlib_dir: Option<PathBuf>,
    engine: Option<Engine>,
    snapshot: Option<(PathBuf, String)>,
}

impl std::fmt::Debug for RuntimeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeBuilder")
            .field("stdlib_dir", &self.stdlib_dir)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Starts configuring a runtime.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    pub(crate) fn pre(&self) -> &SandboxPre<HostState> {
        &self.inner.pre
    }

    /// The standard library directory its instances mount at `/python`.
    pub fn stdlib_dir(&self) -> &Path {
        &self.inner.stdlib_dir
    }

    /// The pre-initialized component this runtime was compiled from and its
    /// content hash, when given with [`RuntimeBuilder::with_snapshot_file`].
    pub fn snapshot_file(&self) -> Option<(&Path, &str)> {
        self.inner
            .snapshot
            .as_ref()
            .map(|(path, hash)| (path.as_path(), hash.as_str()))
    }

    /// The engine this runtime's instances run on.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// How long [`RuntimeBuilder::build`] took: compiling the component, or
    /// verifying and loading a precompiled one, plus linking.
    pub fn load_time(&self) -> Duration {
        self.inner.load_time
    }
}

impl RuntimeBuilder {
    /// Uses a component (`.wasm`), compiled with Cranelift when the runtime is
    /// built (seconds for the CPython component). Prefer
    /// [`with_precompiled_file`](Self::with_precompiled_file).
    pub fn with_component_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.source = Some(Source::Wasm(path.into()));
        self
    }

    /// Uses a component precompiled by [`Engine::precompile`] for an engine
    /// with the same [`fingerprint`](Engine::fingerprint). The file is read
    /// once and its bytes checked against `hash` (their [`content_hash`],
    /// hex) before those same bytes are loaded, so a file that does not have
    /// the hash is refused, never executed. The check is only as good as the
    /// source of `hash`, which must be a trusted record of
    /// [`Engine::precompile`] output: the file is native code. eryx-preinit
    /// takes it from a manifest whose HMAC under the hosts'
    /// [`SigningKey`](crate::SigningKey) verifies.
    pub fn with_precompiled_file(
        mut self,
        path: impl Into<PathBuf>,
        hash: impl Into<String>,
    ) -> Self {
        self.source = Some(Source::Precompiled {
            path: path.into(),
            hash: hash.into(),
        });
        self
    }

    /// The Python standard library directory, mounted read-only at `/python`
    /// in every instance.
    pub fn with_stdlib_dir(mut self, path: impl Into<PathBuf>) -> Self {
        self.stdlib_dir = Some(path.into());
        self
    }

    /// Names the pre-initialized component (`.wasm`) the precompiled file was
    /// made from, and its content hash ([`content_hash`]): a sandbox on this
    /// runtime can then snapshot preloaded packages on top of it
    /// ([`SandboxBuilder::with_preload`](crate::SandboxBuilder::with_preload)).
    /// The file is read (and its hash checked) only then.
    pub fn with_snapshot_file(mut self, path: impl Into<PathBuf>, hash: impl Into<String>) -> Self {
        self.snapshot = Some((path.into(), hash.into()));
        self
    }

    /// The engine to run on (default: a new [`Engine`] with
    /// [`EngineOptions::default`]). Share one engine between runtimes.
    pub fn with_engine(mut self, engine: &Engine) -> Self {
        self.engine = Some(engine.clone());
        self
    }

    /// Loads (or compiles) the component and links it.
    ///
    /// # Errors
    /// [`Error::Config`] when the component or standard library is not given
    /// or missing; [`Error::CorruptArtifact`] when a precompiled file does
    /// not have its content hash; [`Error::IncompatibleArtifact`] when it was made
    /// by another wasmtime or engine configuration; [`Error::Host`] when
    /// compiling or linking fails.
    pub fn build(self) -> Result<Runtime> {
        let start = Instant::now();
        let stdlib_dir = self
            .stdlib_dir
            .ok_or_else(|| Error::Config("no standard library: call with_stdlib_dir".into()))?;
        if !stdlib_dir.join("os.py").exists() {
            return Err(Error::Config(format!(
                "{} is not a Python standard library",
                stdlib_dir.display()
            )));
        }
        let engine = match self.engine {
            Some(engine) => engine,
            None => Engine::new(EngineOptions::default())?,
        };
        let component = match self.source {
            None => {
                return Err(Error::Config(
                    "no component: call with_precompiled_file or with_component_file".into(),
                ));
            }
            Some(Source::Wasm(path)) => {
                let wasm = std::fs::read(&path).map_err(|e| {
                    Error::Config(format!("cannot read component {}: {e}", path.display()))
                })?;
                Component::new(engine.wasmtime(), &wasm).map_err(Error::from_wasmtime)?
            }
            Some(Source::Precompiled { path, hash }) => load_precompiled(&engine, &path, &hash)?,
        };
        let pre = linker(engine.wasmtime())?
            .instantiate_pre(&component)
            .map_err(Error::from_wasmtime)?;
        let pre = SandboxPre::new(pre).map_err(Error::from_wasmtime)?;
        Ok(Runtime {
            inner: Arc::new(Inner {
                engine,
                pre,
                stdlib_dir,
                load_time: start.elapsed(),
                snapshot: self.snapshot,
            }),
        })
    }
}

/// The content hash of an artifact's bytes, as manifests record it: BLAKE3,
/// hex. (Artifact *keys* are sha256 of the inputs; verifying 40 MB on every
/// load needs a faster hash: BLAKE3 runs at several GB/s with SIMD.)
pub fn content_hash(bytes: &[u8]) -> String {
    // Multi-threaded (rayon) for artifacts of tens of MB.
    blake3::Hasher::new()
        .update_rayon(bytes)
        .finalize()
        .to_hex()
        .to_string()
}

fn load_precompiled(engine: &Engine, path: &Path, expected: &str) -> Result<Component> {
    let start = Instant::now();
    // One read of the file: the bytes hashed are the bytes deserialized, so
    // a file swapped or rewritten after the check cannot be loaded instead.
    let bytes = std::fs::read(path)?;
    let actual = content_hash(&bytes);
    let hashed = start.elapsed();
    if actual != expected {
        return Err(Error::CorruptArtifact {
            path: path.to_owned(),
            expected: expected.to_owned(),
            actual,
        });
    }
    let kind = wasmtime::Engine::detect_precompiled(&bytes);
    if kind != Some(wasmtime::Precompiled::Component) {
        return Err(Error::IncompatibleArtifact(format!(
            "{} is not a precompiled component",
            path.display()
        )));
    }
    // SAFETY: `bytes` are exactly the bytes whose content hash the caller
    // named (checked just above, on this one copy). By the contract of
    // `RuntimeBuilder::with_precompiled_file`, that hash comes from a trusted
    // record of `Engine::precompile` output (in this workspace: a manifest
    // whose HMAC under the hosts' signing key eryx-preinit verified). wasmtime
    // also checks the header's version and configuration and refuses a
    // mismatch.
    let component = unsafe { Component::deserialize(engine.wasmtime(), &bytes) }
        .map_err(|e| Error::IncompatibleArtifact(format!("{}: {e:#}", path.display())))?;
    tracing::debug!(
        hash_us = hashed.as_micros() as u64,
        deserialize_us = (start.elapsed() - hashed).as_micros() as u64,
        "loaded precompiled component"
    );
    Ok(component)
}
