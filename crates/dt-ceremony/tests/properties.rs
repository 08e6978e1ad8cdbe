//! Property tests: a model driver (an in-memory store with the transactions a real driver
//! performs) runs many ceremonies whose messages are reordered, duplicated, dropped,
//! delivered to the wrong stream, answered by the wrong key and delayed; named invariants
//! are checked after every step.
//!
//! - `token_used_at_most_once`: a token is consumed at most once, and enrolls at most one
//!   device;
//! - `no_device_without_proof`: a device only becomes enrolled with the key of the Init
//!   whose ceremony received a valid signature over that ceremony's own challenge;
//! - `no_certificate_without_valid_proof`: augmentation is only requested for the mTLS
//!   user, for the device found by the Init's data, after a signature over that
//!   ceremony's challenge by the device's stored credential.

// Test helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::*;
use dt_attest::p256::verify_challenge_signature;
use dt_ceremony::authn::server as authn_server;
use dt_ceremony::enroll::server as enroll_server;
use dt_ceremony::messages::{
    AuthenticateChallenge, AuthenticateChallengeResponse, AuthenticateInit, AuthenticateRequest,
    EnrollChallenge, EnrollChallengeResponse, EnrollInit, EnrollPayload, EnrollRequest,
    P256KeyStorage, UserCertificates,
};
use dt_ceremony::token::{DEFAULT_TOKEN_TTL, EnrollToken, EnrollTokenRecord, TokenDisposition};
use dt_types::device::{AttestationType, EnrollStatus, OsType};
use dt_types::resource::{Device, DeviceTrustMode, DeviceTrustSettings};
use proptest::prelude::*;
use time::Duration;

#[derive(Debug, Clone)]
enum Op {
    /// A new stream opens (for authentication: as mTLS identity `identity`).
    Open { identity: usize },
    /// One of the fixed Init messages reaches a stream (counted back from the newest).
    DeliverInit { session_back: usize, init: usize },
    /// A response ever sent, by anyone, reaches a stream (both counted back from the newest:
    /// recent messages are likelier, old ones are replays).
    DeliverResponse {
        session_back: usize,
        response_back: usize,
    },
    /// A device answers the challenge a stream last sent: with the key that belongs to the
    /// stream's Init, or with another key.
    Answer { session_back: usize, signer: Signer },
    /// Time passes: usually a little, sometimes past a deadline.
    Advance { secs: u8 },
    /// An orderly ceremony on a new stream (Open, Init, Answer with its own key, deliver
    /// the answer), so that schedules reach success often; other ops interleave around it.
    Orderly { identity: usize, init: usize },
}

#[derive(Debug, Clone, Copy)]
enum Signer {
    Own,
    Key(usize),
}

/// Recent items are likelier; older ones are replays.
fn recent() -> impl Strategy<Value = usize> {
    prop_oneof![4 => Just(0usize), 1 => 1usize..4]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let signer = prop_oneof![3 => Just(Signer::Own), 1 => (0usize..3).prop_map(Signer::Key)];
    let op = prop_oneof![
        2 => (0usize..3).prop_map(|identity| Op::Open { identity }),
        3 => (recent(), 0usize..8).prop_map(|(s, i)| Op::DeliverInit { session_back: s, init: i }),
        4 => (recent(), recent())
            .prop_map(|(s, r)| Op::DeliverResponse { session_back: s, response_back: r }),
        4 => (recent(), signer).prop_map(|(s, signer)| Op::Answer { session_back: s, signer }),
        2 => prop_oneof![12 => 0u8..3, 1 => 5u8..70].prop_map(|secs| Op::Advance { secs }),
        1 => (0usize..3, 0usize..8).prop_map(|(identity, init)| Op::Orderly { identity, init }),
    ];
    prop::collection::vec(op, 1..48)
}

/// Index counted back from the newest of `len` items.
fn back(len: usize, k: usize) -> Option<usize> {
    (len > 0).then(|| len - 1 - (k % len))
}

// ---------------------------------------------------------------------------------------
// enrollment

enum EnrollState {
    Init(enroll_server::ExpectInit),
    Response(Box<enroll_server::ExpectChallengeResponse>),
    Closed,
}

struct EnrollSession {
    state: EnrollState,
    /// Index of the Init this stream accepted.
    init_index: Option<usize>,
    init: Option<EnrollInit>,
    challenge: Option<Vec<u8>>,
    token_hash: Option<String>,
}

struct EnrollModel {
    env: TestEnv,
    settings: DeviceTrustSettings,
    tokens: BTreeMap<String, EnrollTokenRecord>,
    devices: BTreeMap<String, Device>,
    keys: Vec<TestKey>,
    inits: Vec<EnrollInit>,
    init_keys: Vec<usize>,
    responses: Vec<EnrollChallengeResponse>,
    sessions: Vec<EnrollSession>,
    consumed: BTreeMap<String, usize>,
    enrolled_by_token: BTreeMap<String, usize>,
    proven: BTreeSet<(String, Vec<u8>)>,
}

impl EnrollModel {
    fn new(seed: u64) -> Self {
        let mut env = TestEnv::new(seed);
        let keys = vec![
            TestKey::generate(),
            TestKey::generate(),
            TestKey::generate(),
        ];
        let mut devices = BTreeMap::new();
        devices.insert(
            DEVICE_A.to_string(),
            device(DEVICE_A, OsType::Linux, "TAG-A"),
        );
        devices.insert(
            DEVICE_B.to_string(),
            device(DEVICE_B, OsType::Linux, "TAG-B"),
        );
        let mut tokens = BTreeMap::new();
        let mut issue = |dev: &str, env: &mut TestEnv| {
            let (t, r) =
                EnrollTokenRecord::issue(dev.parse().unwrap(), env.now, DEFAULT_TOKEN_TTL, env);
            tokens.insert(r.token_hash.clone(), r);
            t
        };
        let t_a = issue(DEVICE_A, &mut env);
        let t_b = issue(DEVICE_B, &mut env);
        // A second token for A: the state machine must not rely on "one token per device".
        let t_a2 = issue(DEVICE_A, &mut env);
        let data_a = collected(&env, OsType::Linux, "TAG-A");
        let data_b = collected(&env, OsType::Linux, "TAG-B");
        let init = |token: &EnrollToken, cred: &str, data, key: &TestKey| EnrollInit {
            token: token.clone(),
            credential_id: cred.into(),
            device_data: data,
            payload: EnrollPayload::P256 {
                public_key_der: key.spki.clone(),
                storage: P256KeyStorage::Software,
            },
        };
        // The key index each Init below carries.
        let init_keys = vec![0, 1, 2, 0, 1, 0, 2];
        let inits = vec![
            init(&t_a, "cred-a", data_a.clone(), &keys[0]),
            init(&t_b, "cred-b", data_b.clone(), &keys[1]),
            // Someone else holding token A, with their own key.
            init(&t_a, "cred-x", data_a.clone(), &keys[2]),
            // Token A with B's data.
            init(&t_a, "cred-a2", data_b.clone(), &keys[0]),
            // Token B with a credential id A may already hold.
            init(&t_b, "cred-a", data_b.clone(), &keys[1]),
            init(&t_a2, "cred-a3", data_a.clone(), &keys[0]),
            init(&EnrollToken::generate(&mut env), "cred-z", data_a, &keys[2]),
        ];
        EnrollModel {
            env,
            settings: settings(DeviceTrustMode::Optional, true),
            tokens,
            devices,
            keys,
            inits,
            init_keys,
            responses: vec![],
            sessions: vec![],
            consumed: BTreeMap::new(),
            enrolled_by_token: BTreeMap::new(),
            proven: BTreeSet::new(),
        }
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Open { .. } => self.sessions.push(EnrollSession {
                state: EnrollState::Init(enroll_server::ExpectInit::new(&self.env)),
                init_index: None,
                init: None,
                challenge: None,
                token_hash: None,
            }),
            Op::Orderly { identity, init } => {
                for op in [
                    Op::Open { identity },
                    Op::DeliverInit {
                        session_back: 0,
                        init,
                    },
                    Op::Answer {
                        session_back: 0,
                        signer: Signer::Own,
                    },
                    Op::DeliverResponse {
                        session_back: 0,
                        response_back: 0,
                    },
                ] {
                    self.step(&op);
                }
            }
            Op::Advance { secs } => self.env.advance(Duration::seconds(i64::from(secs))),
            Op::Answer {
                session_back,
                signer,
            } => {
                let Some(idx) = back(self.sessions.len(), session_back) else {
                    return;
                };
                let s = &self.sessions[idx];
                let (Some(c), Some(i)) = (&s.challenge, s.init_index) else {
                    return;
                };
                let key = match signer {
                    Signer::Own => self.init_keys[i],
                    Signer::Key(k) => k,
                };
                let sig = self.keys[key].sign(c);
                self.responses
                    .push(EnrollChallengeResponse::P256 { signature_der: sig });
            }
            Op::DeliverInit { session_back, init } => {
                let Some(idx) = back(self.sessions.len(), session_back) else {
                    return;
                };
                let i = init % self.inits.len();
                let msg = EnrollRequest::Init(Box::new(self.inits[i].clone()));
                self.deliver(idx, msg);
                if self.sessions[idx].init.is_some() && self.sessions[idx].init_index.is_none() {
                    self.sessions[idx].init_index = Some(i);
                }
            }
            Op::DeliverResponse {
                session_back,
                response_back,
            } => {
                let Some(idx) = back(self.sessions.len(), session_back) else {
                    return;
                };
                let Some(r) = back(self.responses.len(), response_back) else {
                    return;
                };
                let msg = EnrollRequest::ChallengeResponse(self.responses[r].clone());
                self.deliver(idx, msg);
            }
        }
    }

    /// What a driver does with one message on one stream.
    fn deliver(&mut self, idx: usize, msg: EnrollRequest) {
        let state = std::mem::replace(&mut self.sessions[idx].state, EnrollState::Closed);
        match state {
            EnrollState::Closed => {}
            EnrollState::Init(server) => {
                let Ok(init) = enroll_server::ExpectInit::expect_message(msg) else {
                    return;
                };
                let record = init
                    .token
                    .lookup_hash()
                    .and_then(|h| self.tokens.get(&h))
                    .cloned();
                let device = record
                    .as_ref()
                    .and_then(|r| self.devices.get(r.device_id.as_str()))
                    .cloned();
                let in_use = self.devices.values().any(|d| {
                    d.spec
                        .credential
                        .as_ref()
                        .is_some_and(|c| c.id == init.credential_id)
                });
                let alice = dt_types::UserName::parse("alice").unwrap();
                let ctx = enroll_server::EnrollContext {
                    user: &alice,
                    settings: &self.settings,
                    token: record.as_ref(),
                    device: device.as_ref(),
                    credential_id_in_use: in_use,
                    tpm: None,
                };
                let outcome = server.handle(init.clone(), &ctx, &mut self.env);
                // Persist the token disposition first, whatever the result.
                if let TokenDisposition::Consume {
                    token_hash,
                    spent_at,
                } = &outcome.token
                {
                    let rec = self
                        .tokens
                        .get_mut(token_hash)
                        .expect("consumed token exists");
                    assert!(
                        rec.spent_at.is_none(),
                        "token_used_at_most_once: consumed twice"
                    );
                    rec.spent_at = Some(*spent_at);
                    let n = self.consumed.entry(token_hash.clone()).or_default();
                    *n += 1;
                    assert!(*n <= 1, "token_used_at_most_once");
                }
                if let Ok((next, challenge)) = outcome.result {
                    let TokenDisposition::Consume { token_hash, .. } = outcome.token else {
                        panic!(
                            "token_used_at_most_once: a ceremony went on without spending a token"
                        )
                    };
                    let EnrollChallenge::P256 { challenge } = challenge else {
                        panic!()
                    };
                    let s = &mut self.sessions[idx];
                    s.state = EnrollState::Response(Box::new(next));
                    s.init = Some(init);
                    s.challenge = Some(challenge);
                    s.token_hash = Some(token_hash);
                }
            }
            EnrollState::Response(server) => {
                let Ok(resp) = enroll_server::ExpectChallengeResponse::expect_message(msg) else {
                    return;
                };
                let Ok(enrolled) = server.handle(resp.clone(), &mut self.env) else {
                    return;
                };
                let s = &self.sessions[idx];
                let init = s.init.as_ref().expect("init recorded");
                let EnrollPayload::P256 { public_key_der, .. } = &init.payload else {
                    panic!()
                };
                let EnrollChallengeResponse::P256 { signature_der } = &resp else {
                    panic!()
                };
                // no_device_without_proof: checked independently of the state machine.
                verify_challenge_signature(
                    public_key_der,
                    s.challenge.as_ref().expect("challenge recorded"),
                    signature_der,
                )
                .expect("no_device_without_proof: enrolled without a valid signature");
                let device = enrolled.device;
                let cred = device.spec.credential.as_ref().expect("credential");
                assert_eq!(
                    STANDARD.decode(&cred.public_key_der).unwrap(),
                    *public_key_der,
                    "no_device_without_proof: enrolled another key"
                );
                assert_eq!(cred.id, init.credential_id);
                assert_eq!(Some(device.spec.os_type), init.device_data.os_type);
                assert_eq!(device.spec.asset_tag, init.device_data.serial_number);
                // The driver's transaction: the device unchanged since Init, the credential
                // id still free. A conflict aborts the write.
                let current = &self.devices[&device.metadata.name];
                let id_taken = self
                    .devices
                    .values()
                    .any(|d| d.spec.credential.as_ref().is_some_and(|c| c.id == cred.id));
                if current.spec.enroll_status == EnrollStatus::Enrolled || id_taken {
                    return;
                }
                let token_hash = s.token_hash.clone().expect("token recorded");
                assert_eq!(self.tokens[&token_hash].device_id, device.metadata.name);
                let n = self.enrolled_by_token.entry(token_hash).or_default();
                *n += 1;
                assert!(*n <= 1, "token_used_at_most_once: one token enrolled twice");
                self.proven
                    .insert((device.metadata.name.clone(), public_key_der.clone()));
                self.devices.insert(device.metadata.name.clone(), device);
            }
        }
    }

    fn check_end_state(&self) {
        for d in self.devices.values() {
            if d.spec.enroll_status == EnrollStatus::Enrolled {
                let key = STANDARD
                    .decode(&d.spec.credential.as_ref().unwrap().public_key_der)
                    .unwrap();
                assert!(
                    self.proven.contains(&(d.metadata.name.clone(), key)),
                    "no_device_without_proof: {} enrolled without a recorded proof",
                    d.metadata.name
                );
            }
        }
        for n in self.consumed.values() {
            assert!(*n <= 1, "token_used_at_most_once");
        }
    }
}

// ---------------------------------------------------------------------------------------
// authentication

enum AuthnState {
    Init(authn_server::ExpectInit),
    Response(Box<authn_server::ExpectChallengeResponse>),
    Closed,
}

struct AuthnSession {
    identity: usize,
    state: AuthnState,
    init: Option<AuthenticateInit>,
    challenge: Option<Vec<u8>>,
    device_at_init: Option<Device>,
}

struct AuthnModel {
    env: TestEnv,
    settings: DeviceTrustSettings,
    identities: Vec<authn_server::MtlsIdentity>,
    devices: BTreeMap<String, Device>,
    keys: Vec<TestKey>,
    inits: Vec<InitTemplate>,
    responses: Vec<AuthenticateChallengeResponse>,
    sessions: Vec<AuthnSession>,
    augmented: usize,
}

struct InitTemplate {
    certs_of: Option<usize>,
    credential_id: String,
    device_data: dt_types::device::DeviceCollectedData,
}

fn identity(user: &str) -> authn_server::MtlsIdentity {
    authn_server::MtlsIdentity {
        x509_der: format!("x509-{user}").into_bytes(),
        certificate: authn_server::CertView {
            user: user.parse().unwrap(),
            roles: vec!["access".into()],
            public_key_fingerprint: format!("fp-{user}"),
            device: None,
        },
    }
}

impl AuthnModel {
    fn new(seed: u64) -> Self {
        let env = TestEnv::new(seed);
        let keys = vec![
            TestKey::generate(),
            TestKey::generate(),
            TestKey::generate(),
        ];
        let mut devices = BTreeMap::new();
        for (id, tag, key, cred, owner) in [
            (DEVICE_A, "TAG-A", &keys[0], "cred-a", "alice"),
            (DEVICE_B, "TAG-B", &keys[1], "cred-b", "bob"),
        ] {
            let mut d = device(id, OsType::Linux, tag);
            d.spec.enroll_status = EnrollStatus::Enrolled;
            d.spec.credential = Some(key.credential(cred, AttestationType::Software));
            let mut rec = collected(&env, OsType::Linux, tag);
            rec.record_time = Some(env.now);
            d.spec.collected_data = vec![rec];
            d.spec.owner = Some(owner.into());
            devices.insert(id.to_string(), d);
        }
        let identities = vec![identity("alice"), identity("bob"), identity("mallory")];
        let data_a = collected(&env, OsType::Linux, "TAG-A");
        let data_b = collected(&env, OsType::Linux, "TAG-B");
        let mut drifted = data_a.clone();
        drifted.model_identifier = "Another Model".into();
        // `None`: the stream's own certificates (an honest client); `Some(i)`: identity i's
        // certificates, whoever sends them.
        let init = |certs_of: Option<usize>, cred: &str, data| InitTemplate {
            certs_of,
            credential_id: cred.to_string(),
            device_data: data,
        };
        let inits = vec![
            init(None, "cred-a", data_a.clone()),
            init(None, "cred-b", data_b.clone()),
            init(None, "cred-a", drifted),
            init(None, "cred-b", data_a.clone()),
            init(Some(0), "cred-a", data_a.clone()),
            init(Some(1), "cred-b", data_b),
            init(Some(2), "cred-a", data_a),
        ];
        AuthnModel {
            env,
            settings: settings(DeviceTrustMode::Required, true),
            identities,
            devices,
            keys,
            inits,
            responses: vec![],
            sessions: vec![],
            augmented: 0,
        }
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Open { identity } => self.sessions.push(AuthnSession {
                identity,
                state: AuthnState::Init(authn_server::ExpectInit::new(&self.env)),
                init: None,
                challenge: None,
                device_at_init: None,
            }),
            Op::Orderly { identity, init } => {
                for op in [
                    Op::Open { identity },
                    Op::DeliverInit {
                        session_back: 0,
                        init,
                    },
                    Op::Answer {
                        session_back: 0,
                        signer: Signer::Own,
                    },
                    Op::DeliverResponse {
                        session_back: 0,
                        response_back: 0,
                    },
                ] {
                    self.step(&op);
                }
            }
            Op::Advance { secs } => self.env.advance(Duration::seconds(i64::from(secs))),
            Op::Answer {
                session_back,
                signer,
            } => {
                let Some(idx) = back(self.sessions.len(), session_back) else {
                    return;
                };
                let s = &self.sessions[idx];
                let (Some(c), Some(d)) = (&s.challenge, &s.device_at_init) else {
                    return;
                };
                let key = match signer {
                    // The enrolled key of the device the Init named.
                    Signer::Own => usize::from(d.metadata.name == DEVICE_B),
                    Signer::Key(k) => k,
                };
                self.responses.push(AuthenticateChallengeResponse::P256 {
                    signature_der: self.keys[key].sign(c),
                });
            }
            Op::DeliverInit { session_back, init } => {
                let Some(idx) = back(self.sessions.len(), session_back) else {
                    return;
                };
                let t = &self.inits[init % self.inits.len()];
                let who = t.certs_of.unwrap_or(self.sessions[idx].identity);
                let msg = AuthenticateRequest::Init(Box::new(AuthenticateInit {
                    user_certificates: UserCertificates {
                        x509_der: self.identities[who].x509_der.clone(),
                        ssh_authorized_key: None,
                    },
                    credential_id: t.credential_id.clone(),
                    device_data: t.device_data.clone(),
                    device_web_token: None,
                }));
                self.deliver(idx, msg);
            }
            Op::DeliverResponse {
                session_back,
                response_back,
            } => {
                let Some(idx) = back(self.sessions.len(), session_back) else {
                    return;
                };
                let Some(r) = back(self.responses.len(), response_back) else {
                    return;
                };
                let msg = AuthenticateRequest::ChallengeResponse(self.responses[r].clone());
                self.deliver(idx, msg);
            }
        }
    }

    fn deliver(&mut self, idx: usize, msg: AuthenticateRequest) {
        let state = std::mem::replace(&mut self.sessions[idx].state, AuthnState::Closed);
        match state {
            AuthnState::Closed => {}
            AuthnState::Init(server) => {
                let Ok(init) = authn_server::ExpectInit::expect_message(msg) else {
                    return;
                };
                let who = &self.identities[self.sessions[idx].identity];
                let device = self
                    .devices
                    .values()
                    .find(|d| {
                        Some(d.spec.os_type) == init.device_data.os_type
                            && d.spec.asset_tag == init.device_data.serial_number
                    })
                    .cloned();
                let ctx = authn_server::AuthnContext {
                    settings: &self.settings,
                    identity: who,
                    ssh_certificate: None,
                    device: device.as_ref(),
                    locks: &[],
                    tpm: None,
                };
                if let Ok((next, challenge)) = server.handle(init.clone(), &ctx, &mut self.env) {
                    let AuthenticateChallenge::P256 { challenge } = challenge else {
                        panic!()
                    };
                    let s = &mut self.sessions[idx];
                    s.state = AuthnState::Response(Box::new(next));
                    s.init = Some(init);
                    s.challenge = Some(challenge);
                    s.device_at_init = device;
                }
            }
            AuthnState::Response(server) => {
                let Ok(resp) = authn_server::ExpectChallengeResponse::expect_message(msg) else {
                    return;
                };
                let Ok(outcome) = server.handle(resp.clone(), &mut self.env) else {
                    return;
                };
                let s = &self.sessions[idx];
                let who = &self.identities[s.identity];
                let init = s.init.as_ref().expect("init recorded");
                let loaded = s.device_at_init.as_ref().expect("device recorded");
                // no_certificate_without_valid_proof, checked independently.
                assert_eq!(
                    outcome.augment.user, who.certificate.user,
                    "augmenting another user"
                );
                assert_eq!(
                    init.user_certificates.x509_der, who.x509_der,
                    "in-band cert not the mTLS one"
                );
                assert_eq!(outcome.augment.device.device_id, loaded.metadata.name);
                let cred = loaded.spec.credential.as_ref().expect("enrolled");
                assert_eq!(
                    cred.id, init.credential_id,
                    "augmenting with another credential"
                );
                assert_eq!(outcome.augment.device.credential_id, cred.id);
                let AuthenticateChallengeResponse::P256 { signature_der } = &resp else {
                    panic!()
                };
                verify_challenge_signature(
                    &STANDARD.decode(&cred.public_key_der).unwrap(),
                    s.challenge.as_ref().expect("challenge recorded"),
                    signature_der,
                )
                .expect("no_certificate_without_valid_proof: no valid signature");
                assert_eq!(
                    init.device_data.model_identifier,
                    loaded.spec.collected_data[0].model_identifier,
                    "augmented despite drift"
                );
                assert!(outcome.device.spec.collected_data.len() <= 11);
                // The driver's transaction: write the history only if the device is as loaded.
                let current = &self.devices[&loaded.metadata.name];
                if current != loaded {
                    return;
                }
                self.devices
                    .insert(loaded.metadata.name.clone(), outcome.device);
                self.augmented += 1;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn enrollment_invariants_hold_under_reordering(seed in any::<u64>(), ops in ops()) {
        let mut model = EnrollModel::new(seed);
        for op in &ops {
            model.step(op);
        }
        model.check_end_state();
    }

    #[test]
    fn authentication_invariants_hold_under_reordering(seed in any::<u64>(), ops in ops()) {
        let mut model = AuthnModel::new(seed);
        for op in &ops {
            model.step(op);
        }
    }
}

/// The models are not vacuous: an orderly run enrolls and authenticates.
#[test]
fn orderly_runs_succeed_in_the_models() {
    let mut m = EnrollModel::new(7);
    let script = [
        Op::Open { identity: 0 },
        Op::DeliverInit {
            session_back: 0,
            init: 0,
        },
        Op::Answer {
            session_back: 0,
            signer: Signer::Own,
        },
        Op::DeliverResponse {
            session_back: 0,
            response_back: 0,
        },
    ];
    for op in &script {
        m.step(op);
    }
    assert_eq!(
        m.devices[DEVICE_A].spec.enroll_status,
        EnrollStatus::Enrolled
    );
    // Replaying the same Init on a new stream: the token is spent.
    m.step(&Op::Open { identity: 0 });
    m.step(&Op::DeliverInit {
        session_back: 0,
        init: 0,
    });
    assert!(matches!(m.sessions[1].state, EnrollState::Closed));

    let mut a = AuthnModel::new(7);
    let script = [
        Op::Open { identity: 0 },
        Op::DeliverInit {
            session_back: 0,
            init: 0,
        },
        Op::Answer {
            session_back: 0,
            signer: Signer::Own,
        },
        Op::DeliverResponse {
            session_back: 0,
            response_back: 0,
        },
    ];
    for op in &script {
        a.step(op);
    }
    assert_eq!(a.augmented, 1);
    assert_eq!(a.devices[DEVICE_A].spec.collected_data.len(), 2);
}

/// The generated schedules reach success often enough for the invariants to mean something.
#[test]
fn random_schedules_are_not_vacuous() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut enrolled, mut augmented, mut refused_after_success) = (0, 0, 0);
    let runs = 200;
    for seed in 0..runs {
        let ops = ops().new_tree(&mut runner).unwrap().current();
        let mut m = EnrollModel::new(seed);
        for op in &ops {
            m.step(op);
        }
        enrolled += usize::from(!m.proven.is_empty());
        let mut a = AuthnModel::new(seed);
        for op in &ops {
            a.step(op);
        }
        augmented += usize::from(a.augmented > 0);
        refused_after_success += usize::from(m.proven.len() == 1 && m.consumed.len() > 1);
    }
    eprintln!(
        "of {runs} schedules: {enrolled} enrolled, {augmented} augmented, {refused_after_success} mixed"
    );
    assert!(
        enrolled >= runs as usize / 10,
        "only {enrolled} of {runs} schedules enrolled a device"
    );
    assert!(
        augmented >= runs as usize / 10,
        "only {augmented} of {runs} schedules augmented"
    );
}
