//! What every protocol front of the database access point shares: the identity from the
//! client's certificate, the one decision and its wording, the audit events of a session,
//! the session registry entry a lock ends, and the upstream certificate and TLS.
//!
//! A front (`pg`, `mysql`) keeps only its wire: how to ask for TLS, where the database user
//! and name come from, and how an error reaches its client.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use dt_agent::access::{Ending, SessionTarget, device_info};
use dt_agent::sessions::LiveSession;
use dt_authz::Target;
use dt_ca::Identity;
use dt_proto::v1 as pb;
use dt_proto::v1::database_service_client::DatabaseServiceClient;
use dt_types::audit::{AuditEvent, EventType};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::{DbState, Front, Protocol};

/// How long a client has for the startup phase and the TLS handshake.
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to the database may take.
pub(crate) const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// What a client sent in clear when the access point needs TLS.
pub(crate) const NEEDS_TLS: &str = "devtrust database access needs TLS with your devtrust certificate: use `dtsh db connect`, or `dtsh proxy db --tunnel` and connect to its local port";

/// Accept clients until `shutdown` turns true; each connection gets the front of the
/// database's protocol.
pub async fn serve(
    front: Arc<Front>,
    listener: tokio::net::TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    let (front, remote) = (front.clone(), peer.to_string());
                    match front.protocol {
                        Protocol::Postgres => tokio::spawn(crate::pg::handle(front, tcp, remote)),
                        Protocol::Mysql => tokio::spawn(crate::mysql::handle(front, tcp, remote)),
                    };
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
        }
    }
}

/// A live database session, for the runtime's lock enforcement.
pub struct DbSession {
    identity: Arc<Identity>,
    target: SessionTarget,
    /// Set to the reason when the session must end.
    kill: watch::Sender<Option<Ending>>,
}

impl LiveSession for DbSession {
    fn identity(&self) -> &Identity {
        &self.identity
    }
    fn target(&self) -> &SessionTarget {
        &self.target
    }
}

/// A lock (or expiry) ends `session`: its relay tells the client and closes.
pub fn end_session(session: DbSession, why: Ending) {
    let _ = session.kill.send(Some(why));
}

/// Why a connection ended before or instead of a session.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Refused(String),
}

/// An audit event about the database (or access point) `resource` and client address.
pub(crate) fn event(resource: &str, kind: EventType, success: bool, remote: &str) -> AuditEvent {
    AuditEvent::new(kind, success, OffsetDateTime::now_utc())
        .resource("db", resource.to_string())
        .remote_addr(remote.to_string())
}

/// Audit a refusal before any identity is known (or before the client named a database);
/// returns `why` for the connection's error.
pub(crate) fn refuse_anonymous(front: &Front, remote: &str, why: String) -> ConnError {
    front.shared().audit.emit(
        event(
            front.resource_name(),
            EventType::AccessDenied,
            false,
            remote,
        )
        .message(why.clone()),
    );
    ConnError::Refused(why)
}

/// The database the client named in TLS (SNI), or a refusal for the client.
pub(crate) fn route(
    front: &Front,
    conn: &rustls::ServerConnection,
    remote: &str,
) -> Result<Arc<DbState>, String> {
    front.route(conn.server_name()).inspect_err(|why| {
        let _ = refuse_anonymous(front, remote, why.clone());
    })
}

/// The devtrust identity in the client's certificate (rustls has verified its chain to the
/// user CA, its validity and its usage).
pub(crate) fn peer_identity(conn: &rustls::ServerConnection) -> Result<Arc<Identity>, String> {
    let der = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| "no client certificate".to_string())?;
    dt_ca::parse_x509_identity(der.as_ref())
        .map(Arc::new)
        .map_err(|e| format!("certificate refused: {e}"))
}

/// A refusal by the decision: what the client reads, and what the audit keeps.
pub(crate) struct Refusal {
    pub text: String,
    pub audit_message: String,
    pub lock: Option<String>,
}

/// Who asked for what, for the decision and every audit event of the connection.
pub(crate) struct Request<'a> {
    pub state: &'a DbState,
    pub remote: &'a str,
    pub identity: Arc<Identity>,
    pub db_user: String,
    pub db_name: String,
    pub session_id: Option<String>,
}

impl Request<'_> {
    fn target(&self) -> Target<'_> {
        Target::Db {
            name: &self.state.database.name,
            labels: &self.state.database.labels,
            db_user: &self.db_user,
            db_name: &self.db_name,
        }
    }

    /// The one decision (locks, cluster-wide and role device-trust modes, db_labels,
    /// db_users, db_names). A refusal is audited here.
    pub fn decide(&self) -> Result<(), Refusal> {
        let target = self.target();
        let now = OffsetDateTime::now_utc();
        let decided = self.state.view.read(|v| {
            dt_agent::access::decide(v, &self.identity, &target, now, self.state.freshness)
        });
        let Err(denial) = decided else {
            return Ok(());
        };
        let mut text = denial.description(&target);
        if let Some(advice) = denial.advice() {
            text = format!("{text}. {advice}");
        }
        let refusal = Refusal {
            text,
            audit_message: denial.audit_message(&target),
            lock: denial.lock().map(str::to_owned),
        };
        let mut e = self
            .event(EventType::AccessDenied, false)
            .message(refusal.audit_message.clone());
        e.lock = refusal.lock.clone();
        self.state.audit.emit(e);
        Err(refusal)
    }

    /// An audit event with the user, device, database user and name (and session, once
    /// there is one).
    pub fn event(&self, kind: EventType, ok: bool) -> AuditEvent {
        let mut e = event(&self.state.database.name, kind, ok, self.remote)
            .user(self.identity.username.clone())
            .message(format!("database {:?}", self.db_name));
        e.login = Some(self.db_user.clone());
        e.session_id = self.session_id.clone();
        if let Some(d) = device_info(&self.identity) {
            e = e.device(d);
        }
        e
    }

    /// Audit a refusal after the decision (e.g. the database is down).
    pub fn refuse(&self, why: String) -> ConnError {
        self.state.audit.emit(
            self.event(EventType::AccessDenied, false)
                .message(why.clone()),
        );
        ConnError::Refused(why)
    }

    /// Audit one statement of the session.
    pub fn query(&self, statement: &str) {
        let mut e = self.event(EventType::DbSessionQuery, true);
        e.command = Some(statement.to_string());
        self.state.audit.emit(e);
    }

    /// Register the session (so a lock ends it) and audit its start.
    pub fn start_session(&mut self) -> LiveEntry {
        self.session_id = Some(uuid::Uuid::new_v4().to_string());
        let (kill, killed) = watch::channel(None::<Ending>);
        let conn_id = self.state.sessions.next_id();
        self.state.sessions.insert(
            conn_id,
            DbSession {
                identity: self.identity.clone(),
                target: SessionTarget::Db {
                    name: self.state.database.name.clone(),
                    db_user: self.db_user.clone(),
                    db_name: self.db_name.clone(),
                },
                kill,
            },
        );
        self.state
            .audit
            .emit(self.event(EventType::DbSessionStart, true));
        LiveEntry { conn_id, killed }
    }
}

/// A registered session; [`LiveEntry::end`] removes it and audits how it ended.
pub(crate) struct LiveEntry {
    conn_id: u64,
    /// Turns `Some` when a lock (or expiry) ends the session.
    pub killed: watch::Receiver<Option<Ending>>,
}

/// How a relay ended.
pub(crate) enum Outcome {
    /// One side closed.
    Closed,
    /// A lock or expiry ended it.
    Ended(Ending),
    /// The client broke the protocol.
    Broken(String),
}

impl LiveEntry {
    pub fn end(self, r: &Request<'_>, outcome: &Outcome) {
        r.state.sessions.remove(self.conn_id);
        let mut end = r.event(EventType::DbSessionEnd, true);
        match outcome {
            Outcome::Closed => {}
            Outcome::Ended(why) => {
                let mut t = r
                    .event(EventType::SessionTerminate, true)
                    .message(why.message.clone());
                t.lock = why.lock.clone();
                r.state.audit.emit(t);
                end = end.message(format!("terminated: {}", why.message));
                end.lock = why.lock.clone();
            }
            Outcome::Broken(why) => end = end.message(why.clone()),
        }
        r.state.audit.emit(end);
    }
}

/// The parts of an upstream TLS login as `db_user`: a fresh database-CA client certificate
/// and the server's CA.
pub(crate) struct Upstream {
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: rustls::pki_types::ServerName<'static>,
}

impl Upstream {
    /// A client certificate for `db_user` (10 minutes, from the auth service; reused by
    /// later connections as the same database user until a minute before it expires) and
    /// the TLS connector that presents it and verifies the server.
    pub async fn for_user(state: &DbState, db_user: &str) -> Result<Upstream, String> {
        let db = &state.database;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let cached = state
            .upstream_certs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(db_user)
            .filter(|c| c.expires_unix - now > 60)
            .cloned();
        let cert = match cached {
            Some(c) => c,
            None => {
                let key = dt_ca::ClientKey::generate().map_err(|e| format!("key: {e}"))?;
                let signed = DatabaseServiceClient::new(state.channel.clone())
                    .sign_database_client(pb::SignDatabaseClientRequest {
                        public_key_der: key.spki_der(),
                        db_user: db_user.to_string(),
                    })
                    .await
                    .map_err(|s| {
                        format!(
                            "the auth service did not sign a certificate for db user {db_user:?}: {}",
                            s.message()
                        )
                    })?
                    .into_inner();
                let c = UpstreamCert {
                    key_pkcs8: key.pkcs8_der().to_vec(),
                    cert_der: signed.cert_der,
                    ca_cert_der: signed.ca_cert_der,
                    expires_unix: signed.expires_unix,
                };
                let mut certs = state
                    .upstream_certs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if certs.len() > 1000 {
                    certs.retain(|_, c| c.expires_unix > now);
                }
                certs.insert(db_user.to_string(), c.clone());
                c
            }
        };
        let server_ca = match &db.server_ca_pem {
            Some(pem) => dt_ca::pem::parse_cert_pem(pem).map_err(|e| format!("--db-ca: {e}"))?,
            None => cert.ca_cert_der.clone(),
        };
        let (connector, server_name) =
            crate::tls::upstream(&server_ca, cert.cert_der, cert.key_pkcs8, host(&db.uri))
                .map_err(|e| e.to_string())?;
        Ok(Upstream {
            connector,
            server_name,
        })
    }
}

/// A database-CA client certificate the access point logs in upstream with.
#[derive(Clone)]
pub struct UpstreamCert {
    key_pkcs8: Vec<u8>,
    cert_der: Vec<u8>,
    ca_cert_der: Vec<u8>,
    expires_unix: i64,
}

/// The host part of `HOST:PORT` (brackets of an IPv6 address removed).
fn host(uri: &str) -> &str {
    uri.rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(uri)
}

/// What the client reads when the database cannot be reached.
pub(crate) fn unreachable(state: &DbState, e: &dyn std::fmt::Display) -> String {
    let db = &state.database;
    format!("database {:?} at {} is unreachable: {e}", db.name, db.uri)
}

/// A TCP connection to the database.
pub(crate) async fn connect_tcp(state: &DbState) -> Result<TcpStream, String> {
    let tcp = tokio::time::timeout(UPSTREAM_TIMEOUT, TcpStream::connect(&state.database.uri))
        .await
        .map_err(|_| unreachable(state, &"timed out"))?
        .map_err(|e| unreachable(state, &e))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// The TLS handshake with the database over `tcp`.
pub(crate) async fn upstream_tls(
    state: &DbState,
    up: Upstream,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    tokio::time::timeout(UPSTREAM_TIMEOUT, up.connector.connect(up.server_name, tcp))
        .await
        .map_err(|_| unreachable(state, &"TLS handshake timed out"))?
        .map_err(|e| format!("TLS to database {:?} failed: {e}", state.database.name))
}

/// What the client reads when the database does not offer TLS.
pub(crate) fn no_tls_upstream(state: &DbState) -> String {
    format!(
        "database {:?} at {} does not offer TLS; configure it with `dtctl auth sign --format=db`",
        state.database.name, state.database.uri
    )
}

/// A stream that first yields bytes already read from it: a MySQL client starts its TLS
/// handshake right after the SSLRequest without waiting for an answer, so the first read may
/// hold both.
pub(crate) struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Prefixed<S> {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let left = this.prefix.get(this.pos..).unwrap_or_default();
        if !left.is_empty() && buf.remaining() > 0 {
            let n = left.len().min(buf.remaining());
            buf.put_slice(&left[..n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn prefixed_yields_the_prefix_then_the_stream() {
        let (mut a, b) = tokio::io::duplex(64);
        let mut p = super::Prefixed::new(b"hello ".to_vec(), b);
        a.write_all(b"world").await.unwrap();
        drop(a);
        let mut out = String::new();
        p.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[test]
    fn host_of_uri() {
        assert_eq!(super::host("localhost:5432"), "localhost");
        assert_eq!(super::host("[::1]:3306"), "::1");
        assert_eq!(super::host("db"), "db");
    }
}
