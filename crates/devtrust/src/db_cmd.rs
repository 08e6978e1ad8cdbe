//! `devtrust db start`: a database access point (PostgreSQL, MySQL/MariaDB) on the access-point runtime.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use dt_agent::access::Freshness;
use dt_types::ServiceKind;

use crate::node_cmd::{
    AccessPointFlags, JoinFlags, access_point_runtime, init_logging, parse_labels, runtime,
    until_stopped,
};

pub const DEFAULT_DB_DATA_DIR: &str = "/var/lib/devtrust-db";

#[derive(Subcommand)]
pub enum DbCmd {
    /// Run a database access point: join the cluster (first start, with a `db` join token),
    /// heartbeat the database so `dtsh db ls` lists it, watch the cluster's roles, locks and
    /// device-trust settings, and let PostgreSQL or MySQL/MariaDB clients reach the database only as the
    /// roles' db_labels, db_users and db_names and the device-trust modes allow.
    ///
    /// The database must trust the cluster's database CA for client certificates
    /// (`dtctl auth sign --format=db`, then `hostssl ... cert` in pg_hba.conf, or MariaDB's
    /// `ssl-ca` and users created with `REQUIRE SUBJECT '/CN=<user>'`): the access point logs
    /// in as the requested database user with a short-lived certificate of it.
    Start(DbStartArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolArg {
    Postgres,
    /// MySQL or MariaDB.
    Mysql,
}

#[derive(Args)]
pub struct DbStartArgs {
    /// Auth server address, HOST:PORT (several: HOST:PORT,HOST:PORT). Needed at the first
    /// start (with --token); later it replaces the addresses saved at join.
    #[arg(long, env = "DEVTRUST_AUTH_SERVER")]
    auth_server: Option<String>,
    /// Join token from `dtctl tokens add --type=db` (first start).
    #[arg(long, env = "DEVTRUST_DB_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The database's name in devtrust (`dtsh db ls`, roles' locks, `dtctl lock --db`). With
    /// --config: the access point's own name.
    #[arg(long)]
    name: String,
    /// Serve several databases, listed in a YAML file:
    ///
    ///   databases:
    ///     - name: pg-main            # as in --name
    ///       protocol: postgres       # or mysql
    ///       uri: pg.internal:5432
    ///       labels: {env: prod}      # optional
    ///       db_ca: /etc/pg-ca.pem    # optional, as --db-ca
    ///       listen: 0.0.0.0:3037     # optional: its own listener (needed to mix protocols)
    ///
    /// Databases on one listener are told apart by the TLS server name the client sends
    /// (`dtsh db connect NAME` sends NAME; psql: host=NAME hostaddr=ADDRESS).
    #[arg(long, conflicts_with_all = ["uri", "labels", "db_ca", "protocol"], verbatim_doc_comment)]
    config: Option<PathBuf>,
    /// Where clients connect (TLS with their devtrust certificate).
    #[arg(long, default_value = "127.0.0.1:3036")]
    listen: SocketAddr,
    /// The address clients dial, if not the listen address.
    #[arg(long)]
    advertise: Option<String>,
    /// Labels, e.g. env=prod,team=billing (roles' db_labels match them).
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// The wire protocol of the database.
    #[arg(long, value_enum)]
    protocol: Option<ProtocolArg>,
    /// The database server, HOST:PORT. HOST must be a name (or address) in its certificate.
    #[arg(long, required_unless_present = "config")]
    uri: Option<String>,
    /// The CA (PEM file) that signed the database server's certificate; by default the
    /// cluster's database CA (the one `dtctl auth sign --format=db` uses).
    #[arg(long)]
    db_ca: Option<PathBuf>,
    /// Where the access point keeps its identity and audit spool (0700).
    #[arg(long, env = "DEVTRUST_DB_DATA_DIR", default_value = DEFAULT_DB_DATA_DIR)]
    data_dir: PathBuf,
    #[command(flatten)]
    common: AccessPointFlags,
}

pub fn run_db(cmd: DbCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        DbCmd::Start(a) => {
            init_logging(&a.common.log_format);
            runtime()?.block_on(start(a))
        }
    }
}

/// One database of a `--config` file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DbEntry {
    name: String,
    protocol: ProtocolArg,
    uri: String,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    db_ca: Option<PathBuf>,
    listen: Option<SocketAddr>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DbFile {
    databases: Vec<DbEntry>,
}

fn protocol(p: ProtocolArg) -> dt_db::Protocol {
    match p {
        ProtocolArg::Postgres => dt_db::Protocol::Postgres,
        ProtocolArg::Mysql => dt_db::Protocol::Mysql,
    }
}

fn read_ca(path: &Option<PathBuf>, what: &str) -> anyhow::Result<Option<String>> {
    path.as_ref()
        .map(|p| {
            std::fs::read_to_string(p)
                .with_context(|| format!("{what}: cannot read {}", p.display()))
        })
        .transpose()
}

fn check_uri(uri: &str, what: &str) -> anyhow::Result<()> {
    if !uri.contains(':') {
        bail!("{what}={uri:?}: use HOST:PORT of the database server");
    }
    Ok(())
}

/// The databases to serve: from --config, or the one of --name/--uri/--protocol.
fn databases(a: &DbStartArgs) -> anyhow::Result<Vec<dt_db::Database>> {
    let Some(path) = &a.config else {
        let uri = a.uri.clone().unwrap_or_default();
        check_uri(&uri, "--uri")?;
        return Ok(vec![dt_db::Database {
            name: a.name.clone(),
            labels: parse_labels(&a.labels)?,
            protocol: protocol(a.protocol.unwrap_or(ProtocolArg::Postgres)),
            uri,
            server_ca_pem: read_ca(&a.db_ca, "--db-ca")?,
            listen: None,
        }]);
    };
    let file: DbFile = crate::node_cmd::read_config(path, "database list")?;
    if file.databases.is_empty() {
        bail!("--config {}: `databases` lists none", path.display());
    }
    file.databases
        .into_iter()
        .map(|d| {
            let what = format!("database {:?}", d.name);
            if d.name.is_empty() {
                bail!("--config {}: a database without a name", path.display());
            }
            check_uri(&d.uri, &format!("{what}: uri"))?;
            Ok(dt_db::Database {
                server_ca_pem: read_ca(&d.db_ca, &format!("{what}: db_ca"))?,
                name: d.name,
                labels: d.labels,
                protocol: protocol(d.protocol),
                uri: d.uri,
                listen: d.listen,
            })
        })
        .collect()
}

async fn start(a: DbStartArgs) -> anyhow::Result<ExitCode> {
    let dbs = databases(&a)?;
    let db = dt_db::start(dt_db::DbConfig {
        runtime: access_point_runtime(JoinFlags {
            kind: ServiceKind::Db,
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
        databases: dbs.clone(),
        freshness: Freshness {
            strict_max_age: a.common.strict_max_age,
        },
    })
    .await
    .context("cannot start the database access point")?;
    // A closed stdout (a supervisor that stopped reading) must not take the access point down.
    let mut out = std::io::stdout();
    let _ = writeln!(out, "devtrust database access point {} is running", a.name);
    let _ = writeln!(out, "  listen:    {}", db.addr);
    for d in &dbs {
        let _ = writeln!(
            out,
            "  database:  {} = {} {} (clients: {})",
            d.name,
            d.protocol.as_str(),
            d.uri,
            db.addrs
                .get(&d.name)
                .map(|a| a.to_string())
                .unwrap_or_default()
        );
    }
    let _ = writeln!(out, "  data dir:  {}", a.data_dir.display());
    let next = if dbs.iter().all(|d| d.protocol == dt_db::Protocol::Mysql) {
        "Next: mariadb through the access point with your devtrust certificate (--ssl, --ssl-cert, --ssl-key), or `dtsh db connect NAME`"
    } else {
        "Next: psql through the access point with your devtrust certificate (sslmode=require, sslcert, sslkey), or `dtsh db connect NAME`"
    };
    let _ = writeln!(out, "{next}");
    let _ = out.flush();
    until_stopped().await;
    db.stop().await;
    let _ = writeln!(out, "devtrust database access point {} stopped", a.name);
    Ok(ExitCode::SUCCESS)
}
