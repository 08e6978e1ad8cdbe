//! Device enrollment: a registered device proves it holds a credential and the server
//! records that credential as the device's (DESIGN.md §4).
//!
//! ```text
//! dtsh (client::ExpectChallenge…)                      devtrust auth (server::Expect…)
//!   EnrollInit { token, credential_id, device_data, payload } ──▶ ExpectInit
//!        token spent here, whatever happens next ─────────────┘  (TokenDisposition)
//!                              ◀── EnrollChallenge { 32-byte challenge | TPM credential + nonce }
//!   EnrollChallengeResponse { signature | activation + quotes } ──▶ ExpectChallengeResponse
//!                              ◀── EnrollSuccess { device }
//! ```
//!
//! [`server`] holds the rules; [`client`] builds the messages and checks the answer.

pub mod client;
pub mod server;

use crate::error::{ErrorCode, PeerMisbehaved};
use crate::token::TokenProblem;
use crate::tpm::TpmVerifyError;

/// Why an enrollment failed, grouped by blame. `Display` is safe to send to the client:
/// a token problem always reads `invalid device enrollment token` (use
/// [`EnrollError::audit_message`] for the reason).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnrollError {
    #[error("invalid device enrollment token")]
    Token(TokenProblem),
    #[error(transparent)]
    PeerMisbehaved(#[from] PeerMisbehaved),
    #[error(transparent)]
    PolicyDenied(#[from] EnrollDenied),
    #[error("tpm attestation failed: {0}")]
    Attestation(TpmVerifyError),
    #[error(
        "tpm enrollment is not supported by this server yet: enroll a device with a secure \
         enclave, or ask an admin to enable tpm support"
    )]
    TpmNotSupported,
    #[error("the enrollment took longer than {limit_secs} seconds: enroll again with a new token")]
    Timeout { limit_secs: i64 },
}

/// Policy refusals: the request was well formed and the token good, but the rules say no.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnrollDenied {
    #[error("device trust disabled by cluster settings")]
    DeviceTrustDisabled,
    #[error(
        "unknown device trust mode {0:?} in the cluster settings: ask an admin to fix \
         cluster_auth_preference"
    )]
    UnknownTrustMode(String),
    #[error(
        "device is not registered in the inventory: ask an admin to add it \
         (dtctl devices add) and to issue a new enrollment token"
    )]
    DeviceNotRegistered,
    #[error(
        "device is already enrolled: ask an admin to un-enroll it (dtctl edit device/<asset tag>, \
         enroll_status: not_enrolled) before enrolling again"
    )]
    AlreadyEnrolled,
    #[error(
        "the device credential id is already in use: remove the local device credential \
         (dtsh device keyget shows it) and enroll again with a new token"
    )]
    CredentialIdInUse,
    #[error(
        "this device offers a software key, not a TPM or Secure Enclave credential: enroll from a \
         device with a TPM or Secure Enclave, or ask an admin to set \
         device_trust.allow_software_credentials: true in cluster_auth_preference (labs and tests only)"
    )]
    SoftwareCredentialsNotAllowed,
}

impl EnrollError {
    /// The message for the client. Never says whether a token exists.
    pub fn user_message(&self) -> String {
        self.to_string()
    }

    /// The message for the audit log and the server log: like `Display`, plus why a token
    /// was refused.
    pub fn audit_message(&self) -> String {
        match self {
            EnrollError::Token(problem) => format!("invalid device enrollment token ({problem})"),
            other => other.to_string(),
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            EnrollError::Token(_) => ErrorCode::PermissionDenied,
            EnrollError::PeerMisbehaved(PeerMisbehaved::WrongSignature)
            | EnrollError::PeerMisbehaved(PeerMisbehaved::WrongActivationSecret) => {
                ErrorCode::PermissionDenied
            }
            EnrollError::PeerMisbehaved(_) => ErrorCode::InvalidArgument,
            EnrollError::PolicyDenied(EnrollDenied::AlreadyEnrolled)
            | EnrollError::PolicyDenied(EnrollDenied::DeviceNotRegistered)
            | EnrollError::PolicyDenied(EnrollDenied::CredentialIdInUse) => {
                ErrorCode::FailedPrecondition
            }
            EnrollError::PolicyDenied(_) => ErrorCode::PermissionDenied,
            EnrollError::Attestation(_) => ErrorCode::PermissionDenied,
            EnrollError::TpmNotSupported => ErrorCode::Unimplemented,
            EnrollError::Timeout { .. } => ErrorCode::DeadlineExceeded,
        }
    }
}
