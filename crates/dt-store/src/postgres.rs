//! Shared backend on PostgreSQL, for several auth servers forming one cluster.
//!
//! Every write transaction starts with `UPDATE dt_seq SET v = v + 1 RETURNING v`: the row
//! lock serializes writers (across processes too), so commit order equals revision order
//! and a watcher reading "events after my cursor" can never skip one. A statement-level
//! trigger on `dt_events` issues `NOTIFY dt_store_events` inside the writing transaction;
//! each instance keeps one extra connection in `LISTEN` (reconnected with backoff) and
//! also polls every `Tuning::poll_every` in case a notification is lost.
//!
//! Connections: a small pool of clients (each with its statements prepared once) behind a
//! semaphore, plus the listen connection. TLS follows libpq's `sslmode` and `sslrootcert`
//! in the connection string ([`crate::pg_tls`]); every pooled connection has a
//! `statement_timeout` (default [`DEFAULT_STATEMENT_TIMEOUT`]), so a stuck query or lock
//! wait fails instead of holding a request and a pool slot forever.
//!
//! Keys are stored as `text COLLATE "C"`, so ordering is bytewise like SQLite's and Rust's,
//! whatever the database's default collation. Expiry instants are stored with millisecond
//! precision (rounded down) and compared with this process's clock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use time::OffsetDateTime;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, Config, IsolationLevel, Row, Statement};

use crate::common::{
    Applied, Background, Batch, BatchWriter, GroupResult, Grouper, PutRow, Stored, Tx,
    WRITE_RETRIES, Write, apply, apply_batch, backend_msg, check_watchable, closed,
    counter_use_args, group_create, group_write, in_feed, make_page, now_ms, opt_from_ms,
    range_bounds, retry_delay, sane, spawn_periodic, stopped, validate_key,
};
use crate::hub::{EventSource, Hub, StoredEvent, Wanted, kind_from_code};
use crate::pg_tls::{MakeRustls, SslMode};
use crate::{
    Backend, BatchTail, BatchWrite, Condition, Item, Op, Page, Result, StoreError, Tuning, Watcher,
};

/// `statement_timeout` of every pooled connection unless configured.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Pooled connections per backend instance (the LISTEN connection is extra).
const POOL_SIZE: usize = 4;
/// `pg_advisory_xact_lock` key held while migrating ("dtstore" + 1).
const MIGRATION_LOCK: i64 = 0x6474_7374_6f72_6501;
const CHANNEL: &str = "dt_store_events";
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Schema migrations, applied in order; the index + 1 is the version.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE dt_seq (
    id SMALLINT PRIMARY KEY CHECK (id = 1),
    v BIGINT NOT NULL
);
INSERT INTO dt_seq (id, v) VALUES (1, 0);
CREATE TABLE dt_items (
    key TEXT COLLATE "C" PRIMARY KEY,
    value BYTEA NOT NULL,
    revision BIGINT NOT NULL,
    expires BIGINT
);
CREATE INDEX dt_items_expires ON dt_items (expires) WHERE expires IS NOT NULL;
CREATE TABLE dt_events (
    revision BIGINT NOT NULL,
    idx INTEGER NOT NULL,
    key TEXT COLLATE "C" NOT NULL,
    kind SMALLINT NOT NULL,
    value BYTEA NOT NULL,
    expires BIGINT,
    at BIGINT NOT NULL,
    PRIMARY KEY (revision, idx)
);
CREATE INDEX dt_events_at ON dt_events (at);
CREATE FUNCTION dt_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('dt_store_events', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER dt_events_notify AFTER INSERT ON dt_events
    FOR EACH STATEMENT EXECUTE FUNCTION dt_events_notify();
"#,
    r#"
-- Counters (Backend::count_use): UNLOGGED, so counting writes no WAL and its commit waits
-- for no flush. PostgreSQL empties the table after a crash, and standbys do not have it:
-- counts are forgettable by design.
CREATE UNLOGGED TABLE dt_counters (
    key TEXT COLLATE "C" PRIMARY KEY,
    n BIGINT NOT NULL,
    expires BIGINT NOT NULL
);
CREATE INDEX dt_counters_expires ON dt_counters (expires);
-- Rows up to a page (8160 bytes) are stored as they are. PostgreSQL's default compresses
-- every row over about 2 KiB, and a device document (with its collected-data history) is
-- about 3 KiB, written at every authentication and read back by every server's change feed.
ALTER TABLE dt_items SET (toast_tuple_target = 8160);
ALTER TABLE dt_events SET (toast_tuple_target = 8160);
"#,
];

/// The PostgreSQL implementation of [`Backend`].
pub struct PostgresBackend {
    shared: Arc<Shared>,
    hub: Hub,
    bg: Background,
}

struct Shared {
    pool: Arc<Pool>,
    wake: Arc<Notify>,
    grouper: Grouper,
    /// [`Tuning::unwatched_prefixes`].
    unwatched: Arc<[String]>,
}

impl PostgresBackend {
    /// Connect with a libpq-style connection string (e.g.
    /// `host=127.0.0.1 user=postgres dbname=devtrust`), apply migrations (safe when several
    /// processes start at once), and start the LISTEN connection, watch fan-out and expiry
    /// sweeper.
    pub async fn connect(conn: &str, tuning: Tuning) -> Result<Arc<Self>> {
        Self::connect_with(conn, tuning, DEFAULT_STATEMENT_TIMEOUT).await
    }

    /// A run-time setting (`current_setting`) as a pooled connection has it: what
    /// [`SESSION_SQL`] and `statement_timeout` set is checked through this.
    pub async fn session_setting(&self, name: &str) -> Result<String> {
        let mut lease = self.shared.pool.get().await?;
        let c = lease.conn_mut()?;
        c.client
            .query_one("SELECT current_setting($1)", &[&name])
            .await
            .map_err(pg)?
            .try_get(0)
            .map_err(pg)
    }

    /// [`connect`](Self::connect) with the `statement_timeout` of pooled connections.
    pub async fn connect_with(
        conn: &str,
        tuning: Tuning,
        statement_timeout: Duration,
    ) -> Result<Arc<Self>> {
        let tuning = sane(tuning);
        let split = crate::pg_tls::split_conn(conn)?;
        let mut config: Config = split.rest.parse().map_err(|e| {
            StoreError::Invalid(format!("invalid PostgreSQL connection string: {e}"))
        })?;
        config.ssl_mode(crate::pg_tls::pg_ssl_mode(split.mode));
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let mut listen_config = config.clone();
        if config.get_application_name().is_none() {
            config.application_name("devtrust dt-store");
            listen_config.application_name("devtrust dt-store listen");
        }
        let tls = MakeRustls::new(split.mode, split.root_cert)?;
        let config = Target {
            config,
            tls: tls.clone(),
            mode: split.mode,
            statement_timeout: Some(statement_timeout),
        };
        let listen_config = Target {
            config: listen_config,
            tls,
            mode: split.mode,
            statement_timeout: None,
        };

        let mut client = open_client(&config).await?;
        migrate(&mut client).await?;
        let st = Stmts::prepare(&client).await?;
        let head: i64 = client
            .query_one(&st.head, &[])
            .await
            .map_err(pg)?
            .try_get(0)
            .map_err(pg)?;

        let shared = Arc::new(Shared {
            pool: Arc::new(Pool {
                config,
                idle: Mutex::new(vec![PgConn { client, st }]),
                sem: Arc::new(Semaphore::new(POOL_SIZE)),
                closed: AtomicBool::new(false),
            }),
            wake: Arc::new(Notify::new()),
            grouper: Grouper::default(),
            unwatched: tuning.unwatched_prefixes.clone().into(),
        });
        let bg = Background::new();
        let hub = Hub::start(&bg, shared.clone(), head, &tuning, shared.wake.clone());
        bg.spawn(listen_loop(
            listen_config,
            shared.wake.clone(),
            bg.subscribe(),
        ));

        let sweeper = shared.clone();
        let keep = tuning.keep_events_for;
        spawn_periodic(&bg, tuning.sweep_every, move || {
            let s = sweeper.clone();
            async move {
                if let Err(e) = s.sweep().await {
                    tracing::warn!(error = %e, "dt-store: expiry sweep failed");
                }
                if let Err(e) = s.prune(keep).await {
                    tracing::warn!(error = %e, "dt-store: pruning the change table failed");
                }
                if let Err(e) = s.sweep_counters().await {
                    tracing::warn!(error = %e, "dt-store: removing expired counts failed");
                }
            }
        });
        Ok(Arc::new(PostgresBackend { shared, hub, bg }))
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
    async fn write(&self, w: Write) -> Result<Applied> {
        let mut attempt = 0;
        loop {
            match self.write_once(&w).await {
                Ok((applied, fed)) => {
                    if fed {
                        self.wake.notify_one();
                    }
                    return Ok(applied);
                }
                Err(e) if attempt < WRITE_RETRIES && is_retryable(&e) => {
                    attempt += 1;
                    tokio::time::sleep(retry_delay(attempt)).await;
                }
                Err(e) if sql_state(&e) == Some(SqlState::UNIQUE_VIOLATION) => {
                    return Err(w.conflict_error().unwrap_or(e));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn write_batch(&self, b: Batch) -> Result<Vec<GroupResult>> {
        let mut attempt = 0;
        loop {
            match self.write_batch_once(&b).await {
                Ok((results, fed)) => {
                    // Only a commit that wrote change rows gives the hub something to read
                    // (audit appends and device writes are unwatched: most write none).
                    // Other servers hear of it by the rows' NOTIFY.
                    if fed {
                        self.wake.notify_one();
                    }
                    return Ok(results);
                }
                Err(e) if attempt < WRITE_RETRIES && is_retryable(&e) => {
                    attempt += 1;
                    tokio::time::sleep(retry_delay(attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Each group's result, and whether the transaction wrote change-feed rows.
    async fn write_batch_once(&self, b: &Batch) -> Result<(Vec<GroupResult>, bool)> {
        let mut lease = self.pool.get().await?;
        let PgConn { client, st } = lease.conn_mut()?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::ReadCommitted)
            .start()
            .await
            .map_err(pg)?;
        let mut t = PgTx::new(&tx, st, &self.unwatched);
        let results = apply_batch(&mut t, b).await?;
        let fed = t.fed;
        tx.commit().await.map_err(pg)?;
        Ok((results, fed))
    }

    /// The write's outcome, and whether it committed change-feed rows.
    async fn write_once(&self, w: &Write) -> Result<(Applied, bool)> {
        let mut lease = self.pool.get().await?;
        let PgConn { client, st } = lease.conn_mut()?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::ReadCommitted)
            .start()
            .await
            .map_err(pg)?;
        let mut t = PgTx::new(&tx, st, &self.unwatched);
        let applied = apply(&mut t, w).await?;
        let fed = t.fed;
        if applied.commit {
            tx.commit().await.map_err(pg)?;
        } else {
            tx.rollback().await.map_err(pg)?;
        }
        Ok((applied, fed && applied.commit))
    }

    /// Sweep only when something has expired, so idle instances do not contend for the
    /// sequence lock.
    async fn sweep(&self) -> Result<u64> {
        let any = {
            let mut lease = self.pool.get().await?;
            let c = lease.conn_mut()?;
            let row = c
                .client
                .query_one(&c.st.any_expired, &[&now_ms()])
                .await
                .map_err(pg)?;
            row.try_get::<_, bool>(0).map_err(pg)?
        };
        if !any {
            return Ok(0);
        }
        Ok(self.write(Write::Sweep).await?.events)
    }

    async fn sweep_counters(&self) -> Result<()> {
        let mut lease = self.pool.get().await?;
        let c = lease.conn_mut()?;
        c.client
            .execute(&c.st.sweep_counters, &[&now_ms()])
            .await
            .map_err(pg)?;
        Ok(())
    }

    async fn prune(&self, keep: Duration) -> Result<()> {
        let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms().saturating_sub(keep_ms);
        let mut lease = self.pool.get().await?;
        let c = lease.conn_mut()?;
        c.client
            .execute(&c.st.prune, &[&cutoff])
            .await
            .map_err(pg)?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl EventSource for Shared {
    /// Values only where `wanted` asks for them: the others are left in the database.
    async fn events_after(
        &self,
        revision: i64,
        idx: i32,
        limit: usize,
        wanted: &Wanted,
    ) -> Result<Vec<StoredEvent>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (all, prefixes): (bool, &[String]) = match wanted {
            Wanted::All => (true, &[]),
            Wanted::Under(p) => (false, p),
        };
        let mut lease = self.pool.get().await?;
        let c = lease.conn_mut()?;
        let rows = c
            .client
            .query(
                &c.st.events_after,
                &[&revision, &idx, &limit, &all, &prefixes],
            )
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|r| {
                Ok(StoredEvent {
                    revision: r.try_get(0).map_err(pg)?,
                    idx: r.try_get(1).map_err(pg)?,
                    kind: kind_from_code(i64::from(r.try_get::<_, i16>(2).map_err(pg)?))?,
                    key: r.try_get(3).map_err(pg)?,
                    value: r
                        .try_get::<_, Option<Vec<u8>>>(4)
                        .map_err(pg)?
                        .unwrap_or_default(),
                    expires: r.try_get(5).map_err(pg)?,
                })
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl Backend for PostgresBackend {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn schema_version(&self) -> Result<i64> {
        let mut lease = self.shared.pool.get().await?;
        let c = lease.conn_mut()?;
        c.client
            .query_one(&c.st.version, &[])
            .await
            .map_err(pg)?
            .try_get(0)
            .map_err(pg)
    }

    async fn get(&self, key: &str) -> Result<Option<Item>> {
        validate_key(key)?;
        let mut lease = self.shared.pool.get().await?;
        let c = lease.conn_mut()?;
        let row = c
            .client
            .query_opt(&c.st.get, &[&key, &now_ms()])
            .await
            .map_err(pg)?;
        row.map(|r| {
            Ok(Item {
                key: key.to_owned(),
                value: r.try_get(0).map_err(pg)?,
                revision: r.try_get(1).map_err(pg)?,
                expires: opt_from_ms(r.try_get(2).map_err(pg)?)?,
            })
        })
        .transpose()
    }

    async fn get_indexed(&self, index_key: &str, prefix: &str) -> Result<Option<Item>> {
        validate_key(index_key)?;
        let mut lease = self.shared.pool.get().await?;
        let c = lease.conn_mut()?;
        let row = c
            .client
            .query_opt(&c.st.get_indexed, &[&index_key, &prefix, &now_ms()])
            .await
            .map_err(|e| {
                if e.code() == Some(&SqlState::CHARACTER_NOT_IN_REPERTOIRE) {
                    StoreError::Invalid(format!(
                        "index entry {index_key:?} does not hold UTF-8 text"
                    ))
                } else {
                    pg(e)
                }
            })?;
        row.map(|r| {
            Ok(Item {
                key: r.try_get(3).map_err(pg)?,
                value: r.try_get(0).map_err(pg)?,
                revision: r.try_get(1).map_err(pg)?,
                expires: opt_from_ms(r.try_get(2).map_err(pg)?)?,
            })
        })
        .transpose()
    }

    async fn range(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Page> {
        let b = range_bounds(prefix, start_after, limit)?;
        let fetch = i64::try_from(b.limit + 1).unwrap_or(i64::MAX);
        let mut lease = self.shared.pool.get().await?;
        let c = lease.conn_mut()?;
        let stmt = &c.st.range[usize::from(b.lower_inclusive) * 2 + usize::from(b.upper.is_some())];
        let rows = c
            .client
            .query(stmt, &[&b.lower, &b.upper, &now_ms(), &fetch])
            .await
            .map_err(pg)?;
        let items = rows.iter().map(item_from_row).collect::<Result<Vec<_>>>()?;
        Ok(make_page(items, b.limit))
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
        let mut lease = self.shared.pool.get().await?;
        let c = lease.conn_mut()?;
        let row = c
            .client
            .query_opt(&c.st.count_use, &[&key, &limit, &expires, &now_ms()])
            .await
            .map_err(pg)?;
        row.map(|r| r.try_get::<_, i64>(0).map_err(pg))
            .transpose()
            .map(|n| n.map(|n| u64::try_from(n).unwrap_or(0)))
    }

    async fn uses(&self, key: &str) -> Result<u64> {
        validate_key(key)?;
        let mut lease = self.shared.pool.get().await?;
        let c = lease.conn_mut()?;
        let row = c
            .client
            .query_opt(&c.st.uses, &[&key, &now_ms()])
            .await
            .map_err(pg)?;
        Ok(match row {
            Some(r) => u64::try_from(r.try_get::<_, i64>(0).map_err(pg)?).unwrap_or(0),
            None => 0,
        })
    }

    async fn reset_uses(&self, key: &str) -> Result<()> {
        validate_key(key)?;
        let mut lease = self.shared.pool.get().await?;
        let c = lease.conn_mut()?;
        c.client
            .execute(&c.st.reset_uses, &[&key])
            .await
            .map_err(pg)?;
        Ok(())
    }

    async fn close(&self) {
        self.bg.close().await;
        self.shared.pool.close();
    }
}

fn item_from_row(r: &Row) -> Result<Item> {
    Ok(Item {
        key: r.try_get(0).map_err(pg)?,
        value: r.try_get(1).map_err(pg)?,
        revision: r.try_get(2).map_err(pg)?,
        expires: opt_from_ms(r.try_get(3).map_err(pg)?)?,
    })
}

/// A tokio-postgres error whose `Display` includes the server's message (the driver's own
/// `Display` says only "db error").
#[derive(Debug)]
struct PgError(tokio_postgres::Error);

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        if let Some(cause) = std::error::Error::source(&self.0) {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PgError {}

fn pg(e: tokio_postgres::Error) -> StoreError {
    StoreError::backend(PgError(e))
}

fn sql_state(e: &StoreError) -> Option<SqlState> {
    match e {
        StoreError::Backend(inner) => inner.downcast_ref::<PgError>()?.0.code().cloned(),
        _ => None,
    }
}

/// Conflicts worth retrying: a fresh attempt re-evaluates every condition, so a unique
/// violation turns into the proper `AlreadyExists` / `ConditionFailed` if it persists.
fn is_retryable(e: &StoreError) -> bool {
    matches!(
        sql_state(e),
        Some(
            SqlState::T_R_SERIALIZATION_FAILURE
                | SqlState::T_R_DEADLOCK_DETECTED
                | SqlState::UNIQUE_VIOLATION
        )
    )
}

struct PgTx<'a> {
    tx: &'a tokio_postgres::Transaction<'a>,
    st: &'a Stmts,
    unwatched: &'a [String],
    /// A change-feed row may have been written: the hub has something to read after the
    /// commit.
    fed: bool,
}

impl<'a> PgTx<'a> {
    fn new(
        tx: &'a tokio_postgres::Transaction<'a>,
        st: &'a Stmts,
        unwatched: &'a [String],
    ) -> Self {
        PgTx {
            tx,
            st,
            unwatched,
            fed: false,
        }
    }
}

impl Tx for PgTx<'_> {
    async fn next_revision(&mut self) -> Result<i64> {
        self.tx
            .query_one(&self.st.next_rev, &[])
            .await
            .map_err(pg)?
            .try_get(0)
            .map_err(pg)
    }

    async fn lookup(&mut self, key: &str) -> Result<Option<Stored>> {
        let row = self
            .tx
            .query_opt(&self.st.lookup, &[&key])
            .await
            .map_err(pg)?;
        row.map(|r| {
            Ok(Stored {
                revision: r.try_get(0).map_err(pg)?,
                expires: r.try_get(1).map_err(pg)?,
            })
        })
        .transpose()
    }

    async fn put(&mut self, revision: i64, idx: i32, row: &PutRow, at: i64) -> Result<()> {
        if in_feed(self.unwatched, &row.key) {
            self.fed = true;
            self.tx
                .execute(
                    &self.st.put,
                    &[&row.key, &row.value, &revision, &row.expires, &idx, &at],
                )
                .await
                .map_err(pg)?;
        } else {
            self.tx
                .execute(
                    &self.st.put_unfed,
                    &[&row.key, &row.value, &revision, &row.expires],
                )
                .await
                .map_err(pg)?;
        }
        Ok(())
    }

    async fn remove(&mut self, revision: i64, idx: i32, key: &str, at: i64) -> Result<bool> {
        if !in_feed(self.unwatched, key) {
            let n = self
                .tx
                .execute(&self.st.remove_unfed, &[&key])
                .await
                .map_err(pg)?;
            return Ok(n > 0);
        }
        let n = self
            .tx
            .execute(&self.st.remove, &[&key, &revision, &idx, &at])
            .await
            .map_err(pg)?;
        self.fed |= n > 0;
        Ok(n > 0)
    }

    async fn sweep(&mut self, revision: i64, now: i64) -> Result<u64> {
        let unwatched: Vec<&str> = self.unwatched.iter().map(String::as_str).collect();
        let row = self
            .tx
            .query_one(&self.st.sweep, &[&revision, &now, &unwatched])
            .await
            .map_err(pg)?;
        let swept: i64 = row.try_get(0).map_err(pg)?;
        let fed: i64 = row.try_get(1).map_err(pg)?;
        self.fed |= fed > 0;
        Ok(u64::try_from(swept).unwrap_or(0))
    }

    async fn next_revisions(&mut self, n: i64) -> Result<i64> {
        self.tx
            .query_one(&self.st.next_revs, &[&n])
            .await
            .map_err(pg)?
            .try_get(0)
            .map_err(pg)
    }

    async fn get_item(&mut self, key: &str, now: i64) -> Result<Option<Item>> {
        let row = self
            .tx
            .query_opt(&self.st.get, &[&key, &now])
            .await
            .map_err(pg)?;
        row.map(|r| {
            Ok(Item {
                key: key.to_owned(),
                value: r.try_get(0).map_err(pg)?,
                revision: r.try_get(1).map_err(pg)?,
                expires: opt_from_ms(r.try_get(2).map_err(pg)?)?,
            })
        })
        .transpose()
    }

    async fn lookup_many(
        &mut self,
        keys: &[&str],
    ) -> Result<std::collections::HashMap<String, Stored>> {
        let rows = self
            .tx
            .query(&self.st.lookup_many, &[&keys])
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<_, String>(0).map_err(pg)?,
                    Stored {
                        revision: r.try_get(1).map_err(pg)?,
                        expires: r.try_get(2).map_err(pg)?,
                    },
                ))
            })
            .collect()
    }

    /// Three ways, sent together (the driver pipelines queries issued together on one
    /// connection, and the server runs them in order):
    /// - rows with change events and distinct keys: multi-row statements (arrays unnested,
    ///   [`PUT_ROWS`] at most a statement) that write the items and their events;
    /// - rows with change events where a key is written twice (one statement cannot upsert a
    ///   row twice): one statement per row, in order;
    /// - rows under unwatched prefixes: multi-row statements without events, each key with
    ///   its last write, as it would end row by row.
    ///
    /// A bulk request wrote ~8,000 statements, and an authentication a dozen, one per row;
    /// PostgreSQL's per-statement work was then the larger part of a batch. Watched and
    /// unwatched rows never share a key, so their relative order does not matter.
    async fn put_many(&mut self, rows: &[(i64, i32, &PutRow)], at: i64) -> Result<()> {
        let tx = self.tx;
        let st: &Stmts = self.st;
        let at = &at;
        type Row<'r> = &'r (i64, i32, &'r PutRow);
        let (fed, unfed): (Vec<Row<'_>>, Vec<Row<'_>>) = rows
            .iter()
            .partition(|(_, _, row)| in_feed(self.unwatched, &row.key));
        self.fed |= !fed.is_empty();

        let mut distinct = std::collections::HashSet::with_capacity(fed.len());
        let fed_distinct = fed.iter().all(|(_, _, r)| distinct.insert(r.key.as_str()));
        let fed_rows = async {
            if fed.is_empty() {
                return Ok(());
            }
            if fed.len() > 1 && fed_distinct {
                futures::future::try_join_all(fed.chunks(PUT_ROWS).map(|chunk| {
                    let keys: Vec<&str> = chunk.iter().map(|(_, _, r)| r.key.as_str()).collect();
                    let values: Vec<&[u8]> =
                        chunk.iter().map(|(_, _, r)| r.value.as_slice()).collect();
                    let revisions: Vec<i64> = chunk.iter().map(|(rev, _, _)| *rev).collect();
                    let expires: Vec<Option<i64>> =
                        chunk.iter().map(|(_, _, r)| r.expires).collect();
                    let idxs: Vec<i32> = chunk.iter().map(|(_, idx, _)| *idx).collect();
                    async move {
                        tx.execute(
                            &st.put_rows,
                            &[&keys, &values, &revisions, &expires, &idxs, at],
                        )
                        .await
                    }
                }))
                .await?;
            } else {
                futures::future::try_join_all(fed.iter().map(|(revision, idx, row)| {
                    tx.execute_raw(
                        &st.put,
                        [
                            &row.key as &(dyn tokio_postgres::types::ToSql + Sync),
                            &row.value,
                            revision,
                            &row.expires,
                            idx,
                            at,
                        ],
                    )
                }))
                .await?;
            }
            Ok::<(), tokio_postgres::Error>(())
        };

        // The last write of each unwatched key (rows are in write order).
        let mut last: std::collections::HashMap<&str, &(i64, i32, &PutRow)> =
            std::collections::HashMap::with_capacity(unfed.len());
        for r in &unfed {
            last.insert(r.2.key.as_str(), r);
        }
        let kept: Vec<&(i64, i32, &PutRow)> = unfed
            .iter()
            .copied()
            .filter(|r| {
                last.get(r.2.key.as_str())
                    .is_some_and(|l| std::ptr::eq(*l, *r))
            })
            .collect();
        let unfed_rows = futures::future::try_join_all(kept.chunks(PUT_ROWS).map(|chunk| {
            let keys: Vec<&str> = chunk.iter().map(|r| r.2.key.as_str()).collect();
            let values: Vec<&[u8]> = chunk.iter().map(|r| r.2.value.as_slice()).collect();
            let revisions: Vec<i64> = chunk.iter().map(|r| r.0).collect();
            let expires: Vec<Option<i64>> = chunk.iter().map(|r| r.2.expires).collect();
            async move {
                tx.execute(&st.put_unfed_many, &[&keys, &values, &revisions, &expires])
                    .await
            }
        }));
        futures::future::try_join(fed_rows, unfed_rows)
            .await
            .map_err(pg)?;
        Ok(())
    }
}

/// Most rows one multi-row put statement carries.
const PUT_ROWS: usize = 1000;

/// Statements prepared once per connection.
struct Stmts {
    head: Statement,
    version: Statement,
    next_rev: Statement,
    lookup: Statement,
    get: Statement,
    put: Statement,
    remove: Statement,
    sweep: Statement,
    any_expired: Statement,
    events_after: Statement,
    prune: Statement,
    /// Indexed by `lower_inclusive * 2 + has_upper`.
    range: [Statement; 4],
    next_revs: Statement,
    lookup_many: Statement,
    /// `put` and `remove` without a change event (unwatched prefixes).
    put_unfed: Statement,
    remove_unfed: Statement,
    /// `put_unfed` of many rows at once (arrays of keys, values, revisions, expiries).
    put_unfed_many: Statement,
    /// [`Tx::put_many`] of rows with distinct keys, as arrays.
    put_rows: Statement,
    /// [`Backend::count_use`], [`Backend::uses`], [`Backend::reset_uses`], and the
    /// periodic removal of expired counts.
    count_use: Statement,
    uses: Statement,
    /// [`Backend::get_indexed`].
    get_indexed: Statement,
    reset_uses: Statement,
    sweep_counters: Statement,
}

const RANGE_SQL: [&str; 4] = [
    "SELECT key, value, revision, expires FROM dt_items WHERE key > $1 AND $2::text IS NULL \
     AND (expires IS NULL OR expires > $3) ORDER BY key LIMIT $4",
    "SELECT key, value, revision, expires FROM dt_items WHERE key > $1 AND key < $2 \
     AND (expires IS NULL OR expires > $3) ORDER BY key LIMIT $4",
    "SELECT key, value, revision, expires FROM dt_items WHERE key >= $1 AND $2::text IS NULL \
     AND (expires IS NULL OR expires > $3) ORDER BY key LIMIT $4",
    "SELECT key, value, revision, expires FROM dt_items WHERE key >= $1 AND key < $2 \
     AND (expires IS NULL OR expires > $3) ORDER BY key LIMIT $4",
];

/// Whether any item has expired at `$1` (ms), asked before each sweep: the earliest expiry,
/// not `EXISTS (... WHERE expires <= $1)`. PostgreSQL's generic plan for that form (used
/// from a prepared statement's sixth run on) scans the whole table, every audit event
/// included, betting on an early match; it took 30-100 ms a sweep at a few hundred
/// thousand items and grew with the log. `min()` is one step into the partial index.
/// Public so that a test can check the plan.
pub const ANY_EXPIRED_SQL: &str = "SELECT COALESCE((SELECT min(expires) FROM dt_items \
     WHERE expires IS NOT NULL) <= $1::bigint, false)";

/// Run on every connection as it opens: no sequential scans where an index serves.
///
/// Every statement of this store reads by key or by an index (the primary keys, the expiry
/// and change-time indexes), so a sequential scan is never the plan wanted. But a
/// connection lives as long as the server, and PostgreSQL keeps a prepared statement's
/// generic plan from its sixth run on: one made while `dt_items` was small (a new cluster)
/// scans the whole table, and it stays until a statistics change happens to replace it.
/// Seen in the benchmark: the group commit's condition read (`key = ANY($1)`) at 5 ms
/// instead of 0.1 ms, inside the serial part, and device authentication at a quarter of its
/// rate for the whole run, in about one run in ten. Planning every run instead
/// (`plan_cache_mode = force_custom_plan`) also avoids it, but cost a third of the
/// throughput. Public so that a test can check the effect.
pub const SESSION_SQL: &str = "SET enable_seqscan = off";

const VERSION_SQL: &str = "SELECT COALESCE(MAX(version), 0)::bigint FROM dt_schema_migrations";

impl Stmts {
    async fn prepare(client: &Client) -> Result<Self> {
        let sql: [&str; 26] = [
            "SELECT v FROM dt_seq WHERE id = 1",
            VERSION_SQL,
            "UPDATE dt_seq SET v = v + 1 WHERE id = 1 RETURNING v",
            "SELECT revision, expires FROM dt_items WHERE key = $1",
            "SELECT value, revision, expires FROM dt_items \
             WHERE key = $1 AND (expires IS NULL OR expires > $2)",
            "WITH up AS ( \
                 INSERT INTO dt_items (key, value, revision, expires) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, \
                     revision = EXCLUDED.revision, expires = EXCLUDED.expires \
                 RETURNING 1) \
             INSERT INTO dt_events (revision, idx, key, kind, value, expires, at) \
             VALUES ($3, $5::integer, $1, 0, $2, $4, $6::bigint)",
            "WITH d AS (DELETE FROM dt_items WHERE key = $1 RETURNING key) \
             INSERT INTO dt_events (revision, idx, key, kind, value, expires, at) \
             SELECT $2::bigint, $3::integer, d.key, 1, ''::bytea, NULL, $4::bigint FROM d",
            // Every expired item is deleted and counted; change rows are written for the
            // watched ones only ($3: the unwatched prefixes).
            "WITH d AS (DELETE FROM dt_items WHERE expires IS NOT NULL AND expires <= $2::bigint \
                 RETURNING key), \
             e AS (INSERT INTO dt_events (revision, idx, key, kind, value, expires, at) \
                 SELECT $1::bigint, (row_number() OVER (ORDER BY d.key))::integer - 1, d.key, 1, \
                     ''::bytea, NULL, $2::bigint FROM d \
                 WHERE NOT EXISTS (SELECT 1 FROM unnest($3::text[]) AS u(prefix) \
                     WHERE starts_with(d.key, u.prefix COLLATE \"C\")) \
                 RETURNING 1) \
             SELECT (SELECT COUNT(*) FROM d), (SELECT COUNT(*) FROM e)",
            ANY_EXPIRED_SQL,
            "SELECT revision, idx, kind, key, \
                 CASE WHEN $4::boolean OR EXISTS (SELECT 1 FROM unnest($5::text[]) AS w(prefix) \
                     WHERE starts_with(key, w.prefix COLLATE \"C\")) THEN value END, \
                 expires FROM dt_events \
             WHERE revision >= $1::bigint AND (revision > $1::bigint OR idx > $2::integer) \
             ORDER BY revision, idx LIMIT $3::bigint",
            "DELETE FROM dt_events WHERE at < $1::bigint",
            RANGE_SQL[0],
            RANGE_SQL[1],
            RANGE_SQL[2],
            RANGE_SQL[3],
            "UPDATE dt_seq SET v = v + $1::bigint WHERE id = 1 RETURNING v",
            "SELECT key, revision, expires FROM dt_items WHERE key = ANY($1::text[])",
            "INSERT INTO dt_items (key, value, revision, expires) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, \
                 revision = EXCLUDED.revision, expires = EXCLUDED.expires",
            "DELETE FROM dt_items WHERE key = $1",
            "INSERT INTO dt_items (key, value, revision, expires) \
             SELECT * FROM UNNEST($1::text[], $2::bytea[], $3::bigint[], $4::bigint[]) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, \
                 revision = EXCLUDED.revision, expires = EXCLUDED.expires",
            "WITH rows AS ( \
                 SELECT * FROM unnest($1::text[], $2::bytea[], $3::bigint[], $4::bigint[], \
                     $5::integer[]) AS r (key, value, revision, expires, idx)), \
             up AS ( \
                 INSERT INTO dt_items (key, value, revision, expires) \
                 SELECT key, value, revision, expires FROM rows \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, \
                     revision = EXCLUDED.revision, expires = EXCLUDED.expires \
                 RETURNING 1) \
             INSERT INTO dt_events (revision, idx, key, kind, value, expires, at) \
             SELECT revision, idx, key, 0, value, expires, $6::bigint FROM rows",
            // One use: a new or expired count starts at 1, a live one below the limit goes
            // up by one, a full one is left alone and returns no row.
            "INSERT INTO dt_counters AS c (key, n, expires) VALUES ($1, 1, $3::bigint) \
             ON CONFLICT (key) DO UPDATE SET \
                 n = CASE WHEN c.expires <= $4::bigint THEN 1 ELSE c.n + 1 END, \
                 expires = CASE WHEN c.expires <= $4::bigint THEN EXCLUDED.expires \
                     ELSE c.expires END \
             WHERE c.expires <= $4::bigint OR c.n < $2::bigint \
             RETURNING n",
            "SELECT n FROM dt_counters WHERE key = $1 AND expires > $2::bigint",
            "DELETE FROM dt_counters WHERE key = $1",
            "DELETE FROM dt_counters WHERE expires <= $1::bigint",
            "SELECT d.value, d.revision, d.expires, d.key FROM dt_items i \
             JOIN dt_items d ON d.key = ($2::text || convert_from(i.value, 'UTF8')) COLLATE \"C\" \
             WHERE i.key = $1 AND (i.expires IS NULL OR i.expires > $3::bigint) \
                 AND (d.expires IS NULL OR d.expires > $3::bigint)",
        ];
        // Prepared concurrently: the driver pipelines them on the one connection.
        let prepared = futures::future::try_join_all(sql.iter().map(|s| client.prepare(s)))
            .await
            .map_err(pg)?;
        let [
            head,
            version,
            next_rev,
            lookup,
            get,
            put,
            remove,
            sweep,
            any_expired,
            events_after,
            prune,
            r0,
            r1,
            r2,
            r3,
            next_revs,
            lookup_many,
            put_unfed,
            remove_unfed,
            put_unfed_many,
            put_rows,
            count_use,
            uses,
            reset_uses,
            sweep_counters,
            get_indexed,
        ] = <[Statement; 26]>::try_from(prepared)
            .map_err(|_| backend_msg("statement preparation mismatch"))?;
        Ok(Stmts {
            head,
            version,
            next_rev,
            lookup,
            get,
            put,
            remove,
            sweep,
            any_expired,
            events_after,
            prune,
            range: [r0, r1, r2, r3],
            next_revs,
            lookup_many,
            put_unfed,
            remove_unfed,
            put_unfed_many,
            put_rows,
            count_use,
            uses,
            reset_uses,
            sweep_counters,
            get_indexed,
        })
    }
}

struct PgConn {
    client: Client,
    st: Stmts,
}

/// Where and how to connect.
struct Target {
    config: Config,
    tls: MakeRustls,
    mode: SslMode,
    /// Set on each new connection; `None` for the LISTEN connection (it runs no queries).
    statement_timeout: Option<Duration>,
}

/// A failed connection attempt, with the `sslmode` it was made with.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to PostgreSQL (sslmode={mode}): {source}")]
struct ConnectError {
    mode: &'static str,
    source: PgError,
}

impl Target {
    async fn connect(
        &self,
    ) -> Result<(
        Client,
        tokio_postgres::Connection<
            tokio_postgres::Socket,
            crate::pg_tls::RustlsStream<tokio_postgres::Socket>,
        >,
    )> {
        self.config.connect(self.tls.clone()).await.map_err(|e| {
            StoreError::backend(ConnectError {
                mode: self.mode.as_str(),
                source: PgError(e),
            })
        })
    }
}

async fn open_client(target: &Target) -> Result<Client> {
    let (client, connection) = target.connect().await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %PgError(e), "dt-store: PostgreSQL connection ended");
        }
    });
    client.batch_execute(SESSION_SQL).await.map_err(pg)?;
    if let Some(t) = target.statement_timeout {
        client
            .batch_execute(&format!("SET statement_timeout = {}", t.as_millis().max(1)))
            .await
            .map_err(pg)?;
    }
    Ok(client)
}

struct Pool {
    config: Target,
    idle: Mutex<Vec<PgConn>>,
    sem: Arc<Semaphore>,
    closed: AtomicBool,
}

impl Pool {
    async fn get(self: &Arc<Self>) -> Result<Lease> {
        if self.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        let permit = self
            .sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| closed())?;
        let reused = loop {
            let next = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match next {
                Some(c) if c.client.is_closed() => continue,
                other => break other,
            }
        };
        let conn = match reused {
            Some(c) => c,
            None => {
                let client = open_client(&self.config).await?;
                let st = Stmts::prepare(&client).await?;
                PgConn { client, st }
            }
        };
        Ok(Lease {
            conn: Some(conn),
            pool: Arc::clone(self),
            _permit: permit,
        })
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.sem.close();
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// A pooled connection; goes back to the pool on drop (before the permit is released) if
/// it is still usable. A transaction left open by a cancelled caller was already rolled
/// back by the driver's `Transaction` drop, which queues a `ROLLBACK` first.
struct Lease {
    conn: Option<PgConn>,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
}

impl Lease {
    fn conn_mut(&mut self) -> Result<&mut PgConn> {
        self.conn
            .as_mut()
            .ok_or_else(|| backend_msg("connection lease already released"))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take()
            && !c.client.is_closed()
            && !self.pool.closed.load(Ordering::Acquire)
        {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(c);
        }
    }
}

async fn migrate(client: &mut Client) -> Result<i64> {
    let latest = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    let tx = client.transaction().await.map_err(pg)?;
    // Serializes concurrent starters; released at commit.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg)?;
    // A migration may rewrite whole tables, which a sequential scan serves best
    // (`SESSION_SQL` turned them off for the store's own statements).
    tx.batch_execute("SET LOCAL enable_seqscan = on")
        .await
        .map_err(pg)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS dt_schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .await
    .map_err(pg)?;
    let current: i64 = tx
        .query_one(VERSION_SQL, &[])
        .await
        .map_err(pg)?
        .try_get(0)
        .map_err(pg)?;
    if current > latest {
        return Err(backend_msg(format!(
            "database schema version {current} is newer than this build supports ({latest})"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let version = i64::try_from(i + 1).unwrap_or(i64::MAX);
        if version <= current {
            continue;
        }
        tx.batch_execute(sql).await.map_err(pg)?;
        tx.execute(
            "INSERT INTO dt_schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[&version, &now_ms()],
        )
        .await
        .map_err(pg)?;
    }
    tx.commit().await.map_err(pg)?;
    Ok(latest)
}

/// Keep one connection in `LISTEN dt_store_events`, waking the hub on every notification
/// and after every (re)connect (which makes it read whatever it missed meanwhile).
async fn listen_loop(config: Target, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut listening = false;
        let result = tokio::select! {
            () = stopped(&mut stop) => return,
            r = listen_once(&config, &wake, &mut listening) => r,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "dt-store: PostgreSQL LISTEN connection lost; reconnecting");
        }
        if listening {
            backoff = Duration::from_millis(100);
        }
        tokio::select! {
            () = stopped(&mut stop) => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn listen_once(config: &Target, wake: &Notify, listening: &mut bool) -> Result<()> {
    let (client, mut connection) = config.connect().await?;
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let listen = client.batch_execute("LISTEN dt_store_events");
    tokio::pin!(listen);
    loop {
        tokio::select! {
            r = &mut listen, if !*listening => {
                r.map_err(pg)?;
                *listening = true;
                wake.notify_one();
            }
            m = messages.next() => match m {
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == CHANNEL => wake.notify_one(),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(pg(e)),
                None => return Err(backend_msg("LISTEN connection closed")),
            },
        }
    }
}
