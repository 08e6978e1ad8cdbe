//! rustls plumbing shared by devtrust's TLS clients (the auth service pin, access points'
//! service certificates, the Kubernetes serving certificate, PostgreSQL storage, HTTPS apps).
//!
//! Each client states only how it checks the server's certificate, as a [`CheckServer`];
//! [`Verifier`] turns that into a rustls verifier whose handshake signatures are checked
//! the one standard way, by the crypto provider's algorithms. So no client can get the
//! signature half wrong, and none repeats it.

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// How one client checks the certificate a server presented.
pub trait CheckServer: std::fmt::Debug + Send + Sync {
    /// `Ok` when the server may be talked to. `provider` is the connection's crypto provider
    /// (for chain checks that need its signature algorithms).
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
        provider: &CryptoProvider,
    ) -> Result<(), rustls::Error>;
}

/// A rustls server-certificate verifier made of a [`CheckServer`].
#[derive(Debug)]
pub struct Verifier<C> {
    /// The check (clients read what it recorded, e.g. the chain it saw).
    pub check: C,
    provider: Arc<CryptoProvider>,
}

impl<C: CheckServer> Verifier<C> {
    pub fn new(check: C, provider: Arc<CryptoProvider>) -> Self {
        Verifier { check, provider }
    }
}

/// A TLS error with a message for people.
pub fn error(msg: impl Into<String>) -> rustls::Error {
    rustls::Error::General(msg.into())
}

impl<C: CheckServer> ServerCertVerifier for Verifier<C> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check.check(
            end_entity,
            intermediates,
            server_name,
            ocsp,
            now,
            &self.provider,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
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
        dss: &DigitallySignedStruct,
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

/// Accepts any certificate: for what its user explicitly asked not to check (`--insecure`,
/// `insecure_skip_verify`, encryption-only PostgreSQL modes).
#[derive(Debug)]
pub struct NoCheck;

impl CheckServer for NoCheck {
    fn check(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
        _: &CryptoProvider,
    ) -> Result<(), rustls::Error> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[derive(Debug)]
    struct Refuse;

    impl CheckServer for Refuse {
        fn check(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
            _: &CryptoProvider,
        ) -> Result<(), rustls::Error> {
            Err(error("refused by the check"))
        }
    }

    #[test]
    fn the_check_decides_and_the_provider_names_the_schemes() {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let name = ServerName::try_from("example.com").unwrap();
        let cert = CertificateDer::from(vec![0u8; 4]);
        let refuse = Verifier::new(Refuse, provider.clone());
        let err = refuse
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
            .unwrap_err();
        assert!(err.to_string().contains("refused by the check"), "{err}");
        let any = Verifier::new(NoCheck, provider.clone());
        assert!(
            any.verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
                .is_ok()
        );
        assert_eq!(
            any.supported_verify_schemes(),
            provider
                .signature_verification_algorithms
                .supported_schemes()
        );
    }
}
