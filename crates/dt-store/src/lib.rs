//! Cluster state storage: one `Backend` trait, two implementations.
//!
//! Why this shape: every piece of cluster state (resources, secrets' hashes, audit events,
//! indexes) is an *item* — a key, opaque bytes, a revision and an optional expiry. Uniqueness
//! and "check then write" invariants are expressed as conditions on an atomic write, so a
//! caller can never leave an index half-written. Revisions come from one cluster-wide,
//! monotonically increasing sequence that is also the change-feed position, so a watcher
//! resumes from "the last revision I saw" without gaps.
//!
//! What it deliberately does not do: interpret values (that is the caller's job), or
//! offer cross-call transactions (each `atomic_write` is one transaction).
//!
//! Group commit: `create`, `put` and `atomic_write` calls that arrive while a write is in
//! progress are queued and committed together in one transaction (one fsync on SQLite,
//! one WAL flush on PostgreSQL), each keeping its own conditions, revision and result;
//! [`Backend::write_batch`] does the same for a caller-made batch and adds a tail (the
//! audit log chains its events there). `update`, `delete` and the sweeper commit alone.
//!
//! Implementations: [`sqlite::SqliteBackend`] (embedded default, WAL) and
//! [`postgres::PostgresBackend`] (several auth servers sharing one database; changes are
//! announced with LISTEN/NOTIFY). Both must pass one test suite, which lives in the
//! dev-only `dt-store-conformance` crate so it is not compiled into this library.

use std::time::Duration;

use time::OffsetDateTime;

mod common;
mod hub;
pub mod pg_tls;
pub mod postgres;
pub mod sqlite;

/// One stored value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// The item's key (non-empty, no NUL characters).
    pub key: String,
    /// Opaque bytes.
    pub value: Vec<u8>,
    /// Revision of the last write to this key (a cluster-wide sequence number; > 0).
    pub revision: i64,
    /// After this instant the item is invisible to every read and condition, and a sweeper
    /// deletes it (emitting a `Delete` event).
    pub expires: Option<OffsetDateTime>,
}

/// A write that [`Backend::atomic_write`] applies only if all its conditions hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// The key exists (and has not expired).
    Exists(String),
    /// The key does not exist (or has expired).
    NotExists(String),
    /// The key exists with exactly this revision.
    Revision(String, i64),
}

/// One write inside an [`Backend::atomic_write`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Upsert `key`.
    Put {
        /// The key to write.
        key: String,
        /// The new value.
        value: Vec<u8>,
        /// When the item expires (`None`: never).
        expires: Option<OffsetDateTime>,
    },
    /// Deleting a missing key is not an error inside an atomic write.
    Delete {
        /// The key to delete.
        key: String,
    },
}

/// One request of a [`Backend::write_batch`]: what one [`Backend::atomic_write`] would take.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchWrite {
    /// Checked against the state left by the groups before this one.
    pub conditions: Vec<Condition>,
    /// Applied only if every condition holds.
    pub ops: Vec<Op>,
}

/// The last step of a [`Backend::write_batch`], run inside its transaction: given each
/// group's outcome (`Some(revision)` when it was applied) and the live item at the batch's
/// tail key as the transaction sees it, it returns the ops to write after the groups (e.g.
/// the audit events of the applied groups and the chain head). An error rolls the whole
/// batch back. It may run more than once (the transaction is retried on a conflict), so
/// it must depend only on its arguments.
pub type BatchTail =
    std::sync::Arc<dyn Fn(&[Option<i64>], Option<&Item>) -> Result<Vec<Op>> + Send + Sync>;

/// One page of a [`Backend::range`] listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// Live items, in key order.
    pub items: Vec<Item>,
    /// Pass as `start_after` to get the next page; `None` when this was the last one.
    pub next: Option<String>,
}

/// What a [`WatchEvent::Change`] did to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Created or replaced.
    Put,
    /// Deleted (explicitly, or by the expiry sweeper).
    Delete,
}

/// One message of a [`Watcher`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// First event of every watch: from here on, no change under the watched prefixes is
    /// missed. `revision` is the sequence position the watch starts after.
    Init {
        /// Changes with a greater revision follow.
        revision: i64,
    },
    /// A change. For `Delete`, `item.value` is empty and `item.revision` is the revision
    /// of the deletion.
    Change {
        /// Put or delete.
        kind: EventKind,
        /// The item as written (or, for a delete, its key and the deletion's revision).
        item: Item,
    },
}

/// A live change feed. `recv` returns `None` when the watch has ended (backend closed,
/// or the watcher fell too far behind): the caller must re-read its state and watch again.
pub struct Watcher {
    /// The underlying channel; prefer [`Watcher::recv`].
    pub rx: tokio::sync::mpsc::Receiver<WatchEvent>,
}

impl Watcher {
    /// The next event, or `None` once the watch has ended.
    pub async fn recv(&mut self) -> Option<WatchEvent> {
        self.rx.recv().await
    }
}

/// Everything a [`Backend`] call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `create` on a key that has a live item.
    #[error("item {0:?} already exists")]
    AlreadyExists(String),
    /// `update`/`delete` of a key with no live item.
    #[error("item {0:?} not found")]
    NotFound(String),
    /// The item changed since it was read (compare-and-swap lost).
    #[error("item {0:?} was changed concurrently; read it again and retry")]
    RevisionMismatch(String),
    /// Condition number `index` of an atomic write did not hold.
    #[error("condition {index} of an atomic write failed on {key:?}")]
    ConditionFailed {
        /// Position of the failing condition in the `conditions` list.
        index: usize,
        /// The key that condition is about.
        key: String,
    },
    /// The request itself is malformed (e.g. an empty key).
    #[error("invalid storage request: {0}")]
    Invalid(String),
    /// The database failed (or the store was closed); the message has the details.
    #[error("storage backend error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// Wrap any error as [`StoreError::Backend`].
    pub fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Backend(Box::new(e))
    }
}

/// Result with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A cluster state store. Implementations: [`sqlite::SqliteBackend`],
/// [`postgres::PostgresBackend`].
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// "sqlite" or "postgres".
    fn kind(&self) -> &'static str;
    /// Schema version after migrations.
    async fn schema_version(&self) -> Result<i64>;

    /// The live item at `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<Item>>;
    /// Follow an index entry in one read: the live item at `prefix` followed by the value of
    /// the live item at `index_key` (an index entry whose value, UTF-8 text, names its
    /// target), or `None` when either is missing. An index value that is not UTF-8 is an
    /// error. Both items are read at one point in time.
    async fn get_indexed(&self, index_key: &str, prefix: &str) -> Result<Option<Item>>;
    /// Live items whose key starts with `prefix`, in key order, after `start_after` (exclusive),
    /// at most `limit` (1..=1000) of them.
    async fn range(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Page>;
    /// Fails with `AlreadyExists` if a live item has the key. Returns the new revision.
    async fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        expires: Option<OffsetDateTime>,
    ) -> Result<i64>;
    /// Unconditional upsert. Returns the new revision.
    async fn put(&self, key: &str, value: Vec<u8>, expires: Option<OffsetDateTime>) -> Result<i64>;
    /// Replace an existing item; `NotFound` if missing, `RevisionMismatch` if
    /// `expected_revision` is given and differs.
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expires: Option<OffsetDateTime>,
        expected_revision: Option<i64>,
    ) -> Result<i64>;
    /// `NotFound` if missing, `RevisionMismatch` if `expected_revision` differs.
    async fn delete(&self, key: &str, expected_revision: Option<i64>) -> Result<()>;
    /// All conditions are checked and all ops applied in one transaction, or nothing is
    /// written (`ConditionFailed`). Returns the revision assigned to the write (all ops of
    /// one atomic write share it).
    async fn atomic_write(&self, conditions: Vec<Condition>, ops: Vec<Op>) -> Result<i64>;
    /// Group commit: several independent atomic writes in one transaction. Each group is
    /// checked and applied in order, with its own revision, exactly as if it were one
    /// `atomic_write` committed right after the previous group; a group whose condition
    /// fails (`ConditionFailed` with its own index) or that is invalid is skipped and fails
    /// alone. Then `tail` runs (see [`BatchTail`]) and its ops are written with the batch's
    /// last revision. The outer error means nothing was written; otherwise each group gets
    /// its own result. Writers are serialized (SQLite's write lock, PostgreSQL's sequence
    /// row lock) before `tail` reads `tail_key`, so the tail always sees the latest
    /// committed value, also across processes.
    async fn write_batch(
        &self,
        groups: Vec<BatchWrite>,
        tail_key: &str,
        tail: BatchTail,
    ) -> Result<Vec<Result<i64>>>;
    /// Watch changes to keys under any of `prefixes` (an empty prefix watches everything;
    /// so does an empty list). `Init.revision` is at least the revision of every write that
    /// completed on this instance before `watch` was called.
    async fn watch(&self, prefixes: Vec<String>) -> Result<Watcher>;
    /// Delete expired items now (also done periodically in the background).
    async fn sweep_expired(&self) -> Result<u64>;

    /// Count one use of `key`'s budget of `limit` uses, unless the budget is spent:
    /// `Ok(Some(n))` when this use is the n-th, `Ok(None)` when `limit` uses are already
    /// counted (nothing is counted then). A count starts at its first use and ends at the
    /// `expires` given then; after that `key` starts again from zero.
    ///
    /// Counters are for rate limits: exact across every instance on the storage (no two
    /// callers ever get the same n), cheap (one statement, no revision, no change feed),
    /// and kept apart from items, so they never appear in [`Backend::range`] or a watch.
    /// They are **not crash-durable**: a crash of the machine (SQLite) or of the database
    /// server (PostgreSQL) may forget counts, which then start again from zero.
    async fn count_use(
        &self,
        key: &str,
        limit: u64,
        expires: OffsetDateTime,
    ) -> Result<Option<u64>>;
    /// How many uses `key` has counted (0 when it never counted or its count expired).
    async fn uses(&self, key: &str) -> Result<u64>;
    /// Forget `key`'s count.
    async fn reset_uses(&self, key: &str) -> Result<()>;
    /// Stop background tasks and end all watchers.
    async fn close(&self);
}

/// How often background work runs; tests shorten these.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// Expired-item sweeper period.
    pub sweep_every: Duration,
    /// Fallback poll of the change table (SQLite across processes; PostgreSQL if a
    /// notification is lost).
    pub poll_every: Duration,
    /// Change-table rows older than this are pruned.
    pub keep_events_for: Duration,
    /// Per-watcher buffer; a watcher that falls this far behind is closed.
    pub watcher_buffer: usize,
    /// Keys under these prefixes are written without a change-feed entry, so they cost one
    /// row instead of two (and their values are not stored twice). Nobody can watch them:
    /// [`Backend::watch`] refuses a prefix that overlaps one. For write-heavy keys that are
    /// only ever read, such as an audit log and rate-limit slots.
    pub unwatched_prefixes: Vec<String>,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            sweep_every: Duration::from_secs(1),
            poll_every: Duration::from_millis(500),
            keep_events_for: Duration::from_secs(3600),
            watcher_buffer: 1024,
            unwatched_prefixes: Vec::new(),
        }
    }
}
