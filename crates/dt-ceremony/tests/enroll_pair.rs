//! Enrollment: client and server halves wired together in memory, with a table of
//! tamperings, each naming the exact error it expects.

// Test helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

mod common;

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::*;
use dt_attest::p256::{AttestError, KeyAlgorithm};
use dt_ceremony::ClientError;
use dt_ceremony::enroll::server::{EnrollContext, ExpectChallengeResponse, ExpectInit};
use dt_ceremony::enroll::{EnrollDenied, EnrollError, client};
use dt_ceremony::error::{ErrorCode, PeerMisbehaved, ServerMisbehaved};
use dt_ceremony::messages::{
    EnrollChallenge, EnrollChallengeResponse, EnrollInit, EnrollPayload, EnrollRequest,
    P256KeyStorage,
};
use dt_ceremony::token::{
    DEFAULT_TOKEN_TTL, EnrollToken, EnrollTokenRecord, TokenDisposition, TokenProblem,
};
use dt_ceremony::tpm::{TpmEnrollChallengeResponse, TpmPlatformParameters, TpmVerifier};
use dt_types::UserName;
use dt_types::device::{AttestationType, DeviceCollectedData, EnrollStatus, OsType};
use dt_types::resource::{Device, DeviceTrustMode, DeviceTrustSettings};
use time::Duration;

struct World {
    env: TestEnv,
    /// The enrolling user.
    user: UserName,
    settings: DeviceTrustSettings,
    device: Option<Device>,
    token: EnrollToken,
    record: Option<EnrollTokenRecord>,
    credential_in_use: bool,
    key: TestKey,
    other_key: TestKey,
    credential_id: String,
    storage: P256KeyStorage,
    data: DeviceCollectedData,
    tpm: Option<Arc<dyn TpmVerifier>>,
}

fn world() -> World {
    let mut env = TestEnv::new(1);
    let (token, record) = EnrollTokenRecord::issue(
        DEVICE_A.parse().unwrap(),
        env.now,
        DEFAULT_TOKEN_TTL,
        &mut env,
    );
    let data = collected(&env, OsType::Linux, "TAG-A");
    World {
        user: UserName::parse("alice").unwrap(),
        settings: settings(DeviceTrustMode::Optional, true),
        device: Some(device(DEVICE_A, OsType::Linux, "TAG-A")),
        token,
        record: Some(record),
        credential_in_use: false,
        key: TestKey::generate(),
        other_key: TestKey::generate(),
        credential_id: "5f0c3f52-7f39-4a5e-a7c9-3f3b2f1f0a11".into(),
        storage: P256KeyStorage::Software,
        data,
        tpm: None,
        env,
    }
}

fn ctx(w: &World) -> EnrollContext<'_> {
    EnrollContext {
        user: &w.user,
        settings: &w.settings,
        token: w.record.as_ref(),
        device: w.device.as_ref(),
        credential_id_in_use: w.credential_in_use,
        tpm: w.tpm.clone(),
    }
}

type Hook<T> = fn(&mut T, &World);

struct Tamper {
    name: &'static str,
    /// Changes the world before the ceremony starts.
    world: fn(&mut World),
    /// Changes the EnrollInit in flight.
    init: Hook<EnrollInit>,
    /// Changes the world between challenge and response (e.g. the clock).
    between: fn(&mut World),
    /// Changes the response in flight; gets the challenge the server sent.
    response: fn(&mut EnrollChallengeResponse, &[u8], &World),
    want: Result<(), EnrollError>,
    /// Whether the token must come back as consumed.
    consumed: bool,
}

const NOTHING: Tamper = Tamper {
    name: "honest",
    world: |_| {},
    init: |_, _| {},
    between: |_| {},
    response: |_, _, _| {},
    want: Ok(()),
    consumed: true,
};

fn run(w: &mut World, t: &Tamper) -> (TokenDisposition, Result<Device, EnrollError>) {
    (t.world)(w);
    let server = ExpectInit::new(&w.env);
    let payload = EnrollPayload::P256 {
        public_key_der: w.key.spki.clone(),
        storage: w.storage,
    };
    let (client_state, mut init) = client::start(
        w.token.clone(),
        w.credential_id.clone(),
        w.data.clone(),
        payload,
    );
    (t.init)(&mut init, w);
    let outcome = {
        let ctx = ctx(w);
        let mut env = w.env.clone();
        let out = server.handle(init, &ctx, &mut env);
        w.env = env;
        out
    };
    let (server, challenge) = match outcome.result {
        Ok(next) => next,
        Err(e) => return (outcome.token, Err(e)),
    };
    let EnrollChallenge::P256 { challenge: raw } = &challenge else {
        panic!("{}: expected a p256 challenge", t.name)
    };
    assert_eq!(raw.len(), 32, "{}", t.name);
    let raw = raw.clone();
    let (client_state, mut response) = client_state.handle(challenge, w.key.prover()).unwrap();
    (t.between)(w);
    (t.response)(&mut response, &raw, w);
    let result = server.handle(response, &mut w.env).map(|enrolled| {
        // The client accepts what an honest server returns.
        client_state.handle(enrolled.reply()).unwrap()
    });
    (outcome.token, result)
}

fn token_err(p: TokenProblem) -> Result<(), EnrollError> {
    Err(EnrollError::Token(p))
}

fn tamperings() -> Vec<Tamper> {
    vec![
        NOTHING,
        Tamper {
            name: "token reused",
            world: |w| w.record.as_mut().unwrap().spent_at = Some(w.env.now),
            want: token_err(TokenProblem::AlreadySpent),
            consumed: false,
            ..NOTHING
        },
        Tamper {
            name: "token expired",
            world: |w| w.env.advance(DEFAULT_TOKEN_TTL + Duration::seconds(1)),
            want: token_err(TokenProblem::Expired),
            consumed: false,
            ..NOTHING
        },
        Tamper {
            name: "token for another device (serial)",
            world: |w| w.data.serial_number = "TAG-B".into(),
            want: token_err(TokenProblem::OtherDevice),
            ..NOTHING
        },
        Tamper {
            name: "token for another device (record names another id)",
            world: |w| w.record.as_mut().unwrap().device_id = DEVICE_B.parse().unwrap(),
            want: token_err(TokenProblem::OtherDevice),
            ..NOTHING
        },
        Tamper {
            name: "token for another OS",
            world: |w| w.data.os_type = Some(OsType::Windows),
            want: token_err(TokenProblem::OtherOs),
            ..NOTHING
        },
        Tamper {
            name: "unknown token",
            world: |w| w.record = None,
            want: token_err(TokenProblem::Unknown),
            consumed: false,
            ..NOTHING
        },
        Tamper {
            name: "another token than the record's",
            init: |i, _| i.token = EnrollToken::new("A".repeat(43)),
            want: token_err(TokenProblem::HashMismatch),
            consumed: false,
            ..NOTHING
        },
        Tamper {
            name: "malformed token",
            init: |i, _| i.token = EnrollToken::new("not-a-token"),
            want: token_err(TokenProblem::Malformed),
            consumed: false,
            ..NOTHING
        },
        Tamper {
            name: "signature by another key",
            response: |r, c, w| {
                *r = EnrollChallengeResponse::P256 {
                    signature_der: w.other_key.sign(c),
                }
            },
            want: Err(PeerMisbehaved::WrongSignature.into()),
            ..NOTHING
        },
        Tamper {
            name: "signature over another challenge",
            response: |r, c, w| {
                let mut other = c.to_vec();
                other[0] ^= 1;
                *r = EnrollChallengeResponse::P256 {
                    signature_der: w.key.sign(&other),
                }
            },
            want: Err(PeerMisbehaved::WrongSignature.into()),
            ..NOTHING
        },
        Tamper {
            name: "flipped signature byte",
            response: |r, _, _| {
                if let EnrollChallengeResponse::P256 { signature_der } = r {
                    let last = signature_der.len() - 1;
                    signature_der[last] ^= 0x40;
                }
            },
            want: Err(PeerMisbehaved::WrongSignature.into()),
            ..NOTHING
        },
        Tamper {
            name: "empty signature",
            response: |r, _, _| {
                *r = EnrollChallengeResponse::P256 {
                    signature_der: vec![],
                }
            },
            want: Err(PeerMisbehaved::WrongSignature.into()),
            ..NOTHING
        },
        Tamper {
            name: "oversized signature",
            response: |r, _, _| {
                *r = EnrollChallengeResponse::P256 {
                    signature_der: vec![0; 4096],
                }
            },
            want: Err(PeerMisbehaved::OversizedField {
                field: "signature_der",
                len: 4096,
                max: 128,
            }
            .into()),
            ..NOTHING
        },
        Tamper {
            name: "tpm answer to a p256 challenge",
            response: |r, _, _| {
                *r = EnrollChallengeResponse::Tpm(TpmEnrollChallengeResponse {
                    solution: vec![1; 32],
                    platform_parameters: TpmPlatformParameters::default(),
                })
            },
            want: Err(PeerMisbehaved::WrongResponseKind {
                expected: "p256",
                got: "tpm",
            }
            .into()),
            ..NOTHING
        },
        Tamper {
            name: "credential id already in use",
            world: |w| w.credential_in_use = true,
            want: Err(EnrollDenied::CredentialIdInUse.into()),
            ..NOTHING
        },
        Tamper {
            name: "device already enrolled",
            world: |w| {
                let d = w.device.as_mut().unwrap();
                d.spec.enroll_status = EnrollStatus::Enrolled;
                d.spec.credential = Some(w.other_key.credential("old", AttestationType::Software));
            },
            want: Err(EnrollDenied::AlreadyEnrolled.into()),
            ..NOTHING
        },
        Tamper {
            name: "token for a device not in the inventory",
            world: |w| w.device = None,
            want: Err(EnrollDenied::DeviceNotRegistered.into()),
            ..NOTHING
        },
        Tamper {
            name: "oversized collected data",
            world: |w| w.data.hostname = "h".repeat(300),
            want: Err(PeerMisbehaved::InvalidField {
                field: "device_data",
                why: "device data field hostname is longer than 256 bytes".into(),
            }
            .into()),
            ..NOTHING
        },
        Tamper {
            name: "no serial number",
            world: |w| w.data.serial_number = " ".into(),
            want: Err(PeerMisbehaved::InvalidField {
                field: "device_data",
                why: "device data has no serial number".into(),
            }
            .into()),
            ..NOTHING
        },
        Tamper {
            name: "no os type",
            world: |w| w.data.os_type = None,
            want: Err(PeerMisbehaved::InvalidField {
                field: "device_data.os_type",
                why: "missing".into(),
            }
            .into()),
            ..NOTHING
        },
        Tamper {
            name: "oversized credential id",
            init: |i, _| i.credential_id = "c".repeat(200),
            want: Err(PeerMisbehaved::OversizedField {
                field: "credential_id",
                len: 200,
                max: 128,
            }
            .into()),
            ..NOTHING
        },
        Tamper {
            name: "credential id with spaces",
            init: |i, _| i.credential_id = "my credential".into(),
            want: Err(PeerMisbehaved::InvalidField {
                field: "credential_id",
                why: "must be 1 to 128 printable ASCII characters without spaces".into(),
            }
            .into()),
            ..NOTHING
        },
        Tamper {
            name: "oversized public key",
            init: |i, _| {
                i.payload = EnrollPayload::P256 {
                    public_key_der: vec![0x30; 2000],
                    storage: P256KeyStorage::Software,
                }
            },
            want: Err(PeerMisbehaved::OversizedField {
                field: "public_key_der",
                len: 2000,
                max: 1024,
            }
            .into()),
            ..NOTHING
        },
        Tamper {
            name: "public key on another curve",
            init: |i, _| {
                i.payload = EnrollPayload::P256 {
                    public_key_der: p384_spki(),
                    storage: P256KeyStorage::Software,
                }
            },
            want: Err(PeerMisbehaved::InvalidPublicKey(AttestError::WrongCurve(
                KeyAlgorithm::P384,
            ))
            .into()),
            ..NOTHING
        },
        Tamper {
            name: "software credential while not allowed",
            world: |w| w.settings.allow_software_credentials = false,
            want: Err(EnrollDenied::SoftwareCredentialsNotAllowed.into()),
            ..NOTHING
        },
        Tamper {
            name: "secure enclave claim from linux",
            world: |w| w.storage = P256KeyStorage::SecureEnclave,
            want: Err(PeerMisbehaved::InvalidField {
                field: "payload",
                why: "secure enclave credentials exist only on macOS".into(),
            }
            .into()),
            ..NOTHING
        },
        Tamper {
            name: "tpm payload without a tpm verifier",
            init: |i, _| i.payload = EnrollPayload::Tpm(FakeTpm::new("a").payload()),
            want: Err(EnrollError::TpmNotSupported),
            ..NOTHING
        },
        Tamper {
            name: "device trust off",
            world: |w| w.settings.mode = DeviceTrustMode::Off,
            want: Err(EnrollDenied::DeviceTrustDisabled.into()),
            ..NOTHING
        },
        Tamper {
            name: "unknown device trust mode",
            world: |w| w.settings.mode = DeviceTrustMode::Unknown("sometimes".into()),
            want: Err(EnrollDenied::UnknownTrustMode("sometimes".into()).into()),
            ..NOTHING
        },
        Tamper {
            name: "response after the ceremony deadline",
            between: |w| w.env.advance(Duration::seconds(61)),
            want: Err(EnrollError::Timeout { limit_secs: 60 }),
            ..NOTHING
        },
    ]
}

fn p384_spki() -> Vec<u8> {
    // openssl ecparam -name secp384r1 -genkey | openssl ec -pubout -outform DER
    let hex = "3076301006072a8648ce3d020106052b810400220362000446da64dcda04bfeaa57c839357076540c4c147903084155964c67a800bfd18e576dee189dd63e9509d689eac4c527ffe29d113ecb64a012dca4728bb5a8c987801696709e29ee47076beb185b9b33f0617b16d40a6b15abb01ebc8eddc7a085e";
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn tamperings_fail_with_the_named_error() {
    for t in tamperings() {
        let mut w = world();
        let (disposition, result) = run(&mut w, &t);
        match (&t.want, &result) {
            (Ok(()), Ok(_)) => {}
            (Err(want), Err(got)) => assert_eq!(got, want, "{}", t.name),
            (want, got) => panic!("{}: want {want:?}, got {got:?}", t.name),
        }
        let consumed = matches!(disposition, TokenDisposition::Consume { .. });
        assert_eq!(consumed, t.consumed, "{}: token consumed?", t.name);
        if let TokenDisposition::Consume { token_hash, .. } = disposition {
            assert_eq!(token_hash, w.token.hash(), "{}", t.name);
        }
    }
}

#[test]
fn honest_enrollment_records_the_credential_owner_and_data() {
    let mut w = world();
    let before = w.env.now;
    let (disposition, result) = run(&mut w, &NOTHING);
    let device = result.unwrap();
    assert_eq!(
        disposition,
        TokenDisposition::Consume {
            token_hash: w.token.hash(),
            spent_at: before
        }
    );
    assert_eq!(device.metadata.name, DEVICE_A);
    assert_eq!(device.spec.enroll_status, EnrollStatus::Enrolled);
    assert_eq!(device.spec.owner.as_deref(), Some("alice"));
    let cred = device.spec.credential.as_ref().unwrap();
    assert_eq!(cred.id, w.credential_id);
    assert_eq!(cred.attestation_type, AttestationType::Software);
    assert_eq!(STANDARD.decode(&cred.public_key_der).unwrap(), w.key.spki);
    assert_eq!(device.spec.collected_data.len(), 1);
    let recorded = &device.spec.collected_data[0];
    assert_eq!(recorded.record_time, Some(before));
    assert_eq!(
        DeviceCollectedData {
            record_time: None,
            ..recorded.clone()
        },
        w.data
    );
    assert_eq!(device.spec.update_time, Some(before));
    // What the server stores validates as a resource.
    dt_types::resource::Spec::validate(&device.spec, &device.metadata).unwrap();
}

#[test]
fn secure_enclave_claim_from_macos_is_recorded_even_without_software_credentials() {
    let mut w = world();
    w.settings.allow_software_credentials = false;
    w.storage = P256KeyStorage::SecureEnclave;
    w.device = Some(device(DEVICE_A, OsType::Macos, "C02XYZ"));
    w.data = collected(&w.env, OsType::Macos, "C02XYZ");
    let (_, result) = run(&mut w, &NOTHING);
    let device = result.unwrap();
    assert_eq!(
        device.spec.credential.unwrap().attestation_type,
        AttestationType::SecureEnclave
    );
}

#[test]
fn a_spent_token_is_refused_the_second_time() {
    let mut w = world();
    let (disposition, first) = run(&mut w, &NOTHING);
    first.unwrap();
    // The driver persists the disposition...
    let TokenDisposition::Consume { spent_at, .. } = disposition else {
        panic!()
    };
    w.record.as_mut().unwrap().spent_at = Some(spent_at);
    // (the device record in `w` is still the not-enrolled one: only the token stands in
    // the way of a second enrollment).
    let (disposition, second) = run(&mut w, &NOTHING);
    assert_eq!(
        second.unwrap_err(),
        EnrollError::Token(TokenProblem::AlreadySpent)
    );
    assert_eq!(disposition, TokenDisposition::Untouched);
}

#[test]
fn every_token_problem_reads_the_same_to_the_client() {
    let problems = [
        TokenProblem::Malformed,
        TokenProblem::Unknown,
        TokenProblem::HashMismatch,
        TokenProblem::Expired,
        TokenProblem::AlreadySpent,
        TokenProblem::OtherDevice,
        TokenProblem::OtherOs,
    ];
    for p in problems {
        let e = EnrollError::Token(p);
        assert_eq!(e.to_string(), "invalid device enrollment token");
        assert_eq!(e.user_message(), "invalid device enrollment token");
        assert_eq!(e.code(), ErrorCode::PermissionDenied);
        assert!(
            e.audit_message().contains(&p.to_string()),
            "{}",
            e.audit_message()
        );
    }
}

#[test]
fn messages_name_the_fix() {
    let e: EnrollError = EnrollDenied::SoftwareCredentialsNotAllowed.into();
    let msg = e.to_string();
    assert!(
        msg.contains("device_trust.allow_software_credentials"),
        "{msg}"
    );
    assert!(msg.contains("TPM or Secure Enclave"), "{msg}");
    let e: EnrollError = EnrollDenied::DeviceTrustDisabled.into();
    assert_eq!(e.to_string(), "device trust disabled by cluster settings");
    for e in [
        EnrollError::from(EnrollDenied::AlreadyEnrolled),
        EnrollError::from(PeerMisbehaved::WrongSignature),
        EnrollError::TpmNotSupported,
    ] {
        let m = e.to_string();
        assert_eq!(
            m,
            m.to_lowercase()
                .replace("tpm or secure enclave", "TPM or Secure Enclave")
        );
    }
}

#[test]
fn messages_out_of_order_are_refused_by_name() {
    let mut w = world();
    let payload = EnrollPayload::P256 {
        public_key_der: w.key.spki.clone(),
        storage: w.storage,
    };
    let (_, init) = client::start(
        w.token.clone(),
        w.credential_id.clone(),
        w.data.clone(),
        payload,
    );
    let resp = EnrollChallengeResponse::P256 {
        signature_der: vec![1, 2, 3],
    };
    assert_eq!(
        ExpectInit::expect_message(EnrollRequest::ChallengeResponse(resp)).unwrap_err(),
        PeerMisbehaved::UnexpectedMessage {
            expected: "EnrollInit",
            got: "EnrollChallengeResponse"
        }
        .into()
    );
    assert_eq!(
        ExpectChallengeResponse::expect_message(EnrollRequest::Init(Box::new(init.clone())))
            .unwrap_err(),
        PeerMisbehaved::UnexpectedMessage {
            expected: "EnrollChallengeResponse",
            got: "EnrollInit"
        }
        .into()
    );
    // The first message arriving after 10 s.
    let server = ExpectInit::new(&w.env);
    w.env.advance(Duration::seconds(11));
    let out = server.handle(init, &ctx(&w), &mut w.env.clone());
    assert_eq!(
        out.result.unwrap_err(),
        EnrollError::Timeout { limit_secs: 10 }
    );
}

#[test]
fn the_client_refuses_odd_challenges_and_foreign_successes() {
    let w = world();
    let payload = EnrollPayload::P256 {
        public_key_der: w.key.spki.clone(),
        storage: w.storage,
    };
    let start = || {
        client::start(
            w.token.clone(),
            w.credential_id.clone(),
            w.data.clone(),
            payload.clone(),
        )
    };

    let (c, _) = start();
    let err = c
        .handle(
            EnrollChallenge::P256 {
                challenge: vec![0; 31],
            },
            w.key.prover(),
        )
        .unwrap_err();
    assert!(matches!(
        err,
        ClientError::ServerMisbehaved(ServerMisbehaved::WrongChallengeLength {
            len: 31,
            expected: 32
        })
    ));

    let (c, _) = start();
    let mut env = TestEnv::new(3);
    let (_, tpm_challenge) =
        match FakeTpmVerifier.begin_enrollment(&FakeTpm::new("a").payload(), env.now, &mut env) {
            Ok(x) => x,
            Err(e) => panic!("{e}"),
        };
    let err = c
        .handle(EnrollChallenge::Tpm(tpm_challenge), w.key.prover())
        .unwrap_err();
    assert!(matches!(
        err,
        ClientError::ServerMisbehaved(ServerMisbehaved::WrongChallengeKind {
            expected: "p256",
            got: "tpm"
        })
    ));

    // A prover that fails is reported as such.
    let (c, _) = start();
    let err = c
        .handle(
            EnrollChallenge::P256 {
                challenge: vec![0; 32],
            },
            |_| Err("no key".into()),
        )
        .unwrap_err();
    assert!(matches!(err, ClientError::Prover { .. }), "{err}");

    // A success naming another credential.
    let mut w2 = world();
    let (_, result) = run(&mut w2, &NOTHING);
    let mut device = result.unwrap();
    let (c, _) = start();
    let (c, _) = c
        .handle(
            EnrollChallenge::P256 {
                challenge: vec![0; 32],
            },
            w.key.prover(),
        )
        .unwrap();
    device.spec.credential.as_mut().unwrap().id = "someone-else".parse().unwrap();
    let err = c
        .handle(dt_ceremony::messages::EnrollSuccess { device })
        .unwrap_err();
    assert!(matches!(
        err,
        ClientError::ServerMisbehaved(ServerMisbehaved::SuccessMismatch(_))
    ));
}

// ---------------------------------------------------------------------------------------
// TPM flow through a verifier (a fake one: the flow, not the TPM cryptography, is tested).

fn tpm_run(
    w: &mut World,
    tpm: &FakeTpm,
    tamper: fn(&mut EnrollChallengeResponse),
) -> Result<Device, EnrollError> {
    w.tpm = Some(Arc::new(FakeTpmVerifier));
    if w.credential_id.len() == 36 {
        // The world's UUID: use the id the AK gives.
        w.credential_id = tpm.credential_id();
    }
    let server = ExpectInit::new(&w.env);
    let (client_state, init) = client::start(
        w.token.clone(),
        w.credential_id.clone(),
        w.data.clone(),
        EnrollPayload::Tpm(tpm.payload()),
    );
    let mut env = w.env.clone();
    let (server, challenge) = server.handle(init, &ctx(w), &mut env).result?;
    let (client_state, mut response) = client_state.handle(challenge, tpm.prover()).unwrap();
    tamper(&mut response);
    let enrolled = server.handle(response, &mut env)?;
    Ok(client_state.handle(enrolled.reply()).unwrap())
}

#[test]
fn tpm_enrollment_through_the_verifier() {
    let mut w = world();
    let tpm = FakeTpm::new("a");
    let device = tpm_run(&mut w, &tpm, |_| {}).unwrap();
    let cred = device.spec.credential.unwrap();
    assert_eq!(cred.attestation_type, AttestationType::TpmEkpub);
    assert_eq!(cred.tpm_ak_public, Some(STANDARD.encode(&tpm.ak)));
    assert!(cred.public_key_der.is_empty());
}

#[test]
fn tpm_wrong_activation_secret_is_refused() {
    let mut w = world();
    let err = tpm_run(&mut w, &FakeTpm::new("a"), |r| {
        if let EnrollChallengeResponse::Tpm(t) = r {
            t.solution[0] ^= 1;
        }
    })
    .unwrap_err();
    assert_eq!(err, PeerMisbehaved::WrongActivationSecret.into());
    let mut w = world();
    let err = tpm_run(&mut w, &FakeTpm::new("a"), |r| {
        if let EnrollChallengeResponse::Tpm(t) = r {
            t.solution.truncate(16);
        }
    })
    .unwrap_err();
    assert_eq!(err, PeerMisbehaved::WrongActivationSecret.into());
}

#[test]
fn tpm_quote_over_another_nonce_is_refused() {
    let mut w = world();
    let err = tpm_run(&mut w, &FakeTpm::new("a"), |r| {
        if let EnrollChallengeResponse::Tpm(t) = r {
            t.platform_parameters.quote.attest[0] ^= 1;
        }
    })
    .unwrap_err();
    assert!(matches!(err, EnrollError::Attestation(_)), "{err:?}");
    assert_eq!(err.code(), ErrorCode::PermissionDenied);
}

#[test]
fn tpm_credential_id_must_be_the_aks() {
    let mut w = world();
    w.credential_id = "chosen-by-the-device".into();
    let err = tpm_run(&mut w, &FakeTpm::new("a"), |_| {}).unwrap_err();
    assert_eq!(
        err,
        PeerMisbehaved::InvalidField {
            field: "credential_id",
            why: "a tpm credential id must be derived from its attestation key".into(),
        }
        .into()
    );
}

#[test]
fn tpm_on_macos_is_refused() {
    let mut w = world();
    w.device = Some(device(DEVICE_A, OsType::Macos, "TAG-A"));
    w.data.os_type = Some(OsType::Macos);
    let err = tpm_run(&mut w, &FakeTpm::new("a"), |_| {}).unwrap_err();
    assert!(matches!(
        err,
        EnrollError::PeerMisbehaved(PeerMisbehaved::InvalidField { .. })
    ));
}

#[test]
fn messages_round_trip_through_serde() {
    let w = world();
    let payload = EnrollPayload::P256 {
        public_key_der: w.key.spki.clone(),
        storage: w.storage,
    };
    let (_, init) = client::start(
        w.token.clone(),
        w.credential_id.clone(),
        w.data.clone(),
        payload,
    );
    let req = EnrollRequest::Init(Box::new(init));
    let json = serde_json::to_string(&req).unwrap();
    assert_eq!(serde_json::from_str::<EnrollRequest>(&json).unwrap(), req);
    // Debug never shows the token.
    assert!(!format!("{req:?}").contains(w.token.expose()));
}
