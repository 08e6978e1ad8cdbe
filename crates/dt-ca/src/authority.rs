//! The certificate authority: its key, its self-signed X.509 certificate, its SSH public key,
//! and how it is stored.

use std::fmt;

use ring::digest;
use serde::{Deserialize, Serialize};
use ssh_key::public::KeyData;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer as _, ParsedExtension, X509Certificate};

use crate::error::{CaError, Result};
use crate::key::{self, P256Key};
use crate::x509::{self, oid};
use crate::{asn1, pem};

/// How long a generated CA certificate is valid.
pub const CA_VALIDITY: Duration = Duration::days(3650);

/// Which of the cluster's authorities this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaKind {
    /// Signs user SSH certificates and user X.509 client certificates.
    User,
    /// Signs host SSH certificates and TLS server certificates.
    Host,
    /// Signs database server certificates (`dtctl auth sign --format=db`) and the
    /// short-lived client certificates database access points log in with; database
    /// servers trust it and nothing else does.
    Db,
    /// Signs the JWTs app access points forward to apps (`devtrust-jwt-assertion`); apps
    /// verify them with the keys at `/.well-known/jwks.json`. Its certificate vouches for
    /// nothing.
    Jwt,
}

impl fmt::Display for CaKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CaKind::User => "user",
            CaKind::Host => "host",
            CaKind::Db => "db",
            CaKind::Jwt => "jwt",
        })
    }
}

/// A PEM-encoded private key. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretPem(String);

impl SecretPem {
    /// Wraps a PEM text.
    pub fn new(pem: String) -> Self {
        Self(pem)
    }

    /// The PEM text. Do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

/// What the storage backend persists for one CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredCa {
    /// The cluster name.
    pub cluster: String,
    /// User or host CA.
    pub kind: CaKind,
    /// The CA key, PKCS#8 `PRIVATE KEY` PEM. Secret.
    pub key_pkcs8_pem: SecretPem,
    /// The self-signed CA certificate, `CERTIFICATE` PEM.
    pub cert_pem: String,
}

/// One certificate authority of a cluster, ready to sign.
///
/// The key pair is parsed once and kept, so issuing and augmenting cost one ECDSA signature
/// each and verifying one ECDSA verification (ring), plus encoding.
pub struct CertAuthority {
    pub(crate) cluster: String,
    pub(crate) kind: CaKind,
    pub(crate) key: P256Key,
    pub(crate) cert_der: Vec<u8>,
    /// The CA certificate's Subject `Name` DER: the Issuer of everything it signs.
    pub(crate) subject_der: Vec<u8>,
    /// The CA certificate's subject key identifier, used as authority key identifier.
    pub(crate) key_id: Vec<u8>,
    pub(crate) ssh_key: KeyData,
    ssh_line: String,
    pin: String,
    /// The CA certificate's NotBefore: host certificates start there.
    pub(crate) not_before: OffsetDateTime,
}

impl fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertAuthority")
            .field("cluster", &self.cluster)
            .field("kind", &self.kind)
            .field("pin", &self.pin)
            .field("key", &"<secret>")
            .finish()
    }
}

impl CertAuthority {
    /// A new CA with a fresh P-256 key and a self-signed certificate valid from `now` for
    /// [`CA_VALIDITY`]. CN is `"<cluster> <kind> CA"`.
    pub fn generate(cluster: &str, kind: CaKind, now: OffsetDateTime) -> Result<Self> {
        if cluster.is_empty() || cluster.chars().any(char::is_control) {
            return Err(CaError::InvalidIdentity(format!(
                "cluster name {cluster:?} is empty or has control characters"
            )));
        }
        let key = P256Key::generate()?;
        let spki = key::spki_from_point(key.point());
        let key_id = key_identifier(key.point());
        let subject = x509::name(&[(&oid::COMMON_NAME, &ca_common_name(cluster, kind))]);
        let not_before = x509::whole_seconds(now);
        let serial = x509::random_serial(&key)?;
        let extensions = [
            x509::extension(
                &oid::BASIC_CONSTRAINTS,
                true,
                // cA TRUE, pathLenConstraint 0: this CA signs end-entity certificates only.
                &asn1::sequence(&[&asn1::boolean(true), &asn1::small_uint(0)]),
            ),
            x509::extension(
                &oid::KEY_USAGE,
                true,
                &asn1::named_bits(&[
                    x509::KU_DIGITAL_SIGNATURE,
                    x509::KU_KEY_CERT_SIGN,
                    x509::KU_CRL_SIGN,
                ]),
            ),
            x509::extension(
                &oid::SUBJECT_KEY_IDENTIFIER,
                false,
                &asn1::octet_string(&key_id),
            ),
        ];
        let tbs = x509::tbs_certificate(&x509::TbsSpec {
            serial: &serial,
            issuer: &subject,
            not_before,
            not_after: not_before + CA_VALIDITY,
            subject: &subject,
            spki: &spki,
            extensions: &extensions,
        })?;
        let cert_der = x509::sign_certificate(&key, &tbs)?;
        Self::assemble(cluster.to_owned(), kind, key, cert_der)
    }

    /// Loads a stored CA, checking that key and certificate belong together, that the
    /// certificate is a self-signed CA certificate, and that its CN names this cluster and kind.
    pub fn from_stored(stored: &StoredCa) -> Result<Self> {
        let key_der = pem::parse_pem(stored.key_pkcs8_pem.expose(), pem::PRIVATE_KEY)
            .map_err(|e| CaError::InvalidStoredCa(e.to_string()))?;
        let key = P256Key::from_pkcs8_der(&key_der)
            .map_err(|e| CaError::InvalidStoredCa(e.to_string()))?;
        let cert_der = pem::parse_cert_pem(&stored.cert_pem)
            .map_err(|e| CaError::InvalidStoredCa(e.to_string()))?;
        Self::assemble(stored.cluster.clone(), stored.kind, key, cert_der)
    }

    /// What the storage backend persists.
    pub fn to_stored(&self) -> StoredCa {
        StoredCa {
            cluster: self.cluster.clone(),
            kind: self.kind,
            key_pkcs8_pem: SecretPem::new(pem::to_pem(pem::PRIVATE_KEY, self.key.pkcs8_der())),
            cert_pem: self.cert_pem(),
        }
    }

    fn assemble(cluster: String, kind: CaKind, key: P256Key, cert_der: Vec<u8>) -> Result<Self> {
        let bad = |reason: &str| CaError::InvalidStoredCa(reason.to_owned());
        let (subject_der, key_id, pin, ssh_key, not_before) = {
            let (rest, cert) = X509Certificate::from_der(&cert_der).map_err(|e| {
                CaError::InvalidStoredCa(format!("ca certificate does not parse: {e}"))
            })?;
            if !rest.is_empty() {
                return Err(bad("trailing bytes after the ca certificate"));
            }
            let spki = cert.public_key().raw;
            let point = key::point_from_spki(spki)
                .map_err(|_| bad("ca certificate key is not an ecdsa p-256 key"))?;
            if point != key.point() {
                return Err(bad("ca key does not match the ca certificate"));
            }
            if !cert.is_ca() {
                return Err(bad("certificate is not a ca certificate"));
            }
            if cert.subject().as_raw() != cert.issuer().as_raw()
                || !key::verify_asn1(
                    point,
                    cert.tbs_certificate.as_ref(),
                    &cert.signature_value.data,
                )
            {
                return Err(bad("ca certificate is not self-signed by the ca key"));
            }
            let expected_cn = ca_common_name(&cluster, kind);
            let mut cns = cert.subject().iter_common_name();
            let cn = cns.next().and_then(|cn| cn.as_str().ok());
            if cn != Some(expected_cn.as_str()) || cns.next().is_some() {
                return Err(CaError::InvalidStoredCa(format!(
                    "ca certificate is named {cn:?}, expected {expected_cn:?}"
                )));
            }
            let key_id = match cert.tbs_certificate.get_extension_unique(&oid_ski()) {
                Ok(Some(ext)) => match ext.parsed_extension() {
                    ParsedExtension::SubjectKeyIdentifier(id) => id.0.to_vec(),
                    _ => return Err(bad("unparsable subject key identifier")),
                },
                Ok(None) => key_identifier(point),
                Err(_) => return Err(bad("duplicate subject key identifier")),
            };
            let pin = format!(
                "sha256:{}",
                hex::encode(digest::digest(&digest::SHA256, spki).as_ref())
            );
            let subject_der = cert.subject().as_raw().to_vec();
            let ssh_key = key::ssh_key_data_from_point(point)?;
            (
                subject_der,
                key_id,
                pin,
                ssh_key,
                cert.validity().not_before.to_datetime(),
            )
        };
        let ssh_line = ssh_key::PublicKey::new(ssh_key.clone(), "")
            .to_openssh()
            .map_err(|e| CaError::malformed("ssh public key", e.to_string()))?;
        Ok(Self {
            not_before,
            ssh_line,
            cluster,
            kind,
            key,
            cert_der,
            subject_der,
            key_id,
            ssh_key,
            pin,
        })
    }

    /// The cluster this CA belongs to.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// User or host CA.
    pub fn kind(&self) -> CaKind {
        self.kind
    }

    /// `sha256:` + lowercase hex of SHA-256 over the CA certificate's SubjectPublicKeyInfo DER
    /// (what `openssl x509 -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum`
    /// prints). Clients pin the cluster with it (DESIGN.md §8).
    pub fn pin(&self) -> String {
        self.pin.clone()
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA certificate, `CERTIFICATE` PEM.
    pub fn cert_pem(&self) -> String {
        pem::to_pem(pem::CERTIFICATE, &self.cert_der)
    }

    /// The SSH CA public key.
    pub fn ssh_public_key(&self) -> ssh_key::PublicKey {
        ssh_key::PublicKey::new(self.ssh_key.clone(), "")
    }

    /// The SSH CA public key as one line, `ecdsa-sha2-nistp256 AAAA...` (for `TrustedUserCAKeys`
    /// or after `@cert-authority *` in `known_hosts`). No trailing newline.
    pub fn ssh_public_key_openssh(&self) -> String {
        self.ssh_line.clone()
    }

    pub(crate) fn require_kind(&self, operation: &'static str, expected: CaKind) -> Result<()> {
        if self.kind == expected {
            Ok(())
        } else {
            Err(CaError::WrongCaKind {
                operation,
                expected,
                actual: self.kind,
            })
        }
    }
}

fn ca_common_name(cluster: &str, kind: CaKind) -> String {
    format!("{cluster} {kind} CA")
}

fn oid_ski() -> x509_parser::der_parser::Oid<'static> {
    x509_parser::oid_registry::OID_X509_EXT_SUBJECT_KEY_IDENTIFIER
}

/// Key identifier per RFC 7093 §2 method 1: the leftmost 160 bits of the SHA-256 of the
/// subjectPublicKey bits.
fn key_identifier(point: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, point).as_ref()[..20].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::NOW;

    #[test]
    fn generated_ca_certificate_has_the_promised_shape() {
        let ca = CertAuthority::generate("example", CaKind::User, NOW).unwrap();
        let (rest, cert) = X509Certificate::from_der(ca.cert_der()).unwrap();
        assert!(rest.is_empty());
        assert_eq!(cert.version(), x509_parser::x509::X509Version::V3);
        assert_eq!(cert.subject().to_string(), "CN=example user CA", "subject");
        assert_eq!(cert.subject(), cert.issuer());
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(bc.critical && bc.value.ca);
        let ku = cert.key_usage().unwrap().unwrap();
        assert!(ku.critical);
        assert!(ku.value.key_cert_sign() && ku.value.crl_sign() && ku.value.digital_signature());
        assert!(!ku.value.key_encipherment());
        assert_eq!(cert.validity().not_before.to_datetime(), NOW);
        assert_eq!(cert.validity().not_after.to_datetime(), NOW + CA_VALIDITY);
        // The serial is positive and 16 octets.
        assert_eq!(cert.raw_serial().len(), 16);
        assert!(cert.raw_serial()[0] & 0x80 == 0);
        // x509-parser's own verifier (ring) agrees with ours.
        cert.verify_signature(None).unwrap();
        // The host CA says so.
        let host = CertAuthority::generate("example", CaKind::Host, NOW).unwrap();
        let (_, cert) = X509Certificate::from_der(host.cert_der()).unwrap();
        assert_eq!(cert.subject().to_string(), "CN=example host CA");
    }

    #[test]
    fn stored_round_trip_keeps_everything() {
        let ca = CertAuthority::generate("example", CaKind::Host, NOW).unwrap();
        let stored = ca.to_stored();
        assert!(!format!("{stored:?}").contains("PRIVATE KEY"));
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
        let json = serde_json::to_string(&stored).unwrap();
        assert!(json.contains("\"kind\":\"host\""));
        let back: StoredCa = serde_json::from_str(&json).unwrap();
        let again = CertAuthority::from_stored(&back).unwrap();
        assert_eq!(again.cert_der(), ca.cert_der());
        assert_eq!(again.pin(), ca.pin());
        assert_eq!(again.key_id, ca.key_id);
        assert_eq!(again.subject_der, ca.subject_der);
        assert_eq!(again.ssh_public_key_openssh(), ca.ssh_public_key_openssh());
    }

    #[test]
    fn from_stored_refuses_mismatches() {
        let a = CertAuthority::generate("example", CaKind::User, NOW).unwrap();
        let b = CertAuthority::generate("example", CaKind::User, NOW).unwrap();
        // Key of one, certificate of the other.
        let mut mixed = a.to_stored();
        mixed.cert_pem = b.cert_pem();
        assert!(matches!(
            CertAuthority::from_stored(&mixed),
            Err(CaError::InvalidStoredCa(m)) if m.contains("does not match")
        ));
        // Wrong cluster name or kind.
        let mut renamed = a.to_stored();
        renamed.cluster = "other".into();
        assert!(CertAuthority::from_stored(&renamed).is_err());
        let mut rekinded = a.to_stored();
        rekinded.kind = CaKind::Host;
        assert!(CertAuthority::from_stored(&rekinded).is_err());
        // Garbage.
        let mut garbage = a.to_stored();
        garbage.key_pkcs8_pem = SecretPem::new("nope".into());
        assert!(CertAuthority::from_stored(&garbage).is_err());
        assert!(CertAuthority::generate("", CaKind::User, NOW).is_err());
    }

    #[test]
    fn pin_is_sha256_of_the_spki_as_x509_parser_sees_it() {
        let ca = CertAuthority::generate("example", CaKind::User, NOW).unwrap();
        let (_, cert) = X509Certificate::from_der(ca.cert_der()).unwrap();
        let spki = cert.public_key().raw;
        let expected = format!(
            "sha256:{}",
            hex::encode(digest::digest(&digest::SHA256, spki))
        );
        assert_eq!(ca.pin(), expected);
        assert_eq!(ca.pin().len(), "sha256:".len() + 64);
        // Stable across store/load.
        let again = CertAuthority::from_stored(&ca.to_stored()).unwrap();
        assert_eq!(again.pin(), ca.pin());
    }

    #[test]
    fn pin_matches_openssl() {
        use std::process::Command;
        let Ok(out) = Command::new("openssl").arg("version").output() else {
            eprintln!("openssl not installed; skipping");
            return;
        };
        assert!(out.status.success());
        let ca = CertAuthority::generate("example", CaKind::User, NOW).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert_path = dir.path().join("ca.pem");
        let pub_path = dir.path().join("pub.der");
        std::fs::write(&cert_path, ca.cert_pem()).unwrap();
        let pubkey = Command::new("openssl")
            .args(["x509", "-pubkey", "-noout", "-in"])
            .arg(&cert_path)
            .output()
            .unwrap();
        assert!(pubkey.status.success());
        let pem_path = dir.path().join("pub.pem");
        std::fs::write(&pem_path, &pubkey.stdout).unwrap();
        let der = Command::new("openssl")
            .args(["pkey", "-pubin", "-outform", "DER", "-in"])
            .arg(&pem_path)
            .arg("-out")
            .arg(&pub_path)
            .output()
            .unwrap();
        assert!(der.status.success());
        let spki = std::fs::read(&pub_path).unwrap();
        let expected = format!(
            "sha256:{}",
            hex::encode(digest::digest(&digest::SHA256, &spki))
        );
        assert_eq!(ca.pin(), expected);
    }

    #[test]
    fn ssh_public_key_line() {
        let ca = CertAuthority::generate("example", CaKind::User, NOW).unwrap();
        let line = ca.ssh_public_key_openssh();
        assert!(line.starts_with("ecdsa-sha2-nistp256 AAAA"), "{line}");
        assert!(!line.ends_with('\n'));
        assert_eq!(line.split(' ').count(), 2, "{line:?}");
        assert_eq!(
            ssh_key::PublicKey::from_openssh(&line).unwrap().key_data(),
            &ca.ssh_key
        );
    }
}
