//! Shared fixtures for the ceremony tests: a deterministic environment, P-256 test keys,
//! inventory records and a fake TPM.
#![allow(dead_code)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use dt_ceremony::env::Env;
use dt_ceremony::proof::{Proof, ProofRequest, ProverError};
use dt_ceremony::tpm::{
    TpmAuthenticateChallengeResponse, TpmCredentialFacts, TpmEncryptedCredential,
    TpmEnrollChallenge, TpmEnrollChallengeResponse, TpmEnrollPayload, TpmPcrValue,
    TpmPendingEnrollment, TpmPlatformParameters, TpmQuote, TpmVerifier, TpmVerifyError,
};
use dt_types::device::{
    AttestationType, DeviceCollectedData, DeviceCredential, DeviceSpec, EnrollStatus, OsType,
};
use dt_types::resource::{Device, DeviceTrustMode, DeviceTrustSettings, Resource};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use time::{Duration, OffsetDateTime};

/// Fixed clock (moved only by the test) and counter-based randomness:
/// block i = SHA-256(seed || i).
#[derive(Debug, Clone)]
pub struct TestEnv {
    pub now: OffsetDateTime,
    seed: u64,
    counter: u64,
}

impl TestEnv {
    pub fn new(seed: u64) -> Self {
        TestEnv {
            // 2026-11-24T12:00:00Z
            now: OffsetDateTime::from_unix_timestamp(1_795_521_600).unwrap(),
            seed,
            counter: 0,
        }
    }
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
    }
}

impl Env for TestEnv {
    fn now(&self) -> OffsetDateTime {
        self.now
    }
    fn random_bytes(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(32) {
            let mut input = self.seed.to_be_bytes().to_vec();
            input.extend_from_slice(&self.counter.to_be_bytes());
            self.counter += 1;
            let block = ring::digest::digest(&ring::digest::SHA256, &input);
            chunk.copy_from_slice(&block.as_ref()[..chunk.len()]);
        }
    }
}

/// A device credential key.
pub struct TestKey {
    pair: EcdsaKeyPair,
    pub spki: Vec<u8>,
}

impl TestKey {
    pub fn generate() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let spki =
            dt_attest::p256::spki_from_uncompressed_point(pair.public_key().as_ref()).unwrap();
        TestKey { pair, spki }
    }

    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair
            .sign(&SystemRandom::new(), msg)
            .unwrap()
            .as_ref()
            .to_vec()
    }

    /// A prover closure answering P-256 challenges with this key.
    pub fn prover(&self) -> impl FnOnce(ProofRequest<'_>) -> Result<Proof, ProverError> + '_ {
        move |req| match req {
            ProofRequest::P256Challenge(c) => Ok(Proof::P256Signature(self.sign(c))),
            other => Err(format!("test key can't answer a {}", other.kind()).into()),
        }
    }

    pub fn credential(&self, id: &str, attestation_type: AttestationType) -> DeviceCredential {
        DeviceCredential {
            id: id.parse().unwrap(),
            public_key_der: STANDARD.encode(&self.spki),
            attestation_type,
            tpm_ekcert_serial: None,
            tpm_ak_public: None,
            tpm_ekcert_der: None,
        }
    }
}

pub fn settings(mode: DeviceTrustMode, allow_software: bool) -> DeviceTrustSettings {
    DeviceTrustSettings {
        mode,
        allow_software_credentials: allow_software,
        ..Default::default()
    }
}

pub fn collected(env: &TestEnv, os: OsType, serial: &str) -> DeviceCollectedData {
    DeviceCollectedData {
        collect_time: env.now,
        record_time: None,
        os_type: Some(os),
        serial_number: serial.into(),
        model_identifier: "QEMU Standard PC".into(),
        os_version: "12".into(),
        os_build: "12 (bookworm)".into(),
        os_username: "alice".into(),
        hostname: "laptop".into(),
        system_serial_number: String::new(),
        base_board_serial_number: String::new(),
        reported_asset_tag: String::new(),
        serial_source: "dmi:product_serial".into(),
    }
}

pub fn device(id: &str, os: OsType, tag: &str) -> Device {
    Resource::new(
        id,
        DeviceSpec {
            os_type: os,
            asset_tag: tag.into(),
            enroll_status: EnrollStatus::NotEnrolled,
            create_time: None,
            update_time: None,
            credential: None,
            collected_data: vec![],
            source: None,
            profile: None,
            owner: None,
        },
    )
}

pub const DEVICE_A: &str = "8b7c4b86-8f55-4b7e-9d1c-0a1f0c7d2a01";
pub const DEVICE_B: &str = "8b7c4b86-8f55-4b7e-9d1c-0a1f0c7d2a02";

// ---------------------------------------------------------------------------------------
// A fake TPM and its verifier: "MakeCredential" XORs the secret with SHA-256(EK), the
// "quote" is SHA-256(AK || nonce), the credential id is hex(SHA-256(AK)). It checks the
// ceremony's flow, not TPM cryptography (that is dt-attest's, tested there and on swtpm).

pub struct FakeTpm {
    pub ek: Vec<u8>,
    pub ak: Vec<u8>,
}

fn mask(ek: &[u8], secret: &[u8]) -> Vec<u8> {
    let pad = ring::digest::digest(&ring::digest::SHA256, ek);
    secret
        .iter()
        .zip(pad.as_ref().iter().cycle())
        .map(|(a, b)| a ^ b)
        .collect()
}

fn fake_quote(ak: &[u8], nonce: &[u8]) -> Vec<u8> {
    let mut input = ak.to_vec();
    input.extend_from_slice(nonce);
    ring::digest::digest(&ring::digest::SHA256, &input)
        .as_ref()
        .to_vec()
}

pub fn fake_credential_id(ak: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, ak);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl FakeTpm {
    pub fn new(name: &str) -> Self {
        FakeTpm {
            ek: format!("ek-{name}").into_bytes(),
            ak: format!("ak-{name}").into_bytes(),
        }
    }

    pub fn credential_id(&self) -> String {
        fake_credential_id(&self.ak)
    }

    pub fn payload(&self) -> TpmEnrollPayload {
        TpmEnrollPayload {
            ek_public: self.ek.clone(),
            ek_cert: None,
            ak_public: self.ak.clone(),
        }
    }

    fn platform(&self, nonce: &[u8]) -> TpmPlatformParameters {
        TpmPlatformParameters {
            quote: TpmQuote {
                attest: fake_quote(&self.ak, nonce),
                signature: b"ok".to_vec(),
                pcrs: vec![TpmPcrValue {
                    index: 0,
                    digest: vec![0u8; 32],
                }],
            },
            event_log: None,
        }
    }

    pub fn prover(&self) -> impl FnOnce(ProofRequest<'_>) -> Result<Proof, ProverError> + '_ {
        move |req| match req {
            ProofRequest::TpmEnroll(c) => Ok(Proof::TpmEnroll(TpmEnrollChallengeResponse {
                solution: mask(&self.ek, &c.encrypted_credential.credential_blob),
                platform_parameters: self.platform(&c.attestation_nonce),
            })),
            ProofRequest::TpmAuthenticate(c) => {
                Ok(Proof::TpmAuthenticate(TpmAuthenticateChallengeResponse {
                    platform_parameters: self.platform(&c.attestation_nonce),
                }))
            }
            other => Err(format!("fake tpm can't answer a {}", other.kind()).into()),
        }
    }
}

pub struct FakeTpmVerifier;

struct FakePending {
    secret: [u8; 32],
    nonce: [u8; 20],
    ak: Vec<u8>,
}

fn check_quote(ak: &[u8], nonce: &[u8], p: &TpmPlatformParameters) -> Result<(), TpmVerifyError> {
    if p.quote.attest == fake_quote(ak, nonce) && p.quote.signature == b"ok" {
        Ok(())
    } else {
        Err(TpmVerifyError::Failed(
            "quote does not cover the nonce with the enrolled ak".into(),
        ))
    }
}

impl TpmPendingEnrollment for FakePending {
    fn credential_id(&self) -> String {
        fake_credential_id(&self.ak)
    }

    fn finish(
        self: Box<Self>,
        response: &TpmEnrollChallengeResponse,
    ) -> Result<TpmCredentialFacts, TpmVerifyError> {
        if response.solution != self.secret {
            return Err(TpmVerifyError::WrongActivationSecret);
        }
        check_quote(&self.ak, &self.nonce, &response.platform_parameters)?;
        Ok(TpmCredentialFacts {
            attestation_type: AttestationType::TpmEkpub,
            ekcert_serial: None,
            ekcert_der: None,
            ak_public: self.ak.clone(),
        })
    }
}

impl TpmVerifier for FakeTpmVerifier {
    fn begin_enrollment(
        &self,
        payload: &TpmEnrollPayload,
        _now: OffsetDateTime,
        env: &mut dyn Env,
    ) -> Result<(Box<dyn TpmPendingEnrollment>, TpmEnrollChallenge), TpmVerifyError> {
        if !payload.ek_public.starts_with(b"ek-") {
            return Err(TpmVerifyError::Failed("malformed TPM2B_PUBLIC (ek)".into()));
        }
        let mut secret = [0u8; 32];
        env.random_bytes(&mut secret);
        let mut nonce = [0u8; 20];
        env.random_bytes(&mut nonce);
        let challenge = TpmEnrollChallenge {
            encrypted_credential: TpmEncryptedCredential {
                credential_blob: mask(&payload.ek_public, &secret),
                encrypted_secret: b"seed".to_vec(),
            },
            attestation_nonce: nonce.to_vec(),
        };
        Ok((
            Box::new(FakePending {
                secret,
                nonce,
                ak: payload.ak_public.clone(),
            }),
            challenge,
        ))
    }

    fn verify_authentication(
        &self,
        ak_public: &[u8],
        nonce: &[u8],
        platform: &TpmPlatformParameters,
    ) -> Result<(), TpmVerifyError> {
        check_quote(ak_public, nonce, platform)
    }
}
