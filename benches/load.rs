//! The load generator the HTTP benchmarks share: `concurrency` workers, each
//! sending its next request when the previous one is answered.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// One load step: latencies of the successful requests and the errors.
pub struct Step {
    pub name: String,
    pub concurrency: usize,
    pub latencies: Vec<Duration>,
    pub elapsed: Duration,
    pub errors: usize,
}

impl Step {
    pub fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let index = ((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1);
        sorted.get(index).copied().unwrap_or_default()
    }

    pub fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// Sends requests from `concurrency` workers for `seconds`, each worker
/// waiting for its answer before sending the next; `request` is given the
/// worker's index.
pub async fn load(
    client: &reqwest::Client,
    name: &str,
    request: impl Fn(&reqwest::Client, usize) -> reqwest::RequestBuilder + Send + Sync + 'static,
    concurrency: usize,
    seconds: f64,
) -> Step {
    let request = Arc::new(request);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let (client, request, stop) = (client.clone(), request.clone(), stop.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0;
                while !stop.load(Ordering::Relaxed) {
                    let begun = Instant::now();
                    match request(&client, worker).send().await {
                        Ok(response) if response.status().is_success() => {
                            let _ = response.bytes().await;
                            latencies.push(begun.elapsed());
                        }
                        _ => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut step = Step {
        name: name.to_owned(),
        concurrency,
        latencies: Vec::new(),
        elapsed: Duration::ZERO,
        errors: 0,
    };
    for worker in workers {
        let (latencies, errors) = worker.await.unwrap();
        step.latencies.extend(latencies);
        step.errors += errors;
    }
    step.elapsed = start.elapsed();
    step
}

/// Milliseconds, as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Seconds per load step: `ERYX_BENCH_SECONDS`, else `default`.
pub fn step_seconds(default: f64) -> f64 {
    std::env::var("ERYX_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The runtime a load test runs on: two workers, as the machine's cores.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
