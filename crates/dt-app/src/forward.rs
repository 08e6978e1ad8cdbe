//! One connection: TLS, then HTTP/1.1 requests, each decided and forwarded (see the crate
//! doc for the steps).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dt_agent::access::{Ending, SessionTarget, device_info};
use dt_authz::Target;
use dt_ca::Identity;
use dt_proto::v1 as pb;
use dt_proto::v1::app_service_client::AppServiceClient;
use dt_types::audit::{AuditEvent, EventType};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::{App, AppSession, AppState, TOKEN_SLACK};

type Body = BoxBody<Bytes, hyper::Error>;

/// The header that carries the signed identity to the app. A client's own is dropped.
pub const JWT_HEADER: &str = "devtrust-jwt-assertion";
/// How long the TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most header bytes a request may carry (hyper answers 431 beyond).
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The HTTP client to apps.
pub struct Upstream(Client<HttpConnector, Incoming>);

impl Upstream {
    pub fn new() -> Upstream {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        Upstream(Client::builder(TokioExecutor::new()).build(http))
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

/// What every request of one connection shares.
struct Conn {
    state: Arc<AppState>,
    remote: String,
    sni: Option<String>,
    identity: Option<Arc<Identity>>,
    cert_der: Vec<u8>,
    /// The registered session (app name, registry id), once a request was allowed.
    session: Mutex<Option<(String, u64)>>,
    kill: watch::Sender<Option<Ending>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Ok(s) = self.session.lock()
            && let Some((_, id)) = s.as_ref()
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
    // rustls verified the chain to the user CA, validity and usage.
    let identity = if cert_der.is_empty() {
        None
    } else {
        dt_ca::parse_x509_identity(&cert_der).ok().map(Arc::new)
    };
    let (kill, mut killed) = watch::channel(None::<Ending>);
    let conn = Arc::new(Conn {
        state: state.clone(),
        remote,
        sni,
        identity,
        cert_der,
        session: Mutex::new(None),
        kill,
    });
    let c = conn.clone();
    let svc = hyper::service::service_fn(move |req| {
        let c = c.clone();
        async move { Ok::<_, Infallible>(handle(c, req).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .max_buf_size(MAX_HEADER_BYTES.max(8192))
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
    let Some(identity) = conn.identity.clone() else {
        let why = format!(
            "app {:?} needs your devtrust certificate: reach it with `dtsh proxy app {}`",
            app.name, app.name
        );
        state.audit.emit(
            event(
                &state,
                &app.name,
                EventType::AccessDenied,
                false,
                &conn.remote,
            )
            .message(why.clone()),
        );
        return text(StatusCode::UNAUTHORIZED, &why);
    };
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
        return text(StatusCode::FORBIDDEN, &msg);
    }

    // The session: registered at its first allowed request, so a lock ends it.
    let session_id = {
        let mut s = conn.session.lock().unwrap_or_else(|p| p.into_inner());
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
            *s = Some((app.name.clone(), id));
            state.audit.emit(with_user(event(
                &state,
                &app.name,
                EventType::AppSessionStart,
                true,
                &conn.remote,
            )));
        }
        s.as_ref().map(|(_, id)| *id).unwrap_or_default()
    };

    let token = match app_token(&state, &conn.cert_der, &app).await {
        Ok(t) => t,
        Err(why) => {
            state.audit.emit(
                with_user(event(
                    &state,
                    &app.name,
                    EventType::AccessDenied,
                    false,
                    &conn.remote,
                ))
                .message(why.clone()),
            );
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
    let headers = upstream_headers(req.headers(), upgrade, token, &conn.remote, host);
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
    let mut resp = match state
        .client
        .0
        .request(Request::from_parts(parts, body))
        .await
    {
        Ok(r) => r,
        Err(e) => {
            return text(
                StatusCode::BAD_GATEWAY,
                &format!("app {:?} at {} is unreachable: {e}", app.name, app.uri),
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
        }
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
