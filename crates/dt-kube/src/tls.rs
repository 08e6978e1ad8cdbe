//! TLS of the Kubernetes access point's listener.
//!
//! The access point presents two certificates for the one key it joined with: first a
//! self-signed serverAuth certificate naming the addresses kubectl dials (Go's TLS stack
//! needs subjectAltNames and serverAuth), then its host-CA service certificate (kind `kube`,
//! its name). `dtsh kube login` accepts the first only when its key is the key of the
//! second, which the host CA vouches for, and then pins it in the kubeconfig
//! (`certificate-authority-data`).
//!
//! Clients authenticate with a certificate of the cluster's user CA. A connection without
//! one is let through the handshake so that every request can be answered with a
//! `Status` kubectl prints (401, "log in with dtsh"); a certificate of another CA fails the
//! handshake.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use dt_agent::AgentError;
use dt_agent::identity::ServiceIdentity;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

/// How long a serving certificate is valid; renewed at start when less than a quarter is left.
const SERVING_VALIDITY: time::Duration = time::Duration::days(365);

const SERVING_CERT: &str = "kube-serving.crt";
const SERVING_NAMES: &str = "kube-serving.names";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The serving certificate for `names` (DNS names and IP addresses), kept in the data dir so
/// kubeconfigs written by `dtsh kube login` stay valid across restarts; issued again when
/// the names, the key or the validity no longer fit.
pub fn serving_cert(
    id: &ServiceIdentity,
    data_dir: &Path,
    names: &[String],
) -> Result<Vec<u8>, AgentError> {
    let mut names = names.to_vec();
    names.sort();
    names.dedup();
    let joined = names.join("\n");
    let cert_path = data_dir.join(SERVING_CERT);
    let names_path = data_dir.join(SERVING_NAMES);
    let now = OffsetDateTime::now_utc();
    if let (Ok(pem), Ok(saved)) = (
        std::fs::read_to_string(&cert_path),
        std::fs::read_to_string(&names_path),
    ) && saved == joined
        && let Ok(der) = dt_ca::pem::parse_cert_pem(&pem)
        && dt_ca::cert_spki_der(&der).is_ok_and(|s| s == id.key.spki_der())
        && x509_not_after(&der).is_some_and(|na| na - now > SERVING_VALIDITY / 4)
    {
        return Ok(der);
    }
    let (dns, ips): (Vec<String>, Vec<IpAddr>) =
        names
            .iter()
            .fold((Vec::new(), Vec::new()), |(mut d, mut i), n| {
                match n.parse::<IpAddr>() {
                    Ok(ip) => i.push(ip),
                    Err(_) => d.push(n.clone()),
                }
                (d, i)
            });
    let der = dt_ca::self_signed_serving_cert(
        &id.key,
        &id.meta.name,
        &dns,
        &ips,
        now - time::Duration::minutes(5),
        now + SERVING_VALIDITY,
    )
    .map_err(|e| AgentError::Config(format!("serving certificate: {e}")))?;
    dt_agent::identity::write_private(
        &cert_path,
        dt_ca::pem::to_pem("CERTIFICATE", &der).as_bytes(),
    )?;
    dt_agent::identity::write_private(&names_path, joined.as_bytes())?;
    Ok(der)
}

fn x509_not_after(der: &[u8]) -> Option<OffsetDateTime> {
    // The serving certificate is ours; read its NotAfter through the CA crate's parser.
    dt_ca::cert_not_after(der).ok()
}

/// The server name `dtsh kube login` sends to get the host-CA certificate too.
use dt_client::access_point::KUBE_PIN_SERVER_NAME as PIN_SERVER_NAME;

/// Picks the chain by the client's server name.
#[derive(Debug)]
struct Resolver {
    plain: Arc<CertifiedKey>,
    with_service: Arc<CertifiedKey>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(if hello.server_name() == Some(PIN_SERVER_NAME) {
            self.with_service.clone()
        } else {
            self.plain.clone()
        })
    }
}

/// Client certificates: a devtrust user certificate (user CA) alone, or a self-signed
/// certificate followed by a devtrust user certificate **for the same key** (what
/// `dtsh kube credentials` gives kubectl, whose TLS stack cannot parse devtrust
/// certificates). The TLS handshake proves possession of the leaf's key, which is then the
/// certified key; the identity is always read from the user-CA certificate
/// ([`verified_user_cert`]), never from the self-signed one.
#[derive(Debug)]
pub struct UserCertVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl UserCertVerifier {
    pub fn new(user_ca_der: Vec<u8>) -> Result<UserCertVerifier, AgentError> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(user_ca_der))
            .map_err(|e| AgentError::Config(format!("user CA certificate: {e}")))?;
        let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .map_err(|e| AgentError::Config(format!("client verifier: {e}")))?;
        Ok(UserCertVerifier {
            inner,
            provider: provider(),
        })
    }

    /// The certificate of `chain` that the user CA vouches for, whose key is the leaf's.
    pub fn verified_user_cert<'c>(
        &self,
        chain: &'c [CertificateDer<'c>],
        now: UnixTime,
    ) -> Result<&'c CertificateDer<'c>, rustls::Error> {
        let (leaf, rest) = chain
            .split_first()
            .ok_or(rustls::Error::NoCertificatesPresented)?;
        match self.inner.verify_client_cert(leaf, rest, now) {
            Ok(_) => Ok(leaf),
            Err(direct) => {
                let Some(user_cert) = rest.first() else {
                    return Err(direct);
                };
                self.inner.verify_client_cert(user_cert, &[], now)?;
                let same_key = dt_ca::cert_spki_der(leaf.as_ref())
                    .ok()
                    .zip(dt_ca::cert_spki_der(user_cert.as_ref()).ok())
                    .is_some_and(|(a, b)| a == b);
                if !same_key {
                    return Err(rustls::Error::General(
                        "the client certificate's key is not the devtrust certificate's".into(),
                    ));
                }
                Ok(user_cert)
            }
        }
    }
}

impl ClientCertVerifier for UserCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    /// Requests without a certificate get a `Status` that says to log in.
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone()];
        chain.extend(intermediates.iter().cloned());
        self.verified_user_cert(&chain, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The listener's TLS: the serving certificate (then the host-CA one, for `dtsh`), and
/// user-CA clients through [`UserCertVerifier`].
pub fn acceptor(
    id: &ServiceIdentity,
    serving_der: Vec<u8>,
) -> Result<(tokio_rustls::TlsAcceptor, Arc<UserCertVerifier>), AgentError> {
    let user_ca = id.user_ca()?;
    let verifier = Arc::new(UserCertVerifier::new(user_ca)?);
    let key = provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            id.key.pkcs8_der().to_vec(),
        )))
        .map_err(|e| AgentError::Config(format!("our key: {e}")))?;
    let serving = CertificateDer::from(serving_der);
    let resolver = Resolver {
        plain: Arc::new(CertifiedKey::new(vec![serving.clone()], key.clone())),
        with_service: Arc::new(CertifiedKey::new(
            vec![serving, CertificateDer::from(id.tls_cert_der.clone())],
            key,
        )),
    };
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| AgentError::Config(format!("tls: {e}")))?
        .with_client_cert_verifier(verifier.clone())
        .with_cert_resolver(Arc::new(resolver));
    // HTTP/1.1 only: exec, attach and port-forward upgrade the connection.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(cfg)), verifier))
}

#[cfg(test)]
mod tests {
    //! The front-certificate rule, both ways: the identity always comes from the user-CA
    //! certificate, and only when the front certificate is for the same key.

    use super::*;

    struct Pki {
        ca: dt_ca::CertAuthority,
        verifier: UserCertVerifier,
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn pki() -> Pki {
        let ca = dt_ca::CertAuthority::generate(
            "example",
            dt_ca::CaKind::User,
            now() - time::Duration::hours(1),
        )
        .unwrap();
        let verifier = UserCertVerifier::new(ca.cert_der().to_vec()).unwrap();
        Pki { ca, verifier }
    }

    fn user_cert(ca: &dt_ca::CertAuthority, key: &dt_ca::ClientKey, name: &str) -> Vec<u8> {
        ca.issue_x509_client_cert(
            &key.spki_der(),
            &dt_ca::Identity {
                username: name.parse().unwrap(),
                roles: vec!["access".into()],
                logins: vec![],
                bot: false,
                trait_logins: vec![],
                device: None,
                not_before: now() - time::Duration::minutes(5),
                not_after: now() + time::Duration::hours(1),
            },
        )
        .unwrap()
    }

    fn front(key: &dt_ca::ClientKey, name: &str) -> Vec<u8> {
        dt_ca::self_signed_client_cert(
            key,
            name,
            now() - time::Duration::minutes(5),
            now() + time::Duration::hours(1),
        )
        .unwrap()
    }

    fn identity_of(p: &Pki, chain: Vec<Vec<u8>>) -> Result<String, rustls::Error> {
        let chain: Vec<CertificateDer<'static>> =
            chain.into_iter().map(CertificateDer::from).collect();
        let der = p.verifier.verified_user_cert(&chain, UnixTime::now())?;
        Ok(dt_ca::parse_x509_identity(der.as_ref())
            .unwrap()
            .username
            .into_string())
    }

    #[test]
    fn a_devtrust_certificate_alone_passes() {
        let p = pki();
        let k = dt_ca::ClientKey::generate().unwrap();
        assert_eq!(
            identity_of(&p, vec![user_cert(&p.ca, &k, "alice")]).unwrap(),
            "alice"
        );
    }

    #[test]
    fn a_front_certificate_for_the_same_key_passes_and_claims_nothing() {
        let p = pki();
        let k = dt_ca::ClientKey::generate().unwrap();
        // The front certificate names someone else: the identity is still alice's.
        let chain = vec![front(&k, "admin"), user_cert(&p.ca, &k, "alice")];
        assert_eq!(identity_of(&p, chain).unwrap(), "alice");
    }

    #[test]
    fn a_front_certificate_for_another_key_is_refused() {
        let p = pki();
        let alice = dt_ca::ClientKey::generate().unwrap();
        let mallory = dt_ca::ClientKey::generate().unwrap();
        // Mallory holds her own key and a copy of alice's (public) certificate.
        let chain = vec![front(&mallory, "alice"), user_cert(&p.ca, &alice, "alice")];
        let e = identity_of(&p, chain).unwrap_err();
        assert!(
            e.to_string().contains("not the devtrust certificate's"),
            "{e}"
        );
    }

    #[test]
    fn another_cas_certificate_is_refused_alone_and_behind_a_front() {
        let p = pki();
        let other = pki();
        let k = dt_ca::ClientKey::generate().unwrap();
        assert!(identity_of(&p, vec![user_cert(&other.ca, &k, "alice")]).is_err());
        assert!(
            identity_of(
                &p,
                vec![front(&k, "alice"), user_cert(&other.ca, &k, "alice")]
            )
            .is_err()
        );
        assert!(
            identity_of(&p, vec![front(&k, "alice")]).is_err(),
            "a front alone"
        );
        assert!(identity_of(&p, vec![]).is_err());
    }
}
