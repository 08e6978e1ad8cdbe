//! The EK-certificate path of enrollment: certificate parsing, key match against a real
//! swtpm EK and chain verification against a real swtpm-localca issuer. No panic on any
//! input; a certificate accepted as trusted must be the committed genuine one.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use dt_attest::tpm::{TpmAttestationType, TpmEnrollRequest, begin_enrollment, parse_ek_cert};
use libfuzzer_sys::fuzz_target;

const EK_PUBLIC: &[u8] = include_bytes!("../fixtures/ek_rsa.tpm2b_public");
const AK_PUBLIC: &[u8] = include_bytes!("../fixtures/ak_ecc.tpm2b_public");
const EK_CERT: &[u8] = include_bytes!("../fixtures/ek_rsa.der");
const CA: &str = include_str!("../fixtures/ca_issuer.pem");

fuzz_target!(|data: &[u8]| {
    let _ = parse_ek_cert(data);
    let req = TpmEnrollRequest {
        ek_public: EK_PUBLIC.to_vec(),
        ek_cert: Some(data.to_vec()),
        ak_public: AK_PUBLIC.to_vec(),
    };
    let mut counter = 0u8;
    let mut rng = |buf: &mut [u8]| {
        for b in buf {
            counter = counter.wrapping_add(1);
            *b = counter;
        }
    };
    // 2030-01-01, inside the fixtures' validity.
    let now = UNIX_EPOCH + Duration::from_secs(1_893_456_000);
    for allowed in [vec![], vec![CA.to_owned()]] {
        if let Ok((state, _)) = begin_enrollment(&req, &allowed, now, &mut rng)
            && state.attestation_type() == TpmAttestationType::EkCertTrusted
        {
            assert_eq!(
                data, EK_CERT,
                "only the genuine certificate chains to the ca"
            );
        }
    }
});
