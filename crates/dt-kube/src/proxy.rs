//! The protocol front: each client connection (TLS, HTTP/1.1) and each request on it.
//!
//! Per request: the cluster from the path (`/kube/NAME/...`), the identity from the
//! connection's certificate, the impersonation the client asked for, **one decision**
//! ([`dt_agent::access::decide`] with a [`Target::Kube`]), the identity to impersonate
//! ([`dt_authz::kube_impersonation`] for what the client left out), then the request goes to
//! the API server with the access point's own credentials and the impersonation headers it
//! set itself (every client `Impersonate-*` header and `Authorization` is removed first).
//! Refusals never reach the API server: they are `Status` bodies and audit events.
//!
//! Streams (watch, `logs -f`, and upgraded exec/attach/port-forward connections) are
//! registered as live sessions, so a lock ends them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dt_agent::access::{Denial, Ending, SessionTarget, device_info};
use dt_agent::sessions::LiveSession;
use dt_authz::{DenyReason, Target};
use dt_ca::Identity;
use dt_types::audit::{AuditEvent, EventType};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::request::{
    ClientImpersonation, RequestInfo, client_impersonation, parse_query, request_info,
};
use crate::status::Refusal;
use crate::{Cluster, KubeState};

pub type Body = BoxBody<Bytes, std::io::Error>;

/// How long a client has for the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to the API server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the API server may take to answer a request's head.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// Where kubectl reaches cluster `NAME`: `https://ADDR/kube/NAME`.
use dt_client::access_point::KUBE_PATH_PREFIX as PATH_PREFIX;

/// Accept clients until `shutdown` turns true.
pub async fn serve(
    state: Arc<KubeState>,
    listener: tokio::net::TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    tokio::spawn(connection(state.clone(), tcp, peer.to_string()));
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

/// One client connection.
struct Conn {
    state: Arc<KubeState>,
    remote: String,
    identity: Result<Arc<Identity>, String>,
    /// One idle upstream connection per cluster, reused by the next request.
    upstream: tokio::sync::Mutex<HashMap<String, SendRequest<Incoming>>>,
}

async fn connection(state: Arc<KubeState>, tcp: tokio::net::TcpStream, remote: String) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, state.acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            anonymous_refusal(&state, &remote, format!("TLS handshake refused: {e}"));
            return;
        }
        Err(_) => return,
    };
    let identity = match tls.get_ref().1.peer_certificates() {
        None | Some([]) => Err("a devtrust client certificate is required: run `dtsh kube login NAME` and use the context it writes".to_string()),
        Some(chain) => state
            .verifier
            .verified_user_cert(chain, rustls::pki_types::UnixTime::now())
            .map_err(|e| format!("certificate refused: {e}; log in again (`dtsh login`)"))
            .and_then(|der| {
                dt_ca::parse_x509_identity(der.as_ref())
                    .map(Arc::new)
                    .map_err(|e| format!("certificate refused: {e}; log in again (`dtsh login`)"))
            }),
    };
    let conn = Arc::new(Conn {
        state,
        remote,
        identity,
        upstream: tokio::sync::Mutex::new(HashMap::new()),
    });
    let svc = hyper::service::service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(conn, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), svc)
        .with_upgrades()
        .await;
}

fn anonymous_refusal(state: &KubeState, remote: &str, why: String) {
    state.audit.emit(
        AuditEvent::new(EventType::AccessDenied, false, OffsetDateTime::now_utc())
            .resource("kube_cluster", state.name.clone())
            .remote_addr(remote.to_string())
            .message(why),
    );
}

/// How a refusal is written for this request: a `Status` (JSON) kubectl decodes, or, for
/// discovery requests, the message as text: kubectl decodes discovery errors with the
/// discovery codec, which cannot read a `Status`, and would print "unknown" instead.
#[derive(Clone, Copy)]
enum Shape {
    Status,
    Text,
}

fn shape_of(req: &Request<Incoming>) -> Shape {
    let discovery_accept = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("apidiscovery.k8s.io"));
    let path = req.uri().path();
    let rest = path.strip_prefix(PATH_PREFIX).unwrap_or(path);
    let sub = rest.split_once('/').map(|(_, s)| s).unwrap_or("");
    let info = request_info(req.method().as_str(), &format!("/{sub}"), &[]);
    if discovery_accept || info.non_resource {
        Shape::Text
    } else {
        Shape::Status
    }
}

fn refusal_response(r: &Refusal, shape: Shape) -> Response<Body> {
    let (body, content_type) = match shape {
        Shape::Status => (r.body(), "application/json"),
        Shape::Text => (r.message.clone(), "text/plain; charset=utf-8"),
    };
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *resp.status_mut() = StatusCode::from_u16(r.code).unwrap_or(StatusCode::FORBIDDEN);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    resp
}

/// Who asked what of which cluster: every audit event of the request is made from it.
struct Asked<'a> {
    conn: &'a Conn,
    cluster: &'a Cluster,
    identity: Arc<Identity>,
    info: RequestInfo,
    path: String,
    shape: Shape,
    /// The Kubernetes user and groups the request is made as, once decided.
    user: String,
    groups: Vec<String>,
}

impl Asked<'_> {
    fn event(&self, kind: EventType, ok: bool) -> AuditEvent {
        let mut e = AuditEvent::new(kind, ok, OffsetDateTime::now_utc())
            .resource("kube_cluster", self.cluster.name.clone())
            .remote_addr(self.conn.remote.clone())
            .user(self.identity.username.clone());
        if !self.user.is_empty() {
            e.login = Some(self.user.clone());
        }
        if let Some(d) = device_info(&self.identity) {
            e = e.device(d);
        }
        e
    }

    fn describe(&self) -> String {
        let mut s = format!("{} {}", self.info.verb, self.info.what(&self.path));
        if !self.info.name.is_empty() && self.info.resource != "namespaces" {
            s.push_str(&format!(" {:?}", self.info.name));
        }
        if !self.info.namespace.is_empty() {
            s.push_str(&format!(" in namespace {:?}", self.info.namespace));
        }
        s
    }

    /// Audit a refusal and turn it into the response.
    fn refuse(&self, r: Refusal, lock: Option<String>) -> Response<Body> {
        let mut e = self.event(EventType::AccessDenied, false).message(format!(
            "{}: {}",
            self.describe(),
            r.message
        ));
        e.lock = lock;
        e.command = Some(self.describe());
        self.conn.state.audit.emit(e);
        refusal_response(&r, self.shape)
    }

    /// `kube.request`: verb, resource, namespace and the response code.
    fn audit_request(&self, code: u16) {
        let mut e = self
            .event(EventType::KubeRequest, code < 400)
            .message(format!("{}: {code}", self.describe()));
        e.command = Some(self.describe());
        e.exit_code = Some(i32::from(code));
        self.conn.state.audit.emit(e);
    }
}

async fn handle(conn: Arc<Conn>, mut req: Request<Incoming>) -> Response<Body> {
    let state = conn.state.clone();
    let shape = shape_of(&req);
    let path = req.uri().path().to_string();
    let Some(rest) = path.strip_prefix(PATH_PREFIX) else {
        let r = Refusal::forbidden(format!(
            "no Kubernetes cluster in the path {path:?}: use the context `dtsh kube login NAME` writes"
        ));
        anonymous_refusal(&state, &conn.remote, r.message.clone());
        return refusal_response(&r, shape);
    };
    let (name, sub) = rest.split_once('/').unwrap_or((rest, ""));
    let sub_path = format!("/{sub}");
    let identity = match &conn.identity {
        Ok(id) => id.clone(),
        Err(why) => {
            let r = Refusal::unauthorized(why.clone());
            anonymous_refusal(&state, &conn.remote, why.clone());
            return refusal_response(&r, shape);
        }
    };
    // Forbidden rather than NotFound: kubectl prints a 403's message during discovery,
    // and replaces a 404's with its own.
    let Some(cluster) = state.clusters.get(name) else {
        let r = Refusal::forbidden(format!(
            "Kubernetes cluster {name:?} is not served by this access point; `dtsh kube ls` lists the clusters you can reach, `dtsh kube login NAME` selects one"
        ));
        let mut e = AuditEvent::new(EventType::AccessDenied, false, OffsetDateTime::now_utc())
            .resource("kube_cluster", name.to_string())
            .remote_addr(conn.remote.clone())
            .user(identity.username.clone())
            .message(r.message.clone());
        if let Some(d) = device_info(&identity) {
            e = e.device(d);
        }
        state.audit.emit(e);
        return refusal_response(&r, shape);
    };
    let query = parse_query(req.uri().query());
    let info = request_info(req.method().as_str(), &sub_path, &query);
    let mut asked = Asked {
        conn: &conn,
        cluster,
        identity: identity.clone(),
        info,
        path: sub_path.clone(),
        shape,
        user: String::new(),
        groups: Vec::new(),
    };
    let imp = match client_impersonation(
        req.headers()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes())),
    ) {
        Ok(i) => i,
        Err(e) => return asked.refuse(Refusal::bad_request(e), None),
    };
    if !imp.other.is_empty() {
        let r = Refusal::forbidden(format!(
            "impersonation headers {} are not allowed through devtrust: use --as and --as-group within what your roles allow",
            imp.other.join(", ")
        ));
        return asked.refuse(r, None);
    }
    if let Err((r, lock)) = decide(&state, &identity, cluster, &imp) {
        return asked.refuse(r, lock);
    }
    match impersonate(&state, &identity, cluster, &imp) {
        Ok((user, groups)) => {
            asked.user = user;
            asked.groups = groups;
        }
        Err(r) => return asked.refuse(r, None),
    }
    // The decision is made: forward.
    let upgrade = req
        .headers()
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let long_running = asked.info.is_long_running(&query);
    let up_req = match upstream_request(req, cluster, &sub_path, &asked, upgrade.is_some()) {
        Ok(r) => r,
        Err(e) => return asked.refuse(Refusal::bad_request(e), None),
    };
    let reuse = upgrade.is_none() && !long_running;
    let (mut sender, reused) = match sender(&conn, cluster, reuse).await {
        Ok(s) => s,
        Err(e) => return asked.refuse(Refusal::unavailable(e), None),
    };
    let sent = tokio::time::timeout(RESPONSE_TIMEOUT, async {
        match sender.try_send_request(up_req).await {
            Ok(resp) => Ok(resp),
            // A kept-alive connection the API server closed just now: the request was not
            // sent, so it goes once more on a new connection.
            Err(mut e) if reused && e.message().is_some() => {
                let Some(req) = e.take_message() else {
                    return Err(e.into_error().to_string());
                };
                let (mut fresh, _) = self::sender(&conn, cluster, false).await?;
                let r = fresh.send_request(req).await.map_err(|e| e.to_string());
                sender = fresh;
                r
            }
            Err(e) => Err(e.into_error().to_string()),
        }
    })
    .await;
    let mut resp = match sent {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            let r = Refusal::unavailable(format!(
                "Kubernetes cluster {:?}: the API server at {} failed: {e}",
                cluster.name, cluster.upstream.server
            ));
            return asked.refuse(r, None);
        }
        Err(_) => {
            let r = Refusal::gateway_timeout(format!(
                "Kubernetes cluster {:?}: the API server at {} did not answer within {}s",
                cluster.name,
                cluster.upstream.server,
                RESPONSE_TIMEOUT.as_secs()
            ));
            return asked.refuse(r, None);
        }
    };
    if reuse {
        conn.upstream
            .lock()
            .await
            .insert(cluster.name.clone(), sender);
    }
    let code = resp.status().as_u16();
    asked.audit_request(code);
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let (Some(client_upgrade), Some(kind)) = (client_upgrade, upgrade) else {
            return refusal_response(
                &Refusal::unavailable("the API server switched protocols without being asked"),
                shape,
            );
        };
        let server_upgrade = hyper::upgrade::on(&mut resp);
        let websocket = kind == "websocket";
        let session = Session::start(&asked, command_of(&query));
        tokio::spawn(async move {
            let outcome = match (client_upgrade.await, server_upgrade.await) {
                (Ok(c), Ok(s)) => relay(c, s, session.killed.clone(), websocket).await,
                _ => Outcome::Closed,
            };
            session.end(outcome);
        });
        let (parts, _) = resp.into_parts();
        return Response::from_parts(
            parts,
            Full::new(Bytes::new()).map_err(|n| match n {}).boxed(),
        );
    }
    let (parts, body) = resp.into_parts();
    if long_running && parts.status.is_success() {
        let session = Session::start_stream(&asked);
        let is_watch = asked.info.verb == "watch";
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(16);
        tokio::spawn(pump(body, tx, session, is_watch));
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        return Response::from_parts(parts, BodyExt::boxed(body));
    }
    Response::from_parts(parts, body.map_err(std::io::Error::other).boxed())
}

/// The `command` query parameters of an exec, for the audit.
fn command_of(query: &[(String, String)]) -> String {
    query
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The one decision, with the seeds' wording for a refusal.
fn decide(
    state: &KubeState,
    id: &Identity,
    cluster: &Cluster,
    imp: &ClientImpersonation,
) -> Result<(), (Refusal, Option<String>)> {
    let target = Target::Kube {
        name: &cluster.name,
        labels: &cluster.labels,
        users: &imp.users,
        groups: &imp.groups,
    };
    let now = OffsetDateTime::now_utc();
    let decided = state
        .view
        .read(|v| dt_agent::access::decide(v, id, &target, now, state.freshness));
    let Err(denial) = decided else {
        return Ok(());
    };
    let mut text = denial.description(&target);
    if matches!(
        denial,
        Denial::Policy(
            DenyReason::ClusterRequiresTrustedDevice | DenyReason::RoleRequiresTrustedDevice { .. }
        )
    ) {
        text.push_str(
            ". Enroll this device (`dtsh device enroll --current-device`, or ask an admin for an enrollment token) and log in again",
        );
    }
    Err((Refusal::forbidden(text), denial.lock().map(str::to_owned)))
}

/// The Kubernetes user and groups to impersonate: what the client asked for (the decision
/// allowed it), and for what it left out, what the roles give.
fn impersonate(
    state: &KubeState,
    id: &Identity,
    cluster: &Cluster,
    imp: &ClientImpersonation,
) -> Result<(String, Vec<String>), Refusal> {
    let roles = state
        .view
        .read(|v| v.roles(&id.roles))
        .map_err(|e| Refusal::forbidden(e.to_string()))?;
    let who = dt_agent::access::subject(id);
    let (user, groups) = match imp.users.first() {
        Some(u) => {
            // Only the groups are needed: a choice among several users is already made.
            let mut without_users = roles.clone();
            for r in &mut without_users {
                r.spec.allow.kubernetes_users.clear();
            }
            let (_, groups) = dt_authz::kube_impersonation(&who, &without_users, &cluster.labels)
                .map_err(|e| Refusal::forbidden(e.to_string()))?;
            (u.clone(), groups)
        }
        None => dt_authz::kube_impersonation(&who, &roles, &cluster.labels)
            .map_err(|e| Refusal::forbidden(e.to_string()))?,
    };
    let groups = if imp.groups.is_empty() {
        groups
    } else {
        imp.groups.clone()
    };
    Ok((user, groups))
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The request to the API server: its path under the server's base, the client's headers
/// without credentials, impersonation or hop-by-hop ones, and ours.
fn upstream_request(
    req: Request<Incoming>,
    cluster: &Cluster,
    sub_path: &str,
    asked: &Asked<'_>,
    upgrade: bool,
) -> Result<Request<Incoming>, String> {
    let (parts, body) = req.into_parts();
    let up = &cluster.upstream;
    let mut target = format!("{}{sub_path}", up.base_path());
    if let Some(q) = parts.uri.query() {
        target.push('?');
        target.push_str(q);
    }
    let mut builder = Request::builder().method(parts.method.clone()).uri(target);
    let headers = builder
        .headers_mut()
        .ok_or_else(|| "invalid request".to_string())?;
    for (k, v) in &parts.headers {
        let n = k.as_str();
        let keep_for_upgrade = upgrade && (n == "connection" || n == "upgrade");
        if n == "host"
            || n == "authorization"
            || n.starts_with("impersonate-")
            || (HOP_BY_HOP.contains(&n) && !keep_for_upgrade)
        {
            continue;
        }
        headers.append(k.clone(), v.clone());
    }
    let hv =
        |s: &str| HeaderValue::from_str(s).map_err(|_| format!("{s:?} cannot be sent in a header"));
    headers.insert(hyper::header::HOST, hv(&up.authority)?);
    headers.insert(
        HeaderName::from_static("impersonate-user"),
        hv(&asked.user)?,
    );
    for g in &asked.groups {
        headers.append(HeaderName::from_static("impersonate-group"), hv(g)?);
    }
    if let Some(t) = &up.token {
        headers.insert(
            hyper::header::AUTHORIZATION,
            hv(&format!("Bearer {}", t.expose()))?,
        );
    }
    builder.body(body).map_err(|e| e.to_string())
}

/// An idle upstream connection of this client connection (`true`: reused), or a new one.
async fn sender(
    conn: &Conn,
    cluster: &Cluster,
    reuse: bool,
) -> Result<(SendRequest<Incoming>, bool), String> {
    if reuse
        && let Some(mut s) = conn.upstream.lock().await.remove(&cluster.name)
        && !s.is_closed()
        && tokio::time::timeout(Duration::from_secs(1), s.ready())
            .await
            .is_ok_and(|r| r.is_ok())
    {
        return Ok((s, true));
    }
    let up = &cluster.upstream;
    let unreachable = |e: &dyn std::fmt::Display| {
        format!(
            "Kubernetes cluster {:?}: the API server at {} is unreachable: {e}",
            cluster.name, up.server
        )
    };
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect(&up.authority),
    )
    .await
    .map_err(|_| unreachable(&"connection timed out"))?
    .map_err(|e| unreachable(&e))?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_rustls::TlsConnector::from(up.tls.clone()).connect(up.server_name.clone(), tcp),
    )
    .await
    .map_err(|_| unreachable(&"TLS handshake timed out"))?
    .map_err(|e| unreachable(&format!("TLS: {e}")))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| unreachable(&e))?;
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    Ok((sender, false))
}

/// A live stream, for the runtime's lock enforcement.
pub struct KubeSession {
    identity: Arc<Identity>,
    target: SessionTarget,
    kill: watch::Sender<Option<Ending>>,
}

impl LiveSession for KubeSession {
    fn identity(&self) -> &Identity {
        &self.identity
    }
    fn target(&self) -> &SessionTarget {
        &self.target
    }
}

/// A lock (or expiry) ends `session`.
pub fn end_session(session: KubeSession, why: Ending) {
    let _ = session.kill.send(Some(why));
}

/// How a stream ended.
pub enum Outcome {
    Closed,
    Ended(Ending),
}

/// A registered stream: removed and audited when it ends.
struct Session {
    state: Arc<KubeState>,
    id: u64,
    killed: watch::Receiver<Option<Ending>>,
    base: AuditEvent,
    /// `kube.exec.end` for exec-like streams; nothing more for watches and logs.
    exec: bool,
}

impl Session {
    fn register(asked: &Asked<'_>) -> (u64, watch::Receiver<Option<Ending>>) {
        let (kill, killed) = watch::channel(None::<Ending>);
        let sessions = &asked.conn.state.sessions;
        let id = sessions.next_id();
        sessions.insert(
            id,
            KubeSession {
                identity: asked.identity.clone(),
                target: SessionTarget::Kube {
                    name: asked.cluster.name.clone(),
                    users: vec![asked.user.clone()],
                    groups: asked.groups.clone(),
                },
                kill,
            },
        );
        (id, killed)
    }

    /// An exec (attach, port-forward) stream: `kube.exec.start`.
    fn start(asked: &Asked<'_>, command: String) -> Session {
        let (id, killed) = Session::register(asked);
        let mut base = asked.event(EventType::KubeExecStart, true);
        base.session_id = Some(uuid::Uuid::new_v4().to_string());
        base.command = Some(if command.is_empty() {
            asked.describe()
        } else {
            command
        });
        base.message = Some(asked.describe());
        asked.conn.state.audit.emit(base.clone());
        Session {
            state: asked.conn.state.clone(),
            id,
            killed,
            base,
            exec: true,
        }
    }

    /// A watch or `logs -f`.
    fn start_stream(asked: &Asked<'_>) -> Session {
        let (id, killed) = Session::register(asked);
        let mut base = asked.event(EventType::SessionTerminate, true);
        base.command = Some(asked.describe());
        Session {
            state: asked.conn.state.clone(),
            id,
            killed,
            base,
            exec: false,
        }
    }

    fn end(self, outcome: Outcome) {
        self.state.sessions.remove(self.id);
        let now = OffsetDateTime::now_utc();
        if let Outcome::Ended(why) = &outcome {
            let mut t = self.base.clone();
            t.event = EventType::SessionTerminate;
            t.code = EventType::SessionTerminate.code(true);
            t.time = now;
            t.message = Some(why.message.clone());
            t.lock = why.lock.clone();
            self.state.audit.emit(t);
        }
        if self.exec {
            let mut e = self.base.clone();
            e.event = EventType::KubeExecEnd;
            e.code = EventType::KubeExecEnd.code(true);
            e.time = now;
            if let Outcome::Ended(why) = &outcome {
                e.message = Some(format!("terminated: {}", why.message));
                e.lock = why.lock.clone();
            }
            self.state.audit.emit(e);
        }
    }
}

/// Copy a streaming body to the client until it ends, the client goes, or a lock ends it
/// (a watch then gets an `ERROR` event with the lock's message, a log a last line).
async fn pump(
    mut body: Incoming,
    tx: tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
    session: Session,
    is_watch: bool,
) {
    let mut killed = session.killed.clone();
    let outcome = loop {
        tokio::select! {
            f = body.frame() => match f {
                Some(Ok(frame)) => {
                    if tx.send(Ok(frame)).await.is_err() {
                        break Outcome::Closed;
                    }
                }
                Some(Err(e)) => {
                    let _ = tx.send(Err(std::io::Error::other(e))).await;
                    break Outcome::Closed;
                }
                None => break Outcome::Closed,
            },
            _ = tx.closed() => break Outcome::Closed,
            why = async { killed.wait_for(|k| k.is_some()).await.ok().and_then(|w| w.clone()) } => {
                let why = why.unwrap_or(Ending { message: "ended".into(), lock: None });
                let last = if is_watch {
                    Refusal::forbidden(why.message.clone()).watch_event()
                } else {
                    format!("devtrust: {}\n", why.message)
                };
                let _ = tx.send(Ok(Frame::data(Bytes::from(last)))).await;
                break Outcome::Ended(why);
            }
        }
    };
    session.end(outcome);
}

/// Relay an upgraded connection until either side closes or a lock ends it. On a
/// WebSocket (v4/v5 channel protocol), a lock's message goes to the client on the error
/// channel as a `Status` before the close, when the server-to-client stream is at a frame
/// boundary (it is unless a frame is half sent).
async fn relay(
    client: hyper::upgrade::Upgraded,
    server: hyper::upgrade::Upgraded,
    mut killed: watch::Receiver<Option<Ending>>,
    websocket: bool,
) -> Outcome {
    let (mut cr, mut cw) = tokio::io::split(TokioIo::new(client));
    let (mut sr, mut sw) = tokio::io::split(TokioIo::new(server));
    let mut tracker = crate::ws::FrameTracker::default();
    let c2s = async {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
        let _ = sw.shutdown().await;
    };
    tokio::pin!(c2s);
    let mut c2s_done = false;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            r = sr.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    let _ = cw.shutdown().await;
                    return Outcome::Closed;
                }
                Ok(n) => {
                    tracker.feed(&buf[..n]);
                    if cw.write_all(&buf[..n]).await.is_err() || cw.flush().await.is_err() {
                        return Outcome::Closed;
                    }
                }
            },
            _ = &mut c2s, if !c2s_done => c2s_done = true,
            why = async { killed.wait_for(|k| k.is_some()).await.ok().and_then(|w| w.clone()) } => {
                let why = why.unwrap_or(Ending { message: "ended".into(), lock: None });
                if websocket && tracker.at_boundary() {
                    let status = Refusal::forbidden(why.message.clone()).body();
                    let _ = cw.write_all(&crate::ws::error_channel_frames(&status)).await;
                }
                let _ = cw.flush().await;
                let _ = cw.shutdown().await;
                return Outcome::Ended(why);
            }
        }
    }
}
