//! Authentication: client and server halves wired together in memory, with a table of
//! tamperings, each naming the exact error it expects.

// Test helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

mod common;

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::*;
use dt_ceremony::authn::server::{
    AuthnContext, AuthnOutcome, CertView, DeviceBinding, ExpectChallengeResponse, ExpectInit,
    MtlsIdentity,
};
use dt_ceremony::authn::{AuthnDenied, AuthnError, client};
use dt_ceremony::drift::DriftKind;
use dt_ceremony::error::{ErrorCode, PeerMisbehaved};
use dt_ceremony::messages::{
    AuthenticateChallenge, AuthenticateChallengeResponse, AuthenticateInit, AuthenticateRequest,
    AuthenticateSuccess, UserCertificates,
};
use dt_ceremony::tpm::TpmVerifier;
use dt_types::device::{AttestationType, DeviceCollectedData, EnrollStatus, OsType};
use dt_types::resource::{
    Device, DeviceTrustMode, DeviceTrustSettings, Lock, LockSpec, LockTarget, Resource,
};
use time::Duration;

struct World {
    env: TestEnv,
    settings: DeviceTrustSettings,
    identity: MtlsIdentity,
    ssh: Option<CertView>,
    certs: UserCertificates,
    device: Option<Device>,
    locks: Vec<Lock>,
    key: TestKey,
    other_key: TestKey,
    credential_id: String,
    data: DeviceCollectedData,
    tpm: Option<Arc<dyn TpmVerifier>>,
}

const CRED: &str = "5f0c3f52-7f39-4a5e-a7c9-3f3b2f1f0a11";

fn alice_view() -> CertView {
    CertView {
        user: "alice".parse().unwrap(),
        roles: vec!["access".into()],
        public_key_fingerprint: "sha256:alice-key".into(),
        device: None,
    }
}

fn world() -> World {
    let env = TestEnv::new(2);
    let key = TestKey::generate();
    let mut enrolled = collected(&env, OsType::Linux, "TAG-A");
    enrolled.record_time = Some(env.now);
    let mut dev = device(DEVICE_A, OsType::Linux, "TAG-A");
    dev.spec.enroll_status = EnrollStatus::Enrolled;
    dev.spec.credential = Some(key.credential(CRED, AttestationType::Software));
    dev.spec.collected_data = vec![enrolled];
    dev.spec.owner = Some("alice".into());
    let x509 = b"x509-der-of-alice".to_vec();
    World {
        settings: settings(DeviceTrustMode::Required, true),
        identity: MtlsIdentity {
            x509_der: x509.clone(),
            certificate: alice_view(),
        },
        ssh: Some(alice_view()),
        certs: UserCertificates {
            x509_der: x509,
            ssh_authorized_key: Some("ecdsa-sha2-nistp256-cert-v01@openssh.com AAAA alice".into()),
        },
        device: Some(dev),
        locks: vec![],
        key,
        other_key: TestKey::generate(),
        credential_id: CRED.into(),
        data: collected(&env, OsType::Linux, "TAG-A"),
        tpm: None,
        env,
    }
}

fn ctx(w: &World) -> AuthnContext<'_> {
    AuthnContext {
        settings: &w.settings,
        identity: &w.identity,
        ssh_certificate: w.ssh.as_ref(),
        device: w.device.as_ref(),
        locks: &w.locks,
        tpm: w.tpm.clone(),
    }
}

fn lock(target: LockTarget, message: Option<&str>) -> Lock {
    Resource::new(
        "lock-1",
        LockSpec {
            target,
            message: message.map(Into::into),
            ..Default::default()
        },
    )
}

fn attestation(w: &World) -> AttestationType {
    w.device
        .as_ref()
        .and_then(|d| d.spec.credential.as_ref())
        .map(|c| c.attestation_type)
        .unwrap_or(AttestationType::Software)
}

struct Tamper {
    name: &'static str,
    world: fn(&mut World),
    init: fn(&mut AuthenticateInit),
    between: fn(&mut World),
    response: fn(&mut AuthenticateChallengeResponse, &[u8], &World),
    want: Result<(), AuthnError>,
}

const NOTHING: Tamper = Tamper {
    name: "honest",
    world: |_| {},
    init: |_| {},
    between: |_| {},
    response: |_, _, _| {},
    want: Ok(()),
};

fn run(w: &mut World, t: &Tamper) -> Result<AuthnOutcome, AuthnError> {
    (t.world)(w);
    let server = ExpectInit::new(&w.env);
    let (client_state, mut init) = client::start(
        w.certs.clone(),
        w.credential_id.clone(),
        attestation(w),
        w.data.clone(),
    )
    .unwrap();
    (t.init)(&mut init);
    let mut env = w.env.clone();
    let (server, challenge) = server.handle(init, &ctx(w), &mut env)?;
    w.env = env;
    let AuthenticateChallenge::P256 { challenge: raw } = &challenge else {
        panic!("{}: expected a p256 challenge", t.name)
    };
    assert_eq!(raw.len(), 32);
    let raw = raw.clone();
    let (client_state, mut response) = client_state.handle(challenge, w.key.prover()).unwrap();
    (t.between)(w);
    (t.response)(&mut response, &raw, w);
    let outcome = server.handle(response, &mut w.env)?;
    // The driver would augment; the client accepts a well-formed success.
    client_state
        .handle(AuthenticateSuccess {
            user_certificates: w.certs.clone(),
        })
        .unwrap();
    Ok(outcome)
}

fn denied(d: AuthnDenied) -> Result<(), AuthnError> {
    Err(AuthnError::PolicyDenied(d))
}

fn mismatch(why: &'static str) -> Result<(), AuthnError> {
    Err(AuthnError::PeerMisbehaved(
        PeerMisbehaved::CertificateMismatch(why),
    ))
}

fn enrollment_record(w: &mut World) -> &mut DeviceCollectedData {
    &mut w.device.as_mut().unwrap().spec.collected_data[0]
}

fn tamperings() -> Vec<Tamper> {
    vec![
        NOTHING,
        Tamper {
            name: "signature by another device's key",
            response: |r, c, w| {
                *r = AuthenticateChallengeResponse::P256 { signature_der: w.other_key.sign(c) }
            },
            want: Err(PeerMisbehaved::WrongSignature.into()),
            ..NOTHING
        },
        Tamper {
            name: "signature over another challenge",
            response: |r, c, w| {
                let mut other = c.to_vec();
                other[31] ^= 1;
                *r = AuthenticateChallengeResponse::P256 { signature_der: w.key.sign(&other) }
            },
            want: Err(PeerMisbehaved::WrongSignature.into()),
            ..NOTHING
        },
        Tamper {
            name: "another device's credential id",
            init: |i| i.credential_id = "0d7e4c1e-1111-4222-8333-944455556666".into(),
            want: denied(AuthnDenied::UnknownCredential),
            ..NOTHING
        },
        Tamper {
            name: "drift: model changed",
            world: |w| w.data.model_identifier = "ThinkPad X1".into(),
            want: denied(AuthnDenied::CollectedDataDrift(DriftKind::ModelChanged {
                enrolled: "QEMU Standard PC".into(),
                now: "ThinkPad X1".into(),
            })),
            ..NOTHING
        },
        Tamper {
            name: "drift: os version went backwards",
            world: |w| w.data.os_version = "11".into(),
            want: denied(AuthnDenied::CollectedDataDrift(DriftKind::OsVersionWentBackwards {
                before: "12".into(),
                now: "11".into(),
            })),
            ..NOTHING
        },
        Tamper {
            name: "drift: os version went backwards since the last authentication",
            world: |w| {
                let mut later = w.data.clone();
                later.os_version = "12.10".into();
                w.device.as_mut().unwrap().spec.collected_data.push(later);
                w.data.os_version = "12.9".into();
            },
            want: denied(AuthnDenied::CollectedDataDrift(DriftKind::OsVersionWentBackwards {
                before: "12.10".into(),
                now: "12.9".into(),
            })),
            ..NOTHING
        },
        Tamper {
            name: "drift: serial changed since enrollment",
            world: |w| enrollment_record(w).serial_number = "OLD-SERIAL".into(),
            want: denied(AuthnDenied::CollectedDataDrift(DriftKind::SerialChanged)),
            ..NOTHING
        },
        Tamper {
            name: "drift: os type changed since enrollment",
            world: |w| enrollment_record(w).os_type = Some(OsType::Windows),
            want: denied(AuthnDenied::CollectedDataDrift(DriftKind::OsTypeChanged)),
            ..NOTHING
        },
        Tamper {
            name: "newer os version is fine",
            world: |w| w.data.os_version = "13".into(),
            ..NOTHING
        },
        Tamper {
            name: "x509 certificate already carries a device",
            world: |w| {
                w.identity.certificate.device = Some(DeviceBinding {
                    device_id: DEVICE_A.parse().unwrap(),
                    asset_tag: "TAG-A".into(),
                    credential_id: CRED.parse().unwrap(),
                })
            },
            want: denied(AuthnDenied::AlreadyAugmented),
            ..NOTHING
        },
        Tamper {
            name: "ssh certificate already carries a device",
            world: |w| {
                w.ssh.as_mut().unwrap().device = Some(DeviceBinding {
                    device_id: DEVICE_B.parse().unwrap(),
                    asset_tag: "TAG-B".into(),
                    credential_id: "other".parse().unwrap(),
                })
            },
            want: denied(AuthnDenied::AlreadyAugmented),
            ..NOTHING
        },
        Tamper {
            name: "in-band x509 differs from the mTLS identity",
            init: |i| i.user_certificates.x509_der = b"x509-der-of-bob".to_vec(),
            want: mismatch("the x509 certificate is not the mTLS client certificate"),
            ..NOTHING
        },
        Tamper {
            name: "ssh certificate for another user",
            world: |w| w.ssh.as_mut().unwrap().user = "bob".parse().unwrap(),
            want: mismatch("the ssh certificate names another user"),
            ..NOTHING
        },
        Tamper {
            name: "ssh certificate for another key",
            world: |w| w.ssh.as_mut().unwrap().public_key_fingerprint = "sha256:bob".into(),
            want: mismatch("the ssh certificate is for another key"),
            ..NOTHING
        },
        Tamper {
            name: "ssh certificate the driver could not verify",
            world: |w| w.ssh = None,
            want: mismatch("the ssh certificate could not be verified"),
            ..NOTHING
        },
        Tamper {
            name: "no ssh certificate at all is fine",
            world: |w| {
                w.ssh = None;
                w.certs.ssh_authorized_key = None;
            },
            ..NOTHING
        },
        Tamper {
            name: "mode off",
            world: |w| w.settings.mode = DeviceTrustMode::Off,
            want: denied(AuthnDenied::DeviceTrustDisabled),
            ..NOTHING
        },
        Tamper {
            name: "unknown mode fails closed",
            world: |w| w.settings.mode = DeviceTrustMode::Unknown("maybe".into()),
            want: denied(AuthnDenied::UnknownTrustMode("maybe".into())),
            ..NOTHING
        },
        Tamper {
            name: "locked device",
            world: |w| {
                w.locks = vec![lock(
                    LockTarget { device: Some(DEVICE_A.into()), ..Default::default() },
                    Some("laptop reported stolen"),
                )]
            },
            want: denied(AuthnDenied::Locked {
                target: format!("Device:{DEVICE_A:?}"),
                message: Some("laptop reported stolen".into()),
            }),
            ..NOTHING
        },
        Tamper {
            name: "locked user",
            world: |w| {
                w.locks = vec![lock(
                    LockTarget { user: Some("alice".into()), ..Default::default() },
                    None,
                )]
            },
            want: denied(AuthnDenied::Locked { target: "User:\"alice\"".into(), message: None }),
            ..NOTHING
        },
        Tamper {
            name: "locked role",
            world: |w| {
                w.locks = vec![lock(
                    LockTarget { role: Some("access".into()), ..Default::default() },
                    None,
                )]
            },
            want: denied(AuthnDenied::Locked { target: "Role:\"access\"".into(), message: None }),
            ..NOTHING
        },
        Tamper {
            name: "expired lock does not apply",
            world: |w| {
                let mut l = lock(
                    LockTarget { device: Some(DEVICE_A.into()), ..Default::default() },
                    None,
                );
                l.metadata.expires = Some(w.env.now - Duration::minutes(1));
                w.locks = vec![l];
            },
            ..NOTHING
        },
        Tamper {
            name: "locks on other users, devices, logins and nodes do not apply",
            world: |w| {
                w.locks = vec![
                    lock(LockTarget { user: Some("bob".into()), ..Default::default() }, None),
                    lock(LockTarget { device: Some(DEVICE_B.into()), ..Default::default() }, None),
                    lock(LockTarget { login: Some("root".into()), ..Default::default() }, None),
                    lock(LockTarget { node: Some("server1".into()), ..Default::default() }, None),
                    lock(
                        LockTarget {
                            user: Some("alice".into()),
                            device: Some(DEVICE_B.into()),
                            ..Default::default()
                        },
                        None,
                    ),
                ]
            },
            ..NOTHING
        },
        Tamper {
            name: "unknown device",
            world: |w| w.device = None,
            want: denied(AuthnDenied::DeviceNotFound),
            ..NOTHING
        },
        Tamper {
            name: "driver found a device with another serial",
            world: |w| w.data.serial_number = "TAG-B".into(),
            want: denied(AuthnDenied::DeviceNotFound),
            ..NOTHING
        },
        Tamper {
            name: "device not enrolled",
            world: |w| w.device.as_mut().unwrap().spec.enroll_status = EnrollStatus::NotEnrolled,
            want: denied(AuthnDenied::DeviceNotEnrolled),
            ..NOTHING
        },
        Tamper {
            name: "software credential after software credentials were disallowed",
            world: |w| w.settings.allow_software_credentials = false,
            want: denied(AuthnDenied::SoftwareCredentialsNotAllowed),
            ..NOTHING
        },
        Tamper {
            name: "oversized x509",
            init: |i| i.user_certificates.x509_der = vec![0; 20_000],
            want: Err(PeerMisbehaved::OversizedField {
                field: "user_certificates.x509_der",
                len: 20_000,
                max: 16 * 1024,
            }
            .into()),
            ..NOTHING
        },
        Tamper {
            name: "oversized collected data",
            world: |w| w.data.os_build = "b".repeat(257),
            want: Err(PeerMisbehaved::InvalidField {
                field: "device_data",
                why: "device data field os_build is longer than 256 bytes".into(),
            }
            .into()),
            ..NOTHING
        },
        Tamper {
            name: "response after the deadline",
            between: |w| w.env.advance(Duration::seconds(61)),
            want: Err(AuthnError::Timeout { limit_secs: 60 }),
            ..NOTHING
        },
        Tamper {
            name: "damaged stored public key",
            world: |w| {
                w.device.as_mut().unwrap().spec.credential.as_mut().unwrap().public_key_der =
                    STANDARD.encode(b"not a key")
            },
            want: Err(AuthnError::BrokenDeviceRecord {
                device_id: DEVICE_A.into(),
                why: "credential public key: public key is not a DER SubjectPublicKeyInfo: outer SEQUENCE".into(),
            }),
            ..NOTHING
        },
    ]
}

#[test]
fn tamperings_fail_with_the_named_error() {
    for t in tamperings() {
        let mut w = world();
        let result = run(&mut w, &t);
        match (&t.want, &result) {
            (Ok(()), Ok(_)) => {}
            (Err(want), Err(got)) => assert_eq!(got, want, "{}", t.name),
            (want, got) => panic!("{}: want {want:?}, got {got:?}", t.name),
        }
    }
}

#[test]
fn honest_authentication_asks_for_augmentation_and_extends_history() {
    let mut w = world();
    let now = w.env.now;
    let outcome = run(&mut w, &NOTHING).unwrap();
    assert_eq!(outcome.augment.user, "alice");
    assert_eq!(
        outcome.augment.device,
        DeviceBinding {
            device_id: DEVICE_A.parse().unwrap(),
            asset_tag: "TAG-A".into(),
            credential_id: CRED.parse().unwrap()
        }
    );
    let history = &outcome.device.spec.collected_data;
    assert_eq!(history.len(), 2);
    assert_eq!(history[1].record_time, Some(now));
    assert_eq!(outcome.device.spec.update_time, Some(now));
    // Everything else about the device is untouched.
    let mut expected = w.device.clone().unwrap();
    expected.spec.collected_data = history.clone();
    expected.spec.update_time = Some(now);
    assert_eq!(outcome.device, expected);
}

#[test]
fn history_is_capped_at_enrollment_plus_ten() {
    let mut w = world();
    for i in 0..15 {
        w.data.hostname = format!("host-{i}");
        let outcome = run(&mut w, &NOTHING).unwrap();
        w.device = Some(outcome.device);
    }
    let history = &w.device.as_ref().unwrap().spec.collected_data;
    assert_eq!(history.len(), 11);
    assert_eq!(history[0].hostname, "laptop");
    assert_eq!(history[10].hostname, "host-14");
    assert_eq!(history[1].hostname, "host-5");
}

#[test]
fn a_replayed_challenge_response_is_refused() {
    let w = world();
    // One environment for both ceremonies: the randomness moves on between them.
    let mut env = w.env.clone();
    // Ceremony 1, honest: keep the response an eavesdropper would see.
    let (c1, init1) = client::start(
        w.certs.clone(),
        CRED.into(),
        AttestationType::Software,
        w.data.clone(),
    )
    .unwrap();
    let (s1, ch1) = ExpectInit::new(&env)
        .handle(init1, &ctx(&w), &mut env)
        .unwrap();
    let (_, resp1) = c1.handle(ch1, w.key.prover()).unwrap();
    let _augmented = s1.handle(resp1.clone(), &mut env).unwrap();
    // Ceremony 2: the old response is replayed against a fresh challenge.
    let (_, init2) = client::start(
        w.certs.clone(),
        CRED.into(),
        AttestationType::Software,
        w.data.clone(),
    )
    .unwrap();
    let (s2, _) = ExpectInit::new(&env)
        .handle(init2, &ctx(&w), &mut env)
        .unwrap();
    assert_eq!(
        s2.handle(resp1, &mut env).unwrap_err(),
        PeerMisbehaved::WrongSignature.into()
    );
}

#[test]
fn messages_out_of_order_are_refused_by_name() {
    let resp = AuthenticateChallengeResponse::P256 {
        signature_der: vec![],
    };
    assert_eq!(
        ExpectInit::expect_message(AuthenticateRequest::ChallengeResponse(resp)).unwrap_err(),
        PeerMisbehaved::UnexpectedMessage {
            expected: "AuthenticateInit",
            got: "AuthenticateChallengeResponse"
        }
        .into()
    );
    let w = world();
    let (_, init) = client::start(
        w.certs.clone(),
        CRED.into(),
        AttestationType::Software,
        w.data.clone(),
    )
    .unwrap();
    assert_eq!(
        ExpectChallengeResponse::expect_message(AuthenticateRequest::Init(Box::new(init)))
            .unwrap_err(),
        PeerMisbehaved::UnexpectedMessage {
            expected: "AuthenticateChallengeResponse",
            got: "AuthenticateInit"
        }
        .into()
    );
}

#[test]
fn error_messages_match_the_design() {
    assert_eq!(
        AuthnError::from(AuthnDenied::DeviceTrustDisabled).to_string(),
        "device trust disabled by cluster settings"
    );
    assert_eq!(
        AuthnError::from(AuthnDenied::UnknownCredential).to_string(),
        "unknown device credential"
    );
    let drift = AuthnError::from(AuthnDenied::CollectedDataDrift(DriftKind::SerialChanged));
    assert!(
        drift
            .to_string()
            .starts_with("collected data drift detected")
    );
    assert!(
        !drift.to_string().contains("serial"),
        "the client is not told what drifted"
    );
    assert!(
        drift.audit_message().contains("serial number changed"),
        "{}",
        drift.audit_message()
    );
    let locked = AuthnError::from(AuthnDenied::Locked {
        target: format!("Device:{DEVICE_A:?}"),
        message: None,
    });
    assert_eq!(
        locked.to_string(),
        format!("lock targeting Device:\"{DEVICE_A}\" is in force")
    );
    assert_eq!(locked.code(), ErrorCode::PermissionDenied);
}

// ---------------------------------------------------------------------------------------
// TPM devices authenticate with quotes over a fresh nonce.

fn tpm_world(tpm: &FakeTpm) -> World {
    let mut w = world();
    let cred = w.device.as_mut().unwrap().spec.credential.as_mut().unwrap();
    cred.attestation_type = AttestationType::TpmEkpub;
    cred.public_key_der = String::new();
    cred.tpm_ak_public = Some(STANDARD.encode(&tpm.ak));
    w.tpm = Some(Arc::new(FakeTpmVerifier));
    w
}

fn tpm_run(w: &mut World, tpm: &FakeTpm) -> Result<AuthnOutcome, AuthnError> {
    let (c, init) = client::start(
        w.certs.clone(),
        CRED.into(),
        AttestationType::TpmEkpub,
        w.data.clone(),
    )
    .unwrap();
    let mut env = w.env.clone();
    let (s, ch) = ExpectInit::new(&env).handle(init, &ctx(w), &mut env)?;
    let AuthenticateChallenge::Tpm(t) = &ch else {
        panic!("expected a tpm challenge")
    };
    assert_eq!(t.attestation_nonce.len(), 20);
    let (_, resp) = c.handle(ch, tpm.prover()).unwrap();
    s.handle(resp, &mut env)
}

#[test]
fn tpm_authentication_through_the_verifier() {
    let tpm = FakeTpm::new("a");
    let mut w = tpm_world(&tpm);
    let outcome = tpm_run(&mut w, &tpm).unwrap();
    assert_eq!(outcome.augment.device.device_id, DEVICE_A);
    // Another TPM's quotes don't verify with the enrolled AK.
    let mut w = tpm_world(&tpm);
    assert!(matches!(
        tpm_run(&mut w, &FakeTpm::new("b")),
        Err(AuthnError::Attestation(_))
    ));
    // Without a verifier the server says so.
    let mut w = tpm_world(&tpm);
    w.tpm = None;
    assert_eq!(
        tpm_run(&mut w, &tpm).unwrap_err(),
        AuthnError::TpmNotSupported
    );
}

/// Device web authentication: the same proof, with the web login's token in the Init;
/// certificates that already carry a device are fine (none is augmented), and the client
/// accepts only a confirmation token at the end (never certificates), and vice versa.
#[test]
fn device_web_authentication_ends_with_a_confirmation_only() {
    let mut w = world();
    w.identity.certificate.device = Some(DeviceBinding {
        device_id: DEVICE_A.parse().unwrap(),
        asset_tag: "TAG-A".into(),
        credential_id: CRED.parse().unwrap(),
    });
    let mut env = w.env.clone();
    let token = dt_ceremony::messages::DeviceWebToken {
        id: "id".into(),
        token: "s3cr3t-value".into(),
    };
    let (c, init) = client::start_web(
        w.certs.clone(),
        CRED.into(),
        AttestationType::Software,
        w.data.clone(),
        token.clone(),
    )
    .unwrap();
    assert_eq!(init.device_web_token.as_ref(), Some(&token));
    assert!(
        !format!("{token:?}").contains("s3cr3t"),
        "Debug hides the token"
    );
    let (s, challenge) = ExpectInit::new(&env)
        .handle(init, &ctx(&w), &mut env)
        .expect("an augmented certificate may run device web authentication");
    let (c, resp) = c.handle(challenge, w.key.prover()).unwrap();
    let outcome = s.handle(resp, &mut env).unwrap();
    assert_eq!(outcome.augment.device.device_id, DEVICE_A);
    let confirmation = dt_ceremony::messages::DeviceConfirmationToken {
        id: "c".into(),
        token: "t".into(),
    };
    // (ExpectSuccess is consumed: run the client half again for each answer.)
    let fresh = |env: &mut _| {
        let (c, init) = client::start_web(
            w.certs.clone(),
            CRED.into(),
            AttestationType::Software,
            w.data.clone(),
            token.clone(),
        )
        .unwrap();
        let (_, challenge) = ExpectInit::new(env).handle(init, &ctx(&w), env).unwrap();
        c.handle(challenge, w.key.prover()).unwrap().0
    };
    let _ = c;
    assert_eq!(
        fresh(&mut env).handle_web(confirmation.clone()).unwrap(),
        confirmation
    );
    assert!(
        fresh(&mut env)
            .handle(AuthenticateSuccess {
                user_certificates: w.certs.clone(),
            })
            .is_err(),
        "certificates are no answer to a device web authentication"
    );
    // The ordinary ceremony refuses a confirmation, and still refuses augmented certificates.
    let (c, init) = client::start(
        w.certs.clone(),
        CRED.into(),
        AttestationType::Software,
        w.data.clone(),
    )
    .unwrap();
    assert_eq!(
        ExpectInit::new(&env)
            .handle(init, &ctx(&w), &mut env)
            .unwrap_err(),
        AuthnError::PolicyDenied(AuthnDenied::AlreadyAugmented)
    );
    w.identity.certificate.device = None;
    let (_, challenge) = ExpectInit::new(&env)
        .handle(
            client::start(
                w.certs.clone(),
                CRED.into(),
                AttestationType::Software,
                w.data.clone(),
            )
            .unwrap()
            .1,
            &ctx(&w),
            &mut env,
        )
        .unwrap();
    let (c2, _) = c.handle(challenge, w.key.prover()).unwrap();
    assert!(c2.handle_web(confirmation).is_err());
}
