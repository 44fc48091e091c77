//! The artifact store: precompiled, pre-initialized components and their
//! manifests, behind `object_store` — a local directory by default, or any
//! `s3://bucket/prefix` (so every gateway replica can share one build).
//!
//! Layout under the store's root: `artifacts/<key>.cwasm` and
//! `artifacts/<key>.json`. The manifest is written last and is the point of
//! publication: a reader that finds it finds a complete artifact (a single
//! object PUT is atomic on S3; the local store writes a temporary file and
//! renames it). Downloaded artifacts are kept in a local cache directory, so
//! they can be memory-mapped and reused across processes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, atomic_write};

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
        }
    }
}

/// Current [`Manifest::format`].
pub const MANIFEST_FORMAT: u32 = 3;

/// Name of the field that carries a signed document's HMAC.
const SIGNATURE_FIELD: &str = "signature";

/// The signing domain of stored JSON documents (see [`eryx::SigningKey::sign`]).
const DOCUMENT_DOMAIN: &str = "eryx-store-document";

/// Whether `key` has the shape of an artifact key (64 lowercase hex digits),
/// so it is safe to use in a store path or a local file name.
pub fn is_artifact_key(key: &str) -> bool {
    key.len() == 64 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Where artifacts are published and fetched from.
///
/// Trust: the store may be writable by others (a shared bucket), so every
/// JSON document this store writes — artifact manifests, and what callers
/// write with [`put_signed`](Self::put_signed) — carries an HMAC-SHA256
/// under the hosts' [`SigningKey`](eryx::SigningKey), which the store never
/// holds; reading one that is unsigned or wrongly signed fails with
/// [`Error::BadSignature`], so bytes no key holder published are never
/// loaded as native code.
#[derive(Clone)]
pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    location: String,
    cache_dir: PathBuf,
    key: eryx::SigningKey,
}

impl std::fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl ArtifactStore {
    /// Opens the store at `location`: a local directory path, or
    /// `s3://bucket[/prefix]` configured from the `AWS_*` environment variables
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, and for a
    /// local S3-compatible server `AWS_ENDPOINT_URL` with `AWS_ALLOW_HTTP=true`).
    /// Path-style requests are used. Downloads are cached in `cache_dir`.
    /// Documents are signed and checked with `key` (see
    /// [`crate::signing_key`] for the default one).
    ///
    /// # Errors
    /// [`Error::Store`] when the location is malformed or the directory
    /// cannot be created.
    pub fn open(location: &str, cache_dir: &Path, key: &eryx::SigningKey) -> Result<ArtifactStore> {
        ArtifactStore::open_with_options(
            location,
            cache_dir,
            key,
            std::iter::empty::<(String, String)>(),
        )
    }

    /// Like [`open`](Self::open), with S3 settings given as `(key, value)`
    /// pairs that override the environment (keys as in `object_store`'s
    /// `AmazonS3ConfigKey`, e.g. `aws_endpoint`, `aws_access_key_id`,
    /// `aws_allow_http`).
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_with_options(
        location: &str,
        cache_dir: &Path,
        key: &eryx::SigningKey,
        options: impl IntoIterator<Item = (impl AsRef<str>, impl Into<String>)>,
    ) -> Result<ArtifactStore> {
        let store: Arc<dyn ObjectStore> = if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(Error::Store(format!("{location}: no bucket named")));
            }
            // Fail within seconds, not minutes, when S3 is unreachable (the
            // default retries for 3 minutes): a gateway must answer its own
            // clients with an error rather than hang.
            let retry = RetryConfig {
                max_retries: 2,
                retry_timeout: Duration::from_secs(10),
                ..RetryConfig::default()
            };
            let mut builder = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_virtual_hosted_style_request(false)
                .with_retry(retry)
                .with_config("connect_timeout".parse().map_err(store_error)?, "5s");
            for (key, value) in options {
                let key = key
                    .as_ref()
                    .parse()
                    .map_err(|e| Error::Store(format!("S3 option {}: {e}", key.as_ref())))?;
                builder = builder.with_config(key, value);
            }
            let s3 = builder.build().map_err(store_error)?;
            let prefix = prefix.trim_matches('/');
            if prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(PrefixStore::new(s3, StorePath::from(prefix)))
            }
        } else {
            std::fs::create_dir_all(location)?;
            Arc::new(LocalFileSystem::new_with_prefix(location).map_err(store_error)?)
        };
        std::fs::create_dir_all(cache_dir)?;
        Ok(ArtifactStore {
            store,
            location: location.to_owned(),
            cache_dir: cache_dir.to_owned(),
            key: key.clone(),
        })
    }

    /// Where this store is (its path or URL), for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    fn object(key: &str, extension: &str) -> StorePath {
        StorePath::from(format!("artifacts/{key}.{extension}"))
    }

    /// The local cache path of artifact `key`'s pre-initialized `.wasm`.
    fn snapshot_cache_path(&self, key: &str) -> PathBuf {
        self.cache_dir.join(format!("{key}.wasm"))
    }

    /// The local cache path of artifact `key`'s `.cwasm`.
    pub fn cache_path(&self, key: &str) -> PathBuf {
        self.cache_dir.join(format!("{key}.cwasm"))
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
            .get_signed(&format!("artifacts/{key}.json"))
            .await
            .map_err(|error| match error {
                Error::Decode(message) => {
                    Error::BadManifest(format!("manifest of {key}: {message}"))
                }
                error => error,
            })?
        else {
            return Ok(None);
        };
        if manifest.format != MANIFEST_FORMAT || manifest.key != key {
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
        self.fetch_verified(
            &manifest.key,
            "cwasm",
            &manifest.blake3,
            self.cache_path(&manifest.key),
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
            return Ok(path);
        }
        let bytes = self
            .store
            .get(&Self::object(key, extension))
            .await
            .map_err(store_error)?
            .bytes()
            .await
            .map_err(store_error)?;
        let actual = eryx::content_hash(&bytes);
        if actual != expected {
            return Err(Error::HashMismatch {
                what: format!("{}/artifacts/{key}.{extension}", self.location),
                algorithm: "blake3",
                expected: expected.to_owned(),
                actual,
            });
        }
        atomic_write(&path, &bytes)?;
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
            return Err(Error::Store(format!(
                "artifact {} has no stored snapshot",
                manifest.key
            )));
        };
        self.fetch_verified(
            &manifest.key,
            "wasm",
            expected,
            self.snapshot_cache_path(&manifest.key),
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
        atomic_write(&self.snapshot_cache_path(key), &wasm)?;
        self.put(&format!("artifacts/{key}.wasm"), wasm).await
    }

    /// Writes the object `path` (relative to the store's root).
    ///
    /// # Errors
    /// [`Error::Store`] when the upload fails.
    pub async fn put(&self, path: &str, bytes: Vec<u8>) -> Result<()> {
        self.store
            .put(&StorePath::from(path), PutPayload::from(bytes))
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// Reads the object `path`, or `None` when there is none.
    ///
    /// # Errors
    /// [`Error::Store`] when the store cannot be reached.
    pub async fn get(&self, path: &str) -> Result<Option<Vec<u8>>> {
        match self.store.get(&StorePath::from(path)).await {
            Ok(object) => Ok(Some(object.bytes().await.map_err(store_error)?.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error(e)),
        }
    }

    /// Deletes the object `path`; a missing object is not an error.
    ///
    /// # Errors
    /// [`Error::Store`] when the store refuses the deletion.
    pub async fn delete(&self, path: &str) -> Result<()> {
        match self.store.delete(&StorePath::from(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error(e)),
        }
    }

    /// Paths of the objects under `prefix` (a folder, without trailing `/`).
    ///
    /// # Errors
    /// [`Error::Store`] when the store cannot be listed.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        use futures::TryStreamExt;
        let objects: Vec<_> = self
            .store
            .list(Some(&StorePath::from(prefix)))
            .try_collect()
            .await
            .map_err(store_error)?;
        Ok(objects
            .into_iter()
            .map(|o| o.location.to_string())
            .collect())
    }

    /// Publishes an artifact: the `.cwasm` first, then its manifest, so that
    /// readers never see a manifest without its complete artifact. Also
    /// places the bytes in the local cache.
    ///
    /// # Errors
    /// [`Error::Store`] when an upload fails.
    pub async fn publish(&self, manifest: &Manifest, cwasm: Vec<u8>) -> Result<()> {
        check_key(&manifest.key)?;
        atomic_write(&self.cache_path(&manifest.key), &cwasm)?;
        self.store
            .put(
                &Self::object(&manifest.key, "cwasm"),
                PutPayload::from(cwasm),
            )
            .await
            .map_err(store_error)?;
        self.put_signed(&format!("artifacts/{}.json", manifest.key), manifest)
            .await
    }

    /// Writes `document` as JSON at `path` with an HMAC under this store's
    /// key in its top-level field `signature` (the tag covers the document's
    /// JSON without that field).
    ///
    /// # Errors
    /// [`Error::Store`] when the upload fails; [`Error::Decode`] when
    /// `document` is not a JSON object.
    pub async fn put_signed(&self, path: &str, document: &impl Serialize) -> Result<()> {
        let mut value = serde_json::to_value(document).map_err(|e| Error::Decode(e.to_string()))?;
        let object = value
            .as_object_mut()
            .ok_or_else(|| Error::Decode("a signed document must be a JSON object".into()))?;
        object.remove(SIGNATURE_FIELD);
        let unsigned = serde_json::to_vec(object).map_err(|e| Error::Decode(e.to_string()))?;
        object.insert(
            SIGNATURE_FIELD.to_owned(),
            self.key.sign_hex(DOCUMENT_DOMAIN, &unsigned).into(),
        );
        let json = serde_json::to_vec_pretty(&value).map_err(|e| Error::Decode(e.to_string()))?;
        self.put(path, json).await
    }

    /// Reads the signed JSON document at `path` (see
    /// [`put_signed`](Self::put_signed)), or `None` when there is none.
    ///
    /// # Errors
    /// [`Error::Store`] when the store cannot be reached;
    /// [`Error::BadSignature`] when the document has no signature or one
    /// that does not verify under this store's key (it was not written by a
    /// holder of the key, or was changed since); [`Error::Decode`] when it
    /// does not parse as `T`.
    pub async fn get_signed<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<T>> {
        let Some(bytes) = self.get(path).await? else {
            return Ok(None);
        };
        let bad = || Error::BadSignature {
            path: format!("{}/{path}", self.location),
        };
        // Bytes that do not even parse carry no valid signature either.
        let mut value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        let object = value.as_object_mut().ok_or_else(bad)?;
        let signature = match object.remove(SIGNATURE_FIELD) {
            Some(serde_json::Value::String(signature)) => signature,
            _ => return Err(bad()),
        };
        let unsigned = serde_json::to_vec(object).map_err(|e| Error::Decode(e.to_string()))?;
        if !self.key.verify_hex(DOCUMENT_DOMAIN, &unsigned, &signature) {
            return Err(bad());
        }
        serde_json::from_value(value)
            .map(Some)
            .map_err(|e| Error::Decode(format!("{path}: {e}")))
    }

    /// Removes an artifact (manifest first, so it is unpublished before its
    /// bytes go) and its local cached copy. Missing pieces are not an error.
    ///
    /// # Errors
    /// [`Error::Store`] when the store refuses the deletion.
    pub async fn remove(&self, key: &str) -> Result<()> {
        check_key(key)?;
        for extension in ["json", "cwasm", "wasm"] {
            match self.store.delete(&Self::object(key, extension)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_error(e)),
            }
        }
        for path in [self.cache_path(key), self.snapshot_cache_path(key)] {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
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

fn store_error(e: object_store::Error) -> Error {
    Error::Store(e.to_string())
}
