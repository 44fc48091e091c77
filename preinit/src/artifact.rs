//! The base artifact: the linked component, pre-initialized (CPython started,
//! common modules imported) and precompiled for the engine that will run it,
//! published content-addressed in an [`ArtifactStore`].

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::store::{ArtifactStore, MANIFEST_FORMAT, Manifest};
use crate::{Error, PRELOAD_MODULES, Progress, Result, ensure_component};

/// Bumped whenever pre-initialization changes in a way the inputs do not show.
const PREINIT_RECIPE: &str = "eryx-preinit-v1";

/// What [`ensure_runtime`] did to get its runtime.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Report {
    /// The artifact's manifest.
    pub manifest: Manifest,
    /// How the artifact was obtained.
    pub origin: Origin,
    /// Artifacts found unusable (corrupt or incompatible) and rebuilt, with why.
    pub rejected: Vec<String>,
    /// Time to verify and load the precompiled artifact into the engine.
    pub load_time: Duration,
}

/// How an artifact was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// It was already in the local cache.
    Cached,
    /// It was downloaded from the store.
    Fetched,
    /// It was built (linked, pre-initialized, precompiled) and published now.
    Built,
}

/// The artifact key for a linked component on an engine: sha256 over the
/// component's key (guest, libraries, WIT, link recipe), the pre-init recipe
/// and module list, the manifest format, the wasmtime version and the engine
/// fingerprint.
pub fn artifact_key(component_key: &str, engine: &eryx::Engine) -> String {
    let mut hasher = Sha256::new();
    let format = MANIFEST_FORMAT.to_string();
    for part in [
        component_key,
        PREINIT_RECIPE,
        &format,
        eryx::WASMTIME_VERSION,
        engine.fingerprint(),
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    for module in PRELOAD_MODULES {
        hasher.update(module.as_bytes());
        hasher.update([0]);
    }
    hex::encode(hasher.finalize())
}

/// Returns a [`Runtime`](eryx::Runtime) for the base artifact, doing only the
/// work needed: load it from the local cache, else fetch it from `store`,
/// else build it (link → pre-initialize → precompile) and publish it.
///
/// An artifact that fails verification (its bytes do not match the manifest's
/// content hash) or that another engine configuration made is reported, removed and
/// rebuilt; it is never executed.
///
/// The CPU-heavy steps (linking, pre-initialization, Cranelift) run on the
/// calling thread: call it where blocking for seconds is acceptable.
/// Processes on one machine that call it at the same time wait for each
/// other on `data_dir/artifact.lock` (each build differs in its bytes — the
/// snapshot's hash secret — so two interleaved publishes could pair one
/// build's manifest with the other's cached bytes).
///
/// # Errors
/// Any step's [`Error`]; a second failure after a rebuild is returned as is.
pub async fn ensure_runtime(
    data_dir: &Path,
    store: &ArtifactStore,
    engine: &eryx::Engine,
    progress: &dyn Progress,
) -> Result<(eryx::Runtime, Report)> {
    // Keys come from what the binary embeds: nothing is linked unless the
    // artifact must be built.
    let key = artifact_key(&eryx::base::link::component_key(), engine);
    std::fs::create_dir_all(data_dir)?;
    let lock = std::fs::File::create(data_dir.join("artifact.lock"))?;
    lock.lock()?;
    let stdlib_dir = eryx::base::dist::ensure_dist(data_dir, progress)?.stdlib_dir();
    let mut rejected = Vec::new();
    for _attempt in 0..2 {
        let found = match store.manifest(&key).await {
            Ok(found) => found,
            Err(
                error @ (Error::BadManifest(_)
                | Error::Store(eryx_store::Error::BadSignature { .. })),
            ) => {
                tracing::warn!(key, "artifact manifest unusable, rebuilding: {error}");
                rejected.push(error.to_string());
                store.remove(&key).await?;
                None
            }
            Err(error) => return Err(error),
        };
        let (manifest, origin) = match found {
            Some(manifest) => {
                let origin = if store.cache_path(&manifest).exists() {
                    Origin::Cached
                } else {
                    Origin::Fetched
                };
                (manifest, origin)
            }
            None => {
                let component = ensure_component(data_dir, progress)?;
                (
                    build(&component, &key, store, engine, progress).await?,
                    Origin::Built,
                )
            }
        };
        match load(store, &manifest, engine, &stdlib_dir).await {
            Ok(runtime) => {
                let load_time = runtime.load_time();
                return Ok((
                    runtime,
                    Report {
                        manifest,
                        origin,
                        rejected,
                        load_time,
                    },
                ));
            }
            Err(error) if origin != Origin::Built && is_unusable_artifact(&error) => {
                tracing::warn!(key, "artifact unusable, rebuilding it: {error}");
                rejected.push(error.to_string());
                store.remove(&key).await?;
            }
            Err(error) => return Err(error),
        }
    }
    Err(Error::BadManifest(format!(
        "artifact {key} still unusable after a rebuild: {}",
        rejected.join("; ")
    )))
}

/// Whether `error` says the artifact itself is bad (so rebuilding helps).
fn is_unusable_artifact(error: &Error) -> bool {
    match error {
        Error::HashMismatch { .. } => true,
        Error::Runtime(error) => matches!(
            **error,
            eryx::Error::CorruptArtifact { .. } | eryx::Error::IncompatibleArtifact(_)
        ),
        _ => false,
    }
}

async fn load(
    store: &ArtifactStore,
    manifest: &Manifest,
    engine: &eryx::Engine,
    stdlib_dir: &Path,
) -> Result<eryx::Runtime> {
    if manifest.engine != engine.fingerprint() || manifest.wasmtime != eryx::WASMTIME_VERSION {
        return Err(Error::from(eryx::Error::IncompatibleArtifact(format!(
            "artifact {} was compiled by wasmtime {} with engine {}, this is wasmtime {} with engine {}",
            manifest.key,
            manifest.wasmtime,
            manifest.engine,
            eryx::WASMTIME_VERSION,
            engine.fingerprint()
        ))));
    }
    let path = store.fetch(manifest).await?;
    eryx::Runtime::builder()
        .with_engine(engine)
        .with_precompiled_file(&path, &manifest.blake3)
        .with_stdlib_dir(stdlib_dir)
        .build()
        .map_err(Error::from)
}

async fn build(
    component: &crate::Artifacts,
    key: &str,
    store: &ArtifactStore,
    engine: &eryx::Engine,
    progress: &dyn Progress,
) -> Result<Manifest> {
    let mut timings = BTreeMap::new();
    for (step, time) in &component.timings {
        timings.insert(format!("{step}_ms"), time.as_millis() as u64);
    }
    let built = eryx::base::build_base(engine, component, progress).await?;
    for (step, ms) in &built.timings {
        timings.insert((*step).to_owned(), *ms);
    }
    let (snapshot, cwasm) = (built.snapshot, built.cwasm);
    let modules: Vec<String> = PRELOAD_MODULES.iter().map(|m| (*m).to_owned()).collect();

    let mut manifest = Manifest::new(
        key,
        &cwasm,
        engine,
        BTreeMap::from([
            ("component".to_owned(), component.key.clone()),
            ("preinit_recipe".to_owned(), PREINIT_RECIPE.to_owned()),
        ]),
        timings,
    );
    manifest.preloaded_modules = modules;
    manifest.snapshot_blake3 = Some(eryx::content_hash(&snapshot));
    progress.step(&format!("publishing the artifact to {}", store.location()));
    store.publish_snapshot(key, snapshot).await?;
    store.publish(&manifest, cwasm).await?;
    progress.done("published the artifact");
    Ok(manifest)
}
