//! Starting an SSH node: the access-point runtime ([`dt_agent::Runtime`]: join, heartbeat,
//! the watched cluster view, the audit spool), then SSH on top of it (or, in OpenSSH mode,
//! the view cached on disk for `devtrust openssh-principals`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dt_agent::identity::{DataDir, ServiceIdentity, write_private};
use dt_agent::{Runtime, RuntimeConfig};
use dt_ca::SshUserCaKey;
use dt_types::ServiceKind;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::NodeError;
use crate::access::{Freshness, NodeFacts};
use crate::server::{self, NodeState, SharedView};
use crate::users::RunAs;
use crate::view::ViewFile;

pub use dt_agent::runtime::{
    DEFAULT_HEARTBEAT, JoinRequest, MAX_BACKOFF, WATCH_SILENCE, apply, tls_identity,
};

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
    runtime: Runtime,
}

impl RunningNode {
    /// Stop serving and end the background tasks.
    pub async fn stop(self) {
        self.runtime.stop().await;
    }

    /// Resolves when a shutdown was requested.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.runtime.shutdown_signal()
    }

    /// Audit events spooled and not yet acknowledged by the auth service.
    pub fn audit_pending(&self) -> u64 {
        self.runtime.audit.pending()
    }
}

/// Join as an SSH node: a fresh key, certificates from the auth service, everything saved
/// in `dir`.
pub async fn join(
    dir: &DataDir,
    req: &JoinRequest,
    name: &str,
    addr: &str,
    labels: &BTreeMap<String, String>,
) -> Result<ServiceIdentity, NodeError> {
    dt_agent::runtime::join(dir, req, ServiceKind::Node, name, addr, labels).await
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
    let mut runtime = Runtime::start(RuntimeConfig {
        data_dir: cfg.data_dir.clone(),
        kind: ServiceKind::Node,
        name: cfg.name.clone(),
        advertise_addr: advertise.clone(),
        labels: cfg.labels.clone(),
        // An SSH node serves itself.
        resources: Vec::new(),
        heartbeat_every: cfg.heartbeat_every,
        join: cfg.join.clone(),
        auth_servers: cfg.auth_servers.clone(),
    })
    .await?;
    let id = runtime.identity.clone();
    let view = runtime.view.clone();
    let shutdown_rx = runtime.shutdown_signal();
    // The auth service checked the name at join (resource name rules, the same as
    // `NodeName`'s); an identity on disk naming no valid node is corrupt.
    let name = dt_types::NodeName::parse(id.meta.name.as_str())
        .map_err(|e| NodeError::Corrupt(format!("the node identity in the data dir: {e}")))?;
    let facts = NodeFacts {
        name,
        labels: cfg.labels.clone(),
    };
    let mut state_out = None;
    let mut metrics_addr = None;
    match (&cfg.mode, listener) {
        (Mode::Ssh { .. }, Some(listener)) => {
            let user_ca = SshUserCaKey::from_openssh(&id.user_ca_ssh)?;
            let host_key =
                russh::keys::PrivateKey::from_openssh(id.key.ssh_private_key_openssh()?.as_str())
                    .map_err(|e| NodeError::Corrupt(format!("node key: {e}")))?;
            let host_cert = id.ssh_host_cert.clone().ok_or_else(|| {
                NodeError::Corrupt(format!(
                    "{} holds no SSH host certificate; remove it and join again",
                    cfg.data_dir.display()
                ))
            })?;
            let config = Arc::new(server::ssh_config(host_key, host_cert));
            let state = NodeState::new(
                facts,
                user_ca,
                view.clone(),
                runtime.audit.clone(),
                RunAs::detect(),
                cfg.freshness,
            );
            let mut stop = shutdown_rx.clone();
            runtime.spawn(server::serve(state.clone(), config, listener, async move {
                let _ = stop.wait_for(|s| *s).await;
            }));
            runtime.spawn(server::enforce_locks(state.clone()));
            if let Some(addr) = cfg.metrics_listen {
                let l = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                    NodeError::Config(format!("cannot listen for metrics on {addr}: {e}"))
                })?;
                metrics_addr = l.local_addr().ok();
                state.metrics.watch(&state, &view);
                runtime.spawn(crate::metrics::serve(l, state.clone(), view.clone()));
            }
            state_out = Some(state);
        }
        (Mode::OpenSsh { .. }, _) => {
            runtime.spawn(cache_loop(
                runtime.dir.clone(),
                view.clone(),
                facts,
                shutdown_rx.clone(),
            ));
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
        runtime,
    })
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
