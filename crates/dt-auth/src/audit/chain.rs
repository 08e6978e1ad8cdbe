//! Verifying the audit hash chain, and retention that keeps it verifiable.
//!
//! What [`AuditSink::verify`] proves: the stored events, in order, each carry the hash of
//! their own content and the hash of the event before them, their sequence numbers have no
//! gap, each is stored under its own sequence number, and the last one is the one the head
//! (`/audit/head`) names. So editing an event, deleting one (in the middle or at the end),
//! or moving events around is reported at the first link it breaks, with that event's id
//! and time.
//!
//! What it does not prove: that nobody rewrote the whole chain from some point on *and* the
//! head (anyone who can write the database can); export the events as they happen
//! (`dtctl events export --follow`, or the auth service's JSON-lines sink) to keep a copy
//! out of their reach.
//!
//! Retention ([`AuditSink::remove_before`]) deletes a prefix of the chain and records the
//! last removed event's sequence number and hash in `/audit/anchor`, in the same
//! transaction as each deletion, so `verify` starts from the anchor and still passes.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use dt_store::{Op, StoreError};
use dt_types::audit::AuditEvent;

use super::AuditSink;
use crate::keys;

/// Where the kept chain starts after retention removed older events.
pub const AUDIT_ANCHOR: &str = "/audit/anchor";

/// How many events one retention transaction removes.
const REMOVE_BATCH: usize = 1000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// The last removed event's sequence number.
    pub seq: u64,
    /// The last removed event's hash: the next event's `prev_hash`.
    pub hash: String,
    /// The last removed event's time.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
}

/// The first link that does not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokenLink {
    /// The event at which the chain breaks (or the last good one, for a missing tail).
    pub id: String,
    pub time: Option<OffsetDateTime>,
    pub problem: String,
}

/// What a walk over the chain found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainReport {
    /// Events whose links were checked.
    pub checked: u64,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    /// Where the kept chain starts, when retention removed older events.
    pub anchor: Option<Anchor>,
    pub broken: Option<BrokenLink>,
}

fn seq_of_key(key: &str) -> Option<u64> {
    key.strip_prefix(keys::AUDIT_EVENTS)?.parse().ok()
}

fn id_of(seq: u64) -> String {
    keys::audit_event_id(seq)
}

impl AuditSink {
    /// The anchor retention left, if any.
    pub async fn anchor(&self) -> Result<Option<Anchor>, StoreError> {
        match self.backend.get(AUDIT_ANCHOR).await? {
            None => Ok(None),
            Some(item) => serde_json::from_slice(&item.value)
                .map(Some)
                .map_err(|e| StoreError::Invalid(format!("corrupt audit anchor: {e}"))),
        }
    }

    /// Walk the chain and report the first broken or missing link. With `since`, the events
    /// before that time are not checked: the first event at or after it is trusted to follow
    /// from the one before it, and every later link is checked.
    pub async fn verify(&self, since: Option<OffsetDateTime>) -> Result<ChainReport, StoreError> {
        let head = self.load_head().await?;
        let anchor = self.anchor().await?;
        let mut report = ChainReport {
            anchor: anchor.clone(),
            ..Default::default()
        };
        let (mut expected, mut prev, mut prev_time) = match &anchor {
            Some(a) => (a.seq + 1, a.hash.clone(), Some(a.time)),
            None => (1, String::new(), None),
        };
        let mut started = since.is_none();
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .backend
                .range(keys::AUDIT_EVENTS, cursor.as_deref(), 1000)
                .await?;
            for item in &page.items {
                let key_seq = seq_of_key(&item.key);
                let e: Option<AuditEvent> = serde_json::from_slice(&item.value).ok();
                if !started {
                    // Before `since`: follow the stored values without checking them.
                    match (&e, key_seq) {
                        (Some(e), Some(s)) if since.is_some_and(|t| e.time < t) => {
                            expected = s + 1;
                            prev = e.hash.clone();
                            prev_time = Some(e.time);
                            continue;
                        }
                        (Some(e), Some(s)) => {
                            started = true;
                            expected = s;
                            prev = e.prev_hash.clone();
                        }
                        _ => started = true,
                    }
                }
                let Some(key_seq) = key_seq else {
                    report.broken = Some(BrokenLink {
                        id: item.key.clone(),
                        time: None,
                        problem: format!(
                            "an item {:?} that is not an event is stored among the events",
                            item.key
                        ),
                    });
                    return Ok(report);
                };
                let Some(e) = e else {
                    report.broken = Some(BrokenLink {
                        id: id_of(key_seq),
                        time: None,
                        problem: "the stored event is unreadable (its bytes were changed)".into(),
                    });
                    return Ok(report);
                };
                let broken = |problem: String| BrokenLink {
                    id: e.id.clone(),
                    time: Some(e.time),
                    problem,
                };
                if key_seq > expected {
                    let missing = if key_seq - expected == 1 {
                        format!("event {} is missing", id_of(expected))
                    } else {
                        format!(
                            "events {} to {} are missing",
                            id_of(expected),
                            id_of(key_seq - 1)
                        )
                    };
                    report.broken = Some(BrokenLink {
                        id: id_of(key_seq),
                        time: Some(e.time),
                        problem: format!("{missing} before this one (deleted)"),
                    });
                    return Ok(report);
                }
                if e.id != id_of(key_seq) {
                    report.broken = Some(broken(format!(
                        "event {} is stored in place of event {} (events were moved or reordered)",
                        e.id,
                        id_of(key_seq)
                    )));
                    return Ok(report);
                }
                if e.chain_hash() != e.hash {
                    report.broken = Some(broken(
                        "its content does not match its hash (the event was edited)".into(),
                    ));
                    return Ok(report);
                }
                if e.prev_hash != prev {
                    report.broken = Some(broken(
                        "it does not follow the event before it (that event was changed, replaced or reordered)"
                            .into(),
                    ));
                    return Ok(report);
                }
                report.first_id.get_or_insert_with(|| e.id.clone());
                report.last_id = Some(e.id.clone());
                report.checked += 1;
                expected = key_seq + 1;
                prev = e.hash.clone();
                prev_time = Some(e.time);
            }
            match page.next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        // The end: the head names the last event written.
        let last = expected - 1;
        if head.seq != last || (head.seq > 0 && head.hash != prev) {
            let problem = if head.seq > last {
                format!(
                    "the log ends at event {} but the head says {} events were written: events after it were deleted",
                    id_of(last),
                    head.seq
                )
            } else {
                format!(
                    "the head (event {}) does not match the last stored event {}",
                    id_of(head.seq),
                    id_of(last)
                )
            };
            report.broken = Some(BrokenLink {
                id: id_of(last),
                time: prev_time,
                problem,
            });
        }
        Ok(report)
    }

    /// Retention: remove the events older than `before`, oldest first, stopping at the first
    /// newer one (the kept log stays one unbroken chain). Each batch moves the anchor to the
    /// last event it removes, in the same transaction. Returns how many were removed.
    pub async fn remove_before(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let mut removed = 0u64;
        loop {
            let page = self
                .backend
                .range(keys::AUDIT_EVENTS, None, REMOVE_BATCH)
                .await?;
            let mut ops = Vec::new();
            let mut last: Option<Anchor> = None;
            let mut done = page.next.is_none();
            for item in &page.items {
                let Some(seq) = seq_of_key(&item.key) else {
                    done = true;
                    break;
                };
                // An unreadable event stops retention: it is evidence, and verify reports it.
                let Ok(e) = serde_json::from_slice::<AuditEvent>(&item.value) else {
                    done = true;
                    break;
                };
                if e.time >= before {
                    done = true;
                    break;
                }
                ops.push(Op::Delete {
                    key: item.key.clone(),
                });
                ops.extend(
                    super::index::stored_index_keys(&e, seq)
                        .into_iter()
                        .map(|key| Op::Delete { key }),
                );
                last = Some(Anchor {
                    seq,
                    hash: e.hash.clone(),
                    time: e.time,
                });
            }
            let Some(anchor) = last else {
                return Ok(removed);
            };
            let n = ops
                .iter()
                .filter(|o| matches!(o, Op::Delete { key } if key.starts_with(keys::AUDIT_EVENTS)))
                .count() as u64;
            ops.push(Op::Put {
                key: AUDIT_ANCHOR.into(),
                value: serde_json::to_vec(&anchor)
                    .map_err(|e| StoreError::Invalid(e.to_string()))?,
                expires: None,
            });
            self.backend.atomic_write(Vec::new(), ops).await?;
            removed += n;
            tracing::info!(
                removed = n,
                through = %id_of(anchor.seq),
                "audit retention removed old events"
            );
            if done {
                return Ok(removed);
            }
        }
    }
}
