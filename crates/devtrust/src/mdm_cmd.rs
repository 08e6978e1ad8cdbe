//! `devtrust mdm start`: the inventory sync service on the access-point runtime (join with
//! an `mdm` token, heartbeat), syncing every source of `--config` on its schedule and when
//! `dtctl mdm sync` asks.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use dt_types::ServiceKind;

use crate::node_cmd::{JoinFlags, access_point_runtime, init_logging, runtime, until_stopped};
use dt_cli::parse_duration;

pub const DEFAULT_MDM_DATA_DIR: &str = "/var/lib/devtrust-mdm";

#[derive(Subcommand)]
pub enum MdmCmd {
    /// Run the inventory sync: join the cluster (first start, with an `mdm` join token),
    /// then sync the device inventory from Jamf Pro and/or Microsoft Intune.
    ///
    /// A full sync reads every computer the MDM lists (Jamf: the inventory filter) and
    /// creates or updates devices by (OS, serial) with source {name, origin} and the MDM's
    /// profile (model, OS version and build, assigned user, local users), which
    /// auto-enrollment compares with the device. With `on_missing: DELETE`, a full sync that
    /// completed removes this source's devices the MDM no longer lists. A partial sync reads
    /// only what changed since the last sync. Devices of another source, or added by hand,
    /// are never changed.
    ///
    /// Config file (YAML):
    ///
    ///   jamf_service:
    ///     name: jamf-main                  # the devices' source name
    ///     api_endpoint: https://example.jamfcloud.com
    ///     ca_file: /etc/devtrust/jamf-ca.pem     # optional: a private CA
    ///     client_id: ...                   # an API client; or username + password_file
    ///     client_secret_file: /etc/devtrust/jamf-secret
    ///     inventory:
    ///       - filter_rsql: general.remoteManagement.managed==true   # the default
    ///         sync_period_partial: 6h      # 0s turns it off
    ///         sync_period_full: 24h
    ///         on_missing: NOOP             # or DELETE
    ///   intune_service:
    ///     name: intune-main
    ///     tenant: contoso.onmicrosoft.com
    ///     client_id: ...
    ///     client_secret_file: /etc/devtrust/intune-secret
    ///     sync_period_partial: 6h
    ///     sync_period_full: 24h
    ///     on_missing: NOOP
    ///
    /// Secrets are read from files, never from the command line, and never logged.
    /// `dtctl mdm status` shows the result of each sync; `dtctl mdm sync NAME` runs one now.
    /// More: docs/mdm.md.
    #[command(verbatim_doc_comment)]
    Start(MdmStartArgs),
}

#[derive(Args)]
pub struct MdmStartArgs {
    /// The sync config (see above).
    #[arg(long, short = 'c')]
    config: PathBuf,
    /// Auth server address, HOST:PORT (several: HOST:PORT,HOST:PORT). Needed at the first
    /// start (with --token); later it replaces the addresses saved at join.
    #[arg(long, env = "DEVTRUST_AUTH_SERVER")]
    auth_server: Option<String>,
    /// Join token from `dtctl tokens add --type=mdm` (first start).
    #[arg(long, env = "DEVTRUST_MDM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The service's name (`dtctl rm mdm/NAME` forgets it).
    #[arg(long, default_value = "mdm")]
    name: String,
    /// Where the service keeps its identity (0700).
    #[arg(long, env = "DEVTRUST_MDM_DATA_DIR", default_value = DEFAULT_MDM_DATA_DIR)]
    data_dir: PathBuf,
    /// Trust the auth server whose CA has this pin (printed by `devtrust start`).
    #[arg(long, conflicts_with = "insecure")]
    ca_pin: Option<String>,
    /// Do not verify the auth server (labs only).
    #[arg(long)]
    insecure: bool,
    /// How often to heartbeat.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    heartbeat: Duration,
    /// Log format: text or json.
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
    /// Only validate the config (keys, endpoints, secret files, ca_file) and exit.
    #[arg(long)]
    check: bool,
    /// The first wait before retrying after a 429 without Retry-After or a 5xx (it doubles
    /// each time). Hidden: tests shorten it; it can only lower the default.
    #[arg(long, value_parser = parse_duration, hide = true)]
    retry_base: Option<Duration>,
}

pub fn run_mdm(cmd: MdmCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        MdmCmd::Start(a) => {
            init_logging(&a.log_format);
            runtime()?.block_on(start(a))
        }
    }
}

async fn start(a: MdmStartArgs) -> anyhow::Result<ExitCode> {
    let cfg = dt_mdm::config::MdmConfig::load(&a.config)
        .with_context(|| format!("--config {}", a.config.display()))?;
    for w in &cfg.warnings {
        eprintln!("WARNING: {w}");
    }
    // Fail at start, not at the first sync, on an unreadable ca_file.
    for s in &cfg.sources {
        dt_mdm::source::MdmClient::new(s.clone())
            .with_context(|| format!("source {:?}", s.name()))?;
    }
    if a.check {
        for s in &cfg.sources {
            println!(
                "{}: source {} ({:?}) is valid",
                a.config.display(),
                s.name(),
                s.origin()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut rt = dt_agent::Runtime::start(access_point_runtime(JoinFlags {
        kind: ServiceKind::Mdm,
        name: &a.name,
        data_dir: &a.data_dir,
        advertise: &None,
        heartbeat: a.heartbeat,
        token: &a.token,
        auth_server: &a.auth_server,
        ca_pin: &a.ca_pin,
        insecure: a.insecure,
    })?)
    .await
    .context("cannot start the MDM sync service")?;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "devtrust MDM sync service {} is running", a.name);
    for s in &cfg.sources {
        let sched = s.schedule();
        let _ = writeln!(
            out,
            "  source:    {} ({:?}; full every {}, partial every {}, on_missing {:?})",
            s.name(),
            s.origin(),
            dt_types::duration::format_duration(sched.full),
            dt_types::duration::format_duration(sched.partial),
            sched.on_missing
        );
    }
    let _ = writeln!(out, "  data dir:  {}", a.data_dir.display());
    let _ = writeln!(out, "Next: dtctl mdm status, dtctl mdm sync NAME");
    let _ = out.flush();
    let channel = rt.channel.clone();
    let shutdown = rt.shutdown_signal();
    let sources = cfg.sources.clone();
    let policy = a.retry_base.map(|base| {
        let default = dt_mdm::http::RetryPolicy::default();
        dt_mdm::http::RetryPolicy {
            base: base.min(default.base),
            ..default
        }
    });
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<String>();
    rt.spawn(async move {
        if let Err(e) = dt_mdm::sync::serve(channel, sources, policy, shutdown).await {
            let _ = failed_tx.send(e.to_string());
        }
    });
    // Run until stopped, or until the sync cannot go on (its source belongs to another MDM
    // service, the auth service refuses it): then exit with the reason.
    let failure = tokio::select! {
        _ = until_stopped() => None,
        f = failed_rx => f.ok(),
    };
    rt.stop().await;
    let _ = writeln!(out, "devtrust MDM sync service {} stopped", a.name);
    match failure {
        None => Ok(ExitCode::SUCCESS),
        Some(e) => anyhow::bail!("the MDM sync stopped: {e}"),
    }
}
