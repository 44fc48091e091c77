//! Host callbacks: Python awaits async Rust functions by name.
//!
//! `cargo run -p eryx --example runtime_callbacks`

use eryx::{CallbackError, DynamicCallback, TypedCallback};

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Greet {
    /// Who to greet.
    name: String,
}

#[tokio::main]
async fn main() -> Result<(), eryx::Error> {
    let sandbox = eryx::Sandbox::builder()
        // Typed: the argument struct gives the JSON Schema Python checks.
        .with_callback(TypedCallback::new(
            "greet",
            "Greets someone.",
            |args: Greet| async move { Ok::<_, CallbackError>(format!("Hello, {}!", args.name)) },
        ))
        // Dynamic: a name, a schema and a closure over JSON.
        .with_callback(DynamicCallback::new(
            "get_time",
            "Seconds since the Unix epoch, on the host.",
            serde_json::json!({"type": "object", "properties": {}}),
            |_| async {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_err(|e| CallbackError::new(e.to_string()))?;
                Ok(serde_json::json!(now.as_secs()))
            },
        ))
        .build()?;
    let code = r#"
print(await greet(name="eryx"))
t = await get_time()
print("host time is after 2020:", t > 1577836800)
print([c["name"] for c in list_callbacks()])
"#;
    let result = sandbox.execute(code).await?;
    print!("{}", result.stdout);
    assert!(result.stdout.starts_with("Hello, eryx!\n"));
    Ok(())
}
