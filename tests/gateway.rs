//! The gateway over real HTTP: a real server on an ephemeral port, a real
//! client (reqwest), real CPython in a fresh wasm instance per request.

use std::time::{Duration, Instant};

use eryx_gateway::{Config, Limits};
use eryx_tests::{S3Server, TestGateway, start_gateway};
use serde_json::json;

const HELLO: &str = include_str!("../examples/functions/hello.py");

/// Increments a module global on every call and returns it: a fresh instance
/// per request always answers 1.
const COUNTER: &str = r#"
CALLS = []
COUNT = 0

def handler(event, context):
    global COUNT
    COUNT += 1
    CALLS.append(event)
    return {"count": COUNT, "calls": CALLS, "request_id": context.request_id}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_invoke_list_redeploy_delete() {
    let gw = TestGateway::start(Config::new()).await;
    let deployed = gw.deploy("hello", HELLO).await;
    assert_eq!(deployed["function"]["version"], 1);
    // Built now, or found already compiled (snapshots are content-addressed
    // and the test store is seeded from the shared one).
    assert!(
        deployed["timings_ms"]["snapshot_ms"].is_u64() || deployed["cached"] == true,
        "{deployed}"
    );

    let (status, body) = gw.invoke("hello", json!({"name": "eryx"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"], "Hello, eryx!");

    let list = gw.list().await;
    let names: Vec<&str> = list["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hello"]);

    // Deploying the same thing again is not a new version.
    let same = gw.deploy("hello", HELLO).await;
    assert_eq!(same["function"]["version"], 1);
    // Redeploy: the new version answers at once.
    let redeployed = gw
        .deploy(
            "hello",
            "def handler(event, context):\n    return {'message': 'v2', 'version': context.function_version}\n",
        )
        .await;
    assert_eq!(redeployed["function"]["version"], 2);
    let (status, body) = gw.invoke("hello", json!(null)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"message": "v2", "version": 2}));
    let info = gw.info("hello").await;
    assert_eq!(info["version"], 2);

    let deleted = gw
        .client
        .delete(format!("{}/v1/functions/hello", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    let (status, body) = gw.invoke("hello", json!(null)).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let again = gw
        .client
        .delete(format!("{}/v1/functions/hello", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_globals_do_not_leak_between_requests() {
    let gw = TestGateway::start(Config::new()).await;
    gw.deploy("counter", COUNTER).await;
    // Served before its snapshot is compiled (module imported per request)...
    for i in 0..3 {
        let (status, body) = gw.invoke("counter", json!({"i": i})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["count"], 1, "{body}");
        assert_eq!(body["calls"], json!([{"i": i}]));
    }
    // ...and from the compiled per-function snapshot.
    gw.wait_compiled("counter").await;
    for i in 0..3 {
        let (status, body) = gw.invoke("counter", json!({"i": i})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["count"], 1, "{body}");
        assert_eq!(body["calls"], json!([{"i": i}]));
    }
}

/// Moves and sets a variable while imported; the handler reports what its
/// call starts with.
const SETTLES: &str = "import os, random, sys\nos.chdir('/tmp')\nos.environ['SET_AT_IMPORT'] = '1'\n\
CACHE = {'hits': 0}\n\
def handler(event, context):\n    \
    class Fresh: pass\n    \
    return {'cwd': os.getcwd(), 'set_at_import': os.environ.get('SET_AT_IMPORT'), \
'greeting': os.environ.get('GREETING'), 'cache_immortal': sys._is_immortal(CACHE), \
'fresh_immortal': sys._is_immortal(Fresh), 'draw': random.random()}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_starts_in_work_with_the_functions_environment_both_interim_and_from_its_snapshot() {
    // Interim (the module imported into a live base instance per request) and
    // from the compiled snapshot, a call starts the same way: in `/work`, with
    // exactly the function's environment (what the import set is gone). Only
    // the snapshot makes the module's objects immortal; a live instance never
    // does. Each instance has its own `random` seed.
    let gw = TestGateway::start(Config::new()).await;
    let (status, body) = gw
        .deploy_with("settles", SETTLES, json!({"env": {"GREETING": "hi"}}))
        .await;
    assert_eq!(status, 201, "{body}");
    let mut seen = std::collections::HashSet::new();
    for compiled in [false, true] {
        if compiled {
            gw.wait_compiled("settles").await;
        }
        let before = gw.info("settles").await["serving"].clone();
        let (status, body) = gw.invoke("settles", json!({})).await;
        assert_eq!(status, 200, "{body}");
        let after = gw.info("settles").await["serving"].clone();
        assert_eq!(body["cwd"], "/work", "{body}");
        assert_eq!(body["set_at_import"], json!(null), "{body}");
        assert_eq!(body["greeting"], "hi", "{body}");
        assert_eq!(body["fresh_immortal"], false, "{body}");
        // The interim call may race the compile; judge it by what served it.
        if before == after {
            assert_eq!(
                body["cache_immortal"],
                before == "snapshot",
                "{before}: {body}"
            );
            seen.insert(before.as_str().unwrap_or("").to_owned());
        }
    }
    assert!(seen.contains("snapshot"), "{seen:?}");
    let mut draws = std::collections::HashSet::new();
    for _ in 0..3 {
        let (status, body) = gw.invoke("settles", json!({})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["greeting"], "hi", "{body}");
        draws.insert(body["draw"].to_string());
    }
    assert_eq!(
        draws.len(),
        3,
        "random repeated across instances: {draws:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_invocations_succeed_and_are_isolated() {
    let gw = TestGateway::start(Config::new()).await;
    let deployed = gw
        .client
        .put(format!("{}/v1/functions/counter?wait=true", gw.url))
        .body(COUNTER)
        .send()
        .await
        .unwrap();
    assert_eq!(deployed.status().as_u16(), 201);
    let deployed: serde_json::Value = deployed.json().await.unwrap();
    assert_eq!(deployed["compiled"], true, "{deployed}");
    assert_eq!(deployed["function"]["serving"], "snapshot");

    let calls = (0..100).map(|i| gw.invoke("counter", json!({"i": i})));
    let results = futures::future::join_all(calls).await;
    let mut request_ids = std::collections::HashSet::new();
    for (i, (status, body)) in results.into_iter().enumerate() {
        assert_eq!(status, 200, "call {i}: {body}");
        assert_eq!(
            body["count"], 1,
            "call {i} saw another call's state: {body}"
        );
        assert_eq!(body["calls"], json!([{"i": i}]));
        assert!(request_ids.insert(body["request_id"].as_str().unwrap().to_owned()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exception_is_500_with_traceback_and_output() {
    let gw = TestGateway::start(Config::new()).await;
    gw.deploy(
        "divide",
        "def handler(event, context):\n    print('dividing')\n    return 1 / event['by']\n",
    )
    .await;
    // Details (traceback, output) only for a caller who asks for them.
    let (status, body) = gw.invoke("divide", json!({"by": 0})).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["type"], "ZeroDivisionError");
    assert!(body["error"].get("traceback").is_none(), "{body}");
    let response = gw
        .client
        .post(format!(
            "{}/v1/functions/divide/invoke?include_output=true",
            gw.url
        ))
        .json(&json!({"by": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 500);
    let body: serde_json::Value = response.json().await.unwrap();
    let error = &body["error"];
    assert_eq!(error["code"], "python_exception");
    assert_eq!(error["type"], "ZeroDivisionError");
    assert_eq!(error["message"], "ZeroDivisionError: division by zero");
    let traceback = error["traceback"].as_str().unwrap();
    assert!(
        traceback.contains("File \"divide.py\", line 3, in handler"),
        "{traceback}"
    );
    assert!(traceback.contains("return 1 / event['by']"), "{traceback}");
    assert_eq!(error["stdout"], "dividing\n");
    assert!(error["request_id"].is_string());
    // The function keeps serving.
    let (status, body) = gw.invoke("divide", json!({"by": 4})).await;
    assert_eq!((status, body), (200, json!(0.25)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_loop_times_out_while_other_requests_are_served() {
    let gw = TestGateway::start(Config::new()).await;
    let (status, body) = gw
        .deploy_with(
            "spin",
            "def handler(event, context):\n    while True:\n        pass\n",
            json!({"timeout_ms": 1500}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    gw.deploy("hello", HELLO).await;
    gw.wait_compiled("spin").await;
    gw.wait_compiled("hello").await;

    let start = Instant::now();
    let spinning = gw.invoke("spin", json!(null));
    let others = async {
        // While the loop runs, other requests are answered promptly.
        tokio::time::sleep(Duration::from_millis(200)).await;
        for _ in 0..5 {
            let begun = Instant::now();
            let (status, body) = gw.invoke("hello", json!({"name": "x"})).await;
            assert_eq!(status, 200, "{body}");
            assert!(
                begun.elapsed() < Duration::from_millis(1000),
                "a request took {:?} while another spun",
                begun.elapsed()
            );
        }
    };
    let ((status, body), ()) = tokio::join!(spinning, others);
    let elapsed = start.elapsed();
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "timeout");
    assert!(
        elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_millis(3000),
        "timed out after {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_fails_alone() {
    let gw = TestGateway::start(Config::new()).await;
    let (status, body) = gw
        .deploy_with(
            "bomb",
            "def handler(event, context):\n    hoard = []\n    while True:\n        hoard.append(bytearray(1 << 20))\n",
            json!({"memory_mb": 64}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    gw.deploy("hello", HELLO).await;
    let bomb = gw.invoke("bomb", json!(null));
    let others =
        futures::future::join_all((0..4).map(|_| gw.invoke("hello", json!({"name": "y"}))));
    let ((status, body), others) = tokio::join!(bomb, others);
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "memory_limit", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("64 MiB")
    );
    for (status, body) in others {
        assert_eq!(status, 200, "{body}");
    }
    // The bomb's function still serves the next request (fresh instance).
    let (status, _) = gw.invoke("bomb", json!(null)).await;
    assert_eq!(status, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_bad_requests_get_clear_errors() {
    let mut limits = Limits::default();
    limits.max_body_bytes = 4096;
    limits.header_read_timeout = Duration::from_millis(500);
    let gw = TestGateway::start(Config::new().with_limits(limits)).await;
    gw.deploy("hello", HELLO).await;

    // A request head over the 16 KiB limit: 431 from hyper.
    let response = gw
        .client
        .get(format!("{}/healthz", gw.url))
        .header("x-padding", "p".repeat(20_000))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 431);
    // A client that never finishes its head is cut off after the timeout.
    let addr = gw.gateway.local_addr();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut slow = std::net::TcpStream::connect(addr).unwrap();
        slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        let mut rest = Vec::new();
        // Ends (EOF or reset) well before the 5 s read timeout.
        match slow.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) => assert_ne!(
                e.kind(),
                std::io::ErrorKind::WouldBlock,
                "the connection was kept open past the header read timeout"
            ),
        }
    })
    .await
    .unwrap();

    let big = format!("{{\"name\": \"{}\"}}", "a".repeat(10_000));
    let response = gw
        .client
        .post(format!("{}/v1/functions/hello/invoke", gw.url))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");
    // A deploy too large is refused the same way, and nothing changes.
    let response = gw
        .client
        .put(format!("{}/v1/functions/hello", gw.url))
        .body(format!(
            "X = '{}'\ndef handler(e, c):\n    return 1\n",
            "b".repeat(10_000)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);

    let response = gw
        .client
        .post(format!("{}/v1/functions/hello/invoke", gw.url))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let (status, body) = gw.invoke("nothing-here", json!(null)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, body) = gw.deploy_with("Bad_Name", HELLO, json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let (status, body) = gw
        .deploy_with("hello", HELLO, json!({"timeout_ms": 0}))
        .await;
    assert_eq!(status, 400, "{body}");
    // Still version 1, still answering.
    let (status, body) = gw.invoke("hello", json!({"name": "z"})).await;
    assert_eq!((status, body["message"].as_str()), (200, Some("Hello, z!")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_and_scoped() {
    let config = Config::new()
        .with_admin_token("admin-secret")
        .with_invoke_token("invoke-secret");
    let gw = TestGateway::start(config).await;
    let put = |token: Option<&str>| {
        let request = gw
            .client
            .put(format!("{}/v1/functions/hello", gw.url))
            .body(HELLO);
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
        .send()
    };
    let missing = put(None).await.unwrap();
    assert_eq!(missing.status().as_u16(), 401);
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    assert_eq!(put(Some("wrong")).await.unwrap().status().as_u16(), 401);
    assert_eq!(
        put(Some("invoke-secret")).await.unwrap().status().as_u16(),
        403
    );
    assert_eq!(
        put(Some("admin-secret")).await.unwrap().status().as_u16(),
        201
    );

    let invoke = |token: &'static str| {
        gw.client
            .post(format!("{}/v1/functions/hello/invoke", gw.url))
            .bearer_auth(token)
            .json(&json!({"name": "t"}))
            .send()
    };
    assert_eq!(
        invoke("invoke-secret").await.unwrap().status().as_u16(),
        200
    );
    assert_eq!(invoke("admin-secret").await.unwrap().status().as_u16(), 200);
    assert_eq!(invoke("wrong").await.unwrap().status().as_u16(), 401);
    let listed = gw
        .client
        .get(format!("{}/v1/functions", gw.url))
        .bearer_auth("invoke-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status().as_u16(), 403);
    // Health needs no token.
    let health = gw
        .client
        .get(format!("{}/healthz", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_address_without_tokens_is_refused() {
    let config = Config::new().with_listen("0.0.0.0:0".parse().unwrap());
    match eryx_gateway::Gateway::start(config).await {
        Err(eryx_gateway::Error::Config(message)) => {
            assert!(message.contains("without tokens"), "{message}")
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deploys_keep_the_previous_version() {
    let gw = TestGateway::start(Config::new()).await;
    gw.deploy("hello", HELLO).await;

    let (status, body) = gw
        .deploy_with(
            "hello",
            "def handler(event, context:\n    return 1\n",
            json!({}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "deploy_failed");
    assert_eq!(body["error"]["type"], "SyntaxError");
    assert!(
        body["error"]["traceback"]
            .as_str()
            .unwrap()
            .contains("hello.py")
    );

    let (status, body) = gw
        .deploy_with(
            "hello",
            "import json\nCONFIG = json.loads('{broken')\ndef handler(e, c):\n    return 1\n",
            json!({}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["type"], "json.decoder.JSONDecodeError");
    assert!(
        body["error"]["traceback"]
            .as_str()
            .unwrap()
            .contains("line 2"),
        "{body}"
    );

    let (status, body) = gw
        .deploy_with(
            "hello",
            "def not_the_handler(e, c):\n    return 1\n",
            json!({}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["type"], "eryx.HandlerNotFound");

    let (status, body) = gw.invoke("hello", json!({"name": "still v1"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"], "Hello, still v1!");
    let info = gw.info("hello").await;
    assert_eq!(info["version"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_parses_and_lists_every_route() {
    let gw = TestGateway::start(Config::new()).await;
    let document: serde_json::Value = gw
        .client
        .get(format!("{}/openapi.json", gw.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = document["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/healthz", &["get"][..]),
        ("/readyz", &["get"]),
        ("/metrics", &["get"]),
        ("/openapi.json", &["get"]),
        ("/v1/functions", &["get"]),
        ("/v1/functions/{name}", &["get", "put", "delete"]),
        ("/v1/functions/{name}/invoke", &["post"]),
        ("/v1/sessions", &["get", "post"]),
        ("/v1/sessions/{id}", &["get", "delete"]),
        ("/v1/sessions/{id}/execute", &["post"]),
        ("/v1/sessions/{id}/state", &["get", "put"]),
    ] {
        let item = paths
            .get(path)
            .unwrap_or_else(|| panic!("{path} missing from {:?}", paths.keys()));
        for method in methods {
            assert!(item.get(*method).is_some(), "{method} {path} missing");
        }
    }
    assert_eq!(paths.len(), 11, "{:?}", paths.keys());
    assert!(document["components"]["schemas"]["ErrorBody"].is_object());
    // Every error code is one of a typed enum, listed in the document.
    let codes = document["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", document["components"]["schemas"]["ErrorCode"]));
    for code in [
        "not_found",
        "result_not_json",
        "host_not_allowed",
        "integrity",
        "trap",
        "conflict",
        "state_too_large",
    ] {
        assert!(
            codes.contains(&serde_json::json!(code)),
            "{code}: {codes:?}"
        );
    }
    assert!(document["components"]["securitySchemes"]["bearer"].is_object());
    // The same document is available without a server.
    let offline: serde_json::Value =
        serde_json::from_str(&eryx_gateway::openapi_document()).unwrap();
    assert_eq!(offline, document);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_endpoints_request_ids_and_output() {
    let gw = TestGateway::start(Config::new()).await;
    for path in ["healthz", "readyz"] {
        let response = gw
            .client
            .get(format!("{}/{path}", gw.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert!(response.headers().contains_key("x-request-id"));
    }
    gw.deploy(
        "chatty",
        "import sys\ndef handler(event, context):\n    print('to stdout')\n    print('to stderr', file=sys.stderr)\n    return {'id': context.request_id, 'left': context.remaining_time_ms() > 0}\n",
    )
    .await;
    let response = gw
        .client
        .post(format!(
            "{}/v1/functions/chatty/invoke?include_output=true",
            gw.url
        ))
        .header("x-request-id", "my-request-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "my-request-1");
    assert!(response.headers().contains_key("server-timing"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"result": {"id": "my-request-1", "left": true}, "stdout": "to stdout\n", "stderr": "to stderr\n"})
    );
    let metrics = gw
        .client
        .get(format!("{}/metrics", gw.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for metric in [
        "eryx_invocations_total{function=\"chatty\",outcome=\"ok\"} 1",
        "eryx_invocation_duration_seconds_bucket",
        "eryx_instance_create_seconds_count",
        "eryx_queue_depth",
        "eryx_deploys_total{outcome=\"ok\"} 1",
    ] {
        assert!(metrics.contains(metric), "{metric} not in:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_handlers_are_awaited() {
    let gw = TestGateway::start(Config::new()).await;
    gw.deploy("fanout", include_str!("../examples/functions/fanout.py"))
        .await;
    let (status, body) = gw.invoke("fanout", json!({"items": [1, 2, 3]})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"], json!([2, 4, 6]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests_and_restart_keeps_functions() {
    let gw = TestGateway::start(Config::new()).await;
    gw.deploy(
        "slow",
        "import time\ndef handler(event, context):\n    time.sleep(1)\n    return 'done'\n",
    )
    .await;
    let url = format!("{}/v1/functions/slow/invoke", gw.url);
    let client = gw.client.clone();
    let in_flight = tokio::spawn(async move { client.post(url).send().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let TestGateway { gateway, store, .. } = gw;
    gateway.shutdown().await;
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request was answered");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.text().await.unwrap(), "\"done\"");

    // A new gateway on the same store serves the function deployed before.
    let gw = TestGateway::start_on(Config::new(), store).await;
    let info = gw.info("slow").await;
    assert_eq!(info["version"], 1, "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_functions_through_s3_and_survive_its_outage() {
    let server = S3Server::start();
    server.create_bucket("eryx-gateway");
    let location = "s3://eryx-gateway/prod";
    // Seed the bucket with the base artifact (as `eryx build --store` would).
    server.seed(location).await;

    let s3_config = || {
        let mut limits = Limits::default();
        limits.refresh_interval = Duration::from_millis(300);
        server.gateway_config(location).with_limits(limits)
    };
    let (first, first_url) = start_gateway(s3_config()).await;
    let (second, second_url) = start_gateway(s3_config()).await;
    let client = reqwest::Client::new();
    let deployed = client
        .put(format!("{first_url}/v1/functions/hello?wait=true"))
        .body(HELLO)
        .send()
        .await
        .unwrap();
    assert_eq!(deployed.status().as_u16(), 201);
    // The other replica finds it in S3 and serves it.
    let response = client
        .post(format!("{second_url}/v1/functions/hello/invoke"))
        .json(&json!({"name": "replica"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["message"], "Hello, replica!");

    // A redeployment through the first replica reaches the second.
    let redeployed = client
        .put(format!("{first_url}/v1/functions/hello?wait=true"))
        .body("def handler(event, context):\n    return 'v2'\n")
        .send()
        .await
        .unwrap();
    assert_eq!(
        redeployed.status().as_u16(),
        201,
        "{}",
        redeployed.text().await.unwrap()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = client
            .post(format!("{second_url}/v1/functions/hello/invoke"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        if response.text().await.unwrap() == "\"v2\"" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second replica kept serving v1"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // S3 goes away: loaded functions keep serving; store operations fail
    // with a clear, retryable error; nothing crashes.
    drop(server);
    let response = client
        .post(format!("{first_url}/v1/functions/hello/invoke"))
        .json(&json!({"name": "offline"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let began = Instant::now();
    let response = client
        .put(format!("{first_url}/v1/functions/other"))
        .body(HELLO)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    assert!(
        began.elapsed() < Duration::from_secs(60),
        "{:?}",
        began.elapsed()
    );
    let health = client
        .get(format!("{second_url}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_deploy_and_answer() {
    let gw = TestGateway::start(Config::new()).await;
    let examples = [
        ("hello", HELLO, json!({"name": "example"})),
        (
            "transform",
            include_str!("../examples/functions/transform.py"),
            json!({"orders": [{"sku": " a-1 ", "qty": "2", "price": "9.50"}, {"sku": "b", "qty": 1, "price": 0.25}]}),
        ),
        (
            "fanout",
            include_str!("../examples/functions/fanout.py"),
            json!({"items": [5]}),
        ),
        (
            "report",
            include_str!("../examples/functions/report.py"),
            json!({"text": "the cat and the hat", "top": 1}),
        ),
    ];
    for (name, source, _) in &examples {
        gw.deploy(name, source).await;
    }
    let answers: Vec<_> = futures::future::join_all(
        examples
            .iter()
            .map(|(name, _, event)| gw.invoke(name, event.clone())),
    )
    .await;
    for ((name, _, _), (status, body)) in examples.iter().zip(&answers) {
        assert_eq!(*status, 200, "{name}: {body}");
    }
    assert_eq!(answers[0].1["message"], "Hello, example!");
    assert_eq!(answers[1].1["total"], "19.25");
    assert_eq!(answers[1].1["orders"][0]["sku"], "A-1");
    assert_eq!(answers[2].1["results"], json!([10]));
    assert_eq!(answers[3].1["top"], json!([["the", 2]]));
    assert_eq!(answers[3].1["words"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_deploying_at_once_cannot_both_publish_a_version() {
    let store = tempfile::tempdir().unwrap();
    eryx_tests::seed_store(store.path());
    let config = || Config::new().with_store(store.path().to_str().unwrap());
    let (a, a_url) = start_gateway(config()).await;
    let (b, b_url) = start_gateway(config()).await;
    let client = reqwest::Client::new();
    let deploy = |url: String, answer: &'static str| {
        let client = client.clone();
        async move {
            let response = client
                .put(format!("{url}/v1/functions/raced"))
                .body(format!(
                    "def handler(event, context):\n    return {answer:?}\n"
                ))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.unwrap())
        }
    };
    // Both read "no record" before either writes one (the import and
    // snapshot take a few hundred ms in between): the store's conditional
    // put lets one create version 1, and the other learns it lost.
    let ((one, one_body), (two, two_body)) =
        tokio::join!(deploy(a_url.clone(), "a"), deploy(b_url.clone(), "b"));
    let mut statuses = [one, two];
    statuses.sort();
    assert_eq!(statuses, [201, 409], "{one_body} {two_body}");
    let loser = if one == 409 { &one_body } else { &two_body };
    assert_eq!(loser["error"]["code"], "conflict", "{loser}");
    let winner = if one == 201 { "a" } else { "b" };
    let json = |request: reqwest::RequestBuilder| async move {
        let response = request.send().await.unwrap();
        response.json::<serde_json::Value>().await.unwrap()
    };
    for url in [&a_url, &b_url] {
        let answer = json(client.post(format!("{url}/v1/functions/raced/invoke"))).await;
        assert_eq!(answer, winner);
        let info = json(client.get(format!("{url}/v1/functions/raced"))).await;
        assert_eq!(info["version"], 1, "{info}");
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// Counts its invocations in the function's key-value store and logs each.
const KV_COUNTER: &str = r#"
import kv, log

async def handler(event, context):
    n = await kv.get("count", 0) + 1
    await kv.put("count", n)
    await log.info("counted", n=n, tag=event.get("tag"))
    try:
        await kv.put("big", "x" * 70000)
        big = "stored"
    except TypeError as e:
        big = str(e)
    await kv.delete("missing")
    return {"count": n, "big": big, "other": await kv.get("other-key")}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_keep_counts_in_their_own_kv_store_and_log_with_the_request_id() {
    let logs = eryx_tests::capture_json_logs();
    let gw = TestGateway::start(Config::new()).await;
    gw.deploy("kv-counter", KV_COUNTER).await;
    for expected in 1..=3 {
        let (status, body) = gw.invoke("kv-counter", json!({"tag": "t"})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["count"], expected, "{body}");
        assert!(
            body["big"].as_str().unwrap().contains("over the limit"),
            "{body}"
        );
        assert_eq!(body["other"], serde_json::Value::Null);
    }
    // Another function has its own namespace.
    gw.deploy(
        "kv-reader",
        "import kv\nasync def handler(event, context):\n    return await kv.get('count', 'none')\n",
    )
    .await;
    let (_, body) = gw.invoke("kv-reader", json!({})).await;
    assert_eq!(body, json!("none"));

    // The log events carry the function, the fields and the request id.
    let response = gw
        .client
        .post(format!("{}/v1/functions/kv-counter/invoke", gw.url))
        .header("x-request-id", "log-test-request")
        .json(&json!({"tag": "find-me"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let events = logs.events();
    let event = events
        .iter()
        .find(|e| {
            e["target"] == "eryx::function"
                && e["fields"]["message"] == "counted"
                && e["fields"]["fields"]
                    .as_str()
                    .is_some_and(|f| f.contains("find-me"))
        })
        .unwrap_or_else(|| panic!("no log event in {events:#?}"));
    assert_eq!(event["fields"]["function"], "kv-counter");
    assert_eq!(event["span"]["request_id"], "log-test-request", "{event}");
    assert_eq!(event["level"], "INFO");
}

/// Fetches `event["url"]` with urllib and returns the body or the error;
/// also writes and reads a file in `/tmp`.
const FETCHER: &str = r#"
import urllib.request, urllib.error

def handler(event, context):
    with open("/tmp/scratch.txt", "w") as f:
        f.write(event["url"])
    scratch = open("/tmp/scratch.txt").read() == event["url"]
    try:
        with urllib.request.urlopen(event["url"], timeout=5) as r:
            return {"ok": True, "body": r.read().decode(), "scratch": scratch}
    except urllib.error.URLError as e:
        return {"ok": False, "error": f"{type(e.reason).__name__}: {e.reason}", "scratch": scratch}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_reaches_only_the_hosts_it_lists_and_the_operator_opened() {
    let server = eryx_tests::WebServer::http().await;
    let rule = format!("http://127.0.0.1:{}", server.port);
    let mut limits = Limits::default();
    limits.allow_private_hosts = vec![rule.clone()];
    let gw = TestGateway::start(Config::new().with_limits(limits)).await;
    let url = format!("{}/hello", server.url);

    // Listed, and opened by the operator to its private address: answers.
    let (status, body) = gw
        .deploy_with("fetch-allowed", FETCHER, json!({ "allow_hosts": [rule] }))
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, out) = gw.invoke("fetch-allowed", json!({ "url": url })).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["body"], "hello from the test server", "{out}");
    assert_eq!(out["scratch"], true);
    assert_eq!(gw.info("fetch-allowed").await["allow_hosts"][0], rule);

    // No allow_hosts: no network at all.
    gw.deploy("fetch-none", FETCHER).await;
    let (status, out) = gw.invoke("fetch-none", json!({ "url": url })).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["ok"], false);
    assert!(
        out["error"]
            .as_str()
            .unwrap()
            .contains("NetworkPolicyError"),
        "{out}"
    );

    // Listed by another spelling the operator did not open: public only.
    let other = format!("127.0.0.1:{}", server.port);
    let (status, body) = gw
        .deploy_with("fetch-public", FETCHER, json!({ "allow_hosts": [other] }))
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, out) = gw.invoke("fetch-public", json!({ "url": url })).await;
    assert!(out["error"].as_str().unwrap().contains("loopback"), "{out}");

    // A rule that does not parse is a 400 at deploy.
    let (status, body) = gw
        .deploy_with("fetch-bad", FETCHER, json!({ "allow_hosts": ["ftp://x"] }))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(server.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    gw.gateway.shutdown().await;
}

/// A zip of `files` (path, contents), as a deploy bundle.
fn zip_bundle(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    use std::io::Write;
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (path, contents) in files {
        out.start_file(*path, zip::write::SimpleFileOptions::default())
            .unwrap();
        out.write_all(contents).unwrap();
    }
    out.finish().unwrap().into_inner()
}

const BUNDLED_MAIN: &str = r#"
import os, sys
import attr
import helpers
from shapes import util

# Imported at deploy: the snapshot already holds it.
IMPORTED_AT_DEPLOY = "attr" in sys.modules

@attr.s(frozen=True)
class Point:
    x = attr.ib()
    y = attr.ib(default=0)

def handler(event, context):
    return {
        "point": repr(Point(event["x"])),
        "double": helpers.double(event["x"]),
        "shape": util.NAME,
        "attr_mounted": attr.__file__.startswith("/eryx/path/"),
        "imported_at_deploy": IMPORTED_AT_DEPLOY,
        "greeting": os.environ.get("GREETING"),
    }
"#;

async fn deploy_zip(gw: &TestGateway, name: &str, zip: Vec<u8>) -> (u16, serde_json::Value) {
    let response = gw
        .client
        .put(format!("{}/v1/functions/{name}", gw.url))
        .header("content-type", "application/zip")
        .body(zip)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zip_bundle_with_modules_and_a_real_wheel_deploys_answers_and_loads_on_another_replica() {
    let attrs = std::fs::read(eryx_tests::fetch_wheel(eryx_tests::ATTRS_WHEEL)).unwrap();
    let zip = zip_bundle(&[
        ("main.py", BUNDLED_MAIN.as_bytes().to_vec()),
        ("helpers.py", b"def double(x):\n    return 2 * x\n".to_vec()),
        ("shapes/__init__.py", Vec::new()),
        ("shapes/util.py", b"NAME = 'square'\n".to_vec()),
        ("wheels/attrs-25.3.0-py3-none-any.whl", attrs),
        (
            "eryx.json",
            br#"{"timeout_ms": 5000, "env": {"GREETING": "hi"}}"#.to_vec(),
        ),
    ]);
    let sha = eryx_preinit::sha256_hex(&zip);
    let store = tempfile::tempdir().unwrap();
    eryx_tests::seed_store(store.path());
    let config = || Config::new().with_store(store.path().to_str().unwrap());
    let (a, a_url) = start_gateway(config()).await;
    let a_gw = TestGateway {
        gateway: a,
        url: a_url,
        client: reqwest::Client::new(),
        store: tempfile::tempdir().unwrap(),
    };
    let (status, body) = deploy_zip(&a_gw, "bundled", zip).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["function"]["bundle_sha256"], sha.as_str());
    assert_eq!(body["function"]["timeout_ms"], 5000);
    let expected = json!({
        "point": "Point(x=3, y=0)",
        "double": 6,
        "shape": "square",
        "attr_mounted": true,
        "imported_at_deploy": true,
        "greeting": "hi",
    });
    let (status, out) = a_gw.invoke("bundled", json!({"x": 3})).await;
    assert_eq!((status, &out), (200, &expected));

    // Another replica without the unpacked bundle fetches it from the store.
    let unpacked = eryx_preinit::default_data_dir().join("bundles").join(&sha);
    std::fs::remove_dir_all(&unpacked).unwrap();
    let (b, b_url) = start_gateway(config()).await;
    let b_gw = TestGateway {
        gateway: b,
        url: b_url,
        client: reqwest::Client::new(),
        store: tempfile::tempdir().unwrap(),
    };
    let (status, out) = b_gw.invoke("bundled", json!({"x": 3})).await;
    assert_eq!((status, &out), (200, &expected));
    assert!(unpacked.join("attr/__init__.py").exists());

    // A wheel with native code is refused, and the deployed version stays.
    let native = std::fs::read(eryx_tests::fetch_wheel(eryx_tests::NATIVE_WHEEL)).unwrap();
    let zip = zip_bundle(&[
        (
            "main.py",
            b"def handler(event, context):\n    return 1\n".to_vec(),
        ),
        (
            "MarkupSafe-3.0.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            native,
        ),
    ]);
    let (status, body) = deploy_zip(&b_gw, "bundled", zip).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("native code"),
        "{body}"
    );
    // A bundle without main.py, or with a path outside it, is refused too.
    let (status, body) = deploy_zip(&b_gw, "bundled", zip_bundle(&[("app.py", Vec::new())])).await;
    assert_eq!(status, 400, "{body}");
    let (status, out) = b_gw.invoke("bundled", json!({"x": 1})).await;
    assert_eq!(status, 200, "{out}");
    a_gw.gateway.shutdown().await;
    b_gw.gateway.shutdown().await;
}

/// `.cwasm.delta` objects in a local store.
fn stored_deltas(store: &std::path::Path) -> Vec<(String, u64)> {
    std::fs::read_dir(store.join("artifacts"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let key = name.strip_suffix(".cwasm.delta")?.to_owned();
            Some((key, e.metadata().unwrap().len()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_version_is_stored_as_a_small_delta_and_rebuilt_on_another_replica() {
    let gw = TestGateway::start(Config::new()).await;
    gw.deploy(
        "doubler",
        "def handler(event, context):\n    return {'twice': event * 2}\n",
    )
    .await;
    gw.wait_compiled("doubler").await;
    let deltas = stored_deltas(gw.store.path());
    assert_eq!(deltas.len(), 1, "{deltas:?}");
    let (key, size) = deltas[0].clone();
    eprintln!("stored delta of function doubler: {size} bytes");
    assert!(size < 5 << 20, "the delta is {size} bytes");
    assert!(
        !gw.store
            .path()
            .join(format!("artifacts/{key}.cwasm"))
            .exists(),
        "the whole .cwasm is not stored too"
    );
    let TestGateway { gateway, store, .. } = gw;
    gateway.shutdown().await;

    // Another replica, with its own (empty) cache, on the same store: it
    // rebuilds the artifact from the base and the delta, verifies it, serves.
    let data_dir = tempfile::tempdir().unwrap();
    let config = Config::new()
        .with_data_dir(data_dir.path())
        .with_signing_key(eryx_tests::signing_key());
    let gw = TestGateway::start_on(config, store).await;
    gw.wait_compiled("doubler").await;
    let (status, body) = gw.invoke("doubler", json!(21)).await;
    assert_eq!((status, body), (200, json!({"twice": 42})));
    let rebuilt = std::fs::read_dir(data_dir.path().join("cache"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("{key}."))
        })
        .count();
    assert_eq!(rebuilt, 1, "the rebuilt .cwasm is cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_no_function_names_are_collected_and_the_live_ones_kept() {
    let mut limits = Limits::default();
    limits.artifact_gc_interval = Duration::from_millis(200);
    limits.artifact_gc_grace = Duration::ZERO;
    let gw = TestGateway::start(Config::new().with_limits(limits)).await;
    let manifests = |gw: &TestGateway| -> Vec<String> {
        std::fs::read_dir(gw.store.path().join("artifacts"))
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                name.strip_suffix(".json").map(str::to_owned)
            })
            .collect()
    };
    // The seeded store holds base artifacts (one per engine the tests use).
    let bases = manifests(&gw);
    assert!(!bases.is_empty());
    gw.deploy("versioned", "def handler(event, context):\n    return 1\n")
        .await;
    gw.wait_compiled("versioned").await;
    let first = gw.info("versioned").await["artifact"]
        .as_str()
        .unwrap()
        .to_owned();
    gw.deploy("versioned", "def handler(event, context):\n    return 2\n")
        .await;
    gw.wait_compiled("versioned").await;
    let second = gw.info("versioned").await["artifact"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(first, second);
    let deadline = Instant::now() + Duration::from_secs(20);
    while manifests(&gw).contains(&first) {
        assert!(
            Instant::now() < deadline,
            "version 1's artifact was never collected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = manifests(&gw);
    assert!(left.contains(&second), "{left:?}");
    assert!(
        bases.iter().all(|b| left.contains(b)),
        "the bases stay: {left:?}"
    );
    assert!(
        !gw.store
            .path()
            .join(format!("artifacts/{first}.cwasm.delta"))
            .exists(),
        "the delta went with its manifest"
    );
    let (status, body) = gw.invoke("versioned", json!(null)).await;
    assert_eq!((status, body), (200, json!(2)));
}
