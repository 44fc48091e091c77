//! Tracing events of user code and output streamed as it is written.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eryx::{OutputStream, TraceEvent, TraceKind};
use eryx_tests::runtime;

#[tokio::test]
async fn trace_events_of_a_small_program_match_its_line_numbers() {
    let events: Arc<Mutex<Vec<TraceEvent>>> = Arc::default();
    let sink = events.clone();
    let sandbox = eryx::Sandbox::builder()
        .with_runtime(runtime())
        .with_trace_handler(move |batch: &[TraceEvent]| {
            sink.lock().unwrap().extend_from_slice(batch)
        })
        .build()
        .unwrap();
    let code = "def double(x):\n    return x * 2\n\ny = double(21)\ntry:\n    1 / 0\nexcept ZeroDivisionError:\n    pass\nimport json\njson.dumps(y)\n";
    sandbox.execute(code).await.unwrap();
    let events = events.lock().unwrap();
    let summary: Vec<(TraceKind, u32, &str)> = events
        .iter()
        .map(|e| (e.kind, e.line, e.function.as_str()))
        .collect();
    use TraceKind::*;
    assert_eq!(
        summary,
        vec![
            (Call, 0, "<module>"),
            (Line, 1, "<module>"),
            (Line, 4, "<module>"),
            (Call, 1, "double"),
            (Line, 2, "double"),
            (Return, 2, "double"),
            (Line, 5, "<module>"),
            (Line, 6, "<module>"),
            (Exception, 6, "<module>"),
            (Line, 7, "<module>"),
            (Line, 8, "<module>"),
            (Line, 9, "<module>"),
            (Line, 10, "<module>"),
            (Return, 10, "<module>"),
        ],
        "json's own frames are not traced"
    );
    let exception = events.iter().find(|e| e.kind == Exception).unwrap();
    assert_eq!(exception.exception.as_deref(), Some("ZeroDivisionError"));
}

#[tokio::test]
async fn trace_events_arrive_in_batches_not_one_host_call_per_line() {
    let batches: Arc<Mutex<Vec<usize>>> = Arc::default();
    let sink = batches.clone();
    let sandbox = eryx::Sandbox::builder()
        .with_runtime(runtime())
        .with_trace_handler(move |batch: &[TraceEvent]| sink.lock().unwrap().push(batch.len()))
        .build()
        .unwrap();
    sandbox
        .execute("total = 0\nfor i in range(1000):\n    total += i\n")
        .await
        .unwrap();
    let batches = batches.lock().unwrap();
    let events: usize = batches.iter().sum();
    assert!(events > 2000, "{events} events");
    assert!(batches.len() < events / 100, "{} batches", batches.len());
}

#[tokio::test]
async fn output_arrives_incrementally_and_in_order() {
    let chunks: Arc<Mutex<Vec<(OutputStream, String, Instant)>>> = Arc::default();
    let sink = chunks.clone();
    let sandbox = eryx::Sandbox::builder()
        .with_runtime(runtime())
        .with_callback(eryx_tests::wait_callback())
        .with_output_handler(move |stream: OutputStream, text: &str| {
            sink.lock()
                .unwrap()
                .push((stream, text.to_owned(), Instant::now()))
        })
        .build()
        .unwrap();
    let start = Instant::now();
    let code = "import sys\nprint('one')\nprint('two', file=sys.stderr)\nawait wait(ms=300)\nprint('three')\n";
    let result = sandbox.execute(code).await.unwrap();
    let end = Instant::now();
    assert_eq!(result.stdout, "one\nthree\n");
    assert_eq!(result.stderr, "two\n");
    let chunks = chunks.lock().unwrap();
    let text: Vec<(OutputStream, &str)> = chunks
        .iter()
        .map(|(s, t, _)| (*s, t.as_str()))
        .filter(|(_, t)| *t != "\n")
        .collect();
    assert_eq!(
        text,
        vec![
            (OutputStream::Stdout, "one"),
            (OutputStream::Stderr, "two"),
            (OutputStream::Stdout, "three"),
        ]
    );
    // 'one' was delivered while the call was still waiting, not at its end.
    let one_at = chunks.iter().find(|c| c.1 == "one").unwrap().2;
    assert!(
        end - one_at >= Duration::from_millis(250),
        "delivered {:?} before the end",
        end - one_at
    );
    assert!(one_at - start < end - start);
}

#[tokio::test]
async fn without_a_handler_nothing_is_traced() {
    // The guest sets no trace function: `sys.gettrace()` is None inside.
    let sandbox = eryx::Sandbox::builder()
        .with_runtime(runtime())
        .build()
        .unwrap();
    let result = sandbox
        .execute("import sys\nsys.gettrace() is None")
        .await
        .unwrap();
    assert_eq!(result.result.as_deref(), Some("True"));
}
