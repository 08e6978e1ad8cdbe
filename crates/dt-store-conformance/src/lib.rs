//! One test suite every [`dt_store::Backend`] must pass (dev-only).
//!
//! Why a crate of its own: the suite is test code, so it must not be compiled into the
//! production `dt-store` library, yet both backends' integration tests (and any future
//! backend) run the same cases. It lives outside `dt-testkit` because it links `dt-store`
//! (rusqlite, tokio-postgres, rustls): in `dt-testkit` it would make every crate whose
//! tests use the kit build the storage drivers, and would keep `dt-store`'s tests from ever
//! using the kit without a dependency cycle. It uses only `dt-store`'s public API.
//!
//! Each case is a `pub async fn(Factory) -> Outcome`. The [`Factory`] opens a new backend
//! instance on the *same* fresh database each time it is called (so cases can simulate two
//! auth servers), with the [`Tuning`] the case chooses. Cases report problems as
//! [`Failure`] values instead of panicking.
//!
//! A backend's integration test provides a setup function returning an [`Env`] (a factory
//! for a fresh database plus its cleanup) and expands [`conformance_tests!`] to get one
//! `#[tokio::test]` per case (the test crate needs `tokio` with its `macros` feature):
//!
//! ```ignore
//! async fn setup() -> Result<Env, Failure> { /* create a fresh database */ }
//! dt_store_conformance::conformance_tests!(setup);
//! ```
//!
//! [`run_case`] closes every instance the case opened and runs the cleanup even when the
//! case fails, panics or times out.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use time::OffsetDateTime;

use dt_store::{
    Backend, BatchTail, BatchWrite, Condition, EventKind, Item, Op, Page, StoreError, Tuning,
    WatchEvent, Watcher,
};

/// Opens one more backend instance on the case's database.
pub type Factory =
    Arc<dyn Fn(Tuning) -> BoxFuture<'static, dt_store::Result<Arc<dyn Backend>>> + Send + Sync>;

/// A case's result.
pub type Outcome = Result<(), Failure>;

/// A case function, boxed.
pub type CaseFn = fn(Factory) -> BoxFuture<'static, Outcome>;

/// A fresh database for one case.
pub struct Env {
    /// Opens instances on the fresh database.
    pub factory: Factory,
    /// Run after the case and after all its instances were closed (e.g. drop the database).
    pub cleanup: Option<BoxFuture<'static, ()>>,
}

/// Why a case failed. `Debug` prints the plain message so a `#[test]` returning
/// `Result<(), Failure>` reports it readably.
pub struct Failure(String);

impl Failure {
    /// A failure with this message.
    pub fn new(msg: impl Into<String>) -> Self {
        Failure(msg.into())
    }
}

impl std::fmt::Debug for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(Failure(format!("{}:{}: {}", file!(), line!(), format!($($arg)+))));
        }
    };
}

macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($arg:tt)+) => {
        match (&$left, &$right) {
            (l, r) => {
                if l != r {
                    return Err(Failure(format!(
                        "{}:{}: {}\n  left: {:?}\n right: {:?}",
                        file!(), line!(), format!($($arg)+), l, r
                    )));
                }
            }
        }
    };
}

/// Attach context to a storage result.
trait Ctx<T> {
    fn ctx(self, what: &str) -> Result<T, Failure>;
}

impl<T> Ctx<T> for dt_store::Result<T> {
    fn ctx(self, what: &str) -> Result<T, Failure> {
        self.map_err(|e| Failure(format!("{what}: unexpected error: {e} ({e:?})")))
    }
}

/// Short background periods so cases finish quickly.
pub fn fast_tuning() -> Tuning {
    Tuning {
        sweep_every: Duration::from_millis(50),
        poll_every: Duration::from_millis(50),
        keep_events_for: Duration::from_secs(600),
        watcher_buffer: 1024,
        unwatched_prefixes: Vec::new(),
    }
}

const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
const CASE_TIMEOUT: Duration = Duration::from_secs(90);

/// Every case, by name.
pub fn cases() -> Vec<(&'static str, CaseFn)> {
    vec![
        ("basics", |f| Box::pin(basics(f))),
        ("crud_and_revisions", |f| Box::pin(crud_and_revisions(f))),
        ("create_conflicts", |f| Box::pin(create_conflicts(f))),
        ("revision_checks", |f| Box::pin(revision_checks(f))),
        ("atomic_writes", |f| Box::pin(atomic_writes(f))),
        ("range_prefixes", |f| Box::pin(range_prefixes(f))),
        ("range_pagination", |f| Box::pin(range_pagination(f))),
        ("expiry", |f| Box::pin(expiry(f))),
        ("explicit_sweep", |f| Box::pin(explicit_sweep(f))),
        ("watch_basics", |f| Box::pin(watch_basics(f))),
        ("watch_concurrent_writers", |f| {
            Box::pin(watch_concurrent_writers(f))
        }),
        ("slow_watcher_is_closed", |f| {
            Box::pin(slow_watcher_is_closed(f))
        }),
        ("two_instances_watch", |f| Box::pin(two_instances_watch(f))),
        ("concurrent_create_race", |f| {
            Box::pin(concurrent_create_race(f))
        }),
        ("concurrent_open", |f| Box::pin(concurrent_open(f))),
        ("reopen_persists", |f| Box::pin(reopen_persists(f))),
        ("close_ends_watchers", |f| Box::pin(close_ends_watchers(f))),
        ("batch_writes", |f| Box::pin(batch_writes(f))),
        ("concurrent_batches", |f| Box::pin(concurrent_batches(f))),
        ("grouped_single_writes", |f| {
            Box::pin(grouped_single_writes(f))
        }),
        ("unwatched_prefixes", |f| Box::pin(unwatched_prefixes(f))),
        ("unwatched_commits_then_watched", |f| {
            Box::pin(unwatched_commits_then_watched(f))
        }),
        ("batch_many_rows", |f| Box::pin(batch_many_rows(f))),
        ("watch_values_by_prefix", |f| {
            Box::pin(watch_values_by_prefix(f))
        }),
        ("indexed_reads", |f| Box::pin(indexed_reads(f))),
        ("counters", |f| Box::pin(counters(f))),
        ("counters_expire", |f| Box::pin(counters_expire(f))),
        ("counters_race", |f| Box::pin(counters_race(f))),
    ]
}

/// Set up a fresh database, run one case (with a timeout, catching panics), close every
/// instance it opened, and clean up.
pub async fn run_case<S>(setup: S, case: CaseFn) -> Outcome
where
    S: Future<Output = Result<Env, Failure>>,
{
    let env = setup.await?;
    let opened: Arc<Mutex<Vec<Arc<dyn Backend>>>> = Arc::default();
    let inner = env.factory.clone();
    let record = opened.clone();
    let factory: Factory = Arc::new(move |tuning| {
        let inner = inner.clone();
        let record = record.clone();
        Box::pin(async move {
            let backend = inner(tuning).await?;
            record
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(backend.clone());
            Ok(backend)
        })
    });
    let result = match tokio::spawn(tokio::time::timeout(CASE_TIMEOUT, case(factory))).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(_)) => Err(Failure(format!(
            "case did not finish within {CASE_TIMEOUT:?}"
        ))),
        Err(e) => Err(Failure(format!("case panicked: {e}"))),
    };
    let backends = std::mem::take(&mut *opened.lock().unwrap_or_else(|e| e.into_inner()));
    for b in backends {
        b.close().await;
    }
    if let Some(cleanup) = env.cleanup {
        cleanup.await;
    }
    result
}

/// Run a case by name (see [`cases`]).
pub async fn run_named<S>(setup: S, name: &str) -> Outcome
where
    S: Future<Output = Result<Env, Failure>>,
{
    let case = cases()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, c)| c);
    match case {
        Some(case) => run_case(setup, case).await,
        None => Err(Failure(format!("no conformance case named {name:?}"))),
    }
}

/// Run every case in turn, each on a fresh database from `setup`; stops at the first
/// failure.
pub async fn run_all<S, Fut>(setup: S) -> Outcome
where
    S: Fn() -> Fut,
    Fut: Future<Output = Result<Env, Failure>>,
{
    for (name, case) in cases() {
        run_case(setup(), case)
            .await
            .map_err(|f| Failure(format!("{name}: {f}")))?;
    }
    Ok(())
}

/// Expand to one `#[tokio::test]` per conformance case, each on a fresh database from
/// `$setup` (an `async fn() -> Result<Env, Failure>`), plus a test that the list here
/// matches [`cases`](crate::cases).
#[macro_export]
macro_rules! conformance_tests {
    ($setup:path) => {
        $crate::conformance_tests!(@cases $setup;
            basics,
            crud_and_revisions,
            create_conflicts,
            revision_checks,
            atomic_writes,
            range_prefixes,
            range_pagination,
            expiry,
            explicit_sweep,
            watch_basics,
            watch_concurrent_writers,
            slow_watcher_is_closed,
            two_instances_watch,
            concurrent_create_race,
            concurrent_open,
            reopen_persists,
            close_ends_watchers,
            batch_writes,
            concurrent_batches,
            grouped_single_writes,
            unwatched_prefixes,
            unwatched_commits_then_watched,
            batch_many_rows,
            watch_values_by_prefix,
            indexed_reads,
            counters,
            counters_expire,
            counters_race,
        );
    };
    (@cases $setup:path; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() -> ::std::result::Result<(), $crate::Failure> {
                $crate::run_named($setup(), stringify!($case)).await
            }
        )*

        #[test]
        fn conformance_case_list_is_complete() {
            let listed: ::std::vec::Vec<&str> = ::std::vec![$(stringify!($case)),*];
            let all: ::std::vec::Vec<&str> =
                $crate::cases().into_iter().map(|(n, _)| n).collect();
            assert_eq!(listed, all);
        }
    };
}

// ---------------------------------------------------------------------------------------
// helpers

async fn open(f: &Factory, tuning: Tuning) -> Result<Arc<dyn Backend>, Failure> {
    f(tuning).await.ctx("opening a backend instance")
}

fn fail(msg: impl Into<String>) -> Failure {
    Failure(msg.into())
}

async fn next(w: &mut Watcher) -> Result<WatchEvent, Failure> {
    match tokio::time::timeout(EVENT_TIMEOUT, w.recv()).await {
        Ok(Some(ev)) => Ok(ev),
        Ok(None) => Err(fail("the watch ended unexpectedly")),
        Err(_) => Err(fail(format!("no watch event within {EVENT_TIMEOUT:?}"))),
    }
}

async fn init(w: &mut Watcher) -> Result<i64, Failure> {
    match next(w).await? {
        WatchEvent::Init { revision } => Ok(revision),
        other => Err(fail(format!("expected Init first, got {other:?}"))),
    }
}

async fn change(w: &mut Watcher) -> Result<(EventKind, Item), Failure> {
    match next(w).await? {
        WatchEvent::Change { kind, item } => Ok((kind, item)),
        other => Err(fail(format!("expected a change, got {other:?}"))),
    }
}

/// Expect exactly these changes next, in order: (kind, key, revision).
async fn expect_changes(w: &mut Watcher, want: &[(EventKind, &str, i64)]) -> Outcome {
    for (i, (kind, key, revision)) in want.iter().enumerate() {
        let (k, item) = change(w).await?;
        ensure_eq!(
            (k, item.key.as_str(), item.revision),
            (*kind, *key, *revision),
            "change #{i}"
        );
    }
    Ok(())
}

fn keys(page: &Page) -> Vec<&str> {
    page.items.iter().map(|i| i.key.as_str()).collect()
}

fn truncate_ms(t: OffsetDateTime) -> Result<OffsetDateTime, Failure> {
    let nanos = t.unix_timestamp_nanos().div_euclid(1_000_000) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|e| fail(e.to_string()))
}

fn in_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::now_utc() + time::Duration::milliseconds(ms)
}

async fn get_value(b: &Arc<dyn Backend>, key: &str) -> Result<Option<Vec<u8>>, Failure> {
    Ok(b.get(key)
        .await
        .ctx(&format!("get {key}"))?
        .map(|i| i.value))
}

// ---------------------------------------------------------------------------------------
// cases

/// Kind, schema version, input validation.
pub async fn basics(f: Factory) -> Outcome {
    let b = open(&f, fast_tuning()).await?;
    ensure!(
        ["sqlite", "postgres"].contains(&b.kind()),
        "unexpected kind {}",
        b.kind()
    );
    let v = b.schema_version().await.ctx("schema_version")?;
    ensure!(v >= 1, "schema version {v} after migrations");
    ensure!(
        b.get("/missing").await.ctx("get")?.is_none(),
        "missing key found"
    );
    ensure!(
        matches!(b.get("").await, Err(StoreError::Invalid(_))),
        "empty key accepted by get"
    );
    ensure!(
        matches!(b.put("", vec![], None).await, Err(StoreError::Invalid(_))),
        "empty key accepted by put"
    );
    ensure!(
        matches!(
            b.create("a\0b", vec![], None).await,
            Err(StoreError::Invalid(_))
        ),
        "NUL accepted"
    );
    let bad = b.range("/a\0", None, 10).await;
    ensure!(
        matches!(bad, Err(StoreError::Invalid(_))),
        "NUL accepted by range: {bad:?}"
    );
    let bad = b
        .atomic_write(vec![], vec![Op::Delete { key: String::new() }])
        .await;
    ensure!(
        matches!(bad, Err(StoreError::Invalid(_))),
        "empty key accepted by atomic_write: {bad:?}"
    );
    Ok(())
}

/// Create/get/put/update/delete; revisions strictly increase across all writes.
pub async fn crud_and_revisions(f: Factory) -> Outcome {
    let b = open(&f, fast_tuning()).await?;
    let r1 = b
        .create("/crud/a", b"1".to_vec(), None)
        .await
        .ctx("create a")?;
    ensure!(r1 > 0, "revision {r1} not positive");
    let r2 = b.put("/crud/b", b"b".to_vec(), None).await.ctx("put b")?;
    let r3 = b
        .update("/crud/a", b"2".to_vec(), None, Some(r1))
        .await
        .ctx("update a")?;
    ensure!(
        r1 < r2 && r2 < r3,
        "revisions not increasing: {r1} {r2} {r3}"
    );

    let a = b
        .get("/crud/a")
        .await
        .ctx("get a")?
        .ok_or_else(|| fail("a missing"))?;
    ensure_eq!(
        a,
        Item {
            key: "/crud/a".into(),
            value: b"2".to_vec(),
            revision: r3,
            expires: None
        },
        "a"
    );

    let r4 = b.put("/crud/a", b"3".to_vec(), None).await.ctx("put a")?;
    ensure!(r4 > r3, "put revision {r4} <= {r3}");
    let r5 = b
        .update("/crud/a", b"4".to_vec(), None, None)
        .await
        .ctx("unconditional update")?;
    ensure!(r5 > r4, "update revision {r5} <= {r4}");
    b.delete("/crud/a", Some(r5)).await.ctx("delete a")?;
    ensure!(
        b.get("/crud/a").await.ctx("get a")?.is_none(),
        "a still there after delete"
    );
    let r6 = b
        .put("/crud/a", b"5".to_vec(), None)
        .await
        .ctx("put a again")?;
    ensure!(
        r6 > r5 + 1,
        "the delete did not take a revision: {r5} then {r6}"
    );

    // Values are opaque bytes.
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    b.put("/crud/bytes", all_bytes.clone(), None)
        .await
        .ctx("put bytes")?;
    ensure_eq!(
        get_value(&b, "/crud/bytes").await?,
        Some(all_bytes),
        "binary round trip"
    );
    b.put("/crud/empty", Vec::new(), None)
        .await
        .ctx("put empty")?;
    ensure_eq!(
        get_value(&b, "/crud/empty").await?,
        Some(Vec::new()),
        "empty value"
    );
    let big: Vec<u8> = (0..(1usize << 20)).map(|i| (i % 251) as u8).collect();
    b.put("/crud/big", big.clone(), None).await.ctx("put big")?;
    ensure!(
        get_value(&b, "/crud/big").await? == Some(big),
        "1 MiB value round trip"
    );

    // Unicode keys and expiry instants (millisecond precision).
    let exp = in_ms(3_600_000);
    let r7 = b
        .put("/crud/ключ/é", b"u".to_vec(), Some(exp))
        .await
        .ctx("put unicode")?;
    let item = b
        .get("/crud/ключ/é")
        .await
        .ctx("get unicode")?
        .ok_or_else(|| fail("unicode key missing"))?;
    ensure_eq!(item.revision, r7, "revision");
    ensure_eq!(item.expires, Some(truncate_ms(exp)?), "expiry round trip");
    Ok(())
}

/// `create` fails on a live key and leaves it unchanged.
pub async fn create_conflicts(f: Factory) -> Outcome {
    let b = open(&f, fast_tuning()).await?;
    let r1 = b
        .create("/cc/k", b"first".to_vec(), None)
        .await
        .ctx("create")?;
    match b.create("/cc/k", b"second".to_vec(), None).await {
        Err(StoreError::AlreadyExists(k)) => ensure_eq!(k, "/cc/k", "key in error"),
        other => return Err(fail(format!("second create: {other:?}"))),
    }
    let item = b
        .get("/cc/k")
        .await
        .ctx("get")?
        .ok_or_else(|| fail("missing"))?;
    ensure_eq!(
        (item.value.as_slice(), item.revision),
        (&b"first"[..], r1),
        "unchanged after conflict"
    );
    b.delete("/cc/k", None).await.ctx("delete")?;
    let r2 = b
        .create("/cc/k", b"third".to_vec(), None)
        .await
        .ctx("create after delete")?;
    ensure!(r2 > r1, "revision did not increase");
    Ok(())
}

/// update/delete on missing keys and with stale revisions.
pub async fn revision_checks(f: Factory) -> Outcome {
    let b = open(&f, fast_tuning()).await?;
    let r = b.update("/rc/missing", vec![1], None, None).await;
    ensure!(
        matches!(&r, Err(StoreError::NotFound(k)) if k == "/rc/missing"),
        "update missing: {r:?}"
    );
    let r = b.delete("/rc/missing", None).await;
    ensure!(
        matches!(&r, Err(StoreError::NotFound(k)) if k == "/rc/missing"),
        "delete missing: {r:?}"
    );
    let r = b.update("/rc/missing", vec![1], None, Some(1)).await;
    ensure!(
        matches!(r, Err(StoreError::NotFound(_))),
        "update missing with revision: {r:?}"
    );

    let r1 = b.put("/rc/k", b"v1".to_vec(), None).await.ctx("put")?;
    let r2 = b.put("/rc/k", b"v2".to_vec(), None).await.ctx("put")?;
    let r = b.update("/rc/k", b"v3".to_vec(), None, Some(r1)).await;
    ensure!(
        matches!(&r, Err(StoreError::RevisionMismatch(k)) if k == "/rc/k"),
        "stale update: {r:?}"
    );
    ensure_eq!(
        get_value(&b, "/rc/k").await?,
        Some(b"v2".to_vec()),
        "value after failed update"
    );
    let r = b.delete("/rc/k", Some(r1)).await;
    ensure!(
        matches!(&r, Err(StoreError::RevisionMismatch(k)) if k == "/rc/k"),
        "stale delete: {r:?}"
    );
    ensure!(
        b.get("/rc/k").await.ctx("get")?.is_some(),
        "deleted despite stale revision"
    );
    let r3 = b
        .update("/rc/k", b"v3".to_vec(), None, Some(r2))
        .await
        .ctx("update")?;
    b.delete("/rc/k", Some(r3)).await.ctx("delete")?;
    Ok(())
}

/// Conditions and ops of one atomic write are all-or-nothing and share a revision.
pub async fn atomic_writes(f: Factory) -> Outcome {
    let b = open(&f, fast_tuning()).await?;
    let put = |k: &str, v: &[u8]| Op::Put {
        key: k.into(),
        value: v.to_vec(),
        expires: None,
    };
    let r = b
        .atomic_write(
            vec![
                Condition::NotExists("/aw/a".into()),
                Condition::NotExists("/aw/b".into()),
            ],
            vec![put("/aw/a", b"a"), put("/aw/b", b"b"), put("/aw/c", b"c")],
        )
        .await
        .ctx("first atomic write")?;
    for k in ["/aw/a", "/aw/b", "/aw/c"] {
        let item = b
            .get(k)
            .await
            .ctx("get")?
            .ok_or_else(|| fail(format!("{k} missing")))?;
        ensure_eq!(item.revision, r, "{k} revision");
    }

    // The third condition fails: nothing is written, and the error names index 2.
    let res = b
        .atomic_write(
            vec![
                Condition::Exists("/aw/a".into()),
                Condition::Revision("/aw/b".into(), r),
                Condition::NotExists("/aw/b".into()),
            ],
            vec![
                put("/aw/a", b"changed"),
                Op::Delete {
                    key: "/aw/c".into(),
                },
                put("/aw/new", b"n"),
            ],
        )
        .await;
    match res {
        Err(StoreError::ConditionFailed { index, key }) => {
            ensure_eq!((index, key.as_str()), (2, "/aw/b"), "failure")
        }
        other => return Err(fail(format!("expected ConditionFailed, got {other:?}"))),
    }
    ensure_eq!(
        get_value(&b, "/aw/a").await?,
        Some(b"a".to_vec()),
        "a after failed write"
    );
    ensure!(
        b.get("/aw/c").await.ctx("get c")?.is_some(),
        "c deleted by failed write"
    );
    ensure!(
        b.get("/aw/new").await.ctx("get new")?.is_none(),
        "new written by failed write"
    );

    let res = b
        .atomic_write(
            vec![Condition::Revision("/aw/a".into(), r + 1000)],
            vec![put("/aw/a", b"x")],
        )
        .await;
    ensure!(
        matches!(res, Err(StoreError::ConditionFailed { index: 0, .. })),
        "wrong revision: {res:?}"
    );
    let res = b
        .atomic_write(vec![Condition::Revision("/aw/none".into(), r)], vec![])
        .await;
    ensure!(
        matches!(res, Err(StoreError::ConditionFailed { index: 0, .. })),
        "revision of missing: {res:?}"
    );
    let res = b
        .atomic_write(vec![Condition::Exists("/aw/none".into())], vec![])
        .await;
    ensure!(
        matches!(res, Err(StoreError::ConditionFailed { index: 0, .. })),
        "exists of missing: {res:?}"
    );

    // Deleting a missing key is fine; every op is applied.
    let r2 = b
        .atomic_write(
            vec![
                Condition::Revision("/aw/a".into(), r),
                Condition::Exists("/aw/c".into()),
            ],
            vec![
                Op::Delete {
                    key: "/aw/none".into(),
                },
                Op::Delete {
                    key: "/aw/c".into(),
                },
                put("/aw/a", b"a2"),
            ],
        )
        .await
        .ctx("second atomic write")?;
    ensure!(r2 > r, "revision did not increase");
    ensure!(
        b.get("/aw/c").await.ctx("get c")?.is_none(),
        "c not deleted"
    );
    let a = b
        .get("/aw/a")
        .await
        .ctx("get a")?
        .ok_or_else(|| fail("a missing"))?;
    ensure_eq!(
        (a.value.as_slice(), a.revision),
        (&b"a2"[..], r2),
        "a after second write"
    );

    // Conditions only: succeeds and returns a revision.
    let r3 = b
        .atomic_write(vec![Condition::Exists("/aw/a".into())], vec![])
        .await
        .ctx("conditions only")?;
    ensure!(r3 >= r2, "conditions-only revision went backwards");
    Ok(())
}

/// Prefix matching is literal (no LIKE wildcards) and bytewise.
pub async fn range_prefixes(f: Factory) -> Outcome {
    let b = open(&f, fast_tuning()).await?;
    let all = [
        "/a",
        "/a/",
        "/a/1",
        "/a/2",
        "/a/\u{10FFFF}",
        "/a/é",
        "/ab",
        "/a0",
        "/a%",
        "/a%/x",
        "/a_",
        "/a_/y",
        "/aX/z",
        "/a\\",
        "/a\\/w",
        "/b/1",
        "/é",
    ];
    let ops = all
        .iter()
        .map(|k| Op::Put {
            key: (*k).into(),
            value: k.as_bytes().to_vec(),
            expires: None,
        })
        .collect();
    b.atomic_write(vec![], ops).await.ctx("seed")?;

    let expect = |prefix: &str| {
        let mut v: Vec<&str> = all
            .iter()
            .copied()
            .filter(|k| k.starts_with(prefix))
            .collect();
        v.sort_unstable();
        v
    };
    for prefix in [
        "/a/", "/a%", "/a_", "/ab", "/a", "/a\\", "/", "", "/é", "/zzz", "/a/é",
    ] {
        let page = b
            .range(prefix, None, 1000)
            .await
            .ctx(&format!("range {prefix:?}"))?;
        ensure_eq!(keys(&page), expect(prefix), "range {prefix:?}");
        ensure!(page.next.is_none(), "range {prefix:?} has a next page");
    }
    for item in b.range("", None, 1000).await.ctx("range all")?.items {
        ensure_eq!(
            item.value,
            item.key.as_bytes().to_vec(),
            "value of {}",
            item.key
        );
    }

    // start_after inside, before and after the prefix.
    let page = b.range("/a/", Some("/a/1"), 1000).await.ctx("after /a/1")?;
    ensure_eq!(
        keys(&page),
        vec!["/a/2", "/a/é", "/a/\u{10FFFF}"],
        "after /a/1"
    );
    let page = b.range("/a/", Some("/"), 1000).await.ctx("after /")?;
    ensure_eq!(keys(&page), expect("/a/"), "start_after before the prefix");
    let page = b.range("/a/", Some("/b"), 1000).await.ctx("after /b")?;
    ensure!(
        page.items.is_empty() && page.next.is_none(),
        "start_after past the prefix: {page:?}"
    );

    // limit is clamped to 1..=1000.
    let page = b.range("/a/", None, 0).await.ctx("limit 0")?;
    ensure_eq!(keys(&page), vec!["/a/"], "limit 0 behaves as 1");
    ensure_eq!(page.next.as_deref(), Some("/a/"), "next after one item");
    Ok(())
}

/// Paging visits every key once, in order; `next` is `None` exactly on the last page.
pub async fn range_pagination(f: Factory) -> Outcome {
    let b = open(&f, fast_tuning()).await?;
    let want: Vec<String> = (0..130).map(|i| format!("/pg/{i:04}")).collect();
    let mut ops: Vec<Op> = want
        .iter()
        .map(|k| Op::Put {
            key: k.clone(),
            value: vec![1],
            expires: None,
        })
        .collect();
    ops.push(Op::Put {
        key: "/pg".into(),
        value: vec![],
        expires: None,
    });
    ops.push(Op::Put {
        key: "/pg0".into(),
        value: vec![],
        expires: None,
    });
    ops.push(Op::Put {
        key: "/ph/0".into(),
        value: vec![],
        expires: None,
    });
    // Expired items are skipped without ending the page early.
    for i in 0..20 {
        ops.push(Op::Put {
            key: format!("/pg/{:04}x", i * 5),
            value: vec![],
            expires: Some(in_ms(-1000)),
        });
    }
    b.atomic_write(vec![], ops).await.ctx("seed")?;

    let mut seen: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = b.range("/pg/", after.as_deref(), 7).await.ctx("page")?;
        pages += 1;
        ensure!(page.items.len() <= 7, "page larger than limit");
        seen.extend(page.items.iter().map(|i| i.key.clone()));
        match page.next {
            Some(n) => {
                ensure_eq!(Some(&n), seen.last(), "next is the last key of the page");
                after = Some(n);
            }
            None => break,
        }
        ensure!(pages < 100, "pagination does not end");
    }
    ensure_eq!(seen, want, "all keys exactly once, in order");
    ensure_eq!(pages, 19, "130 keys in pages of 7");

    // An exact multiple: the last full page has no `next`.
    let first = b.range("/pg/00", None, 50).await.ctx("first 50")?;
    ensure_eq!(first.items.len(), 50, "first page");
    let second = b
        .range("/pg/00", first.next.as_deref(), 50)
        .await
        .ctx("second 50")?;
    ensure_eq!(
        (second.items.len(), second.next.as_deref()),
        (50, None),
        "exact multiple"
    );

    // Limits above 1000 are clamped.
    let many: Vec<Op> = (0..1005)
        .map(|i| Op::Put {
            key: format!("/many/{i:05}"),
            value: vec![],
            expires: None,
        })
        .collect();
    b.atomic_write(vec![], many).await.ctx("seed many")?;
    let page = b.range("/many/", None, 5000).await.ctx("range many")?;
    ensure_eq!(page.items.len(), 1000, "clamped to 1000");
    ensure_eq!(page.next.as_deref(), Some("/many/00999"), "next after 1000");
    let rest = b
        .range("/many/", page.next.as_deref(), 5000)
        .await
        .ctx("rest")?;
    ensure_eq!(
        (rest.items.len(), rest.next.as_deref()),
        (5, None),
        "remaining 5"
    );
    Ok(())
}

/// Expired items are invisible to reads and conditions, and the sweeper deletes them with
/// a `Delete` event.
pub async fn expiry(f: Factory) -> Outcome {
    let b = open(&f, fast_tuning()).await?;
    let exp = in_ms(400);
    let r_short = b
        .put("/exp/short", b"s".to_vec(), Some(exp))
        .await
        .ctx("put short")?;
    b.put("/exp/long", b"l".to_vec(), Some(in_ms(3_600_000)))
        .await
        .ctx("put long")?;
    b.put("/exp-past/k", b"p".to_vec(), Some(in_ms(-1000)))
        .await
        .ctx("put past")?;

    let short = b
        .get("/exp/short")
        .await
        .ctx("get short")?
        .ok_or_else(|| fail("short invisible too early"))?;
    ensure_eq!(short.expires, Some(truncate_ms(exp)?), "expiry");

    // Already expired at write time: invisible everywhere; create succeeds.
    ensure!(
        b.get("/exp-past/k").await.ctx("get past")?.is_none(),
        "expired item visible"
    );
    ensure!(
        b.range("/exp-past/", None, 10)
            .await
            .ctx("range")?
            .items
            .is_empty(),
        "expired item in range"
    );
    let res = b
        .atomic_write(vec![Condition::Exists("/exp-past/k".into())], vec![])
        .await;
    ensure!(
        matches!(res, Err(StoreError::ConditionFailed { index: 0, .. })),
        "Exists(expired): {res:?}"
    );
    b.atomic_write(vec![Condition::NotExists("/exp-past/k".into())], vec![])
        .await
        .ctx("NotExists(expired)")?;
    let res = b.update("/exp-past/k", vec![], None, None).await;
    ensure!(
        matches!(res, Err(StoreError::NotFound(_))),
        "update expired: {res:?}"
    );
    let res = b.delete("/exp-past/k", None).await;
    ensure!(
        matches!(res, Err(StoreError::NotFound(_))),
        "delete expired: {res:?}"
    );
    b.create("/exp-past/k", b"new".to_vec(), None)
        .await
        .ctx("create over expired")?;
    ensure_eq!(
        get_value(&b, "/exp-past/k").await?,
        Some(b"new".to_vec()),
        "recreated"
    );

    let mut w = b.watch(vec!["/exp/".into()]).await.ctx("watch")?;
    let start = init(&mut w).await?;
    ensure!(
        start >= r_short,
        "Init {start} before the last write {r_short}"
    );
    let (kind, item) = change(&mut w).await?;
    ensure_eq!(
        (kind, item.key.as_str()),
        (EventKind::Delete, "/exp/short"),
        "sweeper delete event"
    );
    ensure!(
        item.revision > start && item.value.is_empty(),
        "delete event {item:?}"
    );
    ensure!(OffsetDateTime::now_utc() >= exp, "swept before expiry");

    ensure!(
        b.get("/exp/short").await.ctx("get short")?.is_none(),
        "visible after expiry"
    );
    ensure_eq!(
        keys(&b.range("/exp/", None, 10).await.ctx("range")?),
        vec!["/exp/long"],
        "range after expiry"
    );
    b.create("/exp/short", b"again".to_vec(), None)
        .await
        .ctx("create after expiry")?;
    let (kind, item) = change(&mut w).await?;
    ensure_eq!(
        (kind, item.key.as_str()),
        (EventKind::Put, "/exp/short"),
        "recreate event"
    );
    Ok(())
}

/// Tuning for [`sweep_around_an_unwatched_key`]: `/u/` unwatched, no periodic sweep.
pub fn unwatched_sweep_tuning() -> Tuning {
    Tuning {
        unwatched_prefixes: vec!["/u/".into()],
        sweep_every: Duration::from_secs(3600),
        ..fast_tuning()
    }
}

/// What the change table holds for the sweep of [`sweep_around_an_unwatched_key`]: its
/// deletes, as (key, index within the revision).
pub const UNWATCHED_SWEEP_DELETES: [(&str, i32); 2] = [("/a/1", 0), ("/w/b", 1)];

/// Expired items on both sides of an unwatched one (`/a/1`, `/u/a`, `/w/b`) and a live
/// `/w/keep`, swept by hand on `b` (opened with [`unwatched_sweep_tuning`]): the three
/// expired items are deleted and counted, and a watch on `/w/` sees `/w/b` go. Each
/// backend's own test then reads its change table: the sweep fed only the watched keys,
/// numbered 0, 1 ([`UNWATCHED_SWEEP_DELETES`]), and nothing for `/u/a`.
pub async fn sweep_around_an_unwatched_key(b: &dyn Backend) -> Outcome {
    for k in ["/a/1", "/u/a", "/w/b"] {
        b.put(k, vec![1], Some(in_ms(-10)))
            .await
            .ctx("put expired")?;
    }
    b.put("/w/keep", vec![2], None).await.ctx("put live")?;
    let mut w = b.watch(vec!["/w/".into()]).await.ctx("watch")?;
    init(&mut w).await?;
    ensure_eq!(b.sweep_expired().await.ctx("sweep")?, 3, "swept count");
    let (kind, item) = change(&mut w).await?;
    ensure_eq!(
        (kind, item.key.as_str()),
        (EventKind::Delete, "/w/b"),
        "change"
    );
    for k in ["/a/1", "/u/a", "/w/b"] {
        ensure!(b.get(k).await.ctx("get")?.is_none(), "{k} is still there");
    }
    ensure!(
        b.get("/w/keep").await.ctx("get")?.is_some(),
        "/w/keep is gone"
    );
    Ok(())
}

/// `sweep_expired` deletes what has expired, in one write, and reports the count.
pub async fn explicit_sweep(f: Factory) -> Outcome {
    let b = open(
        &f,
        Tuning {
            sweep_every: Duration::from_secs(3600),
            ..fast_tuning()
        },
    )
    .await?;
    for k in ["/sw/b", "/sw/a", "/sw/c"] {
        b.put(k, vec![], Some(in_ms(-10)))
            .await
            .ctx("put expired")?;
    }
    b.put("/sw/live", vec![], Some(in_ms(3_600_000)))
        .await
        .ctx("put live")?;
    let mut w = b.watch(vec!["/sw/".into()]).await.ctx("watch")?;
    let start = init(&mut w).await?;
    ensure_eq!(b.sweep_expired().await.ctx("sweep")?, 3, "swept count");
    let mut got = Vec::new();
    for _ in 0..3 {
        let (kind, item) = change(&mut w).await?;
        ensure_eq!(kind, EventKind::Delete, "kind");
        got.push((item.key, item.revision));
    }
    let rev = got[0].1;
    ensure!(rev > start, "sweep revision {rev} <= {start}");
    ensure_eq!(
        got,
        vec![
            ("/sw/a".to_string(), rev),
            ("/sw/b".to_string(), rev),
            ("/sw/c".to_string(), rev)
        ],
        "one revision, key order"
    );
    ensure_eq!(
        b.sweep_expired().await.ctx("sweep again")?,
        0,
        "second sweep"
    );
    ensure!(
        b.get("/sw/live").await.ctx("get live")?.is_some(),
        "live item swept"
    );
    Ok(())
}

/// Init first, then every later change (and only those) in revision order, filtered by
/// prefix; atomic writes arrive as consecutive events sharing one revision.
pub async fn watch_basics(f: Factory) -> Outcome {
    let b = open(&f, fast_tuning()).await?;
    let r0 = b
        .put("/w/a/0", b"0".to_vec(), None)
        .await
        .ctx("put before watch")?;

    let mut all = b.watch(vec![String::new()]).await.ctx("watch all")?;
    let mut none = b.watch(vec![]).await.ctx("watch with no prefixes")?;
    let mut a = b.watch(vec!["/w/a/".into()]).await.ctx("watch a")?;
    let mut ac = b
        .watch(vec!["/w/a/".into(), "/w/c/".into()])
        .await
        .ctx("watch a+c")?;
    for w in [&mut all, &mut none, &mut a, &mut ac] {
        ensure_eq!(init(w).await?, r0, "Init is the last completed write");
    }

    let exp = in_ms(3_600_000);
    let r1 = b
        .put("/w/a/1", b"1".to_vec(), Some(exp))
        .await
        .ctx("put a1")?;
    let r2 = b.put("/w/b/1", b"b".to_vec(), None).await.ctx("put b1")?;
    b.delete("/w/a/1", None).await.ctx("delete a1")?;
    let r4 = b
        .atomic_write(
            vec![],
            vec![
                Op::Put {
                    key: "/w/c/1".into(),
                    value: b"c".to_vec(),
                    expires: None,
                },
                Op::Put {
                    key: "/w/a/2".into(),
                    value: b"2".to_vec(),
                    expires: None,
                },
                Op::Delete {
                    key: "/w/a/0".into(),
                },
                Op::Delete {
                    key: "/w/a/missing".into(),
                },
            ],
        )
        .await
        .ctx("atomic")?;
    ensure!(r4 > r2 + 1, "atomic revision");

    // Full details of the first event and of a delete.
    let (kind, item) = change(&mut a).await?;
    ensure_eq!(
        (kind, item),
        (
            EventKind::Put,
            Item {
                key: "/w/a/1".into(),
                value: b"1".to_vec(),
                revision: r1,
                expires: Some(truncate_ms(exp)?)
            }
        ),
        "put event"
    );
    let (kind, del) = change(&mut a).await?;
    ensure_eq!(kind, EventKind::Delete, "delete kind");
    ensure!(
        del.key == "/w/a/1" && del.value.is_empty() && del.expires.is_none(),
        "delete event {del:?}"
    );
    ensure!(
        del.revision > r2,
        "delete revision {} <= {r2}",
        del.revision
    );
    let r3 = del.revision;
    expect_changes(
        &mut a,
        &[
            (EventKind::Put, "/w/a/2", r4),
            (EventKind::Delete, "/w/a/0", r4),
        ],
    )
    .await?;

    let everything = [
        (EventKind::Put, "/w/a/1", r1),
        (EventKind::Put, "/w/b/1", r2),
        (EventKind::Delete, "/w/a/1", r3),
        (EventKind::Put, "/w/c/1", r4),
        (EventKind::Put, "/w/a/2", r4),
        (EventKind::Delete, "/w/a/0", r4),
    ];
    expect_changes(&mut all, &everything).await?;
    expect_changes(&mut none, &everything).await?;
    let not_b: Vec<_> = everything
        .iter()
        .copied()
        .filter(|(_, k, _)| !k.starts_with("/w/b/"))
        .collect();
    expect_changes(&mut ac, &not_b).await?;

    // Filtering: a change outside the prefix is not delivered; the next one inside is.
    b.put("/w/b/2", vec![], None).await.ctx("put b2")?;
    let r6 = b.put("/w/a/3", vec![], None).await.ctx("put a3")?;
    expect_changes(&mut a, &[(EventKind::Put, "/w/a/3", r6)]).await?;

    // A later watcher starts after everything so far.
    let mut late = b.watch(vec!["/w/".into()]).await.ctx("late watch")?;
    ensure_eq!(init(&mut late).await?, r6, "late Init");
    let r7 = b.put("/w/a/4", vec![], None).await.ctx("put a4")?;
    expect_changes(&mut late, &[(EventKind::Put, "/w/a/4", r7)]).await?;
    Ok(())
}

/// 4 writers x 200 puts: a watcher sees all 800 changes, in strictly increasing revision
/// order, exactly the revisions the writers were given.
pub async fn watch_concurrent_writers(f: Factory) -> Outcome {
    let b = open(&f, fast_tuning()).await?;
    let mut w = b.watch(vec!["/cw/".into()]).await.ctx("watch")?;
    let start = init(&mut w).await?;
    let mut writers = Vec::new();
    for t in 0..4 {
        let b = b.clone();
        writers.push(tokio::spawn(async move {
            let mut revs = Vec::with_capacity(200);
            for i in 0..200 {
                revs.push(b.put(&format!("/cw/{t}/{i:03}"), vec![t], None).await?);
            }
            Ok::<_, StoreError>(revs)
        }));
    }
    let mut want = BTreeSet::new();
    for h in writers {
        let revs = h
            .await
            .map_err(|e| fail(format!("writer task: {e}")))?
            .ctx("concurrent put")?;
        want.extend(revs);
    }
    ensure_eq!(want.len(), 800, "distinct revisions");
    let mut last = start;
    let mut got = Vec::with_capacity(800);
    let mut seen_keys = BTreeSet::new();
    for _ in 0..800 {
        let (kind, item) = change(&mut w).await?;
        ensure!(
            kind == EventKind::Put && item.revision > last,
            "event out of order: {} after {last}",
            item.revision
        );
        last = item.revision;
        got.push(item.revision);
        seen_keys.insert(item.key);
    }
    ensure_eq!(
        got.into_iter().collect::<BTreeSet<_>>(),
        want,
        "watched revisions = written revisions"
    );
    ensure_eq!(seen_keys.len(), 800, "distinct keys");
    Ok(())
}

/// A watcher that does not read is closed once its buffer is full; others keep going.
pub async fn slow_watcher_is_closed(f: Factory) -> Outcome {
    let b = open(
        &f,
        Tuning {
            watcher_buffer: 8,
            ..fast_tuning()
        },
    )
    .await?;
    let mut slow = b.watch(vec!["/slow/".into()]).await.ctx("watch slow")?;
    let mut fast = b.watch(vec!["/slow/".into()]).await.ctx("watch fast")?;
    init(&mut fast).await?;
    for i in 0..30 {
        let r = b
            .put(&format!("/slow/{i:02}"), vec![], None)
            .await
            .ctx("put")?;
        let (_, item) = change(&mut fast).await?;
        ensure_eq!(item.revision, r, "fast watcher event {i}");
    }
    let mut buffered = 0;
    loop {
        match tokio::time::timeout(EVENT_TIMEOUT, slow.recv()).await {
            Ok(Some(_)) => buffered += 1,
            Ok(None) => break,
            Err(_) => return Err(fail("slow watcher was neither closed nor fed")),
        }
        ensure!(buffered <= 8, "slow watcher got more than its buffer");
    }
    ensure!(buffered >= 1, "slow watcher lost its Init");
    Ok(())
}

/// Two instances on one database see each other's writes, through reads and watches.
pub async fn two_instances_watch(f: Factory) -> Outcome {
    let a = open(&f, fast_tuning()).await?;
    let b = open(&f, fast_tuning()).await?;
    let mut wa = a.watch(vec!["/two/".into()]).await.ctx("watch a")?;
    let mut wb = b.watch(vec!["/two/".into()]).await.ctx("watch b")?;
    init(&mut wa).await?;
    init(&mut wb).await?;

    let r1 = b
        .put("/two/from-b", b"b".to_vec(), None)
        .await
        .ctx("put via b")?;
    ensure_eq!(
        get_value(&a, "/two/from-b").await?,
        Some(b"b".to_vec()),
        "a reads b's write"
    );
    let r2 = a
        .put("/two/from-a", b"a".to_vec(), None)
        .await
        .ctx("put via a")?;
    b.delete("/two/from-b", None).await.ctx("delete via b")?;
    expect_changes(
        &mut wa,
        &[
            (EventKind::Put, "/two/from-b", r1),
            (EventKind::Put, "/two/from-a", r2),
        ],
    )
    .await?;
    let (kind, del) = change(&mut wa).await?;
    ensure!(
        kind == EventKind::Delete && del.key == "/two/from-b" && del.revision > r2,
        "delete seen by a: {del:?}"
    );
    expect_changes(
        &mut wb,
        &[
            (EventKind::Put, "/two/from-b", r1),
            (EventKind::Put, "/two/from-a", r2),
            (EventKind::Delete, "/two/from-b", del.revision),
        ],
    )
    .await?;
    Ok(())
}

/// Racing creates (and create-like atomic writes) from two instances: exactly one wins.
pub async fn concurrent_create_race(f: Factory) -> Outcome {
    let a = open(&f, fast_tuning()).await?;
    let b = open(&f, fast_tuning()).await?;
    for i in 0..20 {
        let key = format!("/race/{i}");
        let (ra, rb) = tokio::join!(
            a.create(&key, b"a".to_vec(), None),
            b.create(&key, b"b".to_vec(), None)
        );
        let winner: &[u8] = match (&ra, &rb) {
            (Ok(_), Err(StoreError::AlreadyExists(k))) if *k == key => b"a",
            (Err(StoreError::AlreadyExists(k)), Ok(_)) if *k == key => b"b",
            _ => return Err(fail(format!("create race on {key}: {ra:?} / {rb:?}"))),
        };
        ensure_eq!(
            get_value(&a, &key).await?,
            Some(winner.to_vec()),
            "winner's value"
        );

        let key = format!("/race-atomic/{i}");
        let write = |v: &[u8]| {
            (
                vec![Condition::NotExists(key.clone())],
                vec![Op::Put {
                    key: key.clone(),
                    value: v.to_vec(),
                    expires: None,
                }],
            )
        };
        let ((ca, oa), (cb, ob)) = (write(b"a"), write(b"b"));
        let (ra, rb) = tokio::join!(a.atomic_write(ca, oa), b.atomic_write(cb, ob));
        let ok = |r: &dt_store::Result<i64>| r.is_ok();
        let lost = |r: &dt_store::Result<i64>| {
            matches!(r, Err(StoreError::ConditionFailed { index: 0, .. }))
        };
        ensure!(
            (ok(&ra) && lost(&rb)) || (lost(&ra) && ok(&rb)),
            "atomic race on {key}: {ra:?} / {rb:?}"
        );
    }
    Ok(())
}

/// Two instances starting at once on a fresh database (racing migrations) both work.
pub async fn concurrent_open(f: Factory) -> Outcome {
    let (a, b) = tokio::join!(f(fast_tuning()), f(fast_tuning()));
    let (a, b) = (a.ctx("open a")?, b.ctx("open b")?);
    let (va, vb) = (
        a.schema_version().await.ctx("version a")?,
        b.schema_version().await.ctx("version b")?,
    );
    ensure!(va >= 1 && va == vb, "schema versions {va} / {vb}");
    let r = a.put("/co/k", vec![1], None).await.ctx("put via a")?;
    let item = b
        .get("/co/k")
        .await
        .ctx("get via b")?
        .ok_or_else(|| fail("b does not see a's write"))?;
    ensure_eq!(item.revision, r, "revision");
    Ok(())
}

/// Data and the revision sequence survive closing and reopening.
pub async fn reopen_persists(f: Factory) -> Outcome {
    let a = open(&f, fast_tuning()).await?;
    let r = a.put("/re/k", b"v".to_vec(), None).await.ctx("put")?;
    a.close().await;
    let b = open(&f, fast_tuning()).await?;
    let item = b
        .get("/re/k")
        .await
        .ctx("get after reopen")?
        .ok_or_else(|| fail("lost after reopen"))?;
    ensure_eq!(
        (item.value.as_slice(), item.revision),
        (&b"v"[..], r),
        "item after reopen"
    );
    let mut w = b.watch(vec![]).await.ctx("watch")?;
    ensure_eq!(init(&mut w).await?, r, "Init after reopen");
    let r2 = b
        .put("/re/k2", vec![], None)
        .await
        .ctx("put after reopen")?;
    ensure!(r2 > r, "revision sequence restarted: {r2} <= {r}");
    Ok(())
}

/// `close` ends every watcher; later calls fail instead of hanging.
pub async fn close_ends_watchers(f: Factory) -> Outcome {
    let b = open(&f, fast_tuning()).await?;
    let mut w = b.watch(vec![]).await.ctx("watch")?;
    init(&mut w).await?;
    b.close().await;
    match tokio::time::timeout(EVENT_TIMEOUT, w.recv()).await {
        Ok(None) => {}
        Ok(Some(ev)) => return Err(fail(format!("event after close: {ev:?}"))),
        Err(_) => return Err(fail("watcher still open after close")),
    }
    let res = tokio::time::timeout(EVENT_TIMEOUT, b.put("/closed", vec![], None)).await;
    ensure!(
        matches!(res, Ok(Err(StoreError::Backend(_)))),
        "put after close: {res:?}"
    );
    let res = tokio::time::timeout(EVENT_TIMEOUT, b.watch(vec![])).await;
    ensure!(matches!(res, Ok(Err(_))), "watch after close did not fail");
    Ok(())
}

/// A tail that counts applied groups into `key` (a decimal counter), starting from what
/// the transaction reads there.
fn counting_tail(key: &'static str) -> BatchTail {
    Arc::new(move |outcomes: &[Option<i64>], item: Option<&Item>| {
        let before: u64 = item
            .and_then(|i| std::str::from_utf8(&i.value).ok()?.parse().ok())
            .unwrap_or(0);
        let applied = outcomes.iter().filter(|o| o.is_some()).count() as u64;
        Ok(vec![Op::Put {
            key: key.into(),
            value: (before + applied).to_string().into_bytes(),
            expires: None,
        }])
    })
}

/// Group commit: each group keeps its own conditions and revision, later groups see
/// earlier ones, a failing or invalid group fails alone, the tail sees the outcomes, and a
/// failing tail writes nothing.
pub async fn batch_writes(f: Factory) -> Outcome {
    let b = open(&f, fast_tuning()).await?;
    let put = |k: &str, v: &[u8]| Op::Put {
        key: k.into(),
        value: v.to_vec(),
        expires: None,
    };
    let r0 = b.put("/bw/x", b"x0".to_vec(), None).await.ctx("put x")?;
    let mut w = b.watch(vec!["/bw/".into()]).await.ctx("watch")?;
    init(&mut w).await?;
    let groups = vec![
        // 0: applies.
        BatchWrite {
            conditions: vec![Condition::Revision("/bw/x".into(), r0)],
            ops: vec![put("/bw/x", b"x1"), put("/bw/a", b"a")],
        },
        // 1: the same condition now fails (group 0 changed /bw/x): fails alone.
        BatchWrite {
            conditions: vec![
                Condition::NotExists("/bw/zz".into()),
                Condition::Revision("/bw/x".into(), r0),
            ],
            ops: vec![put("/bw/x", b"lost")],
        },
        // 2: sees group 0's write.
        BatchWrite {
            conditions: vec![Condition::Exists("/bw/a".into())],
            ops: vec![
                Op::Delete {
                    key: "/bw/a".into(),
                },
                put("/bw/b", b"b"),
            ],
        },
        // 3: invalid (empty key): fails alone.
        BatchWrite {
            conditions: vec![],
            ops: vec![put("", b"bad")],
        },
    ];
    let results = b
        .write_batch(groups, "/bw/count", counting_tail("/bw/count"))
        .await
        .ctx("batch")?;
    ensure_eq!(results.len(), 4, "one result per group");
    let rev0 = match &results[0] {
        Ok(r) => *r,
        other => return Err(fail(format!("group 0: {other:?}"))),
    };
    match &results[1] {
        Err(StoreError::ConditionFailed { index: 1, key }) if key == "/bw/x" => {}
        other => {
            return Err(fail(format!(
                "group 1: expected condition 1 failed, got {other:?}"
            )));
        }
    }
    let rev2 = match &results[2] {
        Ok(r) => *r,
        other => return Err(fail(format!("group 2: {other:?}"))),
    };
    ensure!(
        matches!(&results[3], Err(StoreError::Invalid(_))),
        "group 3: {:?}",
        results[3]
    );
    ensure!(
        rev0 > r0 && rev2 > rev0,
        "revisions in group order: {r0} {rev0} {rev2}"
    );
    let x = b
        .get("/bw/x")
        .await
        .ctx("get x")?
        .ok_or_else(|| fail("x"))?;
    ensure_eq!((x.value.as_slice(), x.revision), (&b"x1"[..], rev0), "x");
    ensure_eq!(get_value(&b, "/bw/a").await?, None, "a deleted by group 2");
    let bb = b
        .get("/bw/b")
        .await
        .ctx("get b")?
        .ok_or_else(|| fail("b"))?;
    ensure_eq!(bb.revision, rev2, "b has group 2's revision");
    ensure_eq!(
        get_value(&b, "/bw/count").await?,
        Some(b"2".to_vec()),
        "tail counted 2"
    );
    // The change feed has every write, in order.
    let count_rev = b
        .get("/bw/count")
        .await
        .ctx("count")?
        .map(|i| i.revision)
        .unwrap_or(0);
    expect_changes(
        &mut w,
        &[
            (EventKind::Put, "/bw/x", rev0),
            (EventKind::Put, "/bw/a", rev0),
            (EventKind::Delete, "/bw/a", rev2),
            (EventKind::Put, "/bw/b", rev2),
            (EventKind::Put, "/bw/count", count_rev),
        ],
    )
    .await?;

    // The tail reads its key inside the transaction, after the groups.
    let results = b
        .write_batch(
            vec![BatchWrite::default(), BatchWrite::default()],
            "/bw/count",
            counting_tail("/bw/count"),
        )
        .await
        .ctx("second batch")?;
    ensure!(results.iter().all(|r| r.is_ok()), "{results:?}");
    ensure_eq!(
        get_value(&b, "/bw/count").await?,
        Some(b"4".to_vec()),
        "tail counted 4"
    );

    // A failing tail rolls everything back.
    let failing: BatchTail = Arc::new(|_, _| Err(StoreError::Invalid("tail refuses".into())));
    let res = b
        .write_batch(
            vec![BatchWrite {
                conditions: vec![],
                ops: vec![put("/bw/never", b"n")],
            }],
            "/bw/count",
            failing,
        )
        .await;
    ensure!(
        matches!(res, Err(StoreError::Invalid(_))),
        "failing tail: {res:?}"
    );
    ensure_eq!(get_value(&b, "/bw/never").await?, None, "nothing written");
    Ok(())
}

/// Two instances (two auth servers) running batches at once on one counter: the tail
/// always reads the latest committed value, so no increment is lost.
pub async fn concurrent_batches(f: Factory) -> Outcome {
    let a = open(&f, fast_tuning()).await?;
    let b = open(&f, fast_tuning()).await?;
    let run = |s: Arc<dyn Backend>, who: &'static str| async move {
        for i in 0..20 {
            let groups = (0..5)
                .map(|k| BatchWrite {
                    conditions: vec![Condition::NotExists(format!("/cb/{who}/{i}/{k}"))],
                    ops: vec![Op::Put {
                        key: format!("/cb/{who}/{i}/{k}"),
                        value: vec![1],
                        expires: None,
                    }],
                })
                .collect();
            let r = s
                .write_batch(groups, "/cb-count", counting_tail("/cb-count"))
                .await?;
            if r.iter().any(|r| r.is_err()) {
                return Err(StoreError::Invalid(format!("a group failed: {r:?}")));
            }
        }
        Ok::<_, StoreError>(())
    };
    let (ra, rb) = tokio::join!(run(a.clone(), "a"), run(b.clone(), "b"));
    ra.ctx("instance a")?;
    rb.ctx("instance b")?;
    ensure_eq!(
        get_value(&a, "/cb-count").await?,
        Some(b"200".to_vec()),
        "every applied group counted once"
    );
    Ok(())
}

/// Concurrent single writes on one instance (committed in groups) keep their own
/// semantics: of 50 creates of one key exactly one wins, of 50 compare-and-swaps from one
/// revision exactly one wins, and 50 creates of distinct keys all succeed with distinct
/// revisions.
pub async fn grouped_single_writes(f: Factory) -> Outcome {
    let b = open(&f, fast_tuning()).await?;
    let creates =
        futures::future::join_all((0..50u8).map(|i| b.create("/gs/one", vec![i], None))).await;
    let won = creates.iter().filter(|r| r.is_ok()).count();
    let lost = creates
        .iter()
        .filter(|r| matches!(r, Err(StoreError::AlreadyExists(k)) if k == "/gs/one"))
        .count();
    ensure_eq!((won, lost), (1, 49), "creates of one key: {creates:?}");
    let rev = b
        .get("/gs/one")
        .await
        .ctx("get")?
        .map(|i| i.revision)
        .unwrap_or(0);
    let swaps = futures::future::join_all((0..50u8).map(|i| {
        b.atomic_write(
            vec![Condition::Revision("/gs/one".into(), rev)],
            vec![Op::Put {
                key: "/gs/one".into(),
                value: vec![100 + i],
                expires: None,
            }],
        )
    }))
    .await;
    let won = swaps.iter().filter(|r| r.is_ok()).count();
    ensure_eq!(won, 1, "compare-and-swaps from one revision: {swaps:?}");
    let keys: Vec<String> = (0..50).map(|i| format!("/gs/k/{i}")).collect();
    let distinct = futures::future::join_all(keys.iter().map(|k| b.create(k, vec![1], None))).await;
    let revs: BTreeSet<i64> = distinct
        .into_iter()
        .collect::<dt_store::Result<Vec<_>>>()
        .ctx("distinct creates")?
        .into_iter()
        .collect();
    ensure_eq!(revs.len(), 50, "one revision each");
    Ok(())
}

/// Keys under an unwatched prefix are stored, read, conditioned on and deleted like any
/// other, in the same transactions, but give no change events; and no watch that could
/// miss them is allowed.
pub async fn unwatched_prefixes(f: Factory) -> Outcome {
    let b = open(
        &f,
        Tuning {
            unwatched_prefixes: vec!["/u/".into()],
            ..fast_tuning()
        },
    )
    .await?;
    for refused in [
        vec![],
        vec![String::new()],
        vec!["/".into()],
        vec!["/u/x/".into()],
    ] {
        match b.watch(refused.clone()).await {
            Err(StoreError::Invalid(_)) => {}
            Err(e) => return Err(fail(format!("watch {refused:?}: wrong error {e:?}"))),
            Ok(_) => return Err(fail(format!("watch {refused:?} was allowed"))),
        }
    }
    let mut w = b.watch(vec!["/w/".into()]).await.ctx("watch /w/")?;
    let start = init(&mut w).await?;

    let r1 = b.put("/u/a", b"a".to_vec(), None).await.ctx("put /u/a")?;
    ensure!(r1 > start, "an unwatched write takes a revision");
    let r2 = b
        .atomic_write(
            vec![Condition::NotExists("/u/b".into())],
            vec![
                Op::Put {
                    key: "/u/b".into(),
                    value: b"b".to_vec(),
                    expires: None,
                },
                Op::Put {
                    key: "/w/1".into(),
                    value: b"1".to_vec(),
                    expires: None,
                },
            ],
        )
        .await
        .ctx("atomic /u/b + /w/1")?;
    // The same condition again fails: unwatched keys are real items.
    match b
        .atomic_write(
            vec![Condition::NotExists("/u/b".into())],
            vec![Op::Put {
                key: "/w/never".into(),
                value: vec![],
                expires: None,
            }],
        )
        .await
    {
        Err(StoreError::ConditionFailed { index: 0, .. }) => {}
        other => return Err(fail(format!("condition on /u/b: {other:?}"))),
    }
    match b.create("/u/a", vec![], None).await {
        Err(StoreError::AlreadyExists(_)) => {}
        other => return Err(fail(format!("create over /u/a: {other:?}"))),
    }
    ensure_eq!(get_value(&b, "/u/a").await?, Some(b"a".to_vec()), "/u/a");
    ensure_eq!(get_value(&b, "/u/b").await?, Some(b"b".to_vec()), "/u/b");
    ensure_eq!(
        keys(&b.range("/u/", None, 10).await.ctx("range /u/")?),
        vec!["/u/a", "/u/b"],
        "range /u/"
    );
    b.delete("/u/a", None).await.ctx("delete /u/a")?;
    match b.delete("/u/a", None).await {
        Err(StoreError::NotFound(_)) => {}
        other => return Err(fail(format!("second delete of /u/a: {other:?}"))),
    }
    let r3 = b.put("/w/2", b"2".to_vec(), None).await.ctx("put /w/2")?;
    // The watcher sees exactly its own keys, with the revisions they were written at.
    expect_changes(
        &mut w,
        &[(EventKind::Put, "/w/1", r2), (EventKind::Put, "/w/2", r3)],
    )
    .await?;
    // A second instance on the same storage (the usual two auth servers) agrees.
    let other = open(
        &f,
        Tuning {
            unwatched_prefixes: vec!["/u/".into()],
            ..fast_tuning()
        },
    )
    .await?;
    ensure_eq!(
        get_value(&other, "/u/b").await?,
        Some(b"b".to_vec()),
        "/u/b elsewhere"
    );
    Ok(())
}

/// Commits that write only unwatched keys give the change feed nothing to read (the store
/// may skip reading it after them); a watched write after them still reaches the watcher
/// at once, not at the next poll (an hour here), in batches and in single writes.
pub async fn unwatched_commits_then_watched(f: Factory) -> Outcome {
    let b = open(
        &f,
        Tuning {
            unwatched_prefixes: vec!["/u/".into()],
            poll_every: Duration::from_secs(3600),
            ..fast_tuning()
        },
    )
    .await?;
    let mut w = b.watch(vec!["/w/".into()]).await.ctx("watch /w/")?;
    init(&mut w).await?;
    let unwatched_batch = |n: usize| -> Vec<BatchWrite> {
        (0..n)
            .map(|i| BatchWrite {
                conditions: vec![],
                ops: vec![Op::Put {
                    key: format!("/u/{i}"),
                    value: vec![1],
                    expires: None,
                }],
            })
            .collect()
    };
    b.write_batch(unwatched_batch(3), "/u/count", counting_tail("/u/count"))
        .await
        .ctx("unwatched batch")?;
    b.put("/u/single", vec![2], None)
        .await
        .ctx("unwatched put")?;
    let mut want = Vec::new();
    let mut groups = unwatched_batch(2);
    groups.push(BatchWrite {
        conditions: vec![],
        ops: vec![Op::Put {
            key: "/w/in-batch".into(),
            value: vec![3],
            expires: None,
        }],
    });
    let revs = b
        .write_batch(groups, "/u/count", counting_tail("/u/count"))
        .await
        .ctx("mixed batch")?;
    let rev = match revs.last() {
        Some(Ok(r)) => *r,
        other => return Err(fail(format!("mixed batch result: {other:?}"))),
    };
    want.push((EventKind::Put, "/w/in-batch", rev));
    let r = b
        .put("/w/single", vec![4], None)
        .await
        .ctx("put /w/single")?;
    want.push((EventKind::Put, "/w/single", r));
    b.put("/u/after", vec![5], None)
        .await
        .ctx("unwatched put after")?;
    b.delete("/w/single", None).await.ctx("delete /w/single")?;
    expect_changes(&mut w, &want).await?;
    let (kind, item) = change(&mut w).await?;
    ensure_eq!(
        (kind, item.key.as_str()),
        (EventKind::Delete, "/w/single"),
        "the delete after an unwatched put"
    );
    Ok(())
}

/// A bulk-sized batch (what one `BulkCreateDevices` request writes): thousands of rows in
/// many groups, new keys and overwrites, with and without expiry, then a batch in which two
/// groups write the same key. Every row is stored with its own group's revision, the last
/// write of a key wins, and the change feed has every write in order.
pub async fn batch_many_rows(f: Factory) -> Outcome {
    const GROUPS: usize = 600;
    let b = open(&f, fast_tuning()).await?;
    let old = b
        .put("/bm/k/0001/a", b"old".to_vec(), None)
        .await
        .ctx("put old")?;
    let mut w = b
        .watch(vec!["/bm/k/0001/".into(), "/bm/k/0599/".into()])
        .await
        .ctx("watch")?;
    init(&mut w).await?;
    let later = OffsetDateTime::now_utc() + Duration::from_secs(3600);
    let groups: Vec<BatchWrite> = (0..GROUPS)
        .map(|g| BatchWrite {
            conditions: vec![Condition::NotExists(format!("/bm/k/{g:04}/c"))],
            ops: ["a", "b", "c", "d"]
                .iter()
                .map(|p| Op::Put {
                    key: format!("/bm/k/{g:04}/{p}"),
                    value: format!("{g}{p}").into_bytes(),
                    expires: (*p == "d").then_some(later),
                })
                .collect(),
        })
        .collect();
    let results = b
        .write_batch(groups, "/bm/count", counting_tail("/bm/count"))
        .await
        .ctx("big batch")?;
    ensure_eq!(results.len(), GROUPS, "one result per group");
    let revs = results
        .into_iter()
        .map(|r| r.map_err(|e| fail(format!("group failed: {e}"))))
        .collect::<Result<Vec<i64>, Failure>>()?;
    ensure!(
        revs.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive revisions"
    );
    ensure!(revs[0] > old, "after the earlier write");
    let mut seen = 0;
    let mut cursor: Option<String> = None;
    loop {
        let page = b
            .range("/bm/k/", cursor.as_deref(), 1000)
            .await
            .ctx("range")?;
        for item in &page.items {
            let mut parts = item.key.rsplit('/');
            let p = parts.next().unwrap_or_default();
            let g: usize = parts
                .next()
                .and_then(|g| g.parse().ok())
                .unwrap_or(usize::MAX);
            ensure_eq!(
                item.value,
                format!("{g}{p}").into_bytes(),
                "value of {}",
                item.key
            );
            ensure_eq!(
                Some(item.revision),
                revs.get(g).copied(),
                "revision of {}",
                item.key
            );
            ensure_eq!(item.expires.is_some(), p == "d", "expiry of {}", item.key);
            seen += 1;
        }
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    ensure_eq!(seen, GROUPS * 4, "every row stored");
    ensure_eq!(
        get_value(&b, "/bm/count").await?,
        Some(GROUPS.to_string().into_bytes()),
        "tail"
    );
    let mut want = Vec::new();
    for g in [1usize, 599] {
        for p in ["a", "b", "c", "d"] {
            want.push((EventKind::Put, format!("/bm/k/{g:04}/{p}"), revs[g]));
        }
    }
    let want_refs: Vec<(EventKind, &str, i64)> = want
        .iter()
        .map(|(k, key, r)| (*k, key.as_str(), *r))
        .collect();
    expect_changes(&mut w, &want_refs).await?;

    // Two groups of one batch write the same key: the later one wins, both are in the feed.
    let same = |v: &str| BatchWrite {
        conditions: vec![],
        ops: vec![
            Op::Put {
                key: "/bm/k/0001/a".into(),
                value: v.as_bytes().to_vec(),
                expires: None,
            },
            Op::Put {
                key: format!("/bm/k/0001/{v}"),
                value: v.as_bytes().to_vec(),
                expires: None,
            },
        ],
    };
    let results = b
        .write_batch(
            vec![same("x"), same("y")],
            "/bm/count",
            counting_tail("/bm/count"),
        )
        .await
        .ctx("same key twice")?;
    let (rx, ry) = match (&results[0], &results[1]) {
        (Ok(x), Ok(y)) => (*x, *y),
        other => return Err(fail(format!("same key twice: {other:?}"))),
    };
    let a = b
        .get("/bm/k/0001/a")
        .await
        .ctx("get a")?
        .ok_or_else(|| fail("a"))?;
    ensure_eq!(
        (a.value.as_slice(), a.revision),
        (&b"y"[..], ry),
        "last write wins"
    );
    expect_changes(
        &mut w,
        &[
            (EventKind::Put, "/bm/k/0001/a", rx),
            (EventKind::Put, "/bm/k/0001/x", rx),
            (EventKind::Put, "/bm/k/0001/a", ry),
            (EventKind::Put, "/bm/k/0001/y", ry),
        ],
    )
    .await?;
    Ok(())
}

/// Counters: each use numbered in turn on either instance, refused once the budget is spent
/// (and then not counted), one key's count apart from another's, reset on demand, and never
/// visible as items.
pub async fn counters(f: Factory) -> Outcome {
    let a = open(&f, fast_tuning()).await?;
    let b = open(&f, fast_tuning()).await?;
    let until = OffsetDateTime::now_utc() + Duration::from_secs(60);
    ensure_eq!(a.uses("/c/alice").await.ctx("uses")?, 0, "a fresh count");
    for n in 1..=4u64 {
        let on = if n % 2 == 0 { &a } else { &b };
        ensure_eq!(
            on.count_use("/c/alice", 4, until).await.ctx("count_use")?,
            Some(n),
            "use {n}"
        );
    }
    for on in [&a, &b] {
        ensure_eq!(
            on.count_use("/c/alice", 4, until).await.ctx("count_use")?,
            None,
            "a spent budget"
        );
        ensure_eq!(
            on.uses("/c/alice").await.ctx("uses")?,
            4,
            "refusals not counted"
        );
    }
    // A higher limit lets the same count go on.
    ensure_eq!(
        a.count_use("/c/alice", 5, until).await.ctx("count_use")?,
        Some(5),
        "a raised limit"
    );
    ensure_eq!(
        b.count_use("/c/bob", 4, until).await.ctx("count_use")?,
        Some(1),
        "another key"
    );
    b.reset_uses("/c/alice").await.ctx("reset")?;
    ensure_eq!(a.uses("/c/alice").await.ctx("uses")?, 0, "after a reset");
    ensure_eq!(
        a.count_use("/c/alice", 4, until).await.ctx("count_use")?,
        Some(1),
        "counting again after a reset"
    );
    a.reset_uses("/c/never").await.ctx("reset of nothing")?;
    ensure_eq!(a.uses("/c/bob").await.ctx("uses")?, 1, "bob kept his count");
    ensure_eq!(
        a.count_use("/c/zero", 0, until).await.ctx("count_use")?,
        None,
        "a zero budget"
    );
    ensure_eq!(a.uses("/c/zero").await.ctx("uses")?, 0, "nothing counted");
    ensure!(
        a.range("", None, 1000).await.ctx("range")?.items.is_empty(),
        "counters are not items"
    );
    ensure!(
        matches!(a.count_use("", 1, until).await, Err(StoreError::Invalid(_))),
        "an empty key is refused"
    );
    ensure!(
        matches!(a.uses("a\0b").await, Err(StoreError::Invalid(_))),
        "a NUL in a key is refused"
    );
    Ok(())
}

/// A count ends at the expiry given at its first use; the next use starts from one, and
/// expired counts are removed in the background without disturbing live ones.
pub async fn counters_expire(f: Factory) -> Outcome {
    let a = open(&f, fast_tuning()).await?;
    let soon = OffsetDateTime::now_utc() + Duration::from_millis(400);
    let later = OffsetDateTime::now_utc() + Duration::from_secs(60);
    ensure_eq!(
        a.count_use("/c/k", 1, soon).await.ctx("use")?,
        Some(1),
        "first use"
    );
    // A later use does not move the end of the count.
    ensure_eq!(
        a.count_use("/c/k", 1, later).await.ctx("use")?,
        None,
        "budget of one"
    );
    ensure_eq!(
        a.count_use("/c/live", 9, later).await.ctx("use")?,
        Some(1),
        "live"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    ensure_eq!(a.uses("/c/k").await.ctx("uses")?, 0, "an expired count");
    ensure_eq!(
        a.count_use("/c/k", 1, later).await.ctx("use")?,
        Some(1),
        "a new count after expiry"
    );
    ensure_eq!(
        a.uses("/c/live").await.ctx("uses")?,
        1,
        "the live count stays"
    );
    Ok(())
}

/// Many uses at once from two instances: exactly `limit` are admitted, numbered 1..=limit.
pub async fn counters_race(f: Factory) -> Outcome {
    let a = open(&f, fast_tuning()).await?;
    let b = open(&f, fast_tuning()).await?;
    let until = OffsetDateTime::now_utc() + Duration::from_secs(60);
    let mut tasks = Vec::new();
    for i in 0..60 {
        let on = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            on.count_use("/c/race", 25, until).await
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        let r = t.await.map_err(|e| fail(format!("task: {e}")))?;
        if let Some(n) = r.ctx("count_use")? {
            got.push(n);
        }
    }
    got.sort_unstable();
    ensure_eq!(got, (1..=25).collect::<Vec<u64>>(), "admitted uses");
    ensure_eq!(a.uses("/c/race").await.ctx("uses")?, 25, "the count");
    Ok(())
}

/// `get_indexed` follows an index entry to its target in one read; a missing or expired
/// entry or target is `None`, and an entry that does not hold text is an error.
pub async fn indexed_reads(f: Factory) -> Outcome {
    let b = open(&f, fast_tuning()).await?;
    b.put("/things/t1", b"one".to_vec(), None)
        .await
        .ctx("put")?;
    b.put("/idx/by-name/first", b"t1".to_vec(), None)
        .await
        .ctx("put")?;
    let found = b
        .get_indexed("/idx/by-name/first", "/things/")
        .await
        .ctx("follow")?;
    let want = b.get("/things/t1").await.ctx("get")?;
    ensure_eq!(found, want, "the target, with its key and revision");
    ensure!(found.is_some(), "the target exists");
    ensure_eq!(
        b.get_indexed("/idx/by-name/none", "/things/")
            .await
            .ctx("follow")?,
        None,
        "no entry"
    );
    b.put("/idx/by-name/dangling", b"t9".to_vec(), None)
        .await
        .ctx("put")?;
    ensure_eq!(
        b.get_indexed("/idx/by-name/dangling", "/things/")
            .await
            .ctx("follow")?,
        None,
        "an entry whose target is gone"
    );
    ensure_eq!(
        b.get_indexed("/idx/by-name/first", "/other/")
            .await
            .ctx("follow")?,
        None,
        "the prefix is part of the target's key"
    );
    let soon = OffsetDateTime::now_utc() + Duration::from_millis(300);
    b.put("/idx/by-name/brief", b"t1".to_vec(), Some(soon))
        .await
        .ctx("put")?;
    b.put("/things/t2", b"two".to_vec(), Some(soon))
        .await
        .ctx("put")?;
    b.put("/idx/by-name/second", b"t2".to_vec(), None)
        .await
        .ctx("put")?;
    ensure!(
        b.get_indexed("/idx/by-name/brief", "/things/")
            .await
            .ctx("follow")?
            .is_some(),
        "a live entry"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure_eq!(
        b.get_indexed("/idx/by-name/brief", "/things/")
            .await
            .ctx("follow")?,
        None,
        "an expired entry"
    );
    ensure_eq!(
        b.get_indexed("/idx/by-name/second", "/things/")
            .await
            .ctx("follow")?,
        None,
        "an expired target"
    );
    b.put("/idx/by-name/binary", vec![0xff, 0xfe], None)
        .await
        .ctx("put")?;
    ensure!(
        b.get_indexed("/idx/by-name/binary", "/things/")
            .await
            .is_err(),
        "an entry that is not text"
    );
    ensure!(
        matches!(
            b.get_indexed("", "/things/").await,
            Err(StoreError::Invalid(_))
        ),
        "an empty index key"
    );
    Ok(())
}

/// With only prefix watchers (a backend may then leave other keys' values unread), each
/// watcher still gets the full value of every change under its prefixes, prefixes are
/// plain text (`_` and `%` are no wildcards), and a watcher added later gets values of its
/// own prefix at once.
pub async fn watch_values_by_prefix(f: Factory) -> Outcome {
    let b = open(&f, fast_tuning()).await?;
    let mut a = b.watch(vec!["/v/a/".into()]).await.ctx("watch a")?;
    let mut odd = b.watch(vec!["/v/p_%/".into()]).await.ctx("watch p_%")?;
    init(&mut a).await?;
    init(&mut odd).await?;
    let big = vec![7u8; 5000];
    b.put("/v/c/1", b"unwatched".to_vec(), None)
        .await
        .ctx("put c")?;
    b.put("/v/pX%/1", b"not p_%".to_vec(), None)
        .await
        .ctx("put pX%")?;
    b.put("/v/a/1", big.clone(), None).await.ctx("put a")?;
    b.put("/v/p_%/1", b"odd".to_vec(), None)
        .await
        .ctx("put p_%")?;
    let (_, item) = change(&mut a).await?;
    ensure_eq!(
        (item.key.as_str(), &item.value),
        ("/v/a/1", &big),
        "a's value"
    );
    let (_, item) = change(&mut odd).await?;
    ensure_eq!(
        (item.key.as_str(), item.value.as_slice()),
        ("/v/p_%/1", b"odd".as_slice()),
        "a prefix with _ and % matches itself only"
    );
    let mut c = b.watch(vec!["/v/c/".into()]).await.ctx("watch c")?;
    init(&mut c).await?;
    b.put("/v/c/2", b"now watched".to_vec(), None)
        .await
        .ctx("put c2")?;
    let (_, item) = change(&mut c).await?;
    ensure_eq!(
        (item.key.as_str(), item.value.as_slice()),
        ("/v/c/2", b"now watched".as_slice()),
        "a later watcher's value"
    );
    Ok(())
}
