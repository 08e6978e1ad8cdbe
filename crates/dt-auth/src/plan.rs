//! What a ceremony step writes, decided without I/O: the conditions it needs, each with the
//! refusal a client sees when it no longer holds, the writes, and the audit events, all
//! committed in one transaction ([`crate::audit::AuditSink::write_plan`]). The drivers build
//! plans; the tests below check them directly, so what is tested is what runs.

use dt_store::{Condition, Op, StoreError};
use dt_types::audit::AuditEvent;
use dt_types::{Device, Kind};

use crate::keys;

/// A condition of a plan, and what the client is told when it failed.
#[derive(Clone, Debug, PartialEq)]
pub struct Guard {
    pub condition: Condition,
    /// The refusal, e.g. "the device changed during authentication; try again".
    pub refusal: &'static str,
}

/// One atomic step: every guard holds, then every op is written and every event chained,
/// or nothing is.
#[derive(Clone, Debug, PartialEq)]
pub struct WritePlan {
    pub guards: Vec<Guard>,
    pub ops: Vec<Op>,
    pub events: Vec<AuditEvent>,
}

/// How a plan's commit ended.
#[derive(Debug)]
pub enum PlanError {
    /// A guard no longer held: nothing was written; the guard's refusal says why.
    Refused(&'static str),
    /// Storage failed.
    Store(StoreError),
}

impl WritePlan {
    /// The guards' conditions, in order (what storage checks).
    pub fn conditions(&self) -> Vec<Condition> {
        self.guards.iter().map(|g| g.condition.clone()).collect()
    }

    /// Maps a storage result to the guard that failed, if one did.
    pub fn outcome<T>(&self, result: Result<T, StoreError>) -> Result<T, PlanError> {
        guard_outcome(&self.guards, result)
    }
}

/// [`WritePlan::outcome`] for a plan already taken apart to be written.
pub(crate) fn guard_outcome<T>(
    guards: &[Guard],
    result: Result<T, StoreError>,
) -> Result<T, PlanError> {
    match result {
        Ok(v) => Ok(v),
        Err(StoreError::ConditionFailed { index, key }) => match guards.get(index) {
            Some(g) => Err(PlanError::Refused(g.refusal)),
            // Not one of ours (the audit chain's own condition): a storage problem.
            None => Err(PlanError::Store(StoreError::ConditionFailed { index, key })),
        },
        Err(e) => Err(PlanError::Store(e)),
    }
}

/// The device document written back, conditioned on the revision the ceremony read.
fn device_unchanged(
    device: &Device,
    read_revision: i64,
    refusal: &'static str,
) -> Result<(Guard, Op), serde_json::Error> {
    let key = keys::resource(Kind::Device, &device.metadata.name);
    Ok((
        Guard {
            condition: Condition::Revision(key.clone(), read_revision),
            refusal,
        },
        Op::Put {
            key,
            value: serde_json::to_vec(device)?,
            expires: None,
        },
    ))
}

/// The refusal when the device changed between the challenge and the answer (a concurrent
/// authentication, an admin's edit, a revocation): the answer is discarded, never merged.
pub const AUTHN_DEVICE_CHANGED: &str = "the device changed during authentication; try again";
/// The same for a device web authentication, whose client is a browser session.
pub const WEB_AUTHN_DEVICE_CHANGED: &str =
    "the device changed during authentication; log in to the web UI again";

/// A device authentication that succeeded: the device's new collected-data history and the
/// events (authentication, certificate augmentation), only if the device is still the one
/// the challenge was issued for.
pub fn device_authenticated(
    device: &Device,
    read_revision: i64,
    events: Vec<AuditEvent>,
) -> Result<WritePlan, serde_json::Error> {
    let (guard, op) = device_unchanged(device, read_revision, AUTHN_DEVICE_CHANGED)?;
    Ok(WritePlan {
        guards: vec![guard],
        ops: vec![op],
        events,
    })
}

/// A device web authentication that succeeded: the device's new history and the browser's
/// confirmation token (`confirmation`), under the same condition, with its event.
pub fn device_web_authenticated(
    device: &Device,
    read_revision: i64,
    confirmation: Op,
    event: AuditEvent,
) -> Result<WritePlan, serde_json::Error> {
    let (guard, op) = device_unchanged(device, read_revision, WEB_AUTHN_DEVICE_CHANGED)?;
    Ok(WritePlan {
        guards: vec![guard],
        ops: vec![op, confirmation],
        events: vec![event],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dt_types::audit::EventType;
    use dt_types::device::OsType;
    use proptest::prelude::*;
    use time::OffsetDateTime;

    fn event(t: EventType) -> AuditEvent {
        AuditEvent::new(t, true, OffsetDateTime::UNIX_EPOCH)
    }

    proptest! {
        /// Whatever the device and revision: the plan writes exactly that device under the
        /// condition that it is still at the revision read, and keeps the events in order.
        #[test]
        fn an_authentication_writes_the_device_it_read_and_nothing_else(
            tag in "[A-Z0-9]{1,24}",
            rev in 1i64..i64::MAX,
        ) {
            let d = dt_types::device::new_device(OsType::Linux, &tag);
            let events = vec![event(EventType::DeviceAuthenticate), event(EventType::CertCreate)];
            let plan = device_authenticated(&d, rev, events.clone()).unwrap();
            let key = keys::resource(Kind::Device, &d.metadata.name);
            prop_assert_eq!(plan.conditions(), vec![Condition::Revision(key.clone(), rev)]);
            prop_assert_eq!(plan.ops.len(), 1);
            let Op::Put { key: k, value, expires } = &plan.ops[0] else {
                panic!("not a put: {:?}", plan.ops[0]);
            };
            prop_assert_eq!(k, &key);
            prop_assert!(expires.is_none());
            let back: Device = serde_json::from_slice(value).unwrap();
            prop_assert_eq!(back, d);
            prop_assert_eq!(plan.events, events);
        }
    }

    #[test]
    fn a_web_authentication_writes_the_confirmation_under_the_same_condition() {
        let d = dt_types::device::new_device(OsType::Macos, "C02WEB");
        let confirm = Op::Put {
            key: "/devices/web-confirmations/abc".into(),
            value: b"{}".to_vec(),
            expires: None,
        };
        let plan =
            device_web_authenticated(&d, 7, confirm.clone(), event(EventType::DeviceAuthenticate))
                .unwrap();
        assert_eq!(plan.guards.len(), 1);
        assert_eq!(plan.guards[0].refusal, WEB_AUTHN_DEVICE_CHANGED);
        assert_eq!(plan.ops.len(), 2);
        assert_eq!(plan.ops[1], confirm);
    }

    #[test]
    fn a_failed_guard_is_reported_by_its_refusal_and_other_failures_as_storage() {
        let d = dt_types::device::new_device(OsType::Linux, "X1");
        let plan = device_authenticated(&d, 3, vec![]).unwrap();
        let refused = plan.outcome::<i64>(Err(StoreError::ConditionFailed {
            index: 0,
            key: "k".into(),
        }));
        assert!(matches!(
            refused,
            Err(PlanError::Refused(AUTHN_DEVICE_CHANGED))
        ));
        // A condition the plan did not set (index beyond its guards) is not a refusal.
        let other = plan.outcome::<i64>(Err(StoreError::ConditionFailed {
            index: 1,
            key: "/audit/head".into(),
        }));
        assert!(matches!(other, Err(PlanError::Store(_))));
        assert!(matches!(plan.outcome(Ok(5i64)), Ok(5)));
    }
}
