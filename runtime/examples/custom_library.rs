//! A runtime library: host callbacks plus the Python module that wraps them
//! (here a `kv` store kept on the host) and its `.pyi` stub.
//!
//! `cargo run -p eryx --example custom_library`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use eryx::{CallbackError, RuntimeLibrary, TypedCallback};

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Get {
    key: String,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Put {
    key: String,
    value: serde_json::Value,
}

const KV: &str = r#""""A key-value store kept by the host."""
import eryx

async def get(key, default=None):
    value = await eryx.kv_get(key=key)
    return default if value is None else value

async def put(key, value):
    await eryx.kv_put(key=key, value=value)
"#;

const KV_STUB: &str = "async def get(key: str, default: object = None) -> object: ...\n\
async def put(key: str, value: object) -> None: ...\n";

#[tokio::main]
async fn main() -> Result<(), eryx::Error> {
    let map: Arc<Mutex<HashMap<String, serde_json::Value>>> = Arc::default();
    let (reads, writes) = (map.clone(), map.clone());
    let library = RuntimeLibrary::new("kv")
        .with_callback(TypedCallback::new(
            "kv_get",
            "Reads a key.",
            move |a: Get| {
                let value = reads.lock().unwrap().get(&a.key).cloned();
                async move { Ok::<_, CallbackError>(value) }
            },
        ))
        .with_callback(TypedCallback::new(
            "kv_put",
            "Writes a key.",
            move |a: Put| {
                writes.lock().unwrap().insert(a.key, a.value);
                async move { Ok::<_, CallbackError>(()) }
            },
        ))
        .with_module("kv", KV)
        .with_stub("kv", KV_STUB);
    for (module, stub) in library.stubs() {
        println!("stub of {module}:\n{stub}");
    }
    let sandbox = eryx::Sandbox::builder().with_library(library).build()?;
    sandbox
        .execute("import kv\nawait kv.put('visits', await kv.get('visits', 0) + 1)")
        .await?;
    sandbox
        .execute("import kv\nawait kv.put('visits', await kv.get('visits', 0) + 1)")
        .await?;
    println!(
        "visits on the host: {:?}",
        map.lock().unwrap().get("visits")
    );
    assert_eq!(
        map.lock().unwrap().get("visits"),
        Some(&serde_json::json!(2))
    );
    Ok(())
}
