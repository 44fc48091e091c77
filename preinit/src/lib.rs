//! Publishing eryx's base artifact for gateway replicas.
//!
//! What the `eryx` crate embeds (CPython for WASI and the guest) is linked,
//! pre-initialized and precompiled there ([`eryx::base`]); this crate keeps
//! the result content-addressed in an [`ArtifactStore`] (a local directory or
//! S3, manifests signed), so every replica of one release computes the same
//! keys and fetches what another published. [`ensure_runtime`] returns a
//! ready runtime, building only what the store lacks.

pub mod artifact;
pub mod store;

pub use artifact::{Origin, Report, artifact_key, ensure_runtime};
pub use eryx::base::{
    Artifacts, LogProgress, PRELOAD_MODULES, Progress, WIT, default_data_dir, dist as python,
    ensure_component, link, signing_key,
};
pub use store::{ArtifactStore, Delta, Manifest, is_artifact_key};

use std::path::{Path, PathBuf};

/// Errors of the build pipeline.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
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
    /// The store failed: unreachable, a refused conditional put, or a
    /// document that is unsigned or wrongly signed
    /// ([`eryx_store::Error::BadSignature`]: it was not used) or malformed.
    #[error("artifact store: {0}")]
    Store(#[from] eryx_store::Error),
    /// A stored manifest is malformed, of another format, or for another key.
    #[error("bad artifact manifest: {0}")]
    BadManifest(String),
    /// Unpacking, linking, pre-initializing, precompiling or loading with the
    /// eryx runtime failed.
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

/// The default artifact store inside a data directory: `<data_dir>/store`.
pub fn default_store_location(data_dir: &Path) -> String {
    data_dir.join("store").display().to_string()
}

/// Where downloaded artifacts are cached inside a data directory.
pub fn cache_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("cache")
}

/// Milliseconds since the Unix epoch, now (0 if the clock is before 1970).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub use eryx_bundle::sha256_hex;
