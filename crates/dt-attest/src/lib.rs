//! Pure evidence checks for device credentials. No libtss2, no I/O: every function takes
//! bytes that came off the wire and says whether they prove what they claim.
//!
//! - [`p256`]: ECDSA P-256 challenge signatures (Secure Enclave wire shape and software keys).
//! - [`tpm`]: TPM 2.0 structures, credential activation (MakeCredential) and quotes.

pub mod p256;
pub mod tpm;
