//! Scenarios run against more than one storage backend (SQLite in `enroll_cheats` and
//! `authn_cheats`, PostgreSQL in `postgres`). Each takes the cluster to run on and uses
//! users and devices of its own.

use dt_ceremony::messages::AuthenticateChallengeResponse;
use dt_types::audit::EventType;
use dt_types::device::{EnrollStatus, OsType};
use tonic::Code;

use super::*;

/// A token is spent at Init: a second use after a successful enrollment is refused with
/// the generic token error, audited as "already used", and changes nothing.
pub async fn token_reused_after_success(cl: &Cluster) {
    let alice = cl.user("reuse-ok-", &["device-enroll"]).await;
    let tag = unique("REUSEOK");
    let (id, token) = cl.add_device(OsType::Linux, &tag, None, true).await;
    let token = token.expect("token");
    let key = DeviceKey::new();
    let d = data(OsType::Linux, &tag);
    let enrolled = enroll_raw(&alice.ch, enroll_init(&token, &key, d.clone()), |c| {
        key.enroll_response(c)
    })
    .await
    .expect("first use of the token enrolls");
    assert_eq!(enrolled.spec.enroll_status, EnrollStatus::Enrolled);
    let (before, rev) = cl.device(&id).await.expect("device");
    assert!(
        cl.token_record(&token)
            .await
            .expect("spent record kept")
            .spent_at
            .is_some(),
        "the token is marked spent"
    );

    // Second use, by a new credential (the same one would be refused as in use anyway).
    let other = DeviceKey::new();
    let r = enroll_init_reply(&alice.ch, enroll_init(&token, &other, d)).await;
    let s = assert_status(r, Code::PermissionDenied, "invalid device enrollment token");
    assert_eq!(s.message(), "invalid device enrollment token");
    cl.assert_failure_event(
        &alice.name,
        EventType::DeviceEnroll,
        "invalid device enrollment token (token already used)",
    )
    .await;
    let (after, rev_after) = cl.device(&id).await.expect("device");
    assert_eq!(rev_after, rev, "enrolled device unchanged");
    assert_eq!(after.spec.credential, before.spec.credential);
    assert_eq!(cl.credential_owner(&other.credential_id).await, None);
    assert_eq!(cl.credential_owner(&key.credential_id).await, Some(id));
}

/// Enrollment, then authentication: the augmented certificates carry the device (SSH
/// extensions and X.509 Subject attributes), keep the public key and the expiry, and the
/// `device.enroll`, `device.authenticate` and `cert.create` events name the device.
pub async fn enroll_and_authenticate(cl: &Cluster) {
    let bob = cl.user("success-", &["access", "device-enroll"]).await;
    let dev = cl.enrolled_device(&bob).await;
    let (stored, _) = cl.device(&dev.id).await.expect("device");
    assert_eq!(stored.spec.enroll_status, EnrollStatus::Enrolled);
    assert_eq!(stored.spec.owner.as_deref(), Some(bob.name.as_str()));
    let cred = stored.spec.credential.clone().expect("credential");
    assert_eq!(cred.id, dev.key.credential_id);
    assert_eq!(
        cred.attestation_type,
        dt_types::device::AttestationType::Software
    );
    assert_eq!(stored.spec.collected_data.len(), 1, "the enrollment record");
    assert_eq!(
        cl.credential_owner(&dev.key.credential_id).await,
        Some(dev.id.clone())
    );
    let enroll_ev = cl.events(&bob.name, EventType::DeviceEnroll).await;
    let last = enroll_ev.last().expect("device.enroll event");
    assert!(last.success);
    let info = last.device.as_ref().expect("device in event");
    assert_eq!(
        (
            info.device_id.as_str(),
            info.asset_tag.as_str(),
            info.credential_id.as_str()
        ),
        (
            dev.id.as_str(),
            dev.tag.as_str(),
            dev.key.credential_id.as_str()
        )
    );

    let augmented = cl
        .authenticate(&bob, &dev, dev.data.clone())
        .await
        .expect("device authentication");
    let now = time::OffsetDateTime::now_utc();
    let mut want = dt_ca::DeviceExt {
        device_id: dev.id.parse().unwrap(),
        asset_tag: dev.tag.clone(),
        credential_id: dev.key.credential_id.parse().unwrap(),
        posture: Default::default(),
    };

    // X.509: verified by the user CA, the three Subject attributes, same key and expiry.
    let x509_id = cl
        .srv
        .user_ca
        .verify_x509_issued_by(&augmented.x509_der, now)
        .expect("augmented x509 verifies");
    // The posture the auth service wrote: the credential's attestation, the inventory's OS,
    // the version the device just reported, and now.
    let posture = x509_id
        .device
        .as_ref()
        .map(|d| d.posture.clone())
        .unwrap_or_default();
    assert!(posture.attestation_type.is_some(), "{posture:?}");
    assert!(posture.os_type.is_some(), "{posture:?}");
    assert_eq!(posture.os_version.as_deref(), Some(OS_VERSION));
    let at = posture.authenticated_at.expect("authentication time");
    assert!((now - at).whole_seconds().abs() < 120, "{at} vs {now}");
    want.posture = posture;
    assert_eq!(x509_id.device.as_ref(), Some(&want));
    assert!(x509_id.is_device_verified());
    assert_eq!(x509_id.username, bob.name);
    assert_eq!(x509_id.roles, bob.identity.roles);
    assert_eq!(
        x509_id.not_after, bob.identity.not_after,
        "same x509 expiry"
    );
    let spki = |der: &[u8]| {
        let (_, c) = x509_parser::parse_x509_certificate(der).expect("x509");
        c.tbs_certificate.subject_pki.raw.to_vec()
    };
    assert_eq!(
        spki(&augmented.x509_der),
        spki(&bob.certs.x509_der),
        "same x509 key"
    );
    let (_, parsed) = x509_parser::parse_x509_certificate(&augmented.x509_der).expect("x509");
    for (oid, value) in [
        (dt_ca::x509_oid::DEVICE_ID, &dev.id),
        (dt_ca::x509_oid::DEVICE_ASSET_TAG, &dev.tag),
        (
            dt_ca::x509_oid::DEVICE_CREDENTIAL_ID,
            &dev.key.credential_id,
        ),
    ] {
        let found: Vec<String> = parsed
            .subject()
            .iter_attributes()
            .filter(|a| a.attr_type().as_bytes() == oid_content(oid))
            .map(|a| a.as_str().expect("utf8 attribute").to_string())
            .collect();
        assert_eq!(found, vec![value.clone()], "subject attribute {oid}");
    }

    // SSH: verified by the user CA, the three extensions, same key and expiry.
    let ssh_text = augmented.ssh_authorized_key.as_deref().expect("ssh cert");
    let ssh = dt_ca::SshCertificate::from_openssh(ssh_text).expect("openssh cert");
    let ssh_id = cl
        .srv
        .user_ca
        .verify_ssh_user_cert(&ssh, now)
        .expect("augmented ssh verifies");
    assert_eq!(ssh_id.device.as_ref(), Some(&want));
    assert_eq!(ssh_id.not_after, bob.identity.not_after, "same ssh expiry");
    let original =
        dt_ca::SshCertificate::from_openssh(bob.certs.ssh_authorized_key.as_deref().expect("ssh"))
            .expect("original ssh");
    assert_eq!(ssh.public_key(), original.public_key(), "same ssh key");
    let ext = ssh.extensions();
    assert_eq!(ext.get("devtrust-device-id"), Some(&dev.id));
    assert_eq!(ext.get("devtrust-device-asset-tag"), Some(&dev.tag));
    assert_eq!(
        ext.get("devtrust-device-credential-id"),
        Some(&dev.key.credential_id)
    );

    // Events.
    for ty in [EventType::DeviceAuthenticate, EventType::CertCreate] {
        let evs = cl.events(&bob.name, ty).await;
        let e = evs
            .last()
            .unwrap_or_else(|| panic!("no {} event", ty.as_str()));
        assert!(e.success, "{} succeeded", ty.as_str());
        let d = e.device.as_ref().expect("device in event");
        assert_eq!(d.device_id, dev.id);
        assert_eq!(d.asset_tag, dev.tag);
        assert_eq!(d.credential_id, dev.key.credential_id);
    }
    let (after, _) = cl.device(&dev.id).await.expect("device");
    assert_eq!(
        after.spec.collected_data.len(),
        2,
        "enrollment + 1 authentication"
    );
}

/// DER content octets of a dotted OID (arcs up to u128: our arc is a UUID, which
/// x509-parser only prints in hex).
fn oid_content(dotted: &str) -> Vec<u8> {
    let arcs: Vec<u128> = dotted
        .split('.')
        .map(|a| a.parse().expect("numeric arc"))
        .collect();
    let mut out = Vec::new();
    let mut push = |mut v: u128| {
        let mut septets = vec![(v & 0x7f) as u8];
        v >>= 7;
        while v > 0 {
            septets.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        out.extend(septets.iter().rev());
    };
    push(arcs[0] * 40 + arcs[1]);
    for a in &arcs[2..] {
        push(*a);
    }
    out
}

/// A valid response captured from ceremony A, replayed in ceremony B, is refused: B's
/// challenge is fresh.
pub async fn replayed_response(cl: &Cluster) {
    let carol = cl.user("replay-", &["access", "device-enroll"]).await;
    let dev = cl.enrolled_device(&carol).await;
    let mut captured = None;
    authenticate_raw(
        &carol.ch,
        authn_init(&carol.certs, &dev.key.credential_id, dev.data.clone()),
        |c| {
            let r = dev.key.authn_response(c);
            captured = Some(r.clone());
            r
        },
    )
    .await
    .expect("ceremony A succeeds");
    let captured: AuthenticateChallengeResponse = captured.expect("captured");
    let (_, rev) = cl.device(&dev.id).await.expect("device");

    let r = authenticate_raw(
        &carol.ch,
        authn_init(&carol.certs, &dev.key.credential_id, dev.data.clone()),
        |_| captured,
    )
    .await;
    assert_status(
        r,
        Code::PermissionDenied,
        "the device signature does not verify over this ceremony's challenge",
    );
    let ev = cl
        .assert_failure_event(
            &carol.name,
            EventType::DeviceAuthenticate,
            "the device signature does not verify",
        )
        .await;
    assert_eq!(ev.device.map(|d| d.device_id), Some(dev.id.clone()));
    let (after, rev_after) = cl.device(&dev.id).await.expect("device");
    assert_eq!(rev_after, rev, "no history written for the replay");
    assert_eq!(after.spec.collected_data.len(), 2);
}
