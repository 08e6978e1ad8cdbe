//! End to end on a real software TPM: the client key store (this crate, feature `tpm`)
//! against the server checks of `dt-attest`. Every test runs its own swtpm.
// Test code: unwrap and panic are how a test fails.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]
#![cfg(feature = "tpm")]

use std::time::SystemTime;

use dt_attest::tpm::{
    self, PcrValue, PeerMisbehaved, PolicyDenied, TpmAttestationType, TpmEnrollRequest, TpmError,
    TpmQuote, VerifiedTpmCredential,
};
use dt_device::tpm::{AkAlgorithm, EkAlgorithm, TpmDeviceError, TpmKeyStore, TpmQuoteEvidence};
use dt_testkit::swtpm::{LocalCa, Swtpm, rng};

fn store(tpm: &Swtpm) -> (TpmKeyStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (
        TpmKeyStore::new(tpm.tcti.clone(), dir.path().join("keys")),
        dir,
    )
}

fn to_quote(q: &TpmQuoteEvidence) -> TpmQuote {
    TpmQuote {
        attest: q.attest.clone(),
        signature: q.signature.clone(),
        pcrs: q
            .pcrs
            .iter()
            .map(|p| PcrValue {
                index: p.index,
                digest: p.digest.clone(),
            })
            .collect(),
    }
}

fn request(store: &TpmKeyStore) -> TpmEnrollRequest {
    let ev = store.enrollment_evidence().unwrap();
    TpmEnrollRequest {
        ek_public: ev.ek_public,
        ek_cert: ev.ek_cert,
        ak_public: ev.ak_public,
    }
}

/// The whole enrollment ceremony, as the server and client drive it.
fn enroll(store: &TpmKeyStore, allowed: &[String]) -> Result<VerifiedTpmCredential, TpmError> {
    let req = request(store);
    let mut r = rng();
    let (state, challenge) = tpm::begin_enrollment(&req, allowed, SystemTime::now(), &mut r)?;
    let secret = store
        .activate_credential(
            &challenge.credential.credential_blob,
            &challenge.credential.encrypted_secret,
        )
        .unwrap();
    let quote = store.quote(&challenge.nonce).unwrap();
    tpm::finish_enrollment(state, &secret, &to_quote(&quote))
}

#[test]
fn trusted_ek_cert_enrolls_and_authenticates() {
    let ca = LocalCa::new();
    let tpm = Swtpm::start_with_ek_certs(&ca);
    let (store, _dir) = store(&tpm);
    let ev = store.enrollment_evidence().unwrap();
    assert!(
        ev.ek_cert.is_some(),
        "swtpm_setup wrote an RSA EK certificate"
    );

    let cred = enroll(&store, &[ca.issuer_pem()]).unwrap();
    assert_eq!(cred.attestation_type, TpmAttestationType::EkCertTrusted);
    assert_eq!(cred.attestation_type.as_str(), "tpm_ekcert_trusted");
    assert_eq!(
        cred.credential_id,
        store.credential_id().unwrap(),
        "client and server agree on the id"
    );
    assert_eq!(cred.credential_id, ev.credential_id);
    assert_eq!(
        tpm::credential_id(&cred.ak_public).unwrap(),
        cred.credential_id
    );
    let serial = cred.ek_cert_serial.clone().unwrap();
    assert_eq!(
        serial,
        tpm::parse_ek_cert(ev.ek_cert.as_ref().unwrap()).unwrap()
    );
    assert_eq!(cred.quote.pcrs.len(), 8);

    // Authentication: a fresh quote over a new nonce by the enrolled AK.
    let nonce = [0x5a; tpm::NONCE_LEN];
    let q = store.quote(&nonce).unwrap();
    let verified = tpm::verify_auth_quote(&cred.ak_public, &nonce, &to_quote(&q)).unwrap();
    assert_eq!(verified.pcrs.len(), 8);

    // The AK survives a new key store over the same directory (a new dtsh process).
    let again = TpmKeyStore::new(tpm.tcti.clone(), _dir.path().join("keys"));
    assert_eq!(again.credential_id().unwrap(), cred.credential_id);
    let q = again.quote(&nonce).unwrap();
    tpm::verify_auth_quote(&cred.ak_public, &nonce, &to_quote(&q)).unwrap();
}

#[test]
fn ek_cert_from_another_ca_is_refused() {
    let ca = LocalCa::new();
    let other = LocalCa::new();
    let tpm = Swtpm::start_with_ek_certs(&ca);
    // Provision a throwaway TPM so the other CA exists.
    let _other_tpm = Swtpm::start_with_ek_certs(&other);
    let (store, _dir) = store(&tpm);
    let err = enroll(&store, &[other.issuer_pem()]).unwrap_err();
    assert!(
        matches!(
            err,
            TpmError::PolicyDenied(PolicyDenied::EkCertUntrusted(_))
        ),
        "{err}"
    );
    // Listing only the root is not enough either: each allowed CA is an anchor on its own
    // and the client does not send intermediates.
    let err = enroll(&store, &[ca.root_pem()]).unwrap_err();
    assert!(
        matches!(
            err,
            TpmError::PolicyDenied(PolicyDenied::EkCertUntrusted(_))
        ),
        "{err}"
    );
    // Both listed: trusted.
    let cred = enroll(&store, &[other.issuer_pem(), ca.issuer_pem()]).unwrap();
    assert_eq!(cred.attestation_type, TpmAttestationType::EkCertTrusted);
}

#[test]
fn ek_cert_without_allow_list_is_ekcert() {
    let ca = LocalCa::new();
    let tpm = Swtpm::start_with_ek_certs(&ca);
    let (store, _dir) = store(&tpm);
    let store = store.with_ak_algorithm(AkAlgorithm::Rsa2048);
    let cred = enroll(&store, &[]).unwrap();
    assert_eq!(cred.attestation_type, TpmAttestationType::EkCert);
    assert!(cred.ek_cert_serial.is_some());
}

#[test]
fn ek_public_key_only() {
    let ca = LocalCa::new();
    let _provision = Swtpm::start_with_ek_certs(&ca);
    let tpm = Swtpm::start();
    let (store, _dir) = store(&tpm);
    assert!(store.enrollment_evidence().unwrap().ek_cert.is_none());
    let cred = enroll(&store, &[]).unwrap();
    assert_eq!(cred.attestation_type, TpmAttestationType::EkPub);
    assert_eq!(cred.ek_cert_serial, None);

    // With an allow-list, an EK public key alone is refused before any TPM work.
    let req = request(&store);
    let err =
        tpm::begin_enrollment(&req, &[ca.issuer_pem()], SystemTime::now(), &mut rng()).unwrap_err();
    assert_eq!(err, TpmError::PolicyDenied(PolicyDenied::EkCertRequired));
}

#[test]
fn ecc_ek_and_rsa_ak() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let store = TpmKeyStore::new(tpm.tcti.clone(), dir.path())
        .with_ek_algorithm(EkAlgorithm::EccP256)
        .with_ak_algorithm(AkAlgorithm::Rsa2048);
    let cred = enroll(&store, &[]).unwrap();
    assert_eq!(cred.attestation_type, TpmAttestationType::EkPub);
    let nonce = [1u8; 20];
    let q = store.quote(&nonce).unwrap();
    tpm::verify_auth_quote(&cred.ak_public, &nonce, &to_quote(&q)).unwrap();
}

#[test]
fn wrong_activation_secret_is_refused() {
    let tpm = Swtpm::start();
    let (store, _dir) = store(&tpm);
    let req = request(&store);
    let (state, challenge) =
        tpm::begin_enrollment(&req, &[], SystemTime::now(), &mut rng()).unwrap();
    let mut secret = store
        .activate_credential(
            &challenge.credential.credential_blob,
            &challenge.credential.encrypted_secret,
        )
        .unwrap();
    secret[0] ^= 1;
    let quote = store.quote(&challenge.nonce).unwrap();
    let err = tpm::finish_enrollment(state.clone(), &secret, &to_quote(&quote)).unwrap_err();
    assert_eq!(
        err,
        TpmError::PeerMisbehaved(PeerMisbehaved::WrongActivationSecret)
    );
    let err = tpm::finish_enrollment(state, &secret[..31], &to_quote(&quote)).unwrap_err();
    assert_eq!(
        err,
        TpmError::PeerMisbehaved(PeerMisbehaved::WrongActivationSecret)
    );
}

#[test]
fn activation_for_another_ek_fails_in_the_tpm() {
    let tpm_a = Swtpm::start();
    let tpm_b = Swtpm::start();
    let (a, _da) = store(&tpm_a);
    let (b, _db) = store(&tpm_b);
    let req_a = request(&a);
    let req_b = request(&b);
    // Device A claims TPM B's EK: the credential is encrypted to B's EK, which A cannot use.
    let forged = TpmEnrollRequest {
        ek_public: req_b.ek_public.clone(),
        ek_cert: None,
        ak_public: req_a.ak_public.clone(),
    };
    let (_state, challenge) =
        tpm::begin_enrollment(&forged, &[], SystemTime::now(), &mut rng()).unwrap();
    let err = a
        .activate_credential(
            &challenge.credential.credential_blob,
            &challenge.credential.encrypted_secret,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            TpmDeviceError::Tss {
                call: "Esys_ActivateCredential",
                ..
            }
        ),
        "{err}"
    );
    // And TPM B refuses too: its loaded AK has another Name than the one the credential is
    // bound to (Part 1 §24.5 integrity check).
    let err = b
        .activate_credential(
            &challenge.credential.credential_blob,
            &challenge.credential.encrypted_secret,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            TpmDeviceError::Tss {
                call: "Esys_ActivateCredential",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn replayed_and_foreign_quotes_are_refused() {
    let tpm_a = Swtpm::start();
    let tpm_b = Swtpm::start();
    let (a, _da) = store(&tpm_a);
    let (b, _db) = store(&tpm_b);
    let cred = enroll(&a, &[]).unwrap();
    b.enrollment_evidence().unwrap();

    let old_nonce = [7u8; 20];
    let old = to_quote(&a.quote(&old_nonce).unwrap());
    tpm::verify_auth_quote(&cred.ak_public, &old_nonce, &old).unwrap();
    // Replayed with a new challenge.
    let new_nonce = [8u8; 20];
    let err = tpm::verify_auth_quote(&cred.ak_public, &new_nonce, &old).unwrap_err();
    assert_eq!(err, TpmError::PeerMisbehaved(PeerMisbehaved::NonceMismatch));

    // Signed by another AK (TPM B's) over the right nonce.
    let foreign = to_quote(&b.quote(&new_nonce).unwrap());
    let err = tpm::verify_auth_quote(&cred.ak_public, &new_nonce, &foreign).unwrap_err();
    assert_eq!(
        err,
        TpmError::PeerMisbehaved(PeerMisbehaved::BadQuoteSignature)
    );

    // Also during enrollment: the old quote cannot finish a new challenge.
    let req = request(&a);
    let (state, challenge) =
        tpm::begin_enrollment(&req, &[], SystemTime::now(), &mut rng()).unwrap();
    let secret = a
        .activate_credential(
            &challenge.credential.credential_blob,
            &challenge.credential.encrypted_secret,
        )
        .unwrap();
    let err = tpm::finish_enrollment(state, &secret, &old).unwrap_err();
    assert_eq!(err, TpmError::PeerMisbehaved(PeerMisbehaved::NonceMismatch));
}

#[test]
fn tampered_pcr_values_are_refused() {
    let tpm = Swtpm::start();
    let (store, _dir) = store(&tpm);
    let cred = enroll(&store, &[]).unwrap();
    let nonce = [3u8; 20];
    let good = to_quote(&store.quote(&nonce).unwrap());

    let mut changed = good.clone();
    changed.pcrs[0].digest[0] ^= 0xff;
    let err = tpm::verify_auth_quote(&cred.ak_public, &nonce, &changed).unwrap_err();
    assert_eq!(
        err,
        TpmError::PeerMisbehaved(PeerMisbehaved::PcrDigestMismatch)
    );

    let mut dropped = good.clone();
    dropped.pcrs.pop();
    let err = tpm::verify_auth_quote(&cred.ak_public, &nonce, &dropped).unwrap_err();
    assert_eq!(
        err,
        TpmError::PeerMisbehaved(PeerMisbehaved::PcrSelectionMismatch)
    );

    let mut extra = good.clone();
    extra.pcrs.push(PcrValue {
        index: 10,
        digest: vec![0; 32],
    });
    let err = tpm::verify_auth_quote(&cred.ak_public, &nonce, &extra).unwrap_err();
    assert_eq!(
        err,
        TpmError::PeerMisbehaved(PeerMisbehaved::PcrSelectionMismatch)
    );

    // Values reordered are fine (sorted by index), values swapped between indices are not.
    let mut reordered = good.clone();
    reordered.pcrs.reverse();
    tpm::verify_auth_quote(&cred.ak_public, &nonce, &reordered).unwrap();
    let mut swapped = good.clone();
    swapped.pcrs[0].digest = vec![0xaa; 32];
    let err = tpm::verify_auth_quote(&cred.ak_public, &nonce, &swapped).unwrap_err();
    assert_eq!(
        err,
        TpmError::PeerMisbehaved(PeerMisbehaved::PcrDigestMismatch)
    );

    // Extending a PCR after the quote: the old quote no longer matches fresh values.
    let mut attest_tampered = good.clone();
    let last = attest_tampered.attest.len() - 1;
    attest_tampered.attest[last] ^= 1;
    let err = tpm::verify_auth_quote(&cred.ak_public, &nonce, &attest_tampered).unwrap_err();
    assert_eq!(
        err,
        TpmError::PeerMisbehaved(PeerMisbehaved::BadQuoteSignature)
    );
}

#[test]
fn malformed_tpm_structures_from_a_real_tpm_fail_cleanly() {
    let tpm = Swtpm::start();
    let (store, _dir) = store(&tpm);
    let cred = enroll(&store, &[]).unwrap();
    let nonce = [9u8; 20];
    let good = to_quote(&store.quote(&nonce).unwrap());

    // Every truncation of every structure is an error, never a panic.
    for n in 0..good.attest.len() {
        let mut q = good.clone();
        q.attest.truncate(n);
        assert!(matches!(
            tpm::verify_auth_quote(&cred.ak_public, &nonce, &q),
            Err(TpmError::Malformed(_))
        ));
    }
    for n in 0..good.signature.len() {
        let mut q = good.clone();
        q.signature.truncate(n);
        assert!(matches!(
            tpm::verify_auth_quote(&cred.ak_public, &nonce, &q),
            Err(TpmError::Malformed(_))
        ));
    }
    for n in 0..cred.ak_public.len() {
        assert!(tpm::verify_auth_quote(&cred.ak_public[..n], &nonce, &good).is_err());
    }
    // Trailing garbage.
    let mut q = good.clone();
    q.signature.push(0);
    assert!(matches!(
        tpm::verify_auth_quote(&cred.ak_public, &nonce, &q),
        Err(TpmError::Malformed(_))
    ));
    let mut ak = cred.ak_public.clone();
    ak.extend_from_slice(&[0, 0]);
    assert!(tpm::verify_auth_quote(&ak, &nonce, &good).is_err());
    // Oversized.
    let mut q = good.clone();
    q.attest = vec![0xff; tpm::MAX_ATTEST_SIZE + 10];
    assert!(matches!(
        tpm::verify_auth_quote(&cred.ak_public, &nonce, &q),
        Err(TpmError::Malformed(_))
    ));
}

#[test]
fn client_rejects_bad_server_input_and_missing_keys() {
    let tpm = Swtpm::start();
    let (store, _dir) = store(&tpm);
    assert!(matches!(
        store.credential_id(),
        Err(TpmDeviceError::NoAttestationKey(_))
    ));
    assert!(matches!(
        store.quote(&[0; 20]),
        Err(TpmDeviceError::NoAttestationKey(_))
    ));
    store.enrollment_evidence().unwrap();
    assert!(matches!(
        store.quote(&[0; 65]),
        Err(TpmDeviceError::BadServerInput(_))
    ));
    assert!(matches!(
        store.activate_credential(&[0; 300], &[0; 10]),
        Err(TpmDeviceError::BadServerInput(_))
    ));
    // Garbage of the right size reaches the TPM, which refuses it.
    let err = store.activate_credential(&[0; 66], &[0; 256]).unwrap_err();
    assert!(
        matches!(
            err,
            TpmDeviceError::Tss {
                call: "Esys_ActivateCredential",
                ..
            }
        ),
        "{err}"
    );
    // The TPM still works afterwards: every handle was flushed.
    for _ in 0..5 {
        store.quote(&[1; 20]).unwrap();
    }
}

#[test]
fn unreachable_tpm_names_the_failing_call() {
    let dir = tempfile::tempdir().unwrap();
    let store = TpmKeyStore::new("swtpm:host=127.0.0.1,port=1", dir.path());
    let err = store.enrollment_evidence().unwrap_err();
    assert!(
        matches!(
            err,
            TpmDeviceError::Tss {
                call: "Esys_Initialize",
                ..
            }
        ),
        "{err}"
    );
    let store = TpmKeyStore::new("nonsense-tcti", dir.path());
    assert!(store.enrollment_evidence().is_err());
}

/// Key files are private to the user.
#[test]
fn key_files_are_0600() {
    use std::os::unix::fs::PermissionsExt as _;
    let tpm = Swtpm::start();
    let (store, dir) = store(&tpm);
    store.enrollment_evidence().unwrap();
    for f in ["ak.pub", "ak.priv", "ek.alg"] {
        let mode = std::fs::metadata(dir.path().join("keys").join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let mode = std::fs::metadata(dir.path().join("keys"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

/// Regenerates the fuzz seed corpus and the EK-chain fixtures from a real swtpm:
/// `cargo test -p dt-device --features tpm --test tpm_e2e -- --ignored write_fuzz_corpus`.
/// Replayed by `crates/dt-attest/tests/fuzz_corpus_replay.rs` and used by
/// `crates/dt-attest/tests/tpm_ekcert.rs`.
#[test]
#[ignore = "writes files under fuzz/: run by hand to refresh the corpus"]
fn write_fuzz_corpus() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let write = |dir: &str, name: &str, bytes: &[u8]| {
        let d = root.join(dir);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), bytes).unwrap();
    };
    let ca = LocalCa::new();
    let other = LocalCa::new();
    let tpm = Swtpm::start_with_ek_certs(&ca);
    let _other_tpm = Swtpm::start_with_ek_certs(&other);
    let nonce = [0x42u8; 20];
    for (name, ak_alg) in [("ecc", AkAlgorithm::EccP256), ("rsa", AkAlgorithm::Rsa2048)] {
        let dir = tempfile::tempdir().unwrap();
        let store = TpmKeyStore::new(tpm.tcti.clone(), dir.path()).with_ak_algorithm(ak_alg);
        let ev = store.enrollment_evidence().unwrap();
        let q = store.quote(&nonce).unwrap();
        write("corpus/tpm2b_public", &format!("ak_{name}"), &ev.ak_public);
        write(
            "corpus/tpm2b_public",
            &format!("ak_{name}_tpmt"),
            &ev.ak_public[2..],
        );
        write("corpus/tpms_attest", &format!("quote_{name}"), &q.attest);
        write(
            "corpus/tpmt_signature",
            &format!("quote_{name}"),
            &q.signature,
        );
        write(
            "fixtures",
            &format!("ak_{name}.tpm2b_public"),
            &ev.ak_public,
        );
        write("fixtures", &format!("quote_{name}.attest"), &q.attest);
        write("fixtures", &format!("quote_{name}.signature"), &q.signature);
        let pcrs: Vec<u8> = q.pcrs.iter().flat_map(|p| p.digest.clone()).collect();
        write("fixtures", &format!("quote_{name}.pcrs_sha256_0_7"), &pcrs);
        if name == "rsa" {
            write("corpus/tpm2b_public", "ek_rsa", &ev.ek_public);
            write("fixtures", "ek_rsa.tpm2b_public", &ev.ek_public);
            let cert = ev.ek_cert.unwrap();
            write("corpus/ek_cert", "ek_rsa.der", &cert);
            write("fixtures", "ek_rsa.der", &cert);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let ecc =
        TpmKeyStore::new(tpm.tcti.clone(), dir.path()).with_ek_algorithm(EkAlgorithm::EccP256);
    let ev = ecc.enrollment_evidence().unwrap();
    write("corpus/tpm2b_public", "ek_ecc_p256", &ev.ek_public);
    write("fixtures", "ca_issuer.pem", ca.issuer_pem().as_bytes());
    write("fixtures", "ca_root.pem", ca.root_pem().as_bytes());
    write(
        "fixtures",
        "other_ca_issuer.pem",
        other.issuer_pem().as_bytes(),
    );
}
