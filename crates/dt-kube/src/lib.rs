//! devtrust's Kubernetes access point (`devtrust kube start`): `kubectl` reaches a
//! Kubernetes API server through it, and only as the runtime's decision allows.
//!
//! For each request (see [`proxy`]):
//!
//! 1. TLS with the user's devtrust certificate (user CA; it carries the device when the
//!    user's login authenticated one). The access point presents a serving certificate
//!    for its own key ([`tls`]), which `dtsh kube login` pins in the kubeconfig after
//!    checking the host CA vouches for that key as this access point.
//! 2. The cluster from the path (`/kube/NAME`), the impersonation the client asked for
//!    (`--as`, `--as-group`), and one decision, [`dt_agent::access::decide`] for
//!    [`dt_authz::Target::Kube`]: locks, the cluster-wide device-trust mode, the roles'
//!    `kubernetes_labels`, `kubernetes_users` and `kubernetes_groups` (deny first), and the
//!    granting roles' device-trust modes. A refusal is a `metav1.Status` kubectl prints and
//!    an `access.denied` audit event.
//! 3. Allowed: the request goes to the API server with the access point's own credentials
//!    (from a kubeconfig, [`kubeconfig`]) and the `Impersonate-User`/`Impersonate-Group`
//!    headers the access point sets itself ([`dt_authz::kube_impersonation`] for what the
//!    client did not ask). `kube.request` audits verb, resource, namespace and response code.
//! 4. Watches, `logs -f` and upgraded streams (exec, attach, port-forward; WebSocket and
//!    SPDY alike, passed through) are live sessions: a lock ends them within a sweep.
//!
//! What it deliberately does not do: speak HTTP/2 to clients (upgrades need HTTP/1.1), or
//! honour `Impersonate-Uid`/`Impersonate-Extra-*` from clients (refused).

pub mod kubeconfig;
pub mod proxy;
pub mod request;
pub mod status;
pub mod tls;
pub mod ws;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use dt_agent::access::Freshness;
use dt_agent::sessions::SessionRegistry;
use dt_agent::{AgentError, Runtime, RuntimeConfig, Served};
use dt_types::ServiceKind;

pub use proxy::KubeSession;

/// One Kubernetes cluster served.
#[derive(Clone, Debug)]
pub struct Cluster {
    /// Its name in devtrust (`dtsh kube ls`, locks' `kube_cluster`).
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub upstream: kubeconfig::Upstream,
}

#[derive(Clone, Debug)]
pub struct KubeConfig {
    /// The runtime (kind `kube`, name, join, data dir). Its `resources` are filled from
    /// `clusters`.
    pub runtime: RuntimeConfig,
    pub listen: SocketAddr,
    pub clusters: Vec<Cluster>,
    pub freshness: Freshness,
}

/// What every connection shares.
pub struct KubeState {
    /// The access point's name.
    pub name: String,
    pub clusters: BTreeMap<String, Cluster>,
    pub view: Arc<dt_agent::view::SharedView>,
    pub audit: dt_agent::audit::AuditQueue,
    pub sessions: Arc<SessionRegistry<KubeSession>>,
    pub freshness: Freshness,
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub verifier: Arc<tls::UserCertVerifier>,
}

/// A running Kubernetes access point.
pub struct RunningKube {
    pub addr: SocketAddr,
    pub state: Arc<KubeState>,
    runtime: Runtime,
}

impl RunningKube {
    pub async fn stop(self) {
        self.runtime.stop().await;
    }

    pub fn audit_pending(&self) -> u64 {
        self.runtime.audit.pending()
    }
}

/// The names the serving certificate carries: the advertised host, the listen address when
/// it is a specific one, and loopback.
fn serving_names(advertise: &str, listen: SocketAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let host = advertise
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(advertise)
        .trim_start_matches('[')
        .trim_end_matches(']');
    if !host.is_empty() {
        names.push(host.to_string());
    }
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    names
}

/// Join (if needed), start the runtime, and serve the clusters on `cfg.listen`.
pub async fn start(mut cfg: KubeConfig) -> Result<RunningKube, AgentError> {
    if cfg.clusters.is_empty() {
        return Err(AgentError::Config("no Kubernetes cluster to serve".into()));
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| AgentError::Config(format!("cannot listen on {}: {e}", cfg.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| AgentError::Config(format!("listener: {e}")))?;
    if cfg.runtime.advertise_addr.is_empty() {
        cfg.runtime.advertise_addr = addr.to_string();
    }
    if cfg.runtime.kind != ServiceKind::Kube {
        return Err(AgentError::Config(format!(
            "a Kubernetes access point joins as kind kube, not {}",
            cfg.runtime.kind
        )));
    }
    let mut clusters = BTreeMap::new();
    for c in &cfg.clusters {
        if c.name.is_empty() || c.name.contains('/') || c.name.chars().any(char::is_control) {
            return Err(AgentError::Config(format!(
                "cluster name {:?}: use letters, digits, '-', '.' or '_'",
                c.name
            )));
        }
        if clusters.insert(c.name.clone(), c.clone()).is_some() {
            return Err(AgentError::Config(format!(
                "cluster {:?} is configured twice",
                c.name
            )));
        }
    }
    cfg.runtime.resources = cfg
        .clusters
        .iter()
        .map(|c| Served {
            name: c.name.clone(),
            labels: c.labels.clone(),
            protocol: String::new(),
            description: format!("Kubernetes API at {}", c.upstream.server),
            // The access point's advertised address.
            addr: String::new(),
        })
        .collect();
    let names = serving_names(&cfg.runtime.advertise_addr, addr);
    let mut runtime = Runtime::start(cfg.runtime.clone()).await?;
    let serving = tls::serving_cert(&runtime.identity, &runtime.dir.dir, &names)?;
    let (acceptor, verifier) = tls::acceptor(&runtime.identity, serving)?;
    let state = Arc::new(KubeState {
        name: cfg.runtime.name.clone(),
        clusters,
        view: runtime.view.clone(),
        audit: runtime.audit.clone(),
        sessions: Arc::new(SessionRegistry::default()),
        freshness: cfg.freshness,
        acceptor,
        verifier,
    });
    let shutdown = runtime.shutdown_signal();
    runtime.spawn(proxy::serve(state.clone(), listener, shutdown));
    runtime.spawn(dt_agent::sessions::enforce(
        state.sessions.clone(),
        state.view.clone(),
        state.freshness,
        "Kubernetes access point",
        move |_, session: KubeSession, why| async move { proxy::end_session(session, why) },
    ));
    tracing::info!(name = %cfg.runtime.name, %addr, clusters = cfg.clusters.len(), "Kubernetes access point serving");
    Ok(RunningKube {
        addr,
        state,
        runtime,
    })
}
