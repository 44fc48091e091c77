//! [`ApiError`]: every error the gateway answers with, in one JSON shape.

use http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong, with the Python details when Python raised.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code: one of [`ErrorCode`]'s, e.g.
    /// `not_found`, `python_exception`, `timeout`, `memory_limit`.
    #[schema(value_type = ErrorCode)]
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// Python exception type, e.g. `ZeroDivisionError`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_name: Option<String>,
    /// Formatted Python traceback; line numbers are the user's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceback: Option<String>,
    /// What the code printed before failing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    /// What the code wrote to stderr before failing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// With `conflict` on a session: the version it is at now (also its
    /// `ETag`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
    /// The request's id (also in the `x-request-id` header).
    pub request_id: String,
}

/// Every kind of failure the gateway answers with: the `code` of the error
/// body, and the one place that picks each one's HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// 400: the request is malformed (bad JSON, bad name, bad settings).
    BadRequest,
    /// 400: the module failed to import at deploy (syntax error, exception,
    /// missing handler, import timeout).
    DeployFailed,
    /// 401: no token, or an unknown one.
    Unauthorized,
    /// 403: the token may not use this route.
    Forbidden,
    /// 403: without tokens, only the configured `Host` names are served
    /// (a guard against DNS rebinding).
    HostNotAllowed,
    /// 404: no such function or route.
    NotFound,
    /// 405: the route does not take this method.
    MethodNotAllowed,
    /// 408: the request body did not arrive within the body-read timeout.
    RequestTimeout,
    /// 409: the resource changed since it was read (a session's version,
    /// a function deployed elsewhere meanwhile); nothing was written.
    Conflict,
    /// 413: the request body is over the limit.
    PayloadTooLarge,
    /// 413: a session's new state is over the state limit; the previous
    /// state is kept.
    StateTooLarge,
    /// 429: the function's queue is full (`Retry-After`).
    TooManyRequests,
    /// 500: the handler raised.
    PythonException,
    /// 500: the code did not compile.
    PythonSyntaxError,
    /// 500: the code exited (`sys.exit`, `os._exit`).
    PythonExit,
    /// 500: the handler's result is not JSON (its machinery was tampered with).
    ResultNotJson,
    /// 500: the result is over the response limit.
    ResultTooLarge,
    /// 500: the instance needed more than its memory limit.
    MemoryLimit,
    /// 500: the instance trapped.
    Trap,
    /// 500: a stored document is not signed by this gateway's key.
    Integrity,
    /// 500: a failure of the gateway itself.
    Internal,
    /// 503: the gateway or the engine's instance pool is full (`Retry-After`).
    Overloaded,
    /// 503: the gateway is still starting or failed to start.
    NotReady,
    /// 503: the artifact store cannot be reached (`Retry-After`).
    StoreUnavailable,
    /// 504: the handler ran past its timeout.
    Timeout,
}

impl ErrorCode {
    /// The HTTP status this kind of failure is answered with.
    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            BadRequest | DeployFailed => StatusCode::BAD_REQUEST,
            Unauthorized => StatusCode::UNAUTHORIZED,
            Forbidden | HostNotAllowed => StatusCode::FORBIDDEN,
            NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Conflict => StatusCode::CONFLICT,
            PayloadTooLarge | StateTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            PythonException | PythonSyntaxError | PythonExit | ResultNotJson | ResultTooLarge
            | MemoryLimit | Trap | Integrity | Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Overloaded | NotReady | StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The code as it appears in error bodies and metrics labels.
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            BadRequest => "bad_request",
            DeployFailed => "deploy_failed",
            Unauthorized => "unauthorized",
            Forbidden => "forbidden",
            HostNotAllowed => "host_not_allowed",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            RequestTimeout => "request_timeout",
            Conflict => "conflict",
            PayloadTooLarge => "payload_too_large",
            StateTooLarge => "state_too_large",
            TooManyRequests => "too_many_requests",
            PythonException => "python_exception",
            PythonSyntaxError => "python_syntax_error",
            PythonExit => "python_exit",
            ResultNotJson => "result_not_json",
            ResultTooLarge => "result_too_large",
            MemoryLimit => "memory_limit",
            Trap => "trap",
            Integrity => "integrity",
            Internal => "internal",
            Overloaded => "overloaded",
            NotReady => "not_ready",
            StoreUnavailable => "store_unavailable",
            Timeout => "timeout",
        }
    }
}

/// An error response: its code, message, optional Python details and
/// `Retry-After` seconds.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// What kind of failure (it decides the status).
    pub code: ErrorCode,
    /// See [`ErrorDetail::message`].
    pub message: String,
    /// The Python exception, when there is one.
    pub python: Option<Box<eryx::PythonError>>,
    /// Seconds for a `Retry-After` header (overload responses).
    pub retry_after: Option<u64>,
    /// A session's current version, for a `conflict` (body and `ETag`).
    pub current_version: Option<u64>,
}

/// Longest error message put in a response or a log line, in bytes.
const MAX_MESSAGE_BYTES: usize = 8 << 10;

impl ApiError {
    /// An error without Python details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: excerpt(&message.into(), MAX_MESSAGE_BYTES),
            python: None,
            retry_after: None,
            current_version: None,
        }
    }

    /// The HTTP status ([`ErrorCode::status`]).
    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::BadRequest, message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::NotFound, message)
    }

    /// 500 `internal`: a failure of the gateway or its store, not of the caller.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Internal, message)
    }

    /// Adds a `Retry-After` of `seconds`.
    pub fn retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }

    /// The same error without the traceback and output (for callers not
    /// allowed to see them); the exception's type stays.
    pub fn without_details(mut self) -> ApiError {
        if let Some(python) = &mut self.python {
            python.traceback.clear();
            python.stdout.clear();
            python.stderr.clear();
        }
        self
    }

    /// The response body.
    pub fn body(&self, request_id: &str) -> ErrorBody {
        let python = self.python.as_ref();
        let nonempty = |s: &String| (!s.is_empty()).then(|| s.clone());
        ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str().to_owned(),
                message: self.message.clone(),
                type_name: python.map(|p| p.type_name.clone()),
                traceback: python.and_then(|p| nonempty(&p.traceback)),
                stdout: python.and_then(|p| nonempty(&p.stdout)),
                stderr: python.and_then(|p| nonempty(&p.stderr)),
                current_version: self.current_version,
                request_id: request_id.to_owned(),
            },
        }
    }

    /// The error for a failed call into an instance, by the error's kind;
    /// the Python details (traceback, output) ride along, for the caller to
    /// strip with [`without_details`](Self::without_details).
    pub fn from_eryx(error: eryx::Error) -> ApiError {
        let python = |code, python: Box<eryx::PythonError>| ApiError {
            message: python.to_string(),
            python: Some(python),
            ..ApiError::new(code, "")
        };
        match error {
            eryx::Error::Exception(p) => python(ErrorCode::PythonException, p),
            eryx::Error::Compile(p) => python(ErrorCode::PythonSyntaxError, p),
            eryx::Error::Exit {
                code,
                message,
                stdout,
                stderr,
            } => ApiError {
                message: format!(
                    "the code exited with {}",
                    message.unwrap_or_else(|| format!("status {code}"))
                ),
                python: Some(Box::new(python_exit(stdout, stderr))),
                ..ApiError::new(ErrorCode::PythonExit, "")
            },
            error @ eryx::Error::Timeout { .. } => {
                ApiError::new(ErrorCode::Timeout, error.to_string())
            }
            eryx::Error::MemoryLimit { limit_bytes, error } => ApiError {
                message: format!(
                    "the function needed more than its memory limit of {} MiB",
                    limit_bytes >> 20
                ),
                python: error,
                ..ApiError::new(ErrorCode::MemoryLimit, "")
            },
            eryx::Error::Trap(trap) => {
                let mut details = eryx::PythonError::default();
                details.stdout = trap.stdout.clone();
                details.stderr = trap.stderr.clone();
                ApiError {
                    message: format!("the instance trapped ({:?}): {}", trap.kind, trap.message),
                    python: Some(Box::new(details)),
                    ..ApiError::new(ErrorCode::Trap, "")
                }
            }
            error @ eryx::Error::ResultNotJson => {
                ApiError::new(ErrorCode::ResultNotJson, error.to_string())
            }
            error @ eryx::Error::ResultTooLarge { .. } => {
                ApiError::new(ErrorCode::ResultTooLarge, error.to_string())
            }
            error @ eryx::Error::PoolExhausted(_) => {
                ApiError::new(ErrorCode::Overloaded, error.to_string()).retry_after(1)
            }
            error => ApiError::internal(error.to_string()),
        }
    }
}

/// At most `limit` bytes of `text` (cut at a character boundary, marked).
pub(crate) fn excerpt(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} more bytes]", &text[..end], text.len() - end)
}

/// A `SystemExit` as Python details.
fn python_exit(stdout: String, stderr: String) -> eryx::PythonError {
    let mut python = eryx::PythonError::default();
    python.type_name = "SystemExit".to_owned();
    python.stdout = stdout;
    python.stderr = stderr;
    python
}

impl From<eryx_preinit::Error> for ApiError {
    fn from(error: eryx_preinit::Error) -> ApiError {
        match error {
            eryx_preinit::Error::Store(error) => error.into(),
            error => ApiError::internal(error.to_string()),
        }
    }
}

impl From<eryx_store::Error> for ApiError {
    fn from(error: eryx_store::Error) -> ApiError {
        match error {
            eryx_store::Error::Unavailable { message, .. } => {
                // The location names buckets and paths: the log has it.
                tracing::warn!("the store failed: {message}");
                ApiError::new(
                    ErrorCode::StoreUnavailable,
                    "the store cannot be reached or refused the request; nothing was changed",
                )
                .retry_after(5)
            }
            error @ eryx_store::Error::BadSignature { .. } => {
                tracing::error!("{error}");
                ApiError::new(
                    ErrorCode::Integrity,
                    "a stored document is not signed by this gateway's key (see the log)",
                )
            }
            error @ eryx_store::Error::Conflict { .. } => {
                ApiError::new(ErrorCode::Conflict, error.to_string())
            }
            error => ApiError::internal(error.to_string()),
        }
    }
}
