//! Issue 11, hole 9: deleting or un-enrolling a device revokes the certificates already
//! augmented with it (a lock on the device and credential, written with the change, until
//! the longest certificate would expire); one public key can't be enrolled as two devices;
//! a non-numeric OS version does not switch the drift rule off. Real auth service over
//! loopback mTLS with SQLite.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

mod support;

use dt_auth::server::LOCAL_ADMIN;
use dt_ceremony::messages::UserCertificates;
use dt_proto::v1 as pb;
use dt_proto::v1::device_trust_service_client::DeviceTrustServiceClient;
use dt_types::Device;
use dt_types::audit::EventType;
use dt_types::device::{EnrollStatus, OsType};
use support::*;
use tonic::Code;
use tonic::transport::Channel;

/// Any authenticated API call (the caller check is where locks apply): the caller's own
/// devices, which every user may list.
async fn call(ch: &Channel) -> Result<(), tonic::Status> {
    DeviceTrustServiceClient::new(ch.clone())
        .list_devices(pb::ListDevicesRequest::default())
        .await
        .map(|_| ())
}

/// `user`'s certificates augmented with `dev`, and a channel presenting them.
async fn augmented(cl: &Cluster, user: &User, dev: &EnrolledDevice) -> (UserCertificates, Channel) {
    let certs = cl
        .authenticate(user, dev, dev.data.clone())
        .await
        .expect("device authentication");
    let ch = cl
        .channel_with(&certs.x509_der, &user.key)
        .await
        .expect("augmented channel");
    (certs, ch)
}

fn assert_revoked(r: Result<(), tonic::Status>, dev: &EnrolledDevice, why: &str) {
    let s = r.expect_err("the augmented certificate is revoked");
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    let want = format!(
        "lock targeting Device:{:?}, DeviceCredential:{:?} is in force: device {:?} was {why}; log in again",
        dev.id, dev.key.credential_id, dev.tag
    );
    assert!(
        s.message().contains(&want),
        "{:?} should contain {want:?}",
        s.message()
    );
}

#[test]
fn deleting_a_device_revokes_certificates_augmented_with_it() {
    block_on(async {
        let cl = shared().await;
        let user = cl.user("revoke-del-", &["device-enroll"]).await;
        let dev = cl.enrolled_device(&user).await;
        let (_, ch) = augmented(cl, &user, &dev).await;
        call(&ch).await.expect("augmented certificate works before");

        DeviceTrustServiceClient::new(cl.admin.clone())
            .delete_device(pb::DeviceRef {
                device_id: dev.id.clone(),
                ..Default::default()
            })
            .await
            .expect("delete device");

        assert_revoked(call(&ch).await, &dev, "deleted");
        // The user's plain certificate is not touched: they log in again.
        call(&user.ch).await.expect("plain certificate still works");
        // The revocation is in the audit log with the device and until when.
        let ev = cl.events(LOCAL_ADMIN, EventType::LockCreate).await;
        let ev = ev
            .iter()
            .rev()
            .find(|e| e.device.as_ref().is_some_and(|d| d.device_id == dev.id))
            .expect("lock.create for the device");
        let msg = ev.message.clone().unwrap_or_default();
        assert!(
            msg.contains("revoked until") && msg.contains("(device deleted)"),
            "{msg}"
        );
        assert!(
            ev.lock
                .as_deref()
                .is_some_and(|l| l.starts_with("device-revoked-"))
        );
        let del = cl.events(LOCAL_ADMIN, EventType::DeviceDelete).await;
        assert!(
            del.iter()
                .any(|e| e.success && e.device.as_ref().is_some_and(|d| d.device_id == dev.id))
        );
    })
}

#[test]
fn unenrolling_revokes_old_certificates_but_not_a_new_enrollment() {
    block_on(async {
        let cl = shared().await;
        let user = cl.user("revoke-unenroll-", &["device-enroll"]).await;
        let dev = cl.enrolled_device(&user).await;
        let (_, old) = augmented(cl, &user, &dev).await;

        let (mut d, rev) = cl.device(&dev.id).await.expect("device");
        d.spec.enroll_status = EnrollStatus::NotEnrolled;
        DeviceTrustServiceClient::new(cl.admin.clone())
            .update_device(pb::UpdateDeviceRequest {
                device: Some(pb::Device::try_from(&d).unwrap()),
                expected_revision: rev,
            })
            .await
            .expect("un-enroll");
        assert_revoked(call(&old).await, &dev, "un-enrolled");
        let ev = cl.events(LOCAL_ADMIN, EventType::DeviceUpdate).await;
        assert!(ev.iter().any(|e| {
            e.message
                .as_deref()
                .is_some_and(|m| m.contains("its certificates revoked"))
        }));

        // Enrolled again (new token, new credential): the new certificates work.
        let token = cl.new_token(&dev.id).await.expect("token");
        let key = DeviceKey::new();
        let again: Device = dt_client::devices::enroll(
            user.ch.clone(),
            dt_ceremony::token::EnrollToken::new(token),
            key.credential_id.clone(),
            dev.data.clone(),
            key.payload(),
            |req| key.prove(req),
        )
        .await
        .expect("re-enrollment");
        assert_eq!(again.metadata.name, dev.id);
        let renewed = EnrolledDevice {
            id: dev.id.clone(),
            tag: dev.tag.clone(),
            key,
            data: dev.data.clone(),
        };
        let (_, new) = augmented(cl, &user, &renewed).await;
        call(&new)
            .await
            .expect("certificates of the new enrollment");
        assert_revoked(call(&old).await, &dev, "un-enrolled");
    })
}

#[test]
fn one_public_key_cannot_be_enrolled_as_two_devices() {
    block_on(async {
        let cl = shared().await;
        let user = cl.user("dupkey-", &["device-enroll"]).await;
        let first = cl.enrolled_device(&user).await;
        let tag = unique("DUPKEY");
        let (id, token) = cl.add_device(OsType::Linux, &tag, None, true).await;
        // The same key under another credential id.
        let key = first
            .key
            .same_key_as(&format!("{}-again", first.key.credential_id));
        let r = dt_client::devices::enroll(
            user.ch.clone(),
            dt_ceremony::token::EnrollToken::new(token.expect("token")),
            key.credential_id.clone(),
            data(OsType::Linux, &tag),
            key.payload(),
            |req| key.prove(req),
        )
        .await;
        let err = r.expect_err("the same key as a second device").to_string();
        assert!(
            err.contains("this device key is already enrolled as another device"),
            "{err}"
        );
        cl.assert_failure_event(
            &user.name,
            EventType::DeviceEnroll,
            "this device key is already enrolled as another device",
        )
        .await;
        let (d, _) = cl.device(&id).await.expect("device");
        assert_eq!(d.spec.enroll_status, EnrollStatus::NotEnrolled);
        assert_eq!(cl.credential_owner(&key.credential_id).await, None);
    })
}

#[test]
fn a_non_numeric_os_version_is_drift() {
    block_on(async {
        let cl = shared().await;
        let user = cl.user("drift-", &["device-enroll"]).await;
        let dev = cl.enrolled_device(&user).await;
        let mut now = dev.data.clone();
        now.os_version = "sequoia".into();
        let err = cl
            .authenticate(&user, &dev, now)
            .await
            .expect_err("a version with no order is drift")
            .to_string();
        assert!(err.contains("collected data drift detected"), "{err}");
        cl.assert_failure_event(
            &user.name,
            EventType::DeviceAuthenticate,
            "os version changed and can't be compared (\"13.10\" → \"sequoia\")",
        )
        .await;
        // The enrolled version itself still authenticates.
        cl.authenticate(&user, &dev, dev.data.clone())
            .await
            .expect("unchanged version");
    })
}
