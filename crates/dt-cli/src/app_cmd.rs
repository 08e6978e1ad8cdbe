//! `devtrust app start`: an app access point (internal HTTP apps) on the access-point runtime.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use dt_agent::RuntimeConfig;
use dt_agent::access::Freshness;
use dt_types::ServiceKind;

use crate::common::parse_duration;
use crate::node_cmd::{init_logging, join_request, parse_labels, runtime, until_stopped};

pub const DEFAULT_APP_DATA_DIR: &str = "/var/lib/devtrust-app";

#[derive(Subcommand)]
pub enum AppCmd {
    /// Run an app access point: join the cluster (first start, with an `app` join token),
    /// heartbeat the apps so `dtsh apps ls` lists them, watch the cluster's roles and locks,
    /// and let users reach each app only as their roles' app_labels and device_trust_mode
    /// allow (the cluster-wide device-trust mode does not apply to apps).
    ///
    /// Every forwarded request carries `devtrust-jwt-assertion`, a JWT the app can verify with
    /// https://AUTH_ADDR/.well-known/jwks.json (user, roles, traits, device id when trusted).
    Start(AppStartArgs),
}

#[derive(Args)]
pub struct AppStartArgs {
    /// Auth server address, HOST:PORT (several: HOST:PORT,HOST:PORT). Needed at the first
    /// start (with --token); later it replaces the addresses saved at join.
    #[arg(long, env = "DEVTRUST_AUTH_SERVER")]
    auth_server: Option<String>,
    /// Join token from `dtctl tokens add --type=app` (first start).
    #[arg(long, env = "DEVTRUST_APP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The app's name in devtrust (`dtsh apps ls`, `dtctl lock --app`). With --config: the
    /// access point's own name.
    #[arg(long)]
    name: String,
    /// Serve several apps, listed in a YAML file:
    ///
    ///   apps:
    ///     - name: wiki
    ///       uri: http://127.0.0.1:8080
    ///       public_addr: wiki.apps.example.com
    ///       labels: {env: prod}
    #[arg(long, conflicts_with_all = ["uri", "labels", "public_addr"], verbatim_doc_comment)]
    config: Option<PathBuf>,
    /// The app, http://HOST:PORT (a path prefix is kept).
    #[arg(long, required_unless_present = "config")]
    uri: Option<String>,
    /// Where users reach the app, e.g. wiki.apps.example.com or wiki.localhost:3080.
    #[arg(long)]
    public_addr: Option<String>,
    /// Where clients connect (TLS).
    #[arg(long, default_value = "127.0.0.1:3037")]
    listen: SocketAddr,
    /// The address clients dial, if not the listen address.
    #[arg(long)]
    advertise: Option<String>,
    /// Labels, e.g. env=prod,team=billing (roles' app_labels match them).
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Where the access point keeps its identity and audit spool (0700).
    #[arg(long, env = "DEVTRUST_APP_DATA_DIR", default_value = DEFAULT_APP_DATA_DIR)]
    data_dir: PathBuf,
    /// Trust the auth server whose CA has this pin (printed by `devtrust start`).
    #[arg(long, conflicts_with = "insecure")]
    ca_pin: Option<String>,
    /// Do not verify the auth server (labs only).
    #[arg(long)]
    insecure: bool,
    /// How often to heartbeat (the app is listed for three heartbeats).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    heartbeat: Duration,
    /// With `locking_mode: strict`, deny when the lock view is older than this.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    strict_max_age: Duration,
    /// Log format: text or json.
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
}

pub fn run_app(cmd: AppCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        AppCmd::Start(a) => {
            init_logging(&a.log_format);
            runtime()?.block_on(start(a))
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AppEntry {
    name: String,
    uri: String,
    public_addr: Option<String>,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AppFile {
    apps: Vec<AppEntry>,
}

fn app(
    name: String,
    uri: &str,
    public_addr: Option<String>,
    labels: std::collections::BTreeMap<String, String>,
) -> anyhow::Result<dt_app::App> {
    if name.is_empty() {
        bail!("an app without a name");
    }
    let parsed: http::Uri = uri
        .parse()
        .with_context(|| format!("app {name:?}: {uri:?} is not a URI (use http://HOST:PORT)"))?;
    let a = dt_app::App {
        public_addr: public_addr.unwrap_or_else(|| name.clone()),
        name,
        labels,
        uri: parsed,
    };
    a.check()?;
    Ok(a)
}

fn apps(a: &AppStartArgs) -> anyhow::Result<Vec<dt_app::App>> {
    let Some(path) = &a.config else {
        return Ok(vec![app(
            a.name.clone(),
            a.uri.as_deref().unwrap_or_default(),
            a.public_addr.clone(),
            parse_labels(&a.labels)?,
        )?]);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--config: cannot read {}", path.display()))?;
    let file: AppFile = serde_saphyr::from_str(&text)
        .with_context(|| format!("--config {}: not a valid app list", path.display()))?;
    if file.apps.is_empty() {
        bail!("--config {}: `apps` lists none", path.display());
    }
    file.apps
        .into_iter()
        .map(|e| app(e.name, &e.uri, e.public_addr, e.labels))
        .collect()
}

async fn start(a: AppStartArgs) -> anyhow::Result<ExitCode> {
    let served = apps(&a)?;
    let join = join_request(&a.token, &a.auth_server, &a.ca_pin, a.insecure)?;
    let running = dt_app::start(dt_app::AppConfig {
        runtime: RuntimeConfig {
            data_dir: a.data_dir.clone(),
            kind: ServiceKind::App,
            name: a.name.clone(),
            advertise_addr: a.advertise.clone().unwrap_or_default(),
            labels: Default::default(),
            resources: Vec::new(),
            heartbeat_every: a.heartbeat,
            auth_servers: match (&a.token, &a.auth_server) {
                (None, Some(addr)) => Some(addr.clone()),
                _ => None,
            },
            join,
        },
        listen: a.listen,
        apps: served.clone(),
        freshness: Freshness {
            strict_max_age: a.strict_max_age,
        },
    })
    .await
    .context("cannot start the app access point")?;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "devtrust app access point {} is running", a.name);
    let _ = writeln!(out, "  listen:    {}", running.addr);
    for s in &served {
        let _ = writeln!(
            out,
            "  app:       {} = {} ({})",
            s.name, s.uri, s.public_addr
        );
    }
    let _ = writeln!(out, "  data dir:  {}", a.data_dir.display());
    let _ = writeln!(
        out,
        "Next: dtsh apps ls, then dtsh proxy app NAME --port=8080 and open http://127.0.0.1:8080"
    );
    let _ = out.flush();
    until_stopped().await;
    running.stop().await;
    let _ = writeln!(out, "devtrust app access point {} stopped", a.name);
    Ok(ExitCode::SUCCESS)
}
