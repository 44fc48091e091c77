//! Python a host ships: runtime libraries (callbacks plus wrapper modules
//! and stubs) and real pure-Python wheels from PyPI.

use eryx::{CallbackError, Error, RuntimeLibrary, TypedCallback};
use eryx_tests::{ATTRS_WHEEL, NATIVE_WHEEL, fetch_wheel, runtime};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Get {
    key: String,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Put {
    key: String,
    value: serde_json::Value,
}

/// A `kv` module over two host callbacks, backed by a map on the host.
fn kv_library(map: Arc<Mutex<HashMap<String, serde_json::Value>>>) -> RuntimeLibrary {
    let reads = map.clone();
    RuntimeLibrary::new("kv")
        .with_callback(TypedCallback::new("kv_get", "Reads a key.", move |args: Get| {
            let value = reads.lock().unwrap().get(&args.key).cloned();
            async move { Ok::<_, CallbackError>(value) }
        }))
        .with_callback(TypedCallback::new("kv_put", "Writes a key.", move |args: Put| {
            map.lock().unwrap().insert(args.key, args.value);
            async move { Ok::<_, CallbackError>(()) }
        }))
        .with_module(
            "kv",
            "\"\"\"A key-value store on the host.\"\"\"\nimport eryx\n\n\
             async def get(key, default=None):\n    value = await eryx.kv_get(key=key)\n    return default if value is None else value\n\n\
             async def put(key, value):\n    await eryx.kv_put(key=key, value=value)\n",
        )
        .with_stub(
            "kv",
            "async def get(key: str, default: object = None) -> object: ...\nasync def put(key: str, value: object) -> None: ...\n",
        )
}

#[tokio::test]
async fn runtime_library_module_wraps_host_callbacks() {
    let map = Arc::new(Mutex::new(HashMap::new()));
    let sandbox = eryx::Sandbox::builder()
        .with_runtime(runtime())
        .with_library(kv_library(map.clone()))
        .build()
        .unwrap();
    let result = sandbox
        .execute("import kv\nawait kv.put('answer', 42)\nawait kv.get('answer'), await kv.get('missing', 'none'), kv.__file__")
        .await
        .unwrap();
    assert_eq!(
        result.result.as_deref(),
        Some("(42, 'none', '/eryx/path/0/kv.py')")
    );
    assert_eq!(
        map.lock().unwrap().get("answer"),
        Some(&serde_json::json!(42))
    );
    // The stub is shipped beside the module, and the directory is read-only.
    let result = sandbox
        .execute("import os\nprint(sorted(os.listdir('/eryx/path/0')))\ntry:\n    open('/eryx/path/0/kv.py', 'w')\nexcept OSError as e:\n    print(type(e).__name__)")
        .await
        .unwrap();
    assert_eq!(result.stdout, "['kv.py', 'kv.pyi']\nPermissionError\n");
}

#[tokio::test]
async fn a_real_pure_python_wheel_imports_and_works() {
    let sandbox = eryx::Sandbox::builder()
        .with_runtime(runtime())
        .with_package(fetch_wheel(ATTRS_WHEEL))
        .build()
        .unwrap();
    let code = "import attrs\n@attrs.define\nclass Point:\n    x: int\n    y: int = 0\nrepr(Point(1)), attrs.asdict(Point(2, 3)), attrs.__version__";
    let result = sandbox.execute(code).await.unwrap();
    assert_eq!(
        result.result.as_deref(),
        Some("('Point(x=1, y=0)', {'x': 2, 'y': 3}, '25.3.0')")
    );
}

#[tokio::test]
async fn a_wheel_with_native_code_is_refused() {
    let error = eryx::Sandbox::builder()
        .with_runtime(runtime())
        .with_package(fetch_wheel(NATIVE_WHEEL))
        .build()
        .unwrap_err();
    let Error::Config(message) = error else {
        panic!("expected a configuration error, got {error:?}")
    };
    assert!(message.contains("native code"), "{message}");
}

#[tokio::test]
async fn a_file_that_is_not_a_wheel_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake-1.0-py3-none-any.whl");
    std::fs::write(&path, b"not a zip").unwrap();
    let error = eryx::Sandbox::builder()
        .with_runtime(runtime())
        .with_package(&path)
        .build()
        .unwrap_err();
    assert!(
        matches!(error, Error::Config(ref m) if m.contains("not a wheel")),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_wheel_preloaded_into_a_snapshot_is_imported_before_the_code_runs() {
    let builder = || {
        eryx::Sandbox::builder()
            .with_package(fetch_wheel(ATTRS_WHEEL))
            .with_preload(["attrs"])
    };
    let sandbox = builder().build().unwrap();
    // The module is in sys.modules before the code imports it.
    let code = "import sys\nloaded = 'attrs' in sys.modules\nimport attrs\n@attrs.frozen\nclass P:\n    x: int\nloaded, P(5).x";
    let result = sandbox.execute(code).await.unwrap();
    assert_eq!(result.result.as_deref(), Some("(True, 5)"));
    // A second build in the process reuses the snapshot: no new build.
    let start = std::time::Instant::now();
    let again = builder().build().unwrap();
    assert!(start.elapsed() < std::time::Duration::from_millis(500));
    assert_eq!(
        again
            .execute("'attrs' in __import__('sys').modules")
            .await
            .unwrap()
            .result
            .as_deref(),
        Some("True")
    );
}
