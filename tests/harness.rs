//! Shared set-up for the integration tests: the component is built (or found
//! in the data directory) once per machine, and loaded once per test process.
//!
//! Every test runs real CPython 3.14 in real wasm instances; nothing is mocked.

// README.md's Rust examples compile as doctests of this crate (it depends on
// both `eryx` and `eryx-preinit`, as the examples do).
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The runtime every test in this process shares: the base artifact from the
/// default data directory's store (built on first use), on a small pool.
///
/// # Panics
/// When the artifact cannot be built or loaded: the pipeline's error says
/// which step failed.
pub fn runtime() -> &'static eryx::Runtime {
    static RUNTIME: OnceLock<eryx::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| runtime_on(engine()))
}

/// A runtime for the base artifact on `engine` (built on first use).
///
/// # Panics
/// As [`runtime`].
pub fn runtime_on(engine: eryx::Engine) -> eryx::Runtime {
    // Built on a thread of its own: tests call this from inside their async
    // runtime, which cannot block on another.
    std::thread::spawn(move || {
        let data_dir = eryx_preinit::default_data_dir();
        let store = eryx_preinit::ArtifactStore::open(
            &eryx_preinit::default_store_location(&data_dir),
            &eryx_preinit::cache_dir(&data_dir),
            &eryx_preinit::signing_key(&data_dir).expect("the signing key"),
        )
        .expect("opening the default artifact store");
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (runtime, _report) = tokio
            .block_on(eryx_preinit::ensure_runtime(
                &data_dir,
                &store,
                &engine,
                &eryx_preinit::LogProgress,
            ))
            .unwrap_or_else(|e| panic!("building the base artifact: {e}"));
        runtime
    })
    .join()
    .expect("building the runtime panicked")
}

/// The signing key of the default data directory (the one the tests' base
/// artifacts and gateways use).
///
/// # Panics
/// When the key cannot be read or created.
pub fn signing_key() -> eryx::SigningKey {
    eryx_preinit::signing_key(&eryx_preinit::default_data_dir()).expect("the signing key")
}

/// The real interpreter binary, for baselines: `python3` on PATH may be a
/// version-manager shim that adds ~150 ms per start
/// (`../shared/notes/toolchain.md`).
///
/// # Panics
/// When `python3` cannot be run.
pub fn real_python() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 for the baseline");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The standard library directory of the CPython distribution.
pub fn stdlib_dir() -> std::path::PathBuf {
    eryx_preinit::python::ensure_dist(
        &eryx_preinit::default_data_dir(),
        &eryx_preinit::LogProgress,
    )
    .expect("CPython for WASI")
    .stdlib_dir()
}

/// A real wheel from PyPI for the package tests: `(requirement, file name,
/// sha256, extra pip arguments)`.
pub type Wheel = (
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
);

/// attrs, a pure-Python wheel (`py3-none-any`).
pub const ATTRS_WHEEL: Wheel = (
    "attrs==25.3.0",
    "attrs-25.3.0-py3-none-any.whl",
    "427318ce031701fea540783410126f03899a97ffc6f61596ad581ac2e40e3bc3",
    &[],
);

/// pip arguments that pick a `py3-none-any` wheel even where a platform
/// wheel exists (charset-normalizer publishes compiled ones).
const PURE: &[&str] = &[
    "--platform",
    "any",
    "--implementation",
    "py",
    "--python-version",
    "3.14",
];

/// `requests` and its four dependencies, all pure Python: the
/// socket-based client the network tests drive through urllib3.
pub const REQUESTS_WHEELS: [Wheel; 5] = [
    (
        "requests==2.32.3",
        "requests-2.32.3-py3-none-any.whl",
        "70761cfe03c773ceb22aa2f671b4757976145175cdfca038c02654d061d6dcc6",
        PURE,
    ),
    (
        "urllib3==2.3.0",
        "urllib3-2.3.0-py3-none-any.whl",
        "1cee9ad369867bfdbbb48b7dd50374c0967a0bb7710050facf0dd6911440e3df",
        PURE,
    ),
    (
        "idna==3.10",
        "idna-3.10-py3-none-any.whl",
        "946d195a0d259cbba61165e88e65941f16e9b36ea6ddb97f00452bae8b1287d3",
        PURE,
    ),
    (
        "certifi==2025.1.31",
        "certifi-2025.1.31-py3-none-any.whl",
        "ca78db4565a652026a4db2bcdf68f2fb589ea80d0be70e03929ed730746b84fe",
        PURE,
    ),
    (
        "charset-normalizer==3.4.1",
        "charset_normalizer-3.4.1-py3-none-any.whl",
        "d98b1668f06378c6dbefec3b92299716b931cd4e6061f3c875a71ced1780ab85",
        PURE,
    ),
];

/// MarkupSafe for CPython 3.11 on x86-64 Linux: a platform wheel with a C
/// extension, which the sandbox must refuse.
pub const NATIVE_WHEEL: Wheel = (
    "markupsafe==3.0.2",
    "MarkupSafe-3.0.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
    "a123e330ef0853c6e822384873bef7507557d8e4a082961e1defa947aa59ba84",
    &[
        "--platform",
        "manylinux_2_17_x86_64",
        "--python-version",
        "3.11",
        "--implementation",
        "cp",
    ],
);

/// The path of `wheel`, downloaded from PyPI with pip on first use into
/// `target/test-wheels/` (shared by test processes under a lock) and checked
/// against its pinned sha256.
///
/// # Panics
/// When pip fails (offline, no pip) or the file has another hash.
pub fn fetch_wheel(wheel: Wheel) -> std::path::PathBuf {
    let (requirement, file, sha256, extra) = wheel;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-wheels");
    std::fs::create_dir_all(&dir).unwrap();
    let lock = std::fs::File::create(dir.join(".lock")).unwrap();
    lock.lock().unwrap();
    let path = dir.join(file);
    if !path.exists() {
        let status = Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(["--no-deps", "--only-binary=:all:", "--dest"])
            .arg(&dir)
            .args(extra)
            .arg(requirement)
            .status()
            .expect("running pip to fetch a test wheel");
        assert!(status.success(), "pip download {requirement} failed");
    }
    let actual = eryx_preinit::sha256_hex(&std::fs::read(&path).unwrap());
    assert_eq!(actual, sha256, "{file}: unexpected sha256");
    path
}

/// An engine with a pool sized for tests.
pub fn engine() -> eryx::Engine {
    eryx::Engine::new(eryx::EngineOptions::default().with_pool_size(128))
        .expect("creating the engine")
}

/// A sandbox with default settings on the shared runtime.
pub fn sandbox() -> eryx::Sandbox {
    eryx::Sandbox::builder()
        .with_runtime(runtime())
        .build()
        .expect("default sandbox")
}

/// Runs `code` in a fresh sandbox and panics, with the Python traceback, if it fails.
pub async fn run(code: &str) -> eryx::ExecuteResult {
    match sandbox().execute(code).await {
        Ok(result) => result,
        Err(eryx::Error::Exception(e) | eryx::Error::Compile(e)) => {
            panic!(
                "Python failed:\n{}\nstdout: {}\nstderr: {}",
                e.traceback, e.stdout, e.stderr
            )
        }
        Err(other) => panic!("execute failed: {other}"),
    }
}

/// Runs `code` expecting an uncaught exception; returns it.
pub async fn run_err(code: &str) -> eryx::Error {
    match sandbox().execute(code).await {
        Ok(result) => panic!("expected an error, got {result:?}"),
        Err(error) => error,
    }
}

/// A moto S3 server on an ephemeral loopback port, stopped on drop.
pub struct S3Server {
    child: Child,
    port: u16,
}

impl S3Server {
    /// Starts the server and waits until it accepts connections.
    ///
    /// # Panics
    /// When moto is not installed or does not start within 30 s.
    pub fn start() -> S3Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto's S3 server (.ci/run installs moto[server])");
        let server = S3Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the S3 server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// Creates `bucket`.
    ///
    /// # Panics
    /// When the server refuses.
    pub fn create_bucket(&self, bucket: &str) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            stream,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `object_store` S3 settings that reach this server.
    pub fn options(&self) -> Vec<(&'static str, String)> {
        vec![
            ("aws_endpoint", format!("http://127.0.0.1:{}", self.port)),
            ("aws_allow_http", "true".into()),
            ("aws_access_key_id", "eryx-test".into()),
            ("aws_secret_access_key", "eryx-test".into()),
            ("aws_region", "us-east-1".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway on an ephemeral loopback port with a store of its own, and an
/// HTTP client for it.
pub struct TestGateway {
    /// The running gateway.
    pub gateway: eryx_gateway::Gateway,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// A real HTTP client (reqwest).
    pub client: reqwest::Client,
    /// The gateway's store directory (removed on drop).
    pub store: tempfile::TempDir,
}

/// Links the base artifacts of the default store into `store` (a directory),
/// so a gateway on it starts from the already built base instead of
/// building its own (artifacts are content-addressed, so sharing is safe).
///
/// # Panics
/// When the base artifact cannot be built or the files linked.
pub fn seed_store(store: &Path) {
    runtime();
    let data_dir = eryx_preinit::default_data_dir();
    let source = Path::new(&eryx_preinit::default_store_location(&data_dir)).join("artifacts");
    let target = store.join("artifacts");
    std::fs::create_dir_all(&target).unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        let to = target.join(entry.file_name());
        if !to.exists() {
            std::fs::hard_link(entry.path(), &to)
                .or_else(|_| std::fs::copy(entry.path(), &to).map(|_| ()))
                .unwrap();
        }
    }
}

impl TestGateway {
    /// Starts a gateway with `config` (its listen address and store are
    /// replaced by an ephemeral port and a fresh seeded directory) and waits
    /// until it is ready.
    ///
    /// # Panics
    /// When it does not start.
    pub async fn start(config: eryx_gateway::Config) -> TestGateway {
        let store = tempfile::tempdir().unwrap();
        seed_store(store.path());
        TestGateway::start_on(config, store).await
    }

    /// Like [`start`](Self::start) on an existing store directory.
    ///
    /// # Panics
    /// When it does not start.
    pub async fn start_on(config: eryx_gateway::Config, store: tempfile::TempDir) -> TestGateway {
        let config = config
            .with_listen("127.0.0.1:0".parse().unwrap())
            .with_store(store.path().to_str().unwrap());
        let gateway = eryx_gateway::Gateway::start(config)
            .await
            .expect("gateway start");
        gateway.ready().await.expect("gateway ready");
        TestGateway {
            url: format!("http://{}", gateway.local_addr()),
            gateway,
            client: reqwest::Client::new(),
            store,
        }
    }

    /// Deploys `source` as `name` with extra JSON settings merged in
    /// (`timeout_ms`, `memory_mb`, `env`, `handler`); returns status and body.
    pub async fn deploy_with(
        &self,
        name: &str,
        source: &str,
        settings: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let mut body = serde_json::json!({ "source": source });
        if let serde_json::Value::Object(extra) = settings {
            body.as_object_mut().unwrap().extend(extra);
        }
        let response = self
            .client
            .put(format!("{}/v1/functions/{name}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// Deploys `source` as `name` (as `text/x-python`) and asserts 201.
    pub async fn deploy(&self, name: &str, source: &str) -> serde_json::Value {
        let response = self
            .client
            .put(format!("{}/v1/functions/{name}", self.url))
            .header("content-type", "text/x-python")
            .body(source.to_owned())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(status, 201, "deploy {name}: {body:#}");
        body
    }

    /// Invokes `name` with `event`; returns status and JSON body.
    pub async fn invoke(&self, name: &str, event: serde_json::Value) -> (u16, serde_json::Value) {
        let response = self
            .client
            .post(format!("{}/v1/functions/{name}/invoke", self.url))
            .json(&event)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// `GET /v1/functions`'s JSON body.
    pub async fn list(&self) -> serde_json::Value {
        self.get_json("/v1/functions").await
    }

    /// `GET path`'s JSON body.
    async fn get_json(&self, path: &str) -> serde_json::Value {
        self.client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `GET /v1/functions/{name}`'s JSON body.
    pub async fn info(&self, name: &str) -> serde_json::Value {
        self.get_json(&format!("/v1/functions/{name}")).await
    }

    /// Waits (up to 120 s) until `name` is served from its compiled snapshot.
    ///
    /// # Panics
    /// When it is not by then.
    pub async fn wait_compiled(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let info = self.info(name).await;
            if info["serving"] == "snapshot" {
                return;
            }
            assert!(Instant::now() < deadline, "{name} never compiled: {info}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl S3Server {
    /// A gateway configuration whose store is `location` (`s3://bucket/…`)
    /// on this server.
    pub fn gateway_config(&self, location: &str) -> eryx_gateway::Config {
        let mut config = eryx_gateway::Config::new().with_store(location);
        for (key, value) in self.options() {
            config = config.with_store_option(key, value);
        }
        config
    }

    /// Copies the base artifacts into `location` (`s3://bucket/…`) on this
    /// server, manifests last (as `eryx build --store` would publish them),
    /// so gateways on it start without building.
    ///
    /// # Panics
    /// When the base artifact cannot be built or an upload fails.
    pub async fn seed(&self, location: &str) {
        let seeded = tempfile::tempdir().unwrap();
        seed_store(seeded.path());
        let key = signing_key();
        let store = eryx_store::Store::open(location, &key, self.options()).unwrap();
        let mut names: Vec<_> = std::fs::read_dir(seeded.path().join("artifacts"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort_by_key(|n| n.ends_with(".json"));
        for name in names {
            let bytes = std::fs::read(seeded.path().join("artifacts").join(&name)).unwrap();
            store
                .put(&format!("artifacts/{name}"), bytes)
                .await
                .unwrap();
        }
    }
}

/// Starts a gateway with `config` on an ephemeral loopback port and waits
/// until it is ready; returns it and its URL.
///
/// # Panics
/// When it does not start.
pub async fn start_gateway(config: eryx_gateway::Config) -> (eryx_gateway::Gateway, String) {
    let gateway = eryx_gateway::Gateway::start(config.with_listen("127.0.0.1:0".parse().unwrap()))
        .await
        .expect("gateway start");
    gateway.ready().await.expect("gateway ready");
    let url = format!("http://{}", gateway.local_addr());
    (gateway, url)
}

/// A TCP proxy on an ephemeral loopback port in front of `127.0.0.1:target`
/// that can be taken down (every connection refused or cut) and brought back,
/// to make a server unreachable without losing its data.
pub struct TcpProxy {
    port: u16,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Starts forwarding to `127.0.0.1:target`.
    ///
    /// # Panics
    /// When no port can be bound.
    pub async fn start(target: u16) -> TcpProxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let generation = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (down2, generation2) = (down.clone(), generation.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if down2.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection closed
                }
                let born = generation2.load(Ordering::SeqCst);
                let generation = generation2.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    let cut = async {
                        while generation.load(Ordering::SeqCst) == born {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! {
                        _ = copy => {}
                        () = cut => {}
                    }
                });
            }
        });
        TcpProxy {
            port,
            down,
            generation,
            task,
        }
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Takes the proxy down (`true`: open connections are cut, new ones
    /// closed at once) or brings it back (`false`).
    pub fn set_down(&self, down: bool) {
        use std::sync::atomic::Ordering;
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `object_store` S3 settings that reach the S3 server through `proxy`.
pub fn s3_options_via(server: &S3Server, proxy: &TcpProxy) -> Vec<(&'static str, String)> {
    let mut options = server.options();
    options[0].1 = format!("http://127.0.0.1:{}", proxy.port());
    options
}

/// Creates a session on the gateway at `url` (`POST /v1/sessions {}`) and
/// returns its id.
///
/// # Panics
/// When the gateway does not answer 201 with an id.
pub async fn create_session(client: &reqwest::Client, url: &str) -> String {
    let response = client
        .post(format!("{url}/v1/sessions"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let created: serde_json::Value = response.json().await.unwrap();
    created["id"].as_str().unwrap().to_owned()
}

/// JSON log lines captured by [`capture_json_logs`].
#[derive(Clone, Default)]
pub struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    /// Every event logged so far, parsed.
    pub fn events(&self) -> Vec<serde_json::Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

/// Installs, as this process's global `tracing` subscriber, the JSON
/// formatter the gateway uses in production (current span included),
/// writing into memory; returns the captured lines. Call once per test
/// process (nextest runs each test in its own).
///
/// # Panics
/// When a global subscriber is already set.
pub fn capture_json_logs() -> CapturedLogs {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter("info")
        .with_writer(move || writer.clone())
        .init();
    logs
}

/// Arguments of [`wait_callback`].
#[derive(serde::Deserialize, schemars::JsonSchema)]
pub struct WaitArgs {
    /// Milliseconds to wait on the host.
    pub ms: u64,
}

/// A host callback `wait(ms=...)` that sleeps on the host and returns `None`.
pub fn wait_callback() -> impl eryx::Callback {
    eryx::TypedCallback::new(
        "wait",
        "Waits `ms` milliseconds on the host.",
        |args: WaitArgs| async move {
            tokio::time::sleep(Duration::from_millis(args.ms)).await;
            Ok::<_, eryx::CallbackError>(())
        },
    )
}

/// Imports `source` as module `module` (handler `handler`) into `session`,
/// with a 10 s import timeout; panics if it fails.
pub async fn load_function(session: &mut eryx::Session, module: &str, source: &str) {
    session
        .load_function(&eryx::FunctionSource {
            module_name: module,
            source,
            handler: "handler",
            import_timeout: Duration::from_secs(10),
            memory_limit_bytes: None,
        })
        .await
        .unwrap_or_else(|e| panic!("loading {module}: {e}"));
}

/// A real HTTP (or HTTPS) server on loopback for the network tests, with a
/// few routes: `/hello`, `/echo` (the request as JSON), `/redirect?to=URL`
/// (302), `/big?n=BYTES`, `/slow?ms=MS`.
pub struct WebServer {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    /// `http://127.0.0.1:PORT` or `https://localhost:PORT`.
    pub url: String,
    /// The PEM of its self-signed certificate (HTTPS only).
    pub cert_pem: Option<String>,
    /// Requests it answered.
    pub hits: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WebServer {
    /// A plain HTTP server.
    pub async fn http() -> WebServer {
        WebServer::start(None).await
    }

    /// An HTTPS server with a fresh self-signed certificate for `localhost`
    /// and 127.0.0.1.
    pub async fn https() -> WebServer {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        WebServer::start(Some(key)).await
    }

    async fn start(tls: Option<rcgen::CertifiedKey<rcgen::KeyPair>>) -> WebServer {
        use tokio_rustls::rustls;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (acceptor, cert_pem) = match &tls {
            Some(key) => {
                let cert = key.cert.der().clone();
                let private =
                    rustls::pki_types::PrivateKeyDer::try_from(key.signing_key.serialize_der())
                        .unwrap();
                let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                    rustls::crypto::aws_lc_rs::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert], private)
                .unwrap();
                (
                    Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
                    Some(key.cert.pem()),
                )
            }
            None => (None, None),
        };
        let url = match tls {
            Some(_) => format!("https://localhost:{port}"),
            None => format!("http://127.0.0.1:{port}"),
        };
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        web_route(request)
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = http
                                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                        None => {
                            let _ = http
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        WebServer {
            port,
            url,
            cert_pem,
            hits,
            task,
        }
    }
}

async fn web_route(
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    use http_body_util::BodyExt;
    let query: std::collections::HashMap<String, String> = request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%3A", ":").replace("%2F", "/")))
        .collect();
    let path = request.uri().path().to_owned();
    let method = request.method().to_string();
    let headers: serde_json::Map<String, serde_json::Value> = request
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
        .collect();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let response = |status: u16, body: bytes::Bytes| {
        hyper::Response::builder()
            .status(status)
            .body(http_body_util::Full::new(body))
            .unwrap()
    };
    Ok(match path.as_str() {
        "/hello" => response(
            200,
            bytes::Bytes::from_static(b"hello from the test server"),
        ),
        "/echo" => {
            let echo = serde_json::json!({
                "method": method,
                "headers": headers,
                "body": String::from_utf8_lossy(&body),
            });
            response(200, echo.to_string().into())
        }
        "/redirect" => hyper::Response::builder()
            .status(302)
            .header("location", query.get("to").cloned().unwrap_or_default())
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
        "/big" => {
            let n: usize = query
                .get("n")
                .and_then(|n| n.parse().ok())
                .unwrap_or(1 << 20);
            response(200, vec![b'x'; n].into())
        }
        "/slow" => {
            let ms: u64 = query.get("ms").and_then(|n| n.parse().ok()).unwrap_or(3000);
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            response(200, bytes::Bytes::from_static(b"slow"))
        }
        _ => response(404, bytes::Bytes::from_static(b"not found")),
    })
}
