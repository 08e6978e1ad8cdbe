//! The conformance suite on PostgreSQL, one fresh database per case, plus PostgreSQL
//! specifics. The server is `host=127.0.0.1 port=5432 user=postgres` unless
//! `DEVTRUST_TEST_PG` gives another libpq-style base string (without `dbname`). An
//! unreachable server fails the tests; it does not skip them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use dt_store::postgres::PostgresBackend;
use dt_store::{Backend, Tuning, WatchEvent};
use dt_store_conformance::{
    Env, Factory, Failure, UNWATCHED_SWEEP_DELETES, fast_tuning, sweep_around_an_unwatched_key,
    unwatched_sweep_tuning,
};
use dt_testkit::{PgDatabase, shared_postgres};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

async fn admin() -> Result<Client, Failure> {
    let conn = format!("{} dbname=postgres", shared_postgres());
    let (client, connection) = tokio_postgres::connect(&conn, NoTls).await.map_err(|e| {
        Failure::new(format!(
            "PostgreSQL is required for these tests but `{}` is unreachable: {e} ({e:?}). \
             Start PostgreSQL or point DEVTRUST_TEST_PG at one.",
            shared_postgres()
        ))
    })?;
    tokio::spawn(connection);
    Ok(client)
}

/// A fresh database per case, dropped (forcibly) afterwards.
async fn setup() -> Result<Env, Failure> {
    let db = PgDatabase::create("dt_test");
    let conn = db.conn();
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
        cleanup: Some(Box::pin(async move { drop(db) })),
    })
}

dt_store_conformance::conformance_tests!(setup);

/// With polling effectively off, changes reach another instance only through
/// LISTEN/NOTIFY; killing the LISTEN connection is survived by reconnecting, and changes
/// made while it was down are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_reconnects_and_catches_up() {
    let db = PgDatabase::create("dt_test");
    let conn = db.conn();
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

    // Each instance opens its LISTEN connection in the background: on a busy machine the
    // second may not be up yet (seen in a CI run). Wait for both, then kill both.
    let adm = admin().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let listening: i64 = adm
            .query_one(
                "SELECT COUNT(*) FROM pg_stat_activity \
                 WHERE datname = $1 AND query = 'LISTEN dt_store_events'",
                &[&db.name],
            )
            .await
            .unwrap()
            .get(0);
        if listening >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {listening} LISTEN connection(s) after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed = adm
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND query = 'LISTEN dt_store_events'",
            &[&db.name],
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
    drop(db);
}

/// A pooled connection killed under the backend is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_survives_killed_connections() {
    let db = PgDatabase::create("dt_test");
    let conn = db.conn();
    let b = PostgresBackend::connect(&conn, fast_tuning())
        .await
        .unwrap();
    b.put("/k", vec![1], None).await.unwrap();
    let killed = admin()
        .await
        .unwrap()
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND application_name = 'devtrust dt-store'",
            &[&db.name],
        )
        .await
        .unwrap();
    assert!(killed >= 1, "no pooled connection found to kill");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.get("/k").await.unwrap().unwrap().value, vec![1]);
    b.put("/k", vec![2], None).await.unwrap();
    b.close().await;
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_is_versioned_and_keys_use_c_collation() {
    let db = PgDatabase::create("dt_test");
    let conn = db.conn();
    let b = PostgresBackend::connect(&conn, fast_tuning())
        .await
        .unwrap();
    assert_eq!(b.schema_version().await.unwrap(), 2);
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

    let c = raw_client(&conn).await;
    let n: i64 = c
        .query_one("SELECT COUNT(*) FROM dt_schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    drop(c);
    drop(db);
}

/// A plain connection to a test database, beside the store's own.
async fn raw_client(conn: &str) -> Client {
    let (c, connection) = tokio_postgres::connect(conn, NoTls).await.unwrap();
    tokio::spawn(connection);
    c
}

/// The plan PostgreSQL shows for `explain` (an `EXPLAIN ...` statement), one line per node.
async fn plan_of(c: &Client, explain: &str) -> String {
    let lines: Vec<String> = c
        .simple_query(explain)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    lines.join("\n")
}

/// The sweep's first question stays one step into the expiry index under the plan
/// PostgreSQL caches for a prepared statement, however many items never expire (the audit
/// log is most of them), and it answers both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_expiry_check_uses_the_index_under_a_generic_plan() {
    let db = PgDatabase::create("dt_test");
    let conn = db.conn();
    let b = PostgresBackend::connect(&conn, fast_tuning())
        .await
        .unwrap();
    b.close().await;
    let c = raw_client(&conn).await;
    c.batch_execute(
        "INSERT INTO dt_items (key, value, revision, expires) \
             SELECT '/audit/' || g, ''::bytea, g, NULL FROM generate_series(1, 20000) g; \
         INSERT INTO dt_items (key, value, revision, expires) \
             SELECT '/tokens/' || g, ''::bytea, g, 5000 + g FROM generate_series(1, 64) g; \
         SET plan_cache_mode = force_generic_plan",
    )
    .await
    .unwrap();
    let check = c
        .prepare(dt_store::postgres::ANY_EXPIRED_SQL)
        .await
        .unwrap();
    c.batch_execute(&format!(
        "PREPARE any_expired(bigint) AS {}",
        dt_store::postgres::ANY_EXPIRED_SQL
    ))
    .await
    .unwrap();
    let plan = plan_of(&c, "EXPLAIN EXECUTE any_expired(0)").await;
    assert!(plan.contains("dt_items_expires"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
    for (at, expired) in [(5000i64, false), (5001, true), (i64::MAX, true)] {
        let got: bool = c.query_one(&check, &[&at]).await.unwrap().get(0);
        assert_eq!(got, expired, "at {at}");
    }
    c.batch_execute("DELETE FROM dt_items WHERE expires IS NOT NULL")
        .await
        .unwrap();
    let got: bool = c.query_one(&check, &[&i64::MAX]).await.unwrap().get(0);
    assert!(!got, "nothing expires");
    drop(c);
    drop(db);
}

/// A statement prepared while the table was small keeps an index plan once it is large:
/// the store's session settings (`SESSION_SQL`) keep PostgreSQL from caching a generic
/// plan that scans the whole table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_cached_on_a_small_table_still_use_the_index() {
    let db = PgDatabase::create("dt_test");
    let conn = db.conn();
    let b = PostgresBackend::connect(&conn, fast_tuning())
        .await
        .unwrap();
    // The store's own connections run the setting...
    assert_eq!(b.session_setting("enable_seqscan").await.unwrap(), "off");
    b.close().await;
    // ...and this is what it does for them.
    let c = raw_client(&conn).await;
    c.batch_execute(dt_store::postgres::SESSION_SQL)
        .await
        .unwrap();
    // Statistics taken while the table is small (autovacuum does that in a new cluster),
    // and none after: this test's own autovacuum would replace the plan at random.
    c.batch_execute(
        "ALTER TABLE dt_items SET (autovacuum_enabled = false); \
         INSERT INTO dt_items (key, value, revision, expires) \
             SELECT '/d/' || g, ''::bytea, g, NULL FROM generate_series(1, 5) g; \
         ANALYZE dt_items; \
         PREPARE conditions(text[]) AS \
             SELECT key, revision, expires FROM dt_items WHERE key = ANY($1::text[])",
    )
    .await
    .unwrap();
    // Past the five custom plans: the generic plan is made and cached now, on 5 rows.
    for _ in 0..8 {
        c.batch_execute("EXECUTE conditions(ARRAY['/d/1', '/d/9'])")
            .await
            .unwrap();
    }
    c.batch_execute(
        "INSERT INTO dt_items (key, value, revision, expires) \
             SELECT '/audit/' || g, ''::bytea, g, NULL FROM generate_series(1, 20000) g",
    )
    .await
    .unwrap();
    let plan = plan_of(&c, "EXPLAIN EXECUTE conditions(ARRAY['/d/1', '/d/9'])").await;
    assert!(!plan.contains("Seq Scan"), "{plan}");
    assert!(plan.contains("dt_items_pkey"), "{plan}");
    drop(c);
    drop(db);
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
    let db = PgDatabase::create("dt_test");
    let conn = db.conn();
    let tuning = Tuning {
        keep_events_for: Duration::from_millis(1),
        ..fast_tuning()
    };
    let b = PostgresBackend::connect(&conn, tuning).await.unwrap();
    for i in 0..10 {
        b.put(&format!("/p/{i}"), vec![], None).await.unwrap();
    }
    let c = raw_client(&conn).await;
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
    drop(db);
}

/// Keys under an unwatched prefix leave no row in the change table, however they are
/// written (single put, atomic write, a group commit's multi-row puts, delete); the others
/// still do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwatched_keys_leave_no_change_rows() {
    let db = PgDatabase::create("dt_test");
    let tuning = Tuning {
        unwatched_prefixes: vec!["/u/".into()],
        ..fast_tuning()
    };
    let b = PostgresBackend::connect(&db.conn(), tuning).await.unwrap();
    b.put("/u/a", b"a".to_vec(), None).await.unwrap();
    b.put("/w/a", b"a".to_vec(), None).await.unwrap();
    let op = |k: &str, v: &[u8]| dt_store::Op::Put {
        key: k.into(),
        value: v.to_vec(),
        expires: None,
    };
    b.atomic_write(vec![], vec![op("/u/b", b"1"), op("/w/b", b"1")])
        .await
        .unwrap();
    // One batch writing /u/c twice: the later write wins, as it would row by row.
    b.write_batch(
        vec![
            dt_store::BatchWrite {
                conditions: vec![],
                ops: vec![op("/u/c", b"first"), op("/w/c", b"")],
            },
            dt_store::BatchWrite {
                conditions: vec![],
                ops: vec![op("/u/d", b""), op("/u/c", b"second")],
            },
        ],
        "/u/tail",
        Arc::new(|_: &[Option<i64>], _: Option<&dt_store::Item>| Ok(vec![])),
    )
    .await
    .unwrap();
    b.delete("/u/a", None).await.unwrap();
    b.delete("/w/a", None).await.unwrap();
    assert_eq!(b.get("/u/c").await.unwrap().unwrap().value, b"second");
    assert_eq!(b.range("/u/", None, 10).await.unwrap().items.len(), 3);
    let (c, conn) = tokio_postgres::connect(&db.conn(), NoTls).await.unwrap();
    tokio::spawn(conn);
    let count = async |like: &str| -> i64 {
        c.query_one("SELECT COUNT(*) FROM dt_events WHERE key LIKE $1", &[&like])
            .await
            .unwrap()
            .get(0)
    };
    assert_eq!(count("/u/%").await, 0, "unwatched keys in the change table");
    // Put a, b, c and delete a.
    assert_eq!(count("/w/%").await, 4, "watched keys' changes");
    b.close().await;
    drop(db);
}

/// Counters are an UNLOGGED table (no WAL, no flush at commit), and the background sweep
/// removes expired counts while live ones stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_are_unlogged_and_expired_ones_are_swept() {
    let db = PgDatabase::create("dt_test");
    let conn = db.conn();
    let b = PostgresBackend::connect(&conn, fast_tuning())
        .await
        .unwrap();
    let now = time::OffsetDateTime::now_utc();
    b.count_use("/c/long", 5, now + Duration::from_secs(60))
        .await
        .unwrap();
    b.count_use("/c/short", 5, now + Duration::from_millis(200))
        .await
        .unwrap();
    let c = raw_client(&conn).await;
    let persistence: i8 = c
        .query_one(
            "SELECT relpersistence FROM pg_class WHERE relname = 'dt_counters'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(persistence as u8, b'u', "dt_counters is UNLOGGED");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let keys: Vec<String> = c
            .query("SELECT key FROM dt_counters ORDER BY key", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        if keys == ["/c/long"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sweep left {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.close().await;
    drop(c);
    drop(db);
}

/// The expiry sweep deletes and counts every expired item, but writes change rows only for
/// watched keys: expired rate-limit or lookup items (unwatched) leave nothing in the feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_feeds_only_watched_keys() {
    let db = PgDatabase::create("dt_test");
    let conn = db.conn();
    let b = PostgresBackend::connect(&conn, unwatched_sweep_tuning())
        .await
        .unwrap();
    sweep_around_an_unwatched_key(b.as_ref()).await.unwrap();
    b.close().await;
    let c = raw_client(&conn).await;
    let deletes: Vec<(String, i32)> = c
        .query(
            "SELECT key, idx FROM dt_events WHERE revision = (SELECT MAX(revision) FROM dt_events) \
             ORDER BY idx",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected: Vec<(String, i32)> = UNWATCHED_SWEEP_DELETES
        .iter()
        .map(|(k, i)| (k.to_string(), *i))
        .collect();
    assert_eq!(deletes, expected);
    let unwatched: i64 = c
        .query_one("SELECT COUNT(*) FROM dt_events WHERE key = '/u/a'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(unwatched, 0);
    drop(c);
    drop(db);
}
