//! The ceremony state machines on a real software TPM: `TpmKeyStore` (feature `tpm`) as the
//! client's `DeviceKeys`, `dt_ceremony::tpm::AttestTpmVerifier` as the server's verifier.
//! Every test runs its own swtpm (see dt_testkit::swtpm).

#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]
#![cfg(feature = "tpm")]

use std::sync::Arc;

use dt_ceremony::authn::server::{AuthnContext, CertView, MtlsIdentity};
use dt_ceremony::enroll::server::EnrollContext;
use dt_ceremony::messages::UserCertificates;
use dt_ceremony::token::{DEFAULT_TOKEN_TTL, EnrollTokenRecord, TokenDisposition};
use dt_ceremony::tpm::AttestTpmVerifier;
use dt_ceremony::{Env, SystemEnv, authn, enroll};
use dt_device::tpm::TpmKeyStore;
use dt_device::{DeviceKeys, prover};
use dt_testkit::swtpm::{LocalCa, Swtpm};
use dt_types::device::{AttestationType, DeviceCollectedData, DeviceSpec, EnrollStatus, OsType};
use dt_types::resource::{Device, DeviceTrustMode, DeviceTrustSettings, Resource};

fn data(env: &SystemEnv) -> DeviceCollectedData {
    DeviceCollectedData {
        collect_time: env.now(),
        record_time: None,
        os_type: Some(OsType::Linux),
        serial_number: "TPM-LAB-1".into(),
        model_identifier: "QEMU".into(),
        os_version: "12".into(),
        os_build: String::new(),
        os_username: "alice".into(),
        hostname: "lab".into(),
        system_serial_number: String::new(),
        base_board_serial_number: String::new(),
        reported_asset_tag: String::new(),
        serial_source: "override".into(),
    }
}

fn inventory() -> Device {
    Resource::new(
        "0b7c4b86-8f55-4b7e-9d1c-0a1f0c7d2a77",
        DeviceSpec {
            os_type: OsType::Linux,
            asset_tag: "TPM-LAB-1".into(),
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

/// Enrolls through both halves, then authenticates; returns the enrolled attestation type.
fn enroll_then_authenticate(keys: &TpmKeyStore, allowed_cas: Vec<String>) -> AttestationType {
    let mut env = SystemEnv::new();
    let settings = DeviceTrustSettings {
        mode: DeviceTrustMode::Required,
        ekcert_allowed_cas: allowed_cas.clone(),
        ..Default::default()
    };
    let verifier = Arc::new(AttestTpmVerifier::new(allowed_cas).unwrap());
    let (cred, _) = keys.credential_or_create().unwrap();
    let device = inventory();
    let (token, record) = EnrollTokenRecord::issue(
        device.device_id().unwrap(),
        env.now(),
        DEFAULT_TOKEN_TTL,
        &mut env,
    );

    let (client, init) = enroll::client::start(
        token,
        cred.id.to_string(),
        data(&env),
        keys.enroll_payload(&cred).unwrap(),
    );
    let alice = "alice".parse().unwrap();
    let ctx = EnrollContext {
        user: &alice,
        settings: &settings,
        token: Some(&record),
        device: Some(&device),
        credential_id_in_use: false,
        tpm: Some(verifier.clone()),
    };
    let outcome = enroll::server::ExpectInit::new(&env).handle(init, &ctx, &mut env);
    assert!(matches!(outcome.token, TokenDisposition::Consume { .. }));
    let (server, challenge) = outcome.result.unwrap();
    let (client, response) = client.handle(challenge, prover(keys)).unwrap();
    let enrolled = server.handle(response, &mut env).unwrap();
    let device = client.handle(enrolled.reply()).unwrap();
    let stored = device.spec.credential.clone().unwrap();
    assert_eq!(stored.id, cred.id);
    assert!(stored.tpm_ak_public.is_some());

    let view = CertView {
        user: "alice".parse().unwrap(),
        roles: vec![],
        public_key_fingerprint: "sha256:k".into(),
        device: None,
    };
    let identity = MtlsIdentity {
        x509_der: b"cert".to_vec(),
        certificate: view,
    };
    let certs = UserCertificates {
        x509_der: b"cert".to_vec(),
        ssh_authorized_key: None,
    };
    let (client, init) = authn::client::start(
        certs,
        cred.id.to_string(),
        cred.attestation_type,
        data(&env),
    )
    .unwrap();
    let ctx = AuthnContext {
        settings: &settings,
        identity: &identity,
        ssh_certificate: None,
        device: Some(&device),
        locks: &[],
        tpm: Some(verifier),
    };
    let (server, challenge) = authn::server::ExpectInit::new(&env)
        .handle(init, &ctx, &mut env)
        .unwrap();
    let (_, response) = client.handle(challenge, prover(keys)).unwrap();
    let outcome = server.handle(response, &mut env).unwrap();
    assert_eq!(outcome.augment.device.credential_id, cred.id);
    stored.attestation_type
}

#[test]
fn tpm_device_enrolls_and_authenticates_through_the_ceremonies() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let keys = TpmKeyStore::new(tpm.tcti.clone(), dir.path().join("keys"));
    assert_eq!(
        enroll_then_authenticate(&keys, vec![]),
        AttestationType::TpmEkpub
    );
}

#[test]
fn tpm_with_a_trusted_ek_certificate_enrolls_as_trusted() {
    let ca = LocalCa::new();
    let tpm = Swtpm::start_with_ek_certs(&ca);
    let dir = tempfile::tempdir().unwrap();
    let keys = TpmKeyStore::new(tpm.tcti.clone(), dir.path().join("keys"));
    assert_eq!(
        enroll_then_authenticate(&keys, vec![ca.issuer_pem()]),
        AttestationType::TpmEkcertTrusted
    );
}
