//! Tracing and streamed output: what user code does, reported while it runs.
//!
//! A [`TraceHandler`] receives line, call, return and exception events of the
//! user's code (frames of the runtime and the standard library are left out;
//! line numbers are the user's). The guest collects them with `sys.settrace`
//! only when a handler is set, and hands them over in batches of up to 256
//! events, so a traced line costs a Python call, not a host call.
//!
//! An [`OutputHandler`] receives stdout and stderr as they are written (in
//! the pieces WASI delivers them: a Python `write` of more than 4 KiB may
//! come in several, never cutting a character), in order, besides the output
//! collected in the result. It sees what the output limit keeps, no more.
//!
//! Both come from the guest, so they are untrusted: user code can write
//! anything to its streams and can report made-up trace events. Sizes are
//! capped; the contents are the code's word, not the host's.

use crate::bindings;
use crate::untrusted::{self, cap};

/// What happened at a [`TraceEvent`] (the events of `sys.settrace`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TraceKind {
    /// A new line of user code is about to run.
    Line,
    /// A user function (or the module's top level, `<module>`) was entered.
    Call,
    /// A user function is returning.
    Return,
    /// An exception was raised in a user frame.
    Exception,
}

/// One tracing event from user code.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TraceEvent {
    /// What happened.
    pub kind: TraceKind,
    /// The 1-based line number in the user's code.
    pub line: u32,
    /// The function running: its name, `<module>` at top level (at most 256
    /// bytes).
    pub function: String,
    /// For [`TraceKind::Exception`], the exception's type name.
    pub exception: Option<String>,
}

/// Receives tracing events; see [`SandboxBuilder::with_trace_handler`](crate::SandboxBuilder::with_trace_handler).
///
/// Called on the runtime's async worker while the instance waits, so it
/// should be quick (push to a channel, count, log).
pub trait TraceHandler: Send + Sync + 'static {
    /// A batch of events, in the order they happened.
    fn on_events(&self, events: &[TraceEvent]);
}

impl<F: Fn(&[TraceEvent]) + Send + Sync + 'static> TraceHandler for F {
    fn on_events(&self, events: &[TraceEvent]) {
        self(events)
    }
}

/// Which stream an [`OutputHandler`] chunk was written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputStream {
    /// `sys.stdout` (and file descriptor 1).
    Stdout,
    /// `sys.stderr` (and file descriptor 2).
    Stderr,
}

/// Receives output as it is written; see [`SandboxBuilder::with_output_handler`](crate::SandboxBuilder::with_output_handler).
///
/// Called inside the guest's write, on the runtime's worker: it should be
/// quick (the call's timeout cannot interrupt it).
pub trait OutputHandler: Send + Sync + 'static {
    /// `text` was written to `stream` (invalid UTF-8 replaced).
    fn on_output(&self, stream: OutputStream, text: &str);
}

impl<F: Fn(OutputStream, &str) + Send + Sync + 'static> OutputHandler for F {
    fn on_output(&self, stream: OutputStream, text: &str) {
        self(stream, text)
    }
}

/// Most events one batch from the guest may carry; the rest are dropped
/// (the guest sends 256).
const MAX_BATCH: usize = 4096;

/// Converts a batch from the guest (untrusted: sizes capped) and hands it to
/// `handler`.
pub(crate) fn deliver(handler: &dyn TraceHandler, events: Vec<bindings::TraceEvent>) {
    let events: Vec<TraceEvent> = events
        .into_iter()
        .take(MAX_BATCH)
        .map(|event| TraceEvent {
            kind: match event.kind {
                bindings::TraceKind::Line => TraceKind::Line,
                bindings::TraceKind::Call => TraceKind::Call,
                bindings::TraceKind::Return => TraceKind::Return,
                bindings::TraceKind::Exception => TraceKind::Exception,
            },
            line: event.lineno,
            function: cap(event.function, untrusted::MAX_TYPE_NAME_BYTES),
            exception: (!event.detail.is_empty())
                .then(|| cap(event.detail, untrusted::MAX_TYPE_NAME_BYTES)),
        })
        .collect();
    handler.on_events(&events);
}
