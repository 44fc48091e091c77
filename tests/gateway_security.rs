//! The gateway against a hostile caller, deployer or store: each test is
//! named after the threat it stops, over real HTTP with real CPython.

use std::time::{Duration, Instant};

use eryx_gateway::{Config, Limits};
use eryx_tests::TestGateway;
use serde_json::json;

const RAISES: &str = "import os\nSECRET = os.environ.get('SECRET')\n\ndef handler(event, context):\n    print('the secret is', SECRET)\n    raise ValueError('boom')\n";

/// Asserts a deploy refused because its module's code outran the import timeout.
fn assert_import_timed_out(status: u16, body: &serde_json::Value) {
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "deploy_failed", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("import timeout"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_sleeping_forever_at_import_neither_hangs_its_deploy_nor_blocks_others() {
    let mut limits = Limits::default();
    limits.deploy_import_timeout = Duration::from_secs(2);
    let gw = TestGateway::start(Config::new().with_limits(limits)).await;
    let start = Instant::now();
    let sleepy = gw.deploy_with(
        "sleepy",
        "import time\ntime.sleep(10**6)\ndef handler(e, c):\n    return 1\n",
        json!({}),
    );
    let other = async {
        // Starts while the sleepy deploy holds its slot.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, body) = gw
            .deploy_with(
                "quick",
                "def handler(e, c):\n    return 'quick'\n",
                json!({}),
            )
            .await;
        (status, body, start.elapsed())
    };
    let ((status, body), (other_status, other_body, other_done)) = tokio::join!(sleepy, other);
    let elapsed = start.elapsed();
    assert_import_timed_out(status, &body);
    assert!(
        elapsed < Duration::from_secs(6),
        "the deploy took {elapsed:?}"
    );
    assert_eq!(other_status, 201, "{other_body}");
    assert!(
        other_done < elapsed,
        "the second deploy waited for the first: {other_done:?} vs {elapsed:?}"
    );
    assert_eq!(gw.invoke("quick", json!(null)).await, (200, json!("quick")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizer_looping_forever_when_the_snapshot_collects_does_not_hang_its_deploy() {
    // The import finishes; the garbage cycle it leaves is collected just
    // before the function's snapshot, which runs its `__del__`: that step has
    // the import's timeout too.
    let mut limits = Limits::default();
    limits.deploy_import_timeout = Duration::from_secs(2);
    let gw = TestGateway::start(Config::new().with_limits(limits)).await;
    let source = "class Loop:\n    def __del__(self):\n        while True:\n            pass\n\
        cycle = Loop()\ncycle.me = cycle\ndel cycle\n\
        def handler(e, c):\n    return 1\n";
    let start = Instant::now();
    let (status, body) = gw.deploy_with("finalizes", source, json!({})).await;
    let elapsed = start.elapsed();
    assert_import_timed_out(status, &body);
    assert!(
        elapsed < Duration::from_secs(6),
        "the deploy took {elapsed:?}"
    );
    gw.deploy("quick", "def handler(e, c):\n    return 'quick'\n")
        .await;
    assert_eq!(gw.invoke("quick", json!(null)).await, (200, json!("quick")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_that_rebinds_json_dumps_gets_result_not_json_not_a_broken_body() {
    let gw = TestGateway::start(Config::new()).await;
    gw.deploy(
        "sabotage",
        "import json\n\ndef handler(event, context):\n    json.dumps = lambda *a, **k: '{not json'\n    return {'ok': True}\n",
    )
    .await;
    let (status, body) = gw.invoke("sabotage", json!({})).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "result_not_json", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_result_and_output_are_refused_or_cut_on_the_host() {
    let mut limits = Limits::default();
    limits.max_response_bytes = 10_000;
    let gw = TestGateway::start(Config::new().with_limits(limits)).await;
    gw.deploy(
        "big",
        "import os\n\ndef handler(event, context):\n    data = memoryview(b'o' * 5_000_000)\n    while data:\n        data = data[os.write(1, data):]\n    return 'r' * event\n",
    )
    .await;
    let (status, body) = gw.invoke("big", json!(20_000_000)).await;
    assert_eq!(status, 500);
    assert_eq!(body["error"]["code"], "result_too_large", "{body}");
    // Under the limit, with output: the output is capped (1 MiB) on the host.
    let response = gw
        .client
        .post(format!(
            "{}/v1/functions/big/invoke?include_output=true",
            gw.url
        ))
        .json(&json!(100))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["result"], json!("r".repeat(100)));
    let stdout = body["stdout"].as_str().unwrap();
    assert!(stdout.len() < (1 << 20) + 200, "{}", stdout.len());
    assert!(
        stdout.ends_with("more bytes not shown]\n"),
        "{}",
        &stdout[stdout.len() - 80..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_only_token_gets_no_traceback_or_output() {
    let config = Config::new()
        .with_admin_token("admin-secret")
        .with_invoke_token("invoke-secret");
    let gw = TestGateway::start(config).await;
    let deployed = gw
        .client
        .put(format!("{}/v1/functions/leaky", gw.url))
        .bearer_auth("admin-secret")
        .json(&json!({"source": RAISES, "env": {"SECRET": "hunter2"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(deployed.status().as_u16(), 201);
    let invoke = |token: &'static str, include: bool| {
        gw.client
            .post(format!(
                "{}/v1/functions/leaky/invoke{}",
                gw.url,
                if include { "?include_output=true" } else { "" }
            ))
            .header("authorization", format!("bearer {token}"))
            .json(&json!({}))
            .send()
    };
    for (token, include) in [("invoke-secret", false), ("admin-secret", false)] {
        let response = invoke(token, include).await.unwrap();
        assert_eq!(response.status().as_u16(), 500);
        let text = response.text().await.unwrap();
        assert!(
            !text.contains("hunter2") && !text.contains("traceback"),
            "{text}"
        );
        assert!(text.contains("ValueError"), "{text}");
    }
    let refused = invoke("invoke-secret", true).await.unwrap();
    assert_eq!(refused.status().as_u16(), 403);
    let admin = invoke("admin-secret", true).await.unwrap();
    let body: serde_json::Value = admin.json().await.unwrap();
    assert!(
        body["error"]["traceback"]
            .as_str()
            .unwrap()
            .contains("leaky.py"),
        "{body}"
    );
    assert_eq!(body["error"]["stdout"], "the secret is hunter2\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_rebinding_host_is_refused_without_tokens() {
    let gw = TestGateway::start(Config::new()).await;
    let port = gw.gateway.local_addr().port();
    let get = |host: String| {
        gw.client
            .get(format!("{}/v1/functions", gw.url))
            .header("host", host)
            .send()
    };
    let rebound = get(format!("attacker.example:{port}")).await.unwrap();
    assert_eq!(rebound.status().as_u16(), 403);
    let body: serde_json::Value = rebound.json().await.unwrap();
    assert_eq!(body["error"]["code"], "host_not_allowed");
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        assert_eq!(get(host).await.unwrap().status().as_u16(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_does_not_leak_why_start_up_failed() {
    let dir = tempfile::tempdir().unwrap();
    // A store that cannot be opened: start-up fails, naming the bucket and
    // paths in its error.
    let config = Config::new()
        .with_listen("127.0.0.1:0".parse().unwrap())
        .with_store("s3:///secret-bucket-name")
        .with_data_dir(dir.path());
    let gateway = eryx_gateway::Gateway::start(config).await.unwrap();
    assert!(gateway.ready().await.is_err());
    let url = format!("http://{}", gateway.local_addr());
    let response = reqwest::get(format!("{url}/readyz")).await.unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let text = response.text().await.unwrap();
    assert_eq!(text, r#"{"status":"failed"}"#);
    let listed = reqwest::get(format!("{url}/v1/functions")).await.unwrap();
    assert_eq!(listed.status().as_u16(), 503);
    let text = listed.text().await.unwrap();
    assert!(!text.contains("secret-bucket-name"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_in_an_environment_value_is_refused_at_deploy() {
    let gw = TestGateway::start(Config::new()).await;
    let (status, body) = gw
        .deploy_with(
            "nul",
            "def handler(e, c):\n    return 1\n",
            json!({"env": {"KEY": "a\u{0}b"}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn os_exit_in_a_handler_is_the_functions_exit() {
    let gw = TestGateway::start(Config::new()).await;
    gw.deploy(
        "quitter",
        "import os\n\ndef handler(e, c):\n    os._exit(7)\n",
    )
    .await;
    let (status, body) = gw.invoke("quitter", json!({})).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "python_exit", "{body}");
    // WASI 0.2 carries success or failure only: 7 arrives as 1.
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("status 1"),
        "{body}"
    );
    assert_eq!(gw.invoke("quitter", json!({})).await.0, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_function_record_is_refused_not_served() {
    let gw = TestGateway::start(Config::new()).await;
    gw.deploy("victim", "def handler(e, c):\n    return 'original'\n")
        .await;
    let path = gw.store.path().join("functions/victim.json");
    let record = std::fs::read_to_string(&path).unwrap();
    // Someone with write access to the store (not the key) raises the
    // function's limits: the signature no longer verifies.
    std::fs::write(
        &path,
        record.replace("\"timeout_ms\": 10000", "\"timeout_ms\": 300000"),
    )
    .unwrap();
    let TestGateway { gateway, store, .. } = gw;
    gateway.shutdown().await;
    let gw = TestGateway::start_on(Config::new(), store).await;
    let (status, body) = gw.invoke("victim", json!({})).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "integrity", "{body}");
    // The listing leaves it out rather than failing as a whole.
    let listed = gw.list().await;
    assert_eq!(listed["functions"], json!([]), "{listed}");
}
