//! One connection: TLS, then HTTP/1.1 requests, each decided and forwarded (see the crate
//! doc for the steps).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dt_agent::access::{Denial, Ending, SessionTarget, device_info};
use dt_authz::DenyReason;
use dt_authz::Target;
use dt_ca::Identity;
use dt_proto::v1 as pb;
use dt_proto::v1::app_service_client::AppServiceClient;
use dt_types::audit::{AuditEvent, EventType};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::browser::{self, CALLBACK_PATH, LOGOUT_PATH, SESSION_COOKIE};
use crate::{App, AppSession, AppState, TOKEN_SLACK};

pub(crate) type Body = BoxBody<Bytes, hyper::Error>;

/// The header that carries the signed identity to the app. A client's own is dropped.
pub const JWT_HEADER: &str = "devtrust-jwt-assertion";
/// How long the TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most header bytes a request may carry (hyper answers 431 beyond).
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The HTTP(S) clients to the apps, by app name.
pub struct Upstream(std::collections::HashMap<String, crate::upstream::AppClient>);

impl Upstream {
    pub fn new(apps: &[App]) -> Result<Upstream, dt_agent::AgentError> {
        let mut out = std::collections::HashMap::new();
        for a in apps {
            let c = crate::upstream::client(&a.uri, &a.tls).map_err(|why| {
                dt_agent::AgentError::Config(
                    crate::AppError::Tls {
                        name: a.name.clone(),
                        why,
                    }
                    .to_string(),
                )
            })?;
            out.insert(a.name.clone(), c);
        }
        Ok(Upstream(out))
    }
}

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{msg}\n")))
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub async fn serve(
    state: Arc<AppState>,
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

/// A connection's session: app name, registry id, the certificate it was decided on.
type Registered = (String, u64, Arc<Vec<u8>>);

/// What every request of one connection shares.
struct Conn {
    state: Arc<AppState>,
    remote: String,
    sni: Option<String>,
    /// The client certificate's identity (`dtsh proxy app`), if one was shown; why it
    /// could not be read, if it could not (every request is refused then).
    identity: Result<Option<Arc<Identity>>, String>,
    cert_der: Arc<Vec<u8>>,
    /// The registered session (app name, registry id, the certificate it was decided on),
    /// once a request was allowed. A connection carries one user's requests only.
    session: Mutex<Option<Registered>>,
    kill: watch::Sender<Option<Ending>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Ok(s) = self.session.lock()
            && let Some((_, id, _)) = s.as_ref()
        {
            self.state.sessions.remove(*id);
        }
    }
}

fn event(state: &AppState, resource: &str, kind: EventType, ok: bool, remote: &str) -> AuditEvent {
    AuditEvent::new(kind, ok, OffsetDateTime::now_utc())
        .resource("app", resource.to_string())
        .remote_addr(remote.to_string())
        .message(format!("app access point {:?}", state.access_point))
}

async fn connection(state: Arc<AppState>, tcp: tokio::net::TcpStream, remote: String) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, state.acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let name = match state.apps.as_slice() {
                [one] => one.name.clone(),
                _ => state.access_point.clone(),
            };
            state.audit.emit(
                event(&state, &name, EventType::AccessDenied, false, &remote)
                    .message(format!("TLS handshake refused: {e}")),
            );
            return;
        }
        Err(_) => return,
    };
    let (sni, cert_der) = {
        let c = tls.get_ref().1;
        (
            c.server_name().map(str::to_owned),
            c.peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref().to_vec())
                .unwrap_or_default(),
        )
    };
    let identity = cert_identity(&cert_der);
    let (kill, mut killed) = watch::channel(None::<Ending>);
    let conn = Arc::new(Conn {
        state: state.clone(),
        remote,
        sni,
        identity,
        cert_der: Arc::new(cert_der),
        session: Mutex::new(None),
        kill,
    });
    let c = conn.clone();
    let svc = hyper::service::service_fn(move |req| {
        let c = c.clone();
        async move { Ok::<_, Infallible>(handle(c, req).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .max_header_size(MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(tls), svc)
        .with_upgrades();
    tokio::select! {
        r = served => {
            if let Err(e) = r {
                tracing::debug!(remote = %conn.remote, error = %e, "app connection ended");
            }
        }
        // A lock ended the session: dropping the connection closes it.
        _ = killed.wait_for(|k| k.is_some()) => {}
    }
}

/// The identity of the client certificate rustls accepted (it verified the chain to the
/// user CA, validity and usage), `None` without one. A certificate whose identity cannot be
/// read is an error, never taken for no certificate: the connection would otherwise fall
/// through to the browser session path as if anonymous.
fn cert_identity(cert_der: &[u8]) -> Result<Option<Arc<Identity>>, String> {
    if cert_der.is_empty() {
        return Ok(None);
    }
    dt_ca::parse_x509_identity(cert_der)
        .map(|i| Some(Arc::new(i)))
        .map_err(|e| {
            format!("the client certificate carries no devtrust identity this access point can read ({e}): log in again with `dtsh login`")
        })
}

/// The app a request is for: the TLS server name, the `Host` header, or the only one.
fn route<'a>(apps: &'a [App], sni: Option<&str>, host: Option<&str>) -> Option<&'a App> {
    if let Some(a) = sni.and_then(|n| apps.iter().find(|a| a.name == n)) {
        return Some(a);
    }
    let host = host.map(|h| h.to_ascii_lowercase());
    if let Some(a) = host.as_deref().and_then(|h| {
        apps.iter().find(|a| {
            let p = a.public_addr.to_ascii_lowercase();
            h == p || h.split(':').next() == Some(p.split(':').next().unwrap_or(""))
        })
    }) {
        return Some(a);
    }
    match apps {
        [one] => Some(one),
        _ => None,
    }
}

async fn handle(conn: Arc<Conn>, req: Request<Incoming>) -> Response<Body> {
    let state = conn.state.clone();
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let Some(app) = route(&state.apps, conn.sni.as_deref(), host.as_deref()).cloned() else {
        let names: Vec<&str> = state.apps.iter().map(|a| a.name.as_str()).collect();
        let why = format!(
            "no app for {:?} at access point {:?}; it serves {}. Use `dtsh apps ls` and `dtsh proxy app NAME`",
            conn.sni.as_deref().or(host.as_deref()).unwrap_or(""),
            state.access_point,
            names.join(", ")
        );
        state.audit.emit(
            event(
                &state,
                &state.access_point,
                EventType::AccessDenied,
                false,
                &conn.remote,
            )
            .message(why.clone()),
        );
        return text(StatusCode::NOT_FOUND, &why);
    };
    match req.uri().path() {
        CALLBACK_PATH => return callback(&state, &conn, &app, &req).await,
        LOGOUT_PATH => return logout(&state, &conn, &app, &req).await,
        _ => {}
    }
    let who = match who(&state, &conn, &app, &req).await {
        Ok(w) => w,
        Err(resp) => return resp,
    };
    let identity = who.identity.clone();
    let with_user = |e: AuditEvent| {
        let mut e = e.user(identity.username.clone());
        if let Some(d) = device_info(&identity) {
            e = e.device(d);
        }
        e
    };

    // The decision, at every request.
    let target = Target::App {
        name: &app.name,
        labels: &app.labels,
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
        let mut e = with_user(event(
            &state,
            &app.name,
            EventType::AccessDenied,
            false,
            &conn.remote,
        ))
        .message(denial.audit_message(&target));
        e.lock = denial.lock().map(str::to_owned);
        state.audit.emit(e);
        if who.browser {
            return denied_page(&state, &denial, &target);
        }
        return text(StatusCode::FORBIDDEN, &msg);
    }

    // The session: registered at its first allowed request, so a lock ends it.
    let session_id = {
        let mut s = conn.session.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, bound)) = s.as_ref()
            && **bound != *who.cert_der
        {
            drop(s);
            let why = "this connection already carries another user's session; open the app again";
            refused(&state, &conn, &app, Some(&identity), why);
            let mut r = text(StatusCode::BAD_REQUEST, why);
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
        if s.is_none() {
            let id = state.sessions.next_id();
            state.sessions.insert(
                id,
                AppSession {
                    identity: identity.clone(),
                    target: SessionTarget::App {
                        name: app.name.clone(),
                    },
                    kill: conn.kill.clone(),
                },
            );
            *s = Some((app.name.clone(), id, who.cert_der.clone()));
            state.audit.emit(with_user(event(
                &state,
                &app.name,
                EventType::AppSessionStart,
                true,
                &conn.remote,
            )));
        }
        s.as_ref().map(|(_, id, _)| *id).unwrap_or_default()
    };

    let token = match app_token(&state, &who.cert_der, &app).await {
        Ok(t) => t,
        Err(why) => {
            refused(&state, &conn, &app, Some(&identity), &why);
            return text(StatusCode::BAD_GATEWAY, &why);
        }
    };
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let resp = forward(&state, &conn, &app, req, &token, host.as_deref()).await;
    let mut e = with_user(event(
        &state,
        &app.name,
        EventType::AppSessionRequest,
        resp.status().as_u16() < 500,
        &conn.remote,
    ))
    .message(format!("{method} {path} {}", resp.status().as_u16()));
    e.command = Some(format!("{method} {path}"));
    e.session_id = Some(session_id.to_string());
    state.audit.emit(e);
    resp
}

/// Who a request is from: the client certificate's user (`dtsh proxy app`), or the user an
/// app session cookie stands for (a browser after the web launch).
struct Who {
    identity: Arc<Identity>,
    cert_der: Arc<Vec<u8>>,
    /// A browser with an app session (refusals are pages, not text).
    browser: bool,
}

/// An `access.denied` event for `app`, with the user and device when known.
fn refused(state: &AppState, conn: &Conn, app: &App, who: Option<&Identity>, why: &str) {
    let mut e = event(
        state,
        &app.name,
        EventType::AccessDenied,
        false,
        &conn.remote,
    )
    .message(why.to_string());
    if let Some(id) = who {
        e = e.user(id.username.clone());
        if let Some(d) = device_info(id) {
            e = e.device(d);
        }
    }
    state.audit.emit(e);
}

fn web_ui(state: &AppState) -> String {
    format!("https://{}/web/", state.web_addr)
}

async fn who(
    state: &AppState,
    conn: &Conn,
    app: &App,
    req: &Request<Incoming>,
) -> Result<Who, Response<Body>> {
    let shown = match &conn.identity {
        Ok(shown) => shown.clone(),
        Err(why) => {
            refused(state, conn, app, None, why);
            return Err(text(StatusCode::FORBIDDEN, why));
        }
    };
    if let Some(identity) = shown {
        return Ok(Who {
            identity,
            cert_der: conn.cert_der.clone(),
            browser: false,
        });
    }
    let navigation = browser::is_navigation(req.method(), req.headers());
    let Some(cookie) = browser::cookie(req.headers(), SESSION_COOKIE) else {
        if navigation {
            // Step 1 of the web launch.
            let pq = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            return Err(browser::start_launch(&state.web_addr, &app.name, pq));
        }
        let why = format!(
            "app {:?} needs your devtrust certificate (`dtsh proxy app {}`) or a browser session opened from the web UI",
            app.name, app.name
        );
        refused(state, conn, app, None, &why);
        return Err(text(StatusCode::UNAUTHORIZED, &why));
    };
    let bad_session = |why: String| {
        refused(
            state,
            conn,
            app,
            None,
            &format!("app session refused: {why}"),
        );
        let mut r = browser::page(
            StatusCode::UNAUTHORIZED,
            "App session not valid",
            &why,
            &[format!(
                "Open {} again from the devtrust web UI: {}",
                app.name,
                web_ui(state)
            )],
        );
        browser::clear_session(&mut r);
        r
    };
    let Some((id, secret)) = browser::split_session(cookie) else {
        return Err(bad_session("the app session cookie is malformed".into()));
    };
    if let Some(k) = state.browser_sessions.get(&app.name, id, secret) {
        return Ok(Who {
            identity: k.identity,
            cert_der: k.cert_der,
            browser: true,
        });
    }
    let got = AppServiceClient::new(state.channel.clone())
        .get_app_session(pb::GetAppSessionRequest {
            session_id: id.to_string(),
            secret: secret.to_string(),
            app: app.name.clone(),
        })
        .await;
    let session = match got {
        Ok(s) => s.into_inner(),
        Err(s)
            if matches!(
                s.code(),
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
            ) =>
        {
            state.browser_sessions.forget(&app.name, id);
            return Err(bad_session(s.message().to_string()));
        }
        Err(s) => {
            let why = format!(
                "the auth service cannot check the app session right now: {}",
                s.message()
            );
            refused(state, conn, app, None, &why);
            return Err(browser::page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again shortly",
                &why,
                &[],
            ));
        }
    };
    match state.check_user_cert(&session.user_cert_der) {
        Ok(identity) => {
            let k = state.browser_sessions.put(
                &app.name,
                id,
                secret,
                Arc::new(identity),
                Arc::new(session.user_cert_der),
            );
            Ok(Who {
                identity: k.identity,
                cert_der: k.cert_der,
                browser: true,
            })
        }
        Err(why) => Err(bad_session(why)),
    }
}

/// Step 3 of the web launch: the state must be this browser's; the code is spent at the
/// auth service for an app session.
async fn callback(
    state: &AppState,
    conn: &Conn,
    app: &App,
    req: &Request<Incoming>,
) -> Response<Body> {
    let failed = |why: String| {
        refused(
            state,
            conn,
            app,
            None,
            &format!("app launch refused: {why}"),
        );
        browser::page(
            StatusCode::BAD_REQUEST,
            "App launch failed",
            &why,
            &[format!(
                "Open {} again from the devtrust web UI: {}",
                app.name,
                web_ui(state)
            )],
        )
    };
    let cb = match browser::check_callback(req.uri().query(), req.headers()) {
        Ok(cb) => cb,
        Err(why) => return failed(why),
    };
    let issued = match AppServiceClient::new(state.channel.clone())
        .exchange_app_code(pb::ExchangeAppCodeRequest {
            code: cb.code,
            state: cb.state,
            app: app.name.clone(),
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return failed(s.message().to_string()),
    };
    let identity = match state.check_user_cert(&issued.user_cert_der) {
        Ok(i) => i,
        Err(why) => return failed(why),
    };
    let max_age = (issued.expires_unix - OffsetDateTime::now_utc().unix_timestamp()).max(0);
    state.browser_sessions.put(
        &app.name,
        &issued.session_id,
        &issued.secret,
        Arc::new(identity),
        Arc::new(issued.user_cert_der),
    );
    browser::finish_launch(&cb.back, &issued.session_id, &issued.secret, max_age as u64)
}

/// App logout: the app session ends at the auth service and its cookie is cleared.
async fn logout(
    state: &AppState,
    conn: &Conn,
    app: &App,
    req: &Request<Incoming>,
) -> Response<Body> {
    let mut ended = false;
    if let Some((id, secret)) =
        browser::cookie(req.headers(), SESSION_COOKIE).and_then(browser::split_session)
    {
        state.browser_sessions.forget(&app.name, id);
        ended = AppServiceClient::new(state.channel.clone())
            .end_app_session(pb::GetAppSessionRequest {
                session_id: id.to_string(),
                secret: secret.to_string(),
                app: app.name.clone(),
            })
            .await
            .is_ok_and(|r| r.into_inner().ended);
    }
    tracing::debug!(app = %app.name, remote = %conn.remote, ended, "app logout");
    let mut r = browser::page(
        StatusCode::OK,
        "Logged out",
        &format!("You are logged out of {}.", app.name),
        &[format!(
            "Open it again from the devtrust web UI: {}",
            web_ui(state)
        )],
    );
    browser::clear_session(&mut r);
    r
}

/// The page a browser gets when the decision says no: why, and how to fix it.
fn denied_page(state: &AppState, denial: &Denial, target: &Target<'_>) -> Response<Body> {
    let why = denial.description(target);
    let todo = match denial {
        Denial::Policy(
            DenyReason::RoleRequiresTrustedDevice { .. } | DenyReason::ClusterRequiresTrustedDevice,
        ) => vec![
            "Enroll this device, once: `dtsh device enroll --current-device` (or ask an admin for an enrollment token).".to_string(),
            format!(
                "Authenticate your web session with the device: log in at {} and use \u{201c}Authenticate this device with dtsh\u{201d}.",
                web_ui(state)
            ),
            "Then open the app again from the web UI.".to_string(),
        ],
        Denial::Policy(DenyReason::DevicePosture { .. }) => vec![
            "Bring this device up to your organization's requirements, then authenticate your web session with it again.".to_string(),
        ],
        _ => vec![format!(
            "If you should have access, ask an administrator; the audit log names the reason. Web UI: {}",
            web_ui(state)
        )],
    };
    let title = match denial {
        Denial::Policy(
            DenyReason::RoleRequiresTrustedDevice { .. } | DenyReason::ClusterRequiresTrustedDevice,
        ) => "A trusted device is required",
        _ => "Access denied",
    };
    browser::page(StatusCode::FORBIDDEN, title, &why, &todo)
}

/// A token for `app` from the auth service, reused until shortly before it expires.
async fn app_token(state: &AppState, cert_der: &[u8], app: &App) -> Result<String, String> {
    let key = (cert_der.to_vec(), app.name.clone());
    let now = OffsetDateTime::now_utc().unix_timestamp();
    if let Some((t, exp)) = state
        .tokens
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
        && *exp - now > TOKEN_SLACK.as_secs() as i64
    {
        return Ok(t.clone());
    }
    let signed = AppServiceClient::new(state.channel.clone())
        .sign_app_token(pb::SignAppTokenRequest {
            user_cert_der: cert_der.to_vec(),
            app: app.name.clone(),
            audience: app.uri.to_string(),
        })
        .await
        .map_err(|s| {
            format!(
                "the auth service did not sign an app token: {}",
                s.message()
            )
        })?
        .into_inner();
    let mut tokens = state.tokens.lock().unwrap_or_else(|p| p.into_inner());
    // Forget expired tokens now and then.
    if tokens.len() > 10_000 {
        tokens.retain(|_, (_, exp)| *exp > now);
    }
    tokens.insert(key, (signed.token.clone(), signed.expires_unix));
    Ok(signed.token)
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// The request headers the app gets: the client's, minus hop-by-hop ones, our own
/// identity header and cookies, plus the signed identity and where the request came from.
fn upstream_headers(
    incoming: &HeaderMap,
    upgrade: bool,
    token: &str,
    remote: &str,
    host: Option<&str>,
) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in incoming {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || n == JWT_HEADER || n.starts_with("x-forwarded-") {
            continue;
        }
        if n == "upgrade" && !upgrade {
            continue;
        }
        if name == header::COOKIE {
            let kept: Vec<&str> = value
                .to_str()
                .unwrap_or("")
                .split(';')
                .map(str::trim)
                .filter(|c| !c.is_empty() && !c.to_ascii_lowercase().starts_with("__host-devtrust"))
                .collect();
            if !kept.is_empty()
                && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
            {
                out.append(header::COOKIE, v);
            }
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    if upgrade {
        out.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if let Ok(v) = HeaderValue::from_str(token) {
        out.insert(HeaderName::from_static(JWT_HEADER), v);
    }
    let ip = remote.rsplit_once(':').map(|(h, _)| h).unwrap_or(remote);
    if let Ok(v) = HeaderValue::from_str(ip) {
        out.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    out.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("https"),
    );
    if let Some(h) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
        out.insert(HeaderName::from_static("x-forwarded-host"), h);
    }
    out
}

fn is_upgrade(h: &HeaderMap) -> bool {
    h.get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"))
        && h.contains_key(header::UPGRADE)
}

async fn forward(
    state: &AppState,
    conn: &Arc<Conn>,
    app: &App,
    mut req: Request<Incoming>,
    token: &str,
    host: Option<&str>,
) -> Response<Body> {
    let upgrade = is_upgrade(req.headers());
    let base = app.uri.path().trim_end_matches('/');
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let uri = match format!(
        "{}://{}{base}{pq}",
        app.uri.scheme_str().unwrap_or("http"),
        app.uri.authority().map(|a| a.as_str()).unwrap_or(""),
    )
    .parse::<http::Uri>()
    {
        Ok(u) => u,
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("bad request path: {e}")),
    };
    let mut headers = upstream_headers(req.headers(), upgrade, token, &conn.remote, host);
    for (name, value) in &app.headers {
        headers.insert(name.clone(), value.clone());
    }
    let client_upgrade = if upgrade {
        Some(hyper::upgrade::on(&mut req))
    } else {
        None
    };
    let (mut parts, body) = req.into_parts();
    parts.uri = uri;
    parts.headers = headers;
    parts.version = http::Version::HTTP_11;
    if let Some(a) = app.uri.authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
    let Some(client) = state.clients.0.get(&app.name) else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("no client for app {:?}", app.name),
        );
    };
    let mut resp = match client.request(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(e) => {
            // hyper's own message is only "client error (Connect)": say what went wrong.
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                why.push_str(": ");
                why.push_str(&s.to_string());
                source = s.source();
            }
            return text(
                StatusCode::BAD_GATEWAY,
                &format!("app {:?} at {} is unreachable: {why}", app.name, app.uri),
            );
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let app_upgrade = hyper::upgrade::on(&mut resp);
        let mut killed = conn.kill.subscribe();
        let keep = conn.clone();
        tokio::spawn(async move {
            let (Ok(c), Ok(a)) = (client_upgrade.await, app_upgrade.await) else {
                return;
            };
            let (mut c, mut a) = (TokioIo::new(c), TokioIo::new(a));
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut c, &mut a) => {}
                _ = killed.wait_for(|k| k.is_some()) => {}
            }
            // The session lives as long as its WebSocket.
            drop(keep);
        });
    }
    let (mut parts, body) = resp.into_parts();
    for h in HOP_BY_HOP {
        if resp_keeps(h, parts.status) {
            continue;
        }
        parts.headers.remove(h);
    }
    Response::from_parts(parts, body.boxed())
}

/// A 101 answer keeps its `Connection: upgrade`.
fn resp_keeps(h: &str, status: StatusCode) -> bool {
    status == StatusCode::SWITCHING_PROTOCOLS && h == "connection"
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn app(name: &str, public: &str) -> App {
        App {
            name: name.into(),
            labels: Default::default(),
            uri: "http://127.0.0.1:1".parse().unwrap(),
            public_addr: public.into(),
            description: String::new(),
            tls: crate::UpstreamTls::System,
            headers: Vec::new(),
        }
    }

    /// A user certificate for "alice" from a fresh user CA (DER).
    fn alice_cert() -> Vec<u8> {
        let now = time::OffsetDateTime::now_utc();
        let ca = dt_ca::CertAuthority::generate("c", dt_ca::CaKind::User, now).unwrap();
        let key = dt_ca::ClientKey::generate().unwrap();
        let id = Identity {
            username: "alice".parse().unwrap(),
            roles: vec!["access".into()],
            logins: Vec::new(),
            bot: false,
            trait_logins: Vec::new(),
            device: None,
            not_before: now,
            not_after: now + time::Duration::hours(1),
        };
        ca.issue_x509_client_cert(&key.spki_der(), &id).unwrap()
    }

    #[test]
    fn a_client_certificate_whose_identity_cannot_be_read_is_refused_not_ignored() {
        assert!(cert_identity(&[]).unwrap().is_none(), "no certificate");
        let good = alice_cert();
        let who = cert_identity(&good).unwrap().unwrap();
        assert_eq!(who.username, "alice");
        // The same certificate with its subject's user name made unreadable (same length,
        // so the DER stays well formed): rustls would have refused the broken signature,
        // but a certificate the CA did sign with such a name must not read as anonymous.
        let at = good.windows(5).position(|w| w == b"alice").unwrap();
        let mut bad = good.clone();
        bad[at..at + 5].copy_from_slice(b"al ce");
        let why = cert_identity(&bad).unwrap_err();
        assert!(
            why.contains("no devtrust identity") && why.contains("dtsh login"),
            "{why}"
        );
    }

    #[test]
    fn requests_route_by_server_name_then_host() {
        let apps = [
            app("wiki", "wiki.localhost:8443"),
            app("grafana", "grafana.example.com"),
        ];
        assert_eq!(route(&apps, Some("grafana"), None).unwrap().name, "grafana");
        assert_eq!(
            route(&apps, None, Some("WIKI.localhost:8443"))
                .unwrap()
                .name,
            "wiki"
        );
        assert_eq!(
            route(&apps, None, Some("grafana.example.com:443"))
                .unwrap()
                .name,
            "grafana"
        );
        assert!(route(&apps, None, Some("other")).is_none());
        assert!(route(&apps, None, None).is_none());
        assert_eq!(
            route(&apps[..1], None, Some("127.0.0.1:9")).unwrap().name,
            "wiki"
        );
    }

    #[test]
    fn our_headers_and_cookies_never_reach_the_app_from_the_client() {
        let mut h = HeaderMap::new();
        h.insert(JWT_HEADER, HeaderValue::from_static("forged"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.9.9.9"));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-devtrust-app=secret; b=2"),
        );
        h.insert("x-app", HeaderValue::from_static("kept"));
        let out = upstream_headers(&h, false, "TOKEN", "127.0.0.1:5000", Some("wiki"));
        assert_eq!(out.get(JWT_HEADER).unwrap(), "TOKEN");
        assert_eq!(out.get("x-forwarded-for").unwrap(), "127.0.0.1");
        assert_eq!(out.get(header::COOKIE).unwrap(), "a=1; b=2");
        assert_eq!(out.get("x-app").unwrap(), "kept");
        assert!(out.get(header::CONNECTION).is_none());
        assert_eq!(out.get_all(JWT_HEADER).iter().count(), 1);
    }
}
