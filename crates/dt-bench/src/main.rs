//! `devtrust-bench`: figures for the closing notes of the device issues, printed as tables.
//! Everything runs for real: the auth service in this process, clients over loopback TLS
//! with mTLS, SQLite in a temp dir or a fresh PostgreSQL database.
//!
//! ```text
//! cargo run --release -p dt-bench -- devices [--devices 100000] [--lookup-devices 1000000]
//! cargo run --release -p dt-bench -- authn [--seconds 5] [--clients 1,16,64,256] [--postgres]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use dt_auth::AuthServer;
use dt_auth::config::{Config, StorageConfig};
use dt_ceremony::messages::{EnrollPayload, P256KeyStorage, UserCertificates};
use dt_ceremony::proof::{Proof, ProofRequest};
use dt_ceremony::token::EnrollToken;
use dt_client::{Identity, TrustPolicy};
use dt_proto::v1 as pb;
use dt_proto::v1::auth_service_client::AuthServiceClient;
use dt_proto::v1::device_trust_service_client::DeviceTrustServiceClient;
use dt_store::{Backend, Op};
use dt_types::device::{AttestationType, DeviceCollectedData, OsType};
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use tonic::transport::Channel;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Use a fresh PostgreSQL database (base conn from DEVTRUST_TEST_PG) instead of SQLite.
    #[arg(long, global = true)]
    postgres: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Inventory: bulk import, asset-tag lookups, first page of `devices ls`, enrollments/s.
    Devices {
        #[arg(long, default_value_t = 100_000)]
        devices: usize,
        /// Size of the second lookup run (devices written straight to storage).
        #[arg(long, default_value_t = 1_000_000)]
        lookup_devices: usize,
        #[arg(long, default_value_t = 64)]
        enroll_clients: usize,
        #[arg(long, default_value_t = 1024)]
        enrollments: usize,
    },
    /// Device authentication end to end, and the crypto-only bound.
    ///
    /// By default the auth service runs in this process. With `--target`, the bench drives
    /// auth servers running elsewhere (e.g. `devtrust start` pinned with `taskset -c 0`
    /// while the bench runs under `taskset -c 1`): it reads the local admin identity from
    /// `--data-dir` (the first server's data dir), creates one user per client (signup
    /// token + login), registers and enrolls one software device per user, then measures.
    /// The servers must allow software credentials and enough device ceremonies a minute
    /// (`limits.device_ceremonies_per_minute`); see docs/operations.md "Benchmarks".
    Authn {
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
        clients: Vec<usize>,
        /// Auth servers to drive (HOST:PORT, comma-separated: one cluster; clients are spread
        /// over them round robin).
        #[arg(long, value_delimiter = ',')]
        target: Vec<String>,
        /// The data dir of the first `--target` (its `admin/` identity is used for setup).
        #[arg(long, requires = "target")]
        data_dir: Option<std::path::PathBuf>,
        /// Cores the auth server(s) may use, for the "of bound" column (default: this
        /// machine's cores; 1 when pinned with taskset).
        #[arg(long)]
        server_cores: Option<usize>,
        /// Process ids of the auth server(s) (Linux): print their CPU time per
        /// authentication over each measured window, a steadier figure than the rate on a
        /// shared machine.
        #[arg(long, value_delimiter = ',', requires = "target")]
        server_pid: Vec<u32>,
    },
}

const SPKI_P256_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// A software P-256 device credential.
struct DeviceKey {
    pair: EcdsaKeyPair,
    credential_id: String,
}

impl DeviceKey {
    fn new() -> anyhow::Result<Self> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("keygen"))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| anyhow::anyhow!("key"))?;
        Ok(DeviceKey {
            pair,
            credential_id: uuid::Uuid::new_v4().to_string(),
        })
    }
    fn spki(&self) -> Vec<u8> {
        let mut v = SPKI_P256_PREFIX.to_vec();
        v.extend_from_slice(self.pair.public_key().as_ref());
        v
    }
    fn prove(&self, req: ProofRequest<'_>) -> Result<Proof, dt_ceremony::proof::ProverError> {
        match req {
            ProofRequest::P256Challenge(c) => {
                let sig = self
                    .pair
                    .sign(&ring::rand::SystemRandom::new(), c)
                    .map_err(|_| "signing failed".to_string())?;
                Ok(Proof::P256Signature(sig.as_ref().to_vec()))
            }
            other => Err(format!("unsupported {}", other.kind()).into()),
        }
    }
}

fn device_data(serial: &str) -> DeviceCollectedData {
    DeviceCollectedData {
        collect_time: time::OffsetDateTime::now_utc(),
        record_time: None,
        os_type: Some(OsType::Linux),
        serial_number: serial.into(),
        model_identifier: "bench".into(),
        os_version: "12".into(),
        os_build: "1".into(),
        os_username: "bench".into(),
        hostname: "bench".into(),
        system_serial_number: String::new(),
        base_board_serial_number: String::new(),
        reported_asset_tag: String::new(),
        serial_source: "bench".into(),
    }
}

struct Cluster {
    srv: Arc<AuthServer>,
    addr: String,
    pin: String,
    _dir: tempfile::TempDir,
    pg_db: Option<String>,
}

fn pg_base() -> String {
    std::env::var("DEVTRUST_TEST_PG")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres".into())
}

async fn pg_admin(sql: &str) -> anyhow::Result<()> {
    let (client, conn) = tokio_postgres::connect(
        &format!("{} dbname=postgres", pg_base()),
        tokio_postgres::NoTls,
    )
    .await
    .context("PostgreSQL at DEVTRUST_TEST_PG")?;
    tokio::spawn(conn);
    client.batch_execute(sql).await?;
    Ok(())
}

async fn start(postgres: bool) -> anyhow::Result<Cluster> {
    let dir = tempfile::tempdir()?;
    let mut config = Config {
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    config.listen = "127.0.0.1:0".parse()?;
    config.device_ceremonies_per_minute = 100_000_000;
    let mut pg_db = None;
    if postgres {
        let db = format!("dt_bench_{}", uuid::Uuid::new_v4().simple());
        pg_admin(&format!("CREATE DATABASE {db}")).await?;
        config.storage = StorageConfig::Postgres {
            conn: format!("{} dbname={db}", pg_base()),
        };
        pg_db = Some(db);
    }
    let srv = AuthServer::bootstrap(config.clone()).await?;
    let files = srv.write_data_dir(&[])?;
    let tls = dt_auth::listener::tls_config(&srv, &files)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(dt_auth::listener::serve(
        srv.clone(),
        listener,
        tls,
        std::future::pending(),
    ));
    let pin = srv.host_ca.pin();
    Ok(Cluster {
        srv,
        addr,
        pin,
        _dir: dir,
        pg_db,
    })
}

impl Cluster {
    /// A channel with a certificate for `user` (issued in-process by the user CA).
    async fn channel_for(
        &self,
        user: &str,
        roles: &[&str],
    ) -> anyhow::Result<(Channel, UserCertificates)> {
        if user != dt_auth::server::LOCAL_ADMIN {
            let u: dt_types::User = dt_types::resource::Resource::new(
                user,
                dt_types::resource::UserSpec {
                    roles: roles.iter().map(|r| r.to_string()).collect(),
                    ..Default::default()
                },
            );
            self.srv
                .backend
                .put(
                    &format!("/resources/user/{user}"),
                    serde_json::to_vec(&u)?,
                    None,
                )
                .await?;
        }
        let key = dt_ca::ClientKey::generate()?;
        let now = time::OffsetDateTime::now_utc().replace_nanosecond(0)?;
        let id = dt_ca::Identity {
            username: user.parse()?,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            logins: vec![],
            bot: false,
            trait_logins: vec![],
            device: None,
            not_before: now - time::Duration::minutes(1),
            not_after: now + time::Duration::hours(1),
        };
        let x509 = self
            .srv
            .user_ca
            .issue_x509_client_cert(&key.spki_der(), &id)?;
        let ssh = self
            .srv
            .user_ca
            .issue_ssh_user_cert(&key.ssh_public_key()?, &id)?
            .to_openssh()?;
        let ch = dt_client::connect::channel(
            &self.addr,
            TrustPolicy::Pin(self.pin.clone()),
            Identity::Cert {
                cert_der: x509.clone(),
                key_pkcs8_der: key.pkcs8_der().to_vec(),
            },
        )
        .await?;
        Ok((
            ch,
            UserCertificates {
                x509_der: x509,
                ssh_authorized_key: Some(ssh),
            },
        ))
    }

    async fn allow_software_credentials(&self, admin: Channel) -> anyhow::Result<()> {
        let mut cap = self.srv.cap().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        cap.spec.device_trust.allow_software_credentials = true;
        AuthServiceClient::new(admin)
            .upsert_resource(pb::UpsertResourceRequest {
                canonical_json: serde_json::to_vec(&cap)?,
                force: true,
                expected_revision: 0,
            })
            .await?;
        Ok(())
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.srv.backend.close().await;
        if let Some(db) = self.pg_db {
            pg_admin(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await?;
        }
        Ok(())
    }
}

/// This process's resident set size in KiB (Linux).
fn rss() -> Option<u64> {
    status_kib("VmRSS:")
}

/// A KiB figure of /proc/self/status (`VmRSS:`, `VmHWM:` for the peak).
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "unknown".into(),
        |kib| format!("{:.0} MiB", kib as f64 / 1024.0),
    )
}

/// CPU time (user + system, all threads) this process has used so far (Linux; clock ticks
/// of 1/100 s).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn new_device_json(os: OsType, tag: &str) -> anyhow::Result<String> {
    Ok(serde_json::to_string(&dt_types::device::new_device(
        os, tag,
    ))?)
}

fn new_device_wire(os: OsType, tag: &str) -> anyhow::Result<pb::Device> {
    Ok(pb::Device::try_from(&dt_types::device::new_device(
        os, tag,
    ))?)
}

/// Register `n` devices through BulkCreateDevices (1000 a request, 4 in flight).
async fn bulk_import(admin: &Channel, prefix: &str, n: usize) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let mut tasks = Vec::new();
    let per = n.div_ceil(4);
    for w in 0..4 {
        let mut c = DeviceTrustServiceClient::new(admin.clone());
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let (lo, hi) = (w * per, ((w + 1) * per).min(n));
            let mut i = lo;
            while i < hi {
                let end = (i + 1000).min(hi);
                let batch = (i..end)
                    .map(|k| new_device_wire(OsType::Linux, &format!("{prefix}{k:08}")))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let r = c
                    .bulk_create_devices(pb::BulkCreateDevicesRequest { devices: batch })
                    .await?;
                if let Some(bad) = r.get_ref().statuses.iter().find(|s| !s.ok) {
                    anyhow::bail!("bulk create failed: {}", bad.error);
                }
                i = end;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(t.elapsed())
}

async fn lookups(
    admin: &Channel,
    prefix: &str,
    n: usize,
    samples: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut c = DeviceTrustServiceClient::new(admin.clone());
    let mut lat = Vec::with_capacity(samples);
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for _ in 0..samples {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let tag = format!("{prefix}{:08}", (x as usize) % n);
        let t = Instant::now();
        let r = c
            .find_devices(pb::FindDevicesRequest {
                id_or_tag: tag.clone(),
            })
            .await?;
        lat.push(t.elapsed());
        anyhow::ensure!(r.get_ref().devices.len() == 1, "{tag} not found");
    }
    lat.sort();
    Ok(lat)
}

/// Write `n` devices straight into storage (records + tag index), 1000 a transaction.
async fn fill_storage(b: &Arc<dyn Backend>, prefix: &str, n: usize) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let mut i = 0;
    while i < n {
        let end = (i + 1000).min(n);
        let mut ops = Vec::with_capacity(2000);
        for k in i..end {
            let json = new_device_json(OsType::Linux, &format!("{prefix}{k:08}"))?;
            let id = serde_json::from_str::<serde_json::Value>(&json)?["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            ops.push(Op::Put {
                key: format!("/resources/device/{id}"),
                value: json.into_bytes(),
                expires: None,
            });
            ops.push(Op::Put {
                key: format!("/index/device_tag/linux/{prefix}{k:08}"),
                value: id.into_bytes(),
                expires: None,
            });
        }
        b.atomic_write(vec![], ops).await?;
        i = end;
    }
    Ok(t.elapsed())
}

async fn devices_bench(
    postgres: bool,
    n: usize,
    big: usize,
    clients: usize,
    enrollments: usize,
) -> anyhow::Result<()> {
    let cl = start(postgres).await?;
    let storage = if postgres { "PostgreSQL" } else { "SQLite" };
    let (admin, _) = cl
        .channel_for(dt_auth::server::LOCAL_ADMIN, &["editor"])
        .await?;
    println!("devices benchmark on {storage}, 2-core machine, loopback TLS\n");

    let cpu_before = cpu_time();
    let took = bulk_import(&admin, "BULK", n).await?;
    println!(
        "bulk import (BulkCreateDevices, 1000/request, 4 in flight): {n} devices in {:.1} s = {:.0} devices/s",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    if let (Some(a), Some(b)) = (cpu_before, cpu_time()) {
        let cpu = b.saturating_sub(a);
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        println!(
            "  CPU for it (this process: auth service and clients): {:.1} s = {:.0} µs per device, {:.0}% of {cores} cores",
            cpu.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / n.max(1) as f64,
            100.0 * cpu.as_secs_f64() / (took.as_secs_f64() * cores as f64)
        );
    }
    println!(
        "  RSS of the auth service after importing {n} devices: {} (peak {}; the service runs in this process, beside the bench's 4 clients); of it, anonymous memory {} and file pages {} (SQLite maps the database file: those are the kernel's page cache, dropped under memory pressure)",
        mib(rss()),
        mib(status_kib("VmHWM:")),
        mib(status_kib("RssAnon:")),
        mib(status_kib("RssFile:"))
    );

    let lat = lookups(&admin, "BULK", n, 2000).await?;
    println!(
        "asset-tag lookup at {n} devices (FindDevices over TLS, 2000 samples): p50 {} p99 {}",
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99))
    );

    let mut c = DeviceTrustServiceClient::new(admin.clone());
    let mut first = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let r = c
            .list_devices(pb::ListDevicesRequest {
                page_size: 200,
                page_token: String::new(),
            })
            .await?;
        first.push(t.elapsed());
        anyhow::ensure!(r.get_ref().devices.len() == 200);
    }
    first.sort();
    println!(
        "first page of `devices ls` (200 devices) at {n} devices: p50 {} p99 {}",
        ms(pct(&first, 0.5)),
        ms(pct(&first, 0.99))
    );

    if big > n {
        let extra = big - n;
        let took = fill_storage(&cl.srv.backend, "BIG", extra).await?;
        println!(
            "(filled storage to {big} devices directly: {extra} in {:.1} s)",
            took.as_secs_f64()
        );
        let lat = lookups(&admin, "BIG", extra, 2000).await?;
        println!(
            "asset-tag lookup at {big} devices (FindDevices over TLS, 2000 samples): p50 {} p99 {}",
            ms(pct(&lat, 0.5)),
            ms(pct(&lat, 0.99))
        );
    }
    println!(
        "RSS of this process (the auth service and the bench's clients) at {} devices: {}",
        big.max(n),
        mib(rss())
    );

    // Enrollments/s: `clients` users, each enrolling its share of fresh devices.
    cl.allow_software_credentials(admin.clone()).await?;
    let per = enrollments.div_ceil(clients);
    let mut prepared = Vec::new();
    for c_i in 0..clients {
        let (ch, _) = cl
            .channel_for(&format!("enroller{c_i}"), &["device-admin"])
            .await?;
        let mut dc = DeviceTrustServiceClient::new(admin.clone());
        let mut jobs = Vec::new();
        for k in 0..per {
            let tag = format!("ENR{c_i:03}{k:05}");
            let r = dc
                .create_device(pb::CreateDeviceRequest {
                    device: Some(new_device_wire(OsType::Linux, &tag)?),
                    create_enroll_token: true,
                    enroll_token_ttl_seconds: 3600,
                })
                .await?;
            let token = r.into_inner().enroll_token.context("token")?.token;
            jobs.push((tag, token));
        }
        prepared.push((ch, jobs));
    }
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (ch, jobs) in prepared {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for (tag, token) in jobs {
                let key = DeviceKey::new()?;
                let s = Instant::now();
                dt_client::devices::enroll(
                    ch.clone(),
                    EnrollToken::new(token),
                    key.credential_id.clone(),
                    device_data(&tag),
                    EnrollPayload::P256 {
                        public_key_der: key.spki(),
                        storage: P256KeyStorage::Software,
                    },
                    |req| key.prove(req),
                )
                .await?;
                lat.push(s.elapsed());
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let took = t.elapsed();
    lat.sort();
    println!(
        "enrollments over loopback TLS, {clients} concurrent clients: {} in {:.1} s = {:.0}/s (p50 {} p99 {})",
        lat.len(),
        took.as_secs_f64(),
        lat.len() as f64 / took.as_secs_f64(),
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99))
    );
    cl.stop().await
}

/// One ceremony's crypto on the server: verify the SSH certificate and the device
/// signature, sign both augmented certs (the client certificate was verified when its
/// connection opened), measured on one core of this process with a user CA of its own (the
/// same code and key types as the server's).
fn crypto_bound() -> anyhow::Result<Duration> {
    let now = time::OffsetDateTime::now_utc().replace_nanosecond(0)?;
    let ca = dt_ca::CertAuthority::generate("bench", dt_ca::CaKind::User, now)?;
    let user_key = dt_ca::ClientKey::generate()?;
    let id = dt_ca::Identity {
        username: "bound".parse()?,
        roles: vec!["access".into()],
        logins: vec![],
        bot: false,
        trait_logins: vec![],
        device: None,
        not_before: now - time::Duration::minutes(1),
        not_after: now + time::Duration::hours(1),
    };
    let x509 = ca.issue_x509_client_cert(&user_key.spki_der(), &id)?;
    let ssh = ca.issue_ssh_user_cert(&user_key.ssh_public_key()?, &id)?;
    let key = DeviceKey::new()?;
    let ext = dt_ca::DeviceExt {
        device_id: "5f2c6c39-3c4b-4a53-9d0c-3d2f3f0a9b11".parse()?,
        asset_tag: "t".into(),
        credential_id: "c".parse()?,
        posture: Default::default(),
    };
    let challenge = [7u8; 32];
    let spki = key.spki();
    let Proof::P256Signature(sig) = key
        .prove(ProofRequest::P256Challenge(&challenge))
        .map_err(|e| anyhow::anyhow!("{e}"))?
    else {
        anyhow::bail!("no signature")
    };
    let n: u32 = if std::env::var("BENCH_SECONDS").is_ok_and(|s| s == "1") {
        200
    } else {
        2000
    };
    // The client certificate is verified when its connection opens, not per ceremony (the
    // clients of this bench keep their connections).
    let x509 = ca.verify_x509_cert(&x509, now)?;
    let t = Instant::now();
    for _ in 0..n {
        // The server's cost only: verify the SSH certificate and the device signature...
        let verified = ca.verify_ssh_user(&ssh, time::OffsetDateTime::now_utc())?;
        dt_attest::p256::verify_challenge_signature(&spki, &challenge, &sig)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        // ...and sign the two augmented certificates.
        ca.augment_verified(&verified, &x509, &ext, time::OffsetDateTime::now_utc())?;
    }
    Ok(t.elapsed() / n)
}

/// One client of the authentication benchmark: a user's channel and certificates, and an
/// enrolled device.
type Actor = Arc<(Channel, UserCertificates, DeviceKey, String)>;

/// Register and enroll one software device for `(ch, certs)`, through the admin channel.
async fn enroll_actor(
    admin: &Channel,
    ch: Channel,
    certs: UserCertificates,
    tag: String,
) -> anyhow::Result<Actor> {
    let mut dc = DeviceTrustServiceClient::new(admin.clone());
    let r = dc
        .create_device(pb::CreateDeviceRequest {
            device: Some(new_device_wire(OsType::Linux, &tag)?),
            create_enroll_token: true,
            enroll_token_ttl_seconds: 3600,
        })
        .await?;
    let token = r.into_inner().enroll_token.context("token")?.token;
    let key = DeviceKey::new()?;
    dt_client::devices::enroll(
        ch.clone(),
        EnrollToken::new(token),
        key.credential_id.clone(),
        device_data(&tag),
        EnrollPayload::P256 {
            public_key_der: key.spki(),
            storage: P256KeyStorage::Software,
        },
        |req| key.prove(req),
    )
    .await?;
    Ok(Arc::new((ch, certs, key, tag)))
}

/// The local admin identity of a running auth server (what `dtctl --data-dir` uses).
fn admin_identity(data_dir: &std::path::Path) -> anyhow::Result<(Identity, String)> {
    let admin = data_dir.join("admin");
    let read = |name: &str| {
        std::fs::read_to_string(admin.join(name)).with_context(|| {
            format!(
                "cannot read {}/{name}: pass the first target's data dir",
                admin.display()
            )
        })
    };
    let cert = dt_ca::pem::parse_cert_pem(&read("cert.pem")?)?;
    let key = dt_ca::ClientKey::from_pkcs8_pem(&read("key.pem")?)?;
    let ca = dt_ca::pem::parse_cert_pem(&read("host-ca.pem")?)?;
    let pin = dt_client::spki_pin(&ca).map_err(anyhow::Error::msg)?;
    Ok((
        Identity::Cert {
            cert_der: cert,
            key_pkcs8_der: key.pkcs8_der().to_vec(),
        },
        pin,
    ))
}

const BENCH_PASSWORD: &str = "correct horse battery staple";

/// Users and enrolled devices on running auth servers: one user per client (created by
/// the admin, logged in with its signup token on its own target), one device each.
async fn remote_actors(
    targets: &[String],
    data_dir: &std::path::Path,
    n: usize,
) -> anyhow::Result<Vec<Actor>> {
    let (admin_id, pin) = admin_identity(data_dir)?;
    let first = targets.first().context("no --target")?;
    let admin = dt_client::connect::channel(first, TrustPolicy::Pin(pin.clone()), admin_id).await?;
    // Software credentials allowed, cluster-wide.
    let mut auth = AuthServiceClient::new(admin.clone());
    let doc = auth
        .get_resource(pb::GetResourceRequest {
            kind: "cluster_auth_preference".into(),
            name: "cluster-auth-preference".into(),
        })
        .await?
        .into_inner();
    let mut cap: dt_types::resource::ClusterAuthPreference =
        serde_json::from_slice(&doc.canonical_json)?;
    if !cap.spec.device_trust.allow_software_credentials {
        cap.spec.device_trust.allow_software_credentials = true;
        auth.upsert_resource(pb::UpsertResourceRequest {
            canonical_json: serde_json::to_vec(&cap)?,
            force: true,
            expected_revision: 0,
        })
        .await?;
    }
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut actors = Vec::with_capacity(n);
    for i in 0..n {
        let user = format!("bench-{}-{i}", &run[..8]);
        let signup = auth
            .create_user(pb::CreateUserRequest {
                name: user.clone(),
                roles: vec!["access".into(), "device-enroll".into()],
                logins: vec![],
                token_ttl_seconds: 3600,
            })
            .await?
            .into_inner()
            .signup_token;
        let target = &targets[i % targets.len()];
        let anon =
            dt_client::connect::channel(target, TrustPolicy::Pin(pin.clone()), Identity::Anonymous)
                .await?;
        let key = dt_ca::ClientKey::generate()?;
        let resp = AuthServiceClient::new(anon)
            .login(pb::LoginRequest {
                username: user.clone(),
                password: String::new(),
                signup_token: signup,
                new_password: BENCH_PASSWORD.into(),
                ssh_public_key: key.ssh_public_key()?.to_openssh()?,
                tls_public_key_der: key.spki_der(),
                ttl_seconds: 3600,
                bot_token: String::new(),
            })
            .await
            .with_context(|| format!("login as {user} on {target}"))?
            .into_inner();
        let ch = dt_client::connect::channel(
            target,
            TrustPolicy::Pin(pin.clone()),
            Identity::Cert {
                cert_der: resp.tls_cert_der.clone(),
                key_pkcs8_der: key.pkcs8_der().to_vec(),
            },
        )
        .await?;
        let certs = UserCertificates {
            x509_der: resp.tls_cert_der,
            ssh_authorized_key: Some(resp.ssh_cert),
        };
        actors.push(enroll_actor(&admin, ch, certs, format!("AUTHN-{}-{i:05}", &run[..8])).await?);
    }
    Ok(actors)
}

async fn authn_bench(
    postgres: bool,
    seconds: u64,
    clients_list: Vec<usize>,
    targets: Vec<String>,
    data_dir: Option<std::path::PathBuf>,
    server_cores: Option<usize>,
    server_pids: Vec<u32>,
) -> anyhow::Result<()> {
    let max = clients_list.iter().copied().max().unwrap_or(1);
    let (actors, local, what) = if targets.is_empty() {
        let (actors, cl) = local_actors(postgres, max).await?;
        let storage = if postgres { "PostgreSQL" } else { "SQLite" };
        (
            actors,
            Some(cl),
            format!("in-process auth server on {storage}"),
        )
    } else {
        let dir = data_dir.context("--target needs --data-dir (the first server's data dir)")?;
        let actors = remote_actors(&targets, &dir, max).await?;
        (
            actors,
            None,
            format!(
                "auth server(s) at {} (driven from this process)",
                targets.join(", ")
            ),
        )
    };
    let per_ceremony = crypto_bound()?;
    let machine_cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cores = server_cores.unwrap_or(machine_cores).max(1);
    let one_core = 1.0 / per_ceremony.as_secs_f64();
    let bound = cores as f64 * one_core;
    println!("device authentication, {what}, loopback TLS (mTLS + bidi gRPC stream per ceremony)");
    println!(
        "crypto-only cost of one ceremony, measured now in this process (server: SSH certificate and device signature verified, 2 certificates signed; the client certificate is verified once per connection): {:.0} µs; bound: {one_core:.0}/s on one core, {bound:.0}/s on {cores} core(s)\n",
        per_ceremony.as_secs_f64() * 1e6
    );
    let cpu_clock = if server_pids.is_empty() {
        None
    } else {
        Some(CpuClock::new()?)
    };
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9} {:>12}",
        "clients", "auths", "auths/s", "p50", "p99", "of 1 core", "of bound", "server CPU"
    );
    for &n in &clients_list {
        let cpu_before = match &cpu_clock {
            Some(c) => Some(c.total(&server_pids)?),
            None => None,
        };
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let t = Instant::now();
        let mut tasks = Vec::new();
        for a in actors.iter().take(n) {
            let a = a.clone();
            tasks.push(tokio::spawn(async move {
                let (ch, certs, key, tag) = (&a.0, &a.1, &a.2, &a.3);
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let s = Instant::now();
                    dt_client::devices::authenticate(
                        ch.clone(),
                        certs.clone(),
                        key.credential_id.clone(),
                        AttestationType::Software,
                        device_data(tag),
                        |req| key.prove(req),
                    )
                    .await?;
                    lat.push(s.elapsed());
                }
                Ok::<_, anyhow::Error>(lat)
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await??);
        }
        let took = t.elapsed();
        let server_cpu = match (&cpu_clock, cpu_before) {
            (Some(c), Some(before)) if !lat.is_empty() => {
                let used = c.total(&server_pids)?.saturating_sub(before);
                format!("{:.0} µs/auth", used.as_secs_f64() * 1e6 / lat.len() as f64)
            }
            _ => "-".to_string(),
        };
        lat.sort();
        let rate = lat.len() as f64 / took.as_secs_f64();
        println!(
            "{:>8} {:>10} {:>10.0} {:>10} {:>10} {:>9.0}% {:>8.0}% {:>12}",
            n,
            lat.len(),
            rate,
            ms(pct(&lat, 0.5)),
            ms(pct(&lat, 0.99)),
            100.0 * rate / one_core,
            100.0 * rate / bound,
            server_cpu
        );
    }
    if let Some(cl) = local {
        cl.stop().await?;
    }
    Ok(())
}

/// CPU time (user + system) of processes, read from `/proc/PID/stat` (Linux).
struct CpuClock {
    ticks_per_second: f64,
}

impl CpuClock {
    fn new() -> anyhow::Result<Self> {
        let out = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .context("getconf CLK_TCK (to read /proc/PID/stat)")?;
        let ticks: f64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .context("getconf CLK_TCK printed no number")?;
        Ok(CpuClock {
            ticks_per_second: ticks,
        })
    }

    /// The CPU time the processes used so far, together.
    fn total(&self, pids: &[u32]) -> anyhow::Result<Duration> {
        let mut ticks = 0u64;
        for pid in pids {
            let path = format!("/proc/{pid}/stat");
            let stat = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {path}: is --server-pid {pid} running?"))?;
            ticks += stat_cpu_ticks(&stat).with_context(|| format!("{path} is not readable"))?;
        }
        Ok(Duration::from_secs_f64(
            ticks as f64 / self.ticks_per_second,
        ))
    }
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. The command name (field 2)
/// is in parentheses and may hold spaces, so fields are counted after its closing one.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, at index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The in-process auth server, one user (certificates issued in-process) and one enrolled
/// device per client.
async fn local_actors(postgres: bool, max: usize) -> anyhow::Result<(Vec<Actor>, Cluster)> {
    let cl = start(postgres).await?;
    let (admin, _) = cl
        .channel_for(dt_auth::server::LOCAL_ADMIN, &["editor"])
        .await?;
    cl.allow_software_credentials(admin.clone()).await?;
    let mut actors = Vec::new();
    for i in 0..max {
        let (ch, certs) = cl
            .channel_for(&format!("user{i}"), &["access", "device-enroll"])
            .await?;
        actors.push(enroll_actor(&admin, ch, certs, format!("AUTHN{i:05}")).await?);
    }
    Ok((actors, cl))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match cli.cmd {
            Cmd::Devices {
                devices,
                lookup_devices,
                enroll_clients,
                enrollments,
            } => {
                devices_bench(
                    cli.postgres,
                    devices,
                    lookup_devices,
                    enroll_clients,
                    enrollments,
                )
                .await
            }
            Cmd::Authn {
                seconds,
                clients,
                target,
                data_dir,
                server_cores,
                server_pid,
            } => {
                authn_bench(
                    cli.postgres,
                    seconds,
                    clients,
                    target,
                    data_dir,
                    server_cores,
                    server_pid,
                )
                .await
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::stat_cpu_ticks;

    #[test]
    fn cpu_ticks_are_utime_plus_stime_even_with_spaces_in_the_name() {
        let stat = "4242 (dev trust) S 1 4242 4242 0 -1 4194560 100 0 0 0 731 269 0 0 20 0 9 0 5 0";
        assert_eq!(stat_cpu_ticks(stat), Some(1000));
        assert_eq!(stat_cpu_ticks("4242 (x) S 1"), None);
    }
}
