//! One computer as an MDM describes it, read from the MDM's JSON into what devtrust keeps:
//! (OS, serial) as the device's identity, and the profile auto-enrollment compares with.
//!
//! Pure: no I/O. A record devtrust cannot keep (no serial, an OS it does not support, a
//! value longer than [`MAX_FIELD_LEN`]) becomes a [`Skip`] with its reason, never an error
//! that stops the sync.

use std::collections::BTreeMap;

use dt_types::device::{DeviceProfile, MAX_FIELD_LEN, OsType, validate_asset_tag};
use serde_json::Value;

/// Most local accounts kept per device.
pub const MAX_LOCAL_USERS: usize = 64;

/// A computer devtrust can keep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MdmDevice {
    /// The MDM's own id (Jamf computer id, Intune managed device id).
    pub external_id: String,
    pub os: OsType,
    /// The serial number: the device's asset tag in devtrust.
    pub serial: String,
    pub profile: DeviceProfile,
}

/// Why a record was not applied.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The record has no serial number.
    MissingSerial,
    /// A serial devtrust cannot use as an asset tag (whitespace, too long).
    InvalidSerial,
    /// An OS devtrust does not support (iOS, Android...).
    UnsupportedOs,
    /// A field longer than devtrust keeps.
    InvalidField,
    /// Two records of this MDM carry the same (OS, serial): neither is applied.
    DuplicateSerial,
    /// A device with this (OS, serial) belongs to another source or was added by hand.
    OtherSource,
    /// The device changed while the sync applied; the next sync tries again.
    Conflict,
    /// The auth service refused the device.
    Refused,
}

impl SkipReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            SkipReason::MissingSerial => "missing_serial",
            SkipReason::InvalidSerial => "invalid_serial",
            SkipReason::UnsupportedOs => "unsupported_os",
            SkipReason::InvalidField => "invalid_field",
            SkipReason::DuplicateSerial => "duplicate_serial",
            SkipReason::OtherSource => "other_source",
            SkipReason::Conflict => "conflict",
            SkipReason::Refused => "refused",
        }
    }
    pub fn parse(s: &str) -> Option<SkipReason> {
        [
            SkipReason::MissingSerial,
            SkipReason::InvalidSerial,
            SkipReason::UnsupportedOs,
            SkipReason::InvalidField,
            SkipReason::DuplicateSerial,
            SkipReason::OtherSource,
            SkipReason::Conflict,
            SkipReason::Refused,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// A record that was not applied, with what identifies it and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skip {
    /// The MDM's id of the record, or `serial/os` when there is one.
    pub what: String,
    pub reason: SkipReason,
    pub detail: String,
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(x) => cur = x,
            None => return "",
        }
    }
    cur.as_str().map(str::trim).unwrap_or("")
}

fn id_of(v: &Value) -> String {
    match v.get("id") {
        Some(Value::String(s)) => s.chars().take(MAX_FIELD_LEN).collect(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn field(name: &str, value: &str, what: &str) -> Result<String, Skip> {
    if value.len() > MAX_FIELD_LEN || value.chars().any(char::is_control) {
        return Err(Skip {
            what: what.to_string(),
            reason: SkipReason::InvalidField,
            detail: format!(
                "{name} is longer than {MAX_FIELD_LEN} bytes or holds control characters"
            ),
        });
    }
    Ok(value.to_string())
}

fn serial(value: &str, what: &str) -> Result<String, Skip> {
    if value.is_empty() {
        return Err(Skip {
            what: what.to_string(),
            reason: SkipReason::MissingSerial,
            detail: "the record has no serial number".into(),
        });
    }
    validate_asset_tag(value).map_err(|e| Skip {
        what: what.to_string(),
        reason: SkipReason::InvalidSerial,
        detail: e,
    })?;
    Ok(value.to_string())
}

/// The fields of a record, as the MDM named them.
struct Raw<'a> {
    external_id: String,
    os: OsType,
    serial_number: &'a str,
    model: &'a str,
    os_version: &'a str,
    os_build: &'a str,
    assigned_user: &'a str,
    local_users: Vec<String>,
    extra: BTreeMap<String, String>,
}

fn build(r: Raw<'_>) -> Result<MdmDevice, Skip> {
    let Raw {
        external_id,
        os,
        serial_number,
        model,
        os_version,
        os_build,
        assigned_user,
        local_users,
        extra,
    } = r;
    let what = format!("id {external_id}");
    let serial = serial(serial_number, &what)?;
    let mut os_usernames = Vec::new();
    for u in local_users.into_iter().take(MAX_LOCAL_USERS) {
        let u = field("a local user name", u.trim(), &what)?;
        if !u.is_empty() && !os_usernames.contains(&u) {
            os_usernames.push(u);
        }
    }
    let mut checked_extra = BTreeMap::new();
    for (k, v) in extra {
        let v = field(&k, &v, &what)?;
        if !v.is_empty() {
            checked_extra.insert(k, v);
        }
    }
    Ok(MdmDevice {
        profile: DeviceProfile {
            model_identifier: field("the model", model, &what)?,
            os_version: field("the OS version", os_version, &what)?,
            os_build: field("the OS build", os_build, &what)?,
            os_usernames,
            assigned_user: field("the assigned user", assigned_user, &what)?,
            extra: checked_extra,
        },
        external_id,
        os,
        serial,
    })
}

/// A Jamf Pro `computers-inventory` result (sections GENERAL, HARDWARE, OPERATING_SYSTEM,
/// USER_AND_LOCATION, LOCAL_USER_ACCOUNTS). Jamf Pro manages Macs only; a record whose
/// operating system says otherwise is skipped.
pub fn from_jamf(v: &Value) -> Result<MdmDevice, Skip> {
    let id = id_of(v);
    let os_name = s(v, &["operatingSystem", "name"]);
    let os = match os_name.to_ascii_lowercase().as_str() {
        "" | "macos" | "mac os x" | "os x" => OsType::Macos,
        other => {
            return Err(Skip {
                what: format!("id {id}"),
                reason: SkipReason::UnsupportedOs,
                detail: format!("operating system {other:?} is not macOS"),
            });
        }
    };
    let local_users = v
        .get("localUserAccounts")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|u| s(u, &["username"]).to_string())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let mut extra = BTreeMap::new();
    extra.insert("external_id".to_string(), id.clone());
    extra.insert("name".to_string(), s(v, &["general", "name"]).to_string());
    build(Raw {
        external_id: id,
        os,
        serial_number: s(v, &["hardware", "serialNumber"]),
        model: s(v, &["hardware", "modelIdentifier"]),
        os_version: s(v, &["operatingSystem", "version"]),
        os_build: s(v, &["operatingSystem", "build"]),
        assigned_user: s(v, &["userAndLocation", "username"]),
        local_users,
        extra,
    })
}

/// A Microsoft Graph `managedDevice`. Windows, macOS and Linux are kept; iOS, Android and
/// the rest are skipped.
pub fn from_intune(v: &Value) -> Result<MdmDevice, Skip> {
    let id = id_of(v);
    let os_name = s(v, &["operatingSystem"]);
    let os = match os_name.to_ascii_lowercase().as_str() {
        "windows" => OsType::Windows,
        "macos" => OsType::Macos,
        "linux" => OsType::Linux,
        other => {
            return Err(Skip {
                what: format!("id {id}"),
                reason: SkipReason::UnsupportedOs,
                detail: format!("operating system {other:?} is not supported"),
            });
        }
    };
    let mut extra = BTreeMap::new();
    extra.insert("external_id".to_string(), id.clone());
    extra.insert("name".to_string(), s(v, &["deviceName"]).to_string());
    let upn = s(v, &["userPrincipalName"]);
    build(Raw {
        external_id: id,
        os,
        serial_number: s(v, &["serialNumber"]),
        model: s(v, &["model"]),
        os_version: s(v, &["osVersion"]),
        os_build: "",
        assigned_user: upn,
        local_users: Vec::new(),
        extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_jamf_computer_becomes_a_profile() {
        let d = from_jamf(&json!({
            "id": "17",
            "general": {"name": "alice-mbp", "remoteManagement": {"managed": true}},
            "hardware": {"serialNumber": "C02XYZ", "modelIdentifier": "MacBookPro18,1"},
            "operatingSystem": {"name": "macOS", "version": "14.4", "build": "23E214"},
            "userAndLocation": {"username": "alice"},
            "localUserAccounts": [{"username": "alice"}, {"username": "admin"}, {"username": "alice"}]
        }))
        .unwrap();
        assert_eq!(d.os, OsType::Macos);
        assert_eq!(d.serial, "C02XYZ");
        assert_eq!(d.profile.model_identifier, "MacBookPro18,1");
        assert_eq!(d.profile.os_build, "23E214");
        assert_eq!(d.profile.assigned_user, "alice");
        assert_eq!(d.profile.os_usernames, vec!["alice", "admin"]);
        assert_eq!(d.profile.extra["external_id"], "17");
    }

    #[test]
    fn records_devtrust_cannot_keep_are_skipped_with_reasons() {
        let no_serial = from_jamf(&json!({"id": "1", "hardware": {}})).unwrap_err();
        assert_eq!(no_serial.reason, SkipReason::MissingSerial);
        let spaced =
            from_jamf(&json!({"id": "2", "hardware": {"serialNumber": "A B"}})).unwrap_err();
        assert_eq!(spaced.reason, SkipReason::InvalidSerial);
        let ios = from_intune(&json!({"id": "x", "operatingSystem": "iOS", "serialNumber": "S"}))
            .unwrap_err();
        assert_eq!(ios.reason, SkipReason::UnsupportedOs);
        let long = from_intune(&json!({
            "id": "y", "operatingSystem": "Windows", "serialNumber": "S", "model": "m".repeat(300)
        }))
        .unwrap_err();
        assert_eq!(long.reason, SkipReason::InvalidField);
        let win = from_intune(&json!({
            "id": "z", "operatingSystem": "Windows", "serialNumber": "W1",
            "osVersion": "10.0.22631", "userPrincipalName": "bob@example.com"
        }))
        .unwrap();
        assert_eq!(
            (win.os, win.profile.assigned_user.as_str()),
            (OsType::Windows, "bob@example.com")
        );
    }
}
