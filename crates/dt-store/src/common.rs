//! Logic shared by both backends: input validation, time conversion, the write algorithm
//! (expressed once over a small [`Tx`] trait), and background-task plumbing.

use std::future::Future;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use std::collections::HashMap;

use crate::{BatchTail, BatchWrite, Condition, Item, Op, Result, StoreError, Tuning};

/// Largest page a `range` call returns.
pub(crate) const MAX_PAGE: usize = 1000;
/// How many times a write is retried on a transient conflict (SQLITE_BUSY, serialization
/// failure, deadlock, unique violation).
pub(crate) const WRITE_RETRIES: u32 = 5;

/// A plain-text error used for conditions that have no driver error behind them.
#[derive(Debug)]
pub(crate) struct Msg(pub String);

impl std::fmt::Display for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Msg {}

pub(crate) fn backend_msg(msg: impl Into<String>) -> StoreError {
    StoreError::backend(Msg(msg.into()))
}

pub(crate) fn closed() -> StoreError {
    backend_msg("the store has been closed")
}

/// Current wall-clock time in unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(nanos.div_euclid(1_000_000)).unwrap_or(i64::MAX)
}

/// `OffsetDateTime` to unix milliseconds (rounded down: an item never outlives its expiry).
pub(crate) fn to_ms(t: OffsetDateTime) -> Result<i64> {
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000))
        .map_err(|_| StoreError::Invalid(format!("expiry {t} is out of range")))
}

/// Unix milliseconds back to `OffsetDateTime`.
pub(crate) fn from_ms(ms: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|e| backend_msg(format!("stored expiry {ms} is out of range: {e}")))
}

pub(crate) fn opt_to_ms(t: Option<OffsetDateTime>) -> Result<Option<i64>> {
    t.map(to_ms).transpose()
}

pub(crate) fn opt_from_ms(ms: Option<i64>) -> Result<Option<OffsetDateTime>> {
    ms.map(from_ms).transpose()
}

/// [`crate::Backend::count_use`]'s arguments as stored: `(limit, expiry in ms)`, or `None`
/// for a zero budget (nothing can be counted).
pub(crate) fn counter_use_args(
    key: &str,
    limit: u64,
    expires: OffsetDateTime,
) -> Result<Option<(i64, i64)>> {
    validate_key(key)?;
    let expires = to_ms(expires)?;
    let Ok(limit) = i64::try_from(limit) else {
        return Err(StoreError::Invalid(format!(
            "counter limit {limit} is too large"
        )));
    };
    Ok((limit > 0).then_some((limit, expires)))
}

/// Keys are non-empty and contain no NUL (PostgreSQL `text` cannot hold one).
pub(crate) fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(StoreError::Invalid("empty key".into()));
    }
    if key.contains('\0') {
        return Err(StoreError::Invalid(format!(
            "key {key:?} contains a NUL character"
        )));
    }
    Ok(())
}

/// The smallest string greater than every string that starts with `prefix`, in byte
/// (= code point) order, or `None` when no such bound exists (empty prefix, or one made only
/// of `char::MAX`). Used instead of `LIKE` so `%` and `_` in prefixes are plain characters.
pub(crate) fn prefix_successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last {
            '\u{D7FF}' => Some('\u{E000}'),
            c => char::from_u32(u32::from(c) + 1),
        };
        if let Some(n) = next {
            chars.push(n);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// Bounds of a `range` query: the lower bound is either `>= prefix` or `> start_after`,
/// whichever is tighter.
pub(crate) struct RangeBounds {
    pub lower: String,
    pub lower_inclusive: bool,
    pub upper: Option<String>,
    /// `limit` clamped to 1..=MAX_PAGE.
    pub limit: usize,
}

pub(crate) fn range_bounds(
    prefix: &str,
    start_after: Option<&str>,
    limit: usize,
) -> Result<RangeBounds> {
    if prefix.contains('\0') || start_after.is_some_and(|a| a.contains('\0')) {
        return Err(StoreError::Invalid(
            "range bounds contain a NUL character".into(),
        ));
    }
    let (lower, lower_inclusive) = match start_after {
        Some(after) if after >= prefix => (after.to_owned(), false),
        _ => (prefix.to_owned(), true),
    };
    Ok(RangeBounds {
        lower,
        lower_inclusive,
        upper: prefix_successor(prefix),
        limit: limit.clamp(1, MAX_PAGE),
    })
}

/// Turn `limit + 1` fetched items into a page.
pub(crate) fn make_page(mut items: Vec<crate::Item>, limit: usize) -> crate::Page {
    let more = items.len() > limit;
    items.truncate(limit);
    let next = if more {
        items.last().map(|i| i.key.clone())
    } else {
        None
    };
    crate::Page { items, next }
}

/// Clamp tuning values that would make tokio panic (zero periods, zero-capacity channels).
pub(crate) fn sane(mut t: Tuning) -> Tuning {
    let min = Duration::from_millis(1);
    t.sweep_every = t.sweep_every.max(min);
    t.poll_every = t.poll_every.max(min);
    t.watcher_buffer = t.watcher_buffer.max(1);
    t
}

/// What a transaction knows about a stored row.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stored {
    pub revision: i64,
    pub expires: Option<i64>,
}

/// Revision of the row if it is live at `now`.
pub(crate) fn live(row: Option<Stored>, now: i64) -> Option<i64> {
    row.filter(|r| r.expires.is_none_or(|e| e > now))
        .map(|r| r.revision)
}

pub(crate) fn condition_key(c: &Condition) -> &str {
    match c {
        Condition::Exists(k) | Condition::NotExists(k) | Condition::Revision(k, _) => k,
    }
}

/// Check condition number `index` against the live revision of its key.
pub(crate) fn check_condition(index: usize, c: &Condition, live: Option<i64>) -> Result<()> {
    let ok = match c {
        Condition::Exists(_) => live.is_some(),
        Condition::NotExists(_) => live.is_none(),
        Condition::Revision(_, want) => live == Some(*want),
    };
    if ok {
        Ok(())
    } else {
        Err(StoreError::ConditionFailed {
            index,
            key: condition_key(c).to_owned(),
        })
    }
}

/// A row to upsert (expiry already in unix millis).
#[derive(Clone, Debug)]
pub(crate) struct PutRow {
    pub key: String,
    pub value: Vec<u8>,
    pub expires: Option<i64>,
}

impl PutRow {
    pub(crate) fn new(key: &str, value: Vec<u8>, expires: Option<OffsetDateTime>) -> Result<Self> {
        validate_key(key)?;
        Ok(PutRow {
            key: key.to_owned(),
            value,
            expires: opt_to_ms(expires)?,
        })
    }
}

#[derive(Clone, Debug)]
pub(crate) enum AtomicOp {
    Put(PutRow),
    Delete(String),
}

/// Every kind of write, validated and ready for [`apply`].
#[derive(Clone, Debug)]
pub(crate) enum Write {
    Update(PutRow, Option<i64>),
    Delete(String, Option<i64>),
    Atomic(Vec<Condition>, Vec<AtomicOp>),
    Sweep,
}

impl Write {
    pub(crate) fn atomic(conditions: Vec<Condition>, ops: Vec<Op>) -> Result<Self> {
        for c in &conditions {
            validate_key(condition_key(c))?;
        }
        if i32::try_from(ops.len()).is_err() {
            return Err(StoreError::Invalid(
                "too many operations in one atomic write".into(),
            ));
        }
        let ops = ops
            .into_iter()
            .map(|op| match op {
                Op::Put {
                    key,
                    value,
                    expires,
                } => PutRow::new(&key, value, expires).map(AtomicOp::Put),
                Op::Delete { key } => validate_key(&key).map(|()| AtomicOp::Delete(key)),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Write::Atomic(conditions, ops))
    }

    /// The key to blame when a unique violation survives all retries.
    pub(crate) fn conflict_error(&self) -> Option<StoreError> {
        match self {
            Write::Update(row, _) => Some(StoreError::RevisionMismatch(row.key.clone())),
            Write::Delete(key, _) => Some(StoreError::RevisionMismatch(key.clone())),
            Write::Atomic(conds, _) => conds.first().map(|c| StoreError::ConditionFailed {
                index: 0,
                key: condition_key(c).to_owned(),
            }),
            Write::Sweep => None,
        }
    }
}

/// Whether a write to `key` gets a change-feed entry ([`crate::Tuning::unwatched_prefixes`]).
pub(crate) fn in_feed(unwatched: &[String], key: &str) -> bool {
    !unwatched.iter().any(|u| key.starts_with(u.as_str()))
}

/// A watch must see every write under its prefixes: a prefix that overlaps an unwatched one
/// (either contains the other) is refused.
pub(crate) fn check_watchable(unwatched: &[String], prefixes: &[String]) -> Result<()> {
    if prefixes.is_empty()
        && let Some(u) = unwatched.first()
    {
        return Err(StoreError::Invalid(format!(
            "cannot watch every key: keys under {u:?} are written without change events; \
             watch the prefixes you need instead"
        )));
    }
    for p in prefixes {
        if let Some(u) = unwatched
            .iter()
            .find(|u| p.starts_with(u.as_str()) || u.starts_with(p.as_str()))
        {
            return Err(StoreError::Invalid(format!(
                "cannot watch {p:?}: keys under {u:?} are written without change events \
                 (Tuning::unwatched_prefixes); watch a prefix outside it, or read those keys"
            )));
        }
    }
    Ok(())
}

/// Result of [`apply`]: the revision taken, how many events were written (for a sweep: how
/// many expired items it deleted, watched or not), and whether the transaction should be
/// committed (a sweep that found nothing is rolled back so it does not consume a revision).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Applied {
    pub revision: i64,
    pub events: u64,
    pub commit: bool,
}

/// The primitive statements a write transaction needs. The SQLite implementation never
/// suspends (see [`run_ready`]); the PostgreSQL one awaits the server.
pub(crate) trait Tx {
    /// Take the next revision. On PostgreSQL this row-locks the sequence, which serializes
    /// writers so commit order equals revision order; it is therefore called first.
    async fn next_revision(&mut self) -> Result<i64>;
    async fn lookup(&mut self, key: &str) -> Result<Option<Stored>>;
    /// Upsert the item and append its `Put` event.
    async fn put(&mut self, revision: i64, idx: i32, row: &PutRow, at: i64) -> Result<()>;
    /// Delete the row (live or expired) and append a `Delete` event if one existed.
    async fn remove(&mut self, revision: i64, idx: i32, key: &str, at: i64) -> Result<bool>;
    /// Delete every item expired at `now`, appending `Delete` events for the watched ones;
    /// returns how many items were deleted.
    async fn sweep(&mut self, revision: i64, now: i64) -> Result<u64>;

    /// Reserve `n` (>= 1) consecutive revisions at once; returns the last one. Like
    /// [`next_revision`](Self::next_revision), it is called first.
    async fn next_revisions(&mut self, n: i64) -> Result<i64>;
    /// The live value at `key` as this transaction sees it (its own writes included).
    async fn get_item(&mut self, key: &str, now: i64) -> Result<Option<Item>>;
    /// [`lookup`](Self::lookup) of many keys (PostgreSQL: one round trip).
    async fn lookup_many(&mut self, keys: &[&str]) -> Result<HashMap<String, Stored>> {
        let mut out = HashMap::new();
        for k in keys {
            if let Some(s) = self.lookup(k).await? {
                out.insert((*k).to_owned(), s);
            }
        }
        Ok(out)
    }
    /// [`put`](Self::put) of many rows, in order (PostgreSQL: pipelined).
    async fn put_many(&mut self, rows: &[(i64, i32, &PutRow)], at: i64) -> Result<()> {
        for (revision, idx, row) in rows {
            self.put(*revision, *idx, row, at).await?;
        }
        Ok(())
    }
}

/// One validated group: its conditions and ops.
pub(crate) type Group = (Vec<Condition>, Vec<AtomicOp>);

/// A validated batch for [`apply_batch`]: each group is `Err(message)` when it was invalid
/// (it is then skipped and fails alone).
pub(crate) struct Batch {
    pub groups: Vec<std::result::Result<Group, String>>,
    /// The key the tail reads, and the tail.
    pub tail: Option<(String, BatchTail)>,
}

impl Batch {
    pub(crate) fn new(groups: Vec<BatchWrite>, tail: Option<(&str, BatchTail)>) -> Result<Self> {
        if let Some((key, _)) = &tail {
            validate_key(key)?;
        }
        let groups = groups
            .into_iter()
            .map(|g| match Write::atomic(g.conditions, g.ops) {
                Ok(Write::Atomic(c, o)) => Ok((c, o)),
                Ok(_) => Err("not an atomic write".to_owned()),
                Err(e) => Err(e.to_string()),
            })
            .collect();
        Ok(Batch {
            groups,
            tail: tail.map(|(k, t)| (k.to_owned(), t)),
        })
    }
}

/// What one group of a batch came to (the outer result is the transaction's).
pub(crate) type GroupResult = Result<i64>;

/// Puts queued for one pipelined [`Tx::put_many`], flushed before anything that must see
/// them (a delete, the tail's read).
struct Queued<'a> {
    rows: Vec<(i64, i32, &'a PutRow)>,
}

impl<'a> Queued<'a> {
    async fn flush<T: Tx>(&mut self, t: &mut T, at: i64) -> Result<()> {
        if !self.rows.is_empty() {
            t.put_many(&self.rows, at).await?;
            self.rows.clear();
        }
        Ok(())
    }
}

/// What this transaction wrote to the keys some condition of the batch is about (`watched`,
/// sorted): later groups check their conditions against it.
struct Overlay<'k> {
    watched: &'k [&'k str],
    written: HashMap<String, Option<Stored>>,
}

impl Overlay<'_> {
    fn record(&mut self, key: &str, row: Option<Stored>) {
        if self.watched.binary_search(&key).is_ok() {
            self.written.insert(key.to_owned(), row);
        }
    }
}

/// Apply `ops` at `revision`, tracking what this transaction wrote in `overlay`.
async fn apply_ops<'a, T: Tx>(
    t: &mut T,
    queued: &mut Queued<'a>,
    overlay: &mut Overlay<'_>,
    revision: i64,
    ops: &'a [AtomicOp],
    now: i64,
) -> Result<()> {
    let mut idx: i32 = 0;
    for op in ops {
        match op {
            AtomicOp::Put(row) => {
                queued.rows.push((revision, idx, row));
                overlay.record(
                    &row.key,
                    Some(Stored {
                        revision,
                        expires: row.expires,
                    }),
                );
                idx = idx.saturating_add(1);
            }
            AtomicOp::Delete(key) => {
                queued.flush(t, now).await?;
                if t.remove(revision, idx, key, now).await? {
                    idx = idx.saturating_add(1);
                }
                overlay.record(key, None);
            }
        }
    }
    Ok(())
}

/// Group commit: every group of `b` in order, each under its own conditions and with its
/// own revision, as if each were one [`Write::Atomic`] committed right after the one before
/// it; a group whose condition fails (or that is invalid) is skipped and fails alone. Then
/// the tail callback sees each group's outcome and the live item at `tail_key`, and its
/// ops are written with the last revision. One transaction: all of it commits, or none.
pub(crate) async fn apply_batch<T: Tx>(t: &mut T, b: &Batch) -> Result<Vec<GroupResult>> {
    // One revision per group, and one for the tail's writes.
    let n = i64::try_from(b.groups.len())
        .map_err(|_| StoreError::Invalid("batch too large".into()))?
        + i64::from(b.tail.is_some());
    if n == 0 {
        return Ok(Vec::new());
    }
    let last = t.next_revisions(n).await?;
    let first = last - n + 1;
    let now = now_ms();
    // Every condition key, read in one go; later groups see earlier groups' writes through
    // the overlay.
    let mut keys: Vec<&str> = b
        .groups
        .iter()
        .flatten()
        .flat_map(|(conds, _)| conds.iter().map(condition_key))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let stored = t.lookup_many(&keys).await?;
    let mut overlay = Overlay {
        watched: &keys,
        written: HashMap::new(),
    };
    let mut queued = Queued { rows: Vec::new() };
    let mut results = Vec::with_capacity(b.groups.len());
    let mut outcomes = Vec::with_capacity(b.groups.len());
    for (i, group) in b.groups.iter().enumerate() {
        let revision = first + i64::try_from(i).unwrap_or(i64::MAX);
        let (conds, ops) = match group {
            Ok(g) => g,
            Err(msg) => {
                results.push(Err(StoreError::Invalid(msg.clone())));
                outcomes.push(None);
                continue;
            }
        };
        let failed = conds.iter().enumerate().find_map(|(index, c)| {
            let key = condition_key(c);
            let row = match overlay.written.get(key) {
                Some(s) => *s,
                None => stored.get(key).copied(),
            };
            check_condition(index, c, live(row, now)).err()
        });
        if let Some(e) = failed {
            results.push(Err(e));
            outcomes.push(None);
            continue;
        }
        apply_ops(t, &mut queued, &mut overlay, revision, ops, now).await?;
        results.push(Ok(revision));
        outcomes.push(Some(revision));
    }
    queued.flush(t, now).await?;
    let Some((tail_key, tail)) = &b.tail else {
        return Ok(results);
    };
    let tail_item = t.get_item(tail_key, now).await?;
    let tail_ops = tail(&outcomes, tail_item.as_ref())?;
    let Write::Atomic(_, tail_ops) = Write::atomic(Vec::new(), tail_ops)? else {
        return Err(backend_msg("tail is not an atomic write"));
    };
    let mut tail_queue = Queued { rows: Vec::new() };
    apply_ops(t, &mut tail_queue, &mut overlay, last, &tail_ops, now).await?;
    tail_queue.flush(t, now).await?;
    Ok(results)
}

/// The write algorithm, identical for both backends. Returns a domain error (and the
/// caller rolls back) when a precondition does not hold. "Now" (for expiry) is read after
/// the revision is taken, i.e. after any wait for the write lock.
pub(crate) async fn apply<T: Tx>(t: &mut T, w: &Write) -> Result<Applied> {
    let revision = t.next_revision().await?;
    let now = now_ms();
    let wrote = |events: u64| Applied {
        revision,
        events,
        commit: true,
    };
    match w {
        Write::Update(row, expected) => {
            check_existing(&row.key, live(t.lookup(&row.key).await?, now), *expected)?;
            t.put(revision, 0, row, now).await?;
            Ok(wrote(1))
        }
        Write::Delete(key, expected) => {
            check_existing(key, live(t.lookup(key).await?, now), *expected)?;
            t.remove(revision, 0, key, now).await?;
            Ok(wrote(1))
        }
        Write::Atomic(conditions, ops) => {
            for (index, c) in conditions.iter().enumerate() {
                let current = live(t.lookup(condition_key(c)).await?, now);
                check_condition(index, c, current)?;
            }
            let mut idx: i32 = 0;
            for op in ops {
                let emitted = match op {
                    AtomicOp::Put(row) => {
                        t.put(revision, idx, row, now).await?;
                        true
                    }
                    AtomicOp::Delete(key) => t.remove(revision, idx, key, now).await?,
                };
                if emitted {
                    idx = idx.saturating_add(1);
                }
            }
            Ok(wrote(u64::try_from(idx).unwrap_or(0)))
        }
        Write::Sweep => {
            let n = t.sweep(revision, now).await?;
            Ok(Applied {
                revision,
                events: n,
                commit: n > 0,
            })
        }
    }
}

fn check_existing(key: &str, live: Option<i64>, expected: Option<i64>) -> Result<()> {
    match (live, expected) {
        (None, _) => Err(StoreError::NotFound(key.to_owned())),
        (Some(have), Some(want)) if have != want => {
            Err(StoreError::RevisionMismatch(key.to_owned()))
        }
        _ => Ok(()),
    }
}

/// Poll a future that is known never to suspend (the SQLite [`Tx`]) to completion on the
/// current thread. Returns `None` if it did suspend, which would be a bug.
pub(crate) fn run_ready<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// Most single writes taken into one group-commit transaction.
const MAX_GROUP: usize = 1024;

/// What runs a batch (each backend's shared state).
pub(crate) trait BatchWriter: Send + Sync + 'static {
    fn grouper(&self) -> &Grouper;
    fn write_batch(&self, b: Batch) -> impl Future<Output = Result<Vec<GroupResult>>> + Send;
}

type Waiting = (BatchWrite, tokio::sync::oneshot::Sender<Result<i64>>);

/// Group commit of single writes (`create`, `put`, `atomic_write`): concurrent callers'
/// writes are queued, and one batch at a time takes the whole queue into one transaction
/// ([`apply_batch`]), each write keeping its own conditions, revision and result. One
/// commit (one fsync on SQLite, one WAL flush on PostgreSQL) then serves many requests.
#[derive(Default)]
pub(crate) struct Grouper {
    queue: Mutex<Vec<Waiting>>,
    commit: std::sync::Arc<tokio::sync::Mutex<()>>,
}

fn stopped_write() -> StoreError {
    backend_msg("the group commit stopped before answering; try again")
}

/// The same error for every write of a batch whose transaction failed.
pub(crate) fn copy_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::AlreadyExists(k) => StoreError::AlreadyExists(k.clone()),
        StoreError::NotFound(k) => StoreError::NotFound(k.clone()),
        StoreError::RevisionMismatch(k) => StoreError::RevisionMismatch(k.clone()),
        StoreError::ConditionFailed { index, key } => StoreError::ConditionFailed {
            index: *index,
            key: key.clone(),
        },
        StoreError::Invalid(m) => StoreError::Invalid(m.clone()),
        StoreError::Backend(b) => backend_msg(b.to_string()),
    }
}

/// Queue `group` and commit it with whatever else is queued. The batch runs in a task of
/// its own, so a caller that goes away never cancels other callers' writes.
pub(crate) async fn group_write<S: BatchWriter>(
    s: &std::sync::Arc<S>,
    group: BatchWrite,
) -> Result<i64> {
    use tokio::sync::oneshot::error::TryRecvError;
    let (reply, mut rx) = tokio::sync::oneshot::channel();
    s.grouper()
        .queue
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((group, reply));
    loop {
        match rx.try_recv() {
            Ok(r) => return r,
            Err(TryRecvError::Closed) => return Err(stopped_write()),
            Err(TryRecvError::Empty) => {}
        }
        let guard = s.grouper().commit.clone().lock_owned().await;
        let batch: Vec<Waiting> = {
            let mut q = s.grouper().queue.lock().unwrap_or_else(|e| e.into_inner());
            let n = q.len().min(MAX_GROUP);
            q.drain(..n).collect()
        };
        if batch.is_empty() {
            // An earlier batch took this write and has answered by now.
            drop(guard);
            return rx.await.unwrap_or_else(|_| Err(stopped_write()));
        }
        let shared = s.clone();
        let done = tokio::spawn(async move {
            let (groups, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let result = match Batch::new(groups, None) {
                Ok(b) => shared.write_batch(b).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(results) => {
                    for (reply, r) in replies.into_iter().zip(results) {
                        let _ = reply.send(r);
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(copy_error(&e)));
                    }
                }
            }
            drop(guard);
        });
        if done.await.is_err() {
            return Err(stopped_write());
        }
    }
}

/// `create` as a group: fails with `AlreadyExists` when a live item has the key.
pub(crate) async fn group_create<S: BatchWriter>(
    s: &std::sync::Arc<S>,
    key: &str,
    value: Vec<u8>,
    expires: Option<OffsetDateTime>,
) -> Result<i64> {
    validate_key(key)?;
    let group = BatchWrite {
        conditions: vec![Condition::NotExists(key.to_owned())],
        ops: vec![Op::Put {
            key: key.to_owned(),
            value,
            expires,
        }],
    };
    match group_write(s, group).await {
        Err(StoreError::ConditionFailed { .. }) => Err(StoreError::AlreadyExists(key.to_owned())),
        other => other,
    }
}

/// Backoff before retry number `attempt` (1-based) of a conflicting write.
pub(crate) fn retry_delay(attempt: u32) -> Duration {
    Duration::from_millis(5u64 << attempt.min(6))
}

/// Background tasks of one backend instance and the signal that stops them. Dropping it
/// (with the backend) also stops them, because the shutdown sender goes away.
pub(crate) struct Background {
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Background {
    pub(crate) fn new() -> Self {
        Background {
            shutdown: watch::Sender::new(false),
            tasks: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub(crate) fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(fut);
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(handle);
    }

    /// Signal every task to stop and wait for them.
    pub(crate) async fn close(&self) {
        self.shutdown.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            if let Err(e) = t.await {
                tracing::warn!(error = %e, "dt-store background task failed");
            }
        }
    }
}

/// Resolves once shutdown is requested (or the owning backend was dropped).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Run `tick` every `every` until shutdown.
pub(crate) fn spawn_periodic<F, Fut>(bg: &Background, every: Duration, mut tick: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let mut stop = bg.subscribe();
    bg.spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            tokio::select! {
                biased;
                () = stopped(&mut stop) => return,
                _ = interval.tick() => tick().await,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successor_of_prefixes() {
        assert_eq!(prefix_successor(""), None);
        assert_eq!(prefix_successor("a").as_deref(), Some("b"));
        assert_eq!(prefix_successor("/a/").as_deref(), Some("/a0"));
        assert_eq!(prefix_successor("a%").as_deref(), Some("a&"));
        assert_eq!(prefix_successor("x\u{D7FF}").as_deref(), Some("x\u{E000}"));
        assert_eq!(prefix_successor("x\u{10FFFF}").as_deref(), Some("y"));
        assert_eq!(prefix_successor("\u{10FFFF}\u{10FFFF}"), None);
        assert_eq!(prefix_successor("\u{7F}").as_deref(), Some("\u{80}"));
    }

    #[test]
    fn successor_bounds_every_extension() {
        for p in ["a", "/a/", "é", "\u{7F}", "z\u{FFFF}"] {
            let s = prefix_successor(p).expect("has successor");
            for ext in ["", "\0", "zz", "\u{10FFFF}\u{10FFFF}", "é"] {
                let k = format!("{p}{ext}");
                assert!(k.as_str() >= p && k < s, "{k:?} not in [{p:?}, {s:?})");
            }
        }
        // Something just outside the prefix is not below the bound.
        assert!("/a0" >= prefix_successor("/a/").expect("bound").as_str());
        assert!("/ab" >= prefix_successor("/a/").expect("bound").as_str());
    }

    #[test]
    fn bounds_pick_tighter_lower() {
        let b = range_bounds("/p/", Some("/p/c"), 0).expect("valid");
        assert_eq!(
            (b.lower.as_str(), b.lower_inclusive, b.limit),
            ("/p/c", false, 1)
        );
        let b = range_bounds("/p/", Some("/a"), 5000).expect("valid");
        assert!(range_bounds("a\0", None, 1).is_err());
        assert_eq!(
            (b.lower.as_str(), b.lower_inclusive, b.limit),
            ("/p/", true, MAX_PAGE)
        );
    }

    #[test]
    fn millis_round_trip() {
        let t =
            OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).expect("valid");
        let ms = to_ms(t).expect("in range");
        assert_eq!(ms, 1_700_000_000_123);
        assert_eq!(
            from_ms(ms).expect("valid").unix_timestamp_nanos(),
            1_700_000_000_123_000_000
        );
        let before = OffsetDateTime::from_unix_timestamp_nanos(-1).expect("valid");
        assert_eq!(to_ms(before).expect("in range"), -1);
    }

    #[test]
    fn conditions() {
        assert!(check_condition(0, &Condition::Exists("k".into()), Some(3)).is_ok());
        assert!(check_condition(0, &Condition::NotExists("k".into()), None).is_ok());
        assert!(check_condition(0, &Condition::Revision("k".into(), 3), Some(3)).is_ok());
        match check_condition(2, &Condition::Revision("k".into(), 3), Some(4)) {
            Err(StoreError::ConditionFailed { index: 2, key }) => assert_eq!(key, "k"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(check_condition(0, &Condition::Exists("k".into()), None).is_err());
    }

    #[test]
    fn liveness() {
        let row = |expires| {
            Some(Stored {
                revision: 7,
                expires,
            })
        };
        assert_eq!(live(row(None), 100), Some(7));
        assert_eq!(live(row(Some(101)), 100), Some(7));
        assert_eq!(live(row(Some(100)), 100), None);
        assert_eq!(live(None, 100), None);
    }

    #[test]
    fn keys_validated() {
        assert!(validate_key("").is_err());
        assert!(validate_key("a\0b").is_err());
        assert!(validate_key("/a/b").is_ok());
    }

    #[test]
    fn ready_futures_run() {
        assert_eq!(run_ready(async { 5 }), Some(5));
        assert_eq!(run_ready(std::future::pending::<()>()), None);
    }
}
