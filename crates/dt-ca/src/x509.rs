//! X.509: issuing user client certificates and TLS server certificates, and reading the
//! devtrust identity back out of a certificate.
//!
//! Certificates are written with our own DER writer ([`crate::asn1`]) because the identity
//! attributes sit under a UUID arc no certificate-generation crate here can express. The
//! TBSCertificate layout follows RFC 5280 §4.1; the signature is ECDSA P-256 with SHA-256
//! (`ecdsa-with-SHA256`, RFC 5758 §3.2: no parameters).

use std::net::IpAddr;

use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::asn1;
use crate::authority::{CaKind, CertAuthority};
use crate::error::{CaError, Result};
use crate::identity::{DeviceExt, Identity, x509_oid};
use crate::key::{self, P256Key};

/// Content octets of the OIDs we write.
pub(crate) mod oid {
    /// 1.2.840.10045.4.3.2 ecdsa-with-SHA256
    pub(crate) const ECDSA_WITH_SHA256: [u8; 8] = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    /// 2.5.4.3 commonName
    pub(crate) const COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03];
    /// 2.5.29.14 subjectKeyIdentifier
    pub(crate) const SUBJECT_KEY_IDENTIFIER: [u8; 3] = [0x55, 0x1d, 0x0e];
    /// 2.5.29.15 keyUsage
    pub(crate) const KEY_USAGE: [u8; 3] = [0x55, 0x1d, 0x0f];
    /// 2.5.29.17 subjectAltName
    pub(crate) const SUBJECT_ALT_NAME: [u8; 3] = [0x55, 0x1d, 0x11];
    /// 2.5.29.19 basicConstraints
    pub(crate) const BASIC_CONSTRAINTS: [u8; 3] = [0x55, 0x1d, 0x13];
    /// 2.5.29.35 authorityKeyIdentifier
    pub(crate) const AUTHORITY_KEY_IDENTIFIER: [u8; 3] = [0x55, 0x1d, 0x23];
    /// 2.5.29.37 extKeyUsage
    pub(crate) const EXT_KEY_USAGE: [u8; 3] = [0x55, 0x1d, 0x25];
    /// 1.3.6.1.5.5.7.3.1 id-kp-serverAuth
    pub(crate) const KP_SERVER_AUTH: [u8; 8] = [0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
    /// 1.3.6.1.5.5.7.3.2 id-kp-clientAuth
    pub(crate) const KP_CLIENT_AUTH: [u8; 8] = [0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];
}

/// KeyUsage bit numbers (RFC 5280 §4.2.1.3).
pub(crate) const KU_DIGITAL_SIGNATURE: u8 = 0;
pub(crate) const KU_KEY_CERT_SIGN: u8 = 5;
pub(crate) const KU_CRL_SIGN: u8 = 6;

/// How far back augmented certificates start, to absorb clock skew between machines.
pub const BACKDATE: Duration = Duration::minutes(1);

/// Drops the sub-second part: both certificate formats count whole seconds.
pub(crate) fn whole_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

/// A random positive 16-octet serial (RFC 5280 §4.1.2.2: at most 20 octets, positive);
/// the top bits are fixed to `01` so the encoding is always exactly 16 octets.
pub(crate) fn random_serial(key: &P256Key) -> Result<[u8; 16]> {
    let mut serial = key.random_bytes::<16>()?;
    serial[0] = (serial[0] & 0x3f) | 0x40;
    Ok(serial)
}

/// A `Name` with one attribute per RDN, values as UTF8String, in the given order.
pub(crate) fn name(attrs: &[(&[u8], &str)]) -> Vec<u8> {
    let rdns: Vec<Vec<u8>> = attrs
        .iter()
        .map(|(oid, value)| {
            asn1::set(&[&asn1::sequence(&[
                &asn1::oid(oid),
                &asn1::utf8_string(value),
            ])])
        })
        .collect();
    let parts: Vec<&[u8]> = rdns.iter().map(Vec::as_slice).collect();
    asn1::sequence(&parts)
}

/// One `Extension` (RFC 5280 §4.1): `critical` is omitted when false (DER default).
pub(crate) fn extension(oid: &[u8], critical: bool, value_der: &[u8]) -> Vec<u8> {
    let oid = asn1::oid(oid);
    let value = asn1::octet_string(value_der);
    if critical {
        asn1::sequence(&[&oid, &asn1::boolean(true), &value])
    } else {
        asn1::sequence(&[&oid, &value])
    }
}

pub(crate) struct TbsSpec<'a> {
    pub(crate) serial: &'a [u8],
    pub(crate) issuer: &'a [u8],
    pub(crate) not_before: OffsetDateTime,
    pub(crate) not_after: OffsetDateTime,
    pub(crate) subject: &'a [u8],
    pub(crate) spki: &'a [u8],
    pub(crate) extensions: &'a [Vec<u8>],
}

fn signature_algorithm() -> Vec<u8> {
    asn1::sequence(&[&asn1::oid(&oid::ECDSA_WITH_SHA256)])
}

/// The DER of a v3 TBSCertificate.
pub(crate) fn tbs_certificate(spec: &TbsSpec<'_>) -> Result<Vec<u8>> {
    let time = |t| {
        asn1::x509_time(t).ok_or_else(|| {
            CaError::InvalidIdentity(format!("time {t} cannot be written in a certificate"))
        })
    };
    let validity = asn1::sequence(&[&time(spec.not_before)?, &time(spec.not_after)?]);
    let ext_parts: Vec<&[u8]> = spec.extensions.iter().map(Vec::as_slice).collect();
    let extensions = asn1::cons(asn1::explicit(3), &[&asn1::sequence(&ext_parts)]);
    Ok(asn1::sequence(&[
        &asn1::cons(asn1::explicit(0), &[&asn1::small_uint(2)]), // v3
        &asn1::uint(spec.serial),
        &signature_algorithm(),
        spec.issuer,
        &validity,
        spec.subject,
        spec.spki,
        &extensions,
    ]))
}

/// Signs a TBSCertificate into a full `Certificate`.
pub(crate) fn sign_certificate(key: &P256Key, tbs: &[u8]) -> Result<Vec<u8>> {
    let signature = key.sign_asn1(tbs)?;
    Ok(asn1::sequence(&[
        tbs,
        &signature_algorithm(),
        &asn1::bit_string_octets(&signature),
    ]))
}

impl CertAuthority {
    /// Issues a user X.509 client certificate (DER) for `subject_spki_der` (a P-256
    /// SubjectPublicKeyInfo): Subject CN = username plus the devtrust attributes (roles, logins,
    /// bot, login traits, device), extendedKeyUsage clientAuth, keyUsage digitalSignature, not a CA, a random
    /// 16-octet serial, validity from the identity.
    pub fn issue_x509_client_cert(
        &self,
        subject_spki_der: &[u8],
        id: &Identity,
    ) -> Result<Vec<u8>> {
        self.require_kind("issuing a user x509 certificate", CaKind::User)?;
        id.validate()?;
        key::point_from_spki(subject_spki_der)?;

        let mut attrs: Vec<(&[u8], &str)> = vec![(&oid::COMMON_NAME, id.username.as_str())];
        attrs.extend(
            id.roles
                .iter()
                .map(|r| (&x509_oid::ROLE_CONTENT[..], r.as_str())),
        );
        attrs.extend(
            id.logins
                .iter()
                .map(|l| (&x509_oid::LOGIN_CONTENT[..], l.as_str())),
        );
        if id.bot {
            attrs.push((&x509_oid::BOT_CONTENT, "true"));
        }
        attrs.extend(
            id.trait_logins
                .iter()
                .map(|l| (&x509_oid::LOGIN_TRAIT_CONTENT[..], l.as_str())),
        );
        if let Some(d) = &id.device {
            attrs.push((&x509_oid::DEVICE_ID_CONTENT, d.device_id.as_str()));
            attrs.push((&x509_oid::DEVICE_ASSET_TAG_CONTENT, &d.asset_tag));
            attrs.push((
                &x509_oid::DEVICE_CREDENTIAL_ID_CONTENT,
                d.credential_id.as_str(),
            ));
        }
        let posture = id
            .device
            .as_ref()
            .map(|d| crate::identity::posture_values(&d.posture))
            .unwrap_or_default();
        for (oid, value) in x509_oid::POSTURE_CONTENT.iter().zip(&posture) {
            if let Some(v) = value {
                attrs.push((oid, v));
            }
        }
        let subject = name(&attrs);
        let extensions = self.end_entity_extensions(&oid::KP_CLIENT_AUTH, None);
        self.issue(
            &subject,
            subject_spki_der,
            id.not_before,
            id.not_after,
            &extensions,
        )
    }

    /// Issues a TLS server certificate (DER) from the host CA for `subject_spki_der`, valid for
    /// the given DNS names and IP addresses (subjectAltName), extendedKeyUsage serverAuth.
    /// Subject CN is the first DNS name (or IP address).
    ///
    /// Validity runs from the CA certificate's own NotBefore (this crate reads no clock, and a
    /// host certificate cannot predate its CA) through `not_after`.
    pub fn issue_tls_server_cert(
        &self,
        subject_spki_der: &[u8],
        dns_names: &[String],
        ips: &[IpAddr],
        not_after: OffsetDateTime,
    ) -> Result<Vec<u8>> {
        self.require_kind("issuing a tls server certificate", CaKind::Host)?;
        self.server_cert(subject_spki_der, dns_names, ips, not_after)
    }

    /// A serverAuth certificate for these names, whatever the CA's kind (callers check it).
    pub(crate) fn server_cert(
        &self,
        subject_spki_der: &[u8],
        dns_names: &[String],
        ips: &[IpAddr],
        not_after: OffsetDateTime,
    ) -> Result<Vec<u8>> {
        key::point_from_spki(subject_spki_der)?;
        let not_before = self.not_before;
        if not_after <= not_before {
            return Err(CaError::InvalidIdentity(
                "not_after must be later than not_before".into(),
            ));
        }
        let mut general_names = Vec::new();
        for dns in dns_names {
            let valid = !dns.is_empty()
                && dns
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'*' | b'_'));
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
        let cn = match (dns_names.first(), ips.first()) {
            (Some(dns), _) => dns.clone(),
            (None, Some(ip)) => ip.to_string(),
            (None, None) => {
                return Err(CaError::InvalidIdentity(
                    "a server certificate needs at least one dns name or ip address".into(),
                ));
            }
        };
        let parts: Vec<&[u8]> = general_names.iter().map(Vec::as_slice).collect();
        let san = extension(&oid::SUBJECT_ALT_NAME, false, &asn1::sequence(&parts));
        let subject = name(&[(&oid::COMMON_NAME, &cn)]);
        let extensions = self.end_entity_extensions(&oid::KP_SERVER_AUTH, Some(san));
        self.issue(
            &subject,
            subject_spki_der,
            not_before,
            not_after,
            &extensions,
        )
    }

    pub(crate) fn end_entity_extensions(&self, eku: &[u8], extra: Option<Vec<u8>>) -> Vec<Vec<u8>> {
        let mut exts = vec![
            // cA FALSE is the DEFAULT, so DER leaves the SEQUENCE empty.
            extension(&oid::BASIC_CONSTRAINTS, true, &asn1::sequence(&[])),
            extension(
                &oid::KEY_USAGE,
                true,
                &asn1::named_bits(&[KU_DIGITAL_SIGNATURE]),
            ),
            extension(
                &oid::EXT_KEY_USAGE,
                false,
                &asn1::sequence(&[&asn1::oid(eku)]),
            ),
            extension(
                &oid::AUTHORITY_KEY_IDENTIFIER,
                false,
                &asn1::sequence(&[&asn1::tlv(asn1::implicit(0), &self.key_id)]),
            ),
        ];
        exts.extend(extra);
        exts
    }

    pub(crate) fn issue(
        &self,
        subject: &[u8],
        spki: &[u8],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        extensions: &[Vec<u8>],
    ) -> Result<Vec<u8>> {
        let serial = random_serial(&self.key)?;
        let tbs = tbs_certificate(&TbsSpec {
            serial: &serial,
            issuer: &self.subject_der,
            not_before: whole_seconds(not_before),
            not_after: whole_seconds(not_after),
            subject,
            spki,
            extensions,
        })?;
        sign_certificate(&self.key, &tbs)
    }

    /// Checks that `der` is a certificate this CA signed, valid at `now`, for the use this CA
    /// issues (client auth for the user CA, server auth for the host CA), and returns the
    /// identity it carries.
    pub fn verify_x509_issued_by(&self, der: &[u8], now: OffsetDateTime) -> Result<Identity> {
        self.verify_x509(der, now).map(|(id, _)| id)
    }

    /// [`Self::verify_x509_issued_by`], keeping the proof: what [`augment_verified`]
    /// takes, so a certificate checked once (the auth service checks a client certificate
    /// when the connection opens) is not checked again per request.
    ///
    /// [`augment_verified`]: Self::augment_verified
    pub fn verify_x509_cert(&self, der: &[u8], now: OffsetDateTime) -> Result<VerifiedX509Cert> {
        let (identity, spki) = self.verify_x509(der, now)?;
        Ok(VerifiedX509Cert {
            der: der.to_vec(),
            identity,
            spki,
            verified_by: self.key.point().to_vec(),
        })
    }

    /// [`Self::verify_x509_issued_by`], also returning the subject's SubjectPublicKeyInfo DER.
    pub(crate) fn verify_x509(
        &self,
        der: &[u8],
        now: OffsetDateTime,
    ) -> Result<(Identity, Vec<u8>)> {
        let cert = parse_cert(der)?;
        let signed_by_us = cert.issuer().as_raw() == self.subject_der.as_slice()
            && cert.signature_algorithm.algorithm.as_bytes() == oid::ECDSA_WITH_SHA256
            && cert.signature_algorithm.parameters.is_none()
            && cert.tbs_certificate.signature == cert.signature_algorithm
            && cert.signature_value.unused_bits == 0
            && key::verify_asn1(
                self.key.point(),
                cert.tbs_certificate.as_ref(),
                &cert.signature_value.data,
            );
        if !signed_by_us {
            return Err(CaError::NotIssuedByCa(self.kind));
        }
        if cert.is_ca() {
            return Err(CaError::WrongUsage(
                "a ca certificate is not an identity".into(),
            ));
        }
        let eku = cert
            .extended_key_usage()
            .map_err(|e| CaError::malformed("x509 certificate", e.to_string()))?;
        let usable = match self.kind {
            CaKind::User => eku.is_some_and(|e| e.value.client_auth),
            CaKind::Host => eku.is_some_and(|e| e.value.server_auth),
            // The database CA vouches for database servers and database users only, never
            // for a devtrust identity.
            CaKind::Db => false,
            CaKind::Jwt => false,
        };
        if !usable {
            return Err(CaError::WrongUsage(format!(
                "certificate lacks the extended key usage the {} ca issues",
                self.kind
            )));
        }
        let id = identity_from_cert(&cert)?;
        check_window(id.not_before, id.not_after, now)?;
        Ok((id, cert.public_key().raw.to_vec()))
    }
}

/// An X.509 certificate whose signature, usage and validity a CA checked. Only
/// [`CertAuthority::verify_x509_cert`] makes one; it remembers which CA key checked it.
#[derive(Clone, Debug)]
pub struct VerifiedX509Cert {
    der: Vec<u8>,
    pub(crate) identity: Identity,
    /// The subject's SubjectPublicKeyInfo, DER.
    pub(crate) spki: Vec<u8>,
    pub(crate) verified_by: Vec<u8>,
}

impl VerifiedX509Cert {
    /// The identity the certificate carries.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }
    /// The certificate, byte for byte.
    pub fn der(&self) -> &[u8] {
        &self.der
    }
}

/// RFC 5280 §4.1.2.5: valid from notBefore through notAfter, both inclusive.
pub(crate) fn check_window(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<()> {
    if now < not_before {
        Err(CaError::NotYetValid { not_before })
    } else if now > not_after {
        Err(CaError::Expired { not_after })
    } else {
        Ok(())
    }
}

fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>> {
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| CaError::malformed("x509 certificate", e.to_string()))?;
    if !rest.is_empty() {
        return Err(CaError::malformed("x509 certificate", "trailing bytes"));
    }
    Ok(cert)
}

/// Reads the identity out of a certificate **without checking who signed it**: use
/// [`CertAuthority::verify_x509_issued_by`] for anything that grants access.
///
/// The username is the single Subject CN, which must be a user name ([`CaError::UserName`]
/// otherwise; a host CA's server certificate reads as its first DNS name or address, so one
/// for a wildcard name is refused here too). An identity has a device only when all three device
/// attributes are present; some but not all is [`CaError::PartialDevice`]. Attributes under
/// the devtrust arc that this version does not know are refused (fail closed).
pub fn parse_x509_identity(der: &[u8]) -> Result<Identity> {
    identity_from_cert(&parse_cert(der)?)
}

fn identity_from_cert(cert: &X509Certificate<'_>) -> Result<Identity> {
    let bad = |reason: String| CaError::malformed("x509 certificate", reason);
    let mut username = None;
    let mut roles = Vec::new();
    let mut logins = Vec::new();
    let mut trait_logins = Vec::new();
    let mut bot = false;
    let (mut device_id, mut asset_tag, mut credential_id) = (None, None, None);
    let mut posture: [Option<String>; 4] = Default::default();

    for attr in cert.subject().iter_attributes() {
        let oid = attr.attr_type().as_bytes();
        let is_cn = oid == oid::COMMON_NAME;
        let ours = oid.starts_with(&x509_oid::ARC_CONTENT);
        if !is_cn && !ours {
            continue;
        }
        if attr.attr_value().header.tag() != x509_parser::der_parser::asn1_rs::Tag::Utf8String {
            return Err(bad(format!(
                "attribute {} is not a utf8 string",
                attr.attr_type()
            )));
        }
        let value = std::str::from_utf8(attr.attr_value().data)
            .map_err(|_| bad(format!("attribute {} is not valid utf-8", attr.attr_type())))?
            .to_owned();
        let set_once = |slot: &mut Option<String>, what: &str| {
            if slot.replace(value.clone()).is_some() {
                Err(bad(format!("more than one {what} attribute")))
            } else {
                Ok(())
            }
        };
        if is_cn {
            set_once(&mut username, "common name")?;
        } else if oid == x509_oid::ROLE_CONTENT {
            roles.push(value);
        } else if oid == x509_oid::LOGIN_CONTENT {
            logins.push(value);
        } else if oid == x509_oid::LOGIN_TRAIT_CONTENT {
            trait_logins.push(value);
        } else if oid == x509_oid::BOT_CONTENT {
            if bot {
                return Err(bad("more than one bot attribute".into()));
            }
            bot = true;
        } else if oid == x509_oid::DEVICE_ID_CONTENT {
            set_once(&mut device_id, "device id")?;
        } else if oid == x509_oid::DEVICE_ASSET_TAG_CONTENT {
            set_once(&mut asset_tag, "device asset tag")?;
        } else if oid == x509_oid::DEVICE_CREDENTIAL_ID_CONTENT {
            set_once(&mut credential_id, "device credential id")?;
        } else if let Some(i) = x509_oid::POSTURE_CONTENT.iter().position(|c| c == oid) {
            set_once(&mut posture[i], "device posture")?;
        } else {
            return Err(bad(format!(
                "unknown devtrust attribute {}",
                attr.attr_type()
            )));
        }
    }
    let username = username.ok_or_else(|| bad("no subject common name".into()))?;
    let username = dt_types::UserName::parse(username).map_err(CaError::UserName)?;
    let device = device_from_parts(
        device_id,
        asset_tag,
        credential_id,
        crate::identity::posture_from_values(posture, bad)?,
        [
            "device id attribute",
            "device asset tag attribute",
            "device credential id attribute",
        ],
    )?;
    let validity = cert.validity();
    Ok(Identity {
        username,
        roles,
        logins,
        bot,
        trait_logins,
        device,
        not_before: validity.not_before.to_datetime(),
        not_after: validity.not_after.to_datetime(),
    })
}

/// All three or none; anything in between is a claim without its proof.
pub(crate) fn device_from_parts(
    device_id: Option<String>,
    asset_tag: Option<String>,
    credential_id: Option<String>,
    posture: dt_types::posture::DevicePosture,
    names: [&'static str; 3],
) -> Result<Option<DeviceExt>> {
    match (device_id, asset_tag, credential_id) {
        // Posture without a device is a claim about nothing.
        (None, None, None) if posture.is_empty() => Ok(None),
        (None, None, None) => Err(CaError::PartialDevice { missing: names[0] }),
        (Some(device_id), Some(asset_tag), Some(credential_id)) => Ok(Some(DeviceExt {
            device_id: dt_types::DeviceId::parse(device_id).map_err(CaError::DeviceId)?,
            asset_tag,
            credential_id: dt_types::CredentialId::parse(credential_id)
                .map_err(CaError::CredentialId)?,
            posture,
        })),
        (d, a, _) => Err(CaError::PartialDevice {
            missing: if d.is_none() {
                names[0]
            } else if a.is_none() {
                names[1]
            } else {
                names[2]
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    use x509_parser::prelude::GeneralName;

    use super::*;
    use crate::testutil::*;
    use crate::{CaError, ClientKey};

    fn unix(t: OffsetDateTime) -> UnixTime {
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(t.unix_timestamp()).unwrap(),
        ))
    }

    /// webpki, as rustls uses it for client certificates.
    fn webpki_client_auth(
        ca: &CertAuthority,
        cert: &[u8],
        now: OffsetDateTime,
    ) -> Result<(), webpki::Error> {
        let ca_der = CertificateDer::from(ca.cert_der());
        let anchors = [webpki::anchor_from_trusted_cert(&ca_der)?];
        let ee_der = CertificateDer::from(cert);
        let ee = webpki::EndEntityCert::try_from(&ee_der)?;
        ee.verify_for_usage(
            &[webpki::ring::ECDSA_P256_SHA256],
            &anchors,
            &[],
            unix(now),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map(|_| ())
    }

    #[test]
    fn client_cert_round_trips_the_identity() {
        let ca = user_ca();
        let key = client_key();
        for id in [alice(), with_device(alice()), robot(), with_device(robot())] {
            let der = ca.issue_x509_client_cert(&key.spki_der(), &id).unwrap();
            assert_eq!(parse_x509_identity(&der).unwrap(), id);
            assert_eq!(ca.verify_x509_issued_by(&der, NOW).unwrap(), id);
            assert_eq!(
                ca.verify_x509_issued_by(&der, NOW)
                    .unwrap()
                    .is_device_verified(),
                id.device.is_some()
            );
        }
    }

    #[test]
    fn sub_second_times_are_truncated() {
        let ca = user_ca();
        let mut id = alice();
        id.not_after += Duration::milliseconds(999);
        let der = ca
            .issue_x509_client_cert(&client_key().spki_der(), &id)
            .unwrap();
        assert_eq!(parse_x509_identity(&der).unwrap(), alice());
    }

    #[test]
    fn far_future_uses_generalized_time() {
        let ca = user_ca();
        let mut id = alice();
        id.not_after = time::macros::datetime!(2051-06-01 00:00:00 UTC);
        let der = ca
            .issue_x509_client_cert(&client_key().spki_der(), &id)
            .unwrap();
        let cert = parse_cert(&der).unwrap();
        assert!(cert.validity().not_before.is_utctime());
        assert!(cert.validity().not_after.is_generalizedtime());
        assert_eq!(parse_x509_identity(&der).unwrap(), id);
    }

    #[test]
    fn client_cert_has_the_promised_shape() {
        let ca = user_ca();
        let key = client_key();
        let der = ca
            .issue_x509_client_cert(&key.spki_der(), &with_device(alice()))
            .unwrap();
        let cert = parse_cert(&der).unwrap();
        assert_eq!(cert.version(), x509_parser::x509::X509Version::V3);
        assert_eq!(
            cert.issuer().as_raw(),
            parse_cert(ca.cert_der()).unwrap().subject().as_raw()
        );
        assert_eq!(cert.public_key().raw, key.spki_der().as_slice());
        assert_eq!(cert.raw_serial().len(), 16);
        assert_eq!(cert.raw_serial()[0] & 0xc0, 0x40);
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(bc.critical && !bc.value.ca);
        let ku = cert.key_usage().unwrap().unwrap();
        assert!(ku.critical && ku.value.digital_signature() && !ku.value.key_cert_sign());
        let eku = cert.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.client_auth && !eku.value.server_auth);
        let aki = cert
            .get_extension_unique(&x509_parser::oid_registry::OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER)
            .unwrap()
            .unwrap();
        assert!(!aki.critical);
        // x509-parser's own verifier agrees the CA signed it.
        let ca_cert = parse_cert(ca.cert_der()).unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        // Another CA did not.
        let other = user_ca();
        let other_cert = parse_cert(other.cert_der()).unwrap();
        assert!(
            cert.verify_signature(Some(other_cert.public_key()))
                .is_err()
        );
        // Our attributes are readable by OID string through x509-parser's own formatting.
        let subject = cert.subject().to_string();
        assert!(subject.starts_with("CN=alice"), "{subject}");
    }

    #[test]
    fn webpki_accepts_the_client_cert_and_only_under_its_ca() {
        let ca = user_ca();
        let der = ca
            .issue_x509_client_cert(&client_key().spki_der(), &with_device(alice()))
            .unwrap();
        webpki_client_auth(&ca, &der, NOW).unwrap();
        assert!(webpki_client_auth(&user_ca(), &der, NOW).is_err());
        assert!(matches!(
            webpki_client_auth(&ca, &der, NOW + Duration::days(1)),
            Err(webpki::Error::CertExpired { .. })
        ));
        // A client cert is not a server cert.
        let ca_der = CertificateDer::from(ca.cert_der());
        let anchors = [webpki::anchor_from_trusted_cert(&ca_der).unwrap()];
        let ee_der = CertificateDer::from(der.as_slice());
        let ee = webpki::EndEntityCert::try_from(&ee_der).unwrap();
        assert!(
            ee.verify_for_usage(
                &[webpki::ring::ECDSA_P256_SHA256],
                &anchors,
                &[],
                unix(NOW),
                webpki::KeyUsage::server_auth(),
                None,
                None,
            )
            .is_err()
        );
    }

    #[test]
    fn webpki_accepts_the_server_cert_for_its_names() {
        let ca = host_ca();
        let der = ca
            .issue_tls_server_cert(
                &client_key().spki_der(),
                &["auth.example.com".into(), "localhost".into()],
                &["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
                NOW + Duration::days(30),
            )
            .unwrap();
        let ca_der = CertificateDer::from(ca.cert_der());
        let anchors = [webpki::anchor_from_trusted_cert(&ca_der).unwrap()];
        let ee_der = CertificateDer::from(der.as_slice());
        let ee = webpki::EndEntityCert::try_from(&ee_der).unwrap();
        ee.verify_for_usage(
            &[webpki::ring::ECDSA_P256_SHA256],
            &anchors,
            &[],
            unix(NOW),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .unwrap();
        for ok in ["auth.example.com", "localhost", "127.0.0.1", "::1"] {
            ee.verify_is_valid_for_subject_name(&ServerName::try_from(ok).unwrap())
                .unwrap();
        }
        assert!(
            ee.verify_is_valid_for_subject_name(&ServerName::try_from("evil.example.com").unwrap())
                .is_err()
        );
        let cert = parse_cert(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names.len(), 4);
        assert!(matches!(
            san.value.general_names[0],
            GeneralName::DNSName("auth.example.com")
        ));
        // The host CA vouches for it; the user CA does not.
        let id = ca.verify_x509_issued_by(&der, NOW).unwrap();
        assert_eq!(id.username, "auth.example.com");
        assert!(matches!(
            user_ca().verify_x509_issued_by(&der, NOW),
            Err(CaError::NotIssuedByCa(CaKind::User))
        ));
    }

    #[test]
    fn server_cert_refusals() {
        let ca = host_ca();
        let spki = client_key().spki_der();
        let issue = |dns: &[String], ips: &[IpAddr]| {
            ca.issue_tls_server_cert(&spki, dns, ips, NOW + Duration::days(1))
        };
        assert!(issue(&[], &[]).is_err());
        assert!(issue(&["bad name".into()], &[]).is_err());
        assert!(issue(&["".into()], &[]).is_err());
        let ip_only = issue(&[], &["10.0.0.1".parse().unwrap()]).unwrap();
        assert_eq!(parse_x509_identity(&ip_only).unwrap().username, "10.0.0.1");
        assert!(matches!(
            user_ca().issue_tls_server_cert(&spki, &["a".into()], &[], NOW + Duration::days(1)),
            Err(CaError::WrongCaKind {
                expected: CaKind::Host,
                actual: CaKind::User,
                ..
            })
        ));
        assert!(matches!(
            ca.issue_x509_client_cert(&spki, &alice()),
            Err(CaError::WrongCaKind {
                expected: CaKind::User,
                ..
            })
        ));
    }

    #[test]
    fn verification_refusals() {
        let ca = user_ca();
        let key = client_key();
        let der = ca
            .issue_x509_client_cert(&key.spki_der(), &alice())
            .unwrap();

        // Another CA (same cluster name, so the same issuer name).
        assert!(matches!(
            user_ca().verify_x509_issued_by(&der, NOW),
            Err(CaError::NotIssuedByCa(CaKind::User))
        ));
        // Validity is inclusive at both ends (RFC 5280).
        let id = alice();
        assert!(ca.verify_x509_issued_by(&der, id.not_before).is_ok());
        assert!(ca.verify_x509_issued_by(&der, id.not_after).is_ok());
        assert!(matches!(
            ca.verify_x509_issued_by(&der, id.not_after + Duration::seconds(1)),
            Err(CaError::Expired { not_after }) if not_after == id.not_after
        ));
        assert!(matches!(
            ca.verify_x509_issued_by(&der, id.not_before - Duration::seconds(1)),
            Err(CaError::NotYetValid { not_before }) if not_before == id.not_before
        ));
        // Any changed byte in the signed part breaks the signature (or the parse).
        let tbs_len = parse_cert(&der).unwrap().tbs_certificate.as_ref().len();
        for i in (4..tbs_len).step_by(7) {
            let mut tampered = der.clone();
            tampered[i] ^= 0x01;
            let err = ca.verify_x509_issued_by(&tampered, NOW).unwrap_err();
            assert!(
                matches!(err, CaError::NotIssuedByCa(_) | CaError::Malformed { .. }),
                "byte {i}: {err:?}"
            );
        }
        // Trailing garbage, truncation.
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(matches!(
            ca.verify_x509_issued_by(&trailing, NOW),
            Err(CaError::Malformed { .. })
        ));
        assert!(matches!(
            ca.verify_x509_issued_by(&der[..der.len() - 1], NOW),
            Err(CaError::Malformed { .. })
        ));
        // The CA certificate itself is no identity.
        assert!(matches!(
            ca.verify_x509_issued_by(ca.cert_der(), NOW),
            Err(CaError::WrongUsage(_))
        ));
        // A non-P-256 or garbage subject key is refused at issuance.
        assert!(matches!(
            ca.issue_x509_client_cert(b"not a key", &alice()),
            Err(CaError::UnsupportedKey(_))
        ));
    }

    /// Issues a certificate with hand-picked Subject attributes, signed by `ca`.
    fn issue_with_attrs(ca: &CertAuthority, attrs: &[(&[u8], &str)]) -> Vec<u8> {
        let id = alice();
        let exts = ca.end_entity_extensions(&oid::KP_CLIENT_AUTH, None);
        ca.issue(
            &name(attrs),
            &client_key().spki_der(),
            id.not_before,
            id.not_after,
            &exts,
        )
        .unwrap()
    }

    #[test]
    fn partial_device_attributes_are_refused() {
        let ca = user_ca();
        let cn: (&[u8], &str) = (&oid::COMMON_NAME, "alice");
        let id: (&[u8], &str) = (
            &x509_oid::DEVICE_ID_CONTENT,
            "5f2c6c39-3c4b-4a53-9d0c-3d2f3f0a9b11",
        );
        let tag: (&[u8], &str) = (&x509_oid::DEVICE_ASSET_TAG_CONTENT, "t");
        let cred: (&[u8], &str) = (&x509_oid::DEVICE_CREDENTIAL_ID_CONTENT, "c");
        for (attrs, missing) in [
            (vec![cn, id], "device asset tag attribute"),
            (vec![cn, id, tag], "device credential id attribute"),
            (vec![cn, tag, cred], "device id attribute"),
            (vec![cn, cred], "device id attribute"),
        ] {
            let der = issue_with_attrs(&ca, &attrs);
            assert_eq!(
                parse_x509_identity(&der),
                Err(CaError::PartialDevice { missing })
            );
            assert_eq!(
                ca.verify_x509_issued_by(&der, NOW),
                Err(CaError::PartialDevice { missing })
            );
        }
        // All three, in any order, is a device.
        let der = issue_with_attrs(&ca, &[cred, cn, tag, id]);
        assert!(
            ca.verify_x509_issued_by(&der, NOW)
                .unwrap()
                .is_device_verified()
        );
        // A device id that is not a UUID, or a credential id that is not one, is refused,
        // never read as some device.
        let not_uuid: (&[u8], &str) = (&x509_oid::DEVICE_ID_CONTENT, "d");
        assert_eq!(
            ca.verify_x509_issued_by(&issue_with_attrs(&ca, &[cn, not_uuid, tag, cred]), NOW),
            Err(CaError::DeviceId(dt_types::DeviceIdError::NotUuid))
        );
        let spaced: (&[u8], &str) = (&x509_oid::DEVICE_CREDENTIAL_ID_CONTENT, "c c");
        assert_eq!(
            ca.verify_x509_issued_by(&issue_with_attrs(&ca, &[cn, id, tag, spaced]), NOW),
            Err(CaError::CredentialId(
                dt_types::CredentialIdError::NotPrintable
            ))
        );
        // Posture without a device is refused; so are posture values this build cannot read
        // and a posture value given twice.
        let os: (&[u8], &str) = (&x509_oid::DEVICE_OS_CONTENT, "linux");
        assert_eq!(
            ca.verify_x509_issued_by(&issue_with_attrs(&ca, &[cn, os]), NOW),
            Err(CaError::PartialDevice {
                missing: "device id attribute"
            })
        );
        for odd in [
            (&x509_oid::DEVICE_ATTESTATION_CONTENT[..], "tpm"),
            (&x509_oid::DEVICE_OS_CONTENT[..], "beos"),
            (&x509_oid::DEVICE_AUTH_TIME_CONTENT[..], "-"),
            (&x509_oid::DEVICE_OS_CONTENT[..], "linux"),
        ] {
            let der = issue_with_attrs(&ca, &[cn, id, tag, cred, os, odd]);
            assert!(
                matches!(
                    ca.verify_x509_issued_by(&der, NOW),
                    Err(CaError::Malformed { .. })
                ),
                "{odd:?}"
            );
        }
    }

    #[test]
    fn a_common_name_that_is_no_user_name_is_refused() {
        let ca = user_ca();
        for (cn, found) in [("mdm/jamf", '/'), ("al ice", ' '), ("a\u{e9}", '\u{e9}')] {
            let der = issue_with_attrs(&ca, &[(&oid::COMMON_NAME, cn)]);
            let err = CaError::UserName(dt_types::NameError::BadChar {
                what: "user name",
                found,
            });
            assert_eq!(parse_x509_identity(&der), Err(err.clone()), "{cn:?}");
            assert_eq!(ca.verify_x509_issued_by(&der, NOW), Err(err), "{cn:?}");
        }
        let der = issue_with_attrs(&ca, &[(&oid::COMMON_NAME, ".alice")]);
        assert_eq!(
            ca.verify_x509_issued_by(&der, NOW),
            Err(CaError::UserName(dt_types::NameError::BadStart {
                what: "user name"
            }))
        );
        // A user name reads back as itself (the CN is the plain string).
        let der = issue_with_attrs(&ca, &[(&oid::COMMON_NAME, "bot-ci:build_1")]);
        assert_eq!(
            ca.verify_x509_issued_by(&der, NOW).unwrap().username,
            "bot-ci:build_1"
        );
    }

    #[test]
    fn odd_subjects_are_refused() {
        let ca = user_ca();
        let cn: (&[u8], &str) = (&oid::COMMON_NAME, "alice");
        let unknown = crate::asn1::oid_content(&[2, 25, x509_oid::ARC_UUID, 9, 9]).unwrap();
        let id: (&[u8], &str) = (&x509_oid::DEVICE_ID_CONTENT, "d");
        for attrs in [
            vec![],                        // no CN
            vec![cn, cn],                  // two CNs
            vec![cn, (&unknown[..], "x")], // unknown devtrust attribute
            vec![cn, id, id],              // duplicate device id
            vec![
                cn,
                (&x509_oid::BOT_CONTENT, "true"),
                (&x509_oid::BOT_CONTENT, "true"),
            ],
        ] {
            let der = issue_with_attrs(&ca, &attrs);
            assert!(
                matches!(
                    ca.verify_x509_issued_by(&der, NOW),
                    Err(CaError::Malformed { .. })
                ),
                "{attrs:?}"
            );
        }
        // Attributes outside our arc are ignored (e.g. an organization).
        let org = [0x55u8, 0x04, 0x0a];
        let der = issue_with_attrs(&ca, &[(&org, "Example Inc"), cn]);
        assert_eq!(
            ca.verify_x509_issued_by(&der, NOW).unwrap().username,
            "alice"
        );
    }

    #[test]
    fn oid_constants_match_their_dotted_forms() {
        use crate::asn1::oid_content;
        assert_eq!(
            oid_content(&[1, 2, 840, 10045, 4, 3, 2]).unwrap(),
            oid::ECDSA_WITH_SHA256
        );
        assert_eq!(oid_content(&[2, 5, 4, 3]).unwrap(), oid::COMMON_NAME);
        assert_eq!(
            oid_content(&[2, 5, 29, 14]).unwrap(),
            oid::SUBJECT_KEY_IDENTIFIER
        );
        assert_eq!(oid_content(&[2, 5, 29, 15]).unwrap(), oid::KEY_USAGE);
        assert_eq!(oid_content(&[2, 5, 29, 17]).unwrap(), oid::SUBJECT_ALT_NAME);
        assert_eq!(
            oid_content(&[2, 5, 29, 19]).unwrap(),
            oid::BASIC_CONSTRAINTS
        );
        assert_eq!(
            oid_content(&[2, 5, 29, 35]).unwrap(),
            oid::AUTHORITY_KEY_IDENTIFIER
        );
        assert_eq!(oid_content(&[2, 5, 29, 37]).unwrap(), oid::EXT_KEY_USAGE);
        assert_eq!(
            oid_content(&[1, 3, 6, 1, 5, 5, 7, 3, 1]).unwrap(),
            oid::KP_SERVER_AUTH
        );
        assert_eq!(
            oid_content(&[1, 3, 6, 1, 5, 5, 7, 3, 2]).unwrap(),
            oid::KP_CLIENT_AUTH
        );
    }

    #[test]
    fn openssl_verifies_the_chain_and_shows_our_attributes() {
        let Some(version) = run("openssl", &["version"]) else {
            return;
        };
        assert!(version.status.success());
        let ca = user_ca();
        let der = ca
            .issue_x509_client_cert(&client_key().spki_der(), &with_device(alice()))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_path = dir.path().join("ca.pem");
        let cert_path = dir.path().join("cert.pem");
        std::fs::write(&ca_path, ca.cert_pem()).unwrap();
        std::fs::write(
            &cert_path,
            crate::pem::to_pem(crate::pem::CERTIFICATE, &der),
        )
        .unwrap();
        let at = NOW.unix_timestamp().to_string();
        let verify = run(
            "openssl",
            &[
                "verify",
                "-attime",
                &at,
                "-purpose",
                "sslclient",
                "-CAfile",
                ca_path.to_str().unwrap(),
                cert_path.to_str().unwrap(),
            ],
        )
        .unwrap();
        assert!(
            verify.status.success(),
            "{}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
        let text = run(
            "openssl",
            &[
                "x509",
                "-noout",
                "-subject",
                "-nameopt",
                "oid",
                "-in",
                cert_path.to_str().unwrap(),
            ],
        )
        .unwrap();
        let subject = String::from_utf8_lossy(&text.stdout);
        assert!(
            subject.contains(&format!("{}=C00AA0AAAA0A", x509_oid::DEVICE_ASSET_TAG)),
            "{subject}"
        );
        assert!(
            subject.contains(&format!("{}=editor", x509_oid::ROLE)),
            "{subject}"
        );
    }

    /// Runs a whole TLS 1.3 handshake in memory: host-CA server certificate, user-CA client
    /// certificate, rustls with webpki verifiers on both sides, the client key from
    /// [`ClientKey::pkcs8_der`]. Returns the client certificate the server saw.
    fn handshake(
        server_ca: &CertAuthority,
        client_ca_trusted_by_server: &CertAuthority,
        client_cert: Vec<u8>,
        client_key: &ClientKey,
    ) -> Result<Vec<u8>, rustls::Error> {
        use rustls::{
            ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let now = OffsetDateTime::now_utc();

        let server_key = ClientKey::generate().unwrap();
        let server_cert = server_ca
            .issue_tls_server_cert(
                &server_key.spki_der(),
                &["auth.example.com".into()],
                &[],
                now + Duration::hours(1),
            )
            .unwrap();

        let mut client_roots = RootCertStore::empty();
        client_roots
            .add(CertificateDer::from(server_ca.cert_der().to_vec()))
            .unwrap();
        let client_config = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(client_roots)
            .with_client_auth_cert(
                vec![CertificateDer::from(client_cert)],
                PrivateKeyDer::Pkcs8(client_key.pkcs8_der().to_vec().into()),
            )
            .unwrap();

        let mut server_roots = RootCertStore::empty();
        server_roots
            .add(CertificateDer::from(
                client_ca_trusted_by_server.cert_der().to_vec(),
            ))
            .unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(server_roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let server_config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from(server_cert)],
                PrivateKeyDer::Pkcs8(server_key.pkcs8_der().to_vec().into()),
            )
            .unwrap();

        let mut client = ClientConnection::new(
            Arc::new(client_config),
            ServerName::try_from("auth.example.com").unwrap(),
        )
        .unwrap();
        let mut server = ServerConnection::new(Arc::new(server_config)).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets()?;
            let mut buf = Vec::new();
            server.write_tls(&mut buf).unwrap();
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
        }
        // In TLS 1.3 the client finishes first; one more flight lets the server see a
        // rejection alert or finish too.
        let mut buf = Vec::new();
        client.write_tls(&mut buf).unwrap();
        server.read_tls(&mut buf.as_slice()).unwrap();
        server.process_new_packets()?;
        assert!(!server.is_handshaking());
        Ok(server.peer_certificates().unwrap()[0].to_vec())
    }

    #[test]
    fn rustls_mutual_tls_accepts_our_certificates() {
        let user = user_ca();
        let host = host_ca();
        let key = client_key();
        let now = OffsetDateTime::now_utc();
        let id = Identity {
            not_before: whole_seconds(now) - Duration::hours(1),
            not_after: whole_seconds(now) + Duration::hours(1),
            ..with_device(alice())
        };
        let cert = user.issue_x509_client_cert(&key.spki_der(), &id).unwrap();
        let seen = handshake(&host, &user, cert.clone(), &key).unwrap();
        assert_eq!(user.verify_x509_issued_by(&seen, now).unwrap(), id);

        // A server trusting another user CA rejects the same client.
        assert!(matches!(
            handshake(&host, &user_ca(), cert, &key),
            Err(rustls::Error::InvalidCertificate(_))
        ));
    }
}
