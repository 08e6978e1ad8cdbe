//! TPM2B_PUBLIC / TPMT_PUBLIC parser. Invariants: no panic; a parsed area re-encodes to the
//! same TPMT bytes and parses back to the same value; its Name is nameAlg || digest.
#![no_main]

use dt_attest::tpm::{TpmPublic, credential_id};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(public) = TpmPublic::parse(data) {
        let again = TpmPublic::parse(&public.to_tpm2b()).expect("re-encoded public area parses");
        assert_eq!(again, public);
        let name = public.name();
        assert_eq!(name.len(), 2 + public.name_alg.digest_len());
        let _ = public.check_ak_attributes();
        let _ = public.check_ek_attributes();
        assert!(credential_id(data).is_ok());
    }
});
