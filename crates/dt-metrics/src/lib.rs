//! Metrics for the auth service and the access points, rendered in the Prometheus text
//! exposition format (version 0.0.4) for a `/metrics` endpoint.
//!
//! Why not a metrics crate: devtrust needs three shapes (labelled counters, labelled
//! histograms with fixed buckets, gauges read at scrape time), and these are a page of std
//! code with no dependency to audit. What it guarantees: label values are escaped, families
//! render in registration order with their `# HELP` and `# TYPE` lines, and recording is a
//! short critical section on one mutex per family (never held across I/O).
//!
//! It deliberately does not do: exemplars, summaries, or the OpenMetrics format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Latency buckets in seconds: 0.5 ms to 10 s, which covers a ceremony, an access
/// decision and a storage round trip.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

type Labels = Vec<String>;

/// A counter with labels, e.g. `devtrust_ceremonies_total{kind, result}`.
pub struct CounterVec {
    labels: &'static [&'static str],
    values: Mutex<BTreeMap<Labels, u64>>,
}

impl CounterVec {
    /// Add one for these label values (in the order the family declared its labels).
    pub fn inc(&self, values: &[&str]) {
        self.add(values, 1);
    }

    pub fn add(&self, values: &[&str], n: u64) {
        let key = key(self.labels, values);
        let mut m = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        *m.entry(key).or_insert(0) += n;
    }

    /// The current value (for tests and for `dtctl status`-like readers).
    pub fn get(&self, values: &[&str]) -> u64 {
        let key = key(self.labels, values);
        let m = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        m.get(&key).copied().unwrap_or(0)
    }
}

struct Hist {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// A histogram with labels and [`LATENCY_BUCKETS`].
pub struct HistogramVec {
    labels: &'static [&'static str],
    values: Mutex<BTreeMap<Labels, Hist>>,
}

impl HistogramVec {
    pub fn observe(&self, values: &[&str], d: Duration) {
        let secs = d.as_secs_f64();
        let key = key(self.labels, values);
        let mut m = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        let h = m.entry(key).or_insert_with(|| Hist {
            counts: vec![0; LATENCY_BUCKETS.len()],
            sum: 0.0,
            count: 0,
        });
        for (i, upper) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *upper {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }
}

/// A gauge read when scraped (live sessions, locks in force, watch lag...).
type GaugeFn = Box<dyn Fn() -> f64 + Send + Sync>;

enum Kind {
    Counter(Arc<CounterVec>),
    Histogram(Arc<HistogramVec>),
    Gauge(GaugeFn),
    /// A counter kept elsewhere (e.g. a process-wide atomic), read at each scrape.
    CounterFn(GaugeFn),
}

struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
}

/// The metrics of one process.
#[derive(Default)]
pub struct Registry {
    families: Mutex<Vec<Family>>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    pub fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Arc<CounterVec> {
        let c = Arc::new(CounterVec {
            labels,
            values: Mutex::default(),
        });
        self.push(name, help, Kind::Counter(c.clone()));
        c
    }

    pub fn histogram(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Arc<HistogramVec> {
        let h = Arc::new(HistogramVec {
            labels,
            values: Mutex::default(),
        });
        self.push(name, help, Kind::Histogram(h.clone()));
        h
    }

    /// A gauge whose value `read` computes at each scrape.
    pub fn gauge_fn(
        &self,
        name: &'static str,
        help: &'static str,
        read: impl Fn() -> f64 + Send + Sync + 'static,
    ) {
        self.push(name, help, Kind::Gauge(Box::new(read)));
    }

    /// A counter whose value `read` returns at each scrape (it must never decrease).
    pub fn counter_fn(
        &self,
        name: &'static str,
        help: &'static str,
        read: impl Fn() -> f64 + Send + Sync + 'static,
    ) {
        self.push(name, help, Kind::CounterFn(Box::new(read)));
    }

    fn push(&self, name: &'static str, help: &'static str, kind: Kind) {
        self.families
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Family { name, help, kind });
    }

    /// Everything, in the Prometheus text format.
    pub fn render(&self) -> String {
        let families = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        for f in families.iter() {
            let type_name = match f.kind {
                Kind::Counter(_) | Kind::CounterFn(_) => "counter",
                Kind::Histogram(_) => "histogram",
                Kind::Gauge(_) => "gauge",
            };
            let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
            let _ = writeln!(out, "# TYPE {} {type_name}", f.name);
            match &f.kind {
                Kind::Counter(c) => {
                    let m = c.values.lock().unwrap_or_else(PoisonError::into_inner);
                    for (vals, n) in m.iter() {
                        let _ = writeln!(out, "{}{} {n}", f.name, label_set(c.labels, vals, None));
                    }
                }
                Kind::Histogram(h) => {
                    let m = h.values.lock().unwrap_or_else(PoisonError::into_inner);
                    for (vals, hist) in m.iter() {
                        for (i, upper) in LATENCY_BUCKETS.iter().enumerate() {
                            let le = upper.to_string();
                            let _ = writeln!(
                                out,
                                "{}_bucket{} {}",
                                f.name,
                                label_set(h.labels, vals, Some(&le)),
                                hist.counts[i]
                            );
                        }
                        let _ = writeln!(
                            out,
                            "{}_bucket{} {}",
                            f.name,
                            label_set(h.labels, vals, Some("+Inf")),
                            hist.count
                        );
                        let ls = label_set(h.labels, vals, None);
                        let _ = writeln!(out, "{}_sum{ls} {}", f.name, hist.sum);
                        let _ = writeln!(out, "{}_count{ls} {}", f.name, hist.count);
                    }
                }
                Kind::Gauge(read) | Kind::CounterFn(read) => {
                    let _ = writeln!(out, "{} {}", f.name, read());
                }
            }
        }
        out
    }
}

/// Label values in declared order; missing ones are empty, extra ones dropped, so a caller
/// mistake shows up as an odd series rather than a panic.
fn key(labels: &[&str], values: &[&str]) -> Labels {
    (0..labels.len())
        .map(|i| values.get(i).copied().unwrap_or_default().to_string())
        .collect()
}

fn label_set(names: &[&str], values: &[String], le: Option<&str>) -> String {
    let mut parts: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// The exposition format's escapes for label values: backslash, quote, newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let r = Registry::new();
        let c = r.counter("t_total", "things", &["kind", "result"]);
        c.inc(&["enroll", "success"]);
        c.inc(&["enroll", "success"]);
        c.inc(&["authn", "fail\"ure"]);
        let h = r.histogram("t_seconds", "latency", &["kind"]);
        h.observe(&["enroll"], Duration::from_millis(3));
        r.gauge_fn("t_live", "live", || 7.0);
        let text = r.render();
        assert!(text.contains("# TYPE t_total counter\n"), "{text}");
        assert!(
            text.contains("t_total{kind=\"enroll\",result=\"success\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("t_total{kind=\"authn\",result=\"fail\\\"ure\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("t_seconds_bucket{kind=\"enroll\",le=\"0.0025\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("t_seconds_bucket{kind=\"enroll\",le=\"0.005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("t_seconds_bucket{kind=\"enroll\",le=\"+Inf\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("t_seconds_count{kind=\"enroll\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE t_live gauge\nt_live 7\n"), "{text}");
        assert_eq!(c.get(&["enroll", "success"]), 2);
        assert_eq!(c.get(&["enroll", "failure"]), 0);
    }

    #[test]
    fn wrong_label_counts_do_not_panic() {
        let r = Registry::new();
        let c = r.counter("x_total", "x", &["a", "b"]);
        c.inc(&["only-a"]);
        c.inc(&["a", "b", "extra"]);
        let text = r.render();
        assert!(text.contains("x_total{a=\"only-a\",b=\"\"} 1"), "{text}");
        assert!(text.contains("x_total{a=\"a\",b=\"b\"} 1"), "{text}");
    }
}
