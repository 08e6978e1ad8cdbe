//! `cargo bench -p dt-auth --bench audit_search`: fill an SQLite audit log through the real
//! write path (hash chain and indexes, 1000 events per transaction) and time the searches
//! `dtctl events ls` makes, against reading every event (the path without indexes).
//!
//! `DEVTRUST_BENCH_EVENTS` sets the size (default 10,000,000, about 400 days of a busy
//! cluster: 10,000 users, 10 event types, a device on one event in four).
//! `DEVTRUST_BENCH_FULL_READ=0` skips the full-read comparison (minutes at 10 million).
//!
//! Printed: fill rate and cost per event (batched, and one event per transaction as the
//! auth service writes most events), database size, and the median of 11 runs of each
//! search with its result count, plus the full read and the ratio.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use dt_auth::audit::{AuditSink, EventFilter, INDEX_FROM};
use dt_store::{Backend, Op};
use dt_types::audit::{AuditEvent, DeviceInfo, EventType};
use time::OffsetDateTime;

const TYPES: [EventType; 10] = [
    EventType::UserLogin,
    EventType::DeviceAuthenticate,
    EventType::AccessDenied,
    EventType::SessionStart,
    EventType::SessionEnd,
    EventType::CertCreate,
    EventType::DeviceEnroll,
    EventType::UserLogin,
    EventType::SessionStart,
    EventType::SessionEnd,
];

fn event(i: u64, n: u64, now: OffsetDateTime) -> AuditEvent {
    // Spread over 400 days, oldest first, the newest at `now`.
    let span = 400 * 86_400_000i64;
    let back = span - (span as i128 * i as i128 / n as i128) as i64;
    let t = now - time::Duration::milliseconds(back);
    let mut e = AuditEvent::new(TYPES[(i % 10) as usize], !i.is_multiple_of(17), t)
        .user(format!("user{}", (i * 7919) % 10_000))
        .message("a typical message of moderate length for an audit event");
    if i.is_multiple_of(4) {
        e.device = Some(DeviceInfo {
            device_id: format!("5f2c6c39-3c4b-4a53-9d0c-{:012}", i % 5000),
            asset_tag: format!("TAG{}", i % 5000),
            os_type: "linux".into(),
            credential_id: format!("cred-{}", i % 5000),
        });
    }
    e
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn time_search(audit: &AuditSink, f: &EventFilter, runs: usize) -> (Duration, usize) {
    let mut times = Vec::new();
    let mut count = 0;
    for _ in 0..runs {
        let start = Instant::now();
        let (found, _) = audit.search(f, None, 500).await.unwrap();
        times.push(start.elapsed());
        count = found.len();
    }
    (median(times), count)
}

fn main() {
    let n: u64 = std::env::var("DEVTRUST_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(10_000_000);
    let full_read = std::env::var("DEVTRUST_BENCH_FULL_READ").map_or(true, |v| v != "0");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit-bench.db");
        let backend: Arc<dyn Backend> =
            dt_store::sqlite::SqliteBackend::open(&path, Default::default())
                .await
                .unwrap();
        let audit = AuditSink::new(backend.clone());
        audit.init_index().await.unwrap();
        let now = OffsetDateTime::now_utc();

        let start = Instant::now();
        let batch = 1000u64;
        let mut i = 0u64;
        while i < n {
            let events: Vec<AuditEvent> = (i..(i + batch).min(n)).map(|j| event(j, n, now)).collect();
            audit.write_with_events(vec![], vec![], events).await.unwrap();
            i += batch;
            if i.is_multiple_of(1_000_000) {
                eprintln!("  filled {i} events in {:.0?}", start.elapsed());
            }
        }
        let fill = start.elapsed();
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
            + std::fs::metadata(path.with_extension("db-wal")).map(|m| m.len()).unwrap_or(0);
        println!("audit log on SQLite: {n} events");
        println!(
            "  fill: {:.1} s, {:.0} events/s, {:.1} µs per event (1000 per transaction, with chain and indexes)",
            fill.as_secs_f64(),
            n as f64 / fill.as_secs_f64(),
            fill.as_secs_f64() * 1e6 / n as f64
        );
        println!("  database size: {:.0} MB ({:.0} bytes per event)", size as f64 / 1e6, size as f64 / n as f64);

        // One event per transaction, as most events are written.
        let singles = 1000;
        let start = Instant::now();
        for j in 0..singles {
            audit.emit(event(n + j, n + singles, now)).await.unwrap();
        }
        let one = start.elapsed();
        println!(
            "  write one event per transaction: {:.0} µs per event ({} events)",
            one.as_secs_f64() * 1e6 / singles as f64,
            singles
        );

        let hour = Some(now - time::Duration::hours(1));
        // A user and type that occur in the last hour: those of the newest filled event.
        let user = format!("user{}", ((n - 1) * 7919) % 10_000);
        let kind = TYPES[((n - 1) % 10) as usize];
        let searches = [
            ("--since=1h --type=T --user=U (one user's events of one type)", EventFilter {
                since: hour,
                event: Some(kind),
                user: Some(user.clone()),
                device: None,
            }),
            ("--since=1h --type=device.authenticate", EventFilter {
                since: hour,
                event: Some(EventType::DeviceAuthenticate),
                ..Default::default()
            }),
            ("--since=1h", EventFilter { since: hour, ..Default::default() }),
            ("--user=U (first 500)", EventFilter { user: Some(user.clone()), ..Default::default() }),
            ("--device=TAG42 --since=1h", EventFilter { device: Some("TAG42".into()), since: hour, ..Default::default() }),
        ];
        let mut first = Duration::ZERO;
        for (k, (what, f)) in searches.iter().enumerate() {
            let (t, count) = time_search(&audit, f, 11).await;
            if k == 0 {
                first = t;
            }
            println!("  events ls {what}: {:.2} ms ({count} events)", t.as_secs_f64() * 1e3);
        }
        if full_read {
            // The same first search without indexes: every event read and filtered.
            backend
                .atomic_write(vec![], vec![Op::Delete { key: INDEX_FROM.into() }])
                .await
                .unwrap();
            let (t, count) = time_search(&audit, &searches[0].1, 1).await;
            println!(
                "  the same without indexes (read every event): {:.0} ms ({count} events); indexed is {:.0}x faster",
                t.as_secs_f64() * 1e3,
                t.as_secs_f64() / first.as_secs_f64().max(1e-9)
            );
        }
    });
}
