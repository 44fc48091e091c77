//! # eryx gateway
//!
//! An HTTP server (hyper 1 on tokio) that deploys Python functions and runs
//! every invocation in a fresh, isolated WebAssembly instance of CPython,
//! made from a per-function snapshot in about a millisecond.
//!
//! Routes: `PUT/GET/DELETE /v1/functions/{name}`, `GET /v1/functions`,
//! `POST /v1/functions/{name}/invoke[?session=id]`, `POST/GET /v1/sessions`,
//! `GET/DELETE /v1/sessions/{id}`, `POST /v1/sessions/{id}/execute`,
//! `GET/PUT /v1/sessions/{id}/state`, `/healthz`, `/readyz`, `/metrics`
//! (Prometheus) and `/openapi.json`; see [`openapi_document`].
//!
//! Sessions keep their pickled Python state in the store (a local
//! directory, or S3 shared by every replica), restored into a fresh instance
//! for every request and written back with a conditional put: any replica
//! serves any session, and of two concurrent writes exactly one wins (the
//! other gets 409).
//!
//! ```no_run
//! # async fn demo() -> Result<(), eryx_gateway::Error> {
//! let gateway = eryx_gateway::Gateway::start(eryx_gateway::Config::new()).await?;
//! gateway.ready().await?;
//! println!("serving on http://{}", gateway.local_addr());
//! gateway.run_until_signal().await;
//! # Ok(()) }
//! ```

mod api;
mod bundle;
mod config;
mod error;
mod functions;
pub mod host_api;
mod limits;
mod metrics;
mod openapi;
mod server;
mod sessions;

pub use api::sessions::{
    ExecuteRequest, ExecuteResponse, PythonFailure, SessionCreated, SessionList,
};
pub use api::{INCLUDE_OUTPUT, REQUEST_ID};
pub use config::{Config, Limits};
pub use error::{ErrorBody, ErrorDetail};
pub use functions::{DeployRequest, DeployResponse, FunctionInfo, FunctionRecord};
pub use server::Gateway;
pub use sessions::{CreateSession, SessionInfo};

/// The OpenAPI 3.1 document of the gateway's HTTP API, as JSON.
pub fn openapi_document() -> String {
    openapi::document()
}

/// Why the gateway could not start or serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is unusable (e.g. a public address without tokens).
    #[error("configuration: {0}")]
    Config(String),
    /// Start-up (building or loading the base runtime) failed.
    #[error("start-up: {0}")]
    Startup(String),
    /// Binding or accepting failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
