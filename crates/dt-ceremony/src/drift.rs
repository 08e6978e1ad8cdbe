//! Collected-data drift (DESIGN.md §4): what a device reports at authentication compared
//! with what it reported at enrollment and since.
//!
//! Drift is: the OS type or the serial number differs from the enrollment record; the model
//! differs from the enrollment record (when the enrollment record had one); the OS version
//! is lower than the most recent version recorded (compared numerically, component by
//! component, so `13.10` > `13.9` and `13` == `13.0`), or missing when one was recorded, or
//! different from it when either is not numeric (`rolling`, `bookworm/sid`).
//!
//! Non-numeric versions fail closed: with no order known, a changed version could be a
//! downgrade, and a client that reports a version we can't parse must not switch the rule
//! off for itself. An unchanged non-numeric version is fine; after a real upgrade to such a
//! version the device is re-enrolled. What it deliberately does not police: OS build strings,
//! host names and user names, which change legitimately.

use std::cmp::Ordering;
use std::fmt;

use dt_types::device::DeviceCollectedData;

/// Which rule a device's data broke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriftKind {
    OsTypeChanged,
    SerialChanged,
    ModelChanged {
        enrolled: String,
        now: String,
    },
    OsVersionWentBackwards {
        before: String,
        now: String,
    },
    /// The version changed and at least one side is not numeric, so no order is known.
    OsVersionUnordered {
        before: String,
        now: String,
    },
}

impl fmt::Display for DriftKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriftKind::OsTypeChanged => f.write_str("os type changed since enrollment"),
            DriftKind::SerialChanged => f.write_str("serial number changed since enrollment"),
            DriftKind::ModelChanged { enrolled, now } => {
                write!(f, "model changed since enrollment ({enrolled:?} → {now:?})")
            }
            DriftKind::OsVersionWentBackwards { before, now } => {
                write!(f, "os version went backwards ({before:?} → {now:?})")
            }
            DriftKind::OsVersionUnordered { before, now } => write!(
                f,
                "os version changed and can't be compared ({before:?} → {now:?}); re-enroll the device"
            ),
        }
    }
}

/// Compares two dotted versions numerically, component by component. Missing trailing
/// components count as 0. A component may carry a suffix after its digits (`3rc1`), which
/// is compared as text when the numbers are equal. `None` when either version has a
/// component that doesn't start with a digit, or is empty.
pub fn compare_versions(a: &str, b: &str) -> Option<Ordering> {
    let pa = parse_version(a)?;
    let pb = parse_version(b)?;
    let n = pa.len().max(pb.len());
    let zero = (0u64, "");
    for i in 0..n {
        let ca = pa.get(i).copied().unwrap_or(zero);
        let cb = pb.get(i).copied().unwrap_or(zero);
        match ca.0.cmp(&cb.0).then_with(|| ca.1.cmp(cb.1)) {
            Ordering::Equal => continue,
            other => return Some(other),
        }
    }
    Some(Ordering::Equal)
}

fn parse_version(v: &str) -> Option<Vec<(u64, &str)>> {
    let v = v.trim();
    if v.is_empty() || v.len() > 64 {
        return None;
    }
    v.split('.')
        .map(|part| {
            let digits = part.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 || digits > 18 {
                return None;
            }
            let (num, rest) = part.split_at(digits);
            Some((num.parse::<u64>().ok()?, rest))
        })
        .collect()
}

/// Checks `current` against the device's stored collected data (`history[0]` is the
/// enrollment record, the rest are earlier authentications in order). An empty history
/// (a record enrolled before collected data was kept) can't drift.
pub fn check_drift(
    history: &[DeviceCollectedData],
    current: &DeviceCollectedData,
) -> Result<(), DriftKind> {
    let Some(enrolled) = history.first() else {
        return Ok(());
    };
    if enrolled.os_type != current.os_type {
        return Err(DriftKind::OsTypeChanged);
    }
    if enrolled.serial_number != current.serial_number {
        return Err(DriftKind::SerialChanged);
    }
    if !enrolled.model_identifier.is_empty()
        && enrolled.model_identifier != current.model_identifier
    {
        return Err(DriftKind::ModelChanged {
            enrolled: enrolled.model_identifier.clone(),
            now: current.model_identifier.clone(),
        });
    }
    // The most recent record that had a version.
    if let Some(before) = history
        .iter()
        .rev()
        .map(|d| d.os_version.as_str())
        .find(|v| !v.is_empty())
    {
        let (before, now) = (before.to_string(), current.os_version.clone());
        if now.trim().is_empty() {
            return Err(DriftKind::OsVersionWentBackwards { before, now });
        }
        match compare_versions(&now, &before) {
            Some(Ordering::Less) => return Err(DriftKind::OsVersionWentBackwards { before, now }),
            Some(_) => {}
            // Fail closed (see the module docs): only an unchanged version passes.
            None if now.trim() == before.trim() => {}
            None => return Err(DriftKind::OsVersionUnordered { before, now }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dt_types::device::OsType;
    use time::OffsetDateTime;

    fn data(serial: &str, model: &str, version: &str) -> DeviceCollectedData {
        DeviceCollectedData {
            collect_time: OffsetDateTime::UNIX_EPOCH,
            record_time: None,
            os_type: Some(OsType::Macos),
            serial_number: serial.into(),
            model_identifier: model.into(),
            os_version: version.into(),
            os_build: String::new(),
            os_username: String::new(),
            hostname: String::new(),
            system_serial_number: String::new(),
            base_board_serial_number: String::new(),
            reported_asset_tag: String::new(),
            serial_source: String::new(),
        }
    }

    #[test]
    fn versions_compare_numerically() {
        use Ordering::*;
        for (a, b, want) in [
            ("13.10", "13.9", Some(Greater)),
            ("13.9", "13.10", Some(Less)),
            ("13", "13.0", Some(Equal)),
            ("13.0.1", "13", Some(Greater)),
            ("10.0.22631", "10.0.19045", Some(Greater)),
            ("22.04", "24.04", Some(Less)),
            ("14.2", "14.2", Some(Equal)),
            ("1.2rc1", "1.2", Some(Greater)),
            ("rolling", "rolling", None),
            ("", "1", None),
            ("1..2", "1.2", None),
        ] {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
        }
    }

    #[test]
    fn drift_rules() {
        let enrolled = data("SER1", "Mac14,2", "14.1");
        let history = vec![enrolled.clone(), data("SER1", "Mac14,2", "14.3")];
        // Same or newer: fine.
        check_drift(&history, &data("SER1", "Mac14,2", "14.3")).unwrap();
        check_drift(&history, &data("SER1", "Mac14,2", "14.10")).unwrap();
        // Older than the latest record, even if newer than enrollment.
        assert!(matches!(
            check_drift(&history, &data("SER1", "Mac14,2", "14.2")),
            Err(DriftKind::OsVersionWentBackwards { .. })
        ));
        assert!(matches!(
            check_drift(&history, &data("SER1", "Mac14,2", "")),
            Err(DriftKind::OsVersionWentBackwards { .. })
        ));
        assert_eq!(
            check_drift(&history, &data("SER2", "Mac14,2", "14.3")),
            Err(DriftKind::SerialChanged)
        );
        assert!(matches!(
            check_drift(&history, &data("SER1", "Mac15,1", "14.3")),
            Err(DriftKind::ModelChanged { .. })
        ));
        let mut linux = data("SER1", "Mac14,2", "14.3");
        linux.os_type = Some(OsType::Linux);
        assert_eq!(check_drift(&history, &linux), Err(DriftKind::OsTypeChanged));
        // Non-numeric versions: unchanged passes; changed, or numeric <-> not, is drift.
        let rolling = vec![data("SER1", "", "rolling")];
        check_drift(&rolling, &data("SER1", "", "rolling")).unwrap();
        for now in ["other", "14.3", "0"] {
            assert!(matches!(
                check_drift(&rolling, &data("SER1", "", now)),
                Err(DriftKind::OsVersionUnordered { .. })
            ));
        }
        assert!(matches!(
            check_drift(&history, &data("SER1", "Mac14,2", "sequoia")),
            Err(DriftKind::OsVersionUnordered { .. })
        ));
        // No history, no drift.
        check_drift(&[], &data("X", "", "")).unwrap();
    }
}
