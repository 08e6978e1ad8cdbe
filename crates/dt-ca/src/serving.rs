//! A self-signed TLS serving certificate for a joined service's own key.
//!
//! Why: clients that verify servers with the Web PKI rules (Go's `crypto/x509` in `kubectl`)
//! need a serverAuth certificate with subjectAltNames, which the host CA's service
//! certificates (clientAuth, CN only) are not. The access point presents this certificate
//! *for the same key* as its host-CA service certificate; `dtsh` checks that the two keys
//! are the same (the TLS handshake proves possession) before it pins this certificate as
//! the server's CA in a kubeconfig. The binding to the cluster is the host-CA certificate's;
//! this certificate adds only names.

use std::net::IpAddr;

use time::OffsetDateTime;

use crate::asn1;
use crate::error::{CaError, Result};
use crate::key::{self, ClientKey};
use crate::x509::{self, KU_DIGITAL_SIGNATURE, extension, name, oid};

/// A self-signed serverAuth certificate (DER) for `key`, naming `dns_names` and `ips`
/// (subjectAltName), CN `common_name`, valid from `not_before` through `not_after`. Not a CA.
pub fn self_signed_serving_cert(
    key: &ClientKey,
    common_name: &str,
    dns_names: &[String],
    ips: &[IpAddr],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<Vec<u8>> {
    self_signed(
        key,
        common_name,
        dns_names,
        ips,
        not_before,
        not_after,
        true,
    )
}

/// A self-signed clientAuth certificate (DER) for `key`, CN `common_name`: what a TLS
/// client presents *in front of* its devtrust user certificate for the same key when its
/// TLS stack cannot parse devtrust certificates (Go's `crypto/x509` refuses the UUID
/// arcs of devtrust's attributes). It claims nothing a server may believe: a server takes
/// the identity from the user-CA certificate behind it, after checking the keys are one.
pub fn self_signed_client_cert(
    key: &ClientKey,
    common_name: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<Vec<u8>> {
    self_signed(key, common_name, &[], &[], not_before, not_after, false)
}

fn self_signed(
    key: &ClientKey,
    common_name: &str,
    dns_names: &[String],
    ips: &[IpAddr],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    server: bool,
) -> Result<Vec<u8>> {
    if not_after <= not_before {
        return Err(CaError::InvalidIdentity(
            "not_after must be later than not_before".into(),
        ));
    }
    if common_name.is_empty() || common_name.chars().any(char::is_control) {
        return Err(CaError::InvalidIdentity(format!(
            "{common_name:?} is not a certificate name"
        )));
    }
    let mut general_names = Vec::new();
    for dns in dns_names {
        let valid = !dns.is_empty()
            && dns
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !valid {
            return Err(CaError::InvalidIdentity(format!(
                "{dns:?} is not a dns name"
            )));
        }
        general_names.push(asn1::tlv(asn1::implicit(2), dns.as_bytes()));
    }
    for ip in ips {
        let octets = match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        general_names.push(asn1::tlv(asn1::implicit(7), &octets));
    }
    if server && general_names.is_empty() {
        return Err(CaError::InvalidIdentity(
            "a serving certificate needs at least one dns name or ip address".into(),
        ));
    }
    let parts: Vec<&[u8]> = general_names.iter().map(Vec::as_slice).collect();
    let subject = name(&[(&oid::COMMON_NAME, common_name)]);
    let eku = if server {
        oid::KP_SERVER_AUTH
    } else {
        oid::KP_CLIENT_AUTH
    };
    let mut extensions = vec![
        extension(&oid::BASIC_CONSTRAINTS, true, &asn1::sequence(&[])),
        extension(
            &oid::KEY_USAGE,
            true,
            &asn1::named_bits(&[KU_DIGITAL_SIGNATURE]),
        ),
        extension(
            &oid::EXT_KEY_USAGE,
            false,
            &asn1::sequence(&[&asn1::oid(&eku)]),
        ),
    ];
    if !parts.is_empty() {
        extensions.push(extension(
            &oid::SUBJECT_ALT_NAME,
            false,
            &asn1::sequence(&parts),
        ));
    }
    let spki = key::spki_from_point(key.public_point());
    let serial = x509::random_serial(key.p256())?;
    let tbs = x509::tbs_certificate(&x509::TbsSpec {
        serial: &serial,
        issuer: &subject,
        not_before: x509::whole_seconds(not_before),
        not_after: x509::whole_seconds(not_after),
        subject: &subject,
        spki: &spki,
        extensions: &extensions,
    })?;
    x509::sign_certificate(key.p256(), &tbs)
}

/// The SubjectPublicKeyInfo (DER) of a certificate, to compare the keys of two
/// certificates.
pub fn cert_spki_der(cert_der: &[u8]) -> Result<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| CaError::InvalidIdentity(format!("certificate: {e}")))?;
    Ok(cert.tbs_certificate.subject_pki.raw.to_vec())
}

/// A certificate's NotAfter.
pub fn cert_not_after(cert_der: &[u8]) -> Result<OffsetDateTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| CaError::InvalidIdentity(format!("certificate: {e}")))?;
    OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
        .map_err(|e| CaError::InvalidIdentity(format!("certificate: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::NOW;

    #[test]
    fn serving_cert_names_its_key_and_names() {
        let key = ClientKey::generate().unwrap();
        let der = self_signed_serving_cert(
            &key,
            "kube1",
            &["localhost".into()],
            &["127.0.0.1".parse().unwrap()],
            NOW,
            NOW + time::Duration::days(365),
        )
        .unwrap();
        assert_eq!(cert_spki_der(&der).unwrap(), key.spki_der());
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names.len(), 2);
        assert!(cert.verify_signature(None).is_ok(), "self-signed");
    }

    #[test]
    fn client_cert_is_for_its_key() {
        let key = ClientKey::generate().unwrap();
        let der =
            self_signed_client_cert(&key, "alice", NOW, NOW + time::Duration::hours(1)).unwrap();
        assert_eq!(cert_spki_der(&der).unwrap(), key.spki_der());
        assert_eq!(
            cert_not_after(&der).unwrap(),
            NOW + time::Duration::hours(1)
        );
    }

    #[test]
    fn serving_cert_refuses_bad_names() {
        let key = ClientKey::generate().unwrap();
        let later = NOW + time::Duration::days(1);
        assert!(self_signed_serving_cert(&key, "k", &["a b".into()], &[], NOW, later).is_err());
        assert!(self_signed_serving_cert(&key, "k", &[], &[], NOW, later).is_err());
        assert!(self_signed_serving_cert(&key, "k", &["a".into()], &[], later, NOW).is_err());
    }
}
