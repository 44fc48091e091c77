//! `eryx run -c "print('hi')"` against `python3 -c "print('hi')"`, side by
//! side in one run: the whole process, start to exit, with a warm data
//! directory (base artifact built and cached). Figures in benches/README.md.

use std::process::Command;

use criterion::{Criterion, criterion_group, criterion_main};

fn run(program: &str, args: &[&str]) {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(output.status.success(), "{program}: {output:?}");
    assert_eq!(output.stdout, b"hi\n");
}

fn startup(c: &mut Criterion) {
    let eryx = env!("CARGO_BIN_EXE_eryx");
    // Warm-up outside the measurement: builds or fetches the base artifact.
    run(eryx, &["run", "-c", "print('hi')"]);
    let python = eryx_tests::real_python();
    let mut group = c.benchmark_group("process_start_print_hi");
    group.sample_size(20);
    group.bench_function("eryx_run", |b| {
        b.iter(|| run(eryx, &["run", "-c", "print('hi')"]))
    });
    group.bench_function("python3", |b| {
        b.iter(|| run(&python, &["-c", "print('hi')"]))
    });
    group.finish();
}

criterion_group!(benches, startup);
criterion_main!(benches);
