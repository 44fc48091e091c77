//! The process-wide default [`Runtime`]: the embedded component,
//! pre-initialized and precompiled once per data directory, loaded once per
//! process (see [`Runtime::shared`]).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::{LogProgress, PRELOAD_MODULES, Progress, atomic_write, build_base, ensure_component};
use crate::{Engine, EngineOptions, Error, Result, Runtime, SigningKey, WASMTIME_VERSION};

/// Bumped when the layout or recipe of the shared base changes.
const SHARED_RECIPE: &str = "eryx-shared-base-v1";

/// The signature domain of a shared base's record.
const RECORD_DOMAIN: &str = "eryx shared base v1";

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
        let runtime = std::thread::scope(|scope| {
            scope
                .spawn(|| load_or_build(&data_dir, &LogProgress))
                .join()
                .unwrap_or_else(|_| Err(Error::Host("building the shared runtime panicked".into())))
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
    /// Hex HMAC-SHA256 of `key` and `blake3` under the data directory's key.
    tag: String,
}

fn signed_bytes(key: &str, blake3: &str) -> Vec<u8> {
    format!("{key}\n{blake3}").into_bytes()
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
    let engine = Engine::new(EngineOptions::default())?;
    let key = shared_key(&engine);
    let dir = data_dir.join("runtime");
    std::fs::create_dir_all(&dir)?;
    let lock = std::fs::File::create(dir.join("build.lock"))?;
    lock.lock()?;
    let signing = super::signing_key(data_dir)?;
    let stdlib = super::dist::ensure_dist(data_dir, progress)?.stdlib_dir();
    let (cwasm_path, record_path) = (
        dir.join(format!("{key}.cwasm")),
        dir.join(format!("{key}.json")),
    );
    if let Some(blake3) = verified_record(&record_path, &key, &signing) {
        match load(&engine, &cwasm_path, &blake3, &stdlib) {
            Ok(runtime) => return Ok(runtime),
            Err(error) => tracing::warn!("the shared runtime is unusable, rebuilding it: {error}"),
        }
    }
    let component = ensure_component(data_dir, progress)?;
    let built = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(build_base(&engine, &component, progress))?;
    let blake3 = crate::content_hash(&built.cwasm);
    atomic_write(&cwasm_path, &built.cwasm)?;
    let record = Record {
        tag: signing.sign_hex(RECORD_DOMAIN, &signed_bytes(&key, &blake3)),
        key,
        blake3: blake3.clone(),
    };
    let json = serde_json::to_vec(&record).map_err(|e| Error::Host(e.to_string()))?;
    atomic_write(&record_path, &json)?;
    load(&engine, &cwasm_path, &blake3, &stdlib)
}

/// The content hash in the record at `path`, if it is for `key` and its tag
/// verifies.
fn verified_record(path: &PathBuf, key: &str, signing: &SigningKey) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let record: Record = serde_json::from_slice(&bytes).ok()?;
    let signed = signed_bytes(&record.key, &record.blake3);
    (record.key == key && signing.verify_hex(RECORD_DOMAIN, &signed, &record.tag))
        .then_some(record.blake3)
}

fn load(engine: &Engine, cwasm: &Path, blake3: &str, stdlib: &Path) -> Result<Runtime> {
    Runtime::builder()
        .with_engine(engine)
        .with_precompiled_file(cwasm, blake3)
        .with_stdlib_dir(stdlib)
        .build()
}
