//! Embedded backend on one SQLite file (WAL mode).
//!
//! rusqlite is synchronous, so statements run on tokio's blocking pool (`spawn_blocking`)
//! with a connection taken from a small pool: one writer connection and a few readers. The
//! exception is a point read ([`Backend::get`]), which first tries a connection of its own
//! on the calling thread ([`Inline`] says why). WAL lets readers proceed while a write is in progress. Writes use
//! `BEGIN IMMEDIATE`, which takes SQLite's single write lock up front, so writers (also
//! those of other processes on the same file) are serialized and commit order equals
//! revision order.
//!
//! Durability: `synchronous=FULL`. The store holds security state (consumed one-time
//! tokens, revocations, issued-certificate records); with `NORMAL` a power loss may roll
//! back transactions that were already reported committed, which could e.g. make a used
//! join token valid again. Write volume is low, so the fsync per commit is affordable.
//!
//! Expiry instants are stored with millisecond precision (rounded down).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};
use time::OffsetDateTime;
use tokio::sync::{Notify, Semaphore};

use crate::common::{
    Applied, Background, Batch, BatchWriter, GroupResult, Grouper, PutRow, Stored, Tx,
    WRITE_RETRIES, Write, apply, apply_batch, backend_msg, check_watchable, closed,
    counter_use_args, group_create, group_write, in_feed, make_page, now_ms, opt_from_ms,
    range_bounds, retry_delay, run_ready, sane, spawn_periodic, validate_key,
};
use crate::hub::{EventSource, Hub, KIND_DELETE, KIND_PUT, StoredEvent, Wanted, kind_from_code};
use crate::{
    Backend, BatchTail, BatchWrite, Condition, Item, Op, Page, Result, StoreError, Tuning, Watcher,
};

const READERS: usize = 4;
/// Connections for point reads on the calling thread ([`Inline`]): as many as a small
/// runtime has worker threads; a read that finds none free goes to the pool.
const INLINE_READERS: usize = 4;
/// Connections to the counters file for counting on the calling thread: two writers at once
/// would only make one of them busy (and go to the pool).
const INLINE_COUNTERS: usize = 1;
/// WAL pages after which a commit checkpoints (SQLite's default is 1000, 4 MiB): large
/// group commits would otherwise checkpoint on nearly every commit, writing the pages they
/// touch again each time.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 10_000;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections to the counters file: counting is one short statement.
const COUNTER_CONNS: usize = 2;

/// The counters file's one table ([`Backend::count_use`]). The file is not versioned: its
/// content is forgettable by design, so a future layout may simply start a new file.
const COUNTERS_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS dt_counters (
    key TEXT NOT NULL PRIMARY KEY,
    n INTEGER NOT NULL,
    expires INTEGER NOT NULL
)";

/// One use: a new or expired count starts at 1, a live one below the limit goes up by one,
/// a full one is left alone and returns no row.
const COUNT_USE_SQL: &str = "INSERT INTO dt_counters (key, n, expires) VALUES (?1, 1, ?3) \
     ON CONFLICT (key) DO UPDATE SET \
         n = CASE WHEN dt_counters.expires <= ?4 THEN 1 ELSE dt_counters.n + 1 END, \
         expires = CASE WHEN dt_counters.expires <= ?4 THEN excluded.expires \
             ELSE dt_counters.expires END \
     WHERE dt_counters.expires <= ?4 OR dt_counters.n < ?2 \
     RETURNING n";

/// Schema migrations, applied in order; the index + 1 is the version.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE dt_seq (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    v INTEGER NOT NULL
);
INSERT INTO dt_seq (id, v) VALUES (1, 0);
CREATE TABLE dt_items (
    key TEXT NOT NULL PRIMARY KEY,
    value BLOB NOT NULL,
    revision INTEGER NOT NULL,
    expires INTEGER
);
CREATE INDEX dt_items_expires ON dt_items (expires) WHERE expires IS NOT NULL;
CREATE TABLE dt_events (
    revision INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    key TEXT NOT NULL,
    kind INTEGER NOT NULL,
    value BLOB NOT NULL,
    expires INTEGER,
    at INTEGER NOT NULL,
    PRIMARY KEY (revision, idx)
) WITHOUT ROWID;
CREATE INDEX dt_events_at ON dt_events (at);
"#,
    // Items keyed by their text primary key alone (WITHOUT ROWID): a rowid table kept each
    // item twice, in the table and in the key's unique index, so every insert and every point
    // read walked two B-trees. Most items are small (lookup indexes, audit events and their
    // index entries), where this halves the work of a write.
    r#"
CREATE TABLE dt_items_by_key (
    key TEXT NOT NULL PRIMARY KEY,
    value BLOB NOT NULL,
    revision INTEGER NOT NULL,
    expires INTEGER
) WITHOUT ROWID;
INSERT INTO dt_items_by_key (key, value, revision, expires)
    SELECT key, value, revision, expires FROM dt_items ORDER BY key;
DROP TABLE dt_items;
ALTER TABLE dt_items_by_key RENAME TO dt_items;
CREATE INDEX dt_items_expires ON dt_items (expires) WHERE expires IS NOT NULL;
"#,
];

/// What opening a database prepares on a blocking thread.
struct Opened {
    writer: Connection,
    /// The revision committed last.
    head: i64,
    counters: Connection,
    inline: Inline,
    counters_inline: Inline,
}

/// The SQLite implementation of [`Backend`].
pub struct SqliteBackend {
    shared: Arc<Shared>,
    hub: Hub,
    bg: Background,
}

struct Shared {
    writer: Arc<Pool>,
    readers: Arc<Pool>,
    /// The counters file ([`Backend::count_use`]).
    counters: Arc<Pool>,
    /// Point reads on the calling thread.
    inline: Inline,
    /// Counting on the calling thread (the counters file is never synced, so a count is a
    /// short write to the OS, like a read in cost).
    counters_inline: Inline,
    wake: Arc<Notify>,
    grouper: Grouper,
    /// [`Tuning::unwatched_prefixes`].
    unwatched: Arc<[String]>,
}

impl SqliteBackend {
    /// Open (creating if needed, mode 0600) the database file at `path`, apply migrations,
    /// and start the watch fan-out and expiry sweeper. The parent directory must exist.
    /// Several instances (or processes) may open the same file.
    pub async fn open(path: &Path, tuning: Tuning) -> Result<Arc<Self>> {
        let tuning = sane(tuning);
        let owned = path.to_owned();
        let counters = counters_path(path);
        let counters_owned = counters.clone();
        let opened = tokio::task::spawn_blocking(move || -> Result<Opened> {
            create_file(&owned)?;
            let mut writer = open_writer(&owned)?;
            enable_wal(&writer)?;
            migrate(&mut writer)?;
            let head = writer
                .query_row("SELECT v FROM dt_seq WHERE id = 1", [], |r| r.get(0))
                .map_err(sq)?;
            let counters = open_counters_file(&counters_owned)?;
            Ok(Opened {
                writer,
                head,
                counters,
                inline: Inline::open(&owned, INLINE_READERS, open_conn)?,
                counters_inline: Inline::open(&counters_owned, INLINE_COUNTERS, open_counters)?,
            })
        })
        .await
        .map_err(|e| backend_msg(format!("sqlite open task failed: {e}")))??;

        let shared = Arc::new(Shared {
            writer: Pool::new(path, 1, Some(opened.writer), open_writer),
            readers: Pool::new(path, READERS, None, open_conn),
            counters: Pool::new(
                &counters,
                COUNTER_CONNS,
                Some(opened.counters),
                open_counters,
            ),
            inline: opened.inline,
            counters_inline: opened.counters_inline,
            wake: Arc::new(Notify::new()),
            grouper: Grouper::default(),
            unwatched: tuning.unwatched_prefixes.clone().into(),
        });
        let bg = Background::new();
        let hub = Hub::start(
            &bg,
            shared.clone(),
            opened.head,
            &tuning,
            shared.wake.clone(),
        );

        let sweeper = shared.clone();
        let keep = tuning.keep_events_for;
        spawn_periodic(&bg, tuning.sweep_every, move || {
            let s = sweeper.clone();
            async move {
                if let Err(e) = s.housekeeping(keep).await {
                    tracing::warn!(error = %e, "dt-store: expiry sweep / change-table pruning failed");
                }
            }
        });
        Ok(Arc::new(SqliteBackend { shared, hub, bg }))
    }
}

impl BatchWriter for Shared {
    fn grouper(&self) -> &Grouper {
        &self.grouper
    }

    async fn write_batch(&self, b: Batch) -> Result<Vec<GroupResult>> {
        Shared::write_batch(self, b).await
    }
}

impl Shared {
    async fn write_batch(&self, b: Batch) -> Result<Vec<GroupResult>> {
        let unwatched = self.unwatched.clone();
        let (results, fed) = self
            .writer
            .run(move |conn| retry_busy(|| write_batch_once(conn, &unwatched, &b)))
            .await?;
        // Only a commit that wrote change rows gives the hub something to read (audit
        // appends and device writes are unwatched: most commits write none).
        if fed {
            self.wake.notify_one();
        }
        Ok(results)
    }

    async fn write(&self, w: Write) -> Result<Applied> {
        let unwatched = self.unwatched.clone();
        let (applied, fed) = self
            .writer
            .run(move |conn| write_blocking(conn, &unwatched, &w))
            .await?;
        if fed {
            self.wake.notify_one();
        }
        Ok(applied)
    }

    /// The periodic sweep and prune. Both first check on a reader whether there is
    /// anything to do, so an idle tick never takes the file's write lock (which would make
    /// writers of other processes wait).
    async fn housekeeping(&self, keep: Duration) -> Result<()> {
        let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
        let now = now_ms();
        let cutoff = now.saturating_sub(keep_ms);
        let (expired, old_events) = self
            .readers
            .run(move |conn| {
                conn.prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM dt_items \
                         WHERE expires IS NOT NULL AND expires <= ?1), \
                     EXISTS (SELECT 1 FROM dt_events WHERE at < ?2)",
                )
                .map_err(sq)?
                .query_row(params![now, cutoff], |r| {
                    Ok((r.get::<_, bool>(0)?, r.get::<_, bool>(1)?))
                })
                .map_err(sq)
            })
            .await?;
        if expired {
            self.write(Write::Sweep).await?;
        }
        // Counts: only when one has expired, so an idle tick takes no write lock. A failure
        // is logged and the pruning below still runs.
        let swept = self
            .counters
            .run(move |conn| {
                let any: bool = conn
                    .prepare_cached("SELECT EXISTS (SELECT 1 FROM dt_counters WHERE expires <= ?1)")
                    .map_err(sq)?
                    .query_row([now], |r| r.get(0))
                    .map_err(sq)?;
                if !any {
                    return Ok(0);
                }
                retry_busy(|| {
                    conn.prepare_cached("DELETE FROM dt_counters WHERE expires <= ?1")
                        .map_err(sq)?
                        .execute([now])
                        .map_err(sq)
                })
            })
            .await;
        if let Err(e) = swept {
            tracing::warn!(error = %e, "dt-store: removing expired counts failed");
        }
        if old_events {
            self.writer
                .run(move |conn| {
                    retry_busy(|| {
                        conn.execute("DELETE FROM dt_events WHERE at < ?1", [cutoff])
                            .map_err(sq)
                    })
                })
                .await?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl EventSource for Shared {
    /// Every value, whatever `_wanted` says: the file is local, so a value costs a copy,
    /// not a transfer.
    async fn events_after(
        &self,
        revision: i64,
        idx: i32,
        limit: usize,
        _wanted: &Wanted,
    ) -> Result<Vec<StoredEvent>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.readers
            .run(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT revision, idx, kind, key, value, expires FROM dt_events \
                         WHERE revision >= ?1 AND (revision > ?1 OR idx > ?2) \
                         ORDER BY revision, idx LIMIT ?3",
                    )
                    .map_err(sq)?;
                let rows = stmt
                    .query_map(params![revision, idx, limit], |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get::<_, i64>(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                        ))
                    })
                    .map_err(sq)?;
                let mut out = Vec::new();
                for row in rows {
                    let (revision, idx, kind, key, value, expires) = row.map_err(sq)?;
                    out.push(StoredEvent {
                        revision,
                        idx,
                        kind: kind_from_code(kind)?,
                        key,
                        value,
                        expires,
                    });
                }
                Ok(out)
            })
            .await
    }
}

#[async_trait::async_trait]
impl Backend for SqliteBackend {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn schema_version(&self) -> Result<i64> {
        self.shared.readers.run(|conn| current_version(conn)).await
    }

    async fn get(&self, key: &str) -> Result<Option<Item>> {
        validate_key(key)?;
        if let Some(found) = self
            .shared
            .inline
            .read(|conn| read_item(conn, key, now_ms()))
        {
            return found;
        }
        let key = key.to_owned();
        self.shared
            .readers
            .run(move |conn| read_item(conn, &key, now_ms()))
            .await
    }

    async fn get_indexed(&self, index_key: &str, prefix: &str) -> Result<Option<Item>> {
        validate_key(index_key)?;
        if let Some(found) = self
            .shared
            .inline
            .read(|conn| read_indexed(conn, index_key, prefix, now_ms()))
        {
            return found;
        }
        let (index_key, prefix) = (index_key.to_owned(), prefix.to_owned());
        self.shared
            .readers
            .run(move |conn| read_indexed(conn, &index_key, &prefix, now_ms()))
            .await
    }

    async fn range(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Page> {
        let b = range_bounds(prefix, start_after, limit)?;
        self.shared
            .readers
            .run(move |conn| {
                let sql = format!(
                    "SELECT key, value, revision, expires FROM dt_items \
                     WHERE key {} ?1 AND {} AND (expires IS NULL OR expires > ?3) \
                     ORDER BY key LIMIT ?4",
                    if b.lower_inclusive { ">=" } else { ">" },
                    if b.upper.is_some() {
                        "key < ?2"
                    } else {
                        "?2 IS NULL"
                    },
                );
                let fetch = i64::try_from(b.limit + 1).unwrap_or(i64::MAX);
                let mut stmt = conn.prepare_cached(&sql).map_err(sq)?;
                let rows = stmt
                    .query_map(params![b.lower, b.upper, now_ms(), fetch], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, Vec<u8>>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, Option<i64>>(3)?,
                        ))
                    })
                    .map_err(sq)?;
                let mut items = Vec::new();
                for row in rows {
                    let (key, value, revision, expires) = row.map_err(sq)?;
                    items.push(Item {
                        key,
                        value,
                        revision,
                        expires: opt_from_ms(expires)?,
                    });
                }
                Ok(make_page(items, b.limit))
            })
            .await
    }

    async fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        expires: Option<OffsetDateTime>,
    ) -> Result<i64> {
        group_create(&self.shared, key, value, expires).await
    }

    async fn put(&self, key: &str, value: Vec<u8>, expires: Option<OffsetDateTime>) -> Result<i64> {
        validate_key(key)?;
        let ops = vec![Op::Put {
            key: key.to_owned(),
            value,
            expires,
        }];
        group_write(
            &self.shared,
            BatchWrite {
                conditions: Vec::new(),
                ops,
            },
        )
        .await
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expires: Option<OffsetDateTime>,
        expected_revision: Option<i64>,
    ) -> Result<i64> {
        let row = PutRow::new(key, value, expires)?;
        Ok(self
            .shared
            .write(Write::Update(row, expected_revision))
            .await?
            .revision)
    }

    async fn delete(&self, key: &str, expected_revision: Option<i64>) -> Result<()> {
        validate_key(key)?;
        self.shared
            .write(Write::Delete(key.to_owned(), expected_revision))
            .await?;
        Ok(())
    }

    async fn atomic_write(&self, conditions: Vec<Condition>, ops: Vec<Op>) -> Result<i64> {
        // Validated first, so a malformed write fails alone and with its own error.
        let Write::Atomic(..) = Write::atomic(conditions.clone(), ops.clone())? else {
            return Err(StoreError::Invalid("not an atomic write".into()));
        };
        group_write(&self.shared, BatchWrite { conditions, ops }).await
    }

    async fn write_batch(
        &self,
        groups: Vec<BatchWrite>,
        tail_key: &str,
        tail: BatchTail,
    ) -> Result<Vec<Result<i64>>> {
        let b = Batch::new(groups, Some((tail_key, tail)))?;
        self.shared.write_batch(b).await
    }

    async fn watch(&self, prefixes: Vec<String>) -> Result<Watcher> {
        check_watchable(&self.shared.unwatched, &prefixes)?;
        self.hub.watch(prefixes).await
    }

    async fn sweep_expired(&self) -> Result<u64> {
        Ok(self.shared.write(Write::Sweep).await?.events)
    }

    async fn count_use(
        &self,
        key: &str,
        limit: u64,
        expires: OffsetDateTime,
    ) -> Result<Option<u64>> {
        let Some((limit, expires)) = counter_use_args(key, limit, expires)? else {
            return Ok(None);
        };
        let count = move |conn: &Connection, key: &str| {
            conn.prepare_cached(COUNT_USE_SQL)
                .map_err(sq)?
                .query_row(params![key, limit, expires, now_ms()], |r| {
                    r.get::<_, i64>(0)
                })
                .optional()
                .map_err(sq)
        };
        if let Some(n) = self.shared.counters_inline.read(|conn| count(conn, key)) {
            return n.map(|n| n.map(|n| u64::try_from(n).unwrap_or(0)));
        }
        let key = key.to_owned();
        self.shared
            .counters
            .run(move |conn| retry_busy(|| count(conn, &key)))
            .await
            .map(|n| n.map(|n| u64::try_from(n).unwrap_or(0)))
    }

    async fn uses(&self, key: &str) -> Result<u64> {
        validate_key(key)?;
        let key = key.to_owned();
        self.shared
            .counters
            .run(move |conn| {
                conn.prepare_cached("SELECT n FROM dt_counters WHERE key = ?1 AND expires > ?2")
                    .map_err(sq)?
                    .query_row(params![key, now_ms()], |r| r.get::<_, i64>(0))
                    .optional()
                    .map_err(sq)
            })
            .await
            .map(|n| n.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
    }

    async fn reset_uses(&self, key: &str) -> Result<()> {
        validate_key(key)?;
        let key = key.to_owned();
        self.shared
            .counters
            .run(move |conn| {
                retry_busy(|| {
                    conn.prepare_cached("DELETE FROM dt_counters WHERE key = ?1")
                        .map_err(sq)?
                        .execute([&key])
                        .map_err(sq)
                })
            })
            .await
            .map(drop)
    }

    async fn close(&self) {
        self.bg.close().await;
        self.shared.writer.close();
        self.shared.readers.close();
        self.shared.counters.close();
        self.shared.inline.close();
        self.shared.counters_inline.close();
    }
}

/// A few connections used one at a time on the blocking pool.
struct Pool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    sem: Arc<Semaphore>,
    closed: AtomicBool,
    /// Opens a connection of this pool's kind.
    open: fn(&Path) -> Result<Connection>,
}

impl Pool {
    fn new(
        path: &Path,
        size: usize,
        first: Option<Connection>,
        open: fn(&Path) -> Result<Connection>,
    ) -> Arc<Self> {
        Arc::new(Pool {
            path: path.to_owned(),
            idle: Mutex::new(first.into_iter().collect()),
            sem: Arc::new(Semaphore::new(size)),
            closed: AtomicBool::new(false),
            open,
        })
    }

    /// Run `f` with a connection on the blocking pool. The permit and the connection travel
    /// with the blocking job, so a cancelled caller never lets two jobs share one connection.
    async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        if self.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        let permit = self
            .sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| closed())?;
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let taken = pool.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let mut conn = match taken {
                Some(c) => c,
                None => (pool.open)(&pool.path)?,
            };
            let result = f(&mut conn);
            if !pool.closed.load(Ordering::Acquire) {
                pool.idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(conn);
            }
            result
        })
        .await
        .map_err(|e| backend_msg(format!("sqlite worker failed: {e}")))?
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.sem.close();
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// The live item at `key`.
fn read_item(conn: &Connection, key: &str, now: i64) -> Result<Option<Item>> {
    let row = conn
        .prepare_cached(
            "SELECT value, revision, expires FROM dt_items \
             WHERE key = ?1 AND (expires IS NULL OR expires > ?2)",
        )
        .map_err(sq)?
        .query_row(params![key, now], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<i64>>(2)?,
            ))
        })
        .optional()
        .map_err(sq)?;
    row.map(|(value, revision, expires)| {
        Ok(Item {
            key: key.to_owned(),
            value,
            revision,
            expires: opt_from_ms(expires)?,
        })
    })
    .transpose()
}

/// [`Backend::get_indexed`]: both reads in one read transaction, so they see one snapshot.
fn read_indexed(
    conn: &Connection,
    index_key: &str,
    prefix: &str,
    now: i64,
) -> Result<Option<Item>> {
    let tx = conn.unchecked_transaction().map_err(sq)?;
    let Some(index) = read_item(&tx, index_key, now)? else {
        return Ok(None);
    };
    let target = std::str::from_utf8(&index.value).map_err(|_| {
        StoreError::Invalid(format!(
            "index entry {index_key:?} does not hold UTF-8 text"
        ))
    })?;
    let key = format!("{prefix}{target}");
    validate_key(&key)?;
    read_item(&tx, &key, now)
}

/// Connections for point reads on the calling thread.
///
/// Why: a point read of a cached page takes SQLite microseconds, but a hand-off to the
/// blocking pool and back costs two thread wake-ups; a device authentication makes three
/// such reads, and the profile showed the hand-offs (waking threads, switching to them) as
/// a sixth of the auth server's CPU. So [`Backend::get`] first tries one of these
/// connections right where it is called, and only when none is free, or SQLite would have
/// to wait (their busy timeout is zero: a WAL reader waits only in rare moments such as a
/// checkpoint resetting the log), does it go to the pool. What can still block the thread
/// is a page of the file that is not in memory (a disk read, as for any memory-mapped
/// file): the price of a read that is otherwise a fraction of the hand-off.
struct Inline {
    idle: Mutex<Vec<Connection>>,
    closed: AtomicBool,
}

impl Inline {
    fn open(path: &Path, n: usize, open: fn(&Path) -> Result<Connection>) -> Result<Self> {
        let mut idle = Vec::with_capacity(n);
        for _ in 0..n {
            let conn = open(path)?;
            conn.busy_timeout(Duration::ZERO).map_err(sq)?;
            idle.push(conn);
        }
        Ok(Inline {
            idle: Mutex::new(idle),
            closed: AtomicBool::new(false),
        })
    }

    /// `f` on a free connection, here and now; `None` when there is none or SQLite is busy
    /// (the caller then reads through the pool).
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Option<Result<T>> {
        let conn = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
        let result = f(&conn);
        // A connection left inside a transaction (a failed rollback) would read an old
        // snapshot from then on: drop it instead of keeping it.
        if !self.closed.load(Ordering::Acquire) && conn.is_autocommit() {
            self.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn);
        }
        match result {
            Err(e) if is_busy(&e) => None,
            other => Some(other),
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

fn sq(e: rusqlite::Error) -> StoreError {
    StoreError::backend(e)
}

fn sqlite_error(e: &StoreError) -> Option<&rusqlite::Error> {
    match e {
        StoreError::Backend(inner) => inner.downcast_ref::<rusqlite::Error>(),
        _ => None,
    }
}

fn code_of(e: &StoreError) -> Option<ErrorCode> {
    sqlite_error(e)?.sqlite_error_code()
}

fn is_unique_violation(e: &StoreError) -> bool {
    matches!(
        sqlite_error(e).and_then(rusqlite::Error::sqlite_extended_error_code),
        Some(rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
    )
}

fn is_busy(e: &StoreError) -> bool {
    matches!(
        code_of(e),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

fn retry_busy<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let mut attempt = 0;
    loop {
        match f() {
            Err(e) if attempt < WRITE_RETRIES && is_busy(&e) => {
                attempt += 1;
                std::thread::sleep(retry_delay(attempt));
            }
            other => return other,
        }
    }
}

/// The write's outcome, and whether it wrote change-feed rows.
fn write_blocking(
    conn: &mut Connection,
    unwatched: &[String],
    w: &Write,
) -> Result<(Applied, bool)> {
    let result = retry_busy(|| write_once(conn, unwatched, w));
    match result {
        Err(e) if is_unique_violation(&e) => Err(w.conflict_error().unwrap_or(e)),
        other => other,
    }
}

fn write_once(conn: &mut Connection, unwatched: &[String], w: &Write) -> Result<(Applied, bool)> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sq)?;
    let mut t = SqliteTx::new(&tx, unwatched);
    let applied = run_ready(apply(&mut t, w))
        .ok_or_else(|| backend_msg("sqlite transaction unexpectedly suspended"))??;
    let fed = t.fed;
    if applied.commit {
        tx.commit().map_err(sq)?;
    } else {
        tx.rollback().map_err(sq)?;
    }
    Ok((applied, fed && applied.commit))
}

/// Each group's result, and whether the transaction wrote change-feed rows.
fn write_batch_once(
    conn: &mut Connection,
    unwatched: &[String],
    b: &Batch,
) -> Result<(Vec<GroupResult>, bool)> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sq)?;
    let mut t = SqliteTx::new(&tx, unwatched);
    let results = run_ready(apply_batch(&mut t, b))
        .ok_or_else(|| backend_msg("sqlite transaction unexpectedly suspended"))??;
    let fed = t.fed;
    tx.commit().map_err(sq)?;
    Ok((results, fed))
}

const PUT_ITEM_SQL: &str = "INSERT INTO dt_items (key, value, revision, expires) \
     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
     revision = excluded.revision, expires = excluded.expires";

const PUT_EVENT_SQL: &str = "INSERT INTO dt_events (revision, idx, key, kind, value, expires, at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

struct SqliteTx<'a> {
    tx: &'a rusqlite::Transaction<'a>,
    unwatched: &'a [String],
    /// A change-feed row was written: the hub has something to read after the commit.
    fed: bool,
}

impl<'a> SqliteTx<'a> {
    fn new(tx: &'a rusqlite::Transaction<'a>, unwatched: &'a [String]) -> Self {
        SqliteTx {
            tx,
            unwatched,
            fed: false,
        }
    }

    fn event(
        &mut self,
        (revision, idx): (i64, i32),
        kind: i16,
        key: &str,
        value: &[u8],
        expires: Option<i64>,
        at: i64,
    ) -> Result<()> {
        self.tx
            .prepare_cached(PUT_EVENT_SQL)
            .map_err(sq)?
            .execute(params![revision, idx, key, kind, value, expires, at])
            .map_err(sq)?;
        self.fed = true;
        Ok(())
    }
}

impl Tx for SqliteTx<'_> {
    async fn next_revision(&mut self) -> Result<i64> {
        self.tx
            .prepare_cached("UPDATE dt_seq SET v = v + 1 WHERE id = 1 RETURNING v")
            .map_err(sq)?
            .query_row([], |r| r.get(0))
            .map_err(sq)
    }

    async fn next_revisions(&mut self, n: i64) -> Result<i64> {
        self.tx
            .prepare_cached("UPDATE dt_seq SET v = v + ?1 WHERE id = 1 RETURNING v")
            .map_err(sq)?
            .query_row([n], |r| r.get(0))
            .map_err(sq)
    }

    async fn get_item(&mut self, key: &str, now: i64) -> Result<Option<Item>> {
        read_item(self.tx, key, now)
    }

    async fn lookup(&mut self, key: &str) -> Result<Option<Stored>> {
        self.tx
            .prepare_cached("SELECT revision, expires FROM dt_items WHERE key = ?1")
            .map_err(sq)?
            .query_row([key], |r| {
                Ok(Stored {
                    revision: r.get(0)?,
                    expires: r.get(1)?,
                })
            })
            .optional()
            .map_err(sq)
    }

    async fn put(&mut self, revision: i64, idx: i32, row: &PutRow, at: i64) -> Result<()> {
        self.tx
            .prepare_cached(PUT_ITEM_SQL)
            .map_err(sq)?
            .execute(params![row.key, row.value, revision, row.expires])
            .map_err(sq)?;
        if !in_feed(self.unwatched, &row.key) {
            return Ok(());
        }
        self.event(
            (revision, idx),
            KIND_PUT,
            &row.key,
            &row.value,
            row.expires,
            at,
        )
    }

    /// Each statement prepared once for all the rows (not looked up in the cache per row).
    async fn put_many(&mut self, rows: &[(i64, i32, &PutRow)], at: i64) -> Result<()> {
        let tx = self.tx;
        let mut item = tx.prepare_cached(PUT_ITEM_SQL).map_err(sq)?;
        let mut event = tx.prepare_cached(PUT_EVENT_SQL).map_err(sq)?;
        for (revision, idx, row) in rows {
            item.execute(params![row.key, row.value, revision, row.expires])
                .map_err(sq)?;
            if !in_feed(self.unwatched, &row.key) {
                continue;
            }
            event
                .execute(params![
                    revision,
                    idx,
                    row.key,
                    KIND_PUT,
                    row.value,
                    row.expires,
                    at
                ])
                .map_err(sq)?;
            self.fed = true;
        }
        Ok(())
    }

    async fn remove(&mut self, revision: i64, idx: i32, key: &str, at: i64) -> Result<bool> {
        let n = self
            .tx
            .prepare_cached("DELETE FROM dt_items WHERE key = ?1")
            .map_err(sq)?
            .execute([key])
            .map_err(sq)?;
        if n == 0 {
            return Ok(false);
        }
        if in_feed(self.unwatched, key) {
            self.event((revision, idx), KIND_DELETE, key, &[], None, at)?;
        }
        Ok(true)
    }

    async fn sweep(&mut self, revision: i64, now: i64) -> Result<u64> {
        let mut keys = {
            let mut stmt = self
                .tx
                .prepare_cached("DELETE FROM dt_items WHERE expires IS NOT NULL AND expires <= ?1 RETURNING key")
                .map_err(sq)?;
            let rows = stmt
                .query_map([now], |r| r.get::<_, String>(0))
                .map_err(sq)?;
            rows.collect::<rusqlite::Result<Vec<String>>>()
                .map_err(sq)?
        };
        keys.sort();
        // Change rows for watched keys only (expired rate-limit and lookup items are not).
        let unwatched = self.unwatched;
        for (i, key) in keys.iter().filter(|k| in_feed(unwatched, k)).enumerate() {
            let idx =
                i32::try_from(i).map_err(|_| backend_msg("too many expired items in one sweep"))?;
            self.event((revision, idx), KIND_DELETE, key, &[], None, now)?;
        }
        Ok(u64::try_from(keys.len()).unwrap_or(u64::MAX))
    }
}

/// Create the database file with mode 0600 if it does not exist yet. SQLite gives the
/// `-wal` and `-shm` files the same mode.
fn create_file(path: &Path) -> Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true).write(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
        .map(drop)
        .map_err(|e| backend_msg(format!("cannot open database file {}: {e}", path.display())))
}

/// Bytes of the file every connection reads through a memory map.
const MMAP_BYTES: i64 = 256 * 1024 * 1024;

fn open_conn(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sq)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sq)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sq)?;
    // Reads through a memory map: with SQLite's default (no map) a busy auth server spent
    // a tenth of its time copying pages in with pread. Only a cache: what is durable, and
    // when, does not change.
    conn.pragma_update(None, "mmap_size", MMAP_BYTES)
        .map_err(sq)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// The writer connection, with its checkpoint interval (see the constant).
///
/// Its page cache stays at SQLite's default (2 MiB): unchanged pages within the memory map
/// (`MMAP_BYTES`) are read through it anyway, and every commit walks the cache
/// (`pcache1Truncate` at the end of the transaction), which a 64 MiB cache made 3 % of a
/// device authentication's server time and slowed bulk import by a tenth.
fn open_writer(path: &Path) -> Result<Connection> {
    let conn = open_conn(path)?;
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)
        .map_err(sq)?;
    Ok(conn)
}

/// The counters file beside the database: `store.db` keeps its counters in
/// `store.db-counters`. A file of its own so that counting never waits for the database's
/// write lock or its fsync: its commits are not synced (`synchronous=OFF`), which a crash
/// of the process survives and a crash of the machine may not: counts are forgettable.
fn counters_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-counters");
    PathBuf::from(name)
}

/// Open (creating) the counters file. The file is never synced, so a crash of the machine
/// can leave it damaged, not only behind: a damaged one is replaced by an empty one (its
/// counts are forgettable by design) instead of keeping the server from starting or
/// refusing every rate-limited operation.
fn open_counters_file(path: &Path) -> Result<Connection> {
    match try_open_counters(path) {
        Err(e) if is_damaged(&e) => {
            tracing::warn!(
                file = %path.display(),
                error = %e,
                "dt-store: the rate-limit counters file is damaged; starting it afresh (the current windows' counts are lost)"
            );
            for suffix in ["", "-wal", "-shm"] {
                let mut name = path.as_os_str().to_owned();
                name.push(suffix);
                match std::fs::remove_file(&name) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(backend_msg(format!(
                            "cannot remove the damaged counters file {}: {e}",
                            PathBuf::from(name).display()
                        )));
                    }
                }
            }
            try_open_counters(path)
        }
        other => other,
    }
}

fn try_open_counters(path: &Path) -> Result<Connection> {
    create_file(path)?;
    let conn = open_counters(path)?;
    enable_wal(&conn)?;
    retry_busy(|| conn.execute_batch(COUNTERS_SCHEMA).map_err(sq))?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(sq)?;
    if check != "ok" {
        return Err(sq(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            Some(check),
        )));
    }
    Ok(conn)
}

fn is_damaged(e: &StoreError) -> bool {
    matches!(
        code_of(e),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

fn open_counters(path: &Path) -> Result<Connection> {
    let conn = open_conn(path)?;
    conn.pragma_update(None, "synchronous", "OFF").map_err(sq)?;
    Ok(conn)
}

fn enable_wal(conn: &Connection) -> Result<()> {
    let mode: String = retry_busy(|| {
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(sq)
    })?;
    if mode.eq_ignore_ascii_case("wal") {
        Ok(())
    } else {
        Err(backend_msg(format!(
            "could not enable WAL mode (journal_mode is {mode})"
        )))
    }
}

fn current_version(conn: &Connection) -> Result<i64> {
    conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM dt_schema_migrations",
        [],
        |r| r.get(0),
    )
    .map_err(sq)
}

fn latest_version() -> i64 {
    i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX)
}

/// Apply pending migrations in one `BEGIN IMMEDIATE` transaction (which excludes other
/// processes migrating at the same time).
fn migrate(conn: &mut Connection) -> Result<i64> {
    retry_busy(|| {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sq)?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS dt_schema_migrations (\
                 version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
        )
        .map_err(sq)?;
        let current = current_version(&tx)?;
        if current > latest_version() {
            return Err(backend_msg(format!(
                "database schema version {current} is newer than this build supports ({})",
                latest_version()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate() {
            let version = i64::try_from(i + 1).unwrap_or(i64::MAX);
            if version <= current {
                continue;
            }
            tx.execute_batch(sql).map_err(sq)?;
            tx.execute(
                "INSERT INTO dt_schema_migrations (version, applied_at) VALUES (?1, ?2)",
                params![version, now_ms()],
            )
            .map_err(sq)?;
        }
        tx.commit().map_err(sq)?;
        Ok(latest_version())
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn sqlite_failure(code: std::ffi::c_int) -> StoreError {
        sq(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(code),
            None,
        ))
    }

    fn inline(n: usize) -> (tempfile::TempDir, Inline) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.db");
        create_file(&path).unwrap();
        let inline = Inline::open(&path, n, open_conn).unwrap();
        (dir, inline)
    }

    #[test]
    fn an_inline_read_answers_here_unless_sqlite_is_busy() {
        let (_dir, inline) = inline(1);
        let answer = inline.read(|c| {
            c.query_row("SELECT 7", [], |r| r.get::<_, i64>(0))
                .map_err(sq)
        });
        assert_eq!(answer.unwrap().unwrap(), 7);
        // Busy: no answer here, so the caller reads through the pool (which waits).
        assert!(
            inline
                .read(|_| -> Result<()> { Err(sqlite_failure(rusqlite::ffi::SQLITE_BUSY)) })
                .is_none()
        );
        assert!(
            inline
                .read(|_| -> Result<()> { Err(sqlite_failure(rusqlite::ffi::SQLITE_LOCKED)) })
                .is_none()
        );
        // Any other error is the answer.
        let other =
            inline.read(|_| -> Result<()> { Err(sqlite_failure(rusqlite::ffi::SQLITE_CORRUPT)) });
        assert!(matches!(other, Some(Err(StoreError::Backend(_)))));
        // The connection went back after each read, errors included.
        assert_eq!(inline.idle.lock().unwrap().len(), 1);
    }

    #[test]
    fn an_inline_read_with_every_connection_taken_goes_to_the_pool() {
        let (_dir, inline) = inline(1);
        let nested = inline.read(|_| Ok(inline.read(|_| Ok(())).is_none()));
        assert!(nested.unwrap().unwrap(), "a second read found a connection");
        inline.close();
        assert!(
            inline.read(|_| Ok(())).is_none(),
            "a closed store reads inline"
        );
    }
}
