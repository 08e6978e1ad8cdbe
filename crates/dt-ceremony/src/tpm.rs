//! TPM 2.0 shapes in the ceremonies, the verifier seam, and its implementation on
//! `dt_attest::tpm`.
//!
//! The TPM path (DESIGN.md §4): at enrollment the device sends its endorsement key's public
//! area (and EK certificate when its TPM has one) and its attestation key's (AK) public
//! area; the server seals a fresh secret to the EK for that AK with TPM2_MakeCredential and
//! sends it with a 20-byte nonce; the device answers with the secret (TPM2_ActivateCredential
//! releases it only inside the TPM holding both keys) and a quote over the nonce. At
//! authentication the device only quotes over a fresh nonce with the AK stored at
//! enrollment. A TPM credential's id is derived from the AK (`dt_attest::tpm::credential_id`)
//! and must be the one the device announced.
//!
//! The ceremonies own the flow and the deadlines; everything that needs TPM structures or
//! their cryptography is behind [`TpmVerifier`], which the server driver supplies —
//! normally [`AttestTpmVerifier`], built from the cluster's `ekcert_allowed_cas`. A server
//! without one refuses TPM devices with a typed "not supported by this server yet" error.
//!
//! The shapes here mirror `dt_attest::tpm` (TPM2B_PUBLIC bytes, MakeCredential output, a
//! quote with its SHA-256 PCR values) and the client's `dt_device::tpm`.

use std::fmt;

use dt_types::device::AttestationType;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::env::Env;
use crate::error::PeerMisbehaved;
use crate::limits::{MAX_TPM_BLOB_LEN, MAX_TPM_EVENT_LOG_LEN, MAX_TPM_ITEMS, check_len};

/// Enrollment payload of a TPM device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmEnrollPayload {
    /// TPM2B_PUBLIC of the EK (MakeCredential needs its name algorithm and symmetric
    /// definition, which a certificate doesn't carry).
    pub ek_public: Vec<u8>,
    /// The EK certificate (DER) from the TPM's NV storage, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ek_cert: Option<Vec<u8>>,
    /// TPM2B_PUBLIC of the AK.
    pub ak_public: Vec<u8>,
}

/// TPM2_MakeCredential output: what TPM2_ActivateCredential takes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmEncryptedCredential {
    /// TPM2B_ID_OBJECT.
    pub credential_blob: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET.
    pub encrypted_secret: Vec<u8>,
}

/// Server to device at TPM enrollment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmEnrollChallenge {
    pub encrypted_credential: TpmEncryptedCredential,
    pub attestation_nonce: Vec<u8>,
}

/// One PCR of the SHA-256 bank.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmPcrValue {
    pub index: u32,
    pub digest: Vec<u8>,
}

/// A quote: the TPMS_ATTEST the TPM signed, the AK's TPMT_SIGNATURE, and the quoted PCRs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmQuote {
    pub attest: Vec<u8>,
    pub signature: Vec<u8>,
    pub pcrs: Vec<TpmPcrValue>,
}

/// What a device reports about its platform, bound to the nonce by the quote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmPlatformParameters {
    pub quote: TpmQuote,
    /// The firmware (TCG) event log, when the device could read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_log: Option<Vec<u8>>,
}

/// Device to server at TPM enrollment.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmEnrollChallengeResponse {
    /// The secret TPM2_ActivateCredential released.
    pub solution: Vec<u8>,
    pub platform_parameters: TpmPlatformParameters,
}

impl fmt::Debug for TpmEnrollChallengeResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TpmEnrollChallengeResponse")
            .field("solution", &"<secret>")
            .field("platform_parameters", &self.platform_parameters)
            .finish()
    }
}

/// Server to device at TPM authentication.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmAuthenticateChallenge {
    pub attestation_nonce: Vec<u8>,
}

/// Device to server at TPM authentication.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmAuthenticateChallengeResponse {
    pub platform_parameters: TpmPlatformParameters,
}

/// What the verifier established about a TPM credential; stored in the device record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmCredentialFacts {
    /// `tpm_ekpub`, `tpm_ekcert` or `tpm_ekcert_trusted`.
    pub attestation_type: AttestationType,
    /// Serial of the EK certificate, when there was one.
    pub ekcert_serial: Option<String>,
    /// The EK certificate itself (DER), kept for `ekcert_check_at_authentication`.
    pub ekcert_der: Option<Vec<u8>>,
    /// TPM2B_PUBLIC of the AK: what later quotes are verified with.
    pub ak_public: Vec<u8>,
}

/// A TPM check that failed. Messages name the check that failed and are shown to the
/// device, so they must not include server secrets.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TpmVerifyError {
    /// The activation secret was wrong: the EK and the AK are not in the same TPM.
    #[error("wrong activation secret")]
    WrongActivationSecret,
    #[error("{0}")]
    Failed(String),
}

/// TPM evidence checks the server driver supplies.
pub trait TpmVerifier: Send + Sync {
    /// Checks the EK (certificate chain to `ekcert_allowed_cas` when set; an EK without
    /// certificate is refused then) and the AK (restricted signing key), then seals a fresh
    /// secret to the EK for the AK's name (TPM2_MakeCredential, TPM 2.0 Library Part 1 §24)
    /// and picks the nonce. The pending value keeps the secret until the answer comes.
    fn begin_enrollment(
        &self,
        payload: &TpmEnrollPayload,
        now: OffsetDateTime,
        env: &mut dyn Env,
    ) -> Result<(Box<dyn TpmPendingEnrollment>, TpmEnrollChallenge), TpmVerifyError>;

    /// Checks an authentication quote: signed by the AK in `ak_public` (TPM2B_PUBLIC),
    /// over `nonce`, PCR values matching the quoted digest.
    fn verify_authentication(
        &self,
        ak_public: &[u8],
        nonce: &[u8],
        platform: &TpmPlatformParameters,
    ) -> Result<(), TpmVerifyError>;
}

/// Server state of a TPM enrollment between challenge and answer. Holds the activation
/// secret: implementations must not print it in `Debug` and should wipe it on drop.
pub trait TpmPendingEnrollment: Send + Sync {
    /// The credential id the device must have announced (derived from the AK).
    fn credential_id(&self) -> String;

    /// Compares the activated secret in constant time and verifies the quote over the
    /// nonce; returns what to store.
    fn finish(
        self: Box<Self>,
        response: &TpmEnrollChallengeResponse,
    ) -> Result<TpmCredentialFacts, TpmVerifyError>;
}

// ---------------------------------------------------------------------------------------
// The verifier on dt_attest::tpm.

/// [`TpmVerifier`] on `dt_attest::tpm`, with the cluster's `ekcert_allowed_cas`.
#[derive(Clone, Debug, Default)]
pub struct AttestTpmVerifier {
    allowed_cas: Vec<String>,
}

impl AttestTpmVerifier {
    /// Builds a verifier; refuses allow-list entries that are not PEM CA certificates.
    pub fn new(ekcert_allowed_cas: Vec<String>) -> Result<Self, TpmVerifyError> {
        for (i, pem) in ekcert_allowed_cas.iter().enumerate() {
            dt_attest::tpm::validate_allowed_ca_pem(pem).map_err(|e| {
                TpmVerifyError::Failed(format!("device_trust.ekcert_allowed_cas[{i}]: {e}"))
            })?;
        }
        Ok(AttestTpmVerifier {
            allowed_cas: ekcert_allowed_cas,
        })
    }
}

/// `ekcert_check_at_authentication`: checks an enrolled TPM credential's stored EK
/// certificate against today's `ekcert_allowed_cas`. Credentials that are not TPM ones pass
/// (there is no EK); a TPM credential enrolled before certificates were stored has none and
/// is refused while CAs are listed (fail closed: re-enroll it).
pub fn recheck_ek_cert(
    credential: &dt_types::device::DeviceCredential,
    ekcert_allowed_cas: &[String],
    now: OffsetDateTime,
) -> Result<(), TpmVerifyError> {
    use base64::Engine as _;
    if !matches!(
        credential.attestation_type,
        AttestationType::TpmEkpub | AttestationType::TpmEkcert | AttestationType::TpmEkcertTrusted
    ) {
        return Ok(());
    }
    let der = match &credential.tpm_ekcert_der {
        None => None,
        Some(b64) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| {
                    TpmVerifyError::Failed("the stored ek certificate is not base64".into())
                })?,
        ),
    };
    dt_attest::tpm::recheck_ek_cert(der.as_deref(), ekcert_allowed_cas, now.into())
        .map_err(from_attest)
}

fn from_attest(e: dt_attest::tpm::TpmError) -> TpmVerifyError {
    match e {
        dt_attest::tpm::TpmError::PeerMisbehaved(
            dt_attest::tpm::PeerMisbehaved::WrongActivationSecret,
        ) => TpmVerifyError::WrongActivationSecret,
        other => TpmVerifyError::Failed(other.to_string()),
    }
}

fn to_attest_quote(q: &TpmQuote) -> dt_attest::tpm::TpmQuote {
    dt_attest::tpm::TpmQuote {
        attest: q.attest.clone(),
        signature: q.signature.clone(),
        pcrs: q
            .pcrs
            .iter()
            .map(|p| dt_attest::tpm::PcrValue {
                index: p.index,
                digest: p.digest.clone(),
            })
            .collect(),
    }
}

struct AttestPending(dt_attest::tpm::EnrollChallengeState);

impl TpmPendingEnrollment for AttestPending {
    fn credential_id(&self) -> String {
        self.0.credential_id()
    }

    fn finish(
        self: Box<Self>,
        response: &TpmEnrollChallengeResponse,
    ) -> Result<TpmCredentialFacts, TpmVerifyError> {
        let verified = dt_attest::tpm::finish_enrollment(
            self.0,
            &response.solution,
            &to_attest_quote(&response.platform_parameters.quote),
        )
        .map_err(from_attest)?;
        Ok(TpmCredentialFacts {
            attestation_type: match verified.attestation_type {
                dt_attest::tpm::TpmAttestationType::EkPub => AttestationType::TpmEkpub,
                dt_attest::tpm::TpmAttestationType::EkCert => AttestationType::TpmEkcert,
                dt_attest::tpm::TpmAttestationType::EkCertTrusted => {
                    AttestationType::TpmEkcertTrusted
                }
            },
            ekcert_serial: verified.ek_cert_serial,
            ekcert_der: verified.ek_cert,
            ak_public: verified.ak_public,
        })
    }
}

impl TpmVerifier for AttestTpmVerifier {
    fn begin_enrollment(
        &self,
        payload: &TpmEnrollPayload,
        now: OffsetDateTime,
        env: &mut dyn Env,
    ) -> Result<(Box<dyn TpmPendingEnrollment>, TpmEnrollChallenge), TpmVerifyError> {
        let request = dt_attest::tpm::TpmEnrollRequest {
            ek_public: payload.ek_public.clone(),
            ek_cert: payload.ek_cert.clone(),
            ak_public: payload.ak_public.clone(),
        };
        let mut fill = |out: &mut [u8]| env.random_bytes(out);
        let (state, challenge) =
            dt_attest::tpm::begin_enrollment(&request, &self.allowed_cas, now.into(), &mut fill)
                .map_err(from_attest)?;
        Ok((
            Box::new(AttestPending(state)),
            TpmEnrollChallenge {
                encrypted_credential: TpmEncryptedCredential {
                    credential_blob: challenge.credential.credential_blob,
                    encrypted_secret: challenge.credential.encrypted_secret,
                },
                attestation_nonce: challenge.nonce.to_vec(),
            },
        ))
    }

    fn verify_authentication(
        &self,
        ak_public: &[u8],
        nonce: &[u8],
        platform: &TpmPlatformParameters,
    ) -> Result<(), TpmVerifyError> {
        dt_attest::tpm::verify_auth_quote(ak_public, nonce, &to_attest_quote(&platform.quote))
            .map(|_| ())
            .map_err(from_attest)
    }
}

// ---------------------------------------------------------------------------------------
// Size limits.

impl TpmEnrollPayload {
    pub(crate) fn check_sizes(&self) -> Result<(), PeerMisbehaved> {
        check_len("tpm.ek_public", self.ek_public.len(), MAX_TPM_BLOB_LEN)?;
        if let Some(cert) = &self.ek_cert {
            check_len("tpm.ek_cert", cert.len(), MAX_TPM_BLOB_LEN)?;
        }
        check_len("tpm.ak_public", self.ak_public.len(), MAX_TPM_BLOB_LEN)?;
        Ok(())
    }
}

impl TpmPlatformParameters {
    pub(crate) fn check_sizes(&self) -> Result<(), PeerMisbehaved> {
        let q = &self.quote;
        check_len("tpm.quote.attest", q.attest.len(), MAX_TPM_BLOB_LEN)?;
        check_len("tpm.quote.signature", q.signature.len(), MAX_TPM_BLOB_LEN)?;
        check_len("tpm.quote.pcrs", q.pcrs.len(), MAX_TPM_ITEMS)?;
        for p in &q.pcrs {
            check_len("tpm.quote.pcr", p.digest.len(), 64)?;
        }
        if let Some(log) = &self.event_log {
            check_len("tpm.event_log", log.len(), MAX_TPM_EVENT_LOG_LEN)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct ZeroEnv;
    impl Env for ZeroEnv {
        fn now(&self) -> OffsetDateTime {
            OffsetDateTime::UNIX_EPOCH
        }
        fn random_bytes(&mut self, out: &mut [u8]) {
            out.fill(7);
        }
    }

    #[test]
    fn attest_verifier_refuses_garbage_with_the_structure_named() {
        let v = AttestTpmVerifier::new(vec![]).unwrap();
        let payload = TpmEnrollPayload {
            ek_public: vec![0, 2, 0xff, 0xff],
            ek_cert: None,
            ak_public: vec![1, 2, 3],
        };
        let err = match v.begin_enrollment(&payload, OffsetDateTime::UNIX_EPOCH, &mut ZeroEnv) {
            Err(e) => e,
            Ok(_) => panic!("garbage accepted"),
        };
        assert!(
            matches!(&err, TpmVerifyError::Failed(m) if m.contains("malformed")),
            "{err}"
        );
        let err = v
            .verify_authentication(&[9, 9], &[0; 20], &TpmPlatformParameters::default())
            .unwrap_err();
        assert!(matches!(err, TpmVerifyError::Failed(_)));
    }

    #[test]
    fn attest_verifier_refuses_a_bad_allow_list() {
        let err = AttestTpmVerifier::new(vec!["not a pem".into()]).unwrap_err();
        assert!(err.to_string().contains("ekcert_allowed_cas[0]"), "{err}");
    }

    #[test]
    fn wrong_activation_secret_keeps_its_meaning() {
        let e = from_attest(dt_attest::tpm::PeerMisbehaved::WrongActivationSecret.into());
        assert_eq!(e, TpmVerifyError::WrongActivationSecret);
    }
}
