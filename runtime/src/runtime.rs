//! [`Runtime`]: what is built once per component — the compiled component
//! and its pre-linked instance template (`InstancePre`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
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
    /// A precompiled `.cwasm` and the sha256 it must have.
    Precompiled { path: PathBuf, sha256: String },
}

/// Builds a [`Runtime`]; see [`Runtime::builder`].
#[derive(Default)]
pub struct RuntimeBuilder {
    source: Option<Source>,
    stdlib_dir: Option<PathBuf>,
    engine: Option<Engine>,
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

    pub(crate) fn stdlib_dir(&self) -> &Path {
        &self.inner.stdlib_dir
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
    /// with the same [`fingerprint`](Engine::fingerprint). The file is
    /// checked against `sha256` (hex) before it is loaded, so a corrupt or
    /// substituted file is refused, never executed.
    pub fn with_precompiled_file(
        mut self,
        path: impl Into<PathBuf>,
        sha256: impl Into<String>,
    ) -> Self {
        self.source = Some(Source::Precompiled {
            path: path.into(),
            sha256: sha256.into(),
        });
        self
    }

    /// The Python standard library directory, mounted read-only at `/python`
    /// in every instance.
    pub fn with_stdlib_dir(mut self, path: impl Into<PathBuf>) -> Self {
        self.stdlib_dir = Some(path.into());
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
    /// not have its sha256; [`Error::IncompatibleArtifact`] when it was made
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
            Some(Source::Precompiled { path, sha256 }) => {
                load_precompiled(&engine, &path, &sha256)?
            }
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
            }),
        })
    }
}

fn load_precompiled(engine: &Engine, path: &Path, expected: &str) -> Result<Component> {
    let bytes = std::fs::read(path)?;
    let actual = hex::encode(Sha256::digest(&bytes));
    if actual != expected {
        return Err(Error::CorruptArtifact {
            path: path.to_owned(),
            expected: expected.to_owned(),
            actual,
        });
    }
    if wasmtime::Engine::detect_precompiled(&bytes) != Some(wasmtime::Precompiled::Component) {
        return Err(Error::IncompatibleArtifact(format!(
            "{} is not a precompiled component",
            path.display()
        )));
    }
    // SAFETY: the bytes are exactly the ones whose sha256 the artifact's
    // manifest records, and artifacts are only ever written by
    // `Engine::precompile`; wasmtime additionally checks the header's version
    // and configuration and refuses a mismatch (mapped below), so no
    // untrusted native code is loaded.
    unsafe { Component::deserialize(engine.wasmtime(), &bytes) }
        .map_err(|e| Error::IncompatibleArtifact(format!("{}: {e:#}", path.display())))
}
