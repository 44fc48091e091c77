//! The functions routes: deploy, list, show, delete and invoke (with
//! `?session=` through [`Sessions`](crate::sessions::Sessions)), and the
//! status codes of the registry's [`FunctionError`]s.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::{
    Caller, INCLUDE_OUTPUT, Reply, Scope, authorize, functions as registry, json_response,
    overloaded, query_flag, query_value, raw_json, read_body, sessions,
};
use crate::error::{ApiError, ErrorBody, ErrorCode, excerpt};
use crate::functions::{DeployRequest, DeployResponse, FunctionError, FunctionInfo, valid_name};
use crate::server::AppState;

/// Longest excerpt of a handler's stdout or stderr put in one log line.
const LOG_OUTPUT_BYTES: usize = 4 << 10;

/// `GET /v1/functions`.
#[derive(Debug, Serialize, ToSchema)]
pub struct FunctionList {
    /// Deployed functions, by name.
    pub functions: Vec<FunctionInfo>,
}

/// An invocation's answer when the caller asked for the output
/// (`?include_output=true` or `x-eryx-include-output: true`).
#[derive(Debug, Serialize, ToSchema)]
pub struct InvokeWithOutput {
    /// The handler's return value.
    #[schema(value_type = Object)]
    pub result: serde_json::Value,
    /// What the handler printed.
    pub stdout: String,
    /// What it wrote to stderr.
    pub stderr: String,
}

impl From<FunctionError> for ApiError {
    fn from(error: FunctionError) -> ApiError {
        match error {
            FunctionError::Invalid(message) => ApiError::bad_request(message),
            FunctionError::ImportFailed(error) => {
                let mut api = ApiError::from_eryx(error);
                api.code = ErrorCode::DeployFailed;
                api.message = format!("the module failed to import: {}", api.message);
                api
            }
            error @ FunctionError::ImportTimeout(_) => {
                ApiError::new(ErrorCode::DeployFailed, error.to_string())
            }
            error @ FunctionError::Busy => {
                ApiError::new(ErrorCode::Overloaded, error.to_string()).retry_after(5)
            }
            error @ FunctionError::Conflict(_) => {
                ApiError::new(ErrorCode::Conflict, error.to_string())
            }
            FunctionError::Integrity(message) => ApiError::new(ErrorCode::Integrity, message),
            FunctionError::Store(error) => error.into(),
            FunctionError::Pipeline(error) => error.into(),
            FunctionError::Run(error) => ApiError::from_eryx(error),
            FunctionError::Internal(message) => ApiError::internal(message),
        }
    }
}

pub(super) fn checked_name(name: &str) -> Result<(), ApiError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "function name {name:?} is invalid: use 1 to 63 of a-z, 0-9 and -"
        )))
    }
}

/// Lists deployed functions.
#[utoipa::path(get, path = "/v1/functions", tag = "functions", security(("bearer" = [])),
    responses((status = 200, description = "Deployed functions", body = FunctionList),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn list_functions(state: &AppState, request: &Request<Incoming>) -> Reply {
    authorize(state, request.headers(), Scope::Admin)?;
    let records = registry(state)?.list().await?;
    Ok(json_response(
        StatusCode::OK,
        &FunctionList {
            functions: records.iter().map(FunctionInfo::from).collect(),
        },
    ))
}

/// Shows one function.
#[utoipa::path(get, path = "/v1/functions/{name}", tag = "functions", security(("bearer" = [])),
    params(("name" = String, Path, description = "Function name, [a-z0-9-]{1,63}")),
    responses((status = 200, description = "The function", body = FunctionInfo),
              (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn get_function(
    state: &AppState,
    request: &Request<Incoming>,
    name: &str,
) -> Reply {
    authorize(state, request.headers(), Scope::Admin)?;
    checked_name(name)?;
    match registry(state)?.get(name).await? {
        Some(deployed) => Ok(json_response(StatusCode::OK, &deployed.info())),
        None => Err(ApiError::not_found(format!("no function named {name}"))),
    }
}

/// Deletes a function (its snapshot stays in the store, content-addressed).
#[utoipa::path(delete, path = "/v1/functions/{name}", tag = "functions", security(("bearer" = [])),
    params(("name" = String, Path, description = "Function name")),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody)))]
pub(super) async fn delete_function(
    state: &AppState,
    request: &Request<Incoming>,
    name: &str,
) -> Reply {
    authorize(state, request.headers(), Scope::Admin)?;
    checked_name(name)?;
    if registry(state)?.delete(name).await? {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        Ok(response)
    } else {
        Err(ApiError::not_found(format!("no function named {name}")))
    }
}

/// Deploys (or redeploys) a function: Python source as `text/x-python`, a
/// JSON [`DeployRequest`], or a zip bundle as `application/zip` (`main.py`,
/// more modules, pure-Python wheels, optional `eryx.json` settings). Imports the module and snapshots it (a module
/// that does not import leaves the previous version serving), then serves
/// the new version at once; its snapshot compiles in the background unless
/// `?wait=true`.
#[utoipa::path(put, path = "/v1/functions/{name}", tag = "functions", security(("bearer" = [])),
    params(("name" = String, Path, description = "Function name, [a-z0-9-]{1,63}"),
           ("wait" = Option<bool>, Query, description = "Answer only once the snapshot is compiled")),
    request_body(description = "The module's source, or a JSON deployment",
        content((String = "text/x-python"), (DeployRequest = "application/json"), (Vec<u8> = "application/zip"))),
    responses((status = 201, description = "Deployed", body = DeployResponse),
              (status = 400, description = "Invalid request, syntax error or import failure", body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn deploy_function(
    state: &Arc<AppState>,
    request: Request<Incoming>,
    name: String,
) -> Reply {
    authorize(state, request.headers(), Scope::Admin)?;
    checked_name(&name)?;
    registry(state)?;
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let is_json = content_type.starts_with("application/json");
    let is_zip = content_type.starts_with("application/zip");
    let wait = query_flag(&request, "wait");
    let body = read_body(state, request).await?;
    let mut bundle = None;
    let deploy: DeployRequest = if is_zip {
        // The bundle carries the source and settings; they are read from it
        // on the deploy's blocking thread.
        bundle = Some(body);
        DeployRequest::with_source(String::new())
    } else if is_json {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid deployment JSON: {e}")))?
    } else {
        let source = String::from_utf8(body.to_vec())
            .map_err(|_| ApiError::bad_request("the source is not UTF-8"))?;
        DeployRequest::with_source(source)
    };
    let start = Instant::now();
    // Building a snapshot is CPU-heavy for a second or more: it runs on a
    // blocking thread so the async workers keep serving requests.
    let state2 = state.clone();
    let runtime = tokio::runtime::Handle::current();
    let outcome = tokio::task::spawn_blocking(move || {
        runtime.block_on(async {
            let functions = state2.functions.get().expect("checked ready above");
            functions.deploy(&name, deploy, bundle, wait).await
        })
    })
    .await
    .map_err(|e| ApiError::internal(format!("deploy task: {e}")))?
    .map_err(ApiError::from);
    state
        .metrics
        .deploy_seconds
        .observe(start.elapsed().as_secs_f64());
    let label = match &outcome {
        Ok(_) => "ok",
        Err(error) => error.code.as_str(),
    };
    state.metrics.deploys.with_label_values(&[label]).inc();
    let deployed = outcome?;
    tracing::info!(
        function = deployed.function.name,
        version = deployed.function.version,
        cached = deployed.cached,
        timings = ?deployed.timings_ms,
        "deployed"
    );
    Ok(json_response(StatusCode::CREATED, &deployed))
}

/// Invokes a function: the JSON body is the event (empty body = `null`);
/// calls `handler(event, context)` in a fresh instance made from the
/// function's snapshot and answers with the return value as JSON. With
/// `?include_output=true` (or header `x-eryx-include-output: true`) the answer
/// is an object with `result`, `stdout` and `stderr`. With `?session=<id>`
/// the handler runs with that session's module globals restored, and the
/// globals it leaves are saved as the session's next version (its `ETag`);
/// a failed call saves nothing.
#[utoipa::path(post, path = "/v1/functions/{name}/invoke", tag = "functions", security(("bearer" = [])),
    params(("name" = String, Path, description = "Function name"),
           ("include_output" = Option<bool>, Query, description = "Also return stdout and stderr"),
           ("session" = Option<String>, Query, description = "Run with this session's state (a session created with this function)")),
    request_body(description = "The event, any JSON value", content((Object = "application/json"))),
    responses((status = 200, description = "The handler's return value (or InvokeWithOutput)", body = Object),
              (status = 400, description = "The body is not JSON", body = ErrorBody),
              (status = 404, description = "No such function or session", body = ErrorBody),
              (status = 409, description = "The session changed while the handler ran; nothing was saved", body = ErrorBody),
              (status = 413, description = "Body too large, or the session's new state over its limit", body = ErrorBody),
              (status = 429, description = "The function's queue is full (Retry-After)", body = ErrorBody),
              (status = 500, description = "The handler raised, or hit its memory limit", body = ErrorBody),
              (status = 503, description = "The gateway is full or not ready (Retry-After)", body = ErrorBody),
              (status = 504, description = "The handler ran past its timeout", body = ErrorBody)))]
pub(super) async fn invoke_function(
    state: &AppState,
    request: Request<Incoming>,
    name: String,
    request_id: &str,
) -> Reply {
    let caller = authorize(state, request.headers(), Scope::Invoke)?;
    checked_name(&name)?;
    let include_output = request
        .headers()
        .get(INCLUDE_OUTPUT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "true" || v == "1")
        || query_flag(&request, "include_output");
    // Tracebacks and output may carry what the function keeps from its
    // callers (its environment, data in module state): only callers who ask
    // for them and may see them get them.
    if include_output && caller == Caller::Invoker && !state.config.invoke_tokens_see_details {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "this token may not see handler output or tracebacks",
        ));
    }
    let session = query_value(&request, "session").map(str::to_owned);
    let owner = session
        .as_ref()
        .map(|_| sessions::owner(state, &request, caller))
        .transpose()?;
    let deployed = registry(state)?
        .get(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no function named {name}")))?;
    let body = read_body(state, request).await?;
    let event_json = if body.iter().all(u8::is_ascii_whitespace) {
        "null".to_owned()
    } else {
        serde_json::from_slice::<serde::de::IgnoredAny>(&body)
            .map_err(|e| ApiError::bad_request(format!("the event is not valid JSON: {e}")))?;
        // Valid JSON is UTF-8.
        String::from_utf8(body.to_vec())
            .map_err(|_| ApiError::bad_request("the event is not UTF-8"))?
    };
    let limits = &state.config.limits;
    let context = eryx::HandlerContext {
        request_id: request_id.to_owned(),
        function_name: name.clone(),
        function_version: deployed.record.version,
    };
    let (outcome, session_version) = match (session, owner) {
        (Some(id), Some(owner)) => {
            // The session's own lock and slots, in that order (see `Sessions`).
            let sessions = sessions::sessions(state)?;
            let invoked = sessions.invoke(&owner, &id, &name, &event_json, &context);
            match timed(state, &name, invoked).await {
                Ok((output, head)) => (Ok(output), Some(head.version())),
                Err(error) => (Err(sessions::api_error(error)), None),
            }
        }
        _ => {
            let _function_slot = deployed
                .slots
                .acquire(limits.queue_timeout)
                .await
                .map_err(|rejected| overloaded(rejected, ErrorCode::TooManyRequests, &name))?;
            let _slot = state
                .slots
                .acquire(limits.queue_timeout)
                .await
                .map_err(|rejected| overloaded(rejected, ErrorCode::Overloaded, "the gateway"))?;
            let outcome = timed(state, &name, deployed.call(&event_json, &context)).await;
            (outcome.map_err(ApiError::from_eryx), None)
        }
    };
    match outcome {
        Ok(output) => {
            let mut response = invoke_response(
                state,
                request_id,
                &name,
                output,
                include_output,
                deployed.record.version,
            )?;
            if let Some(version) = session_version {
                sessions::set_etag(&mut response, version);
            }
            Ok(response)
        }
        Err(api) => Err(invoke_failed(state, request_id, &name, api, include_output)),
    }
}

/// Awaits an invocation of function `name`, counted in flight and timed.
async fn timed<T>(state: &AppState, name: &str, invocation: impl Future<Output = T>) -> T {
    let metrics = &state.metrics;
    metrics.in_flight.inc();
    let start = Instant::now();
    let outcome = invocation.await;
    metrics.in_flight.dec();
    metrics
        .invocation_seconds
        .with_label_values(&[name])
        .observe(start.elapsed().as_secs_f64());
    outcome
}

/// The answer to a successful invocation: the handler's JSON, or with
/// `include_output` an [`InvokeWithOutput`]; counted in the metrics.
fn invoke_response(
    state: &AppState,
    request_id: &str,
    name: &str,
    output: eryx::HandlerOutput,
    include_output: bool,
    version: u64,
) -> Reply {
    let metrics = &state.metrics;
    metrics
        .instance_create_seconds
        .observe(output.instantiate_time.as_secs_f64());
    metrics.invocations.with_label_values(&[name, "ok"]).inc();
    log_output(request_id, name, &output.stdout, &output.stderr);
    let mut response = if include_output {
        let result = serde_json::from_str(&output.result_json)
            .map_err(|e| ApiError::internal(format!("handler result: {e}")))?;
        json_response(
            StatusCode::OK,
            &InvokeWithOutput {
                result,
                stdout: output.stdout,
                stderr: output.stderr,
            },
        )
    } else {
        raw_json(StatusCode::OK, output.result_json.into_bytes())
    };
    let headers = response.headers_mut();
    headers.insert("x-eryx-function-version", HeaderValue::from(version));
    if let Ok(timing) = HeaderValue::from_str(&format!(
        "instantiate;dur={:.3}, handler;dur={:.3}",
        output.instantiate_time.as_secs_f64() * 1000.0,
        output.duration.as_secs_f64() * 1000.0
    )) {
        headers.insert("server-timing", timing);
    }
    Ok(response)
}

/// A failed invocation: counted, logged, and stripped of its details
/// unless the caller asked for them (and may see them).
fn invoke_failed(
    state: &AppState,
    request_id: &str,
    name: &str,
    api: ApiError,
    include_output: bool,
) -> ApiError {
    state
        .metrics
        .invocations
        .with_label_values(&[name, api.code.as_str()])
        .inc();
    if let Some(python) = &api.python {
        log_output(request_id, name, &python.stdout, &python.stderr);
    }
    tracing::warn!(
        request_id,
        function = name,
        code = api.code.as_str(),
        "invocation failed: {}",
        api.message
    );
    if include_output {
        api
    } else {
        api.without_details()
    }
}

/// Sends an excerpt of the handler's output (the first 4 KiB of each
/// stream) to the log, tagged with the request id.
fn log_output(request_id: &str, function: &str, stdout: &str, stderr: &str) {
    if !stdout.is_empty() || !stderr.is_empty() {
        let stdout = excerpt(stdout, LOG_OUTPUT_BYTES);
        let stderr = excerpt(stderr, LOG_OUTPUT_BYTES);
        tracing::info!(request_id, function, stdout, stderr, "handler output");
    }
}
