//! Issue 19: the audit hash chain is verified, on SQLite and on PostgreSQL. Stored events are
//! edited (with and without a recomputed hash), deleted (in the middle and at the end),
//! reordered and garbled directly in the database, and `verify` reports each at the first
//! link it breaks, with the event's id and time; `--since` checks only what follows; and
//! retention removes old events without breaking the chain (the anchor keeps the link).
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

mod support;

use dt_auth::audit::EventFilter;
use dt_store::Op;
use dt_types::audit::{AuditEvent, EventType};
use support::*;
use time::OffsetDateTime;

fn key(id: &str) -> String {
    format!("/audit/events/{id}")
}

async fn put(cl: &Cluster, key: &str, value: Vec<u8>) {
    cl.srv
        .backend
        .atomic_write(
            vec![],
            vec![Op::Put {
                key: key.into(),
                value,
                expires: None,
            }],
        )
        .await
        .unwrap();
}

async fn delete(cl: &Cluster, key: &str) {
    cl.srv
        .backend
        .atomic_write(vec![], vec![Op::Delete { key: key.into() }])
        .await
        .unwrap();
}

async fn raw(cl: &Cluster, key: &str) -> Vec<u8> {
    cl.srv.backend.get(key).await.unwrap().unwrap().value
}

/// The id of our event for user `u`.
async fn id_of(cl: &Cluster, u: &str) -> (String, OffsetDateTime) {
    let filter = EventFilter {
        user: Some(u.into()),
        ..Default::default()
    };
    let (events, _) = cl.srv.audit.search(&filter, None, 10).await.unwrap();
    let e = events.last().unwrap();
    (e.id.clone(), e.time)
}

fn next_id(id: &str) -> String {
    format!("{:020}", id.parse::<u64>().unwrap() + 1)
}

#[track_caller]
fn assert_broken(r: &dt_auth::audit::ChainReport, id: &str, problem: &str) {
    let b = r
        .broken
        .as_ref()
        .unwrap_or_else(|| panic!("not caught (want {problem:?} at {id}): {r:?}"));
    assert_eq!(b.id, id, "{b:?}");
    assert!(b.problem.contains(problem), "{b:?}");
    assert!(b.time.is_some(), "{b:?}");
}

async fn tamper_and_retention(cl: &Cluster) {
    let audit = &cl.srv.audit;
    let base = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() + time::Duration::hours(1);
    for i in 0..10 {
        audit
            .emit(
                AuditEvent::new(
                    EventType::UserLogin,
                    true,
                    base + time::Duration::minutes(i),
                )
                .user(format!("u{i}")),
            )
            .await
            .unwrap();
    }
    let clean = audit.verify(None).await.unwrap();
    assert_eq!(clean.broken, None, "{clean:?}");
    assert!(clean.checked >= 10);
    let (v, v_time) = id_of(cl, "u4").await;
    let after = next_id(&v);
    let original = raw(cl, &key(&v)).await;
    let original_next = raw(cl, &key(&after)).await;

    // 1. Edited in place.
    let mut e: AuditEvent = serde_json::from_slice(&original).unwrap();
    e.user = Some("mallory".into());
    put(cl, &key(&v), serde_json::to_vec(&e).unwrap()).await;
    let r = audit.verify(None).await.unwrap();
    assert_broken(&r, &v, "edited");
    assert_eq!(r.broken.as_ref().unwrap().time, Some(v_time));
    // 2. Edited with its hash recomputed: the next link breaks.
    e.hash = e.chain_hash();
    put(cl, &key(&v), serde_json::to_vec(&e).unwrap()).await;
    assert_broken(
        &audit.verify(None).await.unwrap(),
        &after,
        "does not follow",
    );
    // 3. Garbled bytes.
    put(cl, &key(&v), b"{not json".to_vec()).await;
    let r = audit.verify(None).await.unwrap();
    assert_eq!(r.broken.as_ref().unwrap().id, v);
    assert!(r.broken.as_ref().unwrap().problem.contains("unreadable"));
    put(cl, &key(&v), original.clone()).await;
    assert_eq!(audit.verify(None).await.unwrap().broken, None);

    // 4. Deleted in the middle.
    delete(cl, &key(&v)).await;
    assert_broken(
        &audit.verify(None).await.unwrap(),
        &after,
        &format!("event {v} is missing before this one (deleted)"),
    );
    put(cl, &key(&v), original.clone()).await;

    // 5. Reordered: two neighbours swap places.
    put(cl, &key(&v), original_next.clone()).await;
    put(cl, &key(&after), original.clone()).await;
    assert_broken(
        &audit.verify(None).await.unwrap(),
        &after,
        "stored in place of event",
    );
    put(cl, &key(&v), original.clone()).await;
    put(cl, &key(&after), original_next.clone()).await;
    assert_eq!(audit.verify(None).await.unwrap().broken, None);

    // 6. The newest event deleted: the head still names it.
    let (last, _) = id_of(cl, "u9").await;
    let last_raw = raw(cl, &key(&last)).await;
    delete(cl, &key(&last)).await;
    let r = audit.verify(None).await.unwrap();
    let b = r.broken.as_ref().unwrap();
    assert!(b.problem.contains("events after it were deleted"), "{b:?}");
    put(cl, &key(&last), last_raw).await;
    assert_eq!(audit.verify(None).await.unwrap().broken, None);

    // --since: a break before the window is not looked at; one inside it is.
    let (early, _) = id_of(cl, "u1").await;
    let early_raw = raw(cl, &key(&early)).await;
    let mut x: AuditEvent = serde_json::from_slice(&early_raw).unwrap();
    x.success = false;
    put(cl, &key(&early), serde_json::to_vec(&x).unwrap()).await;
    let window = base + time::Duration::minutes(3);
    let r = audit.verify(Some(window)).await.unwrap();
    assert_eq!(r.broken, None, "{r:?}");
    assert_eq!(r.checked, 7, "u3..u9");
    assert_broken(&audit.verify(None).await.unwrap(), &early, "edited");
    put(cl, &key(&early), early_raw).await;

    // Retention: everything before u5 goes, the chain still verifies from the anchor, and
    // new events follow on.
    let removed = audit
        .remove_before(base + time::Duration::minutes(5))
        .await
        .unwrap();
    assert!(removed >= 5, "{removed}");
    let r = audit.verify(None).await.unwrap();
    assert_eq!(r.broken, None, "{r:?}");
    assert_eq!(r.checked, 5);
    let anchor = r.anchor.clone().expect("anchor");
    assert_eq!(anchor.seq, v.parse::<u64>().unwrap());
    assert_eq!(r.first_id.as_deref(), Some(after.as_str()));
    audit
        .emit(
            AuditEvent::new(EventType::UserLogin, true, base + time::Duration::hours(1))
                .user("u10"),
        )
        .await
        .unwrap();
    assert_eq!(audit.verify(None).await.unwrap().broken, None);
    // Removing again is a no-op; the kept chain's first event still answers for its link.
    assert_eq!(
        audit
            .remove_before(base + time::Duration::minutes(5))
            .await
            .unwrap(),
        0
    );
    delete(cl, &key(&after)).await;
    assert_broken(
        &audit.verify(None).await.unwrap(),
        &next_id(&after),
        "is missing before this one",
    );
}

#[test]
fn chain_tampering_is_caught_and_retention_keeps_it_on_sqlite() {
    block_on(async {
        let cl = Cluster::start(Options::default()).await;
        assert_eq!(cl.srv.backend.kind(), "sqlite");
        tamper_and_retention(&cl).await;
        cl.stop().await;
    })
}

#[test]
fn chain_tampering_is_caught_and_retention_keeps_it_on_postgres() {
    block_on(async {
        let cl = Cluster::start(Options {
            postgres: true,
            ..Options::default()
        })
        .await;
        assert_eq!(cl.srv.backend.kind(), "postgres");
        tamper_and_retention(&cl).await;
        cl.stop().await;
    })
}
