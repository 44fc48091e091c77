//! [`Sessions`]: stateful sessions whose pickled Python state lives in the
//! store, restored into a fresh instance for every request, so any replica
//! can serve any session and a crash loses nothing acknowledged.
//!
//! Store layout, per session `<id>` (32 hex digits, 128 random bits):
//! - `sessions/<id>/head.json`: the signed [`SessionHead`] — owner, version,
//!   and which state object is current. It is the point of truth: a new
//!   version exists once a head naming it is written, and heads are only
//!   written with a **conditional put** on the tag of the head that was read
//!   ([`eryx_store::Condition::Matches`]; created with `Create`). Of two
//!   requests that read version N, exactly one writes N+1; the other gets
//!   [`SessionError::Conflict`] — enforced by the store, across replicas.
//! - `sessions/<id>/states/<version>-<nonce>.zst`: an immutable state, the
//!   pickle compressed with zstd, written (with `Create`) before the head that
//!   names it; its BLAKE3 is in the signed head. The head keeps the object of
//!   the version before too (`previous`), which is deleted one commit later;
//!   objects no head names are removed by [`Sessions::sweep`].
//! - A small state (at most [`INLINE_STATE_BYTES`] compressed) is kept in the
//!   head itself (base64), so a write is one conditional put and a read one
//!   get: the cheap path for the common case.
//!
//! A request that fails (a Python exception, a timeout, the memory limit, a
//! trap, an unreachable store) writes no head, so the stored state is
//! exactly as it was. Executes on one session through this replica run one
//! at a time in arrival order.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eryx_store::{Condition, ETag, Store};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Limits;
use crate::functions::{Deployed, FunctionError, Functions};
use crate::limits::{KeyedLocks, Rejected, Slots};

/// Current [`SessionHead::format`].
const HEAD_FORMAT: u32 = 1;

/// The signing domain of session owners (see [`eryx::SigningKey::sign_hex`]).
const OWNER_DOMAIN: &str = "eryx-session-owner";

/// zstd level of stored states: fast, and pickles of Python values compress
/// well at it.
const ZSTD_LEVEL: i32 = 3;

/// Largest compressed state kept inside the head record (bytes), rather
/// than in an object of its own.
pub(crate) const INLINE_STATE_BYTES: usize = 32 << 10;

/// Largest pickle kept inline (bytes), however well it compresses: an
/// inline state is decompressed on the async worker at every read.
const INLINE_PICKLE_BYTES: usize = 256 << 10;

/// Heads listed by [`Sessions::list`] at most.
const MAX_LISTED: usize = 1000;

/// A session's head record, `sessions/<id>/head.json` (signed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionHead {
    /// Version of this record's format.
    format: u32,
    /// The session's id.
    id: String,
    /// Keyed digest of the token that created it (empty without tokens).
    owner: String,
    /// The function whose snapshot the session runs in, if any.
    function: Option<String>,
    /// 1 at creation, +1 per successful write.
    version: u64,
    /// The current state; `None` until the first write (the snapshot's own
    /// globals are the state then).
    state: Option<StateObject>,
    /// The state object of the version before, deleted at the next write.
    previous: Option<String>,
    /// Names left out of the current state because they could not be pickled.
    skipped: Vec<String>,
    /// Time to live after the last use, in seconds.
    ttl_s: u64,
    /// When the session was created, in ms since the Unix epoch.
    created_unix_ms: u64,
    /// When it was last written, in ms since the Unix epoch.
    last_used_unix_ms: u64,
    /// When it expires, in ms since the Unix epoch.
    expires_unix_ms: u64,
}

/// A stored state, as the head names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StateObject {
    /// Its object's path in the store; `None` when it is `inline`.
    path: Option<String>,
    /// The compressed state itself (base64), when small.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inline: Option<String>,
    /// Size of the pickle, in bytes.
    bytes: u64,
    /// Size of the stored (compressed) object, in bytes.
    stored_bytes: u64,
    /// BLAKE3 (hex) of the stored object.
    blake3: String,
    /// How it is compressed: `zstd`.
    compression: String,
}

/// A session as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SessionInfo {
    /// The session's id.
    pub id: String,
    /// Its current version (1 at creation); also its `ETag`.
    pub version: u64,
    /// The function whose snapshot it runs in, if any.
    pub function: Option<String>,
    /// Size of the pickled state, in bytes (0 before the first write).
    pub state_bytes: u64,
    /// Size of the stored, compressed state, in bytes.
    pub stored_bytes: u64,
    /// How the stored state is compressed (`zstd`), when there is one.
    pub compression: Option<String>,
    /// Names left out of the state because they could not be pickled.
    pub skipped: Vec<String>,
    /// Time to live after the last use, in seconds.
    pub ttl_s: u64,
    /// When it was created (RFC 3339, UTC).
    pub created_at: String,
    /// When it was last written (RFC 3339, UTC).
    pub last_used_at: String,
    /// When it expires unless used again (RFC 3339, UTC).
    pub expires_at: String,
}

impl From<&SessionHead> for SessionInfo {
    fn from(head: &SessionHead) -> SessionInfo {
        let state = head.state.as_ref();
        SessionInfo {
            id: head.id.clone(),
            version: head.version,
            function: head.function.clone(),
            state_bytes: state.map_or(0, |s| s.bytes),
            stored_bytes: state.map_or(0, |s| s.stored_bytes),
            compression: state.map(|s| s.compression.clone()),
            skipped: head.skipped.clone(),
            ttl_s: head.ttl_s,
            created_at: rfc3339(head.created_unix_ms),
            last_used_at: rfc3339(head.last_used_unix_ms),
            expires_at: rfc3339(head.expires_unix_ms),
        }
    }
}

/// `ms` since the Unix epoch as an RFC 3339 timestamp in UTC.
pub(crate) fn rfc3339(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `POST /v1/sessions`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// Run the session in this function's snapshot: its module's globals are
    /// the initial state, and `invoke?session=` calls its handler with them.
    #[serde(default)]
    pub function: Option<String>,
    /// Time to live after the last use, in seconds (default 3600).
    #[serde(default)]
    pub ttl_s: Option<u64>,
}

/// Who is asking, as far as sessions go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Owner {
    /// Keyed digest of the caller's token (empty without tokens).
    digest: String,
    /// Admin tokens (and every caller without tokens) reach every session.
    admin: bool,
    /// Whether the caller may run code in a function's snapshot and read its
    /// module's globals (admins, or invoke tokens allowed to see details):
    /// others may only invoke the handler with a function session.
    inspect_functions: bool,
}

/// A call into an instance with a session's state.
#[derive(Debug, Clone, Copy)]
pub(crate) enum StatefulCall<'a> {
    /// Run code in the session's namespace.
    Execute(&'a str),
    /// Call the function's handler.
    Handler {
        /// The event, as JSON.
        event_json: &'a str,
        /// Who is calling.
        context: &'a eryx::HandlerContext,
    },
}

/// What a [`StatefulCall`] returned.
#[derive(Debug)]
pub(crate) enum CallOutput {
    /// From [`StatefulCall::Execute`].
    Execute(eryx::ExecuteResult),
    /// From [`StatefulCall::Handler`].
    Handler(eryx::HandlerOutput),
}

/// Runs `call` in a fresh instance of `sandbox` with `state` restored.
pub(crate) async fn run_with_state(
    sandbox: &eryx::Sandbox,
    state: Option<&[u8]>,
    call: StatefulCall<'_>,
) -> eryx::Result<(CallOutput, eryx::StateSnapshot)> {
    Ok(match call {
        StatefulCall::Execute(code) => {
            let ran = sandbox.execute_with_state(state, code).await?;
            (CallOutput::Execute(ran.output), ran.state)
        }
        StatefulCall::Handler {
            event_json,
            context,
        } => {
            let ran = sandbox
                .call_handler_with_state(state, event_json, context)
                .await?;
            (CallOutput::Handler(ran.output), ran.state)
        }
    })
}

/// Why a session request failed. Only the HTTP layer picks status codes.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// No such session for this caller: unknown, expired, deleted, or
    /// another token's (which must not learn that it exists).
    #[error("no session {0} (it may have expired, or belong to another token)")]
    NotFound(String),
    /// The session is at another version than the request was based on
    /// (`If-Match`, or a write that lost a race); nothing was written.
    #[error("session {id} is at version {current}; this request was based on version {based_on}")]
    Conflict {
        /// The session.
        id: String,
        /// Its version now.
        current: u64,
        /// The version the request expected.
        based_on: u64,
    },
    /// The new state is over the state limit; the previous one is kept.
    #[error(
        "the session's new state is {size} bytes, over the limit of {limit} bytes; the previous state is kept"
    )]
    StateTooLarge {
        /// Size of the pickle, in bytes.
        size: usize,
        /// The limit, in bytes.
        limit: usize,
    },
    /// The request is malformed (a bad setting, the wrong function).
    #[error("{0}")]
    BadRequest(String),
    /// A state does not unpickle into a dict of globals (an uploaded one,
    /// or a stored one into a function redeployed without what it refers
    /// to), or the new globals cannot be pickled at all. Nothing is saved.
    #[error("the state does not restore or pickle: {0}")]
    BadState(String),
    /// The caller may not do this (run code in a function's snapshot, or
    /// read its globals, with an invoke-only token).
    #[error("{0}")]
    Forbidden(String),
    /// Every slot is taken (gateway-wide or the function's).
    #[error("{what} is at its concurrency limit")]
    Overloaded {
        /// Which limit.
        what: String,
        /// How the wait ended.
        rejected: Rejected,
        /// Whether the limit is the function's (else the gateway's).
        function: bool,
    },
    /// The call failed in the instance (timeout, memory, trap, pool) or,
    /// for handlers, in Python.
    #[error(transparent)]
    Run(eryx::Error),
    /// A stored head or state does not verify (hash, signature, shape).
    #[error("{0}")]
    Integrity(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] eryx_store::Error),
    /// Looking up the session's function failed.
    #[error(transparent)]
    Function(#[from] FunctionError),
}

/// What an execute did: the Python outcome (a Python exception is an
/// outcome, not an error: the session lives on, unchanged) and the version
/// the session is at afterwards.
#[derive(Debug)]
pub(crate) struct Executed {
    /// The result, or the Python exception (the state then is unchanged).
    pub(crate) outcome: Result<eryx::ExecuteResult, eryx::Error>,
    /// The head after the call.
    pub(crate) head: SessionHead,
    /// Where the time went.
    pub(crate) timings: Timings,
}

/// Where a session request's time went (for a `Server-Timing` header).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Timings {
    /// Waiting for the session's lock and reading its head.
    pub(crate) read: Duration,
    /// Reading and decompressing the state (near zero from the cache).
    pub(crate) load: Duration,
    /// A fresh instance: restore, the call, pickling the new state.
    pub(crate) run: Duration,
    /// Compressing and writing the state and the head.
    pub(crate) save: Duration,
}

impl Timings {
    /// As a `Server-Timing` header value (milliseconds).
    pub(crate) fn header(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        format!(
            "read;dur={:.3}, load;dur={:.3}, run;dur={:.3}, save;dur={:.3}",
            ms(self.read),
            ms(self.load),
            ms(self.run),
            ms(self.save)
        )
    }
}

impl Executed {
    /// The session's view after the call.
    pub(crate) fn info(&self) -> SessionInfo {
        SessionInfo::from(&self.head)
    }
}

/// A bounded, least-recently-used cache of decompressed states by object
/// path (objects never change, so an entry is never stale; the head read
/// from the store decides which object is current).
struct StateCache {
    entries: Mutex<CacheEntries>,
    capacity_bytes: usize,
    idle: Duration,
}

struct CacheEntries {
    lru: lru::LruCache<String, (Arc<Vec<u8>>, Instant)>,
    bytes: usize,
}

impl StateCache {
    fn new(capacity_bytes: usize, idle: Duration) -> StateCache {
        StateCache {
            entries: Mutex::new(CacheEntries {
                lru: lru::LruCache::unbounded(),
                bytes: 0,
            }),
            capacity_bytes,
            idle,
        }
    }

    fn get(&self, path: &str) -> Option<Arc<Vec<u8>>> {
        let mut entries = self.entries.lock().expect("lock");
        let (data, used) = entries.lru.get_mut(path)?;
        if used.elapsed() > self.idle {
            let size = data.len();
            entries.lru.pop(path);
            entries.bytes -= size;
            return None;
        }
        *used = Instant::now();
        Some(data.clone())
    }

    fn insert(&self, path: &str, data: Arc<Vec<u8>>) {
        if data.len() > self.capacity_bytes / 4 {
            return;
        }
        let mut entries = self.entries.lock().expect("lock");
        entries.bytes += data.len();
        if let Some((old, _)) = entries.lru.put(path.to_owned(), (data, Instant::now())) {
            entries.bytes -= old.len();
        }
        while entries.bytes > self.capacity_bytes {
            match entries.lru.pop_lru() {
                Some((_, (old, _))) => entries.bytes -= old.len(),
                None => break,
            }
        }
    }
}

/// Stateful sessions: create, execute, invoke, read, replace, delete, sweep.
pub(crate) struct Sessions {
    store: Store,
    key: eryx::SigningKey,
    /// Base sessions run here (default timeout and memory).
    base: eryx::Sandbox,
    functions: Arc<Functions>,
    limits: Limits,
    slots: Arc<Slots>,
    locks: KeyedLocks,
    cache: StateCache,
    /// `eryx_session_writes_total{outcome}`.
    writes: prometheus::IntCounterVec,
    /// `eryx_session_state_cache_total{result}`.
    cache_reads: prometheus::IntCounterVec,
}

fn head_path(id: &str) -> String {
    format!("sessions/{id}/head.json")
}

/// Whether `id` has the shape of a session id (32 lowercase hex digits).
fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// 128 random bits as 32 hex digits.
fn random_hex() -> Result<String, SessionError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| SessionError::Integrity(format!("no randomness from the OS: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Sessions {
    /// Sessions kept in `store`, running base sessions on `base_runtime`
    /// and function sessions on `functions`' snapshots, taking the
    /// gateway-wide `slots`, counting writes and cache reads in `metrics`.
    ///
    /// # Errors
    /// When the base sandbox cannot be configured.
    pub(crate) fn new(
        store: Store,
        key: eryx::SigningKey,
        base_runtime: &eryx::Runtime,
        functions: Arc<Functions>,
        limits: Limits,
        slots: Arc<Slots>,
        metrics: &crate::metrics::Metrics,
    ) -> eryx::Result<Sessions> {
        let base = eryx::Sandbox::builder()
            .with_runtime(base_runtime)
            .with_timeout(Duration::from_millis(limits.default_timeout_ms))
            .with_memory_limit_bytes(limits.default_memory_mb << 20)
            .with_filesystem_limits(crate::functions::fs_limits(limits.default_tmp_mb))
            .with_result_limit_bytes(limits.max_response_bytes)
            .with_state_limit_bytes(limits.session_state_limit_bytes)
            .build()?;
        Ok(Sessions {
            store,
            key,
            base,
            functions,
            cache: StateCache::new(limits.session_cache_bytes, limits.session_cache_idle),
            limits,
            slots,
            locks: KeyedLocks::default(),
            writes: metrics.session_writes.clone(),
            cache_reads: metrics.session_cache.clone(),
        })
    }

    /// The owner identity of a caller presenting `token` (`None` without
    /// tokens); `admin` callers reach every session; `inspect_functions`
    /// callers may execute in and read the state of function sessions.
    pub(crate) fn owner(&self, token: Option<&str>, admin: bool, inspect_functions: bool) -> Owner {
        Owner {
            digest: token.map_or_else(String::new, |t| {
                self.key.sign_hex(OWNER_DOMAIN, t.as_bytes())
            }),
            admin,
            inspect_functions,
        }
    }

    /// Creates a session owned by `owner`, at version 1 with the snapshot's
    /// own globals as its state.
    pub(crate) async fn create(
        &self,
        owner: &Owner,
        request: CreateSession,
    ) -> Result<SessionHead, SessionError> {
        let ttl = match request.ttl_s {
            None => self.limits.session_default_ttl,
            Some(0) => return Err(SessionError::BadRequest("ttl_s must be at least 1".into())),
            Some(s) if Duration::from_secs(s) > self.limits.session_max_ttl => {
                return Err(SessionError::BadRequest(format!(
                    "ttl_s must be at most {}",
                    self.limits.session_max_ttl.as_secs()
                )));
            }
            Some(s) => Duration::from_secs(s),
        };
        if let Some(name) = &request.function {
            self.deployed(name).await?;
        }
        let now = eryx_preinit::unix_ms();
        let head = SessionHead {
            format: HEAD_FORMAT,
            id: random_hex()?,
            owner: owner.digest.clone(),
            function: request.function,
            version: 1,
            state: None,
            previous: None,
            skipped: Vec::new(),
            ttl_s: ttl.as_secs(),
            created_unix_ms: now,
            last_used_unix_ms: now,
            expires_unix_ms: now.saturating_add(ttl.as_millis() as u64),
        };
        self.store
            .put_signed_if(&head_path(&head.id), &head, Condition::Create)
            .await?;
        Ok(head)
    }

    /// The session `id` as `owner` may see it.
    pub(crate) async fn get(&self, owner: &Owner, id: &str) -> Result<SessionHead, SessionError> {
        Ok(self.read(owner, id).await?.0)
    }

    /// Every live session (admin), up to 1000.
    pub(crate) async fn list(&self) -> Result<Vec<SessionHead>, SessionError> {
        let now = eryx_preinit::unix_ms();
        let mut heads = Vec::new();
        for object in self.store.list("sessions").await? {
            let Some(id) = object
                .path
                .strip_prefix("sessions/")
                .and_then(|p| p.strip_suffix("/head.json"))
            else {
                continue;
            };
            match self.store.get_signed::<SessionHead>(&head_path(id)).await {
                Ok(Some(head)) if head.id == id && head.expires_unix_ms > now => heads.push(head),
                Ok(_) => {}
                Err(eryx_store::Error::BadSignature { path }) => {
                    tracing::error!(path, "session head not listed: not signed with this key");
                }
                Err(error) => return Err(error.into()),
            }
            if heads.len() >= MAX_LISTED {
                break;
            }
        }
        heads.sort_by_key(|head| head.created_unix_ms);
        Ok(heads)
    }

    /// Deletes the session: its head first (it no longer exists then), then
    /// its state objects (what is left is swept later).
    pub(crate) async fn delete(&self, owner: &Owner, id: &str) -> Result<(), SessionError> {
        let _guard = self.locked(owner, id, None).await?;
        self.store.delete(&head_path(id)).await?;
        self.remove_objects(id).await;
        Ok(())
    }

    /// The session's pickled state (empty before its first write) and its
    /// head.
    pub(crate) async fn state(
        &self,
        owner: &Owner,
        id: &str,
    ) -> Result<(Arc<Vec<u8>>, SessionHead), SessionError> {
        let (head, _) = self.read(owner, id).await?;
        Sessions::check_inspect(owner, &head)?;
        let data = self.load(&head).await?.unwrap_or_default();
        Ok((data, head))
    }

    /// Runs `code` in a fresh instance with the session's state restored and
    /// saves the state it leaves as the next version. A Python exception is
    /// an outcome: nothing is saved. `if_match` refuses to run unless the
    /// session is at that version.
    pub(crate) async fn execute(
        &self,
        owner: &Owner,
        id: &str,
        code: &str,
        if_match: Option<u64>,
    ) -> Result<Executed, SessionError> {
        let mut timings = Timings::default();
        let began = Instant::now();
        let (_guard, head, tag) = self.locked(owner, id, if_match).await?;
        Sessions::check_inspect(owner, &head)?;
        timings.read = began.elapsed();
        let began = Instant::now();
        let state = self.load(&head).await?;
        timings.load = began.elapsed();
        let began = Instant::now();
        let ran = self
            .run(
                &head,
                state.as_deref().map(|v| &v[..]),
                StatefulCall::Execute(code),
            )
            .await?;
        timings.run = began.elapsed();
        match ran {
            Ok((CallOutput::Execute(result), snapshot)) => {
                let began = Instant::now();
                let head = self.commit(&head, tag, snapshot).await?;
                timings.save = began.elapsed();
                Ok(Executed {
                    outcome: Ok(result),
                    head,
                    timings,
                })
            }
            Ok((CallOutput::Handler(_), _)) => unreachable!("an execute returns its result"),
            Err(
                error @ (eryx::Error::Exception(_)
                | eryx::Error::Compile(_)
                | eryx::Error::Exit { .. }),
            ) => Ok(Executed {
                outcome: Err(error),
                head,
                timings,
            }),
            Err(error) => Err(run_error(error, self.limits.session_state_limit_bytes)),
        }
    }

    /// Calls function `name`'s handler in a fresh instance of its snapshot
    /// with the session's module globals restored, and saves the globals it
    /// leaves as the next version. Any failure saves nothing.
    pub(crate) async fn invoke(
        &self,
        owner: &Owner,
        id: &str,
        name: &str,
        event_json: &str,
        context: &eryx::HandlerContext,
    ) -> Result<(eryx::HandlerOutput, SessionHead), SessionError> {
        let (_guard, head, tag) = self.locked(owner, id, None).await?;
        if head.function.as_deref() != Some(name) {
            return Err(SessionError::BadRequest(format!(
                "session {id} does not belong to function {name} (create it with {{\"function\": \"{name}\"}})"
            )));
        }
        let state = self.load(&head).await?;
        let call = StatefulCall::Handler {
            event_json,
            context,
        };
        match self
            .run(&head, state.as_deref().map(|v| &v[..]), call)
            .await?
        {
            Ok((CallOutput::Handler(output), snapshot)) => {
                let head = self.commit(&head, tag, snapshot).await?;
                Ok((output, head))
            }
            Ok((CallOutput::Execute(_), _)) => unreachable!("a handler call returns its output"),
            Err(error) => Err(run_error(error, self.limits.session_state_limit_bytes)),
        }
    }

    /// Replaces the session's state with an uploaded pickle: it is restored
    /// in a fresh instance (so a hostile pickle runs only inside the sandbox)
    /// and the state that instance then holds is saved as the next version.
    pub(crate) async fn replace_state(
        &self,
        owner: &Owner,
        id: &str,
        data: &[u8],
        if_match: Option<u64>,
    ) -> Result<SessionHead, SessionError> {
        let (_guard, head, tag) = self.locked(owner, id, if_match).await?;
        Sessions::check_inspect(owner, &head)?;
        match self
            .run(&head, Some(data), StatefulCall::Execute(""))
            .await?
        {
            Ok((_, snapshot)) => self.commit(&head, tag, snapshot).await,
            Err(error) => Err(run_error(error, self.limits.session_state_limit_bytes)),
        }
    }

    /// Removes what expired sessions and past versions left in the store:
    /// heads expired for longer than the grace period
    /// ([`Limits::session_sweep_grace`]: longer than any request runs, so
    /// none still running on one is affected) with their objects, and state
    /// objects that no head names, once older than the grace period.
    /// Deleting is idempotent, so replicas may sweep at the same time.
    /// Returns how many objects were deleted.
    pub(crate) async fn sweep(&self) -> Result<usize, SessionError> {
        let grace_ms = self.limits.session_sweep_grace.as_millis() as u64;
        let now = eryx_preinit::unix_ms();
        let mut by_session: std::collections::BTreeMap<String, Vec<eryx_store::ObjectInfo>> =
            Default::default();
        for object in self.store.list("sessions").await? {
            if let Some(id) = object.path.split('/').nth(1).filter(|id| valid_id(id)) {
                by_session.entry(id.to_owned()).or_default().push(object);
            }
        }
        let mut deleted = 0;
        for (id, objects) in by_session {
            let head = match self.store.get_signed::<SessionHead>(&head_path(&id)).await {
                Ok(head) => head,
                // Someone else's bytes: left for an operator to look at.
                Err(eryx_store::Error::BadSignature { .. } | eryx_store::Error::Decode(_)) => {
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            let old =
                |o: &eryx_store::ObjectInfo| now.saturating_sub(o.last_modified_unix_ms) > grace_ms;
            let doomed: Vec<&eryx_store::ObjectInfo> = match &head {
                Some(head) if now.saturating_sub(head.expires_unix_ms) > grace_ms => {
                    self.store.delete(&head_path(&id)).await?;
                    deleted += 1;
                    objects
                        .iter()
                        .filter(|o| !o.path.ends_with("/head.json"))
                        .collect()
                }
                Some(head) => objects
                    .iter()
                    .filter(|o| {
                        !o.path.ends_with("/head.json")
                            && head.state.as_ref().and_then(|s| s.path.as_deref())
                                != Some(o.path.as_str())
                            && head.previous.as_deref() != Some(o.path.as_str())
                            && old(o)
                    })
                    .collect(),
                None => objects.iter().filter(|o| old(o)).collect(),
            };
            for object in doomed {
                self.store.delete(&object.path).await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Takes the session's lock (requests through this replica wait in
    /// arrival order), reads its head and refuses another version than
    /// `if_match`.
    async fn locked(
        &self,
        owner: &Owner,
        id: &str,
        if_match: Option<u64>,
    ) -> Result<(tokio::sync::OwnedMutexGuard<()>, SessionHead, ETag), SessionError> {
        let guard = self.locks.get(id).lock_owned().await;
        let (head, tag) = self.read(owner, id).await?;
        check_version(&head, if_match)?;
        Ok((guard, head, tag))
    }

    /// Refuses code and state access to a function session for a caller who
    /// may only invoke it: its globals hold what the module keeps from its
    /// environment and its callers.
    fn check_inspect(owner: &Owner, head: &SessionHead) -> Result<(), SessionError> {
        match &head.function {
            Some(name) if !owner.inspect_functions => Err(SessionError::Forbidden(format!(
                "this token may only invoke function {name} with this session \
                 (POST /v1/functions/{name}/invoke?session={}), not run code in it or read its state",
                head.id
            ))),
            _ => Ok(()),
        }
    }

    /// Runs `call` for `head`'s session under a gateway slot, in a fresh
    /// instance of its function's snapshot (or the base) with `state`
    /// restored. The outer error is the gateway's (no slot, no function);
    /// the inner one the call's.
    async fn run(
        &self,
        head: &SessionHead,
        state: Option<&[u8]>,
        call: StatefulCall<'_>,
    ) -> Result<eryx::Result<(CallOutput, eryx::StateSnapshot)>, SessionError> {
        let deployed = match &head.function {
            Some(name) => Some(self.deployed(name).await?),
            None => None,
        };
        let _function_slot = match (&deployed, &head.function) {
            (Some(deployed), Some(name)) => Some(self.slot(&deployed.slots, name, true).await?),
            _ => None,
        };
        let _slot = self.slot(&self.slots, "the gateway", false).await?;
        Ok(match &deployed {
            Some(deployed) => deployed.call_with_state(state, call).await,
            None => run_with_state(&self.base, state, call).await,
        })
    }

    /// Reads the head of `id` with its tag, as `owner` may see it: a
    /// malformed id, a missing head, another owner's session and an expired
    /// one are all [`SessionError::NotFound`].
    async fn read(&self, owner: &Owner, id: &str) -> Result<(SessionHead, ETag), SessionError> {
        let not_found = || SessionError::NotFound(id.to_owned());
        if !valid_id(id) {
            return Err(not_found());
        }
        let (head, tag) = match self
            .store
            .get_signed_tagged::<SessionHead>(&head_path(id))
            .await
        {
            Ok(Some(found)) => found,
            Ok(None) => return Err(not_found()),
            Err(eryx_store::Error::BadSignature { .. } | eryx_store::Error::Decode(_)) => {
                return Err(SessionError::Integrity(format!(
                    "the stored head of session {id} is not signed by this gateway's key"
                )));
            }
            Err(error) => return Err(error.into()),
        };
        if head.id != id || head.format != HEAD_FORMAT {
            return Err(SessionError::Integrity(format!(
                "the stored head of session {id} is malformed"
            )));
        }
        if !owner.admin && head.owner != owner.digest {
            return Err(not_found());
        }
        if head.expires_unix_ms <= eryx_preinit::unix_ms() {
            return Err(not_found());
        }
        Ok((head, tag))
    }

    /// The state the head names, decompressed (from the cache when this
    /// replica has it); `None` before the first write.
    async fn load(&self, head: &SessionHead) -> Result<Option<Arc<Vec<u8>>>, SessionError> {
        let Some(object) = &head.state else {
            return Ok(None);
        };
        let (stored, path) = match (&object.inline, &object.path) {
            (Some(inline), _) => {
                use base64::Engine as _;
                let stored = base64::engine::general_purpose::STANDARD
                    .decode(inline)
                    .map_err(|e| {
                        SessionError::Integrity(format!(
                            "the inline state of session {}: {e}",
                            head.id
                        ))
                    })?;
                (bytes::Bytes::from(stored), None)
            }
            (None, Some(path)) => match self.cache.get(path) {
                Some(data) => {
                    self.cache_reads.with_label_values(&["hit"]).inc();
                    return Ok(Some(data));
                }
                None => {
                    self.cache_reads.with_label_values(&["miss"]).inc();
                    (self.fetch_state(head, path).await?, Some(path))
                }
            },
            (None, None) => {
                return Err(SessionError::Integrity(format!(
                    "the head of session {} names no state",
                    head.id
                )));
            }
        };
        let expected = object.blake3.clone();
        let limit = self.limits.session_state_limit_bytes;
        let id = head.id.clone();
        let verify = move || {
            if blake3::hash(&stored).to_hex().as_str() != expected {
                return Err(SessionError::Integrity(format!(
                    "the stored state of session {id} does not match its head"
                )));
            }
            zstd::bulk::decompress(&stored, limit).map_err(|e| {
                SessionError::Integrity(format!("the stored state of session {id}: {e}"))
            })
        };
        let data = match path {
            // Small and already in memory: verified in place.
            None => Arc::new(verify()?),
            // Hashing and decompressing megabytes: off the async workers.
            Some(path) => {
                let data = tokio::task::spawn_blocking(verify)
                    .await
                    .map_err(|e| SessionError::Integrity(format!("decompress task: {e}")))??;
                let data = Arc::new(data);
                self.cache.insert(path, data.clone());
                data
            }
        };
        Ok(Some(data))
    }

    /// Downloads the state object `path` that `head` names; a missing one
    /// means a later write removed it (this head is stale: a conflict).
    async fn fetch_state(
        &self,
        head: &SessionHead,
        path: &str,
    ) -> Result<bytes::Bytes, SessionError> {
        let Some(stored) = self.store.get(path).await? else {
            // Deleted by a write two versions on: this head is stale.
            let current = self
                .store
                .get_signed::<SessionHead>(&head_path(&head.id))
                .await?;
            return Err(match current {
                Some(current) if current.version != head.version => SessionError::Conflict {
                    id: head.id.clone(),
                    current: current.version,
                    based_on: head.version,
                },
                _ => SessionError::Integrity(format!(
                    "the state of session {} version {} is missing from the store",
                    head.id, head.version
                )),
            });
        };
        Ok(stored)
    }

    /// [`write`](Self::write), counted by outcome.
    async fn commit(
        &self,
        head: &SessionHead,
        tag: ETag,
        snapshot: eryx::StateSnapshot,
    ) -> Result<SessionHead, SessionError> {
        let written = self.write(head, tag, snapshot).await;
        let outcome = match &written {
            Ok(_) => "saved",
            Err(SessionError::Conflict { .. }) => "conflict",
            Err(SessionError::StateTooLarge { .. }) => "state_too_large",
            Err(_) => "failed",
        };
        self.writes.with_label_values(&[outcome]).inc();
        written
    }

    /// Writes `snapshot` as the version after `head`: the state object
    /// first, then the head, conditionally on `tag` (the head read). Losing
    /// that race removes the object and is a [`SessionError::Conflict`].
    async fn write(
        &self,
        head: &SessionHead,
        tag: ETag,
        snapshot: eryx::StateSnapshot,
    ) -> Result<SessionHead, SessionError> {
        let limit = self.limits.session_state_limit_bytes;
        if snapshot.data.len() > limit {
            return Err(SessionError::StateTooLarge {
                size: snapshot.data.len(),
                limit,
            });
        }
        let data = Arc::new(snapshot.data);
        let pickle = data.clone();
        let compress = move || {
            let stored = zstd::bulk::compress(&pickle, ZSTD_LEVEL)?;
            let hash = blake3::hash(&stored).to_hex().to_string();
            Ok::<_, std::io::Error>((stored, hash))
        };
        let compressed = if data.len() <= INLINE_PICKLE_BYTES {
            compress()
        } else {
            // Megabytes: off the async workers.
            tokio::task::spawn_blocking(compress)
                .await
                .map_err(|e| SessionError::Integrity(format!("compress task: {e}")))?
        };
        let (stored, blake3) = compressed
            .map_err(|e| SessionError::Integrity(format!("compressing the state: {e}")))?;
        let version = head.version + 1;
        let mut object = StateObject {
            path: None,
            inline: None,
            bytes: data.len() as u64,
            stored_bytes: stored.len() as u64,
            blake3,
            compression: "zstd".into(),
        };
        if stored.len() <= INLINE_STATE_BYTES && data.len() <= INLINE_PICKLE_BYTES {
            use base64::Engine as _;
            object.inline = Some(base64::engine::general_purpose::STANDARD.encode(&stored));
        } else {
            let path = format!(
                "sessions/{}/states/{version:020}-{}.zst",
                head.id,
                &random_hex()?[..16]
            );
            self.store.put_if(&path, stored, Condition::Create).await?;
            object.path = Some(path);
        }
        let path = object.path.clone();
        let now = eryx_preinit::unix_ms();
        let next = SessionHead {
            version,
            state: Some(object),
            previous: head.state.as_ref().and_then(|s| s.path.clone()),
            skipped: snapshot.skipped,
            last_used_unix_ms: now,
            expires_unix_ms: now.saturating_add(head.ttl_s.saturating_mul(1000)),
            ..head.clone()
        };
        match self
            .store
            .put_signed_if(&head_path(&head.id), &next, Condition::Matches(tag))
            .await
        {
            Ok(_) => {}
            Err(eryx_store::Error::Conflict { .. }) => {
                let current = self
                    .store
                    .get_signed::<SessionHead>(&head_path(&head.id))
                    .await?;
                // A put the store retried after applying it is refused on
                // the retry, though it is ours: then it is written.
                let ours = current.as_ref().is_some_and(|c| *c == next);
                if !ours {
                    // Ours is not named by any head: no reader needs it.
                    let named = current
                        .as_ref()
                        .and_then(|c| c.state.as_ref())
                        .and_then(|s| s.path.as_ref());
                    if let Some(path) = path.as_ref().filter(|p| Some(*p) != named) {
                        let _ = self.store.delete(path).await;
                    }
                    return Err(match current {
                        Some(current) => SessionError::Conflict {
                            id: head.id.clone(),
                            current: current.version,
                            based_on: head.version,
                        },
                        None => SessionError::NotFound(head.id.clone()),
                    });
                }
            }
            // Unknown whether the head was written (a timeout after the
            // server applied it): the object stays for the sweep to judge.
            Err(error) => return Err(error.into()),
        }
        // The version before this one's predecessor is now unreachable:
        // deleted after the answer (what fails is left for the sweep).
        if let Some(previous) = head.previous.clone() {
            let (store, id) = (self.store.clone(), head.id.clone());
            tokio::spawn(async move {
                if let Err(error) = store.delete(&previous).await {
                    tracing::warn!(session = id, "old state left for the sweep: {error}");
                }
            });
        }
        if let Some(path) = &path {
            self.cache.insert(path, data);
        }
        Ok(next)
    }

    /// Deletes `id`'s objects; failures are left for the sweep.
    async fn remove_objects(&self, id: &str) {
        match self.store.list(&format!("sessions/{id}")).await {
            Ok(objects) => {
                for object in &objects {
                    if let Err(error) = self.store.delete(&object.path).await {
                        tracing::warn!(session = id, "object left for the sweep: {error}");
                    }
                }
            }
            Err(error) => tracing::warn!(session = id, "objects left for the sweep: {error}"),
        }
    }

    async fn deployed(&self, name: &str) -> Result<Arc<Deployed>, SessionError> {
        self.functions
            .get(name)
            .await
            .map_err(SessionError::Function)?
            .ok_or_else(|| SessionError::BadRequest(format!("no function named {name}")))
    }

    async fn slot(
        &self,
        slots: &Slots,
        what: &str,
        function: bool,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, SessionError> {
        slots
            .acquire(self.limits.queue_timeout)
            .await
            .map_err(|rejected| SessionError::Overloaded {
                what: what.to_owned(),
                rejected,
                function,
            })
    }
}

/// Refuses to run on another version than the one the caller based its
/// request on.
fn check_version(head: &SessionHead, if_match: Option<u64>) -> Result<(), SessionError> {
    match if_match {
        Some(expected) if expected != head.version => Err(SessionError::Conflict {
            id: head.id.clone(),
            current: head.version,
            based_on: expected,
        }),
        _ => Ok(()),
    }
}

/// A failed call as a session error: the state limit and states that do
/// not (un)pickle are their own.
fn run_error(error: eryx::Error, limit: usize) -> SessionError {
    match error {
        eryx::Error::StateTooLarge { size, .. } => SessionError::StateTooLarge { size, limit },
        eryx::Error::State(message) => SessionError::BadState(message),
        error => SessionError::Run(error),
    }
}

impl SessionHead {
    /// Its version.
    pub(crate) fn version(&self) -> u64 {
        self.version
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_keeps_its_byte_bound_by_dropping_the_least_recently_used() {
        let cache = StateCache::new(1000, Duration::from_secs(60));
        cache.insert("a", Arc::new(vec![0; 200]));
        cache.insert("b", Arc::new(vec![0; 200]));
        assert!(cache.get("a").is_some());
        for name in ["c", "d", "e", "f"] {
            cache.insert(name, Arc::new(vec![0; 200]));
        }
        // 6 × 200 bytes over a 1000-byte cache: "b" (least recently used) went.
        assert!(cache.get("b").is_none());
        assert!(cache.get("a").is_some());
        assert!(cache.entries.lock().unwrap().bytes <= 1000);
    }

    #[test]
    fn session_ids_have_128_random_bits() {
        let (a, b) = (random_hex().unwrap(), random_hex().unwrap());
        assert!(valid_id(&a) && valid_id(&b));
        assert_ne!(a, b);
        assert!(!valid_id("../../functions/x"));
    }
}
