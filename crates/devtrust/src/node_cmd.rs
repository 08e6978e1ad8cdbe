//! `devtrust node start`, `devtrust openssh-principals` and `devtrust openssh-setup`.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use dt_client::TrustPolicy;
use dt_node::access::Freshness;
use dt_node::agent::{self, JoinRequest, Mode, NodeConfig};
use dt_node::openssh::{self, PrincipalsAnswer, PrincipalsQuery};
use time::OffsetDateTime;

use dt_cli::parse_duration;

pub const DEFAULT_NODE_DATA_DIR: &str = "/var/lib/devtrust-node";

#[derive(Subcommand)]
pub enum NodeCmd {
    /// Run an SSH access point: join the cluster (first start, with --token), heartbeat,
    /// watch the cluster's roles, locks and device-trust settings, and serve SSH to holders
    /// of the cluster's user certificates.
    ///
    /// Run as root, sessions run as the login user. Run as an ordinary user, the node can
    /// only serve that user's own login.
    Start(StartArgs),
}

#[derive(Args)]
pub struct StartArgs {
    /// Auth server address, HOST:PORT; several auth servers of one cluster as
    /// HOST:PORT,HOST:PORT (the node fails over between them). Needed at the first start
    /// (with --token); later it replaces the addresses saved at join.
    #[arg(long, env = "DEVTRUST_AUTH_SERVER")]
    auth_server: Option<String>,
    /// Node join token from `dtctl tokens add --type=node` (first start).
    #[arg(long, env = "DEVTRUST_NODE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Serve Prometheus `/metrics` and `/readyz` over plain HTTP on this address (e.g.
    /// 127.0.0.1:9122): access decisions, live sessions, locks in force, watch lag.
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// This node's name, as `dtsh ls` and `dtsh ssh` use it (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Where to serve SSH.
    #[arg(long, default_value = "127.0.0.1:3022")]
    listen: SocketAddr,
    /// The address clients dial, if not the listen address (with --openssh: sshd's address).
    #[arg(long)]
    advertise: Option<String>,
    /// Labels, e.g. env=prod,team=web (roles' node_labels match them).
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Where the node keeps its identity (0700).
    #[arg(long, env = "DEVTRUST_NODE_DATA_DIR", default_value = DEFAULT_NODE_DATA_DIR)]
    data_dir: PathBuf,
    /// Agentless mode: do not serve SSH; keep the cluster view cached in the data dir for
    /// `devtrust openssh-principals` (an OpenSSH sshd at --advertise serves the sessions).
    #[arg(long, requires = "advertise")]
    openssh: bool,
    #[command(flatten)]
    common: AccessPointFlags,
}

#[derive(Args)]
pub struct PrincipalsArgs {
    /// The node data dir of `devtrust node start --openssh`.
    #[arg(long, default_value = DEFAULT_NODE_DATA_DIR)]
    data_dir: PathBuf,
    /// Deny when the cached cluster view is older than this.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    max_age: Duration,
    /// %u: the login.
    login: String,
    /// %k: the certificate, base64.
    cert: String,
    /// %t: the certificate type.
    cert_type: String,
}

#[derive(Args)]
pub struct SetupArgs {
    /// The node data dir of `devtrust node start --openssh`.
    #[arg(long, default_value = DEFAULT_NODE_DATA_DIR)]
    data_dir: PathBuf,
    /// Deny when the cached cluster view is older than this.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    max_age: Duration,
    /// Path of the devtrust binary sshd runs (default: this one). It and all its parent
    /// directories must be owned by root and not writable by others.
    #[arg(long)]
    helper: Option<PathBuf>,
}

pub(crate) fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DEVTRUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        b.json().try_init()
    } else {
        b.try_init()
    };
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "node".into())
}

pub(crate) fn parse_labels(items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for item in items.iter().filter(|s| !s.is_empty()) {
        let Some((k, v)) = item.split_once('=') else {
            bail!("--labels: {item:?} is not KEY=VALUE");
        };
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

/// The join request of the first start (`--token` with `--auth-server`), trusting the auth
/// server by `--ca-pin` or, in labs, `--insecure`.
pub(crate) fn join_request(
    token: &Option<String>,
    auth_server: &Option<String>,
    ca_pin: &Option<String>,
    insecure: bool,
) -> anyhow::Result<Option<JoinRequest>> {
    Ok(match (token, auth_server) {
        (Some(token), Some(addr)) => {
            let trust = if insecure {
                eprintln!(
                    "WARNING: --insecure: the auth server's identity is NOT verified. Use only in labs."
                );
                TrustPolicy::Insecure
            } else if let Some(pin) = ca_pin {
                TrustPolicy::Pin(pin.trim().to_ascii_lowercase())
            } else {
                bail!(
                    "pass --ca-pin=sha256:... (printed by `devtrust start`) to trust the auth server, or --insecure in labs"
                );
            };
            Some(JoinRequest {
                auth_server: addr.clone(),
                token: dt_types::Secret::new(token.clone()),
                trust,
            })
        }
        (Some(_), None) => bail!("--token needs --auth-server=HOST:PORT"),
        _ => None,
    })
}

/// The flags every access point takes the same way (`devtrust node|app|db|kube|desktop
/// start`).
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct AccessPointFlags {
    /// Trust the auth server whose CA has this pin (printed by `devtrust start`).
    #[arg(long, conflicts_with = "insecure")]
    pub ca_pin: Option<String>,
    /// Do not verify the auth server (labs only).
    #[arg(long)]
    pub insecure: bool,
    /// How often to heartbeat (what it serves is listed for three heartbeats).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub heartbeat: Duration,
    /// With `locking_mode: strict`, deny when the lock view is older than this.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub strict_max_age: Duration,
    /// Log format: text or json.
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    pub log_format: String,
}

pub(crate) struct JoinFlags<'a> {
    pub kind: dt_types::ServiceKind,
    pub name: &'a str,
    pub data_dir: &'a std::path::Path,
    pub advertise: &'a Option<String>,
    pub heartbeat: std::time::Duration,
    pub token: &'a Option<String>,
    pub auth_server: &'a Option<String>,
    pub ca_pin: &'a Option<String>,
    pub insecure: bool,
}

/// The runtime configuration of an access point from its join flags: the join request at
/// the first start, and `--auth-server` replacing the saved addresses later.
pub(crate) fn access_point_runtime(f: JoinFlags<'_>) -> anyhow::Result<dt_agent::RuntimeConfig> {
    Ok(dt_agent::RuntimeConfig {
        data_dir: f.data_dir.to_path_buf(),
        kind: f.kind,
        name: f.name.to_string(),
        advertise_addr: f.advertise.clone().unwrap_or_default(),
        labels: Default::default(),
        resources: Vec::new(),
        heartbeat_every: f.heartbeat,
        auth_servers: match (f.token, f.auth_server) {
            (None, Some(addr)) => Some(addr.clone()),
            _ => None,
        },
        join: join_request(f.token, f.auth_server, f.ca_pin, f.insecure)?,
    })
}

/// An access point's `--config FILE` (YAML), with errors that name the file and say what
/// it should hold (`what`: "an app list", "a database list"...). Unknown keys are refused
/// by the file types themselves (`deny_unknown_fields`).
pub(crate) fn read_config<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    what: &str,
) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--config: cannot read {}", path.display()))?;
    serde_saphyr::from_str(&text)
        .with_context(|| format!("--config {}: not a valid {what}", path.display()))
}

/// Wait for Ctrl-C or SIGTERM.
pub(crate) async fn until_stopped() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

pub fn run_node(cmd: NodeCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        NodeCmd::Start(a) => {
            init_logging(&a.common.log_format);
            runtime()?.block_on(start(a))
        }
    }
}

async fn start(a: StartArgs) -> anyhow::Result<ExitCode> {
    let name = a.name.clone().unwrap_or_else(hostname);
    let labels = parse_labels(&a.labels)?;
    let join = join_request(
        &a.token,
        &a.auth_server,
        &a.common.ca_pin,
        a.common.insecure,
    )?;
    let mode = if a.openssh {
        Mode::OpenSsh {
            addr: a.advertise.clone().unwrap_or_default(),
        }
    } else {
        Mode::Ssh { listen: a.listen }
    };
    let node = agent::start(NodeConfig {
        data_dir: a.data_dir.clone(),
        name: name.clone(),
        advertise_addr: a.advertise.clone(),
        labels,
        heartbeat_every: a.common.heartbeat,
        mode,
        freshness: Freshness {
            strict_max_age: a.common.strict_max_age,
        },
        metrics_listen: a.metrics_listen,
        auth_servers: match (&a.token, &a.auth_server) {
            (None, Some(addr)) => Some(addr.clone()),
            _ => None,
        },
        join,
    })
    .await
    .context("cannot start the node")?;
    if a.openssh {
        println!("devtrust node {name} is running (OpenSSH mode)");
        println!("  cluster:   {}", node.cluster);
        println!("  sshd:      {}", a.advertise.clone().unwrap_or_default());
        println!("  data dir:  {}", a.data_dir.display());
        println!(
            "Next: devtrust openssh-setup --data-dir={} (prints the sshd_config lines)",
            a.data_dir.display()
        );
    } else {
        println!("devtrust node {name} is running");
        println!("  cluster:   {}", node.cluster);
        if let Some(addr) = node.ssh_addr {
            println!("  listen:    {addr}");
        }
        if let Some(addr) = node.metrics_addr {
            println!("  metrics:   http://{addr}/metrics");
        }
        println!("  data dir:  {}", a.data_dir.display());
        println!("Next: dtsh ls; dtsh ssh LOGIN@{name}");
    }
    let _ = std::io::stdout().flush();
    until_stopped().await;
    node.stop().await;
    println!("devtrust node {name} stopped");
    Ok(ExitCode::SUCCESS)
}

/// `devtrust openssh-principals`: print the login when access is allowed, nothing otherwise.
/// Always exits 0 (sshd treats a failing command as "no principals" anyway, and logs stderr).
pub fn principals(a: PrincipalsArgs) -> anyhow::Result<ExitCode> {
    let q = PrincipalsQuery {
        data_dir: a.data_dir.clone(),
        max_age: a.max_age,
        login: a.login,
        cert_b64: a.cert,
        cert_type: a.cert_type,
    };
    match openssh::principals(&q, OffsetDateTime::now_utc()) {
        PrincipalsAnswer::Allow(login) => {
            println!("{login}");
        }
        PrincipalsAnswer::Deny { reason, event } => {
            eprintln!("devtrust: access denied to {}: {reason}", q.login);
            let rt = runtime()?;
            if let Err(e) = rt.block_on(openssh::send_event(&a.data_dir, *event)) {
                eprintln!("devtrust: could not record the audit event: {e}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `devtrust openssh-setup`: the sshd_config lines and the CA file.
pub fn setup(a: SetupArgs) -> anyhow::Result<ExitCode> {
    let helper = match a.helper {
        Some(h) => h,
        None => {
            std::env::current_exe().context("cannot find this program's path; pass --helper")?
        }
    };
    let lines = openssh::setup(&a.data_dir, &helper, a.max_age)?;
    let ca = std::fs::read_to_string(a.data_dir.join("user-ca.pub"))
        .with_context(|| format!("no user CA in {}", a.data_dir.display()))?;
    print!("{lines}");
    println!(
        "# The user CA ({}/user-ca.pub), the only issuer sshd should accept:\n# {}",
        a.data_dir.display(),
        ca.trim()
    );
    Ok(ExitCode::SUCCESS)
}
