//! The inventory's writes: a device created (alone, with an enrollment token, or as one
//! item of a bulk import), and a device changed (an edit, a removal, a new enrollment
//! token). What a device's document and indexes are is `crate::devices::put_ops`; what
//! must hold for them to be written is here.

use dt_store::{Condition, Op};
use dt_types::audit::AuditEvent;
use dt_types::{Device, Kind};

use super::{Guard, Refusal, WritePlan};
use crate::keys;

/// A new device (`ops`: its document and indexes, and its enrollment token when one was
/// asked for), only if no device has its asset tag and OS ("already in the inventory"), nor
/// its id (only a client-chosen id can be taken: fresh ids are UUIDv7).
pub fn device_created(device: &Device, ops: Vec<Op>, event: AuditEvent) -> WritePlan<Refusal> {
    WritePlan {
        guards: vec![
            Guard {
                condition: Condition::NotExists(keys::device_tag_index(
                    device.spec.os_type,
                    &device.spec.asset_tag,
                )),
                refusal: Refusal::DeviceExists {
                    asset_tag: device.spec.asset_tag.clone(),
                    os_type: device.spec.os_type,
                },
            },
            Guard {
                condition: Condition::NotExists(keys::resource(
                    Kind::Device,
                    &device.metadata.name,
                )),
                refusal: Refusal::DeviceIdTaken {
                    id: device.metadata.name.clone(),
                },
            },
        ],
        ops,
        events: vec![event],
    }
}

/// A change of device `id` (`ops`, `events`), only if it is still at the revision read.
pub fn device_changed(
    id: &str,
    revision: i64,
    ops: Vec<Op>,
    events: Vec<AuditEvent>,
) -> WritePlan<Refusal> {
    WritePlan {
        guards: vec![Guard {
            condition: Condition::Revision(keys::resource(Kind::Device, id), revision),
            refusal: Refusal::DeviceChanged { id: id.to_string() },
        }],
        ops,
        events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dt_types::audit::EventType;
    use dt_types::device::OsType;
    use proptest::prelude::*;
    use time::OffsetDateTime;

    use crate::error::ErrorCode;
    use crate::plan::refused_at;

    fn event(t: EventType) -> AuditEvent {
        AuditEvent::new(t, true, OffsetDateTime::UNIX_EPOCH)
    }

    #[test]
    fn a_new_device_needs_its_tag_and_its_id_free() {
        let d = dt_types::device::new_device(OsType::Macos, "C02NEW");
        let ops = vec![Op::Delete { key: "/k".into() }];
        let plan = device_created(&d, ops.clone(), event(EventType::DeviceCreate));
        assert_eq!(
            plan.conditions(),
            vec![
                Condition::NotExists(keys::device_tag_index(OsType::Macos, "C02NEW")),
                Condition::NotExists(keys::resource(Kind::Device, &d.metadata.name)),
            ]
        );
        assert_eq!(plan.ops, ops);
        assert_eq!(plan.events, vec![event(EventType::DeviceCreate)]);
        assert!(matches!(plan.outcome(Ok(3i64)), Ok(3)));
        // Each guard says what is taken; both are "already exists".
        let tag = refused_at(&plan, 0);
        assert_eq!(
            tag.to_string(),
            "device \"C02NEW\"/macOS is already in the inventory"
        );
        let id = refused_at(&plan, 1);
        assert_eq!(
            id.to_string(),
            format!(
                "device id {} is already another device's: leave the id out and the inventory picks a fresh one",
                d.metadata.name
            )
        );
        for r in [tag, id] {
            assert_eq!(r.code(), ErrorCode::AlreadyExists);
        }
    }

    proptest! {
        /// A change is written only on the revision read, and refused as a conflict naming
        /// the device; its writes and events are the ones given, in order.
        #[test]
        fn a_change_is_guarded_on_the_revision_read(
            rev in 1i64..i64::MAX,
            n_ops in 0usize..4,
            n_events in 0usize..3,
        ) {
            let id = "2b1f6c1e-8f5a-4c0e-9a59-1d2b3c4d5e6f";
            let ops: Vec<Op> = (0..n_ops).map(|i| Op::Delete { key: format!("/k/{i}") }).collect();
            let events: Vec<AuditEvent> =
                (0..n_events).map(|_| event(EventType::DeviceUpdate)).collect();
            let plan = device_changed(id, rev, ops.clone(), events.clone());
            prop_assert_eq!(
                plan.conditions(),
                vec![Condition::Revision(keys::resource(Kind::Device, id), rev)]
            );
            prop_assert_eq!(&plan.ops, &ops);
            prop_assert_eq!(&plan.events, &events);
            let r = refused_at(&plan, 0);
            prop_assert_eq!(
                r.to_string(),
                format!("device {id:?} changed meanwhile; try again")
            );
            prop_assert_eq!(r.code(), ErrorCode::Conflict);
        }
    }
}
