//! `dtctl`: the admin CLI.

pub mod access;
pub mod auth;
pub mod bots;
pub mod devices;
pub mod events;
pub mod mdm;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use dt_client::{Identity, ProfileStore, TrustPolicy};
use dt_proto::v1 as pb;
use dt_proto::v1::auth_service_client::AuthServiceClient;
use dt_types::{AnyResource, Kind, ServiceKind};
use tonic::transport::Channel;

use dt_cli::{Format, api_err, fmt_time, parse_duration, report, table, to_yaml_docs};

#[derive(Parser)]
#[command(
    name = "dtctl",
    version,
    about = "devtrust admin CLI: users, roles, devices, locks, audit",
    long_about = "devtrust admin CLI.\n\nOn the auth host, use the local admin identity:  dtctl --data-dir=/var/lib/devtrust status\nElsewhere, log in first with dtsh as a user whose roles allow the command."
)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
pub struct Global {
    #[doc(hidden)]
    #[arg(skip)]
    _private: (),
    /// Use the local admin identity in this auth server data directory.
    #[arg(long, global = true, env = "DTCTL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Auth server address, HOST:PORT, or several of one cluster as HOST:PORT,HOST:PORT
    /// (default: from --data-dir, or the dtsh profile).
    #[arg(long, global = true, env = "DTCTL_AUTH_SERVER")]
    auth_server: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Cluster name, CA pins, storage type and version.
    Status {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Create resources from a YAML (multi-document) or JSON file; `-` reads stdin.
    Create {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Overwrite resources that already exist.
        #[arg(long)]
        force: bool,
    },
    /// Show resources: KIND (all of them) or KIND/NAME. Kinds: role, user,
    /// cluster_auth_preference, token, lock, device (plural forms work too).
    Get {
        target: String,
        #[arg(long, value_enum, default_value = "yaml")]
        format: Format,
    },
    /// Edit a resource in $EDITOR; invalid edits are refused with the reason.
    Edit { target: String },
    /// Remove a resource: KIND/NAME. A joined service (node/NAME, db/NAME, kube/NAME,
    /// app/NAME, desktop/NAME, mdm/NAME) is forgotten and its key refused from then on.
    Rm { target: String },
    /// Manage users.
    #[command(subcommand)]
    Users(UsersCmd),
    /// The device inventory: register, list, remove, and issue enrollment tokens.
    #[command(subcommand)]
    Devices(crate::devices::DevicesCmd),
    /// Join tokens for access points (node, db, kube, app, desktop), the MDM service and bots.
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Access: `explain` why a user on a device may or may not reach a resource.
    #[command(subcommand)]
    Access(crate::access::AccessCmd),
    /// Bots (machine users) and their join tokens.
    #[command(subcommand)]
    Bots(crate::bots::BotsCmd),
    /// Certificates of the cluster's CAs for servers devtrust connects to (databases).
    #[command(subcommand)]
    Auth(crate::auth::AuthCmd),
    /// The audit log.
    #[command(subcommand)]
    Events(EventsCmd),
    /// The inventory sync from Jamf Pro or Intune: `status`, and `sync NAME` now.
    #[command(subcommand)]
    Mdm(crate::mdm::MdmCmd),
    /// Lock a user, role, login, device or resource: blocks certificates and access, and
    /// ends live sessions. Several targets in one lock must all match.
    Lock {
        #[arg(long)]
        user: Option<dt_types::UserName>,
        #[arg(long)]
        role: Option<String>,
        #[arg(long)]
        login: Option<String>,
        /// An SSH node by name.
        #[arg(long)]
        node: Option<dt_types::NodeName>,
        /// A device by id (`dtctl devices ls` shows it).
        #[arg(long)]
        device: Option<dt_types::DeviceId>,
        /// A database by name.
        #[arg(long)]
        db: Option<String>,
        /// A Kubernetes cluster by name.
        #[arg(long)]
        kube_cluster: Option<String>,
        /// An app by name.
        #[arg(long)]
        app: Option<String>,
        /// A desktop by name.
        #[arg(long)]
        desktop: Option<String>,
        /// How long the lock lasts (e.g. 12h); forever when omitted.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        #[arg(long)]
        message: Option<String>,
    },
}

#[derive(Subcommand)]
enum UsersCmd {
    /// Add a user; prints a one-time signup token and the dtsh command that uses it.
    Add {
        name: String,
        /// Comma-separated roles, e.g. access,editor.
        #[arg(long, value_delimiter = ',', required = true)]
        roles: Vec<String>,
        /// Comma-separated OS logins for {{internal.logins}}.
        #[arg(long, value_delimiter = ',')]
        logins: Vec<String>,
        /// Signup token lifetime.
        #[arg(long, value_parser = parse_duration, default_value = "1h")]
        ttl: Duration,
    },
    /// List users.
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Remove a user.
    Rm { name: String },
    /// Clear a user's password and print a new signup token.
    Reset {
        name: String,
        #[arg(long, value_parser = parse_duration, default_value = "1h")]
        ttl: Duration,
    },
}

#[derive(Subcommand)]
enum TokensCmd {
    /// Create a join token.
    Add {
        /// What the token joins: node (SSH), db, kube, app, desktop (access points), mdm
        /// (the MDM sync service), or bot (a login for an existing bot, see --bot-name).
        /// A token joins only its own type.
        #[arg(long = "type", value_parser = ["node", "db", "kube", "app", "desktop", "mdm", "bot"])]
        kind: String,
        /// With --type=bot: the existing bot (from `dtctl bots add`) the token logs in as.
        #[arg(long)]
        bot_name: Option<String>,
        #[arg(long, value_parser = parse_duration, default_value = "30m")]
        ttl: Duration,
        /// text prints only the token.
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// List join tokens (hashes only; tokens are never stored).
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

#[derive(Subcommand)]
enum EventsCmd {
    /// List audit events, oldest first.
    Ls {
        /// Only events newer than this, e.g. 1h.
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
        /// Event type, e.g. user.login, device.enroll.
        #[arg(long = "type")]
        kind: Option<String>,
        #[arg(long)]
        user: Option<String>,
        /// Device id or asset tag.
        #[arg(long)]
        device: Option<String>,
        #[arg(long, default_value_t = 500)]
        limit: u32,
        /// text, or json (one event per line: JSON lines).
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Walk the audit hash chain and report the first broken or missing link.
    Verify(crate::events::VerifyArgs),
    /// Stream events as JSON lines, resuming from a cursor file (for a SIEM).
    Export(crate::events::ExportArgs),
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

/// Connect as the local admin (`--data-dir`) or as the dtsh profile's user.
pub async fn connect(g: &Global) -> anyhow::Result<AuthServiceClient<Channel>> {
    Ok(AuthServiceClient::new(connect_channel(g).await?))
}

/// The raw channel behind [`connect`], for the device service.
pub async fn connect_channel(g: &Global) -> anyhow::Result<Channel> {
    if let Some(dir) = &g.data_dir {
        let admin = dir.join("admin");
        let read = |name: &str| {
            std::fs::read_to_string(admin.join(name)).with_context(|| {
                format!(
                    "cannot read the local admin identity in {} (is this the auth server's data dir, and has `devtrust start` run?)",
                    admin.display()
                )
            })
        };
        let cert = dt_ca::pem::parse_cert_pem(&read("cert.pem")?)?;
        let key = dt_ca::ClientKey::from_pkcs8_pem(&read("key.pem")?)?;
        let ca = dt_ca::pem::parse_cert_pem(&read("host-ca.pem")?)?;
        let pin = dt_client::spki_pin(&ca).map_err(anyhow::Error::msg)?;
        let addr = match &g.auth_server {
            Some(a) => a.clone(),
            None => read("auth-server")?.trim().to_string(),
        };
        let id = Identity::Cert {
            cert_der: cert,
            key_pkcs8_der: key.pkcs8_der().to_vec(),
        };
        return Ok(dt_client::connect::channel(&addr, TrustPolicy::Pin(pin), id).await?);
    }
    let store = ProfileStore::from_env();
    let profile = store
        .current()
        .context("dtctl needs --data-dir on the auth host, or a dtsh login")?;
    let id = store.identity(&profile)?;
    let policy = if profile.insecure {
        TrustPolicy::Insecure
    } else {
        TrustPolicy::Pin(profile.ca_pin.clone())
    };
    let addr = g.auth_server.clone().unwrap_or(profile.proxy.clone());
    Ok(dt_client::connect::channel(&addr, policy, id).await?)
}

/// `dtctl rm node/NAME` (or `db/NAME`, `kube/NAME`, `app/NAME`, `desktop/NAME`,
/// `mdm/NAME`): forget a joined service's registration (its name and key), so a machine
/// with a new key can join under that name.
async fn remove_node(g: &Global, kind: ServiceKind, name: &str) -> anyhow::Result<ExitCode> {
    if name.is_empty() {
        bail!("name what to remove: {kind}/NAME");
    }
    let mut c = connect(g).await?;
    c.delete_resource(pb::DeleteResourceRequest {
        kind: kind.as_str().into(),
        name: name.into(),
    })
    .await
    .map_err(api_err)?;
    println!("{kind} {name:?} has been removed; a machine can now join with that name");
    Ok(ExitCode::SUCCESS)
}

fn split_target(target: &str) -> anyhow::Result<(Kind, Option<String>)> {
    let (kind, name) = match target.split_once('/') {
        Some((k, n)) if !n.is_empty() => (k, Some(n.to_string())),
        Some((k, _)) => (k, None),
        None => (target, None),
    };
    let kind = Kind::parse(kind)?;
    let name = match (kind, name) {
        (Kind::ClusterAuthPreference, None) => Some(dt_types::resource::CAP_NAME.to_string()),
        (_, n) => n,
    };
    Ok((kind, name))
}

fn read_input(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

fn parse_json(r: &pb::ResourceDocument) -> anyhow::Result<serde_json::Value> {
    serde_json::from_slice(&r.canonical_json)
        .with_context(|| format!("the server sent an unreadable {} document", r.kind))
}

async fn list_all(
    c: &mut AuthServiceClient<Channel>,
    kind: Kind,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    let mut start_after = String::new();
    loop {
        let resp = c
            .list_resources(pb::ListResourcesRequest {
                kind: kind.as_str().into(),
                start_after,
                limit: 1000,
            })
            .await
            .map_err(api_err)?
            .into_inner();
        for r in &resp.resources {
            out.push(parse_json(r)?);
        }
        if resp.next.is_empty() {
            return Ok(out);
        }
        start_after = resp.next;
    }
}

fn s(v: &serde_json::Value, ptr: &str) -> String {
    match v.pointer(ptr) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str())
            .collect::<Vec<_>>()
            .join(","),
        Some(serde_json::Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn text_rows(kind: Kind, items: &[serde_json::Value]) -> (Vec<&'static str>, Vec<Vec<String>>) {
    match kind {
        Kind::User => (
            vec!["User", "Roles", "Logins"],
            items
                .iter()
                .map(|v| {
                    vec![
                        s(v, "/metadata/name"),
                        s(v, "/spec/roles"),
                        s(v, "/spec/traits/logins"),
                    ]
                })
                .collect(),
        ),
        Kind::Role => (
            vec!["Role", "Device Trust Mode", "Description"],
            items
                .iter()
                .map(|v| {
                    vec![
                        s(v, "/metadata/name"),
                        s(v, "/spec/options/device_trust_mode"),
                        s(v, "/metadata/description"),
                    ]
                })
                .collect(),
        ),
        Kind::Lock => (
            vec!["Lock", "Target", "Message", "Expires"],
            items
                .iter()
                .map(|v| {
                    let target = v
                        .pointer("/spec/target")
                        .and_then(|t| {
                            serde_json::from_value::<dt_types::LockTarget>(t.clone()).ok()
                        })
                        .map(|t| t.to_string())
                        .unwrap_or_default();
                    vec![
                        s(v, "/metadata/name"),
                        target,
                        s(v, "/spec/message"),
                        s(v, "/metadata/expires"),
                    ]
                })
                .collect(),
        ),
        Kind::Token => (
            vec!["Token", "Type", "Expires"],
            items
                .iter()
                .map(|v| {
                    vec![
                        s(v, "/metadata/name"),
                        s(v, "/spec/roles"),
                        s(v, "/metadata/expires"),
                    ]
                })
                .collect(),
        ),
        Kind::ClusterAuthPreference => (
            vec!["Name", "Device Trust Mode", "Auto Enroll", "Locking Mode"],
            items
                .iter()
                .map(|v| {
                    vec![
                        s(v, "/metadata/name"),
                        s(v, "/spec/device_trust/mode"),
                        s(v, "/spec/device_trust/auto_enroll"),
                        s(v, "/spec/locking_mode"),
                    ]
                })
                .collect(),
        ),
        Kind::Device => (
            vec!["Asset Tag", "OS", "Enroll Status", "Device ID"],
            items
                .iter()
                .map(|v| {
                    vec![
                        s(v, "/spec/asset_tag"),
                        s(v, "/spec/os_type"),
                        s(v, "/spec/enroll_status"),
                        s(v, "/metadata/name"),
                    ]
                })
                .collect(),
        ),
    }
}

fn print_resources(
    kind: Kind,
    items: &[serde_json::Value],
    format: Format,
    single: bool,
) -> anyhow::Result<()> {
    match format {
        Format::Yaml => print!("{}", to_yaml_docs(items)?),
        Format::Json if single && items.len() == 1 => {
            println!("{}", serde_json::to_string_pretty(&items[0])?)
        }
        Format::Json => println!("{}", serde_json::to_string_pretty(items)?),
        Format::Text => {
            let (headers, rows) = text_rows(kind, items);
            println!("{}", table(&headers, &rows));
        }
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = cli.global.clone();
    match cli.cmd {
        Cmd::Status { format } => {
            let mut c = connect(&g).await?;
            let st = c
                .status(pb::StatusRequest {})
                .await
                .map_err(api_err)?
                .into_inner();
            if format == Format::Json {
                println!(
                    "{}",
                    serde_json::json!({
                        "cluster": st.cluster_name, "version": st.server_version,
                        "storage": st.storage_type, "schema_version": st.schema_version,
                        "user_ca_pin": st.user_ca_pin, "host_ca_pin": st.host_ca_pin,
                    })
                );
            } else {
                println!("Cluster:         {}", st.cluster_name);
                println!("Version:         {}", st.server_version);
                println!(
                    "Storage:         {} (schema v{})",
                    st.storage_type, st.schema_version
                );
                println!("Host CA pin:     {}", st.host_ca_pin);
                println!("User CA pin:     {}", st.user_ca_pin);
            }
        }
        Cmd::Create { file, force } => {
            let text = read_input(&file)?;
            // Validate everything locally first: a bad document means nothing is sent.
            let docs = AnyResource::parse_documents(&text)
                .with_context(|| format!("{} was not applied", file.display()))?;
            if docs.is_empty() {
                bail!("{} holds no resources", file.display());
            }
            let mut c = connect(&g).await?;
            for doc in docs {
                let (kind, name) = (doc.kind(), doc.name().to_string());
                let resp = c
                    .upsert_resource(pb::UpsertResourceRequest {
                        canonical_json: doc.to_json_value().to_string().into_bytes(),
                        force,
                        expected_revision: 0,
                    })
                    .await
                    .map_err(api_err)?
                    .into_inner();
                let verb = if resp.created { "created" } else { "updated" };
                println!("{kind} {name:?} has been {verb}");
            }
        }
        Cmd::Get { target, format } => {
            let (kind, name) = split_target(&target)?;
            let mut c = connect(&g).await?;
            match name {
                Some(name) => {
                    let r = c
                        .get_resource(pb::GetResourceRequest {
                            kind: kind.as_str().into(),
                            name,
                        })
                        .await
                        .map_err(api_err)?
                        .into_inner();
                    print_resources(kind, &[parse_json(&r)?], format, true)?;
                }
                None => {
                    let items = list_all(&mut c, kind).await?;
                    print_resources(kind, &items, format, false)?;
                }
            }
        }
        Cmd::Edit { target } => return edit(&g, &target).await,
        Cmd::Rm { target } => {
            if let Some(node) = target.strip_prefix("nodes/") {
                return remove_node(&g, ServiceKind::Node, node).await;
            }
            if let Some((kind, name)) = target
                .split_once('/')
                .and_then(|(k, n)| ServiceKind::parse(k).map(|k| (k, n)))
            {
                return remove_node(&g, kind, name).await;
            }
            let (kind, name) = split_target(&target)?;
            let Some(name) = name else {
                bail!("name what to remove: {}/NAME", kind.as_str())
            };
            let mut c = connect(&g).await?;
            c.delete_resource(pb::DeleteResourceRequest {
                kind: kind.as_str().into(),
                name: name.clone(),
            })
            .await
            .map_err(api_err)?;
            println!("{kind} {name:?} has been removed");
        }
        Cmd::Users(cmd) => users(&g, cmd).await?,
        Cmd::Devices(cmd) => crate::devices::run(&g, cmd).await?,
        Cmd::Tokens(cmd) => tokens(&g, cmd).await?,
        Cmd::Bots(cmd) => crate::bots::run(&g, cmd).await?,
        Cmd::Auth(cmd) => crate::auth::run(&g, cmd).await?,
        Cmd::Access(cmd) => return crate::access::run(&g, cmd).await,
        Cmd::Mdm(cmd) => return crate::mdm::run(&g, cmd).await,
        Cmd::Events(EventsCmd::Verify(a)) => return crate::events::verify(&g, a).await,
        Cmd::Events(EventsCmd::Export(a)) => return crate::events::export(&g, a).await,
        Cmd::Events(EventsCmd::Ls {
            since,
            kind,
            user,
            device,
            limit,
            format,
        }) => {
            let mut c = connect(&g).await?;
            let since_ms = since
                .map(|d| (time::OffsetDateTime::now_utc() - d).unix_timestamp_nanos() / 1_000_000)
                .unwrap_or(0) as i64;
            let resp = c
                .search_events(pb::SearchEventsRequest {
                    since_unix_ms: since_ms,
                    r#type: kind.unwrap_or_default(),
                    user: user.unwrap_or_default(),
                    device: device.unwrap_or_default(),
                    limit,
                    start_after: String::new(),
                })
                .await
                .map_err(api_err)?
                .into_inner();
            if format == Format::Json || format == Format::Yaml {
                for e in &resp.events {
                    println!("{}", String::from_utf8_lossy(&e.canonical_json));
                }
            } else {
                let rows: Vec<Vec<String>> = resp
                    .events
                    .iter()
                    .filter_map(|e| dt_types::audit::AuditEvent::try_from(e.clone()).ok())
                    .map(|e| {
                        vec![
                            fmt_time(e.time),
                            e.event.to_string(),
                            e.code.clone(),
                            if e.success {
                                "ok".into()
                            } else {
                                "FAILED".into()
                            },
                            e.user.clone().unwrap_or_default(),
                            e.device
                                .as_ref()
                                .map(|d| d.asset_tag.clone())
                                .unwrap_or_default(),
                            e.message
                                .clone()
                                .or(e.resource_name.clone())
                                .unwrap_or_default(),
                        ]
                    })
                    .collect();
                println!(
                    "{}",
                    table(
                        &[
                            "Time", "Event", "Code", "Result", "User", "Device", "Details"
                        ],
                        &rows
                    )
                );
            }
        }
        Cmd::Lock {
            user,
            role,
            login,
            node,
            device,
            db,
            kube_cluster,
            app,
            desktop,
            ttl,
            message,
        } => {
            let target = dt_types::LockTarget {
                user: user.map(String::from),
                role,
                login,
                node: node.map(String::from),
                device: device.map(String::from),
                // Written by the server when a device is deleted or un-enrolled.
                device_credential: None,
                db,
                kube_cluster,
                app,
                desktop,
            };
            if target.is_empty() {
                bail!(
                    "name a target: --user, --role, --login, --device, --node, --db, --kube-cluster, --app or --desktop"
                );
            }
            let name = uuid::Uuid::new_v4().to_string();
            let mut lock: dt_types::Lock = dt_types::resource::Resource::new(
                name.clone(),
                dt_types::resource::LockSpec {
                    target,
                    message,
                    created_by: None,
                    created_at: None,
                },
            );
            if let Some(ttl) = ttl {
                lock.metadata.expires = Some(time::OffsetDateTime::now_utc() + ttl);
            }
            let mut c = connect(&g).await?;
            c.upsert_resource(pb::UpsertResourceRequest {
                canonical_json: serde_json::to_vec(&lock)?,
                force: false,
                expected_revision: 0,
            })
            .await
            .map_err(api_err)?;
            println!("Created a lock with name \"{name}\".");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn users(g: &Global, cmd: UsersCmd) -> anyhow::Result<()> {
    let mut c = connect(g).await?;
    match cmd {
        UsersCmd::Add {
            name,
            roles,
            logins,
            ttl,
        } => {
            let resp = c
                .create_user(pb::CreateUserRequest {
                    name: name.clone(),
                    roles,
                    logins,
                    token_ttl_seconds: ttl.as_secs(),
                })
                .await
                .map_err(api_err)?
                .into_inner();
            let proxy = proxy_hint(g);
            println!(
                "User {name:?} has been created. The signup token below is valid for {}.",
                dt_types::duration::format_duration(ttl)
            );
            println!("Share it with {name} privately; it works once. To sign up, run:\n");
            println!(
                "  dtsh login --proxy={proxy} --user={name} --signup-token={}\n",
                resp.signup_token
            );
        }
        UsersCmd::Ls { format } => {
            let items = list_all(&mut c, Kind::User).await?;
            print_resources(Kind::User, &items, format, false)?;
        }
        UsersCmd::Rm { name } => {
            c.delete_resource(pb::DeleteResourceRequest {
                kind: "user".into(),
                name: name.clone(),
            })
            .await
            .map_err(api_err)?;
            println!("User {name:?} has been deleted");
        }
        UsersCmd::Reset { name, ttl } => {
            let resp = c
                .reset_user(pb::ResetUserRequest {
                    name: name.clone(),
                    token_ttl_seconds: ttl.as_secs(),
                })
                .await
                .map_err(api_err)?
                .into_inner();
            println!("User {name:?}'s password has been cleared. To set a new one, run:\n");
            println!(
                "  dtsh login --proxy={} --user={name} --signup-token={}\n",
                proxy_hint(g),
                resp.signup_token
            );
        }
    }
    Ok(())
}

pub fn proxy_hint(g: &Global) -> String {
    if let Some(a) = &g.auth_server {
        return a.clone();
    }
    if let Some(dir) = &g.data_dir
        && let Ok(a) = std::fs::read_to_string(dir.join("admin").join("auth-server"))
    {
        return a.trim().to_string();
    }
    ProfileStore::from_env()
        .current()
        .map(|p| p.proxy)
        .unwrap_or_else(|_| "HOST:PORT".into())
}

async fn tokens(g: &Global, cmd: TokensCmd) -> anyhow::Result<()> {
    let mut c = connect(g).await?;
    match cmd {
        TokensCmd::Add {
            kind,
            bot_name,
            ttl,
            format,
        } => {
            let resp = c
                .create_join_token(pb::CreateJoinTokenRequest {
                    r#type: kind.clone(),
                    ttl_seconds: ttl.as_secs(),
                    bot_name: bot_name.unwrap_or_default(),
                    bot_roles: vec![],
                })
                .await
                .map_err(api_err)?
                .into_inner();
            match format {
                Some(Format::Text) => println!("{}", resp.token),
                Some(Format::Json) => println!(
                    "{}",
                    serde_json::json!({"token": resp.token, "name": resp.name, "expires_unix": resp.expires_unix})
                ),
                _ => {
                    println!(
                        "The {kind} join token {} expires in {}.",
                        resp.token,
                        dt_types::duration::format_duration(ttl)
                    );
                    let (who, command) = match kind.as_str() {
                        "bot" => (
                            "where the bot runs",
                            format!(
                                "dtsh login --bot --token={} --proxy={}",
                                resp.token,
                                proxy_hint(g)
                            ),
                        ),
                        "node" => (
                            "on the node",
                            format!(
                                "devtrust node start --auth-server={} --token={} --name=NAME --listen=127.0.0.1:3022",
                                proxy_hint(g),
                                resp.token
                            ),
                        ),
                        other => (
                            "on the service's host",
                            format!(
                                "devtrust {other} start --auth-server={} --token={} --name=NAME",
                                proxy_hint(g),
                                resp.token
                            ),
                        ),
                    };
                    println!("\nRun this {who}:\n\n  {command}\n");
                }
            }
        }
        TokensCmd::Ls { format } => {
            let items = list_all(&mut c, Kind::Token).await?;
            print_resources(Kind::Token, &items, format, false)?;
        }
    }
    Ok(())
}

async fn edit(g: &Global, target: &str) -> anyhow::Result<ExitCode> {
    let (kind, name) = split_target(target)?;
    let Some(name) = name else {
        bail!("name what to edit: {}/NAME", kind.as_str())
    };
    let mut c = connect(g).await?;
    let r = c
        .get_resource(pb::GetResourceRequest {
            kind: kind.as_str().into(),
            name: name.clone(),
        })
        .await
        .map_err(api_err)?
        .into_inner();
    let original = parse_json(&r)?;
    let revision: i64 = s(&original, "/metadata/revision").parse().unwrap_or(0);
    let before = to_yaml_docs(std::slice::from_ref(&original))?;
    let dir = tempfile_dir()?;
    let path = dir.join(format!("{}-{}.yaml", kind.as_str(), name.replace('/', "_")));
    std::fs::write(&path, &before)?;
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&path)
        .status()
        .with_context(|| format!("cannot run the editor {editor:?} (set $EDITOR)"))?;
    let after = std::fs::read_to_string(&path)?;
    let _ = std::fs::remove_dir_all(&dir);
    if !status.success() {
        bail!("the editor exited with {status}; nothing was changed");
    }
    if after == before {
        println!("no changes made to {kind} {name:?}");
        return Ok(ExitCode::SUCCESS);
    }
    let docs = AnyResource::parse_documents(&after).context("your edit was not saved")?;
    let [doc] = docs.as_slice() else {
        bail!("your edit was not saved: keep exactly one resource in the file")
    };
    // Compare with the stored name (a device fetched by asset tag is named by its id).
    let stored_name = s(&original, "/metadata/name");
    if doc.kind() != kind || doc.name() != stored_name {
        bail!(
            "your edit was not saved: kind and metadata.name can't change (create a new resource instead)"
        );
    }
    c.upsert_resource(pb::UpsertResourceRequest {
        canonical_json: doc.to_json_value().to_string().into_bytes(),
        force: false,
        expected_revision: revision,
    })
    .await
    .map_err(|s| api_err(s).context("your edit was not saved"))?;
    println!("{kind} {name:?} has been updated");
    Ok(ExitCode::SUCCESS)
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::temp_dir().join(format!(
        "dtctl-edit-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&base)?;
    Ok(base)
}
