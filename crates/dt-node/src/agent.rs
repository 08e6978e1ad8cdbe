//! The node runtime: join (once), then heartbeat, keep a live watch of the cluster, send
//! audit events, and serve SSH (or, in OpenSSH mode, keep the view cached on disk for
//! `devtrust openssh-principals`).
//!
//! The watch reconnects with exponential backoff (100 ms doubling to [`MAX_BACKOFF`], with
//! jitter) whenever the stream ends, fails, or stays silent longer than
//! [`WATCH_SILENCE`] (the auth service sends a keepalive every 2 s). Until the first snapshot
//! arrives every access is denied; afterwards the last view is kept and its age tracked.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dt_ca::{ClientKey, SshUserCaKey};
use dt_client::{Identity as TlsIdentity, TrustPolicy};
use dt_proto::v1 as pb;
use dt_proto::v1::node_service_client::NodeServiceClient;
use dt_types::Secret;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::access::{Freshness, NodeFacts};
use crate::audit::AuditQueue;
use crate::client::lazy_channel;
use crate::error::NodeError;
use crate::identity::{DataDir, NodeIdentity, NodeMeta, write_private};
use crate::server::{self, NodeState, SharedView};
use crate::users::RunAs;
use crate::view::{Doc, ViewFile};

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

/// What to run.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Serve SSH on this address (port 0 picks one).
    Ssh { listen: SocketAddr },
    /// Agentless: an OpenSSH sshd serves at `addr`; keep the view cached for its helper.
    OpenSsh { addr: String },
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub name: String,
    /// The address clients dial (defaults to the listen address).
    pub advertise_addr: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub heartbeat_every: Duration,
    pub mode: Mode,
    pub freshness: Freshness,
    /// Needed when the data dir holds no identity yet.
    pub join: Option<JoinRequest>,
    /// Serve `/metrics` and `/readyz` over plain HTTP here (SSH mode).
    pub metrics_listen: Option<SocketAddr>,
    /// Auth servers to use instead of the ones saved at join (`HOST:PORT[,HOST:PORT...]`),
    /// e.g. to add a second auth server to a joined node.
    pub auth_servers: Option<String>,
}

/// A running node.
pub struct RunningNode {
    /// Where SSH is served (SSH mode).
    pub ssh_addr: Option<SocketAddr>,
    /// Where `/metrics` is served (`--metrics-listen`).
    pub metrics_addr: Option<SocketAddr>,
    pub state: Option<Arc<NodeState>>,
    pub view: Arc<SharedView>,
    pub identity_name: String,
    pub cluster: String,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningNode {
    /// Stop serving and end the background tasks.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }

    /// Resolves when a shutdown was requested.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

/// Join: a fresh key, certificates from the auth service, everything saved in `dir`.
pub async fn join(
    dir: &DataDir,
    req: &JoinRequest,
    name: &str,
    addr: &str,
    labels: &BTreeMap<String, String>,
) -> Result<NodeIdentity, NodeError> {
    let key = ClientKey::generate()?;
    let ssh_pub = key
        .ssh_public_key()?
        .to_openssh()
        .map_err(|e| NodeError::Corrupt(e.to_string()))?;
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
            kind: dt_types::ServiceKind::Node.as_str().into(),
        })
        .await?
        .into_inner();
    let ssh_host_cert =
        ssh_key::Certificate::from_openssh(resp.ssh_host_cert.trim()).map_err(|e| {
            NodeError::Auth(format!("the auth service sent a bad host certificate: {e}"))
        })?;
    let (ca_pin, insecure) = match &req.trust {
        TrustPolicy::Pin(p) => (p.clone(), false),
        TrustPolicy::Insecure => (String::new(), true),
        TrustPolicy::Capture => {
            return Err(NodeError::Config(
                "pass --ca-pin (printed by `devtrust start`) or --insecure".into(),
            ));
        }
    };
    let id = NodeIdentity {
        meta: NodeMeta {
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
        host_ca_der: resp.host_ca_cert_der,
    };
    dir.save(&id)?;
    Ok(id)
}

/// The mTLS identity of a joined node.
pub fn tls_identity(id: &NodeIdentity) -> TlsIdentity {
    TlsIdentity::Cert {
        cert_der: id.tls_cert_der.clone(),
        key_pkcs8_der: id.key.pkcs8_der().to_vec(),
    }
}

/// Load (or, with a token, create) the identity and start everything.
pub async fn start(cfg: NodeConfig) -> Result<RunningNode, NodeError> {
    let dir = DataDir::new(&cfg.data_dir);
    dir.ensure()?;
    let listener = match &cfg.mode {
        Mode::Ssh { listen } => Some(
            tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| NodeError::Config(format!("cannot listen on {listen}: {e}")))?,
        ),
        Mode::OpenSsh { .. } => None,
    };
    let ssh_addr = match &listener {
        Some(l) => Some(
            l.local_addr()
                .map_err(|e| NodeError::io(&cfg.data_dir, e))?,
        ),
        None => None,
    };
    let advertise = match (&cfg.advertise_addr, &cfg.mode, ssh_addr) {
        (Some(a), _, _) => a.clone(),
        (None, Mode::OpenSsh { addr }, _) => addr.clone(),
        (None, _, Some(a)) => a.to_string(),
        (None, _, None) => {
            return Err(NodeError::Config(
                "give the address clients dial with --advertise".into(),
            ));
        }
    };
    let id = if dir.exists() {
        let id = dir.load()?;
        if id.meta.name != cfg.name {
            return Err(NodeError::Config(format!(
                "{} belongs to node {:?}, not {:?}; use another --data-dir or --name={}",
                cfg.data_dir.display(),
                id.meta.name,
                cfg.name,
                id.meta.name
            )));
        }
        id
    } else {
        let Some(req) = &cfg.join else {
            return Err(NodeError::Config(format!(
                "{} holds no node identity yet: pass --auth-server, --token (from `dtctl tokens add --type=node`) and --ca-pin to join",
                cfg.data_dir.display()
            )));
        };
        join(&dir, req, &cfg.name, &advertise, &cfg.labels).await?
    };
    let auth_servers = cfg.auth_servers.as_deref().unwrap_or(&id.meta.auth_server);
    let channel = lazy_channel(auth_servers, id.meta.trust(), tls_identity(&id))?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let view = Arc::new(SharedView::default());
    let facts = NodeFacts {
        name: id.meta.name.clone(),
        labels: cfg.labels.clone(),
    };
    let mut tasks = vec![
        tokio::spawn(watch_loop(
            channel.clone(),
            view.clone(),
            shutdown_rx.clone(),
        )),
        tokio::spawn(heartbeat_loop(
            channel.clone(),
            advertise.clone(),
            cfg.labels.clone(),
            cfg.heartbeat_every,
            shutdown_rx.clone(),
        )),
    ];
    let audit = AuditQueue::start(channel.clone());
    let mut state_out = None;
    let mut metrics_addr = None;
    match (&cfg.mode, listener) {
        (Mode::Ssh { .. }, Some(listener)) => {
            let user_ca = SshUserCaKey::from_openssh(&id.user_ca_ssh)?;
            let host_key =
                russh::keys::PrivateKey::from_openssh(id.key.ssh_private_key_openssh()?.as_str())
                    .map_err(|e| NodeError::Corrupt(format!("node key: {e}")))?;
            let config = Arc::new(server::ssh_config(host_key, id.ssh_host_cert.clone()));
            let state = NodeState::new(
                facts,
                user_ca,
                view.clone(),
                audit,
                RunAs::detect(),
                cfg.freshness,
            );
            let mut stop = shutdown_rx.clone();
            tasks.push(tokio::spawn(server::serve(
                state.clone(),
                config,
                listener,
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            )));
            tasks.push(tokio::spawn(server::enforce_locks(state.clone())));
            if let Some(addr) = cfg.metrics_listen {
                let l = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                    NodeError::Config(format!("cannot listen for metrics on {addr}: {e}"))
                })?;
                metrics_addr = l.local_addr().ok();
                state.metrics.watch(&state, &view);
                tasks.push(tokio::spawn(crate::metrics::serve(
                    l,
                    state.clone(),
                    view.clone(),
                )));
            }
            state_out = Some(state);
        }
        (Mode::OpenSsh { .. }, _) => {
            tasks.push(tokio::spawn(cache_loop(
                dir.clone(),
                view.clone(),
                facts,
                shutdown_rx.clone(),
            )));
        }
        (Mode::Ssh { .. }, None) => {
            return Err(NodeError::Config(
                "internal: no listener in SSH mode".into(),
            ));
        }
    }
    tracing::info!(
        node = %id.meta.name,
        cluster = %id.meta.cluster,
        addr = %advertise,
        "node started"
    );
    Ok(RunningNode {
        ssh_addr,
        metrics_addr,
        state: state_out,
        view,
        identity_name: id.meta.name.clone(),
        cluster: id.meta.cluster.clone(),
        shutdown,
        tasks,
    })
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
    addr: String,
    labels: BTreeMap<String, String>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut client = NodeServiceClient::new(channel);
    let ttl = (every * 3).as_secs().max(3);
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let r = client
            .heartbeat(pb::HeartbeatRequest {
                addr: addr.clone(),
                labels: labels.clone().into_iter().collect(),
                version: env!("CARGO_PKG_VERSION").into(),
                ttl_seconds: ttl,
                resources: Vec::new(),
            })
            .await;
        if let Err(s) = r {
            tracing::warn!(error = %s.message(), "heartbeat failed; will retry");
        }
    }
}

/// OpenSSH mode: keep `cluster-view.json` current (rewritten on change and at least every
/// second while the watch confirms the view).
async fn cache_loop(
    dir: DataDir,
    view: Arc<SharedView>,
    facts: NodeFacts,
    mut stop: watch::Receiver<bool>,
) {
    let mut changed = view.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_written: Option<OffsetDateTime> = None;
    loop {
        tokio::select! {
            _ = changed.changed() => {}
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let file = view.read(|v| {
            if v.confirmed_at() == last_written && last_written.is_some() {
                None
            } else {
                ViewFile::from_view(v, &facts).map(|f| (f, v.confirmed_at()))
            }
        });
        if let Some((file, at)) = file {
            match serde_json::to_vec(&file) {
                Ok(bytes) => match write_private(&dir.view_cache(), &bytes) {
                    Ok(()) => last_written = at,
                    Err(e) => tracing::warn!(error = %e, "cannot write the cluster view cache"),
                },
                Err(e) => tracing::warn!(error = %e, "cannot encode the cluster view cache"),
            }
        }
    }
}
