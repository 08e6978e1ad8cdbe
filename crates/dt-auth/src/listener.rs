//! One TLS listener for gRPC and the HTTPS JSON API. Client certificates are optional at the
//! TLS layer (login and ping need none); when one is presented it must chain to the user CA
//! (or the host CA, for nodes), and the identity it carries is attached to every request of
//! the connection as a [`Peer`] extension. Handlers take identity only from there — never
//! from bytes in a message.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::Service;

use crate::server::{AuthServer, DataDirFiles, StartError};

/// Who is on the other end of a connection.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Present when the client sent a certificate issued by the user CA.
    pub identity: Option<Arc<dt_ca::Identity>>,
    /// The client certificate, byte for byte, whoever issued it (a joined service's key is
    /// checked against it).
    pub cert_der: Option<Arc<Vec<u8>>>,
    /// That certificate as the user CA verified it when the connection opened (ceremonies
    /// compare in-band certificates with it; augmentation takes it without a second check).
    pub user_cert: Option<Arc<dt_ca::VerifiedX509Cert>>,
    /// Present when the client sent a joined service's certificate issued by the host CA
    /// (an SSH node or another kind of access point, or the MDM service: see `nodes`).
    pub node: Option<Arc<dt_ca::NodeIdentity>>,
}

pub fn tls_config(
    server: &AuthServer,
    files: &DataDirFiles,
) -> Result<Arc<rustls::ServerConfig>, StartError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in [server.user_ca.cert_der(), server.host_ca.cert_der()] {
        roots
            .add(CertificateDer::from(ca.to_vec()))
            .map_err(|e| StartError::Invalid(format!("CA certificate refused by rustls: {e}")))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| StartError::Invalid(format!("client verifier: {e}")))?;
    let chain: Vec<CertificateDer<'static>> = files
        .tls_cert_chain_der
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(files.tls_key_pkcs8_der.clone()));
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Invalid(format!("tls: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| StartError::Invalid(format!("tls server certificate: {e}")))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client certificate rustls already verified against our roots, if the user CA issued
/// it (a host CA certificate is a joined service's: see `nodes`).
fn peer_user_cert(server: &AuthServer, der: &[u8]) -> Option<dt_ca::VerifiedX509Cert> {
    match server
        .user_ca
        .verify_x509_cert(der, OffsetDateTime::now_utc())
    {
        Ok(id) => Some(id),
        Err(e) => {
            tracing::debug!(error = %e, "client certificate carries no user identity");
            None
        }
    }
}

/// Accept connections until `shutdown` resolves, then let in-flight requests finish (up to
/// 10 s) and return.
pub async fn serve(
    server: Arc<AuthServer>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()>,
) {
    let app = crate::router(server.clone());
    serve_app(server, app, listener, tls, shutdown).await
}

/// [`serve`] with more routes next to the API (the web UI is mounted by the binary, which
/// links `dt-web`; this crate does not depend on it).
pub async fn serve_app(
    server: Arc<AuthServer>,
    app: axum::Router,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let server = server.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%addr, error = %e, "tls handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%addr, "tls handshake timed out");
                        return;
                    }
                };
            let cert_der = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref().to_vec());
            let user_cert = cert_der
                .as_deref()
                .and_then(|d| peer_user_cert(&server, d))
                .map(Arc::new);
            let identity = user_cert.as_ref().map(|c| Arc::new(c.identity().clone()));
            let node = match (&user_cert, cert_der.as_deref()) {
                (None, Some(d)) => server
                    .host_ca
                    .verify_node_client_cert(d, OffsetDateTime::now_utc())
                    .ok()
                    .map(Arc::new),
                _ => None,
            };
            let peer = Peer {
                addr,
                identity,
                cert_der: cert_der.map(Arc::new),
                user_cert,
                node,
            };
            let svc =
                hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer.clone());
                    let mut app = app.clone();
                    async move { app.call(req).await }
                });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%addr, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(10)) => {
            tracing::warn!("some connections did not finish within 10 s; closing them");
        }
    }
}
