//! The runtime every access point runs on: join (once, with a join token of its kind), then
//! heartbeat what it serves, keep a live watch of the cluster, and send audit events from a
//! spool that survives crashes. The access point's protocol front (SSH, PostgreSQL, MySQL,
//! Kubernetes, HTTP, desktops) starts on top of a [`Runtime`] and asks [`crate::access`] for
//! every decision.
//!
//! The watch reconnects with exponential backoff (100 ms doubling to [`MAX_BACKOFF`], with
//! jitter) whenever the stream ends, fails, or stays silent longer than [`WATCH_SILENCE`] (the
//! auth service sends a keepalive every 2 s). Until the first snapshot arrives every access is
//! denied; afterwards the last view is kept and its age tracked.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dt_ca::ClientKey;
use dt_client::{Identity as TlsIdentity, TrustPolicy};
use dt_proto::v1 as pb;
use dt_proto::v1::node_service_client::NodeServiceClient;
use dt_types::{Secret, ServiceKind};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::audit::AuditQueue;
use crate::client::lazy_channel;
use crate::error::AgentError;
use crate::identity::{DataDir, ServiceIdentity, ServiceMeta};
use crate::view::{Doc, SharedView};

/// Longest wait between two watch attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3);
/// A watch stream silent this long is considered dead.
pub const WATCH_SILENCE: Duration = Duration::from_secs(7);
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);

/// How to join a cluster the first time.
#[derive(Clone, Debug)]
pub struct JoinRequest {
    pub auth_server: String,
    pub token: Secret<String>,
    pub trust: TrustPolicy,
}

/// One resource an access point serves (heartbeated so `dtsh` can list it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Served {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// db: `postgres` or `mysql`; app: its public address; otherwise empty.
    pub protocol: String,
    pub description: String,
    /// Where clients dial it, HOST:PORT; empty: the service's advertised address.
    pub addr: String,
}

#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    pub data_dir: PathBuf,
    pub kind: ServiceKind,
    /// The service's own name (an SSH node's name; for other kinds the access point's).
    pub name: String,
    /// The address clients dial, HOST:PORT.
    pub advertise_addr: String,
    /// The service's own labels (an SSH node's node labels).
    pub labels: BTreeMap<String, String>,
    /// What it serves. An SSH node serves itself and lists nothing here.
    pub resources: Vec<Served>,
    pub heartbeat_every: Duration,
    /// Needed when the data dir holds no identity yet.
    pub join: Option<JoinRequest>,
    /// Auth servers to use instead of the ones saved at join (`HOST:PORT[,HOST:PORT...]`).
    pub auth_servers: Option<String>,
}

/// A started runtime: the identity, the connection to the auth service, the live view, the
/// audit queue, and the background tasks (watch, heartbeat, and whatever the front adds).
pub struct Runtime {
    pub identity: Arc<ServiceIdentity>,
    pub dir: DataDir,
    pub channel: Channel,
    pub view: Arc<SharedView>,
    pub audit: AuditQueue,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Runtime {
    /// Load (or, with a join request, create) the identity and start the watch, the
    /// heartbeat and the audit sender.
    pub async fn start(cfg: RuntimeConfig) -> Result<Runtime, AgentError> {
        let dir = DataDir::new(&cfg.data_dir);
        dir.ensure()?;
        let id = if dir.exists() {
            let id = dir.load()?;
            if id.meta.name != cfg.name || id.meta.kind != cfg.kind {
                return Err(AgentError::Config(format!(
                    "{} belongs to {} {:?}, not {} {:?}; use another --data-dir, or --name={}",
                    cfg.data_dir.display(),
                    id.meta.kind,
                    id.meta.name,
                    cfg.kind,
                    cfg.name,
                    id.meta.name
                )));
            }
            id
        } else {
            let Some(req) = &cfg.join else {
                return Err(AgentError::Config(format!(
                    "{} holds no identity yet: pass --auth-server, --token (from `dtctl tokens add --type={}`) and --ca-pin to join",
                    cfg.data_dir.display(),
                    cfg.kind
                )));
            };
            join(
                &dir,
                req,
                cfg.kind,
                &cfg.name,
                &cfg.advertise_addr,
                &cfg.labels,
            )
            .await?
        };
        let auth_servers = cfg.auth_servers.as_deref().unwrap_or(&id.meta.auth_server);
        let channel = lazy_channel(auth_servers, id.meta.trust(), tls_identity(&id))?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let view = Arc::new(SharedView::default());
        let audit = AuditQueue::spooled(&dir.audit_spool(), channel.clone())?;
        let resources = cfg
            .resources
            .iter()
            .map(|r| pb::ServedResource {
                kind: cfg.kind.as_str().into(),
                name: r.name.clone(),
                labels: r.labels.clone().into_iter().collect(),
                addr: if r.addr.is_empty() {
                    cfg.advertise_addr.clone()
                } else {
                    r.addr.clone()
                },
                protocol: r.protocol.clone(),
                description: r.description.clone(),
            })
            .collect();
        let mut tasks = Vec::new();
        // The MDM service makes no access decision: it neither needs nor may watch the
        // cluster's roles and locks.
        if cfg.kind.is_access_point() {
            tasks.push(tokio::spawn(watch_loop(
                channel.clone(),
                view.clone(),
                shutdown_rx.clone(),
            )));
        }
        tasks.push(tokio::spawn(heartbeat_loop(
            channel.clone(),
            pb::HeartbeatRequest {
                addr: cfg.advertise_addr.clone(),
                labels: cfg.labels.clone().into_iter().collect(),
                version: env!("CARGO_PKG_VERSION").into(),
                ttl_seconds: (cfg.heartbeat_every * 3).as_secs().max(3),
                resources,
            },
            cfg.heartbeat_every,
            shutdown_rx,
        )));
        tracing::info!(
            kind = %id.meta.kind,
            name = %id.meta.name,
            cluster = %id.meta.cluster,
            addr = %cfg.advertise_addr,
            "access point runtime started"
        );
        Ok(Runtime {
            identity: Arc::new(id),
            dir,
            channel,
            view,
            audit,
            shutdown,
            tasks,
        })
    }

    /// Run `task` until the runtime stops.
    pub fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.push(tokio::spawn(task));
    }

    /// A receiver that turns `true` when the runtime is asked to stop.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Stop every task.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// Join: a fresh key, certificates from the auth service, everything saved in `dir`.
pub async fn join(
    dir: &DataDir,
    req: &JoinRequest,
    kind: ServiceKind,
    name: &str,
    addr: &str,
    labels: &BTreeMap<String, String>,
) -> Result<ServiceIdentity, AgentError> {
    let key = ClientKey::generate()?;
    let ssh_pub = key
        .ssh_public_key()?
        .to_openssh()
        .map_err(|e| AgentError::Corrupt(e.to_string()))?;
    let channel =
        dt_client::connect::channel(&req.auth_server, req.trust.clone(), TlsIdentity::Anonymous)
            .await?;
    let resp = NodeServiceClient::new(channel)
        .join_node(pb::JoinNodeRequest {
            token: req.token.expose().clone(),
            name: name.to_string(),
            labels: labels.clone().into_iter().collect(),
            addr: addr.to_string(),
            ssh_public_key: ssh_pub,
            tls_public_key_der: key.spki_der(),
            kind: kind.as_str().into(),
        })
        .await?
        .into_inner();
    let ssh_host_cert = if kind == ServiceKind::Node {
        Some(
            ssh_key::Certificate::from_openssh(resp.ssh_host_cert.trim()).map_err(|e| {
                AgentError::Auth(format!("the auth service sent a bad host certificate: {e}"))
            })?,
        )
    } else {
        None
    };
    let (ca_pin, insecure) = match &req.trust {
        TrustPolicy::Pin(p) => (p.clone(), false),
        TrustPolicy::Insecure => (String::new(), true),
        TrustPolicy::Capture => {
            return Err(AgentError::Config(
                "pass --ca-pin (printed by `devtrust start`) or --insecure".into(),
            ));
        }
    };
    let id = ServiceIdentity {
        meta: ServiceMeta {
            kind,
            name: name.to_string(),
            cluster: resp.cluster_name,
            auth_server: req.auth_server.clone(),
            ca_pin,
            insecure,
            valid_until_unix: resp.valid_until_unix,
        },
        key,
        ssh_host_cert,
        tls_cert_der: resp.tls_cert_der,
        user_ca_ssh: resp.user_ca_ssh_public_key,
        user_ca_der: Some(resp.user_ca_cert_der),
        host_ca_der: resp.host_ca_cert_der,
    };
    dir.save(&id)?;
    Ok(id)
}

/// The mTLS identity of a joined service.
pub fn tls_identity(id: &ServiceIdentity) -> TlsIdentity {
    TlsIdentity::Cert {
        cert_der: id.tls_cert_der.clone(),
        key_pkcs8_der: id.key.pkcs8_der().to_vec(),
    }
}

fn docs(resources: Vec<pb::ResourceJson>) -> Vec<Doc> {
    resources
        .into_iter()
        .map(|r| Doc {
            kind: r.kind,
            json: r.json,
        })
        .collect()
}

/// Apply one watch message to the view.
pub fn apply(view: &SharedView, ev: pb::ClusterEvent) {
    use pb::cluster_event::Type;
    let now = OffsetDateTime::now_utc();
    match Type::try_from(ev.r#type).unwrap_or(Type::Unspecified) {
        Type::Snapshot => view.update(|v| v.replace_with_snapshot(&docs(ev.resources), now)),
        Type::Put => view.update(|v| {
            for d in docs(ev.resources) {
                v.put(&d);
            }
            v.confirm(now);
        }),
        Type::Delete => view.update(|v| {
            v.delete(&ev.kind, &ev.name);
            v.confirm(now);
        }),
        Type::Keepalive => view.update(|v| v.confirm(now)),
        Type::Unspecified => {}
    }
}

fn jitter(d: Duration) -> Duration {
    use rand::Rng;
    let ms = d.as_millis() as u64;
    Duration::from_millis(ms / 2 + rand::rng().random_range(0..=ms / 2 + 1))
}

async fn watch_loop(channel: Channel, view: Arc<SharedView>, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut client = NodeServiceClient::new(channel.clone());
        let attempt = async {
            let mut stream = client
                .watch_cluster(pb::WatchClusterRequest {})
                .await?
                .into_inner();
            let mut first = true;
            loop {
                match tokio::time::timeout(WATCH_SILENCE, stream.message()).await {
                    Ok(Ok(Some(ev))) => {
                        if first {
                            tracing::info!("cluster view received; watching for changes");
                            first = false;
                        }
                        apply(&view, ev);
                        backoff = Duration::from_millis(100);
                    }
                    Ok(Ok(None)) => return Err(tonic::Status::unavailable("the watch ended")),
                    Ok(Err(s)) => return Err(s),
                    Err(_) => {
                        return Err(tonic::Status::deadline_exceeded("the watch went silent"));
                    }
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), tonic::Status>(())
        };
        tokio::select! {
            r = attempt => {
                if let Err(s) = r {
                    tracing::warn!(error = %s.message(), retry_in_ms = backoff.as_millis() as u64, "cluster watch lost; reconnecting");
                }
            }
            _ = stop.wait_for(|s| *s) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(jitter(backoff)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn heartbeat_loop(
    channel: Channel,
    beat: pb::HeartbeatRequest,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut client = NodeServiceClient::new(channel);
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(s) = client.heartbeat(beat.clone()).await {
            tracing::warn!(error = %s.message(), "heartbeat failed; will retry");
        }
    }
}
