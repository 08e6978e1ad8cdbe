//! A software device enrolls and authenticates through the real ceremony state machines
//! (client and server halves in memory, production `SystemEnv`), from data collected on a
//! fake machine.

#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use std::fs;

use dt_ceremony::authn::server::{AuthnContext, CertView, MtlsIdentity};
use dt_ceremony::enroll::server::EnrollContext;
use dt_ceremony::enroll::{EnrollDenied, EnrollError};
use dt_ceremony::messages::{AuthenticateSuccess, UserCertificates};
use dt_ceremony::token::{DEFAULT_TOKEN_TTL, EnrollTokenRecord, TokenDisposition};
use dt_ceremony::{Env, SystemEnv, authn, enroll};
use dt_device::collect::{CollectSources, collect_from};
use dt_device::{DeviceKeys, SoftwareKeys, prover};
use dt_types::device::{DeviceSpec, EnrollStatus, OsType};
use dt_types::resource::{Device, DeviceTrustMode, DeviceTrustSettings, Resource};

fn fake_machine(root: &std::path::Path) -> CollectSources {
    let w = |rel: &str, text: &str| {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    };
    w(
        "etc/os-release",
        "ID=debian\nVERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\n",
    );
    w("etc/machine-id", "0123456789abcdef0123456789abcdef\n");
    w("proc/sys/kernel/hostname", "lab-vm\n");
    let mut src = CollectSources::under(root);
    src.env.user = Some("alice".into());
    src
}

fn inventory_device(serial: &str) -> Device {
    Resource::new(
        "6f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b",
        DeviceSpec {
            os_type: OsType::Linux,
            asset_tag: serial.into(),
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

#[test]
fn software_device_enrolls_then_authenticates() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fake_machine(tmp.path());
    let mut env = SystemEnv::new();
    let collected = collect_from(&src, env.now()).unwrap();
    assert_eq!(collected.data.serial_source, "machine-id");
    let serial = collected.data.serial_number.clone();

    let keys = SoftwareKeys::new(tmp.path().join("home/.dtsh/device"));
    let (cred, created) = keys.credential_or_create().unwrap();
    assert!(created);

    // The admin registered the device by the serial dtsh printed, and issued a token.
    let device = inventory_device(&serial);
    let (token, record) = EnrollTokenRecord::issue(
        device.device_id().unwrap(),
        env.now(),
        DEFAULT_TOKEN_TTL,
        &mut env,
    );
    let settings = DeviceTrustSettings {
        mode: DeviceTrustMode::Optional,
        allow_software_credentials: true,
        ..Default::default()
    };

    // Enrollment.
    let (client, init) = enroll::client::start(
        token,
        cred.id.to_string(),
        collected.data.clone(),
        keys.enroll_payload(&cred).unwrap(),
    );
    let alice = "alice".parse().unwrap();
    let ctx = EnrollContext {
        user: &alice,
        settings: &settings,
        token: Some(&record),
        device: Some(&device),
        credential_id_in_use: false,
        tpm: None,
    };
    let outcome = enroll::server::ExpectInit::new(&env).handle(init, &ctx, &mut env);
    assert!(matches!(outcome.token, TokenDisposition::Consume { .. }));
    let (server, challenge) = outcome.result.unwrap();
    let (client, response) = client.handle(challenge, prover(&keys)).unwrap();
    let enrolled = server.handle(response, &mut env).unwrap();
    let device = client.handle(enrolled.reply()).unwrap();
    assert_eq!(device.spec.enroll_status, EnrollStatus::Enrolled);
    assert_eq!(device.spec.owner.as_deref(), Some("alice"));

    // Authentication, later, with freshly collected data.
    let collected = collect_from(&src, env.now()).unwrap();
    let view = CertView {
        user: "alice".parse().unwrap(),
        roles: vec!["access".into()],
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
        certs.clone(),
        cred.id.to_string(),
        cred.attestation_type,
        collected.data,
    )
    .unwrap();
    let ctx = AuthnContext {
        settings: &settings,
        identity: &identity,
        ssh_certificate: None,
        device: Some(&device),
        locks: &[],
        tpm: None,
    };
    let (server, challenge) = authn::server::ExpectInit::new(&env)
        .handle(init, &ctx, &mut env)
        .unwrap();
    let (client, response) = client.handle(challenge, prover(&keys)).unwrap();
    let outcome = server.handle(response, &mut env).unwrap();
    assert_eq!(outcome.augment.user, "alice");
    assert_eq!(outcome.augment.device.asset_tag, serial);
    assert_eq!(outcome.augment.device.credential_id, cred.id);
    assert_eq!(outcome.device.spec.collected_data.len(), 2);
    client
        .handle(AuthenticateSuccess {
            user_certificates: certs,
        })
        .unwrap();
}

#[test]
fn software_device_is_refused_when_the_cluster_disallows_software_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fake_machine(tmp.path());
    let mut env = SystemEnv::new();
    let data = collect_from(&src, env.now()).unwrap().data;
    let keys = SoftwareKeys::new(tmp.path().join("device"));
    let cred = keys.create_credential().unwrap();
    let device = inventory_device(&data.serial_number);
    let (token, record) = EnrollTokenRecord::issue(
        device.device_id().unwrap(),
        env.now(),
        DEFAULT_TOKEN_TTL,
        &mut env,
    );
    let settings = DeviceTrustSettings::default();
    let (_, init) = enroll::client::start(
        token,
        cred.id.to_string(),
        data,
        keys.enroll_payload(&cred).unwrap(),
    );
    let alice = "alice".parse().unwrap();
    let ctx = EnrollContext {
        user: &alice,
        settings: &settings,
        token: Some(&record),
        device: Some(&device),
        credential_id_in_use: false,
        tpm: None,
    };
    let outcome = enroll::server::ExpectInit::new(&env).handle(init, &ctx, &mut env);
    assert_eq!(
        outcome.result.unwrap_err(),
        EnrollError::PolicyDenied(EnrollDenied::SoftwareCredentialsNotAllowed)
    );
    // The token is spent all the same.
    assert!(matches!(outcome.token, TokenDisposition::Consume { .. }));
}
