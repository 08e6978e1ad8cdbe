//! TLS from a user to a devtrust access point (the database access point today): the user's
//! devtrust certificate as client identity, and the access point verified by its service
//! certificate: issued by the cluster's host CA (the profile keeps it from login, which the
//! CA pin decided), valid, and naming the expected kind and name. A certificate of another
//! service (an SSH node, another database) is refused, so a tunnel to `pg1` cannot be
//! answered by something else.

/// Prefix of the description of a role-based SSH denial (`dtsh` recognizes it).
pub const ACCESS_DENIED_PREFIX: &str = "access denied to ";
/// What a role-based denial for want of a trusted device adds after `": "`.
pub const TRUSTED_DEVICE_SUFFIX: &str = "a trusted device is required";
/// Where kubectl reaches Kubernetes cluster `NAME` on a kube access point:
/// `https://ADDR/kube/NAME`.
pub const KUBE_PATH_PREFIX: &str = "/kube/";
/// The server name `dtsh kube login` sends to a kube access point to get the host-CA
/// certificate after the serving one. Other clients (kubectl) get the serving certificate
/// alone: Go's TLS client parses every certificate a server sends, and cannot parse
/// devtrust's (UUID-arc attributes).
pub const KUBE_PIN_SERVER_NAME: &str = "pin.devtrust.invalid";
/// Where the web UI sends a browser back to an app's public address with a launch code
/// (docs/apps.md, the web launch).
pub const APP_AUTH_CALLBACK_PATH: &str = "/__devtrust/auth";

use std::sync::Arc;

use dt_tls::CheckServer;
use dt_types::ServiceKind;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

use crate::connect::ClientError;

/// The access point's service certificate: the host CA's, naming the expected kind and name.
#[derive(Debug)]
struct ServiceCheck {
    host_ca_der: Vec<u8>,
    kind: ServiceKind,
    name: String,
}

use dt_tls::error as tls_err;

impl CheckServer for ServiceCheck {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
        _provider: &CryptoProvider,
    ) -> Result<(), rustls::Error> {
        let now = time::OffsetDateTime::from_unix_timestamp(now.as_secs() as i64)
            .map_err(|e| tls_err(e.to_string()))?;
        let id = dt_ca::verify_service_cert_by_ca_cert(&self.host_ca_der, end_entity.as_ref(), now)
            .map_err(|e| tls_err(format!("the access point's certificate is refused: {e}")))?;
        if id.kind != self.kind || id.name != self.name {
            return Err(tls_err(format!(
                "expected the {} access point {:?}, but the certificate names {} {:?}",
                self.kind, self.name, id.kind, id.name
            )));
        }
        Ok(())
    }
}

/// A connector for the access point `kind`/`name`, with the user's certificate and key.
pub fn connector(
    host_ca_der: Vec<u8>,
    kind: ServiceKind,
    name: &str,
    cert_der: Vec<u8>,
    key_pkcs8_der: Vec<u8>,
) -> Result<tokio_rustls::TlsConnector, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(dt_tls::Verifier::new(
        ServiceCheck {
            host_ca_der,
            kind,
            name: name.to_string(),
        },
        provider.clone(),
    ));
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(
            vec![CertificateDer::from(cert_der)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8_der)),
        )
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

/// The name the handshake carries (the verifier checks the certificate's own name).
pub fn server_name(name: &str) -> ServerName<'static> {
    ServerName::try_from(name.to_string())
        .unwrap_or(ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use dt_ca::{CaKind, CertAuthority, ClientKey};
    use rustls::client::danger::ServerCertVerifier;

    fn verify(host_ca: &CertAuthority, expect: &str, cert: &[u8]) -> Result<(), rustls::Error> {
        let v = dt_tls::Verifier::new(
            ServiceCheck {
                host_ca_der: host_ca.cert_der().to_vec(),
                kind: ServiceKind::Db,
                name: expect.into(),
            },
            Arc::new(rustls::crypto::ring::default_provider()),
        );
        v.verify_server_cert(
            &CertificateDer::from(cert.to_vec()),
            &[],
            &server_name(expect),
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
    }

    #[test]
    fn only_the_named_database_access_point_is_accepted() {
        let now = time::OffsetDateTime::now_utc();
        let host = CertAuthority::generate("c", CaKind::Host, now).unwrap();
        let key = ClientKey::generate().unwrap();
        let until = now + time::Duration::days(1);
        let issue = |ca: &CertAuthority, name: &str, kind| {
            ca.issue_node_client_cert(&key.spki_der(), name, kind, until)
                .unwrap()
        };
        verify(&host, "pg1", &issue(&host, "pg1", ServiceKind::Db)).unwrap();
        // Another database, an SSH node of the same name, another cluster's host CA.
        let e = verify(&host, "pg1", &issue(&host, "pg2", ServiceKind::Db)).unwrap_err();
        assert!(e.to_string().contains("names db \"pg2\""), "{e}");
        assert!(verify(&host, "pg1", &issue(&host, "pg1", ServiceKind::Node)).is_err());
        let other = CertAuthority::generate("other", CaKind::Host, now).unwrap();
        assert!(verify(&host, "pg1", &issue(&other, "pg1", ServiceKind::Db)).is_err());
        // A TLS server certificate of the right CA is no service certificate.
        let server = host
            .issue_tls_server_cert(&key.spki_der(), &["pg1".into()], &[], until)
            .unwrap();
        assert!(verify(&host, "pg1", &server).is_err());
    }
}
