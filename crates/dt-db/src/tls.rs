//! TLS on both sides of a database access point: clients must present a certificate of the
//! cluster's user CA; upstream, the access point presents a database-CA certificate for the
//! database user and verifies the database server by the database CA (or `--db-ca`).

use std::sync::Arc;

use dt_agent::AgentError;
use dt_agent::identity::ServiceIdentity;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(what: &str) -> impl Fn(rustls::Error) -> AgentError + '_ {
    move |e| AgentError::Config(format!("{what}: {e}"))
}

#[derive(Clone)]
pub struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
}

impl Tls {
    /// The client-facing side: our certificate, and users' certificates verified against
    /// the user CA (signature, validity, clientAuth).
    pub fn new(id: &ServiceIdentity) -> Result<Tls, AgentError> {
        let user_ca = id.user_ca_der.clone().ok_or_else(|| {
            AgentError::Corrupt(
                "this data dir keeps no user CA certificate (joined by an older version): remove it and join again"
                    .into(),
            )
        })?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(user_ca))
            .map_err(tls_err("user CA certificate"))?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .map_err(|e| AgentError::Config(format!("client verifier: {e}")))?;
        let cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_err("tls"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from(id.tls_cert_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key.pkcs8_der().to_vec())),
            )
            .map_err(tls_err("our certificate"))?;
        Ok(Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
        })
    }
}

/// The upstream side for one connection: log in with `cert_der`/`key_pkcs8` and verify the
/// server by `server_ca_der` for `host`.
pub fn upstream(
    server_ca_der: &[u8],
    cert_der: Vec<u8>,
    key_pkcs8: Vec<u8>,
    host: &str,
) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>), AgentError> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(server_ca_der.to_vec()))
        .map_err(tls_err("database server CA"))?;
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err("tls"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from(cert_der)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8)),
        )
        .map_err(tls_err("database client certificate"))?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| AgentError::Config(format!("database host {host:?}: {e}")))?;
    Ok((tokio_rustls::TlsConnector::from(Arc::new(cfg)), name))
}
