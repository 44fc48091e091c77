//! The HTTP API: routing (`matchit`), authorization, body limits, and the
//! handlers of every route (each documented for the OpenAPI document with
//! `utoipa`). The domain (functions, sessions) knows nothing of HTTP: its
//! typed errors become status codes here.

pub(crate) mod sessions;

use std::sync::{Arc, LazyLock};
use std::time::Instant;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::Serialize;
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody, ErrorCode, excerpt};
use crate::functions::{DeployRequest, DeployResponse, FunctionError, FunctionInfo, valid_name};
use crate::limits::Rejected;
use crate::server::AppState;

/// Header carrying the request id (taken from the request when sane).
pub const REQUEST_ID: &str = "x-request-id";
/// Request header asking an invocation to return the handler's output too.
pub const INCLUDE_OUTPUT: &str = "x-eryx-include-output";

/// `/healthz` and `/readyz` answers. Why start-up failed goes to the log
/// only: paths, bucket names and build output are not for anyone who asks.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, `starting` or `failed`.
    pub status: String,
}

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

/// Which token scope a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Deploy, list, get, delete.
    Admin,
    /// Invoke (admin tokens may invoke too).
    Invoke,
}

type Reply = Result<Response<Full<Bytes>>, ApiError>;

/// Answers one request; never fails (errors become JSON error responses).
pub(crate) async fn handle(
    state: Arc<AppState>,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let start = Instant::now();
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let (route, reply) = match allowed_host(&state, request.headers()) {
        Ok(()) => route(&state, request, &request_id).await,
        Err(error) => ("other", Err(error)),
    };
    let mut response = reply.unwrap_or_else(|error| error_response(&error, &request_id));
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let status = response.status();
    state
        .metrics
        .http_requests
        .with_label_values(&[method.as_str(), route, status.as_str()])
        .inc();
    tracing::info!(
        request_id,
        method = %method,
        path,
        status = status.as_u16(),
        elapsed_us = start.elapsed().as_micros() as u64,
        "request"
    );
    response
}

/// Every route: its path template is also its metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
    Functions,
    Function,
    Invoke,
    Sessions,
    Session,
    SessionExecute,
    SessionState,
}

impl Route {
    const ALL: [Route; 11] = [
        Route::Healthz,
        Route::Readyz,
        Route::Metrics,
        Route::OpenApi,
        Route::Functions,
        Route::Function,
        Route::Invoke,
        Route::Sessions,
        Route::Session,
        Route::SessionExecute,
        Route::SessionState,
    ];

    /// The path template, in `matchit`'s syntax (as in the OpenAPI document).
    fn template(self) -> &'static str {
        match self {
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::OpenApi => "/openapi.json",
            Route::Functions => "/v1/functions",
            Route::Function => "/v1/functions/{name}",
            Route::Invoke => "/v1/functions/{name}/invoke",
            Route::Sessions => "/v1/sessions",
            Route::Session => "/v1/sessions/{id}",
            Route::SessionExecute => "/v1/sessions/{id}/execute",
            Route::SessionState => "/v1/sessions/{id}/state",
        }
    }

    /// The methods it takes, for a 405's message.
    fn allowed(self) -> &'static str {
        match self {
            Route::Healthz | Route::Readyz | Route::Metrics | Route::OpenApi | Route::Functions => {
                "GET"
            }
            Route::Function => "GET, PUT, DELETE",
            Route::Invoke | Route::SessionExecute => "POST",
            Route::Sessions => "GET, POST",
            Route::Session => "GET, DELETE",
            Route::SessionState => "GET, PUT",
        }
    }
}

/// The routes by path.
static ROUTER: LazyLock<matchit::Router<Route>> = LazyLock::new(|| {
    let mut router = matchit::Router::new();
    for route in Route::ALL {
        router
            .insert(route.template(), route)
            .expect("route templates are distinct");
    }
    router
});

/// Dispatches to the handler of the route; returns the route's template (for
/// metrics) and the reply.
async fn route(
    state: &Arc<AppState>,
    request: Request<Incoming>,
    request_id: &str,
) -> (&'static str, Reply) {
    let path = request.uri().path().to_owned();
    let Ok(matched) = ROUTER.at(&path) else {
        return (
            "other",
            Err(ApiError::not_found(format!(
                "no route for {}",
                excerpt(&path, 256)
            ))),
        );
    };
    let route = *matched.value;
    let param = |name: &str| matched.params.get(name).unwrap_or_default().to_owned();
    let method = request.method().clone();
    let reply = match (route, method) {
        (Route::Healthz, Method::GET) => healthz(),
        (Route::Readyz, Method::GET) => readyz(state),
        (Route::Metrics, Method::GET) => metrics(state),
        (Route::OpenApi, Method::GET) => openapi(),
        (Route::Functions, Method::GET) => list_functions(state, &request).await,
        (Route::Function, Method::PUT) => deploy_function(state, request, param("name")).await,
        (Route::Function, Method::GET) => get_function(state, &request, &param("name")).await,
        (Route::Function, Method::DELETE) => delete_function(state, &request, &param("name")).await,
        (Route::Invoke, Method::POST) => {
            invoke_function(state, request, param("name"), request_id).await
        }
        (Route::Sessions, Method::POST) => sessions::create_session(state, request).await,
        (Route::Sessions, Method::GET) => sessions::list_sessions(state, &request).await,
        (Route::Session, Method::GET) => sessions::get_session(state, &request, &param("id")).await,
        (Route::Session, Method::DELETE) => {
            sessions::delete_session(state, &request, &param("id")).await
        }
        (Route::SessionExecute, Method::POST) => {
            sessions::execute(state, request, &param("id")).await
        }
        (Route::SessionState, Method::GET) => {
            sessions::get_state(state, &request, &param("id")).await
        }
        (Route::SessionState, Method::PUT) => {
            sessions::put_state(state, request, &param("id")).await
        }
        (route, _) => Err(method_not_allowed(route.allowed())),
    };
    (route.template(), reply)
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

fn method_not_allowed(allowed: &'static str) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("allowed methods: {allowed}"),
    )
}

/// Without tokens the gateway trusts whoever reaches its loopback address;
/// a web page can reach it too, through a name that its attacker points at
/// 127.0.0.1 (DNS rebinding). Such requests carry the attacker's name in
/// `Host`, so only the configured host names (by default `localhost` and
/// loopback addresses) are served then. With tokens, a browser cannot
/// supply one, so every `Host` is served.
fn allowed_host(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if state.config.auth_enabled() {
        return Ok(());
    }
    let host = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Strip a port: `name:port`, `[v6]:port`.
    let name = match host.rsplit_once(':') {
        Some((name, port))
            if !name.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && !name.ends_with(':') =>
        {
            name
        }
        _ => host,
    };
    if state
        .config
        .allowed_hosts
        .iter()
        .any(|allowed| allowed.eq_ignore_ascii_case(name))
    {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::HostNotAllowed,
            format!(
                "Host {:?} is not served without tokens (allowed: {})",
                excerpt(host, 256),
                state.config.allowed_hosts.join(", ")
            ),
        ))
    }
}

fn json_response(status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).expect("serializable");
    raw_json(status, body)
}

fn raw_json(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error_response(error: &ApiError, request_id: &str) -> Response<Full<Bytes>> {
    let mut response = json_response(error.status(), &error.body(request_id));
    if let Some(seconds) = error.retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    if let Some(version) = error.current_version {
        sessions::set_etag(&mut response, version);
    }
    if error.code == ErrorCode::Unauthorized {
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// Who is calling, as far as authorization goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// An admin token, or any caller when no token is configured.
    Admin,
    /// An invoke-only token.
    Invoker,
}

/// Checks the request's bearer token against the configured tokens: no
/// tokens configured allows everything (the gateway then listens on loopback
/// only, for the allowed `Host` names); a missing or unknown token is 401,
/// an invoke token on an admin route is 403 (RFC 6750 `insufficient_scope`).
/// The scheme name is case-insensitive (RFC 7235); tokens are compared as
/// SHA-256 digests in constant time, so neither their bytes nor their
/// lengths show in the timing.
fn authorize(state: &AppState, headers: &HeaderMap, scope: Scope) -> Result<Caller, ApiError> {
    if !state.config.auth_enabled() {
        return Ok(Caller::Admin);
    }
    let Some(token) = bearer_token(headers) else {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "this gateway requires an `Authorization: Bearer <token>` header",
        ));
    };
    let presented = token_digest(token);
    let matches = |tokens: &[String]| {
        // Every configured token is compared, so the timing does not say
        // which one (or whether any) matched.
        tokens.iter().fold(subtle::Choice::from(0), |found, t| {
            found | token_digest(t).ct_eq(&presented)
        })
    };
    if bool::from(matches(&state.config.admin_tokens)) {
        return Ok(Caller::Admin);
    }
    if bool::from(matches(&state.config.invoke_tokens)) {
        return if scope == Scope::Invoke {
            Ok(Caller::Invoker)
        } else {
            Err(ApiError::new(
                ErrorCode::Forbidden,
                "this token may only invoke functions",
            ))
        };
    }
    Err(ApiError::new(ErrorCode::Unauthorized, "unknown token"))
}

/// The bearer token of the `Authorization` header, if any (the scheme is
/// case-insensitive, RFC 7235).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

/// A token's SHA-256 digest: a fixed length to compare in constant time.
fn token_digest(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// Reads the body up to the configured limit (413 past it).
async fn read_body(state: &AppState, request: Request<Incoming>) -> Result<Bytes, ApiError> {
    read_body_limited(state, request, state.config.limits.max_body_bytes).await
}

/// Reads the body up to `limit` bytes (413 past it), within the body-read
/// timeout (408 past it).
async fn read_body_limited(
    state: &AppState,
    request: Request<Incoming>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the request body is larger than {limit} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    // A client that trickles its body must not hold a connection (and, for
    // invocations, a slot) for ever.
    let timeout = state.config.limits.body_read_timeout;
    let collected =
        tokio::time::timeout(timeout, Limited::new(request.into_body(), limit).collect())
            .await
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::RequestTimeout,
                    format!(
                        "the request body did not arrive within {} s",
                        timeout.as_secs()
                    ),
                )
            })?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(error) => Err(ApiError::bad_request(format!(
            "reading the request body: {error}"
        ))),
    }
}

fn functions(state: &AppState) -> Result<&Arc<crate::functions::Functions>, ApiError> {
    match state.functions.get() {
        Some(functions) => Ok(functions),
        None => Err(ApiError::new(ErrorCode::NotReady, state.startup_detail()).retry_after(1)),
    }
}

fn checked_name(name: &str) -> Result<(), ApiError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "function name {name:?} is invalid: use 1 to 63 of a-z, 0-9 and -"
        )))
    }
}

/// Liveness: the process is serving HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up", body = Health)))]
fn healthz() -> Reply {
    Ok(json_response(
        StatusCode::OK,
        &Health {
            status: "ok".into(),
        },
    ))
}

/// Readiness: the base artifact is loaded and functions can be deployed and
/// invoked.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready", body = Health),
              (status = 503, description = "Starting or failed to start", body = Health)))]
fn readyz(state: &AppState) -> Reply {
    if state.functions.get().is_some() {
        return healthz();
    }
    let failed = state.startup_error.get().is_some();
    Ok(json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &Health {
            status: if failed { "failed" } else { "starting" }.into(),
        },
    ))
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics", content_type = "text/plain", body = String)))]
fn metrics(state: &AppState) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(state.metrics.render())));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(response)
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
fn openapi() -> Reply {
    Ok(raw_json(
        StatusCode::OK,
        crate::openapi::document().into_bytes(),
    ))
}

/// Lists deployed functions.
#[utoipa::path(get, path = "/v1/functions", tag = "functions", security(("bearer" = [])),
    responses((status = 200, description = "Deployed functions", body = FunctionList),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_functions(state: &AppState, request: &Request<Incoming>) -> Reply {
    authorize(state, request.headers(), Scope::Admin)?;
    let records = functions(state)?.list().await?;
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
async fn get_function(state: &AppState, request: &Request<Incoming>, name: &str) -> Reply {
    authorize(state, request.headers(), Scope::Admin)?;
    checked_name(name)?;
    match functions(state)?.get(name).await? {
        Some(deployed) => Ok(json_response(StatusCode::OK, &deployed.info())),
        None => Err(ApiError::not_found(format!("no function named {name}"))),
    }
}

/// Deletes a function (its snapshot stays in the store, content-addressed).
#[utoipa::path(delete, path = "/v1/functions/{name}", tag = "functions", security(("bearer" = [])),
    params(("name" = String, Path, description = "Function name")),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody)))]
async fn delete_function(state: &AppState, request: &Request<Incoming>, name: &str) -> Reply {
    authorize(state, request.headers(), Scope::Admin)?;
    checked_name(name)?;
    if functions(state)?.delete(name).await? {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        Ok(response)
    } else {
        Err(ApiError::not_found(format!("no function named {name}")))
    }
}

/// Deploys (or redeploys) a function: Python source as `text/x-python`, or
/// a JSON [`DeployRequest`]. Imports the module and snapshots it (a module
/// that does not import leaves the previous version serving), then serves
/// the new version at once; its snapshot compiles in the background unless
/// `?wait=true`.
#[utoipa::path(put, path = "/v1/functions/{name}", tag = "functions", security(("bearer" = [])),
    params(("name" = String, Path, description = "Function name, [a-z0-9-]{1,63}"),
           ("wait" = Option<bool>, Query, description = "Answer only once the snapshot is compiled")),
    request_body(description = "The module's source, or a JSON deployment",
        content((String = "text/x-python"), (DeployRequest = "application/json"))),
    responses((status = 201, description = "Deployed", body = DeployResponse),
              (status = 400, description = "Invalid request, syntax error or import failure", body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn deploy_function(state: &Arc<AppState>, request: Request<Incoming>, name: String) -> Reply {
    authorize(state, request.headers(), Scope::Admin)?;
    checked_name(&name)?;
    functions(state)?;
    let is_json = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let wait = query_flag(&request, "wait");
    let body = read_body(state, request).await?;
    let deploy: DeployRequest = if is_json {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid deployment JSON: {e}")))?
    } else {
        let source = String::from_utf8(body.to_vec())
            .map_err(|_| ApiError::bad_request("the source is not UTF-8"))?;
        DeployRequest {
            source,
            handler: None,
            timeout_ms: None,
            memory_mb: None,
            env: Default::default(),
        }
    };
    let start = Instant::now();
    // Building a snapshot is CPU-heavy for a second or more: it runs on a
    // blocking thread so the async workers keep serving requests.
    let state2 = state.clone();
    let runtime = tokio::runtime::Handle::current();
    let outcome = tokio::task::spawn_blocking(move || {
        runtime.block_on(async {
            let functions = state2.functions.get().expect("checked ready above");
            functions.deploy(&name, deploy, wait).await
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
async fn invoke_function(
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
    let deployed = functions(state)?
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
    let metrics = &state.metrics;
    let context = eryx::HandlerContext {
        request_id: request_id.to_owned(),
        function_name: name.clone(),
        function_version: deployed.record.version,
    };
    if let (Some(id), Some(owner)) = (session, owner) {
        // The session's own lock and slots, in that order (see `Sessions`).
        let sessions = sessions::sessions(state)?;
        metrics.in_flight.inc();
        let start = Instant::now();
        let outcome = sessions
            .invoke(&owner, &id, &name, &event_json, &context)
            .await;
        metrics.in_flight.dec();
        metrics
            .invocation_seconds
            .with_label_values(&[&name])
            .observe(start.elapsed().as_secs_f64());
        return match outcome {
            Ok((output, head)) => {
                let mut response = invoke_response(
                    state,
                    request_id,
                    &name,
                    output,
                    include_output,
                    deployed.record.version,
                )?;
                sessions::set_etag(&mut response, head.version());
                Ok(response)
            }
            Err(error) => Err(invoke_failed(
                state,
                request_id,
                &name,
                sessions::api_error(error),
                include_output,
            )),
        };
    }
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
    metrics.in_flight.inc();
    let start = Instant::now();
    let outcome = deployed.call(&event_json, &context).await;
    metrics.in_flight.dec();
    metrics
        .invocation_seconds
        .with_label_values(&[&name])
        .observe(start.elapsed().as_secs_f64());
    match outcome {
        Ok(output) => invoke_response(
            state,
            request_id,
            &name,
            output,
            include_output,
            deployed.record.version,
        ),
        Err(error) => Err(invoke_failed(
            state,
            request_id,
            &name,
            ApiError::from_eryx(error),
            include_output,
        )),
    }
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

/// Whether the query string sets `flag` to `true` or `1`.
fn query_flag(request: &Request<Incoming>, flag: &str) -> bool {
    query_value(request, flag).is_some_and(|value| value == "true" || value == "1")
}

/// The value of `key` in the query string, if set (values used here are
/// never percent-encoded: flags, ids).
fn query_value<'r>(request: &'r Request<Incoming>, key: &str) -> Option<&'r str> {
    request.uri().query()?.split('&').find_map(|pair| {
        pair.split_once('=')
            .filter(|(k, _)| *k == key)
            .map(|(_, value)| value)
    })
}

fn overloaded(rejected: Rejected, code: ErrorCode, what: &str) -> ApiError {
    let message = match rejected {
        Rejected::QueueFull => format!("{what} is at its concurrency limit and its queue is full"),
        Rejected::TimedOut => {
            format!("{what} stayed at its concurrency limit for the whole queue timeout")
        }
    };
    ApiError::new(code, message).retry_after(1)
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
