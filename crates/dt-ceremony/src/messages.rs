//! The ceremonies' messages as plain Rust types. `dt-proto` maps them to protobuf, with
//! the same names (STYLE.md); nothing else here knows about the wire encoding.
//!
//! Byte fields are raw bytes (DER, signatures, nonces); they are bounded by the state
//! machines (see [`crate::limits`]), not by these types.

use dt_types::device::DeviceCollectedData;
use dt_types::resource::Device;
use serde::{Deserialize, Serialize};

use crate::token::EnrollToken;
use crate::tpm::{
    TpmAuthenticateChallenge, TpmAuthenticateChallengeResponse, TpmEnrollChallenge,
    TpmEnrollChallengeResponse, TpmEnrollPayload,
};

// ---------------------------------------------------------------------------------------
// enrollment

/// Where a P-256 credential's private key lives, as the device claims it. The server
/// cannot tell the two apart from a P-256 public key: see `enroll::server` for the trust
/// decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum P256KeyStorage {
    /// A macOS Secure Enclave key.
    SecureEnclave,
    /// A key in a file (labs and tests, `device_trust.allow_software_credentials`).
    Software,
}

/// The credential a device enrolls.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollPayload {
    /// Secure Enclave or software credential: a P-256 public key, PKIX (SPKI) DER.
    P256 {
        public_key_der: Vec<u8>,
        storage: P256KeyStorage,
    },
    /// TPM credential: EK and AK creation parameters.
    Tpm(TpmEnrollPayload),
}

impl EnrollPayload {
    pub fn kind(&self) -> &'static str {
        match self {
            EnrollPayload::P256 { .. } => "p256",
            EnrollPayload::Tpm(_) => "tpm",
        }
    }
}

/// dtsh → server: the first enrollment message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollInit {
    pub token: EnrollToken,
    /// As the device sent it: the state machine parses it into a
    /// [`dt_types::CredentialId`] after judging the token, so a malformed id still spends a
    /// live token.
    pub credential_id: String,
    pub device_data: DeviceCollectedData,
    pub payload: EnrollPayload,
}

/// server → dtsh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollChallenge {
    /// 32 random bytes to sign with ECDSA-P256-SHA256.
    P256 {
        challenge: Vec<u8>,
    },
    Tpm(TpmEnrollChallenge),
}

/// dtsh → server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollChallengeResponse {
    /// ECDSA-P256-SHA256 signature over exactly the challenge, ASN.1 DER.
    P256 {
        signature_der: Vec<u8>,
    },
    Tpm(TpmEnrollChallengeResponse),
}

/// server → dtsh: the enrolled device record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnrollSuccess {
    pub device: Device,
}

/// Everything dtsh may send on an enrollment stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollRequest {
    Init(Box<EnrollInit>),
    ChallengeResponse(EnrollChallengeResponse),
}

/// Everything the server may send on an enrollment stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollResponse {
    Challenge(EnrollChallenge),
    Success(Box<EnrollSuccess>),
}

impl EnrollRequest {
    pub fn name(&self) -> &'static str {
        match self {
            EnrollRequest::Init(_) => "EnrollInit",
            EnrollRequest::ChallengeResponse(_) => "EnrollChallengeResponse",
        }
    }
}

impl EnrollResponse {
    pub fn name(&self) -> &'static str {
        match self {
            EnrollResponse::Challenge(_) => "EnrollChallenge",
            EnrollResponse::Success(_) => "EnrollSuccess",
        }
    }
}

// ---------------------------------------------------------------------------------------
// authentication

/// The user's current certificates, as dtsh holds them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCertificates {
    /// X.509 user certificate, DER. Must be the mTLS client certificate of the stream.
    pub x509_der: Vec<u8>,
    /// OpenSSH user certificate, `authorized_keys` text (`ecdsa-sha2-nistp256-cert-v01@openssh.com AAAA...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_authorized_key: Option<String>,
}

/// dtsh → server: the first authentication message (over mTLS).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthenticateInit {
    pub user_certificates: UserCertificates,
    /// As the device sent it: the state machine parses it into a
    /// [`dt_types::CredentialId`] with the other size checks.
    pub credential_id: String,
    pub device_data: DeviceCollectedData,
    /// Present for device web authentication: the single-use token the web login created.
    /// The ceremony then proves the device for a browser session: the server answers with
    /// [`AuthenticateResponse::WebConfirmation`] and augments no certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_web_token: Option<DeviceWebToken>,
}

/// The device web token of a web login, as `dtsh device web-auth` read it from the
/// `devtrust://` URL. `Debug` never prints the token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceWebToken {
    pub id: String,
    pub token: String,
}

impl std::fmt::Debug for DeviceWebToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceWebToken")
            .field("id", &self.id)
            .field("token", &"<secret>")
            .finish()
    }
}

/// server → dtsh at the end of a device web authentication: the single-use token the
/// browser presents (through the confirmation URL) to mark its session device-trusted.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceConfirmationToken {
    pub id: String,
    pub token: String,
}

impl std::fmt::Debug for DeviceConfirmationToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceConfirmationToken")
            .field("id", &self.id)
            .field("token", &"<secret>")
            .finish()
    }
}

/// server → dtsh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthenticateChallenge {
    P256 { challenge: Vec<u8> },
    Tpm(TpmAuthenticateChallenge),
}

/// dtsh → server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthenticateChallengeResponse {
    P256 { signature_der: Vec<u8> },
    Tpm(TpmAuthenticateChallengeResponse),
}

/// server → dtsh: the augmented certificates (same keys, same expiry, plus the device).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthenticateSuccess {
    pub user_certificates: UserCertificates,
}

/// Everything dtsh may send on an authentication stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthenticateRequest {
    Init(Box<AuthenticateInit>),
    ChallengeResponse(AuthenticateChallengeResponse),
}

/// Everything the server may send on an authentication stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthenticateResponse {
    Challenge(AuthenticateChallenge),
    Success(AuthenticateSuccess),
    /// Device web authentication only, instead of `Success`.
    WebConfirmation(DeviceConfirmationToken),
}

impl AuthenticateRequest {
    pub fn name(&self) -> &'static str {
        match self {
            AuthenticateRequest::Init(_) => "AuthenticateInit",
            AuthenticateRequest::ChallengeResponse(_) => "AuthenticateChallengeResponse",
        }
    }
}

impl AuthenticateResponse {
    pub fn name(&self) -> &'static str {
        match self {
            AuthenticateResponse::Challenge(_) => "AuthenticateChallenge",
            AuthenticateResponse::Success(_) => "AuthenticateSuccess",
            AuthenticateResponse::WebConfirmation(_) => "DeviceConfirmationToken",
        }
    }
}
