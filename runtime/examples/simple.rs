//! The smallest program: run Python in a fresh sandbox with no configuration.
//!
//! `cargo run -p eryx --example simple` (the first run on a machine builds the
//! default runtime into the data directory: tens of seconds, once).

#[tokio::main]
async fn main() -> Result<(), eryx::Error> {
    let sandbox = eryx::Sandbox::builder().build()?;
    let result = sandbox
        .execute("import sys\nprint('hello from', sys.implementation.name)\n6 * 7")
        .await?;
    print!("{}", result.stdout);
    println!("result: {}", result.result.as_deref().unwrap_or("None"));
    assert_eq!(result.result.as_deref(), Some("42"));
    Ok(())
}
