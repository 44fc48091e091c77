//! [`Config`]: where the gateway listens and stores, who may call it, and its
//! limits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything `eryx serve` is configured with.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Address to listen on (default `127.0.0.1:8080`; port 0 picks a free one).
    pub listen: SocketAddr,
    /// Artifact store: a local directory or `s3://bucket/prefix` (default:
    /// `<data_dir>/store`).
    pub store: Option<String>,
    /// Local data directory: CPython wheel, guest build, caches (default
    /// [`eryx_preinit::default_data_dir`]).
    pub data_dir: PathBuf,
    /// Bearer tokens allowed to deploy, list and delete functions (and
    /// invoke them).
    pub admin_tokens: Vec<String>,
    /// Bearer tokens allowed only to invoke functions.
    pub invoke_tokens: Vec<String>,
    /// Limits and queue sizes.
    pub limits: Limits,
    /// Extra S3 settings for the store, as `object_store` configuration
    /// pairs (see [`eryx_preinit::ArtifactStore::open_with_options`]).
    pub store_options: Vec<(String, String)>,
    /// The key that signs and checks everything the gateway stores
    /// (default: [`eryx_preinit::signing_key`] of the data directory).
    /// Every replica sharing a store needs the same key.
    pub signing_key: Option<eryx::SigningKey>,
    /// `Host` names served when no token is configured (default
    /// `localhost`, `127.0.0.1`, `[::1]`): a web page that rebinds its own
    /// name to 127.0.0.1 is refused. Ignored when tokens are configured.
    pub allowed_hosts: Vec<String>,
    /// Whether invoke-only tokens may see handler output and tracebacks
    /// (with `include_output`; default false: only admin tokens may).
    pub invoke_tokens_see_details: bool,
}

impl Config {
    /// The defaults: loopback port 8080, the default data directory and its
    /// local store, no tokens, default [`Limits`].
    pub fn new() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            store: None,
            data_dir: eryx_preinit::default_data_dir(),
            admin_tokens: Vec::new(),
            invoke_tokens: Vec::new(),
            limits: Limits::default(),
            store_options: Vec::new(),
            signing_key: None,
            allowed_hosts: ["localhost", "127.0.0.1", "[::1]"]
                .map(str::to_owned)
                .to_vec(),
            invoke_tokens_see_details: false,
        }
    }

    /// Sets [`listen`](Config::listen).
    pub fn with_listen(mut self, listen: SocketAddr) -> Config {
        self.listen = listen;
        self
    }

    /// Sets [`store`](Config::store).
    pub fn with_store(mut self, store: impl Into<String>) -> Config {
        self.store = Some(store.into());
        self
    }

    /// Sets [`data_dir`](Config::data_dir).
    pub fn with_data_dir(mut self, dir: impl Into<PathBuf>) -> Config {
        self.data_dir = dir.into();
        self
    }

    /// Adds an admin (deploy) token.
    pub fn with_admin_token(mut self, token: impl Into<String>) -> Config {
        self.admin_tokens.push(token.into());
        self
    }

    /// Adds an invoke-only token.
    pub fn with_invoke_token(mut self, token: impl Into<String>) -> Config {
        self.invoke_tokens.push(token.into());
        self
    }

    /// Sets [`limits`](Config::limits).
    pub fn with_limits(mut self, limits: Limits) -> Config {
        self.limits = limits;
        self
    }

    /// Adds S3 settings; see [`store_options`](Config::store_options).
    pub fn with_store_option(mut self, key: impl Into<String>, value: impl Into<String>) -> Config {
        self.store_options.push((key.into(), value.into()));
        self
    }

    /// Sets [`signing_key`](Config::signing_key).
    pub fn with_signing_key(mut self, key: eryx::SigningKey) -> Config {
        self.signing_key = Some(key);
        self
    }

    /// Adds a `Host` name to [`allowed_hosts`](Config::allowed_hosts).
    pub fn with_allowed_host(mut self, host: impl Into<String>) -> Config {
        self.allowed_hosts.push(host.into());
        self
    }

    /// Sets [`invoke_tokens_see_details`](Config::invoke_tokens_see_details).
    pub fn with_invoke_tokens_see_details(mut self, allowed: bool) -> Config {
        self.invoke_tokens_see_details = allowed;
        self
    }

    /// Whether any token is configured (so requests must carry one).
    pub fn auth_enabled(&self) -> bool {
        !self.admin_tokens.is_empty() || !self.invoke_tokens.is_empty()
    }
}

impl Default for Config {
    fn default() -> Config {
        Config::new()
    }
}

/// Request, concurrency and per-function limits.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest request body, in bytes (default 6 MiB, as AWS Lambda's
    /// synchronous invocation payload); larger bodies get 413.
    pub max_body_bytes: usize,
    /// Largest request head (request line and headers), in bytes (default
    /// 16 KiB; hyper enforces at least 8 KiB); larger heads get 431.
    pub max_header_bytes: usize,
    /// Time a client has to send a complete request head (default 10 s).
    pub header_read_timeout: Duration,
    /// Time a client has to send a complete request body once its head
    /// arrived (default 30 s); past it 408.
    pub body_read_timeout: Duration,
    /// Open connections at once (default 1,024); further clients wait to be
    /// accepted.
    pub max_connections: usize,
    /// Largest handler result, in bytes (default 6 MiB, as AWS Lambda's
    /// synchronous response); a larger one is 500 `result_too_large`.
    pub max_response_bytes: usize,
    /// Deployments building snapshots at once (default 2); others wait in a
    /// queue of [`max_deploy_queue`](Limits::max_deploy_queue).
    pub max_concurrent_deploys: usize,
    /// Deployments waiting for a build slot (default 16); past it 503.
    pub max_deploy_queue: usize,
    /// Longest a module's top-level code may run at deploy (default 30 s),
    /// including time blocked in the host (`time.sleep`); past it 400.
    pub deploy_import_timeout: Duration,
    /// Invocations running at once across all functions (default 64).
    pub max_concurrency: usize,
    /// Invocations waiting for a slot across all functions (default 512);
    /// past it requests get 503 with `Retry-After`.
    pub max_queue: usize,
    /// Longest an invocation waits in a queue before 503 (default 10 s).
    pub queue_timeout: Duration,
    /// Invocations of one function running at once (default 32).
    pub function_max_concurrency: usize,
    /// Invocations of one function waiting (default 256); past it requests
    /// get 429 with `Retry-After`.
    pub function_max_queue: usize,
    /// Handler timeout when a deployment sets none, in ms (default 10,000).
    pub default_timeout_ms: u64,
    /// Largest handler timeout a deployment may set, in ms (default 300,000).
    pub max_timeout_ms: u64,
    /// Memory limit per instance when a deployment sets none, in MiB
    /// (default 128).
    pub default_memory_mb: u64,
    /// Largest memory limit a deployment may set, in MiB (default 512, the
    /// engine's per-instance maximum).
    pub max_memory_mb: u64,
    /// Writable in-memory filesystem (`/tmp`, `/work`) of each instance when
    /// a deployment sets none, in MiB (default 64; also what sessions get).
    /// File contents are host memory outside the instance's memory limit:
    /// up to twice this per instance (buffers grow by doubling), times the
    /// instances running at once; a session's files are refused before they
    /// are packed when they exceed its state limit.
    pub default_tmp_mb: u64,
    /// Largest filesystem a deployment may ask for, in MiB (default 512).
    pub max_tmp_mb: u64,
    /// Network rules (as a deployment's `allow_hosts` writes them) that may
    /// reach loopback and private addresses when a deployment lists them:
    /// the operator's opening to an internal network (default none, so a
    /// function reaches public addresses only).
    pub allow_private_hosts: Vec<String>,
    /// Most hosts one deployment may list in `allow_hosts` (default 32).
    pub max_allow_hosts: usize,
    /// How long a graceful shutdown waits for in-flight requests (default 30 s).
    pub shutdown_grace: Duration,
    /// How often loaded functions are checked against the store, so a
    /// redeployment or deletion made through another replica reaches this
    /// one (default 5 s).
    pub refresh_interval: Duration,
    /// Largest pickled state of a session, in bytes (default 16 MiB); an
    /// execute that would leave a larger one gets 413 `state_too_large` and
    /// the previous state is kept.
    pub session_state_limit_bytes: usize,
    /// A session's time to live when its creation sets none (default 1 h):
    /// it expires this long after its last use.
    pub session_default_ttl: Duration,
    /// Largest time to live a session may ask for (default 7 days).
    pub session_max_ttl: Duration,
    /// Bytes of decompressed session states this replica keeps in memory
    /// (default 64 MiB; 0 turns the cache off).
    pub session_cache_bytes: usize,
    /// How long an unused state stays in that cache (default 10 min).
    pub session_cache_idle: Duration,
    /// How often this replica sweeps expired sessions and unreferenced
    /// state objects from the store (default 60 s). Several replicas may
    /// sweep at once.
    pub session_sweep_interval: Duration,
    /// How long the sweep leaves an expired session, or a state object no
    /// head names, before deleting it (default 6 min: longer than the
    /// longest request, so no request still running on it is affected).
    pub session_sweep_grace: Duration,
    /// Bytes of artifacts (`.cwasm`, `.wasm`) this replica keeps in its
    /// local cache (default none: unbounded); past it, the least recently
    /// used are removed and fetched again from the store when needed (see
    /// `eryx_preinit::ArtifactStore::with_cache_limit`).
    pub artifact_cache_bytes: Option<u64>,
    /// How often this replica removes per-function artifacts that no
    /// function record names (default 10 min). Several replicas may collect
    /// at once.
    pub artifact_gc_interval: Duration,
    /// How old such an artifact must be before it is removed (default 1 h:
    /// longer than any deploy takes from publishing its artifact to writing
    /// its record).
    pub artifact_gc_grace: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body_bytes: 6 << 20,
            max_header_bytes: 16 << 10,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_response_bytes: 6 << 20,
            max_concurrent_deploys: 2,
            max_deploy_queue: 16,
            deploy_import_timeout: Duration::from_secs(30),
            max_concurrency: 64,
            max_queue: 512,
            queue_timeout: Duration::from_secs(10),
            function_max_concurrency: 32,
            function_max_queue: 256,
            default_timeout_ms: 10_000,
            max_timeout_ms: 300_000,
            default_memory_mb: 128,
            max_memory_mb: 512,
            default_tmp_mb: 64,
            max_tmp_mb: 512,
            allow_private_hosts: Vec::new(),
            max_allow_hosts: 32,
            shutdown_grace: Duration::from_secs(30),
            refresh_interval: Duration::from_secs(5),
            session_state_limit_bytes: 16 << 20,
            session_default_ttl: Duration::from_secs(3600),
            session_max_ttl: Duration::from_secs(7 * 24 * 3600),
            session_cache_bytes: 64 << 20,
            session_cache_idle: Duration::from_secs(600),
            session_sweep_interval: Duration::from_secs(60),
            session_sweep_grace: Duration::from_secs(360),
            artifact_cache_bytes: None,
            artifact_gc_interval: Duration::from_secs(600),
            artifact_gc_grace: Duration::from_secs(3600),
        }
    }
}
