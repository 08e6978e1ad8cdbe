//! Joined services' writes: a join (record and registration), a heartbeat (the record,
//! expiring), a removal (both gone, the key refused).

use dt_store::{Condition, Op};
use dt_types::ServiceKind;
use dt_types::audit::AuditEvent;
use time::{Duration, OffsetDateTime};

use super::{Guard, Refusal, WritePlan};
use crate::keys;
use crate::nodes::{NODE_CERT_VALIDITY, NodeRecord, NodeRegistration};

/// A node record before the first heartbeat.
pub const JOIN_RECORD_TTL: Duration = Duration::seconds(60);

/// The guard that `key` is as read: at `revision`, or absent when nothing was read.
fn as_read(key: &str, revision: Option<i64>, refusal: Refusal) -> Guard<Refusal> {
    Guard {
        condition: match revision {
            Some(rev) => Condition::Revision(key.to_string(), rev),
            None => Condition::NotExists(key.to_string()),
        },
        refusal,
    }
}

/// A join: the service's record (live for [`JOIN_RECORD_TTL`] from its `last_heartbeat`,
/// until the first heartbeat) and its registration, only if neither changed since they
/// were read (`record_revision`, `registration_revision`; `None`: absent). Two machines
/// joining one new name at once: one registration wins.
pub fn joined(
    record: &NodeRecord,
    record_revision: Option<i64>,
    registration: &NodeRegistration,
    registration_revision: Option<i64>,
    event: AuditEvent,
) -> Result<WritePlan<Refusal>, serde_json::Error> {
    let (kind, name) = (record.kind, record.name.clone());
    let refusal = Refusal::ServiceChanged {
        kind,
        name: name.clone(),
    };
    let key = keys::service_record(kind, &name);
    let reg_key = keys::service_registration(kind, &name);
    Ok(WritePlan {
        guards: vec![
            as_read(&key, record_revision, refusal.clone()),
            as_read(&reg_key, registration_revision, refusal),
        ],
        ops: vec![
            Op::Put {
                key,
                value: serde_json::to_vec(record)?,
                expires: Some(record.last_heartbeat + JOIN_RECORD_TTL),
            },
            Op::Put {
                key: reg_key,
                value: serde_json::to_vec(registration)?,
                expires: None,
            },
        ],
        events: vec![event],
    })
}

/// A heartbeat: the record, live for `ttl` from its `last_heartbeat`. Liveness, not a
/// change: no guard, no event.
pub fn heartbeat(
    record: &NodeRecord,
    ttl: std::time::Duration,
) -> Result<WritePlan<Refusal>, serde_json::Error> {
    Ok(WritePlan {
        guards: Vec::new(),
        ops: vec![Op::Put {
            key: keys::service_record(record.kind, &record.name),
            value: serde_json::to_vec(record)?,
            expires: Some(record.last_heartbeat + ttl),
        }],
        events: Vec::new(),
    })
}

/// `dtctl rm KIND/NAME`: the registration and the record, each deleted only if still at
/// the revision read (`None`: there was none), and every key seen in them refused from
/// `now` for as long as a certificate for it can live.
pub fn removed(
    kind: ServiceKind,
    name: &str,
    registration_revision: Option<i64>,
    record_revision: Option<i64>,
    keys_seen: &[String],
    now: OffsetDateTime,
    event: AuditEvent,
) -> WritePlan<Refusal> {
    let mut guards = Vec::new();
    let mut ops = Vec::new();
    for (key, rev) in [
        (
            keys::service_registration(kind, name),
            registration_revision,
        ),
        (keys::service_record(kind, name), record_revision),
    ] {
        if let Some(rev) = rev {
            guards.push(Guard {
                condition: Condition::Revision(key.clone(), rev),
                refusal: Refusal::ServiceChanged {
                    kind,
                    name: name.to_string(),
                },
            });
            ops.push(Op::Delete { key });
        }
    }
    for k in keys_seen {
        ops.push(Op::Put {
            key: keys::removed_node_key(k),
            value: name.as_bytes().to_vec(),
            expires: Some(now + NODE_CERT_VALIDITY),
        });
    }
    WritePlan {
        guards,
        ops,
        events: vec![event],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dt_types::audit::EventType;
    use proptest::prelude::*;

    fn kind_of(i: u8) -> ServiceKind {
        [
            ServiceKind::Node,
            ServiceKind::Db,
            ServiceKind::Kube,
            ServiceKind::App,
            ServiceKind::Desktop,
            ServiceKind::Mdm,
        ][usize::from(i % 6)]
    }

    fn record(kind: ServiceKind, name: &str, at: OffsetDateTime) -> NodeRecord {
        NodeRecord {
            name: name.to_string(),
            kind,
            addr: "10.0.0.1:3022".into(),
            labels: Default::default(),
            version: String::new(),
            key_sha256: "ab".repeat(32),
            last_heartbeat: at,
            resources: Vec::new(),
        }
    }

    fn event() -> AuditEvent {
        AuditEvent::new(EventType::NodeJoin, true, OffsetDateTime::UNIX_EPOCH)
    }

    proptest! {
        /// A join is guarded on both documents being as read (present at a revision or
        /// absent), refuses by naming the service, and its record outlives the join by
        /// exactly the join TTL.
        #[test]
        fn a_join_writes_both_documents_as_read(
            k in 0u8..6,
            name in "[a-z][a-z0-9-]{0,20}",
            rec_rev in proptest::option::of(1i64..i64::MAX),
            reg_rev in proptest::option::of(1i64..i64::MAX),
            at in 1_700_000_000i64..1_900_000_000,
        ) {
            let kind = kind_of(k);
            let at = OffsetDateTime::from_unix_timestamp(at).unwrap();
            let rec = record(kind, &name, at);
            let reg = NodeRegistration {
                name: name.clone(),
                key_sha256: rec.key_sha256.clone(),
                joined_at: at,
                token: "t".into(),
                kind,
            };
            let plan = joined(&rec, rec_rev, &reg, reg_rev, event()).unwrap();
            let key = keys::service_record(kind, &name);
            let reg_key = keys::service_registration(kind, &name);
            let cond = |k: &str, r: Option<i64>| match r {
                Some(r) => Condition::Revision(k.to_string(), r),
                None => Condition::NotExists(k.to_string()),
            };
            prop_assert_eq!(plan.conditions(), vec![cond(&key, rec_rev), cond(&reg_key, reg_rev)]);
            let refusal = Refusal::ServiceChanged { kind, name: name.clone() };
            prop_assert!(plan.guards.iter().all(|g| g.refusal == refusal));
            let Op::Put { key: k0, value, expires } = &plan.ops[0] else { panic!("not a put") };
            prop_assert_eq!(k0, &key);
            prop_assert_eq!(*expires, Some(at + JOIN_RECORD_TTL));
            prop_assert_eq!(serde_json::from_slice::<NodeRecord>(value).unwrap(), rec);
            let Op::Put { key: k1, expires: never, .. } = &plan.ops[1] else { panic!("not a put") };
            prop_assert_eq!(k1, &reg_key);
            prop_assert!(never.is_none());
        }

        /// A removal deletes exactly what it read, under the revisions read, and refuses
        /// every key it saw for the lifetime of a node certificate.
        #[test]
        fn a_removal_deletes_what_it_read_and_refuses_the_keys(
            k in 0u8..6,
            reg_rev in proptest::option::of(1i64..i64::MAX),
            rec_rev in proptest::option::of(1i64..i64::MAX),
            n_keys in 0usize..3,
        ) {
            let kind = kind_of(k);
            let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
            let seen: Vec<String> = (0..n_keys).map(|i| format!("{i:064}")).collect();
            let plan = removed(kind, "x", reg_rev, rec_rev, &seen, now, event());
            let present = usize::from(reg_rev.is_some()) + usize::from(rec_rev.is_some());
            prop_assert_eq!(plan.guards.len(), present);
            prop_assert_eq!(plan.ops.len(), present + n_keys);
            for op in &plan.ops[..present] {
                prop_assert!(matches!(op, Op::Delete { .. }), "{:?}", op);
            }
            for (op, k) in plan.ops[present..].iter().zip(&seen) {
                prop_assert_eq!(op, &Op::Put {
                    key: keys::removed_node_key(k),
                    value: b"x".to_vec(),
                    expires: Some(now + NODE_CERT_VALIDITY),
                });
            }
        }
    }

    #[test]
    fn a_heartbeat_is_the_record_alive_for_its_ttl_and_nothing_else() {
        let at = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let rec = record(ServiceKind::Db, "pg", at);
        let plan = heartbeat(&rec, std::time::Duration::from_secs(30)).unwrap();
        assert!(plan.guards.is_empty() && plan.events.is_empty());
        let Op::Put { key, expires, .. } = &plan.ops[0] else {
            panic!("not a put");
        };
        assert_eq!(key, &keys::service_record(ServiceKind::Db, "pg"));
        assert_eq!(*expires, Some(at + Duration::seconds(30)));
    }
}
