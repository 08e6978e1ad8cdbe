//! Test kit for the SSH access point (dev-only): a real auth service (the dt-auth library:
//! SQLite in a temp dir, TLS on 127.0.0.1) and real nodes (the dt-node runtime) in this
//! process, real SSH clients. dt-node's integration tests and its `ssh` benchmark share it
//! as a normal dependency.
//!
//! Why a crate of its own and not part of `dt-testkit`: it links the whole auth service and
//! dt-node, which the tests using `dt-testkit` (database servers, swtpm) should not have to
//! build.
//!
//! - [`Cluster`]: the auth service; restartable on the same port and data dir.
//! - [`Node`]: a node joined with a real join token, serving SSH on 127.0.0.1:0.
//! - [`Cluster::user`]: certificates issued by the cluster's real user CA, as `dtsh login`
//!   (and device augmentation) would get them.
//! - [`Sshd`]: an OpenSSH server of the test's own (the real binaries come from
//!   `dt_testkit::programs`).
//!
//! A test harness fails loudly: it unwraps and panics with what went wrong.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dt_auth::AuthServer;
use dt_ca::{ClientKey, DeviceExt, Identity};
use dt_client::ssh_client::{self, ClientCreds, Connection, ExecOutput, SshClientError};
use dt_node::access::Freshness;
use dt_node::agent::{self, JoinRequest, Mode, NodeConfig, RunningNode};
use dt_proto::v1 as pb;
use dt_types::audit::{AuditEvent, EventType};
use time::OffsetDateTime;
use tokio::sync::oneshot;

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DEVTRUST_TEST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Poll `f` until it returns `Some`, or panic after `timeout`.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub srv: Arc<AuthServer>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Cluster {
    pub async fn start() -> Cluster {
        Self::start_on(None).await
    }

    /// An auth service on PostgreSQL (`postgres`, a libpq string) when given; several of
    /// them on one database form one cluster.
    pub async fn start_on(postgres: Option<String>) -> Cluster {
        init_logs();
        let dir = tempfile::tempdir().unwrap();
        let (srv, addr, stop, task) = Self::boot(
            dir.path().to_path_buf(),
            "127.0.0.1:0".parse().unwrap(),
            postgres,
        )
        .await;
        Cluster {
            dir,
            addr,
            srv,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn boot(
        data_dir: PathBuf,
        listen: SocketAddr,
        postgres: Option<String>,
    ) -> (
        Arc<AuthServer>,
        SocketAddr,
        oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let mut config = dt_auth::config::Config::parse("").unwrap();
        if let Some(conn) = postgres {
            config.storage = dt_auth::config::StorageConfig::Postgres { conn };
        }
        config.data_dir = data_dir;
        config.cluster_name = Some("test-cluster".into());
        // Re-binding the same port right after a stop can race the kernel; retry briefly.
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(listen).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("bind {listen}: {e}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        config.listen = addr;
        let srv = AuthServer::bootstrap(config).await.unwrap();
        let files = srv.write_data_dir(&[]).unwrap();
        let tls = dt_auth::listener::tls_config(&srv, &files).unwrap();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let s2 = srv.clone();
        let task = tokio::spawn(async move {
            dt_auth::listener::serve(s2.clone(), listener, tls, async {
                let _ = stop_rx.await;
            })
            .await;
            s2.backend.close().await;
        });
        (srv, addr, stop, task)
    }

    /// Stop the auth service (connections are cut, storage closed).
    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
    }

    /// Start it again on the same port and data dir.
    pub async fn restart(&mut self) {
        self.stop().await;
        let (srv, addr, stop, task) =
            Self::boot(self.dir.path().to_path_buf(), self.addr, None).await;
        assert_eq!(addr, self.addr);
        self.srv = srv;
        self.stop = Some(stop);
        self.task = Some(task);
    }

    pub fn pin(&self) -> String {
        self.srv.host_ca.pin()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The local admin's gRPC channel (as `dtctl --data-dir`).
    pub async fn admin_channel(&self) -> tonic::transport::Channel {
        let admin = self.dir.path().join("admin");
        let cert =
            dt_ca::pem::parse_cert_pem(&std::fs::read_to_string(admin.join("cert.pem")).unwrap())
                .unwrap();
        let key =
            ClientKey::from_pkcs8_pem(&std::fs::read_to_string(admin.join("key.pem")).unwrap())
                .unwrap();
        dt_client::connect::channel(
            &self.addr.to_string(),
            dt_client::TrustPolicy::Pin(self.pin()),
            dt_client::Identity::Cert {
                cert_der: cert,
                key_pkcs8_der: key.pkcs8_der().to_vec(),
            },
        )
        .await
        .unwrap()
    }

    /// A node join token, as `dtctl tokens add --type=node` makes one.
    pub async fn node_token(&self) -> String {
        let mut c = pb::auth_service_client::AuthServiceClient::new(self.admin_channel().await);
        c.create_join_token(pb::CreateJoinTokenRequest {
            r#type: "node".into(),
            ttl_seconds: 600,
            bot_name: String::new(),
            bot_roles: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .token
    }

    /// Create or replace a resource (YAML or JSON) through the API, as `dtctl create --force`.
    pub async fn apply(&self, text: &str) {
        let mut c = pb::auth_service_client::AuthServiceClient::new(self.admin_channel().await);
        for doc in dt_types::AnyResource::parse_documents(text).unwrap() {
            c.upsert_resource(pb::UpsertResourceRequest {
                canonical_json: doc.to_json_value().to_string().into_bytes(),
                force: true,
                expected_revision: 0,
            })
            .await
            .unwrap();
        }
    }

    /// Write raw JSON into storage, bypassing validation (what a newer server could write).
    pub async fn put_raw(&self, key: &str, json: &str) {
        self.srv
            .backend
            .put(key, json.as_bytes().to_vec(), None)
            .await
            .unwrap();
    }

    pub async fn delete(&self, kind: &str, name: &str) {
        let mut c = pb::auth_service_client::AuthServiceClient::new(self.admin_channel().await);
        c.delete_resource(pb::DeleteResourceRequest {
            kind: kind.into(),
            name: name.into(),
        })
        .await
        .unwrap();
    }

    pub async fn set_cluster_mode(&self, mode: &str) {
        self.put_raw(
            "/resources/cluster_auth_preference/cluster-auth-preference",
            &format!(
                r#"{{"kind":"cluster_auth_preference","version":"v2","metadata":{{"name":"cluster-auth-preference"}},"spec":{{"device_trust":{{"mode":"{mode}"}}}}}}"#
            ),
        )
        .await;
    }

    /// Certificates for `username` with these roles and logins (bot or human, with or
    /// without a device), signed by the cluster's user CA.
    pub fn user(&self, u: &TestUser) -> ClientCreds {
        issue(
            &self.srv.user_ca,
            &self.srv.host_ca.ssh_public_key_openssh(),
            u,
        )
    }

    /// Certificates for an existing user through the auth service's own issuance (what
    /// `dtsh login` gets), with the requested TTL when given.
    pub async fn login(&self, username: &str, ttl: Option<Duration>) -> ClientCreds {
        let (user, _) = self
            .srv
            .get_resource::<dt_types::resource::UserSpec>(username)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no user {username}"));
        let key = ClientKey::generate().unwrap();
        let resp = self
            .srv
            .issue_user_certs(
                &user,
                &key.ssh_public_key().unwrap().to_openssh().unwrap(),
                &key.spki_der(),
                ttl,
                "127.0.0.1",
            )
            .await
            .unwrap();
        creds(
            &key,
            ssh_key::Certificate::from_openssh(&resp.ssh_cert).unwrap(),
            &self.srv.host_ca.ssh_public_key_openssh(),
        )
    }

    /// Audit events of a type, newest last.
    pub async fn events(&self, kind: EventType) -> Vec<AuditEvent> {
        let (events, _) = self
            .srv
            .audit
            .search(
                &dt_auth::audit::EventFilter {
                    event: Some(kind),
                    ..Default::default()
                },
                None,
                100_000,
            )
            .await
            .unwrap();
        events
    }

    /// Wait for an audit event of `kind` whose message contains `needle`.
    pub async fn wait_event(&self, kind: EventType, needle: &str) -> AuditEvent {
        eventually(
            &format!("a {kind} event with {needle:?}"),
            Duration::from_secs(10),
            async || {
                self.events(kind)
                    .await
                    .into_iter()
                    .rev()
                    .find(|e| e.message.as_deref().unwrap_or("").contains(needle))
            },
        )
        .await
    }
}

#[derive(Clone, Debug)]
pub struct TestUser {
    pub name: String,
    pub roles: Vec<String>,
    /// The certificate's principals.
    pub logins: Vec<String>,
    /// What `{{internal.logins}}` expands to (the user's login traits).
    pub trait_logins: Vec<String>,
    pub bot: bool,
    pub device: Option<DeviceExt>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl TestUser {
    pub fn human(name: &str, roles: &[&str]) -> TestUser {
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        TestUser {
            name: name.into(),
            roles: roles.iter().map(|s| s.to_string()).collect(),
            logins: vec!["root".into()],
            trait_logins: vec!["root".into()],
            bot: false,
            device: None,
            not_before: now - time::Duration::minutes(1),
            not_after: now + time::Duration::hours(1),
        }
    }
    pub fn bot(name: &str, roles: &[&str]) -> TestUser {
        TestUser {
            bot: true,
            ..TestUser::human(name, roles)
        }
    }
    pub fn with_device(mut self) -> TestUser {
        self.device = Some(device());
        self
    }
}

pub fn device() -> DeviceExt {
    DeviceExt {
        device_id: "5f2c6c39-3c4b-4a53-9d0c-3d2f3f0a9b11".parse().unwrap(),
        asset_tag: "C00AA0AAAA0A".into(),
        credential_id: "cred-1".parse().unwrap(),
        posture: Default::default(),
    }
}

pub fn issue(ca: &dt_ca::CertAuthority, host_ca_line: &str, u: &TestUser) -> ClientCreds {
    let key = ClientKey::generate().unwrap();
    let id = Identity {
        username: u.name.parse().unwrap(),
        roles: u.roles.clone(),
        logins: u.logins.clone(),
        bot: u.bot,
        trait_logins: u.trait_logins.clone(),
        device: u.device.clone(),
        not_before: u.not_before,
        not_after: u.not_after,
    };
    let cert = ca
        .issue_ssh_user_cert(&key.ssh_public_key().unwrap(), &id)
        .unwrap();
    creds(&key, cert, host_ca_line)
}

fn creds(key: &ClientKey, cert: ssh_key::Certificate, host_ca_line: &str) -> ClientCreds {
    ClientCreds {
        key: Arc::new(
            russh::keys::PrivateKey::from_openssh(key.ssh_private_key_openssh().unwrap()).unwrap(),
        ),
        cert,
        host_ca: russh::keys::PublicKey::from_openssh(host_ca_line).unwrap(),
    }
}

pub struct Node {
    pub name: String,
    pub dir: tempfile::TempDir,
    pub running: Option<RunningNode>,
    pub addr: SocketAddr,
}

impl Node {
    pub async fn start(cluster: &Cluster, name: &str, labels: &[(&str, &str)]) -> Node {
        Self::start_with(cluster, name, labels, Freshness::default()).await
    }

    pub async fn start_with(
        cluster: &Cluster,
        name: &str,
        labels: &[(&str, &str)],
        freshness: Freshness,
    ) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let running = agent::start(NodeConfig {
            data_dir: dir.path().join("node"),
            name: name.into(),
            advertise_addr: None,
            labels,
            heartbeat_every: Duration::from_secs(1),
            mode: Mode::Ssh {
                listen: "127.0.0.1:0".parse().unwrap(),
            },
            freshness,
            auth_servers: None,
            metrics_listen: None,
            join: Some(JoinRequest {
                auth_server: cluster.addr.to_string(),
                token: dt_types::Secret::new(cluster.node_token().await),
                trust: dt_client::TrustPolicy::Pin(cluster.pin()),
            }),
        })
        .await
        .unwrap();
        let addr = running.ssh_addr.unwrap();
        let node = Node {
            name: name.into(),
            dir,
            running: Some(running),
            addr,
        };
        node.wait_loaded().await;
        node
    }

    pub fn view(&self) -> &dt_node::server::SharedView {
        &self.running.as_ref().unwrap().view
    }

    pub async fn wait_loaded(&self) {
        eventually(
            "the node's cluster view",
            Duration::from_secs(20),
            async || self.view().read(|v| v.is_loaded()).then_some(()),
        )
        .await
    }

    /// Wait until the node's view satisfies `f`.
    pub async fn wait_view(&self, what: &str, f: impl Fn(&dt_node::view::ClusterView) -> bool) {
        eventually(what, Duration::from_secs(20), async || {
            self.view().read(&f).then_some(())
        })
        .await
    }

    pub async fn wait_mode(&self, mode: &str) {
        self.wait_view(&format!("cluster mode {mode}"), |v| {
            v.cluster_mode()
                .map(|m| m.as_str() == mode)
                .unwrap_or(mode == "<unreadable>")
        })
        .await
    }

    pub async fn connect(
        &self,
        creds: &ClientCreds,
        login: &str,
    ) -> Result<Connection, SshClientError> {
        ssh_client::connect(&self.addr.to_string(), &self.name, creds, login).await
    }

    /// Connect, run `cmd`, return its output (or the refusal).
    pub async fn run(
        &self,
        creds: &ClientCreds,
        login: &str,
        cmd: &str,
    ) -> Result<ExecOutput, SshClientError> {
        let conn = self.connect(creds, login).await?;
        let out = ssh_client::exec(&conn, cmd, b"").await;
        conn.close().await;
        out
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }
}

/// The description of a refused session, or panic.
#[track_caller]
pub fn rejection(r: Result<ExecOutput, SshClientError>) -> String {
    match r {
        Err(SshClientError::ChannelRejected {
            reason_code,
            description,
        }) => {
            assert_eq!(reason_code, 1, "administratively prohibited");
            description
        }
        other => panic!("expected a rejected session, got {other:?}"),
    }
}

/// OpenSSH's `sshd` (Debian openssh-server) of the test's own on 127.0.0.1, killed when
/// dropped. Needs root.
pub struct Sshd {
    child: std::process::Child,
    log: PathBuf,
}

impl Sshd {
    /// Start `/usr/sbin/sshd` on `port` with its config, pid file and log in `dir`: listen on
    /// 127.0.0.1, no PAM, no strict modes, no authorized keys files, then `lines` (host keys,
    /// `LogLevel`, CA keys...; sshd keeps the first value of a keyword). Returns once it
    /// accepts connections; panics with its log if it does not within 5 s.
    pub fn start(dir: &Path, port: u16, lines: &str) -> Sshd {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create("/run/sshd")
            .unwrap();
        let cfg = dir.join("sshd_config");
        std::fs::write(
            &cfg,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nPidFile {}/sshd.pid\nUsePAM no\nStrictModes no\nAuthorizedKeysFile none\n{lines}",
                dir.display()
            ),
        )
        .unwrap();
        let log = dir.join("sshd.log");
        let child = std::process::Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&cfg)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("/usr/sbin/sshd (apt-get install openssh-server)");
        let sshd = Sshd { child, log };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return sshd;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("sshd did not start:\n{}", sshd.log());
    }

    /// What sshd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
