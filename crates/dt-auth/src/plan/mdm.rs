//! The MDM sync's writes: a batch of device changes in one transaction, where an item whose
//! device changed since it was read drops out (a conflict, retried by the next sync) and
//! the rest is written; a source's sync report, its claim by a service, and a sync
//! request's progress.

use dt_store::{Condition, Op};
use dt_types::audit::AuditEvent;
use dt_types::{Device, Kind};

use super::{Guard, Refusal, WritePlan};
use crate::keys;
use dt_types::mdm::{SourceState, SyncRequest};

/// One device change of a batch: what must still hold, what it writes, what it records.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchItem {
    pub conditions: Vec<Condition>,
    pub ops: Vec<Op>,
    pub events: Vec<AuditEvent>,
}

/// A device the sync creates (`ops`: the device and its indexes): only if no device has
/// its serial and OS (`tag_index`), nor its id.
pub fn device_created(
    device: &Device,
    tag_index: String,
    ops: Vec<Op>,
    event: AuditEvent,
) -> BatchItem {
    BatchItem {
        conditions: vec![
            Condition::NotExists(tag_index),
            Condition::NotExists(keys::resource(Kind::Device, &device.metadata.name)),
        ],
        ops,
        events: vec![event],
    }
}

/// A device the sync changes or removes (`ops`), only if still at the revision read.
pub fn device_changed(id: &str, revision: i64, ops: Vec<Op>, events: Vec<AuditEvent>) -> BatchItem {
    BatchItem {
        conditions: vec![Condition::Revision(
            keys::resource(Kind::Device, id),
            revision,
        )],
        ops,
        events,
    }
}

/// The batch as one plan: every item's guards, writes and events, in item order. A guard's
/// refusal is the position of its item in `items`, so a failed one names the item to drop.
pub fn batch(items: &[BatchItem]) -> WritePlan<usize> {
    let mut plan = WritePlan {
        guards: Vec::new(),
        ops: Vec::new(),
        events: Vec::new(),
    };
    for (i, item) in items.iter().enumerate() {
        plan.guards.extend(item.conditions.iter().map(|c| Guard {
            condition: c.clone(),
            refusal: i,
        }));
        plan.ops.extend(item.ops.iter().cloned());
        plan.events.extend(item.events.iter().cloned());
    }
    plan
}

/// A source's sync report: its new state (stored under `source`), only if it is still as read (`state_revision`;
/// `None`: it had none), and the sync request it answers (with its revision as read and
/// how long it is kept), likewise. No event: sync bookkeeping, not a change of devices.
pub fn sync_reported(
    source: &str,
    state: &SourceState,
    state_revision: Option<i64>,
    request: Option<(&SyncRequest, i64, time::OffsetDateTime)>,
) -> Result<WritePlan<Refusal>, serde_json::Error> {
    let key = keys::mdm_source(source);
    let mut plan = WritePlan {
        guards: vec![Guard {
            condition: match state_revision {
                Some(rev) => Condition::Revision(key.clone(), rev),
                None => Condition::NotExists(key.clone()),
            },
            refusal: Refusal::SyncStateChanged,
        }],
        ops: vec![Op::Put {
            key,
            value: serde_json::to_vec(state)?,
            expires: None,
        }],
        events: Vec::new(),
    };
    if let Some((r, rev, kept_until)) = request {
        let (guard, op) = request_written(r, rev, kept_until)?;
        plan.ops.push(op);
        plan.guards.push(guard);
    }
    Ok(plan)
}

/// A sync request written back (kept until `kept_until`), only if still at `revision`.
fn request_written(
    request: &SyncRequest,
    revision: i64,
    kept_until: time::OffsetDateTime,
) -> Result<(Guard<Refusal>, Op), serde_json::Error> {
    let key = keys::mdm_request(&request.id);
    Ok((
        Guard {
            condition: Condition::Revision(key.clone(), revision),
            refusal: Refusal::SyncStateChanged,
        },
        Op::Put {
            key,
            value: serde_json::to_vec(request)?,
            expires: Some(kept_until),
        },
    ))
}

/// A source claimed by its first MDM service: its initial state, only if it has none yet
/// (else another service claimed it first, and the caller looks at whose it is). No event:
/// sync bookkeeping.
pub fn source_claimed(state: &SourceState) -> Result<WritePlan<Refusal>, serde_json::Error> {
    sync_reported(&state.name, state, None, None)
}

/// A sync request's progress (phase and counts), only if the request is still at the
/// revision read. No event: sync bookkeeping.
pub fn progress_reported(
    request: &SyncRequest,
    revision: i64,
    kept_until: time::OffsetDateTime,
) -> Result<WritePlan<Refusal>, serde_json::Error> {
    let (guard, op) = request_written(request, revision, kept_until)?;
    Ok(WritePlan {
        guards: vec![guard],
        ops: vec![op],
        events: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dt_store::StoreError;
    use dt_types::audit::EventType;
    use proptest::prelude::*;
    use time::OffsetDateTime;

    use crate::plan::{PlanError, refused_at};

    fn item(id: usize, n_conds: usize) -> BatchItem {
        BatchItem {
            conditions: (0..n_conds)
                .map(|c| Condition::NotExists(format!("/k/{id}/{c}")))
                .collect(),
            ops: vec![Op::Delete {
                key: format!("/k/{id}"),
            }],
            events: vec![
                AuditEvent::new(EventType::DeviceDelete, true, OffsetDateTime::UNIX_EPOCH)
                    .message(id.to_string()),
            ],
        }
    }

    proptest! {
        /// Whichever condition of a batch fails, its refusal is the item that set it; the
        /// plan keeps every item's writes and events in item order.
        #[test]
        fn a_failed_condition_names_the_item_that_set_it(
            sizes in proptest::collection::vec(1usize..4, 1..20),
            pick in any::<proptest::sample::Index>(),
        ) {
            let items: Vec<BatchItem> =
                sizes.iter().enumerate().map(|(i, &n)| item(i, n)).collect();
            let plan = batch(&items);
            let total: usize = sizes.iter().sum();
            prop_assert_eq!(plan.guards.len(), total);
            prop_assert_eq!(plan.ops.len(), items.len());
            let failed = pick.index(total);
            let Err(PlanError::Refused(owner)) = plan.outcome::<i64>(Err(StoreError::ConditionFailed {
                index: failed,
                key: String::new(),
            })) else {
                panic!("not refused");
            };
            // The owner's conditions are the ones around the failed index.
            let before: usize = sizes[..owner].iter().sum();
            prop_assert!(before <= failed && failed < before + sizes[owner]);
            prop_assert_eq!(&plan.ops[owner], &items[owner].ops[0]);
            // The audit chain's own condition, past the batch's, is not an item's.
            let other = plan.outcome::<i64>(Err(StoreError::ConditionFailed { index: total, key: String::new() }));
            prop_assert!(matches!(other, Err(PlanError::Store(_))));
        }
    }

    #[test]
    fn a_claim_writes_the_first_state_only_if_there_is_none() {
        let state = SourceState {
            name: "jamf-eu".into(),
            origin: dt_types::device::SourceOrigin::Jamf,
            service: "mdm-1".into(),
            last_full: None,
            last_partial: None,
            cursor: None,
            last_error: None,
        };
        let plan = source_claimed(&state).unwrap();
        let key = keys::mdm_source("jamf-eu");
        assert_eq!(plan.conditions(), vec![Condition::NotExists(key.clone())]);
        assert_eq!(
            plan.ops,
            vec![Op::Put {
                key,
                value: serde_json::to_vec(&state).unwrap(),
                expires: None,
            }]
        );
        assert!(plan.events.is_empty());
        assert_eq!(refused_at(&plan, 0), Refusal::SyncStateChanged);
    }

    #[test]
    fn progress_is_written_on_the_request_as_read_and_kept_as_long() {
        let at = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let request = SyncRequest {
            id: "r1".into(),
            source: "jamf-eu".into(),
            full: true,
            dry_run: false,
            requested_by: "alice".into(),
            requested_at: at,
            phase: "fetching".into(),
            done: 3,
            total: 10,
            result: None,
        };
        let kept = at + time::Duration::days(1);
        let plan = progress_reported(&request, 12, kept).unwrap();
        let key = keys::mdm_request("r1");
        assert_eq!(
            plan.conditions(),
            vec![Condition::Revision(key.clone(), 12)]
        );
        assert_eq!(
            plan.ops,
            vec![Op::Put {
                key,
                value: serde_json::to_vec(&request).unwrap(),
                expires: Some(kept),
            }]
        );
        assert!(plan.events.is_empty());
        assert_eq!(refused_at(&plan, 0), Refusal::SyncStateChanged);
        assert!(matches!(plan.outcome(Ok(13i64)), Ok(13)));
    }
}
