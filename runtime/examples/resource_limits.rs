//! Resource limits: each one hit is its own error, and the sandbox is
//! usable afterwards.
//!
//! `cargo run -p eryx --example resource_limits`

use std::time::Duration;

use eryx::{CallbackError, Error, ResourceLimits, TypedCallback};

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Slow {
    ms: u64,
}

#[tokio::main]
async fn main() -> Result<(), eryx::Error> {
    let sandbox = eryx::Sandbox::builder()
        .with_callback(TypedCallback::new(
            "slow",
            "Takes `ms` on the host.",
            |args: Slow| async move {
                tokio::time::sleep(Duration::from_millis(args.ms)).await;
                Ok::<_, CallbackError>(())
            },
        ))
        .with_resource_limits(
            ResourceLimits::default()
                .with_execution_timeout(Duration::from_secs(2))
                .with_memory_bytes(64 << 20)
                .with_max_callback_invocations(10)
                .with_callback_timeout(Duration::from_millis(100)),
        )
        .build()?;
    let cases = [
        ("timeout", "while True:\n    pass"),
        ("memory", "x = bytearray(256 << 20)"),
        (
            "callback invocations",
            "for _ in range(20):\n    await slow(ms=0)",
        ),
        ("callback timeout", "await slow(ms=10_000)"),
    ];
    for (name, code) in cases {
        let error = sandbox.execute(code).await.unwrap_err();
        let expected = matches!(
            (&error, name),
            (Error::Timeout { .. }, "timeout")
                | (Error::MemoryLimit { .. }, "memory")
                | (Error::CallbackLimit { .. }, "callback invocations")
                | (Error::CallbackTimeout { .. }, "callback timeout")
        );
        println!("{name}: {error}");
        assert!(expected, "{name}: unexpected {error:?}");
    }
    assert_eq!(sandbox.execute("1 + 1").await?.result.as_deref(), Some("2"));
    Ok(())
}
