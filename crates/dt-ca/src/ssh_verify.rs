//! Verifying OpenSSH user certificates with only the user CA's **public** key, as an SSH
//! access point (which never holds a CA key) must.
//!
//! [`SshUserCaKey::verify_user_cert`] runs, in this order: certificate type (user), issuer
//! (the signature key is this CA's and the signature verifies, with ring), the devtrust
//! identity extensions (all three device values or none, see [`parse_ssh_identity`]), no
//! critical options, and the validity window (PROTOCOL.certkeys: `valid_after <= now <
//! valid_before`). It does **not** check the requested login: that is
//! [`SshUserCaKey::verify_for_login`], which also refuses a certificate that does not name
//! the login among its principals.

use ssh_key::certificate::CertType;
use ssh_key::encoding::Encode as _;
use ssh_key::public::KeyData;
use ssh_key::{Algorithm, Certificate, EcdsaCurve};
use time::OffsetDateTime;

use crate::authority::CaKind;
use crate::error::{CaError, Result};
use crate::identity::{Identity, ssh_ext};
use crate::key;
use crate::ssh::parse_ssh_identity;

/// A user CA's SSH public key, ready to verify certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshUserCaKey {
    key: KeyData,
    point: Vec<u8>,
}

/// Why a certificate was refused for a login, beyond [`CaError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshCertRefusal {
    /// The certificate itself is not acceptable (issuer, type, validity, extensions).
    #[error("{0}")]
    Certificate(#[from] CaError),
    /// The certificate does not list the requested login as a principal.
    #[error("certificate is not valid for login {login:?} (its principals: {principals})")]
    WrongPrincipal {
        /// The login asked for.
        login: String,
        /// The certificate's principals, comma-separated.
        principals: String,
    },
}

impl SshUserCaKey {
    /// From the CA's public key line (`ecdsa-sha2-nistp256 AAAA...`).
    pub fn from_openssh(line: &str) -> Result<Self> {
        let pk = ssh_key::PublicKey::from_openssh(line.trim())
            .map_err(|e| CaError::malformed("ssh public key", e.to_string()))?;
        let point = key::point_from_ssh_key(pk.key_data())?.to_vec();
        Ok(Self {
            key: pk.key_data().clone(),
            point,
        })
    }

    /// The key as one OpenSSH line, without comment or newline.
    pub fn to_openssh(&self) -> Result<String> {
        ssh_key::PublicKey::new(self.key.clone(), "")
            .to_openssh()
            .map_err(|e| CaError::malformed("ssh public key", e.to_string()))
    }

    fn signed_by_us(&self, cert: &Certificate) -> bool {
        if cert.signature_key() != &self.key
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
        let (Ok(bytes), Ok(sig_len)) = (cert.to_bytes(), cert.signature().encoded_len_prefixed())
        else {
            return false;
        };
        let Some(tbs) = bytes.len().checked_sub(sig_len).map(|n| &bytes[..n]) else {
            return false;
        };
        key::verify_fixed(&self.point, tbs, &fixed)
    }

    /// Checks that `cert` is a user certificate signed by this CA, with no critical options,
    /// valid at `now`, and returns its identity.
    pub fn verify_user_cert(&self, cert: &Certificate, now: OffsetDateTime) -> Result<Identity> {
        if cert.cert_type() != CertType::User {
            return Err(CaError::WrongUsage("not a user certificate".into()));
        }
        if !self.signed_by_us(cert) {
            return Err(CaError::NotIssuedByCa(CaKind::User));
        }
        let id = parse_ssh_identity(cert)?;
        if !cert.critical_options().is_empty() {
            return Err(CaError::WrongUsage(
                "certificate carries critical options".into(),
            ));
        }
        crate::ssh::check_ssh_validity(&id, now)?;
        Ok(id)
    }

    /// [`Self::verify_user_cert`], and the certificate names `login` as a principal.
    pub fn verify_for_login(
        &self,
        cert: &Certificate,
        login: &str,
        now: OffsetDateTime,
    ) -> std::result::Result<Identity, SshCertRefusal> {
        let id = self.verify_user_cert(cert, now)?;
        if login == ssh_ext::NO_LOGIN_PRINCIPAL
            || !cert.valid_principals().iter().any(|p| p == login)
        {
            return Err(SshCertRefusal::WrongPrincipal {
                login: login.to_owned(),
                principals: cert.valid_principals().join(","),
            });
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    #[test]
    fn agrees_with_the_ca_and_refuses_the_same_things() {
        let ca = user_ca();
        let verifier = SshUserCaKey::from_openssh(&ca.ssh_public_key_openssh()).unwrap();
        assert_eq!(verifier.to_openssh().unwrap(), ca.ssh_public_key_openssh());
        let key = client_key();
        for id in [alice(), with_device(alice()), robot(), with_device(robot())] {
            let cert = ca
                .issue_ssh_user_cert(&key.ssh_public_key().unwrap(), &id)
                .unwrap();
            assert_eq!(verifier.verify_user_cert(&cert, NOW).unwrap(), id);
        }
        let cert = ca
            .issue_ssh_user_cert(&key.ssh_public_key().unwrap(), &alice())
            .unwrap();
        assert!(verifier.verify_for_login(&cert, "root", NOW).is_ok());
        assert!(matches!(
            verifier.verify_for_login(&cert, "bob", NOW),
            Err(SshCertRefusal::WrongPrincipal { .. })
        ));
        assert!(matches!(
            verifier.verify_user_cert(&cert, alice().not_after),
            Err(CaError::Expired { .. })
        ));
        let other = SshUserCaKey::from_openssh(&user_ca().ssh_public_key_openssh()).unwrap();
        assert_eq!(
            other.verify_user_cert(&cert, NOW),
            Err(CaError::NotIssuedByCa(CaKind::User))
        );
        // A host certificate is refused for its type, whoever signed it.
        let host = host_ca()
            .issue_ssh_host_cert(
                &key.ssh_public_key().unwrap(),
                "n",
                &["n".into()],
                NOW + time::Duration::hours(1),
            )
            .unwrap();
        assert!(matches!(
            verifier.verify_user_cert(&host, NOW),
            Err(CaError::WrongUsage(_))
        ));
        // The reserved no-login principal never matches.
        let robot_cert = ca
            .issue_ssh_user_cert(&key.ssh_public_key().unwrap(), &robot())
            .unwrap();
        assert!(
            verifier
                .verify_for_login(&robot_cert, ssh_ext::NO_LOGIN_PRINCIPAL, NOW)
                .is_err()
        );
    }
}
