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
//!
//! Device web authentication (`dtsh device web-auth`, [`start_web`]) is the same exchange
//! with the web login's token in `AuthenticateInit`; it ends with a
//! `DeviceConfirmationToken` for the browser instead of certificates.

use dt_types::device::{AttestationType, DeviceCollectedData};

use crate::enroll::client::{prove, wrong_proof};
use crate::error::{ClientError, ServerMisbehaved};
use crate::limits::{CHALLENGE_LEN, MAX_CERTIFICATE_LEN, TPM_NONCE_LEN};
use crate::messages::{
    AuthenticateChallenge, AuthenticateChallengeResponse, AuthenticateInit, AuthenticateSuccess,
    DeviceConfirmationToken, DeviceWebToken, UserCertificates,
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
        web: false,
    };
    Ok((
        state,
        AuthenticateInit {
            user_certificates,
            credential_id,
            device_data,
            device_web_token: None,
        },
    ))
}

/// Like [`start`], for device web authentication: the init carries the web login's token
/// and the ceremony must end with a confirmation token ([`ExpectSuccess::handle_web`]).
pub fn start_web(
    user_certificates: UserCertificates,
    credential_id: String,
    attestation: AttestationType,
    device_data: DeviceCollectedData,
    web_token: DeviceWebToken,
) -> Result<(ExpectChallenge, AuthenticateInit), ClientError> {
    let (mut state, mut init) = start(user_certificates, credential_id, attestation, device_data)?;
    state.web = true;
    init.device_web_token = Some(web_token);
    Ok((state, init))
}

/// Waiting for `AuthenticateChallenge`.
#[derive(Debug)]
pub struct ExpectChallenge {
    kind: CredentialKind,
    sent_ssh: bool,
    web: bool,
}

/// Waiting for `AuthenticateSuccess`.
#[derive(Debug)]
pub struct ExpectSuccess {
    sent_ssh: bool,
    web: bool,
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
                web: self.web,
            },
            response,
        ))
    }
}

impl ExpectSuccess {
    /// Returns the augmented certificates. The caller (dt-client) checks them with dt-ca
    /// (same keys, device extensions present) before replacing the ones it holds.
    pub fn handle(self, success: AuthenticateSuccess) -> Result<UserCertificates, ClientError> {
        if self.web {
            return Err(ServerMisbehaved::SuccessMismatch(
                "certificates instead of a device web confirmation",
            )
            .into());
        }
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

    /// Device web authentication: returns the confirmation token for the browser.
    pub fn handle_web(
        self,
        confirmation: DeviceConfirmationToken,
    ) -> Result<DeviceConfirmationToken, ClientError> {
        if !self.web {
            return Err(ServerMisbehaved::SuccessMismatch(
                "a device web confirmation that was not asked for",
            )
            .into());
        }
        if confirmation.id.is_empty() || confirmation.token.is_empty() {
            return Err(ServerMisbehaved::SuccessMismatch("an empty confirmation token").into());
        }
        Ok(confirmation)
    }
}
