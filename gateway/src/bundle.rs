//! Deploy bundles: one zip that carries a function with its modules and
//! pure-Python wheels.
//!
//! Layout (paths inside the zip):
//! - `main.py`: the function's module (its handler lives here);
//! - other `.py` files and package directories: modules `main.py` imports;
//! - `*.whl` at the top level or under `wheels/`: pure-Python wheels,
//!   unpacked (a wheel with native code is refused);
//! - `eryx.json` (optional): the deployment's settings, the fields of a JSON
//!   deployment other than `source` (`handler`, `timeout_ms`, `memory_mb`,
//!   `tmp_mb`, `allow_hosts`, `env`).
//!
//! Everything but `main.py` and `eryx.json` becomes one read-only directory,
//! named by the bundle's sha256, that every instance of the function mounts
//! on `sys.path`; the module imports them at deploy, so their import cost is
//! in the snapshot.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use crate::functions::FunctionError;

/// The entry module's path in a bundle.
pub(crate) const MAIN: &str = "main.py";
/// The settings file's path in a bundle.
const SETTINGS: &str = "eryx.json";
/// Most entries a bundle may have, wheels' entries included.
const MAX_ENTRIES: usize = 50_000;
/// Most bytes a bundle may unpack to, wheels included: 256 MiB.
const MAX_BYTES: u64 = 256 << 20;

/// The settings a bundle's `eryx.json` may carry.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BundleSettings {
    pub(crate) handler: Option<String>,
    pub(crate) timeout_ms: Option<u64>,
    pub(crate) memory_mb: Option<u64>,
    pub(crate) tmp_mb: Option<u64>,
    #[serde(default)]
    pub(crate) allow_hosts: Vec<String>,
    #[serde(default)]
    pub(crate) env: BTreeMap<String, String>,
}

/// A checked bundle.
#[derive(Debug)]
pub(crate) struct Bundle {
    /// sha256 (hex) of the zip.
    pub(crate) sha256: String,
    /// `main.py`.
    pub(crate) main: String,
    pub(crate) settings: BundleSettings,
    /// The files of the mounted directory: relative paths and contents.
    pub(crate) files: BTreeMap<PathBuf, Vec<u8>>,
}

fn invalid(why: impl std::fmt::Display) -> FunctionError {
    FunctionError::Invalid(format!("bundle: {why}"))
}

/// Reads and checks the zip `bytes` (CPU-heavy: call it off the async
/// workers).
///
/// # Errors
/// [`FunctionError::Invalid`] when it is not a zip, has no UTF-8 `main.py`,
/// has a path that is not plain (absolute, `..`), native code (in a module
/// or a wheel), a bad `eryx.json`, two sources of one path with different
/// contents, or more than 50,000 entries or 256 MiB unpacked.
pub(crate) fn parse(bytes: &[u8]) -> Result<Bundle, FunctionError> {
    let sha256 = eryx_preinit::sha256_hex(bytes);
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| invalid(format!("not a zip: {e}")))?;
    if archive.len() > MAX_ENTRIES {
        return Err(invalid(format!("more than {MAX_ENTRIES} entries")));
    }
    let mut main = None;
    let mut settings = BundleSettings::default();
    let mut files = BTreeMap::new();
    let mut total: u64 = 0;
    let mut entries = archive.len();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(invalid)?;
        let Some(path) = entry.enclosed_name() else {
            return Err(invalid(format!(
                "{:?} points outside the bundle",
                entry.name()
            )));
        };
        if path
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(invalid(format!("{:?} is not a plain path", entry.name())));
        }
        if entry.is_dir() {
            continue;
        }
        let mut contents = Vec::new();
        (&mut entry)
            .take(MAX_BYTES - total + 1)
            .read_to_end(&mut contents)
            .map_err(invalid)?;
        total += contents.len() as u64;
        if total > MAX_BYTES {
            return Err(invalid(format!(
                "unpacks to more than {} MiB",
                MAX_BYTES >> 20
            )));
        }
        let name = path.to_string_lossy().replace('\\', "/");
        let lower = name.to_lowercase();
        if name == MAIN {
            main = Some(String::from_utf8(contents).map_err(|_| invalid("main.py is not UTF-8"))?);
        } else if name == SETTINGS {
            settings = serde_json::from_slice(&contents)
                .map_err(|e| invalid(format!("eryx.json: {e}")))?;
        } else if lower.ends_with(".whl") && (!name.contains('/') || name.starts_with("wheels/")) {
            let label = Path::new(&name)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let wheel = eryx::wheel_files(&label, &contents)
                .map_err(|e| FunctionError::Invalid(e.to_string()))?;
            entries += wheel.len();
            if entries > MAX_ENTRIES {
                return Err(invalid(format!("more than {MAX_ENTRIES} entries")));
            }
            for (path, contents) in wheel {
                total += contents.len() as u64;
                if total > MAX_BYTES {
                    return Err(invalid(format!(
                        "unpacks to more than {} MiB",
                        MAX_BYTES >> 20
                    )));
                }
                add(&mut files, path, contents, &label)?;
            }
        } else {
            if eryx::is_native(&lower) {
                return Err(invalid(format!(
                    "{name} is native code; only pure Python runs in the sandbox"
                )));
            }
            add(&mut files, path, contents, "the bundle")?;
        }
    }
    let main = main.ok_or_else(|| invalid("no main.py at the top of the zip"))?;
    Ok(Bundle {
        sha256,
        main,
        settings,
        files,
    })
}

fn add(
    files: &mut BTreeMap<PathBuf, Vec<u8>>,
    path: PathBuf,
    contents: Vec<u8>,
    from: &str,
) -> Result<(), FunctionError> {
    // A path that is a file in one place and a directory in another cannot
    // be unpacked.
    let clash = path.ancestors().skip(1).any(|a| files.contains_key(a))
        || files
            .range(path.clone()..)
            .next()
            .is_some_and(|(other, _)| other != &path && other.starts_with(&path));
    if clash {
        return Err(invalid(format!(
            "{} is both a file and a directory (again from {from})",
            path.display()
        )));
    }
    match files.get(&path) {
        Some(existing) if *existing != contents => Err(invalid(format!(
            "{} comes twice with different contents (again from {from})",
            path.display()
        ))),
        Some(_) => Ok(()),
        None => {
            files.insert(path, contents);
            Ok(())
        }
    }
}

/// The mounted directory of bundle `sha256` in `data_dir`.
pub(crate) fn dir(data_dir: &Path, sha256: &str) -> PathBuf {
    data_dir.join("bundles").join(sha256)
}

/// Writes `bundle`'s files into its directory under `data_dir` unless it is
/// there (atomically: a reader sees all of it or none); returns it.
///
/// # Errors
/// [`FunctionError::Internal`] when the files cannot be written.
pub(crate) fn install(bundle: &Bundle, data_dir: &Path) -> Result<PathBuf, FunctionError> {
    let target = dir(data_dir, &bundle.sha256);
    if target.exists() {
        return Ok(target);
    }
    eryx_bundle::fill_dir_atomically(&target, Path::exists, |tmp| {
        for (path, contents) in &bundle.files {
            let file = tmp.join(path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(file, contents)?;
        }
        Ok(())
    })
    .map_err(|e| FunctionError::Internal(format!("unpacking bundle {}: {e}", bundle.sha256)))?;
    Ok(target)
}
