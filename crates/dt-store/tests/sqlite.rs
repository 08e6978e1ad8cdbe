//! The conformance suite on a SQLite file in a temporary directory, plus SQLite specifics.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use dt_store::sqlite::SqliteBackend;
use dt_store::{Backend, Tuning};
use dt_store_conformance::{
    Env, Factory, Failure, UNWATCHED_SWEEP_DELETES, fast_tuning, sweep_around_an_unwatched_key,
    unwatched_sweep_tuning,
};

/// A fresh temp dir per case; every instance opens the same `store.db` in it.
async fn setup() -> Result<Env, Failure> {
    let dir = tempfile::tempdir().map_err(|e| Failure::new(format!("tempdir: {e}")))?;
    let path = dir.path().join("store.db");
    let factory: Factory = Arc::new(move |tuning: Tuning| {
        let path = path.clone();
        Box::pin(async move {
            SqliteBackend::open(&path, tuning)
                .await
                .map(|b| b as Arc<dyn Backend>)
        })
    });
    Ok(Env {
        factory,
        cleanup: Some(Box::pin(async move { drop(dir) })),
    })
}

dt_store_conformance::conformance_tests!(setup);

#[cfg(unix)]
#[tokio::test]
async fn files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("private.db");
    let b = SqliteBackend::open(&path, fast_tuning()).await.unwrap();
    b.put("/k", b"v".to_vec(), None).await.unwrap();
    let until = time::OffsetDateTime::now_utc() + std::time::Duration::from_secs(60);
    b.count_use("/c", 1, until).await.unwrap();
    for name in [
        "private.db",
        "private.db-wal",
        "private.db-shm",
        "private.db-counters",
        "private.db-counters-wal",
        "private.db-counters-shm",
    ] {
        let mode = std::fs::metadata(dir.path().join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{name} has mode {mode:o}");
    }
    b.close().await;
}

#[tokio::test]
async fn migrations_are_recorded_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    for _ in 0..2 {
        let b = SqliteBackend::open(&path, fast_tuning()).await.unwrap();
        assert_eq!(b.schema_version().await.unwrap(), 2);
        b.close().await;
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let rows: i64 = conn
        .query_row("SELECT COUNT(*) FROM dt_schema_migrations", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(rows, 2);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

/// A database written by a build with schema 1 (items in a rowid table) opens with every
/// item, revision and expiry kept, in a table keyed by the item key alone.
#[tokio::test]
async fn a_schema_1_database_moves_its_items_to_a_table_without_rowid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    let far = 4_102_444_800_000i64; // 2100-01-01, in ms
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE dt_schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL);
             INSERT INTO dt_schema_migrations VALUES (1, 0);
             CREATE TABLE dt_seq (id INTEGER PRIMARY KEY CHECK (id = 1), v INTEGER NOT NULL);
             INSERT INTO dt_seq VALUES (1, 7);
             CREATE TABLE dt_items (key TEXT NOT NULL PRIMARY KEY, value BLOB NOT NULL,
                 revision INTEGER NOT NULL, expires INTEGER);
             CREATE INDEX dt_items_expires ON dt_items (expires) WHERE expires IS NOT NULL;
             CREATE TABLE dt_events (revision INTEGER NOT NULL, idx INTEGER NOT NULL,
                 key TEXT NOT NULL, kind INTEGER NOT NULL, value BLOB NOT NULL, expires INTEGER,
                 at INTEGER NOT NULL, PRIMARY KEY (revision, idx)) WITHOUT ROWID;
             CREATE INDEX dt_events_at ON dt_events (at);",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO dt_items VALUES ('/a', x'6131', 3, NULL), ('/b/c', x'', 5, ?1), ('/z', x'7a', 7, 1)",
            [far],
        )
        .unwrap();
    }
    // No sweep while the test looks at the expired item.
    let tuning = Tuning {
        sweep_every: Duration::from_secs(3600),
        ..fast_tuning()
    };
    let b = SqliteBackend::open(&path, tuning).await.unwrap();
    assert_eq!(b.schema_version().await.unwrap(), 2);
    let a = b.get("/a").await.unwrap().unwrap();
    assert_eq!(
        (a.value.as_slice(), a.revision, a.expires),
        (&b"a1"[..], 3, None)
    );
    let c = b.get("/b/c").await.unwrap().unwrap();
    assert_eq!(c.revision, 5);
    assert_eq!(
        c.expires
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64),
        Some(far)
    );
    // Expired before the move: still expired after it.
    assert!(b.get("/z").await.unwrap().is_none());
    // Revisions go on from where they were.
    assert!(b.put("/d", b"d".to_vec(), None).await.unwrap() > 7);
    let page = b.range("/", None, 10).await.unwrap();
    let keys: Vec<&str> = page.items.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["/a", "/b/c", "/d"]);
    b.close().await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    let sql: String = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'dt_items'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(sql.contains("WITHOUT ROWID"), "{sql}");
    // The expired item was moved too (reads hide it; the sweep removes it).
    let z: (Vec<u8>, i64, i64) = conn
        .query_row(
            "SELECT value, revision, expires FROM dt_items WHERE key = '/z'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(z, (b"z".to_vec(), 7, 1));
    let indexes: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = 'dt_items_expires'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(indexes, 1);
}

#[tokio::test]
async fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n.db");
    SqliteBackend::open(&path, fast_tuning())
        .await
        .unwrap()
        .close()
        .await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO dt_schema_migrations (version, applied_at) VALUES (99, 0)",
        [],
    )
    .unwrap();
    drop(conn);
    match SqliteBackend::open(&path, fast_tuning()).await {
        Err(e) => assert!(e.to_string().contains("newer"), "{e}"),
        Ok(_) => panic!("opened a database with a newer schema"),
    }
}

#[tokio::test]
async fn old_events_are_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let tuning = Tuning {
        keep_events_for: std::time::Duration::from_millis(1),
        ..fast_tuning()
    };
    let b = SqliteBackend::open(&path, tuning).await.unwrap();
    for i in 0..10 {
        b.put(&format!("/p/{i}"), vec![], None).await.unwrap();
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM dt_events", [], |r| r.get(0))
            .unwrap();
        if n == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} events never pruned"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Items are untouched.
    assert_eq!(b.range("/p/", None, 100).await.unwrap().items.len(), 10);
    b.close().await;
}

/// Keys under an unwatched prefix leave no row in the change table, however they are
/// written (single put, atomic write, group commit, delete); the others still do.
#[tokio::test]
async fn unwatched_keys_leave_no_change_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("u.db");
    let tuning = Tuning {
        unwatched_prefixes: vec!["/u/".into()],
        ..fast_tuning()
    };
    let b = SqliteBackend::open(&path, tuning).await.unwrap();
    b.put("/u/a", b"a".to_vec(), None).await.unwrap();
    b.put("/w/a", b"a".to_vec(), None).await.unwrap();
    let ops = |k: &str| dt_store::Op::Put {
        key: k.into(),
        value: vec![],
        expires: None,
    };
    b.atomic_write(vec![], vec![ops("/u/b"), ops("/w/b")])
        .await
        .unwrap();
    b.write_batch(
        vec![
            dt_store::BatchWrite {
                conditions: vec![],
                ops: vec![ops("/u/c"), ops("/w/c")],
            },
            dt_store::BatchWrite {
                conditions: vec![],
                ops: vec![ops("/u/d")],
            },
        ],
        "/u/tail",
        Arc::new(|_: &[Option<i64>], _: Option<&dt_store::Item>| Ok(vec![])),
    )
    .await
    .unwrap();
    b.delete("/u/a", None).await.unwrap();
    b.delete("/w/a", None).await.unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let count = |like: &str| -> i64 {
        conn.query_row(
            "SELECT COUNT(*) FROM dt_events WHERE key LIKE ?1",
            [like],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(count("/u/%"), 0, "unwatched keys in the change table");
    // Put a, b, c and delete a.
    assert_eq!(count("/w/%"), 4, "watched keys' changes");
    assert_eq!(b.range("/u/", None, 10).await.unwrap().items.len(), 3);
    b.close().await;
}

/// Counts live in `NAME-counters`, survive a restart of the process, and the background
/// sweep removes the expired ones from the file.
#[tokio::test]
async fn counters_file_keeps_counts_and_drops_expired_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let now = time::OffsetDateTime::now_utc();
    let b = SqliteBackend::open(&path, fast_tuning()).await.unwrap();
    assert_eq!(
        b.count_use("/c/long", 5, now + std::time::Duration::from_secs(60))
            .await
            .unwrap(),
        Some(1)
    );
    b.count_use("/c/short", 5, now + std::time::Duration::from_millis(200))
        .await
        .unwrap();
    b.close().await;
    let b = SqliteBackend::open(&path, fast_tuning()).await.unwrap();
    assert_eq!(b.uses("/c/long").await.unwrap(), 1, "kept across a restart");
    let rows = || -> Vec<String> {
        let conn = rusqlite::Connection::open(dir.path().join("c.db-counters")).unwrap();
        let mut st = conn
            .prepare("SELECT key FROM dt_counters ORDER BY key")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while rows() != ["/c/long"] {
        assert!(
            std::time::Instant::now() < deadline,
            "the sweep left {:?}",
            rows()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    b.close().await;
}

/// The counters file is never synced, so a machine crash can leave it damaged: the store
/// then starts it afresh instead of refusing to open or to count.
#[tokio::test]
async fn a_damaged_counters_file_is_started_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    let until = time::OffsetDateTime::now_utc() + std::time::Duration::from_secs(60);
    let b = SqliteBackend::open(&path, fast_tuning()).await.unwrap();
    b.put("/kept", b"v".to_vec(), None).await.unwrap();
    b.count_use("/c", 5, until).await.unwrap();
    b.close().await;
    drop(b);
    let counters = dir.path().join("d.db-counters");
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.path().join(format!("d.db-counters{suffix}")));
    }
    std::fs::write(&counters, vec![0x5a; 8192]).unwrap();
    let b = SqliteBackend::open(&path, fast_tuning()).await.unwrap();
    assert_eq!(b.uses("/c").await.unwrap(), 0, "the count is forgotten");
    assert_eq!(b.count_use("/c", 5, until).await.unwrap(), Some(1));
    assert_eq!(
        b.get("/kept").await.unwrap().unwrap().value,
        b"v",
        "the state is untouched"
    );
    b.close().await;
}

/// The expiry sweep deletes and counts every expired item, but writes change rows only for
/// watched keys: expired rate-limit or lookup items (unwatched) leave nothing in the feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_feeds_only_watched_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let b = SqliteBackend::open(&path, unwatched_sweep_tuning())
        .await
        .unwrap();
    sweep_around_an_unwatched_key(b.as_ref()).await.unwrap();
    b.close().await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    let deletes: Vec<(String, i32)> = conn
        .prepare(
            "SELECT key, idx FROM dt_events WHERE revision = (SELECT MAX(revision) FROM dt_events) \
             ORDER BY idx",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let expected: Vec<(String, i32)> = UNWATCHED_SWEEP_DELETES
        .iter()
        .map(|(k, i)| (k.to_string(), *i))
        .collect();
    assert_eq!(deletes, expected);
    let unwatched: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM dt_events WHERE key = '/u/a'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(unwatched, 0);
}
