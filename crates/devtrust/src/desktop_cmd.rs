//! `devtrust desktop start`: a desktop access point (Linux X11 desktops in the browser) on
//! the access-point runtime.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use dt_agent::access::Freshness;
use dt_types::ServiceKind;

use crate::node_cmd::{
    AccessPointFlags, JoinFlags, access_point_runtime, init_logging, parse_labels, runtime,
    until_stopped,
};

pub const DEFAULT_DESKTOP_DATA_DIR: &str = "/var/lib/devtrust-desktop";

#[derive(Subcommand)]
pub enum DesktopCmd {
    /// Run a desktop access point: join the cluster (first start, with a `desktop` join
    /// token), heartbeat the desktop so the web UI lists it, watch the cluster's roles and
    /// locks, and open a private desktop for every browser session the roles allow.
    ///
    /// Each session is its own X server (`Xvfb -nolisten tcp` with its own cookie) running
    /// --session-command as the desktop login, reached only through the auth service's web
    /// UI (mTLS with the web session's certificate). Who may connect, and as which login, is
    /// decided by the roles' desktop_labels, desktop_logins and device_trust_mode (the
    /// cluster-wide device-trust mode does not apply to desktops); a lock ends live sessions.
    ///
    /// Run as root to serve any (non-root) login: each session then runs as that user. Run
    /// as a user to serve only that user's own desktop.
    ///
    /// Example:
    ///   dtctl tokens add --type=desktop
    ///   devtrust desktop start --name=lab --token=TOKEN --auth-server=auth:3080 \
    ///     --ca-pin=sha256:... --labels=env=lab --session-command='xterm'
    #[command(verbatim_doc_comment)]
    Start(DesktopStartArgs),
}

#[derive(Args)]
pub struct DesktopStartArgs {
    /// Auth server address, HOST:PORT (several: HOST:PORT,HOST:PORT). Needed at the first
    /// start (with --token); later it replaces the addresses saved at join.
    #[arg(long, env = "DEVTRUST_AUTH_SERVER")]
    auth_server: Option<String>,
    /// Join token from `dtctl tokens add --type=desktop` (first start).
    #[arg(long, env = "DEVTRUST_DESKTOP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The desktop's name in devtrust (the web UI, roles' locks, `dtctl lock --desktop`).
    #[arg(long)]
    name: String,
    /// What runs in each session, through `sh -c`, with DISPLAY and XAUTHORITY set: a
    /// window manager and a terminal, e.g. 'xfwm4 & exec xterm'. The session ends when it
    /// exits.
    #[arg(long, default_value = "xterm")]
    session_command: String,
    /// The X server binary.
    #[arg(long, default_value = "Xvfb")]
    xvfb: PathBuf,
    /// Where the auth service connects (TLS).
    #[arg(long, default_value = "127.0.0.1:3038")]
    listen: SocketAddr,
    /// The address the auth service dials, if not the listen address.
    #[arg(long)]
    advertise: Option<String>,
    /// Labels, e.g. env=lab,team=support (roles' desktop_labels match them).
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Where the access point keeps its identity and audit spool (0700).
    #[arg(long, env = "DEVTRUST_DESKTOP_DATA_DIR", default_value = DEFAULT_DESKTOP_DATA_DIR)]
    data_dir: PathBuf,
    #[command(flatten)]
    common: AccessPointFlags,
}

pub fn run_desktop(cmd: DesktopCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        DesktopCmd::Start(a) => {
            init_logging(&a.common.log_format);
            runtime()?.block_on(start(a))
        }
    }
}

async fn start(a: DesktopStartArgs) -> anyhow::Result<ExitCode> {
    if a.session_command.trim().is_empty() {
        bail!("--session-command is empty: name what runs in the session, e.g. xterm");
    }
    let running = dt_desktop::start(dt_desktop::DesktopConfig {
        runtime: access_point_runtime(JoinFlags {
            kind: ServiceKind::Desktop,
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
        desktop: dt_desktop::Desktop {
            name: a.name.clone(),
            labels: parse_labels(&a.labels)?,
        },
        x: dt_desktop::x11::XConfig {
            command: a.session_command.clone(),
            xvfb: a.xvfb.clone(),
        },
        freshness: Freshness {
            strict_max_age: a.common.strict_max_age,
        },
    })
    .await
    .context("cannot start the desktop access point")?;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "devtrust desktop access point {} is running", a.name);
    let _ = writeln!(out, "  listen:    {}", running.addr);
    let _ = writeln!(out, "  session:   {}", a.session_command);
    let _ = writeln!(out, "  data dir:  {}", a.data_dir.display());
    if dt_desktop::x11::effective_uid() != 0 {
        let _ = writeln!(
            out,
            "  note:      not running as root: only this user's own login can be served"
        );
    }
    let _ = writeln!(
        out,
        "Next: open the web UI (https://AUTH_ADDR/web/) and pick the desktop under Desktops"
    );
    let _ = out.flush();
    until_stopped().await;
    running.stop().await;
    let _ = writeln!(out, "devtrust desktop access point {} stopped", a.name);
    Ok(ExitCode::SUCCESS)
}
