//! devtrust's certificate authorities: who signs, and what the signatures say.
//!
//! A cluster has two CAs ([`CaKind`]): the **user CA** signs users' OpenSSH certificates and
//! X.509 client certificates; the **host CA** signs hosts' OpenSSH certificates and TLS server
//! certificates. All keys are ECDSA P-256; one client key ([`ClientKey`]) serves a user's SSH
//! and TLS certificates.
//!
//! Why a crate of its own: it is the one place that turns an [`Identity`] into certificate
//! bytes and back, so the encoding (DESIGN.md §5) is defined once and tested against OpenSSH,
//! OpenSSL, x509-parser and webpki. It is pure: no I/O, no clock (callers pass `now`), no
//! async; randomness comes from the operating system through ring.
//!
//! What it guarantees:
//! - Issuance takes **public keys only**; private keys never reach the CA.
//! - A parsed identity has a device only when **all three** device values are present; a
//!   partial set is an error ([`CaError::PartialDevice`]), never "no device".
//! - [`CertAuthority::verify_x509_issued_by`] and [`CertAuthority::verify_ssh_user_cert`]
//!   check signature (with this CA's key), certificate type/usage and validity window before
//!   returning an identity. The `parse_*` functions do **not** and are for display only.
//! - [`CertAuthority::augment`] re-issues for the same keys and identity, never extends a
//!   lifetime, and refuses certificates that already carry a device.
//! - An SSH user certificate never has an empty principal list (which OpenSSH would accept for
//!   every login).
//!
//! What it deliberately does not do: decide *whether* to issue (that is `dt-authz` and the
//! auth service), revocation, CA rotation, or any other key algorithm.
//!
//! X.509 certificates are written with a small DER writer of our own: the devtrust Subject
//! attributes live under the UUID arc `2.25.112976937590999683324659271999942156561`, whose
//! last component does not fit the `u64`/`u32` arcs of rcgen or const-oid (see `asn1`).

mod asn1;
mod augment;
mod authority;
mod db;
mod error;
mod identity;
pub mod jwt;
mod key;
mod node;
pub mod pem;
mod serving;
mod ssh;
mod ssh_verify;
mod x509;

pub use authority::{CA_VALIDITY, CaKind, CertAuthority, SecretPem, StoredCa};
pub use error::{CaError, Result};
pub use identity::{DeviceExt, Identity, ssh_ext, x509_oid};
pub use key::ClientKey;
pub use node::{NODE_ROLE_OID, NodeIdentity, verify_service_cert_by_ca_cert};
pub use serving::{
    cert_not_after, cert_spki_der, self_signed_client_cert, self_signed_serving_cert,
};
pub use ssh::{
    VerifiedSshCert, certificate_from_openssh, certificate_to_openssh, parse_ssh_identity,
};
pub use ssh_verify::{SshCertRefusal, SshUserCaKey};
pub use x509::{BACKDATE, VerifiedX509Cert, parse_x509_identity};

/// The SSH certificate type, re-exported for callers.
pub use ssh_key::Certificate as SshCertificate;

#[cfg(test)]
pub(crate) mod testutil {
    //! Shared fixtures for the unit tests.

    use time::OffsetDateTime;
    use time::macros::datetime;

    use crate::{CaKind, CertAuthority, ClientKey, DeviceExt, Identity};

    pub(crate) const NOW: OffsetDateTime = datetime!(2026-03-01 10:00:00 UTC);

    pub(crate) fn user_ca() -> CertAuthority {
        CertAuthority::generate("example", CaKind::User, NOW - time::Duration::days(1)).unwrap()
    }

    pub(crate) fn host_ca() -> CertAuthority {
        CertAuthority::generate("example", CaKind::Host, NOW - time::Duration::days(1)).unwrap()
    }

    pub(crate) fn alice() -> Identity {
        Identity {
            username: "alice".parse().unwrap(),
            roles: vec!["access".into(), "editor".into()],
            logins: vec!["root".into(), "alice".into()],
            bot: false,
            trait_logins: vec!["alice".into()],
            device: None,
            not_before: NOW - time::Duration::minutes(5),
            not_after: NOW + time::Duration::hours(12),
        }
    }

    pub(crate) fn robot() -> Identity {
        Identity {
            username: "bot-ci".parse().unwrap(),
            roles: vec![],
            logins: vec![],
            bot: true,
            ..alice()
        }
    }

    pub(crate) fn device() -> DeviceExt {
        DeviceExt {
            device_id: "5f2c6c39-3c4b-4a53-9d0c-3d2f3f0a9b11".parse().unwrap(),
            asset_tag: "C00AA0AAAA0A".into(),
            credential_id: "c7d7a1e2-credential".parse().unwrap(),
            posture: dt_types::posture::DevicePosture {
                attestation_type: Some(dt_types::device::AttestationType::TpmEkcertTrusted),
                os_type: Some(dt_types::device::OsType::Macos),
                os_version: Some("14.4.1".into()),
                authenticated_at: Some(time::macros::datetime!(2026-01-01 00:00 UTC)),
            },
        }
    }

    pub(crate) fn with_device(mut id: Identity) -> Identity {
        id.device = Some(device());
        id
    }

    pub(crate) fn client_key() -> ClientKey {
        ClientKey::generate().unwrap()
    }

    /// Runs `program args...`; `None` when the program is not installed.
    pub(crate) fn run(program: &str, args: &[&str]) -> Option<std::process::Output> {
        match std::process::Command::new(program).args(args).output() {
            Ok(out) => Some(out),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("{program} not installed; skipping this check");
                None
            }
            Err(e) => panic!("running {program}: {e}"),
        }
    }
}
