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
    /// Where its clients connect, when not the access point's `listen`.
    pub listen: Option<SocketAddr>,
}

#[derive(Clone, Debug)]
pub struct DbConfig {
    /// The runtime (kind, name, join, data dir). Its `resources` are filled from `databases`.
    pub runtime: RuntimeConfig,
    /// The listener of every database that names none of its own.
    pub listen: SocketAddr,
    pub databases: Vec<Database>,
    pub freshness: Freshness,
}

/// What every connection to one database shares.
pub struct DbState {
    pub database: Database,
    pub view: Arc<dt_agent::view::SharedView>,
    pub audit: dt_agent::audit::AuditQueue,
    pub sessions: Arc<SessionRegistry<DbSession>>,
    pub freshness: Freshness,
    pub tls: tls::Tls,
    pub channel: tonic::transport::Channel,
    /// Upstream client certificates by database user, reused until shortly before expiry.
    pub upstream_certs: std::sync::Mutex<std::collections::HashMap<String, common::UpstreamCert>>,
}

/// One listener: the databases its clients may name (all of one protocol), and the access
/// point's name for what happens before a client has named one.
pub struct Front {
    pub access_point: String,
    pub protocol: Protocol,
    pub databases: Vec<Arc<DbState>>,
}

impl Front {
    /// Any database's state: they share the audit queue, TLS and sessions.
    pub(crate) fn shared(&self) -> &DbState {
        &self.databases[0]
    }

    /// What a refusal before routing is about: the one database, or the access point.
    pub(crate) fn resource_name(&self) -> &str {
        match self.databases.as_slice() {
            [one] => &one.database.name,
            _ => &self.access_point,
        }
    }

    /// The database a client asked for by its TLS server name (SNI). With one database, any
    /// name (or none) reaches it: psql sends the host it dialled.
    pub fn route(&self, sni: Option<&str>) -> Result<Arc<DbState>, String> {
        if let Some(db) = sni.and_then(|n| self.databases.iter().find(|d| d.database.name == n)) {
            return Ok(db.clone());
        }
        if let [one] = self.databases.as_slice() {
            return Ok(one.clone());
        }
        let names: Vec<&str> = self
            .databases
            .iter()
            .map(|d| d.database.name.as_str())
            .collect();
        let names = names.join(", ");
        Err(match sni {
            Some(n) => format!(
                "no database {n:?} at access point {:?}; it serves {names}. Use `dtsh db ls` and `dtsh db connect NAME`",
                self.access_point
            ),
            None => format!(
                "access point {:?} serves several databases ({names}): name one in the TLS server name (`dtsh db connect NAME` does; psql: host=NAME hostaddr=ADDRESS)",
                self.access_point
            ),
        })
    }
}

/// Group `databases` into listeners: one per address, each of one protocol.
fn fronts_of(cfg: &DbConfig) -> Result<BTreeMap<SocketAddr, Vec<Database>>, AgentError> {
    if cfg.databases.is_empty() {
        return Err(AgentError::Config("no database to serve".into()));
    }
    let mut names = std::collections::BTreeSet::new();
    let mut by_addr: BTreeMap<SocketAddr, Vec<Database>> = BTreeMap::new();
    for db in &cfg.databases {
        if !names.insert(db.name.as_str()) {
            return Err(AgentError::Config(format!(
                "database {:?} is listed twice",
                db.name
            )));
        }
        by_addr
            .entry(db.listen.unwrap_or(cfg.listen))
            .or_default()
            .push(db.clone());
    }
    for (addr, dbs) in &by_addr {
        if let Some(other) = dbs.iter().find(|d| d.protocol != dbs[0].protocol) {
            return Err(AgentError::Config(format!(
                "databases {:?} ({}) and {:?} ({}) cannot share the listener {addr}: a MySQL server speaks first, a PostgreSQL client does; give one of them its own `listen`",
                dbs[0].name,
                dbs[0].protocol.as_str(),
                other.name,
                other.protocol.as_str()
            )));
        }
    }
    Ok(by_addr)
}

/// A running database access point.
pub struct RunningDb {
    /// The first listener's address.
    pub addr: SocketAddr,
    /// Each database's listener.
    pub addrs: BTreeMap<String, SocketAddr>,
    pub fronts: Vec<Arc<Front>>,
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

/// Where clients dial a listener bound to `local`: an unspecified address becomes the
/// advertised host.
fn dial_addr(local: SocketAddr, advertise: &str) -> String {
    if !local.ip().is_unspecified() {
        return local.to_string();
    }
    let host = advertise
        .rsplit_once(':')
        .map(|(h, _)| h)
        .filter(|h| !h.is_empty())
        .unwrap_or("127.0.0.1");
    format!("{host}:{}", local.port())
}

/// Join (if needed), start the runtime, and serve the databases on their listeners.
pub async fn start(mut cfg: DbConfig) -> Result<RunningDb, AgentError> {
    let kind = cfg.runtime.kind;
    if !matches!(kind, ServiceKind::Db | ServiceKind::Node) {
        return Err(AgentError::Config(format!(
            "a database access point joins as kind db, not {kind}"
        )));
    }
    let groups = fronts_of(&cfg)?;
    let mut listeners = Vec::new();
    for (want, dbs) in groups {
        let listener = tokio::net::TcpListener::bind(want)
            .await
            .map_err(|e| AgentError::Config(format!("cannot listen on {want}: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| AgentError::Config(format!("listener: {e}")))?;
        listeners.push((listener, addr, dbs));
    }
    if cfg.runtime.advertise_addr.is_empty() {
        cfg.runtime.advertise_addr = listeners[0].1.to_string();
    }
    let advertise = cfg.runtime.advertise_addr.clone();
    let first = listeners[0].1;
    cfg.runtime.resources = listeners
        .iter()
        .flat_map(|(_, addr, dbs)| {
            let dial = if *addr == first {
                String::new()
            } else {
                dial_addr(*addr, &advertise)
            };
            dbs.iter().map(move |db| Served {
                name: db.name.clone(),
                labels: db.labels.clone(),
                protocol: db.protocol.as_str().into(),
                description: format!("{} at {}", db.protocol.as_str(), db.uri),
                addr: dial.clone(),
            })
        })
        .collect();
    let mut runtime = Runtime::start(cfg.runtime.clone()).await?;
    let tls = tls::Tls::new(&runtime.identity)?;
    let sessions = Arc::new(SessionRegistry::default());
    let mut fronts = Vec::new();
    let mut addrs = BTreeMap::new();
    for (listener, addr, dbs) in listeners {
        let front = Arc::new(Front {
            access_point: cfg.runtime.name.clone(),
            protocol: dbs[0].protocol,
            databases: dbs
                .into_iter()
                .map(|database| {
                    addrs.insert(database.name.clone(), addr);
                    tracing::info!(db = %database.name, %addr, upstream = %database.uri, "database access point serving");
                    Arc::new(DbState {
                        database,
                        view: runtime.view.clone(),
                        audit: runtime.audit.clone(),
                        sessions: sessions.clone(),
                        freshness: cfg.freshness,
                        tls: tls.clone(),
                        channel: runtime.channel.clone(),
                        upstream_certs: Default::default(),
                    })
                })
                .collect(),
        });
        let shutdown = runtime.shutdown_signal();
        runtime.spawn(common::serve(front.clone(), listener, shutdown));
        fronts.push(front);
    }
    runtime.spawn(dt_agent::sessions::enforce(
        sessions,
        runtime.view.clone(),
        cfg.freshness,
        "database access point",
        move |_, session: DbSession, why| async move { common::end_session(session, why) },
    ));
    Ok(RunningDb {
        addr: first,
        addrs,
        fronts,
        runtime,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn db(name: &str, protocol: Protocol, listen: Option<&str>) -> Database {
        Database {
            name: name.into(),
            labels: BTreeMap::new(),
            protocol,
            uri: "localhost:5432".into(),
            server_ca_pem: None,
            listen: listen.map(|l| l.parse().unwrap()),
        }
    }

    fn cfg(databases: Vec<Database>) -> DbConfig {
        DbConfig {
            runtime: RuntimeConfig {
                data_dir: "/nonexistent".into(),
                kind: ServiceKind::Db,
                name: "ap".into(),
                advertise_addr: String::new(),
                labels: BTreeMap::new(),
                resources: Vec::new(),
                heartbeat_every: std::time::Duration::from_secs(10),
                join: None,
                auth_servers: None,
            },
            listen: "127.0.0.1:3036".parse().unwrap(),
            databases,
            freshness: Freshness::default(),
        }
    }

    #[test]
    fn databases_group_by_listener_and_protocol() {
        let g = fronts_of(&cfg(vec![
            db("a", Protocol::Postgres, None),
            db("b", Protocol::Postgres, None),
            db("m", Protocol::Mysql, Some("127.0.0.1:3037")),
        ]))
        .unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!(g[&"127.0.0.1:3036".parse().unwrap()].len(), 2);

        let mixed = fronts_of(&cfg(vec![
            db("a", Protocol::Postgres, None),
            db("m", Protocol::Mysql, None),
        ]))
        .unwrap_err();
        assert!(
            mixed.to_string().contains("cannot share the listener"),
            "{mixed}"
        );
        let twice = fronts_of(&cfg(vec![
            db("a", Protocol::Postgres, None),
            db("a", Protocol::Postgres, Some("127.0.0.1:1")),
        ]))
        .unwrap_err();
        assert!(twice.to_string().contains("listed twice"), "{twice}");
        assert!(fronts_of(&cfg(vec![])).is_err());
    }

    #[test]
    fn unspecified_listeners_are_dialled_at_the_advertised_host() {
        assert_eq!(
            dial_addr("0.0.0.0:5000".parse().unwrap(), "db.example.com:3036"),
            "db.example.com:5000"
        );
        assert_eq!(
            dial_addr("127.0.0.2:5000".parse().unwrap(), "x:1"),
            "127.0.0.2:5000"
        );
    }
}
