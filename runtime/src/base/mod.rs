//! The base component, from what this crate embeds to a runnable snapshot.
//!
//! 1. At build time (`build.rs`, with the `eryx-bundle` crate): fetch the
//!    pinned `componentize-py` wheel from PyPI, extract CPython 3.14 for WASI
//!    (libraries, adapter, standard library), build the Rust guest (`guest/`)
//!    for `wasm32-wasip1` as a position-independent shared library, and embed
//!    both in the crate. [`dist`] writes the distribution into the data
//!    directory on first use; no cargo or pip is needed at run time.
//! 2. [`link`]: generate the `wit-dylib` bindings from `wit/sandbox.wit` and
//!    link guest + CPython + libc + adapter into one component.
//! 3. [`build_base`]: pre-initialize the component with wizer (CPython
//!    started, [`PRELOAD_MODULES`] imported) and precompile it for an engine.
//!
//! [`Runtime::shared`](crate::Runtime::shared) does all three once per data
//! directory, for `Sandbox::builder().build()` without configuration; the
//! `eryx-preinit` crate does the same and publishes the result to a (shared,
//! signed) artifact store for gateway replicas.

pub mod dist;
mod embedded;
pub mod flatten;
pub mod link;
pub(crate) mod shared;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{Engine, Result};

/// The WIT world `eryx:sandbox`, the contract with the guest (`wit/sandbox.wit`).
pub const WIT: &str = include_str!("../../../wit/sandbox.wit");

/// Modules imported during pre-initialization, so instances start with them
/// loaded: what typical handlers use, and the asyncio machinery.
pub const PRELOAD_MODULES: &[&str] = &[
    "asyncio",
    "base64",
    "bisect",
    "collections",
    "dataclasses",
    "datetime",
    "decimal",
    "enum",
    "fractions",
    "functools",
    "hashlib",
    "heapq",
    "itertools",
    "json",
    "math",
    "pickle",
    "random",
    "re",
    "statistics",
    "string",
    "struct",
    "textwrap",
    "typing",
    "linecache",
    "traceback",
    "ast",
    "marshal",
    "importlib",
    "io",
    "os",
    "sys",
    "time",
    "uuid",
    // Slow to import (hundreds of ms each from source in an instance) and
    // what code using files and the network reaches for.
    "http.client",
    "urllib.request",
    "urllib.error",
    "zoneinfo",
    "zipfile",
    "tempfile",
    "shutil",
    "sqlite3",
];

/// Receives progress of long steps (unpacking, linking, pre-initializing,
/// compiling), for display.
///
/// `step` announces a step that may take a while; `done` reports its end.
pub trait Progress {
    /// A long step starts.
    fn step(&self, message: &str);
    /// The step started last finished.
    fn done(&self, message: &str);
}

/// A [`Progress`] that reports through `tracing` at info level.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogProgress;

impl Progress for LogProgress {
    fn step(&self, message: &str) {
        tracing::info!("{message}");
    }
    fn done(&self, message: &str) {
        tracing::info!("{message}");
    }
}

/// The data directory unless told otherwise: `$ERYX_DATA_DIR`, else
/// `$XDG_DATA_HOME/eryx`, else `~/.local/share/eryx` (the XDG Base
/// Directory default). It is data, not a cache: the default local store in
/// it holds what users deployed and their sessions' state.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ERYX_DATA_DIR") {
        return dir.into();
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| Path::new(d).is_absolute()) {
        return Path::new(&dir).join("eryx");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    Path::new(&home).join(".local").join("share").join("eryx")
}

/// The linked component and what it needs to run.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// The component that runs (`.wasm`, named by its key): the linked
    /// component flattened into one core module ([`flatten`]).
    pub component: PathBuf,
    /// The component as `wit-component` linked it, before flattening (kept
    /// for comparison; same interface, slower to instantiate).
    pub linked: PathBuf,
    /// The Python standard library, to mount read-only at `/python`.
    pub stdlib_dir: PathBuf,
    /// sha256 (hex) of every input of the component ([`link::component_key`]).
    pub key: String,
    /// How long each step took this time; empty when everything was cached.
    pub timings: Vec<(&'static str, Duration)>,
}

/// Links the component when `data_dir` does not hold it yet (unpacking
/// the embedded CPython distribution first) and returns it.
///
/// Processes that call this at the same time wait for each other on
/// `data_dir/build.lock`, so the work is done once.
///
/// # Errors
/// [`Error::Bundle`](crate::Error::Bundle) when the distribution cannot be
/// unpacked, [`Error::Link`](crate::Error::Link), [`Error::Io`](crate::Error::Io).
pub fn ensure_component(data_dir: &Path, progress: &dyn Progress) -> Result<Artifacts> {
    fs::create_dir_all(data_dir)?;
    let lock = fs::File::create(data_dir.join("build.lock"))?;
    lock.lock()?;
    let mut timings = Vec::new();

    let start = Instant::now();
    let dist = dist::ensure_dist(data_dir, progress)?;
    timings.push(("python", start.elapsed()));

    let start = Instant::now();
    let (component, linked, key, built) = link::ensure_component(data_dir, &dist, progress)?;
    timings.push(("link", start.elapsed()));
    if !built {
        timings.clear();
    }
    Ok(Artifacts {
        component,
        linked,
        stdlib_dir: dist.stdlib_dir(),
        key,
        timings,
    })
}

/// A pre-initialized, precompiled base component.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BuiltBase {
    /// The pre-initialized component (`.wasm` bytes), the input of
    /// per-function snapshots.
    pub snapshot: Vec<u8>,
    /// `snapshot` precompiled for the engine (`.cwasm` bytes).
    pub cwasm: Vec<u8>,
    /// Milliseconds per step (`preinit_ms`, `precompile_ms`).
    pub timings: Vec<(&'static str, u64)>,
}

/// Pre-initializes `component` (CPython started, [`PRELOAD_MODULES`]
/// imported, memory snapshotted with wizer) and precompiles the snapshot for
/// `engine`. CPU-heavy (seconds): call it where blocking is acceptable.
///
/// # Errors
/// [`Error::Preinit`](crate::Error::Preinit) when Python fails to start or
/// import; [`Error::Host`](crate::Error::Host) when wasmtime fails.
pub async fn build_base(
    engine: &Engine,
    component: &Artifacts,
    progress: &dyn Progress,
) -> Result<BuiltBase> {
    let wasm = fs::read(&component.component)?;
    let modules: Vec<String> = PRELOAD_MODULES.iter().map(|m| (*m).to_owned()).collect();

    progress.step("pre-initializing CPython (start-up and imports, snapshotted)");
    let start = Instant::now();
    let snapshot = engine
        .preinitialize(&wasm, &component.stdlib_dir, &modules)
        .await?;
    let preinit_ms = start.elapsed().as_millis() as u64;
    progress.done(&format!(
        "pre-initialized in {:.1} s",
        start.elapsed().as_secs_f64()
    ));

    progress.step("precompiling the snapshot with Cranelift");
    let start = Instant::now();
    let cwasm = engine.precompile(&snapshot)?;
    let precompile_ms = start.elapsed().as_millis() as u64;
    progress.done(&format!(
        "precompiled in {:.1} s",
        start.elapsed().as_secs_f64()
    ));
    Ok(BuiltBase {
        snapshot,
        cwasm,
        timings: vec![("preinit_ms", preinit_ms), ("precompile_ms", precompile_ms)],
    })
}

/// Writes a file atomically (temporary sibling, then rename): a reader sees
/// the old file or the whole new one.
///
/// # Errors
/// [`Error::Io`](crate::Error::Io).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent)?;
    let tmp = tempfile::NamedTempFile::new_in(parent)?;
    fs::write(tmp.path(), bytes)?;
    tmp.persist(path).map_err(|e| crate::Error::Io(e.error))?;
    Ok(())
}

/// The signing key of this host (see [`SigningKey`](crate::SigningKey)):
/// from `ERYX_SIGNING_KEY` (hex) when set, else from the file
/// `ERYX_SIGNING_KEY_FILE` (which must exist), else from
/// `<data_dir>/signing.key`, created with a random 256-bit key on first use.
/// Hosts that share a store (gateway replicas) must share the key; someone
/// who can only write the store must not have it.
///
/// # Errors
/// [`Error::Config`](crate::Error::Config) for a malformed key;
/// [`Error::Io`](crate::Error::Io) when the file cannot be read or created.
pub fn signing_key(data_dir: &Path) -> Result<crate::SigningKey> {
    if let Ok(hex) = std::env::var("ERYX_SIGNING_KEY") {
        return crate::SigningKey::from_hex(&hex);
    }
    if let Some(path) = std::env::var_os("ERYX_SIGNING_KEY_FILE") {
        // A named file must exist: creating one per replica would give each
        // its own key.
        let text = std::fs::read_to_string(&path).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("signing key file {}: {e}", Path::new(&path).display()),
            )
        })?;
        return crate::SigningKey::from_hex(&text);
    }
    crate::SigningKey::load_or_create(&data_dir.join("signing.key"))
}
