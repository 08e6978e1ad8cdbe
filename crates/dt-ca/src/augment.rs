//! Augmentation: after a device proved itself, re-issue the user's SSH and X.509 certificates
//! with the device added (DESIGN.md §4 "Authentication").
//!
//! Guarantees: the new certificates are for the **same public keys**, carry the **same
//! identity** plus the device, and never outlive the originals: the X.509 NotAfter is kept,
//! the SSH ValidBefore is the earlier of its own and the X.509 NotAfter. Both start one minute
//! before `now` ([`BACKDATE`]). Certificates that already carry a device are refused, so a
//! device can never be swapped for another one on the same certificates.

use ssh_key::{Certificate, PublicKey};
use time::OffsetDateTime;

use crate::authority::{CaKind, CertAuthority};
use crate::error::{CaError, Result};
use crate::identity::DeviceExt;
use crate::key;
use crate::ssh::{VerifiedSshCert, check_ssh_validity};
use crate::x509::{BACKDATE, VerifiedX509Cert, check_window, whole_seconds};

impl CertAuthority {
    /// Re-issues `ssh` and `x509_der` (DER) with `device` added. Both must be valid at `now`,
    /// issued by this (user) CA, free of any device, for the same username, bot flag and
    /// public key.
    pub fn augment(
        &self,
        ssh: &Certificate,
        x509_der: &[u8],
        device: &DeviceExt,
        now: OffsetDateTime,
    ) -> Result<(Certificate, Vec<u8>)> {
        let ssh = self.verify_ssh_user(ssh, now)?;
        let x509 = self.verify_x509_cert(x509_der, now)?;
        self.augment_verified(&ssh, &x509, device, now)
    }

    /// [`augment`](Self::augment) with certificates this CA already verified (the auth
    /// service verifies the client certificate when the connection opens, and the SSH
    /// certificate when the device authentication opens): their signatures are not checked
    /// twice, but both must have been verified by this CA and still be valid at `now`.
    pub fn augment_verified(
        &self,
        ssh: &VerifiedSshCert,
        x509: &VerifiedX509Cert,
        device: &DeviceExt,
        now: OffsetDateTime,
    ) -> Result<(Certificate, Vec<u8>)> {
        self.require_kind("augmenting certificates", CaKind::User)?;
        device.validate()?;
        if ssh.verified_by != self.key.point() || x509.verified_by != self.key.point() {
            return Err(CaError::NotIssuedByCa(self.kind));
        }
        check_ssh_validity(&ssh.identity, now)?;
        check_window(x509.identity.not_before, x509.identity.not_after, now)?;
        let (ssh_id, ssh) = (ssh.identity.clone(), &ssh.cert);
        let (x509_id, spki) = (x509.identity.clone(), &x509.spki);
        if ssh_id.device.is_some() || x509_id.device.is_some() {
            return Err(CaError::AlreadyAugmented);
        }
        if ssh_id.username != x509_id.username {
            return Err(CaError::IdentityMismatch(format!(
                "ssh certificate is for {:?}, x509 certificate for {:?}",
                ssh_id.username, x509_id.username
            )));
        }
        if ssh_id.bot != x509_id.bot {
            return Err(CaError::IdentityMismatch(
                "one certificate is a bot's and the other is not".into(),
            ));
        }
        if key::point_from_ssh_key(ssh.public_key())? != key::point_from_spki(spki)? {
            return Err(CaError::IdentityMismatch(
                "the certificates are for different public keys".into(),
            ));
        }

        let not_before = whole_seconds(now) - BACKDATE;
        let x509_not_after = x509_id.not_after;
        let ssh_not_after = ssh_id.not_after.min(x509_not_after);
        let device = Some(device.clone());

        let mut new_ssh_id = ssh_id;
        new_ssh_id.device = device.clone();
        new_ssh_id.not_before = not_before;
        new_ssh_id.not_after = ssh_not_after;
        let new_ssh =
            self.issue_ssh_user_cert(&PublicKey::new(ssh.public_key().clone(), ""), &new_ssh_id)?;

        let mut new_x509_id = x509_id;
        new_x509_id.device = device;
        new_x509_id.not_before = not_before;
        new_x509_id.not_after = x509_not_after;
        let new_x509 = self.issue_x509_client_cert(spki, &new_x509_id)?;

        Ok((new_ssh, new_x509))
    }
}

#[cfg(test)]
mod tests {
    use time::Duration;

    use super::*;
    use crate::testutil::*;
    use crate::{ClientKey, Identity, parse_ssh_identity, parse_x509_identity};

    struct Login {
        key: ClientKey,
        ssh: Certificate,
        x509: Vec<u8>,
    }

    fn login(ca: &CertAuthority, id: &Identity) -> Login {
        let key = client_key();
        let ssh = ca
            .issue_ssh_user_cert(&key.ssh_public_key().unwrap(), id)
            .unwrap();
        let x509 = ca.issue_x509_client_cert(&key.spki_der(), id).unwrap();
        Login { key, ssh, x509 }
    }

    #[test]
    fn augmentation_adds_the_device_and_keeps_keys_identity_and_expiry() {
        let ca = user_ca();
        for id in [alice(), robot()] {
            let l = login(&ca, &id);
            let (ssh, x509) = ca.augment(&l.ssh, &l.x509, &device(), NOW).unwrap();

            let expected = Identity {
                not_before: NOW - BACKDATE,
                ..with_device(id.clone())
            };
            assert_eq!(ca.verify_ssh_user_cert(&ssh, NOW).unwrap(), expected);
            assert_eq!(ca.verify_x509_issued_by(&x509, NOW).unwrap(), expected);
            // Same public keys.
            assert_eq!(ssh.public_key(), l.ssh.public_key());
            assert_eq!(
                x509_parser::parse_x509_certificate(&x509)
                    .unwrap()
                    .1
                    .public_key()
                    .raw,
                l.key.spki_der().as_slice()
            );
            // Same principals and permissions as before, plus the device.
            assert_eq!(ssh.valid_principals(), l.ssh.valid_principals());
            for (k, v) in l.ssh.extensions().iter() {
                assert_eq!(ssh.extensions().get(k), Some(v));
            }
        }
    }

    #[test]
    fn ssh_expiry_is_capped_by_the_x509_expiry() {
        let ca = user_ca();
        let key = client_key();
        let long = Identity {
            not_after: NOW + Duration::hours(24),
            ..alice()
        };
        let short = alice(); // 12 h
        let ssh = ca
            .issue_ssh_user_cert(&key.ssh_public_key().unwrap(), &long)
            .unwrap();
        let x509 = ca.issue_x509_client_cert(&key.spki_der(), &short).unwrap();
        let (new_ssh, new_x509) = ca.augment(&ssh, &x509, &device(), NOW).unwrap();
        assert_eq!(
            parse_ssh_identity(&new_ssh).unwrap().not_after,
            short.not_after
        );
        assert_eq!(
            parse_x509_identity(&new_x509).unwrap().not_after,
            short.not_after
        );

        // The other way round, each keeps its own (shorter) SSH expiry: nothing is extended.
        let ssh = ca
            .issue_ssh_user_cert(&key.ssh_public_key().unwrap(), &short)
            .unwrap();
        let x509 = ca.issue_x509_client_cert(&key.spki_der(), &long).unwrap();
        let (new_ssh, new_x509) = ca.augment(&ssh, &x509, &device(), NOW).unwrap();
        assert_eq!(
            parse_ssh_identity(&new_ssh).unwrap().not_after,
            short.not_after
        );
        assert_eq!(
            parse_x509_identity(&new_x509).unwrap().not_after,
            long.not_after
        );
    }

    #[test]
    fn already_augmented_certificates_are_refused() {
        let ca = user_ca();
        let l = login(&ca, &alice());
        let (ssh, x509) = ca.augment(&l.ssh, &l.x509, &device(), NOW).unwrap();
        assert_eq!(
            ca.augment(&ssh, &x509, &device(), NOW),
            Err(CaError::AlreadyAugmented)
        );
        // Only one of them augmented is just as bad.
        assert_eq!(
            ca.augment(&ssh, &l.x509, &device(), NOW),
            Err(CaError::AlreadyAugmented)
        );
        assert_eq!(
            ca.augment(&l.ssh, &x509, &device(), NOW),
            Err(CaError::AlreadyAugmented)
        );
    }

    #[test]
    fn mismatched_certificates_are_refused() {
        let ca = user_ca();
        let a = login(&ca, &alice());
        let bob = Identity {
            username: "bob".parse().unwrap(),
            ..alice()
        };
        let b = login(&ca, &bob);
        assert!(matches!(
            ca.augment(&a.ssh, &b.x509, &device(), NOW),
            Err(CaError::IdentityMismatch(m)) if m.contains("\"alice\"") && m.contains("\"bob\"")
        ));
        // Same user, two different keys.
        let a2 = login(&ca, &alice());
        assert!(matches!(
            ca.augment(&a.ssh, &a2.x509, &device(), NOW),
            Err(CaError::IdentityMismatch(m)) if m.contains("public keys")
        ));
        // Same name, one a bot.
        let bot_alice = Identity {
            bot: true,
            ..alice()
        };
        let key = &a.key;
        let x509 = ca
            .issue_x509_client_cert(&key.spki_der(), &bot_alice)
            .unwrap();
        assert!(matches!(
            ca.augment(&a.ssh, &x509, &device(), NOW),
            Err(CaError::IdentityMismatch(_))
        ));
    }

    #[test]
    fn foreign_expired_or_wrong_ca_is_refused() {
        let ca = user_ca();
        let other = user_ca();
        let mine = login(&ca, &alice());
        let theirs = login(&other, &alice());
        assert_eq!(
            ca.augment(&theirs.ssh, &theirs.x509, &device(), NOW),
            Err(CaError::NotIssuedByCa(CaKind::User))
        );
        assert_eq!(
            ca.augment(&mine.ssh, &theirs.x509, &device(), NOW),
            Err(CaError::NotIssuedByCa(CaKind::User))
        );
        assert!(matches!(
            ca.augment(&mine.ssh, &mine.x509, &device(), NOW + Duration::days(1)),
            Err(CaError::Expired { .. })
        ));
        assert!(matches!(
            host_ca().augment(&mine.ssh, &mine.x509, &device(), NOW),
            Err(CaError::WrongCaKind { .. })
        ));
        let empty = crate::DeviceExt {
            asset_tag: String::new(),
            ..device()
        };
        assert!(matches!(
            ca.augment(&mine.ssh, &mine.x509, &empty, NOW),
            Err(CaError::InvalidIdentity(_))
        ));
    }

    #[test]
    fn certificates_verified_once_augment_only_with_the_ca_that_verified_them_and_while_valid() {
        let ca = user_ca();
        let other = user_ca();
        let mine = login(&ca, &alice());
        let ssh_ok = ca.verify_ssh_user(&mine.ssh, NOW).unwrap();
        let x509_ok = ca.verify_x509_cert(&mine.x509, NOW).unwrap();
        assert_eq!(ssh_ok.identity(), &alice());
        assert_eq!(x509_ok.identity(), &alice());
        assert_eq!(x509_ok.der(), mine.x509.as_slice());
        // The same certificates as `augment` gives.
        let (ssh, x509) = ca
            .augment_verified(&ssh_ok, &x509_ok, &device(), NOW)
            .unwrap();
        let expected = Identity {
            not_before: NOW - BACKDATE,
            ..with_device(alice())
        };
        assert_eq!(ca.verify_ssh_user_cert(&ssh, NOW).unwrap(), expected);
        assert_eq!(ca.verify_x509_issued_by(&x509, NOW).unwrap(), expected);
        // Verified by another CA (even one that issued them): not this CA's word, for
        // either certificate.
        let theirs = login(&other, &alice());
        let ssh_by_other = other.verify_ssh_user(&theirs.ssh, NOW).unwrap();
        let x509_by_other = other.verify_x509_cert(&theirs.x509, NOW).unwrap();
        assert_eq!(
            ca.augment_verified(&ssh_by_other, &x509_ok, &device(), NOW),
            Err(CaError::NotIssuedByCa(CaKind::User))
        );
        assert_eq!(
            ca.augment_verified(&ssh_ok, &x509_by_other, &device(), NOW),
            Err(CaError::NotIssuedByCa(CaKind::User))
        );
        // A proof is only made for a certificate the CA signed.
        assert_eq!(
            ca.verify_x509_cert(&theirs.x509, NOW).unwrap_err(),
            CaError::NotIssuedByCa(CaKind::User)
        );
        // Expired between the verification and the augmentation: each is checked again.
        assert!(matches!(
            ca.augment_verified(&ssh_ok, &x509_ok, &device(), NOW + Duration::days(1)),
            Err(CaError::Expired { .. })
        ));
        let short = Identity {
            not_after: NOW + Duration::hours(1),
            ..alice()
        };
        let short_x509 = ca
            .issue_x509_client_cert(&mine.key.spki_der(), &short)
            .unwrap();
        let short_ok = ca.verify_x509_cert(&short_x509, NOW).unwrap();
        assert!(matches!(
            ca.augment_verified(&ssh_ok, &short_ok, &device(), NOW + Duration::hours(2)),
            Err(CaError::Expired { .. })
        ));
        // An already augmented certificate stays refused.
        let augmented = ca.verify_ssh_user(&ssh, NOW).unwrap();
        assert_eq!(
            ca.augment_verified(&augmented, &x509_ok, &device(), NOW),
            Err(CaError::AlreadyAugmented)
        );
        let augmented = ca.verify_x509_cert(&x509, NOW).unwrap();
        assert_eq!(
            ca.augment_verified(&ssh_ok, &augmented, &device(), NOW),
            Err(CaError::AlreadyAugmented)
        );
    }

    /// Throughput of augmentation (two verifications and two signatures); run with
    /// `cargo test -p dt-ca --release -- --ignored --nocapture augment_throughput`.
    #[test]
    #[ignore = "benchmark"]
    fn augment_throughput() {
        let ca = user_ca();
        let l = login(&ca, &alice());
        let n = 2000;
        let start = std::time::Instant::now();
        for _ in 0..n {
            let out = ca.augment(&l.ssh, &l.x509, &device(), NOW).unwrap();
            std::hint::black_box(out);
        }
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "augment: {:.0}/s on one core ({:.1} µs each)",
            f64::from(n) / secs,
            secs * 1e6 / f64::from(n)
        );
    }
}
