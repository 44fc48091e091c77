//! The artifact store: precompiled, pre-initialized components and their
//! manifests, behind `object_store` — a local directory by default, or any
//! `s3://bucket/prefix` (so every gateway replica can share one build).
//!
//! Layout under the store's root (an [`eryx_store::Store`]): `artifacts/<key>.cwasm` and
//! `artifacts/<key>.json`. The manifest is written last and is the point of
//! publication: a reader that finds it finds a complete artifact (a single
//! object PUT is atomic on S3; the local store writes a temporary file and
//! renames it). Downloaded artifacts are kept in a local cache directory, so
//! they can be memory-mapped and reused across processes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};
use eryx::base::atomic_write;

/// The description stored beside every artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Manifest {
    /// Version of this manifest format.
    pub format: u32,
    /// The artifact's key: sha256 (hex) of everything it was made from.
    pub key: String,
    /// [`eryx::content_hash`] (BLAKE3, hex) of the `.cwasm` bytes; checked
    /// after every download and before every load.
    pub blake3: String,
    /// Size of the `.cwasm` in bytes.
    pub size: u64,
    /// wasmtime version that compiled it.
    pub wasmtime: String,
    /// [`eryx::Engine::fingerprint`] of the engine that compiled it.
    pub engine: String,
    /// Inputs, by name: the linked component's key, the pre-init recipe, ...
    pub inputs: std::collections::BTreeMap<String, String>,
    /// Modules imported during pre-initialization.
    pub preloaded_modules: Vec<String>,
    /// When it was built, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// How long each build step took, in milliseconds.
    pub timings_ms: std::collections::BTreeMap<String, u64>,
    /// BLAKE3 (hex) of the pre-initialized component (`.wasm`) the `.cwasm`
    /// was compiled from, stored beside it as `<key>.wasm` for building
    /// per-function snapshots; `None` when it is not stored.
    pub snapshot_blake3: Option<String>,
    /// When set, the store holds the `.cwasm` as a delta against another
    /// artifact (`artifacts/<key>.cwasm.delta`, see
    /// [`ArtifactStore::publish_delta`]) instead of whole.
    #[serde(default)]
    pub delta: Option<Delta>,
}

/// How a `.cwasm` stored as a delta is rebuilt: a zstd frame compressed with
/// the base artifact's `.cwasm` as its reference prefix (what `zstd
/// --patch-from` does). A per-function snapshot differs from its base in its
/// memory image and a little code, so the delta is a small fraction of the
/// whole (figures in `benches/README.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Delta {
    /// Key of the artifact whose `.cwasm` is the reference.
    pub base_key: String,
    /// Its content hash ([`Manifest::blake3`]), checked before it is used.
    pub base_blake3: String,
    /// BLAKE3 (hex) of the stored delta, checked before it is decompressed.
    pub stored_blake3: String,
    /// Size of the stored delta in bytes.
    pub stored_size: u64,
}

/// zstd window for deltas: 2^28 bytes (256 MiB) covers the reference prefix
/// plus the artifact (≈40 MB each today) with room; a decoder refuses frames
/// that ask for more, which bounds what a delta can make it allocate.
const DELTA_WINDOW_LOG: u32 = 28;

/// zstd level for deltas: 3 (zstd's default) with long-distance matching,
/// which finds the base's copy of each unchanged function.
const DELTA_LEVEL: i32 = 3;

/// How recently a cached artifact must have been used to be spared by
/// eviction even past the limit (see [`ArtifactStore::with_cache_limit`]).
const RECENT_USE: std::time::Duration = std::time::Duration::from_secs(60);

/// Checks that `bytes` have the BLAKE3 `expected`; `what` names them in the error.
fn verify(what: impl FnOnce() -> String, bytes: &[u8], expected: &str) -> Result<()> {
    let actual = eryx::content_hash(bytes);
    if actual != expected {
        return Err(Error::HashMismatch {
            what: what(),
            algorithm: "blake3",
            expected: expected.to_owned(),
            actual,
        });
    }
    Ok(())
}

/// Compresses `target` against `reference` (see [`Delta`]).
fn encode_delta(reference: &[u8], target: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut encoder =
        zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), DELTA_LEVEL, reference)?;
    encoder.long_distance_matching(true)?;
    encoder.window_log(DELTA_WINDOW_LOG)?;
    encoder.include_contentsize(true)?;
    encoder.set_pledged_src_size(Some(target.len() as u64))?;
    encoder.write_all(target)?;
    encoder.finish()
}

/// Rebuilds what [`encode_delta`] compressed; at most `limit` bytes.
fn decode_delta(reference: &[u8], delta: &[u8], limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut decoder = zstd::stream::read::Decoder::with_ref_prefix(delta, reference)?;
    decoder.window_log_max(DELTA_WINDOW_LOG)?;
    let mut out = Vec::new();
    decoder.take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(std::io::Error::other(
            "the delta expands past the recorded size",
        ));
    }
    Ok(out)
}

impl Manifest {
    /// The manifest of a `.cwasm` compiled by `engine`, built now.
    pub fn new(
        key: &str,
        cwasm: &[u8],
        engine: &eryx::Engine,
        inputs: std::collections::BTreeMap<String, String>,
        timings_ms: std::collections::BTreeMap<String, u64>,
    ) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            key: key.to_owned(),
            blake3: eryx::content_hash(cwasm),
            size: cwasm.len() as u64,
            wasmtime: eryx::WASMTIME_VERSION.to_owned(),
            engine: engine.fingerprint().to_owned(),
            inputs,
            preloaded_modules: Vec::new(),
            created_unix_ms: crate::unix_ms(),
            timings_ms,
            snapshot_blake3: None,
            delta: None,
        }
    }
}

/// Current [`Manifest::format`] of a whole artifact.
pub const MANIFEST_FORMAT: u32 = 3;

/// [`Manifest::format`] of an artifact stored as a [`Delta`]: a distinct
/// format, so a replica of an older release (which knows only
/// [`MANIFEST_FORMAT`]) treats it as absent and rebuilds instead of
/// looking for a `.cwasm` that is not there.
pub const DELTA_MANIFEST_FORMAT: u32 = 4;

/// Whether `key` has the shape of an artifact key (64 lowercase hex digits),
/// so it is safe to use in a store path or a local file name.
pub fn is_artifact_key(key: &str) -> bool {
    key.len() == 64 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Where artifacts are published and fetched from: the `artifacts/`
/// folder of an [`eryx_store::Store`], with a local cache of downloads.
///
/// Trust: the store may be writable by others (a shared bucket), so every
/// manifest is a signed document (see [`eryx_store::Store::put_signed`])
/// and the `.cwasm` it names must have the content hash it records; an
/// unsigned or wrongly signed manifest fails with
/// [`eryx_store::Error::BadSignature`], so bytes no key holder published are
/// never loaded as native code.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    objects: eryx_store::Store,
    cache_dir: PathBuf,
    cache_limit: Option<u64>,
}

impl ArtifactStore {
    /// Opens the store at `location` (see [`eryx_store::Store::open`]: a
    /// local directory, or `s3://bucket[/prefix]` from the `AWS_*`
    /// environment variables). Downloads are cached in `cache_dir`.
    /// Documents are signed and checked with `key` (see
    /// [`crate::signing_key`] for the default one).
    ///
    /// # Errors
    /// [`Error::Store`] when the location is malformed or the directory
    /// cannot be created; [`Error::Io`] when `cache_dir` cannot be.
    pub fn open(location: &str, cache_dir: &Path, key: &eryx::SigningKey) -> Result<ArtifactStore> {
        ArtifactStore::open_with_options(
            location,
            cache_dir,
            key,
            std::iter::empty::<(String, String)>(),
        )
    }

    /// Like [`open`](Self::open), with S3 settings given as `(key, value)`
    /// pairs that override the environment (see [`eryx_store::Store::open`]).
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_with_options(
        location: &str,
        cache_dir: &Path,
        key: &eryx::SigningKey,
        options: impl IntoIterator<Item = (impl AsRef<str>, impl Into<String>)>,
    ) -> Result<ArtifactStore> {
        let objects = eryx_store::Store::open(location, key, options)?;
        std::fs::create_dir_all(cache_dir)?;
        Ok(ArtifactStore {
            objects,
            cache_dir: cache_dir.to_owned(),
            cache_limit: None,
        })
    }

    /// Bounds the local cache of artifacts (`.cwasm` and `.wasm` files in
    /// the cache directory, not the compile cache below it) to `bytes`:
    /// after each file is added, the least recently used others are removed
    /// until the rest fits, sparing any used within the last minute (it may
    /// be about to be opened), so the cache can exceed the limit briefly.
    /// A file is "used" when it is fetched or
    /// published (its modification time is refreshed on a cache hit). A
    /// removed artifact is fetched again from the store when next needed;
    /// one already loaded keeps running (its mapping outlives the file).
    pub fn with_cache_limit(mut self, bytes: u64) -> ArtifactStore {
        self.cache_limit = Some(bytes);
        self
    }

    /// Marks `path` used (for [`with_cache_limit`](Self::with_cache_limit))
    /// and returns it.
    fn touch(&self, path: PathBuf) -> PathBuf {
        if self.cache_limit.is_some()
            && let Ok(file) = std::fs::File::options().write(true).open(&path)
        {
            let _ = file.set_modified(std::time::SystemTime::now());
        }
        path
    }

    /// Writes `bytes` into the cache at `path`, then evicts down to the
    /// limit (never `path` itself).
    fn cache_write(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        atomic_write(path, bytes)?;
        self.evict(path);
        Ok(())
    }

    /// Removes least recently used cached artifacts until the cache fits
    /// its limit. Failures are logged, not returned: the cache is only a cache.
    fn evict(&self, keep: &Path) {
        let Some(limit) = self.cache_limit else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(&self.cache_dir) else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let path = e.path();
                let name = path.file_name()?.to_str()?;
                if !(name.ends_with(".cwasm") || name.ends_with(".wasm")) {
                    return None;
                }
                let meta = e.metadata().ok().filter(|m| m.is_file())?;
                Some((meta.modified().ok()?, meta.len(), path))
            })
            .collect();
        let mut total: u64 = files.iter().map(|(_, size, _)| size).sum();
        files.sort();
        let recent = std::time::SystemTime::now() - RECENT_USE;
        for (used, size, path) in files {
            if total <= limit {
                break;
            }
            // A file used within the last minute may be about to be opened
            // by whoever fetched it (here or in another process).
            if path == keep || used > recent {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    total -= size;
                    tracing::info!(file = %path.display(), size, "evicted from the artifact cache");
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => total -= size,
                Err(e) => tracing::warn!(file = %path.display(), "evicting: {e}"),
            }
        }
    }

    /// The store itself, for everything else kept beside the artifacts
    /// (function records, sources, sessions).
    pub fn objects(&self) -> &eryx_store::Store {
        &self.objects
    }

    /// Where this store is (its path or URL), for messages.
    pub fn location(&self) -> &str {
        self.objects.location()
    }

    fn object(key: &str, extension: &str) -> String {
        format!("artifacts/{key}.{extension}")
    }

    /// The local cache path of a pre-initialized `.wasm` of artifact `key`
    /// with BLAKE3 `blake3`.
    fn snapshot_cache_path(&self, key: &str, blake3: &str) -> PathBuf {
        self.cache_dir.join(format!("{key}.{blake3}.wasm"))
    }

    /// The local cache path of the `.cwasm` that `manifest` describes. It
    /// is named by the artifact's key *and* its content hash: two builds of
    /// one key differ in their bytes (each pre-initialization draws its own
    /// hash secret), so processes on one data directory with different
    /// stores (tests, a staging and a production store) must not share a
    /// file.
    pub fn cache_path(&self, manifest: &Manifest) -> PathBuf {
        self.cwasm_cache_path(&manifest.key, &manifest.blake3)
    }

    /// The local cache path of artifact `key`'s `.cwasm` with BLAKE3 `blake3`.
    fn cwasm_cache_path(&self, key: &str, blake3: &str) -> PathBuf {
        self.cache_dir.join(format!("{key}.{blake3}.cwasm"))
    }

    /// The manifest of artifact `key`, or `None` when it is not published.
    ///
    /// # Errors
    /// [`Error::Store`] when the store cannot be reached;
    /// [`Error::BadSignature`] when it is not signed with this store's key;
    /// [`Error::BadManifest`] when the manifest does not parse or is of
    /// another format or key, or `key` is not an artifact key.
    pub async fn manifest(&self, key: &str) -> Result<Option<Manifest>> {
        if !is_artifact_key(key) {
            return Err(Error::BadManifest(format!(
                "{key:?} is not an artifact key (64 hex digits)"
            )));
        }
        let Some(manifest): Option<Manifest> = self
            .objects
            .get_signed(&Self::object(key, "json"))
            .await
            .map_err(|error| match error {
                eryx_store::Error::Decode(message) => {
                    Error::BadManifest(format!("manifest of {key}: {message}"))
                }
                error => Error::Store(error),
            })?
        else {
            return Ok(None);
        };
        let format_ok = match manifest.delta {
            None => manifest.format == MANIFEST_FORMAT,
            Some(_) => manifest.format == DELTA_MANIFEST_FORMAT,
        };
        if !format_ok || manifest.key != key {
            return Err(Error::BadManifest(format!(
                "manifest of {key} has format {} and key {}",
                manifest.format, manifest.key
            )));
        }
        Ok(Some(manifest))
    }

    /// Returns the local path of the artifact's `.cwasm`, downloading it into
    /// the cache when absent. A download whose content hash differs from the
    /// manifest is refused.
    ///
    /// # Errors
    /// [`Error::Store`] when the download fails; [`Error::HashMismatch`] when
    /// the stored bytes are corrupt.
    pub async fn fetch(&self, manifest: &Manifest) -> Result<PathBuf> {
        check_key(&manifest.key)?;
        if let Some(delta) = &manifest.delta {
            return self.fetch_delta(manifest, delta).await;
        }
        self.fetch_verified(
            &manifest.key,
            "cwasm",
            &manifest.blake3,
            self.cache_path(manifest),
        )
        .await
    }

    /// Returns `path`, first downloading `artifacts/<key>.<extension>` there
    /// when it is absent; the download must have the BLAKE3 `expected`.
    async fn fetch_verified(
        &self,
        key: &str,
        extension: &str,
        expected: &str,
        path: PathBuf,
    ) -> Result<PathBuf> {
        if path.exists() {
            return Ok(self.touch(path));
        }
        let bytes = self
            .download_verified(&Self::object(key, extension), expected)
            .await?;
        self.cache_write(&path, &bytes)?;
        Ok(path)
    }

    /// Downloads `object`, which a published manifest names and which must
    /// have the BLAKE3 `expected`.
    async fn download_verified(&self, object: &str, expected: &str) -> Result<bytes::Bytes> {
        let bytes = self.objects.get(object).await?.ok_or_else(|| {
            Error::BadManifest(format!(
                "{}/{object} is missing though its manifest is published",
                self.location()
            ))
        })?;
        verify(|| format!("{}/{object}", self.location()), &bytes, expected)?;
        Ok(bytes)
    }

    /// Rebuilds a `.cwasm` stored as a delta into the cache: the base's
    /// `.cwasm` (fetched and verified itself), the delta (checked against
    /// [`Delta::stored_blake3`]), then the result against [`Manifest::blake3`].
    async fn fetch_delta(&self, manifest: &Manifest, delta: &Delta) -> Result<PathBuf> {
        let path = self.cache_path(manifest);
        if path.exists() {
            return Ok(self.touch(path));
        }
        check_key(&delta.base_key)?;
        let base = self
            .fetch_verified(
                &delta.base_key,
                "cwasm",
                &delta.base_blake3,
                self.cwasm_cache_path(&delta.base_key, &delta.base_blake3),
            )
            .await?;
        let object = Self::object(&manifest.key, "cwasm.delta");
        let stored = self
            .download_verified(&object, &delta.stored_blake3)
            .await?;
        let size = manifest.size;
        let expected = manifest.blake3.clone();
        let what = format!("{}/{object} (rebuilt)", self.location());
        let target = path.clone();
        // Reading 40 MB and decompressing: off the async workers.
        tokio::task::spawn_blocking(move || -> Result<()> {
            let reference = std::fs::read(&base)?;
            let cwasm = decode_delta(&reference, &stored, size)?;
            verify(|| what, &cwasm, &expected)?;
            atomic_write(&target, &cwasm)?;
            Ok(())
        })
        .await
        .map_err(|e| Error::Io(std::io::Error::other(format!("delta task: {e}"))))??;
        self.evict(&path);
        Ok(path)
    }

    /// Returns the local path of the pre-initialized component (`.wasm`) the
    /// artifact was compiled from, downloading it into the cache when absent.
    ///
    /// # Errors
    /// [`Error::Store`] when the manifest records no snapshot or the download
    /// fails; [`Error::HashMismatch`] when the stored bytes are corrupt.
    pub async fn fetch_snapshot(&self, manifest: &Manifest) -> Result<PathBuf> {
        check_key(&manifest.key)?;
        let Some(expected) = &manifest.snapshot_blake3 else {
            return Err(Error::BadManifest(format!(
                "artifact {} has no stored snapshot",
                manifest.key
            )));
        };
        self.fetch_verified(
            &manifest.key,
            "wasm",
            expected,
            self.snapshot_cache_path(&manifest.key, expected),
        )
        .await
    }

    /// Publishes the pre-initialized component an artifact is compiled from
    /// (before [`publish`](Self::publish), whose manifest names it).
    ///
    /// # Errors
    /// [`Error::Store`] when the upload fails.
    pub async fn publish_snapshot(&self, key: &str, wasm: Vec<u8>) -> Result<()> {
        check_key(key)?;
        self.cache_write(
            &self.snapshot_cache_path(key, &eryx::content_hash(&wasm)),
            &wasm,
        )?;
        self.objects.put(&Self::object(key, "wasm"), wasm).await?;
        Ok(())
    }

    /// Publishes an artifact: the `.cwasm` first, then its manifest, so that
    /// readers never see a manifest without its complete artifact. Also
    /// places the bytes in the local cache.
    ///
    /// # Errors
    /// [`Error::Store`] when an upload fails.
    pub async fn publish(&self, manifest: &Manifest, cwasm: Vec<u8>) -> Result<()> {
        check_key(&manifest.key)?;
        self.cache_write(&self.cache_path(manifest), &cwasm)?;
        self.objects
            .put(&Self::object(&manifest.key, "cwasm"), cwasm)
            .await?;
        self.objects
            .put_signed(&Self::object(&manifest.key, "json"), manifest)
            .await?;
        Ok(())
    }

    /// Publishes an artifact stored as a delta against `base` (an artifact
    /// of this store whose `.cwasm` is in the local cache or fetched now):
    /// the delta is computed, rebuilt and checked against the `.cwasm`
    /// before anything is uploaded, then uploaded, then the manifest (with
    /// [`Manifest::delta`] set) is published. The whole `.cwasm` goes to the
    /// local cache. Returns the published manifest.
    ///
    /// CPU-heavy (a second or two for 40 MB): runs on a blocking thread.
    ///
    /// # Errors
    /// [`Error::Store`] when an upload or the base's download fails;
    /// [`Error::HashMismatch`] when the base or the rebuilt artifact does not
    /// verify; [`Error::Io`] when compressing fails.
    pub async fn publish_delta(
        &self,
        manifest: &Manifest,
        cwasm: Vec<u8>,
        base: &Manifest,
    ) -> Result<Manifest> {
        check_key(&manifest.key)?;
        if base.delta.is_some() {
            return Err(Error::BadManifest(format!(
                "artifact {} is itself a delta; deltas are taken against whole artifacts",
                base.key
            )));
        }
        let base_path = self.fetch(base).await?;
        let expected = manifest.blake3.clone();
        let (cwasm, stored) = tokio::task::spawn_blocking(move || -> Result<(Vec<u8>, Vec<u8>)> {
            let reference = std::fs::read(&base_path)?;
            let stored = encode_delta(&reference, &cwasm)?;
            let rebuilt = decode_delta(&reference, &stored, cwasm.len() as u64)?;
            verify(
                || "the delta, rebuilt before upload".into(),
                &rebuilt,
                &expected,
            )?;
            Ok((cwasm, stored))
        })
        .await
        .map_err(|e| Error::Io(std::io::Error::other(format!("delta task: {e}"))))??;
        let mut published = manifest.clone();
        published.format = DELTA_MANIFEST_FORMAT;
        published.delta = Some(Delta {
            base_key: base.key.clone(),
            base_blake3: base.blake3.clone(),
            stored_blake3: eryx::content_hash(&stored),
            stored_size: stored.len() as u64,
        });
        self.cache_write(&self.cache_path(&published), &cwasm)?;
        self.objects
            .put(&Self::object(&published.key, "cwasm.delta"), stored)
            .await?;
        self.objects
            .put_signed(&Self::object(&published.key, "json"), &published)
            .await?;
        Ok(published)
    }

    /// Removes an artifact (manifest first, so it is unpublished before its
    /// bytes go) and its local cached copy. Missing pieces are not an error.
    ///
    /// # Errors
    /// [`Error::Store`] when the store refuses the deletion.
    pub async fn remove(&self, key: &str) -> Result<()> {
        check_key(key)?;
        for extension in ["json", "cwasm", "cwasm.delta", "wasm"] {
            self.objects.delete(&Self::object(key, extension)).await?;
        }
        // Every cached build of the key (see `cache_path`).
        let prefix = format!("{key}.");
        let entries = match std::fs::read_dir(&self.cache_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        for entry in entries {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                match std::fs::remove_file(entry.path()) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// Refuses a key that could name another path.
fn check_key(key: &str) -> Result<()> {
    if is_artifact_key(key) {
        Ok(())
    } else {
        Err(Error::BadManifest(format!(
            "{key:?} is not an artifact key (64 hex digits)"
        )))
    }
}
