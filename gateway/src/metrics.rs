//! [`Metrics`]: the Prometheus metrics served at `/metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Latency buckets in seconds: 0.25 ms to 30 s.
const BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
];

/// Every metric the gateway keeps.
pub(crate) struct Metrics {
    registry: Registry,
    /// `eryx_invocations_total{function,outcome}`; outcome is `ok`, or the
    /// error code (`python_exception`, `timeout`, `memory_limit`, ...).
    pub(crate) invocations: IntCounterVec,
    /// `eryx_invocation_duration_seconds{function}`: instance creation plus
    /// the handler call.
    pub(crate) invocation_seconds: HistogramVec,
    /// `eryx_instance_create_seconds`: creating an instance from a snapshot.
    pub(crate) instance_create_seconds: Histogram,
    /// `eryx_queue_depth`: invocations waiting for a concurrency slot.
    pub(crate) queue_depth: IntGauge,
    /// `eryx_invocations_in_flight`: invocations running.
    pub(crate) in_flight: IntGauge,
    /// `eryx_http_requests_total{method,route,status}`.
    pub(crate) http_requests: IntCounterVec,
    /// `eryx_deploys_total{outcome}`.
    pub(crate) deploys: IntCounterVec,
    /// `eryx_deploy_duration_seconds`.
    pub(crate) deploy_seconds: Histogram,
    /// `eryx_session_writes_total{outcome}`: `saved`, `conflict`,
    /// `state_too_large`, `failed` (the store refused or was unreachable).
    pub(crate) session_writes: IntCounterVec,
    /// `eryx_session_state_cache_total{result}`: `hit` (the state's
    /// download skipped) or `miss`.
    pub(crate) session_cache: IntCounterVec,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let registry = Registry::new();
        let invocations = IntCounterVec::new(
            Opts::new("eryx_invocations_total", "Function invocations by outcome."),
            &["function", "outcome"],
        )
        .expect("metric");
        let invocation_seconds = HistogramVec::new(
            HistogramOpts::new(
                "eryx_invocation_duration_seconds",
                "Time of an invocation: instance creation and the handler call.",
            )
            .buckets(BUCKETS.to_vec()),
            &["function"],
        )
        .expect("metric");
        let instance_create_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "eryx_instance_create_seconds",
                "Time to create an instance from a function snapshot.",
            )
            .buckets(BUCKETS.to_vec()),
        )
        .expect("metric");
        let queue_depth = IntGauge::new(
            "eryx_queue_depth",
            "Invocations waiting for a concurrency slot.",
        )
        .expect("metric");
        let in_flight =
            IntGauge::new("eryx_invocations_in_flight", "Invocations running.").expect("metric");
        let http_requests = IntCounterVec::new(
            Opts::new(
                "eryx_http_requests_total",
                "HTTP requests by route and status.",
            ),
            &["method", "route", "status"],
        )
        .expect("metric");
        let deploys = IntCounterVec::new(
            Opts::new("eryx_deploys_total", "Deployments by outcome."),
            &["outcome"],
        )
        .expect("metric");
        let deploy_seconds = Histogram::with_opts(
            HistogramOpts::new("eryx_deploy_duration_seconds", "Time of a deployment.")
                .buckets(BUCKETS.to_vec()),
        )
        .expect("metric");
        let session_writes = IntCounterVec::new(
            Opts::new(
                "eryx_session_writes_total",
                "Session state writes by outcome.",
            ),
            &["outcome"],
        )
        .expect("metric");
        let session_cache = IntCounterVec::new(
            Opts::new(
                "eryx_session_state_cache_total",
                "Session state reads by whether this replica's cache had the state.",
            ),
            &["result"],
        )
        .expect("metric");
        for collector in [
            Box::new(invocations.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(invocation_seconds.clone()),
            Box::new(instance_create_seconds.clone()),
            Box::new(queue_depth.clone()),
            Box::new(in_flight.clone()),
            Box::new(http_requests.clone()),
            Box::new(deploys.clone()),
            Box::new(deploy_seconds.clone()),
            Box::new(session_writes.clone()),
            Box::new(session_cache.clone()),
        ] {
            registry.register(collector).expect("unique metric names");
        }
        Metrics {
            registry,
            invocations,
            invocation_seconds,
            instance_create_seconds,
            queue_depth,
            in_flight,
            http_requests,
            deploys,
            deploy_seconds,
            session_writes,
            session_cache,
        }
    }

    /// The metrics in Prometheus' text exposition format.
    pub(crate) fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding metrics to memory");
        String::from_utf8_lossy(&out).into_owned()
    }
}
