//! `eryx serve`: the gateway, configured from flags and `ERYX_*` variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// How the gateway logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for log collectors).
    Json,
    /// Human-readable lines.
    Text,
}

/// Flags of `eryx serve`; each is also read from the `ERYX_*` variable shown.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Without tokens only loopback addresses are allowed.
    #[arg(long, env = "ERYX_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Bearer tokens that may deploy, list, delete and invoke (comma-separated).
    #[arg(
        long = "admin-token",
        env = "ERYX_ADMIN_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    admin_tokens: Vec<String>,
    /// Bearer tokens that may only invoke (comma-separated).
    #[arg(
        long = "invoke-token",
        env = "ERYX_INVOKE_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    invoke_tokens: Vec<String>,
    /// Largest request body in bytes (413 past it).
    #[arg(long, env = "ERYX_MAX_BODY_BYTES", default_value_t = 6 << 20)]
    max_body_bytes: usize,
    /// Largest request head (request line and headers) in bytes.
    #[arg(long, env = "ERYX_MAX_HEADER_BYTES", default_value_t = 16 << 10)]
    max_header_bytes: usize,
    /// Seconds a client has to send its request head.
    #[arg(long, env = "ERYX_HEADER_READ_TIMEOUT_SECS", default_value_t = 10)]
    header_read_timeout_secs: u64,
    /// Invocations running at once, across functions.
    #[arg(long, env = "ERYX_MAX_CONCURRENCY", default_value_t = 64)]
    max_concurrency: usize,
    /// Invocations waiting for a slot, across functions (503 past it).
    #[arg(long, env = "ERYX_MAX_QUEUE", default_value_t = 512)]
    max_queue: usize,
    /// Invocations of one function running at once.
    #[arg(long, env = "ERYX_FUNCTION_MAX_CONCURRENCY", default_value_t = 32)]
    function_max_concurrency: usize,
    /// Invocations of one function waiting (429 past it).
    #[arg(long, env = "ERYX_FUNCTION_MAX_QUEUE", default_value_t = 256)]
    function_max_queue: usize,
    /// Milliseconds a request may wait in a queue (503 past it).
    #[arg(long, env = "ERYX_QUEUE_TIMEOUT_MS", default_value_t = 10_000)]
    queue_timeout_ms: u64,
    /// Handler timeout for deployments that set none, in ms.
    #[arg(long, env = "ERYX_DEFAULT_TIMEOUT_MS", default_value_t = 10_000)]
    default_timeout_ms: u64,
    /// Memory limit for deployments that set none, in MiB.
    #[arg(long, env = "ERYX_DEFAULT_MEMORY_MB", default_value_t = 128)]
    default_memory_mb: u64,
    /// Log format.
    #[arg(long, env = "ERYX_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

/// Runs the gateway until SIGINT/SIGTERM.
pub fn run(
    args: ServeArgs,
    data_dir: Option<PathBuf>,
    store: Option<String>,
) -> anyhow::Result<ExitCode> {
    let mut limits = eryx_gateway::Limits::default();
    limits.max_body_bytes = args.max_body_bytes;
    limits.max_header_bytes = args.max_header_bytes;
    limits.header_read_timeout = Duration::from_secs(args.header_read_timeout_secs);
    limits.max_concurrency = args.max_concurrency;
    limits.max_queue = args.max_queue;
    limits.function_max_concurrency = args.function_max_concurrency;
    limits.function_max_queue = args.function_max_queue;
    limits.queue_timeout = Duration::from_millis(args.queue_timeout_ms);
    limits.default_timeout_ms = args.default_timeout_ms;
    limits.default_memory_mb = args.default_memory_mb;
    let mut config = eryx_gateway::Config::new()
        .with_listen(args.listen)
        .with_limits(limits);
    if let Some(dir) = data_dir {
        config = config.with_data_dir(dir);
    }
    if let Some(store) = store {
        config = config.with_store(store);
    }
    for token in args.admin_tokens.into_iter().filter(|t| !t.is_empty()) {
        config = config.with_admin_token(token);
    }
    for token in args.invoke_tokens.into_iter().filter(|t| !t.is_empty()) {
        config = config.with_invoke_token(token);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let gateway = eryx_gateway::Gateway::start(config).await?;
        let addr = gateway.local_addr();
        tracing::info!(%addr, "serving http://{addr} (readiness at /readyz)");
        let gateway_ready = gateway.ready();
        tokio::select! {
            ready = gateway_ready => {
                ready?;
            }
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
        gateway.run_until_signal().await;
        Ok(ExitCode::SUCCESS)
    })
}
