//! The PostgreSQL front of the database access point: one task per client connection (see
//! the crate doc for the steps).

use std::sync::Arc;
use std::time::Duration;

use dt_agent::access::{Denial, Ending, SessionTarget, device_info};
use dt_agent::sessions::LiveSession;
use dt_authz::{DenyReason, Target};
use dt_ca::Identity;
use dt_dbwire::pg;
use dt_proto::v1 as pb;
use dt_proto::v1::database_service_client::DatabaseServiceClient;
use dt_types::audit::{AuditEvent, EventType};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::DbState;

/// How long a client has for the startup phase and the TLS handshake.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to the database may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);

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
pub fn end_session(_state: &DbState, session: DbSession, why: Ending) {
    let _ = session.kill.send(Some(why));
}

/// Accept clients until `shutdown` turns true.
pub async fn serve(
    state: Arc<DbState>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    tokio::spawn(handle(state.clone(), tcp, peer.to_string()));
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

/// Why a connection ended before or instead of a session.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Refused(String),
}

fn event(state: &DbState, kind: EventType, success: bool, remote: &str) -> AuditEvent {
    AuditEvent::new(kind, success, OffsetDateTime::now_utc())
        .resource("db", state.database.name.clone())
        .remote_addr(remote.to_string())
}

async fn handle(state: Arc<DbState>, tcp: TcpStream, remote: String) {
    if let Err(e) = connection(&state, tcp, &remote).await {
        tracing::info!(%remote, error = %e, "database connection ended");
    }
}

/// Write a FATAL the client prints, and close.
async fn fatal<S: AsyncWrite + Unpin>(s: &mut S, code: &str, message: &str) {
    let _ = s
        .write_all(&pg::error_response("FATAL", code, message))
        .await;
    let _ = s.flush().await;
    let _ = s.shutdown().await;
}

/// Read one startup-phase message.
async fn read_startup<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Result<pg::Startup, ConnError> {
    loop {
        match pg::read_startup(buf) {
            Ok(Some((m, n))) => {
                buf.drain(..n);
                return Ok(m);
            }
            Ok(None) => {}
            Err(e) => return Err(ConnError::Refused(format!("invalid startup packet: {e}"))),
        }
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(ConnError::Refused(
                "the client closed the connection during startup".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn connection(
    state: &Arc<DbState>,
    mut tcp: TcpStream,
    remote: &str,
) -> Result<(), ConnError> {
    // 1. In clear: only SSLRequest (or GSSENCRequest, which we decline) may come first.
    let mut buf = Vec::new();
    let first = tokio::time::timeout(STARTUP_TIMEOUT, async {
        loop {
            match read_startup(&mut tcp, &mut buf).await? {
                pg::Startup::GssEncRequest => tcp.write_all(&[pg::NOT_OFFERED]).await?,
                other => return Ok::<_, ConnError>(other),
            }
        }
    })
    .await
    .map_err(|_| ConnError::Refused("no startup packet within 10 s".into()))?;
    let refuse_clear = |why: String| {
        let e = event(state, EventType::AccessDenied, false, remote).message(why.clone());
        state.audit.emit(e);
        why
    };
    match first {
        Ok(pg::Startup::SslRequest) if buf.is_empty() => {}
        Ok(pg::Startup::SslRequest) => {
            let why = refuse_clear("bytes after SSLRequest before the TLS handshake".into());
            return Err(ConnError::Refused(why));
        }
        Ok(pg::Startup::Startup { .. }) => {
            let msg = "devtrust database access needs TLS with your devtrust certificate: use `dtsh db connect`, or `dtsh proxy db --tunnel` and connect to its local port";
            fatal(&mut tcp, "28000", msg).await;
            return Err(ConnError::Refused(refuse_clear(format!(
                "refused a connection without TLS: {msg}"
            ))));
        }
        Ok(pg::Startup::CancelRequest { .. }) => {
            return Err(ConnError::Refused(
                "cancel requests are not supported".into(),
            ));
        }
        // The loop above answers GSSENCRequest and reads on; it never returns one.
        Ok(pg::Startup::GssEncRequest) => {
            return Err(ConnError::Refused("unexpected GSSENCRequest".into()));
        }
        Err(ConnError::Refused(why)) => {
            fatal(&mut tcp, "08P01", &why).await;
            return Err(ConnError::Refused(refuse_clear(why)));
        }
        Err(e) => return Err(e),
    }
    tcp.write_all(&[pg::SSL_ACCEPTED]).await?;

    // 2. TLS with a user-CA client certificate (rustls checks chain, validity and usage).
    let mut client =
        match tokio::time::timeout(STARTUP_TIMEOUT, state.tls.acceptor.accept(tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let why = format!("TLS handshake refused: {e}");
                state.audit.emit(
                    event(state, EventType::AccessDenied, false, remote).message(why.clone()),
                );
                return Err(ConnError::Refused(why));
            }
            Err(_) => return Err(ConnError::Refused("TLS handshake timed out".into())),
        };
    let identity = {
        let (_, conn) = client.get_ref();
        let der = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
            .ok_or_else(|| ConnError::Refused("no client certificate".into()))?;
        dt_ca::parse_x509_identity(&der)
    };
    let identity = match identity {
        Ok(id) => Arc::new(id),
        Err(e) => {
            let why = format!("certificate refused: {e}");
            fatal(&mut client, "28000", &why).await;
            state
                .audit
                .emit(event(state, EventType::AccessDenied, false, remote).message(why.clone()));
            return Err(ConnError::Refused(why));
        }
    };

    // 3. The StartupMessage, inside TLS.
    let mut buf = Vec::new();
    let startup = tokio::time::timeout(STARTUP_TIMEOUT, read_startup(&mut client, &mut buf))
        .await
        .map_err(|_| ConnError::Refused("no startup message within 10 s".into()))??;
    let pg::Startup::Startup { params, .. } = &startup else {
        fatal(&mut client, "08P01", "expected a StartupMessage").await;
        return Err(ConnError::Refused("expected a StartupMessage".into()));
    };
    let db_user = startup.param("user").unwrap_or_default().to_string();
    let db_name = startup
        .param("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(&db_user)
        .to_string();
    let base = |kind, ok| {
        let mut e = event(state, kind, ok, remote)
            .user(identity.username.clone())
            .message(format!("database {db_name:?}"));
        e.login = Some(db_user.clone());
        if let Some(d) = device_info(&identity) {
            e = e.device(d);
        }
        e
    };
    if db_user.is_empty() {
        fatal(
            &mut client,
            "28000",
            "no database user in the startup message",
        )
        .await;
        return Err(ConnError::Refused("no database user".into()));
    }

    // 4. The decision.
    let target = Target::Db {
        name: &state.database.name,
        labels: &state.database.labels,
        db_user: &db_user,
        db_name: &db_name,
    };
    let now = OffsetDateTime::now_utc();
    let decided = state
        .view
        .read(|v| dt_agent::access::decide(v, &identity, &target, now, state.freshness));
    if let Err(denial) = decided {
        let mut text = denial.description(&target);
        if matches!(
            denial,
            Denial::Policy(
                DenyReason::ClusterRequiresTrustedDevice
                    | DenyReason::RoleRequiresTrustedDevice { .. }
            )
        ) {
            text.push_str(
                ". Enroll this device (`dtsh device enroll --current-device`, or ask an admin for an enrollment token) and log in again",
            );
        }
        fatal(&mut client, "28000", &text).await;
        let mut e = base(EventType::AccessDenied, false).message(denial.audit_message(&target));
        e.lock = denial.lock().map(str::to_owned);
        state.audit.emit(e);
        return Err(ConnError::Refused(text));
    }

    // 5. Upstream, as the database user.
    let mut upstream = match open_upstream(state, &db_user, &db_name, params).await {
        Ok(s) => s,
        Err(why) => {
            fatal(&mut client, "08006", &why).await;
            state
                .audit
                .emit(base(EventType::AccessDenied, false).message(why.clone()));
            return Err(ConnError::Refused(why));
        }
    };

    // 6. The session, registered so a lock can end it.
    let session_id = uuid::Uuid::new_v4().to_string();
    let (kill, mut killed) = watch::channel(None::<Ending>);
    let conn_id = state.sessions.next_id();
    state.sessions.insert(
        conn_id,
        DbSession {
            identity: identity.clone(),
            target: SessionTarget::Db {
                name: state.database.name.clone(),
                db_user: db_user.clone(),
                db_name: db_name.clone(),
            },
            kill,
        },
    );
    let with_session = |mut e: AuditEvent| {
        e.session_id = Some(session_id.clone());
        e
    };
    state
        .audit
        .emit(with_session(base(EventType::DbSessionStart, true)));

    // 7. Relay: client messages framed (each statement audited), server bytes copied.
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(&mut upstream);
    let mut pending = Vec::new();
    let mut cbuf = vec![0u8; 16 * 1024];
    let mut ubuf = vec![0u8; 16 * 1024];
    let outcome: Result<Option<Ending>, String> = loop {
        tokio::select! {
            r = cr.read(&mut cbuf) => {
                let n = match r { Ok(0) | Err(_) => break Ok(None), Ok(n) => n };
                pending.extend_from_slice(&cbuf[..n]);
                let mut used = 0;
                let mut bad = None;
                loop {
                    match pg::read_message(&pending[used..]) {
                        Ok(Some((msg, len))) => {
                            match pg::statement(&msg) {
                                Ok(Some(st)) => {
                                    let mut e = with_session(base(EventType::DbSessionQuery, true));
                                    e.command = Some(st.query().to_string());
                                    state.audit.emit(e);
                                }
                                Ok(None) => {}
                                Err(e) => { bad = Some(format!("malformed {} message: {e}", msg.tag as char)); break; }
                            }
                            used += len;
                        }
                        Ok(None) => break,
                        Err(e) => { bad = Some(format!("malformed message: {e}")); break; }
                    }
                }
                if let Some(why) = bad {
                    break Err(why);
                }
                if used > 0 {
                    if uw.write_all(&pending[..used]).await.is_err() {
                        break Ok(None);
                    }
                    pending.drain(..used);
                }
            }
            r = ur.read(&mut ubuf) => {
                let n = match r { Ok(0) | Err(_) => break Ok(None), Ok(n) => n };
                if cw.write_all(&ubuf[..n]).await.is_err() {
                    break Ok(None);
                }
            }
            _ = killed.changed() => {
                break Ok(killed.borrow().clone());
            }
        }
    };
    state.sessions.remove(conn_id);
    let mut end = with_session(base(EventType::DbSessionEnd, true));
    match outcome {
        Ok(None) => {}
        Ok(Some(why)) => {
            let _ = cw
                .write_all(&pg::error_response("FATAL", "57P01", &why.message))
                .await;
            let _ = cw.flush().await;
            let mut t =
                with_session(base(EventType::SessionTerminate, true)).message(why.message.clone());
            t.lock = why.lock.clone();
            state.audit.emit(t);
            end = end.message(format!("terminated: {}", why.message));
            end.lock = why.lock;
        }
        Err(why) => {
            let _ = cw
                .write_all(&pg::error_response("FATAL", "08P01", &why))
                .await;
            end = end.message(why);
        }
    }
    let _ = cw.shutdown().await;
    let _ = uw.shutdown().await;
    state.audit.emit(end);
    Ok(())
}

/// TLS to the database as `db_user` with a fresh database-CA client certificate.
async fn open_upstream(
    state: &DbState,
    db_user: &str,
    db_name: &str,
    params: &[(String, String)],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let db = &state.database;
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
    let server_ca = match &db.server_ca_pem {
        Some(pem) => dt_ca::pem::parse_cert_pem(pem).map_err(|e| format!("--db-ca: {e}"))?,
        None => signed.ca_cert_der.clone(),
    };
    let host = db
        .uri
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(&db.uri);
    let unreachable = |e: &dyn std::fmt::Display| {
        format!("database {:?} at {} is unreachable: {e}", db.name, db.uri)
    };
    let mut tcp = tokio::time::timeout(UPSTREAM_TIMEOUT, TcpStream::connect(&db.uri))
        .await
        .map_err(|_| unreachable(&"timed out"))?
        .map_err(|e| unreachable(&e))?;
    let _ = tcp.set_nodelay(true);
    tcp.write_all(&pg::SSL_REQUEST)
        .await
        .map_err(|e| unreachable(&e))?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .await
        .map_err(|e| unreachable(&e))?;
    if answer[0] != pg::SSL_ACCEPTED {
        return Err(format!(
            "database {:?} at {} does not offer TLS; configure it with `dtctl auth sign --format=db`",
            db.name, db.uri
        ));
    }
    let (connector, name) =
        crate::tls::upstream(&server_ca, signed.cert_der, key.pkcs8_der().to_vec(), host)
            .map_err(|e| e.to_string())?;
    let mut tls = tokio::time::timeout(UPSTREAM_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| unreachable(&"TLS handshake timed out"))?
        .map_err(|e| format!("TLS to database {:?} failed: {e}", db.name))?;
    // The client's own parameters (application_name, options...) go along; user and
    // database are the decided ones.
    let mut out: Vec<(&str, &str)> = vec![("user", db_user), ("database", db_name)];
    out.extend(
        params
            .iter()
            .filter(|(k, _)| k != "user" && k != "database")
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    tls.write_all(&pg::startup_message(&out))
        .await
        .map_err(|e| unreachable(&e))?;
    Ok(tls)
}
