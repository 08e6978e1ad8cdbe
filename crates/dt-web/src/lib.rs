//! The devtrust web UI, served by the auth service on its own listener under `/web`.
//!
//! What it guarantees:
//! - **Identity as on the command line.** A web login is a password login through the auth
//!   service's own `login` (same checks, same rate limit, same audit); the session holds
//!   the certificates it issued, and every API call re-checks them through the same
//!   `caller` path as gRPC (expiry, user still there, locks). A lock ends the browser
//!   session at its next request.
//! - **Browser hygiene.** Session cookie `__Host-`, `HttpOnly; Secure; SameSite=Strict`;
//!   every state-changing call is a `POST` that must carry the session's CSRF token (the
//!   login form a double-submit token); a strict Content-Security-Policy (scripts and
//!   styles from this origin only, no inline code); sessions expire with their
//!   certificates and end at logout. Pages and assets are embedded: nothing from a CDN.
//! - **Device web authentication** ([`dt_auth::device_web`]): after login the page hands
//!   off to `dtsh device web-auth` through a `devtrust://` link; the browser's confirmation
//!   is accepted only from dtsh's IP (trusted proxies only for `X-Forwarded-For`), and the
//!   session's certificates are then augmented with the device: the green shield.
//!
//! - **The browser terminal** logs in to nodes with the session's own certificate; the node
//!   decides as for `dtsh ssh` (see `terminal`).
//! - **Desktops** are relayed to the desktop access point over mTLS with the session's own
//!   certificate; the access point decides (see `desktop`).
//!
//! What it does not do (yet): share sessions between auth servers, read the PROXY protocol.
//! See docs/web.md.

mod admin;
mod apps;
pub mod client_ip;
mod desktop;
mod pages;
pub mod session;
mod terminal;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use dt_auth::AuthServer;
use dt_auth::caller::Caller;
use dt_auth::error::ApiError;
use dt_auth::listener::Peer;
use dt_proto::v1 as pb;
use dt_types::ServiceKind;
use dt_types::audit::{AuditEvent, EventType};
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use crate::session::{
    CSRF_HEADER, LOGIN_CSRF_COOKIE, SESSION_COOKIE, Session, SessionStore, cookie_value,
    same_secret,
};

/// The web UI's settings.
#[derive(Clone, Debug)]
pub struct WebConfig {
    /// Proxies whose `X-Forwarded-For` is believed (load balancers in front of devtrust).
    pub trusted_proxies: Vec<IpAddr>,
    /// The longest a web session lasts (the roles' `max_session_ttl` may cut it shorter).
    pub session_ttl: Duration,
    /// How long the device web token of a login lives.
    pub device_web_token_ttl: Duration,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            trusted_proxies: Vec::new(),
            session_ttl: Duration::from_secs(12 * 3600),
            device_web_token_ttl: dt_auth::device_web::WEB_TOKEN_TTL,
        }
    }
}

#[derive(Clone)]
struct Web {
    srv: Arc<AuthServer>,
    cfg: Arc<WebConfig>,
    sessions: SessionStore,
}

/// The Content-Security-Policy of every `/web` response: this origin's scripts, styles
/// and images only; no inline code, no framing, forms and fetches to this origin.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The web UI's routes (all under `/web`), to merge into the auth service's router.
pub fn router(srv: Arc<AuthServer>, cfg: WebConfig) -> Router {
    router_with_sessions(srv, cfg, SessionStore::default())
}

/// [`router`] with a given session table (tests look into it).
pub fn router_with_sessions(
    srv: Arc<AuthServer>,
    cfg: WebConfig,
    sessions: SessionStore,
) -> Router {
    let web = Web {
        srv,
        cfg: Arc::new(cfg),
        sessions,
    };
    Router::new()
        .route("/web", get(|| async { Redirect::to("/web/") }))
        .route("/web/", get(index_page))
        .route("/web/login", get(login_page))
        .route("/web/device/confirm", get(confirm_page))
        .route("/web/assets/{name}", get(pages::asset))
        .route("/web/api/login", post(login))
        .route("/web/api/logout", post(logout))
        .route("/web/api/me", get(me))
        .route("/web/api/resources", get(resources))
        .route("/web/api/device/confirm", post(confirm))
        .route("/web/devices", get(devices_page))
        .route("/web/audit", get(audit_page))
        .route("/web/terminal", get(terminal_page))
        .route("/web/api/ssh", get(terminal::connect))
        .route("/web/launch/{app}", get(apps::launch_page))
        .route("/web/api/apps/launch", post(apps::launch))
        .route("/web/desktop", get(desktop_page))
        .route("/web/api/desktop", get(desktop::connect))
        .merge(admin::routes())
        .layer(axum::middleware::map_response(security_headers))
        .with_state(web)
}

/// The auth service's router with the web UI next to it.
pub fn mount(app: Router, srv: Arc<AuthServer>, cfg: WebConfig) -> Router {
    app.merge(router(srv, cfg))
}

async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Errors of the web API, one mapping to HTTP.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("missing or wrong CSRF token: reload the page and try again")]
    Csrf,
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let status = match &self {
            WebError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            WebError::Csrf | WebError::Refused(_) => StatusCode::FORBIDDEN,
            WebError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WebError::Api(e) => e.http_status(),
        };
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

type WebResult<T> = Result<T, WebError>;

fn not_logged_in() -> WebError {
    WebError::Unauthenticated(
        "you are not logged in (or your session ended): log in at /web/login".into(),
    )
}

impl Web {
    fn client_ip(&self, peer: &Peer, headers: &HeaderMap) -> IpAddr {
        client_ip::client_ip(
            peer.addr.ip(),
            headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok()),
            &self.cfg.trusted_proxies,
        )
    }

    /// The session of a request and its caller, checked as every gRPC call is. A session
    /// whose identity is refused (expired, user removed, locked) ends here.
    async fn session(
        &self,
        peer: &Peer,
        headers: &HeaderMap,
    ) -> WebResult<(String, Session, Caller)> {
        let cookie = cookie_value(headers, SESSION_COOKIE).ok_or_else(not_logged_in)?;
        let session = self.sessions.get(cookie).ok_or_else(not_logged_in)?;
        let ip = self.client_ip(peer, headers);
        let as_peer = Peer {
            addr: SocketAddr::new(ip, peer.addr.port()),
            identity: Some(session.identity.clone()),
            cert_der: Some(session.tls_cert_der.clone()),
            // Device authentication is a gRPC ceremony on the device's own connection,
            // never a web request: the session's certificate is not needed here.
            user_cert: None,
            node: None,
        };
        match self.srv.caller(as_peer).await {
            Ok(caller) => Ok((cookie.to_string(), session, caller)),
            Err(e @ (ApiError::Unauthenticated(_) | ApiError::PermissionDenied(_))) => {
                self.sessions.remove(cookie);
                self.srv.app_sessions.end_web_session(&session.id);
                Err(WebError::Unauthenticated(format!(
                    "your web session ended: {e}"
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The checks of a WebSocket opening (the browser terminal, desktops): a live session,
    /// an `Origin` of this server (no cross-site WebSocket hijacking) and the session's CSRF
    /// token, which a browser can only put in the query. `what` names it in refusals.
    async fn websocket_session(
        &self,
        peer: &Peer,
        uri: &axum::http::Uri,
        headers: &HeaderMap,
        csrf: &str,
        what: &str,
    ) -> WebResult<(Session, Caller)> {
        let ip = self.client_ip(peer, headers);
        let (_, session, caller) = self.session(peer, headers).await?;
        let origin = headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let expected = request_host(uri, headers).map(|h| format!("https://{h}"));
        if expected.as_deref() != Some(origin) {
            return Err(WebError::Refused(format!(
                "the {what} opens only from this server's own pages"
            )));
        }
        let mut h = headers.clone();
        if let Ok(v) = csrf.parse() {
            h.insert(CSRF_HEADER, v);
        }
        self.check_session_csrf(&h, &session, ip, what).await?;
        Ok((session, caller))
    }

    /// [`Self::check_csrf`] against a session's own token, a refusal audited under its user.
    async fn check_session_csrf(
        &self,
        headers: &HeaderMap,
        session: &Session,
        ip: IpAddr,
        what: &str,
    ) -> WebResult<()> {
        self.check_csrf(headers, &session.csrf, session.user().as_str(), ip, what)
            .await
    }

    /// State-changing calls carry the session's CSRF token; a refusal is audited.
    async fn check_csrf(
        &self,
        headers: &HeaderMap,
        expected: &str,
        user: &str,
        ip: IpAddr,
        what: &str,
    ) -> WebResult<()> {
        let presented = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if same_secret(expected, presented) {
            return Ok(());
        }
        let mut e = AuditEvent::new(EventType::AccessDenied, false, OffsetDateTime::now_utc())
            .message(format!("web {what} refused: missing or wrong CSRF token"))
            .remote_addr(ip.to_string());
        if !user.is_empty() {
            e = e.user(user);
        }
        self.srv.audit.emit(e).await.map_err(ApiError::from)?;
        Err(WebError::Csrf)
    }
}

fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> WebResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| WebError::BadRequest(format!("unreadable request body: {e}")))
}

// ---------------------------------------------------------------------------------------
// pages

/// A signed-in page, or the login page without a session.
async fn signed_in(web: &Web, peer: &Peer, headers: &HeaderMap, page: &pages::Page) -> Response {
    match web.session(peer, headers).await {
        Ok(_) => pages::html(page.render()),
        Err(_) => Redirect::to("/web/login").into_response(),
    }
}

async fn index_page(
    State(web): State<Web>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    signed_in(&web, &peer, &headers, &pages::INDEX).await
}

async fn devices_page(
    State(web): State<Web>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    signed_in(&web, &peer, &headers, &pages::DEVICES).await
}

async fn terminal_page(
    State(web): State<Web>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    signed_in(&web, &peer, &headers, &pages::TERMINAL).await
}

async fn desktop_page(
    State(web): State<Web>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    signed_in(&web, &peer, &headers, &pages::DESKTOP).await
}

async fn audit_page(
    State(web): State<Web>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    signed_in(&web, &peer, &headers, &pages::AUDIT).await
}

async fn confirm_page(
    State(web): State<Web>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    match web.session(&peer, &headers).await {
        Ok(_) => pages::html(pages::CONFIRM_HTML.to_string()),
        Err(_) => pages::html(pages::CONFIRM_NO_SESSION_HTML.to_string()),
    }
}

async fn login_page() -> Response {
    let token = session::random_secret();
    let mut resp = pages::html(pages::LOGIN_HTML.replace("{{LOGIN_CSRF}}", &token));
    if let Ok(v) = HeaderValue::from_str(&session::login_csrf_cookie(&token)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

// ---------------------------------------------------------------------------------------
// API

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    username: String,
    password: String,
}

async fn login(
    State(web): State<Web>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> WebResult<Response> {
    let ip = web.client_ip(&peer, &headers);
    let expected = cookie_value(&headers, LOGIN_CSRF_COOKIE).unwrap_or_default();
    web.check_csrf(&headers, expected, "", ip, "login").await?;
    let body: LoginBody = json_body(&body)?;
    let key = dt_ca::ClientKey::generate().map_err(ApiError::internal)?;
    let ssh_public_key = key
        .ssh_public_key()
        .map_err(ApiError::internal)?
        .to_openssh()
        .map_err(ApiError::internal)?;
    let request = pb::LoginRequest {
        username: body.username,
        password: body.password,
        ssh_public_key,
        tls_public_key_der: key.spki_der(),
        ttl_seconds: web.cfg.session_ttl.as_secs(),
        ..Default::default()
    };
    // The throttle and the audit see the browser's address.
    let as_peer = Peer {
        addr: SocketAddr::new(ip, peer.addr.port()),
        identity: None,
        cert_der: None,
        user_cert: None,
        node: None,
    };
    let resp = web.srv.login(request, as_peer).await?;
    let now = OffsetDateTime::now_utc();
    let identity = web
        .srv
        .user_ca
        .verify_x509_issued_by(&resp.tls_cert_der, now)
        .map_err(ApiError::internal)?;
    let id = uuid::Uuid::new_v4().to_string();
    let web_token = if identity.bot {
        None
    } else {
        match web
            .srv
            .create_device_web_token(
                identity.username.as_str(),
                &id,
                ip,
                web.cfg.device_web_token_ttl,
            )
            .await
        {
            Ok(Ok(t)) => Some(t),
            Ok(Err(why)) => {
                tracing::debug!(user = %identity.username, ?why, "no device web token at web login");
                None
            }
            // The login stands; the session is simply not device-trusted.
            Err(e) => {
                tracing::warn!(user = %identity.username, error = %e, "device web token not created");
                None
            }
        }
    };
    let user = identity.username.clone();
    let expires = identity.not_after;
    let session = Session {
        id,
        csrf: session::random_secret(),
        expires,
        identity: Arc::new(identity),
        tls_cert_der: Arc::new(resp.tls_cert_der),
        ssh_cert: resp.ssh_cert,
        ssh_key_openssh: Arc::new(key.ssh_private_key_openssh().map_err(ApiError::internal)?),
        login_ip: ip,
        web_token,
        device: None,
    };
    let cookie = web.sessions.insert(session);
    let max_age = (expires - now).whole_seconds();
    let mut out = Json(json!({ "ok": true, "user": user })).into_response();
    for c in [
        session::session_cookie(&cookie, max_age),
        session::clear_cookie(LOGIN_CSRF_COOKIE),
    ] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            out.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    Ok(out)
}

async fn logout(
    State(web): State<Web>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> WebResult<Response> {
    let ip = web.client_ip(&peer, &headers);
    let cookie = cookie_value(&headers, SESSION_COOKIE).ok_or_else(not_logged_in)?;
    let session = web.sessions.get(cookie).ok_or_else(not_logged_in)?;
    web.check_session_csrf(&headers, &session, ip, "logout")
        .await?;
    web.sessions.remove(cookie);
    // The apps this session opened lose their sessions too.
    web.srv.app_sessions.end_web_session(&session.id);
    let mut out = Json(json!({ "ok": true })).into_response();
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie(SESSION_COOKIE)) {
        out.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(out)
}

/// `user@host:port` of the `devtrust://` hand-off: the address the browser used (dtsh
/// checks it against its own profile, so a wrong one only fails the hand-off).
fn handoff_url(user: &str, host: &str, token: &dt_auth::device_web::IssuedWebToken) -> String {
    let user: String = user
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' | b'-' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect();
    format!(
        "devtrust://{user}@{host}/authenticate_web_device?id={}&token={}",
        token.id, token.token
    )
}

/// The address the browser used: `:authority` over HTTP/2 (in the URI), `Host` otherwise.
fn request_host(uri: &axum::http::Uri, headers: &HeaderMap) -> Option<String> {
    let host = match uri.authority() {
        Some(a) => a.as_str(),
        None => headers.get(header::HOST)?.to_str().ok()?,
    };
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    ok.then(|| host.to_string())
}

/// Shield states of the user menu (`data-state`).
fn shield(trusted: bool, required: bool) -> &'static str {
    match (trusted, required) {
        (true, _) => "trusted",
        (false, true) => "required",
        (false, false) => "none",
    }
}

async fn me(
    State(web): State<Web>,
    Extension(peer): Extension<Peer>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> WebResult<Json<serde_json::Value>> {
    let (_, session, caller) = web.session(&peer, &headers).await?;
    let cap = web.srv.cap().await?;
    let identity = caller.identity()?;
    let who = if identity.bot {
        dt_authz::Principal::Bot
    } else {
        dt_authz::Principal::Human
    };
    let required = dt_authz::device_required(&cap.spec.device_trust.mode, &caller.roles, who);
    let trusted = identity.device.is_some();
    let devices = web.srv.enrolled_devices_of(caller.name()).await?;
    let handoff = match (&session.web_token, trusted, request_host(&uri, &headers)) {
        (Some(t), false, Some(host)) => Some(handoff_url(caller.name(), &host, t)),
        _ => None,
    };
    let can = |kind: &str, verb| web.srv.authorize(&caller, kind, verb).is_ok();
    Ok(Json(json!({
        "user": caller.name(),
        "roles": identity.roles,
        "logins": identity.logins,
        "csrf_token": session.csrf,
        "expires": session.expires.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "cluster_mode": cap.spec.device_trust.mode.to_string(),
        "shield": shield(trusted, required),
        "device": session.device,
        "trusted_devices": devices,
        "device_web_auth_url": handoff,
        "can": {
            "list_devices": can("device", dt_types::Verb::List),
            "list_events": can("event", dt_types::Verb::List),
        },
    })))
}

async fn resources(
    State(web): State<Web>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> WebResult<Json<serde_json::Value>> {
    let (_, _, caller) = web.session(&peer, &headers).await?;
    // The same listing decision as `dtsh ls` and `dtsh db ls` (dt_authz::may_list).
    let nodes: Vec<_> = web
        .srv
        .list_nodes_for(&caller.roles)
        .await?
        .into_iter()
        .map(|n| json!({"name": n.name, "addr": n.addr, "labels": n.labels}))
        .collect();
    let databases: Vec<_> = web
        .srv
        .list_served_for(ServiceKind::Db, &caller.roles)
        .await?
        .into_iter()
        .map(|d| {
            json!({
                "name": d.resource.name,
                "protocol": d.resource.protocol,
                "labels": d.resource.labels,
                "description": d.resource.description,
            })
        })
        .collect();
    let apps: Vec<_> = web
        .srv
        .list_served_for(ServiceKind::App, &caller.roles)
        .await?
        .into_iter()
        .map(|a| {
            json!({
                "name": a.resource.name,
                "labels": a.resource.labels,
                "description": a.resource.description,
                "public_addr": a.resource.protocol,
                "launch_url": apps::app_url(&a.resource.protocol, "/"),
            })
        })
        .collect();
    let desktops: Vec<_> = web
        .srv
        .list_served_for(ServiceKind::Desktop, &caller.roles)
        .await?
        .into_iter()
        .map(|d| {
            json!({
                "name": d.resource.name,
                "labels": d.resource.labels,
                "description": d.resource.description,
            })
        })
        .collect();
    Ok(Json(
        json!({ "nodes": nodes, "databases": databases, "apps": apps, "desktops": desktops }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfirmBody {
    id: String,
    token: String,
}

async fn confirm(
    State(web): State<Web>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> WebResult<Json<serde_json::Value>> {
    let ip = web.client_ip(&peer, &headers);
    let (cookie, session, caller) = web.session(&peer, &headers).await?;
    web.check_session_csrf(&headers, &session, ip, "device confirmation")
        .await?;
    let body: ConfirmBody = json_body(&body)?;
    let outcome = web
        .srv
        .confirm_device_web(&body.id, &body.token, caller.name(), &session.id, ip)
        .await?;
    // The web token is spent either way: a new one needs a new login.
    let confirmed = match outcome {
        Ok(c) => c,
        Err(refused) => {
            web.sessions.update(&cookie, |s| s.web_token = None);
            return Err(WebError::Refused(refused.0));
        }
    };
    let now = OffsetDateTime::now_utc();
    let ssh =
        dt_ca::SshCertificate::from_openssh(session.ssh_cert.trim()).map_err(ApiError::internal)?;
    // The posture of the device's last authentication (the one this confirmation proves),
    // for the roles' posture rules; a device gone since carries none (rules then fail).
    let posture = match web.srv.get_device(&confirmed.device.device_id).await? {
        Some((d, _)) => {
            let at = d
                .spec
                .collected_data
                .last()
                .map(|c| c.record_time.unwrap_or(c.collect_time))
                .unwrap_or(now);
            dt_auth::devices::posture_at_authentication(&d, at)
        }
        None => Default::default(),
    };
    let ext = dt_ca::DeviceExt {
        // The server wrote these from the device it verified: unreadable ones are our fault.
        device_id: confirmed
            .device
            .device_id
            .parse()
            .map_err(ApiError::internal)?,
        asset_tag: confirmed.device.asset_tag.clone(),
        credential_id: confirmed
            .device
            .credential_id
            .parse()
            .map_err(ApiError::internal)?,
        posture,
    };
    let (new_ssh, new_tls) = web
        .srv
        .user_ca
        .augment(&ssh, &session.tls_cert_der, &ext, now)
        .map_err(|e| {
            WebError::Refused(format!(
                "the session's certificates can't be augmented: {e}"
            ))
        })?;
    let identity = web
        .srv
        .user_ca
        .verify_x509_issued_by(&new_tls, now)
        .map_err(ApiError::internal)?;
    let ssh_text = new_ssh.to_openssh().map_err(ApiError::internal)?;
    let device = confirmed.device.clone();
    web.sessions.update(&cookie, move |s| {
        s.identity = Arc::new(identity);
        s.tls_cert_der = Arc::new(new_tls);
        s.ssh_cert = ssh_text;
        s.device = Some(device);
        s.web_token = None;
    });
    Ok(Json(json!({ "ok": true, "device": confirmed.device })))
}

#[cfg(test)]
mod tests;
