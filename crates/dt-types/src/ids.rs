//! Typed ids: a device's id, a device credential's id, a user's name and a node's name.
//!
//! Why: these four strings cross every crate (inventory, ceremonies, certificates, access
//! points, audit) and used to be bare `String`s, so nothing stopped a credential id from
//! being passed where a device id was expected, or an unchecked value from reaching a
//! decision. Each type here is checked once, where the value enters (protobuf conversion,
//! certificate parsing, CLI argument, stored document), and then flows typed.
//!
//! The rules are the ones the system already enforced, not new ones:
//! - [`DeviceId`]: the device's `metadata.name`, a UUID (`uuid::Uuid::parse_str`, so the
//!   hyphenated, simple, braced and `urn:uuid:` forms). The text is kept exactly as given, so
//!   keys and documents written with it do not change.
//! - [`CredentialId`]: 1 to 128 printable ASCII characters without spaces (a UUID for
//!   software keys, `base64url(SHA-256(TPMT_PUBLIC))` for TPM keys; see `dt_attest::tpm`).
//! - [`UserName`] and [`NodeName`]: resource names ([`crate::resource::validate_name`]):
//!   1 to 253 characters of `[A-Za-z0-9._@:-]`, not starting with `.` or `-`.
//!
//! Serde goes through the same constructors (`try_from = "String"`, `into = "String"`), so
//! a document keeps the JSON/YAML shape of a plain string and an invalid id fails to load.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::resource::{MAX_NAME_LEN, validate_name};

/// Longest credential id accepted, in bytes.
pub const MAX_CREDENTIAL_ID_LEN: usize = 128;

/// What is wrong with a device id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    #[error("device id is empty")]
    Empty,
    #[error("device id is not a UUID")]
    NotUuid,
}

/// What is wrong with a credential id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialIdError {
    #[error("credential id is empty")]
    Empty,
    #[error("credential id is {len} bytes, more than the {MAX_CREDENTIAL_ID_LEN} accepted")]
    TooLong { len: usize },
    #[error("credential id contains a space or a character that is not printable ASCII")]
    NotPrintable,
}

impl CredentialIdError {
    /// The rule every credential id follows, as the ceremonies have always reported it.
    pub const RULE: &'static str = "must be 1 to 128 printable ASCII characters without spaces";
}

/// What is wrong with a user or node name (the text is `validate_name`'s).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} is longer than {MAX_NAME_LEN} characters")]
    TooLong { what: &'static str },
    #[error("{what} must not start with '.' or '-'")]
    BadStart { what: &'static str },
    #[error("{what} contains {found:?}; use letters, digits and . _ @ : -")]
    BadChar { what: &'static str, found: char },
}

fn check_name(what: &'static str, s: &str) -> Result<(), NameError> {
    if validate_name(s).is_ok() {
        return Ok(());
    }
    // Same order of checks as `validate_name`, with a typed answer.
    if s.is_empty() {
        return Err(NameError::Empty { what });
    }
    if s.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { what });
    }
    if s.starts_with('.') || s.starts_with('-') {
        return Err(NameError::BadStart { what });
    }
    let found = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | ':' | '-')))
        .unwrap_or('\0');
    Err(NameError::BadChar { what, found })
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $err:ty, $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks `s` and wraps it.
            pub fn parse(s: impl Into<String>) -> Result<Self, $err> {
                let s = s.into();
                let check: fn(&str) -> Result<(), $err> = $check;
                check(&s)?;
                Ok($name(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = $err;
            fn from_str(s: &str) -> Result<Self, $err> {
                $name::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = $err;
            fn try_from(s: String) -> Result<Self, $err> {
                $name::parse(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = $err;
            fn try_from(s: &str) -> Result<Self, $err> {
                $name::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }
    };
}

string_id!(
    /// A device's id: its inventory record's `metadata.name`, a UUID.
    DeviceId,
    DeviceIdError,
    |s| {
        if s.is_empty() {
            return Err(DeviceIdError::Empty);
        }
        uuid::Uuid::parse_str(s)
            .map(|_| ())
            .map_err(|_| DeviceIdError::NotUuid)
    }
);

impl DeviceId {
    /// A fresh id for a new inventory record: a UUIDv7 (RFC 9562; hyphenated, lowercase),
    /// i.e. a millisecond timestamp and 74 random bits. Ids made later sort after earlier
    /// ones (within a process, strictly), so a new device's keys (`/devices/<id>`, its audit
    /// index entries) land at the end of the stores' key order instead of at random pages:
    /// what keeps a large import from becoming a random-write workload. The id says when the
    /// record was made, which its `create_time` says anyway; it is not a secret.
    pub fn fresh() -> DeviceId {
        DeviceId(uuid::Uuid::now_v7().to_string())
    }
}

string_id!(
    /// The id of a device credential: 1 to 128 printable ASCII characters without spaces.
    CredentialId,
    CredentialIdError,
    |s| {
        if s.is_empty() {
            return Err(CredentialIdError::Empty);
        }
        if s.len() > MAX_CREDENTIAL_ID_LEN {
            return Err(CredentialIdError::TooLong { len: s.len() });
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(CredentialIdError::NotPrintable);
        }
        Ok(())
    }
);

impl CredentialId {
    /// A fresh id for a software credential (a random UUID).
    pub fn random() -> CredentialId {
        CredentialId(uuid::Uuid::new_v4().to_string())
    }

    /// The id of a TPM credential: `base64url(SHA-256(TPMT_PUBLIC of the attestation key))`,
    /// no padding (43 characters), the same derivation `dt_attest::tpm::credential_id`
    /// checks at enrollment. Always a valid id.
    pub fn of_tpm_key(tpmt_public: &[u8]) -> CredentialId {
        use base64::Engine as _;
        use sha2::Digest as _;
        CredentialId(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(sha2::Sha256::digest(tpmt_public)),
        )
    }
}

string_id!(
    /// A devtrust user's name: the `metadata.name` of a user resource.
    UserName,
    NameError,
    |s| check_name("user name", s)
);

string_id!(
    /// A node's name: the `metadata.name` of a joined SSH node.
    NodeName,
    NameError,
    |s| check_name("node name", s)
);

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "5f2c6c39-3c4b-4a53-9d0c-3d2f3f0a9b11";

    #[test]
    fn device_ids_are_uuids_kept_as_written() {
        for ok in [
            UUID,
            "5F2C6C39-3C4B-4A53-9D0C-3D2F3F0A9B11",
            "5f2c6c393c4b4a539d0c3d2f3f0a9b11",
        ] {
            let id = DeviceId::parse(ok).unwrap();
            assert_eq!(id.as_str(), ok);
            assert_eq!(id.to_string(), ok);
            assert_eq!(ok.parse::<DeviceId>().unwrap(), id);
        }
        assert_eq!(DeviceId::parse(""), Err(DeviceIdError::Empty));
        for bad in [
            "d",
            "not-a-uuid",
            "5f2c6c39-3c4b-4a53-9d0c-3d2f3f0a9b1",
            " 5f2c",
        ] {
            assert_eq!(DeviceId::parse(bad), Err(DeviceIdError::NotUuid), "{bad}");
        }
        let fresh = DeviceId::fresh();
        assert!(uuid::Uuid::parse_str(fresh.as_str()).is_ok());
        // Time-ordered: each id made after another sorts after it, as text too.
        let ids: Vec<DeviceId> = (0..1000).map(|_| DeviceId::fresh()).collect();
        assert!(fresh.as_str() < ids[0].as_str());
        assert!(ids.windows(2).all(|w| w[0].as_str() < w[1].as_str()));
        // What clients and the MDM sync register gets such ids too, not random (v4) ones.
        let a = crate::device::new_device(crate::device::OsType::Linux, "A");
        let b = crate::device::new_device(crate::device::OsType::Linux, "B");
        assert_eq!(
            uuid::Uuid::parse_str(&a.metadata.name).map(|u| u.get_version_num()),
            Ok(7)
        );
        assert!(a.metadata.name < b.metadata.name);
    }

    #[test]
    fn credential_ids_are_short_printable_ascii() {
        let tpm = "q0vV0m1yG0m4s0V7b0V6Zk0XlYQmK3uX8ZQm5wq8P8E";
        for ok in [UUID, tpm, "c", &"x".repeat(MAX_CREDENTIAL_ID_LEN)] {
            assert_eq!(CredentialId::parse(ok).unwrap().as_str(), ok);
        }
        assert_eq!(CredentialId::parse(""), Err(CredentialIdError::Empty));
        assert_eq!(
            CredentialId::parse("x".repeat(129)),
            Err(CredentialIdError::TooLong { len: 129 })
        );
        for bad in ["a b", "tab\there", "é", "nul\0"] {
            assert_eq!(
                CredentialId::parse(bad),
                Err(CredentialIdError::NotPrintable),
                "{bad:?}"
            );
        }
        assert!(uuid::Uuid::parse_str(CredentialId::random().as_str()).is_ok());
        let tpm_id = CredentialId::of_tpm_key(b"tpmt public");
        assert_eq!(tpm_id.as_str().len(), 43);
        assert_eq!(CredentialId::parse(tpm_id.as_str()), Ok(tpm_id));
    }

    #[test]
    fn names_follow_the_resource_name_rules() {
        for ok in ["alice", "alice@example.com", "node-1.dc:a_b", "A"] {
            assert_eq!(UserName::parse(ok).unwrap().as_str(), ok);
            assert_eq!(NodeName::parse(ok).unwrap().as_str(), ok);
        }
        assert_eq!(
            UserName::parse(""),
            Err(NameError::Empty { what: "user name" })
        );
        assert_eq!(
            NodeName::parse("n".repeat(MAX_NAME_LEN + 1)),
            Err(NameError::TooLong { what: "node name" })
        );
        for bad in [".hidden", "-flag"] {
            assert_eq!(
                UserName::parse(bad),
                Err(NameError::BadStart { what: "user name" })
            );
        }
        assert_eq!(
            UserName::parse("al ice"),
            Err(NameError::BadChar {
                what: "user name",
                found: ' '
            })
        );
        assert_eq!(
            NodeName::parse("a/b"),
            Err(NameError::BadChar {
                what: "node name",
                found: '/'
            })
        );
        // The typed check never disagrees with the resource name check.
        for s in ["", ".a", "-a", "a b", "a/b", "ok", &"n".repeat(300)] {
            assert_eq!(
                UserName::parse(s).is_ok(),
                validate_name(s).is_ok(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn serde_keeps_the_plain_string_shape_and_checks_on_the_way_in() {
        let id = DeviceId::parse(UUID).unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{UUID}\""));
        let back: DeviceId = serde_json::from_str(&format!("\"{UUID}\"")).unwrap();
        assert_eq!(back, id);
        let err = serde_json::from_str::<DeviceId>("\"nope\"").unwrap_err();
        assert!(err.to_string().contains("device id is not a UUID"), "{err}");

        let cred: CredentialId = serde_json::from_str("\"abc\"").unwrap();
        assert_eq!(cred, "abc");
        let err = serde_json::from_str::<CredentialId>("\"a b\"").unwrap_err();
        assert!(err.to_string().contains("not printable"), "{err}");

        let user: UserName = serde_saphyr::from_str("alice\n").unwrap();
        assert_eq!(user.as_str(), "alice");
        assert!(serde_saphyr::from_str::<NodeName>("'-x'\n").is_err());
    }

    #[test]
    fn ids_compare_with_plain_strings_and_index_maps_by_str() {
        let id = CredentialId::parse("abc").unwrap();
        assert_eq!(id, "abc");
        assert_eq!("abc", id);
        assert_eq!(id, String::from("abc"));
        let mut m = std::collections::BTreeMap::new();
        m.insert(id.clone(), 1);
        assert_eq!(m.get("abc"), Some(&1));
        assert_eq!(format!("{id:?}"), "\"abc\"");
    }
}
