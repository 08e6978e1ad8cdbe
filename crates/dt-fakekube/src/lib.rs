//! A small Kubernetes API server for devtrust's tests and benches (dev-only, never shipped).
//!
//! No real `kube-apiserver` can run on the machines the tests run on, so this one speaks
//! the shapes `kubectl` relies on, over TLS, and nothing more:
//!
//! - discovery: `/version`, `/api`, `/apis`, `/api/v1`, `/apis/authentication.k8s.io/v1`
//!   (the legacy documents; kubectl falls back to them when the aggregated discovery
//!   content type is not answered);
//! - list, get, delete and watch (`?watch=1`, newline-delimited events) of namespaces and
//!   pods, as JSON or as `meta.k8s.io/v1` `Table` when kubectl asks for one;
//! - `metav1.Status` errors (401, 403, 404, 405);
//! - `SelfSubjectReview` (`authentication.k8s.io/v1`), so `kubectl auth whoami` shows the
//!   identity the request was made as (after impersonation);
//! - `pods/log` (with `follow=true`) and `pods/exec` over WebSocket `v5.channel.k8s.io`
//!   (and `v4.channel.k8s.io`) running a fixed command set: `echo`, `whoami`, `cat`,
//!   `sleep N`, `false`.
//!
//! It authenticates its caller (the access point) by a client certificate of its own client
//! CA or by a bearer token, and honours `Impersonate-User`/`Impersonate-Group` from an
//! authenticated caller as a real API server would for a caller allowed to impersonate. It
//! records every request's impersonation headers ([`FakeKube::requests`]) so tests can
//! assert what the access point sent.

mod ws;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::sync::broadcast;

type Body = BoxBody<Bytes, Infallible>;

/// The identity the client certificate [`FakeKube::kubeconfig`] writes carries.
pub const CLIENT_CERT_USER: &str = "devtrust-kube-access-point";
/// The identity the bearer token stands for.
pub const TOKEN_USER: &str = "token:devtrust-kube-access-point";

/// One request as the server received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Who authenticated (certificate CN or the token's user); empty: nobody.
    pub authenticated: String,
    pub impersonate_user: Option<String>,
    pub impersonate_groups: Vec<String>,
    /// Any other `Impersonate-*` header.
    pub impersonate_other: Vec<String>,
}

/// How the access point authenticates in the kubeconfig [`FakeKube::kubeconfig`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    ClientCert,
    Token,
}

#[derive(Clone, Debug)]
struct Pod {
    namespace: String,
    name: String,
    rv: u64,
}

struct Store {
    namespaces: Vec<String>,
    pods: Vec<Pod>,
    rv: u64,
    requests: Vec<Recorded>,
}

struct Shared {
    store: Mutex<Store>,
    events: broadcast::Sender<(String, Pod)>,
    token: String,
    delay: Mutex<Duration>,
}

impl Shared {
    fn with<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        match self.store.lock() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }
}

/// A running fake API server; stops when dropped.
pub struct FakeKube {
    pub addr: SocketAddr,
    /// The CA of the server's certificate (PEM).
    pub ca_pem: String,
    client_cert_pem: String,
    client_key_pem: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeKube {
    /// Serve on `127.0.0.1:0` (needs a tokio runtime).
    pub async fn start() -> FakeKube {
        FakeKube::start_on("127.0.0.1:0").await
    }

    /// Serve on `addr`.
    #[allow(clippy::expect_used)] // INVARIANT: test support; a failure here is a broken test setup.
    pub async fn start_on(addr: &str) -> FakeKube {
        let now = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        let server_ca = dt_ca::CertAuthority::generate("fakekube", dt_ca::CaKind::Host, now)
            .expect("server CA");
        let client_ca = dt_ca::CertAuthority::generate("fakekube", dt_ca::CaKind::User, now)
            .expect("client CA");
        let server_key = dt_ca::ClientKey::generate().expect("key");
        let server_cert = server_ca
            .issue_tls_server_cert(
                &server_key.spki_der(),
                &["localhost".into()],
                &["127.0.0.1".parse().expect("ip")],
                now + time::Duration::days(2),
            )
            .expect("server cert");
        let client_key = dt_ca::ClientKey::generate().expect("key");
        let client_cert = client_ca
            .issue_x509_client_cert(
                &client_key.spki_der(),
                &dt_ca::Identity {
                    // CN only: kubectl (Go) must parse it in the benchmark's direct path, and
                    // Go cannot parse devtrust's own attributes.
                    username: CLIENT_CERT_USER.parse().expect("a user name"),
                    roles: vec![],
                    logins: vec![],
                    bot: false,
                    trait_logins: vec![],
                    device: None,
                    not_before: now,
                    not_after: now + time::Duration::days(2),
                },
            )
            .expect("client cert");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(client_ca.cert_der().to_vec()))
            .expect("root");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .expect("verifier");
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("tls")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from(server_cert)],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.pkcs8_der().to_vec())),
            )
            .expect("server config");
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let pod = |ns: &str, name: &str, rv| Pod {
            namespace: ns.into(),
            name: name.into(),
            rv,
        };
        let (events, _) = broadcast::channel(64);
        let token_bytes: [u8; 16] = rand_bytes();
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                namespaces: vec!["default".into(), "kube-system".into()],
                pods: vec![
                    pod("default", "web-0", 1),
                    pod("default", "web-1", 2),
                    pod("kube-system", "coredns-0", 3),
                ],
                rv: 3,
                requests: Vec::new(),
            }),
            events,
            token: hex(&token_bytes),
            delay: Mutex::new(Duration::ZERO),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, s) = (acceptor.clone(), s.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let cert_user = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| dt_ca::parse_x509_identity(c.as_ref()).ok())
                        .map(|id| id.username.into_string());
                    let svc = hyper::service::service_fn(move |req| {
                        let (s, cert_user) = (s.clone(), cert_user.clone());
                        async move { Ok::<_, Infallible>(handle(s, cert_user, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        FakeKube {
            addr,
            ca_pem: server_ca.cert_pem(),
            client_cert_pem: dt_ca::pem::to_pem("CERTIFICATE", &client_cert),
            client_key_pem: client_key.to_pkcs8_pem(),
            shared,
            task,
        }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The bearer token the server accepts.
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// A kubeconfig (YAML) that reaches this server with `cred`.
    pub fn kubeconfig(&self, cred: Credential) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        let user = match cred {
            Credential::ClientCert => format!(
                "    client-certificate-data: {}\n    client-key-data: {}\n",
                b64(&self.client_cert_pem),
                b64(&self.client_key_pem)
            ),
            Credential::Token => format!("    token: {}\n", self.shared.token),
        };
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: fake-user\n  user:\n{user}contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake-user\ncurrent-context: fake\n",
            self.url(),
            b64(&self.ca_pem)
        )
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.with(|s| s.requests.clone())
    }

    /// Forget the recorded requests.
    pub fn clear_requests(&self) {
        self.shared.with(|s| s.requests.clear());
    }

    /// Add a pod (watchers see `ADDED`).
    pub fn add_pod(&self, namespace: &str, name: &str) {
        let pod = self.shared.with(|s| {
            s.rv += 1;
            let p = Pod {
                namespace: namespace.into(),
                name: name.into(),
                rv: s.rv,
            };
            s.pods.push(p.clone());
            p
        });
        let _ = self.shared.events.send(("ADDED".into(), pod));
    }

    /// Delay every answer by `d` (a slow API server).
    pub fn set_delay(&self, d: Duration) {
        if let Ok(mut g) = self.shared.delay.lock() {
            *g = d;
        }
    }
}

fn rand_bytes() -> [u8; 16] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    b
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn full(v: Value, code: StatusCode) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// A `metav1.Status` failure.
pub fn status(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    })
}

fn fail(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    full(status(code, reason, message), code)
}

/// Who the request acts as, after impersonation.
struct Caller {
    user: String,
    groups: Vec<String>,
}

async fn handle(
    s: Arc<Shared>,
    cert_user: Option<String>,
    req: Request<Incoming>,
) -> Response<Body> {
    let delay = s.delay.lock().map(|d| *d).unwrap_or_default();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let h = req.headers();
    let bearer = h
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let authenticated = match (cert_user, bearer) {
        (_, Some(t)) if t == s.token => TOKEN_USER.to_string(),
        (_, Some(_)) => String::new(),
        (Some(u), None) => u,
        (None, None) => String::new(),
    };
    let all = |name: &str| -> Vec<String> {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect()
    };
    let imp_user = all("impersonate-user").into_iter().next();
    let imp_groups = all("impersonate-group");
    let imp_other: Vec<String> = h
        .keys()
        .map(|k| k.as_str().to_string())
        .filter(|k| {
            k.starts_with("impersonate-") && k != "impersonate-user" && k != "impersonate-group"
        })
        .collect();
    s.with(|st| {
        st.requests.push(Recorded {
            method: req.method().to_string(),
            uri: req.uri().to_string(),
            authenticated: authenticated.clone(),
            impersonate_user: imp_user.clone(),
            impersonate_groups: imp_groups.clone(),
            impersonate_other: imp_other.clone(),
        })
    });
    if authenticated.is_empty() {
        return fail(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    let caller = match imp_user {
        Some(u) => {
            let mut groups = imp_groups;
            groups.push("system:authenticated".into());
            Caller { user: u, groups }
        }
        None if !imp_groups.is_empty() || !imp_other.is_empty() => {
            return fail(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "requested [Impersonate-Group] without impersonating a user",
            );
        }
        None => Caller {
            user: authenticated,
            groups: vec!["system:authenticated".into()],
        },
    };
    route(s, caller, req).await
}

fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (unescape(k), unescape(v))
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let v = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match v {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn wants_table(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

fn pod_json(p: &Pod) -> Value {
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {
            "name": p.name, "namespace": p.namespace, "uid": format!("uid-{}-{}", p.namespace, p.name),
            "resourceVersion": p.rv.to_string(), "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {"containers": [{"name": "main", "image": "busybox"}]},
        "status": {"phase": "Running"},
    })
}

fn ns_json(n: &str) -> Value {
    json!({
        "kind": "Namespace", "apiVersion": "v1",
        "metadata": {"name": n, "uid": format!("uid-ns-{n}"), "resourceVersion": "1", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": {"phase": "Active"},
    })
}

fn table(rows: Vec<Value>, rv: u64) -> Value {
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv.to_string()},
        "columnDefinitions": [
            {"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0},
            {"name": "Status", "type": "string", "format": "", "description": "", "priority": 0},
        ],
        "rows": rows,
    })
}

fn row(obj: &Value, status: &str) -> Value {
    let mut meta = obj["metadata"].clone();
    if meta.is_null() {
        meta = json!({});
    }
    json!({
        "cells": [obj["metadata"]["name"].clone(), status],
        "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta},
    })
}

async fn route(s: Arc<Shared>, caller: Caller, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let q = query(&req);
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let is_watch = get("watch").is_some_and(|w| w == "1" || w == "true");
    let m = req.method().clone();
    let rv = s.with(|st| st.rv);
    match (m.clone(), parts.as_slice()) {
        (Method::GET, ["version"]) => full(
            json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0-fakekube", "platform": "linux/amd64"}),
            StatusCode::OK,
        ),
        (Method::GET, ["api"]) => full(
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
            StatusCode::OK,
        ),
        (Method::GET, ["apis"]) => full(
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [{
                "name": "authentication.k8s.io",
                "versions": [{"groupVersion": "authentication.k8s.io/v1", "version": "v1"}],
                "preferredVersion": {"groupVersion": "authentication.k8s.io/v1", "version": "v1"},
            }]}),
            StatusCode::OK,
        ),
        (Method::GET, ["api", "v1"]) => full(
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1", "resources": [
                {"name": "namespaces", "singularName": "namespace", "namespaced": false, "kind": "Namespace", "verbs": ["delete", "get", "list", "watch"], "shortNames": ["ns"]},
                {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod", "verbs": ["delete", "get", "list", "watch"], "shortNames": ["po"], "categories": ["all"]},
                {"name": "pods/exec", "singularName": "", "namespaced": true, "kind": "PodExecOptions", "verbs": ["create", "get"]},
                {"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]},
            ]}),
            StatusCode::OK,
        ),
        (Method::GET, ["apis", "authentication.k8s.io", "v1"]) => full(
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "authentication.k8s.io/v1", "resources": [
                {"name": "selfsubjectreviews", "singularName": "selfsubjectreview", "namespaced": false, "kind": "SelfSubjectReview", "verbs": ["create"]},
            ]}),
            StatusCode::OK,
        ),
        (Method::POST, ["apis", "authentication.k8s.io", "v1", "selfsubjectreviews"]) => full(
            json!({
                "kind": "SelfSubjectReview", "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"creationTimestamp": null},
                "status": {"userInfo": {"username": caller.user, "groups": caller.groups}},
            }),
            StatusCode::CREATED,
        ),
        (Method::GET, ["api", "v1", "namespaces"]) => {
            let names = s.with(|st| st.namespaces.clone());
            if wants_table(&req) {
                let rows = names.iter().map(|n| row(&ns_json(n), "Active")).collect();
                full(table(rows, rv), StatusCode::OK)
            } else {
                let items: Vec<Value> = names.iter().map(|n| ns_json(n)).collect();
                full(
                    json!({"kind": "NamespaceList", "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
                    StatusCode::OK,
                )
            }
        }
        (Method::GET | Method::DELETE, ["api", "v1", "namespaces", ns]) => {
            let ns = ns.to_string();
            let found = s.with(|st| {
                let found = st.namespaces.contains(&ns);
                if found && m == Method::DELETE {
                    st.namespaces.retain(|n| n != &ns);
                }
                found
            });
            if !found {
                return fail(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("namespaces \"{ns}\" not found"),
                );
            }
            full(ns_json(&ns), StatusCode::OK)
        }
        (Method::GET, ["api", "v1", "pods"]) => list_pods(
            &s,
            &req,
            None,
            is_watch,
            get("fieldSelector"),
            get("resourceVersion"),
        ),
        (Method::GET, ["api", "v1", "namespaces", ns, "pods"]) => list_pods(
            &s,
            &req,
            Some(ns),
            is_watch,
            get("fieldSelector"),
            get("resourceVersion"),
        ),
        (Method::GET | Method::DELETE, ["api", "v1", "namespaces", ns, "pods", name]) => {
            let (ns, name) = (ns.to_string(), name.to_string());
            let found = s.with(|st| {
                let found = st
                    .pods
                    .iter()
                    .find(|p| p.namespace == ns && p.name == name)
                    .cloned();
                if found.is_some() && m == Method::DELETE {
                    st.pods.retain(|p| !(p.namespace == ns && p.name == name));
                }
                found
            });
            match found {
                None => fail(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("pods \"{name}\" not found"),
                ),
                Some(p) => {
                    if m == Method::DELETE {
                        let _ = s.events.send(("DELETED".into(), p.clone()));
                    }
                    full(pod_json(&p), StatusCode::OK)
                }
            }
        }
        (Method::GET, ["api", "v1", "namespaces", _ns, "pods", name, "log"]) => {
            let follow = get("follow").is_some_and(|f| f == "true" || f == "1");
            let name = name.to_string();
            if !follow {
                return text(format!("{name}: log line 1\n{name}: log line 2\n"));
            }
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            tokio::spawn(async move {
                for i in 1.. {
                    let line = format!("{name}: log line {i}\n");
                    if tx.send(Ok(Frame::data(Bytes::from(line)))).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            streaming(rx, "text/plain")
        }
        (Method::GET | Method::POST, ["api", "v1", "namespaces", _ns, "pods", _name, "exec"]) => {
            exec(req, caller, q)
        }
        _ => fail(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("the server could not find the requested resource ({m} {path})"),
        ),
    }
}

fn text(t: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(t)).boxed());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    r
}

fn streaming(
    rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
    content_type: &'static str,
) -> Response<Body> {
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut r = Response::new(BodyExt::boxed(body));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

fn list_pods(
    s: &Arc<Shared>,
    req: &Request<Incoming>,
    ns: Option<&str>,
    watch: bool,
    field_selector: Option<String>,
    since: Option<String>,
) -> Response<Body> {
    let name_is = field_selector
        .as_deref()
        .and_then(|f| f.strip_prefix("metadata.name="))
        .map(str::to_owned);
    let ns = ns.map(str::to_owned);
    let keep = move |p: &Pod| {
        ns.as_ref().is_none_or(|n| &p.namespace == n)
            && name_is.as_ref().is_none_or(|n| &p.name == n)
    };
    let as_table = wants_table(req);
    // Subscribe before the snapshot: a watch from `resourceVersion` replays what came after.
    let mut events = s.events.subscribe();
    let (pods, rv) = s.with(|st| {
        (
            st.pods
                .iter()
                .filter(|p| keep(p))
                .cloned()
                .collect::<Vec<_>>(),
            st.rv,
        )
    });
    if watch {
        let since: u64 = since.and_then(|v| v.parse().ok()).unwrap_or(0);
        let replay: Vec<Pod> = pods.into_iter().filter(|p| p.rv > since).collect();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
        tokio::spawn(async move {
            let mut replay = replay.into_iter();
            loop {
                if let Some(pod) = replay.next() {
                    let obj = if as_table {
                        table(vec![row(&pod_json(&pod), "Running")], pod.rv)
                    } else {
                        pod_json(&pod)
                    };
                    let line = format!("{}\n", json!({"type": "ADDED", "object": obj}));
                    if tx.send(Ok(Frame::data(Bytes::from(line)))).await.is_err() {
                        return;
                    }
                    continue;
                }
                let (kind, pod) = match events.recv().await {
                    Ok(e) => e,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                };
                if !keep(&pod) {
                    continue;
                }
                let obj = if as_table {
                    table(vec![row(&pod_json(&pod), "Running")], pod.rv)
                } else {
                    pod_json(&pod)
                };
                let line = format!("{}\n", json!({"type": kind, "object": obj}));
                if tx.send(Ok(Frame::data(Bytes::from(line)))).await.is_err() {
                    return;
                }
            }
        });
        return streaming(rx, "application/json");
    }
    if as_table {
        let rows = pods.iter().map(|p| row(&pod_json(p), "Running")).collect();
        return full(table(rows, rv), StatusCode::OK);
    }
    let items: Vec<Value> = pods.iter().map(pod_json).collect();
    full(
        json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
        StatusCode::OK,
    )
}

/// `pods/exec` over WebSocket.
fn exec(mut req: Request<Incoming>, caller: Caller, q: Vec<(String, String)>) -> Response<Body> {
    let h = req.headers();
    let is_ws = h
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = h
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .filter(|_| is_ws)
        .map(str::to_owned)
    else {
        return fail(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "fakekube speaks exec over WebSocket (v5.channel.k8s.io, v4.channel.k8s.io) only",
        );
    };
    let offered: Vec<String> = h
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .collect();
    let Some(proto) = ["v5.channel.k8s.io", "v4.channel.k8s.io"]
        .into_iter()
        .find(|p| offered.iter().any(|o| o == p))
    else {
        return fail(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("no supported channel protocol in {offered:?}"),
        );
    };
    let command: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(up) = upgrade.await {
            let _ = run_exec(
                TokioIo::new(up),
                command,
                caller,
                proto == "v5.channel.k8s.io",
            )
            .await;
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let hv = |s: &str| {
        hyper::header::HeaderValue::from_str(s)
            .unwrap_or(hyper::header::HeaderValue::from_static(""))
    };
    r.headers_mut()
        .insert(hyper::header::UPGRADE, hv("websocket"));
    r.headers_mut()
        .insert(hyper::header::CONNECTION, hv("Upgrade"));
    r.headers_mut()
        .insert("sec-websocket-accept", hv(&ws::accept_key(&key)));
    r.headers_mut().insert("sec-websocket-protocol", hv(proto));
    r
}

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const CLOSE: u8 = 255;

async fn run_exec<S>(io: S, command: Vec<String>, caller: Caller, v5: bool) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut r, w) = tokio::io::split(io);
    let w = Arc::new(tokio::sync::Mutex::new(w));
    let send = |ch: u8, data: Vec<u8>| {
        let w = w.clone();
        async move {
            let mut payload = vec![ch];
            payload.extend(data);
            let mut g = w.lock().await;
            ws::write_frame(&mut *g, ws::OP_BINARY, &payload).await
        }
    };
    // Stdin arrives as messages on channel 0; the reader forwards them (and answers pings).
    let (stdin_tx, mut stdin_rx) = tokio::sync::mpsc::channel::<Option<Vec<u8>>>(16);
    let wr = w.clone();
    let reader = tokio::spawn(async move {
        while let Ok(Some(m)) = ws::read_message(&mut r).await {
            match m.opcode {
                ws::OP_CLOSE => break,
                ws::OP_PING => {
                    let mut g = wr.lock().await;
                    let _ = ws::write_frame(&mut *g, ws::OP_PONG, &m.payload).await;
                }
                ws::OP_BINARY | ws::OP_TEXT => match m.payload.split_first() {
                    Some((&STDIN, data)) => {
                        let _ = stdin_tx.send(Some(data.to_vec())).await;
                    }
                    Some((&CLOSE, [STDIN, ..])) if v5 => {
                        let _ = stdin_tx.send(None).await;
                    }
                    _ => {}
                },
                _ => {}
            }
        }
        let _ = stdin_tx.send(None).await;
    });
    let args: Vec<&str> = command.iter().map(String::as_str).collect();
    let exit: i32 = match args.as_slice() {
        ["echo", rest @ ..] => {
            send(STDOUT, format!("{}\n", rest.join(" ")).into_bytes()).await?;
            0
        }
        ["whoami"] => {
            send(
                STDOUT,
                format!("{} {}\n", caller.user, caller.groups.join(",")).into_bytes(),
            )
            .await?;
            0
        }
        ["cat"] => {
            while let Some(Some(data)) = stdin_rx.recv().await {
                send(STDOUT, data).await?;
            }
            0
        }
        ["sleep", n] => {
            let secs: u64 = n.parse().unwrap_or(1);
            tokio::time::sleep(Duration::from_secs(secs)).await;
            0
        }
        ["false"] => 1,
        _ => {
            send(
                STDERR,
                format!("fakekube: command not found: {}\n", command.join(" ")).into_bytes(),
            )
            .await?;
            127
        }
    };
    let st = if exit == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({
            "metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {exit}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": exit.to_string()}]},
        })
    };
    send(ERROR, st.to_string().into_bytes()).await?;
    {
        let mut g = w.lock().await;
        ws::write_frame(&mut *g, ws::OP_CLOSE, &1000u16.to_be_bytes()).await?;
    }
    reader.abort();
    Ok(())
}

/// Query parameters as a map (for tests of the parser).
pub fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (unescape(k), unescape(v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_unescapes() {
        let q = super::parse_query("command=echo&command2=a%20b&x=%zz&y=1+2");
        assert_eq!(q["command2"], "a b");
        assert_eq!(q["x"], "%zz");
        assert_eq!(q["y"], "1 2");
    }
}
