//! [`Slots`]: a concurrency limit with a bounded wait queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejected {
    /// Every slot is taken and the queue is full.
    QueueFull,
    /// The request waited in the queue for the whole queue timeout.
    TimedOut,
}

/// At most `capacity` holders at once; up to `max_queue` more wait in line.
#[derive(Debug)]
pub(crate) struct Slots {
    semaphore: Arc<Semaphore>,
    queued: AtomicUsize,
    max_queue: usize,
    queue_gauge: prometheus::IntGauge,
}

impl Slots {
    /// `capacity` slots and a queue of `max_queue`; waiting requests are
    /// counted in `queue_gauge`.
    pub(crate) fn new(
        capacity: usize,
        max_queue: usize,
        queue_gauge: prometheus::IntGauge,
    ) -> Slots {
        Slots {
            semaphore: Arc::new(Semaphore::new(capacity)),
            queued: AtomicUsize::new(0),
            max_queue,
            queue_gauge,
        }
    }

    /// Takes a slot, waiting in the queue up to `timeout` when all are taken.
    pub(crate) async fn acquire(
        &self,
        timeout: Duration,
    ) -> Result<OwnedSemaphorePermit, Rejected> {
        if let Ok(permit) = self.semaphore.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max_queue {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(Rejected::QueueFull);
        }
        self.queue_gauge.inc();
        let waited = tokio::time::timeout(timeout, self.semaphore.clone().acquire_owned()).await;
        self.queue_gauge.dec();
        self.queued.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; treat it like a timeout.
            Ok(Err(_)) | Err(_) => Err(Rejected::TimedOut),
        }
    }
}

/// One async lock per key (a function name, a session id), created on
/// first use and dropped once nobody holds or waits for it. Waiters are
/// served in arrival order (tokio's mutex is fair).
#[derive(Debug, Default)]
pub(crate) struct KeyedLocks {
    locks: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    /// The lock of `key`.
    pub(crate) fn get(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().expect("lock");
        // Drop locks nobody holds or waits for, so the map stays small.
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        locks.entry(key.to_owned()).or_default().clone()
    }
}
