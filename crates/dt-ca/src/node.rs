//! Joined-service identities: an X.509 client certificate from the **host** CA, so an access
//! point (SSH node, database, Kubernetes, app, desktop) or the MDM sync service can call the
//! auth service over mutual TLS after it joined the cluster. "Node" here is meant in the wide
//! sense of the `NodeService` API: any joined service; the certificate says which kind.
//!
//! Why the host CA: a node is a host, and the user CA must never vouch for anything but users
//! (a user certificate is what grants access to nodes). The auth listener already trusts both
//! CAs at the TLS layer; [`CertAuthority::verify_node_client_cert`] is what tells a node apart
//! from the auth server's own TLS server certificate (same CA, `serverAuth` only) and from a
//! user (other CA).
//!
//! Encoding: Subject CN = service name plus one attribute `ARC.2.1` (`2.25.<devtrust uuid>.2.1`)
//! whose value is the service's kind ([`ServiceKind::as_str`]: `node`, `db`, `kube`, `app`,
//! `desktop`, `mdm`); extendedKeyUsage clientAuth; keyUsage digitalSignature; not a CA.
//! Certificates issued before kinds existed say `node`, which is still what an SSH node's
//! says. A role value this build does not know is refused, never read as `node`: a newer
//! server's kind must not gain an SSH node's rights on an older one.

use time::OffsetDateTime;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::asn1;
use crate::authority::{CaKind, CertAuthority};
use crate::error::{CaError, Result};
use crate::identity::x509_oid;
use crate::key;
use crate::x509::{self, oid};
use dt_types::ServiceKind;

/// `ARC.2.1`: the role of a host-CA client certificate: the kind of the joined service.
pub const NODE_ROLE_OID: &str = "2.25.112976937590999683324659271999942156561.2.1";

/// Content octets of [`NODE_ROLE_OID`].
const NODE_ROLE_CONTENT: [u8; 22] = {
    let mut out = [0u8; 22];
    let mut i = 0;
    while i < x509_oid::ARC_CONTENT.len() {
        out[i] = x509_oid::ARC_CONTENT[i];
        i += 1;
    }
    out[20] = 2;
    out[21] = 1;
    out
};

/// What a verified node certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The service's name (Subject CN), as it joined.
    pub name: String,
    /// What joined (the role attribute): an SSH node, a database access point, ...
    pub kind: ServiceKind,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl CertAuthority {
    /// Issues a joined service's X.509 client certificate (DER) for `subject_spki_der` (a
    /// P-256 SubjectPublicKeyInfo) from the host CA, naming its `kind`, valid from the CA's
    /// own NotBefore through `not_after`.
    pub fn issue_node_client_cert(
        &self,
        subject_spki_der: &[u8],
        node_name: &str,
        kind: ServiceKind,
        not_after: OffsetDateTime,
    ) -> Result<Vec<u8>> {
        self.issue_service_cert_with_role(subject_spki_der, node_name, kind.as_str(), not_after)
    }

    /// The certificate of [`Self::issue_node_client_cert`] with any role value (the unit
    /// tests forge unknown ones with it).
    fn issue_service_cert_with_role(
        &self,
        subject_spki_der: &[u8],
        node_name: &str,
        role: &str,
        not_after: OffsetDateTime,
    ) -> Result<Vec<u8>> {
        self.require_kind("issuing a node client certificate", CaKind::Host)?;
        key::point_from_spki(subject_spki_der)?;
        if node_name.is_empty() || node_name.chars().any(char::is_control) {
            return Err(CaError::InvalidIdentity(format!(
                "node name {node_name:?} is invalid"
            )));
        }
        let not_before = self.not_before;
        if not_after <= not_before {
            return Err(CaError::InvalidIdentity(
                "not_after must be later than not_before".into(),
            ));
        }
        let subject = x509::name(&[(&oid::COMMON_NAME, node_name), (&NODE_ROLE_CONTENT, role)]);
        let extensions = vec![
            x509::extension(&oid::BASIC_CONSTRAINTS, true, &asn1::sequence(&[])),
            x509::extension(
                &oid::KEY_USAGE,
                true,
                &asn1::named_bits(&[x509::KU_DIGITAL_SIGNATURE]),
            ),
            x509::extension(
                &oid::EXT_KEY_USAGE,
                false,
                &asn1::sequence(&[&asn1::oid(&oid::KP_CLIENT_AUTH)]),
            ),
            x509::extension(
                &oid::AUTHORITY_KEY_IDENTIFIER,
                false,
                &asn1::sequence(&[&asn1::tlv(asn1::implicit(0), &self.key_id)]),
            ),
        ];
        let serial = x509::random_serial(&self.key)?;
        let tbs = x509::tbs_certificate(&x509::TbsSpec {
            serial: &serial,
            issuer: &self.subject_der,
            not_before: x509::whole_seconds(not_before),
            not_after: x509::whole_seconds(not_after),
            subject: &subject,
            spki: subject_spki_der,
            extensions: &extensions,
        })?;
        x509::sign_certificate(&self.key, &tbs)
    }

    /// Checks that `der` is a joined service's client certificate this (host) CA signed,
    /// valid at `now`, and returns its identity and kind. A TLS server certificate of the
    /// same CA, a user certificate, a CA certificate, or a role attribute naming no kind this
    /// build knows is refused.
    pub fn verify_node_client_cert(&self, der: &[u8], now: OffsetDateTime) -> Result<NodeIdentity> {
        self.require_kind("verifying a node client certificate", CaKind::Host)?;
        verify_service_cert(&self.subject_der, self.key.point(), der, now)
    }
}

/// [`CertAuthority::verify_node_client_cert`] for whoever holds only the host CA's
/// certificate (a client verifying the access point it connects to): the same checks, with
/// the CA's subject and public key taken from `host_ca_cert_der`.
pub fn verify_service_cert_by_ca_cert(
    host_ca_cert_der: &[u8],
    der: &[u8],
    now: OffsetDateTime,
) -> Result<NodeIdentity> {
    let (_, ca) = X509Certificate::from_der(host_ca_cert_der)
        .map_err(|e| CaError::malformed("host ca certificate", e.to_string()))?;
    if !ca.is_ca() {
        return Err(CaError::WrongUsage(
            "the host CA certificate given is not a CA certificate".into(),
        ));
    }
    let point = key::point_from_spki(ca.public_key().raw)?;
    verify_service_cert(ca.subject().as_raw(), point, der, now)
}

fn verify_service_cert(
    ca_subject_der: &[u8],
    ca_point: &[u8],
    der: &[u8],
    now: OffsetDateTime,
) -> Result<NodeIdentity> {
    {
        let bad = |reason: &str| CaError::malformed("x509 certificate", reason);
        let (rest, cert) = X509Certificate::from_der(der)
            .map_err(|e| CaError::malformed("x509 certificate", e.to_string()))?;
        if !rest.is_empty() {
            return Err(bad("trailing bytes"));
        }
        let signed_by_us = cert.issuer().as_raw() == ca_subject_der
            && cert.signature_algorithm.algorithm.as_bytes() == oid::ECDSA_WITH_SHA256
            && cert.signature_algorithm.parameters.is_none()
            && cert.tbs_certificate.signature == cert.signature_algorithm
            && cert.signature_value.unused_bits == 0
            && key::verify_asn1(
                ca_point,
                cert.tbs_certificate.as_ref(),
                &cert.signature_value.data,
            );
        if !signed_by_us {
            return Err(CaError::NotIssuedByCa(CaKind::Host));
        }
        if cert.is_ca() {
            return Err(CaError::WrongUsage(
                "a ca certificate is not an identity".into(),
            ));
        }
        let eku = cert
            .extended_key_usage()
            .map_err(|e| CaError::malformed("x509 certificate", e.to_string()))?;
        if !eku.is_some_and(|e| e.value.client_auth) {
            return Err(CaError::WrongUsage(
                "certificate lacks the client-auth extended key usage of a node".into(),
            ));
        }
        let mut name = None;
        let mut role = None;
        for attr in cert.subject().iter_attributes() {
            let oid_bytes = attr.attr_type().as_bytes();
            let is_cn = oid_bytes == oid::COMMON_NAME;
            let is_role = oid_bytes == NODE_ROLE_CONTENT;
            if !is_cn && !is_role {
                if oid_bytes.starts_with(&x509_oid::ARC_CONTENT) {
                    return Err(bad("unknown devtrust attribute in a node certificate"));
                }
                continue;
            }
            let value = std::str::from_utf8(attr.attr_value().data)
                .map_err(|_| bad("attribute is not valid utf-8"))?
                .to_owned();
            let slot = if is_cn { &mut name } else { &mut role };
            if slot.replace(value).is_some() {
                return Err(bad("duplicate attribute in a node certificate"));
            }
        }
        let kind = match role.as_deref() {
            None => return Err(CaError::WrongUsage("not a node certificate".into())),
            Some(r) => ServiceKind::parse(r).ok_or_else(|| {
                CaError::WrongUsage(format!(
                    "unknown service kind {r:?} in a node certificate; upgrade this auth server or join the service again"
                ))
            })?,
        };
        let name = name.ok_or_else(|| bad("no subject common name"))?;
        let validity = cert.validity();
        let (not_before, not_after) = (
            validity.not_before.to_datetime(),
            validity.not_after.to_datetime(),
        );
        // RFC 5280 §4.1.2.5: valid from notBefore through notAfter, both inclusive.
        if now < not_before {
            return Err(CaError::NotYetValid { not_before });
        }
        if now > not_after {
            return Err(CaError::Expired { not_after });
        }
        Ok(NodeIdentity {
            name,
            kind,
            not_before,
            not_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    #[test]
    fn the_host_ca_certificate_alone_verifies_a_service_certificate() {
        let host = host_ca();
        let key = client_key();
        let der = host
            .issue_node_client_cert(
                &key.spki_der(),
                "pg1",
                ServiceKind::Db,
                NOW + time::Duration::days(30),
            )
            .unwrap();
        let id = verify_service_cert_by_ca_cert(host.cert_der(), &der, NOW).unwrap();
        assert_eq!((id.name.as_str(), id.kind), ("pg1", ServiceKind::Db));
        assert_eq!(
            id,
            host.verify_node_client_cert(&der, NOW).unwrap(),
            "the same answer as with the key"
        );
        // Another CA's certificate, the CA's own certificate, expiry.
        let other = CertAuthority::generate("other", CaKind::Host, NOW).unwrap();
        assert!(verify_service_cert_by_ca_cert(other.cert_der(), &der, NOW).is_err());
        assert!(verify_service_cert_by_ca_cert(host.cert_der(), host.cert_der(), NOW).is_err());
        assert!(
            verify_service_cert_by_ca_cert(&der, &der, NOW).is_err(),
            "not a CA"
        );
        assert!(
            verify_service_cert_by_ca_cert(host.cert_der(), &der, NOW + time::Duration::days(31))
                .is_err()
        );
    }

    #[test]
    fn oid_constant_agrees_with_its_dotted_form() {
        let arcs: Vec<u128> = NODE_ROLE_OID
            .split('.')
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(asn1::oid_content(&arcs).unwrap(), NODE_ROLE_CONTENT);
    }

    #[test]
    fn node_cert_round_trips_and_is_refused_elsewhere() {
        let host = host_ca();
        let key = client_key();
        let der = host
            .issue_node_client_cert(
                &key.spki_der(),
                "node-1",
                ServiceKind::Node,
                NOW + time::Duration::days(30),
            )
            .unwrap();
        let id = host.verify_node_client_cert(&der, NOW).unwrap();
        assert_eq!(id.name, "node-1");
        assert_eq!(id.kind, ServiceKind::Node);
        // Expired, or from another host CA.
        assert!(matches!(
            host.verify_node_client_cert(&der, NOW + time::Duration::days(31)),
            Err(CaError::Expired { .. })
        ));
        assert!(matches!(
            host_ca().verify_node_client_cert(&der, NOW),
            Err(CaError::NotIssuedByCa(CaKind::Host))
        ));
        // The user CA never issues or accepts node certificates.
        assert!(matches!(
            user_ca().issue_node_client_cert(
                &key.spki_der(),
                "n",
                ServiceKind::Node,
                NOW + time::Duration::days(1)
            ),
            Err(CaError::WrongCaKind { .. })
        ));
        assert!(user_ca().verify_x509_issued_by(&der, NOW).is_err());
        // The host CA's TLS server certificate is not a node identity.
        let server = host
            .issue_tls_server_cert(
                &key.spki_der(),
                &["localhost".into()],
                &[],
                NOW + time::Duration::days(1),
            )
            .unwrap();
        assert!(matches!(
            host.verify_node_client_cert(&server, NOW),
            Err(CaError::WrongUsage(_))
        ));
        // A user certificate is not one either.
        let user = user_ca()
            .issue_x509_client_cert(&key.spki_der(), &alice())
            .unwrap();
        assert!(host.verify_node_client_cert(&user, NOW).is_err());
        // Nor is a node certificate a user identity.
        assert!(crate::parse_x509_identity(&der).is_err());
    }

    #[test]
    fn every_kind_round_trips_and_unknown_kinds_are_refused() {
        let host = host_ca();
        let key = client_key();
        let until = NOW + time::Duration::days(30);
        for kind in ServiceKind::ALL {
            let der = host
                .issue_node_client_cert(&key.spki_der(), "svc-1", kind, until)
                .unwrap();
            let id = host.verify_node_client_cert(&der, NOW).unwrap();
            assert_eq!((id.name.as_str(), id.kind), ("svc-1", kind));
        }
        // Signed by the right CA, but with a role value no kind spells (a newer server's
        // kind, a case variant, empty): refused, never taken for a node.
        for role in ["bogus", "Node", "NODE", "", "node ", "bot"] {
            let der = host
                .issue_service_cert_with_role(&key.spki_der(), "svc-1", role, until)
                .unwrap();
            match host.verify_node_client_cert(&der, NOW) {
                Err(CaError::WrongUsage(why)) => assert!(why.contains("unknown service kind")),
                other => panic!("role {role:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn webpki_accepts_it_as_a_client_certificate() {
        let host = host_ca();
        let key = client_key();
        let der = host
            .issue_node_client_cert(
                &key.spki_der(),
                "node-1",
                ServiceKind::Node,
                NOW + time::Duration::days(30),
            )
            .unwrap();
        let ca = rustls_pki_types::CertificateDer::from(host.cert_der().to_vec());
        let anchor = webpki::anchor_from_trusted_cert(&ca).unwrap();
        let ee_der = rustls_pki_types::CertificateDer::from(der);
        let ee = webpki::EndEntityCert::try_from(&ee_der).unwrap();
        let now = rustls_pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(NOW.unix_timestamp()).unwrap(),
        ));
        ee.verify_for_usage(
            &[webpki::ring::ECDSA_P256_SHA256],
            &[anchor],
            &[],
            now,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .unwrap();
    }
}
