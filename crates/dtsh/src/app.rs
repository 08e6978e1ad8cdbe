//! `dtsh apps ls`, `dtsh app login|logout` and `dtsh proxy app NAME --port=N`.
//!
//! The local port takes plain HTTP on 127.0.0.1 (curl, a browser, any tool) and carries each
//! connection to the app access point over TLS with this profile's devtrust certificate
//! (which carries the device when it authenticated one), verifying the access point by its
//! service certificate (host CA, kind `app`, the access point that lists the app) and naming
//! the app in the TLS server name. WebSockets pass through: the bytes are relayed as they are.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use dt_client::{Profile, ProfileStore};
use dt_proto::v1 as pb;
use dt_types::ServiceKind;
use tokio::net::{TcpListener, TcpStream};

use dt_cli::{Format, table};

#[derive(Subcommand)]
pub enum AppsCmd {
    /// List the apps your roles let you reach.
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

#[derive(Subcommand)]
pub enum AppCmd {
    /// Check that NAME is online and your roles reach it, and remember it (`dtsh app
    /// logout` forgets it). Your devtrust certificate is what the access point decides on.
    Login { name: String },
    /// Forget what `dtsh app login` remembered (for NAME, or for every app).
    Logout { name: Option<String> },
}

#[derive(Args)]
pub struct ProxyAppArgs {
    /// The app's name (`dtsh apps ls`).
    pub name: String,
    /// The local port (on 127.0.0.1); 0 picks one.
    #[arg(long, short = 'p', default_value_t = 0)]
    pub port: u16,
}

/// The resources of `kind` the profile's roles reach, sorted by name, with the access point
/// serving each.
pub async fn served(
    store: &ProfileStore,
    profile: &Profile,
    kind: ServiceKind,
) -> anyhow::Result<Vec<pb::ServedResourceInfo>> {
    let session = dt_client::Session::open(store, profile.clone()).await?;
    Ok(session.served(kind).await?)
}

/// The resource `name` of `kind` and the access point that serves it.
pub async fn find_served(
    store: &ProfileStore,
    profile: &Profile,
    kind: ServiceKind,
    name: &str,
) -> anyhow::Result<(pb::ServedResource, String)> {
    let all = served(store, profile, kind).await?;
    if let Some(found) = all.iter().find_map(|d| {
        d.resource
            .as_ref()
            .filter(|r| r.name == name)
            .map(|r| (r.clone(), d.service.clone()))
    }) {
        return Ok(found);
    }
    let names: Vec<String> = all
        .iter()
        .filter_map(|d| d.resource.as_ref().map(|r| r.name.clone()))
        .collect();
    let noun = match kind {
        ServiceKind::Db => "database",
        ServiceKind::App => "app",
        other => other.as_str(),
    };
    bail!(
        "{noun} {name:?} is not online, or your roles do not let you reach it (you can reach: {})",
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    )
}

/// A TLS connector to the access point that serves a resource, with this profile's
/// certificate.
pub fn connector_for(
    store: &ProfileStore,
    profile: &Profile,
    kind: ServiceKind,
    service: &str,
) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let f = store.files(&profile.proxy);
    let read = |p: PathBuf| {
        std::fs::read_to_string(&p)
            .with_context(|| format!("cannot read {} (log in again)", p.display()))
    };
    let cert = dt_ca::pem::parse_cert_pem(&read(f.tls_cert())?)?;
    let key = dt_ca::ClientKey::from_pkcs8_pem(&read(f.key_pem())?)?;
    let host_ca = dt_ca::pem::parse_cert_pem(&read(f.host_ca())?)?;
    Ok(dt_client::access_point::connector(
        host_ca,
        kind,
        service,
        cert,
        key.pkcs8_der().to_vec(),
    )?)
}

fn remembered_dir(store: &ProfileStore, profile: &Profile) -> PathBuf {
    store
        .files(&profile.proxy)
        .key()
        .parent()
        .map(|p| p.join("apps"))
        .unwrap_or_else(|| store.home.join("apps"))
}

pub async fn apps(cmd: AppsCmd) -> anyhow::Result<ExitCode> {
    let store = ProfileStore::from_env();
    let profile = store.current()?;
    let AppsCmd::Ls { format } = cmd;
    let all = served(&store, &profile, ServiceKind::App).await?;
    let rows: Vec<&pb::ServedResource> = all.iter().filter_map(|d| d.resource.as_ref()).collect();
    match format {
        Format::Json | Format::Yaml => {
            let v: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "name": r.name, "public_addr": r.protocol, "addr": r.addr,
                        "labels": r.labels, "description": r.description,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Format::Text => {
            let rows: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    let mut labels: Vec<String> =
                        r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    labels.sort();
                    vec![r.name.clone(), r.protocol.clone(), labels.join(",")]
                })
                .collect();
            print!("{}", table(&["Name", "Public address", "Labels"], &rows));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn app(cmd: AppCmd) -> anyhow::Result<ExitCode> {
    let store = ProfileStore::from_env();
    let profile = store.current()?;
    let dir = remembered_dir(&store, &profile);
    match cmd {
        AppCmd::Login { name } => {
            find_served(&store, &profile, ServiceKind::App, &name).await?;
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            std::fs::write(dir.join(&name), b"")
                .with_context(|| format!("cannot remember app {name:?}"))?;
            println!("Logged in to app {name:?}. Reach it: dtsh proxy app {name} --port=8080");
        }
        AppCmd::Logout { name: Some(n) } => {
            let _ = std::fs::remove_file(dir.join(&n));
            println!("Logged out of app {n:?}");
        }
        AppCmd::Logout { name: None } => {
            let _ = std::fs::remove_dir_all(&dir);
            println!("Logged out of all apps");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn proxy(a: ProxyAppArgs) -> anyhow::Result<ExitCode> {
    let store = ProfileStore::from_env();
    let profile = store.current()?;
    let (res, service) = find_served(&store, &profile, ServiceKind::App, &a.name).await?;
    let service = if service.is_empty() {
        a.name.clone()
    } else {
        service
    };
    let connector = connector_for(&store, &profile, ServiceKind::App, &service)?;
    let listener = TcpListener::bind(("127.0.0.1", a.port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{}", a.port))?;
    let port = listener.local_addr()?.port();
    {
        // A closed stdout (a script that read the port and went on) must not stop it.
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = writeln!(
            out,
            "Proxying app {:?} on http://127.0.0.1:{port} (Ctrl-C stops it)",
            a.name
        );
        let _ = writeln!(out, "  curl http://127.0.0.1:{port}/");
        let _ = out.flush();
    }
    let name = a.name.clone();
    let ap_addr = res.addr.clone();
    let serve = async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let (connector, name, ap_addr) = (connector.clone(), name.clone(), ap_addr.clone());
            tokio::spawn(async move {
                if let Err(e) = carry(client, &connector, &name, &ap_addr).await {
                    eprintln!("dtsh: app {name:?}: {e:#}");
                }
            });
        }
    };
    tokio::select! {
        _ = serve => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(ExitCode::SUCCESS)
}

async fn carry(
    mut client: TcpStream,
    connector: &tokio_rustls::TlsConnector,
    name: &str,
    ap_addr: &str,
) -> anyhow::Result<()> {
    let _ = client.set_nodelay(true);
    let ap = TcpStream::connect(ap_addr)
        .await
        .with_context(|| format!("cannot reach the access point at {ap_addr}"))?;
    let _ = ap.set_nodelay(true);
    let mut tls = connector
        .connect(dt_client::access_point::server_name(name), ap)
        .await
        .context("TLS to the access point")?;
    tokio::io::copy_bidirectional(&mut client, &mut tls).await?;
    Ok(())
}
