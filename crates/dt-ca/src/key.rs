//! ECDSA P-256 keys: the CA's signing key, the client's key, and the conversions between the
//! forms SSH, X.509 and rustls want.
//!
//! Signing and verification go through ring (fast, constant-time); the RustCrypto types of
//! ssh-key are only used to *encode* keys and certificates.

use std::fmt;

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    self as ring_sig, ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair,
    KeyPair as _,
};
use ssh_key::private::{EcdsaKeypair, EcdsaPrivateKey, KeypairData};
use ssh_key::public::{EcdsaPublicKey, KeyData};
use ssh_key::{Algorithm, EcdsaCurve, LineEnding};

use crate::asn1;
use crate::error::{CaError, Result};
use crate::pem;

/// DER prefix of a P-256 SubjectPublicKeyInfo (RFC 5480): `SEQUENCE { SEQUENCE {
/// id-ecPublicKey, prime256v1 }, BIT STRING (0 unused bits) ... }`; the 65-byte uncompressed
/// point follows.
const SPKI_P256_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// Length of an uncompressed SEC1 P-256 point (`04 || X || Y`).
pub(crate) const POINT_LEN: usize = 65;

/// The SubjectPublicKeyInfo DER of an uncompressed P-256 point.
pub(crate) fn spki_from_point(point: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SPKI_P256_PREFIX.len() + point.len());
    out.extend_from_slice(&SPKI_P256_PREFIX);
    out.extend_from_slice(point);
    out
}

/// The uncompressed point inside a P-256 SubjectPublicKeyInfo; anything else is refused.
pub(crate) fn point_from_spki(spki: &[u8]) -> Result<&[u8]> {
    match spki.strip_prefix(&SPKI_P256_PREFIX[..]) {
        Some(point) if point.len() == POINT_LEN && point[0] == 0x04 => Ok(point),
        _ => Err(CaError::UnsupportedKey(
            "subject public key info is not an uncompressed p-256 key".into(),
        )),
    }
}

/// An SSH public key blob for an uncompressed P-256 point.
pub(crate) fn ssh_key_data_from_point(point: &[u8]) -> Result<KeyData> {
    let key = EcdsaPublicKey::from_sec1_bytes(point)
        .map_err(|e| CaError::UnsupportedKey(format!("bad p-256 point: {e}")))?;
    Ok(KeyData::Ecdsa(key))
}

/// The uncompressed P-256 point of an SSH public key; anything else is refused.
pub(crate) fn point_from_ssh_key(key: &KeyData) -> Result<&[u8]> {
    match key {
        KeyData::Ecdsa(EcdsaPublicKey::NistP256(point))
            if point.as_bytes().len() == POINT_LEN && point.as_bytes()[0] == 0x04 =>
        {
            Ok(point.as_bytes())
        }
        other => Err(CaError::UnsupportedKey(format!(
            "ssh key of type {}",
            other.algorithm()
        ))),
    }
}

/// Verifies a fixed-size (`r || s`) ECDSA P-256 SHA-256 signature with ring.
pub(crate) fn verify_fixed(point: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    ring_sig::UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
        .verify(msg, sig)
        .is_ok()
}

/// Verifies an ASN.1 DER ECDSA P-256 SHA-256 signature (as in X.509) with ring.
pub(crate) fn verify_asn1(point: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    ring_sig::UnparsedPublicKey::new(&ring_sig::ECDSA_P256_SHA256_ASN1, point)
        .verify(msg, sig)
        .is_ok()
}

/// An ECDSA P-256 key pair held by ring, with its PKCS#8 encoding kept for storage.
pub(crate) struct P256Key {
    pair: EcdsaKeyPair,
    pkcs8: Vec<u8>,
    rng: SystemRandom,
}

impl P256Key {
    pub(crate) fn generate() -> Result<Self> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| CaError::Crypto("generating a p-256 key failed"))?;
        Self::from_pkcs8_der(doc.as_ref())
    }

    pub(crate) fn from_pkcs8_der(der: &[u8]) -> Result<Self> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| CaError::malformed("pkcs#8 p-256 key", e.to_string()))?;
        Ok(Self {
            pair,
            pkcs8: der.to_vec(),
            rng,
        })
    }

    pub(crate) fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The uncompressed public point (65 bytes).
    pub(crate) fn point(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// Signs with SHA-256; returns `r || s`, 32 bytes each.
    pub(crate) fn sign_fixed(&self, msg: &[u8]) -> Result<Vec<u8>> {
        self.pair
            .sign(&self.rng, msg)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| CaError::Crypto("ecdsa p-256 signing failed"))
    }

    /// Signs with SHA-256; returns the ASN.1 `Ecdsa-Sig-Value` (RFC 5480 §2.2 / RFC 3279).
    pub(crate) fn sign_asn1(&self, msg: &[u8]) -> Result<Vec<u8>> {
        let fixed = self.sign_fixed(msg)?;
        let (r, s) = fixed.split_at(fixed.len() / 2);
        Ok(asn1::sequence(&[&asn1::uint(r), &asn1::uint(s)]))
    }

    /// Signs with SHA-256 and wraps the result as an OpenSSH `ecdsa-sha2-nistp256` signature
    /// (RFC 5656 §3.1.2: `mpint r || mpint s`).
    pub(crate) fn sign_ssh(&self, msg: &[u8]) -> Result<ssh_key::Signature> {
        let fixed = self.sign_fixed(msg)?;
        let (r, s) = fixed.split_at(fixed.len() / 2);
        let mut blob = Vec::with_capacity(2 * (4 + 33));
        push_mpint(&mut blob, r);
        push_mpint(&mut blob, s);
        ssh_key::Signature::new(
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256,
            },
            blob,
        )
        .map_err(|_| CaError::Crypto("encoding an ssh signature failed"))
    }

    pub(crate) fn random_bytes<const N: usize>(&self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        self.rng
            .fill(&mut out)
            .map_err(|_| CaError::Crypto("system random number generator failed"))?;
        Ok(out)
    }

    /// The private scalar, read from the PKCS#8 document ring accepted.
    fn private_scalar(&self) -> Result<[u8; 32]> {
        pkcs8_private_scalar(&self.pkcs8)
            .ok_or_else(|| CaError::malformed("pkcs#8 p-256 key", "no private key octets"))
    }
}

/// `string mpint` as in RFC 4251 §5: minimal two's complement, positive.
fn push_mpint(out: &mut Vec<u8>, magnitude: &[u8]) {
    let skip = magnitude.iter().take_while(|b| **b == 0).count();
    let m = &magnitude[skip..];
    let pad = m.first().is_some_and(|b| b & 0x80 != 0);
    let len = m.len() + usize::from(pad);
    // At most 33 bytes here.
    out.extend_from_slice(&(len as u32).to_be_bytes());
    if pad {
        out.push(0);
    }
    out.extend_from_slice(m);
}

/// Turns an OpenSSH `ecdsa-sha2-nistp256` signature blob (`mpint r || mpint s`) into the fixed
/// 64-byte form ring verifies. `None` for anything malformed.
pub(crate) fn ssh_sig_to_fixed(blob: &[u8]) -> Option<[u8; 64]> {
    fn read_mpint(input: &[u8]) -> Option<(&[u8], &[u8])> {
        let (len, rest) = input.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        if rest.len() < len {
            return None;
        }
        let (value, rest) = rest.split_at(len);
        if value.first().is_some_and(|b| b & 0x80 != 0) {
            return None; // negative
        }
        let skip = value.iter().take_while(|b| **b == 0).count();
        Some((&value[skip..], rest))
    }
    let (r, rest) = read_mpint(blob)?;
    let (s, rest) = read_mpint(rest)?;
    if !rest.is_empty() || r.len() > 32 || s.len() > 32 {
        return None;
    }
    let mut out = [0u8; 64];
    out[32 - r.len()..32].copy_from_slice(r);
    out[64 - s.len()..].copy_from_slice(s);
    Some(out)
}

/// The 32-byte private scalar of a P-256 PKCS#8 `PrivateKeyInfo` (RFC 5208) wrapping an
/// `ECPrivateKey` (RFC 5915).
fn pkcs8_private_scalar(der: &[u8]) -> Option<[u8; 32]> {
    let (pki, _) = asn1::expect_tlv(der, asn1::TAG_SEQUENCE)?;
    let (_version, rest) = asn1::expect_tlv(pki, asn1::TAG_INTEGER)?;
    let (_algorithm, rest) = asn1::expect_tlv(rest, asn1::TAG_SEQUENCE)?;
    let (wrapped, _) = asn1::expect_tlv(rest, asn1::TAG_OCTET_STRING)?;
    let (ec_private_key, _) = asn1::expect_tlv(wrapped, asn1::TAG_SEQUENCE)?;
    let (_version, rest) = asn1::expect_tlv(ec_private_key, asn1::TAG_INTEGER)?;
    let (d, _) = asn1::expect_tlv(rest, asn1::TAG_OCTET_STRING)?;
    if d.len() > 32 {
        return None;
    }
    let mut out = [0u8; 32];
    out[32 - d.len()..].copy_from_slice(d);
    Some(out)
}

/// Adapter so ssh-key's certificate builder signs through ring.
pub(crate) struct SshSigner<'a> {
    key: &'a P256Key,
    public: KeyData,
}

impl<'a> SshSigner<'a> {
    pub(crate) fn new(key: &'a P256Key, public: KeyData) -> Self {
        Self { key, public }
    }
}

impl signature::Signer<ssh_key::Signature> for SshSigner<'_> {
    fn try_sign(&self, msg: &[u8]) -> Result<ssh_key::Signature, signature::Error> {
        self.key.sign_ssh(msg).map_err(|_| signature::Error::new())
    }
}

impl From<&SshSigner<'_>> for KeyData {
    fn from(signer: &SshSigner<'_>) -> Self {
        signer.public.clone()
    }
}

/// A client's ECDSA P-256 key: one key serves the user's SSH certificate and X.509 client
/// certificate. It is generated and kept on the client; only its public halves
/// ([`ClientKey::ssh_public_key`], [`ClientKey::spki_der`]) are sent for issuance.
pub struct ClientKey {
    key: P256Key,
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientKey")
            .field("public", &hex::encode(self.key.point()))
            .field("private", &"<secret>")
            .finish()
    }
}

impl ClientKey {
    /// A fresh random P-256 key.
    pub fn generate() -> Result<Self> {
        Ok(Self {
            key: P256Key::generate()?,
        })
    }

    /// Loads an unencrypted PKCS#8 (RFC 5208) P-256 key, as ring or `openssl genpkey` write it.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self> {
        Ok(Self {
            key: P256Key::from_pkcs8_der(der)?,
        })
    }

    /// Loads a `-----BEGIN PRIVATE KEY-----` block.
    pub fn from_pkcs8_pem(pem_text: &str) -> Result<Self> {
        Self::from_pkcs8_der(&pem::parse_pem(pem_text, pem::PRIVATE_KEY)?)
    }

    /// Loads the OpenSSH private key text [`ClientKey::ssh_private_key_openssh`] wrote (a
    /// web session keeps its key this way), so the same key can also serve TLS.
    pub fn from_ssh_private_key_openssh(text: &str) -> Result<Self> {
        let key = ssh_key::PrivateKey::from_openssh(text)
            .map_err(|e| CaError::malformed("ssh private key", e.to_string()))?;
        let KeypairData::Ecdsa(EcdsaKeypair::NistP256 { public, private }) = key.key_data() else {
            return Err(CaError::UnsupportedKey(
                "the ssh private key is not a p-256 key".into(),
            ));
        };
        // PKCS#8 (RFC 5208) around an RFC 5915 ECPrivateKey, as ring writes it: version 0,
        // { id-ecPublicKey, prime256v1 }, OCTET STRING { SEQUENCE { 1, d, [1] public } }.
        let algorithm = &SPKI_P256_PREFIX[2..2 + 0x15];
        let ec_private_key = asn1::sequence(&[
            &asn1::small_uint(1),
            &asn1::octet_string(private.as_slice()),
            &asn1::cons(0xa1, &[&asn1::bit_string_octets(public.as_bytes())]),
        ]);
        let der = asn1::sequence(&[
            &asn1::small_uint(0),
            algorithm,
            &asn1::octet_string(&ec_private_key),
        ]);
        Self::from_pkcs8_der(&der)
    }

    /// The PKCS#8 DER, as rustls wants it (`PrivateKeyDer::Pkcs8`). Secret.
    pub fn pkcs8_der(&self) -> &[u8] {
        self.key.pkcs8_der()
    }

    /// The PKCS#8 key as a `PRIVATE KEY` PEM block. Secret.
    pub fn to_pkcs8_pem(&self) -> String {
        pem::to_pem(pem::PRIVATE_KEY, self.key.pkcs8_der())
    }

    /// The uncompressed SEC1 public point (65 bytes).
    pub fn public_point(&self) -> &[u8] {
        self.key.point()
    }

    pub(crate) fn p256(&self) -> &P256Key {
        &self.key
    }

    /// The SubjectPublicKeyInfo DER, what X.509 issuance takes.
    pub fn spki_der(&self) -> Vec<u8> {
        spki_from_point(self.key.point())
    }

    /// The SSH public key, what SSH certificate issuance takes.
    pub fn ssh_public_key(&self) -> Result<ssh_key::PublicKey> {
        Ok(ssh_key::PublicKey::new(
            ssh_key_data_from_point(self.key.point())?,
            "",
        ))
    }

    /// The key in OpenSSH private key format (unencrypted), so that `ssh -i FILE` works with
    /// the certificate saved next to it as `FILE-cert.pub`. Secret.
    ///
    /// The key carries the comment [`OPENSSH_KEY_COMMENT`], which keeps the private section
    /// padded: with an empty comment the section of a P-256 key is 152 bytes, a multiple of
    /// the 8-byte block, whenever the scalar's high bit is clear (about half of all keys), and
    /// paramiko (Ansible and many Python tools) misreads such a file, which has no padding.
    pub fn ssh_private_key_openssh(&self) -> Result<String> {
        let KeyData::Ecdsa(EcdsaPublicKey::NistP256(public)) =
            ssh_key_data_from_point(self.key.point())?
        else {
            return Err(CaError::UnsupportedKey("not a p-256 point".into()));
        };
        let private = EcdsaPrivateKey::from(self.key.private_scalar()?);
        let pair = EcdsaKeypair::NistP256 { public, private };
        let key = ssh_key::PrivateKey::new(KeypairData::Ecdsa(pair), OPENSSH_KEY_COMMENT)
            .map_err(|e| CaError::malformed("ssh private key", e.to_string()))?;
        let text = key
            .to_openssh(LineEnding::LF)
            .map_err(|e| CaError::malformed("ssh private key", e.to_string()))?;
        Ok(text.as_str().to_owned())
    }

    /// Signs `msg` with ECDSA P-256 SHA-256; returns the ASN.1 DER signature (the form device
    /// challenges and TLS use).
    pub fn sign_asn1(&self, msg: &[u8]) -> Result<Vec<u8>> {
        self.key.sign_asn1(msg)
    }
}

/// The comment of the OpenSSH private keys devtrust writes. Its length (4) makes the private
/// section 156 or 157 bytes long, so it always ends in 3 or 4 bytes of padding
/// (PROTOCOL.key: the section is padded to the cipher's block size, 8 when unencrypted).
pub const OPENSSH_KEY_COMMENT: &str = "dtsh";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_private_key_text_loads_back_as_the_same_key() {
        let key = ClientKey::generate().unwrap();
        let text = key.ssh_private_key_openssh().unwrap();
        let back = ClientKey::from_ssh_private_key_openssh(&text).unwrap();
        assert_eq!(back.public_point(), key.public_point());
        let sig = back.sign_asn1(b"m").unwrap();
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            key.public_point(),
        )
        .verify(b"m", &sig)
        .unwrap();
        assert!(ClientKey::from_ssh_private_key_openssh("not a key").is_err());
    }

    #[test]
    fn spki_round_trip_and_refusals() {
        let key = ClientKey::generate().unwrap();
        let spki = key.spki_der();
        assert_eq!(spki.len(), 91);
        assert_eq!(point_from_spki(&spki).unwrap(), key.public_point());
        assert!(point_from_spki(&spki[..90]).is_err());
        let mut compressed = spki.clone();
        compressed[26] = 0x02;
        assert!(point_from_spki(&compressed).is_err());
        let mut other_curve = spki.clone();
        other_curve[22] = 0x08; // not prime256v1
        assert!(point_from_spki(&other_curve).is_err());
    }

    #[test]
    fn spki_matches_x509_parser() {
        use x509_parser::prelude::FromDer as _;
        use x509_parser::x509::SubjectPublicKeyInfo;
        let key = ClientKey::generate().unwrap();
        let spki = key.spki_der();
        let (rest, parsed) = SubjectPublicKeyInfo::from_der(&spki).unwrap();
        assert!(rest.is_empty());
        assert_eq!(parsed.subject_public_key.data.as_ref(), key.public_point());
        assert_eq!(
            parsed.algorithm.algorithm,
            x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        );
    }

    #[test]
    fn asn1_signature_verifies_with_ring() {
        let key = ClientKey::generate().unwrap();
        let sig = key.sign_asn1(b"hello").unwrap();
        assert!(verify_asn1(key.public_point(), b"hello", &sig));
        assert!(!verify_asn1(key.public_point(), b"hellO", &sig));
    }

    #[test]
    fn ssh_signature_converts_back_to_fixed() {
        let key = P256Key::generate().unwrap();
        for _ in 0..32 {
            let sig = key.sign_ssh(b"msg").unwrap();
            let fixed = ssh_sig_to_fixed(sig.as_bytes()).unwrap();
            assert!(verify_fixed(key.point(), b"msg", &fixed));
        }
        assert!(ssh_sig_to_fixed(&[0, 0, 0, 1, 0x80, 0, 0, 0, 0]).is_none()); // negative r
        assert!(ssh_sig_to_fixed(&[0, 0, 0, 0, 0, 0, 0, 0, 9]).is_none()); // trailing
    }

    #[test]
    fn mpints_are_minimal() {
        let mut out = Vec::new();
        push_mpint(&mut out, &[0, 0, 0x7f]);
        assert_eq!(out, [0, 0, 0, 1, 0x7f]);
        out.clear();
        push_mpint(&mut out, &[0x80, 1]);
        assert_eq!(out, [0, 0, 0, 3, 0, 0x80, 1]);
    }

    #[test]
    fn pkcs8_pem_round_trip_keeps_the_key() {
        let key = ClientKey::generate().unwrap();
        let pem_text = key.to_pkcs8_pem();
        let again = ClientKey::from_pkcs8_pem(&pem_text).unwrap();
        assert_eq!(again.public_point(), key.public_point());
        assert!(
            ClientKey::from_pkcs8_pem(
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
            )
            .is_err()
        );
        assert!(!format!("{key:?}").contains(&hex::encode(key.pkcs8_der())));
    }

    #[test]
    fn loads_an_openssl_generated_key() {
        let Some(out) = crate::testutil::run(
            "openssl",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ],
        ) else {
            return;
        };
        assert!(out.status.success());
        let pem_text = String::from_utf8(out.stdout).unwrap();
        let key = ClientKey::from_pkcs8_pem(&pem_text).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(&path, &pem_text).unwrap();
        let spki = crate::testutil::run(
            "openssl",
            &[
                "pkey",
                "-pubout",
                "-outform",
                "DER",
                "-in",
                path.to_str().unwrap(),
            ],
        )
        .unwrap();
        assert!(spki.status.success());
        assert_eq!(spki.stdout, key.spki_der());
        // The private scalar is found in openssl's layout too (it carries [0] parameters):
        // a signature by the OpenSSH private key verifies under the public key.
        let text = key.ssh_private_key_openssh().unwrap();
        let parsed = ssh_key::PrivateKey::from_openssh(&text).unwrap();
        let sig = parsed
            .sign("test", ssh_key::HashAlg::Sha256, b"message")
            .unwrap();
        key.ssh_public_key()
            .unwrap()
            .verify("test", b"message", &sig)
            .unwrap();
    }

    #[test]
    fn openssh_private_key_parses_back_to_the_same_key() {
        let key = ClientKey::generate().unwrap();
        let text = key.ssh_private_key_openssh().unwrap();
        assert!(text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        let parsed = ssh_key::PrivateKey::from_openssh(&text).unwrap();
        assert_eq!(
            parsed.public_key().key_data(),
            key.ssh_public_key().unwrap().key_data()
        );
    }

    /// Bytes of padding at the end of the private section of an unencrypted OpenSSH
    /// private key file (PROTOCOL.key), found by walking the structure.
    fn private_section_padding(text: &str) -> usize {
        use base64::Engine as _;
        let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        let blob = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        let magic = b"openssh-key-v1\0";
        assert!(blob.starts_with(magic));
        let mut at = magic.len();
        let u32_at =
            |b: &[u8], i: usize| u32::from_be_bytes(b[i..i + 4].try_into().unwrap()) as usize;
        let string = |b: &[u8], at: &mut usize| {
            let n = u32_at(b, *at);
            let s = b[*at + 4..*at + 4 + n].to_vec();
            *at += 4 + n;
            s
        };
        assert_eq!(string(&blob, &mut at), b"none"); // cipher
        assert_eq!(string(&blob, &mut at), b"none"); // kdf
        string(&blob, &mut at); // kdf options
        assert_eq!(u32_at(&blob, at), 1);
        at += 4;
        string(&blob, &mut at); // public key
        let private = string(&blob, &mut at);
        assert_eq!(private.len() % 8, 0);
        let mut p = 8; // two check integers
        for _ in 0..5 {
            // key type, curve, public point, private scalar, comment
            string(&private, &mut p);
        }
        let padding = &private[p..];
        assert!(
            padding
                .iter()
                .enumerate()
                .all(|(i, b)| *b as usize == i + 1)
        );
        padding.len()
    }

    #[test]
    fn openssh_private_keys_always_end_in_padding() {
        // Half of all P-256 keys have a 32-byte scalar without a sign byte; 64 keys miss both
        // lengths with probability 2^-63.
        let mut lengths = std::collections::BTreeSet::new();
        for _ in 0..64 {
            let text = ClientKey::generate()
                .unwrap()
                .ssh_private_key_openssh()
                .unwrap();
            lengths.insert(private_section_padding(&text));
        }
        assert!(lengths.iter().all(|n| *n > 0), "{lengths:?}");
        assert_eq!(lengths.len(), 2, "both scalar lengths seen: {lengths:?}");
    }
}
