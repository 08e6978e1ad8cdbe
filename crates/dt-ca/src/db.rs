//! The database CA: what database servers trust, and nothing else does.
//!
//! - [`CertAuthority::issue_db_server_cert`]: the database server's own TLS certificate
//!   (`dtctl auth sign --format=db` writes it with its key and the CA bundle). A database
//!   access point verifies the server by it.
//! - [`CertAuthority::issue_db_client_cert`]: the short-lived client certificate a database
//!   access point logs in with upstream, as the database user the decision allowed: Subject
//!   CN = the database user, clientAuth. PostgreSQL (`hostssl ... cert`) maps the CN to the
//!   user; MariaDB checks it with `REQUIRE SUBJECT '/CN=user'`.
//!
//! Users never hold certificates of this CA: theirs come from the user CA and reach only the
//! access point, which decides first.

use std::net::IpAddr;

use time::OffsetDateTime;

use crate::authority::{CaKind, CertAuthority};
use crate::error::{CaError, Result};
use crate::key;
use crate::x509::{name, oid};

/// The longest database user name accepted (MariaDB allows 80 characters, PostgreSQL 63 bytes).
pub const MAX_DB_USER_LEN: usize = 80;

impl CertAuthority {
    /// A TLS server certificate of the database CA for a database server's key.
    pub fn issue_db_server_cert(
        &self,
        subject_spki_der: &[u8],
        dns_names: &[String],
        ips: &[IpAddr],
        not_after: OffsetDateTime,
    ) -> Result<Vec<u8>> {
        self.require_kind("issuing a database server certificate", CaKind::Db)?;
        self.server_cert(subject_spki_der, dns_names, ips, not_after)
    }

    /// A client certificate of the database CA for `db_user` (Subject CN), valid until
    /// `not_after`.
    pub fn issue_db_client_cert(
        &self,
        subject_spki_der: &[u8],
        db_user: &str,
        not_after: OffsetDateTime,
    ) -> Result<Vec<u8>> {
        self.require_kind("issuing a database client certificate", CaKind::Db)?;
        key::point_from_spki(subject_spki_der)?;
        if db_user.is_empty()
            || db_user.chars().count() > MAX_DB_USER_LEN
            || db_user
                .chars()
                .any(|c| c.is_control() || c == '/' || c == '=')
        {
            return Err(CaError::InvalidIdentity(format!(
                "{db_user:?} is not a database user name this CA signs (1 to {MAX_DB_USER_LEN} characters, no control characters, '/' or '=')"
            )));
        }
        if not_after <= self.not_before {
            return Err(CaError::InvalidIdentity(
                "not_after must be later than not_before".into(),
            ));
        }
        let subject = name(&[(&oid::COMMON_NAME, db_user)]);
        let extensions = self.end_entity_extensions(&oid::KP_CLIENT_AUTH, None);
        self.issue(
            &subject,
            subject_spki_der,
            self.not_before,
            not_after,
            &extensions,
        )
    }
}

#[cfg(test)]
mod tests {
    use x509_parser::prelude::{FromDer as _, X509Certificate};

    use super::*;
    use crate::ClientKey;

    const NOW: OffsetDateTime = time::macros::datetime!(2026-12-01 00:00 UTC);

    fn db_ca() -> CertAuthority {
        CertAuthority::generate("example", CaKind::Db, NOW).unwrap()
    }

    #[test]
    fn client_certs_name_the_database_user_and_chain_to_the_db_ca() {
        let ca = db_ca();
        let key = ClientKey::generate().unwrap();
        let der = ca
            .issue_db_client_cert(&key.spki_der(), "alice", NOW + time::Duration::hours(1))
            .unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let cn: Vec<_> = cert
            .subject()
            .iter_common_name()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        assert_eq!(cn, ["alice"]);
        assert!(
            cert.extended_key_usage()
                .unwrap()
                .unwrap()
                .value
                .client_auth
        );
        let (_, ca_cert) = X509Certificate::from_der(ca.cert_der()).unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        // Not an identity anywhere else: the db CA's certificates are refused as such.
        assert!(ca.verify_x509_issued_by(&der, NOW).is_err());
    }

    #[test]
    fn server_certs_carry_the_names_and_only_the_db_ca_signs_them() {
        let ca = db_ca();
        let key = ClientKey::generate().unwrap();
        let der = ca
            .issue_db_server_cert(
                &key.spki_der(),
                &["db.example".into()],
                &["127.0.0.1".parse().unwrap()],
                NOW + time::Duration::days(90),
            )
            .unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert!(
            cert.extended_key_usage()
                .unwrap()
                .unwrap()
                .value
                .server_auth
        );
        let host = CertAuthority::generate("example", CaKind::Host, NOW).unwrap();
        assert!(
            host.issue_db_server_cert(
                &key.spki_der(),
                &["x".into()],
                &[],
                NOW + time::Duration::days(1)
            )
            .is_err()
        );
        assert!(
            host.issue_db_client_cert(&key.spki_der(), "alice", NOW + time::Duration::days(1))
                .is_err()
        );
        assert!(
            ca.issue_tls_server_cert(
                &key.spki_der(),
                &["x".into()],
                &[],
                NOW + time::Duration::days(1)
            )
            .is_err(),
            "the db CA never signs the cluster's own servers"
        );
    }

    #[test]
    fn bad_user_names_are_refused() {
        let ca = db_ca();
        let key = ClientKey::generate().unwrap();
        for bad in ["", "a/CN=root", "x=y", "nl\n", &"u".repeat(81)] {
            assert!(
                ca.issue_db_client_cert(&key.spki_der(), bad, NOW + time::Duration::hours(1))
                    .is_err(),
                "{bad:?}"
            );
        }
    }
}
