//! Set-up shared by the benchmarks: the base artifact (pre-initialized,
//! precompiled) and the plain linked component, from the default data dir.

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
    /// The linked component before pre-initialization (`.wasm`).
    pub component: PathBuf,
    pub stdlib_dir: PathBuf,
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
    Setup {
        cwasm: (
            store.cache_path(&report.manifest),
            report.manifest.blake3.clone(),
        ),
        engine,
        runtime,
        component: component.component,
        stdlib_dir: component.stdlib_dir,
        tokio,
    }
}
