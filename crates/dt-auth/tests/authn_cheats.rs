//! Device authentication cheats (issue 5), plus the ceremony deadlines and the per-user
//! ceremony rate limit, against a real auth service over loopback mTLS with SQLite.
//!
//! The cheats are one table: each case names a tampering of an honest authentication (the
//! first message, the challenge answer, or what is stored before the ceremony starts), the
//! status the client must see, the `device.authenticate` failure event that explains it,
//! and that the device record did not move (no collected data written). One driver runs
//! them all and reports every failing case by name. The tests left outside the table say
//! why next to them.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

mod support;

use dt_ca::{CaKind, CertAuthority};
use dt_ceremony::messages::{
    AuthenticateInit, AuthenticateRequest, AuthenticateResponse, UserCertificates,
};
use dt_types::audit::EventType;
use dt_types::device::OsType;
use dt_types::resource::{DeviceTrustMode, DeviceTrustSettings, LockTarget};
use futures::future::LocalBoxFuture;
use support::*;
use tonic::Code;
use tonic::transport::Channel;

const DRIFT: &str = "collected data drift detected";
const NOT_MTLS: &str = "the x509 certificate is not the mTLS client certificate";

/// Authenticates `dev` for `user` with `data` and the right key.
async fn auth_with(
    user: &User,
    certs: &UserCertificates,
    dev: &EnrolledDevice,
    d: dt_types::device::DeviceCollectedData,
) -> Result<UserCertificates, tonic::Status> {
    authenticate_raw(
        &user.ch,
        authn_init(certs, &dev.key.credential_id, d),
        |c| dev.key.authn_response(c),
    )
    .await
}

/// Sends only the Init of an authentication of `dev` and returns the first answer:
/// refusals at Init must come before any challenge.
async fn auth_refused_at_init(
    user: &User,
    certs: &UserCertificates,
    dev: &EnrolledDevice,
    d: dt_types::device::DeviceCollectedData,
) -> Result<AuthenticateResponse, tonic::Status> {
    authn_init_reply(&user.ch, authn_init(certs, &dev.key.credential_id, d)).await
}

/// The device's revision now; for "nothing was written" checks.
async fn rev(cl: &Cluster, dev: &EnrolledDevice) -> i64 {
    cl.device(&dev.id).await.expect("device").1
}

async fn assert_rev(cl: &Cluster, dev: &EnrolledDevice, rev: i64) {
    assert_unchanged(cl, &dev.id, &dev.key.credential_id, rev).await;
}

/// The enrolled device `id` is at revision `rev` and still has credential `credential_id`.
async fn assert_unchanged(cl: &Cluster, id: &str, credential_id: &str, rev: i64) {
    let (d, now) = cl.device(id).await.expect("device");
    assert_eq!(now, rev, "device {id} record unchanged");
    assert_eq!(
        d.spec.credential.map(|c| c.id.to_string()).as_deref(),
        Some(credential_id),
        "device {id} keeps its credential"
    );
}

/// Certificates for `u` (same cluster name, same key) signed by a CA that is not the
/// cluster's: (SSH certificate, X.509 DER).
fn rogue_certificates(u: &User) -> (String, Vec<u8>) {
    let rogue = CertAuthority::generate("it", CaKind::User, time::OffsetDateTime::now_utc())
        .expect("rogue CA");
    let ssh = rogue
        .issue_ssh_user_cert(&u.key.ssh_public_key().expect("ssh key"), &u.identity)
        .expect("rogue ssh")
        .to_openssh()
        .expect("openssh");
    let x509 = rogue
        .issue_x509_client_cert(&u.key.spki_der(), &u.identity)
        .expect("rogue x509");
    (ssh, x509)
}

// ---------------------------------------------------------------------------------------
// the table's vocabulary

/// An honest authentication about to happen, which a case's [`Tamper`] edits, and what the
/// driver checks once it was refused.
struct Attempt {
    /// A `device-enroll` user with an enrolled device.
    owner: User,
    /// The channel the ceremony runs on, when not the owner's.
    channel: Option<Channel>,
    /// The owner's enrolled device.
    dev: EnrolledDevice,
    /// What is sent first: honest until tampered.
    init: AuthenticateInit,
    /// How the challenge is answered.
    answer: Answer,
    /// The device the audit event names (see [`Case::event_device`]).
    device: String,
    /// Enrolled devices whose record must not have moved: (id, credential id, revision).
    unchanged: Vec<(String, String, i64)>,
    /// Registered, unenrolled devices that must be untouched: (id, revision).
    untouched: Vec<(String, i64)>,
    /// Users who must have no `device.authenticate` event at all.
    quiet: Vec<String>,
}

impl Attempt {
    /// `{user}` is the owner's name, `{device}` the device id.
    fn fill(&self, text: &str) -> String {
        text.replace("{user}", &self.owner.name)
            .replace("{device}", &self.device)
    }

    /// Re-reads the owner's device revision (after a case wrote to it on purpose).
    async fn refresh(&mut self, cl: &Cluster) {
        let rev = rev(cl, &self.dev).await;
        self.unchanged = vec![(self.dev.id.clone(), self.dev.key.credential_id.clone(), rev)];
    }
}

/// A fresh `device-enroll` user with a freshly enrolled device, and the honest first
/// message of its authentication.
async fn attempt(cl: &Cluster) -> Attempt {
    let owner = cl.user("authn-cheat-", &["device-enroll"]).await;
    let dev = cl.enrolled_device(&owner).await;
    let init = authn_init(&owner.certs, &dev.key.credential_id, dev.data.clone());
    let mut a = Attempt {
        channel: None,
        init,
        answer: Answer::Refused,
        device: dev.id.clone(),
        unchanged: vec![],
        untouched: vec![],
        quiet: vec![],
        owner,
        dev,
    };
    a.refresh(cl).await;
    a
}

/// How a case's ceremony goes after its first message.
enum Answer {
    /// The first message alone must be refused, before any challenge is handed out.
    Refused,
    /// The challenge is answered with a signature by this key.
    SignWith(Box<DeviceKey>),
}

/// What a case does to the honest authentication.
enum Tamper {
    /// Edits the message (or the answer) in flight.
    Message(fn(&mut Attempt)),
    /// Changes what is stored, or runs earlier ceremonies, before the authentication
    /// starts (and may edit the message too).
    State(for<'a> fn(&'a Cluster, &'a mut Attempt) -> LocalBoxFuture<'a, ()>),
}

/// How the refusal's text must read; `{user}` and `{device}` are filled in.
enum Text {
    /// Exactly this.
    Is(&'static str),
    /// Containing this.
    Has(&'static str),
}

/// One row of the table.
struct Case {
    name: &'static str,
    tamper: Tamper,
    code: Code,
    message: Text,
    /// The owner's latest `device.authenticate` event is a failure whose message contains
    /// this.
    event: Option<&'static str>,
    /// `Some(true)`: that event names [`Attempt::device`]; `Some(false)`: it names no
    /// device.
    event_device: Option<bool>,
}

fn case(name: &'static str, tamper: Tamper, code: Code, message: Text) -> Case {
    Case {
        name,
        tamper,
        code,
        message,
        event: None,
        event_device: None,
    }
}

impl Case {
    fn event(self, needle: &'static str) -> Case {
        Case {
            event: Some(needle),
            ..self
        }
    }
    fn event_names_device(self, names: bool) -> Case {
        Case {
            event_device: Some(names),
            ..self
        }
    }
}

use Code::{FailedPrecondition, InvalidArgument, PermissionDenied};
use Tamper::{Message, State};
use Text::{Has, Is};

// ---------------------------------------------------------------------------------------
// the driver

/// Runs every case on `cl` (see [`run_table`]).
async fn run(cl: &Cluster, cases: Vec<Case>) {
    run_table(
        cases
            .into_iter()
            .map(|c| (c.name, Box::pin(run_case(cl, c)) as LocalBoxFuture<'_, ()>)),
    )
    .await;
}

async fn run_case(cl: &Cluster, c: Case) {
    let mut a = attempt(cl).await;
    match c.tamper {
        Message(edit) => edit(&mut a),
        State(change) => change(cl, &mut a).await,
    }
    let ch = a.channel.as_ref().unwrap_or(&a.owner.ch);
    let init = a.init.clone();
    let r = match &a.answer {
        Answer::Refused => authn_init_reply(ch, init).await.map(|r| format!("{r:?}")),
        Answer::SignWith(key) => authenticate_raw(ch, init, |c| key.authn_response(c))
            .await
            .map(|certs| format!("{certs:?}")),
    };
    match c.message {
        Is(text) => {
            let want = a.fill(text);
            let s = assert_status(r, c.code, &want);
            assert_eq!(s.message(), want, "the whole status message");
        }
        Has(text) => {
            assert_status(r, c.code, &a.fill(text));
        }
    }
    if let Some(needle) = c.event {
        let ev = cl
            .assert_failure_event(
                &a.owner.name,
                EventType::DeviceAuthenticate,
                &a.fill(needle),
            )
            .await;
        match c.event_device {
            Some(true) => assert_eq!(
                ev.device.map(|d| d.device_id),
                Some(a.device.clone()),
                "the audit event names the device"
            ),
            Some(false) => assert_eq!(ev.device, None, "the audit event names no device"),
            None => {}
        }
    }
    for (id, credential_id, rev) in &a.unchanged {
        assert_unchanged(cl, id, credential_id, *rev).await;
    }
    for (id, rev) in &a.untouched {
        cl.assert_untouched(id, *rev).await;
    }
    for user in &a.quiet {
        assert!(
            cl.events(user, EventType::DeviceAuthenticate)
                .await
                .is_empty(),
            "{user} has no device.authenticate event"
        );
    }
}

// ---------------------------------------------------------------------------------------
// the table

/// The cheats that need nothing but the shared cluster.
fn cheats() -> Vec<Case> {
    vec![
        case(
            "signature by another device's key",
            State(|cl, a| {
                Box::pin(async move {
                    let victim = cl.user("otherkey-victim-", &["device-enroll"]).await;
                    let theirs = cl.enrolled_device(&victim).await;
                    a.answer = Answer::SignWith(Box::new(theirs.key));
                })
            }),
            PermissionDenied,
            Has("the device signature does not verify over this ceremony's challenge"),
        )
        .event("the device signature does not verify over this ceremony's challenge")
        .event_names_device(true),
        case(
            "another device's credential id",
            State(|cl, a| {
                Box::pin(async move {
                    // My serial, their credential id.
                    let victim = cl.user("othercred-victim-", &["device-enroll"]).await;
                    let theirs = cl.enrolled_device(&victim).await;
                    let theirs_rev = rev(cl, &theirs).await;
                    a.init.credential_id = theirs.key.credential_id.clone();
                    a.unchanged
                        .push((theirs.id, theirs.key.credential_id, theirs_rev));
                })
            }),
            PermissionDenied,
            Is("unknown device credential"),
        )
        .event("unknown device credential"),
        case(
            "drift: OS type changed",
            Message(|a| a.init.device_data.os_type = Some(OsType::Windows)),
            FailedPrecondition,
            Has("device not found in the inventory"),
        )
        .event("device not found in the inventory"),
        case(
            "drift: serial changed",
            Message(|a| a.init.device_data.serial_number = unique("SWAPPED")),
            FailedPrecondition,
            Has("device not found in the inventory"),
        )
        .event("device not found in the inventory")
        .event_names_device(false),
        case(
            "drift: model changed",
            Message(|a| a.init.device_data.model_identifier = "OtherBook9,9".into()),
            PermissionDenied,
            Has(DRIFT),
        )
        // MODEL is "TestBook1,1".
        .event("collected data drift detected (model changed since enrollment (\"TestBook1,1\" → \"OtherBook9,9\"))"),
        case(
            "drift: OS version went backwards",
            Message(|a| {
                assert_eq!(a.init.device_data.os_version, "13.10", "enrolled with");
                // Numerically older, lexically newer.
                a.init.device_data.os_version = "13.9".into();
            }),
            PermissionDenied,
            Has(DRIFT),
        )
        .event("collected data drift detected (os version went backwards (\"13.10\" → \"13.9\"))"),
        case(
            "OS version back to the enrollment one after an upgrade",
            State(|cl, a| {
                Box::pin(async move {
                    a.dev = cl
                        .enrolled_device_with(&a.owner, |d| d.os_version = "13.9".into())
                        .await;
                    a.device = a.dev.id.clone();
                    let mut upgraded = a.dev.data.clone();
                    upgraded.os_version = "13.10".into();
                    auth_with(&a.owner, &a.owner.certs, &a.dev, upgraded)
                        .await
                        .expect("an upgrade is no drift");
                    let (stored, _) = cl.device(&a.dev.id).await.expect("device");
                    assert_eq!(stored.spec.collected_data.len(), 2);
                    assert_eq!(stored.spec.collected_data[1].os_version, "13.10");
                    a.refresh(cl).await;
                    // Compared with the latest record, not the enrollment one: 13.9 is now
                    // backwards.
                    a.init = authn_init(&a.owner.certs, &a.dev.key.credential_id, a.dev.data.clone());
                })
            }),
            PermissionDenied,
            Has(DRIFT),
        )
        .event("os version went backwards (\"13.10\" → \"13.9\")"),
        case(
            "augmented certificates, the augmented X.509 as the mTLS identity",
            State(|cl, a| {
                Box::pin(async move {
                    let augmented = auth_with(&a.owner, &a.owner.certs, &a.dev, a.dev.data.clone())
                        .await
                        .expect("first authentication");
                    a.refresh(cl).await;
                    a.channel = Some(
                        cl.channel_with(&augmented.x509_der, &a.owner.key)
                            .await
                            .expect("mTLS with the augmented certificate"),
                    );
                    a.init.user_certificates = augmented;
                })
            }),
            PermissionDenied,
            Has("the certificates already carry a device"),
        )
        .event("the certificates already carry a device"),
        case(
            "augmented SSH certificate next to the original X.509",
            State(|cl, a| {
                Box::pin(async move {
                    let augmented = auth_with(&a.owner, &a.owner.certs, &a.dev, a.dev.data.clone())
                        .await
                        .expect("first authentication");
                    a.refresh(cl).await;
                    a.init.user_certificates.ssh_authorized_key = augmented.ssh_authorized_key;
                })
            }),
            PermissionDenied,
            Has("the certificates already carry a device"),
        )
        .event("the certificates already carry a device"),
        case(
            "SSH certificate from another CA",
            Message(|a| {
                a.init.user_certificates.ssh_authorized_key = Some(rogue_certificates(&a.owner).0)
            }),
            PermissionDenied,
            Has("the SSH certificate was refused"),
        )
        .event("the SSH certificate was refused"),
        case(
            // The connection's certificate is genuine.
            "in-band X.509 from another CA",
            Message(|a| a.init.user_certificates.x509_der = rogue_certificates(&a.owner).1),
            PermissionDenied,
            Has(NOT_MTLS),
        )
        .event(NOT_MTLS),
        case(
            "in-band X.509 of another user",
            State(|cl, a| {
                Box::pin(async move {
                    let victim = cl.user("otherx509-victim-", &["device-enroll"]).await;
                    a.init.user_certificates = victim.certs.clone();
                    // The event is the caller's, not the victim's.
                    a.quiet.push(victim.name);
                })
            }),
            PermissionDenied,
            Has("the certificates sent do not match the connection's identity: the x509 certificate is not the mTLS client certificate"),
        )
        .event(NOT_MTLS),
        case(
            "SSH certificate of another user",
            State(|cl, a| {
                Box::pin(async move {
                    let victim = cl.user("otherssh-victim-", &["device-enroll"]).await;
                    a.init.user_certificates.ssh_authorized_key =
                        victim.certs.ssh_authorized_key.clone();
                })
            }),
            PermissionDenied,
            Has("the ssh certificate names another user"),
        )
        .event("the ssh certificate names another user"),
        case(
            // The caller's own name, genuine CA, but another key.
            "SSH certificate for another key",
            State(|cl, a| {
                Box::pin(async move {
                    let other_key = dt_ca::ClientKey::generate().expect("key");
                    let ssh = cl
                        .srv
                        .user_ca
                        .issue_ssh_user_cert(
                            &other_key.ssh_public_key().expect("ssh"),
                            &a.owner.identity,
                        )
                        .expect("ssh")
                        .to_openssh()
                        .expect("openssh");
                    a.init.user_certificates.ssh_authorized_key = Some(ssh);
                })
            }),
            PermissionDenied,
            Has("the ssh certificate is for another key"),
        )
        .event("the ssh certificate is for another key"),
        case(
            "locked device",
            State(|cl, a| {
                Box::pin(async move {
                    let bystander = cl.enrolled_device(&a.owner).await;
                    a.refresh(cl).await;
                    cl.lock(
                        LockTarget {
                            device: Some(a.dev.id.clone()),
                            ..Default::default()
                        },
                        "stolen laptop",
                    )
                    .await;
                    // The lock names one device: the user's other device still
                    // authenticates.
                    auth_with(&a.owner, &a.owner.certs, &bystander, bystander.data.clone())
                        .await
                        .expect("an unlocked device of the same user");
                })
            }),
            PermissionDenied,
            Is("lock targeting Device:\"{device}\" is in force: stolen laptop"),
        )
        .event("lock targeting Device:\"{device}\" is in force: stolen laptop")
        .event_names_device(true),
        case(
            "locked user",
            State(|cl, a| {
                Box::pin(async move {
                    cl.lock(
                        LockTarget {
                            user: Some(a.owner.name.clone()),
                            ..Default::default()
                        },
                        "offboarding",
                    )
                    .await;
                })
            }),
            PermissionDenied,
            Is("lock targeting User:\"{user}\" is in force: offboarding"),
        )
        .event("lock targeting User:\"{user}\" is in force"),
        case(
            "device not enrolled",
            State(|cl, a| {
                Box::pin(async move {
                    let tag = unique("NOTENR");
                    let (id, _) = cl.add_device(OsType::Linux, &tag, None, true).await;
                    let (_, before) = cl.device(&id).await.expect("device");
                    let key = DeviceKey::new();
                    a.init = authn_init(&a.owner.certs, &key.credential_id, data(OsType::Linux, &tag));
                    a.untouched.push((id.clone(), before));
                    a.device = id;
                })
            }),
            FailedPrecondition,
            Has("device is not enrolled"),
        )
        .event("device is not enrolled")
        .event_names_device(true),
        case(
            "missing SSH certificate",
            Message(|a| a.init.user_certificates.ssh_authorized_key = None),
            InvalidArgument,
            Has("SSH certificate"),
        )
        .event("SSH certificate"),
    ]
}

#[test]
fn authentication_cheats() {
    block_on(async { run(shared().await, cheats()).await })
}

/// Through the same driver on a cluster of its own: the case changes a cluster-wide
/// setting.
#[test]
fn software_credential_after_the_cluster_stopped_allowing_them() {
    block_on(async {
        let cl = Cluster::start(Options::default()).await;
        let no_software = case(
            "software credential after the cluster stopped allowing them",
            State(|cl, _| {
                Box::pin(async move {
                    cl.set_device_trust(DeviceTrustSettings {
                        allow_software_credentials: false,
                        ..cl.device_trust().await
                    })
                    .await;
                })
            }),
            PermissionDenied,
            Has("the cluster no longer allows software credentials"),
        )
        .event("no longer allows software credentials");
        run(&cl, vec![no_software]).await;
        cl.stop().await;
    })
}

// Outside the table: the success paths, and cheats whose shape is not "tamper, then one
// refusal".

/// Shared with the PostgreSQL tests (`support::scenarios`).
#[test]
fn successful_enroll_and_authenticate() {
    block_on(async { support::scenarios::enroll_and_authenticate(shared().await).await })
}

/// Shared with the PostgreSQL tests (`support::scenarios`).
#[test]
fn replayed_challenge_response() {
    block_on(async { support::scenarios::replayed_response(shared().await).await })
}

/// Turns device trust off cluster-wide (so it needs its own cluster) and checks both
/// ceremonies.
#[test]
fn cluster_mode_off() {
    block_on(async {
        let cl = Cluster::start(Options::default()).await;
        let u = cl.user("modeoff-", &["device-enroll"]).await;
        let dev = cl.enrolled_device(&u).await;
        let tag = unique("OFF");
        let (id, token) = cl.add_device(OsType::Linux, &tag, None, true).await;
        let (_, new_rev) = cl.device(&id).await.expect("device");
        cl.set_device_trust(DeviceTrustSettings {
            mode: DeviceTrustMode::Off,
            ..cl.device_trust().await
        })
        .await;
        let before = rev(&cl, &dev).await;
        let r = auth_refused_at_init(&u, &u.certs, &dev, dev.data.clone()).await;
        let s = assert_status(
            r,
            Code::PermissionDenied,
            "device trust disabled by cluster settings",
        );
        assert_eq!(s.message(), "device trust disabled by cluster settings");
        cl.assert_failure_event(
            &u.name,
            EventType::DeviceAuthenticate,
            "device trust disabled by cluster settings",
        )
        .await;
        assert_rev(&cl, &dev, before).await;
        // Enrollment is off too.
        let key = DeviceKey::new();
        let r = enroll_init_reply(
            &u.ch,
            enroll_init(&token.expect("token"), &key, data(OsType::Linux, &tag)),
        )
        .await;
        assert_status(
            r,
            Code::PermissionDenied,
            "device trust disabled by cluster settings",
        );
        cl.assert_failure_event(
            &u.name,
            EventType::DeviceEnroll,
            "device trust disabled by cluster settings",
        )
        .await;
        cl.assert_untouched(&id, new_rev).await;
        cl.stop().await;
    })
}

/// A lock created while the device is answering its challenge still wins. The tampering
/// happens between two messages of one ceremony, which the table does not model.
#[test]
fn device_locked_during_the_ceremony() {
    block_on(async {
        let cl = shared().await;
        let u = cl.user("lockmid-", &["device-enroll"]).await;
        let dev = cl.enrolled_device(&u).await;
        let before = rev(cl, &dev).await;
        let mut raw = RawAuthenticate::open_authenticate(&u.ch)
            .await
            .expect("open");
        raw.send(&AuthenticateRequest::Init(Box::new(authn_init(
            &u.certs,
            &dev.key.credential_id,
            dev.data.clone(),
        ))))
        .await;
        let challenge = match raw.recv::<AuthenticateResponse>().await.expect("challenge") {
            AuthenticateResponse::Challenge(
                dt_ceremony::messages::AuthenticateChallenge::P256 { challenge },
            ) => challenge,
            other => panic!("{other:?}"),
        };
        cl.lock(
            LockTarget {
                device: Some(dev.id.clone()),
                ..Default::default()
            },
            "reported stolen",
        )
        .await;
        raw.send(&AuthenticateRequest::ChallengeResponse(
            dev.key.authn_response(&challenge),
        ))
        .await;
        let r = raw.recv::<AuthenticateResponse>().await;
        let want = format!(
            "lock targeting Device:\"{}\" is in force: reported stolen",
            dev.id
        );
        assert_status(r, Code::PermissionDenied, &want);
        cl.assert_failure_event(&u.name, EventType::DeviceAuthenticate, &want)
            .await;
        assert_rev(cl, &dev, before).await;
    })
}

/// Not a cheat: fifteen honest authentications.
#[test]
fn collected_data_history_is_capped() {
    block_on(async {
        let cl = shared().await;
        let u = cl.user("history-", &["device-enroll"]).await;
        let dev = cl
            .enrolled_device_with(&u, |d| d.hostname = "at-enrollment".into())
            .await;
        for i in 1..=15 {
            let mut d = dev.data.clone();
            d.hostname = format!("auth-{i}");
            auth_with(&u, &u.certs, &dev, d)
                .await
                .unwrap_or_else(|e| panic!("authentication {i}: {e:?}"));
        }
        let (stored, _) = cl.device(&dev.id).await.expect("device");
        let hosts: Vec<&str> = stored
            .spec
            .collected_data
            .iter()
            .map(|d| d.hostname.as_str())
            .collect();
        let mut want = vec!["at-enrollment".to_string()];
        want.extend((6..=15).map(|i| format!("auth-{i}")));
        assert_eq!(hosts, want, "the enrollment record and the last 10");
        assert!(
            stored
                .spec
                .collected_data
                .iter()
                .all(|d| d.record_time.is_some()),
            "every record has the server's time"
        );
        let ok = cl
            .events(&u.name, EventType::DeviceAuthenticate)
            .await
            .iter()
            .filter(|e| e.success)
            .count();
        assert_eq!(ok, 15);
    })
}

/// No message at all, and a timing to check: a client that opens the stream and says nothing is cut off at the first-message deadline
/// (10 s), not at the 60 s ceremony deadline.
#[test]
fn silent_client_hits_the_first_message_deadline() {
    block_on(async {
        let cl = shared().await;
        let u = cl.user("silent-", &["device-enroll"]).await;
        let started = std::time::Instant::now();
        let mut raw = RawAuthenticate::open_authenticate(&u.ch)
            .await
            .expect("open");
        let r = raw.recv::<AuthenticateResponse>().await;
        let took = started.elapsed();
        assert_status(r, Code::DeadlineExceeded, "no AuthenticateInit in time");
        assert!(
            took >= secs(9) && took < secs(20),
            "refused after {took:?}, expected about 10 s"
        );
        drop(raw);
    })
}

/// A cluster of its own (a limit of 3), and checks beyond one refusal: the retry hint, and
/// that another user is not limited.
#[test]
fn per_user_ceremony_rate_limit() {
    block_on(async {
        let cl = Cluster::start(Options {
            ceremonies_per_minute: 3,
            ..Options::default()
        })
        .await;
        let u = cl.user("ratelimit-", &["device-enroll"]).await;
        let dev = cl.enrolled_device(&u).await; // 1
        auth_with(&u, &u.certs, &dev, dev.data.clone())
            .await
            .expect("ceremony 2");
        auth_with(&u, &u.certs, &dev, dev.data.clone())
            .await
            .expect("ceremony 3");
        let before = rev(&cl, &dev).await;
        let r = auth_refused_at_init(&u, &u.certs, &dev, dev.data.clone()).await;
        let s = assert_status(
            r,
            Code::ResourceExhausted,
            &format!("too many device ceremonies for {}; try again in", u.name),
        );
        assert!(s.message().ends_with(" s"), "{:?}", s.message());
        cl.assert_failure_event(
            &u.name,
            EventType::DeviceAuthenticate,
            &format!("too many device ceremonies for {}", u.name),
        )
        .await;
        assert_rev(&cl, &dev, before).await;
        // The limit is per user.
        let v = cl.user("ratelimit-other-", &["device-enroll"]).await;
        let theirs = cl.enrolled_device(&v).await;
        auth_with(&v, &v.certs, &theirs, theirs.data.clone())
            .await
            .expect("another user is not limited");
        cl.stop().await;
    })
}

/// The authentication stream starts with `AuthenticateInit`; anything else is refused.
/// There is no Init to tamper with here.
#[test]
fn challenge_response_before_init() {
    block_on(async {
        let cl = shared().await;
        let u = cl.user("order-", &["device-enroll"]).await;
        let dev = cl.enrolled_device(&u).await;
        let before = rev(cl, &dev).await;
        let mut raw = RawAuthenticate::open_authenticate(&u.ch)
            .await
            .expect("open");
        raw.send(&AuthenticateRequest::ChallengeResponse(
            dev.key.authn_response(&[0u8; 32]),
        ))
        .await;
        let r = raw.recv::<AuthenticateResponse>().await;
        assert_status(
            r,
            Code::InvalidArgument,
            "unexpected AuthenticateChallengeResponse while waiting for AuthenticateInit",
        );
        assert_rev(cl, &dev, before).await;
    })
}

/// Not a ceremony: a device lock cuts off API calls made with certificates that carry that device, and
/// leaves the same user's plain (un-augmented) certificate alone.
#[test]
fn a_device_lock_refuses_api_calls_with_the_augmented_certificate() {
    block_on(async {
        let cl = shared().await;
        let u = cl.user("apilock-", &["device-enroll"]).await;
        let dev = cl.enrolled_device(&u).await;
        let augmented = auth_with(&u, &u.certs, &dev, dev.data.clone())
            .await
            .expect("authentication");
        let ch = cl
            .channel_with(&augmented.x509_der, &u.key)
            .await
            .expect("mTLS with the augmented certificate");
        let whoami = |ch: tonic::transport::Channel| async move {
            dt_proto::v1::auth_service_client::AuthServiceClient::new(ch)
                .who_am_i(dt_proto::v1::WhoAmIRequest {})
                .await
        };
        let me = whoami(ch.clone()).await.expect("allowed before the lock");
        assert_eq!(me.get_ref().device_id, dev.id);

        cl.lock(
            LockTarget {
                device: Some(dev.id.clone()),
                ..Default::default()
            },
            "laptop reported stolen",
        )
        .await;
        assert_status(
            whoami(ch).await,
            Code::PermissionDenied,
            &format!(
                "lock targeting Device:\"{}\" is in force: laptop reported stolen",
                dev.id
            ),
        );
        let plain = whoami(u.ch.clone())
            .await
            .expect("the plain certificate still works");
        assert!(plain.get_ref().device_id.is_empty());
    })
}

/// Not a refusal with a status: a rogue X.509 as the mTLS identity never gets a ceremony
/// (the handshake may fail, or the call does), and no event is written. The in-band rogue
/// certificates are in the table.
#[test]
fn mtls_identity_from_another_ca() {
    block_on(async {
        let cl = shared().await;
        let u = cl.user("rogueca-", &["device-enroll"]).await;
        let dev = cl.enrolled_device(&u).await;
        let before = rev(cl, &dev).await;
        let (_, rogue_x509) = rogue_certificates(&u);
        let certs = UserCertificates {
            x509_der: rogue_x509.clone(),
            ssh_authorized_key: u.certs.ssh_authorized_key.clone(),
        };
        let events = cl
            .events(&u.name, EventType::DeviceAuthenticate)
            .await
            .len();
        match cl.channel_with(&rogue_x509, &u.key).await {
            Err(_) => {}
            Ok(ch) => {
                let r = authn_init_reply(
                    &ch,
                    authn_init(&certs, &dev.key.credential_id, dev.data.clone()),
                )
                .await;
                assert!(r.is_err(), "a rogue client certificate is refused");
            }
        }
        assert_eq!(
            cl.events(&u.name, EventType::DeviceAuthenticate)
                .await
                .len(),
            events
        );
        assert_rev(cl, &dev, before).await;
    })
}
