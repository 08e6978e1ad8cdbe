//! `dtsh db ls|login|connect|logout` and `dtsh proxy db NAME --tunnel --port=N`.
//!
//! A local tunnel takes plain PostgreSQL connections on 127.0.0.1 (any client or GUI, with
//! `sslmode=disable`: the connection never leaves this machine in clear), and carries each
//! to the database access point over TLS with this profile's devtrust certificate (which
//! carries the device when it authenticated one), verifying the access point by its service
//! certificate (host CA, kind `db`, the database's name). `dtsh db connect` runs `psql`
//! through such a tunnel. `dtsh db login` remembers the database user and name to use.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use dt_client::{Profile, ProfileStore};
use dt_dbwire::pg;
use dt_proto::v1 as pb;
use dt_proto::v1::node_service_client::NodeServiceClient;
use dt_types::ServiceKind;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{Format, api_err, table};

#[derive(Subcommand)]
pub enum DbCmd {
    /// List the databases your roles let you reach.
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Remember which database user and database to use for NAME (`dtsh db connect` and
    /// `dtsh proxy db` then need no flags).
    Login(RouteArgs),
    /// Run psql on NAME through a local tunnel: dtsh db connect NAME [-- PSQL ARGS...]
    Connect {
        #[command(flatten)]
        route: RouteArgs,
        /// Arguments for psql, after `--` (e.g. -- -c 'select 1').
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Forget what `dtsh db login` remembered (for NAME, or for every database).
    Logout { name: Option<String> },
}

#[derive(Subcommand)]
pub enum ProxyCmd {
    /// A local port for a database: dtsh proxy db NAME --tunnel --port=N
    Db {
        #[command(flatten)]
        route: RouteArgs,
        /// Serve a plain local port that tunnels to the access point (required: the
        /// connection is authenticated by this profile).
        #[arg(long, required = true)]
        tunnel: bool,
        /// The local port (on 127.0.0.1); 0 picks one.
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
}

#[derive(Args, Clone)]
pub struct RouteArgs {
    /// The database's name (`dtsh db ls`).
    pub name: String,
    /// The database user to log in as.
    #[arg(long)]
    pub db_user: Option<String>,
    /// The database (PostgreSQL dbname) to open.
    #[arg(long)]
    pub db_name: Option<String>,
}

/// What `dtsh db login` remembers.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Route {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    db_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    db_name: Option<String>,
}

fn routes_dir(store: &ProfileStore, profile: &Profile) -> PathBuf {
    store
        .files(&profile.proxy)
        .key()
        .parent()
        .map(|p| p.join("db"))
        .unwrap_or_else(|| store.home.join("db"))
}

fn load_route(store: &ProfileStore, profile: &Profile, name: &str) -> Route {
    std::fs::read_to_string(routes_dir(store, profile).join(format!("{name}.json")))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// The flags, else what `dtsh db login` remembered.
fn route_for(store: &ProfileStore, profile: &Profile, r: &RouteArgs) -> Route {
    let saved = load_route(store, profile, &r.name);
    Route {
        db_user: r.db_user.clone().or(saved.db_user),
        db_name: r.db_name.clone().or(saved.db_name),
    }
}

async fn databases(
    store: &ProfileStore,
    profile: &Profile,
) -> anyhow::Result<Vec<pb::ServedResourceInfo>> {
    let ch = crate::dtsh_ssh::profile_channel(store, profile).await?;
    let mut dbs = NodeServiceClient::new(ch)
        .list_served_resources(pb::ListServedResourcesRequest {
            kind: ServiceKind::Db.as_str().into(),
        })
        .await
        .map_err(api_err)?
        .into_inner()
        .resources;
    dbs.sort_by(|a, b| {
        let name = |x: &pb::ServedResourceInfo| x.resource.as_ref().map(|r| r.name.clone());
        name(a).cmp(&name(b))
    });
    Ok(dbs)
}

async fn find(
    store: &ProfileStore,
    profile: &Profile,
    name: &str,
) -> anyhow::Result<pb::ServedResource> {
    let dbs = databases(store, profile).await?;
    if let Some(r) = dbs
        .iter()
        .filter_map(|d| d.resource.as_ref())
        .find(|r| r.name == name)
    {
        return Ok(r.clone());
    }
    let names: Vec<String> = dbs
        .iter()
        .filter_map(|d| d.resource.as_ref().map(|r| r.name.clone()))
        .collect();
    bail!(
        "database {name:?} is not online, or your roles do not let you reach it (you can reach: {})",
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    )
}

pub async fn run(cmd: DbCmd) -> anyhow::Result<ExitCode> {
    let store = ProfileStore::from_env();
    let profile = store.current()?;
    match cmd {
        DbCmd::Ls { format } => {
            let dbs = databases(&store, &profile).await?;
            let rows: Vec<&pb::ServedResource> =
                dbs.iter().filter_map(|d| d.resource.as_ref()).collect();
            match format {
                Format::Json | Format::Yaml => {
                    let v: Vec<serde_json::Value> = rows
                        .iter()
                        .map(|r| {
                            serde_json::json!({
                                "name": r.name, "protocol": r.protocol, "addr": r.addr,
                                "labels": r.labels, "description": r.description,
                            })
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
                Format::Text => {
                    let mut table_rows = Vec::new();
                    for r in rows {
                        let mut labels: Vec<String> =
                            r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        labels.sort();
                        table_rows.push(vec![
                            r.name.clone(),
                            r.protocol.clone(),
                            r.addr.clone(),
                            labels.join(","),
                        ]);
                    }
                    print!(
                        "{}",
                        table(&["Name", "Protocol", "Address", "Labels"], &table_rows)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DbCmd::Login(r) => {
            find(&store, &profile, &r.name).await?;
            let route = route_for(&store, &profile, &r);
            let dir = routes_dir(&store, &profile);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            std::fs::write(
                dir.join(format!("{}.json", r.name)),
                serde_json::to_vec_pretty(&route)?,
            )
            .context("cannot save the database login")?;
            println!(
                "Logged in to database {:?} (db user {}, db name {}). Connect: dtsh db connect {}",
                r.name,
                route.db_user.as_deref().unwrap_or("<your choice>"),
                route.db_name.as_deref().unwrap_or("<the db user's>"),
                r.name
            );
            Ok(ExitCode::SUCCESS)
        }
        DbCmd::Logout { name } => {
            let dir = routes_dir(&store, &profile);
            match name {
                Some(n) => {
                    let _ = std::fs::remove_file(dir.join(format!("{n}.json")));
                    println!("Logged out of database {n:?}");
                }
                None => {
                    let _ = std::fs::remove_dir_all(&dir);
                    println!("Logged out of all databases");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DbCmd::Connect { route, args } => {
            let r = route_for(&store, &profile, &route);
            let db_user = r.db_user.clone().context(
                "name the database user: --db-user=U (or `dtsh db login NAME --db-user=U`)",
            )?;
            let db_name = r.db_name.clone().unwrap_or_else(|| db_user.clone());
            let tunnel = Tunnel::open(&store, &profile, &route.name, r, 0).await?;
            let port = tunnel.port;
            let serve = tokio::spawn(tunnel.serve());
            let status = tokio::process::Command::new("psql")
                .arg(format!(
                    "host=127.0.0.1 port={port} user={db_user} dbname={db_name} sslmode=disable"
                ))
                .args(&args)
                .status()
                .await
                .context("cannot run psql (install the PostgreSQL client)")?;
            serve.abort();
            Ok(ExitCode::from(
                status.code().unwrap_or(1).clamp(0, 255) as u8
            ))
        }
    }
}

pub async fn proxy(cmd: ProxyCmd) -> anyhow::Result<ExitCode> {
    let store = ProfileStore::from_env();
    let profile = store.current()?;
    match cmd {
        ProxyCmd::Db { route, port, .. } => {
            let r = route_for(&store, &profile, &route);
            let tunnel = Tunnel::open(&store, &profile, &route.name, r, port).await?;
            // A closed stdout (a script that read the port and went on) must not stop the
            // tunnel.
            use std::io::Write;
            let mut out = std::io::stdout();
            let _ = writeln!(
                out,
                "Tunnel to database {:?} on 127.0.0.1:{} (connect with sslmode=disable; Ctrl-C stops it)",
                route.name, tunnel.port
            );
            let _ = writeln!(
                out,
                "  psql \"host=127.0.0.1 port={} user=USER dbname=DB sslmode=disable\"",
                tunnel.port
            );
            let _ = out.flush();
            tokio::select! {
                _ = tunnel.serve() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A local listener whose connections go to one database access point.
struct Tunnel {
    listener: TcpListener,
    port: u16,
    ap_addr: String,
    name: String,
    route: Route,
    connector: tokio_rustls::TlsConnector,
}

impl Tunnel {
    async fn open(
        store: &ProfileStore,
        profile: &Profile,
        name: &str,
        route: Route,
        port: u16,
    ) -> anyhow::Result<Tunnel> {
        let db = find(store, profile, name).await?;
        if db.protocol != "postgres" {
            bail!(
                "database {name:?} speaks {}; dtsh tunnels PostgreSQL only so far",
                db.protocol
            );
        }
        let f = store.files(&profile.proxy);
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p)
                .with_context(|| format!("cannot read {} (log in again)", p.display()))
        };
        let cert = dt_ca::pem::parse_cert_pem(&read(f.tls_cert())?)?;
        let key = dt_ca::ClientKey::from_pkcs8_pem(&read(f.key_pem())?)?;
        let host_ca = dt_ca::pem::parse_cert_pem(&read(f.host_ca())?)?;
        let connector = dt_client::access_point::connector(
            host_ca,
            ServiceKind::Db,
            name,
            cert,
            key.pkcs8_der().to_vec(),
        )?;
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("cannot listen on 127.0.0.1:{port}"))?;
        let port = listener.local_addr()?.port();
        Ok(Tunnel {
            listener,
            port,
            ap_addr: db.addr,
            name: name.to_string(),
            route,
            connector,
        })
    }

    async fn serve(self) {
        let me = std::sync::Arc::new(self);
        loop {
            let Ok((client, _)) = me.listener.accept().await else {
                continue;
            };
            let me = me.clone();
            tokio::spawn(async move {
                if let Err(e) = me.carry(client).await {
                    eprintln!("dtsh: database {:?}: {e:#}", me.name);
                }
            });
        }
    }

    /// One local connection: its startup (plain), then TLS to the access point and a relay.
    async fn carry(&self, mut client: TcpStream) -> anyhow::Result<()> {
        let mut buf = Vec::new();
        let startup = loop {
            match read_startup(&mut client, &mut buf).await? {
                // The local leg stays plain: decline TLS and GSS, the client goes on in clear.
                pg::Startup::SslRequest | pg::Startup::GssEncRequest => {
                    client.write_all(&[pg::NOT_OFFERED]).await?;
                }
                pg::Startup::CancelRequest { .. } => return Ok(()),
                s @ pg::Startup::Startup { .. } => break s,
            }
        };
        let pg::Startup::Startup { params, .. } = &startup else {
            return Ok(());
        };
        let mut out: Vec<(String, String)> = params.clone();
        for (key, value) in [
            ("user", &self.route.db_user),
            ("database", &self.route.db_name),
        ] {
            if let Some(v) = value {
                out.retain(|(k, _)| k != key);
                out.push((key.to_string(), v.clone()));
            }
        }
        let mut ap = TcpStream::connect(&self.ap_addr)
            .await
            .with_context(|| format!("cannot reach the access point at {}", self.ap_addr))?;
        let _ = ap.set_nodelay(true);
        ap.write_all(&pg::SSL_REQUEST).await?;
        let mut answer = [0u8; 1];
        ap.read_exact(&mut answer).await?;
        if answer[0] != pg::SSL_ACCEPTED {
            bail!("the access point at {} does not speak TLS", self.ap_addr);
        }
        let mut tls = self
            .connector
            .connect(dt_client::access_point::server_name(&self.name), ap)
            .await
            .context("TLS to the access point")?;
        let pairs: Vec<(&str, &str)> = out.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        tls.write_all(&pg::startup_message(&pairs)).await?;
        tls.write_all(&buf).await?;
        tokio::io::copy_bidirectional(&mut client, &mut tls).await?;
        Ok(())
    }
}

async fn read_startup<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> anyhow::Result<pg::Startup> {
    loop {
        if let Some((m, n)) = pg::read_startup(buf).map_err(|e| anyhow::anyhow!("{e}"))? {
            buf.drain(..n);
            return Ok(m);
        }
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("the client closed the connection during startup");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
