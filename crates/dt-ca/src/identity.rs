//! What a user certificate says about its holder, and where each fact lives in the SSH and
//! X.509 encodings (DESIGN.md §5).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use dt_types::device::{AttestationType, OsType};
use dt_types::posture::DevicePosture;
use dt_types::{CredentialId, DeviceId, UserName};

use crate::error::{CaError, Result};

/// The device a certificate was augmented with: present only after a successful device
/// authentication ceremony.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceExt {
    /// The device's id in the inventory (a UUID).
    pub device_id: DeviceId,
    /// The device's asset tag (serial number).
    pub asset_tag: String,
    /// The id of the device credential that answered the challenge.
    pub credential_id: CredentialId,
    /// What the device was at authentication (attestation, OS and version, time), for the
    /// roles' posture rules. Empty on certificates augmented before posture existed.
    #[serde(default, skip_serializing_if = "DevicePosture::is_empty")]
    pub posture: DevicePosture,
}

/// The identity a user certificate asserts.
///
/// Times have whole-second precision in both certificate formats; issuance truncates
/// fractions, so a parsed identity equals the issued one when its times were whole seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// The devtrust user name (SSH key id, X.509 Subject CN), checked where a certificate is
    /// read: a certificate whose name is not a [`UserName`] is refused
    /// ([`CaError::UserName`]). Written as the same plain string in both formats.
    pub username: UserName,
    /// The user's roles.
    pub roles: Vec<String>,
    /// The OS logins the user may use (SSH principals).
    pub logins: Vec<String>,
    /// A bot (machine) identity rather than a human.
    pub bot: bool,
    /// The user's login traits: what `{{internal.logins}}` expands to at an access point.
    /// [`Identity::logins`] (every login any role grants, on any node) must never be used for
    /// that, or a login one role grants only on some nodes would be granted on all of them.
    /// Empty on certificates issued before this field existed, so for them
    /// `{{internal.logins}}` grants nothing (fail closed).
    #[serde(default)]
    pub trait_logins: Vec<String>,
    /// The trusted device, when the certificates were augmented.
    pub device: Option<DeviceExt>,
    /// Start of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// End of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

impl Identity {
    /// True when the certificate carried the full device identity (all three values).
    pub fn is_device_verified(&self) -> bool {
        self.device.is_some()
    }

    /// True once the certificate no longer is valid at `now` (both formats: valid while
    /// `now < not_after`, in whole seconds).
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        now.unix_timestamp() >= self.not_after.unix_timestamp()
    }

    /// Refuses identities that cannot be put into certificates safely.
    pub(crate) fn validate(&self) -> Result<()> {
        for role in &self.roles {
            check_text("role", role)?;
            if role.contains(',') {
                return Err(CaError::InvalidIdentity(format!(
                    "role {role:?} contains a comma"
                )));
            }
        }
        for login in &self.logins {
            check_text("login", login)?;
            if login == ssh_ext::NO_LOGIN_PRINCIPAL {
                return Err(CaError::InvalidIdentity(format!(
                    "login {login:?} is reserved"
                )));
            }
        }
        for login in &self.trait_logins {
            check_text("login trait", login)?;
            if login.contains(',') {
                return Err(CaError::InvalidIdentity(format!(
                    "login trait {login:?} contains a comma"
                )));
            }
        }
        if let Some(device) = &self.device {
            device.validate()?;
        }
        // Both formats count whole seconds, so compare what will be written.
        if crate::x509::whole_seconds(self.not_after) <= crate::x509::whole_seconds(self.not_before)
        {
            return Err(CaError::InvalidIdentity(
                "not_after must be later than not_before".into(),
            ));
        }
        Ok(())
    }
}

impl DeviceExt {
    pub(crate) fn validate(&self) -> Result<()> {
        check_text("device id", self.device_id.as_str())?;
        check_text("asset tag", &self.asset_tag)?;
        check_text("credential id", self.credential_id.as_str())?;
        self.posture.check().map_err(CaError::InvalidIdentity)
    }
}

/// The posture values as certificate text, in the order of [`POSTURE_NAMES`]:
/// attestation type, OS, OS version, authentication time (unix seconds).
pub(crate) fn posture_values(p: &DevicePosture) -> [Option<String>; 4] {
    [
        p.attestation_type.map(|a| a.as_str().to_string()),
        p.os_type.map(|o| o.as_str().to_string()),
        p.os_version.clone(),
        p.authenticated_at.map(|t| t.unix_timestamp().to_string()),
    ]
}

/// Reads the posture values back; a value this build cannot read is refused (fail closed),
/// never dropped.
pub(crate) fn posture_from_values(
    values: [Option<String>; 4],
    bad: impl Fn(String) -> CaError,
) -> Result<DevicePosture> {
    let [att, os, version, time] = values;
    let attestation_type = att
        .map(|a| {
            AttestationType::parse(&a)
                .ok_or_else(|| bad(format!("unknown device attestation type {a:?}")))
        })
        .transpose()?;
    let os_type = os
        .map(|o| OsType::parse(&o).ok_or_else(|| bad(format!("unknown device os {o:?}"))))
        .transpose()?;
    let authenticated_at = time
        .map(|t| {
            t.parse::<i64>()
                .ok()
                .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
                .ok_or_else(|| {
                    bad(format!(
                        "device authentication time {t:?} is not unix seconds"
                    ))
                })
        })
        .transpose()?;
    let posture = DevicePosture {
        attestation_type,
        os_type,
        os_version: version,
        authenticated_at,
    };
    posture.check().map_err(bad)?;
    Ok(posture)
}

fn check_text(what: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(CaError::InvalidIdentity(format!("{what} is empty")));
    }
    if value.chars().any(char::is_control) {
        return Err(CaError::InvalidIdentity(format!(
            "{what} {value:?} contains control characters"
        )));
    }
    Ok(())
}

/// Names of the SSH certificate extensions devtrust writes (values are plain strings).
pub mod ssh_ext {
    /// Comma-separated role names.
    pub const ROLES: &str = "devtrust-roles";
    /// Present (empty value) on bot certificates.
    pub const BOT: &str = "devtrust-bot";
    /// Comma-separated login traits (what `{{internal.logins}}` expands to); absent on
    /// certificates issued before it existed.
    pub const LOGIN_TRAITS: &str = "devtrust-logins";
    /// The device id of an augmented certificate.
    pub const DEVICE_ID: &str = "devtrust-device-id";
    /// The device asset tag of an augmented certificate.
    pub const DEVICE_ASSET_TAG: &str = "devtrust-device-asset-tag";
    /// The device credential id of an augmented certificate.
    pub const DEVICE_CREDENTIAL_ID: &str = "devtrust-device-credential-id";
    /// How the device key is attested (`tpm_ekcert_trusted`, `secure_enclave`, ...).
    pub const DEVICE_ATTESTATION: &str = "devtrust-device-attestation";
    /// The device's OS (`linux`, `macos`, `windows`).
    pub const DEVICE_OS: &str = "devtrust-device-os";
    /// The OS version the device reported when it authenticated.
    pub const DEVICE_OS_VERSION: &str = "devtrust-device-os-version";
    /// When the device authenticated, unix seconds.
    pub const DEVICE_AUTH_TIME: &str = "devtrust-device-auth-time";
    /// The posture extensions, in the order of the posture values.
    pub const POSTURE: [&str; 4] = [
        DEVICE_ATTESTATION,
        DEVICE_OS,
        DEVICE_OS_VERSION,
        DEVICE_AUTH_TIME,
    ];
    /// The usual OpenSSH permissions every user certificate gets.
    pub const PERMITS: [&str; 3] = [
        "permit-agent-forwarding",
        "permit-port-forwarding",
        "permit-pty",
    ];
    /// The principal written when a user has no logins: an empty principal list would make
    /// OpenSSH accept the certificate for *any* login (PROTOCOL.certkeys). No Unix account can
    /// be named with a leading dash, so this matches none.
    pub const NO_LOGIN_PRINCIPAL: &str = "-devtrust-nologin";
}

/// OIDs of the X.509 Subject attributes devtrust writes, all UTF8String.
pub mod x509_oid {
    /// Our arc: a UUID OID (X.667), `2.25.<uuid 54fe9114-1d38-4bfe-a564-c9df1d59e111>`.
    pub const ARC: &str = "2.25.112976937590999683324659271999942156561";
    /// The same arc as a number (it does not fit in a `u64`).
    pub const ARC_UUID: u128 = 112976937590999683324659271999942156561;
    /// `ARC.1.1`: one attribute per role.
    pub const ROLE: &str = "2.25.112976937590999683324659271999942156561.1.1";
    /// `ARC.1.2`: one attribute per login.
    pub const LOGIN: &str = "2.25.112976937590999683324659271999942156561.1.2";
    /// `ARC.1.3`: present on bot certificates (value `true`).
    pub const BOT: &str = "2.25.112976937590999683324659271999942156561.1.3";
    /// `ARC.1.4`: one attribute per login trait (what `{{internal.logins}}` expands to).
    pub const LOGIN_TRAIT: &str = "2.25.112976937590999683324659271999942156561.1.4";
    /// `ARC.3.1`: device id.
    pub const DEVICE_ID: &str = "2.25.112976937590999683324659271999942156561.3.1";
    /// `ARC.3.2`: device asset tag.
    pub const DEVICE_ASSET_TAG: &str = "2.25.112976937590999683324659271999942156561.3.2";
    /// `ARC.3.3`: device credential id.
    pub const DEVICE_CREDENTIAL_ID: &str = "2.25.112976937590999683324659271999942156561.3.3";
    /// `ARC.3.4`: how the device key is attested.
    pub const DEVICE_ATTESTATION: &str = "2.25.112976937590999683324659271999942156561.3.4";
    /// `ARC.3.5`: the device's OS.
    pub const DEVICE_OS: &str = "2.25.112976937590999683324659271999942156561.3.5";
    /// `ARC.3.6`: the OS version at authentication.
    pub const DEVICE_OS_VERSION: &str = "2.25.112976937590999683324659271999942156561.3.6";
    /// `ARC.3.7`: the authentication time, unix seconds.
    pub const DEVICE_AUTH_TIME: &str = "2.25.112976937590999683324659271999942156561.3.7";

    /// DER content octets of [`ARC`]: `2.25` is `2 * 40 + 25`, then [`ARC_UUID`] in base 128
    /// (19 octets, since the UUID's top bit is bit 126).
    pub(crate) const ARC_CONTENT: [u8; 20] = {
        let (septets, start) = crate::asn1::base128(ARC_UUID);
        assert!(start == 0, "the devtrust arc takes exactly 19 octets");
        let mut out = [0u8; 20];
        out[0] = 2 * 40 + 25;
        let mut i = 0;
        while i < septets.len() {
            out[1 + i] = septets[i];
            i += 1;
        }
        out
    };

    /// Content octets of `ARC.group.item` (both below 128, so one octet each).
    const fn under_arc(group: u8, item: u8) -> [u8; 22] {
        let mut out = [0u8; 22];
        let mut i = 0;
        while i < ARC_CONTENT.len() {
            out[i] = ARC_CONTENT[i];
            i += 1;
        }
        out[20] = group;
        out[21] = item;
        out
    }

    pub(crate) const ROLE_CONTENT: [u8; 22] = under_arc(1, 1);
    pub(crate) const LOGIN_CONTENT: [u8; 22] = under_arc(1, 2);
    pub(crate) const BOT_CONTENT: [u8; 22] = under_arc(1, 3);
    pub(crate) const LOGIN_TRAIT_CONTENT: [u8; 22] = under_arc(1, 4);
    pub(crate) const DEVICE_ID_CONTENT: [u8; 22] = under_arc(3, 1);
    pub(crate) const DEVICE_ASSET_TAG_CONTENT: [u8; 22] = under_arc(3, 2);
    pub(crate) const DEVICE_CREDENTIAL_ID_CONTENT: [u8; 22] = under_arc(3, 3);
    pub(crate) const DEVICE_ATTESTATION_CONTENT: [u8; 22] = under_arc(3, 4);
    pub(crate) const DEVICE_OS_CONTENT: [u8; 22] = under_arc(3, 5);
    pub(crate) const DEVICE_OS_VERSION_CONTENT: [u8; 22] = under_arc(3, 6);
    pub(crate) const DEVICE_AUTH_TIME_CONTENT: [u8; 22] = under_arc(3, 7);
    /// The posture attributes, in the order of the posture values.
    pub(crate) const POSTURE_CONTENT: [[u8; 22]; 4] = [
        DEVICE_ATTESTATION_CONTENT,
        DEVICE_OS_CONTENT,
        DEVICE_OS_VERSION_CONTENT,
        DEVICE_AUTH_TIME_CONTENT,
    ];
}

#[cfg(test)]
mod tests {
    use super::x509_oid::*;
    use super::*;
    use crate::asn1;
    use time::macros::datetime;

    fn dotted_to_content(dotted: &str) -> Vec<u8> {
        let arcs: Vec<u128> = dotted.split('.').map(|a| a.parse().unwrap()).collect();
        asn1::oid_content(&arcs).unwrap()
    }

    #[test]
    fn oid_constants_agree_with_their_dotted_form() {
        assert_eq!(dotted_to_content(ARC), ARC_CONTENT);
        assert_eq!(ARC, format!("2.25.{ARC_UUID}"));
        for (dotted, content) in [
            (ROLE, ROLE_CONTENT),
            (LOGIN, LOGIN_CONTENT),
            (BOT, BOT_CONTENT),
            (LOGIN_TRAIT, LOGIN_TRAIT_CONTENT),
            (DEVICE_ID, DEVICE_ID_CONTENT),
            (DEVICE_ASSET_TAG, DEVICE_ASSET_TAG_CONTENT),
            (DEVICE_CREDENTIAL_ID, DEVICE_CREDENTIAL_ID_CONTENT),
            (DEVICE_ATTESTATION, DEVICE_ATTESTATION_CONTENT),
            (DEVICE_OS, DEVICE_OS_CONTENT),
            (DEVICE_OS_VERSION, DEVICE_OS_VERSION_CONTENT),
            (DEVICE_AUTH_TIME, DEVICE_AUTH_TIME_CONTENT),
        ] {
            assert_eq!(dotted_to_content(dotted), content, "{dotted}");
        }
    }

    #[test]
    fn the_arc_is_the_documented_uuid() {
        // 54fe9114-1d38-4bfe-a564-c9df1d59e111
        assert_eq!(ARC_UUID, 0x54fe9114_1d38_4bfe_a564_c9df1d59e111);
    }

    fn alice() -> Identity {
        Identity {
            username: "alice".parse().unwrap(),
            roles: vec!["access".into()],
            logins: vec!["root".into()],
            bot: false,
            trait_logins: vec!["root".into()],
            device: None,
            not_before: datetime!(2026-01-01 00:00 UTC),
            not_after: datetime!(2026-01-01 12:00 UTC),
        }
    }

    #[test]
    fn validation_refuses_what_cannot_be_encoded() {
        assert!(alice().validate().is_ok());
        // An empty or control-character user name cannot be built: `UserName` refuses it.
        let cases: [fn(&mut Identity); 7] = [
            |i| i.roles.push("a,b".into()),
            |i| i.roles.push(String::new()),
            |i| i.logins.push(ssh_ext::NO_LOGIN_PRINCIPAL.into()),
            |i| i.trait_logins.push("a,b".into()),
            |i| i.trait_logins.push(String::new()),
            |i| i.not_after = i.not_before,
            |i| {
                i.device = Some(DeviceExt {
                    device_id: "5f2c6c39-3c4b-4a53-9d0c-3d2f3f0a9b11".parse().unwrap(),
                    asset_tag: String::new(),
                    credential_id: "c".parse().unwrap(),
                    posture: DevicePosture::default(),
                })
            },
        ];
        for (n, mutate) in cases.iter().enumerate() {
            let mut id = alice();
            mutate(&mut id);
            assert!(
                matches!(id.validate(), Err(CaError::InvalidIdentity(_))),
                "case {n}"
            );
        }
    }

    #[test]
    fn serde_round_trip() {
        let id = alice();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<Identity>(&json).unwrap(), id);
    }

    #[test]
    fn identities_written_before_login_traits_still_parse_without_any() {
        let mut json = serde_json::to_value(alice()).unwrap();
        json.as_object_mut().unwrap().remove("trait_logins");
        let id: Identity = serde_json::from_value(json).unwrap();
        assert!(id.trait_logins.is_empty());
    }
}
