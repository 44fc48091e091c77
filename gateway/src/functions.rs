//! [`Functions`]: deployed functions — their records in the artifact store,
//! their per-function snapshots, and the loaded runtimes that serve them.
//!
//! Store layout (beside the base artifacts of `eryx-preinit`):
//! `functions/<name>.json` is a function's [`FunctionRecord`] (written last:
//! it is the point of deployment); `sources/<sha256>.py` its source (kept so
//! a snapshot can be rebuilt for another engine); `bundles/<sha256>.zip` the
//! deploy bundle it came in, if any (see [`crate::bundle`]); `artifacts/<key>.json` and
//! `artifacts/<key>.cwasm.delta` its precompiled snapshot, content-addressed like the
//! base's and stored as a delta against the base's `.cwasm`
//! ([`ArtifactStore::publish_delta`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use eryx_preinit::{ArtifactStore, Manifest};
use eryx_store::{Condition, ETag};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::Limits;
use crate::limits::{KeyedLocks, Slots};
use crate::sessions::{CallOutput, StatefulCall, run_with_state};

/// Bumped whenever the per-function snapshot changes in a way its inputs do
/// not show.
const FUNCTION_RECIPE: &str = "eryx-function-v1";

/// Why a functions operation failed. Only the HTTP layer picks status codes.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FunctionError {
    /// The deployment is malformed (a bad handler name, timeout, memory
    /// limit or environment variable).
    #[error("{0}")]
    Invalid(String),
    /// The module failed to import at deploy: a Python exception, syntax
    /// error, exit or trap, with its details (the deployer's to fix).
    #[error("the module failed to import: {0}")]
    ImportFailed(eryx::Error),
    /// The module's top-level code ran past the import timeout.
    #[error("the module's top-level code ran longer than the import timeout of {} ms", .0.as_millis())]
    ImportTimeout(Duration),
    /// Every deploy slot is busy and the queue is full or waited too long.
    #[error("every deploy slot is busy and the deploy queue is full or waited too long")]
    Busy,
    /// The function was deployed elsewhere while this deploy ran; this one
    /// published nothing.
    #[error(
        "function {0} was deployed elsewhere while this deploy ran; nothing was published by this one (retry to deploy over it)"
    )]
    Conflict(String),
    /// A stored record or source does not verify (malformed, or not what
    /// its signed record names).
    #[error("{0}")]
    Integrity(String),
    /// The store failed (unreachable, or a document not signed by this
    /// gateway's key).
    #[error(transparent)]
    Store(#[from] eryx_store::Error),
    /// The artifact pipeline failed (fetching or verifying an artifact).
    #[error(transparent)]
    Pipeline(#[from] eryx_preinit::Error),
    /// Making an instance or loading a snapshot failed in the runtime.
    #[error(transparent)]
    Run(eryx::Error),
    /// A failure of the gateway itself (a task that panicked, a missing
    /// source).
    #[error("{0}")]
    Internal(String),
}

impl FunctionError {
    /// Whether a stored document failed its check: such a record is not
    /// listed, and may still be deleted or deployed over.
    pub(crate) fn is_integrity(&self) -> bool {
        matches!(
            self,
            FunctionError::Integrity(_)
                | FunctionError::Store(eryx_store::Error::BadSignature { .. })
                | FunctionError::Pipeline(eryx_preinit::Error::Store(
                    eryx_store::Error::BadSignature { .. }
                ))
        )
    }
}

/// A deployed function, as stored in `functions/<name>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionRecord {
    /// The function's name (`[a-z0-9-]{1,63}`).
    pub name: String,
    /// 1 for the first deployment, then +1 per redeployment.
    pub version: u64,
    /// Name of the handler function in the module.
    pub handler: String,
    /// Timeout of each invocation, in milliseconds.
    pub timeout_ms: u64,
    /// Memory limit of each instance, in MiB.
    pub memory_mb: u64,
    /// Cap of each instance's in-memory `/tmp` and `/work`, in MiB (records
    /// written before it existed read as 64).
    #[serde(default = "default_tmp_mb")]
    pub tmp_mb: u64,
    /// Hosts the handler may connect to (network rules, see
    /// [`eryx::NetworkPolicy`]); empty: none.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    /// Environment variables the handler sees in `os.environ`.
    pub env: BTreeMap<String, String>,
    /// Key of the per-function snapshot artifact.
    pub artifact: String,
    /// sha256 (hex) of the source, stored at `sources/<sha256>.py`.
    pub source_sha256: String,
    /// Size of the source in bytes.
    pub source_bytes: u64,
    /// sha256 (hex) of the deploy bundle (`bundles/<sha256>.zip`) whose
    /// modules and wheels the function imports, if it came in one.
    #[serde(default)]
    pub bundle_sha256: Option<String>,
    /// When this version was deployed, in ms since the Unix epoch.
    pub created_unix_ms: u64,
}

fn default_tmp_mb() -> u64 {
    64
}

/// The filesystem caps of an instance with `tmp_mb` MiB of file contents.
pub(crate) fn fs_limits(tmp_mb: u64) -> eryx::FsLimits {
    eryx::FsLimits {
        max_bytes: tmp_mb << 20,
        ..eryx::FsLimits::default()
    }
}

/// The network policy of a function allowing `hosts`: each rule to public
/// addresses, or also to private ones when the operator listed the same rule
/// in `private`.
///
/// # Errors
/// [`eryx::Error::Config`] naming a rule that does not parse.
pub(crate) fn network_policy(
    hosts: &[String],
    private: &[String],
) -> eryx::Result<eryx::NetworkPolicy> {
    let mut policy = eryx::NetworkPolicy::new();
    for host in hosts {
        policy = if private.iter().any(|p| p.eq_ignore_ascii_case(host)) {
            policy.allow_private(host)?
        } else {
            policy.allow(host)?
        };
    }
    Ok(policy)
}

/// A function as the API shows it (the environment's names, not values).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FunctionInfo {
    /// The function's name.
    pub name: String,
    /// Current version (1 for the first deployment).
    pub version: u64,
    /// Handler function name.
    pub handler: String,
    /// Invocation timeout in milliseconds.
    pub timeout_ms: u64,
    /// Memory limit per instance in MiB.
    pub memory_mb: u64,
    /// In-memory filesystem (`/tmp`, `/work`) per instance in MiB.
    pub tmp_mb: u64,
    /// Hosts it may connect to.
    pub allow_hosts: Vec<String>,
    /// Names of the environment variables set for it.
    pub env_keys: Vec<String>,
    /// Key (sha256) of its per-function snapshot artifact.
    pub artifact: String,
    /// sha256 of its source.
    pub source_sha256: String,
    /// Size of its source in bytes.
    pub source_bytes: u64,
    /// sha256 of the deploy bundle it came in, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle_sha256: Option<String>,
    /// When this version was deployed, in ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// How this replica serves it, when it has loaded it: `snapshot` (from
    /// its compiled per-function snapshot) or `interim` (while that compiles:
    /// a base instance imports the module on every request).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serving: Option<String>,
}

impl From<&FunctionRecord> for FunctionInfo {
    fn from(record: &FunctionRecord) -> FunctionInfo {
        FunctionInfo {
            name: record.name.clone(),
            version: record.version,
            handler: record.handler.clone(),
            timeout_ms: record.timeout_ms,
            memory_mb: record.memory_mb,
            tmp_mb: record.tmp_mb,
            allow_hosts: record.allow_hosts.clone(),
            env_keys: record.env.keys().cloned().collect(),
            artifact: record.artifact.clone(),
            source_sha256: record.source_sha256.clone(),
            source_bytes: record.source_bytes,
            bundle_sha256: record.bundle_sha256.clone(),
            created_unix_ms: record.created_unix_ms,
            serving: None,
        }
    }
}

/// A deployment: the source and optional settings.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// The module's Python source.
    pub source: String,
    /// Handler function name (default `handler`).
    #[serde(default)]
    pub handler: Option<String>,
    /// Invocation timeout in milliseconds (default from the gateway's limits).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Memory limit per instance in MiB (default from the gateway's limits).
    #[serde(default)]
    pub memory_mb: Option<u64>,
    /// Writable in-memory filesystem (`/tmp`, `/work`) per instance in MiB
    /// (default from the gateway's limits, 64).
    #[serde(default)]
    pub tmp_mb: Option<u64>,
    /// Hosts the handler may connect to, as network rules:
    /// `api.example.com` (ports 80 and 443), `https://api.example.com`,
    /// `*.example.com`, `host:8443` (default none: no network). Names must
    /// resolve to public addresses unless the gateway's operator opened the
    /// same rule to private ones.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    /// Environment variables for the handler.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl DeployRequest {
    /// A deployment of `source` with every setting at the gateway's default.
    pub(crate) fn with_source(source: String) -> DeployRequest {
        DeployRequest {
            source,
            handler: None,
            timeout_ms: None,
            memory_mb: None,
            tmp_mb: None,
            allow_hosts: Vec::new(),
            env: BTreeMap::new(),
        }
    }
}

/// The answer to a successful deployment.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeployResponse {
    /// The function as now deployed.
    pub function: FunctionInfo,
    /// Whether the compiled per-function snapshot already existed (same
    /// source and handler on the same base), so nothing was built.
    pub cached: bool,
    /// Whether invocations already run from the compiled snapshot. When
    /// false it is compiling in the background and the function is served
    /// meanwhile by importing the module per request (`?wait=true` waits).
    pub compiled: bool,
    /// Timings in milliseconds: `snapshot_ms` (import the module and
    /// snapshot the instance), `compile_ms` (Cranelift, mostly cache hits;
    /// present when waited for), `total_ms`.
    pub timings_ms: BTreeMap<String, u64>,
    /// What the module's top-level code printed.
    pub stdout: String,
    /// What it wrote to stderr.
    pub stderr: String,
}

/// How a deployed function's invocations get their instance.
#[derive(Debug)]
pub(crate) enum Serving {
    /// A fresh instance of the function's compiled snapshot: the module is
    /// already imported.
    Snapshot(eryx::Sandbox),
    /// While the snapshot compiles: a fresh instance of the base that imports
    /// the module, then calls the handler.
    Interim(Interim),
}

/// How a function is served while its snapshot compiles.
#[derive(Debug)]
pub(crate) struct Interim {
    sandbox: eryx::Sandbox,
    module_name: String,
    source: Arc<str>,
    import_timeout: Duration,
}

impl Interim {
    /// A fresh base instance with the module imported (`handler` checked).
    async fn session(&self, handler: &str) -> eryx::Result<eryx::Session> {
        let mut session = self.sandbox.session().await?;
        session
            .load_function(&eryx::FunctionSource {
                module_name: &self.module_name,
                source: &self.source,
                handler,
                import_timeout: self.import_timeout,
                memory_limit_bytes: None,
            })
            .await?;
        Ok(session)
    }
}

/// A function ready to serve: its record, how it is served, and its
/// concurrency slots.
#[derive(Debug)]
pub(crate) struct Deployed {
    pub(crate) record: FunctionRecord,
    pub(crate) serving: Serving,
    pub(crate) slots: Arc<Slots>,
}

impl Deployed {
    /// Calls the handler in a fresh instance.
    pub(crate) async fn call(
        &self,
        event_json: &str,
        context: &eryx::HandlerContext,
    ) -> eryx::Result<eryx::HandlerOutput> {
        match &self.serving {
            Serving::Snapshot(sandbox) => sandbox.call_handler(event_json, context).await,
            Serving::Interim(interim) => {
                let mut session = interim.session(&self.record.handler).await?;
                session.call_handler(event_json, context).await
            }
        }
    }

    /// Runs `call` in a fresh instance with a session's `state` restored
    /// into the module's globals, and returns what it left (see
    /// [`eryx::Sandbox::execute_with_state`]).
    pub(crate) async fn call_with_state(
        &self,
        state: Option<&[u8]>,
        call: StatefulCall<'_>,
    ) -> eryx::Result<(CallOutput, eryx::StateSnapshot)> {
        match &self.serving {
            // Code run in a function's session is an operator's, not the
            // handler's: it gets no host API (kv writes, logs as the function).
            Serving::Snapshot(sandbox) => match call {
                StatefulCall::Execute(_) => {
                    run_with_state(&sandbox.without_callbacks(), state, call).await
                }
                StatefulCall::Handler { .. } => run_with_state(sandbox, state, call).await,
            },
            Serving::Interim(interim) => {
                let mut session = interim.session(&self.record.handler).await?;
                if matches!(call, StatefulCall::Execute(_)) {
                    session.clear_callbacks();
                }
                if let Some(data) = state {
                    session
                        .restore_state(&eryx::StateSnapshot::from_bytes(data.to_vec()))
                        .await?;
                }
                let output = match call {
                    StatefulCall::Execute(code) => {
                        CallOutput::Execute(session.execute(code).await?)
                    }
                    StatefulCall::Handler {
                        event_json,
                        context,
                    } => CallOutput::Handler(session.call_handler(event_json, context).await?),
                };
                Ok((output, session.snapshot_state().await?))
            }
        }
    }

    /// The API's view, with how it is served.
    pub(crate) fn info(&self) -> FunctionInfo {
        let mut info = FunctionInfo::from(&self.record);
        info.serving = Some(
            match self.serving {
                Serving::Snapshot(_) => "snapshot",
                Serving::Interim(_) => "interim",
            }
            .to_owned(),
        );
        info
    }
}

/// Deployed functions and the means to deploy more.
pub(crate) struct Functions {
    engine: eryx::Engine,
    store: ArtifactStore,
    base: Manifest,
    base_runtime: eryx::Runtime,
    builder: eryx::FunctionBuilder,
    limits: Limits,
    queue_gauge: prometheus::IntGauge,
    deployed: RwLock<HashMap<String, Arc<Deployed>>>,
    /// Snapshot builds at once (bounded, with a queue): a slow deploy takes
    /// one slot, never the whole gateway.
    deploys: Slots,
    /// One deploy or delete at a time per function name (single flight), so
    /// versions count up without gaps or repeats on this replica.
    name_locks: KeyedLocks,
    /// Background compiles run one at a time (each uses every core).
    compile_lock: tokio::sync::Mutex<()>,
    /// Where sandboxes unpack the host API's modules.
    data_dir: std::path::PathBuf,
    /// The host API's modules ([`crate::host_api`]), installed in the data
    /// directory: mounted first in every function instance, and at deploy.
    host_mount: std::path::PathBuf,
}

/// Whether `name` is a valid function name: `[a-z0-9-]{1,63}`.
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn valid_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn record_path(name: &str) -> String {
    format!("functions/{name}.json")
}

fn module_name(function: &str) -> String {
    function.replace('-', "_")
}

/// A function's snapshot being built: the interim deployment and the
/// background compile that replaces it.
struct Pending {
    deployed: Arc<Deployed>,
    snapshot: eryx::FunctionSnapshot,
}

impl Functions {
    /// Opens the deployed functions over a ready base: `builder` makes
    /// snapshots of the base artifact `base`, whose runtime is `base_runtime`
    /// (on the engine every function runs on).
    pub(crate) fn new(
        store: ArtifactStore,
        base: Manifest,
        base_runtime: eryx::Runtime,
        builder: eryx::FunctionBuilder,
        limits: Limits,
        queue_gauge: prometheus::IntGauge,
        data_dir: std::path::PathBuf,
    ) -> Result<Functions, FunctionError> {
        let host_mount = crate::host_api::library(store.objects(), "-")
            .install(&data_dir)
            .map_err(|e| FunctionError::Internal(format!("installing the host API: {e}")))?
            .ok_or_else(|| FunctionError::Internal("the host API has no modules".into()))?;
        let deploys = Slots::new(
            limits.max_concurrent_deploys.max(1),
            limits.max_deploy_queue,
            prometheus::IntGauge::new("eryx_deploy_queue", "unregistered").expect("gauge"),
        );
        Ok(Functions {
            engine: base_runtime.engine().clone(),
            store,
            base,
            base_runtime,
            builder,
            limits,
            queue_gauge,
            deployed: RwLock::new(HashMap::new()),
            deploys,
            name_locks: KeyedLocks::default(),
            compile_lock: tokio::sync::Mutex::new(()),
            data_dir,
            host_mount,
        })
    }

    /// Loads every function recorded in the store (at start-up). A function
    /// that fails to load is logged and skipped; it is loaded again on its
    /// next invocation.
    pub(crate) async fn load_all(self: &Arc<Self>) -> Result<usize, FunctionError> {
        let mut loaded = 0;
        for name in self.record_names().await? {
            let name = name.as_str();
            match self.load(name).await {
                Ok(Some(_)) => loaded += 1,
                Ok(None) => {}
                Err(error) => tracing::warn!(function = name, "not loaded: {error}"),
            }
        }
        Ok(loaded)
    }

    /// The deployed function `name`: from memory, else from the store (a
    /// function another replica deployed). `None` when there is none.
    pub(crate) async fn get(
        self: &Arc<Self>,
        name: &str,
    ) -> Result<Option<Arc<Deployed>>, FunctionError> {
        if let Some(found) = self.deployed.read().expect("lock").get(name) {
            return Ok(Some(found.clone()));
        }
        // Single flight: concurrent first requests load the function once.
        let lock = self.name_lock(name);
        let _guard = lock.lock().await;
        if let Some(found) = self.deployed.read().expect("lock").get(name) {
            return Ok(Some(found.clone()));
        }
        self.load(name).await
    }

    /// Brings the loaded functions in line with the store: a function whose
    /// record changed (another replica redeployed it) is reloaded, one whose
    /// record is gone is dropped. Store errors leave everything as it is.
    pub(crate) async fn refresh(self: &Arc<Self>) {
        let loaded: Vec<(String, FunctionRecord)> = self
            .deployed
            .read()
            .expect("lock")
            .iter()
            .map(|(name, d)| (name.clone(), d.record.clone()))
            .collect();
        for (name, record) in loaded {
            // Under the name's lock, so a refresh never undoes a deploy or
            // delete made here meanwhile.
            let lock = self.name_lock(&name);
            let _guard = lock.lock().await;
            let current = self
                .deployed
                .read()
                .expect("lock")
                .get(&name)
                .map(|d| d.record.clone());
            if current.as_ref() != Some(&record) {
                continue;
            }
            match self.read_record(&name).await {
                Ok(Some(stored)) if stored == record => {}
                Ok(Some(_)) => {
                    if let Err(error) = self.load(&name).await {
                        tracing::warn!(function = name, "reloading failed: {error}");
                    } else {
                        tracing::info!(function = name, "reloaded: redeployed elsewhere");
                    }
                }
                Ok(None) => {
                    let mut map = self.deployed.write().expect("lock");
                    if map.get(&name).is_some_and(|d| d.record == record) {
                        map.remove(&name);
                        tracing::info!(function = name, "dropped: deleted elsewhere");
                    }
                }
                Err(error) => {
                    tracing::warn!(function = name, "refresh skipped: {error}");
                }
            }
        }
    }

    /// Reads `name`'s record from the store and makes it servable; a
    /// snapshot that is missing or was compiled by another engine is rebuilt
    /// from the stored source (served interim meanwhile).
    async fn load(self: &Arc<Self>, name: &str) -> Result<Option<Arc<Deployed>>, FunctionError> {
        let Some(record) = self.read_record(name).await? else {
            return Ok(None);
        };
        self.ensure_bundle(&record).await?;
        let compiled = match self.compiled(&record.artifact).await {
            Some(manifest) => {
                let slots = self.new_slots();
                match self.serve_snapshot(record.clone(), &manifest, slots).await {
                    Ok(deployed) => Some(Arc::new(deployed)),
                    // Missing, collected or unverifiable pieces: rebuild it.
                    Err(FunctionError::Pipeline(error)) => {
                        tracing::warn!(function = name, "rebuilding the snapshot: {error}");
                        None
                    }
                    Err(error) => return Err(error),
                }
            }
            None => None,
        };
        let deployed = match compiled {
            Some(deployed) => deployed,
            None => {
                let source = self
                    .store
                    .objects()
                    .get(&format!("sources/{}.py", record.source_sha256))
                    .await?
                    .ok_or_else(|| {
                        FunctionError::Internal(format!("the source of function {name} is missing"))
                    })?;
                // The record is signed; the source is checked against it.
                if eryx_preinit::sha256_hex(&source) != record.source_sha256 {
                    return Err(FunctionError::Integrity(format!(
                        "the stored source of function {name} does not match its record"
                    )));
                }
                let source = String::from_utf8_lossy(&source).into_owned();
                let pending = self.prepare(record, &source).await?;
                let deployed = pending.deployed.clone();
                drop(self.spawn_compile(pending));
                deployed
            }
        };
        self.deployed
            .write()
            .expect("lock")
            .insert(name.to_owned(), deployed.clone());
        Ok(Some(deployed))
    }

    /// Unpacks the bundle `record` came in (fetched from the store and
    /// checked against the record's sha256) unless this replica has it.
    async fn ensure_bundle(&self, record: &FunctionRecord) -> Result<(), FunctionError> {
        let Some(sha) = &record.bundle_sha256 else {
            return Ok(());
        };
        if crate::bundle::dir(&self.data_dir, sha).exists() {
            return Ok(());
        }
        let bytes = self
            .store
            .objects()
            .get(&format!("bundles/{sha}.zip"))
            .await?
            .ok_or_else(|| {
                FunctionError::Internal(format!(
                    "the bundle of function {} is missing",
                    record.name
                ))
            })?;
        if eryx_preinit::sha256_hex(&bytes) != *sha {
            return Err(FunctionError::Integrity(format!(
                "the stored bundle of function {} does not match its record",
                record.name
            )));
        }
        let data_dir = self.data_dir.clone();
        tokio::task::spawn_blocking(move || {
            let bundle = crate::bundle::parse(&bytes)?;
            crate::bundle::install(&bundle, &data_dir).map(|_| ())
        })
        .await
        .map_err(|e| FunctionError::Internal(format!("unpack task: {e}")))?
    }

    /// `name`'s record: signed by a holder of the gateway's key, and
    /// naming only well-formed keys (they become store paths and file names).
    async fn read_record(&self, name: &str) -> Result<Option<FunctionRecord>, FunctionError> {
        Ok(self
            .read_record_tagged(name)
            .await?
            .map(|(record, _)| record))
    }

    /// [`read_record`](Self::read_record) with the tag of the version read,
    /// for a conditional put of the next one.
    async fn read_record_tagged(
        &self,
        name: &str,
    ) -> Result<Option<(FunctionRecord, ETag)>, FunctionError> {
        let Some((record, tag)): Option<(FunctionRecord, ETag)> = self
            .store
            .objects()
            .get_signed_tagged(&record_path(name))
            .await?
        else {
            return Ok(None);
        };
        if record.name != name
            || !eryx_preinit::is_artifact_key(&record.artifact)
            || !eryx_preinit::is_artifact_key(&record.source_sha256)
            || record
                .bundle_sha256
                .as_deref()
                .is_some_and(|sha| !eryx_preinit::is_artifact_key(sha))
        {
            return Err(FunctionError::Integrity(format!(
                "the stored record of function {name} is malformed"
            )));
        }
        Ok(Some((record, tag)))
    }

    /// The lock that serializes deploys and deletes of `name`.
    fn name_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.name_locks.get(name)
    }

    /// Names of the functions recorded in the store (`functions/<name>.json`).
    async fn record_names(&self) -> Result<Vec<String>, FunctionError> {
        Ok(self
            .store
            .objects()
            .list("functions")
            .await?
            .iter()
            .filter_map(|o| o.path.strip_prefix("functions/")?.strip_suffix(".json"))
            .map(str::to_owned)
            .collect())
    }

    /// Every function's record in the store, by name.
    pub(crate) async fn list(&self) -> Result<Vec<FunctionRecord>, FunctionError> {
        let mut records = Vec::new();
        for name in self.record_names().await? {
            match self.read_record(&name).await {
                Ok(Some(record)) => records.push(record),
                Ok(None) => {}
                // One bad record (tampered, malformed) must not hide the rest.
                Err(error) if error.is_integrity() => {
                    tracing::error!(function = name, "not listed: {error}");
                }
                Err(error) => return Err(error),
            }
        }
        records.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(records)
    }

    /// Removes the per-function artifacts no function record names any
    /// more (old versions, deleted functions) once they are older than
    /// `grace`; returns how many. The records are listed before the
    /// artifacts, and a deploy writes its record before it publishes its
    /// artifact, so an artifact a deploy on another replica is publishing
    /// right now is either named by a record already listed or younger than
    /// `grace`. The base and artifacts of other recipes are never touched; a
    /// store error stops the collection before anything is removed. A record
    /// that reappears later with the same artifact key (an identical
    /// redeploy) finds its snapshot gone and rebuilds it from the source.
    pub(crate) async fn collect_artifacts(&self, grace: Duration) -> Result<usize, FunctionError> {
        let referenced = self.referenced_artifacts().await?;
        let objects = self.store.objects().list("artifacts").await?;
        let now = eryx_preinit::unix_ms();
        let mut candidates = Vec::new();
        let mut removed = 0;
        for object in objects {
            let Some(key) = object
                .path
                .strip_prefix("artifacts/")
                .and_then(|p| p.strip_suffix(".json"))
            else {
                continue;
            };
            if referenced.contains(key) || key == self.base.key {
                continue;
            }
            let manifest = match self.store.manifest(key).await {
                Ok(Some(manifest)) => manifest,
                Ok(None) => continue,
                // Unsigned or malformed: not ours to judge here.
                Err(eryx_preinit::Error::Store(error)) => return Err(error.into()),
                Err(_) => continue,
            };
            let is_function =
                manifest.inputs.get("recipe").map(String::as_str) == Some(FUNCTION_RECIPE);
            let age = Duration::from_millis(now.saturating_sub(manifest.created_unix_ms));
            if !is_function || age < grace {
                continue;
            }
            candidates.push(key.to_owned());
        }
        if candidates.is_empty() {
            return Ok(0);
        }
        // Records again, right before removing: a deploy that reused one of
        // these artifacts (an identical redeploy) since the first listing
        // keeps it. A deploy that slips in after this still works: the
        // loader rebuilds a snapshot whose pieces are gone.
        let referenced = self.referenced_artifacts().await?;
        for key in candidates {
            if referenced.contains(&key) {
                continue;
            }
            self.store.remove(&key).await?;
            tracing::info!(artifact = key, "removed an artifact no function uses");
            removed += 1;
        }
        Ok(removed)
    }

    /// The artifact keys the functions' records name.
    async fn referenced_artifacts(
        &self,
    ) -> Result<std::collections::HashSet<String>, FunctionError> {
        Ok(self.list().await?.into_iter().map(|r| r.artifact).collect())
    }

    /// Removes `name` (its record; snapshots are content-addressed and kept).
    /// Returns whether it existed.
    pub(crate) async fn delete(&self, name: &str) -> Result<bool, FunctionError> {
        let lock = self.name_lock(name);
        let _guard = lock.lock().await;
        // A record that fails its check (tampered) can still be deleted.
        let existed = match self.read_record(name).await {
            Ok(found) => found.is_some(),
            Err(error) if error.is_integrity() => true,
            Err(error) => return Err(error),
        };
        self.store.objects().delete(&record_path(name)).await?;
        let in_memory = self.deployed.write().expect("lock").remove(name).is_some();
        Ok(existed || in_memory)
    }

    /// Deploys `request` as function `name`: validates it, imports the
    /// module and snapshots it (a failure here is the caller's 400 and leaves
    /// the previous version serving), stores the source and the record, and
    /// serves it — from the compiled snapshot when one exists, else interim
    /// while it compiles in the background (awaited when `wait`).
    pub(crate) async fn deploy(
        self: &Arc<Self>,
        name: &str,
        mut request: DeployRequest,
        bundle_bytes: Option<bytes::Bytes>,
        wait: bool,
    ) -> Result<DeployResponse, FunctionError> {
        let total = Instant::now();
        // A deploy slot first: unpacking a bundle's wheels is memory and CPU
        // work, bounded by the slots like the snapshot build.
        let _slot = self
            .deploys
            .acquire(self.limits.deploy_import_timeout)
            .await
            .map_err(|_| FunctionError::Busy)?;
        // A bundle brings the source and the settings (this runs on a
        // blocking thread: unpacking wheels is CPU work).
        let bundle = match &bundle_bytes {
            Some(bytes) => {
                let bundle = crate::bundle::parse(bytes)?;
                let settings = &bundle.settings;
                request = DeployRequest {
                    source: bundle.main.clone(),
                    handler: settings.handler.clone(),
                    timeout_ms: settings.timeout_ms,
                    memory_mb: settings.memory_mb,
                    tmp_mb: settings.tmp_mb,
                    allow_hosts: settings.allow_hosts.clone(),
                    env: settings.env.clone(),
                };
                Some(bundle)
            }
            None => None,
        };
        let handler = request.handler.unwrap_or_else(|| "handler".to_owned());
        if !valid_identifier(&handler) {
            return Err(FunctionError::Invalid(format!(
                "handler {handler:?} is not a Python identifier"
            )));
        }
        let timeout_ms = request.timeout_ms.unwrap_or(self.limits.default_timeout_ms);
        if !(1..=self.limits.max_timeout_ms).contains(&timeout_ms) {
            return Err(FunctionError::Invalid(format!(
                "timeout_ms must be between 1 and {}",
                self.limits.max_timeout_ms
            )));
        }
        let memory_mb = request.memory_mb.unwrap_or(self.limits.default_memory_mb);
        if !(32..=self.limits.max_memory_mb).contains(&memory_mb) {
            return Err(FunctionError::Invalid(format!(
                "memory_mb must be between 32 and {}",
                self.limits.max_memory_mb
            )));
        }
        let tmp_mb = request.tmp_mb.unwrap_or(self.limits.default_tmp_mb);
        if !(1..=self.limits.max_tmp_mb).contains(&tmp_mb) {
            return Err(FunctionError::Invalid(format!(
                "tmp_mb must be between 1 and {}",
                self.limits.max_tmp_mb
            )));
        }
        if request.allow_hosts.len() > self.limits.max_allow_hosts {
            return Err(FunctionError::Invalid(format!(
                "allow_hosts may list at most {} hosts",
                self.limits.max_allow_hosts
            )));
        }
        network_policy(&request.allow_hosts, &self.limits.allow_private_hosts)
            .map_err(|e| FunctionError::Invalid(e.to_string()))?;
        // The runtime's own rule, checked before any work is done.
        for (key, value) in &request.env {
            eryx::check_env(key, value).map_err(|e| FunctionError::Invalid(e.to_string()))?;
        }
        let lock = self.name_lock(name);
        let _guard = lock.lock().await;
        let source_sha256 = eryx_preinit::sha256_hex(request.source.as_bytes());
        // A redeploy replaces a record that fails its check (tampered); its
        // version cannot be trusted, so the count restarts at 1. Otherwise
        // the new record is written only over the one read here (or only
        // where none is): of two replicas deploying at once, one publishes
        // the next version and the other gets a conflict.
        let (previous, condition) = match self.read_record_tagged(name).await {
            Err(error) if error.is_integrity() => {
                tracing::error!(function = name, "replacing an unverifiable record: {error}");
                (None, None)
            }
            Ok(Some((record, tag))) => (Some(record), Some(Condition::Matches(tag))),
            Ok(None) => (None, Some(Condition::Create)),
            Err(error) => return Err(error),
        };
        let bundle_sha256 = bundle.as_ref().map(|b| b.sha256.clone());
        if let Some(bundle) = &bundle {
            crate::bundle::install(bundle, &self.data_dir)?;
        }
        let mut record = FunctionRecord {
            name: name.to_owned(),
            version: previous.as_ref().map_or(1, |p| p.version + 1),
            artifact: self.artifact_key(name, &handler, &request.source, bundle_sha256.as_deref()),
            bundle_sha256,
            handler,
            timeout_ms,
            memory_mb,
            tmp_mb,
            allow_hosts: request.allow_hosts,
            env: request.env,
            source_sha256: source_sha256.clone(),
            source_bytes: request.source.len() as u64,
            created_unix_ms: eryx_preinit::unix_ms(),
        };
        // Deploying exactly what is deployed (same source, handler and
        // settings) keeps its version: a retried deploy is not a new release.
        if let Some(previous) = previous {
            let unchanged = FunctionRecord {
                version: previous.version,
                created_unix_ms: previous.created_unix_ms,
                ..record.clone()
            };
            if unchanged == previous {
                record = unchanged;
            }
        }
        let mut timings_ms = BTreeMap::new();
        let (deployed, cached, compile, stdout, stderr) =
            match self.compiled(&record.artifact).await {
                Some(manifest) => {
                    let deployed = self
                        .serve_snapshot(record.clone(), &manifest, self.new_slots())
                        .await?;
                    (Arc::new(deployed), true, None, String::new(), String::new())
                }
                None => {
                    let pending = self.prepare(record.clone(), &request.source).await?;
                    timings_ms.insert(
                        "snapshot_ms".into(),
                        pending.snapshot.snapshot_time.as_millis() as u64,
                    );
                    let (stdout, stderr) = (
                        pending.snapshot.stdout.clone(),
                        pending.snapshot.stderr.clone(),
                    );
                    let deployed = pending.deployed.clone();
                    (deployed, false, Some(pending), stdout, stderr)
                }
            };
        let objects = self.store.objects();
        objects
            .put(
                &format!("sources/{source_sha256}.py"),
                request.source.into_bytes(),
            )
            .await?;
        if let (Some(bytes), Some(sha)) = (bundle_bytes, &record.bundle_sha256) {
            objects.put(&format!("bundles/{sha}.zip"), bytes).await?;
        }
        // The record is written last (signed): until then the previous
        // version is the deployed one, here and for every other replica.
        let written = match condition {
            Some(condition) => {
                objects
                    .put_signed_if(&record_path(name), &record, condition)
                    .await
            }
            None => objects.put_signed(&record_path(name), &record).await,
        };
        written.map_err(|error| match error {
            eryx_store::Error::Conflict { .. } => FunctionError::Conflict(name.to_owned()),
            error => error.into(),
        })?;
        self.deployed
            .write()
            .expect("lock")
            .insert(name.to_owned(), deployed.clone());
        drop(_guard);
        drop(_slot);
        let mut compiled = cached;
        if let Some(pending) = compile {
            let task = self.spawn_compile(pending);
            if wait {
                let compile_ms = task
                    .await
                    .map_err(|e| FunctionError::Internal(format!("compile task: {e}")))??;
                timings_ms.insert("compile_ms".into(), compile_ms);
                compiled = true;
            }
        }
        timings_ms.insert("total_ms".into(), total.elapsed().as_millis() as u64);
        let mut function = deployed.info();
        if compiled {
            function.serving = Some("snapshot".into());
        }
        Ok(DeployResponse {
            function,
            cached,
            compiled,
            timings_ms,
            stdout,
            stderr,
        })
    }

    /// The content-addressed key of a function's snapshot on this base.
    fn artifact_key(
        &self,
        name: &str,
        handler: &str,
        source: &str,
        bundle: Option<&str>,
    ) -> String {
        let mut hasher = Sha256::new();
        for part in [
            self.base.key.as_str(),
            FUNCTION_RECIPE,
            // The host API's modules are imported with the module; their
            // directory is named by their content hash.
            &self
                .host_mount
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            &module_name(name),
            handler,
            source,
            // The bundle's modules are imported with it.
            bundle.unwrap_or(""),
        ] {
            hasher.update(part.as_bytes());
            hasher.update([0]);
        }
        hex::encode(hasher.finalize())
    }

    /// The manifest of a compiled snapshot usable by this engine, if stored.
    async fn compiled(&self, key: &str) -> Option<Manifest> {
        match self.store.manifest(key).await {
            Ok(Some(manifest)) if manifest.engine == self.engine.fingerprint() => {
                // A delta against other bytes than this replica's base (a
                // base rebuilt under its key since) cannot be rebuilt here.
                match &manifest.delta {
                    Some(delta)
                        if delta.base_key != self.base.key
                            || delta.base_blake3 != self.base.blake3 =>
                    {
                        None
                    }
                    _ => Some(manifest),
                }
            }
            _ => None,
        }
    }

    fn new_slots(&self) -> Arc<Slots> {
        Arc::new(Slots::new(
            self.limits.function_max_concurrency,
            self.limits.function_max_queue,
            self.queue_gauge.clone(),
        ))
    }

    fn sandbox(
        &self,
        runtime: &eryx::Runtime,
        record: &FunctionRecord,
    ) -> Result<eryx::Sandbox, FunctionError> {
        let mut sandbox = eryx::Sandbox::builder()
            .with_runtime(runtime)
            .with_timeout(Duration::from_millis(record.timeout_ms))
            .with_result_limit_bytes(self.limits.max_response_bytes)
            .with_memory_limit_bytes(record.memory_mb << 20)
            .with_filesystem_limits(fs_limits(record.tmp_mb))
            .with_network(
                network_policy(&record.allow_hosts, &self.limits.allow_private_hosts)
                    .map_err(|e| FunctionError::Invalid(e.to_string()))?,
            )
            .with_library(crate::host_api::library(self.store.objects(), &record.name))
            .with_resource_limits(
                eryx::ResourceLimits::default()
                    .with_max_callback_invocations(crate::host_api::MAX_CALLBACKS_PER_CALL)
                    .with_callback_timeout(crate::host_api::CALLBACK_TIMEOUT),
            )
            .with_data_dir(&self.data_dir);
        if let Some(sha) = &record.bundle_sha256 {
            sandbox = sandbox.with_package_dir(crate::bundle::dir(&self.data_dir, sha));
        }
        for (key, value) in &record.env {
            sandbox = sandbox.with_env(key, value);
        }
        sandbox
            .build()
            .map_err(|e| FunctionError::Invalid(e.to_string()))
    }

    /// Imports the module and snapshots it (the deploy-time check that it
    /// imports and defines its handler); returns the interim deployment.
    async fn prepare(
        &self,
        record: FunctionRecord,
        source: &str,
    ) -> Result<Pending, FunctionError> {
        let module_name = module_name(&record.name);
        let mut mounts = vec![self.host_mount.clone()];
        if let Some(sha) = &record.bundle_sha256 {
            mounts.push(crate::bundle::dir(&self.data_dir, sha));
        }
        let snapshot = self
            .builder
            .snapshot_with_mounts(
                &eryx::FunctionSource {
                    module_name: &module_name,
                    source,
                    handler: &record.handler,
                    import_timeout: self.limits.deploy_import_timeout,
                    memory_limit_bytes: Some(record.memory_mb << 20),
                },
                &mounts,
            )
            .await
            .map_err(|error| match error {
                eryx::Error::Timeout { limit } => FunctionError::ImportTimeout(limit),
                // The module's own failures are the deployer's to fix.
                error @ (eryx::Error::Exception(_)
                | eryx::Error::Compile(_)
                | eryx::Error::Exit { .. }
                | eryx::Error::Trap(_)) => FunctionError::ImportFailed(error),
                error => FunctionError::Run(error),
            })?;
        let deployed = Deployed {
            serving: Serving::Interim(Interim {
                sandbox: self.sandbox(&self.base_runtime, &record)?,
                module_name,
                source: source.into(),
                import_timeout: self.limits.deploy_import_timeout,
            }),
            record,
            slots: self.new_slots(),
        };
        Ok(Pending {
            deployed: Arc::new(deployed),
            snapshot,
        })
    }

    /// Compiles a pending snapshot in the background, publishes it, and
    /// switches the function to it if that version is still the deployed
    /// one. The task's output is the compile time in ms.
    fn spawn_compile(
        self: &Arc<Self>,
        pending: Pending,
    ) -> tokio::task::JoinHandle<Result<u64, FunctionError>> {
        let this = self.clone();
        tokio::spawn(async move {
            let name = pending.deployed.record.name.clone();
            let outcome = this.compile(pending).await;
            if let Err(error) = &outcome {
                tracing::error!(
                    function = name,
                    "compiling the snapshot failed (still served interim): {error}"
                );
            }
            outcome
        })
    }

    async fn compile(&self, pending: Pending) -> Result<u64, FunctionError> {
        let _guard = self.compile_lock.lock().await;
        let record = &pending.deployed.record;
        let start = Instant::now();
        let cwasm = self
            .builder
            .compile(pending.snapshot.wasm)
            .await
            .map_err(|e| {
                FunctionError::Internal(format!("compiling function {}: {e}", record.name))
            })?;
        let compile_ms = start.elapsed().as_millis() as u64;
        let manifest = Manifest::new(
            &record.artifact,
            &cwasm,
            &self.engine,
            BTreeMap::from([
                ("base".to_owned(), self.base.key.clone()),
                ("recipe".to_owned(), FUNCTION_RECIPE.to_owned()),
                ("handler".to_owned(), record.handler.clone()),
                ("source_sha256".to_owned(), record.source_sha256.clone()),
            ]),
            BTreeMap::from([
                (
                    "snapshot_ms".to_owned(),
                    pending.snapshot.snapshot_time.as_millis() as u64,
                ),
                ("compile_ms".to_owned(), compile_ms),
            ]),
        );
        // Stored as a delta against the base: a few MB instead of ≈40.
        let manifest = self
            .store
            .publish_delta(&manifest, cwasm, &self.base)
            .await?;
        let deployed = Arc::new(
            self.serve_snapshot(record.clone(), &manifest, pending.deployed.slots.clone())
                .await?,
        );
        let mut map = self.deployed.write().expect("lock");
        let current = map.get(&record.name);
        if current.is_some_and(|c| c.record == *record) {
            map.insert(record.name.clone(), deployed);
            tracing::info!(
                function = record.name,
                version = record.version,
                compile_ms,
                "serving from the compiled snapshot"
            );
        }
        Ok(compile_ms)
    }

    /// Loads a compiled snapshot and makes the deployment that serves
    /// `record` from it.
    async fn serve_snapshot(
        &self,
        record: FunctionRecord,
        manifest: &Manifest,
        slots: Arc<Slots>,
    ) -> Result<Deployed, FunctionError> {
        let path = self.store.fetch(manifest).await?;
        let builder = eryx::Runtime::builder()
            .with_engine(&self.engine)
            .with_precompiled_file(&path, &manifest.blake3)
            .with_stdlib_dir(self.base_runtime.stdlib_dir());
        // Reading, hashing and deserializing tens of MB: off the async workers.
        let runtime = tokio::task::spawn_blocking(move || builder.build())
            .await
            .map_err(|e| FunctionError::Internal(format!("load task: {e}")))?
            .map_err(|e| {
                FunctionError::Internal(format!("loading function {}: {e}", record.name))
            })?;
        Ok(Deployed {
            serving: Serving::Snapshot(self.sandbox(&runtime, &record)?),
            record,
            slots,
        })
    }
}
