//! Enrollment cheats (issue 3), against a real auth service over loopback mTLS with
//! SQLite. One test per cheat; each asserts the exact status the client sees, the audit
//! event that explains the refusal, and that storage did not move (device not enrolled,
//! same revision, no credential index).
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

mod support;

use dt_ceremony::messages::{EnrollPayload, EnrollRequest, EnrollResponse, P256KeyStorage};
use dt_types::audit::EventType;
use dt_types::device::{DeviceProfile, EnrollStatus, OsType};
use dt_types::resource::DeviceTrustSettings;
use support::*;
use tonic::Code;

const BAD_TOKEN: &str = "invalid device enrollment token";

/// A device-enroll user and a fresh Linux device with a token.
struct Fixture {
    user: User,
    id: String,
    tag: String,
    token: String,
    rev: i64,
}

async fn fixture(cl: &Cluster, prefix: &str) -> Fixture {
    let user = cl.user(prefix, &["device-enroll"]).await;
    let tag = unique("TAG");
    let (id, token) = cl.add_device(OsType::Linux, &tag, None, true).await;
    let (_, rev) = cl.device(&id).await.expect("device");
    Fixture {
        user,
        id,
        tag,
        token: token.expect("token"),
        rev,
    }
}

impl Fixture {
    fn data(&self) -> dt_types::device::DeviceCollectedData {
        data(OsType::Linux, &self.tag)
    }
}

#[test]
fn token_reused_after_a_successful_enrollment() {
    block_on(async { support::scenarios::token_reused_after_success(shared().await).await })
}

#[test]
fn token_reused_after_an_init_that_failed() {
    block_on(async {
        let cl = shared().await;
        let f = fixture(cl, "reuse-init-").await;
        let key = DeviceKey::new();
        // First use fails at Init: the collected serial is not the token's device.
        let mut wrong = f.data();
        wrong.serial_number = unique("NOTTHIS");
        let r = enroll_init_reply(&f.user.ch, enroll_init(&f.token, &key, wrong)).await;
        assert_status(r, Code::PermissionDenied, BAD_TOKEN);
        cl.assert_failure_event(
            &f.user.name,
            EventType::DeviceEnroll,
            "invalid device enrollment token (token issued for another device)",
        )
        .await;
        // The token was spent by that Init: the honest retry is refused too.
        let r = enroll_init_reply(&f.user.ch, enroll_init(&f.token, &key, f.data())).await;
        let s = assert_status(r, Code::PermissionDenied, BAD_TOKEN);
        assert_eq!(s.message(), BAD_TOKEN);
        cl.assert_failure_event(
            &f.user.name,
            EventType::DeviceEnroll,
            "invalid device enrollment token (token already used)",
        )
        .await;
        cl.assert_untouched(&f.id, f.rev).await;
        assert_eq!(cl.credential_owner(&key.credential_id).await, None);
    })
}

#[test]
fn token_reused_after_a_proof_that_failed() {
    block_on(async {
        let cl = shared().await;
        let f = fixture(cl, "reuse-proof-").await;
        let key = DeviceKey::new();
        let thief = DeviceKey::new();
        let r = enroll_raw(&f.user.ch, enroll_init(&f.token, &key, f.data()), |c| {
            thief.enroll_response(c)
        })
        .await;
        assert_status(
            r,
            Code::PermissionDenied,
            "the device signature does not verify over this ceremony's challenge",
        );
        let r = enroll_init_reply(&f.user.ch, enroll_init(&f.token, &key, f.data())).await;
        assert_status(r, Code::PermissionDenied, BAD_TOKEN);
        cl.assert_failure_event(
            &f.user.name,
            EventType::DeviceEnroll,
            "invalid device enrollment token (token already used)",
        )
        .await;
        cl.assert_untouched(&f.id, f.rev).await;
        assert_eq!(cl.credential_owner(&key.credential_id).await, None);
    })
}

#[test]
fn expired_token() {
    block_on(async {
        let cl = shared().await;
        let f = fixture(cl, "expired-").await;
        let now = time::OffsetDateTime::now_utc();
        // Issued two hours ago for one hour, stored as the server stores tokens.
        let token = cl
            .write_token(
                &f.id,
                now - time::Duration::hours(2),
                time::Duration::hours(1),
            )
            .await;
        let key = DeviceKey::new();
        let r = enroll_init_reply(&f.user.ch, enroll_init(&token, &key, f.data())).await;
        let s = assert_status(r, Code::PermissionDenied, BAD_TOKEN);
        assert_eq!(s.message(), BAD_TOKEN);
        let ev = cl
            .assert_failure_event(
                &f.user.name,
                EventType::DeviceEnroll,
                "invalid device enrollment token (token expired)",
            )
            .await;
        assert_eq!(
            ev.device.map(|d| d.device_id),
            Some(f.id.clone()),
            "the audit log names the token's device"
        );
        cl.assert_untouched(&f.id, f.rev).await;
        assert_eq!(cl.credential_owner(&key.credential_id).await, None);
        assert_eq!(
            cl.token_record(&token).await.expect("record").spent_at,
            None,
            "an expired token is not consumed"
        );
    })
}

#[test]
fn token_issued_for_another_device() {
    block_on(async {
        let cl = shared().await;
        let f = fixture(cl, "otherdev-").await;
        // The victim: another registered, not enrolled device.
        let victim_tag = unique("VICTIM");
        let (victim, _) = cl.add_device(OsType::Linux, &victim_tag, None, false).await;
        let (_, victim_rev) = cl.device(&victim).await.expect("victim");
        let key = DeviceKey::new();
        let r = enroll_init_reply(
            &f.user.ch,
            enroll_init(&f.token, &key, data(OsType::Linux, &victim_tag)),
        )
        .await;
        let s = assert_status(r, Code::PermissionDenied, BAD_TOKEN);
        assert_eq!(s.message(), BAD_TOKEN);
        cl.assert_failure_event(
            &f.user.name,
            EventType::DeviceEnroll,
            "invalid device enrollment token (token issued for another device)",
        )
        .await;
        cl.assert_untouched(&victim, victim_rev).await;
        cl.assert_untouched(&f.id, f.rev).await;
        assert_eq!(cl.credential_owner(&key.credential_id).await, None);
    })
}

#[test]
fn token_issued_for_another_os() {
    block_on(async {
        let cl = shared().await;
        let f = fixture(cl, "otheros-").await;
        let key = DeviceKey::new();
        let r = enroll_init_reply(
            &f.user.ch,
            enroll_init(&f.token, &key, data(OsType::Windows, &f.tag)),
        )
        .await;
        let s = assert_status(r, Code::PermissionDenied, BAD_TOKEN);
        assert_eq!(s.message(), BAD_TOKEN);
        cl.assert_failure_event(
            &f.user.name,
            EventType::DeviceEnroll,
            "invalid device enrollment token (token issued for a device with another OS)",
        )
        .await;
        cl.assert_untouched(&f.id, f.rev).await;
        assert_eq!(cl.credential_owner(&key.credential_id).await, None);
    })
}

#[test]
fn signature_by_another_key() {
    block_on(async {
        let cl = shared().await;
        let f = fixture(cl, "otherkey-").await;
        let key = DeviceKey::new();
        let other = DeviceKey::new();
        let r = enroll_raw(&f.user.ch, enroll_init(&f.token, &key, f.data()), |c| {
            other.enroll_response(c)
        })
        .await;
        assert_status(
            r,
            Code::PermissionDenied,
            "the device signature does not verify over this ceremony's challenge",
        );
        let ev = cl
            .assert_failure_event(
                &f.user.name,
                EventType::DeviceEnroll,
                "the device signature does not verify over this ceremony's challenge",
            )
            .await;
        assert_eq!(ev.device.map(|d| d.device_id), Some(f.id.clone()));
        cl.assert_untouched(&f.id, f.rev).await;
        assert_eq!(cl.credential_owner(&key.credential_id).await, None);
    })
}

#[test]
fn signature_over_another_challenge() {
    block_on(async {
        let cl = shared().await;
        let f = fixture(cl, "otherchal-").await;
        let key = DeviceKey::new();
        let r = enroll_raw(&f.user.ch, enroll_init(&f.token, &key, f.data()), |c| {
            let mut other = c.to_vec();
            other[0] ^= 1;
            key.enroll_response(&other)
        })
        .await;
        assert_status(
            r,
            Code::PermissionDenied,
            "the device signature does not verify over this ceremony's challenge",
        );
        cl.assert_failure_event(
            &f.user.name,
            EventType::DeviceEnroll,
            "the device signature does not verify over this ceremony's challenge",
        )
        .await;
        cl.assert_untouched(&f.id, f.rev).await;
        assert_eq!(cl.credential_owner(&key.credential_id).await, None);
    })
}

#[test]
fn credential_id_already_in_use_by_another_device() {
    block_on(async {
        let cl = shared().await;
        let f = fixture(cl, "credinuse-").await;
        let first = cl.enrolled_device(&f.user).await;
        // A new key that claims the enrolled device's credential id.
        let mut key = DeviceKey::new();
        key.credential_id = first.key.credential_id.clone();
        let r = enroll_init_reply(&f.user.ch, enroll_init(&f.token, &key, f.data())).await;
        assert_status(
            r,
            Code::FailedPrecondition,
            "the device credential id is already in use",
        );
        cl.assert_failure_event(
            &f.user.name,
            EventType::DeviceEnroll,
            "the device credential id is already in use",
        )
        .await;
        cl.assert_untouched(&f.id, f.rev).await;
        assert_eq!(
            cl.credential_owner(&first.key.credential_id).await,
            Some(first.id.clone()),
            "the credential still belongs to the first device"
        );
    })
}

#[test]
fn enrolling_an_already_enrolled_device() {
    block_on(async {
        let cl = shared().await;
        let f = fixture(cl, "twice-").await;
        // Ceremony A passes Init with the first token...
        let key_a = DeviceKey::new();
        let mut a = RawEnroll::open_enroll(&f.user.ch).await.expect("open A");
        a.send(&EnrollRequest::Init(Box::new(enroll_init(
            &f.token,
            &key_a,
            f.data(),
        ))))
        .await;
        let challenge = match a.recv::<EnrollResponse>().await.expect("A's challenge") {
            EnrollResponse::Challenge(dt_ceremony::messages::EnrollChallenge::P256 {
                challenge,
            }) => challenge,
            other => panic!("{other:?}"),
        };
        // ...meanwhile the admin issues a second token for the still unenrolled device...
        let second = cl.new_token(&f.id).await.expect("second token");
        // ...and A completes.
        a.send(&EnrollRequest::ChallengeResponse(
            key_a.enroll_response(&challenge),
        ))
        .await;
        match a.recv::<EnrollResponse>().await.expect("A succeeds") {
            EnrollResponse::Success(_) => {}
            other => panic!("{other:?}"),
        }
        let (enrolled, rev) = cl.device(&f.id).await.expect("device");
        assert_eq!(enrolled.spec.enroll_status, EnrollStatus::Enrolled);

        // Ceremony B with the live second token finds the device enrolled.
        let key_b = DeviceKey::new();
        let r = enroll_init_reply(&f.user.ch, enroll_init(&second, &key_b, f.data())).await;
        assert_status(r, Code::FailedPrecondition, "device is already enrolled");
        cl.assert_failure_event(
            &f.user.name,
            EventType::DeviceEnroll,
            "device is already enrolled",
        )
        .await;
        let (after, rev_after) = cl.device(&f.id).await.expect("device");
        assert_eq!(rev_after, rev, "enrolled device unchanged");
        assert_eq!(
            after.spec.credential.map(|c| c.id.to_string()),
            Some(key_a.credential_id.clone())
        );
        assert_eq!(cl.credential_owner(&key_b.credential_id).await, None);
        // An admin can't issue a token for an enrolled device either.
        let r = cl.new_token(&f.id).await;
        assert_status(r, Code::FailedPrecondition, "is already enrolled");
    })
}

#[test]
fn token_for_a_device_deleted_from_the_inventory() {
    block_on(async {
        let cl = shared().await;
        let f = fixture(cl, "deleted-").await;
        dt_proto::v1::device_trust_service_client::DeviceTrustServiceClient::new(cl.admin.clone())
            .delete_device(dt_proto::v1::DeviceRef {
                device_id: f.id.clone(),
                ..Default::default()
            })
            .await
            .expect("delete device");
        let key = DeviceKey::new();
        let r = enroll_init_reply(&f.user.ch, enroll_init(&f.token, &key, f.data())).await;
        let s = assert_status(r, Code::PermissionDenied, BAD_TOKEN);
        assert_eq!(s.message(), BAD_TOKEN);
        cl.assert_failure_event(
            &f.user.name,
            EventType::DeviceEnroll,
            "invalid device enrollment token (unknown token)",
        )
        .await;
        assert!(cl.device(&f.id).await.is_none(), "no device came back");
        assert_eq!(cl.credential_owner(&key.credential_id).await, None);
    })
}

#[test]
fn live_token_whose_device_vanished() {
    block_on(async {
        let cl = shared().await;
        let user = cl.user("vanished-", &["device-enroll"]).await;
        let tag = unique("GONE");
        let ghost = uuid::Uuid::new_v4().to_string();
        // A live token record naming a device that is not in the inventory.
        let token = cl
            .write_token(
                &ghost,
                time::OffsetDateTime::now_utc(),
                time::Duration::hours(1),
            )
            .await;
        let key = DeviceKey::new();
        let r = enroll_init_reply(
            &user.ch,
            enroll_init(&token, &key, data(OsType::Linux, &tag)),
        )
        .await;
        assert_status(
            r,
            Code::FailedPrecondition,
            "device is not registered in the inventory",
        );
        cl.assert_failure_event(
            &user.name,
            EventType::DeviceEnroll,
            "device is not registered in the inventory",
        )
        .await;
        assert!(cl.device(&ghost).await.is_none());
        assert_eq!(cl.credential_owner(&key.credential_id).await, None);
        assert!(
            cl.token_record(&token)
                .await
                .expect("record")
                .spent_at
                .is_some(),
            "spent at Init"
        );
    })
}

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

#[test]
fn user_with_only_access_cannot_enroll() {
    block_on(async {
        let cl = shared().await;
        let f = fixture(cl, "accessonly-owner-").await;
        let mallory = cl.user("accessonly-", &["access"]).await;
        let key = DeviceKey::new();
        let r = enroll_init_reply(&mallory.ch, enroll_init(&f.token, &key, f.data())).await;
        assert_status(
            r,
            Code::PermissionDenied,
            "access denied: your roles do not allow enroll on device",
        );
        cl.assert_failure_event(
            &mallory.name,
            EventType::DeviceEnroll,
            "access denied: your roles do not allow enroll on device",
        )
        .await;
        cl.assert_untouched(&f.id, f.rev).await;
        assert_eq!(cl.credential_owner(&key.credential_id).await, None);
        assert_eq!(
            cl.token_record(&f.token).await.expect("record").spent_at,
            None,
            "the refused caller did not spend the token"
        );
        // The token still works for its rightful user.
        let device = enroll_raw(&f.user.ch, enroll_init(&f.token, &key, f.data()), |c| {
            key.enroll_response(c)
        })
        .await
        .expect("the owner enrolls");
        assert_eq!(device.spec.owner.as_deref(), Some(f.user.name.as_str()));
    })
}

#[test]
fn oversized_serial_number() {
    block_on(async {
        let cl = shared().await;
        let f = fixture(cl, "bigserial-").await;
        let key = DeviceKey::new();
        let mut d = f.data();
        d.serial_number = "S".repeat(257);
        let r = enroll_init_reply(&f.user.ch, enroll_init(&f.token, &key, d)).await;
        assert_status(
            r,
            Code::InvalidArgument,
            "invalid device_data: device data field serial_number is longer than 256 bytes",
        );
        cl.assert_failure_event(
            &f.user.name,
            EventType::DeviceEnroll,
            "serial_number is longer than 256 bytes",
        )
        .await;
        cl.assert_untouched(&f.id, f.rev).await;
        assert_eq!(cl.credential_owner(&key.credential_id).await, None);
    })
}

#[test]
fn oversized_public_key() {
    block_on(async {
        let cl = shared().await;
        let f = fixture(cl, "bigkey-").await;
        let key = DeviceKey::new();
        let mut init = enroll_init(&f.token, &key, f.data());
        let mut huge = key.spki();
        huge.resize(64 * 1024, 0);
        init.payload = EnrollPayload::P256 {
            public_key_der: huge,
            storage: P256KeyStorage::Software,
        };
        let r = enroll_init_reply(&f.user.ch, init).await;
        assert_status(
            r,
            Code::InvalidArgument,
            "public_key_der is 65536 bytes, more than the 1024 accepted",
        );
        cl.assert_failure_event(
            &f.user.name,
            EventType::DeviceEnroll,
            "public_key_der is 65536 bytes",
        )
        .await;
        cl.assert_untouched(&f.id, f.rev).await;
        assert_eq!(cl.credential_owner(&key.credential_id).await, None);
    })
}

#[test]
fn oversized_credential_id() {
    block_on(async {
        let cl = shared().await;
        let f = fixture(cl, "bigcred-").await;
        let mut key = DeviceKey::new();
        key.credential_id = "c".repeat(129);
        let r = enroll_init_reply(&f.user.ch, enroll_init(&f.token, &key, f.data())).await;
        assert_status(
            r,
            Code::InvalidArgument,
            "credential_id is 129 bytes, more than the 128 accepted",
        );
        cl.assert_failure_event(
            &f.user.name,
            EventType::DeviceEnroll,
            "credential_id is 129 bytes",
        )
        .await;
        cl.assert_untouched(&f.id, f.rev).await;
        assert_eq!(cl.credential_owner(&key.credential_id).await, None);
    })
}

/// A first message over dt-ceremony's message limit is refused before it is converted.
#[test]
fn oversized_message() {
    block_on(async {
        let cl = shared().await;
        let f = fixture(cl, "bigmsg-").await;
        let key = DeviceKey::new();
        let mut d = f.data();
        // Well-formed protobuf one byte too large: the size check, not a field check, must
        // stop it.
        d.hostname = "h".repeat(dt_ceremony::limits::MAX_CEREMONY_MESSAGE_LEN);
        let mut raw = RawEnroll::open_enroll(&f.user.ch).await.expect("open");
        raw.send(&EnrollRequest::Init(Box::new(enroll_init(
            &f.token, &key, d,
        ))))
        .await;
        let r = raw.recv::<EnrollResponse>().await;
        assert_status(r, Code::InvalidArgument, "EnrollInit is too large");
        cl.assert_untouched(&f.id, f.rev).await;
        assert_eq!(
            cl.token_record(&f.token).await.expect("record").spent_at,
            None,
            "an unread message spends no token"
        );
    })
}

#[test]
fn oversized_message_is_audited() {
    block_on(async {
        let cl = shared().await;
        let f = fixture(cl, "bigmsg-audit-").await;
        let key = DeviceKey::new();
        let mut d = f.data();
        d.hostname = "h".repeat(dt_ceremony::limits::MAX_CEREMONY_MESSAGE_LEN);
        let mut raw = RawEnroll::open_enroll(&f.user.ch).await.expect("open");
        raw.send(&EnrollRequest::Init(Box::new(enroll_init(
            &f.token, &key, d,
        ))))
        .await;
        let r = raw.recv::<EnrollResponse>().await;
        assert_status(r, Code::InvalidArgument, "EnrollInit is too large");
        cl.assert_failure_event(&f.user.name, EventType::DeviceEnroll, "too large")
            .await;
    })
}

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
        let f = fixture(&cl, "nosoftware-").await;
        let key = DeviceKey::new();
        let r = enroll_init_reply(&f.user.ch, enroll_init(&f.token, &key, f.data())).await;
        assert_status(
            r,
            Code::PermissionDenied,
            "device_trust.allow_software_credentials: true",
        );
        cl.assert_failure_event(
            &f.user.name,
            EventType::DeviceEnroll,
            "allow_software_credentials",
        )
        .await;
        cl.assert_untouched(&f.id, f.rev).await;
        assert_eq!(cl.credential_owner(&key.credential_id).await, None);
        cl.stop().await;
    })
}

/// Only macOS has a Secure Enclave: a Linux device can't claim one to dodge
/// `allow_software_credentials`.
#[test]
fn secure_enclave_claim_from_a_linux_device() {
    block_on(async {
        let cl = shared().await;
        let f = fixture(cl, "fake-se-").await;
        let key = DeviceKey::new();
        let mut init = enroll_init(&f.token, &key, f.data());
        init.payload = EnrollPayload::P256 {
            public_key_der: key.spki(),
            storage: P256KeyStorage::SecureEnclave,
        };
        let r = enroll_init_reply(&f.user.ch, init).await;
        assert_status(
            r,
            Code::InvalidArgument,
            "invalid payload: secure enclave credentials exist only on macOS",
        );
        cl.assert_failure_event(
            &f.user.name,
            EventType::DeviceEnroll,
            "secure enclave credentials exist only on macOS",
        )
        .await;
        cl.assert_untouched(&f.id, f.rev).await;
        assert_eq!(cl.credential_owner(&key.credential_id).await, None);
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
        // Auto-enrollment needs no verb: a plain user logging in.
        let user = cl.user("auto-mismatch-", &["access"]).await;
        let tag = unique("AUTOX");
        let (id, _) = cl
            .add_device(OsType::Linux, &tag, Some(profile("ModelX1,1")), false)
            .await;
        let (_, rev) = cl.device(&id).await.expect("device");
        let key = DeviceKey::new();
        let mut d = data(OsType::Linux, &tag);
        d.model_identifier = "ModelY9,9".into();
        let r = enroll_init_reply(&user.ch, enroll_init("", &key, d)).await;
        assert_status(
            r,
            Code::FailedPrecondition,
            "auto-enrollment refused: model does not match the MDM profile",
        );
        let ev = cl
            .assert_failure_event(
                &user.name,
                EventType::DeviceTokenCreate,
                "auto-enrollment refused: model does not match the MDM profile (device \"ModelY9,9\", profile",
            )
            .await;
        assert_eq!(ev.device.map(|d| d.device_id), Some(id.clone()));
        cl.assert_untouched(&id, rev).await;
        assert_eq!(cl.credential_owner(&key.credential_id).await, None);
        cl.stop().await;
    })
}

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

#[test]
fn auto_enroll_while_the_cluster_has_it_off() {
    block_on(async {
        let cl = shared().await;
        let user = cl.user("auto-off-", &["access"]).await;
        let tag = unique("AUTOOFF");
        let (id, _) = cl
            .add_device(OsType::Linux, &tag, Some(profile(MODEL)), false)
            .await;
        let (_, rev) = cl.device(&id).await.expect("device");
        let key = DeviceKey::new();
        let r = enroll_init_reply(&user.ch, enroll_init("", &key, data(OsType::Linux, &tag))).await;
        assert_status(
            r,
            Code::FailedPrecondition,
            "auto-enrollment refused: auto-enrollment is off",
        );
        cl.assert_failure_event(
            &user.name,
            EventType::DeviceTokenCreate,
            "auto-enrollment is off",
        )
        .await;
        cl.assert_untouched(&id, rev).await;
    })
}

/// Unknown, malformed, expired, spent and other-device tokens all read the same to the
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

#[test]
fn enrollment_rate_limit_is_audited() {
    block_on(async {
        let cl = Cluster::start(Options {
            ceremonies_per_minute: 1,
            ..Options::default()
        })
        .await;
        let f = fixture(&cl, "ratelimit-enroll-").await;
        let key = DeviceKey::new();
        // One ceremony allowed: the first (refused for its token) uses it up.
        let r = enroll_init_reply(&f.user.ch, enroll_init("not-a-token", &key, f.data())).await;
        assert_status(r, Code::PermissionDenied, BAD_TOKEN);
        let r = enroll_init_reply(&f.user.ch, enroll_init(&f.token, &key, f.data())).await;
        assert_status(
            r,
            Code::ResourceExhausted,
            &format!("too many device ceremonies for {}", f.user.name),
        );
        cl.assert_untouched(&f.id, f.rev).await;
        assert_eq!(
            cl.token_record(&f.token).await.expect("record").spent_at,
            None
        );
        cl.assert_failure_event(
            &f.user.name,
            EventType::DeviceEnroll,
            "too many device ceremonies",
        )
        .await;
        cl.stop().await;
    })
}

/// One transaction per bulk request must not weaken (os_type, asset_tag) uniqueness: a tag
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
