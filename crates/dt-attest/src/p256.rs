//! ECDSA P-256 challenge signatures: the proof a Secure Enclave or software device
//! credential gives at enrollment and at every authentication (DESIGN.md §4).
//!
//! What this module guarantees:
//! - [`parse_p256_spki`] accepts exactly one shape: a DER `SubjectPublicKeyInfo` whose
//!   algorithm is `id-ecPublicKey` (RFC 5480 §2.1.1) with the named curve `prime256v1`
//!   (secp256r1), and whose key is an uncompressed point (SEC 1 §2.3.3) that lies on the
//!   curve. RSA, Ed25519, other curves, compressed points, explicit curve parameters,
//!   trailing bytes, non-minimal DER lengths and anything over [`MAX_SPKI_LEN`] are refused
//!   with an error that names the problem.
//! - [`verify_challenge_signature`] checks an ECDSA-P256-SHA256 signature in ASN.1 DER form
//!   (the form Apple's `SecKeyCreateSignature(.ecdsaSignatureMessageX962SHA256)` and ring
//!   produce) over exactly the challenge bytes, using ring.
//!
//! What it deliberately does not do: decide whether a key lives in a Secure Enclave or in a
//! file. A P-256 signature cannot tell; that trust decision is the ceremony's (see
//! `dt-ceremony`'s enrollment docs).
//!
//! Everything here parses bytes that came off the wire and is a fuzz target.

use std::fmt;

use ring::agreement;
use ring::rand::SystemRandom;
use ring::signature::{self, UnparsedPublicKey};

/// Largest SubjectPublicKeyInfo we look at. A P-256 SPKI is 91 bytes; anything near a
/// kilobyte is not one.
pub const MAX_SPKI_LEN: usize = 1024;
/// Largest DER signature we look at. A DER ECDSA-P256 signature is at most 72 bytes.
pub const MAX_SIGNATURE_LEN: usize = 128;
/// Largest challenge we sign or verify. Ceremonies use 32 bytes.
pub const MAX_CHALLENGE_LEN: usize = 1024;

/// Length of an uncompressed SEC 1 P-256 point: `0x04 || X || Y`.
pub const UNCOMPRESSED_POINT_LEN: usize = 65;

// DER contents of the object identifiers we recognise (without tag and length).
/// 1.2.840.10045.2.1 id-ecPublicKey (RFC 5480 §2.1.1)
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// 1.2.840.10045.3.1.7 prime256v1 / secp256r1 (RFC 5480 §2.1.1.1)
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// 1.3.132.0.34 secp384r1
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
/// 1.3.132.0.35 secp521r1
const OID_P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];
/// 1.3.132.0.10 secp256k1
const OID_SECP256K1: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x0a];
/// 1.2.840.113549.1.1.1 rsaEncryption
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// 1.3.101.112 Ed25519 (RFC 8410)
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
/// 1.3.101.110 X25519 (RFC 8410)
const OID_X25519: &[u8] = &[0x2b, 0x65, 0x6e];

const TAG_SEQUENCE: u8 = 0x30;
const TAG_OID: u8 = 0x06;
const TAG_BIT_STRING: u8 = 0x03;

/// Why a public key or a signature was refused. Messages are lowercase and safe to show to
/// the device that sent the bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestError {
    #[error("{what} is {len} bytes, more than the {max} accepted")]
    Oversized {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("public key is not a DER SubjectPublicKeyInfo: {0}")]
    Malformed(&'static str),
    #[error("public key is {0}, not an EC P-256 key: use an ECDSA P-256 (secp256r1) key")]
    NotEc(KeyAlgorithm),
    #[error("EC public key is on curve {0}, not P-256: use an ECDSA P-256 (secp256r1) key")]
    WrongCurve(KeyAlgorithm),
    #[error("EC public key uses a compressed point: send the uncompressed (0x04) form")]
    CompressedPoint,
    #[error("EC public key is not a point on the P-256 curve")]
    PointNotOnCurve,
    #[error("signature does not verify with the device credential over this challenge")]
    BadSignature,
    #[error("no randomness available from the operating system")]
    Randomness,
}

/// The algorithm or curve a refused key turned out to be, for the error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAlgorithm {
    Rsa,
    Ed25519,
    X25519,
    P384,
    P521,
    Secp256k1,
    /// An algorithm or curve we don't name, by its OID in dotted form (or `?` when the OID
    /// itself is malformed).
    Other(String),
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyAlgorithm::Rsa => f.write_str("an RSA key"),
            KeyAlgorithm::Ed25519 => f.write_str("an Ed25519 key"),
            KeyAlgorithm::X25519 => f.write_str("an X25519 key"),
            KeyAlgorithm::P384 => f.write_str("P-384"),
            KeyAlgorithm::P521 => f.write_str("P-521"),
            KeyAlgorithm::Secp256k1 => f.write_str("secp256k1"),
            KeyAlgorithm::Other(oid) => write!(f, "OID {oid}"),
        }
    }
}

/// A validated P-256 public key: the original SPKI DER and the uncompressed point inside it.
#[derive(Clone, PartialEq, Eq)]
pub struct P256PublicKey {
    spki_der: Vec<u8>,
    point: [u8; UNCOMPRESSED_POINT_LEN],
}

impl fmt::Debug for P256PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "P256PublicKey(")?;
        for b in &self.point[1..9] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

impl P256PublicKey {
    /// The SubjectPublicKeyInfo, exactly as it was parsed.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The SEC 1 uncompressed point (`0x04 || X || Y`).
    pub fn uncompressed_point(&self) -> &[u8; UNCOMPRESSED_POINT_LEN] {
        &self.point
    }

    /// Checks an ECDSA-P256-SHA256 DER signature over exactly `challenge`.
    pub fn verify(&self, challenge: &[u8], signature_der: &[u8]) -> Result<(), AttestError> {
        if challenge.len() > MAX_CHALLENGE_LEN {
            return Err(AttestError::Oversized {
                what: "challenge",
                len: challenge.len(),
                max: MAX_CHALLENGE_LEN,
            });
        }
        if signature_der.len() > MAX_SIGNATURE_LEN {
            return Err(AttestError::Oversized {
                what: "signature",
                len: signature_der.len(),
                max: MAX_SIGNATURE_LEN,
            });
        }
        UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, &self.point[..])
            .verify(challenge, signature_der)
            .map_err(|_| AttestError::BadSignature)
    }
}

/// Verifies an ECDSA-P256-SHA256 signature (ASN.1 DER) over `challenge` with the P-256 key
/// in `public_key_der_pkix` (a SubjectPublicKeyInfo). Every failure, whether of the key or
/// of the signature, is an error; `Ok(())` means the holder of the private key signed
/// exactly these challenge bytes.
pub fn verify_challenge_signature(
    public_key_der_pkix: &[u8],
    challenge: &[u8],
    signature_der: &[u8],
) -> Result<(), AttestError> {
    parse_p256_spki(public_key_der_pkix)?.verify(challenge, signature_der)
}

/// Parses a DER SubjectPublicKeyInfo (RFC 5280 §4.1.2.7) and accepts it only if it holds an
/// uncompressed P-256 point on the curve (RFC 5480 §2).
pub fn parse_p256_spki(der: &[u8]) -> Result<P256PublicKey, AttestError> {
    let key = parse_p256_spki_shape(der)?;
    check_on_curve(&key.point)?;
    Ok(key)
}

/// [`parse_p256_spki`] without the explicit on-curve check, for a key the server stored
/// after `parse_p256_spki` accepted it at enrollment (every device authentication re-reads
/// it). Nothing is lost: ring validates the point again inside every signature
/// verification, so an off-curve point can never verify; this only skips the throwaway
/// ECDH that makes the explicit check cost two scalar multiplications.
pub fn parse_enrolled_p256_spki(der: &[u8]) -> Result<P256PublicKey, AttestError> {
    parse_p256_spki_shape(der)
}

fn parse_p256_spki_shape(der: &[u8]) -> Result<P256PublicKey, AttestError> {
    if der.len() > MAX_SPKI_LEN {
        return Err(AttestError::Oversized {
            what: "public key",
            len: der.len(),
            max: MAX_SPKI_LEN,
        });
    }
    // SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier, subjectPublicKey BIT STRING }
    let (spki, rest) = expect_tlv(der, TAG_SEQUENCE, "outer SEQUENCE")?;
    if !rest.is_empty() {
        return Err(AttestError::Malformed("trailing bytes after the SEQUENCE"));
    }
    let (alg_id, rest) = expect_tlv(spki, TAG_SEQUENCE, "AlgorithmIdentifier SEQUENCE")?;
    let (bit_string, rest) = expect_tlv(rest, TAG_BIT_STRING, "subjectPublicKey BIT STRING")?;
    if !rest.is_empty() {
        return Err(AttestError::Malformed("trailing bytes inside the SEQUENCE"));
    }

    // AlgorithmIdentifier ::= SEQUENCE { algorithm OID, parameters ANY OPTIONAL }
    let (alg_oid, params) = expect_tlv(alg_id, TAG_OID, "algorithm OID")?;
    if alg_oid != OID_EC_PUBLIC_KEY {
        return Err(AttestError::NotEc(name_algorithm(alg_oid)));
    }
    // ECParameters: only namedCurve is allowed (RFC 5480 §2.1.1: implicitCurve and
    // specifiedCurve MUST NOT be used).
    let (curve_oid, rest) = match read_tlv(params) {
        Some((TAG_OID, content, rest)) => (content, rest),
        Some(_) => {
            return Err(AttestError::Malformed(
                "EC parameters are not a named curve",
            ));
        }
        None => return Err(AttestError::Malformed("EC parameters are missing")),
    };
    if !rest.is_empty() {
        return Err(AttestError::Malformed("trailing bytes after the curve OID"));
    }
    if curve_oid != OID_P256 {
        return Err(AttestError::WrongCurve(name_algorithm(curve_oid)));
    }

    // BIT STRING: first content byte is the number of unused bits, which must be 0.
    let Some((&unused_bits, key)) = bit_string.split_first() else {
        return Err(AttestError::Malformed("empty BIT STRING"));
    };
    if unused_bits != 0 {
        return Err(AttestError::Malformed("BIT STRING has unused bits"));
    }
    match key.first() {
        Some(0x04) => {}
        Some(0x02 | 0x03) => return Err(AttestError::CompressedPoint),
        _ => return Err(AttestError::Malformed("key is not a SEC 1 EC point")),
    }
    let point: [u8; UNCOMPRESSED_POINT_LEN] = key
        .try_into()
        .map_err(|_| AttestError::Malformed("EC point is not 65 bytes"))?;
    Ok(P256PublicKey {
        spki_der: der.to_vec(),
        point,
    })
}

/// Builds the DER SubjectPublicKeyInfo for an uncompressed P-256 point (what ring's
/// `EcdsaKeyPair::public_key()` returns), checking the point as [`parse_p256_spki`] does.
pub fn spki_from_uncompressed_point(point: &[u8]) -> Result<Vec<u8>, AttestError> {
    let point: [u8; UNCOMPRESSED_POINT_LEN] = point
        .try_into()
        .map_err(|_| AttestError::Malformed("EC point is not 65 bytes"))?;
    if point[0] != 0x04 {
        return Err(AttestError::CompressedPoint);
    }
    check_on_curve(&point)?;
    let mut alg = Vec::with_capacity(21);
    push_tlv(&mut alg, TAG_OID, OID_EC_PUBLIC_KEY);
    push_tlv(&mut alg, TAG_OID, OID_P256);
    let mut bits = Vec::with_capacity(1 + UNCOMPRESSED_POINT_LEN);
    bits.push(0);
    bits.extend_from_slice(&point);
    let mut body = Vec::with_capacity(89);
    push_tlv(&mut body, TAG_SEQUENCE, &alg);
    push_tlv(&mut body, TAG_BIT_STRING, &bits);
    let mut out = Vec::with_capacity(91);
    push_tlv(&mut out, TAG_SEQUENCE, &body);
    Ok(out)
}

/// ring validates a peer point fully (on the curve, not the identity, coordinates reduced)
/// before any ECDH computation; we borrow that check rather than reimplement field
/// arithmetic. The ephemeral key is thrown away.
fn check_on_curve(point: &[u8; UNCOMPRESSED_POINT_LEN]) -> Result<(), AttestError> {
    let rng = SystemRandom::new();
    let ours = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng)
        .map_err(|_| AttestError::Randomness)?;
    let peer = agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, &point[..]);
    agreement::agree_ephemeral(ours, &peer, |_| ()).map_err(|_| AttestError::PointNotOnCurve)
}

fn name_algorithm(oid: &[u8]) -> KeyAlgorithm {
    match oid {
        OID_RSA => KeyAlgorithm::Rsa,
        OID_ED25519 => KeyAlgorithm::Ed25519,
        OID_X25519 => KeyAlgorithm::X25519,
        OID_P384 => KeyAlgorithm::P384,
        OID_P521 => KeyAlgorithm::P521,
        OID_SECP256K1 => KeyAlgorithm::Secp256k1,
        other => KeyAlgorithm::Other(dotted_oid(other).unwrap_or_else(|| "?".into())),
    }
}

/// Dotted form of a DER OID's contents (X.690 §8.19), for error messages only.
fn dotted_oid(content: &[u8]) -> Option<String> {
    if content.len() > 64 {
        return None;
    }
    let mut arcs: Vec<u64> = Vec::new();
    let mut value: u64 = 0;
    let mut in_arc = false;
    for &b in content {
        if !in_arc && b == 0x80 {
            return None; // non-minimal encoding
        }
        value = value.checked_mul(128)?.checked_add(u64::from(b & 0x7f))?;
        in_arc = b & 0x80 != 0;
        if !in_arc {
            if arcs.is_empty() {
                let first = (value / 40).min(2);
                arcs.push(first);
                arcs.push(value - first * 40);
            } else {
                arcs.push(value);
            }
            value = 0;
        }
    }
    if in_arc || arcs.is_empty() {
        return None;
    }
    Some(
        arcs.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// Reads one DER TLV with a single-byte tag and a definite, minimally encoded length.
/// Returns (tag, content, rest).
fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // multi-byte tags never appear in an SPKI
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        // Indefinite (0x80) or absurd lengths are not DER; two length bytes cover 64 KiB,
        // far above MAX_SPKI_LEN.
        if n == 0 || n > 2 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        let len = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        // Minimal: long form only for >= 128, and no leading zero byte.
        if len < 0x80 || bytes[0] == 0 {
            return None;
        }
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (content, rest) = rest.split_at(len);
    Some((tag, content, rest))
}

fn expect_tlv<'a>(
    input: &'a [u8],
    tag: u8,
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), AttestError> {
    match read_tlv(input) {
        Some((t, content, rest)) if t == tag => Ok((content, rest)),
        _ => Err(AttestError::Malformed(what)),
    }
}

fn push_tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xff {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
    out.extend_from_slice(content);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING};
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    fn p256_key() -> EcdsaKeyPair {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap()
    }

    fn spki(key: &EcdsaKeyPair) -> Vec<u8> {
        spki_from_uncompressed_point(key.public_key().as_ref()).unwrap()
    }

    fn sign(key: &EcdsaKeyPair, msg: &[u8]) -> Vec<u8> {
        key.sign(&SystemRandom::new(), msg)
            .unwrap()
            .as_ref()
            .to_vec()
    }

    // The fixed 27-byte prefix of every uncompressed P-256 SPKI (RFC 5480), as
    // `openssl ec -pubout -outform DER` writes it.
    const P256_SPKI_PREFIX_HEX: &str = "3059301306072a8648ce3d020106082a8648ce3d03010703420004";

    #[test]
    fn valid_signature_passes() {
        let key = p256_key();
        let challenge = [7u8; 32];
        let sig = sign(&key, &challenge);
        verify_challenge_signature(&spki(&key), &challenge, &sig).unwrap();
    }

    #[test]
    fn spki_we_build_is_the_standard_91_byte_shape() {
        let key = p256_key();
        let der = spki(&key);
        assert_eq!(der.len(), 91);
        assert_eq!(&der[..27], &hex_decode(P256_SPKI_PREFIX_HEX)[..]);
        let parsed = parse_p256_spki(&der).unwrap();
        assert_eq!(parsed.spki_der(), &der[..]);
        assert_eq!(&parsed.uncompressed_point()[..], key.public_key().as_ref());
    }

    #[test]
    fn signature_by_another_key_is_refused() {
        let (a, b) = (p256_key(), p256_key());
        let challenge = [1u8; 32];
        let sig = sign(&b, &challenge);
        assert_eq!(
            verify_challenge_signature(&spki(&a), &challenge, &sig),
            Err(AttestError::BadSignature)
        );
    }

    #[test]
    fn signature_over_another_challenge_is_refused() {
        let key = p256_key();
        let sig = sign(&key, &[1u8; 32]);
        assert_eq!(
            verify_challenge_signature(&spki(&key), &[2u8; 32], &sig),
            Err(AttestError::BadSignature)
        );
    }

    #[test]
    fn any_flipped_signature_byte_is_refused() {
        let key = p256_key();
        let der = spki(&key);
        let challenge = [9u8; 32];
        let sig = sign(&key, &challenge);
        for i in 0..sig.len() {
            let mut bad = sig.clone();
            bad[i] ^= 0x01;
            assert!(
                verify_challenge_signature(&der, &challenge, &bad).is_err(),
                "byte {i}"
            );
        }
    }

    #[test]
    fn flipped_key_bytes_are_refused() {
        let key = p256_key();
        let der = spki(&key);
        let challenge = [9u8; 32];
        let sig = sign(&key, &challenge);
        for i in 0..der.len() {
            let mut bad = der.clone();
            bad[i] ^= 0x01;
            assert!(
                verify_challenge_signature(&bad, &challenge, &sig).is_err(),
                "byte {i}"
            );
        }
    }

    #[test]
    fn wrong_curve_is_refused_by_name() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        // Hand-build a P-384 SPKI.
        let mut alg = Vec::new();
        push_tlv(&mut alg, TAG_OID, OID_EC_PUBLIC_KEY);
        push_tlv(&mut alg, TAG_OID, OID_P384);
        let mut bits = vec![0u8];
        bits.extend_from_slice(key.public_key().as_ref());
        let mut body = Vec::new();
        push_tlv(&mut body, TAG_SEQUENCE, &alg);
        push_tlv(&mut body, TAG_BIT_STRING, &bits);
        let mut der = Vec::new();
        push_tlv(&mut der, TAG_SEQUENCE, &body);
        let err = parse_p256_spki(&der).unwrap_err();
        assert_eq!(err, AttestError::WrongCurve(KeyAlgorithm::P384));
        assert!(err.to_string().contains("P-384"), "{err}");
    }

    #[test]
    fn unknown_curve_is_named_by_oid() {
        let key = p256_key();
        let mut der = spki(&key);
        // Last arc of prime256v1 (…3.1.7) becomes …3.1.6.
        assert_eq!(der[22], 0x07);
        der[22] = 0x06;
        let err = parse_p256_spki(&der).unwrap_err();
        assert_eq!(
            err,
            AttestError::WrongCurve(KeyAlgorithm::Other("1.2.840.10045.3.1.6".into()))
        );
    }

    #[test]
    fn ed25519_and_rsa_are_refused() {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let ed = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let mut alg = Vec::new();
        push_tlv(&mut alg, TAG_OID, OID_ED25519);
        let mut bits = vec![0u8];
        bits.extend_from_slice(ed.public_key().as_ref());
        let mut body = Vec::new();
        push_tlv(&mut body, TAG_SEQUENCE, &alg);
        push_tlv(&mut body, TAG_BIT_STRING, &bits);
        let mut der = Vec::new();
        push_tlv(&mut der, TAG_SEQUENCE, &body);
        assert_eq!(
            parse_p256_spki(&der),
            Err(AttestError::NotEc(KeyAlgorithm::Ed25519))
        );

        // An RSA SPKI header (rsaEncryption, NULL params) with a junk key body.
        let mut alg = Vec::new();
        push_tlv(&mut alg, TAG_OID, OID_RSA);
        alg.extend_from_slice(&[0x05, 0x00]);
        let mut body = Vec::new();
        push_tlv(&mut body, TAG_SEQUENCE, &alg);
        push_tlv(&mut body, TAG_BIT_STRING, &[0u8; 140]);
        let mut der = Vec::new();
        push_tlv(&mut der, TAG_SEQUENCE, &body);
        let err = parse_p256_spki(&der).unwrap_err();
        assert_eq!(err, AttestError::NotEc(KeyAlgorithm::Rsa));
        assert!(err.to_string().contains("RSA"));
    }

    #[test]
    fn point_off_the_curve_is_refused() {
        let key = p256_key();
        let mut point = key.public_key().as_ref().to_vec();
        point[64] ^= 0x01; // change Y
        assert_eq!(
            spki_from_uncompressed_point(&point),
            Err(AttestError::PointNotOnCurve)
        );
        let mut der = spki(&key);
        der[90] ^= 0x01;
        assert_eq!(parse_p256_spki(&der), Err(AttestError::PointNotOnCurve));
        // The stored-key parse skips the explicit check, but such a key never verifies.
        let stored = parse_enrolled_p256_spki(&der).expect("shape is fine");
        let sig = key.sign(&SystemRandom::new(), b"challenge").unwrap();
        assert!(stored.verify(b"challenge", sig.as_ref()).is_err());
        let good = parse_enrolled_p256_spki(&spki(&key)).unwrap();
        assert!(good.verify(b"challenge", sig.as_ref()).is_ok());
    }

    #[test]
    fn compressed_point_is_refused() {
        let key = p256_key();
        let mut der = spki(&key);
        der[26] = 0x02;
        assert_eq!(parse_p256_spki(&der), Err(AttestError::CompressedPoint));
    }

    #[test]
    fn garbage_trailing_bytes_and_oversize_are_refused() {
        let key = p256_key();
        let der = spki(&key);
        assert!(matches!(
            parse_p256_spki(&[]),
            Err(AttestError::Malformed(_))
        ));
        assert!(matches!(
            parse_p256_spki(b"hello world"),
            Err(AttestError::Malformed(_))
        ));
        assert!(matches!(
            parse_p256_spki(&der[..90]),
            Err(AttestError::Malformed(_))
        ));
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(matches!(
            parse_p256_spki(&trailing),
            Err(AttestError::Malformed(_))
        ));
        let huge = vec![0x30; MAX_SPKI_LEN + 1];
        assert!(matches!(
            parse_p256_spki(&huge),
            Err(AttestError::Oversized {
                what: "public key",
                ..
            })
        ));
        // Non-minimal length encoding of the outer SEQUENCE (0x81 0x59 instead of 0x59).
        let mut long = vec![0x30, 0x81, 0x59];
        long.extend_from_slice(&der[2..]);
        assert!(matches!(
            parse_p256_spki(&long),
            Err(AttestError::Malformed(_))
        ));
    }

    #[test]
    fn oversized_signature_and_challenge_are_refused_before_crypto() {
        let key = p256_key();
        let parsed = parse_p256_spki(&spki(&key)).unwrap();
        assert!(matches!(
            parsed.verify(&[0u8; 32], &[0u8; MAX_SIGNATURE_LEN + 1]),
            Err(AttestError::Oversized {
                what: "signature",
                ..
            })
        ));
        assert!(matches!(
            parsed.verify(&vec![0u8; MAX_CHALLENGE_LEN + 1], &[0u8; 70]),
            Err(AttestError::Oversized {
                what: "challenge",
                ..
            })
        ));
    }

    #[test]
    fn dotted_oid_decodes_multi_byte_arcs() {
        assert_eq!(dotted_oid(OID_P256).as_deref(), Some("1.2.840.10045.3.1.7"));
        assert_eq!(dotted_oid(OID_RSA).as_deref(), Some("1.2.840.113549.1.1.1"));
        assert_eq!(dotted_oid(&[0x80, 0x01]), None);
        assert_eq!(dotted_oid(&[0x86]), None);
    }

    // Interop: keys and a signature made by `openssl` (ecparam/ec/dgst -sha256 -sign).
    const OPENSSL_P256_SPKI: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200043efec94b8777f4e24137ed0da41a882c52458fe7554ae6312d9a974651a2f39f418df75603001587701526c142c69827c960e669aee07f9e6e5d21bbe8f22b25";
    const OPENSSL_P256_SIG: &str = "3046022100f082f66d079dca49a6e47f1682c84969c2d5a4dbaa2954a20619058712543696022100e4e4d253aca5267106d45057124bc9d942945307809031c238b5a365e423fb12";
    const OPENSSL_MSG: &[u8] = b"devtrust-openssl-interop-challenge";
    const OPENSSL_P256_COMPRESSED: &str = "3039301306072a8648ce3d020106082a8648ce3d030107032200033efec94b8777f4e24137ed0da41a882c52458fe7554ae6312d9a974651a2f39f";
    const OPENSSL_P384_SPKI: &str = "3076301006072a8648ce3d020106052b810400220362000446da64dcda04bfeaa57c839357076540c4c147903084155964c67a800bfd18e576dee189dd63e9509d689eac4c527ffe29d113ecb64a012dca4728bb5a8c987801696709e29ee47076beb185b9b33f0617b16d40a6b15abb01ebc8eddc7a085e";
    const OPENSSL_RSA_SPKI: &str = "30819f300d06092a864886f70d010101050003818d0030818902818100e4a2a95ce6b184ee7ae5456d98f765144f6c009fb6f9bfd7b639f2cacabe52451b2ae5bb5e4bb3afc9fa389900c45ae5ef0894fc417b44623dce3df568776bb400439c1f3b90d78fd0624376b6c2f804b0e1490e3a5eca5b2242d6b08b0790635b719f6498a92a9c1ae4aa3b1af2481b0de1b11f81357551170661b242164d710203010001";

    #[test]
    fn openssl_keys_and_signatures_interoperate() {
        let spki = hex_decode(OPENSSL_P256_SPKI);
        let sig = hex_decode(OPENSSL_P256_SIG);
        verify_challenge_signature(&spki, OPENSSL_MSG, &sig).unwrap();
        assert_eq!(
            verify_challenge_signature(&spki, b"another challenge", &sig),
            Err(AttestError::BadSignature)
        );
        // Our builder writes byte-for-byte what openssl writes.
        let point = parse_p256_spki(&spki)
            .unwrap()
            .uncompressed_point()
            .to_vec();
        assert_eq!(spki_from_uncompressed_point(&point).unwrap(), spki);
        assert_eq!(
            parse_p256_spki(&hex_decode(OPENSSL_P256_COMPRESSED)),
            Err(AttestError::CompressedPoint)
        );
        assert_eq!(
            parse_p256_spki(&hex_decode(OPENSSL_P384_SPKI)),
            Err(AttestError::WrongCurve(KeyAlgorithm::P384))
        );
        assert_eq!(
            parse_p256_spki(&hex_decode(OPENSSL_RSA_SPKI)),
            Err(AttestError::NotEc(KeyAlgorithm::Rsa))
        );
    }

    fn hex_decode(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
