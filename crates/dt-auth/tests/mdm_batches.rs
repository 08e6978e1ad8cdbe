//! Issue 18, the auth side: what the MDM sync service may write, checked by the auth service
//! on the stored devices whatever the service sends. Real auth service over loopback mTLS
//! with SQLite; each check is tried allowed and refused.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

mod support;

use dt_ca::ClientKey;
use dt_proto::v1 as pb;
use dt_proto::v1::device_trust_service_client::DeviceTrustServiceClient;
use dt_proto::v1::mdm_service_client::MdmServiceClient;
use dt_types::audit::EventType;
use dt_types::device::OsType;
use support::services::*;
use support::*;
use tonic::Code;
use tonic::transport::Channel;

async fn mdm_channel(cl: &Cluster, kind: &str, name: &str) -> Channel {
    let key = ClientKey::generate().unwrap();
    let tok = token(cl, kind).await;
    let joined = try_join(cl, &tok, kind, name, &key).await.unwrap();
    cl.channel_with(&joined.tls_cert_der, &key).await.unwrap()
}

fn profile(user: &str) -> Option<pb::MdmProfile> {
    Some(pb::MdmProfile {
        assigned_user: user.into(),
        model_identifier: "MacBookPro18,1".into(),
        ..Default::default()
    })
}

fn batch(source: &str) -> pb::ApplyMdmBatchRequest {
    pb::ApplyMdmBatchRequest {
        source: source.into(),
        origin: "jamf".into(),
        ..Default::default()
    }
}

async fn device(cl: &Cluster, id: &str) -> Option<pb::Device> {
    DeviceTrustServiceClient::new(cl.admin.clone())
        .get_device(pb::DeviceRef {
            device_id: id.into(),
            ..Default::default()
        })
        .await
        .ok()
        .map(|r| r.into_inner())
}

#[test]
fn the_sync_writes_only_its_own_source_and_only_as_the_mdm_service() {
    block_on(body())
}

async fn body() {
    let cl = shared().await;
    let source = unique("jamf");
    let mut a = MdmServiceClient::new(mdm_channel(cl, "mdm", &unique("mdm-a")).await);

    // A device added by hand.
    let manual_tag = unique("MANUAL");
    let (manual_id, _) = cl.add_device(OsType::Macos, &manual_tag, None, false).await;
    let manual = a
        .list_source_devices(pb::ListSourceDevicesRequest {
            source: source.clone(),
            keys: vec![pb::MdmKey {
                os_type: "macos".into(),
                serial: manual_tag.clone(),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .devices;
    assert_eq!(manual.len(), 1);
    assert_eq!(manual[0].source_origin, "api");
    let manual_rev = manual[0].revision;

    // Allowed: a create of this source, with its audit event naming the source.
    let tag = unique("C02");
    let mut req = batch(&source);
    req.creates.push(pb::MdmCreate {
        os_type: "macos".into(),
        serial: tag.clone(),
        profile: profile("alice"),
    });
    // Refused: a create over the manual device's (OS, serial) ...
    req.creates.push(pb::MdmCreate {
        os_type: "macos".into(),
        serial: manual_tag.clone(),
        profile: profile("mallory"),
    });
    // ... an update and a removal of the manual device, even at its current revision.
    req.updates.push(pb::MdmUpdate {
        device_id: manual_id.clone(),
        revision: manual_rev,
        profile: profile("mallory"),
    });
    req.removes.push(pb::MdmRemove {
        device_id: manual_id.clone(),
        revision: manual_rev,
    });
    let r = a.apply_mdm_batch(req).await.unwrap().into_inner();
    assert!(r.creates[0].ok, "{r:?}");
    for refused in [&r.creates[1], &r.updates[0], &r.removes[0]] {
        assert!(!refused.ok, "{r:?}");
        assert_eq!(refused.skip_reason, "other_source", "{r:?}");
    }
    let m = device(cl, &manual_id)
        .await
        .expect("the manual device stays");
    let m: dt_types::Device = m.try_into().unwrap();
    assert!(m.spec.profile.is_none(), "the manual device was changed");
    let created_id = r.creates[0].device_id.clone();
    let d: dt_types::Device = device(cl, &created_id).await.unwrap().try_into().unwrap();
    assert_eq!(d.spec.source.as_ref().unwrap().name, source);
    assert_eq!(d.spec.profile.as_ref().unwrap().assigned_user, "alice");

    // An update at a stale revision is a conflict; at the current one it applies.
    let listed = a
        .list_source_devices(pb::ListSourceDevicesRequest {
            source: source.clone(),
            keys: vec![pb::MdmKey {
                os_type: "macos".into(),
                serial: tag.clone(),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .devices;
    let rev = listed[0].revision;
    let mut req = batch(&source);
    req.updates.push(pb::MdmUpdate {
        device_id: created_id.clone(),
        revision: rev - 1,
        profile: profile("bob"),
    });
    let r = a.apply_mdm_batch(req.clone()).await.unwrap().into_inner();
    assert_eq!(r.updates[0].skip_reason, "conflict", "{r:?}");
    req.updates[0].revision = rev;
    req.dry_run = true;
    let r = a.apply_mdm_batch(req.clone()).await.unwrap().into_inner();
    assert!(r.updates[0].ok);
    let d: dt_types::Device = device(cl, &created_id).await.unwrap().try_into().unwrap();
    assert_eq!(
        d.spec.profile.unwrap().assigned_user,
        "alice",
        "a dry run wrote"
    );
    req.dry_run = false;
    let r = a.apply_mdm_batch(req).await.unwrap().into_inner();
    assert!(r.updates[0].ok, "{r:?}");

    // Another MDM service may not write (nor read) a source the first one claimed.
    let mut b = MdmServiceClient::new(mdm_channel(cl, "mdm", &unique("mdm-b")).await);
    let mut req = batch(&source);
    req.removes.push(pb::MdmRemove {
        device_id: created_id.clone(),
        revision: 0,
    });
    assert_status(
        b.apply_mdm_batch(req.clone()).await,
        Code::PermissionDenied,
        "is synced by the MDM service",
    );
    assert_status(
        b.list_source_devices(pb::ListSourceDevicesRequest {
            source: source.clone(),
            ..Default::default()
        })
        .await,
        Code::PermissionDenied,
        "is synced by the MDM service",
    );
    // The owner may not turn its jamf source into an intune one.
    let mut wrong = batch(&source);
    wrong.origin = "intune".into();
    assert_status(
        a.apply_mdm_batch(wrong).await,
        Code::InvalidArgument,
        "is a jamf source",
    );
    // Nor name a manual origin.
    let mut manual_origin = batch(&unique("x"));
    manual_origin.origin = "api".into();
    assert_status(
        a.apply_mdm_batch(manual_origin).await,
        Code::InvalidArgument,
        "jamf or intune",
    );

    // Other kinds of services and users are not the MDM service.
    let mut db = MdmServiceClient::new(mdm_channel(cl, "db", &unique("db")).await);
    assert_status(
        db.apply_mdm_batch(req.clone()).await,
        Code::PermissionDenied,
        "for the MDM service",
    );
    let mut admin = MdmServiceClient::new(cl.admin.clone());
    assert_status(
        admin.apply_mdm_batch(req).await,
        Code::Unauthenticated,
        "joined",
    );
    assert!(device(cl, &created_id).await.is_some());

    // Its own device it may remove, with the audit event.
    let mut req = batch(&source);
    // The source's devices, a page at a time (the shared cluster holds others too).
    let mut listed = Vec::new();
    let mut page_token = String::new();
    loop {
        let r = a
            .list_source_devices(pb::ListSourceDevicesRequest {
                source: source.clone(),
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        listed.extend(r.devices);
        if r.next_page_token.is_empty() {
            break;
        }
        page_token = r.next_page_token;
    }
    assert!(listed.iter().all(|d| d.source_name == source), "{listed:?}");
    let mine = listed.iter().find(|d| d.device_id == created_id).unwrap();
    req.removes.push(pb::MdmRemove {
        device_id: created_id.clone(),
        revision: mine.revision,
    });
    let r = a.apply_mdm_batch(req).await.unwrap().into_inner();
    assert!(r.removes[0].ok, "{r:?}");
    assert!(device(cl, &created_id).await.is_none());
}

/// The MDM service acts as itself (`mdm/NAME`), not as a user: removing a device someone
/// enrolled writes the revocation lock in the service's name, and the audit says so.
#[test]
fn removing_an_enrolled_device_revokes_it_in_the_services_name() {
    block_on(async {
        let cl = shared().await;
        let source = unique("jamf");
        let service = unique("mdm-r");
        let mut a = MdmServiceClient::new(mdm_channel(cl, "mdm", &service).await);
        let user = cl.user("mdm-owner-", &["device-enroll"]).await;

        // A device of this source, enrolled by the user its profile names.
        let tag = unique("C02");
        let mut req = batch(&source);
        req.creates.push(pb::MdmCreate {
            os_type: "macos".into(),
            serial: tag.clone(),
            profile: profile(&user.name),
        });
        let r = a.apply_mdm_batch(req).await.unwrap().into_inner();
        assert!(r.creates[0].ok, "{r:?}");
        let id = r.creates[0].device_id.clone();
        let token = cl.new_token(&id).await.expect("token");
        let key = DeviceKey::new();
        dt_client::devices::enroll(
            user.ch.clone(),
            dt_ceremony::token::EnrollToken::new(token),
            key.credential_id.clone(),
            data(OsType::Macos, &tag),
            key.payload(),
            |req| key.prove(req),
        )
        .await
        .expect("enrollment");

        // The MDM no longer lists it.
        let (_, rev) = cl.device(&id).await.expect("device");
        let mut req = batch(&source);
        req.removes.push(pb::MdmRemove {
            device_id: id.clone(),
            revision: rev,
        });
        let r = a.apply_mdm_batch(req).await.unwrap().into_inner();
        assert!(r.removes[0].ok, "{r:?}");
        assert!(device(cl, &id).await.is_none());

        let actor = format!("mdm/{service}");
        let events = cl.events(&actor, EventType::LockCreate).await;
        let ev = events
            .iter()
            .find(|e| e.device.as_ref().is_some_and(|d| d.device_id == id))
            .expect("lock.create by the MDM service");
        let lock_name = ev.lock.clone().expect("the lock's name");
        let (lock, _) = cl
            .srv
            .get_resource::<dt_types::resource::LockSpec>(&lock_name)
            .await
            .unwrap()
            .expect("the revocation lock");
        assert_eq!(lock.spec.created_by.as_deref(), Some(actor.as_str()));
        assert_eq!(lock.spec.target.device.as_deref(), Some(id.as_str()));
        assert_eq!(
            lock.spec.target.device_credential.as_deref(),
            Some(key.credential_id.as_str())
        );
    })
}
