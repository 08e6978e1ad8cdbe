//! The audit sink: typed events appended to storage in one total order, hash-chained, and
//! written in the same transaction as the change they describe.
//!
//! Order and chain: `/audit/head` holds the last sequence number and hash. Appends go
//! through a group commit: each request (its conditions, its ops and its events) joins a
//! queue, and one commit at a time per process takes everything queued and writes it as one
//! [`Backend::write_batch`] transaction. Inside it every request keeps its own conditions
//! (one failing fails only that request), and the events of the requests that applied are
//! chained after the head as the transaction reads it, after the store serialized writers
//! (SQLite's write lock, PostgreSQL's sequence row lock). So several auth servers sharing a
//! database append to one chain in commit order, with no retries; and every change is
//! still written in the same transaction as its events.

use std::sync::{Arc, Mutex as StdMutex};

use dt_store::{Backend, BatchWrite, Condition, Item, Op, StoreError};
use dt_types::audit::{AuditEvent, EventType};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::{Mutex, oneshot};

use crate::keys;

mod chain;
mod file_sink;
mod index;
pub use chain::{AUDIT_ANCHOR, Anchor, BrokenLink, ChainReport};
pub use file_sink::{FileSink, FileSinkConfig};
pub use index::{INDEX_FROM, INDEX_PREFIX};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct StoredHead {
    seq: u64,
    hash: String,
}

#[derive(Clone, Debug)]
struct Head {
    seq: u64,
    hash: String,
    /// `None` while no event was ever written.
    revision: Option<i64>,
}

pub struct AuditSink {
    backend: Arc<dyn Backend>,
    shared: Arc<Committer>,
}

/// One request waiting for the group commit.
struct Pending {
    conditions: Vec<Condition>,
    ops: Vec<Op>,
    events: Vec<AuditEvent>,
    /// The events made ready for the chain by the caller, before it queued them.
    prepared: Vec<Prepared>,
    reply: oneshot::Sender<Result<i64, StoreError>>,
}

/// An event serialized, and its index keys made, outside the commit: in the commit only its
/// id, `prev_hash` and `hash` are filled in and one SHA-256 is taken.
struct Prepared {
    json: dt_types::audit::UnchainedJson,
    /// Index keys without the event id ([`index::index_prefixes`]).
    index: Vec<String>,
}

impl Prepared {
    fn of(events: &[AuditEvent]) -> Result<Vec<Prepared>, StoreError> {
        events
            .iter()
            .map(|e| {
                Ok(Prepared {
                    json: e
                        .unchained_json()
                        .map_err(|e| StoreError::Invalid(format!("audit event: {e}")))?,
                    index: index::index_prefixes(e),
                })
            })
            .collect()
    }
}

/// Where an event went in the chain.
struct Link {
    id: String,
    prev_hash: String,
    hash: String,
}

/// The group commit's state, shared with the task that runs each batch.
struct Committer {
    backend: Arc<dyn Backend>,
    /// `audit.jsonl_file`: committed events are appended there too.
    file: std::sync::OnceLock<FileSink>,
    queue: StdMutex<Vec<Pending>>,
    /// Held by the task committing a batch: one batch at a time per process.
    commit: Arc<Mutex<()>>,
}

/// Requests taken into one transaction at most.
const MAX_BATCH: usize = 1024;

/// One request for [`AuditSink::write_many`].
pub struct Request {
    pub conditions: Vec<Condition>,
    pub ops: Vec<Op>,
    pub events: Vec<AuditEvent>,
}

/// What `dtctl events ls` filters on.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub since: Option<OffsetDateTime>,
    pub event: Option<EventType>,
    pub user: Option<String>,
    pub device: Option<String>,
}

impl EventFilter {
    fn matches(&self, e: &AuditEvent) -> bool {
        self.since.is_none_or(|s| e.time >= s)
            && self.event.is_none_or(|t| e.event == t)
            && self
                .user
                .as_ref()
                .is_none_or(|u| e.user.as_deref() == Some(u.as_str()))
            && self.device.as_ref().is_none_or(|d| {
                e.device
                    .as_ref()
                    .is_some_and(|dev| dev.device_id == *d || dev.asset_tag == *d)
            })
    }
}

impl AuditSink {
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        AuditSink {
            backend: backend.clone(),
            shared: Arc::new(Committer {
                backend,
                file: std::sync::OnceLock::new(),
                queue: StdMutex::new(Vec::new()),
                commit: Arc::new(Mutex::new(())),
            }),
        }
    }

    /// Also append every committed event to a JSON-lines file (set once, at start).
    pub fn set_file_sink(&self, sink: FileSink) {
        if self.shared.file.set(sink).is_err() {
            tracing::warn!("the audit file sink was already set; keeping the first");
        }
    }

    async fn load_head(&self) -> Result<Head, StoreError> {
        head_of(self.backend.get(keys::AUDIT_HEAD).await?.as_ref())
    }

    /// Append one event on its own.
    pub async fn emit(&self, event: AuditEvent) -> Result<(), StoreError> {
        self.write_with(Vec::new(), Vec::new(), event)
            .await
            .map(|_| ())
    }

    /// Append `event` and apply `ops` under `conditions` in one transaction. A failing
    /// caller condition is reported with its own index (`ConditionFailed { index }`), and
    /// nothing is written; the caller then records a failure event with [`emit`].
    pub async fn write_with(
        &self,
        conditions: Vec<Condition>,
        ops: Vec<Op>,
        event: AuditEvent,
    ) -> Result<i64, StoreError> {
        self.write_with_events(conditions, ops, vec![event]).await
    }

    /// Like [`write_with`](Self::write_with) with several events, chained in order, all in
    /// the same transaction as `ops`. Joins the group commit: the request is queued, and
    /// whoever takes the commit lock next writes every queued request in one transaction
    /// (in a task of its own, so a caller that goes away never cancels others' writes).
    pub async fn write_with_events(
        &self,
        conditions: Vec<Condition>,
        ops: Vec<Op>,
        events: Vec<AuditEvent>,
    ) -> Result<i64, StoreError> {
        let mut results = self
            .write_many(vec![Request {
                conditions,
                ops,
                events,
            }])
            .await;
        results.pop().unwrap_or_else(|| {
            Err(StoreError::Invalid(
                "the audit commit returned no result".into(),
            ))
        })
    }

    /// A ceremony step's [`WritePlan`](crate::plan::WritePlan): its guards, writes and
    /// events in one transaction; a guard that no longer holds comes back as its refusal.
    pub async fn write_plan(
        &self,
        plan: crate::plan::WritePlan,
    ) -> Result<i64, crate::plan::PlanError> {
        let conditions = plan.conditions();
        let crate::plan::WritePlan {
            guards,
            ops,
            events,
        } = plan;
        let result = self.write_with_events(conditions, ops, events).await;
        crate::plan::guard_outcome(&guards, result)
    }

    /// Several independent requests at once: each is
    /// checked, written and chained as if written with its own
    /// [`write_with_events`](Self::write_with_events), and gets its own result, in order;
    /// they usually commit in the same transaction.
    pub async fn write_many(&self, requests: Vec<Request>) -> Vec<Result<i64, StoreError>> {
        let mut waiting = Vec::with_capacity(requests.len());
        let mut ready = Vec::with_capacity(requests.len());
        for r in requests {
            let (reply, rx) = oneshot::channel();
            match Prepared::of(&r.events) {
                Ok(prepared) => ready.push(Pending {
                    conditions: r.conditions,
                    ops: r.ops,
                    events: r.events,
                    prepared,
                    reply,
                }),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
            waiting.push(rx);
        }
        lock(&self.shared.queue).extend(ready);
        // Commit until everything this caller queued was taken (a batch holds at most
        // MAX_BATCH requests).
        let mut out = Vec::with_capacity(waiting.len());
        for mut rx in waiting {
            let result = loop {
                match rx.try_recv() {
                    Ok(r) => break r,
                    Err(oneshot::error::TryRecvError::Closed) => break Err(stopped()),
                    Err(oneshot::error::TryRecvError::Empty) => {}
                }
                let guard = self.shared.commit.clone().lock_owned().await;
                let batch = {
                    let mut q = lock(&self.shared.queue);
                    let n = q.len().min(MAX_BATCH);
                    q.drain(..n).collect::<Vec<_>>()
                };
                if batch.is_empty() {
                    // An earlier commit took this request: wait for its answer.
                    drop(guard);
                    break rx.await.unwrap_or_else(|_| Err(stopped()));
                }
                let shared = self.shared.clone();
                let done = tokio::spawn(async move {
                    shared.commit_batch(batch).await;
                    drop(guard);
                });
                // Wait for this batch (it may not hold our request: then go round again).
                if done.await.is_err() {
                    break Err(stopped());
                }
            };
            out.push(result);
        }
        out
    }

    /// Events matching `filter`, oldest first, at most `limit`, after the `start_after` id.
    pub async fn search(
        &self,
        filter: &EventFilter,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<AuditEvent>, Option<String>), StoreError> {
        if let Some(found) = self.search_indexed(filter, start_after, limit).await? {
            return Ok(found);
        }
        let mut out = Vec::new();
        let mut cursor = start_after.map(|id| format!("{}{id}", keys::AUDIT_EVENTS));
        loop {
            let page = self
                .backend
                .range(keys::AUDIT_EVENTS, cursor.as_deref(), 1000)
                .await?;
            for item in &page.items {
                let e: AuditEvent = match serde_json::from_slice(&item.value) {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(key = %item.key, error = %e, "skipping unreadable audit event");
                        continue;
                    }
                };
                if filter.matches(&e) {
                    out.push(e);
                    if out.len() >= limit {
                        let next = out.last().map(|e| e.id.clone());
                        return Ok((out, next));
                    }
                }
            }
            match page.next {
                Some(n) => cursor = Some(n),
                None => return Ok((out, None)),
            }
        }
    }

    /// Walk the whole chain; returns the number of events, or the id of the first event
    /// whose hash does not follow from its predecessor.
    pub async fn verify_chain(&self) -> Result<Result<u64, String>, StoreError> {
        let mut prev = String::new();
        let mut n = 0u64;
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .backend
                .range(keys::AUDIT_EVENTS, cursor.as_deref(), 1000)
                .await?;
            for item in &page.items {
                let e: AuditEvent = match serde_json::from_slice(&item.value) {
                    Ok(e) => e,
                    Err(_) => return Ok(Err(item.key.clone())),
                };
                if e.prev_hash != prev || e.chain_hash() != e.hash {
                    return Ok(Err(e.id));
                }
                prev = e.hash.clone();
                n += 1;
            }
            match page.next {
                Some(c) => cursor = Some(c),
                None => return Ok(Ok(n)),
            }
        }
    }
}

fn stopped() -> StoreError {
    StoreError::Invalid("the audit commit stopped before answering; try again".into())
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn head_of(item: Option<&Item>) -> Result<Head, StoreError> {
    match item {
        None => Ok(Head {
            seq: 0,
            hash: String::new(),
            revision: None,
        }),
        Some(item) => {
            let h: StoredHead = serde_json::from_slice(&item.value)
                .map_err(|e| StoreError::Invalid(format!("corrupt audit head: {e}")))?;
            // Chaining splices the hash into JSON unescaped: anything but a hex SHA-256 (or
            // nothing, before the first event) is damage, named here rather than later.
            if !(h.hash.is_empty()
                || (h.hash.len() == 64 && h.hash.bytes().all(|b| b.is_ascii_hexdigit())))
            {
                return Err(StoreError::Invalid(format!(
                    "corrupt audit head: its hash is not a hex SHA-256 (at event {}); no \
                     event can be appended until it is repaired (`dtctl events verify` \
                     shows the last good event)",
                    h.seq
                )));
            }
            Ok(Head {
                seq: h.seq,
                hash: h.hash,
                revision: Some(item.revision),
            })
        }
    }
}

/// Chain the events of the requests that applied (`outcomes[i].is_some()`) after `head`, in
/// request order; returns where each event went (per request) and the ops that store the
/// events, their index entries and the new head.
fn chain_events(
    requests: &[Vec<Prepared>],
    outcomes: &[Option<i64>],
    head: Head,
) -> Result<(Vec<Vec<Link>>, Vec<Op>), StoreError> {
    let mut seq = head.seq;
    let mut prev = head.hash;
    let mut ops = Vec::new();
    let mut chained = Vec::with_capacity(requests.len());
    for (events, outcome) in requests.iter().zip(outcomes) {
        if outcome.is_none() {
            chained.push(Vec::new());
            continue;
        }
        let mut done = Vec::with_capacity(events.len());
        for event in events {
            seq += 1;
            let id = keys::audit_event_id(seq);
            let (hash, json) = event.json.chain(&id, &prev).ok_or_else(|| {
                StoreError::Invalid(format!("audit chain: unexpected id {id} or hash {prev}"))
            })?;
            ops.push(Op::Put {
                key: keys::audit_event(seq),
                value: json,
                expires: None,
            });
            ops.extend(event.index.iter().map(|prefix| Op::Put {
                key: [prefix.as_str(), id.as_str()].concat(),
                value: Vec::new(),
                expires: None,
            }));
            let prev_hash = std::mem::replace(&mut prev, hash.clone());
            done.push(Link {
                id,
                prev_hash,
                hash,
            });
        }
        chained.push(done);
    }
    if seq != head.seq {
        ops.push(Op::Put {
            key: keys::AUDIT_HEAD.into(),
            value: serde_json::to_vec(&StoredHead { seq, hash: prev })
                .map_err(|e| StoreError::Invalid(e.to_string()))?,
            expires: None,
        });
    }
    Ok((chained, ops))
}

/// The same error for every request of a batch whose transaction failed.
fn copy_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::AlreadyExists(k) => StoreError::AlreadyExists(k.clone()),
        StoreError::NotFound(k) => StoreError::NotFound(k.clone()),
        StoreError::RevisionMismatch(k) => StoreError::RevisionMismatch(k.clone()),
        StoreError::ConditionFailed { index, key } => StoreError::ConditionFailed {
            index: *index,
            key: key.clone(),
        },
        StoreError::Invalid(m) => StoreError::Invalid(m.clone()),
        StoreError::Backend(b) => StoreError::backend(std::io::Error::other(b.to_string())),
    }
}

impl Committer {
    /// Write `batch` in one transaction and answer each request with its own result.
    async fn commit_batch(&self, batch: Vec<Pending>) {
        let mut groups = Vec::with_capacity(batch.len());
        let mut requests = Vec::with_capacity(batch.len());
        let mut events = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for p in batch {
            groups.push(BatchWrite {
                conditions: p.conditions,
                ops: p.ops,
            });
            requests.push(p.prepared);
            events.push(p.events);
            replies.push(p.reply);
        }
        let requests = Arc::new(requests);
        let stored: Arc<StdMutex<Vec<Vec<Link>>>> = Arc::default();
        let tail: dt_store::BatchTail = {
            let requests = requests.clone();
            let stored = stored.clone();
            Arc::new(move |outcomes: &[Option<i64>], head: Option<&Item>| {
                let (chained, ops) = chain_events(&requests, outcomes, head_of(head)?)?;
                *lock(&stored) = chained;
                Ok(ops)
            })
        };
        match self
            .backend
            .write_batch(groups, keys::AUDIT_HEAD, tail)
            .await
        {
            Ok(results) => {
                if let Some(f) = self.file.get() {
                    let links = std::mem::take(&mut *lock(&stored));
                    let events: Vec<AuditEvent> = events
                        .into_iter()
                        .zip(links)
                        .flat_map(|(events, links)| events.into_iter().zip(links))
                        .map(|(mut e, link)| {
                            e.id = link.id;
                            e.prev_hash = link.prev_hash;
                            e.hash = link.hash;
                            e
                        })
                        .collect();
                    if !events.is_empty()
                        && let Err(e) = f.write(&events)
                    {
                        tracing::warn!(error = %e, "audit file sink: cannot append events (they are stored; export them with dtctl events export)");
                    }
                }
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(copy_error(&e)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn head_item(hash: &str) -> Item {
        Item {
            key: keys::AUDIT_HEAD.into(),
            value: serde_json::to_vec(&StoredHead {
                seq: 7,
                hash: hash.into(),
            })
            .unwrap_or_default(),
            revision: 3,
            expires: None,
        }
    }

    /// A head whose hash could not have been written by the sink is refused with its own
    /// error, before any event is chained after it.
    #[test]
    fn a_head_with_a_damaged_hash_is_refused() {
        let good = "ab".repeat(32);
        let head = head_of(Some(&head_item(&good))).unwrap();
        assert_eq!(
            (head.seq, head.hash.as_str(), head.revision),
            (7, good.as_str(), Some(3))
        );
        assert_eq!(head_of(None).unwrap().seq, 0);
        for bad in [
            "x".repeat(64),
            "ab".repeat(31),
            format!("{}\"", "a".repeat(63)),
        ] {
            match head_of(Some(&head_item(&bad))) {
                Err(StoreError::Invalid(m)) => {
                    assert!(m.contains("corrupt audit head"), "{m}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
