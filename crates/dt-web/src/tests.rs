//! The web API without sockets (axum's `oneshot`), against a real auth server on SQLite.

use std::net::SocketAddr;

use axum::body::Body;
use http::{Request, StatusCode};
use tower::ServiceExt;

use super::*;

const PASSWORD: &str = "correct horse battery staple";

async fn server(dir: &std::path::Path) -> Arc<AuthServer> {
    let config = dt_auth::config::Config {
        data_dir: dir.join("data"),
        cluster_name: Some("test".into()),
        ..Default::default()
    };
    let srv = AuthServer::bootstrap(config).await.unwrap();
    let user: dt_types::User = dt_types::resource::Resource::new(
        "alice".to_string(),
        dt_types::resource::UserSpec {
            roles: vec!["access".into()],
            ..Default::default()
        },
    );
    srv.backend
        .put(
            &dt_auth::keys::resource(dt_types::Kind::User, "alice"),
            serde_json::to_vec(&user).unwrap(),
            None,
        )
        .await
        .unwrap();
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(&[7u8; 16]).unwrap();
    let hash = argon2::Argon2::default()
        .hash_password(PASSWORD.as_bytes(), &salt)
        .unwrap()
        .to_string();
    srv.backend
        .put(&dt_auth::keys::password("alice"), hash.into_bytes(), None)
        .await
        .unwrap();
    srv
}

struct Ui {
    app: Router,
    sessions: SessionStore,
    srv: Arc<AuthServer>,
}

fn ui(srv: &Arc<AuthServer>) -> Ui {
    let sessions = SessionStore::default();
    Ui {
        app: router_with_sessions(srv.clone(), WebConfig::default(), sessions.clone()),
        sessions,
        srv: srv.clone(),
    }
}

fn peer() -> Peer {
    Peer {
        addr: SocketAddr::from(([127, 0, 0, 1], 40000)),
        identity: None,
        cert_der: None,
        user_cert: None,
        node: None,
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: serde_json::Value,
    text: String,
}

impl Ui {
    async fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1:3080");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .extension(peer())
            .body(Body::from(body.to_string()))
            .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&bytes).to_string();
        Reply {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
            text,
        }
    }

    /// Logs alice in; returns (session cookie header, csrf token).
    async fn login(&self) -> (String, String) {
        let page = self.call("GET", "/web/login", &[], "").await;
        let set = page
            .headers
            .get(header::SET_COOKIE)
            .unwrap()
            .to_str()
            .unwrap();
        let token = set
            .split(';')
            .next()
            .unwrap()
            .split_once('=')
            .unwrap()
            .1
            .to_string();
        assert!(
            page.text.contains(&format!("content=\"{token}\"")),
            "the page carries the login token"
        );
        let cookie = format!("{LOGIN_CSRF_COOKIE}={token}");
        let body = format!(r#"{{"username":"alice","password":"{PASSWORD}"}}"#);
        let r = self
            .call(
                "POST",
                "/web/api/login",
                &[("cookie", &cookie), (CSRF_HEADER, &token)],
                &body,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let set: Vec<&str> = r
            .headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        let session = set.iter().find(|c| c.starts_with(SESSION_COOKIE)).unwrap();
        for part in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(session.contains(part), "{session} lacks {part}");
        }
        let cookie = session.split(';').next().unwrap().to_string();
        let me = self
            .call("GET", "/web/api/me", &[("cookie", &cookie)], "")
            .await;
        assert_eq!(me.status, StatusCode::OK, "{}", me.text);
        (cookie, me.body["csrf_token"].as_str().unwrap().to_string())
    }

    async fn csrf_refusals(&self) -> usize {
        self.srv
            .audit
            .search(&dt_auth::audit::EventFilter::default(), None, 1000)
            .await
            .unwrap()
            .0
            .iter()
            .filter(|e| {
                e.event == EventType::AccessDenied
                    && e.message.as_deref().is_some_and(|m| m.contains("CSRF"))
            })
            .count()
    }
}

#[tokio::test]
async fn pages_carry_a_strict_csp_and_no_inline_script() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path()).await;
    let ui = ui(&srv);
    for path in ["/web/login", "/web/assets/app.js"] {
        let r = ui.call("GET", path, &[], "").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers[header::CONTENT_SECURITY_POLICY], CSP);
        assert_eq!(r.headers[header::X_FRAME_OPTIONS], "DENY");
    }
    let signed_in = [
        &pages::INDEX,
        &pages::DEVICES,
        &pages::AUDIT,
        &pages::TERMINAL,
        &pages::DESKTOP,
    ]
    .map(|p| p.render());
    for page in &signed_in {
        assert!(!page.contains("{{"), "every placeholder filled");
        assert!(page.starts_with("<!doctype html>"), "standards mode");
    }
    for page in [pages::LOGIN_HTML, pages::CONFIRM_HTML, pages::LAUNCH_HTML]
        .into_iter()
        .chain(signed_in.iter().map(String::as_str))
    {
        assert!(!page.contains("<script>"), "no inline script");
        assert!(!page.contains(" style="), "no inline style");
        assert!(!page.contains("onclick"), "no inline handlers");
    }
    assert!(!CSP.contains("unsafe"), "{CSP}");
    // Without a session the app redirects to the login page, and the API says why.
    let r = ui.call("GET", "/web/", &[], "").await;
    assert!(r.status.is_redirection());
    let r = ui.call("GET", "/web/api/me", &[], "").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body["error"].as_str().unwrap().contains("/web/login"));
}

#[tokio::test]
async fn login_needs_its_csrf_token_and_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path()).await;
    let ui = ui(&srv);
    let body = format!(r#"{{"username":"alice","password":"{PASSWORD}"}}"#);
    // No token at all, and a token that is not the cookie's.
    let r = ui.call("POST", "/web/api/login", &[], &body).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body["error"].as_str().unwrap().contains("CSRF"));
    let r = ui
        .call(
            "POST",
            "/web/api/login",
            &[
                ("cookie", &format!("{LOGIN_CSRF_COOKIE}=a")),
                (CSRF_HEADER, "b"),
            ],
            &body,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(ui.csrf_refusals().await, 2, "each refusal is audited");
    assert!(ui.sessions.is_empty());
    // A wrong password is the login's usual refusal.
    let cookie = format!("{LOGIN_CSRF_COOKIE}=t");
    let r = ui
        .call(
            "POST",
            "/web/api/login",
            &[("cookie", &cookie), (CSRF_HEADER, "t")],
            r#"{"username":"alice","password":"wrong"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    assert!(ui.sessions.is_empty());
    let (_cookie, _) = ui.login().await;
    assert_eq!(ui.sessions.len(), 1);
}

#[tokio::test]
async fn state_changing_calls_without_the_session_csrf_token_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path()).await;
    let ui = ui(&srv);
    let (cookie, csrf) = ui.login().await;
    let before = ui.csrf_refusals().await;
    for (path, body) in [
        ("/web/api/logout", ""),
        ("/web/api/device/confirm", r#"{"id":"x","token":"y"}"#),
    ] {
        for headers in [
            vec![("cookie", cookie.as_str())],
            vec![("cookie", cookie.as_str()), (CSRF_HEADER, "not-the-token")],
        ] {
            let r = ui.call("POST", path, &headers, body).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {}", r.text);
            assert!(
                r.body["error"].as_str().unwrap().contains("CSRF"),
                "{}",
                r.text
            );
        }
    }
    assert_eq!(ui.csrf_refusals().await, before + 4);
    assert_eq!(ui.sessions.len(), 1, "the refused logout did not log out");
    // GETs change nothing and need no token; the session still works.
    let me = ui
        .call("GET", "/web/api/me", &[("cookie", &cookie)], "")
        .await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["shield"], "none");
    assert_eq!(
        me.body["device_web_auth_url"],
        serde_json::Value::Null,
        "alice owns no device"
    );
    // With the token, logout ends the session and clears the cookie.
    let r = ui
        .call(
            "POST",
            "/web/api/logout",
            &[("cookie", &cookie), (CSRF_HEADER, &csrf)],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let me = ui
        .call("GET", "/web/api/me", &[("cookie", &cookie)], "")
        .await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_lock_on_the_user_ends_the_web_session() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path()).await;
    let ui = ui(&srv);
    let (cookie, _) = ui.login().await;
    let lock: dt_types::Lock = dt_types::resource::Resource::new(
        "lock-alice".to_string(),
        dt_types::resource::LockSpec {
            target: dt_types::resource::LockTarget {
                user: Some("alice".into()),
                ..Default::default()
            },
            ..Default::default()
        },
    );
    let key = dt_auth::keys::resource(dt_types::Kind::Lock, "lock-alice");
    let bytes = serde_json::to_vec(&lock).unwrap();
    let rev = srv.backend.put(&key, bytes.clone(), None).await.unwrap();
    srv.cache.apply(&key, rev, Some(&bytes));
    let me = ui
        .call("GET", "/web/api/me", &[("cookie", &cookie)], "")
        .await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED, "{}", me.text);
    assert!(
        me.body["error"].as_str().unwrap().contains("lock"),
        "{}",
        me.text
    );
    assert!(ui.sessions.is_empty(), "the session ended");
}

#[tokio::test]
async fn the_shield_is_yellow_when_a_role_requires_a_trusted_device() {
    assert_eq!(shield(false, true), "required");
    assert_eq!(shield(true, true), "trusted");
    assert_eq!(shield(false, false), "none");
    let t = dt_auth::device_web::IssuedWebToken {
        id: "i".into(),
        token: "t".into(),
    };
    assert_eq!(
        handoff_url("a b", "127.0.0.1:3080", &t),
        "devtrust://a%20b@127.0.0.1:3080/authenticate_web_device?id=i&token=t"
    );
}
