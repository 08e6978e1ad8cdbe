//! Device authentication, server half.
//!
//! ```text
//! dtsh                                                          devtrust auth (mTLS)
//!   AuthenticateInit { user_certificates, credential_id, device_data } ──▶ ExpectInit
//!                                          ◀── AuthenticateChallenge { 32 bytes | TPM nonce }
//!   AuthenticateChallengeResponse { signature | quotes } ──▶ ExpectChallengeResponse
//!                                          ◀── AuthenticateSuccess  (driver: dt-ca augments)
//! ```
//!
//! # Driver contract
//!
//! Before `ExpectInit::handle` the driver loads:
//! - the **mTLS identity** of the stream: the client certificate's DER and a verified view
//!   of it ([`CertView`]: user, roles, key fingerprint, device extensions), from `dt-ca`;
//! - a verified view of the in-band SSH certificate, when `AuthenticateInit` carries one
//!   (signed by the user CA, valid now), computing the key fingerprint the same way;
//! - the device by `(device_data.os_type, device_data.serial_number)`, or `None`;
//! - the active locks that may target the user, the user's roles or the device;
//! - the cluster's `device_trust` settings and the TPM verifier, if any.
//!
//! The user is always the mTLS identity's; nothing in `AuthenticateInit` can name another.
//!
//! After `ExpectChallengeResponse::handle` succeeds it writes
//! [`AuthnOutcome::device`] (the new collected-data history) in one transaction that
//! checks the device's revision is still the one loaded at Init, asks `dt-ca` to augment
//! the two certificates with [`AuthnOutcome::augment`] (same public keys, same expiry),
//! and sends `AuthenticateSuccess`.
//!
//! # Rules, in order (DESIGN.md §4)
//! 1. First message in time; cluster mode not `off` (`device trust disabled by cluster
//!    settings`) nor unknown.
//! 2. Field sizes.
//! 3. The in-band X.509 certificate is byte-identical to the mTLS client certificate; the
//!    SSH certificate, when sent, names the same user and the same public key.
//! 4. Neither certificate already carries a device (except for device web authentication,
//!    where the driver checks the web token and issues a confirmation token instead).
//! 5. No lock targets the user or one of the user's roles.
//! 6. The device exists, is enrolled, and its credential id is the one sent
//!    (`unknown device credential` otherwise); a software credential only while the
//!    cluster allows them.
//! 7. No lock targets the device.
//! 8. No collected-data drift ([`crate::drift`]).
//! 9. The response is a signature over exactly this ceremony's fresh challenge by the
//!    stored credential key (or quotes over the nonce by the stored AK).

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use dt_attest::p256::{P256PublicKey, parse_enrolled_p256_spki};
use dt_types::device::{AttestationType, DeviceCollectedData, EnrollStatus, MAX_COLLECTED_DATA};
use dt_types::resource::{Device, DeviceTrustMode, DeviceTrustSettings, Lock};
use dt_types::{CredentialId, DeviceId, UserName};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{AuthnDenied, AuthnError};
use crate::drift::check_drift;
use crate::env::{Env, random_array};
use crate::error::PeerMisbehaved;
use crate::limits::{
    CEREMONY_TIMEOUT, CHALLENGE_LEN, FIRST_MESSAGE_TIMEOUT, MAX_CERTIFICATE_LEN, MAX_SIGNATURE_LEN,
    TPM_NONCE_LEN, check_len, parse_credential_id,
};
use crate::messages::{
    AuthenticateChallenge, AuthenticateChallengeResponse, AuthenticateInit, AuthenticateRequest,
};
use crate::tpm::{TpmAuthenticateChallenge, TpmVerifier};

/// The device values a certificate carries (DESIGN.md §5).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceBinding {
    pub device_id: DeviceId,
    pub asset_tag: String,
    pub credential_id: CredentialId,
}

/// What the driver (through `dt-ca`) verified and read from a user certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertView {
    /// The certificate's user, as dt-ca read it.
    pub user: UserName,
    pub roles: Vec<String>,
    /// The same fingerprint function for SSH and X.509 keys (e.g. `sha256:` + hex of the
    /// SPKI), so the two certificates can be compared.
    pub public_key_fingerprint: String,
    /// Device values already present, if any.
    pub device: Option<DeviceBinding>,
}

/// The identity of the mTLS connection the ceremony runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MtlsIdentity {
    /// The client certificate, DER, exactly as presented in the TLS handshake.
    pub x509_der: Vec<u8>,
    pub certificate: CertView,
}

/// What the driver loaded for the `AuthenticateInit` step (see the module docs).
#[derive(Clone)]
pub struct AuthnContext<'a> {
    pub settings: &'a DeviceTrustSettings,
    pub identity: &'a MtlsIdentity,
    /// The verified view of `init.user_certificates.ssh_authorized_key`; must be `Some`
    /// exactly when the init carries an SSH certificate.
    pub ssh_certificate: Option<&'a CertView>,
    /// The device found by `(os_type, serial_number)` of the collected data.
    pub device: Option<&'a Device>,
    /// Active locks that may match; the state machine decides which ones do.
    pub locks: &'a [Lock],
    pub tpm: Option<Arc<dyn TpmVerifier>>,
}

/// What to put into the augmented certificates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Augment {
    /// The mTLS identity's user: the certificates being augmented are theirs.
    pub user: UserName,
    pub device: DeviceBinding,
}

/// A successful authentication: the device record to write back (new collected-data
/// history, at most [`MAX_COLLECTED_DATA`] records) and the augmentation to request.
#[must_use = "persist the device, then augment the certificates"]
#[derive(Clone, Debug, PartialEq)]
pub struct AuthnOutcome {
    pub augment: Augment,
    pub device: Device,
}

/// Waiting for `AuthenticateInit`.
#[derive(Debug)]
pub struct ExpectInit {
    opened_at: OffsetDateTime,
}

/// Waiting for the device's proof.
pub struct ExpectChallengeResponse {
    started_at: OffsetDateTime,
    user: UserName,
    device: Device,
    device_id: DeviceId,
    data: DeviceCollectedData,
    credential_id: CredentialId,
    pending: Pending,
}

enum Pending {
    P256 {
        key: P256PublicKey,
        challenge: [u8; CHALLENGE_LEN],
    },
    Tpm {
        verifier: Arc<dyn TpmVerifier>,
        ak_public: Vec<u8>,
        nonce: [u8; TPM_NONCE_LEN],
    },
}

impl std::fmt::Debug for ExpectChallengeResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpectChallengeResponse")
            .field("user", &self.user)
            .field("device_id", &self.device.metadata.name)
            .field("credential_id", &self.credential_id)
            .finish_non_exhaustive()
    }
}

impl ExpectInit {
    pub fn new(env: &(impl Env + ?Sized)) -> Self {
        ExpectInit {
            opened_at: env.now(),
        }
    }

    /// Unwraps the first message of a stream, refusing anything but `AuthenticateInit`.
    pub fn expect_message(msg: AuthenticateRequest) -> Result<AuthenticateInit, AuthnError> {
        match msg {
            AuthenticateRequest::Init(init) => Ok(*init),
            other => Err(PeerMisbehaved::UnexpectedMessage {
                expected: "AuthenticateInit",
                got: other.name(),
            }
            .into()),
        }
    }

    pub fn handle(
        self,
        init: AuthenticateInit,
        ctx: &AuthnContext<'_>,
        env: &mut (impl Env + ?Sized),
    ) -> Result<(ExpectChallengeResponse, AuthenticateChallenge), AuthnError> {
        let now = env.now();
        // 1. Time and mode.
        if now - self.opened_at > FIRST_MESSAGE_TIMEOUT {
            return Err(AuthnError::Timeout {
                limit_secs: FIRST_MESSAGE_TIMEOUT.whole_seconds(),
            });
        }
        match &ctx.settings.mode {
            DeviceTrustMode::Off => return Err(AuthnDenied::DeviceTrustDisabled.into()),
            DeviceTrustMode::Unknown(m) => {
                return Err(AuthnDenied::UnknownTrustMode(m.clone()).into());
            }
            DeviceTrustMode::Optional
            | DeviceTrustMode::Required
            | DeviceTrustMode::RequiredForHumans => {}
        }

        // 2. Sizes.
        let certs = &init.user_certificates;
        check_len(
            "user_certificates.x509_der",
            certs.x509_der.len(),
            MAX_CERTIFICATE_LEN,
        )?;
        if let Some(ssh) = &certs.ssh_authorized_key {
            check_len(
                "user_certificates.ssh_authorized_key",
                ssh.len(),
                MAX_CERTIFICATE_LEN,
            )?;
        }
        let credential_id = parse_credential_id(&init.credential_id)?;
        init.device_data
            .check_sizes()
            .map_err(|why| PeerMisbehaved::InvalidField {
                field: "device_data",
                why,
            })?;
        let Some(os_type) = init.device_data.os_type else {
            return Err(PeerMisbehaved::InvalidField {
                field: "device_data.os_type",
                why: "missing".into(),
            }
            .into());
        };

        // 3. The certificates are the connection's.
        let identity = &ctx.identity.certificate;
        if certs.x509_der != ctx.identity.x509_der {
            return Err(PeerMisbehaved::CertificateMismatch(
                "the x509 certificate is not the mTLS client certificate",
            )
            .into());
        }
        match (&certs.ssh_authorized_key, ctx.ssh_certificate) {
            (None, None) => {}
            (Some(_), Some(ssh)) => {
                if ssh.user != identity.user {
                    return Err(PeerMisbehaved::CertificateMismatch(
                        "the ssh certificate names another user",
                    )
                    .into());
                }
                if ssh.public_key_fingerprint != identity.public_key_fingerprint {
                    return Err(PeerMisbehaved::CertificateMismatch(
                        "the ssh certificate is for another key",
                    )
                    .into());
                }
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(PeerMisbehaved::CertificateMismatch(
                    "the ssh certificate could not be verified",
                )
                .into());
            }
        }

        // 4. Not augmented yet. Device web authentication augments no certificate (it
        // proves the device for a browser session), so dtsh's own may carry the device.
        if init.device_web_token.is_none()
            && (identity.device.is_some()
                || ctx.ssh_certificate.is_some_and(|s| s.device.is_some()))
        {
            return Err(AuthnDenied::AlreadyAugmented.into());
        }

        // 5. Locks on the user or the user's roles.
        if let Some(lock) = find_lock(ctx.locks, identity, None, now) {
            return Err(locked(lock));
        }

        // 6. The device and its credential.
        let device = match ctx.device {
            Some(d)
                if d.spec.os_type == os_type
                    && d.spec.asset_tag == init.device_data.serial_number =>
            {
                d
            }
            _ => return Err(AuthnDenied::DeviceNotFound.into()),
        };
        let credential = match (&device.spec.enroll_status, &device.spec.credential) {
            (EnrollStatus::Enrolled, Some(c)) => c,
            _ => return Err(AuthnDenied::DeviceNotEnrolled.into()),
        };
        if credential.id != credential_id {
            return Err(AuthnDenied::UnknownCredential.into());
        }
        if credential.attestation_type == AttestationType::Software
            && !ctx.settings.allow_software_credentials
        {
            return Err(AuthnDenied::SoftwareCredentialsNotAllowed.into());
        }

        // 7. Locks on the device (or on this credential of it).
        let broken = |why: String| AuthnError::BrokenDeviceRecord {
            device_id: device.metadata.name.clone(),
            why,
        };
        let device_id = device
            .device_id()
            .map_err(|e| broken(format!("its name is not a device id: {e}")))?;
        let this = Some((device_id.as_str(), credential.id.as_str()));
        if let Some(lock) = find_lock(ctx.locks, identity, this, now) {
            return Err(locked(lock));
        }

        // 8. Drift.
        check_drift(&device.spec.collected_data, &init.device_data)
            .map_err(AuthnDenied::CollectedDataDrift)?;

        // 9. The challenge.
        let (pending, challenge) = match credential.attestation_type {
            AttestationType::Software | AttestationType::SecureEnclave => {
                let der = STANDARD
                    .decode(&credential.public_key_der)
                    .map_err(|e| broken(format!("credential public key is not base64: {e}")))?;
                let key = parse_enrolled_p256_spki(&der)
                    .map_err(|e| broken(format!("credential public key: {e}")))?;
                let challenge: [u8; CHALLENGE_LEN] = random_array(env);
                (
                    Pending::P256 { key, challenge },
                    AuthenticateChallenge::P256 {
                        challenge: challenge.to_vec(),
                    },
                )
            }
            AttestationType::TpmEkpub
            | AttestationType::TpmEkcert
            | AttestationType::TpmEkcertTrusted => {
                let Some(verifier) = ctx.tpm.clone() else {
                    return Err(AuthnError::TpmNotSupported);
                };
                let ak_public = credential
                    .tpm_ak_public
                    .as_deref()
                    .ok_or_else(|| broken("tpm credential has no ak public key".into()))
                    .and_then(|b64| {
                        STANDARD
                            .decode(b64)
                            .map_err(|e| broken(format!("ak public key is not base64: {e}")))
                    })?;
                let nonce: [u8; TPM_NONCE_LEN] = random_array(env);
                (
                    Pending::Tpm {
                        verifier,
                        ak_public,
                        nonce,
                    },
                    AuthenticateChallenge::Tpm(TpmAuthenticateChallenge {
                        attestation_nonce: nonce.to_vec(),
                    }),
                )
            }
        };

        let mut data = init.device_data;
        data.record_time = Some(now);
        Ok((
            ExpectChallengeResponse {
                started_at: self.opened_at,
                user: identity.user.clone(),
                device: device.clone(),
                device_id,
                data,
                credential_id,
                pending,
            },
            challenge,
        ))
    }
}

impl ExpectChallengeResponse {
    /// Unwraps the second message of a stream, refusing anything but a challenge response.
    pub fn expect_message(
        msg: AuthenticateRequest,
    ) -> Result<AuthenticateChallengeResponse, AuthnError> {
        match msg {
            AuthenticateRequest::ChallengeResponse(r) => Ok(r),
            other => Err(PeerMisbehaved::UnexpectedMessage {
                expected: "AuthenticateChallengeResponse",
                got: other.name(),
            }
            .into()),
        }
    }

    pub fn device_id(&self) -> &DeviceId {
        &self.device_id
    }

    pub fn handle(
        self,
        response: AuthenticateChallengeResponse,
        env: &mut (impl Env + ?Sized),
    ) -> Result<AuthnOutcome, AuthnError> {
        let now = env.now();
        if now - self.started_at > CEREMONY_TIMEOUT {
            return Err(AuthnError::Timeout {
                limit_secs: CEREMONY_TIMEOUT.whole_seconds(),
            });
        }
        match (self.pending, response) {
            (
                Pending::P256 { key, challenge },
                AuthenticateChallengeResponse::P256 { signature_der },
            ) => {
                check_len("signature_der", signature_der.len(), MAX_SIGNATURE_LEN)?;
                key.verify(&challenge, &signature_der)
                    .map_err(|_| PeerMisbehaved::WrongSignature)?;
            }
            (
                Pending::Tpm {
                    verifier,
                    ak_public,
                    nonce,
                },
                AuthenticateChallengeResponse::Tpm(resp),
            ) => {
                resp.platform_parameters.check_sizes()?;
                verifier
                    .verify_authentication(&ak_public, &nonce, &resp.platform_parameters)
                    .map_err(AuthnError::Attestation)?;
            }
            (Pending::P256 { .. }, AuthenticateChallengeResponse::Tpm(_)) => {
                return Err(PeerMisbehaved::WrongResponseKind {
                    expected: "p256",
                    got: "tpm",
                }
                .into());
            }
            (Pending::Tpm { .. }, AuthenticateChallengeResponse::P256 { .. }) => {
                return Err(PeerMisbehaved::WrongResponseKind {
                    expected: "tpm",
                    got: "p256",
                }
                .into());
            }
        }

        let mut device = self.device;
        let history = std::mem::take(&mut device.spec.collected_data);
        device.spec.collected_data = append_history(history, self.data);
        device.spec.update_time = Some(now);
        Ok(AuthnOutcome {
            augment: Augment {
                user: self.user,
                device: DeviceBinding {
                    device_id: self.device_id,
                    asset_tag: device.spec.asset_tag.clone(),
                    credential_id: self.credential_id,
                },
            },
            device,
        })
    }
}

/// The enrollment record, then the most recent authentications, at most
/// [`MAX_COLLECTED_DATA`] records in all (the records are moved, not copied).
pub fn append_history(
    mut history: Vec<DeviceCollectedData>,
    current: DeviceCollectedData,
) -> Vec<DeviceCollectedData> {
    if history.is_empty() {
        return vec![current];
    }
    let keep = MAX_COLLECTED_DATA - 2; // room for the enrollment record and `current`
    let auths = history.len() - 1;
    history.drain(1..1 + auths.saturating_sub(keep));
    history.push(current);
    history
}

/// The first lock that applies to this user (and device and credential id, when given). A
/// lock applies when every target field it sets among user, role, device and device
/// credential matches; locks that also set a login or a node don't concern certificates and
/// are left to the access points.
fn find_lock<'l>(
    locks: &'l [Lock],
    identity: &CertView,
    device: Option<(&str, &str)>,
    now: OffsetDateTime,
) -> Option<&'l Lock> {
    locks.iter().find(|lock| {
        if lock.metadata.expires.is_some_and(|e| e <= now) {
            return false;
        }
        let t = &lock.spec.target;
        if t.is_empty() || t.login.is_some() || t.node.is_some() {
            return false;
        }
        let user_ok = t.user.as_ref().is_none_or(|u| *u == identity.user);
        let role_ok = t.role.as_ref().is_none_or(|r| identity.roles.contains(r));
        let device_ok = match (&t.device, device) {
            (None, _) => true,
            (Some(d), Some((id, _))) => d == id,
            (Some(_), None) => false,
        };
        let credential_ok = match (&t.device_credential, device) {
            (None, _) => true,
            (Some(c), Some((_, id))) => c == id,
            (Some(_), None) => false,
        };
        user_ok && role_ok && device_ok && credential_ok
    })
}

fn locked(lock: &Lock) -> AuthnError {
    AuthnDenied::Locked {
        target: lock.spec.target.to_string(),
        message: lock.spec.message.clone().filter(|m| !m.trim().is_empty()),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dt_types::device::OsType;

    fn record(n: u8) -> DeviceCollectedData {
        DeviceCollectedData {
            collect_time: OffsetDateTime::UNIX_EPOCH,
            record_time: None,
            os_type: Some(OsType::Linux),
            serial_number: "S".into(),
            model_identifier: String::new(),
            os_version: String::new(),
            os_build: n.to_string(),
            os_username: String::new(),
            hostname: String::new(),
            system_serial_number: String::new(),
            base_board_serial_number: String::new(),
            reported_asset_tag: String::new(),
            serial_source: String::new(),
        }
    }

    #[test]
    fn history_keeps_enrollment_and_last_ten() {
        let mut history = vec![record(0)];
        for n in 1..=25u8 {
            history = append_history(history, record(n));
            assert!(history.len() <= MAX_COLLECTED_DATA);
            assert_eq!(history[0].os_build, "0");
            assert_eq!(history.last().unwrap().os_build, n.to_string());
        }
        let builds: Vec<_> = history.iter().map(|d| d.os_build.clone()).collect();
        assert_eq!(
            builds,
            [
                "0", "16", "17", "18", "19", "20", "21", "22", "23", "24", "25"
            ]
        );
        assert_eq!(append_history(vec![], record(9)).len(), 1);
    }
}
