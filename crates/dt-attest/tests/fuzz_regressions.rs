//! Inputs the fuzzers found, kept so the fix stays fixed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, UNIX_EPOCH};

use dt_attest::tpm::{TpmAttestationType, TpmEnrollRequest, begin_enrollment};

const EK_PUBLIC: &[u8] = include_bytes!("../../../fuzz/fixtures/ek_rsa.tpm2b_public");
const AK_PUBLIC: &[u8] = include_bytes!("../../../fuzz/fixtures/ak_ecc.tpm2b_public");
const EK_CERT: &[u8] = include_bytes!("../../../fuzz/fixtures/ek_rsa.der");
const CA: &str = include_str!("../../../fuzz/fixtures/ca_issuer.pem");

fn trusted(cert: &[u8]) -> bool {
    let req = TpmEnrollRequest {
        ek_public: EK_PUBLIC.to_vec(),
        ek_cert: Some(cert.to_vec()),
        ak_public: AK_PUBLIC.to_vec(),
    };
    let mut n = 0u8;
    let mut rng = |buf: &mut [u8]| {
        for b in buf {
            n = n.wrapping_add(1);
            *b = n;
        }
    };
    let now = UNIX_EPOCH + Duration::from_secs(1_893_456_000);
    matches!(
        begin_enrollment(&req, &[CA.to_owned()], now, &mut rng),
        Ok((state, _)) if state.attestation_type() == TpmAttestationType::EkCertTrusted
    )
}

/// The genuine swtpm EK certificate with its outer (unsigned) signatureAlgorithm
/// parameters changed from NULL to an empty UTF8String: the signature over the TBS still
/// verifies, but RFC 5280 §4.1.1.2 requires both algorithm fields to be equal.
#[test]
fn altered_outer_signature_algorithm_is_not_trusted() {
    let altered =
        include_bytes!("../../../fuzz/regressions/ek_cert/outer_signature_algorithm_altered.der");
    assert_ne!(&altered[..], EK_CERT);
    assert!(trusted(EK_CERT), "the genuine certificate is trusted");
    assert!(!trusted(altered), "an altered certificate must not be");
}
