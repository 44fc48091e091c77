//! Stateful sessions over real HTTP: real gateways sharing a real store (a
//! local directory, or moto's S3 server), every request in a fresh wasm
//! instance of CPython with the session's pickled state restored.

use std::time::{Duration, Instant};

use eryx_gateway::{Config, Limits};
use eryx_tests::{S3Server, TcpProxy, TestGateway, s3_options_via, seed_store, start_gateway};
use serde_json::{Value, json};

/// A client of one gateway's sessions API, with an optional bearer token.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl Client {
    fn new(url: &str) -> Client {
        Client {
            http: reqwest::Client::new(),
            url: url.to_owned(),
            token: None,
        }
    }

    fn with_token(&self, token: &str) -> Client {
        Client {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.url));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    async fn send(builder: reqwest::RequestBuilder) -> (u16, Value) {
        let response = builder.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: not JSON: {text}"))
        };
        (status, body)
    }

    /// `POST /v1/sessions` with `body`; asserts 201 and returns the id.
    async fn create(&self, body: Value) -> String {
        let (status, created) = Client::send(
            self.request(reqwest::Method::POST, "/v1/sessions")
                .json(&body),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        assert_eq!(created["version"], 1, "{created}");
        created["id"].as_str().unwrap().to_owned()
    }

    /// `POST /v1/sessions/{id}/execute`.
    async fn execute(&self, id: &str, code: &str) -> (u16, Value) {
        Client::send(
            self.request(reqwest::Method::POST, &format!("/v1/sessions/{id}/execute"))
                .json(&json!({ "code": code })),
        )
        .await
    }

    /// An execute that must succeed without a Python error; returns its
    /// `result`.
    async fn ok(&self, id: &str, code: &str) -> Value {
        let (status, body) = self.execute(id, code).await;
        assert_eq!(status, 200, "{code}: {body}");
        assert!(body["error"].is_null(), "{code}: {body}");
        body
    }

    /// `GET /v1/sessions/{id}`.
    async fn info(&self, id: &str) -> (u16, Value) {
        Client::send(self.request(reqwest::Method::GET, &format!("/v1/sessions/{id}"))).await
    }

    /// `POST /v1/functions/{name}/invoke?session={id}`.
    async fn invoke(&self, name: &str, id: &str) -> (u16, Value) {
        Client::send(
            self.request(
                reqwest::Method::POST,
                &format!("/v1/functions/{name}/invoke?session={id}"),
            )
            .json(&json!({})),
        )
        .await
    }
}

/// Defines values of every kind a session should keep.
const DEFINE: &str = r#"
import json
class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y
    def norm2(self):
        return self.x ** 2 + self.y ** 2
def double(v):
    return 2 * v
n = 41
s = "text"
d = {"k": [1, 2, {"deep": True}]}
p = Point(3, 4)
"#;

/// Uses every value `DEFINE` left.
const USE: &str = r#"n += 1
(n, s, d["k"][2]["deep"], p.norm2(), double(21), json.dumps([1]), type(p).__name__)"#;

const USED: &str = "(42, 'text', True, 25, 42, '[1]', 'Point')";

/// Two gateways sharing one local store directory.
async fn two_local_gateways(
    limits: Limits,
) -> (
    tempfile::TempDir,
    (eryx_gateway::Gateway, String),
    (eryx_gateway::Gateway, String),
) {
    let store = tempfile::tempdir().unwrap();
    seed_store(store.path());
    let config = || {
        Config::new()
            .with_store(store.path().to_str().unwrap())
            .with_limits(limits.clone())
    };
    let a = start_gateway(config()).await;
    let b = start_gateway(config()).await;
    (store, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_created_on_one_gateway_continues_on_another_sharing_a_local_store() {
    let (store, (a, a_url), (b, b_url)) = two_local_gateways(Limits::default()).await;
    let (a_client, b_client) = (Client::new(&a_url), Client::new(&b_url));
    let id = a_client.create(json!({})).await;
    assert_eq!(id.len(), 32, "{id}");
    let defined = a_client.ok(&id, DEFINE).await;
    assert_eq!(defined["version"], 2, "{defined}");
    assert_eq!(defined["saved"], true);
    let used = b_client.ok(&id, USE).await;
    assert_eq!(used["result"], USED, "{used}");
    assert_eq!(used["version"], 3);
    assert!(used["state_bytes"].as_u64().unwrap() > 0);
    // And back: B's write is what A reads. (Sent as curl -d sends it: a
    // form content type with a JSON body, which is JSON; only text/* is code.)
    let (status, again) = Client::send(
        a_client
            .request(reqwest::Method::POST, &format!("/v1/sessions/{id}/execute"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(r#"{"code": "n"}"#),
    )
    .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["result"], "42");

    let (status, info) = b_client.info(&id).await;
    assert_eq!(status, 200);
    assert_eq!(info["version"], 4);
    assert_eq!(info["compression"], "zstd");
    // A small state lives in the head record: no object of its own.
    let session_dir = store.path().join("sessions").join(&id);
    assert!(session_dir.join("head.json").exists());
    assert!(!session_dir.join("states").exists());
    assert!(
        info["expires_at"].as_str().unwrap().ends_with('Z'),
        "{info}"
    );
    let state = b_client
        .request(reqwest::Method::GET, &format!("/v1/sessions/{id}/state"))
        .send()
        .await
        .unwrap();
    assert_eq!(state.headers()["etag"], "\"4\"");
    assert_eq!(state.headers()["content-type"], "application/octet-stream");
    let pickle = state.bytes().await.unwrap();
    assert_eq!(pickle.len() as u64, info["state_bytes"].as_u64().unwrap());
    assert_eq!(pickle[..2], [0x80, 5], "a protocol 5 pickle");

    // Deleted through A: gone for B.
    let deleted = a_client
        .request(reqwest::Method::DELETE, &format!("/v1/sessions/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    assert_eq!(b_client.info(&id).await.0, 404);
    assert_eq!(b_client.execute(&id, "n").await.0, 404);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_created_on_one_gateway_continues_on_another_sharing_s3() {
    let server = S3Server::start();
    server.create_bucket("eryx-sessions");
    let location = "s3://eryx-sessions/prod";
    server.seed(location).await;
    let (a, a_url) = start_gateway(server.gateway_config(location)).await;
    let (b, b_url) = start_gateway(server.gateway_config(location)).await;
    let (a_client, b_client) = (Client::new(&a_url), Client::new(&b_url));
    let id = a_client.create(json!({"ttl_s": 600})).await;
    a_client.ok(&id, DEFINE).await;
    let used = b_client.ok(&id, USE).await;
    assert_eq!(used["result"], USED, "{used}");
    // Two concurrent writers through the two replicas: S3's conditional put
    // lets exactly one win.
    let (one, two) = tokio::join!(
        a_client.execute(&id, "import time; time.sleep(1); n = 'from a'"),
        b_client.execute(&id, "import time; time.sleep(1); n = 'from b'"),
    );
    let mut statuses = [one.0, two.0];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{one:?} {two:?}");
    let (winner, loser) = if one.0 == 200 {
        (&one, &two)
    } else {
        (&two, &one)
    };
    assert_eq!(loser.1["error"]["code"], "conflict", "{loser:?}");
    assert_eq!(loser.1["error"]["current_version"], winner.1["version"]);
    let stored = a_client.ok(&id, "n").await;
    let expected = if one.0 == 200 { "'from a'" } else { "'from b'" };
    assert_eq!(stored["result"], expected);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_executes_through_two_gateways_give_exactly_one_conflict_and_keep_the_winner() {
    let (store, (a, a_url), (b, b_url)) = two_local_gateways(Limits::default()).await;
    let (a_client, b_client) = (Client::new(&a_url), Client::new(&b_url));
    let id = a_client.create(json!({})).await;
    // Random bytes over the inline limit: the state lives in objects of its
    // own, read through the replicas' caches.
    a_client
        .ok(&id, "import os\nmarks = []\npad = os.urandom(40_000)")
        .await;
    let (one, two) = tokio::join!(
        a_client.execute(&id, "import time; time.sleep(1); marks.append('a')"),
        b_client.execute(&id, "import time; time.sleep(1); marks.append('b')"),
    );
    let mut statuses = [one.0, two.0];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{one:?} {two:?}");
    let winner = if one.0 == 200 { "['a']" } else { "['b']" };
    assert_eq!(a_client.ok(&id, "marks").await["result"], winner);
    assert_eq!(b_client.ok(&id, "marks").await["result"], winner);

    // Through one gateway, executes on a session wait for each other in
    // order instead of conflicting.
    let writes = (0..5).map(|i| {
        let client = a_client.clone();
        let id = id.clone();
        async move { client.execute(&id, &format!("marks.append({i})")).await }
    });
    for (status, body) in futures::future::join_all(writes).await {
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["saved"], true, "{body}");
    }
    let marks = a_client.ok(&id, "len(marks)").await;
    assert_eq!(marks["result"], "6");

    // `If-Match` with an old version: 409 without running.
    let (status, current) = a_client.info(&id).await;
    assert_eq!(status, 200);
    let version = current["version"].as_u64().unwrap();
    let (status, stale) = Client::send(
        a_client
            .request(reqwest::Method::POST, &format!("/v1/sessions/{id}/execute"))
            .header("if-match", format!("\"{}\"", version - 1))
            .json(&json!({"code": "marks.append('stale')"})),
    )
    .await;
    assert_eq!(status, 409, "{stale}");
    assert_eq!(stale["error"]["current_version"], version);
    let (status, fresh) = Client::send(
        a_client
            .request(reqwest::Method::POST, &format!("/v1/sessions/{id}/execute"))
            .header("if-match", format!("\"{version}\""))
            .json(&json!({"code": "len(marks)"})),
    )
    .await;
    assert_eq!(status, 200, "{fresh}");
    assert_eq!(fresh["result"], "6", "the stale execute did not run");

    // Old versions are removed as new ones are written: two state objects
    // at most remain (the current one and the one before).
    let states = std::fs::read_dir(store.path().join("sessions").join(&id).join("states"))
        .unwrap()
        .count();
    assert!((1..=3).contains(&states), "{states} state objects kept");

    // A's consecutive executes read the state it wrote itself from its
    // cache; the lost race is counted on one of the two.
    let metrics = |url: String| async move {
        reqwest::get(format!("{url}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let (a_metrics, b_metrics) = (metrics(a_url.clone()).await, metrics(b_url.clone()).await);
    assert!(
        a_metrics.contains("eryx_session_state_cache_total{result=\"hit\"}"),
        "{a_metrics}"
    );
    assert!(
        format!("{a_metrics}{b_metrics}")
            .contains("eryx_session_writes_total{outcome=\"conflict\"} 1"),
        "{a_metrics}{b_metrics}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

const COUNTER: &str = r#"
COUNT = 0

def handler(event, context):
    global COUNT
    COUNT += 1
    return COUNT
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_session_counts_across_invokes_and_sessions_do_not_share_counts() {
    let gw = TestGateway::start(Config::new()).await;
    let client = Client::new(&gw.url);
    gw.deploy("counter", COUNTER).await;
    let first = client.create(json!({"function": "counter"})).await;
    let second = client.create(json!({"function": "counter"})).await;
    // Served interim (the snapshot compiling) and then from the snapshot:
    // the count carries over both ways.
    assert_eq!(client.invoke("counter", &first).await, (200, json!(1)));
    gw.wait_compiled("counter").await;
    assert_eq!(client.invoke("counter", &first).await, (200, json!(2)));
    assert_eq!(client.invoke("counter", &first).await, (200, json!(3)));
    assert_eq!(client.invoke("counter", &second).await, (200, json!(1)));
    // Without a session, a fresh instance as always.
    assert_eq!(gw.invoke("counter", json!({})).await, (200, json!(1)));
    // The session's state is the module's globals: execute sees them.
    let seen = client.ok(&first, "COUNT").await;
    assert_eq!(seen["result"], "3");
    let (status, info) = client.info(&first).await;
    assert_eq!(status, 200);
    assert_eq!(info["function"], "counter");
    assert_eq!(info["version"], 5, "created, three invokes, one execute");

    // A base session cannot invoke a function; nor can another function's.
    let base = client.create(json!({})).await;
    let (status, body) = client.invoke("counter", &base).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = Client::send(
        client
            .request(reqwest::Method::POST, "/v1/sessions")
            .json(&json!({"function": "missing"})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exception_a_timeout_and_a_memory_bomb_leave_the_previous_state() {
    let mut limits = Limits::default();
    limits.default_timeout_ms = 1000;
    limits.default_memory_mb = 64;
    let gw = TestGateway::start(Config::new().with_limits(limits)).await;
    let client = Client::new(&gw.url);
    let id = client.create(json!({})).await;
    client.ok(&id, "x = 1").await;

    let (status, raised) = client.execute(&id, "x = 2\nprint('before')\n1 / 0").await;
    assert_eq!(status, 200, "{raised}");
    assert_eq!(raised["error"]["type"], "ZeroDivisionError", "{raised}");
    assert!(
        raised["error"]["traceback"]
            .as_str()
            .unwrap()
            .contains("line 3")
    );
    assert_eq!(raised["stdout"], "before\n");
    assert_eq!(raised["saved"], false);
    assert_eq!(raised["version"], 2);

    let (status, timed_out) = client.execute(&id, "x = 3\nwhile True: pass").await;
    assert_eq!(status, 504, "{timed_out}");
    assert_eq!(timed_out["error"]["code"], "timeout");

    let (status, bomb) = client.execute(&id, "x = 4\nhog = bytearray(1 << 30)").await;
    assert_eq!(status, 500, "{bomb}");
    assert_eq!(bomb["error"]["code"], "memory_limit", "{bomb}");

    let (status, exited) = client.execute(&id, "x = 5\nraise SystemExit(3)").await;
    assert_eq!(status, 200, "{exited}");
    assert_eq!(exited["error"]["type"], "SystemExit");

    let after = client.ok(&id, "x").await;
    assert_eq!(after["result"], "1");
    assert_eq!(
        after["version"], 3,
        "only the two successful executes wrote"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpicklable_value_is_named_and_the_rest_saved() {
    let gw = TestGateway::start(Config::new()).await;
    let client = Client::new(&gw.url);
    let id = client.create(json!({})).await;
    let saved = client
        .ok(&id, "gen = (i for i in range(3))\nkeep = [1, 2]")
        .await;
    assert_eq!(saved["skipped"], json!(["gen"]), "{saved}");
    let after = client.ok(&id, "keep, 'gen' in globals()").await;
    assert_eq!(after["result"], "([1, 2], False)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_over_the_limit_is_413_and_the_old_state_is_kept() {
    let mut limits = Limits::default();
    limits.session_state_limit_bytes = 64 << 10;
    let gw = TestGateway::start(Config::new().with_limits(limits)).await;
    let client = Client::new(&gw.url);
    let id = client.create(json!({})).await;
    client.ok(&id, "small = 'kept'").await;
    let (status, body) = client
        .execute(&id, "small = 'lost'\nbig = 'x' * 100_000")
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "state_too_large");
    let after = client.ok(&id, "small, 'big' in globals()").await;
    assert_eq!(after["result"], "('kept', False)");
    // An uploaded state over the limit: 413 before anything runs.
    let (status, body) = Client::send(
        client
            .request(reqwest::Method::PUT, &format!("/v1/sessions/{id}/state"))
            .body(vec![0u8; 100 << 10]),
    )
    .await;
    assert_eq!(status, 413, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_files_follow_it_across_gateways_inside_the_state_limit() {
    let mut limits = Limits::default();
    limits.session_state_limit_bytes = 256 << 10;
    let (_store, (a, a_url), (b, b_url)) = two_local_gateways(limits).await;
    let (a_client, b_client) = (Client::new(&a_url), Client::new(&b_url));
    let id = a_client.create(json!({})).await;
    a_client
        .ok(
            &id,
            "import os, sqlite3\nos.makedirs('/tmp/data')\nopen('/tmp/data/notes.txt', 'w').write('from A')\n\
             db = sqlite3.connect('/work/db.sqlite')\ndb.execute('create table t (x)')\ndb.execute('insert into t values (7)')\ndb.commit()\ndb.close()",
        )
        .await;
    let read = b_client
        .ok(
            &id,
            "import sqlite3\nopen('/tmp/data/notes.txt').read(), sqlite3.connect('db.sqlite').execute('select x from t').fetchone()[0]",
        )
        .await;
    assert_eq!(read["result"], "('from A', 7)", "{read}");
    // Files count toward the state limit: a 300 KB file is refused (413) and
    // the session keeps its previous files.
    let (status, body) = b_client
        .execute(&id, "open('/tmp/big', 'wb').write(os.urandom(300_000))")
        .await;
    assert_eq!(status, 413, "{body}");
    let after = a_client
        .ok(
            &id,
            "import os\nsorted(os.listdir('/tmp')), open('/tmp/data/notes.txt').read()",
        )
        .await;
    assert_eq!(after["result"], "(['data'], 'from A')", "{after}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_is_not_found_and_swept_from_the_store() {
    let mut limits = Limits::default();
    limits.session_sweep_interval = Duration::from_millis(200);
    limits.session_sweep_grace = Duration::ZERO;
    let gw = TestGateway::start(Config::new().with_limits(limits)).await;
    let client = Client::new(&gw.url);
    let id = client.create(json!({"ttl_s": 1})).await;
    client.ok(&id, "x = 1").await;
    let kept = client.create(json!({"ttl_s": 600})).await;
    client.ok(&kept, "y = 2").await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(client.info(&id).await.0, 404);
    assert_eq!(client.execute(&id, "x").await.0, 404);
    let dir = gw.store.path().join("sessions").join(&id);
    let deadline = Instant::now() + Duration::from_secs(10);
    while dir.join("head.json").exists()
        || dir
            .join("states")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some())
    {
        assert!(
            Instant::now() < deadline,
            "the expired session was not swept"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(client.ok(&kept, "y").await["result"], "2");
    // Its TTL is renewed by use: still alive after the other one's expiry.
    let (status, info) = client.info(&kept).await;
    assert_eq!(status, 200, "{info}");
    let (status, body) = Client::send(
        client
            .request(reqwest::Method::POST, "/v1/sessions")
            .json(&json!({"ttl_s": 0})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_unreachable_is_503_with_retry_after_and_the_state_is_intact_after() {
    let server = S3Server::start();
    server.create_bucket("eryx-outage");
    let location = "s3://eryx-outage/prod";
    server.seed(location).await;
    let proxy = TcpProxy::start(server.port()).await;
    let mut config = Config::new().with_store(location);
    for (key, value) in s3_options_via(&server, &proxy) {
        config = config.with_store_option(key, value);
    }
    let (gateway, url) = start_gateway(config).await;
    let client = Client::new(&url);
    let id = client.create(json!({})).await;
    client.ok(&id, "x = 'stored'").await;

    proxy.set_down(true);
    let began = Instant::now();
    let (status, body) = client.execute(&id, "x = 'lost'").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable");
    assert!(began.elapsed() < Duration::from_secs(60));
    let health = reqwest::get(format!("{url}/healthz")).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);

    // S3 goes away while the code runs: the write fails, nothing changes.
    proxy.set_down(false);
    let slow = client.execute(&id, "import time; time.sleep(1.5); x = 'lost too'");
    let outage = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        proxy.set_down(true);
    };
    let ((status, body), ()) = tokio::join!(slow, outage);
    assert_eq!(status, 503, "{body}");
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/sessions/{id}/execute"))
        .json(&json!({"code": "x"}))
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("retry-after"));

    proxy.set_down(false);
    let after = client.ok(&id, "x").await;
    assert_eq!(after["result"], "'stored'", "{after}");
    assert_eq!(after["version"], 3, "{after}");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_token_cannot_read_or_write_a_session() {
    let config = Config::new()
        .with_admin_token("root-token")
        .with_invoke_token("alice-token")
        .with_invoke_token("bob-token");
    let gw = TestGateway::start(config).await;
    let anonymous = Client::new(&gw.url);
    let (alice, bob, root) = (
        anonymous.with_token("alice-token"),
        anonymous.with_token("bob-token"),
        anonymous.with_token("root-token"),
    );
    let id = alice.create(json!({})).await;
    alice.ok(&id, "secret = 'alice only'").await;

    assert_eq!(bob.info(&id).await.0, 404);
    let (status, body) = bob.execute(&id, "secret").await;
    assert_eq!(status, 404, "{body}");
    assert!(!body.to_string().contains("alice only"));
    let state = bob
        .request(reqwest::Method::GET, &format!("/v1/sessions/{id}/state"))
        .send()
        .await
        .unwrap();
    assert_eq!(state.status().as_u16(), 404);
    let put = bob
        .request(reqwest::Method::PUT, &format!("/v1/sessions/{id}/state"))
        .body(Vec::<u8>::new())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 404);
    let delete = bob
        .request(reqwest::Method::DELETE, &format!("/v1/sessions/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status().as_u16(), 404);
    assert_eq!(anonymous.info(&id).await.0, 401);
    let list = bob
        .request(reqwest::Method::GET, "/v1/sessions")
        .send()
        .await
        .unwrap();
    assert_eq!(list.status().as_u16(), 403);

    // Its owner and admins still reach it, unchanged.
    assert_eq!(alice.ok(&id, "secret").await["result"], "'alice only'");

    // With a function session an invoke-only token may invoke the handler,
    // not run code in the function's snapshot or read its globals (its
    // environment and what it keeps from other callers).
    let deployed = root
        .request(reqwest::Method::PUT, "/v1/functions/counter")
        .header("content-type", "text/x-python")
        .body(COUNTER)
        .send()
        .await
        .unwrap();
    assert_eq!(deployed.status().as_u16(), 201);
    let counting = alice.create(json!({"function": "counter"})).await;
    assert_eq!(alice.invoke("counter", &counting).await, (200, json!(1)));
    let (status, body) = alice
        .execute(&counting, "import os; dict(os.environ)")
        .await;
    assert_eq!(status, 403, "{body}");
    let state = alice
        .request(
            reqwest::Method::GET,
            &format!("/v1/sessions/{counting}/state"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(state.status().as_u16(), 403);
    assert_eq!(root.ok(&counting, "COUNT").await["result"], "1");
    let (status, listed) = Client::send(root.request(reqwest::Method::GET, "/v1/sessions")).await;
    assert_eq!(status, 200);
    assert!(
        listed["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == id.as_str()),
        "{listed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_pickle_put_as_state_runs_only_inside_the_sandbox() {
    let gw = TestGateway::start(Config::new()).await;
    let client = Client::new(&gw.url);
    let id = client.create(json!({})).await;
    client.ok(&id, "kept = 'yes'").await;
    let version = client.info(&id).await.1["version"].as_u64().unwrap();

    // Pickles (made by the host's own Python) whose loading copies the
    // environment and reads a host file: inside the sandbox there is neither
    // the gateway's environment nor its filesystem.
    let marker = std::env::temp_dir().join(format!("eryx-hostile-{}", std::process::id()));
    std::fs::write(&marker, "host secret").unwrap();
    let script = "import pickle, sys\n\
         class Environ:\n    def __reduce__(self):\n        return (eval, (\"dict(__import__('os').environ)\",))\n\
         sys.stdout.buffer.write(pickle.dumps({'copied': Environ()}, protocol=5))\n";
    let environ = std::process::Command::new(eryx_tests::real_python())
        .args(["-c", script])
        .output()
        .unwrap()
        .stdout;
    let put = client
        .request(reqwest::Method::PUT, &format!("/v1/sessions/{id}/state"))
        .header("if-match", format!("\"{version}\""))
        .body(environ)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 200);
    assert_eq!(put.headers()["etag"], format!("\"{}\"", version + 1));
    let seen = client.ok(&id, "sorted(copied), 'kept' in globals()").await;
    let text = seen["result"].as_str().unwrap();
    assert!(
        !text.contains("'PATH'") && !text.contains("'HOME'"),
        "{text}"
    );
    assert!(text.ends_with("False)"), "a PUT replaces the state: {text}");

    let script = format!(
        "import pickle, sys\n\
         class Steal:\n    def __reduce__(self):\n        return (eval, (\"open({marker:?}).read()\",))\n\
         sys.stdout.buffer.write(pickle.dumps({{'stolen': Steal()}}, protocol=5))\n",
        marker = marker.to_str().unwrap()
    );
    let steal = std::process::Command::new(eryx_tests::real_python())
        .args(["-c", &script])
        .output()
        .unwrap()
        .stdout;
    let (status, body) = Client::send(
        client
            .request(reqwest::Method::PUT, &format!("/v1/sessions/{id}/state"))
            .body(steal),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(!body.to_string().contains("host secret"), "{body}");
    // Not a pickle at all: refused, the state as it was.
    let (status, _) = Client::send(
        client
            .request(reqwest::Method::PUT, &format!("/v1/sessions/{id}/state"))
            .body("not a pickle"),
    )
    .await;
    assert_eq!(status, 400);
    // A stale If-Match: 409 without running.
    let (status, _) = Client::send(
        client
            .request(reqwest::Method::PUT, &format!("/v1/sessions/{id}/state"))
            .header("if-match", "\"1\"")
            .body(Vec::<u8>::new()),
    )
    .await;
    assert_eq!(status, 409);
    let after = client
        .ok(&id, "type(copied).__name__, 'stolen' in globals()")
        .await;
    assert_eq!(after["result"], "('dict', False)");
    let _ = std::fs::remove_file(marker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_in_a_function_session_gets_no_host_api_but_its_handler_does() {
    let gw = TestGateway::start(Config::new()).await;
    let client = Client::new(&gw.url);
    let source = "import kv\n\nasync def handler(event, context):\n    await kv.put('seen', event)\n    return await kv.get('seen')\n";
    gw.deploy("kv-owner", source).await;
    let session = client.create(json!({"function": "kv-owner"})).await;
    assert_eq!(
        client.invoke("kv-owner", &session).await.0,
        200,
        "the handler reaches kv"
    );
    // Code sent to the session is the operator's: no kv_put, no log_write.
    let seen = client
        .ok(
            &session,
            "import eryx\n[hasattr(eryx, n) for n in ('kv_put', 'kv_get', 'log_write')]",
        )
        .await;
    assert_eq!(seen["result"], "[False, False, False]", "{seen}");
    let (status, body) = client
        .execute(&session, "await kv.put('seen', 'forged')")
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["error"]["type"].is_string(), "{body}");
}
