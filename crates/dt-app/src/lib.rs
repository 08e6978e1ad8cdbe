//! devtrust's app access point (`devtrust app start`): internal HTTP apps behind role-based
//! device trust. The cluster-wide device-trust mode does not apply to apps (as the seeds
//! say): only the granting roles' `device_trust_mode`, `app_labels` and locks decide.
//!
//! For each client connection:
//!
//! 1. TLS with the access point's own certificate (host CA, named after it). A client
//!    certificate of the cluster's **user CA** (what `dtsh proxy app` presents: the user's
//!    devtrust certificate, carrying the device when it authenticated one) identifies the
//!    user. A connection without one is answered `401` with what to do.
//! 2. Every request picks its app (the TLS server name, else the `Host` header, else the only
//!    app) and is decided by [`dt_agent::access::decide`] for [`dt_authz::Target::App`]. A
//!    refusal is a `403` whose text says why and how to fix it, and an `access.denied` event.
//! 3. Allowed: the request goes to the app with our headers stripped and a fresh
//!    `devtrust-jwt-assertion` (signed by the cluster's JWT CA; apps verify it with
//!    `/.well-known/jwks.json`). Upgrades (WebSocket) pass through.
//! 4. The connection is a live session: a lock that matches ends it (and any WebSocket it
//!    carries) within a sweep, and its next request is refused.
//!
//! Audit: `app.session.start` (first allowed request of a connection, with the device) and
//! one `app.session.request` per request (method, path, status).

mod browser;
mod forward;
pub mod upstream;

pub use upstream::UpstreamTls;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dt_agent::access::{Ending, Freshness, SessionTarget};
use dt_agent::sessions::{LiveSession, SessionRegistry};
use dt_agent::{AgentError, Runtime, RuntimeConfig, Served};
use dt_ca::Identity;
use dt_types::ServiceKind;
use tokio::sync::watch;

/// One app served.
#[derive(Clone, Debug)]
pub struct App {
    /// The app's name in devtrust (`dtsh apps ls`, roles' locks, `dtctl lock --app`).
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The upstream, `http://HOST:PORT` or `https://HOST:PORT` (a path prefix is kept).
    pub uri: http::Uri,
    /// Where users reach it, e.g. `grafana.apps.example.com` (matched against `Host`).
    pub public_addr: String,
    /// What users see in `dtsh apps ls` and the web UI (never the upstream's address).
    pub description: String,
    /// How an `https://` upstream's certificate is checked.
    pub tls: UpstreamTls,
    /// Headers set on every request to the app (replacing the client's), e.g. a fixed
    /// `X-Team`; never one the access point owns (see [`App::check`]).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// Headers the access point sets or strips itself: a rewrite may not name them.
const RESERVED_HEADERS: [&str; 12] = [
    "devtrust-jwt-assertion",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

#[derive(Clone, Debug)]
pub struct AppConfig {
    pub runtime: RuntimeConfig,
    pub listen: SocketAddr,
    pub apps: Vec<App>,
    pub freshness: Freshness,
    /// `HOST:PORT` of the auth service's web UI as browsers reach it (where the web launch
    /// sends a browser without an app session). Empty: the first auth server address.
    pub web_addr: String,
    /// How long the auth service's answer about an app session is reused (a web logout
    /// reaches the access point within this).
    pub session_recheck: Duration,
    /// The certificate browsers get (else the service certificate, which browsers do not
    /// trust unless they trust the cluster's host CA).
    pub browser_cert: Option<BrowserCert>,
}

/// Why an app cannot be served as configured.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("app {name:?}: the URI {uri:?} {why}")]
    Uri {
        name: String,
        uri: String,
        why: &'static str,
    },
    #[error(
        "app {name:?}: header {header:?} is set by the access point itself and cannot be rewritten"
    )]
    ReservedHeader { name: String, header: String },
    #[error("app {name:?}: {why}")]
    Tls {
        name: String,
        why: upstream::UpstreamError,
    },
    #[error("app {0:?} is listed twice")]
    Duplicate(String),
    #[error("no app to serve")]
    None,
}

impl App {
    /// Check what the access point needs of an app's configuration.
    pub fn check(&self) -> Result<(), AppError> {
        let bad = |why| AppError::Uri {
            name: self.name.clone(),
            uri: self.uri.to_string(),
            why,
        };
        match self.uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => return Err(bad("needs http://HOST:PORT or https://HOST:PORT")),
        }
        if self.uri.authority().is_none() {
            return Err(bad("names no host"));
        }
        for (name, _) in &self.headers {
            if RESERVED_HEADERS.contains(&name.as_str()) {
                return Err(AppError::ReservedHeader {
                    name: self.name.clone(),
                    header: name.to_string(),
                });
            }
        }
        Ok(())
    }
}

/// A live app connection, for the runtime's lock enforcement.
pub struct AppSession {
    identity: Arc<Identity>,
    target: SessionTarget,
    kill: watch::Sender<Option<Ending>>,
}

impl LiveSession for AppSession {
    fn identity(&self) -> &Identity {
        &self.identity
    }
    fn target(&self) -> &SessionTarget {
        &self.target
    }
}

/// A user certificate (DER) and an app's name.
type TokenKey = (Vec<u8>, String);

/// What every connection shares.
pub struct AppState {
    pub access_point: String,
    pub apps: Vec<App>,
    pub view: Arc<dt_agent::view::SharedView>,
    pub audit: dt_agent::audit::AuditQueue,
    pub sessions: Arc<SessionRegistry<AppSession>>,
    pub freshness: Freshness,
    channel: tonic::transport::Channel,
    acceptor: tokio_rustls::TlsAcceptor,
    clients: forward::Upstream,
    /// App tokens by (certificate, app): reused until a minute before they expire.
    tokens: Mutex<HashMap<TokenKey, (String, i64)>>,
    /// Where browsers without an app session are sent (see [`AppConfig::web_addr`]).
    web_addr: String,
    /// App sessions of browsers the auth service vouched for recently.
    browser_sessions: browser::SessionCache,
    /// Checks the certificate an app session stands for, as TLS checks client certificates.
    user_certs: Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

impl AppState {
    /// The identity of a user certificate the auth service handed over for an app session:
    /// checked against the user CA (chain, dates, usage) like a client certificate.
    fn check_user_cert(&self, der: &[u8]) -> Result<Identity, String> {
        let cert = rustls::pki_types::CertificateDer::from(der);
        let now = rustls::pki_types::UnixTime::now();
        self.user_certs
            .verify_client_cert(&cert, &[], now)
            .map_err(|e| format!("the app session's certificate is refused: {e}"))?;
        dt_ca::parse_x509_identity(der)
            .map_err(|e| format!("the app session's certificate is unreadable: {e}"))
    }
}

/// A running app access point.
pub struct RunningApp {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    runtime: Runtime,
}

impl RunningApp {
    pub async fn stop(self) {
        self.runtime.stop().await;
    }
}

type Verifier = Arc<dyn rustls::server::danger::ClientCertVerifier>;

/// The certificate browsers get for app hosts (`--browser-cert-file`/`--browser-key-file`,
/// e.g. one for `*.apps.example.com` from a public CA). `dtsh proxy app`, which names the app
/// itself as TLS server name, always gets the access point's service certificate.
#[derive(Clone, Debug)]
pub struct BrowserCert {
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
}

fn load_browser_cert(
    b: &BrowserCert,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Arc<rustls::sign::CertifiedKey>, AgentError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &std::path::Path, e: &dyn std::fmt::Display| {
        AgentError::Config(format!("browser certificate {}: {e}", what.display()))
    };
    let certs = CertificateDer::pem_file_iter(&b.cert_file)
        .map_err(|e| bad(&b.cert_file, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&b.cert_file, &e))?;
    if certs.is_empty() {
        return Err(bad(&b.cert_file, &"holds no certificate"));
    }
    let key = PrivateKeyDer::from_pem_file(&b.key_file).map_err(|e| bad(&b.key_file, &e))?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad(&b.key_file, &e))?;
    let ck = rustls::sign::CertifiedKey::new(certs, key);
    ck.keys_match().map_err(|e| {
        AgentError::Config(format!(
            "browser certificate {} and key {} do not match: {e}",
            b.cert_file.display(),
            b.key_file.display()
        ))
    })?;
    Ok(Arc::new(ck))
}

/// Picks the certificate by the TLS server name: an app's own name (what `dtsh proxy app`
/// sends) or none gets the service certificate; any other name (a browser at a public
/// address) the browser certificate, when there is one.
#[derive(Debug)]
struct ByServerName {
    service: Arc<rustls::sign::CertifiedKey>,
    browsers: Option<Arc<rustls::sign::CertifiedKey>>,
    app_names: std::collections::BTreeSet<String>,
}

impl rustls::server::ResolvesServerCert for ByServerName {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        match (hello.server_name(), &self.browsers) {
            (Some(name), Some(b)) if !self.app_names.contains(name) => Some(b.clone()),
            _ => Some(self.service.clone()),
        }
    }
}

fn tls_acceptor(
    id: &dt_agent::identity::ServiceIdentity,
    browsers: Option<Arc<rustls::sign::CertifiedKey>>,
    apps: &[App],
) -> Result<(tokio_rustls::TlsAcceptor, Verifier), AgentError> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let user_ca = id.user_ca()?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(user_ca))
        .map_err(|e| AgentError::Config(format!("user CA certificate: {e}")))?;
    // A client certificate is optional at the TLS layer so the refusal can be an HTTP answer
    // that says what to do; every request without one is refused.
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| AgentError::Config(format!("client verifier: {e}")))?;
    let service_key = provider
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            id.key.pkcs8_der().to_vec(),
        )))
        .map_err(|e| AgentError::Config(format!("our certificate: {e}")))?;
    let resolver = ByServerName {
        service: Arc::new(rustls::sign::CertifiedKey::new(
            vec![CertificateDer::from(id.tls_cert_der.clone())],
            service_key,
        )),
        browsers,
        app_names: apps.iter().map(|a| a.name.clone()).collect(),
    };
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AgentError::Config(format!("tls: {e}")))?
        .with_client_cert_verifier(verifier.clone())
        .with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(cfg)), verifier))
}

/// Join (if needed), start the runtime, and serve the apps on `cfg.listen`.
pub async fn start(mut cfg: AppConfig) -> Result<RunningApp, AgentError> {
    if cfg.apps.is_empty() {
        return Err(AgentError::Config(AppError::None.to_string()));
    }
    let mut names = std::collections::BTreeSet::new();
    for app in &cfg.apps {
        app.check().map_err(|e| AgentError::Config(e.to_string()))?;
        if !names.insert(app.name.clone()) {
            return Err(AgentError::Config(
                AppError::Duplicate(app.name.clone()).to_string(),
            ));
        }
    }
    if cfg.runtime.kind != ServiceKind::App {
        return Err(AgentError::Config(format!(
            "an app access point joins as kind app, not {}",
            cfg.runtime.kind
        )));
    }
    // Before joining: a bad CA file or browser certificate must not spend the join token.
    let clients = forward::Upstream::new(&cfg.apps)?;
    let browser_cert = match &cfg.browser_cert {
        Some(b) => Some(load_browser_cert(
            b,
            &rustls::crypto::ring::default_provider(),
        )?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| AgentError::Config(format!("cannot listen on {}: {e}", cfg.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| AgentError::Config(format!("listener: {e}")))?;
    if cfg.runtime.advertise_addr.is_empty() {
        cfg.runtime.advertise_addr = addr.to_string();
    }
    cfg.runtime.resources = cfg
        .apps
        .iter()
        .map(|a| Served {
            name: a.name.clone(),
            labels: a.labels.clone(),
            protocol: a.public_addr.clone(),
            description: a.description.clone(),
            addr: String::new(),
        })
        .collect();
    let mut runtime = Runtime::start(cfg.runtime.clone()).await?;
    let (acceptor, user_certs) = tls_acceptor(&runtime.identity, browser_cert, &cfg.apps)?;
    let state = Arc::new(AppState {
        access_point: cfg.runtime.name.clone(),
        apps: cfg.apps.clone(),
        view: runtime.view.clone(),
        audit: runtime.audit.clone(),
        sessions: Arc::new(SessionRegistry::default()),
        freshness: cfg.freshness,
        channel: runtime.channel.clone(),
        acceptor,
        clients,
        tokens: Mutex::new(HashMap::new()),
        web_addr: if cfg.web_addr.is_empty() {
            runtime
                .identity
                .meta
                .auth_server
                .split(',')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        } else {
            cfg.web_addr.clone()
        },
        browser_sessions: browser::SessionCache::new(cfg.session_recheck),
        user_certs,
    });
    let shutdown = runtime.shutdown_signal();
    runtime.spawn(forward::serve(state.clone(), listener, shutdown));
    runtime.spawn(dt_agent::sessions::enforce(
        state.sessions.clone(),
        state.view.clone(),
        state.freshness,
        "app access point",
        move |_, session: AppSession, why| async move {
            let _ = session.kill.send(Some(why));
        },
    ));
    for a in &cfg.apps {
        tracing::info!(app = %a.name, %addr, upstream = %a.uri, "app access point serving");
    }
    Ok(RunningApp {
        addr,
        state,
        runtime,
    })
}

/// How long an app token is reused: until this much before it expires.
const TOKEN_SLACK: Duration = Duration::from_secs(60);
