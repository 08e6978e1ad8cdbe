//! Harness for the device-trust integration tests: a real auth service in this process
//! (gRPC over loopback TLS with mTLS, SQLite in a temp dir or a fresh PostgreSQL
//! database), user certificates issued in-process by the user CA, software P-256 device
//! credentials (ring), and a raw ceremony stream that sends exactly the JSON a test builds,
//! so every cheat is expressed message by message.
//!
//! - [`shared`]: one server per test binary (software credentials allowed, mode optional,
//!   no ceremony limit to speak of). Tests that share it use their own users and devices.
//! - [`Cluster::start`]: a dedicated server, for tests that change cluster-wide settings
//!   or the static config, and for PostgreSQL.
//! - [`Raw`], [`enroll_raw`], [`authenticate_raw`]: ceremonies driven by hand.
//! - [`Cluster::assert_failure_event`] and friends: what the audit log says.
//!
//! Every server runs on one multi-thread runtime shared by the binary ([`block_on`]), so a
//! server started by one test keeps serving the others.
#![allow(dead_code)]

pub mod scenarios;
pub mod services;

use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dt_auth::AuthServer;
use dt_auth::audit::EventFilter;
use dt_auth::config::{Config, StorageConfig};
use dt_auth::keys;
use dt_ceremony::messages::{
    AuthenticateChallenge, AuthenticateChallengeResponse, AuthenticateInit, AuthenticateRequest,
    AuthenticateResponse, EnrollChallenge, EnrollChallengeResponse, EnrollInit, EnrollPayload,
    EnrollRequest, EnrollResponse, P256KeyStorage, UserCertificates,
};
use dt_ceremony::proof::{Proof, ProofRequest, ProverError};
use dt_ceremony::token::{EnrollToken, EnrollTokenRecord};
use dt_client::{Identity, TrustPolicy};
use dt_proto::v1 as pb;
use dt_proto::v1::auth_service_client::AuthServiceClient;
use dt_proto::v1::device_trust_service_client::DeviceTrustServiceClient;
use dt_types::audit::{AuditEvent, EventType};
use dt_types::device::{
    AttestationType, DeviceCollectedData, DeviceProfile, DeviceSpec, EnrollStatus, OsType,
};
use dt_types::resource::{DeviceTrustMode, DeviceTrustSettings, LockSpec, LockTarget, Resource};
use dt_types::{Device, Kind};
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use tokio::sync::{OnceCell, mpsc, oneshot};
use tonic::transport::Channel;
use tonic::{Code, Status};

// ---------------------------------------------------------------------------------------
// runtime

/// The runtime every server and every test of this binary runs on.
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("test runtime")
    })
}

/// Run a test body on the shared runtime.
pub fn block_on<F: Future>(f: F) -> F::Output {
    rt().block_on(f)
}

/// A name no other test of this process uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}{}", N.fetch_add(1, Ordering::Relaxed))
}

// ---------------------------------------------------------------------------------------
// device credentials and collected data

const SPKI_P256_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// A software P-256 device credential.
pub struct DeviceKey {
    pair: EcdsaKeyPair,
    pkcs8: Vec<u8>,
    pub credential_id: String,
}

impl DeviceKey {
    pub fn new() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .expect("p256 keygen");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .expect("p256 key");
        DeviceKey {
            pair,
            pkcs8: pkcs8.as_ref().to_vec(),
            credential_id: uuid::Uuid::new_v4().to_string(),
        }
    }

    /// The same key pair announced under another credential id.
    pub fn same_key_as(&self, credential_id: &str) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &self.pkcs8, &rng)
            .expect("p256 key");
        DeviceKey {
            pair,
            pkcs8: self.pkcs8.clone(),
            credential_id: credential_id.into(),
        }
    }

    /// The public key, PKIX DER.
    pub fn spki(&self) -> Vec<u8> {
        let mut v = SPKI_P256_PREFIX.to_vec();
        v.extend_from_slice(self.pair.public_key().as_ref());
        v
    }

    /// ECDSA-P256-SHA256 over `msg`, DER.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair
            .sign(&ring::rand::SystemRandom::new(), msg)
            .expect("sign")
            .as_ref()
            .to_vec()
    }

    pub fn payload(&self) -> EnrollPayload {
        EnrollPayload::P256 {
            public_key_der: self.spki(),
            storage: P256KeyStorage::Software,
        }
    }

    /// The answer `dt-client` expects from a credential.
    pub fn prove(&self, req: ProofRequest<'_>) -> Result<Proof, ProverError> {
        match req {
            ProofRequest::P256Challenge(c) => Ok(Proof::P256Signature(self.sign(c))),
            other => Err(format!("unsupported {}", other.kind()).into()),
        }
    }

    /// An enrollment response signing `msg`.
    pub fn enroll_response(&self, msg: &[u8]) -> EnrollChallengeResponse {
        EnrollChallengeResponse::P256 {
            signature_der: self.sign(msg),
        }
    }

    /// An authentication response signing `msg`.
    pub fn authn_response(&self, msg: &[u8]) -> AuthenticateChallengeResponse {
        AuthenticateChallengeResponse::P256 {
            signature_der: self.sign(msg),
        }
    }
}

pub const MODEL: &str = "TestBook1,1";
pub const OS_VERSION: &str = "13.10";

/// What a device of `os` with serial `serial` reports.
pub fn data(os: OsType, serial: &str) -> DeviceCollectedData {
    DeviceCollectedData {
        collect_time: time::OffsetDateTime::now_utc(),
        record_time: None,
        os_type: Some(os),
        serial_number: serial.into(),
        model_identifier: MODEL.into(),
        os_version: OS_VERSION.into(),
        os_build: "22A100".into(),
        os_username: "tester".into(),
        hostname: "test-host".into(),
        system_serial_number: String::new(),
        base_board_serial_number: String::new(),
        reported_asset_tag: String::new(),
        serial_source: "test".into(),
    }
}

pub fn enroll_init(token: &str, key: &DeviceKey, data: DeviceCollectedData) -> EnrollInit {
    EnrollInit {
        token: EnrollToken::new(token),
        credential_id: key.credential_id.clone(),
        device_data: data,
        payload: key.payload(),
    }
}

pub fn authn_init(
    certs: &UserCertificates,
    credential_id: &str,
    data: DeviceCollectedData,
) -> AuthenticateInit {
    AuthenticateInit {
        user_certificates: certs.clone(),
        credential_id: credential_id.into(),
        device_data: data,
        device_web_token: None,
    }
}

// ---------------------------------------------------------------------------------------
// raw ceremony streams

/// One ceremony stream, driven by hand: send any message (typed, or protobuf as built by
/// the test), read what the server answers.
pub struct Raw<Req, Resp> {
    tx: mpsc::Sender<Req>,
    inbound: tonic::Streaming<Resp>,
}

pub type RawEnroll = Raw<pb::EnrollDeviceRequest, pb::EnrollDeviceResponse>;
pub type RawAuthenticate = Raw<pb::AuthenticateDeviceRequest, pb::AuthenticateDeviceResponse>;

impl RawEnroll {
    pub async fn open_enroll(ch: &Channel) -> Result<RawEnroll, Status> {
        let (tx, rx) = mpsc::channel(4);
        let inbound = DeviceTrustServiceClient::new(ch.clone())
            .enroll_device(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Raw { tx, inbound })
    }
}

impl RawAuthenticate {
    pub async fn open_authenticate(ch: &Channel) -> Result<RawAuthenticate, Status> {
        let (tx, rx) = mpsc::channel(4);
        let inbound = DeviceTrustServiceClient::new(ch.clone())
            .authenticate_device(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Raw { tx, inbound })
    }
}

impl<Req, Resp> Raw<Req, Resp> {
    /// Sends a ceremony message, encoded by dt-proto.
    pub async fn send<'a, T: 'a>(&self, m: &'a T)
    where
        Req: From<&'a T>,
    {
        self.send_proto(Req::from(m)).await;
    }

    /// Sends a protobuf message exactly as given (the server may already have hung up).
    pub async fn send_proto(&self, m: Req) {
        let _ = self.tx.send(m).await;
    }

    /// The next server message, or the status the server ended the stream with.
    pub async fn recv<T>(&mut self) -> Result<T, Status>
    where
        T: TryFrom<Resp, Error = dt_proto::ProtoError>,
    {
        match self.inbound.message().await? {
            Some(m) => Ok(T::try_from(m).expect("the server sent a well-formed message")),
            None => Err(Status::unknown(
                "test harness: the stream ended without a message or a status",
            )),
        }
    }
}

/// An enrollment over `ch`: `init`, then whatever `respond` answers to the challenge.
pub async fn enroll_raw(
    ch: &Channel,
    init: EnrollInit,
    respond: impl FnOnce(&[u8]) -> EnrollChallengeResponse,
) -> Result<Device, Status> {
    let mut raw = RawEnroll::open_enroll(ch).await?;
    raw.send(&EnrollRequest::Init(Box::new(init))).await;
    let challenge = match raw.recv::<EnrollResponse>().await? {
        EnrollResponse::Challenge(EnrollChallenge::P256 { challenge }) => challenge,
        other => panic!("expected a p256 challenge, got {other:?}"),
    };
    assert_eq!(challenge.len(), 32, "enrollment challenge length");
    raw.send(&EnrollRequest::ChallengeResponse(respond(&challenge)))
        .await;
    match raw.recv::<EnrollResponse>().await? {
        EnrollResponse::Success(s) => Ok(s.device),
        other => panic!("expected EnrollSuccess, got {other:?}"),
    }
}

/// An authentication over `ch`: `init`, then whatever `respond` answers to the challenge.
pub async fn authenticate_raw(
    ch: &Channel,
    init: AuthenticateInit,
    respond: impl FnOnce(&[u8]) -> AuthenticateChallengeResponse,
) -> Result<UserCertificates, Status> {
    let mut raw = RawAuthenticate::open_authenticate(ch).await?;
    raw.send(&AuthenticateRequest::Init(Box::new(init))).await;
    let challenge = match raw.recv::<AuthenticateResponse>().await? {
        AuthenticateResponse::Challenge(AuthenticateChallenge::P256 { challenge }) => challenge,
        other => panic!("expected a p256 challenge, got {other:?}"),
    };
    assert_eq!(challenge.len(), 32, "authentication challenge length");
    raw.send(&AuthenticateRequest::ChallengeResponse(respond(&challenge)))
        .await;
    match raw.recv::<AuthenticateResponse>().await? {
        AuthenticateResponse::Success(s) => Ok(s.user_certificates),
        other => panic!("expected AuthenticateSuccess, got {other:?}"),
    }
}

/// Sends `init` alone and returns the server's first answer: for cheats that must be
/// refused at Init, before any challenge is handed out.
pub async fn enroll_init_reply(ch: &Channel, init: EnrollInit) -> Result<EnrollResponse, Status> {
    let mut raw = RawEnroll::open_enroll(ch).await?;
    raw.send(&EnrollRequest::Init(Box::new(init))).await;
    raw.recv().await
}

/// Sends `init` alone and returns the server's first answer (see [`enroll_init_reply`]).
pub async fn authn_init_reply(
    ch: &Channel,
    init: AuthenticateInit,
) -> Result<AuthenticateResponse, Status> {
    let mut raw = RawAuthenticate::open_authenticate(ch).await?;
    raw.send(&AuthenticateRequest::Init(Box::new(init))).await;
    raw.recv().await
}

/// Asserts `r` failed with `code` and a message containing `needle`; returns the status.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(r: Result<T, Status>, code: Code, needle: &str) -> Status {
    match r {
        Ok(v) => panic!("expected {code:?} {needle:?}, but the call succeeded: {v:?}"),
        Err(s) => {
            assert_eq!(
                s.code(),
                code,
                "status code (message: {:?}); expected message containing {needle:?}",
                s.message()
            );
            assert!(
                s.message().contains(needle),
                "status message {:?} should contain {needle:?}",
                s.message()
            );
            s
        }
    }
}

// ---------------------------------------------------------------------------------------
// users

/// A user with a certificate from the user CA and an mTLS channel using it.
pub struct User {
    pub name: String,
    pub ch: Channel,
    pub certs: UserCertificates,
    pub key: dt_ca::ClientKey,
    pub identity: dt_ca::Identity,
}

// ---------------------------------------------------------------------------------------
// the cluster

#[derive(Clone, Debug)]
pub struct Options {
    pub postgres: bool,
    pub ceremonies_per_minute: usize,
    pub device_trust: DeviceTrustSettings,
    /// Run the server on a fixed clock starting here ([`Cluster::clock`] moves it).
    pub clock: Option<time::OffsetDateTime>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            postgres: false,
            ceremonies_per_minute: 1_000_000,
            clock: None,
            device_trust: DeviceTrustSettings {
                mode: DeviceTrustMode::Optional,
                allow_software_credentials: true,
                ..Default::default()
            },
        }
    }
}

/// An auth server listening on 127.0.0.1:0, and an admin channel to it.
pub struct Cluster {
    pub srv: std::sync::Arc<AuthServer>,
    pub addr: String,
    pub pin: String,
    pub admin: Channel,
    /// The server's clock, when the cluster was started on a fixed one.
    pub clock: Option<dt_auth::env::ClockHandle>,
    shutdown: Option<oneshot::Sender<()>>,
    // Dropped after the server is told to stop.
    _dir: tempfile::TempDir,
    _pg: Option<dt_testkit::PgDatabase>,
}

const DIR_PREFIX: &str = "dt-auth-it-";

/// Data dirs of earlier runs of this harness whose process is gone (the shared server's
/// dir lives in a static and is never dropped).
fn remove_stale_dirs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(rest) = name.strip_prefix(DIR_PREFIX) else {
                continue;
            };
            let pid = rest.split('-').next().unwrap_or_default();
            if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    });
}

impl Cluster {
    pub async fn start(opts: Options) -> Cluster {
        remove_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir()
            .expect("temp dir");
        let mut config = Config {
            data_dir: dir.path().join("data"),
            cluster_name: Some("it".into()),
            ..Config::default()
        };
        config.listen = "127.0.0.1:0".parse().expect("addr");
        config.device_ceremonies_per_minute = opts.ceremonies_per_minute;
        let pg = opts
            .postgres
            .then(|| dt_testkit::PgDatabase::create("dt_auth_it"));
        if let Some(db) = &pg {
            config.storage = StorageConfig::Postgres { conn: db.conn() };
        }
        let (env, clock) = match opts.clock {
            Some(at) => {
                let (env, clock) = dt_auth::env::ServerEnv::fixed(at);
                (env, Some(clock))
            }
            None => (dt_auth::env::ServerEnv::system(), None),
        };
        let srv = AuthServer::bootstrap_in(config, env)
            .await
            .expect("bootstrap");
        let files = srv.write_data_dir(&[]).expect("data dir");
        let tls = dt_auth::listener::tls_config(&srv, &files).expect("tls config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        tokio::spawn(dt_auth::listener::serve(
            srv.clone(),
            listener,
            tls,
            async move {
                let _ = stop_rx.await;
            },
        ));
        let pin = srv.host_ca.pin();
        let admin = connect(&addr, &pin, &srv, dt_auth::server::LOCAL_ADMIN, &["editor"])
            .await
            .0;
        let cl = Cluster {
            srv,
            addr,
            pin,
            admin,
            clock,
            shutdown: Some(stop_tx),
            _dir: dir,
            _pg: pg,
        };
        cl.set_device_trust(opts.device_trust).await;
        cl
    }

    /// Stop serving and close storage (PostgreSQL connections) before the database goes.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.srv.backend.close().await;
    }

    // --- settings and resources, as the admin -------------------------------------------

    pub async fn set_device_trust(&self, dt: DeviceTrustSettings) {
        let mut cap = self.srv.cap().await.expect("cap");
        cap.spec.device_trust = dt;
        AuthServiceClient::new(self.admin.clone())
            .upsert_resource(pb::UpsertResourceRequest {
                canonical_json: serde_json::to_vec(&cap).expect("cap json"),
                force: true,
                expected_revision: 0,
            })
            .await
            .expect("update cluster_auth_preference");
    }

    pub async fn device_trust(&self) -> DeviceTrustSettings {
        self.srv.cap().await.expect("cap").spec.device_trust
    }

    /// A lock (as the admin, through UpsertResource). Returns its name.
    pub async fn lock(&self, target: LockTarget, message: &str) -> String {
        let name = uuid::Uuid::new_v4().to_string();
        let lock: Resource<LockSpec> = Resource::new(
            name.clone(),
            LockSpec {
                target,
                message: Some(message.into()),
                created_by: None,
                created_at: None,
            },
        );
        AuthServiceClient::new(self.admin.clone())
            .upsert_resource(pb::UpsertResourceRequest {
                canonical_json: serde_json::to_vec(&lock).expect("lock json"),
                force: false,
                expected_revision: 0,
            })
            .await
            .expect("create lock");
        name
    }

    /// A role (as the admin, through UpsertResource) from its YAML `spec`.
    pub async fn role(&self, name: &str, spec_yaml: &str) {
        let text =
            format!("kind: role\nversion: v7\nmetadata: {{name: {name}}}\nspec: {spec_yaml}");
        let role = dt_types::AnyResource::parse_documents(&text)
            .expect("role yaml")
            .remove(0);
        AuthServiceClient::new(self.admin.clone())
            .upsert_resource(pb::UpsertResourceRequest {
                canonical_json: serde_json::to_vec(&role.to_json_value()).expect("role json"),
                force: true,
                expected_revision: 0,
            })
            .await
            .expect("create role");
    }

    // --- users ---------------------------------------------------------------------------

    /// A new user (unique name from `prefix`) with `roles`, its certificates and channel.
    pub async fn user(&self, prefix: &str, roles: &[&str]) -> User {
        let name = unique(prefix);
        let u: dt_types::User = Resource::new(
            name.clone(),
            dt_types::resource::UserSpec {
                roles: roles.iter().map(|r| r.to_string()).collect(),
                ..Default::default()
            },
        );
        self.srv
            .backend
            .put(
                &keys::resource(Kind::User, &name),
                serde_json::to_vec(&u).expect("user json"),
                None,
            )
            .await
            .expect("store user");
        let (ch, certs, key, identity) =
            connect(&self.addr, &self.pin, &self.srv, &name, roles).await;
        User {
            name,
            ch,
            certs,
            key,
            identity,
        }
    }

    /// An mTLS channel presenting `cert_der` with `key`.
    pub async fn channel_with(
        &self,
        cert_der: &[u8],
        key: &dt_ca::ClientKey,
    ) -> Result<Channel, dt_client::ClientError> {
        dt_client::connect::channel(
            &self.addr,
            TrustPolicy::Pin(self.pin.clone()),
            Identity::Cert {
                cert_der: cert_der.to_vec(),
                key_pkcs8_der: key.pkcs8_der().to_vec(),
            },
        )
        .await
    }

    /// A channel without a client certificate (login, join), pinned to this server.
    pub async fn anonymous_channel(&self) -> Channel {
        dt_client::connect::channel(
            &self.addr,
            TrustPolicy::Pin(self.pin.clone()),
            Identity::Anonymous,
        )
        .await
        .expect("connect without a client certificate")
    }

    // --- devices -------------------------------------------------------------------------

    /// Registers a device (as the admin) and returns its id and, if asked, an enrollment
    /// token.
    pub async fn add_device(
        &self,
        os: OsType,
        tag: &str,
        profile: Option<DeviceProfile>,
        with_token: bool,
    ) -> (String, Option<String>) {
        let d: Device = Resource::new(
            uuid::Uuid::new_v4().to_string(),
            DeviceSpec {
                os_type: os,
                asset_tag: tag.into(),
                enroll_status: EnrollStatus::NotEnrolled,
                create_time: None,
                update_time: None,
                credential: None,
                collected_data: vec![],
                source: None,
                profile,
                owner: None,
            },
        );
        let r = DeviceTrustServiceClient::new(self.admin.clone())
            .create_device(pb::CreateDeviceRequest {
                device: Some(pb::Device::try_from(&d).expect("device")),
                create_enroll_token: with_token,
                enroll_token_ttl_seconds: 3600,
            })
            .await
            .expect("create device")
            .into_inner();
        (d.metadata.name.clone(), r.enroll_token.map(|t| t.token))
    }

    /// A fresh token for a registered device (as the admin).
    pub async fn new_token(&self, device_id: &str) -> Result<String, Status> {
        DeviceTrustServiceClient::new(self.admin.clone())
            .create_device_enroll_token(pb::CreateDeviceEnrollTokenRequest {
                device: Some(pb::DeviceRef {
                    device_id: device_id.into(),
                    ..Default::default()
                }),
                ttl_seconds: 3600,
            })
            .await
            .map(|r| r.into_inner().token)
    }

    /// A registered and enrolled Linux device of `user` (who needs the `enroll` verb),
    /// enrolled through `dt-client`'s own driver with `data(Linux, tag)` tweaked by `edit`.
    pub async fn enrolled_device_with(
        &self,
        user: &User,
        edit: impl FnOnce(&mut DeviceCollectedData),
    ) -> EnrolledDevice {
        let tag = unique("ENR");
        let (id, token) = self.add_device(OsType::Linux, &tag, None, true).await;
        let key = DeviceKey::new();
        let mut d = data(OsType::Linux, &tag);
        edit(&mut d);
        let device = dt_client::devices::enroll(
            user.ch.clone(),
            EnrollToken::new(token.expect("token")),
            key.credential_id.clone(),
            d.clone(),
            key.payload(),
            |req| key.prove(req),
        )
        .await
        .expect("enrollment");
        assert_eq!(device.metadata.name, id);
        assert_eq!(device.spec.enroll_status, EnrollStatus::Enrolled);
        EnrolledDevice {
            id,
            tag,
            key,
            data: d,
        }
    }

    pub async fn enrolled_device(&self, user: &User) -> EnrolledDevice {
        self.enrolled_device_with(user, |_| {}).await
    }

    /// `dt-client`'s authentication driver, with this device's credential.
    pub async fn authenticate(
        &self,
        user: &User,
        dev: &EnrolledDevice,
        data: DeviceCollectedData,
    ) -> Result<UserCertificates, dt_client::ClientError> {
        dt_client::devices::authenticate(
            user.ch.clone(),
            user.certs.clone(),
            dev.key.credential_id.clone(),
            AttestationType::Software,
            data,
            |req| dev.key.prove(req),
        )
        .await
    }

    // --- storage -------------------------------------------------------------------------

    /// The device record and its revision, straight from storage.
    pub async fn device(&self, id: &str) -> Option<(Device, i64)> {
        self.srv.get_device(id).await.expect("read device")
    }

    /// The device a credential id is indexed to, if any.
    pub async fn credential_owner(&self, credential_id: &str) -> Option<String> {
        self.srv
            .backend
            .get(&keys::device_credential_index(credential_id))
            .await
            .expect("read credential index")
            .map(|i| String::from_utf8(i.value).expect("utf-8 device id"))
    }

    /// The stored record of a token, if any.
    pub async fn token_record(&self, token: &str) -> Option<EnrollTokenRecord> {
        self.srv
            .backend
            .get(&keys::device_token(&dt_ceremony::token::hash_token(token)))
            .await
            .expect("read token")
            .map(|i| serde_json::from_slice(&i.value).expect("token record"))
    }

    /// Writes a token record for `device_id` directly (e.g. one that already expired).
    pub async fn write_token(
        &self,
        device_id: &str,
        issued: time::OffsetDateTime,
        ttl: time::Duration,
    ) -> String {
        let mut env = dt_ceremony::env::SystemEnv::new();
        let (token, record) =
            EnrollTokenRecord::issue(device_id.parse().unwrap(), issued, ttl, &mut env);
        self.srv
            .backend
            .put(
                &keys::device_token(&record.token_hash),
                serde_json::to_vec(&record).expect("record json"),
                None,
            )
            .await
            .expect("store token");
        token.expose().to_string()
    }

    /// Asserts a device is still registered and not enrolled, at revision `rev`.
    pub async fn assert_untouched(&self, id: &str, rev: i64) {
        let (d, now_rev) = self.device(id).await.expect("device still registered");
        assert_eq!(
            d.spec.enroll_status,
            EnrollStatus::NotEnrolled,
            "device {id}"
        );
        assert!(d.spec.credential.is_none(), "device {id} has no credential");
        assert!(d.spec.owner.is_none(), "device {id} has no owner");
        assert_eq!(now_rev, rev, "device {id} record unchanged");
    }

    // --- audit ---------------------------------------------------------------------------

    /// Events of `ty` by `user`, oldest first.
    pub async fn events(&self, user: &str, ty: EventType) -> Vec<AuditEvent> {
        let filter = EventFilter {
            event: Some(ty),
            user: Some(user.into()),
            ..Default::default()
        };
        self.srv
            .audit
            .search(&filter, None, 100_000)
            .await
            .expect("audit search")
            .0
    }

    /// The latest event of `ty` by `user` is a failure whose message contains `needle`.
    pub async fn assert_failure_event(
        &self,
        user: &str,
        ty: EventType,
        needle: &str,
    ) -> AuditEvent {
        let events = self.events(user, ty).await;
        let Some(last) = events.last().cloned() else {
            panic!("no {} event for {user}", ty.as_str());
        };
        assert!(
            !last.success,
            "{} event for {user} should be a failure: {last:?}",
            ty.as_str()
        );
        let msg = last.message.clone().unwrap_or_default();
        assert!(
            msg.contains(needle),
            "{} failure message {msg:?} should contain {needle:?}",
            ty.as_str()
        );
        last
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A device enrolled by a test user.
pub struct EnrolledDevice {
    pub id: String,
    pub tag: String,
    pub key: DeviceKey,
    /// What it reported at enrollment.
    pub data: DeviceCollectedData,
}

/// Issues certificates for `user` in-process and opens an mTLS channel with them.
async fn connect(
    addr: &str,
    pin: &str,
    srv: &AuthServer,
    user: &str,
    roles: &[&str],
) -> (Channel, UserCertificates, dt_ca::ClientKey, dt_ca::Identity) {
    let key = dt_ca::ClientKey::generate().expect("client key");
    let id = identity(user, roles);
    let x509 = srv
        .user_ca
        .issue_x509_client_cert(&key.spki_der(), &id)
        .expect("x509");
    let ssh = srv
        .user_ca
        .issue_ssh_user_cert(&key.ssh_public_key().expect("ssh key"), &id)
        .expect("ssh")
        .to_openssh()
        .expect("openssh");
    let ch = dt_client::connect::channel(
        addr,
        TrustPolicy::Pin(pin.into()),
        Identity::Cert {
            cert_der: x509.clone(),
            key_pkcs8_der: key.pkcs8_der().to_vec(),
        },
    )
    .await
    .expect("connect");
    (
        ch,
        UserCertificates {
            x509_der: x509,
            ssh_authorized_key: Some(ssh),
        },
        key,
        id,
    )
}

/// A one-day identity for `user`, whole seconds: the server judges it on its own clock,
/// which tests on a fixed clock move forward by hours (a token's lifetime and more).
pub fn identity(user: &str, roles: &[&str]) -> dt_ca::Identity {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("whole second");
    dt_ca::Identity {
        username: user.parse().expect("a user name"),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        logins: vec![],
        bot: false,
        trait_logins: vec![],
        device: None,
        not_before: now - time::Duration::minutes(1),
        not_after: now + time::Duration::days(1),
    }
}

// ---------------------------------------------------------------------------------------
// tables of cases

/// Runs every case of a table concurrently, each to its end even when others fail, then
/// fails once, naming every case that failed and why. A case fails by panicking (the usual
/// `assert!`s); the cases share the cluster but use users and devices of their own.
pub async fn run_table<'a>(
    cases: impl IntoIterator<Item = (&'static str, futures::future::LocalBoxFuture<'a, ()>)>,
) {
    use futures::FutureExt;
    let runs = cases.into_iter().map(|(name, case)| async move {
        let outcome = std::panic::AssertUnwindSafe(case).catch_unwind().await;
        (name, outcome)
    });
    let results = futures::future::join_all(runs).await;
    let total = results.len();
    let failed: Vec<String> = results
        .into_iter()
        .filter_map(|(name, outcome)| {
            let payload = outcome.err()?;
            let why = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".into());
            Some(format!("{name}: {why}"))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {total} cases failed:\n  {}",
        failed.len(),
        failed.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------
// the shared server

/// The server shared by the tests of this binary (SQLite, software credentials allowed).
pub async fn shared() -> &'static Cluster {
    static SHARED: OnceCell<Cluster> = OnceCell::const_new();
    SHARED
        .get_or_init(|| Cluster::start(Options::default()))
        .await
}

/// `Duration` helper for readability.
pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
