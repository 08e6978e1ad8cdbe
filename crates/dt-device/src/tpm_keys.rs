//! [`DeviceKeys`] for the TPM key store (feature `tpm`): a TPM credential answers the
//! ceremonies' TPM requests — TPM2_ActivateCredential plus a quote at enrollment, a quote at
//! authentication — and never signs arbitrary bytes (its AK is a restricted key).

use dt_ceremony::messages::EnrollPayload;
use dt_ceremony::proof::{Proof, ProofRequest};
use dt_ceremony::tpm::{
    TpmAuthenticateChallengeResponse, TpmEnrollChallengeResponse, TpmEnrollPayload, TpmPcrValue,
    TpmPlatformParameters, TpmQuote,
};
use dt_types::device::AttestationType;

use crate::error::DeviceError;
use crate::keys::{CredentialInfo, DeviceKeys};
use crate::tpm::{TpmKeyStore, TpmQuoteEvidence};

/// What the client can tell about its own credential. Whether the EK certificate chains to
/// a CA the cluster trusts (`tpm_ekcert_trusted`) is the server's verdict, recorded in the
/// enrolled device; any TPM type makes the ceremonies use the TPM path.
fn claimed_type(has_ek_cert: bool) -> AttestationType {
    if has_ek_cert {
        AttestationType::TpmEkcert
    } else {
        AttestationType::TpmEkpub
    }
}

fn platform(q: TpmQuoteEvidence) -> TpmPlatformParameters {
    TpmPlatformParameters {
        quote: TpmQuote {
            attest: q.attest,
            signature: q.signature,
            pcrs: q
                .pcrs
                .into_iter()
                .map(|p| TpmPcrValue {
                    index: p.index,
                    digest: p.digest,
                })
                .collect(),
        },
        event_log: q.event_log,
    }
}

impl DeviceKeys for TpmKeyStore {
    fn credential(&self) -> Result<Option<CredentialInfo>, DeviceError> {
        if !self.has_attestation_key()? {
            return Ok(None);
        }
        let evidence = self.enrollment_evidence()?;
        Ok(Some(CredentialInfo {
            id: evidence.credential_id,
            public_key_der: Vec::new(),
            attestation_type: claimed_type(evidence.ek_cert.is_some()),
        }))
    }

    fn create_credential(&self) -> Result<CredentialInfo, DeviceError> {
        if self.has_attestation_key()? {
            // TpmKeyStore doesn't expose its directory; name it generically.
            return Err(DeviceError::CredentialExists {
                dir: "the tpm key store directory".into(),
            });
        }
        // Creates the AK on first use.
        let evidence = self.enrollment_evidence()?;
        Ok(CredentialInfo {
            id: evidence.credential_id,
            public_key_der: Vec::new(),
            attestation_type: claimed_type(evidence.ek_cert.is_some()),
        })
    }

    fn sign_challenge(&self, _challenge: &[u8]) -> Result<Vec<u8>, DeviceError> {
        Err(DeviceError::UnsupportedProof("p256 challenge"))
    }

    fn enroll_payload(&self, _credential: &CredentialInfo) -> Result<EnrollPayload, DeviceError> {
        let evidence = self.enrollment_evidence()?;
        Ok(EnrollPayload::Tpm(TpmEnrollPayload {
            ek_public: evidence.ek_public,
            ek_cert: evidence.ek_cert,
            ak_public: evidence.ak_public,
        }))
    }

    fn prove(&self, request: ProofRequest<'_>) -> Result<Proof, DeviceError> {
        match request {
            ProofRequest::TpmEnroll(c) => {
                let solution = self.activate_credential(
                    &c.encrypted_credential.credential_blob,
                    &c.encrypted_credential.encrypted_secret,
                )?;
                let quote = self.quote(&c.attestation_nonce)?;
                Ok(Proof::TpmEnroll(TpmEnrollChallengeResponse {
                    solution,
                    platform_parameters: platform(quote),
                }))
            }
            ProofRequest::TpmAuthenticate(c) => {
                let quote = self.quote(&c.attestation_nonce)?;
                Ok(Proof::TpmAuthenticate(TpmAuthenticateChallengeResponse {
                    platform_parameters: platform(quote),
                }))
            }
            ProofRequest::P256Challenge(_) => Err(DeviceError::UnsupportedProof(request.kind())),
        }
    }
}
