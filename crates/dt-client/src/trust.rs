//! Server certificate verification by CA pin.
//!
//! The auth server presents `[server cert, host CA cert]`. We accept the chain only if the
//! last certificate's SPKI hashes to the pin we expect, the server certificate is signed by
//! it (webpki path validation, serverAuth) and names the host we dialled. In `Capture` mode
//! the chain is recorded and the handshake refused, so the caller can show the pin and ask.

use std::sync::Mutex;

use dt_tls::CheckServer;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

/// `sha256:<hex>` of a certificate's SubjectPublicKeyInfo.
pub fn spki_pin(cert_der: &[u8]) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| format!("unreadable CA certificate: {e}"))?;
    Ok(format!(
        "sha256:{}",
        hex::encode(Sha256::digest(cert.tbs_certificate.subject_pki.raw))
    ))
}

#[derive(Clone, Debug)]
pub enum TrustPolicy {
    /// Accept only a chain ending in a CA with this pin.
    Pin(String),
    /// Record the chain and refuse (first contact without a pin).
    Capture,
    /// Accept anything (labs only; the CLI warns).
    Insecure,
}

/// The auth service's certificate checked by CA pin ([`TrustPolicy`]).
#[derive(Debug)]
pub struct PinCheck {
    policy: TrustPolicy,
    /// The last chain seen (Capture mode reads it after the failed handshake).
    pub captured: Mutex<Option<Vec<Vec<u8>>>>,
}

/// The rustls verifier of connections to the auth service.
pub type PinVerifier = dt_tls::Verifier<PinCheck>;

impl PinCheck {
    pub fn new(policy: TrustPolicy) -> Self {
        PinCheck {
            policy,
            captured: Mutex::new(None),
        }
    }

    pub fn captured_chain(&self) -> Option<Vec<Vec<u8>>> {
        self.captured.lock().ok().and_then(|c| c.clone())
    }
}

use dt_tls::error as tls_err;

impl CheckServer for PinCheck {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
        provider: &CryptoProvider,
    ) -> Result<(), rustls::Error> {
        let mut chain = vec![end_entity.as_ref().to_vec()];
        chain.extend(intermediates.iter().map(|c| c.as_ref().to_vec()));
        if let Ok(mut c) = self.captured.lock() {
            *c = Some(chain);
        }
        let pin = match &self.policy {
            TrustPolicy::Insecure => return Ok(()),
            TrustPolicy::Capture => return Err(tls_err("server CA not yet trusted")),
            TrustPolicy::Pin(p) => p,
        };
        let ca = intermediates
            .last()
            .ok_or_else(|| tls_err("server sent no CA certificate; is this a devtrust server?"))?;
        let got = spki_pin(ca.as_ref()).map_err(tls_err)?;
        if !got.eq_ignore_ascii_case(pin) {
            return Err(tls_err(format!(
                "server CA pin {got} does not match the expected {pin}"
            )));
        }
        let anchor = webpki::anchor_from_trusted_cert(ca)
            .map_err(|e| tls_err(format!("server CA certificate unusable: {e:?}")))?;
        let ee = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| tls_err(format!("server certificate unreadable: {e:?}")))?;
        ee.verify_for_usage(
            provider.signature_verification_algorithms.all,
            &[anchor],
            &[],
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| {
            tls_err(format!(
                "server certificate not issued by the pinned CA: {e:?}"
            ))
        })?;
        ee.verify_is_valid_for_subject_name(server_name)
            .map_err(|e| {
                tls_err(format!(
                    "server certificate does not name {server_name:?}: {e:?}"
                ))
            })?;
        Ok(())
    }
}
