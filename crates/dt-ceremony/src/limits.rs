//! Sizes and deadlines every ceremony enforces. A device can't make the server store or
//! parse more than these, nor hold a ceremony open longer.

use dt_types::{CredentialId, CredentialIdError};
use time::Duration;

/// Bytes of the P-256 challenge (DESIGN.md §4).
pub const CHALLENGE_LEN: usize = 32;
/// Bytes of the TPM attestation nonce (DESIGN.md §4; a SHA-1-sized nonce fits every TPM's
/// `TPM2B_DATA` qualifying data).
pub const TPM_NONCE_LEN: usize = dt_attest::tpm::NONCE_LEN;

/// Longest credential id a device may choose (ours are UUIDs, 36 bytes, or TPM key
/// digests, 43); the rule itself is [`dt_types::CredentialId`]'s.
pub const MAX_CREDENTIAL_ID_LEN: usize = dt_types::ids::MAX_CREDENTIAL_ID_LEN;
/// Largest public key accepted at enrollment (a P-256 SPKI is 91 bytes).
pub const MAX_PUBLIC_KEY_LEN: usize = dt_attest::p256::MAX_SPKI_LEN;
/// Largest P-256 signature accepted (a DER ECDSA-P256 signature is at most 72 bytes).
pub const MAX_SIGNATURE_LEN: usize = dt_attest::p256::MAX_SIGNATURE_LEN;
/// Largest enrollment token accepted (ours are 43 characters).
pub const MAX_TOKEN_LEN: usize = 128;
/// Largest certificate (X.509 DER or OpenSSH text) accepted in an authentication.
pub const MAX_CERTIFICATE_LEN: usize = 16 * 1024;
/// Largest single TPM structure (EK certificate, TPM2B_PUBLIC, quote, signature...).
pub const MAX_TPM_BLOB_LEN: usize = 8 * 1024;
/// Largest TPM event log accepted.
pub const MAX_TPM_EVENT_LOG_LEN: usize = 512 * 1024;
/// Most quotes or PCR values a TPM platform report may carry.
pub const MAX_TPM_ITEMS: usize = 64;

/// Largest encoded ceremony message (protobuf) a driver reads. The largest message is a TPM
/// challenge response: an event log at its limit, plus a solution, a quote and its PCRs; the
/// other messages are far smaller. Derived from the field limits above, so raising one of
/// them raises this too, and the wire never refuses what the state machines would accept.
pub const MAX_CEREMONY_MESSAGE_LEN: usize = MAX_TPM_EVENT_LOG_LEN
    + 3 * MAX_TPM_BLOB_LEN // solution, quote.attest, quote.signature
    + MAX_TPM_ITEMS * (64 + 16) // PCR digests and their framing
    + 4 * 1024; // tags, lengths and nested message framing

// Every Init fits as well: two certificates, a TPM payload, the collected data.
const _: () =
    assert!(2 * MAX_CERTIFICATE_LEN + 3 * MAX_TPM_BLOB_LEN + 16 * 1024 < MAX_CEREMONY_MESSAGE_LEN);

/// The first message must arrive within this long after the stream opens (DESIGN.md §4).
pub const FIRST_MESSAGE_TIMEOUT: Duration = Duration::seconds(10);
/// The whole ceremony must finish within this long (DESIGN.md §4).
pub const CEREMONY_TIMEOUT: Duration = Duration::seconds(60);

/// Checks a byte field against its limit.
pub(crate) fn check_len(
    field: &'static str,
    len: usize,
    max: usize,
) -> Result<(), crate::error::PeerMisbehaved> {
    if len > max {
        return Err(crate::error::PeerMisbehaved::OversizedField { field, len, max });
    }
    Ok(())
}

/// Credential ids: 1..=MAX_CREDENTIAL_ID_LEN printable ASCII characters, no whitespace.
///
/// The Init messages carry the id as the device sent it; the state machines parse it here,
/// after judging the token, so a malformed id still spends a live token.
pub fn parse_credential_id(id: &str) -> Result<CredentialId, crate::error::PeerMisbehaved> {
    check_len("credential_id", id.len(), MAX_CREDENTIAL_ID_LEN)?;
    CredentialId::parse(id).map_err(|e| match e {
        CredentialIdError::TooLong { len } => crate::error::PeerMisbehaved::OversizedField {
            field: "credential_id",
            len,
            max: MAX_CREDENTIAL_ID_LEN,
        },
        CredentialIdError::Empty | CredentialIdError::NotPrintable => {
            crate::error::PeerMisbehaved::InvalidField {
                field: "credential_id",
                why: CredentialIdError::RULE.into(),
            }
        }
    })
}
