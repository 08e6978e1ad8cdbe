//! What an SSH access point counts for `/metrics` (Prometheus text format): access
//! decisions by result and their cost, live sessions, locks in force and the age of its view
//! of the cluster (the watch lag). `devtrust node start --metrics-listen=ADDR` serves it
//! with `/readyz` (ready while the view is loaded and fresh) over plain HTTP: bind it to
//! loopback or a monitoring network; it holds counts, never names or ids.

use std::sync::{Arc, Weak};
use std::time::Duration;

use dt_metrics::{CounterVec, HistogramVec, Registry};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::access::Denial;
use crate::server::{NodeState, SharedView};

pub struct NodeMetrics {
    pub registry: Registry,
    decisions: Arc<CounterVec>,
    decision_seconds: Arc<HistogramVec>,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        let registry = Registry::new();
        let decisions = registry.counter(
            "devtrust_access_decisions_total",
            "Access decisions by resource kind and result (allow, or why it denied).",
            &["kind", "result"],
        );
        let decision_seconds = registry.histogram(
            "devtrust_access_decision_duration_seconds",
            "Time to decide one access (the pure decision over the node's view).",
            &["kind"],
        );
        NodeMetrics {
            registry,
            decisions,
            decision_seconds,
        }
    }
}

impl NodeMetrics {
    pub fn decision(&self, result: Result<(), &Denial>, took: Duration) {
        self.decisions.inc(&["ssh", result_label(result)]);
        self.decision_seconds.observe(&["ssh"], took);
    }

    /// For tests: how many decisions had this result.
    pub fn decisions_counted(&self, result: &str) -> u64 {
        self.decisions.get(&["ssh", result])
    }

    /// The gauges that read the node's live state at each scrape. Weak references: the
    /// registry lives inside the state it reads.
    pub fn watch(&self, state: &Arc<NodeState>, view: &Arc<SharedView>) {
        let s: Weak<NodeState> = Arc::downgrade(state);
        self.registry.gauge_fn(
            "devtrust_live_sessions",
            "SSH connections with a live session on this node.",
            move || s.upgrade().map_or(0.0, |s| s.sessions.len() as f64),
        );
        let v = Arc::downgrade(view);
        self.registry.gauge_fn(
            "devtrust_locks_in_force",
            "Locks in force in this node's view of the cluster (-1: the view cannot say).",
            move || {
                v.upgrade().map_or(-1.0, |v| {
                    v.read(|view| view.active_locks(OffsetDateTime::now_utc()))
                        .map_or(-1.0, |l| l.len() as f64)
                })
            },
        );
        let v = Arc::downgrade(view);
        self.registry.gauge_fn(
            "devtrust_watch_lag_seconds",
            "Age of this node's view of the cluster: time since the watch last confirmed it (-1: never loaded).",
            move || {
                v.upgrade()
                    .and_then(|v| v.read(|view| view.age(OffsetDateTime::now_utc())))
                    .map_or(-1.0, |a| a.as_secs_f64())
            },
        );
    }
}

fn result_label(result: Result<(), &Denial>) -> &'static str {
    match result {
        Ok(()) => "allow",
        Err(d) => d.metric_label(),
    }
}

/// Serve `/metrics` and `/readyz` on `listener` until the task is dropped. A minimal
/// HTTP/1.1 responder: one request per connection, headers capped at 8 KiB.
pub async fn serve(listener: TcpListener, state: Arc<NodeState>, view: Arc<SharedView>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let (state, view) = (state.clone(), view.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut n = 0;
            let head_done = |b: &[u8]| b.windows(4).any(|w| w == b"\r\n\r\n");
            while n < buf.len() && !head_done(&buf[..n]) {
                match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf[n..])).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
                    Ok(Ok(k)) => n += k,
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, ctype, body) = match path {
                "/metrics" => (
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    state.metrics.registry.render(),
                ),
                "/readyz" => {
                    let why = view.read(|v| match v.age(OffsetDateTime::now_utc()) {
                        None => Some("the node has no view of the cluster yet".to_string()),
                        Some(a) if a > state.freshness.strict_max_age => {
                            Some(format!("the view of the cluster is {} s old", a.as_secs()))
                        }
                        Some(_) => None,
                    });
                    match why {
                        None => ("200 OK", "application/json", "{\"ready\":true}\n".into()),
                        Some(w) => (
                            "503 Service Unavailable",
                            "application/json",
                            format!("{{\"ready\":false,\"reason\":{:?}}}\n", w),
                        ),
                    }
                }
                _ => (
                    "404 Not Found",
                    "text/plain",
                    "try /metrics or /readyz\n".into(),
                ),
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}
