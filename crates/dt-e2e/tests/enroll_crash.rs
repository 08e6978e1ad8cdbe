//! Crash during enrollment (issue 11, faults): 1,000 concurrent enrollments, each with its
//! own token, against a real `devtrust start` on SQLite and on PostgreSQL; the server is SIGKILLed midway and
//! restarted. Then: no device half-enrolled, every acknowledged enrollment durable, no token
//! spent twice (a token either still works once or never again), every device either
//! enrolled with its token spent or not enrolled, and the audit chain intact.
//!
//! The enrollments speak gRPC directly (dt-client's driver, software P-256 keys) as the
//! local admin identity, rather than 1,000 dtsh processes.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use dt_ceremony::messages::{EnrollPayload, P256KeyStorage};
use dt_ceremony::proof::{Proof, ProofRequest};
use dt_ceremony::token::EnrollToken;
use dt_client::{Identity, TrustPolicy};
use dt_proto::v1 as pb;
use dt_proto::v1::device_trust_service_client::DeviceTrustServiceClient;
use dt_store::Backend;
use serde_json::{Value, json};
use tonic::transport::Channel;

const N: usize = 1000;
const KILL_AFTER: usize = 300;

const CAP: &str = "kind: cluster_auth_preference
version: v2
metadata: {name: cluster-auth-preference}
spec:
  device_trust: {mode: optional, allow_software_credentials: true}
";

struct Dev {
    id: String,
    tag: String,
    token: String,
    key: dt_ca::ClientKey,
    credential_id: String,
}

fn admin_identity(data: &std::path::Path) -> Identity {
    let cert = std::fs::read_to_string(data.join("admin/cert.pem")).unwrap();
    let key = std::fs::read_to_string(data.join("admin/key.pem")).unwrap();
    let cert_der = dt_ca::pem::parse_cert_pem(&cert).unwrap();
    Identity::Cert {
        cert_der,
        key_pkcs8_der: dt_ca::ClientKey::from_pkcs8_pem(&key)
            .unwrap()
            .pkcs8_der()
            .to_vec(),
    }
}

async fn channels(srv_addr: &str, pin: &str, data: &std::path::Path, n: usize) -> Vec<Channel> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            dt_client::connect::channel(
                srv_addr,
                TrustPolicy::Pin(pin.to_string()),
                admin_identity(data),
            )
            .await
            .unwrap(),
        );
    }
    out
}

async fn enroll(ch: Channel, d: &Dev) -> Result<(), String> {
    let data = serde_json::from_value(json!({
        "collect_time": time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap(),
        "os_type": "linux",
        "serial_number": d.tag,
        "os_version": "6.1",
    }))
    .unwrap();
    let payload = EnrollPayload::P256 {
        public_key_der: d.key.spki_der(),
        storage: P256KeyStorage::Software,
    };
    dt_client::devices::enroll(
        ch,
        EnrollToken::new(d.token.clone()),
        d.credential_id.clone(),
        data,
        payload,
        |req| match req {
            ProofRequest::P256Challenge(c) => Ok(Proof::P256Signature(
                d.key.sign_asn1(c).map_err(|e| e.to_string())?,
            )),
            other => Err(format!("unsupported {}", other.kind()).into()),
        },
    )
    .await
    .map(|_| ())
    .map_err(|e| e.to_string())
}

fn sha256_hex(s: &str) -> String {
    dt_auth::tokens::sha256_hex(s)
}

#[test]
fn sigkill_during_1000_concurrent_enrollments_on_sqlite_leaves_every_device_whole() {
    crash_and_check(None);
}

#[test]
fn sigkill_during_1000_concurrent_enrollments_on_postgres_leaves_every_device_whole() {
    let db = PgDb::create("crash");
    crash_and_check(Some(db.conn()));
}

/// The whole scenario on SQLite (`pg: None`) or on the PostgreSQL database `pg`.
fn crash_and_check(pg: Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("d.yaml");
    let storage = match &pg {
        Some(conn) => format!("storage:\n  type: postgres\n  conn: \"{conn}\"\n"),
        None => String::new(),
    };
    std::fs::write(
        &cfg,
        format!("version: v1\n{storage}limits:\n  device_ceremonies_per_minute: 1000000\n"),
    )
    .unwrap();
    let srv = Server::opts().config(&cfg).data_dir(&data).start();
    let cap = srv.write_file("cap.yaml", CAP);
    srv.dtctl(&["create", "-f", &cap, "--force"]).ok();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // 1,000 devices, each with its own token.
    let devs: Vec<Arc<Dev>> = rt.block_on(async {
        let chans = channels(&srv.addr, &srv.pin, &data, 4).await;
        let mut set = tokio::task::JoinSet::new();
        let sem = Arc::new(tokio::sync::Semaphore::new(16));
        for i in 0..N {
            let ch = chans[i % chans.len()].clone();
            let sem = sem.clone();
            set.spawn(async move {
                let _permit = sem.acquire().await.unwrap();
                let id = uuid::Uuid::new_v4().to_string();
                let tag = format!("CRASH{i:04}");
                let device = pb::Device {
                    id: id.clone(),
                    os_type: pb::OsType::Linux.into(),
                    asset_tag: tag.clone(),
                    ..Default::default()
                };
                let r = DeviceTrustServiceClient::new(ch)
                    .create_device(pb::CreateDeviceRequest {
                        device: Some(device),
                        create_enroll_token: true,
                        enroll_token_ttl_seconds: 3600,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                Arc::new(Dev {
                    id,
                    tag,
                    token: r.enroll_token.unwrap().token,
                    key: dt_ca::ClientKey::generate().unwrap(),
                    credential_id: uuid::Uuid::new_v4().to_string(),
                })
            });
        }
        let mut out = Vec::new();
        while let Some(d) = set.join_next().await {
            out.push(d.unwrap());
        }
        out
    });

    // All enrollments at once; SIGKILL once KILL_AFTER have been acknowledged.
    let pid = srv.pid().unwrap();
    let acknowledged: HashMap<String, bool> = rt.block_on(async {
        let chans = channels(&srv.addr, &srv.pin, &data, 10).await;
        let done = Arc::new(AtomicUsize::new(0));
        let mut set = tokio::task::JoinSet::new();
        for (i, d) in devs.iter().enumerate() {
            let (ch, d, done) = (chans[i % chans.len()].clone(), d.clone(), done.clone());
            set.spawn(async move {
                let r = enroll(ch, &d).await;
                if r.is_ok() {
                    done.fetch_add(1, Ordering::SeqCst);
                }
                (d.id.clone(), r.is_ok())
            });
        }
        let killer = {
            let done = done.clone();
            tokio::spawn(async move {
                while done.load(Ordering::SeqCst) < KILL_AFTER {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            })
        };
        let mut out = HashMap::new();
        while let Some(r) = set.join_next().await {
            let (id, ok) = r.unwrap();
            out.insert(id, ok);
        }
        killer.abort();
        out
    });
    srv.kill();
    let acked = acknowledged.values().filter(|ok| **ok).count();
    eprintln!("{acked} of {N} enrollments acknowledged before the SIGKILL");
    assert!(
        (KILL_AFTER..N).contains(&acked),
        "the kill must land midway ({acked} acknowledged)"
    );

    // Restart on the same data.
    let srv = Server::opts().config(&cfg).data_dir(&data).start();
    let backend = rt.block_on(async {
        let b: Arc<dyn Backend> = match &pg {
            Some(conn) => {
                dt_store::postgres::PostgresBackend::connect(conn, dt_store::Tuning::default())
                    .await
                    .unwrap()
            }
            None => dt_store::sqlite::SqliteBackend::open(
                &data.join("devtrust.db"),
                dt_store::Tuning::default(),
            )
            .await
            .unwrap(),
        };
        b
    });
    let get = |key: String| rt.block_on(backend.get(&key)).unwrap();
    let token_spent = |d: &Dev| {
        get(dt_auth::keys::device_token(&sha256_hex(&d.token))).is_none_or(|item| {
            let rec: Value = serde_json::from_slice(&item.value).unwrap();
            !rec["spent_at"].is_null()
        })
    };

    let mut enrolled = Vec::new();
    let mut spent_not_enrolled = 0;
    for d in &devs {
        let item = get(dt_auth::keys::resource(dt_types::Kind::Device, &d.id))
            .unwrap_or_else(|| panic!("device {} vanished", d.id));
        let dev: Value = serde_json::from_slice(&item.value).unwrap();
        let status = dev["spec"]["enroll_status"].as_str().unwrap().to_string();
        let cred_index = get(dt_auth::keys::device_credential_index(&d.credential_id));
        let owner_index = get(dt_auth::keys::device_owner_index(
            dt_auth::server::LOCAL_ADMIN,
            &d.id,
        ));
        match status.as_str() {
            "enrolled" => {
                assert_eq!(dev["spec"]["credential"]["id"], d.credential_id, "{dev:#}");
                assert_eq!(cred_index.unwrap().value, d.id.as_bytes(), "{dev:#}");
                assert!(
                    owner_index.is_some(),
                    "enrolled without owner index: {dev:#}"
                );
                assert!(token_spent(d), "enrolled but token unspent: {dev:#}");
                enrolled.push(d.clone());
            }
            "not_enrolled" => {
                assert!(
                    dev["spec"]["credential"].is_null(),
                    "half-enrolled: {dev:#}"
                );
                assert!(
                    cred_index.is_none(),
                    "credential index without device: {dev:#}"
                );
                assert!(
                    owner_index.is_none(),
                    "owner index without enrollment: {dev:#}"
                );
                assert!(
                    !acknowledged[&d.id],
                    "an acknowledged enrollment was lost: {dev:#}"
                );
                if token_spent(d) {
                    spent_not_enrolled += 1;
                }
            }
            other => panic!("unexpected enroll_status {other}: {dev:#}"),
        }
    }
    eprintln!(
        "after restart: {} enrolled, {} not enrolled ({spent_not_enrolled} of them with a spent token)",
        enrolled.len(),
        N - enrolled.len()
    );

    // No token works twice: every token of an enrolled device (and every spent one) is
    // refused; every unspent token still enrolls its device, once.
    let spent: Vec<bool> = devs.iter().map(|d| token_spent(d)).collect();
    rt.block_on(async {
        let chans = channels(&srv.addr, &srv.pin, &data, 4).await;
        let mut set = tokio::task::JoinSet::new();
        let sem = Arc::new(tokio::sync::Semaphore::new(32));
        for (i, d) in devs.iter().enumerate() {
            let spent = spent[i];
            let (ch, d, sem) = (chans[i % chans.len()].clone(), d.clone(), sem.clone());
            set.spawn(async move {
                let _p = sem.acquire().await.unwrap();
                let r = enroll(ch, &d).await;
                assert_eq!(
                    r.is_ok(),
                    !spent,
                    "device {}: token spent={spent}, re-enrollment {r:?}",
                    d.id
                );
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
    });

    // One successful enrollment event per enrolled device, and the chain holds.
    let audit = dt_auth::audit::AuditSink::new(backend.clone());
    let (events, _) = rt
        .block_on(audit.search(
            &dt_auth::audit::EventFilter {
                event: Some(dt_types::audit::EventType::DeviceEnroll),
                ..Default::default()
            },
            None,
            100_000,
        ))
        .unwrap();
    let mut per_device: HashMap<String, usize> = HashMap::new();
    for e in events.iter().filter(|e| e.success) {
        let id = e.device.as_ref().map(|d| d.device_id.clone()).unwrap();
        *per_device.entry(id).or_default() += 1;
    }
    for d in &devs {
        let n = per_device.get(&d.id).copied().unwrap_or(0);
        let spent_first = enrolled.iter().any(|e| e.id == d.id);
        let want = if spent_first { n == 1 } else { n <= 1 };
        assert!(
            want,
            "device {}: {n} enrollment events (enrolled in the first round: {spent_first})",
            d.id
        );
    }
    let chain = rt.block_on(audit.verify_chain()).unwrap();
    let n = chain.unwrap_or_else(|id| panic!("audit chain broken at event {id}"));
    eprintln!("audit chain intact: {n} events");
    rt.block_on(backend.close());
    srv.stop();
}
