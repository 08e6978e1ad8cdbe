//! The client side of a device: what it reports about itself and the keys it proves
//! itself with. Server crates never depend on this crate.
//!
//! Why a crate of its own: this is the only code that reads the machine (sysfs, os-release,
//! machine-id) and holds device private keys; it is linked by `dtsh` and never by the auth
//! service. It speaks the ceremonies' vocabulary (`dt-ceremony`'s `ProofRequest` and
//! `EnrollPayload`) but drives no network itself.
//!
//! - [`collect`]: the device's collected data (serial number rules, model, OS, user), with
//!   notes and warnings for the user; every source path injectable for tests.
//! - [`keys`]: the [`DeviceKeys`] trait every credential store implements (software, TPM;
//!   Secure Enclave and Windows TBS later), and how TPM stores fit it.
//! - [`software`]: [`SoftwareKeys`], a P-256 key in a 0600 file under `$DTSH_DEVICE_HOME`.
//! - `tpm` (cargo feature `tpm`): the TPM 2.0 key store, linking libtss2; it implements
//!   [`DeviceKeys`] (activation and quotes instead of signatures).
//!
//! What it guarantees: a private key file is never created readable by others and never
//! used when it is; the serial number is chosen by fixed, documented rules, so the same
//! machine reports the same serial every time (or says why it might not).

pub mod collect;
pub mod error;
pub mod keys;
pub mod software;

#[cfg(feature = "tpm")]
pub mod tpm;
#[cfg(feature = "tpm")]
mod tpm_keys;

pub use collect::{CollectSources, Collected, collect};
pub use error::DeviceError;
pub use keys::{CredentialInfo, DeviceKeys, prover};
pub use software::{SoftwareKeys, resolve_device_home};
