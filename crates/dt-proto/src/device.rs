//! The device resource (DESIGN.md §3) on the wire: `v1::Device` <-> `dt_types::Device`.
//!
//! The stored record keeps key material as base64 text (it is a JSON document); the wire
//! carries it as `bytes`. Metadata that devices do not use (`expires`) does not travel.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use dt_types::CredentialId;
use dt_types::device::{
    AttestationType, DeviceCollectedData, DeviceCredential, DeviceProfile, DeviceSource,
    DeviceSpec, EnrollStatus, MAX_FIELD_LEN, OsType, SourceOrigin,
};
use dt_types::resource::{Kind, Metadata, Resource};

use crate::error::{check_len, required};
use crate::time_conv::{from_proto, opt_from_proto, opt_to_proto, to_proto};
use crate::{ProtoError, v1 as pb};

// ---------------------------------------------------------------------------------------
// enums

impl From<OsType> for pb::OsType {
    fn from(v: OsType) -> Self {
        match v {
            OsType::Macos => pb::OsType::Macos,
            OsType::Windows => pb::OsType::Windows,
            OsType::Linux => pb::OsType::Linux,
        }
    }
}

/// An OS type that may be left unspecified (`None`).
pub fn os_type_from_proto(value: i32, field: &'static str) -> Result<Option<OsType>, ProtoError> {
    match pb::OsType::try_from(value) {
        Ok(pb::OsType::Unspecified) => Ok(None),
        Ok(pb::OsType::Macos) => Ok(Some(OsType::Macos)),
        Ok(pb::OsType::Windows) => Ok(Some(OsType::Windows)),
        Ok(pb::OsType::Linux) => Ok(Some(OsType::Linux)),
        Err(_) => Err(ProtoError::UnknownEnum { field, value }),
    }
}

/// An OS type that must be set.
pub fn required_os_type(value: i32, field: &'static str) -> Result<OsType, ProtoError> {
    os_type_from_proto(value, field)?.ok_or(ProtoError::UnknownEnum { field, value })
}

impl From<AttestationType> for pb::DeviceAttestationType {
    fn from(v: AttestationType) -> Self {
        match v {
            AttestationType::Software => pb::DeviceAttestationType::Software,
            AttestationType::SecureEnclave => pb::DeviceAttestationType::SecureEnclave,
            AttestationType::TpmEkpub => pb::DeviceAttestationType::TpmEkpub,
            AttestationType::TpmEkcert => pb::DeviceAttestationType::TpmEkcert,
            AttestationType::TpmEkcertTrusted => pb::DeviceAttestationType::TpmEkcertTrusted,
        }
    }
}

fn attestation_from_proto(value: i32) -> Result<AttestationType, ProtoError> {
    let field = "credential.attestation_type";
    match pb::DeviceAttestationType::try_from(value) {
        Ok(pb::DeviceAttestationType::Software) => Ok(AttestationType::Software),
        Ok(pb::DeviceAttestationType::SecureEnclave) => Ok(AttestationType::SecureEnclave),
        Ok(pb::DeviceAttestationType::TpmEkpub) => Ok(AttestationType::TpmEkpub),
        Ok(pb::DeviceAttestationType::TpmEkcert) => Ok(AttestationType::TpmEkcert),
        Ok(pb::DeviceAttestationType::TpmEkcertTrusted) => Ok(AttestationType::TpmEkcertTrusted),
        Ok(pb::DeviceAttestationType::Unspecified) | Err(_) => {
            Err(ProtoError::UnknownEnum { field, value })
        }
    }
}

impl From<EnrollStatus> for pb::DeviceEnrollStatus {
    fn from(v: EnrollStatus) -> Self {
        match v {
            EnrollStatus::NotEnrolled => pb::DeviceEnrollStatus::NotEnrolled,
            EnrollStatus::Enrolled => pb::DeviceEnrollStatus::Enrolled,
        }
    }
}

fn enroll_status_from_proto(value: i32) -> Result<EnrollStatus, ProtoError> {
    match pb::DeviceEnrollStatus::try_from(value) {
        Ok(pb::DeviceEnrollStatus::Unspecified | pb::DeviceEnrollStatus::NotEnrolled) => {
            Ok(EnrollStatus::NotEnrolled)
        }
        Ok(pb::DeviceEnrollStatus::Enrolled) => Ok(EnrollStatus::Enrolled),
        Err(_) => Err(ProtoError::UnknownEnum {
            field: "enroll_status",
            value,
        }),
    }
}

impl From<SourceOrigin> for pb::DeviceOrigin {
    fn from(v: SourceOrigin) -> Self {
        match v {
            SourceOrigin::Api => pb::DeviceOrigin::Api,
            SourceOrigin::Jamf => pb::DeviceOrigin::Jamf,
            SourceOrigin::Intune => pb::DeviceOrigin::Intune,
            SourceOrigin::Csv => pb::DeviceOrigin::Csv,
        }
    }
}

fn origin_from_proto(value: i32) -> Result<SourceOrigin, ProtoError> {
    match pb::DeviceOrigin::try_from(value) {
        Ok(pb::DeviceOrigin::Unspecified | pb::DeviceOrigin::Api) => Ok(SourceOrigin::Api),
        Ok(pb::DeviceOrigin::Jamf) => Ok(SourceOrigin::Jamf),
        Ok(pb::DeviceOrigin::Intune) => Ok(SourceOrigin::Intune),
        Ok(pb::DeviceOrigin::Csv) => Ok(SourceOrigin::Csv),
        Err(_) => Err(ProtoError::UnknownEnum {
            field: "source.origin",
            value,
        }),
    }
}

// ---------------------------------------------------------------------------------------
// collected data

impl From<&DeviceCollectedData> for pb::DeviceCollectedData {
    fn from(d: &DeviceCollectedData) -> Self {
        pb::DeviceCollectedData {
            collect_time: Some(to_proto(d.collect_time)),
            record_time: opt_to_proto(d.record_time),
            os_type: d
                .os_type
                .map_or(pb::OsType::Unspecified, pb::OsType::from)
                .into(),
            serial_number: d.serial_number.clone(),
            model_identifier: d.model_identifier.clone(),
            os_version: d.os_version.clone(),
            os_build: d.os_build.clone(),
            os_username: d.os_username.clone(),
            hostname: d.hostname.clone(),
            system_serial_number: d.system_serial_number.clone(),
            base_board_serial_number: d.base_board_serial_number.clone(),
            reported_asset_tag: d.reported_asset_tag.clone(),
            serial_source: d.serial_source.clone(),
        }
    }
}

impl From<DeviceCollectedData> for pb::DeviceCollectedData {
    fn from(d: DeviceCollectedData) -> Self {
        pb::DeviceCollectedData::from(&d)
    }
}

/// Checks every text field against `dt_types::device::MAX_FIELD_LEN` (the message reads
/// like [`DeviceCollectedData::check_sizes`]'s, so the error is the same on both paths).
fn check_text_fields(d: &pb::DeviceCollectedData) -> Result<(), ProtoError> {
    for (name, v) in [
        ("serial_number", &d.serial_number),
        ("model_identifier", &d.model_identifier),
        ("os_version", &d.os_version),
        ("os_build", &d.os_build),
        ("os_username", &d.os_username),
        ("hostname", &d.hostname),
        ("system_serial_number", &d.system_serial_number),
        ("base_board_serial_number", &d.base_board_serial_number),
        ("reported_asset_tag", &d.reported_asset_tag),
        ("serial_source", &d.serial_source),
    ] {
        if v.len() > MAX_FIELD_LEN {
            return Err(ProtoError::Invalid {
                field: "device_data",
                why: format!("device data field {name} is longer than {MAX_FIELD_LEN} bytes"),
            });
        }
    }
    Ok(())
}

impl TryFrom<pb::DeviceCollectedData> for DeviceCollectedData {
    type Error = ProtoError;
    fn try_from(d: pb::DeviceCollectedData) -> Result<Self, ProtoError> {
        check_text_fields(&d)?;
        Ok(DeviceCollectedData {
            collect_time: from_proto(
                &required(d.collect_time, "device_data.collect_time")?,
                "device_data.collect_time",
            )?,
            record_time: opt_from_proto(d.record_time.as_ref(), "device_data.record_time")?,
            os_type: os_type_from_proto(d.os_type, "device_data.os_type")?,
            serial_number: d.serial_number,
            model_identifier: d.model_identifier,
            os_version: d.os_version,
            os_build: d.os_build,
            os_username: d.os_username,
            hostname: d.hostname,
            system_serial_number: d.system_serial_number,
            base_board_serial_number: d.base_board_serial_number,
            reported_asset_tag: d.reported_asset_tag,
            serial_source: d.serial_source,
        })
    }
}

// ---------------------------------------------------------------------------------------
// credential, source, profile

fn b64_decode(field: &'static str, s: &str) -> Result<Vec<u8>, ProtoError> {
    STANDARD.decode(s).map_err(|_| ProtoError::Invalid {
        field,
        why: "the stored value is not base64".into(),
    })
}

impl TryFrom<&DeviceCredential> for pb::DeviceCredential {
    type Error = ProtoError;
    fn try_from(c: &DeviceCredential) -> Result<Self, ProtoError> {
        Ok(pb::DeviceCredential {
            id: c.id.to_string(),
            public_key_der: b64_decode("credential.public_key_der", &c.public_key_der)?,
            attestation_type: pb::DeviceAttestationType::from(c.attestation_type).into(),
            tpm_ekcert_serial: c.tpm_ekcert_serial.clone().unwrap_or_default(),
            tpm_ak_public: match &c.tpm_ak_public {
                Some(s) => b64_decode("credential.tpm_ak_public", s)?,
                None => Vec::new(),
            },
            tpm_ekcert_der: match &c.tpm_ekcert_der {
                Some(s) => b64_decode("credential.tpm_ekcert_der", s)?,
                None => Vec::new(),
            },
        })
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn b64_non_empty(b: &[u8]) -> Option<String> {
    (!b.is_empty()).then(|| STANDARD.encode(b))
}

impl TryFrom<pb::DeviceCredential> for DeviceCredential {
    type Error = ProtoError;
    fn try_from(c: pb::DeviceCredential) -> Result<Self, ProtoError> {
        use dt_ceremony::limits::{MAX_CREDENTIAL_ID_LEN, MAX_PUBLIC_KEY_LEN, MAX_TPM_BLOB_LEN};
        check_len("credential.id", c.id.len(), MAX_CREDENTIAL_ID_LEN)?;
        check_len(
            "credential.public_key_der",
            c.public_key_der.len(),
            MAX_PUBLIC_KEY_LEN,
        )?;
        check_len(
            "credential.tpm_ak_public",
            c.tpm_ak_public.len(),
            MAX_TPM_BLOB_LEN,
        )?;
        check_len(
            "credential.tpm_ekcert_der",
            c.tpm_ekcert_der.len(),
            MAX_TPM_BLOB_LEN,
        )?;
        check_len(
            "credential.tpm_ekcert_serial",
            c.tpm_ekcert_serial.len(),
            MAX_FIELD_LEN,
        )?;
        let id = CredentialId::parse(c.id).map_err(|source| ProtoError::CredentialId {
            field: "credential.id",
            source,
        })?;
        Ok(DeviceCredential {
            id,
            public_key_der: if c.public_key_der.is_empty() {
                String::new()
            } else {
                STANDARD.encode(&c.public_key_der)
            },
            attestation_type: attestation_from_proto(c.attestation_type)?,
            tpm_ekcert_serial: non_empty(c.tpm_ekcert_serial),
            tpm_ak_public: b64_non_empty(&c.tpm_ak_public),
            tpm_ekcert_der: b64_non_empty(&c.tpm_ekcert_der),
        })
    }
}

impl From<&DeviceSource> for pb::DeviceSource {
    fn from(s: &DeviceSource) -> Self {
        pb::DeviceSource {
            name: s.name.clone(),
            origin: pb::DeviceOrigin::from(s.origin).into(),
        }
    }
}

impl TryFrom<pb::DeviceSource> for DeviceSource {
    type Error = ProtoError;
    fn try_from(s: pb::DeviceSource) -> Result<Self, ProtoError> {
        check_len("source.name", s.name.len(), MAX_FIELD_LEN)?;
        Ok(DeviceSource {
            name: s.name,
            origin: origin_from_proto(s.origin)?,
        })
    }
}

impl From<&DeviceProfile> for pb::DeviceProfile {
    fn from(p: &DeviceProfile) -> Self {
        pb::DeviceProfile {
            model_identifier: p.model_identifier.clone(),
            os_version: p.os_version.clone(),
            os_build: p.os_build.clone(),
            os_usernames: p.os_usernames.clone(),
            assigned_user: p.assigned_user.clone(),
            extra: p.extra.clone().into_iter().collect(),
        }
    }
}

impl From<pb::DeviceProfile> for DeviceProfile {
    fn from(p: pb::DeviceProfile) -> Self {
        DeviceProfile {
            model_identifier: p.model_identifier,
            os_version: p.os_version,
            os_build: p.os_build,
            os_usernames: p.os_usernames,
            assigned_user: p.assigned_user,
            extra: p.extra.into_iter().collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// the device

impl TryFrom<&dt_types::Device> for pb::Device {
    type Error = ProtoError;
    fn try_from(d: &dt_types::Device) -> Result<Self, ProtoError> {
        let s = &d.spec;
        Ok(pb::Device {
            id: d.metadata.name.clone(),
            os_type: pb::OsType::from(s.os_type).into(),
            asset_tag: s.asset_tag.clone(),
            create_time: opt_to_proto(s.create_time),
            update_time: opt_to_proto(s.update_time),
            enroll_status: pb::DeviceEnrollStatus::from(s.enroll_status).into(),
            credential: s
                .credential
                .as_ref()
                .map(pb::DeviceCredential::try_from)
                .transpose()?,
            collected_data: s
                .collected_data
                .iter()
                .map(pb::DeviceCollectedData::from)
                .collect(),
            source: s.source.as_ref().map(pb::DeviceSource::from),
            profile: s.profile.as_ref().map(pb::DeviceProfile::from),
            owner: s.owner.clone().unwrap_or_default(),
            revision: match &d.metadata.revision {
                None => 0,
                Some(r) => r.parse().map_err(|_| ProtoError::Invalid {
                    field: "revision",
                    why: "not a number".into(),
                })?,
            },
            description: d.metadata.description.clone().unwrap_or_default(),
            labels: d.metadata.labels.clone().into_iter().collect(),
        })
    }
}

impl TryFrom<dt_types::Device> for pb::Device {
    type Error = ProtoError;
    fn try_from(d: dt_types::Device) -> Result<Self, ProtoError> {
        pb::Device::try_from(&d)
    }
}

/// Shapes and sizes only: whether the device may exist (a UUID id, a valid asset tag, a
/// credential when enrolled...) is `dt_types`' `Spec::validate`, which the server runs.
impl TryFrom<pb::Device> for dt_types::Device {
    type Error = ProtoError;
    fn try_from(d: pb::Device) -> Result<Self, ProtoError> {
        check_len("id", d.id.len(), dt_types::resource::MAX_NAME_LEN)?;
        check_len("asset_tag", d.asset_tag.len(), MAX_FIELD_LEN)?;
        check_len("owner", d.owner.len(), MAX_FIELD_LEN)?;
        crate::error::check_count(
            "collected_data",
            d.collected_data.len(),
            dt_types::device::MAX_COLLECTED_DATA,
        )?;
        let spec = DeviceSpec {
            os_type: required_os_type(d.os_type, "os_type")?,
            asset_tag: d.asset_tag,
            enroll_status: enroll_status_from_proto(d.enroll_status)?,
            create_time: opt_from_proto(d.create_time.as_ref(), "create_time")?,
            update_time: opt_from_proto(d.update_time.as_ref(), "update_time")?,
            credential: d.credential.map(DeviceCredential::try_from).transpose()?,
            collected_data: d
                .collected_data
                .into_iter()
                .map(DeviceCollectedData::try_from)
                .collect::<Result<_, _>>()?,
            source: d.source.map(DeviceSource::try_from).transpose()?,
            profile: d.profile.map(DeviceProfile::from),
            owner: non_empty(d.owner),
        };
        Ok(Resource {
            kind: Kind::Device,
            version: Kind::Device.version().to_string(),
            metadata: Metadata {
                name: d.id,
                description: non_empty(d.description),
                labels: d.labels.into_iter().collect(),
                expires: None,
                revision: (d.revision != 0).then(|| d.revision.to_string()),
            },
            spec,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn sample() -> dt_types::Device {
        let mut d = Resource::new(
            "6f1c1d2e-8b1a-4c1e-9f0e-0123456789ab",
            DeviceSpec {
                os_type: OsType::Linux,
                asset_tag: "SERIAL-1".into(),
                enroll_status: EnrollStatus::Enrolled,
                create_time: Some(datetime!(2026-12-01 10:00:00.123456789 UTC)),
                update_time: Some(datetime!(2026-12-02 10:00:00 UTC)),
                credential: Some(DeviceCredential {
                    id: "cred-1".parse().unwrap(),
                    public_key_der: STANDARD.encode([1u8, 2, 3]),
                    attestation_type: AttestationType::TpmEkcertTrusted,
                    tpm_ekcert_serial: Some("01ab".into()),
                    tpm_ak_public: Some(STANDARD.encode([4u8, 5])),
                    tpm_ekcert_der: Some(STANDARD.encode([6u8])),
                }),
                collected_data: vec![DeviceCollectedData {
                    collect_time: datetime!(2026-12-02 09:59:59 UTC),
                    record_time: Some(datetime!(2026-12-02 10:00:00 UTC)),
                    os_type: Some(OsType::Linux),
                    serial_number: "SERIAL-1".into(),
                    model_identifier: "m".into(),
                    os_version: "12".into(),
                    os_build: "b".into(),
                    os_username: "u".into(),
                    hostname: "h".into(),
                    system_serial_number: "s".into(),
                    base_board_serial_number: "bb".into(),
                    reported_asset_tag: "r".into(),
                    serial_source: "override".into(),
                }],
                source: Some(DeviceSource {
                    name: "jamf-1".into(),
                    origin: SourceOrigin::Jamf,
                }),
                profile: Some(DeviceProfile {
                    model_identifier: "m".into(),
                    os_usernames: vec!["u".into()],
                    assigned_user: "alice".into(),
                    extra: [("dept".to_string(), "x".to_string())].into(),
                    ..Default::default()
                }),
                owner: Some("alice".into()),
            },
        );
        d.metadata.revision = Some("42".into());
        d.metadata.description = Some("desk".into());
        d.metadata.labels.insert("env".into(), "lab".into());
        d
    }

    #[test]
    fn a_device_survives_the_round_trip() {
        let d = sample();
        let wire = pb::Device::try_from(&d).unwrap();
        assert_eq!(
            wire.credential.as_ref().unwrap().public_key_der,
            vec![1, 2, 3]
        );
        assert_eq!(wire.revision, 42);
        let back = dt_types::Device::try_from(wire).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn shapes_are_checked() {
        let mut wire = pb::Device::try_from(&sample()).unwrap();
        wire.os_type = 0;
        assert_eq!(
            dt_types::Device::try_from(wire.clone()).unwrap_err(),
            ProtoError::UnknownEnum {
                field: "os_type",
                value: 0
            }
        );
        wire.os_type = 3;
        wire.credential.as_mut().unwrap().attestation_type = 99;
        assert!(matches!(
            dt_types::Device::try_from(wire.clone()).unwrap_err(),
            ProtoError::UnknownEnum {
                field: "credential.attestation_type",
                ..
            }
        ));
        wire.credential.as_mut().unwrap().attestation_type = 1;
        for (bad, source) in [
            ("", dt_types::CredentialIdError::Empty),
            ("cred 1", dt_types::CredentialIdError::NotPrintable),
        ] {
            wire.credential.as_mut().unwrap().id = bad.into();
            let err = dt_types::Device::try_from(wire.clone()).unwrap_err();
            assert_eq!(
                err,
                ProtoError::CredentialId {
                    field: "credential.id",
                    source
                }
            );
            assert!(
                err.to_string().starts_with("invalid credential.id: "),
                "{err}"
            );
        }
        wire.credential.as_mut().unwrap().id = "cred-1".into();
        wire.collected_data[0].collect_time = None;
        assert_eq!(
            dt_types::Device::try_from(wire.clone()).unwrap_err(),
            ProtoError::Missing {
                field: "device_data.collect_time"
            }
        );
        wire.collected_data[0].collect_time = Some(prost_types::Timestamp {
            seconds: 1,
            nanos: -1,
        });
        assert!(matches!(
            dt_types::Device::try_from(wire).unwrap_err(),
            ProtoError::Invalid { .. }
        ));
    }

    #[test]
    fn sizes_are_checked() {
        let mut wire = pb::Device::try_from(&sample()).unwrap();
        wire.collected_data = vec![wire.collected_data[0].clone(); 12];
        assert_eq!(
            dt_types::Device::try_from(wire.clone()).unwrap_err(),
            ProtoError::TooMany {
                field: "collected_data",
                len: 12,
                max: 11
            }
        );
        wire.collected_data.truncate(1);
        wire.collected_data[0].hostname = "h".repeat(MAX_FIELD_LEN + 1);
        assert_eq!(
            dt_types::Device::try_from(wire.clone())
                .unwrap_err()
                .to_string(),
            "invalid device_data: device data field hostname is longer than 256 bytes"
        );
        wire.collected_data[0].hostname.clear();
        wire.credential.as_mut().unwrap().public_key_der = vec![0; 1025];
        assert_eq!(
            dt_types::Device::try_from(wire).unwrap_err().to_string(),
            "credential.public_key_der is 1025 bytes, more than the 1024 accepted"
        );
    }

    #[test]
    fn stored_garbage_is_an_error_not_a_panic() {
        let mut d = sample();
        d.spec.credential.as_mut().unwrap().tpm_ak_public = Some("***".into());
        assert!(matches!(
            pb::Device::try_from(&d).unwrap_err(),
            ProtoError::Invalid {
                field: "credential.tpm_ak_public",
                ..
            }
        ));
    }
}
