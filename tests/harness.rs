//! Shared set-up for the integration tests: the component is built (or found
//! in the data directory) once per machine, and loaded once per test process.
//!
//! Every test runs real CPython 3.14 in real wasm instances; nothing is mocked.

use std::sync::OnceLock;

/// The runtime every test in this process shares: the base artifact from the
/// default data directory's store (built on first use), on a small pool.
///
/// # Panics
/// When the artifact cannot be built or loaded: the pipeline's error says
/// which step failed.
pub fn runtime() -> &'static eryx::Runtime {
    static RUNTIME: OnceLock<eryx::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| runtime_on(engine()))
}

/// A runtime for the base artifact on `engine` (built on first use).
///
/// # Panics
/// As [`runtime`].
pub fn runtime_on(engine: eryx::Engine) -> eryx::Runtime {
    // Built on a thread of its own: tests call this from inside their async
    // runtime, which cannot block on another.
    std::thread::spawn(move || {
        let data_dir = eryx_preinit::default_data_dir();
        let store = eryx_preinit::ArtifactStore::open(
            &eryx_preinit::default_store_location(&data_dir),
            &eryx_preinit::cache_dir(&data_dir),
        )
        .expect("opening the default artifact store");
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (runtime, _report) = tokio
            .block_on(eryx_preinit::ensure_runtime(
                &data_dir,
                &store,
                &engine,
                &eryx_preinit::LogProgress,
            ))
            .unwrap_or_else(|e| panic!("building the base artifact: {e}"));
        runtime
    })
    .join()
    .expect("building the runtime panicked")
}

/// The standard library directory of the CPython distribution.
pub fn stdlib_dir() -> std::path::PathBuf {
    eryx_preinit::python::ensure_dist(
        &eryx_preinit::default_data_dir(),
        &eryx_preinit::LogProgress,
    )
    .expect("CPython for WASI")
    .stdlib_dir()
}

/// An engine with a pool sized for tests.
pub fn engine() -> eryx::Engine {
    eryx::Engine::new(eryx::EngineOptions::default().with_pool_size(128))
        .expect("creating the engine")
}

/// A sandbox with default settings on the shared runtime.
pub fn sandbox() -> eryx::Sandbox {
    eryx::Sandbox::builder(runtime())
        .build()
        .expect("default sandbox")
}

/// Runs `code` in a fresh sandbox and panics, with the Python traceback, if it fails.
pub async fn run(code: &str) -> eryx::ExecuteResult {
    match sandbox().execute(code).await {
        Ok(result) => result,
        Err(eryx::Error::Exception(e) | eryx::Error::Compile(e)) => {
            panic!(
                "Python failed:\n{}\nstdout: {}\nstderr: {}",
                e.traceback, e.stdout, e.stderr
            )
        }
        Err(other) => panic!("execute failed: {other}"),
    }
}

/// Runs `code` expecting an uncaught exception; returns it.
pub async fn run_err(code: &str) -> eryx::Error {
    match sandbox().execute(code).await {
        Ok(result) => panic!("expected an error, got {result:?}"),
        Err(error) => error,
    }
}
