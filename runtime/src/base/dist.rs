//! CPython 3.14 for WASI, as the binary embeds it: extracted at build time
//! from the pinned `componentize-py` wheel (see the `eryx-bundle` crate) and
//! written into the data directory on first use, so nothing is fetched or
//! built at run time.

use std::path::Path;

pub use eryx_bundle::{LIBRARIES, PythonDist, WHEEL_FILE, WHEEL_REQUIREMENT, WHEEL_SHA256};

use super::{Progress, embedded};
use crate::Result;

/// Writes the embedded distribution (libraries, preview1 adapter, standard
/// library) into `data_dir/python/<hash of the embedded archive>` unless a
/// complete copy is there, and returns it.
///
/// # Errors
/// [`Error::Bundle`](crate::Error::Bundle) when it cannot be written.
pub fn ensure_dist(data_dir: &Path, progress: &dyn Progress) -> Result<PythonDist> {
    let dir = data_dir.join("python").join(&embedded::DIST_SHA256[..16]);
    let dist = PythonDist { dir: dir.clone() };
    if dist.is_complete() {
        return Ok(dist);
    }
    // Processes sharing the data directory unpack it once, one at a time.
    std::fs::create_dir_all(data_dir)?;
    let lock = std::fs::File::create(data_dir.join("python.lock"))?;
    lock.lock()?;
    if dist.is_complete() {
        return Ok(dist);
    }
    progress.step("unpacking CPython for WASI (embedded in this binary)");
    let dist = eryx_bundle::unpack(embedded::DIST, &dir)?;
    progress.done("unpacked CPython for WASI");
    Ok(dist)
}
