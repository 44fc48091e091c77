//! Shared set-up for the integration tests: the component is built (or found
//! in the data directory) once per machine, and loaded once per test process.
//!
//! Every test runs real CPython 3.14 in real wasm instances; nothing is mocked.

use std::sync::OnceLock;

/// The runtime every test in this process shares.
///
/// # Panics
/// When the component cannot be built or loaded: the build pipeline's error
/// says which step failed.
pub fn runtime() -> &'static eryx::Runtime {
    static RUNTIME: OnceLock<eryx::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let data_dir = eryx_preinit::default_data_dir();
        let artifacts = eryx_preinit::ensure_component(&data_dir, &eryx_preinit::LogProgress)
            .unwrap_or_else(|e| panic!("building the component: {e}"));
        eryx::Runtime::builder()
            .with_component_file(&artifacts.component)
            .with_stdlib_dir(&artifacts.stdlib_dir)
            .with_cache_dir(data_dir.join("compiled"))
            .build()
            .unwrap_or_else(|e| panic!("loading the component: {e}"))
    })
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
