//! TPMS_ATTEST (quote) parser: no panic on any input; PCR indices stay within the bitmap.
#![no_main]

use dt_attest::tpm::TpmAttest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(attest) = TpmAttest::parse(data) {
        for bank in &attest.pcr_select {
            assert!(bank.pcrs.iter().all(|&i| i < 64));
            assert!(bank.pcrs.windows(2).all(|w| w[0] < w[1]));
        }
        assert!(attest.extra_data.len() <= 64);
    }
});
