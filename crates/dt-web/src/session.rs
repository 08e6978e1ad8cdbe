//! Web sessions: what a browser's cookie stands for.
//!
//! A session holds the certificates issued at web login for a key that never leaves this
//! process (the browser only holds a random cookie), the CSRF token the page must send on
//! every state-changing call, and, after device web authentication, the device the
//! certificates were augmented with. Cookies are looked up by their SHA-256, so the table
//! holds no usable cookie; CSRF tokens are compared in constant time.
//!
//! What it does not do: share sessions between auth servers (they live in the memory of
//! the server that logged the browser in; see docs/web.md).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dt_auth::device_web::IssuedWebToken;
use dt_types::UserName;
use dt_types::audit::DeviceInfo;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

/// The session cookie: `__Host-` (Secure, Path=/, no Domain: only this origin sets it).
pub const SESSION_COOKIE: &str = "__Host-devtrust_session";
/// The login form's CSRF cookie (double submit: the page echoes it in a header).
pub const LOGIN_CSRF_COOKIE: &str = "__Host-devtrust_login_csrf";
/// The header that carries the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// 32 random bytes, base64url.
pub fn random_secret() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

fn cookie_hash(cookie: &str) -> String {
    hex::encode(Sha256::digest(cookie.as_bytes()))
}

/// Constant-time comparison of a presented token with the expected one.
pub fn same_secret(expected: &str, presented: &str) -> bool {
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

/// One browser's session.
#[derive(Clone)]
pub struct Session {
    /// Public id (names the session in web tokens and logs; not the cookie).
    pub id: String,
    pub csrf: String,
    pub expires: OffsetDateTime,
    /// The session's certificates (issued at web login, augmented after device web
    /// authentication) and the identity the user CA verified in the X.509 one.
    pub identity: Arc<dt_ca::Identity>,
    pub tls_cert_der: Arc<Vec<u8>>,
    pub ssh_cert: String,
    /// The session key (OpenSSH private key text), for the browser terminal's SSH login.
    /// Never leaves this process.
    pub ssh_key_openssh: Arc<String>,
    /// The browser's address at login (audit only).
    pub login_ip: IpAddr,
    /// The device web token of this login, until the page has been shown it and the
    /// ceremony confirmed (or it expired).
    pub web_token: Option<IssuedWebToken>,
    /// Set once device web authentication is confirmed.
    pub device: Option<DeviceInfo>,
}

impl Session {
    /// The session's user: the one its certificate names.
    pub fn user(&self) -> &UserName {
        &self.identity.username
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("user", self.user())
            .field("expires", &self.expires)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// The sessions of this auth server, by cookie hash.
#[derive(Clone, Default)]
pub struct SessionStore {
    inner: Arc<Mutex<HashMap<String, Session>>>,
}

impl SessionStore {
    /// Store `session`; returns the cookie value that names it.
    pub fn insert(&self, session: Session) -> String {
        let cookie = random_secret();
        let mut map = self.lock();
        let now = OffsetDateTime::now_utc();
        map.retain(|_, s| s.expires > now);
        map.insert(cookie_hash(&cookie), session);
        cookie
    }

    /// The live session the cookie names (expired ones are dropped).
    pub fn get(&self, cookie: &str) -> Option<Session> {
        let key = cookie_hash(cookie);
        let mut map = self.lock();
        match map.get(&key) {
            Some(s) if s.expires > OffsetDateTime::now_utc() => Some(s.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Apply `f` to the session the cookie names, if it is still there.
    pub fn update(&self, cookie: &str, f: impl FnOnce(&mut Session)) -> bool {
        let mut map = self.lock();
        match map.get_mut(&cookie_hash(cookie)) {
            Some(s) => {
                f(s);
                true
            }
            None => false,
        }
    }

    pub fn remove(&self, cookie: &str) {
        self.lock().remove(&cookie_hash(cookie));
    }

    /// How many sessions are live (for tests and metrics).
    pub fn len(&self) -> usize {
        let now = OffsetDateTime::now_utc();
        self.lock().values().filter(|s| s.expires > now).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding the lock leaves plain data behind: keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `Set-Cookie` for the session: `HttpOnly; Secure; SameSite=Strict`, `Path=/` (required
/// by the `__Host-` prefix), expiring with the session.
pub fn session_cookie(value: &str, max_age_secs: i64) -> String {
    format!(
        "{SESSION_COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        max_age_secs.max(0)
    )
}

/// `Set-Cookie` that removes a cookie.
pub fn clear_cookie(name: &str) -> String {
    format!("{name}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// `Set-Cookie` for the login form's CSRF token (readable by no script: the page gets the
/// same value in a `<meta>` tag).
pub fn login_csrf_cookie(value: &str) -> String {
    format!("{LOGIN_CSRF_COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=3600")
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie_value<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_name_only() {
        let mut h = http::HeaderMap::new();
        h.append(
            http::header::COOKIE,
            "a=1; __Host-devtrust_session=abc".parse().unwrap(),
        );
        assert_eq!(cookie_value(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie_value(&h, "__Host-devtrust"), None);
        assert_eq!(cookie_value(&h, LOGIN_CSRF_COOKIE), None);
    }

    #[test]
    fn the_session_cookie_has_every_protection() {
        let c = session_cookie("v", 60);
        for part in [
            "Secure",
            "HttpOnly",
            "SameSite=Strict",
            "Path=/",
            "Max-Age=60",
        ] {
            assert!(c.contains(part), "{c} lacks {part}");
        }
        assert!(!c.contains("Domain"), "__Host- cookies carry no Domain");
    }

    #[test]
    fn empty_secrets_never_match() {
        assert!(!same_secret("", ""));
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
    }
}
