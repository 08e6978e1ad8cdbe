//! `dtsh`: the user CLI.

pub mod app;
pub mod db;
pub mod device;
pub mod kube;
pub mod ssh;
pub mod web;

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use dt_client::profile::LoginMaterial;
use dt_client::{Profile, ProfileStore, TrustPolicy};
use dt_proto::v1 as pb;
use dt_types::UserName;
use time::OffsetDateTime;

use dt_cli::{Format, fmt_remaining, fmt_time, parse_duration, report};

#[derive(Parser)]
#[command(
    name = "dtsh",
    version,
    about = "devtrust user CLI: log in, check your certificates and devices",
    long_about = "devtrust user CLI.\n\nFirst login with the token an admin gave you:\n  dtsh login --proxy=HOST:PORT --user=NAME --signup-token=TOKEN\nThen:\n  dtsh status"
)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Log in and receive short-lived SSH and X.509 certificates for a key made here.
    Login {
        /// Auth server address, HOST:PORT; several auth servers of one cluster as
        /// HOST:PORT,HOST:PORT (dtsh fails over between them).
        #[arg(long, env = "DTSH_PROXY")]
        proxy: Option<String>,
        /// Your devtrust user name.
        #[arg(long, env = "DTSH_USER")]
        user: Option<UserName>,
        /// One-time signup token from `dtctl users add` (sets your password).
        #[arg(long)]
        signup_token: Option<String>,
        /// Read the password (or, with --signup-token, the new password) from stdin.
        #[arg(long)]
        password_stdin: bool,
        /// Trust the server whose CA has this pin (printed by `devtrust start`).
        #[arg(long, conflicts_with = "insecure")]
        ca_pin: Option<String>,
        /// Do not verify the server (labs only).
        #[arg(long)]
        insecure: bool,
        /// Certificate lifetime (capped by your roles), e.g. 8h.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        /// Log in as a bot with a join token from `dtctl bots add` (no password).
        #[arg(long, requires = "token")]
        bot: bool,
        /// The bot join token (with --bot).
        #[arg(long, requires = "bot")]
        token: Option<String>,
    },
    /// Forget all profiles, keys and certificates.
    Logout,
    /// Enroll and authenticate this device, or show what it reports.
    #[command(subcommand)]
    Device(crate::device::DeviceCmd),
    /// Register dtsh as this desktop's handler of devtrust:// links (device web authentication).
    InstallUrlHandler,
    /// Show the current profile.
    Status {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// List the SSH nodes that are online.
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Run a command or a shell on a node: dtsh ssh [LOGIN@]NODE [CMD...]
    Ssh(crate::ssh::SshArgs),
    /// Print an ssh_config block so plain OpenSSH reaches the nodes with this profile.
    Config,
    /// Databases: list, log in, connect with psql, log out.
    #[command(subcommand)]
    Db(crate::db::DbCmd),
    /// Kubernetes clusters: list, log in (a kubectl context), log out.
    #[command(subcommand)]
    Kube(crate::kube::KubeCmd),
    /// Apps: list the apps your roles reach.
    #[command(subcommand)]
    Apps(crate::app::AppsCmd),
    /// An app: log in, log out (then `dtsh proxy app NAME`).
    #[command(subcommand)]
    App(crate::app::AppCmd),
    /// Local ports that tunnel to access points: dtsh proxy db NAME --tunnel --port=N,
    /// dtsh proxy app NAME --port=N
    #[command(subcommand)]
    Proxy(crate::db::ProxyCmd),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return report(Err(e.into())),
    };
    report(rt.block_on(run(cli)))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Login {
            bot: true,
            proxy,
            token,
            ca_pin,
            insecure,
            ttl,
            format,
            ..
        } => crate::ssh::bot_login(proxy, token, ca_pin, insecure, ttl, format).await,
        Cmd::Login {
            proxy,
            user,
            signup_token,
            password_stdin,
            ca_pin,
            insecure,
            ttl,
            format,
            ..
        } => {
            login(LoginArgs {
                proxy,
                user,
                signup_token,
                password_stdin,
                ca_pin,
                insecure,
                ttl,
                format,
            })
            .await
        }
        Cmd::Logout => {
            let store = ProfileStore::from_env();
            if store.remove_all()? {
                println!("Logged out all users from all proxies.");
            } else {
                println!("All users logged out.");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Device(cmd) => crate::device::run(cmd).await,
        Cmd::InstallUrlHandler => crate::web::install_url_handler(),
        Cmd::Ls { format } => crate::ssh::ls(format).await,
        Cmd::Ssh(args) => crate::ssh::ssh(args).await,
        Cmd::Config => crate::ssh::config().await,
        Cmd::Db(cmd) => crate::db::run(cmd).await,
        Cmd::Kube(cmd) => crate::kube::run(cmd).await,
        Cmd::Proxy(cmd) => crate::db::proxy(cmd).await,
        Cmd::Apps(cmd) => crate::app::apps(cmd).await,
        Cmd::App(cmd) => crate::app::app(cmd).await,
        Cmd::Status { format } => {
            let store = ProfileStore::from_env();
            let profile = store.current()?;
            print_status(&store, &profile, format)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

struct LoginArgs {
    proxy: Option<String>,
    user: Option<UserName>,
    signup_token: Option<String>,
    password_stdin: bool,
    ca_pin: Option<String>,
    insecure: bool,
    ttl: Option<Duration>,
    format: Format,
}

fn read_secret(prompt: &str, from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        let pw = line.trim_end_matches(['\n', '\r']).to_string();
        if pw.is_empty() {
            bail!("--password-stdin: stdin was empty");
        }
        return Ok(pw);
    }
    rpassword::prompt_password(prompt)
        .context("cannot read a password from the terminal; use --password-stdin for scripts")
}

/// Trust for a first contact: the pin given, the profile's pin, `--insecure`, or ask once.
async fn trust_policy(
    store: &ProfileStore,
    proxy: &str,
    a: &LoginArgs,
) -> anyhow::Result<(TrustPolicy, String)> {
    if a.insecure {
        eprintln!("WARNING: --insecure: the server's identity is NOT verified. Use only in labs.");
        return Ok((TrustPolicy::Insecure, String::new()));
    }
    if let Some(pin) = &a.ca_pin {
        let pin = pin.trim().to_ascii_lowercase();
        if !pin.starts_with("sha256:")
            || pin.len() != 71
            || !pin[7..].chars().all(|c| c.is_ascii_hexdigit())
        {
            bail!(
                "--ca-pin must look like sha256:<64 hex characters> (printed by `devtrust start`)"
            );
        }
        return Ok((TrustPolicy::Pin(pin.clone()), pin));
    }
    if let Ok(p) = store.load(proxy)
        && !p.ca_pin.is_empty()
    {
        return Ok((TrustPolicy::Pin(p.ca_pin.clone()), p.ca_pin));
    }
    // Trust on first use: show the pin, ask once, remember it in the profile.
    let chain = dt_client::connect::fetch_server_chain(proxy).await?;
    let ca = chain.last().context("the server sent no certificate")?;
    let pin = dt_client::spki_pin(ca).map_err(anyhow::Error::msg)?;
    let mut tty = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
    {
        Ok(t) if std::io::stderr().is_terminal() || std::io::stdin().is_terminal() => t,
        _ => bail!(
            "the server at {proxy} is not trusted yet and there is no terminal to ask: pass --ca-pin={pin} after checking it against the pin `devtrust start` printed (or --insecure in labs)"
        ),
    };
    write!(
        tty,
        "The server at {proxy} presents CA pin\n  {pin}\nCompare it with the pin printed by `devtrust start`. Trust it? [y/N] "
    )?;
    tty.flush()?;
    let mut answer = String::new();
    std::io::BufReader::new(&mut tty).read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        bail!("server not trusted; nothing was saved");
    }
    Ok((TrustPolicy::Pin(pin.clone()), pin))
}

async fn login(a: LoginArgs) -> anyhow::Result<ExitCode> {
    let store = ProfileStore::from_env();
    let previous = store.current().ok();
    let proxy = a
        .proxy
        .clone()
        .or_else(|| previous.as_ref().map(|p| p.proxy.clone()))
        .context("--proxy=HOST:PORT is required for the first login")?;
    let user = a
        .user
        .clone()
        .or_else(|| {
            previous
                .as_ref()
                .filter(|p| p.proxy == proxy)
                .map(|p| p.username.clone())
        })
        .context("--user=NAME is required")?;
    let (policy, pin) = trust_policy(&store, &proxy, &a).await?;
    let (password, new_password) = match &a.signup_token {
        Some(_) => {
            let pw = read_secret(&format!("Choose a password for {user}: "), a.password_stdin)?;
            if !a.password_stdin {
                let again = read_secret("Repeat the password: ", false)?;
                if again != pw {
                    bail!("the passwords differ; nothing was changed");
                }
            }
            (String::new(), pw)
        }
        None => (
            read_secret(
                &format!("Enter password for devtrust user {user}: "),
                a.password_stdin,
            )?,
            String::new(),
        ),
    };

    let key = dt_ca::ClientKey::generate()?;
    let ssh_pub = key.ssh_public_key()?.to_openssh()?;
    let request = pb::LoginRequest {
        username: user.to_string(),
        password,
        signup_token: a.signup_token.clone().unwrap_or_default(),
        new_password,
        ssh_public_key: ssh_pub,
        tls_public_key_der: key.spki_der(),
        ttl_seconds: a.ttl.map(|d| d.as_secs()).unwrap_or(0),
        bot_token: String::new(),
    };
    // A login whose connection broke is repeated (on the next auth server when several are
    // listed); a refusal by the server is not.
    let resp = dt_client::session::login(&proxy, policy, request).await?;

    let profile = Profile {
        proxy: proxy.clone(),
        username: user,
        cluster: resp.cluster_name.clone(),
        ca_pin: pin,
        insecure: a.insecure,
        roles: resp.roles.clone(),
        logins: resp.logins.clone(),
        valid_until_unix: resp.valid_until_unix,
    };
    let key_openssh = key.ssh_private_key_openssh()?;
    let key_pem = key.to_pkcs8_pem();
    store.save(
        &profile,
        &LoginMaterial {
            key_openssh: &key_openssh,
            key_pkcs8_pem: &key_pem,
            ssh_cert: &resp.ssh_cert,
            tls_cert_der: &resp.tls_cert_der,
            host_ca_der: &resp.host_ca_cert_der,
            host_ca_ssh: &resp.host_ca_ssh_public_key,
        },
    )?;
    if let Err(e) = crate::device::after_login(&store).await {
        eprintln!("WARNING: device trust check failed: {e:#}");
    }
    print_status(&store, &profile, a.format)?;
    Ok(ExitCode::SUCCESS)
}

/// Extension names of the profile's SSH certificate, sorted.
fn cert_extensions(store: &ProfileStore, profile: &Profile) -> anyhow::Result<Vec<String>> {
    let path = store.files(&profile.proxy).ssh_cert();
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let cert = ssh_key::Certificate::from_openssh(text.trim())
        .with_context(|| format!("{} is not an SSH certificate; log in again", path.display()))?;
    let mut names: Vec<String> = cert.extensions().keys().cloned().collect();
    names.sort();
    Ok(names)
}

fn print_status(store: &ProfileStore, p: &Profile, format: Format) -> anyhow::Result<()> {
    let extensions = cert_extensions(store, p)?;
    let until = OffsetDateTime::from_unix_timestamp(p.valid_until_unix)?;
    let remaining = until - OffsetDateTime::now_utc();
    if format == Format::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "profile_url": p.proxy,
                "username": p.username,
                "cluster": p.cluster,
                "roles": p.roles,
                "logins": p.logins,
                "valid_until": until.format(&time::format_description::well_known::Rfc3339)?,
                "expired": remaining.is_negative(),
                "extensions": extensions,
                "ca_pin": p.ca_pin,
            }))?
        );
        return Ok(());
    }
    let validity = if remaining.is_negative() {
        "[EXPIRED]".to_string()
    } else {
        format!("[valid for {}]", fmt_remaining(remaining))
    };
    println!("> Profile URL:        {}", p.proxy);
    println!("  Logged in as:       {}", p.username);
    println!("  Cluster:            {}", p.cluster);
    println!("  Roles:              {}", p.roles.join(", "));
    println!("  Logins:             {}", p.logins.join(", "));
    println!("  Valid until:        {} {validity}", fmt_time(until));
    println!("  Extensions:         {}", extensions.join(", "));
    Ok(())
}
