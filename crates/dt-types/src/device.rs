//! The device inventory record (DESIGN.md §3) and the data a device reports about itself.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{CredentialId, DeviceId, DeviceIdError};
use crate::resource::{Kind, Metadata, Resource, Spec};

/// Most collected-data records kept per device: the enrollment record plus the last 10
/// authentications.
pub const MAX_COLLECTED_DATA: usize = 11;
/// Upper bound on any free-text field a device reports (serials, models, versions...).
pub const MAX_FIELD_LEN: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OsType {
    Macos,
    Windows,
    Linux,
}

impl OsType {
    pub fn parse(s: &str) -> Option<OsType> {
        match s.trim().to_ascii_lowercase().as_str() {
            "macos" | "darwin" | "mac" => Some(OsType::Macos),
            "windows" | "win" => Some(OsType::Windows),
            "linux" => Some(OsType::Linux),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            OsType::Macos => "macos",
            OsType::Windows => "windows",
            OsType::Linux => "linux",
        }
    }
    /// How people write it: `macOS`, `Windows`, `Linux`.
    pub fn display_name(self) -> &'static str {
        match self {
            OsType::Macos => "macOS",
            OsType::Windows => "Windows",
            OsType::Linux => "Linux",
        }
    }
}

impl fmt::Display for OsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.display_name())
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollStatus {
    #[default]
    NotEnrolled,
    Enrolled,
}

impl EnrollStatus {
    pub fn display_name(self) -> &'static str {
        match self {
            EnrollStatus::NotEnrolled => "not enrolled",
            EnrollStatus::Enrolled => "enrolled",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttestationType {
    Software,
    SecureEnclave,
    TpmEkpub,
    TpmEkcert,
    TpmEkcertTrusted,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceCredential {
    pub id: CredentialId,
    /// PKIX (SubjectPublicKeyInfo) DER, base64 (standard, padded).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub public_key_der: String,
    pub attestation_type: AttestationType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm_ekcert_serial: Option<String>,
    /// TPM2B_PUBLIC of the attestation key, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm_ak_public: Option<String>,
    /// The EK certificate accepted at enrollment (DER, base64), for
    /// `ekcert_check_at_authentication`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm_ekcert_der: Option<String>,
}

/// What a device says about itself at enrollment and at every authentication.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceCollectedData {
    #[serde(with = "time::serde::rfc3339")]
    pub collect_time: OffsetDateTime,
    /// When the server recorded it.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub record_time: Option<OffsetDateTime>,
    pub os_type: Option<OsType>,
    pub serial_number: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model_identifier: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub os_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub os_build: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub os_username: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub system_serial_number: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub base_board_serial_number: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reported_asset_tag: String,
    /// How the serial was chosen (`dmi:chassis_asset_tag`, `machine-id`, `override`...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub serial_source: String,
}

impl DeviceCollectedData {
    /// Bounds every field, so a device can't make the server store megabytes.
    pub fn check_sizes(&self) -> Result<(), String> {
        for (name, v) in [
            ("serial_number", &self.serial_number),
            ("model_identifier", &self.model_identifier),
            ("os_version", &self.os_version),
            ("os_build", &self.os_build),
            ("os_username", &self.os_username),
            ("hostname", &self.hostname),
            ("system_serial_number", &self.system_serial_number),
            ("base_board_serial_number", &self.base_board_serial_number),
            ("reported_asset_tag", &self.reported_asset_tag),
            ("serial_source", &self.serial_source),
        ] {
            if v.len() > MAX_FIELD_LEN {
                return Err(format!(
                    "device data field {name} is longer than {MAX_FIELD_LEN} bytes"
                ));
            }
        }
        if self.serial_number.trim().is_empty() {
            return Err("device data has no serial number".into());
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceOrigin {
    #[default]
    Api,
    Jamf,
    Intune,
    Csv,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSource {
    pub name: String,
    pub origin: SourceOrigin,
}

/// Attributes an MDM knows about the device; auto-enrollment compares them with the
/// collected data.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceProfile {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model_identifier: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub os_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub os_build: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub os_usernames: Vec<String>,
    /// The devtrust user the MDM assigns the device to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub assigned_user: String,
    /// Anything else an import carried (extra CSV columns...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

impl DeviceProfile {
    /// Does the profile name devtrust user `user`, as its assigned user or as one of its
    /// local accounts? (What auto-enrollment asks before letting `user` claim the device.)
    pub fn names_user(&self, user: &str) -> bool {
        !user.is_empty()
            && (self.assigned_user == user || self.os_usernames.iter().any(|u| u == user))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSpec {
    pub os_type: OsType,
    pub asset_tag: String,
    #[serde(default)]
    pub enroll_status: EnrollStatus,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub create_time: Option<OffsetDateTime>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub update_time: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<DeviceCredential>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub collected_data: Vec<DeviceCollectedData>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<DeviceSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<DeviceProfile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// Asset tags: 1..=256 printable characters without whitespace.
pub fn validate_asset_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() {
        return Err("asset tag is empty".into());
    }
    if tag.len() > MAX_FIELD_LEN {
        return Err(format!("asset tag is longer than {MAX_FIELD_LEN} bytes"));
    }
    if tag.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("asset tag must not contain whitespace or control characters".into());
    }
    Ok(())
}

impl Spec for DeviceSpec {
    const KIND: Kind = Kind::Device;
    fn validate(&self, meta: &Metadata) -> Result<(), String> {
        if DeviceId::parse(meta.name.as_str()).is_err() {
            return Err("a device's metadata.name is its id, a UUID".into());
        }
        validate_asset_tag(&self.asset_tag)?;
        if self.enroll_status == EnrollStatus::Enrolled && self.credential.is_none() {
            return Err("an enrolled device needs a credential".into());
        }
        if self.collected_data.len() > MAX_COLLECTED_DATA {
            return Err(format!(
                "at most {MAX_COLLECTED_DATA} collected data records"
            ));
        }
        for cd in &self.collected_data {
            cd.check_sizes()?;
        }
        Ok(())
    }
}

impl Resource<DeviceSpec> {
    /// The device's id: its `metadata.name`, checked. Every device that passed
    /// [`Spec::validate`] has one; a record built or stored some other way may not.
    pub fn device_id(&self) -> Result<DeviceId, DeviceIdError> {
        DeviceId::parse(self.metadata.name.as_str())
    }
}

/// A device resource with a fresh id ([`crate::DeviceId::fresh`]: time-ordered, so an
/// import of many devices appends to the stores' key order), not enrolled, as `dtctl
/// devices add` and `import`, the web UI's inventory page and `dtsh device` register one.
pub fn new_device(os: OsType, asset_tag: &str) -> crate::resource::Device {
    crate::resource::Resource::new(
        crate::DeviceId::fresh().into_string(),
        DeviceSpec {
            os_type: os,
            asset_tag: asset_tag.to_string(),
            enroll_status: EnrollStatus::NotEnrolled,
            create_time: None,
            update_time: None,
            credential: None,
            collected_data: Vec::new(),
            source: None,
            profile: None,
            owner: None,
        },
    )
}
