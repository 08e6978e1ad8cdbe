//! Device authentication cheats (issue 5), plus the ceremony deadlines and the per-user
//! ceremony rate limit, against a real auth service over loopback mTLS with SQLite. Each
//! refusal asserts the status the client sees, the `device.authenticate` failure event
//! that explains it, and that the device record did not move (no collected data written).
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

mod support;

use dt_ca::{CaKind, CertAuthority};
use dt_ceremony::messages::{AuthenticateRequest, AuthenticateResponse, UserCertificates};
use dt_types::audit::EventType;
use dt_types::device::OsType;
use dt_types::resource::{DeviceTrustMode, DeviceTrustSettings, LockTarget};
use support::*;
use tonic::Code;

const DRIFT: &str = "collected data drift detected";

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
    let (d, now) = cl.device(&dev.id).await.expect("device");
    assert_eq!(now, rev, "device record unchanged");
    assert_eq!(
        d.spec.credential.map(|c| c.id.to_string()),
        Some(dev.key.credential_id.clone())
    );
}

#[test]
fn successful_enroll_and_authenticate() {
    block_on(async { support::scenarios::enroll_and_authenticate(shared().await).await })
}

#[test]
fn replayed_challenge_response() {
    block_on(async { support::scenarios::replayed_response(shared().await).await })
}

#[test]
fn signature_by_another_devices_key() {
    block_on(async {
        let cl = shared().await;
        let u = cl.user("otherkey-", &["device-enroll"]).await;
        let v = cl.user("otherkey-victim-", &["device-enroll"]).await;
        let mine = cl.enrolled_device(&u).await;
        let theirs = cl.enrolled_device(&v).await;
        let before = rev(cl, &mine).await;
        let r = authenticate_raw(
            &u.ch,
            authn_init(&u.certs, &mine.key.credential_id, mine.data.clone()),
            |c| theirs.key.authn_response(c),
        )
        .await;
        assert_status(
            r,
            Code::PermissionDenied,
            "the device signature does not verify over this ceremony's challenge",
        );
        let ev = cl
            .assert_failure_event(
                &u.name,
                EventType::DeviceAuthenticate,
                "the device signature does not verify over this ceremony's challenge",
            )
            .await;
        assert_eq!(ev.device.map(|d| d.device_id), Some(mine.id.clone()));
        assert_rev(cl, &mine, before).await;
    })
}

#[test]
fn another_devices_credential_id() {
    block_on(async {
        let cl = shared().await;
        let u = cl.user("othercred-", &["device-enroll"]).await;
        let v = cl.user("othercred-victim-", &["device-enroll"]).await;
        let mine = cl.enrolled_device(&u).await;
        let theirs = cl.enrolled_device(&v).await;
        let (mine_rev, theirs_rev) = (rev(cl, &mine).await, rev(cl, &theirs).await);
        // My serial, their credential id, signed with their key.
        let r = authn_init_reply(
            &u.ch,
            authn_init(&u.certs, &theirs.key.credential_id, mine.data.clone()),
        )
        .await;
        let s = assert_status(r, Code::PermissionDenied, "unknown device credential");
        assert_eq!(s.message(), "unknown device credential");
        cl.assert_failure_event(
            &u.name,
            EventType::DeviceAuthenticate,
            "unknown device credential",
        )
        .await;
        assert_rev(cl, &mine, mine_rev).await;
        assert_rev(cl, &theirs, theirs_rev).await;
    })
}

#[test]
fn drift_os_type_changed() {
    block_on(async {
        let cl = shared().await;
        let u = cl.user("drift-os-", &["device-enroll"]).await;
        let dev = cl.enrolled_device(&u).await;
        let before = rev(cl, &dev).await;
        let mut d = dev.data.clone();
        d.os_type = Some(OsType::Windows);
        let r = auth_refused_at_init(&u, &u.certs, &dev, d).await;
        assert_status(
            r,
            Code::FailedPrecondition,
            "device not found in the inventory",
        );
        cl.assert_failure_event(
            &u.name,
            EventType::DeviceAuthenticate,
            "device not found in the inventory",
        )
        .await;
        assert_rev(cl, &dev, before).await;
    })
}

#[test]
fn drift_serial_changed() {
    block_on(async {
        let cl = shared().await;
        let u = cl.user("drift-serial-", &["device-enroll"]).await;
        let dev = cl.enrolled_device(&u).await;
        let before = rev(cl, &dev).await;
        let mut d = dev.data.clone();
        d.serial_number = unique("SWAPPED");
        let r = auth_refused_at_init(&u, &u.certs, &dev, d).await;
        assert_status(
            r,
            Code::FailedPrecondition,
            "device not found in the inventory",
        );
        let ev = cl
            .assert_failure_event(
                &u.name,
                EventType::DeviceAuthenticate,
                "device not found in the inventory",
            )
            .await;
        assert_eq!(ev.device, None);
        assert_rev(cl, &dev, before).await;
    })
}

#[test]
fn drift_model_changed() {
    block_on(async {
        let cl = shared().await;
        let u = cl.user("drift-model-", &["device-enroll"]).await;
        let dev = cl.enrolled_device(&u).await;
        let before = rev(cl, &dev).await;
        let mut d = dev.data.clone();
        d.model_identifier = "OtherBook9,9".into();
        let r = auth_refused_at_init(&u, &u.certs, &dev, d).await;
        assert_status(r, Code::PermissionDenied, DRIFT);
        cl.assert_failure_event(
            &u.name,
            EventType::DeviceAuthenticate,
            &format!("{DRIFT} (model changed since enrollment (\"{MODEL}\" → \"OtherBook9,9\"))"),
        )
        .await;
        assert_rev(cl, &dev, before).await;
    })
}

#[test]
fn drift_os_version_went_backwards() {
    block_on(async {
        let cl = shared().await;
        let u = cl.user("drift-version-", &["device-enroll"]).await;
        let dev = cl.enrolled_device(&u).await; // reports 13.10
        assert_eq!(dev.data.os_version, "13.10");
        let before = rev(cl, &dev).await;
        let mut d = dev.data.clone();
        d.os_version = "13.9".into(); // numerically older, lexically newer
        let r = auth_refused_at_init(&u, &u.certs, &dev, d).await;
        assert_status(r, Code::PermissionDenied, DRIFT);
        cl.assert_failure_event(
            &u.name,
            EventType::DeviceAuthenticate,
            &format!("{DRIFT} (os version went backwards (\"13.10\" → \"13.9\"))"),
        )
        .await;
        assert_rev(cl, &dev, before).await;
    })
}

#[test]
fn os_version_moving_forward_is_accepted() {
    block_on(async {
        let cl = shared().await;
        let u = cl.user("drift-forward-", &["device-enroll"]).await;
        let dev = cl
            .enrolled_device_with(&u, |d| d.os_version = "13.9".into())
            .await;
        let mut d = dev.data.clone();
        d.os_version = "13.10".into();
        auth_with(&u, &u.certs, &dev, d.clone())
            .await
            .expect("an upgrade is no drift");
        let (stored, before) = cl.device(&dev.id).await.expect("device");
        assert_eq!(stored.spec.collected_data.len(), 2);
        assert_eq!(stored.spec.collected_data[1].os_version, "13.10");
        // Compared with the latest record, not the enrollment one: 13.9 is now backwards.
        let r = auth_refused_at_init(&u, &u.certs, &dev, dev.data.clone()).await;
        assert_status(r, Code::PermissionDenied, DRIFT);
        cl.assert_failure_event(
            &u.name,
            EventType::DeviceAuthenticate,
            "os version went backwards (\"13.10\" → \"13.9\")",
        )
        .await;
        assert_rev(cl, &dev, before).await;
    })
}

#[test]
fn augmenting_already_augmented_certificates() {
    block_on(async {
        let cl = shared().await;
        let u = cl.user("augmented-", &["device-enroll"]).await;
        let dev = cl.enrolled_device(&u).await;
        let augmented = auth_with(&u, &u.certs, &dev, dev.data.clone())
            .await
            .expect("first authentication");
        let before = rev(cl, &dev).await;
        // Connect with the augmented X.509 as the mTLS identity, and send the augmented pair.
        let ch = cl
            .channel_with(&augmented.x509_der, &u.key)
            .await
            .expect("mTLS with the augmented certificate");
        let r = authn_init_reply(
            &ch,
            authn_init(&augmented, &dev.key.credential_id, dev.data.clone()),
        )
        .await;
        assert_status(
            r,
            Code::PermissionDenied,
            "the certificates already carry a device",
        );
        cl.assert_failure_event(
            &u.name,
            EventType::DeviceAuthenticate,
            "the certificates already carry a device",
        )
        .await;
        assert_rev(cl, &dev, before).await;
        // The augmented SSH certificate with the original X.509 is refused as well.
        let mixed = UserCertificates {
            x509_der: u.certs.x509_der.clone(),
            ssh_authorized_key: augmented.ssh_authorized_key.clone(),
        };
        let r = auth_refused_at_init(&u, &mixed, &dev, dev.data.clone()).await;
        assert_status(
            r,
            Code::PermissionDenied,
            "the certificates already carry a device",
        );
        assert_rev(cl, &dev, before).await;
    })
}

#[test]
fn in_band_certificates_from_another_ca() {
    block_on(async {
        let cl = shared().await;
        let u = cl.user("rogueca-", &["device-enroll"]).await;
        let dev = cl.enrolled_device(&u).await;
        let before = rev(cl, &dev).await;
        // Same cluster name, same user, same key: only the signer differs.
        let rogue = CertAuthority::generate("it", CaKind::User, time::OffsetDateTime::now_utc())
            .expect("rogue CA");
        let rogue_ssh = rogue
            .issue_ssh_user_cert(&u.key.ssh_public_key().expect("ssh key"), &u.identity)
            .expect("rogue ssh")
            .to_openssh()
            .expect("openssh");
        let rogue_x509 = rogue
            .issue_x509_client_cert(&u.key.spki_der(), &u.identity)
            .expect("rogue x509");

        // A rogue SSH certificate next to the genuine X.509.
        let certs = UserCertificates {
            x509_der: u.certs.x509_der.clone(),
            ssh_authorized_key: Some(rogue_ssh),
        };
        let r = auth_refused_at_init(&u, &certs, &dev, dev.data.clone()).await;
        assert_status(r, Code::PermissionDenied, "the SSH certificate was refused");
        cl.assert_failure_event(
            &u.name,
            EventType::DeviceAuthenticate,
            "the SSH certificate was refused",
        )
        .await;
        assert_rev(cl, &dev, before).await;

        // A rogue X.509 in band (the connection's certificate is genuine).
        let certs = UserCertificates {
            x509_der: rogue_x509.clone(),
            ssh_authorized_key: u.certs.ssh_authorized_key.clone(),
        };
        let r = auth_refused_at_init(&u, &certs, &dev, dev.data.clone()).await;
        assert_status(
            r,
            Code::PermissionDenied,
            "the x509 certificate is not the mTLS client certificate",
        );
        cl.assert_failure_event(
            &u.name,
            EventType::DeviceAuthenticate,
            "the x509 certificate is not the mTLS client certificate",
        )
        .await;
        assert_rev(cl, &dev, before).await;

        // A rogue X.509 as the mTLS identity never gets a ceremony.
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

#[test]
fn in_band_x509_of_another_user() {
    block_on(async {
        let cl = shared().await;
        let u = cl.user("otherx509-", &["device-enroll"]).await;
        let v = cl.user("otherx509-victim-", &["device-enroll"]).await;
        let dev = cl.enrolled_device(&u).await;
        let before = rev(cl, &dev).await;
        let certs = UserCertificates {
            x509_der: v.certs.x509_der.clone(),
            ssh_authorized_key: v.certs.ssh_authorized_key.clone(),
        };
        let r = auth_refused_at_init(&u, &certs, &dev, dev.data.clone()).await;
        assert_status(
            r,
            Code::PermissionDenied,
            "the certificates sent do not match the connection's identity: the x509 certificate is not the mTLS client certificate",
        );
        cl.assert_failure_event(
            &u.name,
            EventType::DeviceAuthenticate,
            "the x509 certificate is not the mTLS client certificate",
        )
        .await;
        assert!(
            cl.events(&v.name, EventType::DeviceAuthenticate)
                .await
                .is_empty(),
            "the event is the caller's, not the victim's"
        );
        assert_rev(cl, &dev, before).await;
    })
}

#[test]
fn ssh_certificate_of_another_user_or_key() {
    block_on(async {
        let cl = shared().await;
        let u = cl.user("otherssh-", &["device-enroll"]).await;
        let v = cl.user("otherssh-victim-", &["device-enroll"]).await;
        let dev = cl.enrolled_device(&u).await;
        let before = rev(cl, &dev).await;
        let certs = UserCertificates {
            x509_der: u.certs.x509_der.clone(),
            ssh_authorized_key: v.certs.ssh_authorized_key.clone(),
        };
        let r = auth_refused_at_init(&u, &certs, &dev, dev.data.clone()).await;
        assert_status(
            r,
            Code::PermissionDenied,
            "the ssh certificate names another user",
        );
        cl.assert_failure_event(
            &u.name,
            EventType::DeviceAuthenticate,
            "the ssh certificate names another user",
        )
        .await;
        assert_rev(cl, &dev, before).await;

        // The caller's own name, genuine CA, but another key.
        let other_key = dt_ca::ClientKey::generate().expect("key");
        let ssh = cl
            .srv
            .user_ca
            .issue_ssh_user_cert(&other_key.ssh_public_key().expect("ssh"), &u.identity)
            .expect("ssh")
            .to_openssh()
            .expect("openssh");
        let certs = UserCertificates {
            x509_der: u.certs.x509_der.clone(),
            ssh_authorized_key: Some(ssh),
        };
        let r = auth_refused_at_init(&u, &certs, &dev, dev.data.clone()).await;
        assert_status(
            r,
            Code::PermissionDenied,
            "the ssh certificate is for another key",
        );
        cl.assert_failure_event(
            &u.name,
            EventType::DeviceAuthenticate,
            "the ssh certificate is for another key",
        )
        .await;
        assert_rev(cl, &dev, before).await;
    })
}

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

#[test]
fn software_credential_after_the_cluster_stopped_allowing_them() {
    block_on(async {
        let cl = Cluster::start(Options::default()).await;
        let u = cl.user("nosoftware-", &["device-enroll"]).await;
        let dev = cl.enrolled_device(&u).await;
        cl.set_device_trust(DeviceTrustSettings {
            allow_software_credentials: false,
            ..cl.device_trust().await
        })
        .await;
        let before = rev(&cl, &dev).await;
        let r = auth_refused_at_init(&u, &u.certs, &dev, dev.data.clone()).await;
        assert_status(
            r,
            Code::PermissionDenied,
            "the cluster no longer allows software credentials",
        );
        cl.assert_failure_event(
            &u.name,
            EventType::DeviceAuthenticate,
            "no longer allows software credentials",
        )
        .await;
        assert_rev(&cl, &dev, before).await;
        cl.stop().await;
    })
}

#[test]
fn locked_device() {
    block_on(async {
        let cl = shared().await;
        let u = cl.user("lockdev-", &["device-enroll"]).await;
        let dev = cl.enrolled_device(&u).await;
        let bystander = cl.enrolled_device(&u).await;
        let before = rev(cl, &dev).await;
        cl.lock(
            LockTarget {
                device: Some(dev.id.clone()),
                ..Default::default()
            },
            "stolen laptop",
        )
        .await;
        let r = auth_refused_at_init(&u, &u.certs, &dev, dev.data.clone()).await;
        let want = format!(
            "lock targeting Device:\"{}\" is in force: stolen laptop",
            dev.id
        );
        let s = assert_status(r, Code::PermissionDenied, &want);
        assert_eq!(s.message(), want);
        let ev = cl
            .assert_failure_event(&u.name, EventType::DeviceAuthenticate, &want)
            .await;
        assert_eq!(ev.device.map(|d| d.device_id), Some(dev.id.clone()));
        assert_rev(cl, &dev, before).await;
        // The lock names one device: the user's other device still authenticates.
        auth_with(&u, &u.certs, &bystander, bystander.data.clone())
            .await
            .expect("an unlocked device of the same user");
    })
}

/// A lock created while the device is answering its challenge still wins.
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

#[test]
fn locked_user() {
    block_on(async {
        let cl = shared().await;
        let u = cl.user("lockuser-", &["device-enroll"]).await;
        let dev = cl.enrolled_device(&u).await;
        let before = rev(cl, &dev).await;
        cl.lock(
            LockTarget {
                user: Some(u.name.clone()),
                ..Default::default()
            },
            "offboarding",
        )
        .await;
        let r = auth_refused_at_init(&u, &u.certs, &dev, dev.data.clone()).await;
        let want = format!(
            "lock targeting User:\"{}\" is in force: offboarding",
            u.name
        );
        let s = assert_status(r, Code::PermissionDenied, &want);
        assert_eq!(s.message(), want);
        assert_rev(cl, &dev, before).await;
    })
}

#[test]
fn locked_user_is_audited() {
    block_on(async {
        let cl = shared().await;
        let u = cl.user("lockuser-audit-", &["device-enroll"]).await;
        let dev = cl.enrolled_device(&u).await;
        cl.lock(
            LockTarget {
                user: Some(u.name.clone()),
                ..Default::default()
            },
            "offboarding",
        )
        .await;
        let r = auth_refused_at_init(&u, &u.certs, &dev, dev.data.clone()).await;
        assert_status(r, Code::PermissionDenied, "is in force");
        cl.assert_failure_event(
            &u.name,
            EventType::DeviceAuthenticate,
            &format!("lock targeting User:\"{}\" is in force", u.name),
        )
        .await;
    })
}

#[test]
fn device_not_enrolled() {
    block_on(async {
        let cl = shared().await;
        let u = cl.user("notenrolled-", &["device-enroll"]).await;
        let tag = unique("NOTENR");
        let (id, _) = cl.add_device(OsType::Linux, &tag, None, true).await;
        let (_, before) = cl.device(&id).await.expect("device");
        let key = DeviceKey::new();
        let r = authn_init_reply(
            &u.ch,
            authn_init(&u.certs, &key.credential_id, data(OsType::Linux, &tag)),
        )
        .await;
        assert_status(r, Code::FailedPrecondition, "device is not enrolled");
        let ev = cl
            .assert_failure_event(
                &u.name,
                EventType::DeviceAuthenticate,
                "device is not enrolled",
            )
            .await;
        assert_eq!(ev.device.map(|d| d.device_id), Some(id.clone()));
        cl.assert_untouched(&id, before).await;
    })
}

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

/// A client that opens the stream and says nothing is cut off at the first-message deadline
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

#[test]
fn missing_ssh_certificate_is_refused_at_init() {
    block_on(async {
        let cl = shared().await;
        let u = cl.user("nossh-", &["device-enroll"]).await;
        let dev = cl.enrolled_device(&u).await;
        let before = rev(cl, &dev).await;
        let certs = UserCertificates {
            x509_der: u.certs.x509_der.clone(),
            ssh_authorized_key: None,
        };
        let r = auth_refused_at_init(&u, &certs, &dev, dev.data.clone()).await;
        assert_status(r, Code::InvalidArgument, "SSH certificate");
        cl.assert_failure_event(&u.name, EventType::DeviceAuthenticate, "SSH certificate")
            .await;
        assert_rev(cl, &dev, before).await;
    })
}

/// The authentication stream starts with `AuthenticateInit`; anything else is refused.
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

/// A device lock cuts off API calls made with certificates that carry that device, and
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
