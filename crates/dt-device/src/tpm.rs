//! TPM 2.0 device credentials, client side (cargo feature `tpm`; links libtss2 via tss-esapi).
//!
//! **What it does.** Keeps one attestation key (AK) per device, created once inside the TPM
//! and stored on disk only as a TPM-wrapped blob (useless without this TPM); reports the
//! endorsement key (EK) public area and certificate; runs TPM2_ActivateCredential for the
//! server's MakeCredential blob; quotes the SHA-256 PCR bank over the server's nonce.
//!
//! **Key hierarchy.** The AK is a child of the EK (TCG "TPM 2.0 Keys for Device Identity and
//! Attestation" §5, the layout keylime and tpm2-tools `tpm2_createak` use). The EK is a
//! primary key recreated from the standard TCG EK template (EK Credential Profile §2.2.1.4,
//! template L-1 for RSA-2048, L-2 for ECC P-256) on every operation: same seed, same
//! template, same key, so it matches the EK certificate in NV and the AK blob loads under it.
//! No SRK is needed, which matters on swtpm (about 3 transient object slots).
//!
//! EK authorization: the TCG EK templates have no userWithAuth and policy A
//! (`PolicySecret(TPM_RH_ENDORSEMENT)`), so every use of the EK as parent (Create, Load) and
//! as the decryption key of ActivateCredential runs in a policy session that first satisfies
//! PolicySecret with the (empty) endorsement hierarchy authorization.
//!
//! **Handles.** No resource manager is assumed: every transient object and session is flushed
//! as soon as the operation ends, on error paths too. A TPM context is opened per operation,
//! never shared globally.
//!
//! **TCTI.** `DTSH_TPM_TCTI` (e.g. `swtpm:host=127.0.0.1,port=2321`), else
//! `device:/dev/tpmrm0` when it exists (the kernel resource manager).
//!
//! **Not done here.** Deciding whether the EK is trusted or the PCR values acceptable: that is
//! the server's job (`dt-attest`). No salted sessions: the activated secret crosses the TPM
//! bus in clear (it is single-use and already bound to this TPM).

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use tss_esapi::Context;
use tss_esapi::abstraction::{AsymmetricAlgorithmSelection, DefaultKey, ak, ek, nv};
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{
    AuthHandle, KeyHandle, NvIndexTpmHandle, ObjectHandle, SessionHandle, TpmHandle,
};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, SignatureSchemeAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::NvAuth;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Data, EncryptedSecret, IdObject, PcrSelectionListBuilder, PcrSlot, Private, Public,
    SignatureScheme, SymmetricDefinition,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};

/// Environment variable naming the TCTI to use.
pub const TCTI_ENV: &str = "DTSH_TPM_TCTI";
/// The kernel's TPM resource manager device.
pub const DEFAULT_DEVICE: &str = "/dev/tpmrm0";
/// The firmware event log (TCG PC Client Platform Firmware Profile), readable by root only on
/// most distributions.
pub const EVENT_LOG_PATH: &str = "/sys/kernel/security/tpm0/binary_bios_measurements";
/// Environment variable naming another event log file to send (labs and tests; `dtsh`
/// reads it). Unlike the kernel's log, a named file must be readable.
pub const EVENT_LOG_ENV: &str = "DTSH_TPM_EVENT_LOG";
/// PCRs quoted by default: the firmware and boot loader measurements (PC Client PFP §3.3.4).
pub const DEFAULT_QUOTE_PCRS: [u8; 8] = [0, 1, 2, 3, 4, 5, 6, 7];

/// EK certificate NV indices (TCG EK Credential Profile §2.2.1.5, low range).
const NV_EK_CERT_RSA2048: u32 = 0x01C0_0002;
const NV_EK_CERT_ECC_P256: u32 = 0x01C0_000A;

const AK_PUBLIC_FILE: &str = "ak.pub";
const AK_PRIVATE_FILE: &str = "ak.priv";
const EK_ALG_FILE: &str = "ek.alg";

/// Which EK to use. RSA-2048 is preferred: it is what nearly every TPM has a certificate for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EkAlgorithm {
    /// EK template L-1, certificate at NV 0x01C00002.
    Rsa2048,
    /// EK template L-2, certificate at NV 0x01C0000A.
    EccP256,
}

impl EkAlgorithm {
    fn selection(self) -> AsymmetricAlgorithmSelection {
        match self {
            EkAlgorithm::Rsa2048 => AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
            EkAlgorithm::EccP256 => AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
        }
    }
    fn cert_index(self) -> u32 {
        match self {
            EkAlgorithm::Rsa2048 => NV_EK_CERT_RSA2048,
            EkAlgorithm::EccP256 => NV_EK_CERT_ECC_P256,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            EkAlgorithm::Rsa2048 => "rsa2048",
            EkAlgorithm::EccP256 => "ecc-p256",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "rsa2048" => Some(EkAlgorithm::Rsa2048),
            "ecc-p256" => Some(EkAlgorithm::EccP256),
            _ => None,
        }
    }
}

/// The attestation key's algorithm. ECC P-256 is the default: hardware TPMs generate it in
/// milliseconds where RSA key generation can take many seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AkAlgorithm {
    /// ECDSA P-256 with SHA-256.
    #[default]
    EccP256,
    /// RSASSA-PKCS1-v1_5 RSA-2048 with SHA-256.
    Rsa2048,
}

/// Errors of the TPM key store. TSS failures name the call that failed.
#[derive(Debug, thiserror::Error)]
pub enum TpmDeviceError {
    #[error(
        "no tpm found: {DEFAULT_DEVICE} does not exist; set {TCTI_ENV} (for example swtpm:host=127.0.0.1,port=2321) to use another tpm"
    )]
    NoTpm,
    #[error(
        "permission denied opening {path}: add your user to the `tss` group (sudo usermod -aG tss \"$USER\") and log in again"
    )]
    PermissionDenied { path: String },
    #[error("invalid tpm tcti {tcti:?}: {source}")]
    BadTcti {
        tcti: String,
        #[source]
        source: tss_esapi::Error,
    },
    #[error("{call} failed: {source}")]
    Tss {
        call: &'static str,
        #[source]
        source: tss_esapi::Error,
    },
    #[error("{call} returned an unexpected result: {reason}")]
    Unexpected {
        call: &'static str,
        reason: &'static str,
    },
    #[error("attestation key store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no attestation key in {0}: enroll this device first")]
    NoAttestationKey(PathBuf),
    #[error(
        "attestation key files in {path} are corrupt ({reason}): remove them and enroll the device again"
    )]
    CorruptKeyStore { path: PathBuf, reason: String },
    #[error("invalid data from the server: {0}")]
    BadServerInput(&'static str),
}

fn tss(call: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmDeviceError {
    move |source| TpmDeviceError::Tss { call, source }
}

/// What enrollment sends to the server (the TPM payload of `EnrollInit`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmEnrollEvidence {
    /// TPM2B_PUBLIC of the EK.
    pub ek_public: Vec<u8>,
    /// The EK certificate (DER) from NV, when the TPM has one.
    pub ek_cert: Option<Vec<u8>>,
    /// TPM2B_PUBLIC of the AK.
    pub ak_public: Vec<u8>,
    /// `base64url(SHA-256(TPMT_PUBLIC of the AK))`, no padding (same as `dt-attest`).
    pub credential_id: dt_types::CredentialId,
}

/// One PCR of the SHA-256 bank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PcrReading {
    pub index: u32,
    pub digest: Vec<u8>,
}

/// A quote and what the server needs to check it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmQuoteEvidence {
    /// Marshalled TPMS_ATTEST.
    pub attest: Vec<u8>,
    /// Marshalled TPMT_SIGNATURE.
    pub signature: Vec<u8>,
    /// The quoted SHA-256 PCRs, ascending.
    pub pcrs: Vec<PcrReading>,
    /// The firmware event log, when readable.
    pub event_log: Option<Vec<u8>>,
}

/// The credential id of an AK from its TPMT_PUBLIC bytes (see `dt_attest::tpm`).
pub fn credential_id_from_tpmt(tpmt_public: &[u8]) -> dt_types::CredentialId {
    dt_types::CredentialId::of_tpm_key(tpmt_public)
}

fn tpm2b(tpmt: &[u8]) -> Result<Vec<u8>, TpmDeviceError> {
    let size = u16::try_from(tpmt.len())
        .map_err(|_| TpmDeviceError::BadServerInput("public area too large"))?;
    let mut out = size.to_be_bytes().to_vec();
    out.extend_from_slice(tpmt);
    Ok(out)
}

/// Resolves the TCTI: `DTSH_TPM_TCTI`, else the kernel resource manager when present.
pub fn tcti_from_env() -> Result<String, TpmDeviceError> {
    match std::env::var(TCTI_ENV) {
        Ok(tcti) if !tcti.trim().is_empty() => Ok(tcti),
        _ if Path::new(DEFAULT_DEVICE).exists() => Ok(format!("device:{DEFAULT_DEVICE}")),
        _ => Err(TpmDeviceError::NoTpm),
    }
}

/// The TPM key store of one device: a TCTI and the directory holding the wrapped AK.
#[derive(Clone, Debug)]
pub struct TpmKeyStore {
    tcti: String,
    key_dir: PathBuf,
    ek_alg: Option<EkAlgorithm>,
    ak_alg: AkAlgorithm,
    pcrs: Vec<u8>,
    /// A named event log file (must be readable); `None`: the kernel's, when readable.
    event_log: Option<PathBuf>,
}

impl TpmKeyStore {
    /// A key store on `tcti` keeping its AK blob in `key_dir` (created 0700 when missing).
    /// Nothing touches the TPM until an operation runs.
    pub fn new(tcti: impl Into<String>, key_dir: impl Into<PathBuf>) -> Self {
        Self {
            tcti: tcti.into(),
            key_dir: key_dir.into(),
            ek_alg: None,
            ak_alg: AkAlgorithm::default(),
            pcrs: DEFAULT_QUOTE_PCRS.to_vec(),
            event_log: None,
        }
    }

    /// A key store on the TCTI from [`tcti_from_env`].
    pub fn from_env(key_dir: impl Into<PathBuf>) -> Result<Self, TpmDeviceError> {
        Ok(Self::new(tcti_from_env()?, key_dir))
    }

    /// Forces the EK algorithm (default: RSA-2048 when the TPM supports it, else ECC P-256).
    /// Only used when the AK is created; afterwards the stored choice wins.
    pub fn with_ek_algorithm(mut self, alg: EkAlgorithm) -> Self {
        self.ek_alg = Some(alg);
        self
    }

    /// The AK algorithm used when the AK is created.
    pub fn with_ak_algorithm(mut self, alg: AkAlgorithm) -> Self {
        self.ak_alg = alg;
        self
    }

    /// The PCRs to quote (SHA-256 bank).
    pub fn with_quote_pcrs(mut self, pcrs: &[u8]) -> Self {
        self.pcrs = pcrs.to_vec();
        self
    }

    /// Sends this file as the firmware event log instead of the kernel's
    /// ([`EVENT_LOG_PATH`]); a quote fails when it can't be read.
    pub fn with_event_log_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.event_log = Some(path.into());
        self
    }

    /// The event log to send with a quote: the named file, else the kernel's when readable
    /// (it is root-only on most distributions, so its absence is no error).
    fn read_event_log(&self) -> Result<Option<Vec<u8>>, TpmDeviceError> {
        match &self.event_log {
            None => Ok(fs::read(EVENT_LOG_PATH).ok()),
            Some(path) => fs::read(path)
                .map(Some)
                .map_err(|source| TpmDeviceError::Io {
                    path: path.clone(),
                    source,
                }),
        }
    }

    fn context(&self) -> Result<Context, TpmDeviceError> {
        if let Some(path) = self.tcti.strip_prefix("device:") {
            let path = path.split(',').next().unwrap_or(path);
            let path = if path.is_empty() { "/dev/tpm0" } else { path };
            // Opening the device ourselves first turns EACCES into advice instead of a TSS
            // error code.
            if let Err(e) = fs::OpenOptions::new().read(true).write(true).open(path) {
                return Err(match e.kind() {
                    std::io::ErrorKind::PermissionDenied => TpmDeviceError::PermissionDenied {
                        path: path.to_owned(),
                    },
                    std::io::ErrorKind::NotFound => TpmDeviceError::NoTpm,
                    _ => TpmDeviceError::Io {
                        path: PathBuf::from(path),
                        source: e,
                    },
                });
            }
        }
        let conf =
            TctiNameConf::from_str(&self.tcti).map_err(|source| TpmDeviceError::BadTcti {
                tcti: self.tcti.clone(),
                source,
            })?;
        Context::new(conf).map_err(tss("Esys_Initialize"))
    }

    fn path(&self, file: &str) -> PathBuf {
        self.key_dir.join(file)
    }

    fn read_file(&self, file: &str) -> Result<Option<Vec<u8>>, TpmDeviceError> {
        let path = self.path(file);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(TpmDeviceError::Io { path, source }),
        }
    }

    /// Writes `bytes` to `file` with mode 0600, atomically (temporary file, then rename).
    fn write_file(&self, file: &str, bytes: &[u8]) -> Result<(), TpmDeviceError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TpmDeviceError::Io { path, source }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.key_dir)
            .map_err(io(&self.key_dir))?;
        let tmp = self.path(&format!(".{file}.tmp"));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        let dest = self.path(file);
        fs::rename(&tmp, &dest).map_err(io(&dest))
    }

    /// The stored AK: (EK algorithm, public, private), or None when not created yet.
    fn stored_ak(&self) -> Result<Option<(EkAlgorithm, Public, Private)>, TpmDeviceError> {
        let (Some(alg), Some(public), Some(private)) = (
            self.read_file(EK_ALG_FILE)?,
            self.read_file(AK_PUBLIC_FILE)?,
            self.read_file(AK_PRIVATE_FILE)?,
        ) else {
            return Ok(None);
        };
        let corrupt = |reason: &str| TpmDeviceError::CorruptKeyStore {
            path: self.key_dir.clone(),
            reason: reason.to_owned(),
        };
        let alg = EkAlgorithm::parse(&String::from_utf8_lossy(&alg))
            .ok_or_else(|| corrupt("unknown ek algorithm"))?;
        let public =
            Public::unmarshall(&public).map_err(|_| corrupt("ak.pub is not a TPMT_PUBLIC"))?;
        let private = Private::try_from(private)
            .map_err(|_| corrupt("ak.priv is not a TPM2B_PRIVATE buffer"))?;
        Ok(Some((alg, public, private)))
    }

    fn require_ak(&self) -> Result<(EkAlgorithm, Public, Private), TpmDeviceError> {
        self.stored_ak()?
            .ok_or_else(|| TpmDeviceError::NoAttestationKey(self.key_dir.clone()))
    }

    /// The credential id of the stored AK, without touching the TPM.
    pub fn credential_id(&self) -> Result<dt_types::CredentialId, TpmDeviceError> {
        let (_, public, _) = self.require_ak()?;
        let tpmt = public
            .marshall()
            .map_err(tss("Tss2_MU_TPMT_PUBLIC_Marshal"))?;
        Ok(credential_id_from_tpmt(&tpmt))
    }

    /// Whether an AK has been created in `key_dir`.
    pub fn has_attestation_key(&self) -> Result<bool, TpmDeviceError> {
        Ok(self.stored_ak()?.is_some())
    }

    /// Evidence for enrollment: EK public area and certificate, AK public area and credential
    /// id. Creates the AK on first use.
    pub fn enrollment_evidence(&self) -> Result<TpmEnrollEvidence, TpmDeviceError> {
        let mut ctx = self.context()?;
        let stored = self.stored_ak()?;
        let ek_alg = match (&stored, self.ek_alg) {
            (Some((alg, _, _)), _) => *alg,
            (None, Some(alg)) => alg,
            (None, None) => preferred_ek_algorithm(&mut ctx)?,
        };
        let ek_handle = create_ek(&mut ctx, ek_alg)?;
        let result = (|| {
            let (ek_public, _, _) = ctx.read_public(ek_handle).map_err(tss("Esys_ReadPublic"))?;
            let ak_public = match stored {
                Some((_, public, _)) => public,
                None => {
                    let (alg, sign) = match self.ak_alg {
                        AkAlgorithm::EccP256 => (
                            AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
                            SignatureSchemeAlgorithm::EcDsa,
                        ),
                        AkAlgorithm::Rsa2048 => (
                            AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
                            SignatureSchemeAlgorithm::RsaSsa,
                        ),
                    };
                    let created = ak::create_ak_2(
                        &mut ctx,
                        ek_handle,
                        HashingAlgorithm::Sha256,
                        alg,
                        sign,
                        None,
                        DefaultKey,
                    )
                    .map_err(tss(
                        "Esys_Create (attestation key under the endorsement key)",
                    ))?;
                    let tpmt = created
                        .out_public
                        .marshall()
                        .map_err(tss("Tss2_MU_TPMT_PUBLIC_Marshal"))?;
                    self.write_file(AK_PRIVATE_FILE, created.out_private.value())?;
                    self.write_file(AK_PUBLIC_FILE, &tpmt)?;
                    self.write_file(EK_ALG_FILE, ek_alg.as_str().as_bytes())?;
                    created.out_public
                }
            };
            let ek_cert = read_ek_cert(&mut ctx, ek_alg)?;
            let ek_tpmt = ek_public
                .marshall()
                .map_err(tss("Tss2_MU_TPMT_PUBLIC_Marshal"))?;
            let ak_tpmt = ak_public
                .marshall()
                .map_err(tss("Tss2_MU_TPMT_PUBLIC_Marshal"))?;
            Ok(TpmEnrollEvidence {
                ek_public: tpm2b(&ek_tpmt)?,
                ek_cert,
                credential_id: credential_id_from_tpmt(&ak_tpmt),
                ak_public: tpm2b(&ak_tpmt)?,
            })
        })();
        flush_then(&mut ctx, ek_handle.into(), result)
    }

    /// TPM2_ActivateCredential (Part 3 §12.5) of the server's MakeCredential output:
    /// `credential_blob` is the TPM2B_ID_OBJECT buffer and `encrypted_secret` the
    /// TPM2B_ENCRYPTED_SECRET buffer (both without their size prefix). Returns the secret.
    pub fn activate_credential(
        &self,
        credential_blob: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Vec<u8>, TpmDeviceError> {
        let id_object = IdObject::try_from(credential_blob.to_vec())
            .map_err(|_| TpmDeviceError::BadServerInput("credential blob too large"))?;
        let secret = EncryptedSecret::try_from(encrypted_secret.to_vec())
            .map_err(|_| TpmDeviceError::BadServerInput("encrypted secret too large"))?;
        let (ek_alg, public, private) = self.require_ak()?;
        let mut ctx = self.context()?;
        let ek_handle = create_ek(&mut ctx, ek_alg)?;
        let result = with_ak(&mut ctx, ek_handle, public, private, |ctx, ak_handle| {
            with_ek_policy_session(ctx, |ctx, policy| {
                // Part 3 §12.5: activateHandle (the AK) needs ADMIN role authorization, which
                // for a key without adminWithPolicy is its (empty) authValue; keyHandle (the
                // EK) needs USER role: the policy session.
                ctx.execute_with_sessions(
                    (Some(AuthSession::Password), Some(policy), None),
                    |ctx| ctx.activate_credential(ak_handle, ek_handle, id_object, secret),
                )
                .map_err(tss("Esys_ActivateCredential"))
            })
        });
        let digest = flush_then(&mut ctx, ek_handle.into(), result)?;
        Ok(digest.value().to_vec())
    }

    /// TPM2_Quote (Part 3 §18.4) of the SHA-256 PCR bank with `nonce` as qualifying data,
    /// signed by the AK, plus the PCR values and the event log when readable.
    pub fn quote(&self, nonce: &[u8]) -> Result<TpmQuoteEvidence, TpmDeviceError> {
        let qualifying = Data::try_from(nonce.to_vec())
            .map_err(|_| TpmDeviceError::BadServerInput("nonce longer than 64 bytes"))?;
        let slots = self
            .pcrs
            .iter()
            .map(|&i| {
                PcrSlot::try_from(1u32.checked_shl(i.into()).unwrap_or(0))
                    .map_err(|_| TpmDeviceError::BadServerInput("pcr index out of range"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let selection = PcrSelectionListBuilder::new()
            .with_selection(HashingAlgorithm::Sha256, &slots)
            .build()
            .map_err(tss("TPML_PCR_SELECTION (building the selection)"))?;
        let (ek_alg, public, private) = self.require_ak()?;
        let mut ctx = self.context()?;
        let ek_handle = create_ek(&mut ctx, ek_alg)?;
        let result = with_ak(&mut ctx, ek_handle, public, private, |ctx, ak_handle| {
            ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.quote(
                    ak_handle,
                    qualifying,
                    SignatureScheme::Null,
                    selection.clone(),
                )
            })
            .map_err(tss("Esys_Quote"))
        });
        let (attest, signature) = flush_then(&mut ctx, ek_handle.into(), result)?;
        let mut indices: Vec<u32> = self.pcrs.iter().map(|&i| u32::from(i)).collect();
        indices.sort_unstable();
        indices.dedup();
        let pcrs = read_pcrs(&mut ctx, &indices)?;
        Ok(TpmQuoteEvidence {
            attest: attest
                .marshall()
                .map_err(tss("Tss2_MU_TPMS_ATTEST_Marshal"))?,
            signature: signature
                .marshall()
                .map_err(tss("Tss2_MU_TPMT_SIGNATURE_Marshal"))?,
            pcrs,
            event_log: self.read_event_log()?,
        })
    }
}

/// Runs `f`, then flushes `handle` whatever happened; `f`'s error wins over a flush error.
fn flush_then<T>(
    ctx: &mut Context,
    handle: ObjectHandle,
    result: Result<T, TpmDeviceError>,
) -> Result<T, TpmDeviceError> {
    let flushed = ctx.flush_context(handle).map_err(tss("Esys_FlushContext"));
    let value = result?;
    flushed?;
    Ok(value)
}

/// RSA-2048 when the TPM can make that EK, else ECC P-256 (TPM2_GetCapability on algorithms
/// would also work; trying the RSA template is what matters).
fn preferred_ek_algorithm(ctx: &mut Context) -> Result<EkAlgorithm, TpmDeviceError> {
    match create_ek(ctx, EkAlgorithm::Rsa2048) {
        Ok(handle) => {
            ctx.flush_context(handle.into())
                .map_err(tss("Esys_FlushContext"))?;
            Ok(EkAlgorithm::Rsa2048)
        }
        Err(e) => {
            tracing::debug!(error = %e, "no rsa-2048 endorsement key, using ecc p-256");
            Ok(EkAlgorithm::EccP256)
        }
    }
}

/// TPM2_CreatePrimary in the endorsement hierarchy with the TCG EK template.
fn create_ek(ctx: &mut Context, alg: EkAlgorithm) -> Result<KeyHandle, TpmDeviceError> {
    ek::create_ek_object_2(ctx, alg.selection(), DefaultKey)
        .map_err(tss("Esys_CreatePrimary (endorsement key)"))
}

/// Reads the EK certificate from its NV index, `None` when the index is not defined.
fn read_ek_cert(ctx: &mut Context, alg: EkAlgorithm) -> Result<Option<Vec<u8>>, TpmDeviceError> {
    let index = alg.cert_index();
    let defined = nv::list(ctx)
        .map_err(tss("Esys_GetCapability (nv indices)"))?
        .iter()
        .any(|(public, _)| u32::from(public.nv_index()) == index);
    if !defined {
        return Ok(None);
    }
    let nv_index = NvIndexTpmHandle::new(index).map_err(tss("NvIndexTpmHandle"))?;
    let object = ctx
        .execute_without_session(|ctx| ctx.tr_from_tpm_public(TpmHandle::NvIndex(nv_index)))
        .map_err(tss("Esys_TR_FromTPMPublic (ek certificate nv index)"))?;
    let auth = NvAuth::NvIndex(object.into());
    // nv::read_full closes the ESYS resource of the index when done (ESYS hands out one
    // ESYS_TR per TPM handle, so `object` is closed with it).
    let cert = ctx
        .execute_with_nullauth_session(|ctx| nv::read_full(ctx, auth, nv_index))
        .map_err(tss("Esys_NV_Read (ek certificate)"))?;
    // Some TPMs pad the NV index after the DER certificate; keep exactly one DER element.
    Ok(Some(trim_der(cert)))
}

/// Truncates `bytes` to the length of the DER element it starts with, when that is known.
fn trim_der(mut bytes: Vec<u8>) -> Vec<u8> {
    let len = match bytes.get(..4) {
        Some([0x30, 0x82, hi, lo]) => Some(4 + (usize::from(*hi) << 8 | usize::from(*lo))),
        Some([0x30, 0x81, n, _]) => Some(3 + usize::from(*n)),
        _ => None,
    };
    if let Some(len) = len.filter(|&len| len <= bytes.len()) {
        bytes.truncate(len);
    }
    bytes
}

/// Loads the AK under the EK, runs `f`, flushes the AK.
fn with_ak<T>(
    ctx: &mut Context,
    ek_handle: KeyHandle,
    public: Public,
    private: Private,
    f: impl FnOnce(&mut Context, KeyHandle) -> Result<T, TpmDeviceError>,
) -> Result<T, TpmDeviceError> {
    let ak_handle = ak::load_ak(ctx, ek_handle, None, private, public)
        .map_err(tss("Esys_Load (attestation key)"))?;
    let result = f(ctx, ak_handle);
    flush_then(ctx, ak_handle.into(), result)
}

/// Starts a policy session satisfying the EK's policy A: `PolicySecret(TPM_RH_ENDORSEMENT)`
/// (TCG EK Credential Profile §2.2.1.4, Table 3 footnote / B.6), runs `f`, flushes it.
fn with_ek_policy_session<T>(
    ctx: &mut Context,
    f: impl FnOnce(&mut Context, AuthSession) -> Result<T, TpmDeviceError>,
) -> Result<T, TpmDeviceError> {
    let session = ctx
        .start_auth_session(
            None,
            None,
            None,
            SessionType::Policy,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )
        .map_err(tss("Esys_StartAuthSession (policy)"))?
        .ok_or(TpmDeviceError::Unexpected {
            call: "Esys_StartAuthSession (policy)",
            reason: "no session handle returned",
        })?;
    let result = (|| {
        let policy = PolicySession::try_from(session).map_err(tss("PolicySession"))?;
        ctx.execute_with_nullauth_session(|ctx| {
            ctx.policy_secret(
                policy,
                AuthHandle::Endorsement,
                Default::default(),
                Default::default(),
                Default::default(),
                None,
            )
        })
        .map_err(tss("Esys_PolicySecret (endorsement hierarchy)"))?;
        f(ctx, session)
    })();
    flush_then(ctx, SessionHandle::from(session).into(), result)
}

/// Reads the SHA-256 PCRs `indices` (ascending, unique). TPM2_PCR_Read returns at most 8
/// digests per call (Part 3 §22.4), so it loops until every index is read.
fn read_pcrs(ctx: &mut Context, indices: &[u32]) -> Result<Vec<PcrReading>, TpmDeviceError> {
    let mut out: Vec<PcrReading> = Vec::new();
    let mut remaining: Vec<u32> = indices.to_vec();
    while !remaining.is_empty() {
        let slots = remaining
            .iter()
            .map(|&i| PcrSlot::try_from(1u32.checked_shl(i).unwrap_or(0)).map_err(tss("PcrSlot")))
            .collect::<Result<Vec<_>, _>>()?;
        let selection = PcrSelectionListBuilder::new()
            .with_selection(HashingAlgorithm::Sha256, &slots)
            .build()
            .map_err(tss("TPML_PCR_SELECTION (building the selection)"))?;
        let (_, read, digests) = ctx
            .execute_without_session(|ctx| ctx.pcr_read(selection))
            .map_err(tss("Esys_PCR_Read"))?;
        let mut got: Vec<u32> = read
            .get_selections()
            .iter()
            .filter(|s| s.hashing_algorithm() == HashingAlgorithm::Sha256)
            .flat_map(|s| s.selected())
            .map(|slot| u32::from(slot).trailing_zeros())
            .collect();
        got.sort_unstable();
        if got.is_empty() || got.len() != digests.len() {
            return Err(TpmDeviceError::Unexpected {
                call: "Esys_PCR_Read",
                reason: "no sha-256 pcr values returned: activate the sha-256 pcr bank",
            });
        }
        for (index, digest) in got.iter().zip(digests.value()) {
            out.push(PcrReading {
                index: *index,
                digest: digest.value().to_vec(),
            });
        }
        remaining.retain(|i| !got.contains(i));
    }
    out.sort_by_key(|p| p.index);
    Ok(out)
}
