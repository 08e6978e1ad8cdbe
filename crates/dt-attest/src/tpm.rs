//! TPM 2.0 device credentials, server side: pure checks of what a device's TPM produced.
//!
//! **Guarantees.** A device enrolled through [`begin_enrollment`] / [`finish_enrollment`] has
//! shown that
//! 1. its attestation key (AK) is a restricted, non-duplicable, TPM-generated signing key
//!    ([`TpmPublic::check_ak_attributes`]);
//! 2. the AK lives in the same TPM as the endorsement key (EK) it presented: the server ran
//!    TPM2_MakeCredential against the EK for the AK's Name, and only that TPM, with that AK
//!    loaded, can return the secret (TPM 2.0 Library Part 1 §24 "Credential Protection");
//! 3. the AK quoted the SHA-256 PCR bank over the server's fresh nonce, and the reported PCR
//!    values hash to the quoted digest (Part 3 §18.4 TPM2_Quote);
//! 4. when `ekcert_allowed_cas` is set, the EK has a certificate signed by one of those CAs,
//!    so the TPM is genuine hardware from a manufacturer the cluster trusts.
//!
//! Authentication ([`verify_auth_quote`]) then needs only a fresh quote by the enrolled AK.
//!
//! **Does not.** Judge PCR values or event logs against a policy; check revocation of EK
//! certificates; build paths through intermediates that are not listed as allowed CAs.
//! Without `ekcert_allowed_cas`, nothing ties the EK to real hardware: a software TPM
//! enrolls as `tpm_ekpub`/`tpm_ekcert` and policy must decide whether that is acceptable.
//!
//! **Credential id.** `base64url(SHA-256(TPMT_PUBLIC of the AK))` without padding, where
//! TPMT_PUBLIC is the marshalled public area without the TPM2B size prefix: the digest part
//! of the AK's Name for a SHA-256 name algorithm. The client computes the same value from
//! the bytes its TPM returned (`dt-device`, feature `tpm`).
//!
//! Everything here is pure: randomness and time are parameters; no I/O, no global state.

mod credential;
mod ekcert;
mod error;
mod quote;
mod structures;
mod wire;

use std::time::SystemTime;

use base64::Engine as _;
use subtle::ConstantTimeEq;

pub use credential::{FillRandom, MakeCredentialOutput, make_credential};
pub use ekcert::{MAX_EK_CERT_SIZE, parse_ek_cert, validate_allowed_ca_pem};
pub use error::{
    PeerMisbehaved, PolicyDenied, Structure, StructureError, StructureErrorKind, TpmError,
    Unsupported,
};
pub use quote::{PcrValue, TpmQuote, VerifiedQuote};
pub use structures::{
    HashAlg, MAX_ATTEST_SIZE, MAX_PUBLIC_SIZE, ObjectAttributes, PcrSelection, PublicKey, Scheme,
    SymDef, TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE, TpmAttest, TpmPublic, TpmSignature,
};

/// Length of the quote nonce (qualifying data) the server picks (DESIGN §4: 20 bytes).
pub const NONCE_LEN: usize = 20;
/// Length of the secret wrapped by MakeCredential. It must not exceed the EK name digest
/// (SHA-256 for every EK template we accept).
pub const ACTIVATION_SECRET_LEN: usize = 32;

/// How far a TPM credential's origin is established (stored on the device record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TpmAttestationType {
    /// Only an EK public key: the AK is bound to *some* EK, which nothing vouches for.
    EkPub,
    /// An EK certificate that certifies the EK, not checked against any CA (none configured).
    EkCert,
    /// An EK certificate signed by a CA in `ekcert_allowed_cas`.
    EkCertTrusted,
}

impl TpmAttestationType {
    /// The wire/storage name (`dt_types::AttestationType` serde names).
    pub fn as_str(self) -> &'static str {
        match self {
            TpmAttestationType::EkPub => "tpm_ekpub",
            TpmAttestationType::EkCert => "tpm_ekcert",
            TpmAttestationType::EkCertTrusted => "tpm_ekcert_trusted",
        }
    }
}

/// What a device sends to start a TPM enrollment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmEnrollRequest {
    /// The EK's public area: TPM2B_PUBLIC or TPMT_PUBLIC bytes. MakeCredential needs its
    /// name algorithm and symmetric definition, which a certificate does not carry.
    pub ek_public: Vec<u8>,
    /// The EK certificate (DER) from the TPM's NV storage, when it has one.
    pub ek_cert: Option<Vec<u8>>,
    /// The AK's public area: TPM2B_PUBLIC or TPMT_PUBLIC bytes.
    pub ak_public: Vec<u8>,
}

/// What the server sends back: the encrypted credential for the device's TPM to activate,
/// and the nonce to quote over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmEnrollChallenge {
    pub credential: MakeCredentialOutput,
    pub nonce: [u8; NONCE_LEN],
}

/// Server state between the challenge and the device's answer. Holds the expected secret:
/// `Debug` does not print it, and it is wiped on drop.
#[derive(Clone)]
pub struct EnrollChallengeState {
    ak: TpmPublic,
    secret: [u8; ACTIVATION_SECRET_LEN],
    nonce: [u8; NONCE_LEN],
    attestation_type: TpmAttestationType,
    ek_cert_serial: Option<String>,
    ek_cert: Option<Vec<u8>>,
}

impl std::fmt::Debug for EnrollChallengeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollChallengeState")
            .field("credential_id", &credential_id_of(&self.ak))
            .field("secret", &"<secret>")
            .field("attestation_type", &self.attestation_type)
            .field("ek_cert_serial", &self.ek_cert_serial)
            .finish_non_exhaustive()
    }
}

impl Drop for EnrollChallengeState {
    fn drop(&mut self) {
        self.secret.fill(0);
    }
}

impl EnrollChallengeState {
    /// The credential id the device must have announced (see the module docs).
    pub fn credential_id(&self) -> String {
        credential_id_of(&self.ak)
    }

    pub fn attestation_type(&self) -> TpmAttestationType {
        self.attestation_type
    }
}

/// A TPM credential that passed enrollment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedTpmCredential {
    /// `base64url(SHA-256(TPMT_PUBLIC of the AK))`, no padding.
    pub credential_id: String,
    pub attestation_type: TpmAttestationType,
    /// EK certificate serial number, lowercase hex, when a certificate was sent.
    pub ek_cert_serial: Option<String>,
    /// The EK certificate (DER) that passed, to store for [`recheck_ek_cert`].
    pub ek_cert: Option<Vec<u8>>,
    /// The AK's TPM2B_PUBLIC, to store and pass to [`verify_auth_quote`] later.
    pub ak_public: Vec<u8>,
    /// The enrollment quote's PCR values and clock.
    pub quote: VerifiedQuote,
}

fn credential_id_of(ak: &TpmPublic) -> String {
    use sha2::Digest;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&ak.tpmt_bytes))
}

/// The credential id of an AK public area (TPM2B_PUBLIC or TPMT_PUBLIC bytes).
pub fn credential_id(ak_public: &[u8]) -> Result<String, TpmError> {
    Ok(credential_id_of(&TpmPublic::parse(ak_public)?))
}

fn parse_ak(ak_public: &[u8]) -> Result<TpmPublic, TpmError> {
    let ak = TpmPublic::parse(ak_public)?;
    // The credential id is defined over SHA-256; MakeCredential binds to the Name.
    if ak.name_alg != HashAlg::Sha256 {
        return Err(Unsupported::Algorithm {
            what: "attestation key name algorithm",
            value: ak.name_alg.id(),
        }
        .into());
    }
    ak.check_ak_attributes()
        .map_err(PeerMisbehaved::AkAttributes)?;
    quote::check_ak_supported(&ak)?;
    Ok(ak)
}

/// Starts a TPM enrollment: checks the AK and EK, classifies the EK evidence against
/// `allowed_cas` (the cluster's `ekcert_allowed_cas`, PEM), and makes the credential.
///
/// Decision table (DESIGN §4):
///
/// | allowed_cas | EK certificate | result |
/// |---|---|---|
/// | empty | none | `tpm_ekpub` |
/// | empty | certifies this EK | `tpm_ekcert` |
/// | set | none | refused: [`PolicyDenied::EkCertRequired`] |
/// | set | signed by an allowed CA, valid at `now` | `tpm_ekcert_trusted` |
/// | set | anything else | refused: [`PolicyDenied::EkCertUntrusted`] |
///
/// A certificate that does not parse, or certifies another key, is refused in every case.
pub fn begin_enrollment(
    req: &TpmEnrollRequest,
    allowed_cas: &[String],
    now: SystemTime,
    rng: FillRandom<'_>,
) -> Result<(EnrollChallengeState, TpmEnrollChallenge), TpmError> {
    let ak = parse_ak(&req.ak_public)?;
    let ek = TpmPublic::parse(&req.ek_public)?;
    ek.check_ek_attributes()
        .map_err(PeerMisbehaved::EkAttributes)?;

    let mut anchors = Vec::new();
    for pem in allowed_cas {
        anchors.extend(ekcert::anchors_from_pem(pem).map_err(TpmError::Config)?);
    }
    let (attestation_type, ek_cert_serial) = match &req.ek_cert {
        None if anchors.is_empty() => (TpmAttestationType::EkPub, None),
        None => return Err(PolicyDenied::EkCertRequired.into()),
        Some(der) => {
            let info = ekcert::check_ek_cert(der, &ek, &anchors, now)?;
            let kind = if info.trusted {
                TpmAttestationType::EkCertTrusted
            } else {
                TpmAttestationType::EkCert
            };
            (kind, Some(info.serial_hex))
        }
    };

    let mut secret = [0u8; ACTIVATION_SECRET_LEN];
    rng(&mut secret);
    let mut nonce = [0u8; NONCE_LEN];
    rng(&mut nonce);
    let credential = make_credential(&ek, &ak.name(), &secret, rng)?;
    Ok((
        EnrollChallengeState {
            ak,
            secret,
            nonce,
            attestation_type,
            ek_cert_serial,
            ek_cert: req.ek_cert.clone(),
        },
        TpmEnrollChallenge { credential, nonce },
    ))
}

/// Finishes a TPM enrollment with the secret the device's TPM activated and its quote over
/// the challenge nonce. Consumes the state: a challenge is answered at most once.
pub fn finish_enrollment(
    state: EnrollChallengeState,
    activated_secret: &[u8],
    quote: &TpmQuote,
) -> Result<VerifiedTpmCredential, TpmError> {
    // Part 1 §24: only the TPM holding the EK, with an object of the AK's Name loaded, can
    // have decrypted the credential. Compared in constant time (length is public).
    if !bool::from(state.secret.as_slice().ct_eq(activated_secret)) {
        return Err(PeerMisbehaved::WrongActivationSecret.into());
    }
    let verified = quote::verify_quote(&state.ak, &state.nonce, quote)?;
    Ok(VerifiedTpmCredential {
        credential_id: credential_id_of(&state.ak),
        attestation_type: state.attestation_type,
        ek_cert_serial: state.ek_cert_serial.clone(),
        ek_cert: state.ek_cert.clone(),
        ak_public: state.ak.to_tpm2b(),
        quote: verified,
    })
}

/// Re-checks an enrolled device's EK certificate (DER, as stored at enrollment) against
/// today's `allowed_cas` (PEM): the same refusals as [`begin_enrollment`] except the EK key
/// match, which enrollment established. No allowed CAs: nothing to check. No certificate
/// while CAs are listed: [`PolicyDenied::EkCertRequired`].
pub fn recheck_ek_cert(
    ek_cert: Option<&[u8]>,
    allowed_cas: &[String],
    now: SystemTime,
) -> Result<(), TpmError> {
    let mut anchors = Vec::new();
    for pem in allowed_cas {
        anchors.extend(ekcert::anchors_from_pem(pem).map_err(TpmError::Config)?);
    }
    match ek_cert {
        _ if anchors.is_empty() => Ok(()),
        None => Err(PolicyDenied::EkCertRequired.into()),
        Some(der) => ekcert::recheck_ek_cert(der, &anchors, now),
    }
}

/// Verifies an authentication quote by an enrolled AK (`ak_public` as stored at enrollment)
/// over the server's fresh `nonce`.
pub fn verify_auth_quote(
    ak_public: &[u8],
    nonce: &[u8],
    quote: &TpmQuote,
) -> Result<VerifiedQuote, TpmError> {
    let ak = parse_ak(ak_public)?;
    quote::verify_quote(&ak, nonce, quote)
}

#[cfg(test)]
mod tests;
