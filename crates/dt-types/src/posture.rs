//! Device posture: what an augmented certificate says about the device that authenticated
//! ([`DevicePosture`]), and the rules a role may set on it ([`PostureRules`], a role's
//! `options.device_trust`).
//!
//! Why here: the CA writes the posture into certificates, the authorization crate evaluates
//! the rules, the auth service fills both in; all three share these types.
//!
//! Guarantees: versions are compared as versions (`10.0.22631` > `10.0.9999`, `14.4` =
//! `14.4.0`), never as strings; a minimum must be a plain dotted number so a typo is refused
//! when the role is stored, and a device version that does not start with a number never
//! satisfies a minimum (fail closed).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::device::{AttestationType, MAX_FIELD_LEN, OsType};
use crate::duration::DurationStr;

impl AttestationType {
    pub const ALL: [AttestationType; 5] = [
        AttestationType::Software,
        AttestationType::SecureEnclave,
        AttestationType::TpmEkpub,
        AttestationType::TpmEkcert,
        AttestationType::TpmEkcertTrusted,
    ];

    /// The name used in roles, certificates and events (`tpm_ekcert_trusted`).
    pub fn as_str(self) -> &'static str {
        match self {
            AttestationType::Software => "software",
            AttestationType::SecureEnclave => "secure_enclave",
            AttestationType::TpmEkpub => "tpm_ekpub",
            AttestationType::TpmEkcert => "tpm_ekcert",
            AttestationType::TpmEkcertTrusted => "tpm_ekcert_trusted",
        }
    }

    pub fn parse(s: &str) -> Option<AttestationType> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for AttestationType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the certificates say about the device at the time it authenticated. Every field is
/// optional because certificates issued before posture existed carry none; a rule that needs
/// a missing value fails (fail closed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicePosture {
    /// How the device key is attested (from the enrolled credential).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation_type: Option<AttestationType>,
    /// The device's OS (from the inventory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_type: Option<OsType>,
    /// The OS version the device reported when it authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    /// When the device authenticated (whole seconds).
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub authenticated_at: Option<OffsetDateTime>,
}

impl DevicePosture {
    pub fn is_empty(&self) -> bool {
        *self == DevicePosture::default()
    }

    /// Refuses values that cannot go into a certificate.
    pub fn check(&self) -> Result<(), String> {
        if let Some(v) = &self.os_version
            && (v.is_empty() || v.len() > MAX_FIELD_LEN || v.chars().any(char::is_control))
        {
            return Err(format!(
                "os version {v:?} is empty, too long or has control characters"
            ));
        }
        Ok(())
    }
}

/// A role's posture rules (`options.device_trust`), checked beside its `device_trust_mode`
/// whenever that mode requires a device of the caller. With rules and no mode, the role
/// requires a trusted device (`required`).
///
/// ```yaml
/// options:
///   device_trust_mode: required
///   device_trust:
///     attestation_types: [tpm_ekcert_trusted, secure_enclave]
///     min_os_version: {macos: "14.4", windows: "10.0.22631", linux: "12"}
///     max_auth_age: 8h
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostureRules {
    /// The device key must be attested one of these ways (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attestation_types: Vec<AttestationType>,
    /// The lowest OS version accepted, per OS. An OS not listed has no minimum.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub min_os_version: BTreeMap<OsType, String>,
    /// The device must have authenticated within this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_auth_age: Option<DurationStr>,
}

impl PostureRules {
    pub fn is_empty(&self) -> bool {
        self.attestation_types.is_empty()
            && self.min_os_version.is_empty()
            && self.max_auth_age.is_none()
    }

    /// What a role stores: minimums are dotted numbers, the age is positive.
    pub fn check(&self) -> Result<(), String> {
        for (os, v) in &self.min_os_version {
            if Version::parse_strict(v).is_none() {
                return Err(format!(
                    "options.device_trust.min_os_version.{}: {v:?} is not a version (write dotted numbers, e.g. \"14.4\")",
                    os.as_str()
                ));
            }
        }
        if self.max_auth_age.is_some_and(|d| d.0.is_zero()) {
            return Err("options.device_trust.max_auth_age must be positive".into());
        }
        Ok(())
    }
}

/// Which posture rule a reason is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PostureRule {
    AttestationTypes,
    MinOsVersion,
    MaxAuthAge,
}

impl PostureRule {
    pub fn as_str(self) -> &'static str {
        match self {
            PostureRule::AttestationTypes => "attestation_types",
            PostureRule::MinOsVersion => "min_os_version",
            PostureRule::MaxAuthAge => "max_auth_age",
        }
    }
}

impl fmt::Display for PostureRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A version, compared component by component as numbers; missing components count as 0.
#[derive(Clone, Debug)]
pub struct Version(Vec<u64>);

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u64::to_string).collect();
        f.write_str(&parts.join("."))
    }
}

impl Version {
    /// Only dotted numbers (`14`, `14.4`, `10.0.22631`): what a role may name.
    pub fn parse_strict(s: &str) -> Option<Version> {
        let parts: Option<Vec<u64>> = s.trim().split('.').map(|p| p.parse().ok()).collect();
        parts.filter(|p| !p.is_empty()).map(Version)
    }

    /// What a device reports: the leading dotted numbers (`6.1.0-13-amd64` is 6.1.0,
    /// `13.5 (22G74)` is 13.5). `None` when it does not start with a number.
    pub fn parse_lenient(s: &str) -> Option<Version> {
        let mut out = Vec::new();
        for part in s.trim().split('.') {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            if digits.is_empty() {
                break;
            }
            out.push(digits.parse().ok()?);
            if digits.len() != part.len() {
                break;
            }
        }
        (!out.is_empty()).then_some(Version(out))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let n = self.0.len().max(other.0.len());
        for i in 0..n {
            let a = self.0.get(i).copied().unwrap_or(0);
            let b = other.0.get(i).copied().unwrap_or(0);
            match a.cmp(&b) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        Ordering::Equal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse_lenient(s).unwrap()
    }

    #[test]
    fn versions_compare_as_numbers_not_strings() {
        assert!(v("10.0.22631") > v("10.0.9999"));
        assert!(v("14.10") > v("14.4"));
        assert_eq!(v("14.4"), v("14.4.0"));
        assert!(v("6.1.0-13-amd64") >= v("6.1"));
        assert!(v("6.0.9") < v("6.1"));
        assert_eq!(v("13.5 (22G74)"), v("13.5"));
        assert_eq!(v("12"), v("12.0"));
        assert!(Version::parse_lenient("bookworm").is_none());
        assert!(Version::parse_lenient("").is_none());
    }

    #[test]
    fn role_minimums_must_be_dotted_numbers() {
        for ok in ["14", "14.4", "10.0.22631"] {
            assert!(Version::parse_strict(ok).is_some(), "{ok}");
        }
        for bad in ["", "14.", "v14", "14.4beta", "1..2", "latest"] {
            assert!(Version::parse_strict(bad).is_none(), "{bad}");
        }
        let rules = PostureRules {
            min_os_version: [(OsType::Macos, "fourteen".to_string())].into(),
            ..Default::default()
        };
        assert!(rules.check().unwrap_err().contains("min_os_version.macos"));
        let rules = PostureRules {
            max_auth_age: Some(DurationStr::from_secs(0)),
            ..Default::default()
        };
        assert!(rules.check().is_err());
    }

    #[test]
    fn attestation_type_names_round_trip() {
        for a in AttestationType::ALL {
            assert_eq!(AttestationType::parse(a.as_str()), Some(a));
            let json = serde_json::to_string(&a).unwrap();
            assert_eq!(json, format!("\"{}\"", a.as_str()));
        }
        assert_eq!(AttestationType::parse("tpm"), None);
    }

    #[test]
    fn rules_parse_from_yaml_shape() {
        let json = r#"{"attestation_types":["tpm_ekcert_trusted","secure_enclave"],
            "min_os_version":{"macos":"14.4","windows":"10.0.22631"},"max_auth_age":"8h"}"#;
        let r: PostureRules = serde_json::from_str(json).unwrap();
        assert_eq!(r.attestation_types.len(), 2);
        assert_eq!(r.min_os_version[&OsType::Windows], "10.0.22631");
        assert_eq!(r.max_auth_age, Some(DurationStr::from_secs(8 * 3600)));
        assert!(r.check().is_ok());
        assert!(serde_json::from_str::<PostureRules>(r#"{"min_os":{}}"#).is_err());
        assert!(serde_json::from_str::<PostureRules>(r#"{"attestation_types":["tpm"]}"#).is_err());
    }

    #[test]
    fn roles_carry_rules_beside_the_mode() {
        use crate::resource::{AnyResource, DeviceTrustMode};
        let text = "kind: role\nversion: v7\nmetadata: {name: r}\nspec:\n  options:\n    device_trust_mode: required-for-humans\n    device_trust:\n      attestation_types: [tpm_ekcert_trusted, secure_enclave]\n      min_os_version: {macos: '14.4', linux: '12'}\n      max_auth_age: 8h\n";
        let AnyResource::Role(r) = AnyResource::parse_documents(text).unwrap().remove(0) else {
            panic!("not a role")
        };
        assert_eq!(
            r.spec.options.device_trust_mode,
            Some(DeviceTrustMode::RequiredForHumans)
        );
        assert_eq!(
            r.spec.options.device_trust.attestation_types,
            vec![
                AttestationType::TpmEkcertTrusted,
                AttestationType::SecureEnclave
            ]
        );
        assert_eq!(
            r.spec.options.device_trust.min_os_version[&OsType::Linux],
            "12"
        );
        for (bad, why) in [
            (
                "device_trust_mode: optional\n    device_trust: {max_auth_age: 8h}",
                "need a trusted device",
            ),
            (
                "device_trust_mode: off\n    device_trust: {max_auth_age: 8h}",
                "need a trusted device",
            ),
            (
                "device_trust: {min_os_version: {macos: latest}}",
                "is not a version",
            ),
            (
                "device_trust: {attestation_types: [tpm]}",
                "unknown variant",
            ),
            (
                "device_trust: {min_os_version: {beos: '5'}}",
                "unknown variant",
            ),
            ("device_trust: {max_age: 8h}", "unknown field"),
        ] {
            let text = format!(
                "kind: role\nversion: v7\nmetadata: {{name: r}}\nspec:\n  options:\n    {bad}\n"
            );
            let err = AnyResource::parse_documents(&text).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
