//! Set-up shared by the benchmarks: the base artifact (pre-initialized,
//! precompiled, from the flattened component), the plain flattened component,
//! and the same base made from the component as `wit-component` linked it
//! (for side-by-side figures), from the default data dir.

use std::path::PathBuf;

use eryx_preinit::LogProgress;

/// What the benchmarks run on (each bench uses part of it).
#[allow(dead_code)]
pub struct Setup {
    pub engine: eryx::Engine,
    /// The pre-initialized, precompiled base artifact.
    pub runtime: eryx::Runtime,
    /// Path and content hash of the artifact's `.cwasm`.
    pub cwasm: (PathBuf, String),
    /// The link step's artifacts: the component that runs (flattened,
    /// `component`), the linked one, the standard library (`stdlib_dir`).
    pub artifacts: eryx::base::Artifacts,
    /// The data directory the artifacts are cached in.
    pub data_dir: PathBuf,
    /// The base made the same way from the linked, unflattened component.
    pub linked: eryx::Runtime,
    pub tokio: tokio::runtime::Runtime,
}

pub fn setup() -> Setup {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let data_dir = eryx_preinit::default_data_dir();
    let store = eryx_preinit::ArtifactStore::open(
        &eryx_preinit::default_store_location(&data_dir),
        &eryx_preinit::cache_dir(&data_dir),
        &eryx_preinit::signing_key(&data_dir).unwrap(),
    )
    .unwrap();
    let engine = eryx::Engine::new(eryx::EngineOptions::default()).unwrap();
    let (runtime, report) = tokio
        .block_on(eryx_preinit::ensure_runtime(
            &data_dir,
            &store,
            &engine,
            &LogProgress,
        ))
        .unwrap();
    let component = eryx_preinit::ensure_component(&data_dir, &LogProgress).unwrap();
    let linked = tokio.block_on(linked_runtime(&data_dir, &engine, &component));
    Setup {
        linked,
        cwasm: (
            store.cache_path(&report.manifest),
            report.manifest.blake3.clone(),
        ),
        engine,
        runtime,
        artifacts: component,
        data_dir,
        tokio,
    }
}

/// The base pre-initialized and precompiled from the linked component,
/// cached in the data directory by the component's key and the engine.
async fn linked_runtime(
    data_dir: &std::path::Path,
    engine: &eryx::Engine,
    component: &eryx::base::Artifacts,
) -> eryx::Runtime {
    precompiled_runtime(data_dir, engine, component, &component.linked, "linked").await
}

/// The base pre-initialized from `wasm` (one of `component`'s) and
/// precompiled for `engine`. Both are cached in the data directory: the
/// snapshot as `cache/bench/{tag}-{key}.wasm` (so every engine compiles the
/// same snapshot), the artifact as `cache/bench/{tag}-{key}-{engine}.cwasm`.
pub async fn precompiled_runtime(
    data_dir: &std::path::Path,
    engine: &eryx::Engine,
    component: &eryx::base::Artifacts,
    wasm: &std::path::Path,
    tag: &str,
) -> eryx::Runtime {
    let dir = data_dir.join("cache").join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    let snapshot_path = dir.join(format!("{tag}-{}.wasm", component.key));
    if !snapshot_path.exists() {
        let wasm = std::fs::read(wasm).unwrap();
        let modules: Vec<String> = eryx::base::PRELOAD_MODULES
            .iter()
            .map(|m| (*m).to_owned())
            .collect();
        let snapshot = engine
            .preinitialize(&wasm, &component.stdlib_dir, &modules)
            .await
            .unwrap();
        std::fs::write(&snapshot_path, snapshot).unwrap();
    }
    let path = dir.join(format!(
        "{tag}-{}-{}.cwasm",
        component.key,
        &engine.fingerprint()[..16]
    ));
    if !path.exists() {
        let cwasm = engine
            .precompile(&std::fs::read(&snapshot_path).unwrap())
            .unwrap();
        std::fs::write(&path, cwasm).unwrap();
    }
    let hash = eryx::content_hash(&std::fs::read(&path).unwrap());
    eryx::Runtime::builder()
        .with_engine(engine)
        .with_precompiled_file(&path, hash)
        .with_stdlib_dir(&component.stdlib_dir)
        .build()
        .unwrap()
}
