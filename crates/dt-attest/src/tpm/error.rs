//! Errors of TPM evidence checks, grouped by who is at fault:
//!
//! - [`StructureError`]: the device sent bytes that are not a valid TPM structure.
//! - [`PeerMisbehaved`]: well-formed evidence that does not prove what it claims (wrong
//!   activation secret, bad signature, stale nonce, PCR values that do not match the quote).
//! - [`PolicyDenied`]: valid evidence the cluster's settings refuse (EK certificate required or
//!   not from an allowed CA).
//! - [`Unsupported`]: valid TPM structures using algorithms this server does not implement.
//! - [`TpmError::Internal`]: a failure on our side (randomness, a crypto backend refusing input
//!   we built).
//!
//! Messages are lowercase and say what to do next; none contains a secret.

use thiserror::Error;

/// Which structure a [`StructureError`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Structure {
    /// `TPM2B_PUBLIC` / `TPMT_PUBLIC`.
    Public,
    /// `TPMS_ATTEST` / `TPM2B_ATTEST`.
    Attest,
    /// `TPMT_SIGNATURE`.
    Signature,
    /// A structure this crate builds (only fails when a size does not fit a `u16`).
    Output,
}

impl std::fmt::Display for Structure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Structure::Public => "tpm public area",
            Structure::Attest => "tpm attestation structure",
            Structure::Signature => "tpm signature",
            Structure::Output => "tpm output structure",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum StructureErrorKind {
    #[error("{field} is truncated: needs {needed} bytes, {remaining} left")]
    Truncated {
        field: &'static str,
        needed: usize,
        remaining: usize,
    },
    #[error("{field} is {size} bytes, more than the {max} the structure allows")]
    TooLarge {
        field: &'static str,
        size: usize,
        max: usize,
    },
    #[error("{0} unexpected bytes after the end of the structure")]
    TrailingBytes(usize),
    #[error("{field} has an invalid value 0x{value:x}")]
    BadValue { field: &'static str, value: u32 },
    #[error("{0}")]
    Inconsistent(&'static str),
}

/// Bytes that are not a valid encoding of the structure they claim to be.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("malformed {structure}: {kind}")]
pub struct StructureError {
    pub structure: Structure,
    pub kind: StructureErrorKind,
}

/// Well-formed evidence that does not prove what it claims.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PeerMisbehaved {
    #[error(
        "the attestation key lacks required attributes ({0}): create it as a restricted, fixed, TPM-generated signing key"
    )]
    AkAttributes(&'static str),
    #[error(
        "the endorsement key lacks required attributes ({0}): use the standard endorsement key template"
    )]
    EkAttributes(&'static str),
    #[error(
        "the activated credential does not match the challenge: the attestation key is not in the same TPM as the endorsement key"
    )]
    WrongActivationSecret,
    #[error("the quote signature does not verify with the attestation key")]
    BadQuoteSignature,
    #[error("the quote signature scheme does not match the attestation key")]
    SignatureSchemeMismatch,
    #[error(
        "the quote is not over this challenge's nonce (replayed or stale quote): retry the ceremony"
    )]
    NonceMismatch,
    #[error("the reported pcr values do not match the quoted pcr digest")]
    PcrDigestMismatch,
    #[error("the reported pcr values do not match the quoted pcr selection")]
    PcrSelectionMismatch,
    #[error("the quote does not cover the sha-256 pcr bank")]
    PcrBankMissing,
    #[error("the endorsement key certificate is not valid der: {0}")]
    EkCertMalformed(String),
    #[error("the endorsement key certificate does not certify this endorsement key")]
    EkCertKeyMismatch,
}

/// Valid evidence that the cluster's settings refuse.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PolicyDenied {
    #[error(
        "an endorsement key certificate is required by ekcert_allowed_cas, but the device sent only an endorsement key: use a TPM with an ek certificate or clear ekcert_allowed_cas"
    )]
    EkCertRequired,
    #[error(
        "the endorsement key certificate does not chain to any ca in ekcert_allowed_cas ({0}): add the issuing ca of this TPM's ek certificates"
    )]
    EkCertUntrusted(String),
    #[error(
        "the endorsement key certificate is refused: {0}; this TPM's ek certificate can't be trusted, use another TPM or ask an admin"
    )]
    EkCertRefused(String),
}

/// Valid structures using algorithms this server does not implement.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Unsupported {
    #[error("unsupported {what} 0x{value:04x}")]
    Algorithm { what: &'static str, value: u16 },
    #[error("unsupported key size {0} bits")]
    KeySize(u16),
    #[error("unsupported endorsement key certificate key type")]
    EkCertKeyType,
}

/// Everything the TPM checks in this crate can fail with.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum TpmError {
    #[error(transparent)]
    Malformed(#[from] StructureError),
    #[error(transparent)]
    PeerMisbehaved(#[from] PeerMisbehaved),
    #[error(transparent)]
    PolicyDenied(#[from] PolicyDenied),
    #[error(transparent)]
    Unsupported(#[from] Unsupported),
    /// A misconfigured allow-list entry (only when it bypassed [`super::validate_allowed_ca_pem`]).
    #[error("invalid ekcert_allowed_cas entry: {0}")]
    Config(String),
    #[error("internal error in tpm verification: {0}")]
    Internal(&'static str),
}
