//! Artifacts: content-addressed keys, verification before loading, the S3
//! store against a real S3-compatible server, and pre-initialized instances.

use std::path::{Path, PathBuf};

use eryx_preinit::{ArtifactStore, LogProgress, Origin};
use eryx_tests::{S3Server, engine, run};

/// A store in a temporary directory, seeded with the base artifact the
/// harness already built (so tests that tamper with it need not build first).
fn seeded_store(dir: &Path) -> (ArtifactStore, String) {
    eryx_tests::runtime();
    let data_dir = eryx_preinit::default_data_dir();
    let component = eryx_preinit::ensure_component(&data_dir, &LogProgress).unwrap();
    let key = eryx_preinit::artifact_key(&component.key, &engine());
    let from = Path::new(&eryx_preinit::default_store_location(&data_dir)).join("artifacts");
    let to = dir.join("store").join("artifacts");
    std::fs::create_dir_all(&to).unwrap();
    for ext in ["cwasm", "json"] {
        std::fs::copy(
            from.join(format!("{key}.{ext}")),
            to.join(format!("{key}.{ext}")),
        )
        .unwrap();
    }
    let store = ArtifactStore::open(
        dir.join("store").to_str().unwrap(),
        &dir.join("cache"),
        &eryx_tests::signing_key(),
    )
    .unwrap();
    (store, key)
}

fn stored_file(dir: &Path, key: &str, ext: &str) -> PathBuf {
    dir.join("store")
        .join("artifacts")
        .join(format!("{key}.{ext}"))
}

async fn ensure(store: &ArtifactStore) -> (eryx::Runtime, eryx_preinit::Report) {
    eryx_preinit::ensure_runtime(
        &eryx_preinit::default_data_dir(),
        store,
        &engine(),
        &LogProgress,
    )
    .await
    .unwrap_or_else(|e| panic!("ensure_runtime: {e}"))
}

async fn hello(runtime: &eryx::Runtime) -> String {
    let sandbox = eryx::Sandbox::builder()
        .with_runtime(runtime)
        .build()
        .unwrap();
    sandbox.execute("print('hi')").await.unwrap().stdout
}

#[test]
fn artifact_keys_are_content_addressed() {
    let engine = engine();
    let a = "1".repeat(64);
    let b = "2".repeat(64);
    assert_eq!(
        eryx_preinit::artifact_key(&a, &engine),
        eryx_preinit::artifact_key(&a, &engine)
    );
    assert_ne!(
        eryx_preinit::artifact_key(&a, &engine),
        eryx_preinit::artifact_key(&b, &engine)
    );
    // The pool knobs do not change compiled code, so they do not change the key.
    let other_pool = eryx::Engine::new(eryx::EngineOptions::default().with_pool_size(3)).unwrap();
    assert_eq!(engine.fingerprint(), other_pool.fingerprint());
    // The linked component's key is stable for unchanged inputs.
    let data_dir = eryx_preinit::default_data_dir();
    let first = eryx_preinit::ensure_component(&data_dir, &LogProgress).unwrap();
    let second = eryx_preinit::ensure_component(&data_dir, &LogProgress).unwrap();
    assert_eq!(first.key, second.key);
    assert_eq!(first.component, second.component);
}

#[tokio::test]
async fn seeded_artifact_loads_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key) = seeded_store(dir.path());
    let (runtime, report) = ensure(&store).await;
    assert_eq!(report.origin, Origin::Fetched);
    assert_eq!(report.manifest.key, key);
    assert!(store.cache_path(&report.manifest).exists());
    assert_eq!(hello(&runtime).await, "hi\n");
    let (_, report) = ensure(&store).await;
    assert_eq!(report.origin, Origin::Cached);
}

#[tokio::test]
async fn corrupted_artifact_is_detected_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key) = seeded_store(dir.path());
    // Flip one byte in the middle of the stored artifact.
    let path = stored_file(dir.path(), &key, "cwasm");
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let (runtime, report) = ensure(&store).await;
    assert_eq!(report.origin, Origin::Built);
    assert_eq!(report.rejected.len(), 1, "{:?}", report.rejected);
    assert!(
        report.rejected[0].contains("blake3 is"),
        "{:?}",
        report.rejected
    );
    assert_eq!(hello(&runtime).await, "hi\n");
    // The rebuilt artifact replaced the corrupt one.
    assert_ne!(std::fs::read(&path).unwrap(), bytes);

    // Corrupting the local cached copy is caught when loading, before use.
    let cached = store.cache_path(&report.manifest);
    let mut bytes = std::fs::read(&cached).unwrap();
    bytes.truncate(bytes.len() - 1);
    std::fs::write(&cached, &bytes).unwrap();
    let (runtime, report) = ensure(&store).await;
    assert!(
        report
            .rejected
            .iter()
            .any(|r| r.contains("corrupt artifact")),
        "{:?}",
        report.rejected
    );
    assert_eq!(hello(&runtime).await, "hi\n");
}

#[tokio::test]
async fn manifest_rewritten_without_the_key_or_from_another_engine_is_refused() {
    // A manifest changed by someone who can write the store but lacks the
    // signing key: its signature no longer verifies, so it is refused.
    let dir = tempfile::tempdir().unwrap();
    let (store, key) = seeded_store(dir.path());
    let manifest_path = stored_file(dir.path(), &key, "json");
    let original = std::fs::read_to_string(&manifest_path).unwrap();
    let fingerprint = engine().fingerprint().to_owned();
    std::fs::write(
        &manifest_path,
        original.replace(&fingerprint, &"0".repeat(64)),
    )
    .unwrap();
    let refused = store.manifest(&key).await.unwrap_err();
    assert!(
        matches!(
            refused,
            eryx_preinit::Error::Store(eryx_store::Error::BadSignature { .. })
        ),
        "{refused:?}"
    );
    std::fs::write(
        &manifest_path,
        original.replace("\"signature\"", "\"unsigned\""),
    )
    .unwrap();
    assert!(matches!(
        store.manifest(&key).await.unwrap_err(),
        eryx_preinit::Error::Store(eryx_store::Error::BadSignature { .. })
    ));

    // A manifest properly signed, but naming another engine: refused (not
    // loaded), rebuilt.
    std::fs::write(&manifest_path, &original).unwrap();
    let mut manifest = store.manifest(&key).await.unwrap().unwrap();
    manifest.engine = "0".repeat(64);
    store
        .objects()
        .put_signed(&format!("artifacts/{key}.json"), &manifest)
        .await
        .unwrap();
    let (_runtime, report) = ensure(&store).await;
    assert!(
        report
            .rejected
            .iter()
            .any(|r| r.contains("incompatible artifact")),
        "{:?}",
        report.rejected
    );
    assert_eq!(report.origin, Origin::Built);

    // Code compiled by a differently configured wasmtime: wasmtime's own
    // header check refuses it, reported as an incompatible artifact.
    let mut config = wasmtime::Config::new();
    config.memory_reservation(64 << 20);
    let foreign = wasmtime::Engine::new(&config).unwrap();
    let empty_component = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
    let cwasm = foreign.precompile_component(&empty_component).unwrap();
    let path = dir.path().join("foreign.cwasm");
    std::fs::write(&path, &cwasm).unwrap();
    let error = eryx::Runtime::builder()
        .with_engine(&engine())
        .with_precompiled_file(&path, eryx::content_hash(&cwasm))
        .with_stdlib_dir(eryx_tests::stdlib_dir())
        .build()
        .unwrap_err();
    assert!(
        matches!(error, eryx::Error::IncompatibleArtifact(_)),
        "{error:?}"
    );
}

#[tokio::test]
async fn pre_initialized_instances_draw_different_random_values() {
    // `random` was imported (and seeded) during pre-initialization; each
    // instance must reseed, and os.urandom must come from the host.
    let code = "import random, os\nrandom.random(), os.urandom(16).hex()";
    let a = run(code).await.result.unwrap();
    let b = run(code).await.result.unwrap();
    assert_ne!(a, b);
    let (a_random, a_urandom) = a.split_once(", ").unwrap();
    let (b_random, b_urandom) = b.split_once(", ").unwrap();
    assert_ne!(
        a_random, b_random,
        "random.random() repeats across instances"
    );
    assert_ne!(a_urandom, b_urandom, "os.urandom repeats across instances");
}

#[tokio::test]
async fn pre_initialized_instances_start_with_modules_loaded() {
    let result = run(
        "import sys\nsorted(m for m in ('json', 'asyncio', 're', 'decimal') if m in sys.modules)",
    )
    .await;
    assert_eq!(
        result.result.as_deref(),
        Some("['asyncio', 'decimal', 'json', 're']")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_publishes_and_serves_artifacts() {
    let server = S3Server::start();
    server.create_bucket("eryx-artifacts");
    let location = "s3://eryx-artifacts/base/v1";

    // First replica: nothing in the bucket, so it builds and publishes.
    let first_cache = tempfile::tempdir().unwrap();
    let store = ArtifactStore::open_with_options(
        location,
        first_cache.path(),
        &eryx_tests::signing_key(),
        server.options(),
    )
    .unwrap();
    let (runtime, report) = ensure(&store).await;
    assert_eq!(report.origin, Origin::Built);
    assert_eq!(hello(&runtime).await, "hi\n");

    // Second replica with an empty cache: fetches the artifact from S3.
    let second_cache = tempfile::tempdir().unwrap();
    let store = ArtifactStore::open_with_options(
        location,
        second_cache.path(),
        &eryx_tests::signing_key(),
        server.options(),
    )
    .unwrap();
    let manifest = store
        .manifest(&report.manifest.key)
        .await
        .unwrap()
        .expect("published manifest");
    assert_eq!(manifest, report.manifest);
    let (runtime, report) = ensure(&store).await;
    assert_eq!(report.origin, Origin::Fetched);
    assert!(report.rejected.is_empty());
    assert_eq!(hello(&runtime).await, "hi\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_compile_cache_entries_are_recompiled_not_loaded() {
    // Someone who can write the compile-cache directory flips bytes of the
    // compiled code in it: every entry's tag fails, so the code is compiled
    // again (and the entry rewritten) instead of being mapped executable.
    let data_dir = eryx_preinit::default_data_dir();
    let store = ArtifactStore::open(
        &eryx_preinit::default_store_location(&data_dir),
        &eryx_preinit::cache_dir(&data_dir),
        &eryx_tests::signing_key(),
    )
    .unwrap();
    let (_, report) = ensure(&store).await;
    let snapshot = std::fs::read(store.fetch_snapshot(&report.manifest).await.unwrap()).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let engine = eryx::Engine::new(
        eryx::EngineOptions::default()
            .with_pool_size(4)
            .with_compile_cache(cache.path(), eryx_tests::signing_key()),
    )
    .unwrap();
    let stdlib = eryx_tests::stdlib_dir();
    let first = {
        let (engine, snapshot, stdlib) = (engine.clone(), snapshot.clone(), stdlib.clone());
        tokio::task::spawn_blocking(move || {
            eryx::FunctionBuilder::new(&engine, snapshot, &stdlib).map_err(|e| e.to_string())
        })
        .await
        .unwrap()
        .unwrap()
    };
    drop(first);
    let mut tampered = Vec::new();
    for entry in std::fs::read_dir(cache.path()).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        tampered.push((path, bytes));
    }
    assert!(tampered.len() > 1000, "{} entries", tampered.len());
    let builder = tokio::task::spawn_blocking(move || {
        eryx::FunctionBuilder::new(&engine, snapshot, &stdlib).map_err(|e| e.to_string())
    })
    .await
    .unwrap()
    .expect("a builder from recompiled code");
    let rewritten = |component: bool| {
        tampered
            .iter()
            .filter(|(path, _)| {
                let name = path.file_name().unwrap().to_str().unwrap();
                name.starts_with("component-") == component
            })
            .map(|(path, bytes)| std::fs::read(path).unwrap() != *bytes)
            .fold((0, 0), |(changed, all), c| {
                (changed + usize::from(c), all + 1)
            })
    };
    // The compiled component is looked up on every start: rewritten.
    assert_eq!(rewritten(true), (1, 1), "the tampered component was kept");
    // Per-function entries: every one the compile looked up was refused and
    // rewritten (a few hundred of the first compile's are not looked up
    // again, measured 208 of 14,356).
    let (changed, all) = rewritten(false);
    assert!(changed * 100 >= all * 95, "{changed} of {all} rewritten");
    // The recompiled builder works.
    let function = builder
        .snapshot(&eryx::FunctionSource {
            module_name: "ok",
            source: "def handler(e, c):\n    return 1\n",
            handler: "handler",
            import_timeout: std::time::Duration::from_secs(10),
            memory_limit_bytes: None,
        })
        .await
        .unwrap();
    assert!(!function.wasm.is_empty());
}

/// A second artifact made from the base's bytes with a few changed: what a
/// per-function snapshot is to its base, for the delta tests (the bytes are
/// only stored and rebuilt, never loaded).
fn variant_of(base: &[u8]) -> Vec<u8> {
    let mut bytes = base.to_vec();
    for i in (0..bytes.len()).step_by(1 << 20) {
        bytes[i] ^= 0x5a;
    }
    bytes.extend_from_slice(b"a function's own data");
    bytes
}

#[tokio::test]
async fn a_delta_is_rebuilt_verified_and_a_tampered_one_is_never_used() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key) = seeded_store(dir.path());
    let base = store.manifest(&key).await.unwrap().unwrap();
    let base_bytes = std::fs::read(store.fetch(&base).await.unwrap()).unwrap();
    let cwasm = variant_of(&base_bytes);
    let function_key = "f".repeat(64);
    let manifest = eryx_preinit::Manifest::new(
        &function_key,
        &cwasm,
        &engine(),
        Default::default(),
        Default::default(),
    );
    let published = store
        .publish_delta(&manifest, cwasm.clone(), &base)
        .await
        .unwrap();
    let delta = published.delta.clone().unwrap();
    assert!(
        delta.stored_size < (cwasm.len() / 20) as u64,
        "the delta ({} bytes) is a small fraction of the artifact ({} bytes)",
        delta.stored_size,
        cwasm.len()
    );
    assert!(!stored_file(dir.path(), &function_key, "cwasm").exists());

    // A replica with an empty cache rebuilds the same bytes.
    let other = ArtifactStore::open(
        dir.path().join("store").to_str().unwrap(),
        &dir.path().join("other-cache"),
        &eryx_tests::signing_key(),
    )
    .unwrap();
    let manifest = other.manifest(&function_key).await.unwrap().unwrap();
    let rebuilt = std::fs::read(other.fetch(&manifest).await.unwrap()).unwrap();
    assert!(
        rebuilt == cwasm,
        "the rebuilt artifact is the published one"
    );

    // A flipped byte in the stored delta: refused, nothing cached.
    let stored = stored_file(dir.path(), &function_key, "cwasm.delta");
    let mut bytes = std::fs::read(&stored).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&stored, bytes).unwrap();
    let third = ArtifactStore::open(
        dir.path().join("store").to_str().unwrap(),
        &dir.path().join("third-cache"),
        &eryx_tests::signing_key(),
    )
    .unwrap();
    let error = third.fetch(&manifest).await.unwrap_err();
    assert!(
        matches!(error, eryx_preinit::Error::HashMismatch { .. }),
        "{error}"
    );
    assert!(!third.cache_path(&manifest).exists());
}

#[tokio::test]
async fn the_artifact_cache_keeps_to_its_limit_by_evicting_the_least_recently_used() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key) = seeded_store(dir.path());
    let base = store.manifest(&key).await.unwrap().unwrap();
    let base_size = base.size;
    // Room for the base and one more artifact of its size, not two.
    let store = store.with_cache_limit(base_size * 5 / 2);
    let base_path = store.fetch(&base).await.unwrap();
    let base_bytes = std::fs::read(&base_path).unwrap();
    // Sets a cached file's last use `minutes` ago.
    let age = |path: &std::path::Path, minutes: u64| {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        let when = std::time::SystemTime::now() - std::time::Duration::from_secs(60 * minutes);
        file.set_modified(when).unwrap();
    };
    let mut manifests: Vec<eryx_preinit::Manifest> = Vec::new();
    for key in ["a", "b"] {
        let cwasm = variant_of(&base_bytes);
        let key = key.repeat(64);
        let manifest = eryx_preinit::Manifest::new(
            &key,
            &cwasm,
            &engine(),
            Default::default(),
            Default::default(),
        );
        if let Some(a) = manifests.first() {
            // "a" was last used 10 minutes ago, the base 5: "a" is the least
            // recently used, and neither within the last minute.
            age(&store.cache_path(a), 10);
            age(&store.cache_path(&base), 5);
        }
        store.publish(&manifest, cwasm).await.unwrap();
        manifests.push(manifest);
    }
    assert!(
        store.cache_path(&base).exists(),
        "the more recently used base stays"
    );
    assert!(store.cache_path(&manifests[1]).exists(), "the newest stays");
    assert!(
        !store.cache_path(&manifests[0]).exists(),
        "the least recently used goes"
    );
    // An evicted artifact comes back from the store, verified.
    let path = store.fetch(&manifests[0]).await.unwrap();
    assert_eq!(
        eryx::content_hash(&std::fs::read(path).unwrap()),
        manifests[0].blake3
    );
}
