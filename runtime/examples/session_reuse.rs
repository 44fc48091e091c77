//! State across calls: a session keeps one instance's globals; a state
//! snapshot carries them into fresh instances.
//!
//! `cargo run -p eryx --example session_reuse`

#[tokio::main]
async fn main() -> Result<(), eryx::Error> {
    let sandbox = eryx::Sandbox::builder().build()?;

    // One instance, several executes, like a REPL.
    let mut session = sandbox.session().await?;
    session.execute("counter = 0").await?;
    for _ in 0..3 {
        session.execute("counter += 1").await?;
    }
    let snapshot = session.snapshot_state().await?;
    println!(
        "session counter: {:?}",
        session.execute("counter").await?.result
    );

    // A fresh instance per call, the state restored into each (how the
    // gateway's sessions work, with the state in object storage).
    let mut state = snapshot.data;
    for _ in 0..2 {
        let ran = sandbox
            .execute_with_state(Some(&state), "counter += 10\ncounter")
            .await?;
        println!("fresh instance: {:?}", ran.output.result);
        state = ran.state.data;
    }
    let last = sandbox.execute_with_state(Some(&state), "counter").await?;
    assert_eq!(last.output.result.as_deref(), Some("23"));
    Ok(())
}
