//! The PostgreSQL front of the database access point: one task per client connection (see
//! the crate doc for the steps).

use std::sync::Arc;

use dt_dbwire::pg;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{
    ConnError, NEEDS_TLS, Outcome, Request, STARTUP_TIMEOUT, Upstream, connect_tcp,
    no_tls_upstream, peer_identity, refuse_anonymous, route, unreachable, upstream_tls,
};
use crate::{DbState, Front};

pub(crate) async fn handle(front: Arc<Front>, tcp: TcpStream, remote: String) {
    if let Err(e) = connection(&front, tcp, &remote).await {
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

async fn connection(front: &Arc<Front>, mut tcp: TcpStream, remote: &str) -> Result<(), ConnError> {
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
    match first {
        Ok(pg::Startup::SslRequest) if buf.is_empty() => {}
        Ok(pg::Startup::SslRequest) => {
            return Err(refuse_anonymous(
                front,
                remote,
                "bytes after SSLRequest before the TLS handshake".into(),
            ));
        }
        Ok(pg::Startup::Startup { .. }) => {
            fatal(&mut tcp, "28000", NEEDS_TLS).await;
            return Err(refuse_anonymous(
                front,
                remote,
                format!("refused a connection without TLS: {NEEDS_TLS}"),
            ));
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
            return Err(refuse_anonymous(front, remote, why));
        }
        Err(e) => return Err(e),
    }
    tcp.write_all(&[pg::SSL_ACCEPTED]).await?;

    // 2. TLS with a user-CA client certificate (rustls checks chain, validity and usage).
    let mut client = match tokio::time::timeout(
        STARTUP_TIMEOUT,
        front.shared().tls.acceptor.accept(tcp),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(refuse_anonymous(
                front,
                remote,
                format!("TLS handshake refused: {e}"),
            ));
        }
        Err(_) => return Err(ConnError::Refused("TLS handshake timed out".into())),
    };
    let identity = match peer_identity(client.get_ref().1) {
        Ok(id) => id,
        Err(why) => {
            fatal(&mut client, "28000", &why).await;
            return Err(refuse_anonymous(front, remote, why));
        }
    };
    // The database the client named (TLS server name).
    let state = &match route(front, client.get_ref().1, remote) {
        Ok(s) => s,
        Err(why) => {
            fatal(&mut client, "3D000", &why).await;
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
    if db_user.is_empty() {
        fatal(
            &mut client,
            "28000",
            "no database user in the startup message",
        )
        .await;
        return Err(ConnError::Refused("no database user".into()));
    }
    let mut req = Request {
        state,
        remote,
        identity,
        db_user,
        db_name,
        session_id: None,
    };

    // 4. The decision.
    if let Err(refusal) = req.decide() {
        fatal(&mut client, "28000", &refusal.text).await;
        return Err(ConnError::Refused(refusal.text));
    }

    // 5. Upstream, as the database user.
    let mut upstream = match open_upstream(state, &req.db_user, &req.db_name, params).await {
        Ok(s) => s,
        Err(why) => {
            fatal(&mut client, "08006", &why).await;
            return Err(req.refuse(why));
        }
    };

    // 6. The session, registered so a lock can end it.
    let live = req.start_session();
    let mut killed = live.killed.clone();

    // 7. Relay: client messages framed (each statement audited), server bytes copied.
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(&mut upstream);
    let mut pending = Vec::new();
    let mut cbuf = vec![0u8; 16 * 1024];
    let mut ubuf = vec![0u8; 16 * 1024];
    let outcome = loop {
        tokio::select! {
            r = cr.read(&mut cbuf) => {
                let n = match r { Ok(0) | Err(_) => break Outcome::Closed, Ok(n) => n };
                pending.extend_from_slice(&cbuf[..n]);
                let mut used = 0;
                let mut bad = None;
                loop {
                    match pg::read_message(&pending[used..]) {
                        Ok(Some((msg, len))) => {
                            match pg::statement(&msg) {
                                Ok(Some(st)) => req.query(st.query()),
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
                    break Outcome::Broken(why);
                }
                if used > 0 {
                    if uw.write_all(&pending[..used]).await.is_err() {
                        break Outcome::Closed;
                    }
                    pending.drain(..used);
                }
            }
            r = ur.read(&mut ubuf) => {
                let n = match r { Ok(0) | Err(_) => break Outcome::Closed, Ok(n) => n };
                if cw.write_all(&ubuf[..n]).await.is_err() {
                    break Outcome::Closed;
                }
            }
            _ = killed.changed() => {
                match killed.borrow().clone() {
                    Some(why) => break Outcome::Ended(why),
                    None => break Outcome::Closed,
                }
            }
        }
    };
    match &outcome {
        Outcome::Closed => {}
        Outcome::Ended(why) => {
            let _ = cw
                .write_all(&pg::error_response("FATAL", "57P01", &why.message))
                .await;
            let _ = cw.flush().await;
        }
        Outcome::Broken(why) => {
            let _ = cw
                .write_all(&pg::error_response("FATAL", "08P01", why))
                .await;
        }
    }
    let _ = cw.shutdown().await;
    let _ = uw.shutdown().await;
    live.end(&req, &outcome);
    Ok(())
}

/// TLS to the database as `db_user` with a fresh database-CA client certificate.
async fn open_upstream(
    state: &DbState,
    db_user: &str,
    db_name: &str,
    params: &[(String, String)],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let up = Upstream::for_user(state, db_user).await?;
    let mut tcp = connect_tcp(state).await?;
    tcp.write_all(&pg::SSL_REQUEST)
        .await
        .map_err(|e| unreachable(state, &e))?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .await
        .map_err(|e| unreachable(state, &e))?;
    if answer[0] != pg::SSL_ACCEPTED {
        return Err(no_tls_upstream(state));
    }
    let mut tls = upstream_tls(state, up, tcp).await?;
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
        .map_err(|e| unreachable(state, &e))?;
    Ok(tls)
}
