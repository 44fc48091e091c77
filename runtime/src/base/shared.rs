//! The process-wide default [`Runtime`]: the embedded component,
//! pre-initialized and precompiled once per data directory, loaded once per
//! process (see [`Runtime::shared`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::{LogProgress, PRELOAD_MODULES, Progress, atomic_write, build_base, ensure_component};
use crate::{Engine, EngineOptions, Error, Result, Runtime, SigningKey, WASMTIME_VERSION};

/// Bumped when the layout or recipe of the shared base changes.
const SHARED_RECIPE: &str = "eryx-shared-base-v1";

/// The signature domain of a shared base's record.
const RECORD_DOMAIN: &str = "eryx shared base v1";

/// Bumped when the way preload snapshots are made changes.
const PRELOAD_RECIPE: &str = "eryx-preload-v1";

static SHARED: Mutex<Option<Runtime>> = Mutex::new(None);

impl Runtime {
    /// The process-wide default runtime, used by
    /// [`Sandbox::builder()`](crate::Sandbox::builder) when no runtime is
    /// given: the component embedded in this crate, pre-initialized and
    /// precompiled for a default [`Engine`] and kept in the data directory
    /// ([`default_data_dir`](super::default_data_dir)) under `runtime/`.
    ///
    /// The first call in a process loads it (tens of milliseconds); the first
    /// on a machine also builds it — unpacks CPython, links, pre-initializes,
    /// compiles: 10–30 s of CPU, reported through `tracing` at info level and
    /// done once across processes (a lock in the data directory). Later calls
    /// return the same runtime (a clone, cheap). The precompiled file is
    /// loaded only if its record verifies under the data directory's signing
    /// key (`signing.key`, or `ERYX_SIGNING_KEY`) and its bytes have the
    /// recorded hash; otherwise it is rebuilt, never executed.
    ///
    /// Blocks the calling thread while building; the work runs on a thread of
    /// its own, so it may be called from inside an async runtime.
    ///
    /// # Errors
    /// [`Error::Bundle`], [`Error::Link`], [`Error::Preinit`], [`Error::Host`],
    /// [`Error::Io`] from the steps; a failure is not cached (the next call
    /// tries again).
    pub fn shared() -> Result<Runtime> {
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(runtime) = shared.as_ref() {
            return Ok(runtime.clone());
        }
        let data_dir = super::default_data_dir();
        let runtime = on_own_thread("building the shared runtime", || {
            load_or_build(&data_dir, &LogProgress)
        })?;
        *shared = Some(runtime.clone());
        Ok(runtime)
    }
}

/// A shared base's record: what was built, signed.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    key: String,
    /// [`content_hash`](crate::content_hash) of the `.cwasm`.
    blake3: String,
    /// Content hash of the pre-initialized `.wasm` it was compiled from.
    snapshot_blake3: String,
    /// Hex HMAC-SHA256 of the fields above under the data directory's key.
    tag: String,
}

impl Record {
    fn signed_bytes(&self) -> Vec<u8> {
        format!("{}\n{}\n{}", self.key, self.blake3, self.snapshot_blake3).into_bytes()
    }

    fn new(key: String, cwasm: &[u8], snapshot: &[u8], signing: &SigningKey) -> Record {
        let mut record = Record {
            key,
            blake3: crate::content_hash(cwasm),
            snapshot_blake3: crate::content_hash(snapshot),
            tag: String::new(),
        };
        record.tag = signing.sign_hex(RECORD_DOMAIN, &record.signed_bytes());
        record
    }

    /// The record at `path`, if it is for `key` and its tag verifies.
    fn read(path: &Path, key: &str, signing: &SigningKey) -> Option<Record> {
        let bytes = std::fs::read(path).ok()?;
        let record: Record = serde_json::from_slice(&bytes).ok()?;
        (record.key == key
            && signing.verify_hex(RECORD_DOMAIN, &record.signed_bytes(), &record.tag))
        .then_some(record)
    }

    fn write(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec(self).map_err(|e| Error::Host(e.to_string()))?;
        atomic_write(path, &json)
    }
}

/// The shared engine: default options, with Cranelift's incremental cache in
/// the data directory (a preload snapshot differs from its base in data, so
/// its compile reuses the base's machine code).
fn shared_engine(data_dir: &Path, signing: &SigningKey) -> Result<Engine> {
    Engine::new(
        EngineOptions::default()
            .with_compile_cache(data_dir.join("cache").join("compile"), signing.clone()),
    )
}

/// The key of the shared base on `engine`: sha256 of the component's key,
/// the recipe, the preloaded modules, wasmtime's version and the engine's
/// fingerprint.
fn shared_key(engine: &Engine) -> String {
    let mut hasher = Sha256::new();
    let component = super::link::component_key();
    for part in [
        component.as_str(),
        SHARED_RECIPE,
        WASMTIME_VERSION,
        engine.fingerprint(),
    ]
    .into_iter()
    .chain(PRELOAD_MODULES.iter().copied())
    {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hex::encode(hasher.finalize())
}

fn load_or_build(data_dir: &Path, progress: &dyn Progress) -> Result<Runtime> {
    let signing = super::signing_key(data_dir)?;
    let engine = shared_engine(data_dir, &signing)?;
    let key = shared_key(&engine);
    let (dir, _lock) = lock_runtime_dir(data_dir)?;
    let stdlib = super::dist::ensure_dist(data_dir, progress)?.stdlib_dir();
    let paths = Paths::new(&dir, &key);
    if let Some(record) = Record::read(&paths.record, &key, &signing) {
        match paths.load(&engine, &record, &stdlib) {
            Ok(runtime) => return Ok(runtime),
            Err(error) => tracing::warn!("the shared runtime is unusable, rebuilding it: {error}"),
        }
    }
    let component = ensure_component(data_dir, progress)?;
    let built = block_on(build_base(&engine, &component, progress))?;
    paths
        .store(key, &built.cwasm, &built.snapshot, &signing)?
        .load_with(&engine, &stdlib)
}

/// Runs `work` on a thread of its own and waits for it: the CPU-heavy builds
/// below then never run on an async worker's stack, and may start a tokio
/// runtime of their own even when the caller is inside one. A panic becomes
/// [`Error::Host`] naming `what`.
fn on_own_thread<T: Send>(what: &str, work: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(work)
            .join()
            .unwrap_or_else(|_| Err(Error::Host(format!("{what} panicked"))))
    })
}

/// `data_dir/runtime`, created if needed, and the exclusive lock on its
/// `build.lock` (held until the file is dropped): processes sharing the data
/// directory build each runtime once.
fn lock_runtime_dir(data_dir: &Path) -> Result<(PathBuf, std::fs::File)> {
    let dir = data_dir.join("runtime");
    std::fs::create_dir_all(&dir)?;
    let lock = std::fs::File::create(dir.join("build.lock"))?;
    lock.lock()?;
    Ok((dir, lock))
}

/// Runs `future` to completion on a current-thread tokio runtime (the
/// callers are on a thread of their own).
fn block_on<T>(future: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(future)
}

/// The files of one built runtime: `<key>.cwasm`, `<key>.wasm` (the
/// snapshot it was compiled from) and the signed `<key>.json`.
struct Paths {
    cwasm: PathBuf,
    snapshot: PathBuf,
    record: PathBuf,
}

/// A record just stored, with where its files are.
struct Stored<'a> {
    paths: &'a Paths,
    record: Record,
}

impl Stored<'_> {
    fn load_with(&self, engine: &Engine, stdlib: &Path) -> Result<Runtime> {
        self.paths.load(engine, &self.record, stdlib)
    }
}

impl Paths {
    fn new(dir: &Path, name: &str) -> Paths {
        Paths {
            cwasm: dir.join(format!("{name}.cwasm")),
            snapshot: dir.join(format!("{name}.wasm")),
            record: dir.join(format!("{name}.json")),
        }
    }

    /// Writes the files, the record last (so a record always has its files).
    fn store(
        &self,
        key: String,
        cwasm: &[u8],
        snapshot: &[u8],
        signing: &SigningKey,
    ) -> Result<Stored<'_>> {
        atomic_write(&self.cwasm, cwasm)?;
        atomic_write(&self.snapshot, snapshot)?;
        let record = Record::new(key, cwasm, snapshot, signing);
        record.write(&self.record)?;
        Ok(Stored {
            paths: self,
            record,
        })
    }

    fn load(&self, engine: &Engine, record: &Record, stdlib: &Path) -> Result<Runtime> {
        Runtime::builder()
            .with_engine(engine)
            .with_precompiled_file(&self.cwasm, &record.blake3)
            .with_snapshot_file(&self.snapshot, &record.snapshot_blake3)
            .with_stdlib_dir(stdlib)
            .build()
    }
}

/// Runtimes with preloaded modules made in this process, by key.
static PRELOADED: Mutex<Option<HashMap<String, Runtime>>> = Mutex::new(None);

/// A runtime whose instances start with `modules` imported from `mounts`
/// (libraries and packages, mounted in this order) and the standard
/// library: `base`'s snapshot re-snapshotted with them imported, precompiled
/// (mostly from the compile cache when the engine has one), kept in
/// `data_dir` under `runtime/preload-<key>` and once per process in memory.
///
/// # Errors
/// [`Error::Config`] when `base` has no snapshot file
/// ([`RuntimeBuilder::with_snapshot_file`](crate::RuntimeBuilder::with_snapshot_file));
/// [`Error::CorruptArtifact`] when that file does not have its hash;
/// [`Error::Preinit`] when a module does not import; [`Error::Host`].
pub(crate) fn preloaded(
    base: &Runtime,
    data_dir: &Path,
    mounts: &[PathBuf],
    modules: &[String],
) -> Result<Runtime> {
    let Some((snapshot, snapshot_hash)) = base.snapshot_file() else {
        return Err(Error::Config(
            "with_preload needs a runtime that knows its snapshot file: the shared runtime, or one built with_snapshot_file".into(),
        ));
    };
    let mut hasher = Sha256::new();
    for part in [PRELOAD_RECIPE, snapshot_hash, base.engine().fingerprint()]
        .into_iter()
        .map(str::to_owned)
        // Mount directories are named by their content hash: the name, not
        // the data directory's path, is what the snapshot depends on.
        .chain(mounts.iter().map(|m| {
            m.file_name().map_or_else(
                || m.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        }))
        .chain(std::iter::once("modules".to_owned()))
        .chain(modules.iter().cloned())
    {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let key = hex::encode(hasher.finalize());
    let mut cache = PRELOADED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(runtime) = cache.get_or_insert_with(HashMap::new).get(&key) {
        return Ok(runtime.clone());
    }
    let (snapshot, snapshot_hash) = (snapshot.to_owned(), snapshot_hash.to_owned());
    let runtime = on_own_thread("snapshotting preloaded modules", || {
        let signing = super::signing_key(data_dir)?;
        let (dir, _lock) = lock_runtime_dir(data_dir)?;
        let paths = Paths::new(&dir, &format!("preload-{key}"));
        if let Some(record) = Record::read(&paths.record, &key, &signing)
            && let Ok(runtime) = paths.load(base.engine(), &record, base.stdlib_dir())
        {
            return Ok(runtime);
        }
        let bytes = std::fs::read(&snapshot)?;
        let actual = crate::content_hash(&bytes);
        if actual != snapshot_hash {
            return Err(Error::CorruptArtifact {
                path: snapshot.clone(),
                expected: snapshot_hash.clone(),
                actual,
            });
        }
        tracing::info!(?modules, "snapshotting preloaded modules");
        let engine = base.engine();
        let preloaded =
            block_on(engine.preinitialize_with_mounts(&bytes, base.stdlib_dir(), modules, mounts))?;
        let cwasm = engine.precompile(&preloaded)?;
        paths
            .store(key.clone(), &cwasm, &preloaded, &signing)?
            .load_with(engine, base.stdlib_dir())
    })?;
    cache
        .get_or_insert_with(HashMap::new)
        .insert(key, runtime.clone());
    Ok(runtime)
}
