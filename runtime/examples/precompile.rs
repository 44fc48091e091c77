//! Explicit control over the artifact: link the embedded component,
//! pre-initialize and precompile it for an engine, save the `.cwasm`, and
//! load it into a `Runtime` (what `Sandbox::builder()` does for you once per
//! data directory, and what a deployment pipeline does ahead of time).
//!
//! `cargo run -p eryx --example precompile`

use std::time::Instant;

use eryx::base::{self, LogProgress};

#[tokio::main]
async fn main() -> Result<(), eryx::Error> {
    let data_dir = base::default_data_dir();
    // Cranelift's incremental cache in the data directory (entries signed with
    // the host's key): a snapshot differs from the last in data, not code, so
    // most functions are cache hits.
    let key = base::signing_key(&data_dir)?;
    let engine = eryx::Engine::new(
        eryx::EngineOptions::default()
            .with_pool_size(16)
            .with_compile_cache(data_dir.join("cache").join("compile"), key),
    )?;

    let start = Instant::now();
    let component = base::ensure_component(&data_dir, &LogProgress)?;
    let built = base::build_base(&engine, &component, &LogProgress).await?;
    println!(
        "pre-initialized and precompiled in {:?}: {} KiB of machine code and data",
        start.elapsed(),
        built.cwasm.len() >> 10
    );

    let dir = tempfile::tempdir()?;
    let cwasm = dir.path().join("base.cwasm");
    std::fs::write(&cwasm, &built.cwasm)?;
    let start = Instant::now();
    let runtime = eryx::Runtime::builder()
        .with_engine(&engine)
        .with_precompiled_file(&cwasm, eryx::content_hash(&built.cwasm))
        .with_stdlib_dir(&component.stdlib_dir)
        .build()?;
    println!("loaded the artifact in {:?}", start.elapsed());

    let sandbox = eryx::Sandbox::builder().with_runtime(&runtime).build()?;
    let result = sandbox
        .execute("import json\njson.dumps({'ok': True})")
        .await?;
    println!("{}", result.result.unwrap_or_default());
    Ok(())
}
