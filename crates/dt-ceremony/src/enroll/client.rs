//! Device enrollment, client half (what `dtsh device enroll` drives).
//!
//! ```text
//! dtsh                                                         devtrust auth
//!   start() ─ EnrollInit { token, credential_id, device_data, payload } ──▶
//!   ExpectChallenge    ◀── EnrollChallenge
//!        prover(ProofRequest) ─ EnrollChallengeResponse ──▶
//!   ExpectSuccess      ◀── EnrollSuccess { device }
//! ```
//!
//! The client refuses to answer a challenge of the wrong kind or size (a P-256 credential
//! signs only a 32-byte challenge), and checks that the device the server says it enrolled
//! is this device with this credential.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use dt_types::device::{DeviceCollectedData, EnrollStatus};
use dt_types::resource::Device;

use crate::error::{ClientError, ServerMisbehaved};
use crate::limits::{CHALLENGE_LEN, TPM_NONCE_LEN};
use crate::messages::{
    EnrollChallenge, EnrollChallengeResponse, EnrollInit, EnrollPayload, EnrollSuccess,
};
use crate::proof::{Proof, ProofRequest, ProverError};
use crate::token::EnrollToken;

/// Builds the `EnrollInit` to send and the state waiting for the server's challenge.
pub fn start(
    token: EnrollToken,
    credential_id: String,
    device_data: DeviceCollectedData,
    payload: EnrollPayload,
) -> (ExpectChallenge, EnrollInit) {
    let init = EnrollInit {
        token,
        credential_id,
        device_data,
        payload,
    };
    let state = ExpectChallenge {
        credential_id: init.credential_id.clone(),
        device_data: init.device_data.clone(),
        payload: init.payload.clone(),
    };
    (state, init)
}

/// Waiting for `EnrollChallenge`.
#[derive(Debug)]
pub struct ExpectChallenge {
    credential_id: String,
    device_data: DeviceCollectedData,
    payload: EnrollPayload,
}

/// Waiting for `EnrollSuccess`.
#[derive(Debug)]
pub struct ExpectSuccess {
    credential_id: String,
    device_data: DeviceCollectedData,
    payload: EnrollPayload,
}

impl ExpectChallenge {
    /// Answers the challenge with the device credential (`prover`), returning the response
    /// to send.
    pub fn handle(
        self,
        challenge: EnrollChallenge,
        prover: impl FnOnce(ProofRequest<'_>) -> Result<Proof, ProverError>,
    ) -> Result<(ExpectSuccess, EnrollChallengeResponse), ClientError> {
        let response = match (&self.payload, &challenge) {
            (EnrollPayload::P256 { .. }, EnrollChallenge::P256 { challenge }) => {
                if challenge.len() != CHALLENGE_LEN {
                    return Err(ServerMisbehaved::WrongChallengeLength {
                        len: challenge.len(),
                        expected: CHALLENGE_LEN,
                    }
                    .into());
                }
                let request = ProofRequest::P256Challenge(challenge);
                match prove(prover, request)? {
                    Proof::P256Signature(signature_der) => {
                        EnrollChallengeResponse::P256 { signature_der }
                    }
                    other => return Err(wrong_proof(request, &other)),
                }
            }
            (EnrollPayload::Tpm(_), EnrollChallenge::Tpm(tpm)) => {
                if tpm.attestation_nonce.len() != TPM_NONCE_LEN {
                    return Err(ServerMisbehaved::WrongChallengeLength {
                        len: tpm.attestation_nonce.len(),
                        expected: TPM_NONCE_LEN,
                    }
                    .into());
                }
                let request = ProofRequest::TpmEnroll(tpm);
                match prove(prover, request)? {
                    Proof::TpmEnroll(resp) => EnrollChallengeResponse::Tpm(resp),
                    other => return Err(wrong_proof(request, &other)),
                }
            }
            (payload, challenge) => {
                return Err(ServerMisbehaved::WrongChallengeKind {
                    expected: payload.kind(),
                    got: match challenge {
                        EnrollChallenge::P256 { .. } => "p256",
                        EnrollChallenge::Tpm(_) => "tpm",
                    },
                }
                .into());
            }
        };
        Ok((
            ExpectSuccess {
                credential_id: self.credential_id,
                device_data: self.device_data,
                payload: self.payload,
            },
            response,
        ))
    }
}

impl ExpectSuccess {
    /// Checks the server enrolled this device with this credential; returns the record.
    pub fn handle(self, success: EnrollSuccess) -> Result<Device, ClientError> {
        let spec = &success.device.spec;
        if spec.enroll_status != EnrollStatus::Enrolled {
            return Err(ServerMisbehaved::SuccessMismatch("device is not marked enrolled").into());
        }
        if Some(spec.os_type) != self.device_data.os_type
            || spec.asset_tag != self.device_data.serial_number
        {
            return Err(ServerMisbehaved::SuccessMismatch("it names another device").into());
        }
        let Some(cred) = &spec.credential else {
            return Err(ServerMisbehaved::SuccessMismatch("device has no credential").into());
        };
        if cred.id != self.credential_id {
            return Err(ServerMisbehaved::SuccessMismatch("it names another credential").into());
        }
        if let EnrollPayload::P256 { public_key_der, .. } = &self.payload
            && STANDARD.decode(&cred.public_key_der).ok().as_deref() != Some(&public_key_der[..])
        {
            return Err(ServerMisbehaved::SuccessMismatch("it names another public key").into());
        }
        Ok(success.device)
    }
}

pub(crate) fn prove(
    prover: impl FnOnce(ProofRequest<'_>) -> Result<Proof, ProverError>,
    request: ProofRequest<'_>,
) -> Result<Proof, ClientError> {
    prover(request).map_err(|source| ClientError::Prover {
        request: request.kind(),
        source,
    })
}

pub(crate) fn wrong_proof(request: ProofRequest<'_>, got: &Proof) -> ClientError {
    ClientError::WrongProofKind {
        request: request.kind(),
        got: match got {
            Proof::P256Signature(_) => "p256 signature",
            Proof::TpmEnroll(_) => "tpm enrollment",
            Proof::TpmAuthenticate(_) => "tpm authentication",
        },
    }
}
