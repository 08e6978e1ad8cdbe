//! Browsers: app sessions through the web launch (steps 1 and 3 of the dance described in
//! `dt_auth::app_sessions`), and the pages a browser is shown instead of bare status codes.
//!
//! - A browser without an app session is sent to the auth service's web UI with a fresh
//!   `state` kept in a `__Host-` cookie of the app's host ([`start_launch`]).
//! - It comes back to [`CALLBACK_PATH`] with that state and a launch code; the state must
//!   match the cookie (so nobody can plant their own session in someone else's browser), and
//!   the code is exchanged at the auth service for an app session, set as a `__Host-` cookie.
//! - Every request then shows that cookie; the auth service says which certificate it stands
//!   for ([`SessionCache`] remembers the answer for [`RECHECK`]), and the access point
//!   decides on that certificate exactly as on one shown by `dtsh proxy app`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use dt_ca::Identity;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::forward::Body;

/// The app session cookie (on the app's host only).
pub const SESSION_COOKIE: &str = "__Host-devtrust_app_session";
/// The launch state cookie, between steps 1 and 3.
pub const STATE_COOKIE: &str = "__Host-devtrust_app_state";
/// Where the web UI sends the browser back with a launch code.
pub use dt_client::access_point::APP_AUTH_CALLBACK_PATH as CALLBACK_PATH;
/// App logout.
pub const LOGOUT_PATH: &str = "/__devtrust/logout";
/// How long the access point trusts the auth service's last answer about an app session by
/// default (a web logout takes effect within this; app logout and locks act at once).
pub const RECHECK: Duration = Duration::from_secs(30);
/// How long a launch may take from step 1 to step 3.
const STATE_MAX_AGE: u64 = 300;

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Does the request come from a browser navigating (so it can follow the launch)?
pub fn is_navigation(method: &http::Method, headers: &HeaderMap) -> bool {
    (method == http::Method::GET || method == http::Method::HEAD)
        && headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"))
}

fn random() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

fn set_cookie(resp: &mut Response<Body>, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn cookie_attrs(name: &str, value: &str, max_age: u64) -> String {
    format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}")
}

/// A path of this app to return to after the launch (never another origin).
fn safe_return(path: &str) -> &str {
    if path.starts_with('/') && !path.starts_with("//") && !path.starts_with("/\\") {
        path
    } else {
        "/"
    }
}

fn redirect(to: &str) -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never: std::convert::Infallible| match never {})
        .boxed()
}

/// Step 1: send the browser to the web UI's launch page for `app`, remembering the state
/// and where it was going.
pub fn start_launch(web_addr: &str, app: &str, path_and_query: &str) -> Response<Body> {
    let state = random();
    let back = URL_SAFE_NO_PAD.encode(safe_return(path_and_query));
    let app_escaped: String = app
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' | b'-' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect();
    let mut r = redirect(&format!(
        "https://{web_addr}/web/launch/{app_escaped}?state={state}"
    ));
    set_cookie(
        &mut r,
        cookie_attrs(STATE_COOKIE, &format!("{state}.{back}"), STATE_MAX_AGE),
    );
    r
}

/// What step 3 found in the browser's request.
#[derive(Debug, PartialEq, Eq)]
pub struct Callback {
    pub state: String,
    pub code: String,
    /// Where to send the browser once the session is set.
    pub back: String,
}

/// Step 3's checks that need nothing but the request: a code, and a state that matches the
/// one this browser was given in step 1.
pub fn check_callback(query: Option<&str>, headers: &HeaderMap) -> Result<Callback, String> {
    let mut state = None;
    let mut code = None;
    for (k, v) in query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
    {
        match k {
            "state" => state = Some(v),
            "code" => code = Some(v),
            _ => {}
        }
    }
    let (Some(state), Some(code)) = (state, code) else {
        return Err("this launch link lacks its state or code".into());
    };
    let Some((kept, back)) = cookie(headers, STATE_COOKIE).and_then(|c| c.split_once('.')) else {
        return Err(
            "this browser did not start this launch (no launch cookie): a launch link only works in the browser that opened the app"
                .into(),
        );
    };
    if state.is_empty() || !bool::from(kept.as_bytes().ct_eq(state.as_bytes())) {
        return Err(
            "this launch link was made for another browser or an earlier launch (the state does not match)"
                .into(),
        );
    }
    let back = URL_SAFE_NO_PAD
        .decode(back)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_else(|| "/".into());
    Ok(Callback {
        state: state.to_string(),
        code: code.to_string(),
        back: safe_return(&back).to_string(),
    })
}

/// Step 3's answer: the app session cookie set, the launch cookie cleared, back to the app.
pub fn finish_launch(back: &str, session_id: &str, secret: &str, max_age: u64) -> Response<Body> {
    let mut r = redirect(back);
    set_cookie(
        &mut r,
        cookie_attrs(SESSION_COOKIE, &format!("{session_id}.{secret}"), max_age),
    );
    set_cookie(&mut r, cookie_attrs(STATE_COOKIE, "", 0));
    r
}

/// The answer to an app logout (and to a session the auth service no longer knows).
pub fn clear_session(resp: &mut Response<Body>) {
    set_cookie(resp, cookie_attrs(SESSION_COOKIE, "", 0));
}

/// `(id, secret)` of an app session cookie.
pub fn split_session(value: &str) -> Option<(&str, &str)> {
    let (id, secret) = value.split_once('.')?;
    (!id.is_empty() && !secret.is_empty() && id.len() <= 64 && secret.len() <= 128)
        .then_some((id, secret))
}

/// What the auth service last said about an app session.
#[derive(Clone)]
pub struct Known<T = Arc<Identity>> {
    pub identity: T,
    pub cert_der: Arc<Vec<u8>>,
    secret: [u8; 32],
    checked: Instant,
}

/// App sessions the auth service vouched for recently, by (app, id).
pub struct SessionCache<T = Arc<Identity>> {
    known: Mutex<HashMap<(String, String), Known<T>>>,
    recheck: Duration,
}

impl<T> Default for SessionCache<T> {
    fn default() -> Self {
        SessionCache::new(RECHECK)
    }
}

/// How many app sessions the cache holds before it forgets stale ones.
const CACHE_MAX: usize = 10_000;

impl<T> SessionCache<T> {
    /// A cache that asks the auth service again after `recheck`.
    pub fn new(recheck: Duration) -> Self {
        SessionCache {
            known: Mutex::new(HashMap::new()),
            recheck,
        }
    }
}

impl<T: Clone> SessionCache<T> {
    /// A session vouched for within the recheck interval, if `secret` is its secret.
    pub fn get(&self, app: &str, id: &str, secret: &str) -> Option<Known<T>> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let k = known.get(&(app.to_string(), id.to_string()))?;
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        (k.checked.elapsed() < self.recheck && bool::from(k.secret.ct_eq(&digest)))
            .then(|| k.clone())
    }

    pub fn put(
        &self,
        app: &str,
        id: &str,
        secret: &str,
        identity: T,
        cert_der: Arc<Vec<u8>>,
    ) -> Known<T> {
        let k = Known {
            identity,
            cert_der,
            secret: Sha256::digest(secret.as_bytes()).into(),
            checked: Instant::now(),
        };
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= CACHE_MAX {
            let recheck = self.recheck;
            known.retain(|_, k| k.checked.elapsed() < recheck);
        }
        known.insert((app.to_string(), id.to_string()), k.clone());
        k
    }

    pub fn forget(&self, app: &str, id: &str) {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(app.to_string(), id.to_string()));
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page for a browser: what happened and what to do. No script, no outside resources.
pub fn page(status: StatusCode, title: &str, why: &str, todo: &[String]) -> Response<Body> {
    let steps: String = todo
        .iter()
        .map(|t| format!("<li>{}</li>", escape(t)))
        .collect();
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>devtrust · {title}</title><style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40rem;\
margin:4rem auto;padding:0 1rem;color:#1b1f24}}h1{{font-size:1.4rem}}.why{{padding:.8rem 1rem;\
border-left:4px solid #c62828;background:#fdecea}}code{{background:#f0f2f4;padding:0 .2rem}}</style>\
</head><body data-devtrust-page=\"{status}\"><h1>{title}</h1><p class=\"why\" id=\"why\">{why}</p>\
<ol id=\"todo\">{steps}</ol></body></html>",
        title = escape(title),
        why = escape(why),
        status = status.as_u16(),
    );
    let mut r = Response::new(
        Full::new(Bytes::from(html))
            .map_err(|never: std::convert::Infallible| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn headers(cookie: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(cookie).unwrap());
        h
    }

    fn launch_cookie(resp: &Response<Body>) -> String {
        let set = resp
            .headers()
            .get(header::SET_COOKIE)
            .unwrap()
            .to_str()
            .unwrap();
        set.split(';').next().unwrap().to_string()
    }

    #[test]
    fn a_launch_comes_back_only_to_the_browser_that_started_it() {
        let r = start_launch("auth.example.com:3080", "wiki", "/docs?page=2");
        let loc = r.headers().get(header::LOCATION).unwrap().to_str().unwrap();
        assert!(loc.starts_with("https://auth.example.com:3080/web/launch/wiki?state="));
        let state = loc.split("state=").nth(1).unwrap();
        let jar = launch_cookie(&r);
        assert!(jar.starts_with(STATE_COOKIE));
        let q = format!("state={state}&code=CODE");
        let ok = check_callback(Some(&q), &headers(&jar)).unwrap();
        assert_eq!(ok.code, "CODE");
        assert_eq!(ok.back, "/docs?page=2");
        // Another browser (no launch cookie), another launch's state, a missing code.
        assert!(check_callback(Some(&q), &HeaderMap::new()).is_err());
        let other = start_launch("a:1", "wiki", "/");
        assert!(check_callback(Some(&q), &headers(&launch_cookie(&other))).is_err());
        assert!(check_callback(Some(&format!("state={state}")), &headers(&jar)).is_err());
        assert!(check_callback(Some("state=&code=x"), &headers(&jar)).is_err());
    }

    #[test]
    fn a_launch_never_returns_to_another_origin() {
        assert_eq!(safe_return("//evil.example/x"), "/");
        assert_eq!(safe_return("/\\evil.example"), "/");
        assert_eq!(safe_return("https://evil.example/"), "/");
        assert_eq!(safe_return("/ok?x=1"), "/ok?x=1");
        let r = start_launch("a:1", "we/ird app", "//evil");
        let loc = r.headers().get(header::LOCATION).unwrap().to_str().unwrap();
        assert!(loc.starts_with("https://a:1/web/launch/we%2Fird%20app?state="));
        let state = loc.split("state=").nth(1).unwrap();
        let q = format!("state={state}&code=c");
        let back = check_callback(Some(&q), &headers(&launch_cookie(&r))).unwrap();
        assert_eq!(back.back, "/");
    }

    #[test]
    fn session_cookies_and_cache() {
        assert_eq!(split_session("id.secret"), Some(("id", "secret")));
        assert_eq!(split_session("nodot"), None);
        assert_eq!(split_session(".secret"), None);
        assert_eq!(cookie(&headers("a=1; b=2"), "b"), Some("2"));
        assert_eq!(cookie(&headers("a=1; b=2"), "c"), None);
        let c = SessionCache::<&str>::default();
        c.put("wiki", "s1", "secret", "alice", Arc::new(vec![1]));
        assert!(c.get("wiki", "s1", "secret").is_some());
        assert!(c.get("wiki", "s1", "forged").is_none());
        assert!(c.get("grafana", "s1", "secret").is_none());
        c.forget("wiki", "s1");
        assert!(c.get("wiki", "s1", "secret").is_none());
    }

    #[test]
    fn pages_escape_what_they_show() {
        let r = page(
            StatusCode::FORBIDDEN,
            "Access denied",
            "<script>alert(1)</script>",
            &["enroll & retry".into()],
        );
        let body = futures_lite_body(r);
        assert!(body.contains("&lt;script&gt;"));
        assert!(body.contains("enroll &amp; retry"));
        assert!(!body.contains("<script>"));
    }

    fn futures_lite_body(r: Response<Body>) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = rt.block_on(r.into_body().collect()).unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }
}
