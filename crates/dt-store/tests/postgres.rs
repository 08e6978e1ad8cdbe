//! The conformance suite on PostgreSQL, one fresh database per case, plus PostgreSQL
//! specifics. The server is `host=127.0.0.1 port=5432 user=postgres` unless
//! `DEVTRUST_TEST_PG` gives another libpq-style base string (without `dbname`). An
//! unreachable server fails the tests; it does not skip them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use dt_store::postgres::PostgresBackend;
use dt_store::{Backend, Tuning, WatchEvent};
use dt_store_conformance::{Env, Factory, Failure, fast_tuning};
use tokio_postgres::{Client, NoTls};

fn base() -> String {
    std::env::var("DEVTRUST_TEST_PG")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres".into())
}

fn random_name() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    format!("dt_test_{:016x}", h.finish())
}

async fn admin() -> Result<Client, Failure> {
    let conn = format!("{} dbname=postgres", base());
    let (client, connection) = tokio_postgres::connect(&conn, NoTls).await.map_err(|e| {
        Failure::new(format!(
            "PostgreSQL is required for these tests but `{}` is unreachable: {e} ({e:?}). \
             Start PostgreSQL or point DEVTRUST_TEST_PG at one.",
            base()
        ))
    })?;
    tokio::spawn(connection);
    Ok(client)
}

/// A fresh database per case, dropped (forcibly) afterwards.
async fn fresh_db() -> Result<(Client, String), Failure> {
    let admin = admin().await?;
    let name = random_name();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .map_err(|e| Failure::new(format!("CREATE DATABASE {name}: {e:?}")))?;
    Ok((admin, name))
}

async fn drop_db(admin: Client, name: String) {
    if let Err(e) = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
    {
        eprintln!("could not drop test database {name}: {e:?}");
    }
}

async fn setup() -> Result<Env, Failure> {
    let (admin, name) = fresh_db().await?;
    let conn = format!("{} dbname={name}", base());
    let factory: Factory = Arc::new(move |tuning: Tuning| {
        let conn = conn.clone();
        Box::pin(async move {
            PostgresBackend::connect(&conn, tuning)
                .await
                .map(|b| b as Arc<dyn Backend>)
        })
    });
    Ok(Env {
        factory,
        cleanup: Some(Box::pin(drop_db(admin, name))),
    })
}

dt_store_conformance::conformance_tests!(setup);

/// With polling effectively off, changes reach another instance only through
/// LISTEN/NOTIFY; killing the LISTEN connection is survived by reconnecting, and changes
/// made while it was down are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_reconnects_and_catches_up() {
    let (admin, name) = fresh_db().await.unwrap();
    let conn = format!("{} dbname={name}", base());
    let slow_poll = Tuning {
        poll_every: Duration::from_secs(3600),
        ..fast_tuning()
    };
    let a = PostgresBackend::connect(&conn, slow_poll.clone())
        .await
        .unwrap();
    let b = PostgresBackend::connect(&conn, slow_poll).await.unwrap();
    let mut w = a.watch(vec!["/l/".into()]).await.unwrap();
    assert!(matches!(w.recv().await, Some(WatchEvent::Init { .. })));

    let next = async |w: &mut dt_store::Watcher| match tokio::time::timeout(
        Duration::from_secs(10),
        w.recv(),
    )
    .await
    {
        Ok(Some(WatchEvent::Change { item, .. })) => item,
        other => panic!("expected a change, got {other:?}"),
    };
    let r1 = b.put("/l/1", vec![], None).await.unwrap();
    assert_eq!(next(&mut w).await.revision, r1, "notification delivered");

    let killed = admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND query = 'LISTEN dt_store_events'",
            &[&name],
        )
        .await
        .unwrap();
    assert_eq!(killed, 2, "both instances have a LISTEN connection");
    // Written while the listener may be down: picked up when it reconnects.
    let r2 = b.put("/l/2", vec![], None).await.unwrap();
    assert_eq!(next(&mut w).await.revision, r2, "caught up after reconnect");
    // And notifications flow again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r3 = b.put("/l/3", vec![], None).await.unwrap();
    assert_eq!(
        next(&mut w).await.revision,
        r3,
        "notifications after reconnect"
    );

    a.close().await;
    b.close().await;
    drop_db(admin, name).await;
}

/// A pooled connection killed under the backend is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_survives_killed_connections() {
    let (admin, name) = fresh_db().await.unwrap();
    let conn = format!("{} dbname={name}", base());
    let b = PostgresBackend::connect(&conn, fast_tuning())
        .await
        .unwrap();
    b.put("/k", vec![1], None).await.unwrap();
    let killed = admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND application_name = 'devtrust dt-store'",
            &[&name],
        )
        .await
        .unwrap();
    assert!(killed >= 1, "no pooled connection found to kill");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.get("/k").await.unwrap().unwrap().value, vec![1]);
    b.put("/k", vec![2], None).await.unwrap();
    b.close().await;
    drop_db(admin, name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_is_versioned_and_keys_use_c_collation() {
    let (admin, name) = fresh_db().await.unwrap();
    let conn = format!("{} dbname={name}", base());
    let b = PostgresBackend::connect(&conn, fast_tuning())
        .await
        .unwrap();
    assert_eq!(b.schema_version().await.unwrap(), 1);
    b.close().await;
    let b = PostgresBackend::connect(&conn, fast_tuning())
        .await
        .unwrap();
    // Bytewise order regardless of the database's collation: uppercase before lowercase.
    for k in ["/c/b", "/c/B", "/c/a", "/c/A", "/c/_", "/c/é"] {
        b.put(k, vec![], None).await.unwrap();
    }
    let keys: Vec<String> = b
        .range("/c/", None, 100)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|i| i.key)
        .collect();
    assert_eq!(keys, ["/c/A", "/c/B", "/c/_", "/c/a", "/c/b", "/c/é"]);
    b.close().await;

    let (c, connection) = tokio_postgres::connect(&conn, NoTls).await.unwrap();
    tokio::spawn(connection);
    let n: i64 = c
        .query_one("SELECT COUNT(*) FROM dt_schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    drop(c);
    drop_db(admin, name).await;
}

#[tokio::test]
async fn bad_connection_string_is_invalid() {
    match PostgresBackend::connect("host=127.0.0.1 port=notaport", fast_tuning()).await {
        Err(dt_store::StoreError::Invalid(_)) => {}
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("connected with a bad connection string"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_events_are_pruned() {
    let (admin, name) = fresh_db().await.unwrap();
    let conn = format!("{} dbname={name}", base());
    let tuning = Tuning {
        keep_events_for: Duration::from_millis(1),
        ..fast_tuning()
    };
    let b = PostgresBackend::connect(&conn, tuning).await.unwrap();
    for i in 0..10 {
        b.put(&format!("/p/{i}"), vec![], None).await.unwrap();
    }
    let (c, connection) = tokio_postgres::connect(&conn, NoTls).await.unwrap();
    tokio::spawn(connection);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n: i64 = c
            .query_one("SELECT COUNT(*) FROM dt_events", &[])
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} events never pruned"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.range("/p/", None, 100).await.unwrap().items.len(), 10);
    drop(c);
    b.close().await;
    drop_db(admin, name).await;
}
