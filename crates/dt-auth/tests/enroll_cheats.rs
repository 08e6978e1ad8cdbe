//! Enrollment cheats (issue 3), against a real auth service over loopback mTLS with
//! SQLite.
//!
//! The cheats are one table: each case names a tampering of an honest enrollment (the
//! first message, the challenge answer, or what is stored before the ceremony starts), the
//! status the client must see, the audit event that explains the refusal, and what must
//! not have moved in storage (device not enrolled, same revision, no credential index).
//! One driver runs them all and reports every failing case by name. The few tests left
//! outside the table say why next to them.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

mod support;

use dt_ceremony::messages::{
    EnrollInit, EnrollPayload, EnrollRequest, EnrollResponse, P256KeyStorage,
};
use dt_ceremony::token::EnrollToken;
use dt_types::audit::EventType;
use dt_types::device::{DeviceProfile, EnrollStatus, OsType};
use dt_types::resource::DeviceTrustSettings;
use futures::future::LocalBoxFuture;
use support::*;
use tonic::Code;

const BAD_TOKEN: &str = "invalid device enrollment token";
const BAD_SIGNATURE: &str = "the device signature does not verify over this ceremony's challenge";

// ---------------------------------------------------------------------------------------
// the table's vocabulary

/// An honest enrollment about to happen, which a case's [`Tamper`] edits, and what the
/// driver checks once it was refused.
struct Attempt {
    /// The `device-enroll` user the token was issued to.
    owner: User,
    /// Who runs the ceremony, when not `owner`.
    caller: Option<User>,
    /// The registered Linux device's asset tag (and serial number).
    tag: String,
    /// The honest credential.
    key: DeviceKey,
    /// The honest token.
    token: String,
    /// What is sent first: honest until tampered.
    init: EnrollInit,
    /// How the challenge is answered.
    answer: Answer,
    /// The device the ceremony is about: the audit event names it (see
    /// [`Case::names_device`]).
    device: String,
    /// Registered devices that must still be unenrolled, without owner or credential, at
    /// this revision.
    untouched: Vec<(String, i64)>,
    /// Device ids that must not exist afterwards.
    absent: Vec<String>,
    /// The device that owns `init.credential_id` afterwards (`None`: no device does).
    credential_owner: Option<String>,
}

impl Attempt {
    fn caller(&self) -> &User {
        self.caller.as_ref().unwrap_or(&self.owner)
    }

    /// `{user}` is the caller's name, `{device}` the device id.
    fn fill(&self, text: &str) -> String {
        text.replace("{user}", &self.caller().name)
            .replace("{device}", &self.device)
    }
}

/// A fresh `device-enroll` user with a fresh registered Linux device, its token, and the
/// honest first message of its enrollment.
async fn attempt(cl: &Cluster) -> Attempt {
    let owner = cl.user("enroll-cheat-", &["device-enroll"]).await;
    let tag = unique("TAG");
    let (device, token) = cl.add_device(OsType::Linux, &tag, None, true).await;
    let token = token.expect("token");
    let (_, rev) = cl.device(&device).await.expect("device");
    let key = DeviceKey::new();
    let init = enroll_init(&token, &key, data(OsType::Linux, &tag));
    Attempt {
        owner,
        caller: None,
        tag,
        key,
        token,
        init,
        answer: Answer::Refused,
        untouched: vec![(device.clone(), rev)],
        device,
        absent: vec![],
        credential_owner: None,
    }
}

/// How a case's ceremony goes after its first message.
enum Answer {
    /// The first message alone must be refused, before any challenge is handed out.
    Refused,
    /// The challenge is answered with a signature by this key.
    SignWith(Box<DeviceKey>),
    /// The honest key signs another challenge (the real one with one bit flipped).
    SignOtherChallenge,
}

/// What a case does to the honest enrollment.
enum Tamper {
    /// Edits the message (or the answer) in flight.
    Message(fn(&mut Attempt)),
    /// Changes what is stored, or runs earlier ceremonies, before the enrollment starts
    /// (and may edit the message too).
    State(for<'a> fn(&'a Cluster, &'a mut Attempt) -> LocalBoxFuture<'a, ()>),
}

/// How the refusal's text must read; `{user}` and `{device}` are filled in.
enum Text {
    /// Exactly this (the generic token error must not say more).
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
    /// The caller's latest event of this type is a failure whose message contains this.
    event: Option<(EventType, &'static str)>,
    /// That event names [`Attempt::device`].
    names_device: bool,
    /// Whether the token in `init` is spent afterwards (`None`: not checked).
    token_spent: Option<bool>,
    /// After the refusal, the owner's honest enrollment with the honest token succeeds.
    honest_retry_enrolls: bool,
}

fn case(name: &'static str, tamper: Tamper, code: Code, message: Text) -> Case {
    Case {
        name,
        tamper,
        code,
        message,
        event: None,
        names_device: false,
        token_spent: None,
        honest_retry_enrolls: false,
    }
}

impl Case {
    /// Expect a failed `device.enroll` event containing `needle`.
    fn event(self, needle: &'static str) -> Case {
        self.event_of(EventType::DeviceEnroll, needle)
    }
    fn event_of(self, ty: EventType, needle: &'static str) -> Case {
        Case {
            event: Some((ty, needle)),
            ..self
        }
    }
    fn names_device(self) -> Case {
        Case {
            names_device: true,
            ..self
        }
    }
    fn token_spent(self, spent: bool) -> Case {
        Case {
            token_spent: Some(spent),
            ..self
        }
    }
    fn honest_retry_enrolls(self) -> Case {
        Case {
            honest_retry_enrolls: true,
            ..self
        }
    }
}

use Code::{FailedPrecondition, InvalidArgument, PermissionDenied, ResourceExhausted};
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
    let ch = &a.caller().ch;
    let init = a.init.clone();
    let r = match &a.answer {
        Answer::Refused => enroll_init_reply(ch, init).await.map(|r| format!("{r:?}")),
        Answer::SignWith(key) => enroll_raw(ch, init, |c| key.enroll_response(c))
            .await
            .map(|d| format!("{d:?}")),
        Answer::SignOtherChallenge => enroll_raw(ch, init, |c| {
            let mut other = c.to_vec();
            other[0] ^= 1;
            a.key.enroll_response(&other)
        })
        .await
        .map(|d| format!("{d:?}")),
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
    if let Some((ty, needle)) = c.event {
        let ev = cl
            .assert_failure_event(&a.caller().name, ty, &a.fill(needle))
            .await;
        if c.names_device {
            assert_eq!(
                ev.device.map(|d| d.device_id),
                Some(a.device.clone()),
                "the audit event names the device"
            );
        }
    }
    for (id, rev) in &a.untouched {
        cl.assert_untouched(id, *rev).await;
    }
    for id in &a.absent {
        assert!(cl.device(id).await.is_none(), "device {id} does not exist");
    }
    assert_eq!(
        cl.credential_owner(&a.init.credential_id).await,
        a.credential_owner,
        "the device owning credential id {}",
        a.init.credential_id
    );
    if let Some(spent) = c.token_spent {
        let record = cl
            .token_record(a.init.token.expose())
            .await
            .expect("record");
        assert_eq!(record.spent_at.is_some(), spent, "token spent: {record:?}");
    }
    if c.honest_retry_enrolls {
        let honest = enroll_init(&a.token, &a.key, data(OsType::Linux, &a.tag));
        let device = enroll_raw(&a.owner.ch, honest, |c| a.key.enroll_response(c))
            .await
            .expect("the owner enrolls with the same token");
        assert_eq!(device.spec.owner.as_deref(), Some(a.owner.name.as_str()));
    }
}

// ---------------------------------------------------------------------------------------
// the table

/// The cheats that need nothing but the shared cluster.
fn cheats() -> Vec<Case> {
    vec![
        case(
            "token reused after an Init that failed",
            State(|cl, a| {
                Box::pin(async move {
                    // First use fails at Init: the collected serial is not the token's device.
                    let mut wrong = a.init.clone();
                    wrong.device_data.serial_number = unique("NOTTHIS");
                    let r = enroll_init_reply(&a.owner.ch, wrong).await;
                    assert_status(r, PermissionDenied, BAD_TOKEN);
                    cl.assert_failure_event(
                        &a.owner.name,
                        EventType::DeviceEnroll,
                        "invalid device enrollment token (token issued for another device)",
                    )
                    .await;
                })
            }),
            PermissionDenied,
            Is(BAD_TOKEN),
        )
        .event("invalid device enrollment token (token already used)"),
        case(
            "token reused after a proof that failed",
            State(|_, a| {
                Box::pin(async move {
                    let thief = DeviceKey::new();
                    let r =
                        enroll_raw(&a.owner.ch, a.init.clone(), |c| thief.enroll_response(c)).await;
                    assert_status(r, PermissionDenied, BAD_SIGNATURE);
                })
            }),
            PermissionDenied,
            Has(BAD_TOKEN),
        )
        .event("invalid device enrollment token (token already used)"),
        case(
            "expired token",
            State(|cl, a| {
                Box::pin(async move {
                    // Issued two hours ago for one hour, stored as the server stores tokens.
                    let now = time::OffsetDateTime::now_utc();
                    let token = cl
                        .write_token(
                            &a.device,
                            now - time::Duration::hours(2),
                            time::Duration::hours(1),
                        )
                        .await;
                    a.init.token = EnrollToken::new(token);
                })
            }),
            PermissionDenied,
            Is(BAD_TOKEN),
        )
        .event("invalid device enrollment token (token expired)")
        .names_device()
        .token_spent(false),
        case(
            "token issued for another device",
            State(|cl, a| {
                Box::pin(async move {
                    // The victim: another registered, not enrolled device.
                    let victim_tag = unique("VICTIM");
                    let (victim, _) = cl.add_device(OsType::Linux, &victim_tag, None, false).await;
                    let (_, victim_rev) = cl.device(&victim).await.expect("victim");
                    a.untouched.push((victim, victim_rev));
                    a.init.device_data = data(OsType::Linux, &victim_tag);
                })
            }),
            PermissionDenied,
            Is(BAD_TOKEN),
        )
        .event("invalid device enrollment token (token issued for another device)"),
        case(
            "token issued for another OS",
            Message(|a| a.init.device_data = data(OsType::Windows, &a.tag)),
            PermissionDenied,
            Is(BAD_TOKEN),
        )
        .event("invalid device enrollment token (token issued for a device with another OS)"),
        case(
            "signature by another key",
            Message(|a| a.answer = Answer::SignWith(Box::new(DeviceKey::new()))),
            PermissionDenied,
            Has(BAD_SIGNATURE),
        )
        .event(BAD_SIGNATURE)
        .names_device(),
        case(
            "signature over another challenge",
            Message(|a| a.answer = Answer::SignOtherChallenge),
            PermissionDenied,
            Has(BAD_SIGNATURE),
        )
        .event(BAD_SIGNATURE),
        case(
            "credential id already in use by another device",
            State(|cl, a| {
                Box::pin(async move {
                    // The honest key claims an enrolled device's credential id.
                    let first = cl.enrolled_device(&a.owner).await;
                    a.init.credential_id = first.key.credential_id.clone();
                    // ...which still belongs to that device afterwards.
                    a.credential_owner = Some(first.id);
                })
            }),
            FailedPrecondition,
            Has("the device credential id is already in use"),
        )
        .event("the device credential id is already in use"),
        case(
            "token for a device deleted from the inventory",
            State(|cl, a| {
                Box::pin(async move {
                    dt_proto::v1::device_trust_service_client::DeviceTrustServiceClient::new(
                        cl.admin.clone(),
                    )
                    .delete_device(dt_proto::v1::DeviceRef {
                        device_id: a.device.clone(),
                        ..Default::default()
                    })
                    .await
                    .expect("delete device");
                    // No device came back.
                    a.untouched.clear();
                    a.absent.push(a.device.clone());
                })
            }),
            PermissionDenied,
            Is(BAD_TOKEN),
        )
        .event("invalid device enrollment token (unknown token)"),
        case(
            "live token whose device vanished",
            State(|cl, a| {
                Box::pin(async move {
                    // A live token record naming a device that is not in the inventory.
                    let ghost = uuid::Uuid::new_v4().to_string();
                    let token = cl
                        .write_token(
                            &ghost,
                            time::OffsetDateTime::now_utc(),
                            time::Duration::hours(1),
                        )
                        .await;
                    a.init.token = EnrollToken::new(token);
                    a.init.device_data = data(OsType::Linux, &unique("GONE"));
                    a.absent.push(ghost);
                })
            }),
            FailedPrecondition,
            Has("device is not registered in the inventory"),
        )
        .event("device is not registered in the inventory")
        // Spent at Init.
        .token_spent(true),
        case(
            "user with only access cannot enroll",
            State(|cl, a| {
                Box::pin(async move {
                    a.caller = Some(cl.user("accessonly-", &["access"]).await);
                })
            }),
            PermissionDenied,
            Has("access denied: your roles do not allow enroll on device"),
        )
        .event("access denied: your roles do not allow enroll on device")
        // The refused caller did not spend the token: it still works for its rightful user.
        .token_spent(false)
        .honest_retry_enrolls(),
        case(
            "oversized serial number",
            Message(|a| a.init.device_data.serial_number = "S".repeat(257)),
            InvalidArgument,
            Has("invalid device_data: device data field serial_number is longer than 256 bytes"),
        )
        .event("serial_number is longer than 256 bytes"),
        case(
            "oversized public key",
            Message(|a| {
                let mut huge = a.key.spki();
                huge.resize(64 * 1024, 0);
                a.init.payload = EnrollPayload::P256 {
                    public_key_der: huge,
                    storage: P256KeyStorage::Software,
                };
            }),
            InvalidArgument,
            Has("public_key_der is 65536 bytes, more than the 1024 accepted"),
        )
        .event("public_key_der is 65536 bytes"),
        case(
            "oversized credential id",
            Message(|a| a.init.credential_id = "c".repeat(129)),
            InvalidArgument,
            Has("credential_id is 129 bytes, more than the 128 accepted"),
        )
        .event("credential_id is 129 bytes"),
        case(
            // A first message over dt-ceremony's message limit is refused before it is
            // converted: well-formed protobuf one byte too large, so the size check, not a
            // field check, must stop it.
            "oversized message",
            Message(|a| {
                a.init.device_data.hostname =
                    "h".repeat(dt_ceremony::limits::MAX_CEREMONY_MESSAGE_LEN)
            }),
            InvalidArgument,
            Has("EnrollInit is too large"),
        )
        .event("too large")
        // An unread message spends no token.
        .token_spent(false),
        case(
            // Only macOS has a Secure Enclave: a Linux device can't claim one to dodge
            // `allow_software_credentials`.
            "secure enclave claim from a linux device",
            Message(|a| {
                a.init.payload = EnrollPayload::P256 {
                    public_key_der: a.key.spki(),
                    storage: P256KeyStorage::SecureEnclave,
                }
            }),
            InvalidArgument,
            Has("invalid payload: secure enclave credentials exist only on macOS"),
        )
        .event("secure enclave credentials exist only on macOS"),
        case(
            "auto-enrollment while the cluster has it off",
            State(|cl, a| {
                Box::pin(async move {
                    // Auto-enrollment needs no verb and no token: a plain user logging in.
                    a.caller = Some(cl.user("auto-off-", &["access"]).await);
                    let tag = unique("AUTOOFF");
                    let (id, _) = cl
                        .add_device(OsType::Linux, &tag, Some(profile(MODEL)), false)
                        .await;
                    let (_, rev) = cl.device(&id).await.expect("device");
                    a.untouched.push((id.clone(), rev));
                    a.device = id;
                    a.init.token = EnrollToken::new("");
                    a.init.device_data = data(OsType::Linux, &tag);
                })
            }),
            FailedPrecondition,
            Has("auto-enrollment refused: auto-enrollment is off"),
        )
        .event_of(EventType::DeviceTokenCreate, "auto-enrollment is off"),
    ]
}

#[test]
fn enrollment_cheats() {
    block_on(async { run(shared().await, cheats()).await })
}

// The cheats below run through the same driver on a cluster of their own, because they
// need cluster settings the shared cluster does not have.

#[test]
fn software_credential_while_not_allowed() {
    block_on(async {
        let cl = Cluster::start(Options {
            device_trust: DeviceTrustSettings {
                allow_software_credentials: false,
                ..Options::default().device_trust
            },
            ..Options::default()
        })
        .await;
        let honest = case(
            "software credential while not allowed",
            Message(|_| {}),
            PermissionDenied,
            Has("device_trust.allow_software_credentials: true"),
        )
        .event("allow_software_credentials");
        run(&cl, vec![honest]).await;
        cl.stop().await;
    })
}

fn profile(model: &str) -> DeviceProfile {
    DeviceProfile {
        model_identifier: model.into(),
        os_version: OS_VERSION.into(),
        ..Default::default()
    }
}

#[test]
fn auto_enroll_with_a_profile_that_does_not_match() {
    block_on(async {
        let cl = Cluster::start(Options {
            device_trust: DeviceTrustSettings {
                auto_enroll: true,
                ..Options::default().device_trust
            },
            ..Options::default()
        })
        .await;
        let mismatch = case(
            "auto-enrollment with a profile that does not match",
            State(|cl, a| {
                Box::pin(async move {
                    // Auto-enrollment needs no verb: a plain user logging in.
                    a.caller = Some(cl.user("auto-mismatch-", &["access"]).await);
                    let tag = unique("AUTOX");
                    let (id, _) = cl
                        .add_device(OsType::Linux, &tag, Some(profile("ModelX1,1")), false)
                        .await;
                    let (_, rev) = cl.device(&id).await.expect("device");
                    a.untouched.push((id.clone(), rev));
                    a.device = id;
                    a.init.token = EnrollToken::new("");
                    a.init.device_data = data(OsType::Linux, &tag);
                    a.init.device_data.model_identifier = "ModelY9,9".into();
                })
            }),
            FailedPrecondition,
            Has("auto-enrollment refused: model does not match the MDM profile"),
        )
        .event_of(
            EventType::DeviceTokenCreate,
            "auto-enrollment refused: model does not match the MDM profile (device \"ModelY9,9\", profile",
        )
        .names_device();
        run(&cl, vec![mismatch]).await;
        cl.stop().await;
    })
}

#[test]
fn enrollment_rate_limit_is_audited() {
    block_on(async {
        let cl = Cluster::start(Options {
            ceremonies_per_minute: 1,
            ..Options::default()
        })
        .await;
        let limited = case(
            "enrollment over the rate limit",
            State(|_, a| {
                Box::pin(async move {
                    // One ceremony allowed: the first (refused for its token) uses it up.
                    let mut first = a.init.clone();
                    first.token = EnrollToken::new("not-a-token");
                    let r = enroll_init_reply(&a.owner.ch, first).await;
                    assert_status(r, PermissionDenied, BAD_TOKEN);
                })
            }),
            ResourceExhausted,
            Has("too many device ceremonies for {user}"),
        )
        .event("too many device ceremonies")
        .token_spent(false);
        run(&cl, vec![limited]).await;
        cl.stop().await;
    })
}

// Outside the table: the success path and cases whose shape is not "tamper, then one
// refusal".

/// Shared with the PostgreSQL tests (`support::scenarios`).
#[test]
fn token_reused_after_a_successful_enrollment() {
    block_on(async { support::scenarios::token_reused_after_success(shared().await).await })
}

/// Two ceremonies interleaved, the first one succeeding: the device ends up enrolled, so
/// the table's "nothing moved" checks do not apply.
#[test]
fn enrolling_an_already_enrolled_device() {
    block_on(async {
        let cl = shared().await;
        let f = attempt(cl).await;
        // Ceremony A passes Init with the first token...
        let key_a = DeviceKey::new();
        let mut a = RawEnroll::open_enroll(&f.owner.ch).await.expect("open A");
        a.send(&EnrollRequest::Init(Box::new(enroll_init(
            &f.token,
            &key_a,
            data(OsType::Linux, &f.tag),
        ))))
        .await;
        let challenge = match a.recv::<EnrollResponse>().await.expect("A's challenge") {
            EnrollResponse::Challenge(dt_ceremony::messages::EnrollChallenge::P256 {
                challenge,
            }) => challenge,
            other => panic!("{other:?}"),
        };
        // ...meanwhile the admin issues a second token for the still unenrolled device...
        let second = cl.new_token(&f.device).await.expect("second token");
        // ...and A completes.
        a.send(&EnrollRequest::ChallengeResponse(
            key_a.enroll_response(&challenge),
        ))
        .await;
        match a.recv::<EnrollResponse>().await.expect("A succeeds") {
            EnrollResponse::Success(_) => {}
            other => panic!("{other:?}"),
        }
        let (enrolled, rev) = cl.device(&f.device).await.expect("device");
        assert_eq!(enrolled.spec.enroll_status, EnrollStatus::Enrolled);

        // Ceremony B with the live second token finds the device enrolled.
        let key_b = DeviceKey::new();
        let r = enroll_init_reply(
            &f.owner.ch,
            enroll_init(&second, &key_b, data(OsType::Linux, &f.tag)),
        )
        .await;
        assert_status(r, Code::FailedPrecondition, "device is already enrolled");
        cl.assert_failure_event(
            &f.owner.name,
            EventType::DeviceEnroll,
            "device is already enrolled",
        )
        .await;
        let (after, rev_after) = cl.device(&f.device).await.expect("device");
        assert_eq!(rev_after, rev, "enrolled device unchanged");
        assert_eq!(
            after.spec.credential.map(|c| c.id.to_string()),
            Some(key_a.credential_id.clone())
        );
        assert_eq!(cl.credential_owner(&key_b.credential_id).await, None);
        // An admin can't issue a token for an enrolled device either.
        let r = cl.new_token(&f.device).await;
        assert_status(r, Code::FailedPrecondition, "is already enrolled");
    })
}

/// Not a ceremony: the CreateDevice and CreateDeviceEnrollToken calls.
///
/// `dtsh device enroll --current-device` registers the device (CreateDevice with a token):
/// a user with only `device-enroll` may not.
#[test]
fn current_device_without_the_create_verbs() {
    block_on(async {
        let cl = shared().await;
        let user = cl.user("selfenroll-", &["device-enroll"]).await;
        let tag = unique("SELF");
        let d = dt_auth::devices::new_device_resource(OsType::Linux, &tag);
        let mut c = dt_proto::v1::device_trust_service_client::DeviceTrustServiceClient::new(
            user.ch.clone(),
        );
        let r = c
            .create_device(dt_proto::v1::CreateDeviceRequest {
                device: Some(dt_proto::v1::Device::try_from(&d).expect("device")),
                create_enroll_token: true,
                enroll_token_ttl_seconds: 300,
            })
            .await;
        assert_status(
            r,
            Code::PermissionDenied,
            "access denied: your roles do not allow create on device",
        );
        // Already registered by an admin: no token for this user either.
        let (id, _) = cl.add_device(OsType::Linux, &tag, None, false).await;
        let (_, rev) = cl.device(&id).await.expect("device");
        let r = c
            .create_device_enroll_token(dt_proto::v1::CreateDeviceEnrollTokenRequest {
                device: Some(dt_proto::v1::DeviceRef {
                    device_id: id.clone(),
                    ..Default::default()
                }),
                ttl_seconds: 300,
            })
            .await;
        assert_status(
            r,
            Code::PermissionDenied,
            "access denied: your roles do not allow create_enroll_token on device",
        );
        cl.assert_untouched(&id, rev).await;
        assert!(
            cl.srv
                .backend
                .get(&dt_auth::keys::device_token_index(&id))
                .await
                .expect("read")
                .is_none(),
            "no token issued"
        );
    })
}

/// Not a ceremony (see above).
#[test]
fn current_device_without_the_create_verbs_is_audited() {
    block_on(async {
        let cl = shared().await;
        let user = cl.user("selfenroll-audit-", &["device-enroll"]).await;
        let d = dt_auth::devices::new_device_resource(OsType::Linux, &unique("SELFA"));
        let r = dt_proto::v1::device_trust_service_client::DeviceTrustServiceClient::new(
            user.ch.clone(),
        )
        .create_device(dt_proto::v1::CreateDeviceRequest {
            device: Some(dt_proto::v1::Device::try_from(&d).expect("device")),
            create_enroll_token: true,
            enroll_token_ttl_seconds: 300,
        })
        .await;
        assert_status(r, Code::PermissionDenied, "do not allow create on device");
        cl.assert_failure_event(
            &user.name,
            EventType::DeviceCreate,
            "access denied: your roles do not allow create on device",
        )
        .await;
    })
}

/// The honest auto-enrollment the refusals above are measured against.
#[test]
fn auto_enroll_with_a_matching_profile() {
    block_on(async {
        let cl = Cluster::start(Options {
            device_trust: DeviceTrustSettings {
                auto_enroll: true,
                ..Options::default().device_trust
            },
            ..Options::default()
        })
        .await;
        let user = cl.user("auto-match-", &["access"]).await;
        let tag = unique("AUTOOK");
        // The profile names the user (auto_enroll_require_user_match, on by default).
        let named = DeviceProfile {
            assigned_user: user.name.clone(),
            ..profile(MODEL)
        };
        let (id, _) = cl.add_device(OsType::Linux, &tag, Some(named), false).await;
        let key = DeviceKey::new();
        let device = dt_client::devices::enroll(
            user.ch.clone(),
            dt_ceremony::token::EnrollToken::new(""),
            key.credential_id.clone(),
            data(OsType::Linux, &tag),
            key.payload(),
            |req| key.prove(req),
        )
        .await
        .expect("auto-enrollment");
        assert_eq!(device.metadata.name, id);
        let (stored, _) = cl.device(&id).await.expect("device");
        assert_eq!(stored.spec.enroll_status, EnrollStatus::Enrolled);
        assert_eq!(stored.spec.owner.as_deref(), Some(user.name.as_str()));
        assert_eq!(
            cl.credential_owner(&key.credential_id).await,
            Some(id.clone())
        );
        let tok = cl.events(&user.name, EventType::DeviceTokenCreate).await;
        let last = tok.last().expect("device.token.create");
        assert!(last.success, "{last:?}");
        assert_eq!(
            last.message.as_deref(),
            Some("auto-enrollment token issued")
        );
        let enr = cl.events(&user.name, EventType::DeviceEnroll).await;
        assert!(enr.last().expect("device.enroll").success);
        cl.stop().await;
    })
}

/// A property across several refusals, not one tampering: unknown, malformed, expired,
/// spent and other-device tokens all read the same to the
/// client (code and message); only the audit log tells them apart.
#[test]
fn token_errors_are_indistinguishable() {
    block_on(async {
        let cl = shared().await;
        let user = cl.user("generic-", &["device-enroll"]).await;
        let mut statuses = Vec::new();
        let mut try_token = async |token: &str, serial: &str| {
            let key = DeviceKey::new();
            let r = enroll_init_reply(
                &user.ch,
                enroll_init(token, &key, data(OsType::Linux, serial)),
            )
            .await;
            let s = r.expect_err("refused");
            statuses.push((s.code(), s.message().to_string()));
            cl.events(&user.name, EventType::DeviceEnroll)
                .await
                .last()
                .and_then(|e| e.message.clone())
                .unwrap_or_default()
        };
        // Unknown (well formed, never issued).
        let unknown =
            dt_ceremony::token::EnrollToken::generate(&mut dt_ceremony::env::SystemEnv::new())
                .expose()
                .to_string();
        let a1 = try_token(&unknown, &unique("NOPE")).await;
        // Malformed.
        let a2 = try_token("not-a-token", &unique("NOPE")).await;
        // Expired, for a registered device.
        let tag = unique("GEN");
        let (id, _) = cl.add_device(OsType::Linux, &tag, None, false).await;
        let expired = cl
            .write_token(
                &id,
                time::OffsetDateTime::now_utc() - time::Duration::hours(3),
                time::Duration::hours(1),
            )
            .await;
        let a3 = try_token(&expired, &tag).await;
        // Other device, then the same token spent.
        let tag2 = unique("GEN");
        let (_, live) = cl.add_device(OsType::Linux, &tag2, None, true).await;
        let live = live.expect("token");
        let a4 = try_token(&live, &tag).await;
        let a5 = try_token(&live, &tag2).await;
        assert_eq!(statuses.len(), 5);
        for (code, msg) in &statuses {
            assert_eq!(*code, Code::PermissionDenied);
            assert_eq!(msg, BAD_TOKEN);
        }
        // The audit log keeps the reasons apart.
        let reasons = [a1, a2, a3, a4, a5];
        let want = [
            "unknown token",
            "malformed token",
            "token expired",
            "token issued for another device",
            "token already used",
        ];
        for (got, want) in reasons.iter().zip(want) {
            assert_eq!(got, &format!("invalid device enrollment token ({want})"));
        }
    })
}

/// Not a ceremony: one transaction per bulk request must not weaken (os_type, asset_tag) uniqueness: a tag
/// listed twice in one request and a tag already registered are refused per item, and
/// each tag is stored once.
#[test]
fn bulk_create_keeps_asset_tags_unique() {
    block_on(async {
        let cl = shared().await;
        let existing = unique("BULKOLD");
        cl.add_device(OsType::Linux, &existing, None, false).await;
        let twice = unique("BULKTWICE");
        let fresh = unique("BULKNEW");
        let doc = |tag: &str| {
            dt_proto::v1::Device::try_from(&dt_auth::devices::new_device_resource(
                OsType::Linux,
                tag,
            ))
            .expect("device")
        };
        let r = dt_proto::v1::device_trust_service_client::DeviceTrustServiceClient::new(
            cl.admin.clone(),
        )
        .bulk_create_devices(dt_proto::v1::BulkCreateDevicesRequest {
            devices: vec![doc(&twice), doc(&twice), doc(&existing), doc(&fresh)],
        })
        .await
        .expect("bulk create")
        .into_inner();
        let ok: Vec<bool> = r.statuses.iter().map(|s| s.ok).collect();
        assert_eq!(ok, vec![true, false, false, true], "{:?}", r.statuses);
        assert!(
            r.statuses[1].error.contains("listed twice"),
            "{:?}",
            r.statuses[1]
        );
        assert!(
            r.statuses[2].error.contains("already in the inventory"),
            "{:?}",
            r.statuses[2]
        );
        for tag in [&twice, &existing, &fresh] {
            let found = cl.srv.find_devices(tag).await.expect("find");
            assert_eq!(found.len(), 1, "{tag} stored once");
        }
    })
}
