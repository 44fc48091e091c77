//! Sessions benchmark: `x += 1` in a session whose state also holds a
//! 1 KB, 100 KB or 1 MB value (random bytes, so zstd cannot shrink it),
//! over loopback HTTP, side by side with a plain invoke of hello on the same
//! gateway; on the local store and on moto's S3 server; with this replica's
//! state cache (hit: the download is skipped) and without it (miss: every
//! request downloads the state). Concurrency 1 and 8 (one session per
//! worker). A load test, as `gateway`; run with
//! `cargo bench -p eryx-benches --bench sessions`; `ERYX_BENCH_SECONDS` sets
//! each step's duration (default 3). Figures in README.md.

use eryx_gateway::{Config, Limits};
use eryx_tests::{S3Server, start_gateway};
use serde_json::json;

mod load;
use load::{Step, load, ms};

const HELLO: &str = include_str!("../examples/functions/hello.py");

fn print(step: &Step) {
    println!(
        "{:<34} {:>5} {:>9.3} {:>9.3} {:>8.0} {:>7}",
        step.name,
        step.concurrency,
        ms(step.percentile(0.5)),
        ms(step.percentile(0.99)),
        step.rate(),
        step.errors
    );
}

/// Creates `count` sessions holding `x = 0` and `blob`, `size` random bytes.
async fn sessions(client: &reqwest::Client, url: &str, count: usize, size: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..count {
        let id = eryx_tests::create_session(client, url).await;
        let defined: serde_json::Value = client
            .post(format!("{url}/v1/sessions/{id}/execute"))
            .json(&json!({"code": format!("import os\nx = 0\nblob = os.urandom({size})")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(defined["saved"], true, "{defined}");
        ids.push(id);
    }
    ids
}

fn limits(cache: bool) -> Limits {
    let mut limits = Limits::default();
    limits.max_concurrency = 64;
    limits.function_max_concurrency = 64;
    if !cache {
        limits.session_cache_bytes = 0;
    }
    limits
}

fn main() {
    let seconds = load::step_seconds(3.0);
    let tokio = load::runtime();
    tokio.block_on(async {
        let s3 = S3Server::start();
        s3.create_bucket("eryx-bench");
        let location = "s3://eryx-bench/sessions";
        s3.seed(location).await;
        let local_store = tempfile::tempdir().unwrap();
        eryx_tests::seed_store(local_store.path());
        let local = |cache| {
            Config::new()
                .with_store(local_store.path().to_str().unwrap())
                .with_limits(limits(cache))
        };
        let gateways = [
            ("local", "hit", start_gateway(local(true)).await),
            ("local", "miss", start_gateway(local(false)).await),
            (
                "s3",
                "hit",
                start_gateway(s3.gateway_config(location).with_limits(limits(true))).await,
            ),
            (
                "s3",
                "miss",
                start_gateway(s3.gateway_config(location).with_limits(limits(false))).await,
            ),
        ];
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .unwrap();
        let local_url = gateways[0].2.1.clone();
        let deployed = client
            .put(format!("{local_url}/v1/functions/hello?wait=true"))
            .body(HELLO)
            .send()
            .await
            .unwrap();
        assert_eq!(deployed.status().as_u16(), 201);
        let invoke_url = format!("{local_url}/v1/functions/hello/invoke");
        let warm = invoke_url.clone();
        load(
            &client,
            "warm-up",
            move |c, _| c.post(warm.clone()).body("{}"),
            8,
            0.5,
        )
        .await;

        println!(
            "\n{:<34} {:>5} {:>9} {:>9} {:>8} {:>7}",
            "request (store, cache, state)", "conc", "p50 ms", "p99 ms", "req/s", "errors"
        );
        for concurrency in [1, 8] {
            let url = invoke_url.clone();
            let invoke = load(
                &client,
                "plain invoke of hello",
                move |c, _| c.post(url.clone()).body(r#"{"name": "bench"}"#),
                concurrency,
                seconds,
            )
            .await;
            print(&invoke);
            for (store, cache, (_, url)) in &gateways {
                for (size, label) in [(1 << 10, "1 KB"), (100 << 10, "100 KB"), (1 << 20, "1 MB")] {
                    let ids = sessions(&client, url, concurrency, size).await;
                    let urls: Vec<String> = ids
                        .iter()
                        .map(|id| format!("{url}/v1/sessions/{id}/execute"))
                        .collect();
                    let step = load(
                        &client,
                        &format!("execute x += 1 ({store}, {cache}, {label})"),
                        move |c, worker| {
                            c.post(urls[worker].clone())
                                .header("content-type", "text/x-python")
                                .body("x += 1")
                        },
                        concurrency,
                        seconds,
                    )
                    .await;
                    print(&step);
                    if *store == "local" && *cache == "hit" && size == 100 << 10 {
                        println!(
                            "{:<34} {:>5} {:>9.2}x (target ≤ 2x)",
                            "  restore+execute+save / invoke",
                            concurrency,
                            ms(step.percentile(0.5)) / ms(invoke.percentile(0.5)),
                        );
                    }
                }
            }
        }
        for (_, _, (gateway, _)) in gateways {
            gateway.shutdown().await;
        }
    });
}
