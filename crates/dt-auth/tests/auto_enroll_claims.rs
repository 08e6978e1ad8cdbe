//! Issue 11, hole 4: auto-enrollment must not let any logged-in user claim a registered
//! device by reporting its serial and profile values, must honour a deny on
//! `device: enroll`, and device reads without the `read`/`list` verbs show only the
//! caller's own devices. Real auth service over loopback mTLS with SQLite.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

mod support;

use dt_proto::v1 as pb;
use dt_proto::v1::device_trust_service_client::DeviceTrustServiceClient;
use dt_types::Device;
use dt_types::audit::EventType;
use dt_types::device::{DeviceProfile, EnrollStatus, OsType};
use dt_types::resource::DeviceTrustSettings;
use support::*;
use tonic::Code;

/// A profile that matches what `data()` reports, lists its OS account, and names no
/// devtrust user (what an MDM import of the machine looks like).
fn machine_profile() -> DeviceProfile {
    DeviceProfile {
        model_identifier: MODEL.into(),
        os_version: OS_VERSION.into(),
        os_usernames: vec!["tester".into()],
        ..Default::default()
    }
}

async fn auto_cluster(require_user_match: bool) -> Cluster {
    Cluster::start(Options {
        device_trust: DeviceTrustSettings {
            auto_enroll: true,
            auto_enroll_require_user_match: require_user_match,
            ..Options::default().device_trust
        },
        ..Options::default()
    })
    .await
}

async fn auto_enroll(user: &User, tag: &str) -> Result<Device, dt_client::ClientError> {
    let key = DeviceKey::new();
    dt_client::devices::enroll(
        user.ch.clone(),
        dt_ceremony::token::EnrollToken::new(""),
        key.credential_id.clone(),
        data(OsType::Linux, tag),
        key.payload(),
        |req| key.prove(req),
    )
    .await
}

/// The reproduction: a user with only `access` reports a registered device's serial; its
/// profile matches the machine but names no devtrust user. Before the fix the device
/// became his.
#[test]
fn a_profile_that_names_no_devtrust_user_is_not_claimed() {
    block_on(async {
        let cl = auto_cluster(true).await;
        let user = cl.user("claimer-", &["access"]).await;
        let tag = unique("CLAIM");
        let (id, _) = cl
            .add_device(OsType::Linux, &tag, Some(machine_profile()), false)
            .await;
        let (_, rev) = cl.device(&id).await.expect("device");
        let key = DeviceKey::new();
        let r = enroll_init_reply(&user.ch, enroll_init("", &key, data(OsType::Linux, &tag))).await;
        assert_status(
            r,
            Code::FailedPrecondition,
            &format!(
                "auto-enrollment refused: the device's MDM profile does not name user {:?}",
                user.name
            ),
        );
        let ev = cl
            .assert_failure_event(
                &user.name,
                EventType::DeviceTokenCreate,
                "does not name user",
            )
            .await;
        assert_eq!(ev.device.map(|d| d.device_id), Some(id.clone()));
        cl.assert_untouched(&id, rev).await;
        assert_eq!(cl.credential_owner(&key.credential_id).await, None);

        // Named as the assigned user: the same user now enrolls it and owns it.
        let (named_id, _) = cl
            .add_device(
                OsType::Linux,
                &unique("NAMED"),
                Some(DeviceProfile {
                    assigned_user: user.name.clone(),
                    ..machine_profile()
                }),
                false,
            )
            .await;
        let (named, _) = cl.device(&named_id).await.expect("device");
        let enrolled = auto_enroll(&user, &named.spec.asset_tag)
            .await
            .expect("the assigned user auto-enrolls");
        assert_eq!(enrolled.spec.owner.as_deref(), Some(user.name.as_str()));

        // A local account of the user's name counts too.
        let tag = unique("LOCAL");
        cl.add_device(
            OsType::Linux,
            &tag,
            Some(DeviceProfile {
                os_usernames: vec!["tester".into(), user.name.clone()],
                ..machine_profile()
            }),
            false,
        )
        .await;
        auto_enroll(&user, &tag)
            .await
            .expect("a profile listing the user's account");
        cl.stop().await;
    })
}

/// The admin can turn the user check off (an MDM that records no users).
#[test]
fn the_user_check_can_be_turned_off() {
    block_on(async {
        let cl = auto_cluster(false).await;
        let user = cl.user("nocheck-", &["access"]).await;
        let tag = unique("NOCHECK");
        cl.add_device(OsType::Linux, &tag, Some(machine_profile()), false)
            .await;
        let d = auto_enroll(&user, &tag)
            .await
            .expect("auto-enrollment without the user check");
        assert_eq!(d.spec.enroll_status, EnrollStatus::Enrolled);
        cl.stop().await;
    })
}

/// A role that denies `device: enroll` stops auto-enrollment, which needs no allow rule.
#[test]
fn a_deny_on_device_enroll_stops_auto_enrollment() {
    block_on(async {
        let cl = auto_cluster(true).await;
        cl.role(
            "no-enroll",
            "{deny: {rules: [{resources: [device], verbs: [enroll]}]}}",
        )
        .await;
        let user = cl.user("denied-", &["access", "no-enroll"]).await;
        let tag = unique("DENY");
        let (id, _) = cl
            .add_device(
                OsType::Linux,
                &tag,
                Some(DeviceProfile {
                    assigned_user: user.name.clone(),
                    ..machine_profile()
                }),
                false,
            )
            .await;
        let (_, rev) = cl.device(&id).await.expect("device");
        let key = DeviceKey::new();
        let r = enroll_init_reply(&user.ch, enroll_init("", &key, data(OsType::Linux, &tag))).await;
        assert_status(
            r,
            Code::FailedPrecondition,
            "auto-enrollment refused: access denied: your roles do not allow enroll on device (a role denies it)",
        );
        cl.assert_failure_event(
            &user.name,
            EventType::DeviceTokenCreate,
            "auto-enrollment refused: access denied: your roles do not allow enroll on device (a role denies it)",
        )
        .await;
        cl.assert_untouched(&id, rev).await;
        cl.stop().await;
    })
}

/// Without `read`/`list` on devices a user sees only their own devices; the preset
/// `require-trusted-device` role no longer grants reading every device.
#[test]
fn users_without_device_read_see_only_their_own_devices() {
    block_on(async {
        let cl = shared().await;
        let enroller = cl.user("owner-", &["device-enroll"]).await;
        let mine = cl.enrolled_device(&enroller).await;
        let other_user = cl.user("other-", &["device-enroll"]).await;
        let theirs = cl.enrolled_device(&other_user).await;
        let reader = cl
            .user("trusted-", &["access", "require-trusted-device"])
            .await;

        let list = |u: &User| {
            let ch = u.ch.clone();
            async move {
                DeviceTrustServiceClient::new(ch)
                    .list_devices(pb::ListDevicesRequest {
                        page_size: 0,
                        page_token: String::new(),
                    })
                    .await
                    .expect("list devices")
                    .into_inner()
                    .devices
                    .into_iter()
                    .map(|d| Device::try_from(d).unwrap().metadata.name)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(list(&enroller).await, vec![mine.id.clone()]);
        assert!(list(&reader).await.is_empty(), "owns no device");

        let get = |u: &User, tag: &str| {
            let ch = u.ch.clone();
            let tag = tag.to_string();
            async move {
                DeviceTrustServiceClient::new(ch)
                    .get_device(pb::DeviceRef {
                        asset_tag: tag,
                        ..Default::default()
                    })
                    .await
            }
        };
        get(&enroller, &mine.tag).await.expect("own device");
        for u in [&enroller, &reader] {
            let s = get(u, &theirs.tag)
                .await
                .expect_err("another user's device");
            assert_eq!(s.code(), Code::NotFound, "{s:?}");
            assert!(
                s.message().contains("not found among your devices"),
                "{s:?}"
            );
            let found = DeviceTrustServiceClient::new(u.ch.clone())
                .find_devices(pb::FindDevicesRequest {
                    id_or_tag: theirs.id.clone(),
                })
                .await
                .expect("find")
                .into_inner();
            assert!(found.devices.is_empty(), "{found:?}");
        }

        // Device readers still see every device.
        let admin = cl.user("devadmin-", &["device-admin"]).await;
        let all = list(&admin).await;
        assert!(all.contains(&mine.id) && all.contains(&theirs.id));
        get(&admin, &theirs.tag)
            .await
            .expect("device-admin reads any");
    })
}
