//! `devtrust app start`: an app access point (internal HTTP apps) on the access-point runtime.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use dt_agent::access::Freshness;
use dt_types::ServiceKind;

use crate::node_cmd::{
    AccessPointFlags, JoinFlags, access_point_runtime, init_logging, parse_labels, runtime,
    until_stopped,
};
use dt_cli::parse_duration;

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
    ///     - name: grafana
    ///       uri: https://grafana.internal:3000
    ///       public_addr: grafana.apps.example.com
    ///       ca_file: /etc/devtrust/grafana-ca.pem   # https: trust this CA (default: the system's)
    ///       # insecure_skip_verify: true            # https without any check (labs only)
    ///       rewrite:
    ///         headers: ["X-Team: platform"]        # set on every request to the app
    #[arg(long, conflicts_with_all = ["uri", "labels", "public_addr", "description"], verbatim_doc_comment)]
    config: Option<PathBuf>,
    /// The app, http://HOST:PORT or https://HOST:PORT (checked against the system's roots;
    /// for a private CA or header rewrites, use --config). A path prefix is kept.
    #[arg(long, required_unless_present = "config")]
    uri: Option<String>,
    /// Where users reach the app, e.g. wiki.apps.example.com or wiki.localhost:3080.
    #[arg(long)]
    public_addr: Option<String>,
    /// What users see in `dtsh apps ls` and the web UI (e.g. "Team wiki").
    #[arg(long, default_value = "")]
    description: String,
    /// The auth service's web UI as browsers reach it, HOST:PORT: a browser without an app
    /// session is sent there to launch the app (default: the first auth server address).
    #[arg(long)]
    web_addr: Option<String>,
    /// How long the auth service's answer about a browser's app session is reused: a web
    /// logout reaches this access point within it (app logout and locks act at once).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    session_recheck: Duration,
    /// A certificate (PEM, with its chain) browsers trust for the apps' public addresses,
    /// e.g. one for *.apps.example.com. `dtsh proxy app` keeps using the access point's own
    /// certificate. Without it, browsers see the cluster's host CA, which they do not trust.
    #[arg(long, requires = "browser_key_file")]
    browser_cert_file: Option<PathBuf>,
    /// The key (PEM) of --browser-cert-file.
    #[arg(long, requires = "browser_cert_file")]
    browser_key_file: Option<PathBuf>,
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
    #[command(flatten)]
    common: AccessPointFlags,
}

pub fn run_app(cmd: AppCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        AppCmd::Start(a) => {
            init_logging(&a.common.log_format);
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
    /// What users see in `dtsh apps ls` and the web UI.
    #[serde(default)]
    description: String,
    /// https apps: the CA certificates (PEM) to check the app's certificate with.
    ca_file: Option<PathBuf>,
    /// https apps: no check at all (labs only).
    #[serde(default)]
    insecure_skip_verify: bool,
    #[serde(default)]
    rewrite: Rewrite,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Rewrite {
    /// `Name: value` headers set on every request to the app.
    #[serde(default)]
    headers: Vec<String>,
}

/// `Name: value` header rewrites.
fn rewrites(
    name: &str,
    lines: &[String],
) -> anyhow::Result<Vec<(http::HeaderName, http::HeaderValue)>> {
    lines
        .iter()
        .map(|l| {
            let (k, v) = l.split_once(':').with_context(|| {
                format!("app {name:?}: rewrite header {l:?} is not `Name: value`")
            })?;
            let k = http::HeaderName::from_bytes(k.trim().as_bytes())
                .with_context(|| format!("app {name:?}: {:?} is not a header name", k.trim()))?;
            let v = http::HeaderValue::from_str(v.trim())
                .with_context(|| format!("app {name:?}: the value of {k} is not a header value"))?;
            Ok((k, v))
        })
        .collect()
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
    description: String,
    tls: dt_app::UpstreamTls,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
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
        description,
        tls,
        headers,
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
            a.description.clone(),
            dt_app::UpstreamTls::System,
            Vec::new(),
        )?]);
    };
    let file: AppFile = crate::node_cmd::read_config(path, "app list")?;
    if file.apps.is_empty() {
        bail!("--config {}: `apps` lists none", path.display());
    }
    file.apps
        .into_iter()
        .map(|e| {
            let tls = match (e.ca_file, e.insecure_skip_verify) {
                (Some(_), true) => bail!(
                    "app {:?}: ca_file and insecure_skip_verify exclude each other",
                    e.name
                ),
                (Some(f), false) => dt_app::UpstreamTls::CaFile(f),
                (None, true) => dt_app::UpstreamTls::Insecure,
                (None, false) => dt_app::UpstreamTls::System,
            };
            let headers = rewrites(&e.name, &e.rewrite.headers)?;
            app(
                e.name,
                &e.uri,
                e.public_addr,
                e.labels,
                e.description,
                tls,
                headers,
            )
        })
        .collect()
}

async fn start(a: AppStartArgs) -> anyhow::Result<ExitCode> {
    let served = apps(&a)?;
    let running = dt_app::start(dt_app::AppConfig {
        runtime: access_point_runtime(JoinFlags {
            kind: ServiceKind::App,
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
        apps: served.clone(),
        freshness: Freshness {
            strict_max_age: a.common.strict_max_age,
        },
        web_addr: a.web_addr.clone().unwrap_or_default(),
        session_recheck: a.session_recheck,
        browser_cert: match (&a.browser_cert_file, &a.browser_key_file) {
            (Some(c), Some(k)) => Some(dt_app::BrowserCert {
                cert_file: c.clone(),
                key_file: k.clone(),
            }),
            _ => None,
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
        "Next: open https://PUBLIC_ADDR/ in a browser logged in to the web UI, or dtsh apps ls, then dtsh proxy app NAME --port=8080 and open http://127.0.0.1:8080"
    );
    let _ = out.flush();
    until_stopped().await;
    running.stop().await;
    let _ = writeln!(out, "devtrust app access point {} stopped", a.name);
    Ok(ExitCode::SUCCESS)
}
