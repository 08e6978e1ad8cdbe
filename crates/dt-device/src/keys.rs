//! The device credential abstraction: one trait every key store implements, so the
//! ceremonies don't care whether the key lives in a file, a Secure Enclave or a TPM.
//!
//! # Design
//!
//! A P-256 credential (software file, macOS Secure Enclave, Windows TBS/CNG key) proves
//! itself by signing a challenge; a TPM credential proves itself differently — it activates
//! a credential sealed to its EK and quotes over a nonce. So the trait's one required proof
//! method for P-256 stores is [`DeviceKeys::sign_challenge`], and the ceremony-level entry
//! point is [`DeviceKeys::prove`], which answers a `dt_ceremony::ProofRequest`:
//!
//! - the default `prove` answers `P256Challenge` with `sign_challenge` and refuses the TPM
//!   requests, so a P-256 store implements four small methods and is done;
//! - a TPM store overrides `prove` (activation + quote for `TpmEnroll`, quote for
//!   `TpmAuthenticate`) and [`DeviceKeys::enroll_payload`] (EK + AK parameters instead of
//!   a public key), and answers `sign_challenge` with
//!   [`DeviceError::UnsupportedProof`]: a restricted AK must not sign arbitrary bytes.
//!
//! The client ceremonies take a closure; [`prover`] turns any `DeviceKeys` into one.
//!
//! Only the software store exists in this crate (plus the TPM store behind the `tpm`
//! feature); Secure Enclave and TBS stores slot in as further implementations on their
//! platforms.

use dt_ceremony::messages::{EnrollPayload, P256KeyStorage};
use dt_ceremony::proof::{Proof, ProofRequest, ProverError};
use dt_types::CredentialId;
use dt_types::device::AttestationType;

use crate::error::DeviceError;

/// What identifies a device credential to the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialInfo {
    /// The credential id the server stores (a UUID for software keys, derived from the
    /// attestation key for TPM ones).
    pub id: CredentialId,
    /// PKIX (SPKI) DER of the P-256 public key; empty for TPM credentials.
    pub public_key_der: Vec<u8>,
    pub attestation_type: AttestationType,
}

/// A store holding (at most) one device credential.
pub trait DeviceKeys {
    /// The existing credential, if any.
    fn credential(&self) -> Result<Option<CredentialInfo>, DeviceError>;

    /// Creates the credential; refuses if one exists.
    fn create_credential(&self) -> Result<CredentialInfo, DeviceError>;

    /// ECDSA-P256-SHA256 over exactly `challenge`, ASN.1 DER.
    fn sign_challenge(&self, challenge: &[u8]) -> Result<Vec<u8>, DeviceError>;

    /// The existing credential, or a new one; `true` when it was just created.
    fn credential_or_create(&self) -> Result<(CredentialInfo, bool), DeviceError> {
        match self.credential()? {
            Some(c) => Ok((c, false)),
            None => Ok((self.create_credential()?, true)),
        }
    }

    /// What `EnrollInit` carries for this credential.
    fn enroll_payload(&self, credential: &CredentialInfo) -> Result<EnrollPayload, DeviceError> {
        let storage = match credential.attestation_type {
            AttestationType::Software => P256KeyStorage::Software,
            AttestationType::SecureEnclave => P256KeyStorage::SecureEnclave,
            AttestationType::TpmEkpub
            | AttestationType::TpmEkcert
            | AttestationType::TpmEkcertTrusted => {
                return Err(DeviceError::UnsupportedProof("tpm enrollment payload"));
            }
        };
        Ok(EnrollPayload::P256 {
            public_key_der: credential.public_key_der.clone(),
            storage,
        })
    }

    /// Answers a ceremony's challenge.
    fn prove(&self, request: ProofRequest<'_>) -> Result<Proof, DeviceError> {
        match request {
            ProofRequest::P256Challenge(challenge) => {
                Ok(Proof::P256Signature(self.sign_challenge(challenge)?))
            }
            ProofRequest::TpmEnroll(_) | ProofRequest::TpmAuthenticate(_) => {
                Err(DeviceError::UnsupportedProof(request.kind()))
            }
        }
    }
}

/// The closure the `dt_ceremony` client halves take.
pub fn prover<K: DeviceKeys + ?Sized>(
    keys: &K,
) -> impl FnOnce(ProofRequest<'_>) -> Result<Proof, ProverError> + '_ {
    move |request| keys.prove(request).map_err(|e| Box::new(e) as ProverError)
}
