//! [`DiskCache`]: Cranelift's incremental compilation cache kept on disk, so
//! compiled functions are reused across components and across processes.
//!
//! A per-function snapshot is the base snapshot with other data segments and
//! globals; its code is the same, so compiling it with this cache turns almost
//! every function compile into a lookup.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// One file per entry, named by the BLAKE3 hash of Cranelift's cache key (the
/// function's IR and the compiler settings), holding the compiled function.
#[derive(Debug)]
pub(crate) struct DiskCache {
    dir: PathBuf,
}

impl DiskCache {
    /// Opens (creating it when absent) the cache directory `dir`.
    pub(crate) fn open(dir: &Path) -> Result<DiskCache> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::Config(format!("creating the compile cache {}: {e}", dir.display()))
        })?;
        Ok(DiskCache {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, key: &[u8]) -> PathBuf {
        self.dir.join(blake3::hash(key).to_hex().as_str())
    }
}

impl wasmtime::CacheStore for DiskCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        std::fs::read(self.path(key)).ok().map(Cow::Owned)
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        // Write a private temporary file and rename it, so concurrent
        // compilers (threads or processes) never read a partial entry.
        let path = self.path(key);
        let temporary = path.with_extension(format!(
            "tmp{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let written = std::fs::write(&temporary, &value)
            .and_then(|()| std::fs::rename(&temporary, &path))
            .is_ok();
        if !written {
            let _ = std::fs::remove_file(&temporary);
        }
        written
    }
}
