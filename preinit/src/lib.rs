//! The eryx build pipeline: from pinned inputs to a runnable component.
//!
//! 1. At build time (`build.rs`, with the `eryx-bundle` crate): fetch the
//!    pinned `componentize-py` wheel from PyPI, extract CPython 3.14 for WASI
//!    (libraries, adapter, standard library), build the Rust guest (`guest/`)
//!    for `wasm32-wasip1` as a position-independent shared library, and embed
//!    both in the binary. [`python`] writes the distribution into the data
//!    directory on first use; no cargo or pip is needed at run time.
//! 2. [`link`]: generate the `wit-dylib` bindings from `wit/sandbox.wit` and link
//!    guest + CPython + libc + adapter into one component (only when an
//!    artifact must be built).
//!
//! 4. [`artifact`]: pre-initialize the component with wizer (CPython started,
//!    common modules imported), precompile it for the engine, and publish it
//!    content-addressed in an [`ArtifactStore`] (local directory or S3).
//!
//! Every output lives under a data directory or the store and is keyed by a
//! sha256 of its inputs, so repeated runs (and every test process) reuse it;
//! the keys derive from what the binary embeds, so every replica of one
//! release computes the same ones and fetches what another published.
//! [`ensure_component`] links under a cross-process lock; [`ensure_runtime`]
//! returns a ready runtime, building only what the store lacks.

pub mod artifact;
mod embedded;
pub mod link;
pub mod python;
pub mod store;

pub use artifact::{Origin, PRELOAD_MODULES, Report, artifact_key, ensure_runtime};
pub use store::{ArtifactStore, Manifest, is_artifact_key};

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The WIT world `eryx:sandbox`, the contract with the host (`wit/sandbox.wit`).
pub const WIT: &str = include_str!("../../wit/sandbox.wit");

/// Errors of the build pipeline.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The embedded CPython distribution could not be unpacked.
    #[error(transparent)]
    Bundle(#[from] eryx_bundle::Error),
    /// An artifact did not have the content hash its manifest records.
    #[error("{what}: {algorithm} is {actual}, expected {expected}")]
    HashMismatch {
        /// The file.
        what: String,
        /// The hash function (`blake3`).
        algorithm: &'static str,
        /// The recorded hash.
        expected: String,
        /// The file's hash.
        actual: String,
    },
    /// Generating bindings or linking the component failed.
    #[error("linking the component: {0}")]
    Link(String),
    /// The store failed: unreachable, a refused conditional put, or a
    /// document that is unsigned or wrongly signed
    /// ([`eryx_store::Error::BadSignature`]: it was not used) or malformed.
    #[error("artifact store: {0}")]
    Store(#[from] eryx_store::Error),
    /// A stored manifest is malformed, of another format, or for another key.
    #[error("bad artifact manifest: {0}")]
    BadManifest(String),
    /// Pre-initializing, precompiling or loading with the eryx runtime failed.
    #[error(transparent)]
    Runtime(Box<eryx::Error>),
    /// A filesystem operation failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<eryx::Error> for Error {
    fn from(error: eryx::Error) -> Error {
        Error::Runtime(Box::new(error))
    }
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Receives progress of long steps (downloads, builds, links), for display.
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

/// What the pipeline produced: everything a host needs to run the component.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// The linked component (`.wasm`), named by its key.
    pub component: PathBuf,
    /// The Python standard library, to mount read-only at `/python`.
    pub stdlib_dir: PathBuf,
    /// sha256 (hex) of every input of the component.
    pub key: String,
    /// How long each step took this time; empty when everything was cached.
    pub timings: Vec<(&'static str, Duration)>,
}

/// The default artifact store inside a data directory: `<data_dir>/store`.
pub fn default_store_location(data_dir: &Path) -> String {
    data_dir.join("store").display().to_string()
}

/// The signing key of this host (see [`eryx::SigningKey`]): from
/// `ERYX_SIGNING_KEY` (hex) when set, else from the file
/// `ERYX_SIGNING_KEY_FILE` (which must exist), else from `<data_dir>/signing.key`, created with
/// a random 256-bit key on first use. Hosts that share a store (gateway
/// replicas) must share the key; someone who can only write the store must
/// not have it.
///
/// # Errors
/// [`Error::Runtime`] wrapping [`eryx::Error::Config`] for a malformed key;
/// [`Error::Io`] when the file cannot be read or created.
pub fn signing_key(data_dir: &Path) -> Result<eryx::SigningKey> {
    if let Ok(hex) = std::env::var("ERYX_SIGNING_KEY") {
        return Ok(eryx::SigningKey::from_hex(&hex)?);
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
        return Ok(eryx::SigningKey::from_hex(&text)?);
    }
    Ok(eryx::SigningKey::load_or_create(
        &data_dir.join("signing.key"),
    )?)
}

/// Where downloaded artifacts are cached inside a data directory.
pub fn cache_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("cache")
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

/// Links the component when `data_dir` does not hold it yet (unpacking
/// the embedded CPython distribution first) and returns it.
///
/// Processes that call this at the same time wait for each other on
/// `data_dir/build.lock`, so the work is done once.
///
/// # Errors
/// Any [`Error`] of the steps; each names the step that failed.
pub fn ensure_component(data_dir: &Path, progress: &dyn Progress) -> Result<Artifacts> {
    fs::create_dir_all(data_dir)?;
    let lock = fs::File::create(data_dir.join("build.lock"))?;
    lock.lock()?;
    let mut timings = Vec::new();

    let start = Instant::now();
    let dist = python::ensure_dist(data_dir, progress)?;
    timings.push(("python", start.elapsed()));

    let start = Instant::now();
    let (component, key, linked) = link::ensure_component(data_dir, &dist, progress)?;
    timings.push(("link", start.elapsed()));
    if !linked {
        timings.clear();
    }
    Ok(Artifacts {
        component,
        stdlib_dir: dist.stdlib_dir(),
        key,
        timings,
    })
}

/// Milliseconds since the Unix epoch, now (0 if the clock is before 1970).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub use eryx_bundle::sha256_hex;

/// Writes a file atomically (temporary sibling, then rename).
pub(crate) fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent)?;
    let tmp = tempfile::NamedTempFile::new_in(parent)?;
    fs::write(tmp.path(), bytes)?;
    tmp.persist(path).map_err(|e| Error::Io(e.error))?;
    Ok(())
}
