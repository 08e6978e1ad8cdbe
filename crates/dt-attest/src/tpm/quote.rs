//! TPM2_Quote verification (TPM 2.0 Library Part 3 §18.4, Part 1 §25 "Attestation").
//!
//! A quote proves: the AK signed a TPMS_ATTEST (which, the AK being restricted, only the TPM
//! can have produced: Part 1 §25.2), over our nonce (extraData, so it is fresh), that commits
//! to a PCR selection and the digest of those PCRs' values. Given the reported values we
//! recompute that digest, so the values are as authentic as the quote.
//!
//! What it does not do: judge the PCR values (no policy on boot state) or replay an event log.

use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use sha2::{Digest, Sha256};

use super::error::{PeerMisbehaved, TpmError, Unsupported};
use super::structures::{
    ALG_ECDSA, ALG_RSAPSS, ALG_RSASSA, ALG_SHA256, ECC_NIST_P256, PublicKey, TpmAttest, TpmPublic,
    TpmSignature,
};
use super::wire::strip_tpm2b;

/// One PCR of the SHA-256 bank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PcrValue {
    pub index: u32,
    /// 32 bytes.
    pub digest: Vec<u8>,
}

/// What a device returns for a quote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmQuote {
    /// The marshalled TPMS_ATTEST the TPM signed (a TPM2B_ATTEST around it is accepted too).
    pub attest: Vec<u8>,
    /// The marshalled TPMT_SIGNATURE.
    pub signature: Vec<u8>,
    /// The values of the quoted PCRs of the SHA-256 bank, each index once.
    pub pcrs: Vec<PcrValue>,
}

/// A quote that verified: the PCR values are now as trustworthy as the AK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedQuote {
    /// The quoted SHA-256 PCRs, in selection (ascending index) order.
    pub pcrs: Vec<PcrValue>,
    /// TPMS_CLOCK_INFO: lets a caller notice reboots (resetCount) between quotes.
    pub clock: u64,
    pub reset_count: u32,
    pub restart_count: u32,
}

/// Checks that `ak` is a key we can verify quotes from (before any TPM work is asked for).
pub(crate) fn check_ak_supported(ak: &TpmPublic) -> Result<(), TpmError> {
    match &ak.key {
        PublicKey::Rsa {
            key_bits, scheme, ..
        } => {
            if !(2048..=4096).contains(key_bits) {
                return Err(Unsupported::KeySize(*key_bits).into());
            }
            match scheme {
                None => Ok(()),
                Some(s) if matches!(s.scheme, ALG_RSASSA | ALG_RSAPSS) && s.hash == ALG_SHA256 => {
                    Ok(())
                }
                Some(s) => Err(Unsupported::Algorithm {
                    what: "attestation key signing scheme",
                    value: s.scheme,
                }
                .into()),
            }
        }
        PublicKey::Ecc { curve, scheme, .. } => {
            if *curve != ECC_NIST_P256 {
                return Err(Unsupported::Algorithm {
                    what: "attestation key curve",
                    value: *curve,
                }
                .into());
            }
            match scheme {
                None => Ok(()),
                Some(s) if s.scheme == ALG_ECDSA && s.hash == ALG_SHA256 => Ok(()),
                Some(s) => Err(Unsupported::Algorithm {
                    what: "attestation key signing scheme",
                    value: s.scheme,
                }
                .into()),
            }
        }
    }
}

fn minimal_be(e: u32) -> Vec<u8> {
    let bytes = e.to_be_bytes();
    let start = bytes
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(bytes.len() - 1);
    bytes.get(start..).map(<[u8]>::to_vec).unwrap_or_default()
}

fn left_pad(bytes: &[u8], len: usize) -> Option<Vec<u8>> {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    let significant = bytes.get(start..)?;
    let mut out = vec![0u8; len.checked_sub(significant.len())?];
    out.extend_from_slice(significant);
    Some(out)
}

/// Verifies `sig` by `ak` over `message` (the TPMS_ATTEST bytes). Part 1 §25.2: the TPM
/// signs H(TPMS_ATTEST) with the AK's scheme; we require SHA-256.
fn verify_signature(ak: &TpmPublic, message: &[u8], sig: &TpmSignature) -> Result<(), TpmError> {
    if sig.hash() != ALG_SHA256 {
        return Err(PeerMisbehaved::SignatureSchemeMismatch.into());
    }
    let bad = || TpmError::from(PeerMisbehaved::BadQuoteSignature);
    match (&ak.key, sig) {
        (
            PublicKey::Rsa {
                scheme,
                exponent,
                modulus,
                ..
            },
            TpmSignature::RsaSsa { sig: s, .. } | TpmSignature::RsaPss { sig: s, .. },
        ) => {
            // A key with a fixed scheme signs only with it (Part 1 §25.2, Part 3 §18.4.1).
            if scheme.is_some_and(|s| s.scheme != sig.scheme()) {
                return Err(PeerMisbehaved::SignatureSchemeMismatch.into());
            }
            if s.len() != modulus.len() {
                return Err(bad());
            }
            let e = minimal_be(*exponent);
            let key = RsaPublicKeyComponents {
                n: modulus.as_slice(),
                e: e.as_slice(),
            };
            let params = match sig {
                TpmSignature::RsaSsa { .. } => &signature::RSA_PKCS1_2048_8192_SHA256,
                // Part 1 Annex B.7: the TPM's PSS salt is as long as the digest, which is what
                // ring's PSS verification expects.
                _ => &signature::RSA_PSS_2048_8192_SHA256,
            };
            key.verify(params, message, s).map_err(|_| bad())
        }
        (
            PublicKey::Ecc {
                scheme,
                curve,
                x,
                y,
                ..
            },
            TpmSignature::Ecdsa { r, s, .. },
        ) => {
            if scheme.is_some_and(|s| s.scheme != ALG_ECDSA) {
                return Err(PeerMisbehaved::SignatureSchemeMismatch.into());
            }
            if *curve != ECC_NIST_P256 {
                return Err(Unsupported::Algorithm {
                    what: "attestation key curve",
                    value: *curve,
                }
                .into());
            }
            let mut point = vec![0x04];
            point.extend(left_pad(x, 32).ok_or_else(bad)?);
            point.extend(left_pad(y, 32).ok_or_else(bad)?);
            let mut rs = left_pad(r, 32).ok_or_else(bad)?;
            rs.extend(left_pad(s, 32).ok_or_else(bad)?);
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &point)
                .verify(message, &rs)
                .map_err(|_| bad())
        }
        _ => Err(PeerMisbehaved::SignatureSchemeMismatch.into()),
    }
}

/// Verifies a quote by `ak` over `nonce`, and the reported PCR values against it.
pub(crate) fn verify_quote(
    ak: &TpmPublic,
    nonce: &[u8],
    quote: &TpmQuote,
) -> Result<VerifiedQuote, TpmError> {
    let attest = TpmAttest::parse(&quote.attest)?;
    let sig = TpmSignature::parse(&quote.signature)?;
    // The signature covers the TPMS_ATTEST, not a TPM2B around it.
    let signed = strip_tpm2b(&quote.attest).unwrap_or(&quote.attest);
    verify_signature(ak, signed, &sig)?;

    // Part 3 §18.4.1: extraData is the caller's qualifyingData, returned as-is. Only a quote
    // made after we chose this nonce can carry it.
    if attest.extra_data != nonce {
        return Err(PeerMisbehaved::NonceMismatch.into());
    }

    // We verify values of the SHA-256 bank only; a selection of another bank would make
    // pcrDigest depend on values we were not given.
    let bank = match attest.pcr_select.as_slice() {
        [only] if only.hash == ALG_SHA256 && !only.pcrs.is_empty() => only,
        [] => return Err(PeerMisbehaved::PcrBankMissing.into()),
        [only] if only.hash == ALG_SHA256 => return Err(PeerMisbehaved::PcrBankMissing.into()),
        banks if banks.iter().all(|b| b.hash != ALG_SHA256) => {
            return Err(PeerMisbehaved::PcrBankMissing.into());
        }
        _ => {
            return Err(Unsupported::Algorithm {
                what: "pcr bank besides sha-256 in the quote",
                value: attest
                    .pcr_select
                    .iter()
                    .map(|b| b.hash)
                    .find(|h| *h != ALG_SHA256)
                    .unwrap_or(0),
            }
            .into());
        }
    };

    // The reported values must be exactly the selected PCRs.
    let mut reported: Vec<&PcrValue> = quote.pcrs.iter().collect();
    reported.sort_by_key(|p| p.index);
    let same_set = reported.len() == bank.pcrs.len()
        && reported
            .iter()
            .zip(&bank.pcrs)
            .all(|(p, i)| p.index == *i && p.digest.len() == 32);
    if !same_set {
        return Err(PeerMisbehaved::PcrSelectionMismatch.into());
    }

    // Part 3 §18.4.1 / Part 1 §17.6.8: pcrDigest = H(PCR values concatenated in selection
    // order: banks as listed, indices ascending), H the signing scheme's hash (SHA-256).
    let mut h = Sha256::new();
    reported.iter().for_each(|p| h.update(&p.digest));
    if h.finalize().as_slice() != attest.pcr_digest.as_slice() {
        return Err(PeerMisbehaved::PcrDigestMismatch.into());
    }

    Ok(VerifiedQuote {
        pcrs: reported.into_iter().cloned().collect(),
        clock: attest.clock,
        reset_count: attest.reset_count,
        restart_count: attest.restart_count,
    })
}
