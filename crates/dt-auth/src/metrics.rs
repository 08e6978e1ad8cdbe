//! What the auth service counts for `/metrics` (Prometheus text format): ceremonies and
//! logins by kind and result with their latency, locks in force, and storage errors. Served
//! without a client certificate, like `/healthz`: it holds counts, never names or ids.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use dt_metrics::{CounterVec, HistogramVec, Registry};

use crate::cache::ClusterCache;

pub struct AuthMetrics {
    pub registry: Registry,
    ceremonies: Arc<CounterVec>,
    ceremony_seconds: Arc<HistogramVec>,
    logins: Arc<CounterVec>,
    login_seconds: Arc<HistogramVec>,
}

impl AuthMetrics {
    pub fn new(cache: Arc<ClusterCache>) -> AuthMetrics {
        let registry = Registry::new();
        let ceremonies = registry.counter(
            "devtrust_ceremonies_total",
            "Device ceremonies by kind (enroll, authenticate) and result (success or the gRPC code).",
            &["kind", "result"],
        );
        let ceremony_seconds = registry.histogram(
            "devtrust_ceremony_duration_seconds",
            "Time from the first ceremony message to the server's last answer.",
            &["kind"],
        );
        let logins = registry.counter(
            "devtrust_logins_total",
            "Logins by result (success or the gRPC code).",
            &["result"],
        );
        let login_seconds = registry.histogram(
            "devtrust_login_duration_seconds",
            "Time to answer a login (password hashing included).",
            &[],
        );
        registry.gauge_fn(
            "devtrust_locks_in_force",
            "Locks in force now, as the auth service's watched cache sees them (-1: unknown).",
            move || match cache.locks() {
                Some(Ok(locks)) => {
                    let now = time::OffsetDateTime::now_utc();
                    locks
                        .iter()
                        .filter(|l| l.metadata.expires.is_none_or(|e| e > now))
                        .count() as f64
                }
                _ => -1.0,
            },
        );
        registry.counter_fn(
            "devtrust_storage_errors_total",
            "Storage failures seen by API calls.",
            || crate::error::STORAGE_ERRORS.load(Ordering::Relaxed) as f64,
        );
        AuthMetrics {
            registry,
            ceremonies,
            ceremony_seconds,
            logins,
            login_seconds,
        }
    }

    pub fn ceremony(&self, kind: &str, result: Result<(), &tonic::Status>, took: Duration) {
        self.ceremonies.inc(&[kind, &result_label(result)]);
        self.ceremony_seconds.observe(&[kind], took);
    }

    pub fn login(&self, result: Result<(), &tonic::Status>, took: Duration) {
        self.logins.inc(&[&result_label(result)]);
        self.login_seconds.observe(&[], took);
    }

    /// For tests: a counter's current value.
    pub fn ceremonies_counted(&self, kind: &str, result: &str) -> u64 {
        self.ceremonies.get(&[kind, result])
    }
}

fn result_label(result: Result<(), &tonic::Status>) -> String {
    match result {
        Ok(()) => "success".into(),
        Err(s) => format!("{:?}", s.code()).to_ascii_lowercase(),
    }
}
