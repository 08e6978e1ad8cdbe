//! Replays the committed fuzz seed corpus (and any crash reproducer committed next to it)
//! through the same entry points the cargo-fuzz targets in `fuzz/` drive, so every `cargo
//! test` re-checks them without a nightly toolchain.
// Test code: unwrap and panic are how a test fails.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use dt_attest::tpm::{self, TpmAttest, TpmEnrollRequest, TpmPublic, TpmSignature};

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "empty corpus for {target}");
    out
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/fixtures")
            .join(name),
    )
    .unwrap()
}

#[test]
fn tpm2b_public_corpus() {
    let mut parsed = 0;
    for (name, bytes) in corpus("tpm2b_public") {
        if let Ok(p) = TpmPublic::parse(&bytes) {
            parsed += 1;
            assert_eq!(TpmPublic::parse(&p.to_tpm2b()).unwrap(), p, "{name}");
            assert_eq!(p.name().len(), 2 + p.name_alg.digest_len());
            let _ = (p.check_ak_attributes(), p.check_ek_attributes());
            tpm::credential_id(&bytes).unwrap();
        }
        for n in 0..bytes.len() {
            let _ = TpmPublic::parse(&bytes[..n]);
        }
    }
    assert!(parsed >= 4, "the real swtpm seeds parse");
}

#[test]
fn tpms_attest_corpus() {
    for (name, bytes) in corpus("tpms_attest") {
        let _ = TpmAttest::parse(&bytes).map(|a| assert!(a.extra_data.len() <= 64, "{name}"));
        for n in 0..bytes.len() {
            assert!(TpmAttest::parse(&bytes[..n]).is_err());
        }
    }
}

#[test]
fn tpmt_signature_corpus() {
    for (_, bytes) in corpus("tpmt_signature") {
        let _ = TpmSignature::parse(&bytes);
        for n in 0..bytes.len() {
            assert!(TpmSignature::parse(&bytes[..n]).is_err());
        }
    }
}

#[test]
fn ek_cert_corpus() {
    let ca = String::from_utf8(fixture("ca_issuer.pem")).unwrap();
    let genuine = fixture("ek_rsa.der");
    let now = UNIX_EPOCH + Duration::from_secs(1_893_456_000);
    for (name, bytes) in corpus("ek_cert") {
        let _ = tpm::parse_ek_cert(&bytes);
        let req = TpmEnrollRequest {
            ek_public: fixture("ek_rsa.tpm2b_public"),
            ek_cert: Some(bytes.clone()),
            ak_public: fixture("ak_ecc.tpm2b_public"),
        };
        let mut rng = |b: &mut [u8]| b.fill(7);
        for allowed in [vec![], vec![ca.clone()]] {
            if let Ok((state, _)) = tpm::begin_enrollment(&req, &allowed, now, &mut rng)
                && state.attestation_type() == tpm::TpmAttestationType::EkCertTrusted
            {
                assert_eq!(
                    bytes, genuine,
                    "{name}: only the genuine certificate is trusted"
                );
            }
        }
    }
}
