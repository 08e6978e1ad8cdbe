//! Issue 11, hole 9 at the SSH node: deleting a device revokes the certificates augmented
//! with it. The revocation reaches the node through its watch: the live session carrying
//! the device ends, new sessions are refused, the same user's plain certificate is not.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use std::time::Duration;

use dt_node_testkit::*;
use dt_types::audit::EventType;
use dt_types::device::{AttestationType, DeviceCredential, DeviceSpec, EnrollStatus, OsType};
use dt_types::resource::Resource;
use russh::ChannelMsg;

/// The inventory record of the test device (`device()`), enrolled with its credential.
async fn register_device(cluster: &Cluster) {
    let ext = device();
    let d: dt_types::Device = Resource::new(
        ext.device_id.clone(),
        DeviceSpec {
            os_type: OsType::Linux,
            asset_tag: ext.asset_tag.clone(),
            enroll_status: EnrollStatus::Enrolled,
            create_time: None,
            update_time: None,
            credential: Some(DeviceCredential {
                id: ext.credential_id.clone(),
                public_key_der: String::new(),
                attestation_type: AttestationType::Software,
                tpm_ekcert_serial: None,
                tpm_ak_public: None,
                tpm_ekcert_der: None,
            }),
            collected_data: vec![],
            source: None,
            profile: None,
            owner: Some("erin".into()),
        },
    );
    cluster
        .put_raw(
            &format!("/resources/device/{}", ext.device_id),
            &serde_json::to_string(&d).unwrap(),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_device_ends_its_sessions_and_refuses_new_ones() {
    let cluster = Cluster::start().await;
    let node = Node::start(&cluster, "node1", &[]).await;
    register_device(&cluster).await;
    let with_device = cluster.user(&TestUser::human("erin", &["access"]).with_device());
    let plain = cluster.user(&TestUser::human("erin", &["access"]));
    let conn = node.connect(&with_device, "root").await.unwrap();
    let mut ch = conn.open_session().await.unwrap();
    ch.exec(true, "sleep 30").await.unwrap();
    let start = cluster.wait_event(EventType::SessionStart, "exec").await;

    let dev = device();
    cluster.delete("device", dev.device_id.as_str()).await;
    let want = format!(
        "lock targeting Device:{:?}, DeviceCredential:{:?} is in force: device {:?} was deleted; log in again",
        dev.device_id, dev.credential_id, dev.asset_tag
    );

    let mut stderr = Vec::new();
    while let Some(msg) = tokio::time::timeout(Duration::from_secs(5), ch.wait())
        .await
        .expect("the session ended")
    {
        match msg {
            ChannelMsg::ExtendedData { data, .. } => stderr.extend_from_slice(&data),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    let text = String::from_utf8_lossy(&stderr);
    assert!(text.contains(&want), "{text:?}");
    let e = cluster
        .wait_event(EventType::SessionTerminate, "lock targeting Device")
        .await;
    assert_eq!(e.session_id, start.session_id);
    assert!(
        e.lock
            .as_deref()
            .is_some_and(|l| l.starts_with("device-revoked-")),
        "{e:?}"
    );

    // New sessions with the revoked device are refused, and audited.
    let r = rejection(node.run(&with_device, "root", "true").await);
    assert!(r.starts_with(&want), "{r}");
    cluster
        .wait_event(EventType::AccessDenied, "DeviceCredential:")
        .await;
    // The same user's plain certificate is not revoked.
    assert_eq!(
        node.run(&plain, "root", "true").await.unwrap().exit_status,
        Some(0)
    );
}
