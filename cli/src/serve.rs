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
    /// A file of admin tokens, one per line (blank lines and lines starting
    /// with `#` are skipped), added to --admin-token: a mounted secret keeps
    /// tokens out of the process's environment.
    #[arg(long = "admin-tokens-file", env = "ERYX_ADMIN_TOKENS_FILE")]
    admin_tokens_file: Option<PathBuf>,
    /// A file of invoke-only tokens, one per line, added to --invoke-token.
    #[arg(long = "invoke-tokens-file", env = "ERYX_INVOKE_TOKENS_FILE")]
    invoke_tokens_file: Option<PathBuf>,
    /// Largest request body in bytes (413 past it) [default: 6 MiB].
    #[arg(long, env = "ERYX_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// Largest request head (request line and headers) in bytes [default: 16 KiB].
    #[arg(long, env = "ERYX_MAX_HEADER_BYTES")]
    max_header_bytes: Option<usize>,
    /// Seconds a client has to send its request head [default: 10].
    #[arg(long, env = "ERYX_HEADER_READ_TIMEOUT_SECS")]
    header_read_timeout_secs: Option<u64>,
    /// Seconds a client has to send its request body [default: 30].
    #[arg(long, env = "ERYX_BODY_READ_TIMEOUT_SECS")]
    body_read_timeout_secs: Option<u64>,
    /// Open connections at once; further clients wait [default: 1024].
    #[arg(long, env = "ERYX_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Largest handler result in bytes (500 `result_too_large` past it) [default: 6 MiB].
    #[arg(long, env = "ERYX_MAX_RESPONSE_BYTES")]
    max_response_bytes: Option<usize>,
    /// Invocations running at once, across functions [default: 64].
    #[arg(long, env = "ERYX_MAX_CONCURRENCY")]
    max_concurrency: Option<usize>,
    /// Invocations waiting for a slot, across functions (503 past it) [default: 512].
    #[arg(long, env = "ERYX_MAX_QUEUE")]
    max_queue: Option<usize>,
    /// Invocations of one function running at once [default: 32].
    #[arg(long, env = "ERYX_FUNCTION_MAX_CONCURRENCY")]
    function_max_concurrency: Option<usize>,
    /// Invocations of one function waiting (429 past it) [default: 256].
    #[arg(long, env = "ERYX_FUNCTION_MAX_QUEUE")]
    function_max_queue: Option<usize>,
    /// Milliseconds a request may wait in a queue (503 past it) [default: 10000].
    #[arg(long, env = "ERYX_QUEUE_TIMEOUT_MS")]
    queue_timeout_ms: Option<u64>,
    /// Handler timeout for deployments that set none, in ms [default: 10000].
    #[arg(long, env = "ERYX_DEFAULT_TIMEOUT_MS")]
    default_timeout_ms: Option<u64>,
    /// Memory limit for deployments that set none, in MiB [default: 128].
    #[arg(long, env = "ERYX_DEFAULT_MEMORY_MB")]
    default_memory_mb: Option<u64>,
    /// In-memory /tmp and /work per instance for deployments that set none,
    /// and for sessions, in MiB [default: 64].
    #[arg(long, env = "ERYX_DEFAULT_TMP_MB")]
    default_tmp_mb: Option<u64>,
    /// A network rule that functions listing it in allow_hosts may use to
    /// reach loopback and private addresses (repeatable, or comma-separated
    /// in the variable) [default: none].
    #[arg(
        long = "allow-private-host",
        env = "ERYX_ALLOW_PRIVATE_HOSTS",
        value_delimiter = ','
    )]
    allow_private_hosts: Vec<String>,
    /// Largest local cache of artifacts, in MiB; past it the least recently
    /// used are removed and fetched again from the store when needed
    /// [default: unbounded].
    #[arg(long, env = "ERYX_ARTIFACT_CACHE_MB")]
    artifact_cache_mb: Option<u64>,
    /// Deployments building snapshots at once [default: 2].
    #[arg(long, env = "ERYX_MAX_CONCURRENT_DEPLOYS")]
    max_concurrent_deploys: Option<usize>,
    /// Milliseconds a module's top-level code may run at deploy [default: 30000].
    #[arg(long, env = "ERYX_DEPLOY_IMPORT_TIMEOUT_MS")]
    deploy_import_timeout_ms: Option<u64>,
    /// More `Host` names to serve when no tokens are set (comma-separated;
    /// localhost, 127.0.0.1 and [::1] always are).
    #[arg(
        long = "allowed-host",
        env = "ERYX_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    allowed_hosts: Vec<String>,
    /// Largest pickled state of a session in bytes (413 `state_too_large`
    /// past it, the old state kept) [default: 16 MiB].
    #[arg(long, env = "ERYX_SESSION_STATE_LIMIT_BYTES")]
    session_state_limit_bytes: Option<usize>,
    /// Seconds a session lives after its last use when its creation sets no
    /// `ttl_s` [default: 3600].
    #[arg(long, env = "ERYX_SESSION_TTL_SECS")]
    session_ttl_secs: Option<u64>,
    /// Bytes of session states this replica caches in memory (0: none)
    /// [default: 64 MiB].
    #[arg(long, env = "ERYX_SESSION_CACHE_BYTES")]
    session_cache_bytes: Option<usize>,
    /// Let invoke-only tokens see handler output and tracebacks.
    #[arg(long, env = "ERYX_INVOKE_TOKENS_SEE_DETAILS")]
    invoke_tokens_see_details: bool,
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
    // Defaults live in `Limits::default()` alone; a flag overrides one.
    let mut limits = eryx_gateway::Limits::default();
    let set = |target: &mut usize, value: Option<usize>| {
        if let Some(value) = value {
            *target = value;
        }
    };
    set(&mut limits.max_body_bytes, args.max_body_bytes);
    set(&mut limits.max_header_bytes, args.max_header_bytes);
    set(&mut limits.max_connections, args.max_connections);
    set(&mut limits.max_response_bytes, args.max_response_bytes);
    set(&mut limits.max_concurrency, args.max_concurrency);
    set(&mut limits.max_queue, args.max_queue);
    set(
        &mut limits.function_max_concurrency,
        args.function_max_concurrency,
    );
    set(&mut limits.function_max_queue, args.function_max_queue);
    set(
        &mut limits.session_state_limit_bytes,
        args.session_state_limit_bytes,
    );
    set(&mut limits.session_cache_bytes, args.session_cache_bytes);
    if let Some(secs) = args.session_ttl_secs {
        limits.session_default_ttl = Duration::from_secs(secs);
    }
    set(
        &mut limits.max_concurrent_deploys,
        args.max_concurrent_deploys,
    );
    if let Some(secs) = args.header_read_timeout_secs {
        limits.header_read_timeout = Duration::from_secs(secs);
    }
    if let Some(secs) = args.body_read_timeout_secs {
        limits.body_read_timeout = Duration::from_secs(secs);
    }
    if let Some(ms) = args.queue_timeout_ms {
        limits.queue_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = args.deploy_import_timeout_ms {
        limits.deploy_import_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = args.default_timeout_ms {
        limits.default_timeout_ms = ms;
    }
    if let Some(mb) = args.default_memory_mb {
        limits.default_memory_mb = mb;
    }
    if let Some(mb) = args.default_tmp_mb {
        limits.default_tmp_mb = mb;
    }
    limits.allow_private_hosts = args.allow_private_hosts.clone();
    limits.artifact_cache_bytes = args.artifact_cache_mb.map(|mb| mb.saturating_mul(1 << 20));
    let mut config = eryx_gateway::Config::new()
        .with_listen(args.listen)
        .with_limits(limits);
    if let Some(dir) = data_dir {
        config = config.with_data_dir(dir);
    }
    if let Some(store) = store {
        config = config.with_store(store);
    }
    let mut admin_tokens = args.admin_tokens;
    if let Some(path) = &args.admin_tokens_file {
        admin_tokens.extend(read_tokens(path)?);
    }
    let mut invoke_tokens = args.invoke_tokens;
    if let Some(path) = &args.invoke_tokens_file {
        invoke_tokens.extend(read_tokens(path)?);
    }
    for token in admin_tokens.into_iter().filter(|t| !t.is_empty()) {
        config = config.with_admin_token(token);
    }
    for token in invoke_tokens.into_iter().filter(|t| !t.is_empty()) {
        config = config.with_invoke_token(token);
    }
    for host in args.allowed_hosts.into_iter().filter(|h| !h.is_empty()) {
        config = config.with_allowed_host(host);
    }
    config = config.with_invoke_tokens_see_details(args.invoke_tokens_see_details);
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

/// The tokens in a token file: one per line, surrounding whitespace trimmed,
/// blank lines and `#` comments skipped. A file that names none is an error:
/// an empty mounted secret must not quietly leave the gateway without the
/// tokens it was meant to require.
fn read_tokens(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read token file {}", path.display()))?;
    let tokens: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if tokens.is_empty() {
        anyhow::bail!("token file {} names no token", path.display());
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::read_tokens;

    #[test]
    fn token_file_skips_blank_lines_and_comments_and_trims() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# rotated 2026-12\n  first  \n\nsecond\r\n").unwrap();
        assert_eq!(read_tokens(&path).unwrap(), ["first", "second"]);
    }

    #[test]
    fn token_file_without_tokens_or_missing_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# nothing yet\n\n").unwrap();
        let error = read_tokens(&path).unwrap_err().to_string();
        assert!(error.contains("names no token"), "{error}");
        let error = read_tokens(&dir.path().join("absent"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("cannot read token file"), "{error}");
    }
}
