//! Resident memory per live idle instance: 100 instances from the
//! pre-initialized image (of the flattened component, then of the linked one), each having run `print('hi')`, kept alive while
//! the process's resident set size (VmRSS) is read. Prints one line per
//! measure; the figures are in `benches/README.md`.

#[path = "common.rs"]
mod common;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let setup = common::setup();
    for (name, runtime) in [("flattened", &setup.runtime), ("linked", &setup.linked)] {
        measure(&setup, name, runtime);
    }
}

/// Prints the RSS growth per live idle instance of `runtime`'s base.
fn measure(setup: &common::Setup, name: &str, runtime: &eryx::Runtime) {
    let sandbox = eryx::Sandbox::builder()
        .with_runtime(runtime)
        .build()
        .unwrap();
    // Warm up once so lazily created runtime state is not counted.
    drop(
        setup
            .tokio
            .block_on(sandbox.execute("print('hi')"))
            .unwrap(),
    );

    const INSTANCES: usize = 100;
    let before = rss_bytes();
    let mut sessions = Vec::with_capacity(INSTANCES);
    for _ in 0..INSTANCES {
        let mut session = setup.tokio.block_on(sandbox.session()).unwrap();
        setup
            .tokio
            .block_on(session.execute("print('hi')"))
            .unwrap();
        sessions.push(session);
    }
    let after = rss_bytes();
    let per_instance = (after - before) as f64 / INSTANCES as f64;
    println!("memory/{name}/idle_instances: {INSTANCES} instances alive");
    println!(
        "memory/{name}/rss_before: {:.1} MiB",
        before as f64 / (1 << 20) as f64
    );
    println!(
        "memory/{name}/rss_after: {:.1} MiB",
        after as f64 / (1 << 20) as f64
    );
    println!(
        "memory/{name}/rss_per_idle_instance: {:.2} MiB",
        per_instance / (1 << 20) as f64
    );
    drop(sessions);
}
