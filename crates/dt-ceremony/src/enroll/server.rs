//! Device enrollment, server half.
//!
//! ```text
//! dtsh                                                         devtrust auth
//!   EnrollInit { token, credential_id, device_data, payload } ──▶ ExpectInit
//!                                      ◀── EnrollChallenge { 32 bytes | TPM credential + nonce }
//!   EnrollChallengeResponse { signature | activation, quotes } ──▶ ExpectChallengeResponse
//!                                                             ◀── EnrollSuccess { device }
//! ```
//!
//! # Driver contract
//!
//! Before `ExpectInit::handle` the driver loads, from the `EnrollInit` it read:
//! - the token record by [`EnrollToken::lookup_hash`](crate::token::EnrollToken::lookup_hash)
//!   (or `None`);
//! - the device the record was issued for, by the record's `device_id` (or `None`);
//! - the cluster's `device_trust` settings;
//! - whether any device already holds `init.credential_id`;
//! - the authenticated user making the call (the enrolling user, who becomes the owner);
//! - the TPM verifier, if this server has one.
//!
//! After `ExpectInit::handle` it persists [`InitOutcome::token`] — **even when the result
//! is an error**: a token is spent at Init. After `ExpectChallengeResponse::handle` it
//! writes [`Enrolled::device`] in one transaction that also checks the device did not
//! change since Init (its revision) and that the credential id is still unused (a unique
//! index), then sends [`Enrolled::reply`].
//!
//! # Rules, in order
//! 1. The first message arrived in time; the cluster mode is not `off` (nor unknown).
//! 2. Field sizes: collected data (`check_sizes`), credential id, public key, TPM blobs.
//! 3. The token: well formed, found, matching hash (constant time), not spent, not expired.
//! 4. The token's device exists, and the collected (os_type, serial) are that device's;
//!    every mismatch is a token error, so a token can't be used to probe the inventory.
//! 5. The device is not enrolled; the credential id is not in use.
//! 6. The payload: a valid P-256 key (and software keys only when
//!    `device_trust.allow_software_credentials` is set), or a TPM payload the verifier
//!    accepts.
//! 7. The response proves possession: a signature over exactly this ceremony's challenge
//!    with the key from Init, or the activation secret (compared in constant time by the
//!    verifier) plus a quote over the nonce; a TPM credential id must be the AK's.
//!
//! # Trust decision: Secure Enclave vs software keys
//!
//! A P-256 public key and a signature can't show where the private key lives: Apple offers
//! no attestation for Secure Enclave keys outside App Attest. We record the attestation
//! type the device claims (`secure_enclave` or `software`), accept the `secure_enclave`
//! claim only from macOS devices, and refuse the `software` claim unless the cluster allows
//! software credentials. So `allow_software_credentials: false` stops honest software
//! clients and mistakes, not an attacker who controls the client; the enrollment token
//! (issued by an admin for one inventoried device) is what gates enrollment. Clusters that
//! need hardware proof use TPM devices with `ekcert_allowed_cas`.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use dt_attest::p256::{P256PublicKey, parse_p256_spki};
use dt_types::device::{AttestationType, DeviceCollectedData, DeviceCredential, EnrollStatus};
use dt_types::resource::{Device, DeviceTrustMode, DeviceTrustSettings};
use dt_types::{CredentialId, UserName};
use time::OffsetDateTime;

use super::{EnrollDenied, EnrollError};
use crate::env::{Env, random_array};
use crate::error::PeerMisbehaved;
use crate::limits::{
    CEREMONY_TIMEOUT, CHALLENGE_LEN, FIRST_MESSAGE_TIMEOUT, MAX_PUBLIC_KEY_LEN, MAX_SIGNATURE_LEN,
    check_len, parse_credential_id,
};
use crate::messages::{
    EnrollChallenge, EnrollChallengeResponse, EnrollInit, EnrollPayload, EnrollRequest,
    EnrollSuccess, P256KeyStorage,
};
use crate::token::{self, EnrollTokenRecord, TokenDisposition, TokenProblem};
use crate::tpm::{TpmPendingEnrollment, TpmVerifier, TpmVerifyError};

/// What the driver loaded for the `EnrollInit` step (see the module docs).
#[derive(Clone)]
pub struct EnrollContext<'a> {
    /// The authenticated user calling; becomes the device's owner.
    pub user: &'a UserName,
    pub settings: &'a DeviceTrustSettings,
    /// The record found under the token's hash.
    pub token: Option<&'a EnrollTokenRecord>,
    /// The device the token record names.
    pub device: Option<&'a Device>,
    /// Whether any device already has a credential with `init.credential_id`.
    pub credential_id_in_use: bool,
    /// TPM evidence checks; `None` refuses TPM devices with [`EnrollError::TpmNotSupported`].
    pub tpm: Option<Arc<dyn TpmVerifier>>,
}

/// The ceremony's first state: waiting for `EnrollInit`.
#[derive(Debug)]
pub struct ExpectInit {
    opened_at: OffsetDateTime,
}

/// What `ExpectInit::handle` returns: the token's fate (always to be persisted) and the
/// ceremony's next step or its error.
#[must_use = "persist `token`, then send the challenge or the error"]
#[derive(Debug)]
pub struct InitOutcome {
    pub token: TokenDisposition,
    pub result: Result<(ExpectChallengeResponse, EnrollChallenge), EnrollError>,
}

/// Waiting for the device's proof.
pub struct ExpectChallengeResponse {
    started_at: OffsetDateTime,
    user: UserName,
    device: Device,
    data: DeviceCollectedData,
    credential_id: CredentialId,
    pending: Pending,
}

enum Pending {
    P256 {
        key: P256PublicKey,
        challenge: [u8; CHALLENGE_LEN],
        attestation_type: AttestationType,
    },
    Tpm {
        pending: Box<dyn TpmPendingEnrollment>,
    },
}

impl std::fmt::Debug for ExpectChallengeResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.pending {
            Pending::P256 { .. } => "p256",
            Pending::Tpm { .. } => "tpm",
        };
        f.debug_struct("ExpectChallengeResponse")
            .field("device_id", &self.device.metadata.name)
            .field("credential_id", &self.credential_id)
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

/// A successful enrollment: the device record to write, and the reply to send after it is
/// written.
#[must_use = "persist the device, then send the reply"]
#[derive(Clone, Debug, PartialEq)]
pub struct Enrolled {
    pub device: Device,
}

impl Enrolled {
    pub fn reply(&self) -> EnrollSuccess {
        EnrollSuccess {
            device: self.device.clone(),
        }
    }
}

impl ExpectInit {
    /// Starts a ceremony when the stream opens.
    pub fn new(env: &(impl Env + ?Sized)) -> Self {
        ExpectInit {
            opened_at: env.now(),
        }
    }

    /// Unwraps the first message of a stream, refusing anything but `EnrollInit`.
    pub fn expect_message(msg: EnrollRequest) -> Result<EnrollInit, EnrollError> {
        match msg {
            EnrollRequest::Init(init) => Ok(*init),
            other => Err(PeerMisbehaved::UnexpectedMessage {
                expected: "EnrollInit",
                got: other.name(),
            }
            .into()),
        }
    }

    pub fn handle(
        self,
        init: EnrollInit,
        ctx: &EnrollContext<'_>,
        env: &mut (impl Env + ?Sized),
    ) -> InitOutcome {
        let now = env.now();
        // The token is judged first and on its own: a live token is spent by this Init,
        // whatever the rest of the message says.
        let assessed = token::assess(&init.token, ctx.token, now);
        let disposition = match &assessed {
            Ok(record) => TokenDisposition::Consume {
                token_hash: record.token_hash.clone(),
                spent_at: now,
            },
            Err(_) => TokenDisposition::Untouched,
        };
        let result = self.check(init, ctx, assessed, now, env);
        InitOutcome {
            token: disposition,
            result,
        }
    }

    fn check(
        self,
        init: EnrollInit,
        ctx: &EnrollContext<'_>,
        assessed: Result<&EnrollTokenRecord, TokenProblem>,
        now: OffsetDateTime,
        env: &mut (impl Env + ?Sized),
    ) -> Result<(ExpectChallengeResponse, EnrollChallenge), EnrollError> {
        // 1. Time and mode.
        if now - self.opened_at > FIRST_MESSAGE_TIMEOUT {
            return Err(EnrollError::Timeout {
                limit_secs: FIRST_MESSAGE_TIMEOUT.whole_seconds(),
            });
        }
        match &ctx.settings.mode {
            DeviceTrustMode::Off => return Err(EnrollDenied::DeviceTrustDisabled.into()),
            DeviceTrustMode::Unknown(m) => {
                return Err(EnrollDenied::UnknownTrustMode(m.clone()).into());
            }
            DeviceTrustMode::Optional
            | DeviceTrustMode::Required
            | DeviceTrustMode::RequiredForHumans => {}
        }

        // 2. Sizes and shapes, before anything is looked at more closely.
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
        let credential_id = parse_credential_id(&init.credential_id)?;
        match &init.payload {
            EnrollPayload::P256 { public_key_der, .. } => {
                check_len("public_key_der", public_key_der.len(), MAX_PUBLIC_KEY_LEN)?;
            }
            EnrollPayload::Tpm(tpm) => tpm.check_sizes()?,
        }

        // 3. The token.
        let record = assessed.map_err(EnrollError::Token)?;

        // 4. The token's device.
        let Some(device) = ctx.device else {
            return Err(EnrollDenied::DeviceNotRegistered.into());
        };
        if device.metadata.name != record.device_id {
            return Err(EnrollError::Token(TokenProblem::OtherDevice));
        }
        if device.spec.os_type != os_type {
            return Err(EnrollError::Token(TokenProblem::OtherOs));
        }
        if device.spec.asset_tag != init.device_data.serial_number {
            return Err(EnrollError::Token(TokenProblem::OtherDevice));
        }

        // 5. Device state and credential uniqueness.
        if device.spec.enroll_status == EnrollStatus::Enrolled {
            return Err(EnrollDenied::AlreadyEnrolled.into());
        }
        if ctx.credential_id_in_use {
            return Err(EnrollDenied::CredentialIdInUse.into());
        }

        // 6. The payload, and the challenge.
        let mut data = init.device_data;
        data.record_time = Some(now);
        let (pending, challenge) = match init.payload {
            EnrollPayload::P256 {
                public_key_der,
                storage,
            } => {
                let attestation_type = match storage {
                    P256KeyStorage::Software => {
                        if !ctx.settings.allow_software_credentials {
                            return Err(EnrollDenied::SoftwareCredentialsNotAllowed.into());
                        }
                        AttestationType::Software
                    }
                    P256KeyStorage::SecureEnclave => {
                        if os_type != dt_types::device::OsType::Macos {
                            return Err(PeerMisbehaved::InvalidField {
                                field: "payload",
                                why: "secure enclave credentials exist only on macOS".into(),
                            }
                            .into());
                        }
                        AttestationType::SecureEnclave
                    }
                };
                let key =
                    parse_p256_spki(&public_key_der).map_err(PeerMisbehaved::InvalidPublicKey)?;
                let challenge: [u8; CHALLENGE_LEN] = random_array(env);
                (
                    Pending::P256 {
                        key,
                        challenge,
                        attestation_type,
                    },
                    EnrollChallenge::P256 {
                        challenge: challenge.to_vec(),
                    },
                )
            }
            EnrollPayload::Tpm(payload) => {
                let Some(verifier) = ctx.tpm.clone() else {
                    return Err(EnrollError::TpmNotSupported);
                };
                if os_type == dt_types::device::OsType::Macos {
                    return Err(PeerMisbehaved::InvalidField {
                        field: "payload",
                        why: "macOS devices enroll with a secure enclave credential, not a tpm"
                            .into(),
                    }
                    .into());
                }
                let mut env_dyn = DynEnv(env);
                let (pending, challenge) = verifier
                    .begin_enrollment(&payload, now, &mut env_dyn)
                    .map_err(tpm_error)?;
                // A TPM credential's id is derived from its AK; the announced one must match,
                // or one device could squat another's credential id.
                if pending.credential_id() != credential_id {
                    return Err(PeerMisbehaved::InvalidField {
                        field: "credential_id",
                        why: "a tpm credential id must be derived from its attestation key".into(),
                    }
                    .into());
                }
                (Pending::Tpm { pending }, EnrollChallenge::Tpm(challenge))
            }
        };
        Ok((
            ExpectChallengeResponse {
                started_at: self.opened_at,
                user: ctx.user.clone(),
                device: device.clone(),
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
    pub fn expect_message(msg: EnrollRequest) -> Result<EnrollChallengeResponse, EnrollError> {
        match msg {
            EnrollRequest::ChallengeResponse(r) => Ok(r),
            other => Err(PeerMisbehaved::UnexpectedMessage {
                expected: "EnrollChallengeResponse",
                got: other.name(),
            }
            .into()),
        }
    }

    /// The device this ceremony is enrolling (for spans and audit events).
    pub fn device_id(&self) -> &str {
        &self.device.metadata.name
    }

    pub fn handle(
        self,
        response: EnrollChallengeResponse,
        env: &mut (impl Env + ?Sized),
    ) -> Result<Enrolled, EnrollError> {
        let now = env.now();
        if now - self.started_at > CEREMONY_TIMEOUT {
            return Err(EnrollError::Timeout {
                limit_secs: CEREMONY_TIMEOUT.whole_seconds(),
            });
        }
        let credential = match (self.pending, response) {
            (
                Pending::P256 {
                    key,
                    challenge,
                    attestation_type,
                },
                EnrollChallengeResponse::P256 { signature_der },
            ) => {
                check_len("signature_der", signature_der.len(), MAX_SIGNATURE_LEN)?;
                key.verify(&challenge, &signature_der)
                    .map_err(|_| PeerMisbehaved::WrongSignature)?;
                DeviceCredential {
                    id: self.credential_id,
                    public_key_der: STANDARD.encode(key.spki_der()),
                    attestation_type,
                    tpm_ekcert_serial: None,
                    tpm_ak_public: None,
                    tpm_ekcert_der: None,
                }
            }
            (Pending::Tpm { pending }, EnrollChallengeResponse::Tpm(resp)) => {
                resp.platform_parameters.check_sizes()?;
                // TPM 2.0 Library Part 1 §24: only the TPM holding both the EK and the AK can
                // release the secret; the verifier compares it in constant time, then checks
                // the quote over the nonce.
                let facts = pending.finish(&resp).map_err(tpm_error)?;
                DeviceCredential {
                    id: self.credential_id,
                    public_key_der: String::new(),
                    attestation_type: facts.attestation_type,
                    tpm_ekcert_serial: facts.ekcert_serial,
                    tpm_ak_public: Some(STANDARD.encode(&facts.ak_public)),
                    tpm_ekcert_der: facts.ekcert_der.as_ref().map(|d| STANDARD.encode(d)),
                }
            }
            (Pending::P256 { .. }, EnrollChallengeResponse::Tpm(_)) => {
                return Err(PeerMisbehaved::WrongResponseKind {
                    expected: "p256",
                    got: "tpm",
                }
                .into());
            }
            (Pending::Tpm { .. }, EnrollChallengeResponse::P256 { .. }) => {
                return Err(PeerMisbehaved::WrongResponseKind {
                    expected: "tpm",
                    got: "p256",
                }
                .into());
            }
        };

        let mut device = self.device;
        device.spec.enroll_status = EnrollStatus::Enrolled;
        device.spec.credential = Some(credential);
        // The inventory stores the owner as text (a document).
        device.spec.owner = Some(self.user.into_string());
        device.spec.collected_data = vec![self.data];
        device.spec.update_time = Some(now);
        Ok(Enrolled { device })
    }
}

fn tpm_error(e: TpmVerifyError) -> EnrollError {
    match e {
        TpmVerifyError::WrongActivationSecret => PeerMisbehaved::WrongActivationSecret.into(),
        other => EnrollError::Attestation(other),
    }
}

/// Lets a generic `Env` be lent as `&mut dyn Env` (to the TPM verifier).
struct DynEnv<'e, E: Env + ?Sized>(&'e mut E);

impl<E: Env + ?Sized> Env for DynEnv<'_, E> {
    fn now(&self) -> OffsetDateTime {
        self.0.now()
    }
    fn random_bytes(&mut self, out: &mut [u8]) {
        self.0.random_bytes(out)
    }
}
