//! `dtsh db ls|login|connect|logout` and `dtsh proxy db NAME --tunnel --port=N`.
//!
//! A local tunnel takes plain PostgreSQL or MySQL connections on 127.0.0.1 (any client or
//! GUI, with `sslmode=disable` / `--skip-ssl`: the connection never leaves this machine in
//! clear), and carries each to the database access point over TLS with this profile's
//! devtrust certificate (which carries the device when it authenticated one), verifying the
//! access point by its service certificate (host CA, kind `db`, the name of the access point
//! that lists the database) and naming the database in the TLS server name. `dtsh db
//! connect` runs `psql` or `mariadb` through such a tunnel. `dtsh db login` remembers the
//! database user and name to use.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use dt_client::{Profile, ProfileStore};
use dt_dbwire::pg;
use dt_proto::v1 as pb;
use dt_types::ServiceKind;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use dt_cli::{Format, table};

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
    /// Run psql (PostgreSQL) or mariadb (MySQL, MariaDB) on NAME through a local tunnel:
    /// dtsh db connect NAME [-- CLIENT ARGS...]
    Connect {
        #[command(flatten)]
        route: RouteArgs,
        /// Arguments for psql or mariadb, after `--` (e.g. -- -c 'select 1', or -- -e 'select 1').
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
    /// A local plain-HTTP port for an app: dtsh proxy app NAME --port=N
    App(crate::app::ProxyAppArgs),
}

#[derive(Args, Clone)]
pub struct RouteArgs {
    /// The database's name (`dtsh db ls`).
    pub name: String,
    /// The database user to log in as.
    #[arg(long)]
    pub db_user: Option<String>,
    /// The database to open (PostgreSQL's dbname: by default the user's; MySQL: none).
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
    crate::app::served(store, profile, ServiceKind::Db).await
}

/// The database `name` and the access point that serves it.
async fn find(
    store: &ProfileStore,
    profile: &Profile,
    name: &str,
) -> anyhow::Result<(pb::ServedResource, String)> {
    crate::app::find_served(store, profile, ServiceKind::Db, name).await
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
            let tunnel = Tunnel::open(&store, &profile, &route.name, r.clone(), 0).await?;
            let port = tunnel.port;
            let mut cmd = match tunnel.protocol {
                Wire::Postgres => {
                    let db_user = r.db_user.clone().context(
                        "name the database user: --db-user=U (or `dtsh db login NAME --db-user=U`)",
                    )?;
                    let db_name = r.db_name.clone().unwrap_or_else(|| db_user.clone());
                    let mut c = tokio::process::Command::new("psql");
                    c.arg(format!(
                        "host=127.0.0.1 port={port} user={db_user} dbname={db_name} sslmode=disable"
                    ));
                    c
                }
                Wire::Mysql => {
                    let db_user = r.db_user.clone().context(
                        "name the database user: --db-user=U (or `dtsh db login NAME --db-user=U`)",
                    )?;
                    let mut c = tokio::process::Command::new("mariadb");
                    c.args([
                        "--no-defaults",
                        "--protocol=TCP",
                        "--host=127.0.0.1",
                        "--skip-ssl",
                    ])
                    .arg(format!("--port={port}"))
                    .arg(format!("--user={db_user}"));
                    if let Some(d) = &r.db_name {
                        c.arg(format!("--database={d}"));
                    }
                    c
                }
            };
            let client = tunnel.protocol.client();
            let serve = tokio::spawn(tunnel.serve());
            let status =
                cmd.args(&args).status().await.with_context(|| {
                    format!("cannot run {client} (install the {client} client)")
                })?;
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
        ProxyCmd::App(a) => crate::app::proxy(a).await,
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
            let _ = match tunnel.protocol {
                Wire::Postgres => writeln!(
                    out,
                    "  psql \"host=127.0.0.1 port={} user=USER dbname=DB sslmode=disable\"",
                    tunnel.port
                ),
                Wire::Mysql => writeln!(
                    out,
                    "  mariadb --protocol=TCP --host=127.0.0.1 --port={} --user=USER --skip-ssl",
                    tunnel.port
                ),
            };
            let _ = out.flush();
            tokio::select! {
                _ = tunnel.serve() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The wire a tunnel carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    Postgres,
    Mysql,
}

impl Wire {
    fn client(self) -> &'static str {
        match self {
            Wire::Postgres => "psql",
            Wire::Mysql => "mariadb",
        }
    }
}

/// A local listener whose connections go to one database access point.
struct Tunnel {
    listener: TcpListener,
    port: u16,
    ap_addr: String,
    name: String,
    protocol: Wire,
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
        let (db, service) = find(store, profile, name).await?;
        let protocol = match db.protocol.as_str() {
            "postgres" => Wire::Postgres,
            "mysql" => Wire::Mysql,
            other => bail!("database {name:?} speaks {other:?}, which this dtsh cannot tunnel"),
        };
        // The access point proves it is the service that heartbeats this database; the TLS
        // server name (SNI) tells it which of its databases we want.
        let service = if service.is_empty() {
            name.to_string()
        } else {
            service
        };
        let connector = crate::app::connector_for(store, profile, ServiceKind::Db, &service)?;
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("cannot listen on 127.0.0.1:{port}"))?;
        let port = listener.local_addr()?.port();
        Ok(Tunnel {
            listener,
            port,
            ap_addr: db.addr,
            name: name.to_string(),
            protocol,
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

    async fn carry(&self, client: TcpStream) -> anyhow::Result<()> {
        match self.protocol {
            Wire::Postgres => self.carry_pg(client).await,
            Wire::Mysql => self.carry_mysql(client).await,
        }
    }

    async fn dial(&self) -> anyhow::Result<TcpStream> {
        let ap = TcpStream::connect(&self.ap_addr)
            .await
            .with_context(|| format!("cannot reach the access point at {}", self.ap_addr))?;
        let _ = ap.set_nodelay(true);
        Ok(ap)
    }

    async fn tls(
        &self,
        ap: TcpStream,
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        self.connector
            .connect(dt_client::access_point::server_name(&self.name), ap)
            .await
            .context("TLS to the access point")
    }

    /// One local MySQL connection: the access point's greeting goes to the client without
    /// CLIENT_SSL (the local leg stays plain), the client's HandshakeResponse goes to the
    /// access point inside TLS (after our SSLRequest, so one sequence id later), and the
    /// access point's answer comes back with the client's sequence id; then a relay.
    async fn carry_mysql(&self, mut client: TcpStream) -> anyhow::Result<()> {
        use dt_dbwire::mysql;
        let mut ap = self.dial().await?;
        let mut abuf = Vec::new();
        let (_, greeting) = read_mysql(&mut ap, &mut abuf, "the access point's greeting").await?;
        let mut hello = mysql::Handshake::parse(&greeting)
            .map_err(|e| anyhow::anyhow!("the access point's greeting: {e}"))?;
        if hello.capabilities & mysql::CLIENT_SSL == 0 {
            bail!("the access point at {} does not offer TLS", self.ap_addr);
        }
        hello.capabilities &= !mysql::CLIENT_SSL;
        client
            .write_all(&mysql::packet(0, &hello.encode())?)
            .await?;
        let mut cbuf = Vec::new();
        let (seq, payload) = read_mysql(&mut client, &mut cbuf, "the client's handshake").await?;
        let mysql::ClientHello::Response(mut resp) = mysql::ClientHello::parse(&payload)
            .map_err(|e| anyhow::anyhow!("the client's handshake: {e}"))?
        else {
            bail!("the client asked for TLS on the local leg: connect with --skip-ssl");
        };
        if let Some(u) = &self.route.db_user {
            resp.user = u.clone();
        }
        if let Some(d) = &self.route.db_name {
            resp.database = Some(d.clone());
            resp.capabilities |= mysql::CLIENT_CONNECT_WITH_DB;
        }
        resp.capabilities |= mysql::CLIENT_SSL;
        ap.write_all(&mysql::packet(
            seq,
            &mysql::ssl_request(resp.capabilities, resp.max_packet, resp.charset),
        )?)
        .await?;
        let mut tls = self.tls(ap).await?;
        tls.write_all(&mysql::packet(seq.wrapping_add(1), &resp.encode())?)
            .await?;
        let mut tbuf = Vec::new();
        let (_, answer) = read_mysql(&mut tls, &mut tbuf, "the access point's answer").await?;
        client
            .write_all(&mysql::packet(seq.wrapping_add(1), &answer)?)
            .await?;
        client.write_all(&tbuf).await?;
        client.write_all(&cbuf).await?;
        tokio::io::copy_bidirectional(&mut client, &mut tls).await?;
        Ok(())
    }

    /// One local PostgreSQL connection: its startup (plain), then TLS to the access point and
    /// a relay.
    async fn carry_pg(&self, mut client: TcpStream) -> anyhow::Result<()> {
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
        let mut ap = self.dial().await?;
        ap.write_all(&pg::SSL_REQUEST).await?;
        let mut answer = [0u8; 1];
        ap.read_exact(&mut answer).await?;
        if answer[0] != pg::SSL_ACCEPTED {
            bail!("the access point at {} does not speak TLS", self.ap_addr);
        }
        let mut tls = self.tls(ap).await?;
        let pairs: Vec<(&str, &str)> = out.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        tls.write_all(&pg::startup_message(&pairs)).await?;
        tls.write_all(&buf).await?;
        tokio::io::copy_bidirectional(&mut client, &mut tls).await?;
        Ok(())
    }
}

/// Read one MySQL packet (sequence id, payload); bytes after it stay in `buf`.
async fn read_mysql<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    what: &str,
) -> anyhow::Result<(u8, Vec<u8>)> {
    loop {
        if let Some((p, n)) =
            dt_dbwire::mysql::read_packet(buf).map_err(|e| anyhow::anyhow!("{what}: {e}"))?
        {
            let out = (p.seq, p.payload.to_vec());
            buf.drain(..n);
            return Ok(out);
        }
        if buf.len() > 1 << 20 {
            bail!("{what}: packet too long");
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("{what}: the connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
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
