//! Software device credentials: a P-256 key in a file, for labs, tests and machines with
//! neither a TPM nor a Secure Enclave. The server accepts them only when
//! `device_trust.allow_software_credentials` is set.
//!
//! Layout of the key directory (`$DTSH_DEVICE_HOME`, default `~/.dtsh/device`, mode 0700):
//! - `key.pk8` — the PKCS#8 DER private key, mode 0600, created with that mode (never
//!   briefly readable by others) through a temporary file renamed into place;
//! - `credential.json` — `{id, attestation_type, public_key_der, created}`; the id is a
//!   UUID v4.
//!
//! A key file readable by group or others, or a directory writable by others, is refused
//! with the command that fixes it. What a software key can't promise: that the key never
//! leaves the machine — anyone who can read the file (root, backups) can copy the device.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use dt_types::CredentialId;
use dt_types::device::AttestationType;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::DeviceError;
use crate::keys::{CredentialInfo, DeviceKeys};

/// Environment variable naming the device key directory.
pub const DEVICE_HOME_ENV: &str = "DTSH_DEVICE_HOME";
const KEY_FILE: &str = "key.pk8";
const CREDENTIAL_FILE: &str = "credential.json";
/// Largest key or credential file we read.
const MAX_FILE_LEN: u64 = 64 * 1024;

/// The device key directory: `$DTSH_DEVICE_HOME`, else `$HOME/.dtsh/device`. `var` reads
/// the environment (`|k| std::env::var_os(k)` in production).
pub fn resolve_device_home(var: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf, DeviceError> {
    if let Some(dir) = var(DEVICE_HOME_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    match var("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".dtsh").join("device")),
        None => Err(DeviceError::NoHome),
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialFile {
    /// Checked on load: a file whose id is not one is corrupt.
    id: CredentialId,
    attestation_type: AttestationType,
    /// SPKI DER, base64.
    public_key_der: String,
    #[serde(with = "time::serde::rfc3339")]
    created: OffsetDateTime,
}

/// A software credential store in one directory.
#[derive(Clone, Debug)]
pub struct SoftwareKeys {
    dir: PathBuf,
}

impl SoftwareKeys {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SoftwareKeys { dir: dir.into() }
    }

    /// The store in the directory [`resolve_device_home`] names for this process.
    pub fn from_env() -> Result<Self, DeviceError> {
        Ok(SoftwareKeys::new(resolve_device_home(|k| {
            std::env::var_os(k)
        })?))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn key_path(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }

    fn credential_path(&self) -> PathBuf {
        self.dir.join(CREDENTIAL_FILE)
    }

    fn corrupt(&self, path: PathBuf, why: impl Into<String>) -> DeviceError {
        DeviceError::Corrupt {
            path,
            dir: self.dir.clone(),
            why: why.into(),
        }
    }

    fn check_dir(&self) -> Result<(), DeviceError> {
        let meta = fs::metadata(&self.dir).map_err(DeviceError::io(&self.dir))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o002 != 0 {
            return Err(DeviceError::InsecureKeyDir {
                path: self.dir.clone(),
                mode,
            });
        }
        Ok(())
    }

    fn read_limited(&self, path: &Path) -> Result<Option<Vec<u8>>, DeviceError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(DeviceError::io(path)(e)),
        };
        let meta = file.metadata().map_err(DeviceError::io(path))?;
        if meta.len() > MAX_FILE_LEN {
            return Err(self.corrupt(path.to_path_buf(), "file is unexpectedly large"));
        }
        let mut bytes = Vec::new();
        use std::io::Read as _;
        file.take(MAX_FILE_LEN)
            .read_to_end(&mut bytes)
            .map_err(DeviceError::io(path))?;
        Ok(Some(bytes))
    }

    /// Loads the key pair, refusing a key file others can read.
    fn load_key(&self) -> Result<EcdsaKeyPair, DeviceError> {
        let path = self.key_path();
        match fs::metadata(&path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(DeviceError::InsecureKeyFile { path, mode });
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(self.corrupt(path, "the private key file is missing"));
            }
            Err(e) => return Err(DeviceError::io(&path)(e)),
        }
        let pkcs8 = self
            .read_limited(&path)?
            .ok_or_else(|| self.corrupt(path.clone(), "the private key file is missing"))?;
        EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            &pkcs8,
            &SystemRandom::new(),
        )
        .map_err(|_| self.corrupt(path, "not a P-256 PKCS#8 private key"))
    }

    fn load(&self) -> Result<Option<(CredentialInfo, EcdsaKeyPair)>, DeviceError> {
        let cred_path = self.credential_path();
        let Some(bytes) = self.read_limited(&cred_path)? else {
            return Ok(None);
        };
        self.check_dir()?;
        let file: CredentialFile = serde_json::from_slice(&bytes)
            .map_err(|e| self.corrupt(cred_path.clone(), e.to_string()))?;
        let public_key_der = STANDARD
            .decode(&file.public_key_der)
            .map_err(|e| self.corrupt(cred_path.clone(), format!("public_key_der: {e}")))?;
        if file.attestation_type != AttestationType::Software {
            return Err(self.corrupt(cred_path, "not a software credential"));
        }
        let key = self.load_key()?;
        let actual = dt_attest::p256::spki_from_uncompressed_point(key.public_key().as_ref())
            .map_err(|_| DeviceError::Crypto("the private key has an invalid public key"))?;
        if actual != public_key_der {
            return Err(self.corrupt(cred_path, "the public key does not match key.pk8"));
        }
        let info = CredentialInfo {
            id: file.id,
            public_key_der,
            attestation_type: AttestationType::Software,
        };
        Ok(Some((info, key)))
    }

    fn ensure_dir(&self) -> Result<(), DeviceError> {
        match fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
        {
            Ok(()) => self.check_dir(),
            Err(e) => Err(DeviceError::io(&self.dir)(e)),
        }
    }
}

/// Writes `bytes` to `path` atomically with `mode`: a new temporary file in the same
/// directory, created with the mode (so it is never readable by others), synced, renamed
/// over `path`; then the directory is synced so the rename survives a crash.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DeviceError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(DeviceError::io(&tmp))?;
        f.write_all(bytes).map_err(DeviceError::io(&tmp))?;
        f.sync_all().map_err(DeviceError::io(&tmp))?;
        fs::rename(&tmp, path).map_err(DeviceError::io(path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(DeviceError::io(dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

impl DeviceKeys for SoftwareKeys {
    fn credential(&self) -> Result<Option<CredentialInfo>, DeviceError> {
        Ok(self.load()?.map(|(info, _)| info))
    }

    fn create_credential(&self) -> Result<CredentialInfo, DeviceError> {
        self.ensure_dir()?;
        if fs::symlink_metadata(self.credential_path()).is_ok() {
            return Err(DeviceError::CredentialExists {
                dir: self.dir.clone(),
            });
        }
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|_| DeviceError::Crypto("could not generate a P-256 key"))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| DeviceError::Crypto("could not load the new key"))?;
        let public_key_der =
            dt_attest::p256::spki_from_uncompressed_point(key.public_key().as_ref())
                .map_err(|_| DeviceError::Crypto("the new key has an invalid public key"))?;
        let info = CredentialInfo {
            id: CredentialId::random(),
            public_key_der,
            attestation_type: AttestationType::Software,
        };
        let file = CredentialFile {
            id: info.id.clone(),
            attestation_type: info.attestation_type,
            public_key_der: STANDARD.encode(&info.public_key_der),
            created: OffsetDateTime::now_utc(),
        };
        let json = serde_json::to_vec_pretty(&file)
            .map_err(|_| DeviceError::Crypto("could not encode the credential file"))?;
        // Key first: a credential.json always has its key beside it.
        write_atomic(&self.key_path(), pkcs8.as_ref(), 0o600)?;
        write_atomic(&self.credential_path(), &json, 0o600)?;
        Ok(info)
    }

    fn sign_challenge(&self, challenge: &[u8]) -> Result<Vec<u8>, DeviceError> {
        let Some((_, key)) = self.load()? else {
            return Err(DeviceError::NoCredential {
                dir: self.dir.clone(),
            });
        };
        let sig = key
            .sign(&SystemRandom::new(), challenge)
            .map_err(|_| DeviceError::Crypto("signing failed"))?;
        Ok(sig.as_ref().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dt_ceremony::ProofRequest;
    use dt_ceremony::messages::{EnrollPayload, P256KeyStorage};
    use dt_ceremony::proof::Proof;

    fn store() -> (tempfile::TempDir, SoftwareKeys) {
        let tmp = tempfile::tempdir().unwrap();
        let keys = SoftwareKeys::new(tmp.path().join("device"));
        (tmp, keys)
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn create_then_load_then_sign() {
        let (_tmp, keys) = store();
        assert_eq!(keys.credential().unwrap(), None);
        let created = keys.create_credential().unwrap();
        assert_eq!(created.attestation_type, AttestationType::Software);
        assert!(uuid::Uuid::parse_str(created.id.as_str()).is_ok());
        assert_eq!(keys.credential().unwrap(), Some(created.clone()));
        assert_eq!(mode(&keys.key_path()), 0o600);
        assert_eq!(mode(&keys.credential_path()), 0o600);
        assert_eq!(mode(keys.dir()), 0o700);
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(keys.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");

        let challenge = [5u8; 32];
        let sig = keys.sign_challenge(&challenge).unwrap();
        dt_attest::p256::verify_challenge_signature(&created.public_key_der, &challenge, &sig)
            .unwrap();
        // Through the ceremony-level entry point too.
        let Proof::P256Signature(sig) =
            keys.prove(ProofRequest::P256Challenge(&challenge)).unwrap()
        else {
            panic!("not a signature")
        };
        dt_attest::p256::verify_challenge_signature(&created.public_key_der, &challenge, &sig)
            .unwrap();
        assert_eq!(
            keys.enroll_payload(&created).unwrap(),
            EnrollPayload::P256 {
                public_key_der: created.public_key_der.clone(),
                storage: P256KeyStorage::Software
            }
        );
    }

    #[test]
    fn create_refuses_to_overwrite_and_credential_or_create_reuses() {
        let (_tmp, keys) = store();
        let (first, created) = keys.credential_or_create().unwrap();
        assert!(created);
        assert!(matches!(
            keys.create_credential(),
            Err(DeviceError::CredentialExists { .. })
        ));
        let (again, created) = keys.credential_or_create().unwrap();
        assert!(!created);
        assert_eq!(first, again);
    }

    #[test]
    fn a_key_readable_by_others_is_refused_with_the_fix() {
        let (_tmp, keys) = store();
        keys.create_credential().unwrap();
        fs::set_permissions(keys.key_path(), fs::Permissions::from_mode(0o644)).unwrap();
        let err = keys.sign_challenge(b"x").unwrap_err();
        assert!(
            matches!(err, DeviceError::InsecureKeyFile { mode: 0o644, .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("chmod 600") && msg.contains("key.pk8"),
            "{msg}"
        );
        fs::set_permissions(keys.key_path(), fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            keys.credential(),
            Err(DeviceError::InsecureKeyFile { .. })
        ));
        fs::set_permissions(keys.key_path(), fs::Permissions::from_mode(0o600)).unwrap();
        keys.sign_challenge(b"x").unwrap();
    }

    #[test]
    fn a_world_writable_directory_is_refused() {
        let (_tmp, keys) = store();
        keys.create_credential().unwrap();
        fs::set_permissions(keys.dir(), fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            keys.credential(),
            Err(DeviceError::InsecureKeyDir { .. })
        ));
    }

    #[test]
    fn damaged_files_are_reported() {
        let (_tmp, keys) = store();
        keys.create_credential().unwrap();
        let json = fs::read_to_string(keys.credential_path()).unwrap();

        // Another key in key.pk8.
        let other = SoftwareKeys::new(keys.dir().join("other"));
        other.create_credential().unwrap();
        fs::copy(other.key_path(), keys.key_path()).unwrap();
        let err = keys.credential().unwrap_err();
        assert!(
            matches!(&err, DeviceError::Corrupt { why, .. } if why.contains("does not match")),
            "{err:?}"
        );

        // Garbage JSON.
        fs::write(keys.credential_path(), "{").unwrap();
        assert!(matches!(
            keys.credential(),
            Err(DeviceError::Corrupt { .. })
        ));

        // A credential id that is not one (the file keeps the plain-string shape).
        let mut doc: serde_json::Value = serde_json::from_str(&json).unwrap();
        doc["id"] = "not an id".into();
        fs::write(keys.credential_path(), doc.to_string()).unwrap();
        let err = keys.credential().unwrap_err();
        assert!(
            matches!(&err, DeviceError::Corrupt { why, .. } if why.contains("credential id")),
            "{err:?}"
        );

        // Missing key.
        fs::write(keys.credential_path(), &json).unwrap();
        fs::remove_file(keys.key_path()).unwrap();
        let err = keys.credential().unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn signing_without_a_credential_says_so() {
        let (_tmp, keys) = store();
        assert!(matches!(
            keys.sign_challenge(b"x"),
            Err(DeviceError::NoCredential { .. })
        ));
    }

    #[test]
    fn device_home_resolution() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| OsString::from(*v))
            }
        };
        assert_eq!(
            resolve_device_home(env(&[
                ("DTSH_DEVICE_HOME", "/srv/dev"),
                ("HOME", "/home/a")
            ]))
            .unwrap(),
            PathBuf::from("/srv/dev")
        );
        assert_eq!(
            resolve_device_home(env(&[("HOME", "/home/a")])).unwrap(),
            PathBuf::from("/home/a/.dtsh/device")
        );
        assert_eq!(
            resolve_device_home(env(&[("DTSH_DEVICE_HOME", ""), ("HOME", "/home/a")])).unwrap(),
            PathBuf::from("/home/a/.dtsh/device")
        );
        assert!(matches!(
            resolve_device_home(env(&[])),
            Err(DeviceError::NoHome)
        ));
    }

    #[test]
    fn tpm_requests_are_refused_by_a_software_key() {
        let (_tmp, keys) = store();
        keys.create_credential().unwrap();
        let req = dt_ceremony::tpm::TpmAuthenticateChallenge {
            attestation_nonce: vec![0; 20],
        };
        assert!(matches!(
            keys.prove(ProofRequest::TpmAuthenticate(&req)),
            Err(DeviceError::UnsupportedProof(_))
        ));
    }
}
