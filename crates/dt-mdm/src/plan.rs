//! The sync planner: given the devices the inventory holds for this source (and any other
//! device an MDM record collides with) and the MDM's records, what to create, update and
//! remove, and what to skip with which reason. Pure and deterministic; the driver fetches
//! and applies, this decides.
//!
//! Invariants (each has a test below):
//! - `never_touches_another_source`: a device whose source is not this one (another MDM,
//!   `api`, `csv`: manual or imported) is never updated or removed; a record that collides
//!   with one is skipped as [`SkipReason::OtherSource`].
//! - `removes_only_after_a_complete_full_sync`: removals are planned only for a full sync
//!   whose every page arrived, with `on_missing: DELETE`, and only for this source's devices
//!   that no record named (a skipped duplicate still names its device).
//! - `duplicates_apply_neither`: two records with one (OS, serial) are both skipped.

use std::collections::{BTreeMap, HashMap, HashSet};

use dt_types::device::{DeviceProfile, DeviceSource, OsType};

use crate::config::OnMissing;
use crate::record::{MdmDevice, Skip, SkipReason};

/// A device the inventory holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Current {
    pub id: String,
    pub revision: i64,
    pub os: OsType,
    /// The asset tag: the serial number for synced devices.
    pub serial: String,
    pub source: Option<DeviceSource>,
    pub profile: Option<DeviceProfile>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncKind {
    /// Every record the filter selects; may remove what is gone.
    Full,
    /// Only what changed since the last sync; never removes.
    Partial,
}

impl SyncKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncKind::Full => "full",
            SyncKind::Partial => "partial",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    pub id: String,
    pub revision: i64,
    pub device: MdmDevice,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remove {
    pub id: String,
    pub revision: i64,
    pub os: OsType,
    pub serial: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub creates: Vec<MdmDevice>,
    pub updates: Vec<Update>,
    pub removes: Vec<Remove>,
    pub skips: Vec<Skip>,
    /// Records that match their device already.
    pub unchanged: u64,
    /// This source's devices the MDM no longer lists, kept (`on_missing: NOOP`, a partial
    /// sync, or an incomplete full sync).
    pub missing_kept: u64,
}

pub use dt_types::mdm::SyncCounts as Counts;

fn profile_of(d: &MdmDevice) -> Option<DeviceProfile> {
    Some(d.profile.clone())
}

/// Plan one sync of `source`. `complete` says every page of the MDM arrived.
pub fn plan(
    source: &DeviceSource,
    current: &[Current],
    records: Vec<Result<MdmDevice, Skip>>,
    kind: SyncKind,
    on_missing: OnMissing,
    complete: bool,
) -> Plan {
    let mut out = Plan::default();
    // (os, serial) -> the records naming it.
    let mut by_key: HashMap<(OsType, String), Vec<MdmDevice>> = HashMap::new();
    let mut order: Vec<(OsType, String)> = Vec::new();
    for r in records {
        match r {
            Err(skip) => out.skips.push(skip),
            Ok(d) => {
                let key = (d.os, d.serial.clone());
                let list = by_key.entry(key.clone()).or_default();
                if list.is_empty() {
                    order.push(key);
                }
                list.push(d);
            }
        }
    }
    let current_by_key: HashMap<(OsType, &str), &Current> = current
        .iter()
        .map(|c| ((c.os, c.serial.as_str()), c))
        .collect();
    // Every (os, serial) a record named, duplicates included: its device is not missing.
    let seen: HashSet<(OsType, String)> = order.iter().cloned().collect();
    for key in order {
        let Some(mut list) = by_key.remove(&key) else {
            continue;
        };
        if list.len() > 1 {
            let ids: Vec<&str> = list.iter().map(|d| d.external_id.as_str()).collect();
            for d in &list {
                out.skips.push(Skip {
                    what: format!("{}/{} (id {})", key.1, key.0, d.external_id),
                    reason: SkipReason::DuplicateSerial,
                    detail: format!(
                        "records {ids:?} share serial {:?}; fix the MDM, the device is left as it is",
                        key.1
                    ),
                });
            }
            continue;
        }
        let Some(d) = list.pop() else { continue };
        match current_by_key.get(&(key.0, key.1.as_str())) {
            None => out.creates.push(d),
            Some(c) if c.source.as_ref() != Some(source) => {
                let owner = match &c.source {
                    Some(s) => format!("source {:?} ({:?})", s.name, s.origin),
                    None => "no source (added by hand)".into(),
                };
                out.skips.push(Skip {
                    what: format!("{}/{}", key.1, key.0),
                    reason: SkipReason::OtherSource,
                    detail: format!("device {} belongs to {owner}; it is left as it is", c.id),
                });
            }
            Some(c) if c.profile == profile_of(&d) => out.unchanged += 1,
            Some(c) => out.updates.push(Update {
                id: c.id.clone(),
                revision: c.revision,
                device: d,
            }),
        }
    }
    let mut removes = Vec::new();
    let mut missing = 0;
    for c in current.iter().filter(|c| c.source.as_ref() == Some(source)) {
        if seen.contains(&(c.os, c.serial.clone())) {
            continue;
        }
        if kind == SyncKind::Full && complete && on_missing == OnMissing::Delete {
            removes.push(Remove {
                id: c.id.clone(),
                revision: c.revision,
                os: c.os,
                serial: c.serial.clone(),
            });
        } else if kind == SyncKind::Full {
            missing += 1;
        }
    }
    out.removes = removes;
    out.missing_kept = missing;
    out
}

impl Plan {
    /// The counts this plan would report if every change applied.
    pub fn counts(&self) -> Counts {
        let mut c = Counts {
            created: self.creates.len() as u64,
            updated: self.updates.len() as u64,
            removed: self.removes.len() as u64,
            unchanged: self.unchanged,
            missing_kept: self.missing_kept,
            skipped: BTreeMap::new(),
        };
        for s in &self.skips {
            c.add_skip(s.reason.as_str(), 1);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dt_types::device::SourceOrigin;

    fn src(name: &str) -> DeviceSource {
        DeviceSource {
            name: name.into(),
            origin: SourceOrigin::Jamf,
        }
    }

    fn rec(id: &str, serial: &str, user: &str) -> Result<MdmDevice, Skip> {
        Ok(MdmDevice {
            external_id: id.into(),
            os: OsType::Macos,
            serial: serial.into(),
            profile: DeviceProfile {
                assigned_user: user.into(),
                ..Default::default()
            },
        })
    }

    fn cur(id: &str, serial: &str, source: Option<DeviceSource>, user: &str) -> Current {
        Current {
            id: id.into(),
            revision: 7,
            os: OsType::Macos,
            serial: serial.into(),
            source,
            profile: Some(DeviceProfile {
                assigned_user: user.into(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn creates_updates_and_leaves_unchanged() {
        let me = src("jamf-main");
        let current = vec![
            cur("d1", "S1", Some(me.clone()), "alice"),
            cur("d2", "S2", Some(me.clone()), "bob"),
        ];
        let p = plan(
            &me,
            &current,
            vec![
                rec("1", "S1", "alice"),
                rec("2", "S2", "carol"),
                rec("3", "S3", "dan"),
            ],
            SyncKind::Full,
            OnMissing::Delete,
            true,
        );
        assert_eq!(p.unchanged, 1);
        assert_eq!(p.updates.len(), 1);
        assert_eq!((p.updates[0].id.as_str(), p.updates[0].revision), ("d2", 7));
        assert_eq!(p.creates.len(), 1);
        assert!(p.removes.is_empty());
    }

    #[test]
    fn never_touches_another_source() {
        let me = src("jamf-main");
        let other = DeviceSource {
            name: "intune-main".into(),
            origin: SourceOrigin::Intune,
        };
        let manual = DeviceSource {
            name: "api".into(),
            origin: SourceOrigin::Api,
        };
        let current = vec![
            cur("o1", "S1", Some(other), "x"),
            cur("m1", "S2", Some(manual), "x"),
            cur("n1", "S3", None, "x"),
        ];
        let p = plan(
            &me,
            &current,
            vec![
                rec("1", "S1", "a"),
                rec("2", "S2", "a"),
                rec("3", "S3", "a"),
            ],
            SyncKind::Full,
            OnMissing::Delete,
            true,
        );
        assert!(p.creates.is_empty() && p.updates.is_empty() && p.removes.is_empty());
        assert_eq!(p.counts().skipped["other_source"], 3);
        // And they are never removed as "missing" either.
        let p = plan(
            &me,
            &current,
            vec![],
            SyncKind::Full,
            OnMissing::Delete,
            true,
        );
        assert!(p.removes.is_empty());
    }

    #[test]
    fn removes_only_after_a_complete_full_sync() {
        let me = src("jamf-main");
        let current = vec![cur("d1", "GONE", Some(me.clone()), "a")];
        for (kind, on_missing, complete, removed) in [
            (SyncKind::Full, OnMissing::Delete, true, 1),
            (SyncKind::Full, OnMissing::Delete, false, 0),
            (SyncKind::Full, OnMissing::Noop, true, 0),
            (SyncKind::Partial, OnMissing::Delete, true, 0),
        ] {
            let p = plan(&me, &current, vec![], kind, on_missing, complete);
            assert_eq!(
                p.removes.len(),
                removed,
                "{kind:?} {on_missing:?} {complete}"
            );
            if removed == 0 && kind == SyncKind::Full {
                assert_eq!(p.missing_kept, 1);
            }
        }
    }

    #[test]
    fn duplicates_apply_neither_and_keep_their_device() {
        let me = src("jamf-main");
        let current = vec![cur("d1", "DUP", Some(me.clone()), "a")];
        let p = plan(
            &me,
            &current,
            vec![rec("1", "DUP", "x"), rec("2", "DUP", "y")],
            SyncKind::Full,
            OnMissing::Delete,
            true,
        );
        assert!(p.creates.is_empty() && p.updates.is_empty());
        assert!(p.removes.is_empty(), "a duplicated device is not missing");
        assert_eq!(p.counts().skipped["duplicate_serial"], 2);
    }

    #[test]
    fn skipped_records_are_counted_by_reason() {
        let me = src("jamf-main");
        let p = plan(
            &me,
            &[],
            vec![
                Err(Skip {
                    what: "id 9".into(),
                    reason: SkipReason::MissingSerial,
                    detail: String::new(),
                }),
                rec("1", "S1", "a"),
            ],
            SyncKind::Partial,
            OnMissing::Noop,
            true,
        );
        let c = p.counts();
        assert_eq!((c.created, c.skipped_total()), (1, 1));
    }
}

#[cfg(test)]
mod properties {
    //! The planner's invariants over random inventories and MDM answers.
    use super::*;
    use dt_types::device::SourceOrigin;
    use proptest::prelude::*;

    fn source(i: u8) -> Option<DeviceSource> {
        match i % 4 {
            0 => Some(DeviceSource {
                name: "me".into(),
                origin: SourceOrigin::Jamf,
            }),
            1 => Some(DeviceSource {
                name: "other".into(),
                origin: SourceOrigin::Intune,
            }),
            2 => Some(DeviceSource {
                name: "api".into(),
                origin: SourceOrigin::Api,
            }),
            _ => None,
        }
    }

    fn os(i: u8) -> OsType {
        [OsType::Macos, OsType::Windows, OsType::Linux][usize::from(i % 3)]
    }

    prop_compose! {
        fn current_devices()(items in proptest::collection::vec((0u8..8, 0u8..3, 0u8..4, 0u8..3), 0..12)) -> Vec<Current> {
            let mut seen = std::collections::HashSet::new();
            items
                .into_iter()
                .enumerate()
                // (os, serial) is unique in the inventory.
                .filter(|(_, (serial, o, _, _))| seen.insert((*serial, *o)))
                .map(|(i, (serial, o, src, user))| Current {
                    id: format!("d{i}"),
                    revision: i as i64,
                    os: os(o),
                    serial: format!("S{serial}"),
                    source: source(src),
                    profile: Some(DeviceProfile { assigned_user: format!("u{user}"), ..Default::default() }),
                })
                .collect()
        }
    }

    prop_compose! {
        fn records()(items in proptest::collection::vec((0u8..8, 0u8..3, 0u8..3, any::<bool>()), 0..12)) -> Vec<Result<MdmDevice, Skip>> {
            items.into_iter().enumerate().map(|(i, (serial, o, user, bad))| {
                if bad && serial == 0 {
                    return Err(Skip { what: format!("id {i}"), reason: SkipReason::MissingSerial, detail: String::new() });
                }
                Ok(MdmDevice {
                    external_id: i.to_string(),
                    os: os(o),
                    serial: format!("S{serial}"),
                    profile: DeviceProfile { assigned_user: format!("u{user}"), ..Default::default() },
                })
            }).collect()
        }
    }

    proptest! {
        #[test]
        fn invariants(current in current_devices(), recs in records(), full in any::<bool>(), delete in any::<bool>(), complete in any::<bool>()) {
            let me = source(0).unwrap();
            let kind = if full { SyncKind::Full } else { SyncKind::Partial };
            let on_missing = if delete { OnMissing::Delete } else { OnMissing::Noop };
            let n_records = recs.len();
            let p = plan(&me, &current, recs.clone(), kind, on_missing, complete);
            let by_id: HashMap<&str, &Current> = current.iter().map(|c| (c.id.as_str(), c)).collect();
            // never_touches_another_source
            for id in p.updates.iter().map(|u| u.id.as_str()).chain(p.removes.iter().map(|r| r.id.as_str())) {
                prop_assert_eq!(by_id[id].source.as_ref(), Some(&me));
            }
            // creates never collide with a device the inventory holds
            for c in &p.creates {
                prop_assert!(!current.iter().any(|d| d.os == c.os && d.serial == c.serial));
            }
            // removes_only_after_a_complete_full_sync, and never a device a record named
            if !(full && delete && complete) {
                prop_assert!(p.removes.is_empty());
            }
            for r in &p.removes {
                prop_assert!(!recs.iter().flatten().any(|d| d.os == r.os && d.serial == r.serial));
            }
            // duplicates_apply_neither
            for d in p.creates.iter().chain(p.updates.iter().map(|u| &u.device)) {
                let same = recs.iter().flatten().filter(|x| x.os == d.os && x.serial == d.serial).count();
                prop_assert_eq!(same, 1);
            }
            // every record is accounted for exactly once
            prop_assert_eq!(
                p.creates.len() + p.updates.len() + p.skips.len() + p.unchanged as usize,
                n_records
            );
        }
    }
}
