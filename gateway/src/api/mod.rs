//! The HTTP API: routing (`matchit`), authorization, body limits, and the
//! handlers of every route (each documented for the OpenAPI document with
//! `utoipa`). The domain (functions, sessions) knows nothing of HTTP: its
//! typed errors become status codes here.

pub(crate) mod functions;
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

use crate::error::{ApiError, ErrorCode, excerpt};
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
        // Everything logged while the request runs (the `log` module of
        // functions included) carries its id.
        Ok(()) => {
            use tracing::Instrument;
            let span = tracing::info_span!("request", request_id = %request_id);
            route(&state, request, &request_id).instrument(span).await
        }
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
        (Route::Functions, Method::GET) => functions::list_functions(state, &request).await,
        (Route::Function, Method::PUT) => {
            functions::deploy_function(state, request, param("name")).await
        }
        (Route::Function, Method::GET) => {
            functions::get_function(state, &request, &param("name")).await
        }
        (Route::Function, Method::DELETE) => {
            functions::delete_function(state, &request, &param("name")).await
        }
        (Route::Invoke, Method::POST) => {
            functions::invoke_function(state, request, param("name"), request_id).await
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
