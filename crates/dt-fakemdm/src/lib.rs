//! Fake Jamf Pro and Microsoft Graph (Intune) servers for devtrust's tests and benches
//! (dev-only, never shipped).
//!
//! No MDM can run on the machines the tests run on, so this one speaks the shapes the sync
//! relies on, over TLS (its own CA, [`FakeMdm::ca_pem`]), and nothing more:
//!
//! - Jamf Pro: `POST /api/oauth/token` (client credentials, form-encoded), `POST
//!   /api/v1/auth/token` (basic authentication; answers `token` + `expires`), `GET
//!   /api/v1/computers-inventory` with `section`, `page`, `page-size`, `sort=id:asc` and
//!   `filter` (the RSQL subset in use: `;` and `,`, parentheses, `==`, `!=`, `>=`, `<=`,
//!   `>`, `<` on `general.remoteManagement.managed`, `general.reportDate`, `general.name`,
//!   `hardware.serialNumber`, `operatingSystem.name`), answering `totalCount` and `results`;
//! - Microsoft Graph: `POST /login/{tenant}/oauth2/v2.0/token` (client credentials) and `GET
//!   /graph/v1.0/deviceManagement/managedDevices` with `$top`, `$filter=lastSyncDateTime ge
//!   T` and `@odata.nextLink` (`$skiptoken`);
//! - 401 for a bad or expired token and for bad credentials, and knobs ([`Knobs`]) the tests
//!   set: answers to inject (429 with `Retry-After`, 5xx), a malformed page, a page that
//!   never ends, tokens that stop working after N pages (once, or for good).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A Jamf Pro computer.
#[derive(Clone, Debug)]
pub struct Computer {
    pub id: u64,
    pub name: String,
    pub serial: String,
    /// `macOS` normally.
    pub os_name: String,
    pub os_version: String,
    pub os_build: String,
    pub model_identifier: String,
    pub username: String,
    pub local_users: Vec<String>,
    pub managed: bool,
    pub report_date: OffsetDateTime,
}

impl Computer {
    pub fn mac(id: u64, serial: &str, user: &str) -> Computer {
        Computer {
            id,
            name: format!("mac-{id}"),
            serial: serial.into(),
            os_name: "macOS".into(),
            os_version: "14.4".into(),
            os_build: "23E214".into(),
            model_identifier: "MacBookPro18,1".into(),
            username: user.into(),
            local_users: if user.is_empty() {
                vec![]
            } else {
                vec![user.into()]
            },
            managed: true,
            report_date: OffsetDateTime::now_utc(),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "id": self.id.to_string(),
            "udid": format!("UDID-{}", self.id),
            "general": {
                "name": self.name,
                "reportDate": self.report_date.format(&Rfc3339).unwrap_or_default(),
                "remoteManagement": {"managed": self.managed},
            },
            "hardware": {
                "serialNumber": self.serial,
                "modelIdentifier": self.model_identifier,
                "model": "MacBook Pro",
            },
            "operatingSystem": {"name": self.os_name, "version": self.os_version, "build": self.os_build},
            "userAndLocation": {"username": self.username, "email": format!("{}@example.com", self.username)},
            "localUserAccounts": self.local_users.iter().map(|u| json!({"username": u, "uid": "501"})).collect::<Vec<_>>(),
        })
    }
}

/// An Intune managed device.
#[derive(Clone, Debug)]
pub struct ManagedDevice {
    pub id: String,
    pub name: String,
    pub serial: String,
    /// `Windows`, `macOS`, `iOS`, `Android`, `Linux`.
    pub os: String,
    pub os_version: String,
    pub model: String,
    pub upn: String,
    pub last_sync: OffsetDateTime,
}

impl ManagedDevice {
    pub fn windows(id: &str, serial: &str, upn: &str) -> ManagedDevice {
        ManagedDevice {
            id: id.into(),
            name: format!("pc-{id}"),
            serial: serial.into(),
            os: "Windows".into(),
            os_version: "10.0.22631.3447".into(),
            model: "Latitude 7440".into(),
            upn: upn.into(),
            last_sync: OffsetDateTime::now_utc(),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "deviceName": self.name,
            "operatingSystem": self.os,
            "osVersion": self.os_version,
            "serialNumber": self.serial,
            "model": self.model,
            "userPrincipalName": self.upn,
            "lastSyncDateTime": self.last_sync.format(&Rfc3339).unwrap_or_default(),
        })
    }
}

/// What the tests set.
#[derive(Clone, Debug)]
pub struct Knobs {
    pub jamf_client_id: String,
    pub jamf_client_secret: String,
    pub jamf_username: String,
    pub jamf_password: String,
    pub intune_tenant: String,
    pub intune_client_id: String,
    pub intune_client_secret: String,
    /// Lifetime of issued tokens.
    pub token_ttl: Duration,
    /// Answers to give inventory GETs before serving them: (status, Retry-After seconds).
    pub inject: VecDeque<(u16, Option<u64>)>,
    /// The inventory page (0-based count of pages served) answered with broken JSON.
    pub malformed_page: Option<u32>,
    /// Jamf: claim a huge totalCount and keep answering full pages; Graph: always a nextLink.
    pub never_ending: bool,
    /// After this many inventory pages, every token issued so far stops working (401) once.
    pub expire_tokens_after_pages: Option<u32>,
    /// After this many inventory pages, tokens stop working and the credentials are refused.
    pub revoke_credentials_after_pages: Option<u32>,
    /// Answer 403 to inventory GETs (an API client without the privilege).
    pub forbid_inventory: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            jamf_client_id: "jamf-client".into(),
            jamf_client_secret: "jamf-secret".into(),
            jamf_username: "jamf-user".into(),
            jamf_password: "jamf-password".into(),
            intune_tenant: "contoso.onmicrosoft.com".into(),
            intune_client_id: "intune-client".into(),
            intune_client_secret: "intune-secret".into(),
            token_ttl: Duration::from_secs(1200),
            inject: VecDeque::new(),
            malformed_page: None,
            never_ending: false,
            expire_tokens_after_pages: None,
            revoke_credentials_after_pages: None,
            forbid_inventory: false,
        }
    }
}

/// Counters the tests read.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub tokens_issued: u32,
    pub token_refusals: u32,
    pub inventory_pages: u32,
    pub unauthorized: u32,
    /// Query strings of inventory GETs, in order.
    pub queries: Vec<String>,
}

#[derive(Default)]
struct State {
    computers: Vec<Computer>,
    devices: Vec<ManagedDevice>,
    knobs: Knobs,
    stats: Stats,
    tokens: HashMap<String, Instant>,
    revoked: bool,
}

pub struct FakeMdm {
    pub addr: SocketAddr,
    ca_pem: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeMdm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(s: &Mutex<State>) -> MutexGuard<'_, State> {
    match s.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl FakeMdm {
    /// Serve on `127.0.0.1:0` (needs a tokio runtime).
    #[allow(clippy::expect_used)] // INVARIANT: test support; a failure here is a broken test setup.
    pub async fn start() -> FakeMdm {
        let now = OffsetDateTime::now_utc() - time::Duration::hours(1);
        let ca = dt_ca::CertAuthority::generate("fakemdm", dt_ca::CaKind::Host, now).expect("CA");
        let key = dt_ca::ClientKey::generate().expect("key");
        let cert = ca
            .issue_tls_server_cert(
                &key.spki_der(),
                &["localhost".into()],
                &["127.0.0.1".parse().expect("ip")],
                now + time::Duration::days(2),
            )
            .expect("server cert");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("tls")
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert)],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec())),
            )
            .expect("server config");
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State::default()));
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, s) = (acceptor.clone(), s.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(handle(s, addr, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        FakeMdm {
            addr,
            ca_pem: ca.cert_pem(),
            state,
            task,
        }
    }

    /// The CA certificate (PEM) the server's certificate chains to: the sync's `ca_file`.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
    /// The Jamf `api_endpoint`.
    pub fn jamf_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }
    /// The Intune `graph_endpoint`.
    pub fn graph_url(&self) -> String {
        format!("https://127.0.0.1:{}/graph", self.addr.port())
    }
    /// The Intune `login_endpoint`.
    pub fn login_url(&self) -> String {
        format!("https://127.0.0.1:{}/login", self.addr.port())
    }

    pub fn set_computers(&self, c: Vec<Computer>) {
        let mut c = c;
        c.sort_by_key(|c| c.id);
        lock(&self.state).computers = c;
    }
    /// Change the computers in place (bumps nothing: set `report_date` yourself).
    pub fn edit_computers(&self, f: impl FnOnce(&mut Vec<Computer>)) {
        let mut st = lock(&self.state);
        f(&mut st.computers);
        st.computers.sort_by_key(|c| c.id);
    }
    pub fn set_devices(&self, d: Vec<ManagedDevice>) {
        lock(&self.state).devices = d;
    }
    pub fn edit_devices(&self, f: impl FnOnce(&mut Vec<ManagedDevice>)) {
        f(&mut lock(&self.state).devices);
    }
    pub fn knobs(&self, f: impl FnOnce(&mut Knobs)) {
        f(&mut lock(&self.state).knobs);
    }
    pub fn stats(&self) -> Stats {
        lock(&self.state).stats.clone()
    }
    /// Forget the revocation and expiries of earlier knobs.
    pub fn reset(&self) {
        let mut st = lock(&self.state);
        st.revoked = false;
        st.knobs = Knobs::default();
        st.stats = Stats::default();
    }
}

type Body = Full<Bytes>;

fn resp(status: u16, v: Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn query_pairs(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn issue_token(st: &mut State) -> String {
    let t = format!(
        "tok-{}-{}",
        st.stats.tokens_issued,
        OffsetDateTime::now_utc().unix_timestamp_nanos()
    );
    st.tokens
        .insert(t.clone(), Instant::now() + st.knobs.token_ttl);
    st.stats.tokens_issued += 1;
    t
}

async fn handle(s: Arc<Mutex<State>>, addr: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let auth = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return resp(400, json!({"error": "bad body"})),
    };
    let form: HashMap<String, String> = query_pairs(&String::from_utf8_lossy(&body))
        .into_iter()
        .collect();
    let mut st = lock(&s);
    let ttl = st.knobs.token_ttl.as_secs();
    // Token endpoints.
    if method == hyper::Method::POST && path == "/api/oauth/token" {
        let ok = !st.revoked
            && form.get("grant_type").map(String::as_str) == Some("client_credentials")
            && form.get("client_id") == Some(&st.knobs.jamf_client_id)
            && form.get("client_secret") == Some(&st.knobs.jamf_client_secret);
        if !ok {
            st.stats.token_refusals += 1;
            return resp(401, json!({"error": "invalid_client"}));
        }
        let t = issue_token(&mut st);
        return resp(
            200,
            json!({"access_token": t, "scope": "api-role:1", "token_type": "Bearer", "expires_in": ttl}),
        );
    }
    if method == hyper::Method::POST && path == "/api/v1/auth/token" {
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                st.knobs.jamf_username, st.knobs.jamf_password
            ))
        );
        if st.revoked || auth != want {
            st.stats.token_refusals += 1;
            return resp(401, json!({"httpStatus": 401, "errors": []}));
        }
        let t = issue_token(&mut st);
        let expires = OffsetDateTime::now_utc() + st.knobs.token_ttl;
        return resp(
            200,
            json!({"token": t, "expires": expires.format(&Rfc3339).unwrap_or_default()}),
        );
    }
    if method == hyper::Method::POST && path.starts_with("/login/") {
        let want_path = format!("/login/{}/oauth2/v2.0/token", st.knobs.intune_tenant);
        let ok = !st.revoked
            && path == want_path
            && form.get("grant_type").map(String::as_str) == Some("client_credentials")
            && form.get("client_id") == Some(&st.knobs.intune_client_id)
            && form.get("client_secret") == Some(&st.knobs.intune_client_secret)
            && form.get("scope").is_some_and(|s| s.ends_with("/.default"));
        if !ok {
            st.stats.token_refusals += 1;
            return resp(
                401,
                json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}),
            );
        }
        let t = issue_token(&mut st);
        return resp(
            200,
            json!({"token_type": "Bearer", "expires_in": ttl, "ext_expires_in": ttl, "access_token": t}),
        );
    }
    let inventory = method == hyper::Method::GET
        && (path == "/api/v1/computers-inventory"
            || path == "/graph/v1.0/deviceManagement/managedDevices");
    if !inventory {
        return resp(404, json!({"error": "not found"}));
    }
    // Bearer token.
    let token = auth.strip_prefix("Bearer ").unwrap_or("");
    let valid = !st.revoked
        && st
            .tokens
            .get(token)
            .is_some_and(|exp| Instant::now() < *exp);
    if !valid {
        st.stats.unauthorized += 1;
        return resp(
            401,
            json!({"httpStatus": 401, "errors": [{"code": "INVALID_TOKEN"}]}),
        );
    }
    if st.knobs.forbid_inventory {
        return resp(
            403,
            json!({"httpStatus": 403, "errors": [{"code": "FORBIDDEN"}]}),
        );
    }
    if let Some((status, retry)) = st.knobs.inject.pop_front() {
        let mut r = resp(status, json!({"error": "injected"}));
        if let Some(secs) = retry
            && let Ok(v) = hyper::header::HeaderValue::from_str(&secs.to_string())
        {
            r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
        }
        return r;
    }
    let served = st.stats.inventory_pages;
    if st.knobs.expire_tokens_after_pages == Some(served) {
        st.knobs.expire_tokens_after_pages = None;
        st.tokens.clear();
        st.stats.unauthorized += 1;
        return resp(
            401,
            json!({"httpStatus": 401, "errors": [{"code": "INVALID_TOKEN"}]}),
        );
    }
    if st.knobs.revoke_credentials_after_pages == Some(served) {
        st.revoked = true;
        st.tokens.clear();
        st.stats.unauthorized += 1;
        return resp(
            401,
            json!({"httpStatus": 401, "errors": [{"code": "INVALID_TOKEN"}]}),
        );
    }
    st.stats.inventory_pages += 1;
    st.stats.queries.push(query.clone());
    if st.knobs.malformed_page == Some(served) {
        let mut r = resp(200, json!({}));
        *r.body_mut() = Full::new(Bytes::from_static(
            b"{\"totalCount\": 3, \"results\": [{\"id\": ",
        ));
        return r;
    }
    if path == "/api/v1/computers-inventory" {
        jamf_page(&st, &query)
    } else {
        graph_page(&st, &query, addr)
    }
}

fn jamf_page(st: &State, query: &str) -> Response<Body> {
    let q = query_pairs(query);
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let page: usize = get("page").and_then(|p| p.parse().ok()).unwrap_or(0);
    let size: usize = get("page-size")
        .and_then(|p| p.parse().ok())
        .unwrap_or(100)
        .clamp(1, 2000);
    let filter = match get("filter").map(parse_rsql).transpose() {
        Ok(f) => f,
        Err(e) => {
            return resp(
                400,
                json!({"httpStatus": 400, "errors": [{"code": "INVALID_RSQL_FILTER", "description": e}]}),
            );
        }
    };
    let matching: Vec<&Computer> = st
        .computers
        .iter()
        .filter(|c| filter.as_ref().is_none_or(|f| f.matches(c)))
        .collect();
    if st.knobs.never_ending {
        // Full pages forever, with a total that never arrives.
        let filler: Vec<Value> = (0..size)
            .map(|i| {
                Computer::mac(
                    (page * size + i) as u64 + 1_000_000,
                    &format!("NE{page}-{i}"),
                    "",
                )
                .to_json()
            })
            .collect();
        return resp(
            200,
            json!({"totalCount": 1_000_000_000u64, "results": filler}),
        );
    }
    let results: Vec<Value> = matching
        .iter()
        .skip(page * size)
        .take(size)
        .map(|c| c.to_json())
        .collect();
    resp(
        200,
        json!({"totalCount": matching.len(), "results": results}),
    )
}

fn graph_page(st: &State, query: &str, addr: SocketAddr) -> Response<Body> {
    let q = query_pairs(query);
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let top: usize = get("$top")
        .and_then(|p| p.parse().ok())
        .unwrap_or(100)
        .clamp(1, 1000);
    let skip: usize = get("$skiptoken").and_then(|p| p.parse().ok()).unwrap_or(0);
    let since = match get("$filter") {
        None => None,
        Some(f) => match f
            .strip_prefix("lastSyncDateTime ge ")
            .and_then(|t| OffsetDateTime::parse(t.trim(), &Rfc3339).ok())
        {
            Some(t) => Some(t),
            None => {
                return resp(
                    400,
                    json!({"error": {"code": "BadRequest", "message": format!("unsupported $filter {f:?}")}}),
                );
            }
        },
    };
    let matching: Vec<&ManagedDevice> = st
        .devices
        .iter()
        .filter(|d| since.is_none_or(|t| d.last_sync >= t))
        .collect();
    let value: Vec<Value> = matching
        .iter()
        .skip(skip)
        .take(top)
        .map(|d| d.to_json())
        .collect();
    let mut out = json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#deviceManagement/managedDevices", "value": value});
    let more = skip + top < matching.len() || st.knobs.never_ending;
    if more {
        let mut next: Vec<(String, String)> =
            q.into_iter().filter(|(k, _)| k != "$skiptoken").collect();
        next.push(("$skiptoken".into(), (skip + top).to_string()));
        let qs = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(next)
            .finish();
        out["@odata.nextLink"] = json!(format!(
            "https://127.0.0.1:{}/graph/v1.0/deviceManagement/managedDevices?{qs}",
            addr.port()
        ));
    }
    resp(200, out)
}

// ---- the RSQL subset ----

/// `;` (and) of terms; a term is a comparison or a parenthesized `,` (or) of comparisons.
#[derive(Debug)]
struct Rsql(Vec<Vec<Cmp>>);

#[derive(Debug)]
struct Cmp {
    field: String,
    op: String,
    value: String,
}

fn parse_rsql(s: &str) -> Result<Rsql, String> {
    let mut terms = Vec::new();
    for part in split_top(s, ';') {
        let part = part.trim();
        let inner = part
            .strip_prefix('(')
            .and_then(|p| p.strip_suffix(')'))
            .unwrap_or(part);
        let mut ors = Vec::new();
        for c in split_top(inner, ',') {
            ors.push(parse_cmp(c.trim())?);
        }
        terms.push(ors);
    }
    Ok(Rsql(terms))
}

fn split_top(s: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut cur) = (0i32, false, String::new());
    for ch in s.chars() {
        match ch {
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            c if c == sep && depth == 0 && !quoted => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    out.push(cur);
    out
}

fn parse_cmp(s: &str) -> Result<Cmp, String> {
    for op in [
        "=ge=", "=le=", "=gt=", "=lt=", "==", "!=", ">=", "<=", ">", "<",
    ] {
        if let Some((f, v)) = s.split_once(op) {
            let field = f.trim().to_string();
            if !matches!(
                field.as_str(),
                "general.remoteManagement.managed"
                    | "general.reportDate"
                    | "general.name"
                    | "hardware.serialNumber"
                    | "operatingSystem.name"
            ) {
                return Err(format!("field {field:?} cannot be filtered on"));
            }
            let op = match op {
                "=ge=" => ">=",
                "=le=" => "<=",
                "=gt=" => ">",
                "=lt=" => "<",
                o => o,
            };
            return Ok(Cmp {
                field,
                op: op.into(),
                value: v.trim().trim_matches('"').to_string(),
            });
        }
    }
    Err(format!("cannot parse {s:?}"))
}

impl Rsql {
    fn matches(&self, c: &Computer) -> bool {
        self.0
            .iter()
            .all(|ors| ors.iter().any(|cmp| cmp.matches(c)))
    }
}

impl Cmp {
    fn matches(&self, c: &Computer) -> bool {
        use std::cmp::Ordering;
        let ord = match self.field.as_str() {
            "general.reportDate" => match OffsetDateTime::parse(&self.value, &Rfc3339) {
                Ok(t) => c.report_date.cmp(&t),
                Err(_) => return false,
            },
            "general.remoteManagement.managed" => {
                c.managed.to_string().as_str().cmp(self.value.as_str())
            }
            "general.name" => c.name.as_str().cmp(&self.value),
            "hardware.serialNumber" => c.serial.as_str().cmp(&self.value),
            _ => c.os_name.as_str().cmp(&self.value),
        };
        match self.op.as_str() {
            "==" => ord == Ordering::Equal,
            "!=" => ord != Ordering::Equal,
            ">=" => ord != Ordering::Less,
            "<=" => ord != Ordering::Greater,
            ">" => ord == Ordering::Greater,
            _ => ord == Ordering::Less,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsql_subset() {
        let mut c = Computer::mac(1, "S1", "alice");
        let f = parse_rsql("general.remoteManagement.managed==true").unwrap();
        assert!(f.matches(&c));
        c.managed = false;
        assert!(!f.matches(&c));
        let f = parse_rsql("(general.remoteManagement.managed==true,hardware.serialNumber==S1);general.reportDate>=\"2000-01-01T00:00:00Z\"").unwrap();
        assert!(f.matches(&c));
        assert!(parse_rsql("general.secret==1").is_err());
    }
}
