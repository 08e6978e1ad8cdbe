//! The desktop access point's network front: mTLS from the auth service (the web session's
//! certificate), one [`ClientMsg::Open`], one decision, one private desktop per connection.
//!
//! Per connection:
//! 1. TLS with the access point's certificate (host CA); the client must present a
//!    certificate of the cluster's **user CA** (rustls checks chain, validity and usage).
//! 2. The first frame is `Open {desktop, login, w, h}` within [`OPEN_TIMEOUT`].
//! 3. [`dt_agent::access::decide`] for [`Target::Desktop`]: locks, `desktop_labels`,
//!    `desktop_logins`, and the granting roles' `device_trust_mode` only (the cluster-wide
//!    mode does not apply to desktops, as the seeds say). A refusal is an
//!    `End {Denied, message}` in the seeds' words and an `access.denied` event.
//! 4. The login must exist here and be one this process may run as ([`x11::may_serve`]).
//! 5. A private Xvfb and the session command start ([`XSession`]); the session registers
//!    with the runtime, so a matching lock ends it (`End {Terminated, lock text}`) at the
//!    next sweep. `desktop.session.start` / `desktop.session.end` carry the device.
//!
//! Two connections (two browser tabs) get two separate desktops: sessions are never shared.
//! A malformed message ends only its own session (`End {Error, what was wrong}`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dt_agent::access::{Ending, Freshness, SessionTarget, device_info};
use dt_agent::sessions::{LiveSession, SessionRegistry};
use dt_agent::{AgentError, Runtime, RuntimeConfig, Served};
use dt_authz::Target;
use dt_ca::Identity;
use dt_types::ServiceKind;
use dt_types::audit::{AuditEvent, EventType, ServiceInfo};
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

use crate::session::{self, CAPTURE_EVERY, Input, Outcome};
use crate::wire::{
    self, ClientMsg, EndReason, FrameError, MAX_CLIENT_MESSAGE, MAX_SIZE, MIN_SIZE, ServerMsg,
};
use crate::x11::{self, XConfig, XSession};

/// How long a client may take to complete TLS and send `Open`.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The desktop this access point serves.
#[derive(Clone, Debug)]
pub struct Desktop {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug)]
pub struct DesktopConfig {
    pub runtime: RuntimeConfig,
    pub listen: SocketAddr,
    pub desktop: Desktop,
    pub x: XConfig,
    pub freshness: Freshness,
}

/// A live desktop session, for the runtime's lock enforcement.
pub struct DesktopSession {
    identity: Arc<Identity>,
    target: SessionTarget,
    kill: watch::Sender<Option<Ending>>,
}

impl LiveSession for DesktopSession {
    fn identity(&self) -> &Identity {
        &self.identity
    }
    fn target(&self) -> &SessionTarget {
        &self.target
    }
}

/// What every connection shares.
pub struct DesktopState {
    pub access_point: String,
    pub desktop: Desktop,
    pub x: XConfig,
    pub view: Arc<dt_agent::view::SharedView>,
    pub audit: dt_agent::audit::AuditQueue,
    pub sessions: Arc<SessionRegistry<DesktopSession>>,
    pub freshness: Freshness,
    acceptor: tokio_rustls::TlsAcceptor,
}

/// A running desktop access point.
pub struct RunningDesktop {
    pub addr: SocketAddr,
    pub state: Arc<DesktopState>,
    runtime: Runtime,
}

impl RunningDesktop {
    pub async fn stop(self) {
        self.runtime.stop().await;
    }
}

fn tls_acceptor(
    id: &dt_agent::identity::ServiceIdentity,
) -> Result<tokio_rustls::TlsAcceptor, AgentError> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let user_ca = id.user_ca()?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(user_ca))
        .map_err(|e| AgentError::Config(format!("user CA certificate: {e}")))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| AgentError::Config(format!("client verifier: {e}")))?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AgentError::Config(format!("tls: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(id.tls_cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key.pkcs8_der().to_vec())),
        )
        .map_err(|e| AgentError::Config(format!("our certificate: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// Join (if needed), start the runtime, and serve the desktop on `cfg.listen`.
pub async fn start(mut cfg: DesktopConfig) -> Result<RunningDesktop, AgentError> {
    if cfg.runtime.kind != ServiceKind::Desktop {
        return Err(AgentError::Config(format!(
            "a desktop access point joins as kind desktop, not {}",
            cfg.runtime.kind
        )));
    }
    if cfg.x.command.trim().is_empty() {
        return Err(AgentError::Config(
            "--session-command is empty: name what runs in the session, e.g. xterm".into(),
        ));
    }
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
        name: cfg.desktop.name.clone(),
        labels: cfg.desktop.labels.clone(),
        protocol: "x11".into(),
        description: "Linux X11 desktop".into(),
        addr: String::new(),
    }];
    let mut runtime = Runtime::start(cfg.runtime.clone()).await?;
    let state = Arc::new(DesktopState {
        access_point: cfg.runtime.name.clone(),
        desktop: cfg.desktop.clone(),
        x: cfg.x.clone(),
        view: runtime.view.clone(),
        audit: runtime.audit.clone(),
        sessions: Arc::new(SessionRegistry::default()),
        freshness: cfg.freshness,
        acceptor: tls_acceptor(&runtime.identity)?,
    });
    let shutdown = runtime.shutdown_signal();
    runtime.spawn(serve(state.clone(), listener, shutdown));
    runtime.spawn(dt_agent::sessions::enforce(
        state.sessions.clone(),
        state.view.clone(),
        state.freshness,
        "desktop access point",
        move |_, session: DesktopSession, why| async move {
            let _ = session.kill.send(Some(why));
        },
    ));
    tracing::info!(desktop = %cfg.desktop.name, %addr, "desktop access point serving");
    Ok(RunningDesktop {
        addr,
        state,
        runtime,
    })
}

async fn serve(
    state: Arc<DesktopState>,
    listener: tokio::net::TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, remote)) => {
                    let _ = tcp.set_nodelay(true);
                    tokio::spawn(connection(state.clone(), tcp, remote.to_string()));
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

impl DesktopState {
    fn event(&self, kind: EventType, ok: bool, remote: &str) -> AuditEvent {
        let mut e = AuditEvent::new(kind, ok, OffsetDateTime::now_utc())
            .resource("desktop", self.desktop.name.clone())
            .remote_addr(remote.to_string());
        e.service = Some(ServiceInfo {
            kind: ServiceKind::Desktop,
            name: self.access_point.clone(),
        });
        e
    }
}

fn with_user(e: AuditEvent, id: &Identity, login: &str) -> AuditEvent {
    let mut e = e.user(id.username.clone());
    if let Some(d) = device_info(id) {
        e = e.device(d);
    }
    e.login = Some(login.to_string());
    e
}

async fn send_end<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, reason: EndReason, message: &str) {
    let msg = ServerMsg::End {
        reason,
        message: message.to_string(),
    };
    let _ = wire::write_frame(w, &msg.encode()).await;
    let _ = w.shutdown().await;
}

async fn connection(state: Arc<DesktopState>, tcp: tokio::net::TcpStream, remote: String) {
    let accepted = tokio::time::timeout(OPEN_TIMEOUT, state.acceptor.accept(tcp)).await;
    let tls = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            state.audit.emit(
                state
                    .event(EventType::AccessDenied, false, &remote)
                    .message(format!("TLS handshake refused: {e}")),
            );
            return;
        }
        Err(_) => return,
    };
    let cert_der = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default();
    let (mut rd, mut wr) = tokio::io::split(tls);
    // rustls verified the chain to the user CA, validity and usage.
    let identity = match dt_ca::parse_x509_identity(&cert_der) {
        Ok(i) => Arc::new(i),
        Err(e) => {
            state.audit.emit(
                state
                    .event(EventType::AccessDenied, false, &remote)
                    .message(format!(
                        "the client certificate carries no devtrust identity: {e}"
                    )),
            );
            send_end(
                &mut wr,
                EndReason::Denied,
                "your certificate does not name a devtrust user: log in again",
            )
            .await;
            return;
        }
    };
    let open =
        match tokio::time::timeout(OPEN_TIMEOUT, wire::read_frame(&mut rd, MAX_CLIENT_MESSAGE))
            .await
        {
            Ok(Ok(Some(b))) => Some(ClientMsg::decode(&b)),
            Ok(Err(FrameError::Wire(e))) => Some(Err(e)),
            // Gone, or silent for too long: nothing to answer.
            Ok(Ok(None)) | Ok(Err(FrameError::Io(_))) | Err(_) => None,
        };
    let (login, width, height) = match open {
        Some(Ok(ClientMsg::Open {
            desktop,
            login,
            width,
            height,
        })) if desktop == state.desktop.name => (login, width, height),
        Some(Ok(ClientMsg::Open { desktop, .. })) => {
            let why = format!(
                "desktop {desktop:?} is not served here (this access point serves {:?})",
                state.desktop.name
            );
            state.audit.emit(
                state
                    .event(EventType::AccessDenied, false, &remote)
                    .user(identity.username.clone())
                    .message(why.clone()),
            );
            send_end(&mut wr, EndReason::Denied, &why).await;
            return;
        }
        Some(Ok(other)) => {
            let why = format!("malformed input: expected open, got {}", other.name());
            send_end(&mut wr, EndReason::Error, &why).await;
            return;
        }
        Some(Err(e)) => {
            send_end(&mut wr, EndReason::Error, &format!("malformed input: {e}")).await;
            return;
        }
        None => return,
    };
    let target = Target::Desktop {
        name: &state.desktop.name,
        labels: &state.desktop.labels,
        login: &login,
    };
    let now = OffsetDateTime::now_utc();
    let decided = state
        .view
        .read(|v| dt_agent::access::decide(v, &identity, &target, now, state.freshness));
    if let Err(denial) = decided {
        let mut msg = denial.description(&target);
        if let Some(advice) = denial.advice() {
            msg = format!("{msg}. {advice}");
        }
        let mut e = with_user(
            state.event(EventType::AccessDenied, false, &remote),
            &identity,
            &login,
        )
        .message(denial.audit_message(&target));
        e.lock = denial.lock().map(str::to_owned);
        state.audit.emit(e);
        send_end(&mut wr, EndReason::Denied, &msg).await;
        return;
    }
    // What this host can serve: the login must exist and be one we may run as.
    let account = match x11::lookup_account(&login)
        .map_err(|e| e.to_string())
        .and_then(|a| x11::may_serve(&a, x11::effective_uid()).map(|()| a))
    {
        Ok(a) => a,
        Err(why) => {
            let msg = format!(
                "{}{}: {why}",
                dt_agent::access::ACCESS_DENIED_PREFIX,
                target.describe()
            );
            state.audit.emit(
                with_user(
                    state.event(EventType::AccessDenied, false, &remote),
                    &identity,
                    &login,
                )
                .message(msg.clone()),
            );
            send_end(&mut wr, EndReason::Denied, &msg).await;
            return;
        }
    };
    let width = width.clamp(MIN_SIZE, MAX_SIZE);
    let height = height.clamp(MIN_SIZE, MAX_SIZE);
    let x = state.x.clone();
    let started =
        tokio::task::spawn_blocking(move || XSession::start(&account, &x, width, height)).await;
    let mut xs = match started {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let msg = format!("the desktop could not start: {e}");
            state.audit.emit(
                with_user(
                    state.event(EventType::DesktopSessionStart, false, &remote),
                    &identity,
                    &login,
                )
                .message(msg.clone()),
            );
            send_end(&mut wr, EndReason::Error, &msg).await;
            return;
        }
        Err(e) => {
            send_end(
                &mut wr,
                EndReason::Error,
                &format!("the desktop could not start: {e}"),
            )
            .await;
            return;
        }
    };
    let display_num = xs.display;

    // Registered: from here a lock ends it.
    let id = state.sessions.next_id();
    let session_id = format!("{}-{id}", state.access_point);
    let (kill, mut killed) = watch::channel(None::<Ending>);
    state.sessions.insert(
        id,
        DesktopSession {
            identity: identity.clone(),
            target: SessionTarget::Desktop {
                name: state.desktop.name.clone(),
                login: login.clone(),
            },
            kill,
        },
    );
    let mut start = with_user(
        state.event(EventType::DesktopSessionStart, true, &remote),
        &identity,
        &login,
    )
    .message(format!(
        "desktop {:?} as {login} on display :{display_num} ({width}x{height})",
        state.desktop.name
    ));
    start.session_id = Some(session_id.clone());
    state.audit.emit(start);
    tracing::info!(user = %identity.username, %login, display_num, "desktop session started");

    let hello = ServerMsg::Hello {
        width,
        height,
        clipboard: false,
    };
    let mut outcome: Option<Outcome> = None;
    if wire::write_frame(&mut wr, &hello.encode()).await.is_err() {
        outcome = Some(Outcome {
            reason: EndReason::Ended,
            message: "the client left".into(),
        });
    }

    // The session thread: capture and input, until stopped.
    let (in_tx, in_rx) = std::sync::mpsc::channel::<Input>();
    let (out_tx, mut out_rx) = mpsc::channel::<ServerMsg>(64);
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = stop.clone();
    let worker = tokio::task::spawn_blocking(move || {
        let o = session::run(&mut xs, &in_rx, &thread_stop, CAPTURE_EVERY, |m| {
            out_tx.blocking_send(m).is_ok()
        });
        drop(xs); // ends the session command and the X server
        o
    });

    // Client frames, read on their own task (reading a frame is not cancel-safe).
    let (cl_tx, mut cl_rx) = mpsc::channel::<Result<ClientMsg, String>>(64);
    let reader = tokio::spawn(async move {
        loop {
            let r = match wire::read_frame(&mut rd, MAX_CLIENT_MESSAGE).await {
                Ok(Some(b)) => ClientMsg::decode(&b).map_err(|e| format!("malformed input: {e}")),
                Ok(None) => Err(String::new()),
                Err(FrameError::Wire(e)) => Err(format!("malformed input: {e}")),
                Err(FrameError::Io(_)) => Err(String::new()),
            };
            let last = r.is_err();
            if cl_tx.send(r).await.is_err() || last {
                return;
            }
        }
    });

    while outcome.is_none() {
        tokio::select! {
            m = out_rx.recv() => match m {
                Some(m) => {
                    if wire::write_frame(&mut wr, &m.encode()).await.is_err() {
                        outcome = Some(Outcome { reason: EndReason::Ended, message: "the client left".into() });
                    }
                }
                None => break, // the worker ended: its outcome follows
            },
            c = cl_rx.recv() => match c {
                Some(Ok(ClientMsg::Open { .. })) => {
                    outcome = Some(Outcome { reason: EndReason::Error, message: "malformed input: a second open".into() });
                }
                Some(Ok(ClientMsg::Clipboard(text))) => {
                    let mut e = with_user(state.event(EventType::DesktopClipboard, false, &remote), &identity, &login)
                        .message(format!("clipboard text of {} bytes from the browser refused: clipboard sharing is not available on this desktop", text.len()));
                    e.session_id = Some(session_id.clone());
                    state.audit.emit(e);
                }
                Some(Ok(m)) => {
                    if in_tx.send(Input::Msg(m)).is_err() {
                        break;
                    }
                }
                Some(Err(why)) if why.is_empty() => {
                    outcome = Some(Outcome { reason: EndReason::Ended, message: "the client left".into() });
                }
                Some(Err(why)) => {
                    outcome = Some(Outcome { reason: EndReason::Error, message: why });
                }
                None => {
                    outcome = Some(Outcome { reason: EndReason::Ended, message: "the client left".into() });
                }
            },
            _ = async { let _ = killed.wait_for(|k| k.is_some()).await; } => {
                let why = killed.borrow().clone();
                outcome = Some(Outcome {
                    reason: EndReason::Terminated,
                    message: why.map(|e| e.message).unwrap_or_else(|| "the session was ended".into()),
                });
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    drop(in_tx);
    // Let the worker finish its last send, then collect its outcome.
    let drain = async { while out_rx.recv().await.is_some() {} };
    let worker_outcome = tokio::join!(drain, worker).1.ok();
    reader.abort();
    let outcome = outcome.or(worker_outcome).unwrap_or(Outcome {
        reason: EndReason::Error,
        message: "the session ended unexpectedly".into(),
    });
    state.sessions.remove(id);
    send_end(&mut wr, outcome.reason, &outcome.message).await;
    let lock = killed.borrow().as_ref().and_then(|e| e.lock.clone());
    let mut end = with_user(
        state.event(EventType::DesktopSessionEnd, true, &remote),
        &identity,
        &login,
    )
    .message(outcome.message.clone());
    end.session_id = Some(session_id);
    end.lock = lock;
    state.audit.emit(end);
    tracing::info!(user = %identity.username, %login, display_num, why = %outcome.message, "desktop session ended");
}
