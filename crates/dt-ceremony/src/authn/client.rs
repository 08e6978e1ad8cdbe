//! Device authentication, client half (what `dtsh login` and `dtsh device authenticate`
//! drive, over the mTLS connection of the user's current certificates).
//!
//! ```text
//! dtsh                                                          devtrust auth
//!   start() ─ AuthenticateInit { user_certificates, credential_id, device_data } ──▶
//!   ExpectChallenge    ◀── AuthenticateChallenge
//!        prover(ProofRequest) ─ AuthenticateChallengeResponse ──▶
//!   ExpectSuccess      ◀── AuthenticateSuccess { augmented certificates }
//! ```

use dt_types::device::{AttestationType, DeviceCollectedData};

use crate::enroll::client::{prove, wrong_proof};
use crate::error::{ClientError, ServerMisbehaved};
use crate::limits::{CHALLENGE_LEN, MAX_CERTIFICATE_LEN, TPM_NONCE_LEN};
use crate::messages::{
    AuthenticateChallenge, AuthenticateChallengeResponse, AuthenticateInit, AuthenticateSuccess,
    UserCertificates,
};
use crate::proof::{Proof, ProofRequest, ProverError};

/// Which kind of proof the local credential gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CredentialKind {
    P256,
    Tpm,
}

impl CredentialKind {
    fn of(attestation: AttestationType) -> Self {
        match attestation {
            AttestationType::Software | AttestationType::SecureEnclave => CredentialKind::P256,
            AttestationType::TpmEkpub
            | AttestationType::TpmEkcert
            | AttestationType::TpmEkcertTrusted => CredentialKind::Tpm,
        }
    }
    fn name(self) -> &'static str {
        match self {
            CredentialKind::P256 => "p256",
            CredentialKind::Tpm => "tpm",
        }
    }
}

/// Builds the `AuthenticateInit` and the state waiting for the challenge. `attestation` is
/// the local credential's type (it decides which challenge kind is acceptable).
pub fn start(
    user_certificates: UserCertificates,
    credential_id: String,
    attestation: AttestationType,
    device_data: DeviceCollectedData,
) -> Result<(ExpectChallenge, AuthenticateInit), ClientError> {
    if user_certificates.x509_der.len() > MAX_CERTIFICATE_LEN {
        return Err(ClientError::Oversized {
            field: "x509 certificate",
            len: user_certificates.x509_der.len(),
            max: MAX_CERTIFICATE_LEN,
        });
    }
    let state = ExpectChallenge {
        kind: CredentialKind::of(attestation),
        sent_ssh: user_certificates.ssh_authorized_key.is_some(),
    };
    Ok((
        state,
        AuthenticateInit {
            user_certificates,
            credential_id,
            device_data,
        },
    ))
}

/// Waiting for `AuthenticateChallenge`.
#[derive(Debug)]
pub struct ExpectChallenge {
    kind: CredentialKind,
    sent_ssh: bool,
}

/// Waiting for `AuthenticateSuccess`.
#[derive(Debug)]
pub struct ExpectSuccess {
    sent_ssh: bool,
}

impl ExpectChallenge {
    pub fn handle(
        self,
        challenge: AuthenticateChallenge,
        prover: impl FnOnce(ProofRequest<'_>) -> Result<Proof, ProverError>,
    ) -> Result<(ExpectSuccess, AuthenticateChallengeResponse), ClientError> {
        let response = match (self.kind, &challenge) {
            (CredentialKind::P256, AuthenticateChallenge::P256 { challenge }) => {
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
                        AuthenticateChallengeResponse::P256 { signature_der }
                    }
                    other => return Err(wrong_proof(request, &other)),
                }
            }
            (CredentialKind::Tpm, AuthenticateChallenge::Tpm(tpm)) => {
                if tpm.attestation_nonce.len() != TPM_NONCE_LEN {
                    return Err(ServerMisbehaved::WrongChallengeLength {
                        len: tpm.attestation_nonce.len(),
                        expected: TPM_NONCE_LEN,
                    }
                    .into());
                }
                let request = ProofRequest::TpmAuthenticate(tpm);
                match prove(prover, request)? {
                    Proof::TpmAuthenticate(resp) => AuthenticateChallengeResponse::Tpm(resp),
                    other => return Err(wrong_proof(request, &other)),
                }
            }
            (kind, challenge) => {
                return Err(ServerMisbehaved::WrongChallengeKind {
                    expected: kind.name(),
                    got: match challenge {
                        AuthenticateChallenge::P256 { .. } => "p256",
                        AuthenticateChallenge::Tpm(_) => "tpm",
                    },
                }
                .into());
            }
        };
        Ok((
            ExpectSuccess {
                sent_ssh: self.sent_ssh,
            },
            response,
        ))
    }
}

impl ExpectSuccess {
    /// Returns the augmented certificates. The caller (dt-client) checks them with dt-ca
    /// (same keys, device extensions present) before replacing the ones it holds.
    pub fn handle(self, success: AuthenticateSuccess) -> Result<UserCertificates, ClientError> {
        let certs = success.user_certificates;
        if certs.x509_der.is_empty() {
            return Err(ServerMisbehaved::SuccessMismatch("no x509 certificate").into());
        }
        if certs.ssh_authorized_key.is_some() != self.sent_ssh {
            return Err(ServerMisbehaved::SuccessMismatch(
                "the ssh certificate is missing or unasked for",
            )
            .into());
        }
        Ok(certs)
    }
}
