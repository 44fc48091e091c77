//! [`OutputCapture`]: what an instance writes to stdout or stderr, kept by
//! the host up to a cap.
//!
//! The guest's `sys.stdout`/`sys.stderr` write straight through to the WASI
//! descriptors, so the cap is enforced here, where user code cannot undo it,
//! and what was written before a trap survives the trap. wasmtime-wasi's own
//! `MemoryOutputPipe` traps the instance on a write past its capacity; this
//! one keeps the first `limit` bytes, counts the rest and never fails a write.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// How many bytes a guest may hand over per `write` (the WASI permit size).
const WRITE_PERMIT_BYTES: usize = 64 << 10;

/// One captured stream (cheap to clone: clones share the buffer).
#[derive(Clone)]
pub(crate) struct OutputCapture {
    inner: Arc<Mutex<Captured>>,
}

impl std::fmt::Debug for OutputCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputCapture").finish_non_exhaustive()
    }
}

struct Captured {
    kept: Vec<u8>,
    limit: usize,
    dropped: u64,
    /// Receives each write (what the limit keeps of it) as it happens.
    handler: Option<(Arc<dyn crate::OutputHandler>, crate::OutputStream)>,
    /// The start of a UTF-8 character cut at the end of the last write,
    /// held back from the handler until the rest arrives.
    partial: Vec<u8>,
}

impl OutputCapture {
    /// A capture keeping at most `limit` bytes until the next [`take`](Self::take).
    pub(crate) fn new(limit: usize) -> OutputCapture {
        OutputCapture {
            inner: Arc::new(Mutex::new(Captured {
                kept: Vec::new(),
                limit,
                dropped: 0,
                handler: None,
                partial: Vec::new(),
            })),
        }
    }

    /// Streams every later write to `handler` as `stream`.
    pub(crate) fn set_handler(
        &self,
        handler: Arc<dyn crate::OutputHandler>,
        stream: crate::OutputStream,
    ) {
        self.inner.lock().expect("output lock").handler = Some((handler, stream));
    }

    fn push(&self, bytes: &[u8]) {
        let mut captured = self.inner.lock().expect("output lock");
        let room = captured.limit.saturating_sub(captured.kept.len());
        let kept = bytes.len().min(room);
        captured.kept.extend_from_slice(&bytes[..kept]);
        captured.dropped += (bytes.len() - kept) as u64;
        if let (Some((handler, stream)), true) = (captured.handler.clone(), kept > 0) {
            // WASI writes arrive in pieces that may cut a character: hand
            // over whole characters only.
            let mut chunk = std::mem::take(&mut captured.partial);
            chunk.extend_from_slice(&bytes[..kept]);
            let whole = match std::str::from_utf8(&chunk) {
                Err(e) if e.error_len().is_none() => e.valid_up_to(),
                _ => chunk.len(),
            };
            captured.partial = chunk.split_off(whole);
            // Called without the lock (the handler runs inside the guest's
            // write, so it should be quick).
            drop(captured);
            if !chunk.is_empty() {
                handler.on_output(stream, &String::from_utf8_lossy(&chunk));
            }
        }
    }

    /// What was written since the last call, as text (invalid UTF-8
    /// replaced), with the line `[eryx: output truncated, N more bytes not
    /// shown]` appended when bytes past the limit were dropped. Starts a new
    /// count: each call has the whole limit again.
    pub(crate) fn take(&self) -> String {
        let mut captured = self.inner.lock().expect("output lock");
        let bytes = std::mem::take(&mut captured.kept);
        let dropped = std::mem::take(&mut captured.dropped);
        drop(captured);
        let mut text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(error) => {
                // A cut inside a character leaves a partial sequence at the
                // end: drop it rather than show a replacement character.
                let bytes = error.into_bytes();
                let valid = match std::str::from_utf8(&bytes) {
                    Err(e) if e.error_len().is_none() => e.valid_up_to(),
                    _ => bytes.len(),
                };
                String::from_utf8_lossy(&bytes[..valid]).into_owned()
            }
        };
        if dropped > 0 {
            text.push_str(&format!(
                "\n[eryx: output truncated, {dropped} more bytes not shown]\n"
            ));
        }
        text
    }
}

impl IsTerminal for OutputCapture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputCapture {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for OutputCapture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT_BYTES)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for OutputCapture {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for OutputCapture {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
