//! Strict parsers for the TPM 2.0 structures a device sends: `TPMT_PUBLIC` (RSA and ECC),
//! `TPMS_ATTEST` of type quote, and `TPMT_SIGNATURE`. Layouts are from TPM 2.0 Library
//! Part 2 ("Structures"); section numbers below are from revision 1.59.
//!
//! The parsers accept exactly one encoding: every `TPM2B` is bounded by the size of the union it
//! carries, selectors must name an algorithm we know how to lay out, and trailing bytes are an
//! error. They do not judge whether a key is fit for a purpose; see
//! [`TpmPublic::check_ak_attributes`] and the verification functions for that.

use sha2::{Digest, Sha256, Sha384};

use super::error::{Structure, StructureError, StructureErrorKind, Unsupported};
use super::wire::{Reader, strip_tpm2b};

// TPM_ALG_ID values, Part 2 §6.3 Table 9.
pub(crate) const ALG_RSA: u16 = 0x0001;
pub(crate) const ALG_SHA1: u16 = 0x0004;
pub(crate) const ALG_AES: u16 = 0x0006;
pub(crate) const ALG_MGF1: u16 = 0x0007;
pub(crate) const ALG_SHA256: u16 = 0x000B;
pub(crate) const ALG_SHA384: u16 = 0x000C;
pub(crate) const ALG_SHA512: u16 = 0x000D;
pub(crate) const ALG_NULL: u16 = 0x0010;
pub(crate) const ALG_SM3_256: u16 = 0x0012;
pub(crate) const ALG_RSASSA: u16 = 0x0014;
pub(crate) const ALG_RSAES: u16 = 0x0015;
pub(crate) const ALG_RSAPSS: u16 = 0x0016;
pub(crate) const ALG_OAEP: u16 = 0x0017;
pub(crate) const ALG_ECDSA: u16 = 0x0018;
pub(crate) const ALG_ECDH: u16 = 0x0019;
pub(crate) const ALG_ECDAA: u16 = 0x001A;
pub(crate) const ALG_SM2: u16 = 0x001B;
pub(crate) const ALG_ECSCHNORR: u16 = 0x001C;
pub(crate) const ALG_ECMQV: u16 = 0x001D;
pub(crate) const ALG_KDF1_SP800_56A: u16 = 0x0020;
pub(crate) const ALG_KDF2: u16 = 0x0021;
pub(crate) const ALG_KDF1_SP800_108: u16 = 0x0022;
pub(crate) const ALG_ECC: u16 = 0x0023;
pub(crate) const ALG_CFB: u16 = 0x0043;

// TPM_ECC_CURVE, Part 2 §6.4 Table 10.
pub(crate) const ECC_NIST_P256: u16 = 0x0003;
pub(crate) const ECC_NIST_P384: u16 = 0x0004;

/// TPM_GENERATED_VALUE, Part 2 §6.2: every TPMS_ATTEST the TPM signs starts with it, and a
/// restricted signing key refuses to sign anything that does.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// TPM_ST_ATTEST_QUOTE, Part 2 §6.9 Table 19.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;

// Size bounds (Part 2 §10.3 and the reference implementation's TPM limits).
/// sizeof(TPMU_HA): the largest digest (SHA-512).
const MAX_DIGEST: usize = 64;
/// MAX_RSA_KEY_BYTES for 4096-bit keys.
const MAX_RSA_KEY_BYTES: usize = 512;
/// MAX_ECC_KEY_BYTES for P-521.
const MAX_ECC_KEY_BYTES: usize = 66;
/// sizeof(TPMU_NAME): a handle or an algorithm id plus a digest.
const MAX_NAME: usize = 2 + MAX_DIGEST;
/// TPML_PCR_SELECTION holds at most HASH_COUNT entries; no TPM implements more than a handful
/// of banks. 16 is generous and keeps the loop bounded.
const MAX_PCR_BANKS: u32 = 16;
/// PCR_SELECT_MAX: 24 PCRs need 3 bytes; allow up to 64 PCRs.
const MAX_PCR_SELECT: usize = 8;
/// A TPM2B_PUBLIC never exceeds this in practice (RSA-4096 with a SHA-512 policy is < 700).
pub const MAX_PUBLIC_SIZE: usize = 1024;
/// TPMS_ATTEST for a quote is far below this; the bound protects the hash over it.
pub const MAX_ATTEST_SIZE: usize = 2048;

/// TPMA_OBJECT bits, Part 2 §8.3.2 Table 31.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectAttributes(pub u32);

impl ObjectAttributes {
    pub const FIXED_TPM: u32 = 1 << 1;
    pub const ST_CLEAR: u32 = 1 << 2;
    pub const FIXED_PARENT: u32 = 1 << 4;
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    pub const ADMIN_WITH_POLICY: u32 = 1 << 7;
    pub const NO_DA: u32 = 1 << 10;
    pub const ENCRYPTED_DUPLICATION: u32 = 1 << 11;
    pub const RESTRICTED: u32 = 1 << 16;
    pub const DECRYPT: u32 = 1 << 17;
    pub const SIGN_ENCRYPT: u32 = 1 << 18;

    pub fn has(self, bit: u32) -> bool {
        self.0 & bit == bit
    }
}

/// A hash algorithm we can compute (name algorithms and signature digests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashAlg {
    Sha256,
    Sha384,
}

impl HashAlg {
    pub(crate) fn from_id(id: u16) -> Result<Self, Unsupported> {
        match id {
            ALG_SHA256 => Ok(HashAlg::Sha256),
            ALG_SHA384 => Ok(HashAlg::Sha384),
            value => Err(Unsupported::Algorithm {
                what: "hash algorithm",
                value,
            }),
        }
    }

    pub fn id(self) -> u16 {
        match self {
            HashAlg::Sha256 => ALG_SHA256,
            HashAlg::Sha384 => ALG_SHA384,
        }
    }

    pub fn digest_len(self) -> usize {
        match self {
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
        }
    }

    pub(crate) fn hash(self, parts: &[&[u8]]) -> Vec<u8> {
        match self {
            HashAlg::Sha256 => {
                let mut h = Sha256::new();
                parts.iter().for_each(|p| h.update(p));
                h.finalize().to_vec()
            }
            HashAlg::Sha384 => {
                let mut h = Sha384::new();
                parts.iter().for_each(|p| h.update(p));
                h.finalize().to_vec()
            }
        }
    }
}

/// Any hash algorithm identifier that can appear as a selector (so the layout is known), even
/// the ones we do not compute.
fn is_hash_alg(id: u16) -> bool {
    matches!(
        id,
        ALG_SHA1 | ALG_SHA256 | ALG_SHA384 | ALG_SHA512 | ALG_SM3_256
    )
}

/// TPMT_SYM_DEF_OBJECT, Part 2 §11.1.7 (NULL, or an algorithm with key bits and a mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SymDef {
    pub algorithm: u16,
    pub key_bits: u16,
    pub mode: u16,
}

/// TPMT_{RSA,ECC}_SCHEME / TPMT_KDF_SCHEME: a scheme selector and, for every scheme that has
/// one, its hash algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scheme {
    pub scheme: u16,
    pub hash: u16,
}

/// The algorithm-specific part of a public area with its unique field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicKey {
    /// TPMS_RSA_PARMS (§12.2.3.5) and TPM2B_PUBLIC_KEY_RSA.
    Rsa {
        symmetric: Option<SymDef>,
        scheme: Option<Scheme>,
        key_bits: u16,
        /// The exponent; 0 in the structure means 2^16 + 1 (§12.2.3.5) and is stored as such.
        exponent: u32,
        modulus: Vec<u8>,
    },
    /// TPMS_ECC_PARMS (§12.2.3.6) and TPMS_ECC_POINT.
    Ecc {
        symmetric: Option<SymDef>,
        scheme: Option<Scheme>,
        curve: u16,
        kdf: Option<Scheme>,
        x: Vec<u8>,
        y: Vec<u8>,
    },
}

/// A parsed TPMT_PUBLIC (Part 2 §12.2.4) and the exact bytes it was parsed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmPublic {
    /// The marshalled TPMT_PUBLIC (without the TPM2B size). The object's Name and the
    /// credential id are computed over exactly these bytes.
    pub tpmt_bytes: Vec<u8>,
    pub name_alg: HashAlg,
    pub attributes: ObjectAttributes,
    pub auth_policy: Vec<u8>,
    pub key: PublicKey,
}

impl TpmPublic {
    /// Parses a TPM2B_PUBLIC (Part 2 §12.2.5) or a bare TPMT_PUBLIC.
    pub fn parse(bytes: &[u8]) -> Result<Self, StructureError> {
        if bytes.len() > MAX_PUBLIC_SIZE + 2 {
            return Err(StructureError {
                structure: Structure::Public,
                kind: StructureErrorKind::TooLarge {
                    field: "TPM2B_PUBLIC",
                    size: bytes.len(),
                    max: MAX_PUBLIC_SIZE,
                },
            });
        }
        let tpmt = strip_tpm2b(bytes).unwrap_or(bytes);
        parse_tpmt_public(tpmt)
    }

    /// The marshalled TPM2B_PUBLIC (size, then TPMT_PUBLIC).
    pub fn to_tpm2b(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.tpmt_bytes.len() + 2);
        // INVARIANT: `parse` bounds tpmt_bytes to MAX_PUBLIC_SIZE, which fits a u16.
        let size = u16::try_from(self.tpmt_bytes.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(&self.tpmt_bytes);
        out
    }

    /// The object's Name: nameAlg || H_nameAlg(TPMT_PUBLIC) (Part 1 §16 "Names").
    pub fn name(&self) -> Vec<u8> {
        let mut name = self.name_alg.id().to_be_bytes().to_vec();
        name.extend_from_slice(&self.name_alg.hash(&[&self.tpmt_bytes]));
        name
    }

    /// Checks the attributes an attestation key must have for a quote to mean anything
    /// (TPM 2.0 Library Part 1 §25 "Attestation"; TCG "TPM 2.0 Keys for Device Identity and
    /// Attestation" §3.6 AK templates):
    /// - `restricted` + `sign`: the key signs only digests the TPM computed itself, so it can
    ///   never sign a forged TPMS_ATTEST (Part 1 §25.2 / Part 3 TPM2_Sign restrictions);
    /// - `fixedTPM` + `fixedParent`: it cannot be duplicated out of this TPM;
    /// - `sensitiveDataOrigin`: the TPM generated the private key (not imported);
    /// - not `decrypt`: a signing-only key.
    ///
    /// These attributes are part of the Name, which TPM2_ActivateCredential binds to the EK,
    /// so after activation they are known to be the real key's.
    pub fn check_ak_attributes(&self) -> Result<(), &'static str> {
        let a = self.attributes;
        let required = [
            (ObjectAttributes::RESTRICTED, "restricted"),
            (ObjectAttributes::SIGN_ENCRYPT, "sign"),
            (ObjectAttributes::FIXED_TPM, "fixedTPM"),
            (ObjectAttributes::FIXED_PARENT, "fixedParent"),
            (
                ObjectAttributes::SENSITIVE_DATA_ORIGIN,
                "sensitiveDataOrigin",
            ),
        ];
        for (bit, what) in required {
            if !a.has(bit) {
                return Err(what);
            }
        }
        if a.has(ObjectAttributes::DECRYPT) {
            return Err("decrypt must not be set");
        }
        Ok(())
    }

    /// Checks the attributes of an endorsement key used for MakeCredential: a restricted
    /// decryption (storage) key that never leaves the TPM (TCG EK Credential Profile §2.2.1.4
    /// templates; Part 3 TPM2_ActivateCredential requires keyHandle to be a restricted
    /// decryption key).
    pub fn check_ek_attributes(&self) -> Result<(), &'static str> {
        let a = self.attributes;
        let required = [
            (ObjectAttributes::RESTRICTED, "restricted"),
            (ObjectAttributes::DECRYPT, "decrypt"),
            (ObjectAttributes::FIXED_TPM, "fixedTPM"),
            (ObjectAttributes::FIXED_PARENT, "fixedParent"),
            (
                ObjectAttributes::SENSITIVE_DATA_ORIGIN,
                "sensitiveDataOrigin",
            ),
        ];
        for (bit, what) in required {
            if !a.has(bit) {
                return Err(what);
            }
        }
        if a.has(ObjectAttributes::SIGN_ENCRYPT) {
            return Err("sign must not be set");
        }
        Ok(())
    }
}

fn parse_sym_def(r: &mut Reader<'_>) -> Result<Option<SymDef>, StructureError> {
    let algorithm = r.u16("symmetric.algorithm")?;
    if algorithm == ALG_NULL {
        return Ok(None);
    }
    // TPMU_SYM_KEY_BITS / TPMU_SYM_MODE (§11.1.3, §11.1.4): every block cipher selector is
    // followed by key bits and a mode. XOR is not allowed in TPMT_SYM_DEF_OBJECT.
    let key_bits = r.u16("symmetric.keyBits")?;
    let mode = r.u16("symmetric.mode")?;
    Ok(Some(SymDef {
        algorithm,
        key_bits,
        mode,
    }))
}

/// TPMT_RSA_SCHEME (§11.2.4.2): RSAES has no details, the others a hash algorithm.
fn parse_rsa_scheme(r: &mut Reader<'_>) -> Result<Option<Scheme>, StructureError> {
    let scheme = r.u16("rsa scheme")?;
    match scheme {
        ALG_NULL => Ok(None),
        ALG_RSAES => Ok(Some(Scheme {
            scheme,
            hash: ALG_NULL,
        })),
        ALG_RSASSA | ALG_RSAPSS | ALG_OAEP => {
            let hash = r.u16("rsa scheme hash")?;
            if !is_hash_alg(hash) {
                return Err(r.bad_value("rsa scheme hash", hash.into()));
            }
            Ok(Some(Scheme { scheme, hash }))
        }
        other => Err(r.bad_value("rsa scheme", other.into())),
    }
}

/// TPMT_ECC_SCHEME (§11.2.5.6): ECDAA carries a hash and a count, the others a hash.
fn parse_ecc_scheme(r: &mut Reader<'_>) -> Result<Option<Scheme>, StructureError> {
    let scheme = r.u16("ecc scheme")?;
    match scheme {
        ALG_NULL => Ok(None),
        ALG_ECDSA | ALG_ECDH | ALG_SM2 | ALG_ECSCHNORR | ALG_ECMQV | ALG_ECDAA => {
            let hash = r.u16("ecc scheme hash")?;
            if !is_hash_alg(hash) {
                return Err(r.bad_value("ecc scheme hash", hash.into()));
            }
            if scheme == ALG_ECDAA {
                r.u16("ecdaa count")?;
            }
            Ok(Some(Scheme { scheme, hash }))
        }
        other => Err(r.bad_value("ecc scheme", other.into())),
    }
}

/// TPMT_KDF_SCHEME (§11.2.3.3).
fn parse_kdf(r: &mut Reader<'_>) -> Result<Option<Scheme>, StructureError> {
    let scheme = r.u16("kdf scheme")?;
    match scheme {
        ALG_NULL => Ok(None),
        ALG_MGF1 | ALG_KDF1_SP800_56A | ALG_KDF2 | ALG_KDF1_SP800_108 => {
            let hash = r.u16("kdf hash")?;
            if !is_hash_alg(hash) {
                return Err(r.bad_value("kdf hash", hash.into()));
            }
            Ok(Some(Scheme { scheme, hash }))
        }
        other => Err(r.bad_value("kdf scheme", other.into())),
    }
}

fn parse_tpmt_public(bytes: &[u8]) -> Result<TpmPublic, StructureError> {
    let mut r = Reader::new(bytes, Structure::Public);
    // TPMT_PUBLIC, Part 2 §12.2.4 Table 191.
    let object_type = r.u16("type")?;
    let name_alg_id = r.u16("nameAlg")?;
    // We only accept Names we can compute; everything we verify uses SHA-256 (AKs) or the EK
    // profile's SHA-256/SHA-384 name algorithms.
    let name_alg =
        HashAlg::from_id(name_alg_id).map_err(|_| r.bad_value("nameAlg", name_alg_id.into()))?;
    let attributes = ObjectAttributes(r.u32("objectAttributes")?);
    let auth_policy = r.tpm2b("authPolicy", MAX_DIGEST)?.to_vec();
    let key = match object_type {
        ALG_RSA => {
            let symmetric = parse_sym_def(&mut r)?;
            let scheme = parse_rsa_scheme(&mut r)?;
            let key_bits = r.u16("rsa keyBits")?;
            let exponent = match r.u32("rsa exponent")? {
                0 => 65537,
                e => e,
            };
            let modulus = r.tpm2b("rsa unique", MAX_RSA_KEY_BYTES)?.to_vec();
            // The unique field of a created key is its modulus, keyBits long (§12.2.3.5).
            if modulus.len() * 8 != usize::from(key_bits) {
                return Err(r.err(StructureErrorKind::Inconsistent(
                    "rsa modulus length differs from keyBits",
                )));
            }
            if exponent % 2 == 0 || exponent < 3 {
                return Err(r.bad_value("rsa exponent", exponent));
            }
            PublicKey::Rsa {
                symmetric,
                scheme,
                key_bits,
                exponent,
                modulus,
            }
        }
        ALG_ECC => {
            let symmetric = parse_sym_def(&mut r)?;
            let scheme = parse_ecc_scheme(&mut r)?;
            let curve = r.u16("curveID")?;
            let kdf = parse_kdf(&mut r)?;
            let x = r.tpm2b("ecc x", MAX_ECC_KEY_BYTES)?.to_vec();
            let y = r.tpm2b("ecc y", MAX_ECC_KEY_BYTES)?.to_vec();
            PublicKey::Ecc {
                symmetric,
                scheme,
                curve,
                kdf,
                x,
                y,
            }
        }
        other => return Err(r.bad_value("type", other.into())),
    };
    r.finish()?;
    Ok(TpmPublic {
        tpmt_bytes: bytes.to_vec(),
        name_alg,
        attributes,
        auth_policy,
        key,
    })
}

/// One TPMS_PCR_SELECTION (Part 2 §10.6.2): a bank and the PCR indices selected in it, in
/// ascending order (bit n of octet i selects PCR 8*i + n, §10.6.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PcrSelection {
    pub hash: u16,
    pub pcrs: Vec<u32>,
}

/// A parsed TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE (Part 2 §10.12.12, §10.12.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmAttest {
    pub qualified_signer: Vec<u8>,
    /// The caller's qualifying data: our nonce.
    pub extra_data: Vec<u8>,
    pub clock: u64,
    pub reset_count: u32,
    pub restart_count: u32,
    pub safe: bool,
    pub firmware_version: u64,
    /// TPMS_QUOTE_INFO.pcrSelect, in the order the TPM hashed them.
    pub pcr_select: Vec<PcrSelection>,
    /// TPMS_QUOTE_INFO.pcrDigest.
    pub pcr_digest: Vec<u8>,
}

impl TpmAttest {
    /// Parses a TPMS_ATTEST (or a TPM2B_ATTEST around one) that must be a quote.
    pub fn parse(bytes: &[u8]) -> Result<Self, StructureError> {
        if bytes.len() > MAX_ATTEST_SIZE + 2 {
            return Err(StructureError {
                structure: Structure::Attest,
                kind: StructureErrorKind::TooLarge {
                    field: "TPMS_ATTEST",
                    size: bytes.len(),
                    max: MAX_ATTEST_SIZE,
                },
            });
        }
        let bytes = strip_tpm2b(bytes).unwrap_or(bytes);
        let mut r = Reader::new(bytes, Structure::Attest);
        // Part 2 §10.12.12 Table 134.
        let magic = r.u32("magic")?;
        if magic != TPM_GENERATED_VALUE {
            return Err(r.bad_value("magic", magic));
        }
        let attest_type = r.u16("type")?;
        if attest_type != TPM_ST_ATTEST_QUOTE {
            return Err(r.bad_value("type", attest_type.into()));
        }
        let qualified_signer = r.tpm2b("qualifiedSigner", MAX_NAME)?.to_vec();
        let extra_data = r.tpm2b("extraData", MAX_DIGEST)?.to_vec();
        // TPMS_CLOCK_INFO, §10.11.1.
        let clock = r.u64("clock")?;
        let reset_count = r.u32("resetCount")?;
        let restart_count = r.u32("restartCount")?;
        let safe = match r.u8("safe")? {
            0 => false,
            1 => true,
            other => return Err(r.bad_value("safe", other.into())),
        };
        let firmware_version = r.u64("firmwareVersion")?;
        // TPMS_QUOTE_INFO, §10.12.4: TPML_PCR_SELECTION then TPM2B_DIGEST.
        let count = r.u32("pcrSelect.count")?;
        if count > MAX_PCR_BANKS {
            return Err(r.err(StructureErrorKind::TooLarge {
                field: "pcrSelect.count",
                size: usize::try_from(count).unwrap_or(usize::MAX),
                max: MAX_PCR_BANKS as usize,
            }));
        }
        let mut pcr_select = Vec::new();
        for _ in 0..count {
            let hash = r.u16("pcrSelect.hash")?;
            if !is_hash_alg(hash) {
                return Err(r.bad_value("pcrSelect.hash", hash.into()));
            }
            let size = usize::from(r.u8("pcrSelect.sizeofSelect")?);
            if size > MAX_PCR_SELECT {
                return Err(r.err(StructureErrorKind::TooLarge {
                    field: "pcrSelect.sizeofSelect",
                    size,
                    max: MAX_PCR_SELECT,
                }));
            }
            let bitmap = r.take("pcrSelect.pcrSelect", size)?;
            let mut pcrs = Vec::new();
            for (octet, bits) in (0u32..).zip(bitmap) {
                for bit in 0..8u32 {
                    if bits & (1 << bit) != 0 {
                        pcrs.push(octet * 8 + bit);
                    }
                }
            }
            if pcr_select.iter().any(|s: &PcrSelection| s.hash == hash) {
                return Err(r.err(StructureErrorKind::Inconsistent(
                    "a pcr bank is selected twice",
                )));
            }
            pcr_select.push(PcrSelection { hash, pcrs });
        }
        let pcr_digest = r.tpm2b("pcrDigest", MAX_DIGEST)?.to_vec();
        r.finish()?;
        Ok(TpmAttest {
            qualified_signer,
            extra_data,
            clock,
            reset_count,
            restart_count,
            safe,
            firmware_version,
            pcr_select,
            pcr_digest,
        })
    }
}

/// A parsed TPMT_SIGNATURE (Part 2 §11.3.4) for the schemes an AK can quote with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TpmSignature {
    /// TPMS_SIGNATURE_RSA (§11.3.1), RSASSA-PKCS1-v1_5.
    RsaSsa { hash: u16, sig: Vec<u8> },
    /// TPMS_SIGNATURE_RSA, RSASSA-PSS.
    RsaPss { hash: u16, sig: Vec<u8> },
    /// TPMS_SIGNATURE_ECC (§11.3.2).
    Ecdsa { hash: u16, r: Vec<u8>, s: Vec<u8> },
}

impl TpmSignature {
    pub fn parse(bytes: &[u8]) -> Result<Self, StructureError> {
        let mut r = Reader::new(bytes, Structure::Signature);
        let sig_alg = r.u16("sigAlg")?;
        let sig = match sig_alg {
            ALG_RSASSA | ALG_RSAPSS => {
                let hash = r.u16("hash")?;
                if !is_hash_alg(hash) {
                    return Err(r.bad_value("hash", hash.into()));
                }
                let sig = r.tpm2b("sig", MAX_RSA_KEY_BYTES)?.to_vec();
                if sig_alg == ALG_RSASSA {
                    TpmSignature::RsaSsa { hash, sig }
                } else {
                    TpmSignature::RsaPss { hash, sig }
                }
            }
            ALG_ECDSA => {
                let hash = r.u16("hash")?;
                if !is_hash_alg(hash) {
                    return Err(r.bad_value("hash", hash.into()));
                }
                let sr = r.tpm2b("signatureR", MAX_ECC_KEY_BYTES)?.to_vec();
                let ss = r.tpm2b("signatureS", MAX_ECC_KEY_BYTES)?.to_vec();
                TpmSignature::Ecdsa { hash, r: sr, s: ss }
            }
            other => return Err(r.bad_value("sigAlg", other.into())),
        };
        r.finish()?;
        Ok(sig)
    }

    pub fn scheme(&self) -> u16 {
        match self {
            TpmSignature::RsaSsa { .. } => ALG_RSASSA,
            TpmSignature::RsaPss { .. } => ALG_RSAPSS,
            TpmSignature::Ecdsa { .. } => ALG_ECDSA,
        }
    }

    pub fn hash(&self) -> u16 {
        match self {
            TpmSignature::RsaSsa { hash, .. }
            | TpmSignature::RsaPss { hash, .. }
            | TpmSignature::Ecdsa { hash, .. } => *hash,
        }
    }
}
