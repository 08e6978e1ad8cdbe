//! The MDM sync's writes: a batch of device changes in one transaction, where an item whose
//! device changed since it was read drops out (a conflict, retried by the next sync) and
//! the rest is written; and a source's sync report.

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
        plan.ops.push(Op::Put {
            key: keys::mdm_request(&r.id),
            value: serde_json::to_vec(r)?,
            expires: Some(kept_until),
        });
        plan.guards.push(Guard {
            condition: Condition::Revision(keys::mdm_request(&r.id), rev),
            refusal: Refusal::SyncStateChanged,
        });
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dt_store::StoreError;
    use dt_types::audit::EventType;
    use proptest::prelude::*;
    use time::OffsetDateTime;

    use crate::plan::PlanError;

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
}
