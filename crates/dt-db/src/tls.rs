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
        let user_ca = id.user_ca()?;
        Tls::from_parts(
            user_ca,
            id.tls_cert_der.clone(),
            id.key.pkcs8_der().to_vec(),
        )
    }

    /// The same from the user CA's certificate and our certificate and key.
    fn from_parts(
        user_ca: Vec<u8>,
        cert_der: Vec<u8>,
        key_pkcs8: Vec<u8>,
    ) -> Result<Tls, AgentError> {
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
                vec![CertificateDer::from(cert_der)],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8)),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use dt_ca::{CaKind, CertAuthority, ClientKey, Identity};
    use dt_types::ServiceKind;
    use time::{Duration, OffsetDateTime};

    /// A real TLS handshake over a pipe between the access point's acceptor and a client
    /// presenting a user certificate valid from `from` to `to` (relative to now); the
    /// access point's error, if it refused.
    async fn handshake(from: Duration, to: Duration) -> Result<(), String> {
        let now = OffsetDateTime::now_utc();
        let user_ca = CertAuthority::generate("c", CaKind::User, now - Duration::days(1)).unwrap();
        let host_ca = CertAuthority::generate("c", CaKind::Host, now - Duration::days(1)).unwrap();
        let ap_key = ClientKey::generate().unwrap();
        let ap_cert = host_ca
            .issue_node_client_cert(
                &ap_key.spki_der(),
                "pg1",
                ServiceKind::Db,
                now + Duration::hours(1),
            )
            .unwrap();
        let tls = Tls::from_parts(
            user_ca.cert_der().to_vec(),
            ap_cert,
            ap_key.pkcs8_der().to_vec(),
        )
        .unwrap();
        let user_key = ClientKey::generate().unwrap();
        let id = Identity {
            username: "alice".parse().unwrap(),
            roles: vec!["db".into()],
            logins: vec![],
            bot: false,
            trait_logins: vec![],
            device: None,
            not_before: now + from,
            not_after: now + to,
        };
        let user_cert = user_ca
            .issue_x509_client_cert(&user_key.spki_der(), &id)
            .unwrap();
        let connector = dt_client::access_point::connector(
            host_ca.cert_der().to_vec(),
            ServiceKind::Db,
            "pg1",
            user_cert,
            user_key.pkcs8_der().to_vec(),
        )
        .unwrap();
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let client = tokio::spawn(async move {
            connector
                .connect(dt_client::access_point::server_name("pg1"), client_io)
                .await
        });
        let server = tls.acceptor.accept(server_io).await;
        let _ = client.await;
        server.map(|_| ()).map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn a_valid_user_certificate_passes_and_an_expired_or_future_one_is_refused() {
        handshake(-Duration::minutes(5), Duration::hours(1))
            .await
            .unwrap();
        let expired = handshake(-Duration::hours(2), -Duration::hours(1))
            .await
            .unwrap_err();
        assert!(expired.to_lowercase().contains("expired"), "{expired}");
        let early = handshake(Duration::hours(1), Duration::hours(2))
            .await
            .unwrap_err();
        assert!(
            early.to_lowercase().contains("not valid yet")
                || early.to_lowercase().contains("notvalidyet"),
            "{early}"
        );
    }
}
