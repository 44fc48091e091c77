//! The sessions routes: `/v1/sessions…` over [`Sessions`], and the status
//! codes of its [`SessionError`]s. A session's version is its `ETag`
//! (`"3"`); `If-Match` with another version is 409 without running.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, ETAG, IF_MATCH};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    Caller, Reply, Scope, authorize, bearer_token, json_response, overloaded, read_body,
    read_body_limited,
};
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::server::AppState;
use crate::sessions::{CreateSession, Owner, SessionError, SessionInfo, Sessions};

/// `POST /v1/sessions`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionCreated {
    /// The session's id: 32 hex digits (128 random bits).
    pub id: String,
    /// Its version: 1.
    pub version: u64,
    /// When it expires unless used (RFC 3339, UTC).
    pub expires_at: String,
}

/// `GET /v1/sessions`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    /// Live sessions (up to 1000), oldest first.
    pub sessions: Vec<SessionInfo>,
}

/// `POST /v1/sessions/{id}/execute`'s body (or send the code itself as
/// `text/x-python`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    /// Python source, run like a REPL cell: top-level `await` is allowed and
    /// a final expression's value is returned.
    pub code: String,
}

/// A Python failure of an execute: the session lives on, unchanged.
#[derive(Debug, Serialize, ToSchema)]
pub struct PythonFailure {
    /// The exception's type, e.g. `ZeroDivisionError` (`SystemExit` for an
    /// exit).
    #[serde(rename = "type")]
    pub type_name: String,
    /// `str()` of the exception.
    pub message: String,
    /// The formatted traceback; line numbers are the code's.
    pub traceback: String,
}

/// `POST /v1/sessions/{id}/execute`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecuteResponse {
    /// What the code printed.
    pub stdout: String,
    /// What it wrote to stderr.
    pub stderr: String,
    /// `repr()` of the final expression's value, if any and not `None`.
    pub result: Option<String>,
    /// The exception, when the code raised (nothing was saved then).
    pub error: Option<PythonFailure>,
    /// The session's version now (also the `ETag`).
    pub version: u64,
    /// Whether this execute saved a new version.
    pub saved: bool,
    /// Size of the pickled state now, in bytes.
    pub state_bytes: u64,
    /// Names left out of the state because they cannot be pickled.
    pub skipped: Vec<String>,
}

/// The sessions, once start-up is done.
pub(super) fn sessions(state: &AppState) -> Result<&Arc<Sessions>, ApiError> {
    super::functions(state)?;
    state
        .sessions
        .get()
        .ok_or_else(|| ApiError::new(ErrorCode::NotReady, state.startup_detail()).retry_after(1))
}

/// The owner identity of an authorized caller.
pub(super) fn owner(
    state: &AppState,
    request: &Request<Incoming>,
    caller: Caller,
) -> Result<Owner, ApiError> {
    let token = state
        .config
        .auth_enabled()
        .then(|| bearer_token(request.headers()))
        .flatten();
    let admin = caller == Caller::Admin;
    let inspect = admin || state.config.invoke_tokens_see_details;
    Ok(sessions(state)?.owner(token, admin, inspect))
}

/// Authorizes a sessions route (invoke tokens may use them) and returns the
/// sessions and the caller as an owner.
fn caller(
    state: &AppState,
    request: &Request<Incoming>,
) -> Result<(Arc<Sessions>, Owner), ApiError> {
    let caller = authorize(state, request.headers(), Scope::Invoke)?;
    Ok((sessions(state)?.clone(), owner(state, request, caller)?))
}

/// Sets the `ETag` of a session at `version`.
pub(super) fn set_etag(response: &mut Response<Full<Bytes>>, version: u64) {
    if let Ok(value) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(ETAG, value);
    }
}

/// The version an `If-Match` header names: `"3"`, `W/"3"` or `3`; `*` and
/// no header are `None` (any version).
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim();
    if text == "*" {
        return Ok(None);
    }
    let bare = text.trim_start_matches("W/").trim_matches('"');
    bare.parse().map(Some).map_err(|_| {
        ApiError::bad_request("If-Match must name a session version, e.g. If-Match: \"3\"")
    })
}

/// The status of a session error (and its `Retry-After`, `ETag`).
pub(super) fn api_error(error: SessionError) -> ApiError {
    match error {
        error @ SessionError::NotFound(_) => ApiError::not_found(error.to_string()),
        SessionError::Conflict {
            id,
            current,
            based_on,
        } => {
            let mut api = ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "session {id} is at version {current}, not {based_on}: another request \
                     wrote it first; nothing was saved (read it again and retry)"
                ),
            );
            api.current_version = Some(current);
            api
        }
        error @ SessionError::StateTooLarge { .. } => {
            ApiError::new(ErrorCode::StateTooLarge, error.to_string())
        }
        error @ (SessionError::BadRequest(_) | SessionError::BadState(_)) => {
            ApiError::bad_request(error.to_string())
        }
        SessionError::Forbidden(message) => ApiError::new(ErrorCode::Forbidden, message),
        SessionError::Overloaded {
            what,
            rejected,
            function,
        } => {
            let code = if function {
                ErrorCode::TooManyRequests
            } else {
                ErrorCode::Overloaded
            };
            overloaded(rejected, code, &what)
        }
        SessionError::Run(error) => ApiError::from_eryx(error),
        SessionError::Integrity(message) => {
            tracing::error!("session integrity: {message}");
            ApiError::new(ErrorCode::Integrity, message)
        }
        SessionError::Store(error) => error.into(),
        SessionError::Function(error) => error.into(),
    }
}

/// Creates a session: an empty body or `{}` starts from the base snapshot;
/// `{"function": name}` from that function's, whose module globals are then
/// the initial state. It belongs to the token that created it.
#[utoipa::path(post, path = "/v1/sessions", tag = "sessions", security(("bearer" = [])),
    request_body(description = "Optional settings", content((CreateSession = "application/json"))),
    responses((status = 201, description = "Created; the ETag is its version", body = SessionCreated),
              (status = 400, description = "A bad setting or an unknown function", body = ErrorBody),
              (status = 401, body = ErrorBody),
              (status = 503, description = "The store is unreachable (Retry-After)", body = ErrorBody)))]
pub(super) async fn create_session(state: &Arc<AppState>, request: Request<Incoming>) -> Reply {
    let (sessions, owner) = caller(state, &request)?;
    let body = read_body(state, request).await?;
    let create: CreateSession = if body.iter().all(u8::is_ascii_whitespace) {
        CreateSession::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid session JSON: {e}")))?
    };
    let head = sessions.create(&owner, create).await.map_err(api_error)?;
    let info = SessionInfo::from(&head);
    tracing::info!(
        session = info.id,
        function = info.function,
        "session created"
    );
    let mut response = json_response(
        StatusCode::CREATED,
        &SessionCreated {
            id: info.id,
            version: info.version,
            expires_at: info.expires_at,
        },
    );
    set_etag(&mut response, head.version());
    Ok(response)
}

/// Lists live sessions (admin tokens only).
#[utoipa::path(get, path = "/v1/sessions", tag = "sessions", security(("bearer" = [])),
    responses((status = 200, description = "Live sessions", body = SessionList),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn list_sessions(state: &AppState, request: &Request<Incoming>) -> Reply {
    authorize(state, request.headers(), Scope::Admin)?;
    let heads = sessions(state)?.list().await.map_err(api_error)?;
    Ok(json_response(
        StatusCode::OK,
        &SessionList {
            sessions: heads.iter().map(SessionInfo::from).collect(),
        },
    ))
}

/// Shows a session: version, sizes, times.
#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "Session id")),
    responses((status = 200, description = "The session; the ETag is its version", body = SessionInfo),
              (status = 404, description = "No such session for this token (or expired)", body = ErrorBody)))]
pub(super) async fn get_session(state: &AppState, request: &Request<Incoming>, id: &str) -> Reply {
    let (sessions, owner) = caller(state, request)?;
    let head = sessions.get(&owner, id).await.map_err(api_error)?;
    let mut response = json_response(StatusCode::OK, &SessionInfo::from(&head));
    set_etag(&mut response, head.version());
    Ok(response)
}

/// Deletes a session and its stored states.
#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "Session id")),
    responses((status = 204, description = "Deleted"),
              (status = 404, description = "No such session for this token", body = ErrorBody)))]
pub(super) async fn delete_session(
    state: &AppState,
    request: &Request<Incoming>,
    id: &str,
) -> Reply {
    let (sessions, owner) = caller(state, request)?;
    sessions.delete(&owner, id).await.map_err(api_error)?;
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

/// Runs code in a fresh instance with the session's state restored, and
/// saves the state it leaves as the next version. A Python exception is
/// answered with 200 and `error`, and saves nothing; so do a timeout, the
/// memory limit and a trap (with their error statuses). `If-Match` with
/// another version than the current one is 409 without running; a
/// concurrent write that wins first makes this one 409 too.
#[utoipa::path(post, path = "/v1/sessions/{id}/execute", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "Session id"),
           ("If-Match" = Option<String>, Header, description = "Run only on this version, e.g. \"3\"")),
    request_body(description = "The code", content((ExecuteRequest = "application/json"), (String = "text/x-python"))),
    responses((status = 200, description = "Ran (see `error`); the ETag is the version now", body = ExecuteResponse),
              (status = 404, description = "No such session for this token (or expired)", body = ErrorBody),
              (status = 409, description = "The session is at another version (current_version)", body = ErrorBody),
              (status = 413, description = "The new state is over the state limit; the old one is kept", body = ErrorBody),
              (status = 500, description = "Memory limit or trap; nothing saved", body = ErrorBody),
              (status = 503, description = "The store is unreachable (Retry-After); nothing saved", body = ErrorBody),
              (status = 504, description = "Timeout; nothing saved", body = ErrorBody)))]
pub(super) async fn execute(state: &AppState, request: Request<Incoming>, id: &str) -> Reply {
    let (sessions, owner) = caller(state, &request)?;
    let expected = if_match(request.headers())?;
    // The code itself when sent as text (`text/x-python`, `text/plain`);
    // anything else (curl's default form type included) is the JSON body.
    let is_source = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/"));
    let body = read_body(state, request).await?;
    let code = if !is_source {
        serde_json::from_slice::<ExecuteRequest>(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid execute JSON: {e}")))?
            .code
    } else {
        String::from_utf8(body.to_vec())
            .map_err(|_| ApiError::bad_request("the code is not UTF-8"))?
    };
    let executed = sessions
        .execute(&owner, id, &code, expected)
        .await
        .map_err(api_error)?;
    let info = executed.info();
    let timing = executed.timings.header();
    let saved = executed.outcome.is_ok();
    let (stdout, stderr, result, error) = match executed.outcome {
        Ok(result) => (result.stdout, result.stderr, result.result, None),
        Err(eryx::Error::Exception(python) | eryx::Error::Compile(python)) => {
            let python = *python;
            let failure = PythonFailure {
                type_name: python.type_name,
                message: python.message,
                traceback: python.traceback,
            };
            (python.stdout, python.stderr, None, Some(failure))
        }
        Err(eryx::Error::Exit {
            code,
            message,
            stdout,
            stderr,
        }) => {
            let failure = PythonFailure {
                type_name: "SystemExit".into(),
                message: message.unwrap_or_else(|| code.to_string()),
                traceback: String::new(),
            };
            (stdout, stderr, None, Some(failure))
        }
        Err(other) => return Err(ApiError::from_eryx(other)),
    };
    let mut response = json_response(
        StatusCode::OK,
        &ExecuteResponse {
            stdout,
            stderr,
            result,
            error,
            version: info.version,
            saved,
            state_bytes: info.state_bytes,
            skipped: info.skipped,
        },
    );
    set_etag(&mut response, info.version);
    if let Ok(timing) = HeaderValue::from_str(&timing) {
        response.headers_mut().insert("server-timing", timing);
    }
    Ok(response)
}

/// The session's pickled state (protocol 5; empty before the first write)
/// as `application/octet-stream`, with its version as the `ETag`.
#[utoipa::path(get, path = "/v1/sessions/{id}/state", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "Session id")),
    responses((status = 200, description = "The pickle", content_type = "application/octet-stream", body = Vec<u8>),
              (status = 404, description = "No such session for this token", body = ErrorBody)))]
pub(super) async fn get_state(state: &AppState, request: &Request<Incoming>, id: &str) -> Reply {
    let (sessions, owner) = caller(state, request)?;
    let (data, head) = sessions.state(&owner, id).await.map_err(api_error)?;
    let mut response = Response::new(Full::new(Bytes::from(data.as_ref().clone())));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    set_etag(&mut response, head.version());
    Ok(response)
}

/// Replaces the session's state with a pickle (of a dict of globals, e.g.
/// one from `GET …/state`): it is restored in a fresh instance, so a hostile
/// pickle runs only inside the sandbox, and what that instance then holds is
/// saved as the next version. `If-Match` is honoured.
#[utoipa::path(put, path = "/v1/sessions/{id}/state", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "Session id"),
           ("If-Match" = Option<String>, Header, description = "Replace only this version, e.g. \"3\"")),
    request_body(description = "The pickle", content((Vec<u8> = "application/octet-stream"))),
    responses((status = 200, description = "Saved; the ETag is the new version", body = SessionInfo),
              (status = 400, description = "The pickle does not restore", body = ErrorBody),
              (status = 404, description = "No such session for this token", body = ErrorBody),
              (status = 409, description = "The session is at another version", body = ErrorBody),
              (status = 413, description = "Over the state limit", body = ErrorBody)))]
pub(super) async fn put_state(state: &AppState, request: Request<Incoming>, id: &str) -> Reply {
    let (sessions, owner) = caller(state, &request)?;
    let expected = if_match(request.headers())?;
    let limit = state.config.limits.session_state_limit_bytes;
    let body = read_body_limited(state, request, limit).await?;
    let head = sessions
        .replace_state(&owner, id, &body, expected)
        .await
        .map_err(api_error)?;
    let mut response = json_response(StatusCode::OK, &SessionInfo::from(&head));
    set_etag(&mut response, head.version());
    Ok(response)
}
