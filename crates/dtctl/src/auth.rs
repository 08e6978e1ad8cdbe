//! `dtctl auth sign --format=db --host=HOST --out=DIR`: a certificate of the cluster's
//! database CA for a database server. The key is made here and never leaves this machine;
//! the auth service signs its public half.
//!
//! Written to DIR (created 0700 if needed): `server.key` (0600), `server.crt`, and
//! `server.cas` (the database CA: what the server trusts for the client certificates
//! database access points log in with).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use dt_proto::v1 as pb;
use dt_proto::v1::database_service_client::DatabaseServiceClient;

use crate::{Global, connect_channel};
use dt_cli::{api_err, parse_duration};

#[derive(Subcommand)]
pub enum AuthCmd {
    /// Sign certificates with the cluster's CAs for servers devtrust connects to.
    #[command(
        long_about = "Sign certificates with the cluster's CAs for servers devtrust connects to.\n\n\
--format=db: a server certificate of the cluster's database CA for a PostgreSQL or MariaDB/MySQL \
server, and the CA bundle that server must trust for client certificates. Then configure the \
server, e.g. PostgreSQL:\n\n  ssl = on\n  ssl_cert_file = 'server.crt'\n  ssl_key_file = 'server.key'\n  \
ssl_ca_file = 'server.cas'\n  # pg_hba.conf:\n  hostssl all all 0.0.0.0/0 cert\n\nMariaDB/MySQL:\n\n  \
[mariadbd]\n  ssl-cert = server.crt\n  ssl-key = server.key\n  ssl-ca = server.cas\n  \
# and for each user: ALTER USER alice REQUIRE SUBJECT '/CN=alice';"
    )]
    Sign {
        /// What to sign for (db: a database server).
        #[arg(long, value_enum)]
        format: SignFormat,
        /// Host names and IP addresses the server is reached at, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        host: Vec<String>,
        /// Directory to write server.crt, server.key and server.cas into.
        #[arg(long)]
        out: PathBuf,
        /// Certificate lifetime.
        #[arg(long, value_parser = parse_duration, default_value = "90d")]
        ttl: Duration,
        /// Replace files that already exist in --out.
        #[arg(long)]
        overwrite: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SignFormat {
    /// A PostgreSQL or MySQL/MariaDB server certificate of the database CA.
    Db,
}

pub async fn run(g: &Global, cmd: AuthCmd) -> anyhow::Result<()> {
    match cmd {
        AuthCmd::Sign {
            format: SignFormat::Db,
            host,
            out,
            ttl,
            overwrite,
        } => sign_db(g, &host, &out, ttl, overwrite).await,
    }
}

async fn sign_db(
    g: &Global,
    hosts: &[String],
    out: &Path,
    ttl: Duration,
    overwrite: bool,
) -> anyhow::Result<()> {
    let files = ["server.key", "server.crt", "server.cas"].map(|f| out.join(f));
    if !overwrite && let Some(f) = files.iter().find(|f| f.exists()) {
        bail!(
            "{} exists; pass --overwrite to replace it, or choose another --out",
            f.display()
        );
    }
    let key = dt_ca::ClientKey::generate()?;
    let resp = DatabaseServiceClient::new(connect_channel(g).await?)
        .sign_database_server(pb::SignDatabaseServerRequest {
            public_key_der: key.spki_der(),
            hosts: hosts.to_vec(),
            ttl_seconds: ttl.as_secs(),
        })
        .await
        .map_err(api_err)?
        .into_inner();
    if !out.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(out)
            .with_context(|| format!("cannot create {}", out.display()))?;
    }
    write(&files[0], key.to_pkcs8_pem().as_bytes(), 0o600)?;
    write(
        &files[1],
        dt_ca::pem::to_pem("CERTIFICATE", &resp.cert_der).as_bytes(),
        0o644,
    )?;
    write(
        &files[2],
        dt_ca::pem::to_pem("CERTIFICATE", &resp.ca_cert_der).as_bytes(),
        0o644,
    )?;
    let until = time::OffsetDateTime::from_unix_timestamp(resp.expires_unix)
        .map(dt_cli::fmt_time)
        .unwrap_or_default();
    println!(
        "Database server certificate for {} (valid until {until}) written to {}:\n  server.key  the server's private key (0600; give it to the database's user)\n  server.crt  its certificate, signed by the cluster's database CA\n  server.cas  the database CA: trust it for client certificates\nSee `dtctl auth sign --help` for the PostgreSQL and MariaDB settings.",
        hosts.join(","),
        out.display()
    );
    Ok(())
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
