//! [`DiskCache`]: Cranelift's incremental compilation cache kept on disk, so
//! compiled functions are reused across components and across processes.
//!
//! A per-function snapshot is the base snapshot with other data segments and
//! globals; its code is the same, so compiling it with this cache turns almost
//! every function compile into a lookup.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use crate::{Error, Result, SigningKey};

/// One file per entry, named by the BLAKE3 hash of Cranelift's cache key (the
/// function's IR and the compiler settings), holding an HMAC-SHA256 tag (32
/// bytes, over the key and the value) and then the compiled function. An
/// entry whose tag does not verify is ignored (the function is compiled
/// again): compiled code from a directory someone else could write is never
/// used unchecked.
#[derive(Debug)]
pub(crate) struct DiskCache {
    dir: PathBuf,
    key: SigningKey,
}

/// The signing domain of compiled-function entries.
const DOMAIN: &str = "eryx-compile-cache-entry";

/// Length of an entry's tag, in bytes.
const TAG_BYTES: usize = 32;

impl DiskCache {
    /// Opens (creating it when absent) the cache directory `dir`; entries
    /// are signed and checked with `key`.
    pub(crate) fn open(dir: &Path, key: SigningKey) -> Result<DiskCache> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::Config(format!("creating the compile cache {}: {e}", dir.display()))
        })?;
        Ok(DiskCache {
            dir: dir.to_owned(),
            key,
        })
    }

    fn path(&self, key: &[u8]) -> PathBuf {
        self.dir.join(blake3::hash(key).to_hex().as_str())
    }
}

impl wasmtime::CacheStore for DiskCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let mut entry = std::fs::read(self.path(key)).ok()?;
        if entry.len() < TAG_BYTES {
            return None;
        }
        let value = entry.split_off(TAG_BYTES);
        if !self.key.verify(DOMAIN, &tagged(key, &value), &entry) {
            tracing::warn!(
                "compile cache entry {} has a bad tag: ignored",
                self.path(key).display()
            );
            return None;
        }
        Some(Cow::Owned(value))
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let mut entry = self.key.sign(DOMAIN, &tagged(key, &value)).to_vec();
        entry.extend_from_slice(&value);
        // Write a private temporary file and rename it, so concurrent
        // compilers (threads or processes) never read a partial entry.
        let path = self.path(key);
        let temporary = path.with_extension(format!(
            "tmp{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let written = std::fs::write(&temporary, &entry)
            .and_then(|()| std::fs::rename(&temporary, &path))
            .is_ok();
        if !written {
            let _ = std::fs::remove_file(&temporary);
        }
        written
    }
}

/// What an entry's tag covers: the cache key's length, the key, the value.
fn tagged(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(8 + key.len() + value.len());
    bytes.extend_from_slice(&(key.len() as u64).to_le_bytes());
    bytes.extend_from_slice(key);
    bytes.extend_from_slice(value);
    bytes
}
