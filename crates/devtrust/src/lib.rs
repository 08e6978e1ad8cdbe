//! `devtrust`: the server binary.

pub mod app_cmd;
pub mod db_cmd;
pub mod desktop_cmd;
pub mod kube_cmd;
pub mod mdm_cmd;
pub mod node_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dt_auth::config::{Config, LogFormat};

use dt_cli::report;

#[derive(Parser)]
#[command(
    name = "devtrust",
    version,
    about = "devtrust server: the auth service (and, later, access points)",
    long_about = "devtrust server.\n\nQuick start:\n  devtrust start --data-dir /tmp/devtrust\n  dtctl --data-dir /tmp/devtrust users add alice --roles=access,editor --logins=$USER"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the auth service (gRPC + HTTPS JSON API on one TLS listener).
    ///
    /// First start creates the cluster: its name, the user CA (SSH + X.509), the host CA,
    /// the TLS server certificate and a local admin identity for `dtctl --data-dir`.
    Start {
        /// Static configuration file (see `devtrust configure`).
        #[arg(long, short = 'c', env = "DEVTRUST_CONFIG")]
        config: Option<PathBuf>,
        /// Data directory (overrides the config's data_dir).
        #[arg(long, env = "DEVTRUST_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Listen address (overrides the config's listen), e.g. 127.0.0.1:3080; port 0 picks a free one.
        #[arg(long)]
        listen: Option<String>,
        /// Log format: text or json.
        #[arg(long, value_parser = ["text", "json"])]
        log_format: Option<String>,
        /// A load balancer whose X-Forwarded-For the web UI believes (repeat for several);
        /// device web authentication compares the browser's address with dtsh's.
        #[arg(long = "web-trusted-proxy", value_name = "IP")]
        web_trusted_proxies: Vec<std::net::IpAddr>,
        /// How long the device web token of a web login lives (at most, and by default, 5m).
        #[arg(long, env = "DEVTRUST_WEB_DEVICE_TOKEN_TTL", value_parser = dt_cli::parse_duration)]
        web_device_token_ttl: Option<std::time::Duration>,
    },
    /// Print an annotated sample devtrust.yaml.
    Configure,
    /// Validate a config file without starting.
    Check {
        #[arg(long, short = 'c')]
        config: PathBuf,
    },
    /// SSH access points: `devtrust node start`.
    #[command(subcommand)]
    Node(crate::node_cmd::NodeCmd),
    /// Database access points: `devtrust db start`.
    #[command(subcommand)]
    Db(crate::db_cmd::DbCmd),
    /// Kubernetes access points: `devtrust kube start`.
    #[command(subcommand)]
    Kube(crate::kube_cmd::KubeCmd),
    /// The inventory sync from Jamf Pro or Intune: `devtrust mdm start`.
    #[command(subcommand)]
    Mdm(crate::mdm_cmd::MdmCmd),
    /// App access points: `devtrust app start`.
    #[command(subcommand)]
    App(crate::app_cmd::AppCmd),
    /// Desktop access points (Linux X11 desktops in the browser): `devtrust desktop start`.
    #[command(subcommand)]
    Desktop(crate::desktop_cmd::DesktopCmd),
    /// sshd's AuthorizedPrincipalsCommand (%u %k %t): the devtrust decision for OpenSSH.
    OpensshPrincipals(crate::node_cmd::PrincipalsArgs),
    /// Print the sshd_config lines (and the CA file) for agentless OpenSSH access.
    OpensshSetup(crate::node_cmd::SetupArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    report(run(cli))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Configure => {
            print!("{}", dt_auth::config::SAMPLE);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Node(cmd) => crate::node_cmd::run_node(cmd),
        Cmd::Db(cmd) => crate::db_cmd::run_db(cmd),
        Cmd::Kube(cmd) => crate::kube_cmd::run_kube(cmd),
        Cmd::App(cmd) => crate::app_cmd::run_app(cmd),
        Cmd::Mdm(cmd) => crate::mdm_cmd::run_mdm(cmd),
        Cmd::Desktop(cmd) => crate::desktop_cmd::run_desktop(cmd),
        Cmd::OpensshPrincipals(a) => crate::node_cmd::principals(a),
        Cmd::OpensshSetup(a) => crate::node_cmd::setup(a),
        Cmd::Check { config } => {
            let c = Config::load(&config)?;
            println!(
                "{}: valid (listen {}, storage {}, data dir {})",
                config.display(),
                c.listen,
                c.storage.kind(),
                c.data_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Start {
            config,
            data_dir,
            listen,
            log_format,
            web_trusted_proxies,
            web_device_token_ttl,
        } => {
            let mut c = match &config {
                Some(p) => Config::load(p)?,
                None => Config::default(),
            };
            if let Some(d) = data_dir {
                c.data_dir = d;
            }
            if let Some(l) = listen {
                c.listen = l.parse().with_context(|| {
                    format!("--listen {l:?} is not an address like 127.0.0.1:3080")
                })?;
            }
            if let Some(f) = log_format {
                c.log_format = if f == "json" {
                    LogFormat::Json
                } else {
                    LogFormat::Text
                };
            }
            init_logging(&c);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let max_ttl = dt_auth::device_web::WEB_TOKEN_TTL;
            if web_device_token_ttl.is_some_and(|t| t > max_ttl || t.is_zero()) {
                anyhow::bail!("--web-device-token-ttl must be between 1s and 5m");
            }
            let web = dt_web::WebConfig {
                trusted_proxies: web_trusted_proxies,
                device_web_token_ttl: web_device_token_ttl.unwrap_or(max_ttl),
                ..Default::default()
            };
            rt.block_on(start(c, web))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init_logging(c: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DEVTRUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&c.log_level));
    // Colours only on a terminal: a log file or journald should not hold escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match c.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn start(config: Config, web: dt_web::WebConfig) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let mut config = config;
    config.listen = addr;
    let storage_desc = match config.sqlite_path() {
        Some(p) => format!("sqlite ({})", p.display()),
        None => "postgres".to_string(),
    };
    let srv = dt_auth::AuthServer::bootstrap(config.clone())
        .await
        .context("cannot start the auth service")?;
    let files = srv.write_data_dir(&[])?;
    // Through write_public: every file in the data dir is 0600 (std::fs::write would
    // leave this one at the umask's 0644).
    dt_auth::server::write_public(
        &config.data_dir.join("admin").join("auth-server"),
        addr.to_string().as_bytes(),
    )
    .context("writing the admin identity's server address")?;
    let tls = dt_auth::listener::tls_config(&srv, &files)?;
    let data_dir = config.data_dir.display().to_string();
    println!("devtrust auth service is running");
    println!("  cluster:   {}", srv.cluster_name);
    println!("  listen:    {addr}");
    println!("  web UI:    https://{addr}/web/");
    println!("  CA pin:    {}", srv.host_ca.pin());
    println!("  storage:   {storage_desc}");
    println!("  data dir:  {data_dir}");
    println!(
        "Next: dtctl --data-dir={data_dir} users add alice --roles=access,editor --logins=$USER"
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    tracing::info!(%addr, cluster = %srv.cluster_name, "auth service started");

    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!("shutting down");
    };
    let app = dt_web::mount(dt_auth::router(srv.clone()), srv.clone(), web);
    dt_auth::listener::serve_app(srv.clone(), app, listener, tls, shutdown).await;
    srv.backend.close().await;
    println!("devtrust auth service stopped");
    Ok(())
}
