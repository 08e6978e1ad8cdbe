//! Errors of the device layer. Messages are lowercase and say what to do next; they are
//! printed by `dtsh` as they are.

use std::path::PathBuf;

/// What went wrong on this device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot find where to keep the device credential: set DTSH_DEVICE_HOME (or HOME) to a \
         directory"
    )]
    NoHome,
    #[error(
        "{} is readable by group or others (mode {mode:03o}): run `chmod 600 {}`; if others \
         could have copied it, remove the device credential and enroll again",
        path.display(), path.display()
    )]
    InsecureKeyFile { path: PathBuf, mode: u32 },
    #[error(
        "{} is writable by others (mode {mode:03o}): run `chmod o-w {}`, or set \
         DTSH_DEVICE_HOME to a private directory",
        path.display(), path.display()
    )]
    InsecureKeyDir { path: PathBuf, mode: u32 },
    #[error(
        "{} is damaged ({why}): remove {} to create a new device credential (the device must \
         then be enrolled again)",
        path.display(), dir.display()
    )]
    Corrupt {
        path: PathBuf,
        dir: PathBuf,
        why: String,
    },
    #[error(
        "a device credential already exists in {}: use it, or remove the directory to start \
         over",
        dir.display()
    )]
    CredentialExists { dir: PathBuf },
    #[error("no device credential in {}: create one first (dtsh device enroll does)", dir.display())]
    NoCredential { dir: PathBuf },
    #[error("device key operation failed: {0}")]
    Crypto(&'static str),
    #[error("this device credential can't answer a {0}")]
    UnsupportedProof(&'static str),
    #[error("no usable serial number: {why}; set DTSH_DEVICE_SERIAL to this device's asset tag")]
    NoSerial { why: String },
    #[error("DTSH_DEVICE_SERIAL is not usable: {0}")]
    BadSerialOverride(String),
    #[error("collecting device data is implemented for Linux only in this build")]
    UnsupportedOs,
    #[cfg(feature = "tpm")]
    #[error(transparent)]
    Tpm(#[from] crate::tpm::TpmDeviceError),
}

impl DeviceError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> DeviceError {
        let path = path.into();
        move |source| DeviceError::Io { path, source }
    }
}
