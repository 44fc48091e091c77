//! What the engine's configuration costs CPU-bound Python, side by side in one
//! run: one pre-initialized base snapshot compiled for three engines of the
//! same pool size — the default (epoch checks at function entries and loop
//! back-edges, which timeouts and yielding rely on), one without them (never
//! for untrusted code: nothing can stop its calls), and one that also meters
//! fuel (epoch checks plus fuel). Each measure is one fresh instance running
//! one program to completion. Bounds checks are not a
//! variable here: every engine reserves 4 GiB per memory with a 32 MiB guard,
//! so Cranelift elides them. `cargo bench -p eryx-benches --bench cpu`; the
//! figures are in `benches/README.md`.

use std::time::{Duration, Instant};

#[path = "common.rs"]
mod common;

/// Small pyperformance-style programs, each ending in an expression whose
/// value is checked once per engine (so every variant computes the same).
const PROGRAMS: &[(&str, &str, &str)] = &[
    (
        "fib_22",
        "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\nfib(22)",
        "17711",
    ),
    (
        "loop_300k",
        "total = 0\nfor i in range(300_000):\n    total += i * i % 7\ntotal",
        "599998",
    ),
    (
        "nbody_2k",
        "bodies = [[0.0, 0.0, 0.0, 0.0, 39.47], [4.84, -1.16, -0.10, 0.60, 0.037], \
         [8.34, 4.12, -0.40, -1.01, 0.011], [12.89, -15.11, -0.22, 1.08, 0.0017]]\n\
         for _ in range(2_000):\n    \
             for i, a in enumerate(bodies):\n        \
                 for b in bodies[i + 1:]:\n            \
                     dx, dy = a[0] - b[0], a[1] - b[1]\n            \
                     mag = 0.01 / (dx * dx + dy * dy + 0.01) ** 1.5\n            \
                     a[2] -= dx * b[4] * mag; a[3] -= dy * b[4] * mag\n            \
                     b[2] += dx * a[4] * mag; b[3] += dy * a[4] * mag\n    \
             for body in bodies:\n        \
                 body[0] += 0.01 * body[2]; body[1] += 0.01 * body[3]\n\
         round(sum(b[0] + b[1] for b in bodies), 6)",
        "-9.904149",
    ),
    (
        "dict_str_50k",
        "d = {}\nfor i in range(50_000):\n    d[str(i)] = i\nsum(len(k) for k in d)",
        "238890",
    ),
];

fn main() {
    let setup = common::setup();
    // One snapshot (tag "cpu"), compiled for each engine.
    let variant = |options: eryx::EngineOptions| {
        let engine = eryx::Engine::new(options.with_pool_size(8)).unwrap();
        setup.tokio.block_on(common::precompiled_runtime(
            &setup.data_dir,
            &engine,
            &setup.artifacts,
            &setup.artifacts.component,
            "cpu",
        ))
    };
    let engines = [
        ("epoch", variant(eryx::EngineOptions::default())),
        (
            "no_epoch",
            variant(eryx::EngineOptions::default().with_epoch_interruption(false)),
        ),
        (
            "fuel",
            variant(eryx::EngineOptions::default().with_fuel_metering(true)),
        ),
    ];
    let sandboxes: Vec<(&str, eryx::Sandbox)> = engines
        .iter()
        .map(|(name, runtime)| {
            let sandbox = eryx::Sandbox::builder()
                .with_runtime(runtime)
                .build()
                .unwrap();
            (*name, sandbox)
        })
        .collect();
    let rounds: usize = std::env::var("ERYX_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    for (program, code, expected) in PROGRAMS {
        let mut times: Vec<Vec<Duration>> = vec![Vec::new(); sandboxes.len()];
        for (engine, sandbox) in &sandboxes {
            let ran = setup.tokio.block_on(sandbox.execute(code)).unwrap();
            assert_eq!(
                ran.result.as_deref(),
                Some(*expected),
                "{program} on {engine}"
            );
        }
        // Interleaved (one run of each engine per round), so a drift in the
        // machine's speed shifts every engine alike.
        for _ in 0..rounds {
            for (i, (_, sandbox)) in sandboxes.iter().enumerate() {
                let start = Instant::now();
                setup.tokio.block_on(sandbox.execute(code)).unwrap();
                times[i].push(start.elapsed());
            }
        }
        let median = |t: &mut Vec<Duration>| {
            t.sort();
            t[t.len() / 2]
        };
        let base = median(&mut times[0]);
        for (i, (engine, _)) in sandboxes.iter().enumerate() {
            let m = median(&mut times[i]);
            println!(
                "cpu/{program}/{engine}: median {:.1} ms ({:.2}x the default engine), {rounds} rounds",
                m.as_secs_f64() * 1e3,
                m.as_secs_f64() / base.as_secs_f64()
            );
        }
    }
}
