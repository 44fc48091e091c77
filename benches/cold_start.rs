//! Cold-start benchmarks, side by side in one run so the ratios hold on a
//! noisy machine. Figures and the machine are in `benches/README.md`.
//!
//! Groups:
//! - `instance`: creating a fresh instance (and dropping it) from the
//!   pre-initialized precompiled image of the flattened component, from the
//!   same image of the linked (unflattened) component, from the flattened
//!   component without pre-initialization, and compiling the `.wasm` with
//!   Cranelift first;
//! - `execute`: `print('hi')` in a fresh instance end to end, the execute
//!   alone, and a session of 5 executes in one instance — each on the
//!   flattened and on the linked component;
//! - `load`: verifying and loading the `.cwasm` artifact (a new process's
//!   first step);
//! - `baseline`: spawning the native `python3 -c "print('hi')"`.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

#[path = "common.rs"]
mod common;

fn benches(c: &mut Criterion) {
    let setup = common::setup();
    let preinit = eryx::Sandbox::builder()
        .with_runtime(&setup.runtime)
        .build()
        .unwrap();
    let plain_runtime = eryx::Runtime::builder()
        .with_engine(&setup.engine)
        .with_component_file(&setup.artifacts.component)
        .with_stdlib_dir(&setup.artifacts.stdlib_dir)
        .build()
        .unwrap();
    let plain = eryx::Sandbox::builder()
        .with_runtime(&plain_runtime)
        .build()
        .unwrap();

    let linked = eryx::Sandbox::builder()
        .with_runtime(&setup.linked)
        .build()
        .unwrap();

    let mut group = c.benchmark_group("instance");
    group.bench_function("create/preinit_cwasm", |b| {
        b.to_async(&setup.tokio)
            .iter(|| async { drop(preinit.session().await.unwrap()) })
    });
    group.bench_function("create/linked_preinit_cwasm", |b| {
        b.to_async(&setup.tokio)
            .iter(|| async { drop(linked.session().await.unwrap()) })
    });
    group.bench_function("create/no_preinit", |b| {
        b.to_async(&setup.tokio)
            .iter(|| async { drop(plain.session().await.unwrap()) })
    });
    group.finish();

    let mut group = c.benchmark_group("instance_compile");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(60));
    group.bench_function("create/compile_from_wasm", |b| {
        b.to_async(&setup.tokio).iter(|| async {
            let runtime = eryx::Runtime::builder()
                .with_engine(&setup.engine)
                .with_component_file(&setup.artifacts.component)
                .with_stdlib_dir(&setup.artifacts.stdlib_dir)
                .build()
                .unwrap();
            let sandbox = eryx::Sandbox::builder()
                .with_runtime(&runtime)
                .build()
                .unwrap();
            drop(sandbox.session().await.unwrap())
        })
    });
    group.finish();

    let mut group = c.benchmark_group("execute");
    for (name, sandbox) in [("", &preinit), ("linked/", &linked)] {
        group.bench_function(format!("{name}fresh_instance_print_hi"), |b| {
            b.to_async(&setup.tokio)
                .iter(|| async { sandbox.execute("print('hi')").await.unwrap() })
        });
        group.bench_function(format!("{name}print_hi_only"), |b| {
            b.to_async(&setup.tokio).iter_custom(|iters| {
                let sandbox = sandbox.clone();
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let mut session = sandbox.session().await.unwrap();
                        let start = Instant::now();
                        session.execute("print('hi')").await.unwrap();
                        total += start.elapsed();
                    }
                    total
                }
            })
        });
        group.bench_function(format!("{name}session_5_executes"), |b| {
            b.to_async(&setup.tokio).iter(|| async {
                let mut session = sandbox.session().await.unwrap();
                for code in ["x = 1", "x += 1", "y = [x] * 3", "print(sum(y))", "x * 7"] {
                    session.execute(code).await.unwrap();
                }
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("load");
    group.bench_function("verify_and_load_cwasm", |b| {
        b.iter(|| {
            eryx::Runtime::builder()
                .with_engine(&setup.engine)
                .with_precompiled_file(&setup.cwasm.0, &setup.cwasm.1)
                .with_stdlib_dir(&setup.artifacts.stdlib_dir)
                .build()
                .unwrap()
        })
    });
    group.finish();

    let python = eryx_tests::real_python();
    let mut group = c.benchmark_group("baseline");
    group.bench_function("python3_print_hi", |b| {
        b.iter(|| {
            let out = std::process::Command::new(&python)
                .args(["-c", "print('hi')"])
                .output()
                .unwrap();
            assert_eq!(out.stdout, b"hi\n");
        })
    });
    group.finish();
}

criterion_group!(cold_start, benches);
criterion_main!(cold_start);
