//! # eryx-store: where eryx keeps what it must not lose
//!
//! One [`Store`] holds everything eryx persists — precompiled artifacts and
//! their manifests (`artifacts/`), deployed function records (`functions/`)
//! and sources (`sources/`), session heads and states (`sessions/`) — behind
//! [`object_store`]: a local directory by default, or any S3-compatible
//! bucket (`s3://bucket/prefix`), so gateway replicas share one truth.
//!
//! What it adds to `object_store`:
//! - **Signed documents** ([`Store::put_signed`], [`Store::get_signed`]): JSON
//!   with an HMAC-SHA256 under the hosts' [`eryx::SigningKey`], which the
//!   store never holds, so whoever can only write the bucket cannot forge a
//!   record or a manifest.
//! - **Conditional puts** ([`Store::put_if`]) with [`Condition::Create`]
//!   (`If-None-Match: *` on S3) and [`Condition::Matches`] an [`ETag`] read
//!   before (`If-Match` on S3). `object_store`'s local store implements only
//!   the first; this crate implements the second for a local directory with
//!   an exclusive lock file per object (`flock`), so it is correct across
//!   processes on one machine (not across machines sharing a network file
//!   system without working locks).
//! - Typed [`Error`]s: unreachable ([`Error::Unavailable`]), lost race
//!   ([`Error::Conflict`]), forged ([`Error::BadSignature`]), malformed
//!   ([`Error::Decode`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig, UpdateVersion,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store could not be reached, or refused the operation (network,
    /// credentials, a server error): nothing is known to have changed.
    #[error("the store at {location} failed: {message}")]
    Unavailable {
        /// The store's location.
        location: String,
        /// What `object_store` reported.
        message: String,
    },
    /// A conditional put lost: the object exists ([`Condition::Create`]) or
    /// changed since it was read ([`Condition::Matches`]). Nothing was written.
    #[error("{path} changed since it was read (conditional put refused)")]
    Conflict {
        /// The object's path in the store.
        path: String,
    },
    /// A stored document is unsigned, or its signature does not verify under
    /// this host's signing key (written by someone without the key, or
    /// changed since); it was not used.
    #[error("{path} is not signed with this host's signing key; refused")]
    BadSignature {
        /// The document's location.
        path: String,
    },
    /// A stored document does not parse as the type asked for, or a value
    /// to store is not a JSON object.
    #[error("malformed stored document: {0}")]
    Decode(String),
    /// The location is malformed (e.g. `s3://` without a bucket, an unknown
    /// S3 option).
    #[error("store configuration: {0}")]
    Config(String),
    /// A local file operation failed (the directory, a lock file).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The entity tag of one stored version of an object: S3's `ETag` (the MD5
/// of the bytes for a single-part upload), or for a local file the BLAKE3
/// of its bytes. Either way, writing the same bytes again keeps the tag.
/// Opaque: compare, and pass to [`Condition::Matches`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ETag(String);

impl ETag {
    /// The tag as the store spells it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// When a [`Store::put_if`] may write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Only if no object is at the path (S3 `If-None-Match: *`).
    Create,
    /// Only if the object is still the version with this tag (S3 `If-Match`).
    Matches(ETag),
}

/// One object found by [`Store::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ObjectInfo {
    /// Its path, relative to the store's root.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written, in milliseconds since the Unix epoch.
    pub last_modified_unix_ms: u64,
}

/// A write to a local directory (see [`Store::locally`]).
enum LocalWrite {
    /// Replace the object.
    Put(Bytes),
    /// Replace it only if its tag is this one.
    PutIf(Bytes, ETag),
    /// Remove it.
    Delete,
}

/// The tag of a local object: the BLAKE3 of its bytes.
fn local_tag(bytes: &[u8]) -> ETag {
    ETag(format!("b3:{}", blake3::hash(bytes).to_hex()))
}

/// Name of the field that carries a signed document's HMAC.
const SIGNATURE_FIELD: &str = "signature";

/// The signing domain of stored JSON documents (see [`eryx::SigningKey::sign`]).
const DOCUMENT_DOMAIN: &str = "eryx-store-document";

/// Directory (under a local store's root) of the lock files that make
/// [`Condition::Matches`] atomic there.
const LOCK_DIR: &str = ".locks";

/// A local directory or an S3 bucket, with signed documents and conditional
/// puts. Cheap to clone (the connection is shared).
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    location: String,
    /// The root directory, for a local store.
    local_root: Option<PathBuf>,
    key: eryx::SigningKey,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the store at `location`: a local directory path (created if
    /// missing), or `s3://bucket[/prefix]` configured from the `AWS_*`
    /// environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_REGION`, and for another S3-compatible server `AWS_ENDPOINT_URL`
    /// with `AWS_ALLOW_HTTP=true`), overridden by `options` (`(key, value)`
    /// pairs named as `object_store`'s `AmazonS3ConfigKey`, e.g.
    /// `aws_endpoint`). Path-style requests; S3 conditional puts by ETag.
    /// Requests fail within about 10 s (2 retries) when S3 is unreachable,
    /// rather than `object_store`'s default of minutes. Documents are signed
    /// and checked with `key`.
    ///
    /// # Errors
    /// [`Error::Config`] when the location or an option is malformed;
    /// [`Error::Io`] when the local directory cannot be created.
    pub fn open(
        location: &str,
        key: &eryx::SigningKey,
        options: impl IntoIterator<Item = (impl AsRef<str>, impl Into<String>)>,
    ) -> Result<Store> {
        let config = |e: object_store::Error| Error::Config(e.to_string());
        let (inner, local_root): (Arc<dyn ObjectStore>, _) =
            if let Some(rest) = location.strip_prefix("s3://") {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(Error::Config(format!("{location}: no bucket named")));
                }
                let retry = RetryConfig {
                    max_retries: 2,
                    retry_timeout: Duration::from_secs(10),
                    ..RetryConfig::default()
                };
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_virtual_hosted_style_request(false)
                    .with_retry(retry)
                    .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
                    .with_config("connect_timeout".parse().map_err(config)?, "5s");
                for (name, value) in options {
                    let name = name.as_ref();
                    let parsed = name
                        .parse()
                        .map_err(|e| Error::Config(format!("S3 option {name}: {e}")))?;
                    builder = builder.with_config(parsed, value);
                }
                let s3 = builder.build().map_err(config)?;
                let prefix = prefix.trim_matches('/');
                if prefix.is_empty() {
                    (Arc::new(s3), None)
                } else {
                    (
                        Arc::new(PrefixStore::new(s3, ObjectPath::from(prefix))),
                        None,
                    )
                }
            } else {
                std::fs::create_dir_all(location)?;
                let root = std::fs::canonicalize(location)?;
                // Durable once acknowledged: every write syncs the file and
                // its directory before the rename (or link) that publishes it.
                let local = LocalFileSystem::new_with_prefix(&root)
                    .map_err(config)?
                    .with_fsync(true);
                (Arc::new(local), Some(root))
            };
        Ok(Store {
            inner,
            location: location.to_owned(),
            local_root,
            key: key.clone(),
        })
    }

    /// Where this store is (its path or URL), for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    fn unavailable(&self, error: object_store::Error) -> Error {
        Error::Unavailable {
            location: self.location.clone(),
            message: error.to_string(),
        }
    }

    /// Maps a refused precondition to [`Error::Conflict`], anything else
    /// to [`Error::Unavailable`].
    fn put_error(&self, path: &str, error: object_store::Error) -> Error {
        match error {
            object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. } => Error::Conflict {
                path: path.to_owned(),
            },
            error => self.unavailable(error),
        }
    }

    /// Writes the object `path` (relative to the store's root), replacing
    /// any. A single put is atomic: readers see the old or the new bytes.
    /// On a local directory it is durable when this returns (`fsync` of the
    /// file and its directory), and it waits for a conditional put of the
    /// same object in progress (see [`put_if`](Self::put_if)).
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the upload fails.
    pub async fn put(&self, path: &str, bytes: impl Into<Bytes>) -> Result<ETag> {
        let bytes = bytes.into();
        if self.local_root.is_some() {
            return self.locally(path, LocalWrite::Put(bytes)).await;
        }
        let result = self
            .inner
            .put(&ObjectPath::from(path), PutPayload::from(bytes))
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(ETag(result.e_tag.unwrap_or_default()))
    }

    /// Writes the object `path` only if `condition` holds, atomically with
    /// the check (see the crate's documentation for the local store); returns
    /// the new version's tag. On a local directory a [`Condition::Matches`]
    /// write, once started, completes under its lock even if the returned
    /// future is dropped (a cancelled request cannot leave a write landing
    /// after its lock was released); on S3 the server orders conditional
    /// puts, and a dropped request either landed or did not.
    ///
    /// # Errors
    /// [`Error::Conflict`] when the condition does not hold (nothing was
    /// written); [`Error::Unavailable`] when the store fails; [`Error::Io`]
    /// when a local lock file cannot be used.
    pub async fn put_if(
        &self,
        path: &str,
        bytes: impl Into<Bytes>,
        condition: Condition,
    ) -> Result<ETag> {
        let bytes = bytes.into();
        let mode = match condition {
            Condition::Create => PutMode::Create,
            Condition::Matches(tag) if self.local_root.is_some() => {
                return self.locally(path, LocalWrite::PutIf(bytes, tag)).await;
            }
            Condition::Matches(tag) => PutMode::Update(UpdateVersion {
                e_tag: Some(tag.0),
                version: None,
            }),
        };
        let local = self.local_root.is_some();
        let result = self
            .inner
            .put_opts(
                &ObjectPath::from(path),
                PutPayload::from(bytes.clone()),
                PutOptions::from(mode),
            )
            .await
            .map_err(|e| self.put_error(path, e))?;
        Ok(if local {
            local_tag(&bytes)
        } else {
            ETag(result.e_tag.unwrap_or_default())
        })
    }

    /// A write to a local directory under the object's lock file, in a task
    /// of its own: every writer of the object (this process or another)
    /// takes the lock, so [`LocalWrite::PutIf`]'s compare and rename are
    /// atomic with respect to them, and the task (holding the lock) runs to
    /// the end even if the caller stops waiting. Readers take no lock: a
    /// rename is atomic. Tags are the BLAKE3 of the bytes (`b3:…`): unlike
    /// inode and modification time, they cannot repeat for different
    /// contents.
    async fn locally(&self, path: &str, write: LocalWrite) -> Result<ETag> {
        let root = self.local_root.clone().expect("a local store");
        let lock_path = root
            .join(LOCK_DIR)
            .join(format!("{}.lock", blake3::hash(path.as_bytes()).to_hex()));
        let conditional = matches!(write, LocalWrite::PutIf(..));
        let this = self.clone();
        let path = path.to_owned();
        let task = tokio::spawn(async move {
            // `flock` blocks: wait for it on a blocking thread. An object
            // never written conditionally has no lock file, and nobody can be
            // inside its critical section: plain writes need none then.
            let lock =
                tokio::task::spawn_blocking(move || -> std::io::Result<Option<std::fs::File>> {
                    if !conditional && !lock_path.exists() {
                        return Ok(None);
                    }
                    std::fs::create_dir_all(lock_path.parent().expect("has a parent"))?;
                    let file = std::fs::OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(&lock_path)?;
                    file.lock()?;
                    Ok(Some(file))
                })
                .await
                .map_err(|e| Error::Io(std::io::Error::other(e)))??;
            let location = ObjectPath::from(path.as_str());
            let bytes = match write {
                LocalWrite::Put(bytes) => bytes,
                LocalWrite::PutIf(bytes, expected) => match this.get_tagged(&path).await? {
                    Some((_, current)) if current == expected => bytes,
                    _ => return Err(Error::Conflict { path }),
                },
                LocalWrite::Delete => {
                    return match this.inner.delete(&location).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                            Ok(ETag(String::new()))
                        }
                        Err(e) => Err(this.unavailable(e)),
                    };
                }
            };
            let outcome = this
                .inner
                .put(&location, PutPayload::from(bytes.clone()))
                .await
                .map(|_| local_tag(&bytes))
                .map_err(|e| this.unavailable(e));
            drop(lock);
            outcome
        });
        task.await
            .map_err(|e| Error::Io(std::io::Error::other(e)))?
    }

    /// Reads the object `path`, or `None` when there is none.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the store cannot be reached.
    pub async fn get(&self, path: &str) -> Result<Option<Bytes>> {
        Ok(self.get_tagged(path).await?.map(|(bytes, _)| bytes))
    }

    /// Reads the object `path` with the tag of the version read (for a
    /// later [`Condition::Matches`]), or `None` when there is none.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the store cannot be reached.
    pub async fn get_tagged(&self, path: &str) -> Result<Option<(Bytes, ETag)>> {
        match self.inner.get(&ObjectPath::from(path)).await {
            Ok(object) => {
                let tag = ETag(object.meta.e_tag.clone().unwrap_or_default());
                let bytes = object.bytes().await.map_err(|e| self.unavailable(e))?;
                let tag = if self.local_root.is_some() {
                    local_tag(&bytes)
                } else {
                    tag
                };
                Ok(Some((bytes, tag)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.unavailable(e)),
        }
    }

    /// Deletes the object `path`; a missing object is not an error. On a
    /// local directory it waits for a conditional put of the object in
    /// progress, so a deleted object cannot be written back by one.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the store refuses the deletion.
    pub async fn delete(&self, path: &str) -> Result<()> {
        if self.local_root.is_some() {
            return self.locally(path, LocalWrite::Delete).await.map(|_| ());
        }
        match self.inner.delete(&ObjectPath::from(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.unavailable(e)),
        }
    }

    /// The objects under `prefix` (a folder, without trailing `/`), in no
    /// particular order.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the store cannot be listed.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        use futures::TryStreamExt;
        let objects: Vec<_> = self
            .inner
            .list(Some(&ObjectPath::from(prefix)))
            .try_collect()
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(objects
            .into_iter()
            .map(|o| ObjectInfo {
                path: o.location.to_string(),
                size: o.size,
                last_modified_unix_ms: u64::try_from(o.last_modified.timestamp_millis())
                    .unwrap_or(0),
            })
            .collect())
    }

    /// `document` as signed JSON: with an HMAC under this store's key in its
    /// top-level field `signature` (the tag covers the document's JSON
    /// without that field).
    fn signed_json(&self, document: &impl Serialize) -> Result<Vec<u8>> {
        let decode = |e: serde_json::Error| Error::Decode(e.to_string());
        let mut value = serde_json::to_value(document).map_err(decode)?;
        let object = value
            .as_object_mut()
            .ok_or_else(|| Error::Decode("a signed document must be a JSON object".into()))?;
        object.remove(SIGNATURE_FIELD);
        let unsigned = serde_json::to_vec(object).map_err(decode)?;
        object.insert(
            SIGNATURE_FIELD.to_owned(),
            self.key.sign_hex(DOCUMENT_DOMAIN, &unsigned).into(),
        );
        serde_json::to_vec_pretty(&value).map_err(decode)
    }

    /// Parses and checks a signed document read from `path`.
    fn verified<T: DeserializeOwned>(&self, path: &str, bytes: &[u8]) -> Result<T> {
        let bad = || Error::BadSignature {
            path: format!("{}/{path}", self.location),
        };
        // Bytes that do not even parse carry no valid signature either.
        let mut value: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| bad())?;
        let object = value.as_object_mut().ok_or_else(bad)?;
        let signature = match object.remove(SIGNATURE_FIELD) {
            Some(serde_json::Value::String(signature)) => signature,
            _ => return Err(bad()),
        };
        let unsigned = serde_json::to_vec(object).map_err(|e| Error::Decode(e.to_string()))?;
        if !self.key.verify_hex(DOCUMENT_DOMAIN, &unsigned, &signature) {
            return Err(bad());
        }
        serde_json::from_value(value).map_err(|e| Error::Decode(format!("{path}: {e}")))
    }

    /// Writes `document` as signed JSON at `path` (see the crate's
    /// documentation), replacing any.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the upload fails; [`Error::Decode`] when
    /// `document` is not a JSON object.
    pub async fn put_signed(&self, path: &str, document: &impl Serialize) -> Result<ETag> {
        let json = self.signed_json(document)?;
        self.put(path, json).await
    }

    /// [`put_signed`](Self::put_signed) under a [`Condition`], as
    /// [`put_if`](Self::put_if).
    ///
    /// # Errors
    /// As [`put_if`](Self::put_if), and [`Error::Decode`] when `document` is
    /// not a JSON object.
    pub async fn put_signed_if(
        &self,
        path: &str,
        document: &impl Serialize,
        condition: Condition,
    ) -> Result<ETag> {
        let json = self.signed_json(document)?;
        self.put_if(path, json, condition).await
    }

    /// Reads the signed JSON document at `path`, or `None` when there is none.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the store cannot be reached;
    /// [`Error::BadSignature`] when the document has no signature or one
    /// that does not verify under this store's key; [`Error::Decode`] when
    /// it does not parse as `T`.
    pub async fn get_signed<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>> {
        Ok(self.get_signed_tagged(path).await?.map(|(value, _)| value))
    }

    /// [`get_signed`](Self::get_signed) with the tag of the version read.
    ///
    /// # Errors
    /// As [`get_signed`](Self::get_signed).
    pub async fn get_signed_tagged<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<(T, ETag)>> {
        let Some((bytes, tag)) = self.get_tagged(path).await? else {
            return Ok(None);
        };
        Ok(Some((self.verified(path, &bytes)?, tag)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn store(dir: &Path) -> Store {
        let key = eryx::SigningKey::from_bytes(&[7; 32]).unwrap();
        Store::open(
            dir.to_str().unwrap(),
            &key,
            std::iter::empty::<(&str, String)>(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn local_conditional_put_refuses_a_stale_etag_and_an_existing_create() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let first = store
            .put_if("a/head", "1", Condition::Create)
            .await
            .unwrap();
        assert!(matches!(
            store.put_if("a/head", "x", Condition::Create).await,
            Err(Error::Conflict { .. })
        ));
        let second = store
            .put_if("a/head", "2", Condition::Matches(first.clone()))
            .await
            .unwrap();
        assert_ne!(first, second);
        assert!(matches!(
            store.put_if("a/head", "3", Condition::Matches(first)).await,
            Err(Error::Conflict { .. })
        ));
        let (bytes, tag) = store.get_tagged("a/head").await.unwrap().unwrap();
        assert_eq!(&bytes[..], b"2");
        assert_eq!(tag, second);
    }

    #[tokio::test]
    async fn a_changed_signed_document_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        store
            .put_signed("doc.json", &serde_json::json!({"version": 1}))
            .await
            .unwrap();
        let value: serde_json::Value = store.get_signed("doc.json").await.unwrap().unwrap();
        assert_eq!(value["version"], 1);
        let path = dir.path().join("doc.json");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("1", "2")).unwrap();
        assert!(matches!(
            store.get_signed::<serde_json::Value>("doc.json").await,
            Err(Error::BadSignature { .. })
        ));
    }
}
