//! Device authentication: an enrolled device proves, for the user of an mTLS connection,
//! that it still holds its credential; the user's certificates are then augmented with the
//! device (DESIGN.md §4, §5).
//!
//! ```text
//! dtsh (client::Expect…)                                devtrust auth (server::Expect…)
//!   AuthenticateInit { user_certificates, credential_id, device_data } ──▶ ExpectInit
//!                                   ◀── AuthenticateChallenge { 32 bytes | TPM nonce }
//!   AuthenticateChallengeResponse { signature | quotes } ──▶ ExpectChallengeResponse
//!                                   ◀── AuthenticateSuccess { augmented certificates }
//!                                       (issued by the driver from `AuthnOutcome::augment`)
//! ```

pub mod client;
pub mod server;

use crate::drift::DriftKind;
use crate::error::{ErrorCode, PeerMisbehaved};
use crate::tpm::TpmVerifyError;

/// Why an authentication failed, grouped by blame. `Display` is safe to send to the client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    #[error(transparent)]
    PeerMisbehaved(#[from] PeerMisbehaved),
    #[error(transparent)]
    PolicyDenied(#[from] AuthnDenied),
    #[error("tpm attestation failed: {0}")]
    Attestation(TpmVerifyError),
    #[error(
        "tpm device authentication is not supported by this server yet: ask an admin to enable \
         tpm support"
    )]
    TpmNotSupported,
    #[error("the device authentication took longer than {limit_secs} seconds: try again")]
    Timeout { limit_secs: i64 },
    /// The server's own record is unusable (e.g. a stored public key that doesn't parse).
    #[error(
        "the server's record of this device is damaged: ask an admin to re-enroll device {device_id}"
    )]
    BrokenDeviceRecord { device_id: String, why: String },
}

/// Policy refusals (DESIGN.md §4 "Refused when").
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthnDenied {
    #[error("device trust disabled by cluster settings")]
    DeviceTrustDisabled,
    #[error(
        "unknown device trust mode {0:?} in the cluster settings: ask an admin to fix \
         cluster_auth_preference"
    )]
    UnknownTrustMode(String),
    #[error(
        "device not found in the inventory: ask an admin to register it, then enroll it (dtsh device enroll)"
    )]
    DeviceNotFound,
    #[error("device is not enrolled: enroll it first (dtsh device enroll)")]
    DeviceNotEnrolled,
    #[error("unknown device credential")]
    UnknownCredential,
    #[error(
        "collected data drift detected: this device reports other hardware or an older OS than \
         it did before; ask an admin to check the device and re-enroll it"
    )]
    CollectedDataDrift(DriftKind),
    #[error(
        "the certificates already carry a device: log in again (dtsh login) to get fresh certificates"
    )]
    AlreadyAugmented,
    #[error("lock targeting {target} is in force{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Locked {
        target: String,
        message: Option<String>,
    },
    #[error(
        "this device enrolled with a software key and the cluster no longer allows software \
         credentials: enroll a device with a TPM or Secure Enclave"
    )]
    SoftwareCredentialsNotAllowed,
}

impl AuthnError {
    /// The message for the client.
    pub fn user_message(&self) -> String {
        self.to_string()
    }

    /// The message for the audit log: like `Display`, plus what drifted.
    pub fn audit_message(&self) -> String {
        match self {
            AuthnError::PolicyDenied(AuthnDenied::CollectedDataDrift(kind)) => {
                format!("collected data drift detected ({kind})")
            }
            AuthnError::BrokenDeviceRecord { device_id, why } => {
                format!("device {device_id} has a broken record: {why}")
            }
            other => other.to_string(),
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            AuthnError::PeerMisbehaved(PeerMisbehaved::WrongSignature)
            | AuthnError::PeerMisbehaved(PeerMisbehaved::CertificateMismatch(_)) => {
                ErrorCode::PermissionDenied
            }
            AuthnError::PeerMisbehaved(_) => ErrorCode::InvalidArgument,
            AuthnError::PolicyDenied(AuthnDenied::DeviceNotFound)
            | AuthnError::PolicyDenied(AuthnDenied::DeviceNotEnrolled) => {
                ErrorCode::FailedPrecondition
            }
            AuthnError::PolicyDenied(_) => ErrorCode::PermissionDenied,
            AuthnError::Attestation(_) => ErrorCode::PermissionDenied,
            AuthnError::TpmNotSupported => ErrorCode::Unimplemented,
            AuthnError::Timeout { .. } => ErrorCode::DeadlineExceeded,
            AuthnError::BrokenDeviceRecord { .. } => ErrorCode::Internal,
        }
    }
}
