//! The SSH server: a russh [`Handler`] per connection.
//!
//! - Authentication: OpenSSH **user certificates only** ([`access::authenticate`]). Plain
//!   keys, passwords and keyboard-interactive are refused. Rejections take a constant time
//!   (russh's `auth_rejection_time`), except the initial `none` probe every OpenSSH client
//!   sends, which is answered at once.
//! - Authorization: at each session channel open, one decision ([`access::decide`]) over the
//!   current cluster view; a denial rejects the channel with reason `administratively
//!   prohibited` and a description the client shows (see [`access::Denial::description`]),
//!   and leaves an `access.denied` audit event.
//! - Sessions: exec and shell, with or without a PTY, window changes, signals, the exit
//!   status propagated ([`session`]). No port forwarding, agent forwarding, X11 or
//!   subsystems.
//! - Live sessions are registered with their identity ([`SessionRegistry`]) so that a new
//!   lock ends them ([`enforce_locks`]).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dt_ca::{Identity, SshUserCaKey};
use dt_types::audit::EventType;
use russh::server::{Auth, ChannelOpenHandle, Handle, Msg, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure, Disconnect, MethodKind, MethodSet, Pty, Sig};
use time::OffsetDateTime;

use dt_agent::access::{Ending, SessionTarget};
use dt_agent::sessions::LiveSession;
pub use dt_agent::view::SharedView;
use dt_authz::Target;

use crate::access::{self, Denial, Freshness, NodeFacts};
use crate::audit::{self, AuditQueue};
use crate::session::{self, Input, PtyRequest, Running, SessionSpec};
use crate::users::{LocalUser, RunAs};

/// At most this many session channels per connection.
const MAX_CHANNELS: usize = 10;

/// One live, authenticated connection.
pub struct LiveConn {
    identity: Arc<Identity>,
    /// `login` on this node: what locks and messages are about.
    target: SessionTarget,
    login: String,
    handle: Handle,
    channels: Vec<(ChannelId, String)>,
    remote: String,
}

impl LiveSession for LiveConn {
    fn identity(&self) -> &Identity {
        &self.identity
    }
    fn target(&self) -> &SessionTarget {
        &self.target
    }
    /// A connection with no open session can run nothing; its next channel open is decided
    /// (and refused with the lock's message and an audit event) against the current view.
    /// Cutting it here would only lose the message.
    fn is_active(&self) -> bool {
        !self.channels.is_empty()
    }
}

/// Live connections by id, so locks can end them.
pub type SessionRegistry = dt_agent::sessions::SessionRegistry<LiveConn>;

/// Everything connections share.
pub struct NodeState {
    pub facts: RwLock<NodeFacts>,
    pub user_ca: SshUserCaKey,
    pub view: Arc<SharedView>,
    pub audit: AuditQueue,
    pub run_as: RunAs,
    pub sessions: Arc<SessionRegistry>,
    pub freshness: Freshness,
    /// Counters for `/metrics` (`--metrics-listen`).
    pub metrics: crate::metrics::NodeMetrics,
}

impl NodeState {
    pub fn new(
        facts: NodeFacts,
        user_ca: SshUserCaKey,
        view: Arc<SharedView>,
        audit: AuditQueue,
        run_as: RunAs,
        freshness: Freshness,
    ) -> Arc<Self> {
        Arc::new(NodeState {
            facts: RwLock::new(facts),
            user_ca,
            view,
            audit,
            run_as,
            sessions: Arc::new(SessionRegistry::default()),
            freshness,
            metrics: crate::metrics::NodeMetrics::default(),
        })
    }

    pub fn facts(&self) -> NodeFacts {
        match self.facts.read() {
            Ok(f) => f.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// A handler for a new TCP connection.
    pub fn handler(self: &Arc<Self>, peer: Option<SocketAddr>) -> ConnHandler {
        ConnHandler {
            state: self.clone(),
            conn_id: self.sessions.next_id(),
            remote: peer.map(|p| p.to_string()).unwrap_or_default(),
            auth: None,
            channels: HashMap::new(),
        }
    }
}

/// The russh server configuration for this node's host key and certificate.
pub fn ssh_config(
    host_key: russh::keys::PrivateKey,
    host_cert: ssh_key::Certificate,
) -> russh::server::Config {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    russh::server::Config {
        server_id: russh::SshId::Standard(
            format!("SSH-2.0-devtrust_{}", env!("CARGO_PKG_VERSION")).into(),
        ),
        methods,
        auth_rejection_time: Duration::from_millis(100),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        certificates: vec![host_cert],
        inactivity_timeout: Some(Duration::from_secs(3600)),
        keepalive_interval: Some(Duration::from_secs(30)),
        nodelay: true,
        ..Default::default()
    }
}

struct Authed {
    identity: Arc<Identity>,
    login: String,
}

struct ChanState {
    session_id: String,
    user: LocalUser,
    switch_user: bool,
    pty: Option<PtyRequest>,
    env: Vec<(String, String)>,
    running: Option<Running>,
}

/// One connection's handler.
pub struct ConnHandler {
    state: Arc<NodeState>,
    conn_id: u64,
    remote: String,
    auth: Option<Authed>,
    channels: HashMap<ChannelId, ChanState>,
}

impl Drop for ConnHandler {
    fn drop(&mut self) {
        let id = self.conn_id;
        self.state.sessions.remove(id);
        for ch in self.channels.values() {
            if let Some(r) = &ch.running {
                let _ = r
                    .input
                    .try_send(Input::Signal(rustix::process::Signal::HUP));
            }
        }
    }
}

fn russh_sig(s: &Sig) -> Option<rustix::process::Signal> {
    use rustix::process::Signal as S;
    Some(match s {
        Sig::ABRT => S::ABORT,
        Sig::ALRM => S::ALARM,
        Sig::FPE => S::FPE,
        Sig::HUP => S::HUP,
        Sig::ILL => S::ILL,
        Sig::INT => S::INT,
        Sig::KILL => S::KILL,
        Sig::PIPE => S::PIPE,
        Sig::QUIT => S::QUIT,
        Sig::SEGV => S::SEGV,
        Sig::TERM => S::TERM,
        Sig::USR1 => S::USR1,
        Sig::Custom(_) => return None,
    })
}

impl ConnHandler {
    fn base_event(&self, kind: EventType, success: bool) -> dt_types::audit::AuditEvent {
        let mut e = audit::event(kind, success).remote_addr(self.remote.clone());
        if let Some(a) = &self.auth {
            e = e.user(a.identity.username.clone());
            e.login = Some(a.login.clone());
            if let Some(d) = access::device_info(&a.identity) {
                e = e.device(d);
            }
        }
        e
    }

    fn start(
        &mut self,
        channel: ChannelId,
        command: Option<String>,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let node = self.state.facts().name.into_string();
        let Some(ch) = self.channels.get(&channel) else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        if ch.running.is_some() {
            session.channel_failure(channel)?;
            return Ok(());
        }
        // A channel opened before the certificate expired starts nothing after.
        if let Some(a) = &self.auth
            && a.identity.is_expired(OffsetDateTime::now_utc())
        {
            let denial = Denial::CertExpired {
                not_after: a.identity.not_after,
            };
            let mut e =
                self.base_event(EventType::AccessDenied, false)
                    .message(denial.audit_message(&Target::Ssh {
                        node: &node,
                        labels: &BTreeMap::new(),
                        login: &a.login,
                    }));
            e.node = Some(node.clone());
            e.session_id = Some(ch.session_id.clone());
            self.state.audit.emit(e);
            session.channel_failure(channel)?;
            return Ok(());
        }
        let spec = SessionSpec {
            user: ch.user.clone(),
            switch_user: ch.switch_user,
            command: command.clone(),
            pty: ch.pty.clone(),
            env: ch.env.clone(),
            node_name: node.clone(),
        };
        let session_id = ch.session_id.clone();
        let mut start_ev = self.base_event(EventType::SessionStart, true);
        start_ev.session_id = Some(session_id.clone());
        start_ev.message = Some(match (&command, spec.pty.is_some()) {
            (None, _) => "interactive shell".into(),
            (Some(_), true) => "exec with a pty".into(),
            (Some(_), false) => "exec".into(),
        });
        let mut end_ev = self.base_event(EventType::SessionEnd, true);
        end_ev.session_id = Some(session_id.clone());
        let audit_q = self.state.audit.clone();
        let on_exit = move |code: u32| {
            let mut e = end_ev;
            e.exit_code = Some(code as i32);
            e.message = Some(format!("exit code {code}"));
            audit_q.emit(e);
        };
        match session::start(spec, session.handle(), channel, on_exit) {
            Ok(running) => {
                self.state.audit.emit(start_ev);
                if let Some(c) = &command {
                    let mut e = self.base_event(EventType::Exec, true);
                    e.session_id = Some(session_id);
                    e.command = Some(c.clone());
                    self.state.audit.emit(e);
                }
                if let Some(ch) = self.channels.get_mut(&channel) {
                    ch.running = Some(running);
                }
                session.channel_success(channel)?;
            }
            Err(err) => {
                let mut e = self.base_event(EventType::SessionStart, false);
                e.session_id = Some(session_id);
                e.message = Some(format!("cannot start the session: {err}"));
                self.state.audit.emit(e);
                tracing::warn!(error = %err, "cannot start a session");
                session.channel_failure(channel)?;
            }
        }
        Ok(())
    }
}

impl russh::server::Handler for ConnHandler {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        let mut methods = MethodSet::empty();
        methods.push(MethodKind::PublicKey);
        Ok(Auth::Reject {
            proceed_with_methods: Some(methods),
            partial_success: false,
        })
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        certificate: &ssh_key::Certificate,
    ) -> Result<Auth, Self::Error> {
        let now = OffsetDateTime::now_utc();
        match access::authenticate(&self.state.user_ca, certificate, user, now) {
            Ok(identity) => {
                self.auth = Some(Authed {
                    identity: Arc::new(identity),
                    login: user.to_string(),
                });
                Ok(Auth::Accept)
            }
            Err(why) => {
                let mut e = audit::event(EventType::AccessDenied, false)
                    .message(format!(
                        "{why} (certificate key id {:?}, not trusted)",
                        certificate.key_id()
                    ))
                    .remote_addr(self.remote.clone());
                e.login = Some(user.to_string());
                self.state.audit.emit(e);
                tracing::info!(login = user, reason = %why, "certificate refused");
                Ok(Auth::reject())
            }
        }
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        if let Some(a) = &self.auth {
            let conn = LiveConn {
                identity: a.identity.clone(),
                target: SessionTarget::Ssh {
                    node: self.state.facts().name.into_string(),
                    login: a.login.clone(),
                },
                login: a.login.clone(),
                handle: session.handle(),
                channels: Vec::new(),
                remote: self.remote.clone(),
            };
            let id = self.conn_id;
            self.state.sessions.insert(id, conn);
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let channel_id = channel.id();
        // This handler drives the channel through callbacks; the channel object is not read.
        drop(channel);
        let Some(a) = &self.auth else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        if self.channels.len() >= MAX_CHANNELS {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        let facts = self.state.facts();
        let now = OffsetDateTime::now_utc();
        let freshness = self.state.freshness;
        let started = std::time::Instant::now();
        let decided = self
            .state
            .view
            .read(|v| access::decide(v, &a.identity, &a.login, &facts, now, freshness));
        self.state
            .metrics
            .decision(decided.as_ref().map(|_| ()), started.elapsed());
        let decision = decided.and_then(|()| {
            self.state
                .run_as
                .resolve(&a.login, facts.name.as_str())
                .map_err(Denial::Local)
        });
        match decision {
            Ok((user, switch_user)) => {
                let session_id = uuid::Uuid::new_v4().to_string();
                self.channels.insert(
                    channel_id,
                    ChanState {
                        session_id: session_id.clone(),
                        user,
                        switch_user,
                        pty: None,
                        env: Vec::new(),
                        running: None,
                    },
                );
                let conn = self.conn_id;
                self.state.sessions.with(|c| {
                    if let Some(l) = c.get_mut(&conn) {
                        l.channels.push((channel_id, session_id));
                    }
                });
                reply.accept().await;
            }
            Err(denial) => {
                let login = a.login.clone();
                let mut e = self
                    .base_event(EventType::AccessDenied, false)
                    .message(denial.audit_message(&facts.target(&login)));
                e.node = Some(facts.name.to_string());
                e.lock = denial.lock().map(str::to_owned);
                self.state.audit.emit(e);
                let description = denial.description(&facts.target(&login));
                tracing::info!(login = %login, reason = %description, "access denied");
                reply
                    .reject(ChannelOpenFailure::Other {
                        code: 1, // SSH_OPEN_ADMINISTRATIVELY_PROHIBITED (RFC 4254 §5.1)
                        reason: description,
                    })
                    .await;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.channels.get_mut(&channel) {
            Some(ch) if ch.running.is_none() => {
                ch.pty = Some(PtyRequest {
                    term: term.chars().filter(|c| !c.is_control()).take(64).collect(),
                    cols: u16::try_from(col_width).unwrap_or(u16::MAX),
                    rows: u16::try_from(row_height).unwrap_or(u16::MAX),
                });
                session.channel_success(channel)
            }
            _ => session.channel_failure(channel),
        }
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.channels.get_mut(&channel) {
            Some(ch) if session::env_allowed(variable_name) && ch.env.len() < 32 => {
                ch.env
                    .push((variable_name.to_string(), variable_value.to_string()));
                session.channel_success(channel)
            }
            _ => session.channel_failure(channel),
        }
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start(channel, None, session)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data).into_owned();
        self.start(channel, Some(command), session)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(r) = self.channels.get(&channel).and_then(|c| c.running.as_ref()) {
            let _ = r.input.send(Input::Data(data.to_vec())).await;
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(r) = self.channels.get(&channel).and_then(|c| c.running.as_ref()) {
            let _ = r.input.send(Input::Eof).await;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(ch) = self.channels.get_mut(&channel) {
            let cols = u16::try_from(col_width).unwrap_or(u16::MAX);
            let rows = u16::try_from(row_height).unwrap_or(u16::MAX);
            if let Some(p) = &mut ch.pty {
                p.cols = cols;
                p.rows = rows;
            }
            if let Some(r) = &ch.running {
                let _ = r.input.send(Input::Resize { cols, rows }).await;
            }
        }
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let (Some(r), Some(s)) = (
            self.channels.get(&channel).and_then(|c| c.running.as_ref()),
            russh_sig(&signal),
        ) {
            let _ = r.input.send(Input::Signal(s)).await;
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(ch) = self.channels.remove(&channel)
            && let Some(r) = ch.running
        {
            let _ = r
                .input
                .try_send(Input::Signal(rustix::process::Signal::HUP));
        }
        let conn = self.conn_id;
        self.state.sessions.with(|c| {
            if let Some(l) = c.get_mut(&conn) {
                l.channels.retain(|(id, _)| *id != channel);
            }
        });
        Ok(())
    }
}

/// Serve SSH on `listener` until `shutdown` resolves.
pub async fn serve(
    state: Arc<NodeState>,
    config: Arc<russh::server::Config>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let handler = state.handler(Some(peer));
        let config = config.clone();
        tokio::spawn(async move {
            match russh::server::run_stream(config, tcp, handler).await {
                Ok(session) => {
                    if let Err(e) = session.await {
                        tracing::debug!(%peer, error = %e, "ssh connection ended with an error");
                    }
                }
                Err(e) => tracing::debug!(%peer, error = %e, "ssh handshake failed"),
            }
        });
    }
}

/// End the live sessions a lock now targets, those whose certificate expired when
/// `disconnect_expired_cert` is set (cluster or role), and, under `locking_mode: strict`, all
/// of them while the lock view is stale: the client reads the reason on stderr, then the
/// connection is closed. Runs until the view's change signal closes.
pub async fn enforce_locks(state: Arc<NodeState>) {
    let node = state.facts().name.into_string();
    dt_agent::sessions::enforce(
        state.sessions.clone(),
        state.view.clone(),
        state.freshness,
        "node",
        |_, conn, why: Ending| terminate(&state, &node, conn, why),
    )
    .await;
}

/// One pass over the live sessions (tests call it to skip the wait).
pub async fn sweep(state: &NodeState) {
    let node = state.facts().name.into_string();
    let ended = state.sessions.sweep(
        &state.view,
        OffsetDateTime::now_utc(),
        state.freshness,
        "node",
    );
    for (_, conn, why) in ended {
        terminate(state, &node, conn, why).await;
    }
}

async fn terminate(state: &NodeState, node: &str, conn: LiveConn, why: Ending) {
    let (message, lock) = (why.message.as_str(), why.lock);
    for (ch, session_id) in &conn.channels {
        let _ = conn
            .handle
            .extended_data(*ch, 1, format!("\r\nERROR: {message}\r\n").into_bytes())
            .await;
        let mut e = audit::event(EventType::SessionTerminate, true)
            .user(conn.identity.username.clone())
            .message(message.to_string())
            .remote_addr(conn.remote.clone());
        e.login = Some(conn.login.clone());
        e.node = Some(node.to_string());
        e.session_id = Some(session_id.clone());
        e.lock = lock.clone();
        if let Some(d) = access::device_info(&conn.identity) {
            e = e.device(d);
        }
        state.audit.emit(e);
    }
    let _ = conn
        .handle
        .disconnect(Disconnect::ByApplication, message.to_string(), "en".into())
        .await;
    tracing::info!(user = %conn.identity.username, reason = %message, "session terminated");
}
