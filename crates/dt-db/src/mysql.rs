//! The MySQL/MariaDB front of the database access point: one task per client connection.
//!
//! ```text
//! client                         access point                        database
//!   ◀── Handshake v10 (seq 0, CLIENT_SSL, our scramble)
//!   SSLRequest (seq 1) ──▶
//!   ══ TLS, client certificate of the user CA ══
//!   HandshakeResponse41 (seq 2: user, database) ──▶  decide (Target::Db)
//!                                                     ── TCP ──▶ ◀── Handshake v10 (seq 0)
//!                                                     SSLRequest (seq 1) ──▶
//!                                                     ══ TLS, database-CA certificate ══
//!                                                     HandshakeResponse41 (seq 2, empty auth) ──▶
//!                                                     [◀── AuthSwitch; empty response ──▶]
//!   ◀── OK (seq 3)                                    ◀── OK
//!   commands ⇄ relayed; COM_QUERY / COM_STMT_PREPARE audited as db.session.query
//! ```
//!
//! The client's own auth response (a password scramble, if it sent one) is ignored and never
//! forwarded or logged: the user is authenticated by the certificate, the database user by
//! the access point's database-CA certificate (`REQUIRE SUBJECT '/CN=<db user>'`).
//!
//! Deliberately not supported: compression (never advertised, so packets can be framed),
//! `LOAD DATA LOCAL INFILE` (never advertised), and `COM_CHANGE_USER` (refused: the database
//! user is the one decided at connect). The database name is decided at connect only: a
//! MySQL session may name other databases in its statements (`USE`, `db.table`), so
//! `db_names` limits the initial database, not what the database user's grants reach.

use std::sync::Arc;

use dt_dbwire::mysql::{self, ClientHello, Command, Handshake, HandshakeResponse, read_packet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{
    ConnError, NEEDS_TLS, Outcome, Prefixed, Request, STARTUP_TIMEOUT, Upstream, connect_tcp,
    no_tls_upstream, peer_identity, refuse_anonymous, route, unreachable, upstream_tls,
};
use crate::{DbState, Front};

/// The longest handshake-phase packet the access point reads (a response with connection
/// attributes is a few hundred bytes).
const MAX_STARTUP_PACKET: usize = 64 * 1024;

/// `ER_ACCESS_DENIED_ERROR`: what a refusal is (`ERROR 1045 (28000): ...`).
const ER_ACCESS_DENIED: u16 = 1045;
/// `ER_HANDSHAKE_ERROR`: a malformed handshake.
const ER_HANDSHAKE: u16 = 1043;
/// `ER_BAD_DB_ERROR`: the client named a database this access point does not serve.
const ER_BAD_DB: u16 = 1049;
/// `ER_CONNECTION_KILLED`: a lock ended the session (`ERROR 1927 (70100): ...`).
const ER_CONNECTION_KILLED: u16 = 1927;
/// `ER_NOT_SUPPORTED_YET`: a command the access point does not relay.
const ER_NOT_SUPPORTED: u16 = 1235;
/// `ER_UNKNOWN_ERROR`: the database is unreachable or refused the access point. (Client
/// error codes, 2000-2999, are not allowed from a server: the `mariadb` client reports
/// "malformed packet" instead.)
const ER_UPSTREAM: u16 = 1105;
/// `COM_CHANGE_USER`: would log in as another database user than the one decided.
const COM_CHANGE_USER: u8 = 0x11;

/// `CLIENT_LONG_FLAG`, `CLIENT_FOUND_ROWS`, ... the bits of the protocol the access point
/// relays unchanged (not compression, not local files).
const CLIENT_FOUND_ROWS: u32 = 0x0000_0002;
const CLIENT_LONG_FLAG: u32 = 0x0000_0004;
const CLIENT_IGNORE_SPACE: u32 = 0x0000_0100;
const CLIENT_INTERACTIVE: u32 = 0x0000_0400;
const CLIENT_TRANSACTIONS: u32 = 0x0000_2000;
const CLIENT_MULTI_STATEMENTS: u32 = 0x0001_0000;
const CLIENT_MULTI_RESULTS: u32 = 0x0002_0000;
const CLIENT_PS_MULTI_RESULTS: u32 = 0x0004_0000;
const CLIENT_SESSION_TRACK: u32 = 0x0080_0000;
const CLIENT_DEPRECATE_EOF: u32 = 0x0100_0000;

/// What the access point offers clients. Bit 0 (`CLIENT_MYSQL` to MariaDB clients) stays
/// clear and the greeting carries no MariaDB extended capabilities.
const ADVERTISED: u32 = CLIENT_FOUND_ROWS
    | CLIENT_LONG_FLAG
    | mysql::CLIENT_CONNECT_WITH_DB
    | CLIENT_IGNORE_SPACE
    | mysql::CLIENT_PROTOCOL_41
    | CLIENT_INTERACTIVE
    | mysql::CLIENT_SSL
    | CLIENT_TRANSACTIONS
    | mysql::CLIENT_SECURE_CONNECTION
    | CLIENT_MULTI_STATEMENTS
    | CLIENT_MULTI_RESULTS
    | CLIENT_PS_MULTI_RESULTS
    | mysql::CLIENT_PLUGIN_AUTH
    | mysql::CLIENT_CONNECT_ATTRS
    | mysql::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | CLIENT_SESSION_TRACK
    | CLIENT_DEPRECATE_EOF;

/// Bits that change how later packets look: the database must agree to every one the client
/// chose, or relaying would garble the session.
const FORMAT_BITS: u32 = CLIENT_MULTI_RESULTS
    | CLIENT_PS_MULTI_RESULTS
    | CLIENT_SESSION_TRACK
    | CLIENT_DEPRECATE_EOF
    | CLIENT_TRANSACTIONS
    | mysql::CLIENT_PROTOCOL_41
    | mysql::CLIENT_SECURE_CONNECTION
    | mysql::CLIENT_PLUGIN_AUTH;

pub(crate) async fn handle(front: Arc<Front>, tcp: TcpStream, remote: String) {
    if let Err(e) = connection(&front, tcp, &remote).await {
        tracing::info!(%remote, error = %e, "database connection ended");
    }
}

/// The access point's greeting: a fresh scramble (never used: authentication is by
/// certificate, but clients expect one).
fn greeting(connection_id: u32) -> Handshake {
    // Printable bytes: the scramble must hold no NUL.
    let auth_data = uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .chain(uuid::Uuid::new_v4().as_bytes().iter())
        .take(20)
        .map(|b| 0x21 + b % 0x5e)
        .collect();
    Handshake {
        server_version: "5.5.5-10.11.0-MariaDB-devtrust".into(),
        connection_id,
        auth_data,
        capabilities: ADVERTISED,
        charset: 45,
        status: 2,
        auth_plugin: "mysql_native_password".into(),
    }
}

/// Write an ERR packet the client prints, and close.
async fn err<S: AsyncWrite + Unpin>(s: &mut S, seq: u8, code: u16, sql_state: &str, msg: &str) {
    if let Ok(p) = mysql::packet(seq, &mysql::err_payload(code, sql_state, msg)) {
        let _ = s.write_all(&p).await;
    }
    let _ = s.flush().await;
    let _ = s.shutdown().await;
}

/// Read one handshake-phase packet: its sequence id and payload.
async fn read_one<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Result<(u8, Vec<u8>), ConnError> {
    loop {
        if let Ok(Some((p, n))) = read_packet(buf) {
            let out = (p.seq, p.payload.to_vec());
            buf.drain(..n);
            return Ok(out);
        }
        if buf.len() > MAX_STARTUP_PACKET {
            return Err(ConnError::Refused("handshake packet too long".into()));
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(ConnError::Refused(
                "the peer closed the connection during the handshake".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn read_timed<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    what: &str,
) -> Result<(u8, Vec<u8>), ConnError> {
    tokio::time::timeout(STARTUP_TIMEOUT, read_one(s, buf))
        .await
        .map_err(|_| ConnError::Refused(format!("no {what} within 10 s")))?
}

async fn connection(front: &Arc<Front>, mut tcp: TcpStream, remote: &str) -> Result<(), ConnError> {
    // 1. Our greeting; in clear only an SSLRequest may answer it.
    let hello = greeting(front.shared().sessions.next_id() as u32);
    let greeting_packet = mysql::packet(0, &hello.encode())
        .map_err(|e| ConnError::Refused(format!("greeting: {e}")))?;
    tcp.write_all(&greeting_packet).await?;
    let mut buf = Vec::new();
    let (seq, payload) = read_timed(&mut tcp, &mut buf, "SSLRequest").await?;
    match ClientHello::parse(&payload) {
        // What follows the SSLRequest in the same read is the start of the TLS handshake.
        Ok(ClientHello::SslRequest { .. }) => {}
        Ok(ClientHello::Response(_)) => {
            let seq = seq.wrapping_add(1);
            err(&mut tcp, seq, ER_ACCESS_DENIED, "28000", NEEDS_TLS).await;
            return Err(refuse_anonymous(
                front,
                remote,
                format!("refused a connection without TLS: {NEEDS_TLS}"),
            ));
        }
        Err(e) => {
            let why = format!("invalid handshake response: {e}");
            err(&mut tcp, seq.wrapping_add(1), ER_HANDSHAKE, "08S01", &why).await;
            return Err(refuse_anonymous(front, remote, why));
        }
    }

    // 2. TLS with a user-CA client certificate (rustls checks chain, validity and usage).
    let mut client = match tokio::time::timeout(
        STARTUP_TIMEOUT,
        front.shared().tls.acceptor.accept(Prefixed::new(buf, tcp)),
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

    // 3. The HandshakeResponse41 inside TLS: the database user and database.
    let mut buf = Vec::new();
    let (seq, payload) = read_timed(&mut client, &mut buf, "handshake response").await?;
    let reply_seq = seq.wrapping_add(1);
    let resp = match ClientHello::parse(&payload) {
        Ok(ClientHello::Response(r)) => r,
        Ok(ClientHello::SslRequest { .. }) => {
            let why = "a second SSLRequest inside TLS".to_string();
            err(&mut client, reply_seq, ER_HANDSHAKE, "08S01", &why).await;
            return Err(refuse_anonymous(front, remote, why));
        }
        Err(e) => {
            let why = format!("invalid handshake response: {e}");
            err(&mut client, reply_seq, ER_HANDSHAKE, "08S01", &why).await;
            return Err(refuse_anonymous(front, remote, why));
        }
    };
    let identity = match peer_identity(client.get_ref().1) {
        Ok(id) => id,
        Err(why) => {
            err(&mut client, reply_seq, ER_ACCESS_DENIED, "28000", &why).await;
            return Err(refuse_anonymous(front, remote, why));
        }
    };
    if resp.user.is_empty() {
        let why = "no database user in the handshake response";
        err(&mut client, reply_seq, ER_ACCESS_DENIED, "28000", why).await;
        return Err(ConnError::Refused(why.into()));
    }
    // The database the client named (TLS server name).
    let state = &match route(front, client.get_ref().1, remote) {
        Ok(s) => s,
        Err(why) => {
            err(&mut client, reply_seq, ER_BAD_DB, "42000", &why).await;
            return Err(ConnError::Refused(why));
        }
    };
    let mut req = Request {
        state,
        remote,
        identity,
        db_user: resp.user.clone(),
        db_name: resp.database.clone().unwrap_or_default(),
        session_id: None,
    };

    // 4. The decision.
    if let Err(refusal) = req.decide() {
        err(
            &mut client,
            reply_seq,
            ER_ACCESS_DENIED,
            "28000",
            &refusal.text,
        )
        .await;
        return Err(ConnError::Refused(refusal.text));
    }

    // 5. Upstream, as the database user; its OK reaches the client with the client's
    //    sequence id.
    let (mut upstream, ok) = match open_upstream(state, &resp).await {
        Ok(u) => u,
        Err(why) => {
            err(&mut client, reply_seq, ER_UPSTREAM, "HY000", &why).await;
            return Err(req.refuse(why));
        }
    };
    let ok = mysql::packet(reply_seq, &ok)
        .map_err(|e| ConnError::Refused(format!("the database's OK packet: {e}")))?;
    client.write_all(&ok).await?;

    // 6. The session, registered so a lock can end it.
    let live = req.start_session();
    let mut killed = live.killed.clone();

    // 7. Relay: client packets framed (commands audited), server bytes copied.
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(&mut upstream);
    let mut pending = Vec::new();
    let mut cbuf = vec![0u8; 16 * 1024];
    let mut ubuf = vec![0u8; 16 * 1024];
    // The sequence id of the client's last packet while it waits for the server (an ERR
    // the access point writes must come next); `None` once the server has answered.
    let mut client_turn: Option<u8> = None;
    let outcome = loop {
        tokio::select! {
            r = cr.read(&mut cbuf) => {
                let n = match r { Ok(0) | Err(_) => break Outcome::Closed, Ok(n) => n };
                pending.extend_from_slice(&cbuf[..n]);
                let relay = match frame_client(&pending) {
                    Ok(r) => r,
                    Err(why) => break Outcome::Broken(why),
                };
                for statement in &relay.statements {
                    req.query(statement);
                }
                if relay.used == 0 {
                    continue;
                }
                if !relay.forward.is_empty() && uw.write_all(&relay.forward).await.is_err() {
                    break Outcome::Closed;
                }
                if let Some(why) = relay.refuse {
                    let p = mysql::packet(1, &mysql::err_payload(ER_NOT_SUPPORTED, "0A000", why))
                        .unwrap_or_default();
                    if cw.write_all(&p).await.is_err() {
                        break Outcome::Closed;
                    }
                }
                client_turn = relay.last_seq;
                pending.drain(..relay.used);
            }
            r = ur.read(&mut ubuf) => {
                let n = match r { Ok(0) | Err(_) => break Outcome::Closed, Ok(n) => n };
                client_turn = None;
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
    // An idle client reads our ERR as the answer to its next command (sequence id 1).
    let seq = client_turn.map_or(1, |s| s.wrapping_add(1));
    match &outcome {
        Outcome::Closed => {}
        Outcome::Ended(why) => {
            err(&mut cw, seq, ER_CONNECTION_KILLED, "70100", &why.message).await;
        }
        Outcome::Broken(why) => err(&mut cw, seq, ER_HANDSHAKE, "08S01", why).await,
    }
    let _ = cw.shutdown().await;
    let _ = uw.shutdown().await;
    live.end(&req, &outcome);
    Ok(())
}

/// What to do with the whole packets at the front of the client's bytes.
#[derive(Debug, Default, PartialEq, Eq)]
struct ClientRelay {
    /// Bytes consumed from the front.
    used: usize,
    /// What goes to the database.
    forward: Vec<u8>,
    /// The statements to audit (COM_QUERY, COM_STMT_PREPARE), in order.
    statements: Vec<String>,
    /// A command refused instead of forwarded (the client gets an ERR with this message).
    refuse: Option<&'static str>,
    /// The sequence id of the last packet forwarded.
    last_seq: Option<u8>,
}

/// Frame the client's packets: collect each statement (the first packet of a command,
/// sequence id 0), forward them, and hold back `COM_CHANGE_USER` (and whatever follows it
/// until the client has read the refusal).
fn frame_client(pending: &[u8]) -> Result<ClientRelay, String> {
    let mut relay = ClientRelay::default();
    while relay.refuse.is_none() {
        let Some((p, n)) = read_packet(&pending[relay.used..]).map_err(|e| e.to_string())? else {
            break;
        };
        let start = relay.used;
        relay.used += n;
        if p.seq == 0 {
            match mysql::command(p.payload).map_err(|e| format!("malformed command: {e}"))? {
                Command::Query(q) | Command::Prepare(q) => relay.statements.push(q),
                Command::Other(COM_CHANGE_USER) => {
                    relay.refuse = Some(
                        "changing the database user is not supported through devtrust: connect again as that user",
                    );
                    continue;
                }
                Command::Quit | Command::Other(_) => {}
            }
        }
        relay.forward.extend_from_slice(&pending[start..relay.used]);
        relay.last_seq = Some(p.seq);
    }
    Ok(relay)
}

/// Log in to the database as the decided user: TLS with a database-CA certificate, an
/// empty auth response (the certificate authenticates). Returns the stream and the
/// server's OK payload.
async fn open_upstream(
    state: &DbState,
    resp: &HandshakeResponse,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>), String> {
    let up = Upstream::for_user(state, &resp.user).await?;
    let mut tcp = connect_tcp(state).await?;
    let mut buf = Vec::new();
    let io = |e: ConnError| unreachable(state, &e);
    let (_, payload) = read_timed(&mut tcp, &mut buf, "server greeting")
        .await
        .map_err(io)?;
    if payload.first() == Some(&0xff) {
        return Err(server_refused(state, &payload));
    }
    let hs = Handshake::parse(&payload)
        .map_err(|e| unreachable(state, &format!("unexpected server greeting: {e}")))?;
    if hs.capabilities & mysql::CLIENT_SSL == 0 {
        return Err(no_tls_upstream(state));
    }
    let missing = resp.capabilities & ADVERTISED & FORMAT_BITS & !hs.capabilities;
    if missing != 0 {
        return Err(format!(
            "database {:?} lacks protocol capabilities the client chose (0x{missing:08x})",
            state.database.name
        ));
    }
    let caps = (resp.capabilities & hs.capabilities & ADVERTISED & !mysql::CLIENT_CONNECT_ATTRS)
        | mysql::CLIENT_SSL;
    let ssl = mysql::packet(1, &mysql::ssl_request(caps, resp.max_packet, resp.charset))
        .map_err(|e| e.to_string())?;
    tcp.write_all(&ssl)
        .await
        .map_err(|e| unreachable(state, &e))?;
    let mut tls = upstream_tls(state, up, tcp).await?;
    let login = HandshakeResponse {
        capabilities: caps,
        max_packet: resp.max_packet,
        charset: resp.charset,
        user: resp.user.clone(),
        auth_response: Vec::new(),
        database: resp.database.clone(),
        auth_plugin: Some(hs.auth_plugin.clone()),
    };
    let p = mysql::packet(2, &login.encode()).map_err(|e| e.to_string())?;
    tls.write_all(&p)
        .await
        .map_err(|e| unreachable(state, &e))?;
    let mut buf = Vec::new();
    // OK, ERR, or an auth switch (answered with an empty response) then OK or ERR.
    for _ in 0..3 {
        let (seq, payload) = read_timed(&mut tls, &mut buf, "login answer")
            .await
            .map_err(io)?;
        match payload.first() {
            Some(0x00) => return Ok((tls, payload)),
            Some(0xff) => return Err(server_refused(state, &payload)),
            Some(0xfe) => {
                let p = mysql::packet(seq.wrapping_add(1), &[]).map_err(|e| e.to_string())?;
                tls.write_all(&p)
                    .await
                    .map_err(|e| unreachable(state, &e))?;
            }
            // caching_sha2_password "fast auth success"; the OK follows.
            Some(0x01) if payload.get(1) == Some(&0x03) => {}
            _ => break,
        }
    }
    Err(format!(
        "database {:?} asked for more than a certificate to log in as {:?}: create the user with `REQUIRE SUBJECT '/CN={}'` and no password",
        state.database.name, resp.user, resp.user
    ))
}

/// The database's ERR packet, as the client reads it.
fn server_refused(state: &DbState, payload: &[u8]) -> String {
    match mysql::parse_err(payload) {
        Ok((code, sql_state, msg)) => format!(
            "database {:?} refused the access point: ERROR {code} ({sql_state}): {msg}",
            state.database.name
        ),
        Err(e) => format!(
            "database {:?} refused the access point with a malformed error: {e}",
            state.database.name
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_offers_tls_and_parses() {
        let g = greeting(7);
        let back = Handshake::parse(&g.encode()).unwrap();
        assert_eq!(back, g);
        assert_ne!(back.capabilities & mysql::CLIENT_SSL, 0);
        assert!(back.auth_data.iter().all(|b| *b != 0));
        assert_eq!(back.capabilities & 1, 0, "no CLIENT_MYSQL bit");
        assert_eq!(ADVERTISED & 0x20, 0, "never compression");
        assert_eq!(ADVERTISED & 0x80, 0, "never local files");
    }

    fn cmd(code: u8, text: &str) -> Vec<u8> {
        let mut payload = vec![code];
        payload.extend_from_slice(text.as_bytes());
        mysql::packet(0, &payload).unwrap()
    }

    #[test]
    fn statements_are_collected_and_whole_packets_forwarded() {
        let mut bytes = cmd(mysql::COM_QUERY, "select 1");
        bytes.extend(cmd(mysql::COM_STMT_PREPARE, "select ?"));
        // COM_STMT_EXECUTE is relayed, not a statement of its own.
        bytes.extend(cmd(0x17, "\x01\x00\x00\x00"));
        let whole = bytes.len();
        bytes.extend(&cmd(mysql::COM_QUERY, "select 2")[..6]);
        let r = frame_client(&bytes).unwrap();
        assert_eq!(r.statements, ["select 1", "select ?"]);
        assert_eq!((r.used, r.forward.len()), (whole, whole));
        assert_eq!(r.last_seq, Some(0));
        assert_eq!(r.refuse, None);
        // A partial packet waits for the rest.
        assert_eq!(
            frame_client(&bytes[whole..]).unwrap(),
            ClientRelay::default()
        );
    }

    #[test]
    fn change_user_is_refused_not_forwarded() {
        let mut bytes = cmd(mysql::COM_QUERY, "select 1");
        let first = bytes.len();
        bytes.extend(cmd(COM_CHANGE_USER, "bob\0"));
        let held = bytes.len();
        bytes.extend(cmd(mysql::COM_QUERY, "select 2"));
        let r = frame_client(&bytes).unwrap();
        assert_eq!(r.forward, bytes[..first]);
        assert_eq!(
            r.used, held,
            "what follows waits until the refusal is answered"
        );
        assert!(r.refuse.is_some());
        assert_eq!(r.statements, ["select 1"]);
    }

    #[test]
    fn an_empty_command_breaks_the_session() {
        let bytes = mysql::packet(0, &[]).unwrap();
        assert!(
            frame_client(&bytes)
                .unwrap_err()
                .contains("malformed command")
        );
    }

    proptest::proptest! {
        #[test]
        fn framing_never_panics_and_forwards_only_what_it_consumed(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)
        ) {
            if let Ok(r) = frame_client(&bytes) {
                proptest::prop_assert!(r.used <= bytes.len());
                proptest::prop_assert!(r.forward.len() <= r.used);
            }
        }
    }
}
