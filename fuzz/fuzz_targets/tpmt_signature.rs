//! TPMT_SIGNATURE parser: no panic on any input.
#![no_main]

use dt_attest::tpm::TpmSignature;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sig) = TpmSignature::parse(data) {
        let _ = (sig.scheme(), sig.hash());
    }
});
