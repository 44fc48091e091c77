//! Fresh instance + `print('hi')` per request, side by side in one run:
//! the linked component, the flattened one, and the flattened one on an
//! engine whose pool keeps memory resident (reset with `pagemap_scan`).
//! For each, latency percentiles, requests per second on one thread, and
//! the process's minor page faults per request (from `/proc/self/stat`).
//! A plain binary (`cargo bench -p eryx-benches --bench pool`); the figures
//! are in `benches/README.md`.

use std::time::{Duration, Instant};

#[path = "common.rs"]
mod common;

/// Minor page faults of this process so far (`/proc/self/stat`, field 10).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The command name (field 2) may hold spaces; fields after it are plain.
    let after = &stat[stat.rfind(')').expect("stat format") + 2..];
    after
        .split_whitespace()
        .nth(7)
        .expect("minflt")
        .parse()
        .expect("minflt is a number")
}

fn run(setup: &common::Setup, name: &str, runtime: &eryx::Runtime, requests: usize) {
    let sandbox = eryx::Sandbox::builder()
        .with_runtime(runtime)
        .build()
        .unwrap();
    for _ in 0..50 {
        setup
            .tokio
            .block_on(sandbox.execute("print('hi')"))
            .unwrap();
    }
    let mut latencies = Vec::with_capacity(requests);
    let faults = minor_faults();
    let start = Instant::now();
    for _ in 0..requests {
        let t = Instant::now();
        setup
            .tokio
            .block_on(sandbox.execute("print('hi')"))
            .unwrap();
        latencies.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    let faults = minor_faults() - faults;
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "pool/{name}: p50 {:.3} ms, p99 {:.3} ms, {:.0} req/s (one thread), {:.0} minor faults/request",
        ms(p(0.5)),
        ms(p(0.99)),
        requests as f64 / elapsed.as_secs_f64(),
        faults as f64 / requests as f64
    );
}

fn main() {
    let requests: usize = std::env::var("ERYX_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let setup = common::setup();
    // The same artifact on an engine whose pool keeps memory resident.
    let keep = 64 << 20;
    let resident_engine =
        eryx::Engine::new(eryx::EngineOptions::default().with_keep_resident_bytes(keep)).unwrap();
    let resident = eryx::Runtime::builder()
        .with_engine(&resident_engine)
        .with_precompiled_file(&setup.cwasm.0, &setup.cwasm.1)
        .with_stdlib_dir(&setup.artifacts.stdlib_dir)
        .build()
        .unwrap();
    // `ERYX_BENCH_ONLY=<name>` runs one configuration (for profiling).
    let only = std::env::var("ERYX_BENCH_ONLY").ok();
    let configs = [
        ("linked", &setup.linked),
        ("flattened", &setup.runtime),
        ("flattened_keep_resident_64mib", &resident),
    ];
    for round in 0..2 {
        println!("round {round}");
        for (name, runtime) in configs {
            if only.as_deref().is_none_or(|o| o == name) {
                run(&setup, name, runtime, requests);
            }
        }
    }
}
