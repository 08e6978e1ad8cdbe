//! The two device ceremonies on the wire: `v1::{Enroll,Authenticate}Device{Request,Response}`
//! <-> `dt_ceremony::messages`.
//!
//! Messages a device sends are checked against `dt_ceremony::limits` here, field by field,
//! with the same limits (and the same wording) the state machines use, so a peer learns
//! which field was too large whichever layer saw it first. The drivers call
//! [`check_message_len`] before converting; that bound is derived from the field limits
//! ([`MAX_CEREMONY_MESSAGE_LEN`]), so there is one set of limits. The enrollment token is
//! deliberately not size-checked here: every token problem must read the same
//! (`invalid device enrollment token`), and the state machine says so.

use dt_ceremony::limits::{
    MAX_CEREMONY_MESSAGE_LEN, MAX_CERTIFICATE_LEN, MAX_CREDENTIAL_ID_LEN, MAX_PUBLIC_KEY_LEN,
    MAX_SIGNATURE_LEN, MAX_TPM_BLOB_LEN, MAX_TPM_EVENT_LOG_LEN, MAX_TPM_ITEMS,
};
use dt_ceremony::messages::{
    AuthenticateChallenge, AuthenticateChallengeResponse, AuthenticateInit, AuthenticateRequest,
    AuthenticateResponse, AuthenticateSuccess, DeviceConfirmationToken, DeviceWebToken,
    EnrollChallenge, EnrollChallengeResponse, EnrollInit, EnrollPayload, EnrollRequest,
    EnrollResponse, EnrollSuccess, P256KeyStorage, UserCertificates,
};
use dt_ceremony::token::EnrollToken;
use dt_ceremony::tpm::{
    TpmAuthenticateChallenge, TpmAuthenticateChallengeResponse, TpmEncryptedCredential,
    TpmEnrollChallenge, TpmEnrollChallengeResponse, TpmEnrollPayload, TpmPcrValue,
    TpmPlatformParameters, TpmQuote,
};
use dt_types::device::DeviceCollectedData;

use crate::error::{check_count, check_len, required};
use crate::{ProtoError, v1 as pb};

/// Largest PCR digest (SHA-512).
const MAX_PCR_DIGEST_LEN: usize = 64;

/// Refuses a ceremony message whose encoding is over [`MAX_CEREMONY_MESSAGE_LEN`]; the
/// drivers call it on every message before converting it.
pub fn check_message_len(message: &'static str, m: &impl prost::Message) -> Result<(), ProtoError> {
    let len = m.encoded_len();
    if len > MAX_CEREMONY_MESSAGE_LEN {
        return Err(ProtoError::MessageTooLarge {
            message,
            len,
            max: MAX_CEREMONY_MESSAGE_LEN,
        });
    }
    Ok(())
}

/// The name of the message a request carries, for errors and logs (`EnrollInit`...).
pub fn enroll_request_name(m: &pb::EnrollDeviceRequest) -> &'static str {
    match &m.payload {
        Some(pb::enroll_device_request::Payload::Init(_)) => "EnrollInit",
        Some(pb::enroll_device_request::Payload::ChallengeResponse(_)) => "EnrollChallengeResponse",
        None => "EnrollDeviceRequest",
    }
}

/// See [`enroll_request_name`].
pub fn authenticate_request_name(m: &pb::AuthenticateDeviceRequest) -> &'static str {
    match &m.payload {
        Some(pb::authenticate_device_request::Payload::Init(_)) => "AuthenticateInit",
        Some(pb::authenticate_device_request::Payload::ChallengeResponse(_)) => {
            "AuthenticateChallengeResponse"
        }
        None => "AuthenticateDeviceRequest",
    }
}

// ---------------------------------------------------------------------------------------
// shared pieces

fn collected(d: Option<pb::DeviceCollectedData>) -> Result<DeviceCollectedData, ProtoError> {
    DeviceCollectedData::try_from(required(d, "device_data")?)
}

impl From<&TpmPlatformParameters> for pb::TpmPlatformParameters {
    fn from(p: &TpmPlatformParameters) -> Self {
        pb::TpmPlatformParameters {
            quote: Some(pb::TpmQuote {
                attest: p.quote.attest.clone(),
                signature: p.quote.signature.clone(),
                pcrs: p
                    .quote
                    .pcrs
                    .iter()
                    .map(|v| pb::TpmPcrValue {
                        index: v.index,
                        digest: v.digest.clone(),
                    })
                    .collect(),
            }),
            event_log: p.event_log.clone(),
        }
    }
}

impl TryFrom<pb::TpmPlatformParameters> for TpmPlatformParameters {
    type Error = ProtoError;
    fn try_from(p: pb::TpmPlatformParameters) -> Result<Self, ProtoError> {
        let q = required(p.quote, "tpm.quote")?;
        check_len("tpm.quote.attest", q.attest.len(), MAX_TPM_BLOB_LEN)?;
        check_len("tpm.quote.signature", q.signature.len(), MAX_TPM_BLOB_LEN)?;
        check_count("tpm.quote.pcrs", q.pcrs.len(), MAX_TPM_ITEMS)?;
        for v in &q.pcrs {
            check_len("tpm.quote.pcr", v.digest.len(), MAX_PCR_DIGEST_LEN)?;
        }
        if let Some(log) = &p.event_log {
            check_len("tpm.event_log", log.len(), MAX_TPM_EVENT_LOG_LEN)?;
        }
        Ok(TpmPlatformParameters {
            quote: TpmQuote {
                attest: q.attest,
                signature: q.signature,
                pcrs: q
                    .pcrs
                    .into_iter()
                    .map(|v| TpmPcrValue {
                        index: v.index,
                        digest: v.digest,
                    })
                    .collect(),
            },
            event_log: p.event_log,
        })
    }
}

fn platform(p: Option<pb::TpmPlatformParameters>) -> Result<TpmPlatformParameters, ProtoError> {
    TpmPlatformParameters::try_from(required(p, "tpm.platform_parameters")?)
}

fn p256_challenge(c: pb::P256Challenge) -> Result<Vec<u8>, ProtoError> {
    check_len("challenge", c.challenge.len(), MAX_TPM_BLOB_LEN)?;
    Ok(c.challenge)
}

fn p256_signature(r: pb::P256ChallengeResponse) -> Result<Vec<u8>, ProtoError> {
    check_len("signature_der", r.signature_der.len(), MAX_SIGNATURE_LEN)?;
    Ok(r.signature_der)
}

impl From<&UserCertificates> for pb::UserCertificates {
    fn from(c: &UserCertificates) -> Self {
        pb::UserCertificates {
            x509_der: c.x509_der.clone(),
            ssh_authorized_key: c.ssh_authorized_key.clone(),
        }
    }
}

impl TryFrom<pb::UserCertificates> for UserCertificates {
    type Error = ProtoError;
    fn try_from(c: pb::UserCertificates) -> Result<Self, ProtoError> {
        check_len(
            "user_certificates.x509_der",
            c.x509_der.len(),
            MAX_CERTIFICATE_LEN,
        )?;
        if let Some(ssh) = &c.ssh_authorized_key {
            check_len(
                "user_certificates.ssh_authorized_key",
                ssh.len(),
                MAX_CERTIFICATE_LEN,
            )?;
        }
        Ok(UserCertificates {
            x509_der: c.x509_der,
            ssh_authorized_key: c.ssh_authorized_key,
        })
    }
}

fn certificates(c: Option<pb::UserCertificates>) -> Result<UserCertificates, ProtoError> {
    UserCertificates::try_from(required(c, "user_certificates")?)
}

/// Web and confirmation tokens are 32 random bytes in base64url, their ids uuids.
const MAX_WEB_TOKEN_LEN: usize = 128;

fn credential_id(id: String) -> Result<String, ProtoError> {
    check_len("credential_id", id.len(), MAX_CREDENTIAL_ID_LEN)?;
    Ok(id)
}

// ---------------------------------------------------------------------------------------
// enrollment

impl From<&EnrollInit> for pb::EnrollInit {
    fn from(i: &EnrollInit) -> Self {
        use pb::enroll_init::Payload;
        pb::EnrollInit {
            token: i.token.expose().to_string(),
            credential_id: i.credential_id.clone(),
            device_data: Some((&i.device_data).into()),
            payload: Some(match &i.payload {
                EnrollPayload::P256 {
                    public_key_der,
                    storage,
                } => Payload::P256(pb::P256EnrollPayload {
                    public_key_der: public_key_der.clone(),
                    storage: match storage {
                        P256KeyStorage::SecureEnclave => pb::P256KeyStorage::SecureEnclave,
                        P256KeyStorage::Software => pb::P256KeyStorage::Software,
                    }
                    .into(),
                }),
                EnrollPayload::Tpm(t) => Payload::Tpm(pb::TpmEnrollPayload {
                    ek_public: t.ek_public.clone(),
                    ek_cert: t.ek_cert.clone(),
                    ak_public: t.ak_public.clone(),
                }),
            }),
        }
    }
}

impl TryFrom<pb::EnrollInit> for EnrollInit {
    type Error = ProtoError;
    fn try_from(i: pb::EnrollInit) -> Result<Self, ProtoError> {
        use pb::enroll_init::Payload;
        let credential_id = credential_id(i.credential_id)?;
        let device_data = collected(i.device_data)?;
        let payload = match required(i.payload, "EnrollInit.payload")? {
            Payload::P256(p) => {
                check_len("public_key_der", p.public_key_der.len(), MAX_PUBLIC_KEY_LEN)?;
                let storage = match pb::P256KeyStorage::try_from(p.storage) {
                    Ok(pb::P256KeyStorage::SecureEnclave) => P256KeyStorage::SecureEnclave,
                    Ok(pb::P256KeyStorage::Software) => P256KeyStorage::Software,
                    Ok(pb::P256KeyStorage::Unspecified) | Err(_) => {
                        return Err(ProtoError::UnknownEnum {
                            field: "p256.storage",
                            value: p.storage,
                        });
                    }
                };
                EnrollPayload::P256 {
                    public_key_der: p.public_key_der,
                    storage,
                }
            }
            Payload::Tpm(t) => {
                check_len("tpm.ek_public", t.ek_public.len(), MAX_TPM_BLOB_LEN)?;
                if let Some(cert) = &t.ek_cert {
                    check_len("tpm.ek_cert", cert.len(), MAX_TPM_BLOB_LEN)?;
                }
                check_len("tpm.ak_public", t.ak_public.len(), MAX_TPM_BLOB_LEN)?;
                EnrollPayload::Tpm(TpmEnrollPayload {
                    ek_public: t.ek_public,
                    ek_cert: t.ek_cert,
                    ak_public: t.ak_public,
                })
            }
        };
        Ok(EnrollInit {
            token: EnrollToken::new(i.token),
            credential_id,
            device_data,
            payload,
        })
    }
}

impl From<&EnrollChallengeResponse> for pb::EnrollChallengeResponse {
    fn from(r: &EnrollChallengeResponse) -> Self {
        use pb::enroll_challenge_response::Response;
        pb::EnrollChallengeResponse {
            response: Some(match r {
                EnrollChallengeResponse::P256 { signature_der } => {
                    Response::P256(pb::P256ChallengeResponse {
                        signature_der: signature_der.clone(),
                    })
                }
                EnrollChallengeResponse::Tpm(t) => Response::Tpm(pb::TpmEnrollChallengeResponse {
                    solution: t.solution.clone(),
                    platform_parameters: Some((&t.platform_parameters).into()),
                }),
            }),
        }
    }
}

impl TryFrom<pb::EnrollChallengeResponse> for EnrollChallengeResponse {
    type Error = ProtoError;
    fn try_from(r: pb::EnrollChallengeResponse) -> Result<Self, ProtoError> {
        use pb::enroll_challenge_response::Response;
        Ok(
            match required(r.response, "EnrollChallengeResponse.response")? {
                Response::P256(p) => EnrollChallengeResponse::P256 {
                    signature_der: p256_signature(p)?,
                },
                Response::Tpm(t) => {
                    check_len("tpm.solution", t.solution.len(), MAX_TPM_BLOB_LEN)?;
                    EnrollChallengeResponse::Tpm(TpmEnrollChallengeResponse {
                        solution: t.solution,
                        platform_parameters: platform(t.platform_parameters)?,
                    })
                }
            },
        )
    }
}

impl From<&EnrollRequest> for pb::EnrollDeviceRequest {
    fn from(r: &EnrollRequest) -> Self {
        use pb::enroll_device_request::Payload;
        pb::EnrollDeviceRequest {
            payload: Some(match r {
                EnrollRequest::Init(i) => Payload::Init(i.as_ref().into()),
                EnrollRequest::ChallengeResponse(c) => Payload::ChallengeResponse(c.into()),
            }),
        }
    }
}

impl TryFrom<pb::EnrollDeviceRequest> for EnrollRequest {
    type Error = ProtoError;
    fn try_from(r: pb::EnrollDeviceRequest) -> Result<Self, ProtoError> {
        use pb::enroll_device_request::Payload;
        Ok(match required(r.payload, "EnrollDeviceRequest.payload")? {
            Payload::Init(i) => EnrollRequest::Init(Box::new(i.try_into()?)),
            Payload::ChallengeResponse(c) => EnrollRequest::ChallengeResponse(c.try_into()?),
        })
    }
}

impl TryFrom<&EnrollResponse> for pb::EnrollDeviceResponse {
    type Error = ProtoError;
    fn try_from(r: &EnrollResponse) -> Result<Self, ProtoError> {
        use pb::enroll_challenge::Challenge;
        use pb::enroll_device_response::Payload;
        Ok(pb::EnrollDeviceResponse {
            payload: Some(match r {
                EnrollResponse::Challenge(EnrollChallenge::P256 { challenge }) => {
                    Payload::Challenge(pb::EnrollChallenge {
                        challenge: Some(Challenge::P256(pb::P256Challenge {
                            challenge: challenge.clone(),
                        })),
                    })
                }
                EnrollResponse::Challenge(EnrollChallenge::Tpm(t)) => {
                    Payload::Challenge(pb::EnrollChallenge {
                        challenge: Some(Challenge::Tpm(pb::TpmEnrollChallenge {
                            encrypted_credential: Some(pb::TpmEncryptedCredential {
                                credential_blob: t.encrypted_credential.credential_blob.clone(),
                                encrypted_secret: t.encrypted_credential.encrypted_secret.clone(),
                            }),
                            attestation_nonce: t.attestation_nonce.clone(),
                        })),
                    })
                }
                EnrollResponse::Success(s) => Payload::Success(pb::EnrollSuccess {
                    device: Some(pb::Device::try_from(&s.device)?),
                }),
            }),
        })
    }
}

impl TryFrom<pb::EnrollDeviceResponse> for EnrollResponse {
    type Error = ProtoError;
    fn try_from(r: pb::EnrollDeviceResponse) -> Result<Self, ProtoError> {
        use pb::enroll_challenge::Challenge;
        use pb::enroll_device_response::Payload;
        Ok(match required(r.payload, "EnrollDeviceResponse.payload")? {
            Payload::Challenge(c) => EnrollResponse::Challenge(
                match required(c.challenge, "EnrollChallenge.challenge")? {
                    Challenge::P256(p) => EnrollChallenge::P256 {
                        challenge: p256_challenge(p)?,
                    },
                    Challenge::Tpm(t) => {
                        let ec = required(t.encrypted_credential, "tpm.encrypted_credential")?;
                        check_len(
                            "tpm.credential_blob",
                            ec.credential_blob.len(),
                            MAX_TPM_BLOB_LEN,
                        )?;
                        check_len(
                            "tpm.encrypted_secret",
                            ec.encrypted_secret.len(),
                            MAX_TPM_BLOB_LEN,
                        )?;
                        check_len(
                            "tpm.attestation_nonce",
                            t.attestation_nonce.len(),
                            MAX_TPM_BLOB_LEN,
                        )?;
                        EnrollChallenge::Tpm(TpmEnrollChallenge {
                            encrypted_credential: TpmEncryptedCredential {
                                credential_blob: ec.credential_blob,
                                encrypted_secret: ec.encrypted_secret,
                            },
                            attestation_nonce: t.attestation_nonce,
                        })
                    }
                },
            ),
            Payload::Success(s) => EnrollResponse::Success(Box::new(EnrollSuccess {
                device: required(s.device, "EnrollSuccess.device")?.try_into()?,
            })),
        })
    }
}

// ---------------------------------------------------------------------------------------
// authentication

impl From<&AuthenticateInit> for pb::AuthenticateInit {
    fn from(i: &AuthenticateInit) -> Self {
        pb::AuthenticateInit {
            user_certificates: Some((&i.user_certificates).into()),
            credential_id: i.credential_id.clone(),
            device_data: Some((&i.device_data).into()),
            device_web_token: i.device_web_token.as_ref().map(|t| pb::DeviceWebToken {
                id: t.id.clone(),
                token: t.token.clone(),
            }),
        }
    }
}

impl TryFrom<pb::AuthenticateInit> for AuthenticateInit {
    type Error = ProtoError;
    fn try_from(i: pb::AuthenticateInit) -> Result<Self, ProtoError> {
        Ok(AuthenticateInit {
            user_certificates: certificates(i.user_certificates)?,
            credential_id: credential_id(i.credential_id)?,
            device_data: collected(i.device_data)?,
            device_web_token: match i.device_web_token {
                None => None,
                Some(t) => {
                    check_len("device_web_token.id", t.id.len(), MAX_WEB_TOKEN_LEN)?;
                    check_len("device_web_token.token", t.token.len(), MAX_WEB_TOKEN_LEN)?;
                    Some(DeviceWebToken {
                        id: t.id,
                        token: t.token,
                    })
                }
            },
        })
    }
}

impl From<&AuthenticateChallengeResponse> for pb::AuthenticateChallengeResponse {
    fn from(r: &AuthenticateChallengeResponse) -> Self {
        use pb::authenticate_challenge_response::Response;
        pb::AuthenticateChallengeResponse {
            response: Some(match r {
                AuthenticateChallengeResponse::P256 { signature_der } => {
                    Response::P256(pb::P256ChallengeResponse {
                        signature_der: signature_der.clone(),
                    })
                }
                AuthenticateChallengeResponse::Tpm(t) => {
                    Response::Tpm(pb::TpmAuthenticateChallengeResponse {
                        platform_parameters: Some((&t.platform_parameters).into()),
                    })
                }
            }),
        }
    }
}

impl TryFrom<pb::AuthenticateChallengeResponse> for AuthenticateChallengeResponse {
    type Error = ProtoError;
    fn try_from(r: pb::AuthenticateChallengeResponse) -> Result<Self, ProtoError> {
        use pb::authenticate_challenge_response::Response;
        Ok(
            match required(r.response, "AuthenticateChallengeResponse.response")? {
                Response::P256(p) => AuthenticateChallengeResponse::P256 {
                    signature_der: p256_signature(p)?,
                },
                Response::Tpm(t) => {
                    AuthenticateChallengeResponse::Tpm(TpmAuthenticateChallengeResponse {
                        platform_parameters: platform(t.platform_parameters)?,
                    })
                }
            },
        )
    }
}

impl From<&AuthenticateRequest> for pb::AuthenticateDeviceRequest {
    fn from(r: &AuthenticateRequest) -> Self {
        use pb::authenticate_device_request::Payload;
        pb::AuthenticateDeviceRequest {
            payload: Some(match r {
                AuthenticateRequest::Init(i) => Payload::Init(i.as_ref().into()),
                AuthenticateRequest::ChallengeResponse(c) => Payload::ChallengeResponse(c.into()),
            }),
        }
    }
}

impl TryFrom<pb::AuthenticateDeviceRequest> for AuthenticateRequest {
    type Error = ProtoError;
    fn try_from(r: pb::AuthenticateDeviceRequest) -> Result<Self, ProtoError> {
        use pb::authenticate_device_request::Payload;
        Ok(
            match required(r.payload, "AuthenticateDeviceRequest.payload")? {
                Payload::Init(i) => AuthenticateRequest::Init(Box::new(i.try_into()?)),
                Payload::ChallengeResponse(c) => {
                    AuthenticateRequest::ChallengeResponse(c.try_into()?)
                }
            },
        )
    }
}

impl From<&AuthenticateResponse> for pb::AuthenticateDeviceResponse {
    fn from(r: &AuthenticateResponse) -> Self {
        use pb::authenticate_challenge::Challenge;
        use pb::authenticate_device_response::Payload;
        pb::AuthenticateDeviceResponse {
            payload: Some(match r {
                AuthenticateResponse::Challenge(AuthenticateChallenge::P256 { challenge }) => {
                    Payload::Challenge(pb::AuthenticateChallenge {
                        challenge: Some(Challenge::P256(pb::P256Challenge {
                            challenge: challenge.clone(),
                        })),
                    })
                }
                AuthenticateResponse::Challenge(AuthenticateChallenge::Tpm(t)) => {
                    Payload::Challenge(pb::AuthenticateChallenge {
                        challenge: Some(Challenge::Tpm(pb::TpmAuthenticateChallenge {
                            attestation_nonce: t.attestation_nonce.clone(),
                        })),
                    })
                }
                AuthenticateResponse::Success(s) => Payload::Success(pb::AuthenticateSuccess {
                    user_certificates: Some((&s.user_certificates).into()),
                }),
                AuthenticateResponse::WebConfirmation(c) => {
                    Payload::WebConfirmation(pb::DeviceConfirmationToken {
                        id: c.id.clone(),
                        token: c.token.clone(),
                    })
                }
            }),
        }
    }
}

impl TryFrom<pb::AuthenticateDeviceResponse> for AuthenticateResponse {
    type Error = ProtoError;
    fn try_from(r: pb::AuthenticateDeviceResponse) -> Result<Self, ProtoError> {
        use pb::authenticate_challenge::Challenge;
        use pb::authenticate_device_response::Payload;
        Ok(
            match required(r.payload, "AuthenticateDeviceResponse.payload")? {
                Payload::Challenge(c) => AuthenticateResponse::Challenge(
                    match required(c.challenge, "AuthenticateChallenge.challenge")? {
                        Challenge::P256(p) => AuthenticateChallenge::P256 {
                            challenge: p256_challenge(p)?,
                        },
                        Challenge::Tpm(t) => {
                            check_len(
                                "tpm.attestation_nonce",
                                t.attestation_nonce.len(),
                                MAX_TPM_BLOB_LEN,
                            )?;
                            AuthenticateChallenge::Tpm(TpmAuthenticateChallenge {
                                attestation_nonce: t.attestation_nonce,
                            })
                        }
                    },
                ),
                Payload::Success(s) => AuthenticateResponse::Success(AuthenticateSuccess {
                    user_certificates: certificates(s.user_certificates)?,
                }),
                Payload::WebConfirmation(c) => {
                    check_len("web_confirmation.id", c.id.len(), MAX_WEB_TOKEN_LEN)?;
                    check_len("web_confirmation.token", c.token.len(), MAX_WEB_TOKEN_LEN)?;
                    AuthenticateResponse::WebConfirmation(DeviceConfirmationToken {
                        id: c.id,
                        token: c.token,
                    })
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn data() -> DeviceCollectedData {
        DeviceCollectedData {
            collect_time: datetime!(2026-12-06 10:00:00 UTC),
            record_time: None,
            os_type: Some(dt_types::device::OsType::Linux),
            serial_number: "S1".into(),
            model_identifier: String::new(),
            os_version: "12".into(),
            os_build: String::new(),
            os_username: "u".into(),
            hostname: "h".into(),
            system_serial_number: String::new(),
            base_board_serial_number: String::new(),
            reported_asset_tag: String::new(),
            serial_source: "override".into(),
        }
    }

    fn platform_params(event_log_len: Option<usize>) -> TpmPlatformParameters {
        TpmPlatformParameters {
            quote: TpmQuote {
                attest: vec![1; 100],
                signature: vec![2; 70],
                pcrs: (0..8)
                    .map(|i| TpmPcrValue {
                        index: i,
                        digest: vec![3; 32],
                    })
                    .collect(),
            },
            event_log: event_log_len.map(|n| vec![0xee; n]),
        }
    }

    fn round_trip_request(r: EnrollRequest) {
        let wire = pb::EnrollDeviceRequest::from(&r);
        let bytes = prost::Message::encode_to_vec(&wire);
        let decoded: pb::EnrollDeviceRequest = prost::Message::decode(bytes.as_slice()).unwrap();
        assert_eq!(EnrollRequest::try_from(decoded).unwrap(), r);
    }

    #[test]
    fn every_enroll_request_survives_the_wire() {
        round_trip_request(EnrollRequest::Init(Box::new(EnrollInit {
            token: EnrollToken::new("t"),
            credential_id: "c".into(),
            device_data: data(),
            payload: EnrollPayload::P256 {
                public_key_der: vec![1; 91],
                storage: P256KeyStorage::Software,
            },
        })));
        round_trip_request(EnrollRequest::Init(Box::new(EnrollInit {
            token: EnrollToken::new(""),
            credential_id: "c".into(),
            device_data: data(),
            payload: EnrollPayload::Tpm(TpmEnrollPayload {
                ek_public: vec![1; 300],
                ek_cert: None,
                ak_public: vec![2; 280],
            }),
        })));
        round_trip_request(EnrollRequest::ChallengeResponse(
            EnrollChallengeResponse::P256 {
                signature_der: vec![4; 71],
            },
        ));
        round_trip_request(EnrollRequest::ChallengeResponse(
            EnrollChallengeResponse::Tpm(TpmEnrollChallengeResponse {
                solution: vec![5; 32],
                platform_parameters: platform_params(Some(34 * 1024)),
            }),
        ));
    }

    #[test]
    fn every_authenticate_message_survives_the_wire() {
        let certs = UserCertificates {
            x509_der: vec![1; 600],
            ssh_authorized_key: Some("ecdsa-sha2-nistp256-cert-v01@openssh.com AAAA".into()),
        };
        for r in [
            AuthenticateRequest::Init(Box::new(AuthenticateInit {
                user_certificates: certs.clone(),
                credential_id: "c".into(),
                device_data: data(),
                device_web_token: None,
            })),
            AuthenticateRequest::Init(Box::new(AuthenticateInit {
                user_certificates: certs.clone(),
                credential_id: "c".into(),
                device_data: data(),
                device_web_token: Some(DeviceWebToken {
                    id: "id".into(),
                    token: "t".into(),
                }),
            })),
            AuthenticateRequest::ChallengeResponse(AuthenticateChallengeResponse::Tpm(
                TpmAuthenticateChallengeResponse {
                    platform_parameters: platform_params(None),
                },
            )),
        ] {
            let wire = pb::AuthenticateDeviceRequest::from(&r);
            assert_eq!(AuthenticateRequest::try_from(wire).unwrap(), r);
        }
        for r in [
            AuthenticateResponse::Challenge(AuthenticateChallenge::P256 {
                challenge: vec![9; 32],
            }),
            AuthenticateResponse::Challenge(AuthenticateChallenge::Tpm(TpmAuthenticateChallenge {
                attestation_nonce: vec![8; 20],
            })),
            AuthenticateResponse::Success(AuthenticateSuccess {
                user_certificates: certs.clone(),
            }),
            AuthenticateResponse::WebConfirmation(DeviceConfirmationToken {
                id: "id".into(),
                token: "t".into(),
            }),
        ] {
            let wire = pb::AuthenticateDeviceResponse::from(&r);
            assert_eq!(AuthenticateResponse::try_from(wire).unwrap(), r);
        }
    }

    #[test]
    fn an_event_log_at_the_limit_fits_one_message_and_one_byte_more_does_not() {
        let at_limit = EnrollRequest::ChallengeResponse(EnrollChallengeResponse::Tpm(
            TpmEnrollChallengeResponse {
                solution: vec![5; 32],
                platform_parameters: platform_params(Some(MAX_TPM_EVENT_LOG_LEN)),
            },
        ));
        let wire = pb::EnrollDeviceRequest::from(&at_limit);
        check_message_len("EnrollChallengeResponse", &wire).unwrap();
        assert_eq!(EnrollRequest::try_from(wire).unwrap(), at_limit);

        let over = EnrollRequest::ChallengeResponse(EnrollChallengeResponse::Tpm(
            TpmEnrollChallengeResponse {
                solution: vec![5; 32],
                platform_parameters: platform_params(Some(MAX_TPM_EVENT_LOG_LEN + 1)),
            },
        ));
        let wire = pb::EnrollDeviceRequest::from(&over);
        assert_eq!(
            EnrollRequest::try_from(wire).unwrap_err().to_string(),
            "tpm.event_log is 524289 bytes, more than the 524288 accepted"
        );
    }

    #[test]
    fn the_largest_legal_message_is_under_the_message_limit() {
        let max = EnrollRequest::ChallengeResponse(EnrollChallengeResponse::Tpm(
            TpmEnrollChallengeResponse {
                solution: vec![5; MAX_TPM_BLOB_LEN],
                platform_parameters: TpmPlatformParameters {
                    quote: TpmQuote {
                        attest: vec![1; MAX_TPM_BLOB_LEN],
                        signature: vec![2; MAX_TPM_BLOB_LEN],
                        pcrs: (0..MAX_TPM_ITEMS as u32)
                            .map(|i| TpmPcrValue {
                                index: u32::MAX - i,
                                digest: vec![3; MAX_PCR_DIGEST_LEN],
                            })
                            .collect(),
                    },
                    event_log: Some(vec![0; MAX_TPM_EVENT_LOG_LEN]),
                },
            },
        ));
        let wire = pb::EnrollDeviceRequest::from(&max);
        check_message_len("EnrollChallengeResponse", &wire).unwrap();
        let mut bigger = wire.clone();
        if let Some(pb::enroll_device_request::Payload::ChallengeResponse(r)) = &mut bigger.payload
            && let Some(pb::enroll_challenge_response::Response::Tpm(t)) = &mut r.response
        {
            t.solution = vec![0; MAX_CEREMONY_MESSAGE_LEN];
        }
        assert!(matches!(
            check_message_len("EnrollChallengeResponse", &bigger).unwrap_err(),
            ProtoError::MessageTooLarge { .. }
        ));
    }

    #[test]
    fn shapes_are_checked() {
        assert_eq!(
            EnrollRequest::try_from(pb::EnrollDeviceRequest { payload: None }).unwrap_err(),
            ProtoError::Missing {
                field: "EnrollDeviceRequest.payload"
            }
        );
        let mut init = pb::EnrollInit::from(&EnrollInit {
            token: EnrollToken::new("t"),
            credential_id: "c".into(),
            device_data: data(),
            payload: EnrollPayload::P256 {
                public_key_der: vec![1; 91],
                storage: P256KeyStorage::Software,
            },
        });
        if let Some(pb::enroll_init::Payload::P256(p)) = &mut init.payload {
            p.storage = 0;
        }
        assert!(matches!(
            EnrollInit::try_from(init.clone()).unwrap_err(),
            ProtoError::UnknownEnum {
                field: "p256.storage",
                ..
            }
        ));
        init.payload = None;
        assert_eq!(
            EnrollInit::try_from(init.clone()).unwrap_err().to_string(),
            "EnrollInit.payload is missing"
        );
        init.credential_id = "c".repeat(129);
        assert_eq!(
            EnrollInit::try_from(init).unwrap_err().to_string(),
            "credential_id is 129 bytes, more than the 128 accepted"
        );
        let tpm = pb::TpmAuthenticateChallengeResponse {
            platform_parameters: Some(pb::TpmPlatformParameters {
                quote: None,
                event_log: None,
            }),
        };
        assert_eq!(
            AuthenticateChallengeResponse::try_from(pb::AuthenticateChallengeResponse {
                response: Some(pb::authenticate_challenge_response::Response::Tpm(tpm)),
            })
            .unwrap_err(),
            ProtoError::Missing { field: "tpm.quote" }
        );
    }
}
