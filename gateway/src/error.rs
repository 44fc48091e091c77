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
    /// Stable machine-readable code, e.g. `not_found`, `python_exception`,
    /// `timeout`, `memory_limit`, `payload_too_large`, `unauthorized`.
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
    /// The request's id (also in the `x-request-id` header).
    pub request_id: String,
}

/// An error response: status, code, message, optional Python details and
/// `Retry-After` seconds.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// See [`ErrorDetail::code`].
    pub code: &'static str,
    /// See [`ErrorDetail::message`].
    pub message: String,
    /// The Python exception, when there is one.
    pub python: Option<Box<eryx::PythonError>>,
    /// Seconds for a `Retry-After` header (overload responses).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error without Python details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            python: None,
            retry_after: None,
        }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 500 `internal`: a failure of the gateway or its store, not of the caller.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// Adds a `Retry-After` of `seconds`.
    pub fn retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }

    /// The response body.
    pub fn body(&self, request_id: &str) -> ErrorBody {
        let python = self.python.as_ref();
        let nonempty = |s: &String| (!s.is_empty()).then(|| s.clone());
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message.clone(),
                type_name: python.map(|p| p.type_name.clone()),
                traceback: python.map(|p| p.traceback.clone()),
                stdout: python.and_then(|p| nonempty(&p.stdout)),
                stderr: python.and_then(|p| nonempty(&p.stderr)),
                request_id: request_id.to_owned(),
            },
        }
    }

    /// The error for a failed Python call: `status` for the code's own
    /// failures (exceptions, syntax errors, exits); fixed statuses for
    /// timeouts (504), the memory limit (500 `memory_limit`) and traps (500).
    pub fn from_eryx(error: eryx::Error, python_status: StatusCode) -> ApiError {
        match error {
            eryx::Error::Exception(python) => ApiError {
                message: python.to_string(),
                python: Some(Box::new(python)),
                ..ApiError::new(python_status, "python_exception", "")
            },
            eryx::Error::Compile(python) => ApiError {
                message: python.to_string(),
                python: Some(Box::new(python)),
                ..ApiError::new(python_status, "python_syntax_error", "")
            },
            eryx::Error::Exit {
                code,
                message,
                stdout,
                stderr,
            } => ApiError {
                message: format!(
                    "the code called sys.exit({})",
                    message.unwrap_or_else(|| code.to_string())
                ),
                python: Some(Box::new(python_exit(stdout, stderr))),
                ..ApiError::new(python_status, "python_exit", "")
            },
            error @ eryx::Error::Timeout { .. } => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", error.to_string())
            }
            eryx::Error::MemoryLimit { limit_bytes, error } => ApiError {
                message: format!(
                    "the function needed more than its memory limit of {} MiB",
                    limit_bytes >> 20
                ),
                python: error,
                ..ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "memory_limit", "")
            },
            error @ eryx::Error::Trap(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "trap", error.to_string())
            }
            error => ApiError::internal(error.to_string()),
        }
    }
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
            eryx_preinit::Error::Store(message) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                format!("the artifact store failed: {message}"),
            )
            .retry_after(5),
            error => ApiError::internal(error.to_string()),
        }
    }
}
