//! What failures look like: each is a typed `eryx::Error`, and the sandbox
//! keeps working after every one.
//!
//! `cargo run -p eryx --example error_handling`

use std::time::Duration;

use eryx::Error;

#[tokio::main]
async fn main() -> Result<(), eryx::Error> {
    let sandbox = eryx::Sandbox::builder()
        .with_timeout(Duration::from_millis(500))
        .build()?;
    match sandbox.execute("1 / 0").await {
        Err(Error::Exception(e)) => println!("exception: {} ({})", e.type_name, e.message),
        other => panic!("expected an exception, got {other:?}"),
    }
    match sandbox.execute("def broken(:\n    pass").await {
        Err(Error::Compile(e)) => println!("syntax error: {}", e.message),
        other => panic!("expected a syntax error, got {other:?}"),
    }
    match sandbox.execute("raise SystemExit(3)").await {
        Err(Error::Exit { code, .. }) => println!("exited with status {code}"),
        other => panic!("expected an exit, got {other:?}"),
    }
    match sandbox.execute("while True:\n    pass").await {
        Err(Error::Timeout { limit }) => println!("stopped after {limit:?}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    let ok = sandbox.execute("'still serving'").await?;
    println!("{}", ok.result.unwrap_or_default());
    Ok(())
}
