//! devtrust's database access point (`devtrust db start`): PostgreSQL and MySQL/MariaDB
//! clients reach a database through it, and only as the runtime's decision allows.
//!
//! For each PostgreSQL client connection ([`pg`]):
//!
//! 1. The client must ask for TLS (PostgreSQL's SSLRequest); the access point presents its
//!    own certificate (host CA, named after it) and requires a client certificate that
//!    chains to the cluster's **user CA** — the user's devtrust certificate, which carries
//!    the device when it authenticated one.
//! 2. The StartupMessage names the database user and database. One decision,
//!    [`dt_agent::access::decide`] for [`dt_authz::Target::Db`]: locks, the cluster-wide
//!    device-trust mode, the roles' `db_labels`, `db_users`, `db_names` (deny first) and the
//!    granting roles' device-trust modes. A refusal is a PostgreSQL `FATAL` the client
//!    prints, worded like the seeds, and an `access.denied` audit event.
//! 3. Allowed: the access point gets a 10-minute client certificate of the cluster's
//!    **database CA** for that database user, connects to the database with TLS (verifying
//!    the server by the database CA), logs in as the user (certificate authentication), and
//!    relays. Each statement (simple `Query`, extended `Parse`) is a `db.session.query`
//!    audit event; the session is `db.session.start` / `db.session.end`.
//! 4. The session is registered with the runtime, so a lock that matches it ends it within
//!    a sweep (a `FATAL` with the lock's message, then the connection closes).
//!
//! The MySQL/MariaDB front ([`mysql`]) follows the same steps on its own wire: the access
//! point sends the server greeting advertising CLIENT_SSL, the client's SSLRequest starts TLS,
//! and the HandshakeResponse inside TLS names the database user and database.
//!
//! What both fronts share (identity, decision, audit, session registry, upstream
//! certificate) is in `common`.

mod common;
pub mod mysql;
pub mod pg;
mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use dt_agent::access::Freshness;
use dt_agent::sessions::SessionRegistry;
use dt_agent::{AgentError, Runtime, RuntimeConfig, Served};
use dt_types::ServiceKind;

pub use common::DbSession;

/// The database protocols an access point speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Postgres,
    /// MySQL and MariaDB.
    Mysql,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Postgres => "postgres",
            Protocol::Mysql => "mysql",
        }
    }
}

/// One database served.
#[derive(Clone, Debug)]
pub struct Database {
    /// The database's name in devtrust (what roles' locks and `dtsh db` name).
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub protocol: Protocol,
    /// The database server, `HOST:PORT`.
    pub uri: String,
    /// The CA that signed the database server's certificate (PEM); `None`: the cluster's
    /// database CA.
    pub server_ca_pem: Option<String>,
}

#[derive(Clone, Debug)]
pub struct DbConfig {
    /// The runtime (kind, name, join, data dir). Its `resources` are filled from `database`.
    pub runtime: RuntimeConfig,
    pub listen: SocketAddr,
    pub database: Database,
    pub freshness: Freshness,
}

/// What every connection shares.
pub struct DbState {
    pub database: Database,
    pub view: Arc<dt_agent::view::SharedView>,
    pub audit: dt_agent::audit::AuditQueue,
    pub sessions: Arc<SessionRegistry<DbSession>>,
    pub freshness: Freshness,
    pub tls: tls::Tls,
    pub channel: tonic::transport::Channel,
}

/// A running database access point.
pub struct RunningDb {
    pub addr: SocketAddr,
    pub state: Arc<DbState>,
    runtime: Runtime,
}

impl RunningDb {
    pub async fn stop(self) {
        self.runtime.stop().await;
    }

    pub fn audit_pending(&self) -> u64 {
        self.runtime.audit.pending()
    }
}

/// Join (if needed), start the runtime, and serve the database on `cfg.listen`.
pub async fn start(mut cfg: DbConfig) -> Result<RunningDb, AgentError> {
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| AgentError::Config(format!("cannot listen on {}: {e}", cfg.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| AgentError::Config(format!("listener: {e}")))?;
    if cfg.runtime.advertise_addr.is_empty() {
        cfg.runtime.advertise_addr = addr.to_string();
    }
    cfg.runtime.resources = vec![Served {
        name: cfg.database.name.clone(),
        labels: cfg.database.labels.clone(),
        protocol: cfg.database.protocol.as_str().into(),
        description: format!("{} at {}", cfg.database.protocol.as_str(), cfg.database.uri),
    }];
    let kind = cfg.runtime.kind;
    if !matches!(kind, ServiceKind::Db | ServiceKind::Node) {
        return Err(AgentError::Config(format!(
            "a database access point joins as kind db, not {kind}"
        )));
    }
    let mut runtime = Runtime::start(cfg.runtime.clone()).await?;
    let tls = tls::Tls::new(&runtime.identity)?;
    let state = Arc::new(DbState {
        database: cfg.database.clone(),
        view: runtime.view.clone(),
        audit: runtime.audit.clone(),
        sessions: Arc::new(SessionRegistry::default()),
        freshness: cfg.freshness,
        tls,
        channel: runtime.channel.clone(),
    });
    let shutdown = runtime.shutdown_signal();
    runtime.spawn(common::serve(state.clone(), listener, shutdown));
    let s = state.clone();
    runtime.spawn(dt_agent::sessions::enforce(
        state.sessions.clone(),
        state.view.clone(),
        state.freshness,
        "database access point",
        move |_, session: DbSession, why| {
            let s = s.clone();
            async move { common::end_session(&s, session, why) }
        },
    ));
    tracing::info!(db = %cfg.database.name, %addr, upstream = %cfg.database.uri, "database access point serving");
    Ok(RunningDb {
        addr,
        state,
        runtime,
    })
}
