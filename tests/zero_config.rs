//! `Sandbox::builder().build()` with no configuration: the default runtime
//! is built once into a fresh data directory, then reused.

use std::time::{Duration, Instant};

#[tokio::test]
async fn zero_config_builder_builds_once_into_a_fresh_data_dir_then_is_instant() {
    let data_dir = tempfile::tempdir().unwrap();
    // SAFETY: this is the only test of this binary and nothing else reads the
    // environment concurrently (nextest runs each test in its own process).
    unsafe { std::env::set_var("ERYX_DATA_DIR", data_dir.path()) };

    let first = Instant::now();
    let sandbox = eryx::Sandbox::builder().build().unwrap();
    let first = first.elapsed();
    let result = sandbox
        .execute("import sys\nsys.version_info[:2]")
        .await
        .unwrap();
    assert_eq!(result.result.as_deref(), Some("(3, 14)"));

    let built: Vec<_> = std::fs::read_dir(data_dir.path().join("runtime"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".cwasm"))
        .collect();
    assert_eq!(built.len(), 1, "one precompiled base: {built:?}");

    let again = Instant::now();
    for _ in 0..100 {
        eryx::Sandbox::builder().build().unwrap();
    }
    let per_build = again.elapsed() / 100;
    assert!(
        per_build < Duration::from_millis(5) && per_build * 100 < first,
        "first build {first:?}, later ones {per_build:?} each"
    );
    // A second sandbox runs on the same runtime.
    let other = eryx::Sandbox::builder().build().unwrap();
    assert_eq!(
        other.execute("6 * 7").await.unwrap().result.as_deref(),
        Some("42")
    );
}
