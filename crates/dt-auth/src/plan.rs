//! What a ceremony step writes, decided without I/O: the conditions it needs, each with the
//! refusal a client sees when it no longer holds, the writes, and the audit events, all
//! committed in one transaction ([`crate::audit::AuditSink::write_plan`]). The drivers build
//! plans; the tests below check them directly, so what is tested is what runs.
//!
//! The services' writes are plans too, one module per domain ([`users`], [`resources`],
//! [`bots`], [`tokens`], [`devices`], [`nodes`], [`mdm`]); their refusals are typed ([`Refusal`]) because they name
//! what changed, and reach the client through [`crate::error::ApiError::Refused`].

use dt_store::{Condition, Op, StoreError};
use dt_types::audit::AuditEvent;
use dt_types::{Device, Kind};

use crate::keys;

pub mod bots;
pub mod devices;
pub mod mdm;
pub mod nodes;
pub mod resources;
mod service;
pub mod tokens;
pub mod users;

pub use service::Refusal;

/// A condition of a plan, and what the client is told when it failed.
/// `R` is what the client is told: a fixed message for the ceremonies, a [`Refusal`] for
/// the services, an item's place in a batch for the MDM sync.
#[derive(Clone, Debug, PartialEq)]
pub struct Guard<R = &'static str> {
    pub condition: Condition,
    /// The refusal, e.g. "the device changed during authentication; try again".
    pub refusal: R,
}

/// One atomic step: every guard holds, then every op is written and every event chained,
/// or nothing is.
#[derive(Clone, Debug, PartialEq)]
pub struct WritePlan<R = &'static str> {
    pub guards: Vec<Guard<R>>,
    pub ops: Vec<Op>,
    pub events: Vec<AuditEvent>,
}

/// How a plan's commit ended.
#[derive(Debug)]
pub enum PlanError<R = &'static str> {
    /// A guard no longer held: nothing was written; the guard's refusal says why.
    Refused(R),
    /// Storage failed.
    Store(StoreError),
}

impl<R: Clone> WritePlan<R> {
    /// The guards' conditions, in order (what storage checks).
    pub fn conditions(&self) -> Vec<Condition> {
        self.guards.iter().map(|g| g.condition.clone()).collect()
    }

    /// Maps a storage result to the guard that failed, if one did.
    pub fn outcome<T>(&self, result: Result<T, StoreError>) -> Result<T, PlanError<R>> {
        guard_outcome(&self.guards, result)
    }
}

/// The refusal the plan gives when storage reports condition `index` failed (plan tests).
#[cfg(test)]
pub(crate) fn refused_at<R: Clone + std::fmt::Debug>(plan: &WritePlan<R>, index: usize) -> R {
    match plan.outcome::<i64>(Err(StoreError::ConditionFailed {
        index,
        key: String::new(),
    })) {
        Err(PlanError::Refused(r)) => r,
        other => panic!("condition {index} is no guard's: {other:?}"),
    }
}

/// [`WritePlan::outcome`] for a plan already taken apart to be written.
pub(crate) fn guard_outcome<T, R: Clone>(
    guards: &[Guard<R>],
    result: Result<T, StoreError>,
) -> Result<T, PlanError<R>> {
    match result {
        Ok(v) => Ok(v),
        Err(StoreError::ConditionFailed { index, key }) => match guards.get(index) {
            Some(g) => Err(PlanError::Refused(g.refusal.clone())),
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

/// The refusals of an enrollment's final write, one per guard.
pub const ENROLL_DEVICE_CHANGED: &str =
    "the device changed during enrollment; ask for a new token and enroll again";
pub const ENROLL_CREDENTIAL_IN_USE: &str =
    "the device credential id is already in use: enroll again with a new token";
pub const ENROLL_KEY_IN_USE: &str = "this device key is already enrolled as another device; one key can't be two devices: un-enroll the other device or use a new key, then ask for a new token";

/// An enrollment that succeeded: the enrolled device (with its credential), its credential
/// index, its owner index, and the index of its public key (`key_index`, when the credential
/// has key material), with the event. Guards: the device is still at the revision the
/// ceremony read, the credential id is not taken, and (one key, one device) the key is not
/// another device's.
pub fn device_enrolled(
    device: &Device,
    read_revision: i64,
    key_index: Option<String>,
    event: AuditEvent,
) -> Result<WritePlan, serde_json::Error> {
    let id = device.metadata.name.clone();
    let credential = device
        .spec
        .credential
        .as_ref()
        .map(|c| c.id.to_string())
        .unwrap_or_default();
    let (device_guard, device_op) = device_unchanged(device, read_revision, ENROLL_DEVICE_CHANGED)?;
    let mut guards = vec![
        device_guard,
        Guard {
            condition: Condition::NotExists(keys::device_credential_index(&credential)),
            refusal: ENROLL_CREDENTIAL_IN_USE,
        },
    ];
    let mut ops = vec![
        device_op,
        Op::Put {
            key: keys::device_credential_index(&credential),
            value: id.clone().into_bytes(),
            expires: None,
        },
    ];
    if let Some(owner) = &device.spec.owner {
        ops.push(Op::Put {
            key: keys::device_owner_index(owner, &id),
            value: Vec::new(),
            expires: None,
        });
    }
    if let Some(key) = key_index {
        guards.push(Guard {
            condition: Condition::NotExists(key.clone()),
            refusal: ENROLL_KEY_IN_USE,
        });
        ops.push(Op::Put {
            key,
            value: id.into_bytes(),
            expires: None,
        });
    }
    Ok(WritePlan {
        guards,
        ops,
        events: vec![event],
    })
}

/// The refusal when a token was spent by someone else between reading and spending it.
pub const TOKEN_SPENT_CONCURRENTLY: &str = "invalid device enrollment token";

/// Spending an enrollment token (at Init, whatever happens next): the record marked spent
/// at `spent_at` and kept a day past its expiry (so "expired" and "already used" stay
/// distinguishable in the audit log), and the device's token index removed; only if the
/// record is still at the revision read. `events`: the failure event when Init failed.
pub fn token_spent(
    record: &dt_ceremony::token::EnrollTokenRecord,
    read_revision: i64,
    spent_at: time::OffsetDateTime,
    events: Vec<AuditEvent>,
) -> Result<WritePlan, serde_json::Error> {
    let mut spent = record.clone();
    spent.spent_at = Some(spent_at);
    let key = keys::device_token(&record.token_hash);
    Ok(WritePlan {
        guards: vec![Guard {
            condition: Condition::Revision(key.clone(), read_revision),
            refusal: TOKEN_SPENT_CONCURRENTLY,
        }],
        ops: vec![
            Op::Put {
                key,
                value: serde_json::to_vec(&spent)?,
                expires: Some(record.expires + time::Duration::days(1)),
            },
            Op::Delete {
                key: keys::device_token_index(record.device_id.as_str()),
            },
        ],
        events,
    })
}

/// The refusal when a device web token was spent by someone else between reading and
/// spending it: the same as for a token never issued.
pub const WEB_TOKEN_SPENT_CONCURRENTLY: &str =
    "invalid, used or expired device web token: log in to the web UI again for a new one";
/// The same for the browser's device confirmation token.
pub const CONFIRMATION_SPENT_CONCURRENTLY: &str =
    "device confirmation token already used: log in to the web UI again";

/// Spending a one-use token of the device web authentication (the web token at Init, the
/// browser's confirmation token), whatever follows: its record (`key`) deleted, only if
/// still at the revision read; else `refusal`. No event: the caller audits the verdict.
pub fn web_token_spent(key: String, read_revision: i64, refusal: &'static str) -> WritePlan {
    WritePlan {
        guards: vec![Guard {
            condition: Condition::Revision(key.clone(), read_revision),
            refusal,
        }],
        ops: vec![Op::Delete { key }],
        events: Vec::new(),
    }
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

    fn enrolled_device(owner: Option<&str>) -> Device {
        let mut d = dt_types::device::new_device(OsType::Linux, "ENR1");
        d.spec.credential = Some(dt_types::device::DeviceCredential {
            id: "cred-1".parse().unwrap(),
            public_key_der: String::new(),
            attestation_type: dt_types::device::AttestationType::Software,
            tpm_ekcert_serial: None,
            tpm_ak_public: None,
            tpm_ekcert_der: None,
        });
        d.spec.owner = owner.map(String::from);
        d
    }

    #[test]
    fn an_enrollment_guards_the_device_the_credential_and_the_key_in_that_order() {
        let d = enrolled_device(Some("alice"));
        let id = d.metadata.name.clone();
        let plan = device_enrolled(
            &d,
            4,
            Some("/index/device_key/abc".into()),
            event(EventType::DeviceEnroll),
        )
        .unwrap();
        assert_eq!(
            plan.conditions(),
            vec![
                Condition::Revision(keys::resource(Kind::Device, &id), 4),
                Condition::NotExists(keys::device_credential_index("cred-1")),
                Condition::NotExists("/index/device_key/abc".into()),
            ]
        );
        let refusals: Vec<_> = plan.guards.iter().map(|g| g.refusal).collect();
        assert_eq!(
            refusals,
            vec![
                ENROLL_DEVICE_CHANGED,
                ENROLL_CREDENTIAL_IN_USE,
                ENROLL_KEY_IN_USE
            ]
        );
        let keys_written: Vec<_> = plan
            .ops
            .iter()
            .map(|o| match o {
                Op::Put { key, .. } => key.clone(),
                other => panic!("an enrollment only puts: {other:?}"),
            })
            .collect();
        assert_eq!(
            keys_written,
            vec![
                keys::resource(Kind::Device, &id),
                keys::device_credential_index("cred-1"),
                keys::device_owner_index("alice", &id),
                "/index/device_key/abc".to_string(),
            ]
        );
        // A failure of the second guard is the credential's refusal.
        let r = plan.outcome::<i64>(Err(StoreError::ConditionFailed {
            index: 1,
            key: String::new(),
        }));
        assert!(matches!(
            r,
            Err(PlanError::Refused(ENROLL_CREDENTIAL_IN_USE))
        ));
    }

    #[test]
    fn an_enrollment_without_key_material_or_owner_writes_no_such_index() {
        let d = enrolled_device(None);
        let plan = device_enrolled(&d, 1, None, event(EventType::DeviceEnroll)).unwrap();
        assert_eq!(plan.guards.len(), 2);
        assert_eq!(plan.ops.len(), 2);
    }

    proptest! {
        /// A spent token: the same record with `spent_at` set, kept a day past its expiry,
        /// the device's token index removed, all on the revision read.
        #[test]
        fn a_spent_token_is_marked_kept_and_unindexed(
            rev in 1i64..i64::MAX,
            expires in 1_700_000_000i64..1_900_000_000,
            spent in 0i64..86_400,
        ) {
            let (_token, mut record) = dt_ceremony::token::EnrollTokenRecord::issue(
                dt_types::DeviceId::parse("2b1f6c1e-8f5a-4c0e-9a59-1d2b3c4d5e6f").unwrap(),
                OffsetDateTime::from_unix_timestamp(expires).unwrap(),
                time::Duration::hours(1),
                &mut dt_ceremony::env::SystemEnv::new(),
            );
            record.expires = OffsetDateTime::from_unix_timestamp(expires).unwrap();
            let at = OffsetDateTime::from_unix_timestamp(expires - spent).unwrap();
            let plan = token_spent(&record, rev, at, vec![]).unwrap();
            let key = keys::device_token(&record.token_hash);
            prop_assert_eq!(plan.conditions(), vec![Condition::Revision(key.clone(), rev)]);
            let Op::Put { key: k, value, expires: keep } = &plan.ops[0] else {
                panic!("not a put: {:?}", plan.ops[0]);
            };
            prop_assert_eq!(k, &key);
            prop_assert_eq!(*keep, Some(record.expires + time::Duration::days(1)));
            let back: dt_ceremony::token::EnrollTokenRecord = serde_json::from_slice(value).unwrap();
            prop_assert_eq!(back.spent_at, Some(at));
            prop_assert_eq!(back.token_hash, record.token_hash.clone());
            prop_assert_eq!(
                &plan.ops[1],
                &Op::Delete { key: keys::device_token_index(record.device_id.as_str()) }
            );
        }
    }

    #[test]
    fn a_web_token_is_deleted_on_the_revision_read_or_refused() {
        for refusal in [
            WEB_TOKEN_SPENT_CONCURRENTLY,
            CONFIRMATION_SPENT_CONCURRENTLY,
        ] {
            let key = "/devices/web-tokens/abc".to_string();
            let plan = web_token_spent(key.clone(), 9, refusal);
            assert_eq!(plan.conditions(), vec![Condition::Revision(key.clone(), 9)]);
            assert_eq!(plan.ops, vec![Op::Delete { key }]);
            assert!(plan.events.is_empty());
            let r = plan.outcome::<i64>(Err(StoreError::ConditionFailed {
                index: 0,
                key: String::new(),
            }));
            assert!(matches!(r, Err(PlanError::Refused(m)) if m == refusal));
        }
    }
}
