//! The embeddable library's costs, side by side in one run (ratios survive a
//! noisy machine). Figures are in `benches/README.md`.
//!
//! Groups:
//! - `callback`: one execute that awaits a no-op host callback 100 times in
//!   a loop, next to the same loop without the callback (the difference /
//!   100 is one round trip: guest → host → guest); and 100 callbacks that
//!   each wait 1 ms on the host, awaited at once under `asyncio.gather`;
//! - `trace`: a CPU loop (10,000 iterations) with no trace handler and with
//!   one that counts events;
//! - `builder`: `Sandbox::builder().build()` after the first (the shared
//!   runtime loaded), and with one callback registered.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use eryx::{CallbackError, TraceEvent, TypedCallback};

#[path = "common.rs"]
mod common;

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Noop {}

fn noop() -> impl eryx::Callback {
    TypedCallback::new("noop", "Does nothing.", |_: Noop| async {
        Ok::<_, CallbackError>(())
    })
}

fn benches(c: &mut Criterion) {
    let setup = common::setup();
    let callbacks = eryx::Sandbox::builder()
        .with_runtime(&setup.runtime)
        .with_callback(noop())
        .with_callback(eryx_tests::wait_callback())
        .build()
        .unwrap();
    let plain = eryx::Sandbox::builder()
        .with_runtime(&setup.runtime)
        .build()
        .unwrap();

    let mut group = c.benchmark_group("callback");
    group.bench_function("loop_100/no_callback", |b| {
        b.to_async(&setup.tokio).iter(|| async {
            plain
                .execute("async def f():\n    pass\nfor _ in range(100):\n    await f()")
                .await
                .unwrap()
        })
    });
    group.bench_function("loop_100/noop_callback", |b| {
        b.to_async(&setup.tokio).iter(|| async {
            callbacks
                .execute("for _ in range(100):\n    await noop()")
                .await
                .unwrap()
        })
    });
    group.bench_function("gather_100/wait_1ms", |b| {
        b.to_async(&setup.tokio).iter(|| async {
            callbacks
                .execute("import asyncio\nawait asyncio.gather(*(wait(ms=1) for _ in range(100)))")
                .await
                .unwrap()
        })
    });
    group.finish();

    let events = Arc::new(AtomicUsize::new(0));
    let counter = events.clone();
    let traced = eryx::Sandbox::builder()
        .with_runtime(&setup.runtime)
        .with_trace_handler(move |batch: &[TraceEvent]| {
            counter.fetch_add(batch.len(), Ordering::Relaxed);
        })
        .build()
        .unwrap();
    let cpu_loop = "total = 0\nfor i in range(10000):\n    total += i * i\ntotal";
    let mut group = c.benchmark_group("trace");
    group.bench_function("cpu_loop_10k/no_handler", |b| {
        b.to_async(&setup.tokio)
            .iter(|| async { plain.execute(cpu_loop).await.unwrap() })
    });
    group.bench_function("cpu_loop_10k/counting_handler", |b| {
        b.to_async(&setup.tokio)
            .iter(|| async { traced.execute(cpu_loop).await.unwrap() })
    });
    group.finish();
    assert!(events.load(Ordering::Relaxed) > 0);

    // The shared runtime: loaded (and on a fresh machine built) by the first.
    eryx::Sandbox::builder().build().unwrap();
    let mut group = c.benchmark_group("builder");
    group.bench_function("build/shared_runtime", |b| {
        b.iter(|| eryx::Sandbox::builder().build().unwrap())
    });
    group.bench_function("build/shared_runtime_one_callback", |b| {
        b.iter(|| {
            eryx::Sandbox::builder()
                .with_callback(noop())
                .build()
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(library, benches);
criterion_main!(library);
