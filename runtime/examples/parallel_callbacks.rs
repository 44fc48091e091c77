//! Several callbacks in flight at once: three that each take 200 ms on the
//! host finish together under `asyncio.gather`.
//!
//! `cargo run -p eryx --example parallel_callbacks`

use std::time::{Duration, Instant};

use eryx::{CallbackError, TypedCallback};

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Fetch {
    /// What to fetch (a label here; a real host would call a service).
    item: String,
}

#[tokio::main]
async fn main() -> Result<(), eryx::Error> {
    let sandbox = eryx::Sandbox::builder()
        .with_callback(TypedCallback::new(
            "fetch",
            "Fetches an item (takes 200 ms).",
            |args: Fetch| async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok::<_, CallbackError>(format!("{} fetched", args.item))
            },
        ))
        .build()?;
    let start = Instant::now();
    let result = sandbox
        .execute("import asyncio\nawait asyncio.gather(fetch(item='a'), fetch(item='b'), fetch(item='c'))")
        .await?;
    let elapsed = start.elapsed();
    println!("{} in {elapsed:?}", result.result.unwrap_or_default());
    assert!(
        elapsed < Duration::from_millis(550),
        "ran one after another"
    );
    Ok(())
}
