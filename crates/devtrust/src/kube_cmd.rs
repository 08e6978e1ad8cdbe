//! `devtrust kube start`: a Kubernetes access point on the access-point runtime.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use dt_agent::access::Freshness;
use dt_types::ServiceKind;
use serde::Deserialize;

use crate::node_cmd::{
    AccessPointFlags, JoinFlags, access_point_runtime, init_logging, parse_labels, runtime,
    until_stopped,
};

pub const DEFAULT_KUBE_DATA_DIR: &str = "/var/lib/devtrust-kube";

#[derive(Subcommand)]
pub enum KubeCmd {
    /// Run a Kubernetes access point: join the cluster (first start, with a `kube` join
    /// token), heartbeat the Kubernetes clusters so `dtsh kube ls` lists them, watch the
    /// cluster's roles, locks and device-trust settings, and let kubectl reach each API
    /// server only as the roles' kubernetes_labels, kubernetes_users, kubernetes_groups and
    /// the device-trust modes allow.
    ///
    /// The access point talks to the API server with its own credentials from a kubeconfig
    /// (a client certificate or a bearer token, and the server's CA), impersonating the
    /// user: those credentials need the `impersonate` verb on users and groups.
    Start(KubeStartArgs),
}

#[derive(Args)]
pub struct KubeStartArgs {
    /// Auth server address, HOST:PORT (several: HOST:PORT,HOST:PORT). Needed at the first
    /// start (with --token); later it replaces the addresses saved at join.
    #[arg(long, env = "DEVTRUST_AUTH_SERVER")]
    auth_server: Option<String>,
    /// Join token from `dtctl tokens add --type=kube` (first start).
    #[arg(long, env = "DEVTRUST_KUBE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The access point's name; with --kubeconfig also the cluster's name in devtrust
    /// (`dtsh kube ls`, `dtctl lock --kube-cluster`).
    #[arg(long)]
    name: String,
    /// Where kubectl connects (TLS with the user's devtrust certificate).
    #[arg(long, default_value = "127.0.0.1:3026")]
    listen: SocketAddr,
    /// The address clients dial, if not the listen address.
    #[arg(long)]
    advertise: Option<String>,
    /// Labels of the cluster, e.g. env=prod,team=billing (roles' kubernetes_labels match them).
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// The access point's credentials to the API server (current context).
    #[arg(long, required_unless_present = "config", conflicts_with = "config")]
    kubeconfig: Option<PathBuf>,
    /// Serve several clusters: a YAML file `clusters: [{name, kubeconfig, labels}]`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the access point keeps its identity and audit spool (0700).
    #[arg(long, env = "DEVTRUST_KUBE_DATA_DIR", default_value = DEFAULT_KUBE_DATA_DIR)]
    data_dir: PathBuf,
    #[command(flatten)]
    common: AccessPointFlags,
}

/// `--config FILE`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClustersFile {
    clusters: Vec<ClusterEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterEntry {
    name: String,
    kubeconfig: PathBuf,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

fn cluster(
    name: &str,
    kubeconfig: &Path,
    labels: BTreeMap<String, String>,
) -> anyhow::Result<dt_kube::Cluster> {
    let upstream = dt_kube::kubeconfig::load(kubeconfig)
        .with_context(|| format!("cluster {name:?}: --kubeconfig"))?;
    Ok(dt_kube::Cluster {
        name: name.to_string(),
        labels,
        upstream,
    })
}

pub fn run_kube(cmd: KubeCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        KubeCmd::Start(a) => {
            init_logging(&a.common.log_format);
            runtime()?.block_on(start(a))
        }
    }
}

async fn start(a: KubeStartArgs) -> anyhow::Result<ExitCode> {
    let clusters = match (&a.kubeconfig, &a.config) {
        (Some(k), None) => vec![cluster(&a.name, k, parse_labels(&a.labels)?)?],
        (None, Some(c)) => {
            let file: ClustersFile = crate::node_cmd::read_config(c, "cluster list")?;
            let base = c.parent().unwrap_or(Path::new("."));
            file.clusters
                .into_iter()
                .map(|e| cluster(&e.name, &base.join(&e.kubeconfig), e.labels))
                .collect::<anyhow::Result<Vec<_>>>()?
        }
        _ => bail!("give --kubeconfig=FILE (one cluster) or --config=FILE (several)"),
    };
    let kube = dt_kube::start(dt_kube::KubeConfig {
        runtime: access_point_runtime(JoinFlags {
            kind: ServiceKind::Kube,
            name: &a.name,
            data_dir: &a.data_dir,
            advertise: &a.advertise,
            heartbeat: a.common.heartbeat,
            token: &a.token,
            auth_server: &a.auth_server,
            ca_pin: &a.common.ca_pin,
            insecure: a.common.insecure,
        })?,
        listen: a.listen,
        clusters: clusters.clone(),
        freshness: Freshness {
            strict_max_age: a.common.strict_max_age,
        },
    })
    .await
    .context("cannot start the Kubernetes access point")?;
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "devtrust Kubernetes access point {} is running",
        a.name
    );
    let _ = writeln!(out, "  listen:    {}", kube.addr);
    for c in &clusters {
        let _ = writeln!(out, "  cluster:   {} -> {}", c.name, c.upstream.server);
    }
    let _ = writeln!(out, "  data dir:  {}", a.data_dir.display());
    let _ = writeln!(out, "Next: dtsh kube login NAME, then kubectl");
    let _ = out.flush();
    until_stopped().await;
    kube.stop().await;
    let _ = writeln!(out, "devtrust Kubernetes access point {} stopped", a.name);
    Ok(ExitCode::SUCCESS)
}
