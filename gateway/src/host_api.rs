//! The host API of deployed functions: the Python modules `log` and `kv`
//! over host callbacks, in every instance of a function (invocations and
//! the function's sessions). Nothing else of the host is reachable: no file
//! system, no network.
//!
//! - `log`: `await log.info("message", **fields)` (also `debug`, `warning`,
//!   `error`) writes one structured event to the gateway's log (target
//!   `eryx::function`, with the function's name, and the request id of the
//!   request's span).
//! - `kv`: `await kv.get(key, default=None)`, `await kv.put(key, value)`,
//!   `await kv.delete(key)`: a key-value store per function name in the
//!   artifact store (`kv/<function>/<blake3 of the key>.json`, signed like
//!   every other document), shared by every replica and version. Values are
//!   JSON; a key is at most [`KV_MAX_KEY_BYTES`], a value (as JSON) at most
//!   [`KV_MAX_VALUE_BYTES`]. A `put` returns once the store has the value.
//!
//! An invocation may make [`MAX_CALLBACKS_PER_CALL`] such calls, each within
//! [`CALLBACK_TIMEOUT`]. Code run in a function's session by `execute` gets
//! no host API: it is the operator's, not the handler's.

use eryx::{CallbackError, RuntimeLibrary, TypedCallback};
use serde::{Deserialize, Serialize};

/// Most host-API calls (`log`, `kv`) one invocation may make.
pub const MAX_CALLBACKS_PER_CALL: u32 = 1_000;
/// Longest one host-API call may take (a slow store) before Python gets
/// `eryx.CallbackTimeout`.
pub const CALLBACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Largest `kv` key, in bytes of UTF-8.
pub const KV_MAX_KEY_BYTES: usize = 256;
/// Largest `kv` value, in bytes of its JSON.
pub const KV_MAX_VALUE_BYTES: usize = 64 << 10;
/// Largest `log` message or set of fields (as JSON), in bytes; longer ones
/// are cut.
const LOG_MAX_BYTES: usize = 8 << 10;

const LOG_MODULE: &str = r#""""Structured logging to the eryx gateway's log (with the request id)."""
import eryx


async def _write(level, message, fields):
    await eryx.log_write(level=level, message=str(message), fields=fields)


async def debug(message, **fields):
    await _write("debug", message, fields)


async def info(message, **fields):
    await _write("info", message, fields)


async def warning(message, **fields):
    await _write("warning", message, fields)


async def error(message, **fields):
    await _write("error", message, fields)
"#;

const LOG_STUB: &str = "async def debug(message: object, **fields: object) -> None: ...\n\
async def info(message: object, **fields: object) -> None: ...\n\
async def warning(message: object, **fields: object) -> None: ...\n\
async def error(message: object, **fields: object) -> None: ...\n";

const KV_MODULE: &str = r#""""A key-value store of this function, kept by the eryx gateway."""
import eryx


async def get(key, default=None):
    """The value stored under `key`, or `default`."""
    found = await eryx.kv_get(key=key)
    return found["value"] if found["found"] else default


async def put(key, value):
    """Stores `value` (JSON) under `key`; returns once it is stored."""
    await eryx.kv_put(key=key, value=value)


async def delete(key):
    """Removes `key` (nothing happens if it is absent)."""
    await eryx.kv_delete(key=key)
"#;

const KV_STUB: &str = "async def get(key: str, default: object = None) -> object: ...\n\
async def put(key: str, value: object) -> None: ...\n\
async def delete(key: str) -> None: ...\n";

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Level {
    Debug,
    Info,
    Warning,
    Error,
}

#[derive(Deserialize, schemars::JsonSchema)]
struct LogArgs {
    level: Level,
    message: String,
    #[serde(default)]
    fields: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize, schemars::JsonSchema)]
struct KeyArgs {
    key: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
struct PutArgs {
    key: String,
    value: serde_json::Value,
}

/// What `kv` stores per key: the function and key it belongs to (checked on
/// read, so an entry copied to another path is not taken for that one's)
/// and the value.
#[derive(Serialize, Deserialize)]
struct Entry {
    function: String,
    key: String,
    value: serde_json::Value,
}

/// The store path of `key` in `function`'s namespace.
fn kv_path(function: &str, key: &str) -> Result<String, CallbackError> {
    if key.is_empty() || key.len() > KV_MAX_KEY_BYTES {
        return Err(CallbackError::invalid_arguments(format!(
            "a kv key must have 1 to {KV_MAX_KEY_BYTES} bytes"
        )));
    }
    Ok(format!(
        "kv/{function}/{}.json",
        blake3::hash(key.as_bytes()).to_hex()
    ))
}

fn store_error(error: eryx_store::Error) -> CallbackError {
    CallbackError::new(format!("kv: {error}"))
}

fn cut(mut text: String) -> String {
    if text.len() > LOG_MAX_BYTES {
        let mut end = LOG_MAX_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// The `log` and `kv` library of function `function`, over `objects` (the
/// artifact store).
pub(crate) fn library(objects: &eryx_store::Store, function: &str) -> RuntimeLibrary {
    let name = function.to_owned();
    let log = TypedCallback::new(
        "log_write",
        "Writes a structured event to the gateway's log.",
        move |args: LogArgs| {
            let (message, fields) = (
                cut(args.message),
                cut(serde_json::Value::Object(args.fields).to_string()),
            );
            let function = name.as_str();
            match args.level {
                Level::Debug => {
                    tracing::debug!(target: "eryx::function", function, fields, "{message}")
                }
                Level::Info => {
                    tracing::info!(target: "eryx::function", function, fields, "{message}")
                }
                Level::Warning => {
                    tracing::warn!(target: "eryx::function", function, fields, "{message}")
                }
                Level::Error => {
                    tracing::error!(target: "eryx::function", function, fields, "{message}")
                }
            }
            async { Ok::<_, CallbackError>(()) }
        },
    );
    let (store, name) = (objects.clone(), function.to_owned());
    let get = TypedCallback::new(
        "kv_get",
        "Reads a key of this function's key-value store: {found, value}.",
        move |args: KeyArgs| {
            let (store, path, function) = (store.clone(), kv_path(&name, &args.key), name.clone());
            async move {
                let entry: Option<Entry> = store.get_signed(&path?).await.map_err(store_error)?;
                Ok::<_, CallbackError>(match entry {
                    Some(entry) if entry.key == args.key && entry.function == function => {
                        serde_json::json!({"found": true, "value": entry.value})
                    }
                    _ => serde_json::json!({"found": false, "value": null}),
                })
            }
        },
    );
    let (store, name) = (objects.clone(), function.to_owned());
    let put = TypedCallback::new(
        "kv_put",
        "Stores a JSON value under a key of this function's key-value store.",
        move |args: PutArgs| {
            let (store, path, function) = (store.clone(), kv_path(&name, &args.key), name.clone());
            async move {
                let path = path?;
                let size = args.value.to_string().len();
                if size > KV_MAX_VALUE_BYTES {
                    return Err(CallbackError::invalid_arguments(format!(
                        "a kv value is {size} bytes as JSON, over the limit of {KV_MAX_VALUE_BYTES}"
                    )));
                }
                let entry = Entry {
                    function,
                    key: args.key,
                    value: args.value,
                };
                store.put_signed(&path, &entry).await.map_err(store_error)?;
                Ok(())
            }
        },
    );
    let (store, name) = (objects.clone(), function.to_owned());
    let delete = TypedCallback::new(
        "kv_delete",
        "Removes a key of this function's key-value store.",
        move |args: KeyArgs| {
            let (store, path) = (store.clone(), kv_path(&name, &args.key));
            async move {
                store.delete(&path?).await.map_err(store_error)?;
                Ok::<_, CallbackError>(())
            }
        },
    );
    RuntimeLibrary::new("eryx-gateway")
        .with_callback(log)
        .with_callback(get)
        .with_callback(put)
        .with_callback(delete)
        .with_module("log", LOG_MODULE)
        .with_stub("log", LOG_STUB)
        .with_module("kv", KV_MODULE)
        .with_stub("kv", KV_STUB)
}
