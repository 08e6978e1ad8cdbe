//! Pure unit tests: structures built by hand, keys from ring / RustCrypto, and a software
//! TPM2_ActivateCredential for ECC EKs (the RSA path and both ECC curves' interop with a real
//! TPM are covered by `dt-device/tests/tpm_e2e.rs` on swtpm).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cfb_mode::cipher::{AsyncStreamCipher, KeyIvInit};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

use super::credential::{kdfa, kdfe};
use super::structures::*;
use super::*;

const AK_ATTRS: u32 = ObjectAttributes::FIXED_TPM
    | ObjectAttributes::FIXED_PARENT
    | ObjectAttributes::SENSITIVE_DATA_ORIGIN
    | ObjectAttributes::USER_WITH_AUTH
    | ObjectAttributes::RESTRICTED
    | ObjectAttributes::SIGN_ENCRYPT;
const EK_ATTRS: u32 = ObjectAttributes::FIXED_TPM
    | ObjectAttributes::FIXED_PARENT
    | ObjectAttributes::SENSITIVE_DATA_ORIGIN
    | ObjectAttributes::ADMIN_WITH_POLICY
    | ObjectAttributes::RESTRICTED
    | ObjectAttributes::DECRYPT;

fn rng() -> impl FnMut(&mut [u8]) {
    let sys = SystemRandom::new();
    move |buf: &mut [u8]| ring::rand::SecureRandom::fill(&sys, buf).unwrap()
}

fn tpm2b(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

/// A TPMT_PUBLIC for an ECC key.
fn ecc_public(
    attrs: u32,
    name_alg: u16,
    sym: Option<u16>,
    scheme: Option<(u16, u16)>,
    curve: u16,
    x: &[u8],
    y: &[u8],
) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&ALG_ECC.to_be_bytes());
    v.extend_from_slice(&name_alg.to_be_bytes());
    v.extend_from_slice(&attrs.to_be_bytes());
    tpm2b(&mut v, &[]);
    match sym {
        None => v.extend_from_slice(&ALG_NULL.to_be_bytes()),
        Some(bits) => {
            v.extend_from_slice(&ALG_AES.to_be_bytes());
            v.extend_from_slice(&bits.to_be_bytes());
            v.extend_from_slice(&ALG_CFB.to_be_bytes());
        }
    }
    match scheme {
        None => v.extend_from_slice(&ALG_NULL.to_be_bytes()),
        Some((s, h)) => {
            v.extend_from_slice(&s.to_be_bytes());
            v.extend_from_slice(&h.to_be_bytes());
        }
    }
    v.extend_from_slice(&curve.to_be_bytes());
    v.extend_from_slice(&ALG_NULL.to_be_bytes());
    tpm2b(&mut v, x);
    tpm2b(&mut v, y);
    v
}

struct SoftAk {
    key: EcdsaKeyPair,
    tpmt: Vec<u8>,
}

impl SoftAk {
    fn new(attrs: u32) -> Self {
        let sys = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &sys).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &sys)
            .unwrap();
        let point = key.public_key().as_ref().to_vec();
        let tpmt = ecc_public(
            attrs,
            ALG_SHA256,
            None,
            Some((ALG_ECDSA, ALG_SHA256)),
            ECC_NIST_P256,
            &point[1..33],
            &point[33..],
        );
        SoftAk { key, tpmt }
    }

    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        let sig = self.key.sign(&SystemRandom::new(), msg).unwrap();
        let sig = sig.as_ref();
        let mut v = Vec::new();
        v.extend_from_slice(&ALG_ECDSA.to_be_bytes());
        v.extend_from_slice(&ALG_SHA256.to_be_bytes());
        tpm2b(&mut v, &sig[..32]);
        tpm2b(&mut v, &sig[32..]);
        v
    }
}

/// A TPMS_ATTEST quote over `nonce` selecting `pcrs` of `bank`, digest over `values`.
fn attest(nonce: &[u8], banks: &[(u16, &[u32])], values: &[Vec<u8>]) -> Vec<u8> {
    use sha2::Digest;
    let mut v = Vec::new();
    v.extend_from_slice(&TPM_GENERATED_VALUE.to_be_bytes());
    v.extend_from_slice(&TPM_ST_ATTEST_QUOTE.to_be_bytes());
    tpm2b(&mut v, &[0x00, 0x0b, 1, 2, 3]);
    tpm2b(&mut v, nonce);
    v.extend_from_slice(&1234u64.to_be_bytes());
    v.extend_from_slice(&1u32.to_be_bytes());
    v.extend_from_slice(&0u32.to_be_bytes());
    v.push(1);
    v.extend_from_slice(&7u64.to_be_bytes());
    v.extend_from_slice(&(banks.len() as u32).to_be_bytes());
    for (hash, pcrs) in banks {
        v.extend_from_slice(&hash.to_be_bytes());
        v.push(3);
        let mut bitmap = [0u8; 3];
        for &p in *pcrs {
            bitmap[(p / 8) as usize] |= 1 << (p % 8);
        }
        v.extend_from_slice(&bitmap);
    }
    let mut h = sha2::Sha256::new();
    values.iter().for_each(|d| h.update(d));
    tpm2b(&mut v, &h.finalize());
    v
}

fn pcr_values(n: u32) -> Vec<PcrValue> {
    (0..n)
        .map(|i| PcrValue {
            index: i,
            digest: vec![i as u8; 32],
        })
        .collect()
}

fn good_quote(ak: &SoftAk, nonce: &[u8]) -> TpmQuote {
    let pcrs = pcr_values(8);
    let idx: Vec<u32> = (0..8).collect();
    let a = attest(
        nonce,
        &[(ALG_SHA256, &idx)],
        &pcrs.iter().map(|p| p.digest.clone()).collect::<Vec<_>>(),
    );
    TpmQuote {
        signature: ak.sign(&a),
        attest: a,
        pcrs,
    }
}

// ---------------------------------------------------------------- structures

#[test]
fn public_area_parses_in_both_encodings_and_names_itself() {
    let ak = SoftAk::new(AK_ATTRS);
    let p = TpmPublic::parse(&ak.tpmt).unwrap();
    let mut wrapped = Vec::new();
    tpm2b(&mut wrapped, &ak.tpmt);
    assert_eq!(TpmPublic::parse(&wrapped).unwrap(), p);
    assert_eq!(p.to_tpm2b(), wrapped);
    let name = p.name();
    assert_eq!(&name[..2], &[0x00, 0x0b]);
    assert_eq!(name[2..], HashAlg::Sha256.hash(&[&ak.tpmt])[..]);
    // The credential id is the Name's digest, base64url without padding.
    let id = credential_id(&wrapped).unwrap();
    assert_eq!(
        id,
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&name[2..])
    );
    assert_eq!(id, credential_id(&ak.tpmt).unwrap());
    assert!(!id.contains('='));
}

#[test]
fn ak_attribute_checks_name_the_missing_attribute() {
    assert_eq!(
        TpmPublic::parse(&SoftAk::new(AK_ATTRS).tpmt)
            .unwrap()
            .check_ak_attributes(),
        Ok(())
    );
    for (bit, what) in [
        (ObjectAttributes::RESTRICTED, "restricted"),
        (ObjectAttributes::SIGN_ENCRYPT, "sign"),
        (ObjectAttributes::FIXED_TPM, "fixedTPM"),
        (ObjectAttributes::FIXED_PARENT, "fixedParent"),
        (
            ObjectAttributes::SENSITIVE_DATA_ORIGIN,
            "sensitiveDataOrigin",
        ),
    ] {
        let p = TpmPublic::parse(&SoftAk::new(AK_ATTRS & !bit).tpmt).unwrap();
        assert_eq!(p.check_ak_attributes(), Err(what));
    }
    let p = TpmPublic::parse(&SoftAk::new(AK_ATTRS | ObjectAttributes::DECRYPT).tpmt).unwrap();
    assert_eq!(p.check_ak_attributes(), Err("decrypt must not be set"));
}

#[test]
fn every_truncation_is_an_error() {
    let ak = SoftAk::new(AK_ATTRS);
    let q = good_quote(&ak, &[1; 20]);
    for n in 0..ak.tpmt.len() {
        assert!(
            TpmPublic::parse(&ak.tpmt[..n]).is_err(),
            "public prefix {n}"
        );
    }
    for n in 0..q.attest.len() {
        assert!(
            TpmAttest::parse(&q.attest[..n]).is_err(),
            "attest prefix {n}"
        );
    }
    for n in 0..q.signature.len() {
        assert!(
            TpmSignature::parse(&q.signature[..n]).is_err(),
            "signature prefix {n}"
        );
    }
}

#[test]
fn trailing_garbage_is_an_error() {
    let ak = SoftAk::new(AK_ATTRS);
    let q = good_quote(&ak, &[1; 20]);
    for (bytes, structure) in [
        (&ak.tpmt, Structure::Public),
        (&q.attest, Structure::Attest),
        (&q.signature, Structure::Signature),
    ] {
        let mut b = bytes.clone();
        b.push(0);
        let err = match structure {
            Structure::Public => TpmPublic::parse(&b).unwrap_err(),
            Structure::Attest => TpmAttest::parse(&b).unwrap_err(),
            _ => TpmSignature::parse(&b).unwrap_err(),
        };
        assert_eq!(
            err,
            StructureError {
                structure,
                kind: StructureErrorKind::TrailingBytes(1)
            }
        );
    }
}

#[test]
fn oversized_fields_are_rejected() {
    // authPolicy larger than any digest.
    let mut v = Vec::new();
    v.extend_from_slice(&ALG_ECC.to_be_bytes());
    v.extend_from_slice(&ALG_SHA256.to_be_bytes());
    v.extend_from_slice(&AK_ATTRS.to_be_bytes());
    v.extend_from_slice(&65u16.to_be_bytes());
    v.extend_from_slice(&[0; 65]);
    assert!(matches!(
        TpmPublic::parse(&v).unwrap_err().kind,
        StructureErrorKind::TooLarge {
            field: "authPolicy",
            size: 65,
            max: 64
        }
    ));
    // Whole inputs far beyond any real structure.
    assert!(matches!(
        TpmPublic::parse(&vec![0; 5000]).unwrap_err().kind,
        StructureErrorKind::TooLarge { .. }
    ));
    assert!(matches!(
        TpmAttest::parse(&vec![0; 5000]).unwrap_err().kind,
        StructureErrorKind::TooLarge { .. }
    ));
    // Too many PCR banks.
    let mut a = attest(&[1; 20], &[], &[]);
    let count_at = 4 + 2 + 2 + 5 + 2 + 20 + 17 + 8;
    a[count_at..count_at + 4].copy_from_slice(&17u32.to_be_bytes());
    assert!(matches!(
        TpmAttest::parse(&a).unwrap_err().kind,
        StructureErrorKind::TooLarge {
            field: "pcrSelect.count",
            ..
        }
    ));
}

#[test]
fn inconsistent_structures_are_rejected() {
    // Wrong magic / wrong attestation type / bad `safe` / duplicated bank.
    let good = attest(&[1; 20], &[(ALG_SHA256, &[0])], &[vec![0; 32]]);
    let mut bad_magic = good.clone();
    bad_magic[0] = 0;
    assert!(matches!(
        TpmAttest::parse(&bad_magic).unwrap_err().kind,
        StructureErrorKind::BadValue { field: "magic", .. }
    ));
    let mut certify = good.clone();
    certify[4..6].copy_from_slice(&0x8017u16.to_be_bytes());
    assert!(matches!(
        TpmAttest::parse(&certify).unwrap_err().kind,
        StructureErrorKind::BadValue { field: "type", .. }
    ));
    let safe_at = 4 + 2 + 2 + 5 + 2 + 20 + 16;
    let mut bad_safe = good.clone();
    bad_safe[safe_at] = 2;
    assert!(matches!(
        TpmAttest::parse(&bad_safe).unwrap_err().kind,
        StructureErrorKind::BadValue { field: "safe", .. }
    ));
    let dup = attest(&[1; 20], &[(ALG_SHA256, &[0]), (ALG_SHA256, &[1])], &[]);
    assert!(matches!(
        TpmAttest::parse(&dup).unwrap_err().kind,
        StructureErrorKind::Inconsistent(_)
    ));

    // RSA modulus length that contradicts keyBits.
    let mut rsa = Vec::new();
    rsa.extend_from_slice(&ALG_RSA.to_be_bytes());
    rsa.extend_from_slice(&ALG_SHA256.to_be_bytes());
    rsa.extend_from_slice(&AK_ATTRS.to_be_bytes());
    tpm2b(&mut rsa, &[]);
    rsa.extend_from_slice(&ALG_NULL.to_be_bytes());
    rsa.extend_from_slice(&ALG_RSASSA.to_be_bytes());
    rsa.extend_from_slice(&ALG_SHA256.to_be_bytes());
    rsa.extend_from_slice(&2048u16.to_be_bytes());
    rsa.extend_from_slice(&0u32.to_be_bytes());
    let mut short = rsa.clone();
    tpm2b(&mut short, &[0xc5; 128]);
    assert!(matches!(
        TpmPublic::parse(&short).unwrap_err().kind,
        StructureErrorKind::Inconsistent(_)
    ));
    let mut ok = rsa.clone();
    tpm2b(&mut ok, &[0xc5; 256]);
    let parsed = TpmPublic::parse(&ok).unwrap();
    assert!(matches!(
        parsed.key,
        PublicKey::Rsa {
            exponent: 65537,
            key_bits: 2048,
            ..
        }
    ));

    // Unknown object type, name algorithm and signature algorithm.
    let mut keyedhash = ok.clone();
    keyedhash[0..2].copy_from_slice(&0x0008u16.to_be_bytes());
    assert!(matches!(
        TpmPublic::parse(&keyedhash).unwrap_err().kind,
        StructureErrorKind::BadValue { field: "type", .. }
    ));
    let mut sha1 = ok.clone();
    sha1[2..4].copy_from_slice(&ALG_SHA1.to_be_bytes());
    assert!(matches!(
        TpmPublic::parse(&sha1).unwrap_err().kind,
        StructureErrorKind::BadValue {
            field: "nameAlg",
            ..
        }
    ));
    assert!(matches!(
        TpmSignature::parse(&[0x00, 0x05, 0, 0]).unwrap_err().kind,
        StructureErrorKind::BadValue {
            field: "sigAlg",
            ..
        }
    ));
}

#[test]
fn garbage_never_panics() {
    // A cheap deterministic sweep (the fuzz targets do the real work).
    let mut state = 0x1234_5678u32;
    for len in 0..300 {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect();
        let _ = TpmPublic::parse(&bytes);
        let _ = TpmAttest::parse(&bytes);
        let _ = TpmSignature::parse(&bytes);
        let _ = parse_ek_cert(&bytes);
    }
}

// ---------------------------------------------------------------- quotes

#[test]
fn quote_verification_table() {
    let ak = SoftAk::new(AK_ATTRS);
    let nonce = [0x11; NONCE_LEN];
    let good = good_quote(&ak, &nonce);
    let v = verify_auth_quote(&ak.tpmt, &nonce, &good).unwrap();
    assert_eq!(v.pcrs.len(), 8);
    assert_eq!((v.clock, v.reset_count), (1234, 1));

    let other = SoftAk::new(AK_ATTRS);
    let idx: Vec<u32> = (0..8).collect();
    let values: Vec<Vec<u8>> = good.pcrs.iter().map(|p| p.digest.clone()).collect();
    let sha1_only = attest(&nonce, &[(ALG_SHA1, &idx)], &values);
    let two_banks = attest(&nonce, &[(ALG_SHA256, &idx), (ALG_SHA1, &[0])], &values);
    let empty_sel = attest(&nonce, &[(ALG_SHA256, &[])], &[]);
    let mut rsa_sig = vec![0x00, 0x14, 0x00, 0x0b];
    tpm2b(&mut rsa_sig, &[1; 256]);
    let mut sha384_sig = good.signature.clone();
    sha384_sig[2..4].copy_from_slice(&ALG_SHA384.to_be_bytes());

    let cases: Vec<(&str, TpmQuote, &[u8], TpmError)> = vec![
        (
            "stale nonce",
            good.clone(),
            &[0x22; NONCE_LEN],
            PeerMisbehaved::NonceMismatch.into(),
        ),
        (
            "signed by another ak",
            TpmQuote {
                signature: other.sign(&good.attest),
                ..good.clone()
            },
            &nonce,
            PeerMisbehaved::BadQuoteSignature.into(),
        ),
        (
            "attest tampered",
            TpmQuote {
                attest: {
                    let mut a = good.attest.clone();
                    a[55] ^= 1;
                    a
                },
                ..good.clone()
            },
            &nonce,
            PeerMisbehaved::BadQuoteSignature.into(),
        ),
        (
            "rsa signature for an ecc ak",
            TpmQuote {
                signature: rsa_sig,
                ..good.clone()
            },
            &nonce,
            PeerMisbehaved::SignatureSchemeMismatch.into(),
        ),
        (
            "sha-384 signature",
            TpmQuote {
                signature: sha384_sig,
                ..good.clone()
            },
            &nonce,
            PeerMisbehaved::SignatureSchemeMismatch.into(),
        ),
        (
            "pcr value changed",
            TpmQuote {
                pcrs: {
                    let mut p = good.pcrs.clone();
                    p[3].digest[0] ^= 1;
                    p
                },
                ..good.clone()
            },
            &nonce,
            PeerMisbehaved::PcrDigestMismatch.into(),
        ),
        (
            "pcr missing",
            TpmQuote {
                pcrs: good.pcrs[1..].to_vec(),
                ..good.clone()
            },
            &nonce,
            PeerMisbehaved::PcrSelectionMismatch.into(),
        ),
        (
            "pcr duplicated",
            TpmQuote {
                pcrs: {
                    let mut p = good.pcrs.clone();
                    p[1].index = 0;
                    p
                },
                ..good.clone()
            },
            &nonce,
            PeerMisbehaved::PcrSelectionMismatch.into(),
        ),
        (
            "short pcr digest",
            TpmQuote {
                pcrs: {
                    let mut p = good.pcrs.clone();
                    p[1].digest.pop();
                    p
                },
                ..good.clone()
            },
            &nonce,
            PeerMisbehaved::PcrSelectionMismatch.into(),
        ),
        (
            "sha-1 bank only",
            TpmQuote {
                signature: ak.sign(&sha1_only),
                attest: sha1_only,
                ..good.clone()
            },
            &nonce,
            PeerMisbehaved::PcrBankMissing.into(),
        ),
        (
            "empty selection",
            TpmQuote {
                signature: ak.sign(&empty_sel),
                attest: empty_sel,
                pcrs: vec![],
            },
            &nonce,
            PeerMisbehaved::PcrBankMissing.into(),
        ),
        (
            "extra bank",
            TpmQuote {
                signature: ak.sign(&two_banks),
                attest: two_banks,
                ..good.clone()
            },
            &nonce,
            Unsupported::Algorithm {
                what: "pcr bank besides sha-256 in the quote",
                value: ALG_SHA1,
            }
            .into(),
        ),
    ];
    for (what, quote, nonce, expected) in cases {
        assert_eq!(
            verify_auth_quote(&ak.tpmt, nonce, &quote).unwrap_err(),
            expected,
            "{what}"
        );
    }
}

#[test]
fn unfit_attestation_keys_are_refused_before_anything_else() {
    let nonce = [0; NONCE_LEN];
    let unrestricted = SoftAk::new(AK_ATTRS & !ObjectAttributes::RESTRICTED);
    let q = good_quote(&unrestricted, &nonce);
    assert_eq!(
        verify_auth_quote(&unrestricted.tpmt, &nonce, &q).unwrap_err(),
        PeerMisbehaved::AkAttributes("restricted").into()
    );
    let p384 = ecc_public(
        AK_ATTRS,
        ALG_SHA256,
        None,
        None,
        ECC_NIST_P384,
        &[1; 48],
        &[2; 48],
    );
    assert!(matches!(
        verify_auth_quote(&p384, &nonce, &q).unwrap_err(),
        TpmError::Unsupported(_)
    ));
}

// ---------------------------------------------------------------- MakeCredential

/// TPM2_ActivateCredential in software for an ECC EK (Part 1 §24, the TPM's side).
macro_rules! soft_activate {
    ($name:ident, $krate:ident) => {
        fn $name(
            ek_secret: &$krate::SecretKey,
            ek: &TpmPublic,
            object_name: &[u8],
            out: &MakeCredentialOutput,
        ) -> Option<Vec<u8>> {
            use hmac::Mac;
            let mut r = wire::Reader::new(&out.encrypted_secret, Structure::Output);
            let ex = r.tpm2b("x", 66).ok()?.to_vec();
            let ey = r.tpm2b("y", 66).ok()?.to_vec();
            r.finish().ok()?;
            let mut sec1 = vec![4u8];
            sec1.extend_from_slice(&ex);
            sec1.extend_from_slice(&ey);
            let eph = $krate::PublicKey::from_sec1_bytes(&sec1).ok()?;
            let z = $krate::ecdh::diffie_hellman(ek_secret.to_nonzero_scalar(), eph.as_affine());
            let PublicKey::Ecc {
                x: ek_x, symmetric, ..
            } = &ek.key
            else {
                return None;
            };
            let bits = (ek.name_alg.digest_len() * 8) as u32;
            let seed = kdfe(
                ek.name_alg,
                z.raw_secret_bytes(),
                "IDENTITY",
                &ex,
                ek_x,
                bits,
            )
            .ok()?;
            let hmac_key = kdfa(ek.name_alg, &seed, "INTEGRITY", &[], &[], bits).ok()?;
            let mut r = wire::Reader::new(&out.credential_blob, Structure::Output);
            let outer = r.tpm2b("hmac", 64).ok()?.to_vec();
            let enc = r.take("enc", r.remaining()).ok()?.to_vec();
            let expected = match ek.name_alg {
                HashAlg::Sha256 => {
                    let mut m =
                        <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&hmac_key).ok()?;
                    m.update(&enc);
                    m.update(object_name);
                    m.finalize().into_bytes().to_vec()
                }
                HashAlg::Sha384 => {
                    let mut m =
                        <hmac::Hmac<sha2::Sha384> as Mac>::new_from_slice(&hmac_key).ok()?;
                    m.update(&enc);
                    m.update(object_name);
                    m.finalize().into_bytes().to_vec()
                }
            };
            if expected != outer {
                return None; // TPM_RC_INTEGRITY
            }
            let sym_bits = symmetric.as_ref()?.key_bits;
            let key = kdfa(
                ek.name_alg,
                &seed,
                "STORAGE",
                object_name,
                &[],
                sym_bits.into(),
            )
            .ok()?;
            let mut plain = enc.clone();
            match key.len() {
                16 => cfb_mode::Decryptor::<aes::Aes128>::new_from_slices(&key, &[0; 16])
                    .ok()?
                    .decrypt(&mut plain),
                32 => cfb_mode::Decryptor::<aes::Aes256>::new_from_slices(&key, &[0; 16])
                    .ok()?
                    .decrypt(&mut plain),
                _ => return None,
            }
            let mut r = wire::Reader::new(&plain, Structure::Output);
            let cred = r.tpm2b("credential", 64).ok()?.to_vec();
            r.finish().ok()?;
            Some(cred)
        }
    };
}
soft_activate!(soft_activate_p256, ecdh_p256);
soft_activate!(soft_activate_p384, ecdh_p384);

fn ecc_ek<C: Copy>(
    secret_len: usize,
    curve: u16,
    name_alg: u16,
    sym_bits: u16,
    mut make: impl FnMut(&[u8]) -> Option<(C, Vec<u8>)>,
) -> (C, Vec<u8>) {
    let mut r = rng();
    loop {
        let mut s = vec![0u8; secret_len];
        r(&mut s);
        if let Some((k, point)) = make(&s) {
            let tpmt = ecc_public(
                EK_ATTRS,
                name_alg,
                Some(sym_bits),
                None,
                curve,
                &point[1..1 + secret_len],
                &point[1 + secret_len..],
            );
            return (k, tpmt);
        }
    }
}

#[test]
fn make_credential_ecc_p256_round_trips_through_software_activation() {
    use ecdh_p256::elliptic_curve::sec1::ToEncodedPoint;
    let mut keys = Vec::new();
    let (_, tpmt) = ecc_ek(32, ECC_NIST_P256, ALG_SHA256, 128, |s| {
        let k = ecdh_p256::SecretKey::from_slice(s).ok()?;
        let p = k.public_key().to_encoded_point(false).as_bytes().to_vec();
        keys.push(k);
        Some(((), p))
    });
    let ek_secret = keys.pop().unwrap();
    let ek = TpmPublic::parse(&tpmt).unwrap();
    let ak = TpmPublic::parse(&SoftAk::new(AK_ATTRS).tpmt).unwrap();
    let out = make_credential(
        &ek,
        &ak.name(),
        b"0123456789abcdef0123456789abcdef",
        &mut rng(),
    )
    .unwrap();
    assert_eq!(
        soft_activate_p256(&ek_secret, &ek, &ak.name(), &out).unwrap(),
        b"0123456789abcdef0123456789abcdef"
    );
    // Another object Name: the integrity check fails (the TPM returns TPM_RC_INTEGRITY).
    let other = TpmPublic::parse(&SoftAk::new(AK_ATTRS).tpmt).unwrap();
    assert_eq!(
        soft_activate_p256(&ek_secret, &ek, &other.name(), &out),
        None
    );
    // Another EK private key cannot activate.
    let stranger = ecdh_p256::SecretKey::from_slice(&[7; 32]).unwrap();
    assert_eq!(soft_activate_p256(&stranger, &ek, &ak.name(), &out), None);
}

#[test]
fn make_credential_ecc_p384_high_range_template_round_trips() {
    use ecdh_p384::elliptic_curve::sec1::ToEncodedPoint;
    let mut keys = Vec::new();
    // EK template H-3 shape: P-384, SHA-384 name algorithm, AES-256-CFB.
    let (_, tpmt) = ecc_ek(48, ECC_NIST_P384, ALG_SHA384, 256, |s| {
        let k = ecdh_p384::SecretKey::from_slice(s).ok()?;
        let p = k.public_key().to_encoded_point(false).as_bytes().to_vec();
        keys.push(k);
        Some(((), p))
    });
    let ek_secret = keys.pop().unwrap();
    let ek = TpmPublic::parse(&tpmt).unwrap();
    let ak = TpmPublic::parse(&SoftAk::new(AK_ATTRS).tpmt).unwrap();
    let out = make_credential(&ek, &ak.name(), &[0xab; 32], &mut rng()).unwrap();
    assert_eq!(
        soft_activate_p384(&ek_secret, &ek, &ak.name(), &out).unwrap(),
        vec![0xab; 32]
    );
}

#[test]
fn make_credential_refuses_unusable_eks() {
    let ak = TpmPublic::parse(&SoftAk::new(AK_ATTRS).tpmt).unwrap();
    let point = SoftAk::new(AK_ATTRS).key.public_key().as_ref().to_vec();
    let (x, y) = (&point[1..33], &point[33..]);
    let signing = TpmPublic::parse(&ecc_public(
        AK_ATTRS,
        ALG_SHA256,
        Some(128),
        None,
        ECC_NIST_P256,
        x,
        y,
    ))
    .unwrap();
    assert!(matches!(
        make_credential(&signing, &ak.name(), &[0; 32], &mut rng()),
        Err(TpmError::PeerMisbehaved(PeerMisbehaved::EkAttributes(_)))
    ));
    let no_sym = TpmPublic::parse(&ecc_public(
        EK_ATTRS,
        ALG_SHA256,
        None,
        None,
        ECC_NIST_P256,
        x,
        y,
    ))
    .unwrap();
    assert!(make_credential(&no_sym, &ak.name(), &[0; 32], &mut rng()).is_err());
    let off_curve = TpmPublic::parse(&ecc_public(
        EK_ATTRS,
        ALG_SHA256,
        Some(128),
        None,
        ECC_NIST_P256,
        &[1; 32],
        &[2; 32],
    ))
    .unwrap();
    assert!(matches!(
        make_credential(&off_curve, &ak.name(), &[0; 32], &mut rng()),
        Err(TpmError::PeerMisbehaved(PeerMisbehaved::EkAttributes(_)))
    ));
    let p521 = TpmPublic::parse(&ecc_public(
        EK_ATTRS,
        ALG_SHA256,
        Some(128),
        None,
        0x0005,
        x,
        y,
    ))
    .unwrap();
    assert!(matches!(
        make_credential(&p521, &ak.name(), &[0; 32], &mut rng()),
        Err(TpmError::Unsupported(_))
    ));
}

// ---------------------------------------------------------------- enrollment

fn soft_ek_p256() -> Vec<u8> {
    use ecdh_p256::elliptic_curve::sec1::ToEncodedPoint;
    let k = ecdh_p256::SecretKey::from_slice(&[9; 32]).unwrap();
    let p = k.public_key().to_encoded_point(false).as_bytes().to_vec();
    ecc_public(
        EK_ATTRS,
        ALG_SHA256,
        Some(128),
        None,
        ECC_NIST_P256,
        &p[1..33],
        &p[33..],
    )
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_893_456_000)
}

#[test]
fn enrollment_policy_without_a_certificate() {
    let ak = SoftAk::new(AK_ATTRS);
    let req = TpmEnrollRequest {
        ek_public: soft_ek_p256(),
        ek_cert: None,
        ak_public: ak.tpmt.clone(),
    };
    let (state, challenge) = begin_enrollment(&req, &[], now(), &mut rng()).unwrap();
    assert_eq!(state.attestation_type(), TpmAttestationType::EkPub);
    assert!(
        !format!("{state:?}").contains(&format!("{:?}", state.secret)),
        "debug hides the secret"
    );
    assert_eq!(challenge.nonce.len(), NONCE_LEN);
    // Finishing needs the secret: a wrong one is refused before the quote is looked at.
    let q = good_quote(&ak, &challenge.nonce);
    assert_eq!(
        finish_enrollment(state.clone(), &[0; 32], &q).unwrap_err(),
        PeerMisbehaved::WrongActivationSecret.into()
    );
    let secret = state.secret;
    let cred = finish_enrollment(state, &secret, &q).unwrap();
    assert_eq!(cred.attestation_type, TpmAttestationType::EkPub);
    assert_eq!(cred.credential_id, credential_id(&ak.tpmt).unwrap());

    // With an allow-list, no certificate is refused.
    let pem = String::from("-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n");
    assert_eq!(
        begin_enrollment(&req, &[pem], now(), &mut rng()).unwrap_err(),
        PolicyDenied::EkCertRequired.into()
    );
    // A broken allow-list entry is a configuration error, not the device's fault.
    assert!(matches!(
        begin_enrollment(&req, &[String::from("nope")], now(), &mut rng()).unwrap_err(),
        TpmError::Config(_)
    ));
}

#[test]
fn enrollment_refuses_garbage_certificates_and_unfit_keys() {
    let ak = SoftAk::new(AK_ATTRS);
    let req = TpmEnrollRequest {
        ek_public: soft_ek_p256(),
        ek_cert: Some(vec![0x30, 0x03, 1, 2, 3]),
        ak_public: ak.tpmt.clone(),
    };
    assert!(matches!(
        begin_enrollment(&req, &[], now(), &mut rng()).unwrap_err(),
        TpmError::PeerMisbehaved(PeerMisbehaved::EkCertMalformed(_))
    ));
    let not_restricted = SoftAk::new(AK_ATTRS & !ObjectAttributes::FIXED_TPM);
    let req = TpmEnrollRequest {
        ek_public: soft_ek_p256(),
        ek_cert: None,
        ak_public: not_restricted.tpmt,
    };
    assert_eq!(
        begin_enrollment(&req, &[], now(), &mut rng()).unwrap_err(),
        PeerMisbehaved::AkAttributes("fixedTPM").into()
    );
    // The AK passed as the EK.
    let req = TpmEnrollRequest {
        ek_public: ak.tpmt.clone(),
        ek_cert: None,
        ak_public: ak.tpmt.clone(),
    };
    assert!(matches!(
        begin_enrollment(&req, &[], now(), &mut rng()).unwrap_err(),
        TpmError::PeerMisbehaved(PeerMisbehaved::EkAttributes(_))
    ));
}

#[test]
fn validate_allowed_ca_pem_explains_rejections() {
    assert!(validate_allowed_ca_pem("").unwrap_err().contains("no pem"));
    assert!(
        validate_allowed_ca_pem("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n")
            .is_err()
    );
    let key = "-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n";
    assert!(
        validate_allowed_ca_pem(key)
            .unwrap_err()
            .contains("expected CERTIFICATE")
    );
    let junk = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
    assert!(
        validate_allowed_ca_pem(junk)
            .unwrap_err()
            .contains("not valid x.509")
    );
}
