//! Gateway benchmark: invocations of the hello function over loopback HTTP,
//! a fresh instance per request, side by side with `/healthz` (the same
//! server, client and connections without Python), at concurrency 1, 8 and
//! 64; and the time to deploy a function.
//!
//! A load test rather than a criterion benchmark (criterion times one
//! routine at a time; here latency percentiles and throughput under
//! concurrency are the point). Run with
//! `cargo bench -p eryx-benches --bench gateway`; figures in README.md.
//! `ERYX_BENCH_SECONDS` sets the duration of each load step (default 5).

use std::time::{Duration, Instant};

use eryx_tests::TestGateway;

mod load;
use load::{load, ms};

const HELLO: &str = include_str!("../examples/functions/hello.py");

/// Compiles one per-function snapshot twice, side by side: on an engine
/// with the compile cache (warm from the base) and on one without.
async fn compile_with_and_without_cache() {
    let data_dir = eryx_preinit::default_data_dir();
    let cache_dir = eryx_preinit::cache_dir(&data_dir);
    let key = eryx_preinit::signing_key(&data_dir).unwrap();
    let store = eryx_preinit::ArtifactStore::open(
        &eryx_preinit::default_store_location(&data_dir),
        &cache_dir,
        &key,
    )
    .unwrap();
    let cached = eryx::Engine::new(
        eryx::EngineOptions::default()
            .with_pool_size(4)
            .with_compile_cache(cache_dir.join("compile"), key.clone()),
    )
    .unwrap();
    let (runtime, report) =
        eryx_preinit::ensure_runtime(&data_dir, &store, &cached, &eryx_preinit::LogProgress)
            .await
            .unwrap();
    let base = std::fs::read(store.fetch_snapshot(&report.manifest).await.unwrap()).unwrap();
    let builder = eryx::FunctionBuilder::new(&cached, base, runtime.stdlib_dir()).unwrap();
    let snapshot = builder
        .snapshot(&eryx::FunctionSource {
            module_name: "hello",
            source: HELLO,
            handler: "handler",
            import_timeout: Duration::from_secs(30),
            memory_limit_bytes: None,
        })
        .await
        .unwrap();
    let plain = eryx::Engine::new(eryx::EngineOptions::default().with_pool_size(4)).unwrap();
    println!(
        "function snapshot: import + snapshot {:.0} ms, {:.1} MB",
        ms(snapshot.snapshot_time),
        snapshot.wasm.len() as f64 / 1e6
    );
    for (name, engine) in [
        ("without compile cache", &plain),
        ("with compile cache", &cached),
    ] {
        let begun = Instant::now();
        let cwasm = engine.precompile(&snapshot.wasm).unwrap();
        println!(
            "  compile {name}: {:.0} ms ({:.1} MB)",
            ms(begun.elapsed()),
            cwasm.len() as f64 / 1e6
        );
    }
}

fn main() {
    let seconds = load::step_seconds(5.0);
    let tokio = load::runtime();
    tokio.block_on(async {
        compile_with_and_without_cache().await;
        let mut limits = eryx_gateway::Limits::default();
        limits.max_concurrency = 64;
        limits.function_max_concurrency = 64;
        let gw = TestGateway::start(eryx_gateway::Config::new().with_limits(limits)).await;

        // Deploy time: a source never seen before (so nothing is cached but
        // the compile cache), measured three times.
        println!("deploy (new source each time; compile cache warm from the base):");
        for i in 0..3 {
            let nonce = format!(
                "# nonce {} {}\n",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            );
            let source = format!("{nonce}{HELLO}");
            let begun = Instant::now();
            let response = gw
                .client
                .put(format!("{}/v1/functions/deploy-{i}?wait=true", gw.url))
                .body(source)
                .send()
                .await
                .unwrap();
            let body: serde_json::Value = response.json().await.unwrap();
            println!(
                "  deploy {i}: serving after {} ms (import + snapshot), compiled snapshot after {:.0} ms (compile {} ms); client saw {:.0} ms",
                body["timings_ms"]["snapshot_ms"],
                ms(begun.elapsed()),
                body["timings_ms"]["compile_ms"],
                ms(begun.elapsed()),
            );
        }

        let response = gw
            .client
            .put(format!("{}/v1/functions/hello?wait=true", gw.url))
            .body(HELLO)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
        let invoke_url = format!("{}/v1/functions/hello/invoke", gw.url);
        let health_url = format!("{}/healthz", gw.url);
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(128)
            .build()
            .unwrap();
        // Warm up connections and code paths.
        load(&client, "warm-up", move |c, _| c.get(health_url.clone()), 8, 0.5).await;
        let health_url = format!("{}/healthz", gw.url);

        println!(
            "\n{:<10} {:>5} {:>10} {:>10} {:>10} {:>8}",
            "request", "conc", "p50 ms", "p99 ms", "req/s", "errors"
        );
        for concurrency in [1, 8, 64] {
            let url = health_url.clone();
            let health = load(&client, "healthz", move |c, _| c.get(url.clone()), concurrency, seconds).await;
            let url = invoke_url.clone();
            let invoke = load(
                &client,
                "invoke",
                move |c, _| {
                    c.post(url.clone())
                        .header("content-type", "application/json")
                        .body(r#"{"name": "bench"}"#)
                },
                concurrency,
                seconds,
            )
            .await;
            for step in [&health, &invoke] {
                println!(
                    "{:<10} {:>5} {:>10.3} {:>10.3} {:>10.0} {:>8}",
                    step.name,
                    step.concurrency,
                    ms(step.percentile(0.5)),
                    ms(step.percentile(0.99)),
                    step.rate(),
                    step.errors
                );
            }
            println!(
                "{:<10} {:>5} {:>10.3} {:>10.3} {:>10.2}x",
                "Python +",
                concurrency,
                ms(invoke.percentile(0.5)) - ms(health.percentile(0.5)),
                ms(invoke.percentile(0.99)) - ms(health.percentile(0.99)),
                health.rate() / invoke.rate(),
            );
        }
        let TestGateway { gateway, .. } = gw;
        gateway.shutdown().await;
    });
}
