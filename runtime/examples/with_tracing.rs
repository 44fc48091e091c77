//! Tracing user code line by line, and streaming output as it is written.
//!
//! `cargo run -p eryx --example with_tracing`

use std::sync::{Arc, Mutex};

use eryx::{OutputStream, TraceEvent, TraceKind};

#[tokio::main]
async fn main() -> Result<(), eryx::Error> {
    let events: Arc<Mutex<Vec<TraceEvent>>> = Arc::default();
    let sink = events.clone();
    let sandbox = eryx::Sandbox::builder()
        .with_trace_handler(move |batch: &[TraceEvent]| {
            sink.lock().unwrap().extend_from_slice(batch)
        })
        .with_output_handler(|stream: OutputStream, text: &str| {
            eprint!("[{stream:?}] {text}");
        })
        .build()?;
    let code = "def square(x):\n    return x * x\n\nfor i in range(3):\n    print(square(i))\n";
    sandbox.execute(code).await?;
    let events = events.lock().unwrap();
    let lines: Vec<u32> = events
        .iter()
        .filter(|e| e.kind == TraceKind::Line)
        .map(|e| e.line)
        .collect();
    println!("{} events; lines run: {lines:?}", events.len());
    assert!(lines.contains(&2) && lines.contains(&5));
    Ok(())
}
