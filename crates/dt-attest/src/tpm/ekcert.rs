//! Endorsement key certificates (TCG EK Credential Profile for TPM Family 2.0, §3).
//!
//! An EK certificate binds an EK public key to a TPM manufacturer's CA. We check that the
//! certificate certifies *this* EK (its key equals the public area's key), is not a CA
//! certificate, is not signed with SHA-1 and has no RSA key under 2048 bits; and, when the
//! cluster lists allowed CAs, that one of them (named as its issuer, with no RSA key under
//! 2048 bits) signed it and that both are within their validity period.
//!
//! Deliberately tolerated (generic path builders reject these, the EK profile requires them):
//! - an empty subject with a **critical** SubjectAltName holding the TPM manufacturer, model
//!   and version (EK profile §3.2.9, §3.2.10);
//! - the subjectDirectoryAttributes extension (EK profile §3.2.14), critical or not.
//!
//! Every certificate listed in `ekcert_allowed_cas` is a trust anchor on its own: list the CA
//! that issues the EK certificates (often a manufacturer's intermediate). Path building
//! through unlisted intermediates and revocation are not done.

use std::time::{SystemTime, UNIX_EPOCH};

use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER, OID_X509_EXT_BASIC_CONSTRAINTS,
    OID_X509_EXT_CERTIFICATE_POLICIES, OID_X509_EXT_EXTENDED_KEY_USAGE, OID_X509_EXT_KEY_USAGE,
    OID_X509_EXT_SUBJECT_ALT_NAME, OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey as X509PublicKey;
use x509_parser::time::ASN1Time;

use super::error::{PeerMisbehaved, PolicyDenied, TpmError, Unsupported};
use super::structures::{ECC_NIST_P256, ECC_NIST_P384, PublicKey, TpmPublic};

/// Largest EK certificate we parse (real ones are 1–2 KiB; the NV index holds at most a few).
pub const MAX_EK_CERT_SIZE: usize = 8192;

/// What the EK certificate check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EkCertInfo {
    /// Serial number, lowercase hex of its big-endian bytes.
    pub serial_hex: String,
    /// Signed by an allowed CA and valid now.
    pub trusted: bool,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    bytes.get(start..).unwrap_or_default()
}

fn parse_der(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    if der.len() > MAX_EK_CERT_SIZE {
        return Err(format!(
            "{} bytes is larger than {MAX_EK_CERT_SIZE}",
            der.len()
        ));
    }
    match X509Certificate::from_der(der) {
        // RFC 5280 §4.1.1.2: signatureAlgorithm MUST equal the signed tbsCertificate's
        // `signature` field. The outer one is not signed, so a mismatch is a certificate
        // someone altered after issue (found by fuzzing the EK-certificate path).
        Ok(([], cert))
            if !same_algorithm(&cert.signature_algorithm, &cert.tbs_certificate.signature) =>
        {
            Err("signatureAlgorithm differs from the signed tbsCertificate signature field".into())
        }
        Ok(([], cert)) => Ok(cert),
        Ok((rest, _)) => Err(format!("{} bytes after the certificate", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}

fn same_algorithm(
    a: &x509_parser::x509::AlgorithmIdentifier<'_>,
    b: &x509_parser::x509::AlgorithmIdentifier<'_>,
) -> bool {
    a.algorithm == b.algorithm
        && match (&a.parameters, &b.parameters) {
            (None, None) => true,
            (Some(x), Some(y)) => x.tag() == y.tag() && x.data == y.data,
            _ => false,
        }
}

/// Parses an EK certificate (DER) on its own: what a fuzz target and the corpus replay drive.
/// Returns the serial number in hex.
pub fn parse_ek_cert(der: &[u8]) -> Result<String, TpmError> {
    let cert = parse_der(der).map_err(PeerMisbehaved::EkCertMalformed)?;
    Ok(hex(cert.raw_serial()))
}

/// The certificate's key must be the EK's key (EK profile §3.2.8: subjectPublicKeyInfo is
/// the EK public key).
fn check_key_matches(cert: &X509Certificate<'_>, ek: &TpmPublic) -> Result<(), TpmError> {
    let spki = cert.public_key();
    let parsed = spki
        .parsed()
        .map_err(|e| PeerMisbehaved::EkCertMalformed(format!("subject public key: {e}")))?;
    let matches = match (&ek.key, parsed) {
        (
            PublicKey::Rsa {
                exponent, modulus, ..
            },
            X509PublicKey::RSA(rsa),
        ) => {
            spki.algorithm.algorithm == OID_PKCS1_RSAENCRYPTION
                && strip_zeros(rsa.modulus) == strip_zeros(modulus)
                && rsa.try_exponent().ok() == Some(u64::from(*exponent))
        }
        (PublicKey::Ecc { curve, x, y, .. }, X509PublicKey::EC(point)) => {
            let (oid, len) = match *curve {
                ECC_NIST_P256 => (OID_EC_P256, 32),
                ECC_NIST_P384 => (OID_NIST_EC_P384, 48),
                _ => return Err(Unsupported::EkCertKeyType.into()),
            };
            let curve_ok = spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY
                && spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .is_some_and(|o| o == oid);
            let data = point.data();
            let (tag, coords) = data.split_first().unwrap_or((&0, &[]));
            let (cx, cy) = coords.split_at(coords.len().min(len));
            curve_ok
                && *tag == 0x04
                && coords.len() == 2 * len
                && strip_zeros(cx) == strip_zeros(x)
                && strip_zeros(cy) == strip_zeros(y)
        }
        (_, X509PublicKey::RSA(_) | X509PublicKey::EC(_)) => false,
        _ => return Err(Unsupported::EkCertKeyType.into()),
    };
    if matches {
        Ok(())
    } else {
        Err(PeerMisbehaved::EkCertKeyMismatch.into())
    }
}

/// Critical extensions we know the meaning of in an EK certificate. Anything else critical is
/// refused, as RFC 5280 §4.2 requires.
fn critical_extensions_understood(cert: &X509Certificate<'_>) -> Result<(), String> {
    let known = [
        OID_X509_EXT_SUBJECT_ALT_NAME,
        OID_X509_EXT_KEY_USAGE,
        OID_X509_EXT_EXTENDED_KEY_USAGE,
        OID_X509_EXT_BASIC_CONSTRAINTS,
        OID_X509_EXT_CERTIFICATE_POLICIES,
        OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER,
        OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
    ];
    for ext in cert.extensions() {
        // subjectDirectoryAttributes (2.5.29.9, content octets 55 1d 09): EK profile §3.2.14.
        let directory_attributes = ext.oid.as_bytes() == [0x55, 0x1d, 0x09];
        if ext.critical && !directory_attributes && !known.contains(&ext.oid) {
            return Err(format!("unsupported critical extension {}", ext.oid));
        }
    }
    Ok(())
}

fn asn1_now(now: SystemTime) -> Result<ASN1Time, TpmError> {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| TpmError::Internal("clock before 1970"))?
        .as_secs();
    let secs = i64::try_from(secs).map_err(|_| TpmError::Internal("clock out of range"))?;
    ASN1Time::from_timestamp(secs).map_err(|_| TpmError::Internal("clock out of range"))
}

fn is_ca(cert: &X509Certificate<'_>) -> bool {
    matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

/// Smallest RSA modulus we accept, in an EK certificate or the CA key that signs it.
pub const MIN_RSA_BITS: usize = 2048;

/// Signature algorithms built on SHA-1 (content octets of their OIDs): sha1WithRSAEncryption,
/// its obsolete OIW twin, ecdsa-with-SHA1 and dsa-with-sha1. SHA-1 collisions are practical,
/// so a SHA-1 signature proves nothing about who issued the certificate.
const SHA1_SIGNATURES: [&[u8]; 4] = [
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05],
    &[0x2b, 0x0e, 0x03, 0x02, 0x1d],
    &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01],
    &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x03],
];

/// An RSA key under [`MIN_RSA_BITS`], described for an error message.
fn weak_rsa_key(cert: &X509Certificate<'_>) -> Option<String> {
    match cert.public_key().parsed() {
        Ok(X509PublicKey::RSA(rsa)) if rsa.key_size() < MIN_RSA_BITS => Some(format!(
            "its rsa key has {} bits, under {MIN_RSA_BITS}",
            rsa.key_size()
        )),
        _ => None,
    }
}

/// What makes a certificate unfit to be an EK certificate whatever its issuer: a CA
/// certificate (EK profile §3.2.16: cA is false; a CA certificate for the EK key would let
/// the TPM's owner issue "EK certificates"), a SHA-1 signature, a short RSA key.
fn unfit_as_ek_cert(cert: &X509Certificate<'_>) -> Option<String> {
    if is_ca(cert) {
        return Some("it is a ca certificate (basicConstraints cA is set)".into());
    }
    if SHA1_SIGNATURES.contains(&cert.signature_algorithm.algorithm.as_bytes()) {
        return Some("it is signed with sha-1".into());
    }
    weak_rsa_key(cert)
}

/// Checks `der` against `ek` and, when `anchors` (DER CA certificates) is not empty, against
/// them. An untrusted chain with anchors configured is an error; without anchors the
/// certificate is only checked to certify this EK.
pub(crate) fn check_ek_cert(
    der: &[u8],
    ek: &TpmPublic,
    anchors: &[Vec<u8>],
    now: SystemTime,
) -> Result<EkCertInfo, TpmError> {
    let cert = parse_der(der).map_err(PeerMisbehaved::EkCertMalformed)?;
    check_key_matches(&cert, ek)?;
    if let Some(why) = unfit_as_ek_cert(&cert) {
        return Err(PolicyDenied::EkCertRefused(why).into());
    }
    let serial_hex = hex(cert.raw_serial());
    if anchors.is_empty() {
        return Ok(EkCertInfo {
            serial_hex,
            trusted: false,
        });
    }
    check_chain(&cert, anchors, now)?;
    Ok(EkCertInfo {
        serial_hex,
        trusted: true,
    })
}

/// Checks an EK certificate accepted at enrollment (so already known to certify the
/// device's EK) against the allowed CAs of today: what authentication re-checks when the
/// cluster asks for it.
pub(crate) fn recheck_ek_cert(
    der: &[u8],
    anchors: &[Vec<u8>],
    now: SystemTime,
) -> Result<(), TpmError> {
    let cert = parse_der(der).map_err(PeerMisbehaved::EkCertMalformed)?;
    if let Some(why) = unfit_as_ek_cert(&cert) {
        return Err(PolicyDenied::EkCertRefused(why).into());
    }
    check_chain(&cert, anchors, now)
}

/// One of `anchors` (not empty) issued `cert`, and both are valid at `now`.
fn check_chain(
    cert: &X509Certificate<'_>,
    anchors: &[Vec<u8>],
    now: SystemTime,
) -> Result<(), TpmError> {
    critical_extensions_understood(cert).map_err(PolicyDenied::EkCertUntrusted)?;
    let now = asn1_now(now)?;
    let mut reason = String::from("not signed by any allowed ca");
    for anchor_der in anchors {
        let anchor = parse_der(anchor_der).map_err(TpmError::Config)?;
        if !is_ca(&anchor) {
            continue;
        }
        // RFC 5280 §6.1.3 (a)(4): the issuer name must be the anchor's subject (byte for
        // byte: a CA that re-encodes its name is refused rather than guessed at).
        if cert.issuer().as_raw() != anchor.subject().as_raw() {
            continue;
        }
        if let Some(why) = weak_rsa_key(&anchor) {
            reason = format!("the issuing ca {}: {why}", anchor.subject());
            continue;
        }
        if cert.verify_signature(Some(anchor.public_key())).is_err() {
            continue;
        }
        // RFC 5280 §6.1.3 (a)(2): the certificate and its issuer must be valid now.
        if !cert.validity().is_valid_at(now) {
            reason = String::from("the ek certificate is expired or not yet valid");
            continue;
        }
        if !anchor.validity().is_valid_at(now) {
            reason = String::from("the issuing ca is expired or not yet valid");
            continue;
        }
        return Ok(());
    }
    Err(PolicyDenied::EkCertUntrusted(reason).into())
}

/// Decodes every certificate of one `ekcert_allowed_cas` entry (one or more PEM blocks) to DER.
pub(crate) fn anchors_from_pem(pem: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| format!("not valid pem: {e}"))?;
        if block.label != "CERTIFICATE" {
            return Err(format!(
                "pem block is a {:?}, expected CERTIFICATE",
                block.label
            ));
        }
        out.push(block.contents);
    }
    if out.is_empty() {
        return Err(String::from("no pem CERTIFICATE block found"));
    }
    Ok(out)
}

/// Validates one `ekcert_allowed_cas` entry when it is written: every PEM block must be a
/// parseable X.509 CA certificate. The error says what is wrong, for the admin.
pub fn validate_allowed_ca_pem(pem: &str) -> Result<(), String> {
    for (i, der) in anchors_from_pem(pem)?.iter().enumerate() {
        let cert =
            parse_der(der).map_err(|e| format!("certificate {}: not valid x.509: {e}", i + 1))?;
        if !is_ca(&cert) {
            return Err(format!(
                "certificate {} ({}) is not a ca certificate (basicConstraints cA is not set)",
                i + 1,
                cert.subject()
            ));
        }
        if let Some(why) = weak_rsa_key(&cert) {
            return Err(format!(
                "certificate {} ({}) is too weak to sign ek certificates: {why}",
                i + 1,
                cert.subject()
            ));
        }
    }
    Ok(())
}
