//! OpenSSH certificates (PROTOCOL.certkeys): user certificates carrying the devtrust identity
//! as extensions, host certificates, and verifying user certificates with ring.

use dt_types::UserName;
use ssh_key::certificate::{Builder, CertType};
use ssh_key::encoding::Encode as _;
use ssh_key::{Algorithm, Certificate, EcdsaCurve, PublicKey};
use time::OffsetDateTime;

use crate::authority::{CaKind, CertAuthority};
use crate::error::{CaError, Result};
use crate::identity::{Identity, ssh_ext};
use crate::key::{self, SshSigner};
use crate::x509::device_from_parts;

fn unix_seconds(t: OffsetDateTime) -> Result<u64> {
    u64::try_from(t.unix_timestamp()).map_err(|_| {
        CaError::InvalidIdentity(format!(
            "time {t} is before 1970 and cannot go into an ssh certificate"
        ))
    })
}

fn from_unix_seconds(secs: u64) -> Result<OffsetDateTime> {
    i64::try_from(secs)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or_else(|| {
            CaError::malformed("ssh certificate", format!("timestamp {secs} out of range"))
        })
}

fn ssh_err(e: ssh_key::Error) -> CaError {
    CaError::malformed("ssh certificate", e.to_string())
}

impl CertAuthority {
    /// Issues an OpenSSH user certificate for `subject` (a P-256 key): key id = username, valid
    /// principals = logins, validity from the identity, extensions `permit-agent-forwarding`,
    /// `permit-port-forwarding`, `permit-pty`, `devtrust-roles` (comma-separated), `devtrust-bot`
    /// (bots only, empty value), `devtrust-logins` (login traits, comma-separated) and, for a device, `devtrust-device-id`,
    /// `devtrust-device-asset-tag`, `devtrust-device-credential-id`. Extensions are sorted by
    /// name as OpenSSH requires. No critical options.
    ///
    /// A user without logins gets the single principal [`ssh_ext::NO_LOGIN_PRINCIPAL`], since an
    /// empty principal list would be valid for every login.
    pub fn issue_ssh_user_cert(&self, subject: &PublicKey, id: &Identity) -> Result<Certificate> {
        self.require_kind("issuing a user ssh certificate", CaKind::User)?;
        id.validate()?;
        let mut builder = self.ssh_builder(subject, id.not_before, id.not_after)?;
        builder.cert_type(CertType::User).map_err(ssh_err)?;
        builder.key_id(id.username.as_str()).map_err(ssh_err)?;
        if id.logins.is_empty() {
            builder
                .valid_principal(ssh_ext::NO_LOGIN_PRINCIPAL)
                .map_err(ssh_err)?;
        }
        for login in &id.logins {
            builder.valid_principal(login.as_str()).map_err(ssh_err)?;
        }
        // Our extension names are distinct, and the builder keeps them in a BTreeMap, so
        // they are encoded sorted by name.
        for permit in ssh_ext::PERMITS {
            builder.extension(permit, "").map_err(ssh_err)?;
        }
        builder
            .extension(ssh_ext::ROLES, id.roles.join(","))
            .map_err(ssh_err)?;
        if id.bot {
            builder.extension(ssh_ext::BOT, "").map_err(ssh_err)?;
        }
        builder
            .extension(ssh_ext::LOGIN_TRAITS, id.trait_logins.join(","))
            .map_err(ssh_err)?;
        if let Some(d) = &id.device {
            builder
                .extension(ssh_ext::DEVICE_ID, d.device_id.as_str())
                .map_err(ssh_err)?;
            builder
                .extension(ssh_ext::DEVICE_ASSET_TAG, d.asset_tag.as_str())
                .map_err(ssh_err)?;
            builder
                .extension(ssh_ext::DEVICE_CREDENTIAL_ID, d.credential_id.as_str())
                .map_err(ssh_err)?;
            let values = crate::identity::posture_values(&d.posture);
            for (name, value) in ssh_ext::POSTURE.iter().zip(values) {
                if let Some(v) = value {
                    builder.extension(*name, v).map_err(ssh_err)?;
                }
            }
        }
        self.ssh_sign(builder)
    }

    /// Issues an OpenSSH host certificate for `subject` (a P-256 key): key id = `host_id`, valid
    /// principals = `principals` (host names and addresses; at least one), no extensions.
    ///
    /// Validity runs from the CA certificate's own NotBefore (this crate reads no clock, and a
    /// host certificate cannot predate its CA) until `not_after`.
    pub fn issue_ssh_host_cert(
        &self,
        subject: &PublicKey,
        host_id: &str,
        principals: &[String],
        not_after: OffsetDateTime,
    ) -> Result<Certificate> {
        self.require_kind("issuing a host ssh certificate", CaKind::Host)?;
        let not_before = self.not_before;
        let text_ok = |s: &str| !s.is_empty() && !s.chars().any(char::is_control);
        if !text_ok(host_id) {
            return Err(CaError::InvalidIdentity(format!(
                "host id {host_id:?} is invalid"
            )));
        }
        if principals.is_empty() {
            return Err(CaError::InvalidIdentity(
                "a host certificate needs at least one principal".into(),
            ));
        }
        if let Some(p) = principals.iter().find(|p| !text_ok(p)) {
            return Err(CaError::InvalidIdentity(format!(
                "principal {p:?} is invalid"
            )));
        }
        if not_after <= not_before {
            return Err(CaError::InvalidIdentity(
                "not_after must be later than not_before".into(),
            ));
        }
        let mut builder = self.ssh_builder(subject, not_before, not_after)?;
        builder.cert_type(CertType::Host).map_err(ssh_err)?;
        builder.key_id(host_id).map_err(ssh_err)?;
        for p in principals {
            builder.valid_principal(p.as_str()).map_err(ssh_err)?;
        }
        self.ssh_sign(builder)
    }

    fn ssh_builder(
        &self,
        subject: &PublicKey,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Builder> {
        key::point_from_ssh_key(subject.key_data())?;
        let nonce = self.key.random_bytes::<32>()?;
        let mut builder = Builder::new(
            nonce.to_vec(),
            subject.key_data().clone(),
            unix_seconds(not_before)?,
            unix_seconds(not_after)?,
        )
        .map_err(ssh_err)?;
        builder
            .serial(u64::from_be_bytes(self.key.random_bytes::<8>()?))
            .map_err(ssh_err)?;
        Ok(builder)
    }

    fn ssh_sign(&self, builder: Builder) -> Result<Certificate> {
        builder
            .sign(&SshSigner::new(&self.key, self.ssh_key.clone()))
            .map_err(|e| match e {
                ssh_key::Error::Signature => CaError::Crypto("ssh certificate signing failed"),
                other => ssh_err(other),
            })
    }

    /// True when `cert` carries a valid signature by this CA's SSH key (checked with ring).
    fn ssh_signed_by_us(&self, cert: &Certificate) -> bool {
        if cert.signature_key() != &self.ssh_key
            || cert.signature().algorithm()
                != (Algorithm::Ecdsa {
                    curve: EcdsaCurve::NistP256,
                })
        {
            return false;
        }
        let Some(fixed) = key::ssh_sig_to_fixed(cert.signature().as_bytes()) else {
            return false;
        };
        // The signed part is the whole encoding up to the signature, which is the last field
        // (`string signature`).
        let (Ok(bytes), Ok(sig_len)) = (cert.to_bytes(), cert.signature().encoded_len_prefixed())
        else {
            return false;
        };
        let Some(tbs) = bytes.len().checked_sub(sig_len).map(|n| &bytes[..n]) else {
            return false;
        };
        key::verify_fixed(self.key.point(), tbs, &fixed)
    }

    /// Checks that `cert` is a user certificate signed by this (user) CA, valid at `now`, with
    /// no critical options, and returns its identity.
    pub fn verify_ssh_user_cert(
        &self,
        cert: &Certificate,
        now: OffsetDateTime,
    ) -> Result<Identity> {
        self.require_kind("verifying a user ssh certificate", CaKind::User)?;
        if !self.ssh_signed_by_us(cert) {
            return Err(CaError::NotIssuedByCa(self.kind));
        }
        let id = parse_ssh_identity(cert)?;
        if !cert.critical_options().is_empty() {
            // We never write any; an unknown critical option must be refused (PROTOCOL.certkeys).
            return Err(CaError::WrongUsage(
                "certificate carries critical options".into(),
            ));
        }
        check_ssh_validity(&id, now)?;
        Ok(id)
    }

    /// [`verify_ssh_user_cert`](Self::verify_ssh_user_cert), keeping the proof that this CA
    /// verified the certificate (for [`augment_verified`](Self::augment_verified)).
    pub fn verify_ssh_user(
        &self,
        cert: &Certificate,
        now: OffsetDateTime,
    ) -> Result<VerifiedSshCert> {
        let identity = self.verify_ssh_user_cert(cert, now)?;
        Ok(VerifiedSshCert {
            cert: cert.clone(),
            identity,
            verified_by: self.key.point().to_vec(),
        })
    }
}

/// An SSH user certificate whose signature, options and validity a user CA checked. Only
/// [`CertAuthority::verify_ssh_user`] makes one; it remembers which CA key checked it.
#[derive(Clone, Debug)]
pub struct VerifiedSshCert {
    pub(crate) cert: Certificate,
    pub(crate) identity: Identity,
    pub(crate) verified_by: Vec<u8>,
}

impl VerifiedSshCert {
    /// The identity the certificate carries.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }
}

/// PROTOCOL.certkeys: valid when valid_after <= now < valid_before.
pub(crate) fn check_ssh_validity(id: &Identity, now: OffsetDateTime) -> Result<()> {
    let now_secs = now.unix_timestamp();
    if now_secs < id.not_before.unix_timestamp() {
        return Err(CaError::NotYetValid {
            not_before: id.not_before,
        });
    }
    if now_secs >= id.not_after.unix_timestamp() {
        return Err(CaError::Expired {
            not_after: id.not_after,
        });
    }
    Ok(())
}

/// Reads the identity out of a user certificate **without checking who signed it**: use
/// [`CertAuthority::verify_ssh_user_cert`] for anything that grants access.
///
/// The key id must be a user name ([`CaError::UserName`] otherwise). A device is present only
/// when all three device extensions are; some but not all is [`CaError::PartialDevice`].
pub fn parse_ssh_identity(cert: &Certificate) -> Result<Identity> {
    let bad = |reason: String| CaError::malformed("ssh certificate", reason);
    if cert.cert_type() != CertType::User {
        return Err(CaError::WrongUsage("not a user certificate".into()));
    }
    // The key id names the user; one no user can have (empty included) names nobody.
    let username = UserName::parse(cert.key_id()).map_err(CaError::UserName)?;
    let ext = cert.extensions();
    let roles = match ext.get(ssh_ext::ROLES) {
        None => return Err(bad(format!("no {} extension", ssh_ext::ROLES))),
        Some(r) if r.is_empty() => Vec::new(),
        Some(r) => r.split(',').map(str::to_owned).collect(),
    };
    let bot = match ext.get(ssh_ext::BOT) {
        None => false,
        Some(v) if v.is_empty() => true,
        Some(_) => return Err(bad(format!("{} extension has a value", ssh_ext::BOT))),
    };
    // Absent on certificates issued before it existed: no traits (fail closed).
    let trait_logins = match ext.get(ssh_ext::LOGIN_TRAITS) {
        None => Vec::new(),
        Some(l) if l.is_empty() => Vec::new(),
        Some(l) => l.split(',').map(str::to_owned).collect(),
    };
    let device = device_from_parts(
        ext.get(ssh_ext::DEVICE_ID).cloned(),
        ext.get(ssh_ext::DEVICE_ASSET_TAG).cloned(),
        ext.get(ssh_ext::DEVICE_CREDENTIAL_ID).cloned(),
        crate::identity::posture_from_values(ssh_ext::POSTURE.map(|n| ext.get(n).cloned()), bad)?,
        [
            ssh_ext::DEVICE_ID,
            ssh_ext::DEVICE_ASSET_TAG,
            ssh_ext::DEVICE_CREDENTIAL_ID,
        ],
    )?;
    if cert.valid_principals().is_empty() {
        return Err(bad("no principals (valid for every login)".into()));
    }
    let logins = cert
        .valid_principals()
        .iter()
        .filter(|p| p.as_str() != ssh_ext::NO_LOGIN_PRINCIPAL)
        .cloned()
        .collect();
    Ok(Identity {
        username,
        roles,
        logins,
        bot,
        trait_logins,
        device,
        not_before: from_unix_seconds(cert.valid_after())?,
        not_after: from_unix_seconds(cert.valid_before())?,
    })
}

/// Reads an OpenSSH certificate line (`ALGORITHM BASE64 [COMMENT]`) as
/// `Certificate::from_openssh` does (a named algorithm that is not the encoded one and bytes
/// after the certificate are refused too), but decodes the base64 in one pass: ssh-key's
/// streaming reader made reading a certificate cost more than the rest of a device
/// authentication's parsing.
///
/// Only a certificate's own encoding is read: a byte-slice reader would skip bytes left
/// over inside a length-prefixed field (a signature with junk after it, say), which
/// ssh-key's reader refuses, and such a line would still verify, since signatures are
/// checked over the re-encoded certificate. So the decoded bytes must be exactly what the
/// certificate encodes to. A line ssh-key reads is read the same, or refused here if it is
/// not canonical, which no certificate our CAs sign is; a few damaged lines that ssh-key
/// refuses are read here (seen: a signature key of an unknown algorithm), and those no CA
/// verifies. Leading and trailing whitespace is ignored.
pub fn certificate_from_openssh(line: &str) -> Result<Certificate> {
    use base64::Engine as _;
    let line = line.trim();
    let (algorithm, rest) = line.split_once(' ').ok_or_else(|| {
        CaError::malformed("ssh certificate", "expected \"ALGORITHM BASE64 [COMMENT]\"")
    })?;
    let (data, comment) = rest.split_once(' ').unwrap_or((rest, ""));
    if algorithm.is_empty() || data.is_empty() {
        return Err(CaError::malformed(
            "ssh certificate",
            "expected \"ALGORITHM BASE64 [COMMENT]\"",
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| CaError::malformed("ssh certificate", format!("base64: {e}")))?;
    let mut cert = Certificate::from_bytes(&bytes).map_err(ssh_err)?;
    if cert.to_bytes().map_err(ssh_err)? != bytes {
        return Err(CaError::malformed(
            "ssh certificate",
            "not the certificate's own encoding (bytes left over inside a field)",
        ));
    }
    if cert.algorithm().to_certificate_type() != algorithm {
        return Err(CaError::malformed(
            "ssh certificate",
            format!("the line names {algorithm:?}, the certificate is another algorithm"),
        ));
    }
    cert.set_comment(comment.trim_end());
    Ok(cert)
}

/// Writes `cert` as an OpenSSH certificate line, byte for byte what
/// `Certificate::to_openssh` writes, with one base64 pass over its encoding.
pub fn certificate_to_openssh(cert: &Certificate) -> Result<String> {
    use base64::Engine as _;
    let bytes = cert.to_bytes().map_err(ssh_err)?;
    let mut out = cert.algorithm().to_certificate_type().to_string();
    out.push(' ');
    base64::engine::general_purpose::STANDARD.encode_string(&bytes, &mut out);
    if !cert.comment().is_empty() {
        out.push(' ');
        out.push_str(cert.comment());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use ssh_key::HashAlg;
    use time::Duration;

    use super::*;
    use crate::testutil::*;

    fn issue(ca: &CertAuthority, id: &Identity) -> (Certificate, crate::ClientKey) {
        let key = client_key();
        let cert = ca
            .issue_ssh_user_cert(&key.ssh_public_key().unwrap(), id)
            .unwrap();
        (cert, key)
    }

    #[test]
    fn user_cert_round_trips_the_identity() {
        let ca = user_ca();
        for id in [alice(), with_device(alice()), robot(), with_device(robot())] {
            let (cert, key) = issue(&ca, &id);
            assert_eq!(parse_ssh_identity(&cert).unwrap(), id);
            assert_eq!(ca.verify_ssh_user_cert(&cert, NOW).unwrap(), id);
            assert_eq!(cert.public_key(), key.ssh_public_key().unwrap().key_data());
            // Through the wire format and back.
            let again = Certificate::from_openssh(&cert.to_openssh().unwrap()).unwrap();
            assert_eq!(ca.verify_ssh_user_cert(&again, NOW).unwrap(), id);
        }
    }

    /// The one-pass line reader and writer agree with ssh-key's own, on good lines and on
    /// every damaged one below: same answer, same certificate.
    #[test]
    fn certificate_lines_read_and_write_as_ssh_key_does() {
        let ca = user_ca();
        let (mut cert, _) = issue(&ca, &with_device(alice()));
        for comment in ["", "alice@laptop", "two words"] {
            cert.set_comment(comment);
            let line = cert.to_openssh().unwrap();
            assert_eq!(certificate_to_openssh(&cert).unwrap(), line);
            assert_eq!(certificate_from_openssh(&line).unwrap(), cert);
            assert_eq!(
                certificate_from_openssh(&format!("  {line} \n")).unwrap(),
                cert
            );
        }
        // Another algorithm named than encoded is refused, as ssh-key refuses it.
        cert.set_comment("");
        let line = cert.to_openssh().unwrap();
        let renamed = line.replacen("ecdsa-sha2-nistp256", "ssh-ed25519", 1);
        assert!(Certificate::from_openssh(&renamed).is_err());
        let e = certificate_from_openssh(&renamed).unwrap_err().to_string();
        assert!(e.contains("another algorithm"), "{e}");
        for bad in ["", "ecdsa-sha2-nistp256-cert-v01@openssh.com", " AAAA"] {
            assert!(certificate_from_openssh(bad).is_err(), "{bad:?}");
        }
    }

    /// A genuine certificate whose signature field is made longer, with junk after the
    /// signature inside it: a byte-slice reader skips the junk and the signature still
    /// verifies over the re-encoded certificate, so the line is refused as not the
    /// certificate's own encoding (as ssh-key's reader refuses it).
    #[test]
    fn junk_inside_a_length_prefixed_field_is_refused() {
        use base64::Engine as _;
        let ca = user_ca();
        let (cert, _) = issue(&ca, &alice());
        let mut bytes = cert.to_bytes().unwrap();
        // The signature is the certificate's last field: its length, then its blob.
        let blob = cert.signature().encode_vec().unwrap();
        let at = bytes.len() - blob.len() - 4;
        let len = u32::try_from(blob.len()).unwrap();
        assert_eq!(
            bytes[at..at + 4],
            len.to_be_bytes(),
            "the signature field's length"
        );
        bytes[at..at + 4].copy_from_slice(&(len + 3).to_be_bytes());
        bytes.extend_from_slice(b"xyz");
        let line = format!(
            "{} {}",
            cert.algorithm().to_certificate_type(),
            base64::engine::general_purpose::STANDARD.encode(&bytes)
        );
        // What a byte-slice reader makes of it verifies: the check below is what refuses it.
        let skipped = Certificate::from_bytes(&bytes).unwrap();
        assert!(ca.verify_ssh_user_cert(&skipped, NOW).is_ok());
        assert!(Certificate::from_openssh(&line).is_err());
        let e = certificate_from_openssh(&line).unwrap_err().to_string();
        assert!(e.contains("not the certificate's own encoding"), "{e}");
    }

    proptest::proptest! {
        /// A byte changed, removed or added anywhere in a certificate line: what ssh-key
        /// reads, the one-pass reader reads the same or refuses, and then the CA refuses it
        /// too; what only the one-pass reader reads, the CA refuses.
        #[test]
        fn damaged_certificate_lines_are_judged_as_ssh_key_judges_them(
            at in 0usize..1000,
            edit in 0u8..3,
            with in proptest::sample::select(
                vec![b' ', b'=', b'A', b'a', b'/', b'+', b'-', b'@', b'\t', b'\n', b'x', 0u8]
            ),
        ) {
            let ca = user_ca();
            let (cert, _) = issue(&ca, &alice());
            let mut line = cert.to_openssh().unwrap().into_bytes();
            line.extend_from_slice(b" c");
            let at = at % (line.len() + 1);
            match edit {
                0 if at < line.len() => line[at] = with,
                1 if at < line.len() => { line.remove(at); }
                _ => line.insert(at, with),
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            let theirs = Certificate::from_openssh(line.trim()).ok();
            let ours = certificate_from_openssh(&line).ok();
            match (ours, theirs) {
                (Some(ours), Some(theirs)) => proptest::prop_assert_eq!(ours, theirs, "{:?}", line),
                (None, Some(theirs)) => proptest::prop_assert!(
                    ca.verify_ssh_user_cert(&theirs, NOW).is_err(),
                    "the one-pass reader refused {:?}, which the CA verifies",
                    line
                ),
                (Some(ours), None) => proptest::prop_assert!(
                    ca.verify_ssh_user_cert(&ours, NOW).is_err(),
                    "only the one-pass reader read {:?}, and the CA verified it",
                    line
                ),
                (None, None) => {}
            }
        }
    }

    #[test]
    fn user_cert_fields() {
        let ca = user_ca();
        let (cert, _) = issue(&ca, &with_device(alice()));
        assert_eq!(cert.cert_type(), CertType::User);
        assert_eq!(cert.key_id(), "alice");
        assert_eq!(cert.valid_principals(), ["root", "alice"]);
        assert!(cert.critical_options().is_empty());
        assert_eq!(cert.nonce().len(), 32);
        let ext: Vec<(&str, &str)> = cert
            .extensions()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            ext,
            [
                ("devtrust-device-asset-tag", "C00AA0AAAA0A"),
                ("devtrust-device-attestation", "tpm_ekcert_trusted"),
                ("devtrust-device-auth-time", "1767225600"),
                ("devtrust-device-credential-id", "c7d7a1e2-credential"),
                ("devtrust-device-id", "5f2c6c39-3c4b-4a53-9d0c-3d2f3f0a9b11"),
                ("devtrust-device-os", "macos"),
                ("devtrust-device-os-version", "14.4.1"),
                ("devtrust-logins", "alice"),
                ("devtrust-roles", "access,editor"),
                ("permit-agent-forwarding", ""),
                ("permit-port-forwarding", ""),
                ("permit-pty", ""),
            ]
        );
        // Bots say so; humans do not.
        let (bot_cert, _) = issue(&ca, &robot());
        assert_eq!(
            bot_cert
                .extensions()
                .get("devtrust-bot")
                .map(String::as_str),
            Some("")
        );
        assert_eq!(
            bot_cert
                .extensions()
                .get("devtrust-roles")
                .map(String::as_str),
            Some("")
        );
        assert!(!cert.extensions().contains_key("devtrust-bot"));
    }

    /// Reads the extension names in wire order, independently of ssh-key's decoder.
    fn wire_extension_names(cert: &Certificate) -> Vec<String> {
        fn string(b: &mut &[u8]) -> Vec<u8> {
            let (len, rest) = b.split_first_chunk::<4>().unwrap();
            let len = u32::from_be_bytes(*len) as usize;
            let (s, rest) = rest.split_at(len);
            *b = rest;
            s.to_vec()
        }
        let bytes = cert.to_bytes().unwrap();
        let b = &mut bytes.as_slice();
        string(b); // type
        string(b); // nonce
        string(b); // curve
        string(b); // point
        *b = &b[8..]; // serial
        *b = &b[4..]; // type
        string(b); // key id
        string(b); // principals
        *b = &b[16..]; // validity
        string(b); // critical options
        let ext = string(b);
        let e = &mut ext.as_slice();
        let mut names = Vec::new();
        while !e.is_empty() {
            names.push(String::from_utf8(string(e)).unwrap());
            string(e);
        }
        names
    }

    #[test]
    fn extensions_are_sorted_on_the_wire() {
        let ca = user_ca();
        for id in [with_device(alice()), with_device(robot())] {
            let (cert, _) = issue(&ca, &id);
            let names = wire_extension_names(&cert);
            let mut sorted = names.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(names, sorted);
        }
    }

    #[test]
    fn no_logins_never_means_every_login() {
        let ca = user_ca();
        let (cert, _) = issue(&ca, &robot());
        assert_eq!(cert.valid_principals(), [ssh_ext::NO_LOGIN_PRINCIPAL]);
        assert!(parse_ssh_identity(&cert).unwrap().logins.is_empty());
    }

    #[test]
    fn ring_verification_agrees_with_ssh_key() {
        let ca = user_ca();
        let (cert, _) = issue(&ca, &alice());
        let fp = ca.ssh_public_key().fingerprint(HashAlg::Sha256);
        cert.validate_at(u64::try_from(NOW.unix_timestamp()).unwrap(), [&fp])
            .unwrap();
        let other = user_ca();
        let other_fp = other.ssh_public_key().fingerprint(HashAlg::Sha256);
        assert!(
            cert.validate_at(u64::try_from(NOW.unix_timestamp()).unwrap(), [&other_fp])
                .is_err()
        );
        assert!(matches!(
            other.verify_ssh_user_cert(&cert, NOW),
            Err(CaError::NotIssuedByCa(CaKind::User))
        ));
    }

    #[test]
    fn verification_refusals() {
        let ca = user_ca();
        let id = alice();
        let (cert, _) = issue(&ca, &id);
        // PROTOCOL.certkeys: valid_after <= now < valid_before.
        assert!(ca.verify_ssh_user_cert(&cert, id.not_before).is_ok());
        assert!(matches!(
            ca.verify_ssh_user_cert(&cert, id.not_before - Duration::seconds(1)),
            Err(CaError::NotYetValid { .. })
        ));
        assert!(matches!(
            ca.verify_ssh_user_cert(&cert, id.not_after),
            Err(CaError::Expired { not_after }) if not_after == id.not_after
        ));
        // A changed byte anywhere before the signature.
        let bytes = cert.to_bytes().unwrap();
        let sig_start = bytes.len() - 100;
        let mut decoded = 0;
        for i in (20..sig_start).step_by(5) {
            let mut tampered = bytes.clone();
            tampered[i] ^= 0x01;
            if let Ok(c) = Certificate::from_bytes(&tampered) {
                decoded += 1;
                assert!(
                    matches!(
                        ca.verify_ssh_user_cert(&c, NOW),
                        Err(CaError::NotIssuedByCa(_))
                    ),
                    "byte {i}"
                );
            }
        }
        assert!(decoded > 10, "the tampering mostly hit parseable fields");
        // A host certificate from the host CA.
        let host = host_ca();
        let host_cert = host
            .issue_ssh_host_cert(
                &client_key().ssh_public_key().unwrap(),
                "node-1",
                &["node-1.example.com".into()],
                NOW + Duration::hours(1),
            )
            .unwrap();
        assert!(matches!(
            ca.verify_ssh_user_cert(&host_cert, NOW),
            Err(CaError::NotIssuedByCa(_))
        ));
        assert!(matches!(
            parse_ssh_identity(&host_cert),
            Err(CaError::WrongUsage(_))
        ));
        assert!(matches!(
            host.verify_ssh_user_cert(&cert, NOW),
            Err(CaError::WrongCaKind { .. })
        ));
        assert!(matches!(
            host.issue_ssh_user_cert(&client_key().ssh_public_key().unwrap(), &id),
            Err(CaError::WrongCaKind { .. })
        ));
        // Non-P-256 subject keys are refused.
        let ed = ssh_key::PublicKey::from_openssh(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOyf2KDcN5Ua4dFj9CjT/6p2F2e0bTtWZgTaU0TyxW4Q",
        )
        .unwrap();
        assert!(matches!(
            ca.issue_ssh_user_cert(&ed, &id),
            Err(CaError::UnsupportedKey(_))
        ));
    }

    /// Signs a user certificate with hand-picked extensions.
    fn issue_with_extensions(
        ca: &CertAuthority,
        ext: &[(&str, &str)],
        critical: &[(&str, &str)],
    ) -> Certificate {
        issue_with_key_id(ca, "alice", ext, critical)
    }

    /// Signs a user certificate with a hand-picked key id and extensions.
    fn issue_with_key_id(
        ca: &CertAuthority,
        key_id: &str,
        ext: &[(&str, &str)],
        critical: &[(&str, &str)],
    ) -> Certificate {
        let id = alice();
        let mut b = ca
            .ssh_builder(
                &client_key().ssh_public_key().unwrap(),
                id.not_before,
                id.not_after,
            )
            .unwrap();
        b.key_id(key_id).unwrap();
        b.valid_principal("root").unwrap();
        for (k, v) in ext {
            b.extension(*k, *v).unwrap();
        }
        for (k, v) in critical {
            b.critical_option(*k, *v).unwrap();
        }
        ca.ssh_sign(b).unwrap()
    }

    #[test]
    fn a_key_id_that_is_no_user_name_is_refused() {
        let ca = user_ca();
        let roles = (ssh_ext::ROLES, "access");
        // Names no user can have: a service's actor name, a space, a path, nothing.
        for (key_id, err) in [
            (
                "mdm/jamf",
                dt_types::NameError::BadChar {
                    what: "user name",
                    found: '/',
                },
            ),
            (
                "al ice",
                dt_types::NameError::BadChar {
                    what: "user name",
                    found: ' ',
                },
            ),
            ("", dt_types::NameError::Empty { what: "user name" }),
            (
                "-alice",
                dt_types::NameError::BadStart { what: "user name" },
            ),
        ] {
            let cert = issue_with_key_id(&ca, key_id, &[roles], &[]);
            assert_eq!(
                parse_ssh_identity(&cert),
                Err(CaError::UserName(err.clone())),
                "{key_id:?}"
            );
            assert_eq!(
                ca.verify_ssh_user_cert(&cert, NOW),
                Err(CaError::UserName(err)),
                "{key_id:?}"
            );
        }
        let e = ca
            .verify_ssh_user_cert(&issue_with_key_id(&ca, "al ice", &[roles], &[]), NOW)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "certificate carries an invalid user name: user name contains ' '; use letters, digits and . _ @ : -; refusing it"
        );
        // The same builder with a user name is accepted, and the key id is the name as is.
        let ok = issue_with_key_id(&ca, "alice@example.com", &[roles], &[]);
        assert_eq!(ok.key_id(), "alice@example.com");
        assert_eq!(
            ca.verify_ssh_user_cert(&ok, NOW).unwrap().username,
            "alice@example.com"
        );
    }

    #[test]
    fn certificates_without_login_traits_carry_none() {
        let ca = user_ca();
        let old = issue_with_extensions(&ca, &[(ssh_ext::ROLES, "access")], &[]);
        let id = ca.verify_ssh_user_cert(&old, NOW).unwrap();
        assert_eq!(id.logins, ["root"]);
        assert!(id.trait_logins.is_empty(), "never the principals");
        let new = ca
            .issue_ssh_user_cert(&client_key().ssh_public_key().unwrap(), &alice())
            .unwrap();
        assert_eq!(
            new.extensions().get(ssh_ext::LOGIN_TRAITS).unwrap(),
            "alice"
        );
    }

    #[test]
    fn partial_device_and_odd_extensions_are_refused() {
        let ca = user_ca();
        let roles = (ssh_ext::ROLES, "access");
        let id = (ssh_ext::DEVICE_ID, "5f2c6c39-3c4b-4a53-9d0c-3d2f3f0a9b11");
        let tag = (ssh_ext::DEVICE_ASSET_TAG, "t");
        let cred = (ssh_ext::DEVICE_CREDENTIAL_ID, "c");
        for (ext, missing) in [
            (vec![roles, id], ssh_ext::DEVICE_ASSET_TAG),
            (vec![roles, id, tag], ssh_ext::DEVICE_CREDENTIAL_ID),
            (vec![roles, tag, cred], ssh_ext::DEVICE_ID),
        ] {
            let cert = issue_with_extensions(&ca, &ext, &[]);
            assert_eq!(
                parse_ssh_identity(&cert),
                Err(CaError::PartialDevice { missing })
            );
            assert_eq!(
                ca.verify_ssh_user_cert(&cert, NOW),
                Err(CaError::PartialDevice { missing })
            );
        }
        let full = issue_with_extensions(&ca, &[roles, id, tag, cred], &[]);
        assert!(
            ca.verify_ssh_user_cert(&full, NOW)
                .unwrap()
                .is_device_verified()
        );
        let not_uuid = (ssh_ext::DEVICE_ID, "d");
        assert_eq!(
            ca.verify_ssh_user_cert(
                &issue_with_extensions(&ca, &[roles, not_uuid, tag, cred], &[]),
                NOW
            ),
            Err(CaError::DeviceId(dt_types::DeviceIdError::NotUuid))
        );
        let empty_cred = (ssh_ext::DEVICE_CREDENTIAL_ID, "");
        assert_eq!(
            ca.verify_ssh_user_cert(
                &issue_with_extensions(&ca, &[roles, id, tag, empty_cred], &[]),
                NOW
            ),
            Err(CaError::CredentialId(dt_types::CredentialIdError::Empty))
        );
        // Posture without a device is a claim about nothing; posture values this build
        // cannot read are refused, never dropped.
        let os = (ssh_ext::DEVICE_OS, "linux");
        assert_eq!(
            ca.verify_ssh_user_cert(&issue_with_extensions(&ca, &[roles, os], &[]), NOW),
            Err(CaError::PartialDevice {
                missing: ssh_ext::DEVICE_ID
            })
        );
        for odd in [
            (ssh_ext::DEVICE_ATTESTATION, "tpm"),
            (ssh_ext::DEVICE_OS, "beos"),
            (ssh_ext::DEVICE_AUTH_TIME, "yesterday"),
            (ssh_ext::DEVICE_OS_VERSION, ""),
        ] {
            let cert = issue_with_extensions(&ca, &[roles, id, tag, cred, odd], &[]);
            assert!(
                matches!(
                    ca.verify_ssh_user_cert(&cert, NOW),
                    Err(CaError::Malformed { .. })
                ),
                "{odd:?}"
            );
        }
        let posture = issue_with_extensions(
            &ca,
            &[roles, id, tag, cred, os, (ssh_ext::DEVICE_OS_VERSION, "12")],
            &[],
        );
        let p = ca
            .verify_ssh_user_cert(&posture, NOW)
            .unwrap()
            .device
            .unwrap()
            .posture;
        assert_eq!(p.os_type, Some(dt_types::device::OsType::Linux));
        assert_eq!(p.os_version.as_deref(), Some("12"));
        assert_eq!(p.attestation_type, None);
        // No roles extension, a bot extension with a value, a critical option.
        for cert in [
            issue_with_extensions(&ca, &[], &[]),
            issue_with_extensions(&ca, &[roles, (ssh_ext::BOT, "yes")], &[]),
        ] {
            assert!(matches!(
                ca.verify_ssh_user_cert(&cert, NOW),
                Err(CaError::Malformed { .. })
            ));
        }
        let forced = issue_with_extensions(&ca, &[roles], &[("force-command", "/bin/true")]);
        assert!(matches!(
            ca.verify_ssh_user_cert(&forced, NOW),
            Err(CaError::WrongUsage(_))
        ));
    }

    #[test]
    fn host_cert_fields_and_refusals() {
        let host = host_ca();
        let key = client_key();
        let cert = host
            .issue_ssh_host_cert(
                &key.ssh_public_key().unwrap(),
                "node-1",
                &["node-1.example.com".into(), "10.0.0.5".into()],
                NOW + Duration::days(30),
            )
            .unwrap();
        assert_eq!(cert.cert_type(), CertType::Host);
        assert_eq!(cert.key_id(), "node-1");
        assert_eq!(cert.valid_principals(), ["node-1.example.com", "10.0.0.5"]);
        assert!(cert.extensions().is_empty());
        let fp = host.ssh_public_key().fingerprint(HashAlg::Sha256);
        cert.validate_at(u64::try_from(NOW.unix_timestamp()).unwrap(), [&fp])
            .unwrap();
        let pk = key.ssh_public_key().unwrap();
        let issue =
            |id: &str, p: &[String]| host.issue_ssh_host_cert(&pk, id, p, NOW + Duration::hours(1));
        assert!(issue("node-1", &[]).is_err()); // would match every host
        assert!(issue("", &["a".into()]).is_err());
        assert!(issue("n", &["".into()]).is_err());
        assert!(matches!(
            user_ca().issue_ssh_host_cert(&pk, "n", &["a".into()], NOW + Duration::hours(1)),
            Err(CaError::WrongCaKind { .. })
        ));
    }

    fn write_private(path: &std::path::Path, text: &str) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// OpenSSH itself reads our certificate (`ssh-keygen -L`), our private key (`ssh-keygen -y`),
    /// and accepts a signature made with key + certificate as coming from a principal certified
    /// by our CA (`ssh-keygen -Y verify` with a `cert-authority` allowed-signers line), which runs
    /// the same certificate checks as sshd: CA signature, principal, validity.
    #[test]
    fn openssh_accepts_certificate_and_key() {
        let Some(_) = run("ssh-keygen", &["-?"]) else {
            return;
        };
        let ca = user_ca();
        let (cert, key) = issue(&ca, &with_device(alice()));
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("id");
        let cert_path = dir.path().join("id-cert.pub");
        write_private(&key_path, &key.ssh_private_key_openssh().unwrap());
        std::fs::write(&cert_path, format!("{}\n", cert.to_openssh().unwrap())).unwrap();
        let s = |p: &std::path::Path| p.to_str().unwrap().to_owned();

        // -L: OpenSSH parses the certificate (it rejects unsorted or duplicate extensions).
        let out = run("ssh-keygen", &["-L", "-f", &s(&cert_path)]).unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("ecdsa-sha2-nistp256-cert-v01@openssh.com user certificate"),
            "{text}"
        );
        assert!(text.contains("Key ID: \"alice\""), "{text}");
        assert!(text.contains("Signing CA: ECDSA"), "{text}");
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let ext_at = lines.iter().position(|l| *l == "Extensions:").unwrap();
        let listed: Vec<&str> = lines[ext_at + 1..]
            .iter()
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(
            listed,
            [
                "devtrust-device-asset-tag",
                "devtrust-device-attestation",
                "devtrust-device-auth-time",
                "devtrust-device-credential-id",
                "devtrust-device-id",
                "devtrust-device-os",
                "devtrust-device-os-version",
                "devtrust-logins",
                "devtrust-roles",
                "permit-agent-forwarding",
                "permit-port-forwarding",
                "permit-pty",
            ]
        );
        let principals_at = lines.iter().position(|l| *l == "Principals:").unwrap();
        assert_eq!(
            lines[principals_at + 1..principals_at + 3],
            ["root", "alice"]
        );

        // -y: OpenSSH reads our private key and derives the same public key.
        let out = run("ssh-keygen", &["-y", "-f", &s(&key_path)]).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let derived =
            ssh_key::PublicKey::from_openssh(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
        assert_eq!(derived.key_data(), key.ssh_public_key().unwrap().key_data());

        // -Y sign with the certificate, -Y verify against the CA.
        let msg_path = dir.path().join("msg");
        std::fs::write(&msg_path, b"device trust").unwrap();
        let out = run(
            "ssh-keygen",
            &[
                "-Y",
                "sign",
                "-f",
                &s(&cert_path),
                "-n",
                "file",
                &s(&msg_path),
            ],
        )
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let allowed = dir.path().join("allowed_signers");
        std::fs::write(
            &allowed,
            format!("root cert-authority {}\n", ca.ssh_public_key_openssh()),
        )
        .unwrap();
        let verify = |principal: &str, at: OffsetDateTime| {
            let at = format!(
                "verify-time={:04}{:02}{:02}{:02}{:02}{:02}",
                at.year(),
                u8::from(at.month()),
                at.day(),
                at.hour(),
                at.minute(),
                at.second()
            );
            std::process::Command::new("ssh-keygen")
                .args([
                    "-Y",
                    "verify",
                    "-f",
                    &s(&allowed),
                    "-I",
                    principal,
                    "-n",
                    "file",
                    "-O",
                    &at,
                    "-s",
                ])
                .arg(dir.path().join("msg.sig"))
                .stdin(std::fs::File::open(&msg_path).unwrap())
                .output()
                .unwrap()
        };
        let ok = verify("root", NOW);
        assert!(
            ok.status.success(),
            "{}{}",
            String::from_utf8_lossy(&ok.stdout),
            String::from_utf8_lossy(&ok.stderr)
        );
        // Expired at that time, or not a listed principal: refused by OpenSSH too.
        assert!(!verify("root", NOW + Duration::days(1)).status.success());
        assert!(!verify("alice-not-listed", NOW).status.success());
    }
}
