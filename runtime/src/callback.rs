//! Host callbacks: async Rust functions that Python code in the sandbox
//! awaits by name (`await get_time()`, `await echo(message="hi")`).
//!
//! A callback has a name, a description and a JSON Schema of its keyword
//! arguments ([`Callback`]). Build one from a typed async closure
//! ([`TypedCallback`], the schema derived with `schemars`) or at run time
//! ([`DynamicCallback`]); register it with
//! [`SandboxBuilder::with_callback`](crate::SandboxBuilder::with_callback).
//!
//! While Python awaits a callback the instance is suspended (it blocks on
//! its waitable set) and the host polls every callback in flight at once, so
//! three callbacks that each wait 200 ms finish together under
//! `asyncio.gather`. In Python the arguments are checked against the schema
//! before the host is called (`TypeError`); the host checks the same rules
//! again (user code can call the host directly), and a [`TypedCallback`]
//! deserializes them into its type. A [`DynamicCallback`] gets JSON that
//! passed only those top-level checks: treat it as untrusted input.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The future a callback returns: its JSON result or why it failed.
pub type CallbackFuture = Pin<Box<dyn Future<Output = Result<Value, CallbackError>> + Send>>;

/// Why a callback failed, as Python sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CallbackError {
    kind: CallbackErrorKind,
    message: String,
}

/// What kind of failure a [`CallbackError`] is; decides the Python exception.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallbackErrorKind {
    /// The callback failed: Python raises `eryx.CallbackError`.
    Failed,
    /// The arguments do not fit the callback: Python raises `TypeError`.
    InvalidArguments,
    /// No callback of that name: Python raises `NameError`.
    NotFound,
    /// It ran past the per-callback timeout: Python raises
    /// `eryx.CallbackTimeout` (a `TimeoutError`).
    Timeout,
    /// The call made more invocations than allowed: Python raises
    /// `eryx.CallbackLimitExceeded`.
    Limit,
}

impl CallbackErrorKind {
    /// The kind's name in the WIT contract (`invoke`'s error JSON).
    fn wire_name(self) -> &'static str {
        match self {
            CallbackErrorKind::Failed => "failed",
            CallbackErrorKind::InvalidArguments => "invalid-arguments",
            CallbackErrorKind::NotFound => "not-found",
            CallbackErrorKind::Timeout => "timeout",
            CallbackErrorKind::Limit => "limit",
        }
    }
}

impl CallbackError {
    /// A failure whose `message` Python's `eryx.CallbackError` carries.
    pub fn new(message: impl Into<String>) -> CallbackError {
        CallbackError {
            kind: CallbackErrorKind::Failed,
            message: message.into(),
        }
    }

    /// Arguments the callback cannot use (Python gets a `TypeError`).
    pub fn invalid_arguments(message: impl Into<String>) -> CallbackError {
        CallbackError {
            kind: CallbackErrorKind::InvalidArguments,
            message: message.into(),
        }
    }

    pub(crate) fn with_kind(kind: CallbackErrorKind, message: impl Into<String>) -> CallbackError {
        CallbackError {
            kind,
            message: message.into(),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> CallbackErrorKind {
        self.kind
    }

    /// The message Python's exception carries.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The error as `invoke` returns it to the guest: `{"kind", "message"}`.
    pub(crate) fn to_wire(&self) -> String {
        serde_json::json!({ "kind": self.kind.wire_name(), "message": self.message }).to_string()
    }
}

/// A host function Python can await.
///
/// Implement it directly, or use [`TypedCallback`] / [`DynamicCallback`].
pub trait Callback: Send + Sync + 'static {
    /// The name Python calls it by: a Python identifier.
    fn name(&self) -> &str;
    /// What it does, shown by `list_callbacks()` and `help()`.
    fn description(&self) -> &str;
    /// JSON Schema of its keyword arguments (an object schema).
    fn parameters_schema(&self) -> Value;
    /// Runs the callback with its arguments (a JSON object).
    fn call(&self, arguments: Value) -> CallbackFuture;
}

/// A callback from an async function of one typed argument: the keyword
/// arguments are deserialized into `A`, whose JSON Schema (from
/// `schemars::JsonSchema`) Python checks against first.
///
/// ```
/// # use eryx::{CallbackError, TypedCallback};
/// #[derive(serde::Deserialize, schemars::JsonSchema)]
/// struct Echo {
///     /// What to send back.
///     message: String,
/// }
/// let echo = TypedCallback::new("echo", "Returns its message.", |args: Echo| async move {
///     Ok::<_, CallbackError>(args.message)
/// });
/// # let _ = echo;
/// ```
pub struct TypedCallback<A, F> {
    name: String,
    description: String,
    schema: Value,
    function: Arc<F>,
    _argument: std::marker::PhantomData<fn(A)>,
}

impl<A, F, Fut, R> TypedCallback<A, F>
where
    A: DeserializeOwned + schemars::JsonSchema + Send + 'static,
    F: Fn(A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, CallbackError>> + Send + 'static,
    R: Serialize + 'static,
{
    /// A callback `name` running `function` on its deserialized arguments.
    pub fn new(
        name: impl Into<String>,
        description: impl Into<String>,
        function: F,
    ) -> TypedCallback<A, F> {
        let schema = serde_json::to_value(schemars::schema_for!(A))
            .unwrap_or_else(|_| serde_json::json!({ "type": "object" }));
        TypedCallback {
            name: name.into(),
            description: description.into(),
            schema,
            function: Arc::new(function),
            _argument: std::marker::PhantomData,
        }
    }
}

impl<A, F, Fut, R> Callback for TypedCallback<A, F>
where
    A: DeserializeOwned + schemars::JsonSchema + Send + 'static,
    F: Fn(A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, CallbackError>> + Send + 'static,
    R: Serialize + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn description(&self) -> &str {
        &self.description
    }

    fn parameters_schema(&self) -> Value {
        self.schema.clone()
    }

    fn call(&self, arguments: Value) -> CallbackFuture {
        let parsed = serde_json::from_value::<A>(arguments)
            .map_err(|e| CallbackError::invalid_arguments(format!("{}(): {e}", self.name)));
        let function = self.function.clone();
        Box::pin(async move {
            let value = function(parsed?).await?;
            serde_json::to_value(value)
                .map_err(|e| CallbackError::new(format!("the callback's result is not JSON: {e}")))
        })
    }
}

/// A callback assembled at run time from a name, a JSON Schema and a closure
/// over the raw JSON arguments.
///
/// ```
/// # use eryx::DynamicCallback;
/// let add = DynamicCallback::new(
///     "add",
///     "Adds a and b.",
///     serde_json::json!({
///         "type": "object",
///         "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
///         "required": ["a", "b"],
///     }),
///     |args| async move {
///         let (a, b) = (args["a"].as_f64(), args["b"].as_f64());
///         match (a, b) {
///             (Some(a), Some(b)) => Ok(serde_json::json!(a + b)),
///             _ => Err(eryx::CallbackError::invalid_arguments("a and b must be numbers")),
///         }
///     },
/// );
/// # let _ = add;
/// ```
pub struct DynamicCallback {
    name: String,
    description: String,
    schema: Value,
    function: Arc<dyn Fn(Value) -> CallbackFuture + Send + Sync>,
}

impl DynamicCallback {
    /// A callback `name` whose arguments follow `schema` (a JSON Schema of
    /// an object), running `function`.
    pub fn new<F, Fut>(
        name: impl Into<String>,
        description: impl Into<String>,
        schema: Value,
        function: F,
    ) -> DynamicCallback
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, CallbackError>> + Send + 'static,
    {
        DynamicCallback {
            name: name.into(),
            description: description.into(),
            schema,
            function: Arc::new(move |args| Box::pin(function(args))),
        }
    }
}

impl Callback for DynamicCallback {
    fn name(&self) -> &str {
        &self.name
    }

    fn description(&self) -> &str {
        &self.description
    }

    fn parameters_schema(&self) -> Value {
        self.schema.clone()
    }

    fn call(&self, arguments: Value) -> CallbackFuture {
        (self.function)(arguments)
    }
}

/// A registered callback and its schema, asked for once at registration
/// (every invocation checks arguments against it).
#[derive(Clone)]
pub(crate) struct Registered {
    pub(crate) callback: Arc<dyn Callback>,
    pub(crate) schema: Arc<Value>,
}

/// The callbacks of a sandbox, by name, in registration order.
#[derive(Clone, Default)]
pub(crate) struct Callbacks {
    ordered: Vec<Registered>,
    by_name: HashMap<String, usize>,
}

impl fmt::Debug for Callbacks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.ordered.iter().map(|r| r.callback.name()))
            .finish()
    }
}

/// Names a callback may not take: the names of Python 3.14's `builtins`
/// (callbacks are installed there, and shadowing `Exception` or `print`
/// would break every run), its keywords and soft keywords, and the
/// attributes of the sandbox's `eryx` module (its exception types). The
/// list was generated from CPython's `dir(builtins)` and `keyword` module,
/// plus the names 3.12–3.14 added.
const RESERVED: &[&str] = &[
    "ArithmeticError",
    "AssertionError",
    "AttributeError",
    "BaseException",
    "BaseExceptionGroup",
    "BlockingIOError",
    "BrokenPipeError",
    "BufferError",
    "BytesWarning",
    "ChildProcessError",
    "ConnectionAbortedError",
    "ConnectionError",
    "ConnectionRefusedError",
    "ConnectionResetError",
    "DeprecationWarning",
    "EOFError",
    "Ellipsis",
    "EncodingWarning",
    "EnvironmentError",
    "Exception",
    "ExceptionGroup",
    "False",
    "FileExistsError",
    "FileNotFoundError",
    "FloatingPointError",
    "FutureWarning",
    "GeneratorExit",
    "IOError",
    "ImportError",
    "ImportWarning",
    "IndentationError",
    "IndexError",
    "InterruptedError",
    "IsADirectoryError",
    "KeyError",
    "KeyboardInterrupt",
    "LookupError",
    "MemoryError",
    "ModuleNotFoundError",
    "NameError",
    "None",
    "NotADirectoryError",
    "NotImplemented",
    "NotImplementedError",
    "OSError",
    "OverflowError",
    "PendingDeprecationWarning",
    "PermissionError",
    "ProcessLookupError",
    "PythonFinalizationError",
    "RecursionError",
    "ReferenceError",
    "ResourceWarning",
    "RuntimeError",
    "RuntimeWarning",
    "StopAsyncIteration",
    "StopIteration",
    "SyntaxError",
    "SyntaxWarning",
    "SystemError",
    "SystemExit",
    "TabError",
    "TimeoutError",
    "True",
    "TypeError",
    "UnboundLocalError",
    "UnicodeDecodeError",
    "UnicodeEncodeError",
    "UnicodeError",
    "UnicodeTranslateError",
    "UnicodeWarning",
    "UserWarning",
    "ValueError",
    "Warning",
    "ZeroDivisionError",
    "_",
    "_IncompleteInputError",
    "abs",
    "aiter",
    "all",
    "and",
    "anext",
    "any",
    "as",
    "ascii",
    "assert",
    "async",
    "await",
    "bin",
    "bool",
    "break",
    "breakpoint",
    "bytearray",
    "bytes",
    "callable",
    "case",
    "chr",
    "class",
    "classmethod",
    "compile",
    "complex",
    "continue",
    "copyright",
    "credits",
    "def",
    "del",
    "delattr",
    "dict",
    "dir",
    "divmod",
    "elif",
    "else",
    "enumerate",
    "eval",
    "except",
    "exec",
    "exit",
    "filter",
    "finally",
    "float",
    "for",
    "format",
    "from",
    "frozenset",
    "getattr",
    "global",
    "globals",
    "hasattr",
    "hash",
    "help",
    "hex",
    "id",
    "if",
    "import",
    "in",
    "input",
    "int",
    "is",
    "isinstance",
    "issubclass",
    "iter",
    "lambda",
    "len",
    "license",
    "list",
    "list_callbacks",
    "locals",
    "map",
    "match",
    "max",
    "memoryview",
    "min",
    "next",
    "nonlocal",
    "not",
    "object",
    "oct",
    "open",
    "or",
    "ord",
    "pass",
    "pow",
    "print",
    "property",
    "quit",
    "raise",
    "range",
    "repr",
    "return",
    "reversed",
    "round",
    "set",
    "setattr",
    "slice",
    "sorted",
    "staticmethod",
    "str",
    "sum",
    "super",
    "try",
    "tuple",
    "type",
    "vars",
    "while",
    "with",
    "yield",
    "zip",
];

/// Attributes of the guest's `eryx` module, which callbacks must not replace.
const ERYX_MODULE: &[&str] = &[
    "Callback",
    "CallbackError",
    "CallbackLimitExceeded",
    "CallbackTimeout",
    "list_callbacks",
];

fn reserved(name: &str) -> bool {
    RESERVED.contains(&name) || ERYX_MODULE.contains(&name)
}

impl Callbacks {
    /// Adds `callback`, replacing one of the same name.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) when the name is not a
    /// Python identifier (ASCII letters, digits, `_`; not starting with a
    /// digit) or is a keyword or a common builtin.
    pub(crate) fn add(&mut self, callback: Arc<dyn Callback>) -> crate::Result<()> {
        let name = callback.name().to_owned();
        let identifier = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !identifier || reserved(&name) || name.starts_with("__") {
            return Err(crate::Error::Config(format!(
                "callback name {name:?}: must be a Python identifier that is not a keyword or builtin"
            )));
        }
        let registered = Registered {
            schema: Arc::new(callback.parameters_schema()),
            callback,
        };
        match self.by_name.get(&name) {
            Some(&i) => self.ordered[i] = registered,
            None => {
                self.by_name.insert(name, self.ordered.len());
                self.ordered.push(registered);
            }
        }
        Ok(())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ordered.is_empty()
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Registered> {
        self.by_name.get(name).map(|&i| &self.ordered[i])
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Registered> {
        self.ordered.iter()
    }
}

/// Checks `arguments` against the top level of `schema` — an object; the
/// `required` names present; no unknown name when `additionalProperties`
/// is `false`; each property of a type its `type` allows — the same rules
/// the guest applies before calling the host (user code can skip the
/// guest's check, not this one). Nested schemas are the callback's to check
/// ([`TypedCallback`] deserializes into its type).
///
/// # Errors
/// A [`CallbackErrorKind::InvalidArguments`] error saying what is wrong.
pub(crate) fn check_arguments(
    name: &str,
    schema: &Value,
    arguments: &Value,
) -> Result<(), CallbackError> {
    let bad = |why: String| Err(CallbackError::invalid_arguments(format!("{name}(): {why}")));
    let Some(arguments) = arguments.as_object() else {
        return bad("arguments must be an object".into());
    };
    let properties = schema.get("properties").and_then(Value::as_object);
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for key in required.iter().filter_map(Value::as_str) {
            if !arguments.contains_key(key) {
                return bad(format!("missing required argument: {key:?}"));
            }
        }
    }
    let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
    for (key, value) in arguments {
        match properties.and_then(|p| p.get(key)) {
            None if closed => return bad(format!("unexpected argument {key:?}")),
            Some(property) if !type_allows(property.get("type"), value) => {
                return bad(format!("argument {key:?} has the wrong type"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether a JSON Schema `type` (a name, a list of names, or absent) allows
/// `value`.
fn type_allows(allowed: Option<&Value>, value: &Value) -> bool {
    let allows = |name: &str| match name {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        "null" => value.is_null(),
        _ => true,
    };
    match allowed {
        None => true,
        Some(Value::String(name)) => allows(name),
        Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).any(allows),
        Some(_) => true,
    }
}

/// Limits on the callbacks of one call (see
/// [`ResourceLimits`](crate::ResourceLimits)).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CallbackLimits {
    pub(crate) max_invocations: Option<u32>,
    pub(crate) timeout: Option<Duration>,
}
