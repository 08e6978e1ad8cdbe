//! Locks at the SSH access point (issue 7's test list, beyond live termination which
//! `live.rs` covers): a lock survives an auth restart; a lock written while the node was
//! cut off from the auth service applies when it reconnects; TTL expiry restores access on
//! time; a device lock leaves the same user's plain (un-augmented) access alone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use dt_node_testkit::*;
use time::OffsetDateTime;

fn lock_yaml(name: &str, target: &str) -> String {
    format!("kind: lock\nversion: v2\nmetadata: {{name: {name}}}\nspec:\n  target: {{{target}}}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_survives_an_auth_restart() {
    let mut cluster = Cluster::start().await;
    let node = Node::start(&cluster, "node1", &[]).await;
    let u = cluster.user(&TestUser::human("rita", &["access"]));
    cluster.apply(&lock_yaml("keep", "user: rita")).await;
    node.wait_view("the lock", |v| {
        v.active_locks(OffsetDateTime::now_utc())
            .is_ok_and(|l| l.len() == 1)
    })
    .await;
    assert_eq!(
        rejection(node.run(&u, "root", "true").await),
        "lock targeting User:\"rita\" is in force"
    );

    let before = node.view().read(|v| v.confirmed_at());
    cluster.restart().await;
    node.wait_view("a fresh view after the restart", |v| {
        v.confirmed_at() > before
    })
    .await;
    assert_eq!(
        rejection(node.run(&u, "root", "true").await),
        "lock targeting User:\"rita\" is in force",
        "the lock is read back from storage after the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_written_while_the_node_was_disconnected_applies_on_reconnect() {
    let mut cluster = Cluster::start().await;
    let node = Node::start(&cluster, "node1", &[]).await;
    let u = cluster.user(&TestUser::human("otto", &["access"]));
    assert_eq!(
        node.run(&u, "root", "true").await.unwrap().exit_status,
        Some(0)
    );

    // Cut the node off: the auth service is down while the lock reaches storage (as it
    // would through another auth server sharing the database).
    cluster.stop().await;
    {
        let db = cluster.data_dir().join("devtrust.db");
        let b = dt_store::sqlite::SqliteBackend::open(&db, dt_store::Tuning::default())
            .await
            .unwrap();
        let lock: dt_types::Lock = dt_types::resource::Resource::new(
            "while-away",
            dt_types::resource::LockSpec {
                target: dt_types::LockTarget {
                    user: Some("otto".into()),
                    ..Default::default()
                },
                message: Some("offboarded".into()),
                ..Default::default()
            },
        );
        use dt_store::Backend;
        b.put(
            "/resources/lock/while-away",
            serde_json::to_vec(&lock).unwrap(),
            None,
        )
        .await
        .unwrap();
        b.close().await;
    }
    // Best effort: the stale view still serves while disconnected.
    assert_eq!(
        node.run(&u, "root", "true").await.unwrap().exit_status,
        Some(0)
    );

    cluster.restart().await;
    node.wait_view("the lock made while away", |v| {
        v.active_locks(OffsetDateTime::now_utc())
            .is_ok_and(|l| l.len() == 1)
    })
    .await;
    assert_eq!(
        rejection(node.run(&u, "root", "true").await),
        "lock targeting User:\"otto\" is in force: offboarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expiry_restores_access_on_time() {
    let cluster = Cluster::start().await;
    let node = Node::start(&cluster, "node1", &[]).await;
    let u = cluster.user(&TestUser::human("tess", &["access"]));
    let expires = (OffsetDateTime::now_utc() + Duration::from_secs(3))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    cluster
        .apply(&format!(
            "kind: lock\nversion: v2\nmetadata: {{name: brief, expires: '{expires}'}}\nspec:\n  target: {{user: tess}}\n"
        ))
        .await;
    node.wait_view("the lock", |v| {
        v.active_locks(OffsetDateTime::now_utc())
            .is_ok_and(|l| l.len() == 1)
    })
    .await;
    assert_eq!(
        rejection(node.run(&u, "root", "true").await),
        "lock targeting User:\"tess\" is in force"
    );

    // Within a second of expiry access is back (the node stops applying it at the expiry
    // instant; storage sweeps the lock and the watch removes it).
    let t0 = std::time::Instant::now();
    let mut allowed = false;
    while t0.elapsed() < Duration::from_secs(6) {
        if matches!(node.run(&u, "root", "true").await, Ok(out) if out.exit_status == Some(0)) {
            allowed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(allowed, "access restored after the lock's TTL");
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "not before the lock expired"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_lock_leaves_plain_access_to_non_device_resources_alone() {
    let cluster = Cluster::start().await;
    let node = Node::start(&cluster, "node1", &[]).await;
    let with_device = cluster.user(&TestUser::human("dana", &["access"]).with_device());
    let plain = cluster.user(&TestUser::human("dana", &["access"]));
    let dev = device().device_id;
    cluster
        .apply(&lock_yaml("stolen", &format!("device: {dev}")))
        .await;
    node.wait_view("the lock", |v| {
        v.active_locks(OffsetDateTime::now_utc())
            .is_ok_and(|l| l.len() == 1)
    })
    .await;
    assert_eq!(
        rejection(node.run(&with_device, "root", "true").await),
        format!("lock targeting Device:\"{dev}\" is in force")
    );
    assert_eq!(
        node.run(&plain, "root", "true").await.unwrap().exit_status,
        Some(0),
        "the same user without the device (no device trust required here) keeps access"
    );
    // But where a trusted device is required, the plain certificate is refused as usual.
    cluster.set_cluster_mode("required").await;
    node.wait_view("mode required", |v| {
        v.cluster_mode()
            .is_ok_and(|m| m == dt_types::DeviceTrustMode::Required)
    })
    .await;
    assert_eq!(
        rejection(node.run(&plain, "root", "true").await),
        "unauthorized device"
    );
}
