//! Bulk import (`BulkCreateDevices`) under concurrency, against a real auth service over
//! loopback mTLS, on SQLite and on PostgreSQL: requests racing for the same asset tags
//! create each device once, refuse it once per other request with the usual message, and
//! every device created has its `DeviceCreate` event.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

mod support;

use dt_auth::audit::EventFilter;
use dt_proto::v1 as pb;
use dt_proto::v1::device_trust_service_client::DeviceTrustServiceClient;
use dt_types::audit::EventType;
use dt_types::device::OsType;
use support::{Cluster, Options, block_on, unique};

fn doc(tag: &str) -> pb::Device {
    pb::Device::try_from(&dt_auth::devices::new_device_resource(OsType::Linux, tag))
        .expect("device")
}

async fn racing_requests_create_each_tag_once(cl: &Cluster) {
    const REQUESTS: usize = 4;
    let run = unique("RACE");
    // Every request lists the same shared tags (in a different order) and tags of its own.
    let shared: Vec<String> = (0..300).map(|i| format!("{run}-S{i:04}")).collect();
    let mut tasks = Vec::new();
    for r in 0..REQUESTS {
        let mut tags: Vec<String> = (0..200).map(|i| format!("{run}-R{r}-{i:04}")).collect();
        let mut mine = shared.clone();
        mine.rotate_left(r * 75);
        tags.extend(mine);
        let mut c = DeviceTrustServiceClient::new(cl.admin.clone());
        tasks.push(tokio::spawn(async move {
            let devices = tags.iter().map(|t| doc(t)).collect();
            let r = c
                .bulk_create_devices(pb::BulkCreateDevicesRequest { devices })
                .await
                .expect("bulk create")
                .into_inner();
            (tags, r.statuses)
        }));
    }
    let mut created = std::collections::HashMap::<String, usize>::new();
    let mut refused = std::collections::HashMap::<String, usize>::new();
    for t in tasks {
        let (tags, statuses) = t.await.expect("task");
        assert_eq!(tags.len(), statuses.len());
        for (tag, st) in tags.iter().zip(&statuses) {
            assert_eq!(&st.asset_tag, tag, "statuses in request order");
            if st.ok {
                assert!(!st.device_id.is_empty());
                *created.entry(tag.clone()).or_default() += 1;
            } else {
                assert_eq!(
                    st.error,
                    format!("device {tag:?}/Linux is already in the inventory"),
                    "{st:?}"
                );
                *refused.entry(tag.clone()).or_default() += 1;
            }
        }
    }
    for tag in &shared {
        assert_eq!(created.get(tag), Some(&1), "{tag} created once");
        assert_eq!(refused.get(tag), Some(&(REQUESTS - 1)), "{tag} refused");
    }
    assert_eq!(created.len(), shared.len() + REQUESTS * 200);
    // Stored once each, with its event.
    for tag in shared.iter().step_by(37).chain([&format!("{run}-R3-0199")]) {
        let found = cl.srv.find_devices(tag).await.expect("find");
        assert_eq!(found.len(), 1, "{tag} stored once");
        let id = found[0].0.metadata.name.clone();
        let (events, _) = cl
            .srv
            .audit
            .search(
                &EventFilter {
                    device: Some(id.clone()),
                    event: Some(EventType::DeviceCreate),
                    ..Default::default()
                },
                None,
                10,
            )
            .await
            .expect("search");
        let ok: Vec<_> = events.iter().filter(|e| e.success).collect();
        assert_eq!(
            ok.len(),
            1,
            "one DeviceCreate event for {tag} ({id}): {events:?}"
        );
    }
    assert_eq!(
        cl.srv
            .audit
            .verify_chain()
            .await
            .expect("verify")
            .map(|_| ()),
        Ok(())
    );
}

#[test]
fn racing_bulk_requests_sqlite() {
    block_on(async {
        let cl = Cluster::start(Options::default()).await;
        racing_requests_create_each_tag_once(&cl).await;
    })
}

#[test]
fn racing_bulk_requests_postgres() {
    block_on(async {
        let cl = Cluster::start(Options {
            postgres: true,
            ..Default::default()
        })
        .await;
        racing_requests_create_each_tag_once(&cl).await;
    })
}

/// A client may choose a new device's id; one that is another device's is refused with
/// what is taken (the id, not the asset tag), in bulk and alone, and audited.
#[test]
fn a_taken_client_chosen_id_is_named() {
    block_on(async {
        let cl = Cluster::start(Options::default()).await;
        let run = unique("ID");
        let mut c = DeviceTrustServiceClient::new(cl.admin.clone());
        let first = c
            .bulk_create_devices(pb::BulkCreateDevicesRequest {
                devices: vec![doc(&format!("{run}-A"))],
            })
            .await
            .expect("bulk create")
            .into_inner();
        assert!(first.statuses[0].ok, "{:?}", first.statuses);
        let taken = first.statuses[0].device_id.clone();
        let want = format!(
            "device id {taken} is already another device's: leave the id out and the inventory picks a fresh one"
        );
        // Another tag, the same id: in bulk, next to a device that is fine.
        let mut same_id = doc(&format!("{run}-B"));
        same_id.id = taken.clone();
        let second = c
            .bulk_create_devices(pb::BulkCreateDevicesRequest {
                devices: vec![same_id.clone(), doc(&format!("{run}-C"))],
            })
            .await
            .expect("bulk create")
            .into_inner();
        assert!(!second.statuses[0].ok);
        assert_eq!(second.statuses[0].error, want);
        assert!(second.statuses[1].ok, "{:?}", second.statuses);
        // Alone: refused as already existing, with the same words.
        let err = c
            .create_device(pb::CreateDeviceRequest {
                device: Some(same_id),
                ..Default::default()
            })
            .await
            .expect_err("the id is taken");
        assert_eq!(err.code(), tonic::Code::AlreadyExists);
        assert_eq!(err.message(), want);
        // Both refusals are audited.
        let (events, _) = cl
            .srv
            .audit
            .search(
                &EventFilter {
                    event: Some(EventType::DeviceCreate),
                    ..Default::default()
                },
                None,
                1000,
            )
            .await
            .expect("search");
        let refusals = events
            .iter()
            .filter(|e| !e.success && e.message.as_deref() == Some(want.as_str()))
            .count();
        assert_eq!(refusals, 2, "{events:?}");
        // Nothing was stored under the second tag.
        assert!(
            cl.srv
                .find_devices(&format!("{run}-B"))
                .await
                .expect("find")
                .is_empty()
        );
    })
}
