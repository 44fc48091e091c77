//! [`Gateway`]: the listener, its connections, start-up of the base runtime,
//! and graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::functions::Functions;
use crate::limits::Slots;
use crate::metrics::Metrics;
use crate::sessions::Sessions;
use crate::{Config, Error};

/// State shared by every request.
pub(crate) struct AppState {
    pub(crate) config: Config,
    pub(crate) metrics: Metrics,
    /// Gateway-wide invocation slots.
    pub(crate) slots: Arc<Slots>,
    /// Set once start-up is done.
    pub(crate) functions: OnceLock<Arc<Functions>>,
    /// Set once start-up is done, with `functions`.
    pub(crate) sessions: OnceLock<Arc<Sessions>>,
    /// Set when start-up failed.
    pub(crate) startup_error: OnceLock<String>,
}

impl AppState {
    /// Why the gateway is not ready.
    pub(crate) fn startup_detail(&self) -> String {
        match self.startup_error.get() {
            // The error itself is in the log: it names paths and buckets.
            Some(_) => "start-up failed (the gateway's log says why)".to_owned(),
            None => "starting: preparing the base snapshot".to_owned(),
        }
    }
}

/// A running gateway: serving HTTP on [`local_addr`](Gateway::local_addr)
/// until [`shutdown`](Gateway::shutdown).
pub struct Gateway {
    local_addr: SocketAddr,
    state: Arc<AppState>,
    shutdown: watch::Sender<bool>,
    ready: watch::Receiver<Option<Result<(), String>>>,
    server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Binds `config.listen` and starts serving at once: `/healthz` answers
    /// immediately, everything else once the base runtime is ready (on first
    /// use it is built: seconds to minutes; see [`ready`](Gateway::ready)).
    ///
    /// # Errors
    /// [`Error::Config`] when no token is configured and the address is not
    /// loopback (an open gateway would run anyone's code); [`Error::Io`]
    /// when the address cannot be bound.
    pub async fn start(config: Config) -> Result<Gateway, Error> {
        if !config.auth_enabled() && !config.listen.ip().is_loopback() {
            return Err(Error::Config(format!(
                "refusing to listen on {} without tokens: set --admin-token/--invoke-token \
                 (ERYX_ADMIN_TOKENS/ERYX_INVOKE_TOKENS) or listen on a loopback address",
                config.listen
            )));
        }
        let listener = TcpListener::bind(config.listen).await?;
        let local_addr = listener.local_addr()?;
        if config.auth_enabled() {
            tracing::info!(%local_addr, "listening; bearer tokens required");
        } else {
            tracing::warn!(
                %local_addr,
                "listening on loopback only: no tokens are configured, so any local process may deploy and invoke"
            );
        }
        let metrics = Metrics::new();
        let slots = Arc::new(Slots::new(
            config.limits.max_concurrency,
            config.limits.max_queue,
            metrics.queue_depth.clone(),
        ));
        let state = Arc::new(AppState {
            config,
            metrics,
            slots,
            functions: OnceLock::new(),
            sessions: OnceLock::new(),
            startup_error: OnceLock::new(),
        });
        let (ready_tx, ready) = watch::channel(None);
        let startup_state = state.clone();
        let runtime = tokio::runtime::Handle::current();
        // Start-up compiles and pre-initializes on first use: keep it off the
        // async workers.
        tokio::task::spawn_blocking(move || {
            let outcome = runtime.block_on(startup(&startup_state));
            let report = match outcome {
                Ok((functions, sessions)) => {
                    let interval = startup_state.config.limits.refresh_interval;
                    let weak = Arc::downgrade(&functions);
                    runtime.spawn(async move {
                        loop {
                            tokio::time::sleep(interval).await;
                            match weak.upgrade() {
                                Some(functions) => functions.refresh().await,
                                None => break,
                            }
                        }
                    });
                    let limits = &startup_state.config.limits;
                    // At least 100 ms apart: a zero interval must not spin.
                    let interval = limits
                        .artifact_gc_interval
                        .max(std::time::Duration::from_millis(100));
                    let grace = limits.artifact_gc_grace;
                    let weak = Arc::downgrade(&functions);
                    runtime.spawn(async move {
                        loop {
                            tokio::time::sleep(interval).await;
                            let Some(functions) = weak.upgrade() else {
                                break;
                            };
                            match functions.collect_artifacts(grace).await {
                                Ok(0) => {}
                                Ok(removed) => tracing::info!(removed, "collected artifacts"),
                                Err(error) => tracing::warn!("artifact collection failed: {error}"),
                            }
                        }
                    });
                    let interval = startup_state.config.limits.session_sweep_interval;
                    let weak = Arc::downgrade(&sessions);
                    runtime.spawn(async move {
                        loop {
                            tokio::time::sleep(interval).await;
                            let Some(sessions) = weak.upgrade() else {
                                break;
                            };
                            match sessions.sweep().await {
                                Ok(0) => {}
                                Ok(deleted) => tracing::info!(deleted, "swept session objects"),
                                Err(error) => tracing::warn!("session sweep failed: {error}"),
                            }
                        }
                    });
                    let _ = startup_state.functions.set(functions);
                    let _ = startup_state.sessions.set(sessions);
                    tracing::info!("ready");
                    Ok(())
                }
                Err(error) => {
                    tracing::error!("start-up failed: {error}");
                    let _ = startup_state.startup_error.set(error.clone());
                    Err(error)
                }
            };
            let _ = ready_tx.send(Some(report));
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let server = tokio::spawn(serve(listener, state.clone(), shutdown_rx));
        Ok(Gateway {
            local_addr,
            state,
            shutdown,
            ready,
            server,
        })
    }

    /// The address it listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits until the base runtime is ready and earlier deployed functions
    /// are loaded.
    ///
    /// # Errors
    /// [`Error::Startup`] when start-up failed (the gateway keeps answering
    /// `/healthz`, and 503 elsewhere).
    pub async fn ready(&self) -> Result<(), Error> {
        let mut ready = self.ready.clone();
        let outcome = ready
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::Startup("start-up task ended".into()))?
            .clone();
        outcome.expect("waited for Some").map_err(Error::Startup)
    }

    /// Whether start-up is done.
    pub fn is_ready(&self) -> bool {
        self.state.functions.get().is_some()
    }

    /// Stops accepting connections, lets in-flight requests finish (up to
    /// the configured grace period), then returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.server.await;
    }

    /// Serves until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn run_until_signal(self) {
        wait_for_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        self.shutdown().await;
        tracing::info!("stopped");
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Prepares the base runtime and the function builder, then loads the
/// functions already recorded in the store.
async fn startup(state: &AppState) -> Result<(Arc<Functions>, Arc<Sessions>), String> {
    let config = &state.config;
    let data_dir = &config.data_dir;
    let cache_dir = eryx_preinit::cache_dir(data_dir);
    let location = config
        .store
        .clone()
        .unwrap_or_else(|| eryx_preinit::default_store_location(data_dir));
    let key = match &config.signing_key {
        Some(key) => key.clone(),
        None => eryx_preinit::signing_key(data_dir).map_err(|e| e.to_string())?,
    };
    let store = eryx_preinit::ArtifactStore::open_with_options(
        &location,
        &cache_dir,
        &key,
        config
            .store_options
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone())),
    )
    .map_err(|e| e.to_string())?;
    let store = match config.limits.artifact_cache_bytes {
        Some(bytes) => store.with_cache_limit(bytes),
        None => store,
    };
    let pool_size = u32::try_from(config.limits.max_concurrency)
        .unwrap_or(u32::MAX)
        .saturating_add(16);
    let engine = eryx::Engine::new(
        eryx::EngineOptions::default()
            .with_pool_size(pool_size)
            .with_compile_cache(cache_dir.join("compile"), key.clone()),
    )
    .map_err(|e| e.to_string())?;
    let (runtime, report) =
        eryx_preinit::ensure_runtime(data_dir, &store, &engine, &eryx_preinit::LogProgress)
            .await
            .map_err(|e| e.to_string())?;
    tracing::info!(
        artifact = report.manifest.key,
        origin = ?report.origin,
        "base snapshot ready"
    );
    let snapshot = store
        .fetch_snapshot(&report.manifest)
        .await
        .map_err(|e| e.to_string())?;
    let snapshot = std::fs::read(&snapshot).map_err(|e| format!("{}: {e}", snapshot.display()))?;
    let builder = eryx::FunctionBuilder::new(&engine, snapshot, runtime.stdlib_dir())
        .map_err(|e| e.to_string())?;
    let objects = store.objects().clone();
    let functions = Arc::new(
        Functions::new(
            store,
            report.manifest,
            runtime.clone(),
            builder,
            config.limits.clone(),
            state.metrics.queue_depth.clone(),
            config.data_dir.clone(),
        )
        .map_err(|e| e.to_string())?,
    );
    let sessions = Sessions::new(
        objects,
        key,
        &runtime,
        functions.clone(),
        config.limits.clone(),
        state.slots.clone(),
        &state.metrics,
    )
    .map_err(|e| e.to_string())?;
    let loaded = functions.load_all().await.map_err(|e| e.to_string())?;
    tracing::info!(functions = loaded, "loaded deployed functions");
    Ok((functions, Arc::new(sessions)))
}

/// Accepts connections until told to stop, then waits for open connections
/// to finish their requests (up to the grace period).
async fn serve(listener: TcpListener, state: Arc<AppState>, mut shutdown: watch::Receiver<bool>) {
    let limits = state.config.limits.clone();
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    loop {
        // At most `max_connections` open: past it, clients wait in the
        // kernel's backlog instead of costing a task and a buffer each.
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit.expect("never closed"),
            _ = shutdown.changed() => break,
        };
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        // E.g. out of file descriptors: back off briefly.
                        tracing::warn!("accept failed: {error}");
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let service = service_fn(move |request| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(crate::api::handle(state, request).await) }
                });
                let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!("connection ended: {error}");
                    }
                    drop(permit);
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!("grace period over; closing the remaining connections");
        }
    }
}
