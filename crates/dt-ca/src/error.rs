//! The one error type of this crate, grouped by who is at fault.

use time::OffsetDateTime;

use crate::CaKind;

/// Why issuing, augmenting, parsing or verifying a certificate failed.
///
/// Variants are grouped by blame:
/// - **the presented material** is bad: [`Malformed`](Self::Malformed),
///   [`PartialDevice`](Self::PartialDevice), [`UnsupportedKey`](Self::UnsupportedKey);
/// - **trust**: [`NotIssuedByCa`](Self::NotIssuedByCa), [`Expired`](Self::Expired),
///   [`NotYetValid`](Self::NotYetValid), [`WrongUsage`](Self::WrongUsage);
/// - **the request** does not fit the certificates: [`AlreadyAugmented`](Self::AlreadyAugmented),
///   [`IdentityMismatch`](Self::IdentityMismatch);
/// - **the caller** (a bug or bad input on our side): [`InvalidIdentity`](Self::InvalidIdentity),
///   [`WrongCaKind`](Self::WrongCaKind), [`InvalidStoredCa`](Self::InvalidStoredCa);
/// - **the platform**: [`Crypto`](Self::Crypto).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// Bytes that should be a certificate, key or PEM block are not a valid one.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being read ("x509 certificate", "ssh certificate", "pkcs#8 key", ...).
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The certificate's name (SSH key id, X.509 Subject CN) is not a user name: no user can
    /// have it, so the certificate names nobody (fail closed).
    #[error("certificate carries an invalid user name: {0}; refusing it")]
    UserName(#[source] dt_types::NameError),
    /// The certificate's device id is not one (the inventory's ids are UUIDs).
    #[error("certificate carries an invalid device id: {0}; refusing it")]
    DeviceId(#[source] dt_types::DeviceIdError),
    /// The certificate's device credential id is not one.
    #[error("certificate carries an invalid device credential id: {0}; refusing it")]
    CredentialId(#[source] dt_types::CredentialIdError),
    /// Some, but not all, of the device attributes are present: the certificate claims a device
    /// without the full proof. Never treated as "no device".
    #[error("certificate carries a partial device identity (missing {missing}); refusing it")]
    PartialDevice {
        /// The first missing attribute or extension.
        missing: &'static str,
    },
    /// A key that is not ECDSA P-256.
    #[error("unsupported key: {0}; devtrust uses ecdsa p-256 keys only")]
    UnsupportedKey(String),

    /// The signature does not verify with this CA's key, or the certificate names another issuer.
    #[error("certificate was not issued by this {0} ca")]
    NotIssuedByCa(CaKind),
    /// The certificate's validity ended before `now`.
    #[error("certificate expired at {not_after}; log in again")]
    Expired {
        /// End of validity.
        not_after: OffsetDateTime,
    },
    /// The certificate's validity starts after `now` (clock skew?).
    #[error("certificate is not valid before {not_before}; check the clocks")]
    NotYetValid {
        /// Start of validity.
        not_before: OffsetDateTime,
    },
    /// The certificate is of the wrong type for this use (a CA certificate, a host certificate
    /// where a user certificate is expected, a missing extended key usage, ...).
    #[error("certificate cannot be used here: {0}")]
    WrongUsage(String),

    /// Augmentation was asked for certificates that already carry a device.
    #[error("certificates already carry a device identity; log in again to get fresh ones")]
    AlreadyAugmented,
    /// The SSH and X.509 certificates given together describe different subjects.
    #[error("the ssh and x509 certificates do not match: {0}")]
    IdentityMismatch(String),

    /// The identity given for issuance cannot be expressed safely in a certificate.
    #[error("invalid identity for issuance: {0}")]
    InvalidIdentity(String),
    /// An operation was asked of the wrong CA (e.g. a user certificate from the host CA).
    #[error("{operation} needs the {expected} ca, but this is the {actual} ca")]
    WrongCaKind {
        /// What was asked.
        operation: &'static str,
        /// The CA kind the operation needs.
        expected: CaKind,
        /// This CA's kind.
        actual: CaKind,
    },
    /// A stored CA does not load: key and certificate disagree, or the name does not match.
    #[error("stored ca is invalid: {0}")]
    InvalidStoredCa(String),

    /// Random number generation or signing failed in the crypto library.
    #[error("crypto failure: {0}")]
    Crypto(&'static str),
}

impl CaError {
    pub(crate) fn malformed(what: &'static str, reason: impl Into<String>) -> Self {
        Self::Malformed {
            what,
            reason: reason.into(),
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = CaError> = std::result::Result<T, E>;
