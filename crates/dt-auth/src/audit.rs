//! The audit sink: typed events appended to storage in one total order, hash-chained, and
//! written in the same transaction as the change they describe.
//!
//! Order and chain: `/audit/head` holds the last sequence number and hash. Each append is an
//! atomic write conditioned on the head's revision, so two auth servers sharing a database
//! never fork the chain; within one process a mutex avoids needless retries.

use std::sync::Arc;

use dt_store::{Backend, Condition, Op, StoreError};
use dt_types::audit::{AuditEvent, EventType};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::Mutex;

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
    head: Mutex<Option<Head>>,
    /// `audit.jsonl_file`: committed events are appended there too.
    file: std::sync::OnceLock<FileSink>,
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

const MAX_RETRIES: usize = 20;

impl AuditSink {
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        AuditSink {
            backend,
            head: Mutex::new(None),
            file: std::sync::OnceLock::new(),
        }
    }

    /// Also append every committed event to a JSON-lines file (set once, at start).
    pub fn set_file_sink(&self, sink: FileSink) {
        if self.file.set(sink).is_err() {
            tracing::warn!("the audit file sink was already set; keeping the first");
        }
    }

    async fn load_head(&self) -> Result<Head, StoreError> {
        match self.backend.get(keys::AUDIT_HEAD).await? {
            None => Ok(Head {
                seq: 0,
                hash: String::new(),
                revision: None,
            }),
            Some(item) => {
                let h: StoredHead = serde_json::from_slice(&item.value)
                    .map_err(|e| StoreError::Invalid(format!("corrupt audit head: {e}")))?;
                Ok(Head {
                    seq: h.seq,
                    hash: h.hash,
                    revision: Some(item.revision),
                })
            }
        }
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
    /// the same transaction as `ops`.
    pub async fn write_with_events(
        &self,
        conditions: Vec<Condition>,
        ops: Vec<Op>,
        mut events: Vec<AuditEvent>,
    ) -> Result<i64, StoreError> {
        let mut guard = self.head.lock().await;
        let head_index = conditions.len();
        for _ in 0..MAX_RETRIES {
            let head = match guard.as_ref() {
                Some(h) => h.clone(),
                None => self.load_head().await?,
            };
            let mut seq = head.seq;
            let mut prev = head.hash.clone();
            let mut all_ops = ops.clone();
            for event in events.iter_mut() {
                seq += 1;
                event.id = format!("{seq:020}");
                event.prev_hash = prev.clone();
                event.hash = String::new();
                event.hash = event.chain_hash();
                prev = event.hash.clone();
                all_ops.push(Op::Put {
                    key: keys::audit_event(seq),
                    value: serde_json::to_vec(&*event)
                        .map_err(|e| StoreError::Invalid(e.to_string()))?,
                    expires: None,
                });
                all_ops.extend(index::index_ops(event, seq));
            }
            let stored_head = StoredHead { seq, hash: prev };
            let mut conds = conditions.clone();
            conds.push(match head.revision {
                Some(rev) => Condition::Revision(keys::AUDIT_HEAD.into(), rev),
                None => Condition::NotExists(keys::AUDIT_HEAD.into()),
            });
            all_ops.push(Op::Put {
                key: keys::AUDIT_HEAD.into(),
                value: serde_json::to_vec(&stored_head)
                    .map_err(|e| StoreError::Invalid(e.to_string()))?,
                expires: None,
            });
            match self.backend.atomic_write(conds, all_ops).await {
                Ok(rev) => {
                    *guard = Some(Head {
                        seq,
                        hash: stored_head.hash,
                        revision: Some(rev),
                    });
                    if let Some(f) = self.file.get()
                        && let Err(e) = f.write(&events)
                    {
                        tracing::warn!(error = %e, "audit file sink: cannot append events (they are stored; export them with dtctl events export)");
                    }
                    return Ok(rev);
                }
                Err(StoreError::ConditionFailed { index, .. }) if index == head_index => {
                    // Another auth server appended: reload the head and retry.
                    *guard = None;
                }
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Invalid(
            "audit log is too contended; try again".into(),
        ))
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
