//! `dtsh ls`, `dtsh ssh`, `dtsh config` and `dtsh login --bot`.
//!
//! `dtsh ssh` finds the node by name (`dtsh ls`), verifies it by its host certificate, logs
//! in with the profile's certificate, and turns a node's refusal into the messages of
//! DESIGN.md §6:
//!
//! - cluster-wide: `ERROR: ssh: rejected: administratively prohibited (unauthorized device)`
//! - role-based: `ERROR: access denied to LOGIN connecting to NODE`, then how to enroll
//! - lock: `ERROR: ssh: rejected: administratively prohibited (lock targeting Device:"ID" is in force)`
//!
//! The remote command's exit status becomes dtsh's; a connection that ends without one
//! exits 255, like OpenSSH.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use dt_client::access_point::{ACCESS_DENIED_PREFIX, TRUSTED_DEVICE_SUFFIX};
use dt_client::profile::LoginMaterial;
use dt_client::ssh_client::{self, ClientCreds, SshClientError};
use dt_client::{Profile, ProfileStore, TrustPolicy};
use dt_proto::v1 as pb;
use dt_types::UserName;
use russh::ChannelMsg;
use time::OffsetDateTime;

use dt_cli::{Format, fmt_remaining, fmt_time, table};

/// `dtsh ssh` arguments.
#[derive(Args, Debug)]
pub struct SshArgs {
    /// The login (OS user) on the node.
    #[arg(short = 'l', long = "login")]
    pub login: Option<String>,
    /// Ask for a terminal even when running a command.
    #[arg(short = 't')]
    pub tty: bool,
    /// Never ask for a terminal.
    #[arg(short = 'T', conflicts_with = "tty")]
    pub no_tty: bool,
    /// [LOGIN@]NODE (a node name from `dtsh ls`).
    pub target: String,
    /// The command to run (an interactive shell when omitted).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

async fn list_nodes(store: &ProfileStore, profile: &Profile) -> anyhow::Result<Vec<pb::NodeInfo>> {
    let session = dt_client::Session::open(store, profile.clone()).await?;
    Ok(session.nodes().await?)
}

fn labels_text(n: &pb::NodeInfo) -> String {
    let mut l: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    l.sort();
    l.join(",")
}

/// `dtsh ls`: live nodes.
pub async fn ls(format: Format) -> anyhow::Result<ExitCode> {
    let store = ProfileStore::from_env();
    let profile = store.current()?;
    let nodes = list_nodes(&store, &profile).await?;
    match format {
        Format::Json | Format::Yaml => {
            let v: Vec<serde_json::Value> = nodes
                .iter()
                .map(|n| {
                    serde_json::json!({
                        "name": n.name,
                        "addr": n.addr,
                        "labels": n.labels.iter().collect::<std::collections::BTreeMap<_, _>>(),
                        "version": n.version,
                        "last_heartbeat_unix": n.last_heartbeat_unix,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Format::Text => {
            let rows: Vec<Vec<String>> = nodes
                .iter()
                .map(|n| vec![n.name.clone(), n.addr.clone(), labels_text(n)])
                .collect();
            println!("{}", table(&["Node Name", "Address", "Labels"], &rows));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The profile's SSH key, certificate and host CA.
fn creds(store: &ProfileStore, profile: &Profile) -> anyhow::Result<ClientCreds> {
    let f = store.files(&profile.proxy);
    let read = |p: std::path::PathBuf| {
        std::fs::read_to_string(&p)
            .with_context(|| format!("cannot read {}; log in again", p.display()))
    };
    let c = ClientCreds::from_texts(
        &read(f.key())?,
        &read(f.ssh_cert())?,
        &read(f.known_hosts())?,
    )
    .map_err(|e| anyhow::anyhow!("your profile is damaged ({e}); run `dtsh login` again"))?;
    let valid_before = c.cert.valid_before();
    let now = OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
    if now >= valid_before {
        let until = OffsetDateTime::from_unix_timestamp(valid_before as i64)
            .map(fmt_time)
            .unwrap_or_default();
        bail!("your certificate expired at {until}; run `dtsh login` again");
    }
    Ok(c)
}

/// `[LOGIN@]NODE` and `-l`: the login and the node name.
fn split_target(args: &SshArgs, profile: &Profile) -> anyhow::Result<(String, String)> {
    let (login, node) = match args.target.rsplit_once('@') {
        Some((l, n)) => (Some(l.to_string()), n.to_string()),
        None => (None, args.target.clone()),
    };
    let login = match args.login.clone().or(login) {
        Some(l) => l,
        None => {
            let me = std::env::var("USER").unwrap_or_default();
            if profile.logins.contains(&me) {
                me
            } else if let Some(first) = profile.logins.first() {
                first.clone()
            } else {
                bail!(
                    "your certificate allows no logins; ask an admin (roles and --logins), then log in again"
                )
            }
        }
    };
    if node.is_empty() {
        bail!("name a node: dtsh ssh [LOGIN@]NODE (see `dtsh ls`)");
    }
    Ok((login, node))
}

/// The message and hint `dtsh` prints for a refused session.
pub fn rejection_message(description: &str) -> String {
    if let Some(rest) = description.strip_prefix(ACCESS_DENIED_PREFIX) {
        let (first, why) = match rest.split_once(": ") {
            Some((f, w)) => (f, Some(w)),
            None => (rest, None),
        };
        let mut m = format!("{ACCESS_DENIED_PREFIX}{first}");
        if why == Some(TRUSTED_DEVICE_SUFFIX) {
            m.push_str(
                "\nyour roles require a trusted device for this node: enroll this device with `dtsh device enroll --current-device` (or ask an admin for an enrollment token: `dtsh device enroll --token=TOKEN`), then run `dtsh logout; dtsh login` for certificates that carry it",
            );
        } else {
            m.push_str("\nyour roles do not allow this login on this node; see `dtsh status` for your logins");
        }
        m
    } else {
        format!("ssh: rejected: administratively prohibited ({description})")
    }
}

fn ssh_error(e: SshClientError) -> anyhow::Error {
    match e {
        SshClientError::ChannelRejected { description, .. } => {
            anyhow::anyhow!("{}", rejection_message(&description))
        }
        other => anyhow::anyhow!("ssh: {other}"),
    }
}

/// Restores the terminal when dropped.
struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    fn enter() -> Option<RawMode> {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

fn term_size() -> (u32, u32) {
    match rustix::termios::tcgetwinsize(std::io::stdout()) {
        Ok(w) if w.ws_col > 0 && w.ws_row > 0 => (u32::from(w.ws_col), u32::from(w.ws_row)),
        _ => (80, 24),
    }
}

/// Read stdin on a plain thread (a blocked read there never holds up the process's exit).
fn stdin_reader() -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// `dtsh ssh [LOGIN@]NODE [CMD...]`.
pub async fn ssh(args: SshArgs) -> anyhow::Result<ExitCode> {
    let store = ProfileStore::from_env();
    let profile = store.current()?;
    let creds = creds(&store, &profile)?;
    let (login, node_name) = split_target(&args, &profile)?;
    let nodes = match list_nodes(&store, &profile).await {
        Ok(n) => n,
        // A lock on the user or a role stops the call at the auth service already; say so
        // the way a node would.
        Err(e) if e.to_string().starts_with("lock targeting ") => {
            bail!("ssh: rejected: administratively prohibited ({e})")
        }
        Err(e) => return Err(e),
    };
    let Some(node) = nodes.iter().find(|n| n.name == node_name) else {
        bail!(
            "node {node_name:?} is not online in cluster {:?}, or your roles do not let you reach it (see `dtsh ls`)",
            profile.cluster
        );
    };
    let conn = ssh_client::connect(&node.addr, &node.name, &creds, &login)
        .await
        .map_err(ssh_error)?;
    let channel = conn.open_session().await.map_err(ssh_error)?;
    let command = args.command.join(" ");
    let interactive = command.is_empty();
    let want_tty = !args.no_tty && (args.tty || interactive) && std::io::stdin().is_terminal();
    if want_tty {
        let (cols, rows) = term_size();
        let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
        channel
            .request_pty(true, &term, cols, rows, 0, 0, &[])
            .await
            .map_err(|e| anyhow::anyhow!("ssh: cannot get a terminal: {e}"))?;
    }
    if interactive {
        channel
            .request_shell(true)
            .await
            .map_err(|e| anyhow::anyhow!("ssh: cannot start a shell: {e}"))?;
    } else {
        channel
            .exec(true, command.as_str())
            .await
            .map_err(|e| anyhow::anyhow!("ssh: cannot run the command: {e}"))?;
    }
    let raw = if want_tty { RawMode::enter() } else { None };
    let (mut read, write) = channel.split();
    let mut input = stdin_reader();
    let mut winch =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok();
    let mut exit: Option<u32> = None;
    let mut stdin_open = true;
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    loop {
        tokio::select! {
            msg = read.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    let _ = out.write_all(&data);
                    let _ = out.flush();
                }
                Some(ChannelMsg::ExtendedData { data, .. }) => {
                    let _ = err.write_all(&data);
                    let _ = err.flush();
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => exit = Some(exit_status),
                Some(ChannelMsg::ExitSignal { .. }) => exit = exit.or(Some(255)),
                Some(ChannelMsg::Failure) => {
                    drop(raw);
                    bail!("ssh: the node refused to start the session");
                }
                Some(ChannelMsg::Close) | None => break,
                Some(_) => {}
            },
            data = input.recv(), if stdin_open => match data {
                Some(d) => { let _ = write.data_bytes(d).await; }
                None => {
                    stdin_open = false;
                    if !want_tty {
                        let _ = write.eof().await;
                    }
                }
            },
            _ = async { match winch.as_mut() { Some(w) => { w.recv().await; } None => std::future::pending().await } } => {
                let (cols, rows) = term_size();
                let _ = write.window_change(cols, rows, 0, 0).await;
            }
        }
    }
    drop(raw);
    let reason = conn.disconnect_reason();
    conn.close().await;
    match exit {
        Some(code) => Ok(ExitCode::from(u8::try_from(code).unwrap_or(255))),
        None => {
            let why = reason
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "the session ended without an exit status".into());
            eprintln!("ERROR: ssh: connection to {node_name} closed: {why}");
            Ok(ExitCode::from(255))
        }
    }
}

/// `dtsh config`: an ssh_config block so plain OpenSSH reaches the live nodes with the
/// profile's key and certificate, verifying them by the cluster's host CA.
pub async fn config() -> anyhow::Result<ExitCode> {
    let store = ProfileStore::from_env();
    let profile = store.current()?;
    let f = store.files(&profile.proxy);
    let nodes = list_nodes(&store, &profile).await?;
    let q = |p: std::path::PathBuf| format!("\"{}\"", p.display());
    let mut s = format!(
        "# devtrust cluster {:?} via {}, generated by `dtsh config` on {}.\n# Run it again after nodes join or leave. Use: ssh -F THIS_FILE LOGIN@NODE\n",
        profile.cluster,
        profile.proxy,
        fmt_time(OffsetDateTime::now_utc())
    );
    for n in &nodes {
        let (host, port) = n
            .addr
            .rsplit_once(':')
            .map(|(h, p)| {
                (
                    h.trim_start_matches('[').trim_end_matches(']').to_string(),
                    p.to_string(),
                )
            })
            .unwrap_or((n.addr.clone(), "22".into()));
        s.push_str(&format!(
            "\nHost {name} {name}.{cluster}\n    HostName {host}\n    Port {port}\n    HostKeyAlias {name}\n    IdentityFile {key}\n    CertificateFile {cert}\n    IdentitiesOnly yes\n    UserKnownHostsFile {kh}\n    StrictHostKeyChecking yes\n    HostKeyAlgorithms ecdsa-sha2-nistp256-cert-v01@openssh.com\n",
            name = n.name,
            cluster = profile.cluster,
            key = q(f.key()),
            cert = q(f.ssh_cert()),
            kh = q(f.known_hosts()),
        ));
    }
    // A closed pipe (`dtsh config | head`) is not an error worth a panic.
    let _ = std::io::stdout().write_all(s.as_bytes());
    Ok(ExitCode::SUCCESS)
}

/// `dtsh login --bot --token=T --proxy=HOST:PORT`: certificates for a bot, marked
/// `devtrust-bot`, with the join token from `dtctl bots add`.
pub async fn bot_login(
    proxy: Option<String>,
    token: Option<String>,
    ca_pin: Option<String>,
    insecure: bool,
    ttl: Option<Duration>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let proxy = proxy.context("--proxy=HOST:PORT is required")?;
    let token = token.context("--token=TOKEN (from `dtctl bots add`) is required with --bot")?;
    let (policy, pin) = match (ca_pin, insecure) {
        (_, true) => {
            eprintln!(
                "WARNING: --insecure: the server's identity is NOT verified. Use only in labs."
            );
            (TrustPolicy::Insecure, String::new())
        }
        (Some(p), false) => {
            let p = p.trim().to_ascii_lowercase();
            (TrustPolicy::Pin(p.clone()), p)
        }
        (None, false) => bail!(
            "a bot trusts the server only by --ca-pin=sha256:... (printed by `devtrust start`), or --insecure in labs"
        ),
    };
    let key = dt_ca::ClientKey::generate()?;
    let request = pb::LoginRequest {
        ssh_public_key: key.ssh_public_key()?.to_openssh()?,
        tls_public_key_der: key.spki_der(),
        ttl_seconds: ttl.map(|d| d.as_secs()).unwrap_or(0),
        bot_token: token,
        ..Default::default()
    };
    let resp = dt_client::session::login(&proxy, policy, request).await?;
    let cert = ssh_key::Certificate::from_openssh(resp.ssh_cert.trim())?;
    let profile = Profile {
        proxy: proxy.clone(),
        username: UserName::parse(cert.key_id()).with_context(|| {
            format!(
                "the server's certificate names {:?}, which is not a user name",
                cert.key_id()
            )
        })?,
        cluster: resp.cluster_name.clone(),
        ca_pin: pin,
        insecure,
        roles: resp.roles.clone(),
        logins: resp.logins.clone(),
        valid_until_unix: resp.valid_until_unix,
    };
    let store = ProfileStore::from_env();
    store.save(
        &profile,
        &LoginMaterial {
            key_openssh: &key.ssh_private_key_openssh()?,
            key_pkcs8_pem: &key.to_pkcs8_pem(),
            ssh_cert: &resp.ssh_cert,
            tls_cert_der: &resp.tls_cert_der,
            host_ca_der: &resp.host_ca_cert_der,
            host_ca_ssh: &resp.host_ca_ssh_public_key,
        },
    )?;
    let mut extensions: Vec<String> = cert.extensions().keys().cloned().collect();
    extensions.sort();
    let until = OffsetDateTime::from_unix_timestamp(profile.valid_until_unix)?;
    if format == Format::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "profile_url": profile.proxy,
                "username": profile.username,
                "bot": true,
                "cluster": profile.cluster,
                "roles": profile.roles,
                "logins": profile.logins,
                "valid_until": until.format(&time::format_description::well_known::Rfc3339)?,
                "extensions": extensions,
            }))?
        );
    } else {
        println!("> Profile URL:        {}", profile.proxy);
        println!("  Logged in as:       {} (bot)", profile.username);
        println!("  Cluster:            {}", profile.cluster);
        println!("  Roles:              {}", profile.roles.join(", "));
        println!("  Logins:             {}", profile.logins.join(", "));
        println!(
            "  Valid until:        {} [valid for {}]",
            fmt_time(until),
            fmt_remaining(until - OffsetDateTime::now_utc())
        );
        println!("  Extensions:         {}", extensions.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_the_seeds_words() {
        assert_eq!(
            rejection_message("unauthorized device"),
            "ssh: rejected: administratively prohibited (unauthorized device)"
        );
        assert_eq!(
            rejection_message("lock targeting Device:\"abc\" is in force"),
            "ssh: rejected: administratively prohibited (lock targeting Device:\"abc\" is in force)"
        );
        let role = rejection_message(
            "access denied to root connecting to server1: a trusted device is required",
        );
        let mut lines = role.lines();
        assert_eq!(
            lines.next(),
            Some("access denied to root connecting to server1")
        );
        assert!(
            lines
                .next()
                .unwrap()
                .contains("dtsh device enroll --current-device")
        );
        let plain = rejection_message("access denied to bob connecting to server1");
        assert!(plain.starts_with("access denied to bob connecting to server1\n"));
        assert!(!plain.contains("enroll"));
    }
}
