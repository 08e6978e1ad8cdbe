//! TPM2_MakeCredential done in software: the server half of credential activation
//! (TPM 2.0 Library Part 1 §24 "Credential Protection", Part 3 §12.6 TPM2_MakeCredential).
//!
//! The server encrypts a random credential so that only the TPM holding the endorsement key
//! (EK) can recover it, and only while an object with the given Name (the attestation key) is
//! loaded in that same TPM: TPM2_ActivateCredential checks the HMAC over the Name before it
//! decrypts. Getting the credential back therefore proves "this AK lives in the TPM that owns
//! this EK".
//!
//! Steps (Part 1 §24.4–24.6):
//! 1. a seed, `digestSize(ekNameAlg)` random bytes, protected for the EK (§11.4.10 "Secret
//!    Sharing"): RSA-OAEP with label "IDENTITY\0" for RSA EKs; for ECC EKs an ephemeral ECDH
//!    key pair and KDFe(Z, "IDENTITY", ephemeral x, EK x);
//! 2. symKey = KDFa(ekNameAlg, seed, "STORAGE", Name(AK), ∅, ekSymKeyBits);
//!    encIdentity = CFB(symKey, IV = 0, TPM2B_DIGEST(credential));
//! 3. hmacKey = KDFa(ekNameAlg, seed, "INTEGRITY", ∅, ∅, digestSize·8);
//!    outerHMAC = HMAC(hmacKey, encIdentity || Name(AK));
//! 4. credentialBlob = TPM2B_DIGEST(outerHMAC) || encIdentity (a TPM2B_ID_OBJECT's buffer);
//!    secret = the protected seed (a TPM2B_ENCRYPTED_SECRET's buffer).
//!
//! Randomness is injected; nothing here reads a global RNG.

use aes::{Aes128, Aes192, Aes256};
use cfb_mode::cipher::{AsyncStreamCipher, KeyIvInit};
use hmac::{Hmac, Mac};
use sha2::{Sha256, Sha384};

use super::error::{PeerMisbehaved, TpmError, Unsupported};
use super::structures::{
    ALG_AES, ALG_CFB, ECC_NIST_P256, ECC_NIST_P384, HashAlg, PublicKey, TpmPublic,
};
use super::wire::put_tpm2b;

/// Output of [`make_credential`]: the two inputs of TPM2_ActivateCredential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MakeCredentialOutput {
    /// The buffer of a TPM2B_ID_OBJECT (without its `u16` size):
    /// `TPM2B_DIGEST(integrityHMAC) || encIdentity`.
    pub credential_blob: Vec<u8>,
    /// The buffer of a TPM2B_ENCRYPTED_SECRET (without its `u16` size): the OAEP ciphertext
    /// for RSA EKs, a marshalled TPMS_ECC_POINT (ephemeral public key) for ECC EKs.
    pub encrypted_secret: Vec<u8>,
}

/// Randomness source: fills the buffer with cryptographically secure random bytes.
pub type FillRandom<'a> = &'a mut dyn FnMut(&mut [u8]);

/// Adapts the injected randomness to the `rand_core` traits the `rsa` crate wants.
struct InjectedRng<'a, 'b>(&'a mut FillRandom<'b>);

impl rand_core::RngCore for InjectedRng<'_, '_> {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        (self.0)(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        (self.0)(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        (self.0)(dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        (self.0)(dest);
        Ok(())
    }
}
impl rand_core::CryptoRng for InjectedRng<'_, '_> {}

fn hmac_parts(alg: HashAlg, key: &[u8], parts: &[&[u8]]) -> Result<Vec<u8>, TpmError> {
    match alg {
        HashAlg::Sha256 => {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
                .map_err(|_| TpmError::Internal("hmac rejected its key"))?;
            parts.iter().for_each(|p| mac.update(p));
            Ok(mac.finalize().into_bytes().to_vec())
        }
        HashAlg::Sha384 => {
            let mut mac = <Hmac<Sha384> as Mac>::new_from_slice(key)
                .map_err(|_| TpmError::Internal("hmac rejected its key"))?;
            parts.iter().for_each(|p| mac.update(p));
            Ok(mac.finalize().into_bytes().to_vec())
        }
    }
}

/// KDFa, TPM 2.0 Library Part 1 §11.4.10.2 (SP800-108 counter mode with HMAC):
/// `K(i) = HMAC(key, [i]₃₂ || label || 0x00 || contextU || contextV || [bits]₃₂)`.
/// `bits` is always a multiple of 8 here.
pub(crate) fn kdfa(
    alg: HashAlg,
    key: &[u8],
    label: &str,
    context_u: &[u8],
    context_v: &[u8],
    bits: u32,
) -> Result<Vec<u8>, TpmError> {
    let len = usize::try_from(bits / 8).map_err(|_| TpmError::Internal("kdfa length"))?;
    let mut out = Vec::with_capacity(len + alg.digest_len());
    let mut counter: u32 = 1;
    while out.len() < len {
        let block = hmac_parts(
            alg,
            key,
            &[
                &counter.to_be_bytes(),
                label.as_bytes(),
                &[0],
                context_u,
                context_v,
                &bits.to_be_bytes(),
            ],
        )?;
        out.extend_from_slice(&block);
        counter = counter
            .checked_add(1)
            .ok_or(TpmError::Internal("kdfa counter"))?;
    }
    out.truncate(len);
    Ok(out)
}

/// KDFe, TPM 2.0 Library Part 1 §11.4.10.3 (SP800-56A concatenation KDF):
/// `K(i) = H([i]₃₂ || Z || use || 0x00 || partyUInfo || partyVInfo)`.
pub(crate) fn kdfe(
    alg: HashAlg,
    z: &[u8],
    label: &str,
    party_u: &[u8],
    party_v: &[u8],
    bits: u32,
) -> Result<Vec<u8>, TpmError> {
    let len = usize::try_from(bits / 8).map_err(|_| TpmError::Internal("kdfe length"))?;
    let mut out = Vec::with_capacity(len + alg.digest_len());
    let mut counter: u32 = 1;
    while out.len() < len {
        let block = alg.hash(&[
            &counter.to_be_bytes(),
            z,
            label.as_bytes(),
            &[0],
            party_u,
            party_v,
        ]);
        out.extend_from_slice(&block);
        counter = counter
            .checked_add(1)
            .ok_or(TpmError::Internal("kdfe counter"))?;
    }
    out.truncate(len);
    Ok(out)
}

fn cfb_encrypt(key: &[u8], buf: &mut [u8]) -> Result<(), TpmError> {
    // Part 1 §24.4: the IV for the credential is all zeros (the key is single-use).
    let bad_key = |_| TpmError::Internal("aes key length");
    match key.len() {
        16 => cfb_mode::Encryptor::<Aes128>::new_from_slices(key, &[0u8; 16])
            .map_err(bad_key)?
            .encrypt(buf),
        24 => cfb_mode::Encryptor::<Aes192>::new_from_slices(key, &[0u8; 16])
            .map_err(bad_key)?
            .encrypt(buf),
        32 => cfb_mode::Encryptor::<Aes256>::new_from_slices(key, &[0u8; 16])
            .map_err(bad_key)?
            .encrypt(buf),
        _ => return Err(TpmError::Internal("aes key length")),
    }
    Ok(())
}

/// Left-pads a big-endian coordinate to `len` bytes; `None` if it does not fit.
fn pad_coordinate(bytes: &[u8], len: usize) -> Option<Vec<u8>> {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    let significant = bytes.get(start..)?;
    let pad = len.checked_sub(significant.len())?;
    let mut out = vec![0u8; pad];
    out.extend_from_slice(significant);
    Some(out)
}

/// Ephemeral-static ECDH with the EK (Part 1 §11.4.10.3 and Annex C.6.1 "ECDH"): returns
/// (Z = x coordinate of d_e·Q_ek, ephemeral x, ephemeral y), all field-size big-endian.
macro_rules! ecdh_for_curve {
    ($name:ident, $krate:ident, $len:expr) => {
        fn $name(
            ek_x: &[u8],
            ek_y: &[u8],
            rng: &mut FillRandom<'_>,
        ) -> Result<(Vec<u8>, Vec<u8>, Vec<u8>), TpmError> {
            use $krate::elliptic_curve::sec1::ToEncodedPoint;
            let bad_point = || PeerMisbehaved::EkAttributes("ecc point is not on the curve");
            let x = pad_coordinate(ek_x, $len).ok_or_else(bad_point)?;
            let y = pad_coordinate(ek_y, $len).ok_or_else(bad_point)?;
            let mut sec1 = Vec::with_capacity(1 + 2 * $len);
            sec1.push(0x04);
            sec1.extend_from_slice(&x);
            sec1.extend_from_slice(&y);
            // from_sec1_bytes rejects points not on the curve and the identity (invalid-curve
            // attacks would otherwise leak nothing here, but a bad EK is the device's fault).
            let ek = $krate::PublicKey::from_sec1_bytes(&sec1).map_err(|_| bad_point())?;
            let mut scalar = [0u8; $len];
            let mut secret = None;
            // A uniformly random field-size string is a valid scalar with overwhelming
            // probability; a few retries make failure practically impossible.
            for _ in 0..64 {
                rng(&mut scalar);
                if let Ok(sk) = $krate::SecretKey::from_slice(&scalar) {
                    secret = Some(sk);
                    break;
                }
            }
            scalar.fill(0);
            let secret = secret.ok_or(TpmError::Internal("randomness source failed"))?;
            let shared = $krate::ecdh::diffie_hellman(secret.to_nonzero_scalar(), ek.as_affine());
            let z = shared.raw_secret_bytes().to_vec();
            let eph = secret.public_key().to_encoded_point(false);
            let (ex, ey) = match (eph.x(), eph.y()) {
                (Some(ex), Some(ey)) => (ex.to_vec(), ey.to_vec()),
                _ => return Err(TpmError::Internal("ephemeral key is the identity")),
            };
            Ok((z, ex, ey))
        }
    };
}

ecdh_for_curve!(ecdh_p256, ecdh_p256, 32);
ecdh_for_curve!(ecdh_p384, ecdh_p384, 48);

/// Protects a fresh seed for the EK (Part 1 §24.4 + §11.4.10). Returns (seed, secret buffer).
fn protect_seed(ek: &TpmPublic, rng: &mut FillRandom<'_>) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
    let seed_len = ek.name_alg.digest_len();
    match &ek.key {
        PublicKey::Rsa {
            key_bits,
            exponent,
            modulus,
            ..
        } => {
            if !matches!(key_bits, 2048 | 3072 | 4096) {
                return Err(Unsupported::KeySize(*key_bits).into());
            }
            let mut seed = vec![0u8; seed_len];
            rng(&mut seed);
            let key = rsa::RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(modulus),
                rsa::BigUint::from(*exponent),
            )
            .map_err(|_| PeerMisbehaved::EkAttributes("rsa public key is invalid"))?;
            // Part 1 §11.4.10.2 / Annex B.10.3: OAEP with the EK's nameAlg and the label
            // "IDENTITY" including its terminating NUL.
            let padding = match ek.name_alg {
                HashAlg::Sha256 => rsa::Oaep::new_with_label::<Sha256, _>("IDENTITY\0"),
                HashAlg::Sha384 => rsa::Oaep::new_with_label::<Sha384, _>("IDENTITY\0"),
            };
            let mut adapter = InjectedRng(rng);
            let secret = key
                .encrypt(&mut adapter, padding, &seed)
                .map_err(|_| TpmError::Internal("rsa-oaep encryption failed"))?;
            Ok((seed, secret))
        }
        PublicKey::Ecc { curve, x, y, .. } => {
            let (z, ex, ey) = match *curve {
                ECC_NIST_P256 => ecdh_p256(x, y, rng)?,
                ECC_NIST_P384 => ecdh_p384(x, y, rng)?,
                other => {
                    return Err(Unsupported::Algorithm {
                        what: "ecc curve",
                        value: other,
                    }
                    .into());
                }
            };
            // Annex C.6.1: partyUInfo is the ephemeral key's x, partyVInfo the TPM key's x as
            // stored in its public area.
            let bits =
                u32::try_from(seed_len * 8).map_err(|_| TpmError::Internal("seed length"))?;
            let seed = kdfe(ek.name_alg, &z, "IDENTITY", &ex, x, bits)?;
            let mut point = Vec::with_capacity(4 + ex.len() + ey.len());
            put_tpm2b(&mut point, &ex)?;
            put_tpm2b(&mut point, &ey)?;
            Ok((seed, point))
        }
    }
}

/// TPM2_MakeCredential (Part 3 §12.6) against `ek` for the object named `object_name`.
///
/// `credential` must not be longer than the EK name algorithm's digest (TPM_RC_SIZE in the
/// TPM). The EK's symmetric definition chooses the cipher: the TCG EK templates all use
/// AES-CFB (128-bit for the low range, 256-bit for the high range).
pub fn make_credential(
    ek: &TpmPublic,
    object_name: &[u8],
    credential: &[u8],
    mut rng: FillRandom<'_>,
) -> Result<MakeCredentialOutput, TpmError> {
    ek.check_ek_attributes()
        .map_err(PeerMisbehaved::EkAttributes)?;
    let symmetric = match &ek.key {
        PublicKey::Rsa { symmetric, .. } | PublicKey::Ecc { symmetric, .. } => *symmetric,
    };
    let sym_bits = match symmetric {
        Some(s)
            if s.algorithm == ALG_AES
                && s.mode == ALG_CFB
                && matches!(s.key_bits, 128 | 192 | 256) =>
        {
            s.key_bits
        }
        Some(s) if s.algorithm != ALG_AES => {
            return Err(Unsupported::Algorithm {
                what: "ek symmetric algorithm",
                value: s.algorithm,
            }
            .into());
        }
        Some(s) if s.mode != ALG_CFB => {
            return Err(Unsupported::Algorithm {
                what: "ek symmetric mode",
                value: s.mode,
            }
            .into());
        }
        Some(s) => return Err(Unsupported::KeySize(s.key_bits).into()),
        // A restricted decryption key must have a symmetric algorithm (Part 2 §12.2.3.2).
        None => return Err(PeerMisbehaved::EkAttributes("no symmetric algorithm").into()),
    };
    if credential.len() > ek.name_alg.digest_len() {
        return Err(TpmError::Internal(
            "credential longer than the ek name digest",
        ));
    }

    let (mut seed, encrypted_secret) = protect_seed(ek, &mut rng)?;
    let digest_bits = u32::try_from(ek.name_alg.digest_len() * 8)
        .map_err(|_| TpmError::Internal("digest length"))?;

    // Part 1 §24.4: symmetric key bound to the object's Name.
    let mut sym_key = kdfa(
        ek.name_alg,
        &seed,
        "STORAGE",
        object_name,
        &[],
        sym_bits.into(),
    )?;
    let mut enc_identity = Vec::with_capacity(credential.len() + 2);
    put_tpm2b(&mut enc_identity, credential)?;
    cfb_encrypt(&sym_key, &mut enc_identity)?;

    // Part 1 §24.5: HMAC over encIdentity || Name, so the TPM refuses to decrypt unless the
    // loaded object has exactly this Name.
    let mut hmac_key = kdfa(ek.name_alg, &seed, "INTEGRITY", &[], &[], digest_bits)?;
    let outer_hmac = hmac_parts(ek.name_alg, &hmac_key, &[&enc_identity, object_name])?;

    let mut credential_blob = Vec::with_capacity(2 + outer_hmac.len() + enc_identity.len());
    put_tpm2b(&mut credential_blob, &outer_hmac)?;
    credential_blob.extend_from_slice(&enc_identity);

    seed.fill(0);
    sym_key.fill(0);
    hmac_key.fill(0);
    Ok(MakeCredentialOutput {
        credential_blob,
        encrypted_secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdfa_matches_independent_hmac_construction() {
        // One block: the output is the first `bits/8` bytes of HMAC(key, 1 || label || 0 ||
        // u || v || bits).
        let key = [7u8; 32];
        let out = kdfa(HashAlg::Sha256, &key, "STORAGE", b"name", &[], 128).unwrap();
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
        mac.update(&[0, 0, 0, 1]);
        mac.update(b"STORAGE\0name");
        mac.update(&[0, 0, 0, 128]);
        assert_eq!(out, mac.finalize().into_bytes()[..16].to_vec());
        // Two blocks for 384 bits with SHA-256.
        let long = kdfa(HashAlg::Sha256, &key, "INTEGRITY", &[], &[], 384).unwrap();
        assert_eq!(long.len(), 48);
    }

    #[test]
    fn kdfe_matches_independent_hash_construction() {
        use sha2::Digest;
        let out = kdfe(HashAlg::Sha256, b"zz", "IDENTITY", b"u", b"v", 256).unwrap();
        let mut h = Sha256::new();
        h.update([0, 0, 0, 1]);
        h.update(b"zzIDENTITY\0uv");
        assert_eq!(out, h.finalize().to_vec());
    }

    #[test]
    fn pad_coordinate_bounds() {
        assert_eq!(pad_coordinate(&[1, 2], 4), Some(vec![0, 0, 1, 2]));
        assert_eq!(pad_coordinate(&[0, 0, 0, 0, 1], 4), Some(vec![0, 0, 0, 1]));
        assert_eq!(pad_coordinate(&[1, 2, 3, 4, 5], 4), None);
    }
}
