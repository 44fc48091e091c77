//! Python code a host ships into its sandboxes: [`RuntimeLibrary`] (host
//! callbacks with the Python modules that wrap them, and `.pyi` stubs) and
//! pure-Python wheels ([`SandboxBuilder::with_package`](crate::SandboxBuilder::with_package)).
//!
//! Both become read-only directories in the data directory, content-addressed
//! (`libraries/<sha256>/`, `packages/<sha256 of the wheel>/`), that every
//! instance of the sandbox mounts at `/eryx/path/<n>` and finds on
//! `sys.path` (in the order they were added, before the standard library).
//! Nothing in them is writable from the sandbox.

use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::{Callback, Error, Result};

/// Where the `n`th mounted directory appears in an instance.
pub(crate) fn guest_path(n: usize) -> String {
    format!("/eryx/path/{n}")
}

/// The environment variable that tells the guest which mounted directories
/// to put on `sys.path` (`:`-separated, in order).
pub(crate) const PATHS_VAR: &str = "ERYX_PATHS";

/// A Python API a host ships: callbacks plus the Python modules that wrap
/// them (importable in the sandbox), and `.pyi` stubs describing them (for
/// editors and for prompting code generators; see [`stubs`](Self::stubs)).
///
/// ```
/// # use eryx::{CallbackError, RuntimeLibrary, TypedCallback};
/// #[derive(serde::Deserialize, schemars::JsonSchema)]
/// struct Key { key: String }
/// let library = RuntimeLibrary::new("kv")
///     .with_callback(TypedCallback::new("kv_get", "Reads a key.", |args: Key| async move {
///         Ok::<_, CallbackError>(format!("value of {}", args.key))
///     }))
///     .with_module("kv", "import eryx\nasync def get(key):\n    return await eryx.kv_get(key=key)\n")
///     .with_stub("kv", "async def get(key: str) -> str: ...\n");
/// # let _ = library;
/// ```
#[derive(Clone, Default)]
pub struct RuntimeLibrary {
    name: String,
    pub(crate) callbacks: Vec<Arc<dyn Callback>>,
    modules: Vec<(String, String)>,
    stubs: Vec<(String, String)>,
}

impl std::fmt::Debug for RuntimeLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeLibrary")
            .field("name", &self.name)
            .field("callbacks", &self.callbacks.len())
            .field(
                "modules",
                &self.modules.iter().map(|m| &m.0).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl RuntimeLibrary {
    /// An empty library called `name` (for messages).
    pub fn new(name: impl Into<String>) -> RuntimeLibrary {
        RuntimeLibrary {
            name: name.into(),
            ..RuntimeLibrary::default()
        }
    }

    /// Adds a callback (see [`SandboxBuilder::with_callback`](crate::SandboxBuilder::with_callback)).
    pub fn with_callback(mut self, callback: impl Callback) -> Self {
        self.callbacks.push(Arc::new(callback));
        self
    }

    /// Adds the Python module `module` (a dotted name: `kv`, `acme.tools`)
    /// with `source`. Packages along the way get an empty `__init__.py`
    /// unless given.
    pub fn with_module(mut self, module: impl Into<String>, source: impl Into<String>) -> Self {
        self.modules.push((module.into(), source.into()));
        self
    }

    /// Adds the stub (`.pyi` text) of `module`, written beside it.
    pub fn with_stub(mut self, module: impl Into<String>, stub: impl Into<String>) -> Self {
        self.stubs.push((module.into(), stub.into()));
        self
    }

    /// The library's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stubs, as `(module, .pyi text)`.
    pub fn stubs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.stubs.iter().map(|(m, s)| (m.as_str(), s.as_str()))
    }

    /// Writes the library's modules and stubs into
    /// `data_dir/libraries/<sha256 of them>/` unless there; returns the
    /// directory, or `None` when the library has no module.
    /// [`SandboxBuilder::build`](crate::SandboxBuilder::build) does this for
    /// its libraries; call it to mount the same directory elsewhere (e.g.
    /// [`FunctionBuilder::snapshot_with_mounts`](crate::FunctionBuilder::snapshot_with_mounts)).
    ///
    /// # Errors
    /// [`Error::Config`] for a module name that is not dotted identifiers;
    /// [`Error::Io`].
    pub fn install(&self, data_dir: &Path) -> Result<Option<PathBuf>> {
        if self.modules.is_empty() {
            return Ok(None);
        }
        let mut files = Vec::new();
        for (module, source) in &self.modules {
            files.push((module_file(&self.name, module, "py")?, source.as_bytes()));
        }
        for (module, stub) in &self.stubs {
            files.push((module_file(&self.name, module, "pyi")?, stub.as_bytes()));
        }
        let mut hasher = Sha256::new();
        for (path, bytes) in &files {
            hasher.update(path.to_string_lossy().as_bytes());
            hasher.update([0]);
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        }
        let dir = data_dir
            .join("libraries")
            .join(hex::encode(hasher.finalize()));
        fill_once(&dir, |tmp| {
            for (path, bytes) in &files {
                let target = tmp.join(path);
                let parent = target.parent().expect("a module file has a parent");
                std::fs::create_dir_all(parent)?;
                // Every package directory on the way is a regular package.
                let mut package = parent.to_path_buf();
                while package != tmp {
                    let init = package.join("__init__.py");
                    if !init.exists() {
                        std::fs::write(&init, b"")?;
                    }
                    package.pop();
                }
                std::fs::write(target, bytes)?;
            }
            Ok(())
        })?;
        Ok(Some(dir))
    }
}

/// `a/b/c.py` for module `a.b.c`.
fn module_file(library: &str, module: &str, extension: &str) -> Result<PathBuf> {
    let valid = !module.is_empty()
        && module.split('.').all(|part| {
            part.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
    if !valid {
        return Err(Error::Config(format!(
            "library {library:?}: module name {module:?} must be dotted Python identifiers"
        )));
    }
    let mut path: PathBuf = module.split('.').collect();
    path.set_extension(extension);
    Ok(path)
}

/// Largest total size a wheel may unpack to: 256 MiB (a zip bomb stops here).
const MAX_WHEEL_BYTES: u64 = 256 << 20;
/// Most entries a wheel may have.
const MAX_WHEEL_ENTRIES: usize = 50_000;

/// Unpacks the pure-Python wheel at `wheel` into
/// `data_dir/packages/<sha256 of the wheel>/` unless there; returns the
/// directory.
///
/// # Errors
/// [`Error::Config`] when the file is not a wheel (zip), names a path outside
/// its root, or carries native code (`Root-Is-Purelib: false`, or a `.so`,
/// `.pyd` or `.dylib` file): the sandbox runs only pure Python; or unpacks to
/// more than 256 MiB or 50,000 entries.
/// [`Error::Io`] when it cannot be read or unpacked.
pub(crate) fn unpack_wheel(wheel: &Path, data_dir: &Path) -> Result<PathBuf> {
    let bytes = std::fs::read(wheel)
        .map_err(|e| Error::Config(format!("package {}: {e}", wheel.display())))?;
    let dir = data_dir
        .join("packages")
        .join(hex::encode(Sha256::digest(&bytes)));
    if dir.exists() {
        return Ok(dir);
    }
    let entries = wheel_files(&wheel.display().to_string(), &bytes)?;
    fill_once(&dir, |tmp| {
        for (path, contents) in &entries {
            let target = tmp.join(path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(target, contents)?;
        }
        Ok(())
    })?;
    Ok(dir)
}

/// The files of the pure-Python wheel `bytes` (named `name` in errors):
/// relative paths (plain components only) and contents, checked as
/// [`with_package`](crate::SandboxBuilder::with_package) checks them.
///
/// # Errors
/// [`Error::Config`] when it is not a wheel (zip), names a path outside its
/// root, carries native code (`Root-Is-Purelib: false`, or a `.so`, `.pyd`
/// or `.dylib` file), or unpacks to more than 256 MiB or 50,000 entries.
/// [`Error::Io`] when an entry cannot be read.
pub fn wheel_files(name: &str, bytes: &[u8]) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let bad = |why: String| Error::Config(format!("package {name}: {why}"));
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| bad(format!("not a wheel (zip): {e}")))?;
    if archive.len() > MAX_WHEEL_ENTRIES {
        return Err(bad(format!("more than {MAX_WHEEL_ENTRIES} entries")));
    }
    let mut entries = Vec::with_capacity(archive.len());
    let mut total: u64 = 0;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| bad(e.to_string()))?;
        let Some(path) = entry.enclosed_name() else {
            return Err(bad(format!(
                "entry {:?} points outside the wheel",
                entry.name()
            )));
        };
        if path
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(bad(format!("entry {:?} is not a plain path", entry.name())));
        }
        let lower = path.to_string_lossy().to_lowercase();
        if is_native(&lower) {
            return Err(bad(format!(
                "{} is native code; only pure-Python wheels run in the sandbox",
                path.display()
            )));
        }
        if entry.is_dir() {
            continue;
        }
        // Read at most what is left of the budget (plus one byte to notice
        // going past it), whatever sizes the archive declares.
        let mut contents = Vec::new();
        (&mut entry)
            .take(MAX_WHEEL_BYTES - total + 1)
            .read_to_end(&mut contents)?;
        total += contents.len() as u64;
        if total > MAX_WHEEL_BYTES {
            return Err(bad(format!(
                "unpacks to more than {} MiB",
                MAX_WHEEL_BYTES >> 20
            )));
        }
        if lower.ends_with(".dist-info/wheel") {
            let text = String::from_utf8_lossy(&contents);
            if text.lines().any(|l| l.trim() == "Root-Is-Purelib: false") {
                return Err(bad(
                    "a platform wheel (Root-Is-Purelib: false) carries native code; only pure-Python wheels run in the sandbox"
                        .into(),
                ));
            }
        }
        entries.push((path, contents));
    }
    Ok(entries)
}

/// Whether the file name `lower` (lowercase) is native code — a Python
/// extension or shared library (`.so`, `.so.N`, `.pyd`, `.dylib`, `.dll`),
/// which the sandbox cannot load — as [`wheel_files`] judges it.
pub fn is_native(lower: &str) -> bool {
    [".so", ".pyd", ".dylib", ".dll"]
        .iter()
        .any(|ext| lower.ends_with(ext))
        || lower.contains(".so.")
}

/// Fills `dir` once (a directory that exists is complete: every directory
/// here is named by the hash of its content), atomically.
fn fill_once(dir: &Path, fill: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<()> {
    if dir.exists() {
        return Ok(());
    }
    eryx_bundle::fill_dir_atomically(dir, Path::exists, |tmp| Ok(fill(tmp)?))?;
    Ok(())
}
