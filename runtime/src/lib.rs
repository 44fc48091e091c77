//! # eryx: Python in isolated WebAssembly instances
//!
//! eryx runs CPython 3.14 inside a WebAssembly component on
//! [wasmtime](https://wasmtime.dev). The types follow wasmtime's split of work
//! by lifetime:
//!
//! - [`Engine`] — once per process: wasmtime with eryx's configuration and
//!   its pool of instance slots; it also pre-initializes and precompiles.
//! - [`Runtime`] — once per component: the compiled component and its
//!   pre-linked instance template (`InstancePre`).
//! - [`Sandbox`] — per tenant/configuration, cheap: settings such as the
//!   output limit.
//! - [`Session`] — per instance: one fresh `Store` and instance, for one
//!   [`Sandbox::execute`] or several calls that share Python globals.
//!
//! State can also outlive instances: [`Sandbox::execute_with_state`] and
//! [`Sandbox::call_handler_with_state`] restore a pickled state into a fresh
//! instance, run one call and return the state it leaves ([`WithState`]),
//! so a session's variables can live in storage between requests.
//!
//! The component is linked, pre-initialized and precompiled by [`base`] from
//! what this crate embeds (CPython for WASI and the guest, which implements
//! the WIT world in `wit/sandbox.wit`); the `eryx-preinit` crate publishes the
//! result to a shared, signed artifact store for gateway replicas.
//!
//! With no configuration, a sandbox runs on the process-wide default
//! runtime ([`Runtime::shared`]), built once per data directory from what
//! this crate embeds; Python awaits host [callbacks](Callback) by name:
//!
//! ```no_run
//! # async fn demo() -> Result<(), eryx::Error> {
//! #[derive(serde::Deserialize, schemars::JsonSchema)]
//! struct Echo { message: String }
//!
//! let sandbox = eryx::Sandbox::builder()
//!     .with_callback(eryx::TypedCallback::new("echo", "Returns its message.", |a: Echo| async move {
//!         Ok::<_, eryx::CallbackError>(a.message)
//!     }))
//!     .build()?;
//! let result = sandbox.execute("await echo(message='hi')").await?;
//! assert_eq!(result.result.as_deref(), Some("'hi'"));
//! # Ok(()) }
//! ```
//!
//! Also: [tracing and streamed output](TraceHandler), [`ResourceLimits`],
//! [`RuntimeLibrary`] (Python modules over callbacks), pure-Python wheels
//! ([`SandboxBuilder::with_package`], [`SandboxBuilder::with_preload`]), and
//! explicit artifacts ([`base`], [`RuntimeBuilder`]).

pub mod base;
mod bindings;
mod callback;
mod compile_cache;
mod engine;
mod error;
mod function;
mod library;
mod memfs;
mod net;
mod output;
mod runtime;
mod sandbox;
mod session;
mod signing;
mod stateful;
mod trace;
mod untrusted;

pub use bindings::check_env;
pub use callback::{
    Callback, CallbackError, CallbackErrorKind, CallbackFuture, DynamicCallback, TypedCallback,
};
pub use engine::{Engine, EngineOptions, WASMTIME_VERSION};
pub use error::{Error, PythonError, Result, TrapError, TrapKind};
pub use function::{FunctionBuilder, FunctionSnapshot, FunctionSource};
pub use library::{RuntimeLibrary, is_native, wheel_files};
pub use memfs::{FsLimits, TMP_DIR, WORK_DIR};
pub use net::NetworkPolicy;
pub use runtime::{Runtime, RuntimeBuilder, content_hash};
pub use sandbox::{
    DEFAULT_OUTPUT_LIMIT_BYTES, DEFAULT_RESULT_LIMIT_BYTES, DEFAULT_STATE_LIMIT_BYTES,
    ExecuteResult, HandlerContext, HandlerOutput, ResourceLimits, Sandbox, SandboxBuilder,
};
pub use session::{Session, StateSnapshot};
pub use signing::SigningKey;
pub use stateful::WithState;
pub use trace::{OutputHandler, OutputStream, TraceEvent, TraceHandler, TraceKind};
