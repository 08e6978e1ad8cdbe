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

/// The indexed search returns exactly what reading every event and filtering returns, page
/// by page, also across the boundary of events written before the index existed, and
/// retention leaves no index entry behind.
async fn indexed_search(cl: &Cluster) {
    use dt_types::audit::DeviceInfo;
    let audit = &cl.srv.audit;
    // Times follow the ids except that each odd event is stamped 2 minutes before the even
    // one numbered ahead of it, as concurrent requests (or two auth servers' clocks) do;
    // docs/audit.md says how far out of order --since still finds them.
    let base =
        OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() + time::Duration::minutes(1);
    let types = [
        EventType::UserLogin,
        EventType::DeviceAuthenticate,
        EventType::AccessDenied,
    ];
    for i in 0..300i64 {
        let mut e = AuditEvent::new(
            types[(i % 3) as usize],
            i % 5 != 0,
            base + time::Duration::minutes(10 * (i - i % 2))
                + time::Duration::minutes(if i % 2 == 0 { 2 } else { 0 }),
        )
        .user(format!("user{}", i % 7));
        if i % 4 == 0 {
            e.device = Some(DeviceInfo {
                device_id: format!("dev-{}", i % 3),
                asset_tag: format!("TAG{}", i % 3),
                os_type: String::new(),
                credential_id: String::new(),
            });
        }
        audit.emit(e).await.unwrap();
    }
    let (all, _) = audit
        .search(&EventFilter::default(), None, 100_000)
        .await
        .unwrap();
    let check = async |f: EventFilter| {
        let want: Vec<String> = all
            .iter()
            .filter(|e| {
                f.since.is_none_or(|s| e.time >= s)
                    && f.event.is_none_or(|t| e.event == t)
                    && f.user.as_ref().is_none_or(|u| e.user.as_ref() == Some(u))
                    && f.device.as_ref().is_none_or(|d| {
                        e.device
                            .as_ref()
                            .is_some_and(|x| &x.device_id == d || &x.asset_tag == d)
                    })
            })
            .map(|e| e.id.clone())
            .collect();
        // In pages of 7, following the cursor.
        let mut got = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let (page, next) = audit.search(&f, cursor.as_deref(), 7).await.unwrap();
            got.extend(page.iter().map(|e| e.id.clone()));
            match next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        assert_eq!(got, want, "{f:?}");
        want.len()
    };
    let since = Some(base + time::Duration::hours(30));
    let filters = [
        EventFilter {
            user: Some("user3".into()),
            ..Default::default()
        },
        EventFilter {
            event: Some(EventType::DeviceAuthenticate),
            since,
            ..Default::default()
        },
        EventFilter {
            event: Some(EventType::AccessDenied),
            user: Some("user1".into()),
            since,
            ..Default::default()
        },
        EventFilter {
            device: Some("TAG1".into()),
            ..Default::default()
        },
        EventFilter {
            device: Some("dev-2".into()),
            since,
            ..Default::default()
        },
        EventFilter {
            since,
            ..Default::default()
        },
        EventFilter {
            user: Some("nobody".into()),
            ..Default::default()
        },
    ];
    let mut total = 0;
    for f in filters.clone() {
        total += check(f).await;
    }
    assert!(total > 100, "the filters select something: {total}");
    // Pretend the index started half way: the older half is read in full, same answers.
    let middle = &all[all.len() / 2].id;
    put(cl, dt_auth::audit::INDEX_FROM, middle.clone().into_bytes()).await;
    for f in filters.clone() {
        check(f).await;
    }
    // Retention removes the index entries with the events, including the time index
    // entries earlier builds wrote (nothing reads them; this build writes none).
    let first = &all[0];
    let legacy_time_key = format!(
        "/audit/idx/time/{:016}/{}",
        first.time.unix_timestamp_nanos() / 1_000_000,
        first.id
    );
    put(cl, &legacy_time_key, Vec::new()).await;
    let cut = base + time::Duration::hours(25);
    let removed = audit.remove_before(cut).await.unwrap();
    assert!(removed > 0, "retention removed something");
    let kept: std::collections::BTreeSet<u64> = audit
        .search(&EventFilter::default(), None, 100_000)
        .await
        .unwrap()
        .0
        .iter()
        .map(|e| e.id.parse().unwrap())
        .collect();
    let page = cl
        .srv
        .backend
        .range("/audit/idx/", None, 100_000)
        .await
        .unwrap();
    assert!(!page.items.is_empty(), "the kept events are indexed");
    for i in &page.items {
        let seq: u64 = i.key.rsplit('/').next().unwrap().parse().unwrap();
        assert!(
            kept.contains(&seq),
            "index entry of a removed event remains: {}",
            i.key
        );
        assert!(
            !i.key.starts_with("/audit/idx/time/"),
            "time index written: {}",
            i.key
        );
    }
    assert_eq!(audit.verify(None).await.unwrap().broken, None);
}

#[test]
fn indexed_search_on_sqlite() {
    block_on(async {
        let cl = Cluster::start(Options::default()).await;
        indexed_search(&cl).await;
        cl.stop().await;
    })
}

#[test]
fn indexed_search_on_postgres() {
    block_on(async {
        let cl = Cluster::start(Options {
            postgres: true,
            ..Options::default()
        })
        .await;
        indexed_search(&cl).await;
        cl.stop().await;
    })
}
