//! What the client halves ask a device credential for, and what it answers.
//!
//! The client halves take a closure `FnOnce(ProofRequest) -> Result<Proof, ProverError>`
//! instead of a key type, so this crate never depends on `dt-device` (or on a TPM library):
//! `dt-device`'s `DeviceKeys` answers these requests for software, Secure Enclave and TPM
//! credentials alike. A P-256 credential answers [`ProofRequest::P256Challenge`] with a
//! signature; a TPM credential answers the TPM requests with an activation and quotes.

use crate::tpm::{
    TpmAuthenticateChallenge, TpmAuthenticateChallengeResponse, TpmEnrollChallenge,
    TpmEnrollChallengeResponse,
};

/// A challenge for the device credential, whichever ceremony asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProofRequest<'a> {
    /// Sign exactly these bytes with ECDSA-P256-SHA256 (ASN.1 DER signature).
    P256Challenge(&'a [u8]),
    /// Activate the credential sealed to the EK and quote over the nonce (enrollment).
    TpmEnroll(&'a TpmEnrollChallenge),
    /// Quote over the nonce with the enrolled AK (authentication).
    TpmAuthenticate(&'a TpmAuthenticateChallenge),
}

impl ProofRequest<'_> {
    pub fn kind(&self) -> &'static str {
        match self {
            ProofRequest::P256Challenge(_) => "p256 challenge",
            ProofRequest::TpmEnroll(_) => "tpm enrollment challenge",
            ProofRequest::TpmAuthenticate(_) => "tpm authentication challenge",
        }
    }
}

/// The device's answer to a [`ProofRequest`]; it must be of the matching kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Proof {
    P256Signature(Vec<u8>),
    TpmEnroll(TpmEnrollChallengeResponse),
    TpmAuthenticate(TpmAuthenticateChallengeResponse),
}

/// Whatever went wrong inside the device's key store; reported through
/// [`crate::ClientError::Prover`].
pub type ProverError = Box<dyn std::error::Error + Send + Sync>;
