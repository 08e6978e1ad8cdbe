//! The audit log's group commit, on SQLite and on PostgreSQL: many concurrent writers
//! commit together and each gets its own result; a request whose condition fails fails
//! alone (its change and its event are not written, the others' are); the chain verifies
//! after a concurrent burst, and an edit made afterwards is still caught; two auth servers
//! (two store instances and two sinks on one database) writing at once share one chain that
//! verifies.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use dt_auth::audit::AuditSink;
use dt_store::{Backend, Condition, Op, StoreError, Tuning};
use dt_types::audit::{AuditEvent, EventType};
use support::*;
use time::OffsetDateTime;

enum Db {
    Sqlite(tempfile::TempDir),
    Postgres(dt_testkit::PgDatabase),
}

impl Db {
    fn new(postgres: bool) -> Db {
        if postgres {
            Db::Postgres(dt_testkit::PgDatabase::create("dt_auth_it"))
        } else {
            Db::Sqlite(tempfile::tempdir().unwrap())
        }
    }

    /// One more store instance on this database (one per auth server).
    async fn open(&self) -> Arc<dyn Backend> {
        match self {
            Db::Sqlite(dir) => dt_store::sqlite::SqliteBackend::open(
                &dir.path().join("state.db"),
                Tuning::default(),
            )
            .await
            .unwrap(),
            Db::Postgres(db) => {
                dt_store::postgres::PostgresBackend::connect(&db.conn(), Tuning::default())
                    .await
                    .unwrap()
            }
        }
    }
}

fn event(user: &str) -> AuditEvent {
    AuditEvent::new(EventType::UserLogin, true, OffsetDateTime::now_utc()).user(user)
}

fn put(key: &str) -> Op {
    Op::Put {
        key: key.into(),
        value: b"v".to_vec(),
        expires: None,
    }
}

/// `n` concurrent requests on `sink`, request `i` creating `/gc/{who}/{i}` under
/// `NotExists` and recording one event for user `{who}-{i}`.
async fn burst(sink: Arc<AuditSink>, who: &'static str, n: usize) -> Vec<Result<i64, StoreError>> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let sink = sink.clone();
            tokio::spawn(async move {
                let key = format!("/gc/{who}/{i}");
                sink.write_with(
                    vec![Condition::NotExists(key.clone())],
                    vec![put(&key)],
                    event(&format!("{who}-{i}")),
                )
                .await
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Every stored event's user, and how many distinct revisions the event items carry (the
/// events of one group commit share the batch's last revision).
async fn stored_events(b: &Arc<dyn Backend>) -> (Vec<String>, usize) {
    let mut users = Vec::new();
    let mut revisions = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = b
            .range("/audit/events/", cursor.as_deref(), 1000)
            .await
            .unwrap();
        for item in &page.items {
            let e: AuditEvent = serde_json::from_slice(&item.value).unwrap();
            users.push(e.user.unwrap_or_default());
            revisions.insert(item.revision);
        }
        match page.next {
            Some(n) => cursor = Some(n),
            None => return (users, revisions.len()),
        }
    }
}

async fn concurrent_writers_commit_together(postgres: bool) {
    let db = Db::new(postgres);
    let b = db.open().await;
    let sink = Arc::new(AuditSink::new(b.clone()));
    // A key that exists already: the request creating it again must fail, alone.
    b.put("/gc/w/13", b"taken".to_vec(), None).await.unwrap();

    let results = burst(sink.clone(), "w", 200).await;
    let mut revisions = BTreeSet::new();
    for (i, r) in results.iter().enumerate() {
        if i == 13 {
            match r {
                Err(StoreError::ConditionFailed { index: 0, key }) => assert_eq!(key, "/gc/w/13"),
                other => panic!("request 13 should fail its own condition: {other:?}"),
            }
        } else {
            let rev = *r.as_ref().unwrap_or_else(|e| panic!("request {i}: {e}"));
            revisions.insert(rev);
            // Each request's change has the revision it was told.
            assert_eq!(
                b.get(&format!("/gc/w/{i}"))
                    .await
                    .unwrap()
                    .unwrap()
                    .revision,
                rev
            );
        }
    }
    assert_eq!(revisions.len(), 199, "every request has its own revision");
    assert_eq!(
        b.get("/gc/w/13").await.unwrap().unwrap().value,
        b"taken",
        "the failed request wrote nothing"
    );

    let (users, event_revisions) = stored_events(&b).await;
    assert_eq!(users.len(), 199, "one event per applied request");
    assert!(
        !users.contains(&"w-13".to_string()),
        "no event for the failed request"
    );
    assert!(
        event_revisions < users.len(),
        "requests were committed in groups ({event_revisions} commits for {} events)",
        users.len()
    );

    let report = sink.verify(None).await.unwrap();
    assert_eq!(report.broken, None, "{report:?}");
    assert_eq!(report.checked, 199);

    // Tampering after the burst is still caught.
    let key = "/audit/events/00000000000000000100";
    let mut e: AuditEvent =
        serde_json::from_slice(&b.get(key).await.unwrap().unwrap().value).unwrap();
    e.user = Some("mallory".into());
    b.put(key, serde_json::to_vec(&e).unwrap(), None)
        .await
        .unwrap();
    let report = sink.verify(None).await.unwrap();
    let broken = report.broken.expect("the edit is caught");
    assert_eq!(broken.id, "00000000000000000100");
    assert!(broken.problem.contains("edited"), "{broken:?}");
    b.close().await;
}

async fn two_servers_share_one_chain(postgres: bool) {
    let db = Db::new(postgres);
    let (ba, bb) = (db.open().await, db.open().await);
    let (sa, sb) = (
        Arc::new(AuditSink::new(ba.clone())),
        Arc::new(AuditSink::new(bb.clone())),
    );
    let (ra, rb) = tokio::join!(
        tokio::spawn(burst(sa.clone(), "a", 150)),
        tokio::spawn(burst(sb.clone(), "b", 150))
    );
    for r in ra.unwrap().into_iter().chain(rb.unwrap()) {
        r.unwrap();
    }
    let (users, _) = stored_events(&ba).await;
    assert_eq!(users.len(), 300);
    let from_a = users.iter().filter(|u| u.starts_with("a-")).count();
    assert_eq!(from_a, 150, "both servers' events are in the one chain");
    for sink in [&sa, &sb] {
        let report = sink.verify(None).await.unwrap();
        assert_eq!(report.broken, None, "{report:?}");
        assert_eq!(report.checked, 300);
    }
    // Deleting an event in the middle is caught, whichever server verifies.
    ba.delete("/audit/events/00000000000000000150", None)
        .await
        .unwrap();
    let report = sb.verify(None).await.unwrap();
    let broken = report.broken.expect("the deletion is caught");
    assert_eq!(broken.id, "00000000000000000151");
    assert!(broken.problem.contains("missing"), "{broken:?}");
    ba.close().await;
    bb.close().await;
}

#[test]
fn concurrent_writers_commit_together_on_sqlite() {
    block_on(concurrent_writers_commit_together(false));
}

#[test]
fn concurrent_writers_commit_together_on_postgres() {
    block_on(concurrent_writers_commit_together(true));
}

#[test]
fn two_servers_share_one_chain_on_sqlite() {
    block_on(two_servers_share_one_chain(false));
}

#[test]
fn two_servers_share_one_chain_on_postgres() {
    block_on(two_servers_share_one_chain(true));
}
